"""bitkv.check: check() reports every kind of damage by file and offset and changes nothing;
repair() salvages into a clean store, keeps every old file, and is safe to kill at any step."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import append_bytes, flip_bit, segment_files, snapshot_dir, tear

import bitkv
from bitkv import hint, record
from bitkv import segment as seg_mod
from bitkv.check import check, repair
from bitkv.fileio import FileIO

SEG = 4096  # small segments: many files from little data


def _scan(path: str) -> list[record.ScannedRecord]:
    with open(path, "rb") as fh:
        buf = fh.read()
    return [r for r in record.scan(buf, seg_mod.HEADER_SIZE)
            if isinstance(r, record.ScannedRecord)]


def _state(path: str) -> dict[bytes, tuple[bytes, int | None]]:
    """Every live key -> (value, whole seconds of TTL left or None), read-only."""
    with bitkv.open(path, readonly=True) as db:
        out = {}
        for k in db:
            try:
                got = db.get_with_ttl(k)
            except bitkv.CorruptionError:
                continue  # its newest record is damaged: reading it raises, repair drops it
            if got is not None:
                value, left = got
                out[k] = (value, None if left is None else round(left / 10))
        return out


def _build(path: str) -> None:
    """A store with history: overwrites, tombstones over older segments, TTLs, an expired key,
    a committed batch, a compaction (hints), then more appends after it."""
    with bitkv.open(path, max_segment_size=SEG, auto_compact=False, sync="never") as db:
        for i in range(60):
            db.put(b"key%03d" % i, b"old-%d-" % i + b"x" * 40)
        db.put(b"doomed", b"deleted later, in a newer segment")
        db.put(b"short", b"expires", ttl=0.001)
        for i in range(0, 60, 2):
            db.put(b"key%03d" % i, b"new-%d-" % i + b"y" * 40)
        db.put(b"ttl", b"lives an hour", ttl=3600)
        with db.batch() as b:
            b.put(b"batch1", b"one")
            b.put(b"batch2", b"two")
        db.compact()
        for i in range(0, 60, 5):
            db.delete(b"key%03d" % i)
        db.delete(b"doomed")
        for i in range(100):  # enough to seal append segments after the compaction
            db.put(b"late%d" % i, b"z" * 30)
        for i in range(1, 60, 5):
            db.delete(b"key%03d" % i)


@pytest.fixture
def store(db_path):
    _build(db_path)
    return db_path


def _newest_in_load_order(path: str) -> str:
    files = segment_files(path)
    with_order = []
    for f in files:
        with open(f, "rb") as fh:
            header = seg_mod.decode_header(fh.read(seg_mod.HEADER_SIZE))
        with_order.append(((header.order_seq, int(os.path.basename(f)[:6])), f))
    return max(with_order)[1]


def _oldest_append_segment(path: str) -> str:
    for f in segment_files(path):
        with open(f, "rb") as fh:
            if seg_mod.decode_header(fh.read(seg_mod.HEADER_SIZE)).kind == seg_mod.KIND_APPEND \
                    and f != _newest_in_load_order(path):
                return f
    raise AssertionError("no sealed append segment")


# -- check ------------------------------------------------------------------------------------


def test_healthy_store_is_healthy_and_nothing_changes(store):
    before = snapshot_dir(store)
    report = check(store)
    assert report.healthy, report.issues
    assert report.issues == []
    assert report.segments == len(segment_files(store))
    hints = [n for n in os.listdir(store) if n.endswith(".hint")]
    assert hints and report.hints_ok == len(hints) and report.hints_bad == 0
    assert report.records == sum(len(_scan(f)) for f in segment_files(store))
    assert report.torn_tail_bytes == report.corrupt_bytes == 0
    assert snapshot_dir(store) == before
    d = report.as_dict()
    assert d["healthy"] is True and d["damaged_files"] == []


def test_missing_or_foreign_directory(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(bitkv.StoreNotFoundError):
        check(missing)
    assert not missing.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hi")
    with pytest.raises(bitkv.NotAStoreError):
        check(foreign)
    assert sorted(os.listdir(foreign)) == ["notes.txt"]


def test_check_runs_beside_a_writer(store):
    with bitkv.open(store, max_segment_size=SEG) as db:
        db.put(b"while", b"checking")
        report = check(store)
        assert report.healthy, report.issues
        with pytest.raises(bitkv.LockError):
            repair(store)


def test_torn_tail_is_reported_as_a_warning_and_left_on_disk(store):
    newest = _newest_in_load_order(store)
    size = os.path.getsize(newest)
    append_bytes(newest, b"\x07" * 19)
    report = check(store)
    assert report.healthy
    assert report.torn_tail_bytes == 19
    assert report.corrupt_bytes == 0
    [issue] = report.issues
    assert (issue.file, issue.offset, issue.length, issue.kind, issue.severity) == (
        os.path.basename(newest), size, 19, "torn-tail", "warning")
    assert os.path.getsize(newest) == size + 19  # not truncated by the check


def test_uncommitted_batch_at_the_tail_is_torn(db_path):
    with bitkv.open(db_path, sync="never") as db:
        db.put(b"a", b"1")
        with db.batch() as b:
            for i in range(3):
                b.put(b"b%d" % i, b"v" * 20)
    seg = _newest_in_load_order(db_path)
    recs = _scan(seg)
    batch_start = recs[1].offset
    tear(seg, os.path.getsize(seg) - 5)  # the commit record is cut short
    report = check(db_path)
    assert report.healthy
    assert report.torn_tail_bytes == os.path.getsize(seg) - batch_start
    assert report.issues[0].offset == batch_start


def test_damage_in_the_middle_is_an_error_with_file_and_offset(store):
    victim_file = _oldest_append_segment(store)
    victim = _scan(victim_file)[2]
    flip_bit(victim_file, victim.offset + record.HEADER_SIZE + 1)
    before = snapshot_dir(store)
    report = check(store)
    assert not report.healthy
    [issue] = report.errors
    assert issue.file == os.path.basename(victim_file)
    assert (issue.offset, issue.length, issue.kind) == (victim.offset, victim.size,
                                                        "damaged-records")
    assert report.corrupt_bytes == victim.size and report.corrupt_regions == 1
    assert report.damaged_files == [os.path.basename(victim_file)]
    assert snapshot_dir(store) == before  # reported, not "recovered"


def test_damage_before_intact_records_in_the_newest_segment_is_not_a_torn_tail(store):
    newest = _newest_in_load_order(store)
    victim = _scan(newest)[0]
    flip_bit(newest, victim.offset + 3)
    report = check(store)
    assert not report.healthy
    assert report.torn_tail_bytes == 0
    assert report.errors[0].offset == victim.offset


def test_damaged_segment_header_is_reported_once(store):
    victim_file = _oldest_append_segment(store)
    flip_bit(victim_file, 10)
    report = check(store)
    assert not report.healthy
    assert report.damaged_segment_headers == 1
    headers = [i for i in report.errors if i.kind == "segment-header"]
    assert [(i.file, i.offset) for i in headers] == [(os.path.basename(victim_file), 0)]
    assert report.corrupt_regions == 1
    assert report.corrupt_bytes == seg_mod.HEADER_SIZE
    assert report.records == sum(len(_scan(f)) for f in segment_files(store))


def _hint_files(path: str) -> list[str]:
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".hint"))


def test_hint_with_a_bad_crc(store):
    victim = _hint_files(store)[0]
    flip_bit(victim, 50)
    report = check(store)
    assert not report.healthy
    assert report.hints_bad == 1
    [issue] = report.errors
    assert (issue.file, issue.kind) == (os.path.basename(victim), "hint")


def _rewrite_hint(hint_path: str, mutate) -> None:
    data_path = hint_path[: -len(".hint")] + ".data"
    with open(data_path, "rb") as fh:
        buf = fh.read()
    header = seg_mod.decode_header(buf[: seg_mod.HEADER_SIZE])
    entries = [(r.key, r.flags, r.value_len, r.offset, r.seq, r.expiry_ms)
               for r in _scan(data_path)]
    entries = mutate(entries)
    with open(hint_path, "wb") as fh:
        fh.write(hint.encode(entries, header.nonce, len(buf)))


def test_hint_entry_that_disagrees_with_its_record(store):
    victim = _hint_files(store)[0]

    def wrong_expiry(entries):
        key, flags, vlen, off, seq, exp = entries[1]
        entries[1] = (key, flags, vlen, off, seq, exp + 5000)
        return entries

    _rewrite_hint(victim, wrong_expiry)
    report = check(store)
    assert report.hints_bad == 1
    [issue] = report.errors
    assert issue.kind == "hint-mismatch"
    assert issue.offset == hint.HEADER_SIZE + 1 * hint.ENTRY_SIZE


def test_hint_missing_an_entry(store):
    victim = _hint_files(store)[0]
    _rewrite_hint(victim, lambda entries: entries[1:])
    report = check(store)
    assert report.hints_bad == 1
    assert [i.kind for i in report.errors] == ["hint-mismatch"]
    assert "no entry" in report.errors[0].description


def test_leftover_temp_file_is_a_warning(store):
    with open(os.path.join(store, "000099.data.tmp"), "wb") as fh:
        fh.write(b"half a compaction")
    report = check(store)
    assert report.healthy
    assert report.temp_files == 1
    assert [i.kind for i in report.warnings] == ["temp-file"]


# -- repair -----------------------------------------------------------------------------------


def _damage(path: str) -> str:
    """Corrupt one record in the middle of a sealed segment and one hint; return the segment."""
    victim_file = _oldest_append_segment(path)
    victim = _scan(victim_file)[3]
    flip_bit(victim_file, victim.offset + record.HEADER_SIZE + 2)
    flip_bit(_hint_files(path)[0], 60)
    return victim_file


def test_repair_salvages_everything_and_keeps_the_old_files(store):
    _damage(store)
    expected = _state(store)
    assert b"doomed" not in expected and b"short" not in expected
    assert expected[b"ttl"][1] is not None
    old_files = {n: c for n, c in snapshot_dir(store).items()
                 if n.endswith((".data", ".hint"))}
    report = repair(store)
    assert not report.before.healthy
    assert report.after is not None and report.after.healthy, report.after.issues
    assert report.keys_salvaged == len(expected)
    assert _state(store) == expected
    # Every old file is kept, byte for byte, in damaged-<time>/.
    aside = report.damaged_dir
    assert aside is not None and os.path.dirname(aside) == store
    assert os.path.basename(aside).startswith("damaged-")
    kept = snapshot_dir(aside)
    assert {n: kept[n] for n in old_files} == old_files
    assert sorted(report.moved_aside) == sorted(old_files)
    assert "REPAIR.txt" in kept
    # The repaired store opens clean and is writable.
    with bitkv.open(store) as db:
        rec = db.stats()["recovery"]
        assert rec["corrupt_bytes"] == rec["truncated_bytes"] == 0
        db.put(b"after", b"repair")
    assert check(store).healthy


def test_repair_needs_the_lock_and_changes_nothing_without_it(store):
    _damage(store)
    with bitkv.open(store, max_segment_size=SEG):
        before = snapshot_dir(store)
        with pytest.raises(bitkv.LockError):
            repair(store)
        assert snapshot_dir(store) == before


def test_repair_into_output_leaves_the_original_alone(store, tmp_path):
    _damage(store)
    expected = _state(store)
    before = snapshot_dir(store)
    out = tmp_path / "clean"
    report = repair(store, output=out)
    assert report.after is not None and report.after.healthy
    assert {k: v for k, v in snapshot_dir(store).items() if k != "LOCK"} == \
        {k: v for k, v in before.items() if k != "LOCK"}
    assert _state(str(out)) == expected
    with pytest.raises(bitkv.Error):
        repair(store, output=out)  # not empty any more


class _Killed(Exception):
    pass


class _DieAtRename(FileIO):
    """Stands in for a kill -9 just before the n-th rename (commit or move aside)."""

    def __init__(self, n: int) -> None:
        self.left = n

    def rename(self, src: str, dst: str) -> None:
        if self.left == 0:
            raise _Killed(f"before renaming {src}")
        self.left -= 1
        super().rename(src, dst)


def test_repair_killed_at_any_step_leaves_the_same_data(store, tmp_path):
    _damage(store)
    expected = _state(store)
    template = tmp_path / "template"
    shutil.copytree(store, template)
    n = 0
    while True:
        shutil.rmtree(store)
        shutil.copytree(template, store)
        try:
            repair(store, fileio=_DieAtRename(n))
        except _Killed:
            pass
        else:
            break
        assert _state(store) == expected, f"killed before rename {n}"
        # A writable open copes with the half-done repair, then repairing again finishes it.
        with bitkv.open(store, max_segment_size=SEG) as db:
            seen = {}
            for k in db:
                try:
                    seen[k] = db.get(k)
                except bitkv.CorruptionError:
                    pass  # the damaged key, not yet dropped by the repair
            assert seen == {k: v[0] for k, v in expected.items()}
        again = repair(store)
        assert again.after is not None and again.after.healthy
        assert _state(store) == expected
        n += 1
    assert n > 5  # the kill points covered commits and moves


def test_repair_copies_compressed_and_encrypted_values_without_the_key(db_path):
    key = os.urandom(32)
    values = {b"c%d" % i: (b"compressible %d " % i) * 50 for i in range(40)}
    values.update({b"r%d" % i: os.urandom(150) for i in range(40)})  # fills segments
    with bitkv.open(db_path, max_segment_size=SEG, compression="zstd",
                    encryption_key=key) as db:
        for k, v in values.items():
            db.put(k, v)
        db.put(b"gone", b"x")
    victim_file = _oldest_append_segment(db_path)
    lost = _scan(victim_file)[0]
    flip_bit(victim_file, lost.offset + record.HEADER_SIZE + 1)
    report = repair(db_path)
    assert report.after is not None and report.after.healthy
    with bitkv.open(db_path, encryption_key=key) as db:
        got = {k: db.get(k) for k in db}
    assert lost.key not in got
    assert got == {k: v for k, v in {**values, b"gone": b"x"}.items() if k != lost.key}


def test_repair_when_nothing_is_live(db_path):
    with bitkv.open(db_path, max_segment_size=SEG) as db:
        for i in range(50):
            db.put(b"k%d" % i, b"v" * 100)
        for i in range(50):
            db.delete(b"k%d" % i)
    report = repair(db_path)
    assert report.keys_salvaged == 0 and report.segments_written == 0
    assert not segment_files(db_path)
    with bitkv.open(db_path) as db:
        assert len(db) == 0
        db.put(b"fresh", b"start")
    assert _state(db_path) == {b"fresh": (b"start", None)}


def test_torn_value_holding_a_record_is_a_torn_tail_not_a_phantom(db_path):
    phantom = record.encode(b"phantom", b"never written", seq=10**9)
    with bitkv.open(db_path, sync="never") as db:
        db.put(b"a", b"1")
        db.put(b"carrier", b"<" + phantom + b">" * 50)
    seg = _newest_in_load_order(db_path)
    carrier = _scan(seg)[-1]
    cut = carrier.offset + carrier.size - 20  # the carrier is torn after the embedded record
    tear(seg, cut)
    report = check(db_path)
    assert report.healthy, report.issues
    assert report.torn_tail_bytes == cut - carrier.offset
    with bitkv.open(db_path, readonly=True) as db:
        assert b"phantom" not in db


def test_checkpoint_hint_of_the_active_segment(db_path):
    """A clean close may write a hint for the active segment's prefix; it must check out, and
    a checkpoint hint that forgets a tombstone (which would resurrect a value) must not."""
    big = 2 * 2**20
    with bitkv.open(db_path, sync="never", max_segment_size=big) as db:
        db.put(b"old", b"in the first segment")
        for i in range(40000):  # a second segment, more than 1 MiB of it
            db.put(b"k%05d" % (i % 9000), b"v" * 60)
        db.put(b"brief", b"put and deleted in the active segment")
        db.delete(b"brief")
        db.delete(b"old")
        db.delete(b"k00001")
    assert len(segment_files(db_path)) == 2
    report = check(db_path)
    assert report.healthy, report.issues
    hints = _hint_files(db_path)
    if not hints:
        pytest.skip("this store writes no checkpoint hint for the active segment")
    assert report.hints_ok == len(hints)

    def forget_tombstone(entries):
        # Leaving out "brief" is fine: no earlier segment holds it. "old" is not.
        return [e for e in entries if e[0] not in (b"old", b"brief")]

    data_path = hints[-1][: -len(".hint")] + ".data"
    with open(data_path, "rb") as fh:
        buf = fh.read()
    header = seg_mod.decode_header(buf[: seg_mod.HEADER_SIZE])
    newest = {}
    for r in _scan(data_path):
        newest[r.key] = (r.key, r.flags & record.TOMBSTONE, r.value_len, r.offset, 0, r.expiry_ms)
    with open(hints[-1], "wb") as fh:
        fh.write(hint.encode(forget_tombstone(list(newest.values())), header.nonce, len(buf)))
    report = check(db_path)
    assert not report.healthy
    assert [i.kind for i in report.errors] == ["hint-mismatch"]
    assert "b'old'" in report.errors[0].description


def test_intact_records_behind_a_torn_tail_are_flagged(db_path):
    """Records whose seqs jumped (e.g. after many failed writes) behind damaged bytes are not
    accepted by recovery; the check must not call that a harmless torn tail."""
    with bitkv.open(db_path, sync="never") as db:
        for i in range(5):
            db.put(b"k%d" % i, b"v" * 20)
    seg = _newest_in_load_order(db_path)
    last_seq = _scan(seg)[-1].seq
    victim = record.encode(b"victim", b"x" * 20, last_seq + 1)
    later = b"".join(record.encode(b"later%d" % i, b"y" * 20, last_seq + 500 + i)
                     for i in range(3))
    size = os.path.getsize(seg)
    append_bytes(seg, victim + later)
    flip_bit(seg, size + 10)
    report = check(db_path)
    assert report.torn_tail_bytes == len(victim) + len(later)
    assert [i.kind for i in report.errors] == ["tail-records"]
    assert report.errors[0].offset == size + len(victim)
    # A plain torn tail (no intact records after the damage) stays a warning.
    with open(seg, "r+b") as fh:
        fh.truncate(size + len(victim))
    assert check(db_path).healthy


@pytest.mark.parametrize("which", ["segment", "hint", "LOCK"])
def test_symlinked_store_file_is_reported(tmp_path, which):
    """Issue 11 item 10: the store could not be opened (raw ELOOP) but check called it
    healthy (or crashed with the raw ELOOP)."""
    path = tmp_path / "db"
    with bitkv.open(path, auto_compact=False) as db:
        for i in range(20000):  # enough for a checkpoint hint at close
            db.put(b"k%d" % i, b"v" * 50)
    names = {"segment": "000001.data", "hint": "000001.hint", "LOCK": "LOCK"}
    name = names[which]
    os.rename(path / name, tmp_path / name)
    os.symlink(tmp_path / name, path / name)
    report = check(path)
    assert not report.healthy
    assert any(i.file == name and i.kind == "symlink" for i in report.issues), report.issues
