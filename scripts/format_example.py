"""Print the worked example of docs/format.md: an annotated hex dump of a real store.

Run it with ``python scripts/format_example.py``; its whole output is pasted verbatim into
docs/format.md ("Worked example"), and tests/test_format_doc.py fails if the two differ.

The store is made in a temporary directory with a fixed clock, fixed keys, no background
threads, and fixed segment nonces: bitkv draws each segment's nonce from
``secrets.randbits(64)``, so this script replaces that function while it runs. Every byte of
every file shown is annotated; the dump walks the bytes read back from disk (not the values
the script asked for) and checks each CRC with bitkv's own CRC-32C, so a change to the format
changes this output.
"""

from __future__ import annotations

import datetime
import os
import secrets
import struct
import sys
import tempfile
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bitkv
from bitkv import durable, hint, manifest, record, recovery, segment
from bitkv.crc import crc32c

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z
NONCES = (0x1111111111111111, 0x2222222222222222, 0x3333333333333333)
OPTIONS = {"sync": "never", "auto_compact": False, "clock": lambda: NOW}


def _read(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name), "rb") as fh:
        return fh.read()


def _utc(ms: int) -> str:
    when = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class Dump:
    """Annotates one file field by field; refuses to skip or repeat a byte."""

    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self.data = data
        self.pos = 0

    def field(self, name: str, size: int, meaning: str) -> bytes:
        raw = self.data[self.pos : self.pos + size]
        assert len(raw) == size, (self.name, name, self.pos)
        for i in range(0, size, 8):
            chunk = " ".join(f"{b:02x}" for b in raw[i : i + 8])
            label = f"{name:<10} {meaning}" if i == 0 else ""
            print(f"  {self.pos + i:5d}  {chunk:<23}  {label}".rstrip())
        self.pos += size
        return raw

    def uint(self, name: str, fmt: str, describe: Callable[[int], str] | None = None) -> int:
        size = struct.calcsize("<" + fmt)
        (value,) = struct.unpack("<" + fmt, self.data[self.pos : self.pos + size])
        self.field(name, size, describe(value) if describe else str(value))
        return value

    def crc(self, start: int, end: int) -> None:
        """Annotate the u32 at ``end``: the CRC-32C of bytes ``start..end-1``."""
        assert self.pos == end
        expect = crc32c(self.data[start:end])
        got = self.uint("crc", "I", lambda v: f"0x{v:08x} = CRC-32C of bytes {start}..{end - 1}"
                        + ("" if v == expect else "  ** MISMATCH **"))
        assert got == expect, self.name

    def done(self) -> None:
        assert self.pos == len(self.data), (self.name, self.pos, len(self.data))


def segment_file(directory: str, name: str) -> None:
    data = _read(directory, name)
    d = Dump(name, data)
    print(f"{name}: segment header, {segment.HEADER_SIZE} bytes")
    d.field("magic", 8, repr(data[:8]))
    d.uint("version", "H")
    d.uint("kind", "H", lambda v: {0: "0 = append", 1: "1 = compacted"}[v])
    d.uint("order_seq", "Q")
    d.uint("min_seq", "Q")
    d.uint("nonce", "Q", lambda v: f"0x{v:016x} (random in real stores)")
    d.crc(0, segment.HEADER_SIZE - 4)
    segment.decode_header(data)  # the real decoder agrees
    while d.pos < len(data):
        record_at(d)
    d.done()


def record_at(d: Dump) -> None:
    data, start = d.data, d.pos
    _crc, flags, _res, key_len, value_len, seq, expiry_ms = record.HEADER.unpack_from(data, start)
    end = start + record.HEADER_SIZE + key_len + value_len
    header, value = record.decode(data[start:end])  # the real decoder agrees
    key = data[start + record.HEADER_SIZE : start + record.HEADER_SIZE + key_len]
    if flags & record.TOMBSTONE:
        what = f"tombstone of {key!r}"
    else:
        what = f"{key!r} = {bytes(value)!r}" + (", with expiry" if expiry_ms else "")
    print()
    print(f"{d.name}: record at offset {start}, {end - start} bytes: {what}")
    (crc,) = struct.unpack_from("<I", data, start)
    ok = crc == crc32c(data[start + 4 : end])
    d.field("crc", 4, f"0x{crc:08x} = CRC-32C of bytes {start + 4}..{end - 1}"
            + ("" if ok else "  ** MISMATCH **"))
    assert ok
    d.uint("flags", "B", flag_names)
    d.uint("reserved", "B")
    d.uint("key_len", "H")
    d.uint("value_len", "I")
    d.uint("seq", "Q")
    d.uint("expiry_ms", "Q",
           lambda v: f"{v} = {_utc(v)}, now_ms + {v - int(NOW * 1000)}" if v else "0 = never")
    d.field("key", key_len, repr(key))
    if value_len:
        d.field("value", value_len, repr(bytes(value)))
    assert d.pos == end and header.seq == seq


