"""``bitkv serve``: a Redis-protocol (RESP2, RESP3 after HELLO 3) server over a bitkv Store.

>>> from bitkv.server import run_server, ServerConfig
>>> run_server(ServerConfig(dir="data", port=6380))      # doctest: +SKIP

``serve()`` runs inside an existing event loop, ``ServerThread`` in a background thread.
See docs/cluster.md for the commands, durability settings and a sharded deployment.
"""

from __future__ import annotations

from .app import (
    HAVE_UVLOOP,
    Connection,
    Server,
    ServerConfig,
    ServerThread,
    make_ssl_context,
    run_server,
    serve,
)
from .protocol import HAVE_HIREDIS, HiredisParser, Limits, PyParser, make_parser

__all__ = [
    "HAVE_HIREDIS",
    "HAVE_UVLOOP",
    "Connection",
    "HiredisParser",
    "Limits",
    "PyParser",
    "Server",
    "ServerConfig",
    "ServerThread",
    "make_parser",
    "make_ssl_context",
    "run_server",
    "serve",
]
