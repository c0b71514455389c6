"""Replay of one segment's records: the rules that decide what a scan of a segment commits.

One code applies them for every reader of segments (LevelDB's one log reader with a
``Reporter``, serving recovery, repair and dump):

* recovery (``recovery.Loader``) indexes the committed records and counts the damage;
* ``bitkv check`` files an issue for each damaged region, dropped batch and torn tail;
* repair salvages through recovery's loader, and sealing builds a hint through it.

The rules (docs/format.md, "The batch commit rule" and "Recovery policy"):

* The durable prefix (``[start, durable_end)``) is scanned as a region of its own: its end is a
  write boundary (an fsync covers whole writes), and damage inside it is never a torn write.
* In an append segment with a valid header (``order_seq`` given) the resync search after damage
  accepts only a record whose seq can follow the largest seq seen so far.
* The batch commit rule: a pending batch commits at its ``BATCH_LAST`` member; a record out of
  sequence, a plain record, damage or the end of the segment drops it.
* With ``tail_rule`` (the last segment in load order, an append segment): everything after the
  last committed record that is damage running to the end, or an uncommitted batch at the end,
  is one torn write, never below the durable end. Its events are not reported one by one: the
  reporter hears of it once (:meth:`Reporter.torn_tail`), and the seqs seen in it are given
  back when nothing committed lies between the torn write and the durable end.

A damaged segment header is salvaged the same way by everyone, too: :func:`salvage_header`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from . import manifest, record
from . import segment as seg_mod
from .record import Damage, ScanBuffer, ScannedRecord

# A caller's inlined fast path for runs of intact records (recovery's, for reopen speed):
# ``plain_run(pos, limit, max_seq)`` applies records from ``pos`` on, whole batches included,
# under the same rules, and returns (where it stopped, the largest seq up to there). It stops
# at the first record it does not handle (damage, a broken batch, an unknown flag), at the
# start of the batch holding it; the general replay takes over from there.
PlainRun = Callable[[int, int, int], tuple[int, int]]

# Why a pending batch was dropped (check's issue texts; recovery only counts).
WHY_DAMAGE = "damaged bytes follow at offset {}"
WHY_NEW_BATCH = "another batch starts at offset {}"
WHY_OUT_OF_SEQUENCE = "its first record is missing or out of sequence"
WHY_PLAIN = "a plain record follows at offset {}"
WHY_END = "the segment ends before the batch does"


class Reporter(Protocol):
    """What a replay tells its caller, in file order (the torn tail last)."""

    def intact(self, rec: ScannedRecord) -> None:
        """Every intact record the general replay scans, committed or not, before it is
        committed or dropped (records a ``plain_run`` applies are not passed here)."""

    def record(self, rec: ScannedRecord) -> None:
        """A committed record: apply it (a batch's members in order, once it commits)."""

    def damage(self, damage: Damage, durable: bool, durable_tail: bool) -> None:
        """A damaged region that is corruption, not a torn write. ``durable``: it lies before
        the durable end. ``durable_tail``: it runs to the durable end of the segment under the
        tail rule (bit rot in an acknowledged write where a torn one would otherwise be)."""

    def dropped_batch(self, members: list[ScannedRecord], why: str) -> None:
        """Intact members of a batch that never committed (outside a torn tail)."""

    def torn_tail(self, offset: int, length: int, dropped: int, damage_at: int | None) -> None:
        """Bytes ``[offset, offset + length)`` hold no committed record and are a torn write:
        a writable open truncates them. ``dropped``: intact batch members inside them;
        ``damage_at``: where the damage running to the end starts, if there is some."""


@dataclass(frozen=True)
class Replayed:
    """How a replay ended. ``torn_at`` is where the torn tail starts, None if there is none."""

    max_seq: int  # the largest seq seen, those of a torn tail given back where the rule says
    applied_end: int  # the end of the last committed record (``start`` if none)
    torn_at: int | None


def replay(buf: ScanBuffer, start: int, end: int, reporter: Reporter, *,
           durable_end: int = 0, tail_rule: bool = False, order_seq: int | None = None,
           max_seq: int = 0, plain_run: PlainRun | None = None) -> Replayed:
    """Replay ``buf[start:end]`` (one segment's bytes at their file offsets) to ``reporter``.

    ``durable_end``: fsynced up to there. ``tail_rule``: the segment is the last in load order
    and an append segment. ``order_seq``: the header's, for an append segment whose header is
    valid (seqs then ascend, which narrows the resync search); None otherwise. ``max_seq``: the
    largest seq loaded before this segment (or before ``start``).
    """
    durable_end = min(durable_end, end)
    # Bound the resync search where damage running to the end is a torn tail (and truncated):
    # see record.TAIL_RESYNC_CANDIDATES. Never in durable bytes.
    tail_budget = record.TAIL_RESYNC_CANDIDATES if tail_rule else None
    pending: list[ScannedRecord] = []
    # Events past the durable end under the tail rule, after the last committed record: they
    # are reported once a record commits after them, or swallowed by a torn tail.
    held: list[Callable[[], None]] = []
    held_dropped = 0  # batch members among them
    torn = False
    damage_at: int | None = None
    pos = start
    applied_end = start
    applied_max_seq = max_seq

    def release() -> None:
        nonlocal held_dropped
        for event in held:
            event()
        held.clear()
        held_dropped = 0

    def drop(members: list[ScannedRecord], why: str, hold: bool) -> None:
        nonlocal held_dropped
        if not members:
            return
        if hold:
            held.append(partial(reporter.dropped_batch, members, why))
            held_dropped += len(members)
        else:
            reporter.dropped_batch(members, why)

    while pos < end:
        in_durable = pos < durable_end
        limit = durable_end if in_durable else end
        if plain_run is not None and not pending:
            # Nothing is held here either: the general path below hands back only right after
            # a commit (which releases what was held), or at a region's end.
            ran, seq = plain_run(pos, limit, max_seq)
            if ran > pos:
                pos, max_seq = ran, seq
                applied_end, applied_max_seq = pos, max_seq
            if pos >= limit:
                if limit == end:
                    break
                continue
        # The general path, until the log is back to plain records (then the fast path again).
        hold = tail_rule and not in_durable
        first_seq = max(order_seq, max_seq + 1) if order_seq is not None else None
        budget = None if in_durable else tail_budget
        for item in record.scan(buf, pos, limit, first_seq=first_seq, max_candidates=budget):
            if isinstance(item, Damage):
                pos = item.offset + item.length
                if item.tail and hold:
                    held_dropped += len(pending)
                    pending = []
                    torn = True
                    damage_at = item.offset
                    continue
                drop(pending, WHY_DAMAGE.format(item.offset), hold)
                pending = []
                durable_tail = in_durable and item.tail and tail_rule
                if hold:
                    held.append(partial(reporter.damage, item, False, False))
                else:
                    reporter.damage(item, in_durable, durable_tail)
                continue
            pos = item.offset + item.size
            reporter.intact(item)
            if item.seq > max_seq:
                max_seq = item.seq
            flags = item.flags
            if flags & record.BATCH:
                if flags & record.BATCH_FIRST:
                    drop(pending, WHY_NEW_BATCH.format(item.offset), hold)
                    pending = [item]
                elif pending and item.seq == pending[-1].seq + 1:
                    pending.append(item)
                else:
                    drop([*pending, item], WHY_OUT_OF_SEQUENCE, hold)
                    pending = []
                    continue
                if not flags & record.BATCH_LAST:
                    continue
                committed = pending
                pending = []
            else:
                drop(pending, WHY_PLAIN.format(item.offset), hold)
                pending = []
                committed = [item]
            release()
            for rec in committed:
                reporter.record(rec)
            applied_end = pos
            applied_max_seq = max_seq
            if plain_run is not None:
                break  # back to the fast path
        else:
            if limit == end:
                break  # the scan reached the end
            pos = limit
    if pending:
        if tail_rule and pending[0].offset >= durable_end:
            held_dropped += len(pending)
            torn = True
        else:
            # Outside the tail: what was held (nothing, unless the tail rule holds) goes first.
            release()
            reporter.dropped_batch(pending, WHY_END)
    if not torn:
        release()
        return Replayed(max_seq, applied_end, None)
    # Everything after the last committed record is damage or uncommitted batches: one torn
    # write (a power cut may garble several unsynced ones). Never below the durable end: what
    # an fsync covered stays, damaged or not. Its seqs are given back when it starts right
    # after the last committed record.
    torn_at = max(applied_end, durable_end)
    dropped = held_dropped
    held.clear()
    if torn_at == applied_end:
        max_seq = applied_max_seq
    reporter.torn_tail(torn_at, end - torn_at, dropped, damage_at)
    return Replayed(max_seq, applied_end, torn_at)


# -- damaged segment headers ------------------------------------------------------------------


def rebuilt_header(entry: manifest.ManifestEntry) -> seg_mod.SegmentHeader:
    """The header of a segment the MANIFEST lists, rebuilt from its entry (which knows the
    kind, the load position and the nonce): its records are used as usual."""
    return seg_mod.SegmentHeader(entry.kind, entry.order_seq, entry.order_seq, entry.nonce)


@dataclass(frozen=True)
class SalvagedHeader:
    """What a segment with a damaged header, and no MANIFEST entry to rebuild it from, is."""

    header: seg_mod.SegmentHeader | None  # guessed from its records; None: no intact record
    torn_creation: bool  # no intact record, the newest segment and short: a torn creation


def salvage_header(buf: ScanBuffer, size: int, *, newest: bool) -> SalvagedHeader:
    """Guess the header of a segment whose header is damaged from its intact records
    (docs/format.md, "Damaged segment headers"): strictly ascending seqs make an append
    segment with ``order_seq`` = the first seq, anything else a compacted one with
    ``order_seq`` = the largest; nonce 0. No record at all, in the newest segment of at most
    two headers' length, is a creation a crash tore (a writable open removes it)."""
    seqs = [r.seq for r in record.scan(buf, 0, size) if isinstance(r, ScannedRecord)]
    if not seqs:
        return SalvagedHeader(None, newest and size <= seg_mod.HEADER_SIZE * 2)
    if all(a < b for a, b in itertools.pairwise(seqs)):
        header = seg_mod.SegmentHeader(seg_mod.KIND_APPEND, seqs[0], seqs[0], 0)
    else:
        header = seg_mod.SegmentHeader(seg_mod.KIND_COMPACTED, max(seqs), min(seqs), 0)
    return SalvagedHeader(header, False)
