"""Hit rate against cache size for a Zipfian workload, per eviction policy (docs/cache.md).

A cache-aside client runs against a bitkv store opened with ``max_bytes`` and each policy:
``get``; on a miss, ``put`` (the value it would have fetched from the slow backend). Keys are
drawn from a Zipf distribution (exponent ``--skew``) over ``--keys`` keys of ``--value-size``
bytes; the cache holds a fraction of them all. The first ``--warmup`` share of the requests
fills the cache and is not counted. An exact LRU of the same byte size (an OrderedDict,
simulated in memory) is the reference the sampled approximations are measured against.

Writes the plot to ``docs/cache-hitrate.png`` and the table between the markers in
``docs/cache.md``::

    python scripts/cache_hitrate.py            # the published figures (about a minute)
    python scripts/cache_hitrate.py --quick    # a smoke run, nothing written
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time

import numpy as np

import bitkv
from bitkv.record import HEADER_SIZE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "cache.md")
PNG = os.path.join(ROOT, "docs", "cache-hitrate.png")
BEGIN, END = "<!-- hitrate-table -->", "<!-- /hitrate-table -->"
POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-ttl")
EXACT = "exact LRU (simulated)"


def zipf_requests(keys: int, requests: int, skew: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, keys + 1) ** skew
    ranks = rng.choice(keys, size=requests, p=weights / weights.sum())
    return rng.permutation(keys)[ranks]  # popularity unrelated to the key's name


def run_store(policy: str, max_bytes: int, requests: np.ndarray, value: bytes, warmup: int,
              directory: str) -> float:
    hits = counted = 0
    # volatile-ttl evicts among keys with a TTL: give every key one, far in the future and
    # random, so its order says nothing about use (what TTL-based eviction knows).
    ttl_rng = np.random.default_rng(1)
    ttls = ttl_rng.uniform(10_000, 20_000, size=int(requests.max()) + 1)
    volatile = policy.startswith("volatile-")
    with bitkv.open(directory, max_bytes=max_bytes, eviction=policy, sync="never") as db:
        get, put = db.get, db.put
        for n, key_id in enumerate(requests.tolist()):
            key = b"key:%08d" % key_id
            hit = get(key) is not None
            if not hit:
                put(key, value, ttl=float(ttls[key_id]) if volatile else None)
            if n >= warmup:
                counted += 1
                hits += hit
    return hits / counted


def run_exact_lru(max_bytes: int, requests: np.ndarray, record: int, warmup: int) -> float:
    capacity = max_bytes // record
    cache: collections.OrderedDict[int, None] = collections.OrderedDict()
    hits = counted = 0
    for n, key_id in enumerate(requests.tolist()):
        hit = key_id in cache
        if hit:
            cache.move_to_end(key_id)
        else:
            cache[key_id] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
        if n >= warmup:
            counted += 1
            hits += hit
    return hits / counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=120_000)
    parser.add_argument("--warmup", type=float, default=0.25)
    parser.add_argument("--skew", type=float, default=0.99)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--sizes", default="0.01,0.02,0.05,0.1,0.2,0.4,0.8",
                        help="cache sizes as fractions of all keys' bytes")
    parser.add_argument("--quick", action="store_true", help="small, writes nothing")
    args = parser.parse_args()
    if args.quick:
        args.keys, args.requests, args.sizes = 2000, 8000, "0.05,0.2"
    value = b"v" * args.value_size
    record = HEADER_SIZE + len(b"key:%08d" % 0) + len(value)
    requests = zipf_requests(args.keys, args.requests, args.skew, seed=42)
    warmup = int(len(requests) * args.warmup)
    sizes = [float(s) for s in args.sizes.split(",")]
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    rates: dict[str, list[float]] = {p: [] for p in (*POLICIES, EXACT)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        for size in sizes:
            max_bytes = int(size * args.keys * record)
            rates[EXACT].append(run_exact_lru(max_bytes, requests, record, warmup))
            for policy in POLICIES:
                directory = os.path.join(tmp, f"{policy}-{size}")
                rates[policy].append(run_store(policy, max_bytes, requests, value, warmup,
                                               directory))
            print(f"size {size:>5.0%}: " + "  ".join(f"{p} {r[-1]:.3f}"
                                                    for p, r in rates.items()), flush=True)
    print(f"({time.perf_counter() - started:.0f} s, {bitkv.IMPLEMENTATION})")
    if args.quick:
        return
    command = "python scripts/cache_hitrate.py" + (" " + " ".join(sys.argv[1:])
                                                    if sys.argv[1:] else "")
    write_table(rates, sizes, args, command)
    write_plot(rates, sizes, args)


def write_table(rates: dict[str, list[float]], sizes: list[float], args: argparse.Namespace,
                command: str) -> None:
    head = "| cache size (share of all keys) | " + " | ".join(rates) + " |"
    rule = "|---:|" + "---:|" * len(rates)
    rows = [f"| {size:.0%} | " + " | ".join(f"{rates[p][i]:.3f}" for p in rates) + " |"
            for i, size in enumerate(sizes)]
    table = "\n".join([
        f"Hit rates, Zipf exponent {args.skew}, {args.keys} keys of {args.value_size}-byte "
        f"values, {args.requests} requests ({args.warmup:.0%} warm-up not counted); "
        f"`{command}`:", "", head, rule, *rows])
    with open(DOC, encoding="utf-8") as fh:
        text = fh.read()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} markers")
    with open(DOC, "w", encoding="utf-8") as fh:
        fh.write(pattern.sub(lambda _m: f"{BEGIN}\n{table}\n{END}", text))


def write_plot(rates: dict[str, list[float]], sizes: list[float],
               args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, values in rates.items():
        style = "--" if policy == EXACT else "-"
        ax.plot([s * 100 for s in sizes], values, style, marker="o", label=policy)
    ax.set_xscale("log")
    ax.set_xticks([s * 100 for s in sizes], [f"{s:.0%}" for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("cache size, % of all keys' bytes (log scale)")
    ax.set_ylabel("hit rate")
    ax.set_ylim(0, 1)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(f"bitkv cache mode: Zipf({args.skew}) over {args.keys} keys")
    ax.legend()
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)


if __name__ == "__main__":
    main()
