"""What kind of client a connection is, as ``CLIENT LIST``, ``CLIENT KILL TYPE`` and the
Pub/Sub output limit see it: the one owner of Redis's client types.

A connection has a *role*, which only replication changes: ``normal`` (the default),
``replica`` (a connection that became a replica of this server through SYNC/PSYNC) or
``master`` (a replica's link to its master). Its *type* is the role, except that a normal
connection subscribed to a channel or pattern is of type ``pubsub`` (Redis's
``getClientType``: master, then replica, then pubsub, then normal).
"""

from __future__ import annotations

NORMAL = "normal"
REPLICA = "replica"
MASTER = "master"
PUBSUB = "pubsub"

ROLES = (NORMAL, REPLICA, MASTER)  # what a connection's client_type may be set to
TYPES = (NORMAL, REPLICA, MASTER, PUBSUB)  # what it may read as

# The names CLIENT LIST TYPE / CLIENT KILL TYPE accept, case-insensitively ("slave" is
# Redis's older word for a replica).
_BY_NAME = {b"normal": NORMAL, b"replica": REPLICA, b"slave": REPLICA, b"master": MASTER,
            b"pubsub": PUBSUB}


def client_type(role: str, subscribed: bool) -> str:
    """The type of a connection with this role, subscribed to something or not."""
    if role == NORMAL and subscribed:
        return PUBSUB
    return role


def type_by_name(name: bytes) -> str | None:
    """The type a ``TYPE`` argument names, or None (Redis: ``Unknown client type``)."""
    return _BY_NAME.get(name.lower())


def flags(role: str, subscribed: bool, in_multi: bool, closing: bool) -> str:
    """CLIENT LIST's ``flags=``: S replica, M master, P subscribed, x in MULTI, c closing
    after the reply; N for none of them."""
    out = ("S" if role == REPLICA else "M" if role == MASTER else "") \
        + ("P" if subscribed else "") + ("x" if in_multi else "") + ("c" if closing else "")
    return out or "N"
