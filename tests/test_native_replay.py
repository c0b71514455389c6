"""The compiled indexing loops of open (bitkv/native/replay.c) against their Python references
(bitkv/indexing.py): whole stores loaded both ways must give the same index, accounting,
report and files; the kernels must not leak; and the rules they share keep their fixes."""

from __future__ import annotations

import dataclasses
import gc
import os
import random
import shutil
import sys
import tracemalloc
from typing import Any

import pytest
from conftest import forget_fsyncs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitkv
from bitkv import hint, indexing, keydir, record, recovery, sealing
from bitkv import segment as seg_mod
from bitkv.fileio import DEFAULT_FILEIO

native = pytest.mark.skipif(keydir.IMPLEMENTATION != "native",
                            reason="the compiled extension is not in use")

T0 = 1_700_000_000.0


def _python_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load with the Python loops and a dict index, as BITKV_PURE_PYTHON=1 does."""
    monkeypatch.setattr(indexing, "_native", None)
    monkeypatch.setattr(keydir, "_new_index", dict)


def _load(path: str, now_ms: int) -> tuple[str, Any]:
    try:
        loaded = recovery.load(path, DEFAULT_FILEIO, readonly=False, now_ms=now_ms)
    except bitkv.Error as exc:
        return type(exc).__name__, None
    kd = loaded.keydir
    state = {
        "entries": list(kd.entries.items()),
        "expiries": list(kd.expiries.items()),
        "hidden": list(loaded.hidden.items()),
        "live": [(s.id, s.live_bytes) for s in loaded.slots if s is not None],
        "report": dataclasses.asdict(loaded.report),
        "next_seq": loaded.next_seq,
    }
    for seg in loaded.segments:
        seg.close()
    files = {}
    for name in sorted(os.listdir(path)):
        if name != "LOCK":
            with open(os.path.join(path, name), "rb") as fh:
                files[name] = fh.read()
    state["files"] = files
    return "ok", state


def _both(path: str, monkeypatch: pytest.MonkeyPatch, now_ms: int) -> tuple[Any, Any]:
    a, b = path + "-native", path + "-python"
    shutil.copytree(path, a)
    shutil.copytree(path, b)
    got_native = _load(a, now_ms)
    with monkeypatch.context() as m:
        _python_mode(m)
        got_python = _load(b, now_ms)
    return got_native, got_python


KEYS = [b"k%d" % i for i in range(12)] + [b"x" * 300]
op = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), st.sampled_from([0, 7, 90, 4200]),
              st.sampled_from([None, None, 5.0, 50.0])),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.just(0), st.just(None)),
    st.tuples(st.just("batch"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=5),
              st.sampled_from([0, 30]), st.booleans()),
    st.tuples(st.just("reopen"), st.just(b""), st.just(0), st.just(None)),
    st.tuples(st.just("compact"), st.just(b""), st.just(0), st.just(None)),
)


def _build(path: str, ops: list[Any], rng: random.Random) -> None:
    clock = [T0]

    def now() -> float:
        return clock[0]

    def opened() -> bitkv.Store:
        return bitkv.open(path, auto_compact=False, max_segment_size=4096, clock=now)

    db = opened()
    try:
        for kind, key, size, extra in ops:
            clock[0] += 1
            if kind == "put":
                db.put(key, bytes([len(key) % 256]) * size, ttl=extra)
            elif kind == "delete":
                db.delete(key)
            elif kind == "batch":
                with db.batch() as b:
                    for i, k in enumerate(key):
                        if extra and i % 2:
                            b.delete(k)
                        else:
                            b.put(k, b"b" * size)
            elif kind == "reopen":
                db.close()
                db = opened()
            else:
                db.compact()
    finally:
        db.close()
    # Hints for some sealed append segments, as the maintenance thread writes them.
    loaded = recovery.load(path, DEFAULT_FILEIO, readonly=True, now_ms=0)
    for seg in loaded.segments[:-1]:
        if seg.kind == seg_mod.KIND_APPEND and rng.random() < 0.6:
            seg.map()
            blob = sealing.build_hint(path, DEFAULT_FILEIO, seg)
            if blob is not None:
                sealing.write_hint(path, DEFAULT_FILEIO, seg, blob)
    for seg in loaded.segments:
        seg.close()


def _damage(path: str, rng: random.Random, hits: int) -> None:
    names = sorted(n for n in os.listdir(path) if n.endswith((".data", ".hint")))
    for _ in range(hits):
        if not names:
            return
        name = rng.choice(names)
        full = os.path.join(path, name)
        size = os.path.getsize(full)
        if size <= seg_mod.HEADER_SIZE:
            continue
        with open(full, "r+b") as fh:
            if rng.random() < 0.2 and name == names[-1]:
                fh.truncate(rng.randint(seg_mod.HEADER_SIZE, size))  # a torn tail
                continue
            at = rng.randrange(seg_mod.HEADER_SIZE, size)
            fh.seek(at)
            (b,) = fh.read(1)
            fh.seek(at)
            fh.write(bytes([b ^ (1 << rng.randrange(8))]))
    if rng.random() < 0.5:
        forget_fsyncs(path)


@native
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=60), seed=st.integers(0, 2**32), hits=st.integers(0, 3),
       later=st.sampled_from([0, 20, 200]))
def test_native_and_python_loads_agree(tmp_path_factory: pytest.TempPathFactory,
                                       monkeypatch: pytest.MonkeyPatch, ops: list[Any],
                                       seed: int, hits: int, later: int) -> None:
    """Random stores with history, tombstones, TTLs (some expired at load), batches,
    compactions, hints and damage: the native and Python loads give the same index in the
    same order, the same expiries, hidden records and live bytes per segment, the same report
    and next seq, and leave the same files (a torn tail truncated alike)."""
    rng = random.Random(seed)
    path = str(tmp_path_factory.mktemp("diff") / "db")
    _build(path, ops, rng)
    _damage(path, rng, hits)
    now_ms = int((T0 + len(ops) + later) * 1000)
    got_native, got_python = _both(path, monkeypatch, now_ms)
    assert got_native[0] == got_python[0]
    if got_native[1] is None:
        return
    for field in got_native[1]:
        assert got_native[1][field] == got_python[1][field], field


@native
def test_large_store_with_hints_and_scan_agree(tmp_path: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Enough keys to grow the index through many resizes, once through hints and once by
    replaying every record (the pipelined loops run past their prefetch distance)."""
    path = str(tmp_path / "db")
    with bitkv.open(path, auto_compact=False, max_segment_size=1 << 20) as db:
        for lo in range(0, 30_000, 1000):
            with db.batch() as b:
                for i in range(lo, lo + 1000):
                    b.put(b"key%06d" % i, b"v" * (i % 50))
        for i in range(0, 30_000, 3):
            db.put(b"key%06d" % i, b"w" * 5000 if i % 300 == 0 else b"w",
                   ttl=100 if i % 7 == 0 else None)
        for i in range(0, 30_000, 10):
            db.delete(b"key%06d" % i)
    _build(path, [], random.Random(1))  # hints for the sealed segments
    got_native, got_python = _both(path, monkeypatch, 0)
    assert got_native == got_python
    assert got_native[1]["report"]["segments_from_hints"] > 0
    for name in os.listdir(path):
        if name.endswith(".hint"):
            os.unlink(os.path.join(path, name))
    shutil.rmtree(path + "-native")
    shutil.rmtree(path + "-python")
    got_native, got_python = _both(path, monkeypatch, 0)
    assert got_native == got_python
    assert got_native[1]["report"]["segments_from_hints"] == 0
    assert len(got_native[1]["entries"]) == 30_000 - 3_000


