"""Hint files: the index of one compacted segment, so reopening reads keys, not values.

``NNNNNN.hint`` describes segment ``NNNNNN.data``: a 40-byte header, one 28-byte fixed entry
per record, the keys of all entries concatenated, and a CRC-32C of everything before it (see
docs/format.md, "Hint file"). A hint is believed only if its CRC holds and it names the exact
segment incarnation (random nonce) and length it was written for; otherwise it is ignored and
the segment is scanned instead.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from .crc import crc32c
from .record import HEADER_SIZE as RECORD_HEADER_SIZE

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


def encode(entries: list[tuple[bytes, int, int, int, int, int]], nonce: int, segment_size: int
           ) -> bytes:
    """Encode hint entries given as (key, flags, value_len, offset, seq, expiry_ms)."""
    max_seq = max((e[4] for e in entries), default=0)
    parts = [HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(entries), nonce, segment_size, max_seq)]
    pack = ENTRY.pack
    parts.extend(pack(flags, 0, len(key), vlen, off, seq, exp)
                 for key, flags, vlen, off, seq, exp in entries)
    parts.extend(e[0] for e in entries)
    body = b"".join(parts)
    return body + TRAILER.pack(crc32c(body))


def decode(buf, nonce: int, segment_size: int) -> tuple[int, Iterator[tuple[bytes, HintEntry]]]:
    """Validate a whole hint file and return (max_seq, iterator of (key, entry)).

    Raises :class:`HintError` if the file is truncated, corrupt, or written for another
    incarnation or length of the segment.
    """
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
    if hint_size != segment_size:
        raise HintError(f"hint covers {hint_size} bytes but the segment has {segment_size}")
    entries_end = HEADER_SIZE + count * ENTRY_SIZE
    if entries_end > len(buf) - TRAILER.size:
        raise HintError("hint entry table is truncated")
    fixed = bytes(buf[HEADER_SIZE:entries_end])
    keys = bytes(buf[entries_end : len(buf) - TRAILER.size])
    total_keys = 0
    for entry in ENTRY.iter_unpack(fixed):
        key_len = entry[2]
        if key_len == 0 or entry[4] + RECORD_HEADER_SIZE + key_len + entry[3] > segment_size:
            raise HintError("hint entry points outside its segment")
        total_keys += key_len
    if total_keys != len(keys):
        raise HintError("hint key area does not match its entries")
    return max_seq, _iterate(fixed, keys)


def _iterate(fixed: bytes, keys: bytes) -> Iterator[tuple[bytes, HintEntry]]:
    pos = 0
    for entry in ENTRY.iter_unpack(fixed):
        end = pos + entry[2]
        yield keys[pos:end], entry
        pos = end
