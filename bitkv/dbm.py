"""The standard :mod:`dbm` interface over a bitkv store.

>>> import bitkv.dbm, shelve
>>> with bitkv.dbm.open("cache", "c") as db:          # doctest: +SKIP
...     db["greeting"] = "hello"                        # str is stored as UTF-8
...     db[b"greeting"]                                 # b'hello'
>>> with shelve.Shelf(bitkv.dbm.open("objs", "c")) as shelf:   # doctest: +SKIP
...     shelf["user:42"] = {"name": "Ada"}              # pickled by shelve, not by bitkv

It behaves like :mod:`dbm.gnu` (the default :func:`dbm.open` backend) wherever the
:mod:`dbm` documentation describes behaviour:

* ``open(file, flag='r', mode=0o666)``. ``flag`` is ``'r'`` (read-only; the store must
  exist), ``'w'`` (read-write; must exist), ``'c'`` (read-write, created if needed) or
  ``'n'`` (read-write, always new: an existing store is emptied). Like :mod:`dbm.gnu`, the
  modifiers ``'f'``, ``'s'`` and ``'u'`` may follow (:data:`open_flags`):

  - ``'s'`` (synchronized): every write is fsynced before it returns (``sync="always"``).
  - ``'f'`` (fast): writes are fsynced only by :meth:`_Database.sync` and ``close``
    (``sync="never"``). Without either, bitkv's default applies: a background fsync at
    least once a second (``sync="interval"``). ``'s'`` wins if both are given.
  - ``'u'`` (no lock) is accepted and has no effect: a read-write bitkv store is always
    locked against a second writer (which gets :class:`error`); a read-only (``'r'``) open
    takes no lock and can read beside a writer.

  ``mode`` is the permission of the files (and, plus search bits, the directory) created for
  a new store, reduced by the umask as usual; an existing store keeps the mode it was created
  with (``mode`` is not applied when a ``fileio`` option is given). Extra keyword arguments
  go to :func:`bitkv.open` (``encryption_key``, ``compression``, ...); ``readonly`` and
  ``create`` are decided by ``flag``.

* ``file`` names a *directory* (a bitkv store), not a single file. Flag ``'n'`` on an
  existing store deletes every key (and compacts) rather than truncating files; on a regular
  file it replaces the file with a new store, as the stdlib backends truncate it. Any other
  path that holds something other than a bitkv store (a directory, a symlink) is never
  overwritten: opening it raises :class:`error`. A missing database opened with ``'r'`` or
  ``'w'`` raises an :class:`error` that is also a ``FileNotFoundError``.

* Keys and values are bytes; ``str`` is encoded as UTF-8. Keys and values come back as
  bytes. Any other type is a ``TypeError``. bitkv keys are 1 to 65,535 bytes: storing an
  empty or longer key raises ``ValueError``, and reading one is simply a missing key.

* A missing key raises ``KeyError``. Writing to a read-only database, any operation on a
  closed one, and every failure of the store underneath raise :class:`error`, which derives
  from both :class:`bitkv.Error` and ``OSError`` -- so ``except bitkv.dbm.error``,
  ``except dbm.error`` (the stdlib tuple includes ``OSError``) and ``except OSError`` all
  catch it, as with :mod:`dbm.gnu`.

The database object is a ``MutableMapping`` with ``keys()`` (a list, like :mod:`dbm.gnu`),
``get``, ``setdefault`` (default ``b""``), ``sync``, ``reorganize`` (compaction), ``close``
and use as a context manager, so ``shelve.Shelf(bitkv.dbm.open(path, "c"))`` works. bitkv
itself never unpickles anything; pickling is shelve's, at the caller's choice.

**Not** ``shelve.open(path)``: it calls the standard :func:`dbm.open`, which knows only the
standard library's backends (``dbm.whichdb`` does not recognise a bitkv directory, and
there is no public way to register another backend). On a bitkv store it quietly creates a
separate ``dbm.gnu``/``dbm.ndbm``/``dbm.dumb`` database *beside* the directory
(``path.db``, or ``path.dat``/``path.dir``/``path.bak``) and never touches the store. bitkv
does not patch :mod:`dbm` to change that (setting its private ``_defaultmod``/``_names``
would change every other program's ``dbm.open`` in the process). Wrap the database
yourself: ``shelve.Shelf(bitkv.dbm.open(path, "c"))``; and remember that shelve unpickles
what it reads, so open only stores that nobody else can write.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, TypeVar

from . import record as rec
from .errors import Error, StoreNotFoundError
from .fileio import O_CLOEXEC, O_NOFOLLOW, FileIO
from .recovery import MARKER_NAME
from .store import Store

__all__ = ["error", "open", "open_flags"]

#: Every character :func:`open` accepts in ``flag``: one of ``rwcn``, then modifiers.
open_flags = "rwcnfsu"

_F = TypeVar("_F", bound=Callable[..., Any])
_MISSING: Any = object()
_CLEAR_CHUNK = 1000


class error(Error, OSError):
    """Raised for dbm-level failures: missing database, read-only or closed database, ..."""


class _NotFoundError(error, FileNotFoundError):
    """A missing database opened with ``'r'`` or ``'w'``: also a ``FileNotFoundError``, as the
    stdlib backends raise (CPython's dbm tests catch that)."""


class _FlagError(error, ValueError):
    """An unknown ``flag``: a dbm :class:`error` (like dbm.gnu) and a ValueError (like dumb)."""


def _as_error(exc: BaseException) -> error:
    if isinstance(exc, OSError) and exc.errno is not None:
        return error(exc.errno, exc.strerror, exc.filename)
    return error(str(exc))


def _guard(fn: _F) -> _F:
    """Turn bitkv and OS failures inside ``fn`` into :class:`error`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except error:
            raise
        except (Error, OSError) as exc:
            if isinstance(exc, ValueError):  # e.g. a value too large: an argument problem
                raise
            raise _as_error(exc) from exc

    return wrapper  # type: ignore[return-value]


def _to_bytes(obj: object, what: str) -> bytes:
    if type(obj) is bytes:
        return obj
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"{what} must be bytes or strings, not {type(obj).__name__}")


def _addressable(k: bytes) -> bool:
    return 0 < len(k) <= rec.MAX_KEY_SIZE


class _ModeFileIO(FileIO):
    """Creates the store's files with the dbm ``mode`` (the kernel applies the umask)."""

    def __init__(self, mode: int) -> None:
        self.file_mode = mode & 0o7777
        # A directory needs search permission wherever it is readable.
        self.dir_mode = self.file_mode | ((self.file_mode & 0o444) >> 2)

    def create(self, path: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | O_CLOEXEC | O_NOFOLLOW
        return os.open(path, flags, self.file_mode)

    def open_lock(self, path: str) -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | O_CLOEXEC | O_NOFOLLOW, self.file_mode)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, self.dir_mode)


