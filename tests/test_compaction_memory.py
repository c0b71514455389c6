"""Compaction streams: the memory it adds is bounded by ``compaction.memory_bound``, whatever
the store's size (issue 19).

Measured as scripts/bench_compaction.py --scale does: ``RssAnon`` (anonymous resident memory,
not the mapped segments) sampled every millisecond during ``compact()``, minus its value just
before, in a fresh process so nothing else the test run allocated or freed blurs it. The
store is sized to break the bound with the compaction before streaming, which kept a tuple
per copied record and every output's hint items until the keydir switch: on 240,000 keys it
added 61 MiB of RssAnon, against a bound of 32.25 MiB for 256 KiB segments, and 122 MiB on
twice the keys. The streamed compaction adds under 1 MiB on either (measured on the machine
of docs/compaction.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bitkv import compaction

SEGMENT = 256 * 1024

CHILD = r"""
import gc, json, sys, threading, time
import bitkv

keys, segment, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def rss_anon():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

with bitkv.open(path, sync="never", auto_compact=False, max_segment_size=segment) as db:
    for value in (b"aaaaaaaa", b"bbbbbbbb"):  # every key twice: half the log is garbage
        for i in range(keys):
            db.put(b"k%015d" % i, value)
    db.delete(b"k%015d" % 0)
    db.put(b"k%015d" % 1, b"c", ttl=1000)
    gc.collect()
    base = rss_anon()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_anon())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        summary = db.compact()
    finally:
        stop.set()
        sampler.join()
    peak[0] = max(peak[0], rss_anon())
    ok = (db.get(b"k%015d" % 2) == b"bbbbbbbb" and db.get(b"k%015d" % 0) is None
          and db.get(b"k%015d" % 1) == b"c")
print(json.dumps({"extra": peak[0] - base, "summary": summary, "ok": ok}))
"""


def compact_in_child(tmp_path, keys: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(keys), str(SEGMENT),
                          str(tmp_path / f"db{keys}")], check=True, capture_output=True,
                         text=True, timeout=300).stdout
    result: dict = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_compaction_memory_is_bounded_whatever_the_store_size(tmp_path):
    bound = compaction.memory_bound(SEGMENT)
    extra = {}
    for keys in (240_000, 480_000):
        result = compact_in_child(tmp_path, keys)
        summary = result["summary"]
        assert result["ok"]
        assert summary["keys_kept"] == keys - 1 and summary["segments_out"] > 1
        extra[keys] = result["extra"]
        assert extra[keys] < bound, (keys, extra[keys], bound)
    # It does not grow with the store: twice the keys, (nearly) the same memory.
    assert extra[480_000] < extra[240_000] + 4 * 2**20, extra
