"""The MANIFEST: which segment files make up a store (LevelDB's MANIFEST, reduced to a list).

Without it a store would be "whatever ``*.data`` files the directory holds", and a missing or
truncated segment would simply be a smaller store: its keys gone, or older versions and
deleted keys back, with nothing to tell. With it the store knows each segment it consists of
(id, the nonce of its header, its kind and load position, and the length a sealed segment was
sealed at), so opening can tell a segment that vanished or shrank from one that was never
part of the store.

The file is replaced whole (temporary file, fsync, rename, directory fsync) whenever the set
of segments changes: at store creation, at rotation, when a compaction or a repair installs
its outputs. The rename is the commit point of each of those changes. Segment files that the
MANIFEST does not list are leftovers of a change that did not commit (or that committed and
had not removed its inputs yet); see :func:`classify_orphan` and docs/format.md.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .crc import crc32c
from .errors import CorruptionError
from .fileio import FileIO
from .names import MANIFEST_NAME as MANIFEST_NAME
from .names import TMP_SUFFIX

if TYPE_CHECKING:
    from .segment import Segment

MAGIC = b"BITKVMAN"
VERSION = 1
HEADER = struct.Struct("<8sHHIQ")  # magic, version, reserved, count, generation
# id, nonce, order_seq, sealed_size, durable_end, kind, reserved (written as zeros)
ENTRY = struct.Struct("<QQQQQB7s")
TRAILER = struct.Struct("<I")  # crc32c of everything before it
OPEN = 0  # sealed_size of the one segment still being appended to
MAX_ENTRIES = 1 << 20  # far above the 65,536 segments a store can hold open


@dataclass(frozen=True)
class ManifestEntry:
    """One segment of the store. ``sealed_size`` is :data:`OPEN` for the active segment.

    ``durable_end``: the bytes before it were fsynced as the store wrote them, so damage
    there is bit rot in acknowledged writes. It equals ``sealed_size`` but for a segment that
    a crash left with damaged unsynced bytes, sealed by the next open (0 for the open one,
    whose durable end is the DURABLE mark).
    """

    segment_id: int
    nonce: int
    order_seq: int
    sealed_size: int
    kind: int
    durable_end: int = 0

    @property
    def is_open(self) -> bool:
        return self.sealed_size == OPEN


@dataclass(frozen=True)
class Manifest:
    generation: int
    entries: tuple[ManifestEntry, ...]

    def by_id(self) -> dict[int, ManifestEntry]:
        return {e.segment_id: e for e in self.entries}

    def encode(self) -> bytes:
        parts = [HEADER.pack(MAGIC, VERSION, 0, len(self.entries), self.generation)]
        for e in sorted(self.entries, key=lambda e: e.segment_id):
            parts.append(ENTRY.pack(e.segment_id, e.nonce, e.order_seq, e.sealed_size,
                                    e.durable_end, e.kind, bytes(7)))
        body = b"".join(parts)
        return body + TRAILER.pack(crc32c(body))


class ManifestError(CorruptionError):
    """The MANIFEST is damaged or not a bitkv manifest."""


def decode(buf: bytes) -> Manifest:
    """Parse a MANIFEST file's bytes; raise :class:`ManifestError` if they are not intact."""
    if len(buf) < HEADER.size + TRAILER.size:
        raise ManifestError(f"{MANIFEST_NAME} is {len(buf)} bytes, too short")
    magic, version, _reserved, count, generation = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise ManifestError(f"{MANIFEST_NAME} has the wrong magic")
    if version != VERSION:
        raise ManifestError(f"{MANIFEST_NAME} version {version} is not {VERSION}")
    if count > MAX_ENTRIES or len(buf) != HEADER.size + count * ENTRY.size + TRAILER.size:
        raise ManifestError(f"{MANIFEST_NAME} length does not match its {count} entries")
    (crc,) = TRAILER.unpack_from(buf, len(buf) - TRAILER.size)
    if crc32c(buf[: -TRAILER.size]) != crc:
        raise ManifestError(f"{MANIFEST_NAME} CRC mismatch")
    entries = []
    for i in range(count):
        sid, nonce, order_seq, sealed, durable_end, kind, _reserved = ENTRY.unpack_from(
            buf, HEADER.size + i * ENTRY.size)
        if durable_end > sealed:
            raise ManifestError(f"{MANIFEST_NAME} entry {sid}: durable end past its length")
        entries.append(ManifestEntry(sid, nonce, order_seq, sealed, kind, durable_end))
    if len({e.segment_id for e in entries}) != len(entries):
        raise ManifestError(f"{MANIFEST_NAME} lists a segment twice")
    if sum(e.is_open for e in entries) > 1:
        raise ManifestError(f"{MANIFEST_NAME} lists more than one open segment")
    return Manifest(generation, tuple(entries))


def read(directory: str, io: FileIO) -> Manifest | None:
    """Return the store's MANIFEST, or None if there is none (a store older than it)."""
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        buf = io.read_file(path, HEADER.size + MAX_ENTRIES * ENTRY.size + TRAILER.size)
    except FileNotFoundError:
        return None
    return decode(buf)


def write(directory: str, io: FileIO, manifest: Manifest) -> None:
    """Durably replace the MANIFEST (the commit point of a change of the segment set)."""
    install(directory, io, stage(directory, io, manifest))


def stage(directory: str, io: FileIO, manifest: Manifest) -> str:
    """Write the new MANIFEST under its temporary name, fsynced; return that path. A failure
    here leaves the MANIFEST on disk as it was."""
    tmp = os.path.join(directory, MANIFEST_NAME + TMP_SUFFIX)
    io.write_new_file(tmp, manifest.encode())
    return tmp


def install(directory: str, io: FileIO, staged: str) -> None:
    """Rename a staged MANIFEST into place and fsync the directory: the commit point. After a
    failure here, which MANIFEST a crash would leave is unknown."""
    io.rename(staged, os.path.join(directory, MANIFEST_NAME))
    io.fsync_dir(directory)


def listing(segments: list[Segment], active: Segment | None, generation: int) -> Manifest:
    """The MANIFEST describing ``segments``, ``active`` (if any) being the open one."""
    entries = []
    for seg in segments:
        is_open = seg is active
        entries.append(ManifestEntry(
            seg.id, seg.header.nonce, seg.order_seq,
            OPEN if is_open else seg.size, seg.kind,
            0 if is_open else min(seg.durable_end, seg.size)))
    return Manifest(generation, tuple(entries))
