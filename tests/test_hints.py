"""Hint files: the codec (round trip, every bit flip and truncation rejected) and the store's
use of them: a compacted store reopens from hints, and a missing, truncated, corrupt, stale
(another store's, or another segment's) or over-long hint is ignored and its segment scanned,
with identical contents (rosedb #342)."""

from __future__ import annotations

import os
import random
import shutil
import struct
import sys

import pytest

import bitkv
from bitkv import hint
from bitkv import record as rec
from bitkv import sealing as sealing_mod
from bitkv import segment as seg_mod
from bitkv.crc import crc32c

SEG = 4096
NOW = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def opendb(path, clock, **kw):
    kw.setdefault("max_segment_size", SEG)
    kw.setdefault("auto_compact", False)
    kw.setdefault("sync", "never")
    return bitkv.open(path, clock=clock, **kw)


# -- the codec -----------------------------------------------------------------------------

def _entries(rng: random.Random, n: int, key_lens=(1, 2, 16, 300)):
    """Random hint entries laid out like a segment: (key, flags, vlen, offset, seq, exp)."""
    out = []
    offset = seg_mod.HEADER_SIZE
    for _ in range(n):
        key = bytes(rng.randrange(256) for _ in range(rng.choice(key_lens)))
        flags = rng.choice([0, 0, rec.TOMBSTONE, rec.COMPRESSED, rec.ENCRYPTED])
        vlen = 0 if flags & rec.TOMBSTONE else rng.randrange(0, 5000)
        out.append((key, flags, vlen, offset, rng.randrange(1, 2**63),
                    rng.choice([0, rng.randrange(1, 2**62)])))
        offset += rec.HEADER_SIZE + len(key) + vlen
    return out, offset


@pytest.mark.parametrize("n", [0, 1, 7, 500])
def test_round_trip(n):
    rng = random.Random(n)
    entries, size = _entries(rng, n)
    nonce = rng.randrange(2**64)
    blob = hint.encode(entries, nonce, size)
    assert len(blob) == hint.HEADER_SIZE + n * hint.ENTRY_SIZE + sum(len(e[0]) for e in entries) + 4
    max_seq, items = hint.decode(blob, nonce, size)
    assert max_seq == max((e[4] for e in entries), default=0)
    assert [(k, (f, 0, len(k), v, o, s, x)) for k, f, v, o, s, x in entries] == list(items)
    # A hint may describe a prefix of a longer segment (a checkpointed active segment).
    max_seq, covered, items = hint.decode_with_coverage(blob, nonce, size + 12345)
    assert covered == size and len(list(items)) == n
    # An explicit max_seq (checkpoint hints carry seq 0 entries and the store's last seq).
    blob = hint.encode(entries, nonce, size, max_seq=2**63 + 5)
    assert hint.decode(blob, nonce, size)[0] == 2**63 + 5


def _sample():
    entries, size = _entries(random.Random(342), 5, key_lens=(1, 3, 9))
    return hint.encode(entries, 0xDEADBEEF, size), 0xDEADBEEF, size


def test_every_single_bit_flip_is_rejected():
    blob, nonce, size = _sample()
    hint.decode(blob, nonce, size)
    for i in range(len(blob)):
        for bit in range(8):
            bad = bytearray(blob)
            bad[i] ^= 1 << bit
            with pytest.raises(hint.HintError):
                hint.decode(bytes(bad), nonce, size)


def test_every_truncation_and_any_appended_bytes_are_rejected():
    blob, nonce, size = _sample()
    for cut in range(len(blob)):
        with pytest.raises(hint.HintError):
            hint.decode(blob[:cut], nonce, size)
    for extra in (b"\0", b"\0" * 4, blob[-4:], blob):
        with pytest.raises(hint.HintError):
            hint.decode(blob + extra, nonce, size)


def test_wrong_incarnation_or_too_short_segment_is_rejected():
    blob, nonce, size = _sample()
    with pytest.raises(hint.HintError, match="another incarnation"):
        hint.decode(blob, nonce ^ 1, size)
    with pytest.raises(hint.HintError, match="covers"):
        hint.decode(blob, nonce, size - 1)


def test_entries_outside_the_covered_bytes_are_rejected_even_with_a_valid_crc():
    entries, size = _entries(random.Random(1), 4)
    for bad in ([(*entries[0][:3], size, *entries[0][4:])],  # offset past the end
                [(entries[0][0], 0, size, *entries[0][3:])]):  # value past the end
        blob = hint.encode(bad, 7, size)
        with pytest.raises(hint.HintError):
            list(hint.decode(blob, 7, size)[1])
    # A key area that does not match the entry table (CRC recomputed to pass).
    blob = hint.encode(entries, 7, size)
    body = blob[:-4] + b"x"
    with pytest.raises(hint.HintError):
        list(hint.decode(body + struct.pack("<I", crc32c(body)), 7, size)[1])


# -- the store -----------------------------------------------------------------------------

