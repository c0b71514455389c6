"""Clients blocked on keys (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP): who waits for which
key, in which order, and serving them when a key gets something to take.

The server is one event loop: a blocking command is an ``F_ASYNC`` handler whose coroutine
waits on a future (the connection stops reading meanwhile, so the client's next commands wait
behind it, as in Redis). A command that gives a key something (a push) calls
:func:`signal_ready`; once that command is done (or, inside MULTI, once its EXEC is done) the
clients blocked on the key are served in the order they blocked: each one's ``serve``
callback takes what it wants and writes it (one batch), its reply resolves its future. A
served ``serve`` may itself signal another key (BLMOVE's destination), which is served next.
A blocked client is answered ``timeout_reply`` when its timeout passes; one that has gone
(closed, killed) is dropped without being served, so no element goes to a closed socket.
Every ``HANGUP_CHECK_S`` a blocked client also looks at its keys itself, so a key filled by a
command that does not call :func:`signal_ready` (RENAME of another module) still serves it.

A command that must not block (queued in MULTI: :func:`bitkv.server.commands.transactions.
in_exec`) answers as on timeout, at once; the type modules check that before calling
:func:`block`.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import weakref
from collections import deque
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..protocol import error
from .registry import CommandError
from .transactions import after_exec, in_exec

if TYPE_CHECKING:
    from ...structures import Collection, Structures
    from ..app import Connection

# How often a blocked client's connection is checked for a hang-up (its reading is paused
# while it waits, so the event loop does not see the client close), and its keys for
# something to take that no push signalled.
HANGUP_CHECK_S = 0.5

NULL_ARRAY2 = b"*-1\r\n"
NULL3 = b"_\r\n"
UNBLOCKED = error("UNBLOCKED client unblocked via CLIENT UNBLOCK")

Serve = Callable[[bytes], "bytes | None"]
"""``serve(key)``: take what the blocked command wants from ``key`` and return its reply, or
None if ``key`` has nothing for it (it then stays blocked)."""


class Waiter:
    """One blocked command."""

    __slots__ = ("conn", "future", "keys", "serve", "timeout_reply")

    def __init__(self, conn: Connection, keys: list[bytes], serve: Serve,
                 future: asyncio.Future[bytes], timeout_reply: bytes) -> None:
        self.conn = conn
        self.keys = keys
        self.serve = serve
        self.future = future
        self.timeout_reply = timeout_reply


class Blocked:
    """The blocked clients of one server (one per :class:`Structures`)."""

    def __init__(self) -> None:
        self.by_key: dict[bytes, deque[Waiter]] = {}
        self.waiters: dict[Waiter, None] = {}
        self.ready: deque[bytes] = deque()
        self.serving = False
        self.scheduled = False

    def add(self, w: Waiter) -> None:
        self.waiters[w] = None
        for key in dict.fromkeys(w.keys):  # BLPOP k k: one place in k's queue
            self.by_key.setdefault(key, deque()).append(w)

    def remove(self, w: Waiter) -> None:
        if w not in self.waiters:
            return  # served, or gone, already
        del self.waiters[w]
        for key in dict.fromkeys(w.keys):
            queue = self.by_key.get(key)
            if queue is None:
                continue
            try:
                queue.remove(w)
            except ValueError:
                pass
            if not queue:
                del self.by_key[key]

    def serve(self) -> None:
        """Serve the clients blocked on the keys signalled ready, in the order they blocked."""
        self.scheduled = False
        if self.serving:
            return  # a serve callback signalled a key: the loop below takes it
        self.serving = True
        try:
            while self.ready:
                key = self.ready.popleft()
                queue = self.by_key.get(key)
                while queue:
                    w = queue[0]
                    if w.future.done() or hung_up(w.conn):
                        self.remove(w)
                        continue
                    try:
                        reply = w.serve(key)
                    except CommandError as exc:
                        reply = exc.reply
                    except Exception as exc:  # WRONGTYPE at BLMOVE's destination...
                        reply = w.conn.error_reply(exc)
                    if reply is None:
                        break  # nothing (left) in the key for the first in line
                    self.remove(w)
                    w.future.set_result(reply)
                    queue = self.by_key.get(key)
        finally:
            self.serving = False


_BLOCKED: weakref.WeakKeyDictionary[Structures, Blocked] = weakref.WeakKeyDictionary()


def _blocked(c: Connection) -> Blocked:
    b = _BLOCKED.get(c.structures)
    if b is None:
        b = _BLOCKED[c.structures] = Blocked()
    return b


def blocked_clients(c: Connection) -> int:
    """How many clients of ``c``'s server are blocked now (INFO's ``blocked_clients``)."""
    b = _BLOCKED.get(c.structures)
    return 0 if b is None else len(b.waiters)


def unblock(c: Connection, client_id: int, with_error: bool) -> bool:
    """CLIENT UNBLOCK: answer client ``client_id``'s blocked command as on timeout, or with
    Redis's UNBLOCKED error; False if that client is not blocked."""
    b = _BLOCKED.get(c.structures)
    if b is None:
        return False
    for w in b.waiters:
        if w.conn.client_id == client_id and not w.future.done():
            b.remove(w)
            w.future.set_result(UNBLOCKED if with_error else w.timeout_reply)
            return True
    return False


