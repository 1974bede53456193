"""
The events a node appends for itself, not for a command (a user's C{leave},
a C{dead}, a C{tick}, a C{hello}), that Redis refuses (C{MISCONF}, C{OOM},
C{READONLY}): kept, at most one per user, per node, one tick and one hello,
and appended again every C{KEPT_RETRY} seconds under a new sequence number
until Redis takes them, while commands go on being sent and answered.
Deterministic: the node's L{RedisLog} on a fake Redis connection whose every
answer the test gives, and a L{task.Clock}.
"""

from __future__ import annotations

import json
import math
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, ensureDeferred

from tests.test_cluster_outage import FakeRedis, redis_log
from twisted_chat.server.accounts.login import unavailable_text
from twisted_chat.server.cluster.node import KEPT_RETRY, ClusterState
from twisted_chat.server.cluster.redislog import RedisLog
from twisted_chat.server.cluster.redisstream import APPEND_SHA
from twisted_chat.server.cluster.streamids import id_key
from twisted_chat.server.hub import User


class AnsweredRedis(FakeRedis):
    """Records every command; the test answers each (in order, as Redis).
    An append taken is given a stream id past every one given or applied so
    far (the others' events the test applies are in the stream too)."""

    def __init__(self, state: ClusterState | None = None) -> None:
        super().__init__()
        self.replies: list[Deferred[Any]] = []
        self.answered = 0
        self.state = state
        self.last_ms = 0

    def execute_command(self, *args: Any) -> Deferred[Any]:
        self.commands.append(args)
        self.replies.append(Deferred())
        return self.replies[-1]

    def answer(self, refuse: bool = False, value: Any = None) -> dict[str, Any]:
        """Answer the oldest unanswered command: taken or refused (or with
        C{value}, for a read); its event, if it is an append (with the id
        Redis gave it as C{_id}, for L{applied})."""
        i = self.answered
        self.answered += 1
        command = self.commands[i]
        if value is not None:
            self.replies[i].callback(value)
            return {}
        event = dict(json.loads(command[-1])) if command[:2] == ("EVALSHA", APPEND_SHA) else {}
        if refuse:
            self.replies[i].errback(txredisapi.ResponseError("OOM command not allowed"))
            return event
        if not event:
            self.replies[i].callback(1)
            return event
        applied_ms = 0 if self.state is None else id_key(self.state.replica.last_id)[0]
        self.last_ms = max(self.last_ms, applied_ms, 999_999) + 1
        event["_id"] = f"{self.last_ms}-0"
        self.replies[i].callback(event["_id"])
        return event

    def answer_all(self, refuse: bool = False) -> list[dict[str, Any]]:
        return [self.answer(refuse) for _ in range(len(self.replies) - self.answered)]

    def events(self, since: int = 0) -> list[dict[str, Any]]:
        return [json.loads(c[-1]) for c in self.commands[since:]
                if c[:2] == ("EVALSHA", APPEND_SHA)]


class _Conn:
    closing = False

    def write(self, data: bytes) -> None:
        pass

    def arrived(self) -> float:
        # Its line is handled as it comes: the node counts its wait from now
        # (the earlier of this and now).
        return math.inf


def connected(node_timeout: float = 15.0) -> tuple[RedisLog, ClusterState, AnsweredRedis]:
    log, state = redis_log(node_timeout)
    redis = AnsweredRedis(state)
    log._cmd, state.available = redis, True
    return log, state, redis


def applied(state: ClusterState, event: dict[str, Any], at: float = 1000.0) -> None:
    """The event comes back from the stream (ids past the replica's; not
    before the one Redis gave it, if it was taken through L{AnsweredRedis})."""
    event = dict(event)
    taken = id_key(str(event.pop("_id", "0-0")))[0]
    ms = max(int(at * 1000), id_key(state.replica.last_id)[0] + 1, taken)
    state.deliver([(f"{ms}-0", event)])


def heartbeat(log: RedisLog, redis: AnsweredRedis,
              refuse_lease: bool = False) -> list[dict[str, Any]]:
    """One heartbeat of the node's, every other lease missing (Redis
    refusing the node's own lease, if C{refuse_lease}): the events it
    appends, each taken."""
    log._heartbeat()
    assert log._beat is not None
    log._beat.cancel()
    sent = []
    while redis.answered < len(redis.replies):
        command = redis.commands[redis.answered]
        if command[0] == "SET" and refuse_lease:
            redis.answer(refuse=True)
        elif command[0] == "HMGET":  # the cluster's retention: this node's
            redis.answer(value=list(log.pruning.retention.values()))
        elif command[0] in ("MGET", "SMEMBERS"):
            redis.answer(value=[None] * (len(command) - 1) if command[0] == "MGET" else [])
        elif command[:2] == ("EVALSHA", APPEND_SHA):
            sent.append(redis.answer())
        else:
            redis.answer()
    return sent


