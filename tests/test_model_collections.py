"""A stateful model test of the collection types: hashes, sets, lists and sorted sets (and
strings over them) against a Python model, with TTLs on an injected clock, reopens, kill -9
(``_abandon``, and junk after the last record as a torn append) and compaction in between.

The operations are Redis's, one element at a time (HSET, HDEL, SADD, SREM, ZADD, ZREM,
RPUSH, LPUSH, LPOP, RPOP, DEL, PEXPIRE, PERSIST, SET over a collection), with WRONGTYPE when
the key holds another type and the key gone with its last element. They run through a
*driver*: :class:`StructuresDriver` applies them to the storage layer (bitkv.structures) as
the server's commands do, so the model covers the records, the index and its rebuild at
every reopen and crash, with TTLs that pass; :class:`ServerDriver` sends them as commands to
``bitkv serve`` (restart, kill -9 and BGREWRITEAOF between them), for the types the build
serves. The budget is about test_model.py's; ``BITKV_SOAK=1 -m soak`` runs a long one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import hypothesis.strategies as st
import pytest
import redis
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
from bitkv.server import ServerThread
from bitkv.structures import (
    HashIndex,
    ListIndex,
    SetIndex,
    Structures,
    WrongTypeError,
    ZSetIndex,
)
from bitkv.structures.encoding import pack_position, pack_score, unpack_score

ALL_KEYS = [b"k", b"l", b"\x00z"]
KEYS = st.sampled_from(ALL_KEYS)
SUBS = st.sampled_from([b"a", b"b", b"c", b"1", b"-2", b"", b"\xff" * 3, b"long" * 20])
VALUES = st.one_of(st.just(b""), st.binary(max_size=30), st.binary(min_size=200, max_size=600))
SCORES = st.one_of(st.sampled_from([0.0, -0.0, 1.5, float("inf"), float("-inf")]),
                   st.floats(allow_nan=False, width=64))
TTLS_MS = st.sampled_from([1, 500, 1000, 2000, 60_000])
STEPS = st.sampled_from([0.25, 1, 3])
SEGMENT = 4096

# The model: key -> (type, content, expiry ms or 0). Content: "string" bytes, "hash"
# {field: value}, "set" {member}, "list" [values], "zset" {member: score}.
Entry = tuple[str, object, int]


class StructuresDriver:
    """The operations applied to a store's ``Structures``, as the server's commands do."""

    fake_time = True  # the model's clock is the store's: advancing it expires keys
    types = frozenset({"hash", "set", "zset", "list"})

    def __init__(self, path: str, clock: FakeClock) -> None:
        self.path = path
        self.clock = clock
        self._open()

    def _open(self) -> None:
        self.db = bitkv.open(self.path, clock=self.clock, max_segment_size=SEGMENT,
                             sync="never")
        self.s = Structures(self.db, clock=self.clock.now_ms)

    def close(self) -> None:
        self.db.close()

    # -- elements -------------------------------------------------------------------------

    def put(self, cls: type, key: bytes, sub: bytes, value: bytes) -> None:
        with self.s.edit(key, cls) as e:
            e.put(sub, value)

    def remove(self, cls: type, key: bytes, sub: bytes) -> bool:
        with self.s.edit(key, cls) as e:
            if not e.collection.has(sub):
                return False
            e.delete(sub)
        return True

    def push(self, key: bytes, value: bytes, left: bool) -> None:
        with self.s.edit(key, ListIndex) as e:
            p = e.collection.positions  # type: ignore[attr-defined]
            pos = 0 if not p else (p[0] - 1 if left else p[-1] + 1)
            e.put(pack_position(pos), value)

    def pop(self, key: bytes, left: bool) -> bytes | None:
        lst = self.s.find(key, ListIndex)
        if lst is None:
            return None
        sub = pack_position(lst.positions[0] if left else lst.positions[-1])
        value = self.s.read(lst, sub)
        with self.s.edit(key, ListIndex) as e:
            e.delete(sub)
        return value

    # -- keys -------------------------------------------------------------------------------

    def delete(self, key: bytes) -> bool:
        if key in self.s:
            return self.s.delete(key)
        return self.db.delete(key)

    def pexpire(self, key: bytes, ms: int) -> int:
        """Expire ``key`` in ``ms``; the absolute expiry set, 0 if there is no such key."""
        at = self.clock.now_ms() + ms
        return at if self.s.expire_at(key, at) else 0

    def persist(self, key: bytes) -> bool:
        c = self.s.collection(key)
        if c is None or not c.expire_ms:
            return False
        return self.s.expire_at(key, None)

    def set_string(self, key: bytes, value: bytes) -> None:
        """SET: over a collection, its records go in the string's own batch (strings.py)."""
        s = self.s
        if key in s:
            s.write([*s.delete_ops(key), (key, value, None)])
            s.forget(key)
        else:
            self.db.put(key, value)

    def dump(self) -> dict[bytes, Entry]:
        s, out = self.s, {}
        for key in ALL_KEYS:
            c = s.collection(key)
            if c is None:
                v = self.db.get(key)
                if v is not None:
                    out[key] = ("string", v, 0)
                continue
            subs = list(c.subs())
            values = s.read_many(c, subs)
            assert None not in values, (key, subs, values)
            content: object
            if isinstance(c, HashIndex):
                content = dict(zip(subs, values, strict=True))
            elif isinstance(c, SetIndex):
                content = set(subs)
            elif isinstance(c, ListIndex):
                content = values
            else:
                assert isinstance(c, ZSetIndex)
                content = dict(c.scores)
                assert [m for _sc, m in c.order] == sorted(
                    content, key=lambda m: (content[m], m))  # type: ignore[index]
            out[key] = (c.NAME, content, c.expire_ms)
        return out

    # -- the process ----------------------------------------------------------------------

    def reopen(self) -> None:
        self.db.close()
        self._open()

    def crash(self) -> None:
        self.db._abandon()
        self._open()

    def crash_leaving_junk(self, junk: bytes) -> None:
        active = self.db.stats()["active_segment"]
        end = self.db._log.active.size
        self.db._abandon()
        with open(os.path.join(self.path, data_name(active)), "r+b") as fh:
            fh.seek(end)
            fh.write(junk)
        self._open()

    def compact(self) -> None:
        self.db.compact()


