"""The change feed: the records appended to the log, read back in seq order.

Every write takes the next seq, and append segments hold their records in seq order with no
gaps (``record.scan`` relies on it; a segment header's ``min_seq`` is the seq its first record
takes). So the append segments still on disk, oldest first, are a durable, ordered history of
every change since the oldest of them was created: replication streams it to replicas and
resumes from any seq it still holds, after a restart too.

Compaction rewrites sealed append segments into compacted ones (one record per key, any order):
the history they held is gone, and a read that needs it raises :class:`HistoryGone`.

This module reads; it never writes. The caller holds the store's writer lock during
:func:`read_changes`, so segment sizes are stable and no segment closes under it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import NamedTuple

from . import record as rec
from .errors import HistoryGone
from .segment import HEADER_SIZE as SEGMENT_HEADER_SIZE
from .segment import KIND_APPEND, Segment

# decode(key, flags, seq, expiry_ms, stored) -> the value as the user wrote it
Decoder = Callable[[bytes, int, int, int, bytes], bytes]


class Change(NamedTuple):
    """One record of the log as a change: a put (``value`` set) or a delete (``value`` None).

    ``expiry_ms`` is the absolute expiry in Unix milliseconds (0: none). ``batch`` is 0 for a
    single write, else the record's batch bits (``record.BATCH`` with ``BATCH_FIRST`` on the
    first member and ``BATCH_LAST`` on the last): the members of one batch are applied
    together or not at all.
    """

    seq: int
    key: bytes
    value: bytes | None
    expiry_ms: int
    batch: int


class Cursor:
    """Where a reader of the history stands: the seq it reads next, and (once found) the
    segment and offset that record is at, so that reading on costs no search."""

    __slots__ = ("next_seq", "offset", "segment_id")

    def __init__(self, next_seq: int) -> None:
        if next_seq < 1:
            raise ValueError(f"seqs start at 1, not {next_seq}")
        self.next_seq = next_seq
        self.segment_id: int | None = None
        self.offset = 0

    def __repr__(self) -> str:
        return f"Cursor(next_seq={self.next_seq}, segment={self.segment_id}, at={self.offset})"


def oldest_seq(segments: Sequence[Segment]) -> int | None:
    """The oldest seq the contiguous history ending at the newest append segment holds, or
    None if there are no append segments."""
    appends = [s for s in segments if s.kind == KIND_APPEND]
    if not appends:
        return None
    oldest = appends[-1].min_seq
    for older, newer in zip(reversed(appends[:-1]), reversed(appends[1:]), strict=True):
        if not _follows(older, newer):
            break
        oldest = older.min_seq
    return oldest


def _follows(older: Segment, newer: Segment) -> bool:
    """True if ``newer`` continues ``older`` without a gap: its first seq is one past
    ``older``'s last. Checked from ``older``'s last record, found by walking its headers."""
    last = _last_seq(older)
    return newer.min_seq == (older.min_seq if last is None else last + 1)


def _last_seq(seg: Segment) -> int | None:
    pos, last = SEGMENT_HEADER_SIZE, None
    while pos + rec.HEADER_SIZE <= seg.size:
        head = seg.read(pos, rec.HEADER_SIZE)
        if len(head) < rec.HEADER_SIZE:
            break
        _c, _f, _r, key_len, value_len, seq, _e = rec.HEADER.unpack_from(head)
        last = seq
        pos += rec.HEADER_SIZE + key_len + value_len
    return last


def read_changes(segments: Sequence[Segment], cursor: Cursor, decode: Decoder, *,
                 max_records: int = 1024, max_bytes: int = 1 << 20) -> list[Change]:
    """Return the changes from ``cursor.next_seq`` on, oldest first, and advance ``cursor``.

    At most ``max_records`` changes, and no more than about ``max_bytes`` of records (always
    at least one record when one is there). An empty list means the cursor is at the end of
    the log. Raises :class:`HistoryGone` if the seq the cursor wants is no longer in the log
    (or was never written: a cursor ahead of the log), or a record on the way is damaged.
    The caller holds the store's writer lock.
    """
    appends = [s for s in segments if s.kind == KIND_APPEND and not s.closed]
    seg = _locate(appends, cursor)
    if seg is None:
        return []
    out: list[Change] = []
    taken = 0
    while len(out) < max_records and taken < max_bytes:
        if cursor.offset >= seg.size:
            i = appends.index(seg)
            if i + 1 >= len(appends):
                break  # the end of the log
            nxt = appends[i + 1]
            if nxt.min_seq != cursor.next_seq:
                raise HistoryGone(
                    f"the log has no record with seq {cursor.next_seq}: the segment after "
                    f"{seg.path} starts at seq {nxt.min_seq} (compaction reclaimed the rest)")
            seg = nxt
            cursor.segment_id, cursor.offset = seg.id, SEGMENT_HEADER_SIZE
            continue
        want = min(max_bytes - taken, seg.size - cursor.offset)
        chunk = seg.read(cursor.offset, max(want, rec.HEADER_SIZE))
        pos = 0
        while pos + rec.HEADER_SIZE <= len(chunk) and len(out) < max_records:
            _c, _f, _r, key_len, value_len, _s, _e = rec.HEADER.unpack_from(chunk, pos)
            size = rec.HEADER_SIZE + key_len + value_len
            if pos + size > len(chunk):
                if pos:
                    break  # read it whole on the next pass
                if cursor.offset + size > seg.size:
                    raise HistoryGone(f"{seg.path}: the record at offset {cursor.offset} runs "
                                      f"past the segment's end")
                chunk = seg.read(cursor.offset, size)
                if len(chunk) < size:
                    raise HistoryGone(f"{seg.path}: the record at offset {cursor.offset} "
                                      f"could not be read whole")
            out.append(_change(seg, cursor, chunk[pos : pos + size], decode))
            pos += size
            taken += size
        if pos == 0:
            break
        cursor.offset += pos
    return out


def _change(seg: Segment, cursor: Cursor, data: bytes, decode: Decoder) -> Change:
    try:
        header, value = rec.decode(data)
    except ValueError as exc:
        raise HistoryGone(f"{seg.path}: the record at offset {cursor.offset} is damaged "
                          f"({exc})") from None
    if header.seq != cursor.next_seq:
        raise HistoryGone(f"{seg.path}: expected seq {cursor.next_seq} at offset "
                          f"{cursor.offset}, found {header.seq}")
    key = data[rec.HEADER_SIZE : rec.HEADER_SIZE + header.key_len]
    cursor.next_seq += 1
    batch = header.flags & rec.BATCH_FLAGS
    if header.flags & rec.TOMBSTONE:
        return Change(header.seq, key, None, 0, batch)
    flags = header.flags & ~rec.BATCH_FLAGS
    if flags & rec.ENCODING_FLAGS:
        value = decode(key, flags, header.seq, header.expiry_ms, value)
    return Change(header.seq, key, value, header.expiry_ms, batch)


def _locate(appends: list[Segment], cursor: Cursor) -> Segment | None:
    """The segment holding ``cursor.next_seq`` (positioning the cursor there), or None when
    the cursor is just past the newest record."""
    if cursor.segment_id is not None:
        for found in appends:
            if found.id == cursor.segment_id:
                return found
        # Compaction reclaimed the segment the cursor was in; look again by seq (a reader
        # at the end of a sealed segment goes on in the next one).
        cursor.segment_id = None
    if not appends:
        raise HistoryGone("the log holds no appended records to read changes from")
    target = cursor.next_seq
    holder = next((s for s in reversed(appends) if s.min_seq <= target), None)
    if holder is None:
        raise HistoryGone(f"the oldest seq still in the log is {appends[0].min_seq}; seq "
                          f"{target} was reclaimed by compaction")
    return _position(appends, holder, cursor)


def _position(appends: list[Segment], seg: Segment, cursor: Cursor) -> Segment:
    target = cursor.next_seq
    pos, last = SEGMENT_HEADER_SIZE, None
    while pos + rec.HEADER_SIZE <= seg.size:
        head = seg.read(pos, rec.HEADER_SIZE)
        _c, _f, _r, key_len, value_len, seq, _e = rec.HEADER.unpack_from(head)
        if seq == target:
            break
        if seq > target:
            raise HistoryGone(f"{seg.path}: seq {target} is missing (found {seq})")
        last = seq
        pos += rec.HEADER_SIZE + key_len + value_len
    else:
        if pos != seg.size:
            raise HistoryGone(f"{seg.path}: a record header at offset {pos} is cut short")
        i = appends.index(seg)
        if i + 1 < len(appends):
            nxt = appends[i + 1]
            if nxt.min_seq != target:
                raise HistoryGone(f"the log has no record with seq {target} (compaction "
                                  f"reclaimed it)")
            cursor.segment_id, cursor.offset = nxt.id, SEGMENT_HEADER_SIZE
            return nxt
        if target != (seg.min_seq if last is None else last + 1):
            raise HistoryGone(f"seq {target} is past the end of the log")
    cursor.segment_id, cursor.offset = seg.id, pos
    return seg


def compactable(sealed: Sequence[Segment], active: Segment | None, pin: int | None
                ) -> list[Segment]:
    """The sealed segments compaction may take when history from seq ``pin`` on must stay
    readable (None: all of them).

    A sealed append segment holds the seqs from its ``min_seq`` up to the next append
    segment's ``min_seq`` minus one; one holding any seq >= ``pin`` is kept, and so is every
    segment after it in load order. Keeping a *suffix* keeps compaction exact: its inputs
    still hold every older version of any key they hold (the kept segments are all newer),
    and its outputs, ordered by the largest seq they hold, still load before the kept ones.
    """
    if pin is None:
        return list(sealed)
    appends = [s for s in sealed if s.kind == KIND_APPEND]
    if active is not None:
        appends.append(active)
    for seg, nxt in itertools.pairwise(appends):
        if nxt.min_seq > pin:  # seg holds seqs up to nxt.min_seq - 1 >= pin
            cut = list(sealed).index(seg)
            return list(sealed[:cut])
    return list(sealed)
