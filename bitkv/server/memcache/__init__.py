"""The memcached text protocol on a second port of ``bitkv serve`` (``--memcached-port``),
over the same store as the Redis protocol (docs/memcached.md).

* :mod:`.text`        the protocol's words: reply lines, tokens, numbers, exptime, limits
* :mod:`.commands`    what each command does to the store (``Memcache``)
* :mod:`.connection`  one client: request lines, data blocks, flow control, bounds
"""

from __future__ import annotations

from .commands import Memcache
from .connection import MemcacheConnection, MemcacheHost, check_bind

__all__ = ["Memcache", "MemcacheConnection", "MemcacheHost", "check_bind"]
