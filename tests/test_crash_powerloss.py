"""Crash states built from the I/O log of a recorded workload (bitkv.crashtest.recording).

* Every event: a scripted workload (rotations, overwrites, deletes, TTLs, a batch, two
  compactions, a clean close) is recorded once; then the store is crashed after *every* logged
  I/O call, as a process kill (all writes kept) and, under ``sync="always"``, as a power cut
  (every file cut to its last fsync, directory entries as of the last directory fsync). Each
  state is recovered and checked against the oracle. Deterministic, so it runs in CI in full.
* Engine bugs the power-loss harness found, each reduced to a deterministic reproduction
  (xfail strict until fixed).
"""

from __future__ import annotations

import os
import random
import shutil
import time

import pytest
from conftest import tear

import bitkv
from bitkv import record, segment
from bitkv.crashtest.oracle import Oracle
from bitkv.crashtest.recording import DiskModel, RecordingFileIO, write_state
from bitkv.crashtest.verify import check_time, recover
from bitkv.crashtest.workload import OpClock, execute, keyspace

SEGMENT = 4096


def scripted_ops() -> list[dict]:
    ops: list[dict] = []

    def add(**op):
        op["id"] = len(ops) + 1
        ops.append(op)

    for i in range(12):
        add(kind="put", key=f"k{i:03d}", len=180 + 20 * i, ttl=None)
    for i in range(6):
        add(kind="put", key=f"k{i:03d}", len=90, ttl=None)
    add(kind="delete", key="k006")
    add(kind="delete", key="k007")
    add(kind="put", key="k008", len=70, ttl=3)
    add(kind="put", key="k009", len=70, ttl=1000)
    add(kind="batch", members=[
        {"kind": "put", "key": "k010", "len": 60, "ttl": None},
        {"kind": "delete", "key": "k011"},
        {"kind": "put", "key": "k012", "len": 300, "ttl": 50}])
    add(kind="compact")
    for i in range(4):
        add(kind="put", key=f"k{i * 3:03d}", len=400, ttl=None)
    add(kind="delete", key="k000")
    add(kind="expire", key="k001", ttl=2)
    add(kind="persist", key="k009")
    add(kind="put", key="k006", len=2500, ttl=None)
    add(kind="compact")
    for i in range(3):
        add(kind="put", key=f"k{20 + i:03d}", len=150, ttl=None)
    add(kind="delete", key="k021")
    return ops


def record_run(path: str, sync: str, ops: list[dict], close: bool = True):
    """Run ``ops`` on a fresh store under a RecordingFileIO; return (io, oracle, marks)."""
    os.makedirs(path)
    io = RecordingFileIO(path)
    clock = OpClock(0)
    oracle = Oracle(keyspace(40))
    marks: dict[int, tuple[int, int | None]] = {}
    db = bitkv.open(path, sync=sync, clock=clock, fileio=io, auto_compact=False,
                    max_segment_size=SEGMENT)
    for op in ops:
        clock.op = op["id"]
        rec = oracle.begin(op)
        start = io.mark("intent", op["id"])
        result = execute(db, op)
        marks[op["id"]] = (start, io.mark("ack", op["id"]))
        assert oracle.ack(rec, result) is None
    if close:
        db.close()
    else:
        db._abandon()
    return io, oracle, marks


def crash_everywhere(tmp, io, oracle, marks, policy: str, last_op: int) -> tuple[int, list]:
    """Crash after every event with ``policy``; recover; check. Return (states, failures)."""
    events = io.events
    model = DiskModel(io.initial)
    at = check_time(last_op + 1)
    failures = []
    keys = oracle.keys
    for point in range(len(events) + 1):
        if point:
            model.apply(events[point - 1])
        files, _what = model.crash_state(random.Random(point), policy)
        where = os.path.join(tmp, f"{policy}-{point}")
        write_state(where, files)
        observed, problems, _stats = recover(where, keys, at, max_segment_size=SEGMENT,
                                             readonly_first=point % 7 == 0)
        if observed is not None:
            problems += oracle.check(
                observed, at,
                required=lambda r, p=point: marks[r.id][1] < p,
                existing=lambda r, p=point: marks[r.id][0] < p)
        if problems:
            failures.append((point, events[point - 1][:3] if point else None, problems))
        shutil.rmtree(where)
    return len(events) + 1, failures


@pytest.mark.parametrize("sync", ["never", "always"])
def test_kill_after_every_io_call_recovers_every_acknowledged_write(fast_tmp, sync):
    ops = scripted_ops()
    io, oracle, marks = record_run(str(fast_tmp / "run"), sync, ops)
    # The workload did what it is meant to exercise.
    kinds = [ev[0] for ev in io.events]
    assert kinds.count("rename") >= 4 and kinds.count("unlink") >= 2
    assert sum(1 for ev in io.events if ev[0] == "create" and ev[1].endswith(".data")) >= 4
    states, failures = crash_everywhere(str(fast_tmp), io, oracle, marks, "kill", len(ops))
    assert states > 100
    assert not failures, failures[:3]


