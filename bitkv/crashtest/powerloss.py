"""Power-loss crash testing: run a workload in-process on a :class:`RecordingFileIO`, then
build the disk states a power cut at chosen points of its I/O log may leave, recover each, and
check it against the oracle.

Which operations must survive a power cut at log index ``c``:

* ``sync="always"``: every operation acknowledged before ``c``. Independently of any crash
  state, every acknowledged write must also be durable *per the log* (fsynced, under a
  directory entry that was itself fsynced) before its acknowledgement.
* ``"interval"`` / ``"never"``: every operation that is durable per the log at ``c``, and every
  operation acknowledged before a ``sync()`` acknowledged before ``c``. In ``"interval"`` mode a
  pause of a few sync intervals must also leave every earlier write durable (the flusher ran).

Everything else started before ``c`` may or may not have survived.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import bitkv

from ..store import SyncMode
from .oracle import OpRecord, Oracle
from .recording import POLICIES, DiskModel, RecordingFileIO, write_state
from .verify import check_time, observe, open_store, recover
from .workload import OpClock, WorkloadConfig, execute, generate, keyspace, now_ms

STATES_PER_CYCLE = 4


class FailingRecordingFileIO(RecordingFileIO):
    """A :class:`RecordingFileIO` whose ``fail_at``-th fsync (file or directory, or an
    fdatasync) raises EIO.

    The failed call is not logged as an fsync, so the disk model never counts it as a
    durability point: what it should have made durable stays as unsynced as it was.
    """

    def __init__(self, root: str, fail_at: int) -> None:
        super().__init__(root)
        self.fail_at = fail_at
        self.fsyncs = 0
        self.failed = False
        self.armed = False  # set once the store is open (a failed open tests nothing here)

    def _fail(self) -> bool:
        with self._lock:
            if not self.armed:
                return False
            self.fsyncs += 1
            if self.fsyncs != self.fail_at:
                return False
            self.failed = True
            return True

    def fsync(self, fd: int) -> None:
        if self._fail():
            raise OSError(5, "Input/output error (injected into fsync by bitkv crashtest)")
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if self._fail():
            raise OSError(5, "Input/output error (injected into fdatasync by bitkv crashtest)")
        super().fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        if self._fail():
            raise OSError(5, "Input/output error (injected into a directory fsync by bitkv "
                             "crashtest)")
        super().fsync_dir(path)


@dataclass
class _Tracked:
    record: OpRecord
    intent_at: int
    acked_at: int | None = None
    writes: list[tuple[int, int, int]] = field(default_factory=list)  # (inode, end, event)
    durable_at: int | None = None


@dataclass
class PowerCycleResult:
    acked: int = 0
    states: int = 0
    violations: list[str] = field(default_factory=list)
    description: str = ""


class PowerLossRunner:
    def __init__(self, directory: str, *, seed: int, sync: SyncMode, ops_per_cycle: int,
                 max_segment_size: int = 64 * 1024, nkeys: int = 40,
                 states_per_cycle: int = STATES_PER_CYCLE, fsync_faults: bool = False
                 ) -> None:
        self.directory = os.path.join(directory, "powerloss")
        self.base = os.path.join(self.directory, "base")
        self.work = os.path.join(self.directory, "work")
        self.scratch = os.path.join(self.directory, "state")
        self.seed = seed
        self.sync = sync
        self.ops_per_cycle = ops_per_cycle
        self.max_segment_size = max_segment_size
        self.small_segment_size = max_segment_size
        self.nkeys = nkeys
        self.keys = keyspace(nkeys)
        self.oracle = Oracle(self.keys)
        self.next_op = 1
        self.states_per_cycle = states_per_cycle
        self.saved = 0
        # mode="powerfaults": one fsync per cycle fails (and is no durability point).
        self.fsync_faults = fsync_faults
        os.makedirs(self.base, exist_ok=True)

    # -- one cycle -----------------------------------------------------------------------------

    def cycle(self, n: int) -> PowerCycleResult:
        rng = random.Random(f"{self.seed}:powerloss:{n}")
        result = PowerCycleResult()
        violations = result.violations
        interval = 0.01
        big = rng.random() < 0.3
        segment_size = 4 * 2**20 if big else self.small_segment_size
        self.max_segment_size = segment_size
        cfg = WorkloadConfig(nkeys=self.nkeys, compact=rng.choice((0.0, 0.01, 0.03)),
                             sync_ops=self.sync != "always", huge_values=big,
                             pause=interval * 3 if self.sync == "interval" else 0.0)
        count = max(1, int(self.ops_per_cycle * rng.uniform(0.5, 1.5)))
        ops = generate(rng, self.next_op + 1, count, cfg)
        auto = rng.random() < 0.3

        _reset(self.work)
        for name in os.listdir(self.base):
            shutil.copyfile(os.path.join(self.base, name), os.path.join(self.work, name))
        io = RecordingFileIO(self.work) if not self.fsync_faults else \
            FailingRecordingFileIO(self.work, fail_at=rng.randint(
                1, 2 * count if self.sync == "always" else 12))
        clock = OpClock(self.next_op)
        tracked: dict[int, _Tracked] = {}
        barriers: list[tuple[int, int]] = []  # (ack index of a sync, last op id it covers)
        db = bitkv.open(self.work, sync=self.sync, sync_interval=interval,
                        max_segment_size=self.max_segment_size, clock=clock, fileio=io,
                        auto_compact=auto, compact_min_dead_bytes=16 * 1024,
                        compact_dead_ratio=0.3)
        last_id = self.next_op
        if isinstance(io, FailingRecordingFileIO):
            io.armed = True
        try:
            for op in ops:
                if op["kind"] == "batch" and not hasattr(db, "batch"):
                    continue
                clock.op = op["id"]
                last_id = op["id"]
                rec = self.oracle.begin(op)
                t = _Tracked(rec, io.mark("intent", op["id"]))
                tracked[op["id"]] = t
                io.current_op = op["id"]
                try:
                    res = execute(db, op)
                    if op["kind"] == "pause" and not getattr(io, "failed", False):
                        # (After a failed fsync, earlier writes may never become durable:
                        # the store must refuse writes, not make them so.)
                        self._wait_flushed(io, tracked, t, violations)
                except (OSError, bitkv.Error) as exc:
                    if not getattr(io, "failed", False):
                        raise
                    # Not acknowledged: it may or may not survive. Later operations expect
                    # what the running store shows.
                    violations += self.oracle.settle(rec, self._shown(db, rec))
                    if isinstance(exc, bitkv.ClosedError):
                        break
                    continue
                finally:
                    io.current_op = None
                t.acked_at = io.mark("ack", op["id"])
                v = self.oracle.ack(rec, res)
                result.acked += 1
                if v:
                    violations.append(v)
                if op["kind"] == "sync" or (op["kind"] == "pause"
                                            and not getattr(io, "failed", False)):
                    # A pause is a barrier only when the flusher was seen to cover it: after
                    # a failed fsync nothing is flushed any more (the store refuses writes).
                    barriers.append((t.acked_at, op["id"] - 1))
        finally:
            # Usually the process just dies; sometimes it closes the store first (a clean
            # close fsyncs and may write a checkpoint hint, which power may cut too).
            closing = rng.random() < 0.3
            if closing:
                try:
                    db.close()
                except (OSError, bitkv.Error):
                    if not getattr(io, "failed", False):
                        raise
            else:
                db._abandon()

        events = list(io.events)
        _attribute_writes(events, tracked)
        # Crash points: random indices of the log, and always its very end.
        points = sorted({*rng.sample(range(len(events)),
                                     min(self.states_per_cycle - 1, len(events))),
                         len(events)})
        at = check_time(last_id + 1)
        self.next_op = last_id + 2
        durable_points(io.initial, events, tracked)
        model = DiskModel(io.initial)
        i = 0
        chosen: dict[bytes, Any] | None = None
        for point in points:
            while i < point:
                model.apply(events[i])
                i += 1
            if self.sync == "always":
                for t in tracked.values():
                    if t.acked_at is not None and t.acked_at < point and t.writes \
                            and t.record.effects \
                            and (t.durable_at is None or t.durable_at > t.acked_at) \
                            and not t.record.extra.get("flagged"):
                        t.record.extra["flagged"] = True
                        violations.append(
                            f"op {t.record.id} ({t.record.op['kind']}) was acknowledged under "
                            f"sync='always' before its write was durable per the I/O log "
                            f"(durable at event {t.durable_at}, acknowledged at {t.acked_at})")
            policy = rng.choice(POLICIES)
            files, what = model.crash_state(rng, policy)
            desc = f"power cut at I/O event {point}/{len(events)}: {what}"
            observed, problems = self._check_state(files, at, point, tracked, barriers, rng)
            result.states += 1
            for p in problems:
                violations.append(f"{desc}: {p}")
            if problems and self.saved < 3:
                self._save_state(files, n, point)
            if observed is not None:
                # The last state that recovers becomes the base of the next cycle.
                _reset(self.base)
                for name in os.listdir(self.scratch):
                    if name != "LOCK":
                        shutil.copyfile(os.path.join(self.scratch, name),
                                        os.path.join(self.base, name))
                chosen = observed
        if chosen is not None:
            self.oracle.collapse(chosen)
        else:
            self.oracle.discard()
        result.description = f"{len(ops)} ops, {result.states} crash states" + (
            ", auto-compaction on" if auto else "") + (", 4 MiB segments" if big else "") + (
            ", closed" if closing else "") + (
            f", fsync #{io.fail_at} failed"
            if isinstance(io, FailingRecordingFileIO) and io.failed else "")
        return result

    def _shown(self, db: Any, rec: OpRecord) -> dict[bytes, Any]:
        keys = list(rec.final())
        if not keys:
            return {}
        try:
            shown, _problems = observe(db, keys, now_ms(rec.id))
        except bitkv.ClosedError:
            return {}
        return shown

    def _wait_flushed(self, io: RecordingFileIO, tracked: dict[int, _Tracked], pause: _Tracked,
                      violations: list[str]) -> None:
        """After a pause in interval mode, every earlier write must become durable soon."""
        deadline = time.monotonic() + 5.0
        while True:
            events = list(io.events)
            candidates = {k: _Tracked(t.record, t.intent_at, t.acked_at)
                          for k, t in tracked.items()
                          if t.acked_at is not None and t.record.effects}
            _attribute_writes(events, candidates)
            durable_points(io.initial, events, candidates)
            late = [t for t in candidates.values() if t.writes and t.durable_at is None]
            if not late:
                return
            if time.monotonic() > deadline:
                violations.append(f"sync='interval': op {late[0].record.id} was still not "
                                  f"fsynced 5 s after it was acknowledged")
                return
            time.sleep(0.01)

    def _check_state(self, files: dict[str, bytes], at: int, point: int,
                     tracked: dict[int, _Tracked], barriers: list[tuple[int, int]],
                     rng: random.Random) -> tuple[dict[bytes, Any] | None, list[str]]:
        _reset(self.scratch, create=False)
        write_state(self.scratch, files)
        cover = max((last for ack, last in barriers if ack < point), default=0)

        def existing(r: OpRecord) -> bool:
            return tracked[r.id].intent_at < point

        def required(r: OpRecord) -> bool:
            t = tracked[r.id]
            if t.acked_at is None or t.acked_at >= point:
                return False
            if self.sync == "always":
                return True
            return (t.durable_at is not None and t.durable_at <= point) or r.id <= cover

        crash_recovery = rng.random() < 0.3
        recorder = RecordingFileIO(self.scratch) if crash_recovery else None
        observed, problems, _stats = recover(self.scratch, self.keys, at,
                                             max_segment_size=self.max_segment_size,
                                             fileio=recorder)
        if observed is None:
            return None, problems
        problems = list(problems) + self.oracle.check(observed, at, required, existing)
        if recorder is not None and recorder.events:
            problems += self._crash_during_recovery(recorder, observed, at, rng)
        return observed, problems

    def _crash_during_recovery(self, recorder: RecordingFileIO, expected: dict[bytes, Any],
                               at: int, rng: random.Random) -> list[str]:
        """Cut the power in the middle of the recovery just done; recovering again must give
        the same state."""
        events = recorder.events
        point = rng.randint(0, len(events))
        model = DiskModel(recorder.initial)
        for ev in events[:point]:
            model.apply(ev)
        files, what = model.crash_state(rng, rng.choice(POLICIES))
        where = self.scratch + "-again"
        _reset(where, create=False)
        write_state(where, files)
        problems = []
        try:
            with open_store(where, at, max_segment_size=self.max_segment_size) as db:
                again, p = observe(db, self.keys, at)
                problems += p
        except Exception as exc:
            return [f"power cut during recovery (event {point}/{len(events)}, {what}): "
                    f"reopening failed: {type(exc).__name__}: {exc}"]
        if again != expected:
            diff = next(k for k in expected if expected[k] != again.get(k))
            problems.append(f"power cut during recovery (event {point}/{len(events)}, {what}) "
                            f"changed the recovered state: {diff!r} was {expected[diff]!r}, "
                            f"now {again.get(diff)!r}")
        shutil.rmtree(where)
        return problems

    def _save_state(self, files: dict[str, bytes], n: int, point: int) -> None:
        self.saved += 1
        where = os.path.join(os.path.dirname(self.directory),
                             f"violation-powerloss-cycle-{n}-event-{point}")
        _reset(where, create=False)
        write_state(where, files)


def _attribute_writes(events: list[Any], tracked: dict[int, _Tracked]) -> None:
    for idx, ev in enumerate(events):
        if ev[0] == "write" and ev[4] in tracked:
            tracked[ev[4]].writes.append((ev[1], ev[2] + len(ev[3]), idx))


def durable_points(initial: dict[str, bytes], events: list[Any],
                   tracked: dict[int, _Tracked]) -> None:
    """Set ``durable_at`` of each tracked operation: the first event index at which all its
    writes were fsynced under a durable directory entry (its ack index if already then)."""
    model = DiskModel(initial)
    pending: list[_Tracked] = []
    for i, ev in enumerate(events, 1):
        model.apply(ev)
        if ev[0] == "mark" and ev[1] == "ack" and ev[2] in tracked:
            t = tracked[ev[2]]
            if not t.writes:
                continue
            if all(model.is_durable(ino, end, idx) for ino, end, idx in t.writes if idx < i):
                t.durable_at = t.acked_at
            else:
                pending.append(t)
        elif ev[0] in ("fsync", "fsync_dir") and pending:
            still = []
            for t in pending:
                if all(model.is_durable(ino, end, idx) for ino, end, idx in t.writes):
                    t.durable_at = i
                else:
                    still.append(t)
            pending = still


def _reset(path: str, create: bool = True) -> None:
    if os.path.exists(path):
        shutil.rmtree(path)
    if create:
        os.makedirs(path)

