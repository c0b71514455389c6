"""Fuzz target: the RDB reader (``bitkv.rdb.read_rdb``) and its LZF decoder.

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_rdb.py -max_len=8192 -timeout=10 [corpus_dir]

Each input is read as an RDB twice, once as it is and once with its last 8 bytes replaced by
the right CRC-64 (so mutations that still parse reach the end). The only allowed outcomes:
``RDBError``, or a summary whose strings, written again by ``RDBWriter``, read back the same.
The same input read through a source that returns a few bytes per ``read`` must give the same
result (the same strings, or the same error message: offsets included). ``lzf_decompress``
returns exactly the declared length or raises ``RDBError``. Anything else (another exception,
a hang, a difference) is a bug. ``tests/test_fuzz_targets.py`` runs ``check_one`` on a few
thousand seeded inputs without atheris; ``tests/test_rdb.py`` uses :func:`rich_rdb`.
"""

from __future__ import annotations

import io
import struct

from bitkv import rdb

# -- a hand-built RDB holding every type and opcode the reader knows ----------------------------


def enc_len(n: int) -> bytes:
    if n < 0x40:
        return bytes((n,))
    if n < 0x4000:
        return bytes((0x40 | (n >> 8), n & 0xFF))
    if n < 2**32:
        return b"\x80" + n.to_bytes(4, "big")
    return b"\x81" + n.to_bytes(8, "big")


def enc_str(s: bytes) -> bytes:
    return enc_len(len(s)) + s


def enc_lzf_repeat(unit: bytes, total: int) -> bytes:
    """An LZF-encoded string (RDB_ENC_LZF) of ``unit`` repeated to ``total`` bytes: one literal
    run, then overlapping back references of up to 264 bytes each."""
    assert 1 <= len(unit) <= 32 and total > len(unit)
    body = bytearray([len(unit) - 1]) + unit
    done = len(unit)
    while done < total:
        n = min(264, total - done)
        if n < 3:  # a back reference copies at least 3 bytes: finish with a literal
            body += bytes([n - 1]) + (unit * 3)[done % len(unit):][:n]
            done += n
            continue
        distance = len(unit) - 1
        if n - 2 < 7:
            body += bytes([((n - 2) << 5) | (distance >> 8), distance & 0xFF])
        else:
            body += bytes([(7 << 5) | (distance >> 8), n - 2 - 7, distance & 0xFF])
        done += n
    return b"\xc3" + enc_len(len(body)) + enc_len(total) + bytes(body)


def _stream(rdb_type: int) -> bytes:
    out = enc_len(1) + enc_str(bytes(16)) + enc_str(b"listpack-bytes")
    out += enc_len(1) + enc_len(1700000000000) + enc_len(0)  # length, last id
    if rdb_type >= rdb.TYPE_STREAM_LISTPACKS_2:
        out += enc_len(1700000000000) + enc_len(0) + enc_len(0) + enc_len(0) + enc_len(1)
    out += enc_len(1) + enc_str(b"group") + enc_len(1700000000000) + enc_len(0)
    if rdb_type >= rdb.TYPE_STREAM_LISTPACKS_2:
        out += enc_len(1)
    out += enc_len(1) + bytes(16) + struct.pack("<q", 1700000000001) + enc_len(1)  # group PEL
    out += enc_len(1) + enc_str(b"consumer") + struct.pack("<q", 1700000000002)
    if rdb_type >= rdb.TYPE_STREAM_LISTPACKS_3:
        out += struct.pack("<q", 1700000000003)
    out += enc_len(1) + bytes(16)  # consumer PEL
    return out


_MODULE_VALUE = (enc_len(2) + enc_len(77) + enc_len(1) + enc_len(5) + enc_len(5) +
                 enc_str(b"module string") + enc_len(3) + struct.pack("<f", 1.5) + enc_len(4) +
                 struct.pack("<d", 2.5) + enc_len(0))
_MODULE_ID = (0x0123456789 << 10) | 3


StringEntry = tuple[int, bytes, bytes, int]  # (db, key, value, expire_ms) as on_string sees it