def test_power_cut_after_every_io_call_under_sync_always(fast_tmp):
    ops = scripted_ops()
    io, oracle, marks = record_run(str(fast_tmp / "run"), "always", ops)
    states, failures = crash_everywhere(str(fast_tmp), io, oracle, marks, "synced", len(ops))
    assert states > 100
    assert not failures, failures[:3]


def test_power_cut_with_reverted_directory_changes_under_sync_always(fast_tmp):
    """Data as written but every create/rename/unlink since the last directory fsync undone."""
    ops = scripted_ops()
    io, oracle, marks = record_run(str(fast_tmp / "run"), "always", ops)
    events = io.events
    model = DiskModel(io.initial)
    at = check_time(len(ops) + 1)
    for point in range(len(events) + 1):
        if point:
            model.apply(events[point - 1])
        if not model.pending_meta:
            continue
        names = dict(model.durable_names)
        files = {n: bytes(model.inodes[i].current) for n, i in names.items()}
        where = str(fast_tmp / f"meta-{point}")
        write_state(where, files)
        observed, problems, _ = recover(where, oracle.keys, at, max_segment_size=SEGMENT,
                                        readonly_first=False)
        assert observed is not None, problems
        problems += oracle.check(observed, at,
                                 required=lambda r, p=point: marks[r.id][1] < p,
                                 existing=lambda r, p=point: marks[r.id][0] < p)
        assert not problems, (point, events[point - 1], problems)


def test_every_acknowledged_write_is_durable_in_the_log_under_sync_always(fast_tmp):
    """Independent of any crash state: under sync='always' each write is fsynced, under a
    durable directory entry, before the call returns."""
    from bitkv.crashtest.powerloss import _attribute_writes, _Tracked, durable_points

    ops = scripted_ops()
    io, oracle, marks = record_run(str(fast_tmp / "run"), "always", ops)
    tracked = {r.id: _Tracked(r, *marks[r.id]) for r in oracle.records if r.effects}
    _attribute_writes(io.events, tracked)
    durable_points(io.initial, io.events, tracked)
    late = [(t.record.id, t.durable_at, t.acked_at) for t in tracked.values()
            if t.writes and (t.durable_at is None or t.durable_at > t.acked_at)]
    assert not late


# -- engine bugs found by the power-loss harness --
#
# Fixed in c7e539d ("Fix three bugs the crash harness found"), kept as regressions: compaction
# losing a durable value whose overwrite was unsynced, one-level non-idempotent repair of
# damage before an uncommitted batch, quadratic resync over a torn large value.


def _synced_state(io: RecordingFileIO, where: str) -> None:
    model = DiskModel(io.initial)
    for ev in io.events:
        model.apply(ev)
    files, _ = model.crash_state(random.Random(0), "synced")
    write_state(where, files)


@pytest.mark.parametrize("how", ["compact", "auto_compact", "batch"])
def test_compaction_never_loses_a_durable_value_whose_overwrite_is_not_durable(fast_tmp, how):
    """Regression: compaction dropped an input record superseded by an unsynced write (or an
    unsynced batch's tombstone) and removed the input before fsyncing the active segment, so a
    power cut lost both versions (or left the batch half applied)."""
    path = str(fast_tmp / "db")
    os.makedirs(path)
    io = RecordingFileIO(path)
    db = bitkv.open(path, sync="never", fileio=io, auto_compact=how == "auto_compact",
                    compact_min_dead_bytes=0, compact_dead_ratio=0.01,
                    max_segment_size=SEGMENT)
    db.put(b"key", b"old value, fsynced when its segment was sealed")
    i = 0
    while db.stats()["segments"] < 2:
        db.put(b"filler-%d" % i, b"x" * 300)
        i += 1
    db.put(b"filler-0", b"y")  # some garbage, so the auto-compactor has a reason to run
    if how == "batch":
        # An unsynced batch that deletes the durable key and adds another one.
        with db.batch() as b:
            b.delete(b"key")
            b.put(b"other", b"written by the same batch")
    else:
        db.put(b"key", b"new value, not yet fsynced")
    if how in ("compact", "batch"):
        db.compact()
    else:
        deadline = time.monotonic() + 10
        while db.last_compaction is None and time.monotonic() < deadline:
            db._maintenance.wake()
            time.sleep(0.01)
        assert db.last_compaction is not None, "the auto-compactor did not run"
    db._abandon()
    crashed = str(fast_tmp / "crashed")
    _synced_state(io, crashed)
    with bitkv.open(crashed, sync="never") as db:
        if how == "batch":  # all of the batch or none of it
            assert (db.get(b"key"), db.get(b"other")) in (
                (b"old value, fsynced when its segment was sealed", None),
                (None, b"written by the same batch"))
        else:
            assert db.get(b"key") in (b"old value, fsynced when its segment was sealed",
                                      b"new value, not yet fsynced")


