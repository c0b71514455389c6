"""The compiled single put (bitkv/native/put.c) against the Python path it replaces.

Both paths must write the same bytes and leave the same index and accounting (entries, each
segment's live bytes, the hidden records, expiries, the next seq); the kernel must decline
(False, nothing changed) whatever it does not handle, hold the writer lock, and leak nothing.
"""

from __future__ import annotations

import os
import threading
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitkv
from bitkv import keydir
from bitkv import segment as seg_mod

native = pytest.importorskip("bitkv._native")
pytestmark = pytest.mark.skipif(keydir.IMPLEMENTATION != "native",
                                reason="pure-Python mode: no compiled put")

T0 = 1_700_000_000.0


def _open(path: str, use_native: bool, **kw: object) -> bitkv.Store:
    db = bitkv.open(path, auto_compact=False, clock=lambda: T0, **kw)  # type: ignore[arg-type]
    if use_native:
        assert db._native_put is native.put
    else:
        db._use_native_put(False)
    return db


def _state(db: bitkv.Store) -> dict[str, object]:
    segs = []
    for s in db._table.segments:
        with open(s.path, "rb") as fh:
            body = fh.read()[seg_mod.HEADER_SIZE : s.size]  # headers differ (random nonces)
        segs.append((s.slot, s.size, s.live_bytes, body))
    kd = db._keydir
    return {"segments": segs, "entries": dict(kd.entries.items()), "next_seq": db._next_seq,
            "hidden": dict(kd.hidden or {}), "expiries": dict(kd.expiries)}


_key = st.binary(min_size=1, max_size=3).map(lambda b: b"k" + b)
_op = st.one_of(
    st.tuples(st.just("put"), _key, st.binary(max_size=300)),
    st.tuples(st.just("big"), _key, st.integers(4000, 9000)),  # no size hint in the entry
    st.tuples(st.just("ttl"), _key, st.binary(max_size=20)),
    st.tuples(st.just("del"), _key, st.just(b"")),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=80))
def test_native_put_matches_the_python_path(tmp_path_factory, ops):
    base = tmp_path_factory.mktemp("diff")
    stores = [_open(str(base / "py"), False, max_segment_size=16384),
              _open(str(base / "c"), True, max_segment_size=16384)]
    try:
        for kind, key, arg in ops:
            for db in stores:
                if kind == "put":
                    assert db.put(key, arg) is True
                elif kind == "big":
                    assert db.put(key, b"b" * arg) is True  # type: ignore[operator]
                elif kind == "ttl":
                    db.put(key, arg, ttl=60)  # the Python path, in both stores
                else:
                    db.delete(key)
        a, b = (_state(db) for db in stores)
        assert a == b
    finally:
        for db in stores:
            db.close()


def test_native_put_declines_what_it_does_not_handle(tmp_path):
    db = _open(str(tmp_path / "db"), True)
    try:
        db.put(b"warm", b"up")  # preallocates and maps the active segment
        seq = db._next_seq
        for key, value in [("str", b"v"), (b"", b"v"), (b"k" * 65536, b"v"),
                           (b"k", bytearray(b"v")), (b"k", "v"),
                           (b"k", b"v" * (64 * 2**20 + 1))]:
            assert native.put(db, key, value) is False
        db._log.refused = True
        assert native.put(db, b"k", b"v") is False  # refused: the Python path explains why
        db._log.refused = False
        active = db._log.active
        allocated = active.allocated
        active.allocated = active.size + 10  # no room: the Python path preallocates
        assert native.put(db, b"k", b"v" * 100) is False
        active.allocated = allocated + (1 << 30)  # claims more than the map holds
        assert native.put(db, b"k", b"v" * (allocated - active.size)) is False
        active.allocated = allocated
        assert db._next_seq == seq and db.get(b"k") is None
        assert native.put(db, b"k", b"v") is True and db[b"k"] == b"v"
    finally:
        db.close()


def test_native_put_waits_for_the_writer_lock(tmp_path):
    db = _open(str(tmp_path / "db"), True)
    try:
        db.put(b"warm", b"up")
        done = threading.Event()
        with db._lock:
            t = threading.Thread(target=lambda: (db.put(b"k", b"v"), done.set()))
            t.start()
            assert not done.wait(0.2)  # blocked on the lock, GIL released
            assert db.get(b"k") is None
        t.join(5)
        assert done.is_set() and db[b"k"] == b"v"
    finally:
        db.close()


def test_native_put_is_used_only_where_it_writes_what_python_would(tmp_path):
    with bitkv.open(str(tmp_path / "a"), sync="always") as db:
        assert db._native_put is None  # pwrite + fdatasync: the Python path
    with bitkv.open(str(tmp_path / "b"), compression="zstd") as db:
        assert db._native_put is None
    with bitkv.open(str(tmp_path / "c"), fileio=bitkv.fileio.FileIO()) as db:
        assert db._native_put is native.put
    with bitkv.open(str(tmp_path / "d"), fileio=type("Sub", (bitkv.fileio.FileIO,), {})()) as db:
        assert db._native_put is None  # a substitute FileIO sees every write


