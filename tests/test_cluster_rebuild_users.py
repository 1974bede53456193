"""
What a node owes its own users around a rebuild after Redis lost data
(deterministic, on the L{MemoryRedis} and L{Node} fakes of test_cluster_read;
found in review of the rebuild):

- a node stopping while it rebuilds, or with its C{hello} kept after a
  refusal, sends no C{hello} ahead of its C{dead}
  (the nodes that had not shown its users would see them come and go): its
  C{dead} lists them, so the nodes that had shown them see them leave (so
  does the C{dead} of a node that stops before it saw the loss);
- a detached user (its registration lost) who quits before its node's
  C{hello} leaves with its own reason and text, not "disconnected";
- a second loss before the C{hello} (the hello lost) does not show the
  detached users again (no second C{READY}, no C{JOINED} on their node);
- a command Redis took and then lost is answered (C{ERROR unavailable}),
  never left waiting: its bytes are freed and a later rebuild from a
  snapshot written after the loss is not refused because of it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from tests.test_cluster_read import MemoryRedis, Node, cluster, now, say
from tests.test_cluster_rebuild import _lag, _late_agree, _lines, _register, _settle
from twisted_chat.server.hub import User
from twisted_chat.server.state import Outcome


def _ask(outcome: Outcome, answers: list[Any]) -> None:
    """Gather a command's answer (its result, or a failure)."""
    assert outcome is not None
    outcome.addBoth(answers.append)


def test_a_node_stopping_during_a_rebuild_sends_no_hello_ahead_of_its_dead() -> None:
    """dora's registration on n0 is lost (n1 never applied it); n0 sees the
    loss and, while it reads what Redis kept, is told to stop (SIGTERM).
    Its last event is its C{dead}, with no C{hello} before it: n1's users,
    who never saw dora, see neither C{JOINED dora} nor C{LEFT dora}."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n1, bob, "kept")
    _, answers = _register(n0, "dora")
    n0.state.say(ann, "lost")
    _lag(n1)  # n1 never hears dora's registration, nor "lost"
    redis.pump()
    assert [type(a).__name__ for a in answers] == ["User"]
    del redis.stream[-2:]  # Redis loses them
    assert "dora" in n0.nicks() and "dora" not in n1.nicks()
    say(n1, bob, "after")  # n0 sees the loss: it rebuilds
    redis.hold_reads = True
    clock.advance(1)  # n0 reconnects: reading what Redis kept
    assert redis.held
    n0.state.stopping()  # SIGTERM meanwhile
    redis.hold_reads = False
    redis.release()
    _settle(redis, clock)

    mine = [e["t"] for e in redis.events() if e.get("n") == n0.state.node]
    assert mine[-1] == "dead"
    assert "hello" not in mine
    assert "dora" not in n1.listener.departed()
    joined = [args[1].nick for name, args in n1.listener.calls if name == "joined"]
    assert "dora" not in joined
    assert n1.nicks() == ["bob"]


def test_a_detached_user_who_quits_before_the_hello_leaves_with_its_text() -> None:
    """dora's registration on n0 is lost; n0 rebuilds, and its hello is on
    its way when dora sends C{BYE see you} (then her connection closes).
    The hello brings her back, then she leaves: everyone sees
    C{LEFT dora quit see you}, not C{LEFT dora disconnected}."""
    redis, clock, (n0, n1) = cluster(2)
    n0.user("ann")
    bob = n1.user("bob")
    say(n1, bob, "kept")
    dora = n0.user("dora")
    say(n1, bob, "lost")
    del redis.stream[-2:]  # dora's registration, "lost"
    say(n1, bob, "after")  # the loss is noticed; both rebuild
    redis.hold_reads = True
    clock.advance(1)
    redis.release()  # the stream no longer holds n0's last event: a loss
    redis.release()  # n0 rebuilt; its hello sent, not read back yet
    assert n0.state.replica.afterloss.detached_uid(now(dora)) is not None
    assert "dora" not in n0.nicks()
    dora.conn.closing = True  # C: BYE see you; the connection closes
    n0.state.leave(now(dora), "quit", "see you")
    n0.state.leave(now(dora), "quit", "")  # its connectionLost
    redis.hold_reads = False
    redis.release()
    _settle(redis, clock)

    for node in (n0, n1):
        left = [(a[1].nick, a[2], a[3]) for name, a in node.listener.calls if name == "left"]
        assert left[-1] == ("dora", "quit", "see you")
        assert ("dora", "disconnected", "") not in left
        assert node.nicks() == ["ann", "bob"]
    assert n0.state._left_detached == {}


def test_a_second_loss_before_the_hello_does_not_show_detached_users_again() -> None:
    """dora's registration on n0 is lost: n0 rebuilds (dora detached) and
    Redis takes its hello, then loses it too before n0 read it back (n0
    lagged: it takes the path of a node that applied nothing lost).  Its
    next hello brings dora back without a second C{READY} to her and
    without C{JOINED dora} to n0's users, who saw her all along; n1, which
    had applied her registration, does not show her again either."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n1, bob, "kept")
    dora = n0.user("dora")
    del redis.stream[-1:]  # loss 1: dora's registration
    n0.cut()
    n1.cut()
    n0.reachable = True
    redis.hold_reads = True
    clock.advance(1)  # n0 back: reads what Redis kept
    for _ in range(5):  # rebuilt; its hello taken; its catch-up held
        if redis.events()[-1]["t"] == "hello":
            break
        redis.release()
    assert n0.state.replica.afterloss.detached_uid(now(dora)) is not None
    assert redis.events()[-1]["t"] == "hello"
    del redis.stream[-1:]  # loss 2: the hello
    n0.cut()
    n0.reachable = True
    redis.hold_reads = False
    redis.release()
    _settle(redis, clock)
    n1.reachable = True
    _settle(redis, clock)

    assert n0.nicks() == n1.nicks() == ["ann", "bob", "dora"]
    assert n0.state.replica.afterloss.detached == {}
    for node in (n0, n1):
        joined = [a[1].nick for name, a in node.listener.calls if name == "joined"]
        assert joined.count("dora") == 1, (node.state.node, joined)
        assert "dora" not in node.listener.departed()
    readies = [a[0].nick for name, a in n0.listener.calls if name == "ready"]
    assert readies.count("dora") == 1
    say(n0, ann, "still here")
    assert n1.listener.said()[-1] == "still here"


