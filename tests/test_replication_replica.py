"""bitkv as a replica: of a real redis-server master (keys written before it attached, a mixed
write load, link drops, its own clean and unclean restarts), and of a fake master written here
that serves bad RDBs and garbage streams. Also REPLICAOF / ROLE / READONLY / CONFIG in-process,
and the stream parser's offset counting."""

from __future__ import annotations

import logging
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import crcmod
import pytest
from procs import BitkvProcess, RedisProcess, caught_up, free_port, needs_redis, wait_until

import bitkv
from bitkv import names
from bitkv.server import ServerThread
from bitkv.server.replica import StreamParser, encode_command
from bitkv.server.replica_state import load as load_state

redis = pytest.importorskip("redis")

_crc64 = crcmod.mkCrcFun(0x1AD93D23594C935A9, initCrc=0, rev=True, xorOut=0)


# -- helpers -----------------------------------------------------------------------------------

def string_dump(client) -> dict[bytes, tuple[bytes, int]]:
    """Every string key with its value and PTTL (other types left out)."""
    out = {}
    for k in client.scan_iter(count=1000):
        if client.type(k) != b"string":
            continue
        v = client.get(k)
        if v is not None:
            out[k] = (v, client.pttl(k))
    return out


def assert_same(master, replica, ttl_slack_ms: int = 1500) -> None:
    a, b = string_dump(master), string_dump(replica)
    # keys that expire within the comparison may be on one side only
    full_a, full_b = a, b
    a = {k: v for k, v in a.items() if not 0 <= v[1] < ttl_slack_ms}
    b = {k: v for k, v in b.items() if not 0 <= v[1] < ttl_slack_ms}
    # On a difference, each side's (value, PTTL) of the keys that differ: a key's TTL tells a
    # timing artefact (about to expire) from a lost write or delete (a rare failure under load
    # that could not be reproduced showed only the key names).
    assert sorted(a) == sorted(b), {k: (full_a.get(k), full_b.get(k))
                                    for k in sorted(set(a) ^ set(b))}
    for k, (v, ttl) in a.items():
        assert b[k][0] == v, k
        if ttl < 0:
            assert b[k][1] == ttl, k
        else:
            assert abs(b[k][1] - ttl) <= ttl_slack_ms, (k, ttl, b[k][1])


def mixed_load(client, rng: random.Random, n: int, redis_master: bool = True) -> None:
    """Writes of every kind a replica must apply (with redis_master, also INCRBYFLOAT, which
    Redis rewrites, and HSET; Redis propagates RENAME, COPY, SETBIT and BITOP as
    themselves)."""
    now_ms = int(time.time() * 1000)
    for _ in range(n):
        op = rng.random()
        k = f"key:{rng.randrange(200)}"
        if op < 0.25:
            client.set(k, rng.randbytes(rng.randrange(0, 300)))
        elif op < 0.3:
            client.set(k, "v", px=rng.randrange(50, 300))  # some expire during the test
        elif op < 0.38:
            client.set(k, "t", ex=rng.randrange(100, 1000))
        elif op < 0.43:
            client.setex(k, rng.randrange(100, 1000), "sx")
        elif op < 0.5:
            client.delete(k)
        elif op < 0.58:
            client.incrby(f"counter:{rng.randrange(10)}", rng.randrange(-5, 6))
        elif op < 0.62:
            client.expire(k, rng.randrange(100, 1000))
        elif op < 0.66:
            client.pexpireat(k, now_ms + rng.randrange(100_000, 900_000))
        elif op < 0.69:
            client.persist(k)
        elif op < 0.73:
            client.append(k, "+")
        elif op < 0.76:
            client.setrange(k, rng.randrange(0, 10), "R")
        elif op < 0.8 and redis_master:
            client.incrbyfloat("float", 1.5)  # propagated as SET ... KEEPTTL
        elif op < 0.84:
            client.mset({f"m:{rng.randrange(50)}": rng.randbytes(20) for _ in range(3)})
        elif op < 0.87:
            client.getex(k, px=rng.randrange(100_000, 900_000))
        elif op < 0.9 and redis_master:
            client.hset("hash-live", f"f{rng.randrange(5)}", 1)  # a hash on both sides
        elif op < 0.93:  # the keyspace and bit commands of issue 17
            other = f"key:{rng.randrange(200)}"
            kind = rng.randrange(4)
            try:
                if kind == 0:
                    client.rename(k, other)  # keeps the TTL
                elif kind == 1:
                    client.copy(k, other, replace=True)
                elif kind == 2:
                    client.setbit(k, rng.randrange(64), rng.randrange(2))
                else:
                    client.bitop("XOR", k, k, other)
            except redis.ResponseError as exc:
                assert "no such key" in str(exc)  # RENAME of a missing key
        else:
            with client.pipeline(transaction=True) as p:
                p.set(k, "in-multi")
                p.delete(f"key:{rng.randrange(200)}")
                p.incr("multi-counter")
                p.execute()


