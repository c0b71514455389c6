"""Fuzz target: the RDB reader's collection types (hashes, sets, lists, sorted sets).

Run with atheris (``pip install 'bitkv[fuzz]'``)::

    python fuzz/fuzz_rdb_types.py -max_len=8192 -timeout=10 [corpus_dir]

Each input is read as an RDB with every callback given, as it is and with its CRC-64 trailer
fixed (so mutations that still parse reach the end). The only allowed outcomes: ``RDBError``,
or collections that, written again by ``RDBWriter``, read back the same. A source returning a
few bytes per ``read`` must give the same result, error messages included. The packed decoders
(``bitkv.rdb_packed``) run on the raw input too: ``PackedError`` or a list of bytes, nothing
else. ``tests/test_fuzz_targets.py`` runs ``check_one`` on seeded inputs without atheris;
``tests/test_rdb_types.py`` uses the encoders and :func:`typed_rdb`.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence

from fuzz_rdb import Trickle, enc_len, enc_lzf_repeat, enc_str

from bitkv import rdb, rdb_packed

# -- encoders of Redis's packed formats, as Redis writes them ----------------------------------


def _backlen(n: int) -> bytes:
    """lpEncodeBacklen: the most significant 7 bits first, every later byte with 0x80 set (a
    reader walking backwards stops at the byte without it); 16383 already takes 3 bytes."""
    size = 1 if n <= 127 else 2 if n < 16383 else 3 if n < 2097151 else 4 if n < 268435455 else 5
    return bytes([n >> (7 * (size - 1)) & 127] +
                 [(n >> (7 * i)) & 127 | 128 for i in range(size - 2, -1, -1)])


def lp_entry(element: bytes | int) -> bytes:
    """One listpack entry: an int in the smallest integer encoding, bytes as a string."""
    if isinstance(element, int):
        if 0 <= element <= 127:
            body = bytes((element,))
        elif -4096 <= element <= 4095:
            v = element & 0x1FFF
            body = bytes((0xC0 | (v >> 8), v & 0xFF))
        else:
            for code, width in ((0xF1, 2), (0xF2, 3), (0xF3, 4), (0xF4, 8)):
                if -(1 << (8 * width - 1)) <= element < 1 << (8 * width - 1):
                    body = bytes((code,)) + element.to_bytes(width, "little", signed=True)
                    break
    elif len(element) < 64:
        body = bytes((0x80 | len(element),)) + element
    elif len(element) < 4096:
        body = bytes((0xE0 | (len(element) >> 8), len(element) & 0xFF)) + element
    else:
        body = b"\xf0" + len(element).to_bytes(4, "little") + element
    return body + _backlen(len(body))


def listpack(elements: Sequence[bytes | int], count: int | None = None) -> bytes:
    body = b"".join(map(lp_entry, elements))
    n = len(elements) if count is None else count
    return (len(body) + 7).to_bytes(4, "little") + min(n, 0xFFFF).to_bytes(2, "little") + \
        body + b"\xff"


def ziplist(elements: Sequence[bytes | int]) -> bytes:
    """A ziplist: each entry the previous one's length, an encoding, the data."""
    entries = []
    prev = 0
    tail = 10
    offset = 10
    for element in elements:
        head = bytes((prev,)) if prev < 254 else b"\xfe" + prev.to_bytes(4, "little")
        if isinstance(element, int):
            if 0 <= element <= 12:
                enc = bytes((0xF1 + element,))
            else:
                for code, width in ((0xFE, 1), (0xC0, 2), (0xF0, 3), (0xD0, 4), (0xE0, 8)):
                    if -(1 << (8 * width - 1)) <= element < 1 << (8 * width - 1):
                        enc = bytes((code,)) + element.to_bytes(width, "little", signed=True)
                        break
        elif len(element) < 64:
            enc = bytes((len(element),)) + element
        elif len(element) < 16384:
            enc = bytes((0x40 | (len(element) >> 8), len(element) & 0xFF)) + element
        else:
            enc = b"\x80" + len(element).to_bytes(4, "big") + element
        entry = head + enc
        entries.append(entry)
        tail = offset
        offset += len(entry)
        prev = len(entry)
    body = b"".join(entries)
    return (len(body) + 11).to_bytes(4, "little") + tail.to_bytes(4, "little") + \
        min(len(elements), 0xFFFF).to_bytes(2, "little") + body + b"\xff"


def intset(values: Sequence[int], width: int) -> bytes:
    return width.to_bytes(4, "little") + len(values).to_bytes(4, "little") + b"".join(
        v.to_bytes(width, "little", signed=True) for v in values)


