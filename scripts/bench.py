#!/usr/bin/env python3
"""bitkv vs the stores a Python user would pick instead, side by side, plus the *floor*.

    pip install -e '.[bench]'
    python scripts/bench.py                      # N=200,000, 100-byte values, medians of 3 runs
    python scripts/bench.py --quick              # N=20,000, 1 run: a smoke test
    python scripts/bench.py --large              # N=1,000,000
    python scripts/bench.py --value-size 1024 --backends bitkv,lmdb,plyvel --runs 5

Every backend runs in its own subprocess (scripts/bench_workload.py), so imports, caches and
peak RSS do not leak between them; runs are interleaved (run 1 of every backend, then run 2,
...) so slow drifts of a shared machine hit every backend alike. A backend whose library is
missing is skipped with a note. The Markdown report and a PNG chart go to ``--results-dir``
(default docs/bench/); docs/performance.md explains the workload and how to read the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = os.path.join(HERE, "bench_workload.py")
sys.path.insert(0, HERE)

from bench_backends import ADAPTERS  # noqa: E402

ALL_BACKENDS = ["bitkv", "floor", "sqlite3", "dbm.gnu", "dbm.dumb", "semidbm", "diskcache",
                "lmdb", "plyvel", "rocksdict"]
PROBE_BACKENDS = ["bitkv", "floor", "semidbm", "dbm.dumb"]

# (key, column title, kind): "ops" = ops/s (higher is better), "time" = seconds (lower is better)
PHASES = [
    ("fill", "fill", "ops"),
    ("batch_fill", "batched fill", "ops"),
    ("read", "random read", "ops"),
    ("overwrite", "overwrite", "ops"),
    ("reopen", "reopen (ms)", "time"),
    ("delete", "delete", "ops"),
    ("mixed", "mixed 90/10, 4 thr", "ops"),
    ("durable", "durable, 1 thr", "ops"),
    ("durable8", "durable, 8 thr", "ops"),
]

RESULTS_BEGIN = "<!-- bench-results:begin -->"
RESULTS_END = "<!-- bench-results:end -->"


# -- running the children -----------------------------------------------------------------------


CHILD_ENV: dict[str, str] | None = None  # set by main() to point children at the snapshot


def snapshot_bitkv(base: str) -> tuple[str, str] | None:
    """Copy the bitkv package to ``base/src`` and return (that dir, sha256 prefix of its
    sources), so that every run measures the same code even if the tree changes meanwhile."""
    src = os.path.join(ROOT, "bitkv")
    if not os.path.isfile(os.path.join(src, "__init__.py")):
        return None
    dst_root = os.path.join(base, "src")
    shutil.copytree(src, os.path.join(dst_root, "bitkv"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(os.path.join(dst_root, "bitkv")):
        dirnames.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, dst_root).encode() + b"\0")
            with open(path, "rb") as fh:
                digest.update(fh.read())
    return dst_root, digest.hexdigest()[:12]


def run_child(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        proc = subprocess.run([sys.executable, CHILD, json.dumps(cfg)], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT, env=CHILD_ENV)
    except subprocess.TimeoutExpired:
        return {"backend": cfg["backend"], "failed": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"backend": cfg["backend"],
                "failed": f"exit {proc.returncode}: " + " | ".join(tail)}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"backend": cfg["backend"], "failed": "no JSON result: " + lines[-1][:200]}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs of one backend, plus min/max spread and everything noteworthy."""
    ok = [r for r in runs if "phases" in r and "skipped" not in r]
    agg: dict[str, Any] = {"runs": len(ok), "phases": {}, "notes": [], "errors": [],
                           "extra": {}}
    for r in runs:
        if "failed" in r:
            agg["errors"].append(f"run failed: {r['failed']}")
        if "skipped" in r:
            agg["skipped"] = r["skipped"]
    if not ok:
        return agg
    for key, _title, kind in PHASES:
        per = [r["phases"].get(key, {}) for r in ok]
        skips = [p["skip"] for p in per if "skip" in p]
        if skips:
            agg["phases"][key] = {"skip": skips[0]}
            continue
        vals = [p["secs"] if kind == "time" else p["ops_s"] for p in per if "secs" in p]
        if not vals:
            continue
        cell = {"value": median(vals), "min": min(vals), "max": max(vals),
                "partial": any(p.get("partial") for p in per)}
        if cell["partial"]:
            done = min(p["ops"] for p in per)
            cell["note"] = (f"stopped at the time budget after {done:,} of "
                            f"{per[0]['total']:,} ops")
        agg["phases"][key] = cell
    for field in ("disk_after_fill", "disk_after_overwrite", "rss_peak_kb", "rss_base_kb",
                  "rss_peak_all_kb"):
        vals = [r[field] for r in ok if field in r]
        if vals:
            agg[field] = median(vals)
    for name in {k for r in ok for k in r.get("extra", {})}:
        vals = [r["extra"][name]["ops_s"] for r in ok if name in r.get("extra", {})]
        agg["extra"][name] = median(vals)
    for r in ok:
        for e in r.get("errors", []):
            if e not in agg["errors"]:
                agg["errors"].append(e)
    return agg


