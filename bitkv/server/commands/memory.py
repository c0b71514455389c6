"""MEMORY USAGE: an estimate of the bytes a key costs, as Redis answers it.

Redis's own test units call ``MEMORY USAGE`` between tests (``memory_usage`` in their
util.tcl), so an unknown command there ends a whole unit. bitkv's answer is an estimate of
what the key costs this server: its name and the in-memory index entry, plus the bytes of
its value on disk (a collection: its elements, the values of up to SAMPLES of them read and
the average taken for the rest, as Redis samples).
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING

from ..protocol import bulk_array, integer
from .registry import F_READONLY, SYNTAX, CommandError, command, to_int

if TYPE_CHECKING:
    from ..app import Connection

KEY_OVERHEAD = 64  # an index entry: a dict slot, the key object, the record's location
ELEMENT_OVERHEAD = 48  # a collection element's index entry
DEFAULT_SAMPLES = 5  # as Redis's MEMORY USAGE


@command("memory", -2, F_READONLY, (2, 2, 1), "server",
         "Estimate the memory a key uses", "4.0.0", subcommands=True)
def cmd_memory(c: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"HELP" and len(args) == 2:
        return bulk_array([
            b"MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            b"USAGE <key> [SAMPLES <count>]",
            b"    Return an estimate of the memory, in bytes, the key and its value cost "
            b"(bitkv: name, index entry and value bytes; SAMPLES values are read).",
            b"HELP", b"    Print this help."])
    if sub != b"USAGE":
        raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                           + "'. Try MEMORY HELP.")
    if len(args) < 3:
        raise CommandError("ERR wrong number of arguments for 'memory|usage' command")
    samples = DEFAULT_SAMPLES
    if len(args) == 5 and args[3].upper() == b"SAMPLES":
        samples = to_int(args[4])
        if samples < 0:
            raise CommandError(SYNTAX)
    elif len(args) != 3:
        raise CommandError(SYNTAX)
    key = args[2]
    structures = c.structures
    coll = structures.collection(key) if structures else None
    if coll is None:
        try:
            value = c.db.get(key)
        except ValueError:
            value = None
        if value is None:
            return c.null
        return integer(KEY_OVERHEAD + len(key) + len(value))
    n = len(coll)
    subs = list(islice(coll.subs(), samples or n))
    values = [v for v in structures.read_many(coll, subs) if v is not None]
    average = sum(len(v) for v in values) // len(values) if values else 0
    sub_bytes = sum(len(s) for s in subs) * n // max(len(subs), 1)
    return integer(KEY_OVERHEAD + len(key) + sub_bytes + n * (average + ELEMENT_OVERHEAD))