def populate_before_attach(m) -> None:
    m.set("plain", "hello")
    m.set("int", 12345)
    m.set("negative", -7)
    m.set("bigint", 2**62)
    m.set("lzf", "abcdefgh" * 500)  # compressible: Redis writes it LZF-compressed
    m.set("ttl", "soon", px=600_000)
    m.set("ttl-s", "later", ex=3600)
    m.set("empty", "")
    m.set(b"bin\x00\xff", bytes(range(256)))
    m.hset("hash", mapping={"a": 1, "b": 2})
    m.sadd("set", "x", "y")
    m.rpush("list", "1", "2")
    m.xadd("stream", {"f": "v"})  # a type bitkv does not store
    for i in range(300):
        m.set(f"bulk:{i}", f"v{i}")


def info_stats(client) -> dict:
    return client.info("stats")


# -- bitkv replica of a real redis-server ----------------------------------------------------

@needs_redis
def test_bitkv_replica_of_redis_master_converges(tmp_path):
    master = RedisProcess(tmp_path, None, "--repl-diskless-sync-delay", "0")
    replica = None
    try:
        m = master.client()
        populate_before_attach(m)
        replica = BitkvProcess(tmp_path / "replica", None, "--replicaof",
                               f"127.0.0.1:{master.port}")
        r = replica.client()
        wait_until(lambda: caught_up(m, r), 30, "the replica's first sync")
        info = r.info("replication")
        assert info["role"] == "slave" and info["master_port"] == master.port
        assert info["bitkv_replica_skipped_keys"] == 1  # the stream; not the hash, set, list
        assert "skipped key 'stream' of type stream" in replica.output()
        for key in ("hash", "set", "list"):
            assert r.type(key) == key.encode()  # (tests/test_replication_types.py: contents)
        assert r.get("lzf") == b"abcdefgh" * 500
        assert r.get(b"bin\x00\xff") == bytes(range(256))
        assert r.get("empty") == b""
        assert_same(m, r)

        rng = random.Random(13)
        mixed_load(m, rng, 1500)
        wait_until(lambda: caught_up(m, r), 30, "the replica to catch up")
        assert_same(m, r)
        # the master's HSETs are applied (bitkv has hashes since issue 17), not skipped
        assert r.hgetall("hash-live") == m.hgetall("hash-live") != {}
        assert "skipped HSET from the master" not in replica.output()

        # clients cannot write; reads work; ROLE says so
        with pytest.raises(redis.ReadOnlyError):
            r.set("x", 1)
        with pytest.raises(redis.ReadOnlyError):
            r.delete("plain")
        role = r.execute_command("ROLE")
        assert role[0] == b"slave" and role[2] == master.port and role[3] == b"connected"
        assert role[4] == r.info("replication")["slave_repl_offset"]
        # the master sees our ACKs
        wait_until(lambda: m.info("replication")["slave0"]["offset"]
                   == m.info("replication")["master_repl_offset"], 10, "an ACK")
        assert m.info("replication")["slave0"]["port"] == replica.port
    finally:
        if replica is not None:
            replica.stop()
        master.stop()


