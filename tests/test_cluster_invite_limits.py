"""
Nodes with different C{--max-invites} / C{--max-invites-per-ip} (a rolling
change of them) still decide each C{PAIR} alike: the inviter's node's
limits travel in its event, as C{--invite-timeout} does, so every replica
reaches the same state and nobody is left in a half-open pair (review
revclu F5).
"""

from __future__ import annotations

from typing import Any

from tests.test_cluster_unit import Cluster, Node


def _cluster(*configs: dict[str, Any]) -> Cluster:
    cluster = Cluster(0)
    for i, config in enumerate(configs):
        cluster.nodes.append(Node(cluster, f"node{i}", **config))
    return cluster


def _same_state(cluster: Cluster) -> None:
    first = cluster.nodes[0].state.replica.snapshot()
    for node in cluster.nodes[1:]:
        assert node.state.replica.snapshot() == first


def test_max_invites_of_the_inviters_node_decides_everywhere() -> None:
    cluster = _cluster({"max_invites": 1}, {})
    a, b = cluster.nodes
    alice = a.user("alice")
    bob, carol = b.user("bob"), b.user("carol")
    carol.send("PAIR bob")
    cluster.pump()
    assert bob.take() == ["INVITE carol"]
    alice.send("PAIR bob")  # node A's limit: bob has 1 open already
    cluster.pump()
    assert alice.take() == ["ERROR busy bob has 1 open invitations already; try again later"]
    assert bob.take() == []  # node B's replica refused it too
    bob.send("ACCEPT alice")
    cluster.pump()
    assert bob.take()[0].startswith("ERROR no-invite")
    _same_state(cluster)
    # The other way round: B's inviter, under B's limit (10), is taken on A too.
    dave = b.user("dave")
    dave.send("PAIR bob")
    cluster.pump()
    assert dave.take() == ["PENDING bob"]
    assert bob.take() == ["INVITE dave"]
    bob.send("ACCEPT dave")
    cluster.pump()
    assert "PAIRED dave" in bob.take()
    alice.send("USERS")
    assert "USER bob paired" in alice.take()
    _same_state(cluster)


def test_max_invites_per_ip_of_the_inviters_node_decides_everywhere() -> None:
    # Every test connection comes from 127.0.0.1: one source for all.
    cluster = _cluster({"max_invites_per_ip": 1}, {})
    a, b = cluster.nodes
    alice = a.user("alice")
    b.user("bob")
    carol, dave = b.user("carol"), b.user("dave")
    carol.send("PAIR bob")
    cluster.pump()
    assert carol.take() == ["PENDING bob"]
    alice.send("PAIR dave")  # node A's limit: the address has 1 open already
    cluster.pump()
    assert alice.take() == ["ERROR pending users from your address have 1 open "
                            "invitations already; wait for one to end"]
    assert dave.take() == []
    dave.send("ACCEPT alice")
    cluster.pump()
    assert dave.take()[0].startswith("ERROR no-invite")
    _same_state(cluster)
    # B's user, under B's limit (10), invites on A's replica too.
    dave.send("PAIR alice")
    cluster.pump()
    assert dave.take() == ["PENDING alice"]
    assert alice.take() == ["INVITE dave"]
    alice.send("ACCEPT dave")
    cluster.pump()
    assert "PAIRED dave" in alice.take()
    _same_state(cluster)


