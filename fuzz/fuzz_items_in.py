"""Fuzz target: ``bitkv._native.IndexMap.items_in`` (the keys whose values' high bits are in a
set, KeyDir.entries_in's compiled half) against its reference on a dict.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_items_in.py -max_len=4096 -timeout=10 [corpus_dir]

The input is read as a program: puts (with values read from the input), deletes and re-puts
of keys taken from it, on an ``IndexMap`` and a dict, with an ``items_in(shift, bitmap)``
query now and then, the shift and the bitmap (0..64 bytes, or the KeyDir's 8 KiB one) read
from the input too; every query must return exactly the reference's list (insertion order),
and a shift outside 0..63 or a bitmap that is not bytes must raise ValueError / TypeError
and change nothing. atheris instruments the Python side only; ``scripts/asan_native.sh`` runs
this target against an ASan+UBSan build of the extension. ``tests/test_fuzz_targets.py`` runs
``check_one`` on seeded inputs without atheris.
"""

from __future__ import annotations

import random

from programs import Program

try:
    from bitkv._native import IndexMap
except ImportError:  # not built: nothing to fuzz (the test skips)
    IndexMap = None

_KEYDIR_BITMAP = 8192  # bytes: MAX_SLOTS bits, what KeyDir.entries_in passes


def reference(model: dict[bytes, int], shift: int, bitmap: bytes) -> list[tuple[bytes, int]]:
    """items_in's rule: value >> shift is a bit set in bitmap (bit i: byte i >> 3)."""
    out = []
    for key, value in model.items():
        group = value >> shift
        if group < len(bitmap) * 8 and bitmap[group >> 3] >> (group & 7) & 1:
            out.append((key, value))
    return out


def _query(native, model: dict[bytes, int], shift: int, bitmap: bytes) -> None:
    if 0 <= shift <= 63:
        got = native.items_in(shift, bitmap)
        assert got == reference(model, shift, bitmap), (shift, bitmap[:16])
        return
    try:
        native.items_in(shift, bitmap)
    except ValueError:
        pass
    else:
        raise AssertionError(f"items_in accepted shift {shift}")


def check_one(data: bytes) -> None:
    """Run the program ``data``; raise AssertionError on any disagreement."""
    if IndexMap is None:
        return
    native = IndexMap()
    model: dict[bytes, int] = {}
    program = Program(data)
    take, keys = program.take, program.keys
    while program.pos < len(data):
        op = program.byte()
        kind = op & 7
        if kind <= 3:  # a put, often of a new key; values from few groups, so queries match
            if op & 0x80 or len(keys) < 2:
                program.new_key(short=48, times=2, long_from=240)
            key = keys[(op >> 3) % len(keys)]
            raw = int.from_bytes(take(8).ljust(8, b"\0"), "little")
            value = raw if kind == 3 else (raw & 0xFFFF) | ((raw >> 16) % 5) << (12 + kind * 16)
            native[key] = model[key] = value
        elif kind <= 5:  # a delete, and sometimes the key put back (to the order's end)
            key = keys[(op >> 3) % len(keys)]
            native.pop(key, None)
            model.pop(key, None)
            if kind == 5:
                native[key] = model[key] = op
        elif kind == 6:  # a query
            shift = program.byte() % 70
            if op & 0x80:
                bits = bytearray(_KEYDIR_BITMAP)
                for b in take(4):
                    bits[b] = 0xFF
                bitmap = bytes(bits)
            else:
                bitmap = take((op >> 3) % 17)
            _query(native, model, shift, bitmap)
        else:  # arguments of the wrong types change nothing
            for bad in (bytearray(b"\xff"), "\xff", None):
                try:
                    native.items_in(0, bad)
                except TypeError:
                    pass
                else:
                    raise AssertionError(f"items_in accepted a {type(bad).__name__} bitmap")
        assert len(native) == len(model)
    _query(native, model, 0, b"\xff" * 8)
    assert list(native.items()) == list(model.items())


def seeds() -> list[bytes]:
    """Programs that fill, delete, re-put and query, with short and long keys."""
    rng = random.Random(29)
    seeds = [b"", bytes(64), bytes(range(256))]
    for _ in range(12):
        seeds.append(rng.randbytes(rng.randint(20, 1500)))
    fill = b"".join(bytes([0x80 | (i % 4), 8]) + b"key%05d" % i + rng.randbytes(8)
                    for i in range(200))
    queries = b"".join(bytes([6 | (i << 3), i * 4]) + rng.randbytes(16) for i in range(16))
    keydir_queries = b"".join(bytes([0x86, 44]) + bytes([i, i + 1, 0, 0]) for i in range(8))
    deletes = b"".join(bytes([4 | (i << 3), 5 | (i << 3)]) for i in range(16))
    seeds += [fill + queries, fill + deletes + keydir_queries, fill + bytes([7]) + queries]
    return seeds


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
