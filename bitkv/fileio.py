"""The one seam through which bitkv touches the file system.

Every open, write, fsync, rename, truncate, unlink and directory listing of the engine goes
through a :class:`FileIO` (the one exception: ``stats()`` lstat()s files for their sizes, a
figure no data is read from). The crash harness substitutes a subclass that records each call so it
can build the states a power loss could leave behind. Keep this module free of store logic.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable

# Open flags, 0 where the platform lacks them (public: dbm opens files with them too).
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class FileIO:
    """Plain POSIX file operations. Methods raise ``OSError`` as the OS reports it."""

    def create(self, path: str) -> int:
        """Create ``path`` and open it read-write; fail if it exists (never clobbers a file)."""
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o644)

    def open_rw(self, path: str) -> int:
        """Open an existing file read-write, positioned at its end."""
        fd = os.open(path, os.O_RDWR | O_CLOEXEC | O_NOFOLLOW)
        os.lseek(fd, 0, os.SEEK_END)
        return fd

    def open_lock(self, path: str) -> int:
        """Open (creating if needed) the lock file without truncating it."""
        return os.open(path, os.O_RDWR | os.O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o644)

    def open_read(self, path: str) -> int:
        return os.open(path, os.O_RDONLY | O_CLOEXEC | O_NOFOLLOW)

    def write(self, fd: int, data: bytes) -> None:
        """Write all of ``data`` at the file position (one syscall unless the OS writes short)."""
        written = os.write(fd, data)
        while written < len(data):
            # A short write is not an error yet: writing the rest either completes or raises
            # the OS's real reason (ENOSPC on a full disk), which the caller must see as is.
            with memoryview(data) as view:
                n = os.write(fd, view[written:])
            if n <= 0:
                raise OSError(errno.EIO, f"write made no progress after {written} of "
                                         f"{len(data)} bytes")
            written += n

    def write_returning_size(self, fd: int, data: bytes) -> int:
        """:meth:`write`, returning the byte count like ``os.write`` (for the store's hot path)."""
        self.write(fd, data)
        return len(data)

    def write_new_file(self, path: str, data: bytes) -> None:
        """Create ``path`` (replacing a leftover of a crash), write ``data`` and fsync it."""
        if os.path.lexists(path):
            self.unlink(path)
        fd = self.create(path)
        try:
            self.write(fd, data)
            self.fsync(fd)
        finally:
            self.close(fd)

    def replace_file(self, directory: str, name: str, data: bytes) -> None:
        """Durably install ``directory/name`` with ``data``: written and fsynced under a
        temporary name, renamed into place, directory fsynced. Readers see the old file or
        the whole new one, before and after a crash."""
        final = os.path.join(directory, name)
        self.write_new_file(final + ".tmp", data)
        self.rename(final + ".tmp", final)
        self.fsync_dir(directory)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset`` without moving the file position."""
        written = os.pwrite(fd, data, offset)
        while written < len(data):
            # As in write: finishing a short write either completes or raises the OS's reason.
            with memoryview(data) as view:
                n = os.pwrite(fd, view[written:], offset + written)
            if n <= 0:
                raise OSError(errno.EIO, f"positioned write made no progress after {written} "
                                         f"of {len(data)} bytes")
            written += n

    def read_file(self, path: str, limit: int) -> bytes:
        """Read a whole small file (never following a symlink); raise if it exceeds ``limit``
        bytes, so a hostile file cannot make the reader allocate without bound."""
        fd = self.open_read(path)
        try:
            size = os.fstat(fd).st_size
            if size > limit:
                raise OSError(errno.EFBIG, f"{path} is {size} bytes, more than {limit}")
            chunks = []
            left = limit
            while True:
                chunk = os.read(fd, min(left + 1, max(size, 4096)))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
                if left < 0:
                    raise OSError(errno.EFBIG, f"{path} grew past {limit} bytes while read")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        """Make the file's data durable, and its size and extents if they changed (not its
        times): in a preallocated file, whose size stays put, the journal commit is skipped."""
        os.fdatasync(fd)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        """Reserve disk blocks for ``length`` bytes at ``offset`` (``posix_fallocate``),
        growing the file with zeros if it ends before them. Raises the OS's error (ENOSPC on a
        full disk) having written nothing, so no later write into the range fails for want of
        space and no store of a mapped page there can raise SIGBUS."""
        os.posix_fallocate(fd, offset, length)

    def fsync_dir(self, path: str) -> None:
        """Make creations, renames and removals of entries in directory ``path`` durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | O_CLOEXEC)
        try:
            os.fsync(fd)
        except OSError as exc:  # some file systems cannot fsync a directory
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
                raise
        finally:
            os.close(fd)

    def truncate(self, fd: int, size: int) -> None:
        """Cut the file to ``size`` and put the file position there, even if the cut fails:
        appends must never continue from a position past what the caller believes is the end."""
        try:
            os.ftruncate(fd, size)
        finally:
            os.lseek(fd, size, os.SEEK_SET)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def link(self, src: str, dst: str) -> None:
        """Make ``dst`` a new name (hard link) of the file at ``src``; fail if ``dst`` exists.
        A symlink at ``src`` is linked as itself, never followed."""
        os.link(src, dst, follow_symlinks=False)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def close(self, fd: int) -> None:
        os.close(fd)

    def map(self, fd: int, length: int) -> mmap.mmap | None:
        """Map ``length`` bytes read-only, or return None for an empty range."""
        if length <= 0:
            return None
        return mmap.mmap(fd, length, access=mmap.ACCESS_READ)

    def map_shared(self, fd: int, length: int, *, writable: bool) -> mmap.mmap:
        """Map ``length`` (> 0) bytes shared (stores reach the page cache, as ``write`` would),
        read-write if ``writable``. Writes into it go through :meth:`map_write`."""
        return mmap.mmap(fd, length, access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ)

    def map_write(self, mm: mmap.mmap, fd: int, offset: int, data: bytes) -> None:
        """Copy ``data`` into ``mm`` (a writable :meth:`map_shared` of ``fd``) at ``offset``.
        Like a ``pwrite``: in the page cache at once (it survives the process being killed),
        on stable storage only after the next ``fsync``/``fdatasync`` of ``fd``. A method, not
        an inline slice assignment, so a recording FileIO sees these writes too."""
        mm[offset : offset + len(data)] = data


