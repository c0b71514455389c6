"""Server and administration commands: DBSIZE, FLUSHDB, TIME, SAVE, BGSAVE, BGREWRITEAOF,
SHUTDOWN, CONFIG, COMMAND, INFO. Everything they need from the server goes through
``conn.control`` (:class:`~bitkv.server.control.ServerControl`).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from typing import TYPE_CHECKING, Any

from ... import __version__ as BITKV_VERSION
from ...errors import Error
from ...eviction import parse_bytes
from ..glob import compile_glob
from ..protocol import (
    EMPTY_ARRAY,
    OK,
    array,
    bulk,
    bulk_array,
    encode_value,
    integer,
    map_reply,
    verbatim,
)
from ..pubsub import CHANNEL, PATTERN, SHARD
from . import blocking, tuning
from .registry import (
    F_ADMIN,
    F_ASYNC,
    F_DENYOOM,
    F_FAST,
    F_NOAUTH,
    F_NOMULTI,
    F_READONLY,
    F_WRITE,
    INFOS,
    REDIS_VERSION,
    SYNTAX,
    CommandError,
    CommandInfo,
    arity_error,
    command,
)

if TYPE_CHECKING:
    from ..app import Connection


@command("dbsize", 1, F_READONLY | F_FAST, group="server",
         summary="Return the number of keys in the selected database")
def cmd_dbsize(c: Connection, args: list[bytes]) -> bytes:
    # The store counts every record key; a collection is one key however many records it
    # has. Both counts are O(1) (amortised for the collections' records).
    structures = c.structures
    collections = len(structures)  # (expired ones deleted first)
    return integer(len(c.db) - structures.record_count() + collections)


def _flush_options(args: list[bytes]) -> None:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() not in (b"ASYNC", b"SYNC")):
        raise CommandError(SYNTAX)


@command("flushdb", -1, F_WRITE, group="server",
         summary="Remove all keys from the current database")
def cmd_flushdb(c: Connection, args: list[bytes]) -> bytes:
    _flush_options(args)
    db = c.db
    keys = list(db.keys())
    if keys:
        with db.batch() as b:  # one atomic write: all keys go, or (after a crash) none
            for k in keys:
                b.delete(k)
    c.structures.load()  # (the collections' records went with the rest: now none)
    return OK


@command("flushall", -1, F_WRITE, group="server", summary="Remove all keys from all databases")
def cmd_flushall(c: Connection, args: list[bytes]) -> bytes:
    return cmd_flushdb(c, args)


# -- server ----------------------------------------------------------------------------------

@command("time", 1, F_FAST, group="server", summary="Return the current server time", since="2.6.0")
def cmd_time(c: Connection, args: list[bytes]) -> bytes:
    now = time.time_ns() // 1000
    return bulk_array([b"%d" % (now // 1_000_000), b"%d" % (now % 1_000_000)])


@command("save", 1, F_ASYNC | F_NOMULTI | F_ADMIN, group="server",
         summary="Make every write so far durable (fsync)")
async def cmd_save(c: Connection, args: list[bytes]) -> bytes:
    await c.control.sync_store()
    return OK


@command("bgsave", -1, F_ADMIN, group="server",
         summary="Make every write so far durable (fsync), in the background")
def cmd_bgsave(c: Connection, args: list[bytes]) -> bytes:
    if len(args) > 2 or (len(args) == 2 and args[1].upper() != b"SCHEDULE"):
        raise CommandError(SYNTAX)
    if not c.control.start_background_sync():
        if len(args) == 2:
            return b"+Background saving scheduled\r\n"
        raise CommandError("ERR Background save already in progress")
    return b"+Background saving started\r\n"


@command("lastsave", 1, F_FAST, group="server",
         summary="Get the UNIX time stamp of the last successful save to disk")
def cmd_lastsave(c: Connection, args: list[bytes]) -> bytes:
    return integer(int(c.control.last_save_time))


@command("bgrewriteaof", 1, F_ADMIN, group="server",
         summary="Compact the store (rewrite it without dead records) in the background")
def cmd_bgrewriteaof(c: Connection, args: list[bytes]) -> bytes:
    if not c.control.start_compaction():
        raise CommandError("ERR Background append only file rewriting already in progress")
    return b"+Background append only file rewriting started\r\n"


@command("shutdown", -1, F_ADMIN | F_NOMULTI, group="server",
         summary="Sync the store and shut the server down")
def cmd_shutdown(c: Connection, args: list[bytes]) -> bytes:
    for opt in args[1:]:
        if opt.upper() not in (b"NOSAVE", b"SAVE", b"NOW", b"FORCE"):
            raise CommandError(SYNTAX)
    c.control.request_shutdown()
    c.close_after_reply()
    return b""  # Redis closes the connection without a reply


CACHE_PARAMS = ("maxmemory", "maxmemory-policy")


def _set_bound(c: Connection, name: str, value: str) -> None:
    """CONFIG SET maxmemory / maxmemory-policy: the store's bound (Store.set_max_bytes),
    recorded in the store, so it outlives the server (as CONFIG REWRITE would in Redis)."""
    db = c.db
    if name == "maxmemory":
        db.set_max_bytes(parse_bytes(value))
    else:
        db.set_max_bytes(db.max_bytes, value.lower())


def _config_params(c: Connection) -> dict[str, str]:
    control = c.control
    cfg = control.config
    limits = control.limits
    return {
        "bind": " ".join(cfg.hosts),
        "port": "0" if cfg.tls else str(control.port),
        "tls-port": str(control.port) if cfg.tls else "0",
        "tls-cert-file": cfg.tls_cert or "",
        "tls-key-file": cfg.tls_key or "",
        "tls-protocols": "TLSv1.2 TLSv1.3" if cfg.tls else "",
        "dir": os.path.abspath(cfg.dir),
        "requirepass": (control.requirepass or b"").decode("utf-8", "replace"),
        "appendfsync": {"always": "always", "interval": "everysec", "never": "no"}[cfg.sync],
        "bitkv-sync-interval": repr(cfg.sync_interval),
        "databases": "1",
        "maxclients": str(cfg.maxclients),
        "maxmemory": str(c.db.max_bytes),
        "maxmemory-policy": c.db.eviction,
        "timeout": "0",
        "tcp-keepalive": "0",
        "proto-max-bulk-len": str(limits.max_bulk_len),
        "client-query-buffer-limit": str(limits.max_query_buffer),
        "bitkv-query-buffer-total-limit": str(control.max_partial_bytes),
        "io-threads": "1",
        "cluster-enabled": "no",
        "protected-mode": "yes" if cfg.protected_mode else "no",
        "daemonize": "no",
        "loglevel": "notice",
        **control.replication.config_params(),
        **tuning.values(control),  # accepted by CONFIG SET, no effect (tuning.py)
    }


@command("config", -2, F_ADMIN, group="server", summary="Get configuration parameters",
         since="2.0.0", subcommands=True)
def cmd_config(c: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"GET":
        if len(args) < 3:
            return arity_error("config|get")
        params = _config_params(c)
        found: dict[str, str] = {}
        for pattern in args[2:]:
            match = compile_glob(pattern.lower())
            for name, value in params.items():
                if match(name.encode()):
                    found[name] = value
        return encode_value(found, c.resp3)
    if sub == b"SET":
        if len(args) < 4 or len(args) % 2:
            return arity_error("config|set")
        pairs = [(args[i].decode("utf-8", "replace"), args[i + 1].decode("utf-8", "replace"))
                 for i in range(2, len(args), 2)]
        replication = c.control.replication
        tuned: dict[str, str] = {}
        for name, value in pairs:
            if name.lower() in CACHE_PARAMS:
                continue
            if tuning.accepts(name):
                try:
                    tuned[name.lower()] = tuning.normalize(name, value)
                except ValueError as exc:
                    raise CommandError(f"ERR CONFIG SET failed (possibly related to argument "
                                       f"'{name}') - {exc}") from None
            elif name.lower() not in replication.config_params() or name.lower() in (
                    "replicaof", "slaveof"):
                raise CommandError(
                    f"ERR Unknown option or number of arguments for CONFIG SET - '{name}' "
                    f"(bitkv's configuration is set on the command line; CONFIG SET "
                    f"changes maxmemory, maxmemory-policy and the replica settings, and "
                    f"records Redis's tuning parameters)")
        for name, value in pairs:
            if tuning.accepts(name):
                continue
            try:
                if name.lower() in CACHE_PARAMS:
                    _set_bound(c, name.lower(), value)
                else:
                    replication.config_set(name, value)
            except (ValueError, Error) as exc:
                raise CommandError(f"ERR CONFIG SET failed (possibly related to argument "
                                   f"'{name}') - {exc}") from None
        tuning.record(c.control, tuned)
        return OK
    if sub == b"RESETSTAT" and len(args) == 2:
        c.control.reset_stats()
        return OK
    if sub == b"REWRITE" and len(args) == 2:
        # No config file: the role and the replica settings are persisted in the store
        # directory, where `bitkv serve` reads them at start (server/replica_state.py).
        try:
            c.control.replication.config_rewrite()
        except OSError as exc:
            raise CommandError(f"ERR Rewriting config file: {exc}") from None
        return OK
    if sub == b"HELP" and len(args) == 2:
        return bulk_array([b"CONFIG <subcommand> [<arg> ...]. Subcommands are:",
                           b"GET <pattern>",
                           b"SET <parameter> <value> (maxmemory, maxmemory-policy, the "
                           b"replica settings; Redis's tuning parameters are recorded, with "
                           b"no effect)",
                           b"RESETSTAT", b"REWRITE", b"HELP"])
    raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                       + "'. Try CONFIG HELP.")


_FLAG_NAMES = ((F_WRITE, "write"), (F_READONLY, "readonly"), (F_ADMIN, "admin"),
               (F_DENYOOM, "denyoom"), (F_NOAUTH, "no_auth"), (F_NOMULTI, "no_multi"),
               (F_FAST, "fast"))


def _command_entry(info: CommandInfo) -> bytes:
    flags = [name for bit, name in _FLAG_NAMES if info.flags & bit]
    flags_reply = b"*%d\r\n" % len(flags) + b"".join(b"+%b\r\n" % f.encode() for f in flags)
    return array([
        bulk(info.name.encode()), integer(info.arity), flags_reply,
        b":%d\r\n" % info.first_key, b":%d\r\n" % info.last_key, b":%d\r\n" % info.step,
        bulk_array([b"@" + info.group.encode()]), EMPTY_ARRAY, EMPTY_ARRAY, EMPTY_ARRAY,
    ])


def _command_docs(info: CommandInfo, resp3: bool) -> bytes:
    return encode_value({"summary": info.summary, "since": info.since, "group": info.group},
                        resp3)


@command("command", -1, F_FAST, group="server", summary="Get details about commands",
         since="2.8.13", subcommands=True)
def cmd_command(c: Connection, args: list[bytes]) -> bytes:
    if len(args) == 1:
        return array([_command_entry(i) for i in INFOS.values()])
    sub = args[1].upper()
    if sub == b"COUNT" and len(args) == 2:
        return integer(len(INFOS))
    if sub == b"INFO":
        if len(args) == 2:
            return array([_command_entry(i) for i in INFOS.values()])
        out = []
        for name in args[2:]:
            info = INFOS.get(name.decode("utf-8", "replace").lower())
            out.append(c.null if info is None else _command_entry(info))
        return array(out)
    if sub == b"DOCS":
        names = [n.decode("utf-8", "replace").lower() for n in args[2:]] or list(INFOS)
        pairs = [(bulk(n.encode()), _command_docs(INFOS[n], c.resp3))
                 for n in names if n in INFOS]
        return map_reply(pairs, c.resp3)
    if sub == b"LIST":
        return bulk_array([n.encode() for n in INFOS])
    if sub == b"HELP" and len(args) == 2:
        return bulk_array([b"COMMAND <subcommand> [<arg> ...]. Subcommands are:",
                           b"(no subcommand)", b"COUNT", b"DOCS [<command-name> ...]",
                           b"INFO [<command-name> ...]", b"LIST", b"HELP"])
    raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                       + "'. Try COMMAND HELP.")


def _human(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.2f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return str(n)


def info_sections(c: Connection) -> dict[str, list[tuple[str, Any]]]:
    control = c.control
    db = c.db
    stats = db.stats()
    now = time.time()
    uptime = int(now - control.started_at)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = usage.ru_maxrss * 1024
    last = stats.get("last_compaction") or {}
    rec = stats.get("recovery") or {}
    sync = control.config.sync
    metrics = control.metrics
    return {
        "server": [
            ("redis_version", REDIS_VERSION),
            ("bitkv_version", BITKV_VERSION),
            ("redis_mode", "standalone"),
            ("os", f"{platform.system()} {platform.release()} {platform.machine()}"),
            ("arch_bits", 64 if sys.maxsize > 2**32 else 32),
            ("multiplexing_api", control.loop_name),
            ("python_version", platform.python_version()),
            ("resp_parser", control.parser_kind),
            ("process_id", os.getpid()),
            ("run_id", control.run_id),
            ("tcp_port", control.port),
            ("tls", "yes" if control.config.tls else "no"),
            ("server_time_usec", int(now * 1_000_000)),
            ("uptime_in_seconds", uptime),
            ("uptime_in_days", uptime // 86400),
            ("executable", sys.executable),
            ("config_file", ""),
        ],
        "clients": [
            ("connected_clients", len(control.clients)),
            ("maxclients", control.config.maxclients),
            ("blocked_clients", blocking.blocked_clients(c)),
        ],
        "memory": [
            ("used_memory", rss),
            ("used_memory_human", _human(rss)),
            ("used_memory_rss", rss),
            ("maxmemory", db.max_bytes),
            ("maxmemory_human", _human(db.max_bytes)),
            ("maxmemory_policy", db.eviction),
        ],
        "persistence": [
            ("loading", 0),
            ("async_loading", 0),
            ("rdb_changes_since_last_save", control.writes_since_save),
            ("rdb_bgsave_in_progress", int(control.background_sync_running)),
            ("rdb_last_save_time", int(control.last_save_time)),
            ("rdb_last_bgsave_status", "ok" if control.last_sync_error is None else "err"),
            ("aof_enabled", 1),
            ("aof_rewrite_in_progress", int(control.compaction_running)),
            ("aof_rewrite_scheduled", 0),
            ("aof_last_rewrite_time_sec",
             round(last["seconds"]) if "seconds" in last else -1),
            ("aof_last_bgrewrite_status",
             "ok" if control.last_compaction_error is None else "err"),
            ("aof_last_write_status", "ok"),
            ("appendfsync", {"always": "always", "interval": "everysec",
                             "never": "no"}[sync]),
            ("bitkv_sync", sync),
            ("bitkv_dir", os.path.abspath(control.config.dir)),
            ("bitkv_segments", stats["segments"]),
            ("bitkv_live_bytes", stats["live_bytes"]),
            ("bitkv_dead_bytes", stats["dead_bytes"]),
            ("bitkv_disk_bytes", stats["disk_bytes"]),
            ("bitkv_last_compaction_reclaimed_bytes", last.get("bytes_reclaimed", 0)),
            ("bitkv_compactions", stats["compactions"]),
            ("bitkv_expired_keys", stats["expired_keys"]),
            ("bitkv_last_compaction_error", control.last_compaction_error
             or stats.get("last_compaction_error") or ""),
            ("bitkv_recovery_truncated_bytes", rec.get("truncated_bytes", 0)),
            ("bitkv_recovery_corrupt_bytes", rec.get("corrupt_bytes", 0)),
        ],
        "stats": [
            ("total_connections_received", control.total_connections),
            ("total_commands_processed", control.total_commands),
            ("rejected_connections", control.rejected_connections),
            ("instantaneous_ops_per_sec", metrics.instantaneous_ops_per_sec),
            ("expired_keys", metrics.expired_keys(stats["expired_keys"])),
            ("evicted_keys", stats["evicted_keys"]),
            ("keyspace_hits", metrics.keyspace_hits),
            ("keyspace_misses", metrics.keyspace_misses),
            ("pubsub_channels", control.pubsub.total(CHANNEL)),
            ("pubsub_patterns", control.pubsub.total(PATTERN)),
            ("pubsubshard_channels", control.pubsub.total(SHARD)),
            *control.replication.stats_fields(),
            ("total_error_replies", metrics.total_error_replies),
        ],
        "replication": control.replication.info_fields(),
        "cpu": [
            ("used_cpu_sys", f"{usage.ru_stime:.6f}"),
            ("used_cpu_user", f"{usage.ru_utime:.6f}"),
        ],
        "commandstats": metrics.commandstats(),
        "errorstats": metrics.errorstats(),
        "latencystats": metrics.latencystats(),
        "keyspace": ([("db0", f"keys={stats['keys']},expires={stats['expiring_keys']},"
                              "avg_ttl=0")] if stats["keys"] else []),
    }


# Redis 7's order. commandstats and latencystats are in "all" and "everything" only.
_ALL_SECTIONS = ("server", "clients", "memory", "persistence", "stats", "replication", "cpu",
                 "commandstats", "errorstats", "latencystats", "keyspace")
_DEFAULT_SECTIONS = tuple(n for n in _ALL_SECTIONS if n not in ("commandstats", "latencystats"))


@command("info", -1, F_FAST, group="server",
         summary="Get information and statistics about the server")
def cmd_info(c: Connection, args: list[bytes]) -> bytes:
    wanted = [a.decode("utf-8", "replace").lower() for a in args[1:]]
    sections = info_sections(c)
    if any(w in ("all", "everything") for w in wanted):
        names = list(_ALL_SECTIONS)
    elif not wanted or "default" in wanted:
        names = [n for n in _ALL_SECTIONS if n in _DEFAULT_SECTIONS or n in wanted]
    else:
        names = [n for n in _ALL_SECTIONS if n in wanted]
    out = []
    for name in names:
        out.append(f"# {name.capitalize()}\r\n")
        out.extend(f"{k}:{v}\r\n" for k, v in sections[name])
        out.append("\r\n")
    text = "".join(out).rstrip("\r\n") + "\r\n" if out else ""
    return verbatim(text, c.resp3)
