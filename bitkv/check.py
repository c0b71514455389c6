"""Offline integrity check and salvage of a store directory (``bitkv check [--repair]``).

:func:`check` reads every file of a store and reports damage by file and offset. It is strictly
read-only: it takes no lock, creates no file, truncates nothing, and reads each file into memory
with plain ``read`` calls (never ``mmap``, so a writer truncating a torn tail under it cannot
crash it with SIGBUS). It may run beside a writer; files the writer adds or compacts away while
the check runs are reported as they were seen (a vanished file is a warning).

:func:`repair` salvages every intact record into clean, compacted segments and moves every file
the store had before (segments, hints, leftover temporary files) into ``damaged-<timestamp>/``
inside the store. Nothing is ever deleted.

Severity: an issue is an ``"error"`` when bytes are damaged or files disagree (the store is then
not healthy), and a ``"warning"`` for what a crash or a running writer normally leaves behind
and the next writable open cleans up (a torn tail on the newest segment, a torn segment
creation, leftover ``*.tmp`` files, a hint without its segment).
"""

from __future__ import annotations

import itertools
import os
import stat
import struct
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from . import codec, durable, hint, keydir, manifest, record, recovery, replay, settings
from . import segment as seg_mod
from .compacted import CompactedWriter
from .crc import crc32c
from .errors import Error, FormatVersionError
from .fileio import DEFAULT_FILEIO, FileIO
from .lock import StoreLock
from .names import DAMAGED_DIR_PREFIX, REPAIR_NOTE_NAME, SETTINGS_NAME
from .record import Damage, ScannedRecord
from .store import DEFAULT_MAX_SEGMENT_SIZE

__all__ = ["CheckReport", "Issue", "RepairReport", "check", "repair"]

ERROR = "error"
WARNING = "warning"
MAX_ISSUES_PER_FILE = 50  # beyond this, one summary issue per file

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass
class Issue:
    """One finding: ``file`` (a name inside the store), byte ``offset`` and ``length`` in it."""

    file: str
    offset: int
    length: int
    description: str
    kind: str
    severity: str = ERROR

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.severity}: {self.file} offset {self.offset} length {self.length}: "
                f"{self.description}")


@dataclass
class CheckReport:
    """What :func:`check` found. ``healthy`` is True when no issue is an error.

    ``records`` counts intact records (CRC verified). ``corrupt_bytes`` are damaged bytes
    anywhere except the torn tail of the newest segment, which is counted separately in
    ``torn_tail_bytes`` (a crash leaves it; the next writable open truncates it).
    ``incomplete_batch_records`` are intact records of batches that never committed, other
    than at that tail; recovery ignores them.
    """

    path: str
    segments: int = 0
    records: int = 0
    bytes_checked: int = 0
    corrupt_regions: int = 0
    corrupt_bytes: int = 0
    damaged_segment_headers: int = 0
    torn_tail_bytes: int = 0
    # Of the torn tail's bytes, the trailing run of zeros: preallocated room a writer holds
    # open or a crash left (docs/format.md, "The zero tail"); a tail of only zeros is no issue.
    zero_tail_bytes: int = 0
    incomplete_batch_records: int = 0
    hints_ok: int = 0
    hints_bad: int = 0
    temp_files: int = 0
    missing_segments: int = 0  # listed in the MANIFEST, absent, cut short or replaced
    issues: list[Issue] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not any(i.severity == ERROR for i in self.issues)

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == ERROR]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity != ERROR]

    @property
    def damaged_files(self) -> list[str]:
        return sorted({i.file for i in self.issues if i.severity == ERROR})

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["healthy"] = self.healthy
        out["damaged_files"] = self.damaged_files
        return out


@dataclass
class RepairReport:
    """What :func:`repair` did.

    ``keys_salvaged`` live keys were written into ``segments_written`` new compacted segments
    (``bytes_written`` bytes) of the store at ``output`` (or in place when ``output`` is None).
    ``moved_aside`` names the files moved into ``damaged_dir``. ``before`` and ``after`` are
    the checks of the store before and of the result after.
    """

    path: str
    output: str | None
    before: CheckReport
    after: CheckReport | None = None
    keys_salvaged: int = 0
    segments_written: int = 0
    bytes_written: int = 0
    damaged_dir: str | None = None
    moved_aside: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Segments the store had lost before the repair: (file, what happened, keys at stake).
    lost_segments: list[tuple[str, str, list[bytes]]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "output": self.output,
            "keys_salvaged": self.keys_salvaged,
            "segments_written": self.segments_written,
            "bytes_written": self.bytes_written,
            "damaged_dir": self.damaged_dir,
            "moved_aside": list(self.moved_aside),
            "seconds": self.seconds,
            "lost_segments": [
                {"file": name, "what": what, "keys_at_stake": [_show_key(k) for k in keys]}
                for name, what, keys in self.lost_segments],
            "before": self.before.as_dict(),
            "after": self.after.as_dict() if self.after is not None else None,
        }


# -- check ------------------------------------------------------------------------------------


