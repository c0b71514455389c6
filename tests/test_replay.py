"""bitkv.replay: the one replay of a segment's records that recovery, check and repair share.

The unit tests drive :func:`replay.replay` over hand-made buffers with a recording reporter;
the agreement test garbles the tail of real stores and checks that ``bitkv check`` reports
exactly what the next writable open truncates and counts as damage (one code decides both).
"""

from __future__ import annotations

import os
import random

import pytest
from conftest import forget_fsyncs, newest_segment

import bitkv
from bitkv import record, replay
from bitkv import segment as seg_mod
from bitkv.check import check
from bitkv.record import Damage, ScannedRecord

B, F, L = record.BATCH, record.BATCH_FIRST, record.BATCH_LAST


class Recorder:
    """A reporter that writes down every event as a tuple."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.intact_offsets: list[int] = []

    def intact(self, rec: ScannedRecord) -> None:
        self.intact_offsets.append(rec.offset)

    def record(self, rec: ScannedRecord) -> None:
        self.events.append(("record", rec.key))

    def damage(self, damage: Damage, durable: bool, durable_tail: bool) -> None:
        self.events.append(("damage", damage.offset, damage.length, durable, durable_tail))

    def dropped_batch(self, members: list[ScannedRecord], why: str) -> None:
        self.events.append(("dropped", [m.key for m in members], why))

    def torn_tail(self, offset: int, length: int, dropped: int, damage_at: int | None) -> None:
        self.events.append(("torn", offset, length, dropped, damage_at))


def _log(*parts: tuple[bytes, int, int] | bytes) -> tuple[bytes, list[int]]:
    """A buffer of records (key, seq, flags) and raw garbage bytes; and each part's offset."""
    buf = bytearray()
    offsets = []
    for part in parts:
        offsets.append(len(buf))
        if isinstance(part, bytes):
            buf += part
        else:
            key, seq, flags = part
            buf += record.encode(key, b"v" * 20, seq, 0, flags)
    return bytes(buf), offsets


GARBAGE = b"\xff" * 40


def test_plain_records_and_a_committed_batch_are_replayed_in_order() -> None:
    buf, _ = _log((b"a", 1, 0), (b"b", 2, B | F), (b"c", 3, B | L), (b"d", 4, 0))
    rep = Recorder()
    done = replay.replay(buf, 0, len(buf), rep, tail_rule=True, order_seq=1)
    assert rep.events == [("record", b"a"), ("record", b"b"), ("record", b"c"),
                          ("record", b"d")]
    assert done == replay.Replayed(4, len(buf), None)


def test_everything_after_the_last_commit_is_one_torn_tail_under_the_tail_rule() -> None:
    # Damage followed by an uncommitted batch member, then damage to the end: nothing after
    # record a committed, so it is all one torn write, reported once (not as corruption).
    buf, at = _log((b"a", 1, 0), GARBAGE, (b"b", 3, B | F), GARBAGE)
    rep = Recorder()
    done = replay.replay(buf, 0, len(buf), rep, tail_rule=True)
    assert rep.events == [("record", b"a"), ("torn", at[1], len(buf) - at[1], 1, at[3])]
    assert done.torn_at == at[1]
    assert done.max_seq == 1  # the torn write's seqs are given back


def test_the_same_bytes_elsewhere_are_corruption_and_a_dropped_batch() -> None:
    buf, at = _log((b"a", 1, 0), GARBAGE, (b"b", 3, B | F), GARBAGE)
    rep = Recorder()
    done = replay.replay(buf, 0, len(buf), rep, tail_rule=False)
    assert rep.events == [
        ("record", b"a"),
        ("damage", at[1], len(GARBAGE), False, False),
        ("dropped", [b"b"], replay.WHY_DAMAGE.format(at[3])),
        ("damage", at[3], len(GARBAGE), False, False),
    ]
    assert done.torn_at is None and done.max_seq == 3


