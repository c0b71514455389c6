"""Fuzz target: the compiled record codec (``bitkv._native.encode_record``, ``decode_record``,
``intact_size_at``) against its pure-Python references in ``bitkv.record``.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_codec_native.py -max_len=4096 -timeout=10 [corpus_dir]

The input is a buffer of (possibly damaged) records. Every kernel must return exactly what
its reference returns, or raise the same exception type with the same message: ``decode``
on the whole input and on each slice the input's bytes name, with the right key, another key
and a non-bytes buffer; ``intact_size_at`` at every offset (and with ``end`` cut short,
negative or past the end); ``encode`` of the key and value found at each offset, with seqs,
expiries and flags in and out of range. ``tests/test_fuzz_targets.py`` runs ``check_one`` on
seeded inputs without atheris; ``scripts/asan_native.sh`` against an ASan+UBSan build.
"""

from __future__ import annotations

import random

from bitkv import record

try:
    from bitkv._native import decode_record, encode_record, intact_size_at, record_setup
except ImportError:  # not built: nothing to compare (the test skips)
    decode_record = encode_record = intact_size_at = None
else:
    # record.py does this in native mode; with BITKV_PURE_PYTHON=1 the kernels are still
    # built, and compared here all the same.
    record_setup(record.encode_py, record.decode_py, record.intact_size_at_py, record.Header)


def _outcome(fn, *args):
    try:
        return fn(*args), None
    except Exception as exc:
        return None, (type(exc), str(exc))


def _same(native, py, *args) -> None:
    a, b = _outcome(native, *args), _outcome(py, *args)
    assert a == b, (native.__name__, args[1:], a, b)


def check_one(data: bytes) -> None:
    """Run every comparison on one input; raise AssertionError on any disagreement."""
    if decode_record is None:
        return
    n = len(data)
    for key in (None, data[record.HEADER_SIZE : record.HEADER_SIZE + 8], b"other"):
        _same(decode_record, record.decode_py, data, key)
    _same(decode_record, record.decode_py, bytearray(data))
    _same(decode_record, record.decode_py, memoryview(data), None)
    for pos in range(0, n, max(1, n // 64)):
        for end in (n, pos + 40, pos, -1, n + 5):
            _same(intact_size_at, record.intact_size_at_py, data, pos, end)
        declared = record.HEADER_SIZE + int.from_bytes(data[pos + 6 : pos + 8], "little") + \
            int.from_bytes(data[pos + 8 : pos + 12], "little")
        chunk = data[pos : pos + declared]
        _same(decode_record, record.decode_py, chunk, chunk[record.HEADER_SIZE :][:3] or None)
        key = data[pos : pos + 1 + data[pos] % 32]
        value = data[pos : pos + data[pos - 1] * 3]
        seq = int.from_bytes(data[pos : pos + 9], "little") - 2**70 // (1 + data[pos] % 3)
        flags = data[pos] * 3 - 16
        _same(encode_record, record.encode_py, key, value, seq)
        _same(encode_record, record.encode_py, key, value, abs(seq) % 2**64, pos, flags)
        _same(encode_record, record.encode_py, key, bytearray(value), 1, 2**64, 0)
    _same(intact_size_at, record.intact_size_at_py, data, -3, n)
    _same(intact_size_at, record.intact_size_at_py, "not bytes", 0, 10)


def seeds() -> list[bytes]:
    """Valid records of every kind, a segment body, zeros, garbage."""
    rng = random.Random(21)
    seeds = []
    for flags in (0, record.TOMBSTONE, record.COMPRESSED, record.BATCH | record.BATCH_FIRST):
        value = b"" if flags & record.TOMBSTONE else rng.randbytes(rng.randint(0, 300))
        seeds.append(record.encode_py(b"key-%d" % flags, value, rng.randint(1, 10**6),
                                      rng.choice((0, 10**12)), flags))
    body = b"".join(record.encode_py(b"k%d" % i, b"v" * i, 100 + i) for i in range(8))
    seeds += [body, body[:-5], bytes(40) + body, b"", bytes(100), rng.randbytes(120)]
    return seeds


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
