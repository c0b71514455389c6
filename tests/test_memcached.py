"""The memcached text protocol of ``bitkv serve --memcached-port`` (docs/memcached.md), through
pymemcache and raw sockets against a real server process: every command, noreply, client
flags, CAS races and CAS across restarts and compaction, exptime, the store shared with the
Redis protocol, bad input and a client that never reads."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pymemcache = pytest.importorskip("pymemcache", reason="pymemcache is needed (the [dev] extra)")
redis = pytest.importorskip("redis", reason="redis-py is needed for the server tests")

from memcached_support import BitkvMemcached, exchange  # noqa: E402
from procs import wait_until  # noqa: E402
from pymemcache.client.base import Client  # noqa: E402
from pymemcache.exceptions import MemcacheClientError, MemcacheServerError  # noqa: E402

from bitkv.server import ServerConfig  # noqa: E402


class FlagsSerde:
    """Values stay bytes; get returns (value, flags), so the tests see the stored flags."""

    def serialize(self, key: object, value: tuple[bytes, int]) -> tuple[bytes, int]:
        return value

    def deserialize(self, key: object, value: bytes, flags: int) -> tuple[bytes, int]:
        return value, flags


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BitkvMemcached]:
    srv = BitkvMemcached(tmp_path_factory.mktemp("mc") / "db")
    yield srv
    srv.stop()
    # No exception reached the event loop or the request loop's last-resort handler.
    assert "Traceback" not in srv.output() and "ERROR" not in srv.output(), srv.output()


@pytest.fixture
def mc(server: BitkvMemcached) -> Iterator[Client]:
    client = Client(("127.0.0.1", server.port), timeout=10, default_noreply=False)
    client.flush_all()
    yield client
    client.close()


@pytest.fixture
def rd(server: BitkvMemcached) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=server.redis_port, socket_timeout=10)
    yield client
    client.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed: an end of file, or a reset (a close with part of the
    request unread is a reset, which may come instead of the end of file)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def raw(server: BitkvMemcached, request: bytes) -> bytes:
    return exchange(server.port, request)


# -- the commands -----------------------------------------------------------------------------


def test_storage_commands(mc: Client) -> None:
    assert mc.set(b"k", b"v1") is True
    assert mc.get(b"k") == b"v1"
    assert mc.add(b"k", b"other") is False  # NOT_STORED: it exists
    assert mc.add(b"new", b"n") is True
    assert mc.replace(b"missing", b"x") is False
    assert mc.replace(b"k", b"v2") is True
    assert mc.append(b"k", b"-tail") is True
    assert mc.prepend(b"k", b"head-") is True
    assert mc.get(b"k") == b"head-v2-tail"
    assert mc.append(b"missing", b"x") is False
    assert mc.prepend(b"missing", b"x") is False
    assert mc.get_many([b"k", b"missing", b"new"]) == {b"k": b"head-v2-tail", b"new": b"n"}
    assert mc.delete(b"k") is True
    assert mc.delete(b"k") is False
    assert mc.get(b"k") is None
    assert mc.set(b"empty", b"") is True
    assert mc.get(b"empty") == b""


def test_client_flags_are_stored_with_the_value(server: BitkvMemcached) -> None:
    client = Client(("127.0.0.1", server.port), serde=FlagsSerde(), default_noreply=False)
    client.set(b"f", (b"payload", 0xDEADBEEF))
    assert client.get(b"f") == (b"payload", 0xDEADBEEF)
    client.append(b"f", (b"+", 7))  # append keeps the item's flags, ignores its own
    assert client.get(b"f") == (b"payload+", 0xDEADBEEF)
    client.set(b"f", (b"x", 0))
    assert client.get(b"f") == (b"x", 0)
    assert raw(server, b"set f 4294967295 0 1\r\nz\r\nget f\r\n") == \
        b"STORED\r\nVALUE f 4294967295 1\r\nz\r\nEND\r\n"
    client.close()


def test_noreply_everywhere_it_is_allowed(server: BitkvMemcached, mc: Client) -> None:
    mc.set(b"n", b"5")
    silent = (b"set a 1 0 1 noreply\r\na\r\nadd b 0 0 1 noreply\r\nb\r\n"
              b"replace a 2 0 2 noreply\r\naa\r\nappend a 0 0 1 noreply\r\n+\r\n"
              b"prepend a 0 0 1 noreply\r\n-\r\nincr n 10 noreply\r\ndecr n 1 noreply\r\n"
              b"touch a 100 noreply\r\ndelete b noreply\r\nverbosity 1 noreply\r\n"
              b"cas a 0 0 1 1 noreply\r\nz\r\nadd a 0 0 1 noreply\r\nq\r\n"
              b"incr a 1 noreply\r\nset a 0 0 1 noreply\r\ntoolong\r\n")
    assert raw(server, silent) == b"ERROR\r\n"  # only the line after the bad chunk answers
    assert mc.get_many([b"a", b"b", b"n"]) == {b"a": b"-aa+", b"n": b"14"}
    assert raw(server, b"flush_all noreply\r\nget a\r\n") == b"END\r\n"


def test_cas_race_between_two_clients(server: BitkvMemcached, mc: Client) -> None:
    other = Client(("127.0.0.1", server.port), default_noreply=False)
    mc.set(b"c", b"0")
    _, cas_a = mc.gets(b"c")
    _, cas_b = other.gets(b"c")
    assert cas_a == cas_b
    assert other.cas(b"c", b"from-b", cas_b) is True
    assert mc.cas(b"c", b"from-a", cas_a) is False  # EXISTS: b changed it first
    assert mc.get(b"c") == b"from-b"
    _value, cas_now = mc.gets(b"c")
    assert cas_now != cas_a
    assert mc.cas(b"c", b"from-a", cas_now) is True
    assert mc.cas(b"nothere", b"x", 1) is None  # NOT_FOUND
    other.close()


def test_concurrent_cas_increments_lose_no_update(server: BitkvMemcached, mc: Client) -> None:
    mc.set(b"ctr", b"0")
    per_client = 40

    def worker() -> None:
        client = Client(("127.0.0.1", server.port), default_noreply=False)
        done = 0
        while done < per_client:
            value, cas = client.gets(b"ctr")
            if client.cas(b"ctr", str(int(value) + 1).encode(), cas):
                done += 1
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert mc.get(b"ctr") == str(3 * per_client).encode()


def test_incr_decr_as_memcached(server: BitkvMemcached, mc: Client) -> None:
    mc.set(b"n", b"10", flags=3)
    assert mc.incr(b"n", 5) == 15
    assert mc.decr(b"n", 100) == 0  # decr stops at 0
    assert mc.get(b"n") == b"0 "  # rewritten in place: padded to the old length
    mc.set(b"big", b"18446744073709551615")
    assert mc.incr(b"big", 2) == 1  # incr wraps at 2**64
    assert mc.incr(b"missing", 1) is None
    mc.set(b"text", b"abc")
    with pytest.raises(MemcacheClientError, match="non-numeric"):
        mc.incr(b"text", 1)
    assert raw(server, b"incr n -1\r\nincr n abc\r\n") == \
        b"CLIENT_ERROR invalid numeric delta argument\r\n" * 2
    assert raw(server, b"gets n\r\n").startswith(b"VALUE n 3 2 ")  # flags kept


def test_exptime_relative_absolute_negative(server: BitkvMemcached, mc: Client,
                                            rd: redis.Redis) -> None:
    now = int(time.time())
    mc.set(b"neg", b"x", expire=-1)
    assert mc.get(b"neg") is None
    mc.set(b"past", b"x", expire=now - 100)  # > 30 days: a Unix time, in the past
    assert mc.get(b"past") is None
    mc.set(b"abs", b"x", expire=now + 1000)
    assert 990 <= rd.ttl(b"abs") <= 1000
    mc.set(b"rel", b"x", expire=2_592_000)  # 30 days exactly: still relative
    assert 2_592_000 - 10 <= rd.ttl(b"rel") <= 2_592_000
    mc.set(b"short", b"x", expire=1)
    assert mc.get(b"short") == b"x"
    time.sleep(1.1)
    assert mc.get(b"short") is None


def test_touch_gat_gats(server: BitkvMemcached, mc: Client, rd: redis.Redis) -> None:
    mc.set(b"t", b"val", flags=9)
    assert mc.touch(b"t", 100) is True
    assert 90 <= rd.ttl(b"t") <= 100
    assert mc.touch(b"nothere", 100) is False
    assert raw(server, b"gat 200 t nothere\r\n") == b"VALUE t 9 3\r\nval\r\nEND\r\n"
    assert 190 <= rd.ttl(b"t") <= 200
    reply = raw(server, b"gats 0 t\r\n")
    assert reply.startswith(b"VALUE t 9 3 ") and reply.endswith(b"\r\nval\r\nEND\r\n")
    assert rd.ttl(b"t") == -1  # exptime 0: never expires
    cas = int(reply.split(b"\r\n")[0].split()[-1])
    assert mc.cas(b"t", b"new", cas) is True  # gats returns the cas a cas can use
    assert raw(server, b"gat -1 t\r\nget t\r\n") == b"VALUE t 0 3\r\nnew\r\nEND\r\nEND\r\n"


def test_flush_all_stats_version_verbosity_quit(server: BitkvMemcached, mc: Client) -> None:
    mc.set(b"a", b"1")
    mc.get(b"a")
    mc.get(b"zz")
    stats = mc.stats()
    assert stats[b"get_hits"] >= 1 and stats[b"get_misses"] >= 1
    assert stats[b"curr_items"] == 1
    assert stats[b"version"].startswith(b"bitkv-")
    assert mc.version().startswith(b"bitkv-")
    assert raw(server, b"verbosity 1\r\n") == b"OK\r\n"
    assert raw(server, b"stats reset\r\n") == b"RESET\r\n"
    assert mc.flush_all() is True
    assert mc.get(b"a") is None
    mc.set(b"later", b"1")
    assert raw(server, b"flush_all 1\r\n") == b"OK\r\n"
    assert mc.get(b"later") == b"1"
    wait_until(lambda: mc.get(b"later") is None, 10, "the delayed flush_all")
    assert raw(server, b"quit\r\nget a\r\n") == b"<EOF>"


# -- one store, two protocols -----------------------------------------------------------------


def test_one_store_two_protocols(server: BitkvMemcached, mc: Client, rd: redis.Redis) -> None:
    raw(server, b"set shared 42 0 5\r\nhello\r\n")
    assert rd.get(b"shared") == b"hello"  # the value, never the flags after it
    assert rd.strlen(b"shared") == 5
    rd.set(b"from-redis", b"abc")
    assert raw(server, b"get from-redis\r\n") == b"VALUE from-redis 0 3\r\nabc\r\nEND\r\n"
    mc.set(b"counter", b"7")
    assert rd.incr(b"counter") == 8
    assert mc.incr(b"counter", 2) == 10
    rd.set(b"shared", b"redis-wins")  # a Redis write replaces the flags with none
    assert raw(server, b"get shared\r\n") == b"VALUE shared 0 10\r\nredis-wins\r\nEND\r\n"
    rd.delete(b"counter")
    assert mc.get(b"counter") is None
    # A memcached write breaks a Redis WATCH (both see the record's seq), and a Redis write
    # makes a memcached cas fail.
    with rd.pipeline() as pipe:
        pipe.watch(b"w")
        mc.set(b"w", b"from-memcached")
        pipe.multi()
        pipe.set(b"w", b"from-redis")
        with pytest.raises(redis.WatchError):
            pipe.execute()
    _, cas = mc.gets(b"w")
    rd.set(b"w", b"redis-again")
    assert mc.cas(b"w", b"stale", cas) is False
    assert rd.get(b"w") == b"redis-again"


def test_cas_and_flags_survive_restart_and_compaction(server: BitkvMemcached,
                                                      mc: Client) -> None:
    raw(server, b"set keep 77 0 4\r\ndata\r\n")
    for i in range(50):  # dead records for compaction to drop
        mc.set(b"churn", str(i).encode())
    before = raw(server, b"gets keep\r\n")
    server.restart()
    assert raw(server, b"gets keep\r\n") == before
    rd = redis.Redis(host="127.0.0.1", port=server.redis_port, socket_timeout=10)
    rd.bgrewriteaof()  # compaction
    deadline = time.time() + 20
    while rd.info("persistence").get("aof_rewrite_in_progress") and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert raw(server, b"gets keep\r\n") == before
    cas = int(before.split(b"\r\n")[0].split()[-1])
    client = Client(("127.0.0.1", server.port), default_noreply=False)
    assert client.cas(b"keep", b"next", cas) is True
    client.close()
    rd.close()


# -- bad input --------------------------------------------------------------------------------


def test_error_lines(server: BitkvMemcached) -> None:
    assert raw(server, b"bogus\r\n") == b"ERROR\r\n"
    assert raw(server, b"set k 0 0\r\n") == b"ERROR\r\n"
    assert raw(server, b"set k 0 0 -1\r\n") == b"CLIENT_ERROR bad command line format\r\n"
    assert raw(server, b"set k 0 0 5\r\nhelloXX\r\n") == \
        b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"
    assert raw(server, b"get " + b"k" * 251 + b"\r\n") == \
        b"CLIENT_ERROR bad command line format\r\n"
    assert raw(server, b"delete k 5\r\n") == \
        b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
    assert raw(server, b"touch k abc\r\n") == b"CLIENT_ERROR invalid exptime argument\r\n"


def test_oversized_value_is_refused_and_swallowed(server: BitkvMemcached, mc: Client) -> None:
    mc.set(b"big", b"old")
    size = 1024 * 1024 + 1
    assert raw(server, b"set big 0 0 %d\r\n" % size + b"x" * size + b"\r\nget big\r\n") == \
        b"SERVER_ERROR object too large for cache\r\nEND\r\n"  # the old value is gone too
    with pytest.raises(MemcacheServerError, match="too large"):
        mc.set(b"big2", b"y" * size)
    assert mc.set(b"fits", b"z" * (1024 * 1024)) is True


def test_binary_garbage_and_bad_lengths_leave_the_server_up(server: BitkvMemcached,
                                                             mc: Client) -> None:
    assert raw(server, b"\x00\x01\x02\xff\r\n") == b"ERROR\r\n"
    assert raw(server, b"set k 0 0 99999999999999999999999\r\n") == \
        b"CLIENT_ERROR bad command line format\r\n"
    assert raw(server, bytes(range(256)) * 4 + b"\r\n").endswith(b"ERROR\r\n")
    assert mc.set(b"alive", b"yes") is True


def test_a_line_without_newline_closes_the_connection(server: BitkvMemcached,
                                                      mc: Client) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"x" * 3000)  # no "\n" in 2048 bytes: memcached closes too
        assert closed_by_server(sock)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"get " + b"k " * 40_000)  # a multi-get line may be longer, up to 64 KiB
        assert closed_by_server(sock)
    assert mc.set(b"alive", b"yes") is True


def test_a_client_that_never_reads_costs_bounded_memory(server: BitkvMemcached,
                                                        mc: Client) -> None:
    mc.set(b"big", b"v" * (512 * 1024))
    baseline = server.rss_kib()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    request = b"get big big big big\r\n" * 5000  # ~10 GB of replies if nothing stopped it
    sock.setblocking(False)
    sent = 0
    deadline = time.time() + 3
    while sent < len(request) and time.time() < deadline:
        try:
            sent += sock.send(request[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(0.5)
    grown = server.rss_kib() - baseline
    start = time.perf_counter()
    assert mc.get(b"alive2") is None  # others are served meanwhile
    assert time.perf_counter() - start < 5
    sock.close()
    assert grown < 40 * 1024, f"RSS grew by {grown} KiB for a client that never reads"


# -- listening --------------------------------------------------------------------------------


def test_non_loopback_memcached_listener_needs_an_explicit_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no authentication"):
        ServerConfig(dir=str(tmp_path), memcached_port=0, memcached_hosts=("0.0.0.0",),
                     requirepass="secret")  # a Redis password does not protect it
    ServerConfig(dir=str(tmp_path), memcached_port=0, memcached_hosts=("0.0.0.0",),
                 memcached_allow_remote=True)
    ServerConfig(dir=str(tmp_path), memcached_port=0, memcached_hosts=("::1", "localhost"))
    done = subprocess.run(
        [sys.executable, "-m", "bitkv.server", "--dir", str(tmp_path / "d"), "--port", "0",
         "--memcached-port", "0", "--memcached-bind", "0.0.0.0"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--memcached-allow-remote" in done.stderr
