"""Set commands: SADD, SREM, SPOP, SRANDMEMBER, SMOVE, SINTER/SUNION/SDIFF (+STORE, SINTERCARD),
SSCAN... (Redis 7.0, t_set.c).

A set is a collection of :mod:`bitkv.structures`: its members in memory (the records on disk
hold nothing else: a member's value is empty). Each command's changes are one atomic batch:
an :meth:`~bitkv.structures.Structures.edit` for one key, :meth:`~bitkv.structures.
Structures.commit_edits` for SMOVE's two, and for the ``*STORE`` commands the destination's
old value (of any type) deleted and the result written in one batch.

SPOP and SRANDMEMBER draw from the index's ``sampler`` (O(1) a member, O(count) a call).

``OBJECT ENCODING`` says ``intset`` while every member is an integer (int64, Redis's
``string2ll`` spelling) and there are at most ``set-max-intset-entries`` members, ``hashtable``
after that (sticky while the server runs; Redis 7.0 has no listpack sets).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ...structures import Collection, SetIndex
from ..protocol import EMPTY_ARRAY, ONE, ZERO, array, bulk, bulk_array, integer, parse_ll
from . import tuning
from .elementscan import parse_scan, scan_step
from .encodings import encoding_of, rule, tuning_int
from .hashes import check_random_reply, random_count
from .registry import F_DENYOOM, F_FAST, F_READONLY, F_WRITE, SYNTAX, CommandError, command

if TYPE_CHECKING:
    from ..app import Connection

@rule(SetIndex)
def _set_encoding(coll: Collection, values: dict[str, str]) -> str:
    s = cast(SetIndex, coll)
    if not s.converted and (len(s) > tuning_int(values, "set-max-intset-entries")
                            or not all(parse_ll(m) is not None for m in s.members)):
        s.converted = True
    return "hashtable" if s.converted else "intset"


def _note_added(c: Connection, s: SetIndex, members: list[bytes]) -> None:
    """Convert ``s`` to ``hashtable`` (sticky) if adding ``members`` made it big."""
    if s.converted:
        return
    if len(s) > tuning_int(tuning.values(c.control), "set-max-intset-entries") or \
            not all(parse_ll(m) is not None for m in members):
        s.converted = True


def set_reply(c: Connection, members: list[bytes]) -> bytes:
    """A set: RESP3's ``~`` type, an array in RESP2."""
    if not c.resp3:
        return bulk_array(members)
    return b"~%d\r\n" % len(members) + b"".join(bulk(m) for m in members)


def _empty_set(c: Connection) -> bytes:
    return b"~0\r\n" if c.resp3 else EMPTY_ARRAY


@command("sadd", -3, F_WRITE | F_FAST | F_DENYOOM, (1, 1, 1), "set",
         "Add one or more members to a set")
def cmd_sadd(c: Connection, args: list[bytes]) -> bytes:
    with c.structures.edit(args[1], SetIndex) as e:
        s = cast(SetIndex, e.collection)
        members = s.members
        if len(args) == 3:  # one member, the common case
            m = args[2]
            added = [] if m in members else [m]
            if added:
                e.put(m, b"")
        else:
            fresh: dict[bytes, None] = {}
            for m in args[2:]:
                if m not in members and m not in fresh:
                    fresh[m] = None
                    e.put(m, b"")
            added = list(fresh)
    # After the commit the edit's collection is the indexed one (SADD never empties it).
    if added:
        _note_added(c, s, added)
    return integer(len(added))


@command("srem", -3, F_WRITE | F_FAST, (1, 1, 1), "set",
         "Remove one or more members from a set")
def cmd_srem(c: Connection, args: list[bytes]) -> bytes:
    return integer(c.structures.remove(args[1], SetIndex, args[2:]))


@command("scard", 2, F_READONLY | F_FAST, (1, 1, 1), "set",
         "Get the number of members in a set")
def cmd_scard(c: Connection, args: list[bytes]) -> bytes:
    s = c.structures.find(args[1], SetIndex)
    return ZERO if s is None else integer(len(s))


@command("sismember", 3, F_READONLY | F_FAST, (1, 1, 1), "set",
         "Determine if a given value is a member of a set")
