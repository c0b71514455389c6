"""The single-writer lock, exercised with a second process."""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import bitkv
from bitkv.fileio import FileIO

HOLDER = textwrap.dedent(
    """
    import sys, bitkv
    db = bitkv.open(sys.argv[1], sync=sys.argv[2])
    for i in range(50):
        db.put(b"child-%d" % i, b"value-%d" % i)
    print("READY", flush=True)
    sys.stdin.readline()          # hold the lock until told to go
    db.close()
    print("CLOSED", flush=True)
    """
)

TRY_OPEN = textwrap.dedent(
    """
    import sys, time, bitkv
    readonly = sys.argv[2] == "readonly"
    t0 = time.monotonic()
    try:
        db = bitkv.open(sys.argv[1], readonly=readonly)
    except bitkv.Error as exc:
        print("ERROR", type(exc).__name__, round(time.monotonic() - t0, 3), str(exc))
    else:
        print("OPENED", db.get(b"parent"), len(db))
        db.close()
    """
)


def _spawn_holder(path: str, sync: str = "never") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, sync], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "READY", line
    return proc


def _try_open_in_child(path: str, mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", TRY_OPEN, path, mode], capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.strip()


def _release(proc: subprocess.Popen) -> None:
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "CLOSED"
    assert proc.wait(timeout=30) == 0


@pytest.fixture
def holder(db_path):
    proc = _spawn_holder(db_path)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_second_process_gets_lock_error_at_once(db_path, holder):
    t0 = time.monotonic()
    with pytest.raises(bitkv.LockError) as exc:
        bitkv.open(db_path)
    assert time.monotonic() - t0 < 1.0, "open waited for the lock instead of failing"
    message = str(exc.value)
    assert db_path in message
    assert f"pid {holder.pid}" in message
    assert "readonly=True" in message
    with pytest.raises(bitkv.LockError):
        bitkv.open(db_path, create=False)
    _release(holder)
    with bitkv.open(db_path) as db:  # released on close
        assert db.get(b"child-49") == b"value-49"


def test_readonly_opens_beside_the_writer(db_path, holder):
    with bitkv.open(db_path, readonly=True) as db:
        assert len(db) == 50
        assert db.get(b"child-7") == b"value-7"
        with pytest.raises(bitkv.ReadOnlyError):
            db.put(b"x", b"y")
    # Several readers at once, too.
    with bitkv.open(db_path, readonly=True) as r1, bitkv.open(db_path, readonly=True) as r2:
        assert dict(r1.items()) == dict(r2.items())
    assert holder.poll() is None  # the writer was not disturbed
    _release(holder)


def test_child_process_is_refused_while_we_hold_the_lock(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"parent", b"p")
        out = _try_open_in_child(db_path, "write")
        assert out.startswith("ERROR LockError"), out
        elapsed = float(out.split()[2])
        assert elapsed < 1.0
        assert db_path in out
        assert f"pid {os.getpid()}" in out
        out = _try_open_in_child(db_path, "readonly")
        assert out == "OPENED b'p' 1", out
    out = _try_open_in_child(db_path, "write")
    assert out == "OPENED b'p' 1", out


def test_same_process_second_writer_is_refused(db_path):
    with bitkv.open(db_path), pytest.raises(bitkv.LockError, match="locked"):
        bitkv.open(db_path)


def test_lock_released_after_holder_is_killed(db_path):
    for sync in ("never", "always"):
        proc = _spawn_holder(db_path, sync)
        with pytest.raises(bitkv.LockError):
            bitkv.open(db_path)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        # The LOCK file is still there with the dead pid in it; it must not block.
        with open(os.path.join(db_path, "LOCK"), "rb") as fh:
            assert fh.read().strip() == str(proc.pid).encode()
        with bitkv.open(db_path) as db:
            assert len(db) == 50  # every acknowledged put survived kill -9
            assert db.get(b"child-0") == b"value-0"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("content", [b"", b"DEAD", b"\n", b"garbage \x00\xff"])
def test_stale_lock_file_does_not_block(db_path, content):
    with bitkv.open(db_path) as db:
        db.put(b"a", b"1")
    lock = os.path.join(db_path, "LOCK")
    with open(lock, "wb") as fh:
        fh.write(b"%d\n" % _dead_pid() if content == b"DEAD" else content)
    with bitkv.open(db_path) as db:
        assert db.get(b"a") == b"1"
        db.put(b"b", b"2")
        with open(lock, "rb") as fh:
            assert fh.read() == b"%d\n" % os.getpid()
    with bitkv.open(db_path) as db:
        assert db.get(b"b") == b"2"


def test_missing_lock_file_is_recreated(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"a", b"1")
    os.remove(os.path.join(db_path, "LOCK"))
    with bitkv.open(db_path) as db:
        assert db.get(b"a") == b"1"
        assert os.path.exists(os.path.join(db_path, "LOCK"))
        with pytest.raises(bitkv.LockError):
            bitkv.open(db_path)


class _PauseAfterCreate(FileIO):
    """Runs ``hook`` (another opener) right after this opener created its first file."""

    hook = None

    def create(self, path):
        fd = super().create(path)
        hook, _PauseAfterCreate.hook = _PauseAfterCreate.hook, None
        if hook is not None:
            t = threading.Thread(target=hook)
            t.start()
            t.join(30)
        return fd


def test_concurrent_creation_of_a_new_store_gives_lock_error(db_path):
    """Two openers create the same new store at once: one wins, the other gets LockError."""
    outcome = {}

    def open_as(name, **kwargs):
        try:
            outcome[name] = bitkv.open(db_path, **kwargs)
        except BaseException as exc:
            outcome[name] = exc

    _PauseAfterCreate.hook = lambda: open_as("second")
    try:
        open_as("first", fileio=_PauseAfterCreate())
    finally:
        _PauseAfterCreate.hook = None
        for v in outcome.values():
            if isinstance(v, bitkv.Store):
                v.close()
    kinds = sorted("opened" if isinstance(v, bitkv.Store) else type(v).__name__
                   for v in outcome.values())
    assert kinds == ["LockError", "opened"], outcome
    with bitkv.open(db_path) as db:
        assert len(db) == 0



@pytest.mark.parametrize("kwargs", [
    pytest.param({"sync": "interval"}, id="defaults"),
    pytest.param({"sync": "never"}, id="never"),
    pytest.param({"sync": "never", "auto_compact": False}, id="no-threads"),
])
def test_store_dropped_without_close_releases_the_lock(db_path, kwargs):
    db = bitkv.open(db_path, **kwargs)
    db.put(b"a", b"1")
    del db
    gc.collect()
    with bitkv.open(db_path) as again:
        assert again.get(b"a") == b"1"


# -- issue 11 item 3: a LOCK file that is unlinked or replaced under its holder --------------


def test_lock_file_removed_under_the_writer_still_blocks_a_second_writer(db_path):
    """A cleanup script removed LOCK: the second writer used to lock a new inode and append
    at the same offsets as the first (thousands of acknowledged writes lost)."""
    with bitkv.open(db_path, sync="always", auto_compact=False) as db:
        db.put(b"parent", b"1")
        os.unlink(os.path.join(db_path, "LOCK"))
        out = _try_open_in_child(db_path, "write")
        assert out.startswith("ERROR LockError"), out


def test_lock_file_replaced_under_the_writer_refuses_its_writes(db_path):
    """An rsync/cp restore replaced LOCK: the holder notices at its next sync (or rotation,
    or background tick) and refuses writes instead of appending beside another writer."""
    db = bitkv.open(db_path, sync="never", auto_compact=False)
    try:
        db.put(b"a", b"1")
        lock = os.path.join(db_path, "LOCK")
        os.replace(_copy(lock), lock)
        with pytest.raises(bitkv.Error, match="removed or replaced"):
            db.sync()
        with pytest.raises(bitkv.Error, match="removed or replaced"):
            db.put(b"b", b"2")
        assert db.get(b"a") == b"1"  # reads go on
    finally:
        db.close()
    with bitkv.open(db_path) as db:  # a reopen locks the new file; everything acknowledged
        assert db.get(b"a") == b"1"
        db.put(b"b", b"2")


def test_background_thread_notices_a_replaced_lock(db_path):
    db = bitkv.open(db_path, sync="interval", sync_interval=0.05, auto_compact=False)
    try:
        db.put(b"a", b"1")
        lock = os.path.join(db_path, "LOCK")
        os.replace(_copy(lock), lock)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                db.put(b"b", b"2")
            except bitkv.Error as exc:
                assert "removed or replaced" in str(exc)
                break
            time.sleep(0.02)
        else:
            pytest.fail("writes were never refused after LOCK was replaced")
    finally:
        db.close()


def _copy(path: str) -> str:
    tmp = path + ".copy"
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(src.read())
    return tmp


class _UnlinkAfterOpen(FileIO):
    """LOCK is removed between the writer's open and its flock, once."""

    def __init__(self) -> None:
        self.done = False

    def open_lock(self, path: str) -> int:
        fd = super().open_lock(path)
        if not self.done:
            self.done = True
            os.unlink(path)
        return fd


def test_lock_taken_on_the_file_at_the_path(db_path):
    """The lock must end up on the inode named LOCK, not on one unlinked before the flock."""
    with bitkv.open(db_path, fileio=_UnlinkAfterOpen(), auto_compact=False) as db:
        lock = os.path.join(db_path, "LOCK")
        fd = os.open(lock, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        db.put(b"k", b"v")


def test_symlinked_lock_file_is_a_clear_error(db_path, tmp_path):
    bitkv.open(db_path).close()
    lock = os.path.join(db_path, "LOCK")
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    os.unlink(lock)
    os.symlink(target, lock)
    with pytest.raises(bitkv.UnsafeFileError, match="LOCK"):
        bitkv.open(db_path)
    assert target.read_bytes() == b""  # never followed into a write


def test_a_second_open_in_the_same_process_names_this_process(db_path):
    # flock is per open file: a second writable open here is refused, and the message must not
    # send the user looking for "another process" that is their own.
    with bitkv.open(db_path) as db:
        db.put(b"k", b"v")
        with pytest.raises(bitkv.LockError) as exc:
            bitkv.open(db_path)
        message = str(exc.value)
        assert "locked for writing by this process" in message
        assert f"pid {os.getpid()}" in message
        assert "another process" not in message
