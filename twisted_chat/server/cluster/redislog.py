"""
The Redis side of a cluster node: its two connections, kept up with
backoff; the outbox of commands until Redis acknowledges them; reading the
stream and the channel; and the recovery when Redis lost data.  These share
the connection's generation and the replica's position, so they stay
together here.  The rest is in objects the log holds, each with its own
state, called on the log's connection:

  - L{redisstream}: the keys and the stream's scripts;
  - L{leases.Leases}: this node's lease, and the judging of the others';
  - L{snapshots.Snapshots}: the replica's snapshots, the stream's trimming;
  - L{pruning.Pruning}: the history's retention and its pruning;
  - L{kepthistory.KeptHistory}: history writes Redis refused, written again;
  - L{doubts.Doubts}: refused resends whose first copy may be in the stream.

Reading: every node subscribes to the channel on a connection of its own
and applies the events published there, in the channel's order (Redis runs
one script at a time and queues what they publish in that order, so the
channel's order is the stream's).  After (re)subscribing, and whenever an
event does not follow the last one the node applied, the node first catches
up from the stream itself (C{XRANGE}, on its command connection), then goes
on with the channel, skipping what it has applied already.  So a lobby
message costs Redis the same commands whatever the number of nodes: one
script and the history's write (L{HISTORY_ADD}); Redis still writes each
event to each node's connection.  A node whose next event the stream no longer holds (it
was cut off, or behind, for longer than the stream keeps events past the
last snapshot) cannot trust its replica: it goes on as a new node from the
snapshot (L{ClusterState.missed}).  One whose last event is gone from the
stream while what follows follows an older one (Redis lost its last
events, its epoch kept), or that sees a new epoch, rebuilds its replica
from what Redis kept, keeps its users and announces them again
(L{RedisLog._tail_lost}, L{ClusterState.rebuild}).

The client is txredisapi's protocol (non-blocking, Twisted-native), on
connections made through Twisted endpoints (L{redisconn}), so that
C{redis://}, C{rediss://} (TLS) and C{unix://} URLs all work and the
reconnection (backoff, resending what was not acknowledged) is ours (here).

Every wait on Redis is bounded: a command not answered within
L{RedisLog.reply_timeout} ends the connection as lost (txredisapi's
C{replyTimeout}), and so does a connection not set up within
L{RedisLog.open_timeout}; the subscribed connection is sent a C{PING} at
every heartbeat.  So a network cut that drops packets silently is noticed
like a closed connection.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater

from twisted_chat.server import logs
from twisted_chat.server.cluster.accounts import ACCOUNTS
from twisted_chat.server.cluster.budgets import SPEND
from twisted_chat.server.cluster.doubts import Doubts
from twisted_chat.server.cluster.kepthistory import KeptHistory, lost_after
from twisted_chat.server.cluster.leases import Leases
from twisted_chat.server.cluster.node import KEPT_RETRY, ClusterState
from twisted_chat.server.cluster.pruning import Pruning
from twisted_chat.server.cluster.redisconfig import (
    CONFIG,
    Misconfigured,
    Retention,
    foreign_keys,
    foreign_message,
)
from twisted_chat.server.cluster.redisconn import RedisTarget, connect
from twisted_chat.server.cluster.redishistory import (
    HISTORY,
    HISTORY_ADD,
    HISTORY_SIZE,
    HISTORY_WRITING,
    _history_entry,
    _history_row,
    _HistoryStore,
    history_rows,
    history_write,
)
from twisted_chat.server.cluster.redisstream import (
    APPEND,
    APPEND_SHA,
    APPENDING,
    CHANNEL,
    DROP_LOST_SNAPSHOT,
    EPOCH,
    NODES,
    SAVE_SNAPSHOT,
    SNAPSHOT,
    STREAM,
    entry_content,
    follows,
    follows_id,
)
from twisted_chat.server.cluster.snapshots import Snapshots
from twisted_chat.server.cluster.streamids import id_key
from twisted_chat.server.history import Entry

__all__ = ["RedisLog"]

# The kind of value (as TYPE names it) under each of the cluster's keys a
# node checks at each connection (redisconfig.foreign_keys).
KINDS = {STREAM: "stream", SNAPSHOT: "string", EPOCH: "string", NODES: "set",
         HISTORY: "zset", HISTORY_SIZE: "hash", CONFIG: "hash", ACCOUNTS: "hash"}
READ_COUNT = 2000
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0
BACKOFF_JITTER = 0.2  # each wait drawn within this fraction of its length
LONGEST_BACKOFF = BACKOFF_MAX * (1 + BACKOFF_JITTER)
# While commands wait for Redis (each at most --redis-wait, see
# ClusterState.first_deadline), reconnections are tried at most this far
# apart (no jitter), and at the latest DEADLINE_MARGIN before the first of them
# would be answered "not sent" (but never sooner than BACKOFF_FIRST after the
# last try): a Redis restart shorter than --redis-wait (less that margin)
# only delays them.  With none waiting, the backoff is as above.
WAITING_BACKOFF_MAX = 1.0
DEADLINE_MARGIN = 0.5


# While the node stops (its grace, see RedisLog.stop), it retries this often.
STOP_RETRY = 0.2
# Loaded at each connection, run by EVALSHA (SPEND: cluster/budgets.py's).
SCRIPTS = (APPEND, SAVE_SNAPSHOT, HISTORY_ADD, SPEND)


class _Out:
    """A command for Redis, until it is acknowledged; C{sent} once written
    to a connection (from then on it may be in Redis, answered or not);
    C{resent} once written to a later one (the first copy's answer was lost
    with its connection: Redis may have taken it); C{taken}, for an append,
    the id Redis gave its event."""

    __slots__ = ("command", "resent", "sent", "taken")

    def __init__(self, command: tuple[Any, ...]) -> None:
        self.command = command
        self.sent = False
        self.resent = False
        self.taken: str | None = None


class RedisLog:
    """
    The node's two Redis connections (commands; the subscription to the
    events), kept up with backoff, and the node's event log on them (the
    L{EventLog} its L{ClusterState} appends to).
    """

    log = logs.logger()

    def __init__(
        self,
        target: RedisTarget,
        state: ClusterState,
        reactor: Any,
        node_timeout: float,
        retain_days: float | None = None,
        retain_messages: int | None = None,
        retain_bytes: int | None = None,
        set_retention: bool = False,
    ) -> None:
        """
        @param retain_days: C{--retain-days}: the history forgets older messages.
        @param retain_messages: C{--retain-messages}: the history keeps at
            most this many (the newest); C{None} or 0: no bound by count.
        @param retain_bytes: C{--retain-bytes}: the history keeps at most
            this many bytes of messages (the newest, as L{PRUNE_HISTORY}
            counts them); C{None} or 0: no bound by bytes.
        @param set_retention: C{--set-retention}: these three become the
            cluster's (L{redisconfig}); without it, a node whose values are
            not the cluster's does not start.  While the node runs, it
            prunes by the cluster's (another node may set them).
        """
        self.target = target
        self.channel = f"{CHANNEL}:{target.db}"
        self.state = state
        self.reactor = reactor
        self.node_timeout = node_timeout
        # Called, with the reason, when the node cannot run on this
        # database (L{Misconfigured} at its first connection): the service
        # ends the process.  The log has said why.
        self.refused: Callable[[str], None] | None = None
        self._misconfigured: str | None = None  # the reason last logged
        self.leases = Leases(state, reactor, node_timeout, LONGEST_BACKOFF)
        self.pruning = Pruning(reactor, self.heartbeat,
                               Retention.of(retain_days, retain_messages, retain_bytes),
                               set_retention, target.display)
        self.snapshots = Snapshots(state.replica, self.pruning)
        # Redis answers in milliseconds; one silent for a third of the node
        # timeout (the lease is at risk) is taken as gone.
        self.reply_timeout = max(node_timeout / 3, 2.0)
        self.open_timeout = 3 * self.reply_timeout
        self._opening: list[Any] = []  # connections being set up
        self._cmd: Any = None
        self._reader: Any = None
        self._generation = 0
        self._attempt = 0
        self._retry: IDelayedCall | None = None
        self._beat: IDelayedCall | None = None
        self._down_since: float | None = None
        self._epoch: str | None = None
        self._started = False  # the snapshot has been loaded
        self._loaded_id: str | None = None  # the event it was loaded as of
        # Whether an event of this node's was sent since the snapshot was loaded.
        self._sent_since_load = False
        # The stream's last entry, when a read found that Redis lost the
        # events after it (see _tail_lost).
        self._lost_tail: str | None = None
        self._stopped = False
        self._stopping = False  # within stop()'s grace
        # Commands sent or to send, oldest first, until acknowledged.
        self._unacked: deque[_Out] = deque()
        self._refusing = False  # Redis refused the last write (said once)
        # Events heard on the channel, not applied yet: (the id each follows,
        # its id, its text), in the channel's order.
        self._heard: deque[tuple[str, str, str]] = deque()
        # The entries this node applied from the stream whose copies the
        # channel may still bring (the id each follows and its text, by
        # id, in the stream's order): the only events at or below the last
        # one applied that the channel may bring (see _apply_heard).
        self._read: dict[str, tuple[str, str]] = {}
        # The last entry applied (its id, the id it follows, its text): is
        # it still the stream's (see _lost_after)?
        self._applied: tuple[str, str, str] | None = None
        self._catching_up = False  # reading the stream; the channel waits
        # Whether the replica has caught up with the stream since the
        # connection (re)opened: its snapshots are written only then.
        self._caught_up = False
        # The id of the last event of this node's that Redis took (this epoch).
        self._taken: str | None = None
        # Resends Redis refused whose first copy may be in the stream.
        self.doubts = Doubts(state, lambda: self._generation)
        # History writes Redis refused, to write again.
        self.kept_history = KeptHistory(reactor, KEPT_RETRY, self._queue,
                                        lambda: state.max_waiting)
        self._ready: Deferred[None] = Deferred()
        state.events = self

    # -- starting, reconnecting -------------------------------------------------

    @property
    def heartbeat(self) -> float:
        """Seconds between heartbeats: the lease's (L{Leases.heartbeat})."""
        return self.leases.heartbeat

    def start(self) -> Deferred[None]:
        """Connect; fires once the node has the cluster's state (however
        long Redis takes to be reachable: it retries with backoff)."""
        self._connect()
        return self._ready

    def _connect(self) -> None:
        self._retry = None
        if self._stopped:
            return
        self._generation += 1
        generation = self._generation
        d = defer.ensureDeferred(self._open(generation))
        d.addTimeout(self.open_timeout, self.reactor)
        d.addErrback(self._failed, generation)

    async def _new_connection(self, reply_timeout: float, subscriber: bool = False) -> Any:
        return await connect(self.target, self.reactor, reply_timeout, self._opening,
                             subscriber=subscriber)

    def command(self, *args: Any) -> Deferred[Any]:
        """
        One command on the node's command connection, now (for an answer a
        user waits for: not queued, not resent); fails with
        C{ConnectionError} while Redis is out of reach.
        """
        if self._cmd is None or not self.state.available:
            return defer.fail(ConnectionError("Redis is out of reach"))
        d: Deferred[Any] = self._cmd.execute_command(*args)
        return d

    async def _open(self, generation: int) -> None:
        cmd = await self._new_connection(self.reply_timeout)
        reader = await self._new_connection(self.reply_timeout, subscriber=True)
        self._opening.clear()
        if generation != self._generation or self._stopped:
            cmd.transport.loseConnection()
            reader.transport.loseConnection()
            return
        self._cmd, self._reader = cmd, reader
        for proto in (cmd, reader):
            proto.whenDisconnected().addCallback(lambda _, g=generation: self._lost(g))
        self._heard.clear()
        self._read.clear()
        # What the channel brings waits until the stream has been read.
        self._catching_up, self._caught_up = True, False
        await self._restore(cmd)
        await self.leases.take(cmd)
        for script in SCRIPTS:  # a restarted Redis has none
            await cmd.execute_command("SCRIPT", "LOAD", script)
        self._attempt = 0
        self._misconfigured = None
        was_down = self._down_since
        self.leases.connected(after_outage=was_down is not None)
        self._down_since = None
        self.state.log_open()
        if was_down is None:
            self.log.info("cluster: connected to {redis} as node {node}",
                          redis=self.target.display, node=self.state.node)
        else:
            self.log.info("cluster: Redis is back after {s:.1f} s; registrations open again",
                          s=self.reactor.seconds() - was_down)
        self._send_unacked()
        self._schedule_beat(0.0)
        # Subscribed first, then the stream read from the replica's last
        # event: together they miss nothing (what the read returns, the
        # channel's copy of is skipped).
        reader.heard = lambda message, g=generation: self._hear(message, g)
        await reader.execute_command("SUBSCRIBE", self.channel)
        self._catch_up(generation)
        if not self._ready.called:
            self._ready.callback(None)

    async def _restore(self, cmd: Any) -> None:
        """On the first connection, load the snapshot and the history; on
        each, check that the database holds the cluster's kinds of keys
        (L{foreign_keys}), that Redis still has the cluster's data, and
        the cluster's retention (L{Pruning.agree})."""
        found = await foreign_keys(cmd, KINDS)
        if found:
            raise Misconfigured(foreign_message(self.target.display, found))
        await cmd.execute_command("SET", EPOCH, "%016x" % random.getrandbits(64), "NX")
        epoch = await cmd.execute_command("GET", EPOCH)
        if self._epoch is not None and epoch != self._epoch:
            self.log.error(
                "cluster: Redis lost its data (a new epoch); this node rebuilds its state "
                "from nothing, announces its users again, and resends what it had not had "
                "acknowledged"
            )
            # The new stream starts from scratch (no dead node ids either),
            # and so does every replica: what Redis kept is nothing.  What
            # this node still has to send goes after its users' list.
            self._lost_tail = None
            await self._answer_lost(cmd, None)
            self._drop_lost_history(None)
            self.state.replica.hub.history.attach(_HistoryStore(self), [])
            self._announce(self.state.rebuild(None, []))
        elif self._started:
            lost, self._lost_tail = self._lost_tail, None
            held = lost is not None and await self._holds_applied(cmd)
            if held:
                # The stream still holds the last event this replica
                # applied: whatever showed a loss, nothing it applied is
                # lost (rebuilt from an end below it, it would apply its
                # last events again, out loud).  Its own events Redis took
                # are checked as on any reconnection.
                self.log.warn("cluster: the stream still holds event {last}, the last this "
                              "node applied: no loss", last=self.state.replica.last_id)
                lost = None
            if lost is None:
                # The last event the replica applied, or the last of this
                # node's that Redis took (the node may not have read it yet).
                reached = max(self.state.replica.last_id, self._taken or "0-0", key=id_key)
                lost = await self._lost_after(cmd, reached, held)
            if lost is not None:
                await self._tail_lost(cmd, lost)
        self._epoch = epoch
        await self.pruning.agree(cmd, self._started)
        if not self._started:
            await self._load(cmd)

    async def _lost_after(self, cmd: Any, reached: str, held: bool) -> str | None:
        """If the stream lost entry C{reached} (Redis lost its last events),
        the last entry it kept before it; else C{None} (it is there, or it
        was trimmed: the stream goes on after it as it went on then).
        C{held}: the stream was just found to hold the last event the
        replica applied (L{_holds_applied}), which is not read again."""
        if reached == "0-0":
            return None
        applied = self._applied
        if not held and applied is not None and applied[0] == reached:
            at = await cmd.execute_command("XRANGE", STREAM, reached, reached)
            if at and entry_content(at[0]) != applied[1:]:
                # Another event under the id of the last one this node
                # applied (the events after a loss got ids at or below the
                # lost ones: Redis's clock set back, a failover): the stream
                # goes on after the one that event follows.
                return follows_id(at[0]) or "0-0"
        after = await cmd.execute_command("XRANGE", STREAM, "(" + reached, "+", "COUNT", 1)
        if after:
            prev = follows_id(after[0])
            return prev if prev is not None and id_key(prev) < id_key(reached) else None
        tail = await cmd.execute_command("XREVRANGE", STREAM, "+", "-", "COUNT", 1)
        end = str(tail[0][0]) if tail else "0-0"
        return end if id_key(end) < id_key(reached) else None

    async def _tail_lost(self, cmd: Any, end: str) -> None:
        """
        Redis lost the stream's last events, its epoch kept (a crash lost
        the last second that C{appendfsync everysec} had not written, say):
        the stream goes on after C{end}, the last entry it kept.  A replica
        that applied events after it is rebuilt from what Redis kept (the
        snapshot at or before C{end}, the stream up to it), as a node
        starting now builds it: every replica is then the same function of
        what Redis kept (L{ClusterState.rebuild}).  One that had not read up
        to C{end} applied nothing that was lost: it applies the kept events
        it has not read first.  Either way this node's users stay, and a
        C{hello} (before anything it still has to resend) makes every
        replica's view of them this node's.
        """
        replica = self.state.replica
        self.log.error(
            "cluster: Redis lost the stream's last events (this node applied {last}, the "
            "stream ends at {end}); this node rebuilds its state from what Redis kept, "
            "announces its users again, and resends what it had not had acknowledged",
            last=replica.last_id, end=end,
        )
        # A snapshot as of a lost event (kept while the events were not:
        # not with an append-only file) would stop every node from starting;
        # one another node wrote after the loss is kept (DROP_LOST_SNAPSHOT).
        await cmd.execute_command("EVAL", DROP_LOST_SNAPSHOT, 2, SNAPSHOT, STREAM, end)
        await self._answer_lost(cmd, end)
        self._drop_lost_history(end)
        self._loaded_id = None
        users = None
        if id_key(replica.last_id) > id_key(end):
            kept = await self._kept_state(cmd, end)
            if kept is None:
                self.log.error(
                    "cluster: what Redis kept cannot be read back (no snapshot at or "
                    "before {end}, and the stream does not start at the beginning): this "
                    "node goes on with its state; the nodes may disagree on what the lost "
                    "events did", end=end,
                )
                replica.lost_tail(end)
            else:
                snapshot, entries, history = kept
                replica.hub.history.attach(_HistoryStore(self), history)
                users = self.state.rebuild(snapshot, entries)
        else:
            replica.afterloss.lost_unapplied()
            await self._read_kept(cmd, end)
        self._announce(users)

    async def _answer_lost(self, cmd: Any, end: str | None) -> None:
        """
        Redis lost the stream's events after C{end} (C{None}: all of them, a
        new epoch): this node's commands among them that it had taken (it
        acknowledged them, so nothing resends them) and the replica had not
        applied yet are answered now (L{ClusterState.lost_commands}), never
        left waiting for a decision no replica will make.  One taken after
        C{end} that the stream still has (taken after the loss, on a
        connection that outlived it) is not lost: the catch-up applies it
        (each is looked up by its id, all at once: one round trip).  After a
        new epoch, one the stream has was taken after Redis lost its data
        (a C{FLUSHALL}, before this node saw it): it is lost all the same
        (its user is unknown to every replica until this node's hello,
        which comes after it), but nobody saw it, and its answer says so.
        """
        state = self.state
        # Not written yet, or not acknowledged: resent.  At or before the
        # kept end: applied, or to be.
        lost = [ticket for ticket in state.waiting_tickets()
                if isinstance(ticket, _Out) and ticket.taken is not None
                and (end is None or id_key(ticket.taken) > id_key(end))]
        after: list[_Out] = []
        if lost:
            found = await defer.gatherResults(
                [cmd.execute_command("XRANGE", STREAM, out.taken, out.taken) for out in lost],
                consumeErrors=True,
            )
            after = [out for out, at in zip(lost, found, strict=True)
                     if at and entry_content(at[0])[1] == out.command[-1]]
            if end is not None:
                lost, after = [out for out in lost if out not in after], []
        if lost:
            self.log.error(
                "cluster: Redis lost {n} commands of this node's users after taking them; "
                "they are answered as not taking effect", n=len(lost),
            )
            state.lost_commands(lost, after)

    async def _kept_state(
        self, cmd: Any, end: str,
    ) -> tuple[dict[str, Any] | None, list[tuple[str, dict[str, Any]]], list[Entry]] | None:
        """What Redis kept up to C{end}: the snapshot at or before it (or
        none), the stream's entries after the snapshot up to C{end}, and the
        history before them, as a node starting now reads them; C{None} if
        the stream does not go back to the snapshot (or to its start), or
        does not go on from it to C{end} without a gap.

        A snapshot past C{end} is one a node that saw the loss first wrote
        after it (one as of a lost event was just dropped): it is what Redis
        kept as of an event after the loss, and every replica had that state
        there; it is taken with no entries (the catch-up reads on from it),
        unless it holds an event of this node's still waiting for its
        answer (which would never come: C{None})."""
        snapshot = await cmd.execute_command("GET", SNAPSHOT)
        data = json.loads(snapshot) if snapshot else None
        upto = str(data["id"]) if data is not None else "0-0"
        if data is not None and id_key(upto) > id_key(end):
            k = self.state.first_waiting()
            if k is not None and k <= int(data["k"].get(self.state.node, 0)):
                return None
            return data, [], await self._history_entries(cmd, upto)
        entries: list[tuple[str, dict[str, Any]]] = []
        last = upto
        while id_key(last) < id_key(end):
            page = await self._kept_page(cmd, last, end)
            if not page:
                return None  # the stream does not go on from there up to the end
            entries += page
            last = page[-1][0]
        if last != end:
            return None  # the kept end is not in the stream (deleted meanwhile)
        return data, entries, await self._history_entries(cmd, upto)

    async def _read_kept(self, cmd: Any, end: str) -> None:
        """Apply the kept events up to C{end} that this replica has not read
        (it lagged when Redis lost what came after), so that its hello lists
        its users as of the kept end.  (Trimmed past its last one: the
        catch-up after this sees it.)"""
        while id_key(self.state.replica.last_id) < id_key(end):
            page = await self._kept_page(cmd, self.state.replica.last_id, end)
            if not page:
                return
            self.state.deliver(page)

    async def _kept_page(self, cmd: Any, last: str, end: str) -> list[tuple[str, dict[str, Any]]]:
        """The stream's next entries after C{last} up to C{end} (at most
        L{READ_COUNT}), parsed; none if the first one after C{last} does not
        follow it (trimmed or deleted past it) or is past C{end}."""
        rows = await cmd.execute_command("XRANGE", STREAM, "(" + last, "+",
                                         "COUNT", READ_COUNT)
        if not rows or not follows(rows[0], last):
            return []
        return [(str(eid), self._parse(str(eid), fields[1])) for eid, fields in rows
                if id_key(str(eid)) <= id_key(end)]

    def _announce(self, users: list[list[Any]] | None = None) -> None:
        """After Redis lost events (all, or its last ones): this node's
        snapshots and trims start afresh, and its users' list (a C{hello}:
        C{users}, or as the replica has them) goes ahead of what it still
        has to send.  The first snapshot after it comes a whole interval
        later: until then the snapshot Redis kept (at or before the kept
        end) stays, for the nodes that see the same loss later to rebuild
        from what Redis kept (one written after the loss would have this
        node's events after it, see L{_kept_state}).  The nodes this node
        declared dead are judged again: their C{dead} may be among what was
        lost, their users online again in the rebuilt replica."""
        self.leases.judge_again()
        self.snapshots.restart(self.reactor.seconds())
        self._taken = None
        self._applied = None
        waiting = list(self._unacked)
        self._unacked.clear()
        self.state.hello(users)
        self._unacked.extend(waiting)
        self.state.leave_again()

    async def _load(self, cmd: Any) -> None:
        """The snapshot and the history, into an empty replica."""
        replica = self.state.replica
        snapshot = await cmd.execute_command("GET", SNAPSHOT)
        data = json.loads(snapshot) if snapshot else None
        upto = str(data["id"]) if data is not None else "0-0"
        first = await cmd.execute_command("XRANGE", STREAM, "(" + upto, "+", "COUNT", 1)
        if first and not follows(first[0], upto):
            raise ConnectionError(
                "the snapshot is older than the stream; retrying" if snapshot
                else "the stream was trimmed and no snapshot is there yet"
            )
        # The snapshot's event, as the stream has it: what this replica
        # applies last (see _holds_applied, _lost_after).
        at = await cmd.execute_command("XRANGE", STREAM, upto, upto) if data else []
        self._applied = (upto, *entry_content(at[0])) if at else None
        # The history first: the users the snapshot brings online are shown
        # to the listener, which may cache what a newcomer is sent.  Nothing
        # past --retain-days is shown, as one server's start-up shows none.
        await self.pruning.prune(cmd, self.reactor.seconds(), start=True)
        await self._load_history(cmd, upto)
        if data is not None:
            replica.restore(data)
        self.state.connections.reloaded()
        self._started = True
        self._loaded_id = replica.last_id
        self._sent_since_load = any(out.sent and out.command[:2] == APPENDING
                                    for out in self._unacked)
        self.log.info(
            "cluster: state loaded as of event {id}: {n} users online",
            id=replica.last_id, n=len(replica.members),
        )
        await self._check_loaded(cmd)

    async def _check_loaded(self, cmd: Any) -> None:
        """What the snapshot just loaded says of this node: that it was
        declared dead (it goes on under a new id), or that it applied an
        event of this node's that the node has not read back (its answer
        would never come; the node goes on as one that missed events)."""
        state, replica = self.state, self.state.replica
        if state.node in replica.dead:
            state.lost()
            return
        k = state.first_waiting()
        if k is not None and k <= replica.last_k.get(state.node, 0):
            self.log.error(
                "cluster: the snapshot holds event {k} of this node's ({node}), which it "
                "never read back; starting again from the snapshot", k=k, node=state.node,
            )
            self._started = self._caught_up = False
            state.missed()
            await self._load(cmd)

    async def _load_history(self, cmd: Any, upto: str) -> None:
        """The history, as of event C{upto}, into the replica's hub."""
        self.state.replica.hub.history.attach(
            _HistoryStore(self), await self._history_entries(cmd, upto))

    async def _history_entries(self, cmd: Any, upto: str) -> list[Entry]:
        """The newest lobby messages of the history (as many as this node
        shows) at or before event C{upto}: those before the snapshot of
        C{upto} (the stream has those after it)."""
        size = self.state.replica.hub.history.size
        if not size:
            return []
        top = id_key(upto)
        rows = await cmd.execute_command(
            "ZREVRANGEBYSCORE", HISTORY, top[0], "-inf", "WITHSCORES", "LIMIT", 0, size + 64,
        )
        found: dict[tuple[int, int], Entry] = {}
        for member, score in zip(rows[::2], rows[1::2], strict=False):
            seq, nick, text = _history_entry(str(member))
            key = (int(float(score)), seq)
            if key > top and upto != "0-0":
                continue
            # One event's line once, also if written in both forms (by nodes
            # of two versions during a rolling upgrade).
            found[key] = Entry(key[0] / 1000.0, nick, text)
        return [found[key] for key in sorted(found)[-size:]]

    def _failed(self, failure: Any, generation: int) -> None:
        if generation != self._generation:
            return
        why = self._misconfiguration(failure)
        if why is not None and not self._started:
            self._refuse(why)
            return
        self._note_down(failure.getErrorMessage(), why)
        self._drop_connections()
        self._schedule_retry()

    def _misconfiguration(self, failure: Any) -> str | None:
        """What is wrong with the database, if C{failure} says it is not one
        this node can run on (L{Misconfigured}; or Redis's C{WRONGTYPE}: a
        key of another kind, found otherwise than by L{foreign_keys})."""
        if failure.check(Misconfigured):
            return str(failure.value)
        text = failure.getErrorMessage()
        if failure.check(txredisapi.ResponseError) and text.startswith("WRONGTYPE"):
            return foreign_message(self.target.display, [text])
        return None

    def _wrong_database(self, failure: Any, generation: int) -> bool:
        """While the node runs: if C{failure} is Redis's C{WRONGTYPE} (keys
        of another kind written under chat: meanwhile), the connection is
        taken as lost, the true cause logged (L{_note_down}); the
        reconnection's check (L{foreign_keys}) holds the node back until
        the database is right again."""
        why = self._misconfiguration(failure)
        if why is None:
            return False
        self._lost(generation, failure.getErrorMessage(), why)
        return True

    def _refuse(self, why: str) -> None:
        """At start: the node does not run on this database (the service
        ends the process, L{refused}); no retry."""
        self.log.critical("cluster: {why}", why=why)
        self.state.available = False
        self._drop_connections()
        self._stopped = True
        if self.refused is not None:
            self.refused(why)

    def _lost(self, generation: int, why: str = "connection lost",
              misconfigured: str | None = None) -> None:
        if generation != self._generation or self._stopped:
            return
        self._generation += 1
        self._note_down(why, misconfigured)
        self._drop_connections()
        self._schedule_retry()

    def _note_down(self, why: str, misconfigured: str | None = None) -> None:
        """Redis is out of reach (C{why}), or, while the node runs, the
        database is not one it can run on (C{misconfigured}: said as
        that, once per reason, not as Redis unreachable)."""
        self.state.available = False
        if misconfigured is not None and misconfigured != self._misconfigured:
            self._misconfigured = misconfigured
            self.log.error("cluster: {why}; new registrations are refused, retrying with "
                           "backoff", why=misconfigured)
        if self._down_since is None:
            self._down_since = self.reactor.seconds()
            self.leases.down()
            if misconfigured is not None:
                return
            self.log.error(
                "cluster: Redis at {redis} unreachable ({why}); new registrations are "
                "refused, reconnecting with backoff", redis=self.target.display, why=why,
            )

    def _drop_connections(self) -> None:
        for proto in (self._cmd, self._reader, *self._opening):
            if proto is not None and proto.transport is not None:
                proto.transport.abortConnection()
        self._cmd = self._reader = None
        self._opening.clear()
        if self._beat is not None and self._beat.active():
            self._beat.cancel()
        self._beat = None

    def _schedule_retry(self) -> None:
        if self._stopped or self._retry is not None:
            return
        delay = min(BACKOFF_FIRST * 2 ** self._attempt,
                    STOP_RETRY if self._stopping else BACKOFF_MAX)
        self._attempt += 1
        jitter = random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
        self._retry = self.reactor.callLater(self._within_waits(delay * jitter),
                                             self._connect)

    def _within_waits(self, delay: float) -> float:
        """The wait before the next reconnection attempt: C{delay}, the
        backoff's, but while commands wait for Redis at most
        L{WAITING_BACKOFF_MAX}, and not past L{DEADLINE_MARGIN} before the
        first of them would be answered "not sent" (the backoff alone, 5 s
        apart at its longest, let a restart shorter than --redis-wait lose
        them)."""
        due = self.state.first_deadline()
        if due is None:
            return delay
        now: float = self.reactor.seconds()
        latest = max(due - DEADLINE_MARGIN - now, BACKOFF_FIRST)
        return min(delay, WAITING_BACKOFF_MAX, latest)

    def command_waits(self) -> None:
        """A command now waits for the log (L{ClusterState.first_deadline}
        may be sooner): a reconnection attempt already scheduled comes
        early enough for it (L{_within_waits})."""
        retry = self._retry
        if retry is None or not retry.active():
            return
        left = retry.getTime() - self.reactor.seconds()
        sooner = self._within_waits(left)
        if sooner < left:
            retry.reset(sooner)

    # -- appending ---------------------------------------------------------------

    def append(self, event: str) -> object:
        # The event last: what a refusal hands back (see _not_acked).
        return self._queue(("EVALSHA", APPEND_SHA, 1, STREAM, self.channel, event))

    def withdraw(self, ticket: object) -> bool:
        """Take back a command not written to Redis yet (see L{EventLog})."""
        if not isinstance(ticket, _Out) or ticket.sent:
            return False
        try:
            self._unacked.remove(ticket)
        except ValueError:
            return False
        return True

    def _queue(self, command: tuple[Any, ...]) -> _Out:
        out = _Out(command)
        self._unacked.append(out)
        if self._cmd is not None and self.state.available:
            self._send(out)
        return out

    def _send_unacked(self) -> None:
        """On a new connection: send what is not acknowledged, then ask
        again where the stream ends for the refused resends still in doubt
        (what was read on the connection that went may be stale: Redis may
        have lost its last events since)."""
        for out in list(self._unacked):
            self._send(out)
        self.doubts.reconnected(self._cmd)

    def _send(self, out: _Out) -> None:
        generation = self._generation
        out.resent = out.sent
        out.sent = True
        if out.command[:2] == APPENDING:
            self._sent_since_load = True
        d = self._cmd.execute_command(*out.command)
        d.addCallbacks(self._acked, self._not_acked, (generation, out), None, (generation, out))

    def _acked(self, result: object, generation: int, out: _Out) -> None:
        if generation == self._generation and self._unacked:
            self._unacked.popleft()
            self._refusing = False
        if out.command[:2] == APPENDING:
            self._taken = out.taken = str(result)  # the event's id
        elif out.command[:2] == HISTORY_WRITING:
            self.kept_history.taken()

    def own_events_read(self) -> bool:
        """See L{EventLog.own_events_read}: no event of this node's is
        queued or unanswered, and the replica has applied the last Redis took."""
        if self._cmd is None or not self.state.available:
            return False
        if any(out.command[:2] == APPENDING for out in self._unacked):
            return False
        if self.doubts.pending:
            return False  # a refused resend's first copy may be unread
        taken = self._taken
        return taken is None or id_key(self.state.replica.last_id) >= id_key(taken)

    def _not_acked(self, failure: Any, generation: int, out: _Out) -> None:
        if failure.check(txredisapi.ResponseError) and "NOSCRIPT" in failure.getErrorMessage():
            # Everything unacknowledged is resent on the new connection.
            if generation == self._generation:
                self._scripts_forgotten("append")
            return
        if self._wrong_database(failure, generation):
            return  # resent once the database is right again
        if failure.check(txredisapi.ResponseError):
            # Redis refused the command itself (MISCONF, OOM, READONLY):
            # resending would not help.  Said once until a write succeeds
            # again, not once per command.
            if not self._refusing:
                self.log.error("cluster: Redis refused a write: {e}",
                               e=failure.getErrorMessage())
            if generation == self._generation and self._unacked:
                self._unacked.popleft()
            self._refusing = True
            if out.command[:2] == APPENDING:
                if out.resent:
                    self.doubts.add(out.command[-1], self._cmd)
                else:
                    self.state.refused(out.command[-1])  # not in the stream: answered
            elif out.command[:2] == HISTORY_WRITING:
                self.kept_history.keep(out.command)
        # Otherwise the connection went: everything unacknowledged is resent.

    def applied(self) -> None:
        """See L{EventLog.applied}."""
        self.doubts.settle()

    def _drop_lost_history(self, end: str | None) -> None:
        """
        Redis lost the stream's events after C{end} (C{None}: all of its
        data, a new epoch): their lobby lines are in no history (a node
        started now shows none of them), so the history writes this node
        keeps or has not had acknowledged for them are dropped, not written
        into the history Redis has now (a node started later would show
        them, the running ones not).  Called before anything is sent on the
        new connection.
        """
        lost = lost_after(end)
        dropped = self.kept_history.drop_lost(lost)
        for out in list(self._unacked):
            if out.command[:2] != HISTORY_WRITING:
                continue
            pairs = history_rows(out.command)
            kept = [x for pair in pairs if not lost(*pair) for x in pair]
            dropped += len(pairs) - len(kept) // 2
            if not kept:
                self._unacked.remove(out)
            else:
                out.command = history_write(kept)
        if dropped:
            self.log.warn("cluster: {n} lobby messages whose events Redis lost are not "
                          "written to the history", n=dropped)

    def _scripts_forgotten(self, which: str) -> None:
        """Redis forgot the scripts (SCRIPT FLUSH) without closing the
        connection: a new connection loads them."""
        self.log.warn("cluster: Redis forgot the {which} script; reconnecting", which=which)
        self._lost(self._generation, f"Redis forgot the {which} script")

    # -- reading -------------------------------------------------------------------

    def _hear(self, message: str, generation: int) -> None:
        """An event published on the channel: C{<the id it follows> <its id> <event>}."""
        if generation != self._generation:
            return
        prev, _, rest = str(message).partition(" ")
        eid, _, text = rest.partition(" ")
        try:
            id_key(prev), id_key(eid)
        except ValueError:
            self.log.warn("cluster: skipped a malformed message on {channel}",
                          channel=self.channel)
            return
        self._heard.append((prev, eid, text))
        if not self._catching_up:
            self._apply_heard(generation)

    def _apply_heard(self, generation: int, read: bool = False) -> None:
        """
        Apply what the channel brought, in its order, as long as each event
        follows the last one applied; one that does not (the node missed
        one: published while it was not subscribed yet, say) sends it to
        the stream first.  What it has applied already is skipped.

        @param read: the stream has just been read to its end: what was
            published after that read follows it, so an event that does not
            is not the stream's (someone else's on the channel), and is
            dropped rather than read for again and again.
        """
        heard = self._heard
        last = id_key(self.state.replica.last_id)
        batch = []
        behind: tuple[str, str, str] | None = None
        while heard:
            prev, eid, text = heard[0]
            key = id_key(eid)
            if key <= last:
                if not self._read_already(eid, prev, text):
                    behind = (prev, eid, text)
                    break
                heard.popleft()  # read from the stream already
                continue
            if id_key(prev) != last:
                if not read:
                    break
                heard.popleft()
                self.log.warn("cluster: skipped event {eid} heard on {channel}: it is not "
                              "in the stream", eid=eid, channel=self.channel)
                continue
            heard.popleft()
            batch.append((eid, self._parse(eid, text)))
            self._applied = (eid, prev, text)
            last = key
            # The channel is past what was read: none of it comes again.
            self._read.clear()
        if batch:
            self.state.deliver(batch)
        if behind is not None:
            # An event at or below the last one applied that is not the
            # copy of one read: the copy of one a snapshot loaded since
            # brought (still in the socket when it was loaded), or the
            # stream's tail that this node applied is gone and the events
            # after the loss got ids at or below it (Redis's clock set
            # back, a failover).  The stream tells which; the channel
            # waits meanwhile.
            self._catching_up = True
            d = defer.ensureDeferred(self._check_behind(generation, *behind, read))
            d.addErrback(self._read_failed, generation)
            return
        if heard and not self._catching_up:
            self._catch_up(generation)

    async def _check_behind(self, generation: int, prev: str, eid: str, text: str,
                            read: bool) -> None:
        """
        The channel brought event C{eid} (after C{prev}), at or below the
        last one applied, and not the copy of one read from the stream.  If
        the stream still holds the last event this replica applied, nothing
        it applied was lost (the stream's ids only grow: an event after a
        loss cannot come before one the stream kept): C{eid} is the copy of
        an event a reloaded snapshot holds (or someone else's message), and
        is skipped.  Else Redis lost the stream's tail (L{_tail_gone}).
        Off the normal path: losses are rare, and so are such copies.
        """
        cmd = self._cmd
        if cmd is None or generation != self._generation:
            return
        last = self.state.replica.last_id
        if not await self._holds_applied(cmd):
            if generation == self._generation:
                self._tail_gone(generation, last, prev,
                                f"event {eid} after {prev}, at or below it")
            return
        found = await cmd.execute_command("XRANGE", STREAM, eid, eid)
        if generation != self._generation:
            return
        self._heard.popleft()
        if not found or entry_content(found[0]) != (prev, text):
            self.log.warn("cluster: skipped event {eid} heard on {channel}: it is not "
                          "in the stream", eid=eid, channel=self.channel)
        self._catching_up = False
        self._apply_heard(generation, read)

    async def _holds_applied(self, cmd: Any) -> bool:
        """Whether the stream still holds the last event this replica
        applied: the same id, after the same entry, the same text (each
        entry names the one it follows, so the stream up to it is what the
        replica applied).  False when the replica does not know that
        event's text (its last came otherwise: a rebuild)."""
        applied = self._applied
        last = self.state.replica.last_id
        if applied is None or applied[0] != last:
            return False
        at = await cmd.execute_command("XRANGE", STREAM, last, last)
        return bool(at) and entry_content(at[0]) == applied[1:]

    def _read_already(self, eid: str, prev: str, text: str) -> bool:
        """Whether an event the channel brings, at or below the last one
        applied, is the copy of one this node read from the stream (the same
        id, following the same one, the same text); what was read up to it
        is forgotten (the channel brings the rest after it)."""
        read = self._read
        if read.get(eid) != (prev, text):
            return False
        while read:
            first = next(iter(read))
            del read[first]
            if first == eid:
                break
        return True

    def _catch_up(self, generation: int) -> None:
        """Read the stream from the replica's last event on; the channel's
        events wait meanwhile, and are applied after it."""
        self._catching_up = True
        d = defer.ensureDeferred(self._read_stream(generation))
        d.addErrback(self._read_failed, generation)

    async def _read_stream(self, generation: int) -> None:
        while True:
            cmd = self._cmd
            if cmd is None or generation != self._generation:
                return
            last = self.state.replica.last_id
            entries = await cmd.execute_command(
                "XRANGE", STREAM, "(" + last, "+", "COUNT", READ_COUNT,
            )
            if generation != self._generation:
                return
            prev = follows_id(entries[0]) if entries else None
            if prev is not None and id_key(prev) < id_key(last):
                # The first entry after the replica's last follows an older
                # one: Redis lost the replica's last events (a crash lost
                # the stream's tail, entries deleted).
                self._tail_gone(generation, last, prev, "the stream goes on")
                return
            if prev is not None and id_key(prev) != id_key(last):
                # The events between the replica's last and this one are
                # gone from the stream (trimmed).
                if last == self._loaded_id and not self._sent_since_load:
                    # Nothing applied since the snapshot was loaded, nor
                    # sent (nothing of this node's can be in what was
                    # trimmed): the snapshot is older than the stream
                    # (trimmed meanwhile); load a newer one (_load then
                    # checks what it says of this node).
                    self.state.replica.clear()
                    self._started = False
                    raise ConnectionError("the snapshot is older than the stream; retrying")
                await self._missed(cmd, last, str(entries[0][0]), prev)
                # What the channel brought so far is in the snapshot loaded
                # or in the stream read next: none of it is news.
                self._heard.clear()
                continue
            batch = [(str(eid), self._parse(str(eid), fields[1])) for eid, fields in entries]
            for eid, fields in entries:
                self._read[str(eid)] = (follows_id([eid, fields]) or "", str(fields[1]))
                self._applied = (str(eid), *self._read[str(eid)])
            if batch:
                self.state.deliver(batch)
            if len(entries) < READ_COUNT:
                break
        self._catching_up = False
        self._caught_up = True
        self._apply_heard(generation, read=True)

    def _tail_gone(self, generation: int, last: str, prev: str, seen: str) -> None:
        """
        Redis lost the stream's events after C{prev} that this replica
        applied (up to C{last}): announce this node's users again, on a new
        connection (see L{_restore}).  C{seen}: what showed it.
        """
        self._lost_tail = prev
        why = (f"Redis lost the stream's last events (this node applied {last}, {seen} "
               f"after {prev}); reconnecting to announce its users again")
        self.log.warn("cluster: {why}", why=why)
        self._lost(generation, why)

    def _parse(self, eid: str, text: object) -> dict[str, Any]:
        try:
            event = json.loads(str(text))
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.log.warn("cluster: skipped a malformed event {eid}", eid=eid)
            return {}
        return event

    async def _missed(self, cmd: Any, last: str, first: str, prev: str) -> None:
        """
        The replica's next events are gone (the stream was trimmed past its
        last one while this node was cut off or behind, or, just after a
        load, the part trimmed may hold something of this node's): it
        cannot be trusted.  The node goes on as a new one from the snapshot
        (see L{ClusterState.missed}: its users are told C{BYE}).
        """
        self.log.error(
            "cluster: events this node never read were trimmed from the stream (it was "
            "cut off or behind for longer than the stream keeps events): it applied "
            "{last}, the stream now goes on only at {first}, which follows {prev}; "
            "starting again from the snapshot", last=last, first=first, prev=prev,
        )
        self._started = self._caught_up = False
        self.state.missed()
        await self._load(cmd)
        # The refusals in doubt whose stream end the snapshot is past are
        # settled now, not at the next event applied (in a quiet cluster
        # there may be none for long; and while Redis refuses writes, there
        # is none).  A rebuild (L{_tail_lost}) needs no such call: it is
        # made on a new connection, which asks every doubt's end again.
        self.doubts.settle()

    def _read_failed(self, failure: Any, generation: int) -> None:
        if generation != self._generation or failure.check(txredisapi.ConnectionError):
            return  # the connection went: _lost has it
        if self._wrong_database(failure, generation):
            return
        if failure.check(ConnectionError):
            self.log.warn("cluster: {why}", why=failure.getErrorMessage())
            self._lost(generation, failure.getErrorMessage())
            return
        self.log.failure("cluster: reading the stream failed", failure)
        self._lost(generation)

    # -- heartbeat, liveness, snapshots ------------------------------------------------

    def renamed(self, node: str) -> None:
        """
        The node goes on under a new id: its lease now, ahead (on the same
        connection) of any event of that id, or another node could see a
        user of the new id before its lease and take it for dead.  (With no
        connection, the next one sets it before taking registrations.)
        The nodes it declared dead are judged again: a C{dead} its old id
        sent after its own death is skipped by every replica.
        """
        self.leases.judge_again()
        if self._cmd is not None:
            d = self.leases.take(self._cmd, node)
            d.addErrback(lambda f: self.log.debug("lease: {e}", e=f.getErrorMessage()))

    def _beat_failed(self, failure: Any, generation: int) -> None:
        if not self._wrong_database(failure, generation):
            self.log.debug("heartbeat: {e}", e=failure.getErrorMessage())

    def _schedule_beat(self, delay: float) -> None:
        self._beat = self.reactor.callLater(delay, self._heartbeat)

    def _heartbeat(self) -> None:
        self._beat = None
        d = defer.ensureDeferred(self._beat_once())
        d.addErrback(self._beat_failed, self._generation)
        if self._cmd is not None:
            self._schedule_beat(self.heartbeat)

    async def _beat_once(self) -> None:
        cmd = self._cmd
        if cmd is None or self._stopped:
            return
        reader = self._reader
        if reader is not None:
            # A quiet channel says nothing: a connection that went silently
            # (a cut that drops packets) is noticed by its PING's timeout.
            ping = reader.execute_command("PING")
            ping.addErrback(lambda f: self.log.debug("ping: {e}", e=f.getErrorMessage()))
        self.doubts.ask(cmd)  # if the last question failed
        await self.leases.renew(cmd)
        if self._epoch is not None and await cmd.execute_command("GET", EPOCH) != self._epoch:
            # FLUSHDB or FLUSHALL without a restart: the connections stay,
            # so the new epoch is seen (and handled) on a new one.
            if cmd is self._cmd:
                self.log.warn("cluster: Redis's epoch key changed or is gone; reconnecting")
                self._lost(self._generation, "Redis lost its data (FLUSHDB?)")
            return
        now = self.reactor.seconds()
        await self.leases.judge(cmd, now)
        await self.pruning.follow(cmd, self._started)
        await self.pruning.prune(cmd, now)
        if self._caught_up and self.snapshots.due(now):
            await self._snapshot(cmd, now)

    async def _snapshot(self, cmd: Any, now: float) -> None:
        if not await self.snapshots.write(cmd, now) and cmd is self._cmd:
            self._scripts_forgotten("snapshot")

    # -- the history's store (MessageStore) ----------------------------------------------

    def append_entry(self, entry: Entry) -> None:
        current = self.state.replica.current
        if current is None or current[1] != self.state.node or self.state.replica.replaying:
            return  # the sender's node writes it (once: not when rebuilding)
        self._queue(history_write(_history_row(current[0], entry.nick, entry.text)))

    # -- stopping --------------------------------------------------------------------

    async def stop(self, grace: float = 3.0) -> None:
        """Write what is queued, and what Redis refused and the node appends
        again (within C{grace} seconds), drop the lease, close.  Redis out
        of reach meanwhile (restarting, say) is waited for too, within the
        grace, retrying every L{STOP_RETRY} seconds: the node's C{dead}
        frees its users' nicks at once, where a lost one would leave them
        held until the others find its lease missing.  A node that never
        got the cluster's state (no users, nothing of its own to tell)
        does not wait for Redis."""
        deadline = self.reactor.seconds() + grace
        self._stopping = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
            self._retry = None
            self._schedule_retry()  # soon, not after the backoff
        while ((self._unacked or self.doubts.pending or self.kept_history.pending
                or self.state.keeping())
               and (self._cmd is not None or self._started)
               and self.reactor.seconds() < deadline):
            await deferLater(self.reactor, 0.02)
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self.kept_history.stop()
        cmd = self._cmd
        if cmd is not None:
            with contextlib.suppress(Exception):
                await self.leases.release(cmd)
        self._generation += 1
        self._drop_connections()
        self.state.cancel_timers()
