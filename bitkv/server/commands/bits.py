"""Bit commands on string values: SETBIT, GETBIT, BITCOUNT, BITPOS, BITOP.

Bits are numbered as in Redis: bit 0 is the most significant bit of the first byte. A missing
key reads as an endless run of zero bits. SETBIT grows the value with zero bytes and keeps the
key's TTL. Ranges, negative indexes, the ``BYTE``/``BIT`` unit and the error texts follow Redis
7.0's bitops.c. The read-modify-write of SETBIT and BITOP is atomic with respect to other
clients because handlers run one at a time on the event loop thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import Store
from ...record import MAX_VALUE_SIZE
from ...structures import WrongTypeError
from ..protocol import MINUS_ONE, ONE, ZERO, integer, parse_ll
from .registry import F_DENYOOM, F_READONLY, F_WRITE, SYNTAX, CommandError, command, to_int
from .strings import live_collections, replace_collections

if TYPE_CHECKING:
    from ..app import Connection

BAD_OFFSET = "ERR bit offset is not an integer or out of range"
BAD_BIT = "ERR bit is not an integer or out of range"


def _get(db: Store, key: bytes) -> bytes | None:
    try:
        return db.get(key)
    except ValueError:  # an empty or oversized key: no such key can exist
        return None


def _offset(c: Connection, arg: bytes) -> int:
    """A bit offset, refused (as Redis) if its byte lies beyond proto-max-bulk-len."""
    n = parse_ll(arg)
    if n is None or n < 0 or n >> 3 >= c.control.limits.max_bulk_len:
        raise CommandError(BAD_OFFSET)
    return n


@command("setbit", 4, F_WRITE | F_DENYOOM, (1, 1, 1), "bitmap",
         "Sets or clears the bit at offset in the string value stored at key", "2.2.0",
         strings_only=True)
def cmd_setbit(c: Connection, args: list[bytes]) -> bytes:
    offset = _offset(c, args[2])
    on = parse_ll(args[3])
    if on not in (0, 1):
        raise CommandError(BAD_BIT)
    byte, mask = offset >> 3, 0x80 >> (offset & 7)
    if byte >= MAX_VALUE_SIZE:  # the store's value limit (proto-max-bulk-len may be larger)
        raise CommandError(BAD_OFFSET)
    db = c.db
    old = _get(db, args[1])
    value = bytearray(old or b"")
    grown = byte >= len(value)
    if grown:
        value.extend(bytes(byte + 1 - len(value)))
    was = 1 if value[byte] & mask else 0
    if grown or was != on:  # as Redis: an unchanged value is not written
        value[byte] = value[byte] | mask if on else value[byte] & ~mask
        db.put(args[1], bytes(value), keep_ttl=True)
    return ONE if was else ZERO


@command("getbit", 3, F_READONLY, (1, 1, 1), "bitmap",
         "Returns the bit value at offset in the string value stored at key", "2.2.0",
         strings_only=True)
def cmd_getbit(c: Connection, args: list[bytes]) -> bytes:
    offset = _offset(c, args[2])
    value = _get(c.db, args[1]) or b""
    byte = offset >> 3
    if byte >= len(value):
        return ZERO
    return ONE if value[byte] & (0x80 >> (offset & 7)) else ZERO


def _unit_is_bit(arg: bytes) -> bool:
    unit = arg.upper()
    if unit == b"BIT":
        return True
    if unit == b"BYTE":
        return False
    raise CommandError(SYNTAX)


def _bit_range(length: int, start: int, end: int, is_bit: bool) -> tuple[int, int] | None:
    """The range ``start..end`` (bytes, or bits with ``is_bit``; negative counts from the
    end) as inclusive bit indexes into a value of ``length`` bytes; None if it is empty."""
    total = length * 8 if is_bit else length
    if start < 0:
        start += total
    if end < 0:
        end += total
    start, end = max(start, 0), min(max(end, 0), total - 1)
    if start > end:
        return None
    return (start, end) if is_bit else (start * 8, end * 8 + 7)


def _window(value: bytes, first: int, last: int) -> tuple[int, int]:
    """Bits ``first..last`` of ``value`` as (an int whose top bit is bit ``first``, width)."""
    chunk = value[first >> 3 : (last >> 3) + 1]
    width = len(chunk) * 8
    x = int.from_bytes(chunk, "big")
    skip_head, skip_tail = first & 7, width - 1 - (last - (first & ~7))
    x = (x >> skip_tail) & ((1 << (width - skip_head - skip_tail)) - 1)
    return x, width - skip_head - skip_tail


@command("bitcount", -2, F_READONLY, (1, 1, 1), "bitmap", "Count set bits in a string",
         "2.6.0", strings_only=True)
def cmd_bitcount(c: Connection, args: list[bytes]) -> bytes:
    if len(args) == 2:
        whole = _get(c.db, args[1]) or b""
        return integer(int.from_bytes(whole, "big").bit_count())
    if len(args) not in (4, 5):
        raise CommandError(SYNTAX)
    start, end = to_int(args[2]), to_int(args[3])
    is_bit = _unit_is_bit(args[4]) if len(args) == 5 else False
    value = _get(c.db, args[1])
    if value is None or (start < 0 and end < 0 and start > end):
        return ZERO
    span = _bit_range(len(value), start, end, is_bit)
    if span is None:
        return ZERO
    x, _width = _window(value, *span)
    return integer(x.bit_count())


@command("bitpos", -3, F_READONLY, (1, 1, 1), "bitmap",
         "Find first bit set or clear in a string", "2.8.7", strings_only=True)
def cmd_bitpos(c: Connection, args: list[bytes]) -> bytes:
    bit = to_int(args[2])
    if bit not in (0, 1):
        raise CommandError("ERR The bit argument must be 1 or 0.")
    value = _get(c.db, args[1])
    if value is None:  # an endless run of zeros
        return MINUS_ONE if bit else ZERO
    if len(args) > 6:
        raise CommandError(SYNTAX)
    end_given = len(args) >= 5
    span: tuple[int, int] | None
    if len(args) == 3:
        span = (0, len(value) * 8 - 1) if value else None
    else:
        start = to_int(args[3])
        is_bit = _unit_is_bit(args[5]) if len(args) == 6 else False
        end = to_int(args[4]) if end_given else -1
        span = _bit_range(len(value), start, end, is_bit)
    if span is None:  # an empty range holds neither a 0 nor a 1
        return MINUS_ONE
    x, width = _window(value, *span)
    if not bit:
        x ^= (1 << width) - 1
    if x:
        return integer(span[0] + width - x.bit_length())
    # No such bit in the range. Looking for a 0 with no end given, the value counts as
    # padded with zeros on the right: the answer is the first bit past it.
    if bit or end_given:
        return MINUS_ONE
    return integer(span[1] + 1)


@command("bitop", -4, F_WRITE | F_DENYOOM, (2, -1, 1), "bitmap",
         "Perform bitwise operations between strings", "2.6.0")
def cmd_bitop(c: Connection, args: list[bytes]) -> bytes:
    op = args[1].upper()
    if op not in (b"AND", b"OR", b"XOR", b"NOT"):
        raise CommandError(SYNTAX)
    if op == b"NOT" and len(args) != 4:
        raise CommandError("ERR BITOP NOT must be called with a single source key.")
    db = c.db
    if live_collections(c, args[3:]):
        raise WrongTypeError()
    values = [_get(db, key) or b"" for key in args[3:]]
    size = max(map(len, values))
    replaced = live_collections(c, [args[2]])  # the destination is overwritten, any type
    if size == 0:
        if replaced:
            c.structures.delete(args[2])
        else:
            db.delete(args[2])
        return ZERO
    ints = [int.from_bytes(v.ljust(size, b"\0"), "big") for v in values]
    result = ints[0]
    if op == b"NOT":
        result = ~result & ((1 << (size * 8)) - 1)
    for x in ints[1:]:
        if op == b"AND":
            result &= x
        elif op == b"OR":
            result |= x
        else:
            result ^= x
    if replaced:
        replace_collections(c, replaced, [(args[2], result.to_bytes(size, "big"), None)])
    else:
        db.put(args[2], result.to_bytes(size, "big"))
    return integer(size)
