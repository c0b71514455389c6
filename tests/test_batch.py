"""Atomic batches: all-or-nothing on disk (torn at every byte, damaged in the middle), discard on
exception, deletes, TTLs, reopen and compaction, one write and at most one fsync per batch."""

from __future__ import annotations

import mmap
import os
import shutil
import time

import pytest
from conftest import flip_bit, newest_segment, segment_files, snapshot_dir, tear

import bitkv
from bitkv import record as rec
from bitkv.fileio import FileIO


class CountingFileIO(FileIO):
    """Counts the calls the engine makes through the FileIO seam."""

    def __init__(self) -> None:
        self.writes = 0
        self.fsyncs = 0
        self._data_fds: dict[int, bool] = {}

    def write(self, fd: int, data: bytes) -> None:
        self.writes += 1
        super().write(fd, data)

    def create(self, path: str) -> int:
        fd = super().create(path)
        self._data_fds[fd] = path.endswith(".data")
        return fd

    def open_rw(self, path: str) -> int:
        fd = super().open_rw(path)
        self._data_fds[fd] = path.endswith(".data")
        return fd

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        # Appends with sync="always"; the DURABLE mark's pwrite after an fsync is not one, nor
        # is the zeroing of preallocated room ahead of the appends (LogWriter.make_room, once
        # per step of it: docs/format.md, "The zero tail").
        if data.count(0) == len(data):
            super().pwrite(fd, data, offset)
            return
        self.writes += self._data_fds.get(fd, False)
        super().pwrite(fd, data, offset)

    def map_write(self, mm: mmap.mmap, fd: int, offset: int, data: bytes) -> None:
        # Appends in the other sync modes (the DURABLE mark's store into its map is not one)
        self.writes += self._data_fds.get(fd, False)
        super().map_write(mm, fd, offset, data)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:  # the active segment's syncs
        self.fsyncs += 1
        super().fdatasync(fd)

    def reset(self) -> None:
        self.writes = self.fsyncs = 0


class NoSyncFileIO(FileIO):
    """Skips fsync: these tests make crash states by editing files, not by losing power."""

    def fsync(self, fd: int) -> None:
        pass

    def fdatasync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass


def quiet_open(path, **kw):
    """A store without background threads or fsyncs, so the tests control every file
    operation and reopen hundreds of times quickly."""
    kw.setdefault("sync", "never")
    kw.setdefault("auto_compact", False)
    kw.setdefault("fileio", NoSyncFileIO())
    return bitkv.open(path, **kw)


def restore_dir(path: str, snap: dict[str, bytes]) -> None:
    for name in os.listdir(path):
        if name not in snap:
            os.unlink(os.path.join(path, name))
    for name, data in snap.items():
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(data)


def cut_file(path: str, size: int) -> None:
    tear(path, size)


BEFORE = {b"keep": b"k0", b"old1": b"o1", b"gone": b"g", b"ttl": b"t"}
AFTER = {b"keep": b"k0", b"old1": b"new1", b"ttl": b"t2", b"fresh": b"f" * 40, b"fresh2": b"x"}


def write_base_and_batch(path: str, clock, *, later: bool) -> dict:
    """Write BEFORE, one batch turning it into AFTER, optionally a later plain write."""
    with quiet_open(path, clock=clock) as db:
        for k, v in BEFORE.items():
            db.put(k, v)
        seg = newest_segment(path)
        start = db._log.active.size  # the file is longer: preallocated zeros
        with db.batch() as b:
            b.put(b"old1", b"new1")
            b.put(b"fresh", b"f" * 40)
            b.delete(b"gone")
            b.put(b"ttl", b"t2", ttl=1000)
            b.put(b"fresh2", b"x")
        end = db._log.active.size
        later_end = end
        if later:
            db.put(b"later", b"L" * 30)
            later_end = db._log.active.size
    assert newest_segment(path) == seg
    return {"seg": seg, "start": start, "end": end, "later_end": later_end}


def state(db) -> dict[bytes, bytes]:
    return dict(db.items())


def assert_before(db, extra: dict[bytes, bytes] | None = None) -> None:
    assert state(db) == {**BEFORE, **(extra or {})}
    assert db.ttl(b"ttl") is None


