"""Issue 18: bit rot in the newest record is not a torn write.

A record that was fsynced and acknowledged (``sync="always"``, or covered by ``sync()``) can
be damaged only from outside, never by a crash. Recovery must then report corruption, and no
read may return the key's older value or bring back a key its damaged tombstone deleted. A
record past the last fsync that is damaged is still a torn write, cut away without complaint.
"""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import flip_bit, newest_segment

import bitkv
from bitkv import durable, record
from bitkv import segment as seg_mod
from bitkv.fileio import FileIO

KEY = b"user:0042"
OLD = b"old value of user 42"
NEW = b"the NEWER value, acknowledged"
OTHERS = {b"other-%02d" % i: b"x%d" % i for i in range(5)}


def _records(path: str) -> list[record.ScannedRecord]:
    with open(path, "rb") as fh:
        buf = fh.read()
    return [r for r in record.scan(buf, seg_mod.HEADER_SIZE, len(buf))
            if isinstance(r, record.ScannedRecord)]


def _build(path: str, sync: str, newest: str) -> tuple[str, int, int]:
    """The newest record is a put of KEY over OLD, or a tombstone deleting KEY, made durable
    by the sync mode (or sync()); the process then dies (no close). Return the segment and
    the newest record's offset and size."""
    db = bitkv.open(path, sync=sync, auto_compact=False)
    for k, v in OTHERS.items():
        db.put(k, v)
    db.put(KEY, OLD)
    if newest == "put":
        db.put(KEY, NEW)
    else:
        db.delete(KEY)
    if sync != "always":
        db.sync()
    db._abandon()  # kill -9 after the acknowledgment
    seg = newest_segment(path)
    last = _records(seg)[-1]
    assert last.key == KEY
    mark = durable.read(path, FileIO())
    assert mark is not None and mark.end == last.offset + last.size  # vouched for
    return seg, last.offset, last.size


def _check_read(db: bitkv.Store, newest: str) -> bool:
    """Read KEY; return True if the read raised. Fail if it returned the rolled-back value."""
    try:
        got = db.get(KEY)
    except bitkv.CorruptionError:
        return True
    if newest == "put":
        assert got != OLD, "the older value came back silently"
        assert got in (None, NEW)
    else:
        assert got is None, "a deleted key came back"
    return False


@pytest.mark.parametrize("newest", ["put", "tombstone"])
@pytest.mark.parametrize("sync", ["always", "interval", "never"])
def test_every_bit_of_the_newest_durable_record(fast_tmp, sync, newest):
    pristine = str(fast_tmp / "pristine")
    seg, offset, size = _build(pristine, sync, newest)
    name = os.path.basename(seg)
    # Every bit under sync="always"; every 5th elsewhere (the code path is the same).
    stride = 1 if sync == "always" else 5
    raised = 0
    for bit in range(0, size * 8, stride):
        work = str(fast_tmp / f"flip-{bit}")
        shutil.copytree(pristine, work)
        flip_bit(os.path.join(work, name), offset + bit // 8, bit % 8)
        for readonly in (True, False):
            with bitkv.open(work, readonly=readonly, auto_compact=False) as db:
                report = db.recovery_report
                # Reported as corruption, never as a torn write; nothing cut.
                assert report.corrupt_bytes > 0, bit
                # Only the zeros past the data (preallocated room the kill left) were cut.
                assert report.truncated_bytes == report.zero_tail_bytes, bit
                raised += _check_read(db, newest)
                for k, v in OTHERS.items():
                    assert db.get(k) == v
        assert os.path.getsize(os.path.join(work, name)) == offset + size, "bytes were cut"
        assert not bitkv.check(work).healthy, bit
        shutil.rmtree(work)
    if newest == "put":
        # A damaged put never shows the older value: it raises (every flip we can attribute).
        assert raised == 2 * len(range(0, size * 8, stride))


def test_the_damaged_key_is_named_and_logged(db_path, caplog):
    seg, offset, _size = _build(db_path, "always", "put")
    flip_bit(seg, offset + record.HEADER_SIZE + len(KEY) + 3)  # a value byte
    with caplog.at_level("WARNING", logger="bitkv"), bitkv.open(db_path) as db:
        assert db.recovery_report.damaged_keys == [KEY]
        assert db.stats()["recovery"]["damaged_keys"] == 1
        with pytest.raises(bitkv.CorruptionError):
            db.get(KEY)
    assert any("damaged" in r.getMessage() for r in caplog.records)


def test_a_torn_write_past_the_durable_end_is_still_cut_silently(db_path):
    """The power-loss case: records written after the last fsync and damaged are torn."""
    db = bitkv.open(db_path, sync="never", auto_compact=False)
    db.put(KEY, OLD)
    db.sync()
    durable_end = db._log.active.size  # the file is longer: preallocated zeros
    db.put(KEY, NEW)  # never fsynced
    end = db._log.active.size
    db._abandon()
    seg = newest_segment(db_path)
    flip_bit(seg, end - 3)  # garble the unsynced record
    with bitkv.open(db_path) as db:
        report = db.recovery_report
        assert report.truncated_bytes > 0 and report.corrupt_bytes == 0
        assert db.get(KEY) == OLD  # the unsynced write is lost, as sync="never" allows
    assert os.path.getsize(seg) == durable_end
    assert bitkv.check(db_path).healthy


def test_bit_rot_before_the_mark_survives_reopens_the_same_way(db_path):
    """Recovering twice gives the same state (the damage stays, and stays attributed)."""
    seg, offset, _size = _build(db_path, "always", "tombstone")
    flip_bit(seg, offset + 13)  # the tombstone's seq
    for _ in range(3):
        with bitkv.open(db_path) as db:
            assert _check_read(db, "tombstone")
            db.put(b"unrelated", b"write")  # the writer goes on, in the same or a new segment
    with bitkv.open(db_path) as db:
        db.compact()  # compaction drops the key whose newest record is lost
        assert db.get(KEY) is None
    assert bitkv.check(db_path).healthy
