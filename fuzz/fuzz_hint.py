"""Fuzz target: the hint-file decoder (``bitkv.hint.decode``).

Run with atheris::

    python fuzz/fuzz_hint.py -max_len=8192 -timeout=10 [corpus_dir]

The first input byte picks a mode: raw bytes, or bytes whose header names the nonce and size
the decoder is asked for and whose CRC trailer is recomputed, so the fuzzer gets past the
framing checks into the entry table. The only allowed outcomes: :class:`bitkv.hint.HintError`
(the documented ``ValueError`` subclass), or entries that all lie inside the segment and whose
keys exactly fill the key area.
"""

from __future__ import annotations

import struct

from bitkv import hint
from bitkv import record as rec
from bitkv.crc import crc32c


def _with_crc(body: bytes) -> bytes:
    return body + hint.TRAILER.pack(crc32c(body))


def check_one(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0] % 4, data[1:]
    nonce, size = 0x1234_5678_9ABC_DEF0, 1 << 20
    if mode >= 1 and len(body) >= hint.HEADER_SIZE:
        # Believe the header's own nonce and size (as if written for this segment).
        fields = hint.HEADER.unpack_from(body)
        nonce, size = fields[4], fields[5]
        if mode == 2:
            size += body[-1] if body else 0  # a segment somewhat longer than the hint covers
        if mode == 3:  # force a plausible magic and version too
            body = hint.HEADER.pack(hint.MAGIC, hint.FORMAT_VERSION, *fields[2:]) + \
                body[hint.HEADER_SIZE:]
    if mode >= 1:
        body = _with_crc(body)
    try:
        max_seq, items = hint.decode(body, nonce, size)
        entries = list(items)
    except hint.HintError:
        return
    assert isinstance(max_seq, int) and max_seq >= 0
    count = struct.unpack_from("<I", body, 12)[0]
    covered = struct.unpack_from("<Q", body, 24)[0]
    assert covered <= size, "hint believed although it covers more than the segment"
    assert len(entries) == count
    key_bytes = 0
    for key, entry in entries:
        _flags, _reserved, key_len, value_len, offset, _seq, _expiry = entry
        assert isinstance(key, bytes) and len(key) == key_len > 0
        assert offset + rec.HEADER_SIZE + key_len + value_len <= covered, "entry outside segment"
        key_bytes += key_len
    assert hint.HEADER_SIZE + count * hint.ENTRY_SIZE + key_bytes + hint.TRAILER.size \
        == len(body), "key area does not match the entries"


def seeds() -> list[bytes]:
    """A starting corpus: valid hints (0, 1 and 5 entries) in every mode, with and without CRC."""
    seeds = []
    for n in (0, 1, 5):
        entries = []
        off = 40
        for i in range(n):
            key = b"key-%d" % i
            entries.append((key, 0, 10 * i, off, 100 + i, 0))
            off += rec.HEADER_SIZE + len(key) + 10 * i
        blob = hint.encode(entries, 0xABCDEF, off)
        for mode in range(4):
            seeds.append(bytes([mode]) + blob)
            seeds.append(bytes([mode]) + blob[:-4])  # CRC stripped: modes 1-3 recompute it
    return seeds


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
