"""INCRBYFLOAT and LCS: the string commands that compute on a value rather than store it.

INCRBYFLOAT follows Redis 7.0, which adds in C's ``long double`` (64-bit mantissa on x86-64)
and prints the sum with ``%.17Lf``, trailing zeros removed. Here the sum is exact decimal
arithmetic (40 digits) printed the same way: for the decimal numbers people increment by,
the replies are the same as Redis's; they differ only where Redis's binary rounding shows
(digits beyond the 19th significant one). The new value keeps the key's TTL.

LCS is the textbook dynamic programme, as in Redis (t_string.c), with its replies and its
limit: the table ((len(a) + 1) * (len(b) + 1) four-byte cells) may not exceed
proto-max-bulk-len. It runs on the event loop like every command, so a long LCS delays the
other clients as it does in Redis, only longer (Python, about 10 M cells a second).
"""

from __future__ import annotations

import decimal
import re
from array import array
from typing import TYPE_CHECKING

from ..protocol import bulk, integer, map_reply, parse_ll
from .registry import F_DENYOOM, F_READONLY, F_WRITE, NOT_INT, SYNTAX, CommandError, command
from .strings import live_collections

if TYPE_CHECKING:
    from ..app import Connection

NOT_FLOAT = "ERR value is not a valid float"
MAX_FLOAT_CHARS = 5 * 1024  # Redis's MAX_LONG_DOUBLE_CHARS
LONG_DOUBLE_MAX = decimal.Decimal("1.18973149535723176502e4932")
_CONTEXT = decimal.Context(prec=40, Emax=999_999, Emin=-999_999)
_DECIMAL = re.compile(rb"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_INFINITY = re.compile(rb"^[+-]?(?:inf|infinity)$", re.IGNORECASE)
_HEX = re.compile(rb"^[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)"
                  rb"(?:[pP][+-]?\d+)?$")
_EXACT = decimal.Decimal(1).scaleb(-17)


def parse_float(b: bytes) -> decimal.Decimal:
    """The number ``b`` spells as C's strtold reads it (decimal, hex, inf; no spaces, no
    NaN), or CommandError(not a valid float)."""
    if not b or len(b) >= MAX_FLOAT_CHARS:
        raise CommandError(NOT_FLOAT)
    if _DECIMAL.match(b):
        return _CONTEXT.create_decimal(b.decode("ascii"))
    if _INFINITY.match(b):
        return decimal.Decimal("-Infinity" if b.startswith(b"-") else "Infinity")
    if _HEX.match(b):
        text = b.decode("ascii")
        if "p" not in text.lower():
            text += "p0"
        try:
            return _CONTEXT.create_decimal(float.fromhex(text))
        except OverflowError:
            return decimal.Decimal("-Infinity" if text.startswith("-") else "Infinity")
    raise CommandError(NOT_FLOAT)


def format_float(x: decimal.Decimal) -> bytes:
    """``x`` as Redis's INCRBYFLOAT prints it: ``%.17Lf``, trailing zeros and dot removed."""
    digits = max(_CONTEXT.prec, x.adjusted() + 20)  # room for 17 decimals of a big number
    text = format(x.quantize(_EXACT, context=_CONTEXT.copy() if digits == _CONTEXT.prec
                             else decimal.Context(prec=digits, Emax=999_999,
                                                  Emin=-999_999)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":
        text = "0"
    return text.encode("ascii")


@command("incrbyfloat", 3, F_WRITE | F_DENYOOM, (1, 1, 1), "string",
         "Increment the float value of a key by the given amount", "2.6.0", strings_only=True)
def cmd_incrbyfloat(c: Connection, args: list[bytes]) -> bytes:
    db = c.db
    try:
        current = db.get(args[1])
    except ValueError:
        current = None
    value = parse_float(current) if current is not None else decimal.Decimal(0)
    incr = parse_float(args[2])
    if value.is_infinite() or incr.is_infinite():
        raise CommandError("ERR increment would produce NaN or Infinity")
    new = add_floats(value, incr)
    db.put(args[1], new, keep_ttl=True)
    return bulk(new)


def add_floats(value: decimal.Decimal, incr: decimal.Decimal) -> bytes:
    """``value + incr`` printed as INCRBYFLOAT and HINCRBYFLOAT store it; CommandError when
    the sum is infinite (where C's long double overflows), as Redis refuses it."""
    total = _CONTEXT.add(value, incr)
    if total.is_infinite() or abs(total) > LONG_DOUBLE_MAX:
        raise CommandError("ERR increment would produce NaN or Infinity")
    return format_float(total)


def _lcs_table(a: bytes, b: bytes) -> list[array[int]]:
    """rows[i][j] = the LCS length of a[:i] and b[:j]."""
    rows = [array("I", bytes(4 * (len(b) + 1)))]
    for ch in a:
        prev = rows[-1]
        row = array("I", [0])
        left = 0
        for j, other in enumerate(b):
            if ch == other:
                left = prev[j] + 1
            else:
                up = prev[j + 1]
                if up > left:
                    left = up
            row.append(left)
        rows.append(row)
    return rows


@command("lcs", -3, F_READONLY, (1, 2, 1), "string",
         "Find longest common substring", "7.0.0")
def cmd_lcs(c: Connection, args: list[bytes]) -> bytes:
    db = c.db
    if live_collections(c, args[1:3]):
        raise CommandError("ERR The specified keys must contain string values")
    try:
        a = db.get(args[1]) or b""
        b = db.get(args[2]) or b""
    except ValueError:
        a = b = b""
    getidx = getlen = withmatchlen = False
    minmatchlen = 0
    j = 3
    while j < len(args):
        opt = args[j].upper()
        if opt == b"IDX":
            getidx = True
        elif opt == b"LEN":
            getlen = True
        elif opt == b"WITHMATCHLEN":
            withmatchlen = True
        elif opt == b"MINMATCHLEN" and j + 1 < len(args):
            n = parse_ll(args[j + 1])
            if n is None:
                raise CommandError(NOT_INT)
            minmatchlen = max(n, 0)
            j += 1
        else:
            raise CommandError(SYNTAX)
        j += 1
    if getlen and getidx:
        raise CommandError("ERR If you want both the length and indexes, please just use IDX.")
    if (len(a) + 1) * (len(b) + 1) * 4 > c.control.limits.max_bulk_len:
        raise CommandError("ERR Insufficient memory, transient memory for LCS exceeds "
                           "proto-max-bulk-len")
    lcs = _lcs_table(a, b)
    alen, blen = len(a), len(b)
    length = lcs[alen][blen]
    if getlen:
        return integer(length)
    # Walk back from the end, as Redis does, collecting the LCS and the matching ranges.
    result = bytearray(length)
    idx = length
    matches: list[bytes] = []
    a_start, a_end, b_start, b_end = alen, 0, 0, 0  # a_start == alen: no range open
    i, k = alen, blen
    while i > 0 and k > 0:
        emit = False
        if a[i - 1] == b[k - 1]:
            result[idx - 1] = a[i - 1]
            if a_start == alen:
                a_start = a_end = i - 1
                b_start = b_end = k - 1
            elif a_start == i and b_start == k:
                a_start -= 1
                b_start -= 1
            else:
                emit = True
            if a_start == 0 or b_start == 0:
                emit = True
            idx -= 1
            i -= 1
            k -= 1
        else:
            if lcs[i - 1][k] > lcs[i][k - 1]:
                i -= 1
            else:
                k -= 1
            if a_start != alen:
                emit = True
        if emit:
            match_len = a_end - a_start + 1
            if getidx and (minmatchlen == 0 or match_len >= minmatchlen):
                parts = [b"*%d\r\n" % (2 + withmatchlen),
                         b"*2\r\n" + integer(a_start) + integer(a_end),
                         b"*2\r\n" + integer(b_start) + integer(b_end)]
                if withmatchlen:
                    parts.append(integer(match_len))
                matches.append(b"".join(parts))
            a_start = alen
    if getidx:
        return map_reply([(bulk(b"matches"),
                           b"*%d\r\n" % len(matches) + b"".join(matches)),
                          (bulk(b"len"), integer(length))], c.resp3)
    return bulk(bytes(result))
