"""The compiled get, record codec and batch kernels (bitkv/native/get.c, record.c, batch.c).

Each serves the common case and hands the rest to its pure-Python reference; these tests check
that the store uses them in native mode, that every unusual case gives the reference's result
or exception, that gets racing compaction and close never touch a closed map, and that no call
leaks a reference or memory. The byte-for-byte comparison of whole stores in both modes is
test_differential.py; the fuzz targets (fuzz_get, fuzz_codec_native, fuzz_batch) compare the
kernels against their Python rules on arbitrary bytes.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import threading
import tracemalloc

import pytest
from conftest import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

import bitkv
from bitkv import keydir, record
from bitkv.store import Store

native = pytest.mark.skipif(bitkv.IMPLEMENTATION != "native",
                            reason="native mode only (the extension is not built or "
                                   "BITKV_PURE_PYTHON=1)")

KEY32 = bytes(range(32))


def reference_get(db: Store, key: object, default: object = None) -> object:
    """The pure-Python Store.get (what the kernel hands unusual gets to)."""
    return Store.get(db, key, default)  # type: ignore[arg-type]


def outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return type(exc), str(exc)


# -- the get kernel in the store ----------------------------------------------------------------


@native
def test_get_is_the_kernel_in_native_mode(tmp_path):
    with bitkv.open(str(tmp_path / "db")) as db:
        assert type(db.get).__name__ == "builtin_function_or_method"
        assert db._reader is not None and db._reader.attached
    assert "get" not in db.__dict__  # closed: back to the Python method


def test_get_matches_the_reference_on_every_kind_of_key(tmp_path):
    clock = FakeClock()
    with bitkv.open(str(tmp_path / "db"), clock=clock, max_segment_size=64 * 1024) as db:
        db.put(b"plain", b"v" * 50)
        db.put(b"empty", b"")
        db.put(b"big", b"B" * 5000)  # no size hint: the header gives the size
        db.put(b"ttl", b"t", ttl=10)
        db.put(b"gone", b"g", ttl=1)
        db.put("ünï", b"str key")
        with db.batch() as b:
            b.put(b"batched", b"in a batch")
            b.put(b"batched2", b"x")
        for i in range(3000):  # rotate: sealed, mapped segments and the active one
            db.put(b"fill%d" % i, b"f" * 40)
        db.delete(b"fill7")
        clock.advance(2)
        queries = [b"plain", b"empty", b"big", b"ttl", b"gone", "ünï", b"batched", b"batched2",
                   b"fill7", b"fill1", b"fill2999", b"missing", bytearray(b"plain"),
                   memoryview(b"plain"), b"", "", b"k" * 70000, 5, None]
        for q in queries:
            for default in ((), (None,), (b"dflt",), (0,)):
                want = outcome(reference_get, db, q, *default)
                assert outcome(db.get, q, *default) == want, (q, default)
        assert db.get(b"plain") == b"v" * 50
        assert db.get(b"gone", b"d") == b"d"
        assert db.get(key=b"plain", default=1) == b"v" * 50
        assert db.get(b"missing", default=3) == 3
        with pytest.raises(TypeError):
            db.get(b"plain", 1, 2)
        with pytest.raises(TypeError):
            db.get()
        assert db[b"plain"] == b"v" * 50
        with pytest.raises(KeyError):
            db[b"missing"]


def test_get_of_held_expired_keys_sees_them_only_when_asked(tmp_path):
    clock = FakeClock()
    with bitkv.open(str(tmp_path / "db"), clock=clock, hold_expired=True) as db:
        db.put(b"k", b"v", ttl=1)
        clock.advance(5)
        assert db.get(b"k") is None
        with db.seeing_expired():
            assert db.get(b"k") == b"v"


@pytest.mark.parametrize("opts", [{"compression": "zstd", "compression_min_size": 1},
                                  {"encryption_key": KEY32}])
def test_get_of_encoded_values(tmp_path, opts):
    if "compression" in opts:
        pytest.importorskip("zstandard")
    else:
        pytest.importorskip("cryptography")
    with bitkv.open(str(tmp_path / "db"), **opts) as db:
        db.put(b"k", b"value " * 20)
        db.put(b"short", b"s")
        assert db.get(b"k") == b"value " * 20 == reference_get(db, b"k")
        assert db.get(b"short") == b"s"


def test_a_get_bound_before_close_raises_closed_error(tmp_path):
    """Regression: the kernel kept serving from the closed store's index."""
    db = bitkv.open(str(tmp_path / "db"))
    db.put(b"k", b"v")
    get = db.get
    db.close()
    with pytest.raises(bitkv.ClosedError):
        get(b"k")
    with pytest.raises(bitkv.ClosedError):
        get(b"missing")
    with pytest.raises(bitkv.ClosedError):
        db.get(b"k")


