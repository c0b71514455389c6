"""Measure backups: full (hard links, copies), incremental, and how long writers wait.

    python scripts/bench_backup.py [--mib 256] [--dir /tmp/bench-backup]

Builds a store of about ``--mib`` MiB (16 MiB segments, 1 KiB values), then times a full
backup with hard links, one with copies, and an incremental one after 8 MiB more writes.
Meanwhile a thread puts continuously; the report gives the longest put during each backup,
and how long the backup held the writer lock (the pin: one open per segment).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time

import bitkv
from bitkv import backup as backup_mod


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="bench-backup-")
    os.makedirs(base, exist_ok=True)
    store = os.path.join(base, "store")
    value = os.urandom(1024)
    with bitkv.open(store, max_segment_size=16 * 2**20, auto_compact=False) as db:
        n = args.mib * 1024
        for i in range(n):
            db.put(b"key:%09d" % i, value)
        db.sync()
        pins: list[float] = []
        pin = db._pin_for_backup

        def timed_pin() -> backup_mod.Pin:
            started = time.perf_counter()
            got = pin()
            pins.append(time.perf_counter() - started)
            return got

        db._pin_for_backup = timed_pin  # type: ignore[method-assign]
        stop = threading.Event()
        worst = [0.0]

        def writer() -> None:
            i = 0
            while not stop.is_set():
                started = time.perf_counter()
                db.put(b"hot:%06d" % (i % 100000), value)
                worst[0] = max(worst[0], time.perf_counter() - started)
                i += 1
                if i % 64 == 0:
                    time.sleep(0.001)

        worst[0] = 0.0
        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.5)
        stop.set()
        thread.join()
        stop.clear()
        print(f"{'no backup':17} {0.5:7.2f} s  (the baseline)  slowest put "
              f"{worst[0] * 1000:6.2f} ms")
        for label, kwargs in (("full, hard links", {}), ("full, copies", {"link": False}),
                              ("incremental", {"incremental": True})):
            if label == "incremental":
                for i in range(8 * 1024):
                    db.put(b"more:%09d" % i, value)
            dest = os.path.join(base, "full" if label != "full, copies" else "copy")
            if label == "full, hard links" and os.path.exists(dest):
                shutil.rmtree(dest)
            worst[0] = 0.0
            thread = threading.Thread(target=writer)
            thread.start()
            report = db.backup(dest, **kwargs)
            stop.set()
            thread.join()
            stop.clear()
            print(f"{label:17} {report.seconds:7.2f} s  segments {report.segments:3}  "
                  f"linked {report.linked:3}  copied {report.copied:3} "
                  f"({report.bytes_copied / 2**20:7.1f} MiB)  reused {report.reused:3}  "
                  f"lock held {pins[-1] * 1000:6.2f} ms  slowest put {worst[0] * 1000:6.2f} ms")
    if args.dir is None:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
