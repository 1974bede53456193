"""
Recovery after Redis loses data, what the review revclu found (deterministic,
on the L{MemoryRedis} and L{Node} fakes of test_cluster_read):

- F6: a node whose C{dead} Redis lost is declared dead again by the node
  that had declared it (its users' nicks are not held for good), and the
  users who were shown them leave are not shown it again;
- F9: a user whose C{leave} Redis took and lost before its own node read it
  back leaves again after that node's C{hello} (not online for good);
- F3: the users of a node that died while Redis lost all its data are shown
  leaving (C{LEFT}) where they were shown online, once that node's lease is
  found missing.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock

from tests.test_cluster_read import Conn, MemoryRedis, Node, cluster, now, say


def _beats(redis: MemoryRedis, clock: Clock, seconds: float) -> None:
    """Let C{seconds} pass, a second at a time (heartbeats, reconnections)."""
    for _ in range(int(seconds)):
        clock.advance(1)
        redis.pump()


def _dies(redis: MemoryRedis, node: Node) -> None:
    """SIGKILL: cut off for good, its lease gone (MemoryRedis ignores PX)."""
    node.cut()
    redis.keys.pop("chat:node:" + node.state.node, None)


def test_a_node_whose_dead_redis_lost_is_declared_dead_again() -> None:
    """revclu F6: n0 declares n1 dead (watcher is shown LEFT zed), then Redis
    loses that C{dead} (the stream's last entry).  n0 rebuilds from what
    Redis kept, where zed is online again: n1's lease is still missing, so
    n0 must declare it again (it used to skip the node it had declared
    once: zed's nick held for good), and watcher, shown zed leave already,
    is not shown it again.  (Lost before n0's next heartbeat: after it, n0
    had forgotten it declared n1, n1 having no users left.)"""
    redis, clock, (n0, n1) = cluster(2)
    watcher = n0.user("watcher")
    n1.user("zed")
    _dies(redis, n1)
    for _ in range(200):  # until n0 declares n1 dead
        clock.advance(0.1)
        redis.pump()
        if n0.nicks() == ["watcher"]:
            break
    assert n0.listener.departed() == ["zed"]
    dead = redis.events()[-1]
    assert dead["t"] == "dead" and dead["n"] == n0.state.node
    del redis.stream[-1:]  # Redis loses the dead (before n0's next heartbeat)
    say(n0, watcher, "anyone?")  # n0 sees the loss, rebuilds: zed is back
    _beats(redis, clock, 2)
    assert n0.lost == 0 and n0.nicks() == ["watcher", "zed"]
    # USERS lists zed again meanwhile: an invitation to zed ends when zed
    # goes, told as usual (only zed's LEFT is not told again).
    n0.state.pair(now(watcher), "zed")
    _beats(redis, clock, 30)
    assert n0.nicks() == ["watcher"]
    assert n0.listener.departed() == ["zed"]  # told once
    declined = [(a[0].nick, a[1].nick, a[2]) for name, a in n0.listener.calls
                if name == "declined"]
    assert declined == [("watcher", "zed", "gone")]
    zed: list[Any] = []
    n0.state.register("zed", Conn(), "-").addBoth(zed.append)
    redis.pump()
    assert [type(z).__name__ for z in zed] == ["User"]


def _back(redis: MemoryRedis, clock: Clock, *nodes: Node) -> None:
    for node in nodes:
        node.reachable = True
    _beats(redis, clock, 10)


def _left(node: Node, nick: str) -> list[tuple[str, str]]:
    """The departures of C{nick} node's listener was told: (reason, text)."""
    return [(a[2], a[3]) for name, a in node.listener.calls
            if name == "left" and a[1].nick == nick]


def _alice_quits_unread() -> tuple[MemoryRedis, Clock, list[Node]]:
    """ann and alice on n0, bob on n1; alice quits (BYE, then her closed
    connection: one leave event, BYE's; the close adds none), which n1
    applies and n0, lagging on the channel, never hears."""
    redis, clock, (n0, n1) = cluster(2)
    n0.user("ann")
    alice = n0.user("alice")
    n1.user("bob")
    conn = alice.conn
    assert isinstance(conn, Conn)
    conn.closing = True
    n0.state.leave(alice, "quit", "gone")
    n0.state.leave(alice, "disconnected")
    reader = next(c for c in n0.conns if c.subscriber and not c.closed)
    reader.inbox.clear()  # n0 lags: it never hears them
    redis.pump()
    return redis, clock, [n0, n1]


def test_a_leave_redis_lost_before_its_node_read_it_is_not_undone_by_the_hello() -> None:
    """revclu F9: alice (n0) quits; Redis takes n0's leave event (BYE's;
    her closed connection adds none), n1 applies it (bob is shown LEFT
    alice quit gone), n0 has not read it yet (it lags), and Redis loses
    it.  n0's hello, built from its replica, lists alice again: she
    must leave right after it, as she left (she used to stay online on every
    node for good, her nick held), shown leaving once on each node."""
    redis, clock, (n0, n1) = _alice_quits_unread()
    assert n1.nicks() == ["ann", "bob"] and n0.nicks() == ["alice", "ann", "bob"]
    assert [e["t"] for e in redis.events()[-2:]] == ["reg", "leave"]  # bob's, alice's
    del redis.stream[-1:]  # Redis loses it (and only it: bob's registration stays)
    n0.cut()
    n1.cut()  # the restart
    _back(redis, clock, n0, n1)
    n2 = Node(redis, clock, "n2")
    clock.advance(0)
    redis.pump()
    assert n0.nicks() == n1.nicks() == n2.nicks() == ["ann", "bob"]
    assert _left(n0, "alice") == _left(n1, "alice") == [("quit", "gone")]
    assert n0.lost == n1.lost == 0


def test_a_leave_lost_with_all_of_redis_s_data_is_told_as_it_was_made() -> None:
    """The same when Redis restarts empty (a new epoch): the hello brings
    alice back (her registration lost too), and she leaves right after as
    she left, C{quit gone} (not C{disconnected}), on every node."""
    redis, clock, (n0, n1) = _alice_quits_unread()
    redis.flushdb()
    n0.cut()
    n1.cut()
    _back(redis, clock, n0, n1)
    assert n0.nicks() == n1.nicks() == ["ann", "bob"]
    assert _left(n0, "alice") == [("quit", "gone")]
    assert _left(n1, "alice")[-1] == ("quit", "gone")


def test_the_users_of_a_node_that_died_as_redis_lost_its_data_are_shown_leaving() -> None:
    """revclu F3: n0 (alice, carol) dies, and Redis restarts empty before
    n0 is declared dead.  n1 rebuilds from nothing and n0 never says hello:
    once n1 finds n0's lease missing (a lease time after it is back), bob is
    shown alice and carol leave (he was shown them online; they used to stay
    so in his client for good, while USERS no longer listed them).  Each
    is told as hub.leave tells a departure, C{leaving} then C{left}: a
    C{deliver_gathered} before each flushed the lobby's batch per departure
    (rr20-left 6)."""
    redis, clock, (n0, n1) = cluster(2)
    n0.user("alice")
    n0.user("carol")
    n1.user("bob")
    _dies(redis, n0)
    redis.flushdb()
    _beats(redis, clock, 5)  # n1 sees the new epoch, rebuilds, says hello
    assert n1.nicks() == ["bob"] and n1.listener.departed() == []
    start = len(n1.listener.calls)
    _beats(redis, clock, 20)
    assert n1.listener.departed() == ["alice", "carol"]
    told = [(name, [a.nick for a in args if hasattr(a, "nick")])
            for name, args in n1.listener.calls[start:]
            if name in ("leaving", "left", "deliver_gathered")]
    assert told == [("leaving", ["alice"]), ("left", ["alice"]),
                    ("leaving", ["carol"]), ("left", ["carol"])]
    assert n1.nicks() == ["bob"] and n1.state.replica.afterloss.unseen == {}
    _beats(redis, clock, 20)
    assert n1.listener.departed() == ["alice", "carol"]  # once


def test_a_user_whose_node_says_hello_without_it_is_shown_leaving() -> None:
    """n1 lags: it has not read alice's leave (n0) when Redis restarts
    empty.  n0's hello does not list her (n0 applied her leave): bob (n1),
    who was never shown her leave, is shown it now, once (her node lives:
    no lease lapses to tell it otherwise)."""
    redis, clock, (n0, n1) = cluster(2)
    alice = n0.user("alice")
    n1.user("bob")
    reader = next(c for c in n1.conns if c.subscriber and not c.closed)
    n0.state.leave(alice, "quit", "bye")
    reader.inbox.clear()  # n1 lags: it never hears it
    redis.pump()
    assert n0.nicks() == ["bob"] and n1.nicks() == ["alice", "bob"]
    redis.flushdb()
    _beats(redis, clock, 30)
    assert n0.nicks() == n1.nicks() == ["bob"]
    assert n1.listener.departed() == ["alice"]
    assert n0.lost == n1.lost == 0


def test_a_pair_that_outlives_a_rebuild_replays_the_lines_from_before_the_snapshot() -> None:
    """revclu F7: alice (n0) and bob (n1) are paired while carol says lines
    before and after a snapshot; Redis loses the last one, and n0 rebuilds
    from the snapshot.  When bob ends the pair, alice's "Coming back to the
    lobby" replay has every lobby line since the pairing that Redis kept,
    those before the snapshot included (they used to be missing: the
    restored pair counted from the snapshot's point)."""
    redis, clock, (n0, n1) = cluster(2)
    alice, bob, carol = n0.user("alice"), n1.user("bob"), n0.user("carol")
    say(n0, carol, "before the pair")
    n0.state.pair(alice, "bob")
    redis.pump()
    n1.state.accept(bob, "alice")
    redis.pump()
    assert now(alice).partner is not None
    say(n0, carol, "before-0", "before-1")
    _beats(redis, clock, 11)  # a snapshot
    assert "chat:snapshot" in redis.keys
    say(n0, carol, "after-0", "to be lost")
    del redis.stream[-1:]
    say(n0, carol, "after the loss")  # n0 and n1 see the loss, rebuild
    _beats(redis, clock, 3)
    assert n0.lost == n1.lost == 0
    n1.state.unpair(now(bob))
    redis.pump()
    replays = [[e.text for e in a[3]] for name, a in n0.listener.calls
               if name == "unpaired" and a[0].nick == "alice"]
    assert replays == [["before-0", "before-1", "after-0", "after the loss"]]


def test_a_node_started_while_the_senders_node_lags_has_the_line_in_its_history() -> None:
    """revclu F1: alice's node n0 lags on the channel (it has not applied
    her "lagged" line: only the sender's node writes a line to the history
    as it applies it); n1 applied it and writes a snapshot past it.  n2,
    started now, loads that snapshot and the history up to it: "lagged" is
    in its newcomers' HISTORY (it used to be missing there for as long as
    n2 ran), because the snapshot's writer wrote its last lines to the
    history first."""
    redis, clock, (n0, n1) = cluster(2)
    alice = n0.user("alice")
    n1.user("bob")
    say(n0, alice, "first")
    reader = next(c for c in n0.conns if c.subscriber and not c.closed)
    n0.state.say(now(alice), "lagged").addErrback(lambda f: None)  # unconfirmed, later
    reader.inbox.clear()  # n0 never hears it (until a read)
    redis.pump()
    assert n1.listener.said() == ["first", "lagged"] and n0.listener.said() == ["first"]
    for _ in range(44):  # the snapshots: n1's is past "lagged"
        clock.advance(0.25)
        redis.pump()
    snapshot = json.loads(redis.keys["chat:snapshot"])
    assert snapshot["id"] == redis.stream[-1][0]
    n2 = Node(redis, clock, "n2")
    clock.advance(0)
    redis.pump()
    assert [e.text for e in n2.state.hub.history.recent()] == ["first", "lagged"]

