"""
C{--metrics} on a cluster node (twisted_chat/server/cluster/metrics.py): each
node reports its own connections, users and messages under the single
server's names, and the cluster's figures only under C{chat_cluster_*}; over
the deterministic cluster of tests/test_cluster_unit.py.  The HTTP side on
real nodes is in tests/test_cluster_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_cluster_own import join, pair
from tests.test_cluster_read import Node as RedisNode
from tests.test_cluster_read import cluster as redis_cluster
from tests.test_cluster_unit import Cluster, Node
from tests.test_e2e_metrics import get
from tests.test_metrics import Values
from twisted_chat.server.cluster.metrics import ClusterCollector
from twisted_chat.server.metrics.counters import chat_snapshot, registry_for


def scrape(node: Node) -> Values:
    """What the node's --metrics would serve (the registry cluster_node builds)."""
    factory = node.factory
    registry = registry_for(factory.stats, lambda: chat_snapshot(factory),
                            ClusterCollector(node.state))
    values: Values = {}
    for family in registry.collect():
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def per_node(scrapes: list[Values], name: str, **labels: str) -> list[float]:
    """One metric's value in each node's scrape."""
    return [get(values, name, **labels) for values in scrapes]


def test_each_node_reports_its_own_users_connections_and_messages() -> None:
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a, b = n0.user("a"), n0.user("b")
    c, d, e = n1.user("c"), n1.user("d"), n1.user("e")
    n1.connect()  # still choosing a nick, on node 1
    pair(cluster, a, c)  # across the nodes
    pair(cluster, d, e)  # on node 1
    b.send("MSG one", "MSG two")
    cluster.pump()
    d.send("MSG just us")
    b.send("DM c psst")
    cluster.pump()
    got = [scrape(n0), scrape(n1)]
    # The node's own, under the single server's names.
    assert per_node(got, "chat_users_online") == [2, 3]
    assert per_node(got, "chat_connections", state="handshake") == [0, 1]
    assert per_node(got, "chat_connections", state="lobby") == [1, 0]
    assert per_node(got, "chat_connections", state="paired") == [1, 3]
    # A pair across the nodes is half of one on each: the sum is the cluster's.
    assert per_node(got, "chat_pairs") == [0.5, 1.5]
    assert per_node(got, "chat_lobby_messages_total") == [2, 0]
    assert per_node(got, "chat_private_messages_total", kind="dm") == [1, 0]
    assert per_node(got, "chat_private_messages_total", kind="pair") == [0, 1]
    # Decided commands of each node's own users: NICK a, NICK b, PAIR c,
    # two MSGs and a DM; NICK c, d, e, ACCEPT, PAIR, ACCEPT and a MSG.
    assert per_node(got, "chat_cluster_decision_duration_seconds_count") == [6, 7]
    # The cluster's, named as such, the same on every node.
    assert per_node(got, "chat_cluster_users_online") == [5, 5]
    assert per_node(got, "chat_cluster_pairs") == [2, 2]
    assert per_node(got, "chat_cluster_nodes_with_users") == [2, 2]
    assert per_node(got, "chat_cluster_redis_up") == [1, 1]
    events = len(cluster.log.entries)
    assert per_node(got, "chat_cluster_events_read_total") == [events, events]
    assert all(1 <= reads <= events for reads in per_node(got, "chat_cluster_event_reads_total"))
    # No database on a node: no chat_history_*.
    assert not [name for name, _ in got[0] if name.startswith("chat_history")]
    # Logins and connections accepted: the node's own.
    assert per_node(got, "chat_logins_total") == [2, 3]
    assert per_node(got, "chat_accepted_connections_total", port="chat") == [2, 4]
    # Invitations on the inviter's node; a pair begun half on each node of its two.
    assert per_node(got, "chat_invitations_total") == [1, 1]
    assert per_node(got, "chat_pairings_total") == [0.5, 1.5]


