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

``--scale`` measures compaction at scale instead (issue 19): for each of ``--sizes`` (default
2M, 8M, 32M keys) a store of 16-byte keys and 8-byte values, and for each of ``--wide-sizes``
(default 2M) one of 100-byte values, every key written twice (half the log is garbage), is
built once, copied, and compacted by a child process per implementation: the compiled path
(*native*) and ``BITKV_PURE_PYTHON=1`` (*python*), ``--rounds`` times each (median by
records/s), and optionally an older implementation given by ``--before`` (a source tree or a
commit: ``--before 9c200f3``, issue 19's baseline, is checked out with git archive).
``--implementations`` picks which run; ``--keep-stores`` keeps the built stores in ``--dir``
for the next run (a 32M-key store takes minutes to build). Each child reports the
compaction's records/s and MB/s of input, its extra anonymous memory (``RssAnon`` of
/proc/self/status sampled every 5 ms, peak minus the value before ``compact()``; not peak
RSS, which counts the mapped segments), and, in a second run on a fresh copy, the p99
latency of ``put()`` from a writer thread without and during a compaction. ``--scale-doc``
writes the table between the ``<!-- bench_compaction_scale:begin/end -->`` markers,
``--plot`` a PNG (matplotlib).

    python scripts/bench_compaction.py --scale --sizes 200000 --wide-sizes 200000
    python scripts/bench_compaction.py --scale --json /tmp/scale.json \
        --scale-doc docs/compaction.md --plot docs/compaction-scale.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

if __name__ == "__main__" and "--scale-child" in sys.argv:
    # A child measures the implementation in the tree it is given, not necessarily this one.
    sys.path.insert(0, sys.argv[sys.argv.index("--tree") + 1])
else:
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


# -- --scale: compaction at scale, both implementations ---------------------------------------

