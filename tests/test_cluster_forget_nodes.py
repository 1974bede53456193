"""
A node that dies with no users (a crash, an OOM kill) is declared dead when
its lease lapses, as one with users is, so that its sequence number
(C{Replica.last_k}) is forgotten with its id a day later instead of staying
in every replica and every snapshot for good (review revclu F2).
Deterministic: the node's L{RedisLog} on a fake Redis connection whose every
answer the test gives, and a L{task.Clock}.
"""

from __future__ import annotations

import json
from typing import Any

from tests.test_cluster_refused import AnsweredRedis, applied, connected, heartbeat
from twisted_chat.server.cluster.replica import DEAD_KEEP, HELLO


class LiveRedis(AnsweredRedis):
    """Every lease the node asks for is there."""

    def answer(self, refuse: bool = False, value: Any = None) -> dict[str, Any]:
        if value is not None and self.commands[self.answered][0] == "MGET":
            value = ["1"] * len(value)
        return super().answer(refuse, value)


def test_a_node_that_died_without_users_is_declared_and_forgotten() -> None:
    log, state, redis = connected()
    replica = state.replica
    # Node x appended events (a tick, a hello after a loss) and has no users.
    applied(state, {"t": "tick", "n": "x", "k": 1})
    applied(state, {"t": "hello", "n": "x", "k": 2, "users": []})
    assert {"x", HELLO + "x"} <= set(replica.last_k) and "x" not in replica.nodes()
    log.leases.up_since = -1e9  # connected for longer than a lease
    (dead_x,) = heartbeat(log, redis)  # x's lease has lapsed
    assert (dead_x["t"], dead_x["node"]) == ("dead", "x")
    applied(state, dead_x)
    assert list(replica.dead) == ["x"]
    assert heartbeat(log, redis) == []  # declared once
    # A day later, the next death takes x's id and sequence numbers out.
    applied(state, {"t": "dead", "n": "y", "k": 1, "node": "z"}, at=1000.0 + DEAD_KEEP + 10)
    assert "x" not in replica.dead
    assert not {"x", HELLO + "x"} & set(replica.last_k)
    assert '"x"' not in json.dumps(json.loads(replica.snapshot())["k"])


def test_a_live_node_without_users_is_left_alone() -> None:
    log, state = connected()[:2]
    redis = LiveRedis(state)
    log._cmd = redis
    applied(state, {"t": "tick", "n": "x", "k": 1})
    log.leases.up_since = -1e9
    assert heartbeat(log, redis) == []
    mget = next(c for c in redis.commands if c[0] == "MGET")
    assert "chat:node:x" in mget  # its lease is watched
    assert state.replica.last_k["x"] == 1 and not state.replica.dead
