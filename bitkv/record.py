"""Encoding, decoding and scanning of data records (see docs/format.md, "Data record").

A record is a 28-byte header, then the key, then the value::

    crc32c u32 | flags u8 | reserved u8 | key_len u16 | value_len u32 | seq u64 | expiry_ms u64

All integers are little-endian. The CRC-32C covers every byte after the CRC field: the rest of
the header, the key and the value. This module knows nothing about files.
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterator
from typing import NamedTuple, TypeAlias

from .crc import crc32c
from .kernels import NATIVE

HEADER = struct.Struct("<IBBHIQQ")

# What the scanners read: a whole segment in memory or mapped. They need ``find`` and indexing
# to ints, which ``memoryview`` lacks, so this is narrower than a buffer.
ScanBuffer: TypeAlias = bytes | bytearray | mmap.mmap
HEADER_SIZE = HEADER.size  # 28
_BODY_HEADER = struct.Struct("<BBHIQQ")  # the header without its CRC
_CRC = struct.Struct("<I")

# flags
TOMBSTONE = 0x01
COMPRESSED = 0x02   # value is a zstandard frame
ENCRYPTED = 0x04    # value is nonce || AES-256-GCM ciphertext || tag
BATCH = 0x08        # member of a multi-record atomic batch
BATCH_FIRST = 0x10  # first member of a batch (always with BATCH)
BATCH_LAST = 0x20   # last member of a batch (always with BATCH); commits the batch
CLIENT_FLAGS = 0x40  # the plain value ends with 4 bytes of memcached client flags (codec.py)
KNOWN_FLAGS = (TOMBSTONE | COMPRESSED | ENCRYPTED | BATCH | BATCH_FIRST | BATCH_LAST
               | CLIENT_FLAGS)
BATCH_FLAGS = BATCH | BATCH_FIRST | BATCH_LAST
# The flags under which the stored bytes are not the user's value (codec.decode undoes them).
ENCODING_FLAGS = COMPRESSED | ENCRYPTED | CLIENT_FLAGS

MAX_KEY_SIZE = 0xFFFF
MAX_VALUE_SIZE = 64 * 2**20
# Room for compression framing and encryption overhead on top of the largest user value.
MAX_STORED_VALUE_SIZE = MAX_VALUE_SIZE + 4096


class Header(NamedTuple):
    crc: int
    flags: int
    reserved: int
    key_len: int
    value_len: int
    seq: int
    expiry_ms: int


class ScannedRecord(NamedTuple):
    """An intact record found by :func:`scan`. ``value`` is not copied out; read it if needed."""

    offset: int
    size: int
    flags: int
    seq: int
    expiry_ms: int
    key: bytes
    value_len: int


class Damage(NamedTuple):
    """A region that holds no intact record. ``tail`` is True when no intact record follows.

    ``key`` is set when the region is one record whose header and extent are intact (an
    intact record follows where it says it ends) but whose bytes fail the CRC: the key bytes
    it claims, unverified.
    """

    offset: int
    length: int
    tail: bool
    key: bytes | None = None


def encode_py(key: bytes, value: bytes, seq: int, expiry_ms: int = 0, flags: int = 0) -> bytes:
    """Return the complete on-disk bytes of one record (the reference of :func:`encode`)."""
    body = _BODY_HEADER.pack(flags, 0, len(key), len(value), seq, expiry_ms) + key + value
    return _CRC.pack(crc32c(body)) + body


def record_size(key_len: int, value_len: int) -> int:
    return HEADER_SIZE + key_len + value_len


def header_is_plausible(flags: int, reserved: int, key_len: int, value_len: int) -> bool:
    """Cheap structural checks that reject garbage before the CRC is computed."""
    return (
        reserved == 0
        and not flags & ~KNOWN_FLAGS
        and key_len > 0
        and value_len <= MAX_STORED_VALUE_SIZE
        and not (flags & TOMBSTONE and value_len)
        and (not flags & BATCH_FLAGS or (flags & BATCH) != 0)
    )


def decode_py(buf: bytes, expected_key: bytes | None = None) -> tuple[Header, bytes]:
    """Verify one whole record held in ``buf`` and return its header and value (the
    reference of :func:`decode`).

    Raises ``ValueError`` when the length, structure, CRC or (if given) key does not match;
    the caller turns that into a :class:`bitkv.CorruptionError` with the location.
    """
    if len(buf) < HEADER_SIZE:
        raise ValueError(f"record shorter than its {HEADER_SIZE}-byte header")
    header = Header._make(HEADER.unpack_from(buf))
    if not header_is_plausible(header.flags, header.reserved, header.key_len, header.value_len):
        raise ValueError("record header is malformed")
    end = HEADER_SIZE + header.key_len + header.value_len
    if end != len(buf):
        raise ValueError(f"record length {end} does not match the {len(buf)} bytes read")
    if crc32c(memoryview(buf)[4:]) != header.crc:
        raise ValueError("record CRC mismatch")
    if expected_key is not None and buf[HEADER_SIZE : HEADER_SIZE + header.key_len] != expected_key:
        raise ValueError("record holds a different key than the index expects")
    return header, buf[HEADER_SIZE + header.key_len :]


def intact_size_at_py(buf: ScanBuffer, pos: int, end: int) -> int:
    """Return the size of an intact record starting at ``buf[pos]``, or 0 if there is none
    (the reference of :func:`intact_size_at`)."""
    if end - pos < HEADER_SIZE:
        return 0
    # struct unpacks to Any; the declarations type what the header fields are (no runtime cost).
    crc: int
    key_len: int
    value_len: int
    crc, flags, reserved, key_len, value_len, _seq, _exp = HEADER.unpack_from(buf, pos)
    if not header_is_plausible(flags, reserved, key_len, value_len):
        return 0
    size = HEADER_SIZE + key_len + value_len
    if size > end - pos:
        return 0
    with memoryview(buf) as view:
        if crc32c(view[pos + 4 : pos + size]) != crc:
            return 0
    return size


encode = encode_py
decode = decode_py
intact_size_at = intact_size_at_py
if NATIVE:
    from ._native import decode_record, encode_record, record_setup
    from ._native import intact_size_at as _native_intact_size_at

    record_setup(encode_py, decode_py, intact_size_at_py, Header)
    encode = encode_record
    decode = decode_record
    intact_size_at = _native_intact_size_at


_NONZERO = re.compile(rb"[^\x00]")


MIN_RECORD_SIZE = HEADER_SIZE + 1
# Seqs an append segment may skip without a record. The store gives a failed write's seq
# back, so appended seqs are contiguous; the slack only absorbs what we cannot foresee.
SEQ_SLACK = 4
# At the tail of the newest append segment, a resync search examines at most this many
# candidate offsets (those passing the byte filter) before it calls the rest a torn tail. A
# torn write's bytes are a client's value: crafted to look like a header every 29 bytes, an
# unbounded search cost ~5 us per candidate (a 64 MiB torn tail: ~18 s at every open). Random
# binary garbage has ~1 candidate per 256 bytes, so this still searches ~16 MiB of it.
TAIL_RESYNC_CANDIDATES = 65536


def find_next_intact(buf: ScanBuffer, pos: int, end: int, last_seq: int | None = None,
                     max_candidates: int | None = None) -> int:
    """Return the offset of the first intact record after ``pos``, or -1.

    Candidates are narrowed before any CRC is computed: a record's reserved byte (offset 5) is
    zero and its key length (offsets 6-7) is not, so zero-filled regions are skipped with one
    regex search and random garbage with ``find``, instead of a Python step per byte.

    ``last_seq`` (append segments only, whose seqs ascend with no more than a few gaps) is the
    seq of the last intact record before the damage. A candidate must then carry a seq that
    could follow it across the damaged bytes; this rejects a record embedded in a torn value,
    which would otherwise be indexed as a key nobody wrote.

    ``max_candidates`` bounds the offsets checked past the byte filter; the search then gives
    up (returns -1) as if nothing intact followed.
    """
    left = -1 if max_candidates is None else max_candidates
    p = pos + 1
    while p + HEADER_SIZE <= end:
        q = buf.find(b"\x00", p + 5, end)
        if q < 0:
            return -1
        p = q - 5
        if p + HEADER_SIZE > end:
            return -1
        if buf[p + 6] == 0 and buf[p + 7] == 0:
            match = _NONZERO.search(buf, p + 6, end)
            if match is None:
                return -1
            p = max(p + 1, match.start() - 7)
            continue
        # The seq check is a few attribute loads, the CRC a pass over the claimed record: on
        # a torn large value full of plausible-looking headers, checking the seq first keeps
        # the search linear instead of (damaged bytes x claimed size).
        if _seq_fits(buf, p, last_seq, p - pos) and intact_size_at(buf, p, end):
            return p
        if left == 0:
            return -1
        left -= 1
        p += 1
    return -1


def _seq_fits(buf: ScanBuffer, p: int, last_seq: int | None, gap: int) -> bool:
    if last_seq is None:
        return True
    seq: int = HEADER.unpack_from(buf, p)[5]
    return last_seq < seq <= last_seq + 1 + gap // MIN_RECORD_SIZE + SEQ_SLACK


def _declared_size(buf: ScanBuffer, pos: int, end: int) -> int:
    """The size a damaged record's header claims, if the header is plausible, else 0."""
    if end - pos < HEADER_SIZE:
        return 0
    key_len: int
    value_len: int
    _crc, flags, reserved, key_len, value_len, _seq, _exp = HEADER.unpack_from(buf, pos)
    if not header_is_plausible(flags, reserved, key_len, value_len):
        return 0
    return HEADER_SIZE + key_len + value_len


