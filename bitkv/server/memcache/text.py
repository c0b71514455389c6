"""The words of memcached's text protocol (doc/protocol.txt): reply lines, tokens, numbers,
expiration times, and the limits that keep a connection's memory bounded.

Pure functions of bytes; the one owner of how a request line is read. Where protocol.txt is
vague, the behaviour is memcached 1.6's, checked byte for byte against Debian's memcached by
tests/test_memcached_differential.py.
"""

from __future__ import annotations

import re

from bitkv.structures import PREFIX as RESERVED_PREFIX

# Replies.
STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
EXISTS = b"EXISTS\r\n"
NOT_FOUND = b"NOT_FOUND\r\n"
DELETED = b"DELETED\r\n"
TOUCHED = b"TOUCHED\r\n"
END = b"END\r\n"
OK = b"OK\r\n"
RESET = b"RESET\r\n"
ERROR = b"ERROR\r\n"  # an unknown command, or a known one with the wrong number of words
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
BAD_DELETE = b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
BAD_DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
NOREPLY = b"noreply"

KEY_MAX_LENGTH = 250  # protocol.txt: "the length limit of a key is set at 250 characters"
# memcached's default -I (item size limit); bitkv counts the value alone (memcached counts its
# ~50-byte item header and the key too, so its largest value is slightly smaller).
DEFAULT_MAX_ITEM_SIZE = 1024 * 1024
# A request line without "\n" after this many bytes closes the connection (memcached 1.6:
# the same 2048, except for get/gets, whose long multi-key lines it keeps reading).
MAX_LINE = 2048
MAX_GET_LINE = 64 * 1024
RELATIVE_EXPTIME_MAX = 60 * 60 * 24 * 30  # protocol.txt: up to 30 days is relative
U32_MAX = 2**32 - 1
U64 = 2**64

_DECIMAL = re.compile(rb"\+?[0-9]+\Z")  # what strtoul accepts in a token (no sign, no 0x)
_SIGNED = re.compile(rb"[+-]?[0-9]+\Z")
_C_SPACE = b" \t\n\v\f\r"
_LEADING_NUMBER = re.compile(rb"[ \t\n\v\f\r]*\+?([0-9]+)")


def tokens(line: bytes) -> list[bytes]:
    """The words of a request line (without its "\\n"): split at spaces, runs of spaces count
    as one, as memcached's tokenizer (a tab is part of a word)."""
    if line.endswith(b"\r"):
        line = line[:-1]
    words = line.split(b" ")
    if b"" in words:
        words = [word for word in words if word]
    return words


def wants_noreply(words: list[bytes], with_noreply: int) -> bool:
    """True if the command has its optional last word and that word is ``noreply``: memcached
    takes any other word there as not asking for silence."""
    return len(words) == with_noreply and words[-1] == NOREPLY


def valid_key(key: bytes) -> bool:
    """At most 250 bytes, and not in the range reserved for the collections' own records
    (bitkv.structures.PREFIX), which no client may read or write."""
    return len(key) <= KEY_MAX_LENGTH and not key.startswith(RESERVED_PREFIX)


def parse_u32(word: bytes) -> int | None:
    """Client flags: an unsigned decimal that fits 32 bits, else None."""
    if word.isdigit():  # the common case without a regex (bytes.isdigit is ASCII only)
        value = int(word)
        return value if value <= U32_MAX else None
    if not _DECIMAL.match(word):
        return None
    value = int(word)
    return value if value <= U32_MAX else None


def parse_u64(word: bytes) -> int | None:
    """A cas unique or an incr/decr delta: an unsigned decimal below 2**64, else None."""
    if not _DECIMAL.match(word):
        return None
    value = int(word)
    return value if value < U64 else None


def parse_i64(word: bytes) -> int | None:
    """An exptime or a length (memcached's strtol): a signed 64-bit decimal, else None."""
    if word.isdigit() and len(word) < 19:  # the common case: below 2**63 for sure
        return int(word)
    if not _SIGNED.match(word):
        return None
    value = int(word)
    return value if -(2**63) <= value < 2**63 else None


def expiry_ms(exptime: int, now: float) -> int:
    """The absolute expiry (Unix milliseconds, 0: never) that an exptime means: 0 never,
    negative already expired, up to 30 days seconds from ``now``, above that a Unix time."""
    if exptime == 0:
        return 0
    if exptime < 0:
        return 1  # the epoch's first millisecond: expired, the key is gone at once
    if exptime <= RELATIVE_EXPTIME_MAX:
        return int(now * 1000) + exptime * 1000
    return min(exptime * 1000, 2**63 - 1)


def counter_value(value: bytes) -> int | None:
    """The number a value holds for incr/decr (memcached's strtoull on the item data: leading
    white space, digits, then the end or more white space), else None."""
    if not value:
        return None
    match = _LEADING_NUMBER.match(value)
    if match is None:
        return None
    rest = value[match.end():]
    if rest and rest[0] not in _C_SPACE:
        return None
    number = int(match.group(1))
    return number if number < U64 else None


def counter_bytes(number: int, old: bytes) -> bytes:
    """The value incr/decr store: memcached rewrites an item in place when the new number is no
    longer than the old value, padding it with spaces to the old length."""
    digits = str(number).encode("ascii")
    if len(digits) < len(old):
        return digits + b" " * (len(old) - len(digits))
    return digits
