"""List commands: LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LLEN LINDEX LRANGE LSET LREM LINSERT
LTRIM LPOS LMOVE RPOPLPUSH LMPOP, and the blocking BLPOP BRPOP BLMOVE BRPOPLPUSH BLMPOP.

A list is a :class:`~bitkv.structures.ListIndex` (its elements' positions, ascending, in
memory) and one record per element (docs/format.md, "Collections"). A push takes the
position ``STEP`` before the head or after the tail; LINSERT takes the midpoint between two
neighbours, and when they are adjacent rewrites the whole list at evenly spaced positions in
the same batch (O(n), as Redis's LINSERT is). Everything one command changes, on one key or
two (LMOVE), is one store batch (:func:`_commit`), then the indexes are updated through
``on_put``/``on_delete`` in an order that keeps each O(1) at the ends, and O(n) in all for a
change in the middle.

Replies and errors follow Redis 7.0's t_list.c, including the order in which arguments are
checked (a bad COUNT before WRONGTYPE, as there). The blocking commands wait in
:mod:`.blocking`.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from ...structures import ListIndex, check_user_key
from ...structures.encoding import (
    LIST,
    element_key,
    header_key,
    header_value,
    pack_position,
)
from ..protocol import EMPTY_ARRAY, MINUS_ONE, OK, ZERO, array, bulk, bulk_array, integer
from . import blocking, encodings
from .registry import (
    F_ASYNC,
    F_DENYOOM,
    F_FAST,
    F_READONLY,
    F_WRITE,
    SYNTAX,
    CommandError,
    command,
    to_int,
)
from .zranges import rank_span

if TYPE_CHECKING:
    from ...structures.space import Op
    from ..app import Connection

STEP = 1 << 16  # between pushed elements: room for 16 LINSERTs at one place before a rewrite
MIN_POSITION = -(1 << 63)
MAX_POSITION = (1 << 63) - 1
REBUILD_AT = 32  # changes in the middle of a list above which its index is rebuilt, O(n)
HEAD, TAIL = 0, 1
NULL_ARRAY2 = b"*-1\r\n"
NULL3 = b"_\r\n"
WRONG_ARGS = "ERR wrong number of arguments for '{}' command"


def null_array(c: Connection) -> bytes:
    return NULL3 if c.resp3 else NULL_ARRAY2


@encodings.rule(ListIndex)
def _encoding(coll: Any, values: dict[str, str]) -> str:
    # Redis 7.0 keeps every list in a quicklist (listpack lists came with 7.2).
    return "quicklist"


# -- changes: what one command writes to a list ------------------------------------------------

class Change:
    """The positions one command deletes from a list and the (position, value) it puts."""

    __slots__ = ("coll", "deleted", "head", "length", "new", "put", "tail")

    def __init__(self, coll: ListIndex, new: bool) -> None:
        self.coll = coll
        self.new = new
        self.deleted: list[int] = []
        self.put: dict[int, bytes] = {}
        self.length = len(coll)
        p = coll.positions
        # the outermost positions taken so far (pushes go beyond them)
        self.head: int | None = p[0] if p else None
        self.tail: int | None = p[-1] if p else None

    def push(self, values: list[bytes], where: int) -> None:
        if not values:
            return
        head, tail = self.head, self.tail
        if head is None or tail is None:  # an empty list: its first element at 0
            head, tail = STEP, -STEP
        n = len(values)
        if (where == HEAD and head - STEP * n < MIN_POSITION) or \
                (where == TAIL and tail + STEP * n > MAX_POSITION):
            raise CommandError("ERR list positions exhausted at this end")  # 2**47 pushes
        put = self.put
        for v in values:
            if where == HEAD:
                head -= STEP
                put[head] = v
            else:
                tail += STEP
                put[tail] = v
        if self.head is None:  # was empty: the other end is the first pushed element, at 0
            if where == HEAD:
                tail = 0
            else:
                head = 0
        self.head, self.tail = head, tail
        self.length += n

    def pop(self, n: int, where: int) -> list[int]:
        """Delete ``n`` elements at one end (of the list as it was); their positions, in the
        order popped."""
        p = self.coll.positions
        if where == HEAD:
            taken = list(islice(p, n))
        else:
            taken = list(islice(reversed(p), n))
        self.deleted.extend(taken)
        self.length -= len(taken)
        return taken

    def delete(self, positions: list[int]) -> None:
        self.deleted.extend(positions)
        self.length -= len(positions)

    def rewrite(self, values: list[bytes]) -> None:
        """Replace the whole list with ``values`` at evenly spaced positions, none of them a
        position the list has now (so the index update stays O(n))."""
        old = self.coll.positions
        taken = set(old)
        n = len(values)
        base = -(n // 2) * STEP
        offset = 1
        while any(base + i * STEP + offset in taken for i in range(n)):
            offset += 1
        self.deleted = list(old)
        self.put = {base + i * STEP + offset: v for i, v in enumerate(values)}
        self.length = n
        self.head = base + offset
        self.tail = base + (n - 1) * STEP + offset


class Changes:
    """The changes of one command, by key (LMOVE to its own source is one change)."""

    def __init__(self, c: Connection) -> None:
        self.c = c
        self.by_key: dict[bytes, Change] = {}

    def open(self, key: bytes) -> Change:
        """The change of list ``key`` (created empty if absent); WRONGTYPE if not a list."""
        ch = self.by_key.get(key)
        if ch is None:
            coll = self.c.structures.find(key, ListIndex)
            if coll is None:
                check_user_key(key)
                ch = Change(ListIndex(key), True)
            else:
                ch = Change(coll, False)
            self.by_key[key] = ch
        return ch

    def commit(self) -> None:
        """Write every change as one batch, then update the indexes."""
        structures = self.c.structures
        ops: list[Op] = []
        for ch in self.by_key.values():
            coll = ch.coll
            prefix = coll.prefix
            for pos in ch.deleted:
                ops.append((prefix + pack_position(pos), None, None))
            for pos, v in ch.put.items():
                ops.append((element_key(prefix, pack_position(pos)), v, None))
            if ch.new and ch.length:
                ops.append((header_key(coll.key), header_value(LIST), None))
            elif not ch.new and not ch.length:
                ops.append((header_key(coll.key), None, None))
        if not ops:
            return
        structures.write(ops)
        for ch in self.by_key.values():
            _update_index(ch)
            if ch.new and ch.length:
                structures.install(ch.coll)
            elif not ch.new and not ch.length:
                structures.forget(ch.coll.key)


def _update_index(ch: Change) -> None:
    """Apply ``ch`` to its list's index (after the write): deletions and insertions at the
    ends one by one (O(1) each); many in the middle by rebuilding the index in order."""
    coll = ch.coll
    p = coll.positions
    on_put, on_delete = coll.on_put, coll.on_delete
    if len(ch.deleted) + len(ch.put) == 1:  # the common push or pop of one element
        for x in ch.put:
            on_put(pack_position(x), b"")
        for x in ch.deleted:
            on_delete(pack_position(x))
        return
    dels = sorted(ch.deleted)
    lo, hi = 0, len(dels)
    while lo < hi and p and p[0] == dels[lo]:
        on_delete(pack_position(dels[lo]))
        lo += 1
    while lo < hi and p and p[-1] == dels[hi - 1]:
        hi -= 1
        on_delete(pack_position(dels[hi]))
    middle = dels[lo:hi]
    puts = sorted(ch.put)
    if p:
        first, last = p[0], p[-1]
        below = [x for x in puts if x < first]
        above = [x for x in puts if x > last]
        inside = [x for x in puts if first <= x <= last]
    else:
        below, above, inside = [], puts, []
    if len(middle) + len(inside) > REBUILD_AT:
        gone = set(middle)
        kept = {x for x in p if x not in gone}
        kept.update(inside)
        for x in list(p):  # ascending: each is the head when deleted
            on_delete(pack_position(x))
        for x in sorted(kept):  # ascending: each goes after the tail
            on_put(pack_position(x), b"")
    else:
        for x in middle:
            on_delete(pack_position(x))
        for x in inside:
            on_put(pack_position(x), b"")
    for x in reversed(below):
        on_put(pack_position(x), b"")
    for x in above:
        on_put(pack_position(x), b"")


# -- reading ---------------------------------------------------------------------------------

def _find(c: Connection, key: bytes) -> ListIndex | None:
    return c.structures.find(key, ListIndex)


def _values(c: Connection, coll: ListIndex, positions: list[int]) -> list[bytes]:
    got = c.structures.read_many(coll, [pack_position(x) for x in positions])
    return [b"" if v is None else v for v in got]


def _range(coll: ListIndex, start: int, stop: int) -> list[int]:
    """Positions ``start`` to ``stop`` (exclusive), walking from the nearer end."""
    p = coll.positions
    n = len(p)
    if start >= stop:
        return []
    if start <= n - stop:
        return list(islice(p, start, stop))
    out = list(islice(reversed(p), n - stop, n - start))
    out.reverse()
    return out


def _scan(c: Connection, coll: ListIndex, from_tail: bool) -> Iterator[tuple[int, bytes]]:
    """(position, value) of every element from one end, read in chunks."""
    p = coll.positions
    order = list(reversed(p)) if from_tail else list(p)
    for i in range(0, len(order), 256):
        chunk = order[i:i + 256]
        yield from zip(chunk, _values(c, coll, chunk), strict=True)


def _where(arg: bytes) -> int:
    a = arg.lower()
    if a == b"left":
        return HEAD
    if a == b"right":
        return TAIL
    raise CommandError(SYNTAX)


def _range_long(arg: bytes, lo: int, message: str) -> int:
    """getRangeLongFromObjectOrReply up to LONG_MAX, with Redis's ``message`` for both a
    non-integer and a value below ``lo``."""
    n = to_int(arg, "ERR " + message)
    if n < lo:
        raise CommandError("ERR " + message)
    return n


def _positive(arg: bytes, message: str | None = None) -> int:
    """getPositiveLongFromObjectOrReply."""
    return _range_long(arg, 0, message or "value is out of range, must be positive")


# -- push ------------------------------------------------------------------------------------

def _push(c: Connection, args: list[bytes], where: int, only_existing: bool) -> bytes:
    key = args[1]
    if only_existing and _find(c, key) is None:
        return ZERO
    changes = Changes(c)
    ch = changes.open(key)
    ch.push(args[2:], where)
    changes.commit()
    reply = integer(ch.length)
    blocking.signal_ready(c, key)
    return reply


@command("lpush", -3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "list",
         "Prepend one or multiple elements to a list")
def cmd_lpush(c: Connection, args: list[bytes]) -> bytes:
    return _push(c, args, HEAD, False)


@command("rpush", -3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "list",
         "Append one or multiple elements to a list")
def cmd_rpush(c: Connection, args: list[bytes]) -> bytes:
    return _push(c, args, TAIL, False)


@command("lpushx", -3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "list",
         "Prepend an element to a list, only if the list exists", "2.2.0")
def cmd_lpushx(c: Connection, args: list[bytes]) -> bytes:
    return _push(c, args, HEAD, True)


@command("rpushx", -3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "list",
         "Append an element to a list, only if the list exists", "2.2.0")
def cmd_rpushx(c: Connection, args: list[bytes]) -> bytes:
    return _push(c, args, TAIL, True)


# -- pop -------------------------------------------------------------------------------------

def _pop(c: Connection, args: list[bytes], where: int) -> bytes:
    if len(args) > 3:
        raise CommandError(WRONG_ARGS.format(args[0].decode("utf-8", "replace").lower()))
    has_count = len(args) == 3
    count = _positive(args[2]) if has_count else 0
    key = args[1]
    coll = _find(c, key)
    if coll is None:
        return null_array(c) if has_count else c.null
    if has_count and count == 0:
        return EMPTY_ARRAY
    changes = Changes(c)
    ch = changes.open(key)
    taken = ch.pop(count if has_count else 1, where)
    values = _values(c, coll, taken)
    changes.commit()
    return bulk_array(values) if has_count else bulk(values[0])


@command("lpop", -2, F_WRITE | F_FAST, (1, 1, 1), "list",
         "Remove and get the first elements in a list")
def cmd_lpop(c: Connection, args: list[bytes]) -> bytes:
    return _pop(c, args, HEAD)


@command("rpop", -2, F_WRITE | F_FAST, (1, 1, 1), "list",
         "Remove and get the last elements in a list")
def cmd_rpop(c: Connection, args: list[bytes]) -> bytes:
    return _pop(c, args, TAIL)


def _pop_with_key(c: Connection, key: bytes, where: int, count: int) -> bytes | None:
    """LMPOP's reply for ``key`` ([key, [elements]]), None if it has no list to pop from."""
    coll = _find(c, key)
    if coll is None:
        return None
    changes = Changes(c)
    taken = changes.open(key).pop(count, where)
    values = _values(c, coll, taken)
    changes.commit()
    return array([bulk(key), bulk_array(values)])


