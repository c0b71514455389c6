"""Process-kill crash testing: blackbox SIGKILL at random moments, and whitebox kill points.

Each cycle starts a worker process on the same store, follows its intent/ack messages, kills it
(the parent's SIGKILL, or the worker's own kill point), then reopens the store in the parent and
checks it against the oracle. Some cycles first append a torn record (or an uncommitted batch)
to the newest segment, as a write cut short by a crash leaves it, so that the worker's own
recovery has work to do and can itself be killed.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .. import killpoints, record
from .. import segment as seg_mod
from ..store import SyncMode
from .oracle import OpRecord, Oracle
from .values import make_value
from .verify import check_time, recover
from .workload import Op, WorkloadConfig, generate, keyspace

WORKER_TIMEOUT = 120.0


@dataclass
class KillPlan:
    kind: str              # "open" | "op" | "compact" | "timer" | "none"
    op_index: int = 0      # for "op"/"compact": the index into the cycle's ops
    delay: float = 0.0     # seconds after the trigger
    description: str = ""


@dataclass
class CycleResult:
    acked: int = 0
    violations: list[str] = field(default_factory=list)
    description: str = ""


def _busy_sleep(seconds: float) -> None:
    if seconds <= 0:
        return
    if seconds > 0.002:
        time.sleep(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def choose_plan(rng: random.Random, ops: list[Op]) -> KillPlan:
    compacts = [i for i, op in enumerate(ops) if op["kind"] == "compact"]
    r = rng.random()
    if r < 0.12:
        return KillPlan("open", delay=rng.uniform(0, 0.004),
                        description="kill while the worker opens (recovers) the store")
    if r < 0.30 and compacts:
        i = rng.choice(compacts)
        return KillPlan("compact", op_index=i, delay=rng.uniform(0, 0.008),
                        description=f"kill during compaction (op {ops[i]['id']})")
    if r < 0.40:
        return KillPlan("timer", delay=rng.uniform(0, 0.25),
                        description="kill at a random time after the store is open")
    if r < 0.46:
        return KillPlan("close", delay=rng.uniform(0, 0.003),
                        description="kill while the worker closes the store")
    if r < 0.50:
        return KillPlan("none", description="no kill: the worker closes the store")
    i = rng.randrange(len(ops)) if ops else 0
    return KillPlan("op", op_index=i, delay=rng.choice((0.0, rng.uniform(0, 0.0003))),
                    description=f"kill once op {ops[i]['id'] if ops else '-'} has started")


def choose_killpoints(rng: random.Random, ops_count: int) -> tuple[str, str]:
    """A BITKV_KILLPOINTS spec for one whitebox cycle, and a description."""
    point = rng.choice((*killpoints.POINTS, "*"))
    if point.startswith("append."):
        prob = rng.uniform(0.3, 3.0) / max(1, ops_count)
    elif point == "*":
        prob = rng.uniform(0.2, 2.0) / max(1, ops_count)
    elif point.startswith("recovery."):
        prob = 1.0
    else:
        prob = rng.choice((1.0, 0.5, 0.25))
    return f"{point}={prob:.6f}", f"kill point {point} with probability {prob:.4f}"


def newest_append_segment(store: str) -> str | None:
    """The segment recovery treats as the newest (last in load order), if it is an append one."""
    best: tuple[tuple[int, int], str, int] | None = None
    for name in os.listdir(store):
        sid = seg_mod.parse_id(name, seg_mod.DATA_SUFFIX)
        if sid is None:
            continue
        path = os.path.join(store, name)
        try:
            with open(path, "rb") as fh:
                header = seg_mod.decode_header(fh.read(seg_mod.HEADER_SIZE))
        except (OSError, ValueError):
            continue
        order = (header.order_seq, sid)
        if best is None or order > best[0]:
            best = (order, path, header.kind)
    if best is None or best[2] != seg_mod.KIND_APPEND:
        return None
    return best[1]


def next_seq_of(path: str) -> int:
    """The seq the next write to segment ``path`` would get (its highest seq + 1)."""
    with open(path, "rb") as fh:
        buf = fh.read()
    seqs = [r.seq for r in record.scan(buf, seg_mod.HEADER_SIZE)
            if isinstance(r, record.ScannedRecord)]
    try:
        first = seg_mod.decode_header(buf[: seg_mod.HEADER_SIZE]).order_seq
    except ValueError:
        first = 1
    return max([first, *seqs]) + 1


def torn_tail(rng: random.Random, keys: list[bytes], serial: int, seq: int
              ) -> tuple[bytes, str]:
    """Bytes a write cut short by a crash may leave: never a whole, committed record.

    ``seq`` is the seq the cut write would have carried (the segment's next one), as in a
    real torn append.
    """
    kind = rng.choice(("record", "record", "batch", "zeros", "garbage"))
    key = rng.choice(keys)
    if kind == "record":
        data = record.encode(key, make_value(key, f"torn{serial}", rng.randint(0, 3000)), seq)
        cut = rng.randint(1, len(data) - 1)
        return data[:cut], f"torn record ({cut} of {len(data)} bytes)"
    if kind == "batch":
        parts = []
        n = rng.randint(2, 4)
        for i in range(n):
            k = rng.choice(keys)
            flags = record.BATCH | (record.BATCH_FIRST if i == 0 else 0) | (
                record.BATCH_LAST if i == n - 1 else 0)
            parts.append(record.encode(k, make_value(k, f"torn{serial}.{i}", rng.randint(0, 300)),
                                       seq + i, 0, flags))
        whole = b"".join(parts)
        cut = rng.randint(len(whole) - len(parts[-1]), len(whole) - 1)
        return whole[:cut], f"uncommitted batch ({n} records, cut at {cut} of {len(whole)})"
    n = rng.randint(1, 700)
    if kind == "zeros":
        return bytes(n), f"{n} zero bytes"
    return rng.randbytes(n), f"{n} garbage bytes"


class KillRunner:
    def __init__(self, directory: str, *, mode: str, seed: int, sync: SyncMode, ops_per_cycle: int,
                 max_segment_size: int = 64 * 1024, nkeys: int = 40) -> None:
        self.directory = directory
        self.store = os.path.join(directory, "store")
        self.mode = mode
        self.seed = seed
        self.sync = sync
        self.ops_per_cycle = ops_per_cycle
        self.max_segment_size = max_segment_size
        self.small_segment_size = max_segment_size
        self.keys = keyspace(nkeys)
        self.nkeys = nkeys
        self.oracle = Oracle(self.keys)
        self.next_op = 1
        self.saved = 0

    def _worker_env(self, killpoint_spec: str | None, kp_seed: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BITKV_KILLPOINTS")}
        import bitkv

        root = os.path.dirname(os.path.dirname(os.path.abspath(bitkv.__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        if killpoint_spec:
            env["BITKV_KILLPOINTS"] = killpoint_spec
            env["BITKV_KILLPOINTS_SEED"] = str(kp_seed)
        return env

    def cycle(self, n: int) -> CycleResult:
        rng = random.Random(f"{self.seed}:{self.mode}:{n}")
        result = CycleResult()
        # Mostly small segments (rotation, compaction); sometimes big ones, so the active
        # segment grows past the size at which a clean close writes a checkpoint hint.
        big = rng.random() < 0.3
        self.max_segment_size = 4 * 2**20 if big else self.small_segment_size
        cfg = WorkloadConfig(nkeys=self.nkeys, compact=rng.choice((0.0, 0.01, 0.03)),
                             sync_ops=self.sync != "always", huge_values=big)
        count = max(1, int(self.ops_per_cycle * rng.uniform(0.5, 1.5)))
        ops = generate(rng, self.next_op + 1, count, cfg)
        by_id = {op["id"]: op for op in ops}
        notes = []
        spec = None
        if self.mode == "whitebox":
            spec, what = choose_killpoints(rng, count)
            plan = KillPlan("none", description=what)
        else:
            plan = choose_plan(rng, ops)
        inject = os.path.isdir(self.store) and (
            rng.random() < 0.2 or (spec is not None and spec.startswith("recovery.")))
        if inject:
            seg = newest_append_segment(self.store)
            if seg is not None:
                data, what = torn_tail(rng, self.keys, n, next_seq_of(seg))
                with open(seg, "ab") as fh:
                    fh.write(data)
                notes.append(f"{what} appended to {os.path.basename(seg)}")
        auto = rng.random() < 0.5
        config = {
            "dir": self.store, "sync": self.sync,
            "sync_interval": rng.choice((0.005, 0.05, 1.0)),
            "max_segment_size": self.max_segment_size, "auto_compact": auto,
            "compact_min_dead_bytes": rng.choice((16 * 1024, 64 * 1024, 1 << 24)),
            "compact_dead_ratio": rng.choice((0.2, 0.5)),
            "start_op": self.next_op, "ops": ops,
        }
        notes.append(plan.description)
        if auto:
            notes.append("auto-compaction on")
        result.description = "; ".join(notes)
        last_id = self.next_op
        violations = result.violations
        records: dict[int, OpRecord] = {}

        rfd, wfd = os.pipe()
        env = self._worker_env(spec, rng.getrandbits(32))
        proc = subprocess.Popen(
            [sys.executable, "-m", "bitkv.crashtest.worker", str(wfd)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(wfd,), env=env, cwd=self.directory)
        os.close(wfd)
        assert proc.stdin is not None
        try:
            proc.stdin.write(json.dumps(config).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        os.set_blocking(rfd, False)
        sel = selectors.DefaultSelector()
        sel.register(rfd, selectors.EVENT_READ)
        buf = b""
        killed = False
        started = time.monotonic()
        trigger_at: float | None = None
        eof = False
        errors: list[str] = []

        def handle(line: str) -> None:
            nonlocal trigger_at, last_id
            tag, _, rest = line.partition(" ")
            if (tag == "O" and plan.kind == "open") or (tag == "D" and plan.kind == "close") \
                    or (tag == "R" and plan.kind == "timer"):
                trigger_at = time.monotonic() + plan.delay
            elif tag == "I":
                op_id = int(rest)
                last_id = max(last_id, op_id)
                records[op_id] = self.oracle.begin(by_id[op_id])
                if plan.kind in ("op", "compact") and ops and op_id == ops[plan.op_index]["id"]:
                    trigger_at = time.monotonic() + plan.delay
            elif tag == "A":
                sid, _, payload = rest.partition(" ")
                rec = records[int(sid)]
                v = self.oracle.ack(rec, json.loads(payload))
                result.acked += 1
                if v:
                    violations.append(v)
            elif tag == "X":
                info = json.loads(rest)
                errors.append(f"worker raised during op {info['op']}: {info['error']}")

        while not eof:
            timeout = 0.05
            if trigger_at is not None and not killed:
                timeout = max(0.0, trigger_at - time.monotonic())
                if timeout <= 0.002:
                    _busy_sleep(timeout)
                    proc.send_signal(signal.SIGKILL)
                    killed = True
                    trigger_at = None
                    continue
            for _key, _ev in sel.select(timeout):
                try:
                    chunk = os.read(rfd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    eof = True
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    handle(line.decode())
            if time.monotonic() - started > WORKER_TIMEOUT and not killed:
                proc.send_signal(signal.SIGKILL)
                killed = True
                violations.append(f"the worker hung for {WORKER_TIMEOUT:.0f} s")
        sel.close()
        os.close(rfd)
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        code = proc.wait()
        if errors:
            violations.extend(errors)
        elif code not in (0, -signal.SIGKILL):
            violations.append(f"the worker exited with status {code}: {stderr[-2000:]}")
        if code == -signal.SIGKILL and not killed:
            result.description += " (worker hit its kill point)"
        if code == -signal.SIGKILL:
            in_flight = [r for r in records.values() if not r.acked]
            if in_flight:
                r = in_flight[-1]
                result.description += f" [died during {r.op['kind']} op {r.id}]"
            elif not records:
                result.description += " [died before its first operation]"
            else:
                result.description += " [died between operations]"
        elif code == 0:
            result.description += " [the worker finished and closed the store]"

        at = last_id + 1
        self.next_op = at + 1
        snapshot = self._snapshot() if self.saved < 3 else None
        observed, problems, _stats = recover(self.store, self.keys, check_time(at),
                                            max_segment_size=self.max_segment_size)
        violations.extend(problems)
        if observed is not None:
            violations.extend(self.oracle.check(observed, check_time(at),
                                                required=lambda r: r.acked))
            self.oracle.collapse(observed)
        if violations and snapshot is not None:
            self._save(snapshot, n)
        if observed is None:
            raise FatalError(violations)
        return result

    def _snapshot(self) -> dict[str, bytes] | None:
        if not os.path.isdir(self.store):
            return None
        out = {}
        for name in os.listdir(self.store):
            with open(os.path.join(self.store, name), "rb") as fh:
                out[name] = fh.read()
        return out

    def _save(self, snapshot: dict[str, bytes] | None, n: int) -> None:
        if snapshot is None:
            return
        self.saved += 1
        where = os.path.join(self.directory, f"violation-cycle-{n}")
        os.makedirs(where, exist_ok=True)
        for name, data in snapshot.items():
            with open(os.path.join(where, name), "wb") as fh:
                fh.write(data)


class FatalError(Exception):
    """The store cannot be reopened after a crash; the run stops (``violations`` say why)."""

    def __init__(self, violations: list[str]) -> None:
        super().__init__("the store cannot be opened any more")
        self.violations = violations
