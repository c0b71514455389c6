"""The memcached port against Debian's memcached: the same bytes to both, the same replies.

Each case runs on a fresh connection after ``flush_all``, followed by ``version`` (whose reply
marks the end). Before comparing, cas uniques and the version string are masked: they differ
by design (docs/memcached.md). Skipped where /usr/bin/memcached is not installed (.ci/run
installs it).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from memcached_support import MEMCACHED, DebianMemcached, exchange

pytestmark = [pytest.mark.skipif(MEMCACHED is None,
                                reason="Debian's memcached is not installed (apt install "
                                       "memcached)"),
              pytest.mark.engine_independent]  # CI's pure-Python run skips it

from bitkv.server import ServerConfig, ServerThread  # noqa: E402

BIG = 1024 * 1024 + 1  # over both servers' item size limit (memcached's -I 1m default)

CASES: list[bytes] = [
    # unknown commands, wrong word counts, empty lines
    b"bogus\r\n", b"\r\n", b"GET k\r\n", b"get\r\n", b"gets\r\n", b"gat\r\n", b"incr\r\n",
    b"delete\r\n", b"touch k\r\n", b"verbosity\r\n", b"set k 0 0\r\n", b"cas k 0 0 1\r\nx\r\n",
    b"set k 0 0 1 noreply extra\r\nx\r\n", b"delete k x y z\r\n", b"verbosity 1 2 3\r\n",
    b"touch k 10 noreply extra\r\n", b"stats bogus\r\n", b"\x00\x01\x02\xff\r\n",
    b"set k\t0 0 1\r\nx\r\n",
    # storage commands and their lines
    b"set k 0 0 5\r\nhello\r\nget k\r\n", b"set k 0 0 5\r\nhelloXX\r\n",
    b"set k 0 0 1\r\nx\nget k\r\n", b"set k 0 0 -1\r\n", b"set k abc 0 5\r\nhello\r\n",
    b"set k -1 0 1\r\nx\r\n", b"set k 0 abc 1\r\nx\r\n", b"set k 0x1 0 1\r\nx\r\n",
    b"set k 1.5 0 1\r\nx\r\n", b"set k 0 0 +1\r\nx\r\n", b"set k 0 0 01\r\nx\r\n",
    b"set  k  0  0  1\r\nx\r\nget  k\r\n", b"set k 0 99999999999999999999 1\r\nx\r\n",
    b"set " + b"a" * 251 + b" 0 0 1\r\nx\r\n", b"set " + b"a" * 250 + b" 0 0 1\r\nx\r\n",
    b"get " + b"a" * 251 + b"\r\n", b"set k 4294967295 0 1\r\nx\r\nget k\r\n",
    b"set k\x01 0 0 1\r\nx\r\nget k\x01\r\n",
    b"set k 0 0 1 noreply\r\nx\r\nget k\r\n", b"set k 0 0 1 bogus\r\nx\r\nget k\r\n",
    b"set k 0 0 1 noreply\r\nxx\r\n", b"set k abc 0 1 noreply\r\nx\r\n",
    b"set k 0 -1 1\r\nx\r\nget k\r\n", b"add k 0 0 1\r\nx\r\nadd k 0 0 1\r\ny\r\nget k\r\n",
    b"replace nothere 0 0 1\r\nx\r\n", b"append nothere 0 0 1\r\nx\r\n",
    b"prepend nothere 0 0 1\r\nx\r\n",
    b"set k 7 0 1\r\nx\r\nappend k 5 0 1\r\ny\r\nprepend k 9 0 1\r\nw\r\nget k\r\n",
    b"cas k 0 0 1 abc\r\nx\r\n", b"cas nothere 0 0 1 5\r\nx\r\n",
    b"set k 0 0 1\r\nx\r\ncas k 0 0 1 1 noreply\r\ny\r\nget k\r\n",
    b"set k 0 0 %d\r\n" % BIG + b"x" * BIG + b"\r\nget k\r\n",
    b"set k 0 0 1\r\nx\r\nset k 0 0 %d\r\n" % BIG + b"x" * BIG + b"\r\nget k\r\n",
    b"set k 0 0 1\r\nx\r\nset k 0 0 %d noreply\r\n" % BIG + b"x" * BIG + b"\r\nget k\r\n",
    # retrieval
    b"set k 0 0 1\r\nx\r\nget k k2 k\r\n", b"get k\n", b"get " + b"k " * 2000 + b"\r\n",
    b"set k 3 0 2\r\nab\r\ngets k\r\n", b"gat 10\r\n", b"gat abc k\r\n",
    b"set k 0 0 3\r\nnew\r\ngat -1 k\r\nget k\r\n", b"set k 0 0 1\r\nx\r\ngat 100 k\r\n",
    # incr / decr
    b"incr k 1\r\n", b"set k 0 0 1\r\nx\r\nincr k 1\r\n",
    b"set n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\nget n\r\nincr n abc\r\nincr n -1\r\n"
    b"incr n 18446744073709551615\r\nincr missing 1\r\n",
    b"set n 0 0 20\r\n18446744073709551615\r\nincr n 2\r\nget n\r\n",
    b"set n 0 0 2\r\n-1\r\nincr n 1\r\n", b"set n 0 0 3\r\n1ab\r\nincr n 1\r\n",
    b"set n 0 0 4\r\n1 ab\r\nincr n 1\r\n", b"set n 0 0 3\r\n 12\r\nincr n 1\r\nget n\r\n",
    b"set n 0 0 0\r\n\r\nincr n 1\r\n", b"set n 0 0 1\r\n5\r\nincr n +5\r\n",
    b"incr n 99999999999999999999\r\n", b"incr k abc noreply\r\n",
    b"set n 0 0 1\r\n5\r\nincr n 1 noreply\r\ndecr n 2 noreply\r\nget n\r\n",
    # delete, touch, flush_all, verbosity
    b"set k 0 0 1\r\nx\r\ndelete k 0\r\ndelete k\r\n", b"delete k 5\r\n",
    b"delete k noreply\r\n", b"delete k 5 noreply\r\n", b"delete k 0 noreply\r\n",
    b"touch k abc\r\n", b"touch nothere 10\r\n", b"touch k abc noreply\r\n",
    b"set k 0 0 1\r\nx\r\ntouch k -1\r\nget k\r\n", b"flush_all abc\r\n",
    b"flush_all 0\r\n", b"flush_all -1\r\n", b"flush_all 0 20\r\n",
    b"set k 0 0 1\r\nx\r\nflush_all noreply\r\nget k\r\n", b"verbosity 1\r\n",
    b"verbosity 1 2\r\n", b"verbosity abc\r\n", b"verbosity 1 noreply\r\n",
    # keys over 250 bytes, noreply in odd places, odd bytes
    b"touch " + b"a" * 251 + b" 10\r\n", b"incr " + b"a" * 251 + b" 1\r\n",
    b"delete " + b"a" * 251 + b"\r\n", b"cas " + b"a" * 251 + b" 0 0 1 1\r\nx\r\n",
    b"gat 10 k " + b"a" * 251 + b"\r\n", b"verbosity noreply\r\n",
    b"flush_all noreply extra\r\n", b"decr k 1 noreply extra\r\n",
    b"set k 0 0 1 noreply\r\nx\r\nappend k 0 0 2 noreply\r\nyy\r\nget k\r\n",
    b"get k\x00\r\n", b" get k\r\n", b"set k 0 0 2\r\n\r\n\r\nget k\r\n",
    b"set k 0 %d 1\r\nx\r\nget k\r\n" % (int(time.time()) + 1000),
    b"set k 0 %d 1\r\nx\r\nget k\r\n" % (int(time.time()) - 1000),
    b"stats reset\r\n",
    # the connection closes (the sentinel after quit is never read)
    b"quit\r\nget k\r\n", b"quit extra\r\n",
]

# Requests after which both servers close the connection by themselves: sent alone (no
# sentinel: it would complete the line), read until the server closes.
CLOSING: list[bytes] = [
    b"x" * 3000,  # no "\n" within 2048 bytes
    b"  " + b"z" * 2100,
]

_CAS = re.compile(rb"^(VALUE \S+ \d+ \d+) \d+\r$", re.MULTILINE)


def normalize(reply: bytes) -> bytes:
    return _CAS.sub(rb"\1 <cas>\r", reply)


@pytest.fixture(scope="module")
def ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    memcached = DebianMemcached()
    directory: Path = tmp_path_factory.mktemp("mcdiff") / "db"
    config = ServerConfig(dir=str(directory), port=0, memcached_port=0)
    with ServerThread(config) as thread:
        port = thread.server.memcached_port
        assert port is not None
        yield memcached.port, port
    memcached.stop()


@pytest.mark.parametrize("request_bytes", CASES, ids=lambda c: repr(c[:40])[2:-1])
def test_same_bytes_same_replies(ports: tuple[int, int], request_bytes: bytes) -> None:
    reference_port, bitkv_port = ports
    request = b"flush_all noreply\r\n" + request_bytes
    expected = normalize(exchange(reference_port, request))
    got = normalize(exchange(bitkv_port, request))
    assert got == expected


@pytest.mark.parametrize("request_bytes", CLOSING, ids=lambda c: repr(c[:20])[2:-1])
def test_same_bytes_same_close(ports: tuple[int, int], request_bytes: bytes) -> None:
    reference_port, bitkv_port = ports
    expected = exchange(reference_port, request_bytes, sentinel=False)
    assert expected.endswith(b"<EOF>")
    assert exchange(bitkv_port, request_bytes, sentinel=False) == expected


def test_the_benchmark_script_runs() -> None:
    """scripts/bench_memcached.py (docs/memcached.md's figures) runs and prints its table."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "bench_memcached.py"
    done = subprocess.run(
        [sys.executable, str(script), "--rounds", "1", "--seconds", "0.2", "--connections",
         "2", "--keys", "50", "--pipeline", "1", "4"], capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| SET", "| GET"))]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2].replace(",", "")) > 0 and cells[4].endswith("x")
    done = subprocess.run([sys.executable, str(script), "--in-process", "--pipeline", "4",
                           "--requests", "2000"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [line.split("|")[1].strip() for line in done.stdout.splitlines()
            if line.startswith(("| SET", "| GET"))] == ["SET", "GET"]
