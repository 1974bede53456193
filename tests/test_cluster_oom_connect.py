"""
A node (re)connecting to a Redis that is out of memory (past its
C{maxmemory}, under C{noeviction}: every write refused), on a real Redis
with the node's log (L{RedisLog}) in this process: it connects all the
same, its commands refused as Redis refuses them (C{ERROR unavailable}),
not held back retrying for ever (its heartbeats' snapshots and trims are
what frees a full Redis: a cluster whose nodes all lost their connections
would stay full).  Its lease, refused, is taken at the first heartbeat
Redis takes it, and so are C{--stream-bytes} and the retention where
C{chat:config} lacks them (a database from before they were the
cluster's); C{--set-retention}, which must write, waits for room.  (Two
real nodes, end to end: tests/test_cluster_oom_e2e.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import deferLater

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.test_cluster_config import Node
from tests.test_cluster_outage import _Arrived
from twisted_chat.server.cluster.redisconfig import CONFIG, Retention
from twisted_chat.server.cluster.redisstream import LEASE
from twisted_chat.server.cluster.streambound import FIELD
from twisted_chat.server.state import StateUnavailable

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

OOM = "OOM command not allowed"


async def until(check: Any, timeout: float = 10.0) -> None:
    """Poll C{check} on the real reactor (every 20 ms), at most C{timeout} s."""
    from twisted.internet import reactor

    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await deferLater(reactor, 0.02)
    raise AssertionError("gave up waiting")


async def killed_while_full(redis: RedisServer, node: Node) -> None:
    """Fill C{redis} (maxmemory 1: every write refused; the caller sets it
    back), kill the node's command connection, and wait for it to be
    connected again."""
    generation = node.log.generation
    assert redis.call("CONFIG", "SET", "maxmemory", 1) == "OK"
    assert redis.call("CLIENT", "KILL", "TYPE", "normal") == 1  # its command connection
    await until(lambda: node.log.generation > generation and node.state.available
                and node.log.connection is not None)


@pytest_twisted.ensureDeferred
async def test_a_node_starts_on_a_full_redis_and_takes_its_lease_once_there_is_room(
        redis: RedisServer, logged: list[str]) -> None:
    first = Node(redis, "a", retain_messages=100)
    assert await first.outcome() is None  # the epoch and the retention recorded
    assert redis.call("CONFIG", "SET", "maxmemory", 1) == "OK"
    try:
        late = Node(redis, "b", retain_messages=100)
        # It was "unreachable (OOM ...)", retrying for ever: SET chat:epoch NX.
        assert await late.outcome() is None
        assert late.state.available
        assert redis.call("GET", LEASE + "b") is None  # refused
        assert late.log.leases.up_since is None  # the others are not judged
        said = [line for line in logged if "refused a write" in line and OOM in line]
        assert len(said) == 1 and "connected all the same" in said[0], said
        assert not any("unreachable" in line for line in logged)
    finally:
        assert redis.call("CONFIG", "SET", "maxmemory", 0) == "OK"
    await late.log.leases.renew(late.log._cmd)  # its next heartbeat
    assert redis.call("GET", LEASE + "b") == "1"
    assert late.log.leases.up_since is not None
    for node in (first, late):
        await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_whose_connection_is_killed_reconnects_to_a_full_redis(
        redis: RedisServer, logged: list[str]) -> None:
    node = Node(redis, "a")
    assert await node.outcome() is None
    try:
        await killed_while_full(redis, node)
        assert any("connected all the same" in line for line in logged)
    finally:
        assert redis.call("CONFIG", "SET", "maxmemory", 0) == "OK"
    await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_write_refused_as_a_node_connects_is_said_as_such_not_unreachable(
        redis: RedisServer, logged: list[str]) -> None:
    """With no epoch yet (a new database), a full Redis cannot take the
    node's: it retries, saying Redis refused the write, and starts once
    there is room."""
    assert redis.call("CONFIG", "SET", "maxmemory", 1) == "OK"
    node = Node(redis, "a")
    started = node.log.start()
    try:
        await until(lambda: any("refused a write this node makes as it connects" in line
                                for line in logged))
        assert not started.called
        assert not any("unreachable" in line for line in logged)
    finally:
        assert redis.call("CONFIG", "SET", "maxmemory", 0) == "OK"
    await until(lambda: started.called)
    await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_reconnects_to_a_full_redis_whose_config_lacks_stream_bytes(
        redis: RedisServer, logged: list[str]) -> None:
    """A database from before --stream-bytes was the cluster's (chat:config
    without the field), full: a node whose connection is killed reconnects
    with its own bound, though Redis refuses to record it (it retried for
    ever: "refused a write this node makes as it connects"), refuses a
    registration at once as Redis refuses it, and records its bound at the
    first heartbeat once there is room."""
    node = Node(redis, "a", stream_bytes=5_000_000)
    assert await node.outcome() is None
    assert redis.call("HDEL", CONFIG, FIELD) == 1  # as such a database has it
    try:
        await killed_while_full(redis, node)
        said = [line for line in logged if "refused a write" in line and OOM in line]
        assert len(said) == 1 and "connected all the same" in said[0], said
        assert "this node's --stream-bytes 5000000 is in force" in said[0], said
        assert node.log.stream_bound.bytes == 5_000_000
        failures: list[Any] = []
        now = node.state.reactor.seconds()
        node.state.register("erin", _Arrived(now), "-").addErrback(failures.append)
        await until(lambda: bool(failures), timeout=5.0)
        refusal = failures[0].value
        assert isinstance(refusal, StateUnavailable) and "refused" in refusal.why, refusal
        assert redis.call("HGET", CONFIG, FIELD) is None
    finally:
        assert redis.call("CONFIG", "SET", "maxmemory", 0) == "OK"
    await until(lambda: redis.call("HGET", CONFIG, FIELD) == "5000000")  # a heartbeat (2.5 s)
    assert node.log.stream_bound.bytes == 5_000_000
    await node.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_connects_to_a_full_redis_whose_config_lacks_a_retention_field(
        redis: RedisServer, logged: list[str]) -> None:
    """A database no node has connected to since the retention became the
    cluster's (chat:config without retain-messages), full: a node whose
    connection is killed reconnects, and a node starts, with their own
    retention, though Redis refuses to record it (they retried for ever:
    "refused a write this node makes as it connects"); the field is
    recorded at a heartbeat once there is room."""
    node = Node(redis, "a", retain_days=2, retain_messages=100)
    assert await node.outcome() is None
    assert redis.call("HDEL", CONFIG, "retain-messages") == 1  # as such a database has it
    try:
        await killed_while_full(redis, node)
        said = [line for line in logged if "refused a write" in line and OOM in line]
        assert len(said) == 1 and "connected all the same" in said[0], said
        assert ("chat:config has no retain-messages: this node's --retain-messages 100 is "
                "in force, recorded as the cluster's at the first heartbeat Redis takes it"
                in said[0]), said
        assert node.log.pruning.retention == Retention.of(2, 100, None)
        late = Node(redis, "b", retain_days=2, retain_messages=100)
        assert await late.outcome() is None
        assert late.state.available
        assert redis.call("HGET", CONFIG, "retain-messages") is None
    finally:
        assert redis.call("CONFIG", "SET", "maxmemory", 0) == "OK"
    await until(lambda: redis.call("HGET", CONFIG, "retain-messages") == "100")  # a heartbeat
    for each in (node, late):
        assert each.log.pruning.retention == Retention.of(2, 100, None)
        await each.stop()


@pytest_twisted.ensureDeferred
async def test_a_node_started_with_set_retention_waits_for_a_full_redis_to_have_room(
        redis: RedisServer, logged: list[str]) -> None:
    """--set-retention writes the retention as the node starts: a full Redis
    refuses it, and the node retries, saying so, until there is room."""
    first = Node(redis, "a", retain_messages=100)
    assert await first.outcome() is None
    assert redis.call("CONFIG", "SET", "maxmemory", 1) == "OK"
    setter = Node(redis, "b", retain_messages=50, set_retention=True)
    started = setter.log.start()
    try:
        await until(lambda: any("refused a write this node makes as it connects" in line
                                and OOM in line for line in logged))
        assert not started.called
        assert redis.call("HGET", CONFIG, "retain-messages") == "100"
    finally:
        assert redis.call("CONFIG", "SET", "maxmemory", 0) == "OK"
    await until(lambda: started.called)
    assert redis.call("HGET", CONFIG, "retain-messages") == "50"
    for each in (first, setter):
        await each.stop()
