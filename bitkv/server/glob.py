"""Redis glob patterns (``stringmatchlen`` in util.c) for KEYS, SCAN MATCH and CONFIG GET.

``*`` any run, ``?`` any byte, ``[abc]`` / ``[^abc]`` / ``[a-z]`` classes (reversed ranges
allowed), ``\\x`` a literal x. Patterns are translated to a compiled bytes regex once and
cached; a pattern that is a literal prefix followed by ``*`` is matched with ``startswith``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

_SPECIAL = frozenset(b"*?[\\")


def literal_prefix(pattern: bytes) -> bytes:
    """The bytes every match must start with (up to the first special character)."""
    for i, c in enumerate(pattern):
        if c in _SPECIAL:
            return pattern[:i]
    return pattern


def _class(pattern: bytes, i: int) -> tuple[bytes, int]:
    """Translate the class starting after '[' at ``i``; return (regex, index after ']')."""
    n = len(pattern)
    negate = i < n and pattern[i] == 94  # '^'
    if negate:
        i += 1
    items: list[bytes] = []
    while i < n and pattern[i] != 93:  # ']'
        c = pattern[i]
        if c == 92 and i + 1 < n:  # '\x' -> literal x
            i += 1
            items.append(re.escape(pattern[i : i + 1]))
            i += 1
        elif i + 2 < n and pattern[i + 1] == 45:  # a range 'a-z' (even 'a-]', as in Redis)
            lo, hi = c, pattern[i + 2]
            if lo > hi:
                lo, hi = hi, lo
            items.append(re.escape(bytes([lo])) + b"-" + re.escape(bytes([hi])))
            i += 3
        else:
            items.append(re.escape(bytes([c])))
            i += 1
    # An unterminated class ends with the pattern, as in stringmatchlen.
    i += 1
    if not items:
        return (b"[\\s\\S]" if negate else b"(?!)"), i
    return b"[" + (b"^" if negate else b"") + b"".join(items) + b"]", i


@lru_cache(maxsize=256)
def compile_glob(pattern: bytes) -> Callable[[bytes], bool]:
    """Return a predicate telling whether a key matches the Redis glob ``pattern``."""
    if pattern == b"*":
        return lambda key: True
    prefix = literal_prefix(pattern)
    if prefix == pattern:
        return pattern.__eq__
    if pattern == prefix + b"*":
        return lambda key: key.startswith(prefix)
    out: list[bytes] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # '*'
            while i < n and pattern[i] == 42:
                i += 1
            out.append(b"[\\s\\S]*")
            continue
        if c == 63:  # '?'
            out.append(b"[\\s\\S]")
        elif c == 91:  # '['
            regex, i = _class(pattern, i + 1)
            out.append(regex)
            continue
        elif c == 92 and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i : i + 1]))
        else:
            out.append(re.escape(bytes([c])))
        i += 1
    compiled = re.compile(b"".join(out))
    match = compiled.fullmatch
    return lambda key: match(key) is not None


def glob_match(pattern: bytes, key: bytes) -> bool:
    return compile_glob(pattern)(key)
