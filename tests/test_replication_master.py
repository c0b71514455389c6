"""bitkv as a replication master: real Redis replicas converge, and continue (PSYNC
+CONTINUE) after the master stops cleanly and after kill -9; the backlog regenerates the
stream exactly from the log and its journal."""

from __future__ import annotations

import random
import time

import pytest
import redis
from procs import BitkvProcess, RedisProcess, caught_up, free_port, needs_redis, wait_until

import bitkv
from bitkv import compaction
from bitkv.server import backlog as backlog_mod
from bitkv.server.backlog import GETACK, PING, Backlog


def dump(client) -> dict[bytes, tuple[bytes, int]]:
    """Every key with its value and PTTL."""
    out = {}
    for k in client.scan_iter(count=1000):
        v = client.get(k)
        if v is not None:
            out[k] = (v, client.pttl(k))
    return out


def assert_same(master, replica, ttl_slack_ms: int = 3000) -> None:
    a, b = dump(master), dump(replica)
    assert a.keys() == b.keys()
    for k, (v, ttl) in a.items():
        assert b[k][0] == v, k
        if ttl < 0:
            assert b[k][1] == ttl, k
        else:
            assert abs(b[k][1] - ttl) <= ttl_slack_ms, (k, ttl, b[k][1])


def mixed_load(client, rng: random.Random, n: int) -> None:
    for _ in range(n):
        op = rng.random()
        k = f"key:{rng.randrange(300)}"
        if op < 0.35:
            client.set(k, rng.randbytes(rng.randrange(0, 300)))
        elif op < 0.45:
            client.set(k, "v", px=rng.randrange(50, 400))  # some expire during the test
        elif op < 0.55:
            client.set(k, "t", ex=rng.randrange(100, 1000))
        elif op < 0.65:
            client.delete(k)
        elif op < 0.75:
            client.incrby(f"counter:{rng.randrange(10)}", rng.randrange(-5, 6))
        elif op < 0.8:
            client.expire(k, rng.randrange(100, 1000))
        elif op < 0.85:
            client.persist(k)
        elif op < 0.9:
            client.mset({f"m:{rng.randrange(50)}": rng.randbytes(20) for _ in range(3)})
        else:
            with client.pipeline(transaction=True) as p:
                p.set(k, "in-multi")
                p.delete(f"key:{rng.randrange(300)}")
                p.incr("multi-counter")
                p.execute()


@needs_redis
def test_redis_replica_of_bitkv_master_converges_under_mixed_load(tmp_path):
    master = BitkvProcess(tmp_path / "master")
    replica = None
    try:
        m = master.client()
        rng = random.Random(5)
        mixed_load(m, rng, 800)  # written before the replica attaches: in the snapshot
        replica = RedisProcess(tmp_path / "r", None, "--replicaof", "127.0.0.1",
                               str(master.port))
        r = replica.client()
        mixed_load(m, rng, 1500)  # while it loads and after: in the stream
        assert m.execute_command("WAIT", 1, 10000) == 1
        time.sleep(0.6)  # the short TTLs have expired on the master: DELs follow
        m.ping()
        wait_until(lambda: caught_up(m, r), 20, "the replica to catch up")
        assert_same(m, r)
        # Expired keys reached the replica as DELs: none of the 50-400 ms keys is left.
        assert all(r.pttl(k) != -2 or r.exists(k) == 0 for k in r.scan_iter())
        info = m.info("replication")
        assert info["connected_slaves"] == 1
        assert info["slave0"]["state"] == "online"
        assert m.info("stats")["sync_full"] == 1
    finally:
        if replica is not None:
            replica.stop()
        master.stop()


@needs_redis
@pytest.mark.parametrize("how", ["shutdown", "kill9"])
def test_replica_continues_after_master_restart(tmp_path, how):
    port = free_port()
    master = BitkvProcess(tmp_path / "master", port)
    replica = RedisProcess(tmp_path / "r", None, "--replicaof", "127.0.0.1", str(port))
    try:
        m, r = master.client(), replica.client()
        for i in range(500):
            m.set(f"k{i}", f"v{i}")
        assert m.execute_command("WAIT", 1, 10000) == 1
        assert m.info("stats")["sync_full"] == 1
        if how == "shutdown":
            master.stop()
        else:
            master.kill9()
        # Writes while the master is down (the CLI, another opener): in the stream after.
        with bitkv.open(tmp_path / "master") as db:
            db.put(b"offline", b"written while the server was down")
        master = BitkvProcess(tmp_path / "master", port)
        m = master.client()
        for i in range(200):
            m.set(f"after{i}", f"v{i}")
        m.delete("k0")
        wait_until(lambda: caught_up(m, r), 30, "the replica to resync")
        stats = m.info("stats")
        assert stats["sync_partial_ok"] == 1, master.output()
        assert stats["sync_full"] == 0
        assert_same(m, r)
        assert r.get("offline") == b"written while the server was down"
        assert "Successful partial resynchronization" in replica.output()
    finally:
        replica.stop()
        master.stop()


