"""The RDB codec (bitkv/rdb.py) against real Redis 7.0 and against damage.

* Redis -> reader: a redis-server filled with strings of every encoding and keys of every other
  type, SAVEd; every string (key, value, expiry) matches what redis-py sees, the other keys are
  skipped with the right types.
* writer -> Redis: a written RDB loads into redis-server with every key, value and TTL, and
  redis-check-rdb accepts it; with the same keys, the writer's bytes equal Redis's own.
* writer -> reader for arbitrary keys, values and expiries (hypothesis).
* damage: truncation anywhere, any flipped byte, bad checksum, magic, version, type, lengths,
  LZF -> always RDBError with the message saying which.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from procs import REDIS_SERVER, RedisProcess, needs_redis

from bitkv import rdb

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "fuzz"))

import fuzz_rdb

REDIS_CHECK_RDB = shutil.which("redis-check-rdb")
REPLID = "8c9c6e2b4a1f0d3e5b7a9c1e3f5d7b9a1c3e5f70"


def read_all(data: bytes, **kwargs: object) -> tuple[rdb.RDBSummary, list[tuple[int, bytes,
                                                                                 bytes, int]],
                                                     list[tuple[int, bytes, str]]]:
    strings: list[tuple[int, bytes, bytes, int]] = []
    skipped: list[tuple[int, bytes, str]] = []
    summary = rdb.read_rdb(io.BytesIO(data), on_string=lambda *a: strings.append(a),
                           on_skipped=lambda *a: skipped.append(a), **kwargs)  # type: ignore[arg-type]
    return summary, strings, skipped


def write_all(items: list[tuple[bytes, bytes, int]], **kwargs: object) -> bytes:
    f = io.BytesIO()
    writer = rdb.RDBWriter(f, repl_id=REPLID, repl_offset=1234, **kwargs)  # type: ignore[arg-type]
    for key, value, expire_ms in items:
        writer.add_string(key, value, expire_ms)
    writer.finish()
    return f.getvalue()


def rdb_error(data: bytes, **kwargs: object) -> str:
    with pytest.raises(rdb.RDBError) as info:
        read_all(data, **kwargs)
    return str(info.value)


# -- the codec on its own ----------------------------------------------------------------------


def test_crc64_vector() -> None:
    assert rdb.crc64(b"123456789") == 0xE9C6D914C4B8D9CA
    assert rdb.crc64(b"56789", rdb.crc64(b"1234")) == 0xE9C6D914C4B8D9CA


def test_rich_rdb_every_type_and_opcode_is_read_or_skipped() -> None:
    data, strings, skipped = fuzz_rdb.rich_rdb()
    aux: list[tuple[bytes, bytes]] = []
    got: list[tuple[int, bytes, bytes, int]] = []
    names: list[str] = []
    summary = rdb.read_rdb(io.BytesIO(data), on_string=lambda *a: got.append(a),
                           on_skipped=lambda db, key, name: names.append(name),
                           on_aux=lambda *a: aux.append(a))
    assert got == strings
    assert summary.skipped_by_type == skipped
    assert summary.skipped == len(names) == sum(skipped.values())
    assert {"list", "set", "zset", "hash", "stream", "module"} == set(skipped)
    assert aux == [(b"redis-ver", b"7.0.15"), (b"redis-bits", b"64")]
    assert summary.aux == dict(aux)
    assert (summary.version, summary.strings, summary.checksum, summary.functions) == (
        10, len(strings), "ok", 2)
    assert summary.databases == {0, 3}
    assert summary.size == len(data)


def test_versions_checksum_states() -> None:
    for version in (1, 4, 9, 11, 12):
        summary, _, _ = read_all(fuzz_rdb.rich_rdb(version)[0])
        assert summary.version == version
        assert summary.checksum == ("absent" if version < 5 else "ok")
    summary, _, _ = read_all(fuzz_rdb.rich_rdb(9, checksum=False)[0])
    assert summary.checksum == "disabled"


def test_reads_stop_at_the_trailer_and_survive_a_trickling_source() -> None:
    data = fuzz_rdb.rich_rdb()[0]
    expected = read_all(data)[1]
    for step in (1, 2, 7, 4096):
        got: list[object] = []
        src = fuzz_rdb.Trickle(data + b"after the RDB", step)
        summary = rdb.read_rdb(src, on_string=lambda *a, got=got: got.append(a))
        assert got == expected and summary.size == len(data)


def test_writer_header_and_integer_encoding() -> None:
    data = write_all([], db_size=5, expires_size=2)
    summary, strings, _ = read_all(data)
    assert data.startswith(b"REDIS0010") and strings == []
    assert summary.aux[b"redis-ver"] == b"7.0.0" and summary.aux[b"repl-id"] == REPLID.encode()
    assert summary.aux[b"repl-offset"] == b"1234" and summary.aux[b"aof-base"] == b"0"
    assert set(summary.aux) == {b"redis-ver", b"redis-bits", b"ctime", b"used-mem",
                                b"repl-stream-db", b"repl-id", b"repl-offset", b"aof-base"}
    assert b"\xfe\x00\xfb\x05\x02\xff" in data  # SELECTDB 0, RESIZEDB 5 2, EOF

    def body(value: bytes) -> bytes:  # the encoded value of one key "k"
        data = write_all([(b"k", value, 0)])
        return data[data.index(b"\x00\x01k") + 3:-9]

    assert body(b"0") == b"\xc0\x00"
    assert body(b"-128") == b"\xc0\x80"
    assert body(b"128") == b"\xc1\x80\x00"
    assert body(b"-32769") == b"\xc2\xff\x7f\xff\xff"
    assert body(b"-129") == b"\xc1\x7f\xff"
    assert body(b"-32768") == b"\xc1\x00\x80"
    assert body(b"32768") == b"\xc2\x00\x80\x00\x00"
    assert body(b"-2147483648") == b"\xc2\x00\x00\x00\x80"
    assert body(b"2147483647") == b"\xc2\xff\xff\xff\x7f"
    for raw in (b"2147483648", b"-2147483649", b"007", b"-0", b"+1", b" 1", b"1 ", b"1.0",
                b"", b"-", b"\xd9\xa1", b"99999999999999999999"):  # not canonical or too big
        assert body(raw) == bytes([len(raw)]) + raw, raw
    long = b"x" * 20000
    assert body(long) == b"\x80" + (20000).to_bytes(4, "big") + long
    assert body(b"y" * 300) == b"\x41\x2c" + b"y" * 300


def test_rdb_error_is_a_bitkv_error_and_a_value_error() -> None:
    from bitkv import Error

    with pytest.raises(Error):
        read_all(b"HELLO")
    with pytest.raises(ValueError):
        read_all(b"REDIS0013")


class ListSink:
    """A sink with nothing but ``write``: the writer may not need more."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: bytes, /) -> None:
        self.chunks.append(bytes(data))


