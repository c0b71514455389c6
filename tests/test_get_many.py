"""Store.get_many (and Namespace/JsonView.get_many): a batch of gets, each what ``get`` returns.

In native mode the batch runs through the compiled kernel (``Reader.get_many``,
bitkv/native/get.c), which reads keys in groups to overlap their memory accesses and hands
every key outside the get kernel's common case to ``Store.get``; in pure-Python mode it is the
loop of ``get``. These tests hold both to the loop: every kind of key, batches across the
kernel's group boundaries, writers racing a batch, and no leaked reference. The cross-mode
comparison (native in this process, pure Python in a child) is test_differential.py's
``get_many`` operation; the kernel on arbitrary bytes is fuzz/fuzz_get_many.py.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import tracemalloc

import pytest
from conftest import FakeClock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitkv
from bitkv.store import Store

native = pytest.mark.skipif(bitkv.IMPLEMENTATION != "native",
                            reason="native mode only (the extension is not built or "
                                   "BITKV_PURE_PYTHON=1)")

KEY32 = bytes(range(32))
GROUP = 16  # GET_MANY_GROUP in get.c: batch sizes around its multiples are tested


def outcome(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        return type(exc), str(exc)


def loop_of_get(db, keys, default=None):
    """What get_many promises: the reference (pure-Python) get of each key, in order."""
    return [Store.get(db, k, default) for k in keys]


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def db(tmp_path, clock):
    with bitkv.open(str(tmp_path / "db"), clock=clock, auto_compact=False,
                    max_segment_size=64 * 1024) as store:
        yield store


def test_hits_misses_defaults_and_duplicates_in_order(db):
    for i in range(50):
        db.put(b"k%d" % i, b"v%d" % i)
    keys = [b"k3", b"nope", b"k3", b"k49", b"k0", b"nope", b"k3"]
    assert db.get_many(keys) == [b"v3", None, b"v3", b"v49", b"v0", None, b"v3"]
    default = object()
    got = db.get_many(keys, default)
    assert got[1] is default and got[5] is default
    assert got == [db.get(k, default) for k in keys]


def test_empty_batch_and_any_iterable(db):
    db.put(b"a", b"1")
    db.put(b"b", b"2")
    assert db.get_many([]) == []
    assert db.get_many(()) == []
    assert db.get_many(k for k in (b"a", b"b", b"c")) == [b"1", b"2", None]
    assert db.get_many(iter([b"b"]), b"d") == [b"2"]
    assert db.get_many({b"a": 0}) == [b"1"]  # a dict is an iterable of its keys
    assert db.get_many(db.keys()) in ([b"1", b"2"], [b"2", b"1"])


def test_str_bytes_like_and_namespaced_keys(db):
    db.put("ключ", b"unicode")
    db.put(b"bytes", b"b")
    keys = ["ключ", b"bytes", bytearray(b"bytes"), memoryview(b"bytes"), "missing"]
    assert db.get_many(keys) == [b"unicode", b"b", b"b", b"b", None]


def test_bad_keys_raise_what_get_raises(db):
    db.put(b"a", b"1")
    for bad in (5, None, b"", "", b"x" * 70000, 1.5):
        want = outcome(db.get, bad)
        assert isinstance(want, tuple), bad  # get raises for it
        assert outcome(db.get_many, [b"a", bad, b"a"]) == want
        assert outcome(db.get_many, [bad]) == want
        assert outcome(Store.get_many, db, [b"a"] * 20 + [bad]) == want


def test_one_key_instead_of_a_batch_is_a_type_error(db):
    db.put(b"ab", b"1")
    for one in (b"ab", "ab", bytearray(b"ab"), memoryview(b"ab")):
        with pytest.raises(TypeError, match="an iterable of keys, not one key"):
            db.get_many(one)
    with pytest.raises(TypeError, match="an iterable of keys, not int"):
        db.get_many(5)


def test_a_failing_iterable_ends_the_call(db):
    db.put(b"a", b"1")

    def keys():
        yield b"a"
        raise RuntimeError("the keys ran out badly")

    with pytest.raises(RuntimeError, match="ran out badly"):
        db.get_many(keys())


def test_ttl_keys_follow_the_store_clock(db, clock):
    db.put(b"short", b"s", ttl=1)
    db.put(b"long", b"l", ttl=100)
    db.put(b"none", b"n")
    keys = [b"short", b"long", b"none"]
    assert db.get_many(keys) == [b"s", b"l", b"n"]
    clock.advance(2)
    assert db.get_many(keys, b"gone") == [b"gone", b"l", b"n"]
    assert db.get_many(keys) == loop_of_get(db, keys)


def test_held_expired_keys_are_seen_only_inside_seeing_expired(tmp_path, clock):
    with bitkv.open(str(tmp_path / "db"), clock=clock, hold_expired=True) as db:
        db.put(b"k", b"v", ttl=1)
        clock.advance(2)
        assert db.get_many([b"k"]) == [None]
        with db.seeing_expired():
            assert db.get_many([b"k"]) == [b"v"]


def test_big_values_and_batch_records(db):
    big = b"B" * 20_000  # past the index entry's 4 KiB size hint: the Python path
    db.put(b"big", big)
    with db.batch() as b:
        b.put(b"in-batch", b"x")
        b.put(b"other", b"y")
    assert db.get_many([b"big", b"in-batch", b"other"]) == [big, b"x", b"y"]


@pytest.mark.parametrize("opts", [{"compression": "zstd", "compression_min_size": 1},
                                  {"encryption_key": KEY32}])
def test_encoded_values(tmp_path, opts):
    pytest.importorskip("zstandard" if "compression" in opts else "cryptography")
    with bitkv.open(str(tmp_path / "db"), **opts) as db:
        db.put(b"k", b"value " * 20)
        db.put(b"short", b"s")
        keys = [b"k", b"short", b"missing", b"k"]
        assert db.get_many(keys) == [b"value " * 20, b"s", None, b"value " * 20]
        assert db.get_many(keys) == loop_of_get(db, keys)


def test_batches_across_group_boundaries(db):
    rng = random.Random(5)
    present = [b"key:%04d" % i for i in range(300)]
    for k in present:
        db.put(k, k[::-1])
    db.put(b"ttl", b"t", ttl=50)
    db.delete(b"key:0007")
    pool = present + [b"absent:%d" % i for i in range(40)] + [b"ttl", "key:0001"]
    for n in (1, 2, GROUP - 1, GROUP, GROUP + 1, 2 * GROUP, 3 * GROUP + 5, 1000, 5000):
        keys = [rng.choice(pool) for _ in range(n)]
        assert db.get_many(keys) == loop_of_get(db, keys), n


def test_closed_store_raises_closed_error(tmp_path):
    db = bitkv.open(str(tmp_path / "db"))
    db.put(b"a", b"1")
    get_many = db.get_many
    db.close()
    for keys in ([], [b"a"], [b"a"] * 40):
        with pytest.raises(bitkv.ClosedError):
            db.get_many(keys)
        with pytest.raises(bitkv.ClosedError):
            get_many(keys)


def test_readonly_store_and_its_refresh(tmp_path):
    path = str(tmp_path / "db")
    writer = bitkv.open(path, sync="always")
    writer.put(b"a", b"1")
    reader = bitkv.open(path, readonly=True)
    try:
        assert reader.get_many([b"a", b"b"]) == [b"1", None]
        writer.put(b"b", b"2")
        writer.put(b"a", b"one")
        reader.refresh()
        assert reader.get_many([b"a", b"b"]) == [b"one", b"2"]
    finally:
        reader.close()
        writer.close()


def test_namespace_and_json_views(db):
    ns = db.namespace(b"user:")
    ns.put(b"1", b"alice")
    ns.put("2", b"bob")
    db.put(b"1", b"not in the namespace")
    assert ns.get_many([b"1", "2", b"3"], b"-") == [b"alice", b"bob", b"-"]
    assert outcome(ns.get_many, [b"1", b"x" * 65535]) == outcome(ns.get, b"x" * 65535)
    with pytest.raises(TypeError, match="not one key"):
        ns.get_many(b"1")
    nested = ns.namespace(b"a:")
    nested.put(b"x", b"deep")
    assert nested.get_many([b"x", b"y"]) == [b"deep", None]

    docs = db.json
    docs.put(b"d1", {"n": 1})
    docs.put(b"d2", [1, 2])
    db.put(b"bad", b"{not json")
    assert docs.get_many([b"d1", b"missing", b"d2"]) == [{"n": 1}, None, [1, 2]]
    assert docs.get_many([b"missing"], 0) == [0]
    with pytest.raises(bitkv.views.InvalidJSONError, match="bad"):
        docs.get_many([b"d1", b"bad"])
    ns.json.put(b"doc", {"in": "ns"})
    assert ns.json.get_many([b"doc", b"nodoc"], "dflt") == [{"in": "ns"}, "dflt"]


def test_a_subclass_get_is_what_get_many_uses(tmp_path):
    class Upper(Store):
        def get(self, key, default=None):  # type: ignore[override]
            value = super().get(key, default)
            return value.upper() if isinstance(value, bytes) else value

    with Upper(str(tmp_path / "db")) as db:
        db.put(b"a", b"abc")
        assert db.get_many([b"a", b"b"]) == [b"ABC", None]


def test_lru_reads_through_get_many_count_as_reads(tmp_path):
    """In an LRU cache a key read through get_many is stamped as read (get_many then loops
    over the store's stamping get), so a batch-read hot set survives a scan of new keys."""
    value = b"v" * 100
    with bitkv.open(str(tmp_path / "db"), sync="never", max_bytes=60 * 140,
                    eviction="allkeys-lru") as db:
        hot = [b"hot:%02d" % i for i in range(20)]
        for k in hot:
            db.put(k, value)
        for step in range(400):
            if step % 4 == 0:
                db.get_many(hot)
            db.put(b"scan:%04d" % step, value)
        assert sum(v is not None for v in db.get_many(hot)) >= 18


# -- the kernel ---------------------------------------------------------------------------------


@native
def test_the_kernel_serves_get_many_in_native_mode(tmp_path):
    with bitkv.open(str(tmp_path / "db")) as db:
        assert db._get_many_kernel is not None
    assert db._get_many_kernel is None
    with bitkv.open(str(tmp_path / "lru"), max_bytes=10**6, eviction="allkeys-lru") as db:
        assert db._get_many_kernel is None  # every read is stamped: the loop of get


@native
def test_the_kernel_s_arguments(tmp_path):
    with bitkv.open(str(tmp_path / "db")) as db:
        db.put(b"a", b"1")
        kernel = db._reader.get_many
        assert kernel([b"a", b"b"]) == [b"1", None]
        assert kernel(iter([b"a"]), 0) == [b"1"]
        assert kernel([b"a", "a"], 0) == [b"1", b"1"]
        with pytest.raises(TypeError, match="1 or 2 arguments"):
            kernel()
        with pytest.raises(TypeError, match="1 or 2 arguments"):
            kernel([b"a"], None, None)
        with pytest.raises(TypeError, match="not iterable"):
            kernel(5)


@pytest.mark.parametrize("compact", [False, True])
def test_batches_racing_overwrites_deletes_and_close(tmp_path, compact):
    """Another thread overwrites and deletes keys (and compacts: maps closed and replaced)
    while batches run: every value returned is one the key held (or None for a deleted key),
    never another key's or garbage; close() ends the batches with ClosedError
    (scripts/asan_native.sh runs this under ASan)."""
    db = bitkv.open(str(tmp_path / "db"), max_segment_size=16 * 1024, auto_compact=False)
    n = 300
    keys = [b"k%d" % i for i in range(n)]
    for i, k in enumerate(keys):
        db.put(k, b"v%d-0" % i)
    stop = threading.Event()
    errors: list[BaseException] = []
    served = [0]

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            while not stop.is_set():
                idx = [rng.randrange(n) for _ in range(rng.choice((1, 15, 40, 200, 5000)))]
                try:
                    got = db.get_many([*(keys[i] for i in idx), f"k{idx[0]}"])
                except bitkv.ClosedError:
                    return
                for i, value in zip(idx + idx[:1], got, strict=True):
                    if value is not None and not value.startswith(b"v%d-" % i):
                        raise AssertionError((i, value))
                served[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    rng = random.Random(1)
    for rnd in range(1, 6):
        for i in range(0, n, 2):
            db.put(keys[i], b"v%d-%d" % (i, rnd))
        for _ in range(20):
            db.delete(keys[rng.randrange(n)])
        if compact:
            db.compact()
    db.close()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert served[0] > 0


# -- the differential test in this process ------------------------------------------------------

KEYS = [b"a", b"b", "c", b"key:1", b"\x00", b"\xff" * 3, b"k" * 300, b"big", b"ttl"]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "delete", "ttl", "advance", "compact"]),
                              st.sampled_from(KEYS), st.binary(max_size=60)), max_size=30),
       batch=st.lists(st.one_of(st.sampled_from(KEYS), st.binary(max_size=4)), max_size=70),
       default=st.sampled_from([None, b"d", 0]))
