"""``bitkv serve --sync always`` under SIGKILL and power loss: every acknowledged SET is there,
and each collection command (a big HSET, a DEL) is there whole or not at all.

The server runs as a process whose store writes through a recording FileIO (the crash
harness's ``RecordingFileIO``, bitkv/crashtest/recording.py) that also spools every event
(write, fsync, create, rename, ...) to a file as it happens, so the I/O log survives the
SIGKILL. Clients pipeline SETs on several connections (so one end-of-iteration fsync covers
many clients' writes) and note, for each ``+OK``, how long the spool was when it arrived:
every event before that point happened before the reply was sent. Then:

* the store directory as the killed process left it must hold every acknowledged SET;
* so must every disk state a power cut may leave (the harness's ``DiskModel``: unsynced
  writes lost, torn, reordered; directory changes reverted), at the end of the log and at
  random points of it, counting only the SETs acknowledged before that point.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import bitkv
from bitkv.crashtest.recording import POLICIES, DiskModel, write_state

LAUNCHER = r'''
import os, pickle, struct, sys
from bitkv.crashtest.recording import RecordingFileIO
from bitkv.server import ServerConfig, run_server

directory, spool_path, initial_path = sys.argv[1:4]


class Spool(list):
    """The recorder's event list, also written to a file event by event (one write each)."""

    def __init__(self, fd):
        super().__init__()
        self.fd = fd

    def append(self, event):
        super().append(event)
        frame = pickle.dumps(event)
        os.write(self.fd, struct.pack("<I", len(frame)) + frame)


io = RecordingFileIO(directory)
with open(initial_path, "wb") as f:
    pickle.dump(io.initial, f)
