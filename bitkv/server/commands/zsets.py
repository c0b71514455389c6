"""Sorted-set commands: ZADD, ZRANGE and its variants, ZPOP*, ZMPOP, the set operations, ZSCAN...

A sorted set is a :class:`~bitkv.structures.ZSetIndex`: ``scores`` (member -> score) and
``order``, a SortedList of (score, member) pairs, so ranks, score ranges and lex ranges are
bisections, O(log n), as Redis's skiplist. Each member is one record (its score, 8 bytes), so
a command writes one record per member it adds, changes or removes, in one batch.

Replies and error texts follow Redis 7.0's ``t_zset.c``: scores are formatted as its
``addReplyDouble`` (``%.17g``, ``inf``, ``-inf``), doubles in RESP3, pairs nested in RESP3.
How scores, bounds and ranges are read is :mod:`.zranges`; blocked clients wait in
:mod:`.blocking` (the same queues as the lists').
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast
from zlib import crc32

from ...structures import SetIndex, WrongTypeError, ZSetIndex
from ...structures.encoding import pack_score
from ..protocol import EMPTY_ARRAY, NIL_ARRAY2, ZERO, array, bulk, integer
from . import blocking, tuning
from .elementscan import parse_scan_options
from .encodings import rule, tuning_int
from .registry import (
    F_ASYNC,
    F_DENYOOM,
    F_FAST,
    F_READONLY,
    F_WRITE,
    SYNTAX,
    CommandError,
    command,
    to_int,
)
from .zranges import (
    LexRange,
    ScoreRange,
    format_score,
    limit_ranks,
    parse_score,
    rank_span,
)

if TYPE_CHECKING:
    from ..app import Connection

NAN_RESULT = "ERR resulting score is not a number (NaN)"
LONG_MAX = 2**63 - 1
RANDOM_REPEAT_MAX = 1 << 24  # ZRANDMEMBER's negative count: replies built in memory


def double_reply(c: Connection, score: float) -> bytes:
    text = format_score(score)
    return b",%b\r\n" % text if c.resp3 else b"$%d\r\n%b\r\n" % (len(text), text)


def _nil(c: Connection) -> bytes:
    return c.null


def _nil_array(c: Connection) -> bytes:
    return c.null if c.resp3 else NIL_ARRAY2


# -- replies ---------------------------------------------------------------------------------


def pairs_reply(c: Connection, pairs: list[tuple[float, bytes]], withscores: bool) -> bytes:
    """Members (with scores: flat in RESP2, [member, score] pairs in RESP3)."""
    # One format per member: this is the hot path of every range command.
    if not withscores:
        return b"*%d\r\n" % len(pairs) + b"".join(
            [b"$%d\r\n%b\r\n" % (len(m), m) for _s, m in pairs])
    fmt = format_score
    if c.resp3:
        return b"*%d\r\n" % len(pairs) + b"".join(
            [b"*2\r\n$%d\r\n%b\r\n,%b\r\n" % (len(m), m, fmt(s)) for s, m in pairs])
    texts = [(m, fmt(s)) for s, m in pairs]
    return b"*%d\r\n" % (2 * len(pairs)) + b"".join(
        [b"$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(m), m, len(t), t) for m, t in texts])


# -- OBJECT ENCODING -------------------------------------------------------------------------


@rule(ZSetIndex)
def zset_encoding(z: Any, values: dict[str, str]) -> str:
    """listpack while at most zset-max-listpack-entries members of at most
    zset-max-listpack-value bytes; skiplist once either was exceeded (sticky)."""
    if not z.converted and _too_big(z, values):
        z.converted = True
    return "skiplist" if z.converted else "listpack"


def _too_big(z: ZSetIndex, values: dict[str, str]) -> bool:
    entries = tuning_int(values, "zset-max-listpack-entries")
    if len(z) > entries:
        return True
    limit = tuning_int(values, "zset-max-listpack-value")
    return any(len(m) > limit for m in z.scores)


def _note_size(c: Connection, z: ZSetIndex | None, added: Iterable[bytes] = ()) -> None:
    """After a write: Redis converts a sorted set to a skiplist the moment it exceeds the
    listpack limits, and never back while running."""
    if z is None or z.converted:
        return
    values = tuning.values(c.control)
    if len(z) > tuning_int(values, "zset-max-listpack-entries") or any(
            len(m) > tuning_int(values, "zset-max-listpack-value") for m in added):
        z.converted = True


# -- reading ----------------------------------------------------------------------------------


def _find(c: Connection, key: bytes) -> ZSetIndex | None:
    return c.structures.find(key, ZSetIndex)


@command("zcard", 2, F_READONLY | F_FAST, (1, 1, 1), "sorted_set",
         "Get the number of members in a sorted set", "1.2.0")
def cmd_zcard(c: Connection, args: list[bytes]) -> bytes:
    z = _find(c, args[1])
    return integer(len(z)) if z is not None else ZERO


@command("zscore", 3, F_READONLY | F_FAST, (1, 1, 1), "sorted_set",
         "Get the score associated with the given member in a sorted set", "1.2.0")
def cmd_zscore(c: Connection, args: list[bytes]) -> bytes:
    z = _find(c, args[1])
    score = None if z is None else z.scores.get(args[2])
    return _nil(c) if score is None else double_reply(c, score)


@command("zmscore", -3, F_READONLY | F_FAST, (1, 1, 1), "sorted_set",
         "Get the score associated with the given members in a sorted set", "6.2.0")
def cmd_zmscore(c: Connection, args: list[bytes]) -> bytes:
    z = _find(c, args[1])
    scores = {} if z is None else z.scores
    out = []
    for m in args[2:]:
        s = scores.get(m)
        out.append(_nil(c) if s is None else double_reply(c, s))
    return array(out)


def _rank(c: Connection, args: list[bytes], reverse: bool) -> bytes:
    z = _find(c, args[1])
    score = None if z is None else z.scores.get(args[2])
    if z is None or score is None:
        return _nil(c)
    r = z.order.index((score, args[2]))
    return integer(len(z) - 1 - r if reverse else r)


@command("zrank", 3, F_READONLY | F_FAST, (1, 1, 1), "sorted_set",
         "Determine the index of a member in a sorted set", "2.0.0")
def cmd_zrank(c: Connection, args: list[bytes]) -> bytes:
    return _rank(c, args, False)


@command("zrevrank", 3, F_READONLY | F_FAST, (1, 1, 1), "sorted_set",
         "Determine the index of a member in a sorted set, with scores ordered from high to "
         "low", "2.0.0")
def cmd_zrevrank(c: Connection, args: list[bytes]) -> bytes:
    return _rank(c, args, True)


@command("zcount", 4, F_READONLY | F_FAST, (1, 1, 1), "sorted_set",
         "Count the members in a sorted set with scores within the given values", "2.0.0")
def cmd_zcount(c: Connection, args: list[bytes]) -> bytes:
    rng = ScoreRange(args[2], args[3])
    z = _find(c, args[1])
    if z is None:
        return ZERO
    start, stop = rng.span(z)
    return integer(stop - start)


@command("zlexcount", 4, F_READONLY | F_FAST, (1, 1, 1), "sorted_set",
         "Count the number of members in a sorted set between a given lexicographical range",
         "2.8.9")
def cmd_zlexcount(c: Connection, args: list[bytes]) -> bytes:
    rng = LexRange(args[2], args[3])
    z = _find(c, args[1])
    if z is None:
        return ZERO
    start, stop = rng.span(z)
    return integer(stop - start)


# -- ZADD, ZINCRBY, ZREM ---------------------------------------------------------------------


def _zadd(c: Connection, args: list[bytes], incr: bool) -> bytes:
    nx = xx = ch = gt = lt = False
    i = 2
    while i < len(args):
        o = args[i].lower()
        if o == b"nx":
            nx = True
        elif o == b"xx":
            xx = True
        elif o == b"ch":
            ch = True
        elif o == b"incr":
            incr = True
        elif o == b"gt":
            gt = True
        elif o == b"lt":
            lt = True
        else:
            break
        i += 1
    rest = args[i:]
    if not rest or len(rest) % 2:
        raise CommandError(SYNTAX)
    if nx and xx:
        raise CommandError("ERR XX and NX options at the same time are not compatible")
    if (gt and nx) or (lt and nx) or (gt and lt):
        raise CommandError("ERR GT, LT, and/or NX options at the same time are not compatible")
    if incr and len(rest) > 2:
        raise CommandError("ERR INCR option supports a single increment-element pair")
    pairs = [(parse_score(rest[j]), rest[j + 1]) for j in range(0, len(rest), 2)]
    added = updated = processed = 0
    score = 0.0
    with c.structures.edit(args[1], ZSetIndex) as e:
        z = cast(ZSetIndex, e.collection)
        staged: dict[bytes, float] = {}
        for score, member in pairs:
            current = staged.get(member)
            if current is None:
                current = z.scores.get(member)
            if current is not None:
                if nx:
                    continue
                if incr:
                    score += current
                    if score != score:
                        raise CommandError(NAN_RESULT)
                if (lt and score >= current) or (gt and score <= current):
                    continue
                processed += 1
                if score != current:
                    score += 0.0  # -0 is 0, as a listpack stores it
                    staged[member] = score
                    e.put(member, pack_score(score))
                    updated += 1
            elif not xx:
                score += 0.0
                staged[member] = score
                e.put(member, pack_score(score))
                added += 1
                processed += 1
    if added:
        blocking.signal_ready(c, args[1])
    # z is the live index now (a new set's is installed by the edit's commit)
    _note_size(c, z if len(z) else None, (m for _s, m in pairs))
    if incr:
        return double_reply(c, score) if processed else _nil(c)
    return integer(added + updated if ch else added)


@command("zadd", -4, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "sorted_set",
         "Add one or more members to a sorted set, or update its score if it already exists",
         "1.2.0")
def cmd_zadd(c: Connection, args: list[bytes]) -> bytes:
    return _zadd(c, args, False)


@command("zincrby", 4, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "sorted_set",
         "Increment the score of a member in a sorted set", "1.2.0")
def cmd_zincrby(c: Connection, args: list[bytes]) -> bytes:
    return _zadd(c, args, True)


@command("zrem", -3, F_WRITE | F_FAST, (1, 1, 1), "sorted_set",
         "Remove one or more members from a sorted set", "1.2.0")
def cmd_zrem(c: Connection, args: list[bytes]) -> bytes:
    return integer(c.structures.remove(args[1], ZSetIndex, args[2:]))


# -- ZRANGE and its variants ------------------------------------------------------------------

RANK, SCORE, LEX = "rank", "score", "lex"


def _range(c: Connection, args: list[bytes], at: int, store: bytes | None,
           kind: str | None, reverse: bool | None) -> bytes:
    """Redis's ``zrangeGenericCommand``: ``args[at]`` is the source key, then min, max and
    the options; ``kind`` and ``reverse`` None when the options may choose them (ZRANGE)."""
    withscores = limited = False
    offset, count = 0, -1
    j = at + 3
    while j < len(args):
        o = args[j].lower()
        left = len(args) - j - 1
        if store is None and o == b"withscores":
            withscores = True
        elif o == b"limit" and left >= 2:
            offset, count = to_int(args[j + 1]), to_int(args[j + 2])
            limited = True
            j += 2
        elif reverse is None and o == b"rev":
            reverse = True
        elif kind is None and o == b"bylex":
            kind = LEX
        elif kind is None and o == b"byscore":
            kind = SCORE
        else:
            raise CommandError(SYNTAX)
        j += 1
    kind = kind or RANK
    reverse = bool(reverse)
    if limited and kind == RANK:
        raise CommandError("ERR syntax error, LIMIT is only supported in combination with "
                           "either BYSCORE or BYLEX")
    if withscores and kind == LEX:
        raise CommandError("ERR syntax error, WITHSCORES not supported in combination with "
                           "BYLEX")
    lo, hi = args[at + 1], args[at + 2]
    if reverse and kind != RANK:
        lo, hi = hi, lo
    rng: ScoreRange | LexRange | None = None
    if kind == RANK:
        first, last = to_int(lo), to_int(hi)
    elif kind == SCORE:
        rng = ScoreRange(lo, hi)
    else:
        rng = LexRange(lo, hi)
    z = _find(c, args[at])
    pairs: list[tuple[float, bytes]] = []
    if z is not None:
        n = len(z)
        if rng is None:
            start, stop = rank_span(first, last, n)
            ranks = range(n - 1 - start, n - 1 - stop, -1) if reverse else range(start, stop)
        else:
            start, stop = rng.span(z, reverse)
            ranks = (range(0) if offset > 0 and offset >= n
                     else limit_ranks(start, stop, offset, count, reverse))
        order = z.order
        if not ranks:
            pairs = []
        elif ranks.step == 1:
            pairs = list(order.islice(ranks.start, ranks.stop))
        else:
            pairs = list(order.islice(ranks.stop + 1, ranks.start + 1, reverse=True))
    if store is not None:
        return _store(c, store, pairs)
    return pairs_reply(c, pairs, withscores)


def _store(c: Connection, dst: bytes, pairs: list[tuple[float, bytes]]) -> bytes:
    """Replace ``dst`` (whatever it holds) with a sorted set of ``pairs``; its length."""
    s = c.structures
    # -0 is stored as 0, as a listpack stores it (a weight of -1 on a score of 0 makes -0)
    ops, z = s.replace_ops(dst, ZSetIndex, ((m, pack_score(sc + 0.0)) for sc, m in pairs))
    if ops:
        s.write(ops)
    if z is None:
        s.forget(dst)
        return ZERO
    s.install(z)
    blocking.signal_ready(c, dst)
    _note_size(c, z)
    return integer(len(z))


@command("zrange", -4, F_READONLY, (1, 1, 1), "sorted_set",
         "Return a range of members in a sorted set", "1.2.0")
def cmd_zrange(c: Connection, args: list[bytes]) -> bytes:
    return _range(c, args, 1, None, None, None)


@command("zrangestore", -5, F_WRITE | F_DENYOOM, (1, 2, 1), "sorted_set",
         "Store a range of members from sorted set into another key", "6.2.0")
def cmd_zrangestore(c: Connection, args: list[bytes]) -> bytes:
    return _range(c, args, 2, args[1], None, None)


@command("zrevrange", -4, F_READONLY, (1, 1, 1), "sorted_set",
         "Return a range of members in a sorted set, by index, with scores ordered from high "
         "to low", "1.2.0")
def cmd_zrevrange(c: Connection, args: list[bytes]) -> bytes:
    return _range(c, args, 1, None, RANK, True)


@command("zrangebyscore", -4, F_READONLY, (1, 1, 1), "sorted_set",
         "Return a range of members in a sorted set, by score", "1.0.5")
def cmd_zrangebyscore(c: Connection, args: list[bytes]) -> bytes:
    return _range(c, args, 1, None, SCORE, False)


@command("zrevrangebyscore", -4, F_READONLY, (1, 1, 1), "sorted_set",
         "Return a range of members in a sorted set, by score, with scores ordered from high "
         "to low", "2.2.0")
def cmd_zrevrangebyscore(c: Connection, args: list[bytes]) -> bytes:
    return _range(c, args, 1, None, SCORE, True)


@command("zrangebylex", -4, F_READONLY, (1, 1, 1), "sorted_set",
         "Return a range of members in a sorted set, by lexicographical range", "2.8.9")
def cmd_zrangebylex(c: Connection, args: list[bytes]) -> bytes:
    return _range(c, args, 1, None, LEX, False)


@command("zrevrangebylex", -4, F_READONLY, (1, 1, 1), "sorted_set",
         "Return a range of members in a sorted set, by lexicographical range, ordered from "
         "higher to lower strings.", "2.8.9")
def cmd_zrevrangebylex(c: Connection, args: list[bytes]) -> bytes:
    return _range(c, args, 1, None, LEX, True)


def _remrange(c: Connection, args: list[bytes], kind: str) -> bytes:
    rng: ScoreRange | LexRange | None = None
    if kind == RANK:
        first, last = to_int(args[2]), to_int(args[3])
    elif kind == SCORE:
        rng = ScoreRange(args[2], args[3])
    else:
        rng = LexRange(args[2], args[3])
    z = _find(c, args[1])
    if z is None:
        return ZERO
    start, stop = rank_span(first, last, len(z)) if rng is None else rng.span(z)
    if start >= stop:
        return ZERO
    with c.structures.edit(args[1], ZSetIndex) as e:
        for _s, m in z.order.islice(start, stop):
            e.delete(m)
    return integer(stop - start)


@command("zremrangebyrank", 4, F_WRITE, (1, 1, 1), "sorted_set",
         "Remove all members in a sorted set within the given indexes", "2.0.0")
def cmd_zremrangebyrank(c: Connection, args: list[bytes]) -> bytes:
    return _remrange(c, args, RANK)


@command("zremrangebyscore", 4, F_WRITE, (1, 1, 1), "sorted_set",
         "Remove all members in a sorted set within the given scores", "1.2.0")
def cmd_zremrangebyscore(c: Connection, args: list[bytes]) -> bytes:
    return _remrange(c, args, SCORE)


@command("zremrangebylex", 4, F_WRITE, (1, 1, 1), "sorted_set",
         "Remove all members in a sorted set between the given lexicographical range",
         "2.8.9")
def cmd_zremrangebylex(c: Connection, args: list[bytes]) -> bytes:
    return _remrange(c, args, LEX)


# -- popping ------------------------------------------------------------------------------------


def pop(c: Connection, key: bytes, z: ZSetIndex, count: int, top: bool
        ) -> list[tuple[float, bytes]]:
    """Remove and return up to ``count`` members of ``z`` from the lowest (or the highest
    with ``top``) score, in one batch."""
    n = min(count, len(z))
    if top:
        taken = list(z.order.islice(len(z) - n, len(z), reverse=True))
    else:
        taken = list(z.order.islice(0, n))
    with c.structures.edit(key, ZSetIndex) as e:
        for _s, m in taken:
            e.delete(m)
    return taken


def _flat_pairs(c: Connection, pairs: list[tuple[float, bytes]], nested: bool) -> list[bytes]:
    if nested:
        return [b"*2\r\n" + bulk(m) + double_reply(c, s) for s, m in pairs]
    return [part for s, m in pairs for part in (bulk(m), double_reply(c, s))]


def _zpop(c: Connection, args: list[bytes], top: bool) -> bytes:
    if len(args) > 3:
        raise CommandError(SYNTAX)
    count = -1
    if len(args) == 3:
        count = _range_long(args[2], 0, LONG_MAX, "ERR value is out of range, must be positive")
    z = _find(c, args[1])
    if z is None or count == 0:
        return EMPTY_ARRAY
    taken = pop(c, args[1], z, 1 if count == -1 else count, top)
    return array(_flat_pairs(c, taken, c.resp3 and count != -1))


@command("zpopmin", -2, F_WRITE | F_FAST, (1, 1, 1), "sorted_set",
         "Remove and return members with the lowest scores in a sorted set", "5.0.0")
def cmd_zpopmin(c: Connection, args: list[bytes]) -> bytes:
    return _zpop(c, args, False)


@command("zpopmax", -2, F_WRITE | F_FAST, (1, 1, 1), "sorted_set",
         "Remove and return members with the highest scores in a sorted set", "5.0.0")
def cmd_zpopmax(c: Connection, args: list[bytes]) -> bytes:
    return _zpop(c, args, True)


def _range_long(arg: bytes, lo: int, hi: int, message: str) -> int:
    """Redis's ``getRangeLongFromObjectOrReply`` with a message: for any bad value."""
    n = to_int(arg, message)
    if n < lo or n > hi:
        raise CommandError(message)
    return n


