"""
The three places that say which batch a user's lobby lines go out in agree
(twisted_chat/server/batches.py): the listener's C{batch_of}, asked of one
user (a connection's own writes and its going follow it), and the state's
C{lobby_members} and C{paired_users}, the members each batch is written
to.  Over users in each state one can be in: in the lobby, paired,
closing, not yet ready; and on a cluster node after Redis lost data,
detached (shown the lobby, or a pair), hearing the lobby while the
replica pairs it, deaf to it while the replica has it there.
"""

from __future__ import annotations

import json
from typing import Any

from tests.harness import Conn, Harness
from tests.test_cluster_own import pair
from tests.test_cluster_unit import Cluster, Node
from twisted_chat.server.cluster.afterloss import Detached
from twisted_chat.server.factory import ChatFactory
from twisted_chat.server.hub import User

LOBBY, PAIRED = "lobby", "paired"


def agree(factory: ChatFactory, conns: list[Conn], expected: dict[str, str]) -> None:
    """Each of C{conns} with a user is in exactly the batch C{batch_of}
    says, which is C{expected} (by nick), and in no other list; one without
    a user (not yet ready) is in none, and nobody else is in either."""
    lines, state = factory.lines, factory.state
    lobby = list(state.lobby_members())
    paired = [user.conn for user in state.paired_users()]
    got: dict[str, str] = {}
    for conn in conns:
        user = conn.protocol.user
        if user is None:
            assert conn.protocol not in lobby and conn.protocol not in paired
            continue
        batch = conn.protocol.ctx.batch_of(user)
        assert batch in (lines.fanout, lines.paired_fanout)
        which = LOBBY if batch is lines.fanout else PAIRED
        got[user.nick] = which
        assert (lobby.count(conn.protocol), paired.count(conn.protocol)) == (
            (1, 0) if which == LOBBY else (0, 1)), user.nick
    assert got == expected
    assert len(lobby) + len(paired) == len(got), "someone else is listed"


def test_one_server() -> None:
    h = Harness()
    ann, bob, carol, dave = h.user("ann"), h.user("bob"), h.user("carol"), h.user("dave")
    bob.send("PAIR carol")
    carol.send("ACCEPT bob")
    eve = h.connect()  # not yet ready
    dave.protocol.hang_up("shutdown")  # closing, its user still online
    assert dave.protocol.closing and dave.protocol.user is not None
    agree(h.factory, [ann, bob, carol, dave, eve],
          {"ann": LOBBY, "bob": PAIRED, "carol": PAIRED, "dave": LOBBY})
    carol.send("UNPAIR")
    agree(h.factory, [ann, bob, carol, dave, eve],
          {"ann": LOBBY, "bob": LOBBY, "carol": LOBBY, "dave": LOBBY})


def _lost() -> tuple[Cluster, dict[str, Any], dict[str, Conn], dict[str, str]]:
    """Node 0's he and node 1's hx pair, and de (node 0) and dx (node 1)
    are in the lobby, when a snapshot is taken; then the first pair ends,
    the second begins, and dl, dp and dq register on node 0 (dp and dq
    pair).  Returns the cluster, the snapshot, the users by nick, and the
    batch node 0's are in (as they were shown: so after the loss too)."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    conns = {nick: n0.user(nick) for nick in ("lob", "cl", "he", "de", "pa", "pb")}
    conns.update((nick, n1.user(nick)) for nick in ("hx", "dx"))
    pair(cluster, conns["he"], conns["hx"])
    pair(cluster, conns["pa"], conns["pb"])
    snapshot: dict[str, Any] = json.loads(n0.state.replica.snapshot())
    conns["he"].send("UNPAIR")
    cluster.pump()
    pair(cluster, conns["de"], conns["dx"])
    conns.update((nick, n0.user(nick)) for nick in ("dl", "dp", "dq"))
    pair(cluster, conns["dp"], conns["dq"])
    return cluster, snapshot, conns, {
        "lob": LOBBY, "cl": LOBBY, "he": LOBBY, "de": PAIRED, "pa": PAIRED, "pb": PAIRED,
        "dl": LOBBY, "dp": PAIRED, "dq": PAIRED}


def _rebuilt(cluster: Cluster, snapshot: dict[str, Any]) -> dict[Node, list[list[Any]]]:
    """Redis loses everything after C{snapshot} (L{_lost}): rebuilt from
    it, the replicas pair he and hx (who hear the lobby), have de and dx in
    the lobby (deaf to it), and lack dl, dp and dq (detached).  Returns
    each node's users as its hello lists them."""
    rows: dict[Node, list[list[Any]]] = {}
    for node in cluster.nodes:
        rows[node] = node.state.rebuild(snapshot, [])
        node.cursor = len(cluster.log.entries)  # the new epoch's log starts here
    afterloss = cluster.nodes[0].state.replica.afterloss
    assert [u.nick for u in afterloss.hearing.values()] == ["he"]
    assert [u.nick for u in afterloss.deaf.values()] == ["de"]
    assert sorted(u.nick for u in afterloss.detached_users()) == ["dl", "dp", "dq"]
    return rows


