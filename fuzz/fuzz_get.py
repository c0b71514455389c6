"""Fuzz target: the get kernel (``bitkv._native.Reader.get``) on arbitrary index entries and
segment bytes, against a Python model of what it may serve.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_get.py -max_len=4096 -timeout=10 [corpus_dir]

The input is cut into segment bytes (mapped into two fake segments, one closed or unmapped at
times) and a program of gets: each names a key (from the input, sometimes a str, empty or too
long), an index entry (slot, offset, size: anything, including past the map's end), whether the
key has a TTL, and a default. The kernel must return exactly what the model says: the value of
an intact plain record of that key which the entry's size hint covers inside the map, the
default for a key not indexed, and otherwise the fallback's result (the store's Python get),
never a read outside the map. ``tests/test_fuzz_targets.py`` runs ``check_one`` on seeded
inputs without atheris; ``scripts/asan_native.sh`` against an ASan+UBSan build.
"""

from __future__ import annotations

import mmap
import random

from bitkv import record

try:
    from bitkv._native import IndexMap, Reader
except ImportError:  # not built: nothing to fuzz (the test skips)
    IndexMap = Reader = None


class SlottedSegment:
    __slots__ = ("__weakref__", "mm")

    def __init__(self, mm: object) -> None:
        self.mm = mm


class PlainSegment:  # no __slots__: the kernel reads ``mm`` with getattr
    def __init__(self, mm: object) -> None:
        self.mm = mm


class FakeStore:
    pass


def fallback(store: object, key: object, default: object = None) -> object:
    """The stand-in for Store.get a Reader is given: says that the key was handed over."""
    return ("fallback", key, default)


def model(entries, expiries, slots, key, default, plain_ok):
    """What the get kernel must return for ``key`` (fuzz_get_many.py uses it per key too)."""
    if type(key) is not bytes or not 0 < len(key) <= 0xFFFF:
        return fallback(None, key, default)
    entry = entries.get(key)
    if entry is None:
        return default
    if key in expiries:
        return fallback(None, key, default)
    size, slot, offset = entry & 0xFFF, entry >> 44, (entry >> 12) & 0xFFFFFFFF
    seg = slots[slot] if slot < len(slots) else None
    mm = getattr(seg, "mm", None)
    if size < record.HEADER_SIZE or not plain_ok or mm is None or mm.closed:
        return fallback(None, key, default)
    if offset + size > len(mm):
        return fallback(None, key, default)
    buf = mm[offset : offset + size]
    _crc, flags, _r, key_len, value_len, _s, _e = record.HEADER.unpack_from(buf)
    if (flags & ~record.BATCH_FLAGS or key_len != len(key)
            or record.HEADER_SIZE + key_len + value_len != size
            or buf[record.HEADER_SIZE : record.HEADER_SIZE + key_len] != key
            or record.intact_size_at_py(buf, 0, size) != size):
        return fallback(None, key, default)
    return buf[record.HEADER_SIZE + key_len :]


