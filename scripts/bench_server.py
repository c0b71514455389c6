#!/usr/bin/env python3
"""Benchmark `bitkv serve` against Redis 7 with redis-benchmark, side by side, and print the
rows of issue 14 as a Markdown table:

* SET at ``-P 1`` and ``-P 16``: ``bitkv serve --sync always`` against Redis with
  ``appendonly yes, appendfsync always`` (target: at least 0.9x);
* GET and SET at ``-P 1`` and ``-P 16``: ``bitkv serve`` (``--sync interval``) against Redis
  with ``appendfsync everysec`` (target at ``-P 16``: at least 0.8x).

    python scripts/bench_server.py [--rounds 3] [--requests 100000] [--clients 50] [--out F]

Four servers run for the whole benchmark, each on its own free loopback port (the stores and
Redis's AOF in a temporary directory). Each row is measured in ``--rounds`` rounds; in every
round the two servers of a row run one right after the other, in alternating order, so that a
busy machine affects both alike; the table shows medians. It also shows each server's CPU
time per request (from /proc: less disturbed by a busy machine than requests per second).
Needs redis-server, redis-benchmark and redis-cli (Debian: redis-server, redis-tools).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    test: str  # "SET" or "GET"
    pipeline: int
    bitkv: str  # the server names below
    redis: str
    target: float | None


ROWS = [
    Row("SET", 1, "bitkv-always", "redis-always", 0.9),
    Row("SET", 16, "bitkv-always", "redis-always", 0.9),
    Row("SET", 1, "bitkv", "redis-everysec", None),
    Row("GET", 1, "bitkv", "redis-everysec", None),
    Row("SET", 16, "bitkv", "redis-everysec", 0.8),
    Row("GET", 16, "bitkv", "redis-everysec", 0.8),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with {proc.returncode}")
        ok = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), "ping"],
                            capture_output=True).returncode == 0
        if ok:
            return
        time.sleep(0.1)
    raise SystemExit(f"the server on port {port} did not start")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15 of stat(5))


def rss_bytes(pid: int) -> int:
    """The resident set of process ``pid`` (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"no VmRSS for {pid}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=100000, help="per run (redis-benchmark -n)")
    ap.add_argument("--clients", type=int, default=50, help="redis-benchmark -c")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--python", default=sys.executable, help="the interpreter for bitkv serve")
    args = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y redis-server redis-tools")

    work = tempfile.mkdtemp(prefix="bitkv-bench-server.")
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, sync in (("bitkv", "interval"), ("bitkv-always", "always")):
            port = free_port()
            log = open(os.path.join(work, f"{name}.log"), "wb")  # noqa: SIM115
            procs[name] = (subprocess.Popen(
                [args.python, "-m", "bitkv.server", "--dir", os.path.join(work, name),
                 "--port", str(port), "--sync", sync], stdout=log, stderr=log), port)
        for name, fsync in (("redis-everysec", "everysec"), ("redis-always", "always")):
            port = free_port()
            os.makedirs(os.path.join(work, name))
            procs[name] = (subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--appendonly",
                 "yes", "--appendfsync", fsync, "--save", "", "--dir", os.path.join(work, name),
                 "--daemonize", "no", "--logfile", os.path.join(work, f"{name}.log")]), port)
        for proc, port in procs.values():
            wait_ready(port, proc)
        loop = "?"
        with open(os.path.join(work, "bitkv.log"), errors="replace") as f:
            for line in f:
                if "loop=" in line:
                    loop = line.split("loop=")[1].split(",")[0]

        def run(name: str, test: str, pipeline: int) -> tuple[float, float]:
            proc, port = procs[name]
            before = cpu_ticks(proc.pid)
            out = subprocess.run(
                ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test.lower(),
                 "-n", str(args.requests), "-c", str(args.clients), "-d", "100",
                 "-r", "100000", "-P", str(pipeline), "--csv"],
                capture_output=True, text=True, check=True).stdout
            after = cpu_ticks(proc.pid)
            for rec in csv.reader(io.StringIO(out)):
                if rec and rec[0] == test:
                    cpu_us = (after - before) * 1e6 / TICK / args.requests
                    return float(rec[1]), cpu_us
            raise SystemExit(f"no {test} result from redis-benchmark:\n{out}")

        # SET first in each round, so that most GETs find their key.
        results: dict[tuple[int, str], list[tuple[float, float]]] = {}
        order = sorted(range(len(ROWS)), key=lambda i: ROWS[i].test != "SET")
        for rnd in range(args.rounds):
            for i in order:
                row = ROWS[i]
                pair = (row.bitkv, row.redis) if rnd % 2 == 0 else (row.redis, row.bitkv)
                for name in pair:
                    results.setdefault((i, name), []).append(run(name, row.test, row.pipeline))
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

    lines = [
        "| Test | Pipeline | bitkv | Redis | bitkv req/s | Redis req/s | bitkv/Redis | Target "
        "| bitkv CPU µs/req | Redis CPU µs/req |",
        "|---|---:|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for i, row in enumerate(ROWS):
        b, r = med(i, row.bitkv, 0), med(i, row.redis, 0)
        ratio = b / r
        target = "—" if row.target is None else \
            f">= {row.target} ({'ok' if ratio >= row.target else 'below'})"
        bitkv_sync = "always" if row.bitkv.endswith("always") else "interval"
        redis_fsync = row.redis.removeprefix("redis-")
        lines.append(
            f"| {row.test} | {row.pipeline} | `--sync {bitkv_sync}` | `appendfsync "
            f"{redis_fsync}` | {b:,.0f} | {r:,.0f} | {ratio:.2f} | {target} | "
            f"{med(i, row.bitkv, 1):.1f} | {med(i, row.redis, 1):.1f} |")
    version = subprocess.run(["redis-server", "--version"], capture_output=True,
                             text=True).stdout.split()[2].removeprefix("v=")
    header = (
        f"`redis-benchmark -t set|get -n {args.requests} -c {args.clients} -d 100 -r 100000 "
        f"-P 1|16`, median of {args.rounds} interleaved rounds, loopback, {os.cpu_count()} "
        f"CPUs, Python {platform.python_version()} (bitkv's loop: {loop}), Redis {version} "
        "with `appendonly yes`. CPU µs/req: the server process's CPU time during the run "
        "divided by its requests.\n")
    text = header + "\n" + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
