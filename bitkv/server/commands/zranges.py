"""How the sorted-set commands read numbers and ranges, and write scores, as Redis 7.0 does.

Scores and weights are read as C's ``strtod`` reads them (``getDoubleFromObject``: no leading
space, no NaN, nothing out of range), score bounds as ``zslParseRange`` (``(`` for exclusive),
lex bounds as ``zslParseLexRange`` (``[x``, ``(x``, ``-``, ``+``); a score is written as
``addReplyDouble`` writes it (``%.17g``, ``inf``, ``-inf``). Ranges answer rank spans of a
:class:`~bitkv.structures.ZSetIndex` (bisections of its ``order``).
"""

from __future__ import annotations

import re

from ...structures import ZSetIndex
from .registry import CommandError

NOT_FLOAT = "ERR value is not a valid float"
SCORE_RANGE = "ERR min or max is not a float"
LEX_RANGE = "ERR min or max not valid string range item"

# -- numbers, as Redis reads and writes them -------------------------------------------------

_STRTOD = re.compile(
    rb"[+-]?(?:0x(?:[0-9a-f]+\.?[0-9a-f]*|\.[0-9a-f]+)(?:p[+-]?\d+)?"
    rb"|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?|inf(?:inity)?|nan)", re.IGNORECASE)
_SPACE = b" \t\n\v\f\r"


def strtod(text: bytes) -> tuple[float, bool] | None:
    """C's ``strtod`` over all of ``text`` (leading white space skipped): (value, whether it
    was out of range: overflow to infinity or underflow to zero), or None if it is not all a
    number."""
    s = text.lstrip(_SPACE)
    if _STRTOD.fullmatch(s) is None:
        return None
    digits = s.lstrip(b"+-")
    if digits[:2].lower() == b"0x":
        value = float.fromhex(s.decode())
        mantissa = digits[2:].lower().split(b"p")[0]
    else:
        value = float(s)
        mantissa = digits.lower().split(b"e")[0]
    if value in (float("inf"), float("-inf")):
        return value, not digits.lower().startswith(b"inf")
    if value == 0:
        return value, mantissa.strip(b"0.") != b""
    return value, False


def parse_score(arg: bytes, message: str = NOT_FLOAT) -> float:
    """A score or weight, as Redis's ``getDoubleFromObject``: no leading space, no NaN, not
    out of range."""
    got = strtod(arg) if arg and arg[:1] not in _SPACE else None
    if got is None or got[1] or got[0] != got[0]:
        raise CommandError(message)
    return got[0]


_INF, _NINF = float("inf"), float("-inf")


def format_score(score: float) -> bytes:
    """Redis 7.0's ``addReplyDouble`` text: ``%.17g``, and ``inf``/``-inf``."""
    if score == _INF:
        return b"inf"
    if score == _NINF:
        return b"-inf"
    return b"%.17g" % score


# -- ranges ----------------------------------------------------------------------------------


class _AboveAll:
    """Greater than every bytes object: ``(score, ABOVE)`` sorts after every pair of that
    score, so a bisection finds the end of a score's run."""

    __slots__ = ()

    def __lt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return other is self

    def __gt__(self, other: object) -> bool:
        return other is not self

    def __ge__(self, other: object) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return 0


ABOVE = _AboveAll()


class ScoreRange:
    """``min``/``max`` of ZRANGEBYSCORE and friends; ``(`` makes a bound exclusive."""

    __slots__ = ("max", "maxex", "min", "minex")

    def __init__(self, lo: bytes, hi: bytes) -> None:
        self.min, self.minex = self._bound(lo)
        self.max, self.maxex = self._bound(hi)

    @staticmethod
    def _bound(arg: bytes) -> tuple[float, bool]:
        ex = arg[:1] == b"("
        text = arg[1:] if ex else arg
        # strtod of "" is 0 with nothing consumed, which Redis accepts (zslParseRange)
        got = strtod(text) if text.strip(_SPACE) else (0.0, False)
        if got is None or got[0] != got[0]:
            raise CommandError(SCORE_RANGE)
        return got[0], ex

    def span(self, z: ZSetIndex, reverse: bool = False) -> tuple[int, int]:
        """The ranks [start, stop) of the members in the range (``reverse``: the same)."""
        lo, hi = self.min, self.max
        if lo > hi or (lo == hi and (self.minex or self.maxex)):
            return 0, 0
        order = z.order
        start = order.bisect_left((lo, ABOVE) if self.minex else (lo,))
        stop = order.bisect_left((hi,) if self.maxex else (hi, ABOVE))
        return start, max(start, stop)


