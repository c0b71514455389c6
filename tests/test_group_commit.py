"""Group commit under ``sync="always"``: concurrent puts are committed in groups by the write
queue (writequeue.py: one write and one fdatasync per group, followers do no I/O), other writes
share fdatasyncs in LogWriter.wait_durable; every acknowledged write survives a power cut and a
kill -9 with eight writers at once, an fdatasync failure is final for every writer, and a lone
writer neither yields the GIL after each write nor spends a system call on the DURABLE mark."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest

import bitkv
from bitkv import durable
from bitkv import log as log_mod
from bitkv.crashtest.powerloss import FailingRecordingFileIO
from bitkv.crashtest.recording import DiskModel, RecordingFileIO, write_state
from bitkv.fileio import FileIO

THREADS = 8
SEGMENT = 4096  # small: the writers also race rotations


def _value(key: bytes) -> bytes:
    return key * 12


def _put(db: bitkv.Store, key: bytes) -> None:
    db.put(key, _value(key))


def _write_concurrently(db: bitkv.Store, io: RecordingFileIO | None, per_thread: int,
                        stop_on_error: bool = False, write: Callable[[bitkv.Store, bytes], object]
                        = _put) -> tuple[dict[bytes, int], list[BaseException]]:
    """``THREADS`` threads write (``write``: put by default) ``per_thread`` distinct keys each;
    return key -> the index of its acknowledgement in ``io.events`` (or a count without
    ``io``), and the errors raised."""
    acked: dict[bytes, int] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def writer(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            key = b"t%d-%03d" % (t, i)
            op = t * 1000 + i + 1
            if io is not None:
                io.current_op = op
                io.mark("intent", op)
            try:
                write(db, key)
            except (OSError, bitkv.Error) as exc:
                errors.append(exc)
                if stop_on_error:
                    return
                continue
            acked[key] = io.mark("ack", op) if io is not None else len(acked)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return acked, errors


class _SlowRecordingIO(RecordingFileIO):
    """A RecordingFileIO whose fdatasync returns 2 ms after it is logged, so that writers
    queue behind it. Logged at its start, it makes durable (in the disk model) only what was
    written before it began, as a real one promises: a writer whose record was appended
    meanwhile and that returned on the strength of this fdatasync would lose it in a cut."""

    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        time.sleep(0.002)


class _SlowFailingIO(FailingRecordingFileIO):
    def fdatasync(self, fd: int) -> None:
        super().fdatasync(fd)
        time.sleep(0.002)


def _power_cut_states(io: RecordingFileIO) -> list[tuple[int, dict[str, bytes]]]:
    """(point, files) for the state a power cut leaves just before each durability event
    (and at the end): what is on disk changes only at those, while acknowledgements keep
    coming, so these are the states with the most acknowledged writes to check."""
    model = DiskModel(io.initial)
    states = []
    for point, event in enumerate(io.events):
        if event[0] in ("fsync", "fsync_dir"):
            states.append((point, model.crash_state(random.Random(point), "synced")[0]))
        model.apply(event)
    states.append((len(io.events), model.crash_state(random.Random(0), "synced")[0]))
    return states


def _check_power_cuts(tmp: str, io: RecordingFileIO, acked: dict[bytes, int]) -> int:
    """Recover every power-cut state; each write acknowledged before it must be there."""
    checked = 0
    for point, files in _power_cut_states(io):
        where = os.path.join(tmp, f"cut-{point}")
        write_state(where, files)
        required = [k for k, at in acked.items() if at < point]
        with bitkv.open(where, max_segment_size=SEGMENT, auto_compact=False) as db:
            lost = [k for k in required if db.get(k) != _value(k)]
        assert not lost, (point, io.events[point - 1][:2] if point else None, lost[:5])
        checked += bool(required)
    return checked


def test_eight_writers_acknowledged_writes_survive_every_power_cut(fast_tmp):
    path = str(fast_tmp / "run")
    os.makedirs(path)
    io = _SlowRecordingIO(path)
    db = bitkv.open(path, sync="always", fileio=io, auto_compact=False,
                    max_segment_size=SEGMENT)
    acked, errors = _write_concurrently(db, io, per_thread=12)
    db._abandon()  # no clean close: the power cut may come after the last acknowledgement
    assert not errors and len(acked) == THREADS * 12
    assert sum(1 for ev in io.events if ev[0] == "create" and ev[1].endswith(".data")) >= 3
    checked = _check_power_cuts(str(fast_tmp), io, acked)
    assert checked > 10


def test_a_failed_fdatasync_under_eight_writers_is_final_and_loses_no_acknowledged_write(
        fast_tmp):
    path = str(fast_tmp / "run")
    os.makedirs(path)
    io = _SlowFailingIO(path, fail_at=6)
    db = bitkv.open(path, sync="always", fileio=io, auto_compact=False,
                    max_segment_size=1 << 20)
    io.armed = True
    acked, errors = _write_concurrently(db, io, per_thread=30, stop_on_error=True)
    assert io.failed
    # Every writer met the failure (the one whose fdatasync failed, and every other one
    # after it: nothing after a failed fsync can be promised durable) ...
    assert len(errors) == THREADS, errors
    assert any(isinstance(e, OSError) and e.errno == errno.EIO for e in errors)
    assert len(acked) < THREADS * 30
    # ... and the store refuses every write until it is reopened.
    with pytest.raises(bitkv.Error, match="refuses writes"):
        db.put(b"after", b"x")
    db._abandon()
    # What was acknowledged is on disk in the state a power cut leaves now.
    model = DiskModel(io.initial)
    for ev in io.events:
        model.apply(ev)
    where = str(fast_tmp / "cut")
    write_state(where, model.crash_state(random.Random(0), "synced")[0])
    with bitkv.open(where, auto_compact=False) as db:
        assert [k for k in acked if db.get(k) != _value(k)] == []


class _SlowSyncIO(FileIO):
    """fdatasync takes ``delay`` seconds; counts them and how many ran at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay)
            super().fdatasync(fd)
        finally:
            with self._lock:
                self.running -= 1


