"""
A cluster node's fan-out walks only its own users (twisted_chat/server/cluster/own.py):
the index follows joins, departures, pairings and returns to the lobby, and
the connections of other nodes' users are never touched.
"""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

import pytest

from tests.harness import traced_lines
from tests.test_cluster_unit import Cluster, Node, check_index
from twisted_chat.server.cluster.remote import RemoteConn
from twisted_chat.server.cluster.service import FactoryHooks
from twisted_chat.server.lines import LineListener
from twisted_chat.server.output import sendqueue
from twisted_chat.server.output.fanout import LobbyFanout
from twisted_chat.server.protocol import ChatProtocol
from twisted_chat.server.state import PairsShown


def join(cluster: Cluster, node: Node, nick: str) -> Any:
    """A user registered on C{node}, nobody's output cleared (unlike L{Node.user})."""
    conn = node.connect()
    conn.send(f"NICK {nick}")
    cluster.pump()
    return conn


def pair(cluster: Cluster, inviter: Any, invitee: Any) -> None:
    inviter.send(f"PAIR {invitee.user.nick}")
    cluster.pump()
    invitee.send(f"ACCEPT {inviter.user.nick}")
    cluster.pump()


@pytest.fixture
def remote_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """
    Every line of the lobby's (C{MSG} to C{*}, C{JOINED}, C{LEFT}) written or
    delivered to another node's user's connection.  (Lines addressed to one
    user, C{PAIRED}, a C{DM}..., are handed to that user's connection on
    every replica, one call each: not what is counted here.)
    """
    calls: list[str] = []

    def record(self: RemoteConn, data: bytes) -> None:
        for line in data.decode().splitlines():
            words = line.split()
            if words[0] in ("JOINED", "LEFT") or (words[0] == "MSG" and words[3] == "*"):
                calls.append(line)

    monkeypatch.setattr(RemoteConn, "deliver", record)
    monkeypatch.setattr(RemoteConn, "write", record)
    return calls


def test_remote_connections_are_never_touched(remote_calls: list[str]) -> None:
    """Lobby messages, joins, departures and pairs in a cluster of three:
    every member gets its lines, and no node writes to another's users."""
    cluster = Cluster(3)
    users = [cluster.nodes[i % 3].user(f"u{i}") for i in range(9)]
    pair(cluster, users[0], users[4])
    for i, conn in enumerate(users):
        conn.send(f"MSG hello from {i}")
    cluster.pump()
    late = join(cluster, cluster.nodes[1], "late")
    users[8].send("BYE")
    cluster.pump()
    users[0].send("UNPAIR")
    cluster.pump()
    late.send("MSG after")
    cluster.pump()
    assert remote_calls == []
    lobby = [line for line in users[1].take() if line.startswith(("MSG", "JOINED", "LEFT"))]
    assert len(lobby) == 7 + 1 + 1 + 1  # the lobby's messages, late's JOINED, u8's LEFT, "after"
    assert lobby == [line for line in users[2].take()
                     if line.startswith(("MSG", "JOINED", "LEFT"))]
    check_index(cluster)


def test_index_follows_join_pair_unpair_leave() -> None:
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a, b = n0.user("a"), n0.user("b")
    c, d = n1.user("c"), n1.user("d")
    assert list(n0.state.lobby_members()) == [a.protocol, b.protocol]
    assert list(n1.state.lobby_members()) == [c.protocol, d.protocol]
    # A pair across the nodes takes one member out of each node's index.
    pair(cluster, a, c)
    assert list(n0.state.lobby_members()) == [b.protocol]
    assert list(n1.state.lobby_members()) == [d.protocol]
    assert n0.state.own.users() == [a.user, b.user]  # paired, still online here
    # Back in the lobby: at the end, as in the hub's lobby.
    c.send("UNPAIR")
    cluster.pump()
    assert list(n0.state.lobby_members()) == [b.protocol, a.protocol]
    assert list(n1.state.lobby_members()) == [d.protocol, c.protocol]
    # A pair on the other node leaves this node's index as it is.
    pair(cluster, c, d)
    assert list(n0.state.lobby_members()) == [b.protocol, a.protocol]
    assert list(n1.state.lobby_members()) == []
    # A partner that leaves sends the other back to the lobby; the one
    # that left is out of both indexes.
    d.send("BYE")
    cluster.pump()
    assert list(n1.state.lobby_members()) == [c.protocol]
    assert n1.state.own.users() == [c.user]
    b.drop()
    cluster.pump()
    assert list(n0.state.lobby_members()) == [a.protocol]
    check_index(cluster)


