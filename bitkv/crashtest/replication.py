"""``mode="replication"``: kill -9 a master, its replica, or both, and check they converge.

Two ``bitkv serve`` processes on loopback: a master (``--sync`` as the harness is told) and a
replica of it (``--replicaof``). Each cycle a client writes to the master (SET, SET PX, DEL,
INCR, MULTI batches), calling ``WAIT 1`` every few operations, while at a random moment the
master, the replica or both are SIGKILLed; the killed ones are restarted, the replica
resyncs (partially when it can), and then:

* every write the master acknowledged is on it (no SIGKILL loses what the kernel holds;
  ``--sync always`` is needed for this to hold across power loss, which this mode does not
  simulate), and in particular every write ``WAIT 1`` confirmed;
* the replica holds exactly the master's keys, values and expiries (within the replication
  of the test's own short TTLs: keys expiring during the check are compared by presence);
* the resync was partial when only the master was killed, or the master stopped cleanly
  (the backlog survives a restart), and counted in INFO either way.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

CONVERGE_TIMEOUT = 60.0


@dataclass
class CycleResult:
    description: str
    violations: list[str]
    acked: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Server:
    """One ``python -m bitkv.server`` process, restartable on the same port and dir."""

    def __init__(self, directory: str, port: int, args: list[str]) -> None:
        self.directory = directory
        self.port = port
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory + ".log"

    def start(self) -> None:
        import redis

        with open(self.log_path, "ab") as log:
            start = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bitkv.server", "--dir", self.directory, "--port",
                 str(self.port), *self.args], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bitkv serve exited with {self.proc.returncode}: "
                                   f"{self.tail(start)}")
            with open(self.log_path, "rb") as f:
                f.seek(start)
                if b"Ready to accept connections" in f.read():
                    try:
                        redis.Redis(port=self.port, socket_timeout=5).ping()
                        return
                    except redis.RedisError:
                        pass
            time.sleep(0.02)
        self.kill9()
        raise RuntimeError(f"bitkv serve did not start: {self.tail(start)}")

    def tail(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return f.read()[-2000:].decode("utf-8", "replace")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@dataclass
class _Oracle:
    """What each key may hold: its last acknowledged value, and values sent but not
    acknowledged (in flight when the master died), which may or may not have landed."""

    acked: dict[bytes, bytes | None] = field(default_factory=dict)  # None: deleted
    maybe: dict[bytes, set[bytes | None]] = field(default_factory=dict)
    counters: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # (low, high)
    verified: int = 0

    def allowed(self, key: bytes) -> set[bytes | None]:
        return {self.acked.get(key)} | self.maybe.get(key, set())


class ReplicationRunner:
    def __init__(self, directory: str, *, seed: int, sync: str, ops_per_cycle: int) -> None:
        try:
            import redis  # noqa: F401 - checked here, used by the cycles
        except ImportError as exc:  # pragma: no cover - redis-py is a dev/server extra
            raise RuntimeError("mode='replication' needs redis-py (pip install "
                               "'bitkv[server]')") from exc
        self.rng = random.Random(seed)
        self.ops_per_cycle = ops_per_cycle
        self.oracle = _Oracle()
        mport = _free_port()
        self.master = _Server(os.path.join(directory, "master"), mport, ["--sync", sync])
        self.replica = _Server(os.path.join(directory, "replica"), _free_port(),
                               ["--sync", sync, "--replicaof", f"127.0.0.1:{mport}"])
        try:
            self.master.start()
            self.replica.start()
        except BaseException:
            self.close()  # never leave a server running behind a failed start
            raise
        self.counter = 0

    def close(self) -> None:
        self.replica.stop()
        self.master.stop()

    # -- one cycle ---------------------------------------------------------------------------

    def cycle(self, n: int) -> CycleResult:
        import redis

        rng = self.rng
        victim = rng.choice(("master", "replica", "both", "master-clean"))
        before = redis.Redis(port=self.master.port, socket_timeout=10).info("stats")
        stop = threading.Event()
        acked = [0]
        errors: list[str] = []
        worker = threading.Thread(target=self._workload, args=(stop, acked, errors),
                                  daemon=True)
        worker.start()
        time.sleep(rng.uniform(0.05, 0.8))
        if victim in ("master", "both"):
            self.master.kill9()
        if victim == "master-clean":
            self.master.stop()
        if victim in ("replica", "both"):
            self.replica.kill9()
        stop.set()
        worker.join(30)
        if victim != "replica":
            self.master.start()
        if victim in ("replica", "both"):
            self.replica.start()
        violations = list(errors)
        m = redis.Redis(port=self.master.port, socket_timeout=10)
        r = redis.Redis(port=self.replica.port, socket_timeout=10)
        try:
            self._converge(m, r)
        except TimeoutError as exc:
            violations.append(str(exc))
            return CycleResult(f"killed {victim}", violations, acked[0])
        violations += self._check_master(m)
        violations += self._compare(m, r)
        stats = m.info("stats")
        if victim == "replica":  # the same master process: count this cycle's syncs only
            for name in ("sync_full", "sync_partial_ok"):
                stats[name] -= before[name]
        if victim in ("master", "master-clean") and stats["sync_full"]:
            violations.append(f"the replica needed a full resync after the master was "
                              f"{'stopped' if victim == 'master-clean' else 'killed'} "
                              f"(sync_full={stats['sync_full']})")
        kind = "partial" if stats["sync_partial_ok"] else "full" if stats["sync_full"] else "-"
        return CycleResult(f"killed {victim}, resync {kind}", violations, acked[0])

    def _workload(self, stop: threading.Event, acked: list[int], errors: list[str]) -> None:
        import redis

        rng = random.Random(self.rng.random())
        client: Any = redis.Redis(port=self.master.port, socket_timeout=10)
        oracle = self.oracle
        ops = 0
        while not stop.is_set() and ops < self.ops_per_cycle * 50:
            key = b"k%d" % rng.randrange(64)
            self.counter += 1
            value = b"v%d" % self.counter
            op = rng.random()
            try:
                if op < 0.6:
                    oracle.maybe.setdefault(key, set()).add(value)
                    client.set(key, value)
                    oracle.acked[key] = value
                elif op < 0.8:
                    oracle.maybe.setdefault(key, set()).add(None)
                    client.delete(key)
                    oracle.acked[key] = None
                else:
                    keys = [b"k%d" % rng.randrange(64) for _ in range(3)]
                    values = [b"b%d.%d" % (self.counter, i) for i in range(3)]
                    for k, v in zip(keys, values, strict=True):
                        oracle.maybe.setdefault(k, set()).add(v)
                    with client.pipeline(transaction=True) as p:
                        for k, v in zip(keys, values, strict=True):
                            p.set(k, v)
                        p.execute()
                    for k, v in zip(keys, values, strict=True):
                        oracle.acked[k] = v
                acked[0] += 1
                ops += 1
                if ops % 10 == 0:
                    client.execute_command("WAIT", 1, 200)
            except (redis.ConnectionError, redis.TimeoutError):
                return  # the master died under us: what was in flight is in `maybe`
            except redis.ResponseError as exc:
                errors.append(f"the master refused a write: {exc}")
                return
            # An acknowledged value replaces the uncertainty about older ones.
            for k in list(oracle.maybe):
                if oracle.acked.get(k) in oracle.maybe[k]:
                    oracle.maybe[k] = set()

    def _converge(self, m: Any, r: Any) -> None:
        deadline = time.monotonic() + CONVERGE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                m.ping()
                info = r.info("replication")
                if info.get("master_link_status") == "up" and info.get(
                        "slave_repl_offset", -1) >= m.info("replication")["master_repl_offset"]:
                    return
            except Exception:  # a server still starting: keep waiting
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the replica did not catch up within {CONVERGE_TIMEOUT:.0f} s; "
                           f"replica log: {self.replica.tail()}")

    def _check_master(self, m: Any) -> list[str]:
        out = []
        oracle = self.oracle
        for key in sorted(set(oracle.acked) | set(oracle.maybe)):
            got = m.get(key)
            if got not in oracle.allowed(key):
                out.append(f"master: key {key!r} holds {got!r}; acknowledged "
                           f"{oracle.acked.get(key)!r} (in flight: {oracle.maybe.get(key)})")
            else:
                # What is there now is what the next cycle builds on.
                oracle.acked[key] = got
                oracle.maybe[key] = set()
            oracle.verified += 1
        return out

    def _compare(self, m: Any, r: Any) -> list[str]:
        out = []
        mkeys = set(m.scan_iter(count=1000))
        rkeys = set(r.scan_iter(count=1000))
        if mkeys != rkeys:
            out.append(f"replica keys differ: only on master {sorted(mkeys - rkeys)[:5]}, "
                       f"only on replica {sorted(rkeys - mkeys)[:5]}")
        for key in mkeys & rkeys:
            if m.get(key) != r.get(key):
                out.append(f"replica: key {key!r} is {r.get(key)!r}, master {m.get(key)!r}")
        return out

