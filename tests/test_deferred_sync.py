"""Store.deferred_sync and Store.sync_pending: group commit for a caller that acknowledges many
writes at once (``bitkv serve --sync always`` once per event-loop iteration)."""

from __future__ import annotations

import threading

import pytest

import bitkv
from bitkv.crashtest.recording import DiskModel, RecordingFileIO
from bitkv.fileio import FileIO


class CountingIO(FileIO):
    def __init__(self) -> None:
        self.fsyncs = 0
        self.fail = False

    # Both count: the active segment is made durable with fdatasync where the store
    # preallocates it, with fsync elsewhere (headers, directories, MANIFEST).
    def fsync(self, fd: int) -> None:
        if self.fail:
            raise OSError(5, "injected fsync failure")
        self.fsyncs += 1
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if self.fail:
            raise OSError(5, "injected fdatasync failure")
        self.fsyncs += 1
        super().fdatasync(fd)


@pytest.fixture
def counted(tmp_path):
    io = CountingIO()
    db = bitkv.open(str(tmp_path / "db"), sync="always", fileio=io, auto_compact=False)
    yield db, io
    db.close()


def test_writes_inside_the_block_share_one_fsync(counted):
    db, io = counted
    before = io.fsyncs
    db.put(b"outside", b"1")
    assert io.fsyncs == before + 1  # sync="always" keeps its promise outside the block
    with db.deferred_sync():
        start = io.fsyncs
        for i in range(50):
            db.put(b"k%d" % i, b"v")
        db.delete(b"k0")
        with db.batch() as b:
            b.put(b"b", b"1")
        assert db.incr(b"n") == 1
        assert io.fsyncs == start  # nothing waited
        db.sync_pending()
        assert io.fsyncs == start + 1  # one fsync for all of them
        db.sync_pending()
        assert io.fsyncs == start + 1  # nothing pending: no system call
        db.put(b"last", b"x")
        assert io.fsyncs == start + 1
    assert io.fsyncs == start + 2  # leaving the block makes the rest durable
    assert db.get(b"last") == b"x" and db.get(b"k0") is None


def test_other_threads_keep_their_promise_while_one_defers(counted):
    db, io = counted
    with db.deferred_sync():
        start = io.fsyncs
        db.put(b"mine", b"1")
        assert io.fsyncs == start

        def other() -> None:
            db.put(b"theirs", b"2")

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert io.fsyncs == start + 1  # the other thread's put waited for its fsync
        # ...which covered this thread's earlier write too
        db.sync_pending()
        assert io.fsyncs == start + 1


def test_blocks_nest_and_only_the_outermost_syncs(counted):
    db, io = counted
    with db.deferred_sync():
        start = io.fsyncs
        with db.deferred_sync():
            db.put(b"a", b"1")
        assert io.fsyncs == start
        db.put(b"b", b"2")
    assert io.fsyncs == start + 1


def test_leaving_by_an_exception_still_syncs(counted):
    db, io = counted
    start = io.fsyncs
    with pytest.raises(KeyError), db.deferred_sync():
        db.put(b"a", b"1")
        raise KeyError("boom")
    assert io.fsyncs == start + 1


def test_a_failed_fsync_is_reported_and_nothing_is_promised_after_it(counted):
    db, io = counted
    with pytest.raises(OSError), db.deferred_sync():
        db.put(b"a", b"1")
        io.fail = True
        db.sync_pending()
    io.fail = False
    with pytest.raises(bitkv.Error, match="refuses writes"):
        db.sync_pending()  # not a second fsync that could pretend all is well
    with pytest.raises(bitkv.Error):
        db.put(b"b", b"2")


def test_closing_inside_the_block_and_read_only_stores(tmp_path):
    db = bitkv.open(str(tmp_path / "db"), sync="always")
    with db.deferred_sync():
        db.put(b"a", b"1")
        db.close()  # close() fsyncs; leaving the block does not touch the closed store
    with pytest.raises(bitkv.ClosedError):
        db.sync_pending()
    with bitkv.open(str(tmp_path / "db"), readonly=True) as ro:
        ro.sync_pending()  # nothing pending, nothing to do
        with ro.deferred_sync():
            assert ro.get(b"a") == b"1"


@pytest.mark.parametrize("mode", ["interval", "never"])
def test_sync_pending_fsyncs_in_every_mode(tmp_path, mode):
    io = CountingIO()
    with bitkv.open(str(tmp_path / "db"), sync=mode, fileio=io, auto_compact=False) as db:
        start = io.fsyncs
        db.put(b"a", b"1")
        assert io.fsyncs == start
        db.sync_pending()
        assert io.fsyncs == start + 1


def test_writes_are_durable_exactly_after_sync_pending(tmp_path):
    """Per the power-loss model: not durable before sync_pending returns, durable after."""
    path = tmp_path / "db"
    bitkv.open(str(path)).close()
    io = RecordingFileIO(str(path))
    db = bitkv.open(str(path), sync="always", fileio=io, auto_compact=False)
    try:
        with db.deferred_sync():
            db.put(b"k", b"v" * 100)
            model = DiskModel(io.initial)
            for event in list(io.events):
                model.apply(event)
            seg = db.stats()["active_segment"]
            ino = next(e[1] for e in io.events if e[0] == "write")
            end = max(e[2] + len(e[3]) for e in io.events if e[0] == "write" and e[1] == ino)
            assert not model.is_durable(ino, end), seg
            db.sync_pending()
            for event in list(io.events)[model.applied:]:
                model.apply(event)
            assert model.is_durable(ino, end)
    finally:
        db.close()
