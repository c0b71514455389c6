"""``bitkv serve``: run the Redis-protocol server over a store directory.

Imported by ``BitkvGroup.get_command`` in main.py only when ``serve`` is asked for, so the
other commands do not pay for importing the server at startup.
"""

from __future__ import annotations

import click

import bitkv
from bitkv import MAX_VALUE_SIZE
from bitkv.server import protocol as _protocol
from bitkv.server.app import SYNC_CHOICES, ServerConfig, run_server

from .errors import EXIT_LOCKED, EXIT_STORE, CliError
from .keyfile import KEY_ENV, KEY_FILE_ENV, load_key


@click.command("serve")
@click.option("--dir", "directory", default="bitkv-data", show_default=True,
              type=click.Path(file_okay=False), help="Store directory (created if missing).")
@click.option("--port", default=6380, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free port, printed at startup).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Address(es) to listen on, space-separated. Loopback only by default.")
@click.option("--requirepass", envvar="BITKV_REQUIREPASS", default=None, metavar="SECRET",
              help="Require AUTH with this password (or set BITKV_REQUIREPASS).")
@click.option("--protected-mode", "protected_mode", type=click.Choice(["yes", "no"]),
              default="yes", show_default=True,
              help="As Redis: without --requirepass, refuse to listen on (and refuse clients "
                   "from) anything but loopback. 'no' accepts unauthenticated network clients.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Serve TLS (1.2+) with this PEM certificate chain.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM private key for --tls-cert.")
@click.option("--tls-ca-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Require client certificates signed by this CA.")
@click.option("--sync", "sync_mode", type=click.Choice(SYNC_CHOICES), default="interval",
              show_default=True,
              help="Durability: always (fsync before each reply, like appendfsync always), "
                   "interval (fsync every --sync-interval s, like everysec), never (like no).")
@click.option("--sync-interval", default=1.0, show_default=True, type=click.FloatRange(min=0,
              min_open=True), help="Seconds between fsyncs with --sync interval.")
@click.option("--maxclients", default=10000, show_default=True, type=click.IntRange(min=1),
              help="Refuse connections beyond this many clients.")
@click.option("--max-bulk-len", default=MAX_VALUE_SIZE, show_default=True,
              type=click.IntRange(1, MAX_VALUE_SIZE),
              help="Largest bulk string accepted (proto-max-bulk-len).")
@click.option("--max-query-buffer", default=_protocol.DEFAULT_MAX_QUERY_BUFFER,
              show_default=True, type=click.IntRange(min=1),
              help="Largest single request accepted (client-query-buffer-limit).")
@click.option("--replicaof", default=None, metavar="HOST:PORT",
              help="Replicate from this master (Redis or bitkv); see docs/replication.md. "
                   "Without it, a role persisted by CONFIG REWRITE applies.")
@click.option("--masterauth", envvar="BITKV_MASTERAUTH", default=None, metavar="SECRET",
              help="Password for the master (or set BITKV_MASTERAUTH).")
@click.option("--masteruser", default=None, metavar="USER",
              help="ACL user for the master (AUTH user password).")
@click.option("--master-tls", is_flag=True,
              help="Connect to the master over TLS (its certificate must be signed by "
                   "--master-tls-ca-cert, else --tls-ca-cert, else a system CA; "
                   "--tls-cert/--tls-key, if given, are presented as the client certificate).")
@click.option("--master-tls-ca-cert", type=click.Path(exists=True, dir_okay=False),
              default=None, help="CA certificate the master's TLS certificate must be signed by.")
@click.option("--repl-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds without a byte from the master before the replica reconnects "
                   "(default 60).")
@click.option("--replica-priority", type=click.IntRange(min=0), default=None,
              help="Sentinel's promotion priority (lower first; 0: never; default 100).")
@click.option("--replica-read-only", type=click.Choice(["yes", "no"]), default=None,
              help="Refuse writes from clients with READONLY while a replica (default yes).")
@click.option("--replica-announce-ip", default=None,
              help="The address the replica tells its master (REPLCONF ip-address).")
@click.option("--replica-announce-port", type=click.IntRange(0, 65535), default=None,
              help="The port the replica tells its master (default: the port it listens on).")
