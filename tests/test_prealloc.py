"""Issue 14: the preallocated active segment and its zero tail (docs/format.md, "The zero tail").

While a writer holds the store, the active segment is longer than its data and zero past it;
sealing and a clean close cut the zeros, so those files keep exactly their records. A crash
leaves them, and every reader of the newest segment (recovery, read-only openers and
refresh(), ``bitkv check``) takes them for the end of the data, while zeros where the DURABLE
mark vouches for records are damage, never a torn tail.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import newest_segment

import bitkv
from bitkv import durable, history, record
from bitkv import segment as seg_mod
from bitkv.crashtest.recording import DiskModel, RecordingFileIO
from bitkv.fileio import FileIO
from bitkv.log import MAPPED_PREALLOC_ALIGN, MAPPED_PREALLOC_STEP, room_geometry

MODES = ["always", "interval", "never"]


def _data_end(path: str) -> int:
    """Where the last intact record of a segment file ends."""
    with open(path, "rb") as fh:
        buf = fh.read()
    end = seg_mod.HEADER_SIZE
    for item in record.scan(buf, seg_mod.HEADER_SIZE, len(buf)):
        if isinstance(item, record.ScannedRecord):
            end = item.offset + item.size
    return end


@pytest.mark.parametrize("sync", MODES)
def test_active_segment_is_preallocated_and_close_cuts_the_zeros(tmp_path, sync):
    path = str(tmp_path / "db")
    db = bitkv.open(path, sync=sync, auto_compact=False)
    for i in range(100):
        db.put(b"k%03d" % i, b"v" * 50)
    seg = newest_segment(path)
    size = os.path.getsize(seg)
    data_end = _data_end(seg)
    align, step = room_geometry(sync != "always")  # sync="always" pwrites, the rest map
    assert size > data_end  # room past the data ...
    assert size <= -(-data_end // align) * align + step  # ... at most a step of it
    assert size % align == 0  # ending on a boundary (a huge page's where records are mapped)
    with open(seg, "rb") as fh:
        assert fh.read()[data_end:] == bytes(size - data_end)  # all zeros
    db.close()
    assert os.path.getsize(seg) == data_end  # a clean close keeps exactly the records


@pytest.mark.parametrize("sync", MODES)
def test_rotation_seals_segments_at_their_data_size(tmp_path, sync):
    path = str(tmp_path / "db")
    with bitkv.open(path, sync=sync, auto_compact=False, max_segment_size=8192) as db:
        for i in range(400):
            db.put(b"k%03d" % i, b"v" * 50)
        sealed = [s for s in db._table.segments if s is not db._log.active]
        assert len(sealed) >= 3
        for s in sealed:
            assert os.path.getsize(s.path) == s.size == _data_end(s.path)
            assert s.size <= 8192


@pytest.mark.parametrize("sync", MODES)
def test_crash_with_a_zero_tail_reopens_with_every_write(tmp_path, sync):
    path = str(tmp_path / "db")
    db = bitkv.open(path, sync=sync, auto_compact=False)
    expected = {b"k%04d" % i: b"value %d" % i for i in range(500)}
    for k, v in expected.items():
        db.put(k, v)
    db._abandon()  # kill -9: what the page cache holds, zero tail included
    seg = newest_segment(path)
    zeros = os.path.getsize(seg) - _data_end(seg)
    assert zeros > 0
    with bitkv.open(path, sync=sync, auto_compact=False) as db:
        report = db.recovery_report
        assert report.zero_tail_bytes == report.truncated_bytes == zeros  # all zeros
        assert report.damage == []
        assert dict(db.items()) == expected
        db.put(b"after", b"crash")  # continues in the cut segment
    with bitkv.open(path, auto_compact=False) as db:
        assert db[b"after"] == b"crash" and len(db) == len(expected) + 1
        assert db.recovery_report.zero_tail_bytes == 0  # a clean close left none


def test_torn_record_before_the_zero_tail_is_cut_and_counted_apart(tmp_path):
    path = str(tmp_path / "db")
    db = bitkv.open(path, sync="never", auto_compact=False)
    db.put(b"kept", b"1")
    db.put(b"torn", b"x" * 200)
    db._abandon()
    seg = newest_segment(path)
    with open(seg, "rb") as fh:
        buf = fh.read()
    records = [r for r in record.scan(buf, seg_mod.HEADER_SIZE)
               if isinstance(r, record.ScannedRecord)]
    last = records[-1]
    with open(seg, "r+b") as fh:  # a crash kept only the first half of the last write
        fh.seek(last.offset + last.size // 2)
        fh.write(bytes(last.size - last.size // 2))
    total = os.path.getsize(seg)
    with bitkv.open(path, auto_compact=False) as db:
        report = db.recovery_report
        assert db.get(b"torn") is None and db[b"kept"] == b"1"
        assert report.truncated_bytes == total - last.offset
        assert 0 < report.truncated_bytes - report.zero_tail_bytes <= last.size // 2
        assert report.damage == []


def test_bit_rot_in_the_last_record_followed_by_zeros_is_damage(tmp_path):
    """A record the DURABLE mark vouches for, damaged, then the zero tail: corruption (the key
    must not roll back to its older value), not a torn write to cut."""
    path = str(tmp_path / "db")
    db = bitkv.open(path, sync="always", auto_compact=False)
    db.put(b"key", b"old value")
    db.put(b"key", b"new value, fsynced and acknowledged")
    db._abandon()
    seg = newest_segment(path)
    end = _data_end(seg)
    assert os.path.getsize(seg) > end  # zeros follow
    mark = durable.read(path, FileIO())
    assert mark is not None and mark.end == end
    with open(seg, "r+b") as fh:  # bit rot: the last bytes of the newest record zeroed
        fh.seek(end - 8)
        fh.write(bytes(8))
    with bitkv.open(path, auto_compact=False) as db:
        report = db.recovery_report
        assert report.damage and report.corrupt_bytes > 0
        assert report.truncated_bytes == report.zero_tail_bytes  # only the zeros were cut
        with pytest.raises(bitkv.CorruptionError):
            db.get(b"key")
    assert not bitkv.check(path).healthy


class _FullDisk(FileIO):
    """posix_fallocate fails with ENOSPC while ``full`` is set."""

    full = False

    def allocate(self, fd: int, offset: int, length: int) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device (test)")
        super().allocate(fd, offset, length)


@pytest.mark.parametrize("sync", MODES)
def test_enospc_from_preallocation_fails_the_put_cleanly(tmp_path, sync):
    path = str(tmp_path / "db")
    io = _FullDisk()
    db = bitkv.open(path, sync=sync, auto_compact=False, fileio=io)
    value = b"v" * 1000
    n = 0
    while db._log.active.allocated - db._log.active.size > 2 * len(value):
        db.put(b"k%05d" % n, value)
        n += 1
    size_before = db._log.active.size
    io.full = True
    with pytest.raises(OSError) as info:
        for i in range(n, n + 10):
            db.put(b"k%05d" % i, value)
            n += 1
    assert info.value.errno == errno.ENOSPC
    assert db._log.active.size >= size_before
    assert db.get(b"k%05d" % n) is None  # the failed put left nothing
    io.full = False
    db.put(b"k%05d" % n, value)  # the store stays writable: nothing was in doubt
    n += 1
    db.close()
    with bitkv.open(path) as db:
        assert len(db) == n and db.recovery_report.truncated_bytes == 0  # closed cleanly
        assert all(db[b"k%05d" % i] == value for i in range(n))


_HOLDER = textwrap.dedent("""
    import sys, bitkv
    db = bitkv.open(sys.argv[1], sync=sys.argv[2], auto_compact=False)
    for i in range(300):
        db.put(b"k%04d" % i, b"value %d" % i)
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(300, 400):
        db.put(b"k%04d" % i, b"value %d" % i)
    print("more", flush=True)
    sys.stdin.readline()
    db.close()
