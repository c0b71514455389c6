"""Smoke test of scripts/bench.py: the quick run produces a full table for bitkv, sqlite3 and
the floor (all available without the ``bench`` extra)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "scripts", "bench.py")
PHASE_COLUMNS = ["fill", "batched fill", "random read", "overwrite", "reopen (ms)", "delete",
                 "mixed 90/10, 4 thr", "durable, 1 thr", "durable, 8 thr"]


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


@pytest.mark.slow
def test_quick_bench_reports_every_phase(tmp_path):
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, BENCH, "--quick", "--backends", "bitkv,sqlite3,floor",
         "--results-dir", str(results), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    md_file = results / "bench-n20000-v100.md"
    assert md_file.exists()
    md = md_file.read_text()
    assert "| backend |" in proc.stdout  # the table is printed too

    header, rows = _table(md, "backend")
    for column in PHASE_COLUMNS:
        assert column in header, column
    assert set(rows) == {"bitkv", "sqlite3", "floor"}
    for name, cells in rows.items():
        for column in PHASE_COLUMNS:
            value = cells[header.index(column)]
            if column == "batched fill" and name == "bitkv" and value == "n/a":
                continue  # bitkv's batch() may not exist yet: its row says n/a
            assert _number(value) > 0, (name, column, value)

    _h, ratios = _table(md, "bitkv vs")
    assert set(ratios) == {"sqlite3", "floor"}
    assert "### Targets (issue 7)" in md
    assert "### Keydir memory probe" in md
    _h, probe = _table(md, "store")
    assert {"bitkv", "floor"} <= set(probe)
    if (results / "bench-n20000-v100.png").exists():
        assert (results / "bench-n20000-v100.png").stat().st_size > 1000
    # every store directory was cleaned up
    assert not [p for p in os.listdir(tmp_path) if p.startswith("bitkv-bench-")]
