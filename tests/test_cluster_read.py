"""
How a cluster node reads the cluster's events (twisted_chat.server.cluster.
redislog), deterministically: nodes (L{RedisLog} on a L{ClusterState}) on one
Redis kept in memory (L{MemoryRedis}: the stream, the channel, the keys; the
scripts run as Redis runs them, one at a time), and a L{Clock}.

- A lobby message costs Redis the same commands whatever the number of nodes:
  one append script and the history's write; the nodes hear it on the channel.
- Every node applies every event once, in the stream's order, also when it
  missed one on the channel, when the channel brings events while it reads
  the stream, and after a reconnection.
- A node whose next events the stream no longer holds (trimmed past its last
  one while it was cut off) goes on as a new node from the snapshot: its
  users are told BYE, its old id is declared dead, its replica and history
  are the cluster's again.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, deque
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.test_cluster_unit import Untold
from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.cluster.redisconfig import CLAIM_RETENTION, CONFIG, FIELDS
from twisted_chat.server.cluster.redisconn import RedisTarget, parse_url
from twisted_chat.server.cluster.redishistory import HISTORY_ADD_OOM_SHA, HISTORY_ADD_SHA
from twisted_chat.server.cluster.redislog import SCRIPTS, RedisLog
from twisted_chat.server.cluster.redisread import READ_COUNT
from twisted_chat.server.cluster.redisstream import (
    APPEND_SHA,
    CHANNEL,
    DROP_LOST_SNAPSHOT,
    SAVE_SNAPSHOT_SHA,
)
from twisted_chat.server.cluster.streamids import id_key
from twisted_chat.server.history import History
from twisted_chat.server.hub import HubSettings, User

# -- one Redis, in memory -----------------------------------------------------------


#: RedisLog's bounds, none of them: these tests fill neither the history nor the stream.
_NO_BOUNDS = dict.fromkeys(("retain_days", "retain_messages", "retain_bytes", "stream_bytes"))


def unbounded_log(target: RedisTarget, state: ClusterState, reactor: Any,
                  node_timeout: float = 15.0, **options: Any) -> RedisLog:
    """A node's log with no bound on the history or the stream but those
    C{options} give."""
    return RedisLog(target, state, reactor, node_timeout, **{**_NO_BOUNDS, **options})


class MemoryRedis:
    """
    The commands a node sends, as Redis answers them (for one database, one
    stream, one channel).  Replies come at once; what is published is
    queued per subscriber and handed over at L{pump} (another connection's
    bytes arrive in a later turn).  C{hold_reads}: the stream reads
    (C{XRANGE}) are answered (as of when they ran) only at L{release};
    C{hold_catch_ups}: only the catch-up reads (C{COUNT} L{READ_COUNT}).
    C{refuse_appends}: the append script is refused (C{MISCONF}), as Redis
    refuses writes after a failed background save.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.stream: list[tuple[str, str, str]] = []  # (id, event, the id it follows)
        self.last = (0, 0)
        self.clock_behind_ms = 0  # Redis's clock behind the test's (set back)
        self.keys: dict[str, str] = {}
        self.sets: dict[str, set[str]] = {}
        self.deleted: list[str] = []  # the snapshots deleted (their ids), in order
        self.history: dict[str, int] = {}  # member: score
        self.config: dict[str, str] = {}  # chat:config (redisconfig)
        self.subscribers: list[FakeConnection] = []
        self.calls: Counter[str] = Counter()
        self.hold_reads = False
        self.hold_catch_ups = False  # the same, for the catch-up reads only
        self.refuse_appends = False
        self.held: list[tuple[Deferred[Any], Any]] = []
        self.scripts = {APPEND_SHA, SAVE_SNAPSHOT_SHA, HISTORY_ADD_SHA, HISTORY_ADD_OOM_SHA}


    def flushdb(self) -> None:
        """C{FLUSHDB} (or a restart without its data): everything goes, the
        epoch included, and ids start again from nothing."""
        self.stream.clear()
        self.keys.clear()
        self.history.clear()
        self.sets.clear()
        self.config.clear()
        self.last = (0, 0)

    def connection(self, subscriber: bool = False) -> FakeConnection:
        return FakeConnection(self, subscriber)

    # -- the data ---------------------------------------------------------------

    def trim(self, minid: str) -> None:
        """XTRIM MINID: every entry below C{minid} goes."""
        self.stream = [x for x in self.stream if id_key(x[0]) >= id_key(minid)]

    def publish(self, message: str) -> None:
        for conn in self.subscribers:
            if not conn.closed:
                conn.inbox.append(message)

    def pump(self) -> None:
        """Hand every subscriber what was published for it, in order."""
        while any(c.inbox and not c.closed for c in self.subscribers):
            for conn in list(self.subscribers):
                while conn.inbox and not conn.closed:
                    conn.heard(conn.inbox.popleft())

    def release(self) -> None:
        held, self.held = self.held, []
        for d, reply in held:
            d.callback(reply)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(e) for _, e, _ in self.stream]

    # -- the commands ---------------------------------------------------------------

    def run(self, conn: FakeConnection, args: tuple[Any, ...]) -> Deferred[Any]:
        name = str(args[0]).upper()
        if name == "EVALSHA":
            name = {APPEND_SHA: "append", SAVE_SNAPSHOT_SHA: "save-snapshot",
                    HISTORY_ADD_SHA: "history-add",
                    HISTORY_ADD_OOM_SHA: "history-add"}[args[1]]
        elif name == "EVAL":
            name = {DROP_LOST_SNAPSHOT: "drop-lost-snapshot",
                    CLAIM_RETENTION: "claim-retention"}[args[1]]
        self.calls[name] += 1
        if conn.subscriber:
            assert name in ("SUBSCRIBE", "PING"), f"{name} on a subscribed connection"
            if name == "SUBSCRIBE":
                self.subscribers.append(conn)
                return succeed(["subscribe", CHANNEL, 1])
            return succeed(["pong", ""])
        if args[0] == "EVALSHA" and args[1] not in self.scripts:
            return fail(txredisapi.ResponseError("NOSCRIPT No matching script"))
        if name == "append" and self.refuse_appends:
            return fail(txredisapi.ResponseError("MISCONF Redis is configured to save RDB "
                                                 "snapshots, but it is unable to persist"))
        reply = getattr(self, "_" + name.lower().replace("-", "_"))(*args[1:])
        if isinstance(reply, Deferred):
            return reply
        if name == "XRANGE" and (self.hold_reads
                                 or (self.hold_catch_ups and args[-1] == READ_COUNT)):
            d: Deferred[Any] = Deferred()
            self.held.append((d, reply))
            return d
        return succeed(reply)

    def _append(self, sha: str, nkeys: int, key: str, channel: str, bound: int,
                event: str) -> Any:
        if bound and sum(len(e) for _, e, _ in self.stream) > bound:
            # MEMORY USAGE: here the events' bytes.  Answered in a later
            # turn (clock.advance(0)), as over a connection: a command's
            # refusal is not answered before the node has sent it.
            refused: Deferred[Any] = Deferred()
            error = txredisapi.ResponseError(f"FULL the event stream takes more than "
                                             f"--stream-bytes ({bound} bytes)")
            self.clock.callLater(0, refused.errback, error)
            return refused
        prev = self.stream[-1][0] if self.stream else "0-0"
        ms = max(int(self.clock.seconds() * 1000) - self.clock_behind_ms, self.last[0])
        seq = self.last[1] + 1 if ms == self.last[0] else 0
        self.last = (ms, seq)
        eid = f"{ms}-{seq}"
        self.stream.append((eid, event, prev))
        self.publish(f"{prev} {eid} {event}")
        return eid

    def _xrange(self, key: str, start: str, end: str, count_word: str = "COUNT",
                count: int = 1 << 30) -> Any:
        if not start.startswith("("):  # one entry, by its id
            assert end == start
            return [[eid, ["e", e, "p", p]] for eid, e, p in self.stream if eid == start]
        assert end == "+"
        after = [[eid, ["e", e, "p", p]] for eid, e, p in self.stream
                 if id_key(eid) > id_key(start[1:])]
        return after[:count]

    def _xrevrange(self, key: str, end: str, start: str, count_word: str, count: int) -> Any:
        assert (end, start) == ("+", "-")
        return [[eid, ["e", e, "p", p]] for eid, e, p in reversed(self.stream)][:count]

    def _type(self, key: str) -> str:
        if key == "chat:events" and self.stream:
            return "stream"
        if key == CONFIG and self.config:
            return "hash"
        if key in self.sets:
            return "set"
        return "string" if key in self.keys else "none"

    def _hmget(self, key: str, *fields: str) -> list[str | None]:
        assert key == CONFIG
        return [self.config.get(name) for name in fields]

    def _hget(self, key: str, field: str) -> str | None:
        assert key == CONFIG
        return self.config.get(field)

    def _hsetnx(self, key: str, field: str, value: str) -> int:
        assert key == CONFIG
        if field in self.config:
            return 0
        self.config[field] = value
        return 1

    def _claim_retention(self, script: str, nkeys: int, key: str, replace: str,
                         *pairs: str) -> list[str | None]:
        before = self._hmget(key, *FIELDS)
        for name, value in zip(pairs[::2], pairs[1::2], strict=True):
            if replace == "1" or name not in self.config:
                self.config[name] = value
        return before

    def _getrange(self, key: str, start: int, end: int) -> str:
        return self.keys.get(key, "")[start:end + 1]

    def _save_snapshot(self, sha: str, nkeys: int, key: str, text: str, eid: str) -> int:
        old = self.keys.get(key)
        if old is not None and id_key(json.loads(old)["id"]) >= id_key(eid):
            return 0
        self.keys[key] = text
        return 1

    def _drop_lost_snapshot(self, script: str, nkeys: int, key: str, stream: str,
                            end: str) -> int:
        """DROP_LOST_SNAPSHOT: the snapshot goes if it is as of an event
        after C{end} that the stream does not hold."""
        old = self.keys.get(key)
        if old is None:
            return 0
        sid = json.loads(old)["id"]
        if id_key(sid) <= id_key(end) or any(eid == sid for eid, _, _ in self.stream):
            return 0
        del self.keys[key]
        self.deleted.append(sid)
        return 1

    def _script(self, sub: str, script: str) -> str:
        sha = hashlib.sha1(script.encode()).hexdigest()
        self.scripts.add(sha)
        return sha

    def _set(self, key: str, value: str, *options: Any) -> str | None:
        if "NX" in options and key in self.keys:
            return None
        self.keys[key] = value
        return "OK"

    def _get(self, key: str) -> str | None:
        return self.keys.get(key)

    def _del(self, *keys: str) -> int:
        if "chat:snapshot" in keys and "chat:snapshot" in self.keys:
            self.deleted.append(json.loads(self.keys["chat:snapshot"])["id"])
        return sum(self.keys.pop(k, None) is not None for k in keys)

    def _mget(self, *keys: str) -> list[str | None]:
        return [self.keys.get(k) for k in keys]

    def _sadd(self, key: str, *members: str) -> int:
        known = self.sets.setdefault(key, set())
        added = set(members) - known
        known |= added
        return len(added)

    def _smembers(self, key: str) -> list[str]:
        return sorted(self.sets.get(key, ()))

    def _srem(self, key: str, *members: str) -> int:
        known = self.sets.get(key, set())
        gone = known & set(members)
        known -= gone
        return len(gone)

    def _xtrim(self, key: str, how: str, approx: str, minid: str) -> int:
        before = len(self.stream)
        self.trim(minid)
        return before - len(self.stream)

    def _history_add(self, sha: str, nkeys: int, key: str, size: str, extra: int,
                     *pairs: Any) -> int:
        """HISTORY_ADD: the members not there yet (the count is not kept here)."""
        added = 0
        for score, member in zip(pairs[::2], pairs[1::2], strict=True):
            added += member not in self.history
            self.history.setdefault(member, int(score))
        return added

    def _ping(self) -> str:
        return "PONG"

    def _zrevrangebyscore(self, key: str, top: int, bottom: str, *rest: Any) -> list[Any]:
        rows = sorted(((s, m) for m, s in self.history.items() if s <= int(top)), reverse=True)
        return [x for s, m in rows for x in (m, str(s))]


