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


def check_state(files: dict[str, bytes], where: Path, required: list[tuple[bytes, bytes]]
                ) -> list[str]:
    if where.exists():
        shutil.rmtree(where)
    write_state(str(where), files)
    problems = []
    with bitkv.open(str(where), auto_compact=False) as db:
        for key, value in required:
            got = db.get(key)
            if got != value:
                problems.append(f"{key!r}: acknowledged, found {got!r:.60}")
                if len(problems) >= 5:
                    break
    return problems


@pytest.mark.slow
def test_every_acknowledged_set_survives_sigkill_and_power_loss(tmp_path: Path) -> None:
    directory = tmp_path / "db"
    bitkv.open(str(directory)).close()
    spool, initial_path = tmp_path / "events", tmp_path / "initial"
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(launcher), str(directory), str(spool),
                                 str(initial_path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while not (m := re.search(rb"Ready to accept connections on port (\d+)",
                                  log_path.read_bytes())):
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.05)
        port = int(m.group(1))
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
    with open(initial_path, "rb") as f:
        initial = pickle.load(f)
    fsyncs = sum(1 for e in events if e[0] == "fsync")
    assert fsyncs < len(acked) / 2, (fsyncs, len(acked))  # fsyncs were shared (group commit)
    rng = random.Random(7)
    points = sorted({len(events), *rng.sample(range(1, len(events)), min(8, len(events) - 1))})
    model = DiskModel(initial)
    applied = 0
    problems: list[str] = []
    for point in points:
        while applied < point:
            model.apply(events[applied])
            applied += 1
        # SETs acknowledged before this point: their reply came after the spool reached
        # ``seen``, so everything up to there happened first.
        cut = ends[point - 1]
        required = [(k, v) for k, v, seen in acked if seen <= cut]
        for policy in POLICIES:
            files, what = model.crash_state(rng, policy)
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

    if where.exists():
        shutil.rmtree(where)
    write_state(str(where), files)
    problems = []
    with bitkv.open(str(where), auto_compact=False) as db:
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
    bitkv.open(str(directory)).close()
    spool, initial_path = tmp_path / "events", tmp_path / "initial"
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER)
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, str(launcher), str(directory), str(spool),
                                 str(initial_path)], stdout=log, stderr=subprocess.STDOUT)
    acked: list[tuple[bytes, int]] = []
    try:
        deadline = time.time() + 30
        while not (m := re.search(rb"Ready to accept connections on port (\d+)",
                                  log_path.read_bytes())):
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.05)
        port = int(m.group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
            probe.sendall(encode(b"HSET"))
            if b"unknown command" in probe.recv(1000):
                pytest.skip("this build has no HSET yet")
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
    events, _ends = load_spool(spool)
    with open(initial_path, "rb") as f:
        initial = pickle.load(f)
    rng = random.Random(11)
    points = sorted({len(events), *rng.sample(range(1, len(events)), min(4, len(events) - 1))})
    model = DiskModel(initial)
    applied = 0
    problems: list[str] = []
    for point in points:
        while applied < point:
            model.apply(events[applied])
            applied += 1
        for policy in ("kill", *POLICIES):
            files, what = model.crash_state(rng, policy)
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