@needs_redis
def test_link_drop_and_replica_restarts(tmp_path):
    master = RedisProcess(tmp_path, None, "--repl-diskless-sync-delay", "0")
    replica = None
    try:
        m = master.client()
        m.set("a", 1)
        replica = BitkvProcess(tmp_path / "replica", None, "--replicaof",
                               f"127.0.0.1:{master.port}")
        r = replica.client()
        wait_until(lambda: caught_up(m, r), 30, "the first sync")
        rng = random.Random(3)
        mixed_load(m, rng, 200)
        wait_until(lambda: caught_up(m, r), 30, "catching up")

        # 1. the link drops: the replica reconnects and continues (partial resync)
        stats = info_stats(m)
        m.client_kill_filter(_type="replica")
        mixed_load(m, rng, 200)
        wait_until(lambda: info_stats(m)["sync_partial_ok"] > stats["sync_partial_ok"], 20,
                   "a partial resync after the link dropped")
        wait_until(lambda: caught_up(m, r), 30, "catching up")
        assert_same(m, r)
        assert info_stats(m)["sync_full"] == stats["sync_full"]

        # 1b. the same from the replica's side: CLIENT KILL TYPE master
        listed = r.client_list(_type="master")
        assert len(listed) == 1 and listed[0]["flags"] == "M"
        stats = info_stats(m)
        assert r.client_kill_filter(_type="master") == 1
        m.set("after-kill", 1)
        wait_until(lambda: info_stats(m)["sync_partial_ok"] > stats["sync_partial_ok"], 20,
                   "a partial resync after CLIENT KILL TYPE master")
        wait_until(lambda: r.get("after-kill") == b"1", 20, "the write after the kill")
        assert info_stats(m)["sync_full"] == stats["sync_full"]

        # 2. a clean restart of the replica: it continues too
        replica.stop()
        state = load_state(str(tmp_path / "replica"))
        assert state.resume is not None and state.resume.clean
        mixed_load(m, rng, 200)  # written while the replica was down
        stats = info_stats(m)
        replica = BitkvProcess(tmp_path / "replica", None, "--replicaof",
                               f"127.0.0.1:{master.port}")
        r = replica.client()
        wait_until(lambda: caught_up(m, r), 30, "catching up after the restart")
        s = info_stats(m)
        assert s["sync_partial_ok"] == stats["sync_partial_ok"] + 1
        assert s["sync_full"] == stats["sync_full"]
        assert_same(m, r)
        assert not load_state(str(tmp_path / "replica")).resume.clean  # applying: dirty

        # 3. kill -9: the store may hold writes past the saved offset -> a full resync
        replica.kill9()
        mixed_load(m, rng, 100)
        stats = info_stats(m)
        replica = BitkvProcess(tmp_path / "replica", None, "--replicaof",
                               f"127.0.0.1:{master.port}")
        r = replica.client()
        wait_until(lambda: caught_up(m, r), 30, "catching up after kill -9")
        s = info_stats(m)
        assert s["sync_full"] == stats["sync_full"] + 1
        assert s["sync_partial_ok"] == stats["sync_partial_ok"]
        assert "did not stop cleanly" in replica.output()
        assert_same(m, r)
    finally:
        if replica is not None:
            replica.stop()
        master.stop()


@needs_redis
def test_config_rewrite_persists_the_role(tmp_path):
    master = RedisProcess(tmp_path, None, "--repl-diskless-sync-delay", "0")
    node = None
    try:
        m = master.client()
        m.set("k", "v")
        node = BitkvProcess(tmp_path / "node")
        c = node.client()
        c.set("local", "x")
        assert c.execute_command("REPLICAOF", "127.0.0.1", master.port)
        raw = redis.Redis(port=node.port, decode_responses=False)
        raw.response_callbacks.pop("REPLICAOF", None)
        assert raw.execute_command("REPLICAOF", "127.0.0.1", master.port) == \
            b"OK Already connected to specified master"
        wait_until(lambda: caught_up(m, c), 30, "the sync")
        assert c.get("k") == b"v" and c.get("local") is None  # the master's dataset
        assert c.config_get("replicaof")["replicaof"] == f"127.0.0.1 {master.port}"
        c.config_set("replica-priority", 7)
        assert c.config_rewrite()
        node.stop()
        node = BitkvProcess(tmp_path / "node")  # no --replicaof: the persisted role applies
        c = node.client()
        wait_until(lambda: caught_up(m, c), 30, "the sync after the restart")
        info = c.info("replication")
        assert info["role"] == "slave" and info["slave_priority"] == 7
        # REPLICAOF NO ONE + CONFIG REWRITE: a master after the next restart
        assert c.execute_command("REPLICAOF", "NO", "ONE")
        c.set("mine", 1)
        assert c.config_rewrite()
        node.stop()
        node = BitkvProcess(tmp_path / "node")
        c = node.client()
        assert c.info("replication")["role"] == "master"
        assert c.get("mine") == b"1" and c.get("k") == b"v"
        state = load_state(str(tmp_path / "node"))
        assert state.replicaof is None and state.resume is None
    finally:
        if node is not None:
            node.stop()
        master.stop()