def test_writer_streams_to_a_write_only_sink_and_counts_bytes() -> None:
    sink = ListSink()
    writer = rdb.RDBWriter(sink, repl_id=REPLID, repl_offset=7)
    assert writer.bytes_written == sum(map(len, sink.chunks)) > 0
    big = b"\x07" * (3 * 2**20)
    for i in range(20):
        writer.add_string(b"k%d" % i, big if i % 5 == 0 else b"%d" % i, 1900000000000 * (i % 2))
        assert writer.bytes_written == sum(map(len, sink.chunks))
    writer.finish()
    data = b"".join(sink.chunks)
    assert writer.bytes_written == len(data)
    # nothing is gathered up: no write is much bigger than the biggest single value
    assert max(map(len, sink.chunks)) <= len(big)
    summary, strings, _ = read_all(data)
    assert summary.size == len(data) and summary.checksum == "ok"
    assert [s[2] for s in strings] == [big if i % 5 == 0 else b"%d" % i for i in range(20)]


def test_expired_at_load_is_counted_not_dropped() -> None:
    now = 1_800_000_000_000
    data = write_all([(b"past", b"1", now - 60_000), (b"edge", b"2", now),
                      (b"future", b"3", now + 1), (b"none", b"4", 0)])
    summary, strings, _ = read_all(data, now_ms=now)
    assert [s[1] for s in strings] == [b"past", b"edge", b"future", b"none"]  # all reported
    assert (summary.strings, summary.expired) == (4, 2)  # expire_ms <= now_ms, as bitkv's TTLs
    assert read_all(data, now_ms=now - 60_001)[0].expired == 0
    wall = int(time.time() * 1000)
    hour_ago_and_ahead = write_all([(b"a", b"1", wall - 3_600_000), (b"b", b"2", wall + 3_600_000)])
    assert read_all(hour_ago_and_ahead)[0].expired == 1  # now_ms defaults to the wall clock
    # EXPIRETIME (seconds) and an expiry before the epoch count too
    head = write_all([])[:-9]
    old = head + b"\xfd" + struct.pack("<i", 1000) + b"\x00\x01a\x01x" + \
        b"\xfc" + struct.pack("<q", -5) + b"\x00\x01b\x01y" + b"\xff"
    summary, strings, _ = read_all(old + struct.pack("<Q", rdb.crc64(old)))
    assert [(s[1], s[3]) for s in strings] == [(b"a", 1_000_000), (b"b", 1)]
    assert summary.expired == 2