def flag_names(flags: int) -> str:
    names = [n for n, bit in (("TOMBSTONE", record.TOMBSTONE), ("COMPRESSED", record.COMPRESSED),
                              ("ENCRYPTED", record.ENCRYPTED), ("BATCH", record.BATCH),
                              ("BATCH_FIRST", record.BATCH_FIRST),
                              ("BATCH_LAST", record.BATCH_LAST)) if flags & bit]
    return f"0x{flags:02x}" + (f" = {' | '.join(names)}" if names else " (a value)")


def hint_file(directory: str, name: str, nonce: int, seg_size: int) -> None:
    data = _read(directory, name)
    max_seq, entries = hint.decode(data, nonce, seg_size)  # the real decoder believes it
    entries = list(entries)
    d = Dump(name, data)
    print(f"{name}: hint header, {hint.HEADER_SIZE} bytes")
    d.field("magic", 8, repr(data[:8]))
    d.uint("version", "H")
    d.uint("reserved", "H")
    d.uint("count", "I")
    d.uint("nonce", "Q", lambda v: f"0x{v:016x} = the segment header's nonce")
    d.uint("seg_size", "Q", lambda v: f"{v} = the segment file's length")
    d.uint("max_seq", "Q")
    for i in range(len(entries)):
        print()
        print(f"{name}: entry {i}, {hint.ENTRY_SIZE} bytes")
        d.uint("flags", "B", flag_names)
        d.uint("reserved", "B")
        d.uint("key_len", "H")
        d.uint("value_len", "I")
        d.uint("offset", "I", lambda v: f"{v} = where the record starts in the segment")
        d.uint("seq", "Q")
        d.uint("expiry_ms", "Q", lambda v: f"{v} = {_utc(v)}" if v else "0 = never")
    print()
    print(f"{name}: key area, then trailer")
    for key, _entry in entries:
        d.field("key", len(key), repr(key))
    d.crc(0, len(data) - 4)
    d.done()
    assert max_seq == max(e[5] for _k, e in entries)


def manifest_file(directory: str) -> None:
    data = _read(directory, manifest.MANIFEST_NAME)
    listed = manifest.decode(data)  # the real decoder believes it
    d = Dump(manifest.MANIFEST_NAME, data)
    print(f"MANIFEST: header, {manifest.HEADER.size} bytes")
    d.field("magic", 8, repr(data[:8]))
    d.uint("version", "H")
    d.uint("reserved", "H")
    d.uint("count", "I")
    d.uint("generation", "Q", lambda v: f"{v} = MANIFESTs written so far")
    for i, entry in enumerate(sorted(listed.entries, key=lambda e: e.segment_id)):
        print()
        print(f"MANIFEST: entry {i}, {manifest.ENTRY.size} bytes")
        d.uint("id", "Q", lambda v: f"{v} = {segment.data_name(v)}")
        d.uint("nonce", "Q", lambda v: f"0x{v:016x} = its header's nonce")
        d.uint("order_seq", "Q", lambda v: f"{v} = its header's order_seq")
        d.uint("sealed", "Q", lambda v: f"{v} = " + (
            "open: the active segment" if v == manifest.OPEN else "its length, sealed"))
        d.uint("durable", "Q", lambda v: f"{v} = fsynced up to here" if v else
               "0 (open: see DURABLE)")
        d.uint("kind", "B", lambda v: f"{v} = " + ("append" if v == segment.KIND_APPEND
                                                      else "compacted"))
        d.field("reserved", 7, "zeros")
        assert entry.segment_id
    print()
    print("MANIFEST: trailer")
    d.crc(0, len(data) - 4)
    d.done()


