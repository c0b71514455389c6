"""Compaction killed for real: a child process compacts a store and dies by SIGKILL, either at
a named kill point of the compaction (``BITKV_KILLPOINTS``, probability 1, or 0.5 for the
per-input removal point) or at a random moment chosen by the parent. The parent reopens the
store and checks its exact logical contents: every key with its newest value and expiry, and
nothing deleted or expired visible; then that a second open, a read-only open and a further
compaction all give the same state.

The parent builds the starting store in-process (compacted segments with hints, then
deletes, overwrites and TTLs in append segments after them) and copies it for each case. The
child appends more writes, advances its clock so some TTLs expire, and compacts, writing
more keys from the progress callback. It logs every operation before ("b") and after ("e")
it runs, so the parent knows each acknowledged write and at most one in flight.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import bitkv
from bitkv import segment as seg_mod

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = 4096
T0 = 1_700_000_000.0
CHILD_TIMEOUT = 20

CHILD = textwrap.dedent("""
    import json, os, random, sys

    import bitkv

    path, log_path, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    now = float(sys.argv[4])

    class Clock:
        def __call__(self):
            return now

    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    counter = [0]

    def note(obj):
        os.write(log, (json.dumps(obj) + "\\n").encode())

    def put(k, v, ttl=None):
        i = counter[0] = counter[0] + 1
        exp = 0 if ttl is None else int(now * 1000) + round(ttl * 1000)
        note({"b": i, "op": "put", "k": k, "v": v, "exp": exp})
        db.put(k.encode(), v.encode(), ttl=ttl)
        note({"e": i})

    def delete(k):
        i = counter[0] = counter[0] + 1
        note({"b": i, "op": "del", "k": k})
        db.delete(k.encode())
        note({"e": i})

    rng = random.Random(seed)
    db = bitkv.open(path, max_segment_size=%(seg)d, auto_compact=False, sync="never",
                    clock=Clock())
    for n in range(120):
        k = "k%%03d" %% rng.randrange(400)
        r = rng.random()
        if r < 0.55:
            put(k, "c%%d-" %% n + "v" * rng.randrange(0, 70))
        elif r < 0.8:
            delete(k)
        else:
            put(k, "t%%d" %% n, ttl=rng.choice([5, 5000]))
    now += 10  # the ttl=5 records (here and in the base store) expire before the compaction
    note({"clock": now})
    calls = [0]

    def progress(done, total):
        calls[0] += 1
        if calls[0] <= 2 or done == total:  # writes racing the compaction: they must win
            for _ in range(15):
                k = "k%%03d" %% rng.randrange(400)
                if rng.random() < 0.6:
                    put(k, "p%%d-" %% calls[0] + "w" * rng.randrange(0, 50))
                else:
                    delete(k)

    print("COMPACTING", flush=True)
    summary = db.compact(progress)
    print(json.dumps(summary), flush=True)
    # What the child itself reads right after the compaction (its in-memory keydir).
    view = {}
    for k in db:
        v, left = db.get_with_ttl(k)
        view[k.decode()] = [v.decode(), left]
    print(json.dumps(view), flush=True)
    note({"mark": "compacted"})
    for n in range(20):
        put("k%%03d" %% rng.randrange(400), "after%%d" %% n)
    db._abandon()
