"""The in-memory index of one collection: which elements it has (values stay on disk).

One class per type. The same two methods, :meth:`Collection.on_put` and
:meth:`Collection.on_delete`, build the index when a store is opened (:meth:`Structures.load`)
and keep it current after each committed write (:class:`bitkv.structures.Edit`): there is one
way a record changes the index.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import ClassVar

from sortedcontainers import SortedList

from .encoding import (
    HASH,
    LIST,
    SET,
    ZSET,
    element_prefix,
    pack_position,
    unpack_position,
    unpack_score,
)


class Collection:
    """Base of the four index types. ``key`` is the collection's name, ``prefix`` the start of
    its element keys, ``expire_ms`` its absolute expiry (0: none). ``converted`` is the type
    code's own sticky flag: Redis converts a small encoding to a big one and never back while
    running (``OBJECT ENCODING``); it is recomputed from the size at load."""

    TYPE: ClassVar[bytes]
    NAME: ClassVar[str]
    NEEDS_VALUE: ClassVar[bool] = False  # load reads each element's value (sorted sets)
    __slots__ = ("converted", "expire_ms", "key", "prefix")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.prefix = element_prefix(self.TYPE, key)
        self.expire_ms = 0
        self.converted = False

    def __len__(self) -> int:
        raise NotImplementedError

    def has(self, sub: bytes) -> bool:
        raise NotImplementedError

    def subs(self) -> Iterator[bytes]:
        """Every element's ``sub`` (field, member, packed position), in the type's order."""
        raise NotImplementedError

    def on_put(self, sub: bytes, value: bytes) -> None:
        raise NotImplementedError

    def on_delete(self, sub: bytes) -> None:
        raise NotImplementedError


class HashIndex(Collection):
    """A hash's fields, in insertion order (the order ``HGETALL`` answers in)."""

    TYPE, NAME = HASH, "hash"
    __slots__ = ("fields",)

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self.fields: dict[bytes, None] = {}

    def __len__(self) -> int:
        return len(self.fields)

    def has(self, sub: bytes) -> bool:
        return sub in self.fields

    def subs(self) -> Iterator[bytes]:
        return iter(list(self.fields))

    def on_put(self, sub: bytes, value: bytes) -> None:
        self.fields[sub] = None

    def on_delete(self, sub: bytes) -> None:
        self.fields.pop(sub, None)


class SetIndex(Collection):
    """A set's members. ``members`` maps each member to its slot in ``sampler``, a list of
    the members in no particular order, which gives SPOP and SRANDMEMBER a uniformly random
    member in O(1): a removed member's slot takes the last member (swap-remove), so the
    list stays dense. ``members`` itself keeps insertion order (the order SMEMBERS answers
    in and :meth:`subs` walks)."""

    TYPE, NAME = SET, "set"
    __slots__ = ("members", "sampler")

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self.members: dict[bytes, int] = {}
        self.sampler: list[bytes] = []

    def __len__(self) -> int:
        return len(self.members)

    def has(self, sub: bytes) -> bool:
        return sub in self.members

    def subs(self) -> Iterator[bytes]:
        return iter(list(self.members))

    def random_member(self, rng: Callable[[int], int]) -> bytes:
        """A uniformly random member (``rng(n)``: a random int in [0, n)); the set is not
        empty."""
        return self.sampler[rng(len(self.sampler))]

    def on_put(self, sub: bytes, value: bytes) -> None:
        if sub not in self.members:
            self.members[sub] = len(self.sampler)
            self.sampler.append(sub)

    def on_delete(self, sub: bytes) -> None:
        slot = self.members.pop(sub, None)
        if slot is None:
            return
        last = self.sampler.pop()
        if slot < len(self.sampler):  # the removed member was not the last: fill its slot
            self.sampler[slot] = last
            self.members[last] = slot


class ListIndex(Collection):
    """A list's positions, ascending (element i is at ``positions[i]``).

    Pushes take the position before the head or after the tail (a deque: O(1) at both
    ends); an insertion in the middle takes a position between its neighbours, which the
    list commands choose (and renumber the list when there is no room left).
    """

    TYPE, NAME = LIST, "list"
    __slots__ = ("positions",)

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self.positions: deque[int] = deque()

    def __len__(self) -> int:
        return len(self.positions)

    def has(self, sub: bytes) -> bool:
        pos = unpack_position(sub)
        p = self.positions
        if not p or pos < p[0] or pos > p[-1]:
            return False
        return pos == p[0] or pos == p[-1] or pos in p

    def subs(self) -> Iterator[bytes]:
        return (pack_position(p) for p in list(self.positions))

    def on_put(self, sub: bytes, value: bytes) -> None:
        pos = unpack_position(sub)
        p = self.positions
        if not p or pos > p[-1]:
            p.append(pos)
        elif pos < p[0]:
            p.appendleft(pos)
        elif pos not in (p[0], p[-1]):
            # middle (LINSERT, or a load in key order): O(n), as Redis's LINSERT
            lo, hi = 0, len(p)
            while lo < hi:
                mid = (lo + hi) // 2
                if p[mid] < pos:
                    lo = mid + 1
                else:
                    hi = mid
            if lo >= len(p) or p[lo] != pos:
                p.insert(lo, pos)

    def on_delete(self, sub: bytes) -> None:
        pos = unpack_position(sub)
        p = self.positions
        if p and p[0] == pos:
            p.popleft()
        elif p and p[-1] == pos:
            p.pop()
        else:
            try:
                p.remove(pos)
            except ValueError:
                pass


class ZSetIndex(Collection):
    """A sorted set: ``scores`` (member -> score) and ``order``, the (score, member) pairs
    sorted as Redis sorts them (by score, then member bytes)."""

    TYPE, NAME = ZSET, "zset"
    NEEDS_VALUE = True
    __slots__ = ("order", "scan_buckets", "scores")

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        self.scores: dict[bytes, float] = {}
        self.order: SortedList = SortedList()
        # ZSCAN's members grouped by hash bucket, built by the server when a scan starts and
        # kept for the scan's later steps (a stale copy is filtered against ``scores``).
        self.scan_buckets: object = None

    def __len__(self) -> int:
        return len(self.scores)

    def has(self, sub: bytes) -> bool:
        return sub in self.scores

    def subs(self) -> Iterator[bytes]:
        return iter([m for _s, m in self.order])

    def on_put(self, sub: bytes, value: bytes) -> None:
        score = unpack_score(value)
        old = self.scores.get(sub)
        if old is not None:
            if old == score:
                return
            self.order.remove((old, sub))
        self.scores[sub] = score
        self.order.add((score, sub))

    def on_delete(self, sub: bytes) -> None:
        old = self.scores.pop(sub, None)
        if old is not None:
            self.order.remove((old, sub))


KINDS: dict[bytes, type[Collection]] = {
    c.TYPE: c for c in (HashIndex, SetIndex, ListIndex, ZSetIndex)}
