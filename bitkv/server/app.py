"""The asyncio server: connections, the command loop, durability, TLS, shutdown.

Threading model. Commands run on the event loop thread, one at a time (like Redis's main
thread): a Store get is ~2 us and a put ~5-10 us, far cheaper than a hop to a thread pool, so
they are called directly. What can block for long runs elsewhere:

* ``--sync always``: one fsync per event-loop iteration, as Redis's ``appendfsync always``.
  The store is opened with ``sync="always"``, and the loop thread runs inside
  ``Store.deferred_sync()``: its writes return once appended, and the replies produced in an
  iteration in which anything was written (every client's, reads included) are held. At the
  end of the iteration the server calls ``Store.sync_pending()`` (one fsync for everything
  appended, on the loop thread, as Redis does in ``beforeSleep``), then sends them all. So no
  reply follows a write that is not on stable storage yet, and no client reads a value
  before it is durable. Writes made by other threads (compaction, a replica's full-sync
  load) keep the store's own ``"always"`` promise.
* ``--sync interval``: the store's own flusher thread fsyncs every ``sync_interval`` seconds
  (``appendfsync everysec``). ``--sync never`` leaves it to the OS (``appendfsync no``).
* SAVE / BGSAVE call ``Store.sync()`` in a worker thread; BGREWRITEAOF runs
  ``Store.compact()`` in its own thread while reads and writes go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import signal
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import bitkv
from bitkv import settings
from bitkv.record import MAX_KEY_SIZE
from bitkv.structures import PREFIX as RESERVED_PREFIX
from bitkv.structures import Structures, WrongTypeError

from . import clients, prometheus, protected, protocol
from .commands import (
    COMMANDS,
    F_ANY,
    F_ASYNC,
    F_DENYOOM,
    F_NEEDAUTH,
    F_NOAUTH,
    F_NOMULTI,
    F_PUBSUB,
    F_STATE,
    F_TXCTL,
    F_WRITE,
    OOM,
    CommandError,
    ScanIndex,
    Spec,
    arity_error,
    full_name,
    lookup,
    unknown_command_error,
)
from .control import ServerControl
from .master import Peer
from .memcache import Memcache, MemcacheConnection
from .memcache import check_bind as check_memcache_bind
from .memcache.text import DEFAULT_MAX_ITEM_SIZE
from .metrics import OPS_SAMPLE_INTERVAL, CommandStat, Metrics
from .protocol import NIL2, NIL3, OK, QUEUED, Limits, error, make_parser
from .pubsub import PUBSUB_OUTPUT_LIMIT, PubSub, Subscriptions
from .replication import Replication

log = logging.getLogger("bitkv.server")
now_ns = time.perf_counter_ns

try:  # pragma: no cover - depends on the environment
    import uvloop

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover
    HAVE_UVLOOP = False  # uvloop is then unbound: _loop_factory checks HAVE_UVLOOP first

NOAUTH = error("NOAUTH Authentication required.")
SET_SPEC = COMMANDS[b"SET"]
GET_SPEC = COMMANDS[b"GET"]
AUTH_SPEC = COMMANDS[b"AUTH"]
HELLO_SPEC = COMMANDS[b"HELLO"]
NOMULTI = error("ERR Command not allowed inside a transaction")
READONLY = error("READONLY You can't write against a read only replica.")
MAXCLIENTS = error("ERR max number of clients reached")
SYNC_CHOICES = ("always", "interval", "never")
# Replies buffered by one run of pipelined commands before they are written out; if the
# client is then not reading, the rest of the pipeline waits (see Connection._run).
OUTPUT_FLUSH_BYTES = 1 << 20

# AUTH brute force. Unthrottled, one connection tried ~140,000 passwords a second. After a
# failed AUTH (or HELLO ... AUTH) the reply, and everything the connection sent after it,
# waits AUTH_FAILURE_DELAY * 2 ** (failures - 1) seconds, at most AUTH_FAILURE_MAX_DELAY:
# someone who mistyped waits 0.1 s, a guessing loop gets 10 tries per ~15 s, and the
# AUTH_MAX_FAILURES-th failure closes the connection (reconnecting starts over, which is
# what the server-wide limit below is for).
AUTH_FAILURE_DELAY = 0.1
AUTH_FAILURE_MAX_DELAY = 3.0
AUTH_MAX_FAILURES = 10
# Server-wide, so that many connections cannot guess in parallel: failed attempts draw from
# a bucket of AUTH_GLOBAL_BURST tokens refilled at AUTH_GLOBAL_RATE a second (the burst
# covers a fleet of clients restarting with a stale password). When it is empty, an attempt
# waits for its turn before the password is compared at all (so a right guess is confirmed
# no sooner than a wrong one), and one that would wait more than AUTH_GLOBAL_MAX_WAIT is
# refused unchecked and its connection closed: at most ~20 guesses a second in total.
AUTH_GLOBAL_RATE = 20.0
AUTH_GLOBAL_BURST = 100
AUTH_GLOBAL_MAX_WAIT = 5.0
TOO_MANY_AUTH = error("ERR too many failed AUTH attempts on this server, try again later")
QUERY_BUFFERS_FULL = error("ERR the server's total query buffer limit was reached; closing "
                           "the connection with the largest partial request")


@dataclass
class ServerConfig:
    """Everything ``bitkv serve`` can be told. ``hosts`` are the addresses to bind."""

    dir: str = "bitkv-data"
    hosts: tuple[str, ...] = ("127.0.0.1",)
    port: int = 6380
    requirepass: str | bytes | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca_cert: str | None = None  # when set, clients must present a certificate it signed
    sync: str = "interval"
    sync_interval: float = 1.0
    max_bulk_len: int = protocol.DEFAULT_MAX_BULK_LEN
    max_multibulk_len: int = protocol.DEFAULT_MAX_MULTIBULK_LEN
    max_query_buffer: int = protocol.DEFAULT_MAX_QUERY_BUFFER
    # Bytes held in incomplete requests across all clients (None: 2 * max_query_buffer, so
    # two requests of the largest size can arrive at once); see Server.shed_partial_requests.
    max_query_buffer_total: int | None = None
    maxclients: int = 10000
    # Redis's `client-output-buffer-limit pubsub`: (hard bytes, soft bytes, soft seconds) of
    # output waiting for a subscriber before it is closed (see Connection.push).
    pubsub_output_limit: tuple[int, int, float] = PUBSUB_OUTPUT_LIMIT
    use_hiredis: bool | None = None  # None: when installed (False alone: the Python parser)
    use_native: bool | None = None  # the compiled RESP parser; None: when built
    use_uvloop: bool | None = None  # None: when installed
    store_options: dict[str, Any] = field(default_factory=dict)  # more bitkv.open() options
    # The store's AES-256 key (bitkv serve reads it from --key-file or the environment, never
    # argv); kept out of repr so that a logged config does not leak it.
    encryption_key: bytes | None = field(default=None, repr=False)
    # Replication, the replica side (docs/replication.md). None: not given (a value that
    # CONFIG REWRITE persisted in the store directory applies, else the default).
    replicaof: str | None = None  # "HOST:PORT" of the master to follow
    masterauth: str | None = None
    masteruser: str | None = None
    master_tls: bool = False  # connect to the master over TLS
    master_tls_ca_cert: str | None = None  # the CA of the master's certificate
    repl_timeout: float | None = None  # seconds (default 60)
    replica_read_only: bool | None = None  # default True
    replica_priority: int | None = None  # default 100
    replica_announce_ip: str | None = None
    replica_announce_port: int | None = None
    # Redis's protected mode (protected.py): without a password, loopback clients only.
    protected_mode: bool = True
    # Cache mode (docs/cache.md): the bound on live bytes and its eviction policy; None: as
    # the store records (bitkv.open's max_bytes and eviction).
    max_bytes: int | None = None
    eviction: str | None = None
    # Where run_server logs (None: stderr) and from which level (Redis's names or Python's).
    loglevel: str = "notice"
    logfile: str | None = None
    # The Prometheus endpoint (prometheus.py; needs the [metrics] extra). None: off; 0: any
    # free port. It has no password, so protected mode keeps it on loopback.
    metrics_port: int | None = None
    metrics_bind: str = "127.0.0.1"
    # The memcached text protocol (docs/memcached.md): its port (None: not served), where it
    # listens (loopback unless memcached_allow_remote: the protocol has no authentication),
    # and the largest value it stores (memcached's -I).
    memcached_port: int | None = None
    memcached_hosts: tuple[str, ...] = ("127.0.0.1",)
    memcached_allow_remote: bool = False
    memcached_max_item_size: int = DEFAULT_MAX_ITEM_SIZE

    def __post_init__(self) -> None:
        given: object = self.hosts  # callers may pass one string of space-separated hosts
        if isinstance(given, str):
            self.hosts = tuple(given.split())
        self.hosts = tuple(self.hosts)
        if not self.hosts:
            raise ValueError("at least one bind address is needed")
        if self.sync not in SYNC_CHOICES:
            raise ValueError(f"sync must be one of {', '.join(SYNC_CHOICES)}, not {self.sync!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("TLS needs both a certificate (--tls-cert) and a key (--tls-key)")
        if self.tls_ca_cert and not self.tls_cert:
            raise ValueError("--tls-ca-cert needs --tls-cert and --tls-key")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0-65535, not {self.port}")
        if self.maxclients < 1:
            raise ValueError("maxclients must be at least 1")
        hard, soft, seconds = self.pubsub_output_limit
        if not (0 < soft <= hard and seconds >= 0):
            raise ValueError("pubsub_output_limit must be (hard bytes, soft bytes, seconds) "
                             "with 0 < soft <= hard and seconds >= 0")
        if self.max_query_buffer_total is None:
            self.max_query_buffer_total = 2 * self.max_query_buffer
        elif self.max_query_buffer_total < self.max_query_buffer:
            raise ValueError("max_query_buffer_total cannot be below max_query_buffer (a "
                             "request of the largest allowed size could never arrive)")
        if self.max_bulk_len > bitkv.MAX_VALUE_SIZE:
            raise ValueError(f"max_bulk_len cannot exceed bitkv's value limit "
                             f"({bitkv.MAX_VALUE_SIZE} bytes)")
        if self.replicaof is not None:
            from .replication import parse_hostport

            parse_hostport(self.replicaof)  # ValueError if it is not HOST:PORT
        if self.repl_timeout is not None and not self.repl_timeout > 0:
            raise ValueError("repl_timeout must be a positive number of seconds")
        if isinstance(self.requirepass, str):
            self.requirepass = self.requirepass.encode()
        if self.requirepass == b"":
            self.requirepass = None
        protected.check_bind(self.hosts, self.requirepass is not None, self.protected_mode)
        if self.metrics_port is not None:
            if not 0 <= self.metrics_port <= 65535:
                raise ValueError(f"metrics port must be 0-65535, not {self.metrics_port}")
            protected.check_metrics_bind(self.metrics_bind, self.protected_mode)
            if not prometheus.available():
                raise ValueError(prometheus.MISSING)
        settings.check_bound(self.max_bytes, self.eviction)
        given_mc: object = self.memcached_hosts
        if isinstance(given_mc, str):
            self.memcached_hosts = tuple(given_mc.split())
        self.memcached_hosts = tuple(self.memcached_hosts)
        if self.memcached_port is not None:
            if not 0 <= self.memcached_port <= 65535:
                raise ValueError(f"memcached port must be 0-65535, not {self.memcached_port}")
            if not self.memcached_hosts:
                raise ValueError("at least one memcached bind address is needed")
            check_memcache_bind(self.memcached_hosts, self.memcached_allow_remote)
        if not 1 <= self.memcached_max_item_size <= bitkv.MAX_VALUE_SIZE:
            raise ValueError(f"memcached_max_item_size must be 1 to {bitkv.MAX_VALUE_SIZE} "
                             "bytes (bitkv's value limit)")
        if self.loglevel.lower() not in LOG_LEVELS:
            raise ValueError(f"loglevel must be one of {', '.join(LOG_LEVELS)}, not "
                             f"{self.loglevel!r}")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


def make_ssl_context(config: ServerConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert config.tls_cert is not None
    ctx.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_ca_cert:
        ctx.load_verify_locations(config.tls_ca_cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class AuthLimiter:
    """A token bucket over failed AUTH attempts, shared by every connection of a server."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._stamp = time.monotonic()
        self.refused = 0  # attempts refused since the last warning in the log
        self._warned = 0.0

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self) -> float:
        """Take a token for one attempt; the seconds it must wait before it is checked."""
        self._refill()
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def refund(self) -> None:
        """Give back the token of an attempt that did not fail (or was not checked)."""
        self._refill()
        self.tokens = min(self.burst, self.tokens + 1.0)

    def note_refusal(self, peer: str) -> None:
        # One log line a minute at most: an attacker must not be able to flood the log.
        self.refused += 1
        now = time.monotonic()
        if now - self._warned >= 60.0:
            log.warning("too many failed AUTH attempts server-wide: refused %d attempt(s) "
                        "unchecked (latest from %s)", self.refused, peer)
            self._warned = now
            self.refused = 0