def _show_key(key: bytes) -> str:
    text = repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _read_whole(path: str, limit: int | None = None) -> bytes | None:
    """Read a file (at most ``limit`` bytes) with plain reads, never mmap; None if it does
    not exist (any more)."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        left = limit
        while left is None or left > 0:
            chunk = os.read(fd, 1 << 24 if left is None else min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            if left is not None:
                left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _symlinked_store_files(directory: str, names: list[str]) -> list[str]:
    """The store's own files (LOCK, marker, segments, hints) that are symbolic links."""
    from .lock import LOCK_NAME
    from .recovery import MARKER_NAME

    found = []
    for name in sorted(names):
        if name in (LOCK_NAME, MARKER_NAME) or seg_mod.parse_id(name, seg_mod.DATA_SUFFIX) \
                is not None or seg_mod.parse_id(name, seg_mod.HINT_SUFFIX) is not None:
            try:
                if stat.S_ISLNK(os.lstat(os.path.join(directory, name)).st_mode):
                    found.append(name)
            except OSError:
                pass  # removed meanwhile
    return found


class _Checked:
    """One segment file as :func:`check` sees it."""

    def __init__(self, segment_id: int, name: str, buf: bytes | None) -> None:
        self.id = segment_id
        self.name = name
        self.buf = buf
        self.size = 0
        self.header: seg_mod.SegmentHeader | None = None
        self.header_error: str | None = None
        self.kind = seg_mod.KIND_APPEND
        self.order_seq = 0
        self.records: dict[int, record.ScannedRecord] = {}
        # Records recovery would apply, in the order it applies them (committed batches only).
        self.applied: list[record.ScannedRecord] = []
        self.durable_end = 0  # fsynced up to here (the DURABLE mark): no torn tail before it
        self.limit: int | None = None  # the sealed length, when the file is longer
        self.header_rebuilt = False


