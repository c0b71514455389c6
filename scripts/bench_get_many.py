#!/usr/bin/env python3
"""get vs get_many, interleaved in one process, by store size (docs/architecture.md, "The
batched get").

    python scripts/bench_get_many.py --scale 1M,4M,16M
    python scripts/bench_get_many.py --scale 4M --pythonpath /tmp/g8:/tmp/g16:/tmp/g32

For each size a store of 16-byte keys and values is built as ``bench.py --scale`` builds it
(bench_workload.scale_build), then for each tree (``--pythonpath``: one entry per tree, e.g.
builds of the extension with other ``-DGET_MANY_GROUP=`` values; default: this checkout) a
fresh process opens it, reads the same random keys once with ``get`` (which maps their
pages), then ``--rounds`` rounds of one pass with ``get`` and one with ``get_many`` in
batches of ``--batch`` (the order alternating per round), trees alternating per run. Each
pass is timed in CPU time of the process (a shared machine inflates it less than the wall
clock); the table gives medians, per key, and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def parse_keys(text: str) -> int:
    t = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """The child: open the store, warm pass, then the interleaved rounds."""
    import bitkv

    keys, gets, batch = cfg["keys"], cfg["gets"], cfg["batch"]
    rng = random.Random(cfg["seed"])
    read = [b"key:%012d" % rng.randrange(keys) for _ in range(gets)]
    batches = [read[i : i + batch] for i in range(0, gets, batch)]
    cpu = time.process_time
    with bitkv.open(str(cfg["dir"])) as db:
        get, get_many = db.get, db.get_many

        def by_get() -> float:
            c0 = cpu()
            for k in read:
                get(k)
            return cpu() - c0

        def by_get_many() -> float:
            c0 = cpu()
            for b in batches:
                get_many(b)
            return cpu() - c0

        by_get()  # maps the pages both passes read
        rounds = []
        for r in range(cfg["rounds"]):
            if r % 2:
                many, one = by_get_many(), by_get()
            else:
                one, many = by_get(), by_get_many()
            rounds.append((one / gets * 1e6, many / gets * 1e6))
    return {"implementation": bitkv.IMPLEMENTATION, "bitkv": bitkv.__file__, "rounds": rounds}


def run(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="1M,4M", help="store sizes (default 1M,4M)")
    ap.add_argument("--pythonpath", default="",
                    help="trees to compare, separated by ':' (default: this checkout)")
    ap.add_argument("--gets", type=int, default=200_000, help="keys read per pass")
    ap.add_argument("--batch", type=int, default=1000, help="keys per get_many call")
    ap.add_argument("--rounds", type=int, default=5, help="get/get_many pass pairs")
    ap.add_argument("--runs", type=int, default=1, help="processes per tree and size")
    ap.add_argument("--workdir", default=None, help="where the stores go (default: a temp dir)")
    args = ap.parse_args(argv)
    trees = [p for p in args.pythonpath.split(":") if p] or [ROOT]
    work = args.workdir or tempfile.mkdtemp(prefix="bitkv-get-many-")
    print(f"load average at start: {os.getloadavg()}", file=sys.stderr)
    print("| keys | tree | get, CPU (us/key) | get_many, CPU (us/key) | get ÷ get_many |")
    print("|---:|---|---:|---:|---:|")
    for keys in sorted(parse_keys(x) for x in args.scale.split(",")):
        sdir = os.path.join(work, f"s{keys}")
        cfg = {"mode": "scale-build", "dir": sdir, "keys": keys, "value_size": 16, "seed": 1,
               "backend": "bitkv", "timeout": 3600}
        subprocess.run([sys.executable, os.path.join(HERE, "bench_workload.py"),
                        json.dumps(cfg)], check=True, capture_output=True, cwd=ROOT)
        results: dict[str, list[tuple[float, float]]] = {t: [] for t in trees}
        for run_no in range(args.runs):
            for tree in trees if run_no % 2 == 0 else trees[::-1]:
                child = {"dir": sdir, "keys": keys, "gets": min(keys, args.gets),
                         "batch": args.batch, "rounds": args.rounds, "seed": 2}
                env = dict(os.environ, PYTHONPATH=tree)
                out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                      json.dumps(child)], check=True, capture_output=True,
                                     text=True, env=env, cwd="/")
                got = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{keys:,} {tree}: {got['bitkv']} ({got['implementation']}): "
                      f"{got['rounds']}", file=sys.stderr)
                results[tree] += [(r[0], r[1]) for r in got["rounds"]]
        for tree, rounds in results.items():
            one = statistics.median(r[0] for r in rounds)
            many = statistics.median(r[1] for r in rounds)
            ratio = statistics.median(r[0] / r[1] for r in rounds)
            label = f"{keys // 1_000_000}M" if keys % 1_000_000 == 0 else f"{keys:,}"
            print(f"| {label} | {tree} | {one:.3f} | {many:.3f} | {ratio:.2f}x |")
        shutil.rmtree(sdir, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()}", file=sys.stderr)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(measure(json.loads(sys.argv[2]))))
    else:
        sys.exit(run())
