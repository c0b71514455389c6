"""Hashes, sets, lists and sorted sets in the RDB codec (bitkv/rdb.py, bitkv/rdb_packed.py).

* writer -> reader for each type: empty, binary, integer-like and big elements, ±inf, expiry;
  the writer streams (lazy, bounded writes, big elements not copied) and a count that does
  not match the elements leaves an RDB that can never be finished.
* writer -> Redis 7.0: redis-server loads what we write and shows the same contents and TTLs.
* Redis 7.0 -> reader: every encoding Redis 7.0 writes for these types (listpack, intset,
  hashtable, skiplist, quicklist 2 with packed and plain nodes), compared with redis-py's view.
* older encodings (zipmap, ziplist, quicklist 1, text-double zsets) and 7.2's set listpack,
  from hand-built bytes explained byte by byte.
* damage: malformed packed blobs name the key and the offset; hypothesis mutations of an RDB
  holding every encoding only ever raise RDBError.
"""

from __future__ import annotations

import io
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from procs import RedisProcess, needs_redis

from bitkv import rdb, rdb_packed

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "fuzz"))

import fuzz_rdb_types
from fuzz_rdb import enc_str

REPLID = "5d1c0b2a39485766a5b4c3d2e1f0a9b8c7d6e5f4"
REDIS_CHECK_RDB = shutil.which("redis-check-rdb")

Seen = dict[str, dict[tuple[int, bytes], tuple[object, int]]]


def read_types(data: bytes, *, unique: bool = True,
               **kwargs: object) -> tuple[rdb.RDBSummary, Seen]:
    """Read with every callback; type name -> (db, key) -> (elements, expire_ms).
    ``unique``: the RDB was written with each key once (a damaged one may repeat a key: the
    reader passes on what the bytes say, and the caller decides)."""
    seen: Seen = {"string": {}, "hash": {}, "set": {}, "list": {}, "zset": {}}

    def record(name: str):  # type: ignore[no-untyped-def]
        def callback(db: int, key: bytes, elements: object, expire_ms: int) -> None:
            assert not unique or (db, key) not in seen[name]
            seen[name][db, key] = (elements, expire_ms)
        return callback

    summary = rdb.read_rdb(io.BytesIO(data), on_string=record("string"), on_hash=record("hash"),
                           on_set=record("set"), on_list=record("list"), on_zset=record("zset"),
                           **kwargs)  # type: ignore[arg-type]
    return summary, seen


def rdb_error(data: bytes, **kwargs: object) -> str:
    with pytest.raises(rdb.RDBError) as info:
        read_types(data, **kwargs)
    return str(info.value)


def new_writer(f: rdb.Sink) -> rdb.RDBWriter:
    return rdb.RDBWriter(f, repl_id=REPLID, repl_offset=1)


def with_trailer(body: bytes) -> bytes:
    return body + b"\xff" + struct.pack("<Q", rdb.crc64(body + b"\xff"))


HEAD = b"REDIS0010\xfe\x00"  # magic, version 10, SELECTDB 0


# -- writer -> reader ---------------------------------------------------------------------------

BIG = random.Random(7).randbytes(200_000)  # over the writer's 64 KiB chunk: written uncopied
ELEMENTS = [b"", b"0", b"-1", b"127", b"-128", b"32768", b"-2147483648", b"2147483648", b"007",
            b"-0", b"+1", b"1.5", bytes(range(256)), b"\x00", b"x" * 300, BIG]
HASH = [(b"f%d" % i, e) for i, e in enumerate(ELEMENTS)] + [(b"", b"empty field"), (BIG, b"")]
ZSET = [(b"inf", math.inf), (b"-inf", -math.inf), (b"zero", 0.0), (b"neg", -2.5),
        (b"tiny", 5e-324), (b"huge", 1.7976931348623157e308), (b"", 1.0), (BIG, 3.0)]


def write_types(expire_ms: int = 0) -> bytes:
    f = io.BytesIO()
    writer = new_writer(f)
    writer.add_hash(b"hash", len(HASH), iter(HASH), expire_ms)
    writer.add_set(b"set", len(ELEMENTS), iter(ELEMENTS), expire_ms)
    writer.add_list(b"list", len(ELEMENTS) * 2, iter(ELEMENTS * 2), expire_ms)
    writer.add_zset(b"zset", len(ZSET), iter(ZSET), expire_ms)
    writer.add_string(b"string", b"after them", 0)
    writer.finish()
    return f.getvalue()


