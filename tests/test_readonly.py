"""readonly=True and create=False: no writes, and nothing created where no store exists."""

from __future__ import annotations

import os

import pytest
from conftest import newest_segment, snapshot_dir

import bitkv


@pytest.fixture
def filled(db_path, clock):
    with bitkv.open(db_path, clock=clock) as db:
        db.put(b"a", b"1")
        db.put(b"b", b"2")
        db.put(b"t", b"3", ttl=100)
        db.delete(b"b")
    return db_path


def test_readonly_reads_everything(filled, clock):
    with bitkv.open(filled, readonly=True, clock=clock) as db:
        assert db.readonly
        assert db.get(b"a") == b"1"
        assert db.get(b"b") is None
        assert db[b"t"] == b"3"
        assert db.ttl(b"t") == 100.0
        assert sorted(db.keys()) == [b"a", b"t"]
        assert sorted(db.items()) == [(b"a", b"1"), (b"t", b"3")]
        assert len(db) == 2
        assert b"a" in db
        assert db.stats()["readonly"] is True
        db.sync()  # nothing to flush; not an error


def test_readonly_writes_raise(filled, clock):
    before = snapshot_dir(filled)
    with bitkv.open(filled, readonly=True, clock=clock) as db:
        writes = {
            "put": lambda: db.put(b"a", b"x"),
            "put new": lambda: db.put(b"new", b"x"),
            "put ttl": lambda: db.put(b"a", b"x", ttl=5),
            "setitem": lambda: db.__setitem__(b"a", b"x"),
            "delete": lambda: db.delete(b"a"),
            "delete missing": lambda: db.delete(b"missing"),
            "delitem": lambda: db.__delitem__(b"a"),
            "expire": lambda: db.expire(b"a", 5),
            "expire missing": lambda: db.expire(b"missing", 5),
            "persist": lambda: db.persist(b"t"),
            "persist no ttl": lambda: db.persist(b"a"),
        }
        for name, call in writes.items():
            try:
                call()
            except bitkv.ReadOnlyError as exc:
                assert filled in str(exc)
                continue
            pytest.fail(f"{name} on a read-only store did not raise ReadOnlyError")
        if hasattr(db, "compact"):
            with pytest.raises(bitkv.ReadOnlyError):
                db.compact()
        assert db.get(b"a") == b"1"
        assert db.ttl(b"t") == 100.0
    assert snapshot_dir(filled) == before


def test_readonly_is_a_bitkv_error():
    assert issubclass(bitkv.ReadOnlyError, bitkv.Error)
    assert issubclass(bitkv.StoreNotFoundError, bitkv.Error)


@pytest.mark.parametrize("kwargs", [{"readonly": True}, {"create": False},
                                    {"readonly": True, "create": False}])
def test_missing_path_is_not_created(tmp_path, kwargs):
    path = tmp_path / "nope"
    with pytest.raises(bitkv.StoreNotFoundError) as exc:
        bitkv.open(path, **kwargs)
    assert str(path) in str(exc.value)
    assert not path.exists()
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs", [{"readonly": True}, {"create": False}])
def test_empty_directory_is_not_turned_into_a_store(tmp_path, kwargs):
    path = tmp_path / "empty"
    path.mkdir()
    with pytest.raises(bitkv.StoreNotFoundError):
        bitkv.open(path, **kwargs)
    assert os.listdir(path) == []


def test_create_false_opens_an_existing_store(filled):
    with bitkv.open(filled, create=False) as db:
        assert db.get(b"a") == b"1"
        db.put(b"c", b"3")
    with bitkv.open(filled, create=False) as db:
        assert db.get(b"c") == b"3"


def test_readonly_does_not_take_or_touch_the_lock(filled):
    lock = os.path.join(filled, "LOCK")
    os.remove(lock)
    with bitkv.open(filled, readonly=True) as db:
        assert db.get(b"a") == b"1"
        with bitkv.open(filled) as writer:  # a writer can open beside it
            writer.put(b"w", b"1")
    assert os.path.exists(lock)  # created by the writer, not the reader


def test_readonly_leaves_a_torn_tail_on_disk(filled):
    seg = newest_segment(filled)
    size = os.path.getsize(seg)
    with open(seg, "ab") as fh:
        fh.write(b"\x00" * 50)
    before = snapshot_dir(filled)
    with bitkv.open(filled, readonly=True) as db:
        assert db.get(b"a") == b"1"
        assert db.stats()["recovery"]["truncated_bytes"] == 50
    assert snapshot_dir(filled) == before
    with bitkv.open(filled) as db:
        assert db.get(b"a") == b"1"
    assert os.path.getsize(seg) == size


def test_readonly_len_and_keys_hide_expired_keys(filled, clock):
    with bitkv.open(filled, readonly=True, clock=clock) as db:
        assert len(db) == 2
        clock.advance(100)
        assert len(db) == 1
        assert list(db.keys()) == [b"a"]
        with pytest.raises(KeyError):
            db.ttl(b"t")


# -- issue 11 item 7: a writer's recovery truncating the tail a reader is reading ------------