# -- a fake master: bad RDBs, garbage streams, silence ---------------------------------------

def make_rdb(items: list[tuple[bytes, bytes, int]], version: bytes = b"0010",
             corrupt_crc: bool = False) -> bytes:
    def length(n: int) -> bytes:
        if n < 64:
            return bytes([n])
        if n < 16384:
            return bytes([0x40 | (n >> 8), n & 0xFF])
        return b"\x80" + struct.pack(">I", n)

    def string(s: bytes) -> bytes:
        return length(len(s)) + s

    body = b"REDIS" + version + b"\xfa" + string(b"redis-ver") + string(b"7.0.15") + b"\xfe\x00"
    for key, value, expire_ms in items:
        if expire_ms:
            body += b"\xfc" + struct.pack("<Q", expire_ms)
        body += b"\x00" + string(key) + string(value)
    body += b"\xff"
    crc = _crc64(body) ^ (1 if corrupt_crc else 0)
    return body + struct.pack("<Q", crc)


REPLID = "a" * 40


class FakeMaster:
    """A TCP server speaking just enough of a master: the handshake, then ``serve(conn,
    psync_args, n)`` for connection number n. Records every PSYNC it received."""

    def __init__(self, serve: Callable[[socket.socket, list[bytes], int], None]) -> None:
        self.serve = serve
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.psyncs: list[list[bytes]] = []
        self.received: list[bytes] = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        n = 0
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            threading.Thread(target=self._handle, args=(conn, n), daemon=True).start()

    def _handle(self, conn: socket.socket, n: int) -> None:
        from bitkv.server.protocol import PyParser

        parser = PyParser()
        with conn:
            try:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        return
                    for cmd in parser.feed(data):
                        name = cmd[0].upper()
                        if name == b"PING":
                            conn.sendall(b"+PONG\r\n")
                        elif name == b"REPLCONF":
                            conn.sendall(b"+OK\r\n")
                        elif name == b"PSYNC":
                            self.psyncs.append(cmd)
                            self.serve(conn, cmd, n)
                            conn.settimeout(5)
                            while data := conn.recv(65536):  # ACKs, until the replica hangs up
                                self.received.append(data)
                            return
            except OSError:
                return

    def close(self) -> None:
        self._stop = True
        self.sock.close()


@pytest.fixture
def store_dir(tmp_path):
    """A store holding keys the bad masters must never disturb."""
    directory = tmp_path / "replica"
    with bitkv.open(str(directory)) as db:
        for i in range(50):
            db.put(f"local:{i}", f"v{i}".encode())
    return directory


def local_keys_intact(directory: Path) -> None:
    with bitkv.open(str(directory), readonly=True) as db:
        assert sorted(db.keys()) == sorted(f"local:{i}".encode() for i in range(50))
        assert all(db.get(f"local:{i}") == f"v{i}".encode() for i in range(50))


