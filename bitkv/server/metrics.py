"""The server's counters: per-command calls, time, rejections, failures and latency, error
replies by prefix, keyspace hits and misses, and the instantaneous operations per second.

They are what Redis's ``INFO commandstats``, ``errorstats``, ``latencystats`` and the
``stats`` section report (src/server.c), kept the same way: ``calls`` and ``usec`` of each
executed command; ``rejected_calls`` for a command refused before it ran (arity, NOAUTH,
READONLY, refused inside MULTI), ``failed_calls`` for one that ran and replied an error; each
error reply counted under its prefix (``ERR``, ``WRONGTYPE``...). ``CONFIG RESETSTAT`` clears
them. The Prometheus endpoint (:mod:`.prometheus`) exports the same counters.

Latency is kept in a log-linear histogram per command (Redis uses an HDR histogram): 16
buckets per power of two of nanoseconds, so a percentile is reported as the upper bound of its
bucket, at most 6.25% above the true value. The group commit's SETs and a pipeline's
consecutive inlined GETs are timed together, each given an equal share (app.py says why).

Everything here is updated on the event loop thread only; readers in other threads (the
Prometheus scrape) take a :meth:`Metrics.snapshot` through the loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# -- the latency histogram ----------------------------------------------------------------------

SUB_BITS = 4  # 2**SUB_BITS buckets per power of two: 6.25% wide
_SUB = 1 << SUB_BITS
_MAX_SHIFT = 40  # durations of 2**45 ns (~9.8 h) and more share the last bucket
BUCKETS = (_MAX_SHIFT + 2) * _SUB


def bucket_of(ns: int) -> int:
    """The histogram bucket of a duration in nanoseconds (below 32 ns: one bucket a ns)."""
    if ns < 2 * _SUB:
        return ns if ns > 0 else 0
    shift = ns.bit_length() - SUB_BITS - 1
    if shift > _MAX_SHIFT:
        return BUCKETS - 1
    return shift * _SUB + (ns >> shift)


def bucket_upper(index: int) -> int:
    """The largest duration (ns) that falls in bucket ``index``."""
    if index < 2 * _SUB:
        return index
    shift, sub = divmod(index, _SUB)
    return ((sub + _SUB + 1) << (shift - 1)) - 1



def new_histogram() -> list[int]:
    return [0] * BUCKETS


def percentile(histogram: list[int], q: float) -> int:
    """The ``q``-th percentile (0-100) in nanoseconds: the upper bound of the bucket holding
    the ``ceil(q% of n)``-th smallest duration; 0 for an empty histogram."""
    total = sum(histogram)
    if not total:
        return 0
    rank = max(1, -(-int(total * q * 1000) // 100_000))  # ceil(total * q / 100), q to 0.001
    seen = 0
    for index, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return bucket_upper(index)
    return bucket_upper(BUCKETS - 1)


# Redis's latency-tracking-info-percentiles default.
PERCENTILES = (50.0, 99.0, 99.9)


@dataclass(slots=True)
class CommandStat:
    """One command's counters (Redis's ``cmdstat_<name>``)."""

    calls: int = 0
    nanos: int = 0
    rejected: int = 0
    failed: int = 0
    histogram: list[int] = field(default_factory=new_histogram)

    def record(self, ns: int) -> None:
        self.calls += 1
        self.nanos += ns
        self.histogram[bucket_of(ns)] += 1

    def record_many(self, ns: int, count: int) -> None:
        """``count`` calls that took ``ns`` together (a group commit of SETs): each is given
        an equal share in the histogram."""
        self.calls += count
        self.nanos += ns
        self.histogram[bucket_of(ns // count)] += count


def error_prefix(reply: bytes) -> str:
    """The code of a RESP error reply: its first word (``-ERR ...`` -> ``ERR``)."""
    end = len(reply)
    for stop in (b" ", b"\r"):
        at = reply.find(stop, 1, end)
        if at != -1:
            end = at
    return reply[1:end].decode("ascii", "replace") or "ERR"


# instantaneous_ops_per_sec: as Redis, a sample every 100 ms, the mean of the last 16.
OPS_SAMPLE_INTERVAL = 0.1
OPS_SAMPLES = 16


class Metrics:
    """Every counter of the server's ``INFO`` that is not read from elsewhere."""

    def __init__(self) -> None:
        self.commands: dict[str, CommandStat] = {}
        self.errors: dict[str, int] = {}
        self.total_error_replies = 0
        self.keyspace_hits = 0
        self.keyspace_misses = 0
        self.expired_keys_base = 0  # the store's expired_keys at the last reset
        self._ops_samples = [0.0] * OPS_SAMPLES
        self._ops_index = 0
        self._ops_last: tuple[float, int] | None = None

    def reset(self, store_expired: int) -> None:
        """CONFIG RESETSTAT. Each command's counters are zeroed in place: the command loop
        holds on to GET's while it runs a pipeline."""
        for stat in self.commands.values():
            stat.calls = stat.nanos = stat.rejected = stat.failed = 0
            stat.histogram[:] = new_histogram()
        self.errors.clear()
        self.total_error_replies = 0
        self.keyspace_hits = 0
        self.keyspace_misses = 0
        self.expired_keys_base = store_expired
        self._ops_samples = [0.0] * OPS_SAMPLES
        self._ops_last = None

    def expired_keys(self, store_total: int) -> int:
        """INFO's expired_keys: the store's count (since it was opened) since the last reset."""
        return store_total - self.expired_keys_base

    def stat(self, name: str) -> CommandStat:
        got = self.commands.get(name)
        if got is None:
            got = self.commands[name] = CommandStat()
        return got

    def error(self, reply: bytes, count: int = 1) -> None:
        """An error reply was sent (``count`` times)."""
        prefix = error_prefix(reply)
        self.errors[prefix] = self.errors.get(prefix, 0) + count
        self.total_error_replies += count

    def rejected(self, name: str, reply: bytes) -> None:
        """``name`` was refused before it ran, with ``reply``."""
        self.stat(name).rejected += 1
        self.error(reply)

    def executed(self, name: str, ns: int, reply: bytes) -> None:
        """``name`` ran in ``ns`` nanoseconds and replied ``reply``."""
        stat = self.stat(name)
        stat.record(ns)
        if reply[:1] == b"-":
            stat.failed += 1
            self.error(reply)

    def sample_ops(self, total_commands: int, now: float | None = None) -> None:
        """Take one sample of the command rate (every OPS_SAMPLE_INTERVAL seconds)."""
        now = time.monotonic() if now is None else now
        last = self._ops_last
        self._ops_last = (now, total_commands)
        if last is None or now <= last[0]:
            return
        rate = (total_commands - last[1]) / (now - last[0])
        self._ops_samples[self._ops_index] = max(rate, 0.0)
        self._ops_index = (self._ops_index + 1) % OPS_SAMPLES

    @property
    def instantaneous_ops_per_sec(self) -> int:
        return round(sum(self._ops_samples) / OPS_SAMPLES)

    # -- INFO sections -------------------------------------------------------------------------

    def commandstats(self) -> list[tuple[str, str]]:
        out = []
        for name, s in sorted(self.commands.items()):
            if not (s.calls or s.rejected):
                continue
            usec = s.nanos / 1000
            per_call = usec / s.calls if s.calls else 0.0
            out.append((f"cmdstat_{name}",
                        f"calls={s.calls},usec={int(usec)},usec_per_call={per_call:.2f},"
                        f"rejected_calls={s.rejected},failed_calls={s.failed}"))
        return out

    def errorstats(self) -> list[tuple[str, str]]:
        return [(f"errorstat_{prefix}", f"count={n}") for prefix, n in sorted(self.errors.items())]

    def latencystats(self) -> list[tuple[str, str]]:
        out = []
        for name, s in sorted(self.commands.items()):
            if not s.calls:
                continue
            values = ",".join(f"p{_format_q(q)}={percentile(s.histogram, q) / 1000:.3f}"
                              for q in PERCENTILES)
            out.append((f"latency_percentiles_usec_{name}", values))
        return out


def _format_q(q: float) -> str:
    return f"{q:g}"
