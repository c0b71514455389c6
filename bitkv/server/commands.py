"""The command table: Redis commands implemented over a bitkv Store.

Every handler is ``handler(conn, args) -> bytes`` (an encoded RESP reply); ``args[0]`` is the
command name. Handlers run on the event loop thread, one at a time, so a command that makes
several Store calls (SET ... GET, APPEND, MSETNX, INCR's error path) is atomic with respect to
every other client, as in Redis. Store calls are microseconds; the slow ones (compaction,
fsync) run in threads (see app.py).

Replies and error texts follow Redis 7.0. Differences that come from the engine are listed in
docs/cluster.md ("Redis compatibility").
"""

from __future__ import annotations

import hmac
import os
import platform
import resource
import sys
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zlib import crc32

from .. import __version__ as BITKV_VERSION
from ..errors import NotAnIntegerError
from ..record import MAX_VALUE_SIZE

try:  # the engine keeps its TTL limit here (or, in older trees, in store.py)
    from ..validate import MAX_TTL_SECONDS
except ImportError:  # pragma: no cover
    from ..store import MAX_TTL_SECONDS  # type: ignore[attr-defined,no-redef]
from .glob import compile_glob, literal_prefix
from .protocol import (
    EMPTY_ARRAY,
    INT64_MAX,
    INT64_MIN,
    MINUS_ONE,
    MINUS_TWO,
    OK,
    ONE,
    PONG,
    ZERO,
    array,
    bulk,
    bulk_array,
    encode_value,
    error,
    integer,
    map_reply,
    parse_ll,
    verbatim,
)

if TYPE_CHECKING:
    from .app import Connection

REDIS_VERSION = "7.0.0"  # the Redis release whose commands and replies we follow

# flags
F_WRITE = 1  # changes the keyspace
F_READONLY = 2
F_NOAUTH = 4  # allowed before AUTH (AUTH, HELLO, QUIT)
F_ASYNC = 8  # handler is a coroutine function (runs off the hot path)
F_TXCTL = 16  # MULTI/EXEC/DISCARD/QUIT: executed at once even inside MULTI
F_NOMULTI = 32  # refused inside MULTI
F_FAST = 64
F_ADMIN = 128
F_NEEDAUTH = 256  # set on every command without F_NOAUTH
F_ANY = 512  # set on every command
F_STATE = 1024  # changes the connection's state (AUTH, HELLO): runs on the slow path

NOT_INT = "ERR value is not an integer or out of range"
SYNTAX = "ERR syntax error"


class CommandError(Exception):
    """Raised by a handler; ``reply`` is the encoded RESP error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reply = error(message)


Handler = Callable[["Connection", list[bytes]], Any]
Spec = tuple[Handler, int, int, str]


@dataclass
class CommandInfo:
    name: str
    arity: int
    flags: int
    first_key: int
    last_key: int
    step: int
    group: str
    summary: str
    since: str


COMMANDS: dict[bytes, Spec] = {}
INFOS: dict[str, CommandInfo] = {}


def command(name: str, arity: int, flags: int = 0, keys: tuple[int, int, int] = (0, 0, 0),
            group: str = "generic", summary: str = "", since: str = "1.0.0"
            ) -> Callable[[Handler], Handler]:
    """Register a handler under ``name`` (upper and lower case looked up without copying)."""

    def register(fn: Handler) -> Handler:
        all_flags = flags | F_ANY | (0 if flags & F_NOAUTH else F_NEEDAUTH)
        spec: Spec = (fn, arity, all_flags, name)
        COMMANDS[name.lower().encode()] = spec
        COMMANDS[name.upper().encode()] = spec
        INFOS[name] = CommandInfo(name, arity, flags, *keys, group, summary, since)
        return fn

    return register


def lookup(name: bytes) -> Spec | None:
    spec = COMMANDS.get(name)
    if spec is None:
        spec = COMMANDS.get(name.lower())
    return spec


def unknown_command_error(args: list[bytes]) -> bytes:
    """Redis 7's text: the name, then up to 128 characters of quoted arguments."""
    name = args[0].decode("utf-8", "replace")[:128]
    shown = ""
    for a in args[1:]:
        room = 128 - len(shown)
        if room <= 0:
            break
        shown += "'" + a.decode("utf-8", "replace")[:room] + "' "
    return error(f"ERR unknown command '{name}', with args beginning with: {shown}")


def arity_error(name: str) -> bytes:
    return error(f"ERR wrong number of arguments for '{name}' command")


def to_int(b: bytes, message: str = NOT_INT) -> int:
    n = parse_ll(b)
    if n is None:
        raise CommandError(message)
    return n


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- connection ------------------------------------------------------------------------------

@command("ping", -1, F_FAST, group="connection", summary="Ping the server")
def cmd_ping(c: Connection, args: list[bytes]) -> bytes:
    if len(args) > 2:
        return arity_error("ping")
    if len(args) == 2:
        return bulk(args[1])
    return PONG


@command("echo", 2, F_FAST, group="connection", summary="Echo the given string")
def cmd_echo(c: Connection, args: list[bytes]) -> bytes:
    return bulk(args[1])


@command("quit", 1, F_NOAUTH | F_TXCTL | F_FAST, group="connection",
         summary="Close the connection")
