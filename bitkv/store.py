"""The Store: bitkv's public object, tying the keydir, the segments and recovery together.

Concurrency model: one ``threading.Lock`` serialises every change (appends, keydir updates,
rotation). Reads take no lock: a get is a dict lookup plus a slice of an immutable mmap (or a
pread of the active segment); a segment removed by compaction under a reader is detected and
the read retried against the keydir's new entry.
"""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

from . import backup as backup_mod
from . import (
    codec,
    durable,
    history,
    keydir,
    killpoints,
    lastcompaction,
    manifest,
    recovery,
    sealing,
    settings,
)
from . import record as rec
from . import segment as seg_mod
from .batch import Batch
from .crc import crc32c
from .errors import (
    ClosedError,
    CorruptionError,
    Error,
    IntegrityError,
    NotAnIntegerError,
    ReadOnlyError,
)
from .eviction import DEAD_SHARE, SEGMENT_FLOOR, SEGMENT_SHARE, Evictor
from .fileio import DEFAULT_FILEIO, FileIO, FsyncGuard
from .kernels import NATIVE
from .keydir import SIZE_BITS, SIZE_MASK, SLOT_SHIFT
from .lock import StoreLock
from .log import LogWriter, SegmentTable
from .maintenance import Maintenance, compaction_due
from .segment import Segment
from .validate import (
    INT64_MAX,
    INT64_MIN,
    KeyLike,
    ValueLike,
    check_expires_at_ms,
    check_number,
    check_ttl,
    key_batch,
    parse_int,
    to_key,
    to_prefix,
    to_value,
)
from .views import ItemsView, KeysView, ValuesView
from .writequeue import WriteQueue

if TYPE_CHECKING:
    from ._native import Reader, Writer
    from .views import JsonView, Namespace
_encode_batch: Any = None
if NATIVE:
    from ._native import IndexMap, Reader, Writer
    from ._native import encode_batch as _native_encode_batch

    _encode_batch = _native_encode_batch

SyncMode = Literal["always", "interval", "never"]
SYNC_MODES = ("always", "interval", "never")
_T = TypeVar("_T")


class Item(NamedTuple):
    """A live key as :meth:`Store.get_item` returns it (the memcached protocol's view)."""

    value: bytes
    client_flags: int  # memcached's opaque u32, 0 when none was stored
    cas: int  # the seq of the key's record: unique per write, kept by reopening and compaction
    expiry_ms: int  # absolute Unix milliseconds, 0: never

DEFAULT_MAX_SEGMENT_SIZE = 64 * 2**20
MIN_SEGMENT_SIZE = 4096
MAX_SEGMENT_SIZE = 2**31  # offsets are 32-bit; leave room for one oversized record
MAX_SYNC_INTERVAL = 86400.0
_OFFSET_MASK = keydir.OFFSET_MASK
_MAX_KEY = rec.MAX_KEY_SIZE
# Flags the fast read path cannot serve (batch bits are fine: the record is a plain value).
_ENCODED = ~rec.BATCH_FLAGS & 0xFF
_DECODED_FLAGS = rec.ENCODING_FLAGS
_MAX_VALUE = rec.MAX_VALUE_SIZE
_unpack_header = rec.HEADER.unpack_from
_pack_body = struct.Struct("<BBHIQQ").pack
_pack_crc = struct.Struct("<I").pack
_HEADER_SIZE = rec.HEADER_SIZE
# A plain put waiting in the write queue: key, value as stored (compressed, not yet sealed:
# sealing needs the seq), record flags, expiry in Unix ms (0: none).
_QueuedPut = tuple[bytes, bytes, int, int]
_crc32c = crc32c
_MISSING: Any = object()
_live_bytes_of = operator.attrgetter("live_bytes")
# The compiled single put, None in pure-Python mode (or where the extension is not built).
_native_put: Callable[[Any, object, object], bool] | None = None
if keydir.IMPLEMENTATION == "native":
    from ._native import put as _native_put
log = logging.getLogger("bitkv")


class _Deferral(threading.local):
    """Per thread: how many :meth:`Store.deferred_sync` blocks it is inside (0: none)."""

    depth = 0


_LOGGED_REGIONS = 10  # damaged regions named one by one at open; the rest are counted


def _log_recovery(path: str, report: recovery.RecoveryReport) -> None:
    """Say what opening found, each finding once with its file and offset, so damage and
    repairs are never silent (the full list: ``recovery_report``, ``bitkv check``)."""
    if report.corrupt_bytes or report.damage:
        log.warning("bitkv store %s: %d damaged byte(s) in %d region(s) skipped at open "
                    "(never returned as data)%s; run `bitkv check` for details", path,
                    report.corrupt_bytes, len(report.damage),
                    f", {len(report.damaged_keys)} key(s) whose newest record is damaged "
                    "raise on read" if report.damaged_keys else "")
        for name, offset, length, why in report.damage[:_LOGGED_REGIONS]:
            log.warning("bitkv store %s: %s offset %d: %d damaged byte(s): %s", path, name,
                        offset, length, why)
        if len(report.damage) > _LOGGED_REGIONS:
            log.warning("bitkv store %s: %d more damaged region(s) not listed here", path,
                        len(report.damage) - _LOGGED_REGIONS)
    for name, offset, length in report.truncations:
        log.warning("bitkv store %s: %s: cut %d byte(s) of a torn write (past the last "
                    "fsync) at offset %d", path, name, length, offset)
    for name, what, keys in report.lost_segments:
        log.error("bitkv store %s: %s %s (%d key(s) at stake)", path, name, what, len(keys))
    for name, why in report.ignored_hints:
        log.warning("bitkv store %s: hint %s ignored (%s); its segment was scanned instead",
                    path, name, why)
    if report.removed_orphans:
        log.info("bitkv store %s: removed %d segment file(s) of an unfinished rotation or "
                 "compaction: %s", path, len(report.removed_orphans),
                 ", ".join(report.removed_orphans))
    if report.removed_temp_files:
        log.info("bitkv store %s: removed %d temporary file(s) of an interrupted write: %s",
                 path, len(report.removed_temp_files), ", ".join(report.removed_temp_files))
    for name, why in report.ignored_files:
        log.warning("bitkv store %s: %s: %s", path, name, why)


class _Background:
    """The store's side of its background threads (maintenance.MaintenanceHost). It holds
    the store only weakly: a store dropped without close() is still collected."""

    def __init__(self, store: Store) -> None:
        self._ref = weakref.ref(store)

    def flush(self) -> bool:
        store = self._ref()
        if store is None:
            return False
        store._flush_once()
        store._verify_lock()
        return True

    def maintain(self) -> bool:
        store = self._ref()
        if store is None:
            return False
        store._verify_lock()
        store._write_seal_hints()
        store._compact_if_due()
        return True


class _CompactionHost:
    """The narrow surface compaction works through (compaction.CompactionHost): a store's
    own adapter, so compaction touches none of its private names."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.path = store.path
        self.io = store._io
        self.keydir = store._keydir
        self.max_segment_size = store.max_segment_size

    def locked(self) -> threading.Lock:
        return self._store._lock

    def sealed_segments(self) -> list[Segment]:
        store = self._store
        store._check_writable()
        return store._sealed()

    def now_ms(self) -> int:
        store = self._store
        # 0: keep expired records. A replica's store waits for its master's DEL; a store
        # that logs expirations leaves them to the purge, which writes the tombstone a
        # replica hears as a DEL (compaction would drop the key silently).
        return 0 if store.hold_expired or store.log_expirations else store._now_ms()

    def stop_requested(self) -> bool:
        return self._store._stop.is_set()

    def allocate_id(self) -> int:
        with self._store._lock:
            return self._store._table.allocate_id()

    def sync_active(self) -> None:
        seg = self._store._log.active
        if seg is not None:
            self._store._log.wait_durable(seg, seg.size)

    def install(self, inputs: list[Segment], outputs: list[Segment]) -> None:
        with self._store._lock:
            self._store._check_writable()
            self._store._log.install(inputs, outputs)

    def retire(self, inputs: list[Segment]) -> None:
        for seg in inputs:
            self._store._table.detach(seg)
        self._store._switched_bytes = 0  # the inputs' bytes no longer count

    def switched(self, live_bytes: int) -> None:
        self._store._switched_bytes += live_bytes

    def fail_after_commit(self, exc: BaseException) -> None:
        # The running store may no longer match the MANIFEST on disk: reload from it.
        self._store._log.fail(exc, "a compaction failed after its commit point")


class _EvictionHost:
    """The narrow surface eviction works through (eviction.EvictionHost), called under the
    writer lock."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def entries(self) -> Any:
        return self._store._entries

    @property
    def expiries(self) -> Any:
        return self._store._expiries

    def live_bytes(self) -> int:
        return self._store._live_bytes_locked()

    def record_size(self, key: bytes) -> int:
        entry = self._store._entries.get(key)
        return 0 if entry is None else self._store._keydir.record_size(entry)

    def evict(self, key: bytes) -> int:
        store = self._store
        entry = store._entries.get(key)
        if entry is None:
            return 0
        size = store._keydir.record_size(entry)
        expiry = store._expiries.get(key) if store._expiries else None
        if expiry is not None and expiry <= store._now_ms() and not store.hold_expired:
            store._drop_expired(key, entry, expiry)
        else:
            # A tombstone, so that the key stays gone after a reopen (and a replica of this
            # store hears a DEL, as Redis propagates its evictions).
            store._delete_locked(key, entry)
        return size

    def now_ms(self) -> int:
        return self._store._now_ms()

    def follows_master(self) -> bool:
        # hold_expired marks a replica's store (server/replication.py switches it with the
        # role): its master's writes must apply whatever the bound, and its master's
        # evictions reach it as DELs.
        return self._store.hold_expired

    def drop_expired(self) -> None:
        store = self._store
        if not store._expiries or store.hold_expired:
            return
        now = store._now_ms()
        if now >= store._keydir.next_expiry:
            store._purge_expired_locked(now)


class _Closed(dict[bytes, int]):
    """Stands in for the keydir after close, so the read path needs no 'closed' check."""

    def _raise(self, *args: object, **kwargs: object) -> Any:
        raise ClosedError("the store is closed")

    get = __getitem__ = __contains__ = __iter__ = __len__ = _raise


