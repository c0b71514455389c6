"""Hot, consistent backups: a copy of a store, taken while writers write, that is itself a
complete store (``Store.backup``, ``bitkv backup``; what a backup holds and promises is in
docs/backup.md).

A backup is the store as it was at one instant: the segments its ``MANIFEST`` listed, each at
its length then. The store pins that instant (:class:`Pin`) under its writer lock, for as long
as it takes to open each segment, and the copying happens outside the lock. The open
descriptors are what keeps compaction from taking the segments away: a compaction that
retires a segment only unlinks its name, and an open descriptor still reads the whole file. A
sealed segment never changes; the active one only grows past the length pinned (and is copied
only up to it, never by its file size: its file may be preallocated past its data).

The backup directory is written so that an interruption never leaves something that looks
complete:

* **Full** (a new or empty directory): the segments (hard links of sealed segments where
  the file system allows, copies otherwise; the active segment always copied, up to the pinned
  end), their hints, the key-check file of an encrypted store, compression dictionaries, a
  ``DURABLE`` mark vouching exactly for the copied end, the ``MANIFEST``, the ``BACKUP`` note;
  each file fsynced, then the directory; the ``BITKV`` marker comes **last**. Until it exists
  the directory is not a store (``bitkv.open`` refuses it and never writes there), and a new
  backup into it clears it.
* **Incremental** (into an earlier backup of the same store): segments the backup already
  holds (same nonce, sealed at the same length) are kept; the others are written under ids the
  backup does not use yet; the new ``MANIFEST`` replaces the old one last, in one rename. Until
  then the new files are orphans that the old ``MANIFEST`` ignores or removes
  (recovery.classify_orphan): an append segment newer than the backup's open one would be
  taken for writes its ``MANIFEST`` lost, so such a copy is written with its 40-byte header
  zeroed (an orphan whose header is damaged is left alone) and gets its header only once the
  new ``MANIFEST`` lists it (a listed segment with a damaged header is read with the header its
  entry describes, so even a crash between the two opens as the newer backup). Then segments
  the store no longer has are removed.

A read-only store (the CLI beside another process's writer) pins the view it refreshed to; a
segment that vanished before it was pinned (the writer compacted) sends it back to refresh,
a bounded number of times (:data:`PIN_ATTEMPTS`).

This module writes only inside the destination directory (and fsyncs its parent when it
creates it); it reads the store through what it pinned and the store's key-check and
dictionary files.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import durable, hint, manifest, recovery
from . import segment as seg_mod
from .crc import crc32c
from .errors import BackupError, Error, LockError
from .fileio import FileIO
from .lock import StoreLock
from .names import (
    BACKUP_NOTE_NAME,
    DURABLE_NAME,
    KEYCHECK_NAME,
    LOCK_NAME,
    MANIFEST_NAME,
    MARKER_NAME,
    TMP_SUFFIX,
    is_dict_name,
)
from .segment import HEADER_SIZE, KIND_APPEND, SegmentHeader

COPY_CHUNK = 1 << 20  # bytes per read and write when copying a segment
PIN_ATTEMPTS = 8  # a read-only view is refreshed and pinned at most this often
NOTE_VERSION = 1
_MAX_SMALL_FILE = 1 << 24  # the note, a key-check file, a dictionary (zstd's are ~100 KiB)
_MAX_HINT = 1 << 34  # as recovery: read_file allocates only what is there

_SPARE_DESCRIPTORS = 64  # left free beside a pin, for the copies, hints and the rest
ProgressCallback = Callable[[int, int], None]
log = logging.getLogger("bitkv")


class ViewChanged(Exception):
    """A segment of a read-only view vanished (or was replaced) before it could be pinned:
    the writer compacted. Refresh the view and pin again."""


@dataclass(frozen=True)
class SegmentState:
    """What the store says of one segment at the pinned instant."""

    segment_id: int
    header: SegmentHeader
    size: int  # bytes to copy: a sealed segment's length, the active one's end of data
    is_open: bool  # the segment writes go to (copied, never linked; listed open)
    durable_end: int  # a sealed segment's MANIFEST durable_end


class PinnedSegment:
    """One segment held for a backup by an open descriptor (read with ``pread``: a writer may
    still cut a torn tail off the newest segment of a read-only view, where touching a mapped
    page past the file's new end would kill the process with SIGBUS)."""

    def __init__(self, state: SegmentState, path: str, fd: int) -> None:
        self.state = state
        self.path = path
        self.fd = fd

    def read(self, io: FileIO, offset: int, size: int) -> bytes:
        return io.pread(self.fd, size, offset)


@dataclass
class Pin:
    """A consistent point of a store: its segments in load order, each held."""

    directory: str
    segments: list[PinnedSegment]
    last_seq: int
    io: FileIO

    def close(self) -> None:
        for p in self.segments:
            if p.fd >= 0:
                try:
                    self.io.close(p.fd)
                except OSError:
                    pass
                p.fd = -1


def ensure_descriptors(needed: int) -> None:
    """Make room for ``needed`` more open files: a pin holds one per segment (and the store
    one per mapped segment already: Python's mmap keeps a duplicate). Raises the soft
    ``RLIMIT_NOFILE`` toward the hard one when it is too low (what any process may do; logged),
    else raises :class:`BackupError` saying what to raise."""
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        return  # cannot tell (not Linux): let the opens say so if they fail
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = in_use + needed + _SPARE_DESCRIPTORS
    if soft == resource.RLIM_INFINITY or wanted <= soft:
        return
    if hard != resource.RLIM_INFINITY and wanted > hard:
        raise BackupError(f"a backup of this store needs {needed} more open files (one per "
                          f"segment), {in_use} are open and the limit is {hard} (ulimit -Hn); "
                          "raise it, or compact the store into fewer segments. Nothing was "
                          "written")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    log.info("bitkv backup: raised the open-file limit from %d to %d (one per segment)",
             soft, wanted)


def pin(directory: str, io: FileIO, states: list[SegmentState], last_seq: int) -> Pin:
    """Hold every segment of ``states`` (the store holds its writer lock, so none can be
    removed meanwhile) and check each file is the incarnation described, at least as long.
    Raises :class:`ViewChanged` when one is gone or replaced (a read-only view is stale)."""
    pinned = Pin(directory, [], last_seq, io)
    try:
        for state in states:
            path = seg_mod.segment_path(directory, state.segment_id)
            try:
                fd = io.open_read(path)
            except FileNotFoundError:
                raise ViewChanged(os.path.basename(path)) from None
            held = PinnedSegment(state, path, fd)
            pinned.segments.append(held)
            if io.size(fd) < state.size:
                raise ViewChanged(os.path.basename(path))
            try:
                header = seg_mod.decode_header(io.pread(fd, HEADER_SIZE, 0))
            except seg_mod.HeaderError:
                header = None  # damaged in the store too: copied as it is, reported as there
            if header is not None and header.nonce != state.header.nonce:
                raise ViewChanged(os.path.basename(path))
    except BaseException:
        pinned.close()
        raise
    return pinned


@dataclass
class BackupReport:
    """What one backup did. Sizes are bytes; ``seconds`` is wall time."""

    destination: str
    incremental: bool
    segments: int = 0  # segments the backup consists of
    copied: int = 0  # segments written by copying
    linked: int = 0  # segments written as hard links of the store's (sealed) files
    reused: int = 0  # segments an incremental backup kept from the earlier backup
    removed: int = 0  # segments an incremental backup dropped (the store no longer has them)
    bytes_copied: int = 0
    last_seq: int = 0  # the newest write the backup holds
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- the destination ----------------------------------------------------------------------------


def _is_ours(name: str) -> bool:
    """A name a backup (or a store opened on it) writes: what clearing an interrupted backup
    may remove, and what nothing else may be."""
    if name.endswith(TMP_SUFFIX):
        return _is_ours(name[: -len(TMP_SUFFIX)]) or recovery.is_temp_name(name)
    return (name in (MANIFEST_NAME, DURABLE_NAME, KEYCHECK_NAME, BACKUP_NOTE_NAME, LOCK_NAME)
            or seg_mod.parse_id(name, seg_mod.DATA_SUFFIX) is not None
            or seg_mod.parse_id(name, seg_mod.HINT_SUFFIX) is not None
            or is_dict_name(name))


def _check_apart(source: str, dest: str) -> None:
    src = os.path.realpath(source)
    dst = os.path.realpath(dest)
    if dst == src or dst.startswith(src.rstrip(os.sep) + os.sep):
        raise BackupError(f"the destination {dest!r} is inside the store {source!r}; a backup "
                          "must be a directory outside the store. Nothing was written")
    if src.startswith(dst.rstrip(os.sep) + os.sep):
        raise BackupError(f"the store {source!r} is inside the destination {dest!r}; choose a "
                          "directory outside the store. Nothing was written")


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _check_directory(dest: str, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise BackupError(f"the destination {dest!r} is a symbolic link; bitkv writes through "
                          "no symlink: give the directory's real path. Nothing was written")
    if not stat.S_ISDIR(st.st_mode):
        raise BackupError(f"the destination {dest!r} exists and is not a directory. Nothing "
                          "was written")


def _lock(dest: str, io: FileIO) -> StoreLock:
    try:
        return StoreLock(dest, io)
    except LockError as exc:
        raise BackupError(f"the destination {dest!r} is in use: {exc}. Nothing was "
                          "written") from None


def _prepare_full(dest: str, io: FileIO) -> tuple[bool, StoreLock]:
    """Make ``dest`` ready for a full backup; return (whether it was created, its lock)."""
    st = _lstat(dest)
    created = False
    if st is None:
        parent = os.path.dirname(os.path.abspath(dest))
        if not os.path.isdir(parent):
            raise BackupError(f"the parent directory of {dest!r} does not exist. Nothing "
                              "was written")
        try:
            io.mkdir(dest)
            created = True
        except FileExistsError:
            st = _lstat(dest)  # made by someone else just now: judged as any existing one
        else:
            io.fsync_dir(parent)
    if st is not None:
        _check_directory(dest, st)
    # Judged before the lock is taken (which writes LOCK there), and again under it.
    _check_full_destination(dest, io, clear=False)
    lock = _lock(dest, io)
    try:
        _check_full_destination(dest, io, clear=True)
    except BaseException:
        lock.release()
        raise
    return created, lock


def _check_full_destination(dest: str, io: FileIO, *, clear: bool) -> None:
    names = [n for n in io.listdir(dest) if n != LOCK_NAME]
    if not names:
        return
    if MARKER_NAME in names:
        kind = "a backup" if BACKUP_NOTE_NAME in names else "a bitkv store"
        raise BackupError(f"the destination {dest!r} is already {kind}; take an incremental "
                          "backup into a backup (--incremental), or choose a new directory. "
                          "Nothing was written")
    if BACKUP_NOTE_NAME not in names or not all(_is_ours(n) for n in names):
        raise BackupError(f"the destination {dest!r} exists, is not empty and is not a bitkv "
                          "backup. Nothing was written")
    if clear:
        # A backup that was interrupted (no marker yet): it holds nothing of value.
        for name in names:
            io.unlink(os.path.join(dest, name))
        io.fsync_dir(dest)


@dataclass
class _Earlier:
    """The backup an incremental backup builds on."""

    listed: manifest.Manifest
    note: dict[str, Any]
    manifest_crc: int
    names: list[str]
    keycheck: bytes | None
    ids: set[int] = field(default_factory=set)


def _manifest_crc(raw: bytes) -> int:
    """What names one MANIFEST's contents: the CRC of its bytes before the trailer (the CRC of
    the whole file, trailer included, is the same constant for every intact file)."""
    return crc32c(raw[: -manifest.TRAILER.size])


def _read_note(dest: str, io: FileIO) -> dict[str, Any] | None:
    try:
        raw = io.read_file(os.path.join(dest, BACKUP_NOTE_NAME), _MAX_SMALL_FILE)
    except FileNotFoundError:
        return None
    try:
        note = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(note, dict) or note.get("bitkv_backup") != NOTE_VERSION:
        return None
    return note


def _read_optional(path: str, io: FileIO) -> bytes | None:
    try:
        return io.read_file(path, _MAX_SMALL_FILE)
    except FileNotFoundError:
        return None


def _open_earlier(dest: str, io: FileIO) -> tuple[_Earlier, StoreLock]:
    st = _lstat(dest)
    if st is None:
        raise BackupError(f"the destination {dest!r} does not exist; an incremental backup "
                          "goes into an earlier backup (take a full one first, without "
                          "--incremental)")
    _check_directory(dest, st)
    # Judged before the lock is taken (which writes LOCK there), and again under it.
    _check_is_backup(dest, io)
    lock = _lock(dest, io)
    try:
        names = io.listdir(dest)
        note = _check_is_backup(dest, io)
        try:
            recovery.read_marker(dest, io)
            raw = io.read_file(os.path.join(dest, MANIFEST_NAME),
                               manifest.HEADER.size + manifest.MAX_ENTRIES * manifest.ENTRY.size
                               + manifest.TRAILER.size)
            listed = manifest.decode(raw)
        except (Error, OSError) as exc:
            raise BackupError(f"the backup {dest!r} cannot be used ({exc}); run `bitkv check` "
                              "on it, or take a full backup into a new directory") from None
        earlier = _Earlier(listed, note, _manifest_crc(raw), names,
                           _read_optional(os.path.join(dest, KEYCHECK_NAME), io))
        _check_unchanged(dest, io, earlier)
    except BaseException:
        lock.release()
        raise
    for name in names:
        for suffix in (seg_mod.DATA_SUFFIX, seg_mod.HINT_SUFFIX):
            sid = seg_mod.parse_id(name.removesuffix(TMP_SUFFIX), suffix)
            if sid is not None:
                earlier.ids.add(sid)
    earlier.ids.update(e.segment_id for e in listed.entries)
    return earlier, lock


def _check_is_backup(dest: str, io: FileIO) -> dict[str, Any]:
    """The note of the complete backup in ``dest``; BackupError if it is none."""
    names = io.listdir(dest)
    note = _read_note(dest, io)
    if note is None:
        what = "a bitkv store, not a backup" if MARKER_NAME in names else "not a bitkv backup"
        raise BackupError(f"the destination {dest!r} is {what}; an incremental backup goes "
                          "into a backup taken by `bitkv backup`. Nothing was written")
    if MARKER_NAME not in names:
        raise BackupError(f"the destination {dest!r} is a backup that never completed; take a "
                          "full backup (without --incremental). Nothing was written")
    return note


def _check_unchanged(dest: str, io: FileIO, earlier: _Earlier) -> None:
    """Refuse a backup that changed since a backup wrote it (opened for writing, compacted,
    repaired): its files are no longer a copy of the store, and replacing them would lose
    whatever was written there."""
    for state in earlier.note.get("states", []):
        if not isinstance(state, dict) or state.get("manifest_crc") != earlier.manifest_crc:
            continue
        open_id, open_size = state.get("open_id"), state.get("open_size")
        if open_id is None:
            return
        path = seg_mod.segment_path(dest, int(open_id))
        try:
            fd = io.open_read(path)
        except OSError:
            break
        try:
            size = io.size(fd)
        finally:
            io.close(fd)
        if size == open_size:
            return
        break
    raise BackupError(f"the backup {dest!r} was changed since it was taken (opened for "
                      "writing, compacted or repaired), so it is no longer a copy of the "
                      "store; take a full backup into a new directory. Nothing was written")


def _check_same_store(source: str, dest: str, io: FileIO, earlier: _Earlier, view: Pin,
                      keycheck: bytes | None) -> None:
    note = earlier.note
    identity = _store_identity(source)
    same_dir = identity is not None and note.get("source_identity") == identity
    nonces = {p.state.header.nonce for p in view.segments}
    shared = any(e.nonce in nonces for e in earlier.listed.entries)
    if not (same_dir or shared):
        raise BackupError(f"the backup {dest!r} is not a backup of the store {source!r} (it "
                          "was taken of another store, or of this one before it was moved or "
                          "copied, and shares no segment with it); take a full backup into a "
                          "new directory. Nothing was written")
    if earlier.keycheck is not None and keycheck != earlier.keycheck:
        raise BackupError(f"the backup {dest!r} has another encryption key check than the "
                          f"store {source!r}: it is a backup of another store. Nothing was "
                          "written")
    last = note.get("last_seq")
    if isinstance(last, int) and last > view.last_seq:
        raise BackupError(f"the backup {dest!r} holds writes up to seq {last}, newer than the "
                          f"store's newest ({view.last_seq}): the store was restored from an "
                          "older copy since. Take a full backup into a new directory; the "
                          "backup is left as it was")
    diverged = _diverged(dest, io, earlier, view)
    if diverged is not None:
        raise BackupError(f"the backup {dest!r} and the store {source!r} have different "
                          f"histories ({diverged}): the store was restored from an older copy "
                          "and written to since. Take a full backup into a new directory; "
                          "the backup is left as it was")


def _diverged(dest: str, io: FileIO, earlier: _Earlier, view: Pin) -> str | None:
    """Why the store cannot have grown from what the backup holds, or None. A segment both
    hold (by nonce) must be the same bytes: a sealed one never changes, and the one the
    backup copied open can only have grown since. (A store restored from an older copy and
    written to again continues an old segment with other records.)"""
    pinned = {p.state.header.nonce: p for p in view.segments}
    for entry in earlier.listed.entries:
        p = pinned.get(entry.nonce)
        if p is None:
            continue  # compacted away since: nothing to compare
        name = seg_mod.data_name(entry.segment_id)
        if not entry.is_open:
            if p.state.is_open or p.state.size != entry.sealed_size:
                return f"{name} was sealed at {entry.sealed_size} bytes, the store's copy " \
                       f"of it is {'open' if p.state.is_open else 'sealed'} at {p.state.size}"
            continue
        path = os.path.join(dest, name)
        try:
            fd = io.open_read(path)
        except OSError:
            return None  # judged by the unchanged check already
        try:
            size = io.size(fd)
            if p.state.size < size:
                return f"{name} holds {size} bytes, the store's copy of it {p.state.size}"
            # From the records on: the header is the nonce's (an interrupted backup may
            # have left it zeroed, to be written by the next one).
            pos = HEADER_SIZE
            while pos < size:
                n = min(COPY_CHUNK, size - pos)
                if io.pread(fd, n, pos) != p.read(io, pos, n):
                    return f"{name} differs from the store's copy of it at byte {pos} or after"
                pos += n
        finally:
            io.close(fd)
    return None


# -- copying ------------------------------------------------------------------------------------


class _Writer:
    """Writes the files of one backup, remembering each so a failure can remove them."""

    def __init__(self, dest: str, io: FileIO, report: BackupReport,
                 progress: ProgressCallback | None, total: int) -> None:
        self.dest = dest
        self.io = io
        self.report = report
        self.progress = progress
        self.total = total
        self.done = 0  # bytes of the pinned segments handled: copied, linked or kept
        self.created: list[str] = []

    def advance(self, size: int) -> None:
        """Report ``size`` more bytes of the pinned segments handled."""
        self.done += size
        if self.progress is not None:
            self.progress(self.done, self.total)

    def _path(self, name: str) -> str:
        return os.path.join(self.dest, name)

    def copy_segment(self, p: PinnedSegment, name: str, *, zero_header: bool) -> None:
        """Copy the pinned segment's first ``size`` bytes into a new file, fsynced. With
        ``zero_header`` the header is written as zeros (see the module doc)."""
        path = self._path(name)
        io = self.io
        fd = io.create(path)
        self.created.append(path)
        try:
            pos = 0
            size = p.state.size
            while pos < size:
                chunk = p.read(io, pos, min(COPY_CHUNK, size - pos))
                if not chunk:
                    raise BackupError(f"{p.path} ended at {pos} bytes while being copied, "
                                      f"{size} were expected")
                if pos == 0 and zero_header:
                    chunk = bytes(min(HEADER_SIZE, len(chunk))) + chunk[HEADER_SIZE:]
                io.write(fd, chunk)
                pos += len(chunk)
                self.report.bytes_copied += len(chunk)
                self.advance(len(chunk))
            io.fsync(fd)
        finally:
            io.close(fd)
        self.report.copied += 1

    def link_segment(self, p: PinnedSegment, name: str) -> bool:
        """Hard-link the pinned (sealed) segment as ``name``; False if that is not possible
        or the file at the store's path is no longer the pinned one (then copy it)."""
        path = self._path(name)
        try:
            self.io.link(p.path, path)
        except OSError:
            return False  # another file system, no hard links there, or removed meanwhile
        self.created.append(path)
        if _file_matches(self.io, path, p.state.header.nonce, p.state.size):
            # No fsync of the file: a sealed segment's bytes were fsynced when it was sealed
            # (or written, for a compaction output); the directory fsync makes the name durable.
            self.report.linked += 1
            self.advance(p.state.size)
            return True
        self.io.unlink(path)
        self.created.remove(path)
        return False

    def copy_hint(self, p: PinnedSegment, name: str) -> None:
        """Copy the segment's hint if it is one the backup would believe (a cache: a missing
        or unbelievable one only makes opening the backup scan the segment)."""
        source = os.path.join(os.path.dirname(p.path), seg_mod.hint_name(p.state.segment_id))
        try:
            buf = self.io.read_file(source, _MAX_HINT)
            hint.check_bounds(hint.decode_raw(buf, p.state.header.nonce, p.state.size))
        except (OSError, hint.HintError):
            return
        self.write_file(name, buf)

    def write_file(self, name: str, data: bytes) -> None:
        path = self._path(name)
        self.io.write_new_file(path, data)
        self.created.append(path)

    def replace_file(self, name: str, data: bytes) -> None:
        """Install ``name`` atomically (temporary, fsync, rename, directory fsync)."""
        self.created.append(self._path(name + TMP_SUFFIX))
        self.io.replace_file(self.dest, name, data)

    def remove_created(self) -> None:
        for path in reversed(self.created):
            try:
                self.io.unlink(path)
            except OSError:
                pass
        self.created.clear()


def _file_matches(io: FileIO, path: str, nonce: int, size: int) -> bool:
    """True if ``path`` is a segment of exactly ``size`` bytes whose header names ``nonce``."""
    try:
        fd = io.open_read(path)
    except OSError:
        return False
    try:
        if io.size(fd) != size:
            return False
        header = seg_mod.decode_header(io.pread(fd, HEADER_SIZE, 0))
    except (OSError, seg_mod.HeaderError):
        return False
    finally:
        io.close(fd)
    return header.nonce == nonce


def _durable_file(segment_id: int, nonce: int, end: int) -> bytes:
    """A DURABLE file whose mark vouches for ``end`` bytes of the open segment: exactly what
    the backup copied and fsynced (never the store's own mark, which may reach further)."""
    data = bytearray(durable.FILE_SIZE)
    generation = 1
    slot = durable.encode_slot(durable.Mark(segment_id, nonce, end, generation))
    at = (generation % 2) * durable.SLOT_SPACING
    data[at : at + len(slot)] = slot
    return bytes(data)


def _pin_settled(pin_view: Callable[[], Pin]) -> Pin:
    """Pin the store; a read-only view whose segments vanished is refreshed and pinned
    again, up to PIN_ATTEMPTS times with a doubling pause from 2 ms (~0.5 s in all)."""
    delay = 0.002
    attempt = 1
    waited = 0.0
    changed = ""
    while True:
        try:
            pin = pin_view()
        except ViewChanged as exc:
            if attempt >= PIN_ATTEMPTS:
                log.warning("bitkv backup: gave up pinning the store's segments after "
                            "waiting %.0f ms (%d attempts): %s kept vanishing (its writer "
                            "is compacting)", waited * 1000, attempt, exc.args[0])
                raise BackupError(f"the store kept changing while its segments were pinned "
                                  f"({exc.args[0]} vanished {PIN_ATTEMPTS} times: its writer "
                                  "is compacting); try again. Nothing was written") from None
            changed = exc.args[0]
        else:
            if waited:
                log.info("bitkv backup: waited %.0f ms for the writer's compaction (%s "
                         "vanished under the read-only view; pinned at attempt %d)",
                         waited * 1000, changed, attempt)
            return pin
        time.sleep(delay)
        waited += delay
        delay *= 2
        attempt += 1


def _store_identity(source: str) -> list[int] | None:
    """What tells this store directory from another one at the same path (None: unknown):
    the device and inode of the directory and of its marker, and the marker's inode change
    time. The marker is written once, when the store is created, and never rewritten (but by
    the one upgrade of a version-1 store), so a store deleted and created again at the same
    place (which may well get the same inode numbers back) still differs by that time."""
    try:
        directory = os.stat(source)
        marker = os.lstat(os.path.join(source, MARKER_NAME))
    except OSError:
        return None
    return [directory.st_dev, directory.st_ino, marker.st_ino, marker.st_ctime_ns]


def _note(source: str, view: Pin, listed: manifest.Manifest, open_state: tuple[int, int] | None,
          earlier: _Earlier | None, complete: bool) -> bytes:
    states = [{"manifest_crc": _manifest_crc(listed.encode()),
               "open_id": open_state[0] if open_state else None,
               "open_size": open_state[1] if open_state else None}]
    if earlier is not None:
        # Until the new MANIFEST is installed the old one is on disk, and the next
        # incremental backup must still accept it.
        states += [s for s in earlier.note.get("states", [])
                   if isinstance(s, dict) and s.get("manifest_crc") == earlier.manifest_crc]
    note = {
        "bitkv_backup": NOTE_VERSION,
        "complete": complete,
        "source": os.path.realpath(source),
        "source_identity": _store_identity(source),
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "last_seq": view.last_seq,
        "segments": len(listed.entries),
        "states": states,
    }
    return (json.dumps(note, indent=2) + "\n").encode()


def run(source: str, dest: str | os.PathLike[str], pin_view: Callable[[], Pin], *,
        incremental: bool = False, link: bool = True, io: FileIO,
        progress: ProgressCallback | None = None) -> BackupReport:
    """Back up the store in ``source`` into ``dest`` (see the module doc and
    :meth:`bitkv.Store.backup`). ``pin_view`` pins the store's current state; it may raise
    :class:`ViewChanged`, and is then called again. Raises :class:`BackupError` for an
    unusable destination or a failure while writing (what was written is removed, an earlier
    backup is left as it was); the store is never changed."""
    started = time.monotonic()
    dest = os.fspath(dest)
    _check_apart(source, dest)
    report = BackupReport(os.path.abspath(dest), incremental)
    earlier: _Earlier | None = None
    created = False
    try:
        if incremental:
            earlier, lock = _open_earlier(dest, io)
        else:
            created, lock = _prepare_full(dest, io)
    except OSError as exc:  # (the refusals are BackupErrors already)
        where = f" ({exc.filename})" if exc.filename else ""
        raise BackupError(f"backup into {dest!r} failed: {exc.strerror or exc}{where}. The "
                          "store was not changed") from exc
    writer: _Writer | None = None
    committed = False
    try:
        view = _pin_settled(pin_view)
        try:
            keycheck = _read_optional(os.path.join(source, KEYCHECK_NAME), io)
            if earlier is not None:
                _check_same_store(source, dest, io, earlier, view, keycheck)
            total = sum(p.state.size for p in view.segments)
            writer = _Writer(dest, io, report, progress, total)
            if earlier is None:
                # First, so that an interruption leaves a directory a new backup may clear.
                writer.write_file(BACKUP_NOTE_NAME, _note(source, view, manifest.Manifest(
                    0, ()), None, None, complete=False))
            fix_headers, listed, open_state = _write_segments(writer, view, earlier, link)
            if keycheck is not None and (earlier is None or earlier.keycheck is None):
                writer.write_file(KEYCHECK_NAME, keycheck)
            present = set(earlier.names) if earlier is not None else set()
            for name in sorted(io.listdir(source)):
                if is_dict_name(name) and name not in present:
                    data = _read_optional(os.path.join(source, name), io)
                    if data is not None:
                        writer.write_file(name, data)
            mark = (_durable_file(open_state[0], open_state[2], open_state[1])
                    if open_state is not None else bytes(durable.FILE_SIZE))
            opened = (open_state[0], open_state[1]) if open_state is not None else None
            if earlier is None:
                writer.write_file(DURABLE_NAME, mark)
            else:
                writer.replace_file(DURABLE_NAME, mark)
            io.fsync_dir(dest)  # every new name durable before the MANIFEST lists it
            note = _note(source, view, listed, opened, earlier, complete=True)
            if earlier is None:
                writer.replace_file(BACKUP_NOTE_NAME, note)
                manifest.write(dest, io, listed)
                # The marker last: until it exists, the directory is not a store.
                recovery.create_store(dest, io)
                committed = True
                if created:
                    io.fsync_dir(os.path.dirname(os.path.abspath(dest)))
            else:
                writer.replace_file(BACKUP_NOTE_NAME, note)
                manifest.write(dest, io, listed)  # the commit point of an incremental backup
                committed = True
                _finish_incremental(dest, io, fix_headers, listed, earlier, report)
            report.segments = len(listed.entries)
            report.last_seq = view.last_seq
        finally:
            view.close()
    except BaseException as exc:
        if not committed:
            # Best effort, and fsynced so the removals last: what is left after a failure
            # here is harmless anyway (no marker yet, or orphans an earlier backup ignores).
            if writer is not None:
                writer.remove_created()
            try:
                if created:
                    for name in io.listdir(dest):
                        io.unlink(os.path.join(dest, name))
                    io.rmdir(dest)
                    io.fsync_dir(os.path.dirname(os.path.abspath(dest)))
                elif writer is not None:
                    io.fsync_dir(dest)
            except OSError:
                pass
        if isinstance(exc, OSError):
            where = f" ({exc.filename})" if exc.filename else ""
            state = ("the backup is complete but its last step failed" if committed
                     else "what it wrote was removed" if earlier is None
                     else "the earlier backup is left as it was")
            raise BackupError(f"backup into {dest!r} failed: {exc.strerror or exc}{where}; "
                              f"{state}. The store was not changed") from exc
        raise
    finally:
        lock.release()
    report.seconds = time.monotonic() - started
    return report


def _write_segments(writer: _Writer, view: Pin, earlier: _Earlier | None, link: bool
                    ) -> tuple[list[tuple[str, bytes]], manifest.Manifest,
                               tuple[int, int, int] | None]:
    """Write (or keep) every pinned segment; return the headers still to write, the new
    MANIFEST and the open segment's (backup id, copied end, nonce)."""
    reusable: dict[int, manifest.ManifestEntry] = {}
    taken: set[int] = set()
    newest_old = 0
    listed_nonces: set[int] = set()
    earlier_names: set[str] = set()
    if earlier is not None:
        earlier_names = set(earlier.names)
        listed_nonces = {e.nonce for e in earlier.listed.entries}
        reusable = {e.nonce: e for e in earlier.listed.entries if not e.is_open}
        taken = set(earlier.ids)
        open_entry = next((e for e in earlier.listed.entries if e.is_open), None)
        newest_old = (open_entry.order_seq if open_entry is not None
                      else max((e.order_seq for e in earlier.listed.entries), default=0) + 1)
    next_free = max(taken | {p.state.segment_id for p in view.segments}, default=0) + 1
    entries: list[manifest.ManifestEntry] = []
    fix_headers: list[tuple[str, bytes]] = []
    open_state: tuple[int, int, int] | None = None
    for p in view.segments:
        s = p.state
        nonce = s.header.nonce
        old = reusable.get(nonce)
        if (old is not None and not s.is_open and old.sealed_size == s.size
                and old.kind == s.header.kind
                and _file_matches(writer.io, seg_mod.segment_path(writer.dest, old.segment_id),
                                  nonce, s.size)):
            entries.append(manifest.ManifestEntry(old.segment_id, nonce, s.header.order_seq,
                                                  s.size, s.header.kind,
                                                  min(s.durable_end, s.size)))
            writer.report.reused += 1
            writer.advance(s.size)
            hint_name = seg_mod.hint_name(old.segment_id)
            if hint_name not in earlier_names:
                # The store wrote a hint since (the background sealing hints): take it too.
                # A hint is valid for a listed segment of the same nonce whenever it lands.
                writer.copy_hint(p, hint_name)
            continue
        if s.segment_id in taken:
            backup_id, next_free = next_free, next_free + 1
        else:
            backup_id = s.segment_id
        taken.add(backup_id)
        name = seg_mod.data_name(backup_id)
        # Left as an orphan by an interruption, an append segment newer than the earlier
        # backup's open one would make the earlier backup refuse to open (it would look
        # like writes its MANIFEST lost): written headerless until the MANIFEST lists it.
        # (A copy of a segment the earlier MANIFEST lists, by nonce, is ignored as an orphan.)
        unsafe = (earlier is not None and s.header.kind == KIND_APPEND
                  and s.header.order_seq >= newest_old and nonce not in listed_nonces)
        if not (link and not s.is_open and not unsafe and writer.link_segment(p, name)):
            writer.copy_segment(p, name, zero_header=unsafe)
            if unsafe:
                fix_headers.append((os.path.join(writer.dest, name),
                                    p.read(writer.io, 0, HEADER_SIZE)))
        writer.copy_hint(p, seg_mod.hint_name(backup_id))
        if s.is_open:
            open_state = (backup_id, s.size, nonce)
        entries.append(manifest.ManifestEntry(
            backup_id, nonce, s.header.order_seq, manifest.OPEN if s.is_open else s.size,
            s.header.kind, 0 if s.is_open else min(s.durable_end, s.size)))
    generation = earlier.listed.generation + 1 if earlier is not None else 1
    return fix_headers, manifest.Manifest(generation, tuple(entries)), open_state


def _finish_incremental(dest: str, io: FileIO, fix_headers: list[tuple[str, bytes]],
                        listed: manifest.Manifest, earlier: _Earlier,
                        report: BackupReport) -> None:
    """After the commit: give the headerless copies their headers, remove what the new
    MANIFEST no longer lists."""
    for path, header in fix_headers:
        fd = io.open_rw(path)
        try:
            io.pwrite(fd, header, 0)
            io.fsync(fd)
        finally:
            io.close(fd)
    keep = {e.segment_id for e in listed.entries}
    dropped = {e.segment_id for e in earlier.listed.entries} - keep
    report.removed = len(dropped)
    for name in sorted(io.listdir(dest)):
        base = name.removesuffix(TMP_SUFFIX)
        sid = seg_mod.parse_id(base, seg_mod.HINT_SUFFIX)
        if sid is None:
            sid = seg_mod.parse_id(base, seg_mod.DATA_SUFFIX)
        stale_tmp = name != base and _is_ours(base)
        if (sid is not None and sid not in keep) or stale_tmp:
            # Hints sort after data files of the same id in name order, but either order
            # is safe: the MANIFEST no longer lists these, so they are orphans already.
            try:
                io.unlink(os.path.join(dest, name))
            except FileNotFoundError:
                pass
    io.fsync_dir(dest)