def build(path, clock, prefix: bytes = b"k", seed: int = 342) -> None:
    """A store with several compacted segments (with hints) and an append segment after them:
    overwrites, deletes, TTLs (one expired by the time of the checks)."""
    rng = random.Random(seed)
    with opendb(path, clock) as db:
        for i in range(300):
            db.put(prefix + b"%03d" % i, bytes([97 + i % 26]) * rng.randrange(5, 60))
        for i in range(0, 300, 3):
            db.put(prefix + b"%03d" % i, b"over-%03d" % i)
        for i in range(1, 300, 7):
            db.delete(prefix + b"%03d" % i)
        for i in range(2, 300, 10):
            db.put(prefix + b"%03d" % i, b"ttl-%03d" % i, ttl=100 if i % 20 == 2 else 10_000)
        db.compact()
        for i in range(5, 300, 11):
            db.delete(prefix + b"%03d" % i)  # tombstones in the append segment after them
        db.put(prefix + b"new", b"after the compaction")


def dump(db) -> dict[bytes, tuple[bytes, float | None]]:
    out = {}
    for k in db:
        got = db.get_with_ttl(k)
        assert got is not None
        out[k] = got
    return out


def hint_files(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(seg_mod.HINT_SUFFIX))


@pytest.fixture
def store(tmp_path):
    clock = Clock()
    path = tmp_path / "db"
    build(path, clock)
    clock.now += 200  # the ttl=100 keys are expired now
    with opendb(path, clock) as db:
        reference = dump(db)
        report = db.recovery_report
    assert reference and len(hint_files(path)) >= 3
    assert report.segments_from_hints == len(hint_files(path))
    assert report.ignored_hints == []
    return path, clock, reference


def test_a_compacted_store_reopens_from_hints(store):
    path, clock, reference = store
    with opendb(path, clock) as db:
        report = db.recovery_report
        assert report.segments_from_hints == len(hint_files(path)) == report.segments - 1
        assert dump(db) == reference
        assert db.get(b"k001") is None and db.get(b"k005") is None and db.get(b"k002") is None
    with opendb(path, clock, readonly=True) as ro:
        assert ro.recovery_report.segments_from_hints == len(hint_files(path))
        assert dump(ro) == reference


def _truncate(full: str, keep: int) -> None:
    with open(full, "r+b") as fh:
        fh.truncate(keep)


def _damage(kind: str, path, name: str, tmp_path, clock) -> bool:
    """Damage hint ``name``; return whether the open should list it as ignored."""
    full = os.path.join(path, name)
    size = os.path.getsize(full)
    if kind == "missing":
        os.unlink(full)
        return False
    if kind == "empty":
        _truncate(full, 0)
    elif kind == "truncated-header":
        _truncate(full, hint.HEADER_SIZE - 1)
    elif kind == "truncated-entries":
        _truncate(full, hint.HEADER_SIZE + hint.ENTRY_SIZE + 3)
    elif kind == "truncated-trailer":
        _truncate(full, size - 1)
    elif kind.startswith("bitflip"):
        offset = {"bitflip-header": 20, "bitflip-entry": hint.HEADER_SIZE + 10,
                  "bitflip-key": size - 6, "bitflip-crc": size - 2}[kind]
        with open(full, "r+b") as fh:
            fh.seek(offset)
            b = fh.read(1)[0]
            fh.seek(offset)
            fh.write(bytes([b ^ 0x10]))
    elif kind == "stale-other-store":
        # Another store built the same way, with other keys of the same length: the same
        # segment ids and sizes, so only the segment's nonce tells the hints apart.
        other = tmp_path / "other"
        if not os.path.exists(other):
            build(other, Clock(), prefix=b"x")
        assert os.path.getsize(os.path.join(other, name)) == size
        shutil.copyfile(os.path.join(other, name), full)
    elif kind == "stale-other-segment":
        others = [n for n in hint_files(path) if n != name]
        shutil.copyfile(os.path.join(path, others[0]), full)
    elif kind == "covers-too-much":
        # Right nonce and a valid CRC, but describing more bytes than the segment has.
        with open(full, "rb") as fh:
            blob = fh.read()
        magic, ver, res, count, nonce, covered, max_seq = hint.HEADER.unpack_from(blob)
        body = hint.HEADER.pack(magic, ver, res, count, nonce, covered + 1, max_seq) \
            + blob[hint.HEADER_SIZE:-4]
        with open(full, "wb") as fh:
            fh.write(body + struct.pack("<I", crc32c(body)))
    else:  # pragma: no cover
        raise AssertionError(kind)
    return True


