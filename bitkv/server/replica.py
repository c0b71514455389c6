"""The replica side of replication: the link to a master (see replication.py).

:class:`ReplicaLink` follows one master the way Redis 7.0's replica does (replication.c,
``syncWithMaster``, ``readSyncBulkPayload``, ``replicationCron``):

1. **Handshake.** ``PING``, ``AUTH [masteruser] masterauth``, ``REPLCONF listening-port``,
   ``REPLCONF ip-address`` (with replica-announce-ip), ``REPLCONF capa eof capa psync2``,
   then ``PSYNC <replid> <offset+1>`` to continue where the local data stands, or
   ``PSYNC ? -1`` when it stands nowhere known.
2. **Full resync** (``+FULLRESYNC <replid> <offset>``). The RDB arrives as ``$<len>`` and
   that many bytes, or diskless as ``$EOF:<40-byte mark>`` ... ``<mark>``, after any number of
   ``\\n`` keepalives. It is streamed into a temporary file in the store directory, then read
   twice in a worker thread: once to verify all of it (structure, version, CRC64) without
   touching the store, once to load it. Loading writes every string key with its absolute
   expiry in bounded atomic batches, then deletes the local keys the RDB does not hold
   (so readers of the directory never see an empty store in between). Keys of types bitkv
   does not store are skipped, each named in a WARNING line (the first 100 of a load, then a
   count) and counted in INFO (``bitkv_replica_skipped_keys``).
3. **The stream** (after the RDB, or at once on ``+CONTINUE``): RESP commands, parsed by
   :class:`StreamParser` (the server's own parser, told where each command ends), applied
   through the server's command table as the master's client: no replies, no READONLY. The
   offset advances by the bytes of each command once it is applied (inside MULTI, at
   EXEC), as Redis counts it; ``REPLCONF GETACK`` is answered at once with ``REPLCONF ACK
   <offset>``, and an ACK goes every second anyway. Commands that are not writes bitkv knows
   (HSET, LPUSH, ...) and commands for a database other than 0 are skipped with a WARNING
   (at most one a minute per command) and counted in INFO (``bitkv_replica_skipped_commands``).
4. **Failure.** Any error (refused connection, an error reply, a bad RDB, garbage in the
   stream, ``repl-timeout`` seconds without a byte from the master) closes the link; it is
   logged and retried with a growing pause (0.5 s doubling to 5 s). The local store is never
   left half-written by a bad RDB (it is verified first), and the offset is where the last
   applied command ended, so the retry continues exactly there.

What is persisted, and when a restart resumes with a partial resync, is described in
:mod:`bitkv.server.replica_state`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import bitkv
from bitkv import names, rdb
from bitkv.record import MAX_KEY_SIZE, MAX_VALUE_SIZE
from bitkv.structures import is_internal

from . import replica_state
from .collection_snapshot import CollectionLoader
from .commands import F_ASYNC, F_TXCTL, F_WRITE, CommandError, lookup
from .protocol import Limits, ProtocolError, PyParser
from .replica_state import ReplicaState, ResumePoint

if TYPE_CHECKING:
    from .app import Connection, Server

log = logging.getLogger("bitkv.server")

ACK_PERIOD = 1.0  # Redis's replicationCron: REPLCONF ACK every second
RETRY_FIRST = 0.5  # the pause before reconnecting, doubling up to RETRY_MAX
RETRY_MAX = 5.0
READ_CHUNK = 1 << 16
LOAD_BATCH = 5000  # keys per atomic batch when loading an RDB (bounded memory and latency)
KEY_WARNINGS = 100  # skipped keys named one by one per load; the rest are counted
SKIP_WARNING_PERIOD = 60.0
# The master's stream is trusted like Redis trusts it (no client query limits for the
# master), but a value must still fit in bitkv.
STREAM_LIMITS = Limits(max_bulk_len=MAX_VALUE_SIZE, max_multibulk_len=2**31 - 1,
                       max_query_buffer=1 << 62)


class LinkError(Exception):
    """The link to the master failed (logged, then retried)."""


class _Aborted(Exception):
    """The server is stopping or the role changed while an RDB was being loaded."""


@dataclass
class ReplicaSettings:
    """The replica's configuration: ``bitkv serve`` options, changed by CONFIG SET."""

    masterauth: str | None = None
    masteruser: str | None = None
    read_only: bool = True  # replica-read-only
    priority: int = 100  # replica-priority (Sentinel: 0 = never promote)
    announce_ip: str = ""  # replica-announce-ip
    announce_port: int = 0  # replica-announce-port (0: the port we listen on)
    repl_timeout: float = 60.0  # seconds without a byte from the master -> reconnect
    master_tls: bool = False  # connect to the master over TLS
    master_tls_ca_cert: str | None = None  # the CA its certificate must be signed by


