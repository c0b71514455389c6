"""One segment file: its header, positioned reads of records, and its bookkeeping.

A segment is ``NNNNNN.data``: a 40-byte header followed by records (see docs/format.md). The
store appends to exactly one *active* segment; every other segment is immutable and is read
through a read-only mmap, so a get costs one slice and no syscall.
"""

from __future__ import annotations

import mmap
import secrets
import struct
import threading
from dataclasses import dataclass

from . import record
from .crc import crc32c
from .fileio import FileIO

# Re-exported: segment files' names are part of this module's API (names.py owns them).
from .names import DATA_SUFFIX as DATA_SUFFIX
from .names import HINT_SUFFIX as HINT_SUFFIX
from .names import TMP_SUFFIX as TMP_SUFFIX
from .names import data_name as data_name
from .names import hint_name as hint_name
from .names import list_segment_ids as list_segment_ids
from .names import parse_id as parse_id
from .names import segment_path as segment_path

MAGIC = b"BITKVSEG"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHQQQI")  # magic, version, kind, order_seq, min_seq, nonce, crc
HEADER_SIZE = HEADER.size  # 40

REMAP_STEP = 1 << 20  # remap a growing active segment once it outgrew its map by this much

KIND_APPEND = 0   # written by appends, records in seq order
KIND_COMPACTED = 1  # written by compaction, one record per key, any seq order

@dataclass(frozen=True)
class SegmentHeader:
    kind: int
    order_seq: int
    min_seq: int
    nonce: int
    version: int = FORMAT_VERSION

    def encode(self) -> bytes:
        body = HEADER.pack(MAGIC, self.version, self.kind, self.order_seq, self.min_seq,
                           self.nonce, 0)[:-4]
        return body + struct.pack("<I", crc32c(body))

    @staticmethod
    def new(kind: int, order_seq: int, min_seq: int) -> SegmentHeader:
        return SegmentHeader(kind, order_seq, min_seq, secrets.randbits(64))


class HeaderError(ValueError):
    """A segment header is missing, torn or not ours."""


class NewerFormatError(HeaderError):
    """The header is intact but names a format version this code does not know."""


def decode_header(buf: bytes) -> SegmentHeader:
    if len(buf) < HEADER_SIZE:
        raise HeaderError(f"segment header is {len(buf)} bytes, expected {HEADER_SIZE}")
    magic, version, kind, order_seq, min_seq, nonce, crc = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise HeaderError("segment header has the wrong magic")
    if crc32c(buf[: HEADER_SIZE - 4]) != crc:
        raise HeaderError("segment header CRC mismatch")
    if version > FORMAT_VERSION:
        raise NewerFormatError(f"segment format version {version} is newer than {FORMAT_VERSION}")
    if kind not in (KIND_APPEND, KIND_COMPACTED):
        raise HeaderError(f"unknown segment kind {kind}")
    return SegmentHeader(kind, order_seq, min_seq, nonce, version)


