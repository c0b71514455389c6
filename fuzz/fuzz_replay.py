"""Fuzz target: the compiled indexing loops of open (``bitkv._native.hint_check``,
``hint_apply``, ``plain_run``) against their pure-Python references in ``bitkv.indexing``.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_replay.py -max_len=8192 -timeout=10 [corpus_dir]

The first input byte picks the entry point; the rest is fed to it twice, to the compiled
loop over an ``IndexMap`` and to the Python loop over a dict, both starting from the same
index (keys already pointing into other segments, some with a TTL, some hidden, some records
of 4096 bytes or more whose size comes from their segment). For ``plain_run`` the bytes are
either taken as a segment as they are, or used to build a valid run of records (plain, batches,
tombstones, TTLs, expired) that is then damaged by the input (bit flips, cuts), so that the
fuzzer gets past the CRC. Every result, the index in its order, ``expiries``, ``hidden`` and
every segment's live bytes must agree, or the exception type. atheris instruments the Python
side only; ``scripts/asan_native.sh`` runs this target against an ASan+UBSan build, where a
read past a buffer aborts. ``tests/test_fuzz_targets.py`` runs ``check_one`` on seeded inputs.
"""

from __future__ import annotations

import random
from typing import Any

from bitkv import hint, indexing, keydir, record

try:
    from bitkv import _native
except ImportError:  # not built: nothing to fuzz (the test skips)
    _native = None  # type: ignore[assignment]

NOW_MS = 1_700_000_000_000
SLOTS = 4  # slot 3 is the segment being loaded