@pytest.mark.parametrize("case", ["bad-checksum", "truncated", "bad-version", "garbage"])
def test_bad_rdb_is_refused_store_untouched(store_dir, case, caplog):
    rdb = make_rdb([(b"from-master", b"x", 0)])
    if case == "bad-checksum":
        payload = b"$%d\r\n%b" % (len(rdb), make_rdb([(b"from-master", b"x", 0)],
                                                    corrupt_crc=True))
    elif case == "truncated":
        payload = b"$%d\r\n%b" % (len(rdb), rdb[:-12])  # then the connection closes
    elif case == "bad-version":
        bad = make_rdb([(b"from-master", b"x", 0)], version=b"0099")
        payload = b"$%d\r\n%b" % (len(bad), bad)
    else:
        junk = b"REDIS0010" + os.urandom(300)
        payload = b"$%d\r\n%b" % (len(junk), junk)

    def serve(conn: socket.socket, psync: list[bytes], n: int) -> None:
        conn.sendall(b"+FULLRESYNC %b 0\r\n\n\n" % REPLID.encode() + payload)
        conn.shutdown(socket.SHUT_WR)

    fake = FakeMaster(serve)
    caplog.set_level(logging.INFO, logger="bitkv.server")
    try:
        with ServerThread(dir=str(store_dir), port=0, replicaof=f"127.0.0.1:{fake.port}",
                          repl_timeout=5) as srv:
            wait_until(lambda: len(fake.psyncs) >= 2, 20, "a retry")
            c = redis.Redis(port=srv.port)
            assert c.info("replication")["master_link_status"] == "down"
            assert c.get("from-master") is None
            assert c.get("local:1") == b"v1"
        text = caplog.text
        if case == "truncated":
            assert "closed the connection after" in text
        else:
            assert "the RDB from the master is invalid, the store was not touched" in text
        assert "reconnecting to MASTER" in text
        assert not any(names.is_replica_rdb_tmp_name(n) for n in os.listdir(store_dir))
        local_keys_intact(store_dir)
    finally:
        fake.close()


def test_garbage_in_the_stream_drops_the_link_and_continues(store_dir, caplog):
    rdb = make_rdb([(b"a", b"1", 0), (b"exp", b"e", int(time.time() * 1000) + 600_000)])
    good = encode_command(b"SET", b"b", b"2") + b"\n" + encode_command(b"PING")
    later = encode_command(b"SET", b"c", b"3")

    def serve(conn: socket.socket, psync: list[bytes], n: int) -> None:
        if n == 1:
            conn.sendall(b"+FULLRESYNC %b 100\r\n$EOF:%b\r\n%b%b" % (
                REPLID.encode(), b"M" * 40, rdb, b"M" * 40))
            time.sleep(0.3)
            conn.sendall(good + b"*2\r\n$3\r\nSET\r\n$zz\r\n")  # a malformed bulk length
        else:
            conn.sendall(b"+CONTINUE\r\n" + later)

    fake = FakeMaster(serve)
    caplog.set_level(logging.INFO, logger="bitkv.server")
    try:
        with ServerThread(dir=str(store_dir), port=0, replicaof=f"127.0.0.1:{fake.port}",
                          repl_timeout=5) as srv:
            c = redis.Redis(port=srv.port)
            wait_until(lambda: c.get("c") == b"3", 20, "the stream after the reconnect")
            assert c.get("a") == b"1" and c.get("b") == b"2"
            assert 590_000 < c.pttl("exp") <= 600_000
            assert c.get("local:1") is None  # the full resync replaced the dataset
            # the second PSYNC continues right after the last whole command (and newline)
            assert fake.psyncs[0][1:] == [b"?", b"-1"]
            assert fake.psyncs[1][1:] == [REPLID.encode(), b"%d" % (100 + len(good) + 1)]
            info = c.info("replication")
            assert info["slave_repl_offset"] == 100 + len(good) + len(later)
        assert "protocol error in the replication stream" in caplog.text
    finally:
        fake.close()


def test_a_silent_master_times_out(store_dir, caplog):
    rdb = make_rdb([(b"a", b"1", 0)])

    def serve(conn: socket.socket, psync: list[bytes], n: int) -> None:
        conn.sendall(b"+FULLRESYNC %b 0\r\n$%d\r\n%b" % (REPLID.encode(), len(rdb), rdb))

    fake = FakeMaster(serve)
    caplog.set_level(logging.INFO, logger="bitkv.server")
    try:
        with ServerThread(dir=str(store_dir), port=0, replicaof=f"127.0.0.1:{fake.port}",
                          repl_timeout=1):
            wait_until(lambda: len(fake.psyncs) >= 2, 20, "a reconnect after the timeout")
        assert "MASTER timeout" in caplog.text
        assert fake.psyncs[1][1:] == [REPLID.encode(), b"1"]  # continue from offset 0
    finally:
        fake.close()


