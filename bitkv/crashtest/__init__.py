"""bitkv's crash-recovery harness (``bitkv crashtest``).

Ways to crash a store, each repeated for many cycles on the same store, each followed by
recovery and a check of every key against an oracle (see docs/durability.md):

* ``mode="kill"``: a worker process runs a random workload and is SIGKILLed at a random moment,
  sometimes during compaction or while it is itself recovering a torn tail.
* ``mode="whitebox"``: the worker kills itself at a named kill point of the engine
  (:mod:`bitkv.killpoints`), chosen at random with a random probability each cycle.
* ``mode="powerloss"``: the workload runs in-process on a recording FileIO; the disk states a
  power cut at points of its I/O log may leave are built, recovered and checked.
* ``mode="faults"``: the workload runs in-process on a FileIO that makes one class of file
  operation fail (EIO, ENOSPC, short writes) in any phase; between runs, segments are
  deleted, truncated or duplicated and ``LOCK`` is replaced (see :mod:`.faults`).
* ``mode="powerfaults"``: ``powerloss`` where one fsync per cycle fails; the failed fsync is
  no durability point in the disk model.
* ``mode="replication"``: a ``bitkv serve`` master and its replica on loopback; the master,
  the replica or both are SIGKILLed (or the master stopped) under a write load with ``WAIT``;
  after the restart nothing acknowledged is lost and the two converge (see
  :mod:`.replication`).

>>> summary = bitkv.crashtest.run("/tmp/ct", mode="kill", cycles=20, seed=1)  # doctest: +SKIP
>>> summary.violations                                                         # doctest: +SKIP
[]
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: importing the harness must not load the engine
    from ..store import SyncMode

__all__ = ["MODES", "CrashTestSummary", "run"]

MODES = ("kill", "whitebox", "powerloss", "faults", "powerfaults", "replication")
SYNC_MODES = ("always", "interval", "never")
RUN_MARKER = "CRASHTEST"
MAX_VIOLATIONS = 200


@dataclass
class CrashTestSummary:
    """The outcome of :func:`run`. An empty ``violations`` list means every check passed."""

    cycles: int
    operations_acknowledged: int
    operations_verified: int
    violations: list[str]
    seed: int
    reproduce_command: str
    mode: str = "kill"
    sync: str = "always"
    crash_states: int = 0      # crashed stores recovered and checked
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)  # one line per cycle

    @property
    def ok(self) -> bool:
        return not self.violations


def _prepare(directory: str) -> None:
    """Use ``directory`` if it is missing, empty, or a previous crash test's; never anything
    else (the harness deletes what it finds there)."""
    if not os.path.exists(directory):
        os.makedirs(directory)
        return
    if not os.path.isdir(directory):
        raise NotADirectoryError(f"{directory!r} is not a directory")
    names = os.listdir(directory)
    if names and RUN_MARKER not in names:
        raise FileExistsError(
            f"{directory!r} is not empty and was not made by bitkv crashtest; "
            "give an empty or new directory (everything in it is deleted and rewritten)")
    for name in names:
        full = os.path.join(directory, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def reproduce_command(directory: str, mode: str, cycles: int, seed: int, sync: str,
                      ops_per_cycle: int, faults: Sequence[str] | None = None) -> str:
    if faults:
        # The CLI runs every fault class; a run limited to some is reproduced from Python.
        return (f"python -c \"import bitkv.crashtest as c; s = c.run({directory!r}, "
                f"mode={mode!r}, cycles={cycles}, seed={seed}, sync={sync!r}, "
                f"ops_per_cycle={ops_per_cycle}, faults={tuple(faults)!r}); "
                "print(*s.violations, sep=chr(10))\"")
    cmd = f"bitkv crashtest --dir {directory} --mode {mode} --cycles {cycles} --seed {seed}"
    if sync != "always":
        cmd += f" --sync {sync}"
    if ops_per_cycle != 200:
        cmd += f" --ops-per-cycle {ops_per_cycle}"
    return cmd


def run(directory: str, *, mode: str = "kill", cycles: int = 100, seed: int | None = None,
        sync: SyncMode = "always", progress: Callable[[int, int], None] | None = None,
        ops_per_cycle: int = 200, faults: Sequence[str] | None = None) -> CrashTestSummary:
    """Crash a store ``cycles`` times in ``mode`` and check every recovery; see the module doc.

    Everything is written inside ``directory`` (created if missing; it must be empty or hold a
    previous crash test). ``progress(done, total)`` is called after each cycle. Returns a
    :class:`CrashTestSummary`; ``violations`` lists every broken promise found.

    ``faults`` (``mode="faults"`` only) limits the fault classes injected to some of
    :data:`bitkv.crashtest.faults.FAULT_CLASSES` (default: all).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if sync not in SYNC_MODES:
        raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 0:
        raise ValueError(f"cycles must be an int >= 0, not {cycles!r}")
    if isinstance(ops_per_cycle, bool) or not isinstance(ops_per_cycle, int) \
            or ops_per_cycle < 1:
        raise ValueError(f"ops_per_cycle must be an int >= 1, not {ops_per_cycle!r}")
    if faults is not None and mode != "faults":
        raise ValueError("faults= applies to mode='faults' only")
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    directory = os.path.abspath(os.fspath(directory))
    _prepare(directory)
    with open(os.path.join(directory, RUN_MARKER), "w") as fh:
        fh.write(reproduce_command(directory, mode, cycles, seed, sync, ops_per_cycle,
                                   faults) + "\n")
    started = time.monotonic()
    violations: list[str] = []
    log: list[str] = []
    acked = 0
    states = 0

    def note(n: int, description: str, found: list[str], acked_now: int) -> None:
        nonlocal acked
        acked += acked_now
        log.append(f"cycle {n}: {description}" + (f" -> {len(found)} violation(s)"
                                                    if found else ""))
        for v in found:
            if len(violations) < MAX_VIOLATIONS:
                violations.append(f"cycle {n} ({description}): {v}")

    if mode in ("powerloss", "powerfaults"):
        from .powerloss import PowerLossRunner

        pl = PowerLossRunner(directory, seed=seed, sync=sync, ops_per_cycle=ops_per_cycle,
                             fsync_faults=mode == "powerfaults")
        done = 0
        for n in range(cycles):
            pres = pl.cycle(n)
            states += pres.states
            note(n, pres.description, pres.violations, pres.acked)
            done = n + 1
            if progress is not None:
                progress(done, cycles)
        verified = pl.oracle.verified
    elif mode == "replication":
        from .replication import ReplicationRunner

        rr = ReplicationRunner(directory, seed=seed, sync=sync, ops_per_cycle=ops_per_cycle)
        done = 0
        try:
            for n in range(cycles):
                rres = rr.cycle(n)
                states += 1
                note(n, rres.description, rres.violations, rres.acked)
                done = n + 1
                if progress is not None:
                    progress(done, cycles)
        finally:
            rr.close()
        verified = rr.oracle.verified
    elif mode == "faults":
        from .faults import FaultRunner, run_cycles

        fr = FaultRunner(directory, seed=seed, sync=sync, ops_per_cycle=ops_per_cycle,
                         faults=faults)
        done = run_cycles(fr, cycles, note, progress)
        states = done
        verified = fr.oracle.verified
    else:
        from .killmode import FatalError, KillRunner

        kr = KillRunner(directory, mode=mode, seed=seed, sync=sync, ops_per_cycle=ops_per_cycle)
        done = 0
        for n in range(cycles):
            try:
                res = kr.cycle(n)
            except FatalError as fatal:
                note(n, "the store could not be reopened; stopping", fatal.violations, 0)
                done = n + 1
                break
            states += 1
            note(n, res.description, res.violations, res.acked)
            done = n + 1
            if progress is not None:
                progress(done, cycles)
        verified = kr.oracle.verified
    return CrashTestSummary(
        cycles=done, operations_acknowledged=acked, operations_verified=verified,
        violations=violations, seed=seed,
        reproduce_command=reproduce_command(directory, mode, cycles, seed, sync, ops_per_cycle,
                                            faults),
        mode=mode, sync=sync, crash_states=states, seconds=time.monotonic() - started, log=log)
