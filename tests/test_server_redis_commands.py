"""The keyspace and string commands of issue 17 (RENAME, COPY, INCRBYFLOAT, the bit commands,
LCS, OBJECT, EXPIRETIME...), WATCH/UNWATCH and CONFIG SET of Redis's tuning parameters, against
a real `bitkv serve` process, each reply compared with a real redis-server 7.0's."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from procs import BitkvProcess, free_port, needs_redis, redis
from redis_compare import replies

FAR_MS = 4102444800123  # 2100-01-01, and 123 ms: an absolute expiry both servers agree on


@pytest.fixture
def r(bitkv_server):
    client = bitkv_server.client()
    client.flushall()
    yield client
    client.close()


# Each script runs on an empty server; every reply (and error text) must be Redis's.
SCRIPTS: dict[str, list[tuple[Any, ...]]] = {
    "rename": [
        ("SET", "a", "1"), ("PEXPIREAT", "a", FAR_MS), ("RENAME", "a", "b"), ("EXISTS", "a"),
        ("GET", "b"), ("PEXPIRETIME", "b"), ("RENAME", "missing", "x"), ("RENAME", "b", "b"),
        ("RENAMENX", "b", "b"), ("SET", "c", "3"), ("RENAMENX", "b", "c"), ("GET", "b"),
        ("RENAMENX", "b", "d"), ("PEXPIRETIME", "d"), ("SET", "e", "5"),
        ("RENAME", "e", "d"), ("PEXPIRETIME", "d"), ("GET", "d"), ("RENAMENX", "zz", "d"),
        ("RENAME", "a"),
    ],
    "copy": [
        ("SET", "s", "v"), ("PEXPIREAT", "s", FAR_MS), ("COPY", "s", "t"), ("GET", "t"),
        ("PEXPIRETIME", "t"), ("GET", "s"), ("SET", "u", "other"), ("COPY", "s", "u"),
        ("GET", "u"), ("COPY", "s", "u", "REPLACE"), ("GET", "u"), ("COPY", "s", "s"),
        ("COPY", "missing", "x"), ("COPY", "s", "w", "DB", "0"), ("COPY", "s", "w", "DB", "x"),
        ("COPY", "s", "w", "BOGUS"), ("COPY", "s", "w", "DB"),
    ],
    "touch_randomkey_expiretime": [
        ("RANDOMKEY",), ("SET", "k", "v"), ("RANDOMKEY",), ("TOUCH", "k", "k", "nope"),
        ("EXPIRETIME", "k"), ("PEXPIRETIME", "k"), ("EXPIRETIME", "nope"),
        ("PEXPIRETIME", "nope"), ("PEXPIREAT", "k", FAR_MS), ("EXPIRETIME", "k"),
        ("PEXPIRETIME", "k"), ("EXPIREAT", "k", 4102444800), ("PEXPIRETIME", "k"),
    ],
    "expire_ranges": [
        ("SET", "k", "v"),
        ("EXPIRE", "k", "-9223372036854776"), ("EXPIRE", "k", "9223372036854776"),
        ("EXPIRE", "k", "9223372036854775807"), ("PEXPIRE", "k", "9223372036854770000"),
        ("EXISTS", "k"), ("PEXPIREAT", "k", "9223370399119966"), ("PEXPIRETIME", "k"),
        ("EXPIRE", "k", "-9223372036854775"), ("EXISTS", "k"), ("SET", "k", "v"),
        ("EXPIREAT", "k", "9223372036854775"), ("EXPIRETIME", "k"),
        ("SET", "k", "v", "EX", "9223372036854775"), ("SET", "k", "v", "EX", "4000000000"),
        # (no two expiries in one script may be equal but for the clock: GT/LT would race)
        ("EXPIRE", "k", "5", "NX"), ("EXPIRE", "k", "5", "XX"), ("EXPIRE", "k", "100", "GT"),
        ("EXPIRE", "k", "50", "LT"), ("EXPIRE", "k", "60", "LT"), ("EXPIRE", "k", "40", "GT"),
        ("EXPIRE", "k", "5", "NX", "XX"),
        ("EXPIRE", "k", "5", "GT", "LT"), ("EXPIRE", "k", "5", "BOGUS"),
        ("PERSIST", "k"), ("EXPIRE", "k", "5", "GT"), ("EXPIRE", "k", "5", "LT"),
        ("EXPIRE", "k", "", "NX"),
    ],
    "incrbyfloat": [
        ("INCRBYFLOAT", "f", "10.5"), ("INCRBYFLOAT", "f", "3.0e3"), ("INCRBYFLOAT", "f", "-1.1"),
        ("SET", "f", "1"), ("INCRBYFLOAT", "f", "1.1"), ("SET", "g", "17179869184"),
        ("INCRBYFLOAT", "g", "1.5"), ("INCRBYFLOAT", "g", "17179869184"),
        ("SET", "h", "0"), ("INCRBYFLOAT", "h", "+inf"), ("INCRBYFLOAT", "h", "nan"),
        ("INCRBYFLOAT", "h", " 1"), ("INCRBYFLOAT", "h", "1 "), ("INCRBYFLOAT", "h", "x"),
        ("INCRBYFLOAT", "h", ""), ("SET", "h", "1 "), ("INCRBYFLOAT", "h", "1"),
        ("SET", "z", "0.024390243902439025"), ("INCRBYFLOAT", "z", "-0.024390243902439025"),
        ("SET", "e", "5"), ("PEXPIREAT", "e", FAR_MS), ("INCRBYFLOAT", "e", "0.25"),
        ("PEXPIRETIME", "e"), ("INCRBYFLOAT", "n", "-2.5e-3"), ("INCRBYFLOAT", "n", "1e10"),
        ("INCRBYFLOAT", "x", "0x10"), ("INCRBYFLOAT", "y", "1_0"),
    ],
    "bits": [
        ("SETBIT", "b", 7, 1), ("GET", "b"), ("SETBIT", "b", 7, 1), ("SETBIT", "b", 7, 0),
        ("SETBIT", "b", 100, 1), ("STRLEN", "b"), ("GETBIT", "b", 100), ("GETBIT", "b", 99),
        ("GETBIT", "b", 100000), ("GETBIT", "nope", 3), ("SETBIT", "b", -1, 1),
        ("SETBIT", "b", 1, 2), ("SETBIT", "b", "x", 1), ("SETBIT", "b", 4294967296, 1),
        ("GETBIT", "b", -1), ("SET", "p", "\xff\xf0\x00"), ("PEXPIREAT", "p", FAR_MS),
        ("SETBIT", "p", 0, 0), ("PEXPIRETIME", "p"),
        ("SET", "c", "foobar"), ("BITCOUNT", "c"), ("BITCOUNT", "c", 0, 0),
        ("BITCOUNT", "c", 1, 1), ("BITCOUNT", "c", 1, 1, "BYTE"), ("BITCOUNT", "c", 5, 30, "BIT"),
        ("BITCOUNT", "c", -3, -1, "BIT"), ("BITCOUNT", "c", -1, -3), ("BITCOUNT", "c", 0),
        ("BITCOUNT", "c", 0, 1, "WORD"), ("BITCOUNT", "nope"), ("BITCOUNT", "nope", 0, 1),
        ("BITCOUNT", "c", 100, 200), ("BITCOUNT", "c", "a", "b"),
        ("SET", "q", "\xff\xf0\x00"), ("BITPOS", "q", 0), ("BITPOS", "q", 1),
        ("SET", "q2", "\x00\xff\xf0"), ("BITPOS", "q2", 1, 0), ("BITPOS", "q2", 1, 2, -1),
        ("BITPOS", "q2", 1, 7, 15, "BIT"), ("BITPOS", "q2", 1, 2, -1, "BYTE"),
        ("SET", "ones", "\xff\xff"), ("BITPOS", "ones", 0), ("BITPOS", "ones", 0, 0, -1),
        ("BITPOS", "ones", 0, 1), ("BITPOS", "nope", 0), ("BITPOS", "nope", 1),
        ("BITPOS", "q", 2), ("BITPOS", "q", 1, 5, 1), ("BITPOS", "q", 0, 3, 20, "BIT"),
        ("BITPOS", "q", 1, 0, -1, "BIT", "x"), ("SET", "empty", ""), ("BITPOS", "empty", 0),
        ("BITPOS", "empty", 1), ("BITPOS", "q", 0, 1, 2, "BYTES"),
        ("SET", "x", "abc"), ("SET", "y", "a\xff"), ("BITOP", "AND", "d", "x", "y"),
        ("GET", "d"), ("BITOP", "OR", "d", "x", "y", "nope"), ("GET", "d"),
        ("BITOP", "XOR", "d", "x", "y"), ("GET", "d"), ("BITOP", "NOT", "d", "x"), ("GET", "d"),
        ("BITOP", "NOT", "d", "x", "y"), ("BITOP", "NAND", "d", "x"),
        ("BITOP", "AND", "d", "nope", "nope2"), ("EXISTS", "d"),
    ],
    "lcs": [
        ("SET", "a", "ohmytext"), ("SET", "b", "mynewtext"), ("LCS", "a", "b"),
        ("LCS", "a", "b", "LEN"), ("LCS", "a", "b", "IDX"),
        ("LCS", "a", "b", "IDX", "WITHMATCHLEN"),
        ("LCS", "a", "b", "IDX", "MINMATCHLEN", 4), ("LCS", "a", "b", "IDX", "MINMATCHLEN", -1),
        ("LCS", "a", "b", "LEN", "IDX"), ("LCS", "a", "b", "BOGUS"), ("LCS", "a", "nope"),
        ("LCS", "a", "b", "MINMATCHLEN", "x"), ("LCS", "nope", "nope2", "IDX"),
        ("SET", "r1", "GGCACCACTGTCCCAGGAAACTTTCCGGTCCTTTAGGCATCCAAATGCAGT"),
        ("SET", "r2", "ATGGCACCGTCCCAGAAACCTTCGGCCATTCAGGCAGCCATCCAAGTCGAC"),
        ("LCS", "r1", "r2"), ("LCS", "r1", "r2", "IDX", "WITHMATCHLEN", "MINMATCHLEN", 3),
    ],
    "object": [
        ("SET", "i", "12345"), ("SET", "s", "short"), ("SET", "l", "x" * 45),
        ("SET", "z", "012"), ("OBJECT", "ENCODING", "i"), ("OBJECT", "ENCODING", "s"),
        ("OBJECT", "ENCODING", "l"), ("OBJECT", "ENCODING", "z"), ("OBJECT", "ENCODING", "nope"),
        ("OBJECT", "REFCOUNT", "s"), ("OBJECT", "FREQ", "s"), ("OBJECT", "BOGUS", "s"),
        ("OBJECT", "ENCODING"), ("OBJECT", "ENCODING", "s", "extra"),
    ],
    "watch_errors": [
        ("MULTI",), ("WATCH", "k"), ("SET", "k", "1"), ("EXEC",), ("UNWATCH",), ("WATCH",),
        ("MULTI",), ("UNWATCH",), ("EXEC",),
    ],
    "function_flush": [
        ("FUNCTION", "FLUSH"), ("FUNCTION", "FLUSH", "ASYNC"), ("FUNCTION", "FLUSH", "BAD"),
        ("FUNCTION", "LIST"),
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


def test_rename_and_copy_keep_ttl_and_survive_a_restart(tmp_path):
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        r = srv.client()
        r.set("src", "v", px=60_000)
        r.set("dst", "old")
        assert r.rename("src", "dst") is True
        assert r.get("dst") == b"v" and r.exists("src") == 0
        assert 59_000 < r.pttl("dst") <= 60_000
        assert r.copy("dst", "copy") is True
        assert 59_000 < r.pttl("copy") <= 60_000
        r.close()
    finally:
        srv.stop()
    # Reopened from its log: the move is there whole, the TTLs too.
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        c = srv.client()
        assert c.get("dst") == b"v" and c.exists("src") == 0 and c.get("copy") == b"v"
        assert 50_000 < c.pttl("dst") <= 60_000
        c.close()
    finally:
        srv.stop()


def test_expire_out_of_range_keeps_the_key(r):
    # Regression: -9223372036854776 seconds passed bitkv's floor-divided bound, so the key
    # was deleted (a time in the past) where Redis answers an error and keeps it.
    r.set("k", "v")
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'expire' command"):
        r.execute_command("EXPIRE", "k", "-9223372036854776")
    assert r.get("k") == b"v"


def test_far_expiries_redis_accepts_are_accepted(r):
    # Regression: bitkv refused expiries more than 100 years ahead, which Redis accepts.
    r.set("k", "v")
    assert r.execute_command("PEXPIREAT", "k", "9223370399119966") == 1
    assert r.execute_command("PEXPIRETIME", "k") == 9223370399119966
    assert r.set("k", "v", ex=200 * 365 * 86400) is True
    assert r.ttl("k") > 199 * 365 * 86400
    assert r.getex("k", px=300 * 365 * 86400 * 1000) == b"v"
    assert r.execute_command("SETEX", "k2", 10**12, "v") is True


def test_incrbyfloat_keeps_ttl_and_answers_like_redis(r):
    r.set("f", "1.5", ex=100)
    assert r.incrbyfloat("f", 0.25) == 1.75
    assert r.get("f") == b"1.75"
    assert 99 <= r.ttl("f") <= 100
    r.set("big", "1e300")
    assert r.incrbyfloat("big", 1) > 1e299
    r.set("huge", "1e4932")
    with pytest.raises(redis.ResponseError, match="would produce NaN or Infinity"):
        r.incrbyfloat("huge", "1e4932")
    assert r.get("huge") == b"1e4932"


def test_setbit_grows_with_zeros_and_keeps_ttl(r):
    r.set("b", b"\x80", ex=100)
    assert r.setbit("b", 23, 1) == 0
    assert r.get("b") == b"\x80\x00\x01"
    assert 99 <= r.ttl("b") <= 100
    assert r.bitcount("b") == 2


def test_lcs_refuses_a_table_beyond_proto_max_bulk_len(tmp_path):
    srv = BitkvProcess(tmp_path / "db", free_port(), "--max-bulk-len", "1000")
    try:
        c = srv.client()
        c.set("a", "x" * 10)
        c.set("b", "x" * 10)
        assert c.execute_command("LCS", "a", "b", "LEN") == 10  # 121 cells * 4 bytes
        c.set("b", "x" * 30)  # 341 cells * 4 bytes
        with pytest.raises(redis.ResponseError, match="exceeds proto-max-bulk-len"):
            c.execute_command("LCS", "a", "b")
        c.close()
    finally:
        srv.stop()


# -- WATCH -------------------------------------------------------------------------------------

def exec_after(r: redis.Redis, keys: list[str], between: Any) -> Any:
    """WATCH ``keys``, run ``between()``, then MULTI / PING / EXEC: EXEC's raw reply."""
    r.execute_command("WATCH", *keys)
    between()
    r.execute_command("MULTI")
    r.execute_command("PING")
    return r.execute_command("EXEC")


