"""The cost of the DURABLE mark: sync="always" put rate with and without its pwrite.

Usage: python scripts/bench_durable_mark.py [puts per round] [rounds] [directory]

Rounds alternate (with, without) so that a shared, noisy disk affects both alike; the
medians' ratio is the figure docs/durability.md quotes. The store lives under the given
directory (default ./bench-durable-mark, on the disk being measured), removed at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time

import bitkv
from bitkv import durable

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 5
base = os.path.abspath(sys.argv[3] if len(sys.argv) > 3 else "bench-durable-mark")
real = durable.DurableMarker.record

def run(with_mark: bool) -> float:
    durable.DurableMarker.record = real if with_mark else (  # type: ignore[method-assign]
        lambda self, *a: None)
    shutil.rmtree(base, ignore_errors=True)
    db = bitkv.open(base, sync="always", auto_compact=False)
    v = b"v" * 100
    t = time.perf_counter()
    for i in range(N):
        db.put(b"key%08d" % i, v)
    dt = time.perf_counter() - t
    db.close()
    return N / dt

res = {True: [], False: []}
for r in range(ROUNDS):
    for m in (False, True) if r % 2 else (True, False):
        res[m].append(run(m))
for m in (False, True):
    runs = " ".join(f"{x:8.0f}" for x in res[m])
    label = "with mark   " if m else "without mark"
    print(f"{label} {runs}  median {statistics.median(res[m]):.0f}/s")
ratio = statistics.median(res[True]) / statistics.median(res[False])
print(f"ratio with/without (medians): {ratio:.3f}")
durable.DurableMarker.record = real
shutil.rmtree(base, ignore_errors=True)