def assert_after(db, extra: dict[bytes, bytes] | None = None) -> None:
    assert state(db) == {**AFTER, **(extra or {})}
    assert db.ttl(b"ttl") == pytest.approx(1000.0)


def batch_records(seg: str, start: int, end: int) -> list[rec.ScannedRecord]:
    with open(seg, "rb") as fh:
        data = fh.read()
    out = [r for r in rec.scan(data, start, end)]
    assert all(isinstance(r, rec.ScannedRecord) for r in out)
    return out  # type: ignore[return-value]


# -- all-or-nothing on disk ------------------------------------------------------------------


def test_batch_records_are_flagged(db_path, clock):
    info = write_base_and_batch(db_path, clock, later=False)
    recs = batch_records(info["seg"], info["start"], info["end"])
    assert len(recs) == 5
    assert all(r.flags & rec.BATCH for r in recs)
    assert recs[0].flags & rec.BATCH_FIRST and not recs[0].flags & rec.BATCH_LAST
    assert recs[-1].flags & rec.BATCH_LAST and not recs[-1].flags & rec.BATCH_FIRST
    assert not any(r.flags & (rec.BATCH_FIRST | rec.BATCH_LAST) for r in recs[1:-1])
    assert recs[2].flags & rec.TOMBSTONE
    assert [r.seq for r in recs] == list(range(recs[0].seq, recs[0].seq + 5))


def test_batch_cut_at_every_byte_is_all_or_nothing(db_path, clock):
    info = write_base_and_batch(db_path, clock, later=False)
    seg, start, end = info["seg"], info["start"], info["end"]
    snap = snapshot_dir(db_path)
    assert end - start > 100
    for cut in range(start, end + 1):
        restore_dir(db_path, snap)
        cut_file(seg, cut)
        with quiet_open(db_path, clock=clock, readonly=True) as db:
            if cut == end:
                assert_after(db)
            else:
                assert_before(db)
        with quiet_open(db_path, clock=clock) as db:
            if cut == end:
                assert_after(db)
            else:
                assert_before(db)
                assert db.stats()["recovery"]["truncated_bytes"] == cut - start
            # A write after the recovered (or dropped) batch lands and survives.
            db.put(b"later", b"L")
        assert os.path.getsize(seg) > (cut if cut == end else start)
        with quiet_open(db_path, clock=clock) as db:
            if cut == end:
                assert_after(db, {b"later": b"L"})
            else:
                assert_before(db, {b"later": b"L"})
            assert db.stats()["recovery"]["truncated_bytes"] == 0


def test_batch_survives_cut_in_the_write_after_it(db_path, clock):
    info = write_base_and_batch(db_path, clock, later=True)
    seg, end, later_end = info["seg"], info["end"], info["later_end"]
    snap = snapshot_dir(db_path)
    for cut in range(end, later_end + 1):
        restore_dir(db_path, snap)
        cut_file(seg, cut)
        with quiet_open(db_path, clock=clock) as db:
            if cut == later_end:
                assert_after(db, {b"later": b"L" * 30})
            else:
                assert_after(db)
                assert db.stats()["recovery"]["dropped_batch_records"] == 0


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_damaged_batch_record_drops_the_whole_batch(db_path, clock, which):
    info = write_base_and_batch(db_path, clock, later=True)
    seg = info["seg"]
    recs = batch_records(seg, info["start"], info["end"])
    target = {"first": recs[0], "middle": recs[2], "last": recs[-1]}[which]
    snap = snapshot_dir(db_path)
    for offset in range(target.offset, target.offset + target.size):
        restore_dir(db_path, snap)
        flip_bit(seg, offset, offset % 8)
        with quiet_open(db_path, clock=clock) as db:
            # None of the batch; the intact plain write after it is kept. The batch was
            # acknowledged and fsynced (by the close), so the key its damaged member names, if
            # it can be told, raises on read instead of silently showing its older value.
            damaged = set(db.recovery_report.damaged_keys)
            assert damaged <= {r.key for r in recs}
            expected = {k: v for k, v in {**BEFORE, b"later": b"L" * 30}.items()
                        if k not in damaged}
            for key in damaged:
                with pytest.raises(bitkv.CorruptionError):
                    db.get(key)
            assert {k: db.get(k) for k in expected} == expected
            if b"ttl" not in damaged:
                assert db.ttl(b"ttl") is None
            report = db.stats()["recovery"]
            assert report["dropped_batch_records"] >= 1
            assert report["corrupt_bytes"] > 0
            assert report["truncated_bytes"] == 0


