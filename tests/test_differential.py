"""Differential test: random operation sequences against a store in native mode (this process)
and one in pure-Python mode (a child process with ``BITKV_PURE_PYTHON=1``), comparing every
result and every byte on disk.

Issue 14's rule: the compiled kernels (the index map, the get and get_many kernels, the record
codec, the batch kernel) must give the same results and write the same bytes as the
pure-Python reference. Operations: put (with and without a ttl), get, get_many, delete, incr,
batch (puts, deletes, ttls, absolute expiries), expire, clock steps, reopen, compact, and the
keys under a prefix (listed, compared sorted, and counted). What would differ between two runs
of the same program is made deterministic on both sides: the clock is injected (a fixed start,
moved only by the program), segment nonces come from a seeded generator (as fuzz_store.py
does), no background thread runs (``auto_compact=False``, ``sync="never"``), and paths in error
messages are replaced by ``<path>``. The one file compared by name only is ``LOCK``, which
holds the writer's process id; ``COMPACTION`` (the last compaction's summary) is compared field
by field but for ``seconds``, how long the compaction took.

The child is started once per test and runs each program hypothesis generates in a fresh
directory, answering with its results and the directory's files.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bitkv
from bitkv import segment as seg_mod
from bitkv.names import LAST_COMPACTION_NAME

KEYS = [b"a", b"b", b"c", b"key:1", b"\x00", b"\xff" * 3, b"k" * 300]
SEGMENT = 4096


class _SeededSecrets:
    """Stands in for ``secrets`` in segment.py: the same nonces on both sides."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def _b(x: str) -> bytes:
    return bytes.fromhex(x)