def test_watch_aborts_exec_when_another_client_writes(r, bitkv_server):
    other = bitkv_server.client()
    r.set("k", "1")
    assert exec_after(r, ["k"], lambda: other.set("k", "1")) is None  # same value: still
    assert exec_after(r, ["k"], lambda: None) == [b"PONG"]
    assert exec_after(r, ["a", "k", "b"], lambda: other.incr("k")) is None
    assert exec_after(r, ["k"], lambda: other.expire("k", 100)) is None
    assert exec_after(r, ["k"], lambda: other.persist("k")) is None
    assert exec_after(r, ["k"], lambda: other.persist("k")) == [b"PONG"]  # nothing to remove
    assert exec_after(r, ["k"], lambda: other.delete("k")) is None
    assert exec_after(r, ["k"], lambda: other.set("k2", "x")) == [b"PONG"]  # another key
    assert exec_after(r, ["k"], lambda: other.set("k", "new")) is None  # created
    assert exec_after(r, ["k"], lambda: other.rename("k", "k3")) is None
    assert exec_after(r, ["k3"], lambda: other.setbit("k3", 0, 1)) is None
    other.close()


def test_watch_aborts_on_own_writes_expiry_and_flush(r):
    r.set("k", "v")
    assert exec_after(r, ["k"], lambda: r.append("k", "x")) is None
    r.set("t", "v", px=100)
    assert exec_after(r, ["t"], lambda: time.sleep(0.25)) is None  # expired meanwhile
    r.set("k", "v")
    assert exec_after(r, ["k", "absent"], lambda: r.flushdb()) is None
    # FLUSHDB touches only the watched keys that existed; an expired-at-WATCH key is no
    # change either (as Redis 7.0)
    assert exec_after(r, ["absent"], lambda: r.flushall()) == [b"PONG"]
    r.set("stale", "v", px=1)
    time.sleep(0.05)
    assert exec_after(r, ["stale"], lambda: r.delete("stale")) == [b"PONG"]


