"""Compaction: tombstones, concurrent writes, expiry, temp files, durability order, the
background compactor and read-only openers.

Each test drives a small store (4 KiB segments) with explicit ``compact()`` calls and checks
the exact logical contents against a model: every key with its newest value and expiry, and
nothing deleted or expired ever visible again, after the compaction, after ``_abandon()``
(kill -9) at every file operation of the compaction, after reopen and after a further
compaction. Regressions of known bugs in other Bitcask-style stores are named in the tests:
basho/bitcask #82 and #205, rosedb #251, #258 and #297, nutsdb #267 and #392.
"""

from __future__ import annotations

import itertools
import os
import random
import threading
import time

import pytest

import bitkv
from bitkv import compaction
from bitkv import segment as seg_mod
from bitkv.fileio import FileIO

SEG = 4096


class Clock:
    """An injected clock that moves only when told (ms-exact)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def ms(self) -> int:
        return int(self.now * 1000)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def opendb(path, clock, **kw):
    kw.setdefault("max_segment_size", SEG)
    kw.setdefault("auto_compact", False)
    kw.setdefault("sync", "never")
    return bitkv.open(path, clock=clock, **kw)


# -- the model ------------------------------------------------------------------------------

class Model:
    """What the store must hold: key -> (value, expiry_ms or 0); absent means deleted."""

    def __init__(self, db, clock: Clock) -> None:
        self.db = db
        self.clock = clock
        self.data: dict[bytes, tuple[bytes, int]] = {}
        self.universe: set[bytes] = set()

    def put(self, k: bytes, v: bytes, ttl: float | None = None) -> None:
        self.db.put(k, v, ttl=ttl)
        exp = 0 if ttl is None else self.clock.ms() + round(ttl * 1000)
        self.data[k] = (v, exp)
        self.universe.add(k)

    def delete(self, k: bytes) -> None:
        self.db.delete(k)
        self.data.pop(k, None)
        self.universe.add(k)

    def expire(self, k: bytes, ttl: float) -> None:
        if self.db.expire(k, ttl):
            v, _ = self.data[k]
            self.data[k] = (v, self.clock.ms() + round(ttl * 1000))

    def live(self) -> dict[bytes, tuple[bytes, int]]:
        now = self.clock.ms()
        return {k: (v, e) for k, (v, e) in self.data.items() if not e or e > now}

    def check(self, db=None) -> None:
        db = db or self.db
        now = self.clock.ms()
        live = self.live()
        assert sorted(db.keys()) == sorted(live)
        assert len(db) == len(live)
        for k in sorted(self.universe):
            got = db.get_with_ttl(k)
            if k in live:
                v, exp = live[k]
                assert got == (v, None if not exp else (exp - now) / 1000.0), k
            else:
                assert got is None, f"{k!r} is deleted or expired but reads {got!r}"
                assert k not in db


def data_files(path) -> list[str]:
    return sorted(n for n in os.listdir(path)
                  if seg_mod.parse_id(n, seg_mod.DATA_SUFFIX) is not None)


def data_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in data_files(path))


def temp_files(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(seg_mod.TMP_SUFFIX))


def segment_kinds(path) -> dict[str, int]:
    out = {}
    for n in data_files(path):
        try:
            with open(os.path.join(path, n), "rb") as fh:
                out[n] = seg_mod.decode_header(fh.read(seg_mod.HEADER_SIZE)).kind
        except FileNotFoundError:  # a background compaction removed it since the listing
            continue
    return out


def fill_generation_1(m: Model, rng: random.Random, n: int = 150) -> None:
    """Keys spread over several segments, then deletes and overwrites in later segments, so
    tombstones and the values they hide live in different inputs."""
    for i in range(n):
        m.put(b"k%03d" % i, b"g1-%03d-" % i + bytes([65 + i % 26]) * rng.randrange(10, 80))
    for i in range(0, n, 4):
        m.delete(b"k%03d" % i)
    for i in range(1, n, 5):
        m.put(b"k%03d" % i, b"g1b-%03d" % i)
    for i in range(2, n, 9):
        m.put(b"k%03d" % i, b"g1t-%03d" % i, ttl=5)  # expired before the compaction
    for i in range(3, n, 11):
        m.put(b"k%03d" % i, b"g1l-%03d" % i, ttl=500)  # outlives it


def fill_generation_2(m: Model, rng: random.Random, n: int = 150) -> None:
    """After a compaction: delete keys whose only copy is in a compacted segment, overwrite
    others, resurrect some deleted keys, let some expire."""
    for i in range(1, n, 3):
        m.delete(b"k%03d" % i)
    for i in range(0, n, 8):
        m.put(b"k%03d" % i, b"g2-back-%03d" % i)  # deleted in gen 1, written again
    for i in range(5, n, 7):
        m.put(b"k%03d" % i, b"g2t-%03d" % i, ttl=5)
    for i in range(n, n + 40):
        m.put(b"k%03d" % i, b"g2-new-%03d-" % i + b"z" * rng.randrange(10, 60))
    for i in range(n, n + 40, 6):
        m.delete(b"k%03d" % i)


# -- a FileIO that records every operation and can "crash" before the Nth one --------------

class Crash(BaseException):
    """The process dies here: nothing after it runs (not even cleanup handlers' I/O)."""


class RecordingIO(FileIO):
    """Records (op, path...) while ``armed``; raises :class:`Crash` at op number ``crash_at``
    and at every op after it. fsyncs are recorded but skipped (kill -9 keeps the page cache,
    and the tests stay fast)."""

    def __init__(self) -> None:
        self.armed = False
        self.crash_at: int | None = None
        self.crash_when = None  # or a predicate on the op tuple
        self.crashed = False
        self.ops: list[tuple[str, ...]] = []
        self.fd_path: dict[int, str] = {}

    def _op(self, *op: str) -> None:
        if self.crashed:
            raise Crash
        if not self.armed:
            return
        if (self.crash_at is not None and len(self.ops) >= self.crash_at) or (
                self.crash_when is not None and self.crash_when(op)):
            self.crashed = True
            raise Crash
        self.ops.append(op)

    def _name(self, fd: int) -> str:
        return os.path.basename(self.fd_path.get(fd, "?"))

    def create(self, path):
        self._op("create", os.path.basename(path))
        fd = super().create(path)
        self.fd_path[fd] = path
        return fd

    def open_rw(self, path):
        fd = super().open_rw(path)
        self.fd_path[fd] = path
        return fd

    def open_read(self, path):
        fd = super().open_read(path)
        self.fd_path[fd] = path
        return fd

    def write(self, fd, data):
        self._op("write", self._name(fd))
        super().write(fd, data)

    def fsync(self, fd):
        self._op("fsync", self._name(fd))

    def fsync_dir(self, path):
        self._op("fsync_dir")

    def truncate(self, fd, size):
        self._op("truncate", self._name(fd))
        super().truncate(fd, size)

    def rename(self, src, dst):
        self._op("rename", os.path.basename(src), os.path.basename(dst))
        super().rename(src, dst)

    def unlink(self, path):
        self._op("unlink", os.path.basename(path))
        super().unlink(path)

    def close(self, fd):
        self.fd_path.pop(fd, None)
        super().close(fd)


def _prepare(path, clock, scenario: str):
    io = RecordingIO()
    db = opendb(path, clock, fileio=io)
    m = Model(db, clock)
    rng = random.Random(82)
    fill_generation_1(m, rng)
    if scenario == "second":
        clock.advance(10)
        db.compact()
        fill_generation_2(m, rng)
    clock.advance(10)  # the ttl=5 records are expired now; the ttl=500 ones are not
    return db, io, m


def _verify_after_crash(path, clock, m: Model) -> None:
    with opendb(path, clock) as db:
        assert temp_files(path) == []
        m.check(db)
    with opendb(path, clock) as db:  # a second open sees the same state
        m.check(db)
        db.compact()  # compacting whatever mix the crash left keeps it exact
        m.check(db)
        db.put(b"after", b"crash")
    m.data[b"after"] = (b"crash", 0)
    m.universe.add(b"after")
    with opendb(path, clock) as db:
        m.check(db)
        assert db.recovery_report.ignored_hints == []


@pytest.mark.parametrize("scenario", ["first", "second"])
def test_deleted_and_expired_keys_never_return_after_a_crash_at_any_compaction_step(
        tmp_path, scenario):
    """basho/bitcask #82, rosedb #258: kill the compaction before each of its file operations
    (creates, writes, fsyncs, renames, unlinks, directory fsyncs), so every mix of compacted
    and uncompacted segments a crash can leave is reopened; then compact that mix again."""
    clock = Clock()
    db, io, m = _prepare(tmp_path / "dry", clock, scenario)
    io.armed = True
    summary = db.compact()
    io.armed = False
    assert summary["records_dropped"] > 0 and summary["segments_in"] >= 3
    m.check()
    db.close()
    _verify_after_crash(tmp_path / "dry", clock, m)
    total = len(io.ops)
    assert sum(op[0] == "unlink" for op in io.ops) >= 3
    for n in range(total):
        clock = Clock()
        path = tmp_path / f"crash{n}"
        db, io, m = _prepare(path, clock, scenario)
        io.armed = True
        io.crash_at = n
        with pytest.raises(Crash):
            db.compact()
        db._abandon()
        _verify_after_crash(path, clock, m)


def test_tombstone_outlives_values_across_reopens_and_two_compactions(db_path, clock):
    """The same key deleted, rewritten and deleted again across compacted and append
    segments, with reopen and kill -9 in between, stays deleted (rosedb #258)."""
    db = opendb(db_path, clock)
    m = Model(db, clock)
    rng = random.Random(258)
    fill_generation_1(m, rng)
    m.put(b"victim", b"v1")
    db.compact()  # victim lives in a compacted segment
    m.delete(b"victim")  # its tombstone in an append segment
    for i in range(60):
        m.put(b"pad%02d" % i, b"p" * 60)  # push the tombstone into a sealed segment
    db._abandon()
    db = opendb(db_path, clock)
    m.db = db
    m.check()
    db.compact()  # second compaction: drops the tombstone and the compacted value together
    m.check()
    m.put(b"victim", b"v2")
    m.delete(b"victim")
    db._abandon()
    for _ in range(2):
        db = opendb(db_path, clock)
        m.db = db
        m.check()
        db.compact()
        m.check()
        db.close()
    with opendb(db_path, clock) as db:
        m.check(db)


# -- writes made during a compaction win (nutsdb #392) ------------------------------------

def test_writes_from_the_progress_callback_win(db_path, clock):
    db = opendb(db_path, clock)
    m = Model(db, clock)
    for i in range(200):
        m.put(b"k%03d" % i, b"r0-%03d-" % i + b"x" * 50)
    for i in range(0, 200, 2):  # odd keys stay live in the oldest inputs
        m.put(b"k%03d" % i, b"r1-%03d-" % i + b"x" * 50)
    calls = []

    def progress(done, total):
        calls.append((done, total))
        if len(calls) == 1:  # the first input is copied, the others are not yet
            for i in range(1, 200, 6):
                m.put(b"k%03d" % i, b"during-%03d" % i + b"y" * 40)
            for i in range(3, 200, 10):
                m.delete(b"k%03d" % i)
            for i in range(5, 200, 14):
                m.expire(b"k%03d" % i, 100)
            for i in range(0, 200, 8):
                m.put(b"k%03d" % i, b"early-%03d" % i)
            for i in range(200, 230):
                m.put(b"k%03d" % i, b"new-%03d" % i)
        if done == total:  # everything is copied; nothing is switched yet
            for i in range(7, 200, 6):
                m.put(b"k%03d" % i, b"late-%03d" % i + b"z" * 30)
            for i in range(9, 200, 10):
                m.delete(b"k%03d" % i)
            for i in range(2, 200, 8):
                m.expire(b"k%03d" % i, 50)
            for i in range(0, 200, 16):
                m.delete(b"k%03d" % i)

    summary = db.compact(progress)
    assert len(calls) == summary["segments_in"] >= 3
    assert calls[-1][0] == calls[-1][1] == summary["bytes_in"]
    assert all(a[0] < b[0] for a, b in itertools.pairwise(calls))
    # Keys rewritten or deleted after their copy were copied but not switched.
    assert summary["keys_kept"] < 230 - 60
    m.check()
    db.close()
    with opendb(db_path, clock) as db:
        m.db = db
        m.check()
        db.compact()
        m.check()
    with opendb(db_path, clock) as db:
        m.check(db)


def test_a_writer_thread_racing_compaction_keeps_its_newest_values(db_path, clock):
    db = opendb(db_path, clock)
    m = Model(db, clock)
    rng = random.Random(392)
    for r in range(3):
        for i in range(150):
            m.put(b"k%03d" % i, b"r%d-%03d-" % (r, i) + b"x" * rng.randrange(20, 90))
    started = threading.Event()
    result: list = []

    def progress(done, total):
        started.set()
        time.sleep(0.003)  # let the writer run between inputs

    def run():
        try:
            result.append(db.compact(progress))
        except BaseException as exc:  # pragma: no cover - reported below
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(10)
    ops = 0
    while t.is_alive() or ops < 50:
        k = b"k%03d" % rng.randrange(170)
        op = rng.random()
        if op < 0.6:
            m.put(k, b"w%05d" % ops + b"y" * rng.randrange(0, 60))
        elif op < 0.85:
            m.delete(k)
        elif k in m.live():
            m.expire(k, rng.choice([1, 1000]))
        ops += 1
    t.join()
    assert isinstance(result[0], dict), result
    m.check()
    clock.advance(2)  # the ttl=1 keys expire
    m.check()
    db.close()
    with opendb(db_path, clock) as db:
        m.db = db
        m.check()
        db.compact()
        m.check()
    with opendb(db_path, clock) as db:
        m.check(db)


# -- expired records (nutsdb #267, rosedb #297) ---------------------------------------------

def test_expired_records_are_dropped_and_their_space_reclaimed(db_path, clock):
    db = opendb(db_path, clock)
    m = Model(db, clock)
    for i in range(100):
        m.put(b"old%03d" % i, b"o" * 100)  # an older version without a TTL ...
    for i in range(100):
        m.put(b"old%03d" % i, b"t" * 100, ttl=10)  # ... hidden by one that will expire
    for i in range(100):
        m.put(b"eph%03d" % i, b"e" * 100, ttl=10)
    for i in range(50):
        m.put(b"keep%03d" % i, b"k" * 100)
    for i in range(50):
        m.put(b"later%03d" % i, b"l" * 100, ttl=1000)
    before = data_bytes(db_path)
    clock.advance(11)
    m.check()
    summary = db.compact()
    record = bitkv.record.HEADER_SIZE + 7 + 100
    # (live records in the active segment, not sealed because it holds no garbage, stay put)
    assert summary["keys_kept"] + db._log.active.live_bytes // record == 100
    assert summary["records_dropped"] == 300
    assert summary["bytes_out"] < 100 * (record + 2) + 10 * seg_mod.HEADER_SIZE
    after = data_bytes(db_path)
    assert before - after >= 300 * record
    st = db.stats()
    assert st["keys"] == 100 and st["dead_bytes"] == 0 and st["expiring_keys"] == 50
    m.check()
    db.close()
    with opendb(db_path, clock) as db:
        m.db = db
        m.check()
        assert len(db) == 100
        assert db.get(b"old007") is None  # the older, TTL-less version does not resurface
    # The kept keys with a TTL expire later, and the next compaction reclaims them too.
    clock.advance(1000)
    with opendb(db_path, clock) as db:
        m.db = db
        m.check()
        summary = db.compact()
        assert summary["keys_kept"] == 50 and summary["records_dropped"] == 50
        m.check()
    with opendb(db_path, clock) as db:
        m.check(db)
        assert db.stats()["expiring_keys"] == 0


def test_expired_keys_stay_invisible_even_if_the_clock_is_set_back(db_path, clock):
    """Once compaction dropped an expired record, nothing of the key remains on disk: with the
    clock set back before its expiry, the key is gone rather than resurrected with an older
    value."""
    db = opendb(db_path, clock)
    db.put(b"k", b"old")
    for i in range(60):
        db.put(b"pad%02d" % i, b"p" * 60)
    db.put(b"k", b"new", ttl=5)
    clock.advance(6)
    db.compact()
    db.close()
    clock.advance(-6)
    with opendb(db_path, clock) as db:
        assert db.get(b"k") is None


# -- temp files (rosedb #251) and re-merging (basho/bitcask #205) ----------------------------

def test_leftover_temp_files_are_removed_at_the_next_open(db_path, clock):
    db = opendb(db_path, clock)
    io = RecordingIO()
    db._io = io  # the compaction's I/O only
    m = Model(db, clock)
    fill_generation_1(m, random.Random(251))
    clock.advance(10)
    io.armed = True
    # Crash right after the last temp file was fsynced, before the first rename.
    io.crash_when = lambda op: op[0] == "rename" and op[1].endswith(".data.tmp")
    with pytest.raises(Crash):
        db.compact()
    db._abandon()
    left = temp_files(db_path)
    assert left and any(n.endswith(".data.tmp") for n in left) \
        and any(n.endswith(".hint.tmp") for n in left)
    # A read-only opener leaves them alone (and ignores them) ...
    with opendb(db_path, clock, readonly=True) as ro:
        m.check(ro)
    assert temp_files(db_path) == left
    # ... the next writable open removes them.
    with opendb(db_path, clock) as db:
        assert sorted(db.recovery_report.removed_temp_files) == left
        assert temp_files(db_path) == []
        m.check(db)
        db.compact()  # and the ids the temp files had are no obstacle
        m.check(db)
    assert temp_files(db_path) == []


def test_compacting_a_compacted_store_reclaims_nothing_and_changes_nothing(db_path, clock):
    """basho/bitcask #205. FINDING (not a correctness bug): bitkv re-merges its own outputs on
    every explicit compact(): segments_in == segments_out > 0 with no garbage at all, i.e. a
    full rewrite (read + write + 2 fsyncs per output) of all live data. The background
    compactor is not affected (it runs only when dead bytes pass its thresholds)."""
    db = opendb(db_path, clock)
    m = Model(db, clock)
    fill_generation_1(m, random.Random(205))
    clock.advance(10)
    first = db.compact()
    assert first["bytes_reclaimed"] > 0
    sizes = sorted(os.path.getsize(os.path.join(db_path, n)) for n in data_files(db_path))
    for _ in range(3):
        again = db.compact()
        assert again["records_dropped"] == 0 and again["bytes_reclaimed"] == 0
        assert again["segments_in"] == 0 or (
            again["bytes_out"] == again["bytes_in"] == first["bytes_out"]
            and again["keys_kept"] == first["keys_kept"]
            and again["segments_out"] == again["segments_in"] == first["segments_out"])
        assert sorted(os.path.getsize(os.path.join(db_path, n))
                      for n in data_files(db_path)) == sizes
        m.check()
    db.close()
    with opendb(db_path, clock) as db:
        m.check(db)


def test_background_compactor_does_not_rerun_on_a_compacted_store(db_path, clock):
    with opendb(db_path, clock, auto_compact=True, compact_min_dead_bytes=1024,
                compact_dead_ratio=0.3) as db:
        for r in range(4):
            for i in range(100):
                db.put(b"k%03d" % i, b"%d" % r * 80)
        deadline = time.monotonic() + 20
        while db.stats()["last_compaction"] is None and time.monotonic() < deadline:
            db._maintenance.wake()
            time.sleep(0.02)
        first = db.stats()["last_compaction"]
        assert first is not None
        # Wait until the compactor is idle with no garbage left (it may need a second pass
        # for the segment that was active during the first one), then poke it repeatedly.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with db._compact_lock:  # no compaction in flight
                if not db._compaction_due():
                    settled = db.stats()["last_compaction"]
                    break
            db._maintenance.wake()
            time.sleep(0.02)
        else:
            pytest.fail("the store still had garbage to compact after 20 s")
        names = data_files(db_path)
        for _ in range(10):
            db._maintenance.wake()
            time.sleep(0.02)
        assert db.stats()["last_compaction"] is settled
        assert data_files(db_path) == names


# -- durability order ----------------------------------------------------------------------

def test_inputs_are_removed_only_after_outputs_and_hints_are_durable(db_path, clock):
    io = RecordingIO()
    db = opendb(db_path, clock, fileio=io)
    m = Model(db, clock)
    fill_generation_1(m, random.Random(3))
    clock.advance(10)
    db.compact()
    fill_generation_2(m, random.Random(4))  # inputs now include compacted segments with hints
    clock.advance(10)
    before = set(data_files(db_path))
    io.armed = True
    summary = db.compact()
    io.armed = False
    # The summary kept in COMPACTION (lastcompaction.py) is written after the commit and is
    # no part of its ordering: leave its own operations out (its directory fsync stays).
    ops = [op for op in io.ops if not (len(op) > 1 and op[1].startswith("COMPACTION"))]
    after = set(data_files(db_path))
    kinds = segment_kinds(db_path)
    outputs = sorted(n for n in after - before if kinds[n] == seg_mod.KIND_COMPACTED)
    inputs_gone = before - after
    assert len(outputs) == summary["segments_out"] >= 2
    out_ids = {seg_mod.parse_id(n, seg_mod.DATA_SUFFIX) for n in outputs}
    in_ids = {seg_mod.parse_id(n, seg_mod.DATA_SUFFIX) for n in inputs_gone}
    assert len(in_ids) == summary["segments_in"]

    def index(pred, start=0):
        for i in range(start, len(ops)):
            if pred(ops[i]):
                return i
        return None

    unlinks = [i for i, op in enumerate(ops) if op[0] == "unlink"]
    first_unlink = unlinks[0]
    # Every output's data and hint: created as *.tmp, written, fsynced, renamed ...
    last_rename = -1
    for sid in out_ids:
        for name in (seg_mod.data_name(sid), seg_mod.hint_name(sid)):
            tmp = name + seg_mod.TMP_SUFFIX
            c = index(lambda op, t=tmp: op == ("create", t))
            w = index(lambda op, t=tmp: op == ("write", t))
            f = index(lambda op, t=tmp: op == ("fsync", t))
            r = index(lambda op, t=tmp, n=name: op == ("rename", t, n))
            assert None not in (c, w, f, r), (name, ops)
            assert c < w < f < r < first_unlink, name
            last_rename = max(last_rename, r)
    # ... the directory fsynced after the last rename ...
    d = index(lambda op: op == ("fsync_dir",), last_rename)
    assert d is not None and d < first_unlink
    # ... then the commit point: the MANIFEST replaced (temp file, fsync, rename, directory
    # fsync) listing the outputs, all before the first input is removed ...
    mw = index(lambda op: op == ("write", "MANIFEST.tmp"), d)
    mf = index(lambda op: op == ("fsync", "MANIFEST.tmp"), d)
    mr = index(lambda op: op == ("rename", "MANIFEST.tmp", "MANIFEST"), d)
    md = index(lambda op: op == ("fsync_dir",), mr or 0)
    assert None not in (mw, mf, mr, md), ops[d:]
    assert d < mw < mf < mr < md < first_unlink
    # ... no rename or output write after the first unlink; the inputs are no longer part of
    # the store, so they go in any order, with one directory fsync at the end.
    assert all(op[0] in ("unlink", "fsync_dir") for op in ops[first_unlink:]), ops[first_unlink:]
    data_unlinks = [seg_mod.parse_id(ops[i][1], seg_mod.DATA_SUFFIX) for i in unlinks
                    if ops[i][1].endswith(seg_mod.DATA_SUFFIX)]
    assert set(data_unlinks) == in_ids
    assert ops[-1] == ("fsync_dir",)
    m.check()
    db.close()


def test_inputs_are_removed_in_load_order(db_path, clock):
    """Inputs go oldest first by (order_seq, id), not by id: compacted segments have larger
    ids than the append segments written after them."""
    io = RecordingIO()
    db = opendb(db_path, clock, fileio=io)
    m = Model(db, clock)
    fill_generation_1(m, random.Random(5))
    clock.advance(10)
    db.compact()
    fill_generation_2(m, random.Random(6))
    db.compact()  # outputs of the first compaction, append segments, interleaved ids
    fill_generation_2(m, random.Random(7))
    with db._lock:
        order = [s.id for s in db._table.segments if s is not db._log.active]
        by_id = sorted(order)
    assert order != by_id  # the case worth testing
    io.armed = True
    db.compact()
    io.armed = False
    removed = [seg_mod.parse_id(op[1], seg_mod.DATA_SUFFIX) for op in io.ops
               if op[0] == "unlink" and op[1].endswith(seg_mod.DATA_SUFFIX)]
    # (the active segment, sealed first by compact(), is the newest input: removed last)
    assert removed[: len(order)] == order
    m.check()
    db.close()


# -- the background compactor --------------------------------------------------------------

def test_background_compaction_runs_and_keeps_contents(db_path, clock):
    db = opendb(db_path, clock, auto_compact=True, compact_min_dead_bytes=2048,
                compact_dead_ratio=0.3)
    m = Model(db, clock)
    rng = random.Random(9)
    deadline = time.monotonic() + 20
    r = 0
    while db.stats()["last_compaction"] is None and time.monotonic() < deadline:
        for i in range(80):  # overwrites: each round rotates a few segments
            m.put(b"k%03d" % i, b"r%d-" % r + b"v" * rng.randrange(20, 80))
        m.delete(b"k%03d" % rng.randrange(80))
        r += 1
        time.sleep(0.01)
    last = db.stats()["last_compaction"]
    assert last is not None, "the background compactor never ran"
    assert last["bytes_reclaimed"] > 0 and not last["aborted"]
    assert db.stats()["last_compaction_error"] is None
    # keep writing while it may run again
    for r2 in range(5):
        for i in range(80):
            m.put(b"k%03d" % i, b"s%d-" % r2 + b"w" * 40)
        time.sleep(0.01)
    m.check()
    assert any(kind == seg_mod.KIND_COMPACTED for kind in segment_kinds(db_path).values())
    db.close()
    with opendb(db_path, clock) as db:
        m.db = db
        m.check()


def test_auto_compact_false_never_compacts(db_path, clock):
    with opendb(db_path, clock, auto_compact=False, compact_min_dead_bytes=0,
                compact_dead_ratio=0.01) as db:
        assert not db._maintenance.runs_maintenance
        for r in range(8):
            for i in range(80):
                db.put(b"k%03d" % i, b"%d" % r * 60)
            db._maintenance.wake()
            time.sleep(0.02)
        st = db.stats()
        assert st["last_compaction"] is None and st["dead_bytes"] > 0
        assert set(segment_kinds(db_path).values()) == {seg_mod.KIND_APPEND}
        assert not any(n.endswith(".hint") for n in os.listdir(db_path))


# -- read-only openers ---------------------------------------------------------------------

def test_readonly_opener_keeps_reading_segments_compacted_away(db_path, clock):
    w = opendb(db_path, clock)
    m = Model(w, clock)
    fill_generation_1(m, random.Random(11))
    ro = opendb(db_path, clock, readonly=True)
    snapshot = Model(ro, clock)
    snapshot.data = dict(m.data)
    snapshot.universe = set(m.universe)
    snapshot.check()
    clock.advance(10)  # ttl=5 keys expire for both
    for i in range(0, 150, 2):
        m.put(b"k%03d" % i, b"rewritten-%03d" % i)
    for i in range(1, 150, 3):
        m.delete(b"k%03d" % i)
    before = set(data_files(db_path))
    w.compact()
    assert not before & set(data_files(db_path)) - {seg_mod.data_name(w.stats()["active_segment"])}
    # Every file the reader loaded from (but possibly the newest) is gone; its maps still
    # hold the data as of its open.
    snapshot.check()
    ro.refresh()
    m.check(ro)
    assert ro.recovery_report.segments_from_hints >= 1
    # More writes after the compaction are picked up incrementally.
    for i in range(150, 170):
        m.put(b"k%03d" % i, b"after-%03d" % i)
    m.delete(b"k002")
    ro.refresh()
    m.check(ro)
    w.compact()
    ro.refresh()
    m.check(ro)
    ro.close()
    w.close()


def test_a_failing_progress_callback_aborts_cleanly(db_path, clock):
    db = opendb(db_path, clock)
    m = Model(db, clock)
    fill_generation_1(m, random.Random(12))
    clock.advance(10)
    files = data_files(db_path)

    def progress(done, total):
        if done > total // 2:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        db.compact(progress)
    assert temp_files(db_path) == []
    assert [n for n in data_files(db_path) if n in files] == files  # no input removed
    m.check()
    db.compact()
    m.check()
    db.close()
    with opendb(db_path, clock) as db:
        m.check(db)


# -- regressions: bugs these tests found, fixed in 0e51dbd ----------------------------------

def test_no_orphan_hint_survives_a_crash_between_an_inputs_two_unlinks(db_path, clock):
    """Compaction removed an input's .data, then its .hint, then fsynced the directory: a kill
    between the two unlinks left an orphan hint nothing ever removed. Fixed by removing the
    hint first, and by a writable open removing hints without a segment."""
    io = RecordingIO()
    db = opendb(db_path, clock, fileio=io)
    m = Model(db, clock)
    fill_generation_1(m, random.Random(13))
    clock.advance(10)
    db.compact()  # outputs with hints: the next compaction's inputs
    fill_generation_2(m, random.Random(14))
    io.armed = True
    # Die between the two unlinks of the oldest input (a compacted segment with a hint),
    # whichever of its files goes first.
    unlinks = []

    def second_unlink(op):
        if op[0] == "unlink":
            unlinks.append(op)
        return len(unlinks) == 2

    io.crash_when = second_unlink
    with pytest.raises(Crash):
        db.compact()
    db._abandon()
    for _ in range(2):
        with opendb(db_path, clock) as db:
            m.check(db)
            db.compact()
    names = os.listdir(db_path)
    datas = {seg_mod.parse_id(n, seg_mod.DATA_SUFFIX) for n in names} - {None}
    hints = {seg_mod.parse_id(n, seg_mod.HINT_SUFFIX) for n in names} - {None}
    assert hints <= datas, f"orphan hints: {sorted(hints - datas)}"


def test_an_orphan_hint_is_removed_by_a_writable_open_only(db_path, clock):
    with opendb(db_path, clock) as db:
        fill_generation_1(Model(db, clock), random.Random(15))
        db.compact()
    hints = sorted(n for n in os.listdir(db_path) if n.endswith(seg_mod.HINT_SUFFIX))
    orphan = os.path.join(db_path, seg_mod.hint_name(999_999))
    with open(os.path.join(db_path, hints[0]), "rb") as src, open(orphan, "wb") as dst:
        dst.write(src.read())
    with opendb(db_path, clock, readonly=True) as ro:
        assert ro.recovery_report.segments_from_hints == len(hints)
    assert os.path.exists(orphan)
    with opendb(db_path, clock) as db:
        assert db.recovery_report.segments_from_hints == len(hints)
    assert not os.path.exists(orphan)


class _GateIO(FileIO):
    """Writer side: stop the compaction just before its first unlink until ``go`` is set."""

    def __init__(self) -> None:
        self.armed = False
        self.at_unlink = threading.Event()
        self.go = threading.Event()

    def unlink(self, path):
        if self.armed and not self.at_unlink.is_set():
            self.at_unlink.set()
            self.go.wait(10)
        super().unlink(path)


class _ListThenWaitIO(FileIO):
    """Reader side: the ``nth`` directory listing lets the writer's compaction finish before
    returning, i.e. the inputs vanish between the reader's listdir and its opens."""

    def __init__(self, gate: _GateIO, done: threading.Event, nth: int) -> None:
        self.gate = gate
        self.done = done
        self.calls = 0
        self.nth = nth

    def listdir(self, path):
        names = super().listdir(path)
        self.calls += 1
        if self.calls == self.nth:
            self.gate.go.set()
            self.done.wait(10)
        return names


def _writer_compacting_in_background(path, clock):
    gate = _GateIO()
    w = opendb(path, clock, fileio=gate)
    m = Model(w, clock)
    for r in range(2):
        for i in range(200):
            m.put(b"k%03d" % i, b"%d" % r * 60)
    done = threading.Event()

    def run():
        try:
            w.compact()
        finally:
            done.set()

    t = threading.Thread(target=run)
    return w, m, gate, done, t


def test_readonly_open_racing_compaction_removal(db_path, clock):
    """A read-only open listed the directory, then the writer's compaction removed an input
    before the reader opened it: FileNotFoundError. Fixed: a read-only load starts over."""
    w, m, gate, done, t = _writer_compacting_in_background(db_path, clock)
    gate.armed = True
    t.start()
    try:
        assert gate.at_unlink.wait(10)
        with opendb(db_path, clock, readonly=True,
                    fileio=_ListThenWaitIO(gate, done, nth=1)) as ro:
            m.check(ro)
    finally:
        gate.go.set()
        t.join()
        w.close()


def test_readonly_refresh_racing_compaction_removal(db_path, clock):
    """The same race through refresh(), which falls back to a full load after a compaction."""
    w, m, gate, done, t = _writer_compacting_in_background(db_path, clock)
    reader_io = _ListThenWaitIO(gate, done, nth=0)
    ro = opendb(db_path, clock, readonly=True, fileio=reader_io)
    try:
        m.check(ro)
        gate.armed = True
        t.start()
        assert gate.at_unlink.wait(10)
        # refresh(): extend() lists (outputs appeared: full reload), then load() lists again.
        reader_io.nth = reader_io.calls + 2
        ro.refresh()
        m.check(ro)
    finally:
        gate.go.set()
        t.join()
        ro.close()
        w.close()


def test_compaction_by_the_writer_path_keeps_a_tombstone_in_the_active_segment(db_path, clock):
    """The background compactor compacts without sealing the active segment first: a
    tombstone there outlives the compacted-away value it hides, across kill -9 and reopen."""
    from bitkv import compaction

    db = opendb(db_path, clock)
    m = Model(db, clock)
    m.put(b"victim", b"old")
    m.put(b"big", b"B" * 10_000)  # larger than a segment: an output of its own
    for i in range(80):
        m.put(b"pad%02d" % i, b"p" * 60)
    m.delete(b"victim")
    active = db._log.active
    with db._compact_lock:
        summary = compaction.compact(db._compaction_host())
    assert db._log.active is active and summary.segments_in >= 2 and not summary.aborted
    m.check()
    db._abandon()
    for _ in range(2):
        with opendb(db_path, clock) as db:
            m.check(db)
            db.compact()
            m.check(db)


def test_close_from_another_thread_during_compact_aborts_it_cleanly(db_path, clock):
    db = opendb(db_path, clock)
    m = Model(db, clock)
    fill_generation_1(m, random.Random(16))
    clock.advance(10)
    closer = threading.Thread(target=db.close)

    def progress(done, total):
        if not closer.is_alive() and closer.ident is None:
            closer.start()
            closer.join(timeout=1.0)  # a close() that waits for the compaction times out here

    try:
        try:
            summary = db.compact(progress)
        except bitkv.ClosedError:
            pass
        else:
            assert summary["aborted"]
    finally:
        closer.join()
    assert temp_files(db_path) == []
    with opendb(db_path, clock) as db:
        m.check(db)


# -- disk after a full compaction (issue 19) ------------------------------------------------

def test_a_full_compaction_leaves_live_bytes_hints_and_the_active_segment_only(db_path, clock):
    """Issue 19's disk target: after compact() of a quiescent store, its files are at most
    1.2x its live bytes plus the active segment and the hints; in fact the sealed data files
    hold exactly the live records and a 40-byte header each. compact() seals an active
    segment holding garbage first, so nothing reclaimable is left in it. Each compacted
    segment's hint is 44 bytes plus 28 plus the key per record: (28 + key) / (28 + key +
    value) of the data, as docs/compaction.md says."""
    db = opendb(db_path, clock, max_segment_size=64 * 1024)
    m = Model(db, clock)
    rng = random.Random(19)
    for version in range(4):  # overwrites
        for i in range(600):
            m.put(b"key:%05d" % i, bytes([65 + version]) * rng.randrange(60, 140))
    for i in range(0, 600, 7):
        m.delete(b"key:%05d" % i)  # tombstones, and the values they hide
    for i in range(100):
        m.put(b"ttl:%05d" % i, b"t" * 80, ttl=5)  # expired before the compaction
    for i in range(0, 600, 3):
        m.put(b"key:%05d" % i, b"newest" * 10)  # the active segment holds garbage too
    clock.advance(6)
    before = db.stats()["disk_bytes"]
    db.compact()
    m.check()
    st = db.stats()
    active = seg_mod.data_name(st["active_segment"])
    names = os.listdir(db_path)
    sealed = [n for n in names if n.endswith(seg_mod.DATA_SUFFIX) and n != active]
    hints = [n for n in names if n.endswith(seg_mod.HINT_SUFFIX)]
    size = {n: os.path.getsize(os.path.join(db_path, n)) for n in names}
    sealed_bytes = sum(size[n] for n in sealed)
    hint_bytes = sum(size[n] for n in hints)
    assert st["dead_bytes"] == 0 and st["live_bytes"] > 40_000
    assert sealed_bytes == st["live_bytes"] + seg_mod.HEADER_SIZE * len(sealed)
    assert st["disk_bytes"] <= 1.2 * st["live_bytes"] + size[active] + hint_bytes
    assert st["disk_bytes"] < before / 3
    # The hints: exactly 44 bytes plus an entry and the key per record of their segment.
    assert len(hints) == len(sealed)
    for name in sealed:
        with open(os.path.join(db_path, name), "rb") as fh:
            data = fh.read()
        entries = [item for item in bitkv.record.scan(data, seg_mod.HEADER_SIZE, len(data))]
        assert all(isinstance(e, bitkv.record.ScannedRecord) for e in entries)
        hint_name = name.replace(seg_mod.DATA_SUFFIX, seg_mod.HINT_SUFFIX)
        assert size[hint_name] == 44 + sum(28 + len(e.key) for e in entries)
        assert size[hint_name] <= 44 + len(data) * (28 + 9) / (28 + 9 + 60)  # keys 9, values >= 60
    db.close()
    with opendb(db_path, clock) as db:
        m.check(db)


def test_the_python_loops_yield_once_per_millisecond_of_cpu(monkeypatch):
    """The pure-Python loops' yield (compaction._sleep) lets go of the GIL once per
    YIELD_EVERY_CPU_S of the thread's CPU time, not at every call (a chunk takes ~0.25 ms,
    and each time.sleep(0) can cost scheduler ticks of wall time on a busy machine); a
    writer still waits at most about that long."""
    sleeps: list[float] = []
    monkeypatch.setattr(compaction.time, "sleep", sleeps.append)
    monkeypatch.setattr(compaction, "_last_yield", threading.local())
    compaction._sleep(20)
    assert sleeps == [0]  # a thread's first call yields
    for _ in range(100):
        compaction._sleep(20)  # far less than a millisecond of CPU
    assert len(sleeps) == 1
    start = time.thread_time()
    while time.thread_time() - start < 2 * compaction.YIELD_EVERY_CPU_S:
        pass
    compaction._sleep(20)
    assert len(sleeps) == 2


def test_keys_whose_records_are_damaged_leave_the_index_when_compacted(tmp_path):
    """Damage found by compaction's copy: the keys still pointing into the inputs after the
    switch are the damaged ones (KeyDir.entries_in finds them among keys in other segments
    too); they leave the index, counted as corrupt_records, and every other key stays."""
    from bitkv import keydir

    path = str(tmp_path / "db")
    with bitkv.open(path, max_segment_size=SEG, auto_compact=False) as db:
        live = {b"key%03d" % i: b"v%03d-" % i + b"x" * 60 for i in range(150)}
        for k, v in live.items():
            db.put(k, v)
        for i in range(0, 150, 10):  # garbage, so that compaction has inputs to rewrite
            db.put(b"key%03d" % i, b"again")
            live[b"key%03d" % i] = b"again"
        victims = [b"key%03d" % i for i in (3, 77)]
        for victim in victims:
            slot, offset, _size = keydir.unpack(db._keydir.entries[victim])
            seg = db._table.slots[slot]
            assert seg is not db._log.active
            with open(seg.path, "r+b") as fh:  # a value byte: the record fails its CRC
                fh.seek(offset + 28 + len(victim) + 2)
                byte = fh.read(1)
                fh.seek(-1, os.SEEK_CUR)
                fh.write(bytes([byte[0] ^ 0xFF]))
        summary = db.compact()
        assert summary["corrupt_records"] == len(victims)
        for victim in victims:
            del live[victim]
            assert victim not in db
        assert dict(db.items()) == live
    with bitkv.open(path, auto_compact=False) as db:
        assert dict(db.items()) == live