class Store(MutableMapping[bytes, bytes]):
    """A bitkv store. Create it with :func:`bitkv.open`.

    Keys are bytes (str keys are encoded as UTF-8) and come back as bytes; values are bytes.
    A Store may be shared by threads. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        create: bool = True,
        sync: SyncMode = "interval",
        sync_interval: float = 1.0,
        max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE,
        clock: Callable[[], float] = time.time,
        auto_compact: bool = True,
        compact_dead_ratio: float = 0.5,
        compact_min_dead_bytes: int = 16 * 2**20,
        compression: str | None = None,
        compression_min_size: int | None = None,
        encryption_key: bytes | None = None,
        fileio: FileIO | None = None,
        log_expirations: bool = False,
        hold_expired: bool = False,
        max_bytes: int | None = None,
        eviction: str | None = None,
    ) -> None:
        if sync not in SYNC_MODES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_MODES)}, not {sync!r}")
        check_number("sync_interval", sync_interval, 0, MAX_SYNC_INTERVAL, low_open=True)
        check_number("max_segment_size", max_segment_size, MIN_SEGMENT_SIZE, MAX_SEGMENT_SIZE,
                      integral=True)
        if not callable(clock):
            raise TypeError("clock must be a callable returning Unix time in seconds")
        check_number("compact_dead_ratio", compact_dead_ratio, 0, 1, low_open=True)
        check_number("compact_min_dead_bytes", compact_min_dead_bytes, 0, math.inf,
                      integral=True)
        if compression_min_size is not None:
            check_number("compression_min_size", compression_min_size, 0,
                         settings.MAX_MIN_SIZE, integral=True)
        settings.check_bound(max_bytes, eviction)
        self.auto_compact = bool(auto_compact)
        # Write a tombstone when an expired key leaves the index, so that the log (the
        # history replication streams) says when each key went: replicas get a DEL.
        self.log_expirations = bool(log_expirations)
        # A replica's store (server/replica.py): expired keys stay indexed, hidden from reads,
        # until deleted explicitly; neither purges nor compaction drop them. As in Redis, the
        # master decides when a key is gone (it sends a DEL), and the master's commands on the
        # replica still find a key that expired here a little earlier than there (see
        # seeing_expired). Given at open, expired records are kept at load too.
        self.hold_expired = bool(hold_expired)
        # Compaction keeps the segments holding records from this seq on, so that
        # changes() can still read them: a replication master pins what its replicas have
        # not read yet (None: no pin).
        self.retain_history_from: int | None = None
        self._seeing = threading.local()  # .on: this thread sees held expired keys as live
        # Threads inside deferred_sync(): their sync="always" writes skip their own fsync.
        self._deferral = _Deferral()
        self.compact_dead_ratio = float(compact_dead_ratio)
        self.compact_min_dead_bytes = compact_min_dead_bytes
        self._compact_lock = threading.Lock()
        self.last_compaction: dict[str, Any] | None = None
        self.compactions = 0  # run by this process (stats())
        self.last_compaction_error: str | None = None
        self.path = os.fspath(path)
        self.readonly = readonly
        self.sync_mode: SyncMode = sync
        self._sync_always = sync == "always"
        self.sync_interval = float(sync_interval)
        self.max_segment_size = max_segment_size
        self._clock = clock
        given = fileio or DEFAULT_FILEIO
        # Every fsync failure, wherever it happens, makes the log refuse writes (LogWriter.fail).
        self._io: FileIO = FsyncGuard(given, self._fsync_failed)
        # The hot path copies into the active segment's map directly when the seam is the
        # plain one (saves a Python frame per put); any substitute FileIO, such as the crash
        # harness's, sees every write through FileIO.map_write.
        self._plain_io = type(given) is FileIO
        # Writes go into a shared map of the preallocated active segment, except with
        # sync="always", which pwrites and fdatasyncs (LogWriter.map_writes says why).
        self._map_writes = sync != "always"
        self._lock = threading.Lock()  # the writer lock: every change of the log and index
        # sync="always": plain puts queue here and are committed in groups, each one write and
        # one fdatasync for every writer queued (writequeue.py, _commit_puts).
        self._write_queue: WriteQueue[_QueuedPut] | None = (
            WriteQueue(self._commit_puts) if self._sync_always and not readonly else None)
        self._closed = False
        self._store_lock: StoreLock | None = None
        self._maintenance = Maintenance(
            _Background(self),
            flush_interval=self.sync_interval if not readonly and sync == "interval" else None,
            # auto_compact=False means no background file activity at all.
            maintain=not readonly and self.auto_compact)
        self._stop = self._maintenance.stop_event  # set once the store closes
        self._next_seq = 1
        self._table = SegmentTable([], [], 1)
        self._log = LogWriter(self.path, self._io, self._table,
                              max_segment_size=max_segment_size,
                              next_seq=lambda: self._next_seq, marker=None,
                              manifest_generation=0, before_rotate=self._lock_still_held,
                              on_rotate=self._rotated, map_writes=self._map_writes)
        # log.refused is the one check on the write path: set for a read-only or closed
        # store too, whose writes _check_writable then explains.
        self._log.refused = readonly

        must_create = recovery.check_directory(self.path, readonly=readonly, create=create)
        if must_create:
            # The marker comes before the lock file, so a directory holding anything but a
            # marker is never mistaken for a store (see recovery.check_directory).
            if not os.path.exists(self.path):
                recovery.make_directory(self.path, self._io)
            recovery.create_store(self.path, self._io)
        if not readonly:
            self._store_lock = StoreLock(self.path, self._io)
        try:
            keycheck = codec.check_encryption_key(self.path, encryption_key,
                                                  create=not readonly, io=self._io)
            # None means "as the store's SETTINGS say"; an explicit choice is recorded there
            # (by a writer) so that every later opener writes the same way.
            #: How new values are compressed (:class:`bitkv.settings.Compression`): the
            #: store's recorded setting, or this open's explicit choice.
            recorded = settings.resolve(self.path, self._io, compression,
                                        compression_min_size, writable=not readonly,
                                        max_bytes=max_bytes, eviction=eviction)
            self.compression = recorded.compression
            self._codec = codec.ValueCodec(self.path, compression=self.compression.algorithm,
                                           compression_min_size=self.compression.min_size,
                                           encryption_key=encryption_key, keycheck=keycheck,
                                           io=self._io)
            self._encoding = self._codec.active
            # Sealing binds the seq, so it happens under the lock, after the seq is taken.
            self._sealing = self._codec.encrypting
            # False in a strict encrypted store: plain records there are refused, so the
            # get fast path (which serves plain records) must not serve them.
            self._plain_ok = not self._codec.refuses_plain
            loaded = recovery.load(self.path, self._io, readonly=readonly,
                                   now_ms=0 if self.hold_expired else self._now_ms())
        except BaseException:
            if self._store_lock is not None:
                self._store_lock.release()
            raise
        self.recovery_report = loaded.report
        self._keydir = loaded.keydir
        self._entries = loaded.keydir.entries
        self._expiries = loaded.keydir.expiries
        self._table.slots = loaded.slots  # the keydir's own list: it finds segments there
        self._table.segments = loaded.segments  # load order; active (if any) last
        self._table.next_id = loaded.next_id
        self._next_seq = loaded.next_seq
        self._keydir.recompute_next_expiry()
        # The records the active segment's checkpoint must still list (a writer's only).
        self._keydir.hidden = None if readonly else {}
        if not readonly:
            try:
                self._log.marker = durable.DurableMarker(self.path, self._io, loaded.mark,
                                                         plain_io=self._plain_io)
                active = self._open_active()
                if active is self._table.segments[-1] and active.size > seg_mod.HEADER_SIZE:
                    self._keydir.hidden = loaded.hidden
                self._log.manifest_generation = (loaded.manifest.generation
                                                 if loaded.manifest is not None else 0)
                wanted = manifest.listing(self._table.segments, active, 0)
                if loaded.manifest is None or set(wanted.entries) != set(
                        loaded.manifest.entries):
                    self._log.commit_manifest()
                    loaded.report.manifest_created = loaded.manifest is None
                if loaded.marker_version < recovery.MARKER_FORMAT_VERSION:
                    # After the MANIFEST: a bitkv that knows only version 1 must no longer
                    # write here, or the MANIFEST would go stale behind its back.
                    recovery.upgrade_marker(self.path, self._io)
            except BaseException:
                self._release_files()
                raise
        self._loaded = loaded
        self.last_compaction = lastcompaction.load(self.path)
        # The compiled single put (bitkv/native/put.c): only where it writes the same bytes
        # as the Python path without skipping anything that path does: map writes through
        # the plain FileIO, values stored as given, and no kill points (they live in Python;
        # real kill -9 runs of the crash harness cover the compiled path).
        self._native_put_allowed = (_native_put is not None and not readonly
                                    and self._map_writes and self._plain_io
                                    and not self._encoding and not self._sealing
                                    and not killpoints.ENABLED)
        # Cache mode (eviction.py): None without a bound, and always in a reader (which
        # never evicts; it still reports the recorded bound).
        self._evictor: Evictor | None = None
        self._evicted_before = 0  # evictions counted by earlier evictors of this open
        # Bytes a running compaction has switched into its outputs that its inputs (still
        # attached, no longer listed) count too, until it retires them.
        self._switched_bytes = 0
        self._seal_overhead = codec.NONCE_SIZE + codec.TAG_SIZE if self._sealing else 0
        self._requested_segment_size = max_segment_size
        self._apply_bound(recorded.bound)
        self._native_put: Callable[[Store, object, object], bool] | None = (
            self._choose_native_put())
        _log_recovery(self.path, loaded.report)
        segments = self._table.segments
        for s in segments[:-1] if readonly else segments:
            if s is not self._log.active:
                s.release_fd()  # a reader keeps the newest segment's fd to follow the writer
        self._reader: Reader | None = None
        # Reader.get_many where the kernel serves this store's gets (bitkv/native/get.c)
        self._get_many_kernel: Callable[[Iterable[object], object], list[Any]] | None = None
        self._bind_reader()
        self._writer: Writer | None = None
        self._bind_writer()
        self._maintenance.start()

    def _choose_native_put(self) -> Callable[[Store, object, object], bool] | None:
        """The compiled single put (bitkv/native/put.c), where the store allows it (above)
        and no bound is in force (eviction happens in Python, before the write)."""
        return _native_put if self._native_put_allowed and self._evictor is None else None

    def _bind_reader(self) -> None:
        """In native mode, make ``self.get`` the get kernel's method (bitkv/native/get.c): a
        get then costs one C call, which serves the common case and hands everything else
        to :meth:`get` below, the reference. A Python wrapper around the kernel would add a
        frame that costs more than the kernel's own work. Called at open and after refresh
        replaced the index; the previous reader is detached (it sends every get to Python)."""
        old = self._reader
        if old is not None:
            old.detach()
        self._reader = None
        self._get_many_kernel = None
        self.__dict__.pop("get", None)
        fallback = type(self).get
        if (NATIVE and type(self._entries) is IndexMap
                and fallback is Store.get):  # a subclass's get stays in charge
            self._reader = Reader(self._entries, self._expiries, self._table.slots, self,
                                  Store.get, self._plain_ok)
            self.get = self._reader.get  # type: ignore[method-assign]
            self._get_many_kernel = self._reader.get_many
        evictor = self._evictor
        if evictor is not None:
            # LRU and LFU stamp each read: a wrapper around the kernel's get (or Python's),
            # only in a bounded store, so an unbounded store's reads cost what they did.
            inner = self.__dict__.get("get") or (lambda key, default=None: fallback(
                self, key, default))
            wrapped = evictor.wrap_get(inner)
            if wrapped is not inner:
                self.get = wrapped  # type: ignore[method-assign]
                self._get_many_kernel = None  # every read stamped: get_many loops over get

    def _bind_writer(self) -> None:
        """Where the put kernel serves this store, make ``self.put`` a Writer's ``put``
        (bitkv/native/put.c): a plain ``db.put(k, v)`` is then one C call, with no Python
        frame (it cost a fifth of an overwrite); options and whatever the kernel declines go
        to :meth:`put` below, the reference. Not where ``put`` is another class's (a
        subclass, or the crash harness's sabotage)."""
        self._unbind_writer()
        if self._native_put is None or type(self).put is not _reference_put:
            return
        self._writer = Writer(self, _reference_put)
        self.put = self._writer.put  # type: ignore[method-assign]

    def _unbind_writer(self) -> None:
        """Every put, also one bound earlier, goes through :meth:`put` (closed, or the
        kernel switched off)."""
        if self._writer is not None:
            self._writer.detach()
            self._writer = None
        self.__dict__.pop("put", None)

    def _use_native_put(self, enabled: bool) -> None:
        """Switch the put kernel off (or back on where the store allows it): for tests that
        compare it with the Python path."""
        self._native_put = self._choose_native_put() if enabled else None
        self._bind_writer()

    def _unbind_reader(self) -> None:
        """Closed: every get, also one bound earlier, goes through Python (ClosedError)."""
        if self._reader is not None:
            self._reader.detach()
            self._reader = None
        self._get_many_kernel = None
        self.__dict__.pop("get", None)

    # -- opening -----------------------------------------------------------------------------

    def _open_active(self) -> Segment:
        """Make the segment writes go to the active one: the newest append segment if it can
        take more, else (after sealing it durably) a new one. Return it."""
        segments = self._table.segments
        last = segments[-1] if segments else None
        damaged_tail = self.recovery_report.damage_past_durable_end
        if (last is not None and last.kind == seg_mod.KIND_APPEND and not last.header_damaged
                and last.size < self.max_segment_size and not damaged_tail):
            self._log.continue_segment(last)
            return last
        if last is not None and last.kind == seg_mod.KIND_APPEND:
            # With damage a crash left past its mark, it stays vouched for only up to there.
            self._log.seal_for_open(last, last.durable_end if damaged_tail else None)
        new = self._log.new_segment()
        self._log.active = new
        return new

    def _fsync_failed(self, exc: OSError, path: str) -> None:
        """FsyncGuard's report: the log refuses writes from now on (and logs it, once)."""
        self._log.fail(exc, f"an fsync failed on {path}")

    def _rotated(self, new: Segment) -> None:
        """The log started ``new``: its hidden records start empty; maybe compact now."""
        self._keydir.hidden = {}
        self._maintenance.wake()

    def _lock_still_held(self) -> None:
        self._verify_lock(raise_now=True)

    @property
    def expired_keys(self) -> int:
        """Keys removed from the index because they expired, since this open (a key is
        removed at the next purge after its expiry: reads hide it at once)."""
        return self._keydir.expired_count

    @property
    def last_sync_error(self) -> str | None:
        """Why the last fsync (or the DURABLE mark after one) failed, if one did."""
        return self._log.last_sync_error

    # -- helpers -----------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _expiry_ms(self, ttl: float | None) -> int:
        if ttl is None:
            return 0
        return self._now_ms() + max(1, round(check_ttl(ttl) * 1000))

    def _check_writable(self) -> None:
        if self._closed:
            raise ClosedError("the store is closed")
        if self.readonly:
            raise ReadOnlyError(f"store {self.path!r} was opened read-only")
        self._log.check()

    def _verify_lock(self, *, raise_now: bool = False) -> None:
        """Refuse writes if the lock this store holds no longer guards its path: ``LOCK`` or
        the directory was removed or replaced, so another writer could lock the new one and
        append at the same offsets. Called by the background threads, at rotation and sync."""
        lock = self._store_lock
        if lock is not None and self._log.write_refusal is None and not self._closed \
                and not lock.still_held():
            self._log.refuse("its LOCK file or directory was removed or replaced while "
                             "this process held the lock, so another process may be "
                             "writing to it too")
        if raise_now and self._log.write_refusal is not None:
            self._check_writable()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the store is closed")

    def _drop_expired(self, k: bytes, entry: int, expiry_ms: int) -> None:
        """Unindex an expired key. Locked. Its record stays on disk, still expired; with
        ``log_expirations`` a tombstone follows it (when the log takes writes)."""
        if self.log_expirations and not self._log.refused:
            try:
                self._delete_locked(k, entry)
                self._keydir.expired_count += 1
                return
            except (OSError, Error) as exc:  # unindexed below all the same
                log.warning("bitkv store %s: could not log the expiry of %r: %s", self.path,
                            k, exc)
                entry = self._entries.get(k, entry)
                if k not in self._entries:
                    return
        active = self._log.active
        hide = None
        if active is not None and entry >> SLOT_SHIFT == active.slot:
            # The checkpoint hint must still carry this record, or an older version of the
            # key in an earlier segment would come back at the next open.
            offset = (entry >> SIZE_BITS) & _OFFSET_MASK
            hide = (offset, self._keydir.record_size(entry), 0, expiry_ms)
        self._keydir.unindex_expired(k, entry, hide)

    def _read(self, key: bytes, entry: int) -> tuple[rec.Header, bytes] | None:
        """Read and verify the record ``entry`` points at; None if the key vanished meanwhile."""
        failures = 0
        for _attempt in range(8):
            seg = self._table.slots[entry >> SLOT_SHIFT]
            offset = (entry >> SIZE_BITS) & _OFFSET_MASK
            try:
                if seg is None:
                    raise ValueError("its segment is no longer open")
                return seg.read_record(offset, entry & SIZE_MASK, key)
            except (ValueError, OSError) as exc:
                # Compaction may have switched the key and closed (or reused) the segment
                # under us, or rotation swapped the segment's descriptor for a map between
                # our two loads: if the index moved on, read from the new place; if not,
                # read once more, and only a second failure of the same record is damage.
                newer = self._entries.get(key)
                if newer is None:
                    return None
                if newer == entry:
                    failures += 1
                    if failures < 2:
                        continue
                    where = seg.path if seg is not None else "a closed segment"
                    raise IntegrityError(
                        f"key {key!r}: record at {where} offset {offset} is damaged: {exc}"
                    ) from None
                entry = newer
        raise CorruptionError(f"key {key!r}: its segment kept changing while reading")

    def _value_of(self, key: bytes, entry: int) -> bytes | None:
        got = self._read(key, entry)
        if got is None:
            return None
        return self._decoded(key, *got)

    def _decoded(self, key: bytes, header: rec.Header, stored: bytes) -> bytes:
        """The user's value of a record read as ``(header, stored)``."""
        if header.flags & _DECODED_FLAGS or not self._plain_ok:
            return self._decode_value(key, header, stored)
        return stored

    def _read_live(self, k: bytes) -> tuple[rec.Header, bytes, int] | None:
        """The live record of ``k``: its header, its stored (still encoded) value and its
        expiry (0: none), or None if ``k`` has no live value. The entry is looked up again
        after the read, and the read retried if a writer replaced the record meanwhile, so
        the value and the expiry belong to the same record."""
        for _attempt in range(8):
            entry = self._live_entry(k)
            if entry is None:
                return None
            expiry = self._expiries.get(k, 0) if self._expiries else 0
            got = self._read(k, entry)
            if got is None:
                return None
            if self._entries.get(k) == entry:
                return got[0], got[1], expiry
        raise Error(f"key {k!r} kept changing while being read")

    def _decode_value(self, key: bytes, header: rec.Header, stored: bytes) -> bytes:
        return self._codec.decode(key, header.flags, header.seq, header.expiry_ms, stored)

    def _live_entry(self, key: bytes) -> int | None:
        entry = self._entries.get(key)
        if entry is not None and self._expiries:
            exp = self._expiries.get(key)
            if exp is not None and exp <= self._now_ms() and not self._sees_expired():
                return None
        return entry

    @property
    def sees_expired(self) -> bool:
        """True inside :meth:`seeing_expired` on the calling thread."""
        return self._sees_expired()

    def _sees_expired(self) -> bool:
        """True inside :meth:`seeing_expired` on this thread (checked only for an expired
        key, so it costs nothing on the common path)."""
        return bool(getattr(self._seeing, "on", False))

    @contextlib.contextmanager
    def seeing_expired(self) -> Iterator[None]:
        """Within the block, on the calling thread, keys that expired but are still indexed
        (``hold_expired``) count as live for reads and writes. A replica applies its master's
        commands so: the master sent them while the key was alive there."""
        self._seeing.on = True
        try:
            yield
        finally:
            self._seeing.on = False

    # -- the mapping API ---------------------------------------------------------------------

    def get(self, key: KeyLike, default: _T | None = None) -> bytes | _T | None:  # type: ignore[override]
        """Return the value of ``key``, or ``default`` if it is missing or expired.

        Raises :class:`CorruptionError` if the stored record fails its CRC: damaged bytes are
        never returned as data.
        """
        k = key if type(key) is bytes and key and len(key) <= _MAX_KEY else to_key(key)
        entry = self._entries.get(k)
        if entry is None:
            return default
        if self._expiries:
            exp = self._expiries.get(k)
            if exp is not None and exp <= self._now_ms() and not self._sees_expired():
                return default
        # Fast path, inlined because it is most of a get's cost: a record smaller than 4 KiB
        # in mapped bytes, plain (not compressed or encrypted). Anything unusual, including a
        # failed check, takes the careful path below, which decides between race and damage.
        size = entry & SIZE_MASK
        seg = self._table.slots[entry >> SLOT_SHIFT]
        if size and seg is not None:
            # mapped before mm: maps only grow, and mm is stored before mapped, so the map
            # read second is always at least as long as the length read first.
            mapped = seg.mapped
            mm = seg.mm
            offset = (entry >> SIZE_BITS) & _OFFSET_MASK
            if mm is not None and offset + size <= mapped:
                try:
                    buf = mm[offset : offset + size]
                except ValueError:  # map closed by compaction or close()
                    buf = b""
                if len(buf) == size:
                    crc, flags, _r, key_len, _v, _s, _e = _unpack_header(buf)
                    if (not flags & _ENCODED and key_len == len(k) and self._plain_ok
                            and buf.startswith(k, _HEADER_SIZE)
                            and _crc32c(buf[4:]) == crc):
                        return buf[_HEADER_SIZE + key_len :]
        value = self._value_of(k, entry)
        return default if value is None else value

    def get_many(self, keys: Iterable[KeyLike], default: _T | None = None
                 ) -> list[bytes | _T | None]:
        """Return, as a list in the order of ``keys``, what :meth:`get` returns for each key
        with ``default``: its value, or ``default`` if it is missing or expired.

        ``keys`` is any iterable of keys (a list, a tuple, a generator; it is read once, to
        the end, before anything is returned); a key may appear more than once. Each key is
        read exactly as :meth:`get` reads it (TTLs, namespaces, encryption and compression
        alike) and raises what :meth:`get` would raise (TypeError or ValueError for a bad
        key, :class:`CorruptionError` for a damaged record); the first error ends the call
        and nothing is returned. A str or bytes-like ``keys`` (one key rather than a batch of
        them) is a TypeError. On a closed store it raises :class:`ClosedError`, whatever
        ``keys`` holds.

        Not atomic: there is no snapshot. Each value is one that :meth:`get` of that key
        would have returned at some moment during the call, and a write another thread makes
        meanwhile may be seen by some keys of the batch and not by others (keys are read
        roughly in order). For a consistent view of several keys, write them in one
        :meth:`batch` and read them with nothing else writing them.

        In native mode the compiled kernel reads the keys in groups and overlaps their
        memory accesses (the index slot, then the record), which makes a key of a large
        store cheaper to read than one :meth:`get`; in pure-Python mode it is the loop of
        :meth:`get`.
        """
        # A tuple first in both modes: the keys are all read before any value is, and the
        # kernel then needs no copy of its own.
        batch = tuple(key_batch(keys, "get_many"))
        self._check_open()
        kernel = self._get_many_kernel
        if kernel is not None:
            return kernel(batch, default)
        get = self.get
        return [get(k, default) for k in batch]

    def __getitem__(self, key: KeyLike) -> bytes:
        value = self.get(key)
        if value is None:  # values are bytes, never None: None means no live value
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        k = to_key(key)
        return self._live_entry(k) is not None

    def put(self, key: KeyLike, value: ValueLike, *, ttl: float | None = None,
            if_absent: bool = False, if_present: bool = False, keep_ttl: bool = False,
            expires_at_ms: int | None = None) -> bool:
        """Store ``value`` under ``key``; return True if written, False if a condition failed.

        ``ttl`` is in seconds (None: never expires). ``if_absent`` writes only if the key has
        no live value, ``if_present`` only if it has one; ``keep_ttl`` keeps the key's current
        expiry (``ttl`` must then be None). ``expires_at_ms`` is an absolute expiry in Unix
        milliseconds instead of ``ttl`` (a time in the past writes the key already expired).
        The check and the write are atomic.

        When this returns, the write has reached the OS (it survives the process being
        killed); with ``sync="always"`` it is also on stable storage (it survives power loss).
        """
        fast = self._native_put
        if (fast is not None and ttl is None and expires_at_ms is None and not if_absent
                and not if_present and not keep_ttl and fast(self, key, value)):
            # bitkv/native/put.c did all of the plain branch below (map write, seq, index,
            # accounting) under the writer lock; it declines (False) anything else.
            return True
        k = key if type(key) is bytes and key and len(key) <= _MAX_KEY else to_key(key)
        v = value if type(value) is bytes and len(value) <= _MAX_VALUE else to_value(value)
        expiry_ms = self._expiry_ms(ttl) if ttl is not None else 0
        if expires_at_ms is not None:
            if ttl is not None or keep_ttl:
                raise ValueError("expires_at_ms excludes ttl and keep_ttl")
            expiry_ms = check_expires_at_ms(expires_at_ms)
        flags = 0
        if self._encoding:
            v, flags = self._codec.compress(v)  # sealed below, once the seq is known
        if if_absent or if_present or keep_ttl:
            if keep_ttl and ttl is not None:
                raise ValueError("keep_ttl=True and a ttl contradict each other")
            if if_absent and if_present:
                raise ValueError("if_absent and if_present cannot both be true")
            with self._lock:
                self._check_writable()
                live = self._live_entry(k) is not None
                if (if_absent and live) or (if_present and not live):
                    return False
                if keep_ttl and live:
                    expiry_ms = self._expiries.get(k, 0) if self._expiries else 0
                seg, end = self._write_locked(k, v, flags, expiry_ms)
        elif (self._write_queue is not None and self._evictor is None
              and not self._deferral.depth):
            # sync="always": one write and one fdatasync for this put and every other queued
            # meanwhile (_commit_puts); returns once they are on disk.
            self._write_queue.submit((k, v, flags, expiry_ms), _HEADER_SIZE + len(k) + len(v))
            return True
        else:
            with self._lock:
                if self._log.refused:
                    self._check_writable()
                if self._evictor is not None:  # cache mode: room first (may evict)
                    self._evictor.before_write(
                        k, _HEADER_SIZE + len(k) + len(v) + self._seal_overhead, expiry_ms)
                # The seq is taken only once the write succeeded: appended seqs stay
                # contiguous, which recovery's resynchronisation relies on (record.scan).
                seq = self._next_seq
                if self._sealing:
                    v, flags = self._codec.seal(k, v, flags, seq, expiry_ms)
                body = _pack_body(flags, 0, len(k), len(v), seq, expiry_ms) + k + v
                data = _pack_crc(_crc32c(body)) + body
                size = len(data)
                seg = self._log.active  # type: ignore[assignment]  # set while writable
                offset = seg.size
                end = offset + size
                if end > self.max_segment_size or not self._map_writes:
                    seg, offset = self._log.append(data)  # it rotates first if it must
                    end = offset + size
                else:
                    # LogWriter.append inlined for the common case (a map write, no
                    # rotation), kill point included, so crash tests exercise it.
                    if end > seg.allocated:
                        self._log.make_room(seg, end)  # fails before any byte is written
                    if self._plain_io:
                        # A store into the page cache: it cannot fail half way (the range
                        # is allocated, so no SIGBUS either), so there is nothing to undo.
                        seg.mm[offset:end] = data  # type: ignore[index]
                    else:
                        self._io.map_write(seg.mm, seg.fd, offset, data)  # type: ignore[arg-type]
                    seg.size = end
                    if killpoints.ENABLED:
                        killpoints.hit("append.after_write")
                self._next_seq = seq + 1
                # KeyDir.apply for a plain put, inlined: the single-put hot path (a method
                # call here costs ~6% of put throughput). Same rules, same order.
                kd = self._keydir
                entries = kd.entries
                old = entries.get(k)
                if old is not None:  # the overwritten record becomes dead bytes
                    kd.forget(old)
                entries[k] = (seg.slot << SLOT_SHIFT) | (offset << SIZE_BITS) | (
                    size if size <= SIZE_MASK else 0)
                seg.live_bytes += size
                if kd.hidden:
                    kd.hidden.pop(k, None)
                if expiry_ms:
                    kd.expiries[k] = expiry_ms
                    if expiry_ms < kd.next_expiry:
                        kd.next_expiry = expiry_ms
                elif kd.expiries:
                    kd.expiries.pop(k, None)
        if self._sync_always and not self._deferral.depth:
            self._log.wait_durable(seg, end)
        return True

    def _commit_puts(self, puts: list[_QueuedPut]) -> None:
        """Write a group of plain puts (key, value as stored but not sealed, flags, expiry)
        with one append, in the order given, index them, and return once they are fdatasynced
        (the group commit of the write queue: writequeue.py). Raises for all of them: nothing
        is written if the append fails; after a failed fdatasync writes are refused."""
        with self._lock:
            if self._log.refused:
                self._check_writable()
            seq = first_seq = self._next_seq
            sealing = self._sealing
            records = []
            for k, v, flags, expiry_ms in puts:
                if sealing:
                    v, flags = self._codec.seal(k, v, flags, seq, expiry_ms)
                records.append((rec.encode(k, v, seq, expiry_ms, flags), flags))
                seq += 1
            # One write for the group; the seqs are taken only once it succeeded, so that
            # appended seqs stay contiguous and in log order (recovery relies on both).
            seg, offset = self._log.append(
                records[0][0] if len(records) == 1 else b"".join(r for r, _ in records))
            self._next_seq = first_seq + len(records)
            apply = self._keydir.apply
            slot = seg.slot
            for (k, _, _, expiry_ms), (data, flags) in zip(puts, records, strict=True):
                apply(seg, slot, k, offset, len(data), flags, expiry_ms)
                offset += len(data)
        self._log.wait_durable(seg, offset)

    def _write_locked(self, k: bytes, stored: bytes, flags: int, expiry_ms: int
                      ) -> tuple[Segment, int]:
        """Append and index one record; return (segment, end offset). Locked.

        ``stored`` is compressed (if at all) but not yet sealed: sealing needs the seq.
        """
        if self._evictor is not None:  # cache mode: room first (may evict, taking seqs)
            self._evictor.before_write(
                k, _HEADER_SIZE + len(k) + len(stored) + self._seal_overhead, expiry_ms)
        seq = self._next_seq
        if self._sealing:
            stored, flags = self._codec.seal(k, stored, flags, seq, expiry_ms)
        data = rec.encode(k, stored, seq, expiry_ms, flags)
        seg, offset = self._log.append(data)
        self._next_seq = seq + 1
        self._keydir.apply(seg, seg.slot, k, offset, len(data), flags, expiry_ms)
        return seg, offset + len(data)

    def _delete_locked(self, k: bytes, entry: int) -> tuple[Segment, int]:
        """Write a tombstone for live key ``k`` and unindex it. Locked."""
        seq = self._next_seq
        data = rec.encode(k, b"", seq, 0, rec.TOMBSTONE)
        seg, offset = self._log.append(data)
        self._next_seq = seq + 1
        self._keydir.unindex(k, entry, (offset, len(data), rec.TOMBSTONE, 0))
        return seg, offset + len(data)

    def _durable(self, seg: Segment, end: int) -> None:
        if self._sync_always and not self._deferral.depth:
            self._log.wait_durable(seg, end)

    def __setitem__(self, key: KeyLike, value: ValueLike) -> None:
        self.put(key, value)

    # -- atomic read-modify-write ------------------------------------------------------------

    def _current_locked(self, k: bytes) -> bytes | None:
        entry = self._live_entry(k)
        return None if entry is None else self._value_of(k, entry)

    def incr(self, key: KeyLike, delta: int = 1, *, ttl: float | None = None) -> int:
        """Atomically add ``delta`` to the integer stored at ``key`` and return the result.

        The value is ASCII decimal (like Redis). A missing key starts at 0, and only then is
        ``ttl`` applied, so a fixed rate-limit window is one call that can never leave the
        counter without its expiry; an existing key keeps its TTL. Raises
        :class:`NotAnIntegerError` (changing nothing) if the value is not an integer or the
        result leaves the signed 64-bit range.
        """
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise TypeError(f"delta must be an int, not {type(delta).__name__}")
        k = to_key(key)
        new_expiry = self._expiry_ms(ttl) if ttl is not None else 0
        with self._lock:
            self._check_writable()
            current = self._current_locked(k)
            if current is None:
                number, expiry_ms = 0, new_expiry
            else:
                number = parse_int(k, current)
                expiry_ms = self._expiries.get(k, 0) if self._expiries else 0
            result = number + delta
            if not INT64_MIN <= result <= INT64_MAX:
                raise NotAnIntegerError(f"incrementing key {k!r} by {delta} would overflow "
                                        "a signed 64-bit integer")
            stored, flags = str(result).encode("ascii"), 0
            if self._encoding:
                stored, flags = self._codec.compress(stored)
            seg, end = self._write_locked(k, stored, flags, expiry_ms)
        self._durable(seg, end)
        return result

    def compare_and_set(self, key: KeyLike, expected: ValueLike | None, new: ValueLike, *,
                        ttl: float | None = None) -> bool:
        """Atomically set ``key`` to ``new`` if its value is ``expected`` (None: absent).

        Return True if it was set. ``ttl`` applies to the new value (None: no expiry).
        """
        k = to_key(key)
        want = None if expected is None else to_value(expected)
        v = to_value(new)
        expiry_ms = self._expiry_ms(ttl) if ttl is not None else 0
        flags = 0
        if self._encoding:
            v, flags = self._codec.compress(v)
        with self._lock:
            self._check_writable()
            if self._current_locked(k) != want:
                return False
            seg, end = self._write_locked(k, v, flags, expiry_ms)
        self._durable(seg, end)
        return True

    # -- items: values with memcached's client flags and CAS -----------------------------------

    def get_item(self, key: KeyLike) -> Item | None:
        """Return the live ``key`` as an :class:`Item` (value, client flags, cas, expiry),
        else None. ``cas`` is the seq of the key's record, the number :meth:`version` returns:
        it changes with every write of the key and survives reopening and compaction (which
        copy records, seq included)."""
        k = to_key(key)
        live = self._read_live(k)
        if live is None:
            return None
        header, stored, expiry = live
        if header.flags & _DECODED_FLAGS or not self._plain_ok:
            value, client_flags = self._codec.decode_item(
                k, header.flags, header.seq, header.expiry_ms, stored)
        else:
            value, client_flags = stored, 0
        return Item(value, client_flags, header.seq, expiry)

    def put_item(self, key: KeyLike, value: ValueLike, *, client_flags: int = 0,
                 expires_at_ms: int = 0, if_absent: bool = False, if_present: bool = False,
                 if_cas: int | None = None) -> int | None:
        """Store ``value`` with memcached ``client_flags`` (a u32, docs/format.md "Client
        flags") and an absolute expiry (Unix ms, 0: none; a time in the past writes it
        expired). Return the new record's cas (its seq), or None if a condition failed:
        ``if_absent`` (no live value), ``if_present`` (a live value), ``if_cas`` (the live
        value's cas is this one). The check and the write are atomic."""
        k = to_key(key)
        v = to_value(value)
        if isinstance(client_flags, bool) or not isinstance(client_flags, int) \
                or not 0 <= client_flags <= codec.MAX_CLIENT_FLAGS:
            raise ValueError(f"client_flags must be an int from 0 to 2**32 - 1, not "
                             f"{client_flags!r}")
        expiry_ms = check_expires_at_ms(expires_at_ms) if expires_at_ms else 0
        if if_absent and (if_present or if_cas is not None):
            raise ValueError("if_absent excludes if_present and if_cas")
        v, flags = codec.join_client_flags(v, client_flags)
        if self._encoding:
            v, more = self._codec.compress(v)
            flags |= more
        with self._lock:
            self._check_writable()
            entry = self._live_entry(k)
            if (if_absent and entry is not None) or (if_present and entry is None):
                return None
            if if_cas is not None:
                got = None if entry is None else self._read(k, entry)
                if got is None or got[0].seq != if_cas:
                    return None
            seg, end = self._write_locked(k, v, flags, expiry_ms)
            # The record's seq is the last one taken: in cache mode the write may first have
            # evicted keys, whose tombstones took the seqs before it.
            seq = self._next_seq - 1
        self._durable(seg, end)
        return seq

    def get_and_delete(self, key: KeyLike) -> bytes | None:
        """Atomically delete ``key`` and return the value it had (None if it had none)."""
        k = to_key(key)
        with self._lock:
            self._check_writable()
            entry = self._live_entry(k)
            if entry is None:
                return None
            value = self._value_of(k, entry)
            if value is None:
                return None
            seg, end = self._delete_locked(k, entry)
        self._durable(seg, end)
        return value

    def pop(self, key: KeyLike, default: Any = _MISSING) -> Any:
        """Atomically remove ``key`` and return its value, else ``default`` (or KeyError)."""
        value = self.get_and_delete(key)
        if value is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return value

    def setdefault(self, key: KeyLike, default: ValueLike = b"") -> bytes:
        """Return the value of ``key``, first storing ``default`` if it has none (atomic)."""
        k = to_key(key)
        d = to_value(default)
        while True:
            value = self.get(k)
            if value is not None:
                return value
            if self.put(k, d, if_absent=True):
                return d

    def get_with_ttl(self, key: KeyLike) -> tuple[bytes, float | None] | None:
        """Return ``(value, seconds_left_or_None)`` for a live key, else None."""
        k = to_key(key)
        live = self._read_live(k)
        if live is None:
            return None
        header, stored, expiry = live
        value = self._decoded(k, header, stored)
        return value, (expiry - self._now_ms()) / 1000.0 if expiry else None

    def batch(self) -> Batch:
        """Return an atomic batch: ``with db.batch() as b: b.put(...); b.delete(...)``.

        On leaving the block without an exception, every operation is written with one write
        call (and at most one fsync): after a crash at any point either all of them are
        visible or none is. An exception inside the block discards the batch.
        """
        self._check_writable()
        return Batch(self._commit_batch)

    def _commit_batch(self, ops: list[tuple[bytes, bytes | None, float | int | None]]) -> None:
        """Write ``ops`` (key, value or None for a delete, expiry) as one atomic batch; an
        expiry is a ttl in seconds (float) or absolute Unix milliseconds (int).

        The loop bodies are inlined (encode and index), because bulk loading through batches
        is the fastest way into the store and spends its time here.
        """
        if not ops:
            return
        now_ms = self._now_ms()
        encoding = self._encoding
        if _encode_batch is not None and not encoding:
            # The batch kernel (bitkv/native/batch.c): the records encoded into one buffer
            # and indexed in C. None from encode_batch means "not for the kernel" (an op it
            # does not handle): the loop below, the reference, writes those.
            with self._lock:
                self._check_writable()
                if self._evictor is not None:  # cache mode: room for all of it first
                    self._evictor.before_batch([
                        (k, 0 if v is None else _HEADER_SIZE + len(k) + len(v),
                         1 if expiry else 0) for k, v, expiry in ops])
                first_seq = self._next_seq
                data = _encode_batch(ops, first_seq, now_ms)
                if data is not None:
                    seg, pos = self._log.append(data)
                    self._next_seq = first_seq + len(ops)
                    pos = self._keydir.apply_batch(seg, seg.slot, pos, ops, data)
            if data is not None:
                self._durable(seg, pos)
                return
        tombstone = rec.TOMBSTONE
        staged: list[tuple[bytes, bytes | None, int, int]] = []
        for k, v, expiry in ops:
            if v is None:
                staged.append((k, None, tombstone, 0))
                continue
            flags = 0
            if encoding:
                v, flags = self._codec.compress(v)  # sealed under the lock, below
            if type(expiry) is int:
                expiry_ms = expiry  # absolute (Batch.put's expires_at_ms)
            else:
                expiry_ms = now_ms + max(1, round(expiry * 1000)) if expiry else 0
            staged.append((k, v, flags, expiry_ms))
        last = len(staged) - 1
        batch_bits = rec.BATCH if last else 0
        pack_body, pack_crc, crc = _pack_body, _pack_crc, _crc32c
        seal = self._codec.seal if self._sealing else None
        with self._lock:
            self._check_writable()
            if self._evictor is not None:  # cache mode: room for all of it first
                self._evictor.before_batch([
                    (k, 0 if v is None else
                     _HEADER_SIZE + len(k) + len(v) + self._seal_overhead, expiry_ms)
                    for k, v, _flags, expiry_ms in staged])
            first_seq = self._next_seq
            parts = []
            for i, (k, v, flags, expiry_ms) in enumerate(staged):
                if seal is not None and v is not None:
                    v, flags = seal(k, v, flags, first_seq + i, expiry_ms)
                if batch_bits:
                    flags |= batch_bits | (rec.BATCH_FIRST if i == 0 else 0) | (
                        rec.BATCH_LAST if i == last else 0)
                body = pack_body(flags, 0, len(k), len(v) if v else 0, first_seq + i,
                                 expiry_ms) + k + (v or b"")
                parts.append(pack_crc(crc(body)) + body)
            seg, pos = self._log.append(b"".join(parts))
            self._next_seq = first_seq + len(staged)
            pos = self._keydir.apply_run(seg, seg.slot, pos, (
                (k, len(data), tombstone if v is None else 0, expiry_ms)
                for (k, v, _flags, expiry_ms), data in zip(staged, parts, strict=True)))
        self._durable(seg, pos)

    @property
    def json(self) -> JsonView:
        """A view that stores JSON documents: ``db.json.put(key, obj, ttl=...)``, ``get``."""
        from .views import JsonView

        return JsonView(self)

    def namespace(self, prefix: KeyLike) -> Namespace:
        """A view confined to keys starting with ``prefix`` (given and returned without it)."""
        from .views import Namespace

        return Namespace(self, prefix)

    def train_compression_dictionary(self, samples: list[bytes] | None = None, *,
                                     dict_size: int = 16 * 1024, sample_count: int = 2000) -> int:
        """Train a zstd dictionary and compress new values with it; return its id.

        ``samples`` defaults to up to ``sample_count`` values read from the store. The
        dictionary is stored in the store directory so every later open can decompress.
        """
        self._check_writable()
        if samples is None:
            samples = []
            for _k, v in self.items():
                samples.append(v)
                if len(samples) >= sample_count:
                    break
        return self._codec.train(samples, dict_size)

    def delete(self, key: KeyLike) -> bool:
        """Delete ``key``. Return True if a live key was deleted, False if there was none."""
        k = to_key(key)
        with self._lock:
            self._check_writable()
            entry = self._entries.get(k)
            if entry is None:
                return False
            exp = self._expiries.get(k) if self._expiries else None
            if exp is not None and exp <= self._now_ms():
                # Already invisible, and the expired record stays expired after a reopen.
                self._drop_expired(k, entry, exp)
                return False
            seg, end = self._delete_locked(k, entry)
        self._durable(seg, end)
        return True

    def __delitem__(self, key: KeyLike) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __len__(self) -> int:
        """The number of live (not deleted, not expired) keys."""
        self._check_open()
        self._purge_expired()
        return len(self._entries)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.keys())

    def keys(self, prefix: KeyLike | None = None) -> KeysView:
        """The live keys, optionally only those starting with ``prefix``: a view.

        Like a dict's ``keys()``: ``len(db.keys())``, ``k in db.keys()``, and iteration as
        often as wanted, each reflecting the store at that moment (a view, not a copy; making
        one costs nothing). An iteration yields the keys live when it starts, in no
        particular order, skipping those deleted or expired before they are reached. ``len``
        is O(1) without a prefix and one pass over the index with one. With a prefix, listing
        and ``len`` make only the keys that match (the index compares the others in place):
        a prefix that few keys have is cheap on a large store. Raises :class:`ClosedError` on
        a closed store (and so does using a view after ``close``).
        """
        self._check_open()
        p = None if prefix is None else to_prefix(prefix)
        return KeysView(self, p, lambda: self._key_snapshot(p), lambda: self._count_keys(p))

    def _key_snapshot(self, prefix: bytes | None) -> list[bytes]:
        """The keys indexed now (under ``prefix``); some may expire before they are read."""
        self._check_open()
        self._purge_expired()
        with self._lock:  # the index cannot be iterated while a writer changes it
            return self._keydir.keys_with_prefix(prefix or b"")

    def _count_keys(self, prefix: bytes | None) -> int:
        """How many live keys (under ``prefix``) an iteration started now would yield."""
        self._check_open()
        self._purge_expired()
        held = self.hold_expired and self._expiries and not self._sees_expired()
        if not prefix and not held:
            return len(self._entries)  # after the purge, every indexed key is live
        with self._lock:
            if not held:
                return self._keydir.count_with_prefix(prefix or b"")
            expiries = self._expiries
            now = self._now_ms()
            # held for a replica (hidden from reads): an expired key is not counted
            return sum(1 for k in self._keydir.keys_with_prefix(prefix or b"")
                       if expiries.get(k, now + 1) > now)

    def items(self, prefix: KeyLike | None = None) -> ItemsView[bytes]:
        """(key, value) pairs of live keys, optionally only those under ``prefix``: a view
        like :meth:`keys` (``len``, iterable again); each value is read when reached."""
        return ItemsView(self.keys(prefix))

    def values(self, prefix: KeyLike | None = None) -> ValuesView[bytes]:
        """The values of live keys, optionally only those under ``prefix``: a view like
        :meth:`keys`."""
        return ValuesView(self.keys(prefix))

    # -- TTL ---------------------------------------------------------------------------------

    def ttl(self, key: KeyLike) -> float | None:
        """Seconds until ``key`` expires, or None if it never does.

        Raises KeyError if the key is missing or expired.
        """
        k = to_key(key)
        if k not in self._entries:
            raise KeyError(key)
        exp = self._expiries.get(k) if self._expiries else None
        if exp is None:
            return None
        left = exp - self._now_ms()
        if left <= 0 and not self._sees_expired():
            raise KeyError(key)
        return left / 1000.0

    def expire(self, key: KeyLike, ttl: float) -> bool:
        """Give ``key`` a new TTL in seconds. Return False if the key is missing or expired."""
        return self._rewrite_expiry(to_key(key), self._expiry_ms(check_ttl(ttl)))

    def expire_at(self, key: KeyLike, at_ms: int) -> bool:
        """Make ``key`` expire at ``at_ms`` (absolute Unix milliseconds; a time in the past
        expires it now). Return False if the key is missing or already expired."""
        return self._rewrite_expiry(to_key(key), check_expires_at_ms(at_ms))

    def persist(self, key: KeyLike) -> bool:
        """Remove the TTL of ``key``. Return True if it had one, False if missing or none."""
        k = to_key(key)
        if not self._expiries or k not in self._expiries:
            self._check_writable()
            return False
        return self._rewrite_expiry(k, 0)

    def _rewrite_expiry(self, k: bytes, expiry_ms: int) -> bool:
        with self._lock:
            self._check_writable()
            entry = self._live_entry(k)
            if entry is None:
                return False
            if expiry_ms == 0 and k not in self._expiries:
                return False
            got = self._read(k, entry)
            if got is None:
                return False
            header, stored = got
            flags = header.flags & ~rec.BATCH_FLAGS
            if flags & rec.ENCRYPTED or not self._plain_ok:
                # The expiry and seq are sealed into the value: open it (which also refuses a
                # plain record in a strict store) and let _write_locked seal it anew.
                stored, flags = self._codec.unseal(k, flags, header.seq, header.expiry_ms,
                                                   stored)
            seg, end = self._write_locked(k, stored, flags, expiry_ms)
        self._durable(seg, end)
        return True

    def _purge_expired(self) -> None:
        """Drop expired keys from the index (their records are reclaimed by compaction)."""
        if not self._expiries or self.hold_expired:
            return
        now = self._now_ms()
        if now < self._keydir.next_expiry:
            return
        with self._lock:
            if self._closed:
                return
            self._purge_expired_locked(now)

    def _purge_expired_locked(self, now: int) -> None:
        """:meth:`_purge_expired`'s work, with the lock held (cache mode calls it before
        making room, so that expired keys go before any live one)."""
        for k in self._keydir.expired_keys(now):
            entry = self._entries.get(k)
            if entry is not None:
                self._drop_expired(k, entry, self._expiries[k])
            else:
                self._keydir.remove(k)
        self._keydir.recompute_next_expiry()

    def purge_expired(self) -> None:
        """Drop every expired key from the index now (with ``log_expirations``: a tombstone
        each). The store does this by itself from time to time; a replication master calls it
        often, so its replicas hear of expiries soon."""
        self._check_open()
        self._purge_expired()

    def items_with_expiry(self) -> Iterator[tuple[bytes, bytes, int]]:
        """Iterate over (key, value, expiry) of live keys; expiry in absolute Unix
        milliseconds, 0 for none. Like :meth:`items`, not a point-in-time snapshot: a key
        changed during the iteration is seen with its value at the time it is reached."""
        for k in self.keys():
            with self._lock:
                entry = self._live_entry(k)
                expiry = self._expiries.get(k, 0) if self._expiries else 0
            if entry is None:
                continue
            value = self._value_of(k, entry)
            if value is not None:
                yield k, value, expiry

    def get_with_expiry(self, key: KeyLike) -> tuple[bytes, int] | None:
        """Return ``(value, expiry_ms)`` for a live key, else None: the expiry as stored, in
        absolute Unix milliseconds (0: none), so it can be written back unchanged
        (``put(..., expires_at_ms=...)``) where a TTL in seconds would drift."""
        k = to_key(key)
        live = self._read_live(k)
        if live is None:
            return None
        header, stored, expiry = live
        return self._decoded(k, header, stored), expiry

    def version(self, key: KeyLike) -> int | None:
        """Return the version of ``key``'s live value, None if it has none (missing, expired).

        The version is the seq of the record holding the value: every write to the key (put,
        incr, a new expiry, persist; through a batch too) gives it a new, larger one, and
        compaction, which moves records, keeps it. So two equal answers mean nothing was
        written to the key in between, or the key was absent both times (a key created and
        deleted again in between is not told apart). The server's WATCH compares versions.
        The record is read and its CRC checked (as a get does), so the cost grows with the
        value's size; raises :class:`CorruptionError` if it fails the check.
        """
        live = self._read_live(to_key(key))
        return None if live is None else live[0].seq

    # -- backup --------------------------------------------------------------------------------

    def backup(self, dest: str | os.PathLike[str], *, incremental: bool = False,
               link: bool = True, progress: Callable[[int, int], None] | None = None
               ) -> backup_mod.BackupReport:
        """Copy the store, as it is at this call, into the directory ``dest``: a complete
        store that :func:`bitkv.open` and :func:`bitkv.check` accept (docs/backup.md).

        Hot: writes, reads and compaction go on meanwhile; the writer lock is held only to
        pin the segments (open each). The backup holds every write that returned before
        the call and none made after the pin (a write racing the call is wholly in or wholly
        out; a batch is always whole). ``dest`` must not exist, or be empty
        (or hold a backup that was interrupted); with ``incremental=True`` it must be an
        earlier backup of this store, and only what it lacks is copied. ``link=False`` copies
        sealed segments instead of hard-linking them (a link shares the disk blocks with the
        store). ``progress(done_bytes, total_bytes)`` is called as bytes are copied. A
        read-only store backs up what its writer has written by now (it refreshes first).

        Raises :class:`bitkv.BackupError` if ``dest`` is unusable (exists and is not a backup
        of this store, lies inside the store, is a symlink), the disk is full, or an fsync
        fails; what this call wrote is then removed (an earlier backup is left as it was).
        The store is never changed, and a backup's failure never makes it refuse writes.
        """
        self._check_open()
        return backup_mod.run(self.path, dest, self._pin_for_backup, incremental=incremental,
                          link=link, io=self._backup_io(), progress=progress)

    def _backup_io(self) -> FileIO:
        # The unguarded seam: a failed fsync of the backup's files fails the backup, not the
        # store (FsyncGuard would make the store refuse writes).
        return self._io.inner if isinstance(self._io, FsyncGuard) else self._io

    def _pin_for_backup(self) -> backup_mod.Pin:
        """Pin the store's current segments for a backup (backup_mod.pin), under the writer lock
        so none is removed or grows a record meanwhile. A read-only store refreshes first."""
        if self.readonly:
            self.refresh()
        with self._lock:
            self._check_open()
            segments = list(self._table.segments)
            if self.readonly:
                last = segments[-1] if segments else None
                active = last if last is not None and last.kind == seg_mod.KIND_APPEND \
                    else None
            else:
                active = self._log.active
            states = [backup_mod.SegmentState(s.id, s.header, s.size, s is active, s.durable_end)
                      for s in segments]
            backup_mod.ensure_descriptors(len(states))
            return backup_mod.pin(self.path, self._backup_io(), states, self._next_seq - 1)

    # -- history (the change feed replication streams) ---------------------------------------

    @property
    def last_seq(self) -> int:
        """The seq of the newest record written (0 in a store never written to)."""
        return self._next_seq - 1

    def history_start(self) -> int | None:
        """The oldest seq :meth:`changes` can still read from (None: no history at all)."""
        self._check_open()
        with self._lock:
            return history.oldest_seq(self._table.segments)

    def changes(self, cursor: history.Cursor, *, max_records: int = 1024,
                max_bytes: int = 1 << 20) -> list[history.Change]:
        """The writes from ``cursor.next_seq`` on, in the order the store applied them.

        Returns at most ``max_records`` changes (about ``max_bytes`` of records) and advances
        ``cursor``; an empty list means there is nothing newer yet. Raises
        :class:`bitkv.HistoryGone` if compaction reclaimed the records asked for (or they
        are damaged). Values come back decoded (decompressed, decrypted).
        """
        self._check_open()
        with self._lock:
            return history.read_changes(self._table.segments, cursor, self._codec.decode,
                                        max_records=max_records, max_bytes=max_bytes)

    # -- readers -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring a read-only store up to date with its writer.

        New records and new segments are indexed incrementally; after the writer compacted,
        the index is rebuilt from hint files. A record the writer has not finished writing is
        never returned; it is picked up by a later refresh.
        """
        self._check_open()
        if not self.readonly:
            return  # a writer's index is always current
        with self._lock:
            sizes = [s.size for s in self._loaded.segments]
            if recovery.extend(self.path, self._io, self._loaded, now_ms=self._now_ms()):
                # The loops that index records do not keep next_expiry, so it is taken again
                # from every expiry, but only if a record was indexed: a reader polling an
                # idle writer would otherwise walk all its TTL keys at each call (37 ms at
                # 4M, docs/performance.md "Walks of the whole index").
                if [s.size for s in self._loaded.segments] != sizes:
                    self._keydir.recompute_next_expiry()
                self._next_seq = self._loaded.next_seq  # last_seq follows the writer too
                return
            loaded = recovery.load(self.path, self._io, readonly=True, now_ms=self._now_ms())
            old_segments = self._table.segments
            self._loaded = loaded
            self._next_seq = loaded.next_seq
            self.recovery_report = loaded.report
            loaded.keydir.expired_count = self._keydir.expired_count
            self._keydir = loaded.keydir
            self._table.slots = loaded.slots
            self._table.segments = loaded.segments
            self._expiries = loaded.keydir.expiries
            self._entries = loaded.keydir.entries
            self._keydir.recompute_next_expiry()
            self._bind_reader()
            for s in self._table.segments[:-1]:
                s.release_fd()
        for s in old_segments:
            s.close()

    # -- cache mode (docs/cache.md) ------------------------------------------------------------

    @property
    def max_bytes(self) -> int:
        """The bound on live bytes (0: none); see :meth:`set_max_bytes`."""
        return self.bound.max_bytes

    @property
    def eviction(self) -> str:
        """The eviction policy that keeps :attr:`max_bytes` (one of Redis's names)."""
        return self.bound.eviction

    @property
    def out_of_room(self) -> bool:
        """True when the bound (:attr:`max_bytes`) leaves no room for even the smallest
        record and the ``noeviction`` policy frees none: any write that adds a record fails
        with :class:`StoreFullError` now. The server refuses Redis's use-memory commands
        then (``-OOM``), also when queued in MULTI, as Redis does over ``maxmemory``."""
        bound = self.bound
        if not bound.max_bytes or bound.eviction != "noeviction":
            return False
        with self._lock:
            live = self._live_bytes_locked()
        return live + rec.MIN_RECORD_SIZE > bound.max_bytes

    @property
    def evicted_keys(self) -> int:
        """Keys evicted to keep the bound since this store was opened."""
        evictor = self._evictor
        return self._evicted_before + (evictor.evicted_keys if evictor is not None else 0)

    def set_max_bytes(self, max_bytes: int, eviction: str | None = None) -> None:
        """Bound the store's live bytes to ``max_bytes`` (0: no bound) by ``eviction`` (None:
        keep the current policy), now and for every later open: the setting is recorded in
        the store's ``SETTINGS`` file. A lower bound evicts at once (``noeviction`` and a
        ``volatile-*`` policy without keys to evict leave the store over it: writes then
        fail with :class:`StoreFullError` until deletes make room). ``CONFIG SET maxmemory``
        and ``maxmemory-policy`` of ``bitkv serve`` call this.

        Raises ValueError for a negative bound or an unknown policy, and
        :class:`ReadOnlyError` on a read-only store.
        """
        self._check_writable()
        settings.check_bound(max_bytes, eviction)
        with self._lock:
            self._check_writable()
            bound = settings.Bound(max_bytes, self.bound.eviction if eviction is None
                                   else eviction)
            if bound != self.bound:
                settings.write(self.path, self._io, self.compression, bound)
            self._apply_bound(bound)
            evictor = self._evictor
            if evictor is not None and bound.eviction != "noeviction":
                with contextlib.suppress(Error):  # nothing (more) can be evicted
                    evictor.shrink()
        self._native_put = self._choose_native_put()
        self._bind_reader()
        self._bind_writer()  # a bound store's puts go through Python (eviction first)

    def _live_bytes_locked(self) -> int:
        """The bytes of the records the index points at. Locked. Between a compaction's
        commit and the retirement of its inputs, the keys not yet switched still point
        into the inputs, which are no longer in the segment list: they count, less what the
        switch moved to the outputs (which count it already)."""
        total: int = sum(map(_live_bytes_of, filter(None, self._table.slots)))
        return total - self._switched_bytes

    def _apply_bound(self, bound: settings.Bound) -> None:
        """Put ``bound`` in force: at open, and (locked) from :meth:`set_max_bytes`."""
        #: The bound in force (:class:`bitkv.settings.Bound`): as recorded, or as given.
        self.bound = bound
        old = self._evictor
        if self.readonly or not bound.max_bytes:
            self._evictor = None
        elif old is not None and old.policy == bound.eviction:
            old.max_bytes = bound.max_bytes  # the same policy keeps its access stamps
        else:
            self._evictor = Evictor(_EvictionHost(self), bound.max_bytes,
                                             bound.eviction)
        if old is not None and self._evictor is not old:
            self._evicted_before += old.evicted_keys
        # Smaller segments in a small cache, so that what compaction cannot take (the active
        # segment) stays a small share of the disk (docs/cache.md, "The disk bound").
        size = self._requested_segment_size
        if self._evictor is not None:
            size = min(size, max(SEGMENT_FLOOR, bound.max_bytes // SEGMENT_SHARE))
        self.max_segment_size = size
        self._log.max_segment_size = size

    # -- durability --------------------------------------------------------------------------

    def sync(self) -> None:
        """Make every write so far durable on stable storage (fsync)."""
        self._check_open()
        if self.readonly:
            return
        self._verify_lock(raise_now=True)
        # After a failed fsync nothing can be promised durable, even what an earlier,
        # successful one covered: say so rather than return as if all were well.
        self._log.check()
        seg = self._log.active
        if seg is not None:
            self._log.wait_durable(seg, seg.size)

    def sync_pending(self) -> None:
        """Make every write appended so far durable on stable storage, whatever the sync
        mode: one fsync of the active segment if anything was appended since the last one
        (shared with concurrent writers and callers: group commit), no system call at all if
        not. The cheap, frequent form of :meth:`sync` (which also re-checks the lock file):
        the wait that goes with :meth:`deferred_sync`.

        Raises ``OSError`` if the fsync fails (the store then refuses writes until it is
        reopened), and :class:`Error` if it already refuses them after a failed fsync (then
        nothing written can be promised durable). A read-only store has nothing pending.
        """
        self._check_open()
        log = self._log
        if log.sync_failure is not None:
            log.check()  # nothing can be promised durable after a failed fsync
        seg = log.active
        if seg is not None and seg.synced_size < seg.size:
            log.wait_durable(seg, seg.size)

    @contextlib.contextmanager
    def deferred_sync(self) -> Iterator[None]:
        """Within the block, writes made *by this thread* return as soon as they are appended
        (they have reached the OS: they survive the process being killed), without waiting
        for their fsync, even with ``sync="always"``; call :meth:`sync_pending` to make
        everything appended so far durable with one fsync. Leaving the block does that
        too, also when an exception leaves it (unless the store was closed inside it:
        ``close()`` fsyncs).

        This is group commit for a caller that answers many writes at once, as ``bitkv
        serve --sync always`` does once per event-loop iteration: apply every write, one
        fsync, then acknowledge them all. The caller must not report a write durable
        before a ``sync_pending()`` that followed it has returned. Other threads keep the
        store's promise for their own writes (with ``"always"``, durable when they return);
        with ``"interval"`` and ``"never"`` writes never wait anyway, so only the fsync at
        the end of the block differs. Blocks nest; only the outermost one syncs.
        """
        deferral = self._deferral
        deferral.depth += 1
        try:
            yield
        except BaseException:
            deferral.depth -= 1
            # The block's writes are made durable all the same, unless an fsync already
            # failed (the exception leaving is likely that failure: no second error over it).
            if not deferral.depth and not self._closed and not self.readonly \
                    and self._log.sync_failure is None:
                self.sync_pending()
            raise
        deferral.depth -= 1
        if not deferral.depth and not self._closed and not self.readonly:
            self.sync_pending()

    def _flush_once(self) -> None:
        seg = self._log.active
        if seg is None or seg.synced_size >= seg.size:
            return
        if self._log.sync_failure is not None:
            return  # no fsync after a failed one can promise anything (LogWriter.fail)
        try:
            self._log.wait_durable(seg, seg.size)
        except (OSError, Error) as exc:
            if not self._closed:
                # The log now refuses writes (LogWriter.fail); stats() and the log say why.
                self._log.last_sync_error = f"{type(exc).__name__}: {exc}"

    # -- compaction --------------------------------------------------------------------------

    def compact(self, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Rewrite the store without overwritten, deleted or expired records; return a summary.

        The active segment is sealed first if it holds garbage, so everything reclaimable is
        reclaimed. Reads and writes continue meanwhile. ``progress(done_bytes, total_bytes)``
        is called as input segments are processed. The summary has ``segments_in``,
        ``segments_out``, ``bytes_in``, ``bytes_out``, ``bytes_reclaimed``, ``keys_kept``,
        ``records_dropped``, ``corrupt_records`` and ``seconds``.
        """
        from . import compaction

        self._check_writable()
        with self._compact_lock:
            self._purge_expired()
            with self._lock:
                self._check_writable()
                active = self._log.active
                if active is not None and active.dead_bytes > 0:
                    self._log.rotate()
            summary = compaction.compact(self._compaction_host(), progress)
            self._note_compaction(summary.as_dict())
        return summary.as_dict()

    def _compaction_host(self) -> _CompactionHost:
        """What compaction may touch of this store (compaction.CompactionHost)."""
        return _CompactionHost(self)

    def _note_compaction(self, summary: dict[str, Any]) -> None:
        summary["finished_at"] = self._clock()
        self.last_compaction = summary
        self.compactions += 1
        log.info("bitkv store %s: compacted %d segment(s), %d bytes -> %d segment(s), %d bytes "
                 "(%d reclaimed; %d keys kept, %d records dropped%s) in %.2f s", self.path,
                 summary.get("segments_in", 0), summary.get("bytes_in", 0),
                 summary.get("segments_out", 0), summary.get("bytes_out", 0),
                 summary.get("bytes_reclaimed", 0), summary.get("keys_kept", 0),
                 summary.get("records_dropped", 0),
                 f", {summary['corrupt_records']} damaged record(s) skipped"
                 if summary.get("corrupt_records") else "", summary.get("seconds", 0.0))
        try:  # so that stats() of the next process still knows (a summary; not data)
            lastcompaction.save(self.path, self._io, summary)
        except OSError as exc:
            log.warning("bitkv store %s: could not record the last compaction: %s", self.path,
                        exc)

    def _sealed(self) -> list[Segment]:
        """The immutable segments compaction may take (all but the active one, less those
        holding history from ``retain_history_from`` on), in load order. Locked."""
        active = self._log.active
        sealed = [s for s in self._table.segments if s is not active]
        if self.retain_history_from is None:
            return sealed
        return history.compactable(sealed, active, self.retain_history_from)

    def _compaction_due(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            sealed = self._sealed()
        min_dead = self.compact_min_dead_bytes
        if self._evictor is not None:
            # Cache mode keeps the disk near the bound (docs/cache.md, "The disk bound").
            min_dead = min(min_dead, self._evictor.max_bytes // DEAD_SHARE)
        return compaction_due(sealed, min_dead, self.compact_dead_ratio)

    def _write_seal_hints(self, blocking: bool = False) -> None:
        """Give every sealed append segment without a hint one (background; see sealing.py)."""
        try:
            if not self._compact_lock.acquire(blocking=blocking):
                return  # a compaction is running: its outputs get hints anyway
            try:
                with self._lock:
                    sealed = [s for s in self._table.segments if s is not self._log.active]
                sealing.write_missing_hints(self.path, self._io, sealed, self._stop.is_set)
            finally:
                self._compact_lock.release()
        except Exception as exc:  # keep serving; stats() shows the failure
            if not self._stop.is_set():
                self.last_compaction_error = f"hint: {type(exc).__name__}: {exc}"

    def _compact_if_due(self) -> None:
        from . import compaction

        try:
            self._purge_expired()
            if not self._compaction_due():
                return
            if not self._compact_lock.acquire(blocking=False):
                return
            try:
                summary = compaction.compact(self._compaction_host())
                if not summary.aborted:
                    self._note_compaction(summary.as_dict())
            finally:
                self._compact_lock.release()
        except Exception as exc:  # keep serving; stats() and the log show the failure
            if not self._stop.is_set():
                self.last_compaction_error = f"{type(exc).__name__}: {exc}"
                log.error("bitkv store %s: background compaction failed: %s", self.path,
                          self.last_compaction_error)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Flush and fsync pending writes, release the lock and every file. Idempotent."""
        if self._closed:
            return
        self._maintenance.stop()  # never joins the calling thread: __del__ may run on one
        # A compact() running in another thread sees _stop and aborts, or finishes its
        # (bounded) switch and removals; either way it must be done before files close.
        if not self._maintenance.is_thread(threading.current_thread()):
            self._compact_lock.acquire()
            self._compact_lock.release()
        with self._lock:
            if self.closed:  # another thread closed it while we waited for the threads
                return
            try:
                active = self._log.active
                if (not self.readonly and active is not None and not active.closed
                        and self._log.sync_failure is None):
                    # After a failed fsync nothing is fsynced again (it could not promise
                    # anything) and no checkpoint is written: the next open scans the files.
                    self._log.sync_for_close()
                    sealing.write_checkpoint(self.path, self._io, active, self._keydir,
                                             self._next_seq - 1)
            finally:
                self._closed = True
                self._log.refused = True
                self._entries = _Closed()
                self._unbind_reader()
                self._unbind_writer()
                self._release_files()

    def _abandon(self) -> None:
        """Drop every file and the lock *without* flushing: what ``kill -9`` leaves behind.

        For tests and the crash harness. Writes already returned have reached the OS, so a
        reopen sees exactly what it would after the process was killed.
        """
        self._maintenance.stop()
        with self._lock:
            self._closed = True
            self._log.refused = True
            self._entries = _Closed()
            self._unbind_reader()
            self._unbind_writer()
            self._release_files()

    def _release_files(self) -> None:
        for s in self._table.segments:
            s.close()
        self._log.close()
        if self._store_lock is not None:
            self._store_lock.release()
            self._store_lock = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A store dropped without close() must not keep the lock file locked.
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "open")
        return f"<bitkv.Store {self.path!r} {state}>"

    # -- introspection -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return counters describing the store.

        Keys: ``keys`` (live keys), ``segments``, ``live_bytes`` (bytes of the records the
        index points at), ``dead_bytes`` (bytes reclaimable by compaction), ``disk_bytes``
        (all store files), ``expiring_keys``, ``expired_keys`` (keys removed from the index
        because they expired, since this open), ``compactions`` (run by this process),
        ``segment_bytes`` (per segment, oldest first: ``{"id", "live_bytes", "dead_bytes"}``),
        ``active_segment``, ``sync``, ``max_bytes`` (the bound on ``live_bytes``, 0: none),
        ``eviction`` (its policy), ``evicted_keys`` (keys evicted since the store was
        opened), and ``recovery`` (what the last open found: truncated and corrupt bytes,
        dropped batch records, ignored hint files).
        """
        self._check_open()
        self._purge_expired()
        with self._lock:
            segs = list(self._table.segments)
            keys = len(self._entries)
            expiring = len(self._expiries)
            per_segment = [{"id": s.id, "live_bytes": s.live_bytes,
                            "dead_bytes": s.dead_bytes} for s in segs]
            live = self._live_bytes_locked()
            dead = sum(s["dead_bytes"] for s in per_segment)
            expired = self._keydir.expired_count
            active = self._log.active.id if self._log.active is not None else None
        disk = 0
        for name in self._io.listdir(self.path):
            try:  # an lstat for a figure only (FileIO's promise covers what is read as data)
                disk += os.lstat(os.path.join(self.path, name)).st_size
            except OSError:
                pass
        report = self.recovery_report
        return {
            "keys": keys,
            "segments": len(segs),
            "live_bytes": live,
            "dead_bytes": dead,
            "disk_bytes": disk,
            "expiring_keys": expiring,
            "expired_keys": expired,
            "compactions": self.compactions,
            "segment_bytes": per_segment,
            "active_segment": active,
            "sync": self.sync_mode,
            "readonly": self.readonly,
            "max_bytes": self.bound.max_bytes,
            "eviction": self.bound.eviction,
            "evicted_keys": self.evicted_keys,
            "last_compaction": self.last_compaction,
            "last_compaction_error": self.last_compaction_error,
            "last_sync_error": self.last_sync_error,
            "recovery": {
                "truncated_bytes": report.truncated_bytes,
                "zero_tail_bytes": report.zero_tail_bytes,
                "corrupt_bytes": report.corrupt_bytes,
                "damaged_regions": len(report.damage),
                "dropped_batch_records": report.dropped_batch_records,
                "damaged_keys": report.poisoned_keys,
                "ignored_hints": len(report.ignored_hints),
                "segments_from_hints": report.segments_from_hints,
            },
        }


# Store.put as defined above: the Writer's fallback, and bound only while a store's class still
# has this put (the crash harness replaces Store.put to sabotage puts; a subclass may too).
_reference_put = Store.put