def test_watch_is_cleared_by_exec_discard_unwatch_and_reset(r, bitkv_server):
    other = bitkv_server.client()
    r.set("k", "v")
    assert exec_after(r, ["k"], lambda: other.set("k", "2")) is None
    # after a failed EXEC the key is no longer watched
    r.execute_command("MULTI")
    other.set("k", "3")
    assert r.execute_command("EXEC") == []
    for clear in (("UNWATCH",), ("RESET",)):
        r.execute_command("WATCH", "k")
        assert r.execute_command(*clear) in (b"OK", b"RESET", "RESET", True)
        other.set("k", "4")
        r.execute_command("MULTI")
        assert r.execute_command("EXEC") == []
    r.execute_command("WATCH", "k")
    other.set("k", "5")
    r.execute_command("MULTI")
    assert r.execute_command("DISCARD") == b"OK"
    r.execute_command("MULTI")
    assert r.execute_command("EXEC") == []  # DISCARD cleared the dirty watch
    other.close()


def test_watch_abort_is_a_null_array_in_resp2_and_resp3(bitkv_server):
    for protocol in (2, 3):
        c = redis.Redis(host="127.0.0.1", port=bitkv_server.port, protocol=protocol)
        other = bitkv_server.client()
        c.execute_command("WATCH", "n")
        other.set("n", "1")
        c.execute_command("MULTI")
        c.execute_command("GET", "n")
        conn = c.connection_pool.get_connection()
        conn.send_command("EXEC")
        raw = conn._sock.recv(64)  # the exact bytes: *-1 (RESP2), _ (RESP3)
        assert raw == (b"*-1\r\n" if protocol == 2 else b"_\r\n")
        c.connection_pool.release(conn)
        c.close()
        other.close()


