"""
End to end (a private redis-server, two real C{twistd -n chat --redis}
nodes): the events one read brings from Redis are fanned out together
(rev21-clu F1; the unit tests are tests/test_cluster_intake.py).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from tests.redisproc import REDIS_SERVER
from tests.serverproc import LOOPBACK, free_port
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture
from tests.test_e2e_metrics import get, scrape

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

cluster = cluster_fixture  # the fixture, shared

LEAVERS = 40


def test_a_departure_burst_reaches_the_other_nodes_lobby_in_a_few_writes(
        cluster: Callable[..., Cluster]) -> None:
    """40 users of node A close their connections at once while node B is
    stopped (SIGSTOP, well within its lease): the 40 leave events wait in
    B's subscriber connection, and once B runs again its lobby gets the 40
    LEFT lines in one fan-out or a few (each of its members one write per
    fan-out), where it made one fan-out per event, 40, since txredisapi
    handed on one bulk string per reactor turn.  (B's --fanout-delay 50:
    its bound on a loaded machine, so that a slow read does not split.)"""
    c = cluster(0)
    metrics = free_port()
    a = c.node("--exempt", LOOPBACK)
    b = c.node("--exempt", LOOPBACK, "--fanout-delay", "50",
               "--metrics", f"tcp:{metrics}:interface={LOOPBACK}")
    watcher = c.user(b, "watcher")
    seer = c.user(a, "seer")
    leavers = [c.user(a, f"leaver{i}") for i in range(LEAVERS)]
    for client in (watcher, seer):
        client.sync(timeout=10)
    before = scrape(metrics)
    os.kill(b.pid, signal.SIGSTOP)
    try:
        for client in leavers:
            client.close()
        for _ in leavers:  # applied on A: the events are in Redis, and in B's socket
            seer.expect("LEFT", timeout=10)
    finally:
        os.kill(b.pid, signal.SIGCONT)
    left = [watcher.expect("LEFT", timeout=10).split(" ", 2)[2] for _ in leavers]
    assert sorted(left) == sorted(f"leaver{i} disconnected" for i in range(LEAVERS))
    watcher.sync(timeout=10)
    after = scrape(metrics)

    def moved(name: str) -> float:
        return get(after, name) - get(before, name)

    assert moved("chat_fanout_batch_lines_sum") == LEAVERS
    assert moved("chat_fanout_batch_lines_count") <= 4, moved("chat_fanout_batch_lines_count")