""") % {"seg": SEG}


# -- the base store and the model ----------------------------------------------------------

class Model:
    def __init__(self) -> None:
        self.data: dict[str, tuple[str, int]] = {}
        self.universe: set[str] = set()
        self.now = T0

    def put(self, db, k: str, v: str, ttl: float | None = None) -> None:
        db.put(k.encode(), v.encode(), ttl=ttl)
        self.data[k] = (v, 0 if ttl is None else int(self.now * 1000) + round(ttl * 1000))
        self.universe.add(k)

    def delete(self, db, k: str) -> None:
        db.delete(k.encode())
        self.data.pop(k, None)
        self.universe.add(k)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _build_base(path) -> Model:
    m = Model()
    clock = Clock(T0)
    rng = random.Random(2024)
    with bitkv.open(path, max_segment_size=SEG, auto_compact=False, sync="never",
                    clock=clock) as db:
        for i in range(400):
            m.put(db, f"k{i:03d}", f"a{i:03d}-" + "x" * rng.randrange(10, 90))
        for i in range(0, 400, 5):
            m.delete(db, f"k{i:03d}")
        for i in range(1, 400, 4):
            m.put(db, f"k{i:03d}", f"b{i:03d}")
        db.compact()
        # After the compaction: deletes of keys whose only copy is compacted, rewrites of
        # deleted keys, and TTLs (ttl=5 expire during the child's run).
        for i in range(2, 400, 6):
            m.delete(db, f"k{i:03d}")
        for i in range(0, 400, 10):
            m.put(db, f"k{i:03d}", f"back{i:03d}")
        for i in range(3, 400, 7):
            m.put(db, f"k{i:03d}", f"ttl{i:03d}", ttl=5 if i % 2 else 5000)
    m.universe.update(f"k{i:03d}" for i in range(400))
    return m


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("compaction_crash")
    path = root / "base"
    model = _build_base(path)
    script = root / "child.py"
    script.write_text(CHILD)
    return path, model, script


def _replay(model: Model, log_path, until_mark: bool = False
            ) -> tuple[list[dict], float, int]:
    """Apply the child's log to the base model. Return (candidates, clock, acked): the
    acknowledged state, plus that state with the operation in flight when the child died
    (begun, not acknowledged) applied, if there was one."""
    data = dict(model.data)
    now = model.now
    pending = None
    acked = 0
    with open(log_path, "rb") as fh:
        lines = fh.read().split(b"\n")
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue  # the last line, cut by the kill
        if "mark" in obj:
            if until_mark:
                break
        elif "clock" in obj:
            now = obj["clock"]
        elif "b" in obj:
            assert pending is None, "two operations in flight"
            pending = obj
        elif "e" in obj:
            assert pending is not None and pending["b"] == obj["e"]
            _apply(data, pending)
            pending = None
            acked += 1
    candidates = [data]
    if pending is not None:
        after = dict(data)
        _apply(after, pending)
        candidates.append(after)
    return candidates, now, acked


def _apply(data: dict, op: dict) -> None:
    if op["op"] == "put":
        data[op["k"]] = (op["v"], op["exp"])
    else:
        data.pop(op["k"], None)


def _dump(db) -> dict[str, tuple[str, float | None]]:
    out = {}
    for k in db:
        got = db.get_with_ttl(k)
        assert got is not None
        out[k.decode()] = (got[0].decode(), got[1])
    return out


def _expected(data: dict, now: float) -> dict[str, tuple[str, float | None]]:
    now_ms = int(now * 1000)
    return {k: (v, None if not e else (e - now_ms) / 1000.0)
            for k, (v, e) in data.items() if not e or e > now_ms}


def _verify(path, model: Model, log_path) -> None:
    candidates, now, _acked = _replay(model, log_path)
    universe = model.universe.union(*candidates)
    clock = Clock(now)
    opts = dict(max_segment_size=SEG, auto_compact=False, sync="never", clock=clock)
    with bitkv.open(path, **opts) as db:
        assert not [n for n in os.listdir(path) if n.endswith(seg_mod.TMP_SUFFIX)]
        state = _dump(db)
        for k in sorted(universe):  # point reads agree with iteration: nothing deleted is back
            got = db.get_with_ttl(k)
            assert (got is None) == (k not in state), k
    wanted = [_expected(c, now) for c in candidates]
    assert state in wanted, _diff(state, wanted[-1])
    # Recovery is stable: a second open, a read-only open and a further compaction agree.
    with bitkv.open(path, **opts) as db:
        assert _dump(db) == state
    with bitkv.open(path, readonly=True, clock=clock) as ro:
        assert _dump(ro) == state
    with bitkv.open(path, **opts) as db:
        db.compact()
        assert _dump(db) == state
    with bitkv.open(path, **opts) as db:
        assert _dump(db) == state
        assert db.recovery_report.ignored_hints == []


def _diff(got: dict, want: dict) -> str:
    lines = []
    for k in sorted(set(got) | set(want)):
        if got.get(k) != want.get(k):
            lines.append(f"{k}: store {got.get(k)!r}, expected {want.get(k)!r}")
    return "\n".join(lines[:20])


def _run_child(base, tmp_path, env_extra: dict, seed: int, kill_after: float | None = None):
    base_path, model, script = base
    path = tmp_path / "db"
    shutil.copytree(base_path, path)
    log_path = tmp_path / "log.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BITKV_KILLPOINTS")}
    env.update(env_extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(log_path), str(seed),
                             repr(model.now)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    try:
        if kill_after is not None:
            line = proc.stdout.readline()
            assert line.startswith(b"COMPACTING"), (line, proc.stderr.read())
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return path, log_path, proc.returncode, out, err


def _summary(out: bytes) -> dict | None:
    for line in out.splitlines():
        if line.startswith(b"{"):
            return json.loads(line)
    return None


@pytest.fixture(scope="module")
def clean_run(base, tmp_path_factory):
    """The child's run without a crash: its compaction's duration scales the random kills."""
    tmp = tmp_path_factory.mktemp("clean")
    path, log_path, rc, out, err = _run_child(base, tmp, {}, seed=0)
    assert rc == 0, err.decode()
    summary_line, view_line = out.splitlines()[1:3]
    return path, log_path, json.loads(summary_line), json.loads(view_line)


def test_uncrashed_child_run(base, clean_run):
    path, log_path, summary, view = clean_run
    assert summary["segments_in"] >= 10 and summary["records_dropped"] > 0
    assert summary["keys_kept"] > 100
    # The child's own reads right after compact() returned (writes made during it won).
    (data,), now, _acked = _replay(base[1], log_path, until_mark=True)
    assert {k: tuple(v) for k, v in view.items()} == _expected(data, now)
    _verify(path, base[1], log_path)


KILL_POINTS = ["compact.outputs_written", "compact.hints_written", "compact.synced",
               "compact.renamed", "compact.dir_synced", "compact.switched",
               "compact.removed_one"]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_killed_at_a_compaction_kill_point(base, tmp_path, point):
    path, log_path, rc, out, err = _run_child(base, tmp_path,
                                              {"BITKV_KILLPOINTS": f"{point}=1"}, seed=1)
    assert rc == -signal.SIGKILL, (rc, err.decode())
    assert _summary(out) is None  # it died inside compact()
    _verify(path, base[1], log_path)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_after_a_random_number_of_input_removals(base, tmp_path, seed):
    path, log_path, rc, _out, err = _run_child(
        base, tmp_path, {"BITKV_KILLPOINTS": "compact.removed_one=0.3",
                         "BITKV_KILLPOINTS_SEED": str(seed)}, seed=seed)
    assert rc in (0, -signal.SIGKILL), err.decode()
    _verify(path, base[1], log_path)


@pytest.mark.parametrize("seed", range(6))
def test_sigkill_at_a_random_moment_during_compaction(base, clean_run, tmp_path, seed):
    seconds = clean_run[2]["seconds"]
    delay = random.Random(seed).uniform(0, seconds * 1.3)
    path, log_path, rc, _out, err = _run_child(base, tmp_path, {}, seed=100 + seed,
                                               kill_after=delay)
    assert rc in (0, -signal.SIGKILL), err.decode()
    _verify(path, base[1], log_path)