def rich_rdb(version: int = 10, checksum: bool = True
             ) -> tuple[bytes, list[StringEntry], dict[str, int]]:
    """An RDB with every type and opcode; returns (bytes, the strings as on_string sees them,
    skipped count by type)."""
    strings: list[StringEntry] = []
    skipped: dict[str, int] = {}
    out = bytearray(b"REDIS%04d" % version)
    out += b"\xfa" + enc_str(b"redis-ver") + enc_str(b"7.0.15")
    out += b"\xfa" + enc_str(b"redis-bits") + b"\xc0\x40"
    out += b"\xf7" + enc_len(_MODULE_ID) + enc_len(2) + enc_len(2) + _MODULE_VALUE  # module aux
    out += b"\xf5" + enc_str(b"#!lua name=lib\nredis.register_function('f', function() end)")
    out += b"\xf6" + enc_str(b"old") + enc_str(b"LUA") + enc_len(1) + enc_str(b"desc") + \
        enc_str(b"return 1")
    out += b"\xfe\x00\xfb" + enc_len(40) + enc_len(3)

    def string(key: bytes, key_enc: bytes, value: bytes, value_enc: bytes, expire: int = 0,
               db: int = 0) -> None:
        nonlocal out
        out += b"\x00" + key_enc + value_enc
        strings.append((db, key, value, expire))

    def other(rdb_type: int, key: bytes, body: bytes) -> None:
        nonlocal out
        out += bytes([rdb_type]) + enc_str(key) + body
        name = rdb.TYPE_NAMES[rdb_type]
        skipped[name] = skipped.get(name, 0) + 1

    string(b"plain", enc_str(b"plain"), b"value", enc_str(b"value"))
    out += b"\xfc" + struct.pack("<q", 1900000000123)
    string(b"-5", b"\xc0\xfb", b"127", b"\xc0\x7f", 1900000000123)
    out += b"\xfd" + struct.pack("<i", 1900000000)
    string(b"int16", enc_str(b"int16"), b"-32768", b"\xc1\x00\x80", 1900000000000)
    out += b"\xf8" + enc_len(12345) + b"\xf9\x07"  # IDLE, FREQ
    string(b"int32", enc_str(b"int32"), b"2147483647", b"\xc2\xff\xff\xff\x7f")
    string(b"lzf", enc_str(b"lzf"), b"ab" * 300, enc_lzf_repeat(b"ab", 600))
    string(b"k" * 40, enc_lzf_repeat(b"k", 40), b"", enc_str(b""))
    string(b"len64", b"\x81" + (5).to_bytes(8, "big") + b"len64", b"\x00\xff", b"\x80" +
           (2).to_bytes(4, "big") + b"\x00\xff")
    string(b"bin", enc_str(b"bin"), bytes(range(256)) * 70, enc_str(bytes(range(256)) * 70))
    other(rdb.TYPE_LIST, b"list", enc_len(2) + enc_str(b"a") + enc_lzf_repeat(b"xyz", 90))
    other(rdb.TYPE_SET, b"set", enc_len(2) + enc_str(b"a") + b"\xc1\x00\x01")
    other(rdb.TYPE_ZSET, b"zset1", enc_len(4) + enc_str(b"a") + b"\x031.5" + enc_str(b"b") +
          b"\xfd" + enc_str(b"c") + b"\xfe" + enc_str(b"d") + b"\xff")
    other(rdb.TYPE_HASH, b"hash", enc_len(1) + enc_str(b"f") + enc_str(b"v"))
    out += b"\xfc" + struct.pack("<q", 1900000000999)  # an expiry on a skipped key
    other(rdb.TYPE_ZSET_2, b"zset2", enc_len(1) + enc_str(b"m") + struct.pack("<d", 0.5))
    string(b"after", enc_str(b"after"), b"no expiry", enc_str(b"no expiry"))  # none leaks
    other(rdb.TYPE_MODULE_2, b"module", enc_len(_MODULE_ID) + _MODULE_VALUE)
    for blob_type in (rdb.TYPE_HASH_ZIPMAP, rdb.TYPE_LIST_ZIPLIST, rdb.TYPE_SET_INTSET,
                      rdb.TYPE_ZSET_ZIPLIST, rdb.TYPE_HASH_ZIPLIST, rdb.TYPE_HASH_LISTPACK,
                      rdb.TYPE_ZSET_LISTPACK, rdb.TYPE_SET_LISTPACK,
                      rdb.TYPE_HASH_LISTPACK_EX_PRE_GA):
        other(blob_type, b"blob%d" % blob_type, enc_str(b"opaque-%d" % blob_type))
    other(rdb.TYPE_LIST_QUICKLIST, b"ql", enc_len(2) + enc_str(b"zl1") + enc_str(b"zl2"))
    other(rdb.TYPE_LIST_QUICKLIST_2, b"ql2", enc_len(2) + enc_len(2) + enc_str(b"lp") +
          enc_len(1) + enc_lzf_repeat(b"plain", 100))
    for stream_type in (rdb.TYPE_STREAM_LISTPACKS, rdb.TYPE_STREAM_LISTPACKS_2,
                        rdb.TYPE_STREAM_LISTPACKS_3):
        other(stream_type, b"stream%d" % stream_type, _stream(stream_type))
    other(rdb.TYPE_HASH_METADATA_PRE_GA, b"hfe-pre", enc_len(1) + enc_len(1900000000000) +
          enc_str(b"f") + enc_str(b"v"))
    other(rdb.TYPE_HASH_METADATA, b"hfe", struct.pack("<q", 1900000000000) + enc_len(2) +
          enc_len(0) + enc_str(b"f") + enc_str(b"v") + enc_len(5) + enc_str(b"g") +
          enc_str(b"w"))
    other(rdb.TYPE_HASH_LISTPACK_EX, b"hfe-lp", struct.pack("<q", 1900000000000) +
          enc_str(b"listpack-ex"))
    out += b"\xf4" + enc_len(5) + enc_len(100) + enc_len(1)  # SLOT_INFO
    out += b"\xfe\x03"
    out += b"\xfc" + struct.pack("<q", 1900000000456)
    string(b"in-db-3", enc_str(b"in-db-3"), b"x", enc_str(b"x"), 1900000000456, db=3)
    out += b"\xff"
    if version >= 5:
        out += struct.pack("<Q", rdb.crc64(bytes(out)) if checksum else 0)
    return bytes(out), strings, skipped


