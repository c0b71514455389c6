"""Recovery on open: torn tails at every byte, zero/garbage tails, damage in the middle of a
segment, bit flips, damaged segment headers."""

from __future__ import annotations

import os
import random
import shutil

import pytest
from conftest import append_bytes, flip_bit, forget_fsyncs, newest_segment, segment_files

import bitkv
from bitkv import record
from bitkv import segment as seg_mod

SEG_HDR = seg_mod.HEADER_SIZE
REC_HDR = record.HEADER_SIZE


@pytest.fixture
def db_path(fast_db_path):
    """Stores of this module live on tmpfs when available (see conftest.fast_base)."""
    return fast_db_path


def _write(path: str, data: bytes) -> None:
    """Replace a file's bytes as a crash before the covering fsync would (see forget_fsyncs)."""
    with open(path, "wb") as fh:
        fh.write(data)
    forget_fsyncs(os.path.dirname(path))


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _fill(db_path, items, **kwargs):
    """Write ``items`` (list of (key, value)) in order into a fresh store, close it, and return
    [(key, offset, size)] of each record in the newest segment (offsets computed by hand)."""
    with bitkv.open(db_path, sync="never", **kwargs) as db:
        for k, v in items:
            db.put(k, v)
    # These tests tear and garble tails as a crash before the fsync would: see forget_fsyncs.
    forget_fsyncs(db_path)
    seg = newest_segment(db_path)
    size = os.path.getsize(seg)
    spans = []
    pos = size
    for k, v in reversed(items):
        rec_size = REC_HDR + len(k) + len(v)
        if pos - rec_size < SEG_HDR:
            break
        pos -= rec_size
        spans.append((k, pos, rec_size))
    spans.reverse()
    # Sanity: the records we computed tile the segment from its header to its end.
    assert spans and spans[-1][1] + spans[-1][2] == size
    return seg, spans


def _recovery(db):
    return db.stats()["recovery"]


ITEMS = [(b"key-%d" % i, b"value-%d-" % i + bytes([65 + i]) * (10 + 3 * i)) for i in range(6)]


# -- torn tails -----------------------------------------------------------------------------


@pytest.mark.parametrize("readonly_first", [False, True])
def test_torn_tail_at_every_offset_of_the_last_record(db_path, readonly_first):
    seg, spans = _fill(db_path, ITEMS)
    pristine = _read(seg)
    _, last_off, last_size = spans[-1]
    expected = dict(ITEMS[:-1])
    last_key = ITEMS[-1][0]
    for cut in range(last_off, last_off + last_size):
        _write(seg, pristine[:cut])
        if readonly_first:
            # A reader sees the same data but changes nothing on disk.
            with bitkv.open(db_path, readonly=True) as db:
                assert dict(db.items()) == expected, cut
                assert _recovery(db)["truncated_bytes"] == cut - last_off
            assert os.path.getsize(seg) == cut
        with bitkv.open(db_path, sync="never") as db:
            assert dict(db.items()) == expected, cut
            assert db.get(last_key) is None
            assert last_key not in db
            assert _recovery(db)["truncated_bytes"] == cut - last_off
            assert _recovery(db)["corrupt_bytes"] == 0
            assert os.path.getsize(seg) == last_off, f"cut at {cut}: not truncated"
            db.put(b"after", b"crash-%d" % cut)
        with bitkv.open(db_path, sync="never") as db:
            assert _recovery(db)["truncated_bytes"] == 0
            assert _recovery(db)["corrupt_bytes"] == 0
            assert db.get(b"after") == b"crash-%d" % cut
            assert dict(db.items()) == {**expected, b"after": b"crash-%d" % cut}


def test_torn_tail_when_last_record_is_alone_in_a_fresh_segment(db_path):
    big = b"B" * 5000  # bigger than the segment limit: the store starts a new segment after it
    items = [(b"a", b"1"), (b"big", big), (b"last", b"L" * 40)]
    seg, spans = _fill(db_path, items, max_segment_size=4096)
    assert len(segment_files(db_path)) >= 2
    assert spans == [(b"last", SEG_HDR, REC_HDR + 4 + 40)]
    pristine = _read(seg)
    for cut in range(SEG_HDR, len(pristine)):
        _write(seg, pristine[:cut])
        with bitkv.open(db_path, max_segment_size=4096, sync="never") as db:
            assert db.get(b"a") == b"1"
            assert db.get(b"big") == big
            assert db.get(b"last") is None
            assert os.path.getsize(seg) == SEG_HDR
            db.put(b"after", b"x")
        with bitkv.open(db_path, max_segment_size=4096) as db:
            assert db.get(b"after") == b"x"
            assert _recovery(db)["truncated_bytes"] == 0


