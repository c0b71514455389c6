"""Keyspace commands: DEL, EXISTS, TYPE, EXPIRE and its variants, TTL, EXPIRETIME, PERSIST,
KEYS, SCAN, RENAME, RENAMENX, COPY, RANDOMKEY, TOUCH, OBJECT.

RENAME and COPY read the source (value and expiry, exact to the ms) and write the result as
one store batch, so after a crash either the whole move is there or none of it; no other
client's command runs in between because handlers run one at a time on the event loop
thread (and the store is the server's: nothing else writes to it).

A key may name a collection (a hash, set, list or sorted set: :mod:`bitkv.structures`):
every command here treats it as one key, and lists, counts, expires, renames and copies it
by name; its records (under :data:`bitkv.structures.PREFIX`) are never shown to a client.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from itertools import islice
from typing import TYPE_CHECKING
from zlib import crc32

from ...structures import PREFIX, Collection
from ...structures.space import Op
from ..glob import compile_glob, literal_prefix
from ..protocol import (
    INT64_MAX,
    MINUS_ONE,
    MINUS_TWO,
    OK,
    ONE,
    ZERO,
    bulk,
    bulk_array,
    integer,
    parse_ll,
)
from . import blocking
from .elementscan import parse_scan_options
from .encodings import encoding_of
from .registry import (
    F_DENYOOM,
    F_FAST,
    F_READONLY,
    F_WRITE,
    NOT_INT,
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
    structures = c.structures
    n = 0
    for key in args[1:]:
        if structures and key in structures.names:
            n += structures.delete(key)
            continue
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
    structures = c.structures
    return integer(sum(key_exists(db, key) or (bool(structures) and key in structures)
                       for key in args[1:]))


@command("type", 2, F_READONLY | F_FAST, (1, 1, 1), "keyspace",
         "Determine the type stored at key")
def cmd_type(c: Connection, args: list[bytes]) -> bytes:
    return b"+%s\r\n" % c.structures.type_name(args[1]).encode()


SECONDS_LIMIT = INT64_MAX // 1000  # |seconds| Redis accepts: 9223372036854775


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
        # Redis's bounds: C's LLONG_MIN / 1000 truncates toward zero.
        if not -SECONDS_LIMIT <= n <= SECONDS_LIMIT:
            raise CommandError(f"ERR invalid expire time in '{name}' command")
        n *= 1000
    if unit in (b"EX", b"PX"):
        if n > INT64_MAX - now_ms:
            raise CommandError(f"ERR invalid expire time in '{name}' command")
        n += now_ms
    db = c.db
    coll = _collection(c, key)
    if coll is not None:
        return _expire_collection(c, coll, n, now_ms, nx, xx, gt, lt)
    if nx or xx or gt or lt:
        try:
            found = db.get_with_expiry(key)  # expiry exact to the ms, 0 for none
        except ValueError:
            found = None
        if found is None:
            return ZERO
        current = found[1] or None
        if nx and current is not None:
            return ZERO
        if xx and current is None:
            return ZERO
        if gt and (current is None or n <= current):
            return ZERO
        if lt and current is not None and n >= current:
            return ZERO
    elif not key_exists(db, key):
        return ZERO
    if n <= now_ms:  # a time in the past deletes the key, as Redis does
        db.delete(key)
        return ONE
    # The absolute time itself, exact to the ms (a relative ttl would drift by the time
    # between here and the store's clock reading).
    return ONE if db.expire_at(key, n) else ZERO


def _collection(c: Connection, key: bytes) -> Collection | None:
    """The live collection named ``key``, None if there is none (one truth test while the
    server has no collections)."""
    structures = c.structures
    if structures.names and key in structures.names:
        return structures.collection(key)
    return None


def _expire_collection(c: Connection, coll: Collection, at_ms: int, now_ms: int, nx: bool,
                       xx: bool, gt: bool, lt: bool) -> bytes:
    """EXPIRE and its variants on a collection: its header's expiry (one record)."""
    current = coll.expire_ms or None
    if (nx and current is not None) or (xx and current is None) \
            or (gt and (current is None or at_ms <= current)) \
            or (lt and current is not None and at_ms >= current):
        return ZERO
    structures = c.structures
    if at_ms <= now_ms:  # a time in the past deletes the key, as Redis does
        structures.delete(coll.key)
        return ONE
    return ONE if structures.expire_at(coll.key, at_ms) else ZERO


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
    coll = _collection(c, key)
    if coll is not None:
        if not coll.expire_ms:
            return MINUS_ONE
        left_ms = max(coll.expire_ms - time_ms(), 0)
        return integer(left_ms if ms else (left_ms + 500) // 1000)
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
    coll = _collection(c, args[1])
    if coll is not None:
        if not coll.expire_ms:
            return ZERO
        return ONE if c.structures.expire_at(coll.key, None) else ZERO
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
    keys = [k for k in c.db.keys(prefix or None) if match(k) and not k.startswith(PREFIX)]
    if c.structures.names:
        collections = c.structures.keys()
        keys += [k for k in collections if match(k)]
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
    match, count, wanted = parse_scan_options(args, 2, with_type=True)
    control = c.control
    index = control.scan_index
    structures = c.structures
    if index is None or (cursor == 0 and index.version != control.write_version):
        # The keys a client sees: strings and collections' names, never their records.
        names = [k for k in c.db if not k.startswith(PREFIX)]
        names += structures.keys()
        index = control.scan_index = ScanIndex(names, control.write_version)
    order = index.order
    pos = bisect_left(order, cursor) if cursor <= SCAN_BUCKET_MASK else len(order)
    found: list[bytes] = []
    examined = 0
    db = c.db
    while pos < len(order) and examined < count:
        keys = index.buckets[order[pos]]
        examined += len(keys)
        pos += 1
        for k in keys:
            if match is not None and not match(k):
                continue
            if wanted is None:
                if k in db or k in structures:
                    found.append(k)
            elif structures.type_name(k) == wanted:
                found.append(k)
    next_cursor = order[pos] if pos < len(order) else 0
    return b"*2\r\n" + bulk(b"%d" % next_cursor) + bulk_array(found)


def _expiry_reply(c: Connection, key: bytes, ms: bool) -> bytes:
    coll = _collection(c, key)
    if coll is not None:
        at_ms = coll.expire_ms
    else:
        try:
            found = c.db.get_with_expiry(key)
        except ValueError:
            found = None
        if found is None:
            return MINUS_TWO
        at_ms = found[1]
    if not at_ms:
        return MINUS_ONE
    return integer(at_ms if ms else at_ms // 1000)


@command("expiretime", 2, F_READONLY | F_FAST, (1, 1, 1), "keyspace",
         "Get the expiration Unix timestamp for a key", "7.0.0")
def cmd_expiretime(c: Connection, args: list[bytes]) -> bytes:
    return _expiry_reply(c, args[1], False)


@command("pexpiretime", 2, F_READONLY | F_FAST, (1, 1, 1), "keyspace",
         "Get the expiration Unix timestamp for a key in milliseconds", "7.0.0")
def cmd_pexpiretime(c: Connection, args: list[bytes]) -> bytes:
    return _expiry_reply(c, args[1], True)


@command("touch", -2, F_READONLY | F_FAST, (1, -1, 1), "keyspace",
         "Count the given keys that exist (bitkv keeps no access times)", "3.2.1")
def cmd_touch(c: Connection, args: list[bytes]) -> bytes:
    return cmdkey_exists(c, args)


@command("randomkey", 1, F_READONLY, (0, 0, 0), "keyspace",
         "Return a random key from the keyspace")
def cmd_randomkey(c: Connection, args: list[bytes]) -> bytes:
    db = c.db
    structures = c.structures
    for _attempt in range(16):  # a key may expire between the count and the walk
        collections = len(structures)  # (expired ones deleted first)
        strings = len(db) - structures.record_count()
        if strings + collections <= 0:
            return c.null
        pick = random.randrange(strings + collections)
        if pick < collections:
            key = next(islice(structures.names, pick, None), None)
        else:
            # O(n) walk, O(1) memory: the keydir has no random access.
            users = (k for k in db if not k.startswith(PREFIX))
            key = next(islice(users, pick - collections, None), None)
        if key is not None:
            return bulk(key)
    return c.null


NO_SUCH_KEY = "ERR no such key"


def _exists(c: Connection, key: bytes) -> bool:
    """A string or a live collection named ``key``."""
    return key_exists(c.db, key) or _collection(c, key) is not None


def _move(c: Connection, src: bytes, dst: bytes, keep_source: bool, replace: bool) -> bool:
    """Copy (or, without ``keep_source``, move) ``src`` to ``dst`` with its expiry, as one
    batch: any type over any type, the source's records out (a move) and the destination's
    old ones out with the new ones in; False if ``dst`` exists and not ``replace``. The
    caller checked ``src`` exists.

    A collection's elements are read and rewritten under the new name (O(elements) records
    each way; Redis renames in O(1)): its records' keys start with its name."""
    db = c.db
    structures = c.structures
    if not replace and _exists(c, dst):
        return False
    ops: list[Op] = []
    dst_coll = _collection(c, dst)
    if dst_coll is not None:
        ops += structures.delete_ops(dst)
    src_coll = _collection(c, src)
    clone = None
    if src_coll is not None:
        copied, clone = structures.copy_ops(src_coll, dst, src_coll.expire_ms)
        if dst_coll is None and key_exists(db, dst):
            ops.append((dst, None, None))  # a string the collection replaces
        ops += copied
        if not keep_source:
            ops += structures.delete_ops(src)
    else:
        found = db.get_with_expiry(src)
        if found is None:
            raise CommandError(NO_SUCH_KEY)
        value, at_ms = found
        ops.append((dst, value, at_ms or None))
        if not keep_source:
            ops.append((src, None, None))
    structures.write(ops)
    if dst_coll is not None:
        structures.forget(dst)
    if clone is not None:
        if not keep_source:
            structures.forget(src)
        structures.install(clone)
        # a list or sorted set moved into place serves the clients blocked on its new name
        # now, as Redis's dbAdd signals it (not at their own next look, up to 0.5 s later)
        blocking.signal_ready(c, dst)
    return True


def _rename(c: Connection, args: list[bytes], nx: bool) -> bytes:
    src, dst = args[1], args[2]
    if not _exists(c, src):
        raise CommandError(NO_SUCH_KEY)
    if src == dst:
        return ZERO if nx else OK
    moved = _move(c, src, dst, keep_source=False, replace=not nx)
    if nx:
        return ONE if moved else ZERO
    return OK


@command("rename", 3, F_WRITE, (1, 2, 1), "keyspace", "Rename a key")
def cmd_rename(c: Connection, args: list[bytes]) -> bytes:
    return _rename(c, args, False)


@command("renamenx", 3, F_WRITE | F_FAST, (1, 2, 1), "keyspace",
         "Rename a key, only if the new key does not exist")
def cmd_renamenx(c: Connection, args: list[bytes]) -> bytes:
    return _rename(c, args, True)


@command("copy", -3, F_WRITE | F_DENYOOM, (1, 2, 1), "keyspace", "Copy a key", "6.2.0")
def cmd_copy(c: Connection, args: list[bytes]) -> bytes:
    replace = False
    i = 3
    while i < len(args):
        opt = args[i].upper()
        if opt == b"REPLACE":
            replace = True
        elif opt == b"DB" and i + 1 < len(args):
            db_index = parse_ll(args[i + 1])
            if db_index is None or not -(2**31) <= db_index < 2**31:
                raise CommandError(NOT_INT)
            if db_index != 0:  # bitkv has one database, number 0
                raise CommandError("ERR DB index is out of range")
            i += 1
        else:
            raise CommandError(SYNTAX)
        i += 1
    src, dst = args[1], args[2]
    if src == dst:
        raise CommandError("ERR source and destination objects are the same")
    if not _exists(c, src):
        return ZERO
    return ONE if _move(c, src, dst, keep_source=True, replace=replace) else ZERO


def _string_encoding(value: bytes) -> bytes:
    """What Redis 7.0 calls a string of these bytes: int, embstr (up to 44 bytes) or raw."""
    if len(value) <= 20 and parse_ll(value) is not None:
        return b"int"
    return b"embstr" if len(value) <= 44 else b"raw"


@command("object", -2, F_READONLY, (2, 2, 1), "keyspace",
         "Inspect the internals of Redis objects", "2.2.3", subcommands=True)
def cmd_object(c: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"HELP" and len(args) == 2:
        return bulk_array([
            b"OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            b"ENCODING <key>", b"    Return the kind of internal representation the Redis "
            b"object stored at <key> would have (bitkv keeps every value as bytes).",
            b"FREQ <key>", b"    Not tracked by bitkv (no LFU eviction policy).",
            b"IDLETIME <key>", b"    Always 0: bitkv keeps no access times.",
            b"REFCOUNT <key>", b"    Always 1.",
            b"HELP", b"    Print this help."])
    if sub not in (b"ENCODING", b"FREQ", b"IDLETIME", b"REFCOUNT"):
        raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                           + "'. Try OBJECT HELP.")
    if len(args) != 3:
        raise CommandError("ERR wrong number of arguments for 'object|"
                           + sub.lower().decode() + "' command")
    coll = _collection(c, args[2])
    value = None
    if coll is None:
        try:
            value = c.db.get(args[2])
        except ValueError:
            value = None
        if value is None:
            return c.null
    if sub == b"ENCODING":
        if coll is not None:
            return bulk(encoding_of(c.control, coll).encode())
        assert value is not None
        return bulk(_string_encoding(value))
    if sub == b"FREQ":
        raise CommandError("ERR An LFU maxmemory policy is not selected, access frequency not "
                           "tracked. Please note that when switching between policies at "
                           "runtime LRU and LFU data will take some time to adjust.")
    if sub == b"IDLETIME":
        return ZERO
    return ONE