def parse_mpop(args: list[bytes], at: int) -> tuple[list[bytes], bool, int]:
    """ZMPOP's (and BZMPOP's) keys, whether MAX, and COUNT; ``args[at]`` is numkeys."""
    numkeys = _range_long(args[at], 1, LONG_MAX, "ERR numkeys should be greater than 0")
    where = at + numkeys + 1
    if where >= len(args):
        raise CommandError(SYNTAX)
    side = args[where].lower()
    if side not in (b"min", b"max"):
        raise CommandError(SYNTAX)
    count = -1
    j = where + 1
    while j < len(args):
        if count == -1 and args[j].lower() == b"count" and j + 1 < len(args):
            count = _range_long(args[j + 1], 1, LONG_MAX, "ERR count should be greater than 0")
            j += 2
        else:
            raise CommandError(SYNTAX)
    return args[at + 1:where], side == b"max", max(count, 1)


def mpop_reply(c: Connection, key: bytes, taken: list[tuple[float, bytes]]) -> bytes:
    return array([bulk(key), array(_flat_pairs(c, taken, True))])


@command("zmpop", -4, F_WRITE, (0, 0, 0), "sorted_set",
         "Remove and return members with scores in a sorted set", "7.0.0")
def cmd_zmpop(c: Connection, args: list[bytes]) -> bytes:
    keys, top, count = parse_mpop(args, 1)
    for key in keys:
        z = _find(c, key)
        if z is not None:
            return mpop_reply(c, key, pop(c, key, z, count, top))
    return _nil_array(c)


