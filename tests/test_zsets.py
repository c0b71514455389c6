"""Sorted sets in `bitkv serve` (issue 17): every reply and error text compared with a real
redis-server 7.0's, in RESP2 and RESP3; blocking pops; values and order across a restart; the
number parsing and formatting helpers; Structures.replace_ops."""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Any

import pytest
from procs import BitkvProcess, free_port, needs_redis, redis, wait_until
from redis_compare import outcome, replies, reset

from bitkv import Store
from bitkv.server.commands.zranges import format_score, parse_score, strtod
from bitkv.structures import HashIndex, Structures, ZSetIndex
from bitkv.structures.encoding import pack_score


@pytest.fixture
def r(bitkv_server):
    client = bitkv_server.client()
    reset(client, {"z", "q1", "q2", "k1", "k2", "gz", "nokey"})
    yield client
    client.close()


def _zset(key: str, *pairs: Any) -> tuple[Any, ...]:
    return ("ZADD", key, *pairs)


# Each script runs on an empty server; every reply (and error text) must be Redis's. Random
# and order-free replies (ZRANDMEMBER, ZSCAN of a big set) are tested apart.
SCRIPTS: dict[str, list[tuple[Any, ...]]] = {
    "zadd": [
        _zset("z", 1, "a", 2, "b", "1.1", "c"), ("ZADD", "z", "CH", 5, "a", 2, "b", 9, "n"),
        ("ZADD", "z", "NX", 7, "a", 8, "m"), ("ZADD", "z", "XX", "CH", 0, "a", 1, "q"),
        ("ZADD", "z", "GT", "CH", 1, "b", 3, "b"), ("ZADD", "z", "LT", "CH", 9, "c", -1, "c"),
        ("ZADD", "z", "XX", "GT", 100, "a"), ("ZADD", "z", 1, "d", 2, "d"),
        ("ZADD", "z", "NX", "XX", 1, "a"), ("ZADD", "z", "GT", "LT", 1, "a"),
        ("ZADD", "z", "NX", "GT", 1, "a"), ("ZADD", "z", "INCR", 1, "a", 2, "b"),
        ("ZADD", "z", "1"), ("ZADD", "z", "x", "a"), ("ZADD", "z", "nan", "a"),
        ("ZADD", "z", " 1", "a"), ("ZADD", "z", "1e400", "a"), ("ZADD", "z", "1 ", "a"),
        ("ZADD", "z", "0x10", "hex"), ("ZADD", "z", "-0", "negzero"), ("ZADD", "z", "", "e"),
        ("ZADD", "z", 1, "ok", "bad", "b"), ("ZSCORE", "z", "ok"),
        ("ZADD", "z", "INCR", "inf", "a"), ("ZADD", "z", "INCR", "-inf", "a"),
        ("ZADD", "z", "INCR", "NX", 5, "a"), ("ZADD", "z", "INCR", "XX", 5, "absent"),
        ("ZADD", "z", "INCR", "GT", -5, "b"), ("ZINCRBY", "z", "2.5", "b"),
        ("ZINCRBY", "z", "x", "b"), ("ZINCRBY", "fresh", 3, "m"),
        ("ZADD", "fresh", "XX", 1, "m2"), ("ZADD", "none", "XX", 1, "m"), ("EXISTS", "none"),
        ("ZRANGE", "z", 0, -1, "WITHSCORES"), ("ZCARD", "z"), ("ZCARD", "nokey"),
        ("SET", "s", "v"), ("ZADD", "s", 1, "a"), ("ZADD", "s", "x", "a"), ("ZCARD", "s"),
        ("ZSCORE", "s", "a"), ("ZINCRBY", "s", 1, "a"),
    ],
    "scores": [
        _zset("z", "1.1", "a", "0.1", "b", "1e17", "c", "-3", "d", "123456789012345678", "e",
              "+inf", "f", "-inf", "g", "2.5e-300", "h", "3.0", "i"),
        ("ZSCORE", "z", "a"), ("ZSCORE", "z", "c"), ("ZSCORE", "z", "f"), ("ZSCORE", "z", "g"),
        ("ZMSCORE", "z", "a", "nope", "h"), ("ZMSCORE", "nokey", "a"),
        ("ZRANGE", "z", 0, -1, "WITHSCORES"), ("ZINCRBY", "z", "0.2", "b"),
    ],
    "ranks and counts": [
        _zset("z", 1, "a", 2, "b", 2, "c", 3, "d", 5, "e"),
        ("ZRANK", "z", "c"), ("ZREVRANK", "z", "c"), ("ZRANK", "z", "nope"),
        ("ZRANK", "nokey", "a"), ("ZCOUNT", "z", 2, 3), ("ZCOUNT", "z", "(2", "+inf"),
        ("ZCOUNT", "z", "-inf", "(2"), ("ZCOUNT", "z", "(2", "(2"), ("ZCOUNT", "z", 3, 1),
        ("ZCOUNT", "z", "x", 1), ("ZCOUNT", "z", "(", "5"), ("ZCOUNT", "z", "", "5"),
        ("ZCOUNT", "z", "nan", 1), ("ZCOUNT", "nokey", 0, 1),
        _zset("l", 0, "a", 0, "b", 0, "c", 0, "d", 0, "e"),
        ("ZLEXCOUNT", "l", "-", "+"), ("ZLEXCOUNT", "l", "(a", "[c"),
        ("ZLEXCOUNT", "l", "[b", "(b"), ("ZLEXCOUNT", "l", "+", "-"),
        ("ZLEXCOUNT", "l", "a", "c"), ("ZLEXCOUNT", "l", "--", "+"),
    ],
    "ranges": [
        _zset("z", 1, "a", 2, "b", 3, "c", 4, "d", 5, "e", 6, "f"),
        ("ZRANGE", "z", 0, -1), ("ZRANGE", "z", -3, -2, "WITHSCORES"), ("ZRANGE", "z", 4, 1),
        ("ZRANGE", "z", -100, 100), ("ZRANGE", "z", 6, 10), ("ZRANGE", "z", "x", 1),
        ("ZREVRANGE", "z", 0, 2, "WITHSCORES"), ("ZRANGE", "z", 0, 2, "REV"),
        ("ZRANGE", "z", "(1", 4, "BYSCORE"), ("ZRANGE", "z", 4, "(1", "BYSCORE", "REV"),
        ("ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", 1, 2, "WITHSCORES"),
        ("ZRANGE", "z", "+inf", "-inf", "BYSCORE", "REV", "LIMIT", 1, 3),
        ("ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", -1, 2),
        ("ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", 2, -1),
        ("ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", 10, 1),
        ("ZRANGE", "z", "-inf", "+inf", "BYSCORE", "LIMIT", 0, 0),
        ("ZRANGE", "z", 0, 1, "LIMIT", 0, 1), ("ZRANGE", "z", "-", "+", "BYLEX", "WITHSCORES"),
        ("ZRANGE", "z", 0, 1, "BYSCORE", "BYLEX"), ("ZRANGE", "z", 0, 1, "REV", "REV"),
        ("ZRANGE", "z", 0, 1, "LIMIT", 1), ("ZRANGE", "z", 0, 1, "LIMIT", "x", 1),
        ("ZRANGEBYSCORE", "z", 2, 4, "WITHSCORES", "LIMIT", 1, 1),
        ("ZRANGEBYSCORE", "z", 2, 4, "BYSCORE"), ("ZREVRANGEBYSCORE", "z", 4, 2),
        ("ZREVRANGEBYSCORE", "z", "(4", "(2", "WITHSCORES"), ("ZRANGEBYSCORE", "z", "a", 1),
        ("ZREVRANGE", "z", 0, 1, "LIMIT", 0, 1), ("ZRANGE", "nokey", 0, -1),
        _zset("l", 0, "alpha", 0, "bar", 0, "cool", 0, "down", 0, "elephant", 0, "foo"),
        ("ZRANGEBYLEX", "l", "-", "+"), ("ZRANGEBYLEX", "l", "[bar", "(down"),
        ("ZRANGEBYLEX", "l", "(bar", "+", "LIMIT", 1, 2), ("ZREVRANGEBYLEX", "l", "+", "[c"),
        ("ZREVRANGEBYLEX", "l", "(foo", "-", "LIMIT", 0, 2), ("ZRANGEBYLEX", "l", "[z", "+"),
        ("ZRANGEBYLEX", "l", "bar", "+"), ("ZRANGEBYLEX", "l", "-", "+", "WITHSCORES"),
        ("ZRANGE", "l", "[c", "-", "BYLEX", "REV"), ("ZRANGEBYLEX", "z", "-", "+"),
    ],
    "lex with mixed scores": [  # Redis walks a listpack: the answers depend on the order
        _zset("m", 1, "b", 2, "a", 3, "", 4, "c"), ("ZLEXCOUNT", "m", "(", "+"),
        ("ZREVRANGEBYLEX", "m", "[b", "("), ("ZRANGEBYLEX", "m", "[a", "+"),
        ("ZRANGEBYLEX", "m", "-", "[b"), ("ZREVRANGEBYLEX", "m", "+", "[a", "LIMIT", 1, 5),
        ("ZRANGE", "m", "[a", "[c", "BYLEX", "LIMIT", 1, 1), ("ZREMRANGEBYLEX", "m", "-", "[b"),
        ("ZRANGE", "m", 0, -1),
    ],
    "rangestore": [
        _zset("z", 1, "a", 2, "b", 3, "c"), ("ZRANGESTORE", "d", "z", 0, 1),
        ("ZRANGE", "d", 0, -1, "WITHSCORES"), ("ZRANGESTORE", "d", "z", "(1", "+inf", "BYSCORE",
                                               "REV", "LIMIT", 0, 1),
        ("ZRANGE", "d", 0, -1, "WITHSCORES"), ("ZRANGESTORE", "d", "z", 5, 6),
        ("EXISTS", "d"), ("SET", "str", "x"), ("ZRANGESTORE", "str", "z", 0, 0),
        ("TYPE", "str"), ("ZRANGESTORE", "str", "nokey", 0, -1), ("EXISTS", "str"),
        ("ZRANGESTORE", "z", "z", 1, 1), ("ZRANGE", "z", 0, -1, "WITHSCORES"),
        ("ZRANGESTORE", "d", "z", 0, 1, "WITHSCORES"), ("SET", "s2", "v"),
        ("ZRANGESTORE", "d", "s2", 0, 1),
    ],
    "remove": [
        _zset("z", 1, "a", 2, "b", 3, "c", 4, "d", 5, "e", 6, "f", 7, "g"),
        ("ZREM", "z", "a", "a", "nope"), ("ZREM", "nokey", "a"),
        ("ZREMRANGEBYRANK", "z", 0, 0), ("ZREMRANGEBYRANK", "z", -1, -1),
        ("ZREMRANGEBYRANK", "z", 5, 1), ("ZREMRANGEBYSCORE", "z", "(3", 4),
        ("ZREMRANGEBYSCORE", "z", "x", 4), ("ZRANGE", "z", 0, -1),
        _zset("l", 0, "a", 0, "b", 0, "c"), ("ZREMRANGEBYLEX", "l", "(a", "+"),
        ("ZREMRANGEBYLEX", "l", "a", "+"), ("ZREMRANGEBYLEX", "l", "-", "+"), ("EXISTS", "l"),
        ("ZREM", "z", "c", "e", "f"), ("EXISTS", "z"), ("SET", "s", "v"), ("ZREM", "s", "a"),
        ("ZREMRANGEBYRANK", "s", 0, 1), ("ZREMRANGEBYRANK", "z", "x", 1),
    ],
    "pops": [
        _zset("z", 1, "a", 2, "b", 3, "c", 4, "d", 5, "e"), ("ZPOPMIN", "z"),
        ("ZPOPMAX", "z", 2), ("ZPOPMIN", "z", 0), ("ZPOPMIN", "z", -1), ("ZPOPMIN", "z", "x"),
        ("ZPOPMIN", "z", 1, 2), ("ZPOPMIN", "nokey"), ("ZPOPMIN", "nokey", 3),
        ("ZMPOP", 2, "nokey", "z", "MIN", "COUNT", 10), ("EXISTS", "z"),
        ("ZMPOP", 1, "z", "MIN"), ("ZMPOP", 0, "z", "MIN"), ("ZMPOP", "x", "z", "MIN"),
        ("ZMPOP", 2, "z", "MIN"), ("ZMPOP", 1, "z", "MIDDLE"), ("ZMPOP", 1, "z", "MIN", "COUNT"),
        ("ZMPOP", 1, "z", "MIN", "COUNT", 0), ("ZMPOP", 1, "z", "MIN", "COUNT", 1, "COUNT", 1),
        _zset("y", 1, "a"), ("SET", "s", "v"), ("ZMPOP", 2, "s", "y", "MAX"),
        ("ZMPOP", 2, "y", "s", "MAX"), ("ZPOPMAX", "s"), ("BZPOPMIN", "s", 0),
        ("BZPOPMIN", "y", "x"), ("BZPOPMIN", "y", "-1"), ("BZMPOP", 0, 1, "y", "MAX", "COUNT", 0),
        ("BZMPOP", "-1", 1, "y", "MAX"), _zset("y", 2, "b"), ("BZPOPMAX", "nokey", "y", 0),
        _zset("y", 2, "b", 3, "c"), ("BZMPOP", 0, 2, "nokey", "y", "MIN", "COUNT", 5),
        ("BZPOPMIN", "y", "0.01"), ("BZMPOP", "0.01", 1, "y", "MIN"),
    ],
    "setops": [
        _zset("a", 1, "x", 2, "y", 3, "z"), _zset("b", 10, "y", 20, "z", 30, "w"),
        ("ZUNION", 2, "a", "b", "WITHSCORES"), ("ZINTER", 2, "a", "b", "WITHSCORES"),
        ("ZDIFF", 2, "a", "b", "WITHSCORES"), ("ZDIFF", 2, "b", "a"),
        ("ZUNION", 2, "a", "b", "WEIGHTS", 2, "0.5", "AGGREGATE", "MAX", "WITHSCORES"),
        ("ZINTER", 2, "a", "b", "AGGREGATE", "MIN", "WITHSCORES"),
        ("ZUNION", 3, "a", "b", "nokey", "WITHSCORES"), ("ZINTER", 2, "a", "nokey"),
        ("ZUNIONSTORE", "dst", 2, "a", "b", "WEIGHTS", 1, 2), ("ZRANGE", "dst", 0, -1,
                                                               "WITHSCORES"),
        ("ZINTERSTORE", "dst", 2, "a", "b"), ("ZRANGE", "dst", 0, -1, "WITHSCORES"),
        ("ZDIFFSTORE", "dst", 1, "a"), ("ZRANGE", "dst", 0, -1, "WITHSCORES"),
        ("ZINTERSTORE", "dst", 2, "a", "nokey"), ("EXISTS", "dst"),
        ("ZUNIONSTORE", "a", 2, "a", "b"), ("ZRANGE", "a", 0, -1, "WITHSCORES"),
        ("ZINTERCARD", 2, "a", "b"), ("ZINTERCARD", 2, "a", "b", "LIMIT", 1),
        ("ZINTERCARD", 2, "a", "b", "LIMIT", -1), ("ZINTERCARD", 0, "a"),
        ("ZINTERCARD", 2, "a", "b", "WITHSCORES"), ("ZINTERCARD", 3, "a", "b"),
        ("ZUNION", 0, "a"), ("ZUNION", -1, "a"), ("ZUNION", 3, "a", "b"),
        ("ZUNION", 2, "a", "b", "WEIGHTS", 1), ("ZUNION", 2, "a", "b", "WEIGHTS", 1, "x"),
        ("ZUNION", 2, "a", "b", "AGGREGATE", "avg"), ("ZDIFF", 2, "a", "b", "WEIGHTS", 1, 1),
        ("ZUNIONSTORE", "dst", 2, "a", "b", "WITHSCORES"), ("ZUNION", "x", "a"),
        _zset("i", "inf", "m"), _zset("j", "-inf", "m"), ("ZUNION", 2, "i", "j", "WITHSCORES"),
        ("ZINTER", 2, "i", "j", "WEIGHTS", 0, 1, "WITHSCORES"),
        ("SET", "s", "v"), ("ZUNION", 2, "a", "s"), ("ZUNIONSTORE", "s", 1, "a"),
        ("TYPE", "s"), ("ZINTERSTORE", "s", 1, "nokey"), ("EXISTS", "s"),
    ],
    "scan": [
        _zset("z", 1, "a", 2, "b", "1.5", "c"), ("ZSCAN", "z", 0), ("ZSCAN", "z", 0, "MATCH",
                                                                      "[ab]"),
        ("ZSCAN", "z", 0, "COUNT", 0), ("ZSCAN", "z", "x"), ("ZSCAN", "z", 0, "BAD", 1),
        ("ZSCAN", "nokey", 0), ("SET", "s", "v"), ("ZSCAN", "s", 0),
    ],
}


