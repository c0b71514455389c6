"""Prefix listing on a large store: ``db.keys(prefix).snapshot()``, ``len(db.keys(prefix))``
and ``bitkv serve``'s start-up (which lists the collections' reserved prefix), each measured in
a fresh process per figure, for two source trees side by side (before and after a change).

    python scripts/bench_prefix.py build /tmp/prefix-store --keys 4000000
    python scripts/bench_prefix.py compare /tmp/prefix-store --before /tmp/base --after . \\
        --rounds 3

``build`` writes ``keys`` keys as ``bench.py --scale`` does (``key:%012d``, 100-byte values,
bench_workload.scale_build), then one key in a thousand more under ``user:`` (the prefix
listed: 0.1% of the keys). ``compare`` runs every measurement once per round for each tree,
alternating which tree goes first, and prints the median of the rounds: CPU time of the
process (user + system) and its peak resident set. A tree is put first on PYTHONPATH, so each
child imports that tree's ``bitkv`` (build its extension in place first:
``python setup.py build_ext --inplace``).

Figures: ``listing`` is CPU time for one call after the store is open, and the peak RSS
growth during that call (the kernel's high-water mark reset just before it, through
/proc/self/clear_refs); ``serve`` is the server process from exec to its first PONG (CPU time
of the process, and its VmHWM at that moment).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PREFIX = b"user:"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _status_kb(field: str, pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field} in /proc/{pid}/status")


def _cpu_secs(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def build(path: str, keys: int) -> None:
    from bench_workload import scale_build

    import bitkv

    out = scale_build({"dir": path, "keys": keys, "value_size": 100, "seed": 1})
    rare = keys // 1000
    with bitkv.open(path) as db, db.batch() as b:
        for i in range(rare):
            b.put(PREFIX + b"%08d" % i, b"v" * 100)
    print(json.dumps({**out, "rare_keys": rare, "prefix": PREFIX.decode()}))


OPS = ("keys(user:).snapshot()", "len(keys(user:))", "keys().snapshot()")


def listing(path: str, name: str) -> None:
    """One child: open, then time the operation ``name`` once. One operation per process:
    memory freed by an earlier one would be reused by the next, hiding its growth."""
    import bitkv

    db = bitkv.open(path, readonly=True)
    ops = {"keys(user:).snapshot()": lambda: db.keys(PREFIX).snapshot(),
           "len(keys(user:))": lambda: len(db.keys(PREFIX)),
           "keys().snapshot()": lambda: db.keys().snapshot()}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    rss0 = _status_kb("VmRSS")
    t0 = time.process_time()
    got = ops[name]()
    cpu = time.process_time() - t0
    peak = _status_kb("VmHWM") - rss0
    size = got if isinstance(got, int) else len(got)
    db.close()
    print(json.dumps({"implementation": bitkv.IMPLEMENTATION, "file": bitkv.__file__,
                      "cpu_s": cpu, "peak_growth_kb": peak, "size": size}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def serve_startup(tree: str, path: str) -> dict[str, Any]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": tree}
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bitkv.server", "--dir", path, "--port",
                             str(port)], env=env, cwd="/", stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while not _ping(port):
            if proc.poll() is not None:
                raise SystemExit(f"bitkv serve ({tree}) exited with {proc.returncode}")
            if time.monotonic() - t0 > 600:
                raise SystemExit(f"bitkv serve ({tree}) not ready after 600 s")
            time.sleep(0.02)
        wall = time.monotonic() - t0
        return {"cpu_s": _cpu_secs(proc.pid), "wall_s": wall,
                "peak_rss_kb": _status_kb("VmHWM", proc.pid)}
    finally:
        proc.terminate()  # the one server this function started
        proc.wait()


def _child_listing(tree: str, path: str, name: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "listing", path, name],
                         env=env, cwd="/", capture_output=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    if not result["file"].startswith(os.path.abspath(tree)):
        raise SystemExit(f"{tree}: the child imported {result['file']}")
    return result


def compare(path: str, trees: dict[str, str], rounds: int) -> None:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            row = {op: _child_listing(trees[name], path, op) for op in OPS}
            row["serve"] = serve_startup(trees[name], path)
            runs[name].append(row)
            print(f"round {r + 1} {name}: {json.dumps(row)}", file=sys.stderr)
    first = runs[next(iter(trees))][0]
    print(f"| figure (median of {rounds} rounds) | " + " | ".join(trees) + " | after / before |")
    print("|---|" + "---:|" * (len(trees) + 1))
    for op in OPS:
        for field, unit, scale in (("cpu_s", "CPU ms", 1000),
                                   ("peak_growth_kb", "peak RSS growth MiB", 1 / 1024)):
            cells = [statistics.median(run[op][field] for run in runs[t]) * scale
                     for t in trees]
            ratio = f"{cells[-1] / cells[0]:.3f}" if cells[0] else "-"
            print(f"| `{op}` ({first[op]['size']:,} keys), {unit} | "
                  + " | ".join(f"{c:,.1f}" for c in cells) + f" | {ratio} |")
    for field, unit in (("cpu_s", "CPU s"), ("wall_s", "wall s"), ("peak_rss_kb", "peak RSS GiB")):
        scale = 1 / 1024 / 1024 if field == "peak_rss_kb" else 1
        cells = [statistics.median(run["serve"][field] for run in runs[t]) * scale
                 for t in trees]
        print(f"| `bitkv serve` to first PONG, {unit} | "
              + " | ".join(f"{c:,.2f}" for c in cells) + f" | {cells[-1] / cells[0]:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("dir")
    b.add_argument("--keys", type=int, default=4_000_000)
    lst = sub.add_parser("listing")
    lst.add_argument("dir")
    lst.add_argument("op", choices=OPS)
    c = sub.add_parser("compare")
    c.add_argument("dir")
    c.add_argument("--before", required=True, help="source tree before the change")
    c.add_argument("--after", default=os.path.dirname(HERE), help="source tree after it")
    c.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.cmd == "build":
        build(args.dir, args.keys)
    elif args.cmd == "listing":
        listing(args.dir, args.op)
    else:
        compare(args.dir, {"before": args.before, "after": args.after}, args.rounds)


if __name__ == "__main__":
    main()