def test_watch_retry_loop_of_redis_py_counts_every_increment(r, bitkv_server):
    """redis-py's optimistic transaction, as its docs show it, from several threads."""
    threads, rounds = 4, 50
    retries = []

    def worker() -> None:
        c = bitkv_server.client()
        for _ in range(rounds):
            with c.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch("counter")
                        value = int(pipe.get("counter") or 0)
                        pipe.multi()
                        pipe.set("counter", value + 1)
                        pipe.execute()
                        break
                    except redis.WatchError:
                        retries.append(1)
        c.close()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    # GET-then-SET without WATCH would lose increments under this contention.
    assert int(r.get("counter")) == threads * rounds
    assert r.transaction(lambda pipe: pipe.get("counter"), "counter", value_from_callable=True
                         ) == str(threads * rounds).encode()


def test_redis_py_lock_acquire_and_ownership(r, bitkv_server):
    """redis-py's Lock: acquiring (SET NX PX), blocking, expiry and ownership need no
    scripting; releasing and extending run Lua scripts, which bitkv does not."""
    first = r.lock("resource", timeout=0.3)
    assert first.acquire(blocking=False) is True
    assert first.locked() and first.owned()
    other = bitkv_server.client().lock("resource", timeout=5)
    assert other.acquire(blocking=False) is False
    assert other.acquire(blocking=True, blocking_timeout=2) is True  # after the expiry
    assert other.owned() and not first.owned()
    with pytest.raises(redis.ResponseError, match="unknown command"):
        other.release()