def test_getack_is_answered_with_the_offset(store_dir):
    rdb = make_rdb([])
    stream = encode_command(b"SET", b"x", b"1") + encode_command(b"MULTI") + \
        encode_command(b"INCR", b"n") + encode_command(b"EXEC")
    getack = encode_command(b"REPLCONF", b"GETACK", b"*")

    def serve(conn: socket.socket, psync: list[bytes], n: int) -> None:
        conn.sendall(b"+FULLRESYNC %b 0\r\n$%d\r\n%b" % (REPLID.encode(), len(rdb), rdb))
        conn.sendall(stream + getack)

    fake = FakeMaster(serve)
    try:
        with ServerThread(dir=str(store_dir), port=0, replicaof=f"127.0.0.1:{fake.port}"):
            want = b"ACK\r\n$%d\r\n%d\r\n" % (len(str(len(stream))), len(stream))
            wait_until(lambda: want in b"".join(fake.received), 10, "the ACK")
    finally:
        fake.close()


def test_a_sync_always_replica_acknowledges_only_what_is_on_its_disk(store_dir, tmp_path):
    """With --sync always, the offset in REPLCONF ACK covers only fsynced writes: a power cut
    right after the ACK (the crash harness's model of the replica's I/O log) keeps them."""
    from bitkv.crashtest.recording import DiskModel, RecordingFileIO, write_state

    rdb = make_rdb([])
    stream = encode_command(b"SET", b"x", b"1") + encode_command(b"MULTI") + \
        encode_command(b"INCR", b"n") + encode_command(b"EXEC")
    getack = encode_command(b"REPLCONF", b"GETACK", b"*")

    def serve(conn: socket.socket, psync: list[bytes], n: int) -> None:
        conn.sendall(b"+FULLRESYNC %b 0\r\n$%d\r\n%b" % (REPLID.encode(), len(rdb), rdb))
        time.sleep(0.3)  # the load's own fsync first: the stream's writes come after it
        conn.sendall(stream + getack)

    io = RecordingFileIO(str(store_dir))
    fake = FakeMaster(serve)
    seen: list[list[tuple]] = []

    def acked() -> bool:
        want = b"ACK\r\n$%d\r\n%d\r\n" % (len(str(len(stream))), len(stream))
        if want in b"".join(fake.received):
            seen.append(list(io.events))  # everything the replica did before the ACK
            return True
        return False

    try:
        with ServerThread(dir=str(store_dir), port=0, replicaof=f"127.0.0.1:{fake.port}",
                          sync="always", store_options={"fileio": io}):
            wait_until(acked, 10, "the ACK")
    finally:
        fake.close()
    model = DiskModel(io.initial)
    for event in seen[0]:
        model.apply(event)
    files, _what = model.crash_state(random.Random(1), "synced")  # only what was fsynced
    write_state(str(tmp_path / "cut"), files)
    with bitkv.open(str(tmp_path / "cut")) as db:
        assert db.get(b"x") == b"1"
        assert db.get(b"n") == b"1"


# -- in-process: REPLICAOF, ROLE, READONLY, CONFIG ------------------------------------------