""")


@pytest.mark.parametrize("sync", ["always", "interval"])
def test_reader_and_check_on_a_store_another_process_writes(tmp_path, sync):
    path = str(tmp_path / "db")
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, path, sync], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        seg = newest_segment(path)
        assert os.path.getsize(seg) > _data_end(seg)  # the writer holds a zero tail open
        report = bitkv.check(path)
        assert report.healthy, report.issues
        assert report.torn_tail_bytes == report.zero_tail_bytes > 0
        assert not [i for i in report.issues if i.kind == "torn-tail"]
        with bitkv.open(path, readonly=True) as reader:
            report = reader.recovery_report
            assert report.truncated_bytes == report.zero_tail_bytes > 0  # zeros, in memory
            assert report.damage == []
            assert len(reader) == 300 and reader[b"k0299"] == b"value 299"
            cursor = history.Cursor(1)  # the change feed stops at the data's end too
            assert [c.key for c in reader.changes(cursor, max_records=1000)] == [
                b"k%04d" % i for i in range(300)]
            assert reader.changes(cursor) == []
            proc.stdin.write("\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "more"
            reader.refresh()
            assert len(reader) == 400 and reader[b"k0399"] == b"value 399"
            assert [c.key for c in reader.changes(cursor, max_records=1000)] == [
                b"k%04d" % i for i in range(300, 400)]
            report = reader.recovery_report
            assert report.truncated_bytes == report.zero_tail_bytes
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert os.path.getsize(seg) == _data_end(seg)


@pytest.mark.parametrize("sync", ["interval", "never"])
def test_the_power_loss_model_sees_map_writes(tmp_path, sync):
    """Writes into the shared map are writes the model records, unsynced until the next
    fdatasync: a power loss before it may lose them, one after it may not."""
    path = str(tmp_path / "db")
    io = RecordingFileIO(path)
    db = bitkv.open(path, sync=sync, auto_compact=False, fileio=io)
    db.put(b"a", b"1")
    writes = [ev for ev in io.events if ev[0] == "write" and b"a" in ev[3] and ev[3].endswith(b"1")]
    assert writes, "the map write of b'a' was not recorded"
    assert any(ev[0] == "allocate" for ev in io.events)
    model = DiskModel(io.initial)
    for ev in io.events:
        model.apply(ev)
    ino, offset, data = writes[-1][1], writes[-1][2], writes[-1][3]
    index = io.events.index(writes[-1])
    assert not model.is_durable(ino, offset + len(data), index)
    db.sync()
    model = DiskModel(io.initial)
    for ev in io.events:
        model.apply(ev)
    assert model.is_durable(ino, offset + len(data), index)
    db.close()


def test_torn_prefix_tears_writes_into_preallocated_room():
    """A power loss may keep any prefix of the unsynced writes into allocated zeros."""
    import random

    model = DiskModel({})
    model.apply(("create", "f", 1))
    model.apply(("allocate", 1, 4096))
    model.apply(("fsync", 1))
    model.apply(("write", 1, 0, b"A" * 100, None))
    model.apply(("write", 1, 100, b"B" * 100, None))
    seen = set()
    rng = random.Random(5)
    for _ in range(200):
        files, _desc = model.crash_state(rng, "torn_tail")
        if "f" in files:
            buf = files["f"]
            assert len(buf) == 4096
            kept = len(buf[:200].rstrip(b"\0"))
            assert buf[:kept] == (b"A" * 100 + b"B" * 100)[:kept]
            seen.add(kept)
    assert len(seen) > 10  # torn at many points, not all or nothing


def test_the_room_ends_on_2_mib_boundaries_as_the_data_grows(tmp_path):
    """The room grows in whole 2 MiB blocks, so the page cache can hold the segment in 2 MiB
    folios: a folio reaching past the file's end cannot be one, and the kernel falls back to
    4 KiB pages there (docs/performance.md, "Gets at scale")."""
    assert MAPPED_PREALLOC_ALIGN == 2 << 20 and MAPPED_PREALLOC_STEP >= MAPPED_PREALLOC_ALIGN
    path = str(tmp_path / "db")
    with bitkv.open(path, sync="never", auto_compact=False) as db:
        seg = newest_segment(path)
        sizes = set()
        for i in range(300):
            db.put(b"k%05d" % i, os.urandom(20_000))  # 6 MB in all: the room grows
            sizes.add(os.path.getsize(seg))
        assert len(sizes) >= 2
        assert all(size % MAPPED_PREALLOC_ALIGN == 0 for size in sizes), sorted(sizes)


def _file_pmd_mapped_kb(path: str) -> int:
    """FilePmdMapped of this process's maps of ``path`` (kB), from /proc/self/smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip().endswith(path)
            elif inside and first == "FilePmdMapped:":
                total += int(line.split()[1])
    return total


