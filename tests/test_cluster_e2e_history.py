"""
Cluster mode's one history, end to end (a private redis-server and real
C{twistd -n chat --redis ...} nodes): C{--retain-days}, C{--retain-messages}
and C{--retain-bytes} pruning by every node (the pruning script also alone
on a real Redis), and C{--history} as each node's own window on the kept
messages.

Time is controlled through the data: messages written into Redis dated days
before now, as if said then, against a retention of days; nothing waits for
a day to pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import test_cluster_e2e
from tests.redisproc import RedisServer
from tests.serverproc import LineClient
from tests.test_cluster_e2e import CALM_TIMEOUT, Cluster
from twisted_chat.server.cluster.redislog import (
    HISTORY_OVERHEAD,
    HISTORY_SIZE,
    PRUNE_BATCH,
    PRUNE_BATCH_BYTES,
    PRUNE_HISTORY,
    _history_row,
)

pytestmark = test_cluster_e2e.pytestmark
cluster = test_cluster_e2e.cluster  # the fixture: a private redis-server and nodes

HISTORY = "chat:history"


def said(redis: RedisServer, when: float, seq: int, nick: str, text: str) -> None:
    """A lobby message in the cluster's history as a node of an earlier
    version wrote it (in JSON): still read."""
    ms = int(when * 1000)
    member = f"{seq:08d} " + json.dumps([nick, text, ms], ensure_ascii=False)
    assert redis.call("ZADD", HISTORY, ms, member) == 1


def said_now(redis: RedisServer, when: float, seq: int, nick: str, text: str) -> str:
    """A lobby message in the cluster's history as its sender's node writes it."""
    ms, member = _history_row(f"{int(when * 1000)}-{seq}", nick, text)
    assert redis.call("ZADD", HISTORY, ms, member) == 1
    return member


def kept(redis: RedisServer) -> list[str]:
    """The history's messages, oldest first, as "nick text"."""
    members = redis.call("ZRANGE", HISTORY, "0", "-1")
    return [" ".join(json.loads(m.split(" ", 1)[1])[:2]) if m.split(" ", 2)[1][:1] == "["
            else m.split(" ", 2)[2] for m in members]


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


def test_a_node_writes_the_text_as_said(cluster: Callable[..., Cluster]) -> None:
    """No escaping makes a line longer in Redis than it was said (JSON made a
    quote or a backslash two bytes, the history's memory twice the text)."""
    c = cluster(1)
    alice = c.user(c.nodes[0], "alice")
    text = '"quoted" \\back\\ \ttab é'
    say(alice, [text])
    deadline = time.monotonic() + 5
    while not kept(c.redis):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [member] = c.redis.call("ZRANGE", HISTORY, "0", "-1")
    _, ms, nick, rest = member.split(" ", 3)
    assert (nick, rest) == ("alice", text)
    assert c.redis.call("ZSCORE", HISTORY, member) == ms
    assert shown(c.user(c.nodes[0], "bob").lines) == [f"alice {text}"]


def test_retain_bytes_keeps_the_newest_that_fit(cluster: Callable[..., Cluster]) -> None:
    """A node prunes the history to --retain-bytes at start (before it shows
    it) and at each heartbeat, the oldest first; the history written by a
    node of an earlier version (JSON) is counted and read alike."""
    c = cluster(1)
    say(c.user(c.nodes[0], "alice"), ["now"])
    deadline = time.monotonic() + 2 * CALM_TIMEOUT
    while ":1" not in c.redis.command("EXISTS", "chat:snapshot"):
        assert time.monotonic() < deadline, "no snapshot was written"
        time.sleep(0.1)
    c.nodes[0].stop()
    # Said an hour before (as if), by nodes of this version and the one before.
    hour_ago = time.time() - 3600
    for i in range(30):
        if i % 2:
            said(c.redis, hour_ago + i, 0, "old", f"{i:02d} " + "x" * 997)
        else:
            said_now(c.redis, hour_ago + i, 0, "old", f"{i:02d} " + "x" * 997)
    members = c.redis.call("ZRANGE", HISTORY, "0", "-1")
    assert len(members) == 31
    costs = [len(m.encode()) + HISTORY_OVERHEAD for m in members]
    bound = sum(costs[-12:]) + 10  # the newest 12 fit, not 13
    c.node("--retain-bytes", str(bound), "--history", "100")
    newest = [f"old {i:02d}" for i in range(19, 30)] + ["alice now"]
    assert [" ".join(line.split()[:2]) for line in kept(c.redis)] == newest
    size = dict(zip(*[iter(c.redis.call("HGETALL", HISTORY_SIZE))] * 2, strict=True))
    # (Counted once half a minute old: the line said now is not yet.)
    assert int(size["bytes"]) == sum(costs[-12:-1]) and int(size["members"]) == 11
    bob = c.user(c.nodes[1], "bob")
    assert [" ".join(line.split()[:2]) for line in shown(bob.lines)] == newest
    # Written while it runs (dated: counted at once): the next heartbeat
    # makes room for it.
    said_now(c.redis, hour_ago + 100, 0, "new", "n " + "y" * 999)
    deadline = time.monotonic() + 2 * CALM_TIMEOUT / 6 + 5
    while kept(c.redis)[0].startswith("old 19"):
        assert time.monotonic() < deadline, kept(c.redis)
        time.sleep(0.1)
    assert [" ".join(line.split()[:2]) for line in kept(c.redis)] == newest[1:11] + [
        "new n", "alice now"]


