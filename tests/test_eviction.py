"""Cache mode (issue 15): a bound on live bytes kept by Redis's eviction policies.

The server side (``bitkv serve --max-bytes``, CONFIG SET maxmemory, INFO) is in
test_eviction_server.py; docs/cache.md describes what is tested here.
"""

from __future__ import annotations

import collections
import json
import os
import random

import pytest
from click.testing import CliRunner
from conftest import FakeClock

import bitkv
from bitkv import eviction, settings
from bitkv.record import HEADER_SIZE
from bitkv_cli.main import cli

EVICTING = [p for p in eviction.POLICIES if p != "noeviction"]


@pytest.fixture
def db_path(fast_db_path: str) -> str:
    return fast_db_path  # on tmpfs where there is one: these tests write a lot


def _record(key: bytes, value: bytes) -> int:
    return HEADER_SIZE + len(key) + len(value)


def _open(path: str, **kwargs: object) -> bitkv.Store:
    kwargs.setdefault("sync", "never")
    return bitkv.open(path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", EVICTING)
def test_live_bytes_stay_within_the_bound_under_sustained_writes(db_path, policy):
    bound = 20_000
    rng = random.Random(7)
    volatile = policy.startswith("volatile-")
    with _open(db_path, max_bytes=bound, eviction=policy) as db:
        for i in range(1500):
            key = b"k%d" % rng.randrange(3000)  # overwrites too
            value = os.urandom(rng.randrange(0, 300))
            ttl = 1000 + rng.randrange(1000) if volatile else None
            db.put(key, value, ttl=ttl)
            if i % 3 == 0:
                db.get(b"k%d" % rng.randrange(3000))
            live = db.stats()["live_bytes"]
            assert live <= bound, (i, live)
        with db.batch() as batch:  # an atomic batch makes room for all of it
            for i in range(20):
                batch.put(b"b%d" % i, b"v" * 200, ttl=1000 if volatile else None)
        assert db.stats()["live_bytes"] <= bound
        assert all(db.get(b"b%d" % i) == b"v" * 200 for i in range(20))
        stats = db.stats()
        assert stats["evicted_keys"] > 1000
        assert stats["max_bytes"] == bound and stats["eviction"] == policy
        assert bound - stats["live_bytes"] < 400  # it evicts only what it must


def test_noeviction_refuses_writes_when_full_and_loses_nothing(db_path):
    bound = 5000
    value = b"x" * 100
    with _open(db_path, max_bytes=bound, eviction="noeviction") as db:
        stored = {}
        with pytest.raises(bitkv.StoreFullError, match="noeviction"):
            for i in range(1000):
                db.put(b"k%03d" % i, value)
                stored[b"k%03d" % i] = value
        full = db.stats()
        assert full["live_bytes"] <= bound
        assert bound - full["live_bytes"] < _record(b"k000", value)
        assert full["evicted_keys"] == 0
        refused = b"k%03d" % len(stored)
        assert db.get(refused) is None
        with pytest.raises(bitkv.StoreFullError):  # every kind of write is refused
            db.compare_and_set(b"cas", None, value)
        with pytest.raises(bitkv.StoreFullError), db.batch() as batch:
            batch.put(b"a", b"1")
            batch.put(b"b", value)
        assert db.get(b"a") is None and db.get(b"b") is None  # the batch is all or nothing
        # An overwrite that does not grow fits; a delete makes room.
        assert db.put(b"k000", b"y" * 100)
        stored[b"k000"] = b"y" * 100
        assert db.delete(b"k001")
        del stored[b"k001"]
        assert db.put(refused, value)
        stored[refused] = value
        assert dict(db.items()) == stored
    with _open(db_path) as db:  # and a restart keeps all of it, and the bound
        assert dict(db.items()) == stored
        assert (db.max_bytes, db.eviction) == (bound, "noeviction")
        with pytest.raises(bitkv.StoreFullError):
            db.put(b"new", value)


def test_a_record_larger_than_the_bound_is_refused_whatever_the_policy(db_path):
    with _open(db_path, max_bytes=1000, eviction="allkeys-lru") as db:
        db.put(b"a", b"1")
        with pytest.raises(bitkv.StoreFullError, match="cannot fit"):
            db.put(b"big", b"x" * 1000)
        assert db.get(b"a") == b"1" and db.stats()["evicted_keys"] == 0


def _fifo_hit_rate() -> float:
    """The workload of _hot_set_hit_rate against a FIFO of the same size (simulated): what a
    cache that evicts its oldest writes first, as an unbounded log reclaims, would do."""
    rng = random.Random(3)
    fifo: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def insert(key: bytes) -> None:
        fifo[key] = None
        if len(fifo) > 200:
            fifo.popitem(last=False)

    hits = reads = 0
    for step in range(3000):
        for _ in range(4):
            key = b"hot:%d" % rng.randrange(100)
            reads += 1
            if key in fifo:
                hits += 1
            else:
                insert(key)
        insert(b"scan:%06d" % step)
    return hits / reads


def _hot_set_hit_rate(path: str, policy: str) -> float:
    """Cache-aside reads of a hot set of 100 keys, four per write of a key that is never
    read again (a scan): the bound holds twice the hot set."""
    rng = random.Random(3)
    value = b"v" * 100
    hot = [b"hot:%d" % i for i in range(100)]
    hits = reads = 0
    with _open(path, max_bytes=200 * _record(b"hot:00", value), eviction=policy) as db:
        for step in range(3000):
            for _ in range(4):
                key = hot[rng.randrange(len(hot))]
                reads += 1
                if db.get(key) is not None:
                    hits += 1
                else:
                    db.put(key, value)
            db.put(b"scan:%06d" % step, value)
    return hits / reads


def test_lru_and_lfu_keep_a_hot_set_that_random_eviction_loses(fast_tmp):
    """A FIFO (an unbounded log's oldest-first reclaim) evicts each hot key once the scan
    has written the cache's size after it, however often it is read; LRU and LFU keep the
    hot set, and beat FIFO and random eviction clearly."""
    rates = {p: _hot_set_hit_rate(str(fast_tmp / p), p)
             for p in ("allkeys-lru", "allkeys-lfu", "allkeys-random")}
    rates["fifo"] = _fifo_hit_rate()
    # Measured (5 runs): LRU 0.96-0.97, LFU 0.99, random 0.81-0.83, FIFO 0.82. Exact LRU
    # would miss too, when a hot key goes unread for longer than the cache's turnover.
    assert rates["allkeys-lru"] > 0.93, rates
    assert rates["allkeys-lfu"] > 0.95, rates
    assert rates["allkeys-random"] < rates["allkeys-lru"] - 0.08, rates
    assert rates["fifo"] < rates["allkeys-lru"] - 0.08, rates


def test_volatile_policies_evict_only_keys_with_a_ttl(db_path):
    with _open(db_path, max_bytes=5000, eviction="volatile-lru") as db:
        for i in range(20):
            db.put(b"keep%02d" % i, b"x" * 100)
        for i in range(200):
            db.put(b"tmp%03d" % i, b"x" * 100, ttl=3600)
        assert all(db.get(b"keep%02d" % i) == b"x" * 100 for i in range(20))
        assert db.stats()["evicted_keys"] > 0
        for i in range(200):
            db.delete(b"tmp%03d" % i)
        with pytest.raises(bitkv.StoreFullError, match="volatile-lru finds no key"):
            for i in range(100):
                db.put(b"more%02d" % i, b"x" * 100)
        assert all(db.get(b"keep%02d" % i) == b"x" * 100 for i in range(20))


def test_volatile_ttl_evicts_the_keys_that_expire_soonest(db_path):
    value = b"x" * 100
    with _open(db_path, max_bytes=40 * _record(b"k00", value), eviction="volatile-ttl") as db:
        for i in range(40):  # k00 expires first, k39 last
            db.put(b"k%02d" % i, value, ttl=1000 + i)
        for i in range(10):
            db.put(b"n%02d" % i, value, ttl=5000)
        left = {int(k[1:]) for k in db if k.startswith(b"k")}
        # Sampling makes it approximate: the survivors are mostly the late expiries.
        assert len(left) == 30
        assert sum(left) / len(left) > 22


def test_expired_keys_go_before_live_ones_and_are_not_counted_as_evicted(db_path):
    clock = FakeClock()
    value = b"x" * 100
    with _open(db_path, max_bytes=20 * _record(b"k00", value), eviction="allkeys-lru",
               clock=clock, auto_compact=False) as db:
        for i in range(10):
            db.put(b"e%02d" % i, value, ttl=1)
        for i in range(10):
            db.put(b"k%02d" % i, value)
        clock.advance(2)
        for i in range(10, 15):
            db.put(b"k%02d" % i, value)
        assert db.stats()["evicted_keys"] == 0
        assert all(db.get(b"k%02d" % i) == value for i in range(15))


def test_lfu_counts_decay_with_idle_minutes():
    rng = random.Random(1)
    stamp = (0 << 8) | eviction.LFU_INIT
    for _ in range(1000):
        stamp = eviction.lfu_touch(stamp, 0, rng)
    counter = eviction.lfu_counter(stamp, 0)
    assert eviction.LFU_INIT < counter < 40  # logarithmic: 1000 reads are not 1000 counts
    assert eviction.lfu_counter(stamp, 5) == counter - 5
    assert eviction.lfu_counter(stamp, 10_000) == 0


def test_a_restart_keeps_the_bound_the_policy_and_the_data(db_path):
    with _open(db_path, max_bytes=10_000, eviction="allkeys-lfu") as db:
        for i in range(500):
            db.put(b"k%03d" % i, b"x" * 50)
        before = dict(db.items())
    assert 0 < len(before) < 500
    with _open(db_path) as db:  # nothing named: as recorded
        assert (db.max_bytes, db.eviction) == (10_000, "allkeys-lfu")
        assert dict(db.items()) == before  # evicted keys stay gone (their tombstones)
        for i in range(500, 1000):
            db.put(b"k%03d" % i, b"x" * 50)
        assert db.stats()["live_bytes"] <= 10_000
    with _open(db_path, readonly=True) as reader:  # a reader reports the bound, never evicts
        assert reader.max_bytes == 10_000
    with _open(db_path, eviction="allkeys-random") as db:  # an explicit choice is recorded
        assert (db.max_bytes, db.eviction) == (10_000, "allkeys-random")
    with _open(db_path, max_bytes=0) as db:  # 0 removes the bound
        assert db.max_bytes == 0
        for i in range(1000, 1500):
            db.put(b"k%03d" % i, b"x" * 50)
        assert db.stats()["live_bytes"] > 10_000


def test_set_max_bytes_evicts_at_once_and_is_recorded(db_path):
    with _open(db_path) as db:
        for i in range(200):
            db.put(b"k%03d" % i, b"x" * 100)
        db.set_max_bytes(5000, "allkeys-lru")
        assert db.stats()["live_bytes"] <= 5000
        assert db.evicted_keys > 100
        db.set_max_bytes(2000)  # the policy stays
        assert db.stats()["live_bytes"] <= 2000 and db.eviction == "allkeys-lru"
        db.set_max_bytes(1000, "noeviction")  # noeviction never evicts: writes fail
        live = db.stats()["live_bytes"]
        assert live > 1000
        with pytest.raises(bitkv.StoreFullError):
            db.put(b"new", b"x")
        assert db.stats()["live_bytes"] == live
        with pytest.raises(ValueError, match="eviction must be one of"):
            db.set_max_bytes(1000, "allkeys-fifo")
        with pytest.raises(ValueError, match="max_bytes must be"):
            db.set_max_bytes(-1)
        db.set_max_bytes(0)
        db.put(b"new", b"x")
    with _open(db_path) as db:
        assert (db.max_bytes, db.eviction) == (0, "noeviction")
    with _open(db_path, readonly=True) as reader, pytest.raises(bitkv.ReadOnlyError):
        reader.set_max_bytes(10)


def test_bad_settings_are_refused_before_anything_is_written(db_path):
    with pytest.raises(ValueError, match="eviction must be one of"):
        bitkv.open(db_path, max_bytes=10, eviction="lru")
    with pytest.raises(TypeError, match="max_bytes must be an int"):
        bitkv.open(db_path, max_bytes="2gb")  # type: ignore[arg-type]
    assert not os.path.exists(db_path)


def test_parse_bytes_reads_redis_sizes():
    assert eviction.parse_bytes("2gb") == 2 * 1024**3
    assert eviction.parse_bytes("100MB") == 100 * 1024**2
    assert eviction.parse_bytes("1k") == 1000
    assert eviction.parse_bytes("12345") == 12345
    for bad in ("", "gb", "-1", "1.5gb", "2tb", "1 gb x"):
        with pytest.raises(ValueError, match="not a size"):
            eviction.parse_bytes(bad)


def test_the_settings_file_records_the_bound(db_path):
    bitkv.open(db_path, max_bytes=123456, eviction="volatile-ttl").close()
    with open(os.path.join(db_path, "SETTINGS"), "rb") as fh:
        recorded = settings.decode(fh.read(), "SETTINGS")
    assert recorded.bound == settings.Bound(123456, "volatile-ttl")


DISK_FACTOR = 6  # docs/cache.md, "The disk bound": measured 3.5-4.5 at full write speed


def test_the_bounds_hold_while_compaction_runs(db_path):
    """A cache written at full speed with 10x its bound in new keys: live bytes stay within
    the bound, and near it, also while background compactions switch their outputs in (the
    inputs still hold the keys not switched yet: counting them twice would evict a good part
    of the cache at every compaction, not counting them would let it pass the bound), and
    the disk within DISK_FACTOR of the bound."""
    bound = 4 << 20
    value = os.urandom(2000)
    record = _record(b"key:000000", value)
    peak_disk = 0
    with _open(db_path, max_bytes=bound, eviction="allkeys-lru") as db:
        for i in range(10 * bound // record):
            db.put(b"key:%06d" % i, value)
            if i % 2 == 0:
                stats = db.stats()
                assert stats["live_bytes"] <= bound, i
                if i > bound // record:
                    assert stats["live_bytes"] > bound - 2 * record, i
                peak_disk = max(peak_disk, stats["disk_bytes"])
        assert db.last_compaction is not None
    assert peak_disk <= DISK_FACTOR * bound


def test_rebuilding_the_key_pool_keeps_the_read_stamps(db_path):
    """The pool is rebuilt in place when deleted keys outnumber live ones: the get wrapper
    still stamps the same containers afterwards."""
    value = b"x" * 100
    with _open(db_path, max_bytes=100 * _record(b"k0000", value), eviction="allkeys-lru") as db:
        for i in range(3000):  # 3000 keys in the pool, then all but the last 50 deleted
            db.put(b"d%04d" % i, b"")
        for i in range(2950):
            db.delete(b"d%04d" % i)
        db.put(b"hot", value)  # this write rebuilds the pool
        for i in range(500):
            assert db.get(b"hot") == value, i  # read before each write: never the LRU key
            db.put(b"k%04d" % i, value)


def test_bitkv_stats_shows_the_bound(db_path):
    bitkv.open(db_path, max_bytes=2 * 2**30, eviction="allkeys-lfu").close()
    text = CliRunner().invoke(cli, ["--dir", db_path, "stats"]).stdout
    assert "cache bound      2147483648 (" in text and "eviction allkeys-lfu" in text
    data = json.loads(CliRunner().invoke(cli, ["--dir", db_path, "stats", "--json"]).stdout)
    assert (data["max_bytes"], data["eviction"]) == (2 * 2**30, "allkeys-lfu")


def test_a_replicas_store_leaves_eviction_to_its_master(db_path):
    """hold_expired marks a replica's store: writes apply whatever the bound (as Redis's
    replica-ignore-maxmemory), until the store is a master's again."""
    value = b"x" * 100
    with _open(db_path, max_bytes=10 * _record(b"k00", value), eviction="allkeys-lru",
               hold_expired=True) as db:
        for i in range(30):
            db.put(b"k%02d" % i, value)
        with db.batch() as batch:
            batch.put(b"b", value)
        assert len(db) == 31 and db.evicted_keys == 0
        db.hold_expired = False  # promoted
        db.put(b"new", value)
        assert db.stats()["live_bytes"] <= 10 * _record(b"k00", value)
        assert db.evicted_keys == 22
