"""The keyspace and string commands over collections (issue 17): a hash, set, list and sorted
set behave as Redis keys for EXPIRE/TTL/PERSIST, RENAME/COPY, KEYS/SCAN/DBSIZE/RANDOMKEY,
OBJECT, WATCH, and every string command; the reserved prefix is never written or listed; the
memcached port sees a collection as a miss.

The collections are written into the store before the server opens it (bitkv.structures'
own API), so these tests do not depend on the type commands; the same data is made in a
real redis-server 7.0 with HSET/SADD/RPUSH/ZADD, and the replies are compared.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from procs import RedisProcess, needs_redis, redis

import bitkv
from bitkv.server import ServerThread
from bitkv.server.app import ServerConfig
from bitkv.structures import HashIndex, ListIndex, SetIndex, Structures, ZSetIndex
from bitkv.structures.encoding import PREFIX, pack_position, pack_score

FAR_MS = 4102444800123  # 2100-01-01, and 123 ms

# The keyspace each script starts from, in both servers.
HASH = {b"f1": b"v1", b"f2": b"v2"}
SET = [b"a", b"b", b"c"]
LIST = [b"x", b"y", b"z"]
ZSET = {b"m1": 1.0, b"m2": 2.5}
COLLECTIONS = ("h", "s", "l", "z")


def seed_store(path: str) -> None:
    with bitkv.open(path) as store:
        s = Structures(store)
        with s.edit(b"h", HashIndex) as e:
            for f, v in HASH.items():
                e.put(f, v)
        with s.edit(b"s", SetIndex) as e:
            for m in SET:
                e.put(m, b"")
        with s.edit(b"l", ListIndex) as e:
            for i, v in enumerate(LIST):
                e.put(pack_position(i), v)
        with s.edit(b"z", ZSetIndex) as e:
            for m, score in ZSET.items():
                e.put(m, pack_score(score))
        store.put(b"str", b"hello")


def seed_redis(client: redis.Redis) -> None:
    client.flushall()
    client.hset("h", mapping=HASH)
    client.sadd("s", *SET)
    client.rpush("l", *LIST)
    client.zadd("z", ZSET)
    client.set("str", "hello")


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    srv = RedisProcess(Path(tmp_path_factory.mktemp("keyspace-redis")))
    yield srv
    srv.stop()


@pytest.fixture
def seeded(tmp_path: Path) -> Iterator[ServerThread]:
    """A server over a store holding h, s, l, z and the string str."""
    path = str(tmp_path / "db")
    seed_store(path)
    with ServerThread(ServerConfig(dir=path, port=0, memcached_port=0)) as srv:
        yield srv


def client(srv: ServerThread) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=srv.port, protocol=2, socket_timeout=10)


def outcome(c: redis.Redis, *args: Any) -> Any:
    try:
        return c.execute_command(*args)
    except redis.ResponseError as exc:
        return ("error", str(exc))


def run_script(c: redis.Redis, script: list[tuple[Any, ...]]) -> list[Any]:
    return [outcome(c, *cmd) for cmd in script]


def _string_commands(k: str) -> list[tuple[Any, ...]]:
    return [
        ("GET", k), ("APPEND", k, "x"), ("INCR", k), ("DECR", k), ("INCRBY", k, 2),
        ("DECRBY", k, 2), ("INCRBYFLOAT", k, "1.5"), ("SETRANGE", k, 0, "x"),
        ("SETRANGE", k, 0, ""), ("GETRANGE", k, 0, 1), ("SUBSTR", k, 0, 1), ("STRLEN", k),
        ("GETSET", k, "v"), ("GETDEL", k), ("GETEX", k), ("GETEX", k, "PERSIST"),
        ("SETBIT", k, 1, 1), ("GETBIT", k, 1), ("BITCOUNT", k), ("BITCOUNT", k, 0, 1),
        ("BITPOS", k, 1), ("LCS", k, "str"), ("LCS", "str", k), ("BITOP", "AND", "dst", k),
        ("BITOP", "OR", "dst", "str", k), ("SET", k, "v", "GET"), ("SET", k, "v", "NX"),
        ("SETNX", k, "v"), ("MSETNX", k, "v", "fresh", "v"), ("EXISTS", "fresh"),
        ("MGET", k, "str", "missing"), ("TYPE", k), ("EXISTS", k),
    ]


# Each script runs on a fresh copy of the seeded keyspace; every reply must be Redis's.
SCRIPTS: dict[str, list[tuple[Any, ...]]] = {
    "wrongtype": [cmd for k in COLLECTIONS for cmd in _string_commands(k)],
    "replaced by string writes": [
        ("SET", "h", "1"), ("TYPE", "h"), ("GET", "h"), ("SETEX", "s", 100, "v"),
        ("TYPE", "s"), ("TTL", "s"), ("PSETEX", "l", 100000, "v"), ("TYPE", "l"),
        ("MSET", "z", "zz", "q", "qq"), ("TYPE", "z"), ("MGET", "z", "q"), ("DBSIZE",),
    ],
    "set options over a collection": [
        ("SET", "h", "1", "XX"), ("TYPE", "h"), ("PEXPIREAT", "s", FAR_MS),
        ("SET", "s", "2", "KEEPTTL"), ("PEXPIRETIME", "s"), ("SET", "l", "3", "PXAT", FAR_MS),
        ("PEXPIRETIME", "l"), ("SET", "z", "4", "NX"), ("TYPE", "z"),
    ],
    "bitop destination": [
        ("BITOP", "OR", "h", "str"), ("TYPE", "h"), ("GET", "h"),
        ("BITOP", "OR", "s", "missing"), ("EXISTS", "s"), ("DBSIZE",),
    ],
    "expire": [
        ("TTL", "h"), ("PTTL", "h"), ("EXPIRETIME", "h"), ("EXPIRE", "h", 100), ("TTL", "h"),
        ("EXPIRE", "h", 50, "GT"), ("EXPIRE", "h", 200, "GT"), ("TTL", "h"),
        ("EXPIRE", "h", 300, "LT"), ("EXPIRE", "h", 100, "LT"), ("TTL", "h"),
        ("EXPIRE", "h", 100, "NX"), ("EXPIRE", "s", 100, "XX"), ("TTL", "s"),
        ("EXPIRE", "s", 100, "GT"), ("EXPIRE", "s", 100, "LT"), ("TTL", "s"),
        ("PERSIST", "s"), ("TTL", "s"), ("PERSIST", "s"), ("PERSIST", "z"),
        ("PEXPIREAT", "z", FAR_MS), ("PEXPIRETIME", "z"), ("EXPIRETIME", "z"),
        ("EXPIREAT", "z", FAR_MS // 1000, "XX"), ("EXPIRETIME", "z"),
        ("EXPIRE", "l", -1), ("EXISTS", "l"), ("TYPE", "l"), ("TTL", "l"),
        ("PEXPIREAT", "s", 1), ("EXISTS", "s"), ("DBSIZE",), ("KEYS", "l"),
        ("EXPIRE", "h", 10, "NX", "XX"),
    ],
    "rename and copy": [
        ("PEXPIREAT", "h", FAR_MS), ("RENAME", "h", "h2"), ("TYPE", "h2"), ("EXISTS", "h"),
        ("PEXPIRETIME", "h2"), ("RENAME", "s", "str"), ("TYPE", "str"), ("RENAMENX", "l", "z"),
        ("RENAMENX", "l", "l2"), ("TYPE", "l2"), ("RENAME", "l2", "l2"),
        ("RENAMENX", "l2", "l2"), ("COPY", "l2", "z"), ("COPY", "l2", "z", "REPLACE"),
        ("TYPE", "z"), ("COPY", "h2", "h3"), ("PEXPIRETIME", "h3"), ("TYPE", "h2"),
        ("COPY", "h3", "h3"), ("RENAME", "missing", "x"), ("COPY", "missing", "x"),
        ("SET", "plain", "p"), ("RENAME", "plain", "h3"), ("TYPE", "h3"), ("GET", "h3"),
        ("DBSIZE",),
    ],
    "object and touch": [
        ("OBJECT", "REFCOUNT", "h"), ("OBJECT", "IDLETIME", "s"), ("OBJECT", "FREQ", "l"),
        ("OBJECT", "ENCODING", "missing"), ("TOUCH", "h", "s", "missing", "str"),
        ("UNLINK", "h", "missing"), ("EXISTS", "h"), ("DEL", "s", "l"), ("DBSIZE",),
        ("RENAMENX", "z", "str"),
    ],
}


@needs_redis
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_replies_over_collections_are_redis_7_replies(name: str, seeded: ServerThread,
                                                      real_redis: RedisProcess) -> None:
    script = SCRIPTS[name]
    theirs = real_redis.client()
    seed_redis(theirs)
    expected = run_script(theirs, script)
    got = run_script(client(seeded), script)
    assert got == expected, [(cmd, g, e) for cmd, g, e in
                             zip(script, got, expected, strict=True) if g != e]


@needs_redis
def test_keys_scan_dbsize_randomkey_list_collections_like_redis(
        seeded: ServerThread, real_redis: RedisProcess) -> None:
    theirs = real_redis.client()
    seed_redis(theirs)
    ours = client(seeded)
    for c in (ours, theirs):
        c.set("other", "1")
    for pattern in ("*", "[hs]*", "h", "z*"):
        assert sorted(ours.keys(pattern)) == sorted(theirs.keys(pattern))
    assert ours.dbsize() == theirs.dbsize() == 6
    for kind in (None, "string", "hash", "set", "list", "zset", "stream"):
        got = sorted(ours.scan_iter(count=2, _type=kind))
        assert got == sorted(theirs.scan_iter(count=2, _type=kind)), kind
    assert sorted(ours.scan_iter(match="[lz]")) == [b"l", b"z"]
    seen = {ours.randomkey() for _ in range(200)}
    assert seen == {b"h", b"s", b"l", b"z", b"str", b"other"}


def test_reserved_keys_are_never_written_nor_listed(seeded: ServerThread) -> None:
    c = client(seeded)
    internal = PREFIX + b"hh"  # the name of hash h's header record
    for cmd in [("SET", internal, "v"), ("SET", internal, "v", "EX", 10), ("INCR", internal),
                ("APPEND", internal, "x"), ("MSET", "ok", "1", internal, "2"),
                ("DEL", internal), ("UNLINK", "str", internal), ("EXPIRE", internal, 10),
                ("PERSIST", internal), ("RENAME", "str", internal), ("RENAME", internal, "x"),
                ("COPY", "h", internal), ("SETBIT", internal, 1, 1),
                ("BITOP", "OR", internal, "str"), ("GETDEL", internal),
                ("SETEX", internal, 10, "v"), ("MSETNX", internal, "v")]:
        reply = outcome(c, *cmd)
        assert reply[0] == "error" and "reserved" in reply[1], (cmd, reply)
    assert c.type("h") == b"hash"  # nothing was touched
    assert c.exists("ok", "str") == 1  # MSET refused as a whole: "ok" not written
    listed = set(c.keys("*")) | set(c.scan_iter()) | {c.randomkey() for _ in range(100)}
    assert listed == {b"h", b"s", b"l", b"z", b"str"}
    assert not any(k.startswith(PREFIX) for k in c.keys(PREFIX + b"*"))
    assert c.dbsize() == 5


def test_dbsize_counts_each_collection_once_whatever_its_size(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    with bitkv.open(path) as store:
        s = Structures(store)
        with s.edit(b"big", HashIndex) as e:
            for i in range(2000):
                e.put(b"f%d" % i, b"v")
        store.put(b"a", b"1")
    with ServerThread(dir=path, port=0) as srv:
        c = client(srv)
        assert c.dbsize() == 2
        assert c.copy("big", "big2") and c.dbsize() == 3
        assert c.rename("big", "a") and c.dbsize() == 2  # over the string a
        assert c.type("a") == b"hash"
        c.set("big2", "s")
        assert c.dbsize() == 2 and sorted(c.keys("*")) == [b"a", b"big2"]
        c.pexpire("a", 1)
        assert wait_for(lambda: c.dbsize() == 1)
        c.flushall()
        assert c.dbsize() == 0 and c.keys("*") == []


def wait_for(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_record_count_follows_every_kind_of_write(tmp_path: Path) -> None:
    """Structures.record_count() (DBSIZE's, kept lazily) equals a count of the records."""
    rng = random.Random(17)
    with bitkv.open(str(tmp_path / "db")) as store:
        s = Structures(store)
        for step in range(300):
            key = b"k%d" % rng.randrange(6)
            op = rng.randrange(6)
            if op <= 2:
                with s.edit(key, SetIndex) if s.names.get(key) is None or \
                        isinstance(s.names[key], SetIndex) else s.edit(key, HashIndex) as e:
                    for _ in range(rng.randrange(1, 4)):
                        m = b"m%d" % rng.randrange(8)
                        if rng.random() < 0.3:
                            e.delete(m)
                        else:
                            e.put(m, b"")
            elif op == 3:
                s.delete(key)
            elif op == 4 and key in s:
                c = s.collection(key)
                assert c is not None
                ops, clone = s.copy_ops(c, key + b"c", 0)
                s.write(s.delete_ops(key + b"c") + ops)
                s.forget(key + b"c")
                s.install(clone)
            if step % 7 == 0:
                records = sum(1 for k in store.keys(PREFIX))
                assert s.record_count() == records, step
        s.load()
        assert s.record_count() == sum(1 for k in store.keys(PREFIX))


def test_version_changes_with_every_write_of_a_collection(tmp_path: Path) -> None:
    with bitkv.open(str(tmp_path / "db")) as store:
        s = Structures(store)
        assert s.version(b"h") is None
        with s.edit(b"h", HashIndex) as e:
            e.put(b"f", b"1")
        seen = [s.version(b"h")]
        with s.edit(b"h", HashIndex) as e:
            e.put(b"f", b"2")  # a value changed, the length not
        seen.append(s.version(b"h"))
        c = s.collection(b"h")
        assert c is not None
        s.write([(c.prefix + b"g", b"3", None)])  # a multi-key writer's batch
        c.on_put(b"g", b"3")
        seen.append(s.version(b"h"))
        s.expire_at(b"h", FAR_MS)
        seen.append(s.version(b"h"))
        s.expire_at(b"h", None)
        seen.append(s.version(b"h"))
        with s.edit(b"other", HashIndex) as e:
            e.put(b"f", b"1")
        seen.append(s.version(b"h"))  # another collection's write: unchanged
        assert None not in seen and len(set(seen)) == len(seen) - 1 and seen[-1] == seen[-2]
        s.delete(b"h")
        assert s.version(b"h") is None
        with s.edit(b"h", HashIndex) as e:
            e.put(b"f", b"1")
        assert s.version(b"h") not in (None, *seen)  # recreated: a new version


@pytest.mark.parametrize("change", [
    ("EXPIRE", "h", 100), ("PERSIST", "l"), ("RENAME", "h", "h9"), ("RENAME", "s", "h"),
    ("COPY", "s", "h", "REPLACE"), ("DEL", "h"), ("SET", "h", "v"), ("MSET", "h", "v"),
    ("PEXPIRE", "h", 1), ("FLUSHALL",), ("SETEX", "h", 10, "v"),
    ("BITOP", "OR", "h", "str")])
def test_watch_of_a_collection_aborts_exec_when_another_client_changes_it(
        seeded: ServerThread, change: tuple[Any, ...]) -> None:
    c, other = client(seeded), client(seeded)
    other.pexpireat("l", FAR_MS)
    with c.pipeline() as p:
        p.watch("h", "l" if change[0] == "PERSIST" else "h")
        other.execute_command(*change)
        if change[0] == "PEXPIRE":
            assert wait_for(lambda: other.exists("h") == 0)
        p.multi()
        p.set("done", "1")
        with pytest.raises(redis.WatchError):
            p.execute()
    assert c.exists("done") == 0


def test_watch_of_a_collection_left_alone_lets_exec_run(seeded: ServerThread) -> None:
    c, other = client(seeded), client(seeded)
    with c.pipeline() as p:
        p.watch("h", "s")
        other.set("str", "changed")  # other keys, other collections
        other.expire("z", 100)
        other.rename("l", "l2")
        p.multi()
        p.set("done", "1")
        assert p.execute() == [True]


def test_rename_copy_of_collections_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    seed_store(path)
    with ServerThread(dir=path, port=0) as srv:
        c = client(srv)
        c.pexpireat("z", FAR_MS)
        assert c.rename("h", "h2") and c.copy("z", "z2") and c.rename("l", "s")
        # over a collection of the same type and elements: the tombstones come first
        assert c.copy("h2", "hh") and c.rename("hh", "h2")
    with bitkv.open(path) as store:
        s = Structures(store)
        assert sorted(s.keys()) == [b"h2", b"s", b"z", b"z2"]
        h = s.find(b"h2", HashIndex)
        assert h is not None and dict(zip(h.fields, s.read_many(h, h.fields), strict=True)) == HASH
        lst = s.find(b"s", ListIndex)
        assert lst is not None
        assert s.read_many(lst, [pack_position(p) for p in lst.positions]) == LIST
        z2 = s.find(b"z2", ZSetIndex)
        assert z2 is not None and z2.scores == ZSET and z2.expire_ms == FAR_MS
        assert store.get(b"str") == b"hello"


def _mc(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_memcached_port_sees_a_collection_as_a_miss(seeded: ServerThread) -> None:
    assert seeded.server is not None
    port = seeded.server.memcached_port
    assert port
    reply = _mc(port, b"get h s\r\nadd s 0 0 1\r\nx\r\nreplace l 0 0 1\r\nx\r\n"
                      b"append l 0 0 1\r\nx\r\ncas l 0 0 1 5\r\nx\r\nincr z 1\r\n"
                      b"touch z 10\r\nset h 0 0 2\r\nhi\r\ndelete z\r\nget h\r\n"
                      b"get \xff\x00bkhs\r\nset \xff\x00bkx 0 0 1\r\nx\r\n")
    assert reply == (b"END\r\nNOT_STORED\r\nNOT_STORED\r\nNOT_STORED\r\nNOT_FOUND\r\n"
                     b"NOT_FOUND\r\nNOT_FOUND\r\nSTORED\r\nDELETED\r\nVALUE h 0 2\r\nhi\r\n"
                     b"END\r\nCLIENT_ERROR bad command line format\r\n"
                     b"CLIENT_ERROR bad command line format\r\n"
                     b"ERROR\r\n")  # (the refused set's data line, read as a command)
    c = client(seeded)
    assert (c.type("h"), c.get("h"), c.exists("z"), c.type("s"), c.type("l")) == (
        b"string", b"hi", 0, b"set", b"list")
    assert c.dbsize() == 4


def _oom_transactions(c: redis.Redis, admin: redis.Redis) -> list[Any]:
    """MULTI/EXEC around ``maxmemory 1`` (Redis's multi unit, "... during OOM")."""
    out: list[Any] = [outcome(c, "SET", "x", "value"), outcome(c, "MULTI"),
                      outcome(c, "GET", "x"), outcome(c, "PING")]
    out.append(outcome(admin, "CONFIG", "SET", "maxmemory", "1"))
    out.append(outcome(c, "EXEC"))  # only reads queued: runs
    out += [outcome(c, "MULTI"), outcome(c, "GET", "x"), outcome(c, "DISCARD"),
            outcome(c, "SET", "y", "1"), outcome(c, "APPEND", "x", "2"), outcome(c, "DEL", "x"),
            outcome(c, "GET", "x")]
    out.append(outcome(admin, "CONFIG", "SET", "maxmemory", "0"))
    out += [outcome(c, "MULTI"), outcome(c, "SET", "x", "1"), outcome(c, "GET", "x")]
    out.append(outcome(admin, "CONFIG", "SET", "maxmemory", "1"))
    out.append(outcome(c, "EXEC"))  # a use-memory command queued: aborted
    out.append(outcome(admin, "CONFIG", "SET", "maxmemory", "0"))
    out += [outcome(c, "GET", "x"), outcome(c, "PING")]
    return out


@needs_redis
def test_oom_refuses_queueing_and_exec_of_writes_as_redis(
        tmp_path: Path, real_redis: RedisProcess) -> None:
    theirs, their_admin = real_redis.client(), real_redis.client()
    theirs.flushall()
    expected = _oom_transactions(theirs, their_admin)
    with ServerThread(dir=str(tmp_path / "db"), port=0) as srv:
        got = _oom_transactions(client(srv), client(srv))
    # bitkv's OOM reply outside MULTI (the store's refusal) says why after Redis's text.
    got = [("error", g[1].split(" (")[0] + ".") if isinstance(g, tuple) and "(the store" in
           g[1] else g for g in got]
    assert got == expected


def test_a_multi_key_write_changes_the_version_of_each_collection_it_touches(
        tmp_path: Path) -> None:
    """Structures.write without names reads them from the ops' keys: short names, a name
    of 200 bytes (a two-byte length), headers, and plain keys beside them."""
    long_name = b"n" * 200
    with bitkv.open(str(tmp_path / "db")) as store:
        s = Structures(store)
        for name in (b"a", b"ab", long_name, b"untouched"):
            with s.edit(name, SetIndex) as e:
                e.put(b"m", b"")
        before = {name: s.version(name) for name in (b"a", b"ab", long_name, b"untouched")}
        colls = {name: s.collection(name) for name in (b"a", b"ab", long_name)}
        ops: list[Any] = [(b"plain", b"v", None)]
        for c in colls.values():
            assert c is not None
            ops += [(c.prefix + b"x", b"", None), (c.prefix + b"y", b"", None)]
        s.write(ops)
        after = {name: s.version(name) for name in before}
        assert after[b"untouched"] == before[b"untouched"]
        assert all(after[n] != before[n] for n in colls)


@needs_redis
def test_denyoom_flags_are_redis_7s(tmp_path: Path, real_redis: RedisProcess) -> None:
    """The commands refused under OOM (F_DENYOOM, COMMAND INFO's "denyoom") are Redis's,
    for every write command both servers have: EXEC of a transaction holding one aborts."""
    from bitkv.server.commands import F_WRITE, INFOS

    # (bitkv's own commands, BITKV.LPUT...: Redis answers nil for them, which redis-py's
    # COMMAND INFO parser cannot take)
    names = sorted(n for n, info in INFOS.items()
                   if info.flags & F_WRITE and not n.startswith("bitkv."))
    theirs = real_redis.client().execute_command("COMMAND", "INFO", *names)
    with ServerThread(dir=str(tmp_path / "db"), port=0) as srv:
        ours = client(srv).execute_command("COMMAND", "INFO", *names)

    def denyoom(entries: dict[str, Any]) -> dict[str, bool]:
        """redis-py's parsed COMMAND INFO: name -> {"flags": [...], ...}."""
        return {name: "denyoom" in [f.decode() if isinstance(f, bytes) else f
                                    for f in info["flags"]]
                for name, info in entries.items() if info}

    redis_flags, bitkv_flags = denyoom(theirs), denyoom(ours)
    both = sorted(set(redis_flags) & set(bitkv_flags))
    assert len(both) > 40
    assert {n: bitkv_flags[n] for n in both} == {n: redis_flags[n] for n in both}
