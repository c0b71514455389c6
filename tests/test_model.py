"""A stateful model test: the store against a dict, with TTLs on an injected clock, reopens,
crashes (kill -9 via ``_abandon``) and, when the engine has it, compaction."""

from __future__ import annotations

import os
import shutil
import tempfile

import hypothesis.strategies as st
from conftest import FakeClock, fast_base
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import bitkv
from bitkv.segment import data_name

# A small key space so overwrites, deletes and TTL changes hit the same keys often.
ALL_KEYS = [b"a", b"b", b"c", b"d", b"e", b"key:1", b"key:2", b"\x00", b"\xff" * 3]
KEYS = st.sampled_from(ALL_KEYS)
VALUES = st.one_of(
    st.just(b""),
    st.binary(max_size=40),
    st.binary(min_size=300, max_size=1500),  # fills the 4 KiB segments quickly
)
TTLS = st.sampled_from([1, 2, 3, 5, 10, 60])
STEPS = st.sampled_from([0.5, 1, 2, 3, 7])

SEGMENT = 4096


class StoreModel(RuleBasedStateMachine):
    """``self.model`` maps key -> (value, expiry_ms or 0). Expiry is checked lazily, exactly
    as the store defines it: a key is live while ``expiry_ms > now_ms``."""

    @initialize()
    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="bitkv-model-", dir=fast_base())
        self.path = self.dir + "/db"
        self.clock = FakeClock()
        self.model: dict[bytes, tuple[bytes, int]] = {}
        self.db = self._open()

    def _open(self):
        return bitkv.open(self.path, clock=self.clock, max_segment_size=SEGMENT, sync="never")

    def teardown(self):
        db = getattr(self, "db", None)
        if db is not None:
            db.close()
        if getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model ---------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _live(self) -> dict[bytes, tuple[bytes, int]]:
        now = self._now_ms()
        return {k: (v, e) for k, (v, e) in self.model.items() if not e or e > now}

    # -- rules -------------------------------------------------------------------------------

    @rule(key=KEYS, value=VALUES)
    def put(self, key, value):
        self.db.put(key, value)
        self.model[key] = (value, 0)

    @rule(key=KEYS, value=VALUES, ttl=TTLS)
    def put_with_ttl(self, key, value, ttl):
        self.db.put(key, value, ttl=ttl)
        self.model[key] = (value, self._now_ms() + ttl * 1000)

    @rule(key=KEYS)
    def delete(self, key):
        was_live = key in self._live()
        assert self.db.delete(key) is was_live
        self.model.pop(key, None)

    @rule(key=KEYS, ttl=TTLS)
    def expire(self, key, ttl):
        live = self._live()
        assert self.db.expire(key, ttl) is (key in live)
        if key in live:
            self.model[key] = (live[key][0], self._now_ms() + ttl * 1000)

    @rule(key=KEYS)
    def persist(self, key):
        live = self._live()
        had_ttl = key in live and live[key][1] != 0
        assert self.db.persist(key) is had_ttl
        if had_ttl:
            self.model[key] = (live[key][0], 0)

    @rule(seconds=STEPS)
    def advance_clock(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def reopen(self):
        self.db.close()
        self.db = self._open()

    @rule()
    def crash(self):
        self.db._abandon()
        self.db = self._open()
        recovered = self.db.stats()["recovery"]
        # Nothing torn: only the active segment's preallocated zeros were cut.
        assert recovered["truncated_bytes"] == recovered["zero_tail_bytes"]
        assert recovered["corrupt_bytes"] == 0

    @rule(junk=st.one_of(st.binary(min_size=1, max_size=64), st.integers(1, 64).map(bytes)))
    def crash_leaving_junk(self, junk):
        """kill -9 in the middle of an append: junk after the last acknowledged record."""
        active = self.db.stats()["active_segment"]  # compaction outputs may have higher ids
        end = self.db._log.active.size  # the data's end; preallocated zeros follow it
        self.db._abandon()
        path = os.path.join(self.path, data_name(active))
        with open(path, "r+b") as fh:
            fh.seek(end)
            fh.write(junk)
        size = os.path.getsize(path)
        self.db = self._open()
        recovered = self.db.stats()["recovery"]
        assert recovered["truncated_bytes"] == size - end
        assert recovered["truncated_bytes"] - recovered["zero_tail_bytes"] == len(
            junk.rstrip(b"\0"))

    @precondition(lambda self: hasattr(self.db, "compact"))
    @rule()
    def compact(self):
        self.db.compact()

    @rule()
    def sync(self):
        self.db.sync()

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def matches_model(self):
        live = self._live()
        now = self._now_ms()
        db = self.db
        for key in ALL_KEYS:
            if key in live:
                value, expiry = live[key]
                assert db.get(key) == value, key
                assert key in db, key
                got_ttl = db.ttl(key)
                if expiry:
                    assert got_ttl == (expiry - now) / 1000.0, key
                else:
                    assert got_ttl is None, key
            else:
                assert db.get(key) is None, key
                assert key not in db, key
                try:
                    db.ttl(key)
                except KeyError:
                    pass
                else:
                    raise AssertionError(f"ttl({key!r}) of a missing key did not raise KeyError")
        assert len(db) == len(live)
        assert sorted(db.keys()) == sorted(live)
        assert sorted(db.keys(prefix=b"key:")) == sorted(k for k in live if k.startswith(b"key:"))
        assert dict(db.items()) == {k: v for k, (v, _) in live.items()}


StoreModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestStoreModel = StoreModel.TestCase