def _parse_flag(flag: object) -> tuple[str, str]:
    if not isinstance(flag, str) or not flag or flag[0] not in "rwcn":
        raise _FlagError(f"flag must be one of 'r', 'w', 'c' or 'n' (optionally followed by "
                         f"'f', 's' or 'u'), not {flag!r}")
    for ch in flag[1:]:
        if ch not in "fsu":
            raise _FlagError(f"flag modifier {ch!r} is not supported; use 'f', 's' or 'u'")
    return flag[0], flag[1:]


def open(file: str | bytes | os.PathLike[Any], flag: str = "r", mode: int = 0o666,
         **options: Any) -> _Database:
    """Open the bitkv store in directory ``file`` as a dbm database (see the module docs)."""
    base, modifiers = _parse_flag(flag)
    if isinstance(mode, bool) or not isinstance(mode, int):
        raise TypeError(f"mode must be an int, not {type(mode).__name__}")
    for reserved in ("readonly", "create"):
        if reserved in options:
            raise TypeError(f"{reserved}= is decided by flag; pass 'r', 'w', 'c' or 'n'")
    if "s" in modifiers or "f" in modifiers:
        if "sync" in options:
            raise ValueError("sync= contradicts the 'f'/'s' flag modifier; give one of them")
        options["sync"] = "always" if "s" in modifiers else "never"
    path = os.fsdecode(os.fspath(file))
    readonly = base == "r"
    if base == "n":
        _replace_plain_file(path)
    if "fileio" not in options and not readonly:
        try:  # an existing store keeps the mode it was created with
            mode = os.stat(os.path.join(path, MARKER_NAME)).st_mode
        except OSError:
            pass
        options["fileio"] = _ModeFileIO(mode)
    try:
        store = Store(path, readonly=readonly, create=base in "cn", **options)
    except StoreNotFoundError as exc:
        raise _NotFoundError(errno.ENOENT, "db file doesn't exist; use 'c' or 'n' flag to "
                             "create a new db", path) from exc
    except error:
        raise
    except (Error, OSError) as exc:
        raise _as_error(exc) from exc
    db = _Database(store)
    if base == "n":
        try:
            db._clear_all(compact=True)
        except BaseException:
            db.close()
            raise
    return db