# -- blocking pops ----------------------------------------------------------------------------


def _bzpop(c: Connection, args: list[bytes], top: bool) -> Any:
    timeout = blocking.timeout_ms(args[-1])

    def attempt(key: bytes) -> bytes | None:
        z = _find(c, key)
        if z is None:
            return None
        (score, member), = pop(c, key, z, 1, top)
        return array([bulk(key), bulk(member), double_reply(c, score)])

    return blocking.answer_or_block(ZSetIndex, c, args[1:-1], attempt, timeout,
                                    _nil_array(c))


@command("bzpopmin", -3, F_WRITE | F_ASYNC, (1, -2, 1), "sorted_set",
         "Remove and return the member with the lowest score from one or more sorted sets, "
         "or block until one is available", "5.0.0")
def cmd_bzpopmin(c: Connection, args: list[bytes]) -> Any:
    return _bzpop(c, args, False)


@command("bzpopmax", -3, F_WRITE | F_ASYNC, (1, -2, 1), "sorted_set",
         "Remove and return the member with the highest score from one or more sorted sets, "
         "or block until one is available", "5.0.0")
def cmd_bzpopmax(c: Connection, args: list[bytes]) -> Any:
    return _bzpop(c, args, True)


@command("bzmpop", -5, F_WRITE | F_ASYNC, (0, 0, 0), "sorted_set",
         "Remove and return members with scores in a sorted set or block until one is "
         "available", "7.0.0")
