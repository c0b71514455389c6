"""How the collection types (hashes, sets, lists, sorted sets) are laid out in a store's keys.

A collection is not one record: it is a *header* record plus one record per element, so that
``HSET`` on a hash of a million fields writes one record, not a million. Both live in the
store's own key space under a reserved prefix (:data:`PREFIX`), and are ordinary records to
everything below this package: the log, the keydir, compaction, hints, recovery, check,
backup and export handle them as they handle any key.

* header: ``PREFIX + b"h" + key`` -> ``type byte + format byte``; the record's expiry is the
  collection's TTL (one record to rewrite for ``EXPIRE``, whatever the size);
* element: ``PREFIX + b"e" + type byte + varint(len(key)) + key + sub`` -> the element's
  value. ``sub`` is the hash field, the set or sorted-set member, or a list position (8 bytes,
  big-endian, offset by 2**63 so that the byte order is the numeric order). The type byte is in
  the element's key so that a record alone says what it is (the replication stream turns each
  record into a command without looking anything up).

Element values: a hash field's value; ``b""`` for a set member; a sorted-set member's score as
an 8-byte big-endian IEEE 754 double; a list element's value.

docs/format.md ("Collections") is the specification; this module is its only implementation.
"""

from __future__ import annotations

import struct

from ..record import MAX_KEY_SIZE

PREFIX = b"\xff\x00bk"
HEADER = PREFIX + b"h"
ELEMENT = PREFIX + b"e"
FORMAT = 1  # the format byte of a header

HASH, SET, LIST, ZSET = b"H", b"S", b"L", b"Z"
TYPE_NAMES = {HASH: "hash", SET: "set", LIST: "list", ZSET: "zset"}

_SCORE = struct.Struct(">d")
_POSITION = struct.Struct(">Q")
POSITION_BIAS = 1 << 63


class LayoutError(ValueError):
    """An element or field too long for the store's key limit, or a malformed internal key."""


def is_internal(key: bytes) -> bool:
    """Whether ``key`` is one of this package's records (not a user's string key)."""
    return key.startswith(PREFIX)


def header_key(key: bytes) -> bytes:
    return HEADER + key


def header_value(type_byte: bytes) -> bytes:
    return type_byte + bytes((FORMAT,))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def element_prefix(type_byte: bytes, key: bytes) -> bytes:
    """The bytes every element key of collection ``key`` starts with."""
    return ELEMENT + type_byte + _varint(len(key)) + key


def element_key(prefix: bytes, sub: bytes) -> bytes:
    """``prefix`` (:func:`element_prefix`) + ``sub``; refused when over the store's key limit."""
    k = prefix + sub
    if len(k) > MAX_KEY_SIZE:
        raise LayoutError(f"key and element together are {len(k) - len(prefix) + len(sub)} "
                          f"bytes with the layout's {len(prefix) - len(sub)}; the store's key "
                          f"limit is {MAX_KEY_SIZE} bytes")
    return k


def max_sub_len(key: bytes) -> int:
    """The longest element (field, member) a collection named ``key`` can hold."""
    return MAX_KEY_SIZE - len(element_prefix(HASH, key))


def parse(internal: bytes) -> tuple[bytes, bytes, bytes | None] | None:
    """``(type byte or b"", key, sub)`` of an internal key: a header gives ``(b"", key, None)``,
    an element ``(type, key, sub)``; None when malformed (nothing this package writes)."""
    if internal.startswith(HEADER):
        key = internal[len(HEADER):]
        return (b"", key, None) if key else None
    if not internal.startswith(ELEMENT) or len(internal) < len(ELEMENT) + 2:
        return None
    at = len(ELEMENT)
    type_byte = internal[at:at + 1]
    if type_byte not in TYPE_NAMES:
        return None
    at += 1
    n = internal[at]
    if 0 < n < 0x80:  # a name under 128 bytes: one varint byte (the common case, fast)
        end = at + 1 + n
        if end > len(internal):
            return None
        return type_byte, internal[at + 1:end], internal[end:]
    n = shift = 0
    while True:
        if at >= len(internal) or shift > 21:
            return None
        b = internal[at]
        at += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    if n == 0 or at + n > len(internal):
        return None
    return type_byte, internal[at:at + n], internal[at + n:]


def pack_score(score: float) -> bytes:
    return _SCORE.pack(score)


def unpack_score(value: bytes) -> float:
    if len(value) != 8:
        raise LayoutError(f"a sorted-set score is 8 bytes, not {len(value)}")
    return float(_SCORE.unpack(value)[0])


def pack_position(pos: int) -> bytes:
    return _POSITION.pack(pos + POSITION_BIAS)


def unpack_position(sub: bytes) -> int:
    if len(sub) != 8:
        raise LayoutError(f"a list position is 8 bytes, not {len(sub)}")
    return int(_POSITION.unpack(sub)[0]) - POSITION_BIAS