def durable_file(directory: str) -> None:
    data = _read(directory, durable.DURABLE_NAME)
    mark = durable.decode(data)
    assert mark is not None
    d = Dump(durable.DURABLE_NAME, data)
    for at in (0, durable.SLOT_SPACING):
        if at:
            print()
            gap = at - d.pos
            d.pos += gap
            print(f"  {'':5}  ({gap} zero bytes up to offset {at}: the slots never share a "
                  "sector)")
        print(f"DURABLE: slot at offset {at}, {durable.SLOT.size} bytes")
        raw = data[at : at + durable.SLOT.size]
        if raw == bytes(len(raw)):
            d.field("slot", durable.SLOT.size, "zeros: never written (no valid magic)")
            continue
        d.field("magic", 8, repr(raw[:8]))
        d.uint("segment", "Q", lambda v: f"{v} = {segment.data_name(v)}")
        d.uint("nonce", "Q", lambda v: f"0x{v:016x} = its header's nonce")
        d.uint("end", "Q", lambda v: f"{v} = fsynced up to this offset")
        d.uint("generation", "Q", lambda v: f"{v}" + (" (the newest: it wins)"
                                                      if v == mark.generation else ""))
        d.crc(at, at + durable.SLOT.size - 4)
    d.done()


def listing(directory: str) -> None:
    print("directory listing:")
    for name in sorted(os.listdir(directory)):
        if name == "LOCK":
            print(f"  {name:<12} the pid of the last writer, in ASCII, then a newline")
        elif name == "COMPACTION":  # its size depends on how long the compaction took
            print(f"  {name:<12} the last compaction's summary, JSON (see above)")
        else:
            print(f"  {name:<12} {os.path.getsize(os.path.join(directory, name)):4d} bytes")


def main() -> None:
    nonces = iter(NONCES)
    real_randbits = secrets.randbits
    secrets.randbits = lambda k: next(nonces)  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "store")
            run(path)
    finally:
        secrets.randbits = real_randbits


def run(path: str) -> None:
    print(f"# clock fixed at {NOW:.0f} s ({_utc(int(NOW * 1000))}): now_ms = {int(NOW * 1000)}")
    print("# segment nonces fixed at 0x1111..., 0x2222..., 0x3333... (random in real stores)")
    print()
    print('# step 1: db = bitkv.open(path); db.put(b"user:1", b"alice");')
    print('#         db.put(b"session:9", b"tok", ttl=60); db.delete(b"user:1"); db.close()')
    with bitkv.open(path, **OPTIONS) as db:
        db.put(b"user:1", b"alice")
        db.put(b"session:9", b"tok", ttl=60)
        db.delete(b"user:1")
    listing(path)
    print()
    marker = _read(path, recovery.MARKER_NAME)
    d = Dump("BITKV", marker)
    print("BITKV: the marker, ASCII text")
    for line in marker.splitlines(keepends=True):
        d.field("line", len(line), repr(line))
    d.done()
    print()
    segment_file(path, "000001.data")
    print()
    manifest_file(path)
    print()
    durable_file(path)
    print()
    print("# step 2: db = bitkv.open(path); db.compact(); db.close()")
    print("#   compact() seals 000001.data (it holds dead records) by starting 000002.data,")
    print("#   copies the one live record into 000003.data with its hint 000003.hint,")
    print("#   commits the MANIFEST listing 000002 and 000003, then removes 000001.data.")
    with bitkv.open(path, **OPTIONS) as db:
        db.compact()
    listing(path)
    print()
    segment_file(path, "000002.data")
    print()
    segment_file(path, "000003.data")
    print()
    seg3 = _read(path, "000003.data")
    hint_file(path, "000003.hint", segment.decode_header(seg3).nonce, len(seg3))
    print()
    manifest_file(path)
    with bitkv.open(path, **OPTIONS) as db:  # reopening believes the hint
        assert db.recovery_report.segments_from_hints == 1
        assert dict(db.items()) == {b"session:9": b"tok"}


if __name__ == "__main__":
    main()
