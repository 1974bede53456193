"""
Redis out of memory (C{maxmemory} reached under C{noeviction}): the stream
is trimmed only behind a new snapshot, so the heartbeat still writes the
snapshot (and the history before it) and trims the stream while Redis
refuses its lease and every other write: that is what frees the memory.
A snapshot that cannot be written is warned of (not at debug), at most
once a minute.  Deterministic: the node's L{RedisLog} on a fake Redis that
answers at once as Redis 7 does under OOM (a write command refused, a
script refused unless flagged allow-oom, C{XTRIM} taken), and a
L{task.Clock}.
"""

from __future__ import annotations

import hashlib
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from tests.test_cluster_outage import FakeRedis, redis_log
from tests.test_cluster_read import cluster, now, say
from tests.test_cluster_refused import applied
from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.cluster.redisconfig import CONFIG, Retention
from twisted_chat.server.cluster.redishistory import PRUNE_HISTORY
from twisted_chat.server.cluster.redislog import SCRIPTS, UNTRIMMED_WARN_EVERY, RedisLog
from twisted_chat.server.cluster.redisstream import SNAPSHOT, STREAM
from twisted_chat.server.cluster.snapshots import SNAPSHOT_INTERVAL
from twisted_chat.server.cluster.streambound import FIELD
from twisted_chat.server.hub import ErrorCode, HubError

OOM = "OOM command not allowed when used memory > 'maxmemory'."
ALLOW_OOM = "#!lua flags=allow-oom"
# Redis's commands that write (those the node sends from its heartbeat).
WRITES = {"SET", "SADD", "SREM", "DEL", "HSET", "HSETNX", "ZADD", "XADD"}


class OomRedis(FakeRedis):
    """Answers at once; while C{refusing} is set, as Redis refuses writes:
    C{OOM} (as under maxmemory: scripts flagged allow-oom and XTRIM are
    taken) or another error (C{MISCONF}: nothing that writes is).  Keeps
    what it takes of the snapshot and the trims."""

    def __init__(self) -> None:
        super().__init__()
        self.refusing: str | None = None
        self.scripts = {hashlib.sha1(s.encode()).hexdigest(): s for s in SCRIPTS}
        self.snapshot: str | None = None  # as of which event
        self.trims: list[str] = []
        self.history_writes = 0
        self.config: list[Any] = []  # the cluster's retention (as this node's)
        self.bound: str | None = "0"  # the cluster's --stream-bytes (None: missing)
        self.prunes = 0  # the history's pruning runs (PRUNE_HISTORY: nothing due)

    def execute_command(self, *args: Any) -> Deferred[Any]:
        self.commands.append(args)
        name = args[0]
        script = self.scripts.get(args[1], "") if name == "EVALSHA" else ""
        if self.refusing is not None and (name in WRITES or name == "XTRIM" or script):
            allowed = self.refusing.startswith("OOM") and (
                name == "XTRIM" or script.startswith(ALLOW_OOM))
            if not allowed:
                return defer.fail(txredisapi.ResponseError(self.refusing))
        if name == "XTRIM":
            self.trims.append(args[-1])
        elif name == "EVALSHA" and args[3] == SNAPSHOT:
            self.snapshot = args[5]  # the event it is as of
        elif name == "EVALSHA" and "ZADD" in script:
            self.history_writes += 1
        elif name == "HMGET":
            return defer.succeed(self.config)
        elif args[:3] == ("HGET", CONFIG, FIELD):
            return defer.succeed(self.bound)
        elif args[:3] == ("HSETNX", CONFIG, FIELD):
            recorded, self.bound = self.bound is None, self.bound or args[3]
            return defer.succeed(int(recorded))
        elif args[:2] == ("EVAL", PRUNE_HISTORY):
            self.prunes += 1
            return defer.succeed([0, 0, 0, 0])
        elif name in ("MGET", "SMEMBERS"):
            return defer.succeed([None] * (len(args) - 1) if name == "MGET" else [])
        return defer.succeed(1)


def caught_up() -> tuple[RedisLog, ClusterState, OomRedis]:
    log, state = redis_log()
    redis = OomRedis()
    redis.config = list(log.pruning.retention.values())
    log._cmd, state.available = redis, True
    log.reading.caught_up = True
    return log, state, redis


def beat(log: RedisLog) -> None:
    """One heartbeat (the fake answers at once: it has run when this returns)."""
    log._heartbeat()
    assert log._beat is not None
    log._beat.cancel()


def event_then_beat(log: RedisLog, state: ClusterState, nick: str, said: str) -> str:
    """A user registers and says C{said} in the lobby (its line in the
    replica's recent ones), a snapshot interval passes, a heartbeat: the
    stream id of the event."""
    applied(state, {"t": "reg", "n": "x", "k": 1, "nick": nick}, at=log.reactor.seconds())
    eid = state.replica.last_id
    state.replica.recent.append((eid, nick, said))
    log.reactor.advance(SNAPSHOT_INTERVAL)
    beat(log)
    return eid


