"""The master side of replication: replicas attach with PSYNC/SYNC and get the stream.

A replica that asks to continue (``PSYNC <replid> <offset>``) from a point the backlog still
holds gets ``+CONTINUE`` and the stream from there, regenerated from the log
(:mod:`bitkv.server.backlog`). Any other gets ``+FULLRESYNC <replid> <offset>``, an RDB
snapshot of the live keys with their expiry (:mod:`bitkv.rdb`), then the stream from that
offset.

The snapshot is taken while writes go on: it is not a point-in-time image, but every write
from the snapshot's offset on is in the stream after it, and each command in the stream sets
(or deletes) a key's whole state, so a replica that applied the snapshot and then the stream
holds exactly the master's data (a batch can look half-applied until the stream catches up).

Feeding: after every run of client commands that wrote, the head of the backlog catches up
with the log and the new bytes go to each replica that was at the head; a replica behind it
(catching up, or slow to read) gets bytes from its own reader over the log instead, so a
slow replica costs no memory on the master: it just falls behind in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from typing import TYPE_CHECKING

import bitkv
from bitkv import names, rdb
from bitkv.structures import Structures, is_internal

from .backlog import GETACK, PING, Backlog, StreamDiverged, StreamReader
from .collection_snapshot import write_collections

if TYPE_CHECKING:
    from .app import Connection, Server

log = logging.getLogger("bitkv.server")

# Redis's repl-ping-replica-period: a PING into the stream this often, so an idle master's
# replicas can tell it is alive (their repl-timeout is 60 s by default).
PING_PERIOD = 10.0
CRON_PERIOD = 0.1
# A replica whose connection holds more unsent bytes than this is fed from its own reader
# (over the log) until it drains below LOW_WATER: slow replicas cost the master no memory.
HIGH_WATER = 4 << 20
LOW_WATER = 1 << 20
KEEPALIVE_PERIOD = 1.0  # a newline to a replica waiting for its snapshot (Redis does the same)
# Redis's repl-timeout: a replica silent this long (no ACK; they ack every second), or one
# that takes no snapshot bytes this long, is dropped.
REPL_TIMEOUT = 60.0
SEND_CHUNK = 1 << 20
CATCH_UP_STEP = 8 << 20  # stream bytes the head reads between yields to other clients

_snapshot_ids = itertools.count(1)


class Peer:
    """One attached replica."""

    def __init__(self, conn: Connection, listening_port: int, ip: str) -> None:
        self.conn = conn
        self.listening_port = listening_port
        self.ip = ip
        self.state = "wait_bgsave"  # then send_bulk, then online (INFO's words)
        self.sent = 0  # the stream offset this replica has been sent up to
        self.live = False  # at the head: new bytes are written to it as they are produced
        self.reader: StreamReader | None = None
        self.ack_offset = 0
        self.ack_time = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def write(self, data: bytes) -> None:
        transport = self.conn.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    @property
    def buffered(self) -> int:
        transport = self.conn.transport
        if transport is None or transport.is_closing():
            return 0
        size: int = transport.get_write_buffer_size()
        return size


class Master:
    """The server's master role: its backlog, its replicas, WAIT."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.backlog: Backlog | None = None
        self.peers: list[Peer] = []
        self.sync_full = 0
        self.sync_partial_ok = 0
        self.sync_partial_err = 0
        self._feed_scheduled = False
        self._cron: asyncio.TimerHandle | None = None
        self._last_ping = time.monotonic()
        self._ack_waiters: list[asyncio.Future[None]] = []
        self._stopped = False
        self._getack_at = -1

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        db = self.server.db
        db.log_expirations = True  # replicas hear of expiries as DELs (as Redis sends them)
        backlog = Backlog(db)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, backlog.open)
        self.backlog = backlog
        log.info("replication: id %s, offset %d%s", backlog.replid, backlog.offset,
                 f" (new history: {backlog.new_history_reason})"
                 if backlog.new_history_reason else "")
        self._cron = loop.call_later(CRON_PERIOD, self._tick)

    async def stop(self) -> None:
        """Send what the replicas lack, close their links, record a clean stop."""
        self._stopped = True
        if self._cron is not None:
            self._cron.cancel()
        backlog = self.backlog
        if backlog is None:
            return
        with contextlib.suppress(Exception):
            self.feed()
        for peer in list(self.peers):
            if peer.task is not None:
                peer.task.cancel()
        for fut in self._ack_waiters:
            if not fut.done():
                fut.set_result(None)
        clean = True
        try:
            self.server.db.sync()
        except Exception as exc:  # the log may lack what replicas got: no clean stop then
            log.error("replication: the store could not be synced at shutdown (%s); the "
                      "next start begins a new replication history", exc)
            clean = False
        backlog.close(clean=clean)

    # -- feeding -----------------------------------------------------------------------------

    def note_write(self) -> None:
        """Something was written: feed the replicas once this loop iteration is done."""
        if not self._feed_scheduled and self.peers:
            self._feed_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_feed)

    def _scheduled_feed(self) -> None:
        self._feed_scheduled = False
        self.feed()

    def feed(self, max_bytes: int | None = None) -> None:
        """Catch the head up with the log (at most about ``max_bytes`` of stream); send the
        new bytes to every replica at the head, and pump those behind it."""
        backlog = self.backlog
        if backlog is None:
            return
        server = self.server
        if server.pending_sets:
            server.flush_sets()  # group-committed SETs are in the log only once flushed
        done = 0
        while max_bytes is None or done < max_bytes:
            try:
                data = backlog.catch_up(SEND_CHUNK)
            except StreamDiverged as exc:
                self._restart_history(str(exc))
                return
            if not data:
                break
            done += len(data)
            head = backlog.offset
            for peer in self.peers:
                if peer.live:
                    peer.write(data)
                    peer.sent = head
                    if peer.buffered > HIGH_WATER:
                        peer.live = False  # from here on it reads at its own pace
        for peer in self.peers:
            if not peer.live and peer.state == "online":
                self._pump(peer)
        self._pin_history()

    def _pin_history(self) -> None:
        """Keep compaction off the records a replica (or the head) has yet to read: it
        would otherwise reclaim them and force a full resync (Store.retain_history_from)."""
        backlog = self.backlog
        db = self.server.db
        if backlog is None or not self.peers:
            db.retain_history_from = None
            return
        pin = backlog.head.cursor.next_seq
        for peer in self.peers:
            if peer.live:
                continue
            if peer.reader is not None:
                pin = min(pin, peer.reader.cursor.next_seq)
            else:
                pin = min(pin, backlog.seq_at(peer.sent))
        db.retain_history_from = pin

    def _pump(self, peer: Peer) -> None:
        """Send a replica behind the head what it lacks, as far as its connection takes."""
        backlog = self.backlog
        if backlog is None:
            return
        try:
            while peer.buffered < LOW_WATER:
                if peer.reader is None:
                    peer.reader = backlog.reader_at(peer.sent)
                    if peer.reader is None:
                        raise StreamDiverged(f"offset {peer.sent} is no longer in the backlog")
                data = peer.reader.read(SEND_CHUNK)
                if data:
                    peer.write(data)
                    peer.sent += len(data)
                if peer.sent >= backlog.offset:
                    peer.live = True
                    peer.reader = None
                    return
                if not data:
                    return
        except StreamDiverged as exc:
            log.warning("replication: dropping replica %s: %s", peer.conn.peer, exc)
            self._drop(peer)

    def _restart_history(self, reason: str) -> None:
        backlog = self.backlog
        if backlog is None:
            return
        log.error("replication: the log no longer matches the stream (%s); starting a new "
                  "history, replicas resync in full", reason)
        backlog.open()
        for peer in list(self.peers):
            self._drop(peer)

    def _drop(self, peer: Peer) -> None:
        with contextlib.suppress(ValueError):
            self.peers.remove(peer)
        self._pin_history()
        if peer.task is not None:
            peer.task.cancel()
        transport = peer.conn.transport
        if transport is not None:
            transport.close()

    def _tick(self) -> None:
        if self._stopped:
            return
        try:
            db = self.server.db
            if not db.closed:
                db.purge_expired()  # expiries reach the log, and so the replicas, promptly
            now = time.monotonic()
            for peer in list(self.peers):
                if peer.state == "online" and now - peer.ack_time > REPL_TIMEOUT:
                    log.warning("replica %s: no ACK for %.0f s; dropping it", peer.conn.peer,
                                now - peer.ack_time)
                    self._drop(peer)
            if self.peers and now - self._last_ping >= PING_PERIOD:
                self._last_ping = now
                self.inject(PING)
            # With no replica attached the head rests (no cost per write); a replica that
            # attaches makes it catch up (psync).
            if self.peers:
                self.feed()
            else:
                db.retain_history_from = None  # the last replica left: compaction is free
        except Exception:
            log.exception("replication: periodic work failed")
        finally:
            self._cron = asyncio.get_running_loop().call_later(CRON_PERIOD, self._tick)

    def inject(self, data: bytes) -> None:
        """Put a command that is not a write (PING, GETACK) into the stream for everyone."""
        backlog = self.backlog
        if backlog is None:
            return
        self.feed()  # the head is at the log's end, at a batch boundary
        backlog.inject(data)
        head = backlog.offset
        for peer in self.peers:
            if peer.live:
                peer.write(data)
                peer.sent = head

    # -- attaching ---------------------------------------------------------------------------

    async def psync(self, conn: Connection, replid: bytes, offset: int, *,
                    legacy: bool = False) -> bytes:
        """PSYNC (``legacy``: SYNC). Returns the first reply line; the rest follows."""
        backlog = self.backlog
        if backlog is None:
            return b"-NOMASTERLINK Can't SYNC while not ready\r\n"
        # The head rests while no replica is attached: bring it to the log's end first, a
        # step at a time so other clients are served meanwhile.
        while True:
            before = backlog.offset
            self.feed(CATCH_UP_STEP)
            if backlog.offset - before < CATCH_UP_STEP:
                break
            await asyncio.sleep(0)
        if conn.transport is None or conn.transport.is_closing():
            return b""
        port = conn.repl_listening_port or _port_of(conn.peer)
        ip = conn.repl_ip_address or conn.peer.rsplit(":", 1)[0]
        peer = Peer(conn, port, ip)
        conn.replica_peer = peer
        conn.client_type = "replica"
        self.peers.append(peer)
        loop = asyncio.get_running_loop()
        if not legacy and replid.decode("ascii", "replace") == backlog.replid \
                and offset >= 1 and offset - 1 <= backlog.offset:
            reader = backlog.reader_at(offset - 1)
            if reader is not None:
                self.sync_partial_ok += 1
                peer.state = "online"
                peer.sent = offset - 1
                peer.reader = reader
                peer.ack_offset = offset - 1
                log.info("replica %s: partial resync accepted from offset %d (%d bytes "
                         "behind)", conn.peer, offset, backlog.offset - (offset - 1))
                loop.call_soon(self._pump, peer)
                return b"+CONTINUE %s\r\n" % backlog.replid.encode()
        if not legacy and replid != b"?":
            self.sync_partial_err += 1
            log.info("replica %s: partial resync from %s:%d not possible (we are %s at %d); "
                     "full resync", conn.peer, replid.decode("ascii", "replace"), offset,
                     backlog.replid, backlog.offset)
        self.sync_full += 1
        start = backlog.offset
        peer.sent = start
        peer.task = loop.create_task(self._full_sync(peer, start))
        if legacy:
            return b""
        return b"+FULLRESYNC %s %d\r\n" % (backlog.replid.encode(), start)

    async def _full_sync(self, peer: Peer, start: int) -> None:
        """Write a snapshot to a temporary file, send it, then the stream from ``start``."""
        backlog = self.backlog
        assert backlog is not None
        db = self.server.db
        reader = backlog.reader_at(start)  # where the stream resumes after the snapshot
        peer.reader = reader  # and what compaction keeps for it meanwhile (_pin_history)
        self._pin_history()
        path = os.path.join(db.path, names.snapshot_tmp_name(os.getpid(), next(_snapshot_ids)))
        loop = asyncio.get_running_loop()
        keepalive = loop.create_task(self._keepalive(peer))
        try:
            began = time.monotonic()
            keys, size = await loop.run_in_executor(
                None, write_snapshot, db, self.server.structures, path, backlog.replid, start)
            keepalive.cancel()
            peer.state = "send_bulk"
            log.info("replica %s: snapshot of %d keys (%d bytes) written in %.2f s; sending",
                     peer.conn.peer, keys, size, time.monotonic() - began)
            peer.write(b"$%d\r\n" % size)
            with open(path, "rb") as f:
                while True:
                    stalled = time.monotonic()
                    while peer.buffered > HIGH_WATER:
                        if time.monotonic() - stalled > REPL_TIMEOUT:
                            raise TimeoutError(f"the replica took no bytes for "
                                               f"{REPL_TIMEOUT:.0f} s")
                        await asyncio.sleep(0.005)
                    chunk = f.read(SEND_CHUNK)
                    if not chunk:
                        break
                    peer.write(chunk)
            peer.state = "online"
            peer.reader = reader
            peer.ack_time = time.monotonic()
            if reader is None:
                raise StreamDiverged(f"offset {start} left the backlog during the snapshot")
            self._pump(peer)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("replica %s: full resync failed: %s", peer.conn.peer, exc)
            self._drop(peer)
        finally:
            keepalive.cancel()
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _keepalive(self, peer: Peer) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_PERIOD)
            peer.write(b"\n")

    def replica_input(self, conn: Connection, data: bytes) -> None:
        """What a replica sends after PSYNC: REPLCONF ACK <offset> (no replies to it)."""
        peer = conn.replica_peer
        if peer is None:
            return
        # Anything it sends is a sign of life: a replica loading a big snapshot sends a
        # newline every second (as Redis's do) and no ACK until it has loaded.
        peer.ack_time = time.monotonic()
        try:
            cmds = conn.parser.feed(data)
        except Exception:
            cmds = []
        if conn.parser.error is not None:
            log.warning("replica %s sent a malformed request; closing its link", conn.peer)
            self._drop(peer)
            return
        for args in cmds:
            if len(args) >= 3 and args[0].upper() == b"REPLCONF" and args[1].upper() == b"ACK":
                try:
                    offset = int(args[2])
                except ValueError:
                    continue
                peer.ack_offset = max(peer.ack_offset, offset)
                peer.ack_time = time.monotonic()
                for fut in self._ack_waiters:
                    if not fut.done():
                        fut.set_result(None)

    def detach(self, conn: Connection) -> None:
        """The replica's connection closed."""
        peer = conn.replica_peer
        if peer is not None:
            with contextlib.suppress(ValueError):
                self.peers.remove(peer)
            if peer.task is not None:
                peer.task.cancel()
            self._pin_history()
            log.info("replica %s: connection lost", conn.peer)

    # -- WAIT --------------------------------------------------------------------------------

    async def wait(self, numreplicas: int, timeout_ms: int) -> int:
        """WAIT: block until ``numreplicas`` acknowledged every write so far, or the timeout
        (0: none). Returns how many have."""
        backlog = self.backlog
        if backlog is None:
            return 0
        self.feed()
        target = backlog.offset

        def acked() -> int:
            return sum(1 for p in self.peers if p.state == "online" and p.ack_offset >= target)

        if acked() >= numreplicas or not self.peers:
            return acked()
        if self._getack_at != backlog.offset:  # one GETACK serves every WAIT until a write
            self.inject(GETACK)
            self._getack_at = backlog.offset
        loop = asyncio.get_running_loop()
        deadline = None if timeout_ms == 0 else loop.time() + timeout_ms / 1000
        while acked() < numreplicas and not self._stopped:
            fut: asyncio.Future[None] = loop.create_future()
            self._ack_waiters.append(fut)
            try:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(fut, remaining)
            finally:
                self._ack_waiters.remove(fut)
        return acked()

    # -- INFO, ROLE --------------------------------------------------------------------------

    def info_fields(self) -> list[tuple[str, object]]:
        backlog = self.backlog
        fields: list[tuple[str, object]] = [("connected_slaves", len(self.peers))]
        now = time.monotonic()
        for i, p in enumerate(self.peers):
            fields.append((f"slave{i}", f"ip={p.ip},port={p.listening_port},state={p.state},"
                                        f"offset={p.ack_offset},lag={int(now - p.ack_time)}"))
        offset = backlog.offset if backlog is not None else 0
        first = backlog.first_offset() if backlog is not None else 0
        fields += [
            ("master_failover_state", "no-failover"),
            ("master_replid", backlog.replid if backlog is not None else "0" * 40),
            ("master_replid2", "0" * 40),
            ("master_repl_offset", offset),
            ("second_repl_offset", -1),
            ("repl_backlog_active", 1),
            ("repl_backlog_size", max(0, offset - first)),
            ("repl_backlog_first_byte_offset", first + 1),
            ("repl_backlog_histlen", max(0, offset - first)),
        ]
        return fields

    def stats_fields(self) -> list[tuple[str, object]]:
        return [("sync_full", self.sync_full), ("sync_partial_ok", self.sync_partial_ok),
                ("sync_partial_err", self.sync_partial_err)]

    def role_entries(self) -> list[tuple[str, int, int]]:
        """(ip, port, acked offset) of each online replica, for ROLE."""
        return [(p.ip, p.listening_port, p.ack_offset) for p in self.peers
                if p.state == "online"]

    @property
    def offset(self) -> int:
        return self.backlog.offset if self.backlog is not None else 0


def write_snapshot(db: bitkv.Store, structures: Structures | None, path: str, replid: str,
                   offset: int) -> tuple[int, int]:
    """Write an RDB of the live keys of ``db`` to ``path``: its strings, then the hashes,
    sets, lists and sorted sets of ``structures`` (server/collection_snapshot.py: their
    records are not strings); return (keys, bytes). Runs in a worker thread while the loop
    goes on writing."""
    now_ms = int(time.time() * 1000)
    keys = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb", buffering=1 << 20) as f:
        writer = rdb.RDBWriter(f, repl_id=replid, repl_offset=offset)
        names_now = db.keys()  # a list: the loop thread keeps writing meanwhile
        for key in names_now:
            if is_internal(key):  # a collection's record: written per collection below
                continue
            got = db.get_with_expiry(key)
            if got is None:
                continue
            value, expiry_ms = got
            if expiry_ms and expiry_ms <= now_ms:
                continue
            writer.add_string(key, value, expiry_ms)
            keys += 1
        if structures is not None:
            keys += write_collections(writer, structures, now_ms)
        writer.finish()
    return keys, writer.bytes_written


def _port_of(addr: str) -> int:
    try:
        return int(addr.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return 0
