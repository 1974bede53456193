"""
End to end: a user's leave that Redis refuses (its writes refused, as under
C{MISCONF} or C{OOM}: here C{min-replicas-to-write} with no replica) is
appended once Redis takes writes again, so the others see the user leave
and the nick is free.  Real C{twistd -n chat --redis} nodes and a private
redis-server; every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.redisproc import REDIS_SERVER
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

cluster = cluster_fixture


def test_a_leave_redis_refused_takes_effect_once_it_takes_writes(
    cluster: Callable[..., Cluster],
) -> None:
    # A lease long enough that the refused heartbeats do not lose it.
    c = cluster(2, node_timeout=10)
    n0, n1 = c.nodes
    alice, bob = c.user(n0, "alice"), c.user(n1, "bob")
    bob.sync()
    assert "+OK" in c.redis.command("CONFIG", "SET", "min-replicas-to-write", "1")
    try:
        alice.send("BYE")
        assert alice.closed()
        n0.wait_log("Redis refused a write", timeout=5)
        time.sleep(1.5)  # retried at least once, refused again
        assert not [line for line in bob.sync() if line.startswith("LEFT")]
    finally:
        assert "+OK" in c.redis.command("CONFIG", "SET", "min-replicas-to-write", "0")
    assert bob.expect("LEFT", timeout=5).split()[2:] == ["alice", "quit"]
    again = c.connect(n1)
    again.register("alice")
    bob.sync()
    assert [line.split()[2] for line in bob.lines if line.startswith("LEFT")] == ["alice"]
