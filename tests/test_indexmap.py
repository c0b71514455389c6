"""The compiled index map (bitkv/native/indexmap.c) against its reference, a dict.

A hypothesis state machine runs random operation sequences on an ``IndexMap`` and a dict and
compares every result, every exception type and the iteration contents; a long seeded run
drives the table and its key arena through many resizes and compactions; the leak tests
repeat millions of calls and check that memory and reference counts stay flat (release builds
have no ``sys.gettotalrefcount``). ``scripts/asan_native.sh`` runs this file under ASan+UBSan.
"""

from __future__ import annotations

import gc
import os
import random
import sys
import tracemalloc

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import bitkv
from bitkv import keydir

indexmap = pytest.importorskip("bitkv._native", reason="the extension is not built")
IndexMap = indexmap.IndexMap

U64 = 2**64 - 1
# Few keys, so that sequences hit existing keys often; the long ones need a two-byte length in
# the arena; b"" is a key like any other.
KEYS = st.one_of(
    st.sampled_from([b"", b"a", b"b", b"ab", b"\x00", b"\x00" * 8, b"k" * 127, b"k" * 128,
                     b"k" * 300, bytes(range(256))]),
    st.binary(max_size=20),
)
VALUES = st.one_of(st.sampled_from([0, 1, U64, 2**63, 2**60 - 1]), st.integers(0, U64))
BAD_KEYS = st.sampled_from(["a", 1, None, bytearray(b"a"), memoryview(b"a"), 1.5, (b"a",)])
BAD_VALUES = st.sampled_from([-1, 2**64, 2**100, -(2**64), "1", None, 1.0, b"1"])


def outcome(fn, *args):
    """(result, None) or (None, exception type): what a call did, to compare."""
    try:
        return fn(*args), None
    except Exception as exc:
        return None, type(exc)


class DifferentialMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.native = IndexMap()
        self.model: dict[bytes, int] = {}

    def both(self, fn):
        a = outcome(fn, self.native)
        b = outcome(fn, self.model)
        assert a == b, (a, b)
        return a

    @rule(key=KEYS, value=VALUES)
    def setitem(self, key, value):
        self.both(lambda m: m.__setitem__(key, value))

    @rule(key=KEYS)
    def getitem(self, key):
        self.both(lambda m: m[key])

    @rule(key=KEYS)
    def get(self, key):
        self.both(lambda m: m.get(key))

    @rule(key=KEYS, default=st.one_of(st.none(), st.integers(-5, 5), st.just("x")))
    def get_default(self, key, default):
        self.both(lambda m: m.get(key, default))

    @rule(key=KEYS)
    def delitem(self, key):
        self.both(lambda m: m.__delitem__(key))

    @rule(key=KEYS)
    def pop(self, key):
        self.both(lambda m: m.pop(key))

    @rule(key=KEYS, default=st.one_of(st.none(), st.integers(-5, 5)))
    def pop_default(self, key, default):
        self.both(lambda m: m.pop(key, default))

    @rule(key=KEYS)
    def contains(self, key):
        self.both(lambda m: key in m)

    @rule()
    def clear(self):
        self.both(lambda m: m.clear())

    @rule()
    def iterate(self):
        # the same order too: insertion order, as the dict's
        assert list(self.native) == list(self.model)
        assert list(self.native.keys()) == list(self.model.keys())
        assert list(self.native.items()) == list(self.model.items())

    @rule(key=BAD_KEYS, value=VALUES)
    def bad_key(self, key, value):
        # The reference accepts any hashable key; the IndexMap only bytes, for every operation.
        for op in (lambda m: m[key], lambda m: m.get(key), lambda m: m.get(key, 0),
                   lambda m: key in m, lambda m: m.pop(key, None), lambda m: m.pop(key),
                   lambda m: m.__delitem__(key), lambda m: m.__setitem__(key, value)):
            assert outcome(op, self.native)[1] is TypeError

    @rule(key=KEYS, value=BAD_VALUES)
    def bad_value(self, key, value):
        expected = OverflowError if isinstance(value, int) else TypeError
        assert outcome(lambda m: m.__setitem__(key, value), self.native)[1] is expected
        # ...and the map is as it was
        assert self.native.get(key) == self.model.get(key)

    @rule(data=st.data(), new_key=KEYS)
    def mutate_while_iterating(self, data, new_key):
        it = iter(self.native)
        first = next(it, None)
        if first is None:
            return
        if new_key in self.model:  # an overwrite: allowed, as with dict
            value = data.draw(VALUES)
            self.native[new_key] = value
            self.model[new_key] = value
            rest = list(it)
            assert sorted([first, *rest]) == sorted(self.model)
        else:  # an insertion: the iterator refuses to go on, as dict's would
            self.native[new_key] = 7
            self.model[new_key] = 7
            with pytest.raises(RuntimeError):
                next(it)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def delete_while_iterating(self, data):
        it = iter(self.native.items())
        next(it)
        key = data.draw(st.sampled_from(sorted(self.model)))
        del self.native[key]
        del self.model[key]
        with pytest.raises(RuntimeError):
            next(it)

    @invariant()
    def same_length(self):
        assert len(self.native) == len(self.model)


DifferentialMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60,
                                                 deadline=None)
TestDifferential = DifferentialMachine.TestCase


def test_long_random_run_through_resizes_and_arena_compaction():
    """Grow to 60k keys, shrink to a few, grow again: every resize, backward shift and
    arena rewrite on the way, compared with a dict at checkpoints."""
    rng = random.Random(1)
    native, model = IndexMap(), {}
    pool = [rng.randbytes(rng.randint(0, 40)) for _ in range(80_000)]
    for phase, (n_ops, p_insert) in enumerate([(120_000, 0.9), (150_000, 0.05),
                                                (120_000, 0.8), (200_000, 0.5)]):
        for _ in range(n_ops):
            key = rng.choice(pool)
            if rng.random() < p_insert:
                value = rng.getrandbits(64)
                native[key] = value
                model[key] = value
            else:
                assert native.pop(key, None) == model.pop(key, None)
        assert len(native) == len(model), phase
        assert list(native.items()) == list(model.items()), phase  # insertion order too
        for key in rng.sample(pool, 2000):
            assert native.get(key) == model.get(key)
    native.clear()
    assert len(native) == 0 and list(native) == [] and native.get(b"") is None


def test_keys_come_back_as_equal_bytes_and_values_as_ints():
    m = IndexMap()
    m[b"key"] = U64
    assert type(next(iter(m))) is bytes and type(m[b"key"]) is int and m[b"key"] == U64
    m[b"flag"] = True  # an int subclass is an int, as for the dict
    assert m[b"flag"] == 1 and type(m[b"flag"]) is int


def test_error_messages_and_constructor():
    m = IndexMap()
    with pytest.raises(TypeError, match="IndexMap keys must be bytes, not str"):
        m["key"] = 1
    with pytest.raises(OverflowError, match=r"0\.\.2\*\*64-1"):
        m[b"key"] = -1
    with pytest.raises(KeyError) as info:
        m[b"missing"]
    assert info.value.args == (b"missing",)
    with pytest.raises(TypeError):
        IndexMap({b"a": 1})
    with pytest.raises(TypeError):
        m.get()
    with pytest.raises(TypeError):
        m.pop(b"a", 1, 2)
    with pytest.raises(TypeError):
        hash(m)


def test_keydir_uses_the_native_map_unless_pure_python_is_forced():
    forced = os.environ.get("BITKV_PURE_PYTHON", "") not in ("", "0")
    assert bitkv.IMPLEMENTATION == keydir.IMPLEMENTATION == ("python" if forced else "native")
    expected = dict if forced else IndexMap
    assert type(keydir.KeyDir().entries) is expected


def test_memory_per_key_is_within_the_target():
    """The issue's target: at most 40 bytes a key beyond the key's bytes (at 200k keys of 16
    bytes; docs/performance.md has the 1M figure)."""
    n = 200_000
    keys = [i.to_bytes(16, "big") for i in range(n)]
    m = IndexMap()
    tracemalloc.start()
    for i, k in enumerate(keys):
        m[k] = i
    # Only what this file's lines allocated (the map's memory is attributed to ``m[k] = i``):
    # other threads of the test process allocate meanwhile, which the process total counts.
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, __file__)])
    tracemalloc.stop()
    used = sum(stat.size for stat in snapshot.statistics("filename"))
    per_key = used / n - 16
    assert per_key <= 40, per_key
    assert sys.getsizeof(m) >= used


# -- reference counts and leaks ----------------------------------------------------------------