def signal_ready(c: Connection, key: bytes) -> None:
    """``c``'s command gave ``key`` something a blocked client may take: serve them once the
    command is done (the caller calls this last), or once ``c``'s EXEC is."""
    b = _BLOCKED.get(c.structures)
    if b is None or key not in b.by_key:
        return
    b.ready.append(key)
    if b.serving:
        return
    if not b.scheduled:
        b.scheduled = True
        after_exec(c, b.serve)


def hung_up(c: Connection) -> bool:
    """Whether ``c``'s client has closed or been closed (its reading may be paused, so the
    socket is peeked at: end of file there means the client is gone)."""
    transport = c.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with sock.dup() as s:  # a duplicate: closing it leaves the client's socket open
            peeked: bytes = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return peeked == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


async def block(c: Connection, keys: list[bytes], serve: Serve, timeout_ms: int,
                timeout_reply: bytes) -> bytes:
    """Wait until ``serve`` answers for one of ``keys`` (after another client's push), or
    ``timeout_ms`` passes (0: no timeout) and answer ``timeout_reply``."""
    b = _blocked(c)
    loop = asyncio.get_running_loop()
    w = Waiter(c, keys, serve, loop.create_future(), timeout_reply)
    b.add(w)
    deadline = loop.time() + timeout_ms / 1000 if timeout_ms else None
    try:
        while not w.future.done():
            wait = HANGUP_CHECK_S
            if deadline is not None:
                wait = min(wait, deadline - loop.time())
                if wait <= 0:
                    break
            await asyncio.wait((w.future,), timeout=wait)
            if w.future.done() or hung_up(c) or c.control.closing:
                break  # (shutdown waits for every command in progress: this one ends)
            # A key filled by a command that signals nothing (RENAME, COPY... of another
            # module) is served here, at the latest HANGUP_CHECK_S after it was filled.
            b.ready.extend(w.keys)
            b.serve()
        if w.future.done():
            return w.future.result()
        return timeout_reply
    finally:
        b.remove(w)


_FLOAT = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def timeout_ms(arg: bytes) -> int:
    """A blocking command's timeout (getTimeoutFromObjectOrReply): seconds as a float,
    rounded up to the millisecond; 0 is no timeout."""
    if _FLOAT.fullmatch(arg) is None:
        raise CommandError("ERR timeout is not a float or out of range")
    seconds = float(arg)
    if math.isinf(seconds):
        raise CommandError("ERR timeout is not a float or out of range")
    ms = math.ceil(seconds * 1000)
    if ms < 0:
        raise CommandError("ERR timeout is negative")
    return ms


async def _now(reply: bytes) -> bytes:
    return reply


def answer_or_block(cls: type[Collection], c: Connection, keys: list[bytes], attempt: Serve,
                    timeout: int, no_block: bytes) -> bytes | Coroutine[Any, Any, bytes]:
    """A blocking command's handler result (its command is ``F_ASYNC``): ``attempt`` on each
    key in order (it raises WRONGTYPE for a key of another type, as Redis checks them); the
    first answer is the reply, and if none answers the client blocks (:func:`block`) until a
    key holding a ``cls`` collection serves it, or ``timeout`` ms pass (0: never), answered
    with a null array. Inside EXEC it must answer at once: ``no_block`` when nothing is
    there."""
    for key in keys:
        reply = attempt(key)
        if reply is not None:
            return reply if in_exec(c) else _now(reply)
    if in_exec(c):
        return no_block

    def serve(key: bytes) -> bytes | None:
        # a key a later command made a string or another type (or deleted) leaves the
        # client blocked, as in Redis
        if not isinstance(c.structures.collection(key), cls):
            return None
        return attempt(key)

    return block(c, keys, serve, timeout, NULL3 if c.resp3 else NULL_ARRAY2)
