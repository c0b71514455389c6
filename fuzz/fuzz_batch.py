"""Fuzz target: the batch kernel (``bitkv._native.encode_batch``, ``apply_batch``) against
the pure-Python rules.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_batch.py -max_len=4096 -timeout=10 [corpus_dir]

The input is read as batches of operations (put with no expiry, a ttl or an absolute expiry;
delete; sometimes a value the kernel must refuse: a str, a negative or huge expiry). For each:
``encode_batch`` returns None for a batch it does not handle, else exactly the bytes
``record.encode_py`` gives for each record with the batch flags (the store's Python loop);
``KeyDir.apply_batch`` on a KeyDir with the compiled index (the C loop) and on one with a dict
(the Python loop) leaves the same entries, expiries, hidden records, live bytes per segment
and earliest expiry; and ``apply_batch`` on damaged data raises ValueError (never reads
past it). ``tests/test_fuzz_targets.py`` runs ``check_one`` on seeded inputs without atheris;
``scripts/asan_native.sh`` against an ASan+UBSan build.
"""

from __future__ import annotations

import math
import random

from bitkv import keydir, record

try:
    from bitkv._native import IndexMap, apply_batch, encode_batch
except ImportError:  # not built: nothing to fuzz (the test skips)
    IndexMap = apply_batch = encode_batch = None


class _Segment:
    """What KeyDir needs of a segment: live bytes and a record's size read from its bytes."""

    def __init__(self) -> None:
        self.live_bytes = 0
        self.data = bytearray(b"\0" * 40)

    def record_size_at(self, offset: int) -> int:
        return record.HEADER_SIZE + int.from_bytes(self.data[offset + 6 : offset + 8], "little") \
            + int.from_bytes(self.data[offset + 8 : offset + 12], "little")


def reference_encode(ops, first_seq: int, now_ms: int) -> bytes:
    """The bytes Store._commit_batch's Python loop writes for plain ``ops``."""
    last = len(ops) - 1
    parts = []
    for i, (k, v, expiry) in enumerate(ops):
        flags = record.TOMBSTONE if v is None else 0
        if v is None:
            expiry_ms = 0
        elif type(expiry) is int:
            expiry_ms = expiry
        else:
            expiry_ms = now_ms + max(1, round(expiry * 1000)) if expiry else 0
        if last:
            flags |= record.BATCH | (record.BATCH_FIRST if i == 0 else 0) | (
                record.BATCH_LAST if i == last else 0)
        parts.append(record.encode_py(k, v or b"", first_seq + i, expiry_ms, flags))
    return b"".join(parts)


def _state(kd: keydir.KeyDir, segs: list[_Segment]):
    return (sorted(kd.entries.items()), sorted(kd.expiries.items()),
            None if kd.hidden is None else sorted(kd.hidden.items()),
            [s.live_bytes for s in segs], kd.next_expiry)


def check_one(data: bytes) -> None:
    """Run the batches of ``data``; raise AssertionError on any disagreement."""
    if encode_batch is None:
        return
    segs = [_Segment(), _Segment()]
    native = keydir.KeyDir(list(segs))
    model = keydir.KeyDir(list(segs))
    model.entries = {}
    model_segs = [_Segment(), _Segment()]
    model.slots = list(model_segs)
    if data[:1] and data[0] & 1:
        native.hidden, model.hidden = {}, {}
    keys = [b"k%d" % i for i in range(6)]
    pos, seq, now = 1, 1, 10**12
    while pos + 4 <= len(data):
        count = data[pos] % 6 + 1
        pos += 1
        ops: list[tuple[object, object, object]] = []
        for _ in range(count):
            if pos + 3 > len(data):
                break
            a, b, c = data[pos : pos + 3]
            pos += 3
            key: object = keys[a % len(keys)] if a < 200 else data[pos : pos + a % 8]
            value: object = None if b % 5 == 0 else bytes([b]) * (c * (b % 3))
            expiry: object = None
            if b % 7 == 1:
                expiry = c / 10 + (0.0005 if c & 1 else 0.0)
            elif b % 7 == 2:
                expiry = now + c * 1000 - 50_000
            elif b % 7 == 3 and c > 250:  # things the kernel hands back
                expiry = (-5, 2**64, "ttl", math.inf, True)[c % 5]
            elif b % 7 == 4 and c > 250:
                value = "str" if c & 1 else bytearray(b"v")
            ops.append((key, value, expiry))
        if not ops:
            break
        data_out = encode_batch(ops, seq, now)
        plain = all(type(k) is bytes and k and (v is None or (
            type(v) is bytes and (e is None or type(e) is float
                                  or (type(e) is int and 0 <= e < 2**63)))) for k, v, e in ops)
        if not plain or data_out is None:
            assert data_out is None or plain, ops
            if data_out is None:
                assert not plain or any(type(e) is float and not math.isfinite(e)
                                        for _k, v, e in ops if v is not None), ops
            continue
        assert data_out == reference_encode(ops, seq, now), ops
        slot = seq % 2
        seg, mseg = segs[slot], model_segs[slot]
        start = len(seg.data)
        seg.data += data_out
        mseg.data += data_out
        # now_ms: expired records drop out of the index here (recovery's use of the rule).
        apply_now = now if data[0] & 2 else 0
        end = native.apply_batch(seg, slot, start, ops, data_out, apply_now)
        assert end == model.apply_batch(mseg, slot, start, ops, data_out, apply_now) \
            == start + len(data_out)
        assert _state(native, segs) == _state(model, model_segs), ops
        seq += len(ops)
        if len(data_out) > 2:  # damaged data must be refused, not read past
            cut = data_out[: data[pos - 1] % (len(data_out) - 1) + 1]
            try:
                apply_batch(IndexMap(), {}, None, list(segs), seg, slot, 40, ops, cut, 0)
            except ValueError:
                pass
            else:
                raise AssertionError("apply_batch accepted a cut buffer")


def seeds() -> list[bytes]:
    rng = random.Random(29)
    return [b"", bytes(40), bytes([1]) + bytes(range(256)),
            *(rng.randbytes(rng.randint(10, 600)) for _ in range(10)),
            bytes([3]) + b"".join(bytes([5, i % 6, 7 * i + 1, 40]) for i in range(30))]


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
