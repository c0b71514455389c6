"""Full resync of collections: how long a replica takes to load a master's hashes, lists,
sets and sorted sets, and what the bitkv master's snapshot costs (CPU, extra memory).

    python scripts/bench_resync_collections.py --elements 1000000

The data: one hash of N fields (100-byte values), one list of N items (100 bytes), one set
and one sorted set of N/5 members. Written into a bitkv store directly (bitkv.structures)
and into a redis-server by pipelined commands. Then, each in turn, timed from REPLICAOF to
the replica's ``master_link_status:up`` with the master's offset acknowledged:

* bitkv master -> redis-server 7 replica;
* bitkv master -> bitkv replica;
* redis-server master -> bitkv replica.

And, in this process, ``write_snapshot`` of the bitkv store: CPU seconds and the growth of
anonymous memory (RssAnon) over the loaded index while it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import redis

import bitkv
from bitkv.server.master import write_snapshot
from bitkv.structures import HashIndex, ListIndex, SetIndex, Structures, ZSetIndex
from bitkv.structures.encoding import pack_position, pack_score

CHUNK = 100_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(cond, timeout: float = 600.0) -> None:
    end = time.time() + timeout
    while not cond():
        if time.time() > end:
            raise TimeoutError
        time.sleep(0.05)


def fill_store(path: str, n: int) -> None:
    with bitkv.open(path, sync="never") as db:
        s = Structures(db)
        for start in range(0, n, CHUNK):
            with s.edit(b"hash", HashIndex) as e:
                for i in range(start, min(n, start + CHUNK)):
                    e.put(b"field:%d" % i, b"v" * 100)
            with s.edit(b"list", ListIndex) as e:
                for i in range(start, min(n, start + CHUNK)):
                    e.put(pack_position(i), b"x" * 100)
        with s.edit(b"set", SetIndex) as e:
            for i in range(n // 5):
                e.put(b"member:%d" % i, b"")
        with s.edit(b"zset", ZSetIndex) as e:
            for i in range(n // 5):
                e.put(b"member:%d" % i, pack_score(i / 7))


def fill_redis(c: redis.Redis, n: int) -> None:
    for start in range(0, n, 1000):
        p = c.pipeline(transaction=False)
        end, small_end = min(n, start + 1000), min(n // 5, start + 1000)
        p.hset("hash", mapping={f"field:{i}": "v" * 100 for i in range(start, end)})
        p.rpush("list", *["x" * 100] * (end - start))
        if start < n // 5:
            p.sadd("set", *[f"member:{i}" for i in range(start, small_end)])
            p.zadd("zset", {f"member:{i}": i / 7 for i in range(start, small_end)})
        p.execute()


def start_bitkv(directory: str, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = open(directory + ".log", "ab")  # noqa: SIM115 - the process's own log
    proc = subprocess.Popen([sys.executable, "-m", "bitkv.server", "--dir", directory,
                             "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT)
    wait(lambda: _pings(port), 120)
    return proc, port


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], int]:
    os.makedirs(directory, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", directory],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait(lambda: _pings(port), 30)
    return proc, port


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port).ping())
    except redis.ConnectionError:
        return False


def cpu(proc: subprocess.Popen[bytes]) -> float:
    t = psutil.Process(proc.pid).cpu_times()
    return float(t.user + t.system)


def resync(master: tuple[subprocess.Popen[bytes], int],
           replica: tuple[subprocess.Popen[bytes], int]) -> str:
    """Wall seconds from REPLICAOF to caught up, and the CPU seconds each side spent (the
    machine may be shared: the CPU figures are the ones to compare)."""
    (mproc, master_port), (rproc, replica_port) = master, replica
    m, r = redis.Redis(port=master_port), redis.Redis(port=replica_port)
    mcpu, rcpu = cpu(mproc), cpu(rproc)
    began = time.time()
    r.execute_command("REPLICAOF", "127.0.0.1", str(master_port))

    def done() -> bool:
        info = r.info("replication")
        return (info.get("master_link_status") == "up"
                and info.get("slave_repl_offset", -1) >= m.info("replication")[
                    "master_repl_offset"])

    wait(done)
    wall = time.time() - began
    return (f"{wall:.2f} s wall, master {cpu(mproc) - mcpu:.2f} s CPU, replica "
            f"{cpu(rproc) - rcpu:.2f} s CPU")


def anon() -> int:
    with open("/proc/self/status") as f:
        m = re.search(r"RssAnon:\s+(\d+)", f.read())
    return int(m.group(1)) * 1024 if m else 0


def snapshot_cost(path: str) -> str:
    db = bitkv.open(path)
    s = Structures(db)
    base, peak, stop = anon(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], anon())
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    cpu = time.process_time()
    keys, size = write_snapshot(db, s, path + ".rdb", "0" * 40, 0)
    cpu = time.process_time() - cpu
    stop.set()
    t.join()
    os.unlink(path + ".rdb")
    db.close()
    return (f"snapshot: {keys} keys, {size / 1e6:.0f} MB RDB, {cpu:.2f} s CPU, "
            f"+{(peak[0] - base) / 2**20:.1f} MiB anonymous memory over the index")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--elements", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.elements
    work = tempfile.mkdtemp(prefix="bench-resync-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        master_dir = os.path.join(work, "master")
        fill_store(master_dir, n)
        print(snapshot_cost(master_dir), flush=True)
        master = start_bitkv(master_dir)
        procs.append(master[0])
        redis_replica = start_redis(os.path.join(work, "redis-replica"))
        procs.append(redis_replica[0])
        print(f"bitkv master -> redis-server replica: {resync(master, redis_replica)}",
              flush=True)
        bitkv_replica = start_bitkv(os.path.join(work, "bitkv-replica"))
        procs.append(bitkv_replica[0])
        print(f"bitkv master -> bitkv replica: {resync(master, bitkv_replica)}", flush=True)
        redis.Redis(port=bitkv_replica[1]).execute_command("REPLICAOF", "NO", "ONE")
        redis_master = start_redis(os.path.join(work, "redis-master"))
        procs.append(redis_master[0])
        fill_redis(redis.Redis(port=redis_master[1]), n)
        bitkv_replica2 = start_bitkv(os.path.join(work, "bitkv-replica2"))
        procs.append(bitkv_replica2[0])
        print(f"redis-server master -> bitkv replica: {resync(redis_master, bitkv_replica2)}",
              flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
