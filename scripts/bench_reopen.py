"""Reopen at scale (issue 14): open time, index bytes per key and random gets at 1M..48M keys.

    python scripts/bench_reopen.py --scale 1M,4M --modes native,python --rounds 3
    python scripts/bench_reopen.py --scale 48M --modes native --rounds 1 --workdir /var/tmp

For each size a store is built once, in its own process, through ``db.batch()`` (16-byte keys,
``--value-size`` byte values), in two shapes:

* ``fresh``: every key written once;
* ``history``: every key written, then every 2nd key overwritten (every 50th of those with a
  TTL of a day), then every 10th key deleted: 1.6 records per key, ~0.9 keys live;
* ``bench-history``: the store of ``bench.py --reopen-n`` (issue 14's "reopen of 1M keys with
  history" target): ``key:%012d`` keys put one call each in random order with 100-byte
  values, half of them overwritten, a tenth deleted, through ``bitkv.open`` defaults;
* ``scale``: the store of ``bench.py --scale`` (bench_workload.scale_build): ``key:%012d``
  keys written once through ``db.batch()`` with 16-byte values.

``--store PATH`` keeps one store (one size, one shape) at PATH and measures it again on the
next run instead of building it anew: a 48M-key store takes minutes to build.

Each shape is then opened in two states: ``hints`` (every sealed segment has the hint the
maintenance thread writes after rotation, the active one the checkpoint of a clean close) and
``scan`` (the hint files removed: every record is replayed). Every open runs in a fresh
process, in each mode (``native``: the compiled kernels; ``python``: ``BITKV_PURE_PYTHON=1``;
``tree=PATH``: native mode of the bitkv package in PATH, e.g. an older commit's
``git archive`` with its extension built in place, for before/after figures), the modes
interleaved round by round (A/B, the machine is shared) and the median reported.
The process opens the store writable (as an application or the server does) and exits
without closing it, so the store stays as built. It measures the open (``bitkv.open`` to
return; wall time, and the CPU time of the process, helper threads included, and of its main
thread, which a machine shared with other jobs inflates less), the growth of its RssAnon
across the open less the key bytes, per live key (anonymous memory only: the mapped segments
are page cache), and random gets per second (keys drawn from all ever written, so ~1/10 are
misses in the history shapes).
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

KEY_SIZE = 16
CHUNK = 10_000  # operations per batch while building


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("KM")) * scale)


def key_of(i: int) -> bytes:
    """The i-th key: 16 bytes, spread (a multiplicative hash of i), as clients' keys are."""
    return (i * 2654435761 % 2**64).to_bytes(8, "little") + i.to_bytes(8, "little")


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


# -- building (in a child process) -------------------------------------------------------------


def hint_sealed_segments(path: str) -> int:
    """Write the hints the maintenance thread writes for sealed segments after rotation, for
    those it has not got to (a fast batch fill outruns it), so that every measurement opens
    the same store: every sealed segment hinted, the active one with its checkpoint. Also
    used by bench.py's ``--scale`` build (bench_workload.scale_build). Returns how many."""
    from bitkv import recovery, sealing
    from bitkv import segment as seg_mod
    from bitkv.fileio import DEFAULT_FILEIO

    loaded = recovery.load(path, DEFAULT_FILEIO, readonly=True, now_ms=0)
    written = 0
    try:
        for seg in loaded.segments[:-1]:
            if seg.kind == seg_mod.KIND_APPEND and not seg.hinted:
                seg.map()
                blob = sealing.build_hint(path, DEFAULT_FILEIO, seg)
                if blob is not None:
                    sealing.write_hint(path, DEFAULT_FILEIO, seg, blob)
                    written += 1
    finally:
        for seg in loaded.segments:
            seg.close()
    return written



def bench_key(i: int) -> bytes:
    """The i-th key of the ``bench-history`` shape: bench.py's keys (16 bytes)."""
    return b"key:%012d" % i