def test_a_command_redis_took_then_lost_is_answered_unavailable() -> None:
    """ann's MSG on n0: Redis takes it (n1 shows it), n0 lags behind it,
    and Redis, restarting, loses it; n0's wait ends first (C{ERROR
    unconfirmed}).  When n0 sees the loss it answers it C{ERROR
    unavailable} (it will never take effect: no replica has it, and nothing
    resends what Redis took) and holds nothing for it any more."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n1, bob, "kept")
    got: list[Any] = []
    _ask(n0.state.say(ann, "taken then lost"), got)
    _lag(n0)  # n0 never hears it; n1 does
    redis.pump()
    assert n1.listener.said()[-1] == "taken then lost"
    assert n0.state.first_waiting() is not None
    del redis.stream[-1:]
    n0.cut()
    n1.cut()
    clock.advance(11)  # n0's wait ends: ERROR unconfirmed
    assert [f.value.code.value for f in got] == ["unconfirmed"]
    n0.reachable = n1.reachable = True
    _settle(redis, clock)

    assert n0.state.first_waiting() is None
    assert n0.state.waiting_bytes == 0
    errors = [line for line in _lines(ann.conn) if line.startswith("ERROR ")]
    assert len(errors) == 1 and errors[0].startswith("ERROR unavailable lost:")
    say(n1, bob, "after")
    assert n0.listener.said()[-1] == "after"
    assert "taken then lost" not in n0.listener.said()


def test_a_command_redis_took_then_lost_is_answered_while_its_user_waits() -> None:
    """The same, seen before the command's wait ends (Redis lost all of
    its data, a new epoch): its user, still waiting, is answered C{ERROR
    unavailable} (a C{NICK}, C{RETRY unavailable}) at once; a command
    sent meanwhile and not taken yet is resent and takes effect."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    got: list[Any] = []
    _ask(n0.state.say(ann, "taken then lost"), got)
    _, registered = _register(n0, "carol")
    _lag(n0)
    redis.pump()
    assert "carol" in n1.nicks() and got == registered == []
    n0.cut()
    n1.cut()
    resent: list[Any] = []
    _ask(n0.state.say(ann, "sent while Redis is away"), resent)
    redis.flushdb()
    n0.reachable = n1.reachable = True
    _settle(redis, clock, 2)

    assert [f.value.code.value for f in got] == ["unavailable"]
    # n1 applied it before the loss (its users saw it): the answer says so.
    assert got[0].value.text.startswith("lost:")
    assert "some may have seen it before the loss" in got[0].value.text
    assert [type(f.value).__name__ for f in registered] == ["StateUnavailable"]
    assert registered[0].value.why == "the chat's store lost it after taking it"
    assert n0.state.first_waiting() is None and n0.state.waiting_bytes == 0
    assert n0.nicks() == n1.nicks() == ["ann", "bob"]
    assert len(resent) == 1 and not hasattr(resent[0], "value")
    assert n1.listener.said()[-1] == "sent while Redis is away"