# -- the backlog itself ----------------------------------------------------------------------

def _stream_of(db: bitkv.Store, bl: Backlog) -> bytes:
    """Everything from offset 0 as a fresh reader regenerates it."""
    reader = bl.reader_at(0)
    assert reader is not None
    out = []
    while True:
        chunk = reader.read(1 << 16)
        if not chunk:
            return b"".join(out)
        out.append(chunk)


def test_stream_regenerates_identically_from_any_offset(tmp_path):
    db = bitkv.open(tmp_path / "db", max_segment_size=8192, auto_compact=False)
    bl = Backlog(db)
    bl.open()
    produced = []
    rng = random.Random(1)
    for i in range(400):
        if i % 37 == 0:
            produced.append(bl.inject(PING if i % 2 else GETACK))
        if i % 50 == 0:
            with db.batch() as b:
                b.put(b"batch-a", b"1")
                b.delete(b"k3")
        db.put(b"k%d" % rng.randrange(40), rng.randbytes(rng.randrange(200)),
               ttl=100 if i % 5 == 0 else None)
        if i % 7 == 0:
            db.delete(b"k%d" % rng.randrange(40))
        produced.append(bl.catch_up())
    stream = b"".join(produced)
    assert bl.offset == len(stream)
    assert _stream_of(db, bl) == stream
    for offset in [*sorted(rng.sample(range(len(stream)), 60)), len(stream)]:
        reader = bl.reader_at(offset)
        assert reader is not None
        got = b"".join(iter(lambda r=reader: r.read(4096), b""))
        assert got == stream[offset:], offset
    # The same after a reopen: the journal and the log give the same bytes and offset.
    bl.close(clean=True)
    db.close()
    db = bitkv.open(tmp_path / "db", auto_compact=False)
    again = Backlog(db)
    again.open()
    assert again.replid == bl.replid and again.offset == len(stream)
    assert _stream_of(db, again) == stream
    db.close()


def test_unclean_stop_keeps_the_history_on_the_same_boot_not_after_a_reboot(
        tmp_path, monkeypatch):
    db = bitkv.open(tmp_path / "db", auto_compact=False)
    bl = Backlog(db)
    bl.open()
    db.put(b"a", b"1")
    bl.catch_up()
    replid, offset = bl.replid, bl.offset
    bl.journal.close()  # as kill -9 leaves it: no clean-stop entry
    again = Backlog(db)
    again.open()
    again.catch_up()  # the head rests at the journal's last point until a replica needs it
    assert (again.replid, again.offset) == (replid, offset)
    again.journal.close()
    monkeypatch.setattr(backlog_mod, "boot_id", lambda: "another-boot")
    rebooted = Backlog(db)
    rebooted.open()
    assert rebooted.replid != replid  # a power loss may have taken what replicas got
    assert "restarted" in (rebooted.new_history_reason or "")
    rebooted.close(clean=True)
    db.close()


def test_compaction_of_the_range_means_no_partial_resync(tmp_path):
    db = bitkv.open(tmp_path / "db", max_segment_size=4096, auto_compact=False)
    bl = Backlog(db)
    bl.open()
    for i in range(300):
        db.put(b"k%d" % (i % 10), b"x" * 50)
    bl.catch_up()
    assert bl.reader_at(0) is not None
    db.compact()
    assert bl.reader_at(0) is None  # reclaimed: the replica gets a full resync
    assert bl.reader_at(bl.offset) is not None  # the head is always servable
    bl.close(clean=True)
    db.close()


def test_damaged_journal_tail_is_ignored_and_damaged_header_starts_a_new_history(tmp_path):
    db = bitkv.open(tmp_path / "db", auto_compact=False)
    bl = Backlog(db)
    bl.open()
    db.put(b"a", b"1")
    bl.catch_up()
    bl.inject(PING)
    replid, offset = bl.replid, bl.offset
    bl.close(clean=True)
    path = tmp_path / "db" / "REPLICATION"
    with open(path, "ab") as f:
        f.write(b"\x01garbage that is not an entry")
    again = Backlog(db)
    again.open()
    assert (again.replid, again.offset) == (replid, offset)
    again.close(clean=True)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = Backlog(db)
    fresh.open()
    assert fresh.replid != replid
    fresh.close(clean=True)
    db.close()


def test_journal_is_trimmed_to_the_history_still_in_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(backlog_mod, "MAX_ENTRIES", 40)
    db = bitkv.open(tmp_path / "db", max_segment_size=4096, auto_compact=False)
    bl = Backlog(db)
    bl.open()
    stream = []
    for i in range(200):
        db.put(b"k%d" % (i % 7), b"x" * 40)
        stream.append(bl.catch_up())
        stream.append(bl.inject(PING))
    bl.close(clean=True)
    db.compact()  # reclaims most of the history the journal points into
    head = b"".join(stream)
    again = Backlog(db)
    again.open()
    again.catch_up()
    assert again.offset == len(head)
    assert len(again.journal.entries) <= 40
    oldest = again.first_offset()
    assert oldest > 0
    reader = again.reader_at(oldest)
    assert reader is not None
    assert b"".join(iter(lambda: reader.read(4096), b"")) == head[oldest:]
    again.close(clean=True)
    db.close()