def _auth_attempt(spec: Spec, args: list[bytes]) -> bool:
    """AUTH, or HELLO with an AUTH option: a command that compares a password."""
    if spec is AUTH_SPEC:
        return True
    return spec is HELLO_SPEC and any(a.upper() == b"AUTH" for a in args[2:])


def error_reply(exc: Exception) -> bytes:
    """The RESP error for an exception a command raised."""
    if isinstance(exc, bitkv.StoreFullError):  # Redis's reply, which clients recognise
        return error(f"OOM command not allowed when used memory > 'maxmemory' ({exc})")
    if isinstance(exc, WrongTypeError):  # its text starts with Redis's WRONGTYPE code
        return error(str(exc))
    if isinstance(exc, (ValueError, TypeError, bitkv.Error)) and str(exc):
        if not isinstance(exc, bitkv.Error):
            log.debug("command failed", exc_info=True)
        return error(f"ERR {exc}")
    if isinstance(exc, OSError):  # disk full, I/O error: the store refused the write
        log.error("I/O error in a command: %s", exc)
        return error(f"ERR I/O error: {exc}")
    log.exception("internal error in a command")
    return error(f"ERR internal error: {type(exc).__name__}: {exc}")


# Expired collections deleted per second by the server's tick (each is one batch of
# tombstones); more wait for the next tick or are deleted when touched.
EXPIRE_COLLECTIONS_PER_TICK = 100
WRONGTYPE = error(str(WrongTypeError()))
OOM_REPLY = error(OOM)