def test_torn_header_of_a_fresh_segment_at_every_offset(db_path, tmp_path):
    """A segment the MANIFEST lists had its header fsynced before it was listed, so no crash
    can tear it: a cut header is damage from outside, and opening refuses (naming the file)
    rather than guess; repair salvages the rest. (Before the MANIFEST, such a segment was
    taken for a torn creation and deleted.)"""
    big = b"B" * 5000
    with bitkv.open(db_path, max_segment_size=4096, sync="never") as db:
        db.put(b"a", b"1")
        db.put(b"big", big)
    # Reopening a store whose newest segment is over the limit starts a fresh, empty segment.
    with bitkv.open(db_path, max_segment_size=4096, sync="never"):
        pass
    fresh = newest_segment(db_path)
    assert len(segment_files(db_path)) == 3  # a, big, and the fresh one
    assert os.path.getsize(fresh) == SEG_HDR
    pristine_dir = str(tmp_path / "pristine")
    shutil.copytree(db_path, pristine_dir)
    for cut in range(0, SEG_HDR, 7):
        shutil.rmtree(db_path)
        shutil.copytree(pristine_dir, db_path)
        with open(fresh, "r+b") as fh:
            fh.truncate(cut)
        for readonly in (True, False):
            with pytest.raises(bitkv.CorruptionError, match=os.path.basename(fresh)):
                bitkv.open(db_path, max_segment_size=4096, readonly=readonly)
        assert not bitkv.check(db_path).healthy
        bitkv.repair(db_path)
        with bitkv.open(db_path, max_segment_size=4096) as db:
            assert db.get(b"a") == b"1"
            assert db.get(b"big") == big
            assert len(db) == 2
            db.put(b"after", b"%d" % cut)
        with bitkv.open(db_path, max_segment_size=4096) as db:
            assert db.get(b"after") == b"%d" % cut
            assert len(db) == 3


@pytest.mark.parametrize("length", [1, 2, 27, 28, 29, 100, 4096, 10000])
@pytest.mark.parametrize("kind", ["zeros", "garbage", "garbage-ending-in-zero"])
def test_zero_filled_and_garbage_tails_are_truncated(db_path, length, kind):
    seg, _ = _fill(db_path, ITEMS)
    size = os.path.getsize(seg)
    if kind == "zeros":
        tail = bytes(length)
    elif kind == "garbage":
        tail = random.Random(length).randbytes(length)
    else:  # no zero byte except the last: the resync's candidate runs off the end
        tail = bytes(random.Random(length).randrange(1, 256) for _ in range(length - 1)) + b"\0"
    append_bytes(seg, tail)
    with bitkv.open(db_path) as db:
        assert dict(db.items()) == dict(ITEMS)
        assert os.path.getsize(seg) == size
        assert _recovery(db)["truncated_bytes"] == length
        assert _recovery(db)["corrupt_bytes"] == 0
        db.put(b"more", b"m")
    with bitkv.open(db_path) as db:
        assert dict(db.items()) == {**dict(ITEMS), b"more": b"m"}


@pytest.mark.parametrize("kind", ["zeros", "garbage"])
def test_last_record_overwritten_in_place_is_dropped(db_path, kind):
    """Size metadata reached disk but the data did not (zeros), or the data is garbage."""
    items = [*ITEMS, (ITEMS[0][0], b"newer value of key-0")]
    seg, spans = _fill(db_path, items)
    _, off, size = spans[-1]
    data = bytearray(_read(seg))
    data[off:] = bytes(size) if kind == "zeros" else random.Random(7).randbytes(size)
    _write(seg, bytes(data))
    with bitkv.open(db_path) as db:
        # key-0 falls back to its previous (intact) version; nothing else is touched.
        assert dict(db.items()) == dict(ITEMS)
        assert os.path.getsize(seg) == off
        assert _recovery(db)["truncated_bytes"] == size


# -- damage in the middle of a segment -------------------------------------------------------


@pytest.mark.parametrize("victim", [0, 2, 4])
@pytest.mark.parametrize("kind", ["zeros", "garbage", "bitflip"])
def test_damage_in_the_middle_keeps_the_records_after_it(db_path, victim, kind):
    seg, spans = _fill(db_path, ITEMS)
    size = os.path.getsize(seg)
    key, off, rec_size = spans[victim]
    data = bytearray(_read(seg))
    if kind == "zeros":
        data[off : off + rec_size] = bytes(rec_size)
    elif kind == "garbage":
        data[off : off + rec_size] = random.Random(victim).randbytes(rec_size)
    else:
        data[off + rec_size - 1] ^= 0x10
    _write(seg, bytes(data))
    expected = {k: v for k, v in ITEMS if k != key}
    for readonly in (True, False, False):
        with bitkv.open(db_path, readonly=readonly) as db:
            assert dict(db.items()) == expected
            assert db.get(key) is None
            assert key not in db
            rep = _recovery(db)
            assert rep["corrupt_bytes"] == rec_size
            assert rep["damaged_regions"] == 1
            assert rep["truncated_bytes"] == 0
            assert os.path.getsize(seg) == size, "intact records after damage were truncated"
    with bitkv.open(db_path) as db:
        db.put(b"new", b"n")
    with bitkv.open(db_path) as db:
        assert dict(db.items()) == {**expected, b"new": b"n"}
        assert _recovery(db)["corrupt_bytes"] == rec_size