class _Checker:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.report = CheckReport(path=directory)
        self._per_file: dict[str, int] = {}
        self.max_seq = 0  # the highest seq seen so far, in load order (as recovery tracks it)
        self.listed: manifest.Manifest | None = None
        self.mark: durable.Mark | None = None

    def issue(self, file: str, offset: int, length: int, description: str, kind: str,
              severity: str = ERROR) -> None:
        count = self._per_file.get(file, 0) + 1
        self._per_file[file] = count
        if count <= MAX_ISSUES_PER_FILE:
            self.report.issues.append(Issue(file, offset, length, description, kind, severity))

    def finish_file_issues(self) -> None:
        for file, count in sorted(self._per_file.items()):
            if count > MAX_ISSUES_PER_FILE:
                self.report.issues.append(Issue(
                    file, 0, 0, f"{count - MAX_ISSUES_PER_FILE} more issues in this file "
                    "not listed", "more", ERROR))

    def run(self) -> CheckReport:
        names = os.listdir(self.directory)
        linked = _symlinked_store_files(self.directory, names)
        for name in linked:
            self.issue(name, 0, 0, "is a symbolic link: bitkv opens no store file through a "
                       "symlink, so the store cannot be opened; replace it with the file "
                       "itself", "symlink")
        names = [n for n in names if n not in linked]
        ids = self._listed_ids(seg_mod.list_segment_ids(names))
        hint_ids = sorted(i for i in (seg_mod.parse_id(n, seg_mod.HINT_SUFFIX) for n in names)
                          if i is not None)
        segments = self._read_segments(ids)
        segments.sort(key=lambda s: (s.order_seq, s.id))
        last = segments[-1] if segments else None
        last_entry = (self.listed.by_id().get(last.id)
                      if self.listed is not None and last is not None else None)
        # The mark vouches for the open append segment only, exactly as at open
        # (recovery.vouch_durable_ends).
        if (self.mark is not None and last is not None and last.header is not None
                and last_entry is not None and last_entry.is_open
                and last.kind == seg_mod.KIND_APPEND and last.id == self.mark.segment_id
                and last.header.nonce == self.mark.nonce):
            last.durable_end = self.mark.end
            size = _size_or_zero(os.path.join(self.directory, last.name))
            if size < self.mark.end:
                self._lost(last_entry, f"is cut short to {size} bytes, below the "
                           f"{self.mark.end} bytes fsynced and acknowledged", size)
                segments.pop()
        live: set[bytes] = set()  # keys a scan of the segments so far would index
        now_ms = int(time.time() * 1000)
        checked = set()
        for i, seg in enumerate(segments):
            # One segment in memory at a time: read, scan, check its hint, then let it go.
            buf = _read_whole(os.path.join(self.directory, seg.name))
            if buf is None:
                self._vanished(seg.name)
                continue
            checked.add(seg.id)
            if seg.limit is not None:
                buf = buf[: seg.limit]
            seg.buf = buf
            seg.size = len(buf)
            self.report.segments += 1
            self.report.bytes_checked += len(buf)
            self._scan(seg, is_last=i == len(segments) - 1)
            if seg.id in hint_ids:
                self._check_hint(seg.id, seg, live, now_ms)
            for rec in seg.applied:
                if rec.flags & record.TOMBSTONE or (rec.expiry_ms and rec.expiry_ms <= now_ms):
                    live.discard(rec.key)
                else:
                    live.add(rec.key)
            seg.buf = None
            seg.records = {}
            seg.applied = []
        for hint_id in hint_ids:
            if hint_id not in checked:
                self._check_hint(hint_id, None, live, now_ms)
        for name in sorted(names):
            if recovery.is_temp_name(name):
                self.report.temp_files += 1
                self.issue(name, 0, _size_or_zero(os.path.join(self.directory, name)),
                           "temporary file of an interrupted (or running) compaction or file "
                           "creation; the next writable open removes it", "temp-file", WARNING)
            elif codec.is_dict_name(name):
                self._check_dict(name)
            elif name == codec.KEYCHECK_NAME:
                self._check_keycheck(name)
            elif name == SETTINGS_NAME:
                self._check_settings(name)
        self.finish_file_issues()
        return self.report

    # -- segments ------------------------------------------------------------------------------

    def _vanished(self, name: str) -> None:
        self.issue(name, 0, 0, "segment vanished while checking (a compaction running beside "
                   "the check removed it)", "vanished", WARNING)

    def _listed_ids(self, ids: list[int]) -> list[int]:
        """The segments to check: those the MANIFEST lists (reporting the ones missing and
        every file it does not list), or every segment file in a store without one."""
        io = DEFAULT_FILEIO
        if recovery.read_marker(self.directory) <= recovery.LEGACY_FORMAT_VERSION:
            # A version-1 store: a MANIFEST there is a leftover not to be trusted (recovery.load
            # ignores it too; the next writable open writes a fresh one).
            return ids
        try:
            self.listed = manifest.read(self.directory, io)
        except (manifest.ManifestError, OSError) as exc:
            self.issue(manifest.MANIFEST_NAME, 0, _size_or_zero(os.path.join(
                self.directory, manifest.MANIFEST_NAME)), f"{exc}: which segments make up "
                "the store is unknown; every segment file was checked. `bitkv check "
                "--repair` rebuilds it", "manifest")
            return ids
        if self.listed is None:
            if any(_size_or_zero(seg_mod.segment_path(self.directory, i))
                   > seg_mod.HEADER_SIZE for i in ids):
                self.issue(manifest.MANIFEST_NAME, 0, 0, f"{manifest.MANIFEST_NAME} is missing "
                           "but segments hold data: opening refuses; `bitkv check --repair` "
                           "rebuilds it from every segment present", "manifest")
            return ids
        try:
            self.mark = durable.read(self.directory, io)
        except OSError:
            self.mark = None
        entries = self.listed.by_id()
        present = set(ids)
        for segment_id, entry in sorted(entries.items()):
            if segment_id not in present:
                self._lost(entry, "is missing", 0)
        for segment_id in ids:
            if segment_id in entries:
                continue
            name = seg_mod.data_name(segment_id)
            verdict, why = recovery.classify_orphan(self.directory, io, self.listed,
                                                    segment_id)
            if verdict == recovery.ORPHAN_STALE:
                self.issue(name, 0, _size_or_zero(os.path.join(self.directory, name)),
                           f"not in the {manifest.MANIFEST_NAME}, but {why}: opening refuses; "
                           "`bitkv check --repair` salvages it with the rest", "unlisted")
            elif verdict == recovery.ORPHAN_REMOVE:
                self.issue(name, 0, _size_or_zero(os.path.join(self.directory, name)),
                           f"not in the {manifest.MANIFEST_NAME}: {why}; the next writable "
                           "open removes it", "orphan", WARNING)
            elif verdict == recovery.ORPHAN_IGNORE:
                self.issue(name, 0, _size_or_zero(os.path.join(self.directory, name)),
                           f"not in the {manifest.MANIFEST_NAME}: {why}", "unlisted", WARNING)
        return [i for i in ids if i in entries]

    def _lost(self, entry: manifest.ManifestEntry, what: str, kept: int) -> None:
        name = seg_mod.data_name(entry.segment_id)
        keys = recovery.keys_at_stake(self.directory, DEFAULT_FILEIO, entry, kept)
        stake = recovery.describe_keys_at_stake(keys, shown=10)
        self.report.missing_segments += 1
        self.issue(name, kept, 0, f"segment listed in the {manifest.MANIFEST_NAME} {what}; "
                   f"{stake}. Opening refuses; `bitkv check --repair` salvages the rest and "
                   "records what was lost", "missing-segment")

    def _read_segments(self, ids: list[int]) -> list[_Checked]:
        """Read every segment's header (the load order needs them all before any scan)."""
        out: list[_Checked] = []
        newest_id = ids[-1] if ids else -1
        for segment_id in ids:
            name = seg_mod.data_name(segment_id)
            head = _read_whole(os.path.join(self.directory, name), seg_mod.HEADER_SIZE)
            if head is None:
                self._vanished(name)
                continue
            seg = _Checked(segment_id, name, None)
            try:
                seg.header = seg_mod.decode_header(head)
            except seg_mod.NewerFormatError as exc:
                raise FormatVersionError(f"{name}: {exc}; upgrade bitkv to check it") from None
            except seg_mod.HeaderError as exc:
                seg.header_error = str(exc)
            entry = self.listed.by_id().get(segment_id) if self.listed is not None else None
            if entry is not None:
                size = _size_or_zero(os.path.join(self.directory, name))
                if seg.header is not None and seg.header.nonce != entry.nonce:
                    self._lost(entry, "was replaced by another file (another nonce)", 0)
                    continue
                if size < seg_mod.HEADER_SIZE or (not entry.is_open
                                                  and size < entry.sealed_size):
                    self._lost(entry, f"is cut short to {size} bytes", size)
                    continue
                if not entry.is_open and size > entry.sealed_size:
                    self.report.corrupt_regions += 1
                    self.report.corrupt_bytes += size - entry.sealed_size
                    self.issue(name, entry.sealed_size, size - entry.sealed_size,
                               "bytes past the length the segment was sealed at (never "
                               "written by the store; ignored)", "past-seal")
                    seg.limit = entry.sealed_size
                if seg.header is None:
                    # The MANIFEST knows what the header said: the records are still used.
                    self.report.damaged_segment_headers += 1
                    self.report.corrupt_regions += 1
                    self.report.corrupt_bytes += seg_mod.HEADER_SIZE
                    self.issue(name, 0, seg_mod.HEADER_SIZE, f"segment header is damaged "
                               f"({seg.header_error}); rebuilt from the MANIFEST, its records "
                               "are still used", "segment-header")
                    seg.header = replay.rebuilt_header(entry)
                    seg.header_rebuilt = True
            if seg.header is not None:
                seg.kind = seg.header.kind
                seg.order_seq = seg.header.order_seq
                out.append(seg)
                continue
            # Same rules as recovery: keep the intact records of a segment with a bad header.
            buf = _read_whole(os.path.join(self.directory, name))
            if buf is None:
                self._vanished(name)
                continue
            salvaged = replay.salvage_header(buf, len(buf), newest=segment_id == newest_id)
            hdr_len = min(len(buf), seg_mod.HEADER_SIZE)
            if salvaged.header is None:
                self.report.segments += 1
                self.report.bytes_checked += len(buf)
                if salvaged.torn_creation:
                    self.report.torn_tail_bytes += len(buf)
                    self.issue(name, 0, len(buf), f"newest segment was created but its header "
                               f"never fully written ({seg.header_error}); the next writable "
                               "open removes it", "torn-segment", WARNING)
                else:
                    self.report.damaged_segment_headers += 1
                    self.report.corrupt_regions += 1
                    self.report.corrupt_bytes += len(buf)
                    self.issue(name, 0, len(buf), f"segment header is damaged "
                               f"({seg.header_error}) and no intact record follows it",
                               "segment-header")
                continue
            # Counted as corrupt bytes by the scan, whose first damaged region covers it.
            self.report.damaged_segment_headers += 1
            self.issue(name, 0, hdr_len, f"segment header is damaged ({seg.header_error}); "
                       "its intact records are still used", "segment-header")
            # The guess decides the load order; the scan treats it as a headerless segment.
            seg.kind = salvaged.header.kind
            seg.order_seq = salvaged.header.order_seq
            out.append(seg)  # read again when its turn in the load order comes
        return out

    def _scan(self, seg: _Checked, is_last: bool) -> None:
        """Verify every record of ``seg``, classifying damage by recovery's own replay."""
        buf = seg.buf
        if buf is None:
            return
        start = 0 if seg.header is None else seg_mod.HEADER_SIZE
        # Seqs narrow the resync search only under a valid header, as in recovery (one
        # rebuilt from the MANIFEST is not the segment's own).
        ordered = (seg.kind == seg_mod.KIND_APPEND and seg.header is not None
                   and not seg.header_rebuilt)
        done = replay.replay(buf, start, len(buf), _ScanIssues(self, seg),
                             durable_end=seg.durable_end,
                             tail_rule=is_last and seg.kind == seg_mod.KIND_APPEND,
                             order_seq=seg.order_seq if ordered else None,
                             max_seq=self.max_seq)
        self.max_seq = done.max_seq

    def _suspicious_tail(self, seg: _Checked, damage_at: int) -> None:
        """A torn tail should hold no intact record after its damage. Several, in ascending
        seq order, look like acknowledged writes that recovery's resynchronisation refused
        (their seqs jumped) and that the next writable open would truncate away."""
        if seg.buf is None:
            return
        found = [r for r in record.scan(seg.buf, damage_at + 1, len(seg.buf))
                 if isinstance(r, record.ScannedRecord)]
        if len(found) < 2 or not all(a.seq < b.seq for a, b in itertools.pairwise(found)):
            return
        self.issue(seg.name, found[0].offset, len(seg.buf) - found[0].offset,
                   f"{len(found)} intact records (seq {found[0].seq} to {found[-1].seq}) "
                   "follow the damage in the torn tail, but recovery does not accept them "
                   "and the next writable open would truncate them: copy this segment "
                   "before opening the store for writing", "tail-records")

    # -- hints ---------------------------------------------------------------------------------

    def _check_hint(self, hint_id: int, seg: _Checked | None, live_before: set[bytes],
                    now_ms: int) -> None:
        """Verify a hint against its segment; ``live_before`` are the keys a scan of the
        segments loaded before this one indexes."""
        name = seg_mod.hint_name(hint_id)
        buf = _read_whole(os.path.join(self.directory, name))
        if buf is None:
            self.issue(name, 0, 0, "hint file vanished while checking", "vanished", WARNING)
            return
        self.report.bytes_checked += len(buf)
        if seg is None:
            self.issue(name, 0, len(buf), f"hint file without its segment "
                       f"{seg_mod.data_name(hint_id)}; it is ignored", "orphan-hint", WARNING)
            return
        if seg.header is None:
            self.report.hints_bad += 1
            self.issue(name, 0, len(buf), "hint file cannot be verified or used: its segment's "
                       "header is damaged", "hint")
            return
        try:
            covered, entries = _decode_hint(buf, seg.header.nonce, seg.size)
        except hint.HintError as exc:
            self.report.hints_bad += 1
            self.issue(name, 0, len(buf), f"hint file is unusable: {exc} (recovery scans the "
                       "segment instead)", "hint")
            return
        # Recovery reads the hint instead of scanning the segment's first ``covered`` bytes,
        # so it must index what such a scan would: every key whose newest applied record there
        # is live needs an entry for that record, and so does a key whose newest record is a
        # tombstone or expired if an earlier segment holds it live (else it would come back).
        # Entry seqs and flags other than the tombstone bit are not used; a checkpoint hint of
        # an append segment writes them as 0.
        newest: dict[bytes, record.ScannedRecord] = {}
        for rec in seg.applied:
            if rec.offset + rec.size <= covered:
                newest[rec.key] = rec
        bad = 0
        seen: set[bytes] = set()
        for index, (key, entry) in enumerate(entries):
            flags, _r, _key_len, value_len, offset, _seq, expiry_ms = entry
            at = hint.HEADER_SIZE + index * hint.ENTRY_SIZE
            there = seg.records.get(offset)
            want = newest.get(key)
            if key in seen:
                problem = "the key has another entry before this one"
            elif there is None:
                problem = "no intact record starts there"
            elif there.key != key:
                problem = f"the record there holds key {_show_key(there.key)}"
            elif there.value_len != value_len:
                problem = f"the record there has a {there.value_len}-byte value, not {value_len}"
            elif (there.flags ^ flags) & record.TOMBSTONE:
                problem = "the entry and the record disagree on whether it is a tombstone"
            elif there.expiry_ms != expiry_ms:
                problem = f"the record there expires at {there.expiry_ms} ms, not {expiry_ms}"
            elif want is not None and want.offset != offset:
                problem = f"the key's newest record there is at offset {want.offset}"
            elif want is None:
                problem = "recovery would not index the record there (an uncommitted batch?)"
            else:
                seen.add(key)
                continue
            seen.add(key)
            bad += 1
            self.issue(name, at, hint.ENTRY_SIZE, f"entry for key {_show_key(key)} points at "
                       f"offset {offset} of {seg.name}, but {problem}", "hint-mismatch")
        for key, rec in sorted(newest.items(), key=lambda kv: kv[1].offset):
            hides = rec.flags & record.TOMBSTONE or (rec.expiry_ms and rec.expiry_ms <= now_ms)
            if key not in seen and (not hides or key in live_before):
                bad += 1
                self.issue(name, 0, len(buf), f"hint has no entry for key {_show_key(key)}, "
                           f"whose newest record is at offset {rec.offset} of {seg.name}",
                           "hint-mismatch")
        if bad:
            self.report.hints_bad += 1
        else:
            self.report.hints_ok += 1

    # -- compression dictionaries --------------------------------------------------------------

    def _check_dict(self, name: str) -> None:
        buf = _read_whole(os.path.join(self.directory, name))
        if buf is None:
            return
        self.report.bytes_checked += len(buf)
        problem = None
        if len(buf) < _DICT_HEADER.size:
            problem = "is truncated"
        else:
            magic, _dict_id, crc = _DICT_HEADER.unpack_from(buf)
            if magic == codec.DICT_MAGIC_SEALED:
                # Sealed with the store key, which check does not have: its CRC covers the
                # plaintext, so only the shape can be checked here.
                if len(buf) < _DICT_HEADER.size + codec.NONCE_SIZE + codec.TAG_SIZE:
                    problem = "is truncated"
            elif magic != codec.DICT_MAGIC:
                problem = "has the wrong magic"
            elif crc32c(buf[_DICT_HEADER.size :]) != crc:
                problem = "fails its CRC"
        if problem:
            self.issue(name, 0, len(buf), f"compression dictionary {problem}; values "
                       "compressed with it cannot be read", "dictionary")


    # -- the encryption key check --------------------------------------------------------------

    def _check_keycheck(self, name: str) -> None:
        # Without the key only the shape can be checked; but a file that is not a key check
        # makes every open fail, so it is damage, not a detail.
        buf = _read_whole(os.path.join(self.directory, name))
        if buf is None:
            return
        self.report.bytes_checked += len(buf)
        problem = codec.keycheck_problem(buf)
        if problem is not None:
            self.issue(name, 0, len(buf), f"not a valid encryption key-check file: {problem}; "
                       "the store cannot be opened until it is restored (or removed, if the "
                       "store was never encrypted)", "keycheck")
        elif buf.startswith(codec.KEYCHECK_MAGIC):
            self.issue(name, 0, len(buf), "version-1 encryption: only each value's key is "
                       "authenticated, not its flags, seq or expiry (docs/format.md, "
                       "\"What encryption protects\")", "keycheck-v1", WARNING)


    def _check_settings(self, name: str) -> None:
        # A writer that names no compression cannot open past a SETTINGS it cannot read.
        buf = _read_whole(os.path.join(self.directory, name))
        if buf is None:
            return
        self.report.bytes_checked += len(buf)
        try:
            settings.decode(buf, name)
        except (Error, FormatVersionError) as exc:
            self.issue(name, 0, len(buf), f"{exc}; writable opens fail until it is removed or "
                       "rewritten (open once with an explicit compression=)", "settings")


