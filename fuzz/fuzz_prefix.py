"""Fuzz target: the compiled prefix scans (``IndexMap.keys_with_prefix`` and
``count_with_prefix``, through ``KeyDir``) against the reference, a KeyDir over a dict.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_prefix.py -max_len=4096 -timeout=10 [corpus_dir]

The input is read as a program: puts and deletes of keys drawn from the input (so that the
key arena holds dead records, keys put again after a delete, and is rewritten when most of it
is dead), clears, and scans with prefixes that are cut from known keys, extended past them, or
raw bytes (0x00 and 0xff bytes included, the empty prefix too). After every scan both indexes
must list the same keys in the same (insertion) order and count the same number; a prefix
that is not bytes must raise TypeError from the compiled map. atheris instruments the Python
side only; ``scripts/asan_native.sh`` runs this target against an ASan+UBSan build of the
extension. ``tests/test_fuzz_targets.py`` runs ``check_one`` on seeded inputs without atheris.
"""

from __future__ import annotations

import random

from programs import Program

from bitkv.keydir import KeyDir

try:
    from bitkv._native import IndexMap
except ImportError:  # not built: nothing to fuzz (the test skips)
    IndexMap = None

_OPS = 8


def _scan(native: KeyDir, ref: KeyDir, prefix: bytes) -> None:
    got = native.keys_with_prefix(prefix)
    want = ref.keys_with_prefix(prefix)
    assert got == want, (prefix, got, want)
    assert native.count_with_prefix(prefix) == ref.count_with_prefix(prefix) == len(want)


def check_one(data: bytes) -> None:
    """Run the program ``data`` on both indexes; raise AssertionError on any disagreement."""
    if IndexMap is None:
        return
    native, ref = KeyDir(), KeyDir()
    native.entries = IndexMap()
    ref.entries = {}
    program = Program(data)
    take = program.take
    for op, sel, key in program.steps(_OPS, fresh=8, short=24, times=2):
        if op <= 2:
            native.entries[key] = ref.entries[key] = program.pos
        elif op == 3:
            native.entries.pop(key, None)
            ref.entries.pop(key, None)
        elif op == 4:
            _scan(native, ref, key[: sel % (len(key) + 1)])  # a known key's prefix, b"" too
        elif op == 5:
            _scan(native, ref, key + take(1))  # longer than the key: it is not under it
        elif op == 6:
            _scan(native, ref, take(sel % 4))  # raw bytes
        elif sel % 32 == 0:
            native.entries.clear()
            ref.entries.clear()
        else:
            bad = key.decode("latin-1") if sel & 1 else bytearray(key)
            for scan in (native.entries.keys_with_prefix, native.entries.count_with_prefix):
                try:
                    scan(bad)
                except TypeError:
                    pass
                else:
                    raise AssertionError(f"{type(bad).__name__} prefix accepted")
        assert len(native) == len(ref)
    for key in program.keys[-8:]:  # the last keys (a few: each scan reads the whole index)
        _scan(native, ref, key)


def seeds() -> list[bytes]:
    """Programs that fill, delete most, scan, refill and clear, with short and long keys."""
    rng = random.Random(23)
    seeds = [b"", bytes(64), bytes(range(256))]
    for _ in range(12):
        seeds.append(rng.randbytes(rng.randint(20, 1500)))
    fill = b"".join(bytes([0, 8]) + b"key:%04d" % i for i in range(300))
    drop = b"".join(bytes([3 + 8 * 8 + 8 * (i % 20)]) for i in range(200))
    scans = bytes([4 + 8 * 9, 5 + 8 * 10, 6 + 8 * 11, 4 + 8 * 12]) * 10
    seeds += [fill + scans, fill + drop + scans + fill + scans,
              fill + bytes([7]) + scans + bytes([0, 251]) + bytes(600) + scans]
    return seeds


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
