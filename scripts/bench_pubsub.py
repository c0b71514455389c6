#!/usr/bin/env python3
"""Server CPU per PUBLISH: `bitkv serve` against redis-server, with 0, 1 and 10 subscribers.

    python scripts/bench_pubsub.py                  # N=200000 PUBLISHes, pipelined 16
    python scripts/bench_pubsub.py --n 50000 --subscribers 0 5 --rounds 3

Each round starts a fresh `bitkv serve` (this interpreter's bitkv) and a fresh redis-server
(no persistence), attaches the subscribers (`redis-cli subscribe ch`, which read everything),
runs `redis-benchmark -P 16 publish ch <64 bytes>` and reads the server's CPU time from
/proc. Needs redis-server, redis-cli and redis-benchmark (Debian: redis-server, redis-tools).
The figures in docs/cluster.md (Pub/Sub) come from it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port: int) -> None:
    for _ in range(300):
        done = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True)
        if done.stdout.strip() == b"PONG":
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing answers on port {port}")


def measure(pid: int, port: int, subscribers: int, n: int) -> float:
    """Server CPU microseconds per PUBLISH."""
    readers = [subprocess.Popen(["redis-cli", "-p", str(port), "subscribe", "ch"],
                                stdout=subprocess.DEVNULL) for _ in range(subscribers)]
    try:
        time.sleep(0.5)
        before = cpu_seconds(pid)
        subprocess.run(["redis-benchmark", "-p", str(port), "-n", str(n), "-P", "16", "-q",
                        "publish", "ch", "x" * 64], capture_output=True, check=True)
        return (cpu_seconds(pid) - before) * 1e6 / n
    finally:
        for r in readers:
            r.terminate()
            r.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="PUBLISHes per measurement")
    parser.add_argument("--subscribers", type=int, nargs="+", default=[0, 1, 10])
    parser.add_argument("--rounds", type=int, default=2, help="the median is reported")
    args = parser.parse_args()
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install -y redis-server redis-tools")
    print("| Subscribers | bitkv CPU µs/PUBLISH | Redis CPU µs/PUBLISH |")
    print("|---:|---:|---:|")
    for subscribers in args.subscribers:
        results: dict[str, list[float]] = {"bitkv": [], "redis": []}
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="bitkv-bench-pubsub-") as work:
                servers = {
                    "bitkv": [sys.executable, "-m", "bitkv.server", "--dir", f"{work}/db"],
                    "redis": ["redis-server", "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", work],
                }
                for name, command in servers.items():  # interleaved: noise hits both
                    port = free_port()
                    proc = subprocess.Popen([*command, "--port", str(port)],
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
                    try:
                        wait_ready(port)
                        results[name].append(measure(proc.pid, port, subscribers, args.n))
                    finally:
                        proc.terminate()
                        proc.wait(30)
        print(f"| {subscribers} | {statistics.median(results['bitkv']):.1f} | "
              f"{statistics.median(results['redis']):.1f} |", flush=True)


if __name__ == "__main__":
    main()
