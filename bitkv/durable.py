"""The durable-end mark: how far the active segment is known to be on stable storage.

Recovery must tell a *torn write* (bytes a crash interrupted before their fsync: cut them
away silently) from *bit rot in a durable record* (bytes fsynced, acknowledged, then damaged:
corruption, which must be reported and must never roll the key back to an older version).
Both look the same in the file: a damaged record with nothing intact after it. What tells
them apart is whether the damaged bytes were ever fsynced, so the store writes that down.

After every successful fsync of the active segment, the store writes a small slot into the
``DURABLE`` file: (segment id, segment nonce, durable end). It does so with a 44-byte store
into a shared map of the file (the bytes a ``pwrite`` would write, into the same page cache,
without its system call) and **no fsync of its own**: the mark reaches the disk with the
kernel's writeback (seconds) or the next fsync of this file (rotation, close), so the cost on
a ``sync="always"`` write is one small copy beside the fsync it follows. The mark only ever
claims bytes an fsync already covered, so whichever version of it survives a crash (the new
one, an older one, or none) is a *lower bound* of the true durable end: recovery may treat
too much as a torn tail (as it did before this mark existed), never too little.

Two slots, 512 bytes apart (separate sectors), are written alternately with a growing
generation, each with its own CRC: a write torn by a power cut damages at most the slot
being written, and the other still holds the previous mark.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from dataclasses import dataclass

from .crc import crc32c
from .fileio import FileIO
from .names import DURABLE_NAME as DURABLE_NAME

MAGIC = b"BITKVDUR"
SLOT = struct.Struct("<8sQQQQI")  # magic, segment id, nonce, durable end, generation, crc
_BODY = struct.Struct("<8sQQQQ")  # the slot without its crc: what the crc covers
_CRC = struct.Struct("<I")
SLOT_SPACING = 512
FILE_SIZE = SLOT_SPACING + SLOT.size


@dataclass(frozen=True)
class Mark:
    segment_id: int
    nonce: int
    end: int
    generation: int


def decode(buf: bytes) -> Mark | None:
    """The newest intact slot of a DURABLE file's bytes, or None."""
    best: Mark | None = None
    for at in (0, SLOT_SPACING):
        if len(buf) < at + SLOT.size:
            continue
        magic, sid, nonce, end, gen, crc = SLOT.unpack_from(buf, at)
        if magic != MAGIC or crc32c(buf[at : at + SLOT.size - 4]) != crc:
            continue
        if best is None or gen > best.generation:
            best = Mark(sid, nonce, end, gen)
    return best


def encode_slot(mark: Mark) -> bytes:
    return _encode(mark.segment_id, mark.nonce, mark.end, mark.generation)


def _encode(segment_id: int, nonce: int, end: int, generation: int) -> bytes:
    body = _BODY.pack(MAGIC, segment_id, nonce, end, generation)
    return body + _CRC.pack(crc32c(body))


def read(directory: str, io: FileIO) -> Mark | None:
    """The store's durable-end mark, or None if it has none (or both slots are damaged)."""
    try:
        return decode(io.read_file(os.path.join(directory, DURABLE_NAME), FILE_SIZE * 2))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            return None
        raise


class DurableMarker:
    """The writer's handle on ``DURABLE``: its descriptor and a shared, writable map of its
    slots. Not thread-safe: the store calls :meth:`record` under its sync lock, right after
    the fsync it describes."""

    def __init__(self, directory: str, io: FileIO, previous: Mark | None, *,
                 plain_io: bool = False) -> None:
        self._io = io
        path = os.path.join(directory, DURABLE_NAME)
        try:
            self._fd = io.open_rw(path)
            created = False
        except FileNotFoundError:
            self._fd = io.create(path)
            created = True
        try:
            if created or io.size(self._fd) < FILE_SIZE:
                io.pwrite(self._fd, bytes(FILE_SIZE), 0)
                io.fsync(self._fd)
                if created:
                    io.fsync_dir(directory)
            # The file is at least FILE_SIZE bytes now, so every store into the map lands
            # inside it (no SIGBUS) and a slot is never written past the file's end.
            self._map: mmap.mmap | None = io.map_shared(self._fd, FILE_SIZE, writable=True)
        except BaseException:
            io.close(self._fd)
            raise
        # ``plain_io``: ``io`` does plain POSIX I/O (the store's own FileIO, maybe wrapped in
        # its FsyncGuard), so slots are stored into the map directly, sparing a call per
        # write; any substitute FileIO (the crash harness's) sees each through map_write.
        self._direct = plain_io
        self._generation = previous.generation if previous is not None else 0
        self._last_end = -1
        self._last_id = self._last_nonce = -1

    def record(self, segment_id: int, nonce: int, end: int) -> None:
        """Note that ``segment_id`` is durable up to ``end`` (an fsync just covered it).
        Nothing is written if that is what the mark already says."""
        if end == self._last_end and segment_id == self._last_id and nonce == self._last_nonce:
            return
        mm = self._map
        if mm is None:
            raise OSError(errno.EBADF, "the DURABLE marker is closed")
        self._generation += 1
        gen = self._generation
        slot = _encode(segment_id, nonce, end, gen)
        at = (gen % 2) * SLOT_SPACING
        if self._direct:
            mm[at : at + SLOT.size] = slot
        else:
            self._io.map_write(mm, self._fd, at, slot)
        self._last_id, self._last_nonce, self._last_end = segment_id, nonce, end

    def sync(self) -> None:
        self._io.fsync(self._fd)

    def close(self) -> None:
        if self._map is not None:
            mm, self._map = self._map, None
            mm.close()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self._io.close(fd)
