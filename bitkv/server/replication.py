"""The server's replication role: a master with replicas, or a replica of a master.

One owner for the role and what INFO/ROLE say of it. The two sides live in their own modules:

* :mod:`bitkv.server.master` -- the master side: the backlog (the store's log read back as
  Redis's replication stream, offsets persisted so PSYNC continues after a restart), full
  resyncs as RDB snapshots, the replicas attached, WAIT.
* :mod:`bitkv.server.replica` -- the replica side: the link to a master (handshake, RDB load,
  applying the stream, ACKs, reconnecting); :mod:`bitkv.server.replica_state` -- the replica
  state persisted in the store dir (resume point, and the role CONFIG REWRITE persists).

Every bitkv server is a master for whoever attaches (a replica can have replicas of its own,
as in Redis); ``link`` is set while it replicates from a master.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import replica_state
from .master import Master
from .protocol import array, bulk, integer
from .replica import ReplicaLink, ReplicaSettings
from .replica_state import ReplicaState, ResumePoint

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("bitkv.server")


def parse_hostport(text: str) -> tuple[str, int]:
    """``host:port`` or ``host port`` (``[v6]:port`` too) as (host, port); ValueError else."""
    text = text.strip()
    if " " in text:
        host, _, port_text = text.rpartition(" ")
    else:
        host, _, port_text = text.rpartition(":")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port_text)


def _yes_no(value: str) -> bool:
    v = value.lower()
    if v not in ("yes", "no"):
        raise ValueError("argument must be 'yes' or 'no'")
    return v == "yes"


def _int_in(value: str, low: int, high: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError("argument couldn't be parsed into an integer") from None
    if not low <= n <= high:
        raise ValueError(f"argument must be between {low} and {high} inclusive")
    return n


# CONFIG GET/SET names of the replica settings (Redis's, with their old "slave" aliases).
_ALIASES = {"slave-read-only": "replica-read-only", "slave-priority": "replica-priority",
            "slave-announce-ip": "replica-announce-ip",
            "slave-announce-port": "replica-announce-port"}
REWRITTEN = ("masterauth", "masteruser", "replica-read-only", "replica-priority",
             "replica-announce-ip", "replica-announce-port", "repl-timeout")


class Replication:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.master = Master(server)
        self.link: ReplicaLink | None = None
        self.settings = ReplicaSettings()
        self.state = ReplicaState()
        self._tasks: set[asyncio.Task[None]] = set()  # old links stopping

    @property
    def role(self) -> str:
        """"master" or "slave" (Redis's words, as INFO and ROLE report them)."""
        return "master" if self.link is None else "slave"

    @property
    def refuses_client_writes(self) -> bool:
        """A replica answers writes from ordinary clients with READONLY
        (unless replica-read-only is off)."""
        return self.link is not None and self.settings.read_only

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        await self.master.start()
        config = self.server.config
        loop = asyncio.get_running_loop()
        self.state = await loop.run_in_executor(None, replica_state.load, config.dir)
        for name, value in self.state.settings.items():  # what CONFIG REWRITE persisted
            try:
                self.config_set(name, value)
            except ValueError as exc:
                log.error("replication: ignoring the persisted setting %s (%s)", name, exc)
        self._apply_config_options()
        target = None
        if config.replicaof:
            target = parse_hostport(config.replicaof)  # --replicaof wins
        elif self.state.replicaof is not None:
            target = self.state.replicaof
            log.info("replication: the role persisted by CONFIG REWRITE: replica of %s:%d",
                     *target)
        if target is not None:
            self._start_link(*target, self.state.resume)
        elif self.state.resume is not None:
            # A master takes writes: the data leaves the old master's history, so a later
            # REPLICAOF must not continue from the old resume point.
            self.state.resume = None
            await loop.run_in_executor(None, replica_state.save, config.dir, self.state)

    def starts_as_replica(self) -> bool:
        """Whether the server will start as a replica (``--replicaof``, or a role persisted by
        CONFIG REWRITE); asked before the store is opened."""
        config = self.server.config
        if config.replicaof:
            return True
        return replica_state.load(config.dir).replicaof is not None

    def _apply_config_options(self) -> None:
        """``bitkv serve``'s replica options (given ones win over persisted settings)."""
        c = self.server.config
        s = self.settings
        if c.masterauth is not None:
            s.masterauth = c.masterauth or None
        if c.masteruser is not None:
            s.masteruser = c.masteruser or None
        if c.replica_read_only is not None:
            s.read_only = c.replica_read_only
        if c.replica_priority is not None:
            s.priority = c.replica_priority
        if c.replica_announce_ip is not None:
            s.announce_ip = c.replica_announce_ip
        if c.replica_announce_port is not None:
            s.announce_port = c.replica_announce_port
        if c.repl_timeout is not None:
            s.repl_timeout = c.repl_timeout
        s.master_tls = c.master_tls
        s.master_tls_ca_cert = c.master_tls_ca_cert

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self.link is not None:
            await self.link.stop(clean=True)
        await self.master.stop()

    # -- REPLICAOF ---------------------------------------------------------------------------

    def _start_link(self, host: str, port: int, resume: ResumePoint | None,
                    after: asyncio.Task[None] | None = None) -> None:
        if resume is not None and not resume.clean:
            log.warning("replication: the previous run did not stop cleanly (the store may "
                        "hold writes past offset %d or lack some before it, and the stream "
                        "is not idempotent): a full resync follows", resume.offset)
        # As a Redis replica, never expire keys on our own: the master's DELs do.
        self.server.db.hold_expired = True
        self.link = ReplicaLink(self.server, host, port, self.settings, resume, self.state)
        self.link.start(after)
        self.server.refresh_gates()

    def set_master(self, host: str, port: int) -> bool:
        """REPLICAOF host port; False if already a replica of exactly that master. The link
        connects in the background (as in Redis, the reply does not wait for it)."""
        old = self.link
        if old is not None and old.host == host and old.port == port:
            log.info("REPLICAOF would result into synchronization with the master we are "
                     "already connected with. No operation performed.")
            return False
        resume = None
        after = None
        if old is not None:
            # Switching masters: the data is exactly at the old link's offset (this process
            # applied it), so ask the new master to continue from there, as Redis does. The
            # new link starts once the old one has stopped (a load in progress included).
            self.link = None
            after = self._spawn(old.stop(clean=False))
            if old.replid is not None and old.offset >= 0:
                resume = ResumePoint(host, port, old.replid, old.offset, True)
        log.info("REPLICAOF %s:%d enabled", host, port)
        self._start_link(host, port, resume, after)
        return True

    def unset_master(self) -> None:
        """REPLICAOF NO ONE: stop replicating; the data stays, the server takes writes."""
        old = self.link
        if old is None:
            return
        self.link = None
        self.server.db.hold_expired = False  # a master expires keys itself
        # Writes may follow at once, and the local data then leaves the old master's history:
        # the resume point goes before the first of them can be made.
        self.state.resume = None
        replica_state.save(self.server.config.dir, self.state)
        self.server.refresh_gates()
        log.info("MASTER MODE enabled (user request)")

        async def stop_old() -> None:
            await old.stop(clean=False)
            self.state.resume = None  # again: the old link may have written it meanwhile
            if self.link is None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, replica_state.save, self.server.config.dir,
                                           self.state)

        self._spawn(stop_old())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def note_applied(self) -> None:
        """The link applied writes from its master: pass them on to our own replicas."""
        self.master.note_write()

    # -- CONFIG ------------------------------------------------------------------------------

    def config_params(self) -> dict[str, str]:
        s = self.settings
        link = self.link
        params = {
            "replicaof": f"{link.host} {link.port}" if link is not None else "",
            "masterauth": s.masterauth or "",
            "masteruser": s.masteruser or "",
            "replica-read-only": "yes" if s.read_only else "no",
            "replica-priority": str(s.priority),
            "replica-announce-ip": s.announce_ip,
            "replica-announce-port": str(s.announce_port),
            "repl-timeout": f"{s.repl_timeout:g}",
        }
        for alias, name in _ALIASES.items():
            params[alias] = params[name]
        params["slaveof"] = params["replicaof"]
        return params

    def config_set(self, name: str, value: str) -> bool:
        """CONFIG SET of a replica setting; False if ``name`` is not one; ValueError if the
        value is bad."""
        name = _ALIASES.get(name.lower(), name.lower())
        s = self.settings
        if name == "masterauth":
            s.masterauth = value or None
        elif name == "masteruser":
            s.masteruser = value or None
        elif name == "replica-read-only":
            s.read_only = _yes_no(value)
            self.server.refresh_gates()
        elif name == "replica-priority":
            s.priority = _int_in(value, 0, 2**31 - 1)
        elif name == "replica-announce-ip":
            s.announce_ip = value
        elif name == "replica-announce-port":
            s.announce_port = _int_in(value, 0, 65535)
        elif name == "repl-timeout":
            s.repl_timeout = float(_int_in(value, 1, 2**31 - 1))
        else:
            return False
        return True

    def config_rewrite(self) -> None:
        """CONFIG REWRITE: persist the role and the replica settings (see replica_state)."""
        link = self.link
        self.state.replicaof = (link.host, link.port) if link is not None else None
        params = self.config_params()
        self.state.settings = {name: params[name] for name in REWRITTEN}
        replica_state.save(self.server.config.dir, self.state)

    # -- INFO, ROLE --------------------------------------------------------------------------

    def info_fields(self) -> list[tuple[str, object]]:
        """INFO replication, in Redis's field order (bitkv's own counters last)."""
        fields: list[tuple[str, object]] = [("role", self.role)]
        if self.link is not None:
            fields.extend(self.link.info_fields())
        fields.extend(self.master.info_fields())
        if self.link is not None:
            fields.extend(self.link.extra_info_fields())
        return fields

    def stats_fields(self) -> list[tuple[str, object]]:
        """The replication counters of INFO stats (sync_full, sync_partial_ok, ...)."""
        return self.master.stats_fields()

    def role_reply(self) -> bytes:
        """ROLE: ``master offset [[ip port offset] ...]`` or ``slave host port state
        offset``, as Redis 7.0 replies."""
        link = self.link
        if link is None:
            replicas = [array([bulk(ip.encode()), bulk(b"%d" % port), bulk(b"%d" % offset)])
                        for ip, port, offset in self.master.role_entries()]
            return array([bulk(b"master"), integer(self.master.offset), array(replicas)])
        return array([bulk(b"slave"), bulk(link.host.encode()), integer(link.port),
                      bulk(link.role_state().encode()),
                      integer(link.offset if link.state == "connected" else -1)])