def cmd_bzmpop(c: Connection, args: list[bytes]) -> Any:
    keys, top, count = parse_mpop(args, 2)
    timeout = blocking.timeout_ms(args[1])

    def attempt(key: bytes) -> bytes | None:
        z = _find(c, key)
        if z is None:
            return None
        return mpop_reply(c, key, pop(c, key, z, count, top))

    return blocking.answer_or_block(ZSetIndex, c, keys, attempt, timeout, _nil_array(c))


# -- ZRANDMEMBER --------------------------------------------------------------------------------


@command("zrandmember", -2, F_READONLY, (1, 1, 1), "sorted_set",
         "Get one or multiple random elements from a sorted set", "6.2.0")
def cmd_zrandmember(c: Connection, args: list[bytes]) -> bytes:
    if len(args) == 2:
        z = _find(c, args[1])
        if z is None:
            return _nil(c)
        return bulk(z.order[random.randrange(len(z))][1])
    range_error = (f"ERR value is out of range, value must between {-LONG_MAX} and "
                   f"{LONG_MAX}")
    count = to_int(args[2])
    if count < -LONG_MAX:
        raise CommandError(range_error)
    withscores = False
    if len(args) > 4 or (len(args) == 4 and args[3].lower() != b"withscores"):
        raise CommandError(SYNTAX)
    if len(args) == 4:
        withscores = True
        if count < -LONG_MAX // 2 or count > LONG_MAX // 2:
            raise CommandError("ERR value is out of range")
    z = _find(c, args[1])
    if z is None or count == 0:
        return EMPTY_ARRAY
    order, n = z.order, len(z)
    if count < 0:
        if -count > RANDOM_REPEAT_MAX:
            raise CommandError(f"ERR bitkv answers at most {RANDOM_REPEAT_MAX} members with "
                               "repetitions (a negative count)")
        pairs = [order[random.randrange(n)] for _ in range(-count)]
    elif count >= n:
        pairs = list(order)
        random.shuffle(pairs)
    else:
        pairs = [order[r] for r in random.sample(range(n), count)]
    return pairs_reply(c, pairs, withscores)


