"""Clients blocked on keys (BZPOPMIN, BZMPOP...): wait until another client writes a key.

A blocking command first tries to serve itself at once. When it cannot, its handler returns
a :class:`Blocked` reply: bytes (the timeout reply, which is what the command answers inside
MULTI/EXEC, where Redis never blocks) that can also be awaited (the server awaits an
``F_ASYNC`` handler's result outside a transaction). Awaiting it waits on the keys until a
writer calls :func:`signal` for one of them, then tries again: the key may have been
emptied, deleted or given another type meanwhile (a MULTI that adds and deletes it), in
which case the client goes on waiting, as in Redis. Clients woken by the same key try in the
order they blocked, so the first to block is served first.

One :class:`Waiters` per server (:func:`waiters`), keyed by its control object; handlers
run on the event loop thread, so nothing here is locked.
"""

from __future__ import annotations

import asyncio
import socket
import weakref
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Connection

POLL_S = 0.1  # how often a blocked client checks that its peer is still connected


class Waiters:
    """The futures of the clients blocked on each key, in blocking order."""

    __slots__ = ("blocked", "by_key")

    def __init__(self) -> None:
        self.by_key: dict[bytes, list[asyncio.Future[None]]] = {}
        self.blocked = 0  # clients blocked now (INFO's blocked_clients)

    def signal(self, key: bytes) -> None:
        """Wake every client blocked on ``key`` (each tries again after this command)."""
        futures = self.by_key.pop(key, None)
        if futures:
            for f in futures:
                if not f.done():
                    f.set_result(None)

    def add(self, keys: list[bytes], f: asyncio.Future[None]) -> None:
        """Block ``f`` on ``keys`` (each once), after the clients blocked before it."""
        for k in dict.fromkeys(keys):
            self.by_key.setdefault(k, []).append(f)

    def remove(self, keys: list[bytes], f: asyncio.Future[None]) -> None:
        """Unblock ``f`` (woken, timed out or gone)."""
        for k in dict.fromkeys(keys):
            lst = self.by_key.get(k)
            if lst is not None:
                try:
                    lst.remove(f)
                except ValueError:
                    pass
                if not lst:
                    del self.by_key[k]


_REGISTRY: weakref.WeakKeyDictionary[Any, Waiters] = weakref.WeakKeyDictionary()


def waiters(control: Any) -> Waiters:
    """The server's :class:`Waiters` (``control`` is a connection's ``control``)."""
    w = _REGISTRY.get(control)
    if w is None:
        w = _REGISTRY[control] = Waiters()
    return w


def signal(c: Connection, key: bytes) -> None:
    """A command of ``c`` wrote ``key``: wake the clients blocked on it."""
    w = _REGISTRY.get(c.control)
    if w is not None and w.by_key:
        w.signal(key)


def blocked_clients(control: Any) -> int:
    w = _REGISTRY.get(control)
    return 0 if w is None else w.blocked


def _peer_gone(c: Connection) -> bool:
    """Whether the client has closed its connection, or the server is shutting down (which
    waits for every running command: a blocked one must end). The transport does not read
    while the command blocks, so the socket is peeked (a duplicate of it: the transport's own
    is not to be used directly)."""
    if getattr(c.control, "closing", False):  # Server.closing: not in ServerControl
        return True
    transport = c.transport
    if transport is None or transport.is_closing():
        return True
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        with socket.socket(fileno=socket.dup(sock.fileno())) as dup:
            data = dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    return data == b""


class Blocked(bytes):
    """The reply of a blocking command that must wait: as bytes, ``timeout_reply`` (the
    answer inside MULTI/EXEC); awaited, the reply once ``attempt`` gives one (None: keep
    waiting) or ``timeout_reply`` after ``timeout_s`` (0: no limit)."""

    attempt: Callable[[], bytes | None]
    keys: list[bytes]
    timeout_s: float
    conn: Connection

    def __new__(cls, timeout_reply: bytes, c: Connection, keys: list[bytes],
                timeout_s: float, attempt: Callable[[], bytes | None]) -> Blocked:
        self = super().__new__(cls, timeout_reply)
        self.conn, self.keys, self.timeout_s, self.attempt = c, keys, timeout_s, attempt
        return self

    def __await__(self) -> Generator[Any, None, bytes]:
        return self._wait().__await__()

    async def _wait(self) -> bytes:
        c = self.conn
        loop = asyncio.get_running_loop()
        w = waiters(c.control)
        deadline = loop.time() + self.timeout_s if self.timeout_s > 0 else None
        w.blocked += 1
        try:
            while True:
                f: asyncio.Future[None] = loop.create_future()
                w.add(self.keys, f)
                try:
                    while not f.done():
                        left = POLL_S if deadline is None else min(POLL_S,
                                                                   deadline - loop.time())
                        if left <= 0:
                            return bytes(self)
                        try:
                            await asyncio.wait_for(asyncio.shield(f), left)
                        except TimeoutError:
                            if _peer_gone(c):
                                return bytes(self)
                finally:
                    w.remove(self.keys, f)
                if _peer_gone(c):
                    return bytes(self)  # nothing is taken for a client that has gone
                reply = self.attempt()
                if reply is not None:
                    return reply
        finally:
            w.blocked -= 1


class Ready(bytes):
    """A blocking command's reply given at once: awaiting it gives itself."""

    def __await__(self) -> Generator[Any, None, bytes]:
        return self._now().__await__()

    async def _now(self) -> bytes:
        return bytes(self)
