"""Self-describing values: every value the harness writes names its key, the operation that
wrote it, and its own length, and carries a checksum.

A value read back after a crash is therefore either recognisably one that was written (and the
oracle knows when and by which operation) or recognisably garbage; a torn, stale or invented
value can never pass for a legitimate one by accident.

Layout: ``b"bitkv-ct|" + key.hex() + b"|" + tag + b"|" + length + b"|" + filler + crc32c(8 hex)``
padded (by the deterministic filler) to exactly ``length`` bytes.
"""

from __future__ import annotations

import hashlib

from ..crc import crc32c

PREFIX = b"bitkv-ct|"
_CRC_HEX = 8


def _filler(key: bytes, tag: str, n: int) -> bytes:
    if n <= 0:
        return b""
    seed = hashlib.blake2b(key + b"\x00" + tag.encode(), digest_size=32).hexdigest().encode()
    reps = n // len(seed) + 1
    return (seed * reps)[:n]


def min_length(key: bytes, tag: str) -> int:
    return len(PREFIX) + 2 * len(key) + 1 + len(tag) + 1 + 10 + 1 + _CRC_HEX


def make_value(key: bytes, tag: str, length: int) -> bytes:
    """The value operation ``tag`` writes under ``key``; ``length`` is raised to the minimum."""
    length = max(length, min_length(key, tag))
    head = PREFIX + key.hex().encode() + b"|" + tag.encode() + b"|" + b"%010d" % length + b"|"
    body = head + _filler(key, tag, length - len(head) - _CRC_HEX)
    return body + b"%08x" % crc32c(body)


def value_length(key: bytes, tag: str, length: int) -> int:
    return max(length, min_length(key, tag))


def parse_value(value: bytes) -> tuple[bytes, str, int] | None:
    """Return (key, tag, length) if ``value`` is exactly a value :func:`make_value` produces."""
    if not value.startswith(PREFIX):
        return None
    parts = value.split(b"|", 4)
    if len(parts) != 5:
        return None
    try:
        key = bytes.fromhex(parts[1].decode("ascii"))
        tag = parts[2].decode("ascii")
        length = int(parts[3])
    except (ValueError, UnicodeDecodeError):
        return None
    if length != len(value) or not key or not tag:
        return None
    if make_value(key, tag, length) != value:
        return None
    return key, tag, length


def describe(value: bytes | None) -> str:
    """A short human description of a value read back, for violation messages."""
    if value is None:
        return "absent"
    parsed = parse_value(value)
    if parsed is None:
        return f"garbage ({len(value)} bytes: {value[:48]!r}...)"
    key, tag, length = parsed
    return f"value of op {tag} ({length} bytes, written under {key!r})"