def test_concurrent_puts_are_committed_in_groups_one_fdatasync_at_a_time(fast_db_path):
    io = _SlowSyncIO(0.02)
    with bitkv.open(fast_db_path, sync="always", fileio=io, auto_compact=False) as db:
        acked, errors = _write_concurrently(db, None, per_thread=6)
        assert not errors and len(acked) == THREADS * 6
        for key in acked:
            assert db.get(key) == _value(key)
    # Each put its own fdatasync would be 48; the queue commits everything queued while the
    # last fdatasync ran (seven writers, then the ones it woke: groups of about 4-7).
    assert io.calls <= len(acked) // 3, io.calls
    assert io.most_at_once == 1  # one group at a time: nothing overlaps


class _CountingSyncIO(FileIO):
    """Counts fdatasyncs and the pwrites of records into segments (not the zeros written into
    preallocated room); with ``armed``, the first fdatasync blocks until ``gate`` is set."""

    def __init__(self) -> None:
        self.fdatasyncs = 0
        self.record_writes = 0
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        self._lock = threading.Lock()

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        if any(data):
            with self._lock:
                self.record_writes += 1
        super().pwrite(fd, data, offset)

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            self.fdatasyncs += 1
            armed, self.armed = self.armed, False
        if armed:
            self.entered.set()
            self.gate.wait(10)
        super().fdatasync(fd)


def test_puts_queued_behind_an_fdatasync_are_one_write_and_one_fdatasync(fast_db_path):
    """Regression for issue 14's group commit: every writer pwrote its own record, and the
    writers queued behind an fdatasync woke to take the GIL one by one, so 8 threads shared
    an fdatasync between about two puts. Now the next leader writes all of them at once."""
    io = _CountingSyncIO()
    db = bitkv.open(fast_db_path, sync="always", fileio=io, auto_compact=False)
    try:
        db.put(b"first", b"v")
        io.armed = True
        io.record_writes = io.fdatasyncs = 0
        leader = threading.Thread(target=db.put, args=(b"leader", b"x" * 100))
        leader.start()
        assert io.entered.wait(10)
        queue = db._write_queue
        assert queue is not None
        followers = [threading.Thread(target=db.put, args=(b"f%d" % i, b"y" * 100))
                     for i in range(THREADS - 1)]
        for th in followers:
            th.start()
        deadline = time.monotonic() + 10
        while len(queue) < len(followers) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert len(queue) == len(followers)
        io.gate.set()
        for th in [leader, *followers]:
            th.join(10)
        # The leader's put, then the seven queued behind it: two writes, two fdatasyncs.
        assert (io.record_writes, io.fdatasyncs) == (2, 2)
        assert db.get(b"leader") == b"x" * 100
        assert all(db.get(b"f%d" % i) == b"y" * 100 for i in range(THREADS - 1))
    finally:
        io.gate.set()
        db.close()


def test_eight_writers_on_a_real_disk_share_each_write_and_fdatasync(fast_db_path):
    """Not a timing test: whatever the disk's speed, each group is one write and one
    fdatasync, and eight threads putting at once form groups of more than one."""
    io = _CountingSyncIO()
    with bitkv.open(fast_db_path, sync="always", fileio=io, auto_compact=False) as db:
        io.record_writes = io.fdatasyncs = 0
        acked, errors = _write_concurrently(db, None, per_thread=40)
        assert not errors and len(acked) == THREADS * 40
        assert io.record_writes == io.fdatasyncs
        assert io.fdatasyncs < len(acked), (io.fdatasyncs, len(acked))
        assert all(db.get(k) == _value(k) for k in acked)


