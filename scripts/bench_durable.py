#!/usr/bin/env python3
"""Durable writes, interleaved finely: bitkv ``sync="always"`` vs plyvel ``put(sync=True)``
vs the floor (``pwrite`` into zero-written room + ``fdatasync``), 1 to 8 threads.

    python scripts/bench_durable.py                       # 30 rounds of 200 puts per variant
    python scripts/bench_durable.py --rounds 40 --chunk 100 --threads 1,2,4,8
    BITKV_PURE_PYTHON=1 python scripts/bench_durable.py   # the pure-Python mode

Why beside scripts/bench.py's durable phases: on a shared virtual disk an fsync takes from
0.1 ms to 4 ms from one second to the next (other jobs' I/O; whether the waiting vCPU halted),
so phases seconds apart in separate processes compare different disks. Here every store stays
open in one process and each round runs one chunk of puts per variant, back to back, the order
reversed every other round; the ratios are the medians of the per-round ratios. Each put is a
new key (16 bytes, 100-byte value); threads share a chunk's puts. The stores live under
``--dir`` (default: a new temporary directory, on the disk being measured) and are removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

import bitkv

Put = Callable[[bytes, bytes], None]


class Floor:
    """What a durable append costs with nothing on top: one ``pwrite`` into room that was
    written with zeros ahead (1 MiB at a time, as bitkv does) and one ``fdatasync``, every
    thread its own, under a lock only for the offset."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.pos = self.room = 0
        self.lock = threading.Lock()

    def put(self, key: bytes, value: bytes) -> None:
        record = b"\0" * 28 + key + value  # a record's size; its bytes do not matter here
        with self.lock:
            pos = self.pos
            self.pos = pos + len(record)
            if self.pos > self.room:
                os.pwrite(self.fd, bytes(1 << 20), self.room)
                self.room += 1 << 20
            os.pwrite(self.fd, record, pos)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def run_chunk(put: Put, keys: list[bytes], value: bytes, threads: int) -> float:
    """Put ``keys`` with ``threads`` threads; return puts per second."""
    def worker(part: list[bytes]) -> None:
        for k in part:
            put(k, value)

    if threads == 1:
        t0 = time.perf_counter()
        worker(keys)
        return len(keys) / (time.perf_counter() - t0)
    pool = [threading.Thread(target=worker, args=(keys[t::threads],)) for t in range(threads)]
    t0 = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return len(keys) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--chunk", type=int, default=200, help="puts per variant per round")
    ap.add_argument("--threads", default="1,2,4,8", help="thread counts of bitkv and floor")
    ap.add_argument("--dir", help="where the stores go (default: a new temporary directory)")
    args = ap.parse_args()
    counts = [int(x) for x in args.threads.split(",")]
    base = tempfile.mkdtemp(prefix="bench-durable-", dir=args.dir)
    value = b"v" * 100
    try:
        import plyvel
    except ImportError:
        plyvel = None
    db = bitkv.open(os.path.join(base, "bitkv"), sync="always", auto_compact=False)
    floor = Floor(os.path.join(base, "floor"))
    puts: dict[str, tuple[Put, int]] = {}
    for n in counts:
        puts[f"bitkv {n} thr"] = (db.put, n)
    ldb = None
    if plyvel is not None:
        ldb = plyvel.DB(os.path.join(base, "plyvel"), create_if_missing=True)
        lput = ldb.put
        puts["plyvel 1 thr"] = (lambda k, v: lput(k, v, sync=True), 1)
    for n in counts:
        puts[f"floor {n} thr"] = (floor.put, n)
    rates: dict[str, list[float]] = {name: [] for name in puts}
    serial = 0
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load0 = os.getloadavg()[0]
    try:
        for r in range(args.rounds):
            names = list(puts) if r % 2 == 0 else list(puts)[::-1]
            for name in names:
                put, n = puts[name]
                keys = [b"key:%012d" % i for i in range(serial, serial + args.chunk)]
                serial += args.chunk
                rates[name].append(run_chunk(put, keys, value, n))
    finally:
        db.close()
        floor.close()
        if ldb is not None:
            ldb.close()
        shutil.rmtree(base, ignore_errors=True)

    def paired(a: str, b: str) -> str:
        if a not in rates or b not in rates:
            return "—"
        return f"{statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True)):.2f}x"

    print(f"bitkv {bitkv.IMPLEMENTATION} mode; {args.rounds} rounds of {args.chunk} puts per "
          f"variant, started {started}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    print()
    print("| variant | puts/s, median | min | max |")
    print("|---|---:|---:|---:|")
    for name, xs in rates.items():
        print(f"| {name} | {statistics.median(xs):,.0f} | {min(xs):,.0f} | {max(xs):,.0f} |")
    print()
    print("| ratio (median of per-round ratios) | value |")
    print("|---|---:|")
    print(f"| bitkv 1 thr ÷ plyvel 1 thr | {paired('bitkv 1 thr', 'plyvel 1 thr')} |")
    print(f"| bitkv 1 thr ÷ floor 1 thr | {paired('bitkv 1 thr', 'floor 1 thr')} |")
    for n in counts[1:]:
        print(f"| bitkv {n} thr ÷ bitkv 1 thr | {paired(f'bitkv {n} thr', 'bitkv 1 thr')} |")
    for n in counts[1:]:
        print(f"| floor {n} thr ÷ floor 1 thr | {paired(f'floor {n} thr', 'floor 1 thr')} |")


if __name__ == "__main__":
    main()
