"""Unmodified Redis Sentinel (``redis-sentinel``, Debian's 7.0) monitoring a `bitkv serve`
master: three Sentinels see it up, find each other through ``__sentinel__:hello`` (Pub/Sub
on the master), and answer for its address. Skipped without ``redis-sentinel``.

Failover (Sentinel promoting a replica) needs replication and is tested with it."""

from __future__ import annotations

import time
from collections import Counter

import pytest

redis = pytest.importorskip("redis", reason="redis-py is needed for the server tests")

from procs import wait_until  # noqa: E402
from sentinel_support import (  # noqa: E402
    CommandTap,
    Sentinels,
    require_sentinel,
    running_sentinels,
)

from bitkv.server import ServerThread  # noqa: E402
from bitkv.server.commands import lookup  # noqa: E402

# The same code in both engine modes: CI's pure-Python run skips it (.ci/run).
pytestmark = pytest.mark.engine_independent

# Everything Sentinel 7.0 sends to a master while it monitors one (sentinel.c:
# sentinelReconnectInstance, sentinelSendPeriodicCommands, sentinelSendHello); AUTH too when
# it is configured with `sentinel auth-pass`.
MONITORING_COMMANDS = {"CLIENT SETNAME", "PING", "INFO", "PUBLISH", "SUBSCRIBE"}


@pytest.fixture
def master(tmp_path):
    require_sentinel()
    with ServerThread(dir=str(tmp_path / "db"), port=0) as srv:
        yield srv


def sees_master_up(sentinels: Sentinels, others: int) -> bool:
    states = [sentinels.master_state(i) for i in range(len(sentinels.processes))]
    return all(s["flags"] == "master" and int(s["num-other-sentinels"]) == others
               for s in states)


def test_three_sentinels_monitor_a_bitkv_master(master, tmp_path):
    with running_sentinels(tmp_path / "sentinels", "127.0.0.1", master.port) as sentinels:
        try:
            wait_until(lambda: sees_master_up(sentinels, 2), 30,
                       "every Sentinel to see the master up and the two other Sentinels")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sentinels.logs()}") from None
        for i in range(3):
            state = sentinels.master_state(i)
            assert state["flags"] == "master"  # not s_down, o_down or disconnected
            assert int(state["num-other-sentinels"]) == 2
            assert int(state["quorum"]) == 2
            assert state["role-reported"] == "master"
            assert sentinels.master_addr(i) == ("127.0.0.1", master.port)

        # On the master: each Sentinel holds a command link and a subscribed Pub/Sub link.
        r = redis.Redis(host="127.0.0.1", port=master.port, protocol=2, socket_timeout=5)
        try:
            links = [c for c in r.client_list() if c["name"].startswith("sentinel-")]
            assert sorted(c["name"].rsplit("-", 1)[1] for c in links) == \
                ["cmd"] * 3 + ["pubsub"] * 3
            assert all(c["flags"] == ("P" if c["name"].endswith("-pubsub") else "N")
                       for c in links)
            assert r.execute_command("PUBSUB", "NUMSUB", "__sentinel__:hello") == \
                [b"__sentinel__:hello", 3]
            assert len(r.client_list(_type="pubsub")) == 3
        finally:
            r.close()
        # Still up a few hello periods (2 s) later: no link dropped for silence.
        time.sleep(4)
        assert sees_master_up(sentinels, 2), sentinels.logs()


def test_what_sentinel_sends_while_monitoring(master, tmp_path):
    """Sentinels pointed at a recording proxy in front of the master: every command they
    send is one bitkv implements, and each Pub/Sub link is set up once and kept."""
    tap = CommandTap("127.0.0.1", master.port)
    try:
        with running_sentinels(tmp_path / "sentinels", "127.0.0.1", tap.port) as sentinels:
            wait_until(lambda: sees_master_up(sentinels, 2), 30,
                       "every Sentinel to see the master up and the two other Sentinels")
            time.sleep(3)
            sent = list(tap.commands)
    finally:
        tap.close()
    names = Counter(c.name for c in sent)
    assert set(names) == MONITORING_COMMANDS, names
    for c in sent:
        assert lookup(c.args[0]) is not None, c.args
    assert names["SUBSCRIBE"] == 3  # one Pub/Sub link per Sentinel, never re-established
    assert {tuple(c.args) for c in sent if c.name == "SUBSCRIBE"} == \
        {(b"SUBSCRIBE", b"__sentinel__:hello")}
    hellos = [c.args for c in sent if c.name == "PUBLISH"]
    assert all(args[1] == b"__sentinel__:hello" and b",mymaster,127.0.0.1," in args[2]
               for args in hellos)