# -- union, intersection, difference ------------------------------------------------------------


def _sources(c: Connection, keys: list[bytes]) -> list[dict[bytes, float]]:
    """Each key's members and scores: a sorted set's scores, a set's members with score 1,
    nothing for a missing key; WRONGTYPE for anything else."""
    out: list[dict[bytes, float]] = []
    for key in keys:
        coll = c.structures.collection(key)
        if coll is None:
            if c.structures.type_name(key) != "none":
                raise WrongTypeError()  # a string
            out.append({})
        elif isinstance(coll, ZSetIndex):
            out.append(coll.scores)
        elif isinstance(coll, SetIndex):
            out.append(dict.fromkeys(coll.members, 1.0))
        else:
            raise WrongTypeError()
    return out


def _aggregate(total: float, value: float, how: bytes) -> float:
    if how == b"sum":
        total += value
        return 0.0 if total != total else total  # inf + -inf: Redis's convention is 0
    if how == b"min":
        return value if value < total else total
    return value if value > total else total


def _setop(c: Connection, args: list[bytes], at: int, op: str, store: bytes | None,
           card_only: bool = False) -> bytes:
    """Redis's ``zunionInterDiffGenericCommand``: ``args[at]`` is numkeys."""
    name = args[0].decode("utf-8", "replace").lower()
    setnum = to_int(args[at])
    if setnum < 1:
        raise CommandError(f"ERR at least 1 input key is needed for '{name}' command")
    if setnum > len(args) - at - 1:
        raise CommandError(SYNTAX)
    keys = args[at + 1:at + 1 + setnum]
    sources = _sources(c, keys)
    weights = [1.0] * setnum
    how = b"sum"
    withscores = False
    limit = 0
    j = at + 1 + setnum
    while j < len(args):
        o = args[j].lower()
        left = len(args) - j
        if op != "diff" and not card_only and left >= setnum + 1 and o == b"weights":
            weights = [parse_score(a, "ERR weight value is not a float")
                       for a in args[j + 1:j + 1 + setnum]]
            j += setnum + 1
        elif op != "diff" and not card_only and left >= 2 and o == b"aggregate":
            how = args[j + 1].lower()
            if how not in (b"sum", b"min", b"max"):
                raise CommandError(SYNTAX)
            j += 2
        elif store is None and not card_only and o == b"withscores":
            withscores = True
            j += 1
        elif card_only and left >= 2 and o == b"limit":
            limit = to_int(args[j + 1], "ERR LIMIT can't be negative")
            if limit < 0:
                raise CommandError("ERR LIMIT can't be negative")
            j += 2
        else:
            raise CommandError(SYNTAX)
    result: dict[bytes, float] = {}
    if op == "inter":
        ranked = sorted(zip(sources, weights, strict=True), key=lambda sw: len(sw[0]))
        (first, w0), others = ranked[0], ranked[1:]
        for m, s in first.items():
            score = w0 * s
            if score != score:
                score = 0.0
            for src, w in others:
                v = src.get(m)
                if v is None:
                    break
                score = _aggregate(score, v * w, how)
            else:
                result[m] = score
                if card_only and limit and len(result) >= limit:
                    break
        if card_only:
            return integer(len(result))
    elif op == "union":
        for src, w in zip(sources, weights, strict=True):
            for m, s in src.items():
                score = w * s
                if score != score:
                    score = 0.0
                old = result.get(m)
                result[m] = score if old is None else _aggregate(old, score, how)
    else:
        first_src, rest = sources[0], sources[1:]
        result = {m: s for m, s in first_src.items() if not any(m in o for o in rest)}
    pairs = sorted((s, m) for m, s in result.items())
    if store is not None:
        return _store(c, store, pairs)
    return pairs_reply(c, pairs, withscores)