def test_replicaof_readonly_role_and_config(tmp_path):
    dead = free_port()  # nothing listens there: the link stays down
    with ServerThread(dir=str(tmp_path / "d"), port=0) as srv:
        c = redis.Redis(port=srv.port)
        c.set("k", "v")
        assert c.execute_command("ROLE")[0] == b"master"
        assert c.execute_command("SLAVEOF", "127.0.0.1", dead)  # +OK
        role = c.execute_command("ROLE")
        assert role[:3] == [b"slave", b"127.0.0.1", dead] and role[4] == -1
        info = c.info("replication")
        assert info["role"] == "slave" and info["master_link_status"] == "down"
        assert info["master_link_down_since_seconds"] == -1
        with pytest.raises(redis.ReadOnlyError):
            c.set("k", "w")
        other = redis.Redis(port=srv.port)  # a connection made after the role changed
        with pytest.raises(redis.ReadOnlyError):
            other.incr("n")
        assert c.get("k") == b"v" and other.get("k") == b"v"
        one = redis.Redis(port=srv.port, single_connection_client=True)
        assert one.execute_command("MULTI")
        with pytest.raises(redis.ReadOnlyError):
            one.execute_command("SET", "k", "w")  # refused at once, as Redis does...
        with pytest.raises(redis.exceptions.ExecAbortError):
            one.execute_command("EXEC")  # ...and the transaction fails
        with pytest.raises(redis.ResponseError, match="Invalid master port"):
            c.execute_command("REPLICAOF", "127.0.0.1", "70000")
        c.config_set("replica-read-only", "no")
        assert c.config_get("slave-read-only")["slave-read-only"] == "no"
        assert c.set("k", "w")
        c.config_set("replica-read-only", "yes")
        with pytest.raises(redis.ReadOnlyError):
            c.set("k", "x")
        with pytest.raises(redis.ResponseError):
            c.config_set("replica-priority", "-1")
        with pytest.raises(redis.ResponseError):
            c.config_set("maxclients", "5")
        assert c.execute_command("REPLICAOF", "NO", "ONE")
        assert c.set("k", "z") and c.execute_command("ROLE")[0] == b"master"


# -- the stream parser -------------------------------------------------------------------------

def test_stream_parser_reports_where_each_command_ends():
    a = encode_command(b"SET", b"k", b"v")
    b = encode_command(b"PING")
    data = a + b"\n" + b + b"PING\r\n" + encode_command(b"DEL", b"k")
    p = StreamParser()
    got = []
    for i in range(0, len(data), 7):  # commands split over many reads
        got += p.feed_ends(data[i : i + 7])
    assert [(args, end) for args, end in got] == [
        ([b"SET", b"k", b"v"], len(a)), ([], len(a) + 1), ([b"PING"], len(a) + 1 + len(b)),
        ([b"PING"], len(a) + 1 + len(b) + 6), ([b"DEL", b"k"], len(data))]
    p.feed_ends(b"*1\r\n$x\r\n")
    assert p.error is not None


# -- bitkv replica of a bitkv master -----------------------------------------------------------

def test_bitkv_replica_of_bitkv_master_converges_and_continues(tmp_path):
    master = BitkvProcess(tmp_path / "master")
    replica = None
    try:
        m = master.client()
        rng = random.Random(21)
        for i in range(200):
            m.set(f"before:{i}", f"v{i}", px=rng.choice([None, 600_000]))
        replica = BitkvProcess(tmp_path / "replica", None, "--replicaof",
                               f"127.0.0.1:{master.port}", "--repl-timeout", "5")
        r = replica.client()
        wait_until(lambda: caught_up(m, r), 30, "the first sync")
        mixed_load(m, rng, 600, redis_master=False)
        wait_until(lambda: caught_up(m, r), 30, "catching up")
        assert_same(m, r)

        # the master stops cleanly, then is killed: both times the replica continues
        for stop in ("stop", "kill9"):
            getattr(master, stop)()
            master = BitkvProcess(tmp_path / "master", master.port)
            m = master.client()
            mixed_load(m, rng, 200, redis_master=False)
            wait_until(lambda m=m: caught_up(m, r), 30, f"catching up after the master's {stop}")
            assert_same(m, r)
            stats = info_stats(m)
            assert stats["sync_full"] == 0 and stats["sync_partial_ok"] >= 1
        assert r.info("replication")["bitkv_replica_full_syncs"] == 1
    finally:
        if replica is not None:
            replica.stop()
        master.stop()


