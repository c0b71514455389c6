#!/usr/bin/env python3
"""Replication figures for docs/replication.md: full-resync time, replication lag, reads at the
edge. Everything runs on loopback, real processes, one run.

    python scripts/bench_replication.py --keys 1000000 --rate 5000 --seconds 10

1. **Full resync**: a bitkv master holding ``--keys`` keys (100-byte values, filled through
   the library before the server starts); a replica (Debian's redis-server, and a bitkv
   replica with ``--bitkv-replica``) attaches: seconds from REPLICAOF to the link up with
   the offset caught up.
2. **Lag**: a writer sends SETs to the master at ``--rate`` a second for ``--seconds``;
   every 10 ms a probe key is written with the time and the replica is polled until it shows
   it: the time from the master's reply to the value being readable on the replica.
3. **Edge reads** (``--bitkv-replica``): while the lag run goes on, a local program (another
   process) opens the replica's directory read-only and reads random keys (``refresh()``
   every 100 ms): gets a second and their latency.

Prints a Markdown table; the machine is shared and noisy, so repeat and compare in one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

import bitkv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (redis.ConnectionError, redis.ResponseError, OSError):
            pass
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}")


def start_bitkv(directory: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    log = open(directory.parent / f"bitkv-{port}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "bitkv.server", "--dir", str(directory),
                             "--port", str(port), *args], stdout=log, stderr=log)
    wait(lambda: redis.Redis(port=port).ping(), 60, f"bitkv on {port}")
    return proc


def start_redis(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir),
                             "--logfile", str(workdir / f"redis-{port}.log")],
                            stdout=subprocess.DEVNULL)
    wait(lambda: redis.Redis(port=port).ping(), 30, f"redis on {port}")
    return proc


def caught_up(master: redis.Redis, replica: redis.Redis) -> bool:
    info = replica.info("replication")
    return (info.get("master_link_status") == "up"
            and info.get("slave_repl_offset", -1)
            >= master.info("replication")["master_repl_offset"])


def full_resync(master: redis.Redis, mport: int, replica: redis.Redis) -> float:
    t = time.perf_counter()
    replica.execute_command("REPLICAOF", "127.0.0.1", mport)
    wait(lambda: caught_up(master, replica), 1800, "the full resync")
    return time.perf_counter() - t


def lag_run(master_port: int, replica: redis.Redis, rate: int, seconds: float
            ) -> tuple[list[float], int]:
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        m = redis.Redis(port=master_port)
        value = b"v" * 100
        start = time.perf_counter()
        i = 0
        while not stop.is_set():
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            batch = max(1, rate // 200)
            with m.pipeline(transaction=False) as p:
                for _ in range(batch):
                    p.set(b"load:%d" % random.randrange(100000), value)
                p.execute()
            i += batch
            written[0] = i

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    m = redis.Redis(port=master_port)
    lags = []
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
        token = b"%d" % n
        m.set(b"probe", token)
        sent = time.perf_counter()
        while replica.get(b"probe") != token:
            if time.perf_counter() - sent > 30:
                raise SystemExit("the replica stopped following")
        lags.append(time.perf_counter() - sent)
        time.sleep(0.01)
    stop.set()
    t.join()
    return lags, written[0]


def edge_reads(directory: Path, seconds: float, keys: int) -> tuple[int, list[float]]:
    db = bitkv.open(directory, readonly=True)
    lat = []
    n = 0
    end = time.monotonic() + seconds
    last_refresh = time.monotonic()
    rng = random.Random(1)
    try:
        while time.monotonic() < end:
            if time.monotonic() - last_refresh > 0.1:
                db.refresh()
                last_refresh = time.monotonic()
            k = b"key:%d" % rng.randrange(keys)
            t = time.perf_counter()
            db.get(k)
            lat.append(time.perf_counter() - t)
            n += 1
    finally:
        db.close()
    return n, lat


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=5000, help="background SETs a second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--bitkv-replica", action="store_true",
                    help="also measure a bitkv replica (and reads at the edge)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-repl-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    procs: list[subprocess.Popen[bytes]] = []
    rows = []
    try:
        t = time.perf_counter()
        with bitkv.open(work / "master", auto_compact=False) as db:
            value = b"x" * 100
            for start in range(0, args.keys, 10000):
                with db.batch() as b:
                    for i in range(start, min(args.keys, start + 10000)):
                        b.put(b"key:%d" % i, value)
        print(f"filled {args.keys} keys in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        mport = free_port()
        procs.append(start_bitkv(work / "master", mport))
        master = redis.Redis(port=mport)
        kinds = [("redis-server 7.0", None)]
        if args.bitkv_replica:
            kinds.append(("bitkv", work / "replica"))
        for name, rdir in kinds:
            rport = free_port()
            if rdir is None:
                procs.append(start_redis(work, rport))
            else:
                procs.append(start_bitkv(rdir, rport))
            replica = redis.Redis(port=rport)
            seconds = full_resync(master, mport, replica)
            rows.append((f"full resync of {args.keys:,} keys to {name}", f"{seconds:.2f} s"))
            edge: list[tuple[int, list[float]]] = []
            pool = None
            if rdir is not None:
                # Its own process: a reader thread here would take the GIL from the writer
                # and the lag probe, and measure this script instead of the replica.
                pool = multiprocessing.get_context("spawn").Pool(1)
                pending = pool.apply_async(edge_reads, (rdir, args.seconds, args.keys))
            lags, written = lag_run(mport, replica, args.rate, args.seconds)
            if pool is not None:
                edge.append(pending.get(timeout=args.seconds + 120))
                pool.close()
            rows.append((f"lag to {name} at {written / args.seconds:,.0f} SET/s: median, p99, "
                         f"max", f"{statistics.median(lags) * 1000:.2f} ms, "
                         f"{pct(lags, 0.99) * 1000:.2f} ms, {max(lags) * 1000:.2f} ms"))
            if edge:
                n, lat = edge[0]
                rows.append(("edge reads (read-only opener of the replica's directory)",
                             f"{n / args.seconds:,.0f} gets/s, "
                             f"p50 {statistics.median(lat) * 1e6:.1f} µs, "
                             f"p99 {pct(lat, 0.99) * 1e6:.1f} µs"))
            replica.execute_command("REPLICAOF", "NO", "ONE")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    flag = " --bitkv-replica" if args.bitkv_replica else ""
    print(f"| figure (`python scripts/bench_replication.py --keys {args.keys} --rate "
          f"{args.rate} --seconds {args.seconds:g}{flag}`) | value |")
    print("|---|---:|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\n{os.cpu_count()} CPUs; loopback; values of 100 bytes.")


if __name__ == "__main__":
    main()
