"""Fuzz target: the record codec (``bitkv.record.decode`` and ``bitkv.record.scan``).

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_record.py -max_len=4096 -timeout=10 [corpus_dir]

The only allowed outcomes: ``decode`` returns a record that re-encodes to exactly the input, or
raises ``ValueError`` (its documented error); ``scan`` terminates and tiles the buffer exactly
with intact records (each of which ``decode`` accepts) and damaged regions. Anything else (any
other exception, a hang, an overlap or gap) is a bug. ``tests/test_fuzz_targets.py`` runs
``check_one`` on a few thousand seeded inputs without atheris.
"""

from __future__ import annotations

import inspect
import random

from bitkv import record

_SCAN_HAS_FIRST_SEQ = "first_seq" in inspect.signature(record.scan).parameters


def _check_decode(data: bytes, expected_key: bytes | None) -> None:
    try:
        header, value = record.decode(data, expected_key)
    except ValueError:
        return
    key = data[record.HEADER_SIZE : record.HEADER_SIZE + header.key_len]
    if expected_key is not None:
        assert key == expected_key, (key, expected_key)
    assert header.key_len > 0
    assert len(value) == header.value_len
    again = record.encode(key, bytes(value), header.seq, header.expiry_ms, header.flags)
    assert again == data, "decode accepted bytes that do not re-encode to themselves"


def _check_scan(data: bytes, start: int, first_seq: int | None) -> None:
    if first_seq is not None and _SCAN_HAS_FIRST_SEQ:
        items = list(record.scan(data, start, first_seq=first_seq))
    else:
        items = list(record.scan(data, start))
    pos = start
    for i, item in enumerate(items):
        assert item.offset == pos, f"item {i} at {item.offset}, expected {pos}"
        if isinstance(item, record.Damage):
            assert item.length > 0
            if item.tail:
                assert i == len(items) - 1 and pos + item.length == len(data)
            pos += item.length
        else:
            assert item.size >= record.HEADER_SIZE + 1
            chunk = data[item.offset : item.offset + item.size]
            header, _value = record.decode(chunk, item.key)  # scan said intact: it must be
            assert (header.flags, header.seq, header.expiry_ms, header.value_len) == (
                item.flags, item.seq, item.expiry_ms, item.value_len)
            pos += item.size
    assert pos == max(start, len(data)) or (not items and start >= len(data)), (pos, len(data))


def check_one(data: bytes) -> None:
    """Run every check on one input; raise AssertionError (or anything else) on a bug."""
    _check_decode(data, None)
    if len(data) > record.HEADER_SIZE:
        key_len = int.from_bytes(data[6:8], "little")
        _check_decode(data, data[record.HEADER_SIZE : record.HEADER_SIZE + key_len])
        _check_decode(data, b"some-other-key")
    _check_scan(data, 0, None)
    if data:
        start = data[0] % (len(data) + 1)
        first_seq = int.from_bytes(data[-2:], "little") if len(data) > 1 else None
        _check_scan(data, start, first_seq)


def seeds() -> list[bytes]:
    """A starting corpus: valid records of every kind, a segment body, zeros, garbage."""
    rng = random.Random(7)
    seeds = []
    for flags in (0, record.TOMBSTONE, record.COMPRESSED, record.BATCH | record.BATCH_FIRST,
                  record.BATCH, record.BATCH | record.BATCH_LAST):
        key = b"key-%d" % flags
        value = b"" if flags & record.TOMBSTONE else rng.randbytes(rng.randint(0, 300))
        seeds.append(record.encode(key, value, rng.randint(1, 10**6), rng.choice((0, 10**12)),
                                   flags))
    body = b"".join(record.encode(b"k%d" % i, b"v" * i, 100 + i) for i in range(8))
    seeds += [body, body[:-5], bytes(40) + body, b"", bytes(100), rng.randbytes(120)]
    return seeds


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