def test_the_head_stops_between_batches_so_injections_never_land_inside_multi(tmp_path):
    db = bitkv.open(tmp_path / "db", auto_compact=False)
    bl = Backlog(db)
    bl.open()
    with db.batch() as b:  # more records than one read of the log takes
        for i in range(3000):
            b.put(b"k%d" % i, b"v")
    first = bl.catch_up(100)  # asks for 100 bytes: gets the whole batch
    assert first.startswith(b"*1\r\n$5\r\nMULTI\r\n") and first.endswith(b"*1\r\n$4\r\nEXEC\r\n")
    assert first.count(b"SET") == 3000
    ping = bl.inject(PING)
    assert _stream_of(db, bl) == first + ping
    bl.close(clean=True)
    db.close()


def test_compaction_leaves_expired_keys_to_the_purge_when_expirations_are_logged(
        tmp_path, monkeypatch):
    """Compaction must not drop an expired key silently where the log is a replication
    stream (the purge's tombstone is what tells replicas, as a DEL), nor reclaim the records
    a replica has not read (retain_history_from)."""
    now = [1_000.0]
    db = bitkv.open(tmp_path / "db", clock=lambda: now[0], log_expirations=True,
                    max_segment_size=4096, auto_compact=False)
    db.put(b"short", b"x", ttl=1)
    for i in range(200):
        db.put(b"k%d" % (i % 5), b"y" * 40)
    cursor = bitkv.HistoryCursor(db.last_seq + 1)
    db.retain_history_from = cursor.next_seq  # as a master pins what replicas lack
    # "short" expires once compaction has started: after compact()'s own purge, which would
    # otherwise write its tombstone first and leave compaction nothing to drop.
    run = compaction.compact

    def compact_later(host, progress=None):
        now[0] += 5
        return run(host, progress)

    monkeypatch.setattr(compaction, "compact", compact_later)
    db.compact()
    assert now[0] == 1_005.0  # the clock moved during compaction
    db.purge_expired()
    deletes = [c.key for c in db.changes(cursor) if c.value is None]
    assert deletes == [b"short"]
    db.close()


def test_retained_history_survives_compaction_and_the_rest_is_reclaimed(tmp_path):
    db = bitkv.open(tmp_path / "db", max_segment_size=4096, auto_compact=False)
    for i in range(600):
        db.put(b"k%d" % (i % 10), b"x" * 50)
    pin = db.last_seq - 100
    db.retain_history_from = pin
    db.compact()
    assert db.history_start() <= pin  # still readable from the pin on
    got = db.changes(bitkv.HistoryCursor(pin), max_records=1000)
    assert [c.seq for c in got] == list(range(pin, db.last_seq + 1))
    assert db.stats()["dead_bytes"] < 600 * 80  # the older part was compacted
    # The kept (newer) segments still load after the outputs: every key has its newest value.
    db.put(b"k3", b"newest")
    db.close()
    db = bitkv.open(tmp_path / "db", max_segment_size=4096, auto_compact=False)
    assert db[b"k3"] == b"newest" and db[b"k4"] == b"x" * 50
    assert len(db.changes(bitkv.HistoryCursor(pin), max_records=1000)) == db.last_seq - pin + 1
    db.put(b"k3", b"x" * 50)
    db.retain_history_from = None
    db.compact()
    with pytest.raises(bitkv.HistoryGone):
        db.changes(bitkv.HistoryCursor(pin))
    assert {db[b"k%d" % i] for i in range(10)} == {b"x" * 50}
    db.close()


@needs_redis
def test_the_history_pin_follows_the_replicas_and_is_released_when_they_leave(tmp_path):
    from bitkv.server import ServerThread

    with ServerThread(dir=str(tmp_path / "m"), port=0) as srv:
        m = redis.Redis(port=srv.port, socket_timeout=10)
        db = srv.server.db
        assert db.retain_history_from is None  # no replica: compaction is unconstrained
        replica = RedisProcess(tmp_path / "r", None, "--replicaof", "127.0.0.1",
                               str(srv.port))
        try:
            for i in range(50):
                m.set(f"k{i}", "v")
            assert m.execute_command("WAIT", 1, 10000) == 1
            wait_until(lambda: db.retain_history_from == db.last_seq + 1, 10,
                       "the pin to follow the replica to the head")
        finally:
            replica.stop()
        wait_until(lambda: db.retain_history_from is None, 10,
                   "the pin to be released when the replica left")
