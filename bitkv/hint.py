"""Hint files: the index of one segment, so reopening reads keys, not values.

``NNNNNN.hint`` describes segment ``NNNNNN.data``: a 40-byte header, one 28-byte fixed entry
per record, the keys of all entries concatenated, and a CRC-32C of everything before it (see
docs/format.md, "Hint files"). Compaction writes one for each output; a clean close writes a
*checkpoint* hint for the active segment, covering the bytes written so far. A hint is believed
only if its CRC holds, it names the exact segment incarnation (random nonce), and it covers no
more bytes than the segment has; otherwise it is ignored and the segment scanned. Records after
the covered prefix are scanned.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from .crc import crc32c
from .record import HEADER_SIZE as RECORD_HEADER_SIZE
from .record import ScanBuffer

MAGIC = b"BITKVHNT"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sHHIQQQ")  # magic, version, reserved, count, nonce, seg_size, max_seq
HEADER_SIZE = HEADER.size  # 40
ENTRY = struct.Struct("<BBHIIQQ")  # flags, reserved, key_len, value_len, offset, seq, expiry_ms
ENTRY_SIZE = ENTRY.size  # 28
TRAILER = struct.Struct("<I")


class HintError(ValueError):
    """The hint file cannot be believed; scan the segment instead."""


HintEntry = tuple[int, int, int, int, int, int, int]  # flags, 0, key_len, value_len, off, seq, exp


class HintItem(NamedTuple):
    """One entry to :func:`encode`: where a key's newest record is and what it says."""

    key: bytes
    flags: int
    value_len: int
    offset: int
    seq: int
    expiry_ms: int


def encode(entries: Sequence[tuple[bytes, int, int, int, int, int]], nonce: int,
           segment_size: int, max_seq: int | None = None) -> bytes:
    """Encode hint entries given as (key, flags, value_len, offset, seq, expiry_ms).

    Entries may be :class:`HintItem` values or plain tuples in that order (a HintItem is one).

    ``segment_size`` is how many bytes of the segment the hint describes (all of a compacted
    segment; the prefix written so far for a checkpointed active segment). ``max_seq``
    defaults to the largest entry seq.
    """
    if max_seq is None:
        max_seq = max((e[4] for e in entries), default=0)
    parts = [HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(entries), nonce, segment_size, max_seq)]
    pack = ENTRY.pack
    parts.extend(pack(flags, 0, len(key), vlen, off, seq, exp)
                 for key, flags, vlen, off, seq, exp in entries)
    parts.extend(e[0] for e in entries)
    body = b"".join(parts)
    return body + TRAILER.pack(crc32c(body))


def decode(buf: ScanBuffer, nonce: int, segment_size: int
           ) -> tuple[int, Iterator[tuple[bytes, HintEntry]]]:
    """Validate a whole hint file and return (max_seq, iterator of (key, entry)).

    See :func:`decode_with_coverage`, which also says how much of the segment is covered.
    """
    max_seq, _covered, items = decode_with_coverage(buf, nonce, segment_size)
    return max_seq, items


class RawHint(NamedTuple):
    """A hint whose header, trailer and CRC have been checked; entries not yet walked."""

    max_seq: int
    covered: int  # bytes of the segment the hint describes
    fixed: bytes  # ``count`` packed ENTRY structs
    keys: bytes  # the key area


def decode_raw(buf: ScanBuffer, nonce: int, segment_size: int) -> RawHint:
    """Check a hint file's framing (magic, version, CRC, nonce, coverage) and split it.

    Raises :class:`HintError` if the file is truncated, corrupt, or written for another
    incarnation of the segment or for more bytes than it has. The entries still need the
    bounds checks of :func:`walk` (or an equivalent inlined loop).
    """
    view = decode_view(buf, nonce, segment_size)
    return RawHint(view.max_seq, view.covered, bytes(view.fixed), bytes(view.keys))


class HintView(NamedTuple):
    """:class:`RawHint` without the copies: the entry table and the key area are views of the
    hint file's bytes (which they keep alive; release both before closing a mapped file)."""

    max_seq: int
    covered: int
    fixed: memoryview
    keys: memoryview


