"""
What Redis refuses after a lost connection, and the history writes it
refuses, deterministically (the node's L{RedisLog} on a fake Redis whose
every answer the test gives, and a L{task.Clock}):

  - an append sent on a connection that went before Redis answered (Redis
    may have taken it: its first copy may be in the stream), sent again on
    the next connection and refused there, is not answered "not sent" while
    the first copy may still come: the node reads where the stream ends
    after the refusal and decides once its replica has applied up to there
    (the command took effect: its answer as usual; it did not: C{ERROR
    unavailable}); and a kept C{hello} waits meanwhile;
  - a history write (L{HISTORY_ADD}) Redis refuses is kept and written again, the
    same member and score, until Redis takes it, within a bound.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.logger import Logger, LogLevel

from tests.test_cluster_read import Conn, cluster, say
from tests.test_cluster_refused import AnsweredRedis, applied, connected, listed, refused_hello
from twisted_chat.server.cluster import kepthistory
from twisted_chat.server.cluster.node import KEPT_RETRY, ClusterState
from twisted_chat.server.cluster.redisconfig import Retention
from twisted_chat.server.cluster.redishistory import (
    HISTORY_OVERHEAD,
    HISTORY_WRITING,
    HistoryStore,
    history_entry,
    history_row,
    history_rows,
    history_write,
)
from twisted_chat.server.cluster.redislog import RedisLog
from twisted_chat.server.cluster.redisstream import STREAM
from twisted_chat.server.cluster.streamids import id_key
from twisted_chat.server.hub import HubError, User
from twisted_chat.server.state import StateUnavailable
from twisted_chat.wire import ErrorCode

END = ("XREVRANGE", STREAM, "+", "-", "COUNT", 1)


def user(state: ClusterState, redis: AnsweredRedis, nick: str) -> User:
    state.register(nick, Conn(), "-")
    applied(state, redis.answer())
    return state.hub.online[nick]


def reconnected(log: RedisLog, state: ClusterState) -> AnsweredRedis:
    """The connection goes before Redis answered what was sent on it (as
    RedisLog.lost); a new one opens, and what was not acknowledged is sent
    again on it (as RedisLog._open)."""
    log.lost(log._generation)
    assert log._retry is not None
    log._retry.cancel()  # the test opens the next connection itself
    log._retry = None
    again = AnsweredRedis(state)
    log._cmd, state.available = again, True
    log._send_unacked()
    return again


def next_id(state: ClusterState, ahead: int = 5) -> str:
    return f"{id_key(state.replica.last_id)[0] + ahead}-0"


def entry(eid: str, event: dict[str, Any]) -> list[Any]:
    """A stream entry as XREVRANGE returns it."""
    return [eid, ["e", json.dumps(event), "p", "0-0"]]


def outcome(d: Any) -> list[Any]:
    assert isinstance(d, Deferred)
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def refused_resend(command: str = "say") -> tuple[RedisLog, ClusterState, User, list[Any],
                                                  dict[str, Any], AnsweredRedis]:
    """Ann's lobby line (or a NICK) is sent, the connection goes before
    Redis answers, and Redis refuses it sent again on the next one: the
    node, ann, the command's outcome, its event (the first copy, which the
    test may have Redis have taken) and the new connection."""
    log, state, redis = connected()
    ann = user(state, redis, "ann")
    results = outcome(state.say(ann, "hi") if command == "say"
                      else state.register("cat", Conn(), "-"))
    first = json.loads(redis.commands[-1][-1])
    again = reconnected(log, state)
    assert json.loads(again.commands[0][-1]) == first  # sent again
    again.answer(refuse=True)
    return log, state, ann, results, first, again


@pytest.mark.parametrize("command", ["say", "register"])
def test_a_refused_resend_whose_first_copy_redis_took_is_decided_not_unavailable(
    command: str,
) -> None:
    """The lobby line (or NICK) reached the stream, its answer lost with the
    connection; its resend is refused: it is answered as decided when the
    replica applies the first copy (the echo, READY), never "not sent"."""
    log, state, ann, results, first, again = refused_resend(command)
    assert results == []  # not "not sent": it may be in the stream
    assert again.commands[-1] == END
    end = next_id(state)
    again.answer(value=[entry(end, first)])
    assert results == []  # the replica has not read that far
    state.deliver([(end, first)])  # the catch-up read brings the first copy
    if command == "say":
        assert results == [None]
        assert ann.conn.data == []  # no ERROR
    else:
        assert results == [state.hub.online["cat"]]
    assert state._pending == {} and state.waiting_bytes == 0
    assert log.doubts.doubtful == [] and state._kept == {}


def test_a_refused_resend_not_in_the_stream_is_unavailable_once_read_past_it() -> None:
    log, state, _, results, _, again = refused_resend()  # Redis never had it
    end = next_id(state)
    other = {"t": "tick", "n": "o", "k": 1}
    again.answer(value=[entry(end, other)])
    assert results == []
    state.deliver([(end, other)])
    (error,) = (r.value for r in results)
    assert isinstance(error, HubError) and error.code == ErrorCode.UNAVAILABLE
    assert "not sent" in error.text
    assert state._pending == {} and state.waiting_bytes == 0 and log.doubts.doubtful == []


def test_a_refused_resend_is_answered_at_once_when_the_replica_is_past_the_end() -> None:
    """Nothing in the stream past what the replica applied: no first copy."""
    _, state, _, results, _, again = refused_resend("register")
    assert results == []
    again.answer(value=[entry(state.replica.last_id, {})])
    (error,) = (r.value for r in results)
    assert isinstance(error, StateUnavailable)


def test_a_refused_resend_told_unconfirmed_gets_its_error_only_if_not_sent() -> None:
    """Its wait ended (ERROR unconfirmed) before the refusal was settled: the
    first copy came, so nothing more is written to its user."""
    log, state, ann, results, first, again = refused_resend()
    log.reactor.advance(state.wait)
    (error,) = (r.value for r in results)
    assert error.code == ErrorCode.UNCONFIRMED
    end = next_id(state)
    again.answer(value=[entry(end, first)])
    state.deliver([(end, first)])
    assert ann.conn.data == [] and state._pending == {}


def test_the_stream_s_end_is_asked_again_on_the_next_connection() -> None:
    """The connection goes before the end was read (or after: Redis may have
    lost its last events since): asked again on the next one."""
    log, state, _, results, first, again = refused_resend()
    assert again.commands[-1] == END
    third = reconnected(log, state)  # nothing left to resend; the end asked again
    assert third.commands == [END]
    end = next_id(state)
    third.answer(value=[entry(end, first)])
    state.deliver([(end, first)])
    assert results == [None] and log.doubts.doubtful == []


def test_one_question_for_the_refusals_answered_before_it() -> None:
    """Two resends refused: one XREVRANGE (Redis ran both before it)."""
    log, state, redis = connected()
    ann, bob = user(state, redis, "ann"), user(state, redis, "bob")
    one, two = outcome(state.say(ann, "one")), outcome(state.say(bob, "two"))
    again = reconnected(log, state)
    again.answer(refuse=True)
    again.answer(refuse=True)
    assert again.commands.count(END) == 1
    again.answer(value=[entry(state.replica.last_id, {})])
    assert [r.value.code for r in one + two] == [ErrorCode.UNAVAILABLE] * 2


def test_a_kept_hello_waits_for_a_refused_resend_s_first_copy() -> None:
    """A leave taken by Redis, its answer lost, its resend refused: the
    kept hello is not appended before the replica has read the leave (it
    would list the user, and bring them back after it)."""
    log, state, redis = refused_hello(("ann", "bob"))
    clock = log.reactor
    state.leave(state.hub.online["bob"], "quit")
    leave = json.loads(redis.commands[-1][-1])  # taken; its answer lost
    again = reconnected(log, state)
    again.answer(refuse=True)
    clock.advance(KEPT_RETRY)
    assert again.commands == [again.commands[0], END]  # no hello
    end = next_id(state)
    again.answer(value=[entry(end, leave)])
    clock.advance(KEPT_RETRY)
    assert len(again.commands) == 2  # not read yet: still no hello
    state.deliver([(end, leave)])
    assert sorted(state.hub.online) == ["ann"]
    clock.advance(KEPT_RETRY)
    (hello,) = again.answer_all()
    assert listed(hello) == ["ann"]  # the refused leave was moot: not appended again
    applied(state, hello)
    assert sorted(state.hub.online) == ["ann"]
    assert state._kept == {} and log.doubts.doubtful == []


def test_a_refused_resend_is_settled_by_a_reload_past_its_end() -> None:
    """n1's lobby line reaches the stream, its answer lost with the
    connection (n1 cut off); meanwhile the stream is trimmed past n1's next
    events, and Redis refuses writes.  Back, n1's resend is refused (a
    doubt; the stream's end read), then it reloads the newer snapshot (it
    missed events): past the doubt's end.  Nothing follows (Redis refuses
    every write, n1's own dead for its old id too): the doubt is settled at
    the reload, not left open (a kept hello blocked, stop() waiting its
    whole grace) until some event is applied."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    bob = n1.user("bob")
    real = redis._append

    def taken_unanswered(*args: Any) -> Any:
        real(*args)
        return Deferred()

    redis._append = taken_unanswered  # type: ignore[method-assign,assignment]
    n1.state.say(bob, "answer lost")
    n1.cut()
    redis._append = real  # type: ignore[method-assign]
    say(n0, ann, "while away")
    ensureDeferred(n0.log._snapshot(n0.log._cmd, clock.seconds()))
    redis.trim(redis.stream[-1][0])  # past n1's next events
    redis._append = lambda *args: fail(  # type: ignore[method-assign,assignment]
        txredisapi.ResponseError("MISCONF disk full"))
    n1.reachable = True
    clock.advance(1)  # n1 reconnects: resend refused, end read, reload
    redis.pump()
    assert n1.lost == 1  # it reloaded (its users told BYE)
    assert id_key(n1.state.replica.last_id) >= id_key(redis.stream[-1][0])
    assert n1.log.doubts.doubtful == []
    assert n1.log.own_events_read()  # nothing holds a hello back