def _segment(records: list[bytes]) -> bytes:
    header = seg_mod.SegmentHeader(seg_mod.KIND_APPEND, 1, 1, 1).encode()
    return header + b"".join(records)


def test_orphan_batch_member_after_a_plain_run_gives_its_seq_back(tmp_path: Any) -> None:
    """Regression: the plain run counted the seq of a batch member it stopped at (one without
    a first member before it), so the torn tail after it did not give that seq back, unlike
    the general replay alone. The run now counts only what it applies."""
    kd = keydir.KeyDir([])
    seg = type("Seg", (), {"live_bytes": 0, "record_size_at": lambda self, o: 0})()
    kd.slots.append(seg)
    if keydir.IMPLEMENTATION == "python":
        kd.entries = {}
    buf = _segment([record.encode(b"a", b"1", 1),
                    record.encode(b"b", b"2", 2, flags=record.BATCH)])
    stop, max_seq, loaded = indexing.plain_run(kd, 0, buf, seg_mod.HEADER_SIZE, len(buf), 0,
                                               0)
    assert (stop, max_seq, loaded) == (seg_mod.HEADER_SIZE + 30, 1, 1)


@pytest.mark.parametrize("python", [False, True])
def test_a_batch_seq_does_not_wrap_past_2_64(monkeypatch: pytest.MonkeyPatch,
                                             python: bool) -> None:
    """Regression (found reviewing the C twin): a member with seq 0 after one with 2**64 - 1
    does not continue the batch (u64 arithmetic would wrap; Python's does not)."""
    if python:
        _python_mode(monkeypatch)
    kd = keydir.KeyDir([])
    seg = type("Seg", (), {"live_bytes": 0, "record_size_at": lambda self, o: 0})()
    kd.slots.append(seg)
    last = 2**64 - 1
    buf = _segment([record.encode(b"a", b"1", last - 1),
                    record.encode(b"b", b"2", last, flags=record.BATCH | record.BATCH_FIRST),
                    record.encode(b"c", b"3", 0, flags=record.BATCH | record.BATCH_LAST)])
    stop, max_seq, loaded = indexing.plain_run(kd, 0, buf, seg_mod.HEADER_SIZE, len(buf), 0,
                                               0)
    assert (stop, max_seq, loaded) == (seg_mod.HEADER_SIZE + 30, last - 1, 1)
    assert list(kd.entries) == [b"a"]