def _agree(cluster: Cluster, conns: dict[str, Conn], steady: dict[str, str],
           *others: Conn) -> None:
    """L{agree} on both nodes: node 0's users in C{steady}'s batches, and
    C{others} (node 0's) in the lobby's once ready."""
    n0, n1 = cluster.nodes
    ready = {conn.protocol.user.nick: LOBBY for conn in others if conn.protocol.user is not None}
    agree(n0.factory, [conn for nick, conn in conns.items() if nick in steady] + list(others),
          {**steady, **ready})
    agree(n1.factory, [conns["hx"], conns["dx"]], {"hx": LOBBY, "dx": PAIRED})


def _closing_and_waiting(n0: Node, cl: Conn) -> Conn:
    """cl drops (its leave not applied yet) and a connection sends its
    NICK (its registration not applied yet): returns that connection."""
    cl.drop()
    waiting = n0.connect()
    waiting.send("NICK nr")
    assert cl.protocol.closing and cl.protocol.user is not None
    assert waiting.protocol.user is None
    return waiting


def test_a_cluster_node_before_and_after_a_loss_and_its_hellos() -> None:
    cluster, snapshot, conns, steady = _lost()
    _agree(cluster, conns, steady)
    rows = _rebuilt(cluster, snapshot)
    _agree(cluster, conns, steady)  # shown as before: each in the batch it was in
    for node in cluster.nodes:
        node.state.hello(rows[node])
    cluster.pump()
    afterloss = cluster.nodes[0].state.replica.afterloss
    assert not afterloss.hearing and not afterloss.deaf and not afterloss.detached
    _agree(cluster, conns, steady)
    waiting = _closing_and_waiting(cluster.nodes[0], conns["cl"])
    _agree(cluster, conns, steady, waiting)
    cluster.pump()
    del steady["cl"]  # gone: in neither list
    _agree(cluster, conns, steady, waiting)


def test_a_cluster_node_after_a_loss_closing_and_not_ready() -> None:
    cluster, snapshot, conns, steady = _lost()
    _rebuilt(cluster, snapshot)
    waiting = _closing_and_waiting(cluster.nodes[0], conns["cl"])
    _agree(cluster, conns, steady, waiting)


class _Scanned(dict):  # type: ignore[type-arg]
    """A dict that counts the scans of its values (a membership test)."""

    scans = 0

    def values(self) -> Any:
        _Scanned.scans += 1
        return super().values()


def test_a_lobby_batch_after_a_loss_scans_the_exceptions_once_not_per_member() -> None:
    """Which of the detached, hearing and deaf are in which batch is asked
    of sets built once per list: asking the dicts per member made a lobby
    batch after a loss cost its detached times its deaf."""
    cluster, snapshot, _, _ = _lost()
    _rebuilt(cluster, snapshot)
    state = cluster.nodes[0].state
    afterloss = state.replica.afterloss
    afterloss.hearing, afterloss.deaf = _Scanned(afterloss.hearing), _Scanned(afterloss.deaf)

    def scans_of_one_batch() -> int:
        _Scanned.scans = 0
        state.lobby_members()
        state.paired_users()
        return _Scanned.scans

    few = scans_of_one_batch()
    for n in range(50):  # fifty more detached users shown the lobby
        user = User(f"x{n}", f"x{n}", object(), "192.0.2.1")
        afterloss.detached[f"x{n}"] = Detached(user.conn, user, [f"x{n}", user.nick, "", ""])
    assert scans_of_one_batch() == few
