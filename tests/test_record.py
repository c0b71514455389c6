"""The record codec (bitkv/record.py): encode/decode, CRC checks, and scan() resync."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitkv import record
from bitkv.record import HEADER_SIZE, TOMBSTONE, Damage, ScannedRecord

keys = st.binary(min_size=1, max_size=64)
values = st.binary(min_size=0, max_size=300)
seqs = st.integers(min_value=0, max_value=2**64 - 1)
expiries = st.integers(min_value=0, max_value=2**64 - 1)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _records(specs):
    """Encode ``[(key, value), ...]`` with seqs 1.. and return (buffer, [(offset, size), ...])."""
    parts, spans, pos = [], [], 0
    for seq, (k, v) in enumerate(specs, start=1):
        data = record.encode(k, v, seq)
        parts.append(data)
        spans.append((pos, len(data)))
        pos += len(data)
    return b"".join(parts), spans


def _scanned(buf, start=0, end=None):
    return list(record.scan(buf, start, end))


# -- encode / decode ------------------------------------------------------------------------


@SETTINGS
@given(key=keys, value=values, seq=seqs, expiry=expiries)
def test_encode_decode_round_trip(key, value, seq, expiry):
    data = record.encode(key, value, seq, expiry)
    assert len(data) == record.record_size(len(key), len(value))
    assert len(data) == HEADER_SIZE + len(key) + len(value)
    header, got = record.decode(data, key)
    assert bytes(got) == value
    assert (header.flags, header.reserved, header.key_len, header.value_len) == (
        0, 0, len(key), len(value))
    assert (header.seq, header.expiry_ms) == (seq, expiry)
    assert record.intact_size_at(data, 0, len(data)) == len(data)


@SETTINGS
@given(key=keys, seq=seqs)
def test_tombstone_round_trip(key, seq):
    data = record.encode(key, b"", seq, 0, TOMBSTONE)
    header, value = record.decode(data)
    assert header.flags == TOMBSTONE
    assert value == b""


def test_header_is_28_bytes_little_endian():
    data = record.encode(b"k", b"vv", seq=0x0102030405060708, expiry_ms=0x1122334455667788)
    assert HEADER_SIZE == 28
    assert data[4] == 0  # flags
    assert data[5] == 0  # reserved
    assert data[6:8] == (1).to_bytes(2, "little")
    assert data[8:12] == (2).to_bytes(4, "little")
    assert data[12:20] == (0x0102030405060708).to_bytes(8, "little")
    assert data[20:28] == (0x1122334455667788).to_bytes(8, "little")
    assert data[28:] == b"kvv"


def test_decode_rejects_wrong_key():
    data = record.encode(b"alpha", b"value", 1)
    with pytest.raises(ValueError, match="different key"):
        record.decode(data, b"alphb")


@pytest.mark.parametrize("cut", [0, 1, HEADER_SIZE - 1, HEADER_SIZE, HEADER_SIZE + 3])
def test_decode_rejects_short_buffer(cut):
    data = record.encode(b"alpha", b"value", 1)
    with pytest.raises(ValueError):
        record.decode(data[:cut])


def test_decode_rejects_extra_bytes():
    data = record.encode(b"alpha", b"value", 1)
    with pytest.raises(ValueError, match="length"):
        record.decode(data + b"\x00")


def test_every_single_bit_flip_is_detected():
    data = record.encode(b"some-key", b"some value bytes", 77, 123456)
    for i in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[i // 8] ^= 1 << (i % 8)
        with pytest.raises(ValueError):
            record.decode(bytes(damaged))
        assert record.intact_size_at(bytes(damaged), 0, len(damaged)) == 0, f"bit {i}"


@SETTINGS
@given(key=keys, value=values, seq=seqs, data=st.data())
def test_random_bit_flip_is_detected(key, value, seq, data):
    rec = record.encode(key, value, seq)
    bit = data.draw(st.integers(min_value=0, max_value=len(rec) * 8 - 1))
    damaged = bytearray(rec)
    damaged[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ValueError):
        record.decode(bytes(damaged), key)


@pytest.mark.parametrize(
    ("flags", "reserved", "key_len", "value_len", "ok"),
    [
        (0, 0, 1, 0, True),
        (TOMBSTONE, 0, 1, 0, True),
        (TOMBSTONE, 0, 1, 1, False),  # a tombstone carries no value
        (0, 1, 1, 0, False),  # reserved must be zero
        (0, 0, 0, 0, False),  # keys are never empty
        (0x80, 0, 1, 0, False),  # unknown flag
        (record.BATCH_FIRST, 0, 1, 0, False),  # batch flags without BATCH
        (0, 0, 1, record.MAX_STORED_VALUE_SIZE + 1, False),
    ],
)
def test_header_plausibility(flags, reserved, key_len, value_len, ok):
    assert bool(record.header_is_plausible(flags, reserved, key_len, value_len)) is ok


# -- scan -----------------------------------------------------------------------------------


SPECS = [(b"k%d" % i, os.urandom(10 + 7 * i)) for i in range(6)]


def test_scan_clean_buffer_yields_every_record():
    buf, spans = _records(SPECS)
    got = _scanned(buf)
    assert all(isinstance(r, ScannedRecord) for r in got)
    assert [(r.offset, r.size) for r in got] == spans
    assert [r.key for r in got] == [k for k, _ in SPECS]
    assert [r.seq for r in got] == list(range(1, len(SPECS) + 1))
    assert [r.value_len for r in got] == [len(v) for _, v in SPECS]


def test_scan_respects_start_and_end():
    buf, spans = _records(SPECS)
    start = spans[1][0]
    end = spans[4][0]
    got = _scanned(buf, start, end)
    assert [r.key for r in got] == [b"k1", b"k2", b"k3"]


@pytest.mark.parametrize("victim", range(len(SPECS) - 1))
def test_scan_resyncs_after_damage_in_the_middle(victim):
    buf, spans = _records(SPECS)
    damaged = bytearray(buf)
    off, size = spans[victim]
    damaged[off + HEADER_SIZE] ^= 0xFF  # break the record's CRC (first key byte)
    got = _scanned(bytes(damaged))
    assert [r.key for r in got if isinstance(r, ScannedRecord)] == [
        k for i, (k, _) in enumerate(SPECS) if i != victim]
    damage = [r for r in got if isinstance(r, Damage)]
    assert [d[:3] for d in damage] == [(off, size, False)]
    # The header and extent were intact, so the damage names the key bytes it claims.
    assert damage[0].key == bytes(damaged[off + HEADER_SIZE : off + HEADER_SIZE + len(
        SPECS[victim][0])])


def test_scan_damage_at_tail():
    buf, spans = _records(SPECS)
    off, size = spans[-1]
    for cut in range(off + 1, off + size):
        got = _scanned(buf[:cut])
        assert [r.key for r in got[:-1]] == [k for k, _ in SPECS[:-1]]
        assert got[-1] == Damage(off, cut - off, True)


@pytest.mark.parametrize("tail_len", [1, 27, 28, 29, 100, 5000])
def test_scan_zero_filled_tail(tail_len):
    buf, _ = _records(SPECS)
    got = _scanned(buf + bytes(tail_len))
    assert [r.key for r in got[:-1]] == [k for k, _ in SPECS]
    assert got[-1] == Damage(len(buf), tail_len, True)


@pytest.mark.parametrize("seed", range(20))
def test_scan_random_garbage_tail(seed):
    rng = random.Random(seed)
    garbage = rng.randbytes(rng.randint(1, 3000))
    buf, _ = _records(SPECS)
    got = _scanned(buf + garbage)
    assert [r.key for r in got[:-1]] == [k for k, _ in SPECS]
    assert got[-1] == Damage(len(buf), len(garbage), True)


@pytest.mark.parametrize("fill", [b"\x00", b"\xff", b"\x00\x01", None])
def test_scan_resyncs_after_inserted_region(fill):
    """A zero-filled, 0xFF-filled or random region between records is skipped, not fatal."""
    buf, spans = _records(SPECS)
    cut = spans[3][0]
    region = os.urandom(777) if fill is None else (fill * 1000)[:777]
    got = _scanned(buf[:cut] + region + buf[cut:])
    assert [r.key for r in got if isinstance(r, ScannedRecord)] == [k for k, _ in SPECS]
    assert [r for r in got if isinstance(r, Damage)] == [Damage(cut, 777, False)]


@SETTINGS
@given(
    specs=st.lists(st.tuples(keys, values), min_size=1, max_size=8),
    garbage=st.lists(st.tuples(st.integers(0, 8), st.binary(min_size=1, max_size=200)),
                     max_size=3),
)
def test_scan_finds_every_record_around_inserted_garbage(specs, garbage):
    """Garbage inserted between records never hides an intact record, nor invents one."""
    encoded = [record.encode(k, v, i + 1) for i, (k, v) in enumerate(specs)]
    pieces: list[tuple[str, bytes]] = [("rec", e) for e in encoded]
    for pos, junk in sorted(garbage, key=lambda g: -g[0]):
        pieces.insert(min(pos, len(pieces)), ("junk", junk))
    buf = b"".join(p for _, p in pieces)
    got = _scanned(buf)
    found = [(r.key, r.seq) for r in got if isinstance(r, ScannedRecord)]
    assert found == [(k, i + 1) for i, (k, _) in enumerate(specs)]
    # Damage covers exactly the junk: total damaged bytes == total junk bytes.
    assert sum(d.length for d in got if isinstance(d, Damage)) == sum(len(j) for _, j in garbage)
    # Items tile the buffer with no gaps or overlaps.
    pos = 0
    for item in got:
        assert item.offset == pos
        pos += item.size if isinstance(item, ScannedRecord) else item.length
    assert pos == len(buf)


@pytest.mark.parametrize(
    "tail",
    [b"\x07" * 50 + b"\x00", b"\x07" * 50 + b"\x00\x00", b"\x07\x00", b"\x07" * 40 + b"\x00\x07",
     b"\x07" * 33 + b"\x00" + b"\x07" * 6, b"\xff" * 100 + b"\x00" * 3],
)
def test_scan_tail_ending_near_a_zero_byte(tail):
    """A tail whose only zero bytes sit in its last few bytes (the candidate header would
    run past the buffer) is damage, not an IndexError (fixed in a3bbf6f)."""
    buf, _ = _records(SPECS)
    got = _scanned(buf + tail)
    assert [r.key for r in got[:-1]] == [k for k, _ in SPECS]
    assert got[-1] == Damage(len(buf), len(tail), True)


@SETTINGS
@given(specs=st.lists(st.tuples(keys, values), max_size=4), junk=st.binary(max_size=400),
       data=st.data())
def test_scan_never_raises_and_tiles_any_buffer(specs, junk, data):
    """Whatever follows the intact records, scan() reports it without raising, and its
    items cover the buffer exactly once, also for a scan that starts mid-buffer."""
    prefix, _ = _records(specs)
    buf = prefix + junk
    start = data.draw(st.integers(0, len(buf)), label="start")
    got = _scanned(buf, start)
    pos = start
    for item in got:
        assert item.offset == pos
        pos += item.size if isinstance(item, ScannedRecord) else item.length
    assert pos == len(buf)
    if start == 0:
        assert [r.key for r in got[: len(specs)]] == [k for k, _ in specs]
