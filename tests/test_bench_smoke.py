"""Smoke tests of scripts/bench.py: the quick run produces a full table for bitkv in both modes,
sqlite3 and the floor (all available without the ``bench`` extra), with the targets of issue 14;
``--baseline`` and ``--scale`` measure what they say; a run leaves the checkout clean."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "scripts", "bench.py")
PHASE_COLUMNS = ["fill", "batched fill", "random read", "overwrite", "reopen (ms)",
                 "reopen, history, new process (ms)", "delete", "mixed 90/10, 4 thr",
                 "durable, 1 thr", "durable, 8 thr"]
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import bench  # noqa: E402  (scripts/bench.py)

# The same code in both engine modes: CI's pure-Python run skips it (.ci/run).
pytestmark = pytest.mark.engine_independent

try:
    import bitkv._native  # noqa: F401

    HAVE_NATIVE = True
except ImportError:  # installed without a C compiler: only the pure-Python variants can run
    HAVE_NATIVE = False


def _table(md: str, first_header: str) -> tuple[list[str], dict[str, list[str]]]:
    """Return (header cells, {row name: cells}) of the Markdown table headed ``first_header``."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0].strip("*")] = cells
    return header, rows


def _number(cell: str) -> float:
    return float(cell.rstrip("\\*x").replace(",", ""))


def _git_head() -> str | None:
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=30)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _docs_bench_listing() -> dict[str, float]:
    where = os.path.join(ROOT, "docs", "bench")
    if not os.path.isdir(where):
        return {}
    return {n: os.stat(os.path.join(where, n)).st_mtime_ns for n in os.listdir(where)}


@pytest.mark.slow
def test_quick_bench_reports_every_phase(tmp_path):
    head = _git_head()
    backends = (["bitkv"] if HAVE_NATIVE else []) + ["bitkv-py"] + (
        ["base-py"] if head else []) + ["sqlite3", "floor"]
    cmd = [sys.executable, BENCH, "--quick", "--backends", ",".join(backends)]
    if head:  # the baseline snapshot: this very commit, in pure-Python mode
        cmd += ["--baseline", head]
    docs_before = _docs_bench_listing()
    # no --results-dir, no --workdir: everything must go to the temp dir (TMPDIR here)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _docs_bench_listing() == docs_before  # issue 16: the checkout stays clean
    results = [p for p in tmp_path.iterdir() if p.name.startswith("bitkv-bench-results-")]
    assert len(results) == 1
    md_file = results[0] / "bench-n20000-v100.md"
    assert md_file.exists()
    md = md_file.read_text()
    assert "| backend |" in proc.stdout  # the table is printed too

    header, rows = _table(md, "backend")
    for column in PHASE_COLUMNS:
        assert column in header, column
    assert set(rows) == set(backends)
    for name, cells in rows.items():
        for column in PHASE_COLUMNS:
            value = cells[header.index(column)]
            assert _number(value) > 0, (name, column, value)

    # each bitkv variant ran in the mode it is named after (the children report it)
    assert "bitkv-py = python mode" in md
    if HAVE_NATIVE:
        assert "bitkv = native mode" in md
        _h, ratios = _table(md, "bitkv vs")
        assert set(ratios) == set(backends) - {"bitkv"}
    _h, ratios = _table(md, "bitkv-py vs")
    assert set(ratios) == set(backends) - {"bitkv-py"}

    # CPU time per op of the single-threaded phases, every backend, and bitkv-py's ratios by it
    cheader, cpu_rows = _table(
        md, "backend | fill | batched fill | random read | overwrite | delete")
    assert len(cheader) == 6  # not the throughput table, whose header starts the same
    assert set(cpu_rows) == set(backends)
    for name, cells in cpu_rows.items():
        for column in cheader[1:]:
            assert _number(cells[cheader.index(column)]) > 0, (name, column)
    _h, by_cpu = _table(md, "bitkv-py vs, by CPU time")
    assert set(by_cpu) == set(backends) - {"bitkv-py"}

    assert "### Targets (issue 14)" in md
    thead, targets = _table(md, "target")
    assert thead[:4] == ["target", "bitkv (compiled)", "bitkv-py (pure Python)", "status"]
    assert "fill >= 2x plyvel" in targets
    assert "index <= 40 bytes/key beyond the key (4x under semidbm)" in targets
    no_slower = targets["pure-Python mode no slower than before on any row"]
    if head:
        assert no_slower[2].startswith("worst "), no_slower
        assert "base-py = python mode at git " + head[:7] in md
    else:
        assert no_slower[2] == "not measured"
    reopen = targets["reopen 1M keys with history <= 0.2 s"]
    assert reopen[3] == "—"  # not judged at 20,000 keys
    assert _number(reopen[2].removesuffix(" s")) > 0

    assert "### Keydir memory probe" in md
    _h, probe = _table(md, "store")
    assert {"bitkv-py", "floor"} <= set(probe)
    png = results[0] / "bench-n20000-v100.png"
    if png.exists():
        assert png.stat().st_size > 1000
    # every store directory was cleaned up
    assert not [p for p in os.listdir(tmp_path)
                if p.startswith("bitkv-bench-") and not p.startswith("bitkv-bench-results-")]


