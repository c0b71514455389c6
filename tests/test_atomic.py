"""Atomic operations: incr, conditional put, compare_and_set, get_and_delete/pop, get_with_ttl.

Thread tests hammer one store from several threads and check the invariant that makes the
operation atomic (no lost increment, one winner per round, each value popped exactly once).
"""

from __future__ import annotations

import os
import threading
from collections import Counter

import pytest
from conftest import newest_segment

import bitkv
from bitkv.store import INT64_MAX, INT64_MIN

THREADS = 8


def run_threads(target, n: int = THREADS) -> None:
    """Run ``target(i)`` in ``n`` threads started together; re-raise the first failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            start.wait()
            target(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


@pytest.fixture
def cdb(db_path, clock):
    """A store with the fake clock."""
    store = bitkv.open(db_path, clock=clock)
    try:
        yield store
    finally:
        store.close()


# -- incr --------------------------------------------------------------------------------------


def test_incr_missing_key_starts_at_zero(cdb):
    assert cdb.incr(b"n") == 1
    assert cdb.incr(b"m", 5) == 5
    assert cdb.incr(b"neg", -7) == -7
    assert cdb.incr(b"zero", 0) == 0
    assert cdb.get(b"n") == b"1"
    assert cdb.get(b"neg") == b"-7"
    assert cdb.get(b"zero") == b"0"
    assert cdb.incr("n", 41) == 42  # str keys work as everywhere
    assert cdb[b"n"] == b"42"


def test_incr_existing_decimal_values(cdb):
    cdb.put(b"a", b"10")
    assert cdb.incr(b"a", -15) == -5
    cdb.put(b"b", b"-3")
    assert cdb.incr(b"b", 3) == 0
    assert cdb.get(b"b") == b"0"
    cdb.put(b"c", b"0")
    assert cdb.incr(b"c") == 1


def test_incr_ttl_applies_only_on_create(cdb, clock):
    assert cdb.incr(b"rate", ttl=10) == 1
    assert cdb.ttl(b"rate") == pytest.approx(10.0)
    clock.advance(4)
    assert cdb.incr(b"rate", ttl=100) == 2  # existing: its TTL is kept, not reset
    assert cdb.ttl(b"rate") == pytest.approx(6.0)
    clock.advance(6)
    assert cdb.get(b"rate") is None  # the window ended
    assert cdb.incr(b"rate", ttl=10) == 1  # expired counts as missing: a new window
    assert cdb.ttl(b"rate") == pytest.approx(10.0)


def test_incr_keeps_existing_ttl_and_no_ttl(cdb, clock):
    cdb.put(b"t", b"5", ttl=30)
    clock.advance(10)
    assert cdb.incr(b"t") == 6
    assert cdb.ttl(b"t") == pytest.approx(20.0)
    cdb.put(b"p", b"5")
    assert cdb.incr(b"p", ttl=30) == 6  # ttl only on create: a persistent key stays so
    assert cdb.ttl(b"p") is None


def test_incr_validates_ttl_even_for_existing_key(cdb):
    cdb.put(b"x", b"1")
    with pytest.raises(ValueError):
        cdb.incr(b"x", ttl=-1)
    with pytest.raises(TypeError):
        cdb.incr(b"x", ttl="10")
    assert cdb.get(b"x") == b"1"


@pytest.mark.parametrize("bad", [
    b"abc", b"", b" 1", b"1 ", b"1.5", b"01", b"-0", b"+1", b"1e3", b"0x10", b"--1",
    "\u0663".encode(), b"\xff", b"99999999999999999999", b"9223372036854775808",
    b"-9223372036854775809", b"1_000",
])
def test_incr_non_integer_raises_and_changes_nothing(cdb, clock, bad):
    cdb.put(b"k", bad, ttl=60)
    size = os.path.getsize(newest_segment(cdb.path))
    with pytest.raises(bitkv.NotAnIntegerError) as info:
        cdb.incr(b"k")
    assert isinstance(info.value, ValueError)  # catchable as a ValueError too
    assert b"k" in str(info.value).encode() or "b'k'" in str(info.value)
    assert cdb.get(b"k") == bad
    assert cdb.ttl(b"k") == pytest.approx(60.0)
    assert os.path.getsize(newest_segment(cdb.path)) == size  # nothing appended


def test_incr_int64_bounds_are_accepted(cdb):
    cdb.put(b"max", str(INT64_MAX - 1).encode())
    assert cdb.incr(b"max") == INT64_MAX
    cdb.put(b"min", str(INT64_MIN + 1).encode())
    assert cdb.incr(b"min", -1) == INT64_MIN
    assert cdb.get(b"min") == str(INT64_MIN).encode()
    assert cdb.incr(b"min", INT64_MAX) == -1


def test_incr_overflow_both_ways_raises_and_changes_nothing(cdb):
    cdb.put(b"hi", str(INT64_MAX).encode())
    cdb.put(b"lo", str(INT64_MIN).encode())
    size = os.path.getsize(newest_segment(cdb.path))
    with pytest.raises(bitkv.NotAnIntegerError):
        cdb.incr(b"hi")
    with pytest.raises(bitkv.NotAnIntegerError):
        cdb.incr(b"hi", INT64_MAX)
    with pytest.raises(bitkv.NotAnIntegerError):
        cdb.incr(b"lo", -1)
    with pytest.raises(bitkv.NotAnIntegerError):
        cdb.incr(b"lo", INT64_MIN)
    # A missing key whose first value would already be out of range is not created.
    with pytest.raises(bitkv.NotAnIntegerError):
        cdb.incr(b"new", INT64_MAX + 1)
    with pytest.raises(bitkv.NotAnIntegerError):
        cdb.incr(b"new2", INT64_MIN - 1, ttl=5)
    assert cdb.get(b"hi") == str(INT64_MAX).encode()
    assert cdb.get(b"lo") == str(INT64_MIN).encode()
    assert b"new" not in cdb and b"new2" not in cdb
    assert os.path.getsize(newest_segment(cdb.path)) == size


@pytest.mark.parametrize("delta", [True, False, 1.0, 0.5, "1", b"1", None, 2**0j])
def test_incr_delta_must_be_int(cdb, delta):
    with pytest.raises(TypeError):
        cdb.incr(b"k", delta)
    assert b"k" not in cdb


def test_incr_survives_reopen(db_path, clock):
    with bitkv.open(db_path, clock=clock) as db:
        for _ in range(10):
            db.incr(b"c")
        db.incr(b"w", 3, ttl=100)
    clock.advance(40)
    with bitkv.open(db_path, clock=clock) as db:
        assert db.get(b"c") == b"10"
        assert db.incr(b"c", 5) == 15
        assert db.incr(b"w") == 4
        assert db.ttl(b"w") == pytest.approx(60.0)
    with bitkv.open(db_path, clock=clock, readonly=True) as db:
        assert db.get(b"c") == b"15"
        with pytest.raises(bitkv.ReadOnlyError):
            db.incr(b"c")


def test_incr_on_closed_store_raises(db_path):
    db = bitkv.open(db_path)
    db.close()
    with pytest.raises(bitkv.ClosedError):
        db.incr(b"c")


def test_incr_threads_lose_no_increment(db_path):
    per_thread = 2000
    with bitkv.open(db_path) as db:
        results: list[list[int]] = [[] for _ in range(THREADS)]

        def work(i: int) -> None:
            out = results[i]
            for _ in range(per_thread):
                out.append(db.incr(b"counter"))

        run_threads(work)
        total = THREADS * per_thread
        assert db.get(b"counter") == str(total).encode()
        # Every return value is distinct: each increment saw a different predecessor.
        seen = [v for out in results for v in out]
        assert sorted(seen) == list(range(1, total + 1))
    with bitkv.open(db_path) as db:
        assert db.get(b"counter") == str(total).encode()


# -- conditional put ---------------------------------------------------------------------------


def test_if_absent(cdb, clock):
    assert cdb.put(b"k", b"1", if_absent=True) is True
    assert cdb.put(b"k", b"2", if_absent=True) is False
    assert cdb.get(b"k") == b"1"
    cdb.put(b"e", b"old", ttl=5)
    clock.advance(5)
    assert cdb.put(b"e", b"new", if_absent=True) is True  # expired counts as absent
    assert cdb.get(b"e") == b"new"
    assert cdb.ttl(b"e") is None  # the old, expired TTL is not carried over
    cdb.delete(b"k")
    assert cdb.put(b"k", b"3", if_absent=True, ttl=7) is True
    assert cdb.ttl(b"k") == pytest.approx(7.0)


def test_if_present(cdb, clock):
    assert cdb.put(b"k", b"1", if_present=True) is False
    assert b"k" not in cdb
    cdb.put(b"k", b"1")
    assert cdb.put(b"k", b"2", if_present=True) is True
    assert cdb.get(b"k") == b"2"
    cdb.put(b"e", b"old", ttl=5)
    clock.advance(5)
    assert cdb.put(b"e", b"new", if_present=True) is False  # expired counts as absent
    assert cdb.get(b"e") is None
    assert b"e" not in cdb


def test_keep_ttl(cdb, clock):
    cdb.put(b"k", b"1", ttl=30)
    clock.advance(10)
    assert cdb.put(b"k", b"2", keep_ttl=True) is True
    assert cdb.get(b"k") == b"2"
    assert cdb.ttl(b"k") == pytest.approx(20.0)
    cdb.put(b"p", b"1")
    assert cdb.put(b"p", b"2", keep_ttl=True) is True
    assert cdb.ttl(b"p") is None
    # keep_ttl on a missing key writes it without a TTL.
    assert cdb.put(b"m", b"1", keep_ttl=True) is True
    assert cdb.ttl(b"m") is None
    # keep_ttl on an expired key must not resurrect the expired TTL (the write would vanish).
    cdb.put(b"e", b"old", ttl=5)
    clock.advance(5)
    assert cdb.put(b"e", b"new", keep_ttl=True) is True
    assert cdb.get(b"e") == b"new"
    assert cdb.ttl(b"e") is None
    # combined with if_present
    assert cdb.put(b"k", b"3", keep_ttl=True, if_present=True) is True
    assert cdb.ttl(b"k") == pytest.approx(15.0)  # 5 s passed since the check above
    assert cdb.put(b"zz", b"3", keep_ttl=True, if_present=True) is False


def test_keep_ttl_survives_reopen(db_path, clock):
    with bitkv.open(db_path, clock=clock) as db:
        db.put(b"k", b"1", ttl=30)
        clock.advance(10)
        db.put(b"k", b"2", keep_ttl=True)
    clock.advance(5)
    with bitkv.open(db_path, clock=clock) as db:
        assert db.get(b"k") == b"2"
        assert db.ttl(b"k") == pytest.approx(15.0)
        clock.advance(15)
        assert db.get(b"k") is None


def test_conditional_put_argument_errors(cdb):
    with pytest.raises(ValueError):
        cdb.put(b"k", b"v", if_absent=True, if_present=True)
    with pytest.raises(ValueError):
        cdb.put(b"k", b"v", keep_ttl=True, ttl=5)
    assert b"k" not in cdb


def test_conditional_put_on_readonly_store(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"k", b"v")
    with bitkv.open(db_path, readonly=True) as db:
        for kwargs in ({"if_absent": True}, {"if_present": True}, {"keep_ttl": True}):
            with pytest.raises(bitkv.ReadOnlyError):
                db.put(b"k", b"w", **kwargs)


def test_if_absent_threads_one_winner(db_path):
    with bitkv.open(db_path) as db:
        for rnd in range(50):
            key = f"lock:{rnd}".encode()
            wins: list[int] = []

            def work(i: int, key=key, wins=wins) -> None:
                if db.put(key, str(i).encode(), if_absent=True):
                    wins.append(i)

            run_threads(work)
            assert len(wins) == 1
            assert db.get(key) == str(wins[0]).encode()


# -- compare_and_set ---------------------------------------------------------------------------


def test_compare_and_set_basics(cdb, clock):
    assert cdb.compare_and_set(b"k", None, b"1") is True  # None: expected absent
    assert cdb.compare_and_set(b"k", None, b"2") is False
    assert cdb.compare_and_set(b"k", b"0", b"2") is False
    assert cdb.get(b"k") == b"1"
    assert cdb.compare_and_set(b"k", b"1", b"2", ttl=10) is True
    assert cdb.get(b"k") == b"2"
    assert cdb.ttl(b"k") == pytest.approx(10.0)
    assert cdb.compare_and_set(b"k", b"2", b"3") is True
    assert cdb.ttl(b"k") is None  # the TTL belongs to the new value: none given, none kept
    assert cdb.compare_and_set(b"missing", b"x", b"y") is False
    assert b"missing" not in cdb
    cdb.put(b"e", b"old", ttl=5)
    clock.advance(5)
    assert cdb.compare_and_set(b"e", b"old", b"new") is False  # expired is absent
    assert cdb.compare_and_set(b"e", None, b"new") is True
    assert cdb.get(b"e") == b"new"
    # bytes-like expected values compare by content
    assert cdb.compare_and_set(b"e", bytearray(b"new"), memoryview(b"newer")) is True
    assert cdb.get(b"e") == b"newer"
    assert cdb.compare_and_set(b"e", b"", b"x") is False
    cdb.put(b"empty", b"")
    assert cdb.compare_and_set(b"empty", None, b"x") is False  # b"" is present, not absent
    assert cdb.compare_and_set(b"empty", b"", b"x") is True


def test_compare_and_set_type_errors(cdb):
    with pytest.raises(TypeError):
        cdb.compare_and_set(b"k", "str", b"v")
    with pytest.raises(TypeError):
        cdb.compare_and_set(b"k", None, 5)
    assert b"k" not in cdb


def test_compare_and_set_threads_one_winner_per_round(db_path):
    rounds = 200
    with bitkv.open(db_path) as db:
        db.put(b"v", b"0")
        round_barrier = threading.Barrier(THREADS)
        wins = [0] * rounds
        lock = threading.Lock()

        def work(i: int) -> None:
            for r in range(rounds):
                round_barrier.wait()
                if db.compare_and_set(b"v", str(r).encode(), str(r + 1).encode()):
                    with lock:
                        wins[r] += 1
                round_barrier.wait()

        run_threads(work)
        assert wins == [1] * rounds
        assert db.get(b"v") == str(rounds).encode()


def test_compare_and_set_retry_loop_counts_exactly(db_path):
    per_thread = 300
    with bitkv.open(db_path) as db:

        def work(i: int) -> None:
            for _ in range(per_thread):
                while True:
                    cur = db.get(b"n")
                    new = str(int(cur or b"0") + 1).encode()
                    if db.compare_and_set(b"n", cur, new):
                        break

        run_threads(work)
        assert db.get(b"n") == str(THREADS * per_thread).encode()


# -- get_and_delete / pop / setdefault / get_with_ttl ------------------------------------------


def test_get_and_delete_and_pop(cdb, clock):
    cdb.put(b"a", b"1")
    assert cdb.get_and_delete(b"a") == b"1"
    assert cdb.get_and_delete(b"a") is None
    assert b"a" not in cdb
    cdb.put(b"b", b"2")
    assert cdb.pop(b"b") == b"2"
    assert cdb.pop(b"b", b"dflt") == b"dflt"
    assert cdb.pop(b"b", None) is None
    with pytest.raises(KeyError):
        cdb.pop(b"b")
    cdb.put(b"e", b"3", ttl=1)
    clock.advance(1)
    assert cdb.get_and_delete(b"e") is None  # expired: nothing to return
    cdb.put(b"empty", b"")
    assert cdb.pop(b"empty") == b""  # an empty value is a value
    assert b"empty" not in cdb


def test_get_and_delete_is_durable(db_path):
    with bitkv.open(db_path) as db:
        db.put(b"a", b"1")
        db.put(b"b", b"2")
        assert db.get_and_delete(b"a") == b"1"
    with bitkv.open(db_path) as db:
        assert db.get(b"a") is None
        assert db.get(b"b") == b"2"


def test_get_and_delete_threads_each_value_once(db_path):
    n = 4000
    with bitkv.open(db_path) as db:
        with db.batch() as b:
            for i in range(n):
                b.put(f"job:{i}".encode(), f"payload-{i}".encode())
        got: list[list[bytes]] = [[] for _ in range(THREADS)]

        def work(i: int) -> None:
            out = got[i]
            keys = [f"job:{j}".encode() for j in range(n)]
            if i % 2:
                keys.reverse()
            for k in keys:
                if i % 3 == 0:
                    v = db.pop(k, None)
                else:
                    v = db.get_and_delete(k)
                if v is not None:
                    out.append(v)

        run_threads(work)
        counts = Counter(v for out in got for v in out)
        assert len(counts) == n
        assert set(counts.values()) == {1}
        assert len(db) == 0
    with bitkv.open(db_path) as db:
        assert len(db) == 0


def test_setdefault(cdb):
    assert cdb.setdefault(b"k", b"first") == b"first"
    assert cdb.setdefault(b"k", b"second") == b"first"
    assert cdb.setdefault(b"e") == b""
    assert cdb.get(b"e") == b""


def test_setdefault_threads_agree(db_path):
    with bitkv.open(db_path) as db:
        seen: list[bytes] = []

        def work(i: int) -> None:
            seen.append(db.setdefault(b"k", str(i).encode()))

        run_threads(work)
        assert len(set(seen)) == 1
        assert db.get(b"k") == seen[0]


def test_get_with_ttl(cdb, clock):
    assert cdb.get_with_ttl(b"none") is None
    cdb.put(b"p", b"v")
    assert cdb.get_with_ttl(b"p") == (b"v", None)
    cdb.put(b"t", b"w", ttl=10)
    value, left = cdb.get_with_ttl(b"t")
    assert value == b"w"
    assert left == pytest.approx(10.0)
    clock.advance(9.5)
    assert cdb.get_with_ttl("t") == (b"w", pytest.approx(0.5))
    clock.advance(0.5)
    assert cdb.get_with_ttl(b"t") is None


def test_get_with_ttl_consistent_under_concurrent_writes(db_path):
    """Value and TTL always come from the same record."""
    with bitkv.open(db_path) as db:
        db.put(b"k", b"short", ttl=1000)
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                if i % 2:
                    db.put(b"k", b"short", ttl=1000)
                else:
                    db.put(b"k", b"forever")
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            for _ in range(5000):
                got = db.get_with_ttl(b"k")
                assert got is not None
                value, left = got
                if value == b"forever":
                    assert left is None
                else:
                    assert value == b"short" and left is not None and 0 < left <= 1000
        finally:
            stop.set()
            t.join()
