"""The in-memory index: every live key mapped to where its newest record lives.

An entry is one Python int packing three fields, because an int below 2**60 costs 32 bytes
where a tuple of three ints costs over 150::

    slot (16 bits) | offset (32 bits) | size hint (12 bits)

``slot`` indexes the store's table of open segments (slots are reused, segment ids are not);
``offset`` is the record's position in its segment; the size hint is the record's total size
when it is below 4096 bytes, else 0 and the reader takes the size from the record header.
Expiry times live in a second dict holding only keys that have one, so keys without a TTL pay
nothing for the feature.

The map of entries is the compiled ``IndexMap`` (bitkv/native/indexmap.c: about 36 bytes a key
beyond the key's bytes, where a dict costs about 120) when the extension is built, else a dict,
the reference implementation; ``BITKV_PURE_PYTHON=1`` forces the dict. This module is the one
place that uses it (kernels.py chooses the implementation); the engine uses only the operations both
have: ``get``, ``[]``, ``[] =``, ``del``, ``pop``, ``in``, ``len``, iteration, ``items()``
(iterated, not kept as a view), ``clear()``; and those the IndexMap alone has: ``items_in``,
for :meth:`KeyDir.entries_in`, and the prefix listing and count, for
:meth:`KeyDir.keys_with_prefix` and :meth:`KeyDir.count_with_prefix` (the dict's equivalents
are written there). See docs/architecture.md.
"""

from __future__ import annotations

import itertools
import math
import operator
import struct
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from .kernels import IMPLEMENTATION as IMPLEMENTATION
from .kernels import NATIVE
from .record import HEADER, HEADER_SIZE, TOMBSTONE, ScanBuffer

if TYPE_CHECKING:
    from ._native import IndexMap

# key -> packed entry: a dict (the reference) or its compiled equivalent.
Index: TypeAlias = "dict[bytes, int] | IndexMap"

_new_index: Any = dict
_apply_batch: Any = None
_switch_copies: Any = None
if NATIVE:
    from ._native import IndexMap as _IndexMap
    from ._native import apply_batch as _native_apply_batch
    from ._native import switch_copies as _native_switch_copies

    _new_index = _IndexMap
    _apply_batch = _native_apply_batch
    _switch_copies = _native_switch_copies


def new_index() -> Index:
    """An empty index map of the implementation in use."""
    index: Index = _new_index()
    return index

SLOT_BITS = 16
OFFSET_BITS = 32
SIZE_BITS = 12
MAX_SLOTS = 1 << SLOT_BITS
MAX_OFFSET = (1 << OFFSET_BITS) - 1
SIZE_MASK = (1 << SIZE_BITS) - 1
OFFSET_MASK = MAX_OFFSET
SLOT_SHIFT = OFFSET_BITS + SIZE_BITS


def pack(slot: int, offset: int, size: int) -> int:
    return (slot << SLOT_SHIFT) | (offset << SIZE_BITS) | (size if size <= SIZE_MASK else 0)


def unpack(entry: int) -> tuple[int, int, int]:
    """Return (slot, offset, size_hint); a size hint of 0 means "read it from the header"."""
    return entry >> SLOT_SHIFT, (entry >> SIZE_BITS) & OFFSET_MASK, entry & SIZE_MASK


class _Owner(Protocol):
    """What the keydir needs of a segment: its live-byte count and a record's size."""

    live_bytes: int

    def record_size_at(self, offset: int) -> int: ...


# A record hidden from the index but kept in the active segment's checkpoint hint: a key whose
# newest record there is a tombstone or expired, as (offset, size, tombstone flag, expiry_ms).
Hidden = tuple[int, int, int, int]


