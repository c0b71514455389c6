"""bitkv: a persistent, log-structured (Bitcask-style) key-value store.

>>> import bitkv
>>> with bitkv.open("my-store") as db:          # doctest: +SKIP
...     db.put(b"session:42", b"...", ttl=3600)
...     db.get(b"session:42")
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from .backup import BackupReport
from .batch import Batch
from .check import CheckReport, RepairReport, check, repair
from .errors import (
    BackupError,
    ClosedError,
    CorruptionError,
    EncryptionError,
    Error,
    FormatVersionError,
    HistoryGone,
    IntegrityError,
    LockError,
    NotAnIntegerError,
    NotAStoreError,
    ReadOnlyError,
    SegmentLossError,
    StoreFullError,
    StoreNotFoundError,
    UnsafeFileError,
)
from .fileio import FileIO
from .history import Change as Change
from .history import Cursor as HistoryCursor
from .keydir import IMPLEMENTATION
from .record import MAX_KEY_SIZE, MAX_VALUE_SIZE
from .store import DEFAULT_MAX_SEGMENT_SIZE, Item, Store, SyncMode
from .views import InvalidJSONError, JsonView, Namespace

__version__ = "0.1.0"

# The library logs what recovery, compaction and failed fsyncs find to the "bitkv" logger;
# the application decides where it goes (the CLI and the server print warnings).
logging.getLogger("bitkv").addHandler(logging.NullHandler())

__all__ = [
    "IMPLEMENTATION",
    "MAX_KEY_SIZE",
    "MAX_VALUE_SIZE",
    "BackupError",
    "BackupReport",
    "Batch",
    "Change",
    "CheckReport",
    "ClosedError",
    "CorruptionError",
    "EncryptionError",
    "Error",
    "FormatVersionError",
    "HistoryCursor",
    "HistoryGone",
    "IntegrityError",
    "InvalidJSONError",
    "Item",
    "JsonView",
    "LockError",
    "Namespace",
    "NotAStoreError",
    "NotAnIntegerError",
    "ReadOnlyError",
    "RepairReport",
    "SegmentLossError",
    "Store",
    "StoreFullError",
    "StoreNotFoundError",
    "UnsafeFileError",
    "__version__",
    "check",
    "open",
    "repair",
]


def open(
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
) -> Store:
    """Open (creating if needed) the store in directory ``path`` and return a :class:`Store`.

    :param readonly: open for reading only, beside a writer in another process if there is
        one; no lock is taken and every write raises :class:`ReadOnlyError`.
    :param create: create the store if ``path`` does not exist (ignored when ``readonly``).
    :param sync: when a write reaches stable storage. ``"always"``: before ``put`` (and every
        other write) returns, so it survives power loss; concurrent writers share fsyncs.
        ``"interval"``: a background fsync every ``sync_interval`` seconds; a write survives
        the process being killed as soon as it returns, and power loss once the next fsync
        ran. ``"never"``: fsync only at :meth:`Store.sync` and :meth:`Store.close`.
    :param sync_interval: seconds between background fsyncs in ``"interval"`` mode.
    :param max_segment_size: bytes at which the active segment is sealed and a new one begun.
    :param clock: Unix time in seconds, for TTLs (tests pass a fake clock).
    :param auto_compact: compact in the background when enough of the log is dead.
    :param compact_dead_ratio: the dead fraction of a segment that makes it worth compacting.
    :param compact_min_dead_bytes: dead bytes below which no background compaction starts.
    :param compression: ``"zstd"`` to compress values of at least ``compression_min_size``
        bytes (a value is stored compressed only if that makes it smaller); ``"none"``: never;
        None: as the store's ``SETTINGS`` file records (no compression if it records
        nothing). A writable open records an explicit choice there, so every later opener
        that passes None writes the same way (docs/architecture.md).
    :param compression_min_size: the smallest value worth compressing, in bytes; None: as
        recorded, else 256.
    :param encryption_key: 32 bytes: values are sealed with AES-256-GCM, bound to their key,
        seq and expiry (keys, sizes and expiry times stay visible; see docs/format.md).
    :param fileio: the file-system seam (the crash harness injects faults through it).
    :param log_expirations: write a tombstone when an expired key leaves the index, so the
        log (and a replication stream) says when each key went.
    :param hold_expired: keep expired keys indexed (hidden from reads) until deleted, as a
        replica does until its master says the key is gone.
    :param max_bytes: cache mode (docs/cache.md): keep the store's live bytes (each live
        record: its 21-byte header, key and stored value) at most this many, evicting keys
        by ``eviction`` to make room; 0: no bound; None: as the store's ``SETTINGS`` file
        records (no bound if it records nothing). Recorded like ``compression``.
    :param eviction: how room is made: one of Redis's policies, ``"noeviction"`` (a write
        that does not fit raises :class:`StoreFullError`), ``"allkeys-lru"``,
        ``"allkeys-lfu"``, ``"allkeys-random"``, ``"volatile-lru"``, ``"volatile-lfu"``,
        ``"volatile-random"``, ``"volatile-ttl"``; None: as recorded, else ``noeviction``.

    Raises :class:`LockError` if another process (or this one) holds the store for writing,
    :class:`NotAStoreError` if ``path`` holds other files, :class:`StoreNotFoundError` if it
    does not exist and ``readonly`` or ``create=False``, :class:`FormatVersionError` if the
    store was written by a newer format version, and :class:`EncryptionError` if the store is
    encrypted and ``encryption_key`` is missing or wrong.
    """
    return Store(path, readonly=readonly, create=create, sync=sync, sync_interval=sync_interval,
                 max_segment_size=max_segment_size, clock=clock, auto_compact=auto_compact,
                 compact_dead_ratio=compact_dead_ratio,
                 compact_min_dead_bytes=compact_min_dead_bytes, compression=compression,
                 compression_min_size=compression_min_size, encryption_key=encryption_key,
                 fileio=fileio, log_expirations=log_expirations, hold_expired=hold_expired,
                 max_bytes=max_bytes, eviction=eviction)