# -- the pruning script alone, on a real Redis ---------------------------------


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, persist=False).start()
    yield server
    server.stop()


def prune(redis: RedisServer, cutoff: str = "", most: int = 0, most_bytes: int = 0,
          batch: int = PRUNE_BATCH, settle: int = 30_000) -> list[int]:
    reply: Any = redis.call("EVAL", PRUNE_HISTORY, 2, HISTORY, HISTORY_SIZE, cutoff, most,
                            most_bytes, batch, PRUNE_BATCH_BYTES, HISTORY_OVERHEAD, settle)
    assert isinstance(reply, list), reply
    return reply


def size(redis: RedisServer) -> tuple[int, int]:
    reply = redis.call("HMGET", HISTORY_SIZE, "bytes", "members")
    return int(reply[0] or 0), int(reply[1] or 0)


def test_prune_counts_and_keeps_the_newest_bytes(redis: RedisServer) -> None:
    start = time.time() - 3600
    members = [said_now(redis, start + i, i % 3, "nick", "t" * (10 * i)) for i in range(40)]
    cost = [len(m.encode()) + HISTORY_OVERHEAD for m in members]
    # Counted, nothing removed under the bound.
    assert prune(redis, most_bytes=sum(cost)) == [0, sum(cost), 0, 0]
    assert size(redis) == (sum(cost), 40)
    # Over it: the oldest go, until the rest fits.
    bound = sum(cost[-25:]) + cost[-26] - 1
    assert prune(redis, most_bytes=bound) == [15, sum(cost[-25:]), 0, 0]
    assert redis.call("ZRANGE", HISTORY, 0, -1) == members[-25:]
    # Members written since are counted when old enough, not before.
    recent = said_now(redis, time.time() - 1, 0, "nick", "recent")
    assert prune(redis, most_bytes=bound)[1] == sum(cost[-25:])
    assert prune(redis, most_bytes=bound, settle=0)[1] == (
        sum(cost[-25:]) + len(recent.encode()) + HISTORY_OVERHEAD)
    # Removed by count and by time: subtracted.
    assert prune(redis, most=20, settle=0)[0] == 6
    assert size(redis) == (sum(cost[-19:]) + len(recent.encode()) + HISTORY_OVERHEAD, 20)
    cutoff = int((start + 30) * 1000)
    assert prune(redis, cutoff=str(cutoff), settle=0)[0] == 9
    assert size(redis) == (sum(cost[-10:]) + len(recent.encode()) + HISTORY_OVERHEAD, 11)


def test_prune_counts_again_what_was_written_behind_its_back(redis: RedisServer) -> None:
    """A write older than what was counted (a refused one, taken later), or
    a removal by something else (an older node's pruning): the count starts
    again from the oldest, in runs of at most the batch, and is exact again."""
    start = time.time() - 3600
    members = [said_now(redis, start + i, 0, "nick", "t" * 50) for i in range(30)]
    cost = len(members[0].encode()) + HISTORY_OVERHEAD
    assert prune(redis, most_bytes=10**9) == [0, 30 * cost, 0, 0]
    late = said_now(redis, start + 0.5, 0, "late", "t" * 50)  # as long as the others
    redis.call("ZREM", HISTORY, members[3], members[4])
    assert prune(redis, most_bytes=10**9, batch=10) == [0, 0, 0, 1]  # it starts again
    runs = [prune(redis, most_bytes=10**9, batch=10) for _ in range(3)]
    assert [run[3] for run in runs] == [1, 1, 0]
    assert size(redis) == (29 * cost, 29)
    assert late in redis.call("ZRANGE", HISTORY, 0, -1)


def test_prune_reads_at_most_a_batch_a_run(redis: RedisServer) -> None:
    """A run reads (counts, removes) at most the batch's members; the runs
    after it go on where it stopped."""
    start = time.time() - 3600
    members = [said_now(redis, start + i, 0, "nick", "t" * 100) for i in range(25)]
    runs = [prune(redis, most=5, batch=10) for _ in range(3)]
    assert [run[::2] for run in runs] == [[10, 1], [10, 0], [0, 0]]
    runs += [prune(redis, most=5, batch=10) for _ in range(3)]
    assert runs[-1] == [0, 5 * (len(members[0]) + HISTORY_OVERHEAD), 0, 0]
    assert redis.call("ZRANGE", HISTORY, 0, -1) == members[-5:]
    assert size(redis) == (5 * (len(members[0]) + HISTORY_OVERHEAD), 5)
