"""The child side of scripts/bench.py: runs the whole workload against ONE backend, in its own
process, and prints one JSON object on the last line of stdout.

Usage (normally only bench.py calls this): ``python scripts/bench_workload.py '<json config>'``.

Modes:

* ``run``: the workload (see docs/performance.md, "Methodology").
* ``probe-build`` / ``probe-measure``: the keydir memory probe. Build writes K keys of 16 bytes
  and closes; measure opens the store in a fresh process and reports how much the open grew
  the Python heap (tracemalloc) or the anonymous RSS (``RssAnon``), per key.
* ``reopen``: open a store another process left behind and read one key (the reopen-with-history
  phase of ``run`` starts it, so that the open pays for every import and cache cold, as a
  restarted service does).
* ``history-reopen``: that phase alone at its own size (``bench.py --reopen-n``).
* ``scale-build`` / ``scale-open``: ``bench.py --scale``. Build writes K keys through
  ``db.batch()`` and closes; open, in a fresh process, times the open, the growth of
  ``RssAnon`` over it, and random gets (one at a time, twice, then through ``get_many`` in
  batches of 1,000).

The bitkv variants (``bitkv`` compiled, ``bitkv-py`` pure Python, ``base``/``base-py`` a git
snapshot) differ only in the environment bench.py gives the child (``PYTHONPATH``,
``BITKV_PURE_PYTHON``); the child reports ``bitkv.IMPLEMENTATION`` so the parent can check that
each ran in the mode it is named after.
"""

from __future__ import annotations

import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_backends import ADAPTERS, REQUIRES, Adapter, LmdbAdapter, Skip

MAX_STEP = 4096  # most ops between two looks at the clock (for the per-phase time budget)
now = time.perf_counter
# CPU time of the whole process (every thread: a store's background work counts): on a shared
# machine the wall clock also counts the time other processes held the CPU, this does not.
cpu = time.process_time


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


def bitkv_implementation() -> str:
    """"native" or "python": the mode the imported bitkv runs in. Trees older than issue 14
    have no ``IMPLEMENTATION``: they are all Python."""
    import bitkv

    return str(getattr(bitkv, "IMPLEMENTATION", "python"))


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
    c0 = cpu()
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
    return {"ops": done, "total": n, "secs": secs, "cpu_secs": cpu() - c0, "partial": done < n}


def timed_keys(fn, keys: list[bytes], budget: float) -> dict[str, Any]:
    n = len(keys)
    done = 0
    step = 64
    c0 = cpu()
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
    return {"ops": done, "total": n, "secs": secs, "cpu_secs": cpu() - c0, "partial": done < n}


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
        out["implementation"] = bitkv_implementation()
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
    if cfg.get("durable_only"):  # bench.py --durable-only: nothing but the durable phases
        durable_phases(cfg, d, phases)
        return finish(out)

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

    # Reopen with history: the store has had the fill, the overwrites, the deletes and the
    # mixed puts; a fresh process opens it and reads one key that was never deleted.
    live = next(k for i, k in enumerate(d["keys"]) if i not in deleted)
    phases["reopen_hist"] = reopen_in_child(cfg, main_dir, live)
    if "error" in phases["reopen_hist"]:
        out["errors"].append("reopen with history: " + phases["reopen_hist"].pop("error"))
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
        c0 = cpu()
        t0 = now()
        while done < n:
            end = min(n, done + chunk)
            adapter.batch_fill(fk[done:end], fv[done:end])
            done = end
            if now() - t0 > budget:
                break
        phases["batch_fill"] = {"ops": done, "total": n, "secs": now() - t0,
                                "cpu_secs": cpu() - c0, "partial": done < n,
                                "batch": min(chunk, n)}
        _p, bget, _d = adapter.ops()
        sample_keys = d["fill_keys"][: min(done, 1000)]
        wrong = sum(1 for k, v in zip(sample_keys, d["fill_vals"], strict=False) if bget(k) != v)
        if wrong:
            out["errors"].append(f"batch fill: {wrong} sampled keys read back wrong")
    except Skip as exc:
        phases["batch_fill"] = {"skip": str(exc)}
    adapter.close()
    shutil.rmtree(batch_dir, ignore_errors=True)

    durable_phases(cfg, d, phases)
    return finish(out)


# The thread counts of the durable phases (the last is --durable-threads, 8 by default).
DURABLE_PHASES = (("durable", 1), ("durable2", 2), ("durable4", 4))