@pytest.mark.parametrize("expire_ms", [0, 1900000000123])
def test_roundtrip_every_type(expire_ms: int) -> None:
    summary, seen = read_types(write_types(expire_ms))
    assert seen["hash"] == {(0, b"hash"): (HASH, expire_ms)}
    assert seen["set"] == {(0, b"set"): (ELEMENTS, expire_ms)}
    assert seen["list"] == {(0, b"list"): (ELEMENTS * 2, expire_ms)}
    assert seen["zset"] == {(0, b"zset"): (ZSET, expire_ms)}
    assert seen["string"] == {(0, b"string"): (b"after them", 0)}  # no expiry leaks onto it
    assert (summary.hashes, summary.sets, summary.lists, summary.zsets, summary.strings) == (
        1, 1, 1, 1, 1)
    assert (summary.skipped, summary.empty, summary.checksum) == (0, 0, "ok")
    zset = seen["zset"][0, b"zset"][0]
    assert isinstance(zset, list) and math.copysign(1, zset[2][1]) == 1.0


def test_elements_are_written_as_redis_writes_them() -> None:
    f = io.BytesIO()
    writer = new_writer(f)
    start = writer.bytes_written
    writer.add_list(b"l", 4, [b"-5", b"300", b"007", b""], 0)
    writer.add_zset(b"z", 1, [(b"m", -math.inf)], 1900000000000)
    data = f.getvalue()[start:]
    # type 1 (list), key "l", 4 items: INT8 -5, INT16 300, raw "007", raw ""
    assert data[:14] == b"\x01\x01l\x04" + b"\xc0\xfb" + b"\xc1\x2c\x01" + b"\x03007" + b"\x00"
    # expiry, type 5 (zset 2), key "z", 1 member: "m", -inf as a little-endian double
    assert data[14:] == b"\xfc" + (1900000000000).to_bytes(8, "little") + b"\x05\x01z\x01" + \
        b"\x01m" + struct.pack("<d", -math.inf)


def test_callbacks_without_collection_callbacks_skip_as_before() -> None:
    skipped: list[tuple[int, bytes, str]] = []
    strings: list[object] = []
    summary = rdb.read_rdb(io.BytesIO(write_types()), on_string=lambda *a: strings.append(a),
                           on_skipped=lambda *a: skipped.append(a))
    assert skipped == [(0, b"hash", "hash"), (0, b"set", "set"), (0, b"list", "list"),
                       (0, b"zset", "zset")]
    assert summary.skipped_by_type == {"hash": 1, "set": 1, "list": 1, "zset": 1}
    assert (summary.hashes, summary.sets, summary.lists, summary.zsets) == (0, 0, 0, 0)
    assert len(strings) == 1
    # one callback given: that type is decoded, the others still skipped
    sets: list[object] = []
    summary = rdb.read_rdb(io.BytesIO(write_types()), on_string=print,
                           on_set=lambda *a: sets.append(a))
    assert len(sets) == 1 and summary.skipped_by_type == {"hash": 1, "list": 1, "zset": 1}


def test_expired_counts_collections_too() -> None:
    now = 1_800_000_000_000
    f = io.BytesIO()
    writer = new_writer(f)
    writer.add_set(b"past", 1, [b"m"], now - 1)
    writer.add_hash(b"edge", 1, [(b"f", b"v")], now)
    writer.add_list(b"future", 1, [b"i"], now + 1)
    writer.add_zset(b"never", 1, [(b"m", 1.0)], 0)
    writer.finish()
    summary, seen = read_types(f.getvalue(), now_ms=now)
    assert summary.expired == 2  # expire_ms <= now_ms, reported all the same
    assert seen["set"][0, b"past"] == ([b"m"], now - 1)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=20) | st.integers(-2**40, 2**40).map(lambda i: b"%d" % i),
                min_size=1, max_size=20),
       st.lists(st.floats(allow_nan=False), min_size=1, max_size=20),
       st.just(0) | st.integers(1, 2**63 - 1))
def test_roundtrip_hypothesis(elements: list[bytes], scores: list[float], expire_ms: int) -> None:
    members = list(dict.fromkeys(elements))  # distinct, as a set's and a hash's must be
    pairs = [(m, e) for m, e in zip(members, reversed(elements), strict=False)]
    zset = list(zip(members, scores, strict=False))
    f = io.BytesIO()
    writer = new_writer(f)
    writer.add_list(b"l", len(elements), elements, expire_ms)
    writer.add_set(b"s", len(members), members, expire_ms)
    writer.add_hash(b"h", len(pairs), pairs, expire_ms)
    writer.add_zset(b"z", len(zset), zset, expire_ms)
    writer.finish()
    _, seen = read_types(f.getvalue())
    assert seen["list"][0, b"l"] == (elements, expire_ms)
    assert seen["set"][0, b"s"] == (members, expire_ms)
    assert seen["hash"][0, b"h"] == (pairs, expire_ms)
    assert seen["zset"][0, b"z"] == (zset, expire_ms)


# -- the writer's contract: streaming, count, misuse ---------------------------------------------


