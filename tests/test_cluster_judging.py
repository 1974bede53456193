"""
After an outage a node judges the others' leases only once every live node
can have reconnected: a whole lease, and at least the longest reconnection
backoff after Redis is back.  With a short C{--node-timeout} the lease alone
is shorter than that backoff, and a live node still waiting to reconnect was
declared dead: its users told C{BYE shutdown}, everyone else C{LEFT} (review
rev2clu R1).  The rule is a pure function; the heartbeat test drives the
node's L{RedisLog} on a fake Redis connection whose every answer the test
gives, and a L{task.Clock}.
"""

from __future__ import annotations

from tests.test_cluster_outage import AnsweringRedis, redis_log
from tests.test_cluster_refused import applied, connected, heartbeat
from twisted_chat.server.cluster.leases import judging_wait
from twisted_chat.server.cluster.redislog import BACKOFF_JITTER, BACKOFF_MAX

LONGEST_BACKOFF = BACKOFF_MAX * (1 + BACKOFF_JITTER)


def wait(lease: float, heartbeat: float, after_outage: bool) -> float:
    return judging_wait(lease, heartbeat, after_outage, longest_backoff=LONGEST_BACKOFF)


def test_after_an_outage_the_wait_covers_the_longest_backoff() -> None:
    assert wait(2.0, 0.5, after_outage=True) == LONGEST_BACKOFF + 0.5
    assert wait(10.0, 2.5, after_outage=True) == 10.0  # the lease is longer


def test_a_node_that_reached_redis_at_once_waits_a_lease() -> None:
    assert wait(2.0, 0.5, after_outage=False) == 2.0


def test_a_short_node_timeout_still_waits_out_a_live_nodes_reconnection() -> None:
    log, state, redis = connected(node_timeout=3.0)  # a lease of 2 s
    log.leases.judge_wait = wait(log.leases.lease_ms / 1000, log.heartbeat, after_outage=True)
    applied(state, {"t": "tick", "n": "x", "k": 1})  # x is known; its lease is missing
    now = log.reactor.seconds()
    log.leases.up_since = now - 3.0  # back longer than a lease, not than x's backoff
    assert heartbeat(log, redis) == []
    log.leases.up_since = now - (LONGEST_BACKOFF + log.heartbeat + 0.01)
    (dead,) = heartbeat(log, redis)
    assert (dead["t"], dead["node"]) == ("dead", "x")


def test_the_node_waits_the_longer_time_only_after_an_outage() -> None:
    log, state = redis_log(node_timeout=3.0)  # a lease of 2 s

    async def new_connection(reply_timeout: float, subscriber: bool = False) -> AnsweringRedis:
        return AnsweringRedis()

    log._new_connection = new_connection  # type: ignore[method-assign]
    log.start()  # Redis reached at once
    assert state.available and log.leases.judge_wait == 2.0
    log.lost(log._generation)  # an outage
    log.reactor.advance(1.0)  # the reconnection's backoff
    assert state.available and log.leases.judge_wait == LONGEST_BACKOFF + 0.5