def durable_phases(cfg: dict[str, Any], d: dict[str, Any], phases: dict[str, Any]) -> None:
    """The durable phases: the same writes by 1, 2, 4 and --durable-threads threads, each
    into a fresh store in the backend's durable mode (every write on stable storage when its
    call returns); how the throughput grows with threads is the backend's group commit."""
    name = cfg["backend"]
    for phase, nthreads in (*DURABLE_PHASES, ("durable8", cfg["durable_threads"])):
        ddir = os.path.join(cfg["dir"], phase)
        adapter = ADAPTERS[name]()
        try:
            adapter.open(ddir, durable=True)
        except Skip as exc:
            phases[phase] = {"skip": str(exc)}
            continue
        if nthreads == 1:
            dput, _g, _d = adapter.ops()
            phases[phase] = timed_pairs(dput, d["dur_keys"], d["dur_vals"], cfg["budget"])
        else:
            dk, dv = d["dur_keys"], d["dur_vals"]
            plans = [[(True, dk[j], dv[j]) for j in range(t, len(dk), nthreads)]
                     for t in range(nthreads)]
            phases[phase] = threaded(adapter, plans, cfg["budget"])
            phases[phase]["threads"] = nthreads
        adapter.close()
        shutil.rmtree(ddir, ignore_errors=True)


def finish(out: dict[str, Any]) -> dict[str, Any]:
    """The run's summary: peak RSS and each phase's rate."""
    out["rss_peak_all_kb"] = maxrss_kb()
    for ph in out["phases"].values():
        if "secs" in ph and ph["secs"] > 0:
            ph["ops_s"] = ph["ops"] / ph["secs"]
    for ex in out["extra"].values():
        ex["ops_s"] = ex["ops"] / ex["secs"]
    return out


def reopen_in_child(cfg: dict[str, Any], path: str, key: bytes) -> dict[str, Any]:
    """Time the open of ``path`` up to the first get of ``key`` in a fresh process."""
    sub = {"mode": "reopen", "backend": cfg["backend"], "dir": path, "key": key.hex()}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), json.dumps(sub)],
                          capture_output=True, text=True, timeout=cfg.get("timeout", 3600))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        # no "secs": a failed open is no time at all, and the error fails the run
        return {"ops": 0, "total": 1, "error": f"exit {proc.returncode}: {tail}"}
    r = json.loads(lines[-1])
    phase = {"ops": 1, "total": 1, "secs": r["secs"], "partial": False,
             "rss_anon_growth": r["rss_anon_growth"]}
    if not r["found"]:
        phase["error"] = "the key was not found"
    return phase