def _replace_plain_file(path: str) -> None:
    """Flag ``'n'`` on a regular file (not a store, which is a directory): the stdlib backends
    truncate it into a new database, so the file goes and a store is created in its place. A
    directory that is not a store, or a symlink, is never removed (opening it raises)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _as_error(exc) from exc
    if stat.S_ISREG(st.st_mode):
        try:
            os.unlink(path)
        except OSError as exc:
            raise _as_error(exc) from exc


class _Database(MutableMapping[bytes, bytes]):
    """A dbm database backed by a :class:`bitkv.Store`; create it with :func:`open`."""

    def __init__(self, store: Store) -> None:
        self._db: Store | None = store
        self._readonly = store.readonly
        self._path = store.path

    def _store(self) -> Store:
        db = self._db
        if db is None:
            raise error("DBM object has already been closed")
        return db

    def _writable(self) -> Store:
        db = self._store()
        if self._readonly:
            raise error("The database is opened for reading only")
        return db

    # -- reading -----------------------------------------------------------------------------

    @_guard
    def __getitem__(self, key: bytes | str) -> bytes:
        db = self._store()
        k = _to_bytes(key, "keys")
        value = db.get(k) if _addressable(k) else None
        if value is None:
            raise KeyError(key)
        return value

    @_guard
    def get(self, key: bytes | str, default: Any = None) -> Any:
        db = self._store()
        k = _to_bytes(key, "keys")
        if not _addressable(k):
            return default
        return db.get(k, default)

    @_guard
    def __contains__(self, key: object) -> bool:
        db = self._store()
        k = _to_bytes(key, "keys")
        return _addressable(k) and k in db

    @_guard
    def keys(self) -> list[bytes]:  # type: ignore[override]
        """A list of every key (bytes), like :meth:`dbm.gnu.gdbm.keys`."""
        return list(self._store().keys())

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys())

    @_guard
    def items(self) -> list[tuple[bytes, bytes]]:  # type: ignore[override]
        return list(self._store().items())

    def values(self) -> list[bytes]:  # type: ignore[override]
        return [v for _k, v in self.items()]

    @_guard
    def __len__(self) -> int:
        return len(self._store())

    # -- writing -----------------------------------------------------------------------------

    @_guard
    def __setitem__(self, key: bytes | str, value: bytes | str) -> None:
        db = self._writable()
        db.put(_to_bytes(key, "keys"), _to_bytes(value, "values"))

    @_guard
    def __delitem__(self, key: bytes | str) -> None:
        db = self._writable()
        k = _to_bytes(key, "keys")
        if not (_addressable(k) and db.delete(k)):
            raise KeyError(key)

    @_guard
    def setdefault(self, key: bytes | str, default: bytes | str = b"") -> bytes:
        """Return the value of ``key``, first storing ``default`` if it has none (atomic)."""
        db = self._store()
        k = _to_bytes(key, "keys")
        if _addressable(k):
            value = db.get(k)
            if value is not None:
                return value
        db = self._writable()
        return db.setdefault(k, _to_bytes(default, "values"))

    @_guard
    def pop(self, key: bytes | str, default: Any = _MISSING) -> Any:
        """Atomically remove ``key`` and return its value, else ``default`` (or KeyError)."""
        db = self._writable()
        k = _to_bytes(key, "keys")
        value = db.get_and_delete(k) if _addressable(k) else None
        if value is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    @_guard
    def clear(self) -> None:
        """Delete every key (in batches; not atomic as a whole)."""
        self._clear_all(compact=False)

    def _clear_all(self, *, compact: bool) -> None:
        db = self._writable()
        keys = list(db.keys())
        for start in range(0, len(keys), _CLEAR_CHUNK):
            with db.batch() as b:
                for k in keys[start : start + _CLEAR_CHUNK]:
                    b.delete(k)
        if compact and keys:
            db.compact()

    # -- housekeeping ------------------------------------------------------------------------

    @_guard
    def sync(self) -> None:
        """Make every write so far durable (fsync)."""
        self._store().sync()

    @_guard
    def reorganize(self) -> None:
        """Reclaim the space of deleted and overwritten values (bitkv compaction)."""
        self._writable().compact()

    @_guard
    def close(self) -> None:
        """Flush, fsync and release the store. Closing twice is harmless."""
        db, self._db = self._db, None
        if db is not None:
            db.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    @property
    def store(self) -> Store:
        """The underlying :class:`bitkv.Store` (for TTLs, batches, stats, ...)."""
        return self._store()

    def __enter__(self) -> _Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._db is None else ("read-only" if self._readonly else "open")
        return f"<bitkv.dbm database {self._path!r} {state}>"