def test_a_paired_user_gets_joined_and_left_from_its_own_node_only(
    remote_calls: list[str],
) -> None:
    """JOINED and LEFT reach paired users in the paired users' batch
    (not the lobby's): each node writes them to its own paired users."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a, c = n0.user("a"), n1.user("c")
    pair(cluster, a, c)
    cluster.clear_all()
    join(cluster, n1, "e").send("BYE")
    cluster.pump()
    for conn in (a, c):
        assert [line.split()[0] for line in conn.take()] == ["JOINED", "LEFT"]
    assert remote_calls == []


def test_a_node_that_starts_from_a_snapshot_has_none_of_its_users() -> None:
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    n0.user("a")
    n1.user("b")
    late = Node(cluster, "node9")
    late.state.replica.restore(n0.state.replica.snapshot())
    late.cursor = len(cluster.log.entries)
    cluster.nodes.append(late)
    assert list(late.state.lobby_members()) == [] and late.state.own.users() == []
    mine = late.user("mine")
    assert list(late.state.lobby_members()) == [mine.protocol]
    check_index(cluster)


def test_a_node_declared_dead_empties_its_index() -> None:
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    n0.user("a")
    n0.user("b")
    n1.state.node_dead("node0")
    cluster.pump()
    assert list(n0.state.lobby_members()) == [] and n0.state.own.users() == []
    check_index(cluster)


def test_a_newcomer_elsewhere_costs_no_ready_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """READY, the history and the user list go to a newcomer from its own
    node only; every node's user list still has it."""
    delivered: list[bytes] = []
    monkeypatch.setattr(RemoteConn, "deliver", lambda self, data: delivered.append(data))
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a = n0.user("a")
    n1.user("b")
    late = Node(cluster, "node9")  # starts from a snapshot: both users are remote
    late.state.replica.restore(n0.state.replica.snapshot())
    late.cursor = len(cluster.log.entries)
    cluster.nodes.append(late)
    c = late.user("c")
    assert delivered == []
    for conn in (a, c):
        conn.send("USERS")
        assert conn.take() == ["USER a lobby", "USER b lobby", "USER c lobby", "USERS 3"]


def test_a_newcomer_elsewhere_takes_no_late_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user registering on another node gets nothing from this node: its
    JOINED rides this node's batch as any lobby line does, not on the late
    path meant for a newcomer of this node (which cuts the batch per member)."""
    late: list[tuple[Any, Any]] = []
    add_joined = LobbyFanout.add_joined

    def spy(fanout: LobbyFanout, data: bytes, newcomer: Any) -> None:
        late.append((fanout, newcomer))
        add_joined(fanout, data, newcomer)

    monkeypatch.setattr(LobbyFanout, "add_joined", spy)
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a = n0.user("a")
    newcomer = n1.connect()
    newcomer.take()
    late.clear()
    a.send("MSG before")
    newcomer.send("NICK b")
    cluster.pump()
    # Only b's own node marks where b's share of the batch begins.
    assert late == [(n1.factory.fanout, newcomer.protocol)]
    # Node 0's member gets the whole batch, in the log's order.
    assert [line.split()[0] for line in a.take()] == ["MSG", "JOINED"]
    lines = newcomer.take()
    assert lines[0] == "READY b" and not any(line.startswith("MSG") for line in lines)


def test_a_pair_ending_elsewhere_builds_nothing_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair that ends on another node (UNPAIR, or a partner leaving) or
    across nodes: no node builds an UNPAIRED block (the missed lines, the
    user list) for a user of another node; the list is right when asked."""
    written: list[bytes] = []
    monkeypatch.setattr(RemoteConn, "write", lambda self, data: written.append(data))
    rosters: list[LineListener] = []
    roster = LineListener.roster

    def spy(lines: LineListener) -> bytes:
        rosters.append(lines)
        return roster(lines)

    monkeypatch.setattr(LineListener, "roster", spy)
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a, b = n0.user("a"), n0.user("b")
    c, d, e = n1.user("c"), n1.user("d"), n1.user("e")
    pair(cluster, c, d)
    pair(cluster, a, e)
    b.send("MSG while they talk")
    cluster.pump()
    cluster.clear_all()
    written.clear()
    rosters.clear()
    c.send("UNPAIR")  # a pair of node 1's users ends
    cluster.pump()
    assert n0.factory.lines not in rosters
    for conn in (c, d):
        lines = conn.take()
        assert lines[0].startswith("UNPAIRED") and lines[-1] == "USERS 5", lines
        assert any(line.endswith("while they talk") for line in lines), lines
    pair(cluster, c, d)
    rosters.clear()
    d.drop()  # and a partner leaving
    cluster.pump()
    assert n0.factory.lines not in rosters
    assert "UNPAIRED d disconnected" in c.take()
    e.send("UNPAIR")  # across the nodes: each node tells its own user
    cluster.pump()
    assert [f for f in rosters if f is n0.factory.lines] == [n0.factory.lines]
    assert [line for line in a.take() if line.startswith("UNPAIRED")] == ["UNPAIRED e left"]
    assert not [data for data in written if b"UNPAIRED" in data]
    cluster.clear_all()
    b.send("USERS")
    assert b.take() == ["USER a lobby", "USER b lobby", "USER c lobby", "USER e lobby",
                        "USERS 4"]
    check_index(cluster)