def test_damage_in_an_older_segment_is_skipped_not_truncated(db_path):
    # auto_compact=False: no background hints, so the open scans (and so finds) the damage.
    with bitkv.open(db_path, max_segment_size=4096, sync="never", auto_compact=False) as db:
        for i in range(300):
            db.put(b"k%03d" % i, b"v" * 30)
    files = segment_files(db_path)
    assert len(files) >= 3
    old = files[0]
    size = os.path.getsize(old)
    data = bytearray(_read(old))
    # Destroy the last 100 bytes of the oldest segment: in a sealed segment that is damage,
    # not a torn write, and nothing is truncated.
    data[-100:] = bytes(100)
    _write(old, bytes(data))
    with bitkv.open(db_path, max_segment_size=4096) as db:
        rep = _recovery(db)
        # The damaged region starts at the first record the zeros reach into.
        assert 100 <= rep["corrupt_bytes"] < 100 + REC_HDR + 4 + 30
        assert rep["truncated_bytes"] == 0
        assert os.path.getsize(old) == size
        missing = [i for i in range(300) if db.get(b"k%03d" % i) is None]
        assert 1 <= len(missing) <= 3
        assert all(db.get(b"k%03d" % i) == b"v" * 30 for i in range(300) if i not in missing)


def test_damaged_tail_then_intact_records_in_newest_segment(db_path):
    """Mid-segment damage and a torn tail in the same newest segment."""
    seg, spans = _fill(db_path, ITEMS)
    key, off, rec_size = spans[1]
    flip_bit(seg, off + 3)
    _, last_off, last_size = spans[-1]
    with open(seg, "r+b") as fh:
        fh.truncate(last_off + last_size // 2)
    with bitkv.open(db_path) as db:
        assert dict(db.items()) == {k: v for k, v in ITEMS[:-1] if k != key}
        assert _recovery(db)["corrupt_bytes"] == rec_size
        assert _recovery(db)["truncated_bytes"] == last_size // 2
        assert os.path.getsize(seg) == last_off


# -- bit flips: wrong bytes are never returned ----------------------------------------------


@pytest.mark.parametrize("where", ["sealed", "active"])
def test_bit_flips_under_an_open_store_raise_corruption_error(db_path, where):
    """The index points at the damaged record: the read fails loudly."""
    with bitkv.open(db_path, max_segment_size=4096, sync="never") as db:
        if where == "sealed":
            db.put(b"target", b"T" * 20)
            for i in range(200):  # push target's segment out of the active slot
                db.put(b"filler-%d" % i, b"f" * 30)
        else:
            for i in range(5):
                db.put(b"filler-%d" % i, b"f" * 30)
            db.put(b"target", b"T" * 20)
            db.put(b"after", b"a")
        seg = segment_files(db_path)[0] if where == "sealed" else newest_segment(db_path)
        data = _read(seg)
        off = data.index(b"target" + b"T" * 20) - REC_HDR
        assert record.decode(data[off : off + REC_HDR + 26], b"target")[1] == b"T" * 20
        for bit in range((REC_HDR + 26) * 8):
            flip_bit(seg, off + bit // 8, bit % 8)
            with pytest.raises(bitkv.CorruptionError):
                db.get(b"target")
            with pytest.raises(bitkv.CorruptionError):
                dict(db.items(prefix=b"target"))
            flip_bit(seg, off + bit // 8, bit % 8)
            assert db.get(b"target") == b"T" * 20


def test_bit_flips_then_reopen_never_return_wrong_bytes(db_path):
    """Recovery skips the damaged record: the key reads as absent, or raises (its newest
    record is damaged but its key intact), or, when the damage hides which key the record
    was for, reads as its older version. Never the damaged bytes."""
    items = [(b"k", b"old-version"), (b"a", b"1"), (b"k", b"new-version"), (b"b", b"2"),
             (b"c", b"3")]
    seg, spans = _fill(db_path, items)
    pristine = _read(seg)
    _, off, size = spans[2]
    outcomes = set()
    for bit in range(size * 8):
        flip_bit(seg, off + bit // 8, bit % 8)
        # Every bit with a reader; one bit per byte also with a writer (which fsyncs).
        for readonly in (True, False) if bit % 8 == 3 else (True,):
            with bitkv.open(db_path, readonly=readonly) as db:
                try:
                    got = db.get(b"k")
                except bitkv.CorruptionError:
                    got = "corruption-error"
                assert got in (b"old-version", None, "corruption-error"), (bit, got)
                outcomes.add(got)
                assert db.get(b"a") == b"1"
                assert db.get(b"b") == b"2"
                assert db.get(b"c") == b"3"
                assert _recovery(db)["corrupt_bytes"] >= 1
        assert _read(seg) == bytes(
            pristine[: off + bit // 8]
            + bytes([pristine[off + bit // 8] ^ (1 << (bit % 8))])
            + pristine[off + bit // 8 + 1 :]
        ), "recovery changed a segment with damage in the middle"
        flip_bit(seg, off + bit // 8, bit % 8)
    assert "corruption-error" in outcomes  # most flips leave the key readable: detected
    assert outcomes <= {b"old-version", "corruption-error"}


# -- damaged segment headers ----------------------------------------------------------------


def _store_with_three_segments(db_path):
    with bitkv.open(db_path, max_segment_size=4096, sync="never") as db:
        for i in range(100):
            db.put(b"k%03d" % i, b"v" * 60)
    files = segment_files(db_path)
    assert len(files) == 3
    return files


@pytest.mark.parametrize("which", [0, 1, 2])
def test_flipped_bit_in_a_segment_header_keeps_its_records(db_path, which):
    files = _store_with_three_segments(db_path)
    flip_bit(files[which], 10)
    with bitkv.open(db_path, max_segment_size=4096) as db:
        assert len(db) == 100
        assert all(db.get(b"k%03d" % i) == b"v" * 60 for i in range(100))
        assert _recovery(db)["corrupt_bytes"] > 0
        db.put(b"new", b"n")
    with bitkv.open(db_path, max_segment_size=4096) as db:
        assert len(db) == 101
        assert db.get(b"new") == b"n"


def test_damaged_segment_header_is_counted_once(db_path):
    """Found by this suite (fixed in a3bbf6f): the header was reported by open_segments and
    again by the scan from offset 0 (corrupt_bytes 80, damaged_regions 2)."""
    files = _store_with_three_segments(db_path)
    flip_bit(files[1], 10)
    with bitkv.open(db_path, max_segment_size=4096, readonly=True) as db:
        rep = _recovery(db)
        assert (rep["corrupt_bytes"], rep["damaged_regions"]) == (SEG_HDR, 1)


def test_leftover_temp_files_are_removed(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"a", b"1")
    for name in ("000009.data.tmp", "000009.hint.tmp", "BITKV.tmp"):
        _write(os.path.join(db_path, name), b"partial")
    with bitkv.open(db_path, readonly=True) as db:  # a reader removes nothing
        assert db.get(b"a") == b"1"
    assert os.path.exists(os.path.join(db_path, "000009.data.tmp"))
    with bitkv.open(db_path) as db:
        assert db.get(b"a") == b"1"
    assert not [n for n in os.listdir(db_path) if n.endswith(".tmp")]


# -- embedded records: resync must not invent keys ------------------------------------------


def test_torn_tail_inside_a_value_holding_an_implausible_record_invents_no_key(db_path):
    """Found by this suite (fixed in a3bbf6f for records whose seq cannot follow)."""
    embedded = record.encode(b"phantom", b"never written", seq=10**6)
    items = [(b"a", b"1"), (b"blob", b"x" * 50 + embedded + b"y" * 50)]
    seg, spans = _fill(db_path, items)
    _, last_off, last_size = spans[-1]
    with open(seg, "r+b") as fh:
        fh.truncate(last_off + last_size - 20)  # the embedded record is complete on disk
    with bitkv.open(db_path) as db:
        assert db.get(b"blob") is None
        assert sorted(db.keys()) == [b"a"]
        assert os.path.getsize(seg) == last_off


def test_torn_tail_inside_a_value_holding_record_bytes_invents_no_key(db_path):
    # The store numbers records 1, 2, ...: 'a' is seq 1, 'blob' seq 2, so the record a
    # crash would have written next carries seq 3, which is what the embedded one claims.
    embedded = record.encode(b"phantom", b"never written", seq=3)
    items = [(b"a", b"1"), (b"blob", b"x" * 50 + embedded + b"y" * 50)]
    seg, spans = _fill(db_path, items)
    _, last_off, last_size = spans[-1]
    with open(seg, "r+b") as fh:
        fh.truncate(last_off + last_size - 20)  # the embedded record is complete on disk
    with bitkv.open(db_path) as db:
        assert db.get(b"blob") is None
        assert sorted(db.keys()) == [b"a"]
        assert os.path.getsize(seg) == last_off
