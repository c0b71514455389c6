"""`bitkv serve` as a process: clean shutdown on SIGTERM and SHUTDOWN, durability with
``--sync always`` across ``kill -9``, and the command line."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

redis = pytest.importorskip("redis", reason="redis-py is needed for the server tests")

import bitkv  # noqa: E402


class ServerProcess:
    """``python -m bitkv.server`` on a free loopback port, log in a file."""

    def __init__(self, tmp_path, *args: str) -> None:
        self.dir = str(tmp_path / "db")
        self.log_path = tmp_path / "server.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bitkv.server", "--dir", self.dir, "--port", "0", *args],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while True:
            match = re.search(rb"Ready to accept connections on port (\d+)",
                              self.log_path.read_bytes())
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise AssertionError(f"server did not start:\n{self.output()}")
            time.sleep(0.02)

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, protocol=2, socket_timeout=10,
                           **kwargs)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


def test_sigterm_shuts_down_cleanly_and_data_is_there_on_reopen(tmp_path):
    srv = ServerProcess(tmp_path)
    try:
        r = srv.client()
        pipe = r.pipeline(transaction=False)
        for i in range(5000):
            pipe.set(f"key:{i}", f"value:{i}")
        pipe.execute()
        r.set("ttl", "v", ex=1000)
        r.incrby("counter", 42)
        idle = srv.client()
        idle.ping()  # a second, idle connection open at shutdown
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.wait() == 0
        out = srv.output()
        assert "received SIGTERM" in out
        assert "store synced and closed" in out
        assert "ready to exit" in out
    finally:
        srv.stop()
    with bitkv.open(srv.dir) as db:  # the lock was released: it opens at once
        assert len(db) == 5002
        assert db.get(b"key:4999") == b"value:4999"
        assert db.get(b"counter") == b"42"
        assert 990 < db.ttl(b"ttl") <= 1000
        assert db.recovery_report.truncated_bytes == 0


def test_sigterm_while_clients_are_writing(tmp_path):
    srv = ServerProcess(tmp_path)
    try:
        r = srv.client(retry=None)
        acknowledged = 0
        pipe = r.pipeline(transaction=False)
        for i in range(200):
            pipe.set(f"k{i}", "v")
        pipe.execute()
        acknowledged = 200
        srv.proc.send_signal(signal.SIGTERM)
        try:
            for i in range(200, 100_000):
                r.set(f"k{i}", "v")
                acknowledged = i + 1
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            pass
        assert srv.wait() == 0
    finally:
        srv.stop()
    with bitkv.open(srv.dir) as db:
        for i in range(acknowledged):
            assert db.get(f"k{i}".encode()) == b"v", i


def test_sync_always_survives_kill_9(tmp_path):
    srv = ServerProcess(tmp_path, "--sync", "always")
    try:
        r = srv.client()
        assert r.config_get("appendfsync") == {"appendfsync": "always"}
        pipe = r.pipeline(transaction=False)
        for i in range(300):
            pipe.set(f"k{i}", f"v{i}")
        pipe.execute()
        for i in range(300, 350):
            r.set(f"k{i}", f"v{i}")
        r.mset({"m1": "a", "m2": "b"})
        assert r.incr("n") == 1
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.wait()
    finally:
        srv.stop()
    with bitkv.open(srv.dir) as db:
        assert len(db) == 353
        assert db.get(b"k349") == b"v349"


def test_shutdown_command(tmp_path):
    srv = ServerProcess(tmp_path)
    try:
        r = srv.client(retry=None)
        r.set("k", "v")
        try:
            r.shutdown()
        except redis.exceptions.ConnectionError:
            pass
        assert srv.wait() == 0
    finally:
        srv.stop()
    with bitkv.open(srv.dir) as db:
        assert db.get(b"k") == b"v"


def test_second_server_on_the_same_store_is_refused(tmp_path):
    srv = ServerProcess(tmp_path)
    try:
        other = subprocess.run(
            [sys.executable, "-m", "bitkv.server", "--dir", srv.dir, "--port", "0"],
            capture_output=True, text=True, timeout=30)
        assert other.returncode != 0
        assert "cannot serve" in other.stderr
        assert srv.client().ping() is True
    finally:
        srv.stop()


def test_cli_help_and_bad_options(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bitkv.server", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for option in ("--dir", "--port", "--bind", "--requirepass", "--tls-cert", "--tls-key",
                   "--sync", "BITKV_REQUIREPASS"):
        assert option in out.stdout
    bad = subprocess.run([sys.executable, "-m", "bitkv.server", "--dir", str(tmp_path / "d"),
                          "--tls-cert", __file__], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert "TLS needs both" in bad.stderr