def written_rdb(items: list[tuple[bytes, bytes, int]]) -> bytes:
    f = io.BytesIO()
    writer = rdb.RDBWriter(f, repl_id="0123456789abcdef0123456789abcdef01234567", repl_offset=1)
    for key, value, expire_ms in items:
        writer.add_string(key, value, expire_ms)
    writer.finish()
    return f.getvalue()


# -- the checks --------------------------------------------------------------------------------


class Trickle:
    """A source that returns at most ``step`` bytes per read."""

    def __init__(self, data: bytes, step: int) -> None:
        self._f = io.BytesIO(data)
        self._step = step

    def read(self, n: int) -> bytes:
        return self._f.read(min(n, self._step))


def _read(src: object, limit: int | None) -> tuple[object, ...]:
    strings: list[tuple[int, bytes, bytes, int]] = []
    skipped: list[tuple[int, bytes, str]] = []
    aux: list[tuple[bytes, bytes]] = []
    try:
        summary = rdb.read_rdb(src, on_string=lambda *a: strings.append(a),  # type: ignore[arg-type]
                               on_skipped=lambda *a: skipped.append(a),
                               on_aux=lambda *a: aux.append(a), max_value_len=limit,
                               now_ms=1)
    except rdb.RDBError as exc:
        return ("error", str(exc), strings, skipped)
    assert summary.strings == len(strings) and summary.skipped == len(skipped)
    assert summary.expired == sum(1 for s in strings if 0 < s[3] <= 1)
    assert sum(summary.skipped_by_type.values()) == summary.skipped
    assert summary.checksum in ("ok", "disabled", "absent")
    return ("ok", strings, skipped, aux, summary.size, summary.version)


def _check_rdb(data: bytes, limit: int | None, step: int) -> None:
    whole = _read(io.BytesIO(data), limit)
    trickled = _read(Trickle(data, step), limit)
    assert whole == trickled, (whole, trickled)
    if whole[0] != "ok":
        return
    strings = whole[1]
    assert isinstance(strings, list)
    if limit is not None:
        assert all(len(k) <= limit and len(v) <= limit for _db, k, v, _e in strings)
    again = written_rdb([(k, v, e) for _db, k, v, e in strings if e >= 0])
    reread = _read(io.BytesIO(again), None)
    assert reread[0] == "ok" and reread[1] == [(0, k, v, e) for _db, k, v, e in strings
                                               if e >= 0], "writer/reader roundtrip differs"


def _check_lzf(data: bytes) -> None:
    if len(data) < 2:
        return
    out_len = data[0] * 4
    try:
        out = rdb.lzf_decompress(data[1:], out_len)
    except rdb.RDBError:
        return
    assert len(out) == out_len


def check_one(data: bytes) -> None:
    """Run every check on one input; raise AssertionError (or anything else) on a bug."""
    step = 1 + (data[-1] % 13 if data else 0)
    _check_rdb(data, None, step)
    if len(data) > 17:
        fixed = data[:-8] + struct.pack("<Q", rdb.crc64(data[:-8]))
        _check_rdb(fixed, None, step)
        _check_rdb(fixed, 64, step)
    _check_lzf(data)


def seeds() -> list[bytes]:
    """A starting corpus: the rich RDB in several versions, writer output, odd corners."""
    out = [rich_rdb()[0], rich_rdb(12)[0], rich_rdb(4)[0], rich_rdb(9, checksum=False)[0]]
    out.append(written_rdb([(b"k", b"v", 0), (b"12", b"-7", 1900000000000),
                            (b"big", b"z" * 3000, 0)]))
    out.append(written_rdb([]))
    out += [b"", b"REDIS", b"REDIS0010", b"REDIS0013\xff" + bytes(8), b"REDIS0010\xff" + bytes(8),
            enc_lzf_repeat(b"abc", 400)[3:]]
    return out


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
