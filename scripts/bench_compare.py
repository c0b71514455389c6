#!/usr/bin/env python3
"""Two bitkv trees side by side (a "base" and a "new"), plus one peer, in ONE run.

    python scripts/bench_compare.py /work/wt-base /work/wt-bench   # N=200,000 and 1,000,000
    python scripts/bench_compare.py BASE NEW --n 200000 --rounds 5 --peer plyvel
    python scripts/bench_compare.py BASE NEW --out docs/bench/compare.md     # also write Markdown

Each tree runs in its own subprocess with ``PYTHONPATH=<tree>`` (so its ``bitkv/`` package is
imported, ahead of any installed bitkv; the child checks ``bitkv.__file__`` and fails if not).
Rounds are interleaved: base, new, peer in even rounds and new, base, peer in odd ones, so slow
drifts of a shared machine hit both trees alike. Medians over rounds are reported, with the
min..max spread and the new/base ratio of the medians.

The workload of one child, N keys ``key:%012d`` in shuffled order, 100-byte random values,
the same data (seed) for every child:

* fill: N ``db.put(k, v)`` calls (default ``sync="interval"``) into an empty store
* get: N ``db.get(k)`` of random present keys (bitkv checks the record's CRC-32C on every get)
* overwrite: N/2 puts to random existing keys
* delete: N/10 deletes of random keys
* reopen: close, then ``bitkv.open`` + one get, timed (ms); the store then holds the result of
  fill + overwrite + delete. Timed 3 times (close/open/get); the child reports the median.
* batch: a fresh store, all N puts in ONE ``with db.batch() as b`` block
* durable: a fresh store with ``sync="always"``, ``--durable-n`` single puts (each fsynced)

After the full rounds, ``--durable-rounds`` extra interleaved children per tree run only the
durable phase (cheap, and the noisiest figure, which the 5% budget of the durable mark needs).

The peer (``--peer``, default the first of plyvel, lmdb, sqlite3 that imports) runs the same
ops through scripts/bench_backends.py's adapter, in its own subprocess, in the same rounds;
its "durable" uses the adapter's durable mode (plyvel ``sync=True`` write options, etc.).

Stores live under ``--workdir`` (default /work/benchtmp, a real disk: fsync on tmpfs is free)
in a fresh per-run directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

# The read-back check of a round is bench.py's (keys, pool and expected mean the same here).
from bench_workload import verify as check  # noqa: E402

now = time.perf_counter

# (key, title, kind): "ops" = ops/s, higher is better; "time" = ms, lower is better
OPS = [
    ("fill", "fill (put/call)", "ops"),
    ("get", "random get", "ops"),
    ("overwrite", "overwrite", "ops"),
    ("delete", "delete", "ops"),
    ("reopen", "reopen (ms)", "time"),
    ("batch", "fill, one batch", "ops"),
    ("durable", "durable put, sync=always", "ops"),
]


# -- child ------------------------------------------------------------------------------------


def make_data(n: int, durable_n: int, seed: int, vsize: int = 100) -> dict[str, Any]:
    rng = random.Random(seed)
    keys = [b"key:%012d" % i for i in range(n)]
    pool_n = min(n, max(1024, (64 << 20) // vsize))
    pool = [rng.randbytes(vsize) for _ in range(pool_n)]
    order = list(range(n))
    rng.shuffle(order)
    expected = [0] * n
    for j, i in enumerate(order):
        expected[i] = j % pool_n
    ow_idx = rng.sample(range(n), n // 2)
    del_idx = rng.sample(range(n), n // 10)
    dur_idx = rng.sample(range(n), min(n, durable_n))
    return {
        "keys": keys, "pool": pool, "expected": expected,
        "fill_keys": [keys[i] for i in order],
        "fill_vals": [pool[j % pool_n] for j in range(n)],
        "get_keys": [keys[rng.randrange(n)] for _ in range(n)],
        "ow_idx": ow_idx, "ow_keys": [keys[i] for i in ow_idx],
        "ow_vals": [pool[(j * 31 + 17) % pool_n] for j in range(len(ow_idx))],
        "del_idx": del_idx, "del_keys": [keys[i] for i in del_idx],
        "dur_keys": [keys[i] for i in dur_idx],
        "dur_vals": [pool[(j * 7) % pool_n] for j in range(len(dur_idx))],
        "sample": rng.sample(range(n), min(n, 2000)),
    }


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    from bench_backends import ADAPTERS, LmdbAdapter

    name = cfg["backend"]
    out: dict[str, Any] = {"backend": name, "ops": {}, "errors": []}
    if name == "bitkv":
        import bitkv

        out["module_file"] = bitkv.__file__
        want = os.path.realpath(os.path.join(cfg["tree"], "bitkv"))
        if os.path.dirname(os.path.realpath(bitkv.__file__)) != want:
            raise SystemExit(f"imported {bitkv.__file__}, not the tree's {want}")
    n = cfg["n"]
    work = cfg["dir"]
    os.makedirs(work, exist_ok=True)
    d = make_data(n, cfg["durable_n"], cfg["seed"])
    gc.collect()
    gc.freeze()
    LmdbAdapter.map_size = max(1 << 30, 4 * n * (100 + 64))
    res = out["ops"]

    def loop2(fn, ks, vs) -> float:
        t0 = now()
        for k, v in zip(ks, vs, strict=True):
            fn(k, v)
        return len(ks) / (now() - t0)

    def loop1(fn, ks) -> float:
        t0 = now()
        for k in ks:
            fn(k)
        return len(ks) / (now() - t0)

    if not cfg.get("durable_only"):
        main_dir = os.path.join(work, "main")
        a = ADAPTERS[name]()
        a.open(main_dir)
        put, get, delete = a.ops()
        res["fill"] = loop2(put, d["fill_keys"], d["fill_vals"])
        res["get"] = loop1(get, d["get_keys"])
        res["overwrite"] = loop2(put, d["ow_keys"], d["ow_vals"])
        for j, i in enumerate(d["ow_idx"]):
            d["expected"][i] = (j * 31 + 17) % len(d["pool"])
        check(get, d, set(), "after overwrite", out["errors"])
        res["delete"] = loop1(delete, d["del_keys"])
        a.close()
        probe = d["fill_keys"][len(d["fill_keys"]) // 3]
        times = []
        for _ in range(3):
            t0 = now()
            a.open(main_dir)
            put, get, delete = a.ops()
            get(probe)
            times.append((now() - t0) * 1000)
            if len(times) < 3:
                a.close()
        res["reopen"] = statistics.median(times)
        out["reopen_first_ms"] = times[0]
        check(get, d, set(d["del_idx"]), "after reopen", out["errors"])
        a.close()
        shutil.rmtree(main_dir, ignore_errors=True)

        batch_dir = os.path.join(work, "batch")
        a = ADAPTERS[name]()
        a.open(batch_dir)
        t0 = now()
        a.batch_fill(d["fill_keys"], d["fill_vals"])
        res["batch"] = n / (now() - t0)
        _p, bget, _d = a.ops()
        wrong = sum(1 for k, v in zip(d["fill_keys"][:2000], d["fill_vals"][:2000],
                                              strict=True)
                    if bget(k) != v)
        if wrong:
            out["errors"].append(f"batch: {wrong} sampled keys read back wrong")
        a.close()
        shutil.rmtree(batch_dir, ignore_errors=True)

    ddir = os.path.join(work, "durable")
    a = ADAPTERS[name]()
    a.open(ddir, durable=True)
    dput, _g, _d = a.ops()
    res["durable"] = loop2(dput, d["dur_keys"], d["dur_vals"])
    a.close()
    shutil.rmtree(ddir, ignore_errors=True)
    return out


# -- parent -----------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def git_rev(tree: str) -> str:
    try:
        rev = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--", "bitkv"],
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (+uncommitted bitkv/ changes)" if dirty else "")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "?"


def load1() -> float:
    return os.getloadavg()[0]


def run_child(cfg: dict[str, Any], tree: str | None, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if tree:
        env["PYTHONPATH"] = tree
    # no __pycache__ written into the trees (the base is read-only); same for both trees
    env["PYTHONPYCACHEPREFIX"] = os.path.join(tempfile.gettempdir(), "bench-compare-pycache")
    cfg = dict(cfg, tree=tree or "")
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                               json.dumps(cfg)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return {"failed": f"timed out after {timeout:.0f} s"}
    finally:
        shutil.rmtree(cfg["dir"], ignore_errors=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"failed": f"exit {proc.returncode}: "
                + " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])}
    r = json.loads(lines[-1])
    r["wall"] = time.time() - t0
    return r


def pick_peer(choice: str) -> str:
    cands = ["plyvel", "lmdb", "sqlite3"] if choice == "auto" else [choice]
    for c in cands:
        try:
            __import__(c)
            return c
        except ImportError:
            log(f"peer {c}: not importable, skipped")
    raise SystemExit("no peer importable")


def fmt(v: float, kind: str) -> str:
    return f"{v:,.1f}" if kind == "time" else f"{v:,.0f}"


def speed_ratio(a: float, b: float, kind: str) -> float:
    """How many times faster a is than b (>1: a faster); for times, b/a."""
    return b / a if kind == "time" else a / b


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def paired(results: dict[str, list[dict[str, Any]]], key: str, kind: str) -> float | None:
    """Median over rounds of that round's new/base speed ratio (the two children of a round
    ran back to back, so a slow drift of the machine cancels out of each ratio)."""
    base = {r["round"]: r["ops"][key] for r in results["base"] if key in r.get("ops", {})}
    ratios = [speed_ratio(r["ops"][key], base[r["round"]], kind) for r in results["new"]
              if key in r.get("ops", {}) and r["round"] in base]
    return statistics.median(ratios) if ratios else None


def table(n: int, results: dict[str, list[dict[str, Any]]], peer: str) -> list[str]:
    med: dict[str, dict[str, float]] = {}
    rows = [f"#### N = {n:,}",
            "",
            f"| op | base median | new median | **new/base** | paired new/base | base spread "
            f"| new spread | {peer} median | base/{peer} | new/{peer} |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for who in ("base", "new", "peer"):
        med[who] = {}
        for key, _t, _k in OPS:
            vals = [r["ops"][key] for r in results[who] if key in r.get("ops", {})]
            if vals:
                med[who][key] = statistics.median(vals)
    for key, title, kind in OPS:
        if key not in med["base"] or key not in med["new"]:
            continue
        b, nw = med["base"][key], med["new"][key]
        bv = [r["ops"][key] for r in results["base"] if key in r.get("ops", {})]
        nv = [r["ops"][key] for r in results["new"] if key in r.get("ops", {})]
        cnt = f" ({len(bv)}+{len(nv)} runs)" if key == "durable" else ""
        p = med["peer"].get(key)
        prow = ("—", "—", "—") if p is None else (
            fmt(p, kind), fmt_ratio(speed_ratio(b, p, kind)), fmt_ratio(speed_ratio(nw, p, kind)))
        pr = paired(results, key, kind)
        rows.append(
            f"| {title}{cnt} | {fmt(b, kind)} | {fmt(nw, kind)} | "
            f"**{speed_ratio(nw, b, kind):.3f}** | {'—' if pr is None else f'{pr:.3f}'} | "
            f"{fmt(min(bv), kind)}..{fmt(max(bv), kind)} | "
            f"{fmt(min(nv), kind)}..{fmt(max(nv), kind)} | {prow[0]} | {prow[1]} | {prow[2]} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.stdout.write("\n" + json.dumps(child(json.loads(sys.argv[2]))) + "\n")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="base tree (holds bitkv/)")
    ap.add_argument("new", help="new tree (holds bitkv/)")
    ap.add_argument("--n", default="200000,1000000", help="comma-separated key counts")
    ap.add_argument("--rounds", default="5,3",
                    help="rounds per N (comma-separated, matching --n; default 5,3)")
    ap.add_argument("--durable-n", type=int, default=2000, help="sync=always puts per child")
    ap.add_argument("--durable-rounds", type=int, default=8,
                    help="extra durable-only children per tree, per N (default 8)")
    ap.add_argument("--peer", default="auto", help="plyvel, lmdb, sqlite3, ... or auto")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workdir", default="/work/benchtmp")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", help="also write the Markdown report here")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args(argv)

    ns = [int(x) for x in args.n.split(",")]
    rounds = [int(x) for x in args.rounds.split(",")]
    rounds = (rounds + [rounds[-1]] * len(ns))[: len(ns)]
    plan = ", ".join(f"{n:,}: {r}" for n, r in zip(ns, rounds, strict=True))
    trees = {"base": os.path.abspath(args.base), "new": os.path.abspath(args.new)}
    peer = pick_peer(args.peer)
    os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="cmp-", dir=args.workdir)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    loads = [load1()]
    t_start = time.time()
    all_res: dict[int, dict[str, list[dict[str, Any]]]] = {}
    failures: list[str] = []
    try:
        for n, nr in zip(ns, rounds, strict=True):
            res: dict[str, list[dict[str, Any]]] = {"base": [], "new": [], "peer": []}
            all_res[n] = res
            base_cfg = {"n": n, "durable_n": args.durable_n, "seed": args.seed}
            for r in range(nr):
                order = ["base", "new", "peer"] if r % 2 == 0 else ["new", "base", "peer"]
                for who in order:
                    cfg = dict(base_cfg, backend="bitkv" if who != "peer" else peer,
                               dir=os.path.join(work, f"{who}-{n}-{r}"))
                    out = run_child(cfg, trees.get(who), args.timeout)
                    if "failed" in out or out.get("errors"):
                        failures.append(f"N={n} round {r} {who}: "
                                        f"{out.get('failed') or out.get('errors')}")
                    if "ops" in out:
                        out["round"] = r
                        res[who].append(out)
                    ops = out.get("ops", {})
                    log(f"N={n:,} round {r + 1}/{nr} {who:4s} "
                        + " ".join(f"{k}={fmt(v, 'time' if k == 'reopen' else 'ops')}"
                                   for k, v in ops.items())
                        + f"  load {load1():.2f}" + (f"  FAILED {out['failed']}"
                                                     if "failed" in out else ""))
            for r in range(args.durable_rounds):
                for who in (["base", "new"] if r % 2 == 0 else ["new", "base"]):
                    cfg = dict(base_cfg, n=min(n, 20000), backend="bitkv", durable_only=True,
                               dir=os.path.join(work, f"d-{who}-{n}-{r}"))
                    out = run_child(cfg, trees[who], args.timeout)
                    if "ops" in out:
                        res[who].append({"ops": {"durable": out["ops"]["durable"]},
                                         "round": nr + r})
                    else:
                        failures.append(f"durable round {r} {who}: {out.get('failed')}")
            log(f"N={n:,} durable-only rounds done, load {load1():.2f}")
            loads.append(load1())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    took = (time.time() - t_start) / 60
    mod = {who: (all_res[ns[0]][who][0].get("module_file") if all_res[ns[0]][who] else "?")
           for who in ("base", "new")}
    md = [
        f"`python scripts/bench_compare.py {' '.join(sys.argv[1:])}` — started {started}, "
        f"took {took:.1f} min.",
        "",
        f"- base: `{trees['base']}` at {git_rev(trees['base'])} (imports `{mod['base']}`)",
        f"- new: `{trees['new']}` at {git_rev(trees['new'])} (imports `{mod['new']}`)",
        f"- peer: {peer} (scripts/bench_backends.py adapter), same rounds",
        f"- rounds (N: rounds) {plan}; "
        f"order base,new,{peer} / new,base,{peer} alternating; durable: {args.durable_n:,} "
        f"sync=always puts per child, the full rounds plus {args.durable_rounds} durable-only "
        f"children per tree per N",
        f"- load average (1 min) at the start and after each N: "
        f"{', '.join(f'{x:.2f}' for x in loads)}; {os.cpu_count()} CPUs; stores under "
        f"`{args.workdir}`",
        "- ratios are of medians: new/base > 1 means new is faster (reopen: base ms / new ms); "
        "paired new/base is the median of the per-round ratios (base and new of one round ran "
        "back to back); "
        f"base/{peer} and new/{peer} > 1 mean bitkv is faster than {peer}",
        "",
    ]
    for n in ns:
        md += [*table(n, all_res[n], peer), ""]
    if failures:
        md += ["Failures / wrong reads:", "", *[f"- {f}" for f in failures], ""]
    text = "\n".join(md)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({str(n): v for n, v in all_res.items()}, fh)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