@click.option("--key-file", metavar="FILE", default=None,
              help=f"Encryption key of an encrypted store (32 raw bytes or 64 hex digits, mode "
                   f"0600). Default: ${KEY_FILE_ENV}, else the hex key in ${KEY_ENV}.")
@click.option("--loglevel", type=click.Choice(["debug", "verbose", "notice", "info", "warning",
                                               "error"], case_sensitive=False),
              default="notice", show_default=True,
              help="What to log: Redis's levels (notice = Python's INFO) or Python's.")
@click.option("--logfile", type=click.Path(dir_okay=False), default=None,
              help="Append the log to this file (reopened after logrotate moves it); "
                   "default: stderr.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve Prometheus metrics over HTTP on this port (0: any free port, "
                   "logged at startup). Needs the [metrics] extra (prometheus_client).")
@click.option("--metrics-bind", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="Address of the metrics endpoint. It has no password: anything but "
                   "loopback needs --protected-mode no.")
@click.option("--no-hiredis", is_flag=True, help="Parse requests in pure Python.")
@click.option("--no-uvloop", is_flag=True, help="Use the standard asyncio event loop.")
def serve(directory: str, port: int, bind: str, requirepass: str | None, protected_mode: str,
          tls_cert: str | None,
          tls_key: str | None, tls_ca_cert: str | None, sync_mode: str, sync_interval: float,
          maxclients: int, max_bulk_len: int, max_query_buffer: int, replicaof: str | None,
          masterauth: str | None, masteruser: str | None, master_tls: bool,
          master_tls_ca_cert: str | None, repl_timeout: float | None,
          replica_priority: int | None, replica_read_only: str | None,
          replica_announce_ip: str | None, replica_announce_port: int | None,
          key_file: str | None, loglevel: str, logfile: str | None,
          metrics_port: int | None, metrics_bind: str, no_hiredis: bool,
          no_uvloop: bool) -> None:
    """Serve the store in --dir over the Redis protocol (RESP2/RESP3).

    Works with redis-cli, redis-py, redis-benchmark and twemproxy. SIGTERM or SHUTDOWN
    syncs and closes the store.
    """
    encryption_key = load_key(key_file)
    try:
        config = ServerConfig(
            dir=directory, hosts=tuple(bind.split()), port=port, requirepass=requirepass,
            protected_mode=protected_mode == "yes", loglevel=loglevel, logfile=logfile,
            metrics_port=metrics_port, metrics_bind=metrics_bind,
            tls_cert=tls_cert, tls_key=tls_key, tls_ca_cert=tls_ca_cert, sync=sync_mode,
            sync_interval=sync_interval, maxclients=maxclients, max_bulk_len=max_bulk_len,
            max_query_buffer=max_query_buffer, replicaof=replicaof, masterauth=masterauth,
            masteruser=masteruser, master_tls=master_tls,
            master_tls_ca_cert=master_tls_ca_cert, repl_timeout=repl_timeout,
            replica_priority=replica_priority,
            replica_read_only=None if replica_read_only is None else replica_read_only == "yes",
            replica_announce_ip=replica_announce_ip,
            replica_announce_port=replica_announce_port, encryption_key=encryption_key,
            use_hiredis=False if no_hiredis else None, use_uvloop=False if no_uvloop else None)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        run_server(config)
    except bitkv.LockError as exc:
        # The library's hint (readonly=True) means nothing at a shell; a server needs the
        # write lock, so the way out is the other writer.
        holder = str(exc).split(";")[0]
        raise CliError(f"cannot serve {directory}: {holder}; stop that process first, or "
                       "serve another directory with --dir", EXIT_LOCKED) from None
    except bitkv.EncryptionError as exc:
        hint = ""
        if encryption_key is None:
            hint = f" (give its key with --key-file FILE, ${KEY_FILE_ENV} or ${KEY_ENV})"
        raise CliError(f"cannot serve {directory}: {exc}{hint}", EXIT_STORE) from None
    except (OSError, bitkv.Error) as exc:
        raise click.ClickException(f"cannot serve {directory}: {exc}") from None
