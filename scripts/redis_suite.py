"""Run Redis's own TCL test units against redis-server and `bitkv serve`; print a pass table.

The yardstick of issue 17: Redis 7.0's units ``type/string``, ``type/incr``, ``expire``,
``keyspace``, ``type/hash``, ``type/set``, ``type/list``, ``type/zset`` and ``multi``, run in
the suite's external-server mode (``./runtest --host --port --singledb``) against a real
redis-server 7.0 and against ``bitkv serve``, each started here on a free loopback port with
an empty data directory. The table gives, per unit, the tests Redis passed, the tests bitkv
passed, and bitkv's share of Redis's count.

Both servers run the same tests with the same options:

* ``--singledb``: no SELECT (bitkv, like Redis Cluster, has one database);
* ``--tags -needs:debug -needs:repl``: tests that need a debug build (DEBUG
  RELOAD, DEBUG SLEEP, DEBUG SET-ACTIVE-EXPIRE...) or the replication internals are not run
  (the suite itself skips ``external:skip`` tests in this mode);
* ``--ignore-encoding --ignore-digest``: the suite's checks of Redis's internal encodings
  (listpack, intset...) and of DEBUG DIGEST are off, for both servers;
* ``--durable``: an exception in one test (an unknown command, say) fails that test and the
  unit goes on, instead of ending the unit there; ``--timeout`` bounds a hung test.

The Redis test sources are not shipped with bitkv. Give a Redis source tree of the 7.0
series (matching the redis-server on the machine; Debian bookworm's is 7.0.15)::

    git clone --depth 1 --branch 7.0.15 https://github.com/redis/redis /tmp/redis-7.0.15
    python scripts/redis_suite.py /tmp/redis-7.0.15

or, from a clone with history, ``git archive 7.0.15 runtest tests | tar -x -C DIR``. Only
``runtest`` and ``tests/`` are used (tclsh 8.6 runs them; nothing is compiled).

Options: ``--units expire,multi`` runs a subset, ``--only-bitkv`` skips redis-server (its
column then shows ``-``), ``--failures`` lists the tests bitkv failed that Redis passed,
``--markdown`` prints the table as Markdown (for docs/cluster.md), ``--skip-test NAME``
skips a test on both servers (to diagnose; the yardstick skips none).

Note that a test failing with its client inside MULTI (or with replies left unread) makes
the tests after it in the same unit fail too: the suite shares one client per unit.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

UNITS = ["type/string", "type/incr", "expire", "keyspace", "type/hash", "type/set",
         "type/list", "type/zset", "multi"]
DENY_TAGS = ["needs:debug", "needs:repl"]
UNIT_TIMEOUT_S = 900  # one unit against one server, wall clock (the slowest take ~1 minute)

_WHERE = re.compile(r" in tests/\S+\.tcl$")  # a failure's name ends with its file
_RESULT = re.compile(r"^\[(ok|err|exception|skip|ignore)\]: (.*?)(?: \(\d+ ms\))?$")


@dataclass
class UnitResult:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    aborted: str = ""  # why the unit did not run to its end ("" if it did)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"no server answering on port {port} after {timeout} s")


def free_base_port() -> int:
    """A ``--baseport`` for runtest whose test-server port (base - 32, where its clients
    report) and that port + 10000 (runtest checks it too) are free: the default (21111)
    collides with another run of the suite on the same machine."""
    rng = random.Random()
    for _attempt in range(200):
        base = rng.randrange(22000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", base - 32))
                b.bind(("127.0.0.1", base - 32 + 10000))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port pair for runtest's --baseport")


def start_server(kind: str, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    data = workdir / f"{kind}-data"
    data.mkdir()
    log = open(workdir / f"{kind}.log", "wb")  # noqa: SIM115 - lives as long as the process
    if kind == "redis":
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(data)]
    else:
        argv = [sys.executable, "-m", "bitkv.server", "--port", str(port), "--dir", str(data)]
    # The bitkv measured is this script's tree (its compiled extension built in place), not
    # whichever bitkv the interpreter would import from the work directory.
    tree = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [tree, *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    try:
        wait_for_port(port, proc)
    except Exception:
        proc.kill()
        proc.wait()
        raise
    return proc, port


PORT_IN_USE = "couldn't open socket: address already in use"


def random_baseport() -> int:
    """A base port for the suite's own sockets. Its default (21111) makes runs on one machine
    collide: the test server listens at a port just below it (and probes that port + 10000),
    so a second run at the same time failed at once with "address already in use". Below
    Linux's ephemeral range (32768-60999), where a client connection's local port made the
    test server's bind fail though the suite's probe had found the port free."""
    return random.randrange(22_000, 32_000, 64)


def run_unit(source: Path, unit: str, port: int, log: Path, skip: list[str]) -> UnitResult:
    argv = ["tclsh8.6" if shutil.which("tclsh8.6") else "tclsh", "tests/test_helper.tcl",
            "--host", "127.0.0.1", "--port", str(port), "--singledb", "--durable",
            "--ignore-encoding", "--ignore-digest", "--timeout", "120", "--clients", "1",
            "--baseport", str(free_base_port()),
            "--tags", " ".join("-" + t for t in DENY_TAGS), "--single", f"unit/{unit}"]
    for name in skip:
        argv += ["--skiptest", name]
    aborted = ""
    for _attempt in range(3):  # another base port if the test server could not listen
        try:
            done = subprocess.run([*argv, "--baseport", str(random_baseport())], cwd=source,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=UNIT_TIMEOUT_S, check=False)
            output = done.stdout.decode("utf-8", "replace")
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode("utf-8", "replace")
            aborted = f"timed out after {UNIT_TIMEOUT_S} s"
        if PORT_IN_USE not in output:
            break
    log.write_text(output)
    result = parse_output(output)
    result.aborted = aborted or result.aborted
    return result


def parse_output(output: str) -> UnitResult:
    """The tests a unit's runtest output reports as passed and as failed (by name)."""
    result = UnitResult()
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    for line in output.splitlines():
        m = _RESULT.match(ansi.sub("", line).strip())
        if m is None:
            continue
        status, name = m.groups()
        name = _WHERE.sub("", name)
        if status == "ok":
            result.passed.append(name)
        elif status in ("err", "exception"):
            result.failed.append(name)
    if "All tests passed" not in output and "[exception]" in ansi.sub("", output):
        result.aborted = "the unit stopped at an exception"
    return result