def test_a_node_s_scrape_does_not_measure_the_history_it_does_not_show(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """reread13 server 2: a node shows no chat_history_*, yet each scrape
    measured its in-memory history (History.bytes) for chat_history_bytes,
    a value thrown away."""
    from twisted_chat.server.history import History

    asked: list[History] = []

    def measured(history: History) -> int:
        asked.append(history)
        return 0

    monkeypatch.setattr(History, "bytes", property(measured))
    cluster = Cluster(1)
    (node,) = cluster.nodes
    node.user("a").send("MSG one")
    cluster.pump()
    got = scrape(node)
    assert get(got, "chat_lobby_messages_total") == 1
    assert asked == []


def test_invitations_that_end_are_counted_once_in_the_cluster() -> None:
    """An invitation across two nodes ends on the inviter's node (each
    replica sees the end); once the inviter is gone, on the invitee's."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a, b = n0.user("a"), n1.user("b")
    a.send("PAIR b")
    cluster.pump()
    b.send("REJECT a")
    cluster.pump()
    b.send("PAIR a")
    cluster.pump()
    b.send("BYE")
    b.drop()
    cluster.pump()
    got = [scrape(n0), scrape(n1)]
    assert per_node(got, "chat_invitations_total") == [1, 1]
    assert per_node(got, "chat_invitations_ended_total", reason="rejected") == [1, 0]
    assert per_node(got, "chat_invitations_ended_total", reason="gone") == [1, 0]
    assert per_node(got, "chat_pairings_total") == [0, 0]


def test_deliveries_and_disconnects_are_the_nodes_own() -> None:
    """Lines go only to a node's own connections, and only its own
    connections end there: a lobby message from node 0 counts its deliveries
    on each node per member of that node."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a = n0.user("a")
    n1.user("b")
    n1.user("c")
    stats = [n.factory.stats for n in (n0, n1)]
    before = [(s.deliveries, s.bytes_out) for s in stats]
    a.send("MSG hi")
    cluster.pump()
    added = [(s.deliveries - lines, s.bytes_out - sent)
             for s, (lines, sent) in zip(stats, before, strict=True)]
    # One line: to a (its echo) on node 0; to b and c on node 1.
    assert [lines for lines, _ in added] == [1, 2]
    assert added[1][1] == 2 * added[0][1] > 0
    a.send("BYE")
    a.drop()
    cluster.pump()
    assert get(scrape(n0), "chat_disconnects_total", reason="quit") == 1
    assert get(scrape(n1), "chat_disconnects_total", reason="quit") == 0
    assert get(scrape(n1), "chat_cluster_nodes_with_users") == 1
    assert get(scrape(n0), "chat_cluster_nodes_with_users") == 1


def test_nodes_with_users_follow_joins_departures_and_a_dead_node() -> None:
    cluster = Cluster(3)
    n0, n1, n2 = cluster.nodes
    assert get(scrape(n0), "chat_cluster_nodes_with_users") == 0
    n1.user("b")
    assert get(scrape(n0), "chat_cluster_nodes_with_users") == 1
    n0.user("a")
    late = join(cluster, n2, "c")
    assert per_node([scrape(n) for n in cluster.nodes], "chat_cluster_nodes_with_users") \
        == [3, 3, 3]
    late.send("BYE")
    late.drop()
    cluster.pump()
    assert per_node([scrape(n) for n in cluster.nodes], "chat_cluster_nodes_with_users") \
        == [2, 2, 2]
    n0.state.node_dead("node1")
    cluster.pump()
    assert get(scrape(n0), "chat_cluster_nodes_with_users") == 1
    assert get(scrape(n0), "chat_cluster_users_online") == 1


def test_decision_time_and_redis_up() -> None:
    cluster = Cluster(2)
    n0, _ = cluster.nodes
    a = n0.user("a")
    a.send("MSG slow")  # appended now, read back 3 ms later
    cluster.clock.advance(0.003)
    cluster.pump()
    got = scrape(n0)
    assert get(got, "chat_cluster_decision_duration_seconds_sum") == pytest.approx(0.003, abs=1e-6)
    assert get(got, "chat_cluster_decision_duration_seconds_bucket", le="0.0025") == 1  # NICK
    assert get(got, "chat_cluster_decision_duration_seconds_bucket", le="0.005") == 2
    n0.state.available = False  # Redis out of reach
    assert get(scrape(n0), "chat_cluster_redis_up") == 0


def test_the_input_held_while_redis_is_out_of_reach_is_the_node_s_gauge() -> None:
    """The lines a user sends behind a command waiting for Redis are held,
    node-wide (HeldInput, bounded by --redis-queue): chat_held_input_bytes
    shows them, beside the commands' own chat_cluster_waiting_bytes, and
    goes back to 0 once Redis answers."""
    from tests.test_cluster_outage import outage, said

    cluster, n0, log = outage(2)
    ann, bob = n0.user("ann"), cluster.nodes[1].user("bob")
    assert get(scrape(n0), "chat_held_input_bytes") == 0
    log.down()
    ann.send("MSG first")  # waits for Redis
    ann.send("MSG " + "x" * 3000, "MSG third")
    got = scrape(n0)
    held = n0.factory.held_input.total
    assert held >= 3000 + len("MSG third")
    assert get(got, "chat_held_input_bytes") == held
    assert get(got, "chat_cluster_waiting_bytes") > 0
    log.back()
    for _ in range(10):
        cluster.pump()
        cluster.clock.advance(0)
    assert said(bob.take()) == ["first", "x" * 3000, "third"]
    assert get(scrape(n0), "chat_held_input_bytes") == 0



def cluster_gauge(node: RedisNode, name: str) -> float:
    """One chat_cluster_* gauge, as a scrape of a node on the Redis fakes reads it."""
    for family in ClusterCollector(node.state).collect():
        if family.name == name:
            return float(family.samples[0].value)
    raise AssertionError(f"no {name}")


def test_live_nodes_are_counted_with_or_without_users() -> None:
    """chat_cluster_nodes counts every node whose lease is alive, users or
    not (read by the heartbeat, which each node's own lease write lists in
    chat:nodes); a node whose lease lapsed is not counted, and is counted
    again once it is back; nor is a node id declared dead whose lease lingers."""
    redis, clock, nodes = redis_cluster(3)
    n0, n1, n2 = nodes
    n0.user("ann")  # n1 and n2 have no users
    clock.advance(2.5)  # a heartbeat each
    redis.pump()
    assert [cluster_gauge(n, "chat_cluster_nodes") for n in nodes] == [3, 3, 3]
    assert [cluster_gauge(n, "chat_cluster_nodes_with_users") for n in nodes] == [1, 1, 1]
    n2.cut()  # no heartbeat from n2 from now on
    redis.keys.pop("chat:node:" + n2.state.node)  # MemoryRedis ignores PX: the lease lapses
    clock.advance(2.5)
    redis.pump()
    assert [cluster_gauge(n, "chat_cluster_nodes") for n in (n0, n1)] == [2, 2]
    assert redis.sets["chat:nodes"] == {n0.state.node, n1.state.node}
    n2.reachable = True
    for _ in range(4):  # its reconnection, then its heartbeat
        clock.advance(1)
        redis.pump()
    clock.advance(2.5)
    redis.pump()
    assert [cluster_gauge(n, "chat_cluster_nodes") for n in nodes] == [3, 3, 3]
    old = n2.state.node
    n1.state.node_dead(old)  # declared dead: n2 goes on under a new id
    redis.pump()
    for _ in range(2):  # every node's heartbeat after n2's (its new id listed)
        clock.advance(2.5)
        redis.pump()
    assert n2.state.node != old and "chat:node:" + old in redis.keys  # until it expires
    assert redis.sets["chat:nodes"] == {n0.state.node, n1.state.node, n2.state.node, old}
    assert [cluster_gauge(n, "chat_cluster_nodes") for n in nodes] == [3, 3, 3]


WALKED = "a scrape walked a collection the reactor changes"


class _NoWalk(dict[Any, Any]):
    """A dict that may be sized and asked, never walked."""

    def __iter__(self) -> Iterator[Any]:
        raise AssertionError(WALKED)

    def keys(self) -> Any:
        raise AssertionError(WALKED)

    def values(self) -> Any:
        raise AssertionError(WALKED)

    def items(self) -> Any:
        raise AssertionError(WALKED)


def test_a_scrape_reads_sizes_only() -> None:
    """The scrape runs on a thread of its own while the reactor changes the
    users: it may read sizes and counters, never walk a dict or set (one
    changing size under it would fail the scrape)."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a = n0.user("a")
    pair(cluster, a, n1.user("b"))
    n0.user("c")
    own = n0.state.own
    own._online, own._lobby, own.remote = (
        _NoWalk(own._online), _NoWalk(own._lobby), _NoWalk(own.remote))
    hub = n0.hub
    hub.online, hub.lobby = _NoWalk(hub.online), _NoWalk(hub.lobby)
    n0.factory.connections = _NoWalk(n0.factory.connections)
    n0.state.replica.members = _NoWalk(n0.state.replica.members)
    got = scrape(n0)
    assert get(got, "chat_users_online") == 2
    assert get(got, "chat_pairs") == 0.5
    assert get(got, "chat_cluster_users_online") == 3
    assert get(got, "chat_cluster_nodes_with_users") == 2
