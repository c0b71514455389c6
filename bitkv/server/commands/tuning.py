"""Redis tuning parameters that bitkv accepts in CONFIG SET, records and returns, with no effect.

Tools and test suites set Redis's tuning knobs (``hash-max-listpack-entries``, ``save``,
``appendonly``, ``hz``...) as a matter of course; refusing them breaks the tool for nothing,
since none of them changes what a command answers. bitkv has no listpacks, no RDB snapshots
and no event-loop frequency to tune, so ``CONFIG SET`` checks the value's form as Redis does,
records it for this server (until it stops: nothing is written to disk) and ``CONFIG GET``
returns it; nothing else reads it, except ``OBJECT ENCODING``, which names the encoding
Redis would use by the ``*-max-listpack-*`` and ``set-max-intset-entries`` limits
(commands/encodings.py). docs/server.md lists them as no-effect parameters.

The table gives each parameter's kind and the value CONFIG GET shows before any CONFIG SET:
Redis 7.0's default as Debian's redis-server 7.0.15 reports it, except ``save`` and
``appendonly``, which start as the truth about bitkv (no snapshots; every write goes to the
log). A parameter bitkv comes to implement (``maxmemory`` and its eviction settings are not
here for that reason) leaves this table for the module that gives it effect.
"""

from __future__ import annotations

import re
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..control import ServerControl

BOOL, INT, MEMORY, TEXT, SAVE = "bool", "int", "memory", "text", "save"

# name: (kind, value before any CONFIG SET)
TUNING: dict[str, tuple[str, str]] = {
    # encodings of the collection types (Redis 7.0 names, and their pre-7.0 aliases)
    "hash-max-listpack-entries": (INT, "512"),
    "hash-max-listpack-value": (INT, "64"),
    "hash-max-ziplist-entries": (INT, "512"),
    "hash-max-ziplist-value": (INT, "64"),
    "list-max-listpack-size": (INT, "-2"),
    "list-max-ziplist-size": (INT, "-2"),
    "list-compress-depth": (INT, "0"),
    "set-max-intset-entries": (INT, "512"),
    "zset-max-listpack-entries": (INT, "128"),
    "zset-max-listpack-value": (INT, "64"),
    "zset-max-ziplist-entries": (INT, "128"),
    "zset-max-ziplist-value": (INT, "64"),
    "stream-node-max-bytes": (MEMORY, "4096"),
    "stream-node-max-entries": (INT, "100"),
    "hll-sparse-max-bytes": (MEMORY, "3000"),
    # persistence (bitkv's log is always on; see docs/durability.md)
    "save": (SAVE, ""),
    "appendonly": (BOOL, "yes"),
    "rdbcompression": (BOOL, "yes"),
    "rdbchecksum": (BOOL, "yes"),
    "stop-writes-on-bgsave-error": (BOOL, "yes"),
    "rdb-save-incremental-fsync": (BOOL, "yes"),
    "aof-rewrite-incremental-fsync": (BOOL, "yes"),
    "aof-use-rdb-preamble": (BOOL, "yes"),
    "aof-timestamp-enabled": (BOOL, "no"),
    "auto-aof-rewrite-percentage": (INT, "100"),
    "auto-aof-rewrite-min-size": (MEMORY, "67108864"),
    "no-appendfsync-on-rewrite": (BOOL, "no"),
    # the event loop, expiry and memory housekeeping
    "hz": (INT, "10"),
    "dynamic-hz": (BOOL, "yes"),
    "activerehashing": (BOOL, "yes"),
    "active-expire-effort": (INT, "1"),
    "activedefrag": (BOOL, "no"),
    "active-defrag-cycle-min": (INT, "1"),
    "active-defrag-cycle-max": (INT, "25"),
    "active-defrag-ignore-bytes": (MEMORY, "104857600"),
    "active-defrag-threshold-lower": (INT, "10"),
    "active-defrag-threshold-upper": (INT, "100"),
    "active-defrag-max-scan-fields": (INT, "1000"),
    "jemalloc-bg-thread": (BOOL, "yes"),
    "lazyfree-lazy-eviction": (BOOL, "no"),
    "lazyfree-lazy-expire": (BOOL, "no"),
    "lazyfree-lazy-server-del": (BOOL, "no"),
    "lazyfree-lazy-user-del": (BOOL, "no"),
    "lazyfree-lazy-user-flush": (BOOL, "no"),
    # diagnostics and client bookkeeping
    "slowlog-log-slower-than": (INT, "10000"),
    "slowlog-max-len": (INT, "128"),
    "latency-monitor-threshold": (INT, "0"),
    "latency-tracking": (BOOL, "yes"),
    "notify-keyspace-events": (TEXT, ""),
    "tracking-table-max-keys": (INT, "1000000"),
    "busy-reply-threshold": (INT, "5000"),
    "lua-time-limit": (INT, "5000"),
    "set-proc-title": (BOOL, "yes"),
}

