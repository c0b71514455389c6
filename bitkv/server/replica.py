"""The replica side of replication (see replication.py). Work in progress."""

from __future__ import annotations


class ReplicaLink:
    async def stop(self) -> None:
        pass

    def info_fields(self) -> list[tuple[str, object]]:
        return []