def test_native_put_leaks_nothing(tmp_path):
    """A million calls (overwrites, new keys, declined calls): Python memory stays flat."""
    db = _open(str(tmp_path / "db"), True, max_segment_size=1 << 30)
    try:
        keys = [b"key%03d" % i for i in range(100)]
        value = b"v" * 20
        for k in keys:
            db.put(k, value)
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        put = db.put  # the kernel, and the Python path each time a preallocation is due
        for _ in range(10_000):
            for k in keys:
                put(k, value)
        for _ in range(1000):
            native.put(db, "declined", value)
            put(b"key042", value, if_present=True)  # the Writer hands it to Store.put
            put("str", value)
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert after - before < 64 * 1024, after - before
        assert db._next_seq == 100 * 10_001 + 2000 + 1
        assert len(db) == 101
        size = db._log.active.size
        db.close()
        db = _open(str(tmp_path / "db"), True)
        assert len(db) == 101 and db[b"key042"] == value
        assert os.path.getsize(db._log.active.path) == size
    finally:
        db.close()


def test_writer_is_the_stores_put_and_hands_the_rest_to_python(tmp_path):
    """db.put is the Writer's (no Python frame); options, conversions and a closed store
    go to Store.put, the reference, with its results and errors."""
    db = _open(str(tmp_path / "db"), True)
    try:
        assert isinstance(db._writer, native.Writer) and db.put == db._writer.put
        assert db.put(b"k", b"v") is True and db[b"k"] == b"v"
        assert db.put(b"t", b"v", ttl=60) is True and db._keydir.expiries[b"t"]
        assert db.put(b"t", b"w") is True and b"t" not in db._keydir.expiries
        assert db.put(key=b"kw", value=b"x") is True and db[b"kw"] == b"x"
        assert db.put("str", bytearray(b"conv")) is True and db[b"str"] == b"conv"
        assert db.put(b"k", b"new", if_absent=True) is False and db[b"k"] == b"v"
        with pytest.raises(TypeError):
            db.put(b"k", "not bytes")
        with pytest.raises(TypeError):
            db.put(b"k")
        bound = db.put
    finally:
        db.close()
    assert "put" not in db.__dict__ and not bound.__self__.attached
    with pytest.raises(bitkv.ClosedError):
        bound(b"k", b"v")  # bound before close: the reference raises
    with pytest.raises(bitkv.ClosedError):
        db.put(b"k", b"v")


def test_writer_is_not_bound_over_another_put(tmp_path):
    calls = []

    class Counting(bitkv.Store):
        def put(self, key, value, **kw):  # type: ignore[no-untyped-def, override]
            calls.append(key)
            return super().put(key, value, **kw)

    class Plain(bitkv.Store):
        pass

    with Counting(str(tmp_path / "a"), auto_compact=False) as db:
        assert db._writer is None and db._native_put is native.put
        db.put(b"k", b"v")
        assert calls == [b"k"] and db[b"k"] == b"v"
    with Plain(str(tmp_path / "b"), auto_compact=False) as db:
        assert db._writer is not None


def test_put_kernel_follows_a_changed_class(tmp_path):
    """The kernel reads LogWriter.refused straight from the instance dict only while no class
    defines that name: a property added later (the class changes, and so its version tag)
    or an instance of another class is read through getattr, as Python would."""
    from bitkv.log import LogWriter

    db = _open(str(tmp_path / "db"), True)
    try:
        db.put(b"warm", b"up")
        assert native.put(db, b"k", b"1") is True  # the dict way, now cached for LogWriter
        LogWriter.refused = property(lambda self: True)  # type: ignore[assignment]
        try:
            assert native.put(db, b"k", b"2") is False
        finally:
            del LogWriter.refused
        assert native.put(db, b"k", b"3") is True and db[b"k"] == b"3"

        class Refusing(LogWriter):
            refused = property(lambda self: True)  # type: ignore[assignment]

        db._log.__class__ = Refusing
        try:
            assert native.put(db, b"k", b"4") is False
        finally:
            db._log.__class__ = LogWriter
        assert native.put(db, b"k", b"5") is True and db[b"k"] == b"5"
    finally:
        db.close()


def test_writer_outliving_its_store_or_misbuilt_raises(tmp_path):
    db = _open(str(tmp_path / "db"), True)
    put = db.put
    db.close()
    del db
    import gc

    gc.collect()
    with pytest.raises(ReferenceError):
        put(b"k", b"v")  # the store is gone: nothing to write to, nothing to fall back to
    with pytest.raises(TypeError):
        native.Writer(object(), "not callable")
    with pytest.raises(TypeError):
        native.Writer(1, bitkv.Store.put)  # an int cannot be weakly referenced
