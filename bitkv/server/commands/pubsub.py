"""Pub/Sub commands: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, SSUBSCRIBE,
SUNSUBSCRIBE, PUBLISH, SPUBLISH, PUBSUB. The subscriptions and the delivery are
``conn.control.pubsub`` (:mod:`bitkv.server.pubsub`).

The (un)subscribe commands change what the connection may run (a RESP2 client in subscribed
mode is restricted to the commands flagged F_PUBSUB), so they are F_STATE: they run on the
connection's slow path, which updates its command gate after them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..protocol import array, bulk, bulk_array, integer
from ..pubsub import CHANNEL, PATTERN, SHARD, Kind
from .registry import F_FAST, F_PUBSUB, F_STATE, CommandError, arity_error, command

if TYPE_CHECKING:
    from ..app import Connection

SUBSCRIBING = F_STATE | F_PUBSUB


def _subscribe(c: Connection, kind: Kind, args: list[bytes]) -> bytes:
    return c.control.pubsub.subscribe(c, kind, args[1:])


def _unsubscribe(c: Connection, kind: Kind, args: list[bytes]) -> bytes:
    return c.control.pubsub.unsubscribe(c, kind, args[1:])


@command("subscribe", -2, SUBSCRIBING, group="pubsub", since="2.0.0",
         summary="Listen for messages published to the given channels")
def cmd_subscribe(c: Connection, args: list[bytes]) -> bytes:
    return _subscribe(c, CHANNEL, args)


@command("unsubscribe", -1, SUBSCRIBING, group="pubsub", since="2.0.0",
         summary="Stop listening for messages posted to the given channels")
def cmd_unsubscribe(c: Connection, args: list[bytes]) -> bytes:
    return _unsubscribe(c, CHANNEL, args)


@command("psubscribe", -2, SUBSCRIBING, group="pubsub", since="2.0.0",
         summary="Listen for messages published to channels matching the given patterns")
def cmd_psubscribe(c: Connection, args: list[bytes]) -> bytes:
    return _subscribe(c, PATTERN, args)


@command("punsubscribe", -1, SUBSCRIBING, group="pubsub", since="2.0.0",
         summary="Stop listening for messages posted to channels matching the given patterns")
def cmd_punsubscribe(c: Connection, args: list[bytes]) -> bytes:
    return _unsubscribe(c, PATTERN, args)


@command("ssubscribe", -2, SUBSCRIBING, group="pubsub", since="7.0.0",
         summary="Listen for messages published to the given shard channels")
def cmd_ssubscribe(c: Connection, args: list[bytes]) -> bytes:
    return _subscribe(c, SHARD, args)


@command("sunsubscribe", -1, SUBSCRIBING, group="pubsub", since="7.0.0",
         summary="Stop listening for messages posted to the given shard channels")
def cmd_sunsubscribe(c: Connection, args: list[bytes]) -> bytes:
    return _unsubscribe(c, SHARD, args)


@command("publish", 3, F_FAST, group="pubsub", since="2.0.0",
         summary="Post a message to a channel")
def cmd_publish(c: Connection, args: list[bytes]) -> bytes:
    receivers, own = c.control.pubsub.publish(args[1], args[2], c)
    return own + integer(receivers)


@command("spublish", 3, F_FAST, group="pubsub", since="7.0.0",
         summary="Post a message to a shard channel")
def cmd_spublish(c: Connection, args: list[bytes]) -> bytes:
    receivers, own = c.control.pubsub.publish(args[1], args[2], c, shard=True)
    return own + integer(receivers)


def _numsub(c: Connection, kind: Kind, channels: list[bytes]) -> bytes:
    hub = c.control.pubsub
    items = []
    for channel in channels:
        items += [bulk(channel), integer(hub.count(kind, channel))]
    return array(items)


@command("pubsub", -2, 0, group="pubsub", since="2.8.0", subcommands=True,
         summary="Inspect the state of the Pub/Sub subsystem")
def cmd_pubsub(c: Connection, args: list[bytes]) -> bytes:
    sub = args[1].upper()
    n = len(args)
    hub = c.control.pubsub
    if sub in (b"CHANNELS", b"SHARDCHANNELS"):
        if n > 3:
            raise CommandError("ERR unknown subcommand or wrong number of arguments for '"
                               + args[1].decode("utf-8", "replace")[:128]
                               + "'. Try PUBSUB HELP.")
        return bulk_array(hub.names(CHANNEL if sub == b"CHANNELS" else SHARD,
                                    args[2] if n == 3 else None))
    if sub == b"NUMSUB":
        return _numsub(c, CHANNEL, args[2:])
    if sub == b"SHARDNUMSUB":
        return _numsub(c, SHARD, args[2:])
    if sub == b"NUMPAT":
        if n != 2:
            return arity_error("pubsub|numpat")
        return integer(hub.total(PATTERN))
    if sub == b"HELP":
        if n != 2:
            return arity_error("pubsub|help")
        return bulk_array([
            b"PUBSUB <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            b"CHANNELS [<pattern>]",
            b"    Return the currently active channels matching a <pattern> (default: '*').",
            b"NUMPAT",
            b"    Return number of subscriptions to patterns.",
            b"NUMSUB [<channel> ...]",
            b"    Return the number of subscribers for the specified channels, excluding",
            b"    pattern subscriptions(default: no channels).",
            b"SHARDCHANNELS [<pattern>]",
            b"    Return the currently active shard level channels matching a <pattern> "
            b"(default: '*').",
            b"SHARDNUMSUB [<shardchannel> ...]",
            b"    Return the number of subscribers for the specified shard level channel(s)",
            b"HELP",
            b"    Print this help.",
        ])
    raise CommandError("ERR unknown subcommand '" + args[1].decode("utf-8", "replace")[:128]
                       + "'. Try PUBSUB HELP.")