@native
def test_a_reader_outliving_its_store_says_so():
    from bitkv._native import IndexMap, Reader

    class Owner:
        pass

    owner = Owner()
    reader = Reader(IndexMap(), {}, [], owner, Store.get, True)
    get = reader.get
    assert get(b"missing", 5) == 5
    del owner
    gc.collect()
    reader.detach()
    with pytest.raises(ReferenceError):
        get(b"k")


def test_readonly_refresh_serves_the_new_index(tmp_path):
    path = str(tmp_path / "db")
    writer = bitkv.open(path, max_segment_size=8192, auto_compact=False)
    for i in range(300):
        writer.put(b"k%d" % i, b"old%d" % i)
    reader = bitkv.open(path, readonly=True)
    get = reader.get
    for i in range(300):
        writer.put(b"k%d" % i, b"new%d" % i)
    writer.compact()
    reader.refresh()
    assert [reader.get(b"k%d" % i) for i in range(300)] == [b"new%d" % i for i in range(300)]
    assert get(b"k5") == b"new5"  # a get bound earlier goes through Python, still right
    reader.close()
    writer.close()


def test_damaged_record_raises_in_both_paths(tmp_path):
    """Bytes that go bad under an open store (its map shows the file's pages): the kernel
    hands the get to Python, which raises IntegrityError, in both modes."""
    with bitkv.open(str(tmp_path / "db"), max_segment_size=4096, auto_compact=False) as db:
        for i in range(200):
            db.put(b"k%d" % i, b"value%d" % i)
        entry = db._entries[b"k3"]
        seg = db._table.slots[entry >> keydir.SLOT_SHIFT]
        assert seg.mm is not None and seg is not db._log.active
        offset = (entry >> keydir.SIZE_BITS) & keydir.OFFSET_MASK
        assert db.get(b"k3") == b"value3"
        with open(seg.path, "r+b") as f:
            f.seek(offset + record.HEADER_SIZE + 3)
            byte = f.read(1)
            f.seek(offset + record.HEADER_SIZE + 3)
            f.write(bytes([byte[0] ^ 0xFF]))
        want = outcome(reference_get, db, b"k3")
        assert want[0] is bitkv.IntegrityError
        assert outcome(db.get, b"k3") == want
        assert db.get(b"k4") == b"value4"


