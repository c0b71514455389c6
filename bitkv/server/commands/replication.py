"""Replication commands of the replica role: REPLICAOF, SLAVEOF, ROLE (server/replica.py).

The master side's commands (PSYNC, SYNC, REPLCONF, WAIT) are in :mod:`.sync`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import OK
from .registry import F_ADMIN, F_FAST, CommandError, command

if TYPE_CHECKING:
    from ..app import Connection


@command("replicaof", 3, F_ADMIN, group="server",
         summary="Make the server a replica of another instance, or promote it as master",
         since="5.0.0")
def cmd_replicaof(c: Connection, args: list[bytes]) -> bytes:
    replication = c.control.replication
    if args[1].lower() == b"no" and args[2].lower() == b"one":
        replication.unset_master()
        return OK
    if c.replica_peer is not None:
        raise CommandError("ERR Command is not valid when client is a replica.")
    port_text = args[2]
    if not port_text.isdigit() or len(port_text) > 5 or not 0 <= int(port_text) <= 65535:
        raise CommandError("ERR Invalid master port")
    host = args[1].decode("utf-8", "replace")
    if not replication.set_master(host, int(port_text)):
        return b"+OK Already connected to specified master\r\n"
    return OK


@command("slaveof", 3, F_ADMIN, group="server",
         summary="Make the server a replica of another instance, or promote it as master")
def cmd_slaveof(c: Connection, args: list[bytes]) -> bytes:
    return cmd_replicaof(c, args)


@command("role", 1, F_FAST, group="server",
         summary="Return the role of the instance in the context of replication",
         since="2.8.12")
def cmd_role(c: Connection, args: list[bytes]) -> bytes:
    return c.control.replication.role_reply()