def test_a_steady_lobby_is_one_tuple_partitioned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node hands its fan-out the same members object while its own lobby
    index and the after-loss extras stay as they are, so the direct pass
    partitions them once, not at every batch (sendqueue.DirectPass); every
    change to either gives a new one, with the lobby's members in its order
    (a change among the other nodes' users changes nothing here)."""
    looked: list[tuple[Any, ...]] = []  # node 0's members, at each partition
    partition = sendqueue.partition

    def counted(members: Any) -> Any:
        if members is n0.state.lobby_members():
            looked.append(tuple(members))
        return partition(members)

    monkeypatch.setattr(sendqueue, "partition", counted)
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a, b = n0.user("a"), n0.user("b")
    c, e = n1.user("c"), n1.user("e")
    state = n0.state
    listed = state.lobby_members()

    def batches() -> list[str]:
        """Three lobby lines, from either node, as three batches: what each
        of node 0's lobby members got (b is in the lobby throughout)."""
        for i, speaker in enumerate((e, b, e)):
            speaker.send(f"MSG batch {i}")
            cluster.pump()
        return [line.split(" ", 4)[-1] for line in a.take() + b.take()
                if line.startswith("MSG")]

    def changed(*members: Any, detached: bool = False) -> None:
        """The members are new, and right; they are partitioned once, from
        the change (which may bring a batch) to the end of the next batches.
        (check_index: not while the node has detached users, not in the hub.)"""
        nonlocal listed
        now = state.lobby_members()
        assert now is not listed
        assert now == tuple(conn.protocol for conn in members)
        if not detached:
            check_index(cluster)
        listed = now
        batches()
        assert state.lobby_members() is listed
        assert looked == [listed]
        looked.clear()

    looked.clear()
    assert batches() == [f"batch {i}" for i in range(3)] * 2
    assert state.lobby_members() is listed
    assert looked == []  # partitioned before: at the last change
    n1.user("f")  # another node's newcomer: nothing changes here
    assert state.lobby_members() is listed
    batches()
    assert looked == []

    d = n0.user("d")
    changed(a, b, d)
    pair(cluster, a, c)
    changed(b, d)
    a.send("UNPAIR")
    cluster.pump()
    changed(b, d, a)
    d.send("BYE")
    cluster.pump()
    changed(b, a)
    state.rebuilt()  # the index built again from the replica
    changed(b, a)

    # After Redis lost everything, the node's users are detached (the
    # after-loss extras) until its hello brings them back.
    rows0, rows1 = state.rebuild(None, []), n1.state.rebuild(None, [])
    for node in cluster.nodes:
        node.cursor = len(cluster.log.entries)  # the new epoch's log starts here
    members = state.lobby_members()
    assert state.own.lobby_members() == ()
    assert members is not listed and members == state.replica.afterloss.lobby_conns()
    assert sorted(members, key=id) == sorted((a.protocol, b.protocol), key=id)
    assert state.lobby_members() is members
    looked.clear()
    n1.state.hello(rows1)
    for i in range(3):
        e.send(f"MSG detached {i}")
        cluster.pump()
    assert state.lobby_members() is members
    assert looked == [members]
    assert [line.split(" ", 4)[-1] for line in a.take() if line.startswith("MSG")] == [
        f"detached {i}" for i in range(3)]
    # A newcomer meanwhile: the index changes under the same extras.
    looked.clear()
    g = n0.user("g")
    assert state.own.lobby_members() == (g.protocol,)
    listed = members
    extras = [next(x for x in (a, b) if x.protocol is p) for p in members]
    del members  # (held by the node alone, from here)
    changed(g, *extras, detached=True)
    listed = ()  # (the next one is new: g is out of it)
    g.send("BYE")
    cluster.pump()
    assert member_lists(g.protocol) == [], "the departed one is let go of at once"
    changed(*extras, detached=True)
    state.hello(rows0)  # the extras are gone: the index has them
    cluster.pump()
    assert state.replica.afterloss.detached == {}
    changed(a, b)  # the hub's lobby order now: as the hello brought them back
    assert member_lists(a.protocol) == [listed], "no list with the extras is kept"


def member_lists(conn: Any) -> list[tuple[Any, ...]]:
    """The tuples of connections that hold C{conn} (lists of members)."""
    gc.collect()
    return [r for r in gc.get_referrers(conn)
            if isinstance(r, tuple) and all(isinstance(x, ChatProtocol) for x in r)]


def test_after_a_loss_a_detached_pair_still_gets_joined_and_left() -> None:
    """After Redis lost everything, a and b (node 0), shown their pair,
    are detached until node 0's hello: not in the hub, so not in its
    pairs, they still get each JOINED and LEFT in the paired users' batch
    (node 0's paired users are its index's and the detached shown a
    pair)."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a, b, c = n0.user("a"), n0.user("b"), n0.user("c")
    pair(cluster, a, b)
    e = n1.user("e")
    n0.state.rebuild(None, [])
    rows1 = n1.state.rebuild(None, [])
    for node in cluster.nodes:
        node.cursor = len(cluster.log.entries)  # the new epoch's log starts here
    assert n0.state.own.paired_users() == []
    assert sorted(u.nick for u in n0.state.paired_users()) == ["a", "b"]
    n1.state.hello(rows1)
    cluster.pump()
    cluster.clear_all()
    join(cluster, n1, "f").send("BYE")
    e.send("BYE")
    cluster.pump()
    for conn in (a, b):
        assert [line.split()[:3:2] for line in conn.take()] == [
            ["JOINED", "f"], ["LEFT", "f"], ["LEFT", "e"]]
    assert [line.split()[0] for line in c.take()] == ["JOINED", "LEFT", "LEFT"]


@pytest.mark.parametrize("gone", [False, True])
def test_a_displaced_connection_is_let_go_of_at_once(gone: bool) -> None:
    """After Redis lost everything, a's nick is taken on node 1 before node
    0's hello: a is told BYE (displaced) and is never a lobby member again
    (the members are listed anew at each batch).  The lists kept between
    batches (the node's tuple with the after-loss extras, the direct pass's
    partition of it) let go of its connection then, as at a departure, not
    at the next lobby line (its transport may still buffer --sendq bytes);
    so too if it had closed meanwhile (C{gone}: no BYE then)."""
    cluster = Cluster(2, direct_send=True)
    n0, n1 = cluster.nodes
    n0.state.connections = FactoryHooks(n0.factory)
    a, b = n0.user("a"), n0.user("b")
    e = n1.user("e")
    rows0, rows1 = n0.state.rebuild(None, []), n1.state.rebuild(None, [])
    for node in cluster.nodes:
        node.cursor = len(cluster.log.entries)  # the new epoch's log starts here
    n1.state.hello(rows1)
    cluster.pump()
    e.send("MSG while detached")
    cluster.pump()
    assert [line for line in a.take() if line.startswith("MSG")]
    assert member_lists(a.protocol), "the batch's members hold the detached a"
    if gone:
        a.drop()
        assert a.protocol.closing
    n1.user("a")  # a's nick, someone else's now
    n0.state.hello(rows0)
    cluster.pump()
    assert any(line.startswith("BYE shutdown") and "someone else's now" in line
               for line in a.take()) is not gone
    assert a.protocol.closing
    assert member_lists(a.protocol) == [], "let go of at the displacement"
    direct = n0.factory._direct_pass
    assert direct is not None
    assert a.protocol not in [*direct._direct, *direct._rest]
    # The lobby goes on without a.
    e.send("MSG after")
    cluster.pump()
    assert [line.split(" ", 4)[-1] for line in b.take() if line.startswith("MSG")] == [
        "after"]
    assert [line for line in a.take() if line.startswith("MSG")] == []


def test_after_a_loss_one_extra_in_place_of_another_gives_new_members(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """rev15-mut F3: the node's members tuple is kept while neither its own
    index nor the after-loss extras change; extras as many as before but
    not the same connections (one went as another came to hear the lobby)
    are a change: the members the lobby's lines go to hold the one that
    came, not the one that went.  (Whether the after-loss state can swap them between
    two batches is not shown here: the extras are given as the after-loss
    state would list them.)"""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a, b = n0.user("a"), n0.user("b")
    n1.user("e")
    state = n0.state
    state.rebuild(None, [])
    n1.state.rebuild(None, [])
    assert state.own.lobby_members() == ()
    own = state.own.lobby_members()
    extras: list[Any] = [a.protocol]
    monkeypatch.setattr(state.replica.afterloss, "lobby_conns", lambda: tuple(extras))
    first = state.lobby_members()
    assert first == (a.protocol,)
    assert state.lobby_members() is first  # the same extras: the same tuple
    extras[:] = [b.protocol]  # a went, b came: as many
    assert state.own.lobby_members() is own
    assert state.lobby_members() == (b.protocol,)


def test_pairs_shown_says_what_a_connection_was_shown_when_and_forgets() -> None:
    """L{PairsShown}: a line that arrived before a change a connection was
    shown is meant as before it (a change at the same instant counts as
    before the line); changes up to C{since} are forgotten, and nothing is
    kept for a connection once all of its are."""
    shown = PairsShown()
    ann, bob = object(), object()
    shown.changed(ann, 10.0, "uid-bob", since=0.0)  # UNPAIRED at 10
    shown.changed(ann, 12.0, "", since=0.0)  # PAIRED again at 12
    shown.changed(bob, 11.0, "uid-ann", since=0.0)
    assert shown.as_of(ann, 9.0, "uid-bob", since=0.0) == "uid-bob"
    assert shown.as_of(ann, 10.0, "uid-bob", since=0.0) == ""
    assert shown.as_of(ann, 11.0, "uid-bob", since=0.0) == ""
    assert shown.as_of(ann, 12.0, "uid-bob", since=0.0) == "uid-bob"
    assert shown.as_of(object(), 1.0, "now", since=0.0) == "now"
    assert shown.as_of(ann, 9.0, "uid-bob", since=10.0) == ""  # the first is forgotten
    assert shown.as_of(ann, 9.0, "uid-bob", since=12.0) == "uid-bob"
    assert shown.by_conn == {} and not shown._order


def test_pairs_shown_forgets_a_connection_that_is_gone() -> None:
    """rev16-fix #4: L{PairsShown.forget} keeps nothing of it (nor holds the
    connection), the others' kept."""
    shown = PairsShown()
    ann, bob = Gone(), Gone()
    shown.changed(ann, 10.0, "uid-bob", since=0.0)
    shown.changed(bob, 11.0, "uid-ann", since=0.0)
    shown.changed(ann, 12.0, "", since=0.0)
    shown.forget(ann)
    assert len(shown) == 1
    assert list(shown.by_conn) == [bob]
    assert shown.as_of(ann, 9.0, "now", since=0.0) == "now"
    ann_ref = weakref.ref(ann)
    del ann
    gc.collect()
    assert ann_ref() is None  # not held
    shown.forget(object())  # never shown anything
    assert shown.as_of(bob, 10.0, "", since=0.0) == "uid-ann"
    assert shown.as_of(bob, 10.0, "", since=12.0) == ""  # the forgotten expire too
    assert len(shown) == 0 and not shown._order and shown.by_conn == {}


class Gone:
    """A connection that can be seen to be let go (a weak reference to it)."""


def test_pairs_shown_forgets_a_mass_disconnect_in_linear_work() -> None:
    """A mass disconnect of N pairs, each shown its pairing, forgets them
    in work linear in N: the lines run for 2N pairs are about twice those
    for N (forget rebuilt the whole kept order at each leave: four times)."""

    def disconnect(pairs: int) -> int:
        shown = PairsShown()
        conns = [object() for _ in range(2 * pairs)]
        for i, conn in enumerate(conns):
            shown.changed(conn, float(i), "", since=0.0)

        def leave_all() -> None:
            for conn in conns:
                shown.forget(conn)

        lines = traced_lines(leave_all, sys.modules[PairsShown.__module__].__file__ or "")
        assert len(shown) == 0 and shown.by_conn == {}
        return lines

    small, large = disconnect(200), disconnect(400)
    assert large <= 2.2 * small, (small, large)
