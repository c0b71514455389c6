"""The Store's everyday behaviour: mapping API, reopen, rotation, opening rules, closed
stores, threads and sync modes."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from conftest import segment_files, snapshot_dir

import bitkv
from bitkv import segment as seg_mod
from bitkv.fileio import FileIO

SYNC_MODES = ["always", "interval", "never"]


@pytest.fixture
def db_path(fast_db_path):
    """Stores of this module live on tmpfs when available (see conftest.fast_base)."""
    return fast_db_path


# -- the mapping API ------------------------------------------------------------------------


def test_put_get_overwrite_delete(db):
    assert db.get(b"a") is None
    assert db.get(b"a", b"dflt") == b"dflt"
    db.put(b"a", b"1")
    assert db.get(b"a") == b"1"
    db.put(b"a", b"2")
    assert db.get(b"a") == b"2"
    assert len(db) == 1
    assert db.delete(b"a") is True
    assert db.get(b"a") is None
    assert db.delete(b"a") is False
    assert db.delete(b"never-there") is False
    assert len(db) == 0


def test_mapping_protocol(db):
    db[b"x"] = b"1"
    db["y"] = b"2"
    assert db[b"x"] == b"1"
    assert db[b"y"] == b"2"
    assert b"x" in db
    assert "y" in db
    assert b"z" not in db
    with pytest.raises(KeyError):
        db[b"z"]
    del db[b"x"]
    assert b"x" not in db
    with pytest.raises(KeyError):
        del db[b"x"]
    assert sorted(db) == [b"y"]
    assert sorted(db.values()) == [b"2"]
    assert len(db) == 1


def test_keys_and_items_with_prefix(db):
    data = {b"user:1": b"a", b"user:2": b"b", b"item:1": b"c", b"use": b"d"}
    for k, v in data.items():
        db.put(k, v)
    assert sorted(db.keys()) == sorted(data)
    assert sorted(db.keys(prefix=b"user:")) == [b"user:1", b"user:2"]
    assert sorted(db.keys(prefix="user:")) == [b"user:1", b"user:2"]
    assert sorted(db.keys(prefix=b"nothing")) == []
    assert sorted(db.items(prefix=b"item")) == [(b"item:1", b"c")]
    assert sorted(db.items()) == sorted(data.items())
    assert all(type(k) is bytes for k in db)


def test_keys_skip_keys_deleted_during_iteration(db):
    for i in range(10):
        db.put(b"k%d" % i, b"v")
    it = db.keys()
    db.delete(b"k5")
    assert b"k5" not in list(it)


def test_data_survives_reopen(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"keep", b"v1")
        db.put(b"over", b"old")
        db.put(b"over", b"new")
        db.put(b"gone", b"x")
        db.delete(b"gone")
        db.put(b"empty", b"")
    with bitkv.open(db_path) as db:
        assert db.get(b"keep") == b"v1"
        assert db.get(b"over") == b"new"
        assert db.get(b"gone") is None
        assert b"gone" not in db
        assert db.get(b"empty") == b""
        assert sorted(db.keys()) == [b"empty", b"keep", b"over"]
        # And a second generation of writes on top of the recovered state.
        db.put(b"gone", b"back")
    with bitkv.open(db_path) as db:
        assert db.get(b"gone") == b"back"
        assert len(db) == 4


def test_context_manager_closes(db_path):
    with bitkv.open(db_path) as db:
        assert not db.closed
    assert db.closed


def test_stats_counts(db_path):
    with bitkv.open(db_path) as db:
        for i in range(10):
            db.put(b"k%d" % i, b"v" * 10)
        db.put(b"k0", b"w" * 10)
        db.delete(b"k1")
        s = db.stats()
        assert s["keys"] == 9
        assert s["segments"] == 1
        assert s["sync"] == "interval"
        assert s["live_bytes"] == 9 * (28 + 2 + 10)
        assert s["dead_bytes"] > 0
        assert s["disk_bytes"] >= s["live_bytes"] + s["dead_bytes"]
        assert s["recovery"]["truncated_bytes"] == 0
        assert s["recovery"]["corrupt_bytes"] == 0


# -- segment rotation ----------------------------------------------------------------------


def test_rotation_many_segments_all_readable_across_reopen(db_path):
    rng = random.Random(1)
    expected = {}
    with bitkv.open(db_path, max_segment_size=4096, sync="never") as db:
        for i in range(600):
            k = b"key-%04d" % rng.randrange(400)
            v = rng.randbytes(rng.randrange(0, 200))
            db.put(k, v)
            expected[k] = v
            if i % 7 == 0:
                victim = b"key-%04d" % rng.randrange(400)
                db.delete(victim)
                expected.pop(victim, None)
        assert db.stats()["segments"] >= 10
        assert {k: db.get(k) for k in expected} == expected
    files = segment_files(db_path)
    assert len(files) >= 10
    for f in files:
        # No append segment ever grows past the limit when records are small.
        assert os.path.getsize(f) <= 4096
    with bitkv.open(db_path, max_segment_size=4096) as db:
        assert len(db) == len(expected)
        assert dict(db.items()) == expected
        assert sorted(db.keys()) == sorted(expected)
    with bitkv.open(db_path, readonly=True) as db:
        assert dict(db.items()) == expected


def test_record_larger_than_segment_limit(db_path):
    big = os.urandom(10_000)
    with bitkv.open(db_path, max_segment_size=4096) as db:
        db.put(b"small", b"s")
        db.put(b"big", big)
        db.put(b"after", b"a")
        assert db.get(b"big") == big
    with bitkv.open(db_path, max_segment_size=4096) as db:
        assert db.get(b"big") == big
        assert db.get(b"small") == b"s"
        assert db.get(b"after") == b"a"


def test_reopen_with_different_segment_size(db_path):
    with bitkv.open(db_path, max_segment_size=4096) as db:
        for i in range(200):
            db.put(b"k%d" % i, b"x" * 50)
    with bitkv.open(db_path) as db:  # default (large) limit: keeps appending to the last one
        for i in range(200, 300):
            db.put(b"k%d" % i, b"x" * 50)
    with bitkv.open(db_path, max_segment_size=4096) as db:
        assert len(db) == 300
        assert all(db.get(b"k%d" % i) == b"x" * 50 for i in range(300))


# -- opening rules: directory validation -----------------------------------------------------


def test_empty_directory_becomes_a_store(tmp_path):
    path = tmp_path / "empty"
    path.mkdir()
    with bitkv.open(path) as db:
        db.put(b"a", b"b")
    assert "BITKV" in os.listdir(path)
    with bitkv.open(path) as db:
        assert db.get(b"a") == b"b"


def test_missing_directory_is_created(tmp_path):
    path = tmp_path / "new"
    with bitkv.open(str(path)) as db:
        db.put(b"a", b"b")
    assert path.is_dir()
    with open(path / "BITKV", "rb") as fh:
        assert fh.read().startswith(b"bitkv store\nformat-version: 2\n")


@pytest.mark.parametrize("other", ["notes.txt", "data.db", ".hidden", "000001.data"])
def test_directory_with_other_files_is_not_a_store(tmp_path, other):
    path = tmp_path / "docs"
    path.mkdir()
    (path / other).write_bytes(b"precious")
    before = snapshot_dir(str(path))
    with pytest.raises(bitkv.NotAStoreError) as exc:
        bitkv.open(path)
    assert other in str(exc.value)
    assert snapshot_dir(str(path)) == before


def test_directory_with_subdirectory_is_not_a_store(tmp_path):
    path = tmp_path / "proj"
    (path / "sub").mkdir(parents=True)
    with pytest.raises(bitkv.NotAStoreError):
        bitkv.open(path)
    assert os.listdir(path) == ["sub"]


@pytest.mark.parametrize("name", ["notes.tmp", "000001.data.tmp", "LOCK"])
def test_directory_with_only_a_user_tmp_or_lock_file_is_not_a_store(tmp_path, name):
    """Found by this suite (fixed in a3bbf6f): any '*.tmp' or 'LOCK' name counted as bitkv's
    own, so such a directory became a store; the user's notes.tmp was then unlinked at open
    and a user's LOCK file truncated and overwritten with a pid."""
    path = tmp_path / "scratch"
    path.mkdir()
    (path / name).write_bytes(b"precious")
    with pytest.raises(bitkv.NotAStoreError) as exc:
        bitkv.open(path)
    assert name in str(exc.value)
    assert (path / name).read_bytes() == b"precious"
    assert sorted(os.listdir(path)) == [name]


