"""The collections in a full resync's RDB: written by a master, loaded by a replica.

The master side (:func:`write_collections`) streams every live hash, set, list and sorted set
of a :class:`~bitkv.structures.Structures` into an :class:`~bitkv.rdb.RDBWriter`: the element
names come from the in-memory index, the values from the store in chunks of
:data:`READ_CHUNK` (``read_many``), so a collection of any size streams without its values
being held at once.

The replica side (:class:`CollectionLoader`) turns each collection :func:`~bitkv.rdb.read_rdb`
reports into the records :mod:`bitkv.structures.encoding` lays out (elements, then the header
carrying the TTL); the caller writes them in its batches and then rebuilds the index with
``Structures.load()``.

Lists: a bitkv list's elements sit at positions (structures/encoding.py), and the
replication stream names them (``BITKV.LPUT key pos value``). A replica that loaded the list
at other positions could not apply the stream after the snapshot, so the master writes, just
before each list, an aux field :data:`LIST_POSITIONS_AUX` holding the key and its positions;
Redis's loader ignores aux fields it does not know. A list without one (a Redis master's) is
laid out at positions :data:`LOADED_SPACING` apart.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence

from bitkv import rdb
from bitkv.record import MAX_KEY_SIZE, MAX_VALUE_SIZE
from bitkv.structures import (
    Collection,
    HashIndex,
    ListIndex,
    SetIndex,
    Structures,
    ZSetIndex,
)
from bitkv.structures import encoding as layout

LIST_POSITIONS_AUX = b"bitkv-list-positions"
READ_CHUNK = 1024  # element values read from the store per read_many call
LOADED_SPACING = 1 << 16  # between the positions of a list loaded without its master's
_POSITION_SIZE = 8
_FLIP_TOP_BIT = bytes(i ^ 0x80 for i in range(256))

Record = tuple[bytes, "bytes | None", "int | None"]  # store key, value, expiry ms


def _values(structures: Structures, c: Collection, subs: Sequence[bytes] | Sequence[int]
            ) -> Iterator[bytes]:
    """The values of ``subs`` (list positions are packed a chunk at a time), read in
    chunks. An element deleted since ``subs`` was taken gives ``b""``: the snapshot runs
    while the master keeps writing, and that delete is in the stream the replica applies
    after the snapshot, which removes the element again."""
    for i in range(0, len(subs), READ_CHUNK):
        chunk = subs[i:i + READ_CHUNK]
        packed = [layout.pack_position(p) if isinstance(p, int) else p for p in chunk]
        for v in structures.read_many(c, packed):
            yield b"" if v is None else v


def list_positions_aux(key: bytes, positions: list[int]) -> bytes:
    """The aux value naming list ``key``'s positions: varint(len key), key, then each
    position's 8 bytes (the element's ``sub``: big-endian, biased), head first. Built
    without an object per element (a list of a million is 8 MB here, not 50)."""
    packed = array("q", positions)  # the ints as they are: no new object per element
    if sys.byteorder == "little":
        packed.byteswap()
    raw = bytearray(packed.tobytes())
    raw[0::8] = raw[0::8].translate(_FLIP_TOP_BIT)  # + 2**63 (the bias) is the sign bit flipped
    return layout.element_prefix(layout.LIST, key)[len(layout.ELEMENT) + 1:] + bytes(raw)


def parse_list_positions_aux(value: bytes) -> tuple[bytes, list[bytes]] | None:
    """(key, subs) of a :func:`list_positions_aux` value; None if malformed."""
    parsed = layout.parse(layout.ELEMENT + layout.LIST + value)
    if parsed is None:
        return None
    _type, key, rest = parsed
    if rest is None or len(rest) % _POSITION_SIZE:
        return None
    return key, [rest[i:i + _POSITION_SIZE] for i in range(0, len(rest), _POSITION_SIZE)]


def write_collections(writer: rdb.RDBWriter, structures: Structures, now_ms: int) -> int:
    """Append every collection alive at ``now_ms`` to ``writer``; how many.

    Runs in a worker thread while the event loop changes the index, so it only reads: the
    collections and each one's element names are copied in one step (``list()`` of a dict
    or a deque holds the GIL throughout), never iterated while they may change, and expired
    collections are left out rather than deleted (deleting them, as a read of the
    collection does, would be a write from this thread).
    """
    written = 0
    for c in list(structures.names.values()):
        expire_ms = c.expire_ms
        if expire_ms and expire_ms <= now_ms:
            continue
        if isinstance(c, ZSetIndex):
            pairs = list(c.scores.items())  # the scores are the values: no read
            writer.add_zset(c.key, len(pairs), pairs, expire_ms)
        elif isinstance(c, HashIndex):
            fields = list(c.fields)
            writer.add_hash(c.key, len(fields), zip(fields, _values(structures, c, fields),
                                                    strict=True), expire_ms)
        elif isinstance(c, SetIndex):
            members = list(c.members)
            writer.add_set(c.key, len(members), members, expire_ms)
        elif isinstance(c, ListIndex):
            positions = list(c.positions)
            if positions:
                writer.add_aux(LIST_POSITIONS_AUX, list_positions_aux(c.key, positions))
            writer.add_list(c.key, len(positions), _values(structures, c, positions), expire_ms)
        else:
            continue
        written += 1
    return written


class CollectionLoader:
    """Turns the collections of an RDB into store records (the replica's full resync).

    Pass :meth:`on_hash`, :meth:`on_set`, :meth:`on_list`, :meth:`on_zset` and
    :meth:`on_aux` to :func:`~bitkv.rdb.read_rdb`; each call hands ``emit`` the records of
    one collection (elements, then the header) as ``(store key, value, expiry or None)``.
    Collections that cannot be stored (a key or element over the store's key limit, a
    database other than 0) go to ``skip(db, key, why)``; expired ones (``expire_ms <=
    now_ms``) are not loaded, as Redis's replica does not.
    """

    def __init__(self, emit: Callable[[list[Record]], None],
                 skip: Callable[[int, bytes, str], None], now_ms: int) -> None:
        self._emit = emit
        self._skip = skip
        self._now_ms = now_ms
        self._positions: tuple[bytes, list[bytes]] | None = None  # for the next list
        self.loaded = 0

    def on_aux(self, name: bytes, value: bytes) -> None:
        if name == LIST_POSITIONS_AUX:
            self._positions = parse_list_positions_aux(value)

    def on_hash(self, db: int, key: bytes, pairs: list[tuple[bytes, bytes]],
                expire_ms: int) -> None:
        self._load(db, key, layout.HASH, pairs, expire_ms)

    def on_set(self, db: int, key: bytes, members: list[bytes], expire_ms: int) -> None:
        self._load(db, key, layout.SET, ((m, b"") for m in members), expire_ms)

    def on_zset(self, db: int, key: bytes, pairs: list[tuple[bytes, float]],
                expire_ms: int) -> None:
        self._load(db, key, layout.ZSET, ((m, layout.pack_score(s)) for m, s in pairs),
                   expire_ms)

    def on_list(self, db: int, key: bytes, items: list[bytes], expire_ms: int) -> None:
        positions, self._positions = self._positions, None
        if positions is not None and positions[0] == key and len(positions[1]) == len(items):
            subs = positions[1]
        else:
            subs = [layout.pack_position(i * LOADED_SPACING) for i in range(len(items))]
        self._load(db, key, layout.LIST, zip(subs, items, strict=True), expire_ms)

    def _load(self, db: int, key: bytes, type_byte: bytes,
              elements: Iterable[tuple[bytes, bytes]], expire_ms: int) -> None:
        name = layout.TYPE_NAMES[type_byte]
        if db != 0:
            self._skip(db, key, f"{name} in a database other than 0")
            return
        if expire_ms and expire_ms <= self._now_ms:
            return  # expired already: as Redis's replica, not loaded (deleted if local)
        if not key or layout.is_internal(key):
            self._skip(db, key, f"{name} with a name bitkv reserves")
            return
        prefix = layout.element_prefix(type_byte, key)
        records: list[Record] = [(prefix + sub, value, None) for sub, value in elements]
        longest = max((len(k) for k, _v, _e in records), default=0)
        if longest > MAX_KEY_SIZE:  # one check for all (element_key's, per element, is slow)
            self._skip(db, key, f"{name} with an element of {longest - len(prefix)} bytes "
                                f"(the store's key limit is {MAX_KEY_SIZE} bytes with the "
                                f"key and the layout's {len(prefix) - len(key)})")
            return
        big = max((len(v) for _k, v, _e in records if v is not None), default=0)
        if big > MAX_VALUE_SIZE:
            self._skip(db, key, f"{name} with a value of {big} bytes (the store's limit is "
                                f"{MAX_VALUE_SIZE})")
            return
        records.append((layout.header_key(key), layout.header_value(type_byte),
                        expire_ms or None))
        self._emit(records)
        self.loaded += 1