class RefSink:
    """Keeps what it is given, by reference: shows whether the writer copied an element."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes, /) -> None:
        self.chunks.append(data)


def test_writer_streams_lazily_in_bounded_writes() -> None:
    sink = RefSink()
    writer = new_writer(sink)
    consumed = 0
    first_write_at: list[int] = []
    n = 100_000

    def members() -> Iterator[bytes]:
        nonlocal consumed
        for i in range(n):
            if len(sink.chunks) > 1 and not first_write_at:
                first_write_at.append(consumed)
            consumed += 1
            yield b"member:%d" % i

    writer.add_set(b"s", n, members(), 0)
    # the first bytes of the set went out long before the last member was taken
    assert first_write_at and first_write_at[0] < n // 10
    assert max(map(len, sink.chunks[1:])) < 2 * 65536  # chunks of ~64 KiB, not the whole set
    writer.add_list(b"l", 3, iter([b"a", BIG, b"b"]), 0)
    assert any(chunk is BIG for chunk in sink.chunks)  # the big item itself, not a copy
    writer.add_hash(b"h", 1, iter([(b"f", BIG)]), 0)
    writer.add_zset(b"z", 1, iter([(BIG, 1.0)]), 0)
    assert sum(chunk is BIG for chunk in sink.chunks) == 3
    writer.finish()
    data = b"".join(sink.chunks)
    assert writer.bytes_written == len(data)
    _summary, seen = read_types(data)
    assert len(seen["set"][0, b"s"][0]) == n  # type: ignore[arg-type]
    assert seen["list"][0, b"l"] == ([b"a", BIG, b"b"], 0)


@pytest.mark.parametrize("method, good", [
    ("add_hash", [(b"f", b"v"), (b"g", b"w")]), ("add_set", [b"a", b"b"]),
    ("add_list", [b"a", b"a"]), ("add_zset", [(b"a", 1.0), (b"b", 2.0)])])
def test_a_count_that_does_not_match_leaves_an_unfinishable_rdb(method: str,
                                                                  good: list[object]) -> None:
    for count, message in ((3, "2 elements, count=3"), (1, "past count=1")):
        sink = RefSink()
        writer = new_writer(sink)
        with pytest.raises(ValueError, match=message):
            getattr(writer, method)(b"k", count, iter(good), 0)
        with pytest.raises(ValueError, match="unusable"):
            writer.finish()
        with pytest.raises(ValueError, match="unusable"):
            writer.add_string(b"x", b"y", 0)
        # whatever reached the sink is no valid RDB
        with pytest.raises(rdb.RDBError):
            read_types(b"".join(sink.chunks))
    # the right count: fine; count 0 with nothing writes nothing
    f = io.BytesIO()
    writer = new_writer(f)
    before = writer.bytes_written
    getattr(writer, method)(b"empty", 0, iter([]), 0)
    assert writer.bytes_written == before
    with pytest.raises(ValueError, match="count=0 but there are elements"):
        getattr(writer, method)(b"k", 0, iter(good), 0)
    getattr(writer, method)(b"k", 2, iter(good), 0)
    writer.finish()
    assert read_types(f.getvalue())[0].empty == 0


def test_writer_refuses_nan_bad_expiry_and_a_failing_iterable() -> None:
    writer = new_writer(io.BytesIO())
    with pytest.raises(ValueError, match="NaN score"):
        writer.add_zset(b"z", 2, iter([(b"a", 1.0), (b"b", math.nan)]), 0)
    with pytest.raises(ValueError, match="unusable"):
        writer.finish()
    writer = new_writer(io.BytesIO())
    for bad in (-1, 2**63):
        with pytest.raises(ValueError, match="expire_ms"):
            writer.add_set(b"s", 1, [b"m"], bad)
    with pytest.raises(ValueError, match="count -1"):
        writer.add_list(b"l", -1, [], 0)
    writer.finish()  # those were refused before anything was written
    with pytest.raises(ValueError, match="after finish"):
        writer.add_hash(b"h", 1, [(b"f", b"v")], 0)

    def failing() -> Iterator[bytes]:
        yield b"one"
        raise OSError("the store failed while the snapshot was streaming")

    writer = new_writer(io.BytesIO())
    with pytest.raises(OSError):
        writer.add_list(b"l", 2, failing(), 0)
    with pytest.raises(ValueError, match=r"add_list\(b'l'\) failed part way"):
        writer.finish()


# -- writer -> Redis 7.0 -----------------------------------------------------------------------


def start_redis(workdir: Path, *args: str) -> RedisProcess:
    return RedisProcess(workdir, None, "--dbfilename", "dump.rdb", *args)


@needs_redis
def test_redis_loads_what_we_write(tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    expire = now_ms + 3_600_000
    big_hash = [(b"field:%d" % i, b"%d" % (i * 7)) for i in range(1000)]
    big_set = [b"m%d" % i for i in range(2000)]
    int_set = [b"%d" % i for i in range(-50, 50)]
    big_list = [b"item:%d" % (i % 10) for i in range(5000)]
    big_zset = [(b"z%d" % i, i / 3) for i in range(1000)]
    path = tmp_path / "dump.rdb"
    with open(path, "wb") as f:
        writer = new_writer(f)
        writer.add_hash(b"hash:small", len(HASH), iter(HASH), expire)
        writer.add_hash(b"hash:big", len(big_hash), iter(big_hash), 0)
        writer.add_set(b"set:small", len(ELEMENTS), iter(ELEMENTS), 0)
        writer.add_set(b"set:ints", len(int_set), iter(int_set), expire + 1)
        writer.add_set(b"set:big", len(big_set), iter(big_set), 0)
        writer.add_list(b"list:small", len(ELEMENTS), iter(ELEMENTS), expire + 2)
        writer.add_list(b"list:big", len(big_list), iter(big_list), 0)
        writer.add_zset(b"zset:small", len(ZSET), iter(ZSET), expire + 3)
        writer.add_zset(b"zset:big", len(big_zset), iter(big_zset), 0)
        writer.add_string(b"string", b"v", 0)
        writer.finish()
    if REDIS_CHECK_RDB is not None:
        check = subprocess.run([REDIS_CHECK_RDB, str(path)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0 and "RDB looks OK" in check.stdout, check.stdout
    server = start_redis(tmp_path)
    try:
        c = server.client()
        assert c.dbsize() == 10
        assert c.hgetall(b"hash:small") == dict(HASH)
        assert c.hgetall(b"hash:big") == dict(big_hash)
        assert c.smembers(b"set:small") == set(ELEMENTS)
        assert c.smembers(b"set:ints") == set(int_set)
        assert c.smembers(b"set:big") == set(big_set)
        assert c.lrange(b"list:small", 0, -1) == ELEMENTS
        assert c.lrange(b"list:big", 0, -1) == big_list
        assert c.zrange(b"zset:small", 0, -1, withscores=True) == sorted(
            ZSET, key=lambda p: (p[1], p[0]))
        assert c.zrange(b"zset:big", 0, -1, withscores=True) == big_zset
        for key, expected in ((b"hash:small", expire), (b"set:ints", expire + 1),
                              (b"list:small", expire + 2), (b"zset:small", expire + 3)):
            assert c.execute_command("PEXPIRETIME", key) == expected
            assert 0 < c.pttl(key) <= expected - now_ms
        assert c.pttl(b"hash:big") == -1
        # loaded into the encodings Redis would have chosen itself
        assert c.object("encoding", b"set:ints") == b"intset"
        assert c.object("encoding", b"hash:big") == b"hashtable"
        assert c.object("encoding", b"zset:big") == b"skiplist"
        assert c.object("encoding", b"zset:small") == b"skiplist"  # BIG is over 64 bytes
        assert c.object("encoding", b"list:big") == b"quicklist"
        assert "Done loading RDB, keys loaded: 10" in server.output()
    finally:
        server.stop()


# -- Redis 7.0 -> reader -------------------------------------------------------------------------


def redis_collections(server: RedisProcess) -> Seen:
    """redis-py's view of every hash, set, list and zset, with absolute expiry (0: none)."""
    seen: Seen = {"hash": {}, "set": {}, "list": {}, "zset": {}}
    c = server.client()
    for key in c.scan_iter(count=1000):
        kind = c.type(key).decode()
        expire = max(c.execute_command("PEXPIRETIME", key), 0)
        if kind == "hash":
            seen[kind][0, key] = (sorted(c.hgetall(key).items()), expire)
        elif kind == "set":
            seen[kind][0, key] = (sorted(c.smembers(key)), expire)
        elif kind == "list":
            seen[kind][0, key] = (c.lrange(key, 0, -1), expire)
        elif kind == "zset":
            seen[kind][0, key] = (sorted(c.zrange(key, 0, -1, withscores=True)), expire)
    return seen


