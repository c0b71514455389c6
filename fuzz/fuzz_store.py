"""Fuzz target: open a store directory whose files the fuzzer has damaged, and read it.

Run with atheris::

    python fuzz/fuzz_store.py -max_len=16384 -timeout=20 [corpus_dir]

A small template store is built once (several segments, compacted segments with hint files,
live and expired TTLs, a batch; every key written exactly once with a self-describing value).
Each input is a list of commands, each ``file index, operation, length, payload``: replace a
file's bytes, XOR bytes into it, truncate it, append to it, delete it, or overwrite a range.

The only allowed outcomes: opening raises a :class:`bitkv.Error`; or it succeeds and every key
reads back as its one true value, as absent, or as a :class:`bitkv.Error` (never other bytes,
never another exception); no key nobody wrote is listed; a write then a reopen succeeds and
shows the same data plus the write.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from typing import Any

import bitkv
from bitkv import segment as seg_mod
from bitkv.crashtest.values import make_value
from bitkv.fileio import FileIO

T0 = 1_700_000_000
NOW = T0 + 100.0  # the time every check runs at: short TTLs have expired
MAX_COMMANDS = 4
_state: dict[str, Any] = {}


class _NoSyncIO(FileIO):
    """fsync is irrelevant to what this target checks, and costs milliseconds per call."""

    def fsync(self, fd: int) -> None:
        pass

    def fsync_dir(self, path: str) -> None:
        pass


class _DeterministicNonces:
    def __init__(self) -> None:
        self._rng = random.Random(1234)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)


def _build_template(root: str) -> tuple[str, dict[bytes, bytes | None]]:
    path = os.path.join(root, "template")
    expected: dict[bytes, bytes | None] = {}
    clock_t = [float(T0)]
    saved = seg_mod.secrets
    seg_mod.secrets = _DeterministicNonces()  # type: ignore[assignment]
    try:
        rng = random.Random(99)
        with bitkv.open(path, sync="never", clock=lambda: clock_t[0], auto_compact=False,
                        max_segment_size=4096, fileio=_NoSyncIO()) as db:
            for i in range(30):
                key = b"key-%02d" % i
                value = make_value(key, "1", rng.randint(10, 600))
                ttl = None
                if i % 7 == 3:
                    ttl = 10          # expired at NOW
                elif i % 7 == 5:
                    ttl = 10_000      # still live at NOW
                db.put(key, value, ttl=ttl)
                expected[key] = None if ttl == 10 else value
            # Some garbage, or compaction has nothing to reclaim and skips the rewrite.
            db.put(b"scratch", b"1")
            db.put(b"scratch", b"2")
            db.delete(b"scratch")
            db.compact()
            for i in range(30, 45):
                key = b"key-%02d" % i
                value = make_value(key, "1", rng.randint(10, 400))
                db.put(key, value)
                expected[key] = value
            if hasattr(db, "batch"):
                with db.batch() as b:
                    for i in range(45, 48):
                        key = b"key-%02d" % i
                        value = make_value(key, "1", 50 + i)
                        b.put(key, value)
                        expected[key] = value
    finally:
        seg_mod.secrets = saved
    os.unlink(os.path.join(path, "LOCK")) if os.path.exists(os.path.join(path, "LOCK")) else None
    return path, expected


def setup(root: str | None = None) -> None:
    """Build the template under ``root`` (a temporary directory if None)."""
    if root is None:
        root = tempfile.mkdtemp(prefix="bitkv-fuzz-")
        atexit.register(shutil.rmtree, root, True)
    template, expected = _build_template(root)
    files = {}
    for name in sorted(os.listdir(template)):
        with open(os.path.join(template, name), "rb") as fh:
            files[name] = fh.read()
    _state.update(root=root, files=files, expected=expected, n=0)


def template_files() -> dict[str, bytes]:
    if not _state:
        setup()
    return dict(_state["files"])


def apply_commands(files: dict[str, bytes], data: bytes) -> dict[str, bytes]:
    """Apply the fuzzer's commands to a copy of the template's files."""
    files = dict(files)
    names = sorted(files)
    pos = 0
    for _ in range(MAX_COMMANDS):
        if pos + 4 > len(data) or not names:
            break
        name = names[data[pos] % len(names)]
        op = data[pos + 1] % 6
        n = int.from_bytes(data[pos + 2 : pos + 4], "little")
        payload = data[pos + 4 : pos + 4 + n]
        pos += 4 + n
        content = bytearray(files.get(name, b""))
        if op == 0:
            content = bytearray(payload)
        elif op == 1 and content:
            for j in range(0, len(payload) - 2, 3):
                off = int.from_bytes(payload[j : j + 2], "little") % len(content)
                content[off] ^= payload[j + 2] or 0xFF
        elif op == 2:
            cut = int.from_bytes(payload[:2], "little") if payload else 0
            del content[cut % (len(content) + 1) :]
        elif op == 3:
            content += payload
        elif op == 4:
            files.pop(name, None)
            continue
        elif op == 5 and content and len(payload) > 2:
            off = int.from_bytes(payload[:2], "little") % len(content)
            content[off : off + len(payload) - 2] = payload[2:]
        files[name] = bytes(content)
    return files


def _observe(db: Any, expected: dict[bytes, bytes | None]) -> dict[bytes, Any]:
    seen: dict[bytes, Any] = {}
    for key, want in expected.items():
        try:
            got = db.get(key)
        except bitkv.Error as exc:
            seen[key] = ("error", type(exc).__name__)
            continue
        if got is not None and got != want:
            raise AssertionError(f"{key!r} read back {got[:60]!r}, which was never its value "
                                 f"({'expired' if want is None else repr(want[:60])})")
        seen[key] = got
    listed = set(db.keys())
    phantom = listed - set(expected) - {b"fuzz-new"}
    assert not phantom, f"keys nobody wrote are listed: {sorted(phantom)[:3]!r}"
    return seen


def check_one(data: bytes) -> None:
    if not _state:
        setup()
    files = apply_commands(_state["files"], data)
    _state["n"] += 1
    path = os.path.join(_state["root"], f"case-{_state['n'] % 4}")
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    for name, content in files.items():
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(content)
    expected = _state["expected"]
    options = dict(sync="never", clock=lambda: NOW, auto_compact=False, max_segment_size=4096,
                   fileio=_NoSyncIO())
    try:
        db = bitkv.open(path, **options)
    except bitkv.Error:
        return
    with db:
        first = _observe(db, expected)
        db.put(b"fuzz-new", b"written after recovery")
    with bitkv.open(path, **options) as db:
        second = _observe(db, expected)
        assert db.get(b"fuzz-new") == b"written after recovery", "a write after recovery lost"
    changed = [k for k in expected if first[k] != second[k]]
    assert not changed, f"reopening changed {changed[0]!r}: {first[changed[0]]!r:.80} -> " \
                        f"{second[changed[0]]!r:.80}"


def seeds() -> list[bytes]:
    """A starting corpus: commands that damage the template in every way."""
    rng = random.Random(11)
    files = template_files()
    names = sorted(files)
    out = [b""]
    for _ in range(60):
        cmds = b""
        for _ in range(rng.randint(1, 3)):
            idx = rng.randrange(len(names))
            content = files[names[idx]]
            op = rng.randrange(6)
            if op == 0:
                payload = _mutate(rng, content)
            elif op == 1:
                payload = b"".join(rng.randrange(65536).to_bytes(2, "little")
                                   + bytes([rng.randrange(1, 256)])
                                   for _ in range(rng.randint(1, 6)))
            elif op == 2:
                payload = rng.randrange(len(content) + 1).to_bytes(2, "little")
            elif op == 3:
                payload = rng.choice((bytes(rng.randint(1, 600)),
                                      rng.randbytes(rng.randint(1, 600)),
                                      content[rng.randrange(max(1, len(content))):]))
            elif op == 4:
                payload = b""
            else:
                payload = rng.randrange(65536).to_bytes(2, "little") + rng.randbytes(
                    rng.randint(1, 80))
            payload = payload[:65535]
            cmds += bytes([idx, op]) + len(payload).to_bytes(2, "little") + payload
        out.append(cmds)
    return out


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if buf and rng.random() < 0.6:
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif buf:
            del buf[rng.randrange(len(buf)) :]
    return bytes(buf)


def main() -> None:  # pragma: no cover - needs atheris
    from _atheris import fuzz

    setup()
    fuzz(check_one)


if __name__ == "__main__":  # pragma: no cover
    main()