def test_a_refusal_on_its_first_sending_is_answered_at_once() -> None:
    """Sent once, on the connection that answered: Redis's answer is sure."""
    log, state, redis = connected()
    ann = user(state, redis, "ann")
    results = outcome(state.say(ann, "hi"))
    redis.answer(refuse=True)
    (error,) = (r.value for r in results)
    assert error.code == ErrorCode.UNAVAILABLE
    assert END not in redis.commands and log.doubts.doubtful == []


# -- a refused history write is written again -------------------------------------------


def with_history(max_waiting: int | None = None) -> tuple[RedisLog, ClusterState,
                                                          AnsweredRedis, User]:
    log, state, redis = connected()
    if max_waiting is not None:
        state.max_waiting = max_waiting
    state.replica.hub.history.attach(HistoryStore(log), [])
    return log, state, redis, user(state, redis, "ann")


def said(state: ClusterState, redis: AnsweredRedis, ann: User, text: str) -> tuple[Any, ...]:
    """Ann says C{text}; Redis takes it; applied: its history write is sent."""
    state.say(ann, text)
    applied(state, redis.answer())
    write = redis.commands[-1]
    assert write[:2] == HISTORY_WRITING and text in history_rows(write)[0][1]
    return write


def test_a_refused_history_write_is_written_again_until_redis_takes_it() -> None:
    log, state, redis, ann = with_history()
    clock = log.reactor
    zadd = said(state, redis, ann, "hello")
    redis.answer(refuse=True)
    clock.advance(KEPT_RETRY - 0.01)
    assert redis.answered == len(redis.replies)
    clock.advance(0.02)
    assert redis.commands[-1] == zadd  # the same score and member: idempotent
    redis.answer(refuse=True)
    clock.advance(KEPT_RETRY)
    assert redis.commands[-1] == zadd
    redis.answer()
    clock.advance(10 * KEPT_RETRY)
    assert redis.answered == len(redis.replies)
    assert not log.kept_history.pending and log.kept_history.call is None


