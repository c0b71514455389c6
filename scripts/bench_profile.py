#!/usr/bin/env python3
"""cProfile of bitkv's hot paths, for whoever optimises the engine.

    python scripts/bench_profile.py                 # 200,000 puts, gets, a batch, a reopen
    python scripts/bench_profile.py --n 50000 --top 20 --out /tmp/profile.md

Profiles, each in isolation: N puts of fresh keys in random order (the fill), N random
gets, the same N puts through one ``db.batch()`` (when the store has it) into a fresh store,
and one close + reopen of the first store (the index rebuild). Prints the top functions
by tottime (time spent in the function itself) for each, and writes them as Markdown to
``--out`` (default: a new file in the temporary directory, so that a run leaves the checkout
clean; pass ``--out docs/bench/profile.md`` to refresh the committed profile). cProfile adds
a fixed cost to every Python call, so read the ranking and the call counts, not the absolute
times; the ops/s printed next to each profile are measured without the profiler.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def top_rows(prof: cProfile.Profile, top: int) -> tuple[list[str], float]:
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    entries = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in entries[:top]:
        where = func if file == "~" else (
            f"{os.path.relpath(file, ROOT) if file.startswith(ROOT) else os.path.basename(file)}"
            f":{line}({func})")
        rows.append(f"| `{where}` | {ncalls:,} | {tottime:.3f} | {cumtime:.3f} |")
    return rows, st.total_tt  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--value-size", type=int, default=100)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--seed", type=int, default=20240607)
    ap.add_argument("--out", default=None,
                    help="Markdown report path (default: a new temporary file; the committed "
                         "profile is docs/bench/profile.md)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)

    import bitkv

    rng = random.Random(args.seed)
    n = args.n
    keys = [b"key:%012d" % i for i in range(n)]
    rng.shuffle(keys)
    values = [rng.randbytes(args.value_size) for _ in range(min(n, 65536))]
    vals = [values[i % len(values)] for i in range(n)]
    reads = [keys[rng.randrange(n)] for _ in range(n)]
    base = tempfile.mkdtemp(prefix="bitkv-profile-", dir=args.workdir)
    sections = []
    try:
        # unprofiled rates first, on a throwaway store
        path = os.path.join(base, "plain")
        db = bitkv.open(path)
        t0 = time.perf_counter()
        for k, v in zip(keys, vals, strict=False):
            db.put(k, v)
        put_rate = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for k in reads:
            db.get(k)
        get_rate = n / (time.perf_counter() - t0)
        db.close()
        t0 = time.perf_counter()
        db = bitkv.open(path)
        db.get(reads[0])
        reopen_s = time.perf_counter() - t0
        db.close()
        shutil.rmtree(path)

        path = os.path.join(base, "profiled")
        db = bitkv.open(path)
        put = db.put
        prof = cProfile.Profile()
        prof.enable()
        for k, v in zip(keys, vals, strict=False):
            put(k, v)
        prof.disable()
        sections.append((f"put: {n:,} puts of new keys ({args.value_size}-byte values), "
                         f"{put_rate:,.0f} ops/s unprofiled", prof))
        get = db.get
        prof = cProfile.Profile()
        prof.enable()
        for k in reads:
            get(k)
        prof.disable()
        sections.append((f"get: {n:,} random gets, {get_rate:,.0f} ops/s unprofiled", prof))
        db.close()
        if hasattr(db, "batch"):
            bpath = os.path.join(base, "batch")
            bdb = bitkv.open(bpath)
            t0 = time.perf_counter()
            with bdb.batch() as b:
                for k, v in zip(keys, vals, strict=False):
                    b.put(k, v)
            batch_rate = n / (time.perf_counter() - t0)
            bdb.close()
            shutil.rmtree(bpath)
            bdb = bitkv.open(bpath)
            prof = cProfile.Profile()
            prof.enable()
            with bdb.batch() as b:
                bput = b.put
                for k, v in zip(keys, vals, strict=False):
                    bput(k, v)
            prof.disable()
            bdb.close()
            sections.append((f"batch: {n:,} puts in one `db.batch()`, {batch_rate:,.0f} ops/s "
                             "unprofiled", prof))
        prof = cProfile.Profile()
        prof.enable()
        db = bitkv.open(path)
        db.get(reads[0])
        prof.disable()
        db.close()
        sections.append((f"reopen: open a store of {n:,} keys and read one, "
                         f"{reopen_s * 1000:,.0f} ms unprofiled", prof))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bitkv"], cwd=ROOT,
                               text=True, capture_output=True, timeout=10).stdout.strip()
        rev = f"git {rev}" + (" with uncommitted changes in bitkv/" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        rev = "git revision unknown"
    out = [f"## bitkv profile (cProfile, top {args.top} by tottime)\n",
           f"`python scripts/bench_profile.py --n {n}` on Python {sys.version.split()[0]}, "
           f"{time.strftime('%Y-%m-%d')}, bitkv {rev}. tottime = seconds inside the function "
           "itself; cumtime includes callees. Absolute times carry cProfile's per-call "
           "overhead.\n"]
    for title, prof in sections:
        rows, total = top_rows(prof, args.top)
        out.append(f"### {title}\n")
        out.append(f"Profiled total: {total:.3f} s.\n")
        out.append("| function | calls | tottime (s) | cumtime (s) |")
        out.append("|---|---:|---:|---:|")
        out += rows
        out.append("")
    md = "\n".join(out) + "\n"
    if args.out is None:
        fd, args.out = tempfile.mkstemp(prefix="bitkv-profile-", suffix=".md")
        os.close(fd)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(md)
    print(md)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