_LEX_MIN, _LEX_VALUE, _LEX_MAX = 0, 1, 2


class LexRange:
    """``min``/``max`` of ZRANGEBYLEX and friends: ``[x``, ``(x``, ``-``, ``+``."""

    __slots__ = ("max", "min")

    def __init__(self, lo: bytes, hi: bytes) -> None:
        self.min = self._bound(lo)
        self.max = self._bound(hi)

    @staticmethod
    def _bound(arg: bytes) -> tuple[int, bytes, bool]:
        if arg == b"-":
            return _LEX_MIN, b"", True
        if arg == b"+":
            return _LEX_MAX, b"", True
        if arg[:1] == b"(":
            return _LEX_VALUE, arg[1:], True
        if arg[:1] == b"[":
            return _LEX_VALUE, arg[1:], False
        raise CommandError(LEX_RANGE)

    def _empty(self) -> bool:
        (lk, lv, lex), (hk, hv, hex_) = self.min, self.max
        if lk == _LEX_MAX or hk == _LEX_MIN:
            return True
        if lk == _LEX_VALUE and hk == _LEX_VALUE:
            return lv > hv or (lv == hv and (lex or hex_))
        return False

    def gte_min(self, member: bytes) -> bool:
        kind, value, ex = self.min
        if kind != _LEX_VALUE:
            return kind == _LEX_MIN
        return member > value if ex else member >= value

    def lte_max(self, member: bytes) -> bool:
        kind, value, ex = self.max
        if kind != _LEX_VALUE:
            return kind == _LEX_MAX
        return member < value if ex else member <= value

    def span(self, z: ZSetIndex, reverse: bool = False) -> tuple[int, int]:
        """The ranks [start, stop) of the members in the range, found as Redis finds them in
        a listpack: from the first member (the last, ``reverse``) in range, on while members
        stay within the far bound. Lex ranges are meant for members of one score (then this
        is a bisection); with mixed scores this is a walk, O(n), giving Redis's answer for a
        sorted set of listpack size."""
        order = z.order
        n = len(order)
        if self._empty() or not n or not self.gte_min(order[-1][1]) \
                or not self.lte_max(order[0][1]):
            return 0, 0
        first = order[0][0]
        if first == order[-1][0]:  # one score: the order is the members' byte order
            lk, lv, lex = self.min
            hk, hv, hex_ = self.max
            start = 0 if lk == _LEX_MIN else order.bisect_left(
                (first, lv, ABOVE) if lex else (first, lv))
            stop = n if hk == _LEX_MAX else order.bisect_left(
                (first, hv) if hex_ else (first, hv, ABOVE))
            return start, max(start, stop)
        if reverse:
            stop = n
            while stop > 0 and not self.lte_max(order[stop - 1][1]):
                stop -= 1
            start = stop
            while start > 0 and self.gte_min(order[start - 1][1]):
                start -= 1
            return start, stop
        start = 0
        while start < n and not self.gte_min(order[start][1]):
            start += 1
        stop = start
        while stop < n and self.lte_max(order[stop][1]):
            stop += 1
        return start, stop


def rank_span(start: int, end: int, n: int) -> tuple[int, int]:
    """Redis's index rules for ZRANGE/ZREMRANGEBYRANK and LRANGE/LTRIM: negative from the
    end, clamped; the ranks [start, stop), empty (0, 0) when start is past end or n."""
    if start < 0:
        start += n
    if end < 0:
        end += n
    start = max(start, 0)
    if start > end or start >= n:
        return 0, 0
    return start, min(end, n - 1) + 1


def limit_ranks(start: int, stop: int, offset: int, count: int, reverse: bool) -> range:
    """The ranks of a span after LIMIT, in reply order."""
    if offset < 0:
        return range(0)
    if reverse:
        top = stop - 1 - offset
        bottom = start - 1 if count < 0 else max(start - 1, top - count)
        return range(top, bottom, -1)
    first = start + offset
    end = stop if count < 0 else min(stop, first + count)
    return range(first, end)
