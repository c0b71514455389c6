#!/usr/bin/env python3
"""Lists in `bitkv serve` against Redis 7: redis-benchmark's list tests side by side, and the
memory one list element costs.

* speed: ``redis-benchmark -t lpush,rpush,lpop,rpop,lrange_100,lrange_600 -P 16`` against
  ``bitkv serve`` (``--sync interval``) and Redis (``appendonly yes, appendfsync everysec``),
  in ``--rounds`` interleaved rounds (the two servers one right after the other, the order
  alternating); the table shows medians of requests per second and of each server's CPU time
  per request (from /proc: less disturbed by a busy machine than requests per second);
* memory (``--elements N``): each server's RSS before and after RPUSHing N elements of 8
  bytes to one list (100 per command), divided by N.

    python scripts/bench_lists.py [--rounds 3] [--requests 100000] [--elements 1000000]

Needs redis-server, redis-benchmark and redis-cli (Debian: redis-server, redis-tools).
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

from bench_server import TICK, cpu_ticks, free_port, rss_bytes, wait_ready

TESTS = ["LPUSH", "RPUSH", "LPOP", "RPOP", "LRANGE_100", "LRANGE_600"]


def fill(port: int, elements: int) -> None:
    """RPUSH ``elements`` 8-byte values to the list ``big``, 100 per command, pipelined."""
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    p = r.pipeline(transaction=False)
    for start in range(0, elements, 100):
        p.rpush("big", *(b"v%07d" % i for i in range(start, min(start + 100, elements))))
        if len(p) >= 100:
            p.execute()
    p.execute()
    if r.llen("big") != elements:
        raise SystemExit(f"the list on {port} has {r.llen('big')} elements, not {elements}")
    r.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100000, help="per run (redis-benchmark -n)")
    ap.add_argument("--clients", type=int, default=50, help="redis-benchmark -c")
    ap.add_argument("--pipeline", type=int, default=16, help="redis-benchmark -P")
    ap.add_argument("--elements", type=int, default=0,
                    help="also measure the RSS growth of one list of this many elements")
    ap.add_argument("--python", default=sys.executable, help="the interpreter for bitkv serve")
    args = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y redis-server redis-tools")

    work = tempfile.mkdtemp(prefix="bitkv-bench-lists.")
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        port = free_port()
        log = open(os.path.join(work, "bitkv.log"), "wb")  # noqa: SIM115
        procs["bitkv"] = (subprocess.Popen(
            [args.python, "-m", "bitkv.server", "--dir", os.path.join(work, "bitkv"), "--port",
             str(port), "--sync", "interval"], stdout=log, stderr=log), port)
        port = free_port()
        os.makedirs(os.path.join(work, "redis"))
        procs["redis"] = (subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--dir", os.path.join(work, "redis"),
             "--daemonize", "no", "--logfile", os.path.join(work, "redis.log")]), port)
        for proc, port in procs.values():
            wait_ready(port, proc)

        memory: dict[str, float] = {}
        if args.elements:
            for name, (proc, port) in procs.items():
                before = rss_bytes(proc.pid)
                fill(port, args.elements)
                memory[name] = (rss_bytes(proc.pid) - before) / args.elements
                subprocess.run(["redis-cli", "-p", str(port), "del", "big"], check=True,
                               capture_output=True)

        def run(name: str) -> dict[str, tuple[float, float]]:
            """req/s and CPU µs per request of each test (one redis-benchmark per test, so
            that the CPU time is the test's own)."""
            proc, port = procs[name]
            got = {}
            for test in TESTS:
                before = cpu_ticks(proc.pid)
                out = subprocess.run(
                    ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test.lower(),
                     "-n", str(args.requests), "-c", str(args.clients), "-d", "8",
                     "-P", str(args.pipeline), "--csv"],
                    capture_output=True, text=True, check=True).stdout
                after = cpu_ticks(proc.pid)
                rows = [rec for rec in csv.reader(io.StringIO(out)) if rec and rec[0] != "test"]
                # LRANGE_n is run after an LPUSH that fills the list: its CPU time too
                cpu_us = (after - before) * 1e6 / TICK / (args.requests * len(rows))
                for rec in rows:
                    if rec[0].split()[0] == test:
                        got[test] = (float(rec[1]), cpu_us)
                if test not in got:
                    raise SystemExit(f"no {test} result from redis-benchmark:\n{out}")
            return got

        results: dict[str, list[dict[str, tuple[float, float]]]] = {"bitkv": [], "redis": []}
        for rnd in range(args.rounds):
            for name in (("bitkv", "redis") if rnd % 2 == 0 else ("redis", "bitkv")):
                results[name].append(run(name))
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

    def med(name: str, test: str, k: int) -> float:
        return statistics.median(r[test][k] for r in results[name])

    lines = ["| Test | bitkv req/s | Redis req/s | bitkv/Redis | bitkv CPU µs/req "
             "| Redis CPU µs/req | CPU ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    for test in TESTS:
        b, r = med("bitkv", test, 0), med("redis", test, 0)
        bc, rc = med("bitkv", test, 1), med("redis", test, 1)
        lines.append(f"| {test} | {b:,.0f} | {r:,.0f} | {b / r:.2f} | {bc:.1f} | {rc:.1f} | "
                     f"{bc / rc:.1f}x |")
    version = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2].removeprefix("v=")
    text = (f"`redis-benchmark -t <test> -n {args.requests} -c {args.clients} -d 8 "
            f"-P {args.pipeline}`, median of {args.rounds} interleaved rounds, loopback, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}, Redis {version} "
            "(`appendonly yes`, `appendfsync everysec`); bitkv `--sync interval`. CPU µs/req: "
            "the server process's CPU time during the run divided by its requests (an "
            "LRANGE run includes the LPUSHes redis-benchmark fills the list with).\n\n"
            + "\n".join(lines) + "\n")
    if memory:
        text += (f"\nMemory: RSS growth for one list of {args.elements:,} 8-byte elements: "
                 + ", ".join(f"{name} {per:.0f} bytes per element"
                             for name, per in memory.items()) + "\n")
    print(text)


if __name__ == "__main__":
    main()
