"""String commands: GET, SET and its variants, GETEX, GETRANGE, MGET, MSET, APPEND, INCR...

Commands that make several Store calls (SET ... GET, APPEND, MSETNX, INCR's error path) are
atomic with respect to every other client because handlers run one at a time on the event
loop thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import Store
from ...errors import NotAnIntegerError
from ...record import MAX_VALUE_SIZE
from ...structures import WrongTypeError
from ...structures.space import Op
from ..protocol import INT64_MAX, INT64_MIN, OK, ONE, ZERO, bulk, integer, parse_ll
from .registry import (
    F_DENYOOM,
    F_FAST,
    F_READONLY,
    F_WRITE,
    NOT_INT,
    SYNTAX,
    CommandError,
    arity_error,
    command,
    key_exists,
    time_ms,
    to_int,
)

if TYPE_CHECKING:
    from ..app import Connection


@command("get", 2, F_READONLY | F_FAST, (1, 1, 1), "string", "Get the value of a key")
def cmd_get(c: Connection, args: list[bytes]) -> bytes:
    v = _read(c, args[1])
    if v is None:
        return c.null
    return b"$%d\r\n%b\r\n" % (len(v), v)


def _expire_at_ms(unit: bytes, arg: bytes, name: str, now_ms: int) -> int:
    """Absolute expiry in ms for EX/PX/EXAT/PXAT ``arg``, validated like Redis."""
    n = to_int(arg)
    if n <= 0 or (unit in (b"EX", b"EXAT") and n > INT64_MAX // 1000):
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    if unit in (b"EX", b"EXAT"):
        n *= 1000
    if unit in (b"EX", b"PX"):
        if n > INT64_MAX - now_ms:
            raise CommandError(f"ERR invalid expire time in '{name}' command")
        n += now_ms
    return n


_EXPIRE_UNITS = (b"EX", b"PX", b"EXAT", b"PXAT")


def _parse_set_options(opts: list[bytes], name: str, now_ms: int
                       ) -> tuple[bool, bool, bool, bool, int]:
    """(nx, xx, get, keepttl, expire_at_ms or 0) from SET's options."""
    nx = xx = get = keepttl = False
    unit = arg = None
    i, n = 0, len(opts)
    while i < n:
        o = opts[i].upper()
        if o == b"NX" and not xx:
            nx = True
        elif o == b"XX" and not nx:
            xx = True
        elif o == b"GET":
            get = True
        elif o == b"KEEPTTL" and unit is None:
            keepttl = True
        elif o in _EXPIRE_UNITS and unit is None and not keepttl and i + 1 < n:
            unit, arg = o, opts[i + 1]
            i += 1
        else:
            raise CommandError(SYNTAX)
        i += 1
    at_ms = 0
    if unit is not None:
        assert arg is not None
        at_ms = _expire_at_ms(unit, arg, name, now_ms)
    return nx, xx, get, keepttl, at_ms


@command("set", -3, F_WRITE | F_DENYOOM, (1, 1, 1), "string", "Set the string value of a key")
def cmd_set(c: Connection, args: list[bytes]) -> bytes:
    if len(args) == 3 and not (c.structures and args[1] in c.structures.names):
        c.db.put(args[1], args[2])
        return OK
    now_ms = time_ms()
    nx, xx, get, keepttl, at_ms = _parse_set_options(args[3:], "set", now_ms)
    return _set(c, args[1], args[2], nx, xx, get, keepttl, at_ms, now_ms, "set")


def _set(c: Connection, key: bytes, value: bytes, nx: bool, xx: bool, get: bool,
         keepttl: bool, at_ms: int, now_ms: int, name: str) -> bytes:
    # The expiry is written as the absolute time it names (exact to the ms, whatever the
    # clock does meanwhile); a time in the past writes the key already expired, which is
    # what a replica must do with a master's ``SET ... PXAT`` when its clock is ahead.
    db = c.db
    old = _read(c, key) if get else None
    expires_at = at_ms or None
    structures = c.structures
    if structures and key in structures:
        # SET over a collection replaces it: the collection's records go in the same batch
        # as the string (GET has already refused with WRONGTYPE).
        if nx:
            return c.null
        if keepttl:
            expires_at = structures.names[key].expire_ms or None
        structures.write([*structures.delete_ops(key), (key, value, expires_at)])
        structures.forget(key)
        return OK
    written = db.put(key, value, if_absent=nx, if_present=xx, keep_ttl=keepttl,
                     expires_at_ms=expires_at)
    if get:
        return bulk(old) if old is not None else c.null
    return OK if written else c.null


def _get(db: Store, key: bytes) -> bytes | None:
    try:
        return db.get(key)
    except ValueError:
        return None


def _read(c: Connection, key: bytes) -> bytes | None:
    """A read of a key's value, counted in INFO's keyspace_hits or keyspace_misses (the
    commands Redis counts so: GET, MGET, GETEX, GETDEL, GETSET, SET ... GET, GETRANGE,
    STRLEN). The server's inlined GET counts its own (app.py). Raises WrongTypeError
    for a collection's name."""
    v = _get(c.db, key)
    if v is None and c.structures and key in c.structures:
        raise WrongTypeError()
    return _counted(c, v)


