"""The exceptions bitkv raises. Every one derives from :class:`bitkv.Error`."""

from __future__ import annotations


class Error(Exception):
    """Base class of every error bitkv raises on purpose."""


class LockError(Error):
    """Another process holds the store open for writing."""


class UnsafeFileError(Error):
    """A store file is a symbolic link (or not a regular file); bitkv will not use it."""


class NotAStoreError(Error):
    """The path exists but is not a bitkv store (and bitkv will not turn it into one)."""


class StoreNotFoundError(Error):
    """The store does not exist and the caller asked not to create it."""


class FormatVersionError(Error):
    """The store was written by a newer, unknown on-disk format version."""


class ReadOnlyError(Error):
    """A write was attempted on a store opened with ``readonly=True``."""


class StoreFullError(Error):
    """A write would take the store's live bytes past its ``max_bytes`` bound and nothing
    can be evicted (``eviction="noeviction"``, a ``volatile-*`` policy without keys that
    have a TTL, or a record larger than the bound). Nothing was written."""


class ClosedError(Error):
    """The store has been closed."""


class CorruptionError(Error):
    """Stored bytes failed their integrity check; they are never returned as data."""


class SegmentLossError(CorruptionError):
    """A segment the store consists of (its MANIFEST lists it) is missing, cut short or
    replaced. Opening refuses: indexing the rest would silently lose its keys or bring older
    values back. ``bitkv check --repair`` salvages the rest and records what was lost;
    ``losses`` lists (file, what happened, keys at stake as far as a hint tells)."""

    def __init__(self, message: str, losses: list[tuple[str, str, list[bytes]]]) -> None:
        super().__init__(message)
        self.losses = losses


class IntegrityError(CorruptionError):
    """A record read through the index does not match what the index expects."""


class EncryptionError(Error):
    """The store or a value is encrypted and the key is missing, wrong, or the value was moved."""


class NotAnIntegerError(Error, ValueError):
    """``incr`` found a value that is not an ASCII decimal integer, or the result overflows."""


class HistoryGone(Error):
    """The changes asked of :meth:`Store.changes` are no longer in the log: compaction
    reclaimed them, or a record on the way is damaged (a replica then needs a full copy)."""


class BackupError(Error):
    """A backup could not be taken: the destination is unusable (exists and is not a backup of
    this store, lies inside the store, is a symlink), the disk filled up, an fsync failed, or
    the store kept changing under a read-only backup. The store itself is never changed."""