class CollectionsModel(RuleBasedStateMachine):
    driver_class = StructuresDriver

    @initialize()
    def setup(self):
        self.dir = tempfile.mkdtemp(prefix="bitkv-colmodel-", dir=fast_base())
        self.clock = FakeClock() if self.driver_class.fake_time else RealClock()
        self.model: dict[bytes, Entry] = {}
        self.pushes = 0
        self.d = self.driver_class(self.dir + "/db", self.clock)

    def teardown(self):
        d = getattr(self, "d", None)
        if d is not None:
            d.close()
        if getattr(self, "dir", None):
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the model --------------------------------------------------------------------------

    def _live(self, key: bytes) -> Entry | None:
        e = self.model.get(key)
        if e is not None and e[2] and e[2] <= self.clock.now_ms():
            del self.model[key]
            return None
        return e

    def _typed(self, key: bytes, type_name: str, empty: object) -> object | None:
        """The live content of ``key`` if it is of ``type_name`` (``empty`` if absent), None
        if it holds another type (the operation must then raise WRONGTYPE)."""
        e = self._live(key)
        if e is None:
            return empty
        return e[1] if e[0] == type_name else None

    def _store(self, key: bytes, type_name: str, content: object) -> None:
        if content:  # the last element gone: the key is gone, TTL and all
            old = self._live(key)
            self.model[key] = (type_name, content, old[2] if old else 0)
        else:
            self.model.pop(key, None)

    def _expect_wrongtype(self, fn, *args):
        try:
            fn(*args)
        except WrongTypeError:
            return
        except redis.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                return
            raise
        raise AssertionError(f"{fn.__name__}{args} did not raise WRONGTYPE")

    # -- rules -------------------------------------------------------------------------------

    @precondition(lambda self: "hash" in self.d.types)
    @rule(key=KEYS, field=SUBS, value=VALUES)
    def hset(self, key, field, value):
        content = self._typed(key, "hash", {})
        if content is None:
            return self._expect_wrongtype(self.d.put, HashIndex, key, field, value)
        self.d.put(HashIndex, key, field, value)
        self._store(key, "hash", {**content, field: value})

    @precondition(lambda self: "hash" in self.d.types)
    @rule(key=KEYS, field=SUBS)
    def hdel(self, key, field):
        content = self._typed(key, "hash", {})
        if content is None:
            return self._expect_wrongtype(self.d.remove, HashIndex, key, field)
        assert self.d.remove(HashIndex, key, field) is (field in content)
        self._store(key, "hash", {f: v for f, v in content.items() if f != field})

    @precondition(lambda self: "set" in self.d.types)
    @rule(key=KEYS, member=SUBS)
    def sadd(self, key, member):
        content = self._typed(key, "set", set())
        if content is None:
            return self._expect_wrongtype(self.d.put, SetIndex, key, member, b"")
        self.d.put(SetIndex, key, member, b"")
        self._store(key, "set", content | {member})

    @precondition(lambda self: "set" in self.d.types)
    @rule(key=KEYS, member=SUBS)
    def srem(self, key, member):
        content = self._typed(key, "set", set())
        if content is None:
            return self._expect_wrongtype(self.d.remove, SetIndex, key, member)
        assert self.d.remove(SetIndex, key, member) is (member in content)
        self._store(key, "set", content - {member})

    @precondition(lambda self: "zset" in self.d.types)
    @rule(key=KEYS, member=SUBS, score=SCORES)
    def zadd(self, key, member, score):
        content = self._typed(key, "zset", {})
        if content is None:
            return self._expect_wrongtype(self.d.put, ZSetIndex, key, member, pack_score(score))
        self.d.put(ZSetIndex, key, member, pack_score(score))
        self._store(key, "zset", {**content, member: score})

    @precondition(lambda self: "zset" in self.d.types)
    @rule(key=KEYS, member=SUBS)
    def zrem(self, key, member):
        content = self._typed(key, "zset", {})
        if content is None:
            return self._expect_wrongtype(self.d.remove, ZSetIndex, key, member)
        assert self.d.remove(ZSetIndex, key, member) is (member in content)
        self._store(key, "zset", {m: s for m, s in content.items() if m != member})

    @precondition(lambda self: "list" in self.d.types)
    @rule(key=KEYS, value=VALUES, left=st.booleans())
    def push(self, key, value, left):
        self.pushes += 1
        value = b"%d:" % self.pushes + value  # distinct: a pop from the wrong end shows
        content = self._typed(key, "list", [])
        if content is None:
            return self._expect_wrongtype(self.d.push, key, value, left)
        self.d.push(key, value, left)
        self._store(key, "list", [value, *content] if left else [*content, value])

    @precondition(lambda self: "list" in self.d.types)
    @rule(key=KEYS, left=st.booleans())
    def pop(self, key, left):
        content = self._typed(key, "list", [])
        if content is None:
            return self._expect_wrongtype(self.d.pop, key, left)
        got = self.d.pop(key, left)
        if not content:
            assert got is None
            return None
        assert got == (content[0] if left else content[-1])
        self._store(key, "list", content[1:] if left else content[:-1])
        return None

    @rule(key=KEYS, value=VALUES)
    def set_string(self, key, value):
        self.d.set_string(key, value)
        self.model[key] = ("string", value, 0)

    @rule(key=KEYS)
    def delete(self, key):
        assert self.d.delete(key) is (self._live(key) is not None)
        self.model.pop(key, None)

    @rule(key=KEYS, ms=TTLS_MS)
    def pexpire(self, key, ms):
        e = self._live(key)
        if e is not None and e[0] == "string":
            return  # strings' TTLs are test_model.py's
        at = self.d.pexpire(key, ms)
        assert bool(at) is (e is not None)
        if e is not None:
            self.model[key] = (e[0], e[1], at)

    @rule(key=KEYS)
    def persist(self, key):
        e = self._live(key)
        if e is not None and e[0] == "string":
            return
        had = e is not None and e[2] != 0
        assert self.d.persist(key) is had
        if e is not None:
            self.model[key] = (e[0], e[1], 0)

    @precondition(lambda self: self.d.fake_time)
    @rule(seconds=STEPS)
    def advance_clock(self, seconds):
        self.clock.advance(seconds)

    @rule()
    def reopen(self):
        self.d.reopen()

    @rule()
    def crash(self):
        self.d.crash()

    @rule(junk=st.one_of(st.binary(min_size=1, max_size=64), st.integers(1, 64).map(bytes)))
    def crash_leaving_junk(self, junk):
        self.d.crash_leaving_junk(junk)

    @rule()
    def compact(self):
        self.d.compact()

    # -- the invariant ------------------------------------------------------------------------

    @invariant()
    def matches_model(self):
        want = {}
        for key in ALL_KEYS:
            e = self._live(key)
            if e is not None:
                want[key] = e
        assert self.d.dump() == want


