"""Pub/Sub on `bitkv serve`: SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE and their UNs, PUBLISH, PUBSUB,
RESP2 and RESP3, the subscribed-mode restrictions, cleanup on disconnect, the output limit
that closes a subscriber that does not read, RESET, and CLIENT KILL / CLIENT LIST.

The byte-exact expectations were taken from Redis 7.0.15 (the same commands sent to
``redis-server``)."""

from __future__ import annotations

import socket
import threading
import time

import pytest

redis = pytest.importorskip("redis", reason="redis-py is needed for the server tests")

from procs import wait_until  # noqa: E402

import bitkv  # noqa: E402
from bitkv.server import ServerThread  # noqa: E402

# The same code in both engine modes: CI's pure-Python run skips it (.ci/run).
pytestmark = pytest.mark.engine_independent

ResponseError = redis.exceptions.ResponseError
MiB = 1024 * 1024
RESTRICTED = ("only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in "
              "this context")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = tmp_path_factory.mktemp("pubsub") / "db"
    with ServerThread(dir=str(path), port=0) as srv:
        yield srv


def client(srv, protocol: int = 2, **kwargs) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=srv.port, protocol=protocol, socket_timeout=10,
                       **kwargs)


@pytest.fixture
def r(server):
    c = client(server)
    yield c
    c.close()


def enc(*args: str | bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        b = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%b\r\n" % (len(b), b)
    return out


class Raw:
    """A plain socket, to check the exact bytes of replies and pushes."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))

    def send(self, *args: str | bytes) -> None:
        self.sock.sendall(enc(*args))

    def read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def expect(self, want: bytes) -> None:
        assert self.read(len(want)) == want

    def readline(self) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = self.sock.recv(1)
            if not chunk:
                break
            data += chunk
        return data

    def drain(self, wait: float = 0.3) -> bytes:
        """Whatever arrives until nothing more does for ``wait`` seconds."""
        self.sock.settimeout(wait)
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
        finally:
            self.sock.settimeout(10)
        return data

    def hello3(self, *more: str) -> None:
        self.send("HELLO", "3", *more)
        assert self.drain().startswith(b"%")

    def command(self, *args: str | bytes) -> bytes:
        """Send a command and return its one-line reply."""
        self.send(*args)
        return self.readline()

    def info(self) -> dict[str, str]:
        """CLIENT INFO of this connection, as a dict."""
        self.send("CLIENT", "INFO")
        size = int(self.readline()[1:-2])
        line = self.read(size + 2).decode().strip()
        return dict(field.split("=", 1) for field in line.split(" "))

    def closed_by_server(self, timeout: float = 10) -> bool:
        """Read (and discard) until the server closes the connection."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(1 << 20):
                pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def subscribed(kind: bytes, name: bytes, count: int, resp3: bool = False) -> bytes:
    head = b">3\r\n" if resp3 else b"*3\r\n"
    return head + b"$%d\r\n%b\r\n$%d\r\n%b\r\n:%d\r\n" % (len(kind), kind, len(name), name, count)


def message(channel: bytes, data: bytes, resp3: bool = False) -> bytes:
    head = b">3\r\n" if resp3 else b"*3\r\n"
    return head + b"$7\r\nmessage\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(channel), channel,
                                                                   len(data), data)


