"""Hints for sealed append segments: written by the maintenance thread after rotation, they
must make an open index exactly what a scan would."""

from __future__ import annotations

import os
import random

import bitkv
from bitkv import sealing


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _hints(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".hint"))


def _workload(db, clock, rng, model, n):
    for _ in range(n):
        key = b"k%d" % rng.randrange(300)
        roll = rng.random()
        if roll < 0.6:
            value = rng.randbytes(rng.randrange(0, 80))
            ttl = rng.choice([None, None, None, 5.0])
            db.put(key, value, ttl=ttl)
            model[key] = (value, None if ttl is None else clock.now + ttl)
        elif roll < 0.75:
            with db.batch() as b:
                for _ in range(3):
                    k2 = b"k%d" % rng.randrange(300)
                    b.put(k2, b"batch")
                    model[k2] = (b"batch", None)
        elif roll < 0.95:
            db.delete(key)
            model.pop(key, None)
        else:
            clock.now += 3


def _live(model, clock):
    return {k: v for k, (v, exp) in model.items() if exp is None or exp > clock.now}


def test_sealed_segments_get_hints_that_index_exactly_what_a_scan_does(tmp_path):
    rng = random.Random(11)
    clock = Clock()
    path = tmp_path / "db"
    model: dict = {}
    db = bitkv.open(path, max_segment_size=8192, auto_compact=False, clock=clock)
    _workload(db, clock, rng, model, 2000)
    db._write_seal_hints(blocking=True)
    sealed = db.stats()["segments"] - 1
    assert sealed >= 3
    assert len(_hints(path)) == sealed
    db._abandon()  # no checkpoint: the active segment is scanned, the sealed ones are not
    with bitkv.open(path, auto_compact=False, clock=clock) as db:
        assert db.recovery_report.segments_from_hints == sealed
        assert dict(db.items()) == _live(model, clock)
    for name in _hints(path):
        os.unlink(path / name)
    with bitkv.open(path, auto_compact=False, clock=clock) as db:  # the scan agrees
        assert dict(db.items()) == _live(model, clock)


def test_a_tombstone_in_a_sealed_segment_keeps_hiding_an_older_value(tmp_path):
    clock = Clock()
    path = tmp_path / "db"
    db = bitkv.open(path, max_segment_size=4096, auto_compact=False, clock=clock)
    db.put(b"victim", b"old")
    for i in range(60):
        db.put(b"fill%d" % i, b"x" * 60)
    db.delete(b"victim")
    for i in range(60):
        db.put(b"more%d" % i, b"y" * 60)
    db._write_seal_hints(blocking=True)
    db._abandon()
    with bitkv.open(path, auto_compact=False, clock=clock) as db:
        assert db.recovery_report.segments_from_hints >= 2
        assert b"victim" not in db


def test_a_damaged_sealed_segment_gets_no_hint(tmp_path):
    path = tmp_path / "db"
    with bitkv.open(path, max_segment_size=4096, auto_compact=False) as db:
        for i in range(120):
            db.put(b"k%d" % i, b"v" * 60)
    first = path / "000001.data"
    data = bytearray(first.read_bytes())
    data[200] ^= 0xFF
    first.write_bytes(bytes(data))
    with bitkv.open(path, auto_compact=False) as db:
        seg = next(s for s in db._table.segments if s.id == 1)
        assert sealing.build_hint(str(path), db._io, seg) is None
