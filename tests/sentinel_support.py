"""Real Redis Sentinels for the tests: start N ``redis-sentinel`` processes on loopback that
monitor a given master, and stop them; plus :class:`CommandTap`, a recording TCP proxy that
shows what a client (Sentinel) sends to a server.

Tests import this module directly (``from sentinel_support import ...``; pytest puts
``tests/`` on ``sys.path``). Use the ``sentinels`` fixture of a test module, or
:func:`start_sentinels` and :meth:`Sentinels.stop` yourself. Without ``redis-sentinel`` on
PATH, :func:`require_sentinel` skips the test with a reason (Debian: ``apt-get install
redis-sentinel``).

Sentinel rewrites its configuration file (it records the other Sentinels it discovered, the
epochs, its own id), so each Sentinel gets a config file of its own in a writable directory.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from procs import free_ports, wait_until

from bitkv.server.protocol import PyParser

SENTINEL = "redis-sentinel"
MASTER_NAME = "mymaster"


def require_sentinel() -> str:
    """The path of ``redis-sentinel``; skips the calling test when it is not installed."""
    path = shutil.which(SENTINEL)
    if path is None:
        pytest.skip(f"{SENTINEL} is not on PATH; install it with: apt-get install -y "
                    "redis-sentinel")
    return path


@dataclass
class SentinelProcess:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes]

    @property
    def config_path(self) -> Path:
        return self.dir / "sentinel.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "sentinel.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Sentinels:
    """Running Sentinels that monitor :data:`MASTER_NAME`; stop them with :meth:`stop`."""

    master_host: str
    master_port: int
    processes: list[SentinelProcess] = field(default_factory=list)

    def client(self, i: int, **kwargs: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.processes[i].port, protocol=2,
                           socket_timeout=5, decode_responses=True, **kwargs)

    def master_state(self, i: int) -> dict[str, Any]:
        """``SENTINEL MASTER mymaster`` of Sentinel ``i`` as a dict (flags, num-other-...)."""
        with contextlib.closing(self.client(i)) as c:
            reply = c.execute_command("SENTINEL", "MASTER", MASTER_NAME)
        if isinstance(reply, dict):  # redis-py parses it for some versions
            return reply
        return dict(zip(reply[::2], reply[1::2], strict=True))

    def master_addr(self, i: int) -> tuple[str, int] | None:
        with contextlib.closing(self.client(i)) as c:
            reply = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        if not reply:
            return None
        return str(reply[0]), int(reply[1])

    def logs(self) -> str:
        return "\n".join(f"--- sentinel on port {p.port} ---\n{p.log()}"
                         for p in self.processes)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every Sentinel, then SIGKILL whichever has not exited after ``timeout``."""
        for p in self.processes:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.processes:
            try:
                p.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait(10)


def sentinel_config(port: int, directory: Path, master_host: str, master_port: int, *,
                    quorum: int, down_after_ms: int, failover_timeout_ms: int) -> str:
    return "\n".join([
        f"port {port}",
        "bind 127.0.0.1",
        "daemonize no",
        f'dir "{directory}"',
        f'logfile "{directory / "sentinel.log"}"',
        f"sentinel monitor {MASTER_NAME} {master_host} {master_port} {quorum}",
        f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}",
        f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}",
        f"sentinel parallel-syncs {MASTER_NAME} 1",
        "",
    ])


# 2 s, not 1: Sentinel pings each instance once a second, so with down-after at 1000 ms a
# master it has just switched to (new links, first PING a period away) could be judged down
# before it was ever pinged. That started a second failover, back to the old master as it
# restarted (test_sentinel_failover failed so, about one run in fifteen; the Sentinels' logs
# showed +sdown of the new master 1.02 s after +switch-master, -sdown 60 ms later).
DOWN_AFTER_MS = 2000


def start_sentinels(base_dir: Path, master_host: str, master_port: int, n: int = 3, *,
                    quorum: int = 2, down_after_ms: int = DOWN_AFTER_MS,
                    failover_timeout_ms: int = 3000, timeout: float = 15.0) -> Sentinels:
    """Start ``n`` Sentinels on free loopback ports, each with its own (writable) config file
    under ``base_dir/sentinel-<i>``, monitoring ``master_host:master_port`` as
    :data:`MASTER_NAME`; return once each answers PING. On failure, the ones started are
    stopped again."""
    binary = require_sentinel()
    sentinels = Sentinels(master_host, master_port)
    try:
        for i, port in enumerate(free_ports(n)):
            directory = base_dir / f"sentinel-{i}"
            directory.mkdir(parents=True)
            config = directory / "sentinel.conf"
            config.write_text(sentinel_config(
                port, directory, master_host, master_port, quorum=quorum,
                down_after_ms=down_after_ms, failover_timeout_ms=failover_timeout_ms))
            proc = subprocess.Popen([binary, str(config)], cwd=directory,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            sentinels.processes.append(SentinelProcess(port, directory, proc))
        for i, p in enumerate(sentinels.processes):
            def answers(i: int = i, p: SentinelProcess = p) -> bool:
                if p.proc.poll() is not None:
                    raise AssertionError(f"sentinel exited with {p.proc.returncode}:\n"
                                         f"{p.log()}")
                with contextlib.closing(sentinels.client(i)) as c:
                    return bool(c.ping())
            wait_until(answers, timeout, f"sentinel on port {p.port} to answer PING")
    except BaseException:
        sentinels.stop()
        raise
    return sentinels


@contextlib.contextmanager
def running_sentinels(base_dir: Path, master_host: str, master_port: int,
                      **kwargs: Any) -> Iterator[Sentinels]:
    sentinels = start_sentinels(base_dir, master_host, master_port, **kwargs)
    try:
        yield sentinels
    finally:
        sentinels.stop()


# -- a recording proxy -----------------------------------------------------------------------

@dataclass
class TappedCommand:
    connection: int  # which client connection (numbered from 1 in accept order)
    args: list[bytes]

    @property
    def name(self) -> str:
        """The command name, with the subcommand for CLIENT/CONFIG/... (``CLIENT SETNAME``)."""
        name = self.args[0].decode("utf-8", "replace").upper()
        if name in ("CLIENT", "CONFIG", "SENTINEL", "SCRIPT", "COMMAND", "PUBSUB") \
                and len(self.args) > 1:
            return f"{name} {self.args[1].decode('utf-8', 'replace').upper()}"
        return name


class CommandTap:
    """A TCP proxy on a free loopback port to ``upstream``, recording every command clients
    send through it (parsed with bitkv's own request parser). Point a client at ``port``
    instead of the server to see what it sends; ``commands`` is the record, in order."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.commands: list[TappedCommand] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._stopped = False
        self._connections = 0
        self._thread = threading.Thread(target=self._accept, name="command-tap", daemon=True)
        self._thread.start()

    def names(self) -> set[str]:
        with self._lock:
            return {c.name for c in self.commands}

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += 1
                number = self._connections
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, number), daemon=True,
                             name="command-tap-in").start()
            threading.Thread(target=self._pump, args=(server, client, 0), daemon=True,
                             name="command-tap-out").start()

    def _pump(self, src: socket.socket, dst: socket.socket, number: int) -> None:
        parser = PyParser() if number else None
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if parser is not None:
                    cmds = parser.feed(data)
                    with self._lock:
                        self.commands.extend(TappedCommand(number, c) for c in cmds)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stopped = True
        self.listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()


__all__ = [
    "MASTER_NAME",
    "CommandTap",
    "SentinelProcess",
    "Sentinels",
    "TappedCommand",
    "free_ports",
    "require_sentinel",
    "running_sentinels",
    "start_sentinels",
]

