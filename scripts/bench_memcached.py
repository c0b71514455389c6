#!/usr/bin/env python3
"""Benchmark ``bitkv serve --memcached-port`` against Debian's memcached, side by side, with a
small asyncio load generator (memtier_benchmark is not packaged in Debian), and print a
Markdown table of set and get at the same concurrency for both.

    python scripts/bench_memcached.py [--rounds 3] [--seconds 2] [--connections 50]
                                      [--pipeline 1 16] [--keys 10000] [--size 100]

Both servers run for the whole benchmark on free loopback ports (bitkv's store in a temporary
directory, ``--sync interval``; memcached with its default 4 threads and 64 MB). Each phase
(set, then get of keys that exist) runs ``--connections`` connections, each sending
``--pipeline`` requests, reading their replies, and again, for ``--seconds``. In every round
the two servers run one right after the other, in alternating order, so that a busy machine
affects both alike; the table shows medians over ``--rounds``. Beside requests per second it
shows each server's CPU time per request (utime + stime from /proc: less disturbed by other
load than requests per second; the load generator's own CPU is not counted). On a 2-core
machine the Python load generator shares the CPU with the server: requests per second are
then bounded by the generator as much as by the server, and CPU per request is the figure to
compare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not start")


def start_memcached() -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("memcached") or "/usr/bin/memcached"
    if not os.path.exists(binary):
        raise SystemExit("memcached is not installed (Debian: apt install memcached)")
    port = free_port()
    args = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "64"]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_port(port, proc, "memcached")
    return proc, port


def start_bitkv(directory: str, log_path: str) -> tuple[subprocess.Popen[bytes], int]:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bitkv.server", "--dir", directory, "--port", "0",
             "--memcached-port", "0", "--sync", "interval"], stdout=log,
            stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        match = re.search(rb"memcached text protocol on \S+ port (\d+)",
                          Path(log_path).read_bytes())
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"bitkv serve exited:\n{Path(log_path).read_text()}")
        time.sleep(0.05)
    raise SystemExit("bitkv serve did not start")


async def _connection(port: int, requests: list[bytes], reply_end: bytes, pipeline: int,
                      deadline: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = 0
    n = len(requests)
    done = 0
    try:
        while time.perf_counter() < deadline:
            batch = [requests[(i + j) % n] for j in range(pipeline)]
            i += pipeline
            writer.write(b"".join(batch))
            seen = 0
            tail = b""
            while seen < pipeline:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    raise ConnectionError("the server closed the connection")
                data = tail + chunk
                seen += data.count(reply_end)
                tail = data[-(len(reply_end) - 1):]
            done += pipeline
    finally:
        writer.close()
        counts.append(done)


def run_phase(port: int, pid: int, requests: list[bytes], reply_end: bytes, connections: int,
              pipeline: int, seconds: float) -> tuple[float, float]:
    """Return (requests per second, server CPU microseconds per request)."""
    counts: list[int] = []
    per_conn = [requests[c::connections] or requests for c in range(connections)]

    async def main() -> None:
        deadline = time.perf_counter() + seconds
        await asyncio.gather(*(_connection(port, per_conn[c], reply_end, pipeline, deadline,
                                           counts) for c in range(connections)))

    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - cpu0
    total = sum(counts)
    return total / elapsed, cpu / max(total, 1) * 1e6


class _Transport:
    """Enough of an asyncio transport for MemcacheConnection: counts what it is given."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        self.sent += sum(len(c) for c in chunks)

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 0)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Host:
    """The server's side of MemcacheConnection, doing nothing: no fsync, no other client."""

    sync_always = False
    closing = False
    refuses_client_writes = False

    def admits_memcache_client(self, conn: object, peer: str) -> bool:
        return True

    def forget_memcache_client(self, conn: object) -> None:
        pass

    def before_memcache_commands(self) -> None:
        pass

    def count_partial(self, conn: object, buffered: int) -> None:
        pass

    def writes_await_fsync(self) -> bool:
        return False

    def hold_for_fsync(self, conn: object) -> None:
        pass

    def request_flush_later(self, delay: float, flush: object) -> None:
        pass


