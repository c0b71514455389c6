"""Edge cases of the engine fixed after review: each test fails on the code before its fix."""

from __future__ import annotations

import errno
import os

import pytest
from conftest import forget_fsyncs, tear

import bitkv
from bitkv import record
from bitkv.fileio import FileIO


def _segment(path) -> str:
    names = sorted(n for n in os.listdir(path) if n.endswith(".data"))
    return os.path.join(path, names[-1])


def test_torn_batch_then_later_damage_keeps_every_intact_record(tmp_path):
    """A batch torn at the tail gives its seqs back; otherwise the seq gap it left would make
    a later resync reject (and truncate) intact records."""
    path = tmp_path / "db"
    with bitkv.open(path, auto_compact=False) as db:
        db.put(b"before", b"0")
        start = db._log.active.size  # the file is longer while open: preallocated zeros
        with db.batch() as b:
            for i in range(12):
                b.put(b"batch%d" % i, b"x" * 20)
    seg = _segment(path)
    tear(seg, os.path.getsize(seg) - 30)  # tear the batch's end off, as a crash would
    with bitkv.open(path, auto_compact=False) as db:
        assert sorted(db.keys()) == [b"before"]
        assert os.path.getsize(seg) == start
        offsets = []
        for i in range(10):
            offsets.append(db._log.active.size)
            db.put(b"after%d" % i, b"y" * 10)
    forget_fsyncs(str(path))  # as if those writes were never fsynced: damage is then torn
    with open(seg, "r+b") as fh:  # damage the first record written after the torn batch
        fh.seek(offsets[0] + record.HEADER_SIZE)
        byte = fh.read(1)
        fh.seek(offsets[0] + record.HEADER_SIZE)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with bitkv.open(path, auto_compact=False) as db:
        assert sorted(db.keys()) == [b"after%d" % i for i in range(1, 10)] + [b"before"]


class _FailingFsync(FileIO):
    fail = False

    def fsync(self, fd: int) -> None:
        if _FailingFsync.fail:
            raise OSError(errno.EIO, "simulated fsync failure")
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if _FailingFsync.fail:
            raise OSError(errno.EIO, "simulated fdatasync failure")
        super().fdatasync(fd)


def test_failed_fsync_refuses_writes_until_reopen(tmp_path):
    path = tmp_path / "db"
    db = bitkv.open(path, sync="always", auto_compact=False, fileio=_FailingFsync())
    db.put(b"a", b"1")
    _FailingFsync.fail = True
    try:
        with pytest.raises(OSError):
            db.put(b"b", b"2")
        _FailingFsync.fail = False  # a retry would now "succeed": it must not be trusted
        with pytest.raises(bitkv.Error, match="fsync failed"):
            db.put(b"c", b"3")
        assert db.get(b"a") == b"1"  # reads go on
    finally:
        _FailingFsync.fail = False
        db._abandon()
    with bitkv.open(path, auto_compact=False) as db:
        assert db.get(b"a") == b"1"
        db.put(b"c", b"3")


@pytest.mark.parametrize("interval", [float("inf"), 1e12, 0, -1])
def test_sync_interval_out_of_range_is_refused(tmp_path, interval):
    with pytest.raises(ValueError, match="sync_interval"):
        bitkv.open(tmp_path / "db", sync_interval=interval)
    assert not (tmp_path / "db").exists()


def test_non_canonical_segment_names_are_not_loaded(tmp_path):
    path = tmp_path / "db"
    with bitkv.open(path, auto_compact=False) as db:
        db.put(b"k", b"v")
    os.link(_segment(path), path / "0000001.data")  # same bytes, a name bitkv never writes
    with bitkv.open(path, auto_compact=False) as db:
        assert db.stats()["segments"] == 1
        assert dict(db.items()) == {b"k": b"v"}
    assert (path / "0000001.data").exists()  # not ours: left alone


def test_read_of_damaged_record_raises_integrity_error(tmp_path):
    path = tmp_path / "db"
    db = bitkv.open(path, auto_compact=False)
    db.put(b"k", b"value")
    seg = _segment(path)
    with open(seg, "r+b") as fh:
        fh.seek(db._log.active.size - 1)  # the record's last byte (zeros follow it)
        fh.write(b"X")
    try:
        with pytest.raises(bitkv.IntegrityError):
            db.get(b"k")
        assert issubclass(bitkv.IntegrityError, bitkv.CorruptionError)
    finally:
        db.close()


