#!/usr/bin/env python3
"""Run a sharded, replicated bitkv deployment on loopback: N ``bitkv serve`` masters behind
nutcracker, each with R ``bitkv serve --replicaof`` replicas, watched by S redis-sentinels.

nutcracker (twemproxy, Debian package ``nutcracker``) speaks RESP to clients and shards keys
over the servers with consistent hashing (ketama, md5). Servers are named in its
configuration (``bitkv-1`` ...), so the key -> server mapping depends on the names, not on
ports: a server restarted elsewhere keeps its keys. See docs/cluster.md.

    scripts/cluster.py start --servers 3 --dir /tmp/bitkv-cluster   # ports 7001-7003, 22121
    scripts/cluster.py start --servers 3 --replicas 1 --sentinels 3 --dir /tmp/bitkv-cluster
        # + replicas on 7101-7103 (7201-... for a second), sentinels on 26379-26381 watching
        # masters named bitkv-1 ... (see docs/replication.md)
    redis-cli -p 22121 set greeting hello
    scripts/cluster.py status --dir /tmp/bitkv-cluster
    scripts/cluster.py restart-server 2 --dir /tmp/bitkv-cluster
    scripts/cluster.py stop --dir /tmp/bitkv-cluster

Everything binds 127.0.0.1. The state (ports, pids) is kept in DIR/cluster.json; ``stop``
only signals processes recorded there whose command line still matches.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"


def wait_for_port(port: int, proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process {proc.args!r} exited with {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing is listening on {HOST}:{port} after {timeout:.0f}s")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited, unreaped child) is not alive.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def stop_pid(pid: int, marker: str, timeout: float = 30.0) -> bool:
    """SIGTERM ``pid`` if its command line contains ``marker``; wait for it to exit."""
    if not alive(pid) or marker not in cmdline(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    try:  # reap it if it is our child (restart-server in the same process)
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


class Cluster:
    def __init__(self, directory: str) -> None:
        self.dir = Path(directory).resolve()
        self.state_path = self.dir / "cluster.json"

    def load(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            raise SystemExit(f"no cluster in {self.dir} (no cluster.json)") from None

    def save(self, state: dict) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)

    def server_command(self, state: dict, server: dict) -> list[str]:
        cmd = [state["python"], "-m", "bitkv.server", "--dir", server["data"], "--port",
               str(server["port"]), "--bind", HOST, "--sync", state["sync"]]
        if server.get("replicaof"):
            cmd += ["--replicaof", f"{HOST}:{server['replicaof']}"]
            if state.get("requirepass"):
                cmd += ["--masterauth", state["requirepass"]]
        return cmd

    def start_server(self, state: dict, index: int) -> None:
        self.start_process(state, state["servers"][index])

    def start_process(self, state: dict, server: dict) -> None:
        log = open(server["log"], "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(self.server_command(state, server), stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=self.env(state))
        log.close()
        server["pid"] = proc.pid
        wait_for_port(server["port"], proc)

    def start_sentinel(self, state: dict, sentinel: dict, sentinel_bin: str) -> None:
        """redis-sentinel with its own (writable: Sentinel rewrites it) config file."""
        quorum = len(state["sentinels"]) // 2 + 1
        lines = [f"port {sentinel['port']}", f"bind {HOST}", f"dir {self.dir}",
                 f"logfile {sentinel['log']}", "protected-mode no"]
        for s in state["servers"]:
            lines += [f"sentinel monitor {s['name']} {HOST} {s['port']} {quorum}",
                      f"sentinel down-after-milliseconds {s['name']} "
                      f"{state['down_after_ms']}",
                      f"sentinel failover-timeout {s['name']} {state['failover_timeout_ms']}"]
            if state.get("requirepass"):
                lines.append(f"sentinel auth-pass {s['name']} {state['requirepass']}")
        Path(sentinel["config"]).write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen([sentinel_bin, sentinel["config"]], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        sentinel["pid"] = proc.pid
        wait_for_port(sentinel["port"], proc)

    def env(self, state: dict) -> dict:
        env = dict(os.environ)
        if state.get("requirepass"):
            env["BITKV_REQUIREPASS"] = state["requirepass"]
        return env

    def write_nutcracker_config(self, state: dict) -> Path:
        lines = [
            "bitkv:",
            f"  listen: {HOST}:{state['proxy_port']}",
            "  hash: md5",  # ketama + md5: even shares (fnv1a_64 gave 47%/33%/20%)
            "  hash_tag: \"{}\"",
            "  distribution: ketama",
            "  redis: true",
            "  auto_eject_hosts: false",
            "  timeout: 5000",
            "  server_connections: 1",
            "  preconnect: true",
        ]
        if state.get("requirepass"):
            lines.append(f"  redis_auth: {state['requirepass']}")
        lines.append("  servers:")
        for s in state["servers"]:
            lines.append(f"    - {HOST}:{s['port']}:1 {s['name']}")
        path = self.dir / "nutcracker.yml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, args: argparse.Namespace) -> None:
        nutcracker = shutil.which(args.nutcracker)
        if nutcracker is None:
            raise SystemExit(f"{args.nutcracker} not found; install it: "
                             "apt-get install -y nutcracker")
        probe = subprocess.run([args.python, "-c", "import bitkv.server"], capture_output=True,
                               text=True)
        if probe.returncode != 0:
            raise SystemExit(f"{args.python} cannot import bitkv.server; run this script with "
                             "the interpreter that has bitkv installed, or pass --python:\n"
                             + probe.stderr.strip().splitlines()[-1])
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.state_path.exists():
            old = json.loads(self.state_path.read_text())
            if any(alive(s.get("pid", 0)) for s in self.processes(old)):
                raise SystemExit(f"a cluster is already running in {self.dir}; stop it first")
        sentinel_bin = shutil.which(args.sentinel) if args.sentinels else None
        if args.sentinels and sentinel_bin is None:
            raise SystemExit(f"{args.sentinel} not found; install it: "
                             "apt-get install -y redis-sentinel")
        if args.ports:
            ports = [int(p) for p in args.ports.split(",")]
        else:
            ports = [args.base_port + i for i in range(args.servers)]
        replica_ports = [int(p) for p in args.replica_ports.split(",")] \
            if args.replica_ports else []
        sentinel_ports = [int(p) for p in args.sentinel_ports.split(",")] \
            if args.sentinel_ports else []
        if replica_ports and len(replica_ports) != len(ports) * args.replicas:
            raise SystemExit("--replica-ports needs servers x replicas ports")
        if sentinel_ports and len(sentinel_ports) != args.sentinels:
            raise SystemExit("--sentinel-ports needs one port per sentinel")
        state = {
            "python": args.python,
            "sync": args.sync,
            "proxy_port": args.proxy_port,
            "stats_port": args.stats_port,
            "requirepass": args.requirepass or "",
            "servers": [],
            "replicas": [],
            "sentinels": [],
            "down_after_ms": args.down_after_ms,
            "failover_timeout_ms": args.failover_timeout_ms,
        }
        for i, port in enumerate(ports, start=1):
            state["servers"].append({
                "name": f"bitkv-{i}",
                "port": port,
                "data": str(self.dir / f"server-{i}"),
                "log": str(self.dir / f"server-{i}.log"),
                "pid": 0,
            })
            for j in range(1, args.replicas + 1):
                state["replicas"].append({
                    "name": f"bitkv-{i}-replica-{j}",
                    "port": (replica_ports.pop(0) if replica_ports else port + 100 * j),
                    "replicaof": port,
                    "data": str(self.dir / f"server-{i}-replica-{j}"),
                    "log": str(self.dir / f"server-{i}-replica-{j}.log"),
                    "pid": 0,
                })
        for k in range(args.sentinels):
            port = sentinel_ports[k] if sentinel_ports else args.sentinel_base_port + k
            state["sentinels"].append({
                "name": f"sentinel-{k + 1}", "port": port, "pid": 0,
                "config": str(self.dir / f"sentinel-{port}.conf"),
                "log": str(self.dir / f"sentinel-{port}.log"),
            })
        self.save(state)
        try:
            for i in range(len(ports)):
                self.start_server(state, i)
                self.save(state)
            for replica in state["replicas"]:
                self.start_process(state, replica)
                self.save(state)
            for sentinel in state["sentinels"]:
                assert sentinel_bin is not None
                self.start_sentinel(state, sentinel, sentinel_bin)
                self.save(state)
            config = self.write_nutcracker_config(state)
            check = subprocess.run([nutcracker, "-t", "-c", str(config)], capture_output=True,
                                   text=True)
            if check.returncode != 0:
                raise SystemExit(f"nutcracker rejected {config}:\n{check.stderr}")
            proc = subprocess.Popen(
                [nutcracker, "-c", str(config), "-s", str(args.stats_port), "-a", HOST,
                 "-o", str(self.dir / "nutcracker.log"), "-v", "5"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
            state["nutcracker_pid"] = proc.pid
            self.save(state)
            wait_for_port(args.proxy_port, proc)
        except BaseException:
            self.stop()
            raise
        servers = ", ".join(f"{s['name']}={HOST}:{s['port']}" for s in state["servers"])
        extra = ""
        if state["replicas"]:
            extra += "; replicas " + ", ".join(f"{HOST}:{r['port']}" for r in state["replicas"])
        if state["sentinels"]:
            extra += "; sentinels " + ", ".join(f"{HOST}:{s['port']}"
                                                for s in state["sentinels"])
        print(f"cluster up: proxy {HOST}:{args.proxy_port} (stats {HOST}:{args.stats_port}); "
              f"servers {servers}{extra}; state in {self.state_path}")

    @staticmethod
    def processes(state: dict) -> list[dict]:
        return [*state["servers"], *state.get("replicas", []), *state.get("sentinels", [])]

    def stop(self) -> None:
        state = self.load()
        stopped = 0
        if state.get("nutcracker_pid"):
            stopped += stop_pid(state["nutcracker_pid"], "nutcracker")
        for s in state.get("sentinels", []):
            if s.get("pid"):
                stopped += stop_pid(s["pid"], "sentinel")
        for s in [*state.get("replicas", []), *state["servers"]]:
            if s.get("pid"):
                stopped += stop_pid(s["pid"], "bitkv.server")
        print(f"stopped {stopped} process(es)")

    def restart_server(self, index: int) -> None:
        state = self.load()
        if not 1 <= index <= len(state["servers"]):
            raise SystemExit(f"server index must be 1-{len(state['servers'])}")
        server = state["servers"][index - 1]
        stop_pid(server["pid"], "bitkv.server")
        self.start_server(state, index - 1)
        self.save(state)
        print(f"restarted {server['name']} on {HOST}:{server['port']} (pid {server['pid']})")

    def status(self) -> int:
        state = self.load()
        down = 0
        rows = [("nutcracker", state.get("nutcracker_pid", 0), state["proxy_port"])]
        rows += [(s["name"], s["pid"], s["port"]) for s in self.processes(state)]
        for name, pid, port in rows:
            up = alive(pid)
            down += not up
            print(f"{name:18} pid {pid:>7}  {HOST}:{port:<6} {'up' if up else 'DOWN'}")
        return 1 if down else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="bitkv-cluster",
                        help="working directory: data, logs, config, state")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start the servers and the proxy")
    start.add_argument("--servers", type=int, default=3)
    start.add_argument("--base-port", type=int, default=7001)
    start.add_argument("--ports", help="comma-separated server ports (instead of --base-port)")
    start.add_argument("--proxy-port", type=int, default=22121)
    start.add_argument("--stats-port", type=int, default=22222)
    start.add_argument("--sync", choices=("always", "interval", "never"), default="interval")
    start.add_argument("--requirepass", help="password for the servers (nutcracker's "
                                             "redis_auth); clients then AUTH to the proxy")
    start.add_argument("--python", default=sys.executable,
                       help="interpreter with bitkv installed")
    start.add_argument("--nutcracker", default="nutcracker")
    start.add_argument("--replicas", type=int, default=0,
                       help="replicas per server (bitkv serve --replicaof), on port+100*j")
    start.add_argument("--sentinels", type=int, default=0,
                       help="redis-sentinel processes watching every server")
    start.add_argument("--replica-ports", help="comma-separated replica ports, server by "
                                               "server (instead of port+100*j)")
    start.add_argument("--sentinel-base-port", type=int, default=26379)
    start.add_argument("--sentinel-ports", help="comma-separated sentinel ports")
    start.add_argument("--sentinel", default="redis-sentinel")
    start.add_argument("--down-after-ms", type=int, default=5000,
                       help="Sentinel's down-after-milliseconds")
    start.add_argument("--failover-timeout-ms", type=int, default=60000,
                       help="Sentinel's failover-timeout")
    sub.add_parser("stop", help="stop the proxy, sentinels and servers (SIGTERM: clean "
                                "shutdown)")
    sub.add_parser("status", help="show what is running (exit status 1 if anything is down)")
    restart = sub.add_parser("restart-server", help="restart one server (1-based index)")
    restart.add_argument("index", type=int)
    # Accept --dir after the subcommand too.
    for p in sub.choices.values():
        p.add_argument("--dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cluster = Cluster(args.dir)
    if args.command == "start":
        cluster.start(args)
    elif args.command == "stop":
        cluster.stop()
    elif args.command == "status":
        return cluster.status()
    elif args.command == "restart-server":
        cluster.restart_server(args.index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
