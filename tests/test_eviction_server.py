"""Cache mode through a real ``bitkv serve`` process: --max-bytes/--eviction, CONFIG SET
maxmemory/maxmemory-policy, INFO's maxmemory and evicted_keys, Redis's OOM error."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis
from procs import BitkvProcess


def _info(client: redis.Redis) -> dict[str, object]:
    return client.info("all")  # type: ignore[return-value]


def test_serve_bounds_the_store_and_config_set_changes_the_bound(tmp_path):
    directory = tmp_path / "cache"
    server = BitkvProcess(directory, None, "--max-bytes", "64kb", "--eviction", "allkeys-lru",
                          "--sync", "never")
    try:
        client = server.client()
        assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-lru"}
        pipe = client.pipeline(transaction=False)
        for i in range(2000):  # pipelined SETs are written as batches
            pipe.set(b"k%04d" % i, b"x" * 100)
        assert all(pipe.execute())
        for i in range(200):
            client.set(b"s%04d" % i, b"y" * 100)
        info = _info(client)
        assert info["maxmemory"] == 64 * 1024 and info["maxmemory_policy"] == "allkeys-lru"
        assert int(info["evicted_keys"]) > 1500  # type: ignore[call-overload]
        assert int(info["bitkv_live_bytes"]) <= 64 * 1024  # type: ignore[call-overload]

        assert client.config_set("maxmemory-policy", "noeviction")
        with pytest.raises(redis.exceptions.OutOfMemoryError, match="noeviction"):
            client.set(b"new", b"z" * 200)
        assert client.get(b"new") is None
        assert client.get(b"s0199") == b"y" * 100  # nothing stored was lost
        with pytest.raises(redis.exceptions.ResponseError, match="eviction must be one of"):
            client.config_set("maxmemory-policy", "allkeys-fifo")
        with pytest.raises(redis.exceptions.ResponseError, match="not a size"):
            client.config_set("maxmemory", "lots")
        assert client.config_set("maxmemory", "32kb")  # noeviction: over it, writes fail
        assert client.config_set("maxmemory-policy", "allkeys-random")
        assert int(_info(client)["bitkv_live_bytes"]) <= 32 * 1024  # type: ignore[call-overload]
        assert client.config_set("maxmemory", "1mb")
        assert client.set(b"new", b"z" * 200)
    finally:
        server.stop()
    # The bound and the policy outlive the server: a restart without flags keeps them.
    server = BitkvProcess(directory, None, "--sync", "never")
    try:
        client = server.client()
        assert client.config_get("maxmemory") == {"maxmemory": str(1024**2)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "allkeys-random"}
        assert client.get(b"new") == b"z" * 200
    finally:
        server.stop()


def test_serve_refuses_a_bad_size():
    run = subprocess.run([sys.executable, "-m", "bitkv.server", "--max-bytes", "2tb"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "--max-bytes" in run.stderr and "not a size" in run.stderr