class _FullDisk(FileIO):
    """A disk that fails mid-put (sync="always" appends pwrite): the pwrite writes half the
    record, then writing the rest fails with ENOSPC. The undo's ftruncate may be made to
    fail too."""

    def __init__(self) -> None:
        self.armed = False
        self.truncate_fails = False

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if self.armed:
            self.armed = False
            os.pwrite(fd, data[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        super().pwrite(fd, data, offset)

    def truncate(self, fd: int, size: int) -> None:
        if self.truncate_fails:
            raise OSError(errno.EIO, "simulated ftruncate failure")
        super().truncate(fd, size)


def test_full_disk_during_put_reports_enospc_and_store_stays_usable(tmp_path):
    """Issue 11 item 10: a short write followed by ENOSPC was reported as EIO "short write"."""
    path = tmp_path / "db"
    io = _FullDisk()
    db = bitkv.open(path, sync="always", auto_compact=False, fileio=io)
    try:
        db.put(b"a", b"1" * 100)
        size = db._log.active.size
        io.armed = True
        with pytest.raises(OSError) as info:
            db.put(b"b", b"2" * 100)
        assert info.value.errno == errno.ENOSPC
        assert os.path.getsize(_segment(path)) == size  # the half record was cut off
        # The undo worked: a full disk is not an fsync failure, the store goes on.
        db.put(b"c", b"3" * 100)
        assert db.get(b"c") == b"3" * 100
        assert db.get(b"b") is None
    finally:
        db.close()
    with bitkv.open(path, auto_compact=False) as db:
        assert dict(db.items()) == {b"a": b"1" * 100, b"c": b"3" * 100}
        assert db.stats()["recovery"]["corrupt_bytes"] == 0


def test_short_write_whose_undo_fails_refuses_writes(tmp_path):
    """Issue 11 item 4: the failed ftruncate was ignored and the seek back never ran, so the
    next (acknowledged, fsynced) put was indexed at a wrong offset and compaction deleted it."""
    path = tmp_path / "db"
    io = _FullDisk()
    db = bitkv.open(path, sync="always", auto_compact=False, fileio=io)
    try:
        for i in range(10):
            db.put(b"a%d" % i, b"A" * 500)
        db.put(b"a0", b"new")
        io.armed = True
        io.truncate_fails = True
        with pytest.raises(OSError):
            db.put(b"victim", b"V" * 1000)
        io.truncate_fails = False
        with pytest.raises(bitkv.Error, match="could not be undone"):
            db.put(b"acked", b"important")
        with pytest.raises(bitkv.Error, match="refuses writes"):
            db.compact()
        assert db.get(b"a5") == b"A" * 500  # reads go on
    finally:
        db._abandon()
    with bitkv.open(path, auto_compact=False) as db:
        assert db.get(b"a0") == b"new"
        assert len(db) == 10
        assert db.recovery_report.truncated_bytes > 0  # the half record: a torn tail
        db.put(b"acked", b"important")
        db.compact()
        assert db.get(b"acked") == b"important"


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("name", ["000001.data", "000001.hint"])
def test_symlinked_segment_or_hint_is_a_clear_error(tmp_path, name, readonly):
    """Issue 11 item 10: a symlinked segment gave a raw ELOOP (and a hint was followed)."""
    path = tmp_path / "db"
    with bitkv.open(path, auto_compact=False) as db:
        for i in range(20000):  # enough for a checkpoint hint at close
            db.put(b"k%d" % i, b"v" * 50)
    os.rename(path / name, tmp_path / name)
    os.symlink(tmp_path / name, path / name)
    with pytest.raises(bitkv.UnsafeFileError, match=name):
        bitkv.open(path, readonly=readonly, auto_compact=False)


class _SegmentsVanish(FileIO):
    """A read-only opener racing a compaction: listed segments are gone when opened."""

    def __init__(self, times: int) -> None:
        self.left = times

    def open_read(self, path: str) -> int:
        if path.endswith(".data") and self.left > 0:
            self.left -= 1
            raise FileNotFoundError(errno.ENOENT, "removed by compaction", path)
        return super().open_read(path)


def test_reader_racing_compaction_retries_then_raises_a_bitkv_error(tmp_path):
    """Issue 11 item 10: 8 retries without backoff, then a raw FileNotFoundError."""
    path = tmp_path / "db"
    with bitkv.open(path, auto_compact=False) as db:
        db.put(b"k", b"v")
    with bitkv.open(path, readonly=True, fileio=_SegmentsVanish(3)) as r:
        assert r.get(b"k") == b"v"
    with pytest.raises(bitkv.Error, match="kept changing while being read"):
        bitkv.open(path, readonly=True, fileio=_SegmentsVanish(100))
