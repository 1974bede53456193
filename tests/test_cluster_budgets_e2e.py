"""
Two real nodes and a real redis-server: one address's lobby lines are held
to one budget for the whole cluster, not one per node (review rev-clu F3;
the rules deterministically: tests/test_cluster_budgets.py).  Everything
stopped by the cluster fixture.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from tests.redisproc import REDIS_SERVER
from tests.serverproc import LOOPBACK, LineClient
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture
from tests.test_cluster_read_e2e import commandstats
from twisted_chat.server.cluster.budgets import BUCKETS
from twisted_chat.server.limits.addresses import LOBBY

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

cluster = cluster_fixture

# Not the tests' 127.0.0.1, which the nodes exempt from the per-address limits.
SOURCE = "127.0.0.5"


def user_from(c: Cluster, port: int, nick: str, source: str = SOURCE) -> LineClient:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((LOOPBACK, port))
    client = LineClient(port, sock=sock)
    c.clients.append(client)
    client.register(nick)
    return client


def test_one_address_gets_one_lobby_budget_on_two_nodes(
    cluster: Callable[..., Cluster],
) -> None:
    """An address sends 10 lobby lines on node A, then, once A has reported
    them to Redis, 10 on node B, with --ip-lobby-rate 0.5 --ip-lobby-burst
    5: the cluster lets through its burst (and what refilled meanwhile),
    and at most one line more on B (B's copy of the
    bucket had not heard of A's lines: it lets one through, then has the
    cluster's count), where two nodes each gave a burst before (10)."""
    c = cluster(2, "--ip-lobby-rate", "0.5", "--ip-lobby-burst", "5")
    a, b = c.nodes
    watcher = c.user(a, "watcher")
    ann, bob = user_from(c, a.port, "ann"), user_from(c, b.port, "bob")
    watcher.sync()
    started = time.monotonic()
    for i in range(10):
        ann.send(f"MSG ann{i}")
    ann.sync()  # each line handled (in order: the PING after the last)
    # Node A's report of them in Redis (draining at 0.5 a second since).
    deadline = time.monotonic() + 5
    while float(c.redis.call("HGET", f"{BUCKETS}{LOBBY}:{SOURCE}", "level") or 0) < 4:
        assert time.monotonic() < deadline, "node A never reported ann's lines"
        time.sleep(0.02)
    for i in range(10):
        bob.send(f"MSG bob{i}")
    bob.sync()
    elapsed = time.monotonic() - started
    # The bucket refills at 0.5 a second: a line more for each 2 s this took
    # (none unless the machine is slow); two bursts (10) stay out of reach.
    refilled = int(elapsed * 0.5)
    assert refilled <= 3, f"took {elapsed:.1f} s: too slow to tell one budget from two"
    said = [line.split(" ", 4)[-1] for line in watcher.sync() if line.startswith("MSG")]
    assert said[:5] == [f"ann{i}" for i in range(5)], said
    assert len(said) <= 5 + 1 + refilled, (said, elapsed)
    assert any(line.startswith("ERROR flood") for line in bob.lines)


def test_lobby_lines_at_a_person_s_pace_cost_no_script_each(
    cluster: Callable[..., Cluster],
) -> None:
    """rev10-s10 F3: six addresses, one lobby line each every 0.8 s (each
    line finds its address's copy stale): each line was reported at once
    by its own EVAL (1.04 per lobby line measured); now the lines of a
    round join one report, an EVALSHA (its script's TIME counts the
    reports)."""
    c = cluster(1)
    (node,) = c.nodes
    sources = [f"127.0.0.{i}" for i in range(10, 16)]
    users = [user_from(c, node.port, f"p{i}", source) for i, source in enumerate(sources)]
    for client in users:
        client.sync()
    time.sleep(0.8)  # the registrations' reports answered, the copies stale again
    before = commandstats(c.redis)
    rounds = 4
    for r in range(rounds):
        for client in users:
            client.send(f"MSG round {r}")
        for client in users:
            client.sync()
        time.sleep(0.8)
    after = commandstats(c.redis)
    spent = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    lines = rounds * len(users)
    assert spent.get("time", 0) <= 2 * rounds, spent  # one report a round (two if split)
    assert spent.get("eval", 0) < lines // 2, spent  # the history's prunes only
