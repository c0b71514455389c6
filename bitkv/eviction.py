"""Cache mode: a bound on a store's live bytes, kept by evicting keys (docs/cache.md).

The policies are Redis's, approximated as Redis approximates them: no exact LRU list or LFU
heap (their upkeep would cost every read), but a small *access stamp* per key, updated on
each read and write, and, when a write needs room, a random *sample* of the index whose
worst entries feed a small pool of eviction candidates.

* ``allkeys-lru`` / ``volatile-lru``: the stamp is a store-wide access counter; the sampled
  key touched longest ago goes first.
* ``allkeys-lfu`` / ``volatile-lfu``: the stamp is Redis's 8-bit logarithmic access counter
  (incremented with probability ``1 / ((counter - 5) * 10 + 1)``) and the minute of the
  last access; the counter loses one per idle minute; the least frequently used goes first.
* ``volatile-ttl``: among keys with an expiry, the sampled one that expires first goes.
* ``allkeys-random`` / ``volatile-random``: a random key (with an expiry).
* ``noeviction``: a write that would pass the bound fails with :class:`StoreFullError`.

``volatile-*`` consider only keys with a TTL; without any, a write that needs room fails as
with ``noeviction``, as in Redis. An expired key met while sampling is dropped first (it
frees room without evicting anything live).

*Live bytes* are the bytes of the records the index points at, header included (what
``stats()["live_bytes"]`` reports): ``21 + len(key) + len(stored value)`` for each live key.
The bound is checked before each write, under the writer lock, with the size of the record
about to be written, so live bytes never exceed it.

The sampling needs random access to the keys, which the index (a hash map) does not give:
:class:`KeyPool` keeps the keys in a list too. It is a superset of the live keys: a key
deleted elsewhere stays until a sample meets it, and the pool is rebuilt from the index when
stale keys outnumber live ones. Access stamps live only in memory: a reopened store starts
every key with the same stamp (the bound, the policy and the data persist).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import random
from collections.abc import Callable, Collection, Mapping
from typing import Any, Protocol

from .errors import StoreFullError
from .validate import to_key

POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru",
            "volatile-lfu", "volatile-random", "volatile-ttl")
SAMPLES = 5  # keys sampled per round (Redis's maxmemory-samples default)
CANDIDATES = 16  # the best candidates kept across rounds (Redis's EVPOOL_SIZE)
MAX_ROUNDS = 64  # sampling rounds that find nothing evictable before the write is refused
LFU_INIT = 5  # a new key's LFU counter, so it is not evicted before it had a chance
LFU_LOG_FACTOR = 10
LFU_DECAY_MINUTES = 1
# Cache mode sizes the log by the bound (docs/cache.md, "The disk bound"): segments of at
# most max_bytes / SEGMENT_SHARE, and compaction due from max_bytes / DEAD_SHARE dead bytes.
# Segments never shrink below SEGMENT_FLOOR: a rotation costs fsyncs of the segment, the
# MANIFEST and the directory, too many for a small cache's every few dozen writes.
SEGMENT_SHARE = 8
SEGMENT_FLOOR = 1 << 20
DEAD_SHARE = 4
_EXPIRED = float("inf")  # the score of an expired key: the best victim of all


class EvictionHost(Protocol):
    """What eviction may touch of a store (the store's own adapter; called locked)."""

    @property
    def entries(self) -> Mapping[bytes, int]: ...

    @property
    def expiries(self) -> Mapping[bytes, int]: ...

    def live_bytes(self) -> int: ...

    def record_size(self, key: bytes) -> int:
        """The live record's size of ``key`` (0: none)."""

    def evict(self, key: bytes) -> int:
        """Remove ``key`` durably (a tombstone); return the live bytes freed."""

    def now_ms(self) -> int: ...

    def drop_expired(self) -> None:
        """Unindex every expired key (if any is due: the usual case costs a clock read)."""

    def follows_master(self) -> bool:
        """The store is a replica's: its master decides what goes, the bound is not kept
        here (Redis's ``replica-ignore-maxmemory yes``)."""


class KeyPool:
    """Keys with random access (a list and each key's position) and a stamp each."""

    def __init__(self, keys: list[bytes], stamp: int) -> None:
        self.keys = keys
        self.pos = {k: i for i, k in enumerate(keys)}
        self.stamps = [stamp] * len(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def note(self, key: bytes, stamp: int) -> None:
        i = self.pos.get(key)
        if i is None:
            self.pos[key] = len(self.keys)
            self.keys.append(key)
            self.stamps.append(stamp)
        else:
            self.stamps[i] = stamp

    def retain(self, live: Collection[bytes], stamp: int) -> None:
        """Keep exactly the ``live`` keys (adding the missing ones with ``stamp``), in place:
        a get wrapper holds these very containers."""
        kept = [(k, s) for k, s in zip(self.keys, self.stamps, strict=True) if k in live]
        self.keys[:] = [k for k, _s in kept]
        self.stamps[:] = [s for _k, s in kept]
        self.pos.clear()
        self.pos.update((k, i) for i, k in enumerate(self.keys))
        for k in live:
            if k not in self.pos:
                self.note(k, stamp)

    def discard(self, key: bytes) -> None:
        i = self.pos.pop(key, None)
        if i is None:
            return
        last, last_stamp = self.keys.pop(), self.stamps.pop()
        if i < len(self.keys):  # move the last key into the hole
            self.keys[i], self.stamps[i] = last, last_stamp
            self.pos[last] = i

    def sample(self, n: int, rng: random.Random) -> list[bytes]:
        keys = self.keys
        if not keys:
            return []
        return [keys[int(rng.random() * len(keys))] for _ in range(n)]


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3,
          "gb": 1024**3}


def parse_bytes(text: str) -> int:
    """A size as Redis writes it in its configuration (``maxmemory 2gb``): digits and an
    optional unit, ``k``/``m``/``g`` for powers of 1000, ``kb``/``mb``/``gb`` for powers of
    1024 (case-insensitive). Raises ValueError saying what is wrong."""
    stripped = text.strip().lower()
    digits = stripped.rstrip("kmgb")
    unit = stripped[len(digits):]
    if not digits.isdigit() or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: digits, then optionally k, kb, m, mb, g or "
                         f"gb (as in 2gb)")
    return int(digits) * _UNITS[unit]