class FakeTransport:
    def __init__(self, conn: FakeConnection) -> None:
        self.conn = conn

    def abortConnection(self) -> None:
        self.conn.drop()

    loseConnection = abortConnection


class FakeConnection:
    def __init__(self, redis: MemoryRedis, subscriber: bool) -> None:
        self.transport = FakeTransport(self)
        self.redis = redis
        self.subscriber = subscriber
        self.closed = False
        self.inbox: deque[str] = deque()
        self._lost: list[Deferred[None]] = []

    def heard(self, message: str) -> None:
        pass

    @property
    def connected(self) -> bool:
        """As txredisapi's: false once the connection is lost."""
        return not self.closed

    def whenDisconnected(self) -> Deferred[None]:
        self._lost.append(Deferred())
        return self._lost[-1]

    def execute_command(self, *args: Any) -> Deferred[Any]:
        if self.closed:
            return fail(txredisapi.ConnectionError("Not connected"))
        return self.redis.run(self, args)

    def drop(self) -> None:
        if not self.closed:
            self.closed = True
            for d in self._lost:
                d.callback(None)


# -- nodes --------------------------------------------------------------------------


class Conn:
    """A user's connection on its own node: records what it is written;
    C{user} is its user as its node last told it (a connection's protocol
    holds it so: a rebuilt replica gives it a new L{User} object)."""

    closing = False

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.user: User | None = None

    def write(self, data: bytes) -> None:
        self.data.append(data)

    deliver = write

    def arrived(self) -> float:
        # Its line is handled as it comes: the node counts its wait from now
        # (the earlier of this and now).
        return math.inf


