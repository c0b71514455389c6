"""Helpers of the memcached-protocol tests: a ``bitkv serve --memcached-port`` process, Debian's
memcached, and a raw socket that sends bytes and reads replies until a sentinel."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from procs import free_port, stop_process, wait_until

MEMCACHED = shutil.which("memcached") or (
    "/usr/bin/memcached" if Path("/usr/bin/memcached").exists() else None)
SENTINEL = b"version\r\n"  # sent after a request: its reply marks the end of the replies


class BitkvMemcached:
    """``python -m bitkv.server`` with the memcached protocol on a free port."""

    def __init__(self, directory: Path, *args: str) -> None:
        self.dir = directory
        self.args = args
        self.log_path = directory.parent / f"{directory.name}.log"
        self.start()

    def start(self) -> None:
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bitkv.server", "--dir", str(self.dir), "--port", "0",
                 "--memcached-port", "0", *self.args], stdout=log, stderr=subprocess.STDOUT)
        found: dict[str, int] = {}

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"bitkv serve exited:\n{self.output()}")
            text = self.log_path.read_bytes()[start:]
            mc = re.search(rb"memcached text protocol on \S+ port (\d+)", text)
            redis_port = re.search(rb"Ready to accept connections on port (\d+)", text)
            if mc and redis_port:
                found["mc"], found["redis"] = int(mc.group(1)), int(redis_port.group(1))
                return True
            return False

        wait_until(ready, 30, "bitkv serve --memcached-port")
        self.port, self.redis_port = found["mc"], found["redis"]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        stop_process(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()


class DebianMemcached:
    """Debian's /usr/bin/memcached on a free loopback port (64 MB, no UDP)."""

    def __init__(self) -> None:
        assert MEMCACHED is not None
        self.port = free_port()
        self.proc = subprocess.Popen(
            [MEMCACHED, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64",
             *(["-u", "root"] if os.geteuid() == 0 else [])],  # as root, memcached needs -u
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

        def up() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_until(up, 20, f"memcached on {self.port}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def exchange(port: int, request: bytes, timeout: float = 5.0, sentinel: bool = True) -> bytes:
    """Send ``request`` then the sentinel on a new connection; return every byte received
    before the sentinel's reply (or until the server closed, then ending in ``<EOF>``).
    Without the sentinel, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request + SENTINEL if sentinel else request)
        got = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(rb"VERSION [^\r\n]*\r\n\Z", got) if sentinel else None
            if match:
                return got[:match.start()]
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return got + b"<EOF>"
            if not chunk:
                return got + b"<EOF>"
            got += chunk
        raise AssertionError(f"no reply to the sentinel after {request[:80]!r}: {got[:200]!r}")