@pytest.mark.slow
def test_scale_reports_every_size_and_mode(tmp_path):
    variants = (["bitkv"] if HAVE_NATIVE else []) + ["bitkv-py"]
    proc = subprocess.run(
        [sys.executable, BENCH, "--scale-only", "--scale", "5K,20K", "--scale-runs", "1",
         "--scale-gets", "2000", "--backends", ",".join(variants), "--results-dir",
         str(tmp_path / "results"), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = (tmp_path / "results" / "scale-5K-20K.md").read_text()
    header, _rows = _table(md, "keys")
    lines = [line for line in md.splitlines() if line.startswith(("| 5K |", "| 20K |"))]
    assert len(lines) == 2 * len(variants)
    seen = set()
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        seen.add((cells[0], cells[1]))
        for column in ("open (s)", "random gets/s"):
            assert _number(cells[header.index(column)]) > 0, (line, column)
        assert _number(cells[header.index("disk (MiB)")]) > 0  # the build's size is reported
    assert seen == {(size, v) for size in ("5K", "20K") for v in variants}
    assert "### Throughput" not in md  # --scale-only: nothing else was run
    assert not [p for p in os.listdir(tmp_path) if p.startswith("bitkv-bench-")]


def test_child_env_sets_the_mode_whatever_the_caller_has(monkeypatch):
    monkeypatch.setenv("BITKV_PURE_PYTHON", "1")
    assert "BITKV_PURE_PYTHON" not in bench.child_env("bitkv")
    assert bench.child_env("bitkv-py")["BITKV_PURE_PYTHON"] == "1"
    assert bench.child_env("base-py")["BITKV_PURE_PYTHON"] == "1"
    assert "BITKV_PURE_PYTHON" not in bench.child_env("lmdb")


def test_key_counts_parse_and_print():
    assert [bench.parse_keys(t) for t in ("1M", "48m", "500K", "200000", "1.5M")] == [
        1_000_000, 48_000_000, 500_000, 200_000, 1_500_000]
    for bad in ("0", "1.5", "M", "-1K"):
        with pytest.raises(ValueError):
            bench.parse_keys(bad)
    assert [bench.fmt_keys(n) for n in (48_000_000, 500_000, 1234)] == ["48M", "500K", "1,234"]


def test_scale_targets_judge_only_48m_against_1m():
    def opened(backend: str, keys: int, secs: float, gets: float) -> dict[str, object]:
        return {"backend": backend, "keys": keys, "open_secs": secs, "gets_s": gets,
                "beyond_key_bytes": 30.0}

    small = [opened("bitkv", 1_000_000, 0.1, 1e6), opened("bitkv", 4_000_000, 0.5, 9e5)]
    rows = bench.scale_targets(small, nproc=2)
    assert [r[3] for r in rows] == ["—", "—", "—"]  # nothing judged below 48M
    big = [opened("bitkv", 1_000_000, 0.1, 1e6), opened("bitkv", 48_000_000, 39.0, 8.1e5)]
    rows = bench.scale_targets(big, nproc=2)
    assert rows[0][0].endswith("(here, 2 cores: <= 40 s)")
    assert [r[3] for r in rows] == ["met", "met", "—"]  # no get_many measured: not judged
    slow = [opened("bitkv", 1_000_000, 0.1, 1e6), opened("bitkv", 48_000_000, 41.0, 7.9e5)]
    assert [r[3] for r in bench.scale_targets(slow, nproc=2)][:2] == ["**not met**"] * 2


def test_scale_targets_show_get_many_in_a_row_of_its_own():
    """The batched get is judged in its own row, marked as not one of the issue's rows; the
    issue's gets row stays the single get's."""
    def opened(keys: int, get_us: float, many_us: float) -> dict[str, object]:
        return {"backend": "bitkv", "keys": keys, "open_secs": 10.0, "open_cpu_secs": 5.0,
                "gets_s": 1e5, "get_cpu_us": get_us, "get_cpu_us_again": get_us,
                "get_many_cpu_us": many_us, "beyond_key_bytes": 30.0}

    rows = bench.scale_targets([opened(1_000_000, 0.4, 0.1), opened(48_000_000, 0.8, 0.11)],
                               nproc=2)
    assert rows[1][3] == "**not met**" and rows[2][3] == "met"
    assert "not one of the issue's rows" in rows[2][0]
    assert rows[2][1].startswith("1.10x the CPU per key (48M ÷ 1M; 0.110 us ÷ 0.100 us)")
    rows = bench.scale_targets([opened(1_000_000, 0.4, 0.1), opened(48_000_000, 0.45, 0.3)],
                               nproc=2)
    assert rows[1][3] == "met" and rows[2][3] == "**not met**"


def test_scale_gets_target_judges_cpu_time_per_get():
    """With CPU time per get measured, the gets row compares it (48M ÷ 1M, met at <= 1.2x)
    and shows the second pass beside it; gets/s, inflated by the load, is not judged."""
    def opened(keys: int, cpu_us: float, again_us: float) -> dict[str, object]:
        return {"backend": "bitkv", "keys": keys, "open_secs": 10.0, "open_cpu_secs": 5.0,
                "gets_s": 1e5, "get_cpu_us": cpu_us, "get_cpu_us_again": again_us,
                "beyond_key_bytes": 30.0}

    rows = bench.scale_targets([opened(1_000_000, 1.0, 0.9), opened(48_000_000, 1.19, 1.5)],
                               nproc=2)
    assert rows[1][3] == "met"
    assert rows[1][1].startswith("1.19x the CPU per get") and "1.67x" in rows[1][1]
    assert "(CPU 5.00 s)" in rows[0][1]
    rows = bench.scale_targets([opened(1_000_000, 1.0, 0.9), opened(48_000_000, 1.21, 0.9)],
                               nproc=2)
    assert rows[1][3] == "**not met**"


def test_scale_table_shows_get_many_beside_the_existing_columns():
    """get_many's CPU per key and its ratio to the smallest size are two columns of their own
    after the existing ones; a variant without get_many (a snapshot older than it) shows —."""
    def opened(backend: str, keys: int, many_us: float | None) -> dict[str, object]:
        r: dict[str, object] = {"backend": backend, "keys": keys, "open_secs": 1.0,
                                "open_cpu_secs": 0.5, "gets_s": 1e6, "get_cpu_us": 0.4,
                                "get_cpu_us_again": 0.38, "beyond_key_bytes": 30.0}
        if many_us is not None:
            r["get_many_cpu_us"] = many_us
        return r

    lines = bench.scale_table([opened("bitkv", 1_000_000, 0.08), opened("bitkv", 4_000_000, 0.1),
                               opened("base", 1_000_000, None)])
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert head[-3:] == ["get CPU ÷ at the smallest size", "get_many, CPU (us)",
                         "get_many CPU ÷ at the smallest size"]
    assert lines[1].count("|") == lines[0].count("|")
    rows = {(r[0], r[1]): r for r in ([c.strip() for c in line.strip("|").split("|")]
                                      for line in lines[2:])}
    assert rows[("4M", "bitkv")][-3:] == ["1.00x", "0.10", "1.25x"]
    assert rows[("1M", "bitkv")][-2:] == ["0.08", "1.00x"]
    assert rows[("1M", "base")][-2:] == ["—", "—"]


def test_pure_python_row_covers_phases_reopen_and_scale():
    aggs = {name: {"runs": 1, "phases": {"fill": {"value": fill}, "reopen": {"value": secs}}}
            for name, fill, secs in (("bitkv-py", 100.0, 0.5), ("base-py", 80.0, 0.4))}
    scale = [{"backend": "bitkv-py", "keys": 4_000_000, "open_secs": 2.0, "gets_s": 90.0},
             {"backend": "base-py", "keys": 4_000_000, "open_secs": 1.0, "gets_s": 100.0}]
    rows = dict((row, r) for r, row in bench.pure_vs_baseline(
        aggs, scale, {"bitkv-py": [0.3], "base-py": [0.6]}, 1_000_000))
    assert rows == {"fill": 1.25, "reopen": 0.8, "reopen with history, 1M": 2.0,
                    "open at 4M": 0.5, "gets at 4M": 0.9}
    target = bench.evaluate_targets(aggs, {}, scale, 200_000, 100, 2, "8529961",
                                    {"bitkv-py": [0.3], "base-py": [0.6]}, 1_000_000)[-1]
    assert target[2] == "worst 0.50x (open at 4M)" and target[3] == "**not met**"