class Recorder:
    """The node's listener: what the hub tells it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.calls.append((name, args))

    def said(self) -> list[str]:
        return [args[0].text for name, args in self.calls if name == "lobby_message"]

    def departed(self) -> list[str]:
        return [args[1].nick for name, args in self.calls if name == "left"]


class Node:
    def __init__(self, redis: MemoryRedis, clock: Clock, name: str) -> None:
        self.redis = redis
        self.reachable = True
        self.listener = Recorder()
        self.state = ClusterState(name, self.listener, History(10), HubSettings(), clock,
                                  Told(self))
        self.log = unbounded_log(parse_url("redis://127.0.0.1/0"), self.state, clock)
        self.conns: list[FakeConnection] = []
        self.lost = 0
        self.reloaded = 0

        async def new_connection(reply_timeout: float, subscriber: bool = False) -> Any:
            if not self.reachable:
                raise ConnectionError("refused")
            self.conns.append(redis.connection(subscriber))
            return self.conns[-1]

        self.log._new_connection = new_connection  # type: ignore[method-assign]
        self.log.start()

    def user(self, nick: str) -> User:
        conn = Conn()
        d = self.state.register(nick, conn, "-")
        users: list[User] = []
        d.addCallback(users.append)
        self.redis.pump()
        conn.user = users[0]
        return users[0]

    def cut(self) -> None:
        self.reachable = False
        for conn in self.conns:
            if not conn.closed:
                conn.drop()

    def nicks(self) -> list[str]:
        return sorted(self.state.hub.online)


class Told(Untold):
    """What a L{Node} is told (L{NodeConnections}): its losses and reloads
    counted, its connections rebound."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def lost(self) -> None:
        self.node.lost += 1

    def reloaded(self) -> None:
        self.node.reloaded += 1

    def rebound(self, conn: Any, user: User) -> None:
        if isinstance(conn, Conn):
            conn.user = user


