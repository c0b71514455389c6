"""KeyDir.entries_in and the compiled IndexMap.items_in behind it (bitkv/native/indexmap.c).

``items_in(shift, bitmap)`` is checked against its reference, a comprehension over a dict, on
maps driven through resizes, arena compactions and deletes with re-puts (which change the
insertion order the result must keep); its argument errors, a map changed by the cyclic GC
while the result is built, and its reference counts and memory over many calls are checked
too. ``scripts/asan_native.sh`` runs this file under ASan+UBSan; ``fuzz/fuzz_items_in.py`` is
its fuzz target.
"""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc

import pytest

from bitkv import keydir

native = pytest.importorskip("bitkv._native", reason="the extension is not built")
IndexMap = native.IndexMap


def reference(model: dict[bytes, int], shift: int, bitmap: bytes) -> list[tuple[bytes, int]]:
    """items_in's rule, on a dict."""
    def wanted(value: int) -> bool:
        group = value >> shift
        return group < len(bitmap) * 8 and bool(bitmap[group >> 3] >> (group & 7) & 1)

    return [(k, v) for k, v in model.items() if wanted(v)]


def bitmap_of(groups: set[int], size: int = keydir.MAX_SLOTS // 8) -> bytes:
    bits = bytearray(size)
    for g in groups:
        if g < size * 8:
            bits[g >> 3] |= 1 << (g & 7)
    return bytes(bits)


def _driven(rng: random.Random, ops: int, slots: int) -> tuple[IndexMap, dict[bytes, int]]:
    """A map and its dict after ``ops`` random puts, overwrites, deletes and re-puts of
    entries in ``slots`` slots (keys of 0..300 bytes: one- and two-byte arena lengths)."""
    m, d = IndexMap(), {}
    keys = [rng.randbytes(rng.choice((0, 1, 8, 16, 127, 128, 300))) for _ in range(ops // 3)]
    for _ in range(ops):
        key = rng.choice(keys)
        if rng.random() < 0.3:
            m.pop(key, None)
            d.pop(key, None)
        else:
            entry = keydir.pack(rng.randrange(slots), rng.randrange(1 << 32),
                                rng.randrange(1 << 13))
            m[key] = d[key] = entry
    return m, d


@pytest.mark.parametrize("seed", range(6))
def test_items_in_agrees_with_the_dict_comprehension(seed):
    rng = random.Random(seed)
    m, d = _driven(rng, rng.choice((50, 2_000, 30_000)), rng.choice((1, 3, 40, 65_536)))
    assert list(m.items()) == list(d.items())
    for _ in range(20):
        shift = rng.choice((0, 1, 12, keydir.SLOT_SHIFT, 60, 63))
        size = rng.choice((0, 1, 7, keydir.MAX_SLOTS // 8))
        bitmap = rng.randbytes(size) if rng.random() < 0.5 else bitmap_of(
            {rng.randrange(64) for _ in range(3)}, size)
        assert m.items_in(shift, bitmap) == reference(d, shift, bitmap), (shift, bitmap)


def test_keydir_entries_in_is_the_same_in_both_implementations():
    rng = random.Random(4)
    m, d = _driven(rng, 20_000, 12)
    compiled, pure = keydir.KeyDir(), keydir.KeyDir()
    compiled.entries, pure.entries = m, d
    assert isinstance(pure.entries, dict) and not isinstance(compiled.entries, dict)
    for slots in (set(), {0}, {11}, {3, 5, 7}, frozenset(range(12)), {12, 65_535}):
        got = compiled.entries_in(slots)
        assert got == pure.entries_in(slots)
        assert got == [(k, e) for k, e in d.items() if e >> keydir.SLOT_SHIFT in slots]
    assert len(compiled.entries_in({0})) > 100  # the sets above select something


def test_insertion_order_survives_deletes_re_puts_and_arena_compaction():
    m, d = IndexMap(), {}
    for i in range(50_000):
        m[b"k%06d" % i] = d[b"k%06d" % i] = keydir.pack(i % 3, i, 40)
    for i in range(0, 50_000, 3):  # two thirds of the arena dead: it is compacted
        del m[b"k%06d" % i], d[b"k%06d" % i]
    for i in range(0, 50_000, 9):  # back, at the end of the order
        m[b"k%06d" % i] = d[b"k%06d" % i] = keydir.pack(0, i, 40)
    for i in range(1, 50_000, 5):  # overwrites keep their place
        m[b"k%06d" % i] = d[b"k%06d" % i] = keydir.pack(0, i + 1, 40)
    got = m.items_in(keydir.SLOT_SHIFT, bitmap_of({0}))
    assert got == reference(d, keydir.SLOT_SHIFT, bitmap_of({0}))
    assert [k for k, _ in got] != sorted(k for k, _ in got)  # the order is not the keys'


def test_empty_maps_and_empty_results():
    m = IndexMap()
    assert m.items_in(0, b"\xff" * 8) == []
    m[b"a"] = 1 << 40  # group 1 at shift 40, group 0 at 41
    assert m.items_in(40, b"\x02") == [(b"a", 1 << 40)]
    assert m.items_in(41, b"\x01") == [(b"a", 1 << 40)]
    assert m.items_in(40, b"\x01") == []
    assert m.items_in(0, b"\xff" * 8) == []  # 2**40 is past a 64-bit bitmap
    assert m.items_in(63, b"") == []
    m.clear()
    assert m.items_in(40, b"\x01") == []


def test_bad_arguments_raise_specific_errors_and_change_nothing():
    m = IndexMap()
    m[b"a"] = 5
    with pytest.raises(TypeError, match="2 arguments"):
        m.items_in(0)
    with pytest.raises(TypeError, match="2 arguments"):
        m.items_in(0, b"", b"")
    with pytest.raises(ValueError, match="shift 64 is out of range"):
        m.items_in(64, b"\xff")
    with pytest.raises(ValueError, match="shift -1 is out of range"):
        m.items_in(-1, b"\xff")
    with pytest.raises(OverflowError):
        m.items_in(2**70, b"\xff")
    with pytest.raises(TypeError):
        m.items_in("0", b"\xff")
    for bad in (bytearray(b"\xff"), memoryview(b"\xff"), "\xff", None, {0}):
        with pytest.raises(TypeError, match="bitmap must be bytes"):
            m.items_in(0, bad)
    assert list(m.items()) == [(b"a", 5)]


def test_a_map_changed_by_the_gc_while_the_result_is_built_raises():
    """Building the tuples may run the cyclic GC, and with it code that changes the map: the
    arena offsets found would then be stale. items_in raises RuntimeError, as an iterator
    does, instead of reading them."""
    m = IndexMap()
    for i in range(5_000):
        m[b"k%d" % i] = 0
    added: list[bytes] = []
    armed = [False]

    def grow(phase: str, _info: dict[str, int]) -> None:
        # at every collection while armed (the threshold makes one run at nearly every
        # object items_in makes after its scan: the list, then each tuple)
        if phase == "start" and armed[0] and len(added) < 100_000:
            for _ in range(100):
                added.append(b"late%d" % len(added))
                m[added[-1]] = 0  # the arena grows (realloc: it may move)

    thresholds = gc.get_threshold()
    was_enabled = gc.isenabled()
    gc.callbacks.append(grow)
    gc.enable()
    gc.set_threshold(1)
    try:
        with pytest.raises(RuntimeError, match="changed size during items_in"):
            armed[0] = True  # nothing between here and the call makes a tracked object
            m.items_in(0, b"\x01")
    finally:
        armed[0] = False
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(grow)
        if not was_enabled:
            gc.disable()
    assert added and len(m) == 5_000 + len(added)
    assert m.items_in(0, b"\x01") == list(m.items())


def test_reference_counts_and_memory_stay_flat_over_many_calls():
    rng = random.Random(9)
    m, d = _driven(rng, 3_000, 4)
    bitmap = bitmap_of({1, 2})
    sentinel_value = 2**62 + 7  # not a cached small int
    m[b"sentinel"] = d[b"sentinel"] = keydir.pack(1, 0, 0) | 0
    refs = (sys.getrefcount(m), sys.getrefcount(bitmap), sys.getrefcount(sentinel_value))

    def cycle() -> None:
        for _ in range(200):
            got = m.items_in(keydir.SLOT_SHIFT, bitmap)
            assert len(got) > 100
            del got
            for bad in ((64, bitmap), (0, bytearray(bitmap))):
                try:
                    m.items_in(*bad)
                except (TypeError, ValueError):
                    pass

    cycle()  # warm up the allocator
    gc.collect()
    tracemalloc.start()
    traced = []
    for _ in range(6):
        cycle()
        gc.collect()
        traced.append(tracemalloc.get_traced_memory()[0])
    tracemalloc.stop()
    assert (sys.getrefcount(m), sys.getrefcount(bitmap), sys.getrefcount(sentinel_value)) == refs
    # a leak of one object per match would add ~10 MB a cycle; of the match array, ~3 MB
    assert max(traced) - min(traced) < 64 * 1024, traced