def next_message(p, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = p.get_message(timeout=0.5)
        if m is not None and m["type"] in ("message", "pmessage", "smessage"):
            return m
    raise AssertionError("no message arrived")


# -- through redis-py ------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 3])
def test_subscribe_publish_with_redis_py(server, protocol):
    sub = client(server, protocol)
    pub = client(server)
    p = sub.pubsub()
    try:
        p.subscribe("news", "sport")
        confirmations = [p.get_message(timeout=5) for _ in range(2)]
        assert [(m["type"], m["channel"], m["data"]) for m in confirmations] == \
            [("subscribe", b"news", 1), ("subscribe", b"sport", 2)]
        assert pub.publish("news", "hello") == 1
        assert pub.publish("weather", "ignored") == 0
        assert pub.publish("sport", b"\x00binary\r\n") == 1
        got = [next_message(p), next_message(p)]
        assert [(m["channel"], m["data"]) for m in got] == \
            [(b"news", b"hello"), (b"sport", b"\x00binary\r\n")]
        p.unsubscribe("news")
        m = p.get_message(timeout=5)
        assert (m["type"], m["channel"], m["data"]) == ("unsubscribe", b"news", 1)
        assert pub.publish("news", "nobody") == 0
    finally:
        p.close()
        sub.close()
        pub.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_patterns(server, protocol):
    sub = client(server, protocol)
    pub = client(server)
    p = sub.pubsub()
    try:
        p.psubscribe("news.*", "h?llo", "[ab]x")
        for _ in range(3):
            assert p.get_message(timeout=5)["type"] == "psubscribe"
        p.subscribe("news.art")
        assert p.get_message(timeout=5)["data"] == 4  # channels and patterns counted together
        assert pub.publish("news.art", "m1") == 2  # the channel and the pattern
        got = {(m["type"], m["pattern"], m["channel"]) for m in (next_message(p),
                                                                 next_message(p))}
        assert got == {("message", None, b"news.art"), ("pmessage", b"news.*", b"news.art")}
        assert pub.publish("hallo", "m2") == 1
        assert next_message(p)["pattern"] == b"h?llo"
        assert pub.publish("bx", "m3") == 1
        assert pub.publish("cx", "m4") == 0
        assert pub.execute_command("PUBSUB", "NUMPAT") >= 3
        p.punsubscribe("news.*")
        m = p.get_message(timeout=5)
        while m["type"] != "punsubscribe":
            m = p.get_message(timeout=5)
        assert (m["channel"], m["data"]) == (b"news.*", 3)
        assert pub.publish("news.x", "gone") == 0
    finally:
        p.close()
        sub.close()
        pub.close()


def test_publish_reaches_every_subscriber_in_order(server):
    subs = [Raw(server.port) for _ in range(5)]
    pub = client(server)
    try:
        for i, s in enumerate(subs):
            if i % 2:
                s.hello3()
            s.send("SUBSCRIBE", "fan")
        for i, s in enumerate(subs):
            s.expect(subscribed(b"subscribe", b"fan", 1, resp3=bool(i % 2)))
        pipe = pub.pipeline(transaction=False)
        for n in range(100):
            pipe.publish("fan", f"m{n}")
        assert pipe.execute() == [5] * 100
        for i, s in enumerate(subs):
            for n in range(100):
                s.expect(message(b"fan", b"m%d" % n, resp3=bool(i % 2)))
    finally:
        for s in subs:
            s.close()
        pub.close()


def test_shard_channels_are_a_namespace_of_their_own(server, r):
    s = Raw(server.port)
    try:
        s.send("SSUBSCRIBE", "s1")
        s.expect(subscribed(b"ssubscribe", b"s1", 1))
        s.send("SUBSCRIBE", "c1")
        s.expect(subscribed(b"subscribe", b"c1", 1))  # shard channels are counted apart
        assert r.publish("s1", "x") == 0
        assert r.execute_command("SPUBLISH", "s1", "y") == 1
        s.expect(b"*3\r\n$8\r\nsmessage\r\n$2\r\ns1\r\n$1\r\ny\r\n")
        assert r.execute_command("PUBSUB", "SHARDCHANNELS") == [b"s1"]
        assert r.execute_command("PUBSUB", "SHARDNUMSUB", "s1") == [b"s1", 1]
        s.send("SUNSUBSCRIBE")
        s.expect(b"*3\r\n$12\r\nsunsubscribe\r\n$2\r\ns1\r\n:0\r\n")
    finally:
        s.close()


# -- exact replies and the subscribed-mode rules ------------------------------------------------

def test_resp2_subscribed_mode_allows_only_pubsub_commands(server, r):
    s = Raw(server.port)
    try:
        s.send("SUBSCRIBE", "a", "b", "a")
        s.expect(subscribed(b"subscribe", b"a", 1) + subscribed(b"subscribe", b"b", 2)
                 + subscribed(b"subscribe", b"a", 2))
        s.send("PING")
        s.expect(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n")
        s.send("PING", "x")
        s.expect(b"*2\r\n$4\r\npong\r\n$1\r\nx\r\n")
        for args, name in ((("GET", "k"), "get"), (("SET", "k", "v"), "set"),
                           (("CLIENT", "LIST"), "client|list"), (("MULTI",), "multi"),
                           (("config", "get", "x"), "config|get")):
            s.send(*args)
            s.expect(f"-ERR Can't execute '{name}': {RESTRICTED}\r\n".encode())
        assert r.exists("k") == 0  # the refused SET did nothing
        s.send("FOO")  # unknown commands and arity errors come first, as in Redis
        s.expect(b"-ERR unknown command 'FOO', with args beginning with: \r\n")
        s.send("UNSUBSCRIBE")
        s.expect(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n"
                 b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n")
        s.send("UNSUBSCRIBE")  # subscribed to nothing: one confirmation with a null channel
        s.expect(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n")
        s.send("PING")  # out of subscribed mode
        s.expect(b"+PONG\r\n")
        s.send("GET", "k")
        s.expect(b"$-1\r\n")
    finally:
        s.close()


def test_punsubscribe_counts_channels_too(server):
    s = Raw(server.port)
    try:
        s.send("SUBSCRIBE", "c")
        s.expect(subscribed(b"subscribe", b"c", 1))
        s.send("PUNSUBSCRIBE")
        s.expect(b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:1\r\n")
        s.send("PUNSUBSCRIBE", "nope")
        s.expect(b"*3\r\n$12\r\npunsubscribe\r\n$4\r\nnope\r\n:1\r\n")
    finally:
        s.close()


def test_resp3_has_no_restrictions_and_gets_push_messages(server, r):
    s = Raw(server.port)
    try:
        s.hello3()
        s.send("SUBSCRIBE", "a")
        s.expect(subscribed(b"subscribe", b"a", 1, resp3=True))
        s.send("GET", "nosuch")
        s.expect(b"_\r\n")
        s.send("PING")
        s.expect(b"+PONG\r\n")
        assert r.publish("a", "x") == 1
        s.expect(message(b"a", b"x", resp3=True))
        # Publishing to itself: the push comes after the replies before it, then the count.
        s.sock.sendall(enc("GET", "nosuch") + enc("PUBLISH", "a", "self"))
        s.expect(b"_\r\n" + message(b"a", b"self", resp3=True) + b":1\r\n")
        s.send("HELLO", "2")  # back to RESP2 while subscribed: restricted from now on
        assert s.drain().startswith(b"*")
        s.send("GET", "nosuch")
        s.expect(f"-ERR Can't execute 'get': {RESTRICTED}\r\n".encode())
    finally:
        s.close()


def test_subscribe_inside_multi(server, r):
    s = Raw(server.port)
    try:
        s.sock.sendall(enc("MULTI") + enc("SUBSCRIBE", "m") + enc("PUBLISH", "m", "x")
                       + enc("EXEC"))
        s.expect(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n" + subscribed(b"subscribe", b"m", 1)
                 + message(b"m", b"x") + b":1\r\n")
        assert r.execute_command("PUBSUB", "NUMSUB", "m") == [b"m", 1]
    finally:
        s.close()


def test_pubsub_introspection_and_info(server, r):
    a, b = Raw(server.port), Raw(server.port)
    try:
        before = r.info("stats")
        a.send("SUBSCRIBE", "i.one", "i.two")
        a.read(2 * len(subscribed(b"subscribe", b"i.one", 1)))
        b.send("SUBSCRIBE", "i.one")
        b.read(len(subscribed(b"subscribe", b"i.one", 1)))
        b.send("PSUBSCRIBE", "i.*", "other.*")
        b.read(len(subscribed(b"psubscribe", b"i.*", 2))
               + len(subscribed(b"psubscribe", b"other.*", 3)))
        assert sorted(r.execute_command("PUBSUB", "CHANNELS", "i.*")) == [b"i.one", b"i.two"]
        assert r.execute_command("PUBSUB", "CHANNELS", "i.t*") == [b"i.two"]
        assert r.execute_command("PUBSUB", "NUMSUB", "i.one", "i.two", "i.none") == \
            [b"i.one", 2, b"i.two", 1, b"i.none", 0]
        assert r.execute_command("PUBSUB", "NUMSUB") == []
        assert r.execute_command("PUBSUB", "NUMPAT") == before["pubsub_patterns"] + 2
        stats = r.info("stats")
        assert stats["pubsub_channels"] == before["pubsub_channels"] + 2
        assert stats["pubsub_patterns"] == before["pubsub_patterns"] + 2
        assert "pubsubshard_channels" in stats
        for args, text in [
            (("NUMPAT", "x"), "wrong number of arguments for 'pubsub|numpat' command"),
            (("CHANNELS", "x", "y"), "unknown subcommand or wrong number of arguments for "
                                     "'CHANNELS'. Try PUBSUB HELP."),
            (("FOO",), "unknown subcommand 'FOO'. Try PUBSUB HELP."),
        ]:
            with pytest.raises(ResponseError) as info:
                r.execute_command("PUBSUB", *args)
            assert str(info.value) == text
    finally:
        a.close()
        b.close()


def test_disconnect_drops_every_subscription(server, r):
    s = Raw(server.port)
    s.send("SUBSCRIBE", "gone.1", "gone.2")
    s.send("PSUBSCRIBE", "gone.*")
    s.send("SSUBSCRIBE", "gone.s")
    s.read(4 * len(subscribed(b"subscribe", b"gone.1", 1)))
    assert r.execute_command("PUBSUB", "NUMSUB", "gone.1", "gone.2") == \
        [b"gone.1", 1, b"gone.2", 1]
    patterns = r.execute_command("PUBSUB", "NUMPAT")
    s.close()

    def forgotten() -> bool:
        return r.execute_command("PUBSUB", "NUMSUB", "gone.1", "gone.2") == \
            [b"gone.1", 0, b"gone.2", 0]

    wait_until(forgotten, what="the subscriptions of a closed connection to go")
    assert r.execute_command("PUBSUB", "NUMPAT") == patterns - 1
    assert r.execute_command("PUBSUB", "SHARDNUMSUB", "gone.s") == [b"gone.s", 0]
    assert b"gone.1" not in r.execute_command("PUBSUB", "CHANNELS")
    assert r.publish("gone.1", "x") == 0


def test_reset(tmp_path):
    with ServerThread(dir=str(tmp_path / "db"), port=0, requirepass="pw") as srv:
        s = Raw(srv.port)
        try:
            s.hello3("AUTH", "default", "pw", "SETNAME", "me")
            s.send("SUBSCRIBE", "r")
            s.expect(subscribed(b"subscribe", b"r", 1, resp3=True))
            s.send("MULTI")
            s.expect(b"+OK\r\n")
            s.send("RESET")  # runs at once inside MULTI, like QUIT
            s.expect(b"+RESET\r\n")
            s.send("GET", "k")  # RESP2 again, and the password is asked for again
            s.expect(b"-NOAUTH Authentication required.\r\n")
            s.send("AUTH", "pw")
            s.expect(b"+OK\r\n")
            s.send("CLIENT", "GETNAME")
            s.expect(b"$-1\r\n")
            s.send("EXEC")
            s.expect(b"-ERR EXEC without MULTI\r\n")
            s.send("PUBSUB", "NUMSUB", "r")
            s.expect(b"*2\r\n$1\r\nr\r\n:0\r\n")
        finally:
            s.close()


def test_reset_in_subscribed_mode_and_without_a_password(server):
    s = Raw(server.port)
    try:
        s.send("SUBSCRIBE", "x")
        s.expect(subscribed(b"subscribe", b"x", 1))
        s.send("RESET")
        s.expect(b"+RESET\r\n")
        s.send("PING")
        s.expect(b"+PONG\r\n")
    finally:
        s.close()


# -- a subscriber that does not read ---------------------------------------------------------

def test_a_subscriber_that_does_not_read_is_closed_at_the_hard_limit(tmp_path):
    limit = (4 * MiB, 2 * MiB, 60.0)
    with ServerThread(dir=str(tmp_path / "db"), port=0, pubsub_output_limit=limit) as srv:
        slow = Raw(srv.port, rcvbuf=4096)
        fast = Raw(srv.port)
        pub = client(srv)
        other = client(srv)
        try:
            for s in (slow, fast):
                s.send("SUBSCRIBE", "big")
                s.expect(subscribed(b"subscribe", b"big", 1))
            payload = b"x" * (256 * 1024)
            for _ in range(64):  # 16 MiB in all, 4 times the limit
                assert pub.publish("big", payload) >= 1
                # The subscriber that reads keeps up and is never closed.
                fast.expect(message(b"big", payload))
                assert other.ping() is True  # the server stays responsive throughout
            assert pub.execute_command("PUBSUB", "NUMSUB", "big") == [b"big", 1]
            assert slow.closed_by_server()
            assert pub.publish("big", "after") == 1  # only the reader is left
            fast.expect(message(b"big", b"after"))
        finally:
            for s in (slow, fast):
                s.close()
            pub.close()
            other.close()


def test_a_subscriber_over_the_soft_limit_for_too_long_is_closed(tmp_path):
    limit = (64 * MiB, 1 * MiB, 0.0)  # over 1 MiB for more than 0 s: at the next message
    with ServerThread(dir=str(tmp_path / "db"), port=0, pubsub_output_limit=limit) as srv:
        slow = Raw(srv.port, rcvbuf=4096)
        pub = client(srv)
        try:
            slow.send("SUBSCRIBE", "soft")
            slow.expect(subscribed(b"subscribe", b"soft", 1))
            # 10 MiB: more than the kernel's socket buffers (up to 4 MiB) and the soft limit
            # together, far below the hard limit.
            for _ in range(40):
                pub.publish("soft", b"y" * (256 * 1024))
            assert pub.execute_command("PUBSUB", "NUMSUB", "soft") == [b"soft", 1]
            time.sleep(2.2)  # the server's clock moves in whole seconds
            pub.publish("soft", "one more")
            wait_until(lambda: pub.execute_command("PUBSUB", "NUMSUB", "soft") == [b"soft", 0],
                     what="the slow subscriber to be closed")
            assert slow.closed_by_server()
        finally:
            slow.close()
            pub.close()


def test_a_message_never_overtakes_an_earlier_reply(tmp_path):
    """The subscriber's reply to a write waits for the end-of-iteration fsync (--sync
    always); a message published in that iteration, before the fsync, is sent after it."""
    db = bitkv.open(str(tmp_path / "db"), sync="never")
    real_sync_pending = db.sync_pending
    fsync_started = threading.Event()
    holder: list[ServerThread] = []

    def sync_pending_publishing_first() -> None:
        # Runs on the loop thread while the SET's and SUBSCRIBE's replies are held: a
        # PUBLISH another client sent in the same iteration would be delivered right here.
        if not fsync_started.is_set():
            fsync_started.set()
            server = holder[0].server
            assert server is not None
            assert server.pubsub.publish(b"o", b"early")[0] == 1  # (deliveries, own message)
        real_sync_pending()

    db.sync_pending = sync_pending_publishing_first  # type: ignore[method-assign]
    try:
        with ServerThread(dir=str(tmp_path / "db"), port=0, sync="always", store=db) as srv:
            holder.append(srv)
            s = Raw(srv.port)
            try:
                s.sock.sendall(enc("SET", "k", "v") + enc("SUBSCRIBE", "o"))
                assert fsync_started.wait(5)
                s.expect(b"+OK\r\n" + subscribed(b"subscribe", b"o", 1)
                         + message(b"o", b"early"))
            finally:
                s.close()
    finally:
        db.close()


# -- CLIENT KILL and CLIENT LIST ---------------------------------------------------------------

def test_client_kill_old_form(server, r):
    victim = Raw(server.port)
    try:
        addr = victim.info()["addr"]
        assert r.execute_command("CLIENT", "KILL", addr) == b"OK"
        assert victim.closed_by_server()
        with pytest.raises(ResponseError, match="No such client"):
            r.execute_command("CLIENT", "KILL", addr)
        with pytest.raises(ResponseError, match="No such client"):
            r.execute_command("CLIENT", "KILL", "1.2.3.4:5")
    finally:
        victim.close()


def test_client_kill_old_form_kills_the_caller_after_its_reply(server):
    s = Raw(server.port)
    try:
        addr = s.info()["addr"]
        s.sock.sendall(enc("CLIENT", "KILL", addr) + enc("PING"))
        s.expect(b"+OK\r\n")
        assert s.closed_by_server()
    finally:
        s.close()


def test_client_kill_filters(server, r):
    subs = [Raw(server.port) for _ in range(2)]
    normal = Raw(server.port)
    try:
        for s in subs:
            s.send("SUBSCRIBE", "kill.me")
            s.expect(subscribed(b"subscribe", b"kill.me", 1))
        me = {k: str(v) for k, v in r.client_info().items()}
        listed = r.client_list(_type="pubsub")
        assert len(listed) >= 2
        assert all(c["flags"] == "P" and c["sub"] == "1" for c in listed)
        assert r.client_list(_type="master") == []

        assert r.execute_command("CLIENT", "KILL", "TYPE", "pubsub") == len(listed)
        for s in subs:
            assert s.closed_by_server()
        wait_until(lambda: r.execute_command("PUBSUB", "NUMSUB", "kill.me") == [b"kill.me", 0],
                 what="the killed subscribers' subscriptions to go")

        info = normal.info()
        assert r.execute_command("CLIENT", "KILL", "ID", info["id"], "TYPE", "pubsub") == 0
        assert r.execute_command("CLIENT", "KILL", "ID", info["id"], "USER", "default",
                                 "LADDR", info["laddr"], "MAXAGE", 1000) == 0  # too young
        assert r.execute_command("CLIENT", "KILL", "ADDR", info["addr"], "LADDR", "1.2.3.4:5") \
            == 0
        assert r.execute_command("CLIENT", "KILL", "ID", info["id"], "TYPE", "normal",
                                 "ADDR", info["addr"], "LADDR", info["laddr"],
                                 "USER", "default") == 1
        assert normal.closed_by_server()
        # The caller itself is spared unless SKIPME no.
        assert r.execute_command("CLIENT", "KILL", "ID", me["id"]) == 0
        assert r.execute_command("CLIENT", "KILL", "ADDR", me["addr"], "SKIPME", "yes") == 0
        assert r.ping() is True
    finally:
        for s in subs:
            s.close()
        normal.close()


def test_client_kill_skipme_no_closes_the_caller_after_the_reply(server):
    s = Raw(server.port)
    try:
        cid = s.info()["id"]
        s.sock.sendall(enc("CLIENT", "KILL", "ID", cid, "SKIPME", "no") + enc("PING"))
        s.expect(b":1\r\n")
        assert s.closed_by_server()
    finally:
        s.close()


def test_client_kill_maxage(server, r):
    old = Raw(server.port)
    young = None
    try:
        old_id = old.info()["id"]
        time.sleep(2.1)
        young = Raw(server.port)
        young_id = young.info()["id"]
        assert r.execute_command("CLIENT", "KILL", "MAXAGE", 2, "TYPE", "normal") >= 1
        assert old.closed_by_server()
        ids = {c["id"] for c in r.client_list()}
        assert old_id not in ids
        assert young_id in ids
    finally:
        old.close()
        if young is not None:
            young.close()


def test_client_kill_and_list_errors(r):
    cases = [
        (("CLIENT", "KILL"), "wrong number of arguments for 'client|kill' command"),
        (("CLIENT", "KILL", "ID", "0"), "client-id should be greater than 0"),
        (("CLIENT", "KILL", "ID", "x"), "client-id should be greater than 0"),
        (("CLIENT", "KILL", "TYPE", "foo"), "Unknown client type 'foo'"),
        (("CLIENT", "KILL", "USER", "bob"), "No such user 'bob'"),
        (("CLIENT", "KILL", "SKIPME", "maybe"), "syntax error"),
        (("CLIENT", "KILL", "FOO", "bar"), "syntax error"),
        (("CLIENT", "KILL", "ID", "99999", "TYPE"), "syntax error"),
        (("CLIENT", "KILL", "MAXAGE", "0"), "maxage should be greater than 0"),
        (("CLIENT", "KILL", "MAXAGE", "x"), "maxage is not an integer or out of range"),
        (("CLIENT", "LIST", "TYPE", "foo"), "Unknown client type 'foo'"),
        (("CLIENT", "LIST", "ID", "x"), "Invalid client ID"),
        (("CLIENT", "LIST", "foo"), "syntax error"),
        (("CLIENT", "LIST", "TYPE", "normal", "ID", "1"), "syntax error"),
    ]
    for args, text in cases:
        with pytest.raises(ResponseError) as info:
            r.execute_command(*args)
        assert str(info.value) == text, args


def test_client_list_by_id(server, r):
    other = client(server)
    try:
        mine, theirs = str(r.client_info()["id"]), str(other.client_info()["id"])
        listed = r.client_list(client_id=[theirs, "99999", mine])
        assert [c["id"] for c in listed] == [theirs, mine]
        normal = r.client_list(_type="normal")
        assert {mine, theirs} <= {c["id"] for c in normal}
    finally:
        other.close()


def test_replication_sets_the_client_type_and_kill_and_list_follow(server, r):
    """Replication marks its connections with ``client_type``: "replica" for a replica
    attached to this server, "master" for the link to a master."""
    link = Raw(server.port)
    try:
        link.send("CLIENT", "SETNAME", "pretend-replica")
        link.expect(b"+OK\r\n")
        assert server.server is not None
        conn = next(c for c in list(server.server.clients) if c.name == b"pretend-replica")
        assert conn.client_type == "normal"
        with pytest.raises(ValueError):
            conn.client_type = "pubsub"  # follows from subscriptions, not set
        conn.client_type = "replica"
        assert conn.client_type == "replica"
        listed = r.client_list(_type="replica")
        assert [c["name"] for c in listed] == ["pretend-replica"]
        assert listed[0]["flags"] == "S"
        listing = r.execute_command("CLIENT", "LIST", "TYPE", "slave").decode()
        assert [line.split(" name=")[1].split()[0] for line in listing.splitlines()] == \
            ["pretend-replica"]
        link.send("RESET")
        link.expect(b"-ERR can only reset normal client connections\r\n")
        conn.client_type = "master"
        assert r.client_list(_type="master")[0]["flags"] == "M"
        assert r.execute_command("CLIENT", "KILL", "TYPE", "replica") == 0
        assert r.execute_command("CLIENT", "KILL", "TYPE", "master") == 1
        assert link.closed_by_server()
    finally:
        link.close()


def test_sentinel_failover_transaction_kills_normal_and_pubsub_clients(server):
    """What Sentinel sends to a replica it promotes (sentinelSendSlaveOf, minus the SLAVEOF,
    which is replication's): every normal and pubsub client but its own connection is
    disconnected, and EXEC runs everything (CONFIG REWRITE persists the role: replication)."""
    sentinel = Raw(server.port)
    victims = [Raw(server.port), Raw(server.port)]
    sub = Raw(server.port)
    try:
        for v in victims:
            assert v.command("PING") == b"+PONG\r\n"
        sub.send("SUBSCRIBE", "__sentinel__:hello")
        sub.expect(subscribed(b"subscribe", b"__sentinel__:hello", 1))
        sentinel.sock.sendall(enc("MULTI") + enc("CONFIG", "REWRITE")
                              + enc("CLIENT", "KILL", "TYPE", "normal")
                              + enc("CLIENT", "KILL", "TYPE", "pubsub") + enc("EXEC"))
        sentinel.expect(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n")
        assert sentinel.readline() == b"+OK\r\n"  # CONFIG REWRITE: the REPLICA file
        assert int(sentinel.readline()[1:-2]) >= 2  # the victims (and any other client)
        sentinel.expect(b":1\r\n")
        assert sub.closed_by_server()
        for v in victims:
            assert v.closed_by_server()
        assert sentinel.command("PING") == b"+PONG\r\n"
    finally:
        sentinel.close()
        sub.close()
        for v in victims:
            v.close()


# -- delivery order and batching, on connections driven directly -----------------------------

class FakeTransport:
    """What a Connection needs of an asyncio transport; records every write."""

    def __init__(self, peer: int) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.peer = ("127.0.0.1", peer)

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)

    def get_extra_info(self, name: str):
        return self.peer if name == "peername" else ("127.0.0.1", 6380)

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def writelines(self, chunks) -> None:
        self.writes.append(b"".join(chunks))

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close


def test_messages_are_written_once_per_loop_iteration_and_before_later_replies(tmp_path):
    import asyncio

    from bitkv.server.app import Connection, Server, ServerConfig

    async def scenario() -> None:
        server = Server(ServerConfig(dir=str(tmp_path / "db"), port=0))
        await server.start()
        try:
            sub_t, pub_t = FakeTransport(1), FakeTransport(2)
            sub, pub = Connection(server), Connection(server)
            sub.connection_made(sub_t)
            pub.connection_made(pub_t)
            sub.data_received(enc("SUBSCRIBE", "ch"))
            assert sub_t.data == subscribed(b"subscribe", b"ch", 1)
            sub_t.writes.clear()

            # 16 pipelined PUBLISHes: the subscriber gets them in one write, at the end of
            # the loop iteration.
            pub.data_received(b"".join(enc("PUBLISH", "ch", f"m{i}") for i in range(16)))
            assert pub_t.data == b":1\r\n" * 16
            assert sub_t.writes == []
            await asyncio.sleep(0)
            assert sub_t.writes == [b"".join(message(b"ch", b"m%d" % i) for i in range(16))]
            sub_t.writes.clear()

            # A message published before the subscriber's next command is read goes out
            # before that command's reply, even within the same loop iteration.
            pub.data_received(enc("PUBLISH", "ch", "first"))
            sub.data_received(enc("UNSUBSCRIBE", "ch"))
            assert sub_t.data == message(b"ch", b"first") \
                + b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n"
            await asyncio.sleep(0)
            assert len(sub_t.writes) == 2  # nothing more was held back
        finally:
            await server.shutdown()

    asyncio.run(scenario())


def test_a_read_only_replica_refuses_writes_before_the_subscribed_mode_does(tmp_path):
    """Redis checks READONLY before the Pub/Sub restriction (processCommand), so a RESP2
    subscriber on a replica gets -READONLY for a write and the restriction for the rest."""
    with socket.socket() as s:  # a master address where nothing listens: a replica anyway
        s.bind(("127.0.0.1", 0))
        nowhere = s.getsockname()[1]
    with ServerThread(dir=str(tmp_path / "db"), port=0,
                      replicaof=f"127.0.0.1:{nowhere}") as srv:
        sub = Raw(srv.port)
        try:
            sub.send("SUBSCRIBE", "ro")
            sub.expect(subscribed(b"subscribe", b"ro", 1))
            sub.send("SET", "k", "v")
            sub.expect(b"-READONLY You can't write against a read only replica.\r\n")
            sub.send("GET", "k")
            sub.expect(f"-ERR Can't execute 'get': {RESTRICTED}\r\n".encode())
        finally:
            sub.close()
