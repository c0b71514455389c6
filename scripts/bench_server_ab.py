#!/usr/bin/env python3
"""A/B the server's hot path: two `bitkv serve` trees side by side under redis-benchmark.

    python scripts/bench_server_ab.py A_DIR B_DIR [--rounds 5] [--requests 200000] [-P 16]

A_DIR and B_DIR are source trees (each with its compiled extension built in place, e.g. a
`git archive REV | tar -x` of the baseline and this worktree); each server runs with that
tree first on PYTHONPATH. In every round each test (SET and GET, or those of --tests) runs
against A then B, or B then A (alternating), so that a busy machine affects both alike.
Printed per test: the median requests/s of each and B/A, and the median CPU time per request
of each server (from /proc, less disturbed by other load than requests/s) and B/A.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

# The helpers of the benchmark against Redis (this script's directory is on sys.path).
from bench_server import TICK, cpu_ticks, free_port, wait_ready


def run(port: int, test: str, requests: int, pipeline: int, clients: int) -> float:
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", test.lower(), "-n",
                          str(requests), "-P", str(pipeline), "-c", str(clients), "-q",
                          "--csv"], capture_output=True, text=True, check=True).stdout
    line = next(row for row in out.splitlines() if row.startswith(f'"{test}"'))
    return float(line.split(",")[1].strip('"'))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=200000)
    ap.add_argument("-P", "--pipeline", type=int, default=16)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--tests", default="SET,GET",
                    help="comma-separated redis-benchmark tests (e.g. SET,INCR)")
    args = ap.parse_args()
    tests = [t.strip().upper() for t in args.tests.split(",") if t.strip()]
    work = tempfile.mkdtemp(prefix="bitkv-ab-")
    servers: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for name, tree in (("A", args.a), ("B", args.b)):
            port = free_port()
            env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
            proc = subprocess.Popen([sys.executable, "-m", "bitkv.server", "--dir",
                                     os.path.join(work, name), "--port", str(port)],
                                    env=env, cwd=work, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            servers[name] = (port, proc)
            wait_ready(port, proc)
        rates: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            for test in tests:
                order = ("A", "B") if r % 2 == 0 else ("B", "A")
                for name in order:
                    port, proc = servers[name]
                    before = cpu_ticks(proc.pid)
                    rate = run(port, test, args.requests, args.pipeline, args.clients)
                    used = (cpu_ticks(proc.pid) - before) / TICK
                    rates.setdefault((test, name), []).append(rate)
                    cpu.setdefault((test, name), []).append(used / args.requests * 1e6)
                    print(f"round {r + 1} {test} {name}: {rate:,.0f} req/s, "
                          f"{used / args.requests * 1e6:.2f} us CPU/req", flush=True)
        print(f"-P {args.pipeline}, -c {args.clients}, -n {args.requests}, {args.rounds} rounds "
              f"(medians); A={args.a} B={args.b}")
        print("| test | A req/s | B req/s | B/A | A CPU us/req | B CPU us/req | B/A CPU |")
        print("|---|---|---|---|---|---|---|")
        for test in tests:
            ra, rb = (statistics.median(rates[(test, n)]) for n in "AB")
            ca, cb = (statistics.median(cpu[(test, n)]) for n in "AB")
            print(f"| {test} | {ra:,.0f} | {rb:,.0f} | {rb / ra:.3f} | {ca:.2f} | {cb:.2f} | "
                  f"{cb / ca:.3f} |")
    finally:
        for _port, proc in servers.values():
            proc.terminate()
            proc.wait(20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