def test_writer_refuses_misuse() -> None:
    f = io.BytesIO()
    writer = rdb.RDBWriter(f, repl_id=REPLID, repl_offset=0)
    with pytest.raises(ValueError, match="expire_ms"):
        writer.add_string(b"k", b"v", -5)
    with pytest.raises(ValueError, match="expire_ms"):
        writer.add_string(b"k", b"v", 2**63)
    writer.finish()
    with pytest.raises(ValueError, match="after finish"):
        writer.add_string(b"k", b"v", 0)
    with pytest.raises(ValueError, match="twice"):
        writer.finish()


keys = st.binary(max_size=40) | st.integers(-2**40, 2**40).map(lambda i: b"%d" % i)
values = (st.binary(max_size=300) | st.integers(-2**40, 2**40).map(lambda i: b"%d" % i) |
          st.sampled_from([b"0", b"-0", b"007", b"x" * 70000, b"2147483647", b"-2147483648"]))
expiries = st.just(0) | st.integers(1, 2**63 - 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, values, expiries), max_size=30))
def test_writer_reader_roundtrip(items: list[tuple[bytes, bytes, int]]) -> None:
    now = 2**62
    summary, strings, _ = read_all(write_all(items), now_ms=now)
    assert strings == [(0, k, v, e) for k, v, e in items]
    assert (summary.strings, summary.skipped, summary.checksum) == (len(items), 0, "ok")
    assert summary.expired == sum(1 for _k, _v, e in items if 0 < e <= now)


def test_lzf_decoder_reference_cases() -> None:
    # literal "abc" then a back reference of 6 at distance 3 (overlapping), then one of 3 at
    # distance 9 (disjoint)
    data = b"\x02abc" + bytes([(4 << 5) | 0, 2]) + bytes([(1 << 5) | 0, 8])
    assert rdb.lzf_decompress(data, 12) == b"abcabcabcabc"
    with pytest.raises(rdb.RDBError, match="declared"):
        rdb.lzf_decompress(data, 13)
    with pytest.raises(rdb.RDBError, match="longer than declared"):
        rdb.lzf_decompress(data, 11)
    with pytest.raises(rdb.RDBError, match="before the start"):
        rdb.lzf_decompress(b"\x00a" + bytes([(1 << 5), 5]), 4)
    with pytest.raises(rdb.RDBError, match="longer than declared"):  # Redis 7 accepts this
        rdb.lzf_decompress(b"\x00a", 0)
    assert rdb.lzf_decompress(b"", 0) == b""
    with pytest.raises(rdb.RDBError, match="past the input"):
        rdb.lzf_decompress(b"\x05ab", 6)
    with pytest.raises(rdb.RDBError, match="cut short"):
        rdb.lzf_decompress(b"\x00a\xe0", 20)
    with pytest.raises(rdb.RDBError, match="cut short"):
        rdb.lzf_decompress(b"\x00a\x20", 20)
    big = fuzz_rdb.enc_lzf_repeat(b"0123456789", 100000)
    assert read_all(b"REDIS0010\x00\x01k" + big + b"\xff" + bytes(8))[1][0][2] == \
        b"0123456789" * 10000


