"""
Cluster mode's one history, end to end (a private redis-server and real
C{twistd -n chat --redis ...} nodes): C{--retain-days} pruning by every node,
and C{--history} as each node's own window on the kept messages.

Time is controlled through the data: messages written into Redis dated days
before now, as if said then, against a retention of days; nothing waits for
a day to pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from tests import test_cluster_e2e
from tests.redisproc import RedisServer
from tests.serverproc import LineClient
from tests.test_cluster_e2e import CALM_TIMEOUT, Cluster

pytestmark = test_cluster_e2e.pytestmark
cluster = test_cluster_e2e.cluster  # the fixture: a private redis-server and nodes

HISTORY = "chat:history"


def said(redis: RedisServer, when: float, seq: int, nick: str, text: str) -> None:
    """A lobby message in the cluster's history as its sender's node writes it."""
    ms = int(when * 1000)
    member = f"{seq:08d} " + json.dumps([nick, text, ms], ensure_ascii=False)
    assert ":1" in redis.command("ZADD", HISTORY, str(int(when * 1000)), member)


def kept(redis: RedisServer) -> list[str]:
    """The history's messages, oldest first, as "nick text"."""
    reply = redis.command("ZRANGE", HISTORY, "0", "-1").split("\r\n")
    members = [line for line in reply[1:] if line and not line.startswith("$")]
    return [" ".join(json.loads(m.split(" ", 1)[1])[:2]) for m in members]


def shown(client_lines: list[str]) -> list[str]:
    """The HISTORY a newcomer was given, as "nick text"."""
    return [line.split(" ", 2)[2] for line in client_lines if line.startswith("HISTORY")]


def say(client: LineClient, texts: list[str]) -> None:
    """Lobby messages, each applied (its echo back) before the next."""
    for text in texts:
        client.send(f"MSG {text}")
        client.expect("MSG")


def test_retain_days_prunes_at_start_and_while_running(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(1, "--retain-days", "2")
    alice = c.user(c.nodes[0], "alice")
    say(alice, ["new 0", "new 1"])
    deadline = time.monotonic() + 2 * CALM_TIMEOUT
    while ":1" not in c.redis.command("EXISTS", "chat:snapshot"):
        assert time.monotonic() < deadline, "no snapshot was written"
        time.sleep(0.1)
    c.nodes[0].stop()
    # While the cluster was down, older messages fell past the retention
    # (here: written dated ten days ago, as if said then).
    now = time.time()
    for i in range(3):
        said(c.redis, now - 10 * 86400 + i, i, "old", f"old {i}")
    assert len(kept(c.redis)) == 5
    # A starting node forgets what is past the retention before it shows anything.
    for _ in range(2):
        c.node("--retain-days", "2")
    bob = c.user(c.nodes[1], "bob")
    assert shown(bob.lines) == ["alice new 0", "alice new 1"]
    assert kept(c.redis) == ["alice new 0", "alice new 1"]
    # While the nodes run, a message falls past the retention (here: one
    # written dated three days ago); the next heartbeat of either node
    # removes it.  A message just said stays.
    said(c.redis, now - 3 * 86400, 7, "older", "expired meanwhile")
    say(bob, ["fresh"])
    deadline = time.monotonic() + 2 * CALM_TIMEOUT / 6 + 5
    while "older expired meanwhile" in kept(c.redis):
        assert time.monotonic() < deadline, "the expired message was not pruned"
        time.sleep(0.1)
    assert kept(c.redis) == ["alice new 0", "alice new 1", "bob fresh"]


def test_a_node_restarted_with_a_larger_history_shows_more(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(2, "--history", "3")
    alice = c.user(c.nodes[0], "alice")
    say(alice, [f"m{i}" for i in range(8)])
    said_all = [f"alice m{i}" for i in range(8)]
    assert shown(c.user(c.nodes[1], "bob").lines) == said_all[-3:]
    # One node restarted with a larger --history while the other runs on.
    c.nodes[1].stop()
    bigger = c.node("--history", "20")
    assert shown(c.user(bigger, "carol").lines) == said_all
    # The whole cluster restarted: the history is Redis's, not the nodes'.
    c.nodes[0].stop()
    bigger.stop()
    again = c.node("--history", "6")
    assert shown(c.user(again, "dave").lines) == said_all[-6:]


def test_retain_messages_bounds_the_history(cluster: Callable[..., Cluster]) -> None:
    """As one server's database: at most --retain-messages, the newest."""
    c = cluster(2, "--retain-messages", "4", "--history", "50")
    alice = c.user(c.nodes[0], "alice")
    say(alice, [f"m{i}" for i in range(7)])
    deadline = time.monotonic() + 2 * CALM_TIMEOUT / 6 + 5
    while len(kept(c.redis)) > 4:
        assert time.monotonic() < deadline, kept(c.redis)
        time.sleep(0.1)
    assert kept(c.redis) == [f"alice m{i}" for i in range(3, 7)]
    # A node that starts now shows what is kept.
    late = c.node("--history", "50")
    assert shown(c.user(late, "bob").lines) == [f"alice m{i}" for i in range(3, 7)]


def test_a_line_said_again_is_kept_again(cluster: Callable[..., Cluster]) -> None:
    """The same nick and text twice are two messages in Redis's history (a
    sorted set holds a member once: the node writes each message's time
    into it), as in one server's database."""
    c = cluster(1)
    alice = c.user(c.nodes[0], "alice")
    say(alice, ["same", "same", "other", "same"])
    deadline = time.monotonic() + 5
    while len(kept(c.redis)) < 4:
        assert time.monotonic() < deadline, kept(c.redis)
        time.sleep(0.05)
    assert kept(c.redis) == ["alice same", "alice same", "alice other", "alice same"]

