"""Damaged bytes are detected and never returned as data.

Every value here is self-describing (bitkv.crashtest.values), so a wrong value cannot pass for
a right one. After each kind of damage (a torn last record cut at every byte, zero- and
garbage-filled tails, a bit flipped in each field of a record in the middle of a segment,
truncated / corrupt / stale / lying / missing hint files) a get either returns the correct
value, raises bitkv.CorruptionError, or reports the key absent because recovery skipped its
record; every other key still reads back exactly; the damage is counted in the recovery
report; and the store takes writes and reopens cleanly afterwards.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest
from conftest import snapshot_dir as snapshot
from conftest import tear

import bitkv
from bitkv import hint, record
from bitkv import segment as seg_mod
from bitkv.crashtest.values import make_value, parse_value

T0 = 1_700_000_000.0
SEGMENT = 4096

FIELDS = {  # byte offsets inside a record, per header field
    "crc": 1, "flags": 4, "reserved": 5, "key_len": 6, "value_len": 9, "seq": 13,
    "expiry": 22, "key": record.HEADER_SIZE + 1, "value": None,
}


def _open(path, **kw):
    kw.setdefault("sync", "never")
    kw.setdefault("auto_compact", False)
    kw.setdefault("max_segment_size", SEGMENT)
    return bitkv.open(path, clock=lambda: T0, **kw)


def build(path: str, *, compact: bool = False, n: int = 40, last_batch: bool = False
          ) -> dict[bytes, bytes]:
    """A store of ``n`` keys, each written exactly once, over several segments."""
    rng = random.Random(n)
    expected = {}
    with _open(path) as db:
        for i in range(n):
            key = b"key-%03d" % i
            value = make_value(key, "1", rng.randint(20, 400))
            db.put(key, value)
            expected[key] = value
            if compact and i == n // 2:
                # Some garbage, or compaction has nothing to reclaim and skips the rewrite.
                db.put(b"scratch", b"1")
                db.put(b"scratch", b"2")
                db.delete(b"scratch")
                db.compact()
        if last_batch:
            with db.batch() as b:
                for i in range(n, n + 3):
                    key = b"key-%03d" % i
                    value = make_value(key, "1", 60)
                    b.put(key, value)
                    expected[key] = value
    return expected


def data_files(path: str) -> list[str]:
    return [os.path.join(path, n) for n in sorted(os.listdir(path))
            if seg_mod.parse_id(n, seg_mod.DATA_SUFFIX) is not None]


def records_of(path: str) -> list[tuple[str, record.ScannedRecord]]:
    out = []
    for f in data_files(path):
        with open(f, "rb") as fh:
            buf = fh.read()
        out += [(f, r) for r in record.scan(buf, seg_mod.HEADER_SIZE)
                if isinstance(r, record.ScannedRecord)]
    return out


def check_store(path: str, expected: dict[bytes, bytes], victims=frozenset()) -> dict:
    """Reopen; every key reads back exactly, except ``victims`` which may also be absent or
    raise CorruptionError. Then write, reopen, and check again. Return the recovery stats."""
    outcomes = {}
    with _open(path) as db:
        stats = db.stats()["recovery"]
        for key, want in expected.items():
            try:
                got = db.get(key)
            except bitkv.CorruptionError:
                assert key in victims, f"{key!r} raised CorruptionError but was not damaged"
                outcomes[key] = "corrupt"
                continue
            if got is None:
                assert key in victims, f"{key!r} vanished but was not damaged"
                outcomes[key] = "absent"
                continue
            assert got == want, f"{key!r} read back wrong bytes: {got[:60]!r}"
            outcomes[key] = "ok"
        listed = set(db.keys())
        assert listed <= set(expected), f"phantom keys {sorted(listed - set(expected))[:3]}"
        db.put(b"after-damage", b"still writable")
    with _open(path) as db:
        assert db.get(b"after-damage") == b"still writable"
        for key, want in expected.items():
            if outcomes[key] == "ok":
                assert db.get(key) == want
    stats["outcomes"] = outcomes
    return stats


# -- torn tails --


@pytest.mark.parametrize("last_batch", [False, True])
def test_torn_last_write_cut_at_every_byte(fast_tmp, last_batch):
    pristine = str(fast_tmp / "pristine")
    expected = build(pristine, n=12, last_batch=last_batch)
    newest = data_files(pristine)[-1]
    recs = [r for f, r in records_of(pristine) if f == newest]
    last = recs[-3] if last_batch else recs[-1]  # the batch is one write of three records
    victims = {r.key for r in recs if r.offset >= last.offset}
    size = os.path.getsize(newest)
    for cut in range(last.offset, size):
        path = str(fast_tmp / f"cut-{cut}")
        shutil.copytree(pristine, path)
        tear(os.path.join(path, os.path.basename(newest)), cut)
        stats = check_store(path, expected, victims)
        assert stats["truncated_bytes"] == cut - last.offset
        assert stats["corrupt_bytes"] == 0
        # All or nothing: a torn batch leaves none of its keys.
        assert {stats["outcomes"][k] for k in victims} == {"absent"}, cut
        shutil.rmtree(path)


@pytest.mark.parametrize("length", [1, 27, 28, 29, 600, 4096])
@pytest.mark.parametrize("fill", ["zeros", "garbage", "record-prefix"])
def test_zero_and_garbage_tails_are_cut_off(fast_tmp, length, fill):
    path = str(fast_tmp / "db")
    expected = build(path, n=10)
    rng = random.Random(length)
    if fill == "zeros":
        tail = bytes(length)
    elif fill == "garbage":
        tail = rng.randbytes(length)
    else:
        whole = record.encode(b"key-999", make_value(b"key-999", "2", 5000), 10**9)
        tail = whole[:length]
    with open(data_files(path)[-1], "ab") as fh:
        fh.write(tail)
    stats = check_store(path, expected)
    assert stats["truncated_bytes"] == length
    assert stats["corrupt_bytes"] == 0


# -- bit flips in the middle of a segment --


def _victim(path: str, which: str) -> tuple[str, record.ScannedRecord]:
    files = data_files(path)
    target = files[-1] if which == "newest" else files[len(files) // 2]
    recs = [r for f, r in records_of(path) if f == target]
    assert len(recs) >= 3, "the victim needs records on both sides"
    return target, recs[len(recs) // 2]


@pytest.mark.parametrize("which", ["older segment", "newest"])
@pytest.mark.parametrize("field", sorted(FIELDS))
def test_bit_flip_in_each_field_of_a_record_mid_segment(fast_tmp, which, field):
    path = str(fast_tmp / "db")
    expected = build(path, n=40)
    target, victim = _victim(path, which)
    at = FIELDS[field]
    if at is None:
        at = victim.size - 3
    for bit in (0, 3, 7):
        copy = str(fast_tmp / f"flip-{bit}")
        shutil.copytree(path, copy)
        name = os.path.join(copy, os.path.basename(target))
        with open(name, "r+b") as fh:
            fh.seek(victim.offset + at)
            (b,) = fh.read(1)
            fh.seek(victim.offset + at)
            fh.write(bytes([b ^ (1 << bit)]))
        stats = check_store(copy, expected, victims={victim.key})
        assert stats["outcomes"][victim.key] in ("absent", "corrupt")
        assert stats["corrupt_bytes"] > 0 and stats["damaged_regions"] >= 1, stats
        assert stats["truncated_bytes"] == 0
        shutil.rmtree(copy)


def test_bit_flips_under_an_open_store_raise_corruption_error(fast_tmp):
    path = str(fast_tmp / "db")
    expected = build(path, n=40)
    recs = records_of(path)
    with _open(path) as db:
        for f, r in recs[::5]:
            with open(f, "r+b") as fh:
                fh.seek(r.offset + r.size - 1)
                (b,) = fh.read(1)
                fh.seek(r.offset + r.size - 1)
                fh.write(bytes([b ^ 1]))
            with pytest.raises(bitkv.CorruptionError):
                db.get(r.key)
        damaged = {r.key for _f, r in recs[::5]}
        for key, want in expected.items():
            if key not in damaged:
                assert db.get(key) == want


def test_random_damage_anywhere_never_returns_wrong_bytes(fast_tmp):
    pristine = str(fast_tmp / "pristine")
    expected = build(pristine, n=60, compact=True)
    rng = random.Random(2024)
    names = sorted(os.listdir(pristine))
    for case in range(60):
        path = str(fast_tmp / f"case-{case}")
        shutil.copytree(pristine, path)
        for _ in range(rng.randint(1, 4)):
            name = os.path.join(path, rng.choice(names))
            with open(name, "r+b") as fh:
                data = bytearray(fh.read())
                if not data:
                    continue
                i = rng.randrange(len(data))
                kind = rng.random()
                if kind < 0.6:
                    data[i] ^= 1 << rng.randrange(8)
                elif kind < 0.8:
                    data[i : i + 512] = bytes(min(512, len(data) - i))
                else:
                    data[i : i + 64] = rng.randbytes(min(64, len(data) - i))
                fh.seek(0)
                fh.write(data)
        try:
            check_store(path, expected, victims=set(expected))
        except bitkv.Error:
            pass  # e.g. the marker was hit: refusing to open is allowed, wrong data is not
        shutil.rmtree(path)


# -- hint files --


def _hints(path: str) -> list[str]:
    return [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".hint")]


@pytest.fixture
def compacted(fast_tmp):
    path = str(fast_tmp / "db")
    expected = build(path, n=40, compact=True)
    hints = _hints(path)
    assert hints, "compaction wrote no hint file"
    return path, expected, hints


def test_intact_hints_are_used(compacted):
    path, expected, _ = compacted
    stats = check_store(path, expected)
    assert stats["segments_from_hints"] >= 1 and stats["ignored_hints"] == 0


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "empty", "garbage"])
def test_damaged_hints_are_ignored_and_the_segment_scanned(compacted, damage):
    path, expected, hints = compacted
    rng = random.Random(7)
    for h in hints:
        with open(h, "rb") as fh:
            blob = bytearray(fh.read())
        if damage == "truncated":
            blob = blob[: rng.randrange(len(blob))]
        elif damage == "corrupt":
            blob[rng.randrange(len(blob))] ^= 0x10
        elif damage == "empty":
            blob = bytearray()
        else:
            blob = bytearray(rng.randbytes(len(blob)))
        with open(h, "wb") as fh:
            fh.write(blob)
    stats = check_store(path, expected)
    assert stats["ignored_hints"] == len(hints)


def test_every_truncation_of_a_hint_is_ignored(compacted):
    path, expected, hints = compacted
    with open(hints[0], "rb") as fh:
        blob = fh.read()
    for cut in range(0, len(blob), max(1, len(blob) // 40)):
        with open(hints[0], "wb") as fh:
            fh.write(blob[:cut])
        with _open(path, readonly=True) as db:
            assert db.stats()["recovery"]["ignored_hints"] == 1
            assert dict(db.items()) == expected


def test_missing_hints_mean_a_scan(compacted):
    path, expected, hints = compacted
    for h in hints:
        os.unlink(h)
    stats = check_store(path, expected)
    assert stats["segments_from_hints"] == 0 and stats["ignored_hints"] == 0


def test_stale_hint_of_an_earlier_segment_incarnation_is_ignored(compacted, fast_tmp):
    path, expected, hints = compacted
    # Compact again: new outputs with new nonces. Put an old hint back under a new name.
    with open(hints[0], "rb") as fh:
        old = fh.read()
    with _open(path) as db:
        db.put(b"extra", b"x")  # garbage, so the compaction has something to reclaim
        db.delete(b"extra")
        db.compact()
    new_hints = _hints(path)
    assert hints[0] not in new_hints, "the second compaction did not replace the first's output"
    for h in new_hints:
        with open(h, "wb") as fh:
            fh.write(old)
    stats = check_store(path, expected)
    assert stats["ignored_hints"] == len(new_hints)


def test_a_hint_that_lies_with_a_valid_crc_never_yields_wrong_bytes(compacted):
    """A hint whose CRC holds but whose entries point at the wrong records (as a buggy writer
    could produce): every read is verified against the record's own CRC and key."""
    path, expected, hints = compacted
    h = hints[0]
    seg_path = h[: -len(".hint")] + ".data"
    with open(seg_path, "rb") as fh:
        seg = fh.read()
    header = seg_mod.decode_header(seg[: seg_mod.HEADER_SIZE])
    recs = [r for r in record.scan(seg, seg_mod.HEADER_SIZE)
            if isinstance(r, record.ScannedRecord)]
    keys = [r.key for r in recs]
    shifted = keys[1:] + keys[:1]  # every key names its neighbour's record
    entries = [(k, 0, r.value_len, r.offset, r.seq, r.expiry_ms)
               for k, r in zip(shifted, recs, strict=True)]
    with open(h, "wb") as fh:
        fh.write(hint.encode(entries, header.nonce, len(seg)))
    with _open(path) as db:
        for key in keys:
            try:
                got = db.get(key)
            except bitkv.CorruptionError:
                continue
            assert got is None or got == expected[key]
            if got is not None:
                assert parse_value(got)[0] == key


