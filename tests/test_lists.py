"""Lists in `bitkv serve` (issue 17): every list command's replies and error replies against a
real redis-server 7.0's, the blocking commands (order of service, timeouts, MULTI, a client
that hangs up), LINSERT's rewrite when positions run out, and lists surviving a restart."""

from __future__ import annotations

import random
import socket
import threading
import time
from typing import Any

import pytest
from procs import BitkvProcess, free_port, needs_redis, redis, wait_until
from redis_compare import outcome, replies, reset

# Every key the tests use: deleted before each (DEL removes lists; FLUSHALL is not the
# subject here).
KEYS = ["l", "s", "m", "n", "a", "b", "c", "d", "q", "m1", "m2", "nope", "k1", "k2", "q2",
        "src", "mid", "dst", "str", "src2", "other"]


@pytest.fixture
def r(bitkv_server):
    client = bitkv_server.client()
    reset(client, KEYS)
    yield client
    client.close()


WRONG = [("SET", "s", "x")]
SCRIPTS: dict[str, list[tuple[Any, ...]]] = {
    "push_pop": [
        ("LPUSH", "l", "a", "b", "c"), ("RPUSH", "l", "d", "e"), ("LRANGE", "l", 0, -1),
        ("LPUSHX", "none", "x"), ("RPUSHX", "none", "x"), ("LPUSHX", "l", "x", "y"),
        ("RPUSHX", "l", "z"), ("LLEN", "l"), ("LPOP", "l"), ("RPOP", "l"),
        ("LPOP", "l", 2), ("RPOP", "l", 0), ("RPOP", "l", 100), ("EXISTS", "l"),
        ("LPOP", "l"), ("LPOP", "l", 3), ("RPOP", "l", -1), ("LPOP", "l", "x"),
        ("LPOP", "l", 1, 2), ("LPOP", "l", "9223372036854775808"), ("LLEN", "nope"),
        *WRONG, ("LPUSH", "s", "a"), ("RPUSHX", "s", "a"), ("LPOP", "s"), ("LPOP", "s", 0),
        ("LPOP", "s", -1), ("LLEN", "s"),
    ],
    "index_range": [
        ("RPUSH", "l", *"abcdefghij"), ("LINDEX", "l", 0), ("LINDEX", "l", -1),
        ("LINDEX", "l", 5), ("LINDEX", "l", 10), ("LINDEX", "l", -11), ("LINDEX", "l", "x"),
        ("LINDEX", "nope", "x"), ("LRANGE", "l", 0, 2), ("LRANGE", "l", -3, -1),
        ("LRANGE", "l", 5, 2), ("LRANGE", "l", -100, 100), ("LRANGE", "l", 8, -100),
        ("LRANGE", "l", 20, 30), ("LRANGE", "l", "a", 1), ("LRANGE", "nope", 0, -1),
        ("LRANGE", "nope", "a", 1), *WRONG, ("LINDEX", "s", 0), ("LRANGE", "s", 0, 1),
        ("LINDEX", "s", "x"),
    ],
    "set_rem_trim": [
        ("RPUSH", "l", "a", "b", "a", "c", "a", "b"), ("LSET", "l", 1, "B"),
        ("LSET", "l", -1, "Z"), ("LSET", "l", 6, "x"), ("LSET", "l", "x", "x"),
        ("LSET", "nope", 0, "x"), ("LRANGE", "l", 0, -1), ("LREM", "l", -1, "a"),
        ("LRANGE", "l", 0, -1), ("LREM", "l", 1, "a"), ("LREM", "l", 0, "zz"),
        ("LREM", "l", "x", "a"), ("LREM", "nope", 0, "a"), ("LRANGE", "l", 0, -1),
        ("LTRIM", "l", 1, -1), ("LRANGE", "l", 0, -1), ("LTRIM", "l", 0, -100),
        ("EXISTS", "l"), ("LTRIM", "nope", 0, 1), ("LTRIM", "l", "a", 1),
        ("RPUSH", "m", *"abcdef"), ("LTRIM", "m", -3, 100), ("LRANGE", "m", 0, -1),
        ("LTRIM", "m", 2, 1), ("EXISTS", "m"), ("RPUSH", "n", 1, 2, 1, 1),
        ("LREM", "n", 0, 1), ("LRANGE", "n", 0, -1), ("LREM", "n", 0, 2), ("EXISTS", "n"),
        *WRONG, ("LSET", "s", 0, "x"), ("LREM", "s", 0, "x"), ("LTRIM", "s", 0, 1),
        ("LREM", "s", "x", "x"),
    ],
    "insert_pos": [
        ("RPUSH", "l", "a", "b", "c", "b"), ("LINSERT", "l", "BEFORE", "b", "x"),
        ("LINSERT", "l", "after", "b", "y"), ("LINSERT", "l", "after", "c", "z"),
        ("LINSERT", "l", "before", "a", "0"), ("LINSERT", "l", "before", "nope", "q"),
        ("LINSERT", "l", "middle", "a", "q"), ("LINSERT", "nope", "before", "a", "q"),
        ("LRANGE", "l", 0, -1), ("LPOS", "l", "b"), ("LPOS", "l", "b", "RANK", 2),
        ("LPOS", "l", "b", "RANK", -1), ("LPOS", "l", "b", "RANK", 0),
        ("LPOS", "l", "b", "COUNT", 0), ("LPOS", "l", "b", "COUNT", 1, "RANK", -1),
        ("LPOS", "l", "b", "MAXLEN", 3), ("LPOS", "l", "b", "MAXLEN", 3, "COUNT", 0),
        ("LPOS", "l", "b", "COUNT", -1), ("LPOS", "l", "b", "MAXLEN", -1),
        ("LPOS", "l", "b", "RANK", 5), ("LPOS", "l", "nope"), ("LPOS", "l", "nope", "COUNT", 2),
        ("LPOS", "nope", "b"), ("LPOS", "nope", "b", "COUNT", 0), ("LPOS", "l", "b", "BOGUS"),
        ("LPOS", "l", "b", "RANK"), ("LPOS", "l", "b", "RANK", "x"),
        *WRONG, ("LINSERT", "s", "before", "a", "b"), ("LPOS", "s", "a"),
        ("LINSERT", "s", "bogus", "a", "b"),
    ],
    "move_mpop": [
        ("RPUSH", "a", 1, 2, 3), ("LMOVE", "a", "b", "LEFT", "RIGHT"),
        ("LMOVE", "a", "b", "right", "left"), ("LRANGE", "b", 0, -1),
        ("LMOVE", "a", "a", "LEFT", "RIGHT"), ("LRANGE", "a", 0, -1),
        ("RPOPLPUSH", "b", "b"), ("LRANGE", "b", 0, -1), ("RPOPLPUSH", "a", "c"),
        ("EXISTS", "a"), ("RPOPLPUSH", "nope", "c"), ("LMOVE", "nope", "c", "LEFT", "LEFT"),
        ("LMOVE", "b", "c", "UP", "LEFT"), *WRONG, ("RPOPLPUSH", "b", "s"),
        ("RPOPLPUSH", "s", "b"), ("LRANGE", "b", 0, -1), ("RPOPLPUSH", "nope", "s"),
        ("RPUSH", "m1", 1, 2, 3, 4), ("LMPOP", 2, "nope", "m1", "LEFT"),
        ("LMPOP", 2, "nope", "m1", "RIGHT", "COUNT", 2), ("LMPOP", 1, "m1", "LEFT", "COUNT", 10),
        ("LMPOP", 1, "m1", "LEFT"), ("LMPOP", 0, "m1", "LEFT"), ("LMPOP", -1, "m1", "LEFT"),
        ("LMPOP", 2, "m1", "LEFT"), ("LMPOP", 1, "m1", "MIDDLE"),
        ("LMPOP", 1, "m1", "LEFT", "COUNT", 0), ("LMPOP", 1, "m1", "LEFT", "COUNT", 1, "COUNT", 1),
        ("LMPOP", 1, "m1", "LEFT", "BOGUS"), ("LMPOP", "x", "m1", "LEFT"),
        ("LMPOP", 2, "s", "m1", "LEFT"), ("RPUSH", "m2", "x"), ("LMPOP", 2, "m2", "s", "LEFT"),
    ],
    "blocking_nonblocking_paths": [
        ("RPUSH", "q", 1, 2, 3), ("BLPOP", "nope", "q", 0), ("BRPOP", "q", 0.5),
        ("BLMOVE", "q", "d", "LEFT", "LEFT", 0), ("BRPOPLPUSH", "d", "q", 0),
        ("BLMPOP", 0, 1, "q", "RIGHT", "COUNT", 5), ("EXISTS", "q"),
        ("BLPOP", "q", -1), ("BLPOP", "q", "x"), ("BLPOP", "q", "1x"), ("BLPOP", "q", " 1"),
        ("BLMOVE", "q", "d", "LEFT", "UP", 0), ("BLMPOP", "x", 1, "q", "LEFT"),
        ("BLMPOP", 0, 0, "q", "LEFT"), ("BLMPOP", -1, 1, "q", "LEFT"),
        *WRONG, ("BLPOP", "nope", "s", 0), ("BLMOVE", "s", "d", "LEFT", "LEFT", 0),
        ("RPUSH", "q", 1), ("BLMOVE", "q", "s", "LEFT", "LEFT", 0), ("LLEN", "q"),
        ("MULTI",), ("BLPOP", "nope", 0), ("BLMOVE", "nope", "d", "LEFT", "LEFT", 0),
        ("BRPOPLPUSH", "nope", "d", 0), ("BLMPOP", 0, 1, "nope", "LEFT"), ("BRPOP", "q", 0),
        ("EXEC",),
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


def raw(port: int, commands: list[list[bytes]], resp3: bool) -> list[bytes]:
    """The exact reply bytes to each command (one at a time), after HELLO 3 if ``resp3``."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")

        def reply() -> bytes:
            line = f.readline()
            if line[:1] in b"*%~" and line[1:2] != b"-":
                n = int(line[1:])
                return line + b"".join(reply() for _ in range(n * (2 if line[:1] == b"%" else 1)))
            if line[:1] in b"$=" and line[1:2] != b"-":
                return line + f.read(int(line[1:]) + 2)
            return line

        def send(cmd: list[bytes]) -> bytes:
            s.sendall(b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a)
                                                        for a in cmd))
            return reply()

        if resp3:
            send([b"HELLO", b"3"])
        for cmd in commands:
            out.append(send(cmd))
    return out


NIL_OR_EMPTY = [
    [b"DEL", b"l", b"s", b"m"], [b"SET", b"s", b"x"], [b"LPOP", b"l"], [b"LPOP", b"l", b"2"],
    [b"RPOP", b"l", b"0"], [b"LINDEX", b"l", b"0"], [b"LMPOP", b"1", b"l", b"LEFT"],
    [b"LPOS", b"l", b"a"], [b"LPOS", b"l", b"a", b"COUNT", b"0"], [b"LMOVE", b"l", b"m",
                                                                 b"LEFT", b"LEFT"],
    [b"RPUSH", b"l", b"a"], [b"LPOP", b"l", b"0"], [b"LRANGE", b"l", b"5", b"6"],
    [b"LPOS", b"l", b"zz"], [b"BLPOP", b"nope", b"0.01"],
    [b"BLMOVE", b"nope", b"m", b"LEFT", b"LEFT", b"0.01"],
    [b"BLMPOP", b"0.01", b"1", b"nope", b"LEFT"],
    [b"MULTI"], [b"BLPOP", b"nope", b"0"], [b"BLMOVE", b"nope", b"m", b"LEFT", b"LEFT", b"0"],
    [b"EXEC"],
]


@needs_redis
@pytest.mark.parametrize("resp3", [False, True])
def test_nil_and_empty_array_are_redis_bytes_in_resp2_and_resp3(bitkv_server, redis_server,
                                                                resp3):
    assert raw(bitkv_server.port, NIL_OR_EMPTY, resp3) == \
        raw(redis_server.port, NIL_OR_EMPTY, resp3)


@needs_redis
def test_random_operations_match_redis(bitkv_server, redis_server):
    """A few hundred random list commands, the same on both servers: same replies, same
    lists (LINSERT at one place many times forces rewrites; LREM many middles, rebuilds)."""
    rng = random.Random(17)
    bk, rd = bitkv_server.client(), redis_server.client()
    try:
        reset(bk, KEYS)
        reset(rd, KEYS)
        keys = ["k1", "k2"]
        for _ in range(700):
            k = rng.choice(keys)
            v = rng.choice("abcde")
            op = rng.random()
            if op < 0.2:
                cmd: tuple[Any, ...] = (rng.choice(["LPUSH", "RPUSH"]), k,
                                        *rng.choices("abcde", k=rng.randint(1, 6)))
            elif op < 0.45:
                cmd = ("LINSERT", k, rng.choice(["BEFORE", "AFTER"]), v, rng.choice("xyz"))
            elif op < 0.5:
                cmd = ("LREM", k, rng.randint(-3, 3), v)
            elif op < 0.55:
                cmd = (rng.choice(["LPOP", "RPOP"]), k, rng.randint(0, 3))
            elif op < 0.6:
                cmd = ("LSET", k, rng.randint(-5, 5), v)
            elif op < 0.65:
                cmd = ("LTRIM", k, rng.randint(-10, 3), rng.randint(-3, 40))
            elif op < 0.72:
                cmd = ("LMOVE", k, rng.choice(keys), rng.choice(["LEFT", "RIGHT"]),
                       rng.choice(["LEFT", "RIGHT"]))
            elif op < 0.8:
                cmd = ("LPOS", k, v, "RANK", rng.choice([1, -1, 2]), "COUNT", rng.randint(0, 3))
            elif op < 0.9:
                cmd = ("LRANGE", k, rng.randint(-20, 20), rng.randint(-20, 20))
            else:
                cmd = ("LINDEX", k, rng.randint(-20, 20))
            assert outcome(bk, *cmd) == outcome(rd, *cmd), cmd
        for k in keys:
            assert bk.lrange(k, 0, -1) == rd.lrange(k, 0, -1)
    finally:
        bk.close()
        rd.close()


def test_linsert_at_one_place_rewrites_and_keeps_order(r):
    r.rpush("l", "head", "tail")
    model = ["head", "tail"]
    for i in range(100):  # 16 midpoints fit between two pushed elements; then a rewrite
        r.linsert("l", "AFTER", "head", str(i))
        model.insert(1, str(i))
    assert [v.decode() for v in r.lrange("l", 0, -1)] == model
    # the rebuild of the index (many deletions in the middle) keeps it in order too
    assert r.lrem("l", 0, "5") == 1
    model.remove("5")
    for i in range(0, 100, 3):
        if str(i) in model:
            r.lrem("l", 1, str(i))
            model.remove(str(i))
    assert [v.decode() for v in r.lrange("l", 0, -1)] == model
    assert r.lindex("l", 1) == model[1].encode() and r.llen("l") == len(model)


def test_lists_and_their_order_survive_a_restart(tmp_path):
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        c = srv.client()
        c.rpush("l", *[str(i) for i in range(50)])
        c.lpush("l", "first")
        for i in range(20):
            c.linsert("l", "BEFORE", "25", f"in{i}")
        c.lset("l", 3, "three")
        c.lrem("l", 0, "40")
        c.rpush("gone", "x")
        c.lpop("gone")
        expected = c.lrange("l", 0, -1)
        c.close()
    finally:
        srv.stop()
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        c = srv.client()
        assert c.lrange("l", 0, -1) == expected
        assert c.exists("gone") == 0 and c.type("l") == b"list"
        c.rpush("l", "after-restart")
        c.linsert("l", "AFTER", "in19", "more")
        assert c.lrange("l", -1, -1) == [b"after-restart"]
        assert c.lindex("l", expected.index(b"in19") + 1) == b"more"
        c.close()
    finally:
        srv.stop()


def blocked_count(r: redis.Redis) -> int:
    return int(r.info("clients")["blocked_clients"])


def in_thread(fn: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    return t, out


def test_blocked_clients_are_served_in_the_order_they_blocked(r, bitkv_server):
    clients = [bitkv_server.client() for _ in range(3)]
    threads = []
    for i, c in enumerate(clients):
        threads.append(in_thread(lambda c=c: c.blpop(["q", "other"], 5)))
        wait_until(lambda i=i: blocked_count(r) == i + 1, 5, "a blocked client")
    assert r.rpush("q", "a", "b") == 2  # the reply counts both: they are taken after it
    for t, _out in threads[:2]:
        t.join(5)
    assert [out for _t, out in threads[:2]] == [[(b"q", b"a")], [(b"q", b"b")]]
    assert r.exists("q") == 0 and blocked_count(r) == 1
    r.rpush("other", "c")
    threads[2][0].join(5)
    assert threads[2][1] == [(b"other", b"c")]
    for c in clients:
        c.close()


def test_blocked_pop_times_out_with_nil_and_zero_blocks_until_a_push(r, bitkv_server):
    c = bitkv_server.client()
    started = time.monotonic()
    assert c.brpop(["q"], 0.2) is None
    assert 0.15 < time.monotonic() - started < 3
    t, out = in_thread(lambda: c.blmpop(0, 1, "q", direction="RIGHT", count=5))
    wait_until(lambda: blocked_count(r) == 1, 5, "a blocked client")
    time.sleep(0.6)  # past a hang-up check: still blocked
    assert t.is_alive()
    r.rpush("q", 1, 2, 3)
    t.join(5)
    assert out == [[b"q", [b"3", b"2", b"1"]]]
    c.close()


def test_push_inside_multi_serves_the_blocked_client_after_exec(r, bitkv_server):
    c = bitkv_server.client()
    t, out = in_thread(lambda: c.blpop(["q"], 5))
    wait_until(lambda: blocked_count(r) == 1, 5, "a blocked client")
    p = r.pipeline(transaction=True)
    p.lpush("q", "a").lpush("q", "b").lpush("q", "c").lrange("q", 0, -1)
    assert p.execute() == [1, 2, 3, [b"c", b"b", b"a"]]  # nothing taken inside the EXEC
    t.join(5)
    assert out == [(b"q", b"c")]
    # LPUSH then DEL in one transaction: nothing to serve, the client stays blocked
    t, out = in_thread(lambda: c.blpop(["q2"], 5))
    wait_until(lambda: blocked_count(r) == 1, 5, "a blocked client")
    p = r.pipeline(transaction=True)
    p.lpush("q2", "a").delete("q2").set("q2", "string")
    p.execute()
    time.sleep(0.1)
    assert t.is_alive() and blocked_count(r) == 1
    r.delete("q2")
    r.rpush("q2", "b")
    t.join(5)
    assert out == [(b"q2", b"b")]
    c.close()


def test_blmove_chain_and_wrong_destination(r, bitkv_server):
    a, b = bitkv_server.client(), bitkv_server.client()
    t1, out1 = in_thread(lambda: a.blmove("src", "mid", 5, "RIGHT", "LEFT"))
    wait_until(lambda: blocked_count(r) == 1, 5, "a blocked client")
    t2, out2 = in_thread(lambda: b.brpoplpush("mid", "dst", 5))
    wait_until(lambda: blocked_count(r) == 2, 5, "two blocked clients")
    r.rpush("src", "x")
    t1.join(5)
    t2.join(5)
    assert out1 == [b"x"] and out2 == [b"x"]
    assert r.lrange("dst", 0, -1) == [b"x"] and r.exists("src", "mid") == 0
    # a destination of another type: the blocked client gets WRONGTYPE, the element stays
    r.set("str", "v")
    t3, out3 = in_thread(lambda: outcome(a, "BLMOVE", "src2", "str", "LEFT", "LEFT", 5))
    wait_until(lambda: blocked_count(r) == 1, 5, "a blocked client")
    r.rpush("src2", "y")
    t3.join(5)
    assert out3[0][0] == "error" and out3[0][1].startswith("WRONGTYPE")
    assert r.lrange("src2", 0, -1) == [b"y"]
    a.close()
    b.close()


def test_a_client_that_hung_up_while_blocked_takes_nothing(r, bitkv_server):
    s = socket.create_connection(("127.0.0.1", bitkv_server.port))
    s.sendall(b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n")
    wait_until(lambda: blocked_count(r) == 1, 5, "a blocked client")
    s.close()
    time.sleep(0.1)
    assert r.rpush("q", "kept") == 1
    assert r.lrange("q", 0, -1) == [b"kept"]
    wait_until(lambda: blocked_count(r) == 0, 5, "the hung-up client dropped")


def test_list_records_and_wrongtype_against_strings(r):
    r.rpush("l", "a")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.get("l")
    assert r.type("l") == b"list"
    r.set("l", "now a string")  # SET replaces a list, as in Redis
    assert r.get("l") == b"now a string"
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.lpush("l", "x")
    assert r.delete("l") == 1
    with pytest.raises(redis.ResponseError, match="reserved"):
        r.rpush(b"\xff\x00bkh", "x")


@needs_redis
def test_client_unblock_answers_as_timeout_or_error_like_redis(bitkv_server, redis_server):
    def run(server: Any) -> list[Any]:
        admin, blocked = server.client(), server.client()
        admin.delete("q")
        got: list[Any] = []
        for reason in ((), ("TIMEOUT",), ("ERROR",)):
            cid = blocked.client_id()
            t, out = in_thread(lambda: outcome(blocked, "BLPOP", "q", 0))
            wait_until(lambda: blocked_count(admin) == 1, 5, "a blocked client")
            got.append(outcome(admin, "CLIENT", "UNBLOCK", cid, *reason))
            t.join(5)
            got.append(out)
        got += [outcome(admin, "CLIENT", "UNBLOCK", admin.client_id()),
                outcome(admin, "CLIENT", "UNBLOCK", "x"),
                outcome(admin, "CLIENT", "UNBLOCK", 1, "BOGUS"), blocked_count(admin)]
        admin.close()
        blocked.close()
        return got

    assert run(bitkv_server) == run(redis_server)


def test_a_list_created_without_a_push_signal_is_served_at_the_next_check(tmp_path):
    """RENAME, COPY, RESTORE (other modules) create lists without telling blocking.py: the
    blocked client finds the list at its next periodic check (fails without that check)."""
    from bitkv.server import ServerThread
    from bitkv.structures import ListIndex
    from bitkv.structures.encoding import pack_position

    with ServerThread(dir=str(tmp_path / "db"), port=0) as srv:
        r = redis.Redis(port=srv.port)
        t, out = in_thread(lambda: redis.Redis(port=srv.port).blpop(["moved"], 5))
        wait_until(lambda: blocked_count(r) == 1, 5, "a blocked client")
        assert srv.server is not None
        # as another module's command would (the store is thread-safe; the loop is idle)
        with srv.server.structures.edit(b"moved", ListIndex) as e:
            e.put(pack_position(0), b"hij")
        t.join(3)
        assert out == [(b"moved", b"hij")] and r.exists("moved") == 0
        r.close()


def test_shutdown_does_not_wait_for_a_client_blocked_without_timeout(tmp_path):
    srv = BitkvProcess(tmp_path / "db", free_port())
    s = socket.create_connection(("127.0.0.1", srv.port))
    try:
        s.sendall(b"*3\r\n$5\r\nBLPOP\r\n$1\r\nq\r\n$1\r\n0\r\n")
        c = srv.client()
        wait_until(lambda: blocked_count(c) == 1, 5, "a blocked client")
        c.close()
        started = time.monotonic()
        srv.stop()  # SIGTERM; the server waits up to 30 s for commands in progress
        assert time.monotonic() - started < 5
        assert srv.proc.returncode == 0
    finally:
        s.close()
        srv.stop()


def test_a_list_renamed_into_place_serves_a_blocked_client_at_once(tmp_path, monkeypatch):
    """Regression: RENAME (and COPY) of a list onto a key a client is blocked on signalled
    nothing; the client found the list only at its own next look at its keys. With that look
    30 s away, the client is still answered at once."""
    from bitkv.server import ServerThread
    from bitkv.server.commands import blocking

    monkeypatch.setattr(blocking, "HANGUP_CHECK_S", 30.0)
    with ServerThread(dir=str(tmp_path / "db"), port=0) as srv:
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(
            redis.Redis(port=srv.port).blpop(["dst"], timeout=25)), daemon=True)
        waiter.start()
        r = redis.Redis(port=srv.port)
        wait_until(lambda: r.info("clients")["blocked_clients"] == 1, 10, "the BLPOP to block")
        r.rpush("src", "moved")
        renamed = time.monotonic()
        r.rename("src", "dst")
        waiter.join(30)
        # at once (without the signal it took 5 s here: the client was served by a later look)
        assert time.monotonic() - renamed < 2
        assert got == [(b"dst", b"moved")]
        assert r.exists("dst") == 0
