"""The two loops that build the index at open: hint entries, and plain runs of records.

Opening a store spends nearly all its time in them, so each is :meth:`KeyDir.apply` inlined
over a whole hint or a whole run of intact records. Each has a pure-Python reference here and
a compiled twin in ``bitkv._native`` (bitkv/native/replay.c) that applies entries straight
into the compiled ``IndexMap`` without a Python object per key; this module is the one place
that uses them: the compiled loops in native mode (``kernels.NATIVE``, with the compiled
``IndexMap``), else these. Both give the same index, ``expiries``,
``hidden``, live bytes per segment and results (tests/test_native_replay.py).

The rules are KeyDir.apply's: the record applied last wins; a tombstone or an expired record
(``0 < expiry_ms <= now_ms``) removes the key and, while ``keydir.hidden`` is a dict (the
segment that will become the active one), is remembered there for its checkpoint; the bytes
of the record a key leaves come off the live bytes of the segment it was in. ``next_expiry``
is not kept: the store recomputes it once the load is done.
"""

from __future__ import annotations

import mmap
import os
from types import SimpleNamespace
from typing import Any, TypeAlias

from . import kernels, keydir, record
from .crc import crc32c
from .hint import ENTRY as _HINT_ENTRY
from .keydir import KeyDir

# The compiled loops in native mode (kernels.py chooses; None: the Python loops here).
_native: Any = None
if kernels.NATIVE:
    try:
        from ._native import hint_apply as _hint_apply
        from ._native import hint_check as _hint_check
        from ._native import plain_run as _plain_run
    except ImportError:  # pragma: no cover - an extension older than this module
        pass
    else:
        _native = SimpleNamespace(hint_apply=_hint_apply, hint_check=_hint_check,
                                  plain_run=_plain_run)

# What a plain run reads: a segment's map (or a snapshot of it), or its bytes.
RunBuffer: TypeAlias = bytes | mmap.mmap
_UNKNOWN_FLAGS = ~record.KNOWN_FLAGS & 0xFF
_BATCH_ENDS = record.BATCH_FIRST | record.BATCH_LAST


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity call on this platform
        return os.cpu_count() or 1


# Whether the compiled hint loop hashes big hints' keys in a helper thread ahead of applying
# them (bitkv/native/replay.c, "A helper thread"): only where there is a second core to run
# it on. The result is the same either way.
HASH_HELPER = _cores() > 1


def compiled() -> bool:
    """True when the compiled loops are in use."""
    return _native is not None


# -- hints -------------------------------------------------------------------------------------


# A hint's entry table or key area: bytes, or a view of the hint file's bytes.
HintBuffer: TypeAlias = bytes | memoryview


def hint_in_bounds(fixed: HintBuffer, keys: HintBuffer, covered: int) -> bool:
    """True if every entry of a hint's entry table ``fixed`` lies inside its key area ``keys``
    and the ``covered`` bytes of its segment, and the entries use the key area exactly."""
    if _native is not None:
        result: bool = _native.hint_check(fixed, keys, covered)
        return result
    keys_len = len(keys)
    pos = 0
    for _flags, _r, key_len, value_len, offset, _seq, _exp in _HINT_ENTRY.iter_unpack(fixed):
        pos += key_len
        if not key_len or pos > keys_len or offset + record.HEADER_SIZE + key_len + value_len \
                > covered:
            return False
    return pos == keys_len


def apply_hint(kd: KeyDir, slot: int, fixed: HintBuffer, keys: HintBuffer, covered: int,
               now_ms: int, *, helper: bool | None = None) -> tuple[bool, int]:
    """Apply a hint's entries to ``kd`` as records of the segment at ``slot``.

    Stops at the first entry outside the key area or the ``covered`` bytes, with the entries
    before it applied. Return (ok, loaded): ``ok`` is False if it stopped so, or if the key
    area is longer than the entries use; ``loaded`` is how many entries were indexed.
    ``helper``: whether the compiled loop may hash ahead in a second thread (default
    :data:`HASH_HELPER`); the Python loop has none.
    """
    if _native is not None:
        ok: bool
        loaded: int
        ok, loaded = _native.hint_apply(kd, slot, fixed, keys, covered, now_ms,
                                        HASH_HELPER if helper is None else helper)
        return ok, loaded
    return _apply_hint_py(kd, slot, fixed, keys, covered, now_ms)


