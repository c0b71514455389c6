"""Redis's packed encodings, decoded: listpack, ziplist, intset, zipmap, and text doubles.

An RDB stores a small hash, set, list or sorted set as one string holding Redis's in-memory
encoding of it (``src/listpack.c``, ``ziplist.c``, ``intset.c``, ``zipmap.c``). Each function
here turns one such blob into its elements, checking every length against the bytes that exist
(as Redis's ``*ValidateIntegrity`` with deep checking does) so that hostile bytes give a
:class:`PackedError` with the offset inside the blob, never an ``IndexError`` or an allocation
bigger than the blob. Integer entries come out as their decimal text, as Redis shows them.

:mod:`bitkv.rdb` decides what the elements mean and names the key in its errors; nothing here
knows about RDB files. ``docs/rdb.md`` describes the bytes.
"""

from __future__ import annotations

import math
import re
import struct

__all__ = ["PackedError", "intset_members", "listpack_elements", "score_from_text",
           "ziplist_elements", "zipmap_pairs"]

_COUNT_UNKNOWN = 0xFFFF  # a listpack's or ziplist's element count too big for its header
_END = 0xFF

# The integer entry encodings: first byte -> (width in bytes, struct format).
_LISTPACK_INTS = {0xF1: (2, "<h"), 0xF2: (3, ""), 0xF3: (4, "<i"), 0xF4: (8, "<q")}
_ZIPLIST_INTS = {0xC0: (2, "<h"), 0xD0: (4, "<i"), 0xE0: (8, "<q"), 0xF0: (3, ""),
                 0xFE: (1, "<b")}
_INTSET_FORMATS = {2: "h", 4: "i", 8: "q"}

# What C's strtod accepts of what Redis writes for a double (%.17g, "inf", "-inf", "nan" and
# their spellings); Python's float() alone would also take "1_0" and surrounding spaces.
_DOUBLE_TEXT = re.compile(
    rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)",
    re.IGNORECASE)


class PackedError(ValueError):
    """A malformed packed encoding. ``offset`` is the byte of the blob where it was found."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} at byte {offset}")
        self.offset = offset


def _signed(data: bytes, fmt: str) -> int:
    if fmt:
        value: int = struct.unpack(fmt, data)[0]
        return value
    return int.from_bytes(data, "little", signed=True)  # 24 bits: no struct format


def _backlen(entry_len: int) -> bytes:
    """A listpack entry's back length as lpEncodeBacklen writes it (7 bits a byte)."""
    if entry_len <= 127:
        return bytes((entry_len,))
    if entry_len < 16383:
        return bytes((entry_len >> 7, (entry_len & 127) | 128))
    if entry_len < 2097151:
        return bytes((entry_len >> 14, ((entry_len >> 7) & 127) | 128, (entry_len & 127) | 128))
    if entry_len < 268435455:
        return bytes((entry_len >> 21, ((entry_len >> 14) & 127) | 128,
                      ((entry_len >> 7) & 127) | 128, (entry_len & 127) | 128))
    return bytes((entry_len >> 28, ((entry_len >> 21) & 127) | 128,
                  ((entry_len >> 14) & 127) | 128, ((entry_len >> 7) & 127) | 128,
                  (entry_len & 127) | 128))


