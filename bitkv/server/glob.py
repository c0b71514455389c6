"""Redis glob patterns (``stringmatchlen`` in util.c) for KEYS, SCAN MATCH and CONFIG GET.

``*`` any run, ``?`` any byte, ``[abc]`` / ``[^abc]`` / ``[a-z]`` classes (reversed ranges
allowed), ``\\x`` a literal x. Patterns are translated to a compiled bytes regex once and
cached (and Pub/Sub keeps the matcher of every subscribed pattern); the stars are placed
without exponential backtracking (see :func:`compile_glob`). A pattern that is a literal
prefix followed by ``*`` is matched with ``startswith``.
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
    """Return a predicate telling whether a key matches the Redis glob ``pattern``.

    As in Redis, an empty key matches only the empty pattern (``PSUBSCRIBE *`` gets no
    message published to the channel ``""``).

    ``A*B*C*D`` (A, B, C, D runs of single-byte units) becomes the regex
    ``A(?>.*?B)(?>.*?C).*D``: each run between two stars is placed at its leftmost
    occurrence and never moved again (an atomic group), which is right because that leaves
    the most room for what follows; only the last star backtracks, linearly. The plain
    translation ``A.*B.*C.*D`` backtracks over every star, exponentially in their number:
    ``*a*a*a*a*a*b`` took 4.5 s against a 100-byte name, and a subscribed pattern is matched
    against every channel published to. Matching is O(len(key) * len(pattern)) at worst.
    """
    if pattern.strip(b"*") == b"":
        return pattern.__eq__ if pattern == b"" else bool
    prefix = literal_prefix(pattern)
    if prefix == pattern:
        return pattern.__eq__
    if pattern == prefix + b"*":
        return lambda key: key.startswith(prefix)
    inner = pattern[1:-1]
    if pattern == b"*" + inner + b"*" and literal_prefix(inner) == inner:
        return lambda key: inner in key  # *text*, common in KEYS: a substring search
    parts = [b""]  # the regexes of the runs between stars
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # '*'
            while i < n and pattern[i] == 42:
                i += 1
            parts.append(b"")
            continue
        if c == 63:  # '?'
            parts[-1] += b"[\\s\\S]"
        elif c == 91:  # '['
            regex, i = _class(pattern, i + 1)
            parts[-1] += regex
            continue
        elif c == 92 and i + 1 < n:
            i += 1
            parts[-1] += re.escape(pattern[i : i + 1])
        else:
            parts[-1] += re.escape(bytes([c]))
        i += 1
    if len(parts) == 1:
        regex = parts[0]
    else:
        middle = b"".join(b"(?>[\\s\\S]*?" + part + b")" for part in parts[1:-1])
        regex = parts[0] + middle + b"[\\s\\S]*" + parts[-1]
    match = re.compile(regex).fullmatch  # never b"": the pattern is not all stars
    return lambda key: match(key) is not None


def glob_match(pattern: bytes, key: bytes) -> bool:
    return compile_glob(pattern)(key)