def own_user(state: ClusterState, redis: AnsweredRedis, nick: str) -> User:
    state.register(nick, _Conn(), "-")
    applied(state, redis.answer())
    return state.hub.online[nick]


def test_a_refused_registration_says_redis_refused_it() -> None:
    """Redis refuses a registration's event (OOM): RETRY unavailable says
    the store refused it, as a lobby line's "not sent" does, not that it
    is unavailable."""
    _log, state, redis = connected()
    answers: list[Any] = []
    state.register("ann", _Conn(), "-").addErrback(answers.append)
    redis.answer(refuse=True)
    assert [type(f.value).__name__ for f in answers] == ["StateUnavailable"]
    assert answers[0].value.why == "the chat's store refused to store it"
    assert unavailable_text(answers[0].value.why) == (
        "the chat cannot check that nick now (the chat's store refused to store it); "
        "send NICK again in a moment")


def test_a_refused_leave_is_appended_again_until_redis_takes_it() -> None:
    log, state, redis = connected()
    clock = log.reactor
    ann, bob = own_user(state, redis, "ann"), own_user(state, redis, "bob")
    state.leave(ann, "quit", "bye")
    first = redis.answer(refuse=True)
    assert first["t"] == "leave"
    # Commands are not held up meanwhile: bob's message goes at once, and is
    # decided (and answered) when it comes back.
    said = state.say(bob, "hello")
    assert isinstance(said, Deferred)
    results: list[Any] = []
    said.addBoth(results.append)
    applied(state, redis.answer())
    assert results == [None]
    # Redis still refuses: kept, and tried again every KEPT_RETRY seconds.
    clock.advance(KEPT_RETRY - 0.01)
    assert redis.answered == len(redis.replies)  # nothing new yet
    clock.advance(0.02)
    second = redis.answer(refuse=True)
    clock.advance(KEPT_RETRY)
    third = redis.answer()
    assert [e["t"] for e in (first, second, third)] == ["leave"] * 3
    assert {e["u"] for e in (first, second, third)} == {first["u"]}
    # Each time under a new number, above the message applied since: no
    # replica takes it for a resend of something older.
    assert first["k"] < state.replica.last_k["n"] < second["k"] < third["k"]
    assert "ann" in state.hub.online
    applied(state, third)
    assert sorted(state.hub.online) == ["bob"]
    # Taken: nothing more is sent.
    clock.advance(10 * KEPT_RETRY)
    assert redis.answered == len(redis.replies)
    assert state._kept == {} and state._kept_call is None


def test_a_refused_dead_and_tick_are_kept_once_each_and_appended_again() -> None:
    log, state, redis = connected()
    clock = log.reactor
    state.deliver([
        ("1000000-0", {"t": "reg", "n": "m", "k": 1, "nick": "ann"}),
        ("1000000-1", {"t": "reg", "n": "o", "k": 1, "nick": "cat"}),
        ("1000000-2", {"t": "reg", "n": "m", "k": 2, "nick": "bob"}),
        ("1000000-3", {"t": "pair", "n": "m", "k": 3, "u": "1000000-0", "to": "bob",
                       "it": 5}),
    ])
    state.node_dead("m")
    state.node_dead("m")
    state.node_dead("o")
    clock.advance(5.1)  # the invitation falls due: a tick
    clock.advance(5.1)
    assert [e["t"] for e in redis.answer_all(refuse=True)] == ["dead", "dead", "dead", "tick"]
    assert len(state._kept) == 3  # one per node, one tick
    # Node o is declared dead by someone else meanwhile: its dead is moot.
    applied(state, {"t": "dead", "n": "p", "k": 1, "node": "o"})
    clock.advance(KEPT_RETRY)
    again = redis.answer_all()
    assert [(e["t"], e.get("node")) for e in again] == [("dead", "m"), ("tick", None)]
    for event in again:
        applied(state, event, at=1006.0)
    assert sorted(state.hub.online) == []
    assert state.replica.next_due() is None
    assert state._kept == {} and state._kept_call is None


