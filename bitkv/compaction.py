"""Compaction (Bitcask's merge): rewrite immutable segments keeping only live records.

The inputs are *every* immutable segment (all but the active one). That choice is what makes
dropping tombstones and expired records safe: every older version of a key lives in an input,
so it is dropped in the same pass, and nothing older survives to be resurrected.

Sequence (each step a kill point for the crash harness)::

    read inputs a chunk at a time, copy each record the keydir
      still points at, through a bounded buffer                -> NNNNNN.data.tmp
    as each output is complete: its header, its hint, fsyncs   -> NNNNNN.hint.tmp
    rename *.tmp to final names; fsync the directory           (orphans until committed)
    fsync the active segment (superseding writes durable first)
    write the MANIFEST: outputs in, inputs out                 <- the commit point
    switch the keydir, a bounded chunk per lock hold, read back from the outputs, a key only
      if it still points at the exact record copied (a write made meanwhile always wins)
    remove inputs and their hints; fsync the directory

Before the commit point any failure removes the outputs and leaves the store as it was; a
crash leaves orphans the next open removes. After it the MANIFEST lists the outputs, so the
inputs are orphans, removed in any order. A failure after the commit point (or while writing
the MANIFEST, when which version is on disk is unknown) makes the store refuse writes until
it is reopened: a compaction either finishes or leaves a store that reloads from disk.

Memory does not grow with the store (:func:`memory_bound`): nothing is kept per copied record
beyond the open output's hint, and the switch re-reads the outputs instead of remembering
what went where.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import operator
import os
import struct
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol, cast

from . import hint, keydir, killpoints
from . import record as rec
from . import segment as seg_mod
from .compacted import CompactedWriter
from .crc import crc32c
from .fileio import FileIO
from .keydir import KeyDir
from .segment import Segment


class CompactionHost(Protocol):
    """What compaction needs of a store, and all it may touch (the store implements it with
    a small adapter; bbolt's Compact likewise uses only a narrow surface)."""

    path: str
    io: FileIO
    keydir: KeyDir
    max_segment_size: int

    def locked(self) -> AbstractContextManager[Any]:
        """The store's writer lock: held for each bounded step that reads or changes the
        index or the segment list."""

    def sealed_segments(self) -> list[Segment]:
        """Every immutable segment (all but the active one), checking the store is writable.
        Called with the lock held."""

    def now_ms(self) -> int: ...

    def stop_requested(self) -> bool:
        """The store is closing: abandon the compaction (before its commit point)."""

    def allocate_id(self) -> int: ...

    def sync_active(self) -> None:
        """Fsync the active segment (writes that superseded uncopied records first)."""

    def install(self, inputs: list[Segment], outputs: list[Segment]) -> None:
        """The commit point: the outputs replace the inputs in the MANIFEST."""

    def retire(self, inputs: list[Segment]) -> None:
        """Forget the inputs' slots (the keydir no longer points into them). Lock held."""

    def switched(self, live_bytes: int) -> None:
        """The switch moved ``live_bytes`` of records from the inputs to an output (which
        counts them now; the inputs still do too, until retired). Lock held."""

    def fail_after_commit(self, exc: BaseException) -> None:
        """Refuse writes until reopened: the running store may no longer match the disk."""

log = logging.getLogger("bitkv")
ProgressCallback = Callable[[int, int], None]
SWITCH_CHUNK = 2048  # keys switched per hold of the writer lock: bounds the writer's wait
# The compiled switch holds the lock for fewer keys (~25 us), and after each chunk, and each
# COPY_CHUNK of the compiled copy loop, releases the GIL for HANDOFF_US instead of
# time.sleep(0) (which costs 0.5-6 ms on a busy machine): see compact.c's release_gil.
# Measured on 2M keys with a writer putting in a loop: put p99 during compaction 1.0-1.1x the
# p99 without (2.2-3.3x with 2,048 keys and sleep(0)).
NATIVE_SWITCH_CHUNK = 256
HANDOFF_US = 20
# The extra memory a compaction may take, whatever the store's size: this much (the data
# buffer of the open output, compacted.WRITE_BUFFER, and what one COPY_CHUNK of input adds to
# it; one chunk of expired keys; one SWITCH_CHUNK of keys; and allocator slack: a growing
# buffer may be held twice for a moment when realloc moves it) plus the hint of the open
# output, which is smaller than the output: see memory_bound, docs/compaction.md.
MEMORY_OVERHEAD = 32 * 2**20


def memory_bound(max_segment_size: int) -> int:
    """The most memory, in bytes, one compaction adds to a store's (its index excluded)."""
    return MEMORY_OVERHEAD + max_segment_size


@dataclass
class CompactionSummary:
    """What one compaction did. Sizes are bytes; ``seconds`` is wall time."""

    segments_in: int = 0
    segments_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_reclaimed: int = 0
    keys_kept: int = 0
    records_dropped: int = 0
    corrupt_records: int = 0
    seconds: float = 0.0
    aborted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unlink_quietly(host: CompactionHost, path: str) -> None:
    try:
        host.io.unlink(path)
    except FileNotFoundError:
        pass


# -- the copy loop ------------------------------------------------------------------------------

COPY_CHUNK = 1 << 16  # input bytes per call of the copy loop: bounds its work between yields
COPY_DONE = 0  # reached ``limit``
COPY_FULL = 1  # the next live record does not fit the open output (or none is open)
COPY_ODD = 2   # the record at ``pos`` is not a plain intact record: let record.scan judge it
NO_OUTPUT = 1 << 62  # ``out_size`` when no output is open: every live record is COPY_FULL

_HEADER = rec.HEADER
_ENTRY_PACK = hint.ENTRY.pack
_PLAIN_FLAGS = (rec.TOMBSTONE | rec.COMPRESSED | rec.ENCRYPTED
                | rec.CLIENT_FLAGS)  # no batch flags to clear


def copy_live(src: mmap.mmap | bytes, pos: int, limit: int, end: int, slot: int,
              entries: keydir.Index, now_ms: int,
              data: bytearray, fixed: bytearray, keys: bytearray,
              out_size: int, max_size: int, min_seq: int, max_seq: int,
              expired: list[tuple[bytes, int]]
              ) -> tuple[int, int, int, int, int, int, int]:
    """Copy the live records of ``src[pos:limit]`` (a segment at ``slot`` ending at ``end``)
    into an output; return (status, pos, out_size, copied, dropped, min_seq, max_seq).

    The inner loop of compaction, kept to one function of plain values so a compiled kernel
    can replace it. For each record from ``pos`` while ``pos < limit``: it must be intact
    exactly as :func:`bitkv.record.scan` decides (plausible header, inside ``end``, CRC)
    and carry no batch flag, else stop with COPY_ODD at it. A record is live if ``entries``
    maps its key to exactly this record (slot, offset, size hint); a live record that
    expired (``expiry_ms <= now_ms``) is dropped and listed in ``expired`` as (key, entry).
    A live record is appended: its bytes to ``data`` (runs of adjacent live records as one
    slice), its hint entry (at offset ``out_size`` of the output) to ``fixed`` and its key
    to ``keys``; ``out_size`` grows by its size; stop with COPY_FULL before a record that
    would take ``out_size`` past ``max_size`` unless the output is empty. ``min_seq`` and
    ``max_seq`` (0: none yet) track the output's seq range. ``copied`` and ``dropped``
    count the records copied and the records passed over (dead or expired).

    Once :data:`UNIFORM_RUN` records in a row had one size, the records that follow with
    that size are handled a whole run at a time by :func:`_copy_run` (same checks, same
    results, a few C-level calls per run instead of a dozen Python lines per record).
    """
    # 28, 40 and 4096 below: record.HEADER_SIZE, segment.HEADER_SIZE and the keydir's size
    # hint limit (asserted after the function), as literals: this loop runs once per record.
    unpack = _HEADER.unpack_from
    pack_entry = _ENTRY_PACK
    get = entries.get
    crc32 = crc32c
    base = slot << keydir.SLOT_SHIFT
    copied = dropped = 0
    run = -1  # start of the run of live records not yet appended to ``data``
    status = COPY_DONE
    last_size = same = 0  # how many records in a row had the size ``last_size``
    view = memoryview(src)
    try:
        while pos < limit:
            if same >= UNIFORM_RUN:
                if run >= 0:
                    data += view[run:pos]
                    run = -1
                pos, out_size, n_copied, n_dropped, min_seq, max_seq = _copy_run(
                    view, pos, limit, end, base, get, now_ms, data, fixed, keys, out_size,
                    max_size, min_seq, max_seq, expired)
                copied += n_copied
                dropped += n_dropped
                # The record at ``pos`` (if before ``limit``) ended the run: another size,
                # not a plain intact record, or a live one that does not fit. The lines
                # below judge it, and a new run needs UNIFORM_RUN records again.
                same = 0
                if pos >= limit:
                    break
            if end - pos < 28:
                status = COPY_ODD
                break
            crc, flags, reserved, key_len, value_len, seq, expiry_ms = unpack(src, pos)
            size = 28 + key_len + value_len
            nxt = pos + size
            if (nxt > end or reserved or flags & ~_PLAIN_FLAGS or not key_len
                    or value_len > rec.MAX_STORED_VALUE_SIZE
                    or (flags & rec.TOMBSTONE and value_len)
                    or crc32(view[pos + 4 : nxt]) != crc):
                status = COPY_ODD
                break
            key = src[pos + 28 : pos + 28 + key_len]
            entry = base | (pos << 12) | (size if size < 4096 else 0)
            if get(key) != entry:
                if run >= 0:
                    data += view[run:pos]
                    run = -1
                dropped += 1
            elif expiry_ms and expiry_ms <= now_ms:
                if run >= 0:
                    data += view[run:pos]
                    run = -1
                expired.append((key, entry))
                dropped += 1
            else:
                if size > max_size - out_size and out_size > 40:
                    status = COPY_FULL
                    break
                if run < 0:
                    run = pos
                fixed += pack_entry(flags, 0, key_len, value_len, out_size, seq, expiry_ms)
                keys += key
                out_size += size
                copied += 1
                if seq > max_seq:
                    max_seq = seq
                if seq < min_seq or not min_seq:
                    min_seq = seq
            pos = nxt
            if size == last_size:
                same += 1
            else:
                last_size = size
                same = 1
        if run >= 0:
            data += view[run:pos]
    finally:
        view.release()
    return status, pos, out_size, copied, dropped, min_seq, max_seq


# Records of one size in a row after which copy_live tries a whole run of that size at once,
# and the fewest records (starting before ``limit``) worth a run: a run has a fixed cost of
# ~60 C-level calls (~10 us here) against ~0.5 us it saves per record. A store of varied
# sizes pays one comparison per record for trying.
UNIFORM_RUN = 8
RUN_MIN_RECORDS = 16
RUN_MAX_BYTES = 1 << 18  # a run's bytes are copied once: bounded whatever ``limit`` is


def _copy_run(view: memoryview, pos: int, limit: int, end: int, base: int,
              get: Callable[[bytes], int | None], now_ms: int,
              data: bytearray, fixed: bytearray, keys: bytearray,
              out_size: int, max_size: int, min_seq: int, max_seq: int,
              expired: list[tuple[bytes, int]]
              ) -> tuple[int, int, int, int, int, int]:
    """:func:`copy_live` for the longest run of records from ``pos`` that have the shape
    (key and value lengths) of the one at ``pos``, start before ``limit``, are plain intact
    records and, if live, fit the output; return (pos after the run, out_size, copied,
    dropped, min_seq, max_seq). Nothing is done for a run shorter than RUN_MIN_RECORDS.

    Every check and every decision is copy_live's, record by record, but made over whole
    columns of the run: records of one size sit at a fixed stride, so a header field of
    every record is one strided slice of the run's bytes (``run[6::size]``: the first byte
    of every key length), checked with one ``count`` or ``translate``; the CRCs are computed
    by one ``map`` over the bodies ``struct.iter_unpack`` cuts; the keys are looked up by
    one ``map`` and compared with the ``range`` of index entries they must have. A hint
    entry is the record's header with its CRC replaced by the offset in the output, moved
    (flags, reserved, key_len, value_len; offset; seq, expiry_ms), so the run's hint entries
    are built by strided slice assignment too. Each stretch of live records is then
    appended with one slice of data and one of entries. The record that ends the run is
    left to copy_live, which judges it alone (and so stops at it exactly as it would have
    without the run)."""
    nothing = pos, out_size, 0, 0, min_seq, max_seq
    if end - pos < 28:
        return nothing
    key_len, value_len = _KEY_VALUE_LEN.unpack_from(view, pos + 6)
    size = 28 + key_len + value_len
    count = min((limit - pos + size - 1) // size, (end - pos) // size, RUN_MAX_BYTES // size)
    if count < RUN_MIN_RECORDS or not key_len or value_len > rec.MAX_STORED_VALUE_SIZE:
        return nothing
    run = view[pos : pos + count * size].tobytes()
    n = count
    # The run ends before the first record of another shape (header bytes 6-12: key_len,
    # value_len), with its reserved byte (5) set, or with flags (4) copy_live does not copy.
    for i in range(6):
        column = run[6 + i :: size]
        if column.count(run[6 + i]) != n:
            count = min(count, n - len(column.lstrip(run[6 + i : 7 + i])))
    column = run[5::size]
    if column.count(0) != n:
        count = min(count, n - len(column.lstrip(b"\0")))
    column = run[4::size]
    bad = column.translate(None, _RUN_FLAGS[value_len > 0])
    if bad:
        count = min(count, column.index(bad[0]))
    if not count:
        return nothing
    span = count * size
    body = memoryview(run)[:span]
    stored = bytearray(4 * count)  # the CRC field of every record, in order
    for i in range(4):
        stored[i::4] = run[i:span:size]
    checked = list(map(operator.eq,
                       map(crc32c, map(_FIRST, struct.iter_unpack(f"4x{size - 4}s", body))),
                       struct.unpack(f"<{count}I", stored)))
    if checked.count(True) != count:
        count = checked.index(False)
        if not count:
            return nothing
        span = count * size
        body = body[:span]
    keylist = list(map(_FIRST, struct.iter_unpack(f"28x{key_len}s{value_len}x", body)))
    step = size << 12
    first_entry = base | (pos << 12) | (size if size < 4096 else 0)
    entry_range = range(first_entry, first_entry + count * step, step)
    live = list(map(operator.eq, map(get, keylist), entry_range))
    lapsed: list[bool] | None = None  # live but expired
    if now_ms:
        expiry = bytearray(8 * count)
        for i in range(8):
            expiry[i::8] = run[20 + i : span : size]
        if expiry.count(0) != len(expiry):
            expiries = struct.unpack(f"<{count}Q", expiry)
            gone = list(map(operator.and_, map(bool, expiries), map(now_ms.__ge__, expiries)))
            lapsed = list(map(operator.and_, live, gone))
            live = list(map(operator.gt, live, gone))
    # The live records that fit the output; the run stops before the first that does not.
    stop = count
    copied = live.count(True)
    room = (max_size - out_size) // size
    if out_size <= 40:
        room = max(room, 1)  # an empty output takes any record
    if copied > max(room, 0):
        copied = max(room, 0)
        stop = list(itertools.accumulate(live)).index(copied + 1)
        del live[stop:]
    if copied:
        span = stop * size
        entries = bytearray(28 * stop)  # the dead records' entries are built but not used
        for i in range(8):
            entries[i::28] = run[4 + i : span : size]
        for i in range(16):
            entries[12 + i :: 28] = run[12 + i : span : size]
        offsets = struct.pack(f"<{stop}I", *map(
            out_size.__add__, map(size.__mul__, itertools.accumulate(live[:-1], initial=0))))
        for i in range(4):
            entries[8 + i :: 28] = offsets[i::4]
        seq = bytearray(8 * stop)
        for i in range(8):
            seq[i::8] = run[12 + i : span : size]
        min_seq, max_seq = _seq_range(
            tuple(itertools.compress(struct.unpack(f"<{stop}Q", seq), live)),
            min_seq, max_seq)
        marks = bytes(live)
        at = 0
        while True:
            first = marks.find(1, at)
            if first < 0:
                break
            at = marks.find(0, first)
            if at < 0:
                at = stop
            data += view[pos + first * size : pos + at * size]
            fixed += entries[28 * first : 28 * at]
        keys += b"".join(itertools.compress(keylist, live))
        out_size += copied * size
    if lapsed is not None:
        expired.extend(itertools.compress(zip(keylist[:stop], entry_range[:stop], strict=True),
                                          lapsed[:stop]))
    return pos + stop * size, out_size, copied, stop - copied, min_seq, max_seq


def _seq_range(seqs: tuple[int, ...], min_seq: int, max_seq: int) -> tuple[int, int]:
    """copy_live's ``min_seq``/``max_seq`` after appending records of ``seqs``, in order
    (``min_seq`` 0 means none yet, so a record of seq 0 is forgotten by the next)."""
    top = max(seqs)
    if top > max_seq:
        max_seq = top
    if 0 in seqs:
        for seq in seqs:
            if seq < min_seq or not min_seq:
                min_seq = seq
        return min_seq, max_seq
    low = min(seqs)
    if low < min_seq or not min_seq:
        min_seq = low
    return min_seq, max_seq


_KEY_VALUE_LEN = struct.Struct("<HI")  # a record header's key_len and value_len, at 6
_FIRST = operator.itemgetter(0)
# The flag bytes a run leaves out (deleted by ``translate``: what remains ends the run), by
# whether the records have a value: copy_live copies plain flags only, and a tombstone
# with a value is damage.
_RUN_FLAGS = (bytes(f for f in range(256) if not f & ~_PLAIN_FLAGS),
              bytes(f for f in range(256) if not f & ~_PLAIN_FLAGS and not f & rec.TOMBSTONE))


assert rec.HEADER_SIZE == 28 and seg_mod.HEADER_SIZE == 40 and keydir.SIZE_MASK == 4095

CopyLive = Callable[
    [mmap.mmap | bytes, int, int, int, int, keydir.Index, int, bytearray, bytearray, bytearray,
     int, int, int, int, list[tuple[bytes, int]]],
    tuple[int, int, int, int, int, int, int]]
# The copy loop compaction runs: bitkv/native/compact.c's when the keydir's map is the
# compiled IndexMap (it reads the map through its C API), else copy_live above, the reference.
# Both give the same results and write the same bytes (tests/test_compaction_native.py).
copy_live_native: CopyLive | None = None


# The pure-Python loops yield the GIL (time.sleep(0)) once this much of the compacting
# thread's CPU time has passed since its last yield, not after every chunk: a chunk now
# takes ~0.25 ms, and each time.sleep(0) can cost whole scheduler ticks of wall time on a
# busy machine (measured: ~4,000 yields, 3.5 ms each at a load average of 9, made a 2M-key
# compaction of 4.3 s of CPU take 18 s). A writer still waits ~1 ms at most, as it did when
# a chunk took that long.
YIELD_EVERY_CPU_S = 0.001
_last_yield = threading.local()


def _sleep(microseconds: int) -> None:
    now = time.thread_time()
    if now - getattr(_last_yield, "cpu", 0.0) >= YIELD_EVERY_CPU_S:
        time.sleep(0)
        _last_yield.cpu = time.thread_time()


release_gil: Callable[[int], None] = _sleep  # the Python loops' way to let a writer in
if keydir.IMPLEMENTATION == "native":
    from ._native import copy_live as _compiled_copy_live
    from ._native import release_gil as _compiled_release_gil

    release_gil = _compiled_release_gil

    # Typed as the reference's twin; it takes only an IndexMap for ``entries`` (TypeError
    # otherwise), which _copy checks before choosing it.
    copy_live_native = cast(CopyLive, _compiled_copy_live)


def compact(store: CompactionHost, progress: ProgressCallback | None = None
            ) -> CompactionSummary:
    """Compact every immutable segment of ``store``; the caller runs one compaction at a
    time (the store's compaction lock)."""
    started = time.monotonic()
    summary = CompactionSummary()
    io = store.io
    with store.locked():
        inputs = store.sealed_segments()
        reclaimable = sum(s.dead_bytes for s in inputs)
    if not inputs or not reclaimable:
        # Nothing overwritten, deleted, expired or damaged: rewriting would only copy
        # every live byte again (basho/bitcask #205).
        summary.seconds = time.monotonic() - started
        return summary
    if killpoints.ENABLED:
        killpoints.hit("compact.inputs_selected")
    total = sum(s.size for s in inputs)
    summary.segments_in = len(inputs)
    summary.bytes_in = total
    disk_before = sum(s.size for s in inputs)
    writer = CompactedWriter(store.path, io, store.allocate_id, store.max_segment_size)
    written = writer.temp_paths  # removed if we abort
    try:
        saw_damage = _copy(store, inputs, writer, summary, progress)
        outputs = writer.finish()
        if killpoints.ENABLED:
            killpoints.hit("compact.outputs_written")
            killpoints.hit("compact.hints_written")
            killpoints.hit("compact.synced")
        if store.stop_requested():
            raise _Aborted
    except _Aborted:
        writer.close()
        for path in written:
            _unlink_quietly(store, path)
        summary.aborted = True
        summary.seconds = time.monotonic() - started
        return summary
    except BaseException:
        writer.close()
        for path in written:
            _unlink_quietly(store, path)
        raise

    # Outputs get their final names, but they are not part of the store until the MANIFEST
    # lists them: a crash or an error before that leaves orphans the next open removes.
    renamed: list[str] = []
    new_segments: list[Segment] = []
    committing = False
    try:
        for tmp, final in writer.renames():
            io.rename(tmp, final)
            renamed.append(final)
        if killpoints.ENABLED:
            killpoints.hit("compact.renamed")
        io.fsync_dir(store.path)
        if killpoints.ENABLED:
            killpoints.hit("compact.dir_synced")
        for out in outputs:
            path = seg_mod.segment_path(store.path, out.segment_id)
            if out.header is None:
                raise RuntimeError("internal error: a compaction output was never written")
            fd = io.open_read(path)
            segment = Segment(io, out.segment_id, path, fd, out.header, out.size)
            segment.synced_size = out.size
            segment.hinted = True
            segment.map()
            segment.release_fd()
            new_segments.append(segment)
        # An input record that was not copied because a newer write superseded it may be the
        # only durable version of its key: the superseding writes must be durable before the
        # inputs leave the store, or a power cut could lose both.
        store.sync_active()
        # The commit point: the MANIFEST now lists the outputs instead of the inputs.
        committing = True
        store.install(inputs, new_segments)
    except BaseException:
        for segment in new_segments:
            segment.close()
        if committing:
            # Which MANIFEST is on disk is unknown (the store now refuses writes): keep both
            # the inputs and the outputs, so that either one loads to the same contents.
            raise
        for path in written + renamed:
            _unlink_quietly(store, path)
        raise
    if killpoints.ENABLED:
        killpoints.hit("compact.committed")

    # From here on a failure cannot be undone: finish what can be finished, and if anything
    # fails the store refuses writes until it is reopened from the committed MANIFEST.
    try:
        sources = frozenset(seg.slot for seg in inputs)
        for out, segment in zip(outputs, new_segments, strict=True):
            _switch(store, segment, sources, summary)
            summary.bytes_out += out.size
        if killpoints.ENABLED:
            killpoints.hit("compact.switched")
        with store.locked():
            if saw_damage:
                # A key still pointing into an input now is one whose record failed its CRC
                # when copied: its bytes are lost, and it must not point at a removed file.
                lost = store.keydir.entries_in(sources)
                for key, _entry in lost:
                    store.keydir.remove(key)
                summary.corrupt_records = len(lost)
            store.retire(inputs)
    except BaseException as exc:
        store.fail_after_commit(exc)
        raise
    # The inputs are no longer listed, so the order and durability of their removal no
    # longer matter for correctness (an input left behind is an orphan the next open
    # removes); one directory fsync at the end keeps the disk from holding them long.
    removal_error: OSError | None = None
    for seg in sorted(inputs, key=lambda s: (s.order_seq, s.id)):
        seg.close()
        for path in (os.path.join(store.path, seg_mod.hint_name(seg.id)), seg.path):
            try:
                io.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                removal_error = removal_error or exc
        if killpoints.ENABLED:
            killpoints.hit("compact.removed_one")
    try:
        io.fsync_dir(store.path)
    except OSError as exc:
        store.fail_after_commit(exc)
        raise
    if removal_error is not None:
        log.warning("bitkv store %s: compaction could not remove an input (%s); the next "
                    "writable open removes it", store.path, removal_error)

    summary.segments_out = len(outputs)
    summary.bytes_reclaimed = disk_before - summary.bytes_out
    summary.seconds = time.monotonic() - started
    return summary


def _copy(store: CompactionHost, inputs: list[Segment], writer: CompactedWriter,
          summary: CompactionSummary, progress: ProgressCallback | None) -> bool:
    """Copy every live record of ``inputs`` into ``writer``'s outputs, streaming: a bounded
    chunk of input at a time, outputs written as they fill. Keys whose record expired are
    unindexed as they are met (conditionally, under the lock, a chunk at a time). Return
    whether any input held damaged bytes."""
    now_ms = store.now_ms()
    kd = store.keydir
    entries = kd.entries
    max_size = store.max_segment_size
    total = sum(s.size for s in inputs)
    done = 0
    saw_damage = False
    expired: list[tuple[bytes, int]] = []
    copy: CopyLive = copy_live
    if copy_live_native is not None and not isinstance(entries, dict):
        copy = copy_live_native
    for seg in inputs:
        mm = seg.mm
        if mm is None:
            continue
        pos = 0 if seg.header_damaged else seg_mod.HEADER_SIZE
        end = seg.size
        slot = seg.slot
        while pos < end:
            if store.stop_requested():
                raise _Aborted
            limit = min(end, pos + COPY_CHUNK)
            while pos < limit:
                opened = writer.is_open
                status, pos, out_size, copied, dropped, min_seq, max_seq = copy(
                    mm, pos, limit, end, slot, entries, now_ms, writer.data, writer.fixed,
                    writer.keys, writer.size if opened else NO_OUTPUT, max_size,
                    writer.min_seq, writer.max_seq, expired)
                summary.records_dropped += dropped
                if opened:
                    writer.size = out_size
                    writer.records += copied
                    writer.min_seq, writer.max_seq = min_seq, max_seq
                if status == COPY_FULL:
                    writer.open_output()
                elif status == COPY_ODD:
                    pos, damaged = _copy_odd(mm, pos, end, slot, entries, now_ms, writer,
                                             expired, summary)
                    saw_damage = saw_damage or damaged
            writer.flush_if_full()
            if expired:
                _drop_expired(store, expired)
            # A writer that lost the GIL waits for it until this thread lets go, which a
            # CPU-bound thread does only every sys.getswitchinterval() (5 ms): yielding after
            # each chunk (~1 ms of Python work) bounds that wait instead (measured on 2M keys:
            # put p99.9 during a compaction 1.4-1.9 ms instead of 5.1 ms). The compiled loop
            # also releases the GIL for each batch of records it checks and copies, but only
            # briefly: see release_gil for why that alone can starve a writer.
            release_gil(HANDOFF_US)
        done += seg.size
        if progress is not None:
            progress(done, total)
    return saw_damage


def _copy_odd(mm: mmap.mmap | bytes, pos: int, end: int, slot: int,
              entries: keydir.Index, now_ms: int, writer: CompactedWriter,
              expired: list[tuple[bytes, int]], summary: CompactionSummary
              ) -> tuple[int, bool]:
    """What :func:`copy_live` leaves to :func:`bitkv.record.scan`: one damaged region or
    one record it does not copy itself (a batch member, re-encoded as a plain record).
    Return where to go on and whether the region was damaged. The scan is stateless for
    compacted and append segments alike (no ``first_seq``), so starting it here finds
    exactly what a scan of the whole segment would."""
    item = next(rec.scan(mm, pos, end))
    if isinstance(item, rec.Damage):
        return (end if item.tail else item.offset + item.length), True
    size = item.size
    expected = keydir.pack(slot, item.offset, size)
    if entries.get(item.key) != expected:
        summary.records_dropped += 1
    elif item.expiry_ms and item.expiry_ms <= now_ms:
        summary.records_dropped += 1
        expired.append((item.key, expected))
    else:
        data = mm[item.offset : item.offset + size]
        flags = item.flags
        if flags & rec.BATCH_FLAGS:
            # The batch committed long ago; its members become plain records.
            value = data[rec.HEADER_SIZE + len(item.key) :]
            flags &= ~rec.BATCH_FLAGS
            data = rec.encode(item.key, value, item.seq, item.expiry_ms, flags)
        writer.add(item.key, data, flags, item.value_len, item.seq, item.expiry_ms)
    return item.offset + size, False


def _drop_expired(store: CompactionHost, expired: list[tuple[bytes, int]]) -> None:
    """Unindex keys whose live record expired, each only if it still points at that record
    (a write made meanwhile wins). The records stay in the inputs, expired, until the
    commit; so before it this is what any expiry purge does."""
    with store.locked():
        unindex_if = store.keydir.unindex_expired_if
        for key, entry in expired:
            unindex_if(key, entry)
    expired.clear()


def _switch(store: CompactionHost, segment: Segment, source_slots: frozenset[int],
            summary: CompactionSummary) -> None:
    """Point keys at their copies in ``segment``, in chunks, only if they did not change.

    Nothing of the copy was kept in memory: the output's records are read back from its map,
    a chunk at a time. A key is switched only if it still points into an input, at a record
    of the copy's size (:meth:`KeyDir.switch_inputs`). That is exactly the record copied: the
    copy was made because the key pointed at it when the input was read, and since then the
    key can only have moved to the active segment (every write goes there), been removed, or
    been switched by this compaction, which copies a key once; it can never point into an
    input again. So a write made meanwhile always wins (nutsdb #392).
    """
    mm = segment.mm
    if mm is None:
        return
    slot = segment.slot
    switch_copies = store.keydir.switch_copies
    pos = seg_mod.HEADER_SIZE
    end = segment.size
    native = copy_live_native is not None and not isinstance(store.keydir.entries, dict)
    chunk = NATIVE_SWITCH_CHUNK if native else SWITCH_CHUNK
    while pos < end:
        with store.locked():
            before = segment.live_bytes
            pos, switched = switch_copies(mm, pos, end, segment, slot, source_slots, chunk)
            summary.keys_kept += switched
            store.switched(segment.live_bytes - before)
        # threading.Lock is not fair: without yielding here, a waiting writer could sit out
        # most of the switch instead of one chunk (measured: stalls of 190 ms vs 20 ms).
        release_gil(HANDOFF_US)


class _Aborted(Exception):
    pass