@command("zunion", -3, F_READONLY, (0, 0, 0), "sorted_set",
         "Add multiple sorted sets", "6.2.0")
def cmd_zunion(c: Connection, args: list[bytes]) -> bytes:
    return _setop(c, args, 1, "union", None)


@command("zinter", -3, F_READONLY, (0, 0, 0), "sorted_set",
         "Intersect multiple sorted sets", "6.2.0")
def cmd_zinter(c: Connection, args: list[bytes]) -> bytes:
    return _setop(c, args, 1, "inter", None)


@command("zdiff", -3, F_READONLY, (0, 0, 0), "sorted_set",
         "Subtract multiple sorted sets", "6.2.0")
def cmd_zdiff(c: Connection, args: list[bytes]) -> bytes:
    return _setop(c, args, 1, "diff", None)


@command("zunionstore", -4, F_WRITE | F_DENYOOM, (1, 1, 1), "sorted_set",
         "Add multiple sorted sets and store the resulting sorted set in a new key", "2.0.0")
def cmd_zunionstore(c: Connection, args: list[bytes]) -> bytes:
    return _setop(c, args, 2, "union", args[1])


@command("zinterstore", -4, F_WRITE | F_DENYOOM, (1, 1, 1), "sorted_set",
         "Intersect multiple sorted sets and store the resulting sorted set in a new key",
         "2.0.0")