def now(user: User) -> User:
    """C{user} as its connection holds it now (see L{Conn})."""
    conn = user.conn
    return conn.user if isinstance(conn, Conn) and conn.user is not None else user


def cluster(n: int) -> tuple[MemoryRedis, Clock, list[Node]]:
    clock = Clock()
    clock.advance(1_700_000_000)
    redis = MemoryRedis(clock)
    nodes = [Node(redis, clock, f"n{i}") for i in range(n)]
    clock.advance(0)  # their first heartbeats (the next: in 2.5 s)
    redis.pump()
    return redis, clock, nodes


def say(node: Node, user: User, *texts: str) -> None:
    user = now(user)
    for text in texts:
        node.state.say(user, text)
        node.redis.clock.advance(0.001)
    node.redis.pump()


# -- the tests ------------------------------------------------------------------------


def test_a_lobby_message_costs_redis_the_same_commands_whatever_the_nodes() -> None:
    """One append script and the history's write per lobby message, with one
    node or eight: no node reads the stream while it keeps up (before, every
    node sent an XREAD per event)."""
    per_message = []
    for n in (1, 8):
        redis, _, nodes = cluster(n)
        ann = nodes[0].user("ann")
        before = Counter(redis.calls)
        say(nodes[0], ann, *[f"m{i}" for i in range(20)])
        for node in nodes:
            assert node.listener.said() == [f"m{i}" for i in range(20)]
        spent = Counter(redis.calls)
        spent.subtract(before)
        per_message.append({name: count / 20 for name, count in spent.items() if count})
    assert per_message[0] == per_message[1] == {"append": 1.0, "history-add": 1.0}