# -- CONFIG SET of tuning parameters ------------------------------------------------------------

def test_config_set_records_tuning_parameters(r, tmp_path):
    assert r.config_get("hash-max-listpack-entries") == {"hash-max-listpack-entries": "512"}
    assert r.config_set("hash-max-listpack-entries", 16) is True
    assert r.config_get("hash-max-listpack-entries") == {"hash-max-listpack-entries": "16"}
    assert r.execute_command("CONFIG", "SET", "appendonly", "NO", "save", "900 1 300 10",
                             "auto-aof-rewrite-min-size", "1mb") == b"OK"
    assert r.config_get("appendonly")["appendonly"] == "no"
    assert r.config_get("save")["save"] == "900 1 300 10"
    assert r.config_get("auto-aof-rewrite-min-size")["auto-aof-rewrite-min-size"] == "1048576"
    assert "zset-max-listpack-value" in r.config_get("zset-max-*")
    # a malformed value is refused, and nothing of that CONFIG SET is recorded
    for name, value in (("hz", "fast"), ("activerehashing", "maybe"), ("save", "900"),
                        ("stream-node-max-bytes", "4 kb")):
        with pytest.raises(redis.ResponseError,
                           match=f"CONFIG SET failed \\(possibly related to argument '{name}'\\)"):
            r.execute_command("CONFIG", "SET", "list-compress-depth", "3", name, value)
    assert r.config_get("list-compress-depth")["list-compress-depth"] == "0"
    with pytest.raises(redis.ResponseError, match="Unknown option"):
        r.config_set("no-such-parameter", "1")
    # recorded per server: another server starts from the defaults
    srv = BitkvProcess(tmp_path / "db", free_port())
    try:
        c = srv.client()
        assert c.config_get("hash-max-listpack-entries") == {"hash-max-listpack-entries": "512"}
        c.close()
    finally:
        srv.stop()
    r.config_set("hash-max-listpack-entries", 512)
    r.config_set("appendonly", "yes")
    r.config_set("save", "")