def _parse_mpop(args: list[bytes], numkeys_at: int) -> tuple[list[bytes], int, int]:
    """LMPOP/BLMPOP's keys, end and count (Redis's order of checks)."""
    numkeys = _range_long(args[numkeys_at], 1, "numkeys should be greater than 0")
    where_at = numkeys_at + numkeys + 1
    if where_at >= len(args):
        raise CommandError(SYNTAX)
    where = _where(args[where_at])
    count = -1
    j = where_at + 1
    while j < len(args):
        if count == -1 and args[j].upper() == b"COUNT" and j + 1 < len(args):
            count = _range_long(args[j + 1], 1, "count should be greater than 0")
            j += 2
        else:
            raise CommandError(SYNTAX)
    return args[numkeys_at + 1:where_at], where, (1 if count == -1 else count)


@command("lmpop", -4, F_WRITE, (0, 0, 0), "list",
         "Pop elements from a list", "7.0.0")
def cmd_lmpop(c: Connection, args: list[bytes]) -> bytes:
    keys, where, count = _parse_mpop(args, 1)
    for key in keys:
        reply = _pop_with_key(c, key, where, count)
        if reply is not None:
            return reply
    return null_array(c)


# -- read ------------------------------------------------------------------------------------

@command("llen", 2, F_READONLY | F_FAST, (1, 1, 1), "list", "Get the length of a list")
def cmd_llen(c: Connection, args: list[bytes]) -> bytes:
    coll = _find(c, args[1])
    return ZERO if coll is None else integer(len(coll))


