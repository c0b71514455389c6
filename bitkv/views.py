"""Views over a store: JSON documents (:class:`JsonView`), key prefixes (:class:`Namespace`),
and the ``keys()`` / ``values()`` / ``items()`` views of a store or namespace
(:class:`KeysView`, :class:`ValuesView`, :class:`ItemsView`).

Both are thin, stateless wrappers: every call goes straight to the underlying
:class:`bitkv.Store` (so atomicity, TTLs and thread safety are the store's), and they may be
created as often as convenient (``db.json``, ``db.namespace(b"session:")``).

JSON is encoded strictly, with the standard :mod:`json` module: compact separators, no NaN or
infinities, and only JSON types (dict, list, str, int, float, bool, None) -- anything else,
bytes included, is a ``TypeError``. A stored value that is not strict JSON raises
:class:`InvalidJSONError` naming the key. Nothing here ever unpickles anything.
"""

from __future__ import annotations

import collections.abc
import json
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from . import record as rec
from .batch import Batch
from .errors import Error
from .validate import KeyLike, ValueLike, key_batch, to_key, to_prefix

if TYPE_CHECKING:  # annotations only: the store imports this module (Store.json/namespace)
    from .store import Store

__all__ = ["InvalidJSONError", "ItemsView", "JsonView", "KeysView", "Namespace",
           "NamespaceBatch", "ValuesView"]

_MISSING: Any = object()
_V = TypeVar("_V")


# -- keys(), values(), items() ---------------------------------------------------------------


class _Readable(Protocol):
    """What a view reads values through: a Store, a Namespace or a JsonView."""

    def get(self, key: KeyLike, default: Any = None) -> Any: ...
    def __contains__(self, key: object) -> bool: ...


class KeysView(collections.abc.KeysView[bytes]):
    """The live keys of a store (or namespace), optionally only those under a prefix.

    Like a dict's view it is live, not a copy: each iteration, ``len`` and ``in`` reflects
    the store at that moment, and it can be iterated any number of times. Making one costs
    nothing. An iteration lists the keys live when it starts (one pass over the index, no
    value read; with a prefix, only the keys under it are copied out of the index) and skips
    those deleted or expired before they are reached, in no particular order. ``len`` counts
    without listing: O(1) for a whole store, one pass over the index for a prefix. ``in`` is
    a key lookup. Set operations (``&``, ``|``, ``-``, ``^``) give sets, as with dict views.
    """

    __slots__ = ("_count", "_prefix", "_snapshot", "_source")

    def __init__(self, source: _Readable, prefix: bytes | None,
                 snapshot: Callable[[], list[bytes]], count: Callable[[], int]) -> None:
        # MappingView.__init__ is not called: its _mapping would have to be a Mapping, and a
        # JsonView reads through the same views.
        self._source = source
        self._prefix = prefix
        self._snapshot = snapshot  # the keys live now (may include some that expire meanwhile)
        self._count = count  # how many keys iteration would yield now

    @property
    def prefix(self) -> bytes | None:
        """The prefix every key of the view starts with (None: every key)."""
        return self._prefix

    def __len__(self) -> int:
        return self._count()

    def __iter__(self) -> Iterator[bytes]:
        source = self._source
        for k in self._snapshot():
            if k in source:  # deleted or expired since the snapshot: skipped
                yield k

    def snapshot(self) -> list[bytes]:
        """The keys indexed now, as a list made in one pass: unlike an iteration, not
        re-checked one by one, so some may be deleted or expire before they are used."""
        return self._snapshot()

    def _matches(self, key: object) -> bool:
        if self._prefix is None:
            return True
        try:
            return to_key(key).startswith(self._prefix)
        except (TypeError, ValueError):
            return False

    def __contains__(self, key: object) -> bool:
        if not self._matches(key):
            return False
        try:
            return key in self._source
        except (TypeError, ValueError):  # not a key at all (wrong type, empty, too long)
            return False

    def __repr__(self) -> str:
        where = "" if self._prefix is None else f" with prefix {self._prefix!r}"
        return f"<bitkv.KeysView{where} of {self._source!r}>"


