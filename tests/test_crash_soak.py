"""Long crash-harness soaks: every mode and sync setting for many cycles.

Skipped unless ``BITKV_SOAK=1``. ``BITKV_SOAK_CYCLES`` (default 300) sets the cycles per run
and ``BITKV_SOAK_SEED`` the seed (default: a fresh one, printed in the failure message with
the command that reproduces it)::

    BITKV_SOAK=1 BITKV_SOAK_CYCLES=1000 python -m pytest -m soak tests/test_crash_soak.py
"""

from __future__ import annotations

import os
import random

import pytest
from test_crash_harness import unexplained

import bitkv.crashtest as crashtest

pytestmark = [
    pytest.mark.soak,
    pytest.mark.skipif(os.environ.get("BITKV_SOAK") != "1", reason="set BITKV_SOAK=1 to soak"),
]

CYCLES = int(os.environ.get("BITKV_SOAK_CYCLES", "300"))
SEED = int(os.environ.get("BITKV_SOAK_SEED") or random.SystemRandom().randrange(1, 2**31))


@pytest.mark.parametrize("sync", ["always", "interval", "never"])
@pytest.mark.parametrize("mode", ["kill", "whitebox", "powerloss"])
def test_soak(fast_tmp, mode, sync):
    summary = crashtest.run(str(fast_tmp / "ct"), mode=mode, cycles=CYCLES, seed=SEED,
                            sync=sync)
    print(f"{mode}/{sync}: {summary.cycles} cycles, {summary.crash_states} crash states, "
          f"{summary.operations_acknowledged} acknowledged, {summary.operations_verified} "
          f"verified, {len(summary.violations)} violations, {summary.seconds:.0f} s")
    found = summary.violations if mode != "powerloss" else unexplained(summary.violations)
    assert found == [], f"reproduce: {summary.reproduce_command}\n" + "\n".join(found[:10])


# mode="faults" soaks at least 1,000 cycles per sync mode (issue 11); BITKV_SOAK_CYCLES above
# 1,000 raises it. It fails on today's engine: see tests/test_crash_faults.py for the bugs.
FAULT_CYCLES = max(CYCLES, 1000)


@pytest.mark.parametrize("sync", ["always", "interval", "never"])
def test_soak_faults(fast_tmp, sync):
    summary = crashtest.run(str(fast_tmp / "ct"), mode="faults", cycles=FAULT_CYCLES,
                            seed=SEED, sync=sync)
    print(f"faults/{sync}: {summary.cycles} cycles, {summary.operations_acknowledged} "
          f"acknowledged, {summary.operations_verified} verified, "
          f"{len(summary.violations)} violations, {summary.seconds:.0f} s")
    assert summary.violations == [], (f"reproduce: {summary.reproduce_command}\n"
                                      + "\n".join(v[:500] for v in summary.violations[:10]))