_DICT_HEADER = struct.Struct("<8sII")  # as bitkv.codec writes it: magic, dict id, crc32c


class _ScanIssues:
    """The checker's :class:`replay.Reporter` for one segment: counts what recovery would
    index and files an issue for each damaged region, dropped batch and torn tail."""

    def __init__(self, checker: _Checker, seg: _Checked) -> None:
        self.checker = checker
        self.report = checker.report
        self.seg = seg

    def intact(self, rec: ScannedRecord) -> None:
        self.report.records += 1
        self.seg.records[rec.offset] = rec

    def record(self, rec: ScannedRecord) -> None:
        self.seg.applied.append(rec)

    def damage(self, damage: Damage, durable: bool, durable_tail: bool) -> None:
        self.report.corrupt_regions += 1
        self.report.corrupt_bytes += damage.length
        if self.seg.header is None and damage.offset == 0:
            return  # the damaged segment header, already reported
        if durable_tail:
            where = ("the end of the bytes fsynced and acknowledged: bit rot in a durable "
                     "write, not a torn one")
        elif damage.tail:
            where = "the rest of the segment"
        else:
            where = "an intact record follows"
        self.checker.issue(self.seg.name, damage.offset, damage.length,
                           f"{damage.length} damaged byte(s) hold no intact record ({where})",
                           "damaged-records")

    def dropped_batch(self, members: list[ScannedRecord], why: str) -> None:
        first = members[0]
        last = members[-1]
        self.report.incomplete_batch_records += len(members)
        self.checker.issue(self.seg.name, first.offset, last.offset + last.size - first.offset,
                           f"batch of {len(members)} intact record(s) never committed ({why}); "
                           "recovery ignores them", "incomplete-batch")

    def torn_tail(self, offset: int, length: int, dropped: int, damage_at: int | None) -> None:
        self.report.torn_tail_bytes += length
        end = offset + length
        if self.seg.buf is not None:
            zeros_from = seg_mod.zero_tail_start(self.seg.buf, offset, end)
            self.report.zero_tail_bytes += end - zeros_from
            if zeros_from == offset:
                return  # nothing but the zero tail: the end of the data, no issue
        self.checker.issue(self.seg.name, offset, length,
                           f"torn write: the last {length} byte(s) of the newest segment hold "
                           "no committed record (a crash, or a write in progress); the next "
                           "writable open truncates them", "torn-tail", WARNING)
        if damage_at is not None:
            self.checker._suspicious_tail(self.seg, damage_at)


