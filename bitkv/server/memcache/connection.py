"""One memcached text-protocol client: read request lines and data blocks, run them in
order, write the replies, with memory bounded however the client behaves.

Bounds. A request line without "\\n" after ``text.MAX_LINE`` bytes (``MAX_GET_LINE`` for
get/gets) closes the connection, as memcached does; a data block is buffered only up to the
item size limit (a larger one is answered ``SERVER_ERROR object too large for cache`` and
discarded as it arrives). Replies are written in chunks of ``OUTPUT_CHUNK`` bytes; once the
transport's buffer is over its high-water mark (the client is not reading), the connection
stops reading and stops running commands, in the middle of a multi-key get if need be, until
the client catches up. So a client that never reads costs at most one chunk, one item and
the transport's buffer.

With ``--sync always``, replies produced after a write (this client's or any other's in the
same loop iteration) wait for the server's end-of-iteration fsync, as the Redis replies do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any, Protocol

from .. import protected
from . import text
from .commands import STORAGE_COMMANDS, Memcache, Refusal, Storage

log = logging.getLogger("bitkv.server")

OUTPUT_CHUNK = 256 * 1024  # replies gathered before a write (and a check of the client)
_GETS = (b"get", b"gets", b"gat", b"gats")
_QUIT = b"quit"


class MemcacheHost(Protocol):
    """What a memcached connection needs of the server (app.Server implements it)."""

    sync_always: bool
    closing: bool

    def admits_memcache_client(self, conn: MemcacheConnection, peer: str) -> bool: ...

    def forget_memcache_client(self, conn: MemcacheConnection) -> None: ...

    def before_memcache_commands(self) -> None: ...

    def count_partial(self, conn: MemcacheConnection, buffered: int) -> None: ...

    def writes_await_fsync(self) -> bool: ...

    def hold_for_fsync(self, conn: Any) -> None: ...


class MemcacheConnection(asyncio.Protocol):
    """One client of the memcached port."""

    def __init__(self, host: MemcacheHost, mc: Memcache) -> None:
        self.host = host
        self.mc = mc
        self._admitted = False
        self.transport: Any = None
        self.peer = "?"
        self._buf = bytearray()
        self._pos = 0  # what of _buf is consumed (compacted after each run)
        self._storage: Storage | None = None  # a line read, its data block awaited
        self._swallow = 0  # bytes of a refused data block still to discard
        self._retrieval: Iterator[bytes] | None = None  # a get between two of its items
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._held: list[bytes] | None = None  # replies waiting for the fsync
        self._seq = 0  # the store's last seq when this client last sent replies
        self._write_paused = False
        self._quit = False
        self._eof = False  # the client half-closed while replies were still to come
        self._closed = False
        # Bytes of requests buffered and not yet run, as counted in the server's total of all
        # clients' partial requests (public: the server reads it to pick whom to close).
        self.partial_request_bytes = 0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else ""
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        if not self.host.admits_memcache_client(self, host):
            self._closed = True
            transport.close()
            return
        self._admitted = True
        self.mc.curr_connections += 1
        self.mc.stats["total_connections"] += 1
        self._seq = self.mc.db.last_seq

    def connection_lost(self, exc: Exception | None) -> None:
        if self.partial_request_bytes:
            self.host.count_partial(self, 0)
        if self._admitted:
            self._admitted = False
            self.mc.curr_connections -= 1
            self.host.forget_memcache_client(self)
        self._closed = True
        self._buf = bytearray()
        self._retrieval = None

    def pause_writing(self) -> None:
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._held is None and not self._closed:
            self.transport.resume_reading()
            self._process()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._buf += data
        self._process()

    def eof_received(self) -> bool:
        """The client shut down its sending side: answer what it sent, then close."""
        if self._held is None and not self._write_paused and self._retrieval is None:
            return False  # every reply is written already: close our side too
        self._eof = True
        return True  # keep the transport open for the replies still to come

    def shutdown(self) -> None:
        """The server is stopping: send what is ready, then close."""
        if not self._closed:
            self._send()
            self._closed = True
            self.transport.close()

    def synced(self, failure: bytes | None) -> None:
        """The fsync the held replies waited for is done (``failure``: a RESP error line)."""
        held, self._held = self._held, None
        if self._closed or held is None:
            return
        if failure is not None:
            message = failure[1:].strip().removeprefix(b"ERR ")
            self.transport.write(b"SERVER_ERROR " + message + b"\r\n")
            self.close()
            return
        self.transport.writelines(held)
        if self._quit:
            self.close()
            return
        if not self._write_paused:
            self.transport.resume_reading()
            self._process()

    def drop_partial(self) -> None:
        """Closed to keep the server's total of partial requests within its limit."""
        log.warning("closing the memcached connection from %s: its partial request of %d "
                    "bytes pushed the server's total of partial requests over its limit",
                    self.peer, self.partial_request_bytes)
        self.host.count_partial(self, 0)
        self._buf = bytearray()
        self._pos = 0
        if not self._closed:
            self.transport.write(b"SERVER_ERROR out of memory reading request\r\n")
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.transport.close()

    # -- the request loop ----------------------------------------------------------------

    def _process(self) -> None:
        """Run what the buffer holds, a chunk of replies at a time."""
        try:
            while not (self._closed or self._write_paused or self._held is not None):
                waiting = self._run()
                if len(self._buf) or self.partial_request_bytes:
                    self.host.count_partial(self, len(self._buf))  # may close this one
                if not self._send():
                    return  # held for the fsync: synced() goes on
                if self._quit or (waiting and self._eof):
                    self.close()
                    return
                if waiting:
                    return
        except Exception:
            # A bug: close this connection with a word instead of letting the exception reach
            # the event loop (which would leave the connection open and stuck).
            log.error("the memcached connection from %s failed", self.peer, exc_info=True)
            if not self._closed:
                self.transport.write(b"SERVER_ERROR internal error\r\n")
                self.close()

    def _run(self) -> bool:
        """Run requests until the input is used up (True) or a chunk of replies is ready."""
        self.host.before_memcache_commands()
        buf = self._buf
        try:
            while self._out_bytes < OUTPUT_CHUNK and not self._quit:
                if self._retrieval is not None:
                    self._continue_retrieval()
                    continue
                if self._swallow:
                    n = min(self._swallow, len(buf) - self._pos)
                    self._pos += n
                    self._swallow -= n
                    if self._swallow:
                        return True
                    continue
                if self._storage is not None:
                    need = self._storage.length + 2
                    if len(buf) - self._pos < need:
                        return True
                    block = bytes(buf[self._pos:self._pos + need])
                    self._pos += need
                    req, self._storage = self._storage, None
                    self._emit(self.mc.store(req, block))
                    continue
                end = buf.find(b"\n", self._pos)
                if end < 0:
                    self._check_partial_line()
                    return True
                line = bytes(buf[self._pos:end])
                self._pos = end + 1
                self._command(line)
            return False
        finally:
            if self._pos:
                del buf[:self._pos]
                self._pos = 0

    def _check_partial_line(self) -> None:
        pending = len(self._buf) - self._pos
        if pending <= text.MAX_LINE:
            return
        head = bytes(self._buf[self._pos:self._pos + 105]).lstrip(b" ")
        is_get = head.startswith((b"get ", b"gets "))
        if not is_get or pending > text.MAX_GET_LINE:
            log.debug("closing the memcached connection from %s: a request line of over %d "
                      "bytes", self.peer, pending)
            self._buf.clear()
            self._pos = 0
            self._quit = True

    def _command(self, line: bytes) -> None:
        words = text.tokens(line)
        if not words:
            self._emit(text.ERROR)
            return
        name = words[0]
        if name in STORAGE_COMMANDS:
            parsed = self.mc.parse_storage(words)
            if isinstance(parsed, Refusal):
                self._emit(parsed.reply)
                self._swallow = parsed.swallow
            else:
                self._storage = parsed
        elif name in _GETS:
            self._start_retrieval(words)
        elif name == _QUIT:
            self._quit = True
        else:
            reply = self.mc.run(words)
            self._emit(text.ERROR if reply is None else reply)

    def _start_retrieval(self, words: list[bytes]) -> None:
        name = words[0]
        if name in (b"get", b"gets"):
            if len(words) < 2:
                self._emit(text.ERROR)
            elif len(words) == 2:  # one key, one item at most: no need to stop half way
                self._emit(self.mc.retrieve_one(words[1], name == b"gets"))
            else:
                self._retrieval = self.mc.retrieve(words[1:], name == b"gets")
            return
        if len(words) < 2:
            self._emit(text.ERROR)
            return
        exptime = text.parse_i64(words[1])
        if exptime is None:
            self._emit(text.BAD_EXPTIME)
            return
        self._retrieval = self.mc.retrieve(words[2:], name == b"gats", exptime)

    def _continue_retrieval(self) -> None:
        retrieval = self._retrieval
        assert retrieval is not None  # _run checked
        for chunk in retrieval:
            self._emit(chunk)
            if self._out_bytes >= OUTPUT_CHUNK:
                return  # the rest after this chunk is written (and read)
        self._retrieval = None

    def _emit(self, reply: bytes) -> None:
        if reply:
            self._out.append(reply)
            self._out_bytes += len(reply)

    def _send(self) -> bool:
        """Write the replies gathered; False if they wait for the fsync instead."""
        out = self._out
        if not out:
            return True
        self._out = []
        self._out_bytes = 0
        if self._closed:
            return True
        seq = self.mc.db.last_seq
        wrote = seq != self._seq
        self._seq = seq
        if self.host.sync_always and (wrote or self.host.writes_await_fsync()):
            self._held = out
            self.transport.pause_reading()
            self.host.hold_for_fsync(self)
            return False
        self.transport.writelines(out)
        return True


def check_bind(hosts: tuple[str, ...], allow_remote: bool) -> None:
    """Raise ValueError if the memcached port would listen beyond loopback unasked: the text
    protocol has no authentication, so --requirepass cannot protect it."""
    exposed = [h for h in hosts if not protected.is_loopback(h)]
    if exposed and not allow_remote:
        raise ValueError(
            f"refusing to serve the memcached protocol on {', '.join(exposed)}: it has no "
            "authentication (--requirepass does not apply to it), so anyone who can reach "
            "the port can read and change every key; bind a loopback address, or pass "
            "--memcached-allow-remote to accept that")
