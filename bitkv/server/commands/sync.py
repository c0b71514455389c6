"""The master's replication commands: PSYNC, SYNC, REPLCONF, WAIT (server/master.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import OK, integer
from .registry import F_ADMIN, F_ASYNC, F_NOMULTI, CommandError, command, to_int

if TYPE_CHECKING:
    from ..app import Connection


@command("psync", -3, F_ADMIN | F_NOMULTI | F_ASYNC, group="server",
         summary="An internal command used in replication", since="2.8.0")
async def cmd_psync(c: Connection, args: list[bytes]) -> bytes:
    if c.replica_peer is not None:
        return b""  # already a replica: Redis ignores it too
    offset = to_int(args[2])
    return await c.control.replication.master.psync(c, args[1], offset)


@command("sync", 1, F_ADMIN | F_NOMULTI | F_ASYNC, group="server",
         summary="An internal command used in replication")
async def cmd_sync(c: Connection, args: list[bytes]) -> bytes:
    if c.replica_peer is not None:
        return b""
    return await c.control.replication.master.psync(c, b"?", -1, legacy=True)


@command("replconf", -1, F_ADMIN | F_NOMULTI, group="server",
         summary="An internal command for configuring the replication stream",
         since="3.0.0")
def cmd_replconf(c: Connection, args: list[bytes]) -> bytes:
    if (len(args) - 1) % 2:
        raise CommandError("ERR syntax error")
    for i in range(1, len(args), 2):
        option, value = args[i].lower(), args[i + 1]
        if option == b"listening-port":
            port = to_int(value)
            if not 0 <= port <= 65535:
                raise CommandError("ERR value is out of range")
            c.repl_listening_port = port
        elif option == b"ip-address":
            if len(value) > 46:
                raise CommandError("ERR IP address too long")
            c.repl_ip_address = value.decode("ascii", "replace")
        elif option in (b"capa", b"rdb-only", b"rdb-filter-only"):
            pass  # eof and psync2: we send a length-prefixed RDB, which every replica reads
        elif option in (b"ack", b"fack", b"getack"):
            return b""  # from a replica before PSYNC: nothing to do, no reply (as Redis)
        else:
            raise CommandError("ERR Unrecognized REPLCONF option: "
                               + args[i].decode("utf-8", "replace"))
    return OK


@command("wait", 3, F_ASYNC | F_NOMULTI, group="generic",
         summary="Wait for the synchronous replication of all the write commands sent in the "
                 "context of the current connection", since="3.0.0")
async def cmd_wait(c: Connection, args: list[bytes]) -> bytes:
    numreplicas = to_int(args[1])
    timeout = to_int(args[2], "ERR timeout is not an integer or out of range")
    if timeout < 0:
        raise CommandError("ERR timeout is negative")
    replication = c.control.replication
    if replication.link is not None:
        raise CommandError("ERR WAIT cannot be used with replica instances. Please also note "
                           "that since Redis 4.0 if a replica is configured to be writable "
                           "(which is not the default) writes to replicas are just local and "
                           "are not propagated.")
    return integer(await replication.master.wait(numreplicas, timeout))
