"""The set commands of issue 17 (SADD ... SSCAN) against a real `bitkv serve` process, each
reply and error text compared with a real redis-server 7.0's; the *STORE commands and SMOVE
write in one batch; a restart keeps the members."""

from __future__ import annotations

from typing import Any

import pytest
from procs import BitkvProcess, free_port, needs_redis, redis
from redis_compare import replies, reset


@pytest.fixture
def r(bitkv_server):
    client = bitkv_server.client()
    reset(client, ["s", "t", "u", "d", "big"])
    yield client
    client.close()


SCRIPTS: dict[str, list[tuple[Any, ...]]] = {
    "basics": [
        ("SADD", "s", "a", "b", "a", "1"), ("SADD", "s", "b"), ("SCARD", "s"),
        ("SISMEMBER", "s", "a"), ("SISMEMBER", "s", "zz"), ("SISMEMBER", "nokey", "a"),
        ("SMISMEMBER", "s", "a", "zz", "1"), ("SMISMEMBER", "nokey", "a"),
        ("SMISMEMBER", "s"), ("SORT", "SMEMBERS", "s"), ("SMEMBERS", "nokey"),
        ("SREM", "s", "a", "a", "zz"), ("SREM", "nokey", "a"), ("SREM", "s", "b", "1"),
        ("EXISTS", "s"), ("SCARD", "s"), ("SADD", "s"), ("TYPE", "s"),
        ("SADD", "s", ""), ("SISMEMBER", "s", ""),
    ],
    "wrongtype": [
        ("SET", "str", "x"), ("SADD", "str", "a"), ("SREM", "str", "a"), ("SCARD", "str"),
        ("SMEMBERS", "str"), ("SPOP", "str"), ("SRANDMEMBER", "str"), ("SSCAN", "str", "0"),
        ("HSET", "h", "f", "v"), ("SISMEMBER", "h", "f"), ("SMISMEMBER", "h", "f"),
        ("SADD", "s", "a"), ("SINTER", "s", "str"), ("SINTER", "nokey", "str"),
        ("SUNION", "s", "h"), ("SDIFF", "s", "nokey", "str"), ("SINTERCARD", "2", "nokey", "h"),
        ("SINTERSTORE", "d", "nokey", "str"), ("EXISTS", "d"), ("SMOVE", "s", "str", "a"),
        ("SMOVE", "nokey", "str", "a"), ("SMOVE", "str", "s", "a"), ("SCARD", "s"),
    ],
    "algebra": [
        ("SADD", "s", "1", "2", "3", "a"), ("SADD", "t", "2", "3", "4"), ("SADD", "u", "3", "x"),
        ("SORT", "SINTER", "s", "t"), ("SORT", "SINTER", "s", "t", "u"),
        ("SINTER", "s", "nokey"), ("SORT", "SUNION", "s", "t", "nokey"),
        ("SORT", "SDIFF", "s", "t"), ("SORT", "SDIFF", "s", "t", "u"), ("SDIFF", "nokey", "s"),
        ("SINTERCARD", "2", "s", "t"), ("SINTERCARD", "3", "s", "t", "u", "LIMIT", "1"),
        ("SINTERCARD", "2", "s", "t", "LIMIT", "0"), ("SINTERCARD", "1", "nokey"),
        ("SINTERCARD", "0", "s"), ("SINTERCARD", "a", "s"), ("SINTERCARD", "3", "s", "t"),
        ("SINTERCARD", "1", "s", "t"), ("SINTERCARD", "1", "s", "LIMIT"),
        ("SINTERCARD", "1", "s", "LIMIT", "-1"), ("SINTERCARD", "1", "s", "LIMIT", "x"),
        ("SINTERSTORE", "d", "s", "t"), ("SORT", "SMEMBERS", "d"),
        ("SUNIONSTORE", "d", "s", "u"), ("SORT", "SMEMBERS", "d"),
        ("SDIFFSTORE", "d", "s", "t"), ("SORT", "SMEMBERS", "d"),
        ("SET", "str", "v"), ("SUNIONSTORE", "str", "t"), ("TYPE", "str"),
        ("SINTERSTORE", "d", "s", "nokey"), ("EXISTS", "d"),
        ("SDIFFSTORE", "s", "s", "s"), ("EXISTS", "s"),
    ],
    "spop_srandmember": [
        ("SPOP", "nokey"), ("SPOP", "nokey", "3"), ("SRANDMEMBER", "nokey"),
        ("SRANDMEMBER", "nokey", "3"), ("SADD", "s", "only"), ("SPOP", "s", "0"),
        ("SRANDMEMBER", "s", "0"), ("SRANDMEMBER", "s"), ("SRANDMEMBER", "s", "-3"),
        ("SRANDMEMBER", "s", "5"), ("SRANDMEMBER", "s", "x"),
        ("SRANDMEMBER", "s", "-9223372036854775808"), ("SPOP", "s", "-1"),
        ("SPOP", "s", "x"), ("SPOP", "s", "1", "2"), ("SRANDMEMBER", "s", "1", "2"),
        ("SPOP", "s"), ("EXISTS", "s"), ("SADD", "s", "a", "b", "c"),
        ("SORT", "SPOP", "s", "10"), ("EXISTS", "s"),
    ],
    "smove": [
        ("SADD", "s", "a", "b"), ("SADD", "t", "b"), ("SMOVE", "s", "t", "a"),
        ("SMOVE", "s", "t", "a"), ("SMOVE", "s", "t", "b"), ("EXISTS", "s"),
        ("SORT", "SMEMBERS", "t"), ("SMOVE", "t", "t", "a"), ("SMOVE", "t", "t", "zz"),
        ("SMOVE", "t", "new", "a"), ("SMEMBERS", "new"), ("SMOVE", "nokey", "t", "a"),
    ],
    "sscan_errors": [
        ("SADD", "s", "1", "2"), ("SSCAN", "s", "x"), ("SSCAN", "s", "-1"),
        ("SSCAN", "s", "0", "COUNT", "0"), ("SSCAN", "s", "0", "COUNT"),
        ("SSCAN", "nokey", "0"), ("SSCAN", "s", "0", "MATCH", "1*"),
        ("SSCAN", "s", "18446744073709551616"), ("SADD", "n", "10", "-3", "7", "0"),
        ("SMEMBERS", "n"), ("SSCAN", "n", "0"), ("SREM", "n", "7"), ("SMEMBERS", "n"),
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
def test_resp3_set_replies_are_redis_7_replies(bitkv_server, redis_server):
    script = [("SADD", "s", "a"), ("SMEMBERS", "s"), ("SMEMBERS", "nokey"),
              ("SPOP", "nokey", "2"), ("SINTER", "s", "s"), ("SRANDMEMBER", "s", "2"),
              ("SPOP", "s", "5")]
    got = []
    for srv in (bitkv_server, redis_server):
        client = redis.Redis(port=srv.port, protocol=3)
        try:
            got.append(replies(client, script))
        finally:
            client.close()
    assert got[0] == got[1]


def test_spop_and_srandmember_draw_uniformly_from_a_big_set(r):
    r.sadd("big", *range(20_000))
    counts = [0, 0]
    for m in r.srandmember("big", -20_000):
        counts[int(m) < 10_000] += 1
    assert 9_000 < counts[0] < 11_000  # halves drawn about equally
    sample = r.srandmember("big", 500)
    assert len(set(sample)) == 500
    popped = r.spop("big", 5_000)
    assert len(set(popped)) == 5_000 and r.scard("big") == 15_000
    assert not any(r.smismember("big", popped[:100]))
    one = r.spop("big")
    assert one is not None and r.sismember("big", one) == 0


def test_sscan_of_a_big_set_returns_every_member(r):
    r.sadd("big", *[f"m{i}" for i in range(3000)])
    seen: list[bytes] = []
    cursor = 0
    while True:
        cursor, page = r.sscan("big", cursor, count=100)
        seen.extend(page)
        r.srem("big", *page[:1])
        if cursor == 0:
            break
    assert sorted(seen) == sorted(b"m%d" % i for i in range(3000))
    r.sadd("small", 1, 2, 3)
    assert sorted(r.sscan("small", 0)[1]) == [b"1", b"2", b"3"]


def test_members_survive_a_restart(tmp_path):
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        r = srv.client()
        r.sadd("s", "a", "b", "c", "d")
        r.srem("s", "b")
        r.spop("s")
        r.sadd("t", "x")
        r.smove("t", "u", "x")
        r.sunionstore("v", "s", "u")
        before = r.smembers("s"), r.smembers("v")
        r.close()
    finally:
        srv.stop()
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        r = srv.client()
        assert (r.smembers("s"), r.smembers("v")) == before
        assert r.exists("t") == 0 and r.smembers("u") == {b"x"}
        assert r.scard("s") == 2 and r.srandmember("s") in before[0]
        r.close()
    finally:
        srv.stop()


def test_object_encoding_rule_intset_then_hashtable():
    from bitkv.server.commands import tuning
    from bitkv.server.commands.encodings import encoding_of
    from bitkv.structures import SetIndex

    class Control:
        pass

    control: Any = Control()
    s = SetIndex(b"s")
    for m in (b"1", b"-5", b"9223372036854775807"):
        s.on_put(m, b"")
    assert encoding_of(control, s) == "intset"
    big = SetIndex(b"b")
    big.on_put(b"9223372036854775808", b"")  # over int64: not an intset member
    assert encoding_of(control, big) == "hashtable"
    tuning.record(control, {"set-max-intset-entries": "2"})
    assert encoding_of(control, s) == "hashtable"
    s.on_delete(b"1")
    assert encoding_of(control, s) == "hashtable"  # sticky


def test_smove_of_a_member_the_destination_has_leaves_its_watch_alone(r, bitkv_server):
    """Only the source changes: a WATCH of the destination must not abort (Redis's TCL
    "SMOVE only notify dstset when the addition is successful")."""
    r.sadd("s", "a", "b")
    r.sadd("d", "a")
    other = bitkv_server.client()
    try:
        with r.pipeline(transaction=True) as pipe:
            pipe.watch("d")
            pipe.multi()
            pipe.sadd("d", "c")
            assert other.smove("s", "d", "a") == 1
            assert pipe.execute() == [1]  # not aborted
        assert r.scard("d") == 2 and r.smembers("s") == {b"b"}
        with r.pipeline(transaction=True) as pipe:
            pipe.watch("d")
            pipe.multi()
            pipe.sadd("d", "z")
            assert other.smove("s", "d", "b") == 1  # d changes this time
            with pytest.raises(redis.WatchError):
                pipe.execute()
    finally:
        other.close()
