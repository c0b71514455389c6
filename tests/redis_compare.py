"""Comparing `bitkv serve` with a real redis-server, command by command.

The differential tests of the Redis-protocol commands (test_server_redis_commands, and one
file per collection type) run the same script of commands against both servers and compare
every reply and every error text. Their two servers are the ``bitkv_server`` and
``redis_server`` fixtures of conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from procs import redis


def outcome(client: redis.Redis, *args: Any) -> Any:
    """The reply to ``args``, or ("error", text): what is compared between the servers. A
    command written ("SORT", ...) has its reply sorted (an order Redis does not promise); a
    reply redis-py cannot parse (ZADD ... INCR read as an int) is compared by its text."""
    unordered = args[0] == "SORT"
    if unordered:
        args = args[1:]
    try:
        reply = client.execute_command(*args)
    except redis.ResponseError as exc:
        return ("error", str(exc))
    except ValueError as exc:
        return ("client could not parse", str(exc))
    return sorted(reply) if unordered else reply


def reset(client: redis.Redis, names: Iterable[str] = ()) -> None:
    """Empty the server, and delete ``names`` too (each by DEL, whatever type it holds)."""
    client.flushall()
    names = [n for n in names if n]
    if names:
        client.delete(*names)


def replies(client: redis.Redis, script: list[tuple[Any, ...]]) -> list[Any]:
    """The outcome of each command of ``script``, run on an emptied server; every string
    argument is also deleted first as a key."""
    reset(client, {a for cmd in script for a in cmd[1:] if isinstance(a, str)})
    return [outcome(client, *cmd) for cmd in script]