class KeyDir:
    """The index, and the one owner of the rules that change it.

    ``entries`` (key -> packed entry) and ``expiries`` (key -> expiry_ms, only keys that have
    one) are read directly by the lock-free read path. Every change goes through a method
    here: the live-byte accounting of the segment each entry points into (``slots``, the
    store's table of open segments, shared), the earliest expiry (``next_expiry``), and the
    records hidden from the index that the active segment's checkpoint hint must still list
    (``hidden``; None while loading a segment that will not become active).

    Replay of a segment and the single-put fast path inline :meth:`apply` for speed
    (recovery.py, store.py say where); those copies follow exactly these rules.
    """

    __slots__ = ("_slot_bitmap", "entries", "expired_count", "expiries", "hidden",
                 "next_expiry", "slots")

    def __init__(self, slots: list[Any] | None = None) -> None:
        self.entries: Index = new_index()
        self.expiries: dict[bytes, int] = {}
        self.slots: list[Any] = slots if slots is not None else []
        self.hidden: dict[bytes, Hidden] | None = None
        self.next_expiry: float = math.inf
        # Keys removed from the index because they expired (Redis's expired_keys): counted
        # by unindex_expired; a refreshed reader's new KeyDir carries the count over.
        self.expired_count = 0
        self._slot_bitmap: tuple[AbstractSet[int], bytes] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def reserve(self, keys: int) -> None:
        """Make room for ``keys`` keys at once: opening a store that knows how many keys are
        coming (its hints' entry counts) then builds the compiled index in its final size,
        instead of rehashing it at every doubling (at 48M keys the table is ~1 GiB, and each
        rehash moves every slot at random). The dict of the pure-Python mode has no such
        operation, and needs none for correctness: there this does nothing."""
        if not isinstance(self.entries, dict):
            self.entries.reserve(keys)

    # -- listing ---------------------------------------------------------------------------

    def keys_with_prefix(self, prefix: bytes) -> list[bytes]:
        """The indexed keys that start with ``prefix`` (b"": every key), in insertion order.

        The compiled map compares the prefix in C over its key arena and makes bytes objects
        only for the keys that match (``IndexMap.keys_with_prefix``): listing a rare prefix
        of a large index costs no list of every key. The dict is the reference. The caller
        holds the store's lock (no writer may change the index meanwhile)."""
        entries = self.entries
        if not isinstance(entries, dict):
            return entries.keys_with_prefix(prefix)
        if not prefix:
            return list(entries)
        return [k for k in entries if k.startswith(prefix)]

    def count_with_prefix(self, prefix: bytes) -> int:
        """How many indexed keys start with ``prefix`` (b"": all of them), without listing
        them (``IndexMap.count_with_prefix`` in native mode)."""
        entries = self.entries
        if not prefix:
            return len(entries)
        if not isinstance(entries, dict):
            return entries.count_with_prefix(prefix)
        return sum(1 for k in entries if k.startswith(prefix))

    # -- accounting ------------------------------------------------------------------------

    def record_size(self, entry: int) -> int:
        """The size of the record ``entry`` points at (from its hint, else its header)."""
        size = entry & SIZE_MASK
        if size:
            return size
        owner: _Owner = self.slots[entry >> SLOT_SHIFT]
        return owner.record_size_at((entry >> SIZE_BITS) & OFFSET_MASK)

    def forget(self, entry: int) -> None:
        """Account the record ``entry`` points at as dead bytes of its segment."""
        owner: _Owner = self.slots[entry >> SLOT_SHIFT]
        owner.live_bytes -= self.record_size(entry)

    # -- the rules -------------------------------------------------------------------------

    def apply(self, seg: _Owner, slot: int, key: bytes, offset: int, size: int, flags: int,
              expiry_ms: int, now_ms: int = 0) -> bool:
        """Index the record of ``key`` at ``offset`` in ``seg`` (at ``slot``) as its newest:
        the record applied last wins. A tombstone (``flags`` has TOMBSTONE) or an expired
        record (``expiry_ms <= now_ms``) removes the key and, for the active segment, is
        remembered in ``hidden``. Return True if the key is now indexed."""
        entries = self.entries
        old = entries.get(key)
        if old is not None:
            self.forget(old)
        if flags & TOMBSTONE or (expiry_ms and expiry_ms <= now_ms):
            if old is not None:
                del entries[key]
                if self.expiries:
                    self.expiries.pop(key, None)
            if self.hidden is not None:
                self.hidden[key] = (offset, size, flags & TOMBSTONE, expiry_ms)
            return False
        if self.hidden:
            self.hidden.pop(key, None)
        entries[key] = (slot << SLOT_SHIFT) | (offset << SIZE_BITS) | (
            size if size <= SIZE_MASK else 0)
        seg.live_bytes += size
        if expiry_ms:
            self.expiries[key] = expiry_ms
            if expiry_ms < self.next_expiry:
                self.next_expiry = expiry_ms
        elif old is not None and self.expiries:
            self.expiries.pop(key, None)
        return True

    def apply_run(self, seg: _Owner, slot: int, start: int,
                  records: Iterable[tuple[bytes, int, int, int]], now_ms: int = 0) -> int:
        """:meth:`apply` for records written back to back from ``start`` (a batch): each is
        (key, size, flags, expiry_ms). Return the offset after the last."""
        pos = start
        for key, size, flags, expiry_ms in records:
            self.apply(seg, slot, key, pos, size, flags, expiry_ms, now_ms)
            pos += size
        return pos

    def apply_batch(self, seg: _Owner, slot: int, start: int, ops: list[Any], data: bytes,
                    now_ms: int = 0) -> int:
        """:meth:`apply` for the records of ``data``, written back to back from ``start``
        (a batch's encoded records): the i-th record's key is ``ops[i][0]`` (the batch's
        operations), its size, flags and expiry are read from its header. Return the offset
        after the last.

        In native mode the loop is ``bitkv._native.apply_batch`` (bitkv/native/batch.c), with
        the same rule in C; the loop below is the reference. The C loop sums the live bytes
        ``seg`` gains and the earliest new expiry and applies both here once at the end, which
        leaves the same values as applying them record by record."""
        if _apply_batch is not None and type(self.entries) is _IndexMap:
            end: int
            delta: int
            min_expiry: int
            end, delta, min_expiry = _apply_batch(self.entries, self.expiries, self.hidden,
                                                  self.slots, seg, slot, start, ops, data,
                                                  now_ms)
            seg.live_bytes += delta
            if min_expiry and min_expiry < self.next_expiry:
                self.next_expiry = min_expiry
            return end
        pos = start
        for op in ops:
            flags: int
            key_len: int
            value_len: int
            expiry_ms: int
            _crc, flags, _r, key_len, value_len, _seq, expiry_ms = HEADER.unpack_from(
                data, pos - start)
            size = HEADER_SIZE + key_len + value_len
            self.apply(seg, slot, op[0], pos, size, flags, expiry_ms, now_ms)
            pos += size
        return pos

    def unindex(self, key: bytes, entry: int, hide: Hidden | None = None) -> None:
        """Remove ``key`` (indexed at ``entry``), its bytes now dead; ``hide`` records why in
        the active segment's checkpoint (its tombstone, or its expired record there)."""
        self.forget(entry)
        del self.entries[key]
        if self.expiries:
            self.expiries.pop(key, None)
        if hide is not None and self.hidden is not None:
            self.hidden[key] = hide

    def point_at_damage(self, key: bytes, slot: int, offset: int, length: int) -> bool:
        """Make ``key`` (if indexed) point at damaged bytes, so reading it raises instead of
        returning an older version: recovery's answer to a damaged newest record."""
        old = self.entries.get(key)
        if old is None:
            return False
        self.forget(old)
        self.entries[key] = pack(slot, offset, length)
        self.expiries.pop(key, None)
        if self.hidden:
            self.hidden.pop(key, None)
        self.slots[slot].live_bytes += length
        return True

    def switch(self, key: bytes, expected: int, seg: _Owner, slot: int, offset: int,
               size: int) -> bool:
        """Bitcask's conditional put, for compaction: point ``key`` at its copy only if it
        still points at exactly the record copied (``expected``); a write made meanwhile
        wins. The copy's bytes become live; the original's are forgotten with its segment."""
        if self.entries.get(key) != expected:
            return False
        self.entries[key] = pack(slot, offset, size)
        seg.live_bytes += size
        return True

    def switch_inputs(self, moves: Iterable[tuple[bytes, int, int]], seg: _Owner, slot: int,
                      inputs: AbstractSet[int]) -> int:
        """:meth:`switch` for many keys copied by one compaction into ``seg`` (at ``slot``),
        each move (key, offset, size): a key is pointed at its copy only if it still points
        into one of the ``inputs`` (slots) at a record of that size. Compaction copies only
        records the index points at, and nothing but compaction ever points a key into a
        sealed segment, so a key still pointing into an input points at the very record
        copied; a write made meanwhile moved it to the active segment, and wins. Return how
        many keys were switched."""
        entries = self.entries
        get = entries.get
        base = slot << SLOT_SHIFT
        switched = live = 0
        for key, offset, size in moves:
            old = get(key)
            if (old is not None and old >> SLOT_SHIFT in inputs
                    and old & SIZE_MASK == (size if size <= SIZE_MASK else 0)):
                entries[key] = base | (offset << SIZE_BITS) | (size if size <= SIZE_MASK
                                                               else 0)
                live += size
                switched += 1
        seg.live_bytes += live
        return switched

    def switch_copies(self, buf: ScanBuffer, pos: int, end: int, seg: _Owner, slot: int,
                      inputs: AbstractSet[int], max_keys: int) -> tuple[int, int]:
        """:meth:`switch_inputs` for the records of a compacted output ``seg`` (at ``slot``),
        read back from ``buf`` (its map): at most ``max_keys`` records from ``pos``, which
        must be whole records before ``end`` (else ValueError). Return (the position after
        them, how many keys were switched). Compiled (bitkv/native/compact.c) when the map
        is the IndexMap; the loop below is the reference."""
        if _switch_copies is not None and not isinstance(self.entries, dict):
            pos, switched, live = _switch_copies(buf, pos, end, self.entries, slot,
                                                 self._bitmap(inputs), max_keys)
            seg.live_bytes += live
            return pos, switched
        runs = switched = 0
        entries = self.entries
        if isinstance(entries, dict) and slot not in inputs:
            while runs < max_keys:
                run = _switch_run(buf, pos, end, entries, slot, inputs, max_keys - runs)
                if run is None:
                    break
                pos, records, moved, live = run
                runs += records
                switched += moved
                seg.live_bytes += live
        unpack = HEADER.unpack_from
        moves: list[tuple[bytes, int, int]] = []
        append = moves.append
        damaged = False  # the records before damage are switched, then ValueError
        for _ in range(max_keys - runs):
            if pos >= end:
                break
            if end - pos < HEADER_SIZE:
                damaged = True
                break
            key_len, value_len = unpack(buf, pos)[3:5]
            size = HEADER_SIZE + key_len + value_len
            if size > end - pos:
                damaged = True
                break
            append((bytes(buf[pos + HEADER_SIZE : pos + HEADER_SIZE + key_len]),
                    pos, size))
            pos += size
        switched += self.switch_inputs(moves, seg, slot, inputs)
        if damaged:
            raise ValueError(f"switch_copies: no whole record at offset {pos}")
        return pos, switched

    def entries_in(self, slots: AbstractSet[int]) -> list[tuple[bytes, int]]:
        """The (key, entry) pairs of the keys indexed into one of ``slots``, in the index's
        order (insertion order, as iterating it gives). The checkpoint of the active segment
        and compaction's lost keys want a few segments' keys of a store of any size: the
        IndexMap's ``items_in`` reads its table without hashing or making objects for the
        other keys (bitkv/native/indexmap.c); the comprehension is the reference."""
        entries = self.entries
        if isinstance(entries, dict):
            return [(k, e) for k, e in entries.items() if e >> SLOT_SHIFT in slots]
        return entries.items_in(SLOT_SHIFT, self._bitmap(slots))

    def _bitmap(self, slots: AbstractSet[int]) -> bytes:
        """``slots`` as a bitmap of MAX_SLOTS bits, for the compiled switch (kept for the
        set last asked about: one compaction asks about one set many times)."""
        cached = self._slot_bitmap
        if cached is not None and cached[0] is slots:
            return cached[1]
        bits = bytearray(MAX_SLOTS // 8)
        for s in slots:
            bits[s >> 3] |= 1 << (s & 7)
        bitmap = bytes(bits)
        # returned from the local: the checkpoint (under the store's lock) and a compaction
        # may each be asking about their own set
        self._slot_bitmap = (slots, bitmap)
        return bitmap

    def unindex_if(self, key: bytes, expected: int) -> bool:
        """:meth:`unindex` ``key`` only if it still points at ``expected`` (compaction
        dropping an expired record it met: a write made meanwhile wins)."""
        if self.entries.get(key) != expected:
            return False
        self.unindex(key, expected)
        return True

    def unindex_expired(self, key: bytes, entry: int, hide: Hidden | None = None) -> None:
        """:meth:`unindex` ``key`` because its value expired (counted in expired_count)."""
        self.unindex(key, entry, hide)
        self.expired_count += 1

    def unindex_expired_if(self, key: bytes, expected: int) -> bool:
        """:meth:`unindex_expired` ``key`` only if it still points at ``expected``."""
        if self.entries.get(key) != expected:
            return False
        self.unindex_expired(key, expected)
        return True

    def remove(self, key: bytes) -> int | None:
        """Drop ``key`` from the index without accounting (its segment is going away)."""
        entry = self.entries.pop(key, None)
        if self.expiries:
            self.expiries.pop(key, None)
        return entry

    def expired_keys(self, now_ms: int) -> list[bytes]:
        return [k for k, exp in self.expiries.items() if exp <= now_ms]

    def recompute_next_expiry(self) -> None:
        self.next_expiry = min(self.expiries.values(), default=math.inf)


# The fewest records of one size in a row that switch_copies switches as one run.
SWITCH_RUN_MIN_RECORDS = 16
SWITCH_RUN_MAX_BYTES = 1 << 18  # a run's bytes are copied once: bounded whatever the size
_KEY_VALUE_LEN = struct.Struct("<HI")  # a record header's key_len and value_len, at 6
_FIRST = operator.itemgetter(0)


def _switch_run(buf: ScanBuffer, pos: int, end: int, entries: dict[bytes, int], slot: int,
                inputs: AbstractSet[int], max_keys: int) -> tuple[int, int, int, int] | None:
    """:meth:`KeyDir.switch_copies` (the Python loop) for the run of whole records from
    ``pos`` that have the size of the one there, at most ``max_keys``: return (the position
    after them, records, keys switched, their bytes), or None if fewer than
    SWITCH_RUN_MIN_RECORDS are in a row (or two records of the run switch one key: then
    the record-by-record loop decides, in order). Each key's test is switch_inputs', made
    over the whole run: one ``map`` of lookups, one of slot tests, one of size tests, then
    one ``dict.update`` with the entries of the copies, a ``range`` (the records sit at a
    fixed stride). The caller makes sure the output's own slot is not an input, so a key
    switched here cannot pass the test again (which is what makes one pass equal to the
    loop when keys are distinct)."""
    if end - pos < HEADER_SIZE:
        return None
    key_len, value_len = _KEY_VALUE_LEN.unpack_from(buf, pos + 6)
    size = HEADER_SIZE + key_len + value_len
    count = min(max_keys, (end - pos) // size, SWITCH_RUN_MAX_BYTES // size)
    if count < SWITCH_RUN_MIN_RECORDS:
        return None
    run = bytes(buf[pos : pos + count * size])
    n = count
    for i in range(6):  # header bytes 6-12: key_len and value_len, the run's shape
        column = run[6 + i :: size]
        if column.count(run[6 + i]) != n:
            count = min(count, n - len(column.lstrip(run[6 + i : 7 + i])))
    if count < SWITCH_RUN_MIN_RECORDS:
        return None
    keys = list(map(_FIRST, struct.iter_unpack(f"{HEADER_SIZE}x{key_len}s{value_len}x",
                                               memoryview(run)[: count * size])))
    olds = list(map(entries.get, keys, repeat(-1)))  # -1: in no slot
    size_hint = size if size <= SIZE_MASK else 0
    still = list(map(operator.and_,
                     map(inputs.__contains__, map(operator.rshift, olds, repeat(SLOT_SHIFT))),
                     map(size_hint.__eq__, map(operator.and_, olds, repeat(SIZE_MASK)))))
    first = (slot << SLOT_SHIFT) | (pos << SIZE_BITS) | size_hint
    step = size << SIZE_BITS
    moved = list(itertools.compress(zip(keys, range(first, first + count * step, step),
                                        strict=True), still))
    if len(set(map(_FIRST, moved))) != len(moved):
        return None
    entries.update(moved)
    return pos + count * size, count, len(moved), len(moved) * size