def _decode_hint(buf: bytes, nonce: int, size: int
                 ) -> tuple[int, list[tuple[bytes, hint.HintEntry]]]:
    """Return (bytes of the segment the hint covers, entries); raise HintError."""
    _max_seq, covered, items = hint.decode_with_coverage(buf, nonce, size)
    return covered, list(items)


def _size_or_zero(path: str) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def check(path: str | os.PathLike[str]) -> CheckReport:
    """Verify every byte of the store in directory ``path`` and report damage; change nothing.

    Every segment header, every record's CRC, every hint file (its CRC, that it belongs to its
    segment's incarnation and length, and that each entry matches the record it points at and
    every record has an entry) and every compression dictionary is checked. Raises
    :class:`bitkv.StoreNotFoundError` / :class:`bitkv.NotAStoreError` if ``path`` is not a
    store, :class:`bitkv.FormatVersionError` for a newer format. Works beside a writer.
    """
    directory = os.fspath(path)
    recovery.check_directory(directory, readonly=True, create=False)
    return _Checker(directory).run()


# -- repair -----------------------------------------------------------------------------------


def repair(path: str | os.PathLike[str], *, output: str | os.PathLike[str] | None = None,
           max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE,
           fileio: FileIO | None = None) -> RepairReport:
    """Salvage every intact record of the store at ``path`` into clean compacted segments.

    The salvaged state is exactly what recovery would index if it scanned every segment (hints
    are not trusted): segments in load order (header ``order_seq``, then id), the last intact
    record of each key wins, tombstones and expired records drop the key, records of
    uncommitted batches are ignored. Stored bytes are copied verbatim (compressed and encrypted
    values stay as they are; no key is needed), with their sequence numbers and expiry times.

    With ``output=None`` the store is repaired in place: the new segments are added, then every
    file the store had before (segments, hints, ``*.tmp`` leftovers) is moved into a new
    ``damaged-<UTC timestamp>/`` subdirectory, oldest segment first. The marker, lock,
    encryption key check and compression dictionaries stay. Nothing is deleted.

    With ``output`` set, a new store is written at that path (which must not exist or be an
    empty directory) and the original is left as it is.

    Needs the write lock: raises :class:`bitkv.LockError` if another process holds it.

    Crash safety (in place): the new segments are written as ``*.tmp`` files, fsynced, renamed
    to their final names one by one, and the directory fsynced; only then are old files moved,
    one segment at a time in load order, with both directories fsynced after each move. Each
    new segment holds only the recovered state, so at every instant the store opens to the
    same keys and values: new segments repeat what the old ones say, and removing the oldest
    segments first means a newer record (a tombstone especially) is never gone while an older
    one of the same key remains. Killed before the renames, the store is unchanged apart from
    ``*.tmp`` files (removed by the next writable open); killed later, some old files are
    still in the store beside the new ones, which is harmless; run ``repair`` again to finish.
    """
    started = time.monotonic()
    io = fileio or DEFAULT_FILEIO
    directory = os.fspath(path)
    recovery.check_directory(directory, readonly=False, create=False)
    target = None if output is None else os.fspath(output)
    if target is not None:
        _check_output(directory, target)
    lock = StoreLock(directory, io)
    try:
        before = check(directory)
        report = RepairReport(path=directory, output=target, before=before)
        if target is None:
            _repair_in_place(directory, io, report, max_segment_size)
        else:
            _repair_into(directory, target, io, report, max_segment_size)
    finally:
        lock.release()
    report.after = check(directory if target is None else target)
    report.seconds = time.monotonic() - started
    return report


