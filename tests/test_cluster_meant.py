"""
A lobby/pair message (C{MSG}) goes only where its sender's client was shown
it would go when the line reached its node: the partner it was shown, or
the lobby (a line still in flight when its node writes UNPAIRED goes where
the state then says, as chat/1 defines: docs/protocol.md).  Where
the log decides otherwise (Redis lost the pairing, a refused or late
C{hello}, a pairing command of the other side first in the log) it goes
nowhere, on every replica alike, and its sender is told C{ERROR
unavailable}: a line typed to a partner never reaches the lobby or
C{chat:history}.  And what a node's users were shown is kept until the
node's own C{hello} is applied, however late (L{afterloss.SHOWN_KEEP}).
"""

from __future__ import annotations

from typing import Any

import pytest
import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, fail

from tests.test_cluster_hello import _accepted_then_lost, _told
from tests.test_cluster_outage import outage, said
from tests.test_cluster_own import pair
from tests.test_cluster_read import MemoryRedis, Node, cluster, now, say
from tests.test_cluster_rebuild import _settle
from twisted_chat.server.hub import HubError
from twisted_chat.wire import ErrorCode


def _outcome(d: Any) -> list[Any]:
    got: list[Any] = []
    assert isinstance(d, Deferred)
    d.addBoth(got.append)
    return got


def _not_sent(got: list[Any], *words: str) -> None:
    """The command was answered C{ERROR unavailable} naming C{words}."""
    assert len(got) == 1
    error = got[0].value
    assert isinstance(error, HubError) and error.code is ErrorCode.UNAVAILABLE
    for word in words:
        assert word in error.text


def _nowhere(redis: MemoryRedis, nodes: list[Node], text: str) -> None:
    """C{text} reached nobody, on any node, nor the history."""
    for node in nodes:
        for name, args in node.listener.calls:
            if name == "lobby_message":
                assert args[0].text != text
            if name == "private_message":
                assert args[3] != text
    assert not any(text in m for m in redis.history)


def _refuse_hellos(monkeypatch: pytest.MonkeyPatch, redis: MemoryRedis, node: str,
                   times: list[int]) -> None:
    """Redis refuses C{node}'s hellos (OOM) while C{times[0]} > 0 (counted down)."""
    real = redis._append

    def append(sha: str, nkeys: int, key: str, channel: str, bound: int,
               event: str) -> object:
        if times[0] > 0 and '"t":"hello"' in event and f'"n":"{node}"' in event:
            times[0] -= 1
            return fail(txredisapi.ResponseError("OOM command not allowed"))
        return real(sha, nkeys, key, channel, bound, event)

    monkeypatch.setattr(redis, "_append", append)


