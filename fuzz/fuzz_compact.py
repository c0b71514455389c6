"""Fuzz target: compaction's compiled loops (``bitkv._native.copy_live`` and
``switch_copies``) against their Python references (``bitkv.compaction.copy_live``,
``bitkv.keydir.KeyDir.switch_copies`` over a dict), fed corrupt segment bytes.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_compact.py -max_len=8192 -timeout=10 [corpus_dir]

The input's first five bytes choose the parameters (the compaction's time, the output size
limit, the chunk size, the slot, which records the index points at); the rest is the body of
a segment. Both loops are driven over the whole segment as compaction drives them (a new
output on COPY_FULL, ``record.scan`` over what COPY_ODD stops at), the compiled one with an
``IndexMap``, the reference with a dict of the same entries, and every result, every byte
appended to the output buffers and every expired key listed must agree. ``scripts/
asan_native.sh`` runs this target against an ASan+UBSan build of the extension;
``tests/test_fuzz_targets.py`` runs ``check_one`` on seeded inputs without atheris.

The same bytes are then read back as a compaction output by both switches, with the index
pointing keys at their records in an input slot (some at a wrong size, some elsewhere): the
keys switched, the live bytes, the final index and any ValueError (damage) must agree.
"""

from __future__ import annotations

import random
from typing import Any

from bitkv import compaction, keydir
from bitkv import record as rec

try:
    from bitkv._native import IndexMap
    from bitkv._native import copy_live as native_copy_live
    from bitkv._native import switch_copies as native_switch_copies
except ImportError:  # not built: nothing to fuzz (the test skips)
    IndexMap = None
    native_copy_live = None
    native_switch_copies = None

SEGMENT_HEADER = 40
PARAMS = 5


def drive(copy: Any, src: bytes, end: int, slot: int, entries: Any, now_ms: int,
          max_size: int, chunk: int) -> tuple[list[tuple[int, ...]], bytes, bytes, bytes,
                                              list[tuple[bytes, int]]]:
    """Run ``copy`` over ``src[40:end]`` as compaction._copy does; return every call's result
    and what the output buffers and the expired list received ("|" marks a new output)."""
    data, fixed, keys = bytearray(b"D"), bytearray(b"F"), bytearray(b"K")
    expired: list[tuple[bytes, int]] = []
    results: list[tuple[int, ...]] = []
    out, min_seq, max_seq = compaction.NO_OUTPUT, 0, 0
    pos = SEGMENT_HEADER
    while pos < end:
        limit = min(end, pos + chunk)
        while pos < limit:
            before = pos
            result = copy(src, pos, limit, end, slot, entries, now_ms, data, fixed, keys, out,
                          max_size, min_seq, max_seq, expired)
            results.append(tuple(result))
            status, pos, out, _copied, _dropped, min_seq, max_seq = result
            if status == compaction.COPY_FULL:
                out, min_seq, max_seq = SEGMENT_HEADER, 0, 0
                data += b"|"
                fixed += b"|"
                keys += b"|"
            elif status == compaction.COPY_ODD:
                item = next(rec.scan(src, pos, end))
                if isinstance(item, rec.Damage):
                    pos = end if item.tail else item.offset + item.length
                else:
                    pos = item.offset + item.size
            if pos == before and status != compaction.COPY_FULL:
                raise AssertionError(f"no progress at {pos}: {result}")
    return results, bytes(data), bytes(fixed), bytes(keys), expired


def index_for(src: bytes, end: int, slot: int, seed: int) -> dict[bytes, int]:
    """Entries for the records ``record.scan`` finds: most point at a record (the newest
    such wins, as in a real index), some at a wrong place, some keys are absent."""
    rng = random.Random(seed)
    entries: dict[bytes, int] = {}
    for item in rec.scan(src, SEGMENT_HEADER, end):
        if isinstance(item, rec.Damage):
            continue
        r = rng.random()
        exact = keydir.pack(slot, item.offset, item.size)
        if r < 0.6:
            entries[item.key] = exact
        elif r < 0.75:
            entries[item.key] = exact ^ rng.choice((1, 1 << 12, 1 << 44, 4095))
        elif r < 0.8:
            entries.pop(item.key, None)
    return entries


