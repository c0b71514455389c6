"""The single-writer lock: exclusive ``flock``s on the store directory and its ``LOCK`` file.

The OS releases a flock when its process dies, so a lock file left behind by a crash (empty or
holding a dead pid) never blocks the next open. The pid written into the file is only a hint
for the error message.

A lock on ``LOCK`` alone protects nothing once the file is unlinked or replaced (a cleanup
script, an rsync or cp restore): the next writer creates and locks a new inode while the old
writer still appends. So the writer also locks the directory itself, which cannot be swapped
under an open path that way, checks after locking that the ``LOCK`` it holds is the one at the
path, and :meth:`StoreLock.still_held` lets the store re-check that cheaply while it runs.
``LOCK`` stays locked too, for writers of older bitkv versions, which lock only the file.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

from .errors import LockError, UnsafeFileError
from .fileio import FileIO
from .names import LOCK_NAME as LOCK_NAME

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# A directory flock the file system cannot give (NFS emulates flock with POSIX locks, which
# need a writable descriptor): then the LOCK file's lock and identity checks still apply.
_DIR_LOCK_UNSUPPORTED = (errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP)

log = logging.getLogger("bitkv")


class StoreLock:
    """Holds the exclusive write lock of one store directory until :meth:`release`."""

    def __init__(self, directory: str, io: FileIO) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._io = io
        self._fd: int | None = None
        self._dir_fd: int | None = _lock_directory(directory)
        try:
            self._fd = self._lock_file()
        except BaseException:
            self._close_dir()
            raise
        try:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is informational only

    def _lock_file(self) -> int:
        for _attempt in range(16):
            try:
                fd = self._io.open_lock(self.path)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafeFileError(
                        f"{self.path!r} is a symbolic link; bitkv follows no symlink into a "
                        "write. Replace it with a regular file (or remove it)") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                self._io.close(fd)
                raise _locked(self.directory, holder) from None
            except BaseException:
                self._io.close(fd)
                raise
            if _same_file(fd, self.path):
                return fd
            # Unlinked or replaced between our open and our flock: that inode locks nothing.
            self._io.close(fd)
        raise LockError(f"{self.path!r} keeps being replaced; cannot lock the store")

    def still_held(self) -> bool:
        """True if the ``LOCK`` at the path and the directory at the store's path are still the
        ones this lock holds (two stats: cheap enough for every sync or maintenance tick)."""
        if self._fd is None:
            return False
        if not _same_file(self._fd, self.path):
            return False
        if self._dir_fd is not None:
            try:
                here, now = os.fstat(self._dir_fd), os.stat(self.directory)
            except OSError:
                return False
            if (here.st_dev, here.st_ino) != (now.st_dev, now.st_ino):
                return False
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                self._io.close(fd)
        self._close_dir()

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            fd, self._dir_fd = self._dir_fd, None
            os.close(fd)  # closing drops the flock


def _locked(directory: str, holder: int | None) -> LockError:
    """The error for a lock another writer holds (logged once, at INFO: the caller decides
    what it means). bitkv never waits for the lock: the open fails at once."""
    log.info("bitkv store %s: the write lock is held by %s; this writable open does not "
             "wait for it and fails", os.path.join(directory, LOCK_NAME),
             f"pid {holder}" if holder else "another writer")
    if holder == os.getpid():
        # flock is per open file, so a second writable open in one process is refused too;
        # "another process" with the caller's own pid would send the user looking elsewhere.
        return LockError(
            f"store {directory!r} is locked for writing by this process (pid {holder}): it "
            "is already open here; use that Store object, or close it before opening the "
            "store again"
        )
    who = f" (pid {holder})" if holder else ""
    return LockError(
        f"store {directory!r} is locked for writing by another process{who}; "
        "open it with readonly=True to read beside the writer"
    )


def _lock_directory(directory: str) -> int | None:
    """flock the directory itself; None where the file system cannot (see above)."""
    fd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid_at(os.path.join(directory, LOCK_NAME))
        os.close(fd)
        raise _locked(directory, holder) from None
    except OSError as exc:
        os.close(fd)
        if exc.errno in _DIR_LOCK_UNSUPPORTED:
            return None
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def _same_file(fd: int, path: str) -> bool:
    """True if ``path`` (not followed if a symlink) is the file open as ``fd``."""
    try:
        held, there = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (held.st_dev, held.st_ino) == (there.st_dev, there.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _read_pid_at(path: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        return _read_pid(fd)
    finally:
        os.close(fd)
