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
from typing import Any

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
    StoreNotFoundError,
    UnsafeFileError,
)
from .history import Change as Change
from .history import Cursor as HistoryCursor
from .keydir import IMPLEMENTATION
from .record import MAX_KEY_SIZE, MAX_VALUE_SIZE
from .store import DEFAULT_MAX_SEGMENT_SIZE, Store, SyncMode
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
    "JsonView",
    "LockError",
    "Namespace",
    "NotAStoreError",
    "NotAnIntegerError",
    "ReadOnlyError",
    "RepairReport",
    "SegmentLossError",
    "Store",
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
    **options: Any,
) -> Store:
    """Open (creating if needed) the store in directory ``path`` and return a :class:`Store`.

    See docs/architecture.md for the settings table. Raises :class:`LockError` if another
    process holds the store for writing, :class:`NotAStoreError` if ``path`` holds other files,
    :class:`StoreNotFoundError` if it does not exist and ``readonly`` or ``create=False``, and
    :class:`FormatVersionError` if the store was written by a newer format version.
    """
    return Store(path, readonly=readonly, create=create, sync=sync, sync_interval=sync_interval,
                 max_segment_size=max_segment_size, clock=clock, **options)