class Connection(asyncio.Protocol):
    """One client. Parses reads, runs the commands in order, writes the replies."""

    def __init__(self, server: Server) -> None:
        self.server = server  # the connection's own machinery (group commit, accounting)
        # What command handlers may use of the server: only this typed view, never
        # ``self.server`` (tests/test_server_structure.py checks).
        self.control: ServerControl = server
        self.db = server.db
        self.structures = server.structures  # the hashes, sets, lists and sorted sets
        self.authenticated = server.requirepass is None
        self.parser = make_parser(server.limits, self.authenticated, kind=server.parser_kind)
        self.resp3 = False
        self.null = NIL2
        self.client_id = next(server.client_ids)
        self.name: bytes | None = None
        self.lib_name = b""
        self.lib_ver = b""
        self.multi: list[tuple[Spec, list[bytes]]] | None = None
        self.multi_dirty = False
        # WATCH: each watched key's versions when it was watched (commands/transactions.py)
        self.watched: dict[bytes, tuple[int | None, int | None]] | None = None
        # Pub/Sub: what this client is subscribed to (None: nothing, see pubsub.py); the
        # messages published to it and not yet written, and their bytes (Connection.push);
        # since when its unsent output has been over the soft limit.
        self.subscriptions: Subscriptions | None = None
        self._pushes: list[bytes] | None = None
        self._pushed_bytes = 0
        self._over_soft_limit_since: float | None = None
        self._role = clients.NORMAL  # set by replication through client_type
        self.transport: Any = None
        self.peer = "?"
        self.local = "?"
        self.created = time.monotonic()
        self.last_active = self.created  # to the second, from Server.clock
        self.last_command = b"NULL"
        self.auth_failures = 0  # failed AUTH attempts since the last successful one
        # Bytes of this client's incomplete request counted in the server's total; public
        # because the server reads it to pick whom to close (Server.shed_partial_requests).
        self.partial_request_bytes = 0
        self._gate = 0
        self._busy = False  # an awaited step (fsync, SAVE) is in progress
        self._backlog: list[bytes] = []
        self._suspended: tuple[list[list[bytes]], int, bool] | None = None
        # Replies held until the end-of-iteration fsync (--sync always): Server.hold_for_fsync.
        self._fsync_out: list[bytes] | None = None
        # This client's SETs waiting in the server's group commit; the server counts them
        # up (Connection._run) and down (Server.flush_sets).
        self.unresolved_sets = 0
        self._held: tuple[list[bytes], bool] | None = None  # replies held until it is done
        self._write_paused = False
        self._closed = False
        self._quit = False
        self._eof = False  # the client half-closed while replies were still pending
        # Replication (master.py): set once this connection is a replica of ours (PSYNC).
        self.replica_peer: Peer | None = None
        self.repl_listening_port = 0
        self.repl_ip_address = ""
        self._update_gate()

    # -- state used by the commands ----------------------------------------------------------

    def _update_gate(self) -> None:
        """Flags that send a command down the slow path (auth, MULTI, async, QUIT...)."""
        gate = F_ASYNC | F_TXCTL | F_NOMULTI | F_STATE
        if not self.authenticated:
            gate |= F_NEEDAUTH
        if self.multi is not None or self.pubsub_restricted:
            gate |= F_ANY
        if self.server.replication.refuses_client_writes:
            gate |= F_WRITE  # a read-only replica: writes take the slow path, get READONLY
        self._gate = gate

    @property
    def pubsub_restricted(self) -> bool:
        """Subscribed in RESP2: only the commands flagged F_PUBSUB may run (_slow refuses the
        rest), and PING replies with an array."""
        return self.subscriptions is not None and not self.resp3

    @property
    def client_type(self) -> str:
        """normal, replica, master, or pubsub (a normal client while subscribed), as CLIENT
        LIST and CLIENT KILL TYPE see it (clients.py)."""
        return clients.client_type(self._role, self.subscriptions is not None)

    @client_type.setter
    def client_type(self, role: str) -> None:
        """Replication sets "replica" on a connection that became a replica (SYNC/PSYNC) and
        "master" on a replica's link to its master; "pubsub" follows from subscriptions."""
        if role not in clients.ROLES:
            raise ValueError(f"a connection's role is one of {clients.ROLES}, not {role!r}")
        self._role = role

    def role_changed(self) -> None:
        """The server became a replica or a master (or replica-read-only changed)."""
        self._update_gate()

    def auth_checked(self, ok: bool) -> None:
        """A password was compared (AUTH, HELLO AUTH): count failures for the throttle."""
        self.auth_failures = 0 if ok else self.auth_failures + 1
        if not ok and self.auth_failures >= AUTH_MAX_FAILURES:
            log.warning("closing the connection from %s after %d failed AUTH attempts",
                        self.peer, self.auth_failures)
            self.close_after_reply()

    def set_authenticated(self, value: bool) -> None:
        self.authenticated = value
        self.parser.authenticated = value
        self._update_gate()

    def set_protocol(self, version: int) -> None:
        self.resp3 = version == 3
        self.null = NIL3 if self.resp3 else NIL2

    def close_after_reply(self) -> None:
        self._quit = True

    def describe(self) -> str:
        now = time.monotonic()
        def text(b: bytes | None) -> str:
            return (b or b"").decode("utf-8", "replace")

        multi = -1 if self.multi is None else len(self.multi)
        subs = self.subscriptions
        flags = clients.flags(self._role, subs is not None, self.multi is not None, self._quit)
        counts = (0, 0, 0) if subs is None else \
            (subs.channels, subs.patterns, subs.shard_channels)
        return (f"id={self.client_id} addr={self.peer} laddr={self.local} name={text(self.name)} "
                f"age={int(now - self.created)} idle={int(now - self.last_active)} "
                f"flags={flags} db=0 sub={counts[0]} psub={counts[1]} ssub={counts[2]} "
                f"multi={multi} "
                f"cmd={text(self.last_command).lower()} user=default "
                f"resp={3 if self.resp3 else 2} lib-name={text(self.lib_name)} "
                f"lib-ver={text(self.lib_ver)}")

    def call(self, spec: Spec, args: list[bytes]) -> bytes:
        """Run one command's handler, turning exceptions into error replies; counted in
        INFO commandstats."""
        started = now_ns()
        try:
            reply: bytes = spec[0](self, args)  # the table types replies as Any (registry.py)
        except CommandError as exc:
            reply = exc.reply
        except Exception as exc:
            reply = self.error_reply(exc)
        self.server.metrics.executed(spec[3], now_ns() - started, reply)
        return reply

    def error_reply(self, exc: Exception) -> bytes:
        return error_reply(exc)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        server.total_connections += 1
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.peer = f"{peer[0]}:{peer[1]}"
        if isinstance(sock, tuple):
            self.local = f"{sock[0]}:{sock[1]}"
        if server.closing or len(server.clients) >= server.config.maxclients:
            server.rejected_connections += 1
            self._closed = True
            transport.write(MAXCLIENTS)
            transport.close()
            return
        if server.config.protected_mode and server.requirepass is None \
                and isinstance(peer, tuple) and not protected.is_loopback(str(peer[0])):
            server.rejected_connections += 1
            self._closed = True
            transport.write(protected.DENIED)
            transport.close()
            return
        server.clients[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.replica_peer is not None:
            self.server.replication.master.detach(self)
        self._closed = True
        self._backlog.clear()
        self._pushes = None
        self._release_partial()
        self.server.clients.pop(self, None)
        if self.subscriptions is not None:
            self.server.pubsub.drop(self)

    def pause_writing(self) -> None:
        # The client is not reading its replies: stop reading its requests until it does.
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._suspended is not None and not self._closed:
            cmds, i, wrote = self._suspended
            self._suspended = None
            self._busy = False
            self._run(cmds, i, [], wrote)
        self._after_step()

    def eof_received(self) -> bool:
        """The client shut down its sending side: finish what it sent, then close."""
        if self._pushes is not None:
            self.write_pushes()
        if self._busy or self._backlog:
            self._eof = True
            return True  # keep the transport open for the replies still to come
        return False  # every reply is written already: close our side too

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        if self._pushes is not None:  # messages published before this read come first
            self.write_pushes()
        if self.replica_peer is not None:  # only REPLCONF ACKs from here on, no replies
            self.server.replication.master.replica_input(self, data)
            return
        if self._busy:
            self._backlog.append(data)
            return
        parser = self.parser
        try:
            cmds = parser.feed(data)
        except Exception:
            # A parser bug: close this connection with an error instead of letting the
            # exception reach the event loop (which would drop the client without a word).
            log.error("the request parser failed on data from %s", self.peer, exc_info=True)
            parser.reset()
            parser.error = "ERR Protocol error: internal parser error"
            cmds = []
        buffered = parser.buffered()
        if buffered or self.partial_request_bytes:
            self._count_partial(buffered)
            closed: bool = self._closed  # _count_partial may have closed us
            if closed:
                return
        if cmds:
            self.server.total_commands += len(cmds)
            self._run(cmds, 0, [], False)
        elif self.parser.error is not None:
            self._protocol_error([])

    def _count_partial(self, buffered: int) -> None:
        """Track the bytes held for this client's incomplete request in the server's total."""
        server = self.server
        server.partial_bytes += buffered - self.partial_request_bytes
        self.partial_request_bytes = buffered
        if server.partial_bytes > server.max_partial_bytes:
            server.shed_partial_requests()

    def _release_partial(self) -> None:
        if self.partial_request_bytes:
            self.server.partial_bytes -= self.partial_request_bytes
            self.partial_request_bytes = 0

    def drop_partial(self) -> None:
        """Closed to keep the server's total of partial requests within its limit."""
        log.warning("closing the connection from %s: its partial request of %d bytes pushed "
                    "the server's total of partial requests over %d bytes", self.peer,
                    self.partial_request_bytes, self.server.max_partial_bytes)
        self._release_partial()
        self.parser.reset()
        self._backlog.clear()
        if not self._closed:
            self._closed = True
            self.transport.write(QUERY_BUFFERS_FULL)
            self.transport.close()

    # -- the command loop --------------------------------------------------------------------

    def _run(self, cmds: list[list[bytes]], i: int, out: list[bytes], wrote: bool) -> None:
        """Run ``cmds[i:]``, collecting replies in ``out``; send them when done."""
        get = COMMANDS.get
        append = out.append
        n = len(cmds)
        fast_get = not GET_SPEC[2] & self._gate  # no AUTH pending, not inside MULTI
        dbget = self.db.get
        null = self.null
        server = self.server
        pending = server.pending_sets  # plain SETs not yet written (Server.flush_sets)
        collections = self.structures.names  # a SET over one of these is no plain SET
        pending_replies = server.pending_replies
        metrics = server.metrics
        # The inlined GET's counters (INFO commandstats, keyspace_hits/misses), kept in locals
        # and added up at the end (finally). A run of consecutive inlined GETs is timed as
        # one block, each GET given an equal share (as the group commit's SETs are): a clock
        # read costs 40-170 ns here, two per GET were 25-45% of a pipelined GET's CPU time.
        get_stat = metrics.stat("get")
        hits = misses = 0
        block_gets = 0  # GETs in the current run of consecutive inlined GETs
        block_start = 0
        try:
            while i < n:
                args = cmds[i]
                i += 1
                spec = get(args[0])
                if spec is SET_SPEC and len(args) == 3 and not SET_SPEC[2] & self._gate \
                        and 0 < len(args[1]) <= MAX_KEY_SIZE \
                        and not (collections and args[1] in collections) \
                        and not args[1].startswith(RESERVED_PREFIX):
                    if block_gets:  # the end of a run of inlined GETs
                        get_stat.record_many(now_ns() - block_start, block_gets)
                        block_gets = 0
                    # A plain SET joins the group commit: written with the other SETs of this
                    # loop iteration (any client's) as one batch; its reply waits for that.
                    # Queued here, not through a method: a call per SET costs ~8% of a
                    # pipelined SET's server time.
                    if not pending:
                        server.schedule_flush()
                    pending.append((args[1], args[2]))
                    pending_replies.append((self, out, len(out)))
                    append(OK)
                    self.unresolved_sets += 1
                    wrote = True
                    if i & 15:
                        continue
                elif spec is GET_SPEC and fast_get and len(args) == 2:
                    # GET, the most common command, inlined (the same as commands.cmd_get).
                    if pending:
                        server.flush_sets()  # it must see every SET before it
                    if not block_gets:
                        block_start = now_ns()
                    block_gets += 1
                    v: bytes | Exception | None
                    try:
                        v = dbget(args[1])
                    except ValueError:  # an empty or oversized key: no such key can exist
                        v = None
                    except Exception as exc:
                        v = exc
                    if v is None:
                        if collections and args[1] in collections \
                                and args[1] in self.structures:
                            reply = WRONGTYPE
                            get_stat.failed += 1
                            metrics.error(reply)
                            append(reply)
                            continue
                        misses += 1
                        append(null)
                    elif type(v) is bytes:
                        hits += 1
                        append(b"$%d\r\n%b\r\n" % (len(v), v))
                    else:
                        reply = self.error_reply(v)  # type: ignore[arg-type]
                        get_stat.failed += 1
                        metrics.error(reply)
                        append(reply)
                    if i & 15:
                        continue
                else:
                    if block_gets:  # the end of a run of inlined GETs
                        get_stat.record_many(now_ns() - block_start, block_gets)
                        block_gets = 0
                    if pending:
                        server.flush_sets()  # commands run in order: pending SETs first
                    if spec is None:
                        spec = lookup(args[0])
                        if spec is None:
                            if self.multi is not None:
                                self.multi_dirty = True
                            reply = unknown_command_error(args)
                            metrics.error(reply)
                            append(reply)
                            continue
                    handler, arity, flags, name = spec
                    argc = len(args)
                    if argc != arity and (arity >= 0 or argc < -arity):
                        if self.multi is not None:
                            self.multi_dirty = True
                        reply = arity_error(name)
                        metrics.rejected(name, reply)
                        append(reply)
                        continue
                    if flags & self._gate:
                        if flags & F_STATE and server.requirepass is not None \
                                and self.multi is None and _auth_attempt(spec, args):
                            # Password checks are throttled (see AUTH_FAILURE_DELAY): they run
                            # as a step of their own that may wait before and after the check.
                            server.track_throttle(
                                self._start(self._throttled_auth(spec, args, cmds, i, out, wrote)))
                            return
                        slow = self._slow(spec, args)
                        if slow is None:  # an async command: continue once it has finished
                            self._start(self._run_async(spec, args, cmds, i, out, wrote))
                            return
                        append(slow)
                        if self._quit:
                            break
                        fast_get = not GET_SPEC[2] & self._gate  # AUTH, MULTI, EXEC, HELLO...
                        null = self.null
                    else:
                        started = now_ns()
                        try:
                            reply = handler(self, args)
                        except CommandError as exc:
                            reply = exc.reply
                        except Exception as exc:
                            reply = self.error_reply(exc)
                        metrics.executed(name, now_ns() - started, reply)
                        append(reply)
                    if flags & F_WRITE:
                        wrote = True
                if not i & 15 and i < n \
                        and not (server.sync_always and (wrote or server.fsync_waiting)) \
                        and not self._closed and sum(map(len, out)) > OUTPUT_FLUSH_BYTES:
                    # A long pipeline with big replies: write what we have, and if the client
                    # is not reading, wait for it (resume_writing) before running the rest.
                    if self.unresolved_sets:
                        server.flush_sets()
                    self.transport.write(b"".join(out))
                    out.clear()
                    if self._write_paused:
                        self._suspended = (cmds, i, wrote)
                        self._busy = True
                        return
        finally:
            if block_gets:
                get_stat.record_many(now_ns() - block_start, block_gets)
            if hits or misses:
                metrics.keyspace_hits += hits
                metrics.keyspace_misses += misses
        self.last_command = cmds[-1][0]
        self.last_active = server.clock
        if wrote:
            server.write_version += 1
            server.writes_since_save += 1
            server.replication.master.note_write()
        if self.unresolved_sets:
            # Replies wait for the group commit (end of this loop iteration at the latest);
            # requests arriving meanwhile queue up behind them.
            self._held = (out, wrote)
            self._busy = True
            server.waiting.append(self)
            return
        self._reply(out, wrote)

    def _reply(self, out: list[bytes], wrote: bool) -> None:
        """Send ``out``; with ``--sync always``, after this iteration's fsync if anything was
        written in it (by this client or any other: a read must not see a value that is not
        durable yet)."""
        server = self.server
        if server.sync_always and (wrote or server.fsync_waiting) and not self._closed:
            self._fsync_out = out
            self._busy = True  # what the client sends meanwhile waits (data_received)
            server.hold_for_fsync(self)
            return
        if self._closed or self._quit or self.parser.error is not None:
            self._finish(out)
        elif len(out) == 1:
            self.transport.write(out[0])
        elif out:
            self.transport.write(b"".join(out))

    def release(self) -> None:
        """The group commit wrote this client's SETs: send the held replies, go on."""
        assert self._held is not None
        out, wrote = self._held
        self._held = None
        self._busy = False
        self._reply(out, wrote)
        self._after_step()

    def _slow(self, spec: Spec, args: list[bytes]) -> bytes | None:
        refusal = self._refusal(spec, args)
        if refusal is not None:
            self.server.metrics.rejected(spec[3], refusal)
            return refusal
        flags = spec[2]
        if self.multi is not None and not flags & F_TXCTL:
            self.multi.append((spec, args))
            return QUEUED
        if flags & F_ASYNC:
            return None
        reply = self.call(spec, args)
        if flags & (F_TXCTL | F_STATE):
            self._update_gate()  # MULTI / EXEC / DISCARD / AUTH / HELLO changed the state
        return reply

    def _refusal(self, spec: Spec, args: list[bytes]) -> bytes | None:
        """The error refusing ``spec`` before it runs (Redis's rejected_calls), or None."""
        flags = spec[2]
        if not self.authenticated and not flags & F_NOAUTH:
            return NOAUTH
        if flags & F_WRITE and not flags & F_TXCTL \
                and self.server.replication.refuses_client_writes:
            if self.multi is not None:
                self.multi_dirty = True  # as Redis: the transaction fails with EXECABORT
            return READONLY
        if (flags & F_DENYOOM or (self.multi is not None and not flags & F_TXCTL)) \
                and self.db.out_of_room:
            # Redis refuses a command that may add data when over maxmemory, and inside
            # MULTI any command but EXEC/DISCARD/QUIT/RESET (queueing takes memory too).
            if self.multi is not None:
                self.multi_dirty = True
            return OOM_REPLY
        if self.pubsub_restricted and not flags & F_PUBSUB:  # after READONLY, as in Redis
            return error(f"ERR Can't execute '{full_name(spec, args)}': only (P|S)SUBSCRIBE / "
                         "(P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context")
        if self.multi is not None and not flags & F_TXCTL and flags & F_NOMULTI:
            self.multi_dirty = True
            return NOMULTI
        return None

    def _finish(self, out: list[bytes]) -> None:
        if not self._closed:
            if len(out) == 1:
                self.transport.write(out[0])
            elif out:
                self.transport.write(b"".join(out))
            if self._quit:
                self._closed = True
                self.transport.close()
                return
            if self.parser.error is not None:
                self._protocol_error([])

    def _protocol_error(self, out: list[bytes]) -> None:
        """Reply with the parser's error and close, as Redis does."""
        message = self.parser.error or "ERR Protocol error"
        out.append(error(message))
        if not self._closed:
            self.transport.write(b"".join(out))
            self._closed = True
            self.transport.close()
        log.debug("protocol error from %s: %s", self.peer, message)

    def _start(self, coro: Any) -> asyncio.Task[None]:
        """Stop reading and run ``coro``; reading resumes (and the backlog runs) after it."""
        self._busy = True
        if not self._closed:
            self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(coro)
        self.server.tasks.add(task)
        task.add_done_callback(self._step_done)
        return task

    def _step_done(self, task: asyncio.Task[None]) -> None:
        self.server.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("connection step failed", exc_info=task.exception())
            if not self._closed:
                self._closed = True
                self.transport.close()
        self._after_step()

    def _after_step(self) -> None:
        """Resume reading (and run what arrived meanwhile) unless another step is pending."""
        if self._busy or self._closed:
            return
        if self._pushes is not None:  # messages published while the step's replies waited
            self.write_pushes()
        if self._backlog:
            data = b"".join(self._backlog)
            self._backlog.clear()
            self.data_received(data)
            busy_or_closed: bool = self._busy or self._closed  # data_received changes both
            if busy_or_closed:
                return
        if self._eof:
            self._closed = True
            self.transport.close()
        elif not self._write_paused:
            self.transport.resume_reading()

    async def _run_async(self, spec: Spec, args: list[bytes], cmds: list[list[bytes]], i: int,
                         out: list[bytes], wrote: bool) -> None:
        started = now_ns()
        try:
            reply = await spec[0](self, args)
        except CommandError as exc:
            reply = exc.reply
        except Exception as exc:
            reply = self.error_reply(exc)
        self.server.metrics.executed(spec[3], now_ns() - started, reply)
        out.append(reply)
        self._busy = False
        self._run(cmds, i, out, wrote or bool(spec[2] & F_WRITE))

    async def _throttled_auth(self, spec: Spec, args: list[bytes], cmds: list[list[bytes]],
                              i: int, out: list[bytes], wrote: bool) -> None:
        """Run one AUTH / HELLO AUTH under the server-wide and per-connection throttles."""
        limiter = self.server.auth_limiter
        wait = limiter.reserve()
        if wait > AUTH_GLOBAL_MAX_WAIT:
            limiter.refund()  # not checked, so not a failure
            limiter.note_refusal(self.peer)
            out.append(TOO_MANY_AUTH)
            self.close_after_reply()
        else:
            if wait > 0:
                await asyncio.sleep(wait)
            failures = self.auth_failures
            reply = self._slow(spec, args)
            if reply is not None:  # always: AUTH and HELLO are neither async nor queued here
                out.append(reply)
            if self.auth_failures <= failures:
                limiter.refund()  # right password, or no password compared at all
            elif not self._quit:
                await asyncio.sleep(min(AUTH_FAILURE_DELAY * 2 ** (self.auth_failures - 1),
                                        AUTH_FAILURE_MAX_DELAY))
        self._busy = False
        # Go on with the rest of the batch; after a disconnecting failure, just send the
        # replies so far and close (_run stops at once when i == len(cmds)).
        self._run(cmds, len(cmds) if self._quit else i, out, wrote)

    def synced(self, failure: bytes | None) -> None:
        """The end-of-iteration fsync is done: send the held replies (each one replaced by
        ``failure`` if it failed), then go on with what arrived meanwhile."""
        out = self._fsync_out
        self._fsync_out = None
        self._busy = False
        if out is not None:
            if failure is not None:
                out = [failure] * len(out)
            self._finish(out)
        self._after_step()

    def shutdown(self) -> None:
        """Close at shutdown: pending replies are flushed first."""
        if not self._closed:
            self._closed = True
            self.transport.close()

    def kill(self) -> bool:
        """Close now, dropping whatever has not been sent yet, as Redis frees a client:
        CLIENT KILL of another client, and the Pub/Sub output limit. False if it was closed
        already."""
        if self._closed:
            return False
        self._closed = True
        self._backlog.clear()
        self._pushes = None
        self.transport.abort()
        return True

    # -- Pub/Sub delivery ----------------------------------------------------------------------

    def push(self, data: bytes) -> None:
        """Send a published message. Messages are held and written together at the end of
        the event-loop iteration (one write per subscriber, not one per PUBLISH: pipelined
        PUBLISHes to 10 subscribers cost 72 us of server CPU each when written one by one),
        or earlier, before this client's next command runs; while a step's replies wait (an
        fsync, the group commit), after them. So a message never overtakes the reply to a
        command that ran before it was published, nor follows one that ran after.

        Nothing here waits for the client to read: the transport buffers what it has not
        sent. A subscriber that does not read is closed once that output reaches the hard
        limit, or has stayed at or above the soft limit for longer than its seconds
        (ServerConfig.pubsub_output_limit; Redis's client-output-buffer-limit pubsub)."""
        if self._closed:
            return
        pushes = self._pushes
        if pushes is None:
            self._pushes = [data]
            self._pushed_bytes = len(data)
            if not self._busy:  # else _after_step writes them
                self.server.write_pushes_soon(self)
        else:
            pushes.append(data)
            self._pushed_bytes += len(data)
        pending = self._pushed_bytes + self.transport.get_write_buffer_size()
        hard, soft, seconds = self.server.config.pubsub_output_limit
        if pending < soft:
            self._over_soft_limit_since = None
            return
        now = self.server.clock
        since = self._over_soft_limit_since
        if since is None:
            self._over_soft_limit_since = since = now
        if pending >= hard or now - since > seconds:
            log.warning("closing the connection from %s: %d bytes of output wait for it, over "
                        "the Pub/Sub output limit (hard %d, soft %d for %gs)", self.peer,
                        pending, hard, soft, seconds)
            self.kill()

    def write_pushes(self) -> None:
        """Write the messages held for this client, unless a step's replies must go first."""
        pushes = self._pushes
        if pushes is not None and not self._busy and not self._closed:
            self._pushes = None
            self.transport.writelines(pushes)


class Server:
    """A RESP server over one bitkv Store.

    ``await start()`` opens the store (unless one was given) and listens; ``await
    serve_until_shutdown()`` returns after :meth:`request_shutdown` (SIGTERM, SHUTDOWN) once
    the listeners are closed, connections closed, the store synced and closed.
    """

    def __init__(self, config: ServerConfig | None = None, store: bitkv.Store | None = None,
                 **kwargs: Any) -> None:
        self.config = config = config or ServerConfig(**kwargs)
        self.db: bitkv.Store = store  # type: ignore[assignment]
        # The collections' owner, made once the store is open (start).
        self.structures: Structures = None if store is None else Structures(store)  # type: ignore[assignment]
        self._own_store = store is None
        self.limits = Limits(config.max_bulk_len, config.max_multibulk_len,
                             config.max_query_buffer)
        # Bytes held in incomplete requests, all clients together (see Connection.data_received)
        self.partial_bytes = 0
        self.max_partial_bytes: int = config.max_query_buffer_total  # type: ignore[assignment]
        self.auth_limiter = AuthLimiter(AUTH_GLOBAL_RATE, AUTH_GLOBAL_BURST)
        self._throttles: set[asyncio.Task[None]] = set()  # AUTH steps waiting out a delay
        self.requirepass: bytes | None = config.requirepass  # type: ignore[assignment]
        # "native", "hiredis" or "python" (protocol.choose_parser)
        self.parser_kind = protocol.choose_parser(config.use_native, config.use_hiredis)
        self.use_hiredis = self.parser_kind == "hiredis"
        self.sync_always = config.sync == "always"
        self.clients: dict[Connection, None] = {}
        self.client_ids = itertools.count(1)
        self.tasks: set[asyncio.Task[None]] = set()
        self.port = config.port
        self.loop_name = "asyncio"
        self.run_id = secrets.token_hex(20)
        self.started_at = time.time()
        self.last_save_time = time.time()
        self.scan_index: ScanIndex | None = None
        self.write_version = 0
        self.writes_since_save = 0
        self.metrics = Metrics()
        self.reset_stats()
        self.closing = False
        self.background_sync_running = False
        self.last_sync_error: str | None = None
        self.compaction_running = False
        self.last_compaction_error: str | None = None
        self._compaction_thread: threading.Thread | None = None
        self._abort_compaction = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="bitkv-server")
        self._listeners: list[asyncio.Server] = []
        self._shutdown_requested: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self.clock = time.monotonic()  # refreshed every second (cheap "last active" times)
        # Group commit of plain SETs: (key, value) pairs, where their replies go, and the
        # clients whose replies wait for the commit.
        self.pending_sets: list[tuple[bytes, bytes]] = []
        self.pending_replies: list[tuple[Connection, list[bytes], int]] = []
        self.waiting: list[Connection] = []
        self._flush_scheduled = False
        # --sync always: clients whose replies wait for this iteration's fsync (sync_and_release)
        self.fsync_waiting: list[Connection | MemcacheConnection] = []
        self.replication = Replication(self)
        self.pubsub = PubSub()
        self._pushing: list[Connection] = []  # clients with messages to write (write_pushes)
        self.metrics_endpoint: prometheus.Endpoint | None = None
        # The memcached protocol (memcache/), when config.memcached_port is set: its state
        # (made once the store is open) and its clients.
        self.memcache: Memcache | None = None
        self.memcache_clients: dict[MemcacheConnection, None] = {}
        self.memcached_port: int | None = None

    def _tick(self) -> None:
        self.clock = time.monotonic()
        if self.structures is not None and not self.db.closed:
            # Active expiry of collections (strings expire in the store); bounded per tick.
            try:
                self.structures.purge_expired(EXPIRE_COLLECTIONS_PER_TICK)
            except Exception:
                log.exception("expiring collections failed")
        if not self._stopped and self._loop is not None:
            self._loop.call_later(1.0, self._tick)

    def write_pushes_soon(self, conn: Connection) -> None:
        """Write ``conn``'s held Pub/Sub messages at the end of this loop iteration."""
        self._pushing.append(conn)
        if len(self._pushing) == 1:
            assert self._loop is not None
            self._loop.call_soon(self._write_pushes)

    def _write_pushes(self) -> None:
        pushing, self._pushing = self._pushing, []
        for conn in pushing:
            conn.write_pushes()

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush_sets()
        self.sync_and_release()

    def schedule_flush(self) -> None:
        """Run :meth:`_scheduled_flush` once the callbacks of this loop iteration are done
        (the I/O callbacks of one poll all run before it: every client's reads of the
        iteration are applied before its group commit and fsync)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._scheduled_flush)

    def hold_for_fsync(self, conn: Connection | MemcacheConnection) -> None:
        """``conn``'s replies wait for the fsync at the end of this loop iteration."""
        self.fsync_waiting.append(conn)
        self.schedule_flush()

    def sync_and_release(self) -> None:
        """One fsync for every write of this iteration (``Store.sync_pending``), then send
        the replies held for it. On the loop thread, as Redis's ``beforeSleep`` fsyncs: a
        worker thread would cost two thread switches per iteration (~30 us, a quarter of an
        fsync here) and the loop has nothing to answer meanwhile. If the fsync fails, every
        held reply becomes an error: those writes may not be durable (and the store refuses
        writes from now on)."""
        waiting = self.fsync_waiting
        if not waiting:
            return
        self.fsync_waiting = []
        failure = None
        try:
            self.db.sync_pending()
        except Exception as exc:
            # The store logged the failed fsync (ERROR, with its file); this is what the
            # server did about it.
            log.warning("failing the replies held for this iteration's fsync (%d client(s)): "
                        "%s", len(waiting), exc)
            failure = error(f"ERR fsync failed, the write may not be durable: {exc}")
        self.last_save_time = time.time()
        self.writes_since_save = 0
        for conn in waiting:
            conn.synced(failure)

    def flush_all(self) -> None:
        """The group commit and the fsync now (shutdown), instead of at the iteration's end."""
        self.flush_sets()
        self.sync_and_release()

    def flush_sets(self) -> None:
        """Write every queued SET as one atomic batch (one append), then release replies.

        Runs before any other command executes and at the end of the loop iteration, so
        commands still take effect in the order they were read: this only saves the
        per-SET lock, encode and write call, it never reorders.
        """
        ops = self.pending_sets
        if ops:
            replies = self.pending_replies
            started = now_ns()
            each: list[bytes] | None = None
            try:
                batch = self.db.batch()
                put = batch.put
                for key, value in ops:
                    put(key, value)
                batch.commit()
                reply = OK
            except bitkv.StoreFullError:
                # A cache (docs/cache.md) that cannot take the whole batch at once: the SETs
                # one by one, each with its own reply, as Redis answers them (the batch was
                # only a saving; the SETs were never one transaction).
                reply, each = OK, [self._set_one(key, value) for key, value in ops]
            except Exception as exc:
                reply = error_reply(exc)
            # INFO commandstats: each SET of the group is given an equal share of its commit.
            stat = self.metrics.stat("set")
            stat.record_many(now_ns() - started, len(ops))
            if each is None:
                if reply is not OK:
                    stat.failed += len(ops)
                    self.metrics.error(reply, len(ops))
            else:
                for one in each:
                    if one is not OK:
                        stat.failed += 1
                        self.metrics.error(one, 1)
            for n, (conn, out, index) in enumerate(replies):
                out[index] = reply if each is None else each[n]
                conn.unresolved_sets -= 1
            ops.clear()
            replies.clear()
        if self.waiting:
            waiting, self.waiting = self.waiting, []
            for conn in waiting:
                conn.release()

    def _set_one(self, key: bytes, value: bytes) -> bytes:
        try:
            self.db.put(key, value)
            return OK
        except Exception as exc:
            return error_reply(exc)

    def shed_partial_requests(self) -> None:
        """Close the clients holding the largest partial requests until the total of all
        partial requests is within ``max_query_buffer_total`` again.

        Each client is bounded by ``max_query_buffer`` alone, but many clients each holding
        most of one (10 clients with 59 MiB each took the server to 622 MB) add up; closing
        the largest frees the most and spares clients that send ordinary requests. The
        memcached port's clients count in the same total.
        """
        while self.partial_bytes > self.max_partial_bytes:
            candidates: Iterable[Connection | MemcacheConnection] = itertools.chain(
                self.clients, self.memcache_clients)
            victim = max(candidates, key=lambda c: c.partial_request_bytes, default=None)
            if victim is None or not victim.partial_request_bytes:
                break  # the count is off (cannot happen); do not loop forever
            victim.drop_partial()

    # -- the memcached protocol's host (memcache.MemcacheHost) --------------------------------

    @property
    def refuses_client_writes(self) -> bool:
        return self.replication.refuses_client_writes

    def request_flush_later(self, delay: float, flush: Callable[[], None]) -> None:
        """memcached's ``flush_all <delay>``: remove every key ``delay`` seconds from now."""
        assert self._loop is not None
        self._loop.call_later(delay, flush)

    def admits_memcache_client(self, conn: MemcacheConnection, peer: str) -> bool:
        if self.closing or len(self.clients) + len(self.memcache_clients) \
                >= self.config.maxclients:
            self.rejected_connections += 1
            conn.transport.write(b"SERVER_ERROR Too many open connections\r\n")
            return False
        self.memcache_clients[conn] = None
        return True

    def forget_memcache_client(self, conn: MemcacheConnection) -> None:
        self.memcache_clients.pop(conn, None)

    def before_memcache_commands(self) -> None:
        """Redis SETs read before this point are applied first (the group commit)."""
        if self.pending_sets:
            self.flush_sets()

    def count_partial(self, conn: MemcacheConnection, buffered: int) -> None:
        """``conn`` now holds ``buffered`` bytes of requests not yet run: count them in the
        total of all clients' partial requests (see shed_partial_requests)."""
        grew = buffered > conn.partial_request_bytes
        self.partial_bytes += buffered - conn.partial_request_bytes
        conn.partial_request_bytes = buffered
        if grew and self.partial_bytes > self.max_partial_bytes:
            self.shed_partial_requests()

    def writes_await_fsync(self) -> bool:
        return bool(self.fsync_waiting)

    def internal_client(self, name: bytes) -> Connection:
        """A client attached to no socket, through which the server runs commands of its own
        (the replica link applies its master's stream through one: no replies, no gate)."""
        conn = Connection(self)
        conn.name = name
        conn.client_type = "master"
        return conn

    def refresh_gates(self) -> None:
        """The replication role changed: re-derive every client's gate (READONLY)."""
        for conn in self.clients:
            conn.role_changed()

    def track_throttle(self, task: asyncio.Task[None]) -> None:
        self._throttles.add(task)
        task.add_done_callback(self._throttles.discard)

    def reset_stats(self) -> None:
        self.total_connections = 0
        self.total_commands = 0
        self.rejected_connections = 0
        self.metrics.reset(self.db.expired_keys if self.db is not None else 0)

    def _sample_ops(self) -> None:
        """instantaneous_ops_per_sec: a sample of the command rate every 100 ms, as Redis."""
        self.metrics.sample_ops(self.total_commands)
        if not self._stopped and self._loop is not None:
            self._loop.call_later(OPS_SAMPLE_INTERVAL, self._sample_ops)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.loop_name = "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
        self._shutdown_requested = asyncio.Event()
        self._tick()
        self._sample_ops()
        config = self.config
        ssl_ctx = make_ssl_context(config) if config.tls else None
        opened: bitkv.Store | None = self.db  # None until the server opens its own store
        if opened is None:
            options = dict(config.store_options)
            # With "always" the loop thread defers each write's fsync to the end of its
            # iteration (serve(), see the module doc); other threads' writes do not wait.
            options["sync"] = config.sync
            options.setdefault("sync_interval", config.sync_interval)
            # A replica's store keeps keys that expired while it was down, for its master's
            # commands (Store.hold_expired; as Redis replicas load expired keys too).
            options.setdefault("hold_expired", self.replication.starts_as_replica())
            if config.encryption_key is not None:
                options["encryption_key"] = config.encryption_key
            if config.max_bytes is not None:
                options["max_bytes"] = config.max_bytes
            if config.eviction is not None:
                options["eviction"] = config.eviction
            self.db = bitkv.open(config.dir, **options)
        try:
            if opened is None:  # (a store given to the constructor has its own already)
                self.structures = Structures(self.db)
            self._listeners.append(await loop.create_server(
                lambda: Connection(self), host=list(config.hosts), port=config.port,
                ssl=ssl_ctx, backlog=511, reuse_address=True))
        except BaseException:
            if self._own_store:
                self.db.close()
            raise
        try:
            if config.memcached_port is not None:
                memcache = self.memcache = Memcache(
                    self.db, self, max_item_size=config.memcached_max_item_size,
                    structures=self.structures)
                mc_listener = await loop.create_server(
                    lambda: MemcacheConnection(self, memcache),
                    host=list(config.memcached_hosts), port=config.memcached_port,
                    backlog=511, reuse_address=True)
                self._listeners.append(mc_listener)
                self.memcached_port = mc_listener.sockets[0].getsockname()[1]
            await self.replication.start()
        except BaseException:
            for listener in self._listeners:
                listener.close()
            if self._own_store:
                self.db.close()
            raise
        sockets = self._listeners[0].sockets
        self.port = sockets[0].getsockname()[1]
        addrs = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in sockets)
        log.info("bitkv %s serving %s on %s (%s, sync=%s, parser=%s, loop=%s, pid=%d)",
                 bitkv.__version__, os.path.abspath(config.dir), addrs,
                 "TLS" if config.tls else "plain TCP", config.sync,
                 self.parser_kind, self.loop_name, os.getpid())
        if config.metrics_port is not None:
            try:
                self.metrics_endpoint = prometheus.Endpoint(
                    self.metrics_snapshot_threadsafe, config.metrics_bind, config.metrics_port)
            except BaseException:
                for listener in self._listeners:
                    listener.close()
                await self.replication.stop()
                if self._own_store:
                    self.db.close()
                raise
            log.info("Prometheus metrics on http://%s:%d/metrics", config.metrics_bind,
                     self.metrics_endpoint.port)
        if self.memcached_port is not None:
            log.info("serving the memcached text protocol on %s port %d (no authentication)",
                     ", ".join(config.memcached_hosts), self.memcached_port)
        log.info("Ready to accept connections on port %d", self.port)

    def metrics_snapshot(self) -> prometheus.Snapshot:
        """What the Prometheus endpoint exports, read now (on the event loop thread)."""
        metrics = self.metrics
        stats = self.db.stats()
        commands = {name: CommandStat(s.calls, s.nanos, s.rejected, s.failed,
                                      list(s.histogram))
                    for name, s in metrics.commands.items()}
        return prometheus.Snapshot(
            commands=commands, errors=dict(metrics.errors),
            counters={
                "commands_processed": self.total_commands,
                "connections_received": self.total_connections,
                "rejected_connections": self.rejected_connections,
                "keyspace_hits": metrics.keyspace_hits,
                "keyspace_misses": metrics.keyspace_misses,
                "expired_keys": metrics.expired_keys(stats["expired_keys"]),
                "error_replies": metrics.total_error_replies,
            },
            gauges={
                "connected_clients": len(self.clients),
                "instantaneous_ops_per_sec": metrics.instantaneous_ops_per_sec,
                "uptime_seconds": time.time() - self.started_at,
            },
            store=stats)

    def metrics_snapshot_threadsafe(self) -> prometheus.Snapshot:
        """:meth:`metrics_snapshot` from another thread (a scrape): run on the loop."""
        loop = self._loop
        if loop is None or self._stopped:
            raise RuntimeError("the server is not running")

        async def take() -> prometheus.Snapshot:
            return self.metrics_snapshot()

        return asyncio.run_coroutine_threadsafe(take(), loop).result(timeout=10)

    def request_shutdown(self) -> None:
        """Ask the server to stop (call from the loop thread; see :meth:`stop_threadsafe`)."""
        if self._shutdown_requested is not None:
            self._shutdown_requested.set()

    def stop_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.request_shutdown)

    async def serve_until_shutdown(self) -> None:
        assert self._shutdown_requested is not None, "call start() first"
        try:
            await self._shutdown_requested.wait()
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Stop listening, let in-flight steps finish, close clients, sync and close the store."""
        if self._stopped:
            return
        self._stopped = True
        self.closing = True
        log.info("shutting down: closing %d client connection(s)", len(self.clients))
        for listener in self._listeners:
            listener.close()
        if self.metrics_endpoint is not None:
            endpoint, self.metrics_endpoint = self.metrics_endpoint, None
            await asyncio.get_running_loop().run_in_executor(self._executor, endpoint.close)
        self.flush_all()
        for task in list(self._throttles):
            task.cancel()  # an AUTH waiting out its delay: no reason to keep shutdown waiting
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=30)
        self.flush_all()
        await self.replication.stop()
        for conn in list(self.clients):
            conn.shutdown()
        for mc_conn in list(self.memcache_clients):
            mc_conn.shutdown()
        self.flush_all()  # SETs read before the connections closed
        await asyncio.sleep(0)  # let transports flush and close
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close_store)
        self._executor.shutdown(wait=False)
        log.info("bitkv is now ready to exit, bye bye...")

    def _close_store(self) -> None:
        thread = self._compaction_thread
        if thread is not None and thread.is_alive():
            log.info("aborting the running compaction")
            self._abort_compaction.set()
            thread.join()
        if self.db is not None and not self.db.closed:
            try:
                self.db.sync()
            finally:
                if self._own_store:
                    self.db.close()
        log.info("store synced%s", " and closed" if self._own_store else "")

    # -- durability and compaction -----------------------------------------------------------

    async def sync_store(self) -> None:
        """fsync every write so far, in a worker thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.db.sync)
        self.last_save_time = time.time()
        self.writes_since_save = 0

    def start_background_sync(self) -> bool:
        if self.background_sync_running:
            return False
        self.background_sync_running = True
        loop = asyncio.get_running_loop()

        def done(fut: Any) -> None:
            self.background_sync_running = False
            exc = fut.exception()
            if exc is None:
                self.last_sync_error = None
                self.last_save_time = time.time()
                self.writes_since_save = 0
            else:
                self.last_sync_error = f"{type(exc).__name__}: {exc}"
                log.error("background sync failed: %s", self.last_sync_error)

        loop.run_in_executor(self._executor, self.db.sync).add_done_callback(done)
        return True

    def start_compaction(self) -> bool:
        if self.compaction_running or self.closing:
            return False
        self.compaction_running = True
        self._abort_compaction.clear()
        thread = threading.Thread(target=self._compact, name="bitkv-server-compaction",
                                  daemon=True)
        self._compaction_thread = thread
        thread.start()
        return True

    def _compact(self) -> None:
        def progress(done: int, total: int) -> None:
            if self._abort_compaction.is_set():
                raise _CompactionAborted

        started = time.monotonic()
        try:
            summary = self.db.compact(progress)
            self.last_compaction_error = None
            log.info("compaction done in %.2fs: %d bytes reclaimed", time.monotonic() - started,
                     summary.get("bytes_reclaimed", 0))
        except _CompactionAborted:
            log.info("compaction aborted")
        except Exception as exc:
            self.last_compaction_error = f"{type(exc).__name__}: {exc}"
            log.error("compaction failed: %s", self.last_compaction_error)
        finally:
            self.compaction_running = False