def test_orphan_batch_member_in_a_torn_tail_at_open(tmp_path: Any) -> None:
    """The same through a whole open: the seq of the dropped member comes back."""
    path = str(tmp_path / "db")
    with bitkv.open(path, auto_compact=False) as db:
        db.put(b"a", b"1")
    seg_path = os.path.join(path, seg_mod.data_name(1))
    with open(seg_path, "ab") as fh:
        fh.write(record.encode(b"b", b"2", 2, flags=record.BATCH) + b"\xff" * 40)
    forget_fsyncs(path)
    with bitkv.open(path, auto_compact=False) as db:
        assert db.get(b"b") is None
        assert db.recovery_report.truncated_bytes == 30 + 40
        db.put(b"c", b"3")
    with open(seg_path, "rb") as fh:
        data = fh.read()
    assert record.HEADER.unpack_from(data, seg_mod.HEADER_SIZE + 30)[5] == 2  # c took seq 2


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@native
def test_kernels_do_not_leak_over_millions_of_calls() -> None:
    """~1.5M calls of the three kernels (each applying records: overwrites, tombstones into
    ``hidden``, TTLs into ``expiries``, large records sized through their segment, batches):
    tracemalloc and RSS stay flat, and the arguments' reference counts are unchanged."""
    from bitkv import _native

    class Seg:
        live_bytes = 0

        def record_size_at(self, offset: int) -> int:
            return 5000

    kd = keydir.KeyDir([Seg(), Seg()])
    kd.hidden = {}
    recs = [record.encode(b"k%d" % (i % 7), b"" if i % 4 == 3 else b"v" * (
        5000 if i % 5 == 0 else 3), 10 + i, expiry_ms=2**40 if i % 3 == 0 else 0,
        flags=record.TOMBSTONE if i % 4 == 3 else 0) for i in range(12)]
    batch = [record.encode(b"b%d" % i, b"x", 30 + i, flags=record.BATCH | (
        record.BATCH_FIRST if i == 0 else 0) | (record.BATCH_LAST if i == 2 else 0))
        for i in range(3)]
    buf = _segment(recs + batch)
    fixed = b"".join(hint.ENTRY.pack(i % 2, 0, 2, 3, 40 + i, 0, 0) for i in range(8))
    keys = b"".join(b"h%d" % (i % 3) for i in range(8))
    now = 10

    def cycle(n: int) -> None:
        for _ in range(n):
            _native.plain_run(kd, 1, buf, seg_mod.HEADER_SIZE, len(buf), 0, now)
            _native.hint_apply(kd, 0, fixed, keys, 1 << 20, now)
            _native.hint_check(fixed, keys, 1 << 20)

    cycle(2000)
    objs = (kd, buf, fixed, keys, kd.entries, kd.expiries, kd.hidden)
    refs = [sys.getrefcount(o) for o in objs]
    gc.collect()
    rss = [_rss_kib()]
    tracemalloc.start()
    traced = []
    for _ in range(10):
        cycle(50_000)
        gc.collect()
        traced.append(tracemalloc.get_traced_memory()[0])
        rss.append(_rss_kib())
    tracemalloc.stop()
    assert [sys.getrefcount(o) for o in objs] == refs
    assert max(traced[2:]) - min(traced[2:]) < 64 * 1024, traced
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan's quarantine holds freed memory
        assert rss[-1] - rss[1] < 4 * 1024, rss
    assert kd.hidden and kd.expiries and len(kd.entries) > 0


