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
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred, ensureDeferred, succeed

from tests import test_cluster_e2e
from tests.redisproc import Connection, RedisReplyError, RedisServer
from tests.serverproc import LineClient
from tests.test_cluster_e2e import CALM_TIMEOUT, Cluster
from tests.test_cluster_outage import redis_log
from twisted_chat.server.cluster.redisconfig import Retention
from twisted_chat.server.cluster.redishistory import (
    HISTORY_ADD,
    HISTORY_OVERHEAD,
    HISTORY_SIZE,
    PRUNE_BATCH,
    PRUNE_BATCH_BYTES,
    PRUNE_HISTORY,
    history_row,
    history_write,
)
from twisted_chat.server.cluster.redislog import SCRIPTS, RedisLog
from twisted_chat.server.history import Entry

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
    """A lobby message in the cluster's history as its sender's node writes
    it (L{HISTORY_ADD}: counted at once where the count is kept)."""
    ms, member = history_row(f"{int(when * 1000)}-{seq}", nick, text)
    assert write(redis, (ms, member)) == 1
    return member


def write(redis: RedisServer, *rows: tuple[int, str]) -> int:
    """History rows (score, member) written as a node writes them: its
    command (L{history_write}), its script loaded as it loads it."""
    redis.call("SCRIPT", "LOAD", HISTORY_ADD)
    added = redis.call(*history_write([x for row in rows for x in row]))
    assert isinstance(added, int), added
    return added


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
    # A node that starts now (with the cluster's retention) shows what is kept.
    late = c.node("--retain-messages", "4", "--history", "50")
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
    node of an earlier version (JSON, written without counting: the count
    starts again) is counted and read alike."""
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
    # A new --retain-bytes: made the cluster's (docs/cluster.md, "Options", --set-retention).
    c.node("--retain-bytes", str(bound), "--history", "100", "--set-retention")
    newest = [f"old {i:02d}" for i in range(19, 30)] + ["alice now"]
    assert [" ".join(line.split()[:2]) for line in kept(c.redis)] == newest
    size = dict(zip(*[iter(c.redis.call("HGETALL", HISTORY_SIZE))] * 2, strict=True))
    assert size == {"bytes": str(sum(costs[-12:])), "members": "12", "upto": "+inf"}
    bob = c.user(c.nodes[1], "bob")
    assert [" ".join(line.split()[:2]) for line in shown(bob.lines)] == newest
    # Written while it runs (counted as it is written): the next heartbeat
    # makes room for it.
    said_now(c.redis, hour_ago + 100, 0, "new", "n " + "y" * 999)
    deadline = time.monotonic() + 2 * CALM_TIMEOUT / 6 + 5
    while kept(c.redis)[0].startswith("old 19"):
        assert time.monotonic() < deadline, kept(c.redis)
        time.sleep(0.1)
    assert [" ".join(line.split()[:2]) for line in kept(c.redis)] == [
        *newest[1:11], "new n", "alice now"]


# -- the pruning script alone, on a real Redis ---------------------------------


def prune(redis: RedisServer, cutoff: str = "", most: int = 0, most_bytes: int = 0,
          batch: int = PRUNE_BATCH) -> list[int]:
    reply: Any = redis.call("EVAL", PRUNE_HISTORY, 2, HISTORY, HISTORY_SIZE, cutoff, most,
                            most_bytes, batch, PRUNE_BATCH_BYTES, HISTORY_OVERHEAD)
    assert isinstance(reply, list), reply
    return reply


def size(redis: RedisServer) -> tuple[int, int, str | None]:
    """The count: its bytes, its members, and the score it is done up to."""
    reply = redis.call("HMGET", HISTORY_SIZE, "bytes", "members", "upto")
    return int(reply[0] or 0), int(reply[1] or 0), reply[2]


def cost(member: str) -> int:
    return len(member.encode()) + HISTORY_OVERHEAD


def row(when: float, seq: int, nick: str, text: str) -> tuple[int, str]:
    return history_row(f"{int(when * 1000)}-{seq}", nick, text)


def test_prune_counts_as_written_and_keeps_the_newest_bytes(redis: RedisServer) -> None:
    start = time.time() - 3600
    rows = [row(start + i, i % 3, "nick", "t" * (10 * i)) for i in range(40)]
    assert write(redis, *rows) == 40
    members = [m for _, m in rows]
    costs = [cost(m) for m in members]
    # No count yet: the writes do not start one.
    assert not redis.call("EXISTS", HISTORY_SIZE)
    # The first run with a byte bound counts them; nothing removed under it.
    assert prune(redis, most_bytes=sum(costs)) == [0, sum(costs), 0, 0]
    assert size(redis) == (sum(costs), 40, "+inf")
    # Over it: the oldest go, until the rest fits.
    bound = sum(costs[-25:]) + costs[-26] - 1
    assert prune(redis, most_bytes=bound) == [15, sum(costs[-25:]), 0, 0]
    assert redis.call("ZRANGE", HISTORY, 0, -1) == members[-25:]
    # A message written now is counted as it is written, at once; one
    # written twice (a write sent again) once.
    recent = said_now(redis, time.time(), 0, "nick", "recent")
    assert write(redis, *rows[-3:]) == 0
    assert size(redis) == (sum(costs[-25:]) + cost(recent), 26, "+inf")
    # Removed by count and by time: subtracted.
    assert prune(redis, most=20, most_bytes=10**9)[0] == 6
    assert size(redis) == (sum(costs[-19:]) + cost(recent), 20, "+inf")
    cutoff = int((start + 30) * 1000)
    assert prune(redis, cutoff=str(cutoff), most_bytes=10**9)[0] == 9
    assert size(redis) == (sum(costs[-10:]) + cost(recent), 11, "+inf")
    # One removed for time and written again (a node's snapshot writing
    # its last lines): counted again, no count from the start.
    assert write(redis, rows[29]) == 1
    assert size(redis) == (sum(costs[-11:]) + cost(recent), 12, "+inf")


def test_prune_counts_again_what_was_written_behind_its_back(redis: RedisServer) -> None:
    """A member written or removed otherwise than by the scripts (by hand,
    by a node of an earlier version): the count starts again from the
    oldest, in runs of at most the batch, and is exact again; meanwhile the
    writes count those below where it got to, and it those above."""
    start = time.time() - 3600
    rows = [row(start + i, 0, "nick", "t" * 50) for i in range(30)]
    write(redis, *rows)
    each = cost(rows[0][1])
    assert prune(redis, most_bytes=10**9) == [0, 30 * each, 0, 0]
    late = row(start + 0.5, 0, "late", "t" * 50)  # as long as the others
    assert redis.call("ZADD", HISTORY, *late) == 1
    redis.call("ZREM", HISTORY, rows[3][1], rows[4][1])
    assert prune(redis, most_bytes=10**9, batch=10) == [0, 10 * each, 0, 1]
    upto = size(redis)[2]
    assert upto == str(rows[10][0])  # the tenth there, late counted
    # Written while the count is under way: below it, counted by the write;
    # above it, by the count.
    write(redis, row(start + 1.5, 0, "belo", "t" * 50), row(start + 40, 0, "abov", "t" * 50))
    assert size(redis)[:2] == (11 * each, 11)
    runs = [prune(redis, most_bytes=10**9, batch=10) for _ in range(3)]
    assert [run[3] for run in runs] == [1, 1, 0]
    assert size(redis) == (31 * each, 31, "+inf")
    assert redis.call("ZCARD", HISTORY) == 31


def test_prune_takes_up_a_count_an_earlier_version_left(redis: RedisServer) -> None:
    """The previous version counted up to a score ('upto') at heartbeats;
    its count is taken up where it stopped."""
    start = time.time() - 3600
    rows = [row(start + i, 0, "nick", "t" * 50) for i in range(20)]
    assert redis.call("ZADD", HISTORY, *[x for r in rows for x in r]) == 20
    each = cost(rows[0][1])
    redis.call("HSET", HISTORY_SIZE, "bytes", 12 * each, "members", 12, "upto", rows[11][0])
    assert prune(redis, most_bytes=15 * each) == [5, 15 * each, 0, 0]
    assert redis.call("ZRANGE", HISTORY, 0, -1) == [m for _, m in rows[5:]]
    assert size(redis) == (15 * each, 15, "+inf")


def test_prune_reads_at_most_a_batch_a_run(redis: RedisServer) -> None:
    """A run reads (counts, removes) at most the batch's members; the runs
    after it go on where it stopped.  Without a byte bound nothing is
    counted (no count is started) and nothing read to be removed."""
    start = time.time() - 3600
    rows = [row(start + i, 0, "nick", "t" * 100) for i in range(25)]
    write(redis, *rows)
    runs = [prune(redis, most=5, batch=10) for _ in range(3)]
    assert [run[::2] for run in runs] == [[10, 1], [10, 0], [0, 0]]
    assert redis.call("ZRANGE", HISTORY, 0, -1) == [m for _, m in rows[-5:]]
    assert not redis.call("EXISTS", HISTORY_SIZE)
    # With one: the count and the removal share a run's reads, the removal
    # first (what was counted over the bound goes while the count goes on).
    more = [row(start + 100 + i, 0, "nick", "t" * 100) for i in range(25)]
    write(redis, *more)
    each = cost(rows[0][1])
    runs = [prune(redis, most_bytes=10 * each, batch=10)]
    while runs[-1][2] or runs[-1][3]:
        assert len(runs) < 10
        runs.append(prune(redis, most_bytes=10 * each, batch=10))
    assert runs == [[0, 10 * each, 0, 1], [0, 20 * each, 1, 1], [10, 10 * each, 0, 1],
                    [0, 20 * each, 1, 1], [10, 10 * each, 0, 1], [0, 10 * each, 0, 0]]
    assert size(redis) == (10 * each, 10, "+inf")
    assert redis.call("ZRANGE", HISTORY, 0, -1) == [m for _, m in more[-10:]]


def test_without_a_byte_bound_a_count_there_is_kept_not_taken_further(
        redis: RedisServer) -> None:
    """A node without --retain-bytes (another has one) subtracts what it
    removes from a count there, and does not count on."""
    start = time.time() - 3600
    rows = [row(start + i, 0, "nick", "t" * 100) for i in range(20)]
    write(redis, *rows)
    each = cost(rows[0][1])
    assert prune(redis, most_bytes=10**9, batch=5) == [0, 5 * each, 0, 1]
    assert prune(redis, most=18) == [2, 3 * each, 0, 0]
    assert size(redis) == (3 * each, 3, str(rows[4][0]))
    assert prune(redis, most=15) == [3, 0, 0, 0]
    assert size(redis) == (0, 0, str(rows[4][0]))


def test_prune_runs_when_redis_is_out_of_memory(redis: RedisServer) -> None:
    """Under noeviction past maxmemory, Redis refuses the history's writes
    (kept by the node, written again later); the pruning still runs, and
    counts, and frees memory."""
    start = time.time() - 3600
    rows = [row(start + i, 0, "nick", "t" * 100) for i in range(20)]
    write(redis, *rows)
    each = cost(rows[0][1])
    assert redis.call("CONFIG", "SET", "maxmemory", "1") == "OK"
    try:
        refused = redis.call("EVAL", HISTORY_ADD, 2, HISTORY, HISTORY_SIZE, HISTORY_OVERHEAD,
                             *row(start + 50, 0, "nick", "late"))
        assert isinstance(refused, RedisReplyError) and "OOM" in str(refused)
        assert prune(redis, most_bytes=5 * each) == [15, 5 * each, 0, 0]
        # A count started again (its key gone) writes nothing else: it
        # still runs (unflagged, its first write would be refused).
        redis.call("DEL", HISTORY_SIZE)
        assert prune(redis, most_bytes=5 * each) == [0, 5 * each, 0, 0]
    finally:
        redis.call("CONFIG", "SET", "maxmemory", "0")
    assert size(redis) == (5 * each, 5, "+inf")


# -- the bounds at a sustained rate: nodes' own writes and pruning -------------------


class Pipelined:
    """A node's command connection on a real Redis, as L{RedisLog} uses it
    (C{execute_command} gives a L{Deferred}): the writes wait, and go
    C{between} at a time before each pruning run (as other nodes' writes
    come between one node's runs), the rest at L{flush}.  The node's clock
    is moved on by the time each run takes (its pruning budget is real)."""

    def __init__(self, conn: Connection, clocks: list[Any], between: int) -> None:
        self.conn = conn
        self.clocks = clocks
        self.between = between
        self.waiting: list[tuple[tuple[Any, ...], Deferred[Any]]] = []
        self.runs = 0

    def execute_command(self, *args: Any) -> Deferred[Any]:
        if args[0] != "EVAL":
            d: Deferred[Any] = Deferred()
            self.waiting.append((args, d))
            return d
        self.flush(self.between)
        began = time.perf_counter()
        reply = self.conn.call(*args)
        for clock in self.clocks:
            clock.advance(time.perf_counter() - began)
        self.runs += 1
        assert isinstance(reply, list), reply
        return succeed(reply)

    def flush(self, most: int | None = None) -> None:
        most = len(self.waiting) if most is None else most
        sent, self.waiting = self.waiting[:most], self.waiting[most:]
        for (_, d), reply in zip(sent, self.conn.pipeline([args for args, _ in sent]),
                                 strict=True):
            assert not isinstance(reply, RedisReplyError), reply
            d.callback(reply)


def writing_node(cmd: Pipelined, node: str, most: int, most_bytes: int) -> RedisLog:
    log, state = redis_log()
    state.node = node
    log.pruning.retention = Retention.of(None, most, most_bytes)
    log._cmd, state.available = cmd, True
    cmd.clocks.append(log.reactor)
    return log


def says(log: RedisLog, eid: str, nick: str, text: str) -> None:
    """A lobby line of this node's user, applied: its node writes it."""
    log.state.replica.current = (eid, log.state.node)
    log.append_entry(Entry(0.0, nick, text))


@pytest.mark.parametrize("most, most_bytes", [(5000, 0), (0, 1 << 20), (5000, 1 << 20)])
def test_the_bounds_hold_at_a_sustained_rate_far_above_what_a_heartbeat_read(
        redis: RedisServer, most: int, most_bytes: int) -> None:
    """rev10-fix2 F1: two nodes write 12,000 lobby lines a heartbeat (4,800
    a second at the default --node-timeout), the writes coming between one
    node's pruning runs, and prune at each heartbeat; after each node's
    pruning the history holds at most --retain-messages and --retain-bytes
    (as counted: exactly what is there).  Before, a node's pruning read at
    most 4,000 members a heartbeat, counting each new one once and removing
    it once: the history grew by thousands a heartbeat, and past the rate
    the count kept up with nothing was removed for bytes."""
    conn = redis.connect()
    for script in SCRIPTS:
        conn.call("SCRIPT", "LOAD", script)
    cmd = Pipelined(conn, [], between=3000)
    nodes = [writing_node(cmd, f"n{i}", most, most_bytes) for i in range(2)]
    per_beat, text = 12_000, "x" * 100
    # Dated ten minutes ago, a line every 0.2 ms (nothing past --retain-days).
    ms = int(time.time() * 1000) - 600_000
    for beat in range(4):
        for i in range(per_beat):
            ms += (i % 5 == 0)
            says(nodes[i % 2], f"{ms}-{i % 5}", f"nick{i % 7}", text)
        for log in nodes:
            failed: list[Any] = []
            ensureDeferred(log.pruning.prune(cmd, time.time())).addErrback(failed.append)
            assert not failed, failed[0].getTraceback()
            members = conn.call("ZRANGE", HISTORY, 0, -1)
            held = sum(cost(m) for m in members)
            if most:
                assert len(members) <= most, (beat, log.state.node, len(members))
            if most_bytes:
                assert held <= most_bytes, (beat, log.state.node, held)
                assert size(redis) == (held, len(members), "+inf")
        if not most_bytes:
            assert not conn.call("EXISTS", HISTORY_SIZE)  # nothing counted
        cmd.flush()
    assert cmd.runs < 4 * 2 * 20
    assert not cmd.waiting and all(not log._unacked for log in nodes)
    conn.close()