def _index(coll: ListIndex, index: int) -> int | None:
    n = len(coll.positions)
    if index < 0:
        index += n
    if not 0 <= index < n:
        return None
    return coll.positions[index]


@command("lindex", 3, F_READONLY, (1, 1, 1), "list",
         "Get an element from a list by its index")
def cmd_lindex(c: Connection, args: list[bytes]) -> bytes:
    coll = _find(c, args[1])
    if coll is None:
        return c.null
    pos = _index(coll, to_int(args[2]))
    if pos is None:
        return c.null
    return bulk(_values(c, coll, [pos])[0])


@command("lrange", 4, F_READONLY, (1, 1, 1), "list",
         "Get a range of elements from a list")
def cmd_lrange(c: Connection, args: list[bytes]) -> bytes:
    start, end = to_int(args[2]), to_int(args[3])
    coll = _find(c, args[1])
    if coll is None:
        return EMPTY_ARRAY
    lo, hi = rank_span(start, end, len(coll))
    return bulk_array(_values(c, coll, _range(coll, lo, hi)))


@command("lpos", -3, F_READONLY, (1, 1, 1), "list",
         "Return the index of matching elements on a list", "6.0.6")
def cmd_lpos(c: Connection, args: list[bytes]) -> bytes:
    element = args[2]
    rank, count, maxlen = 1, -1, 0
    j = 3
    while j < len(args):
        opt = args[j].upper()
        more = j + 1 < len(args)
        if opt == b"RANK" and more:
            rank = to_int(args[j + 1])
            if rank == 0:
                raise CommandError("ERR RANK can't be zero: use 1 to start from the first "
                                   "match, 2 from the second ... or use negative to start "
                                   "from the end of the list")
        elif opt == b"COUNT" and more:
            count = _positive(args[j + 1], "COUNT can't be negative")
        elif opt == b"MAXLEN" and more:
            maxlen = _positive(args[j + 1], "MAXLEN can't be negative")
        else:
            raise CommandError(SYNTAX)
        j += 2
    from_tail = rank < 0
    rank = abs(rank)
    coll = _find(c, args[1])
    if coll is None:
        return EMPTY_ARRAY if count != -1 else c.null
    n = len(coll)
    found: list[int] = []
    matches = 0
    for index, (_pos, value) in enumerate(_scan(c, coll, from_tail)):
        if maxlen and index >= maxlen:
            break
        if value == element:
            matches += 1
            if matches >= rank:
                found.append(n - index - 1 if from_tail else index)
                if count == -1 or (count and len(found) >= count):
                    break
    if count != -1:
        return array([integer(i) for i in found])
    return integer(found[0]) if found else c.null


