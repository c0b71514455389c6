"""Fault-injection crash testing (``mode="faults"``): file operations that fail, and files
damaged between runs.

Each cycle is one of two kinds.

**An I/O fault.** The workload runs in-process on a :class:`FaultyFileIO` passed through the
public ``fileio=`` seam. At a random point one class of file operation (``write``, ``fsync``,
``fsync_dir``, ``rename``, ``truncate``, ``create``, ``unlink``) starts failing with EIO or
ENOSPC: once, or on every later call (a full disk). The ``write`` class is ``write``,
``pwrite`` and the active segment's preallocation (``posix_fallocate``); ``fsync`` includes
``fdatasync``. A failing write may first write part of its data (a short write); the
``truncate`` class is a short write whose undo (ftruncate) fails too. Workloads rotate small
segments, compact, sync, batch, delete, expire and sometimes close and reopen the store, so the
fault lands in every phase. After the fault the workload goes on: each operation either raises
or is acknowledged. Then the store is closed (errors allowed), reopened with a plain FileIO and
checked against the oracle. The promises checked:

* No power is lost, so under every sync mode every acknowledged write survives the reopen, no
  deleted key returns and no older value reappears; an operation that raised may or may not
  have been applied (but the running store must show it wholly applied or not at all).
* fsyncgate: once an fsync (of a file or of the directory) has failed, in any phase
  (a commit, rotation, segment creation, compaction, a hint, close, the interval flusher), no
  write, ``sync()`` or ``compact()`` may be acknowledged until the store is reopened: the
  failed fsync may have dropped dirty pages, so a later fsync that succeeds proves nothing.
* Only :class:`OSError` and :class:`bitkv.Error` may escape; an AssertionError or a TypeError
  means the engine lost track of its own state.

**A file fault**, applied to the closed store: a sealed segment deleted; a segment truncated
(sometimes into its 40-byte header); a segment copied under a higher id (sometimes with one
byte damaged); ``LOCK`` removed and recreated while a writer holds it, and a second writer
started in a subprocess. A missing or truncated segment that held live data must make the
next open (writable or read-only) raise :class:`bitkv.CorruptionError` naming the file, and
:func:`bitkv.check` must call the store unhealthy. A duplicated segment must never bring an
old value back. Two writers must never both acknowledge writes. Destructive faults are undone
from a copy of the store taken before them, so cycles go on.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import bitkv

from .. import segment as seg_mod
from ..errors import ClosedError, CorruptionError, Error
from ..fileio import FileIO
from ..keydir import unpack
from ..lock import LOCK_NAME
from ..store import SyncMode
from .oracle import OpRecord, Oracle
from .verify import check_time, observe, open_store, recover
from .workload import Op, OpClock, WorkloadConfig, execute, generate, keyspace, now_ms

IO_FAULTS = ("write", "fsync", "fsync_dir", "rename", "truncate", "create", "unlink")
FILE_FAULTS = ("missing-segment", "truncated-segment", "duplicate-segment", "replaced-lock")
FAULT_CLASSES = IO_FAULTS + FILE_FAULTS
# Weights of the I/O classes when all are chosen from: fsync failures are the most varied
# (every phase has one), renames and unlinks happen only in compaction and hints.
_IO_WEIGHTS = {"write": 3, "fsync": 4, "fsync_dir": 2, "rename": 1, "truncate": 2,
               "create": 1, "unlink": 1}
FILE_FAULT_RATE = 0.2      # share of cycles given to file faults when both kinds are allowed
SYNC_CLASSES = ("fsync", "fsync_dir")
SYNC_INTERVAL = 0.01


class InjectedFault(OSError):
    """The OSError :class:`FaultyFileIO` raises (a subclass, so it can be told from a real
    one in a traceback; the engine must treat it like any OSError)."""


@dataclass
class FaultPlan:
    """Which calls fail: after ``skip`` calls of ``op_class`` pass, the next one fails with
    ``err``; with ``persistent``, so does every later one."""

    op_class: str
    err: int = errno.EIO
    skip: int = 0
    persistent: bool = False
    short: bool = False        # writes: write part of the data, then fail

    def describe(self) -> str:
        what = "short write + failing ftruncate" if self.op_class == "truncate" else (
            "short " + self.op_class if self.short else self.op_class)
        return (f"{what} fails with {errno.errorcode.get(self.err, self.err)}"
                + (" persistently" if self.persistent else " once")
                + (f" after {self.skip} good call(s)" if self.skip else ""))


@dataclass
class Fired:
    """One injected failure."""

    op_class: str
    err: int
    phase: str
    started: int            # FaultyFileIO.ops_started when it fired
    epoch: int              # FaultyFileIO.epoch (bumped at every open)
    thread: int
    when: float = 0.0       # time.monotonic() when it fired

    def describe(self) -> str:
        return f"{self.op_class} {errno.errorcode.get(self.err, self.err)} in {self.phase}"


# How long after a background thread's fsync failed a write may still race it (the failing
# thread needs the GIL to mark the store failed; a writer may hold it for a switch interval
# and more on a loaded machine). Beyond this, an acknowledged write is an fsyncgate violation.
BACKGROUND_NOTICE_SECONDS = 0.5


def _reports_sync_failure(db: object) -> bool:
    """Whether the store already says an fsync failed (it must then refuse writes)."""
    try:
        return bool(getattr(db, "last_sync_error", None))
    except Exception:
        return False


# Engine functions that name the phase a file operation belongs to, innermost first wins.
# Module-level matches (compaction, recovery, sealing) cover every function in them.
_PHASE_FUNCS = {
    "undo": "undo of a failed write",
    "new_segment": "new segment creation",
    "rotate": "rotation",
    "seal_for_open": "sealing a crashed segment",
    "commit_manifest": "MANIFEST commit",
    "sync_for_close": "close",
    "_write_checkpoint_hint": "checkpoint hint at close",
    "_flush_once": "interval flusher",
    "close": "close",
    "sync": "sync()",
    "_commit_batch": "batch commit",
    "wait_durable": "commit fsync",
    "put": "put",
    "append": "append",
}
_PHASE_MODULES = {"compaction.py": "compaction", "recovery.py": "open/recovery",
                  "sealing.py": "sealed-segment hint", "lock.py": "open/lock",
                  "codec.py": "open/codec"}


def current_phase(depth: int = 2) -> str:
    """Describe where in the engine the caller's caller is: 'fsync in rotation < put'."""
    labels: list[str] = []
    frame = sys._getframe(depth)
    engine = False
    while frame is not None:
        code = frame.f_code
        base = os.path.basename(code.co_filename)
        if os.path.basename(os.path.dirname(code.co_filename)) == "crashtest":
            if engine:
                break  # back in the harness: the engine's part of the stack is done
            frame = frame.f_back  # type: ignore[assignment]
            continue
        engine = True
        label = _PHASE_MODULES.get(base) or (
            _PHASE_FUNCS.get(code.co_name) if base in ("store.py", "log.py") else None)
        if label and label not in labels:
            labels.append(label)
        frame = frame.f_back  # type: ignore[assignment]
    return " < ".join(labels[:3]) or "unknown"


