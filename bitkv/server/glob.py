"""Redis glob patterns (``stringmatchlen`` in util.c) for KEYS, SCAN MATCH and CONFIG GET.

``*`` any run, ``?`` any byte, ``[abc]`` / ``[^abc]`` / ``[a-z]`` classes (reversed ranges
allowed), ``\\x`` a literal x. Patterns are compiled once and cached (and Pub/Sub keeps the
matcher of every subscribed pattern): the runs between stars become regexes of fixed length,
placed without backtracking (see :func:`compile_glob`); a pattern that is a literal prefix
followed by ``*`` is matched with ``startswith``.
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


def _units(pattern: bytes) -> list[bytes | None]:
    """The pattern as a list of units: None for a run of ``*``, else a regex that matches
    exactly one byte."""
    units: list[bytes | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == 42:  # '*'
            while i < n and pattern[i] == 42:
                i += 1
            units.append(None)
            continue
        if c == 63:  # '?'
            units.append(b"[\\s\\S]")
        elif c == 91:  # '['
            regex, i = _class(pattern, i + 1)
            units.append(regex)
            continue
        elif c == 92 and i + 1 < n:
            i += 1
            units.append(re.escape(pattern[i : i + 1]))
        else:
            units.append(re.escape(bytes([c])))
        i += 1
    return units


@lru_cache(maxsize=256)
def compile_glob(pattern: bytes) -> Callable[[bytes], bool]:
    """Return a predicate telling whether a key matches the Redis glob ``pattern``.

    As in Redis, an empty key matches only the empty pattern (``PSUBSCRIBE *`` gets no
    message published to the channel ``""``).

    Between the stars a pattern is a run of single-byte units, so it is matched without
    backtracking over the stars (which a regex of ``.*a.*a.*a...`` does exponentially: the
    pattern ``*a*a*a*a*a*b`` took 4.5 s against a 100-byte name, and a subscribed pattern is
    matched against every channel published to): the text before the first star must start
    the key, the text after the last one must end it, and each run in between is found at
    its leftmost place after the previous one, which leaves the most room for the rest (each
    run has a fixed length). That is O(len(key) * len(pattern)) at worst.
    """
    if pattern == b"*":
        return bool
    prefix = literal_prefix(pattern)
    if prefix == pattern:
        return pattern.__eq__
    if pattern == prefix + b"*":
        return lambda key: key.startswith(prefix)
    units = _units(pattern)
    runs: list[list[bytes]] = [[]]
    for unit in units:
        if unit is None:
            runs.append([])
        else:
            runs[-1].append(unit)
    if len(runs) == 1:  # no star: one regex of fixed length
        whole = re.compile(b"".join(runs[0])).fullmatch
        return lambda key: whole(key) is not None
    head, middle, tail = runs[0], [r for r in runs[1:-1] if r], runs[-1]
    head_re = re.compile(b"".join(head)).match
    tail_re = re.compile(b"".join(tail)).fullmatch
    middle_re = [(re.compile(b"".join(r)).search) for r in middle]
    least = len(head) + len(tail) + sum(map(len, middle))
    head_len, tail_len = len(head), len(tail)

    def matches(key: bytes) -> bool:
        n = len(key)
        if n < least or not n:
            return False
        end = n - tail_len
        if head_re(key) is None or tail_re(key, end) is None:
            return False
        pos = head_len
        for search in middle_re:
            found = search(key, pos, end)
            if found is None:
                return False
            pos = found.end()
        return True

    return matches


def glob_match(pattern: bytes, key: bytes) -> bool:
    return compile_glob(pattern)(key)
