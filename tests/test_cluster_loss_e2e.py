"""
Redis losing part of its data under running nodes, end to end (real
redis-server, real nodes; every wait bounded): the stream's last entries
deleted, and FLUSHDB without a restart.  Nobody is told BYE, and a node
started afterwards shows the same users as the running ones.
"""

from __future__ import annotations

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


def _everyone_stays(c: Cluster, clients: list[LineClient], nicks: list[str]) -> None:
    """Nobody was told BYE or saw anyone leave; a node started now lists
    the same users."""
    late = c.node()
    newcomer = c.user(late, "newcomer")
    assert [line for line in newcomer.lines if line.startswith("USER")] == [
        *[f"USER {nick} lobby" for nick in sorted([*nicks, "newcomer"])],
        f"USERS {len(nicks) + 1}"]
    for client in clients:
        lines = client.sync()
        assert not [line for line in lines if line.startswith(("BYE", "LEFT"))], lines
    clients[0].send("MSG heard by the newcomer")
    assert newcomer.expect("MSG", timeout=10).endswith("heard by the newcomer")


def test_the_streams_last_entries_lost_under_running_nodes(
    cluster: Callable[..., Cluster],
) -> None:
    """The stream's last entries go (XDEL: what a crash with appendfsync
    everysec loses, without the restart): the next event follows an older
    entry than the nodes applied; they say why, keep their users, announce
    them again, and the lobby goes on."""
    c = cluster(2)
    alice, bob = c.user(c.nodes[0], "alice"), c.user(c.nodes[1], "bob")
    for client in (alice, bob):
        client.sync()
    alice.send("MSG kept")
    alice.send("MSG lost one")
    alice.send("MSG lost two")
    bob.expect(lambda line: line.endswith("lost two"), timeout=10)
    r = Resp(c.redis.port)
    try:
        last = r("XREVRANGE", "chat:events", "+", "-", "COUNT", 2)
        assert r("XDEL", "chat:events", *[entry[0] for entry in last]) == 2
    finally:
        r.close()
    bob.send("MSG after")
    for client in (alice, bob):
        client.expect(lambda line: line.endswith("bob * after"), timeout=15)
    for server in c.nodes:
        server.wait_log("Redis lost the stream's last events", timeout=10)
        assert "missed events" not in server.log()
    _everyone_stays(c, [alice, bob], ["alice", "bob"])


def test_flushdb_under_running_nodes_takes_the_new_epoch_path(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(2)
    alice, bob = c.user(c.nodes[0], "alice"), c.user(c.nodes[1], "bob")
    for client in (alice, bob):
        client.sync()
    alice.send("MSG before")
    bob.expect(lambda line: line.endswith("before"), timeout=10)
    c.redis.command("FLUSHDB")
    for server in c.nodes:
        server.wait_log("Redis lost its data", timeout=15)
        server.wait_log("Redis is back", timeout=15)
    _everyone_stays(c, [alice, bob], ["alice", "bob"])
