"""
How cluster nodes read the cluster's events, end to end: the scripts on a
real redis-server, what a lobby message costs Redis with three real nodes,
a node that Redis drops from the channel for lagging behind it, and a node
cut off (tests/tcpproxy.py) while the stream is trimmed past what it
applied.  Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import LOOPBACK
from tests.tcpproxy import Proxy
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture
from tests.test_cluster_outage_e2e import proxied, register_once_back
from tests.test_cluster_outage_e2e import proxy as proxy_fixture
from twisted_chat.server.cluster.redishistory import (
    HISTORY_WRITING,
    SNAPSHOT_HISTORY_WRITING,
    history_rows,
)
from twisted_chat.server.cluster.redisstream import APPEND, CHANNEL, SAVE_SNAPSHOT
from twisted_chat.server.cluster.snapshots import SNAPSHOT_INTERVAL

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

cluster = cluster_fixture  # the fixtures, shared
proxy = proxy_fixture


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
        # The append: the event in the stream with the id it follows ("0-0":
        # the first), and on the channel with both, in the stream's order.
        ids = [r("EVAL", APPEND, 1, "chat:events", CHANNEL, 0, f'{{"x":{i}}}') for i in range(3)]
        follows = ["0-0", *ids[:2]]
        heard = [sub.reply() for _ in range(3)]
        assert heard == [["message", CHANNEL, f'{prev} {eid} {{"x":{i}}}']
                         for i, (prev, eid) in enumerate(zip(follows, ids, strict=True))]
        entries = [[eid, ["e", f'{{"x":{i}}}', "p", prev]]
                   for i, (prev, eid) in enumerate(zip(follows, ids, strict=True))]
        assert r("XRANGE", "chat:events", "-", "+") == entries
        # A PING on the subscribed connection is answered (the node's check).
        assert sub("PING") == ["pong", ""]
        # What a node reads to catch up: the entries after its last one; the
        # first names the one it follows, also once that one was trimmed.
        assert r("XRANGE", "chat:events", "(" + ids[0], "+", "COUNT", 1) == entries[1:2]
        r("XTRIM", "chat:events", "MINID", ids[2])
        assert r("XRANGE", "chat:events", "(" + ids[0], "+") == entries[2:]
        # The snapshot: set over an older one, never over a newer one.
        def snap(eid: str) -> str:
            return json.dumps({"id": eid, "now": 0}, separators=(",", ":"))

        assert r("EVAL", SAVE_SNAPSHOT, 1, "chat:snapshot", snap(ids[1]), ids[1]) == 1
        assert r("EVAL", SAVE_SNAPSHOT, 1, "chat:snapshot", snap(ids[0]), ids[0]) == 0
        assert r("EVAL", SAVE_SNAPSHOT, 1, "chat:snapshot", snap(ids[1]), ids[1]) == 0
        assert r("GET", "chat:snapshot") == snap(ids[1])
        assert r("EVAL", SAVE_SNAPSHOT, 1, "chat:snapshot", snap(ids[2]), ids[2]) == 1
        assert r("GET", "chat:snapshot") == snap(ids[2])
        r.close()
        sub.close()
    finally:
        redis.stop()


# A MONITOR line's arguments: each quoted, with \" and \\ escaped.
MONITORED_ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')


def monitored(line: str) -> list[str]:
    """A command as MONITOR shows it (C{<time> [<db> <client>] "CMD" "arg" ...})."""
    return [re.sub(r"\\(.)", r"\1", arg) for arg in MONITORED_ARG.findall(line)]


def test_a_lobby_message_costs_redis_the_same_commands_with_three_nodes(
    cluster: Callable[..., Cluster],
) -> None:
    """With three nodes, each lobby message is one append script and one
    history write (a script: one ZADD): no node reads the stream while it
    keeps up (before: an XREAD per node per message)."""
    c = cluster(3)
    users = [c.user(server, f"u{i}") for i, server in enumerate(c.nodes)]
    for client in users:
        client.sync()
    # Besides a message's own history write, a node's heartbeat may write
    # the lobby lines it holds again (its snapshot's, every
    # SNAPSHOT_INTERVAL): with this line said first, such a write holds it,
    # and is told apart.
    users[0].send("MSG before the count")
    for client in users:
        client.expect(lambda line: line.endswith(" before the count"))
    monitor = Resp(c.redis.port)
    assert monitor("MONITOR") == "OK"
    before = commandstats(c.redis)
    said = []
    for i in range(10):  # within --flood-burst
        for n, client in enumerate(users):
            client.send(f"MSG number {i} from u{n}")
            said.append(f"u{n} number {i} from u{n}")
    seen = []
    for client in users:
        seen.append([client.expect("MSG", timeout=10).split(" ", 2)[2] for _ in range(30)])
    assert seen[0] == seen[1] == seen[2]
    # The history's writes, up to a command of this test's own after the
    # last message's (which its node may send after the users are shown
    # the line).
    own: list[list[str]] = []  # one row each, in order
    others: list[list[str]] = []
    end = "the count's end"
    deadline = time.monotonic() + 10
    while True:
        assert time.monotonic() < deadline, (own, others)
        command = monitored(monitor.reply())
        if command[:2] == ["ECHO", end]:
            break
        if tuple(command[:2]) not in (HISTORY_WRITING, SNAPSHOT_HISTORY_WRITING):
            continue
        rows = [member.split(" ", 2)[2] for _, member in history_rows(tuple(command))]
        if len(rows) == 1 and rows[0] in said:
            own.append(rows)
            if len(own) == len(said):
                marker = Resp(c.redis.port)
                assert marker("ECHO", end) == end
                marker.close()
        else:
            others.append(rows)
    monitor.close()
    after = commandstats(c.redis)
    spent = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert spent.get("xread", 0) == 0
    assert sorted(row for rows in own for row in rows) == sorted(said)  # each once
    # The others are snapshots' (what was said before the count first), a
    # snapshot or two per node at most (the heartbeat's, every 10 s).
    assert all("u0 before the count" in rows for rows in others), others
    assert len(others) <= 3 * 2, others
    # The appends and the history's writes, and the snapshots' saves and
    # writes: nothing per node per message.
    snapshots = spent["evalsha"] - 2 * 30
    assert 0 <= snapshots <= 3 * 2 * 2, spent


def _last_id(redis: RedisServer) -> str:
    conn = Resp(redis.port)
    try:
        (entry,) = conn("XREVRANGE", "chat:events", "+", "-", "COUNT", 1)
        return str(entry[0])
    finally:
        conn.close()


def _key(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq)


def test_a_node_cut_off_past_the_trimmed_stream_goes_on_as_a_new_node(
    cluster: Callable[..., Cluster], proxy: Callable[[RedisServer], Proxy],
) -> None:
    """
    One node is cut off from Redis (connections reset) for less than its
    lease, so nobody takes it for dead; meanwhile bob talks and leaves a
    snapshot behind, and the stream is trimmed up to it (what the nodes'
    heartbeat does two snapshots on).  Back, the node cannot read what it
    missed: its user is told BYE shutdown, the others see her leave, and it
    goes on as a new node with the cluster's state and history.
    """
    node_timeout = 40.0  # a lease of 26 s: longer than the cut
    o = cluster(1, node_timeout=node_timeout)
    (n1,) = o.nodes
    between = proxy(o.redis)
    cut = o.node(url=proxied(between))
    alice, bob = o.user(cut, "alice"), o.user(n1, "bob")
    for client in (alice, bob):
        client.sync()
    between.do("cut")
    cut.wait_log("unreachable", timeout=5)
    # Two events after the last the cut node applied: the stream is trimmed
    # up to the second (the snapshot's), so the first is gone.
    bob.send("MSG while you were away")
    bob.send("MSG still away")
    bob.expect(lambda line: line.endswith("still away"))
    missed = _last_id(o.redis)
    # n1 writes a snapshot every SNAPSHOT_INTERVAL s (at a heartbeat).
    deadline = time.monotonic() + SNAPSHOT_INTERVAL + node_timeout / 6 + 5
    while True:
        text = o.redis.command("GET", "chat:snapshot")
        found = re.search(r'\{"id":"(\d+-\d+)"', text)
        if found and _key(found[1]) >= _key(missed):
            break
        assert time.monotonic() < deadline, "no snapshot after the message"
        time.sleep(0.2)
    o.redis.command("XTRIM", "chat:events", "MINID", found[1])
    between.do("heal")
    assert alice.expect("BYE", timeout=15).startswith("BYE shutdown")
    assert alice.closed(timeout=5)
    cut.wait_log("missed events", timeout=5)
    # Its old id is declared dead at once (its lease had not lapsed).
    left = bob.expect(lambda line: line.startswith("LEFT") and " alice " in line, timeout=5)
    assert left.split()[3] == "disconnected"
    # It goes on: a newcomer there gets the cluster's history (the message
    # the node never heard included) and user list, and can talk.
    erin = register_once_back(o, cut, "erin")
    block = erin.sync()
    assert [line.split(" ", 2)[2] for line in block if line.startswith("HISTORY")] == [
        "bob while you were away", "bob still away"], block
    assert [line for line in block if line.startswith("USER")][-1] == "USERS 2", block
    erin.send("MSG hello from the node that came back")
    assert bob.expect("MSG").endswith("erin * hello from the node that came back")


def test_a_node_dropped_from_the_channel_catches_up_from_the_stream(
        cluster: Callable[..., Cluster]) -> None:
    """docs/cluster.md, "How Redis must be configured": a node that falls
    behind the channel past Redis's client-output-buffer-limit for pub/sub
    is disconnected by Redis, and catches up from the stream when it
    reconnects: its users miss nothing, see nothing out of order, and
    nobody is shown leaving (rev-clu F6).  Node B is stopped (SIGSTOP, well
    within its lease) and Redis drops the subscribers (CLIENT KILL: what
    the limit does; reaching it for real takes tens of MB here, the kernel's
    buffers on loopback first) while node A's user says 200 lines: B hears
    none of them on the channel.  (A, dropped too, subscribes again first.)"""
    c = cluster(2, "--flood-rate", "0")
    a, b = c.nodes
    sender = c.user(a, "sender")
    watcher = c.user(b, "watcher")
    for client in (sender, watcher):
        client.sync()
    texts = [f"line{i:03d} " + "x" * 200 for i in range(200)]
    channel = f"{CHANNEL}:0"
    r = Resp(c.redis.port)
    os.kill(b.pid, signal.SIGSTOP)
    try:
        assert r("CLIENT", "KILL", "TYPE", "pubsub") == 2
        deadline = time.monotonic() + 15
        while r("PUBSUB", "NUMSUB", channel)[1] != 1:  # A's again, not B's
            assert time.monotonic() < deadline, "node A did not subscribe again"
            time.sleep(0.05)
        for text in texts:
            sender.send(f"MSG {text}")
            assert sender.expect("MSG", timeout=10).endswith(f"sender * {text}")
    finally:
        os.kill(b.pid, signal.SIGCONT)
        r.close()
    seen = [watcher.expect(lambda line: line.startswith(("MSG", "LEFT", "BYE")), timeout=15)
            for _ in texts]
    assert [line.split(" ", 4)[4] for line in seen] == texts
    # Said as what it is, not as Redis unreachable (rev16-clu #4).
    for node in (a, b):
        node.wait_log("closed this node's subscriber connection while answering its commands",
                      timeout=10)
        node.wait_log("Redis is back after", timeout=15)
        assert "unreachable" not in node.log()
    for client in (sender, watcher):
        rest = client.sync(timeout=10)
        assert not [line for line in rest if line.startswith(("LEFT", "BYE", "MSG"))], rest
