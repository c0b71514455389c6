"""Fuzz target: the compiled index map (``bitkv._native.IndexMap``) against a dict.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_indexmap.py -max_len=4096 -timeout=10 [corpus_dir]

The input is read as a program of operations (set, get, pop, delete, contains, clear,
iterate, iterate-while-mutating, bad keys and values) on keys drawn from the input itself;
each runs on an ``IndexMap`` and on a dict, and their results and exception types must
agree (a non-bytes key or a value outside 0..2**64-1 must raise for the IndexMap). atheris
instruments the Python side only; ``scripts/asan_native.sh`` runs this target against an
ASan+UBSan build of the extension. ``tests/test_fuzz_targets.py`` runs ``check_one`` on seeded
inputs without atheris.
"""

from __future__ import annotations

import random

from programs import Program

try:
    from bitkv._native import IndexMap
except ImportError:  # not built: nothing to fuzz (the test skips)
    IndexMap = None

_OPS = 12


def _outcome(fn, m):
    try:
        return fn(m), None
    except Exception as exc:
        return None, type(exc)


def _run(native, model: dict[bytes, int], op: int, key: bytes, value: int) -> None:
    """One operation on both maps."""

    def both(fn):
        a, b = _outcome(fn, native), _outcome(fn, model)
        assert a == b, (op, key, a, b)

    if op <= 2:
        both(lambda m: m.__setitem__(key, value))
    elif op == 3:
        both(lambda m: m.get(key))
    elif op == 4:
        both(lambda m: m.get(key, -1))
    elif op == 5:
        both(lambda m: m[key])
    elif op == 6:
        both(lambda m: m.pop(key, None))
    elif op == 7:
        both(lambda m: m.__delitem__(key))
    elif op == 8:
        both(lambda m: key in m)
    elif op == 9:
        if value % 16 == 0:
            both(lambda m: m.clear())
        else:
            assert list(native.items()) == list(model.items())  # insertion order, as dict
    elif op == 10:
        bad_key = key.decode("latin-1") if value & 1 else bytearray(key)
        assert _outcome(lambda m: m.get(bad_key), native)[1] is TypeError
        bad_value = -1 - value if value & 2 else value + 2**64
        assert _outcome(lambda m: m.__setitem__(key, bad_value), native)[1] is OverflowError
    else:
        it = iter(native)
        if next(it, None) is not None:
            if key in model:
                native[key] = model[key] = value
                list(it)  # an overwrite: iteration goes on
            else:
                native[key] = model[key] = value
                assert _outcome(lambda _m: next(it), native)[1] is RuntimeError


def check_one(data: bytes) -> None:
    """Run the program ``data`` on both maps; raise AssertionError on any disagreement."""
    if IndexMap is None:
        return
    native = IndexMap()
    model: dict[bytes, int] = {}
    program = Program(data)
    for op, _choice, key in program.steps(_OPS, fresh=6, short=64, times=3):
        value = int.from_bytes(program.take(8).ljust(8, b"\0"), "little")
        _run(native, model, op, key, value)
        assert len(native) == len(model)
    assert list(native) == list(model)


def seeds() -> list[bytes]:
    """Programs that fill, overwrite, delete and clear, with short and long keys."""
    rng = random.Random(17)
    seeds = [b"", bytes(64), bytes(range(256))]
    for _ in range(12):
        seeds.append(rng.randbytes(rng.randint(20, 1500)))
    fill = b"".join(bytes([0, 8]) + b"key%05d" % i + bytes(8) for i in range(200))
    seeds += [fill, fill + bytes([6 * _OPS + 6]) * 100, fill + bytes([251, 255]) + bytes(800)]
    return seeds


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