_TRUNCATING_READER = """
import os, sys, bitkv
from bitkv.fileio import FileIO
seg, cut = sys.argv[2], int(sys.argv[3])

class WriterTruncatesMeanwhile(FileIO):
    # A writer opening the store cuts the torn tail while this reader reads it.
    done = False

    def _cut(self):
        if not self.done:
            WriterTruncatesMeanwhile.done = True
            os.truncate(seg, cut)

    def map(self, fd, length):
        mm = super().map(fd, length)
        if length > cut and os.fstat(fd).st_ino == os.stat(seg).st_ino:
            self._cut()
        return mm

    def pread(self, fd, size, offset):
        if offset + size > cut and os.fstat(fd).st_ino == os.stat(seg).st_ino:
            self._cut()
        return super().pread(fd, size, offset)

db = bitkv.open(sys.argv[1], readonly=True, fileio=WriterTruncatesMeanwhile())
print(len(db), db.get(b"k7"), flush=True)
db.refresh()
print(len(db), flush=True)
"""


def _store_with_torn_tail(path, tail: bytes, keys: int = 50) -> tuple[str, int]:
    with bitkv.open(path, auto_compact=False) as db:
        for i in range(keys):
            db.put(b"k%d" % i, b"v" * 100)
    seg = newest_segment(str(path))
    cut = os.path.getsize(seg)
    with open(seg, "ab") as fh:
        fh.write(tail)
    return seg, cut


def _torn_record(seq: int, value_len: int, body: bytes) -> bytes:
    import struct
    return struct.pack("<IBBHIQQ", 0, 0, 0, 3, value_len, seq, 0) + b"big" + body


def test_reader_survives_the_writer_truncating_the_tail_it_scans(tmp_path):
    """A read-only opener mapped the torn tail and died of SIGBUS when a writer's recovery
    truncated it (no exception, no message); the CLI's read commands too."""
    import subprocess
    import sys

    path = tmp_path / "db"
    seg, cut = _store_with_torn_tail(path, _torn_record(51, 8 << 20, os.urandom(1 << 20)))
    out = subprocess.run([sys.executable, "-c", _TRUNCATING_READER, str(path), seg, str(cut)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    assert out.stdout.split("\n")[:2] == [f"50 {b'v' * 100!r}", "50"]
    assert os.path.getsize(seg) == cut


def test_crafted_torn_tail_costs_a_bounded_search(tmp_path, monkeypatch):
    """A torn value crafted to hold a plausible header every 29 bytes made every open search
    it to the end (64 MiB: ~18 s per open); the search at the tail is bounded now."""
    import struct

    from bitkv import record

    junk = struct.pack("<IBBHIQQ", 0, 0, 0, 1, 0, 52, 0) + b"k"  # seq fits, CRC does not
    tail = _torn_record(51, 60 << 20, junk * ((4 << 20) // len(junk)))
    seg, cut = _store_with_torn_tail(tmp_path / "db", tail)
    checked = 0
    real = record.intact_size_at

    def counting(buf, pos, end):  # type: ignore[no-untyped-def]
        nonlocal checked
        checked += 1
        return real(buf, pos, end)

    monkeypatch.setattr(record, "intact_size_at", counting)
    with bitkv.open(tmp_path / "db", readonly=True) as db:
        assert len(db) == 50
        assert db.stats()["recovery"]["truncated_bytes"] == len(tail)
    assert checked < 100_000  # 4 MiB of junk: ~145,000 candidates searched before
    report = bitkv.check(tmp_path / "db")
    assert any("torn" in str(issue) for issue in report.issues)
    with bitkv.open(tmp_path / "db", auto_compact=False) as db:
        assert len(db) == 50
    assert os.path.getsize(seg) == cut


def test_readonly_gets_follow_the_writer_through_rotation(tmp_path):
    """The reader's newest segment is read with pread; once sealed it is mapped again."""
    path = tmp_path / "db"
    w = bitkv.open(path, max_segment_size=4096, auto_compact=False)
    try:
        w.put(b"a", b"1")
        with bitkv.open(path, readonly=True) as r:
            newest = r._table.segments[-1]
            assert newest.pread_only and newest.mm is None
            assert r.get(b"a") == b"1"
            for i in range(200):
                w.put(b"k%d" % i, b"x" * 50)
            r.refresh()
            assert newest.mm is not None and not newest.pread_only
            assert r._table.segments[-1].pread_only
            assert all(r.get(b"k%d" % i) == b"x" * 50 for i in range(200))
    finally:
        w.close()


def test_refresh_takes_the_earliest_expiry_again_only_when_it_indexed_records(
        tmp_path, clock, monkeypatch):
    """A reader polling an idle writer: refresh() walked every expiry of the store (to find
    the earliest) at each call, with nothing new; now only after it indexed records, and
    a TTL record it indexes still expires on time."""
    from bitkv import keydir

    walks = []
    real = keydir.KeyDir.recompute_next_expiry

    def counting(self):
        walks.append(len(self.expiries))
        real(self)

    monkeypatch.setattr(keydir.KeyDir, "recompute_next_expiry", counting)
    path = tmp_path / "db"
    w = bitkv.open(path, clock=clock, auto_compact=False, max_segment_size=4096)
    try:
        for i in range(50):
            w.put(b"k%d" % i, b"v", ttl=1000)
        with bitkv.open(path, readonly=True, clock=clock) as r:
            walks.clear()
            for _ in range(5):
                r.refresh()
            assert walks == []  # nothing new: no walk
            w.put(b"soon", b"s", ttl=10)
            r.refresh()
            assert walks == [51]
            for i in range(100):  # into new segments too
                w.put(b"more%d" % i, b"x" * 40)
            r.refresh()
            assert len(walks) == 2
            assert r[b"soon"] == b"s" and len(r) == 151
            clock.advance(11)
            assert r.get(b"soon") is None and len(r) == 150
    finally:
        w.close()