def _apply_hint_py(kd: KeyDir, slot: int, fixed: HintBuffer, key_area: HintBuffer,
                   covered: int, now_ms: int) -> tuple[bool, int]:
    keys = bytes(key_area)  # slices of it become the index's keys
    entries = kd.entries
    expiries = kd.expiries
    hidden = kd.hidden
    slots = kd.slots
    seg = slots[slot]
    header_size = record.HEADER_SIZE
    base = slot << keydir.SLOT_SHIFT
    size_bits, size_mask = keydir.SIZE_BITS, keydir.SIZE_MASK
    slot_shift, offset_mask = keydir.SLOT_SHIFT, keydir.OFFSET_MASK
    tombstone = record.TOMBSTONE
    live = loaded = pos = 0
    ok = True
    for flags, _r, key_len, value_len, offset, _seq, expiry_ms in _HINT_ENTRY.iter_unpack(fixed):
        end = pos + key_len
        size = header_size + key_len + value_len
        if not key_len or end > len(keys) or offset + size > covered:
            ok = False
            break
        key = keys[pos:end]
        pos = end
        old = entries.get(key)
        if old is not None:
            owner = slots[old >> slot_shift]
            if owner is seg:
                live -= old & size_mask or seg.record_size_at((old >> size_bits) & offset_mask)
            else:
                owner.live_bytes -= old & size_mask or owner.record_size_at(
                    (old >> size_bits) & offset_mask)
        if flags & tombstone or (expiry_ms and expiry_ms <= now_ms):
            if old is not None:
                del entries[key]
                expiries.pop(key, None)
            if hidden is not None:
                hidden[key] = (offset, size, flags & tombstone, expiry_ms)
            continue
        if hidden:
            hidden.pop(key, None)
        entries[key] = base | (offset << size_bits) | (size if size <= size_mask else 0)
        if expiry_ms:
            expiries[key] = expiry_ms
        elif old is not None:
            expiries.pop(key, None)
        live += size
        loaded += 1
    seg.live_bytes += live
    return ok and pos == len(keys), loaded


# -- plain runs of records ---------------------------------------------------------------------


def plain_run(kd: KeyDir, slot: int, buf: RunBuffer, pos: int, end: int, max_seq: int,
              now_ms: int) -> tuple[int, int, int]:
    """Index the intact records of ``buf[pos:end]`` (the segment at ``slot``, at their file
    offsets), whole batches included, until the first record that is damaged, breaks the
    batch rule or carries an unknown flag. Return (stop, max_seq, loaded): where the run
    stopped (the start of the batch holding that record, if inside one), the largest seq of
    the records up to there, and how many records were indexed.

    This is :func:`replay.replay`'s general path (:func:`record.scan` and the batch commit
    rule) with :meth:`KeyDir.apply`, inlined, for the plain runs that are nearly all of a
    segment (:data:`replay.PlainRun`); the general path takes over where it stops.
    """
    if _native is not None:
        result: tuple[int, int, int] = _native.plain_run(kd, slot, buf, pos, end, max_seq,
                                                         now_ms)
        return result
    return _plain_run_py(kd, slot, buf, pos, end, max_seq, now_ms)


def _plain_run_py(kd: KeyDir, slot: int, buf: RunBuffer, pos: int, end: int,
                  max_seq: int, now_ms: int) -> tuple[int, int, int]:
    entries = kd.entries
    expiries = kd.expiries
    slots = kd.slots
    seg = slots[slot]
    unpack = record.HEADER.unpack_from
    base = slot << keydir.SLOT_SHIFT
    hidden = kd.hidden
    loaded = 0
    header_size = record.HEADER_SIZE
    max_value = record.MAX_STORED_VALUE_SIZE
    tombstone = record.TOMBSTONE
    batch_flag, batch_first, batch_last = record.BATCH, record.BATCH_FIRST, record.BATCH_LAST
    pending: list[tuple[bytes, int, int, int, int]] = []
    pending_seq = 0
    batch_start = -1
    max_before_batch = max_seq
    with memoryview(buf) as view:
        while pos + header_size <= end:
            crc, flags, reserved, key_len, value_len, seq, expiry_ms = unpack(buf, pos)
            size = header_size + key_len + value_len
            if (reserved or not key_len or flags & _UNKNOWN_FLAGS or pos + size > end
                    or value_len > max_value or (flags & tombstone and value_len)
                    or (flags & _BATCH_ENDS and not flags & batch_flag)
                    or crc32c(view[pos + 4 : pos + size]) != crc):
                break
            key = buf[pos + header_size : pos + header_size + key_len]
            if flags & batch_flag:
                if flags & batch_first:
                    if pending:
                        break  # an unfinished batch: the general path drops it
                    batch_start = pos
                    max_before_batch = max_seq
                elif not pending or seq != pending_seq + 1:
                    break
                if seq > max_seq:
                    max_seq = seq
                pending.append((key, pos, size, flags, expiry_ms))
                pending_seq = seq
                pos += size
                if not flags & batch_last:
                    continue
                ready = pending
                pending = []
            else:
                if pending:
                    break
                if seq > max_seq:
                    max_seq = seq
                ready = [(key, pos, size, flags, expiry_ms)]
                pos += size
            for key, at, size, flags, expiry_ms in ready:
                old = entries.get(key)
                if old is not None:
                    owner = slots[old >> keydir.SLOT_SHIFT]
                    old_size = old & keydir.SIZE_MASK
                    owner.live_bytes -= old_size or owner.record_size_at(
                        (old >> keydir.SIZE_BITS) & keydir.OFFSET_MASK)
                if flags & tombstone or (expiry_ms and expiry_ms <= now_ms):
                    if old is not None:
                        del entries[key]
                        if expiries:
                            expiries.pop(key, None)
                    if hidden is not None:
                        hidden[key] = (at, size, flags & tombstone, expiry_ms)
                    continue
                if hidden:
                    hidden.pop(key, None)
                entries[key] = base | (at << keydir.SIZE_BITS) | (
                    size if size <= keydir.SIZE_MASK else 0)
                seg.live_bytes += size
                if expiry_ms:
                    expiries[key] = expiry_ms
                elif old is not None and expiries:
                    expiries.pop(key, None)
                loaded += 1
    if pending:  # not ours to count: the general path decides what the batch was
        return batch_start, max_before_batch, loaded
    return pos, max_seq, loaded