def test_held_events_are_reported_when_a_record_commits_after_them() -> None:
    buf, at = _log((b"a", 1, 0), (b"b", 2, B | F), (b"c", 3, 0))
    rep = Recorder()
    replay.replay(buf, 0, len(buf), rep, tail_rule=True)
    assert rep.events == [("record", b"a"), ("dropped", [b"b"], replay.WHY_PLAIN.format(at[2])),
                          ("record", b"c")]


def test_no_torn_tail_below_the_durable_end() -> None:
    buf, at = _log((b"a", 1, 0), GARBAGE, (b"b", 2, 0), GARBAGE)
    rep = Recorder()
    done = replay.replay(buf, 0, len(buf), rep, tail_rule=True, durable_end=at[2])
    # The garbage before the durable end is bit rot, at its end too; the one past it is torn.
    assert rep.events[0] == ("record", b"a")
    assert rep.events[1] == ("damage", at[1], len(GARBAGE), True, True)
    assert rep.events[2] == ("record", b"b")
    assert rep.events[3] == ("torn", at[3], len(GARBAGE), 0, at[3])
    assert done.torn_at == at[3]


def test_an_uncommitted_batch_at_the_end_is_torn_from_the_durable_end_at_least() -> None:
    buf, at = _log((b"a", 1, 0), (b"b", 2, B | F), (b"c", 3, B))
    rep = Recorder()
    done = replay.replay(buf, 0, len(buf), rep, tail_rule=True, durable_end=at[2])
    assert rep.events == [("record", b"a"), ("dropped", [b"b", b"c"], replay.WHY_END)]
    assert done.torn_at is None  # the batch started before the durable end: not torn
    rep = Recorder()
    done = replay.replay(buf, 0, len(buf), rep, tail_rule=True)
    assert rep.events == [("record", b"a"), ("torn", at[1], len(buf) - at[1], 2, None)]


def test_an_out_of_sequence_member_drops_itself_with_the_batch() -> None:
    buf, _ = _log((b"a", 1, B | F), (b"b", 5, B | L), (b"c", 6, 0))
    rep = Recorder()
    replay.replay(buf, 0, len(buf), rep)
    assert rep.events == [("dropped", [b"a", b"b"], replay.WHY_OUT_OF_SEQUENCE),
                          ("record", b"c")]


def test_a_plain_run_fast_path_sees_the_same_log() -> None:
    """A caller's fast path takes the plain runs; the replay the rest, with the same result."""
    buf, at = _log((b"a", 1, 0), (b"b", 2, 0), GARBAGE, (b"c", 4, 0), (b"d", 5, B | F))
    slow = Recorder()
    plain = replay.replay(buf, 0, len(buf), slow, tail_rule=True)
    fast = Recorder()
    ran: list[int] = []

    def plain_run(pos: int, limit: int, max_seq: int) -> tuple[int, int]:
        # Takes only record "a", as a fast path stopping early may.
        if pos == 0:
            fast.events.append(("record", b"a"))
            ran.append(pos)
            return at[1], 1
        return pos, max_seq

    done = replay.replay(buf, 0, len(buf), fast, tail_rule=True, plain_run=plain_run)
    assert ran == [0]
    assert fast.events == slow.events
    assert done == plain


def test_salvage_header_guesses_from_the_seqs() -> None:
    ascending, _ = _log(b"\x00" * seg_mod.HEADER_SIZE, (b"a", 7, 0), (b"b", 8, 0))
    got = replay.salvage_header(ascending, len(ascending), newest=False)
    assert got.header is not None
    assert (got.header.kind, got.header.order_seq) == (seg_mod.KIND_APPEND, 7)
    mixed, _ = _log(b"\x00" * seg_mod.HEADER_SIZE, (b"a", 9, 0), (b"b", 3, 0))
    got = replay.salvage_header(mixed, len(mixed), newest=True)
    assert got.header is not None
    assert (got.header.kind, got.header.order_seq) == (seg_mod.KIND_COMPACTED, 9)
    empty = b"\x01" * 50
    assert replay.salvage_header(empty, 50, newest=True) == replay.SalvagedHeader(None, True)
    assert replay.salvage_header(empty, 50, newest=False) == replay.SalvagedHeader(None, False)