def test_a_line_redis_took_after_a_flush_is_answered_that_nobody_saw_it() -> None:
    """FLUSHDB (or FLUSHALL) while the nodes stay connected, and ann's
    lobby line is the first event after it, before any node sees the loss:
    Redis takes it into the new stream, and every node, hearing it follow
    nothing, sees the loss first and rebuilds; applied then, before n0's
    hello, its sender is unknown, so it has no effect.  Nobody saw it (the
    e2e test checks the clients' lines): its answer says so, not "some may
    have seen it before the loss"."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    redis.pump()
    redis.flushdb()
    got: list[Any] = []
    _ask(n0.state.say(ann, "first after the flush"), got)
    _settle(redis, clock, 2)
    assert redis.events()[0]["t"] == "say"  # taken into the new stream
    assert [f.value.code.value for f in got] == ["unavailable"]
    assert got[0].value.text == ("lost: the chat's store had lost its data when it took "
                                 "it, so it has no effect and nobody saw it; send it again")
    assert "first after the flush" not in n0.listener.said() + n1.listener.said()
    assert n0.nicks() == n1.nicks() == ["ann", "bob"]


def test_a_line_lost_in_a_flush_is_not_taken_for_another_at_its_id() -> None:
    """rev15-mut F11: ann's line taken, then FLUSHDB before any node read
    it; ids start again, and bob's first line after the flush is given the
    same id.  Looked up at that id, the stream holds bob's line, not ann's:
    ann's is lost like any other taken before the loss (some may have seen
    it), not answered as one taken into the new stream, which nobody saw;
    bob's is that one."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    redis.pump()
    clock.advance(1)  # a new millisecond: ann's line is its first entry
    got: list[Any] = []
    _ask(n0.state.say(ann, "taken then flushed"), got)
    _lag(n0)
    _lag(n1)
    [(taken_at, _, _)] = redis.stream[-1:]
    redis.flushdb()
    other: list[Any] = []
    _ask(n1.state.say(bob, "first after the flush"), other)
    [(again, _, _)] = redis.stream
    assert again == taken_at, "the same id, another line"
    _settle(redis, clock, 2)
    assert [f.value.text for f in got] == [
        "lost: the chat's store lost it after taking it, so it has no effect (some may have "
        "seen it before the loss); send it again"]
    assert [f.value.text for f in other] == [
        "lost: the chat's store had lost its data when it took it, so it has no effect and "
        "nobody saw it; send it again"]


def test_after_a_lost_command_is_answered_a_later_loss_rebuilds_from_the_snapshot() -> None:
    """A command Redis took and lost no longer holds n0's first waiting
    command back: at a later loss that n0 sees late, after n1 wrote a
    snapshot past it, n0 rebuilds from that snapshot (before, the lost
    command, still waiting and older than n0's events the snapshot holds,
    made n0 refuse it and go on with the lost events' state)."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    n0.state.say(ann, "taken then lost")
    _lag(n0)
    redis.pump()
    del redis.stream[-1:]  # loss 1
    n0.cut()
    n1.cut()
    n0.reachable = n1.reachable = True
    _settle(redis, clock, 15)
    say(n0, ann, "after loss 1")  # n0's events past the lost one's number
    _settle(redis, clock, 11)
    n1.state.pair(now(bob), "ann")  # loss 2: an invitation both applied
    redis.pump()
    assert now(bob).outgoing is not None and now(ann).incoming
    del redis.stream[-1:]
    n0.cut()
    n1.cut()
    n1.reachable = True
    _settle(redis, clock, 12)  # n1 rebuilds, then writes a snapshot past loss 2
    n0.reachable = True
    _settle(redis, clock, 5)
    state = _late_agree(redis, clock, n0, n1)
    assert state["invitations"] == state["invites"] == []
    assert not now(ann).incoming
    assert n0.lost == n1.lost == 0


def test_a_command_taken_after_the_loss_on_a_connection_that_outlived_it_takes_effect() -> None:
    """Entries deleted by hand: n0's connection outlives the loss, and its
    next MSG is taken after it (after the kept end, like the lost event).
    It is in the stream: n0, seeing the loss, does not answer it as lost;
    it takes effect, once, and its user gets its echo."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n1, bob, "kept", "lost")
    del redis.stream[-1:]
    got: list[Any] = []
    _ask(n0.state.say(ann, "taken after the loss"), got)
    _settle(redis, clock)

    assert len(got) == 1 and not hasattr(got[0], "value")
    assert n0.state.first_waiting() is None
    assert [line for line in _lines(ann.conn) if line.startswith("ERROR ")] == []
    for node in (n0, n1):
        assert node.listener.said().count("taken after the loss") == 1


