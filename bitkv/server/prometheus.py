"""``bitkv serve --metrics-port``: the server's metrics in the Prometheus text format.

The endpoint serves what ``INFO`` reports (per-command calls, time, rejected and failed
calls and latency percentiles; error replies by prefix; keyspace hits and misses, expired
keys, the instantaneous ops/s; clients and connections) and the engine's ``Store.stats()``
(live and dead bytes per segment, compactions, what recovery found). It uses the
``prometheus_client`` library, an optional dependency: ``pip install 'bitkv[metrics]'``.

A scrape runs in the library's HTTP thread; the values themselves are read on the event loop
thread (:meth:`Server.metrics_snapshot <bitkv.server.app.Server.metrics_snapshot>`), where the
counters are updated, so one scrape is one consistent reading. The endpoint has no password:
it listens on loopback unless ``--metrics-bind`` says otherwise, which protected mode allows
only with ``--protected-mode no`` (whatever ``--requirepass`` says: it does not cover this
port).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .metrics import PERCENTILES, CommandStat, percentile

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

MISSING = ("--metrics-port needs the prometheus_client library, an optional dependency of "
           "bitkv: pip install 'bitkv[metrics]'")


def available() -> bool:
    """Whether ``prometheus_client`` can be imported."""
    try:
        return importlib.util.find_spec("prometheus_client") is not None
    except (ImportError, ValueError):  # a None in sys.modules (tests), a broken install
        return False


@dataclass
class Snapshot:
    """One reading of everything the endpoint exports (taken on the event loop thread)."""

    commands: dict[str, CommandStat]
    errors: dict[str, int]
    counters: dict[str, int]  # monotonic since start (or CONFIG RESETSTAT)
    gauges: dict[str, float]
    store: dict[str, Any]  # Store.stats()


class BitkvCollector:
    """A ``prometheus_client`` collector reading a fresh :class:`Snapshot` at each scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self._snapshot()
        counters = {
            "commands_processed": "Commands received (INFO total_commands_processed).",
            "connections_received": "Connections accepted (INFO total_connections_received).",
            "rejected_connections": "Connections refused (maxclients, protected mode).",
            "keyspace_hits": "Reads of a key's value that found it (GET, MGET...).",
            "keyspace_misses": "Reads of a key's value that did not find it.",
            "expired_keys": "Keys removed from the index because they expired.",
            "error_replies": "Error replies sent (INFO total_error_replies).",
        }
        for name, doc in counters.items():
            yield CounterMetricFamily(f"bitkv_{name}", doc, value=snap.counters[name])
        for name, value in snap.gauges.items():
            yield GaugeMetricFamily(f"bitkv_{name}", _GAUGE_DOCS[name], value=value)

        errors = CounterMetricFamily("bitkv_errors", "Error replies by prefix (INFO "
                                     "errorstats).", labels=["err"])
        for prefix, count in sorted(snap.errors.items()):
            errors.add_metric([prefix], count)
        yield errors

        calls = CounterMetricFamily("bitkv_command_calls", "Calls of each command that ran "
                                    "(INFO commandstats calls).", labels=["cmd"])
        seconds = CounterMetricFamily("bitkv_command_duration_seconds", "Time spent running "
                                      "each command (INFO commandstats usec).", labels=["cmd"])
        rejected = CounterMetricFamily("bitkv_command_rejected_calls", "Calls refused before "
                                       "running (arity, NOAUTH, READONLY...).", labels=["cmd"])
        failed = CounterMetricFamily("bitkv_command_failed_calls", "Calls that ran and "
                                     "replied an error.", labels=["cmd"])
        latency = GaugeMetricFamily("bitkv_command_latency_seconds", "Latency percentiles of "
                                    "each command (INFO latencystats; at most 6.25% high).",
                                    labels=["cmd", "quantile"])
        for cmd, stat in sorted(snap.commands.items()):
            if not (stat.calls or stat.rejected):
                continue
            calls.add_metric([cmd], stat.calls)
            seconds.add_metric([cmd], stat.nanos / 1e9)
            rejected.add_metric([cmd], stat.rejected)
            failed.add_metric([cmd], stat.failed)
            if stat.calls:
                for q in PERCENTILES:
                    latency.add_metric([cmd, f"{q / 100:g}"],
                                       percentile(stat.histogram, q) / 1e9)
        yield from (calls, seconds, rejected, failed, latency)

        yield from _store_metrics(snap.store)


_GAUGE_DOCS = {
    "connected_clients": "Clients connected now.",
    "instantaneous_ops_per_sec": "Commands per second over the last 1.6 s (16 samples).",
    "uptime_seconds": "Seconds since the server started.",
}

_STORE_GAUGES = {
    "keys": "Live keys in the store.",
    "expiring_keys": "Live keys with an expiry.",
    "segments": "Segment files.",
    "live_bytes": "Bytes of the records the index points at.",
    "dead_bytes": "Bytes compaction can reclaim.",
    "disk_bytes": "Bytes of all the store's files.",
}


def _store_metrics(stats: dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    for name, doc in _STORE_GAUGES.items():
        yield GaugeMetricFamily(f"bitkv_store_{name}", doc, value=stats[name])
    live = GaugeMetricFamily("bitkv_segment_live_bytes", "Live bytes of each segment.",
                             labels=["segment"])
    dead = GaugeMetricFamily("bitkv_segment_dead_bytes", "Dead (reclaimable) bytes of each "
                             "segment.", labels=["segment"])
    for seg in stats["segment_bytes"]:
        live.add_metric([str(seg["id"])], seg["live_bytes"])
        dead.add_metric([str(seg["id"])], seg["dead_bytes"])
    yield live
    yield dead
    yield CounterMetricFamily("bitkv_compactions", "Compactions run by this process.",
                              value=stats["compactions"])
    last = stats.get("last_compaction") or {}
    yield GaugeMetricFamily("bitkv_last_compaction_reclaimed_bytes", "Bytes the last "
                            "compaction reclaimed (0: none recorded).",
                            value=last.get("bytes_reclaimed", 0))
    yield GaugeMetricFamily("bitkv_last_compaction_duration_seconds", "How long the last "
                            "compaction took (0: none recorded).", value=last.get("seconds", 0))
    yield GaugeMetricFamily("bitkv_writes_refused", "1 if the store refuses writes (an fsync "
                            "failed: reopen it), else 0.",
                            value=1 if stats.get("last_sync_error") else 0)
    recovery = GaugeMetricFamily("bitkv_recovery", "What the last open found, by finding "
                                 "(truncated_bytes, corrupt_bytes, damaged_regions...).",
                                 labels=["finding"])
    for finding, value in sorted((stats.get("recovery") or {}).items()):
        if isinstance(value, int):
            recovery.add_metric([finding], value)
    yield recovery


class Endpoint:
    """The running HTTP endpoint (``prometheus_client``'s WSGI server in a daemon thread)."""

    def __init__(self, snapshot: Callable[[], Snapshot], host: str, port: int) -> None:
        if not available():
            raise RuntimeError(MISSING)
        from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server

        registry = CollectorRegistry(auto_describe=False)
        collector: Collector = BitkvCollector(snapshot)
        registry.register(collector)
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, RSS, open fds...
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port: int = self._httpd.server_address[1]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
