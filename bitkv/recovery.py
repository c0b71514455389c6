"""Opening a store directory: validate it, then rebuild the keydir from segments and hints.

Policy (see docs/durability.md):

* A damaged region at the end of the newest append segment, with no intact record after it, is
  a torn write: the writer truncates it away and fsyncs (RocksDB's
  ``kTolerateCorruptedTailRecords``). An uncommitted batch at that tail goes with it.
* Damage followed by an intact record, and any damage in another segment, is corruption: the
  bytes are skipped and counted, every intact record around them is kept, nothing is truncated
  (RocksDB's ``kSkipAnyCorruptedRecords``). ``bitkv check`` reports it by file and offset.
* A bad record is never indexed. Opening never fails because of damaged data; it fails only for
  a directory that is not a store, or a format version this code does not know.

Segments are applied in the order of their header's ``order_seq`` (then id), the newest record
of a key winning; docs/format.md explains why that order is exact after compactions too.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import secrets
import struct
import time
from dataclasses import dataclass, field

from . import durable, hint, indexing, keydir, manifest, record, replay
from . import segment as seg_mod
from .errors import (
    FormatVersionError,
    NotAStoreError,
    SegmentLossError,
    StoreNotFoundError,
    UnsafeFileError,
)
from .fileio import DEFAULT_FILEIO, FileIO
from .keydir import KeyDir
from .names import (
    LAST_COMPACTION_NAME,
    REPLICA_STATE_NAME,
    SETTINGS_NAME,
    is_replica_rdb_tmp_name,
)
from .names import MARKER_NAME as MARKER_NAME
from .record import Damage, ScannedRecord
from .segment import Segment, SegmentHeader

# Version 2 adds the MANIFEST and the DURABLE mark; segments, records and hints are as in 1.
# A version-1 store is upgraded by its first writable open (MANIFEST first, then the marker),
# so a bitkv that knows only version 1 can never write into a store whose MANIFEST it would
# leave stale.
MARKER_FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1
MARKER_TEXT = f"bitkv store\nformat-version: {MARKER_FORMAT_VERSION}\n".encode()
_MAX_HINT_READ = 1 << 34  # a hint of 2^32 entries; read_file allocates only what is there


@dataclass
class RecoveryReport:
    """What opening the store found. ``damage`` lists (file, offset, length, description)."""

    segments: int = 0
    segments_from_hints: int = 0
    records_loaded: int = 0
    truncated_bytes: int = 0
    # Each cut of a torn write: (file, offset it was cut at, bytes cut besides the zero tail).
    truncations: list[tuple[str, int, int]] = field(default_factory=list)
    # Of the truncated bytes, the trailing run of zeros: the newest append segment's
    # preallocated room, which a crash (or, for a reader, a live writer) leaves; not damage.
    zero_tail_bytes: int = 0
    corrupt_bytes: int = 0
    dropped_batch_records: int = 0
    poisoned_keys: int = 0  # keys whose newest record is damaged: reading them raises
    damage: list[tuple[str, int, int, str]] = field(default_factory=list)
    ignored_hints: list[tuple[str, str]] = field(default_factory=list)
    removed_temp_files: list[str] = field(default_factory=list)
    # Keys whose newest record is damaged (reading them raises), as far as they are known.
    damaged_keys: list[bytes] = field(default_factory=list)
    # Segment files the MANIFEST does not list: removed (leftovers of a rotation or a
    # compaction that did not commit, or inputs of one that did) or left alone (copies).
    removed_orphans: list[str] = field(default_factory=list)
    ignored_files: list[tuple[str, str]] = field(default_factory=list)
    # Segments the MANIFEST lists that are missing or cut short (only when tolerated, by
    # repair): (file, what happened, keys at stake as far as a hint tells).
    lost_segments: list[tuple[str, str, list[bytes]]] = field(default_factory=list)
    durable_end: int = 0  # how far the newest append segment was known to be fsynced
    # Damage a crash left in unsynced bytes of the newest append segment, followed by intact
    # records: a writer seals that segment (recording its durable end) instead of appending.
    damage_past_durable_end: bool = False
    manifest_created: bool = False


class _Retry(Exception):
    """A read-only opener saw the store change under it (compaction, rotation): load again."""


@dataclass
class LoadedStore:
    segments: list[Segment]  # in load order; the newest append segment, if any, is last
    keydir: KeyDir
    next_seq: int
    next_id: int
    report: RecoveryReport
    slots: list[Segment | None]
    # For the segment that becomes active: keys whose newest record in it is a tombstone or
    # expired, as (offset, size, flags, expiry_ms); a checkpoint hint must repeat them.
    hidden: dict[bytes, tuple[int, int, int, int]] = field(default_factory=dict)
    manifest: manifest.Manifest | None = None
    marker_version: int = MARKER_FORMAT_VERSION
    mark: durable.Mark | None = None


def is_temp_name(name: str) -> bool:
    """True for the temporary names bitkv itself creates (and may remove at open)."""
    from .codec import KEYCHECK_NAME, is_dict_name

    if not name.endswith(seg_mod.TMP_SUFFIX):
        return False
    stem = name[: -len(seg_mod.TMP_SUFFIX)]
    return (
        _is_creation_leftover(name)
        or stem in (MARKER_NAME, KEYCHECK_NAME, manifest.MANIFEST_NAME, REPLICA_STATE_NAME,
                    LAST_COMPACTION_NAME, SETTINGS_NAME)
        or is_replica_rdb_tmp_name(name)
        or is_dict_name(stem)
        or seg_mod.parse_id(stem, seg_mod.DATA_SUFFIX) is not None
        or seg_mod.parse_id(stem, seg_mod.HINT_SUFFIX) is not None
    )


def _marker_temp_name() -> str:
    # Unique per creator: two processes creating the same store at once must not remove or
    # rename each other's temporary file (then one of them gets LockError, as it should).
    return f"{MARKER_NAME}.{os.getpid()}-{secrets.token_hex(4)}{seg_mod.TMP_SUFFIX}"


def _creator_alive(name: str) -> bool:
    """True for a marker temp file whose creating process still runs: it may be renaming it
    into place right now (two openers creating one store at once)."""
    if not _is_creation_leftover(name):
        return False
    pid = int(name[len(MARKER_NAME) + 1 :].partition("-")[0])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_creation_leftover(name: str) -> bool:
    """Files a crash during store creation can leave before the marker exists."""
    if not (name.startswith(MARKER_NAME + ".") and name.endswith(seg_mod.TMP_SUFFIX)):
        return False
    middle = name[len(MARKER_NAME) + 1 : -len(seg_mod.TMP_SUFFIX)]
    pid, _, token = middle.partition("-")
    return pid.isdigit() and len(token) == 8 and all(c in "0123456789abcdef" for c in token)


def read_marker(directory: str, io: FileIO | None = None) -> int:
    """Return the store's format version; raise if the marker is not ours (a symlink in its
    place is refused: bitkv follows none)."""
    io = io or DEFAULT_FILEIO
    fd = _open_no_symlink(io, os.path.join(directory, MARKER_NAME))
    try:
        text = io.pread(fd, 256, 0)
    finally:
        io.close(fd)
    lines = text.split(b"\n")
    if lines[0] != b"bitkv store" or len(lines) < 2 or not lines[1].startswith(b"format-version: "):
        raise NotAStoreError(f"{directory!r}: {MARKER_NAME} is not a bitkv store marker")
    try:
        version = int(lines[1].split(b": ", 1)[1])
    except ValueError:
        raise NotAStoreError(f"{directory!r}: {MARKER_NAME} has an unreadable version") from None
    if version > MARKER_FORMAT_VERSION:
        raise FormatVersionError(
            f"store {directory!r} uses on-disk format version {version}; this bitkv reads "
            f"versions up to {MARKER_FORMAT_VERSION}. Upgrade bitkv to open it."
        )
    return version


def check_directory(directory: str, *, readonly: bool, create: bool) -> bool:
    """Validate ``directory`` without changing anything. Return True if the store must be made.

    Raises StoreNotFoundError, NotAStoreError or FormatVersionError.
    """
    if not os.path.exists(directory):
        if readonly or not create:
            raise StoreNotFoundError(f"no bitkv store at {directory!r}")
        return True
    if not os.path.isdir(directory):
        raise NotAStoreError(f"{directory!r} is not a directory, so it cannot be a bitkv store")
    names = os.listdir(directory)
    if MARKER_NAME in names:
        read_marker(directory)
        return False
    # The marker is the first file a new store gets, so without it only the marker's own
    # temporary file may be present; anything else (even a LOCK or a *.tmp) is someone else's.
    foreign = sorted(n for n in names if not _is_creation_leftover(n))
    if foreign:
        shown = ", ".join(foreign[:3])
        raise NotAStoreError(
            f"{directory!r} is not a bitkv store: it holds other files ({shown}) "
            f"and no {MARKER_NAME} marker; bitkv will not write into it"
        )
    if readonly or not create:
        raise StoreNotFoundError(f"no bitkv store at {directory!r} (the directory is empty)")
    return True


def create_store(directory: str, io: FileIO) -> None:
    """Write the marker durably (temp file, fsync, rename, directory fsync)."""
    tmp = os.path.join(directory, _marker_temp_name())
    io.write_new_file(tmp, MARKER_TEXT)
    io.rename(tmp, os.path.join(directory, MARKER_NAME))
    io.fsync_dir(directory)


def upgrade_marker(directory: str, io: FileIO) -> None:
    """Rewrite a version-1 marker as the current version (after the MANIFEST exists)."""
    io.replace_file(directory, MARKER_NAME, MARKER_TEXT)


def make_directory(directory: str, io: FileIO) -> None:
    try:
        io.mkdir(directory)
    except FileExistsError:
        if not os.path.isdir(directory):
            raise NotAStoreError(f"{directory!r} is not a directory") from None
        return  # another opener created it a moment ago
    parent = os.path.dirname(os.path.abspath(directory))
    io.fsync_dir(parent)  # the new entry in the parent must survive power loss


def describe_keys_at_stake(keys: list[bytes], shown: int = 5) -> str:
    """"keys at stake: a, b and 3 more", or what saying none means (no hint told them)."""
    if not keys:
        return "the keys it held are unknown (no hint file)"
    listed = ", ".join(_show(k) for k in keys[:shown])
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"keys at stake: {listed}{more}"


def _show(key: bytes) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_losses(directory: str, losses: list[tuple[str, str, list[bytes]]]) -> str:
    parts = []
    for name, what, keys in losses:
        parts.append(f"segment {name} is {what}; {describe_keys_at_stake(keys)}")
    return (f"store {directory!r} is missing data it had acknowledged: " + "; ".join(parts)
            + ". Nothing was changed. `bitkv check` shows the damage; `bitkv check --repair` "
            "salvages every other record and records what was lost.")


ORPHAN_REMOVE = "remove"  # holds nothing the store needs: a writable open deletes it
ORPHAN_IGNORE = "ignore"  # not ours to delete (a copy, or unreadable): left alone, reported
ORPHAN_STALE = "stale"  # holds writes the MANIFEST does not know: refuse to guess
ORPHAN_GONE = "gone"  # vanished while we looked


def classify_orphan(directory: str, io: FileIO, listed: manifest.Manifest, segment_id: int
                    ) -> tuple[str, str]:
    """What a segment file the MANIFEST does not list is, and why (docs/format.md).

    Such a file is left by a change of the segment set that did not commit (a rotation's new
    segment, a compaction's outputs) or that committed and had not yet removed its inputs.
    Neither holds anything the store needs. One that holds records newer than the segment
    the MANIFEST lists as open cannot be either: the MANIFEST is older than the files.
    """
    path = os.path.join(directory, seg_mod.data_name(segment_id))
    try:
        fd = _open_no_symlink(io, path)
    except FileNotFoundError:
        return ORPHAN_GONE, "vanished"
    try:
        size = io.size(fd)
        head = io.pread(fd, seg_mod.HEADER_SIZE, 0)
    finally:
        io.close(fd)
    try:
        header = seg_mod.decode_header(head)
    except seg_mod.HeaderError:
        if size <= seg_mod.HEADER_SIZE * 2:
            return ORPHAN_REMOVE, "a segment whose creation never finished (not listed)"
        return ORPHAN_IGNORE, "not in the MANIFEST and its header is damaged; left alone"
    if header.nonce in {e.nonce for e in listed.entries}:
        return ORPHAN_IGNORE, ("a copy of a segment the MANIFEST lists (same nonce); ignored "
                               "and left alone")
    if header.kind == seg_mod.KIND_COMPACTED:
        return ORPHAN_REMOVE, ("an output of a compaction that did not commit, or an input "
                               "of one that did")
    if size <= seg_mod.HEADER_SIZE:
        return ORPHAN_REMOVE, "an empty segment of a rotation that did not commit"
    open_entry = next((e for e in listed.entries if e.is_open), None)
    newest = (open_entry.order_seq if open_entry is not None
              else max((e.order_seq for e in listed.entries), default=0) + 1)
    if header.order_seq < newest:
        return ORPHAN_REMOVE, "an input of a committed compaction, not yet removed"
    return ORPHAN_STALE, ("holds writes newer than every segment the MANIFEST lists, which "
                          "does not list it (an old MANIFEST restored, or files copied in)")


def keys_at_stake(directory: str, io: FileIO, entry: manifest.ManifestEntry, kept: int
                  ) -> list[bytes]:
    """Keys whose records the segment's hint places at or past byte ``kept`` (all of them
    for a missing segment); empty if it has no readable hint."""
    path = os.path.join(directory, seg_mod.hint_name(entry.segment_id))
    try:
        buf = io.read_file(path, _MAX_HINT_READ)
        raw = hint.decode_raw(buf, entry.nonce, 1 << 62)
    except (OSError, hint.HintError):
        return []
    keys: list[bytes] = []
    pos = 0
    for _f, _r, key_len, value_len, offset, _seq, _exp in hint.ENTRY.iter_unpack(raw.fixed):
        key = raw.keys[pos : pos + key_len]
        pos += key_len
        if offset + record.HEADER_SIZE + key_len + value_len > kept:
            keys.append(bytes(key))
    return keys


_NOT_LISTED = manifest.ManifestEntry(0, 0, 0, 1, 0)  # a sealed stand-in for "not listed"
_KEY_LEN = struct.Struct("<H")  # a record header's key_len, at offset 6
_MAX_BITFLIP_KEY = 1024  # keys up to this long are tried with each of their bits flipped
_MAX_KEY_LENGTHS = 64  # distinct key lengths tried as the length of a damaged record's key


class Loader:
    """Rebuilds a keydir from segments: opens a store's segments (:meth:`open_segments`), then
    indexes each (:meth:`load_segment`) from its hint and by replaying its records
    (:func:`replay.replay`, whose reporter it is: it indexes the committed records and counts
    the damage in ``report``).

    ``use_hints=False`` scans every segment whole (repair, which trusts no hint). A caller that
    continues an index (``extend``) passes it as ``index`` (its ``slots`` are the table of
    segments), with its ``report`` and ``max_seq``; ``hidden`` collects the tombstones and expired
    records of the segment that becomes the active one (see :attr:`hidden`).
    """

    def __init__(self, directory: str, io: FileIO, *, readonly: bool, now_ms: int,
                 use_hints: bool = True, index: KeyDir | None = None,
                 report: RecoveryReport | None = None, max_seq: int = 0,
                 hidden: dict[bytes, keydir.Hidden] | None = None) -> None:
        self.directory = directory
        self.io = io
        self.readonly = readonly
        self.now_ms = now_ms
        self.use_hints = use_hints
        self.keydir = index if index is not None else KeyDir([])
        self.slots: list[Segment | None] = self.keydir.slots
        if hidden is not None:
            self.keydir.hidden = hidden
        self.report = report if report is not None else RecoveryReport()
        self.max_seq = max_seq
        self.final = True
        self._key_lengths: list[int] | None = None  # of indexed keys, for _attribute
        self.listed: manifest.Manifest | None = None
        self.hint_ids: set[int] = set()

    def add_segment(self, seg: Segment) -> None:
        """Give ``seg`` the next slot of the table of segments the keydir points into."""
        seg.slot = len(self.slots)
        self.slots.append(seg)

    # -- bookkeeping -------------------------------------------------------------------------

    def _damage(self, path: str, offset: int, length: int, what: str) -> None:
        self.report.damage.append((os.path.basename(path), offset, length, what))
        self.report.corrupt_bytes += length

    @property
    def hidden(self) -> dict[bytes, keydir.Hidden] | None:
        """The records hidden from the index that the segment being loaded (if it will
        become the active one) must keep for its checkpoint: the keydir's."""
        return self.keydir.hidden

    @hidden.setter
    def hidden(self, value: dict[bytes, keydir.Hidden] | None) -> None:
        self.keydir.hidden = value

    def _apply(self, seg: Segment, key: bytes, flags: int, expiry_ms: int, offset: int,
               size: int) -> None:
        if self.keydir.apply(seg, seg.slot, key, offset, size, flags, expiry_ms, self.now_ms):
            self.report.records_loaded += 1

    def _poison(self, seg: Segment, damage: record.Damage, mm: mmap.mmap, guess: bool) -> None:
        """A damaged record that was probably the newest version of a key already indexed:
        point the key at the damaged bytes, so reading it raises IntegrityError instead of
        silently returning the older version (or bringing a deleted key back). A key not
        indexed gets no entry: no key is ever invented from damaged bytes.

        Which key? The one the damaged header names, if it is indexed. In bytes that were
        fsynced (``guess``: damage there is bit rot in an acknowledged write, never a write
        that a crash may lose), the damage may also have hit the key itself or its length: if
        exactly one indexed key differs from the claimed key in one bit, or is the prefix of
        the bytes after the header at one of the key lengths the index holds, it is taken.
        With several candidates none is (a wrong guess would make a healthy key unreadable);
        the damage is reported either way. Past the durable end no guess is made: those
        bytes may be a write the crash lost, whose key rightly shows its older value.
        """
        key = self._attribute(damage, mm, guess)
        if key is None:
            return
        old = self.keydir.entries.get(key)
        if old is None:
            return
        slot, offset, _size = keydir.unpack(old)
        if slot == seg.slot and offset > damage.offset:
            return  # a later record of this segment is newer than the damaged one
        self.keydir.point_at_damage(key, seg.slot, damage.offset, damage.length)
        self.report.poisoned_keys += 1
        self.report.damaged_keys.append(key)

    def _attribute(self, damage: record.Damage, mm: mmap.mmap, guess: bool) -> bytes | None:
        entries = self.keydir.entries
        if damage.key is not None and damage.key in entries:
            return damage.key
        if not entries or not guess:
            return None
        key_start = damage.offset + record.HEADER_SIZE
        room = min(damage.length - record.HEADER_SIZE, record.MAX_KEY_SIZE)
        if room <= 0:
            return None
        # The key the header names, if that is indexed (the damage hit elsewhere, perhaps a
        # flag: an acknowledged record, even a batch member, is named in durable bytes).
        (claimed_len,) = _KEY_LEN.unpack_from(mm, damage.offset + 6)
        if 0 < claimed_len <= room:
            claimed = mm[key_start : key_start + claimed_len]
            if claimed in entries:
                return claimed
        found: set[bytes] = set()
        if damage.key is not None and len(damage.key) <= _MAX_BITFLIP_KEY:
            flipped = bytearray(damage.key)
            for i in range(len(flipped)):
                for bit in range(8):
                    flipped[i] ^= 1 << bit
                    candidate = bytes(flipped)
                    flipped[i] ^= 1 << bit
                    if candidate in entries:
                        found.add(candidate)
        else:
            if self._key_lengths is None:
                lengths: set[int] = set()
                for k in entries:
                    lengths.add(len(k))
                    if len(lengths) > _MAX_KEY_LENGTHS:
                        break
                self._key_lengths = sorted(lengths)
            for key_len in self._key_lengths:
                if key_len <= room:
                    candidate = mm[key_start : key_start + key_len]
                    if candidate in entries:
                        found.add(candidate)
        return found.pop() if len(found) == 1 else None

    # -- segments ----------------------------------------------------------------------------

    def open_segments(self, listed: manifest.Manifest | None = None, *,
                      require_manifest: bool = False, tolerate_loss: bool = False,
                      final: bool = True) -> list[Segment]:
        """Open the store's segments and return them in load order.

        With a MANIFEST (``listed``), exactly the segments it lists: one missing, cut short or
        replaced raises :class:`SegmentLossError` (or, with ``tolerate_loss``, is recorded in
        ``report.lost_segments``), and files it does not list are orphans. Without one (a
        version-1 store), every ``*.data`` file, as before the MANIFEST existed. A read-only
        opener that may still retry (not ``final``) raises ``_Retry`` instead of refusing,
        since a writer changing the store under it looks the same for a moment.
        """
        self.final = final
        names = self.io.listdir(self.directory)
        if not self.readonly:
            temps = sorted(n for n in names if is_temp_name(n) and not _creator_alive(n))
            for name in temps:  # leftovers of an interrupted compaction or store creation
                self.io.unlink(os.path.join(self.directory, name))
            if temps:
                self.io.fsync_dir(self.directory)
                self.report.removed_temp_files = temps
                names = [n for n in names if n not in temps]
        ids = seg_mod.list_segment_ids(names)
        self.hint_ids = {i for i in (seg_mod.parse_id(n, seg_mod.HINT_SUFFIX) for n in names)
                         if i is not None}
        self.listed = listed
        opened: list[tuple[int, str, int, int]] = []  # (id, path, fd, size)
        try:
            if listed is None:
                if require_manifest:
                    self._refuse_without_manifest(ids)
                for segment_id in ids:
                    path = seg_mod.segment_path(self.directory, segment_id)
                    # FileNotFoundError: only a read-only opener can see this (the writer's
                    # compaction removed an input after we listed it): load again.
                    fd = _open_no_symlink(self.io, path)
                    opened.append((segment_id, path, fd, self.io.size(fd)))
                segments = self._headers(opened, newest_id=ids[-1] if ids else -1)
            else:
                segments = self._open_listed(listed, ids, names, opened, tolerate_loss)
        except BaseException:
            for _sid, _path, fd, _size in opened:
                try:
                    self.io.close(fd)
                except OSError:
                    pass
            raise
        orphan_hints = sorted(self.hint_ids - set(ids) - {s.id for s in segments})
        if orphan_hints and not self.readonly:
            # Hints whose segment is gone (removed, or an older bitkv removed data first).
            for segment_id in orphan_hints:
                self._unlink_quietly(seg_mod.hint_name(segment_id))
            self.io.fsync_dir(self.directory)
        segments.sort(key=lambda s: (s.order_seq, s.id))
        for s in segments:
            self.add_segment(s)
        return segments

    def _unlink_quietly(self, name: str) -> None:
        try:
            self.io.unlink(os.path.join(self.directory, name))
        except FileNotFoundError:
            pass

    def _refuse_without_manifest(self, ids: list[int]) -> None:
        """A store of the MANIFEST's format without one: fine only if it holds no records
        yet (a crash between creating the marker and the MANIFEST)."""
        for segment_id in ids:
            path = seg_mod.segment_path(self.directory, segment_id)
            try:
                size = os.lstat(path).st_size
            except FileNotFoundError:
                continue
            if size > seg_mod.HEADER_SIZE:
                raise SegmentLossError(
                    f"store {self.directory!r} has no {manifest.MANIFEST_NAME} but holds "
                    f"segment {seg_mod.data_name(segment_id)} with data: which segments make "
                    "up the store is unknown. Run `bitkv check --repair` to rebuild it from "
                    "the segments present.", [])

    def _headers(self, opened: list[tuple[int, str, int, int]], newest_id: int
                 ) -> list[Segment]:
        """Read the headers of segments opened without a MANIFEST (version-1 rules)."""
        segments: list[Segment] = []
        damaged: list[tuple[int, str, int, int]] = []
        while opened:
            segment_id, path, fd, size = opened.pop(0)
            try:
                header = seg_mod.decode_header(self.io.pread(fd, seg_mod.HEADER_SIZE, 0))
            except seg_mod.NewerFormatError as exc:
                self.io.close(fd)
                for s in segments:
                    s.close()
                for _sid, _path, dfd, _size in damaged:
                    self.io.close(dfd)
                raise FormatVersionError(f"{path}: {exc}; upgrade bitkv to open it") from None
            except seg_mod.HeaderError:
                # Counted when salvaged: the scan from offset 0 reports the bad header bytes.
                damaged.append((segment_id, path, fd, size))
                continue
            segments.append(Segment(self.io, segment_id, path, fd, header, size))
        for segment_id, path, fd, size in damaged:
            salvaged = self._salvage_headerless(segment_id, path, fd, size, segment_id == newest_id)
            if salvaged is not None:
                segments.append(salvaged)
        return segments

    def _open_listed(self, listed: manifest.Manifest, ids: list[int], names: list[str],
                     opened: list[tuple[int, str, int, int]], tolerate_loss: bool
                     ) -> list[Segment]:
        entries = listed.by_id()
        segments: list[Segment] = []
        losses: list[tuple[str, str, list[bytes]]] = []
        present = set(ids)
        for entry in sorted(entries.values(), key=lambda e: e.segment_id):
            name = seg_mod.data_name(entry.segment_id)
            path = os.path.join(self.directory, name)
            if entry.segment_id not in present:
                if self.readonly and not tolerate_loss and not self.final:
                    # The writer may have compacted it away after we read the MANIFEST.
                    raise _Retry(name)
                losses.append((name, "missing", self._keys_at_stake(entry, 0)))
                continue
            try:
                fd = _open_no_symlink(self.io, path)
            except FileNotFoundError:
                if self.readonly and not tolerate_loss and not self.final:
                    raise _Retry(name) from None
                losses.append((name, "missing", self._keys_at_stake(entry, 0)))
                continue
            opened.append((entry.segment_id, path, fd, 0))
            size = self.io.size(fd)
            head = self.io.pread(fd, seg_mod.HEADER_SIZE, 0)
            header: SegmentHeader | None
            try:
                header = seg_mod.decode_header(head)
            except seg_mod.NewerFormatError as exc:
                raise FormatVersionError(f"{path}: {exc}; upgrade bitkv to open it") from None
            except seg_mod.HeaderError:
                header = None
            if header is not None and header.nonce != entry.nonce:
                losses.append((name, "replaced by another file (its header names another "
                               "incarnation than the one the MANIFEST lists)",
                               self._keys_at_stake(entry, 0)))
                if tolerate_loss:  # repair salvages whatever the file holds, as it is
                    segments.append(Segment(self.io, entry.segment_id, path, fd, header,
                                            size))
                    opened.pop()
                continue
            if size < seg_mod.HEADER_SIZE or (not entry.is_open and size < entry.sealed_size):
                expected = (f"{entry.sealed_size}" if not entry.is_open
                            else f"at least {seg_mod.HEADER_SIZE}")
                losses.append((name, f"truncated to {size} bytes (expected {expected})",
                               self._keys_at_stake(entry, size)))
                if not tolerate_loss:
                    continue
                # Repair salvages the records left in the part that is still there.
            if not entry.is_open and size > entry.sealed_size:
                # Bytes appended after the segment was sealed were never written by the store
                # (a sealed segment is never appended to): never index them.
                self._damage(path, entry.sealed_size, size - entry.sealed_size,
                             "bytes past the length the segment was sealed at")
                size = entry.sealed_size
            seg_header = header or replay.rebuilt_header(entry)
            seg = Segment(self.io, entry.segment_id, path, fd, seg_header, size)
            opened.pop()
            if header is None:
                # Rebuilt from the MANIFEST, which knows the kind, load position and nonce.
                # The records after it are scanned (or read through its hint) as usual; the
                # segment never becomes the active one, and compaction rewrites it.
                seg.header_damaged = True
                self._damage(path, 0, seg_mod.HEADER_SIZE,
                             "segment header is damaged (rebuilt from the MANIFEST)")
            segments.append(seg)
        if losses:
            if not tolerate_loss:
                for s in segments:
                    s.close()
                message = _describe_losses(self.directory, losses)
                if self.readonly:
                    message += (" (A read-only opener retried: if a writer was compacting "
                                "the store, it kept changing while being read; try again.)")
                raise SegmentLossError(message, losses)
            self.report.lost_segments.extend(losses)
        extra = self._handle_orphans(listed, [i for i in ids if i not in entries],
                                     tolerate_loss)
        if extra:
            # Repair: segments holding writes the MANIFEST does not know are salvaged too.
            for segment_id in extra:
                path = seg_mod.segment_path(self.directory, segment_id)
                fd = _open_no_symlink(self.io, path)
                opened.append((segment_id, path, fd, self.io.size(fd)))
            segments.extend(self._headers(opened, newest_id=-1))
        return segments

    def _keys_at_stake(self, entry: manifest.ManifestEntry, kept: int) -> list[bytes]:
        return keys_at_stake(self.directory, self.io, entry, kept)

    def _handle_orphans(self, listed: manifest.Manifest, orphan_ids: list[int],
                        tolerate_loss: bool) -> list[int]:
        """Segment files the MANIFEST does not list: remove what provably holds nothing the
        store needs; refuse when one holds writes newer than the MANIFEST knows (with
        ``tolerate_loss``, as repair asks, return those to be loaded too)."""
        doomed: list[str] = []
        extra: list[int] = []
        for segment_id in orphan_ids:
            name = seg_mod.data_name(segment_id)
            verdict, why = classify_orphan(self.directory, self.io, listed, segment_id)
            if verdict == ORPHAN_GONE:
                continue
            if verdict == ORPHAN_REMOVE:
                doomed.append(name)
            elif verdict == ORPHAN_IGNORE:
                self.report.ignored_files.append((name, why))
            elif tolerate_loss:
                extra.append(segment_id)
            elif self.readonly and not self.final:
                raise _Retry(name)  # the writer may have rotated after we read the MANIFEST
            else:
                raise SegmentLossError(
                    f"store {self.directory!r}: {name} {why}. Nothing was changed; run "
                    "`bitkv check` to see the store, `bitkv check --repair` to salvage every "
                    "segment.", [(name, "not listed", [])])
        if doomed and not self.readonly:
            for name in doomed:
                doomed_id = seg_mod.parse_id(name, seg_mod.DATA_SUFFIX)
                if doomed_id is not None and doomed_id in self.hint_ids:
                    self._unlink_quietly(seg_mod.hint_name(doomed_id))
                self._unlink_quietly(name)
            self.io.fsync_dir(self.directory)
            self.report.removed_orphans = doomed
        return extra

    def _salvage_headerless(self, segment_id: int, path: str, fd: int, size: int,
                            newest: bool) -> Segment | None:
        """A segment whose header is bad: keep its intact records, or drop a torn creation."""
        if self.readonly and newest:
            mm, size = read_snapshot(self.io, fd, 0, size)  # may be truncated: see load_segment
        else:
            mm = self.io.map(fd, size)
        salvaged = replay.SalvagedHeader(None, newest and size <= seg_mod.HEADER_SIZE * 2)
        if mm is not None:
            salvaged = replay.salvage_header(mm, size, newest=newest)
            _close_map(mm)
        if salvaged.header is None:
            self.io.close(fd)
            if salvaged.torn_creation:
                # Created but never durably written: the crash tore its header.
                self.report.truncated_bytes += size
                self.report.truncations.append((os.path.basename(path), 0, size))
                if not self.readonly:
                    self.io.unlink(path)
                    self.io.fsync_dir(self.directory)
            else:
                self._damage(path, 0, size, "segment header is damaged and no record is intact")
            return None
        seg = Segment(self.io, segment_id, path, fd, salvaged.header, size)
        seg.header_damaged = True
        return seg

    def reserve_for_hints(self, segments: list[Segment]) -> None:
        """Size the index, before loading ``segments``, for the keys their hints hold (the
        entry counts of the hint headers), so that it is built in its final size rather than
        rehashed at every doubling. An estimate: a key several hints repeat is counted once
        per hint (a store with history may get a table one doubling larger than its keys
        alone need), and an unreadable hint counts 0 (the load reports it as usual)."""
        if not self.use_hints:
            return
        total = 0
        for seg in segments:
            if seg.id not in self.hint_ids:
                continue
            try:
                fd = _open_no_symlink(self.io, os.path.join(self.directory,
                                                            seg_mod.hint_name(seg.id)))
                try:
                    total += hint.entry_count(self.io.pread(fd, hint.HEADER_SIZE, 0),
                                              self.io.size(fd))
                finally:
                    self.io.close(fd)
            except (OSError, UnsafeFileError):
                continue
        if total:
            self.keydir.reserve(len(self.keydir) + total)

    def load_segment(self, seg: Segment, is_last: bool, start: int | None = None,
                     durable_end: int = 0) -> None:
        """Index ``seg`` (from ``start`` on, when a reader continues a segment it had read).

        ``durable_end``: the segment is known to have been fsynced up to there (the DURABLE
        mark). Damage before it is corruption even at the very end: no crash tears bytes an
        fsync covered, so it is bit rot in an acknowledged write, never a torn tail.
        """
        if start is None:
            self.report.segments += 1
            # A header the MANIFEST rebuilt was reported already; one rebuilt by guessing
            # (a store without a MANIFEST) is reported by the scan from offset 0.
            start = 0 if seg.header_damaged and self.listed is None else seg_mod.HEADER_SIZE
            if self.use_hints and seg.id in self.hint_ids:
                covered = self._load_hint(seg)
                if covered is not None:
                    start = covered
                    seg.hinted = covered == seg.size
        if seg.pread_only:
            # A read-only opener's newest segment: scan a private copy of the new bytes, so
            # a writer truncating its torn tail meanwhile cannot SIGBUS us.
            snapshot, seg.size = read_snapshot(self.io, seg.fd, start, seg.size)
            try:
                if snapshot is not None:
                    self._scan_segment(seg, snapshot, is_last, start, durable_end)
            finally:
                if snapshot is not None:
                    _close_map(snapshot)
            return
        seg.map()
        if seg.mm is not None:
            self._scan_segment(seg, seg.mm, is_last, start, durable_end)

    def _scan_segment(self, seg: Segment, mm: mmap.mmap, is_last: bool, start: int,
                      durable_end: int) -> None:
        indexer = _SegmentIndexer(self, seg, mm)
        ordered = seg.kind == seg_mod.KIND_APPEND and not seg.header_damaged
        done = replay.replay(
            mm, start, seg.size, indexer, durable_end=durable_end,
            tail_rule=is_last and seg.kind == seg_mod.KIND_APPEND,
            order_seq=seg.header.order_seq if ordered else None, max_seq=self.max_seq,
            plain_run=indexer.plain_run)
        self.max_seq = done.max_seq
        if done.torn_at is not None:
            # Damage the load reported before the scan (bytes past the sealed length) goes
            # with the torn tail too: the truncation removes those bytes.
            name = os.path.basename(seg.path)
            kept = []
            for entry in self.report.damage:
                if entry[0] == name and entry[1] >= done.torn_at:
                    self.report.corrupt_bytes -= entry[2]
                else:
                    kept.append(entry)
            self.report.damage = kept
        for damage, vouched in indexer.poisons:
            self._poison(seg, damage, mm, guess=vouched)
        if done.torn_at is not None:
            self._truncate_tail(seg, done.torn_at, mm)

    def _truncate_tail(self, seg: Segment, offset: int, mm: mmap.mmap) -> None:
        # The zeros at the very end are preallocated room (docs/format.md, "The zero tail"),
        # counted apart too: only the bytes before them are what a torn write left. ``mm``
        # holds the bytes at their file offsets (a reader's snapshot too).
        zeros_from = seg_mod.zero_tail_start(mm, offset, seg.size)
        self.report.zero_tail_bytes += seg.size - zeros_from
        self.report.truncated_bytes += seg.size - offset
        if zeros_from > offset:
            self.report.truncations.append((os.path.basename(seg.path), offset,
                                            zeros_from - offset))
        seg.set_map(None)
        if not self.readonly:
            fd = self.io.open_rw(seg.path)
            try:
                self.io.truncate(fd, offset)
                self.io.fsync(fd)
            finally:
                self.io.close(fd)
            from . import killpoints
            if killpoints.ENABLED:
                killpoints.hit("recovery.truncated")
        seg.size = offset
        seg.synced_size = offset
        seg.allocated = offset
        seg.map()

    def _load_hint(self, seg: Segment) -> int | None:
        """Apply the segment's hint file; return how many bytes it covered, None if unusable."""
        path = os.path.join(self.directory, seg_mod.hint_name(seg.id))
        try:
            fd = _open_no_symlink(self.io, path)
            try:
                # Mapped, not read: the bytes stay the page cache's, neither copied nor left
                # behind in the heap (a hint is 44 bytes a key: GBs at tens of millions).
                # Hints are never changed in place (temp file, rename), so no one truncates it.
                buf = self.io.map(fd, self.io.size(fd))
            finally:
                self.io.close(fd)
            if buf is None:
                raise hint.HintError("hint file is truncated")
            try:
                raw = hint.decode_view(buf, seg.header.nonce, seg.size)
                try:
                    self._apply_hint(seg, raw)
                finally:
                    raw.fixed.release()
                    raw.keys.release()
            finally:
                _close_map(buf)
        except (OSError, hint.HintError) as exc:
            self.report.ignored_hints.append((os.path.basename(path), str(exc)))
            return None
        self.max_seq = max(self.max_seq, raw.max_seq)
        self.report.segments_from_hints += 1
        return raw.covered

    def _apply_hint(self, seg: Segment, raw: hint.HintView) -> None:
        """Index every entry of a hint, all or nothing (:func:`indexing.apply_hint`: this is
        most of the time of reopening a compacted store); raise :class:`hint.HintError` if an
        entry lies out of bounds."""
        kd = self.keydir
        if kd.entries or kd.hidden:
            # Entries cannot be taken back out of a shared index: check them all first.
            if not indexing.hint_in_bounds(raw.fixed, raw.keys, raw.covered):
                raise hint.HintError("hint entry points outside the bytes it covers")
            _ok, loaded = indexing.apply_hint(kd, seg.slot, raw.fixed, raw.keys, raw.covered,
                                              self.now_ms)
        else:
            ok, loaded = indexing.apply_hint(kd, seg.slot, raw.fixed, raw.keys, raw.covered,
                                             self.now_ms)
            if not ok:
                # The index was empty: checking while applying, then emptying it again on a
                # bad entry, saves a pass over the common case (one big compacted segment).
                kd.entries.clear()
                kd.expiries.clear()
                if kd.hidden is not None:
                    kd.hidden.clear()
                seg.live_bytes = 0
                raise hint.HintError("hint entry points outside the bytes it covers")
        self.report.records_loaded += loaded


