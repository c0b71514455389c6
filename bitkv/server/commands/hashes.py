"""Hash commands: HSET, HGET, HDEL, HINCRBY, HRANDFIELD, HSCAN... (Redis 7.0, t_hash.c).

A hash is a collection of :mod:`bitkv.structures`: the field names in memory (insertion
order, the order HGETALL answers in), each value in its own record on disk. A command's
changes are one :meth:`~bitkv.structures.Structures.edit` (one atomic batch): HSET of n
fields writes n records, plus the header when it creates the hash; HDEL writes a tombstone a
field, plus the header's when the hash ends up empty (the key is then gone, as in Redis).

``OBJECT ENCODING`` says ``listpack`` while the hash has at most ``hash-max-listpack-entries``
fields and no field or value longer than ``hash-max-listpack-value`` bytes, ``hashtable``
after that (sticky while the server runs). A value's length is known when it is written, not
at load: after a restart a small hash with a long value answers ``listpack`` until written.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, cast

from ...structures import Collection, HashIndex
from ..protocol import (
    EMPTY_ARRAY,
    INT64_MAX,
    INT64_MIN,
    OK,
    ONE,
    ZERO,
    array,
    bulk,
    bulk_array,
    integer,
    map_reply,
    parse_ll,
)
from . import tuning
from .elementscan import parse_scan, scan_step
from .encodings import encoding_of, rule, tuning_int
from .registry import (
    F_DENYOOM,
    F_FAST,
    F_READONLY,
    F_WRITE,
    SYNTAX,
    CommandError,
    arity_error,
    command,
    to_int,
)
from .stringmath import add_floats, parse_float

if TYPE_CHECKING:
    from ..app import Connection

LONG_MAX = INT64_MAX
# HRANDFIELD with a negative count answers -count fields, repeats allowed: Redis streams
# any number; bitkv builds the reply in memory, so it refuses more than this many.
MAX_RANDOM_REPLY = 10_000_000


@rule(HashIndex)
def _hash_encoding(coll: Collection, values: dict[str, str]) -> str:
    h = cast(HashIndex, coll)
    if not h.converted:
        max_value = tuning_int(values, "hash-max-listpack-value")
        if (len(h) > tuning_int(values, "hash-max-listpack-entries")
                or any(len(f) > max_value for f in h.fields)):
            h.converted = True
    return "hashtable" if h.converted else "listpack"


def _note_sizes(c: Connection, h: HashIndex, longest: int) -> None:
    """Convert ``h`` to ``hashtable`` (sticky) if a write made it big: more fields than
    the limit, or a field or value of ``longest`` bytes over the value limit."""
    if h.converted:
        return
    values = tuning.values(c.control)
    if longest > tuning_int(values, "hash-max-listpack-value") or \
            len(h) > tuning_int(values, "hash-max-listpack-entries"):
        h.converted = True


def _is_small(c: Connection, h: HashIndex) -> bool:
    return encoding_of(c.control, h) == "listpack"


def _hset(c: Connection, args: list[bytes]) -> int:
    """Set the field/value pairs of ``args[2:]``; how many fields are new."""
    with c.structures.edit(args[1], HashIndex) as e:
        h = cast(HashIndex, e.collection)
        fields = h.fields
        if len(args) == 4:  # one pair, the common case: no set of new fields to build
            e.put(args[2], args[3])
            created = 0 if args[2] in fields else 1
        else:
            new: set[bytes] = set()
            for i in range(2, len(args), 2):
                f = args[i]
                e.put(f, args[i + 1])
                if f not in fields:
                    new.add(f)
            created = len(new)
    # After the commit the edit's collection is the indexed one (HSET never empties it).
    if not h.converted:
        _note_sizes(c, h, max(map(len, args[2:])))
    return created


@command("hset", -4, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "hash",
         "Set the string value of a hash field", "2.0.0")
def cmd_hset(c: Connection, args: list[bytes]) -> bytes:
    if len(args) % 2:
        return arity_error("hset")
    return integer(_hset(c, args))


@command("hmset", -4, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "hash",
         "Set multiple hash fields to multiple values", "2.0.0")
def cmd_hmset(c: Connection, args: list[bytes]) -> bytes:
    if len(args) % 2:
        return arity_error("hmset")
    _hset(c, args)
    return OK


@command("hsetnx", 4, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "hash",
         "Set the value of a hash field, only if the field does not exist", "2.0.0")
def cmd_hsetnx(c: Connection, args: list[bytes]) -> bytes:
    h = c.structures.find(args[1], HashIndex)
    if h is not None and args[2] in h.fields:
        return ZERO
    _hset(c, args)
    return ONE


@command("hget", 3, F_READONLY | F_FAST, (1, 1, 1), "hash",
         "Get the value of a hash field", "2.0.0")
def cmd_hget(c: Connection, args: list[bytes]) -> bytes:
    h = c.structures.find(args[1], HashIndex)
    if h is None or args[2] not in h.fields:
        return c.null
    v = c.structures.read(h, args[2])
    return c.null if v is None else bulk(v)


@command("hmget", -3, F_READONLY | F_FAST, (1, 1, 1), "hash",
         "Get the values of all the given hash fields", "2.0.0")
def cmd_hmget(c: Connection, args: list[bytes]) -> bytes:
    h = c.structures.find(args[1], HashIndex)
    null = c.null
    if h is None:
        return b"*%d\r\n" % (len(args) - 2) + null * (len(args) - 2)
    fields = h.fields
    read = c.structures.read
    parts = [b"*%d\r\n" % (len(args) - 2)]
    for f in args[2:]:
        v = read(h, f) if f in fields else None
        parts.append(null if v is None else bulk(v))
    return b"".join(parts)


@command("hdel", -3, F_WRITE | F_FAST, (1, 1, 1), "hash",
         "Delete one or more hash fields", "2.0.0")
def cmd_hdel(c: Connection, args: list[bytes]) -> bytes:
    return integer(c.structures.remove(args[1], HashIndex, args[2:]))


@command("hlen", 2, F_READONLY | F_FAST, (1, 1, 1), "hash",
         "Get the number of fields in a hash", "2.0.0")
def cmd_hlen(c: Connection, args: list[bytes]) -> bytes:
    h = c.structures.find(args[1], HashIndex)
    return ZERO if h is None else integer(len(h))


@command("hstrlen", 3, F_READONLY | F_FAST, (1, 1, 1), "hash",
         "Get the length of the value of a hash field", "3.2.0")
def cmd_hstrlen(c: Connection, args: list[bytes]) -> bytes:
    h = c.structures.find(args[1], HashIndex)
    if h is None or args[2] not in h.fields:
        return ZERO
    v = c.structures.read(h, args[2])
    return ZERO if v is None else integer(len(v))


@command("hexists", 3, F_READONLY | F_FAST, (1, 1, 1), "hash",
         "Determine if a hash field exists", "2.0.0")
def cmd_hexists(c: Connection, args: list[bytes]) -> bytes:
    h = c.structures.find(args[1], HashIndex)
    return ONE if h is not None and args[2] in h.fields else ZERO


def _values(c: Connection, h: HashIndex, fields: list[bytes]) -> list[bytes]:
    # A value the store no longer has (it cannot happen while the index is current) reads
    # as empty rather than shortening the reply.
    return [v if v is not None else b"" for v in c.structures.read_many(h, fields)]


@command("hkeys", 2, F_READONLY, (1, 1, 1), "hash", "Get all the fields in a hash", "2.0.0")
def cmd_hkeys(c: Connection, args: list[bytes]) -> bytes:
    h = c.structures.find(args[1], HashIndex)
    return EMPTY_ARRAY if h is None else bulk_array(list(h.fields))


@command("hvals", 2, F_READONLY, (1, 1, 1), "hash", "Get all the values in a hash", "2.0.0")
def cmd_hvals(c: Connection, args: list[bytes]) -> bytes:
    h = c.structures.find(args[1], HashIndex)
    return EMPTY_ARRAY if h is None else bulk_array(_values(c, h, list(h.fields)))


def _pairs_reply(c: Connection, fields: list[bytes], values: list[bytes]) -> bytes:
    return map_reply([(bulk(f), bulk(v)) for f, v in zip(fields, values, strict=True)], c.resp3)


@command("hgetall", 2, F_READONLY, (1, 1, 1), "hash",
         "Get all the fields and values in a hash", "2.0.0")
def cmd_hgetall(c: Connection, args: list[bytes]) -> bytes:
    h = c.structures.find(args[1], HashIndex)
    if h is None:
        return map_reply([], c.resp3)
    fields = list(h.fields)
    return _pairs_reply(c, fields, _values(c, h, fields))


@command("hincrby", 4, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "hash",
         "Increment the integer value of a hash field by the given number", "2.0.0")
def cmd_hincrby(c: Connection, args: list[bytes]) -> bytes:
    incr = to_int(args[3])
    key, field = args[1], args[2]
    with c.structures.edit(key, HashIndex) as e:
        h = cast(HashIndex, e.collection)
        old = c.structures.read(h, field) if field in h.fields else None
        value = 0
        if old is not None:
            parsed = parse_ll(old)
            if parsed is None:
                raise CommandError("ERR hash value is not an integer")
            value = parsed
        if (incr < 0 and value < 0 and incr < INT64_MIN - value) or \
                (incr > 0 and value > 0 and incr > INT64_MAX - value):
            raise CommandError("ERR increment or decrement would overflow")
        value += incr
        new = b"%d" % value
        e.put(field, new)
    _after_write(c, key, len(field), len(new))
    return integer(value)


def _after_write(c: Connection, key: bytes, *lengths: int) -> None:
    h = c.structures.find(key, HashIndex)
    if h is not None:
        _note_sizes(c, h, max(lengths))


@command("hincrbyfloat", 4, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "hash",
         "Increment the float value of a hash field by the given amount", "2.6.0")
def cmd_hincrbyfloat(c: Connection, args: list[bytes]) -> bytes:
    incr = parse_float(args[3])
    if incr.is_infinite():
        raise CommandError("ERR value is NaN or Infinity")
    key, field = args[1], args[2]
    with c.structures.edit(key, HashIndex) as e:
        h = cast(HashIndex, e.collection)
        old = c.structures.read(h, field) if field in h.fields else None
        if old is None:
            new = add_floats(parse_float(b"0"), incr)
        else:
            try:
                value = parse_float(old)
            except CommandError:
                raise CommandError("ERR hash value is not a float") from None
            new = add_floats(value, incr)
        e.put(field, new)
    _after_write(c, key, len(field), len(new))
    return bulk(new)


def random_count(arg: bytes) -> int:
    """HRANDFIELD's and SRANDMEMBER's count: an int in [-LONG_MAX, LONG_MAX]."""
    n = to_int(arg)
    if n < -LONG_MAX:
        raise CommandError(f"ERR value is out of range, value must between {-LONG_MAX} and "
                           f"{LONG_MAX}")
    return n


def check_random_reply(count: int) -> None:
    """Refuse a reply of ``count`` elements too big to build (see MAX_RANDOM_REPLY)."""
    if count > MAX_RANDOM_REPLY:
        raise CommandError(f"ERR count is too large: bitkv answers at most "
                           f"{MAX_RANDOM_REPLY} random elements at once")


@command("hrandfield", -2, F_READONLY, (1, 1, 1), "hash",
         "Get one or multiple random fields from a hash", "6.2.0")
def cmd_hrandfield(c: Connection, args: list[bytes]) -> bytes:
    if len(args) == 2:
        h = c.structures.find(args[1], HashIndex)
        if h is None:
            return c.null
        return bulk(_random_fields(h, 1)[0])
    count = random_count(args[2])
    withvalues = False
    if len(args) > 4 or (len(args) == 4 and args[3].lower() != b"withvalues"):
        raise CommandError(SYNTAX)
    if len(args) == 4:
        withvalues = True
        if count < -LONG_MAX // 2 or count > LONG_MAX // 2:
            raise CommandError("ERR value is out of range")
    h = c.structures.find(args[1], HashIndex)
    if h is None or count == 0:
        return EMPTY_ARRAY
    if count > 0:
        fields = list(h.fields) if count >= len(h) else random.sample(list(h.fields), count)
    else:
        check_random_reply(-count)
        fields = _random_fields(h, -count)
    if not withvalues:
        return bulk_array(fields)
    values = _values(c, h, list(dict.fromkeys(fields)))
    by_field = dict(zip(dict.fromkeys(fields), values, strict=True))
    if c.resp3:
        return array([b"*2\r\n" + bulk(f) + bulk(by_field[f]) for f in fields])
    return bulk_array([x for f in fields for x in (f, by_field[f])])


def _random_fields(h: HashIndex, n: int) -> list[bytes]:
    """``n`` fields drawn with repetition. O(len(h)): a hash keeps no random access (a
    set does, see SetIndex)."""
    return random.choices(list(h.fields), k=n)


@command("hscan", -3, F_READONLY, (1, 1, 1), "hash",
         "Incrementally iterate hash fields and associated values", "2.8.0")
def cmd_hscan(c: Connection, args: list[bytes]) -> bytes:
    cursor, match, count = parse_scan(args)
    h = c.structures.find(args[1], HashIndex)
    if h is None:
        return b"*2\r\n$1\r\n0\r\n*0\r\n"
    next_cursor, fields = scan_step(h, cursor, count, _is_small(c, h))
    if match is not None:
        fields = [f for f in fields if match(f)]
    values = _values(c, h, fields)
    flat = [x for f, v in zip(fields, values, strict=True) for x in (f, v)]
    return b"*2\r\n" + bulk(b"%d" % next_cursor) + bulk_array(flat)