class _CompactionAborted(Exception):
    pass


# -- entry points ----------------------------------------------------------------------------

def _loop_factory(config: ServerConfig) -> Callable[[], asyncio.AbstractEventLoop] | None:
    use = HAVE_UVLOOP if config.use_uvloop is None else config.use_uvloop
    if use:
        if not HAVE_UVLOOP:
            raise RuntimeError("uvloop was requested but is not installed")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return None


async def serve(config: ServerConfig | None = None, *, store: bitkv.Store | None = None,
                ready: Callable[[Server], None] | None = None, install_signals: bool = False,
                **kwargs: Any) -> None:
    """Run a server in the current event loop until it is asked to shut down.

    ``ready(server)`` is called once it listens (``server.port`` is the bound port, useful
    with ``port=0``). With ``install_signals``, SIGTERM and SIGINT shut it down cleanly.
    """
    server = Server(config, store, **kwargs)
    await server.start()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, server, sig)
    try:
        if ready is not None:
            ready(server)
        # Every command runs on this thread: its writes return unsynced, and with --sync
        # always the server makes them durable once per loop iteration before replying
        # (Server.sync_and_release). Other threads keep the store's promise.
        with server.db.deferred_sync():
            await server.serve_until_shutdown()
    finally:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def _on_signal(server: Server, sig: int) -> None:
    log.info("received %s, scheduling shutdown...", signal.Signals(sig).name)
    server.request_shutdown()


