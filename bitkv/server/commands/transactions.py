"""Transactions: MULTI, DISCARD, EXEC. Queueing is done by the connection (app.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import OK, array
from .registry import F_FAST, F_TXCTL, F_WRITE, CommandError, command

if TYPE_CHECKING:
    from ..app import Connection


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
    return OK


@command("exec", 1, F_TXCTL | F_WRITE, group="transactions",
         summary="Execute all commands issued after MULTI")
def cmd_exec(c: Connection, args: list[bytes]) -> bytes:
    if c.multi is None:
        raise CommandError("ERR EXEC without MULTI")
    queued, dirty = c.multi, c.multi_dirty
    c.multi = None
    if dirty:
        raise CommandError("EXECABORT Transaction discarded because of previous errors.")
    return array([c.call(spec, cmd) for spec, cmd in queued])