class Segment:
    """An open segment file and its accounting.

    ``size`` is the end of the last intact, indexed record region (the append position for the
    active segment). ``live_bytes`` counts the bytes of records the keydir points at.
    """

    __slots__ = ("_map_lock", "allocated", "closed", "durable_end", "fd", "growing", "header",
                 "header_damaged", "hinted", "id", "io", "live_bytes", "mapped", "mm", "path",
                 "pread_only", "size", "slot", "synced_size")

    def __init__(self, io: FileIO, segment_id: int, path: str, fd: int, header: SegmentHeader,
                 size: int) -> None:
        self.io = io
        self.id = segment_id
        self.path = path
        self.fd = fd
        self.header = header
        self.size = size
        self.synced_size = size
        # Bytes before this were fsynced as the store wrote them (docs/format.md, MANIFEST):
        # damage there is bit rot in acknowledged writes, not what a crash left.
        self.durable_end = size
        self.live_bytes = 0
        self.slot = -1
        self.mm: mmap.mmap | None = None
        self.mapped = 0
        self.closed = False
        self.header_damaged = False
        self.hinted = False  # a hint file covers all of it
        # Never mapped, read with pread only: a read-only opener's newest append segment,
        # whose tail a writer's recovery may truncate. Touching a mapped page past the new
        # end of file kills the process with SIGBUS; a pread just returns fewer bytes.
        self.pread_only = False
        # The file's length: past ``size`` it holds the zeros of preallocation (docs/format.md,
        # "The zero tail"). Only the active segment of a writer has any.
        self.allocated = size
        # The active segment of a writer, mapped shared over ``allocated`` bytes (writes may
        # go through that map): map() and remap_grown() must not swap it for a read-only one.
        self.growing = False
        # Serialises changes of (mm, mapped, fd): lock-free readers may remap a growing
        # segment while the writer seals it; without this a reader could install its older,
        # shorter map after rotation installed the full one and closed the fd.
        self._map_lock = threading.Lock()

    @property
    def kind(self) -> int:
        return self.header.kind

    @property
    def order_seq(self) -> int:
        return self.header.order_seq

    @property
    def min_seq(self) -> int:
        return self.header.min_seq

    @property
    def dead_bytes(self) -> int:
        return max(0, self.size - HEADER_SIZE - self.live_bytes)

    def map(self) -> None:
        """Map the segment's current ``size`` bytes read-only, replacing any shorter map."""
        with self._map_lock:
            if self.pread_only or self.growing or (self.mm is not None
                                                   and self.mapped == self.size):
                return
            self._install(self.io.map(self.fd, self.size))

    def grow_map(self, mm: mmap.mmap) -> None:
        """Install ``mm``, the active segment's new shared map over its ``allocated`` bytes.
        The old map is left to the GC: a lock-free reader may be slicing it right now (it
        still holds every record it held)."""
        with self._map_lock:
            self.growing = True
            self.mm = mm
            self.mapped = len(mm)

    def set_map(self, mm: mmap.mmap | None) -> None:
        with self._map_lock:
            self._install(mm)

    def _install(self, mm: mmap.mmap | None) -> None:
        # mm is stored before mapped, and lock-free readers load mapped before mm: a map
        # that grows is then never paired with a length it does not have.
        old = self.mm
        self.mm = mm
        self.mapped = len(mm) if mm is not None else 0
        if old is not None and old is not mm:
            try:
                old.close()
            except BufferError:  # a reader still holds a view; the GC unmaps it later
                pass

    def release_fd(self) -> None:
        """Close the descriptor of an immutable, fully mapped segment (saves fds)."""
        with self._map_lock:
            if self.fd >= 0 and self.mm is not None and self.mapped == self.size:
                self.io.close(self.fd)
                self.fd = -1

    def read(self, offset: int, size: int) -> bytes:
        """Return ``size`` bytes at ``offset`` (a slice of the map, else one pread)."""
        mapped = self.mapped  # before mm: see _install
        mm = self.mm
        if mm is not None and offset + size <= mapped:
            return mm[offset : offset + size]
        if (self.fd >= 0 and offset + size <= self.size and self.size - self.mapped >= REMAP_STEP
                and not self.pread_only):
            # The active segment grew well past its map: extend the map (amortised over
            # REMAP_STEP bytes of appends) rather than pay a pread per read from now on.
            self.remap_grown()
            mm = self.mm
            if mm is not None and offset + size <= self.mapped:
                return mm[offset : offset + size]
        return self.io.pread(self.fd, size, offset)

    def remap_grown(self) -> None:
        """Map the active segment up to its current size. The old map is left to the GC:
        another thread may be slicing it right now."""
        with self._map_lock:
            size = self.size
            if self.fd < 0 or size <= self.mapped or self.pread_only or self.growing:
                return  # sealed and fully mapped meanwhile, or another reader remapped
            mm = self.io.map(self.fd, size)
            self.mm = mm
            self.mapped = size if mm is not None else 0

    def read_record(self, offset: int, size_hint: int, key: bytes) -> tuple[record.Header, bytes]:
        """Read and verify the record at ``offset``.

        Raises ``ValueError`` if the bytes there are not an intact record of ``key`` (or the
        map was closed under us); the store decides whether that is corruption or a race.
        """
        if size_hint:
            buf = self.read(offset, size_hint)
        else:
            head = self.read(offset, record.HEADER_SIZE)
            if len(head) < record.HEADER_SIZE:
                raise ValueError("record header is cut short")
            _c, _f, _r, key_len, value_len, _s, _e = record.HEADER.unpack_from(head)
            buf = self.read(offset, record.HEADER_SIZE + key_len + value_len)
        return record.decode(buf, key)

    def record_size_at(self, offset: int) -> int:
        head = self.read(offset, record.HEADER_SIZE)
        key_len: int  # struct unpacks to Any
        value_len: int
        _c, _f, _r, key_len, value_len, _s, _e = record.HEADER.unpack_from(head)
        return record.HEADER_SIZE + key_len + value_len

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.mm is not None:
            try:
                self.mm.close()
            except BufferError:  # a reader still holds a view; the GC unmaps it later
                pass
        if self.fd >= 0:
            try:
                self.io.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def zero_tail_start(buf: bytes | mmap.mmap, start: int, end: int) -> int:
    """The smallest ``z >= start`` with ``buf[z:end]`` all zero bytes (``end`` if the last byte
    is not zero): where the zero tail of a preallocated segment begins, read backwards in
    chunks so a long tail costs a few large compares."""
    chunk = 1 << 16
    pos = end
    while pos > start:
        lo = max(start, pos - chunk)
        piece = buf[lo:pos]
        kept = len(piece.rstrip(b"\x00"))
        if kept:
            return lo + kept
        pos = lo
    return start
