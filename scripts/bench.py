#!/usr/bin/env python3
"""bitkv vs the stores a Python user would pick instead, side by side, plus the *floor*.

    pip install -e '.[bench]'
    python scripts/bench.py                      # N=200,000, 100-byte values, medians of 3 runs
    python scripts/bench.py --quick              # N=20,000, 1 run: a smoke test
    python scripts/bench.py --large              # N=1,000,000
    python scripts/bench.py --value-size 1024 --backends bitkv,lmdb,plyvel --runs 5
    python scripts/bench.py --baseline 8529961   # adds base-py: pure Python at that commit
    python scripts/bench.py --scale-only --scale 1M,4M,16M,48M   # open time, index, gets by size

bitkv runs as two backends from the same install: ``bitkv`` (the compiled hot path) and
``bitkv-py`` (``BITKV_PURE_PYTHON=1``, the pure-Python reference); ``--baseline REV`` adds
``base-py`` and ``base`` (the two modes of the tree at git revision REV), so "no slower than
then" is a ratio measured in the same run. Every backend runs in its own subprocess
(scripts/bench_workload.py), so imports, caches and peak RSS do not leak between them; runs are
interleaved (run 1 of every backend, then run 2, ...) so slow drifts of a shared machine hit
every backend alike. A backend whose library is missing is skipped with a note. The Markdown
report and a PNG chart go to ``--results-dir`` (default: a new temporary directory, so that a
run leaves the checkout clean); docs/performance.md explains the workload and how to read the
numbers.
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

ALL_BACKENDS = ["bitkv", "bitkv-py", "floor", "sqlite3", "dbm.gnu", "dbm.dumb", "semidbm",
                "diskcache", "lmdb", "plyvel", "rocksdict"]
PROBE_BACKENDS = ["bitkv", "bitkv-py", "base", "base-py", "floor", "semidbm", "dbm.dumb"]

# The bitkv variants: label -> (the mode it must run in, which source). All use the "bitkv"
# adapter; only the child's environment differs (see child_env).
BITKV_VARIANTS = {
    "bitkv": ("native", "tree"),
    "bitkv-py": ("python", "tree"),
    "base": ("native", "baseline"),
    "base-py": ("python", "baseline"),
}

# (key, column title, kind): "ops" = ops/s (higher is better), "time" = seconds (lower is better)
PHASES = [
    ("fill", "fill", "ops"),
    ("batch_fill", "batched fill", "ops"),
    ("read", "random read", "ops"),
    ("overwrite", "overwrite", "ops"),
    ("reopen", "reopen (ms)", "time"),
    ("reopen_hist", "reopen, history, new process (ms)", "time"),
    ("delete", "delete", "ops"),
    ("mixed", "mixed 90/10, 4 thr", "ops"),
    ("durable", "durable, 1 thr", "ops"),
    ("durable2", "durable, 2 thr", "ops"),
    ("durable4", "durable, 4 thr", "ops"),
    ("durable8", "durable, 8 thr", "ops"),
]
# The durable phases by thread count (the last one's count is --durable-threads).
DURABLE_KEYS = (("durable2", 2), ("durable4", 4), ("durable8", 8))

# The single-threaded phases that do not wait for the disk: their CPU time per op (the
# process's, every thread included) is also reported, as on a loaded machine it moves far less
# than the wall clock (an A/B of pure-Python gets at load 13 on 2 CPUs: 1.39-1.83 us of CPU per
# get where the wall-clock rate moved 2x).
CPU_PHASES = ["fill", "batch_fill", "read", "overwrite", "delete"]

RESULTS_BEGIN = "<!-- bench-results:begin -->"
RESULTS_END = "<!-- bench-results:end -->"
# docs/performance.md's issue-14 section: the targets and the scale table go there
TARGETS_BEGIN = "<!-- bench-issue14:begin -->"
TARGETS_END = "<!-- bench-issue14:end -->"


# -- running the children -----------------------------------------------------------------------


# Where each bitkv source lives for the children: "tree" (a copy of this checkout's bitkv/,
# taken at the start) and "baseline" (git archive of --baseline). None: the installed bitkv.
SOURCES: dict[str, str | None] = {"tree": None, "baseline": None}


def adapter_of(label: str) -> str:
    """The adapter a backend label runs: every bitkv variant is the "bitkv" adapter."""
    return "bitkv" if label in BITKV_VARIANTS else label


def child_env(label: str) -> dict[str, str]:
    """The environment of ``label``'s children: the bitkv source it imports and its mode."""
    env = dict(os.environ)
    # a BITKV_PURE_PYTHON left in the caller's shell must not turn "bitkv" into "bitkv-py"
    env.pop("BITKV_PURE_PYTHON", None)
    mode, source = BITKV_VARIANTS.get(label, ("native", "tree"))
    if mode == "python":
        env["BITKV_PURE_PYTHON"] = "1"
    src = SOURCES[source]
    if src:
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                   else "")
    return env