def cmd_quit(c: Connection, args: list[bytes]) -> bytes:
    c.close_after_reply()
    return OK


@command("select", 2, F_FAST, group="connection", summary="Change the selected database")
def cmd_select(c: Connection, args: list[bytes]) -> bytes:
    index = parse_ll(args[1])
    if index is None or not -(2**31) <= index < 2**31:
        raise CommandError(NOT_INT)
    if index != 0:
        raise CommandError("ERR DB index is out of range")
    return OK


def _check_password(c: Connection, user: bytes, password: bytes) -> bool:
    secret = c.server.requirepass
    if secret is None:
        return user == b"default"  # the default user has no password: anything goes
    ok = user == b"default" and hmac.compare_digest(password, secret)
    c.auth_checked(ok)  # failures are throttled, see app.AUTH_FAILURE_DELAY
    return ok


WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


@command("auth", -2, F_NOAUTH | F_STATE | F_FAST, group="connection",
         summary="Authenticate to the server")
def cmd_auth(c: Connection, args: list[bytes]) -> bytes:
    if len(args) > 3:
        raise CommandError(SYNTAX)
    if len(args) == 2:
        if c.server.requirepass is None:
            raise CommandError(
                "ERR AUTH <password> called without any password configured for the default "
                "user. Are you sure your configuration is correct?")
        user, password = b"default", args[1]
    else:
        user, password = args[1], args[2]
    if not _check_password(c, user, password):
        raise CommandError(WRONGPASS)
    c.set_authenticated(True)
    return OK


def _valid_client_name(name: bytes) -> bool:
    return all(33 <= ch <= 126 for ch in name)


@command("hello", -1, F_NOAUTH | F_STATE | F_FAST, group="connection",
         summary="Handshake: protocol version, authentication, client name", since="6.0.0")
def cmd_hello(c: Connection, args: list[bytes]) -> bytes:
    version = None
    i = 1
    if len(args) >= 2:
        version = parse_ll(args[1])
        if version is None:
            raise CommandError("ERR Protocol version is not an integer or out of range")
        i = 2
    auth: tuple[bytes, bytes] | None = None
    name: bytes | None = None
    while i < len(args):
        opt = args[i].upper()
        more = len(args) - i - 1
        if opt == b"AUTH" and more >= 2:
            auth = (args[i + 1], args[i + 2])
            i += 3
        elif opt == b"SETNAME" and more >= 1:
            name = args[i + 1]
            i += 2
        else:
            raise CommandError("ERR Syntax error in HELLO option '"
                               + args[i].decode("utf-8", "replace") + "'")
    if version is not None and version not in (2, 3):
        raise CommandError("NOPROTO unsupported protocol version")
    if auth is not None:
        if not _check_password(c, *auth):
            raise CommandError(WRONGPASS)
        c.set_authenticated(True)
    if not c.authenticated:
        raise CommandError(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the "
            "HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client "
            "and select the RESP protocol version at the same time")
    if name is not None:
        if not _valid_client_name(name):
            raise CommandError("ERR Client names cannot contain spaces, newlines or special "
                               "characters.")
        c.name = name
    if version is not None:
        c.set_protocol(version)
    return encode_value({
        "server": "bitkv",
        "version": REDIS_VERSION,
        "bitkv_version": BITKV_VERSION,
        "proto": 3 if c.resp3 else 2,
        "id": c.client_id,
        "mode": "standalone",
        "role": "master",
        "modules": [],
    }, c.resp3)


@command("client", -2, F_FAST, group="connection", summary="Client connection commands")
def cmd_client(c: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    n = len(args)
    if sub == b"ID" and n == 2:
        return integer(c.client_id)
    if sub == b"SETNAME" and n == 3:
        if not _valid_client_name(args[2]):
            raise CommandError("ERR Client names cannot contain spaces, newlines or special "
                               "characters.")
        c.name = args[2] or None
        return OK
    if sub == b"GETNAME" and n == 2:
        return bulk(c.name) if c.name else c.null
    if sub == b"SETINFO" and n == 4:
        attr = args[2].upper()
        if attr == b"LIB-NAME":
            c.lib_name = args[3]
        elif attr == b"LIB-VER":
            c.lib_ver = args[3]
        else:
            raise CommandError("ERR Unrecognized option '" + args[2].decode("utf-8", "replace")
                               + "'")
        return OK
    if sub == b"LIST" and n == 2:
        return verbatim("".join(x.describe() + "\n" for x in c.server.clients), c.resp3)
    if sub == b"INFO" and n == 2:
        return verbatim(c.describe() + "\n", c.resp3)
    if sub in (b"NO-EVICT", b"NO-TOUCH") and n == 3:
        return OK
    if sub == b"HELP" and n == 2:
        return bulk_array([b"CLIENT <subcommand> [<arg> ...]. Subcommands are:",
                           b"ID", b"SETNAME <name>", b"GETNAME", b"SETINFO <attr> <value>",
                           b"LIST", b"INFO", b"HELP"])
    if sub in (b"ID", b"SETNAME", b"GETNAME", b"SETINFO", b"LIST", b"INFO", b"NO-EVICT",
               b"NO-TOUCH", b"HELP"):
        return arity_error("client|" + sub.decode().lower())
    raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                       + "'. Try CLIENT HELP.")