def test_user_tmp_file_inside_a_store_is_not_removed(db_path):
    """Only bitkv's own temporary names are leftovers to clean up at open."""
    with bitkv.open(db_path) as db:
        db.put(b"a", b"1")
    user = os.path.join(db_path, "notes.tmp")
    with open(user, "wb") as fh:
        fh.write(b"precious")
    with bitkv.open(db_path) as db:
        assert db.get(b"a") == b"1"
    with open(user, "rb") as fh:
        assert fh.read() == b"precious"


def test_regular_file_is_not_a_store(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"hello")
    for kwargs in ({}, {"readonly": True}, {"create": False}):
        with pytest.raises(bitkv.NotAStoreError):
            bitkv.open(path, **kwargs)
    assert path.read_bytes() == b"hello"


@pytest.mark.parametrize("readonly", [False, True])
def test_newer_marker_version_is_refused_and_nothing_changes(db_path, readonly):
    with bitkv.open(db_path) as db:
        db.put(b"a", b"b")
    os.remove(os.path.join(db_path, "LOCK"))
    with open(os.path.join(db_path, "BITKV"), "wb") as fh:
        fh.write(b"bitkv store\nformat-version: 3\n")
    before = snapshot_dir(db_path)
    with pytest.raises(bitkv.FormatVersionError) as exc:
        bitkv.open(db_path, readonly=readonly)
    assert "3" in str(exc.value)
    assert snapshot_dir(db_path) == before