def test_out_of_memory_the_snapshot_and_the_trim_are_still_written() -> None:
    """Redis out of memory refuses the node's lease (and every append): the
    heartbeat still writes the history its snapshot needs and the snapshot,
    and trims the stream behind the one before, which is what frees
    Redis's memory so that the cluster recovers by itself once the burst
    that filled it ends.  (Before: the refused lease ended the heartbeat,
    and the history write and the snapshot were refused, so the stream was
    never trimmed.)"""
    log, state, redis = caught_up()
    redis.refusing = OOM
    first = event_then_beat(log, state, "ann", "one")
    assert any(c[0] == "SET" for c in redis.commands)  # the lease: refused
    assert redis.snapshot == first
    assert redis.history_writes == 1
    assert redis.trims == []  # nothing before the first snapshot to trim to
    second = event_then_beat(log, state, "bob", "two")
    assert redis.snapshot == second
    assert redis.history_writes == 2
    assert redis.trims == []
    third = event_then_beat(log, state, "cat", "three")
    assert redis.snapshot == third
    # Trimmed to the snapshot before the last: a node loading the last one
    # still finds the stream after it.
    assert redis.trims == [first]
    assert [c[:3] for c in redis.commands if c[0] == "XTRIM"] == [("XTRIM", STREAM, "MINID")]
    # The burst is over and Redis still refuses every append: nothing new,
    # so no new snapshot; an interval after the last, the stream is trimmed
    # up to it (else it would keep the end of the burst for good).
    log.reactor.advance(SNAPSHOT_INTERVAL - 1)
    beat(log)
    assert redis.trims == [first]  # not an interval yet
    log.reactor.advance(1)
    beat(log)
    assert redis.trims == [first, third] and redis.snapshot == third
    log.reactor.advance(SNAPSHOT_INTERVAL)
    beat(log)
    assert redis.trims == [first, third]  # once


def test_the_heartbeat_prunes_though_redis_refuses_to_record_stream_bytes() -> None:
    """chat:config lacks --stream-bytes (a database from before it was the
    cluster's) and Redis, out of memory, refuses the heartbeat's HSETNX of
    it: the history is still pruned, which frees Redis (before: the
    refusal skipped the prune, at every heartbeat), and the bound is
    recorded at the first heartbeat Redis takes it."""
    log, _state, redis = caught_up()
    log.pruning.retention = Retention.of(None, 100, None)
    redis.config = list(log.pruning.retention.values())
    redis.bound = None
    redis.refusing = OOM
    beat(log)
    assert ("HSETNX", CONFIG, FIELD, "0") in redis.commands  # refused
    assert redis.bound is None
    assert redis.prunes == 1
    beat(log)
    assert redis.prunes == 2
    redis.refusing = None
    beat(log)
    assert redis.bound == "0" and redis.prunes == 3


def test_a_snapshot_that_cannot_be_written_is_warned_of_once_a_minute() -> None:
    """Redis refusing even the snapshot (MISCONF: its disk): the stream
    cannot be trimmed; the node warns (not at debug) saying what to check,
    at most once every UNTRIMMED_WARN_EVERY seconds, and again later."""
    log, state, redis = caught_up()
    logged: list[dict[str, Any]] = []
    log.log = Logger(observer=logged.append)
    redis.refusing = "MISCONF Redis is configured to save RDB snapshots"

    def warnings() -> list[dict[str, Any]]:
        return [e for e in logged if "cannot be trimmed" in e["log_format"]]

    # (The beats below: 5 within UNTRIMMED_WARN_EVERY of the first, the 6th not.)
    assert 5 * SNAPSHOT_INTERVAL < UNTRIMMED_WARN_EVERY <= 6 * SNAPSHOT_INTERVAL
    event_then_beat(log, state, "ann", "one")
    (warned,) = warnings()
    assert warned["log_level"].name == "warn"
    assert "maxmemory" in warned["log_format"] and "MISCONF" in warned["why"]
    assert redis.snapshot is None and redis.trims == []
    for nick in ("bob", "cat", "dan", "eve", "fay"):  # 50 s more (of the 60)
        event_then_beat(log, state, nick, "more")
    assert len(warnings()) == 1
    event_then_beat(log, state, "gus", "later")
    assert len(warnings()) == 2
    redis.refusing = None  # taken again: the snapshots and trims go on
    event_then_beat(log, state, "hal", "taken")
    last = event_then_beat(log, state, "ivy", "taken")
    assert redis.snapshot == last
    log.reactor.advance(SNAPSHOT_INTERVAL)
    beat(log)
    assert redis.trims == [last]
    assert len(warnings()) == 2


# -- --stream-bytes: users' traffic fills the stream up to it, not Redis ---------------


def test_a_command_is_not_appended_while_the_stream_takes_more_than_stream_bytes() -> None:
    """Past --stream-bytes (here, in MemoryRedis, the events' bytes), a
    user's command is answered ERROR unavailable (not sent) and nothing is
    appended; what the node appends for itself (a leave) still is, so the
    others see the user go; once the stream is trimmed below the bound,
    commands are taken again."""
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n1.user("bob")
    bound = sum(len(e) for _, e, _ in redis.stream) + 200
    n0.log.stream_bound.bytes = n1.log.stream_bound.bytes = bound
    outcomes: list[Any] = []
    for i in range(4):  # 100 to 200 bytes each: the first two are taken
        d = n0.state.direct(now(ann), "bob", f"dm {i} " + "x" * 100)
        assert isinstance(d, Deferred)
        d.addBoth(outcomes.append)
        clock.advance(0)
        redis.pump()
    taken = [x for x in outcomes if not isinstance(x, Failure)]
    refused = [x.value for x in outcomes if isinstance(x, Failure)]
    assert len(taken) == 2 and len(refused) == 2
    for error in refused:
        assert isinstance(error, HubError) and error.code == ErrorCode.UNAVAILABLE
        assert error.text.startswith("not sent: ")
    assert [e["x"][:4] for e in redis.events() if e["t"] == "dm"] == ["dm 0", "dm 1"]
    n1.state.say(now(bob), "other node")  # every node's commands: the stream's bound
    clock.advance(0)
    redis.pump()
    assert "other node" not in n0.listener.said()
    n0.state.leave(now(ann), "quit")  # a node's own event: not bounded
    redis.pump()
    assert "ann" not in n1.nicks()
    redis.trim(redis.stream[-1][0])
    say(n1, bob, "after the trim")
    assert "after the trim" in n0.listener.said()