def encode_command(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(parts)


class StreamParser(PyParser):
    """The request parser, also telling where in the stream each command ends."""

    __slots__ = ("_base",)

    def __init__(self) -> None:
        super().__init__(STREAM_LIMITS, True)
        self._base = 0  # stream bytes dropped from the front of the buffer

    def feed_ends(self, data: bytes) -> list[tuple[list[bytes], int]]:
        """Parse ``data``; each command with the stream position (bytes since the parser was
        made) just past it. An empty line (a keepalive) or an empty command gives ``[]``:
        nothing to run, but its bytes count. ``error`` is set on malformed input."""
        out: list[tuple[list[bytes], int]] = []
        if self.error is not None:
            return out
        buf = self._buf
        buf += data
        cmds: list[list[bytes]] = []
        try:
            while True:
                n = len(cmds)
                if not self._parse_one(cmds):
                    break
                out.append((cmds[-1] if len(cmds) > n else [], self._base + self._pos))
        except ProtocolError:
            self._args = None
        finally:
            pos = self._pos
            if pos >= len(buf):
                buf.clear()
                self._base += pos
                self._pos = 0
            elif pos > 65536:
                del buf[:pos]
                self._base += pos
                self._pos = 0
        return out


def master_ssl_context(settings: ReplicaSettings, client_cert: str | None,
                       client_key: str | None, server_ca: str | None) -> ssl.SSLContext:
    """TLS to the master, as Redis's ``tls-replication yes`` does it: the master's certificate
    must be signed by ``master_tls_ca_cert`` (else the server's ``--tls-ca-cert``, else the
    system's CAs); its host name is not checked (Redis does not either). The server's own
    certificate, if any, is presented as the client certificate."""
    cafile = settings.master_tls_ca_cert or server_ca
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    if client_cert and client_key:
        ctx.load_cert_chain(client_cert, client_key)
    return ctx


def _shown(key: bytes) -> str:
    text = key[:200].decode("utf-8", "backslashreplace")
    return repr(text + ("..." if len(key) > 200 else ""))


class ReplicaLink:
    """The link to one master; ``start()`` runs it until ``stop()``."""

    def __init__(self, server: Server, host: str, port: int, settings: ReplicaSettings,
                 resume: ResumePoint | None, state: ReplicaState) -> None:
        self.server = server
        self.host = host
        self.port = port
        self.settings = settings
        self._state = state  # the REPLICA file's contents; this link updates ``resume``
        self._ack_refusal: str | None = None  # why ACKs stopped (logged once)
        # Where the local data stands: the master's replication id and the offset of the
        # last byte applied, or None / -1 when unknown (then PSYNC ? -1).
        self.replid: str | None = None
        self.offset = -1
        if resume is not None and resume.clean:
            self.replid, self.offset = resume.replid, resume.offset
        self.read_offset = max(self.offset, 0)
        self.state = "connect"  # connect, connecting, handshake, sync, connected (ROLE's)
        self.last_io = time.monotonic()
        self.down_since: float | None = None  # wall time the link went down; None: never up
        self.transfer_size = 0
        self.transfer_read = 0
        self.transfer_last_io = time.monotonic()
        self.full_syncs = 0
        self.partial_syncs = 0
        self.skipped_keys = 0  # keys of the last full resync that were not loaded
        self.skipped_commands = 0
        self.failed_commands = 0
        self.client: Connection = server.internal_client(b"master")  # handlers' ``c``
        self._db_index = 0
        self._multi: list[list[bytes]] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._abort = threading.Event()
        self._skip_warned: dict[str, tuple[float, int]] = {}
        self._stopping = False
        self._loading: asyncio.Future[int] | None = None  # the RDB load running in a thread

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, after: asyncio.Task[None] | None = None) -> None:
        """Run the link in the background (once ``after``, the previous link stopping, is
        done)."""
        self._task = asyncio.get_running_loop().create_task(self._run(after))

    async def stop(self, *, clean: bool = True) -> None:
        """Close the link. With ``clean`` (a server shutdown), fsync the store and record
        that the data holds exactly the stream up to the offset (a restart then continues
        with PSYNC); without (the role changed), record nothing new."""
        self._stopping = True
        self._abort.set()
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._loading is not None:  # let the loading thread see the abort and finish
            with contextlib.suppress(Exception):
                await self._loading
            self._loading = None
            if not self.server.db.closed:
                self.server.structures.load()  # from the records it left (as after a load)
        self._close_writer()
        if clean and self.replid is not None and self.offset >= 0:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self._save_clean)
            except Exception as exc:
                log.error("replication: could not record a clean stop (%s); the next start "
                          "does a full resync", exc)

    def _save_clean(self) -> None:
        self.server.db.sync()  # the data the resume point vouches for is on disk first
        assert self.replid is not None
        self._save_resume(ResumePoint(self.host, self.port, self.replid, self.offset, True))
        log.info("replication: stopped cleanly at offset %d of %s", self.offset, self.replid)

    def _save_resume(self, resume: ResumePoint | None) -> None:
        self._state.resume = resume
        replica_state.save(self.server.config.dir, self._state)

    def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    async def _run(self, after: asyncio.Task[None] | None) -> None:
        if after is not None:
            await asyncio.wait([after])
        log.info("Connecting to MASTER %s:%d", self.host, self.port)
        pause = RETRY_FIRST
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (LinkError, OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, TimeoutError):  # asyncio.wait_for's (an OSError)
                    reason = (f"MASTER timeout: no data nor PING received for "
                              f"{self.settings.repl_timeout:g} s")
                log.warning("replication: link to MASTER %s:%d lost or failed: %s", self.host,
                            self.port, reason)
            except Exception:
                log.exception("replication: link to MASTER %s:%d failed", self.host,
                              self.port)
            finally:
                synced = self.state == "connected"
                self._link_down()
            if synced:
                pause = RETRY_FIRST
            if self._stopping:
                return
            log.info("replication: reconnecting to MASTER %s:%d in %.1f s", self.host,
                     self.port, pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    def _link_down(self) -> None:
        if self.state == "connected":
            self.down_since = time.time()
        self.state = "connect"
        self._multi = None  # a transaction cut short is resent from its MULTI
        self.server.clients.pop(self.client, None)
        self._close_writer()

    # -- the session: connect, handshake, sync, stream ---------------------------------------

    async def _session(self) -> None:
        """One connection to the master: handshake, sync, then the stream until it fails."""
        settings = self.settings
        timeout = settings.repl_timeout
        self.state = "connecting"
        ctx = None
        if settings.master_tls:
            cfg = self.server.config
            ctx = master_ssl_context(settings, cfg.tls_cert, cfg.tls_key, cfg.tls_ca_cert)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=ctx, limit=1 << 20), timeout)
        self._writer = writer
        self.last_io = time.monotonic()
        self._register_client(writer)
        log.info("MASTER <-> REPLICA sync started (%s:%d)", self.host, self.port)
        self.state = "handshake"
        full = await self._handshake(reader, writer)
        if full is not None:
            replid, offset = full
            await self._full_sync(reader, replid, offset)
        await asyncio.get_running_loop().run_in_executor(None, self._mark_applying)
        self.state = "connected"
        self.down_since = None
        self.last_io = time.monotonic()
        self._send_ack()  # puts us online on a master that waits for it (diskless sync)
        ack = asyncio.get_running_loop().create_task(self._ack_loop())
        try:
            await self._stream(reader)
        finally:
            ack.cancel()

    def _register_client(self, writer: asyncio.StreamWriter) -> None:
        """The master's client, for this connection: in CLIENT LIST as type master (flag M),
        and CLIENT KILL TYPE master closes the link (which then reconnects), as in Redis."""
        client = self.client = self.server.internal_client(b"master")
        client.transport = writer.transport
        for attr, extra in (("peer", "peername"), ("local", "sockname")):
            addr = writer.get_extra_info(extra)
            if isinstance(addr, tuple):
                setattr(client, attr, f"{addr[0]}:{addr[1]}")
        self.server.clients[client] = None

    async def _reply(self, reader: asyncio.StreamReader) -> bytes:
        """One reply line, skipping the newlines a master sends to keep us waiting."""
        while True:
            line = await asyncio.wait_for(reader.readline(), self.settings.repl_timeout)
            if not line:
                raise LinkError("the master closed the connection")
            self.last_io = time.monotonic()
            line = line.rstrip(b"\r\n")
            if line:
                return line

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                         ) -> tuple[str, int] | None:
        """PING ... PSYNC. None for a partial resync, else the full resync's (replid, offset)."""
        settings = self.settings
        writer.write(encode_command(b"PING"))
        reply = await self._reply(reader)
        if reply.startswith(b"-") and not reply.startswith(
                (b"-NOAUTH", b"-NOPERM", b"-ERR operation not permitted")):
            raise LinkError(f"error reply to PING from master: {_text(reply)}")
        if settings.masterauth:
            if settings.masteruser:
                writer.write(encode_command(b"AUTH", settings.masteruser, settings.masterauth))
            else:
                writer.write(encode_command(b"AUTH", settings.masterauth))
            reply = await self._reply(reader)
            if reply.startswith(b"-"):
                raise LinkError(f"unable to AUTH to MASTER: {_text(reply)}")
        port = settings.announce_port or self.server.port
        writer.write(encode_command(b"REPLCONF", b"listening-port", port))
        reply = await self._reply(reader)
        if reply.startswith(b"-"):
            log.info("(non critical) master does not understand REPLCONF listening-port: %s",
                     _text(reply))
        if settings.announce_ip:
            writer.write(encode_command(b"REPLCONF", b"ip-address", settings.announce_ip))
            reply = await self._reply(reader)
            if reply.startswith(b"-"):
                log.info("(non critical) master does not understand REPLCONF ip-address: %s",
                         _text(reply))
        writer.write(encode_command(b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"))
        reply = await self._reply(reader)
        if reply.startswith(b"-"):
            log.info("(non critical) master does not understand REPLCONF capa: %s",
                     _text(reply))
        if self.replid is not None and self.offset >= 0:
            log.info("Trying a partial resynchronization (request %s:%d).", self.replid,
                     self.offset + 1)
            writer.write(encode_command(b"PSYNC", self.replid, self.offset + 1))
        else:
            log.info("Partial resynchronization not possible (no cached master)")
            writer.write(encode_command(b"PSYNC", b"?", b"-1"))
        reply = await self._reply(reader)
        if reply.startswith(b"+FULLRESYNC"):
            parts = reply.split()
            if len(parts) != 3 or len(parts[1]) != 40 or not parts[2].isdigit():
                raise LinkError(f"master replied to PSYNC with a malformed FULLRESYNC: "
                                f"{_text(reply)}")
            replid, offset = parts[1].decode("ascii"), int(parts[2])
            log.info("Full resync from master: %s:%d", replid, offset)
            return replid, offset
        if reply.startswith(b"+CONTINUE"):
            parts = reply.split()
            if len(parts) > 1:
                new = parts[1].decode("ascii", "replace")
                if len(new) != 40:
                    raise LinkError(f"master replied with a malformed CONTINUE: "
                                    f"{_text(reply)}")
                if new != self.replid:
                    log.info("Master replication ID changed to %s", new)
                    self.replid = new
            self.partial_syncs += 1
            log.info("Successful partial resynchronization with master (offset %d).",
                     self.offset)
            log.info("MASTER <-> REPLICA sync: Master accepted a Partial Resynchronization.")
            return None
        if reply.startswith((b"-NOMASTERLINK", b"-LOADING")):
            raise LinkError(f"master is currently unable to PSYNC but should be in the "
                            f"future: {_text(reply)}")
        raise LinkError(f"unexpected reply to PSYNC from master: {_text(reply)}")

    async def _full_sync(self, reader: asyncio.StreamReader, replid: str, offset: int) -> None:
        """Receive the RDB into a temporary file, verify it, load it."""
        self.state = "sync"
        self.transfer_size = -1  # until the header says (Redis's -1; 0 for a diskless RDB)
        self.transfer_read = 0
        self.transfer_last_io = time.monotonic()
        header = await self._reply(reader)
        if header.startswith(b"-"):
            raise LinkError(f"master aborted the sync: {_text(header)}")
        if not header.startswith(b"$"):
            raise LinkError(f"bad protocol from MASTER, the first byte is not '$' (we "
                            f"received '{_text(header[:64])}'), are you sure the host and "
                            f"port are right?")
        mark: bytes | None = None
        size = -1
        if header.startswith(b"$EOF:"):
            mark = header[5:]
            self.transfer_size = 0
            if len(mark) != 40:
                raise LinkError(f"bad EOF mark from MASTER: {_text(header)}")
            log.info("MASTER <-> REPLICA sync: receiving streamed RDB from master with EOF "
                     "to disk")
        else:
            digits = header[1:]
            if not digits.isdigit():
                raise LinkError(f"bad RDB length from MASTER: {_text(header)}")
            size = self.transfer_size = int(digits)
            log.info("MASTER <-> REPLICA sync: receiving %d bytes from master to disk", size)
        directory = self.server.config.dir
        path = os.path.join(directory, names.replica_rdb_tmp_name(os.getpid()))
        timeout = self.settings.repl_timeout
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                if mark is None:
                    left = size
                    while left:
                        chunk = await asyncio.wait_for(reader.read(min(left, READ_CHUNK)),
                                                       timeout)
                        if not chunk:
                            raise LinkError(f"the master closed the connection after "
                                            f"{size - left} of the RDB's {size} bytes")
                        f.write(chunk)
                        left -= len(chunk)
                        self._transfer_io(len(chunk))
                else:
                    tail = b""  # the last 40 bytes read, held back: they may be the mark
                    while True:
                        chunk = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
                        if not chunk:
                            raise LinkError(f"the master closed the connection after "
                                            f"{self.transfer_read} bytes of the RDB")
                        self._transfer_io(len(chunk))
                        tail += chunk
                        if tail.endswith(mark):
                            f.write(tail[:-40])
                            break
                        f.write(tail[:-40])
                        tail = tail[-40:]
            log.info("MASTER <-> REPLICA sync: Flushing old data")
            loop = asyncio.get_running_loop()
            self._abort.clear()
            started = time.monotonic()
            self._loading = loop.run_in_executor(None, self._verify_and_load, path)
            # A newline a second while loading: the master counts it as a sign of life (Redis's
            # replicationSendNewlineToMaster), so a long load does not hit its repl-timeout.
            keepalive = loop.create_task(self._newlines())
            try:
                loaded = await asyncio.shield(self._loading)
            finally:
                keepalive.cancel()
                if self._loading.done():
                    self._loading = None
                    # The collections' index follows the records the load (or a part of it,
                    # if it failed after verifying) left in the store.
                    if self.server.structures is not None:
                        self.server.structures.load()
            log.info("MASTER <-> REPLICA sync: Finished with success: %d keys loaded, %d "
                     "skipped, in %.2f s", loaded, self.skipped_keys,
                     time.monotonic() - started)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.replid, self.offset = replid, offset
        self.read_offset = offset
        self.full_syncs += 1

    async def _newlines(self) -> None:
        while True:
            await asyncio.sleep(ACK_PERIOD)
            writer = self._writer
            if writer is not None and not writer.is_closing():
                writer.write(b"\n")

    def _transfer_io(self, n: int) -> None:
        self.transfer_read += n
        self.transfer_last_io = self.last_io = time.monotonic()

    # -- loading the RDB (a worker thread) ---------------------------------------------------

    def _verify_and_load(self, path: str) -> int:
        aborted = self._abort

        def verify(db: int, key: bytes, value: object, expire_ms: int) -> None:
            if aborted.is_set():
                raise _Aborted

        def ignore(*args: object) -> None:
            pass

        try:
            with open(path, "rb") as f:  # every type the load decodes, decoded here too
                rdb.read_rdb(f, on_string=verify, on_skipped=ignore, on_aux=ignore,
                             max_value_len=None, on_hash=verify, on_set=verify,
                             on_list=verify, on_zset=verify)
        except rdb.RDBError as exc:
            raise LinkError(f"the RDB from the master is invalid, the store was not touched "
                            f"(will retry): {exc}") from exc
        except _Aborted:
            raise LinkError("the full resync was interrupted") from None
        # Verified: from here on the store changes. Until the load is done the REPLICA file
        # holds no resume point, so an interrupted load is followed by a full resync.
        self._save_resume(None)
        self.replid, self.offset = None, -1
        try:
            # One fsync at the end (_load's db.sync()), not one per batch when the store
            # syncs always: the load is not acknowledged to anyone before it is done.
            with self.server.db.deferred_sync():
                return self._load(path)
        except _Aborted:
            raise LinkError("the full resync was interrupted while loading; the store holds "
                            "a partial copy until the next full resync") from None

    def _load(self, path: str) -> int:
        db = self.server.db
        aborted = self._abort
        with db.seeing_expired():  # expired keys held (hold_expired) go too
            leftover = set(db.keys())  # local keys the RDB does not hold are deleted at the end
        skipped: list[int] = [0]
        loaded = [0]
        batch = db.batch()
        now_ms = int(time.time() * 1000)

        def skip(dbnum: int, key: bytes, what: str) -> None:
            skipped[0] += 1
            if skipped[0] <= KEY_WARNINGS:
                log.warning("replication: skipped key %s of type %s (db %d) from the master's "
                            "RDB: bitkv does not store it", _shown(key), what, dbnum)

        def commit_if_full() -> None:
            nonlocal batch
            if len(batch) >= LOAD_BATCH:
                if aborted.is_set():
                    raise _Aborted
                batch.commit()
                batch = db.batch()

        def on_string(dbnum: int, key: bytes, value: bytes, expire_ms: int) -> None:
            if dbnum != 0:
                skip(dbnum, key, "string in a database other than 0")
                return
            if not key or len(key) > MAX_KEY_SIZE or len(value) > MAX_VALUE_SIZE \
                    or is_internal(key):
                skip(dbnum, key, f"string (key of {len(key)} bytes, value of {len(value)} "
                                 f"bytes: beyond bitkv's limits, or in its reserved range)")
                return
            if expire_ms and expire_ms <= now_ms:
                return  # expired already: as Redis's replica, not loaded (deleted if local)
            batch.put(key, value, expires_at_ms=expire_ms or None)
            leftover.discard(key)
            loaded[0] += 1
            commit_if_full()

        def on_skipped(dbnum: int, key: bytes, type_name: str) -> None:
            skip(dbnum, key, type_name)

        def put_records(records: list[tuple[bytes, bytes | None, int | None]]) -> None:
            # A collection's records (elements, then its header) go in the same batches as
            # the strings; an interrupted load is followed by a full resync anyway.
            for key, value, expiry in records:
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value, expires_at_ms=expiry)
                leftover.discard(key)
                commit_if_full()

        collections = CollectionLoader(put_records, skip, now_ms)
        with open(path, "rb") as f:
            rdb.read_rdb(f, on_string=on_string, on_skipped=on_skipped,
                         on_aux=collections.on_aux, on_hash=collections.on_hash,
                         on_set=collections.on_set, on_list=collections.on_list,
                         on_zset=collections.on_zset, max_value_len=None)
        batch.commit()
        loaded[0] += collections.loaded
        if skipped[0] > KEY_WARNINGS:
            log.warning("replication: skipped %d more keys of types bitkv does not store (%d "
                        "in all; INFO replication: bitkv_replica_skipped_keys)",
                        skipped[0] - KEY_WARNINGS, skipped[0])
        batch = db.batch()
        for key in leftover:
            batch.delete(key)
            if len(batch) >= LOAD_BATCH:
                batch.commit()
                batch = db.batch()
        batch.commit()
        self.skipped_keys = skipped[0]
        db.sync()
        return loaded[0]

    def _mark_applying(self) -> None:
        """Before the first command of the stream is applied: the REPLICA file says the data
        is at ``offset`` but not clean (a kill from here on leaves it anywhere past it)."""
        assert self.replid is not None
        self._save_resume(ResumePoint(self.host, self.port, self.replid, self.offset, False))

    # -- the stream --------------------------------------------------------------------------

    async def _stream(self, reader: asyncio.StreamReader) -> None:
        parser = StreamParser()
        base = self.offset  # parser positions count from here
        timeout = self.settings.repl_timeout
        server = self.server
        while True:
            data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
            if not data:
                raise LinkError("connection closed by the master")
            self.last_io = time.monotonic()
            self.client.last_active = server.clock
            self.read_offset += len(data)
            if server.pending_sets:
                server.flush_sets()  # writes of clients (replica-read-only no) come first
            wrote = 0
            try:
                # A key that expired here may still be alive on the master when it sent a
                # command for it (our clock, our lag): the master's commands see it
                # (Store.hold_expired).
                with server.db.seeing_expired():
                    for args, end in parser.feed_ends(data):
                        if args:
                            wrote += self._execute(args)
                        if self._multi is None:
                            self.offset = base + end
            finally:
                if wrote:  # (also when a command failed the link: those before it count)
                    server.write_version += 1
                    server.writes_since_save += wrote
                    server.replication.note_applied()
            if parser.error is not None:
                raise LinkError(f"protocol error in the replication stream from the master "
                                f"at offset {self.offset}: {parser.error}")

    def _execute(self, args: list[bytes]) -> int:
        """Apply one command of the stream; the number of writes it made (0 or 1...)."""
        name = args[0].lower()
        if self._multi is not None and name not in (b"exec", b"discard", b"multi"):
            self._multi.append(args)
            return 0
        if name == b"ping":
            return 0
        if name == b"select":
            try:
                self._db_index = int(args[1]) if len(args) == 2 else self._db_index
            except ValueError:
                self._skip(args, "malformed SELECT")
            return 0
        if name == b"replconf":
            if len(args) >= 2 and args[1].lower() == b"getack":
                self._send_ack()
            return 0
        if name == b"multi":
            self._multi = []
            return 0
        if name == b"exec":
            queued, self._multi = self._multi or [], None
            done = 0
            try:
                for a in queued:
                    done += self._apply(a)
            except LinkError:
                if done:
                    # Part of the transaction is applied but the offset stays before its
                    # MULTI: continuing would apply that part twice. Resync in full.
                    self.replid, self.offset = None, -1
                raise
            return done
        if name == b"discard":
            self._multi = None
            return 0
        return self._apply(args)

    def _apply(self, args: list[bytes]) -> int:
        if self._db_index != 0:
            self._skip(args, f"database {self._db_index}: bitkv has only database 0")
            return 0
        spec = lookup(args[0])
        if spec is None:
            self._skip(args, "bitkv does not have this command")
            return 0
        handler, arity, flags, _name = spec
        if not flags & F_WRITE or flags & (F_ASYNC | F_TXCTL):
            self._skip(args, "not a write command")
            return 0
        argc = len(args)
        if argc != arity and (arity >= 0 or argc < -arity):
            self._failed(args, "wrong number of arguments")
            return 0
        try:
            reply = handler(self.client, args)
        except CommandError as exc:
            self._failed(args, exc.reply.decode("utf-8", "replace").strip())
            return 0
        except (ValueError, TypeError) as exc:
            self._failed(args, str(exc))
            return 0
        except (OSError, bitkv.Error) as exc:
            # The store refused the write (disk full, closed): do not step past it; the link
            # is dropped and the command is received again after the reconnect.
            raise LinkError(f"the store refused a write from the master: {exc}") from exc
        if type(reply) is bytes and reply.startswith(b"-"):
            self._failed(args, reply.decode("utf-8", "replace").strip())
        return 1

    def _skip(self, args: list[bytes], reason: str) -> None:
        self.skipped_commands += 1
        self._warn_rate_limited(args, "skipped", reason)

    def _failed(self, args: list[bytes], reason: str) -> None:
        self.failed_commands += 1
        self._warn_rate_limited(args, "failed", reason)

    def _warn_rate_limited(self, args: list[bytes], what: str, reason: str) -> None:
        name = args[0].decode("utf-8", "replace").upper()[:64]
        key = f"{what} {name}"
        now = time.monotonic()
        last, count = self._skip_warned.get(key, (-SKIP_WARNING_PERIOD, 0))
        count += 1
        if now - last >= SKIP_WARNING_PERIOD:
            log.warning("replication: %s %s from the master (%s)%s", what, name, reason,
                        f"; {count} such since the last warning" if count > 1 else
                        "; at most one such warning a minute")
            self._skip_warned[key] = (now, 0)
        else:
            self._skip_warned[key] = (last, count)

    def _send_ack(self) -> None:
        writer = self._writer
        if writer is not None and not writer.is_closing() and self.offset >= 0:
            if self.server.sync_always:
                # The offset vouches for what this replica holds: with --sync always, on its
                # disk (WAIT, docs/replication.md). The stream's writes were applied on the
                # loop thread without their own fsync (Store.deferred_sync); one now.
                try:
                    self.server.db.sync_pending()
                except Exception as exc:
                    # The store logged the failed fsync itself (ERROR); this says what it
                    # means here, once, not at every ACK period.
                    if str(exc) != self._ack_refusal:
                        self._ack_refusal = str(exc)
                        log.warning("replication: not acknowledging offsets from %d on: the "
                                    "fsync failed: %s", self.offset, exc)
                    return
            writer.write(encode_command(b"REPLCONF", b"ACK", self.offset))

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_PERIOD)
            self._send_ack()

    # -- INFO, ROLE --------------------------------------------------------------------------

    def info_fields(self) -> list[tuple[str, object]]:
        """The replica's part of INFO replication, Redis 7.0's fields and formats."""
        now = time.monotonic()
        connected = self.state == "connected"
        offset = max(self.offset, 0)
        fields: list[tuple[str, object]] = [
            ("master_host", self.host),
            ("master_port", self.port),
            ("master_link_status", "up" if connected else "down"),
            ("master_last_io_seconds_ago", int(now - self.last_io) if connected else -1),
            ("master_sync_in_progress", int(self.state == "sync")),
            ("slave_read_repl_offset", self.read_offset if self.offset >= 0 else offset),
            ("slave_repl_offset", offset),
        ]
        if self.state == "sync":
            size, read = self.transfer_size, self.transfer_read
            fields += [
                ("master_sync_total_bytes", size),
                ("master_sync_read_bytes", read),
                ("master_sync_left_bytes", size - read),
                ("master_sync_perc", f"{read / size * 100 if size else 0:.2f}"),
                ("master_sync_last_io_seconds_ago", int(now - self.transfer_last_io)),
            ]
        if not connected:
            fields.append(("master_link_down_since_seconds",
                           int(time.time() - self.down_since) if self.down_since else -1))
        settings = self.settings
        fields += [
            ("slave_priority", settings.priority),
            ("slave_read_only", int(settings.read_only)),
            ("replica_announced", 1),
        ]
        return fields

    def extra_info_fields(self) -> list[tuple[str, object]]:
        """bitkv's own replica counters (after Redis's fields)."""
        return [
            ("bitkv_replica_full_syncs", self.full_syncs),
            ("bitkv_replica_partial_syncs", self.partial_syncs),
            ("bitkv_replica_skipped_keys", self.skipped_keys),
            ("bitkv_replica_skipped_commands", self.skipped_commands),
            ("bitkv_replica_failed_commands", self.failed_commands),
        ]

    def role_state(self) -> str:
        return {"connect": "connect", "connecting": "connecting", "handshake": "handshake",
                "sync": "sync", "connected": "connected"}[self.state]


def _text(b: bytes) -> str:
    return b.decode("utf-8", "replace")