def listpack_elements(lp: bytes) -> list[bytes]:
    """The elements of listpack ``lp`` in order (Redis 5+; every small type from 7.0).

    Layout: total bytes (u32 LE), element count (u16 LE, 65535: not known), entries, ``0xFF``.
    An entry is an encoding byte (7-bit uint, 6/12/32-bit string length, 13/16/24/32/64-bit
    int), its data, and its own length again backwards (``_backlen``).
    """
    size = len(lp)
    if size < 7:
        raise PackedError(f"a listpack of {size} bytes is shorter than its header and end", 0)
    total = int.from_bytes(lp[0:4], "little")
    if total != size:
        raise PackedError(f"listpack header says {total} bytes, the value holds {size}", 0)
    end = size - 1  # every entry ends at or before the end byte
    if lp[end] != _END:
        raise PackedError("listpack does not end with 0xff", end)
    out: list[bytes] = []
    p = 6
    while True:
        start = p
        first = lp[p]
        if first == _END:
            break
        if first < 0x80:  # 0xxxxxxx: 7-bit unsigned int
            element = b"%d" % first
            p += 1
        else:
            if first < 0xC0:  # 10xxxxxx: string of up to 63 bytes
                head, n = 1, first & 0x3F
            elif first < 0xE0:  # 110xxxxx yyyyyyyy: 13-bit signed int
                head, n = 2, -1
            elif first < 0xF0:  # 1110xxxx yyyyyyyy: string of up to 4095 bytes
                head, n = 2, -2
            elif first == 0xF0:  # then a u32 LE string length
                head, n = 5, -2
            elif first in _LISTPACK_INTS:
                head, n = 1 + _LISTPACK_INTS[first][0], -1
            else:
                raise PackedError(f"unknown listpack entry encoding 0x{first:02x}", p)
            if p + head > end:
                raise PackedError("listpack entry header runs past the end", p)
            if first < 0xC0:
                element = lp[p + 1:p + 1 + n]
                p += 1 + n
            elif first < 0xE0:
                value = ((first & 0x1F) << 8) | lp[p + 1]
                element = b"%d" % (value - 8192 if value >= 4096 else value)
                p += 2
            elif first < 0xF0:
                n = ((first & 0x0F) << 8) | lp[p + 1]
                element = lp[p + 2:p + 2 + n]
                p += 2 + n
            elif first == 0xF0:
                n = int.from_bytes(lp[p + 1:p + 5], "little")
                element = lp[p + 5:p + 5 + n]
                p += 5 + n
            else:
                width, fmt = _LISTPACK_INTS[first]
                element = b"%d" % _signed(lp[p + 1:p + 1 + width], fmt)
                p += head
        back = _backlen(p - start)
        if p + len(back) > end:
            raise PackedError("listpack entry runs past the end", start)
        if lp[p:p + len(back)] != back:
            raise PackedError(f"listpack entry's back length is not {p - start}", p)
        p += len(back)
        out.append(element)
    declared = int.from_bytes(lp[4:6], "little")
    if declared not in (_COUNT_UNKNOWN, len(out)):
        raise PackedError(f"listpack header says {declared} elements, it holds {len(out)}", 4)
    return out


def ziplist_elements(zl: bytes) -> list[bytes]:
    """The elements of ziplist ``zl`` in order (Redis 2.6 to 6.2, read by 7.x).

    Layout: total bytes (u32 LE), offset of the last entry (u32 LE), element count (u16 LE,
    65535: not known), entries, ``0xFF``. An entry is the previous entry's length (1 byte, or
    ``0xFE`` + u32 LE), an encoding (6/14/32-bit string length, 8/16/24/32/64-bit int, or a
    4-bit immediate 0..12), its data. A 32-bit string length is written ``0x80`` + u32 BE;
    the reader refuses ``0x81``..``0xBF`` there, which Redis never writes.
    """
    size = len(zl)
    if size < 11:
        raise PackedError(f"a ziplist of {size} bytes is shorter than its header and end", 0)
    total = int.from_bytes(zl[0:4], "little")
    if total != size:
        raise PackedError(f"ziplist header says {total} bytes, the value holds {size}", 0)
    end = size - 1
    if zl[end] != _END:
        raise PackedError("ziplist does not end with 0xff", end)
    tail = int.from_bytes(zl[4:8], "little")
    out: list[bytes] = []
    p = 10
    previous_len = 0
    last_start = -1
    while zl[p] != _END:
        start = p
        if zl[p] < 0xFE:
            prevlen = zl[p]
            p += 1
        else:
            if p + 5 >= end:
                raise PackedError("ziplist entry header runs past the end", start)
            prevlen = int.from_bytes(zl[p + 1:p + 5], "little")
            p += 5
        if prevlen != previous_len:
            raise PackedError(f"ziplist entry says the previous one is {prevlen} bytes, "
                              f"it is {previous_len}", start)
        enc = zl[p]  # p <= end: readable (the end byte is no valid encoding)
        if enc < 0x40:  # 00pppppp: string of up to 63 bytes
            n = enc
            p += 1
        elif enc < 0x80:  # 01pppppp qqqqqqqq: 14-bit string length, big-endian
            if p + 2 > end:
                raise PackedError("ziplist entry header runs past the end", start)
            n = ((enc & 0x3F) << 8) | zl[p + 1]
            p += 2
        elif enc == 0x80:  # then a u32 BE string length
            if p + 5 > end:
                raise PackedError("ziplist entry header runs past the end", start)
            n = int.from_bytes(zl[p + 1:p + 5], "big")
            p += 5
        elif 0xF1 <= enc <= 0xFD:  # 1111xxxx: the integer xxxx - 1
            element = b"%d" % ((enc & 0x0F) - 1)
            p += 1
            n = -1
        elif enc in _ZIPLIST_INTS:
            width, fmt = _ZIPLIST_INTS[enc]
            if p + 1 + width > end:
                raise PackedError("ziplist entry runs past the end", start)
            element = b"%d" % _signed(zl[p + 1:p + 1 + width], fmt)
            p += 1 + width
            n = -1
        else:
            raise PackedError(f"unknown ziplist entry encoding 0x{enc:02x}", p)
        if n >= 0:
            if p + n > end:
                raise PackedError("ziplist entry runs past the end", start)
            element = zl[p:p + n]
            p += n
        out.append(element)
        previous_len = p - start
        last_start = start
    if p != end:
        raise PackedError("ziplist ends before its last byte", p)
    if last_start >= 0 and tail != last_start:
        raise PackedError(f"ziplist tail offset {tail} is not its last entry's {last_start}", 4)
    if last_start < 0 and tail > end:
        raise PackedError(f"ziplist tail offset {tail} is past the end", 4)
    declared = int.from_bytes(zl[8:10], "little")
    if declared not in (_COUNT_UNKNOWN, len(out)):
        raise PackedError(f"ziplist header says {declared} elements, it holds {len(out)}", 8)
    return out


