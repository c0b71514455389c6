"""Keys on the command line, keys on screen, and the JSON Lines format of export/import.

JSON Lines: one object per line, ``{"key": ..., "value": ..., "ttl": seconds-left-or-null}``
(or, from ``export --absolute-expiry``, ``"expires_at_ms": unix-ms-or-null`` instead of
``"ttl"``).
Keys and values that are valid UTF-8 are written as text; any other bytes as base64, marked
with ``"key_encoding": "base64"`` / ``"value_encoding": "base64"``. With the global ``--hex``
keys are written as hex (``"key_encoding": "hex"``). Import accepts all three encodings.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from typing import Any

import bitkv

from .errors import EXIT_USAGE, CliError

MAX_TTL_SECONDS = 100 * 365 * 24 * 3600.0  # the store's limit, restated for early errors
ENCODINGS = ("utf-8", "base64", "hex")

_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(32), 127]}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def parse_key(text: str, hex_mode: bool, what: str = "KEY") -> bytes:
    """Turn a command-line argument into key bytes (exactly the argument's bytes, or hex)."""
    if hex_mode:
        try:
            key = bytes.fromhex(text)
        except ValueError:
            raise CliError(f"{what} {text!r} is not valid hex (--hex takes pairs of 0-9a-f "
                           "digits)", EXIT_USAGE) from None
    else:
        key = os.fsencode(text)
    check_key(key, what)
    return key


def parse_key_bytes(raw: bytes, hex_mode: bool, what: str) -> bytes:
    """Turn one line of a key list into key bytes: the line's bytes, or hex (whitespace
    around it ignored) in hex mode; ``what`` names the line in errors."""
    if hex_mode:
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise CliError(f"{what} is not hex (--hex is in force)", EXIT_USAGE) from None
        return parse_key(text, True, what)
    check_key(raw, what)
    return raw


def parse_prefix(text: str | None, hex_mode: bool) -> bytes | None:
    if text is None:
        return None
    if not hex_mode:
        return os.fsencode(text)
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise CliError(f"--prefix {text!r} is not valid hex", EXIT_USAGE) from None


def check_key(key: bytes, what: str = "KEY") -> None:
    if not key:
        raise CliError(f"{what} must not be empty", EXIT_USAGE)
    if len(key) > bitkv.MAX_KEY_SIZE:
        raise CliError(f"{what} is {len(key)} bytes; the limit is {bitkv.MAX_KEY_SIZE}",
                       EXIT_USAGE)


def check_value(value: bytes) -> None:
    if len(value) > bitkv.MAX_VALUE_SIZE:
        raise CliError(f"VALUE is {len(value)} bytes; the limit is {bitkv.MAX_VALUE_SIZE}",
                       EXIT_USAGE)


def ttl_problem(ttl: object) -> str | None:
    """Why ``ttl`` (seconds) is not usable, or None if it is."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        return "must be a number of seconds"
    if not math.isfinite(ttl) or ttl <= 0:
        return "must be a positive number of seconds"
    if ttl > MAX_TTL_SECONDS:
        return f"exceeds the limit of {MAX_TTL_SECONDS:.0f} seconds (100 years)"
    return None


def show_bytes(data: bytes) -> str:
    """Readable text for key or value bytes: UTF-8, with control bytes and invalid UTF-8
    escaped as ``\\xNN`` (use --hex or --json for exact bytes)."""
    return data.decode("utf-8", "backslashreplace").translate(_ESCAPES)


def show_key(key: bytes, hex_mode: bool) -> str:
    return key.hex() if hex_mode else show_bytes(key)


def _put_bytes(obj: dict[str, Any], name: str, data: bytes, hex_mode: bool = False) -> None:
    if hex_mode:
        obj[name] = data.hex()
        obj[f"{name}_encoding"] = "hex"
        return
    try:
        obj[name] = data.decode("utf-8")
    except UnicodeDecodeError:
        obj[name] = base64.b64encode(data).decode("ascii")
        obj[f"{name}_encoding"] = "base64"


def encode_line(key: bytes, value: bytes | None, ttl: float | None, *, hex_keys: bool = False,
                with_ttl: bool = True, expires_at_ms: int | None = None) -> str:
    """One JSON Lines record (without the newline). With ``expires_at_ms`` given (0: never),
    the expiry is written as ``"expires_at_ms"`` (absolute Unix milliseconds, or null)
    instead of ``"ttl"``: restoring it later does not extend the key's life."""
    obj: dict[str, Any] = {}
    _put_bytes(obj, "key", key, hex_keys)
    if value is not None:
        _put_bytes(obj, "value", value)
    if expires_at_ms is not None:
        obj["expires_at_ms"] = expires_at_ms or None
    elif with_ttl:
        obj["ttl"] = None if ttl is None else round(ttl, 3)
    return json.dumps(obj, ensure_ascii=False)


class LineError(ValueError):
    """An import line that cannot be used; the message says why."""


def _get_bytes(obj: dict[str, Any], name: str) -> bytes:
    if name not in obj:
        raise LineError(f'no "{name}" field')
    text = obj[name]
    if not isinstance(text, str):
        raise LineError(f'"{name}" must be a string, not {type(text).__name__}')
    encoding = obj.get(f"{name}_encoding", "utf-8")
    if encoding in ("utf-8", "utf8", "text", None):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            raise LineError(f'"{name}" holds a lone surrogate, which is not UTF-8; use '
                            f'"{name}_encoding": "base64"') from None
    if encoding == "base64":
        try:
            return base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise LineError(f'"{name}" is not valid base64') from None
    if encoding == "hex":
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise LineError(f'"{name}" is not valid hex') from None
    raise LineError(f'"{name}_encoding" must be one of {", ".join(ENCODINGS)}, '
                    f"not {encoding!r}")


def decode_line(line: bytes) -> tuple[bytes, bytes, float | None] | None:
    """Parse one JSON Lines record into (key, value, ttl); None for a blank line. A line with
    an absolute ``"expires_at_ms"`` is refused here: use :func:`decode_import_line`."""
    parsed = decode_import_line(line)
    if parsed is None:
        return None
    key, value, ttl, expires_at_ms = parsed
    if expires_at_ms is not None:
        raise LineError('"expires_at_ms" is not accepted here')
    return key, value, ttl


def decode_import_line(line: bytes
                       ) -> tuple[bytes, bytes, float | None, int | None] | None:
    """Parse one JSON Lines record into (key, value, ttl, expires_at_ms); None for a blank
    line. At most one of ``ttl`` (seconds from now) and ``expires_at_ms`` (absolute Unix
    milliseconds, as ``export --absolute-expiry`` writes) is set; neither: no expiry."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
    text = text.lstrip("\ufeff").strip()
    if not text:
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    key = _get_bytes(obj, "key")
    if not key:
        raise LineError("the key is empty")
    if len(key) > bitkv.MAX_KEY_SIZE:
        raise LineError(f"the key is {len(key)} bytes; the limit is {bitkv.MAX_KEY_SIZE}")
    value = _get_bytes(obj, "value")
    if len(value) > bitkv.MAX_VALUE_SIZE:
        raise LineError(f"the value is {len(value)} bytes; the limit is {bitkv.MAX_VALUE_SIZE}")
    ttl = obj.get("ttl")
    if ttl is not None:
        problem = ttl_problem(ttl)
        if problem:
            raise LineError(f'"ttl" {ttl!r} {problem} (or null)')
        ttl = float(ttl)
    expires_at_ms = obj.get("expires_at_ms")
    if expires_at_ms is not None:
        if ttl is not None:
            raise LineError('"ttl" and "expires_at_ms" exclude each other')
        if isinstance(expires_at_ms, bool) or not isinstance(expires_at_ms, int) \
                or not 0 < expires_at_ms < 2**63:
            raise LineError(f'"expires_at_ms" {expires_at_ms!r} must be a positive integer of '
                            "Unix milliseconds (or null)")
    return key, value, ttl, expires_at_ms