# -- change in place ---------------------------------------------------------------------------

@command("lset", 4, F_WRITE | F_DENYOOM, (1, 1, 1), "list",
         "Set the value of an element in a list by its index")
def cmd_lset(c: Connection, args: list[bytes]) -> bytes:
    coll = _find(c, args[1])
    if coll is None:
        raise CommandError("ERR no such key")
    pos = _index(coll, to_int(args[2]))
    if pos is None:
        raise CommandError("ERR index out of range")
    changes = Changes(c)
    changes.open(args[1]).put[pos] = args[3]
    changes.commit()
    return OK


@command("lrem", 4, F_WRITE, (1, 1, 1), "list", "Remove elements from a list")
def cmd_lrem(c: Connection, args: list[bytes]) -> bytes:
    count = to_int(args[2])
    coll = _find(c, args[1])
    if coll is None:
        return ZERO
    element = args[3]
    limit = abs(count)
    doomed: list[int] = []
    for pos, value in _scan(c, coll, count < 0):
        if value == element:
            doomed.append(pos)
            if limit and len(doomed) == limit:
                break
    if doomed:
        changes = Changes(c)
        changes.open(args[1]).delete(doomed)
        changes.commit()
    return integer(len(doomed))


@command("ltrim", 4, F_WRITE, (1, 1, 1), "list",
         "Trim a list to the specified range")