def zipmap(pairs: Sequence[tuple[bytes, bytes]], free: int = 0) -> bytes:
    def length(n: int) -> bytes:
        return bytes((n,)) if n < 254 else b"\xfe" + n.to_bytes(4, "little")

    out = bytearray((len(pairs) if len(pairs) < 254 else 254,))
    for field, value in pairs:
        out += length(len(field)) + field + length(len(value)) + bytes((free,)) + value + \
            bytes(free)
    return bytes(out + b"\xff")


# -- an RDB holding every encoding of the four types ---------------------------------------

Loaded = dict[str, dict[bytes, tuple[object, int]]]  # type name -> key -> (elements, expiry)


def typed_rdb(version: int = 10) -> tuple[bytes, Loaded]:
    """An RDB with hashes, sets, lists and zsets in every encoding the reader decodes; returns
    (bytes, what the callbacks should see: type -> key -> (elements, expire_ms))."""
    want: Loaded = {"hash": {}, "set": {}, "list": {}, "zset": {}}
    out = bytearray(b"REDIS%04d" % version + b"\xfe\x00")

    def key(rdb_type: int, name: bytes, body: bytes, elements: object, expire: int = 0) -> None:
        if expire:
            out.extend(b"\xfc" + struct.pack("<q", expire))
        out.extend(bytes((rdb_type,)) + enc_str(name) + body)
        want[rdb.TYPE_NAMES[rdb_type]][name] = (elements, expire)

    big = bytes(range(256)) * 300
    key(rdb.TYPE_HASH, b"hash", enc_len(3) + enc_str(b"f") + enc_str(b"") + enc_str(b"") +
        b"\xc0\x05" + b"\xc1\x00\x80" + enc_lzf_repeat(b"ab", 100),
        [(b"f", b""), (b"", b"5"), (b"-32768", b"ab" * 50)], 1900000000000)
    key(rdb.TYPE_HASH_ZIPMAP, b"zipmap", enc_str(zipmap([(b"a", b"1"), (b"bb", b"")], 2)),
        [(b"a", b"1"), (b"bb", b"")])
    key(rdb.TYPE_HASH_ZIPLIST, b"hziplist", enc_str(ziplist([b"f", 7, b"g", -300])),
        [(b"f", b"7"), (b"g", b"-300")])
    key(rdb.TYPE_HASH_LISTPACK, b"hlistpack", enc_str(listpack([b"f", 100000, b"", b"x" * 70])),
        [(b"f", b"100000"), (b"", b"x" * 70)])
    key(rdb.TYPE_SET, b"set", enc_len(2) + enc_str(b"m") + b"\xc2\xff\xff\xff\x7f",
        [b"m", b"2147483647"])
    key(rdb.TYPE_SET_INTSET, b"intset", enc_str(intset([-2**40, 0, 2**40], 8)),
        [b"-1099511627776", b"0", b"1099511627776"])
    key(rdb.TYPE_SET_LISTPACK, b"slistpack", enc_str(listpack([b"a", -5, b"007"])),
        [b"a", b"-5", b"007"])
    key(rdb.TYPE_LIST, b"list", enc_len(3) + enc_str(b"a") + enc_str(b"a") + enc_str(big),
        [b"a", b"a", big])
    key(rdb.TYPE_LIST_ZIPLIST, b"lziplist", enc_str(ziplist([b"x", 12, -1, b"y" * 300])),
        [b"x", b"12", b"-1", b"y" * 300])
    key(rdb.TYPE_LIST_QUICKLIST, b"quicklist", enc_len(2) + enc_str(ziplist([b"1st", 2])) +
        enc_str(ziplist([2**40])), [b"1st", b"2", b"1099511627776"], 1900000000001)
    key(rdb.TYPE_LIST_QUICKLIST_2, b"quicklist2", enc_len(2) + enc_len(2) +
        enc_str(listpack([b"p", 1])) + enc_len(1) + enc_str(b"plain node"),
        [b"p", b"1", b"plain node"])
    key(rdb.TYPE_ZSET, b"zset", enc_len(4) + enc_str(b"a") + b"\x031.5" + enc_str(b"b") +
        b"\xfe" + enc_str(b"c") + b"\xff" + enc_str(b"d") + b"\x06-1e-05",
        [(b"a", 1.5), (b"b", math.inf), (b"c", -math.inf), (b"d", -1e-05)])
    key(rdb.TYPE_ZSET_2, b"zset2", enc_len(2) + enc_str(b"m") + struct.pack("<d", 0.25) +
        enc_str(b"") + struct.pack("<d", -math.inf), [(b"m", 0.25), (b"", -math.inf)])
    key(rdb.TYPE_ZSET_ZIPLIST, b"zziplist", enc_str(ziplist([b"a", 1, b"b", b"2.5"])),
        [(b"a", 1.0), (b"b", 2.5)])
    key(rdb.TYPE_ZSET_LISTPACK, b"zlistpack", enc_str(listpack([b"a", b"inf", 7, b"-3"])),
        [(b"a", math.inf), (b"7", -3.0)])
    out += b"\xff"
    if version >= 5:
        out += struct.pack("<Q", rdb.crc64(bytes(out)))
    return bytes(out), want


