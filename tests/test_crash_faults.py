"""The crash harness's fault-injection mode (``mode="faults"``, bitkv/crashtest/faults.py):
its fault-injecting FileIO, its API, and bounded seeded runs of every fault class in every
sync mode (longer soaks: tests/test_crash_soak.py).

Before issue 11's fixes these runs found every engine bug of its reproductions (the scripts in
/work/shared/repro); each run is now the regression test of its fault class.
"""

from __future__ import annotations

import errno
import os

import pytest

import bitkv
import bitkv.crashtest as crashtest
from bitkv.crashtest.faults import (
    FAULT_CLASSES,
    FILE_FAULTS,
    IO_FAULTS,
    FaultPlan,
    FaultyFileIO,
    InjectedFault,
)

SYNCS = ("always", "interval", "never")
CYCLES = 30
OPS = 60
SEED = 11


def _run(where: str, faults: tuple[str, ...], sync: str, cycles: int = CYCLES,
         seed: int = SEED) -> crashtest.CrashTestSummary:
    summary = crashtest.run(where, mode="faults", cycles=cycles, seed=seed, sync=sync,
                            ops_per_cycle=OPS, faults=faults)
    assert summary.cycles == cycles
    return summary


def _assert_clean(summary: crashtest.CrashTestSummary) -> None:
    assert summary.violations == [], (f"reproduce: {summary.reproduce_command}\n"
                                      + "\n".join(v[:500] for v in summary.violations[:10]))


# -- the fault-injecting FileIO --


def test_a_planned_call_fails_once_after_the_skipped_ones(tmp_path):
    io = FaultyFileIO()
    io.arm(FaultPlan("fsync", err=errno.ENOSPC, skip=2))
    fd = io.create(str(tmp_path / "f"))
    try:
        io.fsync(fd)
        io.fsync(fd)
        with pytest.raises(OSError) as info:
            io.fsync(fd)
        assert info.value.errno == errno.ENOSPC and isinstance(info.value, InjectedFault)
        io.fsync(fd)  # once: the plan is spent
    finally:
        io.close(fd)
    assert [f.op_class for f in io.fired] == ["fsync"]
    assert io.calls["fsync"] == 4