def source_digest(root: str) -> str:
    """sha256 prefix of the sources under ``root``/bitkv (the built extension excluded)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, files in os.walk(os.path.join(root, "bitkv")):
        dirnames.sort()
        for name in sorted(files):
            if name.endswith((".so", ".pyd")):
                continue
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, root).encode() + b"\0")
            with open(path, "rb") as fh:
                digest.update(fh.read())
    return digest.hexdigest()[:12]


def build_extension(root: str) -> str | None:
    """Build the tree's compiled extension in place, as ``pip install`` would (its own
    setup.py, its own flags). A tree without setup.py has none to build. Returns a note if the
    build did not produce one (the native variants of that tree are then skipped)."""
    if not os.path.isfile(os.path.join(root, "setup.py")):
        return None
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                          cwd=root, capture_output=True, text=True, timeout=600)
    built = [n for n in os.listdir(os.path.join(root, "bitkv")) if n.endswith((".so", ".pyd"))]
    if proc.returncode != 0 or not built:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        return f"no compiled extension built (exit {proc.returncode}: {tail})"
    return None


def snapshot_bitkv(base: str) -> tuple[str, str, str | None] | None:
    """Copy this checkout's bitkv package (and setup.py, pyproject.toml) to ``base/src`` and
    build its extension there; return (that dir, sha256 prefix of the sources, build note).
    Every run then measures the same code even if the tree changes meanwhile, and a compiled
    extension left stale in the checkout by an edit without a rebuild is not measured."""
    src = os.path.join(ROOT, "bitkv")
    if not os.path.isfile(os.path.join(src, "__init__.py")):
        return None
    dst_root = os.path.join(base, "src")
    shutil.copytree(src, os.path.join(dst_root, "bitkv"),
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd"))
    for name in ("setup.py", "pyproject.toml"):
        if os.path.isfile(os.path.join(ROOT, name)):
            shutil.copy(os.path.join(ROOT, name), dst_root)
    return dst_root, source_digest(dst_root), build_extension(dst_root)


def snapshot_git(base: str, rev: str) -> tuple[str, str, str | None]:
    """The bitkv package (and setup.py, pyproject.toml) of git revision ``rev`` in
    ``base/baseline``, its extension built; returns (dir, full commit, build note)."""
    commit = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=30)
    if commit.returncode != 0:
        raise SystemExit(f"--baseline {rev}: not a commit of this repository")
    sha = commit.stdout.strip()
    dst_root = os.path.join(base, "baseline")
    os.makedirs(dst_root)
    paths = [p for p in ("bitkv", "setup.py", "pyproject.toml")
             if subprocess.run(["git", "cat-file", "-e", f"{sha}:{p}"], cwd=ROOT,
                               capture_output=True, timeout=30).returncode == 0]
    archive = subprocess.run(["git", "archive", "--format=tar", sha, "--", *paths], cwd=ROOT,
                             capture_output=True, check=True, timeout=120).stdout
    subprocess.run(["tar", "-x", "-C", dst_root], input=archive, check=True, timeout=120)
    return dst_root, sha, build_extension(dst_root)


def variant_mode(label: str, timeout: float) -> str:
    """The mode ``label``'s children actually run in: "native", "python", or why neither."""
    proc = subprocess.run([sys.executable, "-c", "import bitkv; "
                           "print(getattr(bitkv, 'IMPLEMENTATION', 'python'))"],
                          capture_output=True, text=True, timeout=timeout, cwd=HERE,
                          env=child_env(label))
    if proc.returncode != 0:
        return "import failed: " + " | ".join(proc.stderr.strip().splitlines()[-2:])
    return proc.stdout.strip()


def run_child(label: str, cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    cfg = dict(cfg, backend=adapter_of(label), timeout=timeout)
    try:
        proc = subprocess.run([sys.executable, CHILD, json.dumps(cfg)], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT, env=child_env(label))
    except subprocess.TimeoutExpired:
        return {"backend": label, "failed": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"backend": label, "failed": f"exit {proc.returncode}: " + " | ".join(tail)}
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        return {"backend": label, "failed": "no JSON result: " + lines[-1][:200]}
    result["backend"] = label
    want = BITKV_VARIANTS.get(label, ("", ""))[0]
    got = result.get("implementation")
    if want and got and got != want:  # checked up front too; this catches a change since
        return {"backend": label, "failed": f"ran in {got} mode, not {want}"}
    return result


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
    agg["implementation"] = ok[0].get("implementation")
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
        if len(vals) == len(per):  # every run has it: kept in run order, for paired ratios
            cell["per_run"] = vals
        cpus = [p["cpu_secs"] / p["ops"] * 1e6 for p in per if p.get("cpu_secs") and p["ops"]]
        if key in CPU_PHASES and cpus:
            cell["cpu_us"] = median(cpus)
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


def fmt_secs(t: float) -> str:
    """Seconds with three significant digits: a compiled open of a small store takes a few
    milliseconds, which two decimals would print as 0.00."""
    return f"{t:.3g}" if t < 1 else f"{t:.2f}"


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


def speedup(aggs: dict[str, Any], key: str, kind: str, peer: str,
            subject: str = "bitkv") -> float | None:
    """How many times faster ``subject`` is than ``peer`` in phase ``key`` (>1: faster)."""
    b = phase_value(aggs, subject, key)
    p = phase_value(aggs, peer, key)
    if b is None or p is None or b == 0 or p == 0:
        return None
    return p / b if kind == "time" else b / p


def paired_ratio(aggs: dict[str, Any], subject: str, key: str, peer: str,
                 peer_key: str | None = None) -> float | None:
    """Throughput of ``subject`` in phase ``key`` ÷ ``peer``'s in ``peer_key`` (default the
    same phase): the median of the per-run ratios when both have every run (run i of each
    ran back to back: the runs are interleaved, so a disk that speeds up and slows down
    between runs, as a shared one does, moves both sides of each ratio alike), else the
    ratio of the medians."""
    a, b = aggs.get(subject), aggs.get(peer)
    if not a or not b or "skipped" in a or "skipped" in b:
        return None
    pa, pb = a["phases"].get(key) or {}, b["phases"].get(peer_key or key) or {}
    ra, rb = pa.get("per_run"), pb.get("per_run")
    if ra and rb and len(ra) == len(rb) and all(ra) and all(rb):
        return median([x / y for x, y in zip(ra, rb, strict=True)])
    if pa.get("value") and pb.get("value"):
        return float(pa["value"] / pb["value"])
    return None


def ran(aggs: dict[str, Any], name: str) -> bool:
    a = aggs.get(name)
    return bool(a and "skipped" not in a and a["runs"])


def results_table(aggs: dict[str, Any], order: list[str]) -> list[str]:
    head = ["backend"] + [t for _k, t, _kind in PHASES] + [
        "disk after fill (MiB)", "disk after overwrite (MiB)", "peak RSS (MiB)",
        "RSS over data (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1))
             + "|"]
    for name in order:
        a = aggs[name]
        if not ran(aggs, name):
            continue
        peak = a.get("rss_peak_kb")
        base = a.get("rss_base_kb")
        row = [f"**{name}**" if name in BITKV_VARIANTS else name]
        row += [cell(a, k, kind) for k, _t, kind in PHASES]
        row += [fmt_mb(a.get("disk_after_fill")), fmt_mb(a.get("disk_after_overwrite")),
                fmt_mb(peak * 1024 if peak else None),
                fmt_mb((peak - base) * 1024 if peak and base else None)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def ratio_table(aggs: dict[str, Any], order: list[str], subject: str = "bitkv") -> list[str]:
    """``subject`` ÷ every other backend that ran, phase by phase."""
    head = [f"{subject} vs"] + [t.replace(" (ms)", "") for _k, t, _kind in PHASES]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1))
             + "|"]
    for name in order:
        if name == subject or not ran(aggs, name):
            continue
        row = [name]
        for key, _t, kind in PHASES:
            r = speedup(aggs, key, kind, name, subject)
            row.append("—" if r is None else fmt_ratio(r))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def cpu_us(aggs: dict[str, Any], backend: str, key: str) -> float | None:
    if not ran(aggs, backend):
        return None
    v = aggs[backend]["phases"].get(key, {}).get("cpu_us")
    return float(v) if v else None


