"""The compacted-segment writer shared by compaction and repair.

Both turn a stream of records (each the newest version of its key) into compacted segments
(kind 1, at most ``max_segment_size`` bytes each, a single larger record alone in its own),
each with a hint file: written under ``*.tmp`` names and fsynced, ready for the caller to
rename into place and commit (compaction: the MANIFEST through the store; repair: a new
MANIFEST of its own). docs/format.md, "Compaction and repair on disk".
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import hint
from . import segment as seg_mod
from .fileio import FileIO
from .manifest import ManifestEntry
from .segment import SegmentHeader


@dataclass
class Output:
    """One compacted segment: assembled in memory, then written (``header`` set)."""

    segment_id: int
    size: int = seg_mod.HEADER_SIZE
    min_seq: int = 0
    max_seq: int = 0
    header: SegmentHeader | None = None
    parts: list[bytes] = field(default_factory=list)
    hints: list[hint.HintItem] = field(default_factory=list)
    # (tag, offset, size) of every record, for the caller (compaction: the keydir switch).
    placed: list[tuple[Any, int, int]] = field(default_factory=list)

    @property
    def data_name(self) -> str:
        return seg_mod.data_name(self.segment_id)

    @property
    def hint_name(self) -> str:
        return seg_mod.hint_name(self.segment_id)

    def manifest_entry(self) -> ManifestEntry:
        if self.header is None:
            raise ValueError("the output has not been written yet")
        return ManifestEntry(self.segment_id, self.header.nonce, self.header.order_seq,
                             self.size, seg_mod.KIND_COMPACTED, self.size)


class CompactedWriter:
    """Writes records into compacted segments (see the module doc)."""

    def __init__(self, directory: str, io: FileIO, allocate_id: Callable[[], int],
                 max_segment_size: int) -> None:
        self.directory = directory
        self.io = io
        self._allocate_id = allocate_id
        self.max_segment_size = max_segment_size
        self.outputs: list[Output] = []
        self.temp_paths: list[str] = []  # every file written: the caller removes them on abort
        self._current: Output | None = None

    def add(self, key: bytes, data: bytes, flags: int, value_len: int, seq: int,
            expiry_ms: int, tag: Any = None) -> None:
        """Append one whole record (``data``, its encoded bytes) to the current output."""
        out = self._current
        if out is None or (out.size + len(data) > self.max_segment_size
                           and out.size > seg_mod.HEADER_SIZE):
            if out is not None:
                self._write(out)
            out = self._current = Output(self._allocate_id())
            self.outputs.append(out)
        offset = out.size
        out.parts.append(data)
        out.size += len(data)
        out.min_seq = seq if not out.min_seq else min(out.min_seq, seq)
        out.max_seq = max(out.max_seq, seq)
        out.hints.append(hint.HintItem(key, flags, value_len, offset, seq, expiry_ms))
        out.placed.append((tag, offset, len(data)))

    def finish(self) -> list[Output]:
        """Write the last output; return them all, written and fsynced under temp names."""
        if self._current is not None:
            self._write(self._current)
            self._current = None
        return self.outputs

    def renames(self) -> list[tuple[str, str]]:
        """(temporary, final) paths of every file written, each data file before its hint."""
        pairs = []
        for out in self.outputs:
            for name in (out.data_name, out.hint_name):
                final = os.path.join(self.directory, name)
                pairs.append((final + seg_mod.TMP_SUFFIX, final))
        return pairs

    def _write(self, out: Output) -> None:
        # order_seq is the largest seq the output holds (docs/format.md, load order).
        header = SegmentHeader.new(seg_mod.KIND_COMPACTED, out.max_seq, out.min_seq)
        data_tmp = os.path.join(self.directory, out.data_name + seg_mod.TMP_SUFFIX)
        hint_tmp = os.path.join(self.directory, out.hint_name + seg_mod.TMP_SUFFIX)
        self.temp_paths.append(data_tmp)
        self.io.write_new_file(data_tmp, header.encode() + b"".join(out.parts))
        out.parts = []
        out.header = header
        self.temp_paths.append(hint_tmp)
        self.io.write_new_file(hint_tmp, hint.encode(out.hints, header.nonce, out.size))
        out.hints = []
