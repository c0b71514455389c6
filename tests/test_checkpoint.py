"""Checkpoint hints: a clean close writes a hint for the active segment's prefix.

The next open must index exactly what a full scan would: tombstones and expired records in
the segment included (or an older version of the key would come back), and records appended
after the checkpoint found by scanning past the hint.
"""

from __future__ import annotations

import os
import random

import pytest

import bitkv
from bitkv import sealing as sealing_mod


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def always_checkpoint(monkeypatch):
    monkeypatch.setattr(sealing_mod, "CHECKPOINT_MIN_BYTES", 0)


def _open(path, clock, **kw):
    kw.setdefault("auto_compact", False)
    return bitkv.open(path, clock=clock, **kw)


def _hint_files(path):
    return sorted(n for n in os.listdir(path) if n.endswith(".hint"))


def test_close_writes_a_hint_and_reopen_uses_it(tmp_path):
    clock = Clock()
    path = tmp_path / "db"
    with _open(path, clock) as db:
        for i in range(100):
            db.put(b"k%d" % i, b"v%d" % i)
    assert _hint_files(path) == ["000001.hint"]
    with _open(path, clock) as db:
        assert db.recovery_report.segments_from_hints == 1
        assert db[b"k42"] == b"v42"
        assert len(db) == 100


def test_tombstone_in_active_segment_hides_older_segment_value(tmp_path):
    clock = Clock()
    path = tmp_path / "db"
    with _open(path, clock, max_segment_size=4096) as db:
        db.put(b"victim", b"old")
        for i in range(200):  # push the value into an older, sealed segment
            db.put(b"fill%d" % i, b"x" * 40)
        assert db.stats()["segments"] > 1
        db.delete(b"victim")
    with _open(path, clock) as db:
        assert db.recovery_report.segments_from_hints >= 1
        assert b"victim" not in db
        assert db.get(b"victim") is None


def test_expired_record_in_active_segment_keeps_older_value_dead(tmp_path):
    clock = Clock()
    path = tmp_path / "db"
    with _open(path, clock, max_segment_size=4096) as db:
        db.put(b"sess", b"old")
        for i in range(200):
            db.put(b"fill%d" % i, b"x" * 40)
        db.put(b"sess", b"new", ttl=5)
        clock.now += 10
        assert len(db) == 200  # purges the expired key from the index
    with _open(path, clock) as db:
        assert db.get(b"sess") is None


def test_appends_after_a_checkpoint_are_scanned(tmp_path):
    clock = Clock()
    path = tmp_path / "db"
    with _open(path, clock) as db:
        db.put(b"a", b"1")
        db.put(b"b", b"2")
    db = _open(path, clock)
    db.put(b"c", b"3")
    db.delete(b"a")
    db._abandon()  # crash: no new checkpoint, the old hint covers a prefix only
    with _open(path, clock) as db:
        assert db.recovery_report.segments_from_hints == 1
        assert dict(db.items()) == {b"b": b"2", b"c": b"3"}


def test_reput_after_delete_is_live_after_reopen(tmp_path):
    clock = Clock()
    path = tmp_path / "db"
    with _open(path, clock) as db:
        db.put(b"k", b"1")
        db.delete(b"k")
        db.put(b"k", b"2")
        db.delete(b"gone-never-existed")
    with _open(path, clock) as db:
        assert db[b"k"] == b"2"
        assert len(db) == 1


def test_hint_for_another_incarnation_is_ignored(tmp_path):
    clock = Clock()
    path = tmp_path / "db"
    with _open(path, clock) as db:
        db.put(b"k", b"1")
    hint_bytes = (path / "000001.hint").read_bytes()
    bad = bytearray(hint_bytes)
    bad[20] ^= 0xFF  # inside the nonce; the CRC no longer matches either
    (path / "000001.hint").write_bytes(bytes(bad))
    with _open(path, clock) as db:
        assert db.recovery_report.segments_from_hints == 0
        assert db.recovery_report.ignored_hints
        assert db[b"k"] == b"1"


def test_random_workload_matches_model_across_checkpoints(tmp_path):
    rng = random.Random(7)
    clock = Clock()
    path = tmp_path / "db"
    model: dict[bytes, tuple[bytes, float | None]] = {}

    def live() -> dict[bytes, bytes]:
        return {k: v for k, (v, exp) in model.items() if exp is None or exp > clock.now}

    for _round in range(12):
        db = _open(path, clock, max_segment_size=8192)
        for _ in range(150):
            key = b"k%d" % rng.randrange(40)
            roll = rng.random()
            if roll < 0.55:
                value = rng.randbytes(rng.randrange(0, 60))
                ttl = rng.choice([None, None, 1.0, 30.0])
                db.put(key, value, ttl=ttl)
                model[key] = (value, None if ttl is None else clock.now + ttl)
            elif roll < 0.8:
                db.delete(key)
                model.pop(key, None)
            elif roll < 0.9:
                clock.now += rng.choice([0.5, 2.0])
            else:
                len(db)  # purges expired keys from the index
        assert dict(db.items()) == live()
        if rng.random() < 0.3:
            db._abandon()
        else:
            db.close()
        with _open(path, clock) as check:
            assert dict(check.items()) == live()
