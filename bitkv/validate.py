"""Checks and conversions at the public boundary: keys, values, TTLs, options, counters.

Every public entry point funnels its arguments through these, so a wrong type or size gets
the same clear error (naming the type, or the limit) wherever it is passed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from . import record as rec
from .errors import NotAnIntegerError

KeyLike = bytes | str | bytearray | memoryview
ValueLike = bytes | bytearray | memoryview

MAX_TTL_SECONDS = 100 * 365 * 24 * 3600.0
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def to_key(key: object) -> bytes:
    """Return ``key`` as bytes (str is UTF-8 encoded); raise TypeError/ValueError if unusable."""
    if type(key) is bytes:
        k = key
    elif isinstance(key, str):
        k = key.encode("utf-8")
    elif isinstance(key, (bytes, bytearray, memoryview)):
        k = bytes(key)
    else:
        raise TypeError(f"key must be bytes or str, not {type(key).__name__}")
    if not 0 < len(k) <= rec.MAX_KEY_SIZE:
        if not k:
            raise ValueError("key must not be empty")
        raise ValueError(f"key is {len(k)} bytes; the limit is {rec.MAX_KEY_SIZE} bytes")
    return k


def key_batch(keys: object, what: str) -> Iterable[KeyLike]:
    """``keys`` as given, if it is an iterable of keys rather than one key: a str or bytes-like
    batch would otherwise be read as its characters or byte values, one key each."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{what} takes an iterable of keys, not one key "
                        f"({type(keys).__name__}); pass [key] for one key")
    if not isinstance(keys, Iterable):
        raise TypeError(f"{what} takes an iterable of keys, not {type(keys).__name__}")
    return keys


def to_prefix(prefix: object) -> bytes:
    """Return a key prefix as bytes (str is UTF-8 encoded; empty matches every key)."""
    if isinstance(prefix, str):
        return prefix.encode("utf-8")
    if isinstance(prefix, (bytes, bytearray, memoryview)):
        return bytes(prefix)
    raise TypeError(f"prefix must be bytes or str, not {type(prefix).__name__}")


def to_value(value: object) -> bytes:
    """Return ``value`` as bytes; only bytes-like values are accepted."""
    if type(value) is bytes:
        v = value
    elif isinstance(value, (bytes, bytearray, memoryview)):
        v = bytes(value)
    else:
        hint = "; encode str values first, e.g. value.encode()" if isinstance(value, str) else ""
        raise TypeError(f"value must be bytes, bytearray or memoryview, not "
                        f"{type(value).__name__}{hint}")
    if len(v) > rec.MAX_VALUE_SIZE:
        raise ValueError(f"value is {len(v)} bytes; the limit is {rec.MAX_VALUE_SIZE} bytes")
    return v


def check_ttl(ttl: object) -> float:
    """Validate a TTL in seconds: a positive, finite number no larger than 100 years."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise TypeError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive, finite number of seconds, got {ttl!r}")
    if ttl > MAX_TTL_SECONDS:
        raise ValueError(f"ttl {ttl!r} exceeds the limit of {MAX_TTL_SECONDS:.0f} seconds")
    return float(ttl)


def check_expires_at_ms(at_ms: object) -> int:
    """Validate an absolute expiry: an int of Unix milliseconds, 1 to 2**63 - 1.

    A time in the past is valid: the key is written already expired (what a replica does
    with ``SET ... PXAT`` from a master whose clock is ahead).
    """
    if isinstance(at_ms, bool) or not isinstance(at_ms, int):
        raise TypeError(f"expires_at_ms must be an int of Unix milliseconds, not "
                        f"{type(at_ms).__name__}")
    if not 0 < at_ms < 2**63:
        raise ValueError(f"expires_at_ms must be between 1 and 2**63 - 1, got {at_ms}")
    return at_ms


def check_number(name: str, value: object, low: float, high: float, *,
                  low_open: bool = False, integral: bool = False) -> None:
    """Validate a numeric option; the error names the option, its range and the bad value."""
    kinds = (int,) if integral else (int, float)
    ok = not isinstance(value, bool) and isinstance(value, kinds)
    if ok:
        number = float(value)  # type: ignore[arg-type]
        ok = (low < number if low_open else low <= number) and number <= high
    if not ok:
        kind = "an int" if integral else "a number"
        bound = f"> {low}" if low_open else f">= {low}"
        upper = "" if high == math.inf else f" and <= {high}"
        raise ValueError(f"{name} must be {kind} {bound}{upper}, not {value!r}")


def parse_int(key: bytes, value: bytes) -> int:
    """Parse a stored counter: optional '-', ASCII digits, no leading zeros or spaces."""
    text = value.decode("ascii", "replace")
    digits = text[1:] if text.startswith("-") else text
    if not digits.isdigit() or not digits.isascii() or len(text) > 20 \
            or (len(digits) > 1 and digits[0] == "0") or text == "-0":
        raise NotAnIntegerError(f"value of key {key!r} is not an integer")
    number = int(text)
    if not INT64_MIN <= number <= INT64_MAX:
        raise NotAnIntegerError(f"value of key {key!r} is out of the signed 64-bit range")
    return number
