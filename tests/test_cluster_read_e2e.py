"""
How cluster nodes read the cluster's events, end to end: the script on a
real redis-server, and what a lobby message costs Redis with three real
nodes.  Every wait is bounded.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import LOOPBACK
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture
from twisted_chat.server.cluster.redislog import APPEND, CHANNEL

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

cluster = cluster_fixture  # the fixture, shared


class Resp:
    """A blocking Redis connection for the tests (RESP2), every wait bounded."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=5)
        self.buffer = b""

    def send(self, *args: Any) -> None:
        parts = [str(a).encode() for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts)
                          + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))

    def __call__(self, *args: Any) -> Any:
        self.send(*args)
        return self.reply()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> Any:
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b":"):
            return rest.decode() if kind == b"+" else int(rest)
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buffer) < n + 2:
                self.buffer += self.sock.recv(65536)
            data, self.buffer = self.buffer[:n], self.buffer[n + 2:]
            return data.decode()
        assert kind == b"*", line
        n = int(rest)
        return None if n < 0 else [self.reply() for _ in range(n)]

    def close(self) -> None:
        self.sock.close()


def commandstats(redis: RedisServer) -> dict[str, int]:
    conn = Resp(redis.port)
    try:
        text = conn("INFO", "commandstats")
    finally:
        conn.close()
    return {m[1]: int(m[2]) for m in re.finditer(r"cmdstat_([\w|]+):calls=(\d+)", text)}


def test_the_scripts_do_what_the_nodes_rely_on(tmp_path: Any) -> None:
    redis = RedisServer(tmp_path).start()
    try:
        r, sub = Resp(redis.port), Resp(redis.port)
        assert sub("SUBSCRIBE", CHANNEL) == ["subscribe", CHANNEL, 1]
        # The append: the event in the stream, and on the channel with the
        # id it follows ("0-0": the first) and its own, in the stream's order.
        ids = [r("EVAL", APPEND, 1, "chat:events", CHANNEL, f'{{"x":{i}}}') for i in range(3)]
        follows = ["0-0", *ids[:2]]
        heard = [sub.reply() for _ in range(3)]
        assert heard == [["message", CHANNEL, f'{prev} {eid} {{"x":{i}}}']
                         for i, (prev, eid) in enumerate(zip(follows, ids, strict=True))]
        entries = [[eid, ["e", f'{{"x":{i}}}']] for i, eid in enumerate(ids)]
        assert r("XRANGE", "chat:events", "-", "+") == entries
        # A PING on the subscribed connection is answered (the node's check).
        assert sub("PING") == ["pong", ""]
        # What a node reads to catch up: the entries after its last one.
        assert r("XRANGE", "chat:events", "(" + ids[0], "+", "COUNT", 1) == entries[1:2]
        r.close()
        sub.close()
    finally:
        redis.stop()


def test_a_lobby_message_costs_redis_the_same_commands_with_three_nodes(
    cluster: Callable[..., Cluster],
) -> None:
    """With three nodes, each lobby message is one append script and one
    ZADD: no node reads the stream while it keeps up (before: an XREAD per
    node per message)."""
    c = cluster(3)
    users = [c.user(server, f"u{i}") for i, server in enumerate(c.nodes)]
    for client in users:
        client.sync()
    before = commandstats(c.redis)
    for i in range(10):  # within --flood-burst
        for n, client in enumerate(users):
            client.send(f"MSG number {i} from u{n}")
    seen = []
    for client in users:
        seen.append([client.expect("MSG", timeout=10).split(" ", 2)[2] for _ in range(30)])
    assert seen[0] == seen[1] == seen[2]
    after = commandstats(c.redis)
    spent = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert spent.get("xread", 0) == 0
    assert spent["zadd"] == 30
    # The appends, and at most a snapshot per node (the heartbeat's, every
    # 10 s) and a catch-up or two: nothing per node per message.
    assert 30 <= spent["evalsha"] <= 30 + 3 * 2, spent