def test_damaged_middle_record_of_tail_batch(db_path, clock):
    """The batch is the last thing in the file and its middle record is damaged."""
    info = write_base_and_batch(db_path, clock, later=False)
    seg = info["seg"]
    recs = batch_records(seg, info["start"], info["end"])
    flip_bit(seg, recs[2].offset + rec.HEADER_SIZE)  # a key byte of the middle record
    with quiet_open(db_path, clock=clock) as db:
        assert_before(db)
        db.put(b"next", b"n")
        with db.batch() as b:
            b.put(b"b1", b"1")
            b.put(b"b2", b"2")
    with quiet_open(db_path, clock=clock) as db:
        assert_before(db, {b"next": b"n", b"b1": b"1", b"b2": b"2"})
        db.compact()
    with quiet_open(db_path, clock=clock) as db:
        assert_before(db, {b"next": b"n", b"b1": b"1", b"b2": b"2"})


def test_damaged_batch_then_compaction_keeps_it_invisible(db_path, clock):
    info = write_base_and_batch(db_path, clock, later=True)
    recs = batch_records(info["seg"], info["start"], info["end"])
    flip_bit(info["seg"], recs[1].offset + 3)  # the CRC of the second record
    with quiet_open(db_path, clock=clock) as db:
        assert_before(db, {b"later": b"L" * 30})
        db.compact()
        assert_before(db, {b"later": b"L" * 30})
    with quiet_open(db_path, clock=clock) as db:
        assert_before(db, {b"later": b"L" * 30})


def test_torn_batch_after_rotation(db_path, clock):
    """A batch bigger than max_segment_size goes whole into one segment; torn, it vanishes."""
    with quiet_open(db_path, clock=clock, max_segment_size=4096) as db:
        for i in range(30):
            db.put(f"base{i}".encode(), b"b" * 100)
        with db.batch() as b:
            for i in range(60):
                b.put(f"batch{i}".encode(), b"v" * 100)
        seg = newest_segment(db_path)
    with open(seg, "rb") as fh:
        data = fh.read()
    flagged = [r for r in rec.scan(data, 40) if isinstance(r, rec.ScannedRecord)]
    assert len(flagged) == 60 and all(r.flags & rec.BATCH for r in flagged)
    with quiet_open(db_path, clock=clock) as db:
        assert len(db) == 90
    cut_file(seg, len(data) - 1)
    with quiet_open(db_path, clock=clock) as db:
        assert len(db) == 30
        assert all(k.startswith(b"base") for k in db)


def _checkpointed_store_with_batch(path: str, clock) -> dict:
    """A big active segment closed cleanly (so its head may be checkpointed in a hint file);
    then, in a session that crashes (no clean close), BEFORE, a batch and a later plain write
    appended after the checkpointed head."""
    with quiet_open(path, clock=clock) as db:
        for i in range(1200):
            db.put(f"bulk{i:05d}".encode(), bytes([i % 251]) * 1000)
    db = quiet_open(path, clock=clock)
    for k, v in BEFORE.items():
        db.put(k, v)
    seg = newest_segment(path)
    start = db._log.active.size  # the file is longer: preallocated zeros
    with db.batch() as b:
        b.put(b"old1", b"new1")
        b.put(b"fresh", b"f" * 40)
        b.delete(b"gone")
        b.put(b"ttl", b"t2", ttl=1000)
        b.put(b"fresh2", b"x")
    end = db._log.active.size
    db.put(b"later", b"L" * 30)
    db._abandon()  # killed: whatever a clean close would write is not written
    assert newest_segment(path) == seg and start > 2**20
    return {"seg": seg, "start": start, "end": end}