def unordered(seen: Seen) -> Seen:
    """Hash, set and zset elements sorted: their order in an RDB is Redis's business."""
    out: Seen = {}
    for kind, keys in seen.items():
        if kind == "string":
            continue
        out[kind] = {k: (v if kind == "list" else sorted(v), e)  # type: ignore[call-overload]
                     for k, (v, e) in keys.items()}
    return out


@needs_redis
def test_we_read_every_encoding_redis_70_writes(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_redis(tmp_path, "--enable-debug-command", "yes")
    try:
        c = server.client()
        for name, value in (("hash-max-listpack-entries", 8), ("hash-max-listpack-value", 32),
                            ("set-max-intset-entries", 8), ("zset-max-listpack-entries", 8),
                            ("zset-max-listpack-value", 32), ("list-max-listpack-size", 4)):
            c.config_set(name, value)
        c.execute_command("DEBUG", "QUICKLIST-PACKED-THRESHOLD", "100")  # plain list nodes
        rng = random.Random(11)
        c.hset(b"hash:listpack", mapping={b"f": b"1", b"": b"", b"n": b"-70000", b"b": b"\x00"})
        c.hset(b"hash:table", mapping={b"f%d" % i: b"v%d" % i for i in range(20)})
        c.hset(b"hash:longvalue", mapping={b"f": b"x" * 100})
        c.sadd(b"set:intset", 1, -2, 2**40, 70000)
        c.sadd(b"set:table", *[b"m%d" % i for i in range(20)])
        c.sadd(b"set:strings", b"a", b"", rng.randbytes(50))
        c.rpush(b"list:packed", b"a", b"1", b"-2", b"", b"x" * 50)
        plain = rng.randbytes(300)  # incompressible: stored as it is, in a plain node
        c.rpush(b"list:nodes", *[b"%d" % i for i in range(30)], plain, b"tail")
        c.rpush(b"list:lzf", *[b"compressible " * 4 for _ in range(4)])
        c.zadd(b"zset:listpack", {b"a": 1.5, b"b": -2, b"c": math.inf, b"d": -math.inf,
                                  b"e": 0.1, b"f": 3})
        c.zadd(b"zset:skiplist", {b"m%d" % i: i / 7 for i in range(20)})
        c.zadd(b"zset:longmember", {b"z" * 100: 1})
        c.expire(b"hash:listpack", 3600)
        c.expire(b"zset:skiplist", 7200)
        c.pexpire(b"list:nodes", 9_000_000)
        encodings = {k: c.object("encoding", k) for k in c.scan_iter()}
        assert set(encodings.values()) == {b"listpack", b"hashtable", b"intset", b"quicklist",
                                           b"skiplist"}
        c.save()
        want = redis_collections(server)
    finally:
        server.stop()
    rdb_types: list[int] = []
    readers = dict(rdb._COLLECTION_READERS)
    for rdb_type, reader in readers.items():
        def spy(r, t, packed, reader=reader):  # type: ignore[no-untyped-def]
            rdb_types.append(t)
            return reader(r, t, packed)
        monkeypatch.setitem(rdb._COLLECTION_READERS, rdb_type, spy)
    summary, seen = read_types((tmp_path / "dump.rdb").read_bytes())
    assert unordered(seen) == want
    assert (summary.hashes, summary.sets, summary.lists, summary.zsets) == (3, 3, 3, 3)
    assert set(rdb_types) == {rdb.TYPE_HASH_LISTPACK, rdb.TYPE_HASH, rdb.TYPE_SET_INTSET,
                              rdb.TYPE_SET, rdb.TYPE_LIST_QUICKLIST_2, rdb.TYPE_ZSET_LISTPACK,
                              rdb.TYPE_ZSET_2}
    # a quicklist 2 with a plain node: the 300-byte item is over the threshold set above
    raw = (tmp_path / "dump.rdb").read_bytes()
    assert b"\x01" + b"\x41\x2c" + plain in raw  # container 1 (plain), length 300, the item


# -- older encodings, built by hand -------------------------------------------------------------

# A ziplist (Redis 2.6 - 6.2) of "a", 5, -300:
#   14 00 00 00  zlbytes: 20 bytes in all (u32 LE)
#   0f 00 00 00  zltail: the last entry starts at byte 15 (10 of header, 3, 2)
#   03 00        zllen: 3 entries (u16 LE)
#   00 01 61     entry: previous entry 0 bytes, 00pppppp = a 1-byte string, "a"
#   03 f6        previous 3 bytes, 1111xxxx immediate: xxxx - 1 = 0110 - 1 = 5
#   02 c0 d4 fe  previous 2 bytes, c0 = int16, 0xfed4 = -300 (LE)
#   ff           zlend
ZIPLIST_A_5_M300 = bytes.fromhex("14000000 0f000000 0300 000161 03f6 02c0d4fe ff")

# A zipmap (Redis < 2.6) of {"f": "val", "g": ""}:
#   02           zmlen: 2 pairs
#   01 66        field length 1, "f"
#   03 01 76616c 00  value length 3, 1 free byte, "val", the free byte
#   01 67        field length 1, "g"
#   00 00        value length 0, no free byte
#   ff           end
ZIPMAP_F_VAL_G = bytes.fromhex("02 0166 0301 76616c 00 0167 0000 ff")

# A listpack (Redis 7.2's SET_LISTPACK, type 20) of "a", 100, -1:
#   0f 00 00 00  total bytes: 15 (u32 LE)
#   03 00        3 elements (u16 LE)
#   81 61 02     10xxxxxx = a 1-byte string, "a", back length 2
#   64 01        0xxxxxxx = the 7-bit uint 100, back length 1
#   df ff 02     110xxxxx yyyyyyyy = 13-bit int 0x1fff = -1, back length 2
#   ff           end
LISTPACK_A_100_M1 = bytes.fromhex("0f000000 0300 816102 6401 dfff02 ff")

# An intset (type 11) of -2, 7 with 2-byte members:
#   02 00 00 00  width 2 (u32 LE)
#   02 00 00 00  2 members
#   fe ff 07 00  -2, 7 (i16 LE, ascending)
INTSET_M2_7 = bytes.fromhex("02000000 02000000 feff 0700")


def test_hand_built_blobs_match_the_fuzz_encoders() -> None:
    """The fuzz target's encoders (used for every other fixture) write the spec's bytes."""
    assert fuzz_rdb_types.ziplist([b"a", 5, -300]) == ZIPLIST_A_5_M300
    assert fuzz_rdb_types.zipmap([(b"f", b"val"), (b"g", b"")], 1)[:11] == ZIPMAP_F_VAL_G[:11]
    assert fuzz_rdb_types.listpack([b"a", 100, -1]) == LISTPACK_A_100_M1
    assert fuzz_rdb_types.intset([-2, 7], 2) == INTSET_M2_7


def test_older_encodings_from_hand_built_bytes() -> None:
    body = HEAD
    body += b"\x0a" + enc_str(b"ziplist") + enc_str(ZIPLIST_A_5_M300)  # type 10: list ziplist
    body += b"\x0d" + enc_str(b"hziplist") + enc_str(  # type 13: hash ziplist "f" -> 5, "g" -> ""
        fuzz_rdb_types.ziplist([b"f", 5, b"g", b""]))
    body += b"\x0c" + enc_str(b"zziplist") + enc_str(  # type 12: zset ziplist, score after member
        fuzz_rdb_types.ziplist([b"a", 5, b"b", b"-1.5"]))
    body += b"\x09" + enc_str(b"zipmap") + enc_str(ZIPMAP_F_VAL_G)  # type 9: hash zipmap
    # type 14: quicklist 1, two ziplist nodes, an empty one between (Redis skips those)
    body += b"\x0e" + enc_str(b"quicklist") + b"\x03" + enc_str(ZIPLIST_A_5_M300) + \
        enc_str(bytes.fromhex("0b000000 0a000000 0000 ff")) + enc_str(
            fuzz_rdb_types.ziplist([b"z" * 300]))  # a 14-bit string length: 41 2c
    body += b"\x14" + enc_str(b"slistpack") + enc_str(LISTPACK_A_100_M1)  # type 20: set listpack
    body += b"\x0b" + enc_str(b"intset") + enc_str(INTSET_M2_7)  # type 11
    # type 3: zset with text scores: length-prefixed "%.17g" text, or 253 NaN, 254 +inf, 255 -inf
    body += b"\x03" + enc_str(b"zset1") + b"\x03" + b"\x01a" + b"\x0412.5" + b"\x01b" + \
        b"\xfe" + b"\x01c" + b"\xff"
    summary, seen = read_types(with_trailer(body))
    assert seen["list"] == {(0, b"ziplist"): ([b"a", b"5", b"-300"], 0),
                            (0, b"quicklist"): ([b"a", b"5", b"-300", b"z" * 300], 0)}
    assert seen["hash"] == {(0, b"hziplist"): ([(b"f", b"5"), (b"g", b"")], 0),
                            (0, b"zipmap"): ([(b"f", b"val"), (b"g", b"")], 0)}
    assert seen["zset"] == {(0, b"zziplist"): ([(b"a", 5.0), (b"b", -1.5)], 0),
                            (0, b"zset1"): ([(b"a", 12.5), (b"b", math.inf),
                                             (b"c", -math.inf)], 0)}
    assert seen["set"] == {(0, b"slistpack"): ([b"a", b"100", b"-1"], 0),
                           (0, b"intset"): ([b"-2", b"7"], 0)}
    assert summary.checksum == "ok" and summary.empty == 0


def test_every_encoding_of_the_typed_fixture() -> None:
    data, want = fuzz_rdb_types.typed_rdb()
    summary, seen = read_types(data)
    assert {kind: {key: v for (_db, key), v in keys.items()} for kind, keys in seen.items()
            if kind != "string"} == want
    assert (summary.hashes, summary.sets, summary.lists, summary.zsets) == (4, 3, 4, 4)


def test_integer_encodings_in_packed_blobs() -> None:
    values = [0, 12, 13, 127, 128, -1, -128, -129, 4095, -4096, 4096, 32767, -32768, 32768,
              2**23 - 1, -2**23, 2**23, 2**31 - 1, -2**31, 2**31, 2**63 - 1, -2**63]
    texts = [b"%d" % v for v in values]
    assert rdb_packed.listpack_elements(fuzz_rdb_types.listpack(values)) == texts
    assert rdb_packed.ziplist_elements(fuzz_rdb_types.ziplist(values)) == texts
    for width in (2, 4, 8):
        fitting = sorted(v for v in values if -2**(8 * width - 1) <= v < 2**(8 * width - 1))
        assert rdb_packed.intset_members(fuzz_rdb_types.intset(fitting, width)) == [
            b"%d" % v for v in fitting]
    strings = [b"", b"s" * 63, b"m" * 64, b"m" * 4095, b"L" * 4096, b"h" * 16384, b"x" * 70000]
    assert rdb_packed.listpack_elements(fuzz_rdb_types.listpack(strings)) == strings
    assert rdb_packed.ziplist_elements(fuzz_rdb_types.ziplist(strings)) == strings
    many = [b"e"] * 70000  # past the u16 count: the header says 65535, "count them"
    assert rdb_packed.listpack_elements(fuzz_rdb_types.listpack(many)) == many
    assert rdb_packed.ziplist_elements(fuzz_rdb_types.ziplist(many)) == many
    big_pairs = [(b"k" * 300, b"v" * 70000)]  # zipmap 5-byte lengths
    assert rdb_packed.zipmap_pairs(fuzz_rdb_types.zipmap(big_pairs)) == big_pairs


def test_empty_collections_are_dropped_as_redis_drops_them() -> None:
    body = HEAD + b"\x04" + enc_str(b"h") + b"\x00"  # a hash of 0 pairs
    body += b"\x12" + enc_str(b"l") + b"\x01\x02" + enc_str(fuzz_rdb_types.listpack([]))
    body += b"\x0a" + enc_str(b"zl") + enc_str(fuzz_rdb_types.ziplist([]))
    summary, seen = read_types(with_trailer(body))
    assert seen["hash"] == {} and seen["list"] == {}
    assert summary.empty == 3 and summary.hashes == summary.lists == 0


def test_field_ttl_hashes_stay_skipped() -> None:
    """Redis 7.4's hashes with field expiry (types 22-25) are skipped even with on_hash: bitkv
    keeps no per-field TTL, and loading the fields without theirs would keep them forever."""
    body = HEAD + b"\x18" + enc_str(b"hfe") + struct.pack("<q", 1900000000000) + \
        b"\x01" + b"\x00" + enc_str(b"f") + enc_str(b"v")  # min expiry, 1 field: TTL 0, f, v
    body += b"\x04" + enc_str(b"plain") + b"\x01" + enc_str(b"f") + enc_str(b"v")
    skipped: list[tuple[int, bytes, str]] = []
    hashes: list[bytes] = []
    summary = rdb.read_rdb(io.BytesIO(with_trailer(body.replace(b"REDIS0010", b"REDIS0012"))),
                           on_string=print, on_skipped=lambda *a: skipped.append(a),
                           on_hash=lambda db, key, pairs, e: hashes.append(key))
    assert skipped == [(0, b"hfe", "hash")] and hashes == [b"plain"]
    assert (summary.skipped, summary.hashes) == (1, 1)


# -- damage -------------------------------------------------------------------------------------


def one_key(rdb_type: int, key: bytes, body: bytes) -> bytes:
    return with_trailer(HEAD + bytes((rdb_type,)) + enc_str(key) + body)


def test_malformed_blobs_name_the_key_and_the_offset() -> None:
    lp = LISTPACK_A_100_M1
    at = len(HEAD)
    cases = [
        (rdb.TYPE_SET_LISTPACK, lp[:-1] + b"\x00", "listpack does not end with 0xff at byte 14"),
        (rdb.TYPE_SET_LISTPACK, b"\x0e" + lp[1:] + b"\xff",
         "listpack header says 14 bytes, the value holds 16"),  # one byte long
        (rdb.TYPE_SET_LISTPACK, lp[:8] + b"\x03" + lp[9:], "back length is not 2 at byte 8"),
        (rdb.TYPE_SET_LISTPACK, lp[:4] + b"\x04" + lp[5:], "header says 4 elements, it holds 3"),
        (rdb.TYPE_SET_LISTPACK, lp[:9] + b"\xf5" + lp[10:], "unknown listpack entry encoding 0xf5"),
        (rdb.TYPE_SET_LISTPACK, lp[:6] + b"\xbf" + lp[7:], "listpack entry runs past the end"),
        (rdb.TYPE_LIST_ZIPLIST, ZIPLIST_A_5_M300[:13] + b"\x04" + ZIPLIST_A_5_M300[14:],
         "previous one is 4 bytes, it is 3 at byte 13"),
        (rdb.TYPE_LIST_ZIPLIST, ZIPLIST_A_5_M300[:4] + b"\x0d" + ZIPLIST_A_5_M300[5:],
         "tail offset 13 is not its last entry's 15"),
        (rdb.TYPE_LIST_ZIPLIST, ZIPLIST_A_5_M300[:16] + b"\xc5" + ZIPLIST_A_5_M300[17:],
         "unknown ziplist entry encoding 0xc5 at byte 16"),
        (rdb.TYPE_LIST_ZIPLIST, ZIPLIST_A_5_M300[:11] + b"\x40" + ZIPLIST_A_5_M300[12:],
         "ziplist entry runs past the end at byte 10"),
        (rdb.TYPE_SET_INTSET, INTSET_M2_7[:8] + INTSET_M2_7[10:] + INTSET_M2_7[8:10],
         "not strictly ascending at byte 10"),
        (rdb.TYPE_SET_INTSET, b"\x03" + INTSET_M2_7[1:], "intset width 3 is not 2, 4 or 8"),
        (rdb.TYPE_SET_INTSET, INTSET_M2_7 + b"\x00", "intset header says 2 members"),
        (rdb.TYPE_HASH_ZIPMAP, ZIPMAP_F_VAL_G[:3] + b"\x09" + ZIPMAP_F_VAL_G[4:],
         "zipmap value runs past the end at byte 1"),
        (rdb.TYPE_HASH_ZIPMAP, b"\x00\xff", "empty zipmap"),
        (rdb.TYPE_HASH_LISTPACK, lp, "an odd number of elements, 3"),
    ]
    for rdb_type, blob, expected in cases:
        message = rdb_error(one_key(rdb_type, b"the key", enc_str(blob)))
        assert expected in message, (expected, message)
        assert f"b'the key' (the key at byte {at})" in message, message


def test_scores_nan_and_not_numbers_are_refused() -> None:
    nan = struct.pack("<d", math.nan)
    assert "NaN score at byte" in rdb_error(one_key(rdb.TYPE_ZSET_2, b"z", b"\x01\x01m" + nan))
    assert "score b'nan' is NaN at byte" in rdb_error(one_key(rdb.TYPE_ZSET, b"z",
                                                              b"\x01\x01m\xfd"))
    assert "score b'1_0' is not a number at byte" in rdb_error(
        one_key(rdb.TYPE_ZSET, b"z", b"\x01\x01m\x031_0"))
    message = rdb_error(one_key(rdb.TYPE_ZSET_LISTPACK, b"z",
                                enc_str(fuzz_rdb_types.listpack([b"m", b"abc"]))))
    assert message == f"score b'abc' is not a number in the listpack of the zset b'z' " \
                      f"(the key at byte {len(HEAD)})"
    assert "bad quicklist container 3 at byte" in rdb_error(
        one_key(rdb.TYPE_LIST_QUICKLIST_2, b"l", b"\x01\x03\x01x"))
    for text in (b"1e5", b"-.5", b"+3.", b"INF", b"-infinity", b"1E-7"):
        assert rdb_packed.score_from_text(text) == float(text)
    for text in (b" 1", b"1 ", b"0x10", b"", b"1e", b"--1", b"nan", b"NaN"):
        with pytest.raises(ValueError):
            rdb_packed.score_from_text(text)


def test_hostile_counts_and_lengths_fail_without_allocating_them() -> None:
    huge = b"\x81" + (2**62).to_bytes(8, "big")
    tracemalloc.start()
    try:
        for body in (b"\x04\x01h" + huge + b"\x01f\x01v",  # a hash of 2**62 pairs
                     b"\x02\x01s" + huge + b"\x01m",  # a set
                     b"\x05\x01z" + huge + b"\x01m" + bytes(8),  # a zset 2
                     b"\x12\x01l" + huge + b"\x01\x01x",  # quicklist 2 nodes
                     b"\x10\x01h" + huge):  # a listpack blob of 2**62 bytes, no limit
            message = rdb_error(HEAD + body, max_value_len=None)
            assert "truncated" in message, message
        assert tracemalloc.get_traced_memory()[1] < 4 * 2**20
    finally:
        tracemalloc.stop()
    # a blob over max_value_len is refused before it is read
    blob = enc_str(fuzz_rdb_types.listpack([b"x" * 200]))
    assert "string length 211 at byte" in rdb_error(one_key(rdb.TYPE_SET_LISTPACK, b"s", blob),
                                                   max_value_len=100)
    # a 32-bit string length inside a small listpack: no slice past the blob, an RDBError
    hostile = (12).to_bytes(4, "little") + b"\x01\x00" + b"\xf0\xff\xff\xff\xff" + b"\xff"
    assert "listpack entry runs past the end at byte 6" in rdb_error(
        one_key(rdb.TYPE_SET_LISTPACK, b"s", enc_str(hostile)))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_rdbs_only_ever_raise_rdb_error(data: st.DataObject) -> None:
    original = fuzz_rdb_types.typed_rdb()[0]
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(damaged) - 1))
        damaged[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(damaged)))
        del damaged[cut:]
    body = bytes(damaged)
    if data.draw(st.booleans()) and len(body) > 8:  # reach past the checksum
        body = body[:-8] + struct.pack("<Q", rdb.crc64(body[:-8]))
    try:
        read_types(body, unique=False)
    except rdb.RDBError:
        pass
