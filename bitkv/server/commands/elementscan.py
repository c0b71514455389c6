"""The cursor of HSCAN and SSCAN (and any ``*SCAN`` over one collection's elements).

Redis's guarantee: an element present from the start of a full iteration to its end is
returned; one added or removed meanwhile may or may not be. A position in the collection's
insertion order would break it (a removal before the cursor shifts every later element back),
so the cursor walks the elements in the order of ``crc32(element)``, which no write changes:
the cursor is one more than the checksum of the next element to return. An iteration needs
that order sorted once (O(n log n)); it is kept for the collection's later steps in a small
cache, rebuilt when an iteration starts again (cursor 0) or its collection was replaced.
Elements added after the order was built are not returned; removed ones are skipped.

A collection in a small encoding (listpack, intset) is answered whole, with cursor 0, as Redis
does.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from zlib import crc32

from ...structures import Collection
from ..glob import compile_glob
from .registry import SYNTAX, CommandError, to_int

CACHED_ORDERS = 8  # iterations in progress whose order is kept (each: ~12 bytes an element)


class _Order:
    __slots__ = ("collection", "crcs", "subs")

    def __init__(self, collection: Collection) -> None:
        pairs = sorted((crc32(s), s) for s in collection.subs())
        self.collection = collection
        self.crcs = array("I", [p[0] for p in pairs])
        self.subs = [p[1] for p in pairs]


_orders: OrderedDict[bytes, _Order] = OrderedDict()


def parse_cursor(arg: bytes) -> int:
    """A cursor as Redis reads it (C's ``strtoul``): optional sign, decimal digits, a
    negative number wrapping around 2**64; "" is 0."""
    digits = arg[1:] if arg[:1] in (b"+", b"-") else arg
    if (digits and not digits.isdigit()) or (not digits and arg) or len(digits) > 25:
        raise CommandError("ERR invalid cursor")
    n = int(digits) if digits else 0
    if n >= 2**64:
        raise CommandError("ERR invalid cursor")
    return (2**64 - n) % 2**64 if arg[:1] == b"-" else n


def parse_scan(args: list[bytes]) -> tuple[int, Callable[[bytes], bool] | None, int]:
    """``(cursor, match or None, count)`` from ``XSCAN key cursor [MATCH p] [COUNT n]``,
    refused with Redis's errors."""
    cursor = parse_cursor(args[2])
    match, count, _type = parse_scan_options(args, 3)
    return cursor, match, count


def parse_scan_options(args: list[bytes], start: int, *, with_type: bool = False
                       ) -> tuple[Callable[[bytes], bool] | None, int, str | None]:
    """``(match or None, count, type or None)`` from the ``[MATCH p] [COUNT n]`` (and, for
    SCAN, ``[TYPE t]``) options at ``args[start:]``, refused with Redis's errors: every SCAN
    command's options. ``MATCH *`` matches everything, so it is None (no test per key)."""
    match = None
    count = 10
    wanted: str | None = None
    i = start
    while i < len(args):
        o = args[i].upper()
        if i + 1 >= len(args):
            raise CommandError(SYNTAX)
        if o == b"COUNT":
            count = to_int(args[i + 1])
            if count < 1:
                raise CommandError(SYNTAX)
        elif o == b"MATCH":
            pattern = args[i + 1]
            match = None if pattern == b"*" else compile_glob(pattern)
        elif o == b"TYPE" and with_type:
            wanted = args[i + 1].lower().decode("utf-8", "replace")
        else:
            raise CommandError(SYNTAX)
        i += 2
    return match, count, wanted


def scan_step(c: Collection, cursor: int, count: int, small: bool) -> tuple[int, list[bytes]]:
    """The next cursor (0: done) and the elements of one step from ``cursor``: about
    ``count`` of them (all those sharing the last one's checksum come too)."""
    if small:  # whatever the cursor, as Redis answers a listpack or an intset
        return 0, list(c.subs())
    order = _orders.get(c.key)
    if order is None or order.collection is not c or cursor == 0:
        order = _Order(c)
        _orders[c.key] = order
        while len(_orders) > CACHED_ORDERS:
            _orders.popitem(last=False)
    else:
        _orders.move_to_end(c.key)
    crcs, subs = order.crcs, order.subs
    at = bisect_left(crcs, cursor - 1) if cursor else 0
    end = min(at + count, len(subs))
    while end < len(subs) and end > 0 and crcs[end] == crcs[end - 1]:
        end += 1
    found = [s for s in subs[at:end] if c.has(s)]
    if end >= len(subs):
        _orders.pop(c.key, None)
        return 0, found
    return crcs[end] + 1, found
