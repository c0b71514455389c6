"""A sharded deployment: three `bitkv serve` processes behind nutcracker (twemproxy), started
with scripts/cluster.py, all on loopback. Skipped when nutcracker is not installed."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from procs import free_ports

redis = pytest.importorskip("redis", reason="redis-py is needed for the cluster test")

pytestmark = [pytest.mark.skipif(
    shutil.which("nutcracker") is None,
    reason="nutcracker (twemproxy) is not on PATH; install it with: "
           "apt-get install -y nutcracker"),
              pytest.mark.engine_independent]  # CI's pure-Python run skips it

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cluster.py"


def no_client_setinfo() -> dict:
    """twemproxy closes connections that send commands it does not know (CLIENT SETINFO)."""
    params = inspect.signature(redis.Redis.__init__).parameters
    if "driver_info" in params:
        return {"driver_info": None}
    if "lib_name" in params:
        return {"lib_name": None, "lib_version": None}
    return {}


def cluster(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(workdir), *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"cluster.py {args} failed:\n{result.stdout}{result.stderr}"
    return result


@pytest.fixture
def running(tmp_path):
    ports = free_ports(5)
    servers, proxy, stats = ports[:3], ports[3], ports[4]
    cluster(tmp_path, "start", "--ports", ",".join(map(str, servers)), "--proxy-port",
            str(proxy), "--stats-port", str(stats))
    try:
        yield tmp_path, servers, proxy
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "--dir", str(tmp_path), "stop"],
                       capture_output=True, timeout=120)


def test_keys_are_sharded_and_survive_a_server_restart(running):
    workdir, servers, proxy_port = running
    proxy = redis.Redis(host="127.0.0.1", port=proxy_port, protocol=2, socket_timeout=10,
                        **no_client_setinfo())
    direct = [redis.Redis(host="127.0.0.1", port=p, protocol=2, socket_timeout=10)
              for p in servers]
    keys = {f"user:{i}": f"value-{i}" for i in range(600)}
    pipe = proxy.pipeline(transaction=False)
    for k, v in keys.items():
        pipe.set(k, v)
    assert pipe.execute() == [True] * len(keys)
    assert proxy.set("session", "s", ex=500) is True

    # Everything reads back through the proxy (MGET is split across servers by nutcracker).
    names = list(keys)
    assert proxy.mget(names[:100]) == [keys[k].encode() for k in names[:100]]
    assert proxy.get("user:599") == b"value-599"
    assert 490 <= proxy.ttl("session") <= 500

    # Each server holds a share, and together exactly the keys written.
    shares = [d.dbsize() for d in direct]
    assert sum(shares) == len(keys) + 1
    assert all(share >= len(keys) // 3 // 3 for share in shares), shares
    held = [set(k.decode() for k in d.scan_iter(count=1000)) for d in direct]
    assert set().union(*held) == set(keys) | {"session"}
    assert not (held[0] & held[1]) and not (held[1] & held[2]) and not (held[0] & held[2])

    # Restart one server: it comes back with its keys, and the proxy serves them again.
    out = cluster(workdir, "restart-server", "2")
    assert "restarted bitkv-2" in out.stdout
    direct[1] = redis.Redis(host="127.0.0.1", port=servers[1], protocol=2, socket_timeout=10)
    assert set(k.decode() for k in direct[1].scan_iter(count=1000)) == held[1]
    for k in list(held[1])[:50]:
        if k != "session":
            assert proxy.get(k) == keys[k].encode()
    assert proxy.delete(*names[:10]) == 10  # split across servers by nutcracker
    assert [proxy.exists(k) for k in names[:20]] == [0] * 10 + [1] * 10

    status = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(workdir), "status"],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout
    assert status.stdout.count(" up") == 4


@pytest.mark.skipif(shutil.which("redis-sentinel") is None,
                    reason="redis-sentinel is not installed (Debian: redis-sentinel)")
def test_shards_with_replicas_and_sentinels(tmp_path):
    ports = free_ports(9)
    servers, replicas, sentinels, proxy, stats = (ports[:2], ports[2:4], ports[4:7], ports[7],
                                                  ports[8])
    cluster(tmp_path, "start", "--ports", ",".join(map(str, servers)), "--replicas", "1",
            "--replica-ports", ",".join(map(str, replicas)), "--sentinels", "3",
            "--sentinel-ports", ",".join(map(str, sentinels)), "--proxy-port", str(proxy),
            "--stats-port", str(stats))
    try:
        client = redis.Redis(host="127.0.0.1", port=proxy, protocol=2, socket_timeout=10,
                             **no_client_setinfo())
        for i in range(200):
            client.set(f"key:{i}", f"v{i}")
        held = 0
        for master_port, replica_port in zip(servers, replicas, strict=True):
            master = redis.Redis(host="127.0.0.1", port=master_port, socket_timeout=10)
            assert master.execute_command("WAIT", 1, 10000) == 1
            replica = redis.Redis(host="127.0.0.1", port=replica_port, socket_timeout=10)
            assert replica.info("replication")["master_port"] == master_port
            assert replica.dbsize() == master.dbsize() > 0
            held += replica.dbsize()
        assert held == 200  # every key is on exactly one shard, and on its replica
        sentinel = redis.Redis(host="127.0.0.1", port=sentinels[0], socket_timeout=10,
                               decode_responses=True)
        names = {m["name"]: m for m in sentinel.sentinel_masters().values()}
        assert set(names) == {"bitkv-1", "bitkv-2"}
        status = subprocess.run([sys.executable, str(SCRIPT), "--dir", str(tmp_path),
                                 "status"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count(" up") == 8  # proxy, 2 masters, 2 replicas, 3 sentinels
    finally:
        subprocess.run([sys.executable, str(SCRIPT), "--dir", str(tmp_path), "stop"],
                       capture_output=True, timeout=120)