def _without_bulk(db) -> dict[bytes, bytes]:
    return {k: v for k, v in db.items() if not k.startswith(b"bulk")}


def test_batch_after_a_checkpointed_head_cut_and_damaged(db_path, clock):
    """All-or-nothing also when the segment's head is loaded from a hint and the batch after
    it is scanned."""
    info = _checkpointed_store_with_batch(db_path, clock)
    seg, start, end = info["seg"], info["start"], info["end"]
    snap = snapshot_dir(db_path)
    for cut in (start, start + 1, start + rec.HEADER_SIZE, (start + end) // 2, end - 1, end):
        restore_dir(db_path, snap)
        cut_file(seg, cut)
        for _ in range(2):  # the second open may load what the first one's close wrote
            with quiet_open(db_path, clock=clock) as db:
                assert len(db) == 1200 + (len(AFTER) if cut == end else len(BEFORE))
                assert _without_bulk(db) == (AFTER if cut == end else BEFORE)
    recs = batch_records(seg, start, end)
    restore_dir(db_path, snap)
    flip_bit(seg, recs[2].offset + rec.HEADER_SIZE)
    with quiet_open(db_path, clock=clock) as db:
        assert _without_bulk(db) == {**BEFORE, b"later": b"L" * 30}
        db.put(b"after-flip", b"1")
    for _ in range(2):
        with quiet_open(db_path, clock=clock) as db:
            assert _without_bulk(db) == {**BEFORE, b"later": b"L" * 30, b"after-flip": b"1"}
            assert len(db) == 1200 + len(BEFORE) + 2


# -- batch semantics -------------------------------------------------------------------------


def test_exception_inside_batch_discards(db_path):
    with quiet_open(db_path) as db:
        db.put(b"a", b"1")
        size = db._log.active.size
        with pytest.raises(RuntimeError), db.batch() as b:
            b.put(b"a", b"2")
            b.put(b"b", b"2")
            b.delete(b"a")
            raise RuntimeError("abort")
        assert db._log.active.size == size
        assert state(db) == {b"a": b"1"}
        # A bad argument raises at once and, inside the block, discards the batch too.
        with pytest.raises(TypeError), db.batch() as b:
            b.put(b"c", b"3")
            b.put(b"d", "not bytes")
        with pytest.raises(ValueError), db.batch() as b:
            b.put(b"c", b"3")
            b.put(b"e", b"v", ttl=-1)
        assert state(db) == {b"a": b"1"}
    with quiet_open(db_path) as db:
        assert state(db) == {b"a": b"1"}


def test_explicit_commit_and_discard(db_path):
    with quiet_open(db_path) as db:
        b = db.batch()
        b.put(b"a", b"1")
        b.put(b"b", b"2")
        assert len(b) == 2
        assert b"a" not in db  # nothing is visible before the commit
        b.commit()
        assert state(db) == {b"a": b"1", b"b": b"2"}
        with pytest.raises(bitkv.Error):
            b.commit()  # a batch commits once
        d = db.batch()
        d.put(b"c", b"3")
        d.discard()
        with pytest.raises(bitkv.Error):
            d.commit()
        assert b"c" not in db


def test_discard_inside_with_block_is_quiet(db_path):
    with quiet_open(db_path) as db:
        with db.batch() as b:
            b.put(b"a", b"1")
            b.discard()
        assert b"a" not in db


def test_operations_on_a_finished_batch_raise(db_path):
    with quiet_open(db_path) as db:
        with db.batch() as b:
            b.put(b"a", b"1")
        with pytest.raises(bitkv.Error):
            b.put(b"b", b"2")  # would be lost: the batch already committed
        with pytest.raises(bitkv.Error):
            b.delete(b"a")
        d = db.batch()
        d.discard()
        with pytest.raises(bitkv.Error):
            d.put(b"c", b"3")
        assert dict(db.items()) == {b"a": b"1"}


def test_empty_and_single_op_batches(db_path):
    io = CountingFileIO()
    with quiet_open(db_path, fileio=io) as db:
        io.reset()
        with db.batch():
            pass
        assert io.writes == 0
        with db.batch() as b:
            b.put(b"solo", b"1")
        assert io.writes == 1
        seg = newest_segment(db_path)
    with open(seg, "rb") as fh:
        data = fh.read()
    (solo,) = [r for r in rec.scan(data, 40) if isinstance(r, rec.ScannedRecord)]
    assert solo.flags & rec.BATCH_FLAGS == 0  # one record needs no batch framing
    with quiet_open(db_path) as db:
        assert db.get(b"solo") == b"1"


def test_batch_deletes(db_path):
    with quiet_open(db_path) as db:
        for i in range(10):
            db.put(f"k{i}".encode(), b"v")
        with db.batch() as b:
            for i in range(0, 10, 2):
                b.delete(f"k{i}".encode())
            b.delete(b"never-existed")
        assert sorted(db) == [f"k{i}".encode() for i in range(1, 10, 2)]
        with db.batch() as b:  # operations apply in order; the last one for a key wins
            b.put(b"x", b"1")
            b.delete(b"x")
            b.delete(b"k1")
            b.put(b"k1", b"again")
            b.put(b"y", b"1")
            b.put(b"y", b"2")
        assert b"x" not in db
        assert db.get(b"k1") == b"again"
        assert db.get(b"y") == b"2"
        expected = state(db)
        st = db.stats()
    with quiet_open(db_path) as db:
        assert state(db) == expected
        assert db.stats()["live_bytes"] == st["live_bytes"]


def test_batch_with_ttl(db_path, clock):
    with quiet_open(db_path, clock=clock) as db:
        db.put(b"p", b"old", ttl=5)
        with db.batch() as b:
            b.put(b"s", b"short", ttl=10)
            b.put(b"l", b"long", ttl=100)
            b.put(b"p", b"persistent")  # replaces a TTL'd value with one that never expires
        assert db.ttl(b"s") == pytest.approx(10.0)
        assert db.ttl(b"l") == pytest.approx(100.0)
        assert db.ttl(b"p") is None
        clock.advance(10)
        assert db.get(b"s") is None
        assert db.get(b"l") == b"long"
    with quiet_open(db_path, clock=clock) as db:
        assert state(db) == {b"l": b"long", b"p": b"persistent"}
        assert db.ttl(b"l") == pytest.approx(90.0)
        clock.advance(90)
        assert state(db) == {b"p": b"persistent"}


def test_batch_across_reopen_and_compaction(db_path, clock):
    expected: dict[bytes, bytes] = {}
    with quiet_open(db_path, clock=clock, max_segment_size=8192) as db:
        for round_ in range(20):
            with db.batch() as b:
                for i in range(25):
                    k = f"k{(round_ * 7 + i) % 60}".encode()
                    if (round_ + i) % 9 == 0:
                        b.delete(k)
                        expected.pop(k, None)
                    else:
                        v = f"r{round_}-{i}".encode() * 12
                        b.put(k, v)
                        expected[k] = v
        assert state(db) == expected
        assert len(segment_files(db_path)) > 3
    with quiet_open(db_path, clock=clock, max_segment_size=8192) as db:
        assert state(db) == expected
        summary = db.compact()
        assert summary["records_dropped"] > 0
        assert state(db) == expected
        with db.batch() as b:  # and batches keep working after the compaction
            b.put(b"post", b"1")
            b.put(b"post2", b"2")
        expected.update({b"post": b"1", b"post2": b"2"})
    # Compacted members are plain records: nothing in an output still says BATCH.
    compacted = [p for p in segment_files(db_path)
                 if os.path.exists(p[: -len(".data")] + ".hint")]
    assert compacted
    for path in compacted:
        with open(path, "rb") as fh:
            data = fh.read()
        for r in rec.scan(data, 40):
            assert isinstance(r, rec.ScannedRecord)
            assert r.flags & rec.BATCH_FLAGS == 0
    with quiet_open(db_path, clock=clock) as db:
        assert state(db) == expected
    # Without the hints the compacted segments are scanned, and still load completely.
    for name in os.listdir(db_path):
        if name.endswith(".hint"):
            os.unlink(os.path.join(db_path, name))
    with quiet_open(db_path, clock=clock) as db:
        assert state(db) == expected
        assert db.stats()["recovery"]["dropped_batch_records"] == 0


def test_batch_on_readonly_and_closed_store(db_path):
    with quiet_open(db_path) as db:
        db.put(b"a", b"1")
        b = db.batch()
        b.put(b"b", b"2")
    with pytest.raises(bitkv.ClosedError):
        b.commit()  # the store closed under the batch
    with pytest.raises(bitkv.ClosedError):
        db.batch()
    with quiet_open(db_path, readonly=True) as db:
        with pytest.raises(bitkv.ReadOnlyError):
            db.batch()
        assert state(db) == {b"a": b"1"}


# -- one write, at most one fsync ------------------------------------------------------------


def test_one_write_call_per_batch(db_path):
    io = CountingFileIO()
    with quiet_open(db_path, fileio=io) as db:
        io.reset()
        with db.batch() as b:
            for i in range(500):
                b.put(f"key{i}".encode(), os.urandom(50))
            for i in range(0, 500, 5):
                b.delete(f"key{i}".encode())
        assert io.writes == 1
        assert io.fsyncs == 0  # sync="never"
        assert len(db) == 400


def test_sync_always_batch_does_at_most_one_fsync(db_path):
    io = CountingFileIO()
    with quiet_open(db_path, fileio=io, sync="always") as db:
        db.put(b"warm", b"up")  # the segment's room preallocated (its zeros are a pwrite too)
        io.reset()
        with db.batch() as b:
            for i in range(200):
                b.put(f"key{i}".encode(), b"v" * 20)
        assert io.writes == 1
        assert io.fsyncs == 1
        io.reset()
        for i in range(5):  # for contrast: single puts pay one fsync each
            db.put(f"single{i}".encode(), b"v")
        assert io.fsyncs == 5


def test_bulk_load_speedup_batches_vs_single_puts(tmp_path):
    """Measured, not asserted: bulk loading 50k items, batches of 1000 vs one put each."""
    n, chunk = 50_000, 1000
    items = [(f"user:{i:08d}".encode(), (f"value-{i}-".encode() * 8)[:100]) for i in range(n)]

    def load_single(path) -> float:
        with bitkv.open(path, auto_compact=False) as db:
            t0 = time.perf_counter()
            for k, v in items:
                db.put(k, v)
            elapsed = time.perf_counter() - t0
            assert len(db) == n
        return elapsed

    def load_batched(path) -> float:
        with bitkv.open(path, auto_compact=False) as db:
            t0 = time.perf_counter()
            for start in range(0, n, chunk):
                with db.batch() as b:
                    for k, v in items[start : start + chunk]:
                        b.put(k, v)
            elapsed = time.perf_counter() - t0
            assert len(db) == n
        return elapsed

    single = min(load_single(tmp_path / f"s{i}") for i in range(2))
    batched = min(load_batched(tmp_path / f"b{i}") for i in range(2))
    for i in range(2):
        shutil.rmtree(tmp_path / f"s{i}")
        shutil.rmtree(tmp_path / f"b{i}")
    print(f"\nbulk load of {n} items: single puts {single:.3f} s ({n / single:,.0f}/s), "
          f"batches of {chunk} {batched:.3f} s ({n / batched:,.0f}/s), "
          f"speedup {single / batched:.1f}x")

    # With sync="always" every single put pays an fsync; a batch pays one.
    m = 300
    with bitkv.open(tmp_path / "sa", auto_compact=False, sync="always") as db:
        t0 = time.perf_counter()
        for k, v in items[:m]:
            db.put(k, v)
        single_always = time.perf_counter() - t0
    with bitkv.open(tmp_path / "ba", auto_compact=False, sync="always") as db:
        t0 = time.perf_counter()
        with db.batch() as b:
            for k, v in items[:m]:
                b.put(k, v)
        batched_always = time.perf_counter() - t0
    print(f"sync='always', {m} items: single puts {single_always:.3f} s, one batch "
          f"{batched_always:.4f} s, speedup {single_always / batched_always:.0f}x")