def _increment(db: bitkv.Store, key: bytes) -> None:
    db.incr(key)


def test_concurrent_increments_share_fdatasyncs_with_a_bounded_pipeline(fast_db_path,
                                                                        monkeypatch):
    """Writes other than plain puts (here incr) append under the writer lock themselves and
    share fdatasyncs in LogWriter.wait_durable."""
    handoffs: list[int] = []
    real_yield = log_mod.yield_gil

    def counted_yield(microseconds: int) -> None:
        handoffs.append(microseconds)
        real_yield(microseconds)

    monkeypatch.setattr(log_mod, "yield_gil", counted_yield)
    io = _SlowSyncIO(0.02)
    with bitkv.open(fast_db_path, sync="always", fileio=io, auto_compact=False) as db:
        acked, errors = _write_concurrently(db, None, per_thread=6, write=_increment)
        assert not errors and len(acked) == THREADS * 6
        for key in acked:
            assert db.get(key) == b"1"
    # Without group commit each write would make its own: 48.
    assert io.calls <= len(acked) * 2 // 3, io.calls
    # Up to max_syncs_in_flight overlap (a disk serves concurrent flushes faster than one
    # after another), never more.
    assert io.most_at_once <= log_mod.LogWriter.max_syncs_in_flight
    if log_mod.LogWriter.max_syncs_in_flight > 1:
        assert io.most_at_once >= 2
    assert handoffs  # a leader that woke waiting writers handed them the GIL


def test_a_lone_writer_does_not_yield_after_each_durable_write(fast_db_path, monkeypatch):
    """Regression: wait_durable called time.sleep(0) after every fdatasync, a trip through
    the scheduler per write (~40% of a lone writer's rate on a loaded machine); yielding
    (now log.yield_gil) is only for handing the GIL to writers that wait."""
    sleeps: list[float] = []
    monkeypatch.setattr(log_mod, "time", SimpleNamespace(sleep=sleeps.append))
    monkeypatch.setattr(log_mod, "yield_gil", sleeps.append)
    with bitkv.open(fast_db_path, sync="always", auto_compact=False) as db:
        for i in range(20):
            db.put(b"k%d" % i, b"v")
    assert sleeps == []


class _CountingIO(FileIO):
    """Counts pwrites and map writes per file name."""

    def __init__(self) -> None:
        self.names: dict[int, str] = {}
        self.pwrites: dict[str, int] = {}
        self.map_writes: dict[str, int] = {}

    def _note(self, fd: int, path: str) -> int:
        self.names[fd] = os.path.basename(path)
        return fd

    def create(self, path: str) -> int:
        return self._note(super().create(path), path)

    def open_rw(self, path: str) -> int:
        return self._note(super().open_rw(path), path)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        name = self.names.get(fd, "?")
        self.pwrites[name] = self.pwrites.get(name, 0) + 1
        super().pwrite(fd, data, offset)

    def map_write(self, mm, fd: int, offset: int, data: bytes) -> None:  # type: ignore[no-untyped-def]
        name = self.names.get(fd, "?")
        self.map_writes[name] = self.map_writes.get(name, 0) + 1
        super().map_write(mm, fd, offset, data)


@pytest.mark.parametrize("plain", [True, False])
def test_the_durable_mark_is_a_store_into_its_map_not_a_system_call(fast_db_path, plain):
    io = _CountingIO()
    with bitkv.open(fast_db_path, sync="always", auto_compact=False,
                    fileio=None if plain else io) as db:
        base_pwrites = dict(io.pwrites)
        for i in range(10):
            db.put(b"k%d" % i, b"v" * 50)
        # Read back from the page cache, before any fsync of DURABLE: the mark is current.
        mark = durable.read(fast_db_path, FileIO())
        seg = db._log.active
        assert mark is not None and (mark.segment_id, mark.end) == (seg.id, seg.size)
        db.sync()  # nothing new to sync: no new mark either
        assert durable.read(fast_db_path, FileIO()) == mark
    if not plain:  # a substitute FileIO sees every slot written, as a map write
        assert io.pwrites.get(durable.DURABLE_NAME, 0) == base_pwrites.get(
            durable.DURABLE_NAME, 0)
        assert io.map_writes.get(durable.DURABLE_NAME, 0) >= 10


WRITERS_SCRIPT = r"""
import sys, threading
import bitkv
path = sys.argv[1]
db = bitkv.open(path, sync="always", auto_compact=False, max_segment_size=16384)
lock = threading.Lock()
def writer(t):
    for i in range(100000):
        key = b"t%d-%06d" % (t, i)
        db.put(key, key * 3)
        with lock:
            sys.stdout.write(key.decode() + "\n")
            sys.stdout.flush()
for t in range(8):
    threading.Thread(target=writer, args=(t,), daemon=True).start()
threading.Event().wait()
"""