def _chain_reaches_end(buf: ScanBuffer, pos: int, end: int) -> bool:
    while pos < end:
        size = intact_size_at(buf, pos, end)
        if not size:
            return False
        pos += size
    return True


def scan(buf: ScanBuffer, start: int, end: int | None = None, *, first_seq: int | None = None,
         max_candidates: int | None = None) -> Iterator[ScannedRecord | Damage]:
    """Yield every intact record of ``buf[start:end]`` and every damaged region, in order.

    A damaged region followed by an intact record is reported with ``tail=False`` and scanning
    resumes at that record; damage that runs to ``end`` is reported with ``tail=True``.

    Where resume after a damaged record? Bytes inside it may hold what looks like an intact
    record (a value that embeds record bytes), and indexing that would invent a key nobody
    wrote. So: if the damaged record's header is plausible (in an append segment: carrying
    the next seq) and an intact record follows exactly where it says it ends (or, in an
    append segment, the end does), only its value or key was damaged: skip it whole.
    If such a header (with the next seq) claims to run past the end, it is a torn write, and a
    record found inside it is accepted only if intact records from there reach the end exactly
    (then the length field was what got damaged). Otherwise search byte by byte
    (:func:`find_next_intact`).

    ``first_seq`` marks an append segment whose records carry contiguous seqs starting there;
    resynchronisation then only accepts records whose seq fits the bytes lost.

    ``max_candidates`` (the tail of the newest append segment: :data:`TAIL_RESYNC_CANDIDATES`)
    bounds each resync search; one that gives up reports the rest as damage to the end.
    """
    if end is None:
        end = len(buf)
    pos = start
    last_seq = None if first_seq is None else first_seq - 1
    unpack = HEADER.unpack_from
    while pos < end:
        size = intact_size_at(buf, pos, end)
        if size:
            _crc, flags, _res, key_len, value_len, seq, expiry_ms = unpack(buf, pos)
            key = bytes(buf[pos + HEADER_SIZE : pos + HEADER_SIZE + key_len])
            yield ScannedRecord(pos, size, flags, seq, expiry_ms, key, value_len)
            if last_seq is not None and seq > last_seq:
                last_seq = seq
            pos += size
            continue
        declared = _declared_size(buf, pos, end)
        if declared and pos + declared <= end:
            # In an append segment, evidence that this is the real header of the next record
            # (not garbage that parses as one): it carries the next seq, or the record right
            # after it carries the one after that.
            after = pos + declared
            next_seq = None if last_seq is None else last_seq + 1
            follows = after < end and intact_size_at(buf, after, end) and (
                next_seq is None or unpack(buf, after)[5] == next_seq + 1
                or (unpack(buf, pos)[5] == next_seq
                    and _seq_fits(buf, after, last_seq, declared)))
            at_end = after == end and next_seq is not None and unpack(buf, pos)[5] == next_seq
            if follows or at_end:
                _crc, flags, _res, key_len, _vl, _seq, _exp = unpack(buf, pos)
                # A batch member is not named: the batch it belonged to is dropped whole, so
                # the older values of all its keys are the right ones to keep.
                claimed = None if flags & BATCH else bytes(
                    buf[pos + HEADER_SIZE : pos + HEADER_SIZE + key_len])
                yield Damage(pos, declared, after == end, claimed)
                pos = after
                continue
        nxt = find_next_intact(buf, pos, end, last_seq, max_candidates)
        if (nxt >= 0 and declared and pos + declared > end and last_seq is not None
                and unpack(buf, pos)[5] == last_seq + 1
                and not _chain_reaches_end(buf, nxt, end)):
            # The next record's genuine header, cut short: a torn write, whose value may
            # embed record bytes. Only a run of intact records reaching the end says that
            # its length field was damaged instead.
            nxt = -1
        if nxt < 0:
            yield Damage(pos, end - pos, True)
            return
        yield Damage(pos, nxt - pos, False)
        pos = nxt