DEFAULT_FILEIO = FileIO()


def advise_huge_pages(mm: mmap.mmap) -> None:
    """Ask the kernel to back ``mm`` with transparent huge pages where it can
    (``madvise(MADV_HUGEPAGE)``). Only a hint: a platform or kernel without them (no
    ``MADV_HUGEPAGE``, ``EINVAL`` where THP is compiled out) leaves the map as it was."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return
    try:
        mm.madvise(advice)
    except OSError:
        pass


def describe_fd(fd: int) -> str:
    """The path an open descriptor refers to, for a message (``/proc/self/fd`` on Linux;
    ``descriptor N`` where that cannot tell)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"descriptor {fd}"


class FsyncGuard(FileIO):
    """Forwards every call to ``inner`` and reports each failed fsync (of a file or of a
    directory) to ``on_failure(exc, path)`` before re-raising it.

    A store wraps its FileIO in one, so that *every* fsync failure, wherever it happens
    (appends, rotation, compaction outputs, hints, the MANIFEST, recovery), puts the store
    into its refuse-writes state: after a failed fsync the kernel may have dropped the dirty
    pages, so a later fsync that succeeds proves nothing (PostgreSQL's "fsyncgate").
    """

    def __init__(self, inner: FileIO, on_failure: Callable[[OSError, str], None]) -> None:
        self.inner = inner
        self._on_failure = on_failure

    def fsync(self, fd: int) -> None:
        try:
            self.inner.fsync(fd)
        except OSError as exc:
            self._on_failure(exc, describe_fd(fd))
            raise

    def fsync_dir(self, path: str) -> None:
        try:
            self.inner.fsync_dir(path)
        except OSError as exc:
            self._on_failure(exc, path)
            raise

    def fdatasync(self, fd: int) -> None:
        try:
            self.inner.fdatasync(fd)
        except OSError as exc:
            self._on_failure(exc, describe_fd(fd))
            raise

    # Everything else goes straight to the wrapped FileIO (write_new_file and replace_file
    # are FileIO's own, built on these, so their fsyncs pass through the methods above).

    def create(self, path: str) -> int:
        return self.inner.create(path)

    def open_rw(self, path: str) -> int:
        return self.inner.open_rw(path)

    def open_lock(self, path: str) -> int:
        return self.inner.open_lock(path)

    def open_read(self, path: str) -> int:
        return self.inner.open_read(path)

    def write(self, fd: int, data: bytes) -> None:
        self.inner.write(fd, data)

    def write_returning_size(self, fd: int, data: bytes) -> int:
        return self.inner.write_returning_size(fd, data)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return self.inner.pread(fd, size, offset)

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        self.inner.pwrite(fd, data, offset)

    def read_file(self, path: str, limit: int) -> bytes:
        return self.inner.read_file(path, limit)

    def truncate(self, fd: int, size: int) -> None:
        self.inner.truncate(fd, size)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def unlink(self, path: str) -> None:
        self.inner.unlink(path)

    def link(self, src: str, dst: str) -> None:
        self.inner.link(src, dst)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def mkdir(self, path: str) -> None:
        self.inner.mkdir(path)

    def rmdir(self, path: str) -> None:
        self.inner.rmdir(path)

    def size(self, fd: int) -> int:
        return self.inner.size(fd)

    def close(self, fd: int) -> None:
        self.inner.close(fd)

    def map(self, fd: int, length: int) -> mmap.mmap | None:
        return self.inner.map(fd, length)

    def allocate(self, fd: int, offset: int, length: int) -> None:
        self.inner.allocate(fd, offset, length)

    def map_shared(self, fd: int, length: int, *, writable: bool) -> mmap.mmap:
        return self.inner.map_shared(fd, length, writable=writable)

    def map_write(self, mm: mmap.mmap, fd: int, offset: int, data: bytes) -> None:
        self.inner.map_write(mm, fd, offset, data)