SETTINGS = settings(max_examples=100, stateful_step_count=50, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
CollectionsModel.TestCase.settings = SETTINGS
TestCollectionsModel = CollectionsModel.TestCase


class RealClock:
    """The wall clock, for the server driver (the server's commands read it)."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)


SERVER_TTL_MS = 3_600_000  # added to a server driver's TTLs: nothing expires during a run


class ServerDriver(StructuresDriver):
    """The operations as commands to ``bitkv serve`` (a ServerThread over a store this driver
    opens, through redis-py). Restart: the server stops and the store is closed; kill -9:
    the server stops and the store is abandoned (``_abandon``); compaction: ``BGREWRITEAOF``
    and a wait for it. TTLs are an hour ahead (the server reads the wall clock): the model
    checks that each is set exactly, not that it passes (the storage driver does that)."""

    fake_time = False

    def __init__(self, path: str, clock: object) -> None:
        self.path = path
        self.types = SERVED_TYPES
        self._open()

    def _open(self) -> None:
        self.db = bitkv.open(self.path, max_segment_size=SEGMENT, sync="never")
        self.srv = ServerThread(store=self.db, port=0).start()
        self.c = redis.Redis(port=self.srv.port, protocol=2)

    def _stop(self) -> None:
        self.c.close()
        self.srv.stop()

    def close(self) -> None:
        self._stop()
        self.db.close()

    def put(self, cls: type, key: bytes, sub: bytes, value: bytes) -> None:
        if cls is HashIndex:
            self.c.hset(key, sub, value)
        elif cls is SetIndex:
            self.c.sadd(key, sub)
        else:
            self.c.execute_command("ZADD", key, repr(unpack_score(value)), sub)

    def remove(self, cls: type, key: bytes, sub: bytes) -> bool:
        name = {HashIndex: "HDEL", SetIndex: "SREM", ZSetIndex: "ZREM"}[cls]
        return bool(self.c.execute_command(name, key, sub))

    def push(self, key: bytes, value: bytes, left: bool) -> None:
        self.c.execute_command("LPUSH" if left else "RPUSH", key, value)

    def pop(self, key: bytes, left: bool) -> bytes | None:
        return self.c.execute_command("LPOP" if left else "RPOP", key)

    def delete(self, key: bytes) -> bool:
        return bool(self.c.delete(key))

    def pexpire(self, key: bytes, ms: int) -> int:
        at = int(time.time() * 1000) + SERVER_TTL_MS + ms
        return at if self.c.pexpireat(key, at) else 0

    def persist(self, key: bytes) -> bool:
        return bool(self.c.persist(key))

    def set_string(self, key: bytes, value: bytes) -> None:
        self.c.set(key, value)

    def dump(self) -> dict[bytes, Entry]:
        c, out = self.c, {}
        for key in ALL_KEYS:
            t = c.type(key).decode()
            if t == "none":
                continue
            content: object
            if t == "string":
                out[key] = ("string", c.get(key), 0)
                continue
            if t == "hash":
                content = c.hgetall(key)
            elif t == "set":
                content = c.smembers(key)
            elif t == "list":
                content = c.lrange(key, 0, -1)
            else:
                pairs = c.zrange(key, 0, -1, withscores=True)
                content = dict(pairs)
                assert [m for m, _sc in pairs] == sorted(
                    content, key=lambda m: (content[m], m))  # type: ignore[index]
            at = c.pexpiretime(key)
            out[key] = (t, content, max(at, 0))
        return out

    def reopen(self) -> None:
        self.close()
        self._open()

    def crash(self) -> None:
        self._stop()
        self.db._abandon()
        self._open()

    def crash_leaving_junk(self, junk: bytes) -> None:
        self._stop()
        StructuresDriver.crash_leaving_junk(self, junk)

    def compact(self) -> None:
        """BGREWRITEAOF (the server's compaction), once one the server started itself (small
        segments) is done, then wait for it."""
        deadline = time.time() + 20
        while True:
            before = self.db.stats()["compactions"]
            try:
                self.c.bgrewriteaof()
                break
            except redis.ResponseError as exc:
                if "already in progress" not in str(exc):
                    raise
            assert time.time() < deadline, "a compaction did not end"
            time.sleep(0.005)
        while self.db.stats()["compactions"] == before:
            assert time.time() < deadline, "BGREWRITEAOF did not compact"
            time.sleep(0.005)


def _served_types() -> frozenset[str]:
    """The collection types this build's server serves (their commands reach main one type
    at a time, the keyspace's TTL commands for collections separately): probed once on a
    scratch server. Empty: the server model is skipped."""
    from bitkv.server.commands import lookup

    needs = {"hash": (b"hset", b"hdel"), "set": (b"sadd", b"srem"), "zset": (b"zadd", b"zrem"),
             "list": (b"lpush", b"rpush", b"lpop", b"rpop")}
    types = frozenset(t for t, names in needs.items()
                      if all(lookup(n) is not None for n in names))
    if "hash" not in types:
        return frozenset()
    directory = tempfile.mkdtemp(prefix="bitkv-colmodel-probe-", dir=fast_base())
    try:
        with ServerThread(dir=directory + "/db", port=0) as srv:
            c = redis.Redis(port=srv.port)
            c.hset("h", "f", "v")
            at = int(time.time() * 1000) + SERVER_TTL_MS
            if not c.pexpireat("h", at) or c.pexpiretime("h") != at:
                return frozenset()  # the keyspace commands do not see collections yet
            c.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return types


SERVED_TYPES = _served_types()


class ServerCollectionsModel(CollectionsModel):
    driver_class = ServerDriver


ServerCollectionsModel.TestCase.settings = settings(SETTINGS, max_examples=50,
                                                    stateful_step_count=40)
TestServerCollectionsModel = pytest.mark.skipif(
    not SERVED_TYPES, reason="this build's server does not serve collections (and their TTLs) "
                             "yet")(ServerCollectionsModel.TestCase)


@pytest.mark.soak
@pytest.mark.skipif(os.environ.get("BITKV_SOAK") != "1", reason="set BITKV_SOAK=1 to soak")
def test_collections_model_soak():
    """The same machine, many more runs: ``BITKV_SOAK=1 python -m pytest -m soak
    tests/test_model_collections.py`` (2,000 runs of 80 steps: about two minutes)."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(CollectionsModel, settings=settings(
        SETTINGS, max_examples=2000, stateful_step_count=80))