def _check_output(source: str, target: str) -> None:
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise Error(f"repair output {target!r} already exists and is not an empty "
                    "directory; give a new path")
    if os.path.realpath(target) == os.path.realpath(source):
        raise Error("repair output must differ from the store itself; omit it to repair "
                    "in place")


class _Salvage:
    """The recovered state of a store, scanning every segment (hints are not trusted)."""

    def __init__(self, directory: str, io: FileIO) -> None:
        # Every segment is scanned whole: a hint could point at a record that is damaged.
        loader = recovery.Loader(directory, io, readonly=True, now_ms=int(time.time() * 1000),
                                 use_hints=False)
        try:
            # As recovery.load: a MANIFEST beside a version-1 marker is a leftover, not trusted.
            listed = (manifest.read(directory, io)
                      if recovery.read_marker(directory) > recovery.LEGACY_FORMAT_VERSION else None)
        except manifest.ManifestError:
            listed = None  # unknown which segments: salvage every one (load order decides)
        # With a MANIFEST: what it lists (missing ones recorded as lost) plus unlisted files
        # holding newer writes; the leftovers of unfinished changes are not store state.
        self.segments = loader.open_segments(listed, tolerate_loss=True)
        self.lost = loader.report.lost_segments
        try:
            mark = durable.read(directory, io) if listed is not None else None
            # Damage is classified by what the MANIFEST and the mark vouch for, as at open.
            recovery.vouch_durable_ends(self.segments, listed, mark)
            if self.segments:
                last = self.segments[-1]
                last.durable_end = min(last.durable_end, last.size)
            for i, seg in enumerate(self.segments):
                is_last = i == len(self.segments) - 1
                loader.load_segment(seg, is_last, durable_end=seg.durable_end)
        except BaseException:
            self.close()
            raise
        self.loader = loader

    def live(self) -> Iterable[tuple[bytes, int, bytes, int, int]]:
        """Yield (key, flags, stored value, seq, expiry_ms) of every live key, in file order."""
        loader = self.loader
        order = {id(seg): i for i, seg in enumerate(self.segments)}
        located = []
        for key, entry in loader.keydir.entries.items():
            slot, offset, size_hint = keydir.unpack(entry)
            seg = loader.slots[slot]
            assert seg is not None
            located.append((order[id(seg)], offset, size_hint, key, seg))
        located.sort(key=lambda t: (t[0], t[1]))
        for _pos, offset, size_hint, key, seg in located:
            try:
                header, stored = seg.read_record(offset, size_hint, key)
            except ValueError:  # cannot happen for a record the scan verified; never copy it
                continue
            yield (key, header.flags & ~record.BATCH_FLAGS, bytes(stored), header.seq,
                   header.expiry_ms)

    def close(self) -> None:
        for seg in self.segments:
            seg.close()


