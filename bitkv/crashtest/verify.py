"""Reopening a crashed store and reading back everything it holds."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from typing import Any

import bitkv

from ..errors import CorruptionError
from ..fileio import FileIO
from ..store import SyncMode
from .values import describe, parse_value
from .workload import EPOCH

Observed = dict[bytes, Any]


def fixed_clock(at_ms: int) -> Callable[[], float]:
    t = at_ms / 1000.0
    assert int(t * 1000) == at_ms
    return lambda: t


def observe(db: Any, keys: list[bytes], at_ms: int) -> tuple[Observed, list[str]]:
    """Read every key (and the key listing); return (key -> state, problems).

    A state is None, (tag, length, expiry_ms), or ("garbage"|"corrupt"|"error", detail).
    """
    observed: Observed = {}
    problems: list[str] = []
    values: dict[bytes, bytes] = {}
    for key in keys:
        try:
            value = db.get(key)
        except CorruptionError as exc:
            observed[key] = ("corrupt", str(exc))
            continue
        except Exception as exc:
            observed[key] = ("error", f"get raised {type(exc).__name__}: {exc}")
            continue
        if value is None:
            observed[key] = None
            continue
        parsed = parse_value(value)
        if parsed is None:
            observed[key] = ("garbage", describe(value))
            continue
        if parsed[0] != key:
            observed[key] = ("garbage", f"{describe(value)}, read under {key!r}")
            continue
        values[key] = value
        try:
            left = db.ttl(key)
        except KeyError:
            observed[key] = ("error", "get returned a value but ttl() says the key is missing")
            continue
        exp = 0 if left is None else at_ms + round(left * 1000)
        observed[key] = (parsed[1], parsed[2], exp)
    try:
        listed = set(db.keys())
        present = {k for k, v in observed.items() if v is not None and v[0] != "corrupt"}
        phantom = listed - set(keys)
        if phantom:
            problems.append(f"keys() lists keys nobody wrote: {sorted(phantom)[:5]!r}")
        if listed & set(keys) != present:
            diff = sorted((listed & set(keys)) ^ present)[:5]
            problems.append(f"keys() disagrees with get() about {diff!r}")
        items = dict(db.items())
        for k, v in values.items():
            if items.get(k) != v:
                problems.append(f"items() returns a different value for {k!r} than get()")
                break
    except Exception as exc:
        problems.append(f"listing keys raised {type(exc).__name__}: {exc}")
    return observed, problems


def open_store(path: str, at_ms: int, *, sync: SyncMode = "never", readonly: bool = False,
               max_segment_size: int = 64 * 1024, fileio: FileIO | None = None) -> Any:
    options: dict[str, Any] = {}
    if fileio is not None:
        options["fileio"] = fileio
    if not readonly:
        options["auto_compact"] = False
    return bitkv.open(path, readonly=readonly, sync=sync, clock=fixed_clock(at_ms),
                      max_segment_size=max_segment_size, **options)


def _diff(a: Observed, b: Observed) -> str:
    for k in a:
        if a[k] != b.get(k):
            return f"{k!r}: {a[k]!r} then {b.get(k)!r}"
    return "(key sets differ)"


def recover(path: str, keys: list[bytes], at_ms: int, *, max_segment_size: int,
            readonly_first: bool = True, fileio: FileIO | None = None
            ) -> tuple[Observed | None, list[str], dict[str, Any]]:
    """Open the crashed store at ``path`` (read-only, then writable, then writable again) and
    return what it holds, every problem found, and the first writable open's recovery stats.

    Recovery must not fail, must not depend on whether the reader may write, and must be
    idempotent: the second writable open finds nothing left to repair and the same data.
    """
    problems: list[str] = []
    ro: Observed | None = None
    if readonly_first:
        try:
            with open_store(path, at_ms, readonly=True, max_segment_size=max_segment_size) as db:
                ro, p = observe(db, keys, at_ms)
                problems += [f"read-only open: {x}" for x in p]
        except bitkv.StoreNotFoundError:
            # A crash before the store's marker was durable: there is no store yet (the
            # writable open below creates it), which is fine only if there truly is none.
            if os.path.exists(os.path.join(path, "BITKV")):
                problems.append("read-only open says there is no store, but BITKV exists")
        except Exception as exc:
            problems.append(f"read-only open failed: {type(exc).__name__}: {exc}\n"
                            + traceback.format_exc(limit=6))
    try:
        with open_store(path, at_ms, max_segment_size=max_segment_size, fileio=fileio) as db:
            first, p = observe(db, keys, at_ms)
            problems += p
            stats = db.stats()["recovery"]
    except Exception as exc:
        problems.append(f"opening the crashed store failed: {type(exc).__name__}: {exc}\n"
                        + traceback.format_exc(limit=6))
        return None, problems, {}
    if ro is not None and ro != first:
        problems.append("a read-only open sees different data than a writable open: "
                        + _diff(ro, first))
    try:
        with open_store(path, at_ms, max_segment_size=max_segment_size) as db:
            second, p = observe(db, keys, at_ms)
            again = db.stats()["recovery"]
            report = db.recovery_report
    except Exception as exc:
        problems.append(f"reopening after recovery failed: {type(exc).__name__}: {exc}")
        return first, problems, stats
    if second != first:
        problems.append("recovering twice gives different states: " + _diff(first, second))
    if again["truncated_bytes"] or report.removed_temp_files:
        problems.append(f"the second open repaired again (truncated {again['truncated_bytes']} "
                        f"bytes, removed {report.removed_temp_files}): recovery did not "
                        "persist its repair")
    return first, problems, stats


def check_time(op_id: int) -> int:
    return (EPOCH + op_id) * 1000
