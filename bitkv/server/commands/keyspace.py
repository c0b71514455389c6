"""Keyspace commands: DEL, EXISTS, TYPE, EXPIRE and its variants, TTL, PERSIST, KEYS, SCAN."""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING
from zlib import crc32

from ...validate import MAX_TTL_SECONDS
from ..glob import compile_glob, literal_prefix
from ..protocol import INT64_MAX, MINUS_ONE, MINUS_TWO, ONE, ZERO, bulk, bulk_array, integer
from .registry import (
    F_FAST,
    F_READONLY,
    F_WRITE,
    SYNTAX,
    CommandError,
    command,
    key_exists,
    time_ms,
    to_int,
)

if TYPE_CHECKING:
    from ..app import Connection


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
def cmdkey_exists(c: Connection, args: list[bytes]) -> bytes:
    db = c.db
    return integer(sum(key_exists(db, key) for key in args[1:]))


@command("type", 2, F_READONLY | F_FAST, (1, 1, 1), "keyspace",
         "Determine the type stored at key")
def cmd_type(c: Connection, args: list[bytes]) -> bytes:
    return b"+string\r\n" if key_exists(c.db, args[1]) else b"+none\r\n"


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
    now_ms = time_ms()
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
    if n <= now_ms:  # a time in the past deletes the key, as Redis does
        db.delete(key)
        return ONE
    if n - now_ms > MAX_TTL_SECONDS * 1000:
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    # The absolute time itself, exact to the ms (a relative ttl would drift by the time
    # between here and the store's clock reading).
    return ONE if db.expire_at(key, n) else ZERO


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
    control = c.control
    index = control.scan_index
    if index is None or (cursor == 0 and index.version != control.write_version):
        index = control.scan_index = ScanIndex(list(c.db.keys()), control.write_version)
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
