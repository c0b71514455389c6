"""The child side of scripts/bench.py: runs the whole workload against ONE backend, in its own
process, and prints one JSON object on the last line of stdout.

Usage (normally only bench.py calls this): ``python scripts/bench_workload.py '<json config>'``.

Modes:

* ``run``: the workload (see docs/performance.md, "Methodology").
* ``probe-build`` / ``probe-measure``: the keydir memory probe. Build writes K keys of 16 bytes
  and closes; measure opens the store in a fresh process and reports how much the open grew
  the Python heap (tracemalloc) or the anonymous RSS (``RssAnon``), per key.
"""

from __future__ import annotations

import gc
import json
import os
import random
import resource
import shutil
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_backends import ADAPTERS, REQUIRES, Adapter, LmdbAdapter, Skip

MAX_STEP = 4096  # most ops between two looks at the clock (for the per-phase time budget)
now = time.perf_counter


def disk_bytes(path: str) -> int:
    """Bytes allocated on disk under ``path`` (like ``du``: st_blocks, so sparse files count
    only what they use)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_anon_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def check_import(backend: str) -> str | None:
    module = REQUIRES[backend]
    try:
        __import__(module)
    except ImportError as exc:
        if backend == "dbm.gnu":
            return f"dbm.gnu is not available in this Python build ({exc})"
        return f"{module} is not installed ({exc}); pip install -e '.[bench]'"
    return None


# -- timed loops --------------------------------------------------------------------------------


def next_step(done: int, elapsed: float, budget: float) -> tuple[int, bool]:
    """Ops to run before looking at the clock again (about 0.1 s worth, 16 to 4096), and
    whether the phase is over its time budget."""
    rate = done / elapsed if elapsed > 0 else 1e6
    return max(16, min(MAX_STEP, int(rate * 0.1))), elapsed > budget


def timed_pairs(fn, keys: list[bytes], values: list[bytes], budget: float) -> dict[str, Any]:
    """Call ``fn(k, v)`` for each pair, chunk by chunk, stopping early past ``budget`` s."""
    n = len(keys)
    done = 0
    step = 64
    t0 = now()
    while done < n:
        end = min(n, done + step)
        for k, v in zip(keys[done:end], values[done:end], strict=False):
            fn(k, v)
        done = end
        step, over = next_step(done, now() - t0, budget)
        if over:
            break
    secs = now() - t0
    return {"ops": done, "total": n, "secs": secs, "partial": done < n}


def timed_keys(fn, keys: list[bytes], budget: float) -> dict[str, Any]:
    n = len(keys)
    done = 0
    step = 64
    t0 = now()
    while done < n:
        end = min(n, done + step)
        for k in keys[done:end]:
            fn(k)
        done = end
        step, over = next_step(done, now() - t0, budget)
        if over:
            break
    secs = now() - t0
    return {"ops": done, "total": n, "secs": secs, "partial": done < n}


def threaded(adapter: Adapter, plans: list[list[tuple[bool, bytes, bytes]]],
             budget: float) -> dict[str, Any]:
    """Run one plan per thread (``(is_write, key, value)`` ops) on ``adapter.thread_ops()``."""
    barrier = threading.Barrier(len(plans) + 1)
    counts = [0] * len(plans)
    errors: list[BaseException] = []
    deadline = [0.0]

    def worker(i: int) -> None:
        try:
            put, get = adapter.thread_ops()
            plan = plans[i]
            barrier.wait()
            done = 0
            n = len(plan)
            while done < n:
                end = min(n, done + 64)
                for w, k, v in plan[done:end]:
                    if w:
                        put(k, v)
                    else:
                        get(k)
                done = end
                if now() > deadline[0]:
                    break
            counts[i] = done
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            try:
                barrier.abort()
            except Exception:
                pass
        finally:
            adapter.end_thread()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    deadline[0] = now() + budget + 3600  # provisional, until every thread is ready
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = now()
    deadline[0] = t0 + budget
    for t in threads:
        t.join()
    secs = now() - t0
    if errors:
        raise errors[0]
    total = sum(len(p) for p in plans)
    return {"ops": sum(counts), "total": total, "secs": secs, "partial": sum(counts) < total}


# -- the workload -------------------------------------------------------------------------------


def make_data(cfg: dict[str, Any]) -> dict[str, Any]:
    n = cfg["n"]
    vsize = cfg["value_size"]
    rng = random.Random(cfg["seed"])
    keys = [b"key:%012d" % i for i in range(n)]
    # A pool of distinct random values (all of them for small values; 64 MiB worth for big).
    pool_n = min(n, max(1024, (64 << 20) // vsize))
    pool = [rng.randbytes(vsize) for _ in range(pool_n)]
    order = list(range(n))
    rng.shuffle(order)
    expected = [0] * n  # pool index of each key's current value
    fill_keys = [keys[i] for i in order]
    fill_vals = [pool[j % pool_n] for j in range(n)]
    for j, i in enumerate(order):
        expected[i] = j % pool_n
    read_keys = [keys[rng.randrange(n)] for _ in range(n)]
    ow_idx = rng.sample(range(n), n // 2)
    ow_keys = [keys[i] for i in ow_idx]
    ow_vals = [pool[(j * 31 + 17) % pool_n] for j in range(len(ow_idx))]
    del_idx = rng.sample(range(n), n // 10)
    del_keys = [keys[i] for i in del_idx]
    threads = cfg["threads"]
    per = n // threads
    mixed = [
        [(rng.random() < 0.1, keys[rng.randrange(n)], pool[rng.randrange(pool_n)])
         for _ in range(per)]
        for _t in range(threads)
    ]
    dn = cfg["durable_n"]
    dur_idx = rng.sample(range(n), min(n, dn))
    dur_keys = [keys[i] for i in dur_idx]
    dur_vals = [pool[(j * 7) % pool_n] for j in range(len(dur_idx))]
    sample = rng.sample(range(n), min(n, 1000))
    return {
        "keys": keys, "pool": pool, "expected": expected, "fill_keys": fill_keys,
        "fill_vals": fill_vals, "read_keys": read_keys, "ow_idx": ow_idx, "ow_keys": ow_keys,
        "ow_vals": ow_vals, "del_idx": del_idx, "del_keys": del_keys, "mixed": mixed,
        "dur_keys": dur_keys, "dur_vals": dur_vals, "sample": sample,
    }


def verify(get, d: dict[str, Any], deleted: set[int], where: str, errors: list[str]) -> None:
    keys, pool, expected = d["keys"], d["pool"], d["expected"]
    bad = 0
    for i in d["sample"]:
        want = None if i in deleted else pool[expected[i]]
        got = get(keys[i])
        if got is not None and not isinstance(got, bytes):
            got = bytes(got)
        if got != want:
            bad += 1
    if bad:
        errors.append(f"{where}: {bad} of {len(d['sample'])} sampled keys read back wrong")


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    name = cfg["backend"]
    out: dict[str, Any] = {"backend": name, "phases": {}, "notes": [], "errors": [], "extra": {}}
    reason = check_import(name)
    if reason:
        out["skipped"] = reason
        return out
    if name == "bitkv":
        import bitkv

        out["module_file"] = bitkv.__file__
    work = cfg["dir"]
    os.makedirs(work, exist_ok=True)
    budget = cfg["budget"]
    n = cfg["n"]
    d = make_data(cfg)
    gc.collect()
    gc.freeze()
    out["rss_base_kb"] = maxrss_kb()
    phases = out["phases"]
    LmdbAdapter.map_size = max(1 << 30, 4 * n * (cfg["value_size"] + 64))

    adapter = ADAPTERS[name]()
    main_dir = os.path.join(work, "main")
    try:
        adapter.open(main_dir)
    except Skip as exc:
        out["skipped"] = str(exc)
        return out
    put, get, delete = adapter.ops()

    # The fill has no time budget: every later phase needs all N keys in the store.
    phases["fill"] = timed_pairs(put, d["fill_keys"], d["fill_vals"], float("inf"))
    out["disk_after_fill"] = disk_bytes(main_dir)

    phases["read"] = timed_keys(get, d["read_keys"], budget)
    if isinstance(adapter, LmdbAdapter):
        t0 = now()
        adapter.read_all_one_txn(d["read_keys"])
        out["extra"]["lmdb_read_one_txn"] = {"ops": n, "secs": now() - t0}

    ow = timed_pairs(put, d["ow_keys"], d["ow_vals"], budget)
    phases["overwrite"] = ow
    for j in range(ow["ops"]):
        d["expected"][d["ow_idx"][j]] = (j * 31 + 17) % len(d["pool"])
    out["disk_after_overwrite"] = disk_bytes(main_dir)
    verify(get, d, set(), "after overwrite", out["errors"])

    adapter.close()
    probe_key = d["read_keys"][0]
    t0 = now()
    adapter.open(main_dir)
    put, get, delete = adapter.ops()
    first = get(probe_key)
    phases["reopen"] = {"ops": 1, "total": 1, "secs": now() - t0, "partial": False}
    if first is None:
        out["errors"].append("reopen: the probe key was not found")

    dl = timed_keys(delete, d["del_keys"], budget)
    phases["delete"] = dl
    deleted = set(d["del_idx"][: dl["ops"]])
    verify(get, d, deleted, "after delete", out["errors"])

    phases["mixed"] = threaded(adapter, d["mixed"], budget)
    out["rss_peak_kb"] = maxrss_kb()
    adapter.close()
    if not cfg["keep"]:
        shutil.rmtree(main_dir, ignore_errors=True)

    # batched fill, into a fresh store
    batch_dir = os.path.join(work, "batch")
    adapter = ADAPTERS[name]()
    adapter.open(batch_dir)
    chunk = cfg["batch_chunk"]
    fk, fv = d["fill_keys"], d["fill_vals"]
    try:
        done = 0
        t0 = now()
        while done < n:
            end = min(n, done + chunk)
            adapter.batch_fill(fk[done:end], fv[done:end])
            done = end
            if now() - t0 > budget:
                break
        phases["batch_fill"] = {"ops": done, "total": n, "secs": now() - t0,
                                "partial": done < n, "batch": min(chunk, n)}
        _p, bget, _d = adapter.ops()
        sample_keys = d["fill_keys"][: min(done, 1000)]
        wrong = sum(1 for k, v in zip(sample_keys, d["fill_vals"], strict=False) if bget(k) != v)
        if wrong:
            out["errors"].append(f"batch fill: {wrong} sampled keys read back wrong")
    except Skip as exc:
        phases["batch_fill"] = {"skip": str(exc)}
    adapter.close()
    shutil.rmtree(batch_dir, ignore_errors=True)

    # durable writes: one thread, then 8 threads, each into a fresh store
    for phase, nthreads in (("durable", 1), ("durable8", cfg["durable_threads"])):
        ddir = os.path.join(work, phase)
        adapter = ADAPTERS[name]()
        try:
            adapter.open(ddir, durable=True)
        except Skip as exc:
            phases[phase] = {"skip": str(exc)}
            continue
        if nthreads == 1:
            dput, _g, _d = adapter.ops()
            phases[phase] = timed_pairs(dput, d["dur_keys"], d["dur_vals"], budget)
        else:
            dk, dv = d["dur_keys"], d["dur_vals"]
            plans = [[(True, dk[j], dv[j]) for j in range(t, len(dk), nthreads)]
                     for t in range(nthreads)]
            phases[phase] = threaded(adapter, plans, budget)
            phases[phase]["threads"] = nthreads
        adapter.close()
        shutil.rmtree(ddir, ignore_errors=True)

    out["rss_peak_all_kb"] = maxrss_kb()
    for ph in phases.values():
        if "secs" in ph and ph["secs"] > 0:
            ph["ops_s"] = ph["ops"] / ph["secs"]
    for ex in out["extra"].values():
        ex["ops_s"] = ex["ops"] / ex["secs"]
    return out


# -- the keydir memory probe --------------------------------------------------------------------


def probe_build(cfg: dict[str, Any]) -> dict[str, Any]:
    name = cfg["backend"]
    reason = check_import(name)
    if reason:
        return {"backend": name, "skipped": reason}
    adapter = ADAPTERS[name]()
    os.makedirs(os.path.dirname(cfg["dir"]), exist_ok=True)
    adapter.open(cfg["dir"])
    put, _get, _delete = adapter.ops()
    value = b"v" * cfg["probe_value_size"]
    t0 = now()
    for i in range(cfg["keys"]):
        put(b"key:%012d" % i, value)
    adapter.close()
    return {"backend": name, "build_secs": now() - t0}


def probe_measure(cfg: dict[str, Any]) -> dict[str, Any]:
    import tracemalloc

    name = cfg["backend"]
    method = cfg["method"]
    keys = cfg["keys"]
    adapter = ADAPTERS[name]()
    __import__(REQUIRES[name])  # imports are not the index
    if name == "floor":
        import mmap  # noqa: F401
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_anon_kb() * 1024
    t0 = now()
    adapter.open(cfg["dir"])
    _put, get, _delete = adapter.ops()
    got = get(b"key:%012d" % (keys // 2))
    secs = now() - t0
    gc.collect()
    if method == "tracemalloc":
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    else:
        after = rss_anon_kb() * 1024
    adapter.close()
    grown = after - before
    return {"backend": name, "method": method, "keys": keys, "bytes": grown,
            "bytes_per_key": grown / keys, "beyond_key_bytes": grown / keys - 16,
            "open_secs": secs, "found": got is not None}


def main() -> None:
    cfg = json.loads(sys.argv[1])
    mode = cfg.get("mode", "run")
    if mode == "run":
        result = run(cfg)
    elif mode == "probe-build":
        result = probe_build(cfg)
    elif mode == "probe-measure":
        result = probe_measure(cfg)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
