"""What command handlers may ask of the server: the ``ServerControl`` protocol.

Handlers reach the server only through ``conn.control``, typed as this protocol, never
through the :class:`~bitkv.server.app.Server` object itself: the list below is the whole
surface the command table depends on, so the server's internals (group commit, partial
request accounting, throttles, threads) can change without touching a handler. ``Server``
implements it structurally; mypy checks that when app.py assigns ``Connection.control``.

The store is not here: a handler uses ``conn.db``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .app import ServerConfig
    from .commands.keyspace import ScanIndex
    from .metrics import Metrics
    from .protocol import Limits
    from .pubsub import PubSub
    from .replication import Replication


class ClientView(Protocol):
    """A connected client as CLIENT LIST and CLIENT KILL see it (``app.Connection``)."""

    @property
    def client_id(self) -> int: ...

    @property
    def peer(self) -> str: ...  # "ip:port" of the client

    @property
    def local(self) -> str: ...  # "ip:port" it connected to

    @property
    def created(self) -> float: ...  # time.monotonic() when it connected

    @property
    def client_type(self) -> str: ...  # clients.py: normal, replica, master or pubsub

    def describe(self) -> str: ...

    def kill(self) -> bool:
        """Close it now (CLIENT KILL); False if it was closed already."""


class ServerControl(Protocol):
    # -- configuration (CONFIG GET, AUTH, size limits); fixed once the server listens ----------

    @property
    def config(self) -> ServerConfig: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def requirepass(self) -> bytes | None: ...

    @property
    def port(self) -> int: ...  # the bound port (differs from config.port with port 0)

    @property
    def max_partial_bytes(self) -> int: ...

    # -- replication: the role, the replicas, the link to a master (replication.py) ----------

    @property
    def replication(self) -> Replication: ...

    # -- Pub/Sub: every subscription, and PUBLISH (pubsub.py) -------------------------------

    @property
    def pubsub(self) -> PubSub: ...

    # -- facts and counters for INFO ---------------------------------------------------------

    @property
    def run_id(self) -> str: ...

    @property
    def started_at(self) -> float: ...

    @property
    def loop_name(self) -> str: ...

    @property
    def use_hiredis(self) -> bool: ...

    @property
    def parser_kind(self) -> str: ...

    @property
    def clients(self) -> Collection[ClientView]: ...

    @property
    def total_connections(self) -> int: ...

    @property
    def metrics(self) -> Metrics: ...  # INFO commandstats, errorstats, latencystats, hits

    @property
    def total_commands(self) -> int: ...

    @property
    def rejected_connections(self) -> int: ...

    @property
    def writes_since_save(self) -> int: ...

    @property
    def last_save_time(self) -> float: ...

    @property
    def background_sync_running(self) -> bool: ...

    @property
    def last_sync_error(self) -> str | None: ...

    @property
    def compaction_running(self) -> bool: ...

    @property
    def last_compaction_error(self) -> str | None: ...

    # -- SCAN's cursor index, rebuilt when the keyspace changed (write_version moved) --------

    @property
    def write_version(self) -> int: ...

    scan_index: ScanIndex | None

    @property
    def closing(self) -> bool: ...  # shutting down: blocked clients stop waiting (blocking.py)

    # -- actions -----------------------------------------------------------------------------

    def reset_stats(self) -> None:
        """CONFIG RESETSTAT."""

    async def sync_store(self) -> None:
        """SAVE: fsync every write so far (in a worker thread)."""

    def start_background_sync(self) -> bool:
        """BGSAVE; False if one is already running."""

    def start_compaction(self) -> bool:
        """BGREWRITEAOF; False if one is already running (or the server is closing)."""

    def request_shutdown(self) -> None:
        """SHUTDOWN: stop once the current loop iteration is done."""
