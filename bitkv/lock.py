"""The single-writer lock: an exclusive ``flock`` on the store's ``LOCK`` file.

The OS releases a flock when its process dies, so a lock file left behind by a crash (empty or
holding a dead pid) never blocks the next open. The pid written into the file is only a hint
for the error message.
"""

from __future__ import annotations

import fcntl
import os

from .errors import LockError
from .fileio import FileIO

LOCK_NAME = "LOCK"


class StoreLock:
    """Holds the exclusive write lock of one store directory until :meth:`release`."""

    def __init__(self, directory: str, io: FileIO) -> None:
        self.path = os.path.join(directory, LOCK_NAME)
        self._io = io
        fd = io.open_lock(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            io.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise LockError(
                f"store {directory!r} is locked for writing by another process{who}; "
                "open it with readonly=True to read beside the writer"
            ) from None
        except BaseException:
            io.close(fd)
            raise
        self._fd: int | None = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is informational only

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                self._io.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None
