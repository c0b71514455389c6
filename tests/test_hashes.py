"""The hash commands of issue 17 (HSET ... HSCAN) against a real `bitkv serve` process, each
reply and error text compared with a real redis-server 7.0's; a restart keeps values and
order."""

from __future__ import annotations

from typing import Any

import pytest
from procs import BitkvProcess, free_port, needs_redis, redis
from redis_compare import replies, reset


@pytest.fixture
def r(bitkv_server):
    client = bitkv_server.client()
    reset(client, ["h", "h2", "s", "gone"])
    yield client
    client.close()


SCRIPTS: dict[str, list[tuple[Any, ...]]] = {
    "hset_hget_hdel": [
        ("HSET", "h", "a", "1", "b", "2", "a", "3"), ("HGET", "h", "a"), ("HLEN", "h"),
        ("HSET", "h", "a"), ("HSET", "h"), ("HMSET", "h", "c", "4"), ("HMSET", "h", "c"),
        ("HSETNX", "h", "a", "9"), ("HSETNX", "h", "n", "9"), ("HGET", "h", "n"),
        ("HGET", "h", "zz"), ("HGET", "nokey", "a"), ("HMGET", "h", "a", "zz", "b"),
        ("HMGET", "nokey", "a", "b"), ("HGETALL", "h"), ("HKEYS", "h"), ("HVALS", "h"),
        ("HEXISTS", "h", "a"), ("HEXISTS", "h", "zz"), ("HSTRLEN", "h", "a"),
        ("HSTRLEN", "h", "zz"), ("HDEL", "h", "a", "a", "zz"), ("HDEL", "nokey", "a"),
        ("HDEL", "h", "b", "c", "n"), ("EXISTS", "h"), ("HGETALL", "h"), ("HLEN", "h"),
        ("HKEYS", "nokey"), ("TYPE", "h"), ("HSET", "h", "", ""), ("HGET", "h", ""),
    ],
    "wrongtype": [
        ("SET", "s", "x"), ("HSET", "s", "a", "1"), ("HGET", "s", "a"), ("HMGET", "s", "a"),
        ("HDEL", "s", "a"), ("HLEN", "s"), ("HGETALL", "s"), ("HINCRBY", "s", "a", "1"),
        ("HRANDFIELD", "s"), ("HSCAN", "s", "0"), ("SADD", "set", "m"),
        ("HSET", "set", "a", "1"), ("HEXISTS", "set", "a"), ("GET", "s"),
    ],
    "hincrby": [
        ("HINCRBY", "h", "n", "5"), ("HINCRBY", "h", "n", "-7"), ("HSET", "h", "s", " 1"),
        ("HINCRBY", "h", "s", "1"), ("HINCRBY", "h", "n", "x"),
        ("HSET", "h", "big", "9223372036854775806"), ("HINCRBY", "h", "big", "1"),
        ("HINCRBY", "h", "big", "1"), ("HSET", "h", "neg", "-9223372036854775807"),
        ("HINCRBY", "h", "neg", "-2"), ("HINCRBY", "h", "n", "9223372036854775808"),
        ("HGETALL", "h"),
    ],
    "hincrbyfloat": [
        ("HINCRBYFLOAT", "h", "f", "10.5"), ("HINCRBYFLOAT", "h", "f", "0.25"),
        ("HINCRBYFLOAT", "h", "f", "-5e3"), ("HINCRBYFLOAT", "h", "f", "abc"),
        ("HINCRBYFLOAT", "h", "f", "inf"), ("HSET", "h", "s", "1 "),
        ("HINCRBYFLOAT", "h", "s", "1"), ("HSET", "h", "z", "1\x002"),
        ("HINCRBYFLOAT", "h", "z", "1"), ("HINCRBY", "h", "i", "3"),
        ("HINCRBYFLOAT", "h", "i", "1.25"), ("HSET", "h", "e", "1.5e3"),
        ("HINCRBYFLOAT", "h", "e", "1"), ("HGETALL", "h"),
    ],
    "hrandfield": [
        ("HRANDFIELD", "nokey"), ("HRANDFIELD", "nokey", "5"), ("HSET", "h", "a", "1"),
        ("HRANDFIELD", "h"), ("HRANDFIELD", "h", "0"), ("HRANDFIELD", "h", "-3"),
        ("HRANDFIELD", "h", "-2", "WITHVALUES"), ("HRANDFIELD", "h", "5", "withvalues"),
        ("HRANDFIELD", "h", "1", "bogus"), ("HRANDFIELD", "h", "1", "withvalues", "x"),
        ("HRANDFIELD", "h", "x"), ("HRANDFIELD", "h", "-9223372036854775808"),
        ("HRANDFIELD", "h", "-9223372036854770000", "withvalues"),
        ("HSET", "h", "b", "2", "c", "3"), ("SORT", "HRANDFIELD", "h", "10"),
        ("SORT", "HRANDFIELD", "h", "3", "WITHVALUES"),
    ],
    "config_aliases": [  # one parameter under two names, as Redis (ends at the default)
        ("CONFIG", "SET", "hash-max-ziplist-value", "10"),
        ("CONFIG", "GET", "hash-max-listpack-value"),
        ("CONFIG", "SET", "hash-max-listpack-value", "64"),
        ("CONFIG", "GET", "hash-max-ziplist-value"),
    ],
    "hscan_errors": [
        ("HSET", "h", "a", "1", "b", "2"), ("HSCAN", "h", "x"), ("HSCAN", "h", "-1"),
        ("HSCAN", "h", "0", "COUNT", "0"), ("HSCAN", "h", "0", "COUNT"),
        ("HSCAN", "h", "0", "NOVALUES"), ("HSCAN", "h", "0", "COUNT", "x"),
        ("HSCAN", "nokey", "0"), ("HSCAN", "h", "0", "MATCH", "a*"),
        ("HSCAN", "h", "0", "COUNT", "1"),
    ],
}