def test_newer_segment_version_is_refused(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"a", b"b")
    seg = segment_files(db_path)[0]
    with open(seg, "rb") as fh:
        data = bytearray(fh.read())
    hdr = seg_mod.SegmentHeader(seg_mod.KIND_APPEND, 1, 1, 42, version=seg_mod.FORMAT_VERSION + 1)
    data[: seg_mod.HEADER_SIZE] = hdr.encode()
    with open(seg, "wb") as fh:
        fh.write(data)
    with pytest.raises(bitkv.FormatVersionError):
        bitkv.open(db_path)
    with open(seg, "rb") as fh:
        assert fh.read() == bytes(data)
    # The failed open released its lock: another attempt fails the same way, not with LockError.
    with pytest.raises(bitkv.FormatVersionError):
        bitkv.open(db_path)


def test_foreign_marker_is_not_a_store(tmp_path):
    path = tmp_path / "d"
    path.mkdir()
    (path / "BITKV").write_bytes(b"something else entirely\n")
    with pytest.raises(bitkv.NotAStoreError):
        bitkv.open(path)
    assert os.listdir(path) == ["BITKV"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sync": "sometimes"},
        {"sync_interval": 0},
        {"sync_interval": -1},
        {"max_segment_size": 100},
        {"max_segment_size": 2**40},
        {"max_segment_size": 4096.0},
    ],
)
def test_bad_options_are_refused_before_touching_disk(db_path, kwargs):
    with pytest.raises(ValueError):
        bitkv.open(db_path, **kwargs)
    assert not os.path.exists(db_path)


def test_bad_clock_is_refused(db_path):
    with pytest.raises(TypeError):
        bitkv.open(db_path, clock=123)
    assert not os.path.exists(db_path)


# -- closed stores ---------------------------------------------------------------------------


def test_closed_store_operations_raise(db_path):
    db = bitkv.open(db_path)
    db.put(b"a", b"1")
    db.put(b"t", b"2", ttl=100)
    db.close()
    assert db.closed
    calls = {
        "get": lambda: db.get(b"a"),
        "getitem": lambda: db[b"a"],
        "put": lambda: db.put(b"a", b"2"),
        "setitem": lambda: db.__setitem__(b"a", b"2"),
        "delete": lambda: db.delete(b"a"),
        "delitem": lambda: db.__delitem__(b"a"),
        "contains": lambda: b"a" in db,
        "len": lambda: len(db),
        "iter": lambda: list(db),
        "keys": lambda: list(db.keys()),
        "items": lambda: list(db.items()),
        "values": lambda: list(db.values()),
        "ttl": lambda: db.ttl(b"t"),
        "expire": lambda: db.expire(b"a", 5),
        "persist with ttl": lambda: db.persist(b"t"),
        "persist without ttl": lambda: db.persist(b"a"),
        "sync": lambda: db.sync(),
        "stats": lambda: db.stats(),
    }
    for name, call in calls.items():
        try:
            call()
        except bitkv.ClosedError:
            continue
        pytest.fail(f"{name} on a closed store did not raise ClosedError")
    db.close()  # idempotent
    db.close()
    assert db.closed
    with bitkv.open(db_path) as again:  # and the lock was released
        assert again.get(b"a") == b"1"


def test_close_is_idempotent_and_releases_the_lock(db_path):
    db = bitkv.open(db_path)
    db.close()
    db.close()
    with bitkv.open(db_path):
        pass


def test_closed_error_is_a_bitkv_error():
    assert issubclass(bitkv.ClosedError, bitkv.Error)
    assert issubclass(bitkv.IntegrityError, bitkv.CorruptionError)


# -- threads ---------------------------------------------------------------------------------