# -- transactions (queueing is done by the connection) ---------------------------------------

@command("multi", 1, F_TXCTL | F_FAST, group="transactions",
         summary="Start a transaction block")
def cmd_multi(c: Connection, args: list[bytes]) -> bytes:
    if c.multi is not None:
        raise CommandError("ERR MULTI calls can not be nested")
    c.multi = []
    c.multi_dirty = False
    return OK


@command("discard", 1, F_TXCTL | F_FAST, group="transactions",
         summary="Discard all commands issued after MULTI")
def cmd_discard(c: Connection, args: list[bytes]) -> bytes:
    if c.multi is None:
        raise CommandError("ERR DISCARD without MULTI")
    c.multi = None
    return OK


@command("exec", 1, F_TXCTL | F_WRITE, group="transactions",
         summary="Execute all commands issued after MULTI")
def cmd_exec(c: Connection, args: list[bytes]) -> bytes:
    if c.multi is None:
        raise CommandError("ERR EXEC without MULTI")
    queued, dirty = c.multi, c.multi_dirty
    c.multi = None
    if dirty:
        raise CommandError("EXECABORT Transaction discarded because of previous errors.")
    return array([c.call(spec, cmd) for spec, cmd in queued])


# -- strings ---------------------------------------------------------------------------------

@command("get", 2, F_READONLY | F_FAST, (1, 1, 1), "string", "Get the value of a key")
def cmd_get(c: Connection, args: list[bytes]) -> bytes:
    try:
        v = c.db.get(args[1])
    except ValueError:  # an empty or oversized key: no such key can exist
        return c.null
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


def _ttl_seconds(at_ms: int, now_ms: int, name: str) -> float:
    """Seconds from now until ``at_ms``; <= 0 means already expired. Bitkv's TTL limit."""
    ttl = (at_ms - now_ms) / 1000.0
    if ttl > MAX_TTL_SECONDS:
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    return ttl


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


@command("set", -3, F_WRITE, (1, 1, 1), "string", "Set the string value of a key")
def cmd_set(c: Connection, args: list[bytes]) -> bytes:
    if len(args) == 3:
        c.db.put(args[1], args[2])
        return OK
    now_ms = _now_ms()
    nx, xx, get, keepttl, at_ms = _parse_set_options(args[3:], "set", now_ms)
    return _set(c, args[1], args[2], nx, xx, get, keepttl, at_ms, now_ms, "set")


def _set(c: Connection, key: bytes, value: bytes, nx: bool, xx: bool, get: bool,
         keepttl: bool, at_ms: int, now_ms: int, name: str) -> bytes:
    db = c.db
    old = _get(db, key) if get else None
    ttl = None
    if at_ms:
        ttl = _ttl_seconds(at_ms, now_ms, name)
        if ttl <= 0:  # EXAT/PXAT in the past: the key is set and expires at once
            live = (old is not None) if get else _exists(db, key)
            if not ((nx and live) or (xx and not live)):
                db.delete(key)
                return bulk(old) if old is not None else (c.null if get else OK)
            return bulk(old) if old is not None else c.null
    written = db.put(key, value, ttl=ttl, if_absent=nx, if_present=xx, keep_ttl=keepttl)
    if get:
        return bulk(old) if old is not None else c.null
    return OK if written else c.null


def _get(db: Any, key: bytes) -> bytes | None:
    try:
        return db.get(key)
    except ValueError:
        return None


def _exists(db: Any, key: bytes) -> bool:
    try:
        return key in db
    except ValueError:
        return False


