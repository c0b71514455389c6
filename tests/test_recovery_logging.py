"""What recovery finds is logged once, with the file and the offset (issue 16: a store that
recovery truncated or found damaged said nothing), and `bitkv serve --logfile` records it."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
import time

from conftest import append_bytes, flip_bit, forget_fsyncs, newest_segment

import bitkv


def _store_with_records(path: str) -> str:
    with bitkv.open(path, sync="never") as db:
        for i in range(20):
            db.put(b"key-%d" % i, b"value-%d" % i * 5)
    forget_fsyncs(path)  # what follows is a crash before the covering fsync
    return newest_segment(path)


def test_a_torn_tail_is_logged_with_its_file_and_offset(tmp_path, caplog):
    path = str(tmp_path / "db")
    seg = _store_with_records(path)
    size = os.path.getsize(seg)
    append_bytes(seg, random.Random(1).randbytes(37))
    with caplog.at_level(logging.INFO, logger="bitkv"), bitkv.open(path) as db:
        assert db.stats()["recovery"]["truncated_bytes"] == 37
    lines = [r.getMessage() for r in caplog.records if "torn write" in r.getMessage()]
    assert len(lines) == 1, lines
    assert os.path.basename(seg) in lines[0]
    assert f"at offset {size}" in lines[0] and "cut 37 byte(s)" in lines[0]
    assert all(r.levelno == logging.WARNING for r in caplog.records
               if "torn write" in r.getMessage())


def _segmented_store(path: str) -> None:
    """200 keys over several small segments, each with its hint."""
    with bitkv.open(path, max_segment_size=4096) as db:
        for i in range(200):
            db.put(b"key-%d" % i, b"v" * 40)


def test_damage_is_logged_region_by_region(tmp_path, caplog):
    path = str(tmp_path / "db")
    _segmented_store(path)
    first = sorted(n for n in os.listdir(path) if n.endswith(".data"))[0]
    flip_bit(os.path.join(path, first), 200)
    for name in os.listdir(path):  # no hints: open scans the segments, and meets the damage
        if name.endswith(".hint"):
            os.unlink(os.path.join(path, name))
    with caplog.at_level(logging.WARNING, logger="bitkv"), bitkv.open(path) as db:
        damage = db.recovery_report.damage
    assert damage
    messages = [r.getMessage() for r in caplog.records]
    name, offset, length, _why = damage[0]
    assert any(f"{name} offset {offset}: {length} damaged byte(s)" in m for m in messages), \
        messages


def test_bitkv_serve_logs_recovery_findings_to_its_logfile(tmp_path):
    path = str(tmp_path / "db")
    seg = _store_with_records(path)
    append_bytes(seg, random.Random(2).randbytes(50))
    logfile = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bitkv_cli.main", "serve", "--dir", path, "--port", "0",
         "--logfile", str(logfile), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline and "torn write" not in text:
            time.sleep(0.1)
            text = logfile.read_text() if logfile.exists() else ""
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        assert "torn write" in text and os.path.basename(seg) in text
        assert " INFO " not in text  # --loglevel warning
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_an_ignored_hint_and_removed_temporaries_are_logged(tmp_path, caplog):
    path = str(tmp_path / "db")
    with bitkv.open(path, max_segment_size=4096) as db:
        for i in range(250):
            db.put(b"key-%d" % (i % 200), b"v" * 40)  # 50 overwritten: work for compaction
        db.compact()  # its outputs get their hints at once (sealed segments' come later)
    hint = sorted(n for n in os.listdir(path) if n.endswith(".hint"))[0]
    flip_bit(os.path.join(path, hint), 100)
    with open(os.path.join(path, "000099.data.tmp"), "wb") as fh:  # an interrupted write
        fh.write(b"partial")
    with caplog.at_level(logging.INFO, logger="bitkv"), bitkv.open(path) as db:
        assert len(db) == 200
    ignored = [r for r in caplog.records if f"hint {hint} ignored" in r.getMessage()]
    assert len(ignored) == 1 and ignored[0].levelno == logging.WARNING
    removed = [r for r in caplog.records if "temporary file(s)" in r.getMessage()]
    assert len(removed) == 1 and removed[0].levelno == logging.INFO
    assert "000099.data.tmp" in removed[0].getMessage()
    assert not os.path.exists(os.path.join(path, "000099.data.tmp"))
