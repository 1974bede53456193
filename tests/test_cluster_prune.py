"""
How a cluster node paces the history's pruning (L{Pruning.prune}),
deterministically: the node on a fake Redis whose every answer the test
gives, and a L{task.Clock}.  Each run of L{PRUNE_HISTORY} is short; a node
runs it again while more is due, within a share of its heartbeat, and at
start until nothing is due.  (The script itself, and the bounds holding at
a sustained rate, on a real Redis: tests/test_cluster_e2e_history.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, ensureDeferred

from tests.test_cluster_refused import AnsweredRedis, connected
from twisted_chat.server.cluster.redisconfig import Retention
from twisted_chat.server.cluster.redishistory import (
    HISTORY,
    HISTORY_OVERHEAD,
    HISTORY_SIZE,
    PRUNE_BATCH,
    PRUNE_BATCH_BYTES,
    PRUNE_HISTORY,
    PRUNE_SHARE,
    prune_again,
)
from twisted_chat.server.cluster.redislog import RedisLog


def pruning(most_bytes: int = 1 << 20) -> tuple[RedisLog, AnsweredRedis]:
    log, _, redis = connected(node_timeout=15.0)
    log.pruning.retention = Retention.of(None, None, most_bytes)
    return log, redis


def runs(redis: AnsweredRedis) -> int:
    return sum(1 for c in redis.commands if c[:2] == ("EVAL", PRUNE_HISTORY))


def answer(log: RedisLog, redis: AnsweredRedis, dropping: int, counting: int,
           took: float = 0.0) -> None:
    """The oldest run sent is answered, C{took} seconds after it was sent."""
    assert redis.commands[redis.answered][:2] == ("EVAL", PRUNE_HISTORY)
    log.reactor.advance(took)
    redis.answer(value=[0, 0, dropping, counting])


@pytest.mark.parametrize("dropping, counting, spent, budget, again", [
    (False, False, 0.0, None, False),  # nothing due: done
    (False, False, 0.0, 0.5, False),
    (True, False, 0.0, None, True),  # at start, as long as it takes
    (False, True, 99.0, None, True),
    (True, False, 0.49, 0.5, True),  # at a heartbeat, within its share
    (False, True, 0.49, 0.5, True),
    (True, True, 0.5, 0.5, False),  # the share spent: the next heartbeat goes on
])
def test_prune_again(dropping: bool, counting: bool, spent: float, budget: float | None,
                     again: bool) -> None:
    assert prune_again(dropping, counting, spent, budget) is again


def test_a_heartbeat_runs_the_script_while_more_is_due_within_its_share() -> None:
    log, redis = pruning()
    log.pruning.retention = Retention.of(None, 7, 1 << 20)
    assert log.heartbeat * PRUNE_SHARE == 0.5
    done = ensureDeferred(log.pruning.prune(redis, 1000.0))
    assert redis.commands == [("EVAL", PRUNE_HISTORY, 2, HISTORY, HISTORY_SIZE, "", 7,
                               1 << 20, PRUNE_BATCH, PRUNE_BATCH_BYTES, HISTORY_OVERHEAD)]
    # More is due after each run: again at once, until half a second is spent.
    for _ in range(4):
        answer(log, redis, dropping=1, counting=0, took=0.1)
        assert not done.called
    answer(log, redis, dropping=0, counting=1, took=0.1)
    assert done.called and runs(redis) == 5
    # The next heartbeat goes on; done as soon as a run says nothing is due.
    done = ensureDeferred(log.pruning.prune(redis, 1002.5))
    answer(log, redis, dropping=1, counting=1)
    answer(log, redis, dropping=0, counting=0)
    assert done.called and runs(redis) == 7


def test_at_start_it_runs_the_script_until_nothing_is_due() -> None:
    log, redis = pruning()
    done = ensureDeferred(log.pruning.prune(redis, 1000.0, start=True))
    for dropping, counting in [(1, 0), (1, 1), (0, 1), (0, 1)]:
        answer(log, redis, dropping, counting, took=1.0)
        assert not done.called
    answer(log, redis, dropping=0, counting=0)
    assert done.called and runs(redis) == 5


def test_a_heartbeat_does_not_prune_while_the_last_one_still_does() -> None:
    log, redis = pruning()
    first = ensureDeferred(log.pruning.prune(redis, 1000.0))
    second = ensureDeferred(log.pruning.prune(redis, 1002.5))
    assert second.called and runs(redis) == 1
    answer(log, redis, dropping=0, counting=0)
    assert first.called
    ensureDeferred(log.pruning.prune(redis, 1005.0))
    assert runs(redis) == 2


def test_a_failed_run_ends_the_pruning_until_the_next_heartbeat() -> None:
    log, redis = pruning()
    failed: list[Any] = []
    ensureDeferred(log.pruning.prune(redis, 1000.0)).addErrback(failed.append)
    reply: Deferred[Any] = redis.replies[redis.answered]
    redis.answered += 1
    reply.errback(txredisapi.ConnectionError("lost"))
    assert len(failed) == 1 and runs(redis) == 1
    ensureDeferred(log.pruning.prune(redis, 1002.5))
    assert runs(redis) == 2


def test_without_a_bound_nothing_is_pruned() -> None:
    log, redis = pruning(most_bytes=0)
    log.pruning.retention = Retention.of(None, None, None)
    done = ensureDeferred(log.pruning.prune(redis, 1000.0, start=True))
    assert done.called and redis.commands == []
