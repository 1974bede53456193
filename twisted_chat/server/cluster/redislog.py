"""
The Redis side of a cluster node: its two connections, kept up with
backoff; the outbox of commands until Redis acknowledges them; the
heartbeat.  The rest is in objects the log holds, each with its own state,
called on the log's connection:

  - L{redisread.StreamReader}: reading the stream and the channel into the
    replica, loading, and the recovery when Redis lost data (it knows the
    log as its L{redisread.Host}: the connection and its generation, a
    reconnection, the outbox's events Redis took, the C{hello} ahead of it);
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
(L{StreamReader._tail_lost}, L{ClusterState.rebuild}).

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
import random
from collections import deque
from collections.abc import Awaitable, Callable
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
from twisted_chat.server.cluster.redisconn import (
    PasswordRefused,
    RedisTarget,
    connect,
    timed_out,
    tls_failure,
)
from twisted_chat.server.cluster.redishistory import (
    HISTORY,
    HISTORY_ADD,
    HISTORY_ADD_OOM,
    HISTORY_SIZE,
    HISTORY_WRITING,
    HistoryStore,
    history_row,
    history_rows,
    history_write,
)
from twisted_chat.server.cluster.redisread import StreamReader
from twisted_chat.server.cluster.redisstream import (
    APPEND,
    APPEND_SHA,
    APPENDING,
    CHANNEL,
    EPOCH,
    NODES,
    SAVE_SNAPSHOT,
    SNAPSHOT,
    STREAM,
)
from twisted_chat.server.cluster.snapshots import Snapshots
from twisted_chat.server.cluster.streambound import StreamBound
from twisted_chat.server.cluster.streamids import id_key
from twisted_chat.server.history import Entry

__all__ = ["RedisLog"]

# The kind of value (as TYPE names it) under each of the cluster's keys a
# node checks at each connection (redisconfig.foreign_keys).
KINDS = {STREAM: "stream", SNAPSHOT: "string", EPOCH: "string", NODES: "set",
         HISTORY: "zset", HISTORY_SIZE: "hash", CONFIG: "hash", ACCOUNTS: "hash"}
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
SCRIPTS = (APPEND, SAVE_SNAPSHOT, HISTORY_ADD, HISTORY_ADD_OOM, SPEND)
# A snapshot that cannot be written (so no trim) is warned of at most this often.
UNTRIMMED_WARN_EVERY = 60.0


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
        *,
        retain_days: float | None,
        retain_messages: int | None,
        retain_bytes: int | None,
        stream_bytes: int | None,
        set_retention: bool = False,
        lines_due: Callable[[], bool] | None = None,
    ) -> None:
        """
        The four bounds have no default: what peers make Redis hold is
        bounded, and no bound is a caller's choice, spelled out (the service
        passes the options': L{twisted_chat.server.cluster.service.cluster_factory}).

        @param retain_days: C{--retain-days}: the history forgets older
            messages; C{None} or 0: no bound by age.
        @param retain_messages: C{--retain-messages}: the history keeps at
            most this many (the newest); C{None} or 0: no bound by count.
        @param retain_bytes: C{--retain-bytes}: the history keeps at most
            this many bytes of messages (the newest, as L{PRUNE_HISTORY}
            counts them); C{None} or 0: no bound by bytes.
        @param set_retention: C{--set-retention}: these three become the
            cluster's (L{redisconfig}); without it, a node whose values are
            not the cluster's does not start.  While the node runs, it
            prunes by the cluster's (another node may set them).
        @param stream_bytes: C{--stream-bytes}: a command's event is not
            appended while the stream takes more (L{APPEND}); C{None} or 0:
            no bound.
        @param lines_due: the lobby fan-out's C{due}: a connection hands on
            a read's replies (the channel's events) in one turn, until the
            waiting lines of the lobby's batch, or of the paired users'
            beside it, are due (L{redisconn._WholeReads}).
        """
        self.target = target
        self.channel = f"{CHANNEL}:{target.db}"
        # --stream-bytes, agreed with the cluster's (in force: its bytes).
        self.stream_bound = StreamBound(stream_bytes or 0, target.display)
        self.state = state
        self.reactor = reactor
        self.node_timeout = node_timeout
        self.lines_due = lines_due
        # Called, with the reason, when the node cannot run on this
        # database (L{Misconfigured} at its first connection): the service
        # ends the process.  The log has said why.
        self.refused: Callable[[str], None] | None = None
        self._misconfigured: str | None = None  # the reason last logged
        self._untrimmed_warn = logs.Throttle(UNTRIMMED_WARN_EVERY)  # a failed snapshot (_untrimmed)
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
        self._stopped = False
        self._stopping = False  # within stop()'s grace
        # Commands sent or to send, oldest first, until acknowledged.
        self._unacked: deque[_Out] = deque()
        self._refusing = False  # Redis refused the last write (said once)
        # The id of the last event of this node's that Redis took (this epoch).
        self._taken: str | None = None
        # Resends Redis refused whose first copy may be in the stream.
        self.doubts = Doubts(state, lambda: self._generation)
        # History writes Redis refused, to write again.
        self.kept_history = KeptHistory(reactor, KEPT_RETRY, self._queue,
                                        lambda: state.max_waiting)
        # The stream and the channel into the replica, and the recovery
        # when Redis lost data (it knows this log as its Host).
        self.reading = StreamReader(self, state, reactor, self.channel, self.pruning,
                                    self.doubts)
        self._ready: Deferred[None] = Deferred()
        state.events = self

    # -- starting, reconnecting -------------------------------------------------

    @property
    def heartbeat(self) -> float:
        """Seconds between heartbeats: the lease's (L{Leases.heartbeat})."""
        return self.leases.heartbeat

    # -- what its reading needs of it (redisread.Host) -------------------------------

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def connection(self) -> Any:
        return self._cmd

    @property
    def last_taken(self) -> str | None:
        return self._taken

    def taken_events(self) -> list[tuple[object, str, str]]:
        return [(ticket, ticket.taken, ticket.command[-1])
                for ticket in self.state.waiting_tickets()
                if isinstance(ticket, _Out) and ticket.taken is not None]

    def appends_sent(self) -> bool:
        return any(out.sent and out.command[:2] == APPENDING for out in self._unacked)

    def history_store(self) -> HistoryStore:
        return HistoryStore(self)

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
        cmd.due = reader.due = self.lines_due
        cmd.whenDisconnected().addCallback(
            lambda _, g=generation: self._connection_lost(g, cmd, "command"))
        reader.whenDisconnected().addCallback(
            lambda _, g=generation: self._subscriber_lost(g, reader))
        self.reading.reset()
        unrecorded, notes = await self._restore(cmd)
        refused = await self.leases.take_refused(cmd)
        for script in SCRIPTS:  # a restarted Redis has none (Redis out of memory loads them)
            await cmd.execute_command("SCRIPT", "LOAD", script)
        self._attempt = 0
        self._misconfigured = None
        was_down = self._down_since
        self.leases.connected(after_outage=was_down is not None, held=refused is None)
        self._down_since = None
        self.state.log_open()
        if was_down is None:
            self.log.info("cluster: connected to {redis} as node {node}",
                          redis=self.target.display, node=self.state.node)
        else:
            self.log.info("cluster: Redis is back after {s:.1f} s; registrations open again",
                          s=self.reactor.seconds() - was_down)
        why = refused or unrecorded
        if why is not None:
            self._refused_at_connection(why, notes)
        self._send_unacked()
        self._schedule_beat(0.0)
        # Subscribed first, then the stream read from the replica's last
        # event: together they miss nothing (what the read returns, the
        # channel's copy of is skipped).
        reading = self.reading
        reader.heard = lambda message, g=generation: reading.hear(message, g)
        await reader.execute_command("SUBSCRIBE", self.channel)
        reading.catch_up(generation)
        if not self._ready.called:
            self._ready.callback(None)

    def _refused_at_connection(self, why: str, notes: list[str]) -> None:
        """Redis refused this node's lease on its new connection (out of
        memory, say), or to record a setting the cluster lacks (C{notes}:
        which, and this node's in force): said once, in one line, as a
        refused write (L{_not_acked}); the node runs on, its commands
        refused while Redis refuses them."""
        self._refusing = True
        unrecorded = f" ({'; '.join(notes)})" if notes else ""
        self.log.error("cluster: Redis refused a write: {e}; connected all the same: "
                       "commands are answered ERROR unavailable until Redis takes writes "
                       "again{unrecorded}", e=why, unrecorded=unrecorded)

    async def _restore(self, cmd: Any) -> tuple[str | None, list[str]]:
        """At each connection, check that the database holds the cluster's
        kinds of keys (L{foreign_keys}) and that --stream-bytes is the
        cluster's (L{StreamBound.agree}); then L{reading} checks what Redis
        kept and, on the first, loads (L{StreamReader.restore}).  Where the
        cluster lacks --stream-bytes or a retention field and Redis refused
        to record this node's (the node connects all the same): Redis's
        refusal, and a note of each such setting."""
        found = await foreign_keys(cmd, KINDS)
        if found:
            raise Misconfigured(foreign_message(self.target.display, found))
        bound = await self.stream_bound.agree(cmd, self.reading.started)
        retention = await self.reading.restore(cmd)
        unclaimed = [each for each in (bound, retention) if each is not None]
        return (unclaimed[0].refusal if unclaimed else None), [u.note for u in unclaimed]

    def announce(self, users: list[list[Any]] | None = None) -> None:
        """After Redis lost events (all, or its last ones): this node's
        snapshots and trims start afresh, and its users' list (a C{hello}:
        C{users}, or as the replica has them) goes ahead of what it still
        has to send.  The first snapshot after it comes a whole interval
        later: until then the snapshot Redis kept (at or before the kept
        end) stays, for the nodes that see the same loss later to rebuild
        from what Redis kept (one written after the loss would have this
        node's events after it, see L{StreamReader._kept_state}).  The nodes this node
        declared dead are judged again: their C{dead} may be among what was
        lost, their users online again in the rebuilt replica."""
        self.leases.judge_again()
        self.snapshots.restart(self.reactor.seconds())
        self._taken = None
        self.reading.applied = None
        waiting = list(self._unacked)
        self._unacked.clear()
        self.state.hello(users)
        self._unacked.extend(waiting)
        self.state.leave_again()

    def _failed(self, failure: Any, generation: int) -> None:
        if generation != self._generation:
            return
        failure = _cause(failure)
        why = self._misconfiguration(failure)
        if why is not None and not self.reading.started:
            self._refuse(why)
            return
        if why is None and failure.check(txredisapi.ResponseError):
            # Reachable, but refusing a write the connection needs (the
            # epoch or the retention missing while Redis is out of memory).
            why = (f"Redis at {self.target.display} refused a write this node makes as "
                   f"it connects ({failure.getErrorMessage()})")
        self._note_down(self._tls_failure() or failure.getErrorMessage(), why)
        self._schedule_retry()  # first: whatever the drop does
        self._drop_connections()

    def _misconfiguration(self, failure: Any) -> str | None:
        """What is wrong with the database, if C{failure} says it is not one
        this node can run on (L{Misconfigured}; or Redis's C{WRONGTYPE}: a
        key of another kind, found otherwise than by L{foreign_keys}); or
        with this node's command line (Redis's C{NOAUTH}: it needs a
        password, and the node was given none; L{PasswordRefused}: it
        refused the one given; no retry makes one right)."""
        failure = _cause(failure)
        if failure.check(Misconfigured):
            return str(failure.value)
        text = failure.getErrorMessage()
        if failure.check(txredisapi.ResponseError) and text.startswith("WRONGTYPE"):
            return foreign_message(self.target.display, [text])
        if failure.check(txredisapi.ResponseError) and text.startswith("NOAUTH"):
            return (f"Redis at {self.target.display} requires a password and this node "
                    f"was given none ({text}): give it with --redis-password-file FILE "
                    "(or in the --redis URL, redis://:PASSWORD@HOST:PORT/DB)")
        if failure.check(PasswordRefused):
            return (f"Redis at {self.target.display} refused this node's password "
                    f"({failure.value.reply}): check the one given with "
                    "--redis-password-file FILE (or in the --redis URL) against Redis's "
                    "requirepass (or, with a user name in the URL, that ACL user's)")
        return None

    def wrong_database(self, failure: Any, generation: int) -> bool:
        """While the node runs: if C{failure} is Redis's C{WRONGTYPE} (keys
        of another kind written under chat: meanwhile), the connection is
        taken as lost, the true cause logged (L{_note_down}); the
        reconnection's check (L{foreign_keys}) holds the node back until
        the database is right again."""
        why = self._misconfiguration(failure)
        if why is None:
            return False
        self.lost(generation, _cause(failure).getErrorMessage(), why)
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

    def lost(self, generation: int, why: str = "connection lost",
             misconfigured: str | None = None, subscriber_cut: bool = False,
             unanswered: str | None = None) -> None:
        if generation != self._generation or self._stopped:
            return
        self._generation += 1
        self._note_down(self._tls_failure() or why, misconfigured, subscriber_cut, unanswered)
        self._schedule_retry()  # first: whatever the drop does
        self._drop_connections()

    def _connection_lost(self, generation: int, proto: Any, which: str) -> None:
        """The node's C{which} connection (C{proto}) was lost: said as its
        own reply timeout if that ended it (L{timed_out}; before, a
        burst that made the node read late was logged as Redis unreachable,
        or as Redis cutting its subscriber), else as a loss."""
        if timed_out(proto):
            self.lost(generation, unanswered=which)
        else:
            self.lost(generation)

    def _subscriber_lost(self, generation: int, reader: Any) -> None:
        """
        The subscriber connection closed.  Redis closes it alone when the
        node falls too far behind the channel (C{client-output-buffer-limit
        pubsub}; before, a node stopped 10 s was logged as "Redis ...
        unreachable"), and when it goes, the command connection goes as
        well (its loss may be seen a turn later): the command connection is
        asked a C{PING} first.  Answered, Redis is there and closed the
        subscriber, and the loss is said so; not, it is a loss as any.  One
        the node's own reply timeout ended (L{timed_out}) is said as that.
        """
        cmd = self._cmd
        if generation != self._generation or self._stopped or cmd is None:
            return
        if timed_out(reader):
            self.lost(generation, unanswered="subscriber")
            return
        probe: Deferred[Any] = cmd.execute_command("PING")
        probe.addTimeout(self.reply_timeout, self.reactor)
        probe.addCallbacks(lambda _: self.lost(generation, subscriber_cut=True),
                           lambda _: self.lost(generation))

    def _note_down(self, why: str, misconfigured: str | None = None,
                   subscriber_cut: bool = False, unanswered: str | None = None) -> None:
        """Redis is out of reach (C{why}), or, while the node runs, the
        database is not one it can run on (C{misconfigured}: said as
        that, once per reason, not as Redis unreachable), or Redis closed
        the node's subscriber connection while answering its commands
        (C{subscriber_cut}: L{_subscriber_lost}), or the node's own reply
        timeout ended its C{unanswered} connection (L{_connection_lost})."""
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
            if subscriber_cut:
                self.log.warn(
                    "cluster: Redis at {redis} closed this node's subscriber connection while "
                    "answering its commands (Redis does so to a subscriber too far behind the "
                    "channel, past its client-output-buffer-limit pubsub, and at CLIENT KILL: "
                    "Redis's own log says which; docs/cluster.md, \"How Redis must be "
                    "configured\"); new registrations are refused until it has reconnected "
                    "and caught up from the stream", redis=self.target.display)
                return
            if unanswered is not None:
                self.log.error(
                    "cluster: this node ended its {which} connection to Redis at {redis}: an "
                    "answer was not read within its reply timeout ({t:g} s: a third of "
                    "--node-timeout, at least 2 s), as when Redis does not answer or this "
                    "node reads late (busy with a burst: a larger --node-timeout gives it "
                    "longer); new registrations are refused, reconnecting with backoff",
                    which=unanswered, redis=self.target.display, t=self.reply_timeout)
                return
            self.log.error(
                "cluster: Redis at {redis} unreachable ({why}); new registrations are "
                "refused, reconnecting with backoff", redis=self.target.display, why=why,
            )

    def _tls_failure(self) -> str | None:
        """Why TLS ended one of the connections, if it did (L{tls_failure})."""
        for proto in (self._cmd, self._reader, *self._opening):
            why = tls_failure(proto, self.target)
            if why is not None:
                return why
        return None

    def _drop_connections(self) -> None:
        """Abort the connections still open (a lost one is left alone:
        Twisted's TLS layer raises at an abort after its loss)."""
        for proto in (self._cmd, self._reader, *self._opening):
            # txredisapi's connected: 0 from its connectionLost on.
            if proto is not None and proto.transport is not None and proto.connected:
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

    def append(self, event: str, bounded: bool = False) -> object:
        # The event last: what a refusal hands back (see _not_acked).
        bound = self.stream_bound.bytes if bounded else 0
        return self._queue(("EVALSHA", APPEND_SHA, 1, STREAM, self.channel, bound, event))

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
            self.reading.sent_since_load = True
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
        if self.wrong_database(failure, generation):
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

    def drop_lost_history(self, end: str | None) -> None:
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
        self.lost(self._generation, f"Redis forgot the {which} script")

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
        if not self.wrong_database(failure, generation):
            self.log.debug("heartbeat: {e}", e=failure.getErrorMessage())

    def _untrimmed(self, why: str) -> None:
        """A snapshot could not be written, so the stream is not trimmed:
        said at most once every L{UNTRIMMED_WARN_EVERY} seconds, with what to
        check (the stream grows until Redis takes the snapshot again)."""
        if self._untrimmed_warn.allow(self.reactor.seconds()) is None:
            return
        self.log.warn("cluster: the snapshot could not be written, so the event stream "
                      "({stream}) cannot be trimmed and Redis's memory is not freed: "
                      "{why}; check Redis's used_memory against its maxmemory (INFO memory), "
                      "and that it takes writes (MISCONF: its disk; READONLY: a replica)",
                      stream=STREAM, why=why)

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
        # Refused (OOM, say): the others are not judged (that writes too),
        # but the snapshot is still written and the stream trimmed: under
        # OOM that is what frees Redis's memory.
        refused = await _refusal(self.leases.renew(cmd))
        epoch = self.reading.epoch
        if epoch is not None and await cmd.execute_command("GET", EPOCH) != epoch:
            # FLUSHDB or FLUSHALL without a restart: the connections stay,
            # so the new epoch is seen (and handled) on a new one.
            if cmd is self._cmd:
                self.log.warn("cluster: Redis's epoch key changed or is gone; reconnecting")
                self.lost(self._generation, "Redis lost its data (FLUSHDB?)")
            return
        now = self.reactor.seconds()
        if refused is None:
            await self.leases.judge(cmd, now)
        # Each on its own: a refused write (the retention or --stream-bytes
        # recorded where missing, under OOM) skips neither the prune nor
        # the snapshot, which free a full Redis.
        followed = await _refusal(self.pruning.follow(cmd))
        bound = await _refusal(self.stream_bound.follow(cmd))
        pruned = await _refusal(self.pruning.prune(cmd, now))
        refused = refused or followed or bound or pruned
        if self.reading.caught_up and self.snapshots.due(now):
            await self._snapshot(cmd, now)
        if refused is not None:
            raise refused

    async def _snapshot(self, cmd: Any, now: float) -> None:
        try:
            written = await self.snapshots.write(cmd, now)
        except txredisapi.ResponseError as e:
            self._untrimmed(str(e))
            return
        if not written and cmd is self._cmd:
            self._scripts_forgotten("snapshot")

    # -- the history's store (MessageStore) ----------------------------------------------

    def append_entry(self, entry: Entry) -> None:
        current = self.state.replica.current
        if current is None or current[1] != self.state.node or self.state.replica.replaying:
            return  # the sender's node writes it (once: not when rebuilding)
        self._queue(history_write(history_row(current[0], entry.nick, entry.text)))

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
               and (self._cmd is not None or self.reading.started)
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


async def _refusal(step: Awaitable[Any]) -> Exception | None:
    """Run a heartbeat's C{step}: Redis's refusal of it
    (C{txredisapi.ResponseError}), or C{None}."""
    try:
        await step
    except txredisapi.ResponseError as e:
        refused: Exception = e
        return refused
    return None


def _cause(failure: Any) -> Any:
    """The failure a C{defer.FirstError} (a C{gatherResults} of commands)
    wraps, however deep: its own message is the inner failure's C{repr},
    traceback included, which is no log line."""
    while failure.check(defer.FirstError):
        failure = failure.value.subFailure
    return failure