def build_bench_history(path: str, n: int) -> int:
    """bench.py's ``--reopen-n`` store (bench_workload.history_reopen's fill, overwrite and
    delete, one call each, through ``bitkv.open`` as its bitkv adapter opens it)."""
    import bitkv

    rng = random.Random(1)
    pool = [rng.randbytes(100) for _ in range(1024)]
    order = list(range(n))
    rng.shuffle(order)
    overwritten = rng.sample(range(n), n // 2)
    deleted = rng.sample(range(n), n // 10)
    with bitkv.open(path, sync="interval") as db:
        for j, i in enumerate(order):
            db.put(bench_key(i), pool[j & 1023])
        for j, i in enumerate(overwritten):
            db.put(bench_key(i), pool[(j * 31 + 17) & 1023])
        for i in deleted:
            db.delete(bench_key(i))
        return len(db)


def build(path: str, n: int, value_size: int, shape: str) -> dict[str, Any]:
    import bitkv
    from bitkv import segment as seg_mod

    started = time.perf_counter()
    if shape == "bench-history":
        live = build_bench_history(path, n)
        hint_sealed_segments(path)
        names = os.listdir(path)
        return {"seconds": time.perf_counter() - started, "live": live,
                "disk": sum(os.path.getsize(os.path.join(path, f)) for f in names),
                "hints": sum(1 for f in names if f.endswith(seg_mod.HINT_SUFFIX))}
    if shape == "scale":
        from bench_workload import scale_build

        out = scale_build({"dir": path, "keys": n, "value_size": value_size, "seed": 1})
        names = os.listdir(path)
        return {"seconds": out["build_secs"], "live": n, "disk": out["disk"],
                "hints": sum(1 for f in names if f.endswith(seg_mod.HINT_SUFFIX))}
    history = shape == "history"
    value = b"v" * value_size
    other = b"w" * value_size
    db = bitkv.open(path, auto_compact=False, sync="never")
    try:
        for lo in range(0, n, CHUNK):
            with db.batch() as b:
                for i in range(lo, min(n, lo + CHUNK)):
                    b.put(key_of(i), value)
        if history:
            for lo in range(0, n, CHUNK * 2):
                with db.batch() as b:
                    for i in range(lo, min(n, lo + CHUNK * 2), 2):
                        b.put(key_of(i), other, ttl=86400 if i % 100 == 2 else None)
            for lo in range(0, n, CHUNK * 10):
                with db.batch() as b:
                    for i in range(lo, min(n, lo + CHUNK * 10), 10):
                        b.delete(key_of(i))
        live = len(db)
    finally:
        db.close()  # writes the active segment's checkpoint hint
    hint_sealed_segments(path)
    names = os.listdir(path)
    return {"seconds": time.perf_counter() - started, "live": live,
            "disk": sum(os.path.getsize(os.path.join(path, f)) for f in names),
            "hints": sum(1 for f in names if f.endswith(seg_mod.HINT_SUFFIX))}


# -- measuring (in a child process) ------------------------------------------------------------


def measure(path: str, n: int, gets: int, shape: str) -> dict[str, Any]:
    import gc

    import bitkv

    key = bench_key if shape in ("bench-history", "scale") else key_of
    gc.collect()
    before = rss_anon()
    cpu = time.process_time()
    thread_cpu = time.thread_time()
    started = time.perf_counter()
    db = bitkv.open(path, auto_compact=False)
    opened = time.perf_counter() - started
    cpu = time.process_time() - cpu
    thread_cpu = time.thread_time() - thread_cpu
    grown = rss_anon() - before
    live = len(db)
    rng = random.Random(7)
    # Fresh key objects, as requests bring them (the ones stored are not at hand anyway).
    sample = [key(rng.randrange(n)) for _ in range(gets)]
    get = db.get
    started = time.perf_counter()
    found = 0
    for key in sample:
        if get(key) is not None:
            found += 1
    get_s = time.perf_counter() - started
    report = db.recovery_report
    out = {"open_s": opened, "open_cpu_s": cpu, "open_thread_cpu_s": thread_cpu, "live": live,
           "bytes_per_key": grown / max(live, 1) - KEY_SIZE,
           "gets_per_s": gets / max(get_s, 1e-9), "found": found,
           "from_hints": report.segments_from_hints, "segments": report.segments,
           "implementation": bitkv.IMPLEMENTATION}
    # No close: it would write a checkpoint hint, and the next open of a "scan" store would
    # read it (the caller exits at once, without closing anything either).
    return out


def mode_env(mode: str) -> dict[str, str]:
    """The environment of a measuring child in ``mode`` (native, python or tree=PATH)."""
    if mode == "python":
        return {"BITKV_PURE_PYTHON": "1"}
    if mode.startswith("tree="):
        return {"PYTHONPATH": os.path.abspath(mode[len("tree="):])}
    if mode != "native":
        raise SystemExit(f"unknown mode {mode!r}: native, python or tree=PATH")
    return {}


def child(argv: list[str], env_extra: dict[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("BITKV_PURE_PYTHON", None)
    if env_extra:
        env.update(env_extra)
    done = subprocess.run([sys.executable, __file__, *argv], env=env, check=True,
                          capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="1M", help="comma-separated key counts (1M,4M,16M,48M)")
    ap.add_argument("--modes", default="native,python", help="native, python or both")
    ap.add_argument("--shapes", default="fresh,history")
    ap.add_argument("--states", default="hints,scan")
    ap.add_argument("--value-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gets", type=int, default=500_000)
    ap.add_argument("--workdir", default=None, help="where the stores are built (removed after)")
    ap.add_argument("--store", default=None,
                    help="keep the store here, and reuse it if it exists (one size and shape)")
    ap.add_argument("--json", default=None, help="also write every measurement here")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path, n = args.child[0], args.child[1], int(args.child[2])
        if kind == "build":
            out = build(path, n, int(args.child[3]), args.child[4])
            print(json.dumps(out))
            return
        out = measure(path, n, int(args.child[3]), args.child[4])
        print(json.dumps(out), flush=True)
        os._exit(0)  # the store stays as it is on disk for the next open

    modes = args.modes.split(",")
    if args.store and ("," in args.scale or "," in args.shapes):
        ap.error("--store keeps one store: give one --scale size and one --shapes shape")
    results: list[dict[str, Any]] = []
    print(f"# bench_reopen: {' '.join(sys.argv[1:])}; load average "
          f"{os.getloadavg()[0]:.2f}; medians of {args.rounds} round(s), modes interleaved")
    print("| keys | shape | state | mode | open (s) | open, CPU (s) | open, main thread CPU (s) "
          "| index bytes/key | gets/s | build (s) |")
    print("|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    for n in (parse_size(s) for s in args.scale.split(",")):
        for shape in args.shapes.split(","):
            if args.store:
                work, path = "", os.path.abspath(args.store)
            else:
                work = tempfile.mkdtemp(prefix="bitkv-reopen-", dir=args.workdir)
                path = os.path.join(work, "store")
            try:
                if args.store and os.path.isdir(path):
                    names = os.listdir(path)
                    built = {"seconds": 0.0,
                             "disk": sum(os.path.getsize(os.path.join(path, f)) for f in names)}
                else:
                    built = child(["--child", "build", path, str(n), str(args.value_size),
                                   shape])
                for state in args.states.split(","):
                    if state == "scan":
                        for name in os.listdir(path):
                            if name.endswith(".hint"):
                                os.unlink(os.path.join(path, name))
                    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
                    for _ in range(args.rounds):
                        for mode in modes:
                            runs[mode].append(child(["--child", "measure", path, str(n),
                                                     str(args.gets), shape], mode_env(mode)))
                    for mode in modes:
                        rs = runs[mode]
                        row = {"keys": n, "shape": shape, "state": state, "mode": mode,
                               "open_s": statistics.median(r["open_s"] for r in rs),
                               "open_cpu_s": statistics.median(r["open_cpu_s"] for r in rs),
                               "open_thread_cpu_s": statistics.median(
                                   r["open_thread_cpu_s"] for r in rs),
                               "bytes_per_key": statistics.median(
                                   r["bytes_per_key"] for r in rs),
                               "gets_per_s": statistics.median(r["gets_per_s"] for r in rs),
                               "live": rs[0]["live"], "build_s": built["seconds"],
                               "disk": built["disk"], "open_all": [r["open_s"] for r in rs],
                               "from_hints": rs[0]["from_hints"],
                               "segments": rs[0]["segments"]}
                        results.append(row)
                        print(f"| {n:,} | {shape} | {state} | {mode} | {row['open_s']:.3f} | "
                              f"{row['open_cpu_s']:.3f} | {row['open_thread_cpu_s']:.3f} | "
                              f"{row['bytes_per_key']:.1f} | {row['gets_per_s']:,.0f} | "
                              f"{built['seconds']:.0f} |", flush=True)
            finally:
                if work:
                    shutil.rmtree(work, ignore_errors=True)
    print(f"# load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
