"""
After Redis lost events (its last ones, or all of its data), every replica
is rebuilt from what Redis kept, so that all of them decide what follows
alike (deterministic, on the L{MemoryRedis} and L{Node} fakes of
test_cluster_read): a replica that applied the lost events, one that lagged
behind them, and one started after the loss end with the same state; the
user whose nick the log gives to someone else is told so; a lost C{dead} is
forgotten whatever its millisecond; own users keep their connections and
are not sent again what they were sent.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from tests.test_cluster_read import Conn, MemoryRedis, Node, Recorder, cluster, now, say
from tests.test_cluster_unit import Untold
from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.cluster.redisread import READ_COUNT
from twisted_chat.server.history import History
from twisted_chat.server.hub import HubSettings, User


def _state(node: Node) -> dict[str, Any]:
    """A replica's state, by user id: who is online (nick, node), the
    pairs, the open invitations (with when they expire), the dead ids."""
    replica = node.state.replica
    uid = replica.uids
    users = sorted((u, m.user.nick, m.node) for u, m in replica.members.items())
    pairs = sorted(sorted((u, uid[m.user.partner])) for u, m in replica.members.items()
                   if m.user.partner is not None)
    invitations = sorted((u, uid[m.user.outgoing.invitee]) for u, m in replica.members.items()
                         if m.user.outgoing is not None)
    snapshot = json.loads(replica.snapshot())
    return {"users": users, "pairs": pairs, "invitations": invitations,
            "invites": snapshot["invites"], "dead": sorted(replica.dead)}


def _lag(node: Node) -> None:
    """C{node} never hears what was published for it so far (it lags)."""
    for conn in node.conns:
        if conn.subscriber and not conn.closed:
            conn.inbox.clear()


def _settle(redis: MemoryRedis, clock: Clock, seconds: int = 5) -> None:
    """Reconnections, reads, hellos: until nothing moves."""
    for _ in range(seconds * 10):
        clock.advance(0.1)
        redis.pump()


def _register(node: Node, nick: str) -> tuple[Conn, list[Any]]:
    conn = Conn()
    answers: list[Any] = []
    node.state.register(nick, conn, "-").addBoth(answers.append)
    return conn, answers


def _lines(conn: Conn) -> list[str]:
    return [line for chunk in conn.data for line in chunk.decode().splitlines()]


def _three_agree(*nodes: Node) -> dict[str, Any]:
    states = [_state(node) for node in nodes]
    for state in states[1:]:
        assert state == states[0]
    return states[0]


def _late_agree(redis: MemoryRedis, clock: Clock, n0: Node, n1: Node) -> dict[str, Any]:
    """A third node starts after it all: the three replicas agree."""
    n2 = Node(redis, clock, "n2")
    _settle(redis, clock, 1)
    return _three_agree(n0, n1, n2)


def test_a_lost_tail_then_a_conflicting_nick_on_a_lagging_node_all_replicas_agree() -> None:
    """
    n0 applied the lost events (carol's registration on n0, ann's invitation
    to bob), n1 lagged behind them, n2 starts from the snapshot after the
    loss.  Before any hello, NICK carol on n1: the first event after the
    loss.  n0 sees the loss, rebuilds from what Redis kept (no carol, no
    invitation) and applies n1's registration as n1 and n2 do: READY on
    n1; its own carol's hello finds the nick taken, and that connection is
    told BYE shutdown.  All three end with the same users, pairs,
    invitations and dead ids.
    """
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    say(n0, ann, "kept")
    clock.advance(11)  # the heartbeats: a snapshot, before the lost events
    redis.pump()
    assert "chat:snapshot" in redis.keys
    kept_end = redis.stream[-1][0]
    carol_x, answers_x = _register(n0, "carol")
    n0.state.pair(ann, "bob")
    _lag(n1)
    redis.pump()
    assert [type(a).__name__ for a in answers_x] == ["User"]
    assert n0.nicks() == ["ann", "bob", "carol"] and n1.nicks() == ["ann", "bob"]
    del redis.stream[-2:]  # Redis loses carol's registration and the invitation
    assert redis.stream[-1][0] == kept_end
    n2 = Node(redis, clock, "n2")  # started after the loss
    clock.advance(0)
    redis.pump()
    assert n2.nicks() == ["ann", "bob"]

    _, answers_y = _register(n1, "carol")  # before any hello
    _settle(redis, clock)

    state = _three_agree(n0, n1, n2)
    assert [type(a).__name__ for a in answers_y] == ["User"]
    assert any(line.startswith("BYE shutdown") for line in _lines(carol_x))
    carol = next(u for u in state["users"] if u[1] == "carol")
    assert carol[2] == n1.state.node
    assert state["pairs"] == state["invitations"] == state["invites"] == []
    assert n0.lost == n1.lost == n2.lost == 0
    # The lobby goes on alike: the new carol speaks, everyone hears her.
    say(n1, answers_y[0], "I am carol")
    assert n0.listener.said()[-1] == n1.listener.said()[-1] == n2.listener.said()[-1]
    assert n2.listener.said()[-1] == "I am carol"


def test_a_new_epoch_then_a_conflicting_nick_on_a_node_started_after_it() -> None:
    """FLUSHDB under n0 and n1 (ann, carol on n0; bob on n1); n2 starts
    after it and registers carol before n0 and n1 notice: carol is n2's
    (READY there), n0's carol is told BYE shutdown at its hello, and all
    three replicas agree."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    carol_x = n0.user("carol").conn
    n0.state.pair(ann, "bob")  # an invitation, gone with the data
    redis.pump()
    say(n0, ann, "before")
    redis.flushdb()
    clock.advance(0.5)
    n2 = Node(redis, clock, "n2")
    clock.advance(0)
    redis.pump()
    assert n2.nicks() == []

    _, answers_y = _register(n2, "carol")
    _settle(redis, clock)

    state = _three_agree(n0, n1, n2)
    assert [type(a).__name__ for a in answers_y] == ["User"]
    assert any(line.startswith("BYE shutdown") for line in _lines(carol_x))
    assert [(nick, node) for _, nick, node in state["users"]] == [
        ("ann", n0.state.node), ("bob", n1.state.node), ("carol", n2.state.node)]
    assert state["pairs"] == state["invitations"] == [] and state["dead"] == []
    say(n1, bob, "after")
    assert n0.listener.said()[-1] == n2.listener.said()[-1] == "after"