def _pmd_mapped_after_touching(path: str) -> int:
    import mmap

    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        for off in range(0, len(mm), 4096):
            mm[off]
        return _file_pmd_mapped_kb(path)
    finally:
        mm.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages: Linux")
@pytest.mark.parametrize("sync", ["interval", "never"])  # records copied into a shared map
def test_segments_written_by_the_store_sit_in_huge_folios(tmp_path, sync):
    """A segment written by the store comes back mapped with 2 MiB page-table entries, as one
    written by a single large write() does (sync="always" keeps its 1 MiB zero-written room:
    see bitkv/log.py). With the
    1 MiB room of before, every fault met the file's end within 2 MiB and got 4 KiB pages:
    at 48M keys every random get then paid a page fault and a TLB miss (5.3x the CPU of a get
    at 1M keys, docs/performance.md)."""
    probe = str(tmp_path / "probe")
    with open(probe, "wb") as fh:
        fh.write(b"x" * (8 << 20))  # one write: the page cache takes it in large folios
    if _pmd_mapped_after_touching(probe) == 0:
        pytest.skip("this kernel or filesystem keeps no file in 2 MiB folios (THP off, or a "
                    "filesystem without large folios)")
    path = str(tmp_path / "db")
    value = os.urandom(10_000)  # incompressible: what is written is what lands on disk
    with bitkv.open(path, sync=sync, auto_compact=False, max_segment_size=16 << 20) as db:
        for i in range(2000):
            db.put(b"k%05d" % i, value)  # 20 MB: a sealed segment and an active one
    sealed = sorted(f for f in os.listdir(path) if f.endswith(".data"))[0]
    assert _pmd_mapped_after_touching(os.path.join(path, sealed)) >= 8 << 10  # >= 4 of 8 hp