# -- formatting ---------------------------------------------------------------------------------


def fmt_ops(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def fmt_mb(b: float | None) -> str:
    return "—" if b is None else f"{b / 2**20:,.1f}"


def cell(agg: dict[str, Any], key: str, kind: str) -> str:
    p = agg["phases"].get(key)
    if p is None:
        return "—"
    if "skip" in p:
        return "n/a"
    s = f"{p['value'] * 1000:,.1f}" if kind == "time" else fmt_ops(p["value"])
    return s + ("\\*" if p.get("partial") else "")


def phase_value(aggs: dict[str, Any], backend: str, key: str) -> float | None:
    a = aggs.get(backend)
    if not a or "skipped" in a:
        return None
    p = a["phases"].get(key)
    if not p or "value" not in p:
        return None
    return p["value"]


def speedup(aggs: dict[str, Any], key: str, kind: str, peer: str) -> float | None:
    """How many times faster bitkv is than ``peer`` in phase ``key`` (>1: bitkv faster)."""
    b = phase_value(aggs, "bitkv", key)
    p = phase_value(aggs, peer, key)
    if b is None or p is None or b == 0 or p == 0:
        return None
    return p / b if kind == "time" else b / p


def results_table(aggs: dict[str, Any], order: list[str]) -> list[str]:
    head = ["backend"] + [t for _k, t, _kind in PHASES] + [
        "disk after fill (MiB)", "disk after overwrite (MiB)", "peak RSS (MiB)",
        "RSS over data (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1))
             + "|"]
    for name in order:
        a = aggs[name]
        if "skipped" in a or not a["runs"]:
            continue
        peak = a.get("rss_peak_kb")
        base = a.get("rss_base_kb")
        row = [f"**{name}**" if name == "bitkv" else name]
        row += [cell(a, k, kind) for k, _t, kind in PHASES]
        row += [fmt_mb(a.get("disk_after_fill")), fmt_mb(a.get("disk_after_overwrite")),
                fmt_mb(peak * 1024 if peak else None),
                fmt_mb((peak - base) * 1024 if peak and base else None)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def ratio_table(aggs: dict[str, Any], order: list[str]) -> list[str]:
    head = ["bitkv vs"] + [t.replace(" (ms)", "") for _k, t, _kind in PHASES]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1))
             + "|"]
    for name in order:
        if name == "bitkv" or "skipped" in aggs[name] or not aggs[name]["runs"]:
            continue
        row = [name]
        for key, _t, kind in PHASES:
            r = speedup(aggs, key, kind, name)
            row.append("—" if r is None else fmt_ratio(r))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def evaluate_targets(aggs: dict[str, Any], probe: dict[str, Any], n: int,
                     value_size: int) -> list[tuple[str, str, str, str]]:
    """The targets of issue 7: (target, measured, met?, how)."""
    rows: list[tuple[str, str, str, str]] = []

    def ratio_row(target: str, key: str, kind: str, peer: str, need: float, how: str,
                  at_least: bool = True) -> None:
        r = speedup(aggs, key, kind, peer)
        if r is None:
            rows.append((target, "not measured", "—", how))
            return
        if kind == "time":  # express as bitkv time / peer time, as the target is written
            r = 1 / r
            met = r <= need
        else:
            met = r >= need if at_least else r <= need
        rows.append((target, fmt_ratio(r), "met" if met else "**not met**", how))

    ratio_row("fill, one put per call >= 1.0x plyvel", "fill", "ops", "plyvel", 1.0,
              "bitkv fill ops/s ÷ plyvel fill ops/s")
    if phase_value(aggs, "bitkv", "batch_fill") is None:
        reason = aggs.get("bitkv", {}).get("phases", {}).get("batch_fill", {}).get("skip", "")
        rows.append(("batched fill >= 2x lmdb batched", "not measured", "—",
                     f"bitkv has no batch API yet ({reason})" if reason else "bitkv not run"))
    else:
        ratio_row("batched fill >= 2x lmdb batched", "batch_fill", "ops", "lmdb", 2.0,
                  "bitkv `db.batch()` fill ÷ lmdb one-transaction fill")
    ratio_row("random read >= 1.0x lmdb (CRC checked)", "read", "ops", "lmdb", 1.0,
              "bitkv get (verifies the CRC) ÷ lmdb one read txn per get")
    lm1 = aggs.get("lmdb", {}).get("extra", {}).get("lmdb_read_one_txn")
    b_read = phase_value(aggs, "bitkv", "read")
    if lm1 and b_read:
        rows.append(("  (same, vs lmdb reads in one long txn)", f"{b_read / lm1:.2f}x",
                     "met" if b_read / lm1 >= 1 else "**not met**",
                     "bitkv get ÷ lmdb `txn.get` inside one read transaction"))
    ratio_row("overwrite >= 1.0x plyvel", "overwrite", "ops", "plyvel", 1.0,
              "bitkv overwrite ops/s ÷ plyvel")
    label = f"reopen {n:,} keys <= 0.5x semidbm"
    ratio_row(label, "reopen", "time", "semidbm", 0.5,
              "bitkv open-to-first-read time ÷ semidbm's")
    reopen = phase_value(aggs, "bitkv", "reopen")
    if n >= 1_000_000 and reopen is not None:
        rows.append((f"reopen {n:,} keys <= 1 s", f"{reopen:.2f} s",
                     "met" if reopen <= 1.0 else "**not met**", "open to first read"))
    else:
        rows.append(("reopen 1,000,000 keys <= 1 s",
                     f"not measured at N={n:,}", "—", "run with --large"))
    ratio_row("durable write >= 0.9x raw write+fsync loop", "durable", "ops", "floor", 0.9,
              "bitkv sync=always puts/s ÷ floor os.write+os.fsync per record")
    b1 = phase_value(aggs, "bitkv", "durable")
    b8 = phase_value(aggs, "bitkv", "durable8")
    if b1 and b8:
        rows.append(("8 threads sync=always >= 3x one thread", f"{b8 / b1:.2f}x",
                     "met" if b8 / b1 >= 3 else "**not met**",
                     "bitkv durable puts/s with 8 threads ÷ with 1 thread"))
    else:
        rows.append(("8 threads sync=always >= 3x one thread", "not measured", "—", ""))
    bk = [p for p in probe.get("bitkv", []) if p.get("method") == "tracemalloc"]
    if bk:
        v = bk[0]["beyond_key_bytes"]
        rows.append(("keydir <= 100 bytes/key beyond key bytes",
                     f"{v:.0f} B/key ({bk[0]['keys']:,} keys)",
                     "met" if v <= 100 else "**not met**",
                     "tracemalloc growth of opening the store ÷ keys - 16"))
    else:
        rows.append(("keydir <= 100 bytes/key beyond key bytes", "not measured", "—", ""))
    if value_size != 100:
        rows.append(("(note)", f"value size {value_size} B", "—",
                     "the targets were set for the default 100-byte values"))
    return rows