def cpu_tables(aggs: dict[str, Any], order: list[str]) -> list[str]:
    """CPU time per op of the CPU_PHASES, then each bitkv mode ÷ every other backend by it."""
    titles = [t for k, t, _kind in PHASES if k in CPU_PHASES]
    lines = ["| backend | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    for name in order:
        if not ran(aggs, name):
            continue
        vals = [cpu_us(aggs, name, k) for k in CPU_PHASES]
        lines.append(f"| {name} | " + " | ".join("—" if v is None else f"{v:.2f}"
                                                 for v in vals) + " |")
    for subject in (NATIVE, PURE):
        if not ran(aggs, subject):
            continue
        lines += ["", f"| {subject} vs, by CPU time | " + " | ".join(titles) + " |",
                  "|---|" + "---:|" * len(titles)]
        for name in order:
            if name == subject or not ran(aggs, name):
                continue
            cells = []
            for k in CPU_PHASES:
                mine, theirs = cpu_us(aggs, subject, k), cpu_us(aggs, name, k)
                cells.append("—" if not mine or not theirs else fmt_ratio(theirs / mine))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


# One row of the targets table: (target, bitkv, bitkv-py, status of bitkv, how measured).
TargetRow = tuple[str, str, str, str, str]
NATIVE, PURE = "bitkv", "bitkv-py"
# 48M keys in <= 5 s was set for 16 cores; here the bound scales with the cores (see
# evaluate_targets).
SCALE_TARGET_KEYS, SCALE_TARGET_SECS, SCALE_TARGET_CORES = 48_000_000, 5.0, 16


def status(met: bool | None) -> str:
    return "—" if met is None else "met" if met else "**not met**"


def evaluate_targets(aggs: dict[str, Any], probe: dict[str, Any], scale: list[dict[str, Any]],
                     n: int, value_size: int, nproc: int, baseline: str | None,
                     reopens: dict[str, list[float]] | None = None,
                     reopen_n: int | None = None) -> list[TargetRow]:
    """The targets of issue 14, each for both modes; the status is the compiled mode's (the
    pure-Python mode has one target of its own: no slower than the baseline)."""
    rows: list[TargetRow] = []

    def ratio_row(target: str, key: str, peer: str, need: float, how: str) -> None:
        cells = []
        for subject in (NATIVE, PURE):
            r = speedup(aggs, key, "ops", peer, subject)
            cells.append("—" if r is None else fmt_ratio(r))
        r = speedup(aggs, key, "ops", peer, NATIVE)
        rows.append((target, cells[0], cells[1], status(None if r is None else r >= need), how))

    ratio_row("fill >= 2x plyvel", "fill", "plyvel", 2.0,
              "fill ops/s (one put per call) ÷ plyvel's")
    ratio_row("random get (CRC checked) >= 2x lmdb", "read", "lmdb", 2.0,
              "get ops/s (every get checks the record's CRC) ÷ lmdb with one read txn per get")
    ratio_row("overwrite >= 2x plyvel", "overwrite", "plyvel", 2.0,
              "overwrite ops/s ÷ plyvel's")
    ratio_row("batched fill >= 1x lmdb one-transaction fill", "batch_fill", "lmdb", 1.0,
              "`db.batch()` fill ÷ lmdb's fill in one write transaction")
    # The durable rows: paired per-run ratios (fsync speed swings between runs on a shared
    # disk; see paired_ratio).
    cells = []
    for subject in (NATIVE, PURE):
        r = paired_ratio(aggs, subject, "durable", "plyvel")
        cells.append("—" if r is None else fmt_ratio(r))
    r = paired_ratio(aggs, NATIVE, "durable", "plyvel")
    rows.append(("durable single writer >= 1.3x plyvel", cells[0], cells[1],
                 status(None if r is None else r >= 1.3),
                 '`sync="always"` puts/s, 1 thread ÷ plyvel `put(sync=True)`; median of the '
                 "per-run ratios (runs interleaved)"))
    cells = []
    for subject in (NATIVE, PURE):
        r = paired_ratio(aggs, subject, "durable8", subject, "durable")
        cells.append("—" if r is None else fmt_ratio(r))
    r = paired_ratio(aggs, NATIVE, "durable8", NATIVE, "durable")
    rows.append(('8 threads sync="always" >= 3x one thread', cells[0], cells[1],
                 status(None if r is None else r >= 3),
                 "durable puts/s with 8 threads ÷ with 1 thread, same mode, same run; median "
                 "over runs"))
    cells = []
    for subject in (NATIVE, PURE):
        parts = []
        for key, count in DURABLE_KEYS:
            r = paired_ratio(aggs, subject, key, subject, "durable")
            if r is not None:
                parts.append(f"{count}: {fmt_ratio(r)}")
        cells.append(", ".join(parts) or "—")
    rows.append(('group commit: 2, 4, 8 threads ÷ 1 thread (`sync="always"`)', cells[0],
                 cells[1], "—", "as the row above, for each thread count (the 8 is "
                 "`--durable-threads`)"))

    if reopens and reopen_n:  # --reopen-n: the phase alone, at its own size
        size = reopen_n
        times = {s: median(reopens[s]) if reopens.get(s) else None for s in (NATIVE, PURE)}
        how = (f"`--reopen-n {fmt_keys(reopen_n)}`: fill {reopen_n:,} keys, overwrite half, "
               "delete a tenth (one call each), close; a fresh process opens the store and "
               f"reads one key; median of {len(reopens.get(NATIVE) or reopens.get(PURE, []))}")
    else:  # the workload's phase, at N
        size = n
        times = {s: phase_value(aggs, s, "reopen_hist") for s in (NATIVE, PURE)}
        how = (f"at N={n:,}: fill, overwrite N/2, delete N/10, 4-thread mixed; then a fresh "
               "process opens the store and reads one key")
    cells = ["—" if times[s] is None else f"{times[s]:.3f} s" for s in (NATIVE, PURE)]
    v = times[NATIVE]
    if size < 1_000_000:
        how += "; the target is for 1M keys: `--reopen-n 1M` or `--large`"
    rows.append(("reopen 1M keys with history <= 0.2 s", cells[0], cells[1],
                 status(v <= 0.2 if v is not None and size >= 1_000_000 else None), how))

    rows += scale_targets(scale, nproc)

    cells, met = [], None
    semidbm = next((r for r in probe.get("semidbm", []) if r.get("method") == "rss"), None)
    for subject in (NATIVE, PURE):
        rss = next((r for r in probe.get(subject, []) if r.get("method") == "rss"), None)
        tm = next((r for r in probe.get(subject, []) if r.get("method") == "tracemalloc"), None)
        if not rss:
            cells.append("—")
            continue
        text = f"{rss['beyond_key_bytes']:.0f} B/key"
        if tm:
            text += f" ({tm['beyond_key_bytes']:.0f} traced)"
        if semidbm and rss["beyond_key_bytes"] > 0:
            text += f", semidbm ÷ {semidbm['beyond_key_bytes'] / rss['beyond_key_bytes']:.1f}"
        cells.append(text)
        if subject == NATIVE:
            met = rss["beyond_key_bytes"] <= 40 and (
                semidbm is None or semidbm["beyond_key_bytes"] >= 4 * rss["beyond_key_bytes"])
    keys = next((r["keys"] for rs in probe.values() for r in rs if "keys" in r), 0)
    rows.append(("index <= 40 bytes/key beyond the key (4x under semidbm)", cells[0], cells[1],
                 status(met), f"RssAnon growth of an open of {keys:,} 16-byte keys ÷ keys - 16 "
                 "(tracemalloc in brackets); semidbm's the same way"))

    worst = min(pure_vs_baseline(aggs, scale, reopens, reopen_n), default=None)
    if worst is None:
        rows.append(("pure-Python mode no slower than before on any row", "", "not measured",
                     "—", "run with `--baseline REV` (base-py: pure Python at REV)"))
    else:
        verdict = ("met" if worst[0] >= 1.0 else
                   "within noise (>= 0.9x)" if worst[0] >= 0.9 else "**not met**")
        rows.append(("pure-Python mode no slower than before on any row", "",
                     f"worst {fmt_ratio(worst[0])} ({worst[1]})", verdict,
                     f"bitkv-py ÷ base-py (pure Python at git {baseline}): every phase (the "
                     "`bitkv-py vs` table), the reopen at `--reopen-n` and the open and gets "
                     "of every `--scale` size; the status is this row's"))
    if value_size != 100:
        rows.append(("(note)", f"value size {value_size} B", "", "—",
                     "the targets were set for the default 100-byte values"))
    return rows


def pure_vs_baseline(aggs: dict[str, Any], scale: list[dict[str, Any]],
                     reopens: dict[str, list[float]] | None,
                     reopen_n: int | None) -> list[tuple[float, str]]:
    """(bitkv-py ÷ base-py, row) for every row both measured; > 1: bitkv-py is faster."""
    out = []
    for key, title, kind in PHASES:
        r = speedup(aggs, key, kind, "base-py", PURE)
        if r is not None:
            out.append((r, title.replace(" (ms)", "")))
    if reopens and reopen_n and reopens.get(PURE) and reopens.get("base-py"):
        out.append((median(reopens["base-py"]) / median(reopens[PURE]),
                    f"reopen with history, {fmt_keys(reopen_n)}"))
    opened = {(r["backend"], r["keys"]): r for r in scale if "open_secs" in r}
    for (label, keys), r in sorted(opened.items(), key=lambda kv: kv[0][1]):
        base = opened.get(("base-py", keys))
        if label != PURE or base is None:
            continue
        out.append((base["open_secs"] / r["open_secs"], f"open at {fmt_keys(keys)}"))
        out.append((r["gets_s"] / base["gets_s"], f"gets at {fmt_keys(keys)}"))
    return out


def scale_targets(scale: list[dict[str, Any]], nproc: int) -> list[TargetRow]:
    """The two scale rows, from the largest and the smallest size measured."""
    by_mode: dict[str, dict[int, dict[str, Any]]] = {}
    for r in scale:
        if "open_secs" in r:
            by_mode.setdefault(r["backend"], {})[r["keys"]] = r
    bound = SCALE_TARGET_SECS * SCALE_TARGET_CORES / nproc
    open_cells, get_cells = [], []
    open_met: bool | None = None
    get_met: bool | None = None
    for subject in (NATIVE, PURE):
        sizes = by_mode.get(subject, {})
        if not sizes:
            open_cells.append("—")
            get_cells.append("—")
            continue
        big, small = max(sizes), min(sizes)
        secs = sizes[big]["open_secs"]
        cpu = sizes[big].get("open_cpu_secs")
        open_cells.append(f"{secs:.2f} s at {fmt_keys(big)}"
                          + (f" (CPU {cpu:.2f} s)" if cpu is not None else ""))
        if "get_cpu_us" in sizes[big] and "get_cpu_us" in sizes[small]:
            # CPU time per get (a shared machine's load inflates it less than wall time)
            ratio = sizes[big]["get_cpu_us"] / sizes[small]["get_cpu_us"]
            again = (sizes[big]["get_cpu_us_again"] / sizes[small]["get_cpu_us_again"])
            get_cells.append(f"{ratio:.2f}x the CPU per get ({fmt_keys(big)} ÷ "
                             f"{fmt_keys(small)}; {again:.2f}x for the same gets again)")
            within = ratio <= 1.2
        else:  # results of an older run: gets/s
            ratio = sizes[big]["gets_s"] / sizes[small]["gets_s"]
            get_cells.append(f"{fmt_ratio(ratio)} ({fmt_keys(big)} ÷ {fmt_keys(small)})")
            within = ratio >= 0.8
        if subject == NATIVE and big >= SCALE_TARGET_KEYS:
            open_met = secs <= bound
            get_met = within if small <= 1_000_000 else None
    rows: list[TargetRow] = [
        (f"48M keys open <= 5 s on 16 cores (here, {nproc} cores: <= {bound:.0f} s)",
         open_cells[0], open_cells[1], status(open_met),
         "`--scale`: store built through `db.batch()`, then a fresh process opens it and reads "
         f"one key; the bound scales 5 s by 16 ÷ {nproc} cores (judged at 48M only)"),
        ("gets at 48M keys within 20% of gets at 1M", get_cells[0], get_cells[1],
         status(get_met), "`--scale`: CPU time per random get (CRC checked, keys over the "
         "whole store, in a fresh process after the open) at the largest size ÷ at the "
         "smallest; met at <= 1.2x (judged at 48M ÷ 1M only)"),
    ]
    return rows


def fmt_keys(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1_000 == 0:
        return f"{n // 1_000}K"
    return f"{n:,}"


def parse_keys(text: str) -> int:
    """``"48M"``, ``"500K"`` or ``"200000"`` as a key count."""
    t = text.strip().upper().replace("_", "").replace(",", "")
    mult = {"K": 1_000, "M": 1_000_000}.get(t[-1:], 1)
    num = t[:-1] if mult > 1 else t
    value = float(num) * mult
    if value < 1 or value != int(value):
        raise ValueError(f"not a key count: {text!r}")
    return int(value)


def scale_table(scale: list[dict[str, Any]]) -> list[str]:
    lines = ["| keys | mode | build (s) | disk (MiB) | open (s) | open, CPU (s) | index, B/key "
             "beyond key | random gets/s | get, CPU (us) | same gets again, CPU (us) | "
             "get CPU ÷ at the smallest size | get_many, CPU (us) | "
             "get_many CPU ÷ at the smallest size |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    builds = {r["keys"]: r for r in scale if "build_secs" in r}
    opens = [r for r in scale if "open_secs" in r]
    smallest: dict[str, float] = {}
    smallest_many: dict[str, float] = {}
    for r in sorted(opens, key=lambda r: r["keys"]):
        smallest.setdefault(r["backend"], r.get("get_cpu_us", 0.0))
        if "get_many_cpu_us" in r:  # a snapshot older than get_many has none
            smallest_many.setdefault(r["backend"], r["get_many_cpu_us"])

    def us(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.2f}" if key in r else "—"

    for r in sorted(opens, key=lambda r: (r["keys"], r["backend"])):
        b = builds.get(r["keys"], {})
        base = smallest[r["backend"]]
        lines.append("| " + " | ".join([
            fmt_keys(r["keys"]), r["backend"],
            f"{b['build_secs']:.1f}" if "build_secs" in b else "—",
            fmt_mb(b.get("disk")), fmt_secs(r["open_secs"]),
            fmt_secs(r["open_cpu_secs"]) if "open_cpu_secs" in r else "—",
            f"{r['beyond_key_bytes']:.0f}", fmt_ops(r["gets_s"]), us(r, "get_cpu_us"),
            us(r, "get_cpu_us_again"),
            f"{r['get_cpu_us'] / base:.2f}x" if "get_cpu_us" in r and base else "—",
            us(r, "get_many_cpu_us"),
            f"{r['get_many_cpu_us'] / smallest_many[r['backend']]:.2f}x"
            if "get_many_cpu_us" in r and smallest_many.get(r["backend"]) else "—",
        ]) + " |")
    return lines


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
    rows = -(-len(PHASES) // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 3.7 * rows))
    for ax, (key, ttl, kind) in zip(axes.flat, PHASES, strict=False):
        labels, vals, colors = [], [], []
        for name in names:
            v = phase_value(aggs, name, key)
            if v is None:
                continue
            labels.append(name)
            vals.append(v * 1000 if kind == "time" else v)
            colors.append("#d62728" if name in BITKV_VARIANTS else
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
    for ax in list(axes.flat)[len(PHASES):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return None


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = [*ALL_BACKENDS, "base", "base-py"]
    ap.add_argument("--backends",
                    help="comma-separated, from: " + ", ".join(choices) + " (default: all but "
                         "base and base-py; base-py too with --baseline)")
    ap.add_argument("--baseline", metavar="REV",
                    help="git revision to measure as base (compiled) and base-py (pure Python), "
                         "e.g. 8529961, the tree before issue 14's kernels")
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
    ap.add_argument("--durable-threads", type=int, default=8,
                    help="threads of the last durable phase (default 8; the others: 1, 2, 4)")
    ap.add_argument("--durable-only", action="store_true",
                    help="run only the durable phases (1, 2, 4 and --durable-threads threads), "
                         "--runs times per backend, interleaved; no memory probe")
    ap.add_argument("--budget", type=float, default=30.0,
                    help="seconds per phase before it is cut short and marked * (default 30)")
    ap.add_argument("--batch-max-bytes", type=int, default=64 << 20,
                    help="values per batch are capped at this many bytes (default 64 MiB)")
    ap.add_argument("--probe-keys", type=int,
                    help="keys of the keydir memory probe (default 1,000,000)")
    ap.add_argument("--no-probe", action="store_true", help="skip the keydir memory probe")
    ap.add_argument("--probe-only", action="store_true",
                    help="run only the keydir memory probe (of " + ", ".join(PROBE_BACKENDS) +
                         " among --backends)")
    ap.add_argument("--reopen-n", metavar="KEYS",
                    help="also time the reopen with history (fill, overwrite half, delete a "
                         "tenth, then open in a fresh process) of every bitkv variant at this "
                         "size, e.g. 1M (the target's), --runs times; default: only the "
                         "workload's phase, at N")
    ap.add_argument("--scale", metavar="SIZES",
                    help="also measure open time, index bytes/key and random gets at these "
                         "store sizes, e.g. 1M,4M,16M,48M, for every bitkv variant among "
                         "--backends (one store per size, built once, opened by each variant "
                         "in a fresh process)")
    ap.add_argument("--scale-only", action="store_true",
                    help="run only the --scale measurement")
    ap.add_argument("--scale-runs", type=int, default=2,
                    help="opens per size and variant, alternating variants; medians "
                         "(default 2)")
    ap.add_argument("--scale-value-size", type=int, default=16,
                    help="value bytes of the --scale stores (default 16: the index is what "
                         "scales, and 48M keys stay within a few GiB of disk and page cache)")
    ap.add_argument("--scale-gets", type=int, default=200_000,
                    help="random gets timed per --scale open (default 200,000)")
    ap.add_argument("--results-dir",
                    help="where the report (.md) and chart (.png) go (default: a new "
                         "temporary directory, printed at the end)")
    ap.add_argument("--workdir", default=None,
                    help="where the stores are created (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the store directories")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run the installed bitkv instead of a copy of bitkv/ taken (and "
                         "built) at start")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    ap.add_argument("--update-doc", metavar="PATH",
                    help=f"replace the text between {RESULTS_BEGIN} and {RESULTS_END} in "
                         "PATH (e.g. docs/performance.md) with the results, and the text "
                         f"between {TARGETS_BEGIN} and {TARGETS_END} with the targets and "
                         "the scale table")
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
    if args.durable_only:
        if args.probe_only or args.scale_only or args.scale or args.reopen_n:
            ap.error("--durable-only runs the durable phases alone: no --probe-only, "
                     "--scale(-only) or --reopen-n with it")
        args.no_probe = True
        args.n = args.durable_n  # the durable writes are drawn from N keys; nothing else runs
    if args.backends is None:
        args.backends = list(ALL_BACKENDS)
        if args.baseline:
            args.backends.insert(args.backends.index("bitkv-py") + 1, "base-py")
    else:
        args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if adapter_of(b) not in ADAPTERS]
    if unknown:
        ap.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(choices)}")
    if not args.baseline and {"base", "base-py"} & set(args.backends):
        ap.error("base and base-py need --baseline REV")
    if args.value_size < 1:
        ap.error("--value-size must be positive")
    try:
        args.reopen_n = parse_keys(args.reopen_n) if args.reopen_n else None
        args.scale = sorted({parse_keys(x) for x in args.scale.split(",")}) if args.scale else []
    except ValueError as exc:
        ap.error(f"--reopen-n or --scale: {exc}")
    if args.scale_only and not args.scale:
        ap.error("--scale-only needs --scale SIZES")
    if args.scale_only and args.probe_only:
        ap.error("--scale-only and --probe-only exclude each other")
    return args


def run_probe(args: argparse.Namespace, base: str, skipped: dict[str, str]) -> dict[str, Any]:
    probe: dict[str, Any] = {}
    for name in [b for b in PROBE_BACKENDS if b in args.backends and b not in skipped]:
        pdir = os.path.join(base, f"probe-{name}")
        cfg = {"mode": "probe-build", "dir": pdir, "keys": args.probe_keys,
               "probe_value_size": 8}
        log(f"memory probe: building {name} with {args.probe_keys:,} keys")
        built = run_child(name, cfg, args.timeout)
        if "skipped" in built or "failed" in built:
            probe[name] = [built]
            shutil.rmtree(pdir, ignore_errors=True)
            continue
        results = []
        for method in ("tracemalloc", "rss"):
            r = run_child(name, dict(cfg, mode="probe-measure", method=method), args.timeout)
            results.append(r)
        probe[name] = results
        shutil.rmtree(pdir, ignore_errors=True)
    return probe


def rotated(names: list[str], run: int) -> list[str]:
    """``names`` starting at the run-th: each backend takes each place in the order in turn.
    In a fixed order a backend always follows the same one and inherits its aftermath (its
    dirty pages being written back, its freed memory). Two backends running the same code
    in a fixed order measured 0.58x on overwrite, the one below the other in every run
    (docs/performance.md, "Reading the figures of 2026-12-04")."""
    k = run % len(names) if names else 0
    return names[k:] + names[:k]


def settle() -> None:
    """Write back what the previous child left dirty, before the next one is timed."""
    os.sync()


def run_history_reopens(args: argparse.Namespace, base: str,
                        variants: list[str]) -> dict[str, list[float]]:
    """``--reopen-n``: each variant's reopen with history at that size, ``--runs`` times,
    variants interleaved; label -> the open times (s)."""
    times: dict[str, list[float]] = {v: [] for v in variants}
    for run in range(args.runs):
        for v in rotated(variants, run):
            settle()
            cfg = {"mode": "history-reopen", "n": args.reopen_n, "seed": args.seed + run,
                   "value_size": args.value_size, "dir": os.path.join(base, f"history-{v}")}
            r = run_child(v, cfg, args.timeout)
            shutil.rmtree(cfg["dir"], ignore_errors=True)
            if "failed" in r or r.get("errors"):
                log(f"reopen with history, {fmt_keys(args.reopen_n)} keys, {v}: FAILED: "
                    f"{r.get('failed') or r.get('errors')}")
                continue
            times[v].append(r["secs"])
            log(f"reopen with history, {fmt_keys(args.reopen_n)} keys, {v}: {r['secs']:.3f} s")
    return times


def run_scale(args: argparse.Namespace, base: str, variants: list[str]) -> list[dict[str, Any]]:
    """One store per size, built once through ``db.batch()`` (by the first variant: the
    format is the same in every mode), opened once untimed (whatever an open does once, such
    as writing a missing hint, is then done for every variant alike), then opened
    ``--scale-runs`` times by each variant in a fresh process, variants alternating; medians.
    The store is removed before the next size is built."""
    out: list[dict[str, Any]] = []
    if not variants:
        return out
    for keys in args.scale:
        sdir = os.path.join(base, f"scale-{keys}")
        cfg = {"dir": sdir, "keys": keys, "value_size": args.scale_value_size,
               "seed": args.seed, "gets": min(keys, args.scale_gets)}
        log(f"scale: building {fmt_keys(keys)} keys with {variants[0]}")
        built = run_child(variants[0], dict(cfg, mode="scale-build"), args.timeout)
        if "failed" in built:
            log(f"scale {fmt_keys(keys)}: build FAILED: {built['failed']}")
            out.append({"keys": keys, "backend": variants[0], "failed": built["failed"]})
            shutil.rmtree(sdir, ignore_errors=True)
            break  # a larger store would fail too (time, memory or disk)
        out.append(dict(built, keys=keys))
        settle()
        run_child(variants[0], dict(cfg, mode="scale-open", gets=1), args.timeout)  # warm-up
        opened: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for run in range(args.scale_runs):
            for v in variants if run % 2 == 0 else variants[::-1]:
                settle()
                r = run_child(v, dict(cfg, mode="scale-open"), args.timeout)
                if "failed" in r or r.get("errors"):
                    log(f"scale {fmt_keys(keys)} {v}: FAILED: "
                        f"{r.get('failed') or r.get('errors')}")
                else:
                    log(f"scale {fmt_keys(keys)} {v}: open {r['open_secs']:.2f} s "
                        f"(CPU {r.get('open_cpu_secs', 0):.2f} s), "
                        f"{r['beyond_key_bytes']:.0f} B/key, {r['gets_s']:,.0f} gets/s, "
                        f"{r.get('get_cpu_us', 0):.2f} us CPU/get "
                        f"({r.get('get_cpu_us_again', 0):.2f} again, "
                        f"{r.get('get_many_cpu_us', 0):.2f} per key of get_many)")
                opened[v].append(r)
        for v, rs in opened.items():
            ok = [r for r in rs if "open_secs" in r and not r.get("errors")]
            if not ok:
                out.append({"keys": keys, "backend": v,
                            "failed": rs[0].get("failed") or rs[0].get("errors")})
                continue
            out.append({"keys": keys, "backend": v, "runs": len(ok),
                        **{f: median([r[f] for r in ok])
                           for f in ("open_secs", "open_cpu_secs", "beyond_key_bytes",
                                     "gets_s", "get_cpu_us", "get_cpu_us_again",
                                     "get_many_cpu_us")
                           if all(f in r for r in ok)}})
        shutil.rmtree(sdir, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.results_dir is None:
        # outside the checkout: a run must not leave the tree dirty (issue 16)
        args.results_dir = tempfile.mkdtemp(prefix="bitkv-bench-results-")
    os.makedirs(args.results_dir, exist_ok=True)
    base = tempfile.mkdtemp(prefix="bitkv-bench-", dir=args.workdir)
    skipped: dict[str, str] = {}
    args.snapshot_hash = None
    args.baseline_commit = None
    args.reopens = {}
    try:
        if not args.no_snapshot:
            snap = snapshot_bitkv(base)
            if snap:
                SOURCES["tree"], args.snapshot_hash, note = snap
                if note:
                    log(f"snapshot of bitkv/: {note}")
        if args.baseline:
            SOURCES["baseline"], args.baseline_commit, note = snapshot_git(base, args.baseline)
            if note:
                log(f"baseline {args.baseline}: {note}")
        for label in [b for b in args.backends if b in BITKV_VARIANTS]:
            mode = variant_mode(label, args.timeout)
            if mode != BITKV_VARIANTS[label][0]:
                skipped[label] = (f"runs in {mode} mode, not {BITKV_VARIANTS[label][0]}"
                                  if mode in ("native", "python") else mode)
                if mode == "python":
                    skipped[label] += " (the compiled extension is not built)"
                log(f"{label}: skipped: {skipped[label]}")
        return measure(args, base, skipped)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def measure(args: argparse.Namespace, base: str, skipped: dict[str, str]) -> int:
    per_batch = max(1, min(args.n, args.batch_max_bytes // args.value_size))
    info = machine_info(base)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.time()
    runs: dict[str, list[dict[str, Any]]] = {b: [] for b in args.backends}
    for name, reason in skipped.items():
        runs[name].append({"backend": name, "skipped": reason})
    throughput = not (args.probe_only or args.scale_only)
    for run in range(args.runs if throughput else 0):
        for name in rotated(args.backends, run):
            if name in skipped:
                continue
            settle()
            work = os.path.join(base, f"{name}-run{run}")
            cfg = {"mode": "run", "n": args.n,
                   "value_size": args.value_size, "seed": args.seed, "dir": work,
                   "budget": args.budget, "threads": args.threads,
                   "durable_n": args.durable_n, "durable_threads": args.durable_threads,
                   "durable_only": args.durable_only, "batch_chunk": per_batch,
                   "keep": args.keep}
            t0 = time.time()
            r = run_child(name, cfg, args.timeout)
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
    probe = {} if args.no_probe or args.scale_only else run_probe(args, base, skipped)
    variants = [b for b in args.backends if b in BITKV_VARIANTS and b not in skipped]
    if args.reopen_n and throughput:
        args.reopens = run_history_reopens(args, base, variants)
    scale = run_scale(args, base, variants) if args.scale and not args.probe_only else []

    aggs = {name: aggregate(rs) for name, rs in runs.items()}
    order = list(args.backends)
    if args.probe_only:
        stem = f"probe-k{args.probe_keys}"
    elif args.scale_only:
        stem = "scale-" + "-".join(fmt_keys(k) for k in args.scale)
    else:
        stem = f"bench-n{args.n}-v{args.value_size}"
    png_name, chart_note = None, None
    if throughput:
        png = os.path.join(args.results_dir, stem + ".png")
        title = (f"bitkv and peers: N={args.n:,}, {args.value_size}-byte values, "
                 f"median of {args.runs} run(s), {info['nproc']} CPUs")
        chart_note = chart(aggs, order, png, title)
        png_name = None if chart_note else os.path.basename(png)
    head, targets, body = render(args, aggs, order, probe, scale, info, started,
                                 time.time() - t_start, per_batch, png_name, chart_note)
    md = head + targets + body
    md_path = os.path.join(args.results_dir, stem + ".md")
    with open(md_path, "w") as fh:
        fh.write(md)
    # every measurement as measured, for whoever wants a table this report does not have
    with open(os.path.join(args.results_dir, stem + ".json"), "w") as fh:
        json.dump({"args": {k: v for k, v in vars(args).items() if k != "reopens"},
                   "machine": info, "runs": runs, "probe": probe, "scale": scale,
                   "reopens": args.reopens}, fh, indent=1)
    print(md)
    log(f"wrote {md_path}, {stem}.json" + (f" and {png_name}" if png_name else ""))
    if args.update_doc:
        update_doc(args.update_doc, head, targets, body, args.results_dir)
        log(f"updated {args.update_doc}")
    failed = any(a["errors"] for a in aggs.values()) or any("failed" in r for r in scale)
    return 1 if failed else 0


def render_throughput(out: list[str], args: argparse.Namespace, aggs: dict[str, Any],
                      order: list[str], per_batch: int) -> None:
    out.append("### Throughput (ops/s, higher is better; reopen in ms, lower is better)\n")
    out += results_table(aggs, order)
    out.append("")
    out.append(f"Batched fill: batches of {per_batch:,} puts. Durable: {args.durable_n:,} "
               f"writes, each on stable storage before the next; 2, 4 and 8 thr: the same "
               f"writes shared by 2, 4 and {args.durable_threads} threads (8 thr = "
               f"--durable-threads). Mixed: {args.threads} threads, "
               f"{args.n:,} ops in all, 90% get / 10% put. Reopen: in the same process, after "
               f"the fill and the overwrites; reopen, history: after every phase up to the "
               f"mixed one, by a fresh process. `n/a`: the library has no such "
               f"API; `\\*`: cut short at the {args.budget:.0f} s phase budget "
               f"(rate over the ops done). RSS over data: peak RSS minus the RSS after the "
               f"workload's keys and values were generated.\n")
    for subject in (NATIVE, PURE):
        if ran(aggs, subject):
            out.append(f"### {subject} ÷ peer (higher is better for {subject}; reopen "
                       "compares times)\n")
            out += ratio_table(aggs, order, subject)
            out.append("")
    out.append("### CPU time per op (µs, lower is better)\n")
    out.append("The process's CPU time (every thread) over the phase ÷ ops, medians: what an op "
               "costs whatever else the machine runs. The ratios are bitkv's advantage by that "
               "measure (peer's CPU time ÷ bitkv's; higher is better for bitkv). A library "
               "that waits for the disk in these phases (none should: nothing is fsynced) "
               "would look cheaper than it is.\n")
    out += cpu_tables(aggs, order)
    out.append("")


def render(args: argparse.Namespace, aggs: dict[str, Any], order: list[str],
           probe: dict[str, Any], scale: list[dict[str, Any]], info: dict[str, str],
           started: str, elapsed: float, per_batch: int, png_name: str | None,
           chart_note: str | None) -> tuple[str, str, str]:
    """The report in three parts: the header (command, machine, load, versions), the targets
    and scale tables, and the rest."""
    out: list[str] = []
    cmd = "python scripts/bench.py"
    if os.path.basename(sys.argv[0]) == "bench.py" and sys.argv[1:]:
        cmd += " " + " ".join(sys.argv[1:])
    measured = any(a["runs"] for a in aggs.values())
    if measured:
        out.append(f"## Results: N = {args.n:,} keys, {args.value_size}-byte values\n")
        out.append(f"`{cmd}` — started {started}, took {elapsed / 60:.1f} min; median of "
                   f"{args.runs} run(s) per backend, each backend in its own process, runs "
                   "interleaved.\n")
    elif scale:
        out.append(f"## Results: scale, {', '.join(fmt_keys(k) for k in args.scale)} keys\n")
        out.append(f"`{cmd}` — started {started}, took {elapsed / 60:.1f} min.\n")
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
    modes = [f"{name} = {BITKV_VARIANTS[name][0]} mode"
             + (f" at git {args.baseline_commit[:7]}" if BITKV_VARIANTS[name][1] == "baseline"
                else "") for name in order if name in BITKV_VARIANTS]
    if modes:
        out.append("bitkv variants (checked: each child reports `bitkv.IMPLEMENTATION`): "
                   + "; ".join(modes) + ".\n")
    head = "\n".join(out) + "\n"

    out = []
    if measured or scale or probe:
        out.append("### Targets (issue 14)\n")
        out.append("Ratios are of throughputs measured side by side in this run (bitkv ÷ peer); "
                   "the status is the compiled mode's.\n")
        out.append("| target | bitkv (compiled) | bitkv-py (pure Python) | status | how |")
        out.append("|---|---:|---:|---|---|")
        for t, nat, py, st, h in evaluate_targets(aggs, probe, scale, args.n, args.value_size,
                                                  int(info["nproc"]), args.baseline_commit and
                                                  args.baseline_commit[:7], args.reopens,
                                                  args.reopen_n):
            out.append(f"| {t} | {nat} | {py} | {st} | {h} |")
        out.append("")
    if scale:
        out.append("### Scale\n")
        out.append(f"Stores of 16-byte keys and {args.scale_value_size}-byte values, built "
                   "through `db.batch()`, then opened in a fresh process by each variant "
                   f"({args.scale_runs} open(s) each, alternating; medians): open = open to the "
                   "first get; index = growth of `RssAnon` over the open ÷ keys - 16 (not peak "
                   f"RSS: mapped files are not anonymous); gets = {args.scale_gets:,} random "
                   "gets, CRC checked, over keys across the whole store: gets/s (wall) and "
                   "CPU time per get, then the same keys again (their pages mapped by the "
                   "first pass, as in a long-running process), then the same keys once more "
                   "through `get_many` in batches of 1,000: CPU time per key (compare it with "
                   "the second pass; a tree without `get_many` shows —).\n")
        out += scale_table(scale)
        for r in scale:
            if "failed" in r:
                out.append(f"\n- {fmt_keys(r['keys'])} {r['backend']}: FAILED: {r['failed']}")
        out.append("")
    targets = "\n".join(out) + "\n" if out else ""

    out = []
    if measured:
        render_throughput(out, args, aggs, order, per_batch)
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
    return head, targets, "\n".join(out) + "\n"


def replace_between(text: str, begin: str, end: str, new: str, path: str) -> str:
    if begin not in text or end not in text:
        raise SystemExit(f"{path} has no {begin} ... {end} section")
    head, rest = text.split(begin, 1)
    _old, tail = rest.split(end, 1)
    return head + begin + "\n" + new + end + tail


def update_doc(path: str, head: str, targets: str, body: str, results_dir: str) -> None:
    """Write the report into ``path``: the targets and scale tables (with the header that
    dates them) into its issue-14 section if it has one, the rest into "Latest results"."""
    with open(path) as fh:
        text = fh.read()
    rel = os.path.relpath(results_dir, os.path.dirname(os.path.abspath(path)))
    if rel.startswith(".."):  # the chart is outside the docs: no link that would break
        body = "\n".join(line for line in body.split("\n")
                         if not line.startswith("![throughput chart]("))
    else:  # the report's image link is relative to the results dir; make it the doc's
        body = body.replace("](bench-", f"]({rel}/bench-")

    def demote(md: str) -> str:  # the report's headings go one level under the doc's
        return "\n".join("#" + line if line.startswith("#") else line for line in md.split("\n"))

    if TARGETS_BEGIN in text:
        text = replace_between(text, TARGETS_BEGIN, TARGETS_END, demote(head + targets), path)
        main_part = head + body
    else:
        main_part = head + targets + body
    if RESULTS_BEGIN in text or TARGETS_BEGIN not in text:
        text = replace_between(text, RESULTS_BEGIN, RESULTS_END, demote(main_part), path)
    with open(path, "w") as fh:
        fh.write(text)


if __name__ == "__main__":
    sys.exit(main())
