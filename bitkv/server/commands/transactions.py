"""Transactions: MULTI, DISCARD, EXEC, WATCH, UNWATCH. Queueing is done by the connection
(app.py).

WATCH is optimistic locking as Redis defines it: EXEC runs the queued commands only if no
watched key was written since it was watched (by any client, this one included), expired,
or was removed by FLUSHDB/FLUSHALL; otherwise EXEC answers a nil array and runs nothing.
Each watched key's :meth:`bitkv.Store.version` (its string's) and
:meth:`bitkv.structures.Structures.version` (its collection's) are recorded at WATCH and
compared at EXEC: every write gives the key a new version, an expired or deleted key has
none. The check and
the commands that follow it run in one handler on the event loop thread, so no other
client's command can come between them. Unlike Redis, a key that was absent at WATCH, then
created and deleted again before EXEC, does not abort the transaction (absent both times).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol import OK, array
from .registry import (
    F_DENYOOM,
    F_FAST,
    F_READONLY,
    F_TXCTL,
    F_WRITE,
    OOM,
    CommandError,
    command,
)

if TYPE_CHECKING:
    from ..app import Connection

NULL_ARRAY2 = b"*-1\r\n"  # EXEC aborted by WATCH: RESP2's null array
NULL3 = b"_\r\n"

# The connections running the commands their EXEC queued, each with what is to run once they
# have all run: a command queued in MULTI must not block (BLPOP answers at once, as Redis's
# CLIENT_DENY_BLOCKING), and clients blocked on a key the transaction pushed to are served
# after the EXEC, not in its middle (blocking.py), as Redis serves them.
_executing: dict[Connection, list[Callable[[], None]]] = {}


def in_exec(c: Connection) -> bool:
    """Whether ``c`` is running the commands of its EXEC now."""
    return c in _executing


def after_exec(c: Connection, fn: Callable[[], None]) -> None:
    """Run ``fn`` once ``c``'s EXEC has run its commands; at once if ``c`` is in no EXEC."""
    hooks = _executing.get(c)
    if hooks is None:
        fn()
    else:
        hooks.append(fn)


@command("multi", 1, F_TXCTL | F_FAST, group="transactions",
         summary="Start a transaction block")
def cmd_multi(c: Connection, args: list[bytes]) -> bytes:
    if c.multi is not None:
        raise CommandError("ERR MULTI calls can not be nested")
    c.multi = []
    c.multi_dirty = False
    return OK


@command("discard", 1, F_TXCTL | F_FAST, group="transactions",
         summary="Discard all commands issued after MULTI")
def cmd_discard(c: Connection, args: list[bytes]) -> bytes:
    if c.multi is None:
        raise CommandError("ERR DISCARD without MULTI")
    c.multi = None
    c.watched = None
    return OK


def key_version(c: Connection, key: bytes) -> tuple[int | None, int | None]:
    """What WATCH records of ``key`` and EXEC compares: the version of its string
    (:meth:`bitkv.Store.version`) and of its collection (:meth:`Structures.version`), each
    None when there is none."""
    try:
        string = c.db.version(key)
    except ValueError:  # a key no store can hold (empty): never present
        string = None
    structures = c.structures
    if structures.names and key in structures.names:
        return string, structures.version(key)
    return string, None


def _watched_key_changed(c: Connection) -> bool:
    watched = c.watched
    if not watched:
        return False
    return any(key_version(c, key) != seen for key, seen in watched.items())


@command("exec", 1, F_TXCTL | F_WRITE, group="transactions",
         summary="Execute all commands issued after MULTI")
def cmd_exec(c: Connection, args: list[bytes]) -> bytes:
    if c.multi is None:
        raise CommandError("ERR EXEC without MULTI")
    queued, dirty = c.multi, c.multi_dirty
    c.multi = None
    changed = _watched_key_changed(c)
    c.watched = None
    if any(spec[2] & F_DENYOOM for spec, _args in queued) and c.db.out_of_room:
        raise CommandError("EXECABORT Transaction discarded because of: " + OOM)
    if dirty:
        raise CommandError("EXECABORT Transaction discarded because of previous errors.")
    if changed:
        return NULL3 if c.resp3 else NULL_ARRAY2
    hooks: list[Callable[[], None]] = []
    _executing[c] = hooks
    try:
        replies = [c.call(spec, cmd) for spec, cmd in queued]
    finally:
        del _executing[c]
        for fn in hooks:
            fn()
    return array(replies)


@command("watch", -2, F_TXCTL | F_READONLY | F_FAST, (1, -1, 1), "transactions",
         "Watch the given keys to determine execution of the MULTI/EXEC block", "2.2.0")
def cmd_watch(c: Connection, args: list[bytes]) -> bytes:
    if c.multi is not None:  # run at once inside MULTI (F_TXCTL), to answer this
        raise CommandError("ERR WATCH inside MULTI is not allowed")
    watched = c.watched
    if watched is None:
        watched = c.watched = {}
    for key in args[1:]:
        if key not in watched:  # as Redis: watching a key again keeps the first version
            watched[key] = key_version(c, key)
    return OK


@command("unwatch", 1, F_FAST, group="transactions",
         summary="Forget about all watched keys", since="2.2.0")
def cmd_unwatch(c: Connection, args: list[bytes]) -> bytes:
    c.watched = None
    return OK