def test_a_sealed_segment_cut_short_is_refused_and_names_its_keys(compacted):
    """Issue 11 #1: a compaction output that lost its tail used to be opened as if it were
    whole (its hint ignored, its last keys silently gone). The MANIFEST knows its length:
    every open refuses naming the file and the keys its hint places in the lost bytes;
    check reports it; repair salvages the rest and records what was lost."""
    path, expected, hints = compacted
    seg_path = hints[0][: -len(".hint")] + ".data"
    name = os.path.basename(seg_path)
    recs = [r for f, r in records_of(path) if f == seg_path]
    os.truncate(seg_path, recs[-1].offset)  # the segment lost its last record
    before = snapshot(path)
    for readonly in (False, True):
        with pytest.raises(bitkv.CorruptionError, match=name) as info:
            _open(path, readonly=readonly)
        assert repr(recs[-1].key) in str(info.value)
    assert snapshot(path) == before  # refusing changed nothing
    report = bitkv.check(path)
    assert not report.healthy and report.missing_segments == 1
    assert name in report.damaged_files
    repaired = bitkv.repair(path)
    assert [(n, keys) for n, _what, keys in repaired.lost_segments] == [(name, [recs[-1].key])]
    with open(os.path.join(repaired.damaged_dir, "REPAIR.txt"), encoding="utf-8") as fh:
        note = fh.read()
    assert name in note and repr(recs[-1].key) in note
    with _open(path) as db:
        for key, want in expected.items():
            if key != recs[-1].key and want is not None:
                assert db.get(key) == want