# -- damage ------------------------------------------------------------------------------------


def test_truncation_anywhere_is_reported_as_truncated() -> None:
    data = fuzz_rdb.rich_rdb()[0]
    for cut in range(len(data)):
        message = rdb_error(data[:cut])
        assert "truncated RDB at byte" in message, (cut, message)
        assert message == f"truncated RDB at byte {cut}", (cut, message)


def test_every_flipped_byte_is_an_rdb_error() -> None:
    data = fuzz_rdb.rich_rdb()[0]
    kinds: set[str] = set()
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[i] ^= bit
            kinds.add(rdb_error(bytes(damaged)).split(" ")[0])
    assert {"RDB", "truncated", "unknown", "bad"} <= kinds


def test_flipped_value_byte_is_a_checksum_mismatch() -> None:
    data = write_all([(b"key", b"some value bytes", 0)])
    i = data.index(b"value")
    damaged = data[:i] + b"V" + data[i + 1:]
    message = rdb_error(damaged)
    expected = rdb.crc64(damaged[:-8])  # the EOF opcode is covered, the trailer is not
    stored = struct.unpack("<Q", data[-8:])[0]
    assert message == f"RDB checksum mismatch: expected {expected:016x}, stored {stored:016x}"
    assert "checksum mismatch" in rdb_error(data[:-8] + b"\x01" * 8)


def test_bad_magic_version_type_and_opcodes() -> None:
    good = write_all([(b"k", b"v", 0)])
    assert rdb_error(b"RADIS0010" + good[9:]).startswith("bad magic")
    assert rdb_error(b"GET / HTTP/1.1\r\n").startswith("bad magic")
    assert rdb_error(b"HELLO").startswith("bad magic")
    assert rdb_error(b"REDIS00x0" + good[9:]).startswith("bad RDB version field")
    assert rdb_error(b"REDIS0013" + good[9:]) == "unsupported RDB version 13"
    assert rdb_error(b"REDIS0000" + good[9:]) == "unsupported RDB version 0"
    head = good[:good.index(b"\xfe\x00") + 2]
    for rdb_type in (8, 26, 100, 243):
        assert rdb_error(head + bytes([rdb_type]) + b"\x01k\x01v\xff" + bytes(8)) == \
            f"unknown type {rdb_type} at byte {len(head)}"
    assert "type 6 (pre-release module value) of key b'mod'" in rdb_error(
        head + b"\x06\x03mod\x00\xff" + bytes(8))
    assert "unknown string encoding 4" in rdb_error(head + b"\x00\xc4\xff" + bytes(8))
    assert "bad length byte 0x82" in rdb_error(head + b"\x00\x82\xff" + bytes(8))
    assert "bad quicklist container 3" in rdb_error(head + b"\x12\x01k\x01\x03\x00\xff")
    assert "unknown module opcode 9" in rdb_error(head + b"\x07\x01k\x05\x09\xff")
    assert "bad module aux 'when' opcode" in rdb_error(head + b"\xf7\x05\x01\x02\x00\xff")
    lzf_bad = head + b"\x00\x01k\xc3\x03\x0a\x00a\x25" + b"\xff" + bytes(8)
    assert "malformed LZF data" in rdb_error(lzf_bad)