def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _cycle(m, keys, default, rng_values) -> None:
    """Every entry point, hits and misses and error paths: ~15 calls per key."""
    for k, v in zip(keys, rng_values, strict=True):
        m[k] = v
        m[k] = v ^ 1
        m.get(k)
        m.get(k + b"?", default)
        m.get(k + b"?")
        _ = k in m
        _ = m[k]
        m.pop(k + b"?", default)
        try:
            m[k + b"?"]
        except KeyError:
            pass
        try:
            m.get("not bytes")
        except TypeError:
            pass
        try:
            m[k] = -1
        except OverflowError:
            pass
    for _ in m.items():
        pass
    for _ in m:
        pass
    for k in keys[::2]:
        del m[k]
    for k in keys[1::2]:
        m.pop(k)


@pytest.mark.slow
def test_no_leak_over_millions_of_calls():
    rng = random.Random(3)
    keys = list({rng.randbytes(rng.randint(4, 24)): None for _ in range(20_000)})
    values = [rng.getrandbits(64) for _ in keys]
    default = object()
    m = IndexMap()
    _cycle(m, keys, default, values)  # warm up allocator pools and caches
    refs = [sys.getrefcount(x) for x in (default, keys[0], keys[-1], m)]
    gc.collect()
    rss = [_rss_kib()]
    tracemalloc.start()
    traced = []
    for _ in range(12):  # 12 cycles x 20k keys x ~15 calls: ~3.6M calls
        _cycle(m, keys, default, values)
        gc.collect()
        traced.append(tracemalloc.get_traced_memory()[0])
        rss.append(_rss_kib())
    tracemalloc.stop()
    assert len(m) == 0
    assert [sys.getrefcount(x) for x in (default, keys[0], keys[-1], m)] == refs
    # traced bytes after a cycle: flat (a leak of one object per call would add ~MBs a cycle)
    assert max(traced[2:]) - min(traced[2:]) < 64 * 1024, traced
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan's quarantine holds freed memory
        assert rss[-1] - rss[1] < 4 * 1024, rss


def test_reference_counts_of_arguments_and_results_are_exact():
    m = IndexMap()
    key = b"refcount-key"
    default = object()
    value = 2**62 + 12345  # not a cached small int
    before = (sys.getrefcount(key), sys.getrefcount(default), sys.getrefcount(value))
    for _ in range(100_000):
        m[key] = value
        assert m.get(key) == value
        assert m.get(b"absent", default) is default
        assert m.pop(b"absent", default) is default
        assert m.pop(key) == value
        try:
            m.pop(key)
        except KeyError:
            pass
    assert (sys.getrefcount(key), sys.getrefcount(default), sys.getrefcount(value)) == before
    it = iter(m)
    before_map = sys.getrefcount(m)
    del it
    assert sys.getrefcount(m) == before_map - 1


def test_reserve_sizes_the_table_once_and_changes_no_content():
    """reserve(n) allocates the table that n keys need, so inserting them does not rehash
    (the size stays put until the arena grows); it never shrinks, keeps every key and the
    insertion order, and refuses nonsense."""
    m = IndexMap()
    m.reserve(0)
    assert sys.getsizeof(m) == sys.getsizeof(IndexMap())  # nothing allocated for nothing
    m.reserve(10_000)
    table = sys.getsizeof(m)
    assert table >= 10_000 * 16 * 5 // 4  # 16-byte slots, at most 4/5 full
    keys = [b"key%05d" % i for i in range(10_000)]
    model = {}
    for i, key in enumerate(keys):
        m[key] = i
        model[key] = i
    arena = sys.getsizeof(m) - table  # only the key arena grew: the table was not rehashed
    assert 0 < arena < 10_000 * 12 * 2
    m.reserve(5)  # never shrinks
    assert sys.getsizeof(m) == table + arena
    m.reserve(100_000)  # grows a full table: every key kept, in order
    assert sys.getsizeof(m) > table + arena
    assert list(m.items()) == list(model.items())
    assert all(m[k] == v for k, v in model.items())
    with pytest.raises(ValueError, match="out of range"):
        m.reserve(-1)
    with pytest.raises(ValueError, match="out of range"):
        m.reserve(2**50)
    with pytest.raises(TypeError):
        m.reserve(b"10")
    assert list(m.items()) == list(model.items())


def test_keydir_reserve_is_a_no_op_for_the_dict_reference():
    kd = keydir.KeyDir()
    kd.reserve(1000)
    assert len(kd) == 0
    kd.entries[b"a"] = 1
    kd.reserve(10)
    assert dict(kd.entries.items()) == {b"a": 1}