class ValuesView(collections.abc.ValuesView[_V], Generic[_V]):
    """The values of a :class:`KeysView`'s keys: live, iterable more than once, ``len``.

    ``in`` reads every value until it finds a match (as with any values view).
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: KeysView) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[_V]:
        source = self._keys._source
        for k in self._keys._snapshot():
            value = source.get(k, _MISSING)
            if value is not _MISSING:  # deleted or expired since the snapshot: skipped
                yield value

    def __contains__(self, value: object) -> bool:
        return any(v == value for v in self)

    def __repr__(self) -> str:
        return f"<bitkv.ValuesView of {self._keys!r}>"


class ItemsView(collections.abc.ItemsView[bytes, _V], Generic[_V]):
    """(key, value) pairs of a :class:`KeysView`'s keys: live, iterable more than once,
    ``len``; ``(k, v) in items`` reads the one value."""

    __slots__ = ("_keys",)

    def __init__(self, keys: KeysView) -> None:
        self._keys = keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[tuple[bytes, _V]]:
        source = self._keys._source
        for k in self._keys._snapshot():
            value = source.get(k, _MISSING)
            if value is not _MISSING:
                yield k, value

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        key, value = item
        if not self._keys._matches(key):
            return False
        try:
            found = self._keys._source.get(key, _MISSING)
        except (TypeError, ValueError):
            return False
        return found is not _MISSING and bool(found == value)

    def __repr__(self) -> str:
        return f"<bitkv.ItemsView of {self._keys!r}>"


class InvalidJSONError(Error, ValueError):
    """A stored value read through a :class:`JsonView` is not strict JSON."""


def encode_json(obj: object) -> bytes:
    """Return ``obj`` as compact, strict JSON in UTF-8 (TypeError/ValueError if it is not)."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(key: bytes, data: bytes) -> Any:
    """Parse stored ``data``; raise :class:`InvalidJSONError` naming ``key`` if it is not JSON."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, NaN
        raise InvalidJSONError(f"value of key {key!r} is not valid JSON: {exc}") from None


class _KVBackend(Protocol):
    """What a JsonView needs from the object it wraps (a Store or a Namespace)."""

    def get(self, key: KeyLike, default: Any = None) -> Any: ...
    def get_many(self, keys: Iterable[KeyLike], default: Any = None) -> list[Any]: ...
    def put(self, key: KeyLike, value: ValueLike, *, ttl: float | None = None,
            if_absent: bool = False, if_present: bool = False, keep_ttl: bool = False
            ) -> bool: ...
    def delete(self, key: KeyLike) -> bool: ...
    def keys(self, prefix: KeyLike | None = None) -> KeysView: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...


class JsonView:
    """Stores JSON documents in a store (or a :class:`Namespace`): ``db.json.put(k, {...})``.

    Keys are as in the store (bytes; str is UTF-8 encoded) and come back as bytes. Values are
    any JSON-encodable object; ``get`` returns what ``json.loads`` makes of the stored bytes
    (so tuples come back as lists and non-str dict keys as str, as with :mod:`json`).
    """

    __slots__ = ("_kv",)

    def __init__(self, store: Store | Namespace) -> None:
        self._kv: _KVBackend = store

    @property
    def store(self) -> Store | Namespace:
        """The store (or namespace) the documents are kept in."""
        return self._kv  # type: ignore[return-value]

    def get(self, key: KeyLike, default: Any = None) -> Any:
        """Return the decoded document of ``key``, or ``default`` if it is missing or expired."""
        data = self._kv.get(key, _MISSING)
        if data is _MISSING:
            return default
        return decode_json(to_key(key), data)

    def get_many(self, keys: Iterable[KeyLike], default: Any = None) -> list[Any]:
        """The decoded documents of ``keys``, in order (``default`` for a key that is missing
        or expired): :meth:`get` for each key, read through the store's
        :meth:`bitkv.Store.get_many` (so as it promises: not atomic); a value that is not
        JSON raises :class:`InvalidJSONError` naming its key."""
        batch = tuple(key_batch(keys, "get_many"))
        data = self._kv.get_many(batch, _MISSING)
        return [default if d is _MISSING else decode_json(to_key(k), d)
                for k, d in zip(batch, data, strict=True)]

    def put(self, key: KeyLike, obj: object, *, ttl: float | None = None,
            if_absent: bool = False, if_present: bool = False, keep_ttl: bool = False) -> bool:
        """Encode ``obj`` as JSON and store it; the options and result are those of
        :meth:`bitkv.Store.put`. Raises TypeError (nothing is written) for non-JSON types."""
        return self._kv.put(key, encode_json(obj), ttl=ttl, if_absent=if_absent,
                            if_present=if_present, keep_ttl=keep_ttl)

    def delete(self, key: KeyLike) -> bool:
        """Delete ``key``; True if a live document was deleted (as :meth:`bitkv.Store.delete`)."""
        return self._kv.delete(key)

    def __getitem__(self, key: KeyLike) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __setitem__(self, key: KeyLike, obj: object) -> None:
        self.put(key, obj)

    def __delitem__(self, key: KeyLike) -> None:
        if not self._kv.delete(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return key in self._kv

    def __len__(self) -> int:
        return len(self._kv)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._kv.keys())

    def keys(self, prefix: KeyLike | None = None) -> KeysView:
        """The live keys (optionally only those under ``prefix``): a :class:`KeysView`."""
        return self._kv.keys(prefix)

    def _documents(self, prefix: KeyLike | None) -> KeysView:
        keys = self._kv.keys(prefix)
        # The same keys, their values read through this view (so decoded).
        return KeysView(self, keys.prefix, keys._snapshot, keys._count)

    def values(self, prefix: KeyLike | None = None) -> ValuesView[Any]:
        """The decoded documents of live keys: a :class:`ValuesView` (len, iterable again)."""
        return ValuesView(self._documents(prefix))

    def items(self, prefix: KeyLike | None = None) -> ItemsView[Any]:
        """(key, document) of live keys, optionally only those under ``prefix``: an
        :class:`ItemsView` (len, iterable again); a document that is not JSON raises
        :class:`InvalidJSONError` when reached."""
        return ItemsView(self._documents(prefix))

    def __repr__(self) -> str:
        return f"<bitkv.JsonView of {self._kv!r}>"


def _to_prefix(prefix: object) -> bytes:
    if isinstance(prefix, str):
        p = prefix.encode("utf-8")
    elif isinstance(prefix, (bytes, bytearray, memoryview)):
        p = bytes(prefix)
    else:
        raise TypeError(f"namespace prefix must be bytes or str, not {type(prefix).__name__}")
    if not p:
        raise ValueError("namespace prefix must not be empty")
    if len(p) >= rec.MAX_KEY_SIZE:
        raise ValueError(f"namespace prefix is {len(p)} bytes; it must leave room for a key "
                         f"within the {rec.MAX_KEY_SIZE}-byte limit")
    return p


class Namespace(MutableMapping[bytes, bytes]):
    """The keys of a store that start with ``prefix``, addressed without it.

    ``ns = db.namespace(b"session:")``: ``ns[b"42"]`` is ``db[b"session:42"]``; keys are
    given and returned without the prefix; ``len``, iteration, ``keys``, ``items`` and
    ``clear`` see only keys under the prefix (a key equal to the prefix itself, which no
    namespace key can name, is not one of them). Every operation keeps the store's
    semantics: ``incr``, ``compare_and_set``, ``get_and_delete``, conditional ``put`` and
    batches are as atomic as on the store. ``len`` scans the store's index (O(store keys)).
    """

    def __init__(self, store: Store | Namespace, prefix: KeyLike) -> None:
        p = _to_prefix(prefix)
        if isinstance(store, Namespace):  # nest by concatenating the prefixes
            p = store.prefix + p
            store = store.store
            if len(p) >= rec.MAX_KEY_SIZE:
                raise ValueError(f"nested namespace prefix is {len(p)} bytes; it must leave "
                                 f"room for a key within the {rec.MAX_KEY_SIZE}-byte limit")
        self._store: Store = store
        self._prefix: bytes = p

    @property
    def prefix(self) -> bytes:
        """The prefix every key of the namespace has in the store."""
        return self._prefix

    @property
    def store(self) -> Store:
        """The store the namespace is a view of."""
        return self._store

    # -- keys --------------------------------------------------------------------------------

    def _full(self, key: object) -> bytes:
        k = to_key(key)
        full = self._prefix + k
        if len(full) > rec.MAX_KEY_SIZE:
            raise ValueError(f"key is {len(k)} bytes; with the {len(self._prefix)}-byte "
                             f"namespace prefix the limit is "
                             f"{rec.MAX_KEY_SIZE - len(self._prefix)} bytes")
        return full

    def _sub_prefix(self, prefix: KeyLike | None) -> bytes:
        if prefix is None:
            return self._prefix
        if isinstance(prefix, str):
            return self._prefix + prefix.encode("utf-8")
        if isinstance(prefix, (bytes, bytearray, memoryview)):
            return self._prefix + bytes(prefix)
        raise TypeError(f"prefix must be bytes or str, not {type(prefix).__name__}")

    def keys(self, prefix: KeyLike | None = None) -> KeysView:
        """The live keys of the namespace (without its prefix), optionally only those
        starting with ``prefix``: a :class:`KeysView`, as :meth:`bitkv.Store.keys`."""
        relative = None if prefix is None else to_prefix(prefix)
        full = self._sub_prefix(prefix)
        inner = self._store.keys(full)
        cut = len(self._prefix)

        def snapshot() -> list[bytes]:
            # The key equal to the prefix itself is no key of the namespace (it has no name).
            return [k[cut:] for k in inner._snapshot() if len(k) > cut]

        def count() -> int:
            n = len(inner)
            if full == self._prefix and self._prefix in self._store:
                n -= 1
            return n

        return KeysView(self, relative or None, snapshot, count)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys())

    def __len__(self) -> int:
        """The number of live keys under the prefix (one pass over the store's index)."""
        return len(self.keys())

    def items(self, prefix: KeyLike | None = None) -> ItemsView[bytes]:
        """(key, value) pairs of the namespace's live keys: an :class:`ItemsView`."""
        return ItemsView(self.keys(prefix))

    def values(self, prefix: KeyLike | None = None) -> ValuesView[bytes]:
        """The values of the namespace's live keys: a :class:`ValuesView`."""
        return ValuesView(self.keys(prefix))

    # -- the mapping API ---------------------------------------------------------------------

    def get(self, key: KeyLike, default: Any = None) -> Any:
        """As :meth:`bitkv.Store.get`, for ``key`` under the prefix."""
        return self._store.get(self._full(key), default)

    def get_many(self, keys: Iterable[KeyLike], default: Any = None) -> list[Any]:
        """As :meth:`bitkv.Store.get_many`, for ``keys`` under the prefix (each key checked
        as :meth:`get` checks it, before any is read)."""
        full = self._full
        return self._store.get_many([full(k) for k in key_batch(keys, "get_many")], default)

    def __getitem__(self, key: KeyLike) -> bytes:
        value = self._store.get(self._full(key))
        if value is None:  # stored values are bytes, so None means missing or expired
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self._full(key) in self._store

    def put(self, key: KeyLike, value: ValueLike, *, ttl: float | None = None,
            if_absent: bool = False, if_present: bool = False, keep_ttl: bool = False) -> bool:
        """As :meth:`bitkv.Store.put`, for ``key`` under the prefix."""
        return self._store.put(self._full(key), value, ttl=ttl, if_absent=if_absent,
                               if_present=if_present, keep_ttl=keep_ttl)

    def __setitem__(self, key: KeyLike, value: ValueLike) -> None:
        self._store.put(self._full(key), value)

    def delete(self, key: KeyLike) -> bool:
        """As :meth:`bitkv.Store.delete`, for ``key`` under the prefix."""
        return self._store.delete(self._full(key))

    def __delitem__(self, key: KeyLike) -> None:
        if not self._store.delete(self._full(key)):
            raise KeyError(key)

    def clear(self) -> None:
        """Delete every key of the namespace (in batches of 1000; not atomic as a whole)."""
        keys = list(self._store.keys(self._prefix))
        cut = len(self._prefix)
        for start in range(0, len(keys), 1000):
            with self._store.batch() as b:
                for k in keys[start : start + 1000]:
                    if len(k) > cut:
                        b.delete(k)

    # -- atomic read-modify-write ------------------------------------------------------------

    def incr(self, key: KeyLike, delta: int = 1, *, ttl: float | None = None) -> int:
        """As :meth:`bitkv.Store.incr`, for ``key`` under the prefix."""
        return self._store.incr(self._full(key), delta, ttl=ttl)

    def compare_and_set(self, key: KeyLike, expected: ValueLike | None, new: ValueLike, *,
                        ttl: float | None = None) -> bool:
        """As :meth:`bitkv.Store.compare_and_set`, for ``key`` under the prefix."""
        return self._store.compare_and_set(self._full(key), expected, new, ttl=ttl)

    def get_and_delete(self, key: KeyLike) -> bytes | None:
        """As :meth:`bitkv.Store.get_and_delete`, for ``key`` under the prefix."""
        return self._store.get_and_delete(self._full(key))

    def pop(self, key: KeyLike, default: Any = _MISSING) -> Any:
        """As :meth:`dict.pop`: remove ``key`` and return its value, else ``default`` (KeyError
        without one)."""
        value = self._store.get_and_delete(self._full(key))
        if value is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    def setdefault(self, key: KeyLike, default: ValueLike = b"") -> bytes:
        """As :meth:`dict.setdefault`: the value of ``key``, storing ``default`` first if it is
        missing."""
        return self._store.setdefault(self._full(key), default)

    def get_with_ttl(self, key: KeyLike) -> tuple[bytes, float | None] | None:
        """As :meth:`bitkv.Store.get_with_ttl`, for ``key`` under the prefix."""
        return self._store.get_with_ttl(self._full(key))

    # -- TTL ---------------------------------------------------------------------------------

    def ttl(self, key: KeyLike) -> float | None:
        """Seconds until ``key`` expires (None: never); KeyError if missing or expired."""
        try:
            return self._store.ttl(self._full(key))
        except KeyError:
            raise KeyError(key) from None

    def expire(self, key: KeyLike, ttl: float) -> bool:
        """As :meth:`bitkv.Store.expire`, for ``key`` under the prefix."""
        return self._store.expire(self._full(key), ttl)

    def persist(self, key: KeyLike) -> bool:
        """As :meth:`bitkv.Store.persist`, for ``key`` under the prefix."""
        return self._store.persist(self._full(key))

    # -- derived views -----------------------------------------------------------------------

    def batch(self) -> NamespaceBatch:
        """An atomic batch whose keys are given without the prefix (see Store.batch)."""
        return NamespaceBatch(self, self._store.batch())

    def namespace(self, prefix: KeyLike) -> Namespace:
        """A namespace nested in this one: its prefix is this prefix + ``prefix``."""
        return Namespace(self, prefix)

    @property
    def json(self) -> JsonView:
        """JSON documents under this namespace's keys."""
        return JsonView(self)

    def __repr__(self) -> str:
        return f"<bitkv.Namespace {self._prefix!r} of {self._store!r}>"


class NamespaceBatch:
    """A :class:`bitkv.Batch` that adds its namespace's prefix to every key."""

    __slots__ = ("_batch", "_ns")

    def __init__(self, namespace: Namespace, batch: Batch) -> None:
        self._ns = namespace
        self._batch = batch

    def put(self, key: KeyLike, value: ValueLike, *, ttl: float | None = None) -> None:
        self._batch.put(self._ns._full(key), value, ttl=ttl)

    def delete(self, key: KeyLike) -> None:
        self._batch.delete(self._ns._full(key))

    def __len__(self) -> int:
        return len(self._batch)

    def commit(self) -> None:
        self._batch.commit()

    def discard(self) -> None:
        self._batch.discard()

    def __enter__(self) -> NamespaceBatch:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