def decode_view(buf: ScanBuffer, nonce: int, segment_size: int) -> HintView:
    """:func:`decode_raw`, the entry table and key area left in ``buf`` (opening a store
    reads them once, so copying them out would only cost time and memory)."""
    if len(buf) < HEADER_SIZE + TRAILER.size:
        raise HintError("hint file is truncated")
    magic, version, _reserved, count, hint_nonce, hint_size, max_seq = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise HintError("hint file has the wrong magic")
    if version != FORMAT_VERSION:
        raise HintError(f"hint format version {version} is not supported")
    (crc,) = TRAILER.unpack_from(buf, len(buf) - TRAILER.size)
    with memoryview(buf) as view:
        if crc32c(view[: len(buf) - TRAILER.size]) != crc:
            raise HintError("hint file CRC mismatch")
    if hint_nonce != nonce:
        raise HintError("hint file belongs to another incarnation of the segment")
    if hint_size > segment_size:
        raise HintError(f"hint covers {hint_size} bytes but the segment has only {segment_size}")
    entries_end = HEADER_SIZE + count * ENTRY_SIZE
    if entries_end > len(buf) - TRAILER.size:
        raise HintError("hint entry table is truncated")
    # Views of one buffer export, held until both are released (a mapped file cannot be
    # closed before).
    view = memoryview(buf)
    return HintView(max_seq, hint_size, view[HEADER_SIZE:entries_end],
                    view[entries_end : len(buf) - TRAILER.size])


def entry_count(header: bytes, file_size: int) -> int:
    """How many entries a hint file of ``file_size`` bytes says it holds, from its first
    :data:`HEADER_SIZE` bytes, before its CRC is checked: 0 unless the magic and version are
    right, and never more than the file has room for. Only an estimate to size the index
    with (a damaged count must not make an open allocate more than the file could hold)."""
    if len(header) < HEADER_SIZE or file_size < HEADER_SIZE + TRAILER.size:
        return 0
    magic, version, _reserved, count, _nonce, _size, _max_seq = HEADER.unpack_from(header)
    if magic != MAGIC or version != FORMAT_VERSION:
        return 0
    room = (file_size - HEADER_SIZE - TRAILER.size) // (ENTRY_SIZE + 1)  # keys >= 1 byte
    return min(int(count), room)


def walk(raw: RawHint) -> list[tuple[bytes, HintEntry]]:
    """Return every (key, entry) of ``raw``, after checking each entry's bounds."""
    items: list[tuple[bytes, HintEntry]] = []
    append = items.append
    keys = raw.keys
    covered = raw.covered
    pos = 0
    for entry in ENTRY.iter_unpack(raw.fixed):
        key_len = entry[2]
        end = pos + key_len
        if key_len == 0 or end > len(keys) \
                or entry[4] + RECORD_HEADER_SIZE + key_len + entry[3] > covered:
            raise HintError("hint entry points outside the bytes it covers")
        append((keys[pos:end], entry))
        pos = end
    if pos != len(keys):
        raise HintError("hint key area does not match its entries")
    return items


def check_bounds(raw: RawHint) -> None:
    """Raise :class:`HintError` unless every entry lies inside the bytes the hint covers."""
    keys_len = len(raw.keys)
    covered = raw.covered
    pos = 0
    for _flags, _r, key_len, value_len, offset, _seq, _exp in ENTRY.iter_unpack(raw.fixed):
        pos += key_len
        if not key_len or pos > keys_len or offset + RECORD_HEADER_SIZE + key_len + value_len \
                > covered:
            raise HintError("hint entry points outside the bytes it covers")
    if pos != keys_len:
        raise HintError("hint key area does not match its entries")


def decode_with_coverage(buf: ScanBuffer, nonce: int, segment_size: int
                         ) -> tuple[int, int, Iterator[tuple[bytes, HintEntry]]]:
    """Validate a whole hint file and return (max_seq, covered_bytes, iterator of entries).

    ``covered_bytes`` is the segment prefix the hint describes; records after it (appended
    after a checkpoint) must be scanned.
    """
    raw = decode_raw(buf, nonce, segment_size)
    return raw.max_seq, raw.covered, iter(walk(raw))