def test_tls_and_auth_to_the_master(tmp_path, caplog):
    from test_server_security import make_self_signed

    cert, key = make_self_signed(tmp_path)
    caplog.set_level(logging.INFO, logger="bitkv.server")
    with ServerThread(dir=str(tmp_path / "master"), port=0, tls_cert=cert, tls_key=key,
                      requirepass="s3cret") as master:
        mc = redis.Redis(port=master.port, ssl=True, ssl_ca_certs=cert, password="s3cret")
        mc.set("k", "v")
        with ServerThread(dir=str(tmp_path / "replica"), port=0,
                          replicaof=f"127.0.0.1:{master.port}", master_tls=True,
                          master_tls_ca_cert=cert, masterauth="wrong") as replica:
            rc = redis.Redis(port=replica.port)
            wait_until(lambda: "unable to AUTH to MASTER: -WRONGPASS" in caplog.text, 20,
                       "the refused AUTH")
            rc.config_set("masterauth", "s3cret")
            assert rc.config_get("masterauth") == {"masterauth": "s3cret"}
            wait_until(lambda: rc.get("k") == b"v", 30, "the sync over TLS")
            mc.set("k2", "v2")
            wait_until(lambda: rc.get("k2") == b"v2", 10, "the stream over TLS")


def test_leftover_replica_temporaries_are_bitkv_s_own(tmp_path):
    """A kill during an RDB transfer or a REPLICA save leaves a temporary file: check reports
    it as one, the next writable open removes it; the REPLICA file itself is left alone."""
    from bitkv.check import check

    directory = tmp_path / "d"
    with bitkv.open(str(directory)) as db:
        db.put(b"k", b"v")
    leftovers = [names.replica_rdb_tmp_name(12345), names.REPLICA_STATE_NAME + names.TMP_SUFFIX]
    for name in leftovers:
        (directory / name).write_bytes(b"partial")
    (directory / names.REPLICA_STATE_NAME).write_text("{}")
    report = check(str(directory))
    assert report.temp_files == 2
    with bitkv.open(str(directory)) as db:
        assert db.get(b"k") == b"v"
    left = set(os.listdir(directory))
    assert not left & set(leftovers) and names.REPLICA_STATE_NAME in left


def test_master_commands_see_keys_that_expired_here(store_dir):
    """A key that expired on the replica (a lag, a clock ahead) still takes the master's
    commands, as in Redis: SET ... PXAT <past> writes it already expired, and a PEXPIREAT the
    master sent while it was alive there brings it back; INCR/APPEND work on it too."""
    now_ms = int(time.time() * 1000)
    rdb = make_rdb([(b"from-rdb", b"1", now_ms - 5)])  # expired: not loaded
    stream = b"".join([
        encode_command(b"SET", b"k", b"v", b"PXAT", b"%d" % (now_ms - 1000)),
        encode_command(b"PEXPIREAT", b"k", b"%d" % (now_ms + 60_000)),
        encode_command(b"SET", b"n", b"5", b"PXAT", b"%d" % (now_ms - 1000)),
        encode_command(b"INCR", b"n"),
        encode_command(b"PERSIST", b"n"),
        encode_command(b"SET", b"gone", b"x", b"PXAT", b"%d" % (now_ms - 1000)),
        encode_command(b"DEL", b"gone"),
        encode_command(b"SET", b"done", b"1"),
    ])

    def serve(conn: socket.socket, psync: list[bytes], n: int) -> None:
        conn.sendall(b"+FULLRESYNC %b 0\r\n$%d\r\n%b" % (REPLID.encode(), len(rdb), rdb))
        conn.sendall(stream)

    fake = FakeMaster(serve)
    try:
        with ServerThread(dir=str(store_dir), port=0, replicaof=f"127.0.0.1:{fake.port}") as srv:
            c = redis.Redis(port=srv.port)
            wait_until(lambda: c.get("done") == b"1", 10, "the stream")
            assert c.get("k") == b"v" and 55_000 < c.pttl("k") <= 60_000
            assert c.get("n") == b"6" and c.pttl("n") == -1
            assert c.get("gone") is None and c.get("from-rdb") is None
            assert c.dbsize() == 3  # k, n, done: the deleted and the unloaded are gone
            assert c.info("replication")["bitkv_replica_failed_commands"] == 0
    finally:
        fake.close()
