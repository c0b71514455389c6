"""What cache mode costs on the hot path (docs/cache.md, "What the bound costs").

Each variant runs in a child process of its own: it loads ``--keys`` keys of ``--value-size``
bytes into a store on tmpfs, then times ``--ops`` gets of random loaded keys and ``--ops``
puts of new keys, in CPU time per operation (``time.process_time``: on a shared machine the
wall clock also counts other processes). Variants, each in both modes (compiled, and
``BITKV_PURE_PYTHON=1``):

* ``base``: the tree at ``--baseline`` (a git revision; its bitkv package is exported, the
  compiled extension copied from this checkout, whose C sources must be the same), unbounded;
* ``unbounded``: this checkout, no bound (must cost what ``base`` does);
* ``lru-roomy``: ``max_bytes`` above all the data the run writes, ``allkeys-lru``: the
  hooks and the read stamps, no eviction;
* ``lru-full``: ``max_bytes`` = the loaded data, ``allkeys-lru``: every put evicts a key;
* ``random-full``: the same with ``allkeys-random`` (no read stamps).

Rounds run the variants interleaved; the table gives the median per variant and its ratio to
``base`` in the same mode::

    python scripts/bench_cache.py --baseline bf4a9fc

``--disk SIZE`` measures the disk bound instead: a cache of that bound (``allkeys-lru``,
``sync="never"``, background compaction on) written at full speed with new keys until 10x
the bound went in, the disk (every file of the store) looked at every 200 puts::

    python scripts/bench_cache.py --disk 8mb --value-size 1000
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "base": (None, None),
    "unbounded": (None, None),
    "lru-roomy": (0.0, "allkeys-lru"),  # 0.0: room for everything the run writes
    "lru-full": (1.0, "allkeys-lru"),
    "random-full": (1.0, "allkeys-random"),
}


def child(config: dict[str, object]) -> None:
    import bitkv

    keys, ops = int(config["keys"]), int(config["ops"])  # type: ignore[call-overload]
    size = int(config["value_size"])  # type: ignore[call-overload]
    share, policy = VARIANTS[str(config["variant"])]
    value = b"v" * size
    record = 21 + len(b"key:%08d" % 0) + size
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    directory = tempfile.mkdtemp(dir=base)
    try:
        options: dict[str, object] = {"sync": "never", "auto_compact": False}
        if share is not None:
            room = (keys + ops) * record * 1.1 if share == 0.0 else share * keys * record
            options.update(max_bytes=int(room), eviction=policy)
        with bitkv.open(os.path.join(directory, "s"), **options) as db:  # type: ignore[arg-type]
            for start in range(0, keys, 1000):
                with db.batch() as batch:
                    for i in range(start, min(keys, start + 1000)):
                        batch.put(b"key:%08d" % i, value)
            rng = random.Random(1)
            wanted = [b"key:%08d" % rng.randrange(keys) for _ in range(ops)]
            fresh = [b"key:%08d" % (keys + i) for i in range(ops)]
            get, put = db.get, db.put
            t = time.process_time()
            for k in wanted:
                get(k)
            get_us = (time.process_time() - t) / ops * 1e6
            t = time.process_time()
            for k in fresh:
                put(k, value)
            put_us = (time.process_time() - t) / ops * 1e6
            print(json.dumps({"get_us": get_us, "put_us": put_us,
                              "implementation": bitkv.IMPLEMENTATION,
                              "evicted": db.evicted_keys if hasattr(db, "evicted_keys")
                              else 0}))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def disk_run(bound: int, value_size: int, policy: str) -> None:
    import bitkv

    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    directory = os.path.join(tempfile.mkdtemp(dir=base), "s")
    value = os.urandom(value_size)
    written = puts = peak = 0

    def disk() -> int:
        total = 0
        for name in os.listdir(directory):
            try:
                total += os.path.getsize(os.path.join(directory, name))
            except FileNotFoundError:  # a temporary file renamed meanwhile
                pass
        return total

    try:
        started = time.process_time()
        with bitkv.open(directory, max_bytes=bound, eviction=policy, sync="never") as db:
            while written < 10 * bound:
                key = b"key:%012d" % puts
                db.put(key, value)
                written += 21 + len(key) + value_size
                puts += 1
                if puts % 200 == 0:
                    peak = max(peak, disk())
            stats = db.stats()
        cpu_us = (time.process_time() - started) / puts * 1e6
        print(f"bound {bound} bytes, {value_size}-byte values, {policy}: {puts} puts "
              f"({cpu_us:.1f} us CPU each, compaction included); peak disk {peak} bytes = "
              f"{peak / bound:.2f}x the bound; at the end {stats['disk_bytes']} bytes = "
              f"{stats['disk_bytes'] / bound:.2f}x, live {stats['live_bytes']}, "
              f"{stats['evicted_keys']} evicted")
    finally:
        shutil.rmtree(os.path.dirname(directory), ignore_errors=True)


def export_baseline(rev: str, dest: str) -> str:
    """The bitkv package at ``rev`` in ``dest`` (with this checkout's compiled extension)."""
    archive = subprocess.run(["git", "-C", ROOT, "archive", rev, "bitkv"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    for name in os.listdir(os.path.join(ROOT, "bitkv")):
        if name.startswith("_native") and name.endswith(".so"):
            shutil.copy(os.path.join(ROOT, "bitkv", name), os.path.join(dest, "bitkv", name))
    changed = subprocess.run(["git", "-C", ROOT, "diff", "--stat", rev, "--", "bitkv/native"],
                             check=True, capture_output=True, text=True).stdout
    if changed.strip():
        raise SystemExit(f"bitkv/native differs from {rev}: the copied extension would not "
                         "be the baseline's")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="HEAD", help="git revision of 'base'")
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--ops", type=int, default=100_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated, of: " + ", ".join(VARIANTS) + " (base always)")
    parser.add_argument("--disk", metavar="SIZE", help="measure the disk bound instead")
    parser.add_argument("--policy", default="allkeys-lru", help="the policy of --disk")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.disk:
        from bitkv.eviction import parse_bytes

        disk_run(parse_bytes(args.disk), args.value_size, args.policy)
        return
    chosen = ["base"] + [v for v in args.variants.split(",") if v in VARIANTS and v != "base"]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base_path = export_baseline(args.baseline, tmp)
        for _round in range(args.rounds):
            for mode in ("native", "python"):
                for variant in chosen:
                    env = dict(os.environ)
                    env.pop("BITKV_PURE_PYTHON", None)
                    if mode == "python":
                        env["BITKV_PURE_PYTHON"] = "1"
                    src = base_path if variant == "base" else ROOT
                    env["PYTHONPATH"] = src
                    config = {"variant": variant, "keys": args.keys, "ops": args.ops,
                              "value_size": args.value_size}
                    out = subprocess.run([sys.executable, __file__, "--child",
                                          json.dumps(config)], env=env, cwd=tmp, check=True,
                                         capture_output=True, text=True).stdout
                    got = json.loads(out.strip().splitlines()[-1])
                    if got["implementation"] != mode:
                        raise SystemExit(f"{variant} ran {got['implementation']}, not {mode}")
                    results.setdefault((mode, variant), []).append(got)
    print(f"CPU us per op, median of {args.rounds} interleaved rounds; {args.keys} keys of "
          f"{args.value_size} bytes, {args.ops} gets (random loaded keys) and {args.ops} puts "
          f"(new keys); base = {args.baseline}")
    print("| mode | variant | get us | get / base | put us | put / base | evicted |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for mode in ("native", "python"):
        base_get = statistics.median(r["get_us"] for r in results[(mode, "base")])
        base_put = statistics.median(r["put_us"] for r in results[(mode, "base")])
        for variant in chosen:
            runs = results[(mode, variant)]
            get_us = statistics.median(r["get_us"] for r in runs)
            put_us = statistics.median(r["put_us"] for r in runs)
            print(f"| {mode} | {variant} | {get_us:.2f} | {get_us / base_get:.2f} | "
                  f"{put_us:.2f} | {put_us / base_put:.2f} | {int(runs[-1]['evicted'])} |")


if __name__ == "__main__":
    main()