def test_eight_writers_acknowledged_writes_survive_kill_9(fast_tmp):
    path = str(fast_tmp / "db")
    proc = subprocess.Popen([sys.executable, "-c", WRITERS_SCRIPT, path],
                            stdout=subprocess.PIPE, text=True)
    acked: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            acked.append(line.strip())
            if len(acked) >= 400:
                break
        proc.send_signal(signal.SIGKILL)
        # The rest through the same text reader: communicate() would read the pipe's file
        # descriptor directly, past what the loop above had buffered, and start mid-line
        # (a key seen as "-000340" and counted lost, one run in many).
        rest = proc.stdout.read()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    acked += rest.split()
    assert len(acked) >= 400
    with bitkv.open(path, auto_compact=False) as db:
        lost = [k for k in acked if db.get(k.encode()) != k.encode() * 3]
    assert not lost, lost[:5]


class _GatedSyncIO(FileIO):
    """fdatasync blocks until ``gate`` is set once ``armed``; ``entered`` says one is in."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.entered.set()
            self.gate.wait(10)
        super().fdatasync(fd)


def test_a_rotation_waiting_for_an_fdatasync_in_flight_is_woken_when_it_ends(fast_db_path):
    """Regression: rotation (and close) wait until no group-commit fdatasync is in flight,
    but the fdatasync's end notified only counted writers, so a rotation that came while
    one was in flight waited forever, holding the writer lock."""
    io = _GatedSyncIO()
    db = bitkv.open(fast_db_path, sync="always", fileio=io, auto_compact=False,
                    max_segment_size=4096)
    db.put(b"first", b"x" * 100)
    io.armed = True
    syncing = threading.Thread(target=db.put, args=(b"a", b"x" * 100), daemon=True)
    rotating = threading.Thread(target=db.put, args=(b"b", b"y" * 4000), daemon=True)
    try:
        syncing.start()
        assert io.entered.wait(10)
        io.armed = False
        rotating.start()  # its record does not fit: it rotates, waiting for the fdatasync
        time.sleep(0.1)
        io.gate.set()
        syncing.join(10)
        rotating.join(10)
        assert not syncing.is_alive() and not rotating.is_alive(), "the rotation hangs"
        assert db.get(b"a") == b"x" * 100 and db.get(b"b") == b"y" * 4000
        assert db.stats()["segments"] >= 2
    finally:
        io.gate.set()
        if not rotating.is_alive():  # else it holds the writer lock for good: leave it
            db.close()


class _FirstSyncFailsLateIO(FileIO):
    """The first fdatasync once ``armed`` blocks until ``gate`` is set, then fails with EIO;
    every other one succeeds at once: two overlapping fdatasyncs of one file, of which the
    kernel told the slower one about a writeback error."""

    def __init__(self) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.gate.wait(10)
            raise OSError(errno.EIO, "injected writeback error")
        super().fdatasync(fd)


def test_an_fdatasync_that_succeeds_beside_a_failing_one_acknowledges_nothing(fast_db_path):
    """Regression: with two fdatasyncs in flight, the kernel reports a writeback error to only
    one of them (once per open file), and it may be the other writer's pages that failed. The
    writer whose fdatasync returned 0 was acknowledged at once; it must wait for the one beside
    it and fail with it."""
    if log_mod.LogWriter.max_syncs_in_flight < 2:
        pytest.skip("fdatasyncs never overlap")
    io = _FirstSyncFailsLateIO()
    db = bitkv.open(fast_db_path, sync="always", fileio=io, auto_compact=False)
    outcome: dict[str, BaseException | None] = {}

    def write(key: bytes, how: Callable[[bytes], object]) -> None:
        try:
            how(key)
            outcome[key.decode()] = None
        except BaseException as exc:  # the outcome is what is checked
            outcome[key.decode()] = exc

    try:
        db.put(b"before", b"v")
        io.armed = True
        slow = threading.Thread(target=write, args=(b"slow", lambda k: db.put(k, b"x" * 100)))
        slow.start()
        assert io.entered.wait(10)
        # Not a plain put (which would queue behind the slow one's group): an incr appends
        # at once, and its own fdatasync (the slow one's does not cover it) succeeds.
        fast = threading.Thread(target=write, args=(b"fast", db.incr))
        fast.start()
        fast.join(0.5)
        io.gate.set()
        slow.join(10)
        fast.join(10)
        assert isinstance(outcome["slow"], OSError)
        assert outcome["fast"] is not None, "acknowledged beside a failed fdatasync"
        with pytest.raises(bitkv.Error):
            db.put(b"after", b"v")  # final: refused until reopened
    finally:
        io.gate.set()
        db.close()