def compare(body: bytes, now_ms: int, max_size: int, chunk: int, slot: int, seed: int) -> None:
    """Drive both loops over a segment of ``body``; raise AssertionError on any difference."""
    if native_copy_live is None or IndexMap is None:
        return
    src = bytes(SEGMENT_HEADER) + body
    end = len(src)
    model = index_for(src, end, slot, seed)
    native = IndexMap()
    for k, v in model.items():
        native[k] = v
    expected = drive(compaction.copy_live, src, end, slot, model, now_ms, max_size, chunk)
    got = drive(native_copy_live, src, end, slot, native, now_ms, max_size, chunk)
    assert got == expected, (got, expected)
    assert list(native.items()) == list(model.items())  # neither loop changes the index
    compare_switch(src, end, slot, model, seed)


class _Output:
    live_bytes = 0


def _switch_all(switch: Any, src: bytes, end: int, chunk: int) -> tuple[Any, ...]:
    """Switch every record of ``src[40:end]`` a chunk at a time; what happened."""
    out = _Output()
    pos, calls = SEGMENT_HEADER, []
    try:
        while pos < end:
            pos, switched = switch(out, pos, chunk)
            calls.append((pos, switched))
    except ValueError:
        calls.append(("ValueError", pos))
        return tuple(calls), None
    return tuple(calls), out.live_bytes


def compare_switch(src: bytes, end: int, slot: int, model: dict[bytes, int], seed: int) -> None:
    """Read ``src`` back as an output at another slot; both switches must agree."""
    if native_switch_copies is None or IndexMap is None:
        return
    rng = random.Random(seed)
    out_slot = (slot + 1) % keydir.MAX_SLOTS
    inputs = frozenset({slot} | {rng.randrange(keydir.MAX_SLOTS) for _ in range(3)}) - {
        out_slot}
    bitmap = bytearray(keydir.MAX_SLOTS // 8)
    for s in inputs:
        bitmap[s >> 3] |= 1 << (s & 7)
    chunk = rng.choice((1, 3, 128, 129, 5000))
    reference = keydir.KeyDir()
    reference.entries = dict(model)
    native = IndexMap()
    for k, v in model.items():
        native[k] = v

    def by_reference(out: _Output, pos: int, n: int) -> tuple[int, int]:
        return reference.switch_copies(src, pos, end, out, out_slot, inputs, n)

    def compiled(out: _Output, pos: int, n: int) -> tuple[int, int]:
        pos, switched, live = native_switch_copies(src, pos, end, native, out_slot,
                                                   bytes(bitmap), n)
        out.live_bytes += live
        return pos, switched

    expected = _switch_all(by_reference, src, end, chunk)
    got = _switch_all(compiled, src, end, chunk)
    assert got == expected, (got, expected)
    assert list(native.items()) == list(reference.entries.items())


def check_one(data: bytes) -> None:
    """Run the case ``data`` describes (see the module doc) through both loops."""
    if len(data) < PARAMS:
        return
    now_ms = (0, 1, 1000, 10_000, 2**64 - 1)[data[0] % 5]
    max_size = SEGMENT_HEADER + int.from_bytes(data[1:3], "little") % 2048
    chunk = (1, 29, 200, 4096, compaction.COPY_CHUNK)[data[3] % 5]
    compare(data[PARAMS:], now_ms, max_size, chunk, data[4] % 16, data[4])


def seeds() -> list[bytes]:
    """Segments of plain records, tombstones, expiring, compressed-flagged and batch records,
    repeated keys, with and without damage."""
    rng = random.Random(23)
    out = [b"", bytes(PARAMS), bytes(PARAMS + 64)]
    for n in range(12):
        body = bytearray()
        for seq in range(1, rng.randint(2, 40)):
            key = b"k%d" % rng.randrange(12)
            flags = rng.choice((0, 0, 0, rec.TOMBSTONE, rec.COMPRESSED, rec.BATCH,
                                rec.BATCH | rec.BATCH_FIRST))
            value = b"" if flags & rec.TOMBSTONE else rng.randbytes(rng.choice((0, 3, 8, 90)))
            expiry = rng.choice((0, 0, 500, 5000, 20_000))
            body += rec.encode(key, value, seq, expiry, flags)
        if n % 3 == 2:
            body[rng.randrange(len(body))] ^= 0x40
        params = bytes([n, rng.randrange(256), rng.randrange(4), n % 5, rng.randrange(256)])
        out.append(params + bytes(body))
    return out


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
