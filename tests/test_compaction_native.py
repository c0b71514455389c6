"""The compiled loops of compaction (bitkv/native/compact.c) against their Python references
(``compaction.copy_live``, ``KeyDir.switch_copies``): the same results, output bytes, expired
keys and switched keys on any segment bytes (hypothesis, through fuzz/fuzz_compact.py); the
same compacted files, byte for byte, from a store compacted in each mode; reference counts
exact and memory flat over millions of calls."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitkv import compaction, keydir
from bitkv import record as rec
from bitkv import segment as seg_mod
from bitkv.crc import crc32c

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "fuzz"))
import fuzz_compact

needs_native = pytest.mark.skipif(fuzz_compact.native_copy_live is None,
                                  reason="the extension is not built")

FLAGS = (0, rec.TOMBSTONE, rec.COMPRESSED, rec.ENCRYPTED, rec.BATCH,
         rec.BATCH | rec.BATCH_FIRST, rec.BATCH | rec.BATCH_LAST)

record_spec = st.tuples(
    st.integers(0, 15),                               # key
    st.sampled_from(FLAGS),
    st.sampled_from((0, 1, 8, 100, 4100)),            # value length (4100: no size hint)
    st.sampled_from((0, 0, 0, 999, 1000, 1001, 10**6)),  # expiry_ms
    st.sampled_from((None, None, None, None, 0, 4, 6, 29, -1)),  # a byte to damage
)


@needs_native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(record_spec, max_size=40), now_ms=st.sampled_from((0, 1000, 2**64 - 1)),
       max_size=st.integers(40, 6000), chunk=st.sampled_from((1, 50, 700, 65536)),
       slot=st.integers(0, 65535), seed=st.integers(0, 2**16), tail=st.binary(max_size=40))
def test_compiled_loop_matches_the_reference(records, now_ms, max_size, chunk, slot, seed,
                                             tail):
    body = bytearray()
    for seq, (k, flags, value_len, expiry, damage) in enumerate(records, 1):
        value = b"" if flags & rec.TOMBSTONE else bytes([seq % 256]) * value_len
        data = bytearray(rec.encode(b"key%d" % k, value, seq, expiry, flags))
        if damage is not None:
            data[damage] ^= 0x10
        body += data
    fuzz_compact.compare(bytes(body + tail), now_ms, max_size, chunk, slot, seed)


@contextlib.contextmanager
def _runs(uniform_run: int, min_records: int) -> Iterator[None]:
    """The Python loops (copy_live, KeyDir.switch_copies) with other thresholds for handling
    whole runs of one record size."""
    saved = compaction.UNIFORM_RUN, compaction.RUN_MIN_RECORDS, keydir.SWITCH_RUN_MIN_RECORDS
    compaction.UNIFORM_RUN, compaction.RUN_MIN_RECORDS = uniform_run, min_records
    keydir.SWITCH_RUN_MIN_RECORDS = min_records
    try:
        yield
    finally:
        (compaction.UNIFORM_RUN, compaction.RUN_MIN_RECORDS,
         keydir.SWITCH_RUN_MIN_RECORDS) = saved


# Records of one shape (5-byte keys, one value length), with a few of another length, other
# flags (a tombstone has no value: another shape), expiries and damaged bytes among them.
run_spec = st.tuples(
    st.integers(0, 15),                                 # key
    st.sampled_from((0,) * 12 + FLAGS[1:]),             # flags
    st.sampled_from((False,) * 12 + (True,)),           # a value one byte longer
    st.sampled_from((0, 0, 0, 0, 999, 1000, 1001)),     # expiry_ms
    # A byte to damage, or a reserved byte or unknown flag set under a valid CRC.
    st.sampled_from((None,) * 16 + (0, 4, 5, 6, 8, 11, 12, 27, 29, -1, "reserved", "flag")),
    st.sampled_from((0,) * 4 + (1,)),                   # a seq of 0
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(run_spec, max_size=80), value_len=st.sampled_from((0, 1, 8, 100, 4100)),
       now_ms=st.sampled_from((0, 1000, 2**64 - 1)),
       max_size=st.one_of(st.integers(40, 300), st.integers(40, 3000)),
       chunk=st.sampled_from((1, 50, 700, 65536)), slot=st.integers(0, 65535),
       seed=st.integers(0, 2**16), tail=st.binary(max_size=40), distinct=st.booleans())
def test_whole_runs_give_what_record_by_record_gives(records, value_len, now_ms, max_size,
                                                     chunk, slot, seed, tail, distinct):
    """The Python loops' whole-run paths (compaction._copy_run, keydir._switch_run, for
    records of one size in a row) against copy_live record by record, and both loops
    against the compiled ones: the same results, output bytes, expired keys, switched keys
    and index, on runs cut short by every way a run can end, with keys repeated or not."""
    body = bytearray()
    for seq, (k, flags, longer, expiry, damage, zero_seq) in enumerate(records, 1):
        value = b"" if flags & rec.TOMBSTONE else bytes([seq % 256]) * (value_len + longer)
        key = b"k%04d" % seq if distinct else b"key%02d" % k
        data = bytearray(rec.encode(key, value, 0 if zero_seq else seq, expiry, flags))
        if damage in ("reserved", "flag"):
            data[5 if damage == "reserved" else 4] |= 0x80
            data[:4] = crc32c(data[4:]).to_bytes(4, "little")
        elif damage is not None:
            data[damage] ^= 0x10
        body += data
    src = bytes(fuzz_compact.SEGMENT_HEADER) + bytes(body + tail)
    end = len(src)
    model = fuzz_compact.index_for(src, end, slot, seed)
    with _runs(10**9, 10**9):
        expected = fuzz_compact.drive(compaction.copy_live, src, end, slot, model, now_ms,
                                      max_size, chunk)
    with _runs(1, 2):
        got = fuzz_compact.drive(compaction.copy_live, src, end, slot, model, now_ms,
                                 max_size, chunk)
        assert got == expected
        fuzz_compact.compare(bytes(body + tail), now_ms, max_size, chunk, slot, seed)


def test_a_whole_run_is_taken_and_ends_where_the_record_loop_would_stop():
    """The run path is used (regression: the run's size was read at the wrong header
    offset, so no run was ever taken and nothing showed it), and stops before the first
    record of another size, damage, and the first live record that does not fit."""
    records = [rec.encode(b"key%03d" % i, b"v" * 8, i + 1) for i in range(200)]
    src = bytearray(bytes(40) + b"".join(records))
    size = len(records[0])
    damaged = 40 + 150 * size + 30
    src[damaged] ^= 1  # record 150's key
    entries = {b"key%03d" % i: keydir.pack(3, 40 + i * size, size) for i in range(0, 200, 3)}
    calls: list[tuple[int, int]] = []
    real = compaction._copy_run

    def spy(view: memoryview, pos: int, *rest: Any) -> tuple[int, ...]:
        result = real(view, pos, *rest)
        calls.append((pos, result[0]))
        return result

    def copy(max_size: int) -> tuple[int, ...]:
        out = bytearray(), bytearray(), bytearray()
        return compaction.copy_live(bytes(src), 40, len(src), len(src), 3, entries, 0, *out,
                                    40, max_size, 0, 0, [])

    compaction._copy_run = spy
    try:
        assert copy(1 << 20)[:5] == (compaction.COPY_ODD, damaged - 30, 40 + 50 * size, 50,
                                     100)
        # Records 8.. are one run: it ends at the damaged record 150, judged alone.
        assert calls == [(40 + 8 * size, 40 + 150 * size)]
        calls.clear()
        # Room for 20 records: the 21st live one (record 60) ends the run and the call.
        assert copy(40 + 20 * size)[:5] == (compaction.COPY_FULL, 40 + 60 * size,
                                            40 + 20 * size, 20, 40)
        assert calls == [(40 + 8 * size, 40 + 60 * size)]
    finally:
        compaction._copy_run = real


@needs_native
def test_compiled_loop_rejects_arguments_that_would_read_outside_the_buffer():
    from bitkv._native import IndexMap
    from bitkv._native import copy_live as native

    src = bytes(40) + rec.encode(b"k", b"v", 1)
    entries = IndexMap()
    entries[b"k"] = keydir.pack(0, 40, len(src) - 40)
    args = [src, 40, len(src), len(src), 0, entries, 0, bytearray(), bytearray(),
            bytearray(), 40, 4096, 0, 0, []]

    def call(**changes: object) -> object:
        a = list(args)
        for name, value in changes.items():
            a[("src", "pos", "limit", "end", "slot").index(name)] = value
        return native(*a)

    with pytest.raises(ValueError):
        call(end=len(src) + 1, limit=len(src) + 1)  # past the buffer
    with pytest.raises(ValueError):
        call(limit=len(src) + 1)  # past end
    with pytest.raises(ValueError):
        call(pos=-1)
    with pytest.raises(ValueError):
        call(slot=1 << 16)
    with pytest.raises(TypeError):
        native(*args[:5], {}, *args[6:])  # a dict: the Python loop's job
    assert call() == (compaction.COPY_DONE, len(src), len(src), 1, 0, 1, 1)


# -- the same files in both modes ------------------------------------------------------------

BUILD = r"""
import sys, bitkv
path = sys.argv[1]
now = [1_700_000_000.0]
db = bitkv.open(path, sync="never", auto_compact=False, max_segment_size=4096,
                clock=lambda: now[0])
