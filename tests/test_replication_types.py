"""Hashes, sets, lists and sorted sets in a full resync (issue 17), both ways, with real Redis.

* bitkv master -> Redis 7.0 replica: the snapshot (``master.write_snapshot``) holds the
  collections, not their internal records; Redis shows the same contents and TTLs.
* Redis 7.0 master -> bitkv replica: the load (``replica._load``) writes the collections'
  records; the replica's index is rebuilt, and the store opened afterwards holds the master's
  contents.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from procs import BitkvProcess, RedisProcess, caught_up, needs_redis, wait_until

import bitkv
from bitkv.structures import HashIndex, ListIndex, SetIndex, Structures, ZSetIndex
from bitkv.structures.encoding import pack_position, pack_score

redis = pytest.importorskip("redis")

BIG = bytes(range(256)) * 400  # over the RDB writer's 64 KiB chunk
HASH = {b"f": b"1", b"": b"empty field", b"bin\x00": bytes(range(256)), b"big": BIG,
        b"-7": b"007"}
SET = [b"a", b"", b"-5", b"300", b"x" * 100]
LIST = [b"head", b"", b"2", b"head", BIG, b"tail"]
ZSET = {b"a": 1.5, b"b": -2.0, b"inf": float("inf"), b"-inf": float("-inf"), b"": 0.0}


def redis_view(c: redis.Redis) -> dict[bytes, tuple[str, object, int]]:
    """Every key: (type, contents, PEXPIRETIME or -1)."""
    out: dict[bytes, tuple[str, object, int]] = {}
    for key in c.scan_iter(count=1000):
        kind = c.type(key).decode()
        contents: object
        if kind == "string":
            contents = c.get(key)
        elif kind == "hash":
            contents = c.hgetall(key)
        elif kind == "set":
            contents = c.smembers(key)
        elif kind == "list":
            contents = c.lrange(key, 0, -1)
        else:
            contents = dict(c.zrange(key, 0, -1, withscores=True))
        out[key] = (kind, contents, c.execute_command("PEXPIRETIME", key))
    return out


def store_view(path: Path) -> dict[bytes, tuple[str, object, int]]:
    """The same view of a stopped bitkv's store, read through bitkv.structures."""
    out: dict[bytes, tuple[str, object, int]] = {}
    with bitkv.open(str(path), readonly=True) as db:
        structures = Structures(db)
        names = structures.keys()  # (a list: Structures has no __iter__)
        for key in names:
            c = structures.collection(key)
            assert c is not None
            values = structures.read_many(c, list(c.subs()))
            contents: object
            if isinstance(c, HashIndex):
                contents = dict(zip(c.subs(), values, strict=True))
            elif isinstance(c, SetIndex):
                contents = set(c.subs())
            elif isinstance(c, ListIndex):
                contents = values
            else:
                assert isinstance(c, ZSetIndex)
                contents = dict(c.scores)
            out[key] = (c.NAME, contents, c.expire_ms or -1)
        for key, value, expiry in db.items_with_expiry():
            if not bitkv.structures.is_internal(key):
                out[key] = ("string", value, expiry or -1)
    return out


@needs_redis
def test_redis_replica_of_a_bitkv_master_gets_its_collections(tmp_path: Path) -> None:
    expire = int(time.time() * 1000) + 3_600_000
    with bitkv.open(str(tmp_path / "master")) as db:
        structures = Structures(db)
        with structures.edit(b"hash", HashIndex) as edit:
            for field, value in HASH.items():
                edit.put(field, value)
        with structures.edit(b"set", SetIndex) as edit:
            for member in SET:
                edit.put(member, b"")
        with structures.edit(b"list", ListIndex) as edit:
            for i, item in enumerate(LIST):
                edit.put(pack_position(i - 2), item)
        with structures.edit(b"zset", ZSetIndex) as edit:
            for member, score in ZSET.items():
                edit.put(member, pack_score(score))
        with structures.edit(b"big-set", SetIndex) as edit:
            for i in range(5000):
                edit.put(b"m%d" % i, b"")
        assert structures.expire_at(b"zset", expire)
        with structures.edit(b"gone", SetIndex) as edit:
            edit.put(b"m", b"")
        assert structures.expire_at(b"gone", int(time.time() * 1000) + 1)
        db.put(b"string", b"value")
    time.sleep(0.01)  # "gone" has expired: not in the snapshot
    master = BitkvProcess(tmp_path / "master")
    replica = None
    try:
        m = master.client()
        replica = RedisProcess(tmp_path / "r", None, "--replicaof", "127.0.0.1",
                               str(master.port))
        r = replica.client()
        wait_until(lambda: caught_up(m, r), 30, "the Redis replica's full resync")
        view = redis_view(r)
        assert view == {
            b"hash": ("hash", HASH, -1), b"set": ("set", set(SET), -1),
            b"list": ("list", LIST, -1), b"zset": ("zset", ZSET, expire),
            b"big-set": ("set", {b"m%d" % i for i in range(5000)}, -1),
            b"string": ("string", b"value", -1)}
        assert m.info("stats")["sync_full"] == 1
    finally:
        if replica is not None:
            replica.stop()
        master.stop()


@needs_redis
def test_bitkv_replica_of_a_redis_master_loads_its_collections(tmp_path: Path) -> None:
    master = RedisProcess(tmp_path / "m", None, "--repl-diskless-sync-delay", "0")
    replica = None
    try:
        m = master.client()
        m.config_set("hash-max-listpack-entries", 4)  # both encodings of each type
        m.config_set("zset-max-listpack-entries", 4)
        m.config_set("set-max-intset-entries", 4)
        m.hset(b"hash", mapping=HASH)  # hashtable (BIG is over 64 bytes)
        m.hset(b"hash:small", mapping={b"a": b"1", b"b": b""})  # listpack
        m.sadd(b"set", *SET)
        m.sadd(b"set:ints", 1, 2, 3)  # intset
        m.rpush(b"list", *LIST)
        m.zadd(b"zset", ZSET)  # skiplist
        m.zadd(b"zset:small", {b"x": 1, b"y": 2})  # listpack
        m.set(b"string", b"value")
        m.set(b"\xff\x00bkhfake", b"S\x01")  # a name in bitkv's reserved range: skipped
        m.pexpire(b"set", 3_600_000)
        replica = BitkvProcess(tmp_path / "replica", None, "--replicaof",
                               f"127.0.0.1:{master.port}")
        r = replica.client()
        wait_until(lambda: caught_up(m, r), 30, "the bitkv replica's full resync")
        info = r.info("replication")
        assert info["bitkv_replica_skipped_keys"] == 1
        assert "reserved range" in replica.output()
        for key in (b"hash", b"set", b"list", b"zset"):
            assert r.type(key) == key  # the index was rebuilt after the load
        want = redis_view(m)
        del want[b"\xff\x00bkhfake"]
    finally:
        if replica is not None:
            replica.stop()
        master.stop()
    assert store_view(tmp_path / "replica") == want