def cmd_sismember(c: Connection, args: list[bytes]) -> bytes:
    s = c.structures.find(args[1], SetIndex)
    return ONE if s is not None and args[2] in s.members else ZERO


@command("smismember", -3, F_READONLY | F_FAST, (1, 1, 1), "set",
         "Returns the membership associated with the given elements for a set", "6.2.0")
def cmd_smismember(c: Connection, args: list[bytes]) -> bytes:
    s = c.structures.find(args[1], SetIndex)
    members = s.members if s is not None else {}
    return array([ONE if m in members else ZERO for m in args[2:]])


@command("smembers", 2, F_READONLY, (1, 1, 1), "set", "Get all the members in a set")
def cmd_smembers(c: Connection, args: list[bytes]) -> bytes:
    s = c.structures.find(args[1], SetIndex)
    return _empty_set(c) if s is None else set_reply(c, _in_set_order(c, s))


def _in_set_order(c: Connection, s: SetIndex) -> list[bytes]:
    """The members in the order Redis lists them where it has one: ascending numbers for an
    intset (any order is allowed for a hashtable: bitkv's is insertion order)."""
    if encoding_of(c.control, s) == "intset":
        return sorted(s.members, key=int)
    return list(s.members)


def _positive_count(arg: bytes) -> int:
    n = parse_ll(arg)
    if n is None or n < 0:
        raise CommandError("ERR value is out of range, must be positive")
    return n


@command("spop", -2, F_WRITE | F_FAST, (1, 1, 1), "set",
         "Remove and return one or multiple random members from a set")
def cmd_spop(c: Connection, args: list[bytes]) -> bytes:
    if len(args) > 3:
        raise CommandError(SYNTAX)
    key = args[1]
    if len(args) == 2:
        s = c.structures.find(key, SetIndex)
        if s is None:
            return c.null
        m = s.random_member(random.randrange)
        with c.structures.edit(key, SetIndex) as e:
            e.delete(m)
        return bulk(m)
    count = _positive_count(args[2])
    s = c.structures.find(key, SetIndex)
    if s is None or count == 0:
        return _empty_set(c)
    popped = list(s.members) if count >= len(s) else random.sample(s.sampler, count)
    with c.structures.edit(key, SetIndex) as e:
        for m in popped:
            e.delete(m)
    return set_reply(c, popped)


@command("srandmember", -2, F_READONLY, (1, 1, 1), "set",
         "Get one or multiple random members from a set")
def cmd_srandmember(c: Connection, args: list[bytes]) -> bytes:
    if len(args) > 3:
        raise CommandError(SYNTAX)
    if len(args) == 2:
        s = c.structures.find(args[1], SetIndex)
        return c.null if s is None else bulk(s.random_member(random.randrange))
    count = random_count(args[2])
    s = c.structures.find(args[1], SetIndex)
    if s is None or count == 0:
        return EMPTY_ARRAY
    if count > 0:
        if count >= len(s):
            return bulk_array(list(s.members))
        return bulk_array(random.sample(s.sampler, count))
    check_random_reply(-count)
    draw = s.random_member
    rng = random.randrange
    return bulk_array([draw(rng) for _ in range(-count)])


@command("smove", 4, F_WRITE | F_FAST, (1, 2, 1), "set",
         "Move a member from one set to another")
def cmd_smove(c: Connection, args: list[bytes]) -> bytes:
    structures = c.structures
    src_key, dst_key, m = args[1], args[2], args[3]
    src = structures.find(src_key, SetIndex)
    if src is None:
        return ZERO
    dst = structures.find(dst_key, SetIndex)
    if src is dst:
        return ONE if m in src.members else ZERO
    if m not in src.members:
        return ZERO
    src_edit = structures.edit(src_key, SetIndex)
    src_edit.delete(m)
    dst_edit = structures.edit(dst_key, SetIndex)
    if dst is None or m not in dst.members:
        dst_edit.put(m, b"")
    structures.commit_edits([src_edit, dst_edit])
    dst = structures.find(dst_key, SetIndex)
    if dst is not None:
        _note_added(c, dst, [m])
    return ONE


def _sets(c: Connection, keys: list[bytes]) -> list[SetIndex | None]:
    """The sets named ``keys`` (None: no such key); WRONGTYPE for any other type."""
    find = c.structures.find
    return [find(k, SetIndex) for k in keys]