def test_a_node_that_missed_a_channel_message_reads_it_from_the_stream() -> None:
    """An event that does not follow the last one applied (the one between
    never reached this node) sends the node to the stream: it applies the
    missing one, then the rest, each once, in the stream's order."""
    redis, _, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    reader = next(c for c in n1.conns if c.subscriber)
    reads = redis.calls["XRANGE"]
    say(n0, ann, "one")
    n0.state.say(ann, "two")
    reader.inbox.clear()  # n1 never hears "two" on the channel
    say(n0, ann, "three", "four")
    assert n0.listener.said() == n1.listener.said() == ["one", "two", "three", "four"]
    assert redis.calls["XRANGE"] == reads + 1  # n1's, for "two"
    assert n1.state.replica.last_id == redis.stream[-1][0]


def test_a_message_on_the_channel_that_is_not_in_the_stream_is_dropped() -> None:
    """Someone else's message on the channel (it follows nothing the
    stream has): one read of the stream shows it is not there; it is
    dropped, not read for again and again, and nothing else is lost."""
    redis, _, (n0,) = cluster(1)
    ann = n0.user("ann")
    reads = redis.calls["XRANGE"]
    redis.publish('1-0 9999999999999-0 {"t":"say","n":"x","k":1,"u":"1-0","x":"forged"}')
    say(n0, ann, "real")
    assert redis.calls["XRANGE"] == reads + 1
    assert n0.listener.said() == ["real"]
    say(n0, ann, "still real")
    assert n0.listener.said() == ["real", "still real"]
    assert redis.calls["XRANGE"] == reads + 1


