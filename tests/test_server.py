"""`bitkv serve`: every command through redis-py against a real server on loopback."""

from __future__ import annotations

import socket
import time

import pytest

redis = pytest.importorskip("redis", reason="redis-py is needed for the server tests")

from bitkv.server import ServerThread  # noqa: E402

ResponseError = redis.exceptions.ResponseError


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("server") / "db"
    with ServerThread(dir=str(path), port=0) as srv:
        yield srv


@pytest.fixture
def r(server):
    client = redis.Redis(host="127.0.0.1", port=server.port, protocol=2, socket_timeout=10)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def r3(server):
    client = redis.Redis(host="127.0.0.1", port=server.port, protocol=3, socket_timeout=10)
    yield client
    client.close()


def raw(port: int, payload: bytes, expect: int | None = None, timeout: float = 5.0) -> bytes:
    """Send ``payload``; read ``expect`` bytes, or until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while expect is None or len(data) < expect:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ResponseError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# -- connection ------------------------------------------------------------------------------

def test_ping_echo(r, server):
    assert r.ping() is True
    assert raw(server.port, b"PING hello\r\n", 11) == b"$5\r\nhello\r\n"
    assert r.echo(b"bin\x00ary\r\n") == b"bin\x00ary\r\n"
    assert error_of(r.execute_command, "PING", "a", "b") == \
        "wrong number of arguments for 'ping' command"
    assert raw(server.port, b"PING\r\n", 7) == b"+PONG\r\n"


def test_unknown_command_and_arity_errors_have_redis_texts(server):
    got = raw(server.port, b"*3\r\n$3\r\nFOO\r\n$1\r\na\r\n$2\r\nbc\r\n", 10)
    got += raw(server.port, b"*1\r\n$3\r\nGET\r\n", 10)
    got += raw(server.port, b"nosuch\r\n", 10)
    assert got == (b"-ERR unknown command 'FOO', with args beginning with: 'a' 'bc' \r\n"
                   b"-ERR wrong number of arguments for 'get' command\r\n"
                   b"-ERR unknown command 'nosuch', with args beginning with: \r\n")


def test_commands_are_case_insensitive(r):
    assert r.execute_command("sEt", "k", "v") is True
    assert r.execute_command("get", "k") == b"v"


def test_select(r):
    assert r.execute_command("SELECT", 0) is True
    assert error_of(r.execute_command, "SELECT", 1) == "DB index is out of range"
    assert error_of(r.execute_command, "SELECT", "x") == "value is not an integer or out of range"


def test_quit_closes_after_reply(server):
    got = raw(server.port, b"PING\r\nQUIT\r\nPING\r\n")
    assert got == b"+PONG\r\n+OK\r\n"  # nothing after QUIT, then the server closed


def test_hello_and_resp3(server, r3):
    got = raw(server.port, b"HELLO 3\r\nGET nosuch\r\nCONFIG GET appendonly\r\nHELLO 2\r\n"
                           b"GET nosuch\r\nQUIT\r\n")
    assert got.startswith(b"%")  # a RESP3 map
    assert b"_\r\n%1\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n*" in got
    assert got.endswith(b"$-1\r\n+OK\r\n")
    assert r3.set("k", "v") is True
    assert r3.get("k") == b"v"
    assert r3.get("nosuch") is None
    assert r3.ttl("k") == -1
    assert r3.info("keyspace")["db0"]["keys"] >= 1
    assert r3.mget("k", "nosuch") == [b"v", None]


def test_hello_errors(r):
    assert error_of(r.execute_command, "HELLO", 4) == "NOPROTO unsupported protocol version"
    assert error_of(r.execute_command, "HELLO", "x") == \
        "Protocol version is not an integer or out of range"
    reply = r.execute_command("HELLO", 2, "SETNAME", "cli")
    fields = dict(zip(reply[::2], reply[1::2], strict=True))
    assert fields[b"proto"] == 2
    assert fields[b"mode"] == b"standalone"
    assert r.execute_command("CLIENT", "GETNAME") == b"cli"


def test_client_commands(r):
    assert isinstance(r.client_id(), int)
    assert r.client_setname("worker-1") is True
    assert r.execute_command("CLIENT", "GETNAME") == b"worker-1"
    assert r.execute_command("CLIENT", "SETINFO", "LIB-NAME", "x") == b"OK"
    assert any(c["name"] == "worker-1" for c in r.client_list())
    assert "unknown subcommand" in error_of(r.execute_command, "CLIENT", "NOPE")
    assert "Client names cannot contain spaces" in error_of(r.client_setname, "a b")


def test_time(r):
    seconds, micros = r.time()
    assert abs(seconds - time.time()) < 5
    assert 0 <= micros < 1_000_000


# -- strings ---------------------------------------------------------------------------------

def test_get_set_binary_and_large_values(r):
    assert r.get("missing") is None
    assert r.set("k", b"") is True
    assert r.get("k") == b""
    blob = bytes(range(256)) * 4096  # 1 MiB with every byte value, CRLFs included
    assert r.set(b"bin\x00key\r\n", blob) is True
    assert r.get(b"bin\x00key\r\n") == blob
    assert r.set("k", "overwritten") is True
    assert r.get("k") == b"overwritten"


def test_empty_key_is_refused_for_writes_and_missing_for_reads(r):
    assert "key must not be empty" in error_of(r.set, "", "v")
    assert r.get("") is None
    assert r.exists("") == 0
    assert r.delete("") == 0
    assert r.ttl("") == -2


def test_set_nx_xx_get(r):
    assert r.set("k", "1", nx=True) is True
    assert r.set("k", "2", nx=True) is None
    assert r.set("other", "x", xx=True) is None
    assert r.exists("other") == 0
    assert r.set("k", "3", xx=True) is True
    assert r.set("k", "4", get=True) == b"3"
    assert r.set("new", "v", get=True) is None
    assert r.get("new") == b"v"
    assert r.set("k", "5", nx=True, get=True) == b"4"  # NX failed: the old value, unchanged
    assert r.get("k") == b"4"


def test_set_expiry_options(r):
    now = time.time()
    assert r.set("ex", "v", ex=100) is True
    assert 99 <= r.ttl("ex") <= 100
    assert r.set("px", "v", px=100_000) is True
    assert 99_000 <= r.pttl("px") <= 100_000
    assert r.set("exat", "v", exat=int(now) + 200) is True
    assert 190 <= r.ttl("exat") <= 200
    assert r.set("pxat", "v", pxat=int(now * 1000) + 300_000) is True
    assert 290 <= r.ttl("pxat") <= 300
    assert r.set("ex", "w", keepttl=True) is True
    assert 90 <= r.ttl("ex") <= 100
    assert r.set("ex", "w") is True
    assert r.ttl("ex") == -1  # a plain SET clears the TTL


def test_set_exat_in_the_past_deletes(r):
    r.set("k", "old")
    assert r.set("k", "new", exat=1) is True
    assert r.exists("k") == 0
    r.set("k", "old")
    assert r.set("k", "new", pxat=1000, get=True) == b"old"
    assert r.exists("k") == 0


def test_set_syntax_and_expire_errors(r):
    for args in (("NX", "XX"), ("EX", "10", "PX", "10"), ("EX",), ("KEEPTTL", "EX", "5"),
                 ("BOGUS",)):
        assert error_of(r.execute_command, "SET", "k", "v", *args) == "syntax error"
    assert error_of(r.execute_command, "SET", "k", "v", "EX", "0") == \
        "invalid expire time in 'set' command"
    assert error_of(r.execute_command, "SET", "k", "v", "PX", "-5") == \
        "invalid expire time in 'set' command"
    assert error_of(r.execute_command, "SET", "k", "v", "EX", "1.5") == \
        "value is not an integer or out of range"
    assert r.exists("k") == 0


def test_set_expires_for_real(r):
    r.set("short", "v", px=50)
    assert r.get("short") == b"v"
    time.sleep(0.15)
    assert r.get("short") is None
    assert r.ttl("short") == -2


def test_setnx_setex_psetex(r):
    assert r.setnx("k", "1") is True
    assert r.setnx("k", "2") is False
    assert r.get("k") == b"1"
    assert r.execute_command("SETEX", "e", 100, "v") is True
    assert 99 <= r.ttl("e") <= 100
    assert r.psetex("p", 100_000, "v") is True
    assert 99_000 <= r.pttl("p") <= 100_000
    assert error_of(r.execute_command, "SETEX", "e", 0, "v") == \
        "invalid expire time in 'setex' command"
    assert error_of(r.psetex, "p", -1, "v") == "invalid expire time in 'psetex' command"


def test_getdel_getex(r):
    r.set("k", "v")
    assert r.getdel("k") == b"v"
    assert r.getdel("k") is None
    r.set("k", "v")
    assert r.getex("k") == b"v"
    assert r.ttl("k") == -1
    assert r.getex("k", ex=100) == b"v"
    assert 99 <= r.ttl("k") <= 100
    assert r.getex("k", px=200_000) == b"v"
    assert 199 <= r.ttl("k") <= 200
    assert r.getex("k", persist=True) == b"v"
    assert r.ttl("k") == -1
    assert r.getex("k", exat=int(time.time()) + 50) == b"v"
    assert 45 <= r.ttl("k") <= 50
    assert r.getex("k", pxat=1) == b"v"  # in the past: deleted
    assert r.exists("k") == 0
    assert r.getex("missing", ex=10) is None
    assert error_of(r.execute_command, "GETEX", "k", "EX", "1", "PERSIST") == "syntax error"
    assert error_of(r.execute_command, "GETEX", "k", "EX", "0") == \
        "invalid expire time in 'getex' command"


def test_mget_mset_msetnx(r):
    assert r.mset({"a": "1", "b": "2", "c": "3"}) is True
    assert r.mget("a", "b", "missing", "c") == [b"1", b"2", None, b"3"]
    assert error_of(r.execute_command, "MSET", "a", "1", "b") == \
        "wrong number of arguments for 'mset' command"
    assert r.msetnx({"x": "1", "a": "9"}) is False
    assert r.exists("x") == 0
    assert r.get("a") == b"1"
    assert r.msetnx({"x": "1", "y": "2"}) is True
    assert r.mget("x", "y") == [b"1", b"2"]
    assert r.execute_command("MSET", "dup", "2", "dup", "3") is True
    assert r.get("dup") == b"3"


def test_mset_is_atomic_with_a_bad_key(r):
    r.set("a", "old")
    assert "key must not be empty" in error_of(r.execute_command, "MSET", "a", "new", "", "x")
    assert r.get("a") == b"old"


def test_append_strlen(r):
    assert r.append("k", "ab") == 2
    assert r.append("k", "cd") == 4
    assert r.get("k") == b"abcd"
    assert r.strlen("k") == 4
    assert r.strlen("missing") == 0
    r.set("t", "x", ex=100)
    r.append("t", "y")
    assert 99 <= r.ttl("t") <= 100  # APPEND keeps the TTL


def test_incr_family(r):
    assert r.incr("n") == 1
    assert r.incrby("n", 10) == 11
    assert r.decr("n") == 10
    assert r.decrby("n", 15) == -5
    assert r.get("n") == b"-5"
    r.set("s", "abc")
    assert error_of(r.incr, "s") == "value is not an integer or out of range"
    r.set("s", " 1")
    assert error_of(r.incr, "s") == "value is not an integer or out of range"
    assert error_of(r.incrby, "n", "x") == "value is not an integer or out of range"
    r.set("big", str(2**63 - 1))
    assert error_of(r.incr, "big") == "increment or decrement would overflow"
    assert r.get("big") == str(2**63 - 1).encode()
    assert error_of(r.execute_command, "DECRBY", "n", str(-(2**63))) == \
        "decrement would overflow"
    r.set("ttl", "5", ex=100)
    assert r.incr("ttl") == 6
    assert 99 <= r.ttl("ttl") <= 100  # INCR keeps the TTL


def test_getset_getrange_setrange(r):
    assert r.getset("k", "a") is None
    assert r.getset("k", "b") == b"a"
    r.set("s", "Hello World")
    assert r.getrange("s", 0, 4) == b"Hello"
    assert r.getrange("s", -5, -1) == b"World"
    assert r.getrange("s", 5, 2) == b""
    assert r.getrange("s", 0, 100) == b"Hello World"
    assert r.getrange("missing", 0, 10) == b""
    assert r.setrange("s", 6, "Redis") == 11
    assert r.get("s") == b"Hello Redis"
    assert r.setrange("pad", 3, "x") == 4
    assert r.get("pad") == b"\x00\x00\x00x"
    assert r.setrange("nothing", 5, "") == 0
    assert r.exists("nothing") == 0
    assert error_of(r.setrange, "s", -1, "x") == "offset is out of range"


# -- keys ------------------------------------------------------------------------------------

def test_del_unlink_exists_type(r):
    r.mset({"a": "1", "b": "2", "c": "3"})
    assert r.exists("a", "a", "b", "missing") == 3
    assert r.delete("a", "missing") == 1
    assert r.unlink("b", "c") == 2
    assert r.exists("a", "b", "c") == 0
    r.set("s", "v")
    assert r.type("s") == b"string"
    assert r.type("missing") == b"none"


def test_expire_family(r):
    r.set("k", "v")
    assert r.expire("k", 100) is True
    assert 99 <= r.ttl("k") <= 100
    assert r.pexpire("k", 200_000) is True
    assert 199 <= r.ttl("k") <= 200
    assert r.expireat("k", int(time.time()) + 300) is True
    assert 295 <= r.ttl("k") <= 300
    assert r.pexpireat("k", int(time.time() * 1000) + 400_000) is True
    assert 395 <= r.ttl("k") <= 400
    assert r.expire("missing", 10) is False
    assert r.persist("k") is True
    assert r.persist("k") is False
    assert r.persist("missing") is False
    assert r.ttl("k") == -1


def test_expire_in_the_past_deletes(r):
    for cmd, arg in (("EXPIRE", -1), ("EXPIRE", 0), ("PEXPIRE", -5), ("EXPIREAT", 1),
                     ("PEXPIREAT", 1000)):
        r.set("k", "v")
        assert r.execute_command(cmd, "k", arg) == 1
        assert r.exists("k") == 0
    assert r.execute_command("EXPIRE", "k", -1) == 0  # missing stays 0


def test_expire_options(r):
    r.set("k", "v")
    assert r.expire("k", 100, xx=True) is False  # no TTL yet
    assert r.expire("k", 100, gt=True) is False  # no TTL counts as infinite
    assert r.expire("k", 100, nx=True) is True
    assert r.expire("k", 50, nx=True) is False
    assert r.expire("k", 50, gt=True) is False
    assert r.expire("k", 200, gt=True) is True
    assert r.expire("k", 300, lt=True) is False
    assert r.expire("k", 150, lt=True) is True
    assert 145 <= r.ttl("k") <= 150
    r.set("p", "v")
    assert r.expire("p", 100, lt=True) is True
    assert error_of(r.execute_command, "EXPIRE", "k", 10, "NX", "XX") == \
        "NX and XX, GT or LT options at the same time are not compatible"
    assert error_of(r.execute_command, "EXPIRE", "k", 10, "GT", "LT") == \
        "GT and LT options at the same time are not compatible"
    assert error_of(r.execute_command, "EXPIRE", "k", 10, "BOGUS") == "Unsupported option BOGUS"
    assert error_of(r.execute_command, "EXPIRE", "k", "x") == \
        "value is not an integer or out of range"


def test_ttl_pttl(r):
    assert r.ttl("missing") == -2
    assert r.pttl("missing") == -2
    r.set("k", "v")
    assert r.ttl("k") == -1
    assert r.pttl("k") == -1
    r.set("k", "v", px=2500)
    assert r.ttl("k") in (2, 3)  # rounded like Redis
    assert 2000 < r.pttl("k") <= 2500


def test_keys_patterns(r):
    r.mset({"user:1": "a", "user:2": "b", "user:10": "c", "order:1": "d", "u*": "e"})
    assert sorted(r.keys("*")) == [b"order:1", b"u*", b"user:1", b"user:10", b"user:2"]
    assert sorted(r.keys("user:*")) == [b"user:1", b"user:10", b"user:2"]
    assert sorted(r.keys("user:?")) == [b"user:1", b"user:2"]
    assert sorted(r.keys("user:[12]")) == [b"user:1", b"user:2"]
    assert sorted(r.keys("user:[^1]")) == [b"user:2"]
    assert r.keys("u\\*") == [b"u*"]
    assert r.keys("nothing*") == []


def test_scan_full_iteration(r):
    keys = {f"key:{i}".encode() for i in range(1000)}
    r.mset({k: b"v" for k in keys})
    r.set("other", "x")
    seen = []
    cursor = 0
    calls = 0
    while True:
        cursor, batch = r.scan(cursor, match="key:*", count=50)
        seen.extend(batch)
        calls += 1
        if cursor == 0:
            break
    assert set(seen) == keys
    assert len(seen) == len(keys)  # no duplicates without concurrent changes
    assert calls > 5  # COUNT is honoured (roughly, as in Redis)
    assert set(r.scan_iter(count=1000)) == keys | {b"other"}
    assert list(r.scan_iter(match="nomatch*")) == []
    assert list(r.scan_iter(_type="hash")) == []
    assert set(r.scan_iter(_type="string")) == keys | {b"other"}


def test_scan_returns_keys_present_throughout_despite_changes(r):
    stable = {f"stable:{i}".encode() for i in range(300)}
    r.mset({k: b"v" for k in stable})
    doomed = [f"doomed:{i}".encode() for i in range(300)]
    r.mset({k: b"v" for k in doomed})
    seen = set()
    cursor, step = 0, 0
    while True:
        cursor, batch = r.scan(cursor, count=20)
        seen.update(batch)
        # Change the keyspace between steps: add keys, delete others.
        r.set(f"added:{step}", "v")
        if step < len(doomed):
            r.delete(doomed[step])
        step += 1
        if cursor == 0:
            break
    assert stable <= seen


def test_scan_errors(r):
    assert error_of(r.execute_command, "SCAN", "abc") == "invalid cursor"
    assert error_of(r.execute_command, "SCAN", "0", "COUNT", "0") == "syntax error"
    assert error_of(r.execute_command, "SCAN", "0", "COUNT") == "syntax error"
    assert error_of(r.execute_command, "SCAN", "0", "BOGUS", "1") == "syntax error"
    assert r.scan(2**63)[0] == 0  # any unsigned 64-bit cursor is valid


def test_dbsize_flushdb_flushall(r):
    r.mset({f"k{i}": "v" for i in range(100)})
    assert r.dbsize() == 100
    assert r.flushdb() is True
    assert r.dbsize() == 0
    r.set("a", "b")
    assert r.flushall() is True
    assert r.dbsize() == 0
    assert r.execute_command("FLUSHDB", "ASYNC") is True
    assert error_of(r.execute_command, "FLUSHDB", "LATER") == "syntax error"


# -- server ----------------------------------------------------------------------------------

def test_info(r):
    r.set("a", "1")
    r.set("b", "2", ex=100)
    info = r.info()
    assert info["redis_version"] == "7.0.0"
    assert info["redis_mode"] == "standalone"
    assert info["aof_enabled"] == 1
    assert info["db0"] == {"keys": 2, "expires": 1, "avg_ttl": 0}
    assert info["connected_clients"] >= 1
    assert info["bitkv_sync"] == "interval"
    assert set(r.info("persistence")) >= {"aof_enabled", "rdb_last_save_time",
                                          "bitkv_segments", "bitkv_dead_bytes"}
    assert "redis_version" not in r.info("keyspace")
    assert set(r.info("server", "keyspace")) >= {"redis_version", "db0"}
    r.flushdb()
    assert "db0" not in r.info("keyspace")


def test_command_count_info_docs(r):
    count = r.command_count()
    assert count >= 50
    table = r.command()
    assert len(table) == count
    assert table["get"]["arity"] == 2
    assert "readonly" in table["get"]["flags"]
    assert table["mset"]["step_count"] == 2
    info = r.execute_command("COMMAND INFO", "get", "nosuch")
    assert info[0][0] == b"get" and info[1] is None
    docs = r.execute_command("COMMAND DOCS", "set")  # a flat list in RESP2
    assert docs[0] == b"set"
    fields = dict(zip(docs[1][::2], docs[1][1::2], strict=True))
    assert fields[b"summary"] and fields[b"group"] == b"string"
    assert b"get" in r.execute_command("COMMAND LIST")
    assert "unknown subcommand" in error_of(r.execute_command, "COMMAND", "NOPE")


def test_config_get(r, server):
    assert r.config_get("save") == {"save": ""}
    assert r.config_get("appendonly") == {"appendonly": "yes"}
    assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert r.config_get("port") == {"port": str(server.port)}
    assert r.config_get("save") | r.config_get("appendonly") == \
        {"save": "", "appendonly": "yes"}
    both = r.execute_command("CONFIG", "GET", "save", "appendonly")
    assert both == {"save": "", "appendonly": "yes"} or both == [b"save", b"", b"appendonly",
                                                                 b"yes"]
    many = r.config_get("*")
    assert {"databases", "maxclients", "proto-max-bulk-len", "bind"} <= set(many)
    assert r.config_get("nosuchparam") == {}
    assert "Unknown option" in error_of(r.config_set, "maxclients", "100")
    assert r.config_resetstat() is True


def test_save_bgsave_lastsave(r):
    r.set("k", "v")
    before = r.lastsave()
    assert r.save() is True
    assert r.lastsave() >= before
    assert r.bgsave() is True
    deadline = time.time() + 10
    while r.info("persistence")["rdb_bgsave_in_progress"] and time.time() < deadline:
        time.sleep(0.01)
    assert r.info("persistence")["rdb_last_bgsave_status"] == "ok"


def test_bgrewriteaof_compacts_in_the_background(r):
    for round_ in range(5):
        r.mset({f"k{i}": f"v{round_}-{i}" * 10 for i in range(500)})
    r.delete(*[f"k{i}" for i in range(250)])
    assert r.bgrewriteaof() is True
    deadline = time.time() + 20
    while r.info("persistence")["aof_rewrite_in_progress"] and time.time() < deadline:
        r.set("during", "compaction")  # writes go on meanwhile
        time.sleep(0.01)
    persistence = r.info("persistence")
    assert persistence["aof_rewrite_in_progress"] == 0
    assert persistence["aof_last_bgrewrite_status"] == "ok"
    assert r.get("k300") == b"v4-300" * 10
    assert r.get("k10") is None
    assert r.dbsize() == 250 + r.exists("during")  # (none if the compaction ended at once)


def test_multi_exec_discard(r):
    pipe = r.pipeline(transaction=True)
    pipe.set("a", "1").incr("a").get("a")
    assert pipe.execute() == [True, 2, b"2"]
    assert raw(r.connection_pool.connection_kwargs["port"],
               b"MULTI\r\nSET x 1\r\nDISCARD\r\nQUIT\r\n") == \
        b"+OK\r\n+QUEUED\r\n+OK\r\n+OK\r\n"
    assert r.exists("x") == 0
    assert error_of(r.execute_command, "EXEC") == "EXEC without MULTI"
    assert error_of(r.execute_command, "DISCARD") == "DISCARD without MULTI"


def test_exec_aborts_after_a_queueing_error(server):
    got = raw(server.port, b"MULTI\r\nSET tx:a 1\r\nNOSUCH\r\nEXEC\r\nGET tx:a\r\n"
                           b"MULTI\r\nMULTI\r\n"
                           b"SAVE\r\nEXEC\r\nQUIT\r\n")
    assert got == (b"+OK\r\n+QUEUED\r\n"
                   b"-ERR unknown command 'NOSUCH', with args beginning with: \r\n"
                   b"-EXECABORT Transaction discarded because of previous errors.\r\n"
                   b"$-1\r\n+OK\r\n-ERR MULTI calls can not be nested\r\n"
                   b"-ERR Command not allowed inside a transaction\r\n"
                   b"-EXECABORT Transaction discarded because of previous errors.\r\n+OK\r\n")


def test_exec_runs_commands_and_reports_their_errors(server):
    got = raw(server.port, b"MULTI\r\nSET tx:n x\r\nINCR tx:n\r\nGET tx:n\r\nEXEC\r\nQUIT\r\n")
    assert got == (b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n+OK\r\n"
                   b"-ERR value is not an integer or out of range\r\n$1\r\nx\r\n+OK\r\n")


def test_pipelining(r):
    pipe = r.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"p{i}", i)
    for i in range(2000):
        pipe.get(f"p{i}")
    pipe.incr("counter")
    pipe.set("", "bad")  # an error in the middle of a pipeline of SETs
    pipe.set("after", "ok")
    results = pipe.execute(raise_on_error=False)
    assert results[:2000] == [True] * 2000
    assert results[2000:4000] == [str(i).encode() for i in range(2000)]
    assert results[4000] == 1
    assert isinstance(results[4001], ResponseError)
    assert results[4002] is True
    assert r.get("after") == b"ok"


def test_pipelined_sets_mixed_with_other_commands_keep_order(server):
    payload = b"".join([
        b"*3\r\n$3\r\nSET\r\n$1\r\nA\r\n$1\r\n1\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nA\r\n$1\r\n2\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nA\r\n",
        b"*3\r\n$3\r\nset\r\n$1\r\nA\r\n$1\r\n3\r\n",
        b"*3\r\n$3\r\nSET\r\n$0\r\n\r\n$1\r\n4\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nB\r\n$1\r\n5\r\n",
        b"*2\r\n$4\r\nMGET\r\n$1\r\nA\r\n",
        b"QUIT\r\n",
    ])
    got = raw(server.port, payload)
    assert got == (b"+OK\r\n+OK\r\n$1\r\n2\r\n+OK\r\n-ERR key must not be empty\r\n+OK\r\n"
                   b"*1\r\n$1\r\n3\r\n+OK\r\n")