for round in range(6):
    for i in range(60):
        k = b"key:%d" % ((i * 7 + round) % 50)
        if i % 11 == 0:
            db.delete(k)
        elif i % 5 == 0:
            db.put(k, b"t" * (i + round), ttl=2)
        else:
            db.put(k, bytes([65 + round]) * (i % 40 + 60))
    with db.batch() as b:
        for i in range(5):
            b.put(b"batch:%d" % i, b"b%d" % round)
    now[0] += 1
db.close()
"""

COMPACT = r"""
import json, sys, bitkv
db = bitkv.open(sys.argv[1], sync="never", auto_compact=False, max_segment_size=4096,
                clock=lambda: 1_700_000_002.5)
assert bitkv.IMPLEMENTATION == sys.argv[2], bitkv.IMPLEMENTATION
summary = db.compact()
contents = {k.hex(): db[k].hex() for k in sorted(db.keys())}
db.close()
print(json.dumps({"summary": summary, "contents": contents}))
"""


def _masked(path: str) -> bytes:
    """A file's bytes with what is random in them (a nonce, and the CRCs over it) zeroed."""
    with open(path, "rb") as fh:
        data = bytearray(fh.read())
    if path.endswith(seg_mod.DATA_SUFFIX):
        data[28:40] = bytes(12)  # segment header: nonce, header CRC (docs/format.md)
    elif path.endswith(seg_mod.HINT_SUFFIX):
        data[16:24] = bytes(8)  # hint header: nonce
        data[-4:] = bytes(4)  # the hint's CRC
    return bytes(data)