def live_collections(c: Connection, keys: list[bytes]) -> list[bytes]:
    """Those of ``keys`` that name a live collection (none, at the cost of one truth test,
    while the server has no collections)."""
    structures = c.structures
    names = structures.names
    if not names:
        return []
    return [k for k in keys if k in names and k in structures]


def replace_collections(c: Connection, collections: list[bytes], writes: list[Op]) -> None:
    """Delete ``collections`` and write ``writes`` (string records) as one batch: a string
    command that overwrites a key replaces whatever it held, as Redis's setKey does."""
    structures = c.structures
    ops: list[Op] = []
    for key in collections:
        ops += structures.delete_ops(key)
    structures.write(ops + writes)
    for key in collections:
        structures.forget(key)


def _counted(c: Connection, v: bytes | None) -> bytes | None:
    """``v``, a value read (None: missing), counted as a keyspace hit or miss."""
    metrics = c.control.metrics
    if v is None:
        metrics.keyspace_misses += 1
    else:
        metrics.keyspace_hits += 1
    return v



@command("setnx", 3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "string",
         "Set the value of a key, only if the key does not exist")
def cmd_setnx(c: Connection, args: list[bytes]) -> bytes:
    if live_collections(c, [args[1]]):
        return ZERO  # the key exists (Redis does not look at its type)
    return ONE if c.db.put(args[1], args[2], if_absent=True) else ZERO


def _setex(c: Connection, args: list[bytes], unit: bytes, name: str) -> bytes:
    now_ms = time_ms()
    at_ms = _expire_at_ms(unit, args[2], name, now_ms)
    replaced = live_collections(c, [args[1]])
    if replaced:
        replace_collections(c, replaced, [(args[1], args[3], at_ms)])
    else:
        c.db.put(args[1], args[3], expires_at_ms=at_ms)
    return OK


@command("setex", 4, F_WRITE | F_DENYOOM, (1, 1, 1), "string",
         "Set the value and expiration of a key", "2.0.0")
def cmd_setex(c: Connection, args: list[bytes]) -> bytes:
    return _setex(c, args, b"EX", "setex")


@command("psetex", 4, F_WRITE | F_DENYOOM, (1, 1, 1), "string",
         "Set the value and expiration in milliseconds of a key", "2.6.0")
def cmd_psetex(c: Connection, args: list[bytes]) -> bytes:
    return _setex(c, args, b"PX", "psetex")