def _fill(path: str) -> str:
    with bitkv.open(path, sync="never", auto_compact=False) as db:
        for i in range(5):
            db.put(b"key-%d" % i, b"value-%d" % i)
    names = sorted(n for n in os.listdir(path) if n.endswith(".data"))
    return os.path.join(path, names[-1])


def test_torn_write_ending_in_an_uncommitted_batch_is_repaired_in_one_open(fast_tmp):
    """Regression: a power cut tore the last sectors of an unsynced batch and garbled the
    write before it (crashtest powerloss --sync never)."""
    path = str(fast_tmp / "db")
    seg = _fill(path)
    with open(seg, "rb") as fh:
        data = fh.read()
    last_seq = max(r.seq for r in record.scan(data, segment.HEADER_SIZE)
                   if isinstance(r, record.ScannedRecord))
    members = [record.encode(b"batch-%d" % i, b"member", last_seq + 2 + i, 0,
                             record.BATCH | (record.BATCH_FIRST if i == 0 else 0))
               for i in range(2)]  # no BATCH_LAST: the batch never committed
    with open(seg, "ab") as fh:
        fh.write(b"\xff" * 100 + b"".join(members) + b"\xee" * 50)
    with bitkv.open(path, sync="never") as db:
        first = db.stats()["recovery"]
        assert db.get(b"batch-0") is None
        assert [db.get(b"key-%d" % i) for i in range(5)] == [b"value-%d" % i for i in range(5)]
    with bitkv.open(path, sync="never") as db:
        second = db.stats()["recovery"]
    assert first["corrupt_bytes"] == 0, first
    assert second["truncated_bytes"] == 0, second


def test_reopening_after_a_torn_large_value_hashes_each_byte_a_bounded_number_of_times(
        fast_tmp, monkeypatch):
    """Regression: a kill -9 in the middle of writing a value made of a regular binary
    pattern (128 KiB of int32 65536) made reopening hash ~1 GB (a 3 MiB value: 25 s)."""
    path = str(fast_tmp / "db")
    with bitkv.open(path, sync="never", auto_compact=False) as db:
        db.put(b"small", b"survives")
        db.put(b"big", b"\x00\x00\x01\x00" * (128 * 1024 // 4))
    seg = sorted(n for n in os.listdir(path) if n.endswith(".data"))[-1]
    full = os.path.join(path, seg)
    tear(full, os.path.getsize(full) - 1000)  # the big put was cut short
    size = os.path.getsize(full)
    hashed = [0]
    real = record.crc32c

    def counting(buf):
        hashed[0] += len(buf)
        return real(buf)

    monkeypatch.setattr(record, "crc32c", counting)
    with bitkv.open(path, sync="never") as db:
        assert db.get(b"small") == b"survives"
        assert db.get(b"big") is None
    assert hashed[0] <= 16 * size, f"hashed {hashed[0]} bytes to reopen a {size}-byte segment"


def test_segment_header_size_is_what_the_harness_assumes():
    # newest_append_segment() in the kill harness reads this many bytes to order segments.
    assert segment.HEADER_SIZE == 40


def test_torn_tail_of_several_uncommitted_batches_is_repaired_in_one_open(fast_tmp):
    path = str(fast_tmp / "db")
    seg = _fill(path)
    with open(seg, "rb") as fh:
        data = fh.read()
    seq = max(r.seq for r in record.scan(data, segment.HEADER_SIZE)
              if isinstance(r, record.ScannedRecord)) + 1

    def uncommitted(n: int) -> bytes:
        nonlocal seq
        parts = [record.encode(b"batch-%d" % (seq + i), b"member", seq + i, 0,
                               record.BATCH | (record.BATCH_FIRST if i == 0 else 0))
                 for i in range(n)]
        seq += n + 1
        return b"".join(parts)

    with open(seg, "ab") as fh:
        fh.write(b"\xff" * 100 + uncommitted(2) + b"\xee" * 100 + uncommitted(3) + b"\xdd" * 60)
    with bitkv.open(path, sync="never") as db:
        first = db.stats()["recovery"]
        assert [db.get(b"key-%d" % i) for i in range(5)] == [b"value-%d" % i for i in range(5)]
    with bitkv.open(path, sync="never") as db:
        second = db.stats()["recovery"]
    assert os.path.getsize(seg) == len(data)
    assert first["corrupt_bytes"] == 0, first
    assert second["truncated_bytes"] == 0, second
