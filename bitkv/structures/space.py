"""The collections of one store: their index, their reads, and every write to them.

:class:`Structures` is the only owner of the collection index and the only writer of the
records :mod:`bitkv.structures.encoding` lays out. Every change to a collection is one store
batch (elements, then the header), so after a crash a command's change is there whole or not
at all; the index is changed only after the batch is written, through the collection's
``on_put``/``on_delete`` (the same calls that build it at load).

A key is at most one thing: a string (a plain store key) or one collection. Creating a
collection on a string key raises :class:`WrongTypeError`; overwriting a collection with a
string goes through :meth:`Structures.delete_ops` in the string's own batch.

Expiry: a collection's TTL is its header record's expiry, mirrored in ``expire_ms``. An
expired collection is invisible at once and deleted (its records tombstoned) when next
touched or by :meth:`Structures.purge_expired`, except in a store that holds expired keys for
its master (``Store.hold_expired``: a replica waits for the master's ``DEL``, as for strings).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, TypeVar

from ..errors import Error
from .collection import KINDS, Collection
from .encoding import (
    FORMAT,
    HEADER,
    LIST,
    PREFIX,
    element_key,
    header_key,
    header_value,
    is_internal,
    parse,
)

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("bitkv.structures")

_C = TypeVar("_C", bound=Collection)
Op = tuple[bytes, "bytes | None", "int | None"]  # store key, value (None: delete), expiry ms
ORPHAN_BATCH = 10_000  # tombstones per batch when load removes records no header owns


class WrongTypeError(Error):
    """The key holds another kind of value (Redis's WRONGTYPE)."""

    def __init__(self) -> None:
        super().__init__("WRONGTYPE Operation against a key holding the wrong kind of value")


class ReservedKeyError(Error, ValueError):
    """A key in the range reserved for the collections' own records."""

    def __init__(self, key: bytes) -> None:
        super().__init__(f"keys starting with {PREFIX!r} are reserved for bitkv's collection "
                         f"records (key {key[:40]!r})")


def check_user_key(key: bytes) -> None:
    """Raise :class:`ReservedKeyError` for a key a client may not write or name."""
    if key.startswith(PREFIX):
        raise ReservedKeyError(key)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _length_after(c: Collection, staged: dict[bytes, bytes | None]) -> int:
    """``c``'s length once ``staged`` (sub -> value, None: delete) is written."""
    n = len(c)
    has = c.has
    for sub, value in staged.items():
        if value is None:
            if has(sub):
                n -= 1
        elif not has(sub):
            n += 1
    return n


class Edit:
    """Staged changes to one collection, written as one batch by :meth:`commit` (or on
    leaving a ``with`` block without an exception). ``collection`` is the index as it was
    before the edit (a new, empty one for a collection being created): the type code reads it
    to decide what to stage; staged changes show in it only after the commit."""

    __slots__ = ("_new", "_staged", "_structures", "collection")

    def __init__(self, structures: Structures, collection: Collection, new: bool) -> None:
        self._structures = structures
        self.collection = collection
        self._new = new
        self._staged: dict[bytes, bytes | None] = {}

    def put(self, sub: bytes, value: bytes) -> None:
        element_key(self.collection.prefix, sub)  # the length check, before anything is written
        self._staged[sub] = value

    def delete(self, sub: bytes) -> None:
        self._staged[sub] = None

    def __len__(self) -> int:
        return len(self._staged)

    def commit(self) -> None:
        staged, self._staged = self._staged, {}
        if staged:
            self._structures._commit_edit(self.collection, self._new, staged)

    def __enter__(self) -> Edit:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()


class Structures:
    """The hashes, sets, lists and sorted sets of ``store`` (built from its records now)."""

    def __init__(self, store: Store, *, clock: Callable[[], int] = _now_ms) -> None:
        self._db = store
        self._clock = clock
        self._collections: dict[bytes, Collection] = {}
        self._expiring: dict[bytes, None] = {}  # the collections with an expiry
        # WATCH: the stamp of each collection's last write (a serial, larger at every write
        # of any collection; none yet: loaded so and unchanged since).
        self._stamps: dict[bytes, int] = {}
        self._serial = 0
        # DBSIZE: how many records the collections hold, kept up to date lazily: a write
        # marks the names it touched, record_count() recounts just those.
        self._counted: dict[bytes, int] = {}
        self._records = 0
        self._dirty: set[bytes] = set()
        self.orphans_removed = 0
        self.malformed = 0
        self.load()

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> None:
        """(Re)build the index from the store's records (after open, a full resync, a flush).

        Element records without a live header of their type (their collection expired or was
        dropped while the store was closed, or a failed write left them) are removed, unless
        the store is read-only or holds expired keys for a master.
        """
        db = self._db
        collections: dict[bytes, Collection] = {}
        internal = db.keys(PREFIX).snapshot()
        elements: list[tuple[bytes, bytes, bytes, bytes]] = []
        orphans: list[bytes] = []
        malformed = 0
        for ik in internal:
            parsed = parse(ik)
            if parsed is None:
                malformed += 1
                continue
            type_byte, key, sub = parsed
            if sub is not None:
                elements.append((ik, type_byte, key, sub))
                continue
            got = db.get_with_expiry(ik)
            if got is None:
                continue
            value, expiry = got
            cls = KINDS.get(value[:1])
            if cls is None or len(value) != 2 or value[1] != FORMAT:
                malformed += 1
                continue
            c = cls(key)
            c.expire_ms = expiry
            collections[key] = c
        # A list's positions in ascending order, so that each load is an append (the keydir
        # iterates in no particular order: in hash order a list's load would be O(n^2)).
        elements.sort(key=lambda e: e[3] if e[1] == LIST else b"")
        for ik, type_byte, key, sub in elements:
            owner = collections.get(key)
            if owner is None or type_byte != owner.TYPE:
                orphans.append(ik)
                continue
            if owner.NEEDS_VALUE:
                v = db.get(ik)
                if v is None:
                    continue
                try:
                    owner.on_put(sub, v)
                except ValueError:
                    malformed += 1
            else:
                try:
                    owner.on_put(sub, b"")
                except ValueError:  # a list position of the wrong length
                    malformed += 1
        for key, c in list(collections.items()):
            if not len(c):  # a header without elements: nothing a write leaves
                orphans.append(header_key(key))
                del collections[key]
        # In place: the server's hot path holds this dict (:attr:`names`).
        self._collections.clear()
        self._collections.update(collections)
        self._expiring = {k: None for k, c in collections.items() if c.expire_ms}
        self._stamps.clear()
        self._counted = {k: len(c) + 1 for k, c in collections.items()}
        self._records = sum(self._counted.values())
        self._dirty.clear()
        if malformed:
            log.warning("%d malformed collection record(s) ignored", malformed)
        self.malformed = malformed
        if orphans and not db.readonly and not db.hold_expired:
            for i in range(0, len(orphans), ORPHAN_BATCH):
                with db.batch() as b:
                    for ik in orphans[i:i + ORPHAN_BATCH]:
                        b.delete(ik)
            log.info("removed %d collection record(s) no live collection owns", len(orphans))
            self.orphans_removed += len(orphans)

    # -- the keyspace ---------------------------------------------------------------------------

    def _live(self, key: bytes) -> Collection | None:
        c = self._collections.get(key)
        if c is not None and c.expire_ms and c.expire_ms <= self._clock():
            if not self._db.hold_expired:
                self._drop(c)
                return None
            if not self._db.sees_expired:
                return None
        return c

    @property
    def names(self) -> Mapping[bytes, Collection]:
        """Every indexed collection by name, expired ones included until they are deleted:
        a key not in it is certainly not a collection (the server's SET checks this before
        taking its fast path). The same mapping object for the life of this instance."""
        return self._collections

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self._live(key) is not None

    def __bool__(self) -> bool:
        return bool(self._collections)

    def __len__(self) -> int:
        """How many live collections."""
        self.purge_expired()
        return len(self._collections)

    def keys(self) -> list[bytes]:
        """The live collections' names."""
        self.purge_expired()
        return list(self._collections)

    def type_name(self, key: bytes) -> str:
        """``"none"``, ``"string"``, ``"hash"``, ``"set"``, ``"list"`` or ``"zset"``."""
        c = self._live(key)
        if c is not None:
            return c.NAME
        try:
            return "string" if key in self._db else "none"
        except ValueError:
            return "none"

    def collection(self, key: bytes) -> Collection | None:
        """The live collection named ``key`` of any type, None if there is none."""
        return self._live(key)

    def find(self, key: bytes, cls: type[_C]) -> _C | None:
        """The live collection ``key`` of type ``cls``, None if there is no such key; raises
        :class:`WrongTypeError` if ``key`` holds a string or another type."""
        c = self._live(key)
        if c is None:
            if self._string_exists(key):
                raise WrongTypeError()
            return None
        if type(c) is not cls:
            raise WrongTypeError()
        return c

    def _string_exists(self, key: bytes) -> bool:
        try:
            return key in self._db
        except ValueError:
            return False

    def edit(self, key: bytes, cls: type[_C]) -> Edit:
        """An :class:`Edit` of collection ``key`` of type ``cls``, created (empty) if absent;
        raises :class:`WrongTypeError` as :meth:`find`, :class:`ReservedKeyError` for a name in
        the reserved range."""
        c = self.find(key, cls)
        if c is not None:
            return Edit(self, c, False)
        check_user_key(key)
        return Edit(self, cls(key), True)

    def remove(self, key: bytes, cls: type[Collection], subs: Iterable[bytes]) -> int:
        """Delete those of ``subs`` that collection ``key`` (of type ``cls``) holds, each once,
        in one edit (HDEL, SREM, ZREM); how many were deleted, 0 if there is no such key.
        Raises :class:`WrongTypeError` as :meth:`find`."""
        c = self.find(key, cls)
        if c is None:
            return 0
        deleted = 0
        with Edit(self, c, False) as e:
            for sub in dict.fromkeys(subs):  # a sub named twice is deleted (and counted) once
                if c.has(sub):
                    e.delete(sub)
                    deleted += 1
        return deleted

    def read(self, c: Collection, sub: bytes) -> bytes | None:
        """The value of element ``sub`` of ``c`` (None if the store no longer has it)."""
        return self._db.get(c.prefix + sub)

    def read_many(self, c: Collection, subs: Iterable[bytes]) -> list[bytes | None]:
        get, prefix = self._db.get, c.prefix
        return [get(prefix + s) for s in subs]

    # -- writes -----------------------------------------------------------------------------

    def _commit_edit(self, c: Collection, new: bool, staged: dict[bytes, bytes | None]) -> None:
        ops, remaining = self._edit_ops(c, new, staged)
        if ops:
            self.write(ops, (c.key,))
            self._apply_edit(c, new, staged, remaining)

    def _edit_ops(self, c: Collection, new: bool, staged: dict[bytes, bytes | None]
                  ) -> tuple[list[Op], int]:
        """The ops that write ``staged`` to ``c`` ([] when there is nothing to write), and
        the collection's length after them."""
        remaining = _length_after(c, staged)
        prefix = c.prefix
        ops: list[Op] = [(prefix + sub, value, None) for sub, value in staged.items()]
        if remaining == 0:
            if new:
                return [], 0  # nothing was there and nothing stays: no write at all
            ops.append((header_key(c.key), None, None))
        elif new:
            ops.append((header_key(c.key), header_value(c.TYPE), None))
        return ops, remaining

    def _apply_edit(self, c: Collection, new: bool, staged: dict[bytes, bytes | None],
                    remaining: int) -> None:
        """Bring the index up to date once ``staged`` is written."""
        for sub, value in staged.items():
            if value is None:
                c.on_delete(sub)
            else:
                c.on_put(sub, value)
        if remaining == 0:
            self.forget(c.key)
        elif new:
            self._collections[c.key] = c

    def commit_edits(self, edits: Iterable[Edit]) -> None:
        """Write the staged changes of several edits, each of a different collection, as ONE
        batch, then apply them to the index: for a command that changes two keys and must
        not be half done after a crash (SMOVE, LMOVE). Each edit is left empty, as after
        :meth:`Edit.commit`; an edit with nothing staged writes nothing."""
        pending: list[tuple[Collection, bool, dict[bytes, bytes | None], int]] = []
        ops: list[Op] = []
        keys: set[bytes] = set()
        for e in edits:
            if e.collection.key in keys:
                raise ValueError(f"two edits of collection {e.collection.key!r} in one batch")
            keys.add(e.collection.key)
            staged, e._staged = e._staged, {}
            edit_ops, remaining = self._edit_ops(e.collection, e._new, staged)
            if edit_ops:
                ops.extend(edit_ops)
                pending.append((e.collection, e._new, staged, remaining))
        if ops:
            # only the collections that change count as written (WATCH): SMOVE of a member
            # the destination already has leaves the destination alone, as in Redis
            self.write(ops, [p[0].key for p in pending])
        for c, new, staged, remaining in pending:
            self._apply_edit(c, new, staged, remaining)

    def write(self, ops: list[Op], names: Iterable[bytes] | None = None) -> None:
        """Write ``ops`` as one atomic batch (key, value or None to delete, absolute expiry
        ms or None). Every collection whose records are among them counts as written
        (:meth:`version`, :meth:`record_count`): ``names`` if the caller knows them (an
        edit of one collection: saves reading them from the ops' keys, about 1 us), marked
        before the write: a write that then fails costs a WATCH a needless abort and DBSIZE
        a recount, never a missed change."""
        self._serial += 1
        serial, stamps, dirty = self._serial, self._stamps, self._dirty
        for name in _touched(ops) if names is None else names:
            stamps[name] = serial
            dirty.add(name)
        if len(ops) == 1:
            # One record is atomic by itself; a plain put takes the store's compiled path
            # (HSET of one field on an existing hash: about half the CPU of a batch).
            k, v, expiry = ops[0]
            if v is None:
                self._db.delete(k)
            elif expiry:
                self._db.put(k, v, expires_at_ms=expiry)
            else:
                self._db.put(k, v)
            return
        with self._db.batch() as b:
            for k, v, expiry in ops:
                if v is None:
                    b.delete(k)
                elif expiry:
                    b.put(k, v, expires_at_ms=expiry)
                else:
                    b.put(k, v)

    def delete_ops(self, key: bytes) -> list[Op]:
        """The ops that delete collection ``key`` (its elements, then its header); [] if
        there is none. For a caller that writes them in its own batch, then calls
        :meth:`forget`."""
        c = self._collections.get(key)
        if c is None:
            return []
        prefix = c.prefix
        ops: list[Op] = [(prefix + sub, None, None) for sub in c.subs()]
        ops.append((header_key(key), None, None))
        return ops

    def forget(self, key: bytes) -> None:
        """Drop ``key`` from the index once its :meth:`delete_ops` are written."""
        self._collections.pop(key, None)
        self._expiring.pop(key, None)
        self._stamps.pop(key, None)
        self._dirty.add(key)

    def version(self, key: bytes) -> int | None:
        """What WATCH compares for collection ``key``: None if there is no live collection
        of that name, else a number that changes with every write to it (elements, expiry;
        a collection deleted and created again gets a new one), 0 for one unchanged since
        the store was opened."""
        if self._live(key) is None:
            return None
        return self._stamps.get(key, 0)

    def record_count(self) -> int:
        """How many store records the indexed collections hold (headers and elements), so
        that a count of the store's keys can leave them out (DBSIZE). Amortised O(1): each
        call recounts only the collections written since the last."""
        dirty = self._dirty
        if dirty:
            counted, collections = self._counted, self._collections
            total = self._records
            for name in dirty:
                c = collections.get(name)
                now = len(c) + 1 if c is not None else 0
                total += now - counted.pop(name, 0)
                if now:
                    counted[name] = now
            self._records = total
            dirty.clear()
        return self._records

    def delete(self, key: bytes) -> bool:
        """Delete collection ``key``; True if a live one was deleted."""
        c = self._live(key)
        if c is None:
            return False
        self._drop(c)
        return True

    def _drop(self, c: Collection) -> None:
        self.write(self.delete_ops(c.key))
        self.forget(c.key)

    def copy_ops(self, c: Collection, dst: bytes, expire_ms: int) -> tuple[list[Op], Collection]:
        """The ops that write a copy of ``c`` named ``dst`` (expiring at ``expire_ms``, 0:
        never), and the copy's index, to install with :meth:`install` once they are written."""
        check_user_key(dst)
        clone = type(c)(dst)
        clone.expire_ms = expire_ms
        clone.converted = c.converted
        ops: list[Op] = []
        for sub in c.subs():
            v = self.read(c, sub)
            if v is None:
                continue
            ops.append((element_key(clone.prefix, sub), v, None))
            clone.on_put(sub, v)
        ops.append((header_key(dst), header_value(c.TYPE), expire_ms or None))
        return ops, clone

    def replace_ops(self, key: bytes, cls: type[_C], elements: Iterable[tuple[bytes, bytes]]
                    ) -> tuple[list[Op], _C | None]:
        """The ops that replace whatever ``key`` holds (a string, a collection of any type,
        nothing) with a new collection of type ``cls`` holding ``elements`` ((sub, value)
        pairs; a later pair for the same sub wins), without expiry, and the new collection's
        index: once the ops are written, :meth:`install` it, or :meth:`forget` ``key`` when
        it is None (no elements: the ops only delete). For the commands that store a result
        over their destination (ZUNIONSTORE, SINTERSTORE...)."""
        check_user_key(key)
        ops: list[Op] = list(self.delete_ops(key))
        if not ops and self._string_exists(key):
            ops.append((key, None, None))
        fresh = cls(key)
        staged: dict[bytes, bytes] = {}
        for sub, value in elements:
            element_key(fresh.prefix, sub)  # the length check, before anything is written
            staged[sub] = value
        if not staged:
            return ops, None
        puts: list[Op] = [(fresh.prefix + sub, value, None) for sub, value in staged.items()]
        puts.append((header_key(key), header_value(cls.TYPE), None))
        if ops:  # a record rewritten under the same key: one op, not a delete and a put
            rewritten = {k for k, _v, _e in puts}
            ops = [op for op in ops if op[0] not in rewritten]
        ops.extend(puts)
        for sub, value in staged.items():
            fresh.on_put(sub, value)
        return ops, fresh

    def install(self, c: Collection) -> None:
        """Put ``c`` (from :meth:`copy_ops`) in the index, its ops being written."""
        self._collections[c.key] = c
        self._serial += 1
        self._stamps[c.key] = self._serial
        self._dirty.add(c.key)
        if c.expire_ms:
            self._expiring[c.key] = None
        else:
            self._expiring.pop(c.key, None)

    def expire_at(self, key: bytes, at_ms: int | None) -> bool:
        """Set (``at_ms``) or remove (None) collection ``key``'s expiry; False if none."""
        c = self._live(key)
        if c is None:
            return False
        hk = header_key(key)
        if at_ms is None:
            self._db.put(hk, header_value(c.TYPE))
            c.expire_ms = 0
            self._serial += 1
            self._stamps[key] = self._serial
            self._expiring.pop(key, None)
        else:
            self._db.put(hk, header_value(c.TYPE), expires_at_ms=at_ms)
            c.expire_ms = at_ms
            self._serial += 1
            self._stamps[key] = self._serial
            self._expiring[key] = None
            if at_ms <= self._clock():
                self._live(key)  # already expired: deleted now (as Redis's EXPIRE in the past)
        return True

    def purge_expired(self, limit: int | None = None) -> int:
        """Delete up to ``limit`` expired collections (all when None); how many."""
        if self._db.hold_expired or not self._expiring:
            return 0
        now = self._clock()
        collections = self._collections
        expired = [c for c in map(collections.get, self._expiring)
                   if c is not None and c.expire_ms and c.expire_ms <= now]
        if limit is not None:
            expired = expired[:limit]
        for c in expired:
            self._drop(c)
        return len(expired)

    def items(self) -> Iterator[Collection]:
        """The live collections (a snapshot; expired ones are deleted first)."""
        self.purge_expired()
        return iter(list(self._collections.values()))


_AFTER_PREFIX = len(PREFIX)  # where a header's b"h" or an element's b"e" is
_NAME_LENGTH = _AFTER_PREFIX + 2  # an element's name length (varint), after b"e" and the type
_HEADER_BYTE = HEADER[-1]


def _touched(ops: list[Op]) -> set[bytes]:
    """The names of the collections whose records ``ops`` write: one look per run of one
    collection's element keys, without :func:`parse` for names shorter than 128 bytes."""
    names: set[bytes] = set()
    run = PREFIX + b"-"  # the element-key prefix of the last collection seen (none yet)
    for op in ops:
        k = op[0]
        if k.startswith(run) or not k.startswith(PREFIX) or len(k) <= _NAME_LENGTH:
            continue
        if k[_AFTER_PREFIX] == _HEADER_BYTE:
            names.add(k[_AFTER_PREFIX + 1:])
            continue
        n = k[_NAME_LENGTH]
        if 0 < n < 0x80:  # a one-byte varint: the name follows it
            end = _NAME_LENGTH + 1 + n
            names.add(k[_NAME_LENGTH + 1:end])
            run = k[:end]
            continue
        parsed = parse(k)
        if parsed is not None:
            _type, name, sub = parsed
            names.add(name)
            if sub is not None:
                run = k[:len(k) - len(sub)]
    return names


__all__ = ["Edit", "ReservedKeyError", "Structures", "WrongTypeError", "check_user_key",
           "is_internal"]