@command("setnx", 3, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Set the value of a key, only if the key does not exist")
def cmd_setnx(c: Connection, args: list[bytes]) -> bytes:
    return ONE if c.db.put(args[1], args[2], if_absent=True) else ZERO


def _setex(c: Connection, args: list[bytes], unit: bytes, name: str) -> bytes:
    now_ms = _now_ms()
    ttl = _ttl_seconds(_expire_at_ms(unit, args[2], name, now_ms), now_ms, name)
    c.db.put(args[1], args[3], ttl=ttl)
    return OK


@command("setex", 4, F_WRITE, (1, 1, 1), "string",
         "Set the value and expiration of a key", "2.0.0")
def cmd_setex(c: Connection, args: list[bytes]) -> bytes:
    return _setex(c, args, b"EX", "setex")


@command("psetex", 4, F_WRITE, (1, 1, 1), "string",
         "Set the value and expiration in milliseconds of a key", "2.6.0")
def cmd_psetex(c: Connection, args: list[bytes]) -> bytes:
    return _setex(c, args, b"PX", "psetex")


@command("getdel", 2, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Get the value of a key and delete the key", "6.2.0")
def cmd_getdel(c: Connection, args: list[bytes]) -> bytes:
    try:
        v = c.db.get_and_delete(args[1])
    except ValueError:
        v = None
    return c.null if v is None else bulk(v)


@command("getex", -2, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Get the value of a key and optionally set its expiration", "6.2.0")
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
    now_ms = _now_ms()
    if unit is not None:
        assert arg is not None
        at_ms = _expire_at_ms(unit, arg, "getex", now_ms)
    db = c.db
    v = _get(db, args[1])
    if v is None:
        return c.null
    if at_ms:
        ttl = _ttl_seconds(at_ms, now_ms, "getex")
        if ttl <= 0:
            db.delete(args[1])
        else:
            db.expire(args[1], ttl)
    elif persist:
        db.persist(args[1])
    return bulk(v)


@command("getset", 3, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Set the string value of a key and return its old value")
def cmd_getset(c: Connection, args: list[bytes]) -> bytes:
    db = c.db
    old = _get(db, args[1])
    db.put(args[1], args[2])
    return c.null if old is None else bulk(old)


@command("getrange", 4, F_READONLY, (1, 1, 1), "string",
         "Get a substring of the string stored at a key", "2.4.0")
def cmd_getrange(c: Connection, args: list[bytes]) -> bytes:
    start, end = to_int(args[2]), to_int(args[3])
    v = _get(c.db, args[1]) or b""
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
         "Get a substring of the string stored at a key")
def cmd_substr(c: Connection, args: list[bytes]) -> bytes:
    return cmd_getrange(c, args)


@command("setrange", 4, F_WRITE, (1, 1, 1), "string",
         "Overwrite part of a string at key starting at the specified offset", "2.2.0")
def cmd_setrange(c: Connection, args: list[bytes]) -> bytes:
    offset = to_int(args[2])
    if offset < 0:
        raise CommandError("ERR offset is out of range")
    value = args[3]
    db = c.db
    old = _get(db, args[1])
    if not value:
        return integer(0 if old is None else len(old))
    if offset + len(value) > min(MAX_VALUE_SIZE, c.server.limits.max_bulk_len):
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
    for key in args[1:]:
        try:
            v = get(key)
        except ValueError:
            v = None
        parts.append(null if v is None else b"$%d\r\n%b\r\n" % (len(v), v))
    return b"".join(parts)


@command("mset", -3, F_WRITE, (1, -1, 2), "string", "Set multiple keys to multiple values",
         "1.0.1")
def cmd_mset(c: Connection, args: list[bytes]) -> bytes:
    if len(args) % 2 == 0:
        return arity_error("mset")
    with c.db.batch() as b:
        for i in range(1, len(args), 2):
            b.put(args[i], args[i + 1])
    return OK


@command("msetnx", -3, F_WRITE, (1, -1, 2), "string",
         "Set multiple keys to multiple values, only if none of the keys exist", "1.0.1")
def cmd_msetnx(c: Connection, args: list[bytes]) -> bytes:
    if len(args) % 2 == 0:
        return arity_error("msetnx")
    db = c.db
    for i in range(1, len(args), 2):
        if _exists(db, args[i]):
            return ZERO
    with db.batch() as b:
        for i in range(1, len(args), 2):
            b.put(args[i], args[i + 1])
    return ONE


@command("append", 3, F_WRITE | F_FAST, (1, 1, 1), "string", "Append a value to a key",
         "2.0.0")
def cmd_append(c: Connection, args: list[bytes]) -> bytes:
    db = c.db
    old = _get(db, args[1])
    if old is None:
        db.put(args[1], args[2])
        return integer(len(args[2]))
    if len(old) + len(args[2]) > min(MAX_VALUE_SIZE, c.server.limits.max_bulk_len):
        raise CommandError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
    new = old + args[2]
    db.put(args[1], new, keep_ttl=True)
    return integer(len(new))


@command("strlen", 2, F_READONLY | F_FAST, (1, 1, 1), "string",
         "Get the length of the value stored in a key", "2.2.0")
def cmd_strlen(c: Connection, args: list[bytes]) -> bytes:
    v = _get(c.db, args[1])
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


@command("incr", 2, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Increment the integer value of a key by one")
def cmd_incr(c: Connection, args: list[bytes]) -> bytes:
    return _incr(c, args[1], 1)


@command("decr", 2, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Decrement the integer value of a key by one")
def cmd_decr(c: Connection, args: list[bytes]) -> bytes:
    return _incr(c, args[1], -1)


@command("incrby", 3, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Increment the integer value of a key by the given amount")
def cmd_incrby(c: Connection, args: list[bytes]) -> bytes:
    return _incr(c, args[1], to_int(args[2]))


@command("decrby", 3, F_WRITE | F_FAST, (1, 1, 1), "string",
         "Decrement the integer value of a key by the given number")
def cmd_decrby(c: Connection, args: list[bytes]) -> bytes:
    delta = to_int(args[2])
    if delta == INT64_MIN:
        raise CommandError("ERR decrement would overflow")
    return _incr(c, args[1], -delta)


# -- keys ------------------------------------------------------------------------------------

@command("del", -2, F_WRITE, (1, -1, 1), "keyspace", "Delete a key")
def cmd_del(c: Connection, args: list[bytes]) -> bytes:
    delete = c.db.delete
    n = 0
    for key in args[1:]:
        try:
            n += delete(key)
        except ValueError:
            pass
    return integer(n)


@command("unlink", -2, F_WRITE | F_FAST, (1, -1, 1), "keyspace",
         "Delete a key (the same as DEL in bitkv)", "4.0.0")
def cmd_unlink(c: Connection, args: list[bytes]) -> bytes:
    return cmd_del(c, args)


@command("exists", -2, F_READONLY | F_FAST, (1, -1, 1), "keyspace", "Determine if a key exists")
def cmd_exists(c: Connection, args: list[bytes]) -> bytes:
    db = c.db
    return integer(sum(_exists(db, key) for key in args[1:]))


@command("type", 2, F_READONLY | F_FAST, (1, 1, 1), "keyspace",
         "Determine the type stored at key")
def cmd_type(c: Connection, args: list[bytes]) -> bytes:
    return b"+string\r\n" if _exists(c.db, args[1]) else b"+none\r\n"


def _expire(c: Connection, args: list[bytes], unit: bytes, name: str) -> bytes:
    key = args[1]
    nx = xx = gt = lt = False
    for opt in args[3:]:
        o = opt.upper()
        if o == b"NX":
            nx = True
        elif o == b"XX":
            xx = True
        elif o == b"GT":
            gt = True
        elif o == b"LT":
            lt = True
        else:
            raise CommandError("ERR Unsupported option " + opt.decode("utf-8", "replace"))
    if nx and (xx or gt or lt):
        raise CommandError("ERR NX and XX, GT or LT options at the same time are not "
                           "compatible")
    if gt and lt:
        raise CommandError("ERR GT and LT options at the same time are not compatible")
    n = to_int(args[2])
    now_ms = _now_ms()
    if unit in (b"EX", b"EXAT"):
        if not -INT64_MAX // 1000 <= n <= INT64_MAX // 1000:
            raise CommandError(f"ERR invalid expire time in '{name}' command")
        n *= 1000
    if unit in (b"EX", b"PX"):
        if n > INT64_MAX - now_ms:
            raise CommandError(f"ERR invalid expire time in '{name}' command")
        n += now_ms
    db = c.db
    try:
        left = db.ttl(key)  # seconds, None for no expiry; KeyError if missing
    except (KeyError, ValueError):
        return ZERO
    if nx or xx or gt or lt:
        current = None if left is None else now_ms + left * 1000
        if nx and current is not None:
            return ZERO
        if xx and current is None:
            return ZERO
        if gt and (current is None or n <= current):
            return ZERO
        if lt and current is not None and n >= current:
            return ZERO
    ttl = (n - now_ms) / 1000.0
    if ttl <= 0:  # a time in the past deletes the key, as Redis does
        db.delete(key)
        return ONE
    if ttl > MAX_TTL_SECONDS:
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    return ONE if db.expire(key, ttl) else ZERO


@command("expire", -3, F_WRITE | F_FAST, (1, 1, 1), "keyspace",
         "Set a key's time to live in seconds")
def cmd_expire(c: Connection, args: list[bytes]) -> bytes:
    return _expire(c, args, b"EX", "expire")


@command("pexpire", -3, F_WRITE | F_FAST, (1, 1, 1), "keyspace",
         "Set a key's time to live in milliseconds", "2.6.0")
def cmd_pexpire(c: Connection, args: list[bytes]) -> bytes:
    return _expire(c, args, b"PX", "pexpire")


@command("expireat", -3, F_WRITE | F_FAST, (1, 1, 1), "keyspace",
         "Set the expiration for a key as a UNIX timestamp", "1.2.0")
def cmd_expireat(c: Connection, args: list[bytes]) -> bytes:
    return _expire(c, args, b"EXAT", "expireat")


@command("pexpireat", -3, F_WRITE | F_FAST, (1, 1, 1), "keyspace",
         "Set the expiration for a key as a UNIX timestamp specified in milliseconds",
         "2.6.0")
def cmd_pexpireat(c: Connection, args: list[bytes]) -> bytes:
    return _expire(c, args, b"PXAT", "pexpireat")


def _ttl(c: Connection, key: bytes, ms: bool) -> bytes:
    try:
        left = c.db.ttl(key)
    except (KeyError, ValueError):
        return MINUS_TWO
    if left is None:
        return MINUS_ONE
    left_ms = round(left * 1000)
    return integer(left_ms if ms else (left_ms + 500) // 1000)


@command("ttl", 2, F_READONLY | F_FAST, (1, 1, 1), "keyspace", "Get the time to live for a key")
def cmd_ttl(c: Connection, args: list[bytes]) -> bytes:
    return _ttl(c, args[1], False)


@command("pttl", 2, F_READONLY | F_FAST, (1, 1, 1), "keyspace",
         "Get the time to live for a key in milliseconds", "2.6.0")
def cmd_pttl(c: Connection, args: list[bytes]) -> bytes:
    return _ttl(c, args[1], True)


@command("persist", 2, F_WRITE | F_FAST, (1, 1, 1), "keyspace",
         "Remove the expiration from a key", "2.2.0")
def cmd_persist(c: Connection, args: list[bytes]) -> bytes:
    try:
        return ONE if c.db.persist(args[1]) else ZERO
    except ValueError:
        return ZERO


@command("keys", 2, F_READONLY, (0, 0, 0), "keyspace",
         "Find all keys matching the given pattern")
def cmd_keys(c: Connection, args: list[bytes]) -> bytes:
    pattern = args[1]
    match = compile_glob(pattern)
    prefix = literal_prefix(pattern)
    keys = [k for k in c.db.keys(prefix or None) if match(k)]
    return bulk_array(keys)


SCAN_BUCKET_MASK = 0xFFFF  # cursors are bucket numbers: 1..65535, 0 = start / done


class ScanIndex:
    """Keys grouped by ``crc32(key) & 0xFFFF``, the buckets SCAN's cursor walks in order.

    A key's bucket never changes, so a cursor keeps its meaning when the index is rebuilt;
    the index used for any step was built after the scan started (or nothing was written
    since), so every key present for the whole scan is returned, as Redis guarantees.
    """

    __slots__ = ("buckets", "order", "version")

    def __init__(self, keys: list[bytes], version: int) -> None:
        buckets: dict[int, list[bytes]] = {}
        for k in keys:
            b = crc32(k) & SCAN_BUCKET_MASK
            lst = buckets.get(b)
            if lst is None:
                buckets[b] = [k]
            else:
                lst.append(k)
        self.buckets = buckets
        self.order = sorted(buckets)
        self.version = version


@command("scan", -2, F_READONLY, (0, 0, 0), "keyspace",
         "Incrementally iterate the keys space", "2.8.0")
def cmd_scan(c: Connection, args: list[bytes]) -> bytes:
    cursor_arg = args[1]
    if not cursor_arg.isdigit() or len(cursor_arg) > 20 or int(cursor_arg) >= 2**64:
        raise CommandError("ERR invalid cursor")
    cursor = int(cursor_arg)
    match = None
    count = 10
    type_ok = True
    i = 2
    while i < len(args):
        o = args[i].upper()
        if i + 1 >= len(args):
            raise CommandError(SYNTAX)
        if o == b"COUNT":
            count = to_int(args[i + 1])
            if count < 1:
                raise CommandError(SYNTAX)
        elif o == b"MATCH":
            match = compile_glob(args[i + 1])
        elif o == b"TYPE":
            type_ok = args[i + 1].lower() == b"string"
        else:
            raise CommandError(SYNTAX)
        i += 2
    server = c.server
    index = server.scan_index
    if index is None or (cursor == 0 and index.version != server.write_version):
        index = server.scan_index = ScanIndex(list(c.db.keys()), server.write_version)
    order = index.order
    pos = bisect_left(order, cursor) if cursor <= SCAN_BUCKET_MASK else len(order)
    found: list[bytes] = []
    examined = 0
    db = c.db
    while pos < len(order) and examined < count:
        keys = index.buckets[order[pos]]
        examined += len(keys)
        pos += 1
        if type_ok:
            for k in keys:
                if (match is None or match(k)) and k in db:
                    found.append(k)
    next_cursor = order[pos] if pos < len(order) else 0
    return b"*2\r\n" + bulk(b"%d" % next_cursor) + bulk_array(found)


@command("dbsize", 1, F_READONLY | F_FAST, group="server",
         summary="Return the number of keys in the selected database")
def cmd_dbsize(c: Connection, args: list[bytes]) -> bytes:
    return integer(len(c.db))


def _flush_options(args: list[bytes]) -> None:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError(SYNTAX)


@command("flushdb", -1, F_WRITE, group="server",
         summary="Remove all keys from the current database")
def cmd_flushdb(c: Connection, args: list[bytes]) -> bytes:
    _flush_options(args)
    db = c.db
    keys = list(db.keys())
    if keys:
        with db.batch() as b:  # one atomic write: all keys go, or (after a crash) none
            for k in keys:
                b.delete(k)
    return OK


@command("flushall", -1, F_WRITE, group="server", summary="Remove all keys from all databases")
def cmd_flushall(c: Connection, args: list[bytes]) -> bytes:
    return cmd_flushdb(c, args)


# -- server ----------------------------------------------------------------------------------

@command("time", 1, F_FAST, group="server", summary="Return the current server time", since="2.6.0")
def cmd_time(c: Connection, args: list[bytes]) -> bytes:
    now = time.time_ns() // 1000
    return bulk_array([b"%d" % (now // 1_000_000), b"%d" % (now % 1_000_000)])


@command("save", 1, F_ASYNC | F_NOMULTI | F_ADMIN, group="server",
         summary="Make every write so far durable (fsync)")
async def cmd_save(c: Connection, args: list[bytes]) -> bytes:
    await c.server.sync_store()
    return OK


@command("bgsave", -1, F_ADMIN, group="server",
         summary="Make every write so far durable (fsync), in the background")
def cmd_bgsave(c: Connection, args: list[bytes]) -> bytes:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() != b"SCHEDULE"):
        raise CommandError(SYNTAX)
    if not c.server.start_background_sync():
        if len(args) == 2:
            return b"+Background saving scheduled\r\n"
        raise CommandError("ERR Background save already in progress")
    return b"+Background saving started\r\n"


@command("lastsave", 1, F_FAST, group="server",
         summary="Get the UNIX time stamp of the last successful save to disk")
def cmd_lastsave(c: Connection, args: list[bytes]) -> bytes:
    return integer(int(c.server.last_save_time))


@command("bgrewriteaof", 1, F_ADMIN, group="server",
         summary="Compact the store (rewrite it without dead records) in the background")
def cmd_bgrewriteaof(c: Connection, args: list[bytes]) -> bytes:
    if not c.server.start_compaction():
        raise CommandError("ERR Background append only file rewriting already in progress")
    return b"+Background append only file rewriting started\r\n"


@command("shutdown", -1, F_ADMIN | F_NOMULTI, group="server",
         summary="Sync the store and shut the server down")
def cmd_shutdown(c: Connection, args: list[bytes]) -> bytes:
    for opt in args[1:]:
        if opt.upper() not in (b"NOSAVE", b"SAVE", b"NOW", b"FORCE"):
            raise CommandError(SYNTAX)
    c.server.request_shutdown()
    c.close_after_reply()
    return b""  # Redis closes the connection without a reply


def _config_params(c: Connection) -> dict[str, str]:
    server = c.server
    cfg = server.config
    limits = server.limits
    return {
        "bind": " ".join(cfg.hosts),
        "port": "0" if cfg.tls else str(server.port),
        "tls-port": str(server.port) if cfg.tls else "0",
        "tls-cert-file": cfg.tls_cert or "",
        "tls-key-file": cfg.tls_key or "",
        "tls-protocols": "TLSv1.2 TLSv1.3" if cfg.tls else "",
        "dir": os.path.abspath(cfg.dir),
        "requirepass": (server.requirepass or b"").decode("utf-8", "replace"),
        "save": "",
        "appendonly": "yes",
        "appendfsync": {"always": "always", "interval": "everysec", "never": "no"}[cfg.sync],
        "bitkv-sync-interval": repr(cfg.sync_interval),
        "databases": "1",
        "maxclients": str(cfg.maxclients),
        "maxmemory": "0",
        "maxmemory-policy": "noeviction",
        "timeout": "0",
        "tcp-keepalive": "0",
        "proto-max-bulk-len": str(limits.max_bulk_len),
        "client-query-buffer-limit": str(limits.max_query_buffer),
        "bitkv-query-buffer-total-limit": str(server.max_partial_bytes),
        "io-threads": "1",
        "cluster-enabled": "no",
        "protected-mode": "no",
        "daemonize": "no",
        "loglevel": "notice",
    }


@command("config", -2, F_ADMIN, group="server", summary="Get configuration parameters",
         since="2.0.0")
def cmd_config(c: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"GET":
        if len(args) < 3:
            return arity_error("config|get")
        params = _config_params(c)
        found: dict[str, str] = {}
        for pattern in args[2:]:
            match = compile_glob(pattern.lower())
            for name, value in params.items():
                if match(name.encode()):
                    found[name] = value
        return encode_value(found, c.resp3)
    if sub == b"SET":
        if len(args) < 4 or len(args) % 2:
            return arity_error("config|set")
        name = args[2].decode("utf-8", "replace")
        raise CommandError(f"ERR Unknown option or number of arguments for CONFIG SET - "
                           f"'{name}' (bitkv's configuration is set on the command line)")
    if sub == b"RESETSTAT" and len(args) == 2:
        c.server.reset_stats()
        return OK
    if sub == b"REWRITE" and len(args) == 2:
        raise CommandError("ERR The server is running without a config file")
    if sub == b"HELP" and len(args) == 2:
        return bulk_array([b"CONFIG <subcommand> [<arg> ...]. Subcommands are:",
                           b"GET <pattern>", b"RESETSTAT", b"HELP"])
    raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                       + "'. Try CONFIG HELP.")


_FLAG_NAMES = ((F_WRITE, "write"), (F_READONLY, "readonly"), (F_ADMIN, "admin"),
               (F_NOAUTH, "no_auth"), (F_NOMULTI, "no_multi"), (F_FAST, "fast"))


def _command_entry(info: CommandInfo) -> bytes:
    flags = [name for bit, name in _FLAG_NAMES if info.flags & bit]
    flags_reply = b"*%d\r\n" % len(flags) + b"".join(b"+%b\r\n" % f.encode() for f in flags)
    return array([
        bulk(info.name.encode()), integer(info.arity), flags_reply,
        b":%d\r\n" % info.first_key, b":%d\r\n" % info.last_key, b":%d\r\n" % info.step,
        bulk_array([b"@" + info.group.encode()]), EMPTY_ARRAY, EMPTY_ARRAY, EMPTY_ARRAY,
    ])


def _command_docs(info: CommandInfo, resp3: bool) -> bytes:
    return encode_value({"summary": info.summary, "since": info.since, "group": info.group},
                        resp3)


@command("command", -1, F_FAST, group="server", summary="Get details about commands",
         since="2.8.13")
def cmd_command(c: Connection, args: list[bytes]) -> bytes:
    if len(args) == 1:
        return array([_command_entry(i) for i in INFOS.values()])
    sub = args[1].upper()
    if sub == b"COUNT" and len(args) == 2:
        return integer(len(INFOS))
    if sub == b"INFO":
        if len(args) == 2:
            return array([_command_entry(i) for i in INFOS.values()])
        out = []
        for name in args[2:]:
            info = INFOS.get(name.decode("utf-8", "replace").lower())
            out.append(c.null if info is None else _command_entry(info))
        return array(out)
    if sub == b"DOCS":
        names = [n.decode("utf-8", "replace").lower() for n in args[2:]] or list(INFOS)
        pairs = [(bulk(n.encode()), _command_docs(INFOS[n], c.resp3))
                 for n in names if n in INFOS]
        return map_reply(pairs, c.resp3)
    if sub == b"LIST":
        return bulk_array([n.encode() for n in INFOS])
    if sub == b"HELP" and len(args) == 2:
        return bulk_array([b"COMMAND <subcommand> [<arg> ...]. Subcommands are:",
                           b"(no subcommand)", b"COUNT", b"DOCS [<command-name> ...]",
                           b"INFO [<command-name> ...]", b"LIST", b"HELP"])
    raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                       + "'. Try COMMAND HELP.")


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.2f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return str(n)


def info_sections(c: Connection) -> dict[str, list[tuple[str, Any]]]:
    server = c.server
    db = c.db
    stats = db.stats()
    now = time.time()
    uptime = int(now - server.started_at)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = usage.ru_maxrss * 1024
    last = stats.get("last_compaction") or {}
    rec = stats.get("recovery") or {}
    sync = server.config.sync
    return {
        "server": [
            ("redis_version", REDIS_VERSION),
            ("bitkv_version", BITKV_VERSION),
            ("redis_mode", "standalone"),
            ("os", f"{platform.system()} {platform.release()} {platform.machine()}"),
            ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
            ("multiplexing_api", server.loop_name),
            ("python_version", platform.python_version()),
            ("resp_parser", "hiredis" if server.use_hiredis else "python"),
            ("process_id", os.getpid()),
            ("run_id", server.run_id),
            ("tcp_port", server.port),
            ("tls", "yes" if server.config.tls else "no"),
            ("server_time_usec", int(now * 1_000_000)),
            ("uptime_in_seconds", uptime),
            ("uptime_in_days", uptime // 86400),
            ("executable", sys.executable),
            ("config_file", ""),
        ],
        "clients": [
            ("connected_clients", len(server.clients)),
            ("maxclients", server.config.maxclients),
            ("blocked_clients", 0),
        ],
        "memory": [
            ("used_memory", rss),
            ("used_memory_human", _human(rss)),
            ("used_memory_rss", rss),
            ("maxmemory", 0),
            ("maxmemory_policy", "noeviction"),
        ],
        "persistence": [
            ("loading", 0),
            ("async_loading", 0),
            ("rdb_changes_since_last_save", server.writes_since_save),
            ("rdb_bgsave_in_progress", int(server.background_sync_running)),
            ("rdb_last_save_time", int(server.last_save_time)),
            ("rdb_last_bgsave_status", "ok" if server.last_sync_error is None else "err"),
            ("aof_enabled", 1),
            ("aof_rewrite_in_progress", int(server.compaction_running)),
            ("aof_rewrite_scheduled", 0),
            ("aof_last_rewrite_time_sec",
             round(last["seconds"]) if "seconds" in last else -1),
            ("aof_last_bgrewrite_status",
             "ok" if server.last_compaction_error is None else "err"),
            ("aof_last_write_status", "ok"),
            ("appendfsync", {"always": "always", "interval": "everysec",
                             "never": "no"}[sync]),
            ("bitkv_sync", sync),
            ("bitkv_dir", os.path.abspath(server.config.dir)),
            ("bitkv_segments", stats["segments"]),
            ("bitkv_live_bytes", stats["live_bytes"]),
            ("bitkv_dead_bytes", stats["dead_bytes"]),
            ("bitkv_disk_bytes", stats["disk_bytes"]),
            ("bitkv_last_compaction_reclaimed_bytes", last.get("bytes_reclaimed", 0)),
            ("bitkv_last_compaction_error", server.last_compaction_error
             or stats.get("last_compaction_error") or ""),
            ("bitkv_recovery_truncated_bytes", rec.get("truncated_bytes", 0)),
            ("bitkv_recovery_corrupt_bytes", rec.get("corrupt_bytes", 0)),
        ],
        "stats": [
            ("total_connections_received", server.total_connections),
            ("total_commands_processed", server.total_commands),
            ("rejected_connections", server.rejected_connections),
            ("expired_keys", 0),
            ("evicted_keys", 0),
        ],
        "replication": [
            ("role", "master"),
            ("connected_slaves", 0),
            ("master_repl_offset", 0),
        ],
        "cpu": [
            ("used_cpu_sys", f"{usage.ru_stime:.6f}"),
            ("used_cpu_user", f"{usage.ru_utime:.6f}"),
        ],
        "keyspace": ([("db0", f"keys={stats['keys']},expires={stats['expiring_keys']},"
                              "avg_ttl=0")] if stats["keys"] else []),
    }


_DEFAULT_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication",
                     "cpu", "keyspace")


@command("info", -1, F_FAST, group="server",
         summary="Get information and statistics about the server")
def cmd_info(c: Connection, args: list[bytes]) -> bytes:
    wanted = [a.decode("utf-8", "replace").lower() for a in args[1:]]
    sections = info_sections(c)
    if not wanted or any(w in ("all", "everything", "default") for w in wanted):
        names = list(_DEFAULT_SECTIONS)
    else:
        names = [n for n in _DEFAULT_SECTIONS if n in wanted]
    out = []
    for name in names:
        out.append(f"# {name.capitalize()}\r\n")
        out.extend(f"{k}:{v}\r\n" for k, v in sections[name])
        out.append("\r\n")
    text = "".join(out).rstrip("\r\n") + "\r\n" if out else ""
    return verbatim(text, c.resp3)
