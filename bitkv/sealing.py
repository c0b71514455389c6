"""Hints for sealed append segments, written in the background after rotation.

Compaction gives its outputs hints, and a clean close checkpoints the active segment; a store
that grows without compacting would otherwise rescan every sealed segment at each open. A
sealed segment is immutable, so its hint is built by loading just that segment into a private
index, exactly as recovery would apply it: the newest record of each key in the segment,
tombstones and expired records included (a later open decides what they hide).
"""

from __future__ import annotations

from collections.abc import Iterable

from . import hint, keydir, record, recovery
from . import segment as seg_mod
from .fileio import FileIO
from .segment import Segment


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
