"""The memcached protocol's pieces without a socket (bitkv/server/memcache: text, commands),
and the server in-process with --sync always."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Iterator

import pytest

import bitkv
from bitkv.server import ServerConfig, ServerThread
from bitkv.server.memcache import Memcache
from bitkv.server.memcache import text as mt
from bitkv.server.memcache.commands import Storage


class Host:
    def __init__(self, readonly: bool = False) -> None:
        self.refuses_client_writes = readonly
        self.later: list[tuple[float, Callable[[], None]]] = []

    def request_flush_later(self, delay: float, flush: Callable[[], None]) -> None:
        self.later.append((delay, flush))


@pytest.fixture
def db(fast_db_path: str) -> Iterator[bitkv.Store]:
    with bitkv.open(fast_db_path) as store:
        yield store


def test_tokens_split_at_spaces_only() -> None:
    assert mt.tokens(b"  set  k\t1 0 \r") == [b"set", b"k\t1", b"0"]
    assert mt.tokens(b"\r") == []


def test_exptime_as_memcached_defines_it() -> None:
    now = 1_000_000_000.5
    assert mt.expiry_ms(0, now) == 0
    assert mt.expiry_ms(-5, now) == 1  # already expired
    assert mt.expiry_ms(10, now) == 1_000_000_010_500
    assert mt.expiry_ms(mt.RELATIVE_EXPTIME_MAX, now) == int(now * 1000) + 2_592_000_000
    assert mt.expiry_ms(mt.RELATIVE_EXPTIME_MAX + 1, now) == 2_592_001_000  # a Unix time


def test_numbers() -> None:
    assert mt.parse_u32(b"4294967295") == 2**32 - 1
    assert mt.parse_u32(b"4294967296") is None
    assert mt.parse_u32(b"-1") is None and mt.parse_u32(b"0x1") is None
    assert mt.parse_u32(b"+7") == 7
    assert mt.parse_u64(b"18446744073709551615") == 2**64 - 1
    assert mt.parse_u64(b"18446744073709551616") is None
    assert mt.parse_i64(b"-1") == -1 and mt.parse_i64(b"1.5") is None
    assert mt.counter_value(b" 12 ") == 12 and mt.counter_value(b"12") == 12
    assert mt.counter_value(b"1 ab") == 1
    for bad in (b"", b"1ab", b"-1", b"abc", b"18446744073709551616"):
        assert mt.counter_value(bad) is None, bad
    assert mt.counter_bytes(9, b"10") == b"9 "
    assert mt.counter_bytes(100, b"99") == b"100"


def test_a_read_only_replica_refuses_memcached_writes(db: bitkv.Store) -> None:
    db.put(b"k", b"v")
    mc = Memcache(db, Host(readonly=True))
    req = mc.parse_storage([b"set", b"k", b"0", b"0", b"1"])
    assert isinstance(req, Storage)
    assert mc.store(req, b"x\r\n") == b"SERVER_ERROR READONLY You can't write against a " \
        b"read only replica.\r\n"
    assert mc.run([b"delete", b"k"]).startswith(b"SERVER_ERROR READONLY")  # type: ignore[union-attr]
    assert mc.run([b"incr", b"k", b"1"]).startswith(b"SERVER_ERROR READONLY")  # type: ignore[union-attr]
    assert mc.run([b"flush_all"]).startswith(b"SERVER_ERROR READONLY")  # type: ignore[union-attr]
    assert b"".join(mc.retrieve([b"k"], False)) == b"VALUE k 0 1\r\nv\r\nEND\r\n"
    assert db.get(b"k") == b"v"


def test_flush_all_with_a_delay_is_scheduled(db: bitkv.Store) -> None:
    host = Host()
    mc = Memcache(db, host, clock=lambda: 1000.0)
    db.put(b"k", b"v")
    assert mc.run([b"flush_all", b"30"]) == b"OK\r\n"
    assert db.get(b"k") == b"v"
    (delay, flush), = host.later
    assert delay == 30
    flush()
    assert db.get(b"k") is None


def test_a_store_error_is_a_server_error_line(db: bitkv.Store) -> None:
    mc = Memcache(db, Host())
    db.close()
    assert mc.run([b"delete", b"k"]) == b"SERVER_ERROR the store is closed\r\n"


def test_a_full_cache_answers_as_memcached_out_of_memory(fast_db_path: str) -> None:
    """A bounded store that may not evict (noeviction) refuses the write with memcached's
    own line (what memcached -M answers), and keeps what it stored."""
    with bitkv.open(fast_db_path, max_bytes=400, eviction="noeviction") as db:
        mc = Memcache(db, Host())
        replies = []
        for i in range(10):
            req = mc.parse_storage([b"set", b"k%d" % i, b"0", b"0", b"100"])
            assert isinstance(req, Storage)
            replies.append(mc.store(req, b"x" * 100 + b"\r\n"))
        assert replies[0] == b"STORED\r\n"
        assert replies[-1] == b"SERVER_ERROR out of memory storing object\r\n"
        stored = [i for i, r in enumerate(replies) if r == b"STORED\r\n"]
        assert all(db.get(b"k%d" % i) == b"x" * 100 for i in stored)


def test_sync_always_serves_memcached(fast_db_path: str) -> None:
    pymemcache = pytest.importorskip("pymemcache")
    config = ServerConfig(dir=fast_db_path, port=0, memcached_port=0, sync="always")
    with ServerThread(config) as thread:
        port = thread.server.memcached_port  # type: ignore[union-attr]
        client = pymemcache.Client(("127.0.0.1", port), default_noreply=False)
        assert client.set(b"a", b"1") is True
        assert client.set_many({b"b": b"2", b"c": b"3"}) == []
        assert client.incr(b"a", 5) == 6
        assert client.get_many([b"a", b"b", b"c"]) == {b"a": b"6", b"b": b"2", b"c": b"3"}
        client.close()
        # A client that half-closes right after its requests (printf ... | nc -q1) still gets
        # the replies that wait for the fsync (reading pauses while they wait, so the end of
        # its input is seen after them).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"set d 0 0 1\r\nx\r\nget d\r\n")
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        assert got == b"STORED\r\nVALUE d 0 1\r\nx\r\nEND\r\n"
    with bitkv.open(fast_db_path) as db:
        assert db.get(b"a") == b"6"


def test_partial_requests_of_many_clients_count_in_the_servers_total(
        fast_db_path: str) -> None:
    """Each client may buffer one item's data block; many clients doing so at once are held
    to the server's total of partial requests (max_query_buffer_total), shared with the Redis
    port: the client with the largest partial request is closed first."""
    mib = 1024 * 1024
    config = ServerConfig(dir=fast_db_path, port=0, memcached_port=0, max_query_buffer=mib,
                          max_query_buffer_total=3 * mib, memcached_max_item_size=mib)
    from procs import wait_until

    with ServerThread(config) as thread:
        port = thread.server.memcached_port  # type: ignore[union-attr]
        socks = []
        for size in (700_000, 800_000, 900_000, 1_000_000):  # 3.4 MB partial in all
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"set k 0 0 1048576\r\n" + b"x" * size)
            socks.append(sock)
        # Which one is over depends on the order its bytes arrive in: find it.
        readable, _, _ = select.select(socks, [], [], 10)
        assert len(readable) == 1
        dropped = readable[0]
        # The server closed it with part of its request unread, so the kernel may answer
        # with a reset that overtakes the error line; the server's state says what happened.
        try:
            got = dropped.recv(100)
        except ConnectionResetError:
            got = b"<reset>"
        assert got in (b"SERVER_ERROR out of memory reading request\r\n", b"<reset>")
        server = thread.server
        assert server is not None
        wait_until(lambda: len(server.memcache_clients) == 3, 10, "the drop")
        assert server.partial_bytes <= 3 * mib
        kept = next(s for s in socks if s is not dropped)
        sizes = dict(zip(socks, (700_000, 800_000, 900_000, 1_000_000), strict=True))
        kept.sendall(b"x" * (1048576 - sizes[kept]) + b"\r\nget k\r\n")
        reply = b""
        while not reply.endswith(b"END\r\n"):
            reply += kept.recv(1 << 21)
        assert reply.startswith(b"STORED\r\nVALUE k 0 1048576\r\n")
        for sock in socks:
            sock.close()


def test_replication_carries_memcached_writes_without_their_flags(tmp_path) -> None:
    """A bitkv replica of a master written over memcached gets the values (not the client
    flags: replication carries values, docs/memcached.md), and refuses memcached writes."""
    redis = pytest.importorskip("redis")
    from procs import wait_until

    with ServerThread(dir=str(tmp_path / "m"), port=0, memcached_port=0) as master:
        mc_port = master.server.memcached_port  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", mc_port), timeout=10) as sock:
            sock.sendall(b"set k 42 0 5\r\nhello\r\n")
            assert sock.recv(100) == b"STORED\r\n"
        with ServerThread(dir=str(tmp_path / "r"), port=0, memcached_port=0,
                          replicaof=f"127.0.0.1:{master.port}") as replica:
            client = redis.Redis(port=replica.port, socket_timeout=10)
            wait_until(lambda: client.get(b"k") == b"hello", 20, "the replica to sync")
            with socket.create_connection(("127.0.0.1", mc_port), timeout=10) as sock:
                sock.sendall(b"set k2 7 0 2\r\nhi\r\n")  # streamed: the change feed
                assert sock.recv(100) == b"STORED\r\n"
            wait_until(lambda: client.get(b"k2") == b"hi", 20, "the replica to stream")
            replica_mc = replica.server.memcached_port  # type: ignore[union-attr]
            with socket.create_connection(("127.0.0.1", replica_mc), timeout=10) as sock:
                sock.sendall(b"get k\r\nset k 0 0 1\r\nx\r\n")
                got = b""
                while not got.endswith(b"replica.\r\n"):
                    got += sock.recv(1000)
            assert got == (b"VALUE k 0 5\r\nhello\r\nEND\r\n"
                           b"SERVER_ERROR READONLY You can't write against a read only "
                           b"replica.\r\n")
            client.close()
