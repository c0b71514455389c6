#!/usr/bin/env python3
"""Sorted sets in `bitkv serve` against Redis 7: memory per member and speed per command.

    python scripts/bench_zsets.py [--members 1000000] [--rounds 3] [--requests 100000]

Starts ``bitkv serve`` (``--sync interval``) and redis-server (``appendonly yes``,
``appendfsync everysec``) on free loopback ports, then:

* memory: the growth of each server process's RSS (/proc VmRSS) while ``--members`` members
  (``member:0000001``..., 15 bytes, distinct scores) are added to one sorted set with
  pipelined ZADDs of 1,000 members, divided by the number of members;
* speed: redis-benchmark rows (ZADD and ZPOPMIN are its own tests; the others are given as
  commands, ``__rand_int__`` drawn from ``-r 100000``), each run on both servers one right
  after the other, alternating which goes first, ``--rounds`` times; the table shows the
  medians of requests per second and of each server's CPU time per request (from
  /proc/PID/stat: less disturbed by a busy machine than requests per second).

Needs redis-server, redis-benchmark, redis-cli (Debian: redis-server, redis-tools) and
redis-py.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import redis
from bench_server import TICK, cpu_ticks, free_port, rss_bytes, wait_ready

# (label, pipeline, redis-benchmark arguments after the common ones)
ROWS: list[tuple[str, int, list[str]]] = [
    ("ZADD", 1, ["-t", "zadd"]),
    ("ZADD", 16, ["-t", "zadd"]),
    ("ZSCORE", 16, ["ZSCORE", "myzset", "element:__rand_int__"]),
    ("ZRANK", 16, ["ZRANK", "myzset", "element:__rand_int__"]),
    ("ZINCRBY", 16, ["ZINCRBY", "myzset", "1", "element:__rand_int__"]),
    ("ZRANGE 0 9 WITHSCORES", 16, ["ZRANGE", "myzset", "0", "9", "WITHSCORES"]),
    ("ZRANGEBYSCORE LIMIT 0 10", 16, ["ZRANGEBYSCORE", "myzset", "__rand_int__", "+inf",
                                      "LIMIT", "0", "10"]),
    ("ZPOPMIN", 16, ["-t", "zpopmin"]),
]


def load(port: int, members: int) -> None:
    client = redis.Redis(port=port)
    batch = 1000
    pipe = client.pipeline(transaction=False)
    for start in range(0, members, batch):
        pipe.zadd("mem", {f"member:{i:07d}": i * 1.5 for i in range(start, min(start + batch,
                                                                                 members))})
        if (start // batch) % 20 == 19:
            pipe.execute()
    pipe.execute()
    got = client.zcard("mem")
    if got != members:
        raise SystemExit(f"ZCARD says {got}, not {members}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100_000, help="redis-benchmark -n")
    ap.add_argument("--clients", type=int, default=50, help="redis-benchmark -c")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y redis-server redis-tools")
    work = tempfile.mkdtemp(prefix="bitkv-bench-zsets.")
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        port = free_port()
        log = open(os.path.join(work, "bitkv.log"), "wb")  # noqa: SIM115
        procs["bitkv"] = (subprocess.Popen(
            [sys.executable, "-m", "bitkv.server", "--dir", os.path.join(work, "bitkv"),
             "--port", str(port)], stdout=log, stderr=log), port)
        port = free_port()
        os.makedirs(os.path.join(work, "redis"))
        procs["redis"] = (subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--dir", os.path.join(work, "redis"),
             "--daemonize", "no", "--logfile", os.path.join(work, "redis.log")]), port)
        for proc, port in procs.values():
            wait_ready(port, proc)

        memory: dict[str, float] = {}
        if not args.skip_memory:
            for name, (proc, port) in procs.items():
                before = rss_bytes(proc.pid)
                started = time.perf_counter()
                load(port, args.members)
                memory[name] = (rss_bytes(proc.pid) - before) / args.members
                print(f"  {name}: {memory[name]:.0f} bytes/member "
                      f"(load {time.perf_counter() - started:.1f} s)", file=sys.stderr)
                redis.Redis(port=port).delete("mem")

        def run(name: str, pipeline: int, extra: list[str]) -> tuple[float, float]:
            proc, port = procs[name]
            before = cpu_ticks(proc.pid)
            out = subprocess.run(
                ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n",
                 str(args.requests), "-c", str(args.clients), "-r", "100000", "-P",
                 str(pipeline), "--csv", *extra], capture_output=True, text=True,
                check=True).stdout
            after = cpu_ticks(proc.pid)
            rows = [rec for rec in csv.reader(io.StringIO(out)) if rec and rec[0] != "test"]
            if not rows:
                raise SystemExit(f"no result from redis-benchmark:\n{out}")
            return float(rows[0][1]), (after - before) * 1e6 / TICK / args.requests

        results: dict[tuple[int, str], list[tuple[float, float]]] = {}
        for rnd in range(args.rounds):
            for i, (_label, pipeline, extra) in enumerate(ROWS):
                pair = ("bitkv", "redis") if (rnd + i) % 2 == 0 else ("redis", "bitkv")
                for name in pair:
                    results.setdefault((i, name), []).append(run(name, pipeline, extra))
            print(f"  round {rnd + 1} of {args.rounds} done", file=sys.stderr)
    finally:
        for proc, _port in procs.values():
            proc.terminate()
        for proc, _port in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)

    def med(i: int, name: str, k: int) -> float:
        return statistics.median(r[k] for r in results[(i, name)])

    version = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2].removeprefix("v=")
    lines = [f"`python scripts/bench_zsets.py --members {args.members} --rounds {args.rounds} "
             f"--requests {args.requests}`: redis-benchmark -n {args.requests} -c "
             f"{args.clients} -r 100000, median of {args.rounds} interleaved rounds, loopback, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, Redis {version} "
             "(appendonly yes, everysec); bitkv --sync interval.", ""]
    if memory:
        lines += [f"Memory: RSS growth per member for {args.members:,} members of one sorted "
                  f"set: bitkv {memory['bitkv']:.0f} bytes, Redis {memory['redis']:.0f} bytes "
                  f"({memory['bitkv'] / memory['redis']:.1f}x).", ""]
    lines += ["| Command | -P | bitkv req/s | Redis req/s | bitkv/Redis | bitkv CPU µs/req "
              "| Redis CPU µs/req | CPU ratio |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for i, (label, pipeline, _extra) in enumerate(ROWS):
        b, r = med(i, "bitkv", 0), med(i, "redis", 0)
        bc, rc = med(i, "bitkv", 1), med(i, "redis", 1)
        lines.append(f"| {label} | {pipeline} | {b:,.0f} | {r:,.0f} | {b / r:.2f} | {bc:.1f} "
                     f"| {rc:.1f} | {bc / rc if rc else float('nan'):.1f}x |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
