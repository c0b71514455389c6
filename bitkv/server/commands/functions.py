"""FUNCTION FLUSH and FUNCTION LIST: the answers of a server that has no functions.

bitkv runs no scripts (no EVAL, no FUNCTION LOAD), so its function library is always empty.
These two subcommands are answered because tools and test suites call them to reset a server
(Redis's own test suite sends ``FUNCTION FLUSH`` before every group of tests); every other
subcommand is refused with Redis's unknown-subcommand error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import EMPTY_ARRAY, OK
from .registry import F_WRITE, SYNTAX, CommandError, command

if TYPE_CHECKING:
    from ..app import Connection


@command("function", -2, F_WRITE, group="scripting", since="7.0.0", subcommands=True,
         summary="FLUSH and LIST of the (always empty) function library")
def cmd_function(c: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    if sub == b"FLUSH":
        if len(args) > 3:
            raise CommandError(SYNTAX)
        if len(args) == 3 and args[2].upper() not in (b"ASYNC", b"SYNC"):
            raise CommandError("ERR FUNCTION FLUSH only supports SYNC|ASYNC option")
        return OK
    if sub == b"LIST":
        return EMPTY_ARRAY
    raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                       + "'. Try FUNCTION HELP.")