def probe_table(probe: dict[str, Any]) -> list[str]:
    lines = ["| store | keys | heap growth (tracemalloc) | bytes/key beyond key | "
             "anon RSS growth | bytes/key beyond key | open time (s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, results in probe.items():
        tm = next((r for r in results if r.get("method") == "tracemalloc"), None)
        rss = next((r for r in results if r.get("method") == "rss"), None)
        if not tm and not rss:
            continue
        ref = tm or rss
        assert ref is not None
        lines.append("| " + " | ".join([
            name, f"{ref['keys']:,}",
            fmt_mb(tm["bytes"]) + " MiB" if tm else "—",
            f"{tm['beyond_key_bytes']:.0f}" if tm else "—",
            fmt_mb(rss["bytes"]) + " MiB" if rss else "—",
            f"{rss['beyond_key_bytes']:.0f}" if rss else "—",
            f"{rss['open_secs']:.2f}" if rss else "—",
        ]) + " |")
    return lines


# -- the environment ----------------------------------------------------------------------------


def machine_info(workdir: str) -> dict[str, str]:
    info: dict[str, str] = {}
    info["nproc"] = str(len(os.sched_getaffinity(0)))
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info["cpu"] = cpu
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        kb = int(fh.readline().split()[1])
        info["memory"] = f"{kb / 2**20:.1f} GiB"
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    # the file system and device the stores live on
    best = ("", "?", "?")
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        real = os.path.realpath(workdir)
        for line in fh:
            dev, mnt, fstype = line.split()[:3]
            if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[0]):
                best = (mnt, dev, fstype)
    mnt, dev, fstype = best
    disk = f"{fstype} on {dev} (mounted at {mnt})"
    base = os.path.basename(dev)
    rot = f"/sys/block/{base}/queue/rotational"
    if os.path.exists(rot):
        with open(rot) as fh:
            disk += ", rotational" if fh.read().strip() == "1" else ", non-rotational"
    if fstype in ("tmpfs", "ramfs"):
        disk += " — WARNING: memory-backed, fsync is free, durable rows mean nothing"
    info["disk"] = disk
    info["workdir"] = workdir
    info["load_start"] = load_average()
    return info


