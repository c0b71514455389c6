#!/usr/bin/env python3
"""Where 8 durable writers' time goes: ``sync="always"`` puts from 1, 2, 4 and 8 threads, with
the group size (puts ÷ fdatasyncs), the CPU time per put and the floor (``pwrite`` into
zero-written room + ``fdatasync`` in a loop: the disk's own rate and a flush's CPU cost).

    python scripts/bench_group_commit.py                 # 3 rounds of 4,000 puts per thread count
    BITKV_PURE_PYTHON=1 python scripts/bench_group_commit.py --rounds 5

Every put is a new 16-byte key with a 100-byte value; the threads share a round's puts. The
fdatasyncs are counted by a FileIO that forwards every call (the durable path is the same with
it: only the map-write paths of the other sync modes tell the plain FileIO apart). CPU time is
the process's (every thread) over the round ÷ puts, so it holds on a loaded machine where wall
rates do not; the group size does not depend on the machine's load as much either.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import tempfile
import threading
import time

import bitkv
from bitkv.fileio import FileIO


class CountingIO(FileIO):
    """Counts fdatasyncs (thread-safe)."""

    def __init__(self) -> None:
        self.fdatasyncs = 0
        self._lock = threading.Lock()

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            self.fdatasyncs += 1
        super().fdatasync(fd)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def floor(directory: str, n: int) -> tuple[float, float]:
    """(fdatasyncs/s, CPU µs per fdatasync) of a 144-byte pwrite + fdatasync loop."""
    fd = os.open(os.path.join(directory, "floor"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, bytes(n * 144 + 4096), 0)
        os.fsync(fd)
        record = b"x" * 144
        t0, c0 = time.perf_counter(), cpu_seconds()
        for i in range(n):
            os.pwrite(fd, record, i * 144)
            os.fdatasync(fd)
        return n / (time.perf_counter() - t0), (cpu_seconds() - c0) / n * 1e6
    finally:
        os.close(fd)


def durable_round(directory: str, threads: int, n: int) -> tuple[float, float, float]:
    """(puts/s, CPU µs per put, puts per fdatasync) of n puts shared by ``threads``."""
    io = CountingIO()
    path = os.path.join(directory, f"db-{threads}")
    db = bitkv.open(path, sync="always", fileio=io, auto_compact=False)
    per_thread = n // threads
    keys = [b"key-%012d" % i for i in range(per_thread * threads)]
    value = b"v" * 100
    start = threading.Barrier(threads + 1)

    def writer(t: int) -> None:
        put = db.put
        start.wait()
        for key in keys[t * per_thread:(t + 1) * per_thread]:
            put(key, value)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    io.fdatasyncs = 0
    start.wait()
    t0, c0 = time.perf_counter(), cpu_seconds()
    for worker in workers:
        worker.join()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    syncs = io.fdatasyncs
    db.close()
    shutil.rmtree(path)
    return len(keys) / wall, cpu / len(keys) * 1e6, len(keys) / max(syncs, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=4000, help="puts per round and thread count")
    ap.add_argument("--threads", default="1,2,4,8")
    ap.add_argument("--dir", help="where the stores go (default: a new temporary directory)")
    args = ap.parse_args()
    counts = [int(t) for t in args.threads.split(",")]
    directory = tempfile.mkdtemp(prefix="bitkv-group-", dir=args.dir)
    try:
        print(f"bitkv {bitkv.IMPLEMENTATION} mode, {args.n:,} puts per round, "
              f"load average {os.getloadavg()[0]:.2f}")
        rate, cpu = floor(directory, 2000)
        print(f"floor: pwrite + fdatasync {rate:,.0f}/s, {cpu:.1f} µs CPU each")
        results: dict[int, list[tuple[float, float, float]]] = {t: [] for t in counts}
        for _ in range(args.rounds):
            for threads in counts:  # interleaved: each round runs every thread count
                results[threads].append(durable_round(directory, threads, args.n))
        one = results.get(1)
        for threads in counts:
            rows = results[threads]
            line = (f"{threads} thr: {statistics.median(r[0] for r in rows):8,.0f} puts/s, "
                    f"CPU {statistics.median(r[1] for r in rows):5.1f} µs/put, "
                    f"{statistics.median(r[2] for r in rows):4.2f} puts per fdatasync")
            if one is not None and threads != 1:
                ratios = [r[0] / o[0] for r, o in zip(rows, one, strict=True)]
                line += f", ÷ 1 thr {statistics.median(ratios):.2f}x (per-round median)"
            print(line)
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
