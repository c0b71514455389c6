"""The replication crash mode, briefly (long runs: `bitkv crashtest --mode replication`):
a master, its replica or both SIGKILLed under writes with WAIT; nothing acknowledged lost,
the two converge, a master restart resyncs partially."""

from __future__ import annotations

import pytest

pytest.importorskip("redis", reason="redis-py is needed for the server tests")

import bitkv.crashtest as harness


def test_replication_crash_cycles_find_no_violation(tmp_path):
    summary = harness.run(str(tmp_path / "ct"), mode="replication", cycles=4, seed=11,
                          ops_per_cycle=40)
    assert summary.violations == [], "\n".join(summary.log)
    assert summary.cycles == 4
    assert summary.operations_acknowledged > 0
    assert summary.operations_verified > 0
    kinds = " ".join(summary.log)
    assert "resync" in kinds
