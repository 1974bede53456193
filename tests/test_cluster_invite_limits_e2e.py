"""
Two real nodes with different C{--max-invites} (a rolling change of it):
one C{PAIR} is decided alike on both, by the inviter's node's limit, which
travels in its event (review revclu F5; both limits, deterministically:
tests/test_cluster_invite_limits.py).  Everything stopped by the cluster
fixture.
"""

from __future__ import annotations

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


def test_nodes_with_different_max_invites_decide_a_pair_alike(
    cluster: Callable[..., Cluster],
) -> None:
    o = cluster(0)
    a, b = o.node("--max-invites", "1"), o.node()
    alice = o.user(a, "alice")
    bob, carol = o.user(b, "bob"), o.user(b, "carol")
    carol.send("PAIR bob")
    assert carol.expect("PENDING") == "PENDING bob"
    bob.expect("INVITE carol")
    alice.send("PAIR bob")  # node A's limit: bob has 1 open already
    assert alice.expect("ERROR").startswith("ERROR busy bob has 1 open invitations")
    # bob's ACCEPT is decided after alice's PAIR (the stream's order): what
    # node B made of that PAIR has reached bob before the answer.
    bob.send("ACCEPT alice")
    before = []
    while not (line := bob.readline()).startswith(("ERROR", "PAIRED")):
        before.append(line)
    assert line.startswith("ERROR no-invite"), (before, line)
    assert not [x for x in before if x.startswith("INVITE")], before
    views = []
    for client in (alice, bob):
        client.send("USERS")
        views.append([line for line in client.sync() if line.startswith("USER")])
    assert views[0] == views[1] == [
        "USER alice lobby", "USER bob lobby", "USER carol lobby", "USERS 3"]