KINDS = ["missing", "empty", "truncated-header", "truncated-entries", "truncated-trailer",
         "bitflip-header", "bitflip-entry", "bitflip-key", "bitflip-crc", "stale-other-store",
         "stale-other-segment", "covers-too-much"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_hint_is_ignored_and_its_segment_scanned(store, kind, tmp_path):
    path, clock, reference = store
    names = hint_files(path)
    victim = names[len(names) // 2]
    ignored = _damage(kind, path, victim, tmp_path, clock)
    for readonly in (True, False):  # the read-only open first: it changes nothing
        with opendb(path, clock, readonly=readonly) as db:
            report = db.recovery_report
            assert dump(db) == reference
            assert report.segments_from_hints == len(names) - 1
            assert [n for n, _why in report.ignored_hints] == ([victim] if ignored else [])
    # The bad hint is not repaired by opening; the next compaction writes good ones.
    with opendb(path, clock) as db:
        db.compact()
        assert dump(db) == reference
    with opendb(path, clock) as db:
        assert db.recovery_report.ignored_hints == []
        assert db.recovery_report.segments_from_hints == len(hint_files(path))
        assert dump(db) == reference


@pytest.mark.parametrize("kind", ["missing", "bitflip-entry", "stale-other-store"])
def test_every_hint_bad_at_once(store, kind, tmp_path):
    path, clock, reference = store
    for name in hint_files(path):
        _damage(kind, path, name, tmp_path, clock)
    with opendb(path, clock) as db:
        assert db.recovery_report.segments_from_hints == 0
        assert dump(db) == reference


def test_a_checkpoint_hint_covers_a_prefix_and_the_tail_is_scanned(tmp_path, monkeypatch):
    """A hint may cover only a prefix of a segment: records appended after it (and not
    followed by a clean close) are found by scanning, and tombstones among them win."""
    monkeypatch.setattr(sealing_mod, "CHECKPOINT_MIN_BYTES", 0)
    clock = Clock()
    path = tmp_path / "db"
    with opendb(path, clock, max_segment_size=1 << 20) as db:
        for i in range(200):
            db.put(b"k%03d" % i, b"v%03d" % i)
    assert hint_files(path) == ["000001.hint"]
    db = opendb(path, clock, max_segment_size=1 << 20)
    assert db.recovery_report.segments_from_hints == 1
    db.delete(b"k007")
    db.put(b"k008", b"tail")
    db._abandon()  # no clean close: the hint still covers only the old prefix
    with opendb(path, clock, max_segment_size=1 << 20, readonly=True) as ro:
        assert ro.recovery_report.segments_from_hints == 1
        assert ro.get(b"k007") is None and ro.get(b"k008") == b"tail"
        assert len(ro) == 199
        reference = dump(ro)
    os.unlink(os.path.join(path, "000001.hint"))
    with opendb(path, clock, max_segment_size=1 << 20) as db:
        assert db.recovery_report.segments_from_hints == 0
        assert dump(db) == reference


# -- sizing the index from the hints' entry counts (issue 14) ----------------------------------


def test_entry_count_reads_the_header_and_is_bounded_by_the_file():
    blob = hint.encode([(b"key%d" % i, 0, 3, 40 + i, i, 0) for i in range(50)], 7, 1 << 20)
    assert hint.entry_count(blob[: hint.HEADER_SIZE], len(blob)) == 50
    # A damaged count (the CRC is not checked yet) never exceeds what the file has room for:
    # one fixed entry and a key byte each.
    huge = bytearray(blob)
    struct.pack_into("<I", huge, 12, 2**32 - 1)
    room = (len(blob) - hint.HEADER_SIZE - hint.TRAILER.size) // (hint.ENTRY_SIZE + 1)
    assert hint.entry_count(bytes(huge[: hint.HEADER_SIZE]), len(blob)) == room < 2**32 - 1
    assert hint.entry_count(b"NOTAHINT" + blob[8 : hint.HEADER_SIZE], len(blob)) == 0
    assert hint.entry_count(blob[:10], len(blob)) == 0
    assert hint.entry_count(blob[: hint.HEADER_SIZE], hint.HEADER_SIZE) == 0


def test_the_load_sizes_the_index_once_from_the_hints(store, monkeypatch):
    """The open reserves room for the sum of its hints' entry counts before indexing (a
    compacted store's hints hold each key once), and loads the same contents as without."""
    path, clock, reference = store
    from bitkv import keydir

    asked = []
    real = keydir.KeyDir.reserve
    monkeypatch.setattr(keydir.KeyDir, "reserve",
                        lambda self, n: (asked.append(n), real(self, n))[1])
    counts = 0
    for name in hint_files(path):
        with open(os.path.join(path, name), "rb") as fh:
            blob = fh.read()
        counts += hint.entry_count(blob, len(blob))
    with opendb(path, clock) as db:
        assert dump(db) == reference
    assert asked == [counts] and counts > 0


def test_a_hint_claiming_billions_of_entries_allocates_nothing_for_them(store, tmp_path):
    """A hint whose count is damaged (so its CRC fails and it is ignored) must not size the
    index by that count: the estimate is bounded by the file's length."""
    path, clock, reference = store
    name = hint_files(path)[0]
    with open(os.path.join(path, name), "r+b") as fh:
        fh.seek(12)
        fh.write(struct.pack("<I", 2**32 - 1))
    with opendb(path, clock) as db:
        assert [n for n, _why in db.recovery_report.ignored_hints] == [name]
        assert dump(db) == reference
        entries = db._keydir.entries  # the index's own size is the point
        assert sys.getsizeof(entries) < 1 << 20
