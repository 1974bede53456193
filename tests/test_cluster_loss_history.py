"""
The history writes a node still has to make when Redis loses data
(deterministic, on the L{MemoryRedis} and L{Node} fakes of
test_cluster_read): a history write Redis refused and the node keeps (to
write again), or one whose answer was lost with its connection (to send
again), for a lobby message whose event Redis then lost (all of its data,
or its last events), is dropped: the lost lines are in no history, and every
node, running or started later, shows the same one.  One for a message
whose event Redis kept is still written.
"""

from __future__ import annotations

from typing import Any

import pytest
import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from tests.test_cluster_read import MemoryRedis, Node, cluster, say
from twisted_chat.server.cluster.redishistory import HISTORY_WRITING, history_entry


def _texts(node: Node) -> list[str]:
    return [e.text for e in node.state.replica.hub.history.recent()]


def _in_redis(redis: MemoryRedis) -> list[str]:
    """The lines of Redis's history."""
    return [history_entry(member)[2] for member in redis.history]


def _refusing_history(redis: MemoryRedis) -> list[bool]:
    """Redis refuses the history's writes (MISCONF: the disk is full) while
    the returned flag is set."""
    real = redis._history_add
    refusing = [True]

    def history_add(*args: Any) -> Any:
        if refusing[0]:
            return fail(txredisapi.ResponseError("MISCONF disk full"))
        return real(*args)

    redis._history_add = history_add  # type: ignore[method-assign,assignment]
    return refusing


def _restart(redis: MemoryRedis, clock: Clock, nodes: list[Node], seconds: int = 16) -> None:
    """The nodes lose their connections (Redis restarts) and are back."""
    for node in nodes:
        node.cut()
        node.reachable = True
    for _ in range(seconds):
        clock.advance(1)
        redis.pump()


def _one_history(redis: MemoryRedis, clock: Clock, n0: Node, n1: Node) -> list[str]:
    """A node started now shows the history the running ones show."""
    n2 = Node(redis, clock, "n2")
    clock.advance(0)
    redis.pump()
    assert _texts(n0) == _texts(n1) == _texts(n2)
    return _texts(n2)


def test_a_kept_history_write_is_dropped_when_redis_loses_all_its_data() -> None:
    """Redis refuses history writes, then restarts without its data (a new
    epoch): the running nodes start their history afresh, and the kept
    write of the message said before the loss is not written into the new
    Redis (a node started afterwards would show it, the running ones not)."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    refusing = _refusing_history(redis)
    say(n0, ann, "before the loss")
    assert n0.log.kept_history.pending
    redis.flushdb()
    refusing[0] = False
    _restart(redis, clock, [n0, n1], seconds=25)  # a snapshot after the loss too
    assert not n0.log.kept_history.pending
    assert redis.history == {}
    assert _one_history(redis, clock, n0, n1) == []


@pytest.mark.parametrize("restart", [True, False])
def test_a_kept_history_write_of_a_lost_event_is_dropped_one_of_a_kept_event_written(
    restart: bool,
) -> None:
    """Redis refuses history writes; it then loses the stream's last event
    ("lost"), its epoch kept (a restart; or entries deleted, the nodes
    connected: seen from the next event, at once, while the writes are
    still kept, not yet due again).  The lost line is in no history (as
    docs/cluster.md says of the lost events' lines): its kept write is
    dropped.  The kept write of "kept", whose event Redis kept, is written
    once Redis takes writes again."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    bob = n1.user("bob")
    refusing = _refusing_history(redis)
    say(n0, ann, "kept", "lost")
    assert len(n0.log.kept_history.kept) == 2
    del redis.stream[-1:]  # lost: "lost"
    refusing[0] = False
    if restart:
        _restart(redis, clock, [n0, n1])
    else:
        say(n1, bob, "after")
        for _ in range(5):  # n0 reconnects (0.2 s) to announce its users again
            clock.advance(0.1)
            redis.pump()
        assert n0.log.kept_history.kept and n0.state.available  # the kept end's, not yet due
        for _ in range(15):
            clock.advance(1)
            redis.pump()
    lines = ["kept"] if restart else ["kept", "after"]
    assert sorted(_in_redis(redis)) == sorted(lines)
    assert _one_history(redis, clock, n0, n1) == lines


def test_a_history_write_whose_answer_was_lost_is_not_sent_again_for_a_lost_event() -> None:
    """A history write sent as the connection went (no answer: it is sent
    again on the next one) for a message whose event Redis then lost: it is
    not sent again (it would put the lost line into the history)."""
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    say(n0, ann, "kept")
    real = redis._history_add
    redis._history_add = lambda *args: Deferred()  # type: ignore[method-assign,assignment]
    say(n0, ann, "lost")  # its history write never answered
    assert any(out.command[:2] == HISTORY_WRITING for out in n0.log._unacked)
    del redis.stream[-1:]  # the restart lost "lost"
    redis._history_add = real  # type: ignore[method-assign]
    _restart(redis, clock, [n0, n1])
    assert not any(out.command[:2] == HISTORY_WRITING for out in n0.log._unacked)
    assert _in_redis(redis) == ["kept"]
    assert _one_history(redis, clock, n0, n1) == ["kept"]


def test_the_fallback_keeps_the_lost_lines_in_its_history_and_writes_them_again(
        logged: list[str]) -> None:
    """Where what Redis kept cannot be read back (no snapshot, the stream
    trimmed behind the kept end), the node goes on with its replica as it
    was (docs/cluster.md, "What is guaranteed", Redis lost its last
    events), its history included: the lost line stays in its newcomers'
    history, and its next snapshot writes it to Redis's history again
    (rev19-clu2: the docs said only that the lost lines are in no history,
    which holds for a rebuilt node)."""
    redis, clock, (n0,) = cluster(1)
    ann = n0.user("ann")
    say(n0, ann, "kept", "lost")
    redis.keys.pop("chat:snapshot", None)
    del redis.stream[0]  # trimmed behind the kept end
    del redis.stream[-1:]  # lost: "lost", and its history row with it
    redis.history = {m: s for m, s in redis.history.items() if history_entry(m)[2] != "lost"}
    _restart(redis, clock, [n0], seconds=25)  # a snapshot after the loss too
    assert any("what Redis kept cannot be read back" in line for line in logged)
    assert _texts(n0) == ["kept", "lost"]
    assert sorted(_in_redis(redis)) == ["kept", "lost"]