_MEMORY = re.compile(r"^(-?\d+)(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3,
          "gb": 1024**3}
_INT64_MAX = 2**63 - 1

# The values set on each server, by the server (the object behind ``conn.control``); weak, so
# a stopped server's values go with it. Kept here rather than on the server object so that
# the parameters stay this module's alone.
_recorded: weakref.WeakKeyDictionary[ServerControl, dict[str, str]] = \
    weakref.WeakKeyDictionary()


def accepts(name: str) -> bool:
    """True if ``name`` (any case) is a tuning parameter of the table."""
    return name.lower() in TUNING


def normalize(name: str, value: str) -> str:
    """The value as CONFIG GET shows it; ValueError (Redis's reason) if it is malformed."""
    kind = TUNING[name.lower()][0]
    if kind == BOOL:
        v = value.lower()
        if v not in ("yes", "no"):
            raise ValueError("argument must be 'yes' or 'no'")
        return v
    if kind == INT:
        try:
            n = int(value, 10)
        except ValueError:
            raise ValueError("argument couldn't be parsed into an integer") from None
        if not -_INT64_MAX - 1 <= n <= _INT64_MAX or value.strip() != value:
            raise ValueError("argument couldn't be parsed into an integer")
        return str(n)
    if kind == MEMORY:
        m = _MEMORY.match(value)
        if m is None:
            raise ValueError("argument must be a memory value")
        n = int(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
        if not 0 <= n <= _INT64_MAX:
            raise ValueError("argument must be a memory value")
        return str(n)
    if kind == SAVE:
        fields = value.split()
        if len(fields) % 2 or not all(f.isdigit() for f in fields):
            raise ValueError("Invalid save parameters")
        return " ".join(str(int(f)) for f in fields)
    return value


def values(control: ServerControl) -> dict[str, str]:
    """Every tuning parameter with the value CONFIG GET returns on this server."""
    shown = {name: default for name, (_kind, default) in TUNING.items()}
    shown.update(_recorded.get(control, {}))
    return shown


# Redis 7.0's pre-7.0 names of the listpack parameters: one parameter under two names
# (CONFIG SET of either changes both, as in Redis).
ALIASES: dict[str, str] = {
    "hash-max-ziplist-entries": "hash-max-listpack-entries",
    "hash-max-ziplist-value": "hash-max-listpack-value",
    "list-max-ziplist-size": "list-max-listpack-size",
    "zset-max-ziplist-entries": "zset-max-listpack-entries",
    "zset-max-ziplist-value": "zset-max-listpack-value",
}
_PARTNER = {**ALIASES, **{new: old for old, new in ALIASES.items()}}


def record(control: ServerControl, settings: dict[str, str]) -> None:
    """Record already normalized ``settings`` (parameter: value) for this server; setting
    a parameter sets its alias too (:data:`ALIASES`)."""
    recorded = _recorded.setdefault(control, {})
    for name, value in settings.items():
        recorded[name] = value
        partner = _PARTNER.get(name)
        if partner is not None:
            recorded[partner] = value