def load_average() -> str:
    """The 1-minute load average: on a shared machine, how much else was running."""
    try:
        with open("/proc/loadavg") as fh:
            return fh.read().split()[0]
    except OSError:
        return "?"


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("bitkv", "crc32c", "diskcache", "semidbm", "lmdb", "plyvel", "rocksdict"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bitkv"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if head:
            out["bitkv"] = out.get("bitkv", "?") + f" (git {head}" + (
                ", with uncommitted changes in bitkv/)" if dirty else ")")
    import sqlite3

    out["sqlite"] = sqlite3.sqlite_version
    with contextlib.suppress(Exception):
        import plyvel

        out["leveldb"] = plyvel.__leveldb_version__
    with contextlib.suppress(Exception):
        import lmdb

        out["liblmdb"] = ".".join(map(str, lmdb.version()))
    return out


# -- the chart ----------------------------------------------------------------------------------


def chart(aggs: dict[str, Any], order: list[str], path: str, title: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart (pip install -e '.[bench]')"
    names = [n for n in order if "skipped" not in aggs[n] and aggs[n]["runs"]]
    fig, axes = plt.subplots(3, 3, figsize=(15, 11))
    for ax, (key, ttl, kind) in zip(axes.flat, PHASES, strict=False):
        labels, vals, colors = [], [], []
        for name in names:
            v = phase_value(aggs, name, key)
            if v is None:
                continue
            labels.append(name)
            vals.append(v * 1000 if kind == "time" else v)
            colors.append("#d62728" if name == "bitkv" else
                          "#7f7f7f" if name == "floor" else "#1f77b4")
        ax.barh(labels[::-1], vals[::-1], color=colors[::-1])
        if vals and min(vals) > 0 and max(vals) / min(vals) > 30:
            ax.set_xscale("log")  # else a linear axis: log ticks crowd a narrow range
        ax.set_title(ttl + ("  (lower is better)" if kind == "time" else "  (ops/s)"),
                     fontsize=10)
        ax.tick_params(labelsize=8)
        for i, v in enumerate(vals[::-1]):
            ax.text(v, i, f" {v:,.1f}" if kind == "time" else f" {v:,.0f}", va="center",
                    fontsize=7)
        ax.margins(x=0.35)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default=",".join(ALL_BACKENDS),
                    help="comma-separated, from: " + ", ".join(ALL_BACKENDS))
    ap.add_argument("--runs", type=int, default=3, help="runs per backend; medians (default 3)")
    ap.add_argument("--quick", action="store_true",
                    help="N=20,000, 1 run, 200 durable writes, 20,000-key memory probe")
    ap.add_argument("--large", action="store_true", help="N=1,000,000")
    ap.add_argument("--n", type=int, help="number of keys (overrides --quick/--large)")
    ap.add_argument("--value-size", type=int, default=100,
                    help="value bytes: 100 (default), 1024 or 16384")
    ap.add_argument("--seed", type=int, default=20240607)
    ap.add_argument("--threads", type=int, default=4, help="threads of the mixed phase")
    ap.add_argument("--durable-n", type=int, help="durable writes (default 2,000)")
    ap.add_argument("--durable-threads", type=int, default=8)
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds per phase before it is cut short and marked * (default 30)")
    ap.add_argument("--batch-max-bytes", type=int, default=64 << 20,
                    help="values per batch are capped at this many bytes (default 64 MiB)")
    ap.add_argument("--probe-keys", type=int,
                    help="keys of the keydir memory probe (default 1,000,000)")
    ap.add_argument("--no-probe", action="store_true", help="skip the keydir memory probe")
    ap.add_argument("--probe-only", action="store_true",
                    help="run only the keydir memory probe (of bitkv, floor, semidbm, dbm.dumb "
                         "among --backends)")
    ap.add_argument("--results-dir", default=os.path.join(ROOT, "docs", "bench"))
    ap.add_argument("--workdir", default=None,
                    help="where the stores are created (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the store directories")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run the live bitkv/ tree instead of a copy taken at start")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    ap.add_argument("--update-doc", metavar="PATH",
                    help=f"replace the text between {RESULTS_BEGIN} and {RESULTS_END} in "
                         "PATH (e.g. docs/performance.md) with the results")
    args = ap.parse_args(argv)
    if args.n is None:
        args.n = 20_000 if args.quick else 1_000_000 if args.large else 200_000
    if args.quick:
        args.runs = 1
    if args.durable_n is None:
        args.durable_n = 200 if args.quick else 2_000
    if args.probe_keys is None:
        args.probe_keys = 20_000 if args.quick else 1_000_000
    if args.quick and args.budget == 30.0:
        args.budget = 5.0
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in ADAPTERS]
    if unknown:
        ap.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(ALL_BACKENDS)}")
    if args.value_size < 1:
        ap.error("--value-size must be positive")
    return args