def test_gets_racing_compaction_and_close(tmp_path):
    """Compaction closes and replaces maps, close() closes them all, while other threads get:
    every get returns the right value, the default or ClosedError, never garbage or a crash
    (scripts/asan_native.sh runs this under ASan)."""
    db = bitkv.open(str(tmp_path / "db"), max_segment_size=16 * 1024, auto_compact=False)
    n = 400
    for i in range(n):
        db.put(b"k%d" % i, b"v%d-0" % i)
    stop = threading.Event()
    errors: list[BaseException] = []
    served = [0]

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        get = db.get
        try:
            while not stop.is_set():
                i = rng.randrange(n)
                try:
                    got = get(b"k%d" % i)
                except bitkv.ClosedError:
                    return
                if got is None or not got.startswith(b"v%d-" % i):
                    raise AssertionError((i, got))
                served[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for rnd in range(1, 6):
        for i in range(0, n, 2):
            db.put(b"k%d" % i, b"v%d-%d" % (i, rnd))
        db.compact()
    db.close()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert served[0] > 0


# -- the record codec ---------------------------------------------------------------------------


def test_the_codec_in_use_is_the_mode_s():
    if bitkv.IMPLEMENTATION == "native":
        assert record.encode is not record.encode_py
        assert record.decode is not record.decode_py
        assert record.intact_size_at is not record.intact_size_at_py
    else:
        assert record.encode is record.encode_py


@settings(max_examples=300, deadline=None)
@given(key=st.binary(min_size=0, max_size=40), value=st.binary(max_size=300),
       seq=st.integers(-1, 2**64), expiry=st.integers(-1, 2**64), flags=st.integers(-1, 256),
       damage=st.integers(0, 400))
def test_codec_matches_the_reference(key, value, seq, expiry, flags, damage):
    enc = outcome(record.encode, key, value, seq, expiry, flags)
    assert enc == outcome(record.encode_py, key, value, seq, expiry, flags)
    if not isinstance(enc, bytes):
        return
    for buf in (enc, enc[: damage % (len(enc) + 1)],
                enc[:damage % len(enc)] + bytes([enc[damage % len(enc)] ^ 1])
                + enc[damage % len(enc) + 1 :]):
        for k in (None, key, key + b"x"):
            assert outcome(record.decode, buf, k) == outcome(record.decode_py, buf, k)
        for pos, end in ((0, len(buf)), (damage % 7, len(buf)), (0, damage)):
            assert outcome(record.intact_size_at, buf, pos, end) == \
                outcome(record.intact_size_at_py, buf, pos, end)
    if key and 0 <= flags <= record.KNOWN_FLAGS and not (flags & record.TOMBSTONE and value) \
            and (not flags & record.BATCH_FLAGS or flags & record.BATCH):
        header, val = record.decode(enc)
        assert type(header) is record.Header and val == value
        assert header == record.decode_py(enc)[0]


# -- the batch kernel ---------------------------------------------------------------------------


def test_batch_overwrites_deletes_and_expiries_in_one_batch(tmp_path):
    clock = FakeClock()
    with bitkv.open(str(tmp_path / "db"), clock=clock) as db:
        db.put(b"a", b"old", ttl=100)
        db.put(b"b", b"old")
        with db.batch() as b:
            b.put(b"a", b"1")
            b.put(b"a", b"2", ttl=5)
            b.delete(b"b")
            b.put(b"c", b"3", expires_at_ms=clock.now_ms() - 1)  # written already expired
            b.put(b"d", b"4", expires_at_ms=clock.now_ms() + 1000)
            b.put("e", bytearray(b"5"))
        assert db.get(b"a") == b"2" and db.ttl(b"a") == pytest.approx(5)
        assert db.get(b"b") is None and db.get(b"e") == b"5"
        assert db.get(b"d") == b"4"
        clock.advance(2)
        assert db.get(b"d") is None
        assert db.get(b"c") is None
        stats = db.stats()
    with bitkv.open(str(tmp_path / "db"), clock=clock) as db:
        assert db.get(b"a") == b"2" and db.get(b"e") == b"5" and db.get(b"c") is None
        assert db.stats()["live_bytes"] == stats["live_bytes"]


# -- reference counts and leaks -----------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@native
@pytest.mark.slow
def test_no_leak_over_millions_of_calls(tmp_path):
    clock = FakeClock()
    db = bitkv.open(str(tmp_path / "db"), clock=clock, auto_compact=False)
    keys = [b"key%06d" % i for i in range(2000)]
    for k in keys:
        db.put(k, b"v" * 64)
    db.put(b"ttl", b"t", ttl=1000)
    db.put(b"big", b"B" * 5000)
    default = object()
    rec = record.encode(b"key", b"value", 7)
    from bitkv._native import encode_batch

    def cycle() -> None:
        get = db.get
        for k in keys:  # ~10 calls per key: hits, misses, fallbacks, codec, batch encode
            get(k)
            get(k, default)
            get(b"nokey", default)
            get(b"ttl")
            get("key000001")
            record.encode(k, k, 5, 0, 0)
            record.decode(rec, b"key")
            record.intact_size_at(rec, 0, len(rec))
            encode_batch([(k, k, None), (k, None, None)], 1, 0)
        get(b"big")
        batch = db.batch()
        bput = batch.put
        for k in keys:
            bput(k, k)
        bput("str", b"v")
        batch.discard()

    cycle()
    cycle()
    gc.collect()
    refs = [sys.getrefcount(x) for x in (default, keys[0], keys[-1], rec)]
    rss = [_rss_kib()]
    tracemalloc.start()
    traced = []
    for _ in range(60):  # 60 cycles x 2000 keys x ~10 calls: 1.2M calls
        cycle()
        gc.collect()
        traced.append(tracemalloc.get_traced_memory()[0])
        rss.append(_rss_kib())
    tracemalloc.stop()
    db.close()
    assert [sys.getrefcount(x) for x in (default, keys[0], keys[-1], rec)] == refs
    assert max(traced[2:]) - min(traced[2:]) < 64 * 1024, traced
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan's quarantine holds memory
        assert rss[-1] - rss[1] < 4 * 1024, rss


@native
def test_batch_kernel_reference_counts(tmp_path):
    with bitkv.open(str(tmp_path / "db")) as db:
        key, value = b"refkey", b"refvalue"
        before = (sys.getrefcount(key), sys.getrefcount(value))
        for _ in range(1000):
            with db.batch() as b:
                b.put(key, value)
                b.put(key + b"2", value, ttl=5)
                b.delete(key + b"3")
        del b  # it keeps its operations
        gc.collect()
        assert (sys.getrefcount(key), sys.getrefcount(value)) == before


def test_batch_put_bound_before_commit_or_discard_refuses_later_puts(tmp_path):
    """Regression: the C put appended to a committed batch's list, silently dropped."""
    with bitkv.open(str(tmp_path / "db")) as db:
        b = db.batch()
        put = b.put
        put(b"a", b"1")
        b.commit()
        with pytest.raises(bitkv.Error, match="already committed"):
            put(b"b", b"2")
        b = db.batch()
        put = b.put
        put(b"c", b"3")
        b.discard()
        with pytest.raises(bitkv.Error, match="already committed"):
            put(b"d", b"4")
        assert len(b) == 0
        assert db.get(b"a") == b"1" and db.get(b"b") is None and db.get(b"c") is None


def test_batch_put_unusual_arguments_match_the_reference(tmp_path):
    from bitkv.batch import Batch

    cases = [(b"k", b"v"), ("str", b"v"), (b"k", bytearray(b"v")), (b"", b"v"),
             (b"k" * 70000, b"v"), (b"k", "not bytes"), (5, b"v"), (b"k", None)]
    for key, value in cases:
        for kwargs in ({}, {"ttl": 1.5}, {"expires_at_ms": 5}, {"ttl": 1, "expires_at_ms": 5},
                       {"ttl": -1}):
            native_ops: list[object] = []
            ref_ops: list[object] = []
            a, b = Batch(native_ops.extend), Batch(ref_ops.extend)
            got = outcome(a.put, key, value, **kwargs)
            want = outcome(Batch.put, b, key, value, **kwargs)
            assert got == want, (key, value, kwargs)
            a.commit()
            b.commit()
            assert native_ops == ref_ops


# Calls of every arity and keyword mix: the bound methods (Reader.get, Writer.put, BatchPut.put,
# bitkv/native/bound.c) pass what they do not serve to the reference, however many arguments.
_ODD_CALLS = [((), {}), ((b"k",), {"default": 1}), ((), {"key": b"k"}),
              ((b"k", None, 3), {}), ((b"k", b"v", *range(9)), {}),
              ((b"k", b"v"), {"nope": 1}), ((b"k",), dict.fromkeys("abcdefghij", 1)),
              ((b"k", b"v", *range(5)), dict.fromkeys("abcdef", 1))]


def test_bound_methods_answer_every_odd_call_as_the_reference(tmp_path):
    """Regression: the compiled get made up its own TypeError for a call with the wrong
    number of arguments ("get() takes 1 or 2 arguments"), and it and the batch's put refused
    more than 7 or 8 arguments with one of their own; the reference's error (its message) is
    what both modes must raise. Reference counts of the arguments are unchanged."""
    from bitkv.batch import Batch

    held = [b"odd-call value" * 2]  # the value whose references are counted
    with bitkv.open(str(tmp_path / "db")) as db:
        db.put(b"k", b"v")
        before = sys.getrefcount(held[0])

        def compare() -> None:
            batch, reference_batch = Batch(lambda ops: None), Batch(lambda ops: None)
            pairs = [(db.get, lambda *a, **kw: Store.get(db, *a, **kw)),
                     (db.put, lambda *a, **kw: Store.put(db, *a, **kw)),
                     (batch.put, lambda *a, **kw: Batch.put(reference_batch, *a, **kw))]
            for bound, reference in pairs:
                for args, kwargs in [*_ODD_CALLS, ((b"k", held[0]), {}),
                                     ((b"k", held[0]), {"x": 1})]:
                    want = outcome(reference, *args, **kwargs)
                    assert outcome(bound, *args, **kwargs) == want, (bound, args, kwargs)
            assert len(batch) == len(reference_batch) == 1  # the one plain put
            batch.discard()
            reference_batch.discard()

        compare()
        gc.collect()
        after = sys.getrefcount(held[0])  # not inside the assert: pytest would hold a reference
        assert after == before


@native
def test_bound_methods_made_without_init_say_so():
    from bitkv._native import BatchPut, Reader, Writer

    for cls, method in ((Reader, "get"), (Writer, "put"), (BatchPut, "put")):
        obj = cls.__new__(cls)
        assert obj.attached is False
        with pytest.raises(RuntimeError, match=f"^{cls.__name__} is not initialised$"):
            getattr(obj, method)(b"k", b"v")
    with pytest.raises(TypeError, match="fallback must be callable"):
        BatchPut([], Store, "not callable")


def test_a_temporary_batch_s_put_finds_its_batch(tmp_path):
    """Regression: the C put held its batch weakly, so ``db.batch().put(...)`` (the batch a
    temporary) raised ReferenceError instead of the reference's result."""
    with bitkv.open(str(tmp_path / "db")) as db:
        db.batch().put(b"x", b"v")  # never committed: nothing written
        with pytest.raises(ValueError):
            db.batch().put(b"x", b"v", ttl=1, expires_at_ms=5)
        assert db.get(b"x") is None


def test_a_committed_batch_is_freed_without_the_cyclic_gc(tmp_path):
    """Commit breaks the cycle batch -> its bound C put -> batch, so its operations (all of a
    bulk load's keys and values) are freed at once, not at some later full collection."""
    import weakref

    with bitkv.open(str(tmp_path / "db")) as db:
        gc.disable()
        try:
            b = db.batch()
            for i in range(100):
                b.put(b"k%d" % i, b"v")
            b.commit()
            ref = weakref.ref(b)
            del b
            assert ref() is None
        finally:
            gc.enable()
