"""The server's metrics (issue 16, point 3): INFO commandstats, errorstats, latencystats,
keyspace_hits/misses, expired_keys, instantaneous_ops_per_sec and CONFIG RESETSTAT, read
with redis-py from a real `bitkv serve`; the Prometheus endpoint (--metrics-port) scraped
over HTTP; and the histogram and rate sampler behind them."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

redis = pytest.importorskip("redis", reason="redis-py is needed for the server tests")

from procs import BitkvProcess, wait_until  # noqa: E402

import bitkv  # noqa: E402
from bitkv.server import metrics as m  # noqa: E402
from bitkv.server.app import ServerConfig  # noqa: E402

# The same code in both engine modes: CI's pure-Python run skips it (.ci/run).
pytestmark = pytest.mark.engine_independent


@pytest.fixture
def server(tmp_path):
    proc = BitkvProcess(tmp_path / "db")
    try:
        yield proc
    finally:
        proc.stop()


def cmdstat(info: dict, name: str) -> dict:
    return info.get(f"cmdstat_{name}", {"calls": 0, "rejected_calls": 0, "failed_calls": 0})


def test_commandstats_errorstats_and_keyspace_hits(server):
    r = server.client()
    pipe = r.pipeline(transaction=False)
    for i in range(40):
        pipe.set(f"k{i}", b"v")  # the group-committed SET
    for i in range(50):
        pipe.get(f"k{i}")  # the inlined GET: 40 hits, 10 misses
    pipe.execute()
    assert r.mget(["k0", "k1", "nope"]) == [b"v", b"v", None]  # 2 hits, 1 miss
    assert r.strlen("k2") == 1 and r.getrange("nope", 0, 1) == b""  # 1 hit, 1 miss
    r.set("text", b"abc")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        r.execute_command("INCRBY", "text", "1")  # ran, failed
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        r.execute_command("GET")  # rejected: arity
    with pytest.raises(redis.ResponseError, match="unknown command"):
        r.execute_command("NOSUCHCOMMAND")  # counted in errorstats only
    info = r.info("commandstats")
    get, set_, incrby = cmdstat(info, "get"), cmdstat(info, "set"), cmdstat(info, "incrby")
    assert (get["calls"], get["rejected_calls"], get["failed_calls"]) == (50, 1, 0)
    assert (set_["calls"], set_["failed_calls"]) == (41, 0)
    assert (incrby["calls"], incrby["failed_calls"]) == (1, 1)
    assert cmdstat(info, "mget")["calls"] == 1
    for stat in (get, set_, incrby):
        assert stat["usec"] >= 0 and stat["usec_per_call"] > 0
    assert not any(k.startswith("cmdstat_nosuchcommand") for k in info)

    stats = r.info("stats")
    assert (stats["keyspace_hits"], stats["keyspace_misses"]) == (40 + 2 + 1, 10 + 1 + 1)
    assert stats["total_error_replies"] == 3
    assert r.info("errorstats") == {"errorstat_ERR": {"count": 3}}

    latency = r.info("latencystats")
    p = latency["latency_percentiles_usec_get"]
    assert 0 < p["p50"] <= p["p99"] <= p["p99.9"]
    assert set(latency) >= {"latency_percentiles_usec_set", "latency_percentiles_usec_incrby"}

    # Redis's sections: errorstats is in the default INFO, commandstats and latencystats
    # only in "all"/"everything" (or by name).
    default = r.info()
    assert "errorstat_ERR" in default and not any(k.startswith("cmdstat_") for k in default)
    order = list(r.info("everything"))  # redis-py keeps the lines' order
    assert order.index("cmdstat_get") < order.index("errorstat_ERR") \
        < order.index("latency_percentiles_usec_get") < order.index("db0")


def test_rejections_noauth_exec_and_resetstat(tmp_path):
    proc = BitkvProcess(tmp_path / "db", None, "--requirepass", "secret")
    try:
        with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as raw:
            raw.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nx\r\n")  # NOAUTH: rejected, not run
            assert raw.recv(100).startswith(b"-NOAUTH")
        r = proc.client(password="secret")
        pipe = r.pipeline(transaction=True)
        pipe.set("n", b"1")
        pipe.incr("n")
        pipe.get("n")
        assert pipe.execute() == [True, 2, b"2"]  # commands inside EXEC are counted
        info = r.info("commandstats")
        assert cmdstat(info, "get")["rejected_calls"] == 1
        assert cmdstat(info, "get")["calls"] == 1 and cmdstat(info, "incrby")["calls"] == 1
        assert cmdstat(info, "exec")["calls"] == 1
        assert r.info("errorstats") == {"errorstat_NOAUTH": {"count": 1}}
        assert r.info("stats")["total_error_replies"] == 1

        assert r.config_resetstat()
        info = r.info("everything")
        assert not any(k.startswith(("cmdstat_get", "errorstat_", "latency_percentiles_usec_get"))
                       for k in info)
        assert info["keyspace_hits"] == 0 and info["total_error_replies"] == 0
        assert info["total_commands_processed"] == 1  # the INFO itself
    finally:
        proc.stop()


def test_expired_keys_and_instantaneous_ops(server):
    r = server.client()
    for i in range(5):
        r.set(f"e{i}", b"v", px=30)
    r.set("stays", b"v")
    time.sleep(0.1)
    assert r.get("e0") is None
    # INFO reads the store's stats(), which purges what expired: every key is counted once.
    assert r.info("stats")["expired_keys"] == 5
    assert r.info("stats")["expired_keys"] == 5

    deadline = time.monotonic() + 0.6
    while time.monotonic() < deadline:
        r.ping()
    assert r.info("stats")["instantaneous_ops_per_sec"] > 0


def test_store_counts_expired_keys_by_purge_and_by_compaction(tmp_path, clock):
    with bitkv.open(str(tmp_path / "db"), clock=clock) as db:
        for i in range(4):
            db.put(b"p%d" % i, b"v", ttl=1)
        db.put(b"keep", b"v")
        clock.advance(2)
        assert db.stats()["expired_keys"] == 4  # the purge stats() runs
    with bitkv.open(str(tmp_path / "db2"), clock=clock, log_expirations=False) as db:
        for i in range(3):
            db.put(b"c%d" % i, b"x" * 100, ttl=1)
        db.put(b"keep", b"v")
        db.put(b"keep", b"w")  # dead bytes, so compaction has work
        clock.advance(2)
        db.compact()  # compaction meets the expired records first and unindexes them
        assert db.expired_keys == 3
        assert db.stats()["expired_keys"] == 3 and db.stats()["compactions"] == 1


def test_store_stats_per_segment_bytes(tmp_path):
    with bitkv.open(str(tmp_path / "db"), max_segment_size=4096) as db:
        for i in range(100):
            db.put(b"k%d" % (i % 30), b"x" * 100)
        stats = db.stats()
        per = stats["segment_bytes"]
        assert len(per) == stats["segments"] > 1
        assert sum(s["live_bytes"] for s in per) == stats["live_bytes"]
        assert sum(s["dead_bytes"] for s in per) == stats["dead_bytes"] > 0
        assert [s["id"] for s in per] == sorted(s["id"] for s in per)


# -- Prometheus -----------------------------------------------------------------------------

def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_prometheus_endpoint_of_a_bitkv_serve_process(tmp_path):
    pytest.importorskip("prometheus_client")
    proc = BitkvProcess(tmp_path / "db", None, "--metrics-port", "0")
    try:
        found = re.search(r"Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics",
                          proc.output())
        assert found, proc.output()
        port = int(found.group(1))
        before = scrape(port)
        assert before[("bitkv_keyspace_hits_total", ())] == 0
        assert before[("bitkv_store_keys", ())] == 0

        r = proc.client()
        for i in range(20):
            r.set(f"k{i}", b"v" * 50)
        r.set("k0", b"w" * 50)  # a dead record
        assert r.get("k1") == b"v" * 50 and r.get("nope") is None
        with pytest.raises(redis.ResponseError):
            r.execute_command("GET")
        after = scrape(port)
        assert after[("bitkv_command_calls_total", (("cmd", "set"),))] == 21
        assert after[("bitkv_command_calls_total", (("cmd", "get"),))] == 2
        assert after[("bitkv_command_rejected_calls_total", (("cmd", "get"),))] == 1
        assert after[("bitkv_errors_total", (("err", "ERR"),))] == 1
        assert after[("bitkv_keyspace_hits_total", ())] == 1
        assert after[("bitkv_keyspace_misses_total", ())] == 1
        assert after[("bitkv_command_latency_seconds", (("cmd", "get"), ("quantile", "0.5")))] > 0
        assert after[("bitkv_store_keys", ())] == 20
        assert after[("bitkv_store_dead_bytes", ())] > 0
        live = {labels: v for (name, labels), v in after.items()
                if name == "bitkv_segment_live_bytes"}
        assert sum(live.values()) == after[("bitkv_store_live_bytes", ())] > 0
        assert ("bitkv_recovery", (("finding", "truncated_bytes"),)) in after
        assert after[("bitkv_commands_processed_total", ())] > before[
            ("bitkv_commands_processed_total", ())]

        r.bgrewriteaof()
        wait_until(lambda: scrape(port)[("bitkv_compactions_total", ())] == 1, 20,
                   "the compaction to show")
    finally:
        proc.stop()


def test_metrics_port_without_prometheus_client_is_a_clear_error(tmp_path):
    code = ("import sys; sys.modules['prometheus_client'] = None; "
            "from bitkv.server.__main__ import main; main(sys.argv[1:])")
    done = subprocess.run([sys.executable, "-c", code, "--dir", str(tmp_path / "db"),
                           "--port", "0", "--metrics-port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'bitkv[metrics]'" in done.stderr
    assert not (tmp_path / "db").exists()  # refused before anything was opened


def test_metrics_bind_follows_protected_mode(tmp_path):
    with pytest.raises(ValueError, match="metrics endpoint has no password"):
        ServerConfig(dir=str(tmp_path), metrics_port=0, metrics_bind="0.0.0.0",
                     requirepass="secret")
    ServerConfig(dir=str(tmp_path), metrics_port=0, metrics_bind="0.0.0.0",
                 protected_mode=False)
    ServerConfig(dir=str(tmp_path), metrics_port=0, metrics_bind="::1")


# -- the pieces --------------------------------------------------------------------------------

def test_histogram_buckets_bound_every_duration_within_their_precision():
    rng = random.Random(16)
    for ns in [*range(0, 4096), *(rng.randrange(1, 1 << 45) for _ in range(20000))]:
        index = m.bucket_of(ns)
        upper = m.bucket_upper(index)
        assert upper >= ns and (index == 0 or m.bucket_upper(index - 1) < ns)
        assert upper - ns <= ns / 16


def test_percentiles_are_within_the_stated_precision():
    durations = [1000 * i for i in range(1, 10001)]  # 1 us .. 10 ms
    histogram = m.new_histogram()
    for d in durations:
        histogram[m.bucket_of(d)] += 1
    for q, exact in ((50, 5_000_000), (99, 9_900_000), (99.9, 9_990_000)):
        got = m.percentile(histogram, q)
        assert exact <= got <= exact * 1.0625, (q, got)
    assert m.percentile(m.new_histogram(), 50) == 0


def test_instantaneous_ops_is_the_mean_of_16_samples():
    metrics = m.Metrics()
    metrics.sample_ops(0, now=0.0)
    for i in range(1, 9):
        metrics.sample_ops(i * 100, now=i * 0.1)  # 1,000 commands/s for 0.8 s
    assert metrics.instantaneous_ops_per_sec == 500  # 8 of the 16 samples so far
    for i in range(9, 30):
        metrics.sample_ops(800 + (i - 8) * 100, now=i * 0.1)
    assert metrics.instantaneous_ops_per_sec == 1000


def test_error_prefix():
    assert m.error_prefix(b"-ERR syntax error\r\n") == "ERR"
    assert m.error_prefix(b"-WRONGTYPE Operation\r\n") == "WRONGTYPE"
    assert m.error_prefix(b"-NOAUTH\r\n") == "NOAUTH"