def run_probe(args: argparse.Namespace, base: str) -> dict[str, Any]:
    probe: dict[str, Any] = {}
    for name in [b for b in PROBE_BACKENDS if b in args.backends]:
        pdir = os.path.join(base, f"probe-{name}")
        cfg = {"mode": "probe-build", "backend": name, "dir": pdir, "keys": args.probe_keys,
               "probe_value_size": 8}
        log(f"memory probe: building {name} with {args.probe_keys:,} keys")
        built = run_child(cfg, args.timeout)
        if "skipped" in built or "failed" in built:
            probe[name] = [built]
            shutil.rmtree(pdir, ignore_errors=True)
            continue
        results = []
        for method in ("tracemalloc", "rss"):
            r = run_child(dict(cfg, mode="probe-measure", method=method), args.timeout)
            results.append(r)
        probe[name] = results
        shutil.rmtree(pdir, ignore_errors=True)
    return probe


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.results_dir, exist_ok=True)
    global CHILD_ENV
    base = tempfile.mkdtemp(prefix="bitkv-bench-", dir=args.workdir)
    snap = None if args.no_snapshot else snapshot_bitkv(base)
    if snap:
        env = dict(os.environ)
        env["PYTHONPATH"] = snap[0] + (os.pathsep + env["PYTHONPATH"]
                                       if env.get("PYTHONPATH") else "")
        CHILD_ENV = env
        args.snapshot_hash = snap[1]
    else:
        args.snapshot_hash = None
    per_batch = max(1, min(args.n, args.batch_max_bytes // args.value_size))
    info = machine_info(base)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t_start = time.time()
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in args.backends}
    skipped: dict[str, str] = {}
    try:
        for run in range(0 if args.probe_only else args.runs):
            for name in args.backends:
                if name in skipped:
                    continue
                work = os.path.join(base, f"{name}-run{run}")
                cfg = {"mode": "run", "backend": name, "n": args.n,
                       "value_size": args.value_size, "seed": args.seed, "dir": work,
                       "budget": args.budget, "threads": args.threads,
                       "durable_n": args.durable_n, "durable_threads": args.durable_threads,
                       "batch_chunk": per_batch, "keep": args.keep}
                t0 = time.time()
                r = run_child(cfg, args.timeout)
                runs[name].append(r)
                if "skipped" in r:
                    skipped[name] = r["skipped"]
                    log(f"[run {run + 1}/{args.runs}] {name}: skipped: {r['skipped']}")
                elif "failed" in r:
                    log(f"[run {run + 1}/{args.runs}] {name}: FAILED: {r['failed']}")
                else:
                    log(f"[run {run + 1}/{args.runs}] {name}: {time.time() - t0:.1f} s")
                if not args.keep:
                    shutil.rmtree(work, ignore_errors=True)
        probe = {} if args.no_probe else run_probe(args, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    aggs = {name: aggregate(rs) for name, rs in runs.items()}
    order = [b for b in args.backends]
    if args.probe_only:
        stem = f"probe-k{args.probe_keys}"
        png_name, chart_note = None, None
    else:
        stem = f"bench-n{args.n}-v{args.value_size}"
        png = os.path.join(args.results_dir, stem + ".png")
        title = (f"bitkv and peers: N={args.n:,}, {args.value_size}-byte values, "
                 f"median of {args.runs} run(s), {info['nproc']} CPUs")
        chart_note = chart(aggs, order, png, title)
        png_name = None if chart_note else os.path.basename(png)
    md = render(args, aggs, order, probe, info, started, time.time() - t_start, per_batch,
                png_name, chart_note)
    md_path = os.path.join(args.results_dir, stem + ".md")
    with open(md_path, "w") as fh:
        fh.write(md)
    print(md)
    log(f"wrote {md_path}" + (f" and {png_name}" if png_name else ""))
    if args.update_doc:
        update_doc(args.update_doc, md, os.path.relpath(args.results_dir,
                                                        os.path.dirname(args.update_doc)))
        log(f"updated {args.update_doc}")
    failed = any(a["errors"] for a in aggs.values())
    return 1 if failed else 0


def render_throughput(out: list[str], args: argparse.Namespace, aggs: dict[str, Any],
                      order: list[str], probe: dict[str, Any], per_batch: int) -> None:
    out.append("### Throughput (ops/s, higher is better; reopen in ms, lower is better)\n")
    out += results_table(aggs, order)
    out.append("")
    out.append(f"Batched fill: batches of {per_batch:,} puts. Durable: {args.durable_n:,} writes, "
               f"each on stable storage before the next; 8 thr = {args.durable_threads} threads "
               f"sharing {args.durable_n:,} writes. Mixed: {args.threads} threads, "
               f"{args.n:,} ops in all, 90% get / 10% put. `n/a`: the library has no such "
               f"API; `\\*`: cut short at the {args.budget:.0f} s phase budget "
               f"(rate over the ops done). RSS over data: peak RSS minus the RSS after the "
               f"workload's keys and values were generated.\n")
    if "bitkv" in aggs and aggs["bitkv"]["runs"]:
        out.append("### bitkv ÷ peer (higher is better for bitkv; reopen compares times)\n")
        out += ratio_table(aggs, order)
        out.append("")
        out.append("### Targets (issue 7)\n")
        out.append("| target | measured | status | how |")
        out.append("|---|---:|---|---|")
        for t, m, s, h in evaluate_targets(aggs, probe, args.n, args.value_size):
            out.append(f"| {t} | {m} | {s} | {h} |")
        out.append("")


def render(args: argparse.Namespace, aggs: dict[str, Any], order: list[str],
           probe: dict[str, Any], info: dict[str, str], started: str, elapsed: float,
           per_batch: int, png_name: str | None, chart_note: str | None) -> str:
    out: list[str] = []
    cmd = "python scripts/bench.py"
    if os.path.basename(sys.argv[0]) == "bench.py" and sys.argv[1:]:
        cmd += " " + " ".join(sys.argv[1:])
    ran = any(a["runs"] for a in aggs.values())
    if ran:
        out.append(f"## Results: N = {args.n:,} keys, {args.value_size}-byte values\n")
        out.append(f"`{cmd}` — started {started}, took {elapsed / 60:.1f} min; median of "
                   f"{args.runs} run(s) per backend, each backend in its own process.\n")
    else:
        out.append(f"## Results: keydir memory probe, {args.probe_keys:,} keys\n")
        out.append(f"`{cmd}` — started {started}, took {elapsed / 60:.1f} min.\n")
    out.append(f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info.get('memory', '?')} RAM, "
               f"Linux {info['kernel']}, Python {info['python']}; stores on {info['disk']}. "
               f"Load average (1 min) {info['load_start']} at the start, {load_average()} at "
               f"the end.\n")
    vers = library_versions()
    if args.snapshot_hash:
        vers["bitkv"] += f", source snapshot sha256 {args.snapshot_hash}"
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()) + ".\n")
    if ran:
        render_throughput(out, args, aggs, order, probe, per_batch)
    if probe:
        out.append("### Keydir memory probe\n")
        keys = next((r["keys"] for rs in probe.values() for r in rs if "keys" in r),
                    args.probe_keys)
        out.append(f"Open a store holding {keys:,} keys of 16 bytes (8-byte values) in a fresh "
                   "process and read one key; growth of the Python heap (tracemalloc) and of "
                   "anonymous RSS over the open, per key, minus the 16 key bytes.\n")
        out += probe_table(probe)
        for name, rs in probe.items():
            for r in rs:
                if "skipped" in r or "failed" in r:
                    out.append(f"\n- {name}: {r.get('skipped') or r.get('failed')}")
        out.append("")
    if png_name:
        out.append(f"![throughput chart]({png_name})\n")
    notes = []
    if chart_note:
        notes.append(chart_note)
    for name in order:
        a = aggs[name]
        if "skipped" in a:
            notes.append(f"{name}: skipped: {a['skipped']}")
            continue
        for key, title, _k in PHASES:
            p = a["phases"].get(key, {})
            if "note" in p:
                notes.append(f"{name} {title}: {p['note']}")
            if "skip" in p and not (key == "batch_fill" and "no batch API" in p["skip"]):
                notes.append(f"{name} {title}: n/a: {p['skip']}")
        for e in a["errors"]:
            notes.append(f"{name}: ERROR: {e}")
        if "lmdb_read_one_txn" in a["extra"]:
            notes.append(f"lmdb random read with all gets in ONE read transaction: "
                         f"{fmt_ops(a['extra']['lmdb_read_one_txn'])} ops/s (the table uses "
                         f"one read transaction per get)")
    if notes:
        out.append("### Notes\n")
        out += [f"- {n}" for n in notes]
        out.append("")
    spread = []
    for name in order:
        a = aggs[name]
        if "skipped" in a or a["runs"] < 2:
            continue
        parts = []
        for key, title, kind in PHASES:
            p = a["phases"].get(key, {})
            if "value" in p:
                lo, hi = ((p["min"] * 1000, p["max"] * 1000) if kind == "time"
                          else (p["min"], p["max"]))
                parts.append(f"{title} {lo:,.1f} to {hi:,.1f}" if kind == "time"
                             else f"{title} {lo:,.0f} to {hi:,.0f}")
        spread.append(f"- {name}: " + "; ".join(parts))
    if spread:
        out.append("<details><summary>Spread (min to max over runs)</summary>\n")
        out += spread
        out.append("\n</details>\n")
    return "\n".join(out) + "\n"


def update_doc(path: str, md: str, rel_results: str) -> None:
    with open(path) as fh:
        text = fh.read()
    if RESULTS_BEGIN not in text or RESULTS_END not in text:
        raise SystemExit(f"{path} has no {RESULTS_BEGIN} ... {RESULTS_END} section")
    # the report's image link is relative to the results dir; make it relative to the doc,
    # and its headings go one level down, under the doc's own "Latest results"
    md = md.replace("](bench-", f"]({rel_results}/bench-")
    md = "\n".join("#" + line if line.startswith("#") else line for line in md.split("\n"))
    head, rest = text.split(RESULTS_BEGIN, 1)
    _old, tail = rest.split(RESULTS_END, 1)
    with open(path, "w") as fh:
        fh.write(head + RESULTS_BEGIN + "\n" + md + RESULTS_END + tail)


if __name__ == "__main__":
    sys.exit(main())
