"""Real processes for the replication tests: redis-server, and `bitkv serve` (python -m
bitkv.server) on fixed loopback ports, each with its log in a file, always stopped."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

redis = pytest.importorskip("redis", reason="redis-py is needed for the server tests")

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None,
                                 reason="redis-server is not installed (Debian: redis-server)")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def caught_up(master: redis.Redis, replica: redis.Redis) -> bool:
    """The replica's link is up and it has applied everything the master has produced."""
    m = master.info("replication")["master_repl_offset"]
    r = replica.info("replication")
    return bool(r["master_link_status"] == "up" and r["slave_repl_offset"] >= m)


def wait_until(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition"
               ) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception as exc:  # a server still starting: try again
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last})"
                                                            if last else ""))


class Process:
    log_path: Path
    proc: subprocess.Popen[bytes]
    port: int

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, protocol=2, socket_timeout=10,
                           **kwargs)  # type: ignore[arg-type]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited 20 s later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class RedisProcess(Process):
    """Debian's redis-server, no persistence, on ``port``."""

    def __init__(self, workdir: Path, port: int | None = None, *args: str) -> None:
        assert REDIS_SERVER is not None
        self.port = port or free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"redis-{self.port}.log"
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(workdir), "--logfile", str(self.log_path),
             "--dbfilename", f"dump-{self.port}.rdb", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: self.client().ping(), 20, f"redis-server on {self.port}")


class BitkvProcess(Process):
    """``python -m bitkv.server`` on ``port`` serving ``directory``."""

    def __init__(self, directory: Path, port: int | None = None, *args: str) -> None:
        self.port = port or free_port()
        self.dir = directory
        self.log_path = directory.parent / f"bitkv-{self.port}.log"
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bitkv.server", "--dir", str(directory), "--port",
                 str(self.port), *args], stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"bitkv serve exited:\n{self.output()}")
            return bool(re.search(rb"Ready to accept connections",
                                  self.log_path.read_bytes()[start:]))

        try:
            wait_until(ready, 30, f"bitkv serve on {self.port}")
        except AssertionError:
            with contextlib.suppress(Exception):
                self.kill9()
            raise