def test_get_many_is_the_loop_of_get(tmp_path_factory, ops, batch, default):
    """Random store contents (TTLs, deletes, big values, compaction), random batches (missing
    and bad keys, duplicates): get_many gives what the loop of the reference get gives, and
    what the store's own get (the kernel in native mode) gives."""
    clock = FakeClock()
    path = str(tmp_path_factory.mktemp("diff") / "db")
    with bitkv.open(path, clock=clock, auto_compact=False, max_segment_size=8192) as db:
        for op, key, value in ops:
            if op == "put":
                db.put(key, value * 100 if key == b"big" else value)
            elif op == "delete":
                db.delete(key)
            elif op == "ttl":
                db.put(key, value, ttl=1)
            elif op == "advance":
                clock.advance(0.75)
            else:
                db.compact()
        want = outcome(loop_of_get, db, batch, default)
        assert outcome(db.get_many, batch, default) == want
        assert outcome(lambda: [db.get(k, default) for k in batch]) == want


# -- reference counts and leaks -----------------------------------------------------------------


@native
@pytest.mark.slow
def test_no_leak_over_millions_of_keys(tmp_path):
    clock = FakeClock()
    db = bitkv.open(str(tmp_path / "db"), clock=clock, auto_compact=False)
    keys = [b"key%06d" % i for i in range(2000)]
    for k in keys:
        db.put(k, b"v" * 64)
    db.put(b"ttl", b"t", ttl=1000)
    db.put(b"big", b"B" * 5000)
    default = object()
    kernel = db._reader.get_many
    mixed = [x for k in keys[:100] for x in (k, b"nokey", b"ttl", "key000001", b"big")]
    bad_key = object()  # not a key: TypeError from the fallback, its reference given back
    bad = [*keys[:40], bad_key, *keys[:5]]

    def cycle() -> None:
        for _ in range(10):
            kernel(keys)
        kernel(keys, default)
        kernel(mixed, default)
        kernel(iter(keys[:100]))
        db.get_many(keys[:300], default)
        try:
            kernel(bad, default)
        except TypeError:
            pass
        else:
            raise AssertionError("a bad key in the batch did not raise")

    cycle()
    cycle()
    gc.collect()
    probes = (default, keys[0], keys[-1], mixed[1], bad_key)
    refs = [sys.getrefcount(x) for x in probes]
    tracemalloc.start()
    traced = []
    for _ in range(50):  # 50 cycles x ~23,000 keys: 1.15M keys through the kernel
        cycle()
        gc.collect()
        traced.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    db.close()
    assert [sys.getrefcount(x) for x in probes] == refs
    assert max(traced[2:]) - min(traced[2:]) < 64 * 1024, traced
