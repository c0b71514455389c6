"""CPU time per element of the RDB codec's collection types (issue 17), in memory.

    python scripts/bench_rdb_types.py [--members 1000000] [--rounds 3]
    BITKV_PURE_PYTHON=1 python scripts/bench_rdb_types.py

Writes one set and one sorted set of ``--members`` elements (``member:<i>``, about 13 bytes;
scores ``i / 2``) with ``RDBWriter.add_set`` / ``add_zset`` into a ``BytesIO``, reads them
back with ``read_rdb`` (decoded, then skipped), and reads 100,000 listpack sets of 8 members
(type 20, as Redis 7.2 writes small sets). Figures are process CPU time (``time.process_time``)
per element, the median of ``--rounds``: the machine is shared, and CPU time is what the codec
costs whatever else runs.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "fuzz"))

import fuzz_rdb_types  # the listpack encoder

import bitkv
from bitkv import rdb


def cpu(fn: Callable[[], object]) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def one_round(n: int) -> dict[str, float]:
    f = io.BytesIO()
    writer = rdb.RDBWriter(f, repl_id="0" * 40, repl_offset=0)
    out = {
        "write add_set": cpu(lambda: writer.add_set(
            b"s", n, (b"member:%d" % i for i in range(n)), 0)) / n,
        "write add_zset": cpu(lambda: writer.add_zset(
            b"z", n, ((b"member:%d" % i, i / 2) for i in range(n)), 0)) / n,
    }
    writer.finish()
    data = f.getvalue()
    out["read set+zset, decoded"] = cpu(lambda: rdb.read_rdb(
        io.BytesIO(data), on_string=print, on_set=lambda *a: None,
        on_zset=lambda *a: None)) / (2 * n)
    out["read set+zset, skipped"] = cpu(lambda: rdb.read_rdb(
        io.BytesIO(data), on_string=print)) / (2 * n)
    blob = fuzz_rdb_types.enc_str(fuzz_rdb_types.listpack([b"member-%d" % i for i in range(8)]))
    keys = 100_000
    body = b"REDIS0010\xfe\x00" + b"".join(
        b"\x14" + fuzz_rdb_types.enc_str(b"k%d" % k) + blob for k in range(keys)) + \
        b"\xff" + bytes(8)
    out["read listpack sets (8 members)"] = cpu(lambda: rdb.read_rdb(
        io.BytesIO(body), on_string=print, on_set=lambda *a: None)) / (8 * keys)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = [one_round(args.members) for _ in range(args.rounds)]
    print(f"bitkv {bitkv.IMPLEMENTATION}, {args.members} members, median of {args.rounds} "
          f"rounds, CPU time per element")
    for name in rounds[0]:
        print(f"  {name:32} {statistics.median(r[name] for r in rounds) * 1e6:6.2f} us")


if __name__ == "__main__":
    main()