def test_what_the_channel_brings_while_the_stream_is_read_is_applied_after_it_once() -> None:
    """The stream read is in flight while the channel brings events, some of
    which the read returns too: each is applied once, in order."""
    redis, _, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    reader = next(c for c in n1.conns if c.subscriber)
    say(n0, ann, "one")
    n0.state.say(ann, "two")
    reader.inbox.clear()
    redis.hold_reads = True
    say(n0, ann, "three")  # n1 goes to the stream (it returns two, three)
    say(n0, ann, "four", "five")  # heard while the read is in flight
    assert n1.listener.said() == ["one"]
    redis.hold_reads = False
    redis.release()
    assert n1.listener.said() == ["one", "two", "three", "four", "five"]
    say(n0, ann, "six")
    assert n0.listener.said() == n1.listener.said()


def test_after_a_reconnection_a_node_reads_what_it_missed_then_the_channel() -> None:
    redis, clock, (n0, n1) = cluster(2)
    ann = n0.user("ann")
    n1.user("bob")
    n1.cut()
    say(n0, ann, "while n1 is away", "still away")
    n1.reachable = True
    clock.advance(1)  # its retry
    say(n0, ann, "back")
    redis.pump()
    assert n1.listener.said() == n0.listener.said() == [
        "while n1 is away", "still away", "back"]
    assert n1.nicks() == n0.nicks() == ["ann", "bob"]
    assert n1.lost == 0


def test_a_node_whose_next_events_were_trimmed_goes_on_as_a_new_node() -> None:
    """
    n1 is cut off; meanwhile bob leaves, carol arrives, ann talks, and the
    stream is trimmed up to a snapshot written after all that (the
    heartbeat's trim, once the node has been away long enough).  Back, n1
    cannot read what it missed: it tells its users BYE (its connections told lost), takes a
    new id, declares its old one dead (the others drop its users: its lease
    may never have lapsed), and goes on from the snapshot: the same users
    and history as the others, and it takes new users under its new id.
    """
    redis, clock, (n0, n1) = cluster(2)
    ann, bob = n0.user("ann"), n0.user("bob")
    n1.user("dora")
    say(n0, ann, "before")
    old = n1.state.node
    n1.cut()
    n0.state.leave(bob, "disconnected")
    n0.user("carol")
    say(n0, ann, "during one", "during two")
    ensureDeferred(n0.log._snapshot(n0.log._cmd, clock.seconds()))  # its heartbeat's
    snap_id = json.loads(redis.keys["chat:snapshot"])["id"]
    assert snap_id == redis.stream[-1][0]
    redis.trim(snap_id)
    n1.reachable = True
    clock.advance(1)
    redis.pump()
    assert n1.lost == 1 and n1.state.node != old
    assert {"t": "dead", "node": old, "n": n1.state.node} in [
        {k: e[k] for k in ("t", "node", "n") if k in e} for e in redis.events()]
    # The others drop n1's old users; n1's replica is the cluster's again.
    assert "dora" in n0.listener.departed()
    assert n0.nicks() == n1.nicks() == ["ann", "carol"]
    assert n1.state.replica.last_id == n0.state.replica.last_id
    # Its history is the cluster's (the messages it never heard included),
    # and what its listener built from the old one is dropped.
    assert [e.text for e in n1.state.hub.history.recent()] == ["before", "during one",
                                                                "during two"]
    assert n1.reloaded == 2  # at start, and now
    # It goes on: a newcomer on n1 is known everywhere, under the new id.
    erin = n1.user("erin")
    say(n1, erin, "hello again")
    assert n0.listener.said()[-1] == n1.listener.said()[-1] == "hello again"
    assert n0.state.replica.members[n0.state.replica.uids[n0.state.hub.online["erin"]]].node \
        == n1.state.node
    assert n0.nicks() == n1.nicks() == ["ann", "carol", "erin"]


def test_the_scripts_are_loaded_on_every_connection_and_a_lost_one_reconnects() -> None:
    """A restarted Redis has no scripts: each connection loads them before
    appending.  One that forgets them (SCRIPT FLUSH) makes the node
    reconnect, and the append is resent, applied once."""
    redis, clock, (n0,) = cluster(1)
    assert redis.calls["SCRIPT"] == len(SCRIPTS)
    ann = n0.user("ann")
    redis.scripts.clear()
    n0.state.say(ann, "after the flush")
    assert n0.listener.said() == []
    clock.advance(1)
    redis.pump()
    assert n0.listener.said() == ["after the flush"]
    assert redis.calls["SCRIPT"] == 2 * len(SCRIPTS)



