"""memcached's commands over the server's store: what each one does, and its reply.

The store is the one the Redis protocol serves, so a key written through one protocol is
read through the other (docs/memcached.md says where the semantics differ). Commands run on
the event loop thread, one at a time, like the Redis commands: a read-modify-write here
(append, incr, touch) is atomic with respect to every client of both protocols, and the
conditional writes go through ``Store.put_item`` (if_absent / if_present / if_cas), whose
check and write are atomic in the store itself.

The client flags are stored with the value (record flag ``CLIENT_FLAGS``, docs/format.md);
the cas unique of an item is the seq of its record (``Store.get_item``), so it survives a
restart and compaction and changes with every write of the key.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

import bitkv
from bitkv.structures import Structures

from . import text

log = logging.getLogger("bitkv.server")

# The optional last word of each command, counting the command: with it, the command may end
# in "noreply" (memcached's token counts, Debian's memcached 1.6 checked).
_STORAGE = (b"set", b"add", b"replace", b"append", b"prepend")
_INT_WORDS = 3  # incr <key> <delta>
_TOUCH_WORDS = 3  # touch <key> <exptime>


class Storage(NamedTuple):
    """A storage command whose line was valid: its data block comes next."""

    command: bytes
    key: bytes
    client_flags: int
    exptime: int
    length: int
    cas: int | None
    noreply: bool


class Refusal(NamedTuple):
    """A storage command refused on its line: the reply, and how many bytes of data to
    discard (memcached swallows the block only of a value too large to store)."""

    reply: bytes
    swallow: int


class StoreHost(Protocol):
    """What the commands need of the server they run in."""

    @property
    def refuses_client_writes(self) -> bool: ...

    def request_flush_later(self, delay: float, flush: Callable[[], None]) -> None: ...


class ReadOnlyReplica(Exception):
    """A write on a read-only replica."""


READONLY = b"SERVER_ERROR READONLY You can't write against a read only replica.\r\n"


OUT_OF_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"


def server_error(exc: Exception) -> bytes:
    """SERVER_ERROR with the store's reason, on one line; a full cache (docs/cache.md) as
    memcached words it."""
    if isinstance(exc, bitkv.StoreFullError):
        return OUT_OF_MEMORY
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"SERVER_ERROR {message}\r\n".encode("utf-8", "replace")


class Memcache:
    """The memcached protocol's state in a server: its settings, counters and commands."""

    def __init__(self, db: bitkv.Store, host: StoreHost, *,
                 max_item_size: int = text.DEFAULT_MAX_ITEM_SIZE,
                 clock: Callable[[], float] = time.time,
                 structures: Structures | None = None) -> None:
        self.db = db
        # The Redis port's hashes, sets, lists and sorted sets: a key holding one is a miss
        # for every read here; set and delete replace or remove it (as Redis's SET and DEL);
        # the conditional writes treat it as a key that exists but holds no item.
        self.structures = structures
        self.host = host
        self.max_item_size = max_item_size
        self.clock = clock
        self.started = clock()
        self.stats: Counter[str] = Counter()
        self.curr_connections = 0
        self.verbosity = 0

    # -- storage commands ----------------------------------------------------------------

    def parse_storage(self, words: list[bytes]) -> Storage | Refusal:
        """Read the line of set/add/replace/append/prepend/cas (``words[0]`` is one of them)."""
        is_cas = words[0] == b"cas"
        base = 6 if is_cas else 5
        if len(words) not in (base, base + 1):
            return Refusal(text.ERROR, 0)
        noreply = text.wants_noreply(words, base + 1)
        silent = noreply
        key = words[1]
        client_flags = text.parse_u32(words[2])
        exptime = text.parse_i64(words[3])
        length = text.parse_i64(words[4])
        cas = text.parse_u64(words[5]) if is_cas else None
        if (not text.valid_key(key) or client_flags is None or exptime is None
                or length is None or (is_cas and cas is None) or length < 0):
            return Refusal(b"" if silent else text.BAD_FORMAT, 0)
        if length > self.max_item_size:
            if words[0] == b"set":  # memcached drops the old value: no stale data stays
                self._write(lambda: self.db.delete(key))
            return Refusal(b"" if silent else text.TOO_LARGE, length + 2)
        return Storage(words[0], key, client_flags, exptime, length, cas, noreply)

    def store(self, req: Storage, block: bytes) -> bytes:
        """Run a storage command with its data block (``length`` bytes, then "\\r\\n")."""
        if block[-2:] != b"\r\n":
            return b"" if req.noreply else text.BAD_CHUNK
        value = block[:-2]
        self.stats["cmd_set"] += 1
        try:
            reply = self._store(req, value)
        except ReadOnlyReplica:
            reply = READONLY
        except (bitkv.Error, OSError, ValueError) as exc:
            reply = server_error(exc)
        return b"" if req.noreply else reply

    def _store(self, req: Storage, value: bytes) -> bytes:
        self._check_writable()
        db = self.db
        key = req.key
        expires = text.expiry_ms(req.exptime, self.clock())
        command = req.command
        if self._collection(key):
            if command != b"set":
                return text.NOT_FOUND if command == b"cas" else text.NOT_STORED
            self._delete_collection(key)  # then stored below, as Redis's SET replaces it
        if command == b"set" and not req.client_flags and not expires:
            db.put(key, value)  # the common case: the store's compiled single-put path
            return text.STORED
        if command in (b"set", b"add", b"replace"):
            done = db.put_item(key, value, client_flags=req.client_flags,
                               expires_at_ms=expires, if_absent=command == b"add",
                               if_present=command == b"replace")
            return text.STORED if done is not None else text.NOT_STORED
        if command == b"cas":
            item = db.get_item(key)
            if item is None:
                self.stats["cas_misses"] += 1
                return text.NOT_FOUND
            if item.cas != req.cas:
                self.stats["cas_badval"] += 1
                return text.EXISTS
            done = db.put_item(key, value, client_flags=req.client_flags,
                               expires_at_ms=expires, if_cas=req.cas)
            if done is None:
                self.stats["cas_badval"] += 1
                return text.EXISTS
            self.stats["cas_hits"] += 1
            return text.STORED
        # append / prepend: the item keeps its flags and expiry (the command's are ignored).
        while True:
            item = db.get_item(key)
            if item is None:
                return text.NOT_STORED
            joined = item.value + value if command == b"append" else value + item.value
            if len(joined) > self.max_item_size:
                return OUT_OF_MEMORY
            if db.put_item(key, joined, client_flags=item.client_flags,
                           expires_at_ms=item.expiry_ms, if_cas=item.cas) is not None:
                return text.STORED

    # -- retrieval -----------------------------------------------------------------------

    def retrieve(self, keys: list[bytes], with_cas: bool, exptime: int | None = None
                 ) -> Iterator[bytes]:
        """The reply of get/gets (``exptime`` None) or gat/gats, one item at a time, so that
        a connection can stop between items while its client is not reading."""
        for key in keys:
            if not text.valid_key(key):
                yield text.BAD_FORMAT
                return
        for key in keys:
            try:
                item = self._touch(key, exptime) if exptime is not None else \
                    self.db.get_item(key)
            except ReadOnlyReplica:
                yield READONLY
                return
            except (bitkv.Error, OSError) as exc:
                yield server_error(exc)
                return
            self.stats["cmd_get" if exptime is None else "cmd_touch"] += 1
            if item is None:
                self.stats["get_misses" if exptime is None else "touch_misses"] += 1
                continue
            self.stats["get_hits" if exptime is None else "touch_hits"] += 1
            head = b"VALUE %b %d %d" % (key, item.client_flags, len(item.value))
            if with_cas:
                head += b" %d" % item.cas
            yield head + b"\r\n" + item.value + b"\r\n"
        yield text.END

    def retrieve_one(self, key: bytes, with_cas: bool) -> bytes:
        """The reply of a get/gets of one key (the common case, without a generator)."""
        if not text.valid_key(key):
            return text.BAD_FORMAT
        stats = self.stats
        stats["cmd_get"] += 1
        try:
            item = self.db.get_item(key)
        except (bitkv.Error, OSError) as exc:
            return server_error(exc)
        if item is None:
            stats["get_misses"] += 1
            return text.END
        stats["get_hits"] += 1
        if with_cas:
            return b"VALUE %b %d %d %d\r\n%b\r\nEND\r\n" % (
                key, item.client_flags, len(item.value), item.cas, item.value)
        return b"VALUE %b %d %d\r\n%b\r\nEND\r\n" % (
            key, item.client_flags, len(item.value), item.value)

    def _touch(self, key: bytes, exptime: int) -> bitkv.Item | None:
        """Give a live key a new expiry; return it as it was before (with its new cas: a new
        expiry is a new record), or None. An exptime in the past returns the value once, as
        memcached's gat does, and removes the key."""
        self._check_writable()
        db = self.db
        item = db.get_item(key)
        if item is None:
            return None
        expires = text.expiry_ms(exptime, self.clock())
        if expires:
            db.expire_at(key, expires)
        else:
            db.persist(key)
        after = db.get_item(key)
        return item if after is None else after

    def _collection(self, key: bytes) -> bool:
        """Whether ``key`` names a live collection of the Redis port."""
        structures = self.structures
        return structures is not None and bool(structures.names) and key in structures

    def _delete_collection(self, key: bytes) -> bool:
        structures = self.structures
        return structures is not None and structures.delete(key)

    # -- the other commands --------------------------------------------------------------

    def run(self, words: list[bytes]) -> bytes | None:
        """Run a command that has no data block; None for an unknown command (ERROR)."""
        handler = _HANDLERS.get(words[0])
        if handler is None:
            return None
        try:
            return handler(self, words)
        except ReadOnlyReplica:
            return READONLY
        except (bitkv.Error, OSError) as exc:
            return server_error(exc)

    def delete(self, words: list[bytes]) -> bytes:
        if not 2 <= len(words) <= 4:
            return text.ERROR
        noreply = False
        if len(words) > 2:
            hold_is_zero = words[2] == b"0"
            noreply = words[-1] == text.NOREPLY
            valid = (len(words) == 3 and (hold_is_zero or noreply)) or \
                (len(words) == 4 and hold_is_zero and noreply)
            if not valid:
                return b"" if noreply else text.BAD_DELETE
        key = words[1]
        if not text.valid_key(key):
            return b"" if noreply else text.BAD_FORMAT
        self._check_writable()
        if self._collection(key):
            deleted = self._delete_collection(key)
        else:
            deleted = self.db.delete(key)
        self.stats["delete_hits" if deleted else "delete_misses"] += 1
        if noreply:
            return b""
        return text.DELETED if deleted else text.NOT_FOUND

    def arithmetic(self, words: list[bytes]) -> bytes:
        if len(words) not in (_INT_WORDS, _INT_WORDS + 1):
            return text.ERROR
        noreply = text.wants_noreply(words, _INT_WORDS + 1)
        incr = words[0] == b"incr"
        key = words[1]
        if not text.valid_key(key):
            return b"" if noreply else text.BAD_FORMAT
        delta = text.parse_u64(words[2])
        if delta is None:
            return b"" if noreply else text.BAD_DELTA
        self._check_writable()
        name = "incr" if incr else "decr"
        db = self.db
        while True:
            item = db.get_item(key)
            if item is None:
                self.stats[f"{name}_misses"] += 1
                return b"" if noreply else text.NOT_FOUND
            number = text.counter_value(item.value)
            if number is None:
                return b"" if noreply else text.NON_NUMERIC
            # memcached: incr wraps at 2**64, decr stops at 0.
            result = (number + delta) % text.U64 if incr else max(number - delta, 0)
            if db.put_item(key, text.counter_bytes(result, item.value),
                           client_flags=item.client_flags, expires_at_ms=item.expiry_ms,
                           if_cas=item.cas) is not None:
                self.stats[f"{name}_hits"] += 1
                return b"" if noreply else b"%d\r\n" % result

    def touch(self, words: list[bytes]) -> bytes:
        if len(words) not in (_TOUCH_WORDS, _TOUCH_WORDS + 1):
            return text.ERROR
        noreply = text.wants_noreply(words, _TOUCH_WORDS + 1)
        key = words[1]
        exptime = text.parse_i64(words[2])
        if not text.valid_key(key):
            return b"" if noreply else text.BAD_FORMAT
        if exptime is None:
            return b"" if noreply else text.BAD_EXPTIME
        self.stats["cmd_touch"] += 1
        touched = self._touch(key, exptime) is not None
        self.stats["touch_hits" if touched else "touch_misses"] += 1
        if noreply:
            return b""
        return text.TOUCHED if touched else text.NOT_FOUND

    def flush_all(self, words: list[bytes]) -> bytes:
        if len(words) > 3:
            return text.ERROR
        noreply = words[-1] == text.NOREPLY and len(words) > 1
        delay = 0
        if len(words) > 1 and not (len(words) == 2 and noreply):
            parsed = text.parse_i64(words[1])
            if parsed is None:
                return b"" if noreply else text.BAD_EXPTIME
            delay = parsed
        self._check_writable()
        self.stats["cmd_flush"] += 1
        if delay > 0:
            when = text.expiry_ms(delay, self.clock()) / 1000
            self.host.request_flush_later(max(0.0, when - self.clock()), self.flush_now)
        else:
            self.flush_now()
        return b"" if noreply else text.OK

    def flush_now(self) -> None:
        """Remove every key of the store, in one atomic batch (as FLUSHALL)."""
        if self.host.refuses_client_writes:
            return
        db = self.db
        keys = list(db.keys())
        if keys:
            with db.batch() as batch:
                for key in keys:
                    batch.delete(key)
        if self.structures is not None:
            self.structures.load()  # (the collections' records went with the rest)

    def stats_reply(self, words: list[bytes]) -> bytes:
        if len(words) == 2 and words[1] == b"reset":
            self.stats.clear()
            return text.RESET
        if len(words) != 1:
            return text.ERROR  # bitkv has no slabs, items or settings to report
        now = self.clock()
        usage = os.times()
        rows: list[tuple[str, object]] = [
            ("pid", os.getpid()), ("uptime", int(now - self.started)), ("time", int(now)),
            ("version", version_string()), ("pointer_size", 64),
            ("rusage_user", f"{usage.user:.6f}"), ("rusage_system", f"{usage.system:.6f}"),
            ("curr_connections", self.curr_connections),
            ("total_connections", self.stats["total_connections"]),
        ]
        for name in ("cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "get_hits", "get_misses",
                     "delete_misses", "delete_hits", "incr_misses", "incr_hits",
                     "decr_misses", "decr_hits", "cas_misses", "cas_hits", "cas_badval",
                     "touch_hits", "touch_misses"):
            rows.append((name, self.stats[name]))
        rows += [("threads", 1), ("curr_items", len(self.db)),
                 ("item_size_max", self.max_item_size)]
        return b"".join(f"STAT {k} {v}\r\n".encode() for k, v in rows) + text.END

    def version(self, words: list[bytes]) -> bytes:
        return f"VERSION {version_string()}\r\n".encode()

    def verbosity_reply(self, words: list[bytes]) -> bytes:
        if not 2 <= len(words) <= 3:
            return text.ERROR
        noreply = words[-1] == text.NOREPLY
        level = text.parse_u32(words[1])
        if level is None:
            return b"" if noreply else text.BAD_FORMAT
        self.verbosity = level  # accepted and kept; bitkv's logging has its own --loglevel
        return b"" if noreply else text.OK

    def _check_writable(self) -> None:
        if self.host.refuses_client_writes:
            raise ReadOnlyReplica

    def _write(self, op: Callable[[], object]) -> None:
        """A write whose failure changes no reply (the old value of a too-large set)."""
        if not self.host.refuses_client_writes:
            try:
                op()
            except (bitkv.Error, OSError) as exc:
                log.warning("memcached: %s", exc)


def version_string() -> str:
    return f"bitkv-{bitkv.__version__}"


_HANDLERS: dict[bytes, Callable[[Memcache, list[bytes]], bytes]] = {
    b"delete": Memcache.delete,
    b"incr": Memcache.arithmetic,
    b"decr": Memcache.arithmetic,
    b"touch": Memcache.touch,
    b"flush_all": Memcache.flush_all,
    b"stats": Memcache.stats_reply,
    b"version": Memcache.version,
    b"verbosity": Memcache.verbosity_reply,
}
STORAGE_COMMANDS = frozenset(_STORAGE) | {b"cas"}