def run_against(kind: str, source: Path, units: list[str], workdir: Path, skip: list[str]
                ) -> dict[str, UnitResult]:
    proc, port = start_server(kind, workdir)
    results: dict[str, UnitResult] = {}
    try:
        for unit in units:
            if proc.poll() is not None:
                results[unit] = UnitResult(aborted="the server had exited")
                continue
            logname = f"{kind}-{unit.replace('/', '-')}.out"
            results[unit] = run_unit(source, unit, port, workdir / logname, skip)
            print(f"  {kind:5} {unit:12} passed {len(results[unit].passed):4}  "
                  f"failed {len(results[unit].failed):4}  {results[unit].aborted}",
                  file=sys.stderr, flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return results


def table(units: list[str], redis: dict[str, UnitResult] | None,
          bitkv: dict[str, UnitResult], markdown: bool) -> str:
    rows = [("unit", "Redis passed", "bitkv passed", "bitkv / Redis")]
    total_r = total_b = 0
    for unit in units:
        b = len(bitkv[unit].passed)
        total_b += b
        if redis is None:
            rows.append((unit, "-", str(b), "-"))
            continue
        r = len(redis[unit].passed)
        total_r += r
        rows.append((unit, str(r), str(b), f"{b / r:.0%}" if r else "-"))
    if redis is None:
        rows.append(("total", "-", str(total_b), "-"))
    else:
        rows.append(("total", str(total_r), str(total_b),
                     f"{total_b / total_r:.0%}" if total_r else "-"))
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|---|--:|--:|--:|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        return "\n".join(lines)
    return "\n".join(f"{r[0]:14}{r[1]:>14}{r[2]:>14}{r[3]:>15}" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("source", type=Path,
                        help="a Redis 7.0 source tree (its runtest and tests/ are used)")
    parser.add_argument("--units", default=",".join(UNITS),
                        help="comma-separated units (default: the nine of issue 17)")
    parser.add_argument("--only-bitkv", action="store_true", help="skip redis-server")
    parser.add_argument("--failures", action="store_true",
                        help="list the tests Redis passed and bitkv failed")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--skip-test", action="append", default=[], metavar="NAME",
                        help="skip this test (repeatable; a diagnosis, not the yardstick: "
                             "e.g. a test that fails leaving the client inside MULTI, which "
                             "fails every test after it)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (server logs, each unit's output)")
    args = parser.parse_args(argv)
    source = args.source.resolve()
    if not (source / "tests" / "test_helper.tcl").is_file():
        parser.error(f"{source} has no tests/test_helper.tcl: give a Redis source tree")
    units = [u for u in args.units.split(",") if u]
    for unit in units:
        if not (source / "tests" / "unit" / f"{unit}.tcl").is_file():
            parser.error(f"no unit {unit!r} in {source}/tests/unit")
    if not args.only_bitkv and shutil.which("redis-server") is None:
        parser.error("redis-server is not installed (Debian: apt install redis-server)")
    workdir = Path(tempfile.mkdtemp(prefix="bitkv-redis-suite-"))
    # The suite writes its own scratch files under tests/tmp of the source tree.
    (source / "tests" / "tmp").mkdir(exist_ok=True)
    try:
        redis = None if args.only_bitkv else run_against("redis", source, units, workdir,
                                                         args.skip_test)
        bitkv = run_against("bitkv", source, units, workdir, args.skip_test)
        version = subprocess.run(["redis-server", "--version"], stdout=subprocess.PIPE,
                                 check=False).stdout.decode().split()[2].removeprefix("v=") \
            if redis is not None else ""
        print(f"Redis test suite from {source}; redis-server {version}; "
              f"tags excluded: {', '.join(DENY_TAGS)}"
              + (f"; tests skipped: {', '.join(args.skip_test)}" if args.skip_test else ""))
        print(table(units, redis, bitkv, args.markdown))
        if args.failures:
            for unit in units:
                lost = list(bitkv[unit].failed)
                if redis is not None:
                    want = redis[unit].passed
                    lost = [n for n in lost if n in want]
                    ran = set(bitkv[unit].passed) | set(bitkv[unit].failed)
                    lost += [f"{n} (not run)" for n in want if n not in ran]
                for name in lost:
                    print(f"FAILED {unit}: {name}")
                if bitkv[unit].aborted:
                    print(f"ABORTED {unit}: {bitkv[unit].aborted}")
        if args.keep:
            print(f"logs in {workdir}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