def history_reopen(cfg: dict[str, Any]) -> dict[str, Any]:
    """``bench.py --reopen-n``: the reopen-with-history phase alone, at its own size. Puts
    ``n`` keys in random order, overwrites half of them, deletes a tenth (one call each, as in
    ``run``), closes, and times a fresh process's open up to its first get."""
    name = cfg["backend"]
    n = cfg["n"]
    rng = random.Random(cfg["seed"])
    pool = [rng.randbytes(cfg["value_size"]) for _ in range(1024)]
    keys = [b"key:%012d" % i for i in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    overwritten = rng.sample(range(n), n // 2)
    deleted = set(rng.sample(range(n), n // 10))
    adapter = ADAPTERS[name]()
    adapter.open(cfg["dir"])
    put, _get, delete = adapter.ops()
    for j, i in enumerate(order):
        put(keys[i], pool[j & 1023])
    for j, i in enumerate(overwritten):
        put(keys[i], pool[(j * 31 + 17) & 1023])
    for i in deleted:
        delete(keys[i])
    adapter.close()
    live = next(k for i, k in enumerate(keys) if i not in deleted)
    phase = reopen_in_child(cfg, cfg["dir"], live)
    out: dict[str, Any] = {"backend": name, "n": n, "secs": phase.get("secs")}
    if name == "bitkv":
        out["implementation"] = bitkv_implementation()
    if "error" in phase:
        out["errors"] = [phase["error"]]
    return out


def reopen(cfg: dict[str, Any]) -> dict[str, Any]:
    name = cfg["backend"]
    __import__(REQUIRES[name])  # the import is not the open
    adapter = ADAPTERS[name]()
    key = bytes.fromhex(cfg["key"])
    gc.collect()
    before = rss_anon_kb()
    t0 = now()
    adapter.open(cfg["dir"])
    _put, get, _delete = adapter.ops()
    got = get(key)
    secs = now() - t0
    grown = (rss_anon_kb() - before) * 1024
    adapter.close()
    return {"backend": name, "secs": secs, "found": got is not None, "rss_anon_growth": grown}


# -- bench.py --scale -----------------------------------------------------------------------------


def scale_key(i: int) -> bytes:
    return b"key:%012d" % i  # 16 bytes, as in the workload and the memory probe


def scale_build(cfg: dict[str, Any]) -> dict[str, Any]:
    """Write ``keys`` keys through ``db.batch()`` (batches of 100,000) and close."""
    import bitkv

    keys, vsize = cfg["keys"], cfg["value_size"]
    rng = random.Random(cfg["seed"])
    pool = [rng.randbytes(vsize) for _ in range(1024)]
    chunk = 100_000
    t0 = now()
    db = bitkv.open(cfg["dir"])
    for start in range(0, keys, chunk):
        with db.batch() as b:
            put = b.put
            for i in range(start, min(keys, start + chunk)):
                put(scale_key(i), pool[i & 1023])
    db.close()
    build_secs = now() - t0
    # Every sealed segment with its hint, whether or not the maintenance thread kept up with
    # the fill: without this the opens below read a share of hints that varies run to run.
    from bench_reopen import hint_sealed_segments

    hinted = hint_sealed_segments(cfg["dir"])
    return {"backend": "bitkv", "implementation": bitkv_implementation(),
            "build_secs": build_secs, "hints_written_after": hinted,
            "disk": disk_bytes(cfg["dir"])}


def scale_open(cfg: dict[str, Any]) -> dict[str, Any]:
    """Open the store in this fresh process: open time (to the first get; wall, and CPU time
    of the process, its helper threads included, which a shared machine inflates less), the
    growth of ``RssAnon`` over the open per key (the index: mapped files are not anonymous
    memory), and ``gets`` random gets (every one checks its record's CRC): CPU time per get
    over keys spread across the whole store, then the same keys again (their pages mapped by
    the first pass: what a long-running process sees), then the same keys once more through
    ``get_many`` in batches of 1,000 (CPU time per key)."""
    import bitkv

    keys = cfg["keys"]
    rng = random.Random(cfg["seed"] + 1)
    # generated before the baseline RSS, so that the list is not counted as index
    read_keys = [scale_key(rng.randrange(keys)) for _ in range(cfg["gets"])]
    gc.collect()
    before = rss_anon_kb()
    t0 = now()
    cpu0 = cpu()
    db = bitkv.open(cfg["dir"])
    first = db.get(scale_key(keys // 2))
    open_secs = now() - t0
    open_cpu_secs = cpu() - cpu0
    gc.collect()
    grown = (rss_anon_kb() - before) * 1024
    get = db.get
    missing = 0
    passes = []
    for _ in range(2):
        t0 = now()
        cpu0 = cpu()
        for k in read_keys:
            if get(k) is None:
                missing += 1
        passes.append((now() - t0, cpu() - cpu0))
    # A third pass: the same keys through get_many in batches of 1,000 (pages mapped, as for
    # the second pass, which is what to compare it with). A snapshot older than get_many
    # (the ``base`` variants) has no third pass.
    get_many = getattr(db, "get_many", None)
    many_cpu = None
    if get_many is not None:
        batches = [read_keys[i : i + 1000] for i in range(0, len(read_keys), 1000)]
        cpu0 = cpu()
        for batch in batches:
            missing += get_many(batch).count(None)
        many_cpu = cpu() - cpu0
    db.close()
    out: dict[str, Any] = {
        "backend": "bitkv", "implementation": bitkv_implementation(), "keys": keys,
        "open_secs": open_secs, "open_cpu_secs": open_cpu_secs, "rss_anon_growth": grown,
        "beyond_key_bytes": grown / keys - 16, "gets_s": len(read_keys) / passes[0][0],
        "get_cpu_us": passes[0][1] / len(read_keys) * 1e6,
        "get_cpu_us_again": passes[1][1] / len(read_keys) * 1e6}
    if many_cpu is not None:
        out["get_many_cpu_us"] = many_cpu / len(read_keys) * 1e6
    if first is None or missing:
        out["errors"] = [f"{missing} of {(3 if many_cpu is not None else 2) * len(read_keys)}"
                         f" gets (and the first: "
                         f"{'missing' if first is None else 'found'}) found nothing"]
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
    if name == "bitkv":
        cfg["implementation"] = bitkv_implementation()
    return {"backend": name, "implementation": cfg.get("implementation"), "method": method,
            "keys": keys, "bytes": grown,
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
    elif mode == "reopen":
        result = reopen(cfg)
    elif mode == "history-reopen":
        result = history_reopen(cfg)
    elif mode == "scale-build":
        result = scale_build(cfg)
    elif mode == "scale-open":
        result = scale_open(cfg)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
