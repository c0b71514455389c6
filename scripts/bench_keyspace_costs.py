#!/usr/bin/env python3
"""CPU costs of the keyspace part of issue 17, for an A/B of two trees.

    PYTHONPATH=TREE python scripts/bench_keyspace_costs.py LABEL [--edits 50000]
    python scripts/bench_keyspace_costs.py --guard

Without ``--guard``: ``Structures.edit`` on a hash of 1024 fields, one field put per edit, in
a temporary store; prints the best of 5 rounds in CPU microseconds per edit. Run it with two
trees' PYTHONPATH one after the other (interleaved, several times) to see what a change to
the write path costs (WATCH's versions are stamped there).

``--guard``: the command table's key guard (``registry.guarded``) around a handler that does
nothing, against the bare handler: nanoseconds per call, the minimum of 7 repeats.
(docs/cluster.md, "Keys holding collections", has the figures.)
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
import timeit
from typing import Any

import bitkv
from bitkv.server.commands.registry import guarded
from bitkv.structures import HashIndex, Structures


def edits(label: str, n: int, path: str) -> None:
    with bitkv.open(path) as store:
        s = Structures(store)
        best = float("inf")
        for _round in range(5):
            started = time.process_time()
            for i in range(n):
                with s.edit(b"h", HashIndex) as e:
                    e.put(b"f%d" % (i & 1023), b"v")
            best = min(best, (time.process_time() - started) / n)
    print(f"{label}: {best * 1e6:.2f} us CPU per one-field edit (best of 5 x {n})")


class _Conn:
    """What the guard reads of a connection."""

    def __init__(self, structures: Structures) -> None:
        self.structures = structures


def guard(path: str) -> None:
    with bitkv.open(path) as store:
        conn = _Conn(Structures(store))

        def handler(c: Any, args: list[bytes]) -> None:
            return None

        args = [b"incr", b"counter"]
        n = 500_000
        timings = {}
        for name, fn in (("bare handler", handler),
                         ("write guard", guarded(handler, (1, 1, 1), True, False)),
                         ("write + strings_only guard", guarded(handler, (1, 1, 1), True, True))):
            call = functools.partial(fn, conn, args)  # type: ignore[arg-type]
            timings[name] = min(timeit.repeat(call, number=n, repeat=7)) / n * 1e9
        base = timings["bare handler"]
        for name, ns in timings.items():
            print(f"{name}: {ns:.0f} ns per call (+{ns - base:.0f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("label", nargs="?", default="this tree")
    ap.add_argument("--edits", type=int, default=50000)
    ap.add_argument("--guard", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bitkv-keyspace-")
    try:
        if args.guard:
            guard(os.path.join(work, "db"))
        else:
            edits(args.label, args.edits, os.path.join(work, "db"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