# -- an older version must not come back --


@pytest.mark.parametrize("newest", ["value", "tombstone"])
def test_a_damaged_newest_record_does_not_resurrect_an_older_one(fast_tmp, newest):
    """Regression (fixed in f14244e): with the newest record of a key damaged mid-segment but
    its header and key intact, recovery skipped it and silently indexed the previous record:
    get() returned the older value, or a deleted key came back."""
    path = str(fast_tmp / "db")
    with _open(path) as db:
        db.put(b"key", make_value(b"key", "old", 100))
        for i in range(30):  # push the old record into an older segment
            db.put(b"fill-%d" % i, make_value(b"fill-%d" % i, "1", 200))
        if newest == "value":
            db.put(b"key", make_value(b"key", "new", 100))
        else:
            db.delete(b"key")
        for i in range(3):  # records after it: this is mid-segment damage, not a torn tail
            db.put(b"after-%d" % i, b"x")
    f, victim = next((f, r) for f, r in reversed(records_of(path)) if r.key == b"key")
    at = victim.offset + (victim.size - 2 if newest == "value" else 14)  # value byte / seq
    with open(f, "r+b") as fh:
        fh.seek(at)
        (b,) = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b ^ 0x04]))
    with _open(path) as db:
        assert db.stats()["recovery"]["corrupt_bytes"] > 0
        try:
            got = db.get(b"key")
        except bitkv.CorruptionError:
            return
        assert got is None, f"an older version came back: {parse_value(got)}"


