"""The in-memory index: every live key mapped to where its newest record lives.

An entry is one Python int packing three fields, because an int below 2**60 costs 32 bytes
where a tuple of three ints costs over 150::

    slot (16 bits) | offset (32 bits) | size hint (12 bits)

``slot`` indexes the store's table of open segments (slots are reused, segment ids are not);
``offset`` is the record's position in its segment; the size hint is the record's total size
when it is below 4096 bytes, else 0 and the reader takes the size from the record header.
Expiry times live in a second dict holding only keys that have one, so keys without a TTL pay
nothing for the feature.
"""

from __future__ import annotations

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


class KeyDir:
    """The two dicts of the index. The store reads them directly on its hot paths."""

    __slots__ = ("entries", "expiries")

    def __init__(self) -> None:
        self.entries: dict[bytes, int] = {}
        self.expiries: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def set(self, key: bytes, entry: int, expiry_ms: int) -> None:
        self.entries[key] = entry
        if expiry_ms:
            self.expiries[key] = expiry_ms
        elif self.expiries:
            self.expiries.pop(key, None)

    def remove(self, key: bytes) -> int | None:
        entry = self.entries.pop(key, None)
        if self.expiries:
            self.expiries.pop(key, None)
        return entry

    def expired_keys(self, now_ms: int) -> list[bytes]:
        return [k for k, exp in self.expiries.items() if exp <= now_ms]
