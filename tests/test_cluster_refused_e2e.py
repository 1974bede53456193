"""
End to end, Redis refusing writes (as under C{MISCONF} or C{OOM}: here
C{min-replicas-to-write} with no replica):

  - a user's leave that Redis refuses is appended once Redis takes writes
    again, so the others see the user leave and the nick is free;
  - a lobby line whose answer was lost with the connection (Redis took it)
    and whose resend Redis refuses reaches everyone once, and its sender
    gets no C{ERROR};
  - a lobby message whose history write Redis refuses is in a newcomer's
    C{HISTORY} once Redis takes writes again.

The last two make Redis begin refusing at an exact point, through a proxy
(tests/tcpproxy.py's C{refuse}).  Real C{twistd -n chat --redis} nodes and a
private redis-server; every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import wait_until
from tests.tcpproxy import Proxy
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture
from tests.test_cluster_outage_e2e import lobby, proxied
from tests.test_cluster_outage_e2e import proxy as proxy_fixture
from twisted_chat.server.cluster.node import KEPT_RETRY

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

cluster = cluster_fixture
proxy = proxy_fixture

# A lease long enough that the refused heartbeats do not lose it.
NODE_TIMEOUT = 10.0

# Windows for what must NOT happen while Redis refuses writes, so fixed
# waits: long enough that a node has written again what Redis refused (it
# does every KEPT_RETRY seconds) and been refused again; and, after writes
# are taken again, a lease time of the last test (--node-timeout 3) and
# more, in which every node renews its lease and judges the others'.
REFUSED_AGAIN_WINDOW = KEPT_RETRY + 0.5
RENEWED_AND_JUDGED_WINDOW = 3.0


def writes_taken(c: Cluster) -> None:
    assert "+OK" in c.redis.command("CONFIG", "SET", "min-replicas-to-write", "0")


def test_a_leave_redis_refused_takes_effect_once_it_takes_writes(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(2, node_timeout=NODE_TIMEOUT)
    n0, n1 = c.nodes
    alice, bob = c.user(n0, "alice"), c.user(n1, "bob")
    bob.sync()
    assert "+OK" in c.redis.command("CONFIG", "SET", "min-replicas-to-write", "1")
    try:
        alice.send("BYE")
        assert alice.closed()
        n0.wait_log("Redis refused a write", timeout=5)
        time.sleep(REFUSED_AGAIN_WINDOW)  # retried at least once, refused again
        assert not [line for line in bob.sync() if line.startswith("LEFT")]
    finally:
        writes_taken(c)
    assert bob.expect("LEFT", timeout=5).split()[2:] == ["alice", "quit"]
    again = c.connect(n1)
    again.register("alice")
    bob.sync()
    assert [line.split()[2] for line in bob.lines if line.startswith("LEFT")] == ["alice"]


def test_a_line_whose_answer_was_lost_and_resend_refused_reaches_everyone_once(
    cluster: Callable[..., Cluster], proxy: Callable[[RedisServer], Proxy],
) -> None:
    c = cluster(1, node_timeout=NODE_TIMEOUT)
    between = proxy(c.redis)
    n0, n1 = c.node(url=proxied(between)), c.nodes[0]
    alice, bob = c.user(n0, "alice"), c.user(n1, "bob")
    for client in (alice, bob):
        client.sync()
    # The line's append reaches Redis, its answer is lost (muted, then the
    # connection cut, whenever the answer reached the proxy); the node
    # reconnects, and Redis refuses the append sent again.
    between.do("refuse 2 resent-line")
    between.do("mute")
    alice.send("MSG resent-line")
    assert bob.expect("MSG").endswith("alice * resent-line")  # Redis took it
    try:
        between.do("cut")
        between.do("heal")
        n0.wait_log("Redis refused a write", timeout=10)
        # The first copy is applied when the node reads the stream: the
        # echo, not "ERROR unavailable" (which would have it sent again).
        assert alice.expect("MSG", timeout=10).endswith("alice * resent-line")
    finally:
        writes_taken(c)
    alice.send("MSG after")
    bob.expect(lambda line: line.endswith("alice * after"))
    for client in (alice, bob):
        client.sync()
    assert lobby(alice) == lobby(bob) == ["resent-line", "after"]
    assert [line for line in alice.lines if line.startswith("ERROR")] == []


def test_a_message_whose_history_write_was_refused_is_in_a_newcomer_s_history(
    cluster: Callable[..., Cluster], proxy: Callable[[RedisServer], Proxy],
) -> None:
    c = cluster(0, node_timeout=NODE_TIMEOUT)
    between = proxy(c.redis)
    n0 = c.node(url=proxied(between))
    alice = c.user(n0, "alice")
    # The message's append passes; Redis refuses its history write (the
    # second piece the node sends that holds it).
    between.do("refuse 2 kept-line")
    try:
        alice.send("MSG kept-line")
        alice.expect(lambda line: line.endswith("alice * kept-line"))
        n0.wait_log("Redis refused a write", timeout=10)
        time.sleep(REFUSED_AGAIN_WINDOW)  # written again at least once, refused again
        assert "kept-line" not in c.redis.command("ZRANGE", "chat:history", "0", "-1")
    finally:
        writes_taken(c)
    wait_until(lambda: "kept-line" in c.redis.command("ZRANGE", "chat:history", "0", "-1"),
               timeout=5, what="the refused history write written again")
    later = c.node()  # loads the history from Redis
    block = c.user(later, "newcomer").lines
    assert [line.split(" ", 2)[2] for line in block
            if line.startswith("HISTORY")] == ["alice kept-line"]


def test_nobody_is_declared_dead_for_leases_lapsed_while_redis_refused_writes(
    cluster: Callable[..., Cluster],
) -> None:
    """Writes refused for longer than a lease (2 s with --node-timeout 3):
    every lease lapses, its node alive.  When Redis takes writes again, no
    node takes another for dead at its first heartbeat back."""
    c = cluster(2, node_timeout=3)
    n0, n1 = c.nodes
    alice, bob = c.user(n0, "alice"), c.user(n1, "bob")
    for client in (alice, bob):
        client.sync()
    assert "+OK" in c.redis.command("CONFIG", "SET", "min-replicas-to-write", "1")
    try:
        wait_until(lambda: c.redis.command("KEYS", "chat:node:*").startswith("*0"),
                   timeout=6, what="every lease lapsed")  # 2 s each, not renewed
    finally:
        writes_taken(c)
    time.sleep(RENEWED_AND_JUDGED_WINDOW)
    for client in (alice, bob):
        assert [line for line in client.sync() if line.startswith(("LEFT", "BYE"))] == []
    for server in (n0, n1):
        assert "missed its lease" not in server.log()
