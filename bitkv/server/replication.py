"""The server's replication role: a master with replicas, or a replica of a master.

One owner for the role and what INFO/ROLE say of it. The two sides live in their own modules:

* :mod:`bitkv.server.master` -- the master side: the backlog (the store's log read back as
  Redis's replication stream, offsets persisted so PSYNC continues after a restart), full
  resyncs as RDB snapshots, the replicas attached, WAIT.
* :mod:`bitkv.server.replica` -- the replica side: the link to a master (handshake, RDB load,
  applying the stream, ACKs, reconnecting), and the replica state persisted in the store dir.

Every bitkv server is a master for whoever attaches (a replica can have replicas of its own,
as in Redis); ``link`` is set while it replicates from a master.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .master import Master

if TYPE_CHECKING:
    from .app import Server
    from .replica import ReplicaLink


class Replication:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.master = Master(server)
        self.link: ReplicaLink | None = None

    @property
    def role(self) -> str:
        """"master" or "slave" (Redis's words, as INFO and ROLE report them)."""
        return "master" if self.link is None else "slave"

    @property
    def refuses_client_writes(self) -> bool:
        """A replica answers writes from ordinary clients with READONLY."""
        return self.link is not None

    async def start(self) -> None:
        await self.master.start()

    async def stop(self) -> None:
        if self.link is not None:
            await self.link.stop()
        await self.master.stop()

    def info_fields(self) -> list[tuple[str, object]]:
        """INFO replication, in Redis's field order."""
        fields: list[tuple[str, object]] = [("role", self.role)]
        if self.link is not None:
            fields.extend(self.link.info_fields())
        fields.extend(self.master.info_fields())
        return fields

    def stats_fields(self) -> list[tuple[str, object]]:
        """The replication counters of INFO stats (sync_full, sync_partial_ok, ...)."""
        return self.master.stats_fields()