def _raise_fd_limit(wanted: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover
        pass


# --loglevel: Redis's names (verbose and debug both mean Python's DEBUG) and Python's.
LOG_LEVELS = {"debug": logging.DEBUG, "verbose": logging.DEBUG, "notice": logging.INFO,
              "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
LOG_FORMAT = "%(process)d:M %(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(config: ServerConfig) -> None:
    """Send the ``bitkv`` loggers (the engine's recovery, compaction and fsync findings, and
    the server's) to ``config.logfile`` or stderr at ``config.loglevel``, unless the embedding
    application configured logging itself (the root logger or ``bitkv`` has handlers)."""
    root = logging.getLogger("bitkv")
    if logging.getLogger().handlers or any(
            not isinstance(h, logging.NullHandler) for h in root.handlers):
        return
    handler: logging.Handler
    if config.logfile:
        # WatchedFileHandler reopens the file after logrotate moved it away.
        from logging.handlers import WatchedFileHandler

        handler = WatchedFileHandler(config.logfile, encoding="utf-8")
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(LOG_LEVELS[config.loglevel.lower()])


def run_server(config: ServerConfig | None = None, **kwargs: Any) -> None:
    """Run a server in this (main) thread until SIGTERM/SIGINT or SHUTDOWN. Blocks."""
    config = config or ServerConfig(**kwargs)
    configure_logging(config)
    _raise_fd_limit(config.maxclients + 64)
    with asyncio.Runner(loop_factory=_loop_factory(config)) as runner:
        runner.run(serve(config, install_signals=True))


class ServerThread:
    """A server running its own event loop in a background thread (tests, embedding).

    >>> with ServerThread(dir="data", port=0) as srv:     # doctest: +SKIP
    ...     redis.Redis(port=srv.port).set("k", "v")
    """

    def __init__(self, config: ServerConfig | None = None, *,
                 store: bitkv.Store | None = None, **kwargs: Any) -> None:
        self.config = config or ServerConfig(**kwargs)
        self._store = store
        self.server: Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="bitkv-server", daemon=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def host(self) -> str:
        return self.config.hosts[0]

    def _main(self) -> None:
        def ready(server: Server) -> None:
            self.server = server
            self._ready.set()

        try:
            with asyncio.Runner(loop_factory=_loop_factory(self.config)) as runner:
                runner.run(serve(self.config, store=self._store, ready=ready))
        except BaseException as exc:
            self._error = exc
            if not self._ready.is_set():
                self._ready.set()
            else:
                log.exception("server thread failed")

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self.server is not None:
            self.server.stop_threadsafe()
        with contextlib.suppress(RuntimeError):
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the server did not stop in time")

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
