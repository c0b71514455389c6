#!/usr/bin/env python3
"""Hashes and sets in `bitkv serve` against Redis 7: per-command speed with redis-benchmark,
and memory per element, printed as Markdown tables (docs/cluster.md, issue 17).

    python scripts/bench_collections.py [--rounds 3] [--requests 200000] [--elements 1000000]

Speed: each command runs with ``redis-benchmark -n N -c 50 -P 16 -r 100000`` against both
servers, one right after the other in alternating order, ``--rounds`` times; the table shows
medians of requests per second and of each server's CPU time per request (from /proc: less
disturbed by a busy machine than requests per second). bitkv runs with ``--sync interval``,
Redis with ``appendonly yes, appendfsync everysec`` (the same durability).

Memory: a fresh server of each kind gets one hash of ``--elements`` fields (``field:N`` ->
``value:N``) and then one set of as many members (``member:N``), written 1000 to a command;
the table shows the growth of each process's resident set size per element.
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
from bench_server import cpu_ticks, free_port, rss_bytes, wait_ready

# (label, redis-benchmark arguments after the options): -t where it has the test, else the
# command itself (__rand_int__ is replaced by a random number below -r).
TESTS: list[tuple[str, list[str]]] = [
    ("SET (a string, for reference)", ["-t", "set"]),
    ("GET (a string, for reference)", ["-t", "get"]),
    ("HSET", ["-t", "hset"]),
    ("HGET", ["HGET", "myhash", "element:__rand_int__"]),
    ("HINCRBY", ["HINCRBY", "counters", "f:__rand_int__", "1"]),
    ("SADD", ["-t", "sadd"]),
    ("SISMEMBER", ["SISMEMBER", "myset", "element:__rand_int__"]),
    ("SPOP", ["-t", "spop"]),
]


def start(kind: str, work: str, python: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    d = os.path.join(work, f"{kind}-{port}")
    os.makedirs(d)
    log = open(d + ".log", "wb")  # noqa: SIM115 - lives as long as the process
    if kind == "bitkv":
        argv = [python, "-m", "bitkv.server", "--dir", d, "--port", str(port)]
    else:
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly",
                "yes", "--appendfsync", "everysec", "--save", "", "--dir", d]
    proc = subprocess.Popen(argv, stdout=log, stderr=log)
    wait_ready(port, proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fill(port: int, command: str, key: str, n: int, pairs: bool) -> None:
    client = redis.Redis(port=port)
    pipe = client.pipeline(transaction=False)
    for start_at in range(0, n, 1000):
        items: list[str] = []
        for i in range(start_at, min(start_at + 1000, n)):
            items += [f"field:{i}", f"value:{i}"] if pairs else [f"member:{i}"]
        pipe.execute_command(command, key, *items)
        if start_at % 50_000 == 0:
            pipe.execute()
    pipe.execute()
    client.close()


def memory(work: str, python: str, n: int) -> list[str]:
    lines = ["| Type | bitkv bytes/element | Redis bytes/element |", "|---|--:|--:|"]
    for label, command, pairs in (("hash", "HSET", True), ("set", "SADD", False)):
        per: dict[str, float] = {}
        for kind in ("bitkv", "redis"):
            proc, port = start(kind, work, python)
            try:
                time.sleep(0.5)
                before = rss_bytes(proc.pid)
                fill(port, command, "big", n, pairs)
                time.sleep(0.5)
                per[kind] = (rss_bytes(proc.pid) - before) / n
            finally:
                stop(proc)
        lines.append(f"| {label} | {per['bitkv']:.0f} | {per['redis']:.0f} |")
    return lines


def speed(work: str, python: str, rounds: int, requests: int) -> list[str]:
    procs = {kind: start(kind, work, python) for kind in ("bitkv", "redis")}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        def run(kind: str, label: str, test: list[str]) -> tuple[float, float]:
            proc, port = procs[kind]
            before = cpu_ticks(proc.pid)
            out = subprocess.run(
                ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-n", str(requests),
                 "-c", "50", "-P", "16", "-r", "100000", "--csv", *test],
                capture_output=True, text=True, check=True).stdout
            after = cpu_ticks(proc.pid)
            for rec in list(csv.reader(io.StringIO(out)))[1:]:
                if rec:
                    return float(rec[1]), (after - before) * 1e6 / os.sysconf(
                        "SC_CLK_TCK") / requests
            raise SystemExit(f"no result for {label}:\n{out}")

        for rnd in range(rounds):
            for label, test in TESTS:
                kinds = ("bitkv", "redis") if rnd % 2 == 0 else ("redis", "bitkv")
                for kind in kinds:
                    results.setdefault((label, kind), []).append(run(kind, label, test))
            print(f"  round {rnd + 1} of {rounds} done", file=sys.stderr)
    finally:
        for proc, _port in procs.values():
            stop(proc)

    def med(label: str, kind: str, k: int) -> float:
        return statistics.median(r[k] for r in results[(label, kind)])

    lines = ["| Command | bitkv req/s | Redis req/s | bitkv/Redis | bitkv CPU µs/req | "
             "Redis CPU µs/req |", "|---|--:|--:|--:|--:|--:|"]
    for label, _test in TESTS:
        b, r = med(label, "bitkv", 0), med(label, "redis", 0)
        lines.append(f"| {label} | {b:,.0f} | {r:,.0f} | {b / r:.2f} | "
                     f"{med(label, 'bitkv', 1):.1f} | {med(label, 'redis', 1):.1f} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--elements", type=int, default=1_000_000)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--python", default=sys.executable, help="the interpreter for bitkv serve")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bitkv-bench-collections.")
    try:
        version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                 text=True).stdout.split()[2].removeprefix("v=")
        print(f"Redis {version}, Python {platform.python_version()}, {os.cpu_count()} CPUs\n")
        if not args.skip_speed:
            print(f"`redis-benchmark -n {args.requests} -c 50 -P 16 -r 100000`, median of "
                  f"{args.rounds} interleaved rounds\n")
            print("\n".join(speed(work, args.python, args.rounds, args.requests)) + "\n")
        if not args.skip_memory:
            print(f"RSS growth for {args.elements:,} elements (1000 per command)\n")
            print("\n".join(memory(work, args.python, args.elements)) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