def test_hostile_lengths_fail_without_allocating_them() -> None:
    head = write_all([])[:-9]
    huge = b"\x81" + (2**62).to_bytes(8, "big")
    assert rdb_error(head + b"\x00\x01k" + huge) == (
        f"string length {2**62} at byte {len(head) + 3} is over the limit of {512 * 2**20} bytes")
    assert "over the limit of 1000 bytes" in rdb_error(
        head + b"\x00\x01k\x80" + (1001).to_bytes(4, "big") + bytes(1001), max_value_len=1000)
    assert "LZF uncompressed length" in rdb_error(
        head + b"\x00\x01k\xc3\x02" + huge + b"\x00a")
    assert "LZF compressed length" in rdb_error(head + b"\x00\x01k\xc3" + huge + b"\x02\x00a")
    assert "over the limit" in rdb_error(head + b"\x00" + huge)  # keys too
    tracemalloc.start()
    try:
        for body in (b"\x00\x01k" + huge + b"abc",  # a value, no limit
                     b"\x01\x01k" + huge + b"\x01a",  # a list of 2**62 elements
                     b"\x02\x01k\x01" + huge + b"abc",  # a set element (skipped)
                     b"\x00\x01k\xc3" + huge + b"\x02\x00a"):  # LZF, no limit
            assert "truncated" in rdb_error(head + body, max_value_len=None)
        assert tracemalloc.get_traced_memory()[1] < 4 * 2**20
    finally:
        tracemalloc.stop()

    class Recording(io.BytesIO):
        biggest = 0

        def read(self, n: int | None = -1) -> bytes:
            assert n is not None and n >= 0
            self.biggest = max(self.biggest, n)
            return super().read(n)

    src = Recording(head + b"\x00\x01k" + huge + bytes(3 * 2**20))
    with pytest.raises(rdb.RDBError, match="truncated"):
        rdb.read_rdb(src, on_string=print, max_value_len=None)
    assert src.biggest <= 2**20  # never asks the source for the declared size


def test_callback_exceptions_propagate() -> None:
    class Stop(Exception):
        pass

    def on_string(*args: object) -> None:
        raise Stop

    with pytest.raises(Stop):
        rdb.read_rdb(io.BytesIO(write_all([(b"k", b"v", 0)])), on_string=on_string)


def test_a_million_keys_load_in_seconds(tmp_path: Path) -> None:
    n = 200_000
    path = tmp_path / "many.rdb"
    with open(path, "wb", buffering=1 << 20) as f:
        writer = rdb.RDBWriter(f, repl_id=REPLID, repl_offset=0)
        started = time.perf_counter()
        for i in range(n):
            writer.add_string(b"key:%d" % i, b"value-%d" % i if i % 3 else b"%d" % i,
                              1900000000000 + i if i % 5 == 0 else 0)
        writer.finish()
        write_s = time.perf_counter() - started
    count = [0]

    def on_string(db: int, key: bytes, value: bytes, expire_ms: int) -> None:
        count[0] += 1

    started = time.perf_counter()
    with open(path, "rb") as f:
        summary = rdb.read_rdb(f, on_string=on_string)
    read_s = time.perf_counter() - started
    assert count[0] == summary.strings == n
    # 1M keys in a few seconds: 200k well under 4 s each way even on a slow CI machine
    assert read_s < 4 and write_s < 4, (read_s, write_s)


# -- real Redis --------------------------------------------------------------------------------

def start_redis(workdir: Path, *args: str) -> RedisProcess:
    return RedisProcess(workdir, None, "--dbfilename", "dump.rdb", *args)


