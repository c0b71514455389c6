"""The command table: Redis commands implemented over a bitkv Store.

The table, the flags and the ``@command`` decorator live in :mod:`.registry`; the commands
are split by group, each module registering its handlers when imported here:

* :mod:`.connection`   PING, ECHO, QUIT, SELECT, AUTH, HELLO, RESET, CLIENT
* :mod:`.transactions` MULTI, DISCARD, EXEC, WATCH, UNWATCH
* :mod:`.strings`      GET, SET, SETNX/SETEX/PSETEX, GETDEL, GETEX, GETSET, GETRANGE, SETRANGE,
  MGET, MSET, MSETNX, APPEND, STRLEN, INCR/DECR/INCRBY/DECRBY
* :mod:`.stringmath`   INCRBYFLOAT, LCS
* :mod:`.bits`         SETBIT, GETBIT, BITCOUNT, BITPOS, BITOP
* :mod:`.keyspace`     DEL, UNLINK, EXISTS, TYPE, EXPIRE and variants, TTL, PTTL, EXPIRETIME,
  PEXPIRETIME, PERSIST, KEYS, SCAN, RENAME, RENAMENX, COPY, RANDOMKEY, TOUCH, OBJECT
* :mod:`.admin`        DBSIZE, FLUSHDB, FLUSHALL, TIME, SAVE, BGSAVE, LASTSAVE, BGREWRITEAOF,
  SHUTDOWN, CONFIG, COMMAND, INFO
* :mod:`.sync`         PSYNC, SYNC, REPLCONF, WAIT (the master side of replication)
* :mod:`.pubsub`       SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, SSUBSCRIBE, SUNSUBSCRIBE,
  PUBLISH, SPUBLISH, PUBSUB
* :mod:`.replication`  REPLICAOF, SLAVEOF, ROLE (the replica side)
* :mod:`.functions`    FUNCTION FLUSH, FUNCTION LIST (an always empty library)
* :mod:`.hashes`       HSET, HGET, HDEL, HINCRBY, HRANDFIELD, HSCAN... (hash collections)
* :mod:`.sets`         SADD, SREM, SPOP, SMOVE, SINTER/SUNION/SDIFF, SSCAN... (set collections)
* :mod:`.memory`       MEMORY USAGE (an estimate)
* :mod:`.lists`        LPUSH, RPUSH, LPOP, RPOP, LRANGE, LINSERT, LMOVE, LMPOP... and the
  blocking BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP (clients wait in :mod:`.blocking`)
* :mod:`.tuning`       (no commands) Redis's tuning parameters for CONFIG SET/GET
* :mod:`.zsets`        ZADD, ZRANGE and its variants, ZPOP*, ZMPOP, ZUNION/ZINTER/ZDIFF(STORE),
  ZRANDMEMBER, ZSCAN, BZPOPMIN/BZPOPMAX/BZMPOP (sorted sets; :mod:`.zranges` reads their
  scores and ranges)
* :mod:`.streamlists`  BITKV.LPUT, BITKV.LDEL (list elements in the replication stream)

Handlers run on the event loop thread, one at a time, so a command that makes several Store
calls is atomic with respect to every other client, as in Redis. Store calls are
microseconds; the slow ones (compaction, fsync) run in threads (see app.py). A handler
reaches the server only through ``conn.control`` (the :class:`~bitkv.server.control.
ServerControl` protocol), never through the Server object.

Replies and error texts follow Redis 7.0. Differences that come from the engine are listed in
docs/cluster.md ("Redis compatibility").
"""

from __future__ import annotations

# The import order is the registration order, which is the order COMMAND, COMMAND LIST and
# COMMAND DOCS list the commands in (kept as it was when this was one module).
# isort: off
from . import connection, transactions, strings, keyspace, admin
from . import sync  # noqa: F401 - imported for its @command registrations
from . import pubsub
from . import replication  # noqa: F401 - imported for its @command registrations
from . import bits, functions, stringmath, tuning  # noqa: F401 - imported for their @command registrations
from . import hashes  # noqa: F401 - imported for its @command registrations
from . import sets  # noqa: F401 - imported for its @command registrations
from . import memory  # noqa: F401 - imported for its @command registrations
from . import lists  # noqa: F401 - imported for its @command registrations
from . import zsets  # noqa: F401 - imported for its @command registrations
from . import streamlists  # noqa: F401 - imported for its @command registrations
# isort: on
from .keyspace import ScanIndex
from .registry import (
    COMMANDS,
    F_ADMIN,
    F_ANY,
    F_ASYNC,
    F_DENYOOM,
    F_FAST,
    F_NEEDAUTH,
    F_NOAUTH,
    F_NOMULTI,
    F_PUBSUB,
    F_READONLY,
    F_STATE,
    F_TXCTL,
    F_WRITE,
    INFOS,
    NOT_INT,
    OOM,
    REDIS_VERSION,
    SYNTAX,
    CommandError,
    CommandInfo,
    Handler,
    Spec,
    arity_error,
    command,
    full_name,
    lookup,
    to_int,
    unknown_command_error,
)

__all__ = [
    "COMMANDS",
    "F_ADMIN",
    "F_ANY",
    "F_ASYNC",
    "F_DENYOOM",
    "F_FAST",
    "F_NEEDAUTH",
    "F_NOAUTH",
    "F_NOMULTI",
    "F_PUBSUB",
    "F_READONLY",
    "F_STATE",
    "F_TXCTL",
    "F_WRITE",
    "INFOS",
    "NOT_INT",
    "OOM",
    "REDIS_VERSION",
    "SYNTAX",
    "CommandError",
    "CommandInfo",
    "Handler",
    "ScanIndex",
    "Spec",
    "admin",
    "arity_error",
    "command",
    "connection",
    "full_name",
    "keyspace",
    "lookup",
    "pubsub",
    "strings",
    "to_int",
    "transactions",
    "unknown_command_error",
]