class FakeSegment:
    """What the loops need of a segment: live bytes, and a record's size from its header."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.live_bytes = 1 << 40

    def record_size_at(self, offset: int) -> int:
        return 4096 + offset % 977


def _keydir(native: bool, rng: random.Random, keys: list[bytes], hidden: bool
            ) -> keydir.KeyDir:
    """The same starting index each call with the same ``rng`` state."""
    kd = keydir.KeyDir([FakeSegment(i) for i in range(SLOTS)])
    if not native:
        kd.entries = {}
    kd.hidden = {} if hidden else None
    for key in keys:
        r = rng.random()
        if r < 0.5:
            slot = rng.randrange(SLOTS)
            size = rng.choice((0, rng.randint(29, 4095)))
            kd.entries[key] = keydir.pack(slot, rng.randrange(1 << 20), size)
            if rng.random() < 0.3:
                kd.expiries[key] = NOW_MS + rng.randint(1, 10**6)
        elif r < 0.6 and kd.hidden is not None:
            kd.hidden[key] = (rng.randrange(1 << 20), 40, 1, 0)
    return kd


def _state(kd: keydir.KeyDir) -> tuple[Any, ...]:
    return (list(kd.entries.items()), list(kd.expiries.items()),
            None if kd.hidden is None else list(kd.hidden.items()),
            [s.live_bytes for s in kd.slots])


def _outcome(fn: Any) -> tuple[Any, type[BaseException] | None]:
    try:
        return fn(), None
    except Exception as exc:
        return None, type(exc)


def _pool(rng: random.Random) -> list[bytes]:
    return [b"k%d" % i for i in range(rng.randint(1, 40))] + [b"long" * 30, bytes([0]) * 3]


def _records(rng: random.Random, keys: list[bytes], start_seq: int) -> bytes:
    """A run of valid records: plain, batches, tombstones, TTLs (some expired)."""
    out = []
    seq = start_seq
    for _ in range(rng.randint(0, 30)):
        members = 1 if rng.random() < 0.6 else rng.randint(1, 5)
        for m in range(members):
            key = rng.choice(keys)
            flags = 0
            value = b""
            expiry = 0
            if rng.random() < 0.2:
                flags |= record.TOMBSTONE
            else:
                value = rng.randbytes(rng.choice((0, 5, 60, 4100)))
                if rng.random() < 0.3:
                    expiry = NOW_MS + rng.randint(-1000, 1000)
            if members > 1 or rng.random() < 0.05:
                flags |= record.BATCH
                if m == 0:
                    flags |= record.BATCH_FIRST
                if m == members - 1:
                    flags |= record.BATCH_LAST
            out.append(record.encode(key, value, seq, expiry, flags))
            seq += 1 if rng.random() < 0.95 else rng.randint(0, 3)
    return b"".join(out)


def _damage(rng: random.Random, buf: bytes, data: bytes) -> bytes:
    b = bytearray(buf)
    for byte in data[: rng.randint(0, 3)]:
        if not b:
            break
        r = byte % 5
        if r == 0:
            i = rng.randrange(len(b))
            b[i] ^= 1 << (byte % 8)
        elif r == 1:
            del b[rng.randrange(len(b)) :]
        elif r == 2:
            i = rng.randrange(len(b))
            b[i : i] = data[:16]
    return bytes(b)


def check_one(data: bytes) -> None:
    """Run ``data`` through one entry point in both implementations; raise on disagreement."""
    if _native is None or keydir.IMPLEMENTATION != "native" or not data:
        return
    mode, body = data[0] % 4, data[1:]
    rng = random.Random(body)
    keys = _pool(rng)
    hidden = rng.random() < 0.5
    state = rng.getstate()
    kd_n = _keydir(True, rng, keys, hidden)
    rng.setstate(state)
    kd_p = _keydir(False, rng, keys, hidden)
    now_ms = rng.choice((0, NOW_MS))
    slot = SLOTS - 1
    if mode <= 1:
        # A hint's entry table and key area, cut anywhere; ``covered`` small or large.
        split = (len(body) * rng.randint(0, 8) // 8) // hint.ENTRY_SIZE * hint.ENTRY_SIZE
        if mode == 1:
            # Entries with plausible key lengths over the pool's keys, so that most apply.
            entries = []
            key_area = []
            for _ in range(rng.randint(0, 40)):
                key = rng.choice(keys)
                entries.append(hint.ENTRY.pack(rng.choice((0, 1, 0x3F)), 0, len(key),
                                               rng.choice((0, 5, 5000)), rng.randrange(1 << 16),
                                               rng.randrange(1 << 20),
                                               rng.choice((0, NOW_MS - 5, NOW_MS + 5))))
                key_area.append(key)
            fixed, key_bytes = b"".join(entries), b"".join(key_area)
            fixed = _damage(rng, fixed, body)
            fixed = fixed[: len(fixed) // hint.ENTRY_SIZE * hint.ENTRY_SIZE]
        else:
            fixed, key_bytes = body[:split], body[split:]
        covered = rng.choice((0, 1 << 16, 1 << 17, 1 << 40, 1 << 40))
        ok_n = _native.hint_check(fixed, key_bytes, covered)
        indexing_native, indexing._native = indexing._native, None
        try:
            ok_p = indexing.hint_in_bounds(fixed, key_bytes, covered)
            got_p = _outcome(lambda: indexing.apply_hint(kd_p, slot, fixed, key_bytes, covered,
                                                         now_ms))
        finally:
            indexing._native = indexing_native
        assert ok_n == ok_p, (ok_n, ok_p)
        # Half of them with the hashing helper thread (it starts only for big hints, or for
        # every one in the ASan build of scripts/asan_native.sh): the same result either way.
        helper = rng.random() < 0.5
        got_n = _outcome(lambda: _native.hint_apply(kd_n, slot, fixed, key_bytes, covered,
                                                    now_ms, helper))
    else:
        if mode == 2:
            buf = body
        else:
            buf = _damage(rng, _records(rng, keys, 100), body)
        pos = rng.choice((0, 0, rng.randint(0, len(buf))))
        end = rng.choice((len(buf), rng.randint(pos, len(buf))))
        max_seq = rng.choice((0, 99, 10**6))
        got_n = _outcome(lambda: _native.plain_run(kd_n, slot, buf, pos, end, max_seq, now_ms))
        indexing_native, indexing._native = indexing._native, None
        try:
            got_p = _outcome(lambda: indexing.plain_run(kd_p, slot, buf, pos, end, max_seq,
                                                        now_ms))
        finally:
            indexing._native = indexing_native
    if got_n[1] is not None or got_p[1] is not None:
        assert got_n[1] == got_p[1], (got_n, got_p)
        return
    assert tuple(got_n[0]) == tuple(got_p[0]), (got_n, got_p)
    assert _state(kd_n) == _state(kd_p), "the index or its accounting differs"


def seeds() -> list[bytes]:
    """Inputs for every entry point: empty, random, and record-building ones."""
    rng = random.Random(23)
    out = [b"", bytes([0]), bytes([1]) + bytes(64), bytes([2]) + bytes(100), bytes([3])]
    for mode in range(4):
        for _ in range(6):
            out.append(bytes([mode]) + rng.randbytes(rng.randint(1, 600)))
    good = random.Random(5)
    out.append(bytes([2]) + _records(good, [b"a", b"bb", b"ccc"], 1))
    return out


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