def test_threads_disjoint_and_overlapping_keys(db_path):
    n_threads, n_ops = 4, 300
    errors: list[BaseException] = []
    last_written: dict[bytes, set[bytes]] = {}
    mu = threading.Lock()
    barrier = threading.Barrier(n_threads)

    def worker(t: int) -> None:
        try:
            rng = random.Random(t)
            barrier.wait()
            for i in range(n_ops):
                own = b"own-%d-%d" % (t, i % 50)
                v = b"%d:%d:" % (t, i) + rng.randbytes(rng.randrange(0, 120))
                db.put(own, v)
                got = db.get(own)
                if got != v:  # nobody else writes this key
                    raise AssertionError(f"own key {own!r}: {got!r} != {v!r}")
                shared = b"shared-%d" % (i % 10)
                sv = b"%d:%d" % (t, i)
                db.put(shared, sv)
                with mu:
                    last_written.setdefault(shared, set()).add(sv)
                got = db.get(shared)
                if got is None or not got.split(b":")[0].isdigit():
                    raise AssertionError(f"shared key {shared!r}: {got!r}")
                if i % 25 == 0:
                    db.delete(b"own-%d-%d" % (t, (i + 7) % 50))
                    list(db.keys(prefix=b"shared-"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with bitkv.open(db_path, max_segment_size=4096, sync="never") as db:
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        state = dict(db.items())
        assert len(db) == len(state)
        for shared, written in last_written.items():
            assert state[shared] in written
    with bitkv.open(db_path, max_segment_size=4096) as db:
        assert dict(db.items()) == state


# -- sync modes and crash (kill -9) simulation ---------------------------------------------


@pytest.mark.parametrize("mode", SYNC_MODES)
def test_sync_modes_round_trip(tmp_path, mode):
    db_path = str(tmp_path / "db")  # a real file system, not tmpfs: fsync must work there
    with bitkv.open(db_path, sync=mode, sync_interval=0.01, max_segment_size=4096) as db:
        assert db.stats()["sync"] == mode
        for i in range(150):
            db.put(b"k%d" % i, b"v%d" % i)
        db.sync()
        db.delete(b"k0")
    with bitkv.open(db_path, sync=mode) as db:
        assert len(db) == 149
        assert db.get(b"k0") is None
        assert all(db.get(b"k%d" % i) == b"v%d" % i for i in range(1, 150))


@pytest.mark.parametrize("mode", SYNC_MODES)
def test_abandon_keeps_every_acknowledged_write(tmp_path, mode):
    db_path = str(tmp_path / "db")  # a real file system, not tmpfs
    expected = {}
    db = bitkv.open(db_path, sync=mode, max_segment_size=4096)
    for i in range(200):
        k = b"k%d" % (i % 80)
        v = b"%d" % i * 5
        db.put(k, v)
        expected[k] = v
        if i % 9 == 0:
            db.delete(b"k%d" % ((i + 3) % 80))
            expected.pop(b"k%d" % ((i + 3) % 80), None)
    db._abandon()
    assert db.closed
    with pytest.raises(bitkv.ClosedError):
        db.get(b"k1")
    with bitkv.open(db_path, sync=mode, max_segment_size=4096) as db:
        assert dict(db.items()) == expected
        recovered = db.stats()["recovery"]
        # Nothing torn: only the preallocated zeros past the data were cut.
        assert recovered["truncated_bytes"] == recovered["zero_tail_bytes"]
        db.put(b"after", b"crash")
        db._abandon()
    with bitkv.open(db_path) as db:
        assert db.get(b"after") == b"crash"
        assert len(db) == len(expected) + 1


class _CountingIO(FileIO):
    """Counts fsync calls (the seam the crash harness uses)."""

    def __init__(self) -> None:
        self.fsyncs = 0

    def fsync(self, fd):
        self.fsyncs += 1
        super().fsync(fd)

    def fdatasync(self, fd):  # the active segment's
        self.fsyncs += 1
        super().fdatasync(fd)


def test_sync_always_fsyncs_before_put_returns(tmp_path):
    io = _CountingIO()
    with bitkv.open(tmp_path / "db", sync="always", fileio=io) as db:
        for i in range(5):
            before = io.fsyncs
            db.put(b"k%d" % i, b"v")
            assert io.fsyncs == before + 1
        before = io.fsyncs
        db.delete(b"k0")
        assert io.fsyncs == before + 1


def test_sync_never_leaves_fsync_to_close_and_sync(tmp_path):
    io = _CountingIO()
    db = bitkv.open(tmp_path / "db", sync="never", fileio=io)
    before = io.fsyncs
    for i in range(20):
        db.put(b"k%d" % i, b"v")
    assert io.fsyncs == before
    db.sync()
    assert io.fsyncs == before + 1
    db.sync()  # nothing new to flush
    assert io.fsyncs == before + 1
    db.put(b"more", b"v")
    db.close()
    assert io.fsyncs == before + 3  # the segment, then the DURABLE mark that vouches for it


def test_sync_interval_flushes_in_the_background(tmp_path):
    io = _CountingIO()
    with bitkv.open(tmp_path / "db", sync="interval", sync_interval=0.05, fileio=io) as db:
        before = io.fsyncs
        db.put(b"k", b"v")
        assert io.fsyncs == before  # the put itself does not wait for the disk
        deadline = time.monotonic() + 5
        while io.fsyncs == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert io.fsyncs > before, "the flusher never synced the write"
