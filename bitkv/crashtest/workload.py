"""The random workload the harness runs against a store, and a deterministic clock for it.

Operations are plain JSON-able dicts so a worker process can announce each one to the parent
before starting it. The clock is driven by the operation counter: operation ``n`` runs at Unix
time ``EPOCH + n`` seconds exactly, so the parent can compute every expiry the store computed
and check time always moves forward, across worker processes and restarts.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptionError
from .values import make_value, parse_value, value_length

EPOCH = 1_700_000_000  # whole seconds: int(t * 1000) is exact for every op time

Op = dict[str, Any]


class OpClock:
    """``clock()`` for the store: ``EPOCH + op`` seconds, where ``op`` is set per operation."""

    def __init__(self, op: int = 0) -> None:
        self.op = op

    def __call__(self) -> float:
        return float(EPOCH + self.op)


def now_ms(op_id: int) -> int:
    return (EPOCH + op_id) * 1000


def keyspace(nkeys: int) -> list[bytes]:
    """Short keys, plus a few long ones (a long key changes record layout and size hints)."""
    keys = [b"k%03d" % i for i in range(nkeys)]
    for i in range(max(1, nkeys // 16)):
        keys.append(b"long-%d-" % i + b"x" * (200 + 97 * i))
    return keys


@dataclass
class WorkloadConfig:
    nkeys: int = 40
    batch: bool = True          # use db.batch() (only if the store has it)
    compact: float = 0.02       # probability of a db.compact() per operation
    sync_ops: bool = False      # include db.sync() (a durability barrier) in the mix
    pause: float = 0.0          # seconds; > 0 adds pauses (lets the interval flusher run)
    big_values: bool = True     # occasionally write values of several KiB
    huge_values: bool = False   # occasionally write values of 50-300 KiB
    get: bool = True


def _value_len(rng: random.Random, big: bool, huge: bool = False) -> int:
    r = rng.random()
    if huge and r < 0.03:
        return rng.randint(50_000, 300_000)
    if r < 0.70:
        return rng.randint(0, 200)
    if r < 0.95 or not big:
        return rng.randint(200, 2500)
    return rng.randint(2500, 14000)


def _ttl(rng: random.Random) -> int:
    # Seconds == operations. Some expire within a few ops, some within a cycle, some never.
    return rng.choice((1, 2, 3, 5, 10, 25, 60, 150, 400, 2000, 100000))


def generate(rng: random.Random, first_id: int, count: int, cfg: WorkloadConfig) -> list[Op]:
    """``count`` random operations numbered from ``first_id``."""
    keys = keyspace(cfg.nkeys)
    hot = keys[: max(2, len(keys) // 5)]
    ops: list[Op] = []

    def pick() -> str:
        k = rng.choice(hot) if rng.random() < 0.4 else rng.choice(keys)
        return k.decode()

    for i in range(count):
        op_id = first_id + i
        r = rng.random()
        op: Op
        if r < cfg.compact:
            op = {"kind": "compact"}
        elif cfg.sync_ops and r < cfg.compact + 0.02:
            op = {"kind": "sync"}
        elif cfg.pause and r < cfg.compact + 0.03:
            op = {"kind": "pause", "seconds": cfg.pause}
        elif cfg.batch and r < 0.10:
            members = []
            for _ in range(rng.randint(2, 6)):
                if rng.random() < 0.75:
                    members.append({"kind": "put", "key": pick(), "len": _value_len(rng, False),
                                    "ttl": _ttl(rng) if rng.random() < 0.2 else None})
                else:
                    members.append({"kind": "delete", "key": pick()})
            op = {"kind": "batch", "members": members}
        elif r < 0.55:
            op = {"kind": "put", "key": pick(),
                  "len": _value_len(rng, cfg.big_values, cfg.huge_values), "ttl": None}
        elif r < 0.68:
            op = {"kind": "put", "key": pick(), "len": _value_len(rng, cfg.big_values),
                  "ttl": _ttl(rng)}
        elif r < 0.83:
            op = {"kind": "delete", "key": pick()}
        elif r < 0.87:
            op = {"kind": "expire", "key": pick(), "ttl": _ttl(rng)}
        elif r < 0.89:
            op = {"kind": "persist", "key": pick()}
        elif cfg.get:
            op = {"kind": "get", "key": pick()}
        else:
            op = {"kind": "put", "key": pick(), "len": _value_len(rng, False), "ttl": None}
        op["id"] = op_id
        ops.append(op)
    return ops


def member_tag(op_id: int, index: int) -> str:
    return f"{op_id}.{index}"


def observe(value: bytes | None) -> Any:
    """How a read value is reported: None, [tag, length], or ["garbage", repr]."""
    if value is None:
        return None
    parsed = parse_value(value)
    if parsed is None:
        return ["garbage", repr(value[:64]), len(value)]
    key, tag, length = parsed
    return [tag, length, key.decode("latin-1")]


def execute(db: Any, op: Op) -> Any:
    """Run one operation against ``db``; return a JSON-able result for the oracle."""
    kind = op["kind"]
    if kind == "put":
        key = op["key"].encode()
        db.put(key, make_value(key, str(op["id"]), op["len"]), ttl=op["ttl"])
        return None
    if kind == "delete":
        return bool(db.delete(op["key"].encode()))
    if kind == "get":
        try:
            return observe(db.get(op["key"].encode()))
        except CorruptionError as exc:
            return ["corrupt", str(exc)]
    if kind == "expire":
        return bool(db.expire(op["key"].encode(), op["ttl"]))
    if kind == "persist":
        return bool(db.persist(op["key"].encode()))
    if kind == "batch":
        with db.batch() as b:
            for i, m in enumerate(op["members"]):
                key = m["key"].encode()
                if m["kind"] == "put":
                    b.put(key, make_value(key, member_tag(op["id"], i), m["len"]), ttl=m["ttl"])
                else:
                    b.delete(key)
        return None
    if kind == "compact":
        db.compact()
        return None
    if kind == "sync":
        db.sync()
        return None
    if kind == "pause":
        time.sleep(op["seconds"])
        return None
    raise ValueError(f"unknown operation kind {kind!r}")


def written_length(op: Op, index: int | None = None) -> int:
    """The exact length of the value a put (or batch member ``index``) writes."""
    if index is None:
        return value_length(op["key"].encode(), str(op["id"]), op["len"])
    m = op["members"][index]
    return value_length(m["key"].encode(), member_tag(op["id"], index), m["len"])