def _write_segments(directory: str, io: FileIO, first_id: int, max_segment_size: int,
                    items: Iterable[tuple[bytes, int, bytes, int, int]],
                    report: RepairReport, listing: list[manifest.ManifestEntry]
                    ) -> list[tuple[str, str]]:
    """Write compacted segments and hints as ``*.tmp`` files, fsynced (the writer compaction
    uses too); return (tmp, final) name pairs, data file before its hint, for the caller to
    rename. ``listing`` receives the MANIFEST entry of each segment written."""
    ids = itertools.count(first_id)
    writer = CompactedWriter(directory, io, lambda: next(ids), max_segment_size)
    for key, flags, stored, seq, expiry_ms in items:
        writer.add(key, record.encode(key, stored, seq, expiry_ms, flags), flags, len(stored),
                   seq, expiry_ms)
        report.keys_salvaged += 1
    for out in writer.finish():
        listing.append(out.manifest_entry())
        report.segments_written += 1
        report.bytes_written += out.size
    return writer.renames()


def _highest_file_id(names: Iterable[str]) -> int:
    highest = 0
    for name in names:
        stem = name[: -len(seg_mod.TMP_SUFFIX)] if name.endswith(seg_mod.TMP_SUFFIX) else name
        for suffix in (seg_mod.DATA_SUFFIX, seg_mod.HINT_SUFFIX):
            sid = seg_mod.parse_id(stem, suffix)
            if sid is not None:
                highest = max(highest, sid)
    return highest


def _make_damaged_dir(directory: str, io: FileIO) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"{DAMAGED_DIR_PREFIX}{stamp}"
    n = 1
    while os.path.lexists(os.path.join(directory, name)):
        n += 1
        name = f"{DAMAGED_DIR_PREFIX}{stamp}-{n}"
    io.mkdir(os.path.join(directory, name))
    io.fsync_dir(directory)
    return name