def test_a_persistent_fault_fails_every_later_call_of_its_class_only(tmp_path):
    io = FaultyFileIO()
    io.arm(FaultPlan("rename", persistent=True))
    (tmp_path / "a").write_bytes(b"x")
    for _ in range(3):
        with pytest.raises(OSError):
            io.rename(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    io.unlink(str(tmp_path / "a"))  # other classes are untouched
    assert len(io.fired) == 3


def test_a_short_write_writes_part_of_the_data_then_fails(tmp_path):
    io = FaultyFileIO()
    io.arm(FaultPlan("write", short=True))
    fd = io.create(str(tmp_path / "f"))
    try:
        with pytest.raises(OSError):
            io.write(fd, b"0123456789")
    finally:
        io.close(fd)
    assert (tmp_path / "f").read_bytes() == b"01234"


def test_the_truncate_class_fails_a_write_short_and_then_its_undo(tmp_path):
    io = FaultyFileIO()
    io.arm(FaultPlan("truncate"))
    fd = io.create(str(tmp_path / "f"))
    try:
        io.truncate(fd, 0)  # no write has failed yet: passes
        with pytest.raises(OSError):
            io.write(fd, b"abcdef")
        with pytest.raises(OSError):
            io.truncate(fd, 0)
        io.write(fd, b"ok")  # a one-off plan is spent after the undo failed
        io.truncate(fd, 0)
    finally:
        io.close(fd)
    assert [f.op_class for f in io.fired] == ["write", "truncate"]


def test_a_store_on_it_sees_every_write_and_the_fault_names_its_phase(fast_db_path):
    io = FaultyFileIO()
    with bitkv.open(fast_db_path, sync="always", fileio=io, auto_compact=False,
                    max_segment_size=4096) as db:
        db.put(b"a", b"1")
        writes = io.calls["write"]
        db.put(b"b", b"2")
        # The hot path goes through the subclass: the record's pwrite (the DURABLE mark
        # after the fdatasync is a store into its map, which has no error to inject).
        assert io.calls["write"] == writes + 1
        io.arm(FaultPlan("fsync"))
        with pytest.raises(OSError):
            db.put(b"c", b"3")
        assert io.fired[0].phase.startswith("commit fsync")


# -- the API --


def test_faults_is_a_mode_with_a_reproduce_command(fast_tmp):
    assert "faults" in crashtest.MODES
    assert set(FAULT_CLASSES) == set(IO_FAULTS) | set(FILE_FAULTS)
    where = str(fast_tmp / "ct")
    summary = crashtest.run(where, mode="faults", cycles=2, seed=5, ops_per_cycle=20,
                            faults=("create",))
    assert summary.mode == "faults" and summary.cycles == 2
    assert summary.operations_acknowledged > 0 and len(summary.log) == 2
    assert "faults=('create',)" in summary.reproduce_command
    assert "python -c" in summary.reproduce_command
    assert crashtest.reproduce_command(where, "faults", 9, 1, "never", 200) == (
        f"bitkv crashtest --dir {where} --mode faults --cycles 9 --seed 1 --sync never")


def test_faults_are_checked(fast_tmp):
    with pytest.raises(ValueError, match="unknown fault"):
        crashtest.run(str(fast_tmp / "ct"), mode="faults", cycles=1, faults=("fsnyc",))
    with pytest.raises(ValueError, match="mode='faults' only"):
        crashtest.run(str(fast_tmp / "ct"), mode="kill", cycles=1, faults=("fsync",))


def test_the_cli_runs_the_faults_mode(fast_tmp):
    from click.testing import CliRunner

    from bitkv_cli.main import cli

    result = CliRunner().invoke(cli, ["crashtest", "--mode", "faults", "--cycles", "2",
                                      "--seed", "3", "--ops-per-cycle", "20", "--json",
                                      "--dir", str(fast_tmp / "ct")])
    assert result.exit_code == 0, result.output
    assert '"mode": "faults"' in result.output


# -- proof that it catches a broken engine --


def test_it_catches_a_store_that_ignores_a_failed_commit_fsync(fast_tmp, monkeypatch):
    # The engine refuses writes after a failed commit fsync; without that, fsyncgate.
    from bitkv.log import LogWriter

    monkeypatch.setattr(bitkv.Store, "_check_writable", lambda self: None)
    monkeypatch.setattr(LogWriter, "check", lambda self: None)
    summary = _run(str(fast_tmp / "ct"), ("fsync",), "always", cycles=12)
    assert any("fsyncgate" in v for v in summary.violations), summary.log


# -- bounded runs of every fault class --


# Each class's run (seed 11, 30 cycles of ~60 ops) found engine bugs before issue 11's fixes
# (fsyncgate after rotation, compaction and hint failures; resurrection after a failed
# compaction; a failed undo of a short write; no MANIFEST; a duplicated segment; a replaced
# LOCK). They are all clean now; each run is the regression test of its class.


def _case(fault: str, *args: str) -> object:
    return pytest.param(fault, *args, id="-".join((fault, *args)))


IO_CASES = [_case(fault, sync) for fault in IO_FAULTS for sync in SYNCS]


@pytest.mark.parametrize(("fault", "sync"), IO_CASES)
def test_io_fault(fast_tmp, fault, sync):
    _assert_clean(_run(str(fast_tmp / "ct"), (fault,), sync))


@pytest.mark.parametrize("fault", [_case(fault) for fault in FILE_FAULTS])
def test_file_fault(fast_tmp, fault):
    _assert_clean(_run(str(fast_tmp / "ct"), (fault,), "always"))


def test_every_fault_class_mixed(fast_tmp):
    _assert_clean(_run(str(fast_tmp / "ct"), FAULT_CLASSES, "interval", cycles=40))




@pytest.mark.parametrize("sync", SYNCS)
def test_power_loss_with_a_failed_fsync(fast_tmp, sync):
    # mode="powerfaults": the failed fsync is no durability point in the disk model.
    summary = crashtest.run(str(fast_tmp / "ct"), mode="powerfaults", cycles=40, seed=4,
                            sync=sync, ops_per_cycle=OPS)
    assert any("failed" in line for line in summary.log)  # the fault fired in some cycles
    _assert_clean(summary)


def test_nothing_is_written_outside_the_directory(fast_tmp, monkeypatch):
    outside = fast_tmp / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    crashtest.run(str(fast_tmp / "ct"), mode="faults", cycles=6, seed=2, ops_per_cycle=20,
                  faults=FILE_FAULTS)
    assert sorted(os.listdir(fast_tmp)) == ["ct", "outside"]
    assert os.listdir(outside) == []