class _SegmentIndexer:
    """Recovery's :class:`replay.Reporter` for one segment: indexes the committed records
    into the loader's keydir, reports damage and dropped batches in its report, and keeps the
    damaged records that may be a key's newest version, for the loader to poison once the
    whole segment is indexed."""

    def __init__(self, loader: Loader, seg: Segment, mm: mmap.mmap) -> None:
        self.loader = loader
        self.seg = seg
        self.mm = mm
        self.poisons: list[tuple[Damage, bool]] = []  # (damage, in the durable bytes)

    def intact(self, rec: ScannedRecord) -> None:
        pass  # the replay tracks the seqs; only committed records are indexed

    def record(self, rec: ScannedRecord) -> None:
        self.loader._apply(self.seg, rec.key, rec.flags, rec.expiry_ms, rec.offset, rec.size)

    def damage(self, damage: Damage, durable: bool, durable_tail: bool) -> None:
        what = "damaged record bytes"
        if durable_tail:
            what += (" at the end of the durable bytes (damage to an acknowledged, fsynced "
                     "write: not a torn one)")
        self.loader._damage(self.seg.path, damage.offset, damage.length, what)
        self.poisons.append((damage, durable))

    def dropped_batch(self, members: list[ScannedRecord], why: str) -> None:
        self.loader.report.dropped_batch_records += len(members)

    def torn_tail(self, offset: int, length: int, dropped: int, damage_at: int | None) -> None:
        # Truncated (and counted) by the loader once the segment's damage is poisoned.
        self.loader.report.dropped_batch_records += dropped

    def plain_run(self, pos: int, end: int, max_seq: int) -> tuple[int, int]:
        """Index intact records from ``pos`` on, whole batches included; return where the
        run stops and the largest seq up to there (:data:`replay.PlainRun`,
        :func:`indexing.plain_run`, compiled where the index is). The general replay takes
        over from there. Reopening a store without hints spends its time here."""
        loader = self.loader
        stop, max_seq, loaded = indexing.plain_run(loader.keydir, self.seg.slot, self.mm, pos,
                                                   end, max_seq, loader.now_ms)
        loader.report.records_loaded += loaded
        return stop, max_seq