# -- stale records at the tail --------------------------------------------------------------------


def test_a_stale_uncommitted_batch_at_the_tail_does_not_rewind_seqs(fast_tmp):
    """Regression (fixed in c1a5ab3): an uncommitted batch at the tail whose seqs are lower
    than the records before it (stale blocks, foreign bytes) made recovery lower next_seq;
    the next segment's order_seq fell below records already on disk and compact() failed its
    'active segment stays last' assertion. Found by the whitebox crash harness."""
    path = str(fast_tmp / "db")
    with _open(path, max_segment_size=1 << 20) as db:
        for i in range(30):
            db.put(b"key-%d" % (i % 5), make_value(b"key-%d" % (i % 5), str(i), 100))
    seg = data_files(path)[-1]
    stale = [record.encode(b"key-0", make_value(b"key-0", "stale", 100), 3 + i, 0,
                           record.BATCH | (record.BATCH_FIRST if i == 0 else 0))
             for i in range(2)]
    with open(seg, "ab") as fh:
        fh.write(b"".join(stale)[:-10])
    with _open(path, max_segment_size=4096) as db:  # the full segment is sealed: a new one
        db.put(b"key-0", make_value(b"key-0", "new", 100))
        db.put(b"key-9", make_value(b"key-9", "new", 100))
        db.compact()
    with _open(path) as db:
        assert parse_value(db.get(b"key-0"))[1] == "new"
