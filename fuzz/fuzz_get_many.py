"""Fuzz target: the batched get kernel (``bitkv._native.Reader.get_many``) on arbitrary index
entries and segment bytes, against fuzz_get.py's model of a single get, key by key.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_get_many.py -max_len=4096 -timeout=10 [corpus_dir]

The input is cut as fuzz_get.py cuts it: segment bytes (mapped into two fake segments, one
closed or unmapped at times) and a program. Each 12-byte step names a key (from the segment
bytes or the program; sometimes a str, empty or too long) and may index it with an arbitrary
entry (slot, offset, size: past the map's end included), give it a TTL, swap a segment or
close a map, then adds the key to the batch being built; some steps send the batch (as a
list, a tuple or a generator, with or without a default), up to 60 keys and so across the
kernel's groups of 16. The result must be, key by key, what the model says one get returns
(the value of an intact plain record of that key inside the map, the default for a key not
indexed, else the fallback's result), and nothing may be read outside a map. A batch also
goes to a reader whose fallback raises: the call must raise for the first key handed over.
``tests/test_fuzz_targets.py`` runs ``check_one`` on seeded inputs without atheris;
``scripts/asan_native.sh`` against an ASan+UBSan build.
"""

from __future__ import annotations

import random

import fuzz_get
from fuzz_get import fallback, model

from bitkv import record

try:
    from bitkv._native import IndexMap, Reader
except ImportError:  # not built: nothing to fuzz (the test skips)
    IndexMap = Reader = None

STEP = 12


class HandedOver(Exception):
    """What the raising fallback raises: the key the kernel handed over."""


def raising_fallback(store: object, key: object, default: object = None) -> object:
    raise HandedOver(key)


def _queryable(key: object) -> bool:
    return type(key) is bytes and 0 < len(key) <= 0xFFFF


def _check_batch(reader, raiser, state, batch, default, form) -> None:
    entries, expiries, slots, plain_ok = state
    args = () if default is None and form == 0 else (default,)
    feed = {0: list, 1: tuple, 2: iter}[form]
    got = reader.get_many(feed(batch), *args)
    want = [model(entries, expiries, slots, k, default, plain_ok) for k in batch]
    assert type(got) is list and len(got) == len(batch), (got, batch)
    for key, g, w in zip(batch, got, want, strict=True):
        # A tag collision (1 in 2**28 per probed slot) hands a key to the fallback that the
        # model would answer: accepted, as in fuzz_get.py, for a key the lookup ran on.
        assert g == w or (_queryable(key) and g == fallback(None, key, default)), (key, g, w)
    handed = [k for k, g in zip(batch, got, strict=True) if g == fallback(None, k, default)]
    try:
        again = raiser.get_many(feed(batch), *args)
    except HandedOver as exc:
        # The kernel hands a group's keys over after serving the rest of the group, so the
        # first key raised is the first handed over (keys before it were all served).
        assert handed and exc.args[0] is handed[0], (exc.args, handed)
    else:
        assert not handed and again == got, (again, got, handed)


def check_one(data: bytes) -> None:
    """Run the program ``data``; raise AssertionError where the kernel and model differ."""
    if Reader is None or len(data) < 2:
        return
    world = fuzz_get.World(data)
    program = world.program
    reader = world.reader()
    raiser = world.reader(raising_fallback)
    state = (world.entries, world.expiries, world.slots, world.plain_ok)
    batch: list[object] = []
    pos = 0
    try:
        while pos + STEP <= len(program):
            flush = program[pos + 9] % 8 == 0 or len(batch) >= 60
            # The index, TTLs and segments change only between batches, so the model of a
            # batch is the state it was sent in.
            op, query = world.step(pos, 10)
            pos += STEP
            batch.append(query)
            if op & 128 and batch and program[pos - 3] & 1:
                batch.append(batch[0])  # a key twice in one batch
            if flush:
                default = op if op & 16 else None
                _check_batch(reader, raiser, state, batch, default, program[pos - 2] % 3)
                batch = []
        _check_batch(reader, raiser, state, batch, None, 0)
        reader.detach()
        tail = [program[pos:] or b"k", "str"]
        assert reader.get_many(tail, 1) == [fallback(None, k, 1) for k in tail]
    finally:
        world.close()


def seeds() -> list[bytes]:
    """fuzz_get.py's seeds, and segments of valid records with long programs of keys indexed
    at, near and past them, sent in batches of up to 60 keys."""
    out = fuzz_get.seeds()
    rng = random.Random(29)
    body = b"".join(record.encode_py(b"key%02d" % i, rng.randbytes(i * 5), i + 1,
                                     0, record.BATCH if i % 3 == 0 else 0) for i in range(12))
    offsets, off = [], 0
    for i in range(12):
        offsets.append((off, record.HEADER_SIZE + 5 + i * 5))
        off += offsets[-1][1]
    for _ in range(8):
        prog = bytearray()
        for _ in range(rng.randint(20, 90)):
            off, size = rng.choice(offsets)
            prog += bytes([rng.choice((3, 3, 3, 1, 19, 7, 2, 11, 35, 99, 243, 131)), 5])
            prog += (off + rng.choice((0, 0, 0, 0, 1))).to_bytes(4, "little")
            prog += (size + rng.choice((0, 0, 0, -1))).to_bytes(2, "little")
            prog += bytes([rng.choice((0, 0, 0, 2, 4)), rng.choice((0,) + (1,) * 30)])
            prog += rng.randbytes(2)
        head = (len(body) + 2).to_bytes(2, "little")
        out.append(head + body + bytes(prog))
    return out


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