@needs_redis
def test_tuning_defaults_are_redis_defaults(r, redis_server):
    from bitkv.server.commands import tuning

    real = redis_server.client()
    try:
        for name, (_kind, default) in tuning.TUNING.items():
            if name in ("save", "appendonly"):  # bitkv's own truth, not Redis's default
                continue
            assert real.config_get(name) == {name: default}, name
    finally:
        real.close()


def test_docs_list_every_tuning_parameter_with_its_default():
    from bitkv.server.commands import tuning

    doc = (Path(__file__).parent.parent / "docs" / "cluster.md").read_text()
    section = doc.split("## CONFIG SET: Redis's tuning parameters (no effect)", 1)[1]
    section = " ".join(section.split("\n## ", 1)[0].split())
    for name, (_kind, default) in tuning.TUNING.items():
        assert f"`{name}` {default or '(empty)'}" in section, name


def test_redis_suite_script_reads_runtest_output_and_prints_the_table():
    """scripts/redis_suite.py's reading of runtest's output (the suite itself needs a Redis
    source tree, which CI does not have)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
    import redis_suite

    output = ("Testing unit/multi\n"
              "[\x1b[0;32;49mok\x1b[0m]: MULTI / EXEC basics (0 ms)\n"
              "[\x1b[0;31;49merr\x1b[0m]: DISCARD in tests/unit/multi.tcl\n"
              "Expected 'OK' to equal or match 'QUEUED'\n"
              "[\x1b[0;32;49mok\x1b[0m]: EXEC works on WATCHed key not modified (1 ms)\n"
              "[skip]: MULTI with SHUTDOWN\n"
              "[ignore]: MULTI with BGREWRITEAOF: Not supported on external server\n"
              "[exception]: Executing test client: ERR unknown command 'rpush'\n")
    got = redis_suite.parse_output(output)
    assert got.passed == ["MULTI / EXEC basics", "EXEC works on WATCHed key not modified"]
    assert got.failed == ["DISCARD", "Executing test client: ERR unknown command 'rpush'"]
    assert got.aborted == "the unit stopped at an exception"
    bitkv = {"multi": got}
    real = {"multi": redis_suite.UnitResult(passed=["a", "b", "c", "d"])}
    lines = redis_suite.table(["multi"], real, bitkv, markdown=True).splitlines()
    assert lines[2] == "| multi | 4 | 2 | 50% |" and lines[-1] == "| total | 4 | 2 | 50% |"


def test_redis_suite_gives_runtest_a_free_base_port(tmp_path, monkeypatch):
    """Two runs on one machine both took runtest's default test-server port (21079): the
    second failed every unit with "address already in use". Each run now picks a free one."""
    import socket
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).parent.parent / "scripts"))
    import redis_suite

    seen: list[list[str]] = []

    def fake_run(argv, **kwargs):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout=b"", stderr=b"")

    monkeypatch.setattr(redis_suite.subprocess, "run", fake_run)
    redis_suite.run_unit(tmp_path, "multi", 1234, tmp_path / "out", [])
    base = int(seen[0][seen[0].index("--baseport") + 1])
    for port in (base - 32, base - 32 + 10000):  # runtest binds both
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
