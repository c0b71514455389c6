"""The RDB codec: Redis's snapshot format, for replication with Redis 7.0.

A bitkv master sends a full resync to a Redis replica as an RDB (:class:`RDBWriter`); a bitkv
replica loads its Redis master's RDB (:func:`read_rdb`). The writer emits strings, hashes, sets,
lists and sorted sets in the plain encodings every Redis since 2.x loads; the reader decodes
those types in every encoding Redis 2.x to 7.2 writes (the packed ones through
:mod:`bitkv.rdb_packed`) for the callers that ask for them, and steps over every other type by
its structure. ``docs/rdb.md`` describes the bytes, with a worked example.

Nothing here knows about the server or the store: bytes in, callbacks out.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import crcmod

from . import rdb_packed
from .errors import Error

__all__ = ["RDBError", "RDBSummary", "RDBWriter", "Sink", "Source", "crc64", "lzf_decompress",
           "read_rdb"]

WRITE_VERSION = 10  # what Redis 7.0 writes, and the newest version it loads
MAX_READ_VERSION = 12  # Redis 7.4+: hash field expiry types 22..25
DEFAULT_MAX_VALUE_LEN = 512 * 2**20  # Redis's proto-max-bulk-len default

# Opcodes (src/rdb.h).
OP_SLOT_INFO = 244
OP_FUNCTION2 = 245
OP_FUNCTION_PRE_GA = 246
OP_MODULE_AUX = 247
OP_IDLE = 248
OP_FREQ = 249
OP_AUX = 250
OP_RESIZEDB = 251
OP_EXPIRETIME_MS = 252
OP_EXPIRETIME = 253
OP_SELECTDB = 254
OP_EOF = 255

# Value types (src/rdb.h).
TYPE_STRING = 0
TYPE_LIST = 1
TYPE_SET = 2
TYPE_ZSET = 3
TYPE_HASH = 4
TYPE_ZSET_2 = 5
TYPE_MODULE_PRE_GA = 6
TYPE_MODULE_2 = 7
TYPE_HASH_ZIPMAP = 9
TYPE_LIST_ZIPLIST = 10
TYPE_SET_INTSET = 11
TYPE_ZSET_ZIPLIST = 12
TYPE_HASH_ZIPLIST = 13
TYPE_LIST_QUICKLIST = 14
TYPE_STREAM_LISTPACKS = 15
TYPE_HASH_LISTPACK = 16
TYPE_ZSET_LISTPACK = 17
TYPE_LIST_QUICKLIST_2 = 18
TYPE_STREAM_LISTPACKS_2 = 19
TYPE_SET_LISTPACK = 20
TYPE_STREAM_LISTPACKS_3 = 21
TYPE_HASH_METADATA_PRE_GA = 22
TYPE_HASH_LISTPACK_EX_PRE_GA = 23
TYPE_HASH_METADATA = 24
TYPE_HASH_LISTPACK_EX = 25

# The Redis data type of every skippable RDB type (what on_skipped and skipped_by_type say).
TYPE_NAMES: dict[int, str] = {
    TYPE_LIST: "list", TYPE_SET: "set", TYPE_ZSET: "zset", TYPE_HASH: "hash",
    TYPE_ZSET_2: "zset", TYPE_MODULE_2: "module", TYPE_HASH_ZIPMAP: "hash",
    TYPE_LIST_ZIPLIST: "list", TYPE_SET_INTSET: "set", TYPE_ZSET_ZIPLIST: "zset",
    TYPE_HASH_ZIPLIST: "hash", TYPE_LIST_QUICKLIST: "list", TYPE_STREAM_LISTPACKS: "stream",
    TYPE_HASH_LISTPACK: "hash", TYPE_ZSET_LISTPACK: "zset", TYPE_LIST_QUICKLIST_2: "list",
    TYPE_STREAM_LISTPACKS_2: "stream", TYPE_SET_LISTPACK: "set",
    TYPE_STREAM_LISTPACKS_3: "stream", TYPE_HASH_METADATA_PRE_GA: "hash",
    TYPE_HASH_LISTPACK_EX_PRE_GA: "hash", TYPE_HASH_METADATA: "hash",
    TYPE_HASH_LISTPACK_EX: "hash",
}

# Types whose whole value is one string blob (a ziplist, intset, listpack or zipmap).
_BLOB_TYPES = frozenset((TYPE_HASH_ZIPMAP, TYPE_LIST_ZIPLIST, TYPE_SET_INTSET,
                         TYPE_ZSET_ZIPLIST, TYPE_HASH_ZIPLIST, TYPE_HASH_LISTPACK,
                         TYPE_ZSET_LISTPACK, TYPE_SET_LISTPACK, TYPE_HASH_LISTPACK_EX_PRE_GA))

# Module value opcodes (RDB_MODULE_OPCODE_*).
_MODULE_EOF, _MODULE_SINT, _MODULE_UINT, _MODULE_FLOAT, _MODULE_DOUBLE, _MODULE_STRING = range(6)
_MODULE_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# String encodings after a length byte of the form 11xxxxxx (RDB_ENC_*).
_ENC_INT8, _ENC_INT16, _ENC_INT32, _ENC_LZF = 0, 1, 2, 3

# Reads from the source are this big; a string longer than this is read in chunks of it, so a
# hostile length on a short stream fails as truncated having held at most what arrived.
_CHUNK = 1 << 16
_BIG_CHUNK = 1 << 20

# A quicklist 2 node (RDB_TYPE_LIST_QUICKLIST_2): one element, or a listpack of several.
_QUICKLIST_PLAIN, _QUICKLIST_PACKED = 1, 2

_DOUBLE = struct.Struct("<d")  # a ZSET_2 score: an IEEE 754 double, little-endian

_T = TypeVar("_T")

_crc64_fun: Callable[[bytes, int], int] = crcmod.mkCrcFun(
    0x1AD93D23594C935A9, initCrc=0, rev=True, xorOut=0)


def crc64(data: bytes, crc: int = 0) -> int:
    """Redis's CRC-64 (Jones polynomial, reflected, no final xor) of ``data``, continuing ``crc``.

    ``crc64(b"123456789") == 0xe9c6d914c4b8d9ca``. The RDB trailer is this over every byte
    before it, stored little-endian.
    """
    return _crc64_fun(data, crc)


class RDBError(Error, ValueError):
    """The bytes are not an RDB this reader accepts; the message says what and where.

    A :class:`bitkv.Error` like every error bitkv raises, and a ``ValueError`` (bad input).
    """


class Sink(Protocol):
    """What :class:`RDBWriter` writes to: ``write(data)`` takes all of ``data`` (a file opened
    ``"wb"``, ``io.BytesIO``, a socket's ``makefile("wb")``)."""

    def write(self, data: bytes, /) -> object: ...


class Source(Protocol):
    """What :func:`read_rdb` reads from: ``read(n)`` returns up to n bytes, ``b""`` at the end."""

    def read(self, n: int, /) -> bytes | None: ...


@dataclass
class RDBSummary:
    """What :func:`read_rdb` found.

    ``checksum`` is ``"ok"`` (the CRC-64 trailer matched), ``"disabled"`` (the trailer is 0:
    Redis with ``rdbchecksum no``) or ``"absent"`` (version < 5 has no trailer). ``size`` is the
    length of the RDB in bytes, trailer included. ``strings``, ``hashes``, ``sets``, ``lists``
    and ``zsets`` count the keys of each type handed to a callback; ``empty`` the collections
    with no element, which are dropped as Redis's loader drops them; ``skipped`` the keys
    stepped over (``skipped_by_type`` by type name). ``expired`` counts the keys handed to a
    callback whose expiry had passed when the read began (``expire_ms <= now_ms``, bitkv's
    rule): they were reported all the same, dropping them is the caller's decision.
    """

    version: int = 0
    strings: int = 0
    expired: int = 0
    skipped: int = 0
    skipped_by_type: dict[str, int] = field(default_factory=dict)
    aux: dict[bytes, bytes] = field(default_factory=dict)
    checksum: str = ""
    functions: int = 0
    databases: set[int] = field(default_factory=set)
    size: int = 0
    hashes: int = 0
    sets: int = 0
    lists: int = 0
    zsets: int = 0
    empty: int = 0


# -- writing --------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    """rdbSaveLen: 6-bit, 14-bit, 32-bit or 64-bit big-endian length."""
    if n < 0x40:
        return bytes((n,))
    if n < 0x4000:
        return bytes((0x40 | (n >> 8), n & 0xFF))
    if n <= 0xFFFFFFFF:
        return b"\x80" + n.to_bytes(4, "big")
    return b"\x81" + n.to_bytes(8, "big")


def _int_encoding(s: bytes) -> bytes | None:
    """The INT8/16/32 encoding Redis gives ``s`` (rdbTryIntegerEncoding), or None.

    Redis encodes a string of at most 11 bytes that string2ll accepts (canonical decimal: no
    sign but '-', no leading zero, no "-0", no spaces) and whose value fits 32 bits signed.
    """
    if not 0 < len(s) <= 11:
        return None
    digits = s[1:] if s[0] == 0x2D else s  # '-'
    if not digits.isdigit():  # bytes.isdigit: ASCII 0-9 only
        return None
    value = int(s)
    if b"%d" % value != s:  # leading zeros, "-0"
        return None
    if -0x80 <= value <= 0x7F:
        return b"\xc0" + value.to_bytes(1, "little", signed=True)
    if -0x8000 <= value <= 0x7FFF:
        return b"\xc1" + value.to_bytes(2, "little", signed=True)
    if -0x80000000 <= value <= 0x7FFFFFFF:
        return b"\xc2" + value.to_bytes(4, "little", signed=True)
    return None


def _string(s: bytes) -> bytes:
    """rdbSaveRawString without LZF: integer-encoded when Redis would, else length + bytes."""
    if len(s) <= 11:
        encoded = _int_encoding(s)
        if encoded is not None:
            return encoded
    return _length(len(s)) + s


class RDBWriter:
    """Stream an RDB version 10 to ``f``, as Redis 7.0 writes it.

    ``RDBWriter(f, repl_id=..., repl_offset=...)`` writes the header at once: the magic
    ``REDIS0010``, the aux fields (redis-ver 7.0.0, redis-bits, ctime, used-mem, repl-stream-db,
    repl-id, repl-offset, aof-base) and ``SELECTDB 0``, then ``RESIZEDB`` if ``db_size`` is
    given (``expires_size`` with it: how many of the keys have an expiry; both are hints).
    :meth:`add_string`, :meth:`add_hash`, :meth:`add_set`, :meth:`add_list` and
    :meth:`add_zset` append one key each, :meth:`finish` the EOF opcode and the CRC-64 trailer.
    Only ``f.write`` is called; between calls nothing is held but the running CRC and
    ``bytes_written`` (the bytes handed to ``f.write`` so far; after :meth:`finish`, the size of
    the RDB), and within one call at most about 64 KiB besides the caller's own element.

    Raises ``ValueError`` for an expiry outside 0..2**63-1, for use after :meth:`finish`, and
    for use after an ``add_*`` call failed part way (see :meth:`add_hash`).
    """

    def __init__(self, f: Sink, *, repl_id: str, repl_offset: int,
                 db_size: int | None = None, expires_size: int = 0) -> None:
        self._f = f
        self._crc = 0
        self._finished = False
        self._broken = ""  # why the RDB written so far can never be valid, once it cannot
        self.bytes_written = 0
        out = [b"REDIS%04d" % WRITE_VERSION]
        aux = ((b"redis-ver", b"7.0.0"), (b"redis-bits", b"64"),
               (b"ctime", b"%d" % int(time.time())), (b"used-mem", b"0"),
               (b"repl-stream-db", b"0"), (b"repl-id", repl_id.encode("ascii")),
               (b"repl-offset", b"%d" % repl_offset), (b"aof-base", b"0"))
        for name, value in aux:
            out += (b"\xfa", _string(name), _string(value))
        out.append(b"\xfe\x00")  # SELECTDB 0
        if db_size is not None:
            out += (b"\xfb", _length(db_size), _length(expires_size))
        self._write(b"".join(out))

    def _write(self, data: bytes) -> None:
        self._crc = _crc64_fun(data, self._crc)
        self._f.write(data)
        self.bytes_written += len(data)

    def _key_head(self, method: str, rdb_type: int, key: bytes, expire_ms: int) -> bytes:
        """The expiry opcode (if any), the type byte and the key, after checking the call."""
        if self._broken:
            raise ValueError(f"RDBWriter.{method} after {self._broken}: the RDB is unusable")
        if self._finished:
            raise ValueError(f"RDBWriter.{method} after finish")
        if expire_ms:
            if not 0 < expire_ms < 2**63:
                raise ValueError(f"expire_ms {expire_ms} is outside 0..2**63-1")
            return (b"\xfc" + expire_ms.to_bytes(8, "little") + bytes((rdb_type,)) +
                    _string(key))
        return bytes((rdb_type,)) + _string(key)

    def add_aux(self, name: bytes, value: bytes) -> None:
        """Append an aux field (opcode 0xFA) between keys. Redis's loader reads aux fields
        anywhere and ignores the names it does not know, so a bitkv-only field (the list
        positions a bitkv replica needs, server/collection_snapshot.py) costs a Redis
        replica nothing."""
        if self._broken:
            raise ValueError(f"RDBWriter.add_aux after {self._broken}: the RDB is unusable")
        if self._finished:
            raise ValueError("RDBWriter.add_aux after finish")
        self._write(b"\xfa" + _string(name))
        if len(value) > _CHUNK:  # no copy of a big value: its length prefix, then itself
            self._write(_length(len(value)))
            self._write(value)
        else:
            self._write(_string(value))

    def add_string(self, key: bytes, value: bytes, expire_ms: int) -> None:
        """Append string ``key`` = ``value``, expiring at Unix time ``expire_ms`` (0: never)."""
        head = self._key_head("add_string", TYPE_STRING, key, expire_ms)
        if len(value) > _CHUNK:  # no copy of a big value: its length prefix, then itself
            self._write(head + _length(len(value)))
            self._write(value)
        else:
            self._write(head + _string(value))

    def add_hash(self, key: bytes, count: int, pairs: Iterable[tuple[bytes, bytes]],
                 expire_ms: int) -> None:
        """Append hash ``key`` of ``count`` distinct fields, ``pairs`` yielding (field, value).

        Written as RDB_TYPE_HASH (4): the count, then each field and value as a string. The
        elements are taken from ``pairs`` one at a time and written in chunks of about 64 KiB
        (an element over 64 KiB on its own, not copied), so a hash of any size streams.

        ``count`` is written first, as the RDB needs it: if ``pairs`` yields more or fewer,
        ``ValueError`` is raised and so is every later call, :meth:`finish` included: the RDB
        then has no trailer and no reader takes it for whole. The same holds for an exception
        from ``pairs`` itself. Fields must be distinct: Redis refuses an RDB with a duplicate,
        and the writer does not hold the fields to check. ``count`` 0 writes nothing (Redis
        has no empty hash: its loader drops one), after checking that ``pairs`` is empty.
        """
        stream = self._begin("add_hash", TYPE_HASH, key, count, expire_ms)
        if stream is None:
            _expect_empty(pairs, "add_hash")
            return
        for field_, value in _counted(pairs, count, "add_hash"):
            stream.string(field_)
            stream.string(value)
        self._end(stream)

    def add_set(self, key: bytes, count: int, members: Iterable[bytes],
                expire_ms: int) -> None:
        """Append set ``key`` of ``count`` distinct ``members``, as RDB_TYPE_SET (2): the count,
        then each member as a string. Streaming, ``count`` and errors as :meth:`add_hash`."""
        stream = self._begin("add_set", TYPE_SET, key, count, expire_ms)
        if stream is None:
            _expect_empty(members, "add_set")
            return
        for member in _counted(members, count, "add_set"):
            stream.string(member)
        self._end(stream)

    def add_list(self, key: bytes, count: int, items: Iterable[bytes], expire_ms: int) -> None:
        """Append list ``key`` of ``count`` ``items`` (head first), as RDB_TYPE_LIST (1): the
        count, then each item as a string; Redis 7.0 packs them into its quicklist as it loads.
        Streaming, ``count`` and errors as :meth:`add_hash` (items may repeat)."""
        stream = self._begin("add_list", TYPE_LIST, key, count, expire_ms)
        if stream is None:
            _expect_empty(items, "add_list")
            return
        for item in _counted(items, count, "add_list"):
            stream.string(item)
        self._end(stream)

    def add_zset(self, key: bytes, count: int, pairs_member_score: Iterable[tuple[bytes, float]],
                 expire_ms: int) -> None:
        """Append sorted set ``key`` of ``count`` distinct members, ``pairs_member_score``
        yielding (member, score) in any order, as RDB_TYPE_ZSET_2 (5): the count, then each
        member as a string and its score as an 8-byte little-endian double (±inf included).
        A NaN score raises ``ValueError``, as a broken count does (Redis refuses NaN).
        Streaming, ``count`` and errors as :meth:`add_hash`."""
        stream = self._begin("add_zset", TYPE_ZSET_2, key, count, expire_ms)
        if stream is None:
            _expect_empty(pairs_member_score, "add_zset")
            return
        pack = _DOUBLE.pack
        for member, score in _counted(pairs_member_score, count, "add_zset"):
            stream.string(member)
            score = float(score)
            if math.isnan(score):
                raise ValueError(f"add_zset: member {member[:64]!r} of {key[:64]!r} has a NaN "
                                 f"score")
            stream.raw(pack(score))
        self._end(stream)

    def _begin(self, method: str, rdb_type: int, key: bytes, count: int,
               expire_ms: int) -> _ValueStream | None:
        """Start a collection: checks, then (``count`` > 0) the head buffered, the writer marked
        broken until :meth:`_end` (an exception in between leaves it so)."""
        head = self._key_head(method, rdb_type, key, expire_ms)
        if not 0 <= count < 2**64:
            raise ValueError(f"{method}: count {count} is outside 0..2**64-1")
        if count == 0:
            return None
        self._broken = f"{method}({key[:64]!r}) failed part way"
        stream = _ValueStream(self._write)
        stream.raw(head + _length(count))
        return stream

    def _end(self, stream: _ValueStream) -> None:
        stream.flush()
        self._broken = ""

    def finish(self) -> None:
        """Write the EOF opcode and the little-endian CRC-64 of every byte before the trailer."""
        if self._broken:
            raise ValueError(f"RDBWriter.finish after {self._broken}: the RDB is unusable")
        if self._finished:
            raise ValueError("RDBWriter.finish called twice")
        self._finished = True
        self._write(b"\xff")
        self._f.write(self._crc.to_bytes(8, "little"))
        self.bytes_written += 8


class _ValueStream:
    """The bytes of one value gathered into writes of about ``_CHUNK``; a string over
    ``_CHUNK`` goes out as its length prefix and then itself, never copied."""

    __slots__ = ("_parts", "_size", "_write")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._parts: list[bytes] = []
        self._size = 0

    def raw(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size >= _CHUNK:
            self.flush()

    def string(self, s: bytes) -> None:
        if len(s) > _CHUNK:
            self.raw(_length(len(s)))
            self.flush()
            self._write(s)
        else:
            self.raw(_string(s))

    def flush(self) -> None:
        if self._parts:
            self._write(b"".join(self._parts))
            self._parts = []
            self._size = 0


def _counted(elements: Iterable[_T], count: int, method: str) -> Iterator[_T]:
    """``elements``, raising ``ValueError`` as soon as they prove not to number ``count``."""
    n = 0
    for element in elements:
        if n == count:
            raise ValueError(f"{method}: the elements go on past count={count}")
        n += 1
        yield element
    if n != count:
        raise ValueError(f"{method}: {n} elements, count={count}")


def _expect_empty(elements: Iterable[object], method: str) -> None:
    for _ in elements:
        raise ValueError(f"{method}: count=0 but there are elements")


# -- reading --------------------------------------------------------------------------------


def lzf_decompress(data: bytes, out_len: int) -> bytes:
    """Decompress LZF ``data`` (liblzf's format, as Redis writes it) to exactly ``out_len`` bytes.

    Raises :class:`RDBError` if ``data`` is malformed or does not expand to ``out_len`` bytes;
    never writes more than ``out_len`` bytes.
    """
    out = bytearray()
    i = 0
    end = len(data)
    while i < end:
        ctrl = data[i]
        i += 1
        if ctrl < 32:  # a literal run of ctrl + 1 bytes
            ctrl += 1
            if i + ctrl > end:
                raise RDBError("malformed LZF data: a literal run goes past the input")
            if len(out) + ctrl > out_len:
                raise RDBError("malformed LZF data: output longer than declared")
            out += data[i:i + ctrl]
            i += ctrl
            continue
        # A back reference: length ctrl >> 5 (+ next byte when 7) + 2, distance 13 bits + 1.
        length = ctrl >> 5
        if length == 7:
            if i >= end:
                raise RDBError("malformed LZF data: a back reference is cut short")
            length += data[i]
            i += 1
        if i >= end:
            raise RDBError("malformed LZF data: a back reference is cut short")
        distance = ((ctrl & 0x1F) << 8) + data[i] + 1
        i += 1
        length += 2
        here = len(out)
        ref = here - distance
        if ref < 0:
            raise RDBError("malformed LZF data: a back reference before the start")
        if here + length > out_len:
            raise RDBError("malformed LZF data: output longer than declared")
        if distance >= length:  # disjoint: one slice
            out += out[ref:ref + length]
        else:  # overlapping: the last `distance` bytes repeat
            pattern = out[ref:here]
            reps, rest = divmod(length, distance)
            out += pattern * reps + pattern[:rest]
    if len(out) != out_len:
        raise RDBError(f"malformed LZF data: {len(out)} bytes, declared {out_len}")
    return bytes(out)


def _module_name(module_id: int) -> str:
    """The 9-character module type name in a module id (moduleTypeNameByID)."""
    module_id >>= 10
    chars = []
    for _ in range(9):
        chars.append(_MODULE_NAME_CHARS[module_id & 63])
        module_id >>= 6
    return "".join(reversed(chars))


class _Reader:
    """Buffered reading of an RDB with the running CRC-64 and the position of every byte.

    ``buf[pos:]`` is read but not consumed; ``base`` is the file offset of ``buf[0]``; ``crc``
    covers the file up to ``base``. Nothing past what a caller asks for is consumed, though up
    to ``_CHUNK`` bytes past it may be read from the source.
    """

    __slots__ = ("base", "buf", "crc", "limit", "pos", "src_read")

    def __init__(self, src_read: Callable[[int], bytes | None], limit: int | None) -> None:
        self.src_read = src_read
        self.buf = b""
        self.pos = 0
        self.base = 0
        self.crc = 0
        self.limit = limit

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _drop_consumed(self) -> None:
        """Fold the consumed bytes into the CRC and forget them."""
        if self.pos:
            self.crc = _crc64_fun(self.buf[:self.pos], self.crc)
            self.base += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0

    def _source(self, n: int) -> bytes:
        data: object = self.src_read(n)
        if isinstance(data, bytes):
            return data
        if data is None:  # a non-blocking source with nothing now: nothing will come
            return b""
        if isinstance(data, (bytearray, memoryview)):
            return bytes(data)
        raise TypeError(f"the RDB source's read() returned {type(data).__name__}, not bytes")

    def _fill(self, n: int) -> None:
        """Make ``n`` (at most ``_CHUNK``) bytes available at ``pos``, or raise truncated."""
        self._drop_consumed()
        parts = [self.buf]
        have = len(self.buf)
        while have < n:
            data = self._source(_CHUNK)
            if not data:
                self.buf = b"".join(parts)  # what did arrive (the magic check looks at it)
                raise RDBError(f"truncated RDB at byte {self.base + have}")
            parts.append(data)
            have += len(data)
        self.buf = b"".join(parts)

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        pos = self.pos
        end = pos + n
        if end <= len(self.buf):
            self.pos = end
            return self.buf[pos:end]
        if n > _CHUNK:
            return self._take_big(n, keep=True)
        self._fill(n)
        self.pos = n
        return self.buf[:n]

    def skip(self, n: int) -> None:
        """Consume ``n`` bytes without keeping them (still checksummed)."""
        end = self.pos + n
        if end <= len(self.buf):
            self.pos = end
        elif n > _CHUNK:
            self._take_big(n, keep=False)
        else:
            self._fill(n)
            self.pos = n

    def _take_big(self, n: int, keep: bool) -> bytes:
        """Read ``n`` bytes in bounded chunks straight from the source."""
        self._drop_consumed()
        head = self.buf[:n]
        self.crc = _crc64_fun(head, self.crc)
        self.base += len(head)
        self.buf = self.buf[len(head):]
        parts = [head] if keep else []
        need = n - len(head)
        while need:
            data = self._source(min(need, _BIG_CHUNK))
            if not data:
                raise RDBError(f"truncated RDB at byte {self.base}")
            if len(data) > need:  # a source that returned more than asked: keep the rest
                self.buf = data[need:]
                data = data[:need]
            self.crc = _crc64_fun(data, self.crc)
            self.base += len(data)
            need -= len(data)
            if keep:
                parts.append(data)
        return b"".join(parts)

    def byte(self) -> int:
        pos = self.pos
        if pos >= len(self.buf):
            self._fill(1)
            pos = 0
        self.pos = pos + 1
        return self.buf[pos]

    def length(self) -> int:
        """A plain length (rdbLoadLen); an encoded-string marker here is corruption."""
        at = self.offset
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            return first
        if kind == 1:
            return ((first & 0x3F) << 8) | self.byte()
        if first == 0x80:
            return int.from_bytes(self.take(4), "big")
        if first == 0x81:
            return int.from_bytes(self.take(8), "big")
        raise RDBError(f"bad length byte 0x{first:02x} at byte {at}")

    def string(self) -> bytes:
        """A string in any encoding, decoded; lengths checked against ``limit`` first."""
        at = self.offset
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            n = first
        elif kind == 1:
            n = ((first & 0x3F) << 8) | self.byte()
        elif kind == 3:
            enc = first & 0x3F
            if enc == _ENC_INT8:
                return b"%d" % int.from_bytes(self.take(1), "little", signed=True)
            if enc == _ENC_INT16:
                return b"%d" % int.from_bytes(self.take(2), "little", signed=True)
            if enc == _ENC_INT32:
                return b"%d" % int.from_bytes(self.take(4), "little", signed=True)
            if enc == _ENC_LZF:
                compressed_len = self.length()
                out_len = self.length()
                self._check_limit(compressed_len, "LZF compressed length", at)
                self._check_limit(out_len, "LZF uncompressed length", at)
                data = self.take(compressed_len)
                try:
                    return lzf_decompress(data, out_len)
                except RDBError as exc:
                    raise RDBError(f"{exc} (string at byte {at})") from None
            raise RDBError(f"unknown string encoding {enc} at byte {at}")
        elif first == 0x80:
            n = int.from_bytes(self.take(4), "big")
        elif first == 0x81:
            n = int.from_bytes(self.take(8), "big")
        else:
            raise RDBError(f"bad length byte 0x{first:02x} at byte {at}")
        self._check_limit(n, "string length", at)
        return self.take(n)

    def skip_string(self) -> None:
        """Step over a string in any encoding without decoding or keeping it."""
        at = self.offset
        first = self.byte()
        kind = first >> 6
        if kind == 3:
            enc = first & 0x3F
            if enc == _ENC_INT8:
                self.skip(1)
            elif enc == _ENC_INT16:
                self.skip(2)
            elif enc == _ENC_INT32:
                self.skip(4)
            elif enc == _ENC_LZF:
                compressed_len = self.length()
                self.length()
                self.skip(compressed_len)
            else:
                raise RDBError(f"unknown string encoding {enc} at byte {at}")
            return
        if kind == 0:
            n = first
        elif kind == 1:
            n = ((first & 0x3F) << 8) | self.byte()
        elif first == 0x80:
            n = int.from_bytes(self.take(4), "big")
        elif first == 0x81:
            n = int.from_bytes(self.take(8), "big")
        else:
            raise RDBError(f"bad length byte 0x{first:02x} at byte {at}")
        self.skip(n)

    def _check_limit(self, n: int, what: str, at: int) -> None:
        if self.limit is not None and n > self.limit:
            raise RDBError(f"{what} {n} at byte {at} is over the limit of {self.limit} bytes")

    def finish_crc(self) -> int:
        """The CRC-64 of everything consumed so far."""
        return _crc64_fun(self.buf[:self.pos], self.crc)


def _skip_value(r: _Reader, rdb_type: int, at: int) -> None:
    """Step over the value of a non-string key of ``rdb_type`` (rdbLoadObject's structure)."""
    if rdb_type in _BLOB_TYPES:
        r.skip_string()
    elif rdb_type in (TYPE_LIST, TYPE_SET, TYPE_LIST_QUICKLIST):
        for _ in range(r.length()):
            r.skip_string()
    elif rdb_type == TYPE_HASH:
        for _ in range(r.length()):
            r.skip_string()
            r.skip_string()
    elif rdb_type == TYPE_ZSET_2:
        for _ in range(r.length()):
            r.skip_string()
            r.skip(8)  # binary double
    elif rdb_type == TYPE_ZSET:
        for _ in range(r.length()):
            r.skip_string()
            n = r.byte()  # a double as text: length byte, 253..255 NaN/+inf/-inf
            if n < 253:
                r.skip(n)
    elif rdb_type == TYPE_LIST_QUICKLIST_2:
        for _ in range(r.length()):
            container = r.length()
            if container not in (1, 2):  # QUICKLIST_NODE_CONTAINER_PLAIN / _PACKED
                raise RDBError(f"bad quicklist container {container} in the list at byte {at}")
            r.skip_string()
    elif rdb_type in (TYPE_STREAM_LISTPACKS, TYPE_STREAM_LISTPACKS_2, TYPE_STREAM_LISTPACKS_3):
        _skip_stream(r, rdb_type)
    elif rdb_type == TYPE_HASH_LISTPACK_EX:
        r.skip(8)  # the minimum field expiry
        r.skip_string()
    elif rdb_type in (TYPE_HASH_METADATA, TYPE_HASH_METADATA_PRE_GA):
        if rdb_type == TYPE_HASH_METADATA:
            r.skip(8)  # the minimum field expiry
        for _ in range(r.length()):
            r.length()  # the field's TTL
            r.skip_string()
            r.skip_string()
    elif rdb_type == TYPE_MODULE_2:
        module_id = r.length()
        _skip_module_value(r, _module_name(module_id), at)
    else:
        raise RDBError(f"unknown type {rdb_type} at byte {at}")


# -- decoding the collection types -------------------------------------------------------------


class _Packed:
    """Decodes the packed blobs of one key, naming the key and where it starts when a blob is
    malformed."""

    __slots__ = ("at", "key", "type_name")

    def __init__(self, key: bytes, type_name: str, at: int) -> None:
        self.key = key
        self.type_name = type_name
        self.at = at

    def _error(self, what: str, detail: object) -> RDBError:
        return RDBError(f"malformed {what} in the {self.type_name} {self.key[:64]!r} (the key "
                        f"at byte {self.at}): {detail}")

    def listpack(self, blob: bytes, what: str = "listpack") -> list[bytes]:
        try:
            return rdb_packed.listpack_elements(blob)
        except rdb_packed.PackedError as exc:
            raise self._error(what, exc) from None

    def ziplist(self, blob: bytes, what: str = "ziplist") -> list[bytes]:
        try:
            return rdb_packed.ziplist_elements(blob)
        except rdb_packed.PackedError as exc:
            raise self._error(what, exc) from None

    def intset(self, blob: bytes) -> list[bytes]:
        try:
            return rdb_packed.intset_members(blob)
        except rdb_packed.PackedError as exc:
            raise self._error("intset", exc) from None

    def zipmap(self, blob: bytes) -> list[tuple[bytes, bytes]]:
        try:
            return rdb_packed.zipmap_pairs(blob)
        except rdb_packed.PackedError as exc:
            raise self._error("zipmap", exc) from None

    def pairs(self, elements: list[bytes], what: str) -> list[tuple[bytes, bytes]]:
        if len(elements) % 2:
            raise self._error(what, f"an odd number of elements, {len(elements)}")
        return list(zip(elements[::2], elements[1::2], strict=True))

    def score(self, text: bytes, where: str) -> float:
        try:
            return rdb_packed.score_from_text(text)
        except ValueError as exc:
            raise RDBError(f"{exc} {where} of the zset {self.key[:64]!r} (the key at byte "
                           f"{self.at})") from None


def _read_hash(r: _Reader, rdb_type: int, packed: _Packed) -> list[tuple[bytes, bytes]]:
    if rdb_type == TYPE_HASH:
        string = r.string
        return [(string(), string()) for _ in range(r.length())]
    blob = r.string()
    if rdb_type == TYPE_HASH_LISTPACK:
        return packed.pairs(packed.listpack(blob), "listpack")
    if rdb_type == TYPE_HASH_ZIPLIST:
        return packed.pairs(packed.ziplist(blob), "ziplist")
    return packed.zipmap(blob)  # TYPE_HASH_ZIPMAP


def _read_set(r: _Reader, rdb_type: int, packed: _Packed) -> list[bytes]:
    if rdb_type == TYPE_SET:
        string = r.string
        return [string() for _ in range(r.length())]
    blob = r.string()
    if rdb_type == TYPE_SET_INTSET:
        return packed.intset(blob)
    return packed.listpack(blob)  # TYPE_SET_LISTPACK


def _read_list(r: _Reader, rdb_type: int, packed: _Packed) -> list[bytes]:
    if rdb_type == TYPE_LIST:
        string = r.string
        return [string() for _ in range(r.length())]
    if rdb_type == TYPE_LIST_ZIPLIST:
        return packed.ziplist(r.string())
    items: list[bytes] = []
    for _ in range(r.length()):  # quicklist nodes; Redis skips empty ones
        if rdb_type == TYPE_LIST_QUICKLIST:
            items += packed.ziplist(r.string(), "quicklist ziplist node")
            continue
        container_at = r.offset
        container = r.length()
        if container == _QUICKLIST_PLAIN:
            items.append(r.string())
        elif container == _QUICKLIST_PACKED:
            items += packed.listpack(r.string(), "quicklist listpack node")
        else:
            raise RDBError(f"bad quicklist container {container} at byte {container_at} in the "
                           f"list {packed.key[:64]!r} (the key at byte {packed.at})")
    return items


def _read_zset(r: _Reader, rdb_type: int, packed: _Packed) -> list[tuple[bytes, float]]:
    if rdb_type == TYPE_ZSET_2:
        out: list[tuple[bytes, float]] = []
        for _ in range(r.length()):
            member = r.string()
            score_at = r.offset
            score = _DOUBLE.unpack(r.take(8))[0]
            if math.isnan(score):
                raise RDBError(f"NaN score at byte {score_at} in the zset {packed.key[:64]!r} "
                               f"(the key at byte {packed.at})")
            out.append((member, score))
        return out
    if rdb_type == TYPE_ZSET:
        out = []
        for _ in range(r.length()):
            member = r.string()
            score_at = r.offset
            n = r.byte()  # a double as text: its length, or 253 NaN, 254 +inf, 255 -inf
            if n == 254:
                out.append((member, math.inf))
            elif n == 255:
                out.append((member, -math.inf))
            else:
                text = b"nan" if n == 253 else r.take(n)
                out.append((member, packed.score(text, f"at byte {score_at}")))
        return out
    blob = r.string()
    if rdb_type == TYPE_ZSET_LISTPACK:
        elements = packed.pairs(packed.listpack(blob), "listpack")
    else:  # TYPE_ZSET_ZIPLIST
        elements = packed.pairs(packed.ziplist(blob), "ziplist")
    where = "in the listpack" if rdb_type == TYPE_ZSET_LISTPACK else "in the ziplist"
    return [(member, packed.score(score, where)) for member, score in elements]


# Which reader decodes each RDB type of the four collection types.
_COLLECTION_READERS: dict[int, Callable[[_Reader, int, _Packed], list[Any]]] = {
    TYPE_HASH: _read_hash, TYPE_HASH_ZIPMAP: _read_hash, TYPE_HASH_ZIPLIST: _read_hash,
    TYPE_HASH_LISTPACK: _read_hash,
    TYPE_SET: _read_set, TYPE_SET_INTSET: _read_set, TYPE_SET_LISTPACK: _read_set,
    TYPE_LIST: _read_list, TYPE_LIST_ZIPLIST: _read_list, TYPE_LIST_QUICKLIST: _read_list,
    TYPE_LIST_QUICKLIST_2: _read_list,
    TYPE_ZSET: _read_zset, TYPE_ZSET_2: _read_zset, TYPE_ZSET_ZIPLIST: _read_zset,
    TYPE_ZSET_LISTPACK: _read_zset,
}


def _skip_stream(r: _Reader, rdb_type: int) -> None:
    for _ in range(r.length()):  # listpacks: master id, listpack
        r.skip_string()
        r.skip_string()
    for _ in range(3):  # length, last id (ms, seq)
        r.length()
    if rdb_type >= TYPE_STREAM_LISTPACKS_2:
        for _ in range(5):  # first id, max deleted id, entries added
            r.length()
    for _ in range(r.length()):  # consumer groups
        r.skip_string()  # name
        r.length()  # last delivered id
        r.length()
        if rdb_type >= TYPE_STREAM_LISTPACKS_2:
            r.length()  # entries read
        for _ in range(r.length()):  # the group's PEL: id, delivery time, delivery count
            r.skip(16 + 8)
            r.length()
        for _ in range(r.length()):  # consumers
            r.skip_string()  # name
            r.skip(8)  # seen time
            if rdb_type >= TYPE_STREAM_LISTPACKS_3:
                r.skip(8)  # active time
            for _ in range(r.length()):  # the consumer's PEL: ids
                r.skip(16)


def _skip_module_value(r: _Reader, name: str, at: int) -> None:
    """Step over module data written with annotations (rdbLoadCheckModuleValue)."""
    while True:
        opcode_at = r.offset
        opcode = r.length()
        if opcode == _MODULE_EOF:
            return
        if opcode in (_MODULE_SINT, _MODULE_UINT):
            r.length()
        elif opcode == _MODULE_STRING:
            r.skip_string()
        elif opcode == _MODULE_FLOAT:
            r.skip(4)
        elif opcode == _MODULE_DOUBLE:
            r.skip(8)
        else:
            raise RDBError(f"unknown module opcode {opcode} at byte {opcode_at} in the data of "
                           f"module {name!r} (at byte {at})")


def read_rdb(src: Source, *,
             on_string: Callable[[int, bytes, bytes, int], object],
             on_skipped: Callable[[int, bytes, str], object] | None = None,
             on_aux: Callable[[bytes, bytes], object] | None = None,
             max_value_len: int | None = DEFAULT_MAX_VALUE_LEN,
             now_ms: int | None = None,
             on_hash: Callable[[int, bytes, list[tuple[bytes, bytes]], int], object] | None = None,
             on_set: Callable[[int, bytes, list[bytes], int], object] | None = None,
             on_list: Callable[[int, bytes, list[bytes], int], object] | None = None,
             on_zset: Callable[[int, bytes, list[tuple[bytes, float]], int], object] | None = None,
             ) -> RDBSummary:
    """Read an RDB (versions 1..12) from ``src``, calling back for what it holds.

    ``on_string(db, key, value, expire_ms)`` for each string key (``expire_ms`` absolute Unix
    milliseconds, 0 for none; expired keys are reported too). ``on_hash(db, key, pairs,
    expire_ms)`` with a list of (field, value), ``on_set(db, key, members, expire_ms)`` with a
    list of members, ``on_list(db, key, items, expire_ms)`` with the items head first,
    ``on_zset(db, key, pairs, expire_ms)`` with a list of (member, score: a float, ±inf
    possible, never NaN) for each key of those types, in any of their encodings (Redis 2.x to
    7.2: plain, zipmap, ziplist, intset, listpack, quicklist 1 and 2). Integer-encoded elements
    come as their decimal text. Each collection is handed over whole, as a list: it is held in
    memory once while the callback runs (its blob too, for a packed one: up to
    ``max_value_len``), which is fine for loading a snapshot, where the store holds it anyway.
    Elements come as the RDB has them: Redis never writes duplicates, and the reader does not
    look for them. A collection with no element is not reported (Redis's loader drops one
    too; ``summary.empty`` counts them).

    ``on_skipped(db, key, type_name)`` for each key stepped over: streams, modules, the 7.4+
    hashes with field expiry (types 22..25; bitkv keeps no per-field TTL), and a hash, set,
    list or zset whose callback is None (``type_name``: list, set, zset, hash, stream or
    module). ``on_aux(name, value)`` for each aux field. Keys, values, elements, packed blobs
    and aux strings longer than ``max_value_len`` (None: no limit) are refused before any of
    their bytes are held. ``now_ms`` (default: the clock when the read begins) is the time
    ``summary.expired`` is counted against.

    Reads stop after the checksum trailer, but up to 64 KiB past the RDB may have been read from
    ``src``: bound ``src`` to the RDB if the stream goes on. Returns an :class:`RDBSummary`.

    Raises :class:`RDBError` for anything wrong with the bytes (bad magic, unsupported version,
    truncation, unknown type or opcode, malformed encoding (a packed blob's message names the
    key and the byte of the blob), a NaN score, checksum mismatch, a length over the limit),
    having possibly called back for the keys before the damage; exceptions from the callbacks
    and from ``src.read`` propagate unchanged.
    """
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    r = _Reader(src.read, max_value_len)
    try:
        magic = r.take(9)
    except RDBError:
        if not r.buf.startswith(b"REDIS"[:len(r.buf)]):
            raise RDBError(f"bad magic {r.buf[:5]!r}: not an RDB file") from None
        raise
    if magic[:5] != b"REDIS":
        raise RDBError(f"bad magic {magic[:5]!r}: not an RDB file")
    if not magic[5:].isdigit():
        raise RDBError(f"bad RDB version field {magic[5:]!r}")
    version = int(magic[5:])
    if not 1 <= version <= MAX_READ_VERSION:
        raise RDBError(f"unsupported RDB version {version}")
    summary = RDBSummary(version=version)
    skipped_by_type = summary.skipped_by_type
    callbacks: dict[str, Callable[[int, bytes, Any, int], object] | None] = {
        "hash": on_hash, "set": on_set, "list": on_list, "zset": on_zset}
    loaded = dict.fromkeys(callbacks, 0)
    db = 0
    expire_ms = 0
    strings = 0
    expired = 0
    while True:
        at = r.offset
        opcode = r.byte()
        if opcode == TYPE_STRING:
            key = r.string()
            value = r.string()
            on_string(db, key, value, expire_ms)
            strings += 1
            if expire_ms:
                if expire_ms <= now_ms:
                    expired += 1
                expire_ms = 0
        elif opcode == OP_EXPIRETIME_MS:
            # Versions before 9 wrote the host's byte order; every such file met is x86's.
            # An expiry at or before the epoch is expired: 1, as 0 says "none".
            expire_ms = max(1, int.from_bytes(r.take(8), "little", signed=True))
        elif opcode in TYPE_NAMES:
            key = r.string()
            type_name = TYPE_NAMES[opcode]
            callback = callbacks.get(type_name)
            reader = _COLLECTION_READERS.get(opcode)
            if callback is not None and reader is not None:
                elements = reader(r, opcode, _Packed(key, type_name, at))
                if elements:
                    callback(db, key, elements, expire_ms)
                    loaded[type_name] += 1
                    if expire_ms and expire_ms <= now_ms:
                        expired += 1
                else:  # Redis's loader drops an empty collection too
                    summary.empty += 1
            else:
                _skip_value(r, opcode, at)
                skipped_by_type[type_name] = skipped_by_type.get(type_name, 0) + 1
                summary.skipped += 1
                if on_skipped is not None:
                    on_skipped(db, key, type_name)
            expire_ms = 0
        elif opcode == OP_SELECTDB:
            db = r.length()
            summary.databases.add(db)
        elif opcode == OP_AUX:
            name = r.string()
            value = r.string()
            summary.aux[name] = value
            if on_aux is not None:
                on_aux(name, value)
        elif opcode == OP_RESIZEDB:
            r.length()
            r.length()
        elif opcode == OP_EXPIRETIME:
            expire_ms = max(1, int.from_bytes(r.take(4), "little", signed=True) * 1000)
        elif opcode == OP_IDLE:
            r.length()
        elif opcode == OP_FREQ:
            r.skip(1)
        elif opcode == OP_EOF:
            break
        elif opcode == OP_FUNCTION2:
            r.skip_string()  # the library's code
            summary.functions += 1
        elif opcode == OP_FUNCTION_PRE_GA:
            r.skip_string()  # name
            r.skip_string()  # engine
            if r.length():
                r.skip_string()  # description
            r.skip_string()  # code
            summary.functions += 1
        elif opcode == OP_MODULE_AUX:
            module_id = r.length()
            when_at = r.offset
            if r.length() != _MODULE_UINT:
                raise RDBError(f"bad module aux 'when' opcode at byte {when_at}")
            r.length()  # when
            _skip_module_value(r, _module_name(module_id), at)
        elif opcode == OP_SLOT_INFO:
            for _ in range(3):  # slot id, slot size, expires slot size
                r.length()
        elif opcode == TYPE_MODULE_PRE_GA:
            key = r.string()
            raise RDBError(f"type 6 (pre-release module value) of key {key[:64]!r} at byte {at} "
                           f"cannot be skipped: its structure is known only to the module")
        elif opcode < OP_SLOT_INFO:
            raise RDBError(f"unknown type {opcode} at byte {at}")
        else:
            raise RDBError(f"unknown opcode {opcode} at byte {at}")
    summary.strings = strings
    summary.expired = expired
    summary.hashes, summary.sets = loaded["hash"], loaded["set"]
    summary.lists, summary.zsets = loaded["list"], loaded["zset"]
    if version >= 5:
        expected = r.finish_crc()
        stored = int.from_bytes(r.take(8), "little")
        if stored == 0:
            summary.checksum = "disabled"
        elif stored != expected:
            raise RDBError(f"RDB checksum mismatch: expected {expected:016x}, "
                           f"stored {stored:016x}")
        else:
            summary.checksum = "ok"
    else:
        summary.checksum = "absent"
    summary.size = r.offset
    return summary