@needs_redis
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_replies_are_redis_7_replies(name, bitkv_server, redis_server):
    bk, rd = bitkv_server.client(), redis_server.client()
    try:
        assert replies(bk, SCRIPTS[name]) == replies(rd, SCRIPTS[name])
    finally:
        bk.close()
        rd.close()


@needs_redis
def test_resp3_replies_are_redis_7_replies(bitkv_server, redis_server):
    script = [("HSET", "h", "a", "1"), ("HGETALL", "h"), ("HGETALL", "nokey"),
              ("HRANDFIELD", "h", "2", "WITHVALUES"), ("HRANDFIELD", "h", "-2", "WITHVALUES"),
              ("HINCRBYFLOAT", "h", "a", "0.5")]
    got = []
    for srv in (bitkv_server, redis_server):
        client = redis.Redis(port=srv.port, protocol=3)
        try:
            got.append(replies(client, script))
        finally:
            client.close()
    assert got[0] == got[1]


def test_hrandfield_negative_count_repeats_and_covers(r):
    r.hset("h", mapping={f"f{i}": str(i) for i in range(5)})
    fields = r.hrandfield("h", -200)
    assert len(fields) == 200 and set(fields) == {b"f%d" % i for i in range(5)}
    pairs = r.hrandfield("h", -50, withvalues=True)
    assert len(pairs) == 100
    assert all(pairs[i + 1] == pairs[i][1:] for i in range(0, 100, 2))
    assert sorted(r.hrandfield("h", 3)) != [] and len(set(r.hrandfield("h", 4))) == 4


def test_hscan_of_a_big_hash_returns_every_field_once_under_writes(r):
    n = 1500  # over hash-max-listpack-entries (512): the cursor walks the crc order
    r.hset("h", mapping={f"f{i}": str(i) for i in range(n)})
    seen: list[bytes] = []
    cursor, steps = 0, 0
    while True:
        cursor, page = r.hscan("h", cursor, count=50)
        seen.extend(page)
        for k, v in page.items():
            assert v == k[1:]
        steps += 1
        # writes during the scan: new fields (may or may not show), deletes of returned ones
        r.hset("h", f"new{steps}", "x")
        if page:
            r.hdel("h", next(iter(page)))
        if cursor == 0:
            break
    original = [b"f%d" % i for i in range(n)]
    assert set(original) <= set(seen)
    assert len([f for f in seen if f.startswith(b"f")]) == n  # no field twice
    assert 10 < steps < 200  # paged, not all at once
    assert r.hscan("h", 0, match="f1*", count=5000)[1].keys() == {
        k for k in r.hkeys("h") if k.startswith(b"f1")}


def test_writes_are_atomic_and_survive_a_restart(tmp_path):
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        r = srv.client()
        r.hset("h", mapping={"z": "1", "a": "2", "m": "3"})
        r.hdel("h", "a")
        r.hset("h", "a", "4")
        r.hincrbyfloat("h", "f", "1.5")
        r.hset("gone", "x", "1")
        r.hdel("gone", "x")
        r.close()
    finally:
        srv.stop()
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        r = srv.client()
        assert r.hgetall("h") == {b"z": b"1", b"m": b"3", b"a": b"4", b"f": b"1.5"}
        assert list(r.hkeys("h")) == [b"z", b"m", b"a", b"f"]  # insertion order kept
        assert r.exists("gone") == 0
        r.close()
    finally:
        srv.stop()


def test_field_too_long_for_the_store_is_refused_and_nothing_written(r):
    r.hset("h", "a", "1")
    with pytest.raises(redis.ResponseError, match="key limit"):
        r.hset("h", mapping={"b": "2", "x" * 70_000: "3"})
    assert r.hgetall("h") == {b"a": b"1"}


def test_memory_usage_answers_for_hashes_and_missing_keys(r):
    r.hset("h", mapping={f"f{i}": "v" * 10 for i in range(100)})
    assert r.memory_usage("h") > 100 * 12
    assert r.memory_usage("nokey") is None
    r.set("s", "abc")
    assert r.memory_usage("s") > 3
    assert r.memory_usage("h", samples=0) > 100 * 12  # 0: every value read, as Redis
    assert b"USAGE <key> [SAMPLES <count>]" in r.execute_command("MEMORY", "HELP")
    with pytest.raises(redis.ResponseError, match="Try MEMORY HELP"):
        r.execute_command("MEMORY", "DOCTOR")
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("MEMORY", "USAGE", "h", "SAMPLES")


def test_object_encoding_rule_follows_the_tuning_parameters():
    from bitkv.server.commands import tuning
    from bitkv.server.commands.encodings import encoding_of
    from bitkv.structures import HashIndex

    class Control:
        pass

    control: Any = Control()
    h = HashIndex(b"h")
    for i in range(3):
        h.on_put(b"f%d" % i, b"")
    assert encoding_of(control, h) == "listpack"
    tuning.record(control, {"hash-max-ziplist-entries": "2"})  # the alias counts too
    assert tuning.values(control)["hash-max-listpack-entries"] == "2"
    assert encoding_of(control, h) == "hashtable"
    tuning.record(control, {"hash-max-listpack-entries": "512"})
    assert tuning.values(control)["hash-max-ziplist-entries"] == "512"
    assert encoding_of(control, h) == "hashtable"  # sticky, as Redis while it runs
    long_field = HashIndex(b"h2")
    long_field.on_put(b"x" * 65, b"")
    assert encoding_of(control, long_field) == "hashtable"
