"""Walks of the whole index, measured in one process (CPU time, ``time.process_time``).

    python scripts/bench_walks.py --keys STORE [STORE ...] --ttl TTL_STORE [TTL_STORE ...]

``--keys``: stores of ``bench_workload.scale_build`` (or any store), opened read-only; in
each round, interleaved, the active segment's keys found by iterating every entry (the
checkpoint's walk before ``KeyDir.entries_in``), by ``entries_in`` (the compiled
``IndexMap.items_in`` in native mode), and by ``entries_in`` for a slot no key is in (the
table scan alone, without objects to make). Medians of ``--rounds``.

``--ttl``: stores whose keys all have a TTL (``--build-ttl N PATH`` writes one: N keys through
``db.batch()``, TTLs of a day plus 0..3599 s), opened read-only: ``refresh()`` when the writer
appended nothing, and ``len()`` once a further second's keys expired (the expiry purge, which
walks every expiry; left as it is, see docs/performance.md).

Run it once with this tree and once with ``PYTHONPATH=<another tree>`` for a before/after
(the iterating walk is the same code in both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import bitkv
from bitkv import keydir


def cpu(fn: Callable[[], Any]) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def key_walks(path: str, rounds: int) -> None:
    db = bitkv.open(path, readonly=True)
    kd = db._keydir
    slot = db._table.segments[-1].slot
    entries = kd.entries
    shift = keydir.SLOT_SHIFT

    def iterate() -> int:
        return len([(k, e) for k, e in entries.items() if e >> shift == slot])

    has_entries_in = hasattr(kd, "entries_in")
    times: dict[str, list[float]] = {"iterate": [], "entries_in": [], "scan only": []}
    for _ in range(rounds):
        times["iterate"].append(cpu(iterate))
        if has_entries_in:
            times["entries_in"].append(cpu(lambda: kd.entries_in(frozenset((slot,)))))
            times["scan only"].append(cpu(lambda: kd.entries_in(
                frozenset((keydir.MAX_SLOTS - 1,)))))
    matches = iterate()
    print(f"{path}: {len(entries):,} keys, {matches:,} in the active segment "
          f"({bitkv.IMPLEMENTATION}); CPU s, median of {rounds}: " + ", ".join(
              f"{name} {statistics.median(ts):.3f}" for name, ts in times.items() if ts))
    db.close()


def ttl_walks(path: str, rounds: int) -> None:
    built = os.path.getmtime(os.path.join(path, "000001.data"))
    now = [built + 86400 + 5.0]  # the keys of the first few seconds have expired
    db = bitkv.open(path, readonly=True, clock=lambda: now[0])
    len(db)
    refresh = statistics.median(cpu(db.refresh) for _ in range(rounds * 10))

    def purge() -> None:
        now[0] += 1.0  # ~1/3600 of the keys expire each second
        len(db)

    purged = statistics.median(cpu(purge) for _ in range(rounds * 3))
    print(f"{path}: {len(db):,} TTL keys; CPU ms, median: refresh with nothing new "
          f"{refresh * 1e3:.3f}, len() after a second of expiries {purged * 1e3:.1f}")
    db.close()


def build_ttl(n: int, path: str) -> None:
    with bitkv.open(path, auto_compact=False) as db:
        for start in range(0, n, 100_000):
            with db.batch() as b:
                for i in range(start, min(n, start + 100_000)):
                    b.put(b"key:%012d" % i, b"v" * 16, ttl=86400 + i % 3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", nargs="*", default=[])
    ap.add_argument("--ttl", nargs="*", default=[])
    ap.add_argument("--build-ttl", nargs=2, metavar=("N", "PATH"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(f"# bench_walks, bitkv from {os.path.dirname(bitkv.__file__)}; load average "
          f"{os.getloadavg()[0]:.2f}")
    if args.build_ttl:
        build_ttl(int(args.build_ttl[0]), args.build_ttl[1])
    for path in args.keys:
        key_walks(path, args.rounds)
    for path in args.ttl:
        ttl_walks(path, args.rounds)


if __name__ == "__main__":
    main()