def _dora_lost_where_n1_showed_her() -> tuple[MemoryRedis, Clock, Node, Node, User]:
    """ann and dora on n0, bob on n1 (returned); n1 applied dora's
    registration (its users saw C{JOINED dora}), then Redis lost it and a
    message of ann's.  Neither node has seen the loss yet."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    say(n1, bob, "kept")
    n0.user("dora")  # n1 applies it too
    say(n0, ann, "lost")
    del redis.stream[-2:]  # dora's registration and "lost"
    assert "dora" in n1.nicks()
    return redis, clock, n0, n1, bob


def _left_with_n0_where_shown(n0: Node, n1: Node) -> None:
    """n1 showed dora leave with ann (C{LEFT dora disconnected}), once,
    never C{JOINED dora} again, and holds nobody of n0's."""
    assert n1.nicks() == ["bob"]
    assert sorted(n1.listener.departed()) == ["ann", "dora"]
    joined = [args[1].nick for name, args in n1.listener.calls if name == "joined"]
    assert joined.count("dora") == 1
    assert n0.state.node not in n1.state.own.remote


def test_a_node_stopping_during_a_rebuild_shows_its_users_leave_where_they_were_shown() -> None:
    """The same stop during a rebuild, where n1 had applied dora's lost
    registration (its users saw C{JOINED dora}) and rebuilt without her:
    n0's C{dead} lists its users, so n1 brings dora back quietly and shows
    her leave with n0's other users (C{LEFT dora disconnected}), never a
    user shown online who never leaves."""
    redis, clock, n0, n1, bob = _dora_lost_where_n1_showed_her()
    say(n1, bob, "after")  # both see the loss: both rebuild
    redis.hold_reads = True
    clock.advance(1)
    assert redis.held
    n0.state.stopping()
    redis.hold_reads = False
    redis.release()
    _settle(redis, clock)

    mine = [e["t"] for e in redis.events() if e.get("n") == n0.state.node]
    assert "hello" not in mine
    _left_with_n0_where_shown(n0, n1)


def test_a_node_stopping_with_its_hello_kept_shows_its_users_leave_where_they_were_shown() -> None:
    """The stop comes later: n0 rebuilt and its hello went, but Redis
    refused it (C{MISCONF}) and n0 keeps it, to append it again; SIGTERM
    then, Redis taking writes again meanwhile.  The kept hello is moot
    (n0's users leave with its C{dead}), and no replica has dora back:
    n0's C{dead} lists its users, so n1, which rebuilt without her, shows
    her leave with ann, and her nick is free (before, that C{dead} listed
    nobody: n1's users saw C{JOINED dora} and never C{LEFT dora}); no
    C{hello} of n0's reaches the stream."""
    redis, clock, n0, n1, bob = _dora_lost_where_n1_showed_her()
    say(n1, bob, "after")  # both see the loss: both rebuild
    redis.refuse_appends = True  # the nodes' hellos are refused
    _settle(redis, clock, 2)
    assert "hello" in n0.state._kept
    assert "dora" not in n1.nicks() and "dora" not in n1.listener.departed()
    n0.state.stopping()
    redis.refuse_appends = False
    _settle(redis, clock)

    dead = [e for e in redis.events()
            if e.get("n") == n0.state.node and e["t"] in ("hello", "dead")]
    assert [e["t"] for e in dead] == ["dead"]
    assert sorted(row[1] for row in dead[0]["users"]) == ["ann", "dora"]
    _left_with_n0_where_shown(n0, n1)
    assert n1.user("dora").nick == "dora"  # the nick is free


def test_a_node_stopping_before_it_sees_a_loss_shows_its_users_leave_where_they_were_shown(
) -> None:
    """n0 stops (SIGTERM) before it has seen the loss of dora's registration
    (no event since): its C{dead}, the first event after the loss, shows
    n1 the loss; n1 rebuilds without dora, then applies the C{dead}, which
    lists n0's users as n0's replica has them (dora too), so n1 shows her
    leave with ann (before, that C{dead} listed nobody: C{JOINED dora},
    never C{LEFT dora}; the C{dead} with users n0 sent after it saw the
    loss was skipped, n0's id being dead by then)."""
    redis, clock, n0, n1, _ = _dora_lost_where_n1_showed_her()
    n0.state.stopping()
    _settle(redis, clock)

    dead = [e for e in redis.events() if e.get("n") == n0.state.node and e["t"] == "dead"]
    assert sorted(row[1] for row in dead[0]["users"]) == ["ann", "dora"]
    _left_with_n0_where_shown(n0, n1)
