"""
A node stopped (SIGTERM) while Redis is briefly out of reach waits for it,
within the stop's grace, so that its C{dead} is written and its users'
nicks are freed at once (review revclu F4); deterministically, on a Clock,
with the Redis connection faked.
"""

from __future__ import annotations

import json

from twisted.internet.defer import ensureDeferred

from tests.test_cluster_outage import AnsweringRedis, redis_log
from twisted_chat.server.cluster.redislog import STOP_RETRY, RedisLog
from twisted_chat.server.cluster.redisstream import APPEND_SHA


def _down(log: RedisLog, redis_back: list[bool]) -> list[AnsweringRedis]:
    """The node had its state and lost Redis; the backoff is long by now.
    Its reconnections succeed once C{redis_back} holds true."""
    connections: list[AnsweringRedis] = []

    def connect() -> None:
        log._retry = None
        if not redis_back:
            log._schedule_retry()
            return
        cmd = AnsweringRedis()
        connections.append(cmd)
        log._cmd = cmd
        log.state.available = True
        log._send_unacked()

    log._connect = connect  # type: ignore[method-assign]
    log.reading.started = True
    log._attempt = 10
    log._schedule_retry()
    assert log._retry is not None and log._retry.getTime() >= 4.0
    return connections


def test_a_stop_while_redis_restarts_waits_and_writes_the_dead() -> None:
    log, state = redis_log()
    clock = log.reactor
    back: list[bool] = []
    connections = _down(log, back)
    state.stopping()  # the service's stop: the node's dead is queued
    stopped = ensureDeferred(log.stop())
    clock.advance(0)
    assert not stopped.called  # without the fix: at once, the dead dropped
    clock.advance(1.0)
    assert not stopped.called and not connections
    back.append(True)  # Redis is back a second after the stop began
    for _ in range(int(2 * STOP_RETRY / 0.02)):
        clock.advance(0.02)
    assert stopped.called
    written = [c for c in connections[0].commands if c[:2] == ("EVALSHA", APPEND_SHA)]
    assert [json.loads(c[-1])["t"] for c in written] == ["dead"]
    assert ("DEL", "chat:node:n") in connections[0].commands
    assert not clock.getDelayedCalls()


def test_the_stop_waits_for_redis_at_most_its_grace() -> None:
    log, state = redis_log()
    clock = log.reactor
    _down(log, [])  # Redis stays away
    state.stopping()
    stopped = ensureDeferred(log.stop(grace=3.0))
    for _ in range(int(2.9 / 0.02)):
        clock.advance(0.02)
    assert not stopped.called
    for _ in range(10):
        clock.advance(0.02)
    assert stopped.called
    assert not clock.getDelayedCalls()


def test_a_node_that_never_had_the_cluster_s_state_stops_at_once() -> None:
    log, state = redis_log()
    state.stopping()
    log._schedule_retry()  # never connected: nobody to tell of its users
    stopped = ensureDeferred(log.stop())
    assert stopped.called