def _garble_tail(path: str, rng: random.Random) -> None:
    seg = newest_segment(path)
    size = os.path.getsize(seg)
    with open(seg, "r+b") as fh:
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(seg_mod.HEADER_SIZE, size)
            fh.seek(at)
            fh.write(bytes(rng.randrange(256) for _ in range(rng.randint(1, 60))))
        fh.seek(0, os.SEEK_END)
        if rng.random() < 0.5:  # an uncommitted batch member, or garbage, at the very end
            fh.write(record.encode(b"torn", b"t" * 30, 10_000, 0, B | F)
                     if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(45)))


@pytest.mark.parametrize("seed", range(24))
def test_check_reports_what_the_next_open_truncates_and_counts(tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    path = str(tmp_path / "db")
    with bitkv.open(path, auto_compact=False, sync="never") as db:
        for i in range(rng.randint(5, 40)):
            if rng.random() < 0.3:
                with db.batch() as b:
                    for j in range(rng.randint(1, 4)):
                        b.put(b"b%d-%d" % (i, j), b"x" * rng.randint(1, 80))
            else:
                db.put(b"k%d" % rng.randint(0, 20), b"y" * rng.randint(1, 80))
    if rng.random() < 0.7:
        forget_fsyncs(path)  # else the close's fsync vouches for the bytes: bit rot
    _garble_tail(path, rng)
    seg = newest_segment(path)
    name = os.path.basename(seg)
    size = os.path.getsize(seg)
    found = check(path)
    torn = [i for i in found.issues if i.file == name and i.kind == "torn-tail"]
    damaged = sorted((i.offset, i.length) for i in found.issues
                     if i.file == name and i.kind == "damaged-records")
    with bitkv.open(path, auto_compact=False) as db:
        report = db.recovery_report
    assert sorted((d[1], d[2]) for d in report.damage if d[0] == name) == damaged
    if torn:
        assert torn[0].offset + torn[0].length == size
        assert os.path.getsize(seg) == torn[0].offset
        assert report.truncated_bytes == torn[0].length
    else:
        assert os.path.getsize(seg) == size
        assert report.truncated_bytes == 0


def test_damage_then_an_uncommitted_batch_at_the_tail_is_all_torn_for_check_too(tmp_path):
    """Damage, an intact batch member that never committed, damage to the end: recovery
    truncates all of it as one torn write. ``check`` once filed the first damage as an error
    and tore only from the batch member on; now one replay decides both."""
    path = str(tmp_path / "db")
    with bitkv.open(path, auto_compact=False, sync="never") as db:
        for i in range(5):
            db.put(b"k%d" % i, b"v" * 30)
    forget_fsyncs(path)
    seg = newest_segment(path)
    with open(seg, "rb") as fh:
        buf = fh.read()
    last = [r for r in record.scan(buf, seg_mod.HEADER_SIZE) if isinstance(r, ScannedRecord)][-1]
    clean = len(buf)
    with open(seg, "ab") as fh:
        fh.write(GARBAGE + record.encode(b"torn", b"t" * 30, last.seq + 1, 0, B | F) + GARBAGE)
    found = check(path)
    assert found.healthy, found.issues
    torn = [i for i in found.issues if i.kind == "torn-tail"]
    assert [(i.offset, i.length) for i in torn] == [(clean, os.path.getsize(seg) - clean)]
    with bitkv.open(path, auto_compact=False) as db:
        assert db.recovery_report.damage == []
        assert db.get(b"k4") == b"v" * 30
    assert os.path.getsize(seg) == clean