def intset_members(blob: bytes) -> list[bytes]:
    """The members of intset ``blob``, ascending, as decimal text.

    Layout: width (u32 LE: 2, 4 or 8), count (u32 LE), then count signed little-endian
    integers of that width, strictly ascending. Empty intsets are refused, as Redis does.
    """
    size = len(blob)
    if size < 8:
        raise PackedError(f"an intset of {size} bytes is shorter than its header", 0)
    width = int.from_bytes(blob[0:4], "little")
    fmt = _INTSET_FORMATS.get(width)
    if fmt is None:
        raise PackedError(f"intset width {width} is not 2, 4 or 8", 0)
    count = int.from_bytes(blob[4:8], "little")
    if 8 + count * width != size:
        raise PackedError(f"intset header says {count} members of {width} bytes, the value "
                          f"holds {size - 8} bytes of members", 4)
    if count == 0:
        raise PackedError("empty intset", 4)
    values = struct.unpack(f"<{count}{fmt}", blob[8:])
    for i in range(1, count):
        if values[i] <= values[i - 1]:
            raise PackedError("intset members are not strictly ascending", 8 + i * width)
    return [b"%d" % v for v in values]


def _zipmap_length(zm: bytes, p: int, end: int) -> tuple[int, int]:
    """A zipmap length at ``p``: (length, position after it)."""
    first = zm[p]
    if first < 0xFE:
        return first, p + 1
    if first == 0xFE and p + 5 <= end:  # 0xfe + u32 (host order: little-endian)
        return int.from_bytes(zm[p + 1:p + 5], "little"), p + 5
    raise PackedError("bad zipmap length", p)


def zipmap_pairs(zm: bytes) -> list[tuple[bytes, bytes]]:
    """The (field, value) pairs of zipmap ``zm`` (hashes in Redis before 2.6).

    Layout: a count byte (254: not known), then per pair: field length, field, value length,
    a "free" byte, value, that many unused bytes; then ``0xFF``. A length is one byte below
    254, or ``0xFE`` + u32 LE. Empty zipmaps are refused, as Redis does.
    """
    size = len(zm)
    if size < 2:
        raise PackedError(f"a zipmap of {size} bytes is shorter than its count and end", 0)
    end = size - 1
    if zm[end] != _END:
        raise PackedError("zipmap does not end with 0xff", end)
    out: list[tuple[bytes, bytes]] = []
    p = 1
    while zm[p] != _END:
        start = p
        n, p = _zipmap_length(zm, p, end)
        if p + n > end:
            raise PackedError("zipmap field runs past the end", start)
        field = zm[p:p + n]
        p += n
        n, p = _zipmap_length(zm, p, end)
        if p >= end:
            raise PackedError("zipmap value runs past the end", start)
        free = zm[p]
        p += 1
        if p + n + free > end:
            raise PackedError("zipmap value runs past the end", start)
        out.append((field, zm[p:p + n]))
        p += n + free
    if not out:
        raise PackedError("empty zipmap", 0)
    if zm[0] not in (0xFE, len(out)):
        raise PackedError(f"zipmap count byte says {zm[0]} pairs, it holds {len(out)}", 0)
    return out


def score_from_text(text: bytes) -> float:
    """A sorted-set score written as text (RDB_TYPE_ZSET, ziplist and listpack zsets).

    Raises ``ValueError`` for text that is not a double, and for NaN: Redis refuses a NaN
    score, and bitkv's sorted sets cannot order one.
    """
    if len(text) > 400 or _DOUBLE_TEXT.fullmatch(text) is None:
        raise ValueError(f"score {text[:40]!r} is not a number")
    score = float(text)
    if math.isnan(score):
        raise ValueError(f"score {text[:40]!r} is NaN")
    return score