SCALE_BEGIN = "<!-- bench_compaction_scale:begin -->"
SCALE_END = "<!-- bench_compaction_scale:end -->"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (implementation, environment): the compiled path (bitkv/native/*.c) and the pure-Python one
IMPLEMENTATIONS = (("native", {}), ("python", {"BITKV_PURE_PYTHON": "1"}))
# Issue 19's "today": main when the streaming compaction began (it kept a tuple per copied
# record and every output's hint until the switch; pure Python, no compiled path).
BEFORE_COMMIT = "9c200f3"


def before_tree(before: str, root: str) -> str:
    """``before`` as a source tree: itself if it is a directory, else a commit of this
    repository checked out (git archive) under ``root``."""
    if os.path.isdir(before):
        return os.path.abspath(before)
    tree = os.path.join(root, f"tree-{before}")
    if not os.path.isdir(tree):
        os.makedirs(tree)
        archive = subprocess.run(["git", "-C", HERE, "archive", before], check=True,
                                 stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
    return tree


def scale_key(i: int) -> bytes:
    return b"k%015d" % i  # 16 bytes


def scale_values(value_size: int) -> tuple[bytes, bytes]:
    return b"a" * value_size, b"b" * value_size  # every key written twice


def rss_anon() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def child_build(path: str, n: int, value_size: int) -> dict:
    t = time.perf_counter()
    with bitkv.open(path, sync="never", auto_compact=False) as db:
        put = db.put
        for v in scale_values(value_size):
            for i in range(n):
                put(scale_key(i), v)
    return {"build_s": time.perf_counter() - t,
            "log_bytes": size_of(files(path, seg_mod.DATA_SUFFIX))}


def child_alone(path: str, n: int) -> dict:
    import gc

    db = bitkv.open(path, sync="never", auto_compact=False)
    gc.collect()
    base = rss_anon()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    cpu = time.process_time()
    summary = db.compact()
    seconds = time.perf_counter() - t
    cpu = time.process_time() - cpu
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], rss_anon())
    db.close()
    records = summary["keys_kept"] + summary["records_dropped"]
    # The baseline tree predates bitkv.IMPLEMENTATION (it was pure Python only).
    return {"implementation": getattr(bitkv, "IMPLEMENTATION", "python"), "seconds": seconds,
            "cpu_seconds": cpu, "load": os.getloadavg()[0], "records": records,
            "records_s": records / seconds,
            "mb_s": summary["bytes_in"] / seconds / 1e6, "index_anon": base,
            "extra_anon": peak[0] - base, "summary": summary}


def child_latency(path: str, n: int, puts: int, value_size: int) -> dict:
    rng = random.Random(7)
    value = b"c" * value_size
    with bitkv.open(path, auto_compact=False) as db:  # default sync="interval"

        def timed(count: int | None, until: threading.Event | None) -> list[int]:
            lat: list[int] = []
            put, clock, randrange = db.put, time.perf_counter_ns, rng.randrange
            while (count is None or len(lat) < count) and (until is None or not until.is_set()):
                k = scale_key(randrange(n))
                t0 = clock()
                put(k, value)
                lat.append(clock() - t0)
            lat.sort()
            return lat

        baseline = timed(puts, None)
        finished = threading.Event()
        result: list[dict] = []

        def run() -> None:
            try:
                result.append(db.compact())
            finally:
                finished.set()

        compactor = threading.Thread(target=run)
        t = time.perf_counter()
        compactor.start()
        during = timed(None, finished)
        compactor.join()
        seconds = time.perf_counter() - t
    return {"p50_without_us": pct(baseline, 0.5), "p99_without_us": pct(baseline, 0.99),
            "p50_during_us": pct(during, 0.5), "p99_during_us": pct(during, 0.99),
            "p999_without_us": pct(baseline, 0.999), "p999_during_us": pct(during, 0.999),
            "max_during_us": during[-1] / 1000 if during else 0.0, "puts_during": len(during),
            "seconds_with_writer": seconds, "summary": result[0] if result else None}


def run_child(tree: str, env: dict[str, str], what: str, path: str, n: int,
              extra: list[str] | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--scale-child", what, "--tree", tree,
           "--store", path, "--keys", str(n)] + (extra or [])
    child_env = {k: v for k, v in os.environ.items() if k != "BITKV_PURE_PYTHON"}
    child_env.update(env)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True,
                         env=child_env).stdout
    result: dict = json.loads(out.strip().splitlines()[-1])
    return result


def copy_store(src: str, dst: str) -> None:
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    # Write the copy back first: its dirty pages would otherwise be written back during the
    # compaction measured next, competing with its own writes.
    os.sync()


def scale(args: argparse.Namespace) -> list[dict]:
    root = args.dir or tempfile.mkdtemp(prefix="bitkv-bench-compaction-scale-")
    os.makedirs(root, exist_ok=True)
    impls = [(name, HERE, env) for name, env in IMPLEMENTATIONS]
    if args.before:
        impls.append(("before", before_tree(args.before, root), {"BITKV_PURE_PYTHON": "1"}))
    wanted = set(args.implementations.split(","))
    impls = [impl for impl in impls if impl[0] in wanted]
    cases = [(int(x), 8) for x in args.sizes.split(",") if x]
    cases += [(int(x), 100) for x in args.wide_sizes.split(",") if x]
    rows: list[dict] = []
    try:
        for n, value_size in cases:
            pristine = os.path.join(root, f"pristine-{n}-{value_size}")
            built_json = os.path.join(root, f"built-{n}-{value_size}.json")
            if args.keep_stores and os.path.exists(built_json):
                with open(built_json, encoding="utf-8") as fh:
                    built = json.load(fh)  # built by an earlier run with --keep-stores
            else:
                print(f"{n:,} keys, {value_size}-byte values: building ...", file=sys.stderr,
                      flush=True)
                built = run_child(HERE, {}, "build", pristine, n,
                                  ["--value-size", str(value_size)])
                if args.keep_stores:
                    with open(built_json, "w", encoding="utf-8") as fh:
                        json.dump(built, fh)
            work = os.path.join(root, f"work-{n}")
            chosen = [(name, tree, env) for name, tree, env in impls
                      if name != "before" or n <= args.before_max_keys]
            # Rounds alternate the implementations (A/B, interleaved), so that the machine's
            # load weighs on each alike; each row is its median round by records/s.
            rounds: dict[str, list[dict]] = {name: [] for name, _, _ in chosen}
            for r in range(args.rounds):
                for name, tree, env in chosen:
                    copy_store(pristine, work)
                    print(f"  {name}: compaction alone, round {r + 1} ...", file=sys.stderr,
                          flush=True)
                    rounds[name].append(run_child(tree, env, "alone", work, n))
            for name, tree, env in chosen:
                done = sorted(rounds[name], key=lambda x: x["records_s"])
                row = {"keys": n, "value_size": value_size, "impl": name, **built,
                       **done[len(done) // 2],
                       "rounds_records_s": [x["records_s"] for x in rounds[name]]}
                if n <= args.latency_max_keys:
                    copy_store(pristine, work)
                    print(f"  {name}: put latency ...", file=sys.stderr, flush=True)
                    row.update(run_child(tree, env, "latency", work, n,
                                         ["--puts", str(args.puts),
                                          "--value-size", str(value_size)]))
                print("   ", json.dumps({k: v for k, v in row.items() if k != "summary"}),
                      file=sys.stderr, flush=True)
                rows.append(row)
            shutil.rmtree(work)
            if not args.keep_stores:
                shutil.rmtree(pristine)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def scale_table(rows: list[dict]) -> str:
    mib = 2**20
    before = "" if not any(r["impl"] == "before" for r in rows) else (
        f" *before* is commit {BEFORE_COMMIT}, issue 19's baseline (pure Python), run in the "
        f"same rounds; *x before* is records/s and records per CPU second over its.")
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}; keys of "
        f"16 bytes, every key written twice, default 64 MiB segments, `sync=\"never\"` for "
        f"the compaction alone, the default `\"interval\"` for the latency run. *native* is "
        f"the compiled path (bitkv/native/compact.c), *python* the same tree with "
        f"`BITKV_PURE_PYTHON=1`.{before} CPU is the compacting process's CPU time (with its "
        f"memory sampler); the machine is shared, so wall times vary with its load (1-minute "
        f"load average: {min(r['load'] for r in rows):.1f} to "
        f"{max(r['load'] for r in rows):.1f}).",
        "",
        "| keys | value | implementation | log before | compaction (CPU) | records/s "
        "| records per CPU second | x before | MB/s of input | index (RssAnon before) "
        "| extra RssAnon during compaction | put p99 without / during compaction |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lat = (f"{r['p99_without_us']:.1f} / {r['p99_during_us']:.1f} µs "
               f"({r['p99_during_us'] / r['p99_without_us']:.1f}x)"
               if "p99_during_us" in r else "not run")
        base = [b for b in rows if b["impl"] == "before" and b["keys"] == r["keys"]
                and b.get("value_size", 8) == r.get("value_size", 8)]
        ratio = "" if not base or r["impl"] == "before" else (
            f"{r['records_s'] / base[0]['records_s']:.1f}x / "
            f"{base[0]['cpu_seconds'] / r['cpu_seconds']:.1f}x")
        lines.append(
            f"| {r['keys'] / 1e6:g}M | {r.get('value_size', 8)} B | {r['impl']} | "
            f"{r['log_bytes'] / mib:,.0f} MiB | "
            f"{r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s) | {r['records_s']:,.0f} | "
            f"{r['records'] / r['cpu_seconds']:,.0f} | {ratio} | {r['mb_s']:.1f} | "
            f"{r['index_anon'] / mib:,.0f} MiB | **{r['extra_anon'] / mib:,.0f} MiB** | {lat} |")
    return "\n".join(lines)


def scale_plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    styles = {"native": "s-", "python": "o--", "before": "^:"}
    for name, style in styles.items():
        rs = [r for r in rows if r["impl"] == name and r.get("value_size", 8) == 8]
        if not rs:
            continue
        keys = [r["keys"] / 1e6 for r in rs]
        axes[0].plot(keys, [r["records_s"] / 1e3 for r in rs], style, label=name)
        axes[1].plot(keys, [r["records"] / r["cpu_seconds"] / 1e3 for r in rs], style,
                     label=name)
        axes[2].plot(keys, [r["extra_anon"] / 2**20 for r in rs], style, label=name)
        lat = [r for r in rs if "p99_during_us" in r]
        axes[3].plot([r["keys"] / 1e6 for r in lat], [r["p99_during_us"] for r in lat],
                     style, label=f"{name}, during compaction")
        axes[3].plot([r["keys"] / 1e6 for r in lat], [r["p99_without_us"] for r in lat],
                     ":", marker=style[0], label=f"{name}, without")
    wide = [r for r in rows if r.get("value_size", 8) == 100]
    for r in wide:
        axes[0].plot([r["keys"] / 1e6], [r["records_s"] / 1e3], "*", markersize=11,
                     label=f"{r['impl']}, 100-byte values")
    axes[0].axhline(1000, color="grey", linewidth=0.8, linestyle="--")
    sizes = sorted({r["keys"] / 1e6 for r in rows})
    for ax in axes:
        ax.set_ylim(bottom=0)
    axes[0].set_title("compaction speed, wall clock (dashed: 1M/s)")
    axes[0].set_ylabel("thousand records/s of input")
    axes[1].set_title("compaction speed per CPU second")
    axes[1].set_ylabel("thousand records per CPU second")
    axes[2].set_title("extra anonymous memory (RssAnon)")
    axes[2].set_ylabel("MiB")
    axes[3].set_title("put() p99 latency, a writer in a loop")
    axes[3].set_ylabel("µs")
    for ax in axes:
        ax.set_xlabel("keys (each written twice)")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [f"{k:g}M" for k in sizes])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_between(doc: str, begin: str, end: str, text: str) -> None:
    with open(doc, encoding="utf-8") as fh:
        content = fh.read()
    start = content.index(begin) + len(begin)
    stop = content.index(end)
    with open(doc, "w", encoding="utf-8") as fh:
        fh.write(content[:start] + "\n" + text + "\n" + content[stop:])


def scale_main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    if args.from_json:
        rows = []
        for name in args.from_json.split(","):  # several runs' results, joined
            with open(name, encoding="utf-8") as fh:
                rows += json.load(fh)
    else:
        rows = scale(args)
    text = scale_table(rows)
    print(f"(total {time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)
    if args.scale_doc:
        write_between(args.scale_doc, SCALE_BEGIN, SCALE_END, text)
    if args.plot:
        scale_plot(rows, args.plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--overwrites", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3, help="reopens timed (median reported)")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--doc", default=None, help="write the table into this Markdown file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", action="store_true", help="compaction at scale (see above)")
    ap.add_argument("--sizes", default="2000000,8000000,32000000",
                    help="--scale: key counts with 8-byte values")
    ap.add_argument("--wide-sizes", default="2000000",
                    help="--scale: key counts with 100-byte values (the 1M records/s target)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="--scale: compactions per implementation and size (median reported)")
    ap.add_argument("--value-size", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--before", default=None,
                    help="--scale: also an older implementation (pure Python): a source tree "
                         f"or a commit, e.g. {BEFORE_COMMIT} (issue 19's baseline)")
    ap.add_argument("--implementations", default="native,python,before",
                    help="--scale: which of native, python, before to run")
    ap.add_argument("--keep-stores", action="store_true",
                    help="--scale: keep the built stores in --dir and reuse them next time")
    ap.add_argument("--before-max-keys", type=int, default=8_000_000,
                    help="--scale: skip the --before tree above this many keys (its memory)")
    ap.add_argument("--latency-max-keys", type=int, default=8_000_000,
                    help="--scale: run the put latency measurement up to this many keys")
    ap.add_argument("--puts", type=int, default=200_000,
                    help="--scale: puts timed without a compaction")
    ap.add_argument("--scale-doc", default=None, help="--scale: write the table here")
    ap.add_argument("--plot", default=None, help="--scale: write a PNG plot here")
    ap.add_argument("--json", default=None, help="--scale: write the raw results here")
    ap.add_argument("--from-json", default=None,
                    help="--scale: table and plot from earlier runs' results (a,b,...)")
    ap.add_argument("--scale-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tree", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.scale_child:
        if args.scale_child == "build":
            result = child_build(args.store, args.keys, args.value_size)
        elif args.scale_child == "alone":
            result = child_alone(args.store, args.keys)
        else:
            result = child_latency(args.store, args.keys, args.puts, args.value_size)
        print(json.dumps(result))
        return 0
    if args.scale:
        return scale_main(args)
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