STRING_VALUES: dict[bytes, bytes] = {
    b"int:0": b"0", b"int:1": b"1", b"int:-1": b"-1", b"int:127": b"127", b"int:-128": b"-128",
    b"int:128": b"128", b"int:-129": b"-129", b"int:32767": b"32767", b"int:-32768": b"-32768",
    b"int:32768": b"32768", b"int:max32": b"2147483647", b"int:min32": b"-2147483648",
    b"int:over32": b"2147483648", b"int:under32": b"-2147483649",
    b"int:max64": b"9223372036854775807", b"int:min64": b"-9223372036854775808",
    b"int:beyond64": b"92233720368547758070", b"text:007": b"007", b"text:-0": b"-0",
    b"text:+5": b"+5", b"text:float": b"1.5", b"text:space": b" 12",
    b"empty": b"", b"binary": bytes(range(256)), b"nul": b"\x00" * 10,
    b"lzf:text": b"the quick brown fox jumps over the lazy dog. " * 200,
    b"lzf:short": b"a" * 21, b"nolzf:20": b"b" * 20,
    b"lzf:big": (b"0123456789abcdef" * 65536),
    b"random:big": random.Random(1).randbytes(300_000),
    b"12345": b"key is an int", b"-77": b"negative int key", b"k" * 100: b"long key (LZF)",
}


