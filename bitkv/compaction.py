"""Compaction (Bitcask's merge): rewrite immutable segments keeping only live records.

The inputs are *every* immutable segment (all but the active one). That choice is what makes
dropping tombstones and expired records safe: every older version of a key lives in an input,
so it is dropped in the same pass, and nothing older survives to be resurrected.

Sequence (each step a kill point for the crash harness)::

    scan inputs, copy each record the keydir still points at   -> NNNNNN.data.tmp
    write a hint per output                                    -> NNNNNN.hint.tmp
    fsync outputs and hints
    rename *.tmp to final names; fsync the directory           (orphans until committed)
    fsync the active segment (superseding writes durable first)
    write the MANIFEST: outputs in, inputs out                 <- the commit point
    switch the keydir, a bounded chunk per lock hold, a key only if it still points at the
      exact record copied (a write made meanwhile always wins)
    remove inputs and their hints; fsync the directory

Before the commit point any failure removes the outputs and leaves the store as it was; a
crash leaves orphans the next open removes. After it the MANIFEST lists the outputs, so the
inputs are orphans, removed in any order. A failure after the commit point (or while writing
the MANIFEST, when which version is on disk is unknown) makes the store refuse writes until
it is reopened: a compaction either finishes or leaves a store that reloads from disk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from . import keydir, killpoints
from . import record as rec
from . import segment as seg_mod
from .compacted import CompactedWriter, Output
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

    def fail_after_commit(self, exc: BaseException) -> None:
        """Refuse writes until reopened: the running store may no longer match the disk."""

log = logging.getLogger("bitkv")
ProgressCallback = Callable[[int, int], None]
SWITCH_CHUNK = 2048  # keys switched per hold of the writer lock: bounds the writer's wait


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
    now_ms = store.now_ms()
    entries = store.keydir.entries
    writer = CompactedWriter(store.path, io, store.allocate_id, store.max_segment_size)
    written = writer.temp_paths  # removed if we abort
    done = 0
    expired_drops: list[tuple[bytes, int]] = []  # indexed but expired: unindex at the switch
    saw_damage = False

    try:
        for seg in inputs:
            mm = seg.mm
            if mm is None:
                continue
            start = 0 if seg.header_damaged else seg_mod.HEADER_SIZE
            slot = seg.slot
            for item in rec.scan(mm, start, seg.size):
                if store.stop_requested():
                    raise _Aborted
                if isinstance(item, rec.Damage):
                    saw_damage = True
                    continue
                size = item.size
                expected = keydir.pack(slot, item.offset, size)
                if entries.get(item.key) != expected:
                    summary.records_dropped += 1
                    continue
                if item.expiry_ms and item.expiry_ms <= now_ms:
                    summary.records_dropped += 1
                    expired_drops.append((item.key, expected))
                    continue
                data = mm[item.offset : item.offset + size]
                flags = item.flags
                if flags & rec.BATCH_FLAGS:
                    # The batch committed long ago; its members become plain records.
                    value = data[rec.HEADER_SIZE + len(item.key) :]
                    flags &= ~rec.BATCH_FLAGS
                    data = rec.encode(item.key, value, item.seq, item.expiry_ms, flags)
                # Tagged with the entry it was copied from: the switch is conditional on it.
                writer.add(item.key, data, flags, item.value_len, item.seq, item.expiry_ms,
                           tag=(item.key, expected))
            done += seg.size
            if progress is not None:
                progress(done, total)
        outputs = writer.finish()
        if killpoints.ENABLED:
            killpoints.hit("compact.outputs_written")
            killpoints.hit("compact.hints_written")
            killpoints.hit("compact.synced")
        if store.stop_requested():
            raise _Aborted
    except _Aborted:
        for path in written:
            _unlink_quietly(store, path)
        summary.aborted = True
        summary.seconds = time.monotonic() - started
        return summary
    except BaseException:
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
        for out, segment in zip(outputs, new_segments, strict=True):
            _switch(store, out, segment, summary)
            summary.bytes_out += out.size
        for start in range(0, len(expired_drops), SWITCH_CHUNK):
            with store.locked():
                for key, old_entry in expired_drops[start : start + SWITCH_CHUNK]:
                    store.keydir.remove_if(key, old_entry)
        if killpoints.ENABLED:
            killpoints.hit("compact.switched")
        with store.locked():
            if saw_damage:
                # A key still pointing into an input now is one whose record failed its CRC
                # when copied: its bytes are lost, and it must not point at a removed file.
                input_slots = {seg.slot for seg in inputs}
                lost = [k for k, e in store.keydir.entries.items()
                        if e >> keydir.SLOT_SHIFT in input_slots]
                for key in lost:
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


def _switch(store: CompactionHost, out: Output, segment: Segment, summary: CompactionSummary
            ) -> None:
    """Point keys at their copies in ``segment``, in chunks, only if they did not change."""
    slot = segment.slot
    moves = out.placed
    switch = store.keydir.switch
    for start in range(0, len(moves), SWITCH_CHUNK):
        with store.locked():
            for (key, old_entry), offset, size in moves[start : start + SWITCH_CHUNK]:
                # Only if it still points at the record copied: a newer write wins.
                if switch(key, old_entry, segment, slot, offset, size):
                    summary.keys_kept += 1
        # threading.Lock is not fair: without yielding here, a waiting writer could sit out
        # most of the switch instead of one chunk (measured: stalls of 190 ms vs 20 ms).
        time.sleep(0)
    out.placed = []


class _Aborted(Exception):
    pass