@command("getdel", 2, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Get the value of a key and delete the key", "6.2.0", strings_only=True)
def cmd_getdel(c: Connection, args: list[bytes]) -> bytes:
    try:
        v = c.db.get_and_delete(args[1])
    except ValueError:
        v = None
    v = _counted(c, v)
    return c.null if v is None else bulk(v)


@command("getex", -2, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Get the value of a key and optionally set its expiration", "6.2.0", strings_only=True)
def cmd_getex(c: Connection, args: list[bytes]) -> bytes:
    unit = arg = None
    persist = False
    opts = args[2:]
    i, n = 0, len(opts)
    while i < n:
        o = opts[i].upper()
        if o in _EXPIRE_UNITS and unit is None and not persist and i + 1 < n:
            unit, arg = o, opts[i + 1]
            i += 1
        elif o == b"PERSIST" and unit is None:
            persist = True
        else:
            raise CommandError(SYNTAX)
        i += 1
    at_ms = 0
    now_ms = time_ms()
    if unit is not None:
        assert arg is not None
        at_ms = _expire_at_ms(unit, arg, "getex", now_ms)
    db = c.db
    v = _read(c, args[1])
    if v is None:
        return c.null
    if at_ms:
        if at_ms <= now_ms:
            db.delete(args[1])
        else:
            db.expire_at(args[1], at_ms)
    elif persist:
        db.persist(args[1])
    return bulk(v)


@command("getset", 3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "string",
         "Set the string value of a key and return its old value", strings_only=True)
def cmd_getset(c: Connection, args: list[bytes]) -> bytes:
    db = c.db
    old = _read(c, args[1])
    db.put(args[1], args[2])
    return c.null if old is None else bulk(old)


@command("getrange", 4, F_READONLY, (1, 1, 1), "string",
         "Get a substring of the string stored at a key", "2.4.0", strings_only=True)
def cmd_getrange(c: Connection, args: list[bytes]) -> bytes:
    start, end = to_int(args[2]), to_int(args[3])
    v = _read(c, args[1]) or b""
    n = len(v)
    if start < 0 and end < 0 and start > end:
        return b"$0\r\n\r\n"
    if start < 0:
        start = max(n + start, 0)
    if end < 0:
        end = max(n + end, 0)
    end = min(end, n - 1)
    if start > end or n == 0:
        return b"$0\r\n\r\n"
    return bulk(v[start : end + 1])


@command("substr", 4, F_READONLY, (1, 1, 1), "string",
         "Get a substring of the string stored at a key", strings_only=True)
def cmd_substr(c: Connection, args: list[bytes]) -> bytes:
    return cmd_getrange(c, args)


@command("setrange", 4, F_WRITE | F_DENYOOM, (1, 1, 1), "string",
         "Overwrite part of a string at key starting at the specified offset", "2.2.0",
         strings_only=True)
def cmd_setrange(c: Connection, args: list[bytes]) -> bytes:
    offset = to_int(args[2])
    if offset < 0:
        raise CommandError("ERR offset is out of range")
    value = args[3]
    db = c.db
    old = _get(db, args[1])
    if not value:
        return integer(0 if old is None else len(old))
    if offset + len(value) > min(MAX_VALUE_SIZE, c.control.limits.max_bulk_len):
        raise CommandError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    cur = old or b""
    if len(cur) < offset:
        cur += bytes(offset - len(cur))
    new = cur[:offset] + value + cur[offset + len(value):]
    db.put(args[1], new, keep_ttl=True)
    return integer(len(new))


@command("mget", -2, F_READONLY | F_FAST, (1, -1, 1), "string",
         "Get the values of all the given keys")
def cmd_mget(c: Connection, args: list[bytes]) -> bytes:
    get = c.db.get
    null = c.null
    parts = [b"*%d\r\n" % (len(args) - 1)]
    misses = 0
    for key in args[1:]:
        try:
            v = get(key)
        except ValueError:
            v = None
        if v is None:
            misses += 1
            parts.append(null)
        else:
            parts.append(b"$%d\r\n%b\r\n" % (len(v), v))
    metrics = c.control.metrics
    metrics.keyspace_misses += misses
    metrics.keyspace_hits += len(args) - 1 - misses
    return b"".join(parts)


@command("mset", -3, F_WRITE | F_DENYOOM, (1, -1, 2), "string",
         "Set multiple keys to multiple values",
         "1.0.1")
def cmd_mset(c: Connection, args: list[bytes]) -> bytes:
    if len(args) % 2 == 0:
        return arity_error("mset")
    replaced = live_collections(c, args[1::2])
    if replaced:
        replace_collections(c, replaced, [(args[i], args[i + 1], None)
                                          for i in range(1, len(args), 2)])
        return OK
    with c.db.batch() as b:
        for i in range(1, len(args), 2):
            b.put(args[i], args[i + 1])
    return OK


@command("msetnx", -3, F_WRITE | F_DENYOOM, (1, -1, 2), "string",
         "Set multiple keys to multiple values, only if none of the keys exist", "1.0.1")
def cmd_msetnx(c: Connection, args: list[bytes]) -> bytes:
    if len(args) % 2 == 0:
        return arity_error("msetnx")
    db = c.db
    for i in range(1, len(args), 2):
        if key_exists(db, args[i]):
            return ZERO
    if live_collections(c, args[1::2]):
        return ZERO
    with db.batch() as b:
        for i in range(1, len(args), 2):
            b.put(args[i], args[i + 1])
    return ONE


@command("append", 3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "string", "Append a value to a key",
         "2.0.0", strings_only=True)
def cmd_append(c: Connection, args: list[bytes]) -> bytes:
    db = c.db
    old = _get(db, args[1])
    if old is None:
        db.put(args[1], args[2])
        return integer(len(args[2]))
    if len(old) + len(args[2]) > min(MAX_VALUE_SIZE, c.control.limits.max_bulk_len):
        raise CommandError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    new = old + args[2]
    db.put(args[1], new, keep_ttl=True)
    return integer(len(new))


@command("strlen", 2, F_READONLY | F_FAST, (1, 1, 1), "string",
         "Get the length of the value stored in a key", "2.2.0", strings_only=True)
def cmd_strlen(c: Connection, args: list[bytes]) -> bytes:
    v = _read(c, args[1])
    return ZERO if v is None else integer(len(v))


def _incr(c: Connection, key: bytes, delta: int) -> bytes:
    db = c.db
    try:
        return integer(db.incr(key, delta))
    except NotAnIntegerError:
        current = _get(db, key)
        if current is not None and parse_ll(current) is not None:
            raise CommandError("ERR increment or decrement would overflow") from None
        raise CommandError(NOT_INT) from None


@command("incr", 2, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "string",
         "Increment the integer value of a key by one", strings_only=True)
def cmd_incr(c: Connection, args: list[bytes]) -> bytes:
    return _incr(c, args[1], 1)


@command("decr", 2, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "string",
         "Decrement the integer value of a key by one", strings_only=True)
def cmd_decr(c: Connection, args: list[bytes]) -> bytes:
    return _incr(c, args[1], -1)


@command("incrby", 3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "string",
         "Increment the integer value of a key by the given amount", strings_only=True)
def cmd_incrby(c: Connection, args: list[bytes]) -> bytes:
    return _incr(c, args[1], to_int(args[2]))


@command("decrby", 3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "string",
         "Decrement the integer value of a key by the given number", strings_only=True)
def cmd_decrby(c: Connection, args: list[bytes]) -> bytes:
    delta = to_int(args[2])
    if delta == INT64_MIN:
        raise CommandError("ERR decrement would overflow")
    return _incr(c, args[1], -delta)