def test_a_private_line_sent_while_the_hello_is_refused_reaches_nobody(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair made in the lost second: ann's client was shown PAIRED, the
    rebuilt replicas have her in the lobby.  Redis refuses n0's hello once
    (kept, appended again a second later); ann's MSG, meant for bob, is
    decided first: it goes nowhere (not the lobby, not chat:history) and
    ann is told it was not sent (she was not paired with bob then).  n0's
    hello, applied later, brings the pair back (both nodes list it)."""
    redis, clock, (n0, n1) = cluster(2)
    ann = _accepted_then_lost(redis, clock, n0, n1)
    times = [1]
    _refuse_hellos(monkeypatch, redis, "n0", times)
    n2 = Node(redis, clock, "n2")
    clock.advance(0)
    redis.pump()
    n2.user("carol")
    for _ in range(5):  # half a second: n0 rebuilt, its hello refused
        clock.advance(0.1)
        redis.pump()
    assert times == [0] and n0.state.replica.afterloss.shown is not None
    got = _outcome(n0.state.say(now(ann), "for bob only"))
    redis.pump()
    _settle(redis, clock)
    _not_sent(got, "not paired with bob")
    _nowhere(redis, [n0, n1, n2], "for bob only")
    # Then n0's hello, with n1's, brings the pair back (ann was shown it).
    partner = now(ann).partner
    assert partner is not None and partner.nick == "bob"


def test_a_private_line_sent_during_the_outage_reaches_nobody() -> None:
    """Redis restarts having lost ann's ACCEPT; ann (shown PAIRED) says a
    line while n0 is cut off; n0 reconnects: its hello (telling ann UNPAIRED
    bob disconnected) then her held line, meant for bob, decided with ann in
    the lobby: it goes nowhere and she is told so."""
    redis, clock, (n0, n1) = cluster(2)
    ann = _accepted_then_lost(redis, clock, n0, n1)
    n0.cut()
    n1.cut()
    got = _outcome(n0.state.say(now(ann), "for bob only"))
    n0.reachable = True  # n0 first: its hello, then ann's held line
    _settle(redis, clock)
    n1.reachable = True
    _settle(redis, clock)
    _not_sent(got, "not paired with bob")
    _nowhere(redis, [n0, n1], "for bob only")
    assert _told(n0, "unpaired", "ann")


def test_a_line_to_a_partner_who_unpaired_first_in_the_log_reaches_nobody() -> None:
    """No loss: bob's UNPAIR and ann's MSG (sent before n0 applied it, so
    meant for bob) race; the log has the UNPAIR first: her line goes to
    neither bob nor the lobby, and she is told it was not sent."""
    redis, _, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    n0.state.pair(ann, "bob")
    redis.pump()
    n1.state.accept(now(bob), "ann")
    redis.pump()
    n1.state.unpair(now(bob))
    got = _outcome(n0.state.say(now(ann), "for bob only"))
    redis.pump()
    _not_sent(got, "not paired with bob")
    _nowhere(redis, [n0, n1], "for bob only")
    say(n0, ann, "to the lobby now")  # as she is told UNPAIRED
    assert "to the lobby now" in n1.listener.said()


def test_a_lobby_line_decided_after_an_accept_reaches_nobody() -> None:
    """ann (in the lobby, her invitation to bob open) says a lobby line as
    bob's ACCEPT is on its way: the log has the ACCEPT first; her line goes
    to neither the lobby nor bob, and she is told why."""
    redis, _, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    n0.state.pair(ann, "bob")
    redis.pump()
    n1.state.accept(now(bob), "ann")
    got = _outcome(n0.state.say(now(ann), "to everyone"))
    redis.pump()
    _not_sent(got, "meant for the lobby", "paired with bob")
    _nowhere(redis, [n0, n1], "to everyone")


def test_a_hello_kept_past_shown_keep_still_says_what_was_shown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As in the first test, Redis refuses n0's hello for over a minute
    (SHOWN_KEEP) while n1's lines go on: what ann was shown (PAIRED bob) is
    kept until n0's own hello is applied, so that hello lists her with bob
    and she is told her pair ended (never left in the lobby believing
    herself paired)."""
    redis, clock, (n0, n1) = cluster(2)
    dave = n1.user("dave")
    ann = _accepted_then_lost(redis, clock, n0, n1)
    times = [10**6]
    _refuse_hellos(monkeypatch, redis, "n0", times)
    n2 = Node(redis, clock, "n2")
    clock.advance(0)
    redis.pump()
    n2.user("carol")
    _settle(redis, clock, 1)
    for i in range(14):  # 70 s of dave's lines
        clock.advance(5)
        say(n1, dave, f"line {i}")
        _settle(redis, clock, 0)
    times[0] = 0
    _settle(redis, clock, 3)
    rows = [row for e in redis.events() if e["t"] == "hello" and e["n"] == "n0"
            for row in e["users"] if row[1] == "ann"]
    assert rows and rows[-1][3] != ""  # the hello says ann was shown a pair
    assert _told(n0, "unpaired", "ann")
    assert now(ann).partner is None
    # After its own hello, shown ends at its time (SHOWN_KEEP) as before.
    clock.advance(61)
    say(n1, dave, "later")
    _settle(redis, clock, 0)
    assert n0.state.replica.afterloss.shown is None


# -- lines held behind a command, meant as of when they arrived (rev16-clu #1) ------


def _ann_paired_with_bob(n: int = 2) -> tuple[Any, Any, Any, Any, Any]:
    """ann (node0, whose log can go down) paired with bob (node1); carol in
    the lobby on the last node.  Returns the cluster, node0's log, ann, bob,
    carol."""
    cluster, n0, log = outage(n)
    ann, bob = n0.user("ann"), cluster.nodes[1].user("bob")
    carol = cluster.nodes[-1].user("carol")
    pair(cluster, ann, bob)
    assert ann.take()[-1] == "PAIRED bob" and bob.take()[-1] == "PAIRED ann"
    carol.take()
    return cluster, log, ann, bob, carol


def _typed_to_bob(cluster: Any, ann: Any) -> None:
    """While node0's log is down, ann types three lines to bob: the first
    becomes a command that waits, the other two (a second later) are held
    behind it; then a second passes."""
    ann.send("MSG for bob 1")
    cluster.clock.advance(1)
    ann.send("MSG for bob 2", "MSG for bob 3")
    assert ann.protocol.held_or_waiting() and ann.take() == []
    cluster.clock.advance(1)


def _none_leaked(cluster: Any, ann: Any, *others: Any) -> list[str]:
    """No line of ann's reached the others, nor (a newcomer's HISTORY) the
    lobby's history; each was answered ERROR unavailable not sent (ann's
    lines are returned)."""
    for conn in others:
        assert not [line for line in conn.take() if "for bob" in line]
    dave = cluster.nodes[-1].connect()
    dave.send("NICK dave")
    cluster.pump()
    assert not [line for line in dave.take() if "for bob" in line]
    mine = ann.take()
    assert not [line for line in mine if line.startswith("MSG")], mine
    errors = [line for line in mine if line.startswith("ERROR")]
    assert errors == ["ERROR unavailable not sent: you were not paired with bob when it came "
                      "to be delivered (the pair ended, or the chat's store lost it); "
                      "send it again"] * 3, mine
    return mine


def test_lines_held_while_the_partner_unpaired_reach_nobody() -> None:
    """ann's node cannot write to Redis while she types to bob; bob's
    UNPAIR is applied meanwhile (UNPAIRED bob written to ann).  Her two
    lines held behind the first were meant for bob when they arrived: like
    the first, they reach neither the lobby (carol) nor its history, and
    each is answered "not sent" (they were handled as lobby lines, once
    UNPAIRED was written: rev16-clu #1)."""
    cluster, log, ann, bob, carol = _ann_paired_with_bob()
    log.down()
    _typed_to_bob(cluster, ann)
    bob.send("UNPAIR")
    cluster.pump()
    assert ann.take()[0] == "UNPAIRED bob left"
    cluster.clock.advance(1)
    log.back()
    cluster.pump()
    _none_leaked(cluster, ann, bob, carol)
    ann.send("MSG to the lobby now")  # as she was shown UNPAIRED
    cluster.pump()
    assert said(carol.take()) == ["to the lobby now"]


def test_lines_held_through_a_restart_without_data_reach_nobody() -> None:
    """s1b_leak's case: Redis restarts empty while ann types to bob; her
    node's hello comes first (bob's node is not back): she is told UNPAIRED
    bob disconnected, then her lines are handled.  None reaches carol or the
    history, each is answered "not sent"; bob's node's hello brings the
    pair back."""
    cluster, log, ann, bob, carol = _ann_paired_with_bob(3)
    _, n1, n2 = cluster.nodes
    log.down()
    _typed_to_bob(cluster, ann)
    rows = [node.state.rebuild(None, []) for node in cluster.nodes]
    for node in cluster.nodes:
        node.cursor = len(cluster.log.entries)  # the new epoch's log starts here
    n2.state.hello(rows[2])
    log.new_epoch()
    log.back()
    cluster.pump()
    mine = _none_leaked(cluster, ann, carol)
    assert mine[0] == "UNPAIRED bob disconnected", mine
    n1.state.hello(rows[1])
    cluster.pump()
    assert "PAIRED bob" in ann.take()
    assert not [line for line in bob.take() if "for bob" in line]


def test_lobby_lines_held_while_an_accept_came_reach_nobody() -> None:
    """The other way: ann, her invitation to bob open, types lobby lines
    while her node cannot write to Redis; bob's ACCEPT is applied meanwhile
    (PAIRED bob written to ann).  Her held lines, meant for the lobby when
    they arrived, reach neither bob nor the lobby, and each is answered
    "not sent"."""
    cluster, n0, log = outage(2)
    ann, bob = n0.user("ann"), cluster.nodes[1].user("bob")
    carol = cluster.nodes[1].user("carol")
    ann.send("PAIR bob")
    cluster.pump()
    ann.take(), bob.take(), carol.take()
    log.down()
    ann.send("MSG for all 1")
    cluster.clock.advance(1)
    ann.send("MSG for all 2", "MSG for all 3")
    cluster.clock.advance(1)
    bob.send("ACCEPT ann")
    cluster.pump()
    assert ann.take() == ["PAIRED bob"]
    cluster.clock.advance(1)
    log.back()
    cluster.pump()
    for conn in (bob, carol):
        assert not [line for line in conn.take() if "for all" in line]
    mine = ann.take()
    assert mine == ["ERROR unavailable not sent: it was meant for the lobby and you were "
                    "paired with bob when it came to be delivered; send it again"] * 3, mine


def test_a_line_right_behind_the_sender_s_own_unpair_reaches_nobody() -> None:
    """ann sends UNPAIR and, before its answer came back, a MSG: it arrived
    while she was shown PAIRED bob, so it goes to nobody (one server sends
    it to the lobby: there the UNPAIR is done as it comes).  Once she is
    shown UNPAIRED, her lines go to the lobby."""
    cluster, _, ann, bob, carol = _ann_paired_with_bob()
    ann.send("UNPAIR", "MSG for bob 1")
    cluster.clock.advance(0.01)  # the UNPAIR's round trip to Redis
    cluster.pump()
    mine = ann.take()
    assert mine[0] == "UNPAIRED bob left", mine
    assert [line for line in mine if line.startswith(("ERROR", "MSG"))] == [
        "ERROR unavailable not sent: you were not paired with bob when it came to be "
        "delivered (the pair ended, or the chat's store lost it); send it again"], mine
    for conn in (bob, carol):
        assert not [line for line in conn.take() if "for bob" in line]
    ann.send("MSG to the lobby now")
    cluster.pump()
    assert said(carol.take()) == ["to the lobby now"]


def test_a_closed_connection_leaves_nothing_kept() -> None:
    """rev16-fix #4: what ann's connection was shown (bob's UNPAIR) is let
    go when she leaves, not a --redis-wait later at the next line."""
    cluster, _log, ann, bob, _carol = _ann_paired_with_bob()
    state = cluster.nodes[0].state
    bob.send("UNPAIR")
    cluster.pump()
    assert ann.take()[0] == "UNPAIRED bob left"
    assert len(state.pairs_shown) == 2  # PAIRED bob, then UNPAIRED, within --redis-wait
    ann.drop()
    cluster.pump()
    assert len(state.pairs_shown) == 0