def test_a_node_declared_dead_keeps_no_leave_of_its_former_users() -> None:
    """Its users are gone with its old id: their refused leaves are moot
    (and a leave of the old id refused after the rename is not kept); its
    refused dead of another node is not."""
    log, state, redis = connected()
    clock = log.reactor
    ann = own_user(state, redis, "ann")
    applied(state, {"t": "reg", "n": "m", "k": 1, "nick": "cat"})
    state.leave(ann, "quit")
    state.node_dead("m")
    redis.answer(refuse=True)  # the leave
    old = state.node
    applied(state, {"t": "dead", "n": "p", "k": 1, "node": old})
    assert state.node != old
    redis.answer_all(refuse=True)  # the dead of m, and the new id's lease
    clock.advance(KEPT_RETRY)
    assert [(e["t"], e["n"], e.get("node")) for e in redis.events(len(redis.replies) - 1)
            ] == [("dead", state.node, "m")]


def test_a_refused_hello_is_appended_again_with_the_users_as_they_are() -> None:
    """After a new epoch: the hello Redis refused lists, when it is appended
    again, the node's users then (not one who has left meanwhile)."""
    log, state, redis = connected()
    clock = log.reactor
    ann, bob = own_user(state, redis, "ann"), own_user(state, redis, "bob")
    state.hello()
    listed = redis.answer(refuse=True)["users"]
    assert sorted(u[1] for u in listed) == ["ann", "bob"]
    state.leave(ann, "quit")
    applied(state, redis.answer())
    clock.advance(KEPT_RETRY)
    (hello,) = redis.answer_all()
    assert hello["t"] == "hello" and [u[1] for u in hello["users"]] == ["bob"]
    assert bob in state.hub.online.values()


def test_kept_events_are_one_per_user() -> None:
    """The bound: a user's leave refused twice (its connection's end, then
    its orphaned registration, say) is kept once."""
    log, state, redis = connected()
    ann = own_user(state, redis, "ann")
    state.leave(ann, "quit")
    state.orphaned(ann)  # a second leave appended (its registration orphaned)
    redis.answer_all(refuse=True)
    assert list(state._kept) == ["leave:" + state.replica.uids[ann]]
    log.reactor.advance(KEPT_RETRY)
    assert [(e["t"], e["r"]) for e in redis.answer_all()] == [("leave", "quit")]


# -- a hello appended again goes after every event of its node's ---------------
#
# A hello says "this node's users are exactly these": appended behind an
# event of its node's that the replica it was built from had not applied,
# it undoes that event on every replica (a user who left comes back, one
# who registered is taken out).  So it waits until the log is caught up.


def refused_hello(nicks: tuple[str, ...]) -> tuple[RedisLog, ClusterState, AnsweredRedis]:
    log, state, redis = connected()
    for nick in nicks:
        own_user(state, redis, nick)
    state.hello()
    assert redis.answer(refuse=True)["t"] == "hello"
    assert list(state._kept) == ["hello"]
    return log, state, redis


def listed(hello: dict[str, Any]) -> list[str]:
    assert hello["t"] == "hello"
    return sorted(u[1] for u in hello["users"])


def test_a_kept_hello_waits_for_a_leave_taken_meanwhile_to_be_applied() -> None:
    log, state, redis = refused_hello(("ann", "bob"))
    clock = log.reactor
    state.leave(state.hub.online["bob"], "quit")
    clock.advance(KEPT_RETRY)  # the leave is not answered yet
    assert redis.answered == len(redis.replies) - 1
    leave = redis.answer()  # Redis takes it; the replica has not read it
    clock.advance(KEPT_RETRY)
    assert redis.answered == len(redis.replies)  # nothing sent
    applied(state, leave)
    assert sorted(state.hub.online) == ["ann"]
    clock.advance(KEPT_RETRY)
    (hello,) = redis.answer_all()
    assert listed(hello) == ["ann"]
    applied(state, hello)
    assert sorted(state.hub.online) == ["ann"]  # bob is not back
    assert state._kept == {} and state._kept_call is None


def test_a_kept_hello_waits_for_a_registration_taken_meanwhile_to_be_applied() -> None:
    log, state, redis = refused_hello(("ann",))
    clock = log.reactor
    answer = state.register("cat", _Conn(), "-")
    registration = redis.answer()
    clock.advance(KEPT_RETRY)
    assert redis.answered == len(redis.replies)
    applied(state, registration)
    assert answer.called and "cat" in state.hub.online
    clock.advance(KEPT_RETRY)
    (hello,) = redis.answer_all()
    assert listed(hello) == ["ann", "cat"]
    applied(state, hello)
    assert sorted(state.hub.online) == ["ann", "cat"]  # cat is not taken out