# -- the checks --------------------------------------------------------------------------------


def read(src: object, limit: int | None = None) -> tuple[object, ...]:
    """("ok", what each callback saw, summary counts) or ("error", message, what was seen)."""
    seen: list[tuple[object, ...]] = []

    def recorder(name: str):  # type: ignore[no-untyped-def]
        return lambda *a: seen.append((name, *a))

    try:
        summary = rdb.read_rdb(src, on_string=recorder("string"),  # type: ignore[arg-type]
                               on_hash=recorder("hash"), on_set=recorder("set"),
                               on_list=recorder("list"), on_zset=recorder("zset"),
                               max_value_len=limit, now_ms=1)
    except rdb.RDBError as exc:
        return ("error", str(exc), seen)
    counts = (summary.strings, summary.hashes, summary.sets, summary.lists, summary.zsets)
    assert counts == tuple(sum(1 for s in seen if s[0] == name)
                           for name in ("string", "hash", "set", "list", "zset"))
    for entry in seen:
        elements = entry[3]
        if entry[0] != "string":
            assert isinstance(elements, list) and elements, entry
        if entry[0] == "zset":
            assert all(not math.isnan(score) for _m, score in elements)  # type: ignore[attr-defined]
    return ("ok", seen, counts)


def rewrite(seen: list[tuple[object, ...]]) -> bytes:
    """What was read, written again (all in db 0)."""
    f = io.BytesIO()
    writer = rdb.RDBWriter(f, repl_id="0123456789abcdef0123456789abcdef01234567", repl_offset=1)
    add = {"string": writer.add_string, "hash": writer.add_hash, "set": writer.add_set,
           "list": writer.add_list, "zset": writer.add_zset}
    for name, _db, key, elements, expire_ms in seen:
        if name == "string":
            writer.add_string(key, elements, expire_ms)  # type: ignore[arg-type]
        else:
            add[name](key, len(elements), iter(elements), expire_ms)  # type: ignore[arg-type, operator]
    writer.finish()
    return f.getvalue()


def _check_rdb(data: bytes, limit: int | None, step: int) -> None:
    whole = read(io.BytesIO(data), limit)
    trickled = read(Trickle(data, step), limit)
    assert whole == trickled, (whole, trickled)
    if whole[0] != "ok":
        return
    seen = whole[1]
    assert isinstance(seen, list)
    again = read(io.BytesIO(rewrite(seen)))
    assert again[0] == "ok" and again[1] == [(s[0], 0, *s[2:]) for s in seen], \
        "writer/reader roundtrip differs"


def _check_decoders(data: bytes) -> None:
    for decode in (rdb_packed.listpack_elements, rdb_packed.ziplist_elements,
                   rdb_packed.intset_members, rdb_packed.zipmap_pairs):
        try:
            result = decode(data)
        except rdb_packed.PackedError:
            continue
        assert isinstance(result, list)
        assert all(isinstance(e, bytes) or isinstance(e[0] + e[1], bytes) for e in result)
    try:
        score = rdb_packed.score_from_text(data[:60])
    except ValueError:
        return
    assert not math.isnan(score)


def check_one(data: bytes) -> None:
    """Run every check on one input; raise AssertionError (or anything else) on a bug."""
    step = 1 + (data[-1] % 13 if data else 0)
    _check_rdb(data, None, step)
    if len(data) > 17:
        fixed = data[:-8] + struct.pack("<Q", rdb.crc64(data[:-8]))
        _check_rdb(fixed, None, step)
        _check_rdb(fixed, 64, step)
    _check_decoders(data)


def seeds() -> list[bytes]:
    """A starting corpus: every encoding in an RDB, and each packed blob on its own."""
    out = [typed_rdb()[0], typed_rdb(9)[0], typed_rdb(4)[0]]
    out += [listpack([b"a", 1, -5000, 2**40, b"x" * 70]), ziplist([b"a", 3, -200, 2**33]),
            intset([1, 2, 3], 2), zipmap([(b"k", b"v")], 1), b"1.5e10", b"-inf"]
    return out


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