class FaultyFileIO(FileIO):
    """A :class:`FileIO` that fails calls as :meth:`arm` plans, and records what it did.

    The harness sets ``ops_started`` (a counter of workload operations begun) and bumps
    ``epoch`` at every open, so each injected failure says which operations came after it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.plan: FaultPlan | None = None
        self._skip = 0
        self._truncate_armed = False
        self.fired: list[Fired] = []
        self.calls: Counter[str] = Counter()
        self.ops_started = 0
        self.epoch = 0

    def arm(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._skip = plan.skip

    def disarm(self) -> None:
        with self._lock:
            self.plan = None
            self._truncate_armed = False

    def sync_failure(self, epoch: int) -> Fired | None:
        """The first failed fsync or directory fsync since the open of ``epoch``."""
        with self._lock:
            return next((f for f in self.fired
                         if f.op_class in SYNC_CLASSES and f.epoch == epoch), None)

    def _check(self, op_class: str) -> tuple[int, bool] | None:
        """Count a call; return (errno, short) if it must fail."""
        with self._lock:
            self.calls[op_class] += 1
            plan = self.plan
            if plan is None:
                return None
            if plan.op_class == "truncate":
                # A short write whose undo (ftruncate) fails too: the write fires first,
                # then the next truncate; persistent, both keep failing from then on.
                if op_class == "truncate" and self._truncate_armed:
                    if not plan.persistent:
                        self.plan = None
                    return self._fire(op_class, plan.err, False)
                if op_class != "write" or (self._truncate_armed and not plan.persistent):
                    return None
                if self._skip > 0:
                    self._skip -= 1
                    return None
                self._truncate_armed = True
                return self._fire(op_class, plan.err, True)
            if op_class != plan.op_class:
                return None
            if self._skip > 0:
                self._skip -= 1
                return None
            if not plan.persistent:
                self.plan = None
            return self._fire(op_class, plan.err, plan.short)

    def _fire(self, op_class: str, err: int, short: bool) -> tuple[int, bool]:
        self.fired.append(Fired(op_class, err, current_phase(4), self.ops_started, self.epoch,
                                threading.get_ident(), time.monotonic()))
        return err, short

    @staticmethod
    def _raise(err: int, what: str) -> None:
        raise InjectedFault(err, f"{os.strerror(err)} (injected into {what} by bitkv crashtest)")

    # -- FileIO --------------------------------------------------------------------------------

    def write(self, fd: int, data: bytes) -> None:
        fault = self._check("write")
        if fault is None:
            super().write(fd, data)
            return
        err, short = fault
        if short and len(data) > 1:
            # Part of the data reaches the file (and moves the file position), as a disk
            # filling up mid-write does; then the error.
            os.write(fd, bytes(data[: max(1, len(data) // 2)]))
        self._raise(err, "write")

    def pwrite(self, fd: int, data: bytes, offset: int) -> None:
        # The write class: appends with sync="always" pwrite into preallocated room.
        fault = self._check("write")
        if fault is None:
            super().pwrite(fd, data, offset)
            return
        err, short = fault
        if short and len(data) > 1:
            os.pwrite(fd, bytes(data[: max(1, len(data) // 2)]), offset)
        self._raise(err, "pwrite")

    def allocate(self, fd: int, offset: int, length: int) -> None:
        # The write class too: a full disk refuses the preallocation before any record
        # byte is written (map writes themselves cannot fail once their room is allocated).
        fault = self._check("write")
        if fault is not None:
            self._raise(fault[0], "posix_fallocate")
        super().allocate(fd, offset, length)

    def fdatasync(self, fd: int) -> None:
        fault = self._check("fsync")
        if fault is not None:
            self._raise(fault[0], "fdatasync")
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        fault = self._check("fsync")
        if fault is not None:
            # Nothing is lost here (no power cut): the page cache still holds the data. A
            # real kernel may have dropped it, which is why the store must stop writing.
            self._raise(fault[0], "fsync")
        super().fsync(fd)

    def fsync_dir(self, path: str) -> None:
        fault = self._check("fsync_dir")
        if fault is not None:
            self._raise(fault[0], "fsync of the directory")
        super().fsync_dir(path)

    def truncate(self, fd: int, size: int) -> None:
        fault = self._check("truncate")
        if fault is not None:
            self._raise(fault[0], "ftruncate")
        super().truncate(fd, size)

    def rename(self, src: str, dst: str) -> None:
        fault = self._check("rename")
        if fault is not None:
            self._raise(fault[0], "rename")
        super().rename(src, dst)

    def create(self, path: str) -> int:
        fault = self._check("create")
        if fault is not None:
            self._raise(fault[0], "create")
        return super().create(path)

    def unlink(self, path: str) -> None:
        fault = self._check("unlink")
        if fault is not None:
            self._raise(fault[0], "unlink")
        super().unlink(path)


@dataclass
class FaultCycleResult:
    acked: int = 0
    violations: list[str] = field(default_factory=list)
    description: str = ""


# Results of operations that put something on disk or claim durability; acknowledging one
# after a failed fsync breaks the fsyncgate rule.
def _writes(op: Op, result: Any) -> bool:
    kind = op["kind"]
    if kind in ("put", "batch", "sync", "compact"):
        return True
    return kind in ("delete", "expire", "persist") and result is True


def _segments(path: str) -> list[str]:
    return [seg_mod.data_name(i) for i in seg_mod.list_segment_ids(os.listdir(path))]


def _copy_store(src: str, dst: str) -> None:
    if os.path.exists(dst):
        shutil.rmtree(dst)
    os.makedirs(dst)
    for name in os.listdir(src):
        if name != LOCK_NAME and os.path.isfile(os.path.join(src, name)):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))


def live_extents(path: str, at_ms: int) -> dict[str, list[tuple[int, int]]]:
    """Segment file name -> (start, end) of every record the store's index points at.

    Asked of the engine's own index (a read-only open), not re-derived: which bytes are live
    is recovery's business, and the harness only needs to know which damage must be caught.
    """
    out: dict[str, list[tuple[int, int]]] = {}
    with open_store(path, at_ms, readonly=True) as db:
        for _key, entry in list(db._entries.items()):
            slot, offset, _hint = unpack(entry)
            seg = db._keydir.slots[slot]
            if seg is None:
                continue
            size = db._keydir.record_size(entry)
            out.setdefault(os.path.basename(seg.path), []).append((offset, offset + size))
    return out


_SECOND_WRITER = r"""
import json, sys
import bitkv
path, n = sys.argv[1], int(sys.argv[2])
try:
    db = bitkv.open(path, sync="always", auto_compact=False)
