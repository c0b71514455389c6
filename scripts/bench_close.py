"""The CPU time of a clean close at scale: the checkpoint of the active segment (issue 14).

    python scripts/bench_close.py --scale 1M,4M,16M --workdir /tmp/stores \\
        --modes native,tree=/tmp/base --rounds 3

For each size a store is built once (``bench_workload.scale_build``: ``key:%012d`` keys written
once through ``db.batch()`` with 16-byte values, as ``bench.py --scale`` builds it) at
``WORKDIR/s<keys>`` and kept there, to be measured again by the next run. Each measurement is a
fresh process that opens the store (``auto_compact=False``, so no compaction runs meanwhile),
overwrites ``--puts`` random keys with ``db.put`` (one call each: the active segment then holds
that many records more, above the checkpoint's 1 MiB floor; segments of up to 1 GiB, so that
it does not rotate) and times ``close()``: the CPU time of
the process (``time.process_time``; the maintenance thread included) and of the main thread
(``time.thread_time``, which a machine shared with other jobs inflates less), and wall time.
The close fsyncs the active segment and writes its checkpoint hint.

Modes: ``native`` (this tree), ``python`` (``BITKV_PURE_PYTHON=1``), ``tree=PATH`` (native
mode of the bitkv package in PATH, e.g. an older commit's ``git archive`` with its extension
built in place: the before of a before/after). The modes are interleaved within each round,
in alternating order (ABBA: each close leaves the active segment ``--puts`` records longer),
and the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_reopen import mode_env, parse_size


def measure(path: str, keys: int, puts: int, seed: int) -> dict[str, Any]:
    """Open ``path``, overwrite ``puts`` random keys of the ``keys`` there, time close();
    count the entries of the checkpoint it wrote (the active segment's keys)."""
    from bench_workload import scale_key

    import bitkv

    rng = random.Random(seed)
    from bitkv import hint
    from bitkv import segment as seg_mod

    # Segments of up to 1 GiB: no rotation during the puts, so every close of the run
    # checkpoints the same segment, which grows by ``puts`` records a round, for every mode
    # alike (a rotation would leave one mode a near-empty active segment).
    db = bitkv.open(path, auto_compact=False, max_segment_size=1 << 30)
    put = db.put
    value = bytes(16)
    for _ in range(puts):
        put(scale_key(rng.randrange(keys)), value)
    stats = db.stats()
    t0, c0, th0 = time.perf_counter(), time.process_time(), time.thread_time()
    db.close()
    th1, c1, t1 = time.thread_time(), time.process_time(), time.perf_counter()
    with open(os.path.join(path, seg_mod.hint_name(stats["active_segment"])), "rb") as fh:
        blob = fh.read()
    return {"close_s": t1 - t0, "close_cpu_s": c1 - c0, "close_thread_cpu_s": th1 - th0,
            "segments": stats["segments"],
            "checkpoint_entries": hint.entry_count(blob[: hint.HEADER.size], len(blob)),
            "implementation": bitkv.IMPLEMENTATION}


def child(argv: list[str], env_extra: dict[str, str]) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("BITKV_PURE_PYTHON", None)
    env.update(env_extra)
    done = subprocess.run([sys.executable, __file__, *argv], env=env, check=True,
                          capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def ensure_store(path: str, keys: int) -> float:
    """Build the scale store at ``path`` unless it is there; return the build's seconds."""
    if os.path.isdir(path):
        return 0.0
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from bench_workload import "
            "scale_build; scale_build({'dir': sys.argv[2], 'keys': int(sys.argv[3]), "
            "'value_size': 16, 'seed': 1})")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)),
                    path, str(keys)], check=True)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="1M", help="comma-separated key counts (1M,4M,16M)")
    ap.add_argument("--modes", default="native", help="native, python, tree=PATH, ...")
    ap.add_argument("--workdir", default=None, help="where the stores are built and kept")
    ap.add_argument("--puts", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write every measurement here")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        path, n, puts, seed = args.child
        print(json.dumps(measure(path, int(n), int(puts), int(seed))), flush=True)
        return
    if args.workdir is None:
        ap.error("--workdir is required")

    modes = args.modes.split(",")
    results: list[dict[str, Any]] = []
    print(f"# bench_close: {' '.join(sys.argv[1:])}; load average "
          f"{os.getloadavg()[0]:.2f}; medians of {args.rounds} round(s), modes interleaved")
    print("| keys | mode | close, CPU (s) | close, main thread CPU (s) | close, wall (s) "
          "| checkpoint entries |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in (parse_size(s) for s in args.scale.split(",")):
        path = os.path.join(os.path.abspath(args.workdir), f"s{n}")
        ensure_store(path, n)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for r in range(args.rounds):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                runs[mode].append(child(["--child", path, str(n), str(args.puts), str(r)],
                                        mode_env(mode)))
        for mode in modes:
            rs = runs[mode]
            row = {"keys": n, "mode": mode, "runs": rs,
                   **{f: statistics.median(x[f] for x in rs)
                      for f in ("close_cpu_s", "close_thread_cpu_s", "close_s",
                                "checkpoint_entries")}}
            results.append(row)
            print(f"| {n:,} | {mode} | {row['close_cpu_s']:.3f} | "
                  f"{row['close_thread_cpu_s']:.3f} | {row['close_s']:.3f} | "
                  f"{row['checkpoint_entries']:,.0f} |", flush=True)
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
