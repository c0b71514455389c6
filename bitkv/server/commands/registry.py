"""The command table itself: flags, the ``@command`` decorator, lookup and arity errors.

Every handler is ``handler(conn, args) -> bytes`` (an encoded RESP reply); ``args[0]`` is the
command name. The group modules (connection, transactions, strings, keyspace, admin) register
their handlers here when :mod:`bitkv.server.commands` imports them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ... import Store
from ...structures import PREFIX as RESERVED_PREFIX
from ...structures import ReservedKeyError, WrongTypeError
from ..protocol import error, parse_ll

if TYPE_CHECKING:
    from ..app import Connection

REDIS_VERSION = "7.0.0"  # the Redis release whose commands and replies we follow

# flags
F_WRITE = 1  # changes the keyspace
F_READONLY = 2
F_NOAUTH = 4  # allowed before AUTH (AUTH, HELLO, QUIT)
F_ASYNC = 8  # handler is a coroutine function (runs off the hot path)
F_TXCTL = 16  # MULTI/EXEC/DISCARD/QUIT: executed at once even inside MULTI
F_NOMULTI = 32  # refused inside MULTI
F_FAST = 64
F_ADMIN = 128
F_NEEDAUTH = 256  # set on every command without F_NOAUTH
F_ANY = 512  # set on every command
F_STATE = 1024  # changes the connection's state (AUTH, HELLO): runs on the slow path
F_PUBSUB = 2048  # allowed to a RESP2 client in subscribed mode ((P|S)(UN)SUBSCRIBE, PING...)
F_DENYOOM = 4096  # may add data: refused while the store is out of room (Redis's denyoom)
OOM = "OOM command not allowed when used memory > 'maxmemory'."

NOT_INT = "ERR value is not an integer or out of range"
SYNTAX = "ERR syntax error"


class CommandError(Exception):
    """Raised by a handler; ``reply`` is the encoded RESP error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.reply = error(message)


# A handler returns the encoded reply, or (F_ASYNC) a coroutine that returns it. The table's
# type says Any so that the hot loop in app.py can append a reply without a cast; each
# handler keeps its precise type (the decorator returns it unchanged).
Handler = Callable[["Connection", list[bytes]], Any]
Spec = tuple[Handler, int, int, str]
_H = TypeVar("_H", bound=Handler)


@dataclass
class CommandInfo:
    name: str
    arity: int
    flags: int
    first_key: int
    last_key: int
    step: int
    group: str
    summary: str
    since: str


COMMANDS: dict[bytes, Spec] = {}
INFOS: dict[str, CommandInfo] = {}
# Commands whose first argument is a subcommand (CLIENT LIST, CONFIG GET...): Redis 7 names
# them "client|list" in its errors.
WITH_SUBCOMMANDS: set[str] = set()


def command(name: str, arity: int, flags: int = 0, keys: tuple[int, int, int] = (0, 0, 0),
            group: str = "generic", summary: str = "", since: str = "1.0.0",
            subcommands: bool = False, strings_only: bool = False) -> Callable[[_H], _H]:
    """Register a handler under ``name`` (upper and lower case looked up without copying).

    ``keys`` is (first, last, step) of the key arguments, as in Redis's COMMAND reply (last
    -1: the last argument). The table runs the handler behind :func:`guarded` when the
    command writes (``F_WRITE``: no key of it may be in the collections' reserved range) or
    is ``strings_only`` (it works on its keys' string values: a collection's name answers
    WRONGTYPE), so no handler checks either itself.
    """

    def register(fn: _H) -> _H:
        all_flags = flags | F_ANY | (0 if flags & F_NOAUTH else F_NEEDAUTH)
        handler: Handler = guarded(fn, keys, bool(flags & F_WRITE), strings_only)
        spec: Spec = (handler, arity, all_flags, name)
        COMMANDS[name.lower().encode()] = spec
        COMMANDS[name.upper().encode()] = spec
        INFOS[name] = CommandInfo(name, arity, flags, *keys, group, summary, since)
        if subcommands:
            WITH_SUBCOMMANDS.add(name)
        return fn

    return register


def guarded(fn: Handler, keys: tuple[int, int, int], write: bool, strings_only: bool
            ) -> Handler:
    """``fn`` behind the checks of its key arguments, or ``fn`` itself when none apply.

    * ``write``: a key in the reserved range (:data:`bitkv.structures.PREFIX`, the
      collections' own records) is refused, so no client command writes, deletes, renames or
      expires one of them;
    * ``strings_only``: a key naming a live collection answers WRONGTYPE before ``fn`` runs.

    One closure per command shape: the common one (a single key, argument 1) costs one extra
    call and a ``startswith`` (docs/cluster.md, "The reserved prefix", has the measured cost).
    """
    first, last, step = keys
    if first <= 0 or not (write or strings_only):
        return fn
    prefix = RESERVED_PREFIX
    if (first, last) == (1, 1):
        if not strings_only:
            @functools.wraps(fn)
            def one_key(c: Connection, args: list[bytes]) -> Any:
                if args[1].startswith(prefix):
                    raise ReservedKeyError(args[1])
                return fn(c, args)
            return one_key

        @functools.wraps(fn)
        def one_string_key(c: Connection, args: list[bytes]) -> Any:
            key = args[1]
            if write and key.startswith(prefix):
                raise ReservedKeyError(key)
            names = c.structures.names
            if names and key in names and key in c.structures:
                raise WrongTypeError()
            return fn(c, args)
        return one_string_key

    @functools.wraps(fn)
    def many_keys(c: Connection, args: list[bytes]) -> Any:
        end = len(args) + last if last < 0 else last
        for key in args[first:end + 1:step]:
            if write and key.startswith(prefix):
                raise ReservedKeyError(key)
        if strings_only:
            structures = c.structures
            names = structures.names
            if names:
                for key in args[first:end + 1:step]:
                    if key in names and key in structures:
                        raise WrongTypeError()
        return fn(c, args)
    return many_keys


def full_name(spec: Spec, args: list[bytes]) -> str:
    """The name Redis 7 gives the command in errors: ``get``, or ``client|list``."""
    name = spec[3]
    if name in WITH_SUBCOMMANDS and len(args) > 1:
        return name + "|" + args[1].decode("utf-8", "replace").lower()
    return name


def lookup(name: bytes) -> Spec | None:
    spec = COMMANDS.get(name)
    if spec is None:
        spec = COMMANDS.get(name.lower())
    return spec


def unknown_command_error(args: list[bytes]) -> bytes:
    """Redis 7's text: the name, then up to 128 characters of quoted arguments."""
    name = args[0].decode("utf-8", "replace")[:128]
    shown = ""
    for a in args[1:]:
        room = 128 - len(shown)
        if room <= 0:
            break
        shown += "'" + a.decode("utf-8", "replace")[:room] + "' "
    return error(f"ERR unknown command '{name}', with args beginning with: {shown}")


def arity_error(name: str) -> bytes:
    return error(f"ERR wrong number of arguments for '{name}' command")


def to_int(b: bytes, message: str = NOT_INT) -> int:
    n = parse_ll(b)
    if n is None:
        raise CommandError(message)
    return n


def time_ms() -> int:
    """The wall clock in milliseconds (what EXPIREAT, PXAT and TTL replies count in)."""
    return int(time.time() * 1000)


def key_exists(db: Store, key: bytes) -> bool:
    """``key in db``, False for a key no store can hold (empty, oversized)."""
    try:
        return key in db
    except ValueError:
        return False