def _as_key(key: object) -> bytes | None:
    """``key`` as the store indexes it (a str as UTF-8), None if it is no valid key."""
    try:
        return to_key(key)
    except (TypeError, ValueError):
        return None


def lfu_counter(stamp: int, now_min: int) -> int:
    """The LFU counter of ``stamp`` after its idle minutes' decay."""
    counter, last = stamp & 0xFF, stamp >> 8
    if now_min > last:
        counter = max(0, counter - (now_min - last) // LFU_DECAY_MINUTES)
    return counter


def lfu_touch(stamp: int, now_min: int, rng: random.Random) -> int:
    """``stamp`` after one more access at ``now_min`` (Redis's LFULogIncr)."""
    counter = lfu_counter(stamp, now_min)
    if counter < 255:
        base = max(0, counter - LFU_INIT)
        if rng.random() < 1.0 / (base * LFU_LOG_FACTOR + 1):
            counter += 1
    return (now_min << 8) | counter


class Evictor:
    """Keeps one store's live bytes within ``max_bytes`` by ``policy``."""

    def __init__(self, host: EvictionHost, max_bytes: int, policy: str,
                 seed: int | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"eviction must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.host = host
        self.max_bytes = max_bytes
        self.policy = policy
        self.evicted_keys = 0
        self._rng = random.Random(seed)
        self._tick = itertools.count(1)
        self._lru = policy.endswith("-lru")
        self._lfu = policy.endswith("-lfu")
        self._volatile = policy.startswith("volatile-")
        initial = (self._now_min() << 8) | LFU_INIT if self._lfu else 0
        self._initial = initial
        # Every key has a stamp; the volatile policies sample only keys with an expiry.
        self.pool = KeyPool(list(host.entries), initial)
        self.volatile = KeyPool(list(host.expiries), 0) if self._volatile else None
        self._ttl = policy.endswith("-ttl")
        self._random = policy.endswith("-random")
        # The best candidates met by sampling, (score, key) in ascending order (the best
        # victim last), and each one's score: Redis's eviction pool.
        self._candidates: list[tuple[float, bytes]] = []
        self._candidate_scores: dict[bytes, float] = {}

    def _now_min(self) -> int:
        return self.host.now_ms() // 60000

    # -- access stamps -------------------------------------------------------------------------

    def wrap_get(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        """``inner`` (a store's get) that also stamps the key it read, for the LRU and LFU
        policies; ``inner`` itself for the others (they need no read stamps)."""
        if not (self._lru or self._lfu):
            return inner
        pos, stamps = self.pool.pos, self.pool.stamps
        if self._lru:
            tick = self._tick

            def get_lru(key: Any, default: Any = None) -> Any:
                value = inner(key, default)
                i = pos.get(key)
                if i is None and type(key) is not bytes:
                    as_bytes = _as_key(key)
                    i = None if as_bytes is None else pos.get(as_bytes)
                if i is not None:
                    # Reads take no lock: an eviction may move or drop a key of the pool
                    # between the two loads. The stamp then lands on another key or nowhere,
                    # which only makes the approximation rougher.
                    with contextlib.suppress(IndexError):
                        stamps[i] = next(tick)
                return value

            return get_lru
        touch = self.touch

        def get_lfu(key: Any, default: Any = None) -> Any:
            value = inner(key, default)
            touch(key if type(key) is bytes else _as_key(key))
            return value

        return get_lfu

    def touch(self, key: bytes | None) -> None:
        """Stamp a read of ``key`` (LFU: maybe count it). Unlocked, as reads are: see
        get_lru."""
        pool = self.pool
        i = pool.pos.get(key) if key is not None else None
        if i is not None:
            with contextlib.suppress(IndexError):
                pool.stamps[i] = lfu_touch(pool.stamps[i], self._now_min(), self._rng)

    def _stamp_write(self, key: bytes, expiry_ms: int) -> None:
        pool = self.pool
        if self._lfu:
            now = self._now_min()
            i = pool.pos.get(key)
            stamp = (now << 8) | LFU_INIT if i is None else lfu_touch(pool.stamps[i], now,
                                                                      self._rng)
        else:
            stamp = next(self._tick)
        pool.note(key, stamp)
        if self.volatile is not None and expiry_ms:
            self.volatile.note(key, 0)

    # -- making room (called under the writer lock, before the write) -------------------------

    def before_write(self, key: bytes, size: int, expiry_ms: int) -> None:
        """Make room for a record of ``size`` bytes replacing ``key``'s, or raise
        :class:`StoreFullError` (nothing is changed then but what was evicted)."""
        if self.host.follows_master():
            self._stamp_write(key, expiry_ms)
            return
        self.host.drop_expired()  # expired keys make room first, before any live one
        self._make_room(size - self.host.record_size(key), size, (key,))
        self._stamp_write(key, expiry_ms)  # after: a sample must not find it unwritten

    def before_batch(self, writes: list[tuple[bytes, int, int]]) -> None:
        """:meth:`before_write` for an atomic batch of ``(key, size, expiry_ms)`` (size 0: a
        delete): room is made for all of it, or none of it is written."""
        if not self.host.follows_master():
            self._make_room_for_batch(writes)
        for key, size, expiry_ms in writes:
            if size:
                self._stamp_write(key, expiry_ms)

    def _make_room_for_batch(self, writes: list[tuple[bytes, int, int]]) -> None:
        self.host.drop_expired()
        freed = 0
        seen: set[bytes] = set()
        total = 0
        for key, size, _expiry_ms in writes:
            if key not in seen:
                seen.add(key)
                freed += self.host.record_size(key)
            total += size
        self._make_room(total - freed, total, seen)

    def _make_room(self, growth: int, size: int, protected: Collection[bytes]) -> None:
        """Evict until ``growth`` more live bytes fit; never the ``protected`` keys (those
        being written: their sizes are already counted in ``growth``)."""
        if size > self.max_bytes:
            raise StoreFullError(
                f"the store is full: a record of {size} bytes cannot fit in max_bytes="
                f"{self.max_bytes}")
        if len(self.pool) > 2 * len(self.host.entries) + 1024:
            self._rebuild()
        live = self.host.live_bytes()
        while live + growth > self.max_bytes:
            if self.policy == "noeviction":
                raise StoreFullError(
                    f"the store is full: {live} live bytes, this write needs {growth} more, "
                    f"max_bytes={self.max_bytes}, eviction=noeviction")
            freed = self._evict_one(protected)
            if freed is None:
                raise StoreFullError(
                    f"the store is full: {live} live bytes, this write needs {growth} more, "
                    f"max_bytes={self.max_bytes}, and {self.policy} finds no key to evict")
            live -= freed

    def shrink(self) -> None:
        """Evict until live bytes are within the bound (after it was lowered). Locked."""
        self._make_room(0, 0, ())

    def _rebuild(self) -> None:
        """Drop the stale keys from the pools (keeping the live keys' stamps)."""
        self.pool.retain(self.host.entries, self._initial)
        if self.volatile is not None:
            self.volatile.retain(self.host.expiries, 0)
        self._candidates = []
        self._candidate_scores = {}

    def _evict_one(self, protected: Collection[bytes]) -> int | None:
        """Evict one key (or drop an expired one); return the live bytes freed, None if
        there is nothing to evict."""
        source = self.volatile if self.volatile is not None else self.pool
        entries, expiries = self.host.entries, self.host.expiries
        now_ms = self.host.now_ms()
        random_policy = self._random
        candidates, scores = self._candidates, self._candidate_scores
        for _round in range(MAX_ROUNDS):
            if not len(source):
                return None
            for key in source.sample(SAMPLES, self._rng):
                if key not in entries or (self._volatile and key not in expiries):
                    source.discard(key)  # stale: deleted (or lost its expiry) meanwhile
                    if source is not self.pool and key not in entries:
                        self.pool.discard(key)
                    continue
                if key in protected:
                    continue
                score = self._score(key, now_ms)
                if random_policy and score != _EXPIRED:
                    return self._evict(key)
                self._offer(score, key)
            while candidates:
                score, key = candidates.pop()
                del scores[key]
                if (key not in entries or (self._volatile and key not in expiries)
                        or key in protected):
                    continue
                current = self._score(key, now_ms)
                if current < score and candidates and current < candidates[-1][0]:
                    self._offer(current, key)  # read since it was sampled: not the worst now
                    continue
                return self._evict(key)
        return None

    def _evict(self, key: bytes) -> int:
        expiry = self.host.expiries.get(key)
        expired = expiry is not None and expiry <= self.host.now_ms()
        freed = self.host.evict(key)
        if not expired:
            self.evicted_keys += 1
        self.pool.discard(key)
        if self.volatile is not None:
            self.volatile.discard(key)
        return freed

    def _offer(self, score: float, key: bytes) -> None:
        """Keep ``key`` among the best CANDIDATES (highest score evicted first)."""
        cands, scores = self._candidates, self._candidate_scores
        old = scores.pop(key, None)
        if old is not None:
            cands.remove((old, key))
        if len(cands) >= CANDIDATES and score <= cands[0][0]:
            return  # worse than every candidate kept
        bisect.insort(cands, (score, key))
        scores[key] = score
        if len(cands) > CANDIDATES:
            del scores[cands.pop(0)[1]]

    def _score(self, key: bytes, now_ms: int) -> float:
        """How good a victim ``key`` is: higher is evicted sooner."""
        expiry = self.host.expiries.get(key)
        if expiry is not None and expiry <= now_ms:
            return _EXPIRED
        if self._ttl:
            return -float(expiry or 0)
        i = self.pool.pos.get(key)
        stamp = self._initial if i is None else self.pool.stamps[i]
        if self._lfu:
            return float(255 - lfu_counter(stamp, now_ms // 60000))
        if self._lru:
            return -float(stamp)
        return 0.0
