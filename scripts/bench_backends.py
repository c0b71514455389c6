"""Backend adapters for scripts/bench.py: bitkv, its peers, and the *floor* pseudo-backend.

Each adapter opens one store in a directory and hands the workload plain callables. Where the
library has a direct call (``db.put``, ``db.get``, ``db[k] = v``) the callable IS that bound
method, so the benchmark loop pays no adapter layer; where a user has to write a helper (a
transaction around an LMDB put, an SQL statement), the callable is the minimal helper a user
would write. docs/performance.md documents the API choice of every adapter.

Durability levels. Every adapter has two modes:

* normal (``durable=False``): a returned write has reached the OS (it survives the process
  being killed) but is not fsynced. bitkv ``sync="interval"`` (its default; a background
  thread fsyncs once a second), SQLite WAL + ``synchronous=NORMAL``, LMDB ``sync=False``,
  LevelDB/RocksDB default write options, semidbm and dbm.dumb as they are.
* durable (``durable=True``): each returned write is on stable storage (fsync or equivalent)
  before the next starts. bitkv ``sync="always"``, SQLite ``synchronous=FULL``, LMDB
  ``sync=True``, LevelDB/RocksDB ``sync=True`` write options, semidbm ``db.sync()`` after each
  put, floor ``os.fdatasync`` after each ``os.pwrite`` into zero-written room. dbm.dumb has
  no fsync API: not measured.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections.abc import Callable
from typing import Any

Put = Callable[[bytes, bytes], Any]
Get = Callable[[bytes], Any]
Delete = Callable[[bytes], Any]


class Skip(Exception):
    """The backend (or one phase of it) cannot run here; the message says why."""


class Adapter:
    name = ""
    #: "what a user of that library would call", shown in the report
    api = ""
    #: True if the put/get callables may be shared by threads as they are
    threadsafe = True
    #: False if the library has no way to make a single write durable
    durable_supported = True
    #: True if the library has a batched write API
    has_batch = False

    def open(self, path: str, durable: bool = False) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def ops(self) -> tuple[Put, Get, Delete]:
        raise NotImplementedError

    def thread_ops(self) -> tuple[Put, Get]:
        """Callables for one worker thread (called in that thread)."""
        put, get, _delete = self.ops()
        if self.threadsafe:
            return put, get
        lock = self._thread_lock

        def locked_put(k: bytes, v: bytes) -> None:
            with lock:
                put(k, v)

        def locked_get(k: bytes) -> Any:
            with lock:
                return get(k)

        return locked_put, locked_get

    _thread_lock = threading.Lock()

    def batch_fill(self, keys: list[bytes], values: list[bytes]) -> None:
        raise Skip("no batch API")

    def end_thread(self) -> None:
        """Called in a worker thread when it is done (closes per-thread handles)."""


# -- bitkv --------------------------------------------------------------------------------------


class BitkvAdapter(Adapter):
    name = "bitkv"
    api = ('`bitkv.open(path)` (default `sync="interval"`), `db.put(k, v)`, `db.get(k)`, '
           '`db.delete(k)`; durable: `bitkv.open(path, sync="always")`; batch: '
           '`with db.batch() as b: b.put(k, v)` when the store has `batch()`')

    def open(self, path: str, durable: bool = False) -> None:
        import bitkv

        self.db = bitkv.open(path, sync="always" if durable else "interval")
        self.has_batch = hasattr(self.db, "batch")

    def close(self) -> None:
        self.db.close()

    def ops(self) -> tuple[Put, Get, Delete]:
        return self.db.put, self.db.get, self.db.delete

    def batch_fill(self, keys: list[bytes], values: list[bytes]) -> None:
        if not hasattr(self.db, "batch"):
            raise Skip("bitkv Store has no batch() yet")
        try:
            with self.db.batch() as b:
                put = b.put
                for k, v in zip(keys, values, strict=False):
                    put(k, v)
        except (TypeError, AttributeError) as exc:
            raise Skip(f"bitkv batch() API not as expected: {exc!r}") from exc


# -- floor --------------------------------------------------------------------------------------

_FLOOR_BODY = struct.Struct("<BBHIQQ")  # bitkv's record header minus the CRC
_FLOOR_HEAD = struct.Struct("<IBBHIQQ")
_FLOOR_HSIZE = _FLOOR_HEAD.size  # 28


class FloorAdapter(Adapter):
    """The floor: the least Python can do for a CRC-checked append-only log with a dict index.

    A put frames a record exactly like bitkv (28-byte header + key + value, CRC-32C over all
    but the CRC field), appends it with one ``os.write``, and indexes it in a dict of
    ``key -> (start, end)``. A get slices an mmap of the file and checks the CRC; records
    appended since the map was made are read with one ``os.pread`` until the file has grown
    by 1 MiB, when it is mapped again. A reopen scans the file, checking every CRC. No locking
    beyond what threads need, no validation, no TTLs, no rotation: whatever bitkv spends above
    this is what is left to gain.
    """

    name = "floor"
    api = ('a bare loop: `os.write(fd, crc32c-framed record)` + `dict[key] = (start, end)`; '
           'get = `mmap` slice + CRC-32C check; durable = `os.pwrite` into zero-written room '
           '(1 MiB ahead) + `os.fdatasync` per write, each thread its own')
    has_batch = True

    def open(self, path: str, durable: bool = False) -> None:
        from crc32c import crc32c

        self.crc32c = crc32c
        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, "floor.log")
        self.durable = durable
        self.fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        self.index: dict[bytes, tuple[int, int]] = {}
        self.seq = 0
        self.lock = threading.Lock()
        size = os.fstat(self.fd).st_size
        self.mm: mmap.mmap | None = None
        self.mapped = 0
        if size:
            self._remap()
            self._scan(size)
        os.lseek(self.fd, size, os.SEEK_SET)
        self.pos = size
        self.room = size  # durable mode: zeros written (and synced with a record) up to here

    def _grow(self, end: int) -> None:
        """Durable mode: write zeros 1 MiB past ``end``, as bitkv's sync="always" does, so
        that no fdatasync has to commit a new length or convert an unwritten extent."""
        new = end + (1 << 20)
        os.pwrite(self.fd, bytes(new - self.room), self.room)
        self.room = new

    def _append(self, record: bytes) -> int:
        """Write ``record`` at the end (lock held); return its offset."""
        pos = self.pos
        end = pos + len(record)
        if self.durable:
            if end > self.room:
                self._grow(end)
            os.pwrite(self.fd, record, pos)
        else:
            os.write(self.fd, record)
        self.pos = end
        return pos

    def _scan(self, size: int) -> None:
        mm = self.mm
        assert mm is not None
        unpack = _FLOOR_HEAD.unpack_from
        crc32c = self.crc32c
        index = self.index
        view = memoryview(mm)
        pos = 0
        seq = 0
        while pos + _FLOOR_HSIZE <= size:
            crc, flags, _r, klen, vlen, seq, _exp = unpack(mm, pos)
            end = pos + _FLOOR_HSIZE + klen + vlen
            if end > size or crc32c(view[pos + 4 : end]) != crc:
                break
            key = mm[pos + _FLOOR_HSIZE : pos + _FLOOR_HSIZE + klen]
            if flags & 1:
                index.pop(key, None)
            else:
                index[key] = (pos, end)
            pos = end
        view.release()
        self.seq = seq + 1

    def _remap(self) -> None:
        # The old map is not closed: a reader thread may still be slicing it; it is unmapped
        # when the last reference goes.
        self.mm = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
        self.mapped = len(self.mm)

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        os.fsync(self.fd)
        os.close(self.fd)

    def ops(self) -> tuple[Put, Get, Delete]:
        crc32c = self.crc32c
        pack_body = _FLOOR_BODY.pack
        pack_crc = struct.Struct("<I").pack
        write = os.write
        fdatasync = os.fdatasync
        append = self._append
        fd = self.fd
        index = self.index
        lock = self.lock
        hsize = _FLOOR_HSIZE
        durable = self.durable
        pread = os.pread
        unpack_crc = struct.Struct("<I").unpack_from
        remap_step = 1 << 20

        def put(key: bytes, value: bytes) -> None:
            with lock:
                seq = self.seq
                self.seq = seq + 1
                body = pack_body(0, 0, len(key), len(value), seq, 0) + key + value
                pos = self.pos
                end = pos + 4 + len(body)
                write(fd, pack_crc(crc32c(body)) + body)
                self.pos = end
                index[key] = (pos, end)

        def durable_put(key: bytes, value: bytes) -> None:
            with lock:
                seq = self.seq
                self.seq = seq + 1
                body = pack_body(0, 0, len(key), len(value), seq, 0) + key + value
                pos = append(pack_crc(crc32c(body)) + body)
                index[key] = (pos, pos + 4 + len(body))
            fdatasync(fd)  # no coordination: concurrent threads each sync

        def get(key: bytes) -> bytes | None:
            loc = index.get(key)
            if loc is None:
                return None
            start, end = loc
            if end <= self.mapped:
                buf = self.mm[start:end]  # type: ignore[index]
            elif self.pos - self.mapped >= remap_step:
                with lock:
                    if self.pos - self.mapped >= remap_step:
                        self._remap()
                buf = self.mm[start:end]  # type: ignore[index]
            else:  # the few bytes appended since the last map
                buf = pread(fd, end - start, start)
            if crc32c(buf[4:]) != unpack_crc(buf)[0]:
                raise ValueError("CRC mismatch")
            return buf[hsize + len(key) :]

        def delete(key: bytes) -> bool:
            with lock:
                if index.pop(key, None) is None:
                    return False
                seq = self.seq
                self.seq = seq + 1
                body = pack_body(1, 0, len(key), 0, seq, 0) + key
                append(pack_crc(crc32c(body)) + body)
            if durable:
                fdatasync(fd)
            return True

        return (durable_put if durable else put), get, delete

    def batch_fill(self, keys: list[bytes], values: list[bytes]) -> None:
        crc32c = self.crc32c
        pack_body = _FLOOR_BODY.pack
        pack_crc = struct.Struct("<I").pack
        index = self.index
        parts = []
        with self.lock:
            pos = self.pos
            seq = self.seq
            for key, value in zip(keys, values, strict=False):
                body = pack_body(0, 0, len(key), len(value), seq, 0) + key + value
                seq += 1
                rec = pack_crc(crc32c(body)) + body
                parts.append(rec)
                end = pos + len(rec)
                index[key] = (pos, end)
                pos = end
            data = b"".join(parts)
            written = os.write(self.fd, data)
            while written < len(data):
                written += os.write(self.fd, memoryview(data)[written:])
            self.pos = pos
            self.seq = seq


# -- sqlite3 ------------------------------------------------------------------------------------


class SqliteAdapter(Adapter):
    name = "sqlite3"
    api = ('`sqlite3.connect(path, isolation_level=None)` (autocommit), WAL, '
           '`synchronous=NORMAL`; table `kv(k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID`; '
           'put = `INSERT OR REPLACE` (one statement = one transaction), get = `SELECT v`, '
           'delete = `DELETE`; durable: `synchronous=FULL`; batch: `BEGIN; executemany(...); '
           'COMMIT`; threads: one connection per thread')
    has_batch = True

    def _connect(self) -> Any:
        import sqlite3

        conn = sqlite3.connect(self.file, isolation_level=None, check_same_thread=False,
                               timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        return conn

    def open(self, path: str, durable: bool = False) -> None:
        os.makedirs(path, exist_ok=True)
        self.file = os.path.join(path, "kv.sqlite")
        self.durable = durable
        self.conn = self._connect()
        self.conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB) "
                          "WITHOUT ROWID")
        self._local = threading.local()
        self._thread_conns: list[Any] = []

    def close(self) -> None:
        for c in self._thread_conns:
            c.close()
        self.conn.close()

    def _ops_for(self, conn: Any) -> tuple[Put, Get, Delete]:
        execute = conn.execute

        def put(k: bytes, v: bytes) -> None:
            execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (k, v))

        def get(k: bytes) -> bytes | None:
            row = execute("SELECT v FROM kv WHERE k = ?", (k,)).fetchone()
            return None if row is None else row[0]

        def delete(k: bytes) -> None:
            execute("DELETE FROM kv WHERE k = ?", (k,))

        return put, get, delete

    def ops(self) -> tuple[Put, Get, Delete]:
        return self._ops_for(self.conn)

    def thread_ops(self) -> tuple[Put, Get]:
        conn = self._connect()
        self._thread_conns.append(conn)
        put, get, _ = self._ops_for(conn)
        return put, get

    def batch_fill(self, keys: list[bytes], values: list[bytes]) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                              zip(keys, values, strict=False))
        self.conn.execute("COMMIT")


# -- dbm.gnu / dbm.dumb / semidbm --------------------------------------------------------------


class DbmGnuAdapter(Adapter):
    name = "dbm.gnu"
    api = ('`dbm.gnu.open(path, "c")` (no `"f"` fast mode, so every write reaches the OS), '
           '`db[k] = v`, `db.get(k)`, `del db[k]`; durable: put + `db.sync()`; '
           'threads: one lock around the db')
    threadsafe = False

    def open(self, path: str, durable: bool = False) -> None:
        try:
            import dbm.gnu
        except ImportError as exc:
            raise Skip(f"dbm.gnu is not available in this Python build ({exc})") from exc
        os.makedirs(path, exist_ok=True)
        self.db = dbm.gnu.open(os.path.join(path, "db.gdbm"), "c")  # noqa: SIM115
        self.durable = durable

    def close(self) -> None:
        self.db.close()

    def ops(self) -> tuple[Put, Get, Delete]:
        db = self.db
        if self.durable:
            setitem = db.__setitem__
            sync = db.sync

            def put(k: bytes, v: bytes) -> None:
                setitem(k, v)
                sync()
        else:
            put = db.__setitem__
        return put, db.get, db.__delitem__


class DbmDumbAdapter(Adapter):
    name = "dbm.dumb"
    api = ('`dbm.dumb.open(path, "c")`, `db[k] = v`, `db.get(k)`, `del db[k]`; no fsync API '
           '(its `sync()` rewrites the index without fsync), so no durable rows; '
           'threads: one lock around the db')
    threadsafe = False
    durable_supported = False

    def open(self, path: str, durable: bool = False) -> None:
        import dbm.dumb

        if durable:
            raise Skip("dbm.dumb has no way to make a write durable (no fsync)")
        os.makedirs(path, exist_ok=True)
        self.db = dbm.dumb.open(os.path.join(path, "db"), "c")  # noqa: SIM115

    def close(self) -> None:
        self.db.close()

    def ops(self) -> tuple[Put, Get, Delete]:
        return self.db.__setitem__, self.db.get, self.db.__delitem__


class SemidbmAdapter(Adapter):
    name = "semidbm"
    api = ('`semidbm.open(path, "c")`, `db[k] = v`, `db[k]` (in a `try`/`except KeyError`: '
           'semidbm has no `.get`), `del db[k]`; durable: '
           'put + `db.sync()` (an fsync); threads: one lock around the db')
    threadsafe = False

    def open(self, path: str, durable: bool = False) -> None:
        import semidbm

        self.db = semidbm.open(path, "c")
        self.durable = durable

    def close(self) -> None:
        self.db.close()

    def ops(self) -> tuple[Put, Get, Delete]:
        db = self.db
        if self.durable:
            setitem = db.__setitem__
            sync = db.sync

            def put(k: bytes, v: bytes) -> None:
                setitem(k, v)
                sync()
        else:
            put = db.__setitem__
        getitem = db.__getitem__

        def get(k: bytes) -> bytes | None:  # semidbm has no .get()
            try:
                return getitem(k)
            except KeyError:
                return None

        return put, get, db.__delitem__


# -- diskcache ----------------------------------------------------------------------------------


class DiskcacheAdapter(Adapter):
    name = "diskcache"
    api = ('`diskcache.Cache(path, eviction_policy="none")` (a store, not a cache: nothing is '
           'evicted), `cache.set(k, v)`, `cache.get(k)`, `cache.delete(k)`, values as bytes; '
           'durable: `sqlite_synchronous=2` (FULL); batch: `with cache.transact(): cache.set(...)`')
    has_batch = True

    def open(self, path: str, durable: bool = False) -> None:
        import diskcache

        self.cache = diskcache.Cache(path, eviction_policy="none",
                                     sqlite_synchronous=2 if durable else 1)

    def close(self) -> None:
        self.cache.close()

    def ops(self) -> tuple[Put, Get, Delete]:
        return self.cache.set, self.cache.get, self.cache.delete

    def batch_fill(self, keys: list[bytes], values: list[bytes]) -> None:
        cache = self.cache
        put = cache.set
        with cache.transact():
            for k, v in zip(keys, values, strict=False):
                put(k, v)


# -- lmdb ---------------------------------------------------------------------------------------


class LmdbAdapter(Adapter):
    name = "lmdb"
    api = ('`lmdb.open(path, map_size=..., sync=False)`; put = `with env.begin(write=True) as '
           'txn: txn.put(k, v)` (one transaction per put), get = `with env.begin() as txn: '
           'txn.get(k)` (one read transaction per get), delete likewise; durable: `sync=True` '
           '(the default); batch: all puts in one write transaction')
    has_batch = True
    map_size = 1 << 30

    def open(self, path: str, durable: bool = False) -> None:
        import lmdb

        self.env = lmdb.open(path, map_size=self.map_size, sync=durable, metasync=durable,
                             max_readers=256)

    def close(self) -> None:
        self.env.close()

    def ops(self) -> tuple[Put, Get, Delete]:
        begin = self.env.begin

        def put(k: bytes, v: bytes) -> None:
            with begin(write=True) as txn:
                txn.put(k, v)

        def get(k: bytes) -> bytes | None:
            with begin() as txn:
                return txn.get(k)

        def delete(k: bytes) -> None:
            with begin(write=True) as txn:
                txn.delete(k)

        return put, get, delete

    def batch_fill(self, keys: list[bytes], values: list[bytes]) -> None:
        with self.env.begin(write=True) as txn:
            put = txn.put
            for k, v in zip(keys, values, strict=False):
                put(k, v)

    def read_all_one_txn(self, keys: list[bytes]) -> None:
        """The other read idiom: one long read transaction for many gets."""
        with self.env.begin() as txn:
            get = txn.get
            for k in keys:
                get(k)


# -- plyvel (LevelDB) ---------------------------------------------------------------------------


class PlyvelAdapter(Adapter):
    name = "plyvel"
    api = ('`plyvel.DB(path, create_if_missing=True)` (LevelDB defaults: 4 MiB write buffer, '
           'snappy), `db.put(k, v)`, `db.get(k)`, `db.delete(k)`; durable: '
           '`db.put(k, v, sync=True)`; batch: `with db.write_batch() as wb: wb.put(k, v)`')
    has_batch = True

    def open(self, path: str, durable: bool = False) -> None:
        import plyvel

        self.db = plyvel.DB(path, create_if_missing=True)
        self.durable = durable

    def close(self) -> None:
        self.db.close()

    def ops(self) -> tuple[Put, Get, Delete]:
        db = self.db
        if self.durable:
            dput = db.put

            def put(k: bytes, v: bytes) -> None:
                dput(k, v, sync=True)
        else:
            put = db.put
        return put, db.get, db.delete

    def batch_fill(self, keys: list[bytes], values: list[bytes]) -> None:
        with self.db.write_batch() as wb:
            put = wb.put
            for k, v in zip(keys, values, strict=False):
                put(k, v)


# -- rocksdict (RocksDB) ------------------------------------------------------------------------


class RocksdictAdapter(Adapter):
    name = "rocksdict"
    api = ('`Rdict(path, Options(raw_mode=True))` (raw bytes, no pickling; RocksDB defaults), '
           '`db.put(k, v)`, `db.get(k)`, `db.delete(k)`; durable: `WriteOptions.sync = True` '
           'via `db.set_write_options`; batch: `WriteBatch(raw_mode=True)` + `db.write(wb)`')
    has_batch = True

    def open(self, path: str, durable: bool = False) -> None:
        from rocksdict import Options, Rdict, WriteOptions

        self.db = Rdict(path, Options(raw_mode=True))
        if durable:
            wo = WriteOptions()
            wo.sync = True
            self.db.set_write_options(wo)

    def close(self) -> None:
        self.db.close()

    def ops(self) -> tuple[Put, Get, Delete]:
        return self.db.put, self.db.get, self.db.delete

    def batch_fill(self, keys: list[bytes], values: list[bytes]) -> None:
        from rocksdict import WriteBatch

        wb = WriteBatch(raw_mode=True)
        put = wb.put
        for k, v in zip(keys, values, strict=False):
            put(k, v)
        self.db.write(wb)


ADAPTERS: dict[str, type[Adapter]] = {
    a.name: a
    for a in (BitkvAdapter, SqliteAdapter, DbmGnuAdapter, DbmDumbAdapter, SemidbmAdapter,
              DiskcacheAdapter, LmdbAdapter, PlyvelAdapter, RocksdictAdapter, FloorAdapter)
}

#: the module each adapter needs; a missing one skips the backend
REQUIRES = {
    "bitkv": "bitkv",
    "sqlite3": "sqlite3",
    "dbm.gnu": "dbm.gnu",
    "dbm.dumb": "dbm.dumb",
    "semidbm": "semidbm",
    "diskcache": "diskcache",
    "lmdb": "lmdb",
    "plyvel": "plyvel",
    "rocksdict": "rocksdict",
    "floor": "crc32c",
}