def _inter(c: Connection, keys: list[bytes], limit: int = 0) -> list[bytes]:
    """The intersection, stopping at ``limit`` members (0: no limit). Every key is
    type-checked first, as Redis 7.0 does, even after a missing one."""
    found = _sets(c, keys)
    if any(s is None for s in found):
        return []
    sets = [s for s in found if s is not None]
    sets.sort(key=len)
    smallest, others = sets[0], [s.members for s in sets[1:]]
    out: list[bytes] = []
    for m in smallest.members:
        if all(m in o for o in others):
            out.append(m)
            if limit and len(out) >= limit:
                break
    return out


def _union(c: Connection, keys: list[bytes]) -> list[bytes]:
    out: dict[bytes, None] = {}
    for s in _sets(c, keys):
        if s is not None:
            out.update(dict.fromkeys(s.members))
    return list(out)


def _diff(c: Connection, keys: list[bytes]) -> list[bytes]:
    sets = _sets(c, keys)
    first = sets[0]
    if first is None:
        return []
    others = [s.members for s in sets[1:] if s is not None]
    return [m for m in first.members if not any(m in o for o in others)]


def _store(c: Connection, dst: bytes, members: list[bytes]) -> bytes:
    """Replace ``dst`` (whatever it holds) with a set of ``members`` in one batch (no set
    when empty: the key is deleted); the reply is the size."""
    structures = c.structures
    ops, new = structures.replace_ops(dst, SetIndex, ((m, b"") for m in members))
    if ops:
        structures.write(ops)
    if new is None:
        structures.forget(dst)
    else:
        structures.install(new)
    return integer(len(members))


def _set_op(op: Callable[[Connection, list[bytes]], list[bytes]], store: bool
            ) -> Callable[[Connection, list[bytes]], bytes]:
    def handler(c: Connection, args: list[bytes]) -> bytes:
        if store:
            return _store(c, args[1], op(c, args[2:]))
        return set_reply(c, op(c, args[1:]))

    return handler


for _name, _op, _summary in (
        ("sinter", _inter, "Intersect multiple sets"),
        ("sunion", _union, "Add multiple sets"),
        ("sdiff", _diff, "Subtract multiple sets")):
    command(_name, -2, F_READONLY, (1, -1, 1), "set", _summary)(_set_op(_op, False))
    command(_name + "store", -3, F_WRITE | F_DENYOOM, (1, -1, 1), "set",
            _summary + " and store the resulting set in a key")(_set_op(_op, True))


@command("sintercard", -3, F_READONLY, (2, -1, 1), "set",
         "Intersect multiple sets and return the cardinality of the result", "7.0.0")
def cmd_sintercard(c: Connection, args: list[bytes]) -> bytes:
    numkeys = parse_ll(args[1])
    if numkeys is None or numkeys < 1:
        raise CommandError("ERR numkeys should be greater than 0")
    if numkeys > len(args) - 2:
        raise CommandError("ERR Number of keys can't be greater than number of args")
    limit = 0
    j = 2 + numkeys
    while j < len(args):
        if args[j].upper() == b"LIMIT" and j + 1 < len(args):
            n = parse_ll(args[j + 1])
            if n is None or n < 0:
                raise CommandError("ERR LIMIT can't be negative")
            limit = n
            j += 2
        else:
            raise CommandError(SYNTAX)
    return integer(len(_inter(c, args[2:2 + numkeys], limit)))


@command("sscan", -3, F_READONLY, (1, 1, 1), "set", "Incrementally iterate Set elements",
         "2.8.0")
def cmd_sscan(c: Connection, args: list[bytes]) -> bytes:
    cursor, match, count = parse_scan(args)
    s = c.structures.find(args[1], SetIndex)
    if s is None:
        return b"*2\r\n$1\r\n0\r\n*0\r\n"
    if encoding_of(c.control, s) == "intset":  # whole, in order, whatever the cursor
        next_cursor, members = 0, _in_set_order(c, s)
    else:
        next_cursor, members = scan_step(s, cursor, count, False)
    if match is not None:
        members = [m for m in members if match(m)]
    return b"*2\r\n" + bulk(b"%d" % next_cursor) + bulk_array(members)