def _compact_in(path: str, pure: bool) -> dict[str, object]:
    env = dict(os.environ)
    env.pop("BITKV_PURE_PYTHON", None)
    if pure:
        env["BITKV_PURE_PYTHON"] = "1"
    out = subprocess.run([sys.executable, "-c", COMPACT, path, "python" if pure else "native"],
                         env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    result: dict[str, object] = json.loads(out)
    return result


@needs_native
def test_both_modes_write_the_same_compacted_files(tmp_path):
    base = str(tmp_path / "base")
    subprocess.run([sys.executable, "-c", BUILD, base], check=True)
    # Damage one record of a sealed segment: both loops hand it to record.scan.
    first = sorted(n for n in os.listdir(base) if n.endswith(seg_mod.DATA_SUFFIX))[0]
    with open(os.path.join(base, first), "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with open(os.path.join(base, first), "rb") as fh:
        damaged = fh.read()
    assert any(isinstance(item, rec.Damage) for item in rec.scan(damaged, 40, len(damaged)))
    results, files = {}, {}
    for mode in ("native", "python"):
        path = str(tmp_path / mode)
        shutil.copytree(base, path)
        results[mode] = _compact_in(path, pure=mode == "python")
        files[mode] = {name: _masked(os.path.join(path, name)) for name in sorted(os.listdir(path))
                       if name.endswith((seg_mod.DATA_SUFFIX, seg_mod.HINT_SUFFIX))}
    for r in results.values():
        r["summary"].pop("seconds")  # type: ignore[attr-defined]
    assert results["native"] == results["python"]
    summary = results["native"]["summary"]
    assert summary["segments_out"] > 1 and summary["records_dropped"] > 0  # type: ignore[index]
    assert files["native"].keys() == files["python"].keys()
    for name in files["native"]:
        assert files["native"][name] == files["python"][name], name


# -- reference counts and leaks ----------------------------------------------------------------

def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


@needs_native
@pytest.mark.slow
def test_no_leak_over_millions_of_calls():
    from bitkv._native import IndexMap, switch_copies
    from bitkv._native import copy_live as native

    # live, dead, expired and too-big-for-the-output records, then damage: every path
    body = b"".join(rec.encode(b"key%d" % i, b"v" * (i * 9), i + 1, 500 if i % 4 == 1 else 0)
                    for i in range(8))
    src = bytes(40) + body + b"\xff" * 30
    end = len(src)
    entries = IndexMap()
    pos = 40
    for i in range(8):
        size = rec.HEADER_SIZE + 4 + i * 9
        if i % 3:
            entries[b"key%d" % i] = keydir.pack(3, pos, size)
        pos += size
    data, fixed, keys = bytearray(), bytearray(), bytearray()
    expired: list[tuple[bytes, int]] = []
    inputs = bytes([1 << 3]) + bytes(8191)  # slot 3
    switch_end = 40 + len(body)
    first = keydir.pack(3, 40, rec.HEADER_SIZE + 4)

    def cycle(calls: int) -> None:
        for n in range(calls):
            out = 40 if n % 2 else 300
            native(src, 40, end, end, 3, entries, 1000, data, fixed, keys, out, 400, 0, 0,
                   expired)
            # the switch: key1 points into slot 3, is switched to slot 4, and back
            entries[b"key1"] = keydir.pack(3, 40 + rec.HEADER_SIZE + 4, rec.HEADER_SIZE + 13)
            switch_copies(src, 40, switch_end, entries, 4, inputs, 3 + n % 8)
            try:
                switch_copies(src, 40, end, entries, 4, inputs, 100)  # damage at the end
            except ValueError:
                pass
            entries[b"key0"] = first
            if n % 64 == 0:
                data.clear()
                fixed.clear()
                keys.clear()
                expired.clear()
        data.clear()
        fixed.clear()
        keys.clear()
        expired.clear()

    cycle(10_000)
    refs = [sys.getrefcount(x) for x in (src, entries, data, fixed, keys, expired, inputs)]
    gc.collect()
    rss = [_rss_kib()]
    tracemalloc.start()
    traced = []
    for _ in range(10):  # 10 x 100k x 3 calls: 3M calls
        cycle(100_000)
        gc.collect()
        traced.append(tracemalloc.get_traced_memory()[0])
        rss.append(_rss_kib())
    tracemalloc.stop()
    assert [sys.getrefcount(x) for x in (src, entries, data, fixed, keys, expired,
                                         inputs)] == refs
    assert max(traced[2:]) - min(traced[2:]) < 64 * 1024, traced
    if "libasan" not in os.environ.get("LD_PRELOAD", ""):  # ASan's quarantine holds freed memory
        assert rss[-1] - rss[1] < 4 * 1024, rss


def test_the_python_switch_copies_a_bounded_run_of_large_records():
    """A run's bytes are copied once: for large records the run is cut at
    SWITCH_RUN_MAX_BYTES, not max_keys records (2,048 records of 5 KB are 10 MB)."""
    records = [rec.encode(b"k%04d" % i, b"v" * 5000, i + 1) for i in range(2048)]
    size = len(records[0])
    buf = bytes(40) + b"".join(records)
    kd = keydir.KeyDir()
    kd.entries = {b"k%04d" % i: keydir.pack(1, 40 + i * size, size) for i in range(2048)}

    class Output:
        live_bytes = 0

    out = Output()
    tracemalloc.start()
    try:
        pos, switched = kd.switch_copies(buf, 40, len(buf), out, 2, frozenset({1}), 2048)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (pos, switched, out.live_bytes) == (len(buf), 2048, 2048 * size)
    assert kd.entries[b"k2047"] == keydir.pack(2, 40 + 2047 * size, size)
    assert peak < 3 * keydir.SWITCH_RUN_MAX_BYTES
