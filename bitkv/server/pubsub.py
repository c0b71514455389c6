"""Pub/Sub: who is subscribed to what, and delivering a published message to them.

One :class:`PubSub` per server holds, for each of the three kinds of subscription Redis 7.0
has (channels: SUBSCRIBE; glob patterns: PSUBSCRIBE; shard channels: SSUBSCRIBE, which
without a cluster are simply a namespace of their own), the subscribers of each name in
subscription order. Each subscriber keeps its own :class:`Subscriptions` (what UNSUBSCRIBE
without arguments drops, what CLIENT LIST counts); the two sides always change together here,
and nowhere else. A subscriber that has no subscription left has ``subscriptions = None``:
that is what "in subscribed mode" means (for the RESP2 command restrictions, PING's reply
and the client type ``pubsub``), and it costs a connection that never subscribes nothing.

Replies are encoded here too, as Redis 7.0 sends them: arrays in RESP2, push messages (``>``)
in RESP3. ``message``/``pmessage``/``smessage`` go to every subscriber through
``Subscriber.push`` at once, from within the publishing command; the connection decides how
to buffer them (app.py: ``Connection.push``, which closes a subscriber whose unsent output
passes the Pub/Sub output limit instead of buffering without bound).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .glob import compile_glob
from .protocol import NIL2, NIL3, bulk, integer

# Redis's `client-output-buffer-limit pubsub 32mb 8mb 60`: a subscriber whose unsent output
# reaches the hard limit is closed at once; one that stays at or above the soft limit for
# more than the given seconds is closed too. ServerConfig.pubsub_output_limit sets them.
PUBSUB_OUTPUT_LIMIT = (32 * 1024 * 1024, 8 * 1024 * 1024, 60.0)


class Subscriber(Protocol):
    """A client as Pub/Sub sees it (``app.Connection``)."""

    subscriptions: Subscriptions | None  # None: subscribed to nothing
    resp3: bool

    def push(self, data: bytes) -> None:
        """Send ``data`` (an encoded message) to the client, after its earlier replies."""


@dataclass(frozen=True)
class Kind:
    """One of the three kinds of subscription, with the words of its replies."""

    index: int  # which of Subscriptions.sets / PubSub.subscribers
    subscribe: bytes  # the first element of a confirmation, encoded
    unsubscribe: bytes
    message: bytes  # the first element of a delivered message, encoded


CHANNEL = Kind(0, bulk(b"subscribe"), bulk(b"unsubscribe"), bulk(b"message"))
PATTERN = Kind(1, bulk(b"psubscribe"), bulk(b"punsubscribe"), bulk(b"pmessage"))
SHARD = Kind(2, bulk(b"ssubscribe"), bulk(b"sunsubscribe"), bulk(b"smessage"))


class Subscriptions:
    """One client's subscriptions: channels, patterns, shard channels (each in the order
    subscribed)."""

    __slots__ = ("sets",)

    def __init__(self) -> None:
        self.sets: tuple[dict[bytes, None], dict[bytes, None], dict[bytes, None]] = ({}, {}, {})

    @property
    def channels(self) -> int:
        return len(self.sets[CHANNEL.index])

    @property
    def patterns(self) -> int:
        return len(self.sets[PATTERN.index])

    @property
    def shard_channels(self) -> int:
        return len(self.sets[SHARD.index])

    def count(self, kind: Kind) -> int:
        """The number a (un)subscribe confirmation reports: channels and patterns together
        for those two kinds, shard channels alone for the third (as Redis 7.0 counts)."""
        if kind is SHARD:
            return self.shard_channels
        return self.channels + self.patterns

    def empty(self) -> bool:
        return not any(self.sets)


def _push_header(n: int, resp3: bool) -> bytes:
    return b">%d\r\n" % n if resp3 else b"*%d\r\n" % n


def _deliver(subscribers: dict[Subscriber, None], n: int, body: bytes,
             publisher: Subscriber | None, own: list[bytes]) -> int:
    """Push the message of ``n`` elements encoded in ``body`` to every subscriber (the
    publisher's own copy goes to ``own``); how many got it."""
    encoded = (_push_header(n, False) + body, _push_header(n, True) + body)
    receivers = tuple(subscribers)  # a push may close a subscriber
    for sub in receivers:
        if sub is publisher:
            own.append(encoded[sub.resp3])
        else:
            sub.push(encoded[sub.resp3])
    return len(receivers)


class PubSub:
    """Every subscription of a server, by name."""

    def __init__(self) -> None:
        # kind.index -> name -> subscribers (a dict as an ordered set)
        self.subscribers: tuple[dict[bytes, dict[Subscriber, None]], ...] = ({}, {}, {})
        # The compiled glob of each pattern someone is subscribed to (compile_glob's own
        # cache holds 256; a server may have any number of patterns).
        self._matchers: dict[bytes, Callable[[bytes], bool]] = {}

    # -- subscribing -------------------------------------------------------------------------

    def subscribe(self, sub: Subscriber, kind: Kind, names: list[bytes]) -> bytes:
        """Subscribe ``sub`` to each name; one confirmation per name (also for a name it was
        subscribed to already)."""
        subs = sub.subscriptions
        if subs is None:
            subs = sub.subscriptions = Subscriptions()
        mine = subs.sets[kind.index]
        table = self.subscribers[kind.index]
        head = _push_header(3, sub.resp3) + kind.subscribe
        out = []
        for name in names:
            if name not in mine:
                mine[name] = None
                others = table.get(name)
                if others is None:
                    others = table[name] = {}
                    if kind is PATTERN:
                        self._matchers[name] = compile_glob(name)
                others[sub] = None
            out.append(head + bulk(name) + integer(subs.count(kind)))
        return b"".join(out)

    def unsubscribe(self, sub: Subscriber, kind: Kind, names: list[bytes]) -> bytes:
        """Unsubscribe ``sub`` from each name, or from every name of that kind when ``names``
        is empty; one confirmation per name (with a null name when there was none at all)."""
        subs = sub.subscriptions
        mine = subs.sets[kind.index] if subs is not None else {}
        if not names:
            names = list(mine)
        head = _push_header(3, sub.resp3) + kind.unsubscribe
        out = []
        for name in names:
            if name in mine:
                del mine[name]
                self._forget(sub, kind, name)
            out.append(head + bulk(name) + integer(subs.count(kind) if subs else 0))
        if not out:
            out.append(head + (NIL3 if sub.resp3 else NIL2)
                       + integer(subs.count(kind) if subs else 0))
        if subs is not None and subs.empty():
            sub.subscriptions = None
        return b"".join(out)

    def drop(self, sub: Subscriber) -> None:
        """Forget every subscription of ``sub``, without confirmations (disconnect, RESET)."""
        subs = sub.subscriptions
        if subs is None:
            return
        for kind in (CHANNEL, PATTERN, SHARD):
            for name in subs.sets[kind.index]:
                self._forget(sub, kind, name)
        sub.subscriptions = None

    def _forget(self, sub: Subscriber, kind: Kind, name: bytes) -> None:
        table = self.subscribers[kind.index]
        others = table[name]
        del others[sub]
        if not others:  # no empty entries: PUBSUB CHANNELS lists only channels in use
            del table[name]
            if kind is PATTERN:
                del self._matchers[name]

    # -- publishing --------------------------------------------------------------------------

    def publish(self, channel: bytes, message: bytes, publisher: Subscriber | None = None,
                shard: bool = False) -> tuple[int, bytes]:
        """Deliver ``message`` to the subscribers of ``channel`` and of every pattern that
        matches it (shard channels: only to those of the shard channel). Returns the number
        of deliveries and the messages for ``publisher`` itself: they must follow its earlier
        replies, so it sends them in front of its PUBLISH reply instead of at once."""
        kind = SHARD if shard else CHANNEL
        receivers = 0
        own: list[bytes] = []
        subscribers = self.subscribers[kind.index].get(channel)
        if subscribers:
            body = kind.message + bulk(channel) + bulk(message)
            receivers += _deliver(subscribers, 3, body, publisher, own)
        if not shard and self._matchers:
            tail = bulk(channel) + bulk(message)
            for pattern, matches in tuple(self._matchers.items()):
                if matches(channel):
                    body = PATTERN.message + bulk(pattern) + tail
                    receivers += _deliver(self.subscribers[PATTERN.index][pattern], 4, body,
                                          publisher, own)
        return receivers, b"".join(own)

    # -- introspection (PUBSUB, INFO) ----------------------------------------------------------

    def names(self, kind: Kind, pattern: bytes | None = None) -> list[bytes]:
        """The names of ``kind`` that have subscribers, those matching ``pattern`` if given."""
        names = list(self.subscribers[kind.index])
        if pattern is None:
            return names
        matches = compile_glob(pattern)
        return [n for n in names if matches(n)]

    def count(self, kind: Kind, name: bytes) -> int:
        """How many clients are subscribed to ``name`` (patterns are not counted in)."""
        return len(self.subscribers[kind.index].get(name, ()))

    def total(self, kind: Kind) -> int:
        """How many distinct names of ``kind`` have subscribers."""
        return len(self.subscribers[kind.index])
