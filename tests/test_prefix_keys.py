"""The keys under a prefix: ``db.keys(prefix)`` (listing and ``len``) through
:meth:`bitkv.keydir.KeyDir.keys_with_prefix` and :meth:`~bitkv.keydir.KeyDir.count_with_prefix`.

In native mode these are ``IndexMap.keys_with_prefix`` / ``count_with_prefix``
(bitkv/native/indexmap.c: the key arena compared with the prefix in C, bytes objects made only
for matches); in pure-Python mode a filter over the dict, the reference. The store tests run in
both modes; the differential, reference-count and leak tests need the extension.
``scripts/asan_native.sh`` runs this file under ASan+UBSan.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bitkv
from bitkv import keydir

try:
    from bitkv._native import IndexMap
except ImportError:  # not built: the native-only tests skip
    IndexMap = None

needs_native = pytest.mark.skipif(bitkv.IMPLEMENTATION != "native",
                                  reason="the compiled IndexMap is not in use")

BINARY_KEYS = [b"\x00", b"\x00\x00", b"\x00\xff", b"\xff", b"\xff\x00", b"\xff\x00\x00",
               b"\xff\x00bk", b"\xff\x00bkx", b"\xff\xff"]


def _fill(db: bitkv.Store) -> None:
    for i in range(20):
        db.put(b"user:%02d" % i, b"u")
    for i in range(5):
        db.put(b"session:%d" % i, b"s")
    db.put(b"user", b"shorter than the prefix")
    db.put(b"user:", b"equal to the prefix")
    for k in BINARY_KEYS:
        db.put(k, b"b")


# -- the store, both modes -------------------------------------------------------------------


def test_prefix_hits_and_misses(db):
    _fill(db)
    users = sorted(db.keys(b"user:").snapshot())
    assert users == [b"user:"] + [b"user:%02d" % i for i in range(20)]
    assert len(db.keys(b"user:")) == 21
    assert sorted(db.keys(b"user:1")) == [b"user:%02d" % i for i in range(10, 20)]
    assert len(db.keys(b"user:1")) == 10
    for miss in (b"nobody", b"user:20", b"user:000", b"users", b"\x01", b"\xfe"):
        assert db.keys(miss).snapshot() == []
        assert len(db.keys(miss)) == 0 and list(db.keys(miss)) == []


def test_empty_and_absent_prefix_list_every_key(db):
    _fill(db)
    every = sorted(db.keys().snapshot())
    assert len(every) == 20 + 5 + 2 + len(BINARY_KEYS) == len(db)
    assert sorted(db.keys(b"").snapshot()) == every == sorted(db.keys(None).snapshot())
    assert len(db.keys(b"")) == len(every) == len(db.keys())
    assert sorted(db.keys("")) == every


def test_a_key_equal_to_the_prefix_is_under_it_and_a_shorter_one_is_not(db):
    _fill(db)
    assert b"user:" in db.keys(b"user:").snapshot()
    assert b"user" not in db.keys(b"user:").snapshot()
    assert sorted(db.keys(b"user")) == sorted([b"user", b"user:",
                                               *(b"user:%02d" % i for i in range(20))])
    assert db.keys(b"user:00").snapshot() == [b"user:00"]
    assert len(db.keys(b"user:00")) == 1


@pytest.mark.parametrize("prefix", [b"\x00", b"\x00\x00", b"\xff", b"\xff\x00", b"\xff\x00bk",
                                    b"\xff\x00bkx", b"\xff\xff", b"\xff\xff\xff", b"\x00\xff"])
def test_binary_prefixes(db, prefix):
    """Prefixes with 0x00 and 0xff bytes (the collections' reserved prefix among them) are
    compared as bytes: no byte ends a key, no sign bit changes an order."""
    _fill(db)
    want = sorted(k for k in BINARY_KEYS if k.startswith(prefix))
    assert sorted(db.keys(prefix).snapshot()) == want
    assert len(db.keys(prefix)) == len(want)


def test_deleted_keys_are_not_listed_and_a_key_put_again_is_listed_once(db):
    _fill(db)
    for i in range(0, 20, 2):
        db.delete(b"user:%02d" % i)
    db.delete(b"user:")
    db.put(b"user:04", b"again")  # deleted, then written again: listed once
    db.put(b"user:05", b"overwritten")
    want = sorted([b"user:04"] + [b"user:%02d" % i for i in range(1, 20, 2)])
    assert sorted(db.keys(b"user:").snapshot()) == want
    assert len(db.keys(b"user:")) == len(want)
    with db.batch() as b:  # a batch's deletes and puts, the same
        b.delete(b"user:01")
        b.put(b"user:99", b"new")
    want = sorted(set(want) - {b"user:01"} | {b"user:99"})
    assert sorted(db.keys(b"user:").snapshot()) == want
    assert len(db.keys(b"user:")) == len(want)


def test_expired_keys_are_neither_listed_nor_counted(db_path, clock):
    with bitkv.open(db_path, clock=clock) as db:
        _fill(db)
        db.put(b"user:short", b"x", ttl=5)
        db.put(b"user:long", b"x", ttl=500)
        db.put(b"\xff\x00bk-ttl", b"x", ttl=5)
        assert len(db.keys(b"user:")) == 23
        clock.advance(10)
        listed = db.keys(b"user:").snapshot()
        assert b"user:short" not in listed and b"user:long" in listed
        assert len(listed) == len(db.keys(b"user:")) == 22
        assert db.keys(b"\xff\x00bk").snapshot().count(b"\xff\x00bk-ttl") == 0


def test_held_expired_keys_are_listed_but_not_counted(db_path, clock):
    """A replica's store keeps expired keys indexed (listed, as an iteration starts from
    them) but hidden from reads: ``len`` counts what an iteration yields."""
    with bitkv.open(db_path, clock=clock, hold_expired=True) as db:
        db.put(b"a:1", b"1", ttl=10)
        db.put(b"a:2", b"2")
        db.put(b"b:1", b"3", ttl=10)
        clock.advance(20)
        assert sorted(db.keys(b"a:").snapshot()) == [b"a:1", b"a:2"]
        assert len(db.keys(b"a:")) == 1 == len(list(db.keys(b"a:")))
        assert len(db.keys(b"b:")) == 0 == len(list(db.keys(b"b:")))
        with db.seeing_expired():
            assert len(db.keys(b"a:")) == 2


def test_listing_survives_reopen_and_compaction(db_path):
    with bitkv.open(db_path, max_segment_size=4096, auto_compact=False) as db:
        _fill(db)
        for round_ in range(3):  # overwrites and deletes: dead records in several segments
            for i in range(20):
                db.put(b"user:%02d" % i, b"v%d" % round_ * 50)
        for i in range(15, 20):
            db.delete(b"user:%02d" % i)
        before = {p: sorted(db.keys(p).snapshot()) for p in (b"user:", b"\xff", b"", b"zz")}
        counts = {p: len(db.keys(p)) for p in before}
        assert counts[b"user:"] == 16
    with bitkv.open(db_path, auto_compact=False) as db:  # from hints and segments
        assert {p: sorted(db.keys(p).snapshot()) for p in before} == before
        assert {p: len(db.keys(p)) for p in before} == counts
        db.compact()
        assert {p: sorted(db.keys(p).snapshot()) for p in before} == before
        assert {p: len(db.keys(p)) for p in before} == counts
    with bitkv.open(db_path) as db:  # the compacted store, reopened
        assert {p: sorted(db.keys(p).snapshot()) for p in before} == before


def test_namespace_views_list_their_prefix_only(db):
    _fill(db)
    ns = db.namespace(b"\xff\x00")
    assert sorted(ns.keys()) == [b"\x00", b"bk", b"bkx"]  # b"\xff\x00" itself has no name
    assert len(ns) == 3
    nested = ns.namespace(b"bk")
    assert sorted(nested.keys()) == [b"x"] and len(nested) == 1
    users = db.namespace(b"user:")
    assert len(users.keys(prefix=b"1")) == 10
    users.clear()
    assert db.keys(b"user:").snapshot() == [b"user:"]  # the prefix's own key is not its key
    assert len(db.keys(b"session:")) == 5


def test_listing_a_rare_prefix_copies_no_other_key(db_path):
    """The regression test of the change: ``db.keys(prefix).snapshot()`` used to copy every
    key of the index into a list (``bitkv serve`` did so at every start, for the collections'
    prefix, on stores that have none) and then filter it. Now only matches are made: the
    memory it allocates does not grow with the keys that do not match. tracemalloc sees both
    the dict's list and the IndexMap's bytes objects."""
    with bitkv.open(db_path, sync="never") as db:
        with db.batch() as b:
            for i in range(50_000):
                b.put(b"key:%08d" % i, b"")
        db.put(b"user:1", b"")
        gc.collect()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            assert db.keys(b"user:").snapshot() == [b"user:1"]
            assert db.keys(b"\xff\x00bk").snapshot() == []
            assert len(db.keys(b"user:")) == 1
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
    # a list of 50,000 keys is 400 KB of pointers (and ~2 MB of bytes objects in native mode)
    assert peak < 64 * 1024, peak


# -- the compiled map against the reference ---------------------------------------------------


def _reference(keys: dict[bytes, int]) -> keydir.KeyDir:
    kd = keydir.KeyDir()
    kd.entries = dict(keys)  # the pure-Python reference's index, whatever the mode
    return kd


def _native(keys: dict[bytes, int]) -> keydir.KeyDir:
    assert IndexMap is not None
    kd = keydir.KeyDir()
    kd.entries = IndexMap()
    for k, v in keys.items():
        kd.entries[k] = v
    return kd


KEY_BYTES = st.binary(max_size=6).map(lambda b: bytes(x & 0x83 for x in b))  # 8 byte values
PREFIX_BYTES = st.one_of(st.just(b""), KEY_BYTES, st.binary(max_size=3))


@needs_native
@settings(max_examples=300, deadline=None)
@given(program=st.lists(st.tuples(st.sampled_from(["put", "put", "delete", "list"]), KEY_BYTES,
                                  PREFIX_BYTES), max_size=80),
       final=st.lists(PREFIX_BYTES, max_size=8))
def test_native_and_reference_agree_on_random_keys_and_prefixes(program, final):
    """Random puts, deletes (dead records in the arena, keys put again after a delete) and
    listings on a compiled index and a dict: the same keys in the same (insertion) order,
    and the same counts, for every prefix asked."""
    native, ref = _native({}), _reference({})
    for i, (op, key, prefix) in enumerate(program):
        if op == "put":
            native.entries[key] = ref.entries[key] = i
        elif op == "delete":
            native.entries.pop(key, None)
            ref.entries.pop(key, None)
        else:
            assert native.keys_with_prefix(prefix) == ref.keys_with_prefix(prefix)
            assert native.count_with_prefix(prefix) == ref.count_with_prefix(prefix)
    for prefix in [*final, *(k for _op, k, _p in program)]:
        assert native.keys_with_prefix(prefix) == ref.keys_with_prefix(prefix)
        assert native.count_with_prefix(prefix) == ref.count_with_prefix(prefix)


@needs_native
def test_native_and_reference_agree_through_resizes_and_arena_compaction():
    """Tens of thousands of keys put and mostly deleted: the table grows and the arena is
    rewritten (records move); listings agree with the dict at every stage."""
    rng = random.Random(7)
    native, ref = _native({}), _reference({})
    prefixes = [b"", b"a", b"ab", b"\x00", b"\xff\xff", b"b\x00", b"zzzz"]
    for stage in range(4):
        for i in range(20_000):
            k = bytes(rng.choice(b"ab\x00\xff") for _ in range(rng.randint(1, 12)))
            native.entries[k] = ref.entries[k] = i
        for k in rng.sample(list(ref.entries), k=len(ref.entries) * 3 // 4):
            del native.entries[k], ref.entries[k]
        for p in prefixes:
            assert native.keys_with_prefix(p) == ref.keys_with_prefix(p), (stage, p)
            assert native.count_with_prefix(p) == ref.count_with_prefix(p), (stage, p)
    native.entries.clear()
    ref.entries.clear()
    assert native.keys_with_prefix(b"") == [] and native.count_with_prefix(b"a") == 0


@needs_native
def test_a_prefix_must_be_bytes():
    m = IndexMap()
    m[b"a"] = 1
    for bad in ("a", bytearray(b"a"), memoryview(b"a"), None, 1):
        with pytest.raises(TypeError, match="prefixes must be bytes"):
            m.keys_with_prefix(bad)
        with pytest.raises(TypeError, match="prefixes must be bytes"):
            m.count_with_prefix(bad)
    assert m.keys_with_prefix(b"a") == [b"a"]  # unchanged


# -- reference counts and leaks -------------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _prefix_cycle(m, hit: bytes, miss: bytes, rounds: int) -> None:
    """~5 calls a round: listings and counts that hit, miss and fail."""
    for _ in range(rounds):
        m.keys_with_prefix(hit)
        m.keys_with_prefix(miss)
        m.count_with_prefix(hit)
        m.count_with_prefix(miss)
        try:
            m.keys_with_prefix("not bytes")
        except TypeError:
            pass
    for _ in range(rounds // 1000):
        m.keys_with_prefix(b"")


@needs_native
@pytest.mark.slow
def test_prefix_scans_leak_nothing_over_a_million_calls():
    m = IndexMap()
    for i in range(300):
        m[b"k:%04d" % i] = i
    for i in range(0, 300, 3):  # dead records in the arena, skipped by every scan
        del m[b"k:%04d" % i]
    hit, miss = b"k:010", b"k:x"  # 6 live keys under hit
    _prefix_cycle(m, hit, miss, 2000)  # warm up allocator pools and caches
    refs = [sys.getrefcount(x) for x in (hit, miss, m)]
    gc.collect()
    rss = [_rss_kib()]
    tracemalloc.start()
    traced = []
    for _ in range(10):  # 10 x 20k rounds x 5 calls: 1M calls, 1.2M keys made and freed
        _prefix_cycle(m, hit, miss, 20_000)
        gc.collect()
        traced.append(tracemalloc.get_traced_memory()[0])
        rss.append(_rss_kib())
    tracemalloc.stop()
    assert [sys.getrefcount(x) for x in (hit, miss, m)] == refs
    assert max(traced[2:]) - min(traced[2:]) < 64 * 1024, traced
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan's quarantine holds freed memory
        assert rss[-1] - rss[1] < 4 * 1024, rss


@needs_native
def test_listed_keys_are_fresh_objects_owned_by_the_list():
    m = IndexMap()
    m[b"user:1"] = 1
    m[b"user:2"] = 2
    got = m.keys_with_prefix(b"user:")
    assert got == [b"user:1", b"user:2"]
    owned = [bytes(bytearray(b"x"))]  # a fresh object held by a list and nothing else
    expected = sys.getrefcount(owned[0])
    counts = [sys.getrefcount(got[i]) for i in range(len(got))]
    assert counts == [expected] * 2
    list_refs, expected_list = sys.getrefcount(got), sys.getrefcount(owned)
    assert list_refs == expected_list
