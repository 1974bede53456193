"""
Recovery after Redis loses data, end to end (real redis-server, real nodes;
every wait bounded), what the review revclu found:

- F3: the users of a node that died while Redis restarted empty are shown
  leaving on the other nodes once its lease is found missing;
- F6: a node whose C{dead} Redis lost is declared dead again: its users'
  nicks are not held for good.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable

import pytest

from tests.redisproc import REDIS_SERVER
from tests.serverproc import LineClient
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture
from tests.test_cluster_read_e2e import Resp

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

cluster = cluster_fixture


def _users(client: LineClient) -> list[str]:
    client.send("USERS")
    lines = []
    while not lines or not lines[-1].startswith("USERS "):
        lines.append(client.expect(lambda line: line.startswith("USER"), timeout=10))
    return lines


def test_a_node_that_died_as_redis_restarted_empty_has_its_users_shown_leaving(
    cluster: Callable[..., Cluster],
) -> None:
    """revclu F3: alice and carol on node a, bob on node b.  a is killed
    (SIGKILL) and Redis restarts without its data before anyone declared a
    dead.  b rebuilds from nothing; a never says hello: bob, who was shown
    alice and carol online, is shown them leave once b finds a's lease
    missing (he used to be told nothing, for good)."""
    c = cluster(2, node_timeout=6.0)
    a, b = c.nodes
    c.user(a, "alice")
    c.user(a, "carol")
    bob = c.user(b, "bob")
    assert _users(bob) == ["USER alice lobby", "USER bob lobby", "USER carol lobby",
                           "USERS 3"]
    a.kill()
    c.redis.stop(signal.SIGKILL)
    c.redis.wipe()
    c.redis.start()
    b.wait_log("Redis lost its data", timeout=15)
    left = [bob.expect("LEFT", timeout=20) for _ in range(2)]
    assert sorted(line.split()[2:] for line in left) == [["alice", "disconnected"],
                                                         ["carol", "disconnected"]]
    assert _users(bob) == ["USER bob lobby", "USERS 1"]


def test_a_node_whose_dead_redis_lost_is_declared_again(
    cluster: Callable[..., Cluster],
) -> None:
    """revclu F6: watcher on node a, zed on node c.  c is killed; a declares
    it dead (watcher is shown LEFT zed); Redis loses that dead (the stream's
    last entry deleted, before a's next heartbeat: 2 s apart here).  a
    rebuilds from what Redis kept, zed online again: a declares c dead
    again (it used to skip it for good, zed's nick held), and watcher is
    not shown zed leave a second time."""
    c = cluster(2, node_timeout=12.0)
    a, dead = c.nodes
    watcher = c.user(a, "watcher")
    c.user(dead, "zed")
    watcher.expect(lambda line: line.startswith("JOINED") and line.endswith("zed"),
                   timeout=10)
    dead.kill()
    assert watcher.expect("LEFT", timeout=30).split()[2:] == ["zed", "disconnected"]
    r = Resp(c.redis.port)
    try:
        ((eid, fields),) = r("XREVRANGE", "chat:events", "+", "-", "COUNT", 1)
        assert json.loads(fields[fields.index("e") + 1])["t"] == "dead"
        assert r("XDEL", "chat:events", eid) == 1
    finally:
        r.close()
    watcher.send("MSG anyone?")
    a.wait_log("Redis lost the stream's last events", timeout=15)
    a.wait_log("missed its lease; it is dead", timeout=5)  # the first declaration
    newcomer = c.connect(a, timeout=10)
    newcomer.expect("NICK")
    answer = ""
    for _ in range(60):  # until zed's nick is free again (a lease time after the loss)
        newcomer.send("NICK zed")
        answer = newcomer.expect(lambda line: line.startswith(("READY", "RETRY")), timeout=10)
        if answer.startswith("READY"):
            break
        time.sleep(0.5)
    assert answer == "READY zed", answer
    watcher.sync()
    assert [line.split()[2:] for line in watcher.lines if line.startswith("LEFT")] == [
        ["zed", "disconnected"]]
