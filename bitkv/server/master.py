"""The master side of replication (see replication.py). Work in progress: filled in next."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .app import Server


class Master:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.replid = "0" * 40
        self.offset = 0
        self.sync_full = 0
        self.sync_partial_ok = 0
        self.sync_partial_err = 0

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def info_fields(self) -> list[tuple[str, object]]:
        return [("connected_slaves", 0), ("master_replid", self.replid),
                ("master_repl_offset", self.offset)]

    def stats_fields(self) -> list[tuple[str, object]]:
        return [("sync_full", self.sync_full), ("sync_partial_ok", self.sync_partial_ok),
                ("sync_partial_err", self.sync_partial_err)]