def _repair_in_place(directory: str, io: FileIO, report: RepairReport,
                     max_segment_size: int) -> None:
    names = sorted(io.listdir(directory))
    salvage = _Salvage(directory, io)
    try:
        aside_name = _make_damaged_dir(directory, io)
        aside = os.path.join(directory, aside_name)
        report.damaged_dir = aside

        def move(name: str) -> None:
            io.rename(os.path.join(directory, name), os.path.join(aside, name))
            report.moved_aside.append(name)

        # Leftover temporary files hold no store state; set them aside first so the new
        # segments' temporary names cannot collide with them.
        temps = [n for n in names if recovery.is_temp_name(n)]
        for name in temps:
            move(name)
        if temps:
            io.fsync_dir(aside)
            io.fsync_dir(directory)
        first_id = _highest_file_id(names) + 1
        listing: list[manifest.ManifestEntry] = []
        renames = _write_segments(directory, io, first_id, max_segment_size, salvage.live(),
                                  report, listing)
        report.lost_segments = list(salvage.lost)
    except BaseException:
        salvage.close()
        raise
    salvage.close()
    new_names = {os.path.basename(final) for _tmp, final in renames}
    for tmp, final in renames:
        io.rename(tmp, final)
    io.fsync_dir(directory)
    # The commit point: the store is now the new segments (the next writable open adds an
    # append segment). The old files are orphans from here; they are moved aside below.
    generation = 1
    try:
        old = manifest.read(directory, io)
        generation = old.generation + 1 if old is not None else 1
    except manifest.ManifestError:
        pass
    manifest.write(directory, io, manifest.Manifest(generation, tuple(listing)))
    if recovery.read_marker(directory) < recovery.MARKER_FORMAT_VERSION:
        recovery.upgrade_marker(directory, io)
    # From here on the store holds both generations; remove the old one oldest first.
    old_data = [n for n in names if seg_mod.parse_id(n, seg_mod.DATA_SUFFIX) is not None]
    old_hints = {n for n in names if seg_mod.parse_id(n, seg_mod.HINT_SUFFIX) is not None}
    loaded_order = [os.path.basename(s.path) for s in salvage.segments]
    unloaded = [n for n in old_data if n not in loaded_order]  # headerless and empty: no state
    for data_name in unloaded + loaded_order:
        sid = seg_mod.parse_id(data_name, seg_mod.DATA_SUFFIX)
        hint_name = seg_mod.hint_name(sid) if sid is not None else ""
        if hint_name in old_hints:
            move(hint_name)
            old_hints.discard(hint_name)
        move(data_name)
        io.fsync_dir(aside)
        io.fsync_dir(directory)
    for hint_name in sorted(old_hints):  # hints without a segment
        move(hint_name)
    if old_hints:
        io.fsync_dir(aside)
        io.fsync_dir(directory)
    if new_names & set(report.moved_aside):
        raise Error("internal error: repair moved aside a segment it had just written")
    _write_note(aside, report, io)


def _repair_into(directory: str, target: str, io: FileIO, report: RepairReport,
                 max_segment_size: int) -> None:
    salvage = _Salvage(directory, io)
    try:
        if not os.path.exists(target):
            recovery.make_directory(target, io)
        listing: list[manifest.ManifestEntry] = []
        renames = _write_segments(target, io, 1, max_segment_size, salvage.live(), report,
                                  listing)
        report.lost_segments = list(salvage.lost)
    finally:
        salvage.close()
    for tmp, final in renames:
        io.rename(tmp, final)
    io.fsync_dir(target)
    manifest.write(target, io, manifest.Manifest(1, tuple(listing)))
    # Files that belong to the store as a whole: the encryption key check, the compression
    # dictionaries (compressed values name their dictionary) and the write settings.
    for name in sorted(io.listdir(directory)):
        if name == codec.KEYCHECK_NAME or codec.is_dict_name(name) or name == SETTINGS_NAME:
            with open(os.path.join(directory, name), "rb") as fh:
                data = fh.read()
            if name == SETTINGS_NAME:
                try:
                    settings.decode(data, name)
                except Error:
                    continue  # damaged: stays with the old files; the defaults apply
            tmp = os.path.join(target, name + seg_mod.TMP_SUFFIX)
            io.write_new_file(tmp, data)
            io.rename(tmp, os.path.join(target, name))
    io.fsync_dir(target)
    recovery.create_store(target, io)  # the marker last: until then it is no store at all


def _write_note(aside: str, report: RepairReport, io: FileIO) -> None:
    lines = [
        f"bitkv repair, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        "",
        f"These are the files of the store {os.path.dirname(aside)!r} before it was repaired.",
        f"{report.keys_salvaged} live keys were salvaged into {report.segments_written} new "
        "segment(s) of the store. Nothing here is used any more; keep these files until you are",
        "sure nothing is missing, then delete this directory.",
        "",
        "Damaged files: " + (", ".join(report.before.damaged_files) or "none"),
        "",
        "Segments lost before the repair (their records could not be salvaged):",
    ]
    for name, what, keys in report.lost_segments:
        lines.append(f"  {name}: {what}")
        if keys:
            lines.append(f"    keys at stake ({len(keys)}): their value after the repair is an "
                         "older one, or they are gone, or (if the lost record deleted them) back:")
            lines += [f"      {_show_key(k)}" for k in keys]
        else:
            lines.append("    the keys it held are unknown (it had no hint file)")
    if not report.lost_segments:
        lines.append("  none")
    lines += [
        "",
        "Issues found before the repair:",
    ]
    lines += [f"  {issue}" for issue in report.before.issues] or ["  none"]
    # Through the FileIO seam like every file of the store (the crash harness sees it).
    io.write_new_file(os.path.join(aside, REPAIR_NOTE_NAME), ("\n".join(lines) + "\n").encode())
    io.fsync_dir(aside)