def in_process(requests: int, pipeline: int, size: int) -> None:
    """CPU time per request of the request path alone: a MemcacheConnection fed pipelined
    requests by hand, over a store in a temporary directory, no socket and no event loop."""
    import bitkv
    from bitkv.server.memcache import Memcache, MemcacheConnection

    value = b"x" * size
    with tempfile.TemporaryDirectory() as tmp, bitkv.open(tmp) as db:
        host = _Host()
        conn = MemcacheConnection(host, Memcache(db, host))  # type: ignore[arg-type]
        conn.connection_made(_Transport())
        print(f"`python scripts/bench_memcached.py --in-process --pipeline {pipeline}` "
              f"({bitkv.IMPLEMENTATION} mode, {size}-byte values)\n")
        print("| Request | CPU us/request |\n|---|---:|")
        for name in ("set", "get"):
            batches = []
            for start in range(0, 1000, pipeline):
                keys = range(start, start + pipeline)
                if name == "set":
                    batches.append(b"".join(b"set key:%d 0 0 %d\r\n%b\r\n" % (i, size, value)
                                            for i in keys))
                else:
                    batches.append(b"".join(b"get key:%d\r\n" % i for i in keys))
            rounds = max(1, requests // (len(batches) * pipeline))
            t0 = time.process_time()
            for _ in range(rounds):
                for batch in batches:
                    conn.data_received(batch)
            cpu = time.process_time() - t0
            print(f"| {name.upper()} | {cpu / (rounds * len(batches) * pipeline) * 1e6:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--pipeline", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--keys", type=int, default=10000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--in-process", action="store_true",
                    help="measure bitkv's request path alone (CPU time per request; no "
                         "socket, no memcached) at the first --pipeline depth")
    ap.add_argument("--requests", type=int, default=200_000,
                    help="with --in-process: requests of each kind")
    args = ap.parse_args()
    if args.in_process:
        in_process(args.requests, args.pipeline[0], args.size)
        return

    value = b"x" * args.size
    sets = [b"set key:%d 0 0 %d\r\n%b\r\n" % (i, args.size, value) for i in range(args.keys)]
    gets = [b"get key:%d\r\n" % i for i in range(args.keys)]
    phases = [("set", sets, b"STORED\r\n"), ("get", gets, b"END\r\n")]

    tmp = tempfile.mkdtemp(prefix="bench-memcached-")
    mc_proc, mc_port = start_memcached()
    bk_proc, bk_port = start_bitkv(os.path.join(tmp, "db"), os.path.join(tmp, "bitkv.log"))
    servers = {"bitkv": (bk_port, bk_proc.pid), "memcached": (mc_port, mc_proc.pid)}
    results: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    try:
        for port, _pid in servers.values():  # load every key: each get below finds one
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"".join(sets) + b"version\r\n")
                got = b""
                while b"VERSION" not in got:
                    got += s.recv(1 << 20)
        for r in range(args.rounds):
            for pipeline in args.pipeline:
                for phase, requests, reply_end in phases:
                    order = list(servers) if r % 2 == 0 else list(reversed(servers))
                    for name in order:
                        port, pid = servers[name]
                        results.setdefault((phase, pipeline, name), []).append(
                            run_phase(port, pid, requests, reply_end, args.connections,
                                      pipeline, args.seconds))
    finally:
        for proc in (bk_proc, mc_proc):
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"`python scripts/bench_memcached.py {' '.join(sys.argv[1:])}`".rstrip() + "  ")
    print(f"{platform.node()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"{args.connections} connections, {args.size}-byte values, {args.keys} keys, "
          f"medians of {args.rounds} rounds of {args.seconds:g} s\n")
    print("| Test | Pipeline | bitkv req/s | memcached req/s | ratio | bitkv CPU us/req "
          "| memcached CPU us/req | CPU ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for pipeline in args.pipeline:
        for phase, _, _ in phases:
            bk = results[(phase, pipeline, "bitkv")]
            mc = results[(phase, pipeline, "memcached")]
            bk_rps = statistics.median(x[0] for x in bk)
            mc_rps = statistics.median(x[0] for x in mc)
            bk_cpu = statistics.median(x[1] for x in bk)
            mc_cpu = statistics.median(x[1] for x in mc)
            print(f"| {phase.upper()} | {pipeline} | {bk_rps:,.0f} | {mc_rps:,.0f} | "
                  f"{bk_rps / mc_rps:.2f}x | {bk_cpu:.1f} | {mc_cpu:.1f} | "
                  f"{bk_cpu / mc_cpu:.1f}x |")


if __name__ == "__main__":
    main()
