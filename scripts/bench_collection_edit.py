#!/usr/bin/env python3
"""CPU time of one collection edit (a one-field HSET's storage work), for an A/B of trees.

    PYTHONPATH=TREE python scripts/bench_collection_edit.py LABEL [--edits 50000]

Runs ``Structures.edit`` on a hash of 1024 fields, one field put per edit, in a temporary
store; prints the best of 5 rounds in CPU microseconds per edit. Run it with two trees'
PYTHONPATH one after the other (interleaved, several times) to see what a change to the
write path costs (docs/cluster.md, "Keys holding collections", WATCH's versions).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import bitkv
from bitkv.structures import HashIndex, Structures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("label")
    ap.add_argument("--edits", type=int, default=50000)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bitkv-edit-")
    try:
        with bitkv.open(os.path.join(work, "db")) as store:
            s = Structures(store)
            best = float("inf")
            for _round in range(5):
                started = time.process_time()
                for i in range(args.edits):
                    with s.edit(b"h", HashIndex) as e:
                        e.put(b"f%d" % (i & 1023), b"v")
                best = min(best, (time.process_time() - started) / args.edits)
        print(f"{args.label}: {best * 1e6:.2f} us CPU per one-field edit "
              f"(best of 5 x {args.edits})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
