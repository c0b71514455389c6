"""Hints for sealed append segments, written in the background after rotation.

Compaction gives its outputs hints, and a clean close checkpoints the active segment; a store
that grows without compacting would otherwise rescan every sealed segment at each open. A
sealed segment is immutable, so its hint is built by loading just that segment into a private
index, exactly as recovery would apply it: the newest record of each key in the segment,
tombstones and expired records included (a later open decides what they hide).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from . import hint, keydir, killpoints, record, recovery
from . import segment as seg_mod
from .fileio import FileIO
from .keydir import KeyDir
from .segment import Segment

CHECKPOINT_MIN_BYTES = 1 << 20
"""A clean close writes a hint for the active segment once it holds this much: below it, a
scan at open is about as fast as reading the hint, and the close saves two fsyncs."""


def build_hint(directory: str, io: FileIO, seg: Segment) -> bytes | None:
    """Return the hint describing all of sealed segment ``seg``, or None if it has damage
    (recovery treats damaged bytes in the context of the whole store; leave those to a scan)."""
    if seg.header_damaged:
        return None
    shadow = Segment(io, seg.id, seg.path, -1, seg.header, seg.size)
    shadow.mm, shadow.mapped = seg.mm, seg.mapped
    if shadow.mm is None or shadow.mapped != seg.size:
        return None
    # A private index of just this segment; now_ms=0 keeps expired records (a later open
    # decides what they hide), and ``hidden`` collects them and the tombstones for the hint.
    hidden: dict[bytes, tuple[int, int, int, int]] = {}
    loader = recovery.Loader(directory, io, readonly=True, now_ms=0, use_hints=False,
                             hidden=hidden)
    loader.add_segment(shadow)
    loader.load_segment(shadow, False)
    report = loader.report
    if report.damage or report.truncated_bytes or report.poisoned_keys:
        return None
    items = hint_items(shadow, loader.keydir.entries.items(), loader.keydir.expiries, hidden)
    return hint.encode(items, seg.header.nonce, seg.size, max_seq=loader.max_seq)


def hint_items(seg: Segment, indexed: Iterable[tuple[bytes, int]], expiries: dict[bytes, int],
               hidden: dict[bytes, tuple[int, int, int, int]]
               ) -> list[tuple[bytes, int, int, int, int, int]]:
    """Hint entries for ``seg``: its indexed keys (``indexed`` yields (key, keydir entry),
    all pointing into ``seg``) and its tombstones and expired records (``hidden``). Seqs are
    not kept in memory, so entries carry seq 0 (docs/format.md)."""
    header_size = record.HEADER_SIZE
    items = []
    for key, entry in indexed:
        _slot, offset, size = keydir.unpack(entry)
        size = size or seg.record_size_at(offset)
        items.append((key, 0, size - header_size - len(key), offset, 0, expiries.get(key, 0)))
    for key, (offset, size, flags, expiry_ms) in hidden.items():
        items.append((key, flags, size - header_size - len(key), offset, 0, expiry_ms))
    return items


def write_hint(directory: str, io: FileIO, seg: Segment, blob: bytes) -> None:
    """Install ``blob`` as the hint of ``seg`` (temp file, fsync, rename, directory fsync)."""
    io.replace_file(directory, seg_mod.hint_name(seg.id), blob)


def write_missing_hints(directory: str, io: FileIO, sealed: list[Segment],
                        stop: Callable[[], bool]) -> None:
    """Give every sealed append segment of ``sealed`` without a hint one (the maintenance
    thread, after rotation); stops early when ``stop()`` says the store is closing."""
    for seg in sealed:
        if seg.hinted or seg.kind != seg_mod.KIND_APPEND:
            continue
        if stop():
            return
        blob = build_hint(directory, io, seg)
        seg.hinted = True  # written, or not worth trying again (damage)
        if blob is not None:
            write_hint(directory, io, seg, blob)


def write_checkpoint(directory: str, io: FileIO, seg: Segment, index: KeyDir,
                     max_seq: int) -> None:
    """At a clean close: a hint for the active segment ``seg`` (fsynced to its size), so the
    next open reads it instead of scanning every record.

    It lists every key whose newest record in the segment the index points at, plus the
    tombstones and expired records there (``index.hidden``): exactly what a scan of those
    bytes would index. Seqs are not kept in memory, so entries carry seq 0 and the hint's
    ``max_seq`` is the store's last seq (docs/format.md).
    """
    if seg.size - seg_mod.HEADER_SIZE < CHECKPOINT_MIN_BYTES:
        return
    indexed = index.entries_in(frozenset((seg.slot,)))
    items = hint_items(seg, indexed, index.expiries, index.hidden or {})
    blob = hint.encode(items, seg.header.nonce, seg.size, max_seq=max_seq)
    name = seg_mod.hint_name(seg.id)
    if killpoints.ENABLED:
        # The kill point sits between the fsync and the rename of replace_file.
        final = os.path.join(directory, name)
        io.write_new_file(final + seg_mod.TMP_SUFFIX, blob)
        killpoints.hit("checkpoint.written")
        io.rename(final + seg_mod.TMP_SUFFIX, final)
        io.fsync_dir(directory)
    else:
        io.replace_file(directory, name, blob)