@pytest.fixture(scope="module")
def filled_redis(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (Debian: redis-server)")
    workdir = tmp_path_factory.mktemp("redis-rdb")
    server = start_redis(workdir)
    try:
        c = server.client()
        for key, value in STRING_VALUES.items():
            c.set(key, value)
        c.set(b"ttl:ex", b"expires in an hour", ex=3600)
        c.set(b"ttl:px", b"12", px=86_400_000)
        c.set(b"ttl:pxat", b"v", pxat=int(time.time() * 1000) + 5_000_000)
        c.incr(b"counter")  # OBJ_ENCODING_INT in memory
        c.incrby(b"counter-big", 2**40)
        c.append(b"appended", b"x" * 30)  # raw SDS with free space
        # the other types, small (listpack / intset) and large (hashtable / skiplist / quicklist)
        c.hset(b"hash:small", mapping={b"f1": b"v1", b"f2": b"2"})
        c.hset(b"hash:big", mapping={b"f%d" % i: b"v%d" % i for i in range(600)})
        c.sadd(b"set:ints", 1, 2, 3)
        c.sadd(b"set:small", b"a", b"b")
        c.sadd(b"set:big", *[b"m%d" % i for i in range(600)])
        c.rpush(b"list:small", b"a", b"1", b"c")
        c.rpush(b"list:big", *[b"element-%d" % i * 10 for i in range(3000)])
        c.zadd(b"zset:small", {b"a": 1.5, b"b": -2})
        c.zadd(b"zset:big", {b"m%d" % i: i / 7 for i in range(300)})
        c.zadd(b"zset:inf", {b"x": float("inf"), b"y": float("-inf")})
        for i in range(200):
            c.xadd(b"stream", {b"field": b"value-%d" % i})
        c.xgroup_create(b"stream", b"group", id="0")
        c.xreadgroup(b"group", b"consumer", {b"stream": ">"}, count=5)
        c.xadd(b"stream:plain", {b"a": b"1"})
        c.expire(b"hash:small", 3600)  # an expiry on a skipped key
        c.function_load("#!lua name=rdblib\n"
                        "redis.register_function('rdbfunc', function(keys, args) return 1 end)")
        c.execute_command("SELECT", 1)
        c.set(b"db1:string", b"in db 1")
        c.set(b"db1:int", b"-5", px=7_200_000)
        c.sadd(b"db1:set", b"x")
        c.execute_command("SELECT", 5)
        c.set(b"int:0", b"same key in db 5")
        c.execute_command("SELECT", 0)
        c.save()
        yield server, workdir / "dump.rdb"
    finally:
        server.stop()


def redis_view(server: RedisProcess) -> tuple[dict[tuple[int, bytes], tuple[bytes, int]],
                                                     dict[tuple[int, bytes], str]]:
    """Every key of every database: strings with (value, absolute expiry ms), others' types."""
    strings: dict[tuple[int, bytes], tuple[bytes, int]] = {}
    others: dict[tuple[int, bytes], str] = {}
    for db in range(16):
        c = server.client(db=db)
        for key in c.scan_iter(count=1000):
            kind = c.type(key).decode()
            if kind == "string":
                expire = c.execute_command("PEXPIRETIME", key)
                strings[db, key] = (c.get(key), max(expire, 0))
            else:
                others[db, key] = kind
    return strings, others


@needs_redis
def test_reader_matches_redis_view_of_its_own_dump(filled_redis, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    server, path = filled_redis
    lzf_calls: list[int] = []
    real = rdb.lzf_decompress

    def counting(data: bytes, out_len: int) -> bytes:
        lzf_calls.append(out_len)
        return real(data, out_len)

    monkeypatch.setattr(rdb, "lzf_decompress", counting)
    strings: dict[tuple[int, bytes], tuple[bytes, int]] = {}
    others: dict[tuple[int, bytes], str] = {}

    def on_string(db: int, key: bytes, value: bytes, expire_ms: int) -> None:
        assert (db, key) not in strings
        strings[db, key] = (value, expire_ms)

    def on_skipped(db: int, key: bytes, type_name: str) -> None:
        others[db, key] = type_name

    with open(path, "rb") as f:
        summary = rdb.read_rdb(f, on_string=on_string, on_skipped=on_skipped)
    want_strings, want_others = redis_view(server)
    assert len(want_strings) == len(STRING_VALUES) + 9
    assert strings == want_strings
    assert others == want_others
    assert summary.skipped == len(want_others)
    assert summary.skipped_by_type == {"hash": 2, "set": 4, "list": 2, "zset": 3, "stream": 2}
    assert (summary.version, summary.checksum, summary.functions) == (10, "ok", 1)
    assert summary.expired == 0
    assert summary.aux[b"redis-ver"].startswith(b"7.0.")
    assert summary.databases == {0, 1, 5}
    assert summary.size == os.path.getsize(path)
    assert len(lzf_calls) >= 4 and max(lzf_calls) == 16 * 65536  # LZF keys and values


@needs_redis
def test_reader_with_checksum_and_compression_off(tmp_path: Path) -> None:
    server = start_redis(tmp_path, "--rdbchecksum", "no", "--rdbcompression", "no")
    try:
        c = server.client()
        c.set(b"long", b"z" * 5000)
        c.set(b"n", b"300")
        c.save()
        summary, strings, _ = read_all((tmp_path / "dump.rdb").read_bytes())
        assert summary.checksum == "disabled"
        assert sorted(strings) == [(0, b"long", b"z" * 5000, 0), (0, b"n", b"300", 0)]
    finally:
        server.stop()


WRITTEN: list[tuple[bytes, bytes]] = [
    (b"0", b"0"), (b"i8", b"-128"), (b"i16", b"32767"), (b"i32", b"-2147483648"),
    (b"i64", b"9223372036854775807"), (b"lead0", b"0042"), (b"-0", b"-0"), (b"empty", b""),
    (b"binary", bytes(range(256)) * 3), (b"nul\x00key", b"\x00\xff\x00"),
    (b"megabyte", random.Random(2).randbytes(2**20)), (b"\xff" * 200, b"long binary key"),
    (b"x" * 70000, b"very long key"),
]


@needs_redis
def test_written_rdb_loads_into_redis(tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    items = [(k, v, 0) for k, v in WRITTEN]
    items += [(b"ttl:%d" % i, b"%d" % i, now_ms + i * 60_000) for i in range(1, 50)]
    path = tmp_path / "dump.rdb"
    with open(path, "wb") as f:
        writer = rdb.RDBWriter(f, repl_id=REPLID, repl_offset=99, db_size=len(items),
                               expires_size=49)
        for key, value, expire_ms in items:
            writer.add_string(key, value, expire_ms)
        writer.finish()
    if REDIS_CHECK_RDB is not None:
        check = subprocess.run([REDIS_CHECK_RDB, str(path)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0 and "RDB looks OK" in check.stdout, check.stdout
        assert "49 expires" in check.stdout and f"{len(items)} keys read" in check.stdout
    server = start_redis(tmp_path)
    try:
        c = server.client()
        assert c.dbsize() == len(items)
        for key, value, expire_ms in items:
            assert c.get(key) == value, key[:20]
            pttl = c.pttl(key)
            if expire_ms:
                assert c.execute_command("PEXPIRETIME", key) == expire_ms
                assert 0 < pttl <= expire_ms - now_ms
            else:
                assert pttl == -1
        assert c.object("encoding", b"i16") == b"int"
        assert "Loading RDB produced by version 7.0.0" in server.output()
    finally:
        server.stop()


@needs_redis
def test_writer_bytes_equal_redis_own(tmp_path: Path) -> None:
    """With the same keys in the same order (and no LZF: rdbcompression no), the writer's
    keyspace section is byte for byte what Redis 7.0 writes: the integer encodings match."""
    rng = random.Random(3)
    values = [b"%d" % rng.randint(-2**40, 2**40) for _ in range(100)]
    values += [b"%d" % rng.randint(-40000, 40000) for _ in range(100)]
    values += [b"%d" % (sign * 2**bits + delta) for sign in (1, -1) for bits in (7, 15, 31)
               for delta in (-1, 0, 1)]
    values += [b"-0", b"007", b"+1", b"", b"x" * 100, b"12345678901", b"-1234567890"]
    values += [rng.randbytes(rng.randint(0, 30)) for _ in range(50)]
    server = start_redis(tmp_path, "--rdbcompression", "no")
    try:
        c = server.client()
        now_ms = int(time.time() * 1000)
        for i, value in enumerate(values):
            key = b"%d" % (i - 100) if i % 2 else b"key:%d" % i
            c.set(key, value, pxat=now_ms + 10_000_000 + i if i % 4 == 0 else None)
        c.save()
        theirs = (tmp_path / "dump.rdb").read_bytes()
    finally:
        server.stop()
    _, strings, _ = read_all(theirs)
    assert len(strings) == len(values)
    ours = write_all([(k, v, e) for _db, k, v, e in strings], db_size=len(values),
                     expires_size=sum(1 for s in strings if s[3]))
    start = theirs.index(b"\xfe\x00\xfb")
    assert ours[ours.index(b"\xfe\x00\xfb"):-8] == theirs[start:-8]


# -- docs/rdb.md -------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "rdb.md"


def doc_example() -> bytes:
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- rdb example -->", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    out = bytearray()
    for line in block.splitlines():
        offset, hexes = line.split("  ", 1)
        assert int(offset, 16) == len(out)
        out += bytes.fromhex(hexes.split("|", 1)[0])
    return bytes(out)


def test_doc_example_is_what_the_writer_writes(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setattr(rdb.time, "time", lambda: 1700000000.0)
    f = io.BytesIO()
    writer = rdb.RDBWriter(f, repl_id="6c5e5f5a4b3c2d1e0f6c5e5f5a4b3c2d1e0f6c5e",
                           repl_offset=5000, db_size=2, expires_size=1)
    writer.add_string(b"greeting", b"hello", 0)
    writer.add_string(b"n", b"300", 1900000000000)
    writer.finish()
    example = doc_example()
    assert f.getvalue() == example and len(example) == 205
    summary, strings, _ = read_all(example)
    assert strings == [(0, b"greeting", b"hello", 0), (0, b"n", b"300", 1900000000000)]
    assert summary.aux[b"ctime"] == b"1700000000" and summary.checksum == "ok"
    if REDIS_CHECK_RDB is not None:
        (tmp_path / "example.rdb").write_bytes(example)
        check = subprocess.run([REDIS_CHECK_RDB, str(tmp_path / "example.rdb")],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and "RDB looks OK" in check.stdout, check.stdout