def cmd_zinterstore(c: Connection, args: list[bytes]) -> bytes:
    return _setop(c, args, 2, "inter", args[1])


@command("zdiffstore", -4, F_WRITE | F_DENYOOM, (1, 1, 1), "sorted_set",
         "Subtract multiple sorted sets and store the resulting sorted set in a new key",
         "6.2.0")
def cmd_zdiffstore(c: Connection, args: list[bytes]) -> bytes:
    return _setop(c, args, 2, "diff", args[1])


@command("zintercard", -3, F_READONLY, (0, 0, 0), "sorted_set",
         "Intersect multiple sorted sets and return the cardinality of the result", "7.0.0")
def cmd_zintercard(c: Connection, args: list[bytes]) -> bytes:
    return _setop(c, args, 1, "inter", None, card_only=True)


# -- ZSCAN -----------------------------------------------------------------------------------


SCAN_BUCKETS = 0x10000  # ZSCAN's cursor is a bucket number: crc32(member) % SCAN_BUCKETS


class ScanBuckets:
    """A sorted set's members grouped by ``crc32(member) % SCAN_BUCKETS``, the buckets the
    cursor walks in ascending order. A member's bucket never changes, so a cursor keeps its
    meaning when this is rebuilt (at every cursor 0): every member present for the whole scan
    is returned, as Redis guarantees, possibly twice if the set changes meanwhile."""

    __slots__ = ("buckets", "numbers")

    def __init__(self, members: Iterable[bytes]) -> None:
        buckets: dict[int, list[bytes]] = {}
        for m in members:
            buckets.setdefault(crc32(m) % SCAN_BUCKETS, []).append(m)
        self.buckets = buckets
        self.numbers = sorted(buckets)

    def step(self, cursor: int, count: int) -> tuple[list[bytes], int]:
        """The members of the buckets from ``cursor`` on, until at least ``count``; and the
        next cursor (0: done)."""
        numbers = self.numbers
        i = bisect_left(numbers, cursor)
        out: list[bytes] = []
        while i < len(numbers) and len(out) < count:
            out.extend(self.buckets[numbers[i]])
            i += 1
        return out, (numbers[i] if i < len(numbers) else 0)