io.events = Spool(os.open(spool_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
run_server(ServerConfig(dir=directory, port=0, sync="always",
                        store_options={"fileio": io, "max_segment_size": 256 * 1024}))
'''

CLIENTS = 6


def load_spool(path: Path) -> tuple[list[tuple], list[int]]:
    """The events, and the spool offset where each one ends (a torn last frame is dropped)."""
    data = path.read_bytes()
    events, ends, pos = [], [], 0
    while pos + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, pos)
        if pos + 4 + n > len(data):
            break
        events.append(pickle.loads(data[pos + 4 : pos + 4 + n]))
        pos += 4 + n
        ends.append(pos)
    return events, ends


def encode(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


def writer(port: int, client: int, spool: Path, acked: list[tuple[bytes, bytes, int]],
           stop: threading.Event, seed: int) -> None:
    """Pipeline SETs of unique keys; record (key, value, spool size) for each +OK."""
    rng = random.Random(seed)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return
    i = 0
    try:
        while not stop.is_set():
            batch = []
            for _ in range(rng.randint(1, 16)):
                key = b"c%d:%d" % (client, i)
                batch.append((key, b"value of %b " % key + bytes(rng.randint(0, 300))))
                i += 1
            sock.sendall(b"".join(encode(b"SET", k, v) for k, v in batch))
            got = b""
            while len(got) < 5 * len(batch):
                chunk = sock.recv(65536)
                if not chunk:
                    return
                got += chunk
            seen = os.stat(spool).st_size  # every event of the fsync is spooled by now
            assert got == b"+OK\r\n" * len(batch), got[:100]
            acked.extend((k, v, seen) for k, v in batch)
    except OSError:
        return  # the server was killed
    finally:
        sock.close()


def launch(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`bitkv serve` under LAUNCHER (its file I/O recorded into ``tmp_path/events``, the
    store's files before it into ``tmp_path/initial``) on a new store ``tmp_path/db``: the
    process, once it accepts connections, and its port."""
    directory = tmp_path / "db"
    bitkv.open(str(directory)).close()
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(launcher), str(directory),
                                 str(tmp_path / "events"), str(tmp_path / "initial")],
                                stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while not (m := re.search(rb"Ready to accept connections on port (\d+)",
                                  log_path.read_bytes())):
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, int(m.group(1))


def crash_states(events: list[tuple], tmp_path: Path, rng: random.Random, n_points: int,
                 policies: tuple[str, ...]) -> Iterator[tuple[int, dict[str, bytes], str]]:
    """``(point, files, what)``: a state the disk may hold after a crash once the first
    ``point`` recorded events have happened, for the end of the record and ``n_points``
    random points in it, one for each policy (DiskModel)."""
    with open(tmp_path / "initial", "rb") as f:
        initial = pickle.load(f)  # written by LAUNCHER, this test's own child
    points = sorted({len(events),
                     *rng.sample(range(1, len(events)), min(n_points, len(events) - 1))})
    model = DiskModel(initial)
    applied = 0
    for point in points:
        while applied < point:
            model.apply(events[applied])
            applied += 1
        for policy in policies:
            files, what = model.crash_state(rng, policy)
            yield point, files, what


@contextlib.contextmanager
def opened_state(files: dict[str, bytes], where: Path) -> Iterator[bitkv.Store]:
    """The store a crash state ``files`` holds, written out at ``where`` and opened."""
    if where.exists():
        shutil.rmtree(where)
    write_state(str(where), files)
    with bitkv.open(str(where), auto_compact=False) as db:
        yield db


def check_state(files: dict[str, bytes], where: Path, required: list[tuple[bytes, bytes]]
                ) -> list[str]:
    problems = []
    with opened_state(files, where) as db:
        for key, value in required:
            got = db.get(key)
            if got != value:
                problems.append(f"{key!r}: acknowledged, found {got!r:.60}")
                if len(problems) >= 5:
                    break
    return problems


@pytest.mark.slow
def test_every_acknowledged_set_survives_sigkill_and_power_loss(tmp_path: Path) -> None:
    directory, spool = tmp_path / "db", tmp_path / "events"
    proc, port = launch(tmp_path)
    try:
        acked: list[tuple[bytes, bytes, int]] = []
        stop = threading.Event()
        threads = [threading.Thread(target=writer, args=(port, c, spool, acked, stop, c))
                   for c in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(2.0)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: requests in flight, replies held
        proc.wait(10)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert len(acked) > 200, f"only {len(acked)} SETs were acknowledged"

    # What SIGKILL left: the directory as it is.
    with bitkv.open(str(directory)) as db:
        lost = [k for k, v, _ in acked if db.get(k) != v]
    assert not lost, f"{len(lost)} acknowledged SETs lost to SIGKILL, e.g. {lost[:3]}"

    # What a power cut may leave, at the end of the log and at random points in it.
    events, ends = load_spool(spool)
    fsyncs = sum(1 for e in events if e[0] == "fsync")
    assert fsyncs < len(acked) / 2, (fsyncs, len(acked))  # fsyncs were shared (group commit)
    problems: list[str] = []
    for point, files, what in crash_states(events, tmp_path, random.Random(7), 8, POLICIES):
        # SETs acknowledged before this point: their reply came after the spool reached
        # ``seen``, so everything up to there happened first.
        cut = ends[point - 1]
        required = [(k, v) for k, v, seen in acked if seen <= cut]
        for p in check_state(files, tmp_path / "state", required):
            problems.append(f"power cut at event {point}/{len(events)} ({what}): {p}")
    assert not problems, "\n".join(problems[:10])


# -- collections: a command's batch is whole or absent after SIGKILL ---------------------------

HASH_FIELDS = 1500  # one HSET of this many fields is one batch of ~1500 records (~60 KiB)


def hash_writer(port: int, stop: threading.Event, acked: list[tuple[bytes, int]]) -> None:
    """HSET of every field of one of a few keys to generation ``g`` (one command, one batch),
    now and then a DEL of another, sent together so that the kill finds one in flight."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError:
        return
    g = 0
    try:
        while not stop.is_set():
            g += 1
            key = b"h%d" % (g % 4)
            fields = [a for i in range(HASH_FIELDS) for a in (b"f%d" % i, b"%d" % g)]
            out = encode(b"HSET", key, *fields)
            if g % 5 == 0:
                out += encode(b"DEL", b"h%d" % ((g + 1) % 4))
            sock.sendall(out)
            got = b""
            while got.count(b"\r\n") < (2 if g % 5 == 0 else 1):
                chunk = sock.recv(65536)
                if not chunk:
                    return
                got += chunk
            assert got.startswith(b":"), got[:100]
            acked.append((key, g))
    except OSError:
        return  # the server was killed
    finally:
        sock.close()


def hashes_whole(files: dict[str, bytes], where: Path) -> list[str]:
    """Problems of a crash state: a hash that holds a part of an HSET or of a DEL."""
    from bitkv.structures import HashIndex, Structures

    problems = []
    with opened_state(files, where) as db:
        s = Structures(db)
        for k in range(4):
            h = s.find(b"h%d" % k, HashIndex)
            if h is None:
                continue
            values = set(s.read_many(h, h.subs()))
            if len(h) != HASH_FIELDS or len(values) != 1:
                problems.append(f"h{k}: {len(h)} fields, values {sorted(values)[:4]}")
    return problems


@pytest.mark.slow
def test_sigkill_and_power_loss_leave_each_collection_command_whole_or_absent(
        tmp_path: Path) -> None:
    """One HSET of 1,500 fields is one batch: SIGKILL mid-stream, and every state a power
    cut at a random moment may leave (``DiskModel``), hold each hash whole or not at all."""
    directory = tmp_path / "db"
    proc, port = launch(tmp_path)
    acked: list[tuple[bytes, int]] = []
    try:
        stop = threading.Event()
        t = threading.Thread(target=hash_writer, args=(port, stop, acked))
        t.start()
        time.sleep(random.Random().uniform(1.0, 1.5))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        stop.set()
        t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert len(acked) > 5, f"only {len(acked)} HSETs were acknowledged"
    events, _ends = load_spool(tmp_path / "events")
    problems: list[str] = []
    for point, files, what in crash_states(events, tmp_path, random.Random(11), 4,
                                           ("kill", *POLICIES)):
        problems += [f"crash at event {point}/{len(events)} ({what}): {p}"
                     for p in hashes_whole(files, tmp_path / "state")]
    assert not problems, "\n".join(problems[:10])
    # the last acknowledged HSET of each key is in what SIGKILL left (sync always), unless
    # a later DEL or HSET (maybe unacknowledged) replaced it
    from bitkv.structures import HashIndex, Structures

    with bitkv.open(str(directory)) as db:
        s = Structures(db)
        for key, g in acked[-3:]:
            h = s.find(key, HashIndex)
            if h is not None:
                assert int(s.read(h, b"f0") or b"0") >= g, key