def test_a_dead_lost_in_the_kept_ends_millisecond_is_forgotten() -> None:
    """A lobby line (kept) and a dead (lost) in one millisecond: every
    replica forgets the dead id, as a node started afterwards never learns
    it (found in review: it was kept where it had been applied)."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    clock.advance(0.0005)
    n0.state.say(ann, "kept")
    n0.state.node_dead("gone-node")
    redis.pump()
    (kept, _, _), (dead, _, _) = redis.stream[-2:]
    assert kept.split("-")[0] == dead.split("-")[0]  # one millisecond
    assert "gone-node" in n0.state.replica.dead and "gone-node" in n1.state.replica.dead
    del redis.stream[-1:]
    say(n1, bob, "after")
    _settle(redis, clock)
    state = _late_agree(redis, clock, n0, n1)
    assert "gone-node" not in state["dead"]


def test_own_users_keep_their_connections_and_are_not_sent_the_replay_again() -> None:
    """n0 applied the lost events (bob's lines, dora's arrival on n0): it
    rebuilds, and ann keeps her connection, bound to the user the rebuilt
    hub holds, with nothing of the replay sent to n0's users (no READY, no
    JOINED, no kept line again: the listener is not told).  dora, whose
    registration was lost, keeps hers too: what she sends while n0
    rebuilds, or before its hello is applied, is applied after the hello,
    not dropped; the hello brings her back quietly on n0 (its users saw
    her)."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n1, bob, "kept one", "kept two")
    clock.advance(11)  # a snapshot
    redis.pump()
    say(n1, bob, "kept three")  # in the stream after it
    dora = n0.user("dora")
    say(n1, bob, "lost")
    del redis.stream[-2:]  # dora's registration, "lost"
    ann_conn = ann.conn
    before = len(n0.listener.calls)  # what n0's users are sent goes through it

    say(n1, bob, "after")  # the loss is noticed; n0 reconnects to rebuild
    redis.hold_reads = True
    clock.advance(1)  # its reconnection: reading what Redis kept
    assert redis.held and "dora" in n0.nicks()  # (n1 rebuilds too: it had "lost")
    n0.state.say(now(dora), "during the rebuild")  # waits for Redis
    redis.release()  # the stream no longer holds n0's last event: a loss
    redis.release()  # rebuilt; its hello sent; the catch-up read held
    assert redis.held
    assert "dora" not in n0.nicks()  # not until its hello is applied
    assert n0.state.replica.afterloss.detached_uid(now(dora)) is not None
    n0.state.say(now(dora), "before the hello")  # goes after it
    redis.hold_reads = False
    redis.release()
    _settle(redis, clock)

    fresh = n0.state.hub.online["ann"]
    assert fresh.conn is ann_conn and now(ann) is fresh
    got = n0.listener.calls[before:]
    assert [name for name, _ in got if name not in ("lobby_message", "deliver_gathered")] == []
    mine = ["after", "during the rebuild", "before the hello"]
    assert [args[0].text for name, args in got if name == "lobby_message"] == mine
    assert n1.listener.said()[-3:] == mine
    assert n0.nicks() == n1.nicks() == ["ann", "bob", "dora"]
    assert isinstance(now(dora), User) and now(dora) is n0.state.hub.online["dora"]
    assert _state(n0) == _state(n1)