def cmd_ltrim(c: Connection, args: list[bytes]) -> bytes:
    start, end = to_int(args[2]), to_int(args[3])
    coll = _find(c, args[1])
    if coll is None:
        return OK
    n = len(coll)
    lo, hi = rank_span(start, end, n)
    changes = Changes(c)
    ch = changes.open(args[1])
    if lo >= hi:
        ch.pop(n, HEAD)
    else:
        ch.pop(lo, HEAD)
        ch.pop(n - hi, TAIL)
    changes.commit()
    return OK


@command("linsert", 5, F_WRITE | F_DENYOOM, (1, 1, 1), "list",
         "Insert an element before or after another element in a list", "2.2.0")
def cmd_linsert(c: Connection, args: list[bytes]) -> bytes:
    side = args[2].lower()
    if side not in (b"before", b"after"):
        raise CommandError(SYNTAX)
    coll = _find(c, args[1])
    if coll is None:
        return ZERO
    pivot, element = args[3], args[4]
    index = -1
    for i, (_pos, value) in enumerate(_scan(c, coll, False)):
        if value == pivot:
            index = i
            break
    if index < 0:
        return MINUS_ONE
    p = coll.positions
    changes = Changes(c)
    ch = changes.open(args[1])
    if side == b"after":
        index += 1  # insert before the element after the pivot
    if index == 0:
        ch.push([element], HEAD)
    elif index == len(p):
        ch.push([element], TAIL)
    else:
        before, after = p[index - 1], p[index]
        if after - before >= 2:
            ch.put[(before + after) // 2] = element
            ch.length += 1
        else:  # no room between the neighbours: rewrite the list evenly spaced
            values = [v for _pos, v in _scan(c, coll, False)]
            values.insert(index, element)
            ch.rewrite(values)
    changes.commit()
    return integer(ch.length)


# -- move ------------------------------------------------------------------------------------

def _move(c: Connection, src: bytes, dst: bytes, wherefrom: int, whereto: int) -> bytes | None:
    """Pop from ``src``, push to ``dst``; the element's bulk reply, None if ``src`` is empty.
    WRONGTYPE (from either key) before anything is changed."""
    coll = _find(c, src)
    if coll is None:
        return None
    changes = Changes(c)
    source = changes.open(src)
    target = changes.open(dst)
    taken = source.pop(1, wherefrom)
    value = _values(c, coll, taken)[0]
    target.push([value], whereto)
    changes.commit()
    blocking.signal_ready(c, dst)
    return bulk(value)


@command("lmove", 5, F_WRITE | F_DENYOOM, (1, 2, 1), "list",
         "Pop an element from a list, push it to another list and return it", "6.2.0")
def cmd_lmove(c: Connection, args: list[bytes]) -> bytes:
    wherefrom, whereto = _where(args[3]), _where(args[4])
    reply = _move(c, args[1], args[2], wherefrom, whereto)
    return c.null if reply is None else reply


@command("rpoplpush", 3, F_WRITE | F_DENYOOM, (1, 2, 1), "list",
         "Remove the last element in a list, prepend it to another list and return it",
         "1.2.0")
def cmd_rpoplpush(c: Connection, args: list[bytes]) -> bytes:
    reply = _move(c, args[1], args[2], TAIL, HEAD)
    return c.null if reply is None else reply


# -- blocking --------------------------------------------------------------------------------

def _pop_attempt(c: Connection, where: int, count: int | None) -> blocking.Serve:
    """BLPOP/BRPOP (count None: [key, element]) and BLMPOP ([key, [elements]])."""

    def attempt(key: bytes) -> bytes | None:
        if count is not None:
            return _pop_with_key(c, key, where, count)
        coll = _find(c, key)
        if coll is None:
            return None
        changes = Changes(c)
        taken = changes.open(key).pop(1, where)
        values = _values(c, coll, taken)
        changes.commit()
        return array([bulk(key), bulk(values[0])])

    return attempt


@command("blpop", -3, F_WRITE | F_ASYNC, (1, -2, 1), "list",
         "Remove and get the first element in a list, or block until one is available")
def cmd_blpop(c: Connection, args: list[bytes]) -> bytes | Coroutine[Any, Any, bytes]:
    timeout = blocking.timeout_ms(args[-1])
    return blocking.answer_or_block(ListIndex, c, args[1:-1], _pop_attempt(c, HEAD, None),
                                    timeout, null_array(c))


@command("brpop", -3, F_WRITE | F_ASYNC, (1, -2, 1), "list",
         "Remove and get the last element in a list, or block until one is available")
def cmd_brpop(c: Connection, args: list[bytes]) -> bytes | Coroutine[Any, Any, bytes]:
    timeout = blocking.timeout_ms(args[-1])
    return blocking.answer_or_block(ListIndex, c, args[1:-1], _pop_attempt(c, TAIL, None),
                                    timeout, null_array(c))


@command("blmpop", -5, F_WRITE | F_ASYNC, (0, 0, 0), "list",
         "Pop elements from a list, or block until one is available", "7.0.0")
def cmd_blmpop(c: Connection, args: list[bytes]) -> bytes | Coroutine[Any, Any, bytes]:
    keys, where, count = _parse_mpop(args, 2)
    timeout = blocking.timeout_ms(args[1])
    return blocking.answer_or_block(ListIndex, c, keys, _pop_attempt(c, where, count), timeout,
                                    null_array(c))


def _move_attempt(c: Connection, dst: bytes, wherefrom: int, whereto: int) -> blocking.Serve:
    def attempt(key: bytes) -> bytes | None:
        return _move(c, key, dst, wherefrom, whereto)

    return attempt


@command("blmove", 6, F_WRITE | F_ASYNC | F_DENYOOM, (1, 2, 1), "list",
         "Pop an element from a list, push it to another list and return it; or block "
         "until one is available", "6.2.0")
def cmd_blmove(c: Connection, args: list[bytes]) -> bytes | Coroutine[Any, Any, bytes]:
    wherefrom, whereto = _where(args[3]), _where(args[4])
    timeout = blocking.timeout_ms(args[5])
    return blocking.answer_or_block(
        ListIndex, c, [args[1]], _move_attempt(c, args[2], wherefrom, whereto), timeout, c.null)


@command("brpoplpush", 4, F_WRITE | F_ASYNC | F_DENYOOM, (1, 2, 1), "list",
         "Pop an element from a list, push it to another list and return it; or block "
         "until one is available", "2.2.0")
def cmd_brpoplpush(c: Connection, args: list[bytes]) -> bytes | Coroutine[Any, Any, bytes]:
    timeout = blocking.timeout_ms(args[3])
    return blocking.answer_or_block(ListIndex, c, [args[1]], _move_attempt(c, args[2], TAIL, HEAD),
                                    timeout, c.null)