# -- the hashing helper thread of hint_apply (bitkv/native/replay.c) --------------------------


class _Seg:
    def __init__(self, fail: bool = False) -> None:
        self.live_bytes = 0
        self.fail = fail

    def record_size_at(self, offset: int) -> int:
        if self.fail:
            raise OSError("record_size_at failed on purpose")
        return 9000


def _big_hint(n: int, bad_at: int | None = None) -> tuple[bytes, bytes]:
    """A hint of ``n`` entries over fewer keys (overwrites), with tombstones, TTLs (some
    expired at now=1000), key lengths 1..40 and records too big for a size hint."""
    rng = random.Random(n)
    names = [rng.randbytes(rng.randint(1, 40)) for _ in range(n // 3)]
    fixed, keys = [], []
    for i in range(n):
        key = names[rng.randrange(len(names))]
        flags = record.TOMBSTONE if i % 11 == 0 else 0
        value_len = 0 if flags else (8000 if i % 17 == 0 else rng.randint(1, 100))
        expiry = 0 if i % 13 else (500 if i % 2 else 5000)
        key_len = len(key) if i != bad_at else 1 << 15
        fixed.append(hint.ENTRY.pack(flags, 0, key_len, value_len, 64 + i * 200, i, expiry))
        keys.append(key)
    return b"".join(fixed), b"".join(keys)


def _apply_with(helper: bool, fixed: bytes, keys: bytes) -> tuple[Any, ...]:
    kd = keydir.KeyDir([_Seg(), _Seg()])
    kd.hidden = {}
    kd.entries[b"old"] = 0  # a key of slot 0, which the hint may overwrite
    got = indexing.apply_hint(kd, 1, fixed, keys, 1 << 40, 1000, helper=helper)
    return (got, list(kd.entries.items()), sorted(kd.expiries.items()),
            sorted(kd.hidden.items()), [s.live_bytes for s in kd.slots])


@native
@pytest.mark.parametrize("bad_at", [None, 0, 70_001, 89_999])
def test_hint_apply_with_the_hash_helper_gives_the_same_index(bad_at: int | None) -> None:
    """Threads must not change results: the helper hashes keys on another thread, the loop
    applies in order, so a hint above the helper's threshold (65,536 entries) gives the same
    index, expiries, hidden records, live bytes and result with and without it, also when an
    entry runs out of bounds (at the start, mid-way, at the end), and the same as the Python
    reference."""
    fixed, keys = _big_hint(90_000, bad_at)
    serial = _apply_with(False, fixed, keys)
    assert _apply_with(True, fixed, keys) == serial
    assert serial[0][0] is (bad_at is None)
    with pytest.MonkeyPatch.context() as m:
        _python_mode(m)
        assert _apply_with(False, fixed, keys) == serial


@native
def test_an_error_during_a_helped_hint_apply_joins_the_helper() -> None:
    """An exception inside the loop (a segment that cannot size an old record) stops it with
    the helper still running: it is stopped and waited for, the error raised, and the next
    calls work (no thread left reading freed buffers: scripts/asan_native.sh runs this)."""
    fixed, keys = _big_hint(80_000)
    for _ in range(3):
        kd = keydir.KeyDir([_Seg(), _Seg(fail=True)])
        with pytest.raises(OSError, match="on purpose"):
            indexing.apply_hint(kd, 1, fixed, keys, 1 << 40, 1000, helper=True)
        assert len(kd.entries) > 0 and kd.slots[1].live_bytes > 0  # what it applied counts
    assert _apply_with(True, fixed, keys) == _apply_with(False, fixed, keys)


@native
def test_a_helped_hint_apply_frees_the_helper_s_memory_on_every_path() -> None:
    """The helper's hash table (8 bytes an entry, 560 KB here) is freed by the one join
    whatever ends the loop: the last entry, a corrupt entry, an exception; a leak of it on any
    path would show as ~0.5 MB more traced memory per call."""
    fixed, keys = _big_hint(70_000)
    corrupt = fixed[:40_000 * hint.ENTRY.size] + hint.ENTRY.pack(0, 0, 1 << 15, 1, 64, 0, 0)
    corrupt += fixed[40_001 * hint.ENTRY.size:]

    def one_of_each() -> None:
        kd = keydir.KeyDir([_Seg(), _Seg()])
        kd.hidden = {}
        assert indexing.apply_hint(kd, 1, fixed, keys, 1 << 40, 1000, helper=True)[0]
        kd = keydir.KeyDir([_Seg(), _Seg()])
        assert not indexing.apply_hint(kd, 1, corrupt, keys, 1 << 40, 1000, helper=True)[0]
        kd = keydir.KeyDir([_Seg(), _Seg(fail=True)])
        with pytest.raises(OSError, match="on purpose"):
            indexing.apply_hint(kd, 1, fixed, keys, 1 << 40, 1000, helper=True)

    one_of_each()
    gc.collect()
    tracemalloc.start()
    one_of_each()
    gc.collect()
    first = tracemalloc.get_traced_memory()[0]
    for _ in range(5):
        one_of_each()
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - first
    tracemalloc.stop()
    assert grown < 256 * 1024, grown


@native
def test_parallel_and_serial_loads_of_a_store_give_the_same_index(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole store whose compacted hint is above the helper's threshold, loaded with and
    without the helper: the same index, accounting, report and files."""
    path = str(tmp_path / "db")
    with bitkv.open(path, auto_compact=False) as db:
        with db.batch() as b:
            for i in range(80_000):
                b.put(b"key%06d" % i, b"v" * (i % 30), ttl=50 if i % 9 == 0 else None)
        for i in range(0, 80_000, 7):
            db.delete(b"key%06d" % i)
        db.compact()
        db.put(b"after", b"the compaction")
    counts = []
    for name in os.listdir(path):
        if name.endswith(".hint"):
            with open(os.path.join(path, name), "rb") as fh:
                blob = fh.read()
            counts.append(hint.entry_count(blob, len(blob)))
    assert max(counts) > 65_536  # the helper's threshold
    a, b = path + "-serial", path + "-helped"
    shutil.copytree(path, a)
    shutil.copytree(path, b)
    with monkeypatch.context() as m:
        m.setattr(indexing, "HASH_HELPER", False)
        serial = _load(a, int(T0 * 1000))
    with monkeypatch.context() as m:
        m.setattr(indexing, "HASH_HELPER", True)
        helped = _load(b, int(T0 * 1000))
    assert serial[0] == "ok" and serial == helped
    assert serial[1]["report"]["segments_from_hints"] >= 1
    assert len(serial[1]["entries"]) == 80_000 - 11_429 + 1