def test_refused_history_writes_are_written_again_together_and_in_order() -> None:
    log, state, redis, ann = with_history()
    first = said(state, redis, ann, "one")
    redis.answer(refuse=True)
    second = said(state, redis, ann, "two")
    redis.answer(refuse=True)
    log.reactor.advance(KEPT_RETRY)
    assert redis.commands[-1] == history_write(
        [x for write in (first, second) for row in history_rows(write) for x in row])
    redis.answer()
    assert not log.kept_history.pending


def test_kept_history_writes_are_bounded_by_redis_queue_the_oldest_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound: --redis-queue bytes (counted apart from the commands
    waiting); past it the oldest kept write is dropped, and the log says so
    once, then how many when Redis takes the history's writes again."""
    log, state, redis, ann = with_history(max_waiting=300)
    logged: list[dict[str, Any]] = []
    monkeypatch.setattr(kepthistory, "_log", Logger(observer=logged.append))
    zadds = []
    for n in range(4):
        zadds.append(said(state, redis, ann, f"message {n} " + "x" * 80))
        redis.answer(refuse=True)
    assert len(log.kept_history.kept) == 2 and log.kept_history.bytes <= 300
    log.reactor.advance(KEPT_RETRY)
    assert redis.commands[-1] == history_write(
        [x for write in zadds[2:] for row in history_rows(write) for x in row])
    redis.answer()
    dropped = [e for e in logged if "dropped" in e["log_format"]]
    assert [e["log_level"] for e in dropped] == [LogLevel.error, LogLevel.warn]
    assert dropped[-1]["n"] == 2