def test_one_address_s_share_of_a_user_s_invitations_is_the_inviters_node_s() -> None:
    """One address's users hold at most a fifth of a user's --max-invites
    (rev16-sec 3), of the inviter's node's --max-invites, which its event
    carries: every replica decides each PAIR alike."""
    cluster = _cluster({}, {"max_invites": 20})  # shares: 2 on node A, 4 on node B
    a, b = cluster.nodes
    bob = b.user("bob", host="192.0.2.9")
    friend = a.user("friend", host="198.51.100.2")
    here = [b.user(f"b{i}") for i in range(2)]
    there = a.user("alice")  # 127.0.0.1 too: one source for the four
    for conn in here:
        conn.send("PAIR bob")
    cluster.pump()
    there.send("PAIR bob")  # node A's share: the address has 2 to bob already
    cluster.pump()
    assert there.take() == ["ERROR pending users from your address have 2 open "
                            "invitations to bob already; wait for one to end"]
    friend.send("PAIR bob")  # another address still can
    cluster.pump()
    assert friend.take() == ["PENDING bob"]
    assert bob.take() == ["INVITE b0", "INVITE b1", "INVITE friend"]
    third = b.user("b2")
    third.send("PAIR bob")  # node B's share (4): taken on A's replica too
    cluster.pump()
    assert third.take() == ["PENDING bob"]
    assert bob.take() == ["INVITE b2"]
    _same_state(cluster)


def test_a_snapshot_with_more_invitations_than_this_node_allows_is_restored() -> None:
    """A node whose --max-invites is lower than the one that let the
    invitations be made restores them all (a start, a rebuild), as every
    other replica has them, and the pairs the snapshot holds."""
    cluster = _cluster({}, {})
    b = cluster.nodes[1]
    bob = b.user("bob")
    inviters = [b.user(f"u{i}", host=f"192.0.2.{i + 1}") for i in range(3)]
    for conn in inviters:
        conn.send("PAIR bob")
    cluster.pump()
    assert bob.take() == ["INVITE u0", "INVITE u1", "INVITE u2"]
    snapshot = b.state.replica.snapshot()
    for limits in ({"max_invites": 1}, {"max_invites_per_ip": 1}):
        late = Node(cluster, "late", **limits)
        late.state.replica.restore(snapshot)
        assert late.state.replica.snapshot() == snapshot


def test_a_pair_brought_back_is_not_refused_by_the_limits() -> None:
    cluster = _cluster({"max_invites": 1, "max_invites_per_ip": 1})
    (a,) = cluster.nodes
    a.user("ann"), a.user("bob")
    carol = a.user("carol")
    carol.send("PAIR bob")  # bob has 1 open; the address has 1 out
    cluster.pump()
    hub = a.state.replica.hub
    a.state.replica.restore_pair(hub.online["ann"], hub.online["bob"])
    assert hub.online["ann"].partner is hub.online["bob"]


def test_each_of_the_inviters_node_s_two_limits_keeps_to_its_own_rule() -> None:
    """The two limits an event carries differ here (1 and 3, neither the
    other node's 10): were they swapped on the way, the busy invitee would
    take a second invitation and one address's second would be refused."""
    cluster = _cluster({"max_invites": 1, "max_invites_per_ip": 3}, {})
    a, b = cluster.nodes
    bob = b.user("bob", host="192.0.2.9")
    b.user("carol", host="192.0.2.1").send("PAIR bob")
    cluster.pump()
    assert bob.take() == ["INVITE carol"]
    alice = a.user("alice", host="198.51.100.1")
    alice.send("PAIR bob")  # --max-invites 1: bob has 1 open
    cluster.pump()
    assert alice.take() == ["ERROR busy bob has 1 open invitations already; try again later"]
    assert bob.take() == []
    invitees = [b.user(f"d{i}", host=f"192.0.2.{20 + i}") for i in range(4)]
    inviters = [a.user(f"a{i}", host="203.0.113.5") for i in range(4)]
    for i, inviter in enumerate(inviters):
        inviter.send(f"PAIR d{i}")
        cluster.pump()
    # --max-invites-per-ip 3: the address's first three are taken, its fourth is not.
    assert [inviter.take() for inviter in inviters] == [
        ["PENDING d0"], ["PENDING d1"], ["PENDING d2"],
        ["ERROR pending users from your address have 3 open invitations already; "
         "wait for one to end"]]
    assert [invitee.take() for invitee in invitees] == [
        ["INVITE a0"], ["INVITE a1"], ["INVITE a2"], []]
    _same_state(cluster)
