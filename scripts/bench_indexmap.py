"""The KeyDir's index map alone, compiled (IndexMap) vs the reference dict: memory per key
and the speed of the operations the engine makes.

    python scripts/bench_indexmap.py [--n 1000000]

Memory is RssAnon growth (and tracemalloc) of a fresh process filling the map with ``n`` keys
of 16 bytes and values packed like keydir entries, less the key bytes; each map is measured in
its own process. Speeds are the median of 3 timed passes over the keys in random order.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
import tracemalloc


def _keys(n: int) -> list[bytes]:
    return [(i * 2654435761 % 2**64).to_bytes(8, "little") * 2 for i in range(n)]


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def _new(kind: str):
    if kind == "native":
        from bitkv._native import IndexMap
        return IndexMap()
    return {}


def measure_memory(kind: str, n: int) -> dict[str, float]:
    """In this process: bytes per key beyond the key bytes, by RssAnon and by tracemalloc."""
    _new(kind)  # the import (of all of bitkv) before the first measurement
    out = {}
    for method in ("rss", "tracemalloc"):
        if method == "tracemalloc":
            tracemalloc.start()
        before = _rss_anon() if method == "rss" else tracemalloc.get_traced_memory()[0]
        m = _new(kind)
        for i in range(n):  # keys made one at a time, as an open makes them from the files
            m[(i * 2654435761 % 2**64).to_bytes(8, "little") * 2] = (i << 12) | 117
        after = _rss_anon() if method == "rss" else tracemalloc.get_traced_memory()[0]
        out[method] = (after - before) / n - 16
        del m
        if method == "tracemalloc":
            tracemalloc.stop()
    return out


def measure_speed(kind: str, n: int) -> dict[str, float]:
    keys = _keys(n)
    missing = [k[::-1] + b"?" for k in keys]
    rng = random.Random(1)
    order = keys[:]
    rng.shuffle(order)
    # Fresh key objects, made in the order they are used, as requests bring them: looking up
    # the very objects stored would flatter the dict (identity before comparison) and scatter
    # the reads over the heap.
    order = [bytes(bytearray(k)) for k in order]
    m = _new(kind)
    results: dict[str, list[float]] = {}

    def timed(name, fn):
        t = time.perf_counter()
        fn()
        results.setdefault(name, []).append(n / (time.perf_counter() - t))

    for _ in range(3):
        m.clear()

        def fill():
            for i, k in enumerate(keys):
                m[k] = i

        def overwrite():
            for k in order:
                m[k] = 5

        def get_hit():
            get = m.get
            for k in order:
                get(k)

        def get_miss():
            get = m.get
            for k in missing:
                get(k)

        def contains():
            for k in order:
                _ = k in m

        def iterate():
            for _ in m:
                pass

        def pop():
            pop = m.pop
            for k in order:
                pop(k, None)

        for name, fn in (("insert", fill), ("overwrite", overwrite), ("get (hit)", get_hit),
                         ("get (miss)", get_miss), ("in", contains), ("iterate", iterate),
                         ("pop", pop)):
            timed(name, fn)
    return {name: statistics.median(v) for name, v in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--child", choices=["native", "python"])
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"memory": measure_memory(args.child, args.n),
                          "speed": measure_speed(args.child, args.n)}))
        return
    res = {}
    for kind in ("native", "python"):
        out = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--child", kind],
                             check=True, capture_output=True, text=True).stdout
        res[kind] = json.loads(out)
    print(f"index map, {args.n:,} keys of 16 bytes")
    print("| figure | native (IndexMap) | python (dict) | native / python |")
    print("|---|---:|---:|---:|")
    for method, label in (("rss", "RssAnon"), ("tracemalloc", "tracemalloc")):
        a, b = res["native"]["memory"][method], res["python"]["memory"][method]
        print(f"| bytes/key beyond the key, {label} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    for name in res["native"]["speed"]:
        a, b = res["native"]["speed"][name], res["python"]["speed"][name]
        print(f"| {name}, ops/s | {a / 1e6:.2f}M | {b / 1e6:.2f}M | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