def test_stop_waits_within_its_grace_for_a_refused_history_write() -> None:
    log, state, redis, ann = with_history()
    zadd = said(state, redis, ann, "last words")
    redis.answer(refuse=True)
    stopped = ensureDeferred(log.stop(grace=3.0))
    for _ in range(round((KEPT_RETRY + 0.04) / 0.02)):
        log.reactor.advance(0.02)
    assert not stopped.called and redis.commands[-1] == zadd
    redis.answer()
    for _ in range(3):
        log.reactor.advance(0.02)
    assert redis.commands[-1] == ("DEL", "chat:node:" + state.node)
    redis.answer()
    assert stopped.called


def test_a_line_said_again_is_another_history_member() -> None:
    """A sorted set holds a member once: each message's member carries its
    time, or the second "hi" would only move the first."""
    _, state, redis, ann = with_history()
    members = []
    for _ in range(2):
        members.append(history_rows(said(state, redis, ann, "hi"))[0][1])
        redis.answer()
    assert members[0] != members[1]
    assert [history_entry(m)[1:] for m in members] == [("ann", "hi")] * 2


def test_the_history_loads_members_with_and_without_their_time() -> None:
    """Members as earlier versions wrote them ([nick, text], then [nick,
    text, time] in JSON) load too, and each event's line once if it is
    there in two forms (nodes of two versions during a rolling upgrade)."""
    log, state, redis = connected()
    rows = ["00000000 " + json.dumps(["old", "before"]), "1000",
            "00000000 " + json.dumps(["new", "after", 2000]), "2000",
            "00000000 2000 new after", "2000",
            "00000001 2000 now  two  spaces \"quoted\"", "2000"]
    loading = ensureDeferred(log.reading._load_history(redis, "3000-0"))
    redis.answer(value=rows)
    assert loading.called
    assert [(e.ts, e.nick, e.text) for e in state.replica.hub.history.recent()] == [
        (1.0, "old", "before"), (2.0, "new", "after"), (2.0, "now", ' two  spaces "quoted"')]


def test_a_snapshot_writes_again_only_the_lines_the_byte_bound_keeps() -> None:
    """As it writes a snapshot, a node writes its last lobby lines to the
    history again; with --retain-bytes only the newest that fit in it, so
    that none the byte bound removed comes back (to be counted and removed
    again, for nothing)."""
    log, state, _ = connected()
    lines = [(f"{1000 + i}-0", "ann", f"line {i} " + "x" * 200) for i in range(6)]
    state.replica.recent.extend(lines)
    cost = [len(history_row(*line)[1].encode()) + HISTORY_OVERHEAD for line in lines]
    log.pruning.retention = Retention.of(None, None, sum(cost[-4:]) + 1)
    rows = log.pruning.recent_rows(state.replica.recent, 2.0)
    assert rows == [x for line in lines[-4:] for x in history_row(*line)]
    log.pruning.retention = Retention.of(None, None, None)
    rows = log.pruning.recent_rows(state.replica.recent, 2.0)
    assert rows == [x for line in lines for x in history_row(*line)]
