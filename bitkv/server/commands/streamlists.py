"""BITKV.LPUT and BITKV.LDEL: a list element by position, for the replication stream only.

A list's elements are stored at positions (structures/encoding.py) that no Redis command can
name, so the stream (server/backlog.py ``encode_collection``) carries a list element's record
as one of these two commands, and a bitkv replica applies it through them. Only the master
link may run them: to a client they would expose the storage layout, not Redis's semantics.
A Redis replica of a bitkv master refuses them (unknown command): it gets no lists
(docs/replication.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...structures import ListIndex
from ...structures.encoding import pack_position
from ..protocol import ONE, ZERO
from .registry import F_WRITE, CommandError, command, to_int

if TYPE_CHECKING:
    from ..app import Connection


def _from_master(c: Connection, name: str) -> None:
    if c.client_type != "master":
        raise CommandError(f"ERR {name} is only accepted from the master link (the replication "
                           f"stream of a bitkv master)")


def _position(text: bytes) -> bytes:
    pos = to_int(text, "ERR list position is not an integer or out of range")
    return pack_position(pos)


@command("bitkv.lput", 4, F_WRITE, (1, 1, 1), group="list",
         summary="Put a list element at a storage position (replication stream only)",
         since="7.0.0")
def cmd_bitkv_lput(c: Connection, args: list[bytes]) -> bytes:
    _from_master(c, "BITKV.LPUT")
    sub = _position(args[2])
    with c.structures.edit(args[1], ListIndex) as e:
        e.put(sub, args[3])
    return ONE


@command("bitkv.ldel", 3, F_WRITE, (1, 1, 1), group="list",
         summary="Delete the list element at a storage position (replication stream only)",
         since="7.0.0")
def cmd_bitkv_ldel(c: Connection, args: list[bytes]) -> bytes:
    _from_master(c, "BITKV.LDEL")
    sub = _position(args[2])
    with c.structures.edit(args[1], ListIndex) as e:
        if not e.collection.has(sub):
            return ZERO
        e.delete(sub)
    return ONE