def test_a_kept_hello_is_not_queued_while_redis_is_out_of_reach() -> None:
    """The retry falls due during an outage, behind a leave that waits in
    the queue: it is not queued behind it (to be resent after it, listing
    the user), but appended once the leave is back from the log."""
    log, state, _ = refused_hello(("ann", "bob"))
    clock = log.reactor
    log._cmd, state.available = None, False  # the connection goes
    state.leave(state.hub.online["bob"], "quit")  # waits in the queue
    clock.advance(KEPT_RETRY)
    assert len(log._unacked) == 1
    again = AnsweredRedis(state)
    log._cmd, state.available = again, True
    log._send_unacked()
    (leave,) = again.answer_all()
    assert leave["t"] == "leave"
    clock.advance(KEPT_RETRY)
    assert again.answered == len(again.replies)  # not yet: the leave is unread
    applied(state, leave)
    clock.advance(KEPT_RETRY)
    (hello,) = again.answer_all()
    assert listed(hello) == ["ann"]
    applied(state, hello)
    assert sorted(state.hub.online) == ["ann"]


def test_a_kept_hello_is_dropped_when_the_node_goes_on_under_a_new_id() -> None:
    """Its users went with the old id; the new one has none to announce
    (and an empty hello of the new id would be harmless, but is moot)."""
    log, state, redis = refused_hello(("ann",))
    old = state.node
    applied(state, {"t": "dead", "n": "p", "k": 1, "node": old})
    assert state.node != old
    redis.answer_all()  # the new id's lease
    log.reactor.advance(KEPT_RETRY)
    assert redis.answered == len(redis.replies)
    assert state._kept == {} and state._kept_call is None


def test_a_new_epoch_s_hello_replaces_a_kept_one() -> None:
    log, state, redis = refused_hello(("ann",))
    state.hello()  # Redis lost its data (again): RedisLog._restore
    assert listed(redis.answer()) == ["ann"]
    log.reactor.advance(KEPT_RETRY)
    assert redis.answered == len(redis.replies)
    assert state._kept == {}


# -- stopping ---------------------------------------------------------------------


def _stop_ticks(log: RedisLog, seconds: float) -> None:
    for _ in range(round(seconds / 0.02)):
        log.reactor.advance(0.02)


def test_stop_waits_within_its_grace_for_a_refused_dead_to_be_taken() -> None:
    """SIGTERM: the node's own dead (its users leave at once for the others)
    is refused; stop appends it again before it drops its lease."""
    log, state, redis = connected()
    own_user(state, redis, "ann")
    state.stopping()
    assert redis.answer(refuse=True)["t"] == "dead"
    stopped = ensureDeferred(log.stop(grace=3.0))
    _stop_ticks(log, KEPT_RETRY + 0.04)
    assert not stopped.called
    dead = redis.answer()  # appended again, before anything else
    assert (dead["t"], dead["node"]) == ("dead", state.node)
    _stop_ticks(log, 0.04)
    assert redis.commands[-1] == ("DEL", "chat:node:" + state.node)
    redis.answer()
    assert stopped.called


def test_stop_waits_for_refused_events_no_longer_than_its_grace() -> None:
    log, state, redis = connected()
    own_user(state, redis, "ann")
    state.stopping()
    stopped = ensureDeferred(log.stop(grace=3.0))
    for _ in range(3):
        redis.answer_all(refuse=True)
        _stop_ticks(log, KEPT_RETRY)
    # At the end of the grace, with the third try unanswered: the lease goes.
    assert [c[0] for c in redis.commands[-2:]] == ["EVALSHA", "DEL"]
    redis.answer_all()
    assert stopped.called and state._kept_call is None


# -- leases Redis refuses to renew ----------------------------------------------------


def test_after_a_refused_lease_the_others_are_judged_only_a_lease_later() -> None:
    """While Redis refuses writes, no node renews its lease: when it takes
    them again, the others' leases may all have lapsed, their owners alive
    and about to renew.  A node judges them only once it has held its own
    lease for a whole lease time again (as after an outage), not at its
    first heartbeat back, which would declare every other node dead."""
    log, state, redis = connected()
    clock = log.reactor
    applied(state, {"t": "reg", "n": "x", "k": 1, "nick": "xena"})
    log.leases.up_since = -1e9  # connected for longer than a lease

    assert heartbeat(log, redis, refuse_lease=True) == []
    clock.advance(log.heartbeat)
    assert heartbeat(log, redis) == []  # writes taken again: x's lease lapsed meanwhile
    clock.advance(log.leases.lease_ms / 1000 - 0.01)
    assert heartbeat(log, redis) == []  # x renews within a lease time, if alive
    clock.advance(0.02)
    (dead,) = heartbeat(log, redis)  # a whole lease time later, still missing: dead
    assert (dead["t"], dead["node"]) == ("dead", "x")
