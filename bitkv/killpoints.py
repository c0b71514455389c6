"""Whitebox crash points for the crash harness.

A kill point is a named place in the engine where, when the environment asks for it, the
process kills itself with SIGKILL, leaving the disk exactly as a crash at that instant would.
Set ``BITKV_KILLPOINTS`` to a comma-separated list of ``name=probability`` pairs (``*`` matches
every point), and optionally ``BITKV_KILLPOINTS_SEED``. When the variable is unset, ``ENABLED``
is False and call sites skip the call entirely (``if killpoints.ENABLED: ...``), so production
pays one global lookup.
"""

from __future__ import annotations

import os
import random
import signal

POINTS = (
    "append.after_write",        # record written to the OS, not yet fsynced
    "append.after_sync",         # record fsynced, call not yet returned
    "rotate.after_sync",         # old active segment fsynced, new one not yet created
    "rotate.after_create",       # new segment created, directory not yet fsynced
    "rotate.after_manifest",     # MANIFEST lists the new segment as the open one
    "compact.inputs_selected",   # inputs chosen, nothing written yet
    "compact.outputs_written",   # output segments written under temporary names
    "compact.hints_written",     # hint files written under temporary names
    "compact.synced",            # outputs and hints fsynced
    "compact.renamed",           # outputs renamed to final names
    "compact.dir_synced",        # directory fsynced after renames (outputs still orphans)
    "compact.committed",         # MANIFEST lists the outputs, keydir not yet switched
    "compact.switched",          # keydir switched to outputs
    "compact.removed_one",       # one input segment removed
    "recovery.truncated",        # torn tail truncated during open
    "checkpoint.written",        # checkpoint hint written and fsynced, not yet renamed
)

_spec = os.environ.get("BITKV_KILLPOINTS", "")
ENABLED = bool(_spec)
_probabilities: dict[str, float] = {}
_rng = random.Random(os.environ.get("BITKV_KILLPOINTS_SEED"))

if ENABLED:
    for part in _spec.split(","):
        name, _, prob = part.strip().partition("=")
        if name:
            _probabilities[name] = float(prob) if prob else 1.0


def hit(name: str) -> None:
    """Kill the process at point ``name`` with the configured probability."""
    if name not in POINTS:
        raise ValueError(f"unknown kill point {name!r}")
    prob = _probabilities.get(name, _probabilities.get("*", 0.0))
    if prob and _rng.random() < prob:
        os.kill(os.getpid(), signal.SIGKILL)