except bitkv.Error as exc:
    print(json.dumps({"opened": False, "error": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
acked = []
error = None
for i in range(n):
    key = b"lock-b-%d" % i
    try:
        db.put(key, b"from the second writer %d" % i)
        acked.append(i)
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        break
try:
    db.close()
except Exception:
    pass
print(json.dumps({"opened": True, "acked": acked, "error": error}))
"""


class FaultRunner:
    """Runs ``mode="faults"`` cycles on one store; see the module doc."""

    def __init__(self, directory: str, *, seed: int, sync: SyncMode, ops_per_cycle: int,
                 nkeys: int = 40, faults: Sequence[str] | None = None) -> None:
        self.directory = os.path.join(directory, "faults")
        self.path = os.path.join(self.directory, "store")
        self.backup = os.path.join(self.directory, "backup")
        self.seed = seed
        self.sync = sync
        self.ops_per_cycle = ops_per_cycle
        self.nkeys = nkeys
        self.keys = keyspace(nkeys)
        self.oracle = Oracle(self.keys)
        self.next_op = 1
        chosen = tuple(faults) if faults else FAULT_CLASSES
        unknown = [f for f in chosen if f not in FAULT_CLASSES]
        if unknown:
            raise ValueError(f"unknown fault class(es) {unknown!r}; known: "
                             + ", ".join(FAULT_CLASSES))
        self.io_faults = [f for f in chosen if f in IO_FAULTS]
        self.file_faults = [f for f in chosen if f in FILE_FAULTS]
        self.segment_size = 8192
        self.fired: Counter[str] = Counter()    # phase -> injected failures, for the summary
        os.makedirs(self.directory, exist_ok=True)

    # -- one cycle -----------------------------------------------------------------------------

    def cycle(self, n: int) -> FaultCycleResult:
        rng = random.Random(f"{self.seed}:faults:{n}")
        result = FaultCycleResult()
        file_fault: str | None = None
        has_segments = os.path.isdir(self.path) and len(_segments(self.path)) >= 1
        # With file faults only, every other cycle (on average) is a plain workload, so the
        # store keeps changing between faults.
        rate = FILE_FAULT_RATE if self.io_faults else 0.5
        if self.file_faults and has_segments and rng.random() < rate:
            file_fault = rng.choice(self.file_faults)
        if os.path.isdir(self.path):
            _copy_store(self.path, self.backup)   # the last verified state: undo point
        elif os.path.exists(self.backup):
            shutil.rmtree(self.backup)
        notes: list[str] = []
        if file_fault is not None:
            desc, found = self._file_fault(file_fault, rng)
            notes.append(desc)
            result.violations += found
            if file_fault != "duplicate-segment":
                result.description = desc
                return result
        plan = None
        if file_fault is None and self.io_faults:
            plan = self._plan(rng)
        desc, acked, found = self._workload(rng, plan, tolerate_corruption=file_fault is not None)
        notes.append(desc)
        result.acked = acked
        result.violations += found
        result.description = "; ".join(notes)
        return result

    def _plan(self, rng: random.Random) -> FaultPlan:
        classes = self.io_faults
        op_class = rng.choices(classes, [_IO_WEIGHTS[c] for c in classes])[0]
        return FaultPlan(op_class, err=rng.choice((errno.EIO, errno.ENOSPC)),
                         skip=rng.choice((0, 0, 0, 1, 2, 3)),
                         persistent=rng.random() < 0.3,
                         short=op_class == "write" and rng.random() < 0.5)

    # -- the workload under an I/O fault -------------------------------------------------------

    def _open(self, io: FileIO, clock: OpClock, auto: bool) -> Any:
        return bitkv.open(self.path, sync=self.sync, sync_interval=SYNC_INTERVAL,
                          max_segment_size=self.segment_size, clock=clock, fileio=io,
                          auto_compact=auto, compact_min_dead_bytes=8 * 1024,
                          compact_dead_ratio=0.3)

    def _workload(self, rng: random.Random, plan: FaultPlan | None, *,
                  tolerate_corruption: bool) -> tuple[str, int, list[str]]:
        violations: list[str] = []
        self.segment_size = rng.choice((4096, 8192, 32768))
        cfg = WorkloadConfig(nkeys=self.nkeys, compact=rng.choice((0.02, 0.05)),
                             sync_ops=True, big_values=True,
                             pause=SYNC_INTERVAL * 3 if self.sync == "interval" else 0.0)
        count = max(1, int(self.ops_per_cycle * rng.uniform(0.5, 1.5)))
        ops = generate(rng, self.next_op + 1, count, cfg)
        for op in ops:
            if rng.random() < 0.015:  # close and reopen mid-cycle: faults in close and open
                for k in list(op):
                    if k != "id":
                        del op[k]
                op["kind"] = "reopen"
        auto = rng.random() < 0.3
        arm_at = -1
        if plan is not None:
            compacts = [i for i, op in enumerate(ops) if op["kind"] == "compact"]
            if compacts and rng.random() < 0.4:
                arm_at = rng.choice(compacts)      # aim at compaction's many steps
            elif rng.random() < 0.05:
                arm_at = -2                        # during the first open
            else:
                arm_at = rng.randrange(len(ops))
        io = FaultyFileIO()
        clock = OpClock(self.next_op)
        last_id = self.next_op
        acked = 0
        if arm_at == -2 and plan is not None:
            io.arm(plan)
        db = self._open_tolerant(io, clock, auto, violations, tolerate_corruption)
        gate: list[tuple[int, str]] = []  # operations acknowledged after a failed fsync
        gate_fault = ""
        for i, op in enumerate(ops):
            if db is None:
                break
            if i == arm_at and plan is not None:
                io.arm(plan)
            clock.op = op["id"]
            last_id = op["id"]
            io.ops_started += 1
            started = io.ops_started
            if op["kind"] == "reopen":
                violations += self._close(db, "mid-cycle close")
                io.epoch += 1
                db = self._open_tolerant(io, clock, auto, violations, False)
                continue
            rec = self.oracle.begin(op)
            epoch = io.epoch
            began = time.monotonic()
            known = _reports_sync_failure(db)
            try:
                res = execute(db, op)
            except (OSError, Error) as exc:
                if not io.fired and not isinstance(exc, ClosedError):
                    violations.append(f"op {op['id']} ({op['kind']}) raised "
                                      f"{type(exc).__name__}: {exc} with no fault injected")
                violations += self._settle(db, rec)
                continue
            except Exception as exc:
                violations.append(f"op {op['id']} ({op['kind']}) raised "
                                  f"{type(exc).__name__}: {exc!r} (only OSError and "
                                  "bitkv.Error may escape)")
                violations += self._settle(db, rec)
                continue
            acked += 1
            v = self.oracle.ack(rec, res)
            if v:
                violations.append(v)
            failed = io.sync_failure(epoch)
            if failed is not None and _writes(op, res) and (
                    (failed.thread == threading.get_ident() and failed.started <= started)
                    or (failed.started < started and (
                        known or began - failed.when > BACKGROUND_NOTICE_SECONDS))):
                # A failure on this thread counts from the operation that met it. One in a
                # background thread (flusher, hints, compaction) counts once the store could
                # have learnt of it: it reported it, or it is older than the grace period (a
                # write racing the failing thread may rightly finish first).
                gate.append((op["id"], op["kind"]))
                gate_fault = gate_fault or failed.describe()
        if gate:
            # One line for all of them: they share one cause.
            kinds = Counter("sync()" if k == "sync" else "compact()" if k == "compact"
                            else "writes" for _i, k in gate)
            counts = ", ".join(f"{kinds[k]} {k}" for k in ("writes", "sync()", "compact()")
                               if kinds[k])
            violations.insert(0, f"fsyncgate: {counts} acknowledged after a failed "
                                 f"{gate_fault} without a reopen (first: op {gate[0][0]} "
                                 f"{gate[0][1]}); the store must refuse them")
        if db is not None:
            note = ""
            try:
                note = db.last_sync_error or ""
            except Exception:
                pass
            violations += self._close(db, "closing at the end of the cycle")
        else:
            note = ""
        io.disarm()
        for f in io.fired:
            self.fired[f"{f.op_class} in {f.phase}"] += 1
        at = check_time(last_id + 1)
        self.next_op = last_id + 2
        observed, problems, _stats = recover(self.path, self.keys, at,
                                             max_segment_size=self.segment_size)
        violations += problems
        if observed is None:
            # Unrecoverable: go back to the copy taken before this cycle (and its oracle).
            self._restore()
            self.oracle.discard()
        else:
            violations += self.oracle.check(observed, at, lambda r: r.acked)
            self.oracle.collapse(observed)
        fired = io.fired[0].describe() if io.fired else "never fired"
        more = f" (+{len(io.fired) - 1} more)" if len(io.fired) > 1 else ""
        desc = (f"{len(ops)} ops, {self.segment_size} B segments"
                + (", auto-compaction" if auto else "")
                + (f"; {plan.describe()}: {fired}{more}" if plan is not None else "")
                + (f"; last_sync_error {note!r}" if note else ""))
        return desc, acked, violations

    def _open_tolerant(self, io: FaultyFileIO, clock: OpClock, auto: bool,
                       violations: list[str], tolerate_corruption: bool) -> Any:
        """Open the store; a failure is fine only if a fault was injected (or, after a
        duplicated segment, a CorruptionError)."""
        for _attempt in range(2):
            io.epoch += 1
            try:
                return self._open(io, clock, auto)
            except CorruptionError as exc:
                if tolerate_corruption:
                    self._restore()
                    continue
                violations.append(f"open raised {type(exc).__name__}: {exc}")
                return None
            except (OSError, Error) as exc:
                if not io.fired:
                    violations.append(f"open raised {type(exc).__name__}: {exc} with no "
                                      "fault injected")
                    return None
                continue  # a fault fired during open: try once more (it may be gone)
            except Exception as exc:
                violations.append(f"open raised {type(exc).__name__}: {exc!r} (only OSError "
                                  "and bitkv.Error may escape)")
                return None
        return None

    def _close(self, db: Any, what: str) -> list[str]:
        try:
            db.close()
        except (OSError, Error):
            return []
        except Exception as exc:
            return [f"{what} raised {type(exc).__name__}: {exc!r} (only OSError and "
                    "bitkv.Error may escape)"]
        return []

    def _settle(self, db: Any, rec: OpRecord) -> list[str]:
        keys = list(rec.final())
        if not keys:
            return []
        try:
            shown, _problems = observe(db, keys, now_ms(rec.id))
        except ClosedError:
            shown = {}
        for k, v in list(shown.items()):
            if isinstance(v, tuple) and v and v[0] == "error" and "ClosedError" in v[1]:
                del shown[k]   # closed: nothing to learn, not a violation
        return self.oracle.settle(rec, shown)

    def _restore(self) -> None:
        if os.path.exists(self.path):
            shutil.rmtree(self.path)
        if os.path.exists(self.backup):
            _copy_store(self.backup, self.path)

    # -- file faults ---------------------------------------------------------------------------

    def _file_fault(self, kind: str, rng: random.Random) -> tuple[str, list[str]]:
        at = check_time(self.next_op)
        self.next_op += 1
        if kind == "replaced-lock":
            return self._replaced_lock(rng, at)
        names = _segments(self.path)
        live = live_extents(self.path, at)
        if kind == "duplicate-segment":
            return self._duplicate(rng, names, at)
        if kind == "missing-segment":
            sealed = names[:-1]
            if not sealed:
                return "missing-segment: only one segment, skipped", []
            with_live = [s for s in sealed if live.get(s)]
            name = rng.choice(with_live if with_live and rng.random() < 0.8 else sealed)
            os.unlink(os.path.join(self.path, name))
            desc = f"deleted sealed segment {name}"
            must_fail = bool(live.get(name))
        else:
            name = rng.choice(names)
            full = os.path.join(self.path, name)
            size = os.path.getsize(full)
            if size <= 1:
                return f"truncated-segment: {name} is {size} B, skipped", []
            if rng.random() < 0.3 or size <= seg_mod.HEADER_SIZE:
                new = rng.randrange(0, min(size, seg_mod.HEADER_SIZE))
            else:
                new = rng.randrange(seg_mod.HEADER_SIZE, size)
            os.truncate(full, new)
            newest = " (the newest)" if name == names[-1] else ""
            desc = f"truncated segment {name}{newest} from {size} to {new} B"
            must_fail = any(end > new for _start, end in live.get(name, []))
        desc += " (held live data)" if must_fail else " (no live data there)"
        found = self._expect_detected(name, must_fail, at)
        self._restore()
        return desc, [f"{desc}: {v}" for v in found]

    def _expect_detected(self, name: str, must_fail: bool, at: int) -> list[str]:
        """After a segment was lost or cut: opens raise CorruptionError naming it (when it
        held live data), check() calls the store unhealthy; else the data is unchanged."""
        found: list[str] = []
        for readonly in (True, False):
            how = "read-only open" if readonly else "writable open"
            if not readonly and must_fail:
                # Before the writable open, which may "repair" what it finds.
                try:
                    if bitkv.check(self.path).healthy:
                        found.append(f"bitkv.check() calls the store healthy ({name} damaged)")
                except Exception as exc:
                    found.append(f"bitkv.check() raised {type(exc).__name__}: {exc}")
            try:
                with open_store(self.path, at, readonly=readonly,
                                max_segment_size=self.segment_size) as db:
                    observed, _p = observe(db, self.keys, at)
            except CorruptionError as exc:
                if name not in str(exc):
                    found.append(f"{how} raised CorruptionError not naming {name}: {exc}")
                continue
            except Exception as exc:
                found.append(f"{how} raised {type(exc).__name__} (not CorruptionError): {exc}")
                continue
            if must_fail:
                found.append(f"{how} succeeded: live data was lost silently")
            bad = self.oracle.check(observed, at, lambda r: True)
            if bad:
                found.append(f"{how}: {len(bad)} key(s) differ from before the damage, "
                             f"e.g. {bad[0]}")
        return found

    def _duplicate(self, rng: random.Random, names: list[str], at: int) -> tuple[str, list[str]]:
        name = rng.choice(names)
        top = seg_mod.list_segment_ids(os.listdir(self.path))[-1]
        copy = seg_mod.data_name(top + rng.randint(1, 5))
        with open(os.path.join(self.path, name), "rb") as fh:
            data = bytearray(fh.read())
        damaged = ""
        if rng.random() < 0.5 and len(data) > seg_mod.HEADER_SIZE:
            pos = rng.randrange(seg_mod.HEADER_SIZE, len(data))
            data[pos] ^= 1 << rng.randrange(8)
            damaged = f", byte {pos} damaged"
        with open(os.path.join(self.path, copy), "wb") as fh:
            fh.write(data)
        desc = f"copied segment {name} to {copy}{damaged}"
        found: list[str] = []
        try:
            with open_store(self.path, at, readonly=True,
                            max_segment_size=self.segment_size) as db:
                observed, _p = observe(db, self.keys, at)
            found += self.oracle.check(observed, at, lambda r: True)[:5]
        except CorruptionError:
            self._restore()   # refusing the store is allowed; the cycle goes on without it
            desc += " (open refused it: CorruptionError)"
        except Exception as exc:
            found.append(f"read-only open raised {type(exc).__name__}: {exc!r}")
            self._restore()
        # The cycle's workload (compactions, overwrites, a reopen) then runs on the store
        # with the copy in place; its check catches old values coming back later.
        return desc, [f"{desc}: {v}" for v in found]

    def _replaced_lock(self, rng: random.Random, at: int) -> tuple[str, list[str]]:
        found: list[str] = []
        clock = OpClock(self.next_op)
        first = bitkv.open(self.path, sync="always", auto_compact=False,
                           max_segment_size=self.segment_size, clock=clock)
        acked_a: list[bytes] = []
        acked_after = 0
        second: dict[str, Any] = {"opened": False, "error": "not started"}
        how = "rm+create"

        def put_a(i: int) -> bool:
            key = b"lock-a-%d" % i
            try:
                first.put(key, b"from the first writer %d" % i)
            except (OSError, Error):
                return False
            acked_a.append(key)
            return True

        try:
            for i in range(5):
                put_a(i)
            lock = os.path.join(self.path, LOCK_NAME)
            how = rng.choice(("rm+create", "rename over"))
            if how == "rm+create":
                os.unlink(lock)
                open(lock, "w").close()
            else:
                with open(lock + ".new", "w") as fh:
                    fh.write("0\n")
                os.rename(lock + ".new", lock)
            second = self._second_writer(20)
            for i in range(5, 25):
                acked_after += put_a(i)
        finally:
            try:
                first.close()
            except (OSError, Error):
                pass
        b_acked = [b"lock-b-%d" % i for i in second.get("acked", [])]
        desc = f"replaced LOCK ({how}) under a writer; second writer: " + (
            f"{len(b_acked)} puts acknowledged" if second.get("opened")
            else f"refused ({second.get('error', '?')[:60]})")
        if b_acked and acked_after:
            found.append(f"two writers: the second acknowledged {len(b_acked)} writes and "
                         f"the first {acked_after} more after LOCK was replaced")
        try:
            with open_store(self.path, at, readonly=True,
                            max_segment_size=self.segment_size) as db:
                lost = [k for k in acked_a + b_acked if db.get(k) is None]
        except Exception as exc:
            found.append(f"reopening after two writers failed: {type(exc).__name__}: {exc}")
            lost = []
        if lost:
            found.append(f"{len(lost)} acknowledged sync='always' writes lost, e.g. {lost[0]!r}")
        self._restore()
        return desc, [f"{desc}: {v}" for v in found]

    def _second_writer(self, n: int) -> dict[str, Any]:
        """Run a second writer in another process (flock is per open file description, so a
        thread could not show the lock being bypassed the way a second process does)."""
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(bitkv.__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        try:
            proc = subprocess.run([sys.executable, "-c", _SECOND_WRITER, self.path, str(n)],
                                  cwd=self.directory, env=env, capture_output=True,
                                  text=True, timeout=120)
            return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
        except (subprocess.SubprocessError, ValueError, IndexError) as exc:
            return {"opened": False, "error": f"second writer failed: {exc}"}


def run_cycles(runner: FaultRunner, cycles: int,
               note: Callable[[int, str, list[str], int], None],
               progress: Callable[[int, int], None] | None) -> int:
    for n in range(cycles):
        res = runner.cycle(n)
        note(n, res.description, res.violations, res.acked)
        if progress is not None:
            progress(n + 1, cycles)
    return cycles
