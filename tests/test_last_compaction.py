"""The last compaction's summary survives a restart (issue 16: `stats` of a new process said
"none recorded" for a store compacted a minute earlier)."""

from __future__ import annotations

import json
import logging
import os

import bitkv
from bitkv.names import LAST_COMPACTION_NAME


def _fill_and_compact(path: str) -> dict:
    with bitkv.open(path, auto_compact=False) as db:
        for round_ in range(2):
            for i in range(500):
                db.put(f"k{i}".encode(), f"v{round_}".encode() * 10)
        summary = db.compact()
        assert db.stats()["last_compaction"]["bytes_reclaimed"] == summary["bytes_reclaimed"]
    return summary


def test_a_new_process_knows_the_last_compaction(tmp_path):
    path = str(tmp_path / "db")
    summary = _fill_and_compact(path)
    assert summary["bytes_reclaimed"] > 0
    for opener in (lambda: bitkv.open(path), lambda: bitkv.open(path, readonly=True)):
        with opener() as db:
            last = db.stats()["last_compaction"]
            assert last is not None
            for name in ("bytes_in", "bytes_out", "bytes_reclaimed", "keys_kept",
                         "records_dropped", "segments_in", "segments_out"):
                assert last[name] == summary[name], name
            assert last["finished_at"] > 0


def test_a_store_never_compacted_has_none(tmp_path):
    with bitkv.open(str(tmp_path / "db")) as db:
        db.put(b"k", b"v")
    with bitkv.open(str(tmp_path / "db")) as db:
        assert db.stats()["last_compaction"] is None
    assert not (tmp_path / "db" / LAST_COMPACTION_NAME).exists()


def test_a_bad_record_is_a_warning_not_an_error(tmp_path, caplog):
    path = str(tmp_path / "db")
    _fill_and_compact(path)
    record = os.path.join(path, LAST_COMPACTION_NAME)
    for bad in (b"{not json", b"[1, 2]", json.dumps({"version": 99}).encode(),
                b"x" * (70 * 1024)):
        with open(record, "wb") as f:
            f.write(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bitkv"), bitkv.open(path) as db:
            assert db.stats()["last_compaction"] is None
            assert db.get(b"k1") == b"v1" * 10
        assert any(LAST_COMPACTION_NAME in r.getMessage() for r in caplog.records)
    os.unlink(record)
    os.symlink(os.path.join(path, "BITKV"), record)  # never followed
    with bitkv.open(path) as db:
        assert db.stats()["last_compaction"] is None


def test_the_record_holds_numbers_only_and_is_checked_by_check(tmp_path):
    path = str(tmp_path / "db")
    _fill_and_compact(path)
    with open(os.path.join(path, LAST_COMPACTION_NAME), "rb") as f:
        doc = json.loads(f.read())
    assert doc["version"] == 1
    assert all(isinstance(v, (int, float)) for v in doc.values())
    report = bitkv.check(path)
    assert report.healthy and not report.warnings, report.as_dict()


def test_each_compaction_is_logged_with_its_sizes_and_time(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bitkv"):
        summary = _fill_and_compact(str(tmp_path / "db"))
    lines = [r.getMessage() for r in caplog.records if "compacted" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"{summary['bytes_in']} bytes" in lines[0]
    assert f"{summary['bytes_reclaimed']} reclaimed" in lines[0]