SNAPSHOT_CHUNK = 8 << 20


def read_snapshot(io: FileIO, fd: int, start: int, end: int) -> tuple[mmap.mmap | None, int]:
    """Copy the file's bytes ``[start, end)`` with pread into anonymous memory, at their own
    offsets (the pages below ``start`` are never touched, so cost nothing). Return the copy
    and where the bytes read end: sooner than ``end`` if the file shrank meanwhile."""
    if end <= start:
        return None, start
    mm = mmap.mmap(-1, end)
    pos = start
    while pos < end:
        chunk = io.pread(fd, min(SNAPSHOT_CHUNK, end - pos), pos)
        if not chunk:
            break
        mm[pos : pos + len(chunk)] = chunk
        pos += len(chunk)
    return mm, pos


def _close_map(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # a view is still alive somewhere; the GC unmaps it later
        pass


def _open_no_symlink(io: FileIO, path: str) -> int:
    """Open a store file for reading; a symlink there is a clear error naming it (bitkv
    follows no symlink, so it never writes through one either)."""
    try:
        return io.open_read(path)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
    raise UnsafeFileError(f"{path!r} is a symbolic link; bitkv opens no store file through a "
                          "symlink. Replace it with the file itself") from None


LOAD_ATTEMPTS = 8

log = logging.getLogger("bitkv")


def _log_gave_up(directory: str, waited: float, attempts: int, changed: str) -> None:
    log.warning("bitkv store %s: a read-only open gave up after waiting %.0f ms (%d attempts) "
                "for the writer to stop changing its segments, or for %s, which is missing",
                directory, waited * 1000, attempts, changed)


def load(directory: str, io: FileIO, *, readonly: bool, now_ms: int,
         tolerate_loss: bool = False) -> LoadedStore:
    """Rebuild the index of the store in ``directory`` (already validated and locked).

    Raises :class:`SegmentLossError` when a segment the MANIFEST lists is missing, cut short
    or replaced, or when the newest append segment is shorter than its durable-end mark
    (with ``tolerate_loss``, as repair asks, those are recorded in the report instead).
    """
    version = read_marker(directory)
    attempts = LOAD_ATTEMPTS if readonly else 1
    delay = 0.002
    waited = 0.0
    changed = ""  # the file whose change made a read-only open wait for the writer
    for attempt in range(attempts):
        # A version-1 marker means the MANIFEST, if any, is not to be trusted: a crash
        # between writing it and upgrading the marker, after which a bitkv that knows only
        # version 1 may have changed the segments. The upgrade writes a fresh one.
        listed = manifest.read(directory, io) if version > LEGACY_FORMAT_VERSION else None
        mark = durable.read(directory, io) if listed is not None else None
        loader = Loader(directory, io, readonly=readonly, now_ms=now_ms)
        try:
            segments = loader.open_segments(
                listed, require_manifest=version > LEGACY_FORMAT_VERSION,
                tolerate_loss=tolerate_loss, final=attempt == attempts - 1)
            break
        except SegmentLossError:
            if waited:  # the last attempt found the segment still missing
                _log_gave_up(directory, waited, attempts, changed)
            raise
        except (FileNotFoundError, _Retry) as exc:
            # A read-only opener raced the writer (a compaction removed a segment, a rotation
            # added one after we read the MANIFEST): load again, a little later each time.
            name = exc.args[0] if isinstance(exc, _Retry) else exc.filename
            changed = os.path.basename(str(name))
            if attempt == attempts - 1:
                if waited:
                    _log_gave_up(directory, waited, attempts, changed)
                raise SegmentLossError(
                    f"store {directory!r} kept changing while being read (segments removed "
                    f"or added by the writer: {os.path.basename(str(name))}), or that segment "
                    "is missing; try again, or run `bitkv check`", []) from None
            # Back off (2 ms doubling, ~0.5 s in all) so a compaction's removals can finish.
            time.sleep(delay)
            waited += delay
            delay *= 2
    if waited:
        log.info("bitkv store %s: a read-only open waited %.0f ms for the writer (%s changed "
                 "while it was read; loaded at attempt %d)", directory, waited * 1000, changed,
                 attempt + 1)
    durable_end = vouch_durable_ends(segments, listed, mark)
    last = segments[-1] if segments else None
    if last is not None and last.size < durable_end:
        loss: tuple[str, str, list[bytes]] = (
            os.path.basename(last.path), f"truncated to {last.size} bytes, but "
            f"{durable_end} were fsynced and acknowledged", [])
        if not tolerate_loss:
            for seg in segments:
                seg.close()
            raise SegmentLossError(_describe_losses(directory, [loss]), [loss])
        loader.report.lost_segments.append(loss)
        durable_end = last.durable_end = last.size
    loader.report.durable_end = durable_end
    hidden: dict[bytes, tuple[int, int, int, int]] = {}
    loader.reserve_for_hints(segments)
    for i, seg in enumerate(segments):
        is_last = i == len(segments) - 1
        # The only segment a writer may still truncate (its torn tail, at its next open).
        seg.pread_only = readonly and is_last
        if is_last and not readonly and seg.kind == seg_mod.KIND_APPEND:
            loader.hidden = hidden  # this segment will most likely become the active one
        loader.load_segment(seg, is_last, durable_end=seg.durable_end)
    if last is not None and last.kind == seg_mod.KIND_APPEND:
        name = os.path.basename(last.path)
        loader.report.damage_past_durable_end = any(
            d[0] == name and d[1] >= last.durable_end for d in loader.report.damage)
    next_seq = loader.max_seq + 1
    for seg in segments:
        if seg.kind == seg_mod.KIND_APPEND:
            next_seq = max(next_seq, seg.order_seq)
    next_id = max((s.id for s in segments), default=0) + 1
    for name in io.listdir(directory):
        for suffix in (seg_mod.DATA_SUFFIX, seg_mod.HINT_SUFFIX):
            sid = seg_mod.parse_id(name, suffix)
            if sid is not None:
                next_id = max(next_id, sid + 1)
    if listed is not None:
        next_id = max([next_id] + [e.segment_id + 1 for e in listed.entries])
    return LoadedStore(segments, loader.keydir, next_seq, next_id, loader.report, loader.slots,
                       hidden, manifest=listed, marker_version=version, mark=mark)


def vouch_durable_ends(segments: list[Segment], listed: manifest.Manifest | None,
                       mark: durable.Mark | None) -> int:
    """Set every segment's ``durable_end`` to what the MANIFEST and the DURABLE mark vouch
    for: a sealed listed segment, its entry's; the open append segment (last in load order),
    the mark's when the mark names it; anything else (unlisted, or a store without a
    MANIFEST) 0. Return the open segment's (it may exceed the segment's length: lost bytes)."""
    entries = listed.by_id() if listed is not None else {}
    for seg in segments:
        entry = entries.get(seg.id)
        seg.durable_end = 0 if entry is None or entry.is_open else min(entry.durable_end,
                                                                        seg.size)
    last = segments[-1] if segments else None
    if (mark is None or last is None or last.kind != seg_mod.KIND_APPEND
            or not entries.get(last.id, _NOT_LISTED).is_open
            or (last.id, last.header.nonce) != (mark.segment_id, mark.nonce)):
        return 0
    last.durable_end = mark.end
    return mark.end


def extend(directory: str, io: FileIO, loaded: LoadedStore, *, now_ms: int) -> bool:
    """Index what a writer appended since ``loaded`` was built; for read-only openers.

    Continues the newest append segment from where the last load stopped (an unfinished
    write at its end is left for the next call) and loads append segments created since.
    Returns False, changing nothing, when the store changed in a way that needs a full
    reload: a segment was removed or a compaction output appeared.
    """
    listed = manifest.read(directory, io)
    if listed is not None:
        # Exactly the segments the MANIFEST lists: a file not (yet) listed holds no write.
        if loaded.manifest is None:
            return False  # the writer upgraded the store since: load it afresh
        on_disk = set(listed.by_id())
    else:
        on_disk = set(seg_mod.list_segment_ids(io.listdir(directory)))
    known = {s.id for s in loaded.segments}
    if not known <= on_disk:
        return False
    fresh: list[Segment] = []
    for segment_id in sorted(on_disk - known):
        path = seg_mod.segment_path(directory, segment_id)
        try:
            fd = _open_no_symlink(io, path)
        except FileNotFoundError:  # removed by a compaction since we listed it: reload
            for seg in fresh:
                seg.close()
            return False
        try:
            header = seg_mod.decode_header(io.pread(fd, seg_mod.HEADER_SIZE, 0))
        except seg_mod.HeaderError:
            io.close(fd)
            break  # being created right now; pick it up next time
        if header.kind != seg_mod.KIND_APPEND:
            io.close(fd)
            for seg in fresh:
                seg.close()
            return False
        fresh.append(Segment(io, segment_id, path, fd, header, io.size(fd)))
    # Continues the index (its slots are loaded.slots); what a writer appended has no hint.
    loader = Loader(directory, io, readonly=True, now_ms=now_ms, use_hints=False,
                    index=loaded.keydir, report=loaded.report, max_seq=loaded.next_seq - 1)
    last = loaded.segments[-1] if loaded.segments else None
    if last is not None and fresh:
        # A newer segment exists, so the writer is done with this one: it is sealed and no
        # recovery truncates it any more (it truncates only the newest). Map it again.
        last.pread_only = False
    if last is not None and last.kind == seg_mod.KIND_APPEND and last.fd >= 0:
        grown = io.size(last.fd)
        if grown > last.size:
            start = last.size
            last.size = grown
            loader.load_segment(last, not fresh, start)
    for i, seg in enumerate(fresh):
        loader.add_segment(seg)
        loaded.segments.append(seg)
        seg.pread_only = i == len(fresh) - 1
        loader.load_segment(seg, i == len(fresh) - 1)
    if fresh and last is not None:
        last.map()
        last.release_fd()
    loaded.next_seq = loader.max_seq + 1
    return True