def test_a_subscriber_redis_cut_is_said_as_such_not_as_redis_unreachable(
        logged: list[str]) -> None:
    """rev16-clu #4: Redis cut a node that fell behind the channel (its
    client-output-buffer-limit pubsub): the node logged "Redis ...
    unreachable (connection lost)" at error level.  Its command connection
    still answers: that is what is said; the node reconnects and is back."""
    redis, clock, (n0,) = cluster(1)
    reader = next(c for c in n0.conns if c.subscriber)
    reader.drop()
    assert not n0.state.available
    down = [line for line in logged if "new registrations are refused" in line]
    assert len(down) == 1 and "closed this node's subscriber connection while answering its " \
        "commands" in down[0] and "client-output-buffer-limit pubsub" in down[0], down
    assert not any("unreachable" in line for line in logged)
    clock.advance(1)  # its retry
    redis.pump()
    assert n0.state.available


def test_a_connection_the_nodes_own_reply_timeout_ended_is_said_as_that(
        logged: list[str]) -> None:
    """rev21-clu F3: a burst of departures made nodes read their replies
    late, and their own reply timeout (txredisapi's, which aborts the
    connection) ended their subscriber connections: the log blamed Redis's
    client-output-buffer-limit, though Redis cut nothing (its log said no
    such thing), and the command connection's as "Redis unreachable".  Both
    are said as what is known: this node's reply timeout ended them."""
    for which in ("subscriber", "command"):
        logged.clear()
        _redis, clock, (n0,) = cluster(1)
        conn = next(c for c in n0.conns if c.subscriber is (which == "subscriber"))
        # redisconn's note of txredisapi's TimeoutError; the loss's reason
        # says nothing of it over TLS (rr21-c #2)
        conn.reply_timed_out = True
        conn.lost_reason = Failure(ConnectionLost())
        conn.drop()
        down = [line for line in logged if "new registrations are refused" in line]
        assert len(down) == 1, down
        assert f"this node ended its {which} connection to Redis" in down[0], down
        assert "reply timeout (5 s: a third of --node-timeout" in down[0], down
        assert "client-output-buffer-limit" not in down[0] and "unreachable" not in down[0]
        assert not n0.state.available
        clock.advance(1)  # its retry
        assert n0.state.available


def test_each_connection_asks_the_fanout_whether_its_lines_are_due() -> None:
    """The node hands the fan-out's due (the service's LobbyFanout.due) to
    both connections at each connection (tests/test_cluster_intake.py)."""
    _redis, clock, (n0,) = cluster(1)
    due = lambda: False  # noqa: E731
    n0.log.lines_due = due
    next(c for c in n0.conns if c.subscriber).drop()
    clock.advance(1)
    opened = [c for c in n0.conns if not c.closed]
    assert len(opened) == 2 and all(getattr(c, "due", None) is due for c in opened)


def test_a_subscriber_lost_as_redis_goes_is_redis_unreachable(logged: list[str]) -> None:
    """Redis went: its subscriber connection's loss is seen first, the
    command connection's a turn later (it no longer answers): as ever,
    "unreachable", once."""
    _redis, _clock, (n0,) = cluster(1)
    cmd, reader = (next(c for c in n0.conns if c.subscriber is s) for s in (False, True))
    n0.reachable = False
    cmd.closed = True  # gone, its loss not seen yet
    reader.drop()
    cmd.closed = False
    cmd.drop()
    down = [line for line in logged if "new registrations are refused" in line]
    assert len(down) == 1 and "unreachable (connection lost)" in down[0], down
    assert not n0.state.available