class World:
    """What a program runs against, cut from the input: the segment bytes (``body``) mapped
    into two fake segments, the slot list, an index and its TTLs; ``program`` is the rest."""

    def __init__(self, data: bytes) -> None:
        cut = int.from_bytes(data[:2], "little") % len(data)
        self.body, self.program = data[2:cut] or b"\0", data[cut:]
        self.maps = []
        for _ in range(2):
            mm = mmap.mmap(-1, len(self.body))
            mm[:] = self.body
            self.maps.append(mm)
        self.slots: list[object] = [SlottedSegment(self.maps[0]), None,
                                    PlainSegment(self.maps[1]), SlottedSegment(None)]
        self.entries = IndexMap()
        self.expiries: dict[bytes, int] = {}
        self.store = FakeStore()
        self.plain_ok = not (data[1] & 0x80)

    def reader(self, fallback_fn=fallback):
        return Reader(self.entries, self.expiries, self.slots, self.store, fallback_fn,
                      self.plain_ok)

    def step(self, pos: int, key_at: int) -> tuple[int, object]:
        """Decode the program's step at ``pos`` (its key's bytes at ``pos + key_at`` when not
        taken from the segment bytes), make the change it asks for (index the key with an
        arbitrary entry, give it a TTL, swap a segment, close a map) and return (the step's
        op byte, the key to read: sometimes a str, empty or too long)."""
        program, body = self.program, self.body
        op = program[pos]
        klen = program[pos + 1] % 40
        offset = int.from_bytes(program[pos + 2 : pos + 6], "little") % (len(body) + 64)
        size = int.from_bytes(program[pos + 6 : pos + 8], "little") & 0xFFF
        slot = program[pos + 8] % 5
        key = body[offset + record.HEADER_SIZE : offset + record.HEADER_SIZE + klen] \
            if op & 1 else program[pos + key_at : pos + key_at + klen]
        if op & 2 and key:
            self.entries[key] = slot << 44 | offset << 12 | size
        if op & 4 and key:
            self.expiries[key] = op
        if op & 8:
            self.slots[0 if op & 16 else 2] = SlottedSegment(None) if op & 32 else self.slots[3]
        if op & 64 and op & 32:
            self.maps[op & 1].close()
        query: object = key
        if op >= 0xF0:
            query = key.decode("latin-1") if op & 1 else b"x" * 70000 if op & 2 else b""
        return op, query

    def close(self) -> None:
        for mm in self.maps:
            mm.close()


def check_one(data: bytes) -> None:
    """Run the program ``data``; raise AssertionError where the kernel and model differ."""
    if Reader is None or len(data) < 2:
        return
    world = World(data)
    program, entries, expiries, slots = world.program, world.entries, world.expiries, world.slots
    plain_ok = world.plain_ok
    reader = world.reader()
    pos = 0
    try:
        while pos + 12 <= len(program):
            op, query = world.step(pos, 9)
            pos += 12
            default = op if op & 1 else None
            got = reader.get(query, default) if op & 16 else reader.get(query)
            want = model(entries, expiries, slots, query, default if op & 16 else None,
                          plain_ok)
            # The kernel finds a key by the 28 hash bits its slot keeps (bitkv_index_candidate)
            # and hands the get to Python when the record's key differs: a tag collision (1 in
            # 2**28 per probed slot; the hash key is random per process) sends a get of a
            # missing or present key to the fallback, which answers it exactly. Only that
            # hand-over, for a key the candidate lookup ran on, is accepted besides the model.
            collided = (type(query) is bytes and 0 < len(query) <= 0xFFFF
                        and got == fallback(None, query, default if op & 16 else None))
            assert got == want or collided, (query, got, want)
        reader.detach()
        assert not reader.attached
        if pos < len(program):
            assert reader.get(program[pos:]) == fallback(None, program[pos:], None)
    finally:
        world.close()


def seeds() -> list[bytes]:
    """Segment bodies of valid records and gets pointing at them, near them and past them."""
    rng = random.Random(23)
    seeds = [b"", bytes(64), rng.randbytes(400)]
    body = b"".join(record.encode_py(b"key%02d" % i, rng.randbytes(i * 5), i + 1,
                                     0, record.BATCH if i % 3 == 0 else 0) for i in range(12))
    offsets, off = [], 0
    for i in range(12):
        offsets.append((off, record.HEADER_SIZE + 5 + i * 5))
        off += offsets[-1][1]
    for _ in range(6):
        prog = bytearray()
        for off, size in rng.sample(offsets, 8):
            prog += bytes([rng.choice((3, 19, 7, 2, 11, 35, 99, 243)), 5])
            prog += (off + rng.choice((0, 0, 0, 1))).to_bytes(4, "little")
            prog += (size + rng.choice((0, 0, -1))).to_bytes(2, "little")
            prog += bytes([rng.choice((0, 0, 2, 4))]) + rng.randbytes(3)
        head = (len(body) + 2).to_bytes(2, "little")
        seeds.append(head + body + bytes(prog))
    return seeds


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