@needs_redis
@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_replies_are_redis_7_replies(name, protocol, bitkv_server, redis_server):
    mine = redis.Redis(host="127.0.0.1", port=bitkv_server.port, protocol=protocol)
    theirs = redis.Redis(host="127.0.0.1", port=redis_server.port, protocol=protocol)
    try:
        assert replies(mine, SCRIPTS[name]) == replies(theirs, SCRIPTS[name])
    finally:
        mine.close()
        theirs.close()


def raw(port: int, *args: bytes | str, resp3: bool = False) -> bytes:
    """The bytes a server answers to one command (after HELLO 3 when ``resp3``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        if resp3:
            s.sendall(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
            _read_until_quiet(s)
        parts = [a.encode() if isinstance(a, str) else a for a in args]
        s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%b\r\n" % (len(p), p)
                                                     for p in parts))
        return _read_until_quiet(s)


def _read_until_quiet(s: socket.socket) -> bytes:
    data = b""
    s.settimeout(5)
    data += s.recv(65536)
    s.settimeout(0.1)
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


@needs_redis
@pytest.mark.parametrize("resp3", [False, True])
def test_score_bytes_on_the_wire_are_redis_bytes(resp3, bitkv_server, redis_server):
    # redis-py parses doubles: the exact text (%.17g, inf, integers without .0) is checked here.
    cmds = [("ZADD", "w", "1.1", "a", "3", "b", "inf", "c", "-inf", "d", "1e17", "e", "-0", "f"),
            ("ZRANGE", "w", "0", "-1", "WITHSCORES"), ("ZSCORE", "w", "a"),
            ("ZINCRBY", "w", "0.2", "a"), ("ZPOPMIN", "w", "2"), ("ZMSCORE", "w", "b", "x"),
            ("ZRANDMEMBER", "w", "1", "WITHSCORES"), ("DEL", "w"),
            # a weight of -1 on 0 makes -0: stored as 0, as Redis's listpack stores it
            ("ZADD", "w", "0", "x"), ("ZUNIONSTORE", "w", "1", "w", "WEIGHTS", "-1"),
            ("ZRANGE", "w", "0", "-1", "WITHSCORES"), ("DEL", "w")]
    for cmd in cmds:
        if cmd[0] == "ZRANDMEMBER":
            raw(bitkv_server.port, "DEL", "w")
            raw(redis_server.port, "DEL", "w")
            raw(bitkv_server.port, "ZADD", "w", "2.5", "only")
            raw(redis_server.port, "ZADD", "w", "2.5", "only")
        assert raw(bitkv_server.port, *cmd, resp3=resp3) == raw(redis_server.port, *cmd,
                                                                 resp3=resp3), cmd


def test_zrandmember(r):
    r.zadd("z", {"a": 1, "b": 2, "c": 3})
    assert r.zrandmember("z") in (b"a", b"b", b"c")
    assert sorted(r.zrandmember("z", 2)) != [] and len(set(r.zrandmember("z", 2))) == 2
    assert sorted(r.zrandmember("z", 10)) == [b"a", b"b", b"c"]
    many = r.zrandmember("z", -30)
    assert len(many) == 30 and set(many) <= {b"a", b"b", b"c"}
    pairs = r.execute_command("ZRANDMEMBER", "z", -4, "WITHSCORES")
    assert len(pairs) == 8 and all(float(pairs[i + 1]) == " abc".index(pairs[i].decode())
                                   for i in range(0, 8, 2))
    assert r.zrandmember("nokey") is None and r.zrandmember("nokey", 3) == []
    assert r.zrandmember("z", 0) == []
    with pytest.raises(redis.ResponseError, match="value is out of range"):
        r.execute_command("ZRANDMEMBER", "z", "-9223372036854775808")
    with pytest.raises(redis.ResponseError, match=r"^value is out of range$"):
        r.execute_command("ZRANDMEMBER", "z", "-9223372036854770000", "WITHSCORES")
    with pytest.raises(redis.ResponseError, match="at most"):
        r.execute_command("ZRANDMEMBER", "z", -(1 << 25))


def test_zscan_returns_every_member_of_a_big_set(r):
    r.zadd("z", {f"m{i}": i for i in range(1000)})
    seen: dict[bytes, float] = {}
    cursor = 0
    calls = 0
    while True:
        cursor, items = r.zscan("z", cursor, count=100)
        seen.update(items)
        calls += 1
        if cursor == 0:
            break
    assert calls > 1  # incremental, not in one reply
    assert seen == {f"m{i}".encode(): float(i) for i in range(1000)}
    # Members present for the whole scan are all returned while the set changes under it.
    cursor, items = r.zscan("z", 0, count=50)
    seen = dict(items)
    step = 0
    while cursor:
        step += 1
        r.zadd("z", {f"new{step}": 5000 + step})
        r.zrem("z", f"m{2 * step}", f"m{2 * step + 1}")  # members a rank cursor has passed
        r.zincrby("z", 0.5, f"m{500 + step}")
        cursor, items = r.zscan("z", cursor, count=50)
        seen.update(items)
    assert step > 5
    assert {f"m{i}".encode() for i in range(2 * step + 2, 1000)} <= set(seen)
    assert seen[b"m999"] == 999.0
    assert dict(r.zscan("z", 0, match="m99*", count=10000)[1]) == {
        b"m99": 99.0, **{f"m99{i}".encode(): 990.0 + i for i in range(10)}}


def test_ranks_and_ranges_of_a_big_set(r):
    n = 3000
    r.zadd("z", {f"m{i:05}": i // 3 for i in range(n)})
    assert r.zrank("z", "m01500") == 1500 and r.zrevrank("z", "m01500") == n - 1 - 1500
    assert r.zcount("z", 100, "(200") == 300
    assert r.zrange("z", 1000, 1002) == [b"m01000", b"m01001", b"m01002"]
    assert r.zrevrange("z", 0, 1) == [b"m02999", b"m02998"]
    got = r.zrangebyscore("z", 10, 20, start=5, num=100)
    assert got == [f"m{i:05}".encode() for i in range(35, 63)]
    assert r.zremrangebyscore("z", "-inf", "(500") == 1500
    assert r.zcard("z") == 1500 and r.zrange("z", 0, 0) == [b"m01500"]


def test_a_blocked_client_gets_a_later_zadd(bitkv_server, r):
    other = bitkv_server.client()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(
        other.execute_command("BZPOPMIN", "q1", "q2", 5)))
    t.start()
    wait_until(lambda: r.info("clients")["blocked_clients"] == 1, 5, "a blocked client")
    # A MULTI that creates and deletes the key does not wake it; a type change does not
    # make it fail.
    with r.pipeline() as p:
        p.zadd("q2", {"x": 1}).delete("q2").set("q2", "str").execute()
    time.sleep(0.2)
    assert t.is_alive() and not got
    r.zadd("q1", {"m": 3})
    t.join(5)
    assert got == [(b"q1", b"m", 3.0)]
    assert r.info("clients")["blocked_clients"] == 0
    assert not r.exists("q1")
    other.close()


def test_blocked_clients_are_served_in_blocking_order(bitkv_server, r):
    clients = [bitkv_server.client() for _ in range(3)]
    got: dict[int, Any] = {}
    threads = []
    for i, (cl, count) in enumerate(zip(clients, (1, 10, 10), strict=True)):
        t = threading.Thread(target=lambda i=i, cl=cl, count=count: got.__setitem__(
            i, cl.execute_command("BZMPOP", 5, 2, "k1", "k2", "MIN", "COUNT", count)))
        t.start()
        threads.append(t)
        wait_until(lambda n=i + 1: r.info("clients")["blocked_clients"] == n, 5, "blocked")
    with r.pipeline() as p:
        p.zadd("k1", {"a": 1, "b": 2, "c": 3}).zadd("k2", {"x": 1}).execute()
    for t in threads:
        t.join(5)
    assert got == {0: [b"k1", [[b"a", b"1"]]], 1: [b"k1", [[b"b", b"2"], [b"c", b"3"]]],
                   2: [b"k2", [[b"x", b"1"]]]}
    for cl in clients:
        cl.close()


def test_blocking_pops_time_out_and_do_not_block_in_multi(r):
    started = time.monotonic()
    assert r.execute_command("BZPOPMAX", "nokey", "0.2") is None
    assert time.monotonic() - started >= 0.19
    with r.pipeline() as p:
        assert p.execute_command("BZPOPMIN", "nokey", 0).execute() == [None]


def test_a_client_gone_while_blocked_takes_nothing(bitkv_server, r):
    s = socket.create_connection(("127.0.0.1", bitkv_server.port))
    s.sendall(b"*3\r\n$8\r\nBZPOPMIN\r\n$2\r\ngz\r\n$1\r\n0\r\n")
    wait_until(lambda: r.info("clients")["blocked_clients"] == 1, 5, "a blocked client")
    s.close()
    wait_until(lambda: r.info("clients")["blocked_clients"] == 0, 5, "no blocked client")
    r.zadd("gz", {"m": 1})
    assert r.zrange("gz", 0, -1) == [b"m"]


def test_a_blocked_client_does_not_hold_up_shutdown(tmp_path):
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"*3\r\n$8\r\nBZPOPMIN\r\n$1\r\nq\r\n$1\r\n0\r\n")
        c = srv.client()
        wait_until(lambda: c.info("clients")["blocked_clients"] == 1, 5, "a blocked client")
        started = time.monotonic()
        srv.stop()  # SIGTERM: a graceful shutdown waits up to 30 s for running commands
        assert time.monotonic() - started < 10
        s.close()
    finally:
        srv.stop()


def test_sorted_sets_survive_a_restart(tmp_path):
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        c = srv.client()
        c.zadd("z", {"a": 1.5, "b": -2, "c": float("inf"), "d": 1.5})
        c.zincrby("z", 1, "b")
        c.zrem("z", "d")
        c.zadd("gone", {"x": 1})
        c.zpopmin("gone")
        c.zunionstore("u", ["z", "z"])
        c.close()
    finally:
        srv.stop()
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        c = srv.client()
        assert c.zrange("z", 0, -1, withscores=True) == [
            (b"b", -1.0), (b"a", 1.5), (b"c", float("inf"))]
        assert c.zrange("u", 0, -1, withscores=True) == [
            (b"b", -2.0), (b"a", 3.0), (b"c", float("inf"))]
        assert not c.exists("gone") and c.type("z") == b"zset"
        c.close()
    finally:
        srv.stop()


def test_object_encoding_rule():
    from bitkv.server.commands.zsets import zset_encoding

    values = {"zset-max-listpack-entries": "3", "zset-max-listpack-value": "4"}
    z = ZSetIndex(b"k")
    for i, m in enumerate((b"a", b"b", b"c")):
        z.on_put(m, pack_score(i))
    assert zset_encoding(z, values) == "listpack"
    z.on_put(b"long!", pack_score(9))
    assert zset_encoding(z, values) == "skiplist"
    z.on_delete(b"long!")
    assert zset_encoding(z, values) == "skiplist"  # never back while running


def test_number_parsing_is_strtod():
    assert strtod(b"1.5") == (1.5, False) and strtod(b"  -2") == (-2.0, False)
    assert strtod(b"0x1p3") == (8.0, False) and strtod(b"-Infinity") == (float("-inf"), False)
    assert strtod(b"1e400") == (float("inf"), True) and strtod(b"1e-400") == (0.0, True)
    assert strtod(b"0e-400") == (0.0, False)
    for bad in (b"1_000", b"1.5x", b"", b"--1", b"0x", b"e5", b"1e"):
        assert strtod(bad) is None, bad
    for bad in (b" 1", b"nan", b"1e400", b"", b"abc"):
        with pytest.raises(Exception, match="not a valid float"):
            parse_score(bad)
    assert format_score(1.1) == b"1.1000000000000001" and format_score(3.0) == b"3"
    assert format_score(float("inf")) == b"inf" and format_score(1e17) == b"1e+17"


def test_replace_ops_replaces_any_type_in_one_batch(tmp_path):
    with Store(tmp_path / "db") as db:
        s = Structures(db)
        db.put(b"str", b"v")
        with s.edit(b"h", HashIndex) as e:
            e.put(b"f", b"1")
        with s.edit(b"z", ZSetIndex) as e:
            e.put(b"a", pack_score(1))
            e.put(b"b", pack_score(2))
        for key in (b"str", b"h", b"z"):
            ops, z = s.replace_ops(key, ZSetIndex, [(b"b", pack_score(5)), (b"c", pack_score(6))])
            assert len([op for op in ops if op[0].endswith(b"b") and op[1] is None]) == 0
            s.write(ops)
            assert z is not None
            s.install(z)
            assert s.type_name(key) == "zset" and dict(z.scores) == {b"b": 5.0, b"c": 6.0}
        ops, none = s.replace_ops(b"z", ZSetIndex, [])
        s.write(ops)
        s.forget(b"z")
        assert none is None and s.type_name(b"z") == "none"
        s.load()  # what the records say is what the index said
        assert s.type_name(b"str") == "zset" and s.type_name(b"h") == "zset"
        found = s.find(b"h", ZSetIndex)
        assert found is not None and dict(found.scores) == {b"b": 5.0, b"c": 6.0}
        assert s.type_name(b"z") == "none"


def _random_command(rnd: random.Random) -> list[str]:
    """One sorted-set command with arguments drawn from small pools (so that members, scores
    and bounds collide, and errors come up), on keys that are sorted sets or a string."""
    keys = ["z1", "z2", "z3", "s"]
    k, other = rnd.choice(keys), rnd.choice(keys)

    def member() -> str:
        return rnd.choice(["a", "b", "c", "d", "e", "aa", "ab", ""])

    def bound() -> str:
        return rnd.choice(["-inf", "+inf", "0", "1", "(1", "(2.5", "3", "-1", "(inf", "x"])

    def lex() -> str:
        return rnd.choice(["-", "+", "[a", "(a", "[b", "(c", "[", "(", "a", "[aa"])

    def index() -> str:
        return str(rnd.randint(-5, 8))

    def score() -> str:
        return rnd.choice(["0", "1", "2", "-1", "1.5", "inf", "-inf"])

    options = [
        lambda: ["ZADD", k, *rnd.sample(["NX", "XX", "GT", "LT", "CH", "INCR"],
                                        rnd.randint(0, 2)),
                 *[x for _ in range(rnd.randint(1, 3)) for x in (score(), member())]],
        lambda: ["ZINCRBY", k, score(), member()],
        lambda: ["ZREM", k, member(), member()],
        lambda: ["ZRANGE", k, index(), index(), *rnd.choice([[], ["WITHSCORES"], ["REV"]])],
        lambda: ["ZRANGE", k, bound(), bound(), "BYSCORE", *rnd.choice(
            [[], ["REV"], ["LIMIT", index(), index()], ["REV", "LIMIT", index(), index()]])],
        lambda: ["ZRANGE", k, lex(), lex(), "BYLEX", *rnd.choice(
            [[], ["REV"], ["LIMIT", index(), index()]])],
        lambda: ["ZCOUNT", k, bound(), bound()],
        lambda: ["ZLEXCOUNT", k, lex(), lex()],
        lambda: [rnd.choice(["ZRANK", "ZREVRANK", "ZSCORE"]), k, member()],
        lambda: ["ZREMRANGEBYRANK", k, index(), index()],
        lambda: ["ZREMRANGEBYSCORE", k, bound(), bound()],
        lambda: ["ZREMRANGEBYLEX", k, lex(), lex()],
        lambda: [rnd.choice(["ZPOPMIN", "ZPOPMAX"]), k, *rnd.choice([[], [index()]])],
        lambda: ["ZMPOP", "2", k, other, rnd.choice(["MIN", "MAX"]), *rnd.choice(
            [[], ["COUNT", index()]])],
        lambda: [rnd.choice(["ZUNION", "ZINTER", "ZDIFF"]), "2", k, other, *rnd.choice(
            [[], ["WITHSCORES"], ["WEIGHTS", "2", "-1", "WITHSCORES"],
             ["AGGREGATE", rnd.choice(["MIN", "MAX", "SUM"]), "WITHSCORES"]])],
        lambda: [rnd.choice(["ZUNIONSTORE", "ZINTERSTORE", "ZDIFFSTORE"]), rnd.choice(keys),
                 "2", k, other, *rnd.choice([[], ["WEIGHTS", "0", "inf"], ["AGGREGATE", "MAX"]])],
        lambda: ["ZRANGESTORE", rnd.choice(keys), k, bound(), bound(), "BYSCORE"],
        lambda: ["ZINTERCARD", "2", k, other, *rnd.choice([[], ["LIMIT", index()]])],
        lambda: ["SET", "s", "v"] if rnd.random() < 0.5 else ["DEL", "s"],
        lambda: ["ZCARD", k],
    ]
    return rnd.choice(options)()


@needs_redis
@pytest.mark.parametrize("seed", [1, 2])
def test_random_commands_answer_as_redis(seed, bitkv_server, redis_server):
    """1,500 random commands on both servers, every reply compared (found the lex walk over
    mixed scores and the -0 of a negative weight)."""
    rnd = random.Random(seed)
    mine = redis.Redis(host="127.0.0.1", port=bitkv_server.port, protocol=seed + 1)
    theirs = redis.Redis(host="127.0.0.1", port=redis_server.port, protocol=seed + 1)
    names = {"z1", "z2", "z3", "s"}
    reset(mine, names)
    reset(theirs, names)
    for i in range(1500):
        cmd = _random_command(rnd)
        assert outcome(mine, *cmd) == outcome(theirs, *cmd), (i, cmd)
    mine.close()
    theirs.close()


def test_sets_count_with_score_1(tmp_path):
    """ZUNION/ZINTER/ZDIFF(STORE) read a set's members with score 1 (the server has no SADD
    on this branch: the set is written through Structures, the handlers called directly)."""
    from types import SimpleNamespace

    from bitkv.server.commands import zsets
    from bitkv.structures import SetIndex

    with Store(tmp_path / "db") as db:
        s = Structures(db)
        with s.edit(b"set", SetIndex) as e:
            e.put(b"a", b"")
            e.put(b"b", b"")
        with s.edit(b"z", ZSetIndex) as e:
            e.put(b"b", pack_score(10))
            e.put(b"c", pack_score(20))
        control = type("Control", (), {})()  # tuning values are looked up by it (weakly)
        conn: Any = SimpleNamespace(structures=s, resp3=False, control=control,
                                    null=b"$-1\r\n")
        union = zsets.cmd_zunion(conn, [b"ZUNION", b"2", b"set", b"z", b"WEIGHTS", b"2", b"1",
                                        b"WITHSCORES"])
        assert union == (b"*6\r\n$1\r\na\r\n$1\r\n2\r\n$1\r\nb\r\n$2\r\n12\r\n"
                         b"$1\r\nc\r\n$2\r\n20\r\n")
        assert zsets.cmd_zinterstore(conn, [b"ZINTERSTORE", b"dst", b"2", b"set", b"z"]) \
            == b":1\r\n"
        dst = s.find(b"dst", ZSetIndex)
        assert dst is not None and dict(dst.scores) == {b"b": 11.0}
        assert zsets.cmd_zdiff(conn, [b"ZDIFF", b"2", b"set", b"z"]) == b"*1\r\n$1\r\na\r\n"
        with s.edit(b"h", HashIndex) as e:
            e.put(b"f", b"v")
        with pytest.raises(Exception, match="WRONGTYPE"):
            zsets.cmd_zunion(conn, [b"ZUNION", b"2", b"z", b"h"])