def _result(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A JSON-able result of ``fn(*args, **kwargs)``: bytes as hex, an exception as its type
    and message."""
    try:
        r = fn(*args, **kwargs)
    except bitkv.Error as exc:
        return ["error", type(exc).__name__, str(exc)]
    except (ValueError, TypeError, KeyError) as exc:
        return ["error", type(exc).__name__, str(exc)]
    if isinstance(r, bytes):
        return ["bytes", r.hex()]
    if isinstance(r, tuple):
        return ["tuple", [_jsonable(x) for x in r]]
    if isinstance(r, list):
        return ["list", [_jsonable(x) for x in r]]
    return ["value", _jsonable(r)]


def _jsonable(x: Any) -> Any:
    if isinstance(x, bytes):
        return x.hex()
    if isinstance(x, (tuple, list)):
        return [_jsonable(y) for y in x]
    if isinstance(x, float):
        return round(x, 6)
    return x


def _compact(db: bitkv.Store) -> None:
    db.compact()  # its summary holds timings: only an error is compared


def _items(db: bitkv.Store) -> list[tuple[bytes, bytes]]:
    return sorted(db.items())


def _keys_under(db: bitkv.Store, prefix: bytes) -> list[bytes]:
    return sorted(db.keys(prefix).snapshot())  # the order is no contract (KeysView)


def _count_under(db: bitkv.Store, prefix: bytes) -> int:
    return len(db.keys(prefix))


def run_program(directory: str, program: list[list[Any]]) -> dict[str, Any]:
    """Run ``program`` on a new store in ``directory``; return every result and every file."""
    seg_mod.secrets = _SeededSecrets(len(program))  # type: ignore[attr-defined]
    clock = _Clock()
    path = os.path.join(directory, "db")

    def open_store() -> bitkv.Store:
        return bitkv.open(path, clock=clock, max_segment_size=SEGMENT, sync="never",
                          auto_compact=False)

    db = open_store()
    results: list[Any] = []
    try:
        for op in program:
            name, args = op[0], op[1:]
            if name == "put":
                k, v, ttl = _b(args[0]), _b(args[1]), args[2]
                results.append(_result(db.put, k, v, ttl=ttl))
            elif name == "get":
                k = _b(args[0])
                results.append(_result(db.get, k))
                results.append(_result(db.get, k, b"default"))
            elif name == "get_many":
                ks = [_b(k) for k in args[0]]
                results.append(_result(db.get_many, ks))
                results.append(_result(db.get_many, ks, b"default"))
            elif name == "delete":
                k = _b(args[0])
                results.append(_result(db.delete, k))
            elif name == "incr":
                k, delta = _b(args[0]), args[1]
                results.append(_result(db.incr, k, delta))
            elif name == "expire":
                k, ttl = _b(args[0]), args[1]
                results.append(_result(db.expire, k, ttl))
            elif name == "ttl":
                k = _b(args[0])
                results.append(_result(db.ttl, k))
            elif name == "batch":
                def commit(db: bitkv.Store, ops: list[list[Any]]) -> None:
                    with db.batch() as b:
                        for k, v, ttl, at in ops:
                            if v is None:
                                b.delete(_b(k))
                            elif at is not None:
                                b.put(_b(k), _b(v), expires_at_ms=int(clock.now * 1000) + at)
                            else:
                                b.put(_b(k), _b(v), ttl=ttl)
                results.append(_result(commit, db, args[0]))
            elif name == "advance":
                clock.now += args[0]
            elif name == "reopen":
                db.close()
                db = open_store()
                results.append(["report", db.recovery_report.records_loaded,
                                db.recovery_report.segments_from_hints])
            elif name == "compact":
                results.append(_result(_compact, db))
            elif name == "items":
                results.append(_result(_items, db))
            elif name == "keys":  # the prefix listing and count (KeyDir.keys_with_prefix)
                p = _b(args[0])
                results.append(_result(_keys_under, db, p))
                results.append(_result(_count_under, db, p))
        results.append(_result(_items, db))
        stats = db.stats()
        # COMPACTION (the last compaction's summary) holds how long it took: its size is
        # left out of disk_bytes here and its "seconds" out of its bytes below.
        # LOCK holds the writer's pid, whose digits differ between the two processes.
        for name in (LAST_COMPACTION_NAME, "LOCK"):
            varying = os.path.join(path, name)
            if os.path.exists(varying):
                stats["disk_bytes"] -= os.path.getsize(varying)
        results.append(["stats", {k: v for k, v in stats.items()
                                  if isinstance(v, (int, str)) and k != "path"}])
    finally:
        db.close()
    files = {}
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            data = f.read()
        if name == LAST_COMPACTION_NAME:
            doc = json.loads(data)
            doc.pop("seconds")
            data = json.dumps(doc, sort_keys=True).encode()
        files[name] = "<pid>" if name == "LOCK" else data.hex()
    text = json.dumps(results).replace(json.dumps(path)[1:-1], "<path>")
    return {"results": json.loads(text), "files": files}


def child_main() -> None:
    """The pure-Python side: one program per stdin line, one answer per stdout line."""
    assert bitkv.IMPLEMENTATION == "python"
    for line in sys.stdin:
        directory = tempfile.mkdtemp(prefix="bitkv-diff-")
        try:
            out = run_program(directory, json.loads(line))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


# -- the programs -------------------------------------------------------------------------------

HEXKEYS = st.sampled_from([k.hex() for k in KEYS])
VALUES = st.one_of(st.just(b""), st.binary(max_size=40), st.binary(min_size=300, max_size=1500),
                   st.just(b"12"), st.just(b"x" * 5000)).map(bytes.hex)
# Prefixes of KEYS, the empty prefix, keys themselves, and prefixes no key has.
PREFIXES = st.sampled_from([b"", b"k", b"key:", b"key:1", b"key:10", b"\x00", b"\xff",
                            b"\xff" * 4, b"kk", b"zz"]).map(bytes.hex)
TTLS = st.one_of(st.none(), st.sampled_from([0.5, 1, 2.25, 10, 0.0015]))
OPS = st.one_of(
    st.tuples(st.just("put"), HEXKEYS, VALUES, TTLS),
    st.tuples(st.just("get"), HEXKEYS),
    st.tuples(st.just("get"), HEXKEYS),
    st.tuples(st.just("get_many"), st.lists(HEXKEYS, max_size=40)),
    st.tuples(st.just("delete"), HEXKEYS),
    st.tuples(st.just("incr"), HEXKEYS, st.integers(-5, 5)),
    st.tuples(st.just("expire"), HEXKEYS, st.sampled_from([1, 3, 0.25])),
    st.tuples(st.just("ttl"), HEXKEYS),
    st.tuples(st.just("batch"), st.lists(st.tuples(
        HEXKEYS, st.one_of(st.none(), VALUES), st.one_of(st.none(), st.sampled_from([1.0, 2.5])),
        st.one_of(st.none(), st.sampled_from([-1000, 1, 1500]))), min_size=1, max_size=8)),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1, 2, 3.25])),
    st.tuples(st.just("reopen")),
    st.tuples(st.just("compact")),
    st.tuples(st.just("items")),
    st.tuples(st.just("keys"), PREFIXES),
).map(list)


@pytest.fixture(scope="module")
def pure_child():
    env = dict(os.environ, BITKV_PURE_PYTHON="1")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen(
        [sys.executable, "-c",
         f"import sys; sys.path.insert(0, {here!r}); import test_differential; "
         "test_differential.child_main()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=30)


def _ask(proc: subprocess.Popen[str], program: list[list[Any]]) -> dict[str, Any]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(program) + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    assert line, "the pure-Python child died"
    answer: dict[str, Any] = json.loads(line)
    return answer


def _compare(pure_child: subprocess.Popen[str], program: list[list[Any]]) -> None:
    with tempfile.TemporaryDirectory(prefix="bitkv-diff-") as directory:
        native = run_program(directory, program)
    pure = _ask(pure_child, program)
    assert native["results"] == pure["results"]
    assert native["files"].keys() == pure["files"].keys()
    for name, data in native["files"].items():
        assert data == pure["files"][name], f"{name} differs"


needs_native = pytest.mark.skipif(bitkv.IMPLEMENTATION != "native",
                                  reason="compares native mode with pure-Python mode")


@needs_native
def test_a_fixed_program_has_the_same_results_and_bytes(pure_child):
    k = [x.hex() for x in KEYS]
    program = [["put", k[0], b"1".hex(), None], ["put", k[1], (b"v" * 2000).hex(), 1],
               ["batch", [[k[2], b"c".hex(), None, None], [k[0], None, None, None],
                          [k[3], b"d".hex(), 2.5, None], [k[4], b"e".hex(), None, -1000]]],
               ["get", k[0]], ["get", k[1]], ["get", k[2]], ["incr", k[5], 3],
               ["get_many", [k[0], k[1], k[2], k[1], *k[3:], *k]],
               ["advance", 2], ["get", k[1]], ["reopen"], ["compact"], ["get", k[3]],
               *[["put", k[i % 7], bytes([i]).hex() * 200, None] for i in range(40)],
               ["compact"], ["reopen"], ["items"], ["keys", b"key:".hex()], ["keys", ""],
               ["keys", b"\xff".hex()], ["keys", b"zz".hex()]]
    _compare(pure_child, program)


@needs_native
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(program=st.lists(OPS, min_size=1, max_size=40))
def test_random_programs_have_the_same_results_and_bytes(pure_child, program):
    _compare(pure_child, program)
