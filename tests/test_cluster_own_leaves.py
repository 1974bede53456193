"""
The leavers' own node in a burst of departures (fix21node): one leave event
per user, however many times its connection says it is gone, and the
leaves under way looked at only where a batch can have applied them.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_cluster_own import pair
from tests.test_cluster_unit import Cluster


def _leaves(cluster: Cluster) -> list[dict[str, Any]]:
    return [event for _, event in cluster.log.entries if event["t"] == "leave"]


def test_a_fin_then_the_close_appends_one_leave() -> None:
    """A FIN, then the connection's loss before the leave came back: the
    close's word is not appended as a second leave (before: two events,
    one more command for Redis and one more event for every node)."""
    cluster = Cluster(2)
    a, b = cluster.nodes
    leavers = [a.user(f"lv{i}") for i in range(3)]
    watcher = b.user("watcher")
    for conn in leavers:
        conn.protocol.readConnectionLost()  # the peer's FIN: its leave is appended
    for conn in leavers:
        conn.drop()  # the close completes before Redis brought the leave back
    assert [e["r"] for e in _leaves(cluster)] == ["disconnected"] * 3
    cluster.pump()
    assert [line.split(" ", 2)[2] for line in watcher.take() if line.startswith("LEFT")] == [
        f"lv{i} disconnected" for i in range(3)]
    assert a.state._leaving == {}
    assert not [u for u in a.hub.online if u.startswith("lv")]


def test_a_bye_then_the_close_leaves_as_the_bye_said() -> None:
    """The first word on it is the leave (BYE's reason and text); the close
    after it appends nothing."""
    cluster = Cluster(2)
    a, b = cluster.nodes
    conn = a.user("quitter")
    watcher = b.user("watcher")
    conn.send("BYE see you")
    conn.drop()
    assert [(e["r"], e["x"]) for e in _leaves(cluster)] == [("quit", "see you")]
    cluster.pump()
    assert [line.split(" ", 2)[2] for line in watcher.take()] == ["quitter quit see you"]


class _CountedMembers(dict[str, Any]):
    """The replica's members, counting the lookups of who is still there."""

    looked = 0

    def __contains__(self, key: object) -> bool:
        type(self).looked += 1
        return super().__contains__(key)


def test_leaves_applied_one_per_batch_cost_one_look_each() -> None:
    """n leaves coming back one per read (as Redis publishes them while
    their node appends them): each batch looks at its own leaves, not at
    every leave still under way (before: n * (n + 1) / 2 lookups, 20,100
    here)."""
    cluster = Cluster(1, exempt=("127.0.0.1",))
    (node,) = cluster.nodes
    leavers = [node.user(f"lv{i}") for i in range(200)]
    replica = node.state.replica
    replica.members = _CountedMembers(replica.members)
    for conn in leavers:
        conn.protocol.readConnectionLost()
    assert len(node.state._leaving) == 200
    _CountedMembers.looked = 0
    entries = cluster.log.entries
    while node.cursor < len(entries):
        node.cursor += 1
        node.state.deliver(entries[node.cursor - 1:node.cursor])
    assert node.state._leaving == {}
    assert not [u for u in node.hub.online if u.startswith("lv")]
    assert _CountedMembers.looked <= 2 * 200, _CountedMembers.looked


@pytest.mark.parametrize("taking_out", [
    {"t": "dead", "node": "nodeX", "n": "node1", "k": 100},
    {"t": "hello", "n": "nodeX", "k": 100, "users": []},
], ids=["dead", "hello"])
def test_a_batch_that_takes_out_others_settles_every_leave(taking_out: dict[str, Any]) -> None:
    """A dead or a hello may take out users whose leave is under way
    without their leave: after either, every one is looked at."""
    cluster = Cluster(2)
    a, b = cluster.nodes
    conn = a.user("gone")
    b.user("watcher")
    conn.protocol.readConnectionLost()
    assert len(a.state._leaving) == 1
    leave = cluster.log.entries.pop()  # lost on its way; the node is declared dead
    assert leave[1]["t"] == "leave"
    uid = leave[1]["u"]
    a.state.replica.members.pop(uid)  # as a dead for the node, or its hello, would take it out
    a.state.deliver([("9999999999999-1", taking_out)])
    assert a.state._leaving == {}


def test_a_pairing_shown_to_a_leaver_is_forgotten_at_its_close() -> None:
    """rr21-e: a pairing change shown to a leaver between its FIN (its leave
    appended, its pairings forgotten) and the close (before the leave came
    back) is forgotten at the close too, although nothing is appended then:
    a closed connection is not kept in PairsShown (rev16-fix #4)."""
    cluster = Cluster(2)
    a, b = cluster.nodes
    u, p = a.user("u"), b.user("p")
    pair(cluster, u, p)
    a.state.pairs_shown.forget(u.protocol)  # only what follows counts
    p.send("UNPAIR")  # appended first (node b)
    u.protocol.readConnectionLost()  # u's FIN: its leave appended after it
    entries = cluster.log.entries
    assert [e["t"] for _, e in entries[a.cursor:]] == ["unp", "leave"]
    a.cursor += 1
    a.state.deliver(entries[a.cursor - 1:a.cursor])  # the UNPAIR only: shown to u's conn
    assert len(a.state.pairs_shown) == 1
    u.drop()  # the close completes before u's leave came back
    assert len(a.state.pairs_shown) == 0
    cluster.pump()
    assert "u" not in a.hub.online
    assert len(a.state.pairs_shown) == 0