@command("zscan", -3, F_READONLY, (1, 1, 1), "sorted_set",
         "Incrementally iterate sorted sets elements and associated scores", "2.8.0")
def cmd_zscan(c: Connection, args: list[bytes]) -> bytes:
    """A set of listpack size is answered whole with cursor 0, as Redis does; a bigger one
    through :class:`ScanBuckets`."""
    cursor_arg = args[2]
    if not cursor_arg.isdigit() or len(cursor_arg) > 20 or int(cursor_arg) >= 2**64:
        raise CommandError("ERR invalid cursor")
    cursor = int(cursor_arg)
    match, count, _type = parse_scan_options(args, 3)
    z = _find(c, args[1])
    if z is None:
        return b"*2\r\n$1\r\n0\r\n*0\r\n"
    scores = z.scores
    if not z.converted and not _too_big(z, tuning.values(c.control)):
        members, nxt = [m for _s, m in z.order], 0
    else:
        index = z.scan_buckets
        if cursor == 0 or not isinstance(index, ScanBuckets):
            index = z.scan_buckets = ScanBuckets(scores)
        members, nxt = index.step(cursor, count)
    if match is not None:
        members = [m for m in members if match(m)]
    items: list[bytes] = []
    for m in members:
        score = scores.get(m)
        if score is not None:  # removed since the buckets were built
            items += (bulk(m), bulk(format_score(score)))
    return array([bulk(str(nxt).encode()), b"*%d\r\n" % len(items) + b"".join(items)])
