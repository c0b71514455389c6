"""Helpers for the tests of collections through persistence and replication: fill a store's
hashes, sets, lists and sorted sets directly (bitkv.structures), and read back any holder's
*logical* content (a Structures, or a Redis-protocol server through redis-py) to compare."""

from __future__ import annotations

import random
import time

import redis

from bitkv.structures import HashIndex, ListIndex, SetIndex, Structures, ZSetIndex
from bitkv.structures.encoding import pack_position, pack_score

# key -> (type, content): hash {field: value}, set sorted members, list [items],
# zset [(member, score)] in order
Logical = dict[bytes, tuple[str, object]]


def populate(s: Structures, rng: random.Random, *, big: int = 600) -> dict[bytes, int]:
    """Collections of every type: small and big (past Redis's listpack/intset limits),
    integer-like and binary members, ±inf and negative-zero-free scores, some with a TTL.
    Returns {key: expire_ms} of the keys given one."""
    ttls: dict[bytes, int] = {}
    for n, tag in ((5, b"small"), (big, b"big")):
        with s.edit(b"hash:" + tag, HashIndex) as e:
            for i in range(n):
                e.put(b"f%d" % i, rng.randbytes(rng.randrange(0, 40)))
        with s.edit(b"set:" + tag, SetIndex) as e:
            for i in range(n):
                e.put(b"m\x00%d" % i, b"")
        with s.edit(b"intset:" + tag, SetIndex) as e:
            for i in range(n):
                e.put(b"%d" % (i * 7 - 50), b"")
        with s.edit(b"list:" + tag, ListIndex) as e:
            for i in range(n):  # positions with gaps and negatives, as pushes leave them
                e.put(pack_position(i * 3 - n), rng.randbytes(rng.randrange(0, 30)))
        with s.edit(b"zset:" + tag, ZSetIndex) as e:
            for i in range(n):
                e.put(b"z%d" % i, pack_score(rng.choice([i / 3, -i * 1e300, 0.1 * i, 2**53 + i])))
            e.put(b"inf", pack_score(float("inf")))
            e.put(b"-inf", pack_score(float("-inf")))
    future = int(time.time() * 1000) + 3_600_000
    for key in (b"hash:small", b"list:big", b"zset:small", b"set:small"):
        s.expire_at(key, future)
        ttls[key] = future
    return ttls


def logical(s: Structures) -> Logical:
    out: Logical = {}
    for c in s.items():
        subs = list(c.subs())
        values = s.read_many(c, subs)
        if isinstance(c, HashIndex):
            out[c.key] = ("hash", dict(zip(subs, values, strict=True)))
        elif isinstance(c, SetIndex):
            out[c.key] = ("set", sorted(subs))
        elif isinstance(c, ListIndex):
            out[c.key] = ("list", values)
        elif isinstance(c, ZSetIndex):
            out[c.key] = ("zset", [(m, sc) for sc, m in c.order])
    return out


def expiries(s: Structures) -> dict[bytes, int]:
    return {c.key: c.expire_ms for c in s.items() if c.expire_ms}


def redis_logical(client: redis.Redis, keys: list[bytes] | None = None) -> Logical:
    """The same view of a server speaking Redis's protocol (strings left out)."""
    out: Logical = {}
    for k in keys if keys is not None else client.scan_iter(count=1000):
        t = client.type(k).decode()
        if t == "hash":
            out[k] = ("hash", client.hgetall(k))
        elif t == "set":
            out[k] = ("set", sorted(client.smembers(k)))
        elif t == "list":
            out[k] = ("list", client.lrange(k, 0, -1))
        elif t == "zset":
            out[k] = ("zset", [(m, float(sc)) for m, sc in
                               client.zrange(k, 0, -1, withscores=True)])
    return out
