"""Compaction and hint-file measurements for bitkv (not a timed test).

Three measurements, each on a fresh store of ``--keys`` keys (16-byte keys, 100-byte values):

1. Reopen time with hint files (after ``compact()``) and without them (the ``.hint`` files
   deleted, so every segment is scanned and every record's CRC checked). Warm page cache.
2. Compaction throughput (MB/s of input, 1 MB = 10**6 bytes) alone, and the put latency a
   writer sees (median, p99, max) without and with a compaction running concurrently.
3. Disk bytes after compacting a store whose every key was overwritten 5 times, against
   the live bytes plus the active segment.

Prints a Markdown table; ``--doc docs/compaction.md`` also writes it into that file between
the ``<!-- bench_compaction:begin -->`` and ``<!-- bench_compaction:end -->`` markers.

    python scripts/bench_compaction.py --keys 20000          # quick run
    python scripts/bench_compaction.py --doc docs/compaction.md   # 1,000,000 keys
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bitkv
from bitkv import record as rec
from bitkv import segment as seg_mod

KEY_SIZE = 16
VALUE_SIZE = 100
RECORD_SIZE = rec.HEADER_SIZE + KEY_SIZE + VALUE_SIZE
BEGIN = "<!-- bench_compaction:begin -->"
END = "<!-- bench_compaction:end -->"
FILLER = bytes(range(33, 127)) * 2


def key(i: int) -> bytes:
    return b"key:%012d" % i


def value(version: int, i: int) -> bytes:
    head = b"v%02d:%012d:" % (version % 100, i)
    return head + FILLER[: VALUE_SIZE - len(head)]


def fill(db, n: int, version: int) -> None:
    put = db.put
    for i in range(n):
        put(key(i), value(version, i))


def files(path: str, suffix: str) -> list[str]:
    return [os.path.join(path, n) for n in os.listdir(path) if n.endswith(suffix)]


def size_of(paths: list[str]) -> int:
    return sum(os.path.getsize(p) for p in paths)


def median_time(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pct(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return float("nan")
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


# -- 1. reopen with and without hints -----------------------------------------------------

def bench_reopen(root: str, n: int, runs: int) -> dict:
    path = os.path.join(root, "reopen")
    with bitkv.open(path, sync="never", auto_compact=False) as db:
        t = time.perf_counter()
        fill(db, n, 0)
        load_s = time.perf_counter() - t
        summary = db.compact()
    hinted = len(files(path, seg_mod.HINT_SUFFIX))

    def reopen():
        with bitkv.open(path, auto_compact=False, sync="never") as db:
            assert len(db) == n
            reopen.report = db.recovery_report

    with_hints = median_time(reopen, runs)
    from_hints = reopen.report.segments_from_hints

    def reopen_scanning():
        for p in files(path, seg_mod.HINT_SUFFIX):
            os.unlink(p)  # the close of each run writes a checkpoint hint again
        reopen()

    without = median_time(reopen_scanning, runs)
    assert reopen.report.segments_from_hints == 0
    data = size_of(files(path, seg_mod.DATA_SUFFIX))
    shutil.rmtree(path)
    return {"load_s": load_s, "with_hints_s": with_hints, "without_hints_s": without,
            "segments": reopen.report.segments, "from_hints": from_hints, "hint_files": hinted,
            "data_bytes": data, "compact": summary}


# -- 2. compaction throughput and writer latency ------------------------------------------

def overwrite_fraction(db, n: int, fraction: float, version: int, rng: random.Random) -> None:
    put = db.put
    for i in rng.sample(range(n), int(n * fraction)):
        put(key(i), value(version, i))


def timed_puts(db, n: int, rng: random.Random, version: int, count: int | None,
               until: threading.Event | None) -> list[int]:
    lat: list[int] = []
    append = lat.append
    put = db.put
    clock = time.perf_counter_ns
    randrange = rng.randrange
    done = 0
    while True:
        if count is not None and done >= count:
            break
        if until is not None and until.is_set():
            break
        i = randrange(n)
        k, v = key(i), value(version, i)
        t = clock()
        put(k, v)
        append(clock() - t)
        done += 1
    lat.sort()
    return lat


def bench_compaction(root: str, n: int, seed: int) -> dict:
    path = os.path.join(root, "throughput")
    rng = random.Random(seed)
    with bitkv.open(path, sync="never", auto_compact=False) as db:
        fill(db, n, 0)
        overwrite_fraction(db, n, 0.5, 1, rng)
        alone = db.compact()
    # Writer latency, with the default sync mode ("interval": fsync once a second).
    with bitkv.open(path, auto_compact=False) as db:
        overwrite_fraction(db, n, 0.5, 2, rng)
        baseline = timed_puts(db, n, rng, 3, count=min(n, 200_000), until=None)
        finished = threading.Event()
        result: list = []

        def run():
            try:
                result.append(db.compact())
            finally:
                finished.set()

        t = threading.Thread(target=run)
        t.start()
        during = timed_puts(db, n, rng, 4, count=None, until=finished)
        t.join()
        loaded = result[0]
    shutil.rmtree(path)
    return {"alone": alone, "loaded": loaded, "baseline": baseline, "during": during}


# -- 3. space after 5 overwrites ----------------------------------------------------------

def bench_space(root: str, n: int, overwrites: int) -> dict:
    path = os.path.join(root, "space")
    with bitkv.open(path, sync="never", auto_compact=False) as db:
        for version in range(overwrites + 1):
            fill(db, n, version)
        before = db.stats()
        summary = db.compact()
        st = db.stats()
        active = db._active
        active_extra = active.size - active.live_bytes  # header and any garbage left in it
    # After close, which may add a checkpoint hint for the active segment.
    data = size_of(files(path, seg_mod.DATA_SUFFIX))
    hints = size_of(files(path, seg_mod.HINT_SUFFIX))
    disk = size_of([os.path.join(path, n) for n in os.listdir(path)])
    shutil.rmtree(path)
    return {"before_disk": before["disk_bytes"], "live": st["live_bytes"],
            "active_size": active.size, "target": st["live_bytes"] + active_extra,
            "data": data, "hints": hints, "disk": disk, "compact": summary}


# -- report -------------------------------------------------------------------------------

def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def table(n: int, overwrites: int, r: dict, c: dict, s: dict, load: str) -> str:
    alone, loaded = c["alone"], c["loaded"]
    thr = alone["bytes_in"] / alone["seconds"] / 1e6
    thr_loaded = loaded["bytes_in"] / loaded["seconds"] / 1e6
    b, d = c["baseline"], c["during"]
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; "
        f"{n:,} keys of {KEY_SIZE} bytes, values of {VALUE_SIZE} bytes "
        f"({RECORD_SIZE}-byte records), default 64 MiB segments, warm page cache; "
        f"load average {load}.",
        "",
        "| Measurement | Result |",
        "|---|---|",
        f"| Reopen with hint files (median of runs) | {r['with_hints_s']:.2f} s "
        f"({r['from_hints']} of {r['segments']} segments from hints) |",
        f"| Reopen without hint files (full scan, CRC of every record) | "
        f"{r['without_hints_s']:.2f} s |",
        f"| Speed-up from hints | {r['without_hints_s'] / r['with_hints_s']:.1f}x |",
        f"| Compaction alone: input, output, time | {mb(alone['bytes_in'])} in, "
        f"{mb(alone['bytes_out'])} out, {alone['seconds']:.2f} s |",
        f"| Compaction throughput alone | **{thr:,.1f} MB/s** of input |",
        f"| Compaction throughput with a writer running | {thr_loaded:,.1f} MB/s "
        f"({mb(loaded['bytes_in'])} in {loaded['seconds']:.2f} s) |",
        f"| put latency, no compaction ({len(b):,} puts) | median {pct(b, 0.5):.1f} µs, "
        f"p99 {pct(b, 0.99):.1f} µs, max {b[-1] / 1000 if b else 0:,.0f} µs |",
        f"| put latency during compaction ({len(d):,} puts) | median {pct(d, 0.5):.1f} µs, "
        f"p99 {pct(d, 0.99):.1f} µs, max {d[-1] / 1000 if d else 0:,.0f} µs |",
        f"| Disk before compaction (every key written {overwrites + 1} times) | "
        f"{mb(s['before_disk'])} |",
        f"| After compaction and close: `.data` files | {mb(s['data'])} = "
        f"{s['data'] / s['target']:.3f}x live + active segment ({mb(s['target'])}) |",
        f"| After compaction and close: `.hint` files (compacted + checkpoint) | "
        f"{mb(s['hints'])} |",
        f"| After compaction and close: all files | {mb(s['disk'])} = "
        f"{s['disk'] / s['target']:.3f}x live + active segment |",
    ]
    return "\n".join(lines)


def write_doc(doc: str, text: str) -> None:
    with open(doc, encoding="utf-8") as fh:
        content = fh.read()
    start = content.index(BEGIN) + len(BEGIN)
    end = content.index(END)
    content = content[:start] + "\n" + text + "\n" + content[end:]
    with open(doc, "w", encoding="utf-8") as fh:
        fh.write(content)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--overwrites", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="reopens timed (median reported)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--doc", default=None, help="write the table into this Markdown file")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    root = args.dir or tempfile.mkdtemp(prefix="bitkv-bench-compaction-")
    os.makedirs(root, exist_ok=True)
    try:
        t0 = time.perf_counter()
        load_before = os.getloadavg()[0]
        print(f"reopen: {args.keys:,} keys ...", file=sys.stderr, flush=True)
        r = bench_reopen(root, args.keys, args.runs)
        print(f"  {r['with_hints_s']:.2f} s with hints, {r['without_hints_s']:.2f} s without",
              file=sys.stderr, flush=True)
        print("compaction throughput and writer latency ...", file=sys.stderr, flush=True)
        c = bench_compaction(root, args.keys, args.seed)
        print(f"space after {args.overwrites} overwrites ...", file=sys.stderr, flush=True)
        s = bench_space(root, args.keys, args.overwrites)
        load = f"{load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end"
        text = table(args.keys, args.overwrites, r, c, s, load)
        print(f"(total {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(text)
    if args.doc:
        write_doc(args.doc, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