def test_a_node_back_after_another_wrote_a_snapshot_past_the_loss_rebuilds_from_it() -> None:
    """A cluster that has run a while (its stream trimmed behind its
    snapshots); Redis restarts without its last events (bob's invitation
    to ann, applied by both nodes).  n0 is back first, rebuilds, and a
    snapshot interval later writes a snapshot after the loss (over the one
    Redis kept) before n1 is back.  n1 rebuilds from that snapshot (what
    Redis kept as of an event after the loss), not from its own state with
    the lost invitation in it: it agrees with n0 and with a node started
    afterwards."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    for text in ("one", "two", "three"):
        say(n0, ann, text)
        _settle(redis, clock, 11)  # snapshots; the stream trimmed behind them
    assert redis.stream[0][2] != "0-0"
    end = redis.stream[-1][0]
    n1.state.pair(bob, "ann")
    redis.pump()
    assert now(bob).outgoing is not None and n0.state.hub.online["ann"].incoming
    del redis.stream[-1:]
    n0.cut()
    n1.cut()
    n0.reachable = True
    _settle(redis, clock, 12)  # n0 back: rebuilt, its hello, then a snapshot
    snap_id = json.loads(redis.keys["chat:snapshot"])["id"]
    assert snap_id > end and snap_id in [eid for eid, _, _ in redis.stream]
    n1.reachable = True
    _settle(redis, clock, 5)
    state = _late_agree(redis, clock, n0, n1)
    assert state["invitations"] == state["invites"] == []
    assert [nick for _, nick, _ in state["users"]] == ["ann", "bob"]
    assert n0.lost == n1.lost == 0


def test_the_fallbacks_lost_tail_forgets_a_dead_by_its_event_not_its_second() -> None:
    """Where what Redis kept cannot be read back, a replica goes on with its
    state (Replica.lost_tail): a dead id declared by a lost event is still
    forgotten when it shares the kept end's millisecond (it was kept: its
    time was not after the end's), and one declared by a kept event in that
    millisecond stays."""
    state = ClusterState("me", Recorder(), History(10), HubSettings(), Clock(), Untold())
    state.deliver([
        ("1000-0", {"t": "dead", "n": "a", "k": 1, "node": "kept-dead"}),
        ("1000-1", {"t": "tick", "n": "a", "k": 2}),
        ("1000-2", {"t": "dead", "n": "a", "k": 3, "node": "lost-dead"}),
    ])
    assert sorted(state.replica.dead) == ["kept-dead", "lost-dead"]
    state.replica.lost_tail("1000-1")
    assert sorted(state.replica.dead) == ["kept-dead"]


def test_what_redis_kept_is_read_back_only_if_each_page_follows_the_one_before() -> None:
    """What Redis kept is read back in pages of L{READ_COUNT} entries: each
    page goes on from the one before (as the catch-up's pages must), not
    only the first from the snapshot.  With the first entry of the second
    page deleted by hand, the kept events cannot be read back (C{None}: the
    fallback, which says so), never rebuilt across the hole."""
    redis, _, (n0,) = cluster(1)
    redis.keys.pop("chat:snapshot", None)
    redis.stream.clear()
    prev = "0-0"
    for i in range(READ_COUNT + 2):
        eid = f"{1_000 + i}-0"
        redis.stream.append((eid, json.dumps({"t": "tick", "n": "x", "k": i + 1}), prev))
        prev = eid
    end = redis.stream[-1][0]

    def kept() -> Any:
        got: list[Any] = []
        ensureDeferred(n0.log.reading._kept_state(n0.log._cmd, end)).addCallback(got.append)
        return got[0]

    assert len(kept()[1]) == READ_COUNT + 2
    del redis.stream[READ_COUNT]
    assert kept() is None


def test_a_rebuild_notes_what_its_users_missed_before_the_history_is_reloaded(
        monkeypatch: Any) -> None:
    """n0 applied bob's lost line; at the loss it rebuilds, and what its
    deaf users missed (AfterLoss._first_missed, which finds a first missed
    line again in the rebuilt history) is read off the history it had, the
    lost line in it, not the one reloaded from Redis.  (The reload came
    first: a deaf user's missing started anew at a second rebuild, or at
    a line of the reloaded history it had heard.)"""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n1, bob, "kept one")
    clock.advance(11)  # a snapshot: the history is reloaded up to it
    redis.pump()
    say(n1, bob, "kept two", "lost")
    del redis.stream[-1:]
    afterloss = n0.state.replica.afterloss
    noted = afterloss._first_missed
    read: list[list[str]] = []

    def first_missed() -> Any:
        read.append([entry.text for entry in n0.state.hub.history.recent()])
        return noted()

    monkeypatch.setattr(afterloss, "_first_missed", first_missed)
    say(n1, bob, "after")  # the loss is noticed; n0 rebuilds
    _settle(redis, clock)
    assert read and read[0][-3:] == ["kept one", "kept two", "lost"], read
    assert [entry.text for entry in n0.state.hub.history.recent()][-3:] == [
        "kept one", "kept two", "after"]
    assert now(ann) is n0.state.hub.online["ann"]
