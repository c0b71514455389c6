"""The compacted-segment writer shared by compaction and repair.

Both turn a stream of records (each the newest version of its key) into compacted segments
(kind 1, at most ``max_segment_size`` bytes each, a single larger record alone in its own),
each with a hint file: written under ``*.tmp`` names and fsynced, ready for the caller to
rename into place and commit (compaction: the MANIFEST through the store; repair: a new
MANIFEST of its own). docs/format.md, "Compaction and repair on disk".

Memory is bounded whatever the number of records: an output's data goes to its temporary
file through a buffer of :data:`WRITE_BUFFER` bytes (the segment header, which names the
output's seq range, is written last, in place), and only the open output's hint is held
until the output is complete (less than the output itself). Nothing of a finished
output stays in memory but its :class:`Output` (a few numbers).

The open output's buffers are public: compaction's copy loop (``compaction.copy_live``)
appends records and hint entries to them directly, many at a time, instead of calling
:meth:`CompactedWriter.add` per record.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from . import hint
from . import segment as seg_mod
from .crc import crc32c, crc32c_extend
from .fileio import FileIO
from .manifest import ManifestEntry
from .segment import SegmentHeader

# Bytes of an output's data buffered before one write() to its temporary file.
WRITE_BUFFER = 4 * 2**20
# A hint entry is 28 bytes plus the key, a record 28 bytes plus key plus value: an output's
# hint, held in memory until the output is complete, is smaller than the output (16-byte
# keys and 8-byte values: 44/52 of it; 100-byte values: 44/144).


@dataclass
class Output:
    """One compacted segment, once written: where it is and what it holds."""

    segment_id: int
    size: int = seg_mod.HEADER_SIZE
    min_seq: int = 0
    max_seq: int = 0
    records: int = 0
    hint_size: int = 0
    header: SegmentHeader | None = None

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
    """Writes records into compacted segments (see the module doc).

    The open output (if any) is described by public fields a copy loop may update in place:
    ``data`` (record bytes not yet written to its file), ``fixed`` and ``keys`` (its hint's
    entry table and key area), ``size`` (its size so far, header included), ``records``,
    ``min_seq`` and ``max_seq``. After appending to them, call :meth:`flush_if_full`.
    """

    def __init__(self, directory: str, io: FileIO, allocate_id: Callable[[], int],
                 max_segment_size: int) -> None:
        self.directory = directory
        self.io = io
        self._allocate_id = allocate_id
        self.max_segment_size = max_segment_size
        self.outputs: list[Output] = []
        self.temp_paths: list[str] = []  # every file created: the caller removes them on abort
        self._current: Output | None = None
        self._fd = -1
        self.data = bytearray()
        self.fixed = bytearray()
        self.keys = bytearray()
        self.size = seg_mod.HEADER_SIZE
        self.records = 0
        self.min_seq = 0
        self.max_seq = 0

    # -- the open output -------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._current is not None

    def open_output(self) -> None:
        """Finish the open output (if any) and start a new, empty one."""
        if self._current is not None:
            self._finish_current()
        out = Output(self._allocate_id())
        path = os.path.join(self.directory, out.data_name + seg_mod.TMP_SUFFIX)
        self._unlink_leftover(path)
        self._fd = self.io.create(path)
        self.temp_paths.append(path)
        self._current = out
        # Room for the header, written in place once the output is complete.
        self.data = bytearray(seg_mod.HEADER_SIZE)
        self.fixed = bytearray()
        self.keys = bytearray()
        self.size = seg_mod.HEADER_SIZE
        self.records = 0
        self.min_seq = 0
        self.max_seq = 0

    def fits(self, size: int) -> bool:
        """Whether a record of ``size`` bytes goes into the open output (an empty output
        takes any record: a record larger than a segment gets one of its own)."""
        return (self._current is not None and (self.size + size <= self.max_segment_size
                                               or self.size == seg_mod.HEADER_SIZE))

    def flush_if_full(self) -> None:
        """Write the data buffer to the open output's file once it holds WRITE_BUFFER bytes."""
        if len(self.data) >= WRITE_BUFFER:
            self.io.write(self._fd, _buffer(self.data))
            self.data = bytearray()

    # -- one record at a time (repair, and compaction's records that need re-encoding) -----

    def add(self, key: bytes, data: bytes, flags: int, value_len: int, seq: int,
            expiry_ms: int) -> int:
        """Append one whole record (``data``, its encoded bytes); return its offset."""
        if not self.fits(len(data)):
            self.open_output()
        offset = self.size
        self.data += data
        self.fixed += hint.ENTRY.pack(flags, 0, len(key), value_len, offset, seq, expiry_ms)
        self.keys += key
        self.size += len(data)
        self.records += 1
        if not self.min_seq or seq < self.min_seq:
            self.min_seq = seq
        if seq > self.max_seq:
            self.max_seq = seq
        self.flush_if_full()
        return offset

    def finish(self) -> list[Output]:
        """Write the open output; return them all, written and fsynced under temp names."""
        if self._current is not None:
            self._finish_current()
        return self.outputs

    def renames(self) -> list[tuple[str, str]]:
        """(temporary, final) paths of every file written, each data file before its hint."""
        pairs = []
        for out in self.outputs:
            for name in (out.data_name, out.hint_name):
                final = os.path.join(self.directory, name)
                pairs.append((final + seg_mod.TMP_SUFFIX, final))
        return pairs

    def close(self) -> None:
        """Close the open output's file without finishing it (the caller is aborting)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            self.io.close(fd)
        self._current = None
        self.data = self.fixed = self.keys = bytearray()

    def _unlink_leftover(self, path: str) -> None:
        """Remove a temporary a crash left under this name (create never clobbers a file), as
        FileIO.write_new_file does."""
        if os.path.lexists(path):
            self.io.unlink(path)

    def _finish_current(self) -> None:
        out = self._current
        assert out is not None and self._fd >= 0
        io = self.io
        fd = self._fd
        # order_seq is the largest seq the output holds (docs/format.md, load order).
        header = SegmentHeader.new(seg_mod.KIND_COMPACTED, self.max_seq, self.min_seq)
        encoded = header.encode()
        if len(self.data) == self.size:
            # Nothing written yet: the header goes out with the first write.
            self.data[: seg_mod.HEADER_SIZE] = encoded
            io.write(fd, _buffer(self.data))
        else:
            if self.data:
                io.write(fd, _buffer(self.data))
            io.pwrite(fd, encoded, 0)
        self.data = bytearray()
        io.fsync(fd)
        self._fd = -1
        io.close(fd)
        out.header = header
        out.size, out.records = self.size, self.records
        out.min_seq, out.max_seq = self.min_seq, self.max_seq
        self.outputs.append(out)
        self._current = None
        # The hint: header, entry table, key area, CRC-32C of all before it (docs/format.md),
        # written part by part so the hint is never held twice over.
        head = hint.HEADER.pack(hint.MAGIC, hint.FORMAT_VERSION, 0, self.records,
                                header.nonce, self.size, self.max_seq)
        crc = crc32c_extend(crc32c_extend(crc32c(head), self.fixed), self.keys)
        parts = (head, _buffer(self.fixed), _buffer(self.keys), hint.TRAILER.pack(crc))
        out.hint_size = sum(len(p) for p in parts)
        hint_tmp = os.path.join(self.directory, out.hint_name + seg_mod.TMP_SUFFIX)
        self._unlink_leftover(hint_tmp)
        fd = io.create(hint_tmp)
        self.temp_paths.append(hint_tmp)
        try:
            for part in parts:
                io.write(fd, part)
            io.fsync(fd)
        finally:
            io.close(fd)
        self.fixed = bytearray()
        self.keys = bytearray()

def _buffer(buf: bytearray) -> bytes:
    """``buf`` as FileIO's writes take it. They are typed ``bytes`` but pass the buffer to
    ``os.write``, which takes any; a copy would double the memory this module bounds."""
    return cast(bytes, buf)
