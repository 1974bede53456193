"""
L{ClusterState}: the connection layer's L{ChatState} in cluster mode.

A command becomes an event handed to the L{EventLog}; it is decided when the
log hands it back and the L{Replica} applies it, and the C{Deferred} the
command returned fires then (with the hub's error, if any, as a failure).
This module knows nothing of Redis: the log is whatever delivers the cluster's
events in one order (L{twisted_chat.server.cluster.redislog} in production, a
list in the unit tests).

A command waits for the log at most C{wait} seconds (C{--redis-wait}) from
when its line arrived (a line held behind another command, or behind a
report of its address's lobby budget, has waited part of it already:
C{arrived} on its connection); the node holds at most C{max_waiting} bytes
of commands waiting (C{--redis-queue}).
A command that finds that full, or whose wait ends before its event was
written to the log, is taken back and answered "not sent" (C{RETRY
unavailable} for a registration, C{ERROR unavailable} for the rest).  One
whose event was written but not confirmed (Redis went away before it
answered) may be in the log already: it is never taken back (the log resends
it and the replicas apply it once), and its user is told C{ERROR
unconfirmed} when the wait ends; if its decision is an error, that error is
sent when it comes.  A registration in that state stays waiting (the
connection's C{--nick-timeout} ends that wait).  One that Redis took and
then lost (L{lost_commands}) is answered as not sent when the log sees the
loss: it takes effect nowhere.

The events the node appends for itself, not for a command (a user's
C{leave}, a C{dead}, a C{tick}, a C{hello}), are never lost while the process
lives: while the log is out of reach they wait in it (L{EventLog.append});
one the log refuses (L{refused}) is kept, at most one per user (a
C{leave}), per node (a C{dead}), one C{tick} and one C{hello}, and appended
again every L{KEPT_RETRY} seconds, under a new sequence number (so that no
replica takes it for a resend of something older) until the log takes it.
A C{hello} says "this node's users are exactly these": it is appended again
only once nothing of this node's is on its way to the log or in it unread
(L{EventLog.own_events_read}), so that it lists them as of the log's end.
"""

from __future__ import annotations

import heapq
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from twisted_chat import wire
from twisted_chat.server import logs
from twisted_chat.server.cluster.own import OwnMembers
from twisted_chat.server.cluster.remote import RemoteConn
from twisted_chat.server.cluster.replica import Replica, invite_limits_fields
from twisted_chat.server.config import ClusterConfig
from twisted_chat.server.history import History
from twisted_chat.server.hub import Hub, HubError, HubSettings, Listener, State, User
from twisted_chat.server.metrics.histogram import Buckets
from twisted_chat.server.output.fanout import Member
from twisted_chat.server.state import Outcome, PairsShown, StateUnavailable
from twisted_chat.wire import ErrorCode

__all__ = ["ClusterState", "EventLog", "NodeConnections"]

# Seconds from a command to its decision (--metrics), up to --redis-wait's default.
DECISION_SECONDS_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                           0.5, 1.0, 2.5, 5.0, 10.0)

# --redis-wait's and --redis-queue's defaults (ClusterConfig's).
_DEFAULTS = ClusterConfig()

# Events that may take out or detach users other than a leave's: after one,
# every leave under way is looked at (ClusterState._forget_left).  A
# registration only adds (its nick taken: refused), so it is not one.
_TAKE_OUT = frozenset(("hello", "dead"))

# An invitation's expiry is applied by the first event past its time; the
# node appends a tick this long after it falls due (and never more often).
TICK_SLACK = 0.02

#: How often the node appends again the events of its own the log refused.
KEPT_RETRY = 1.0

# The answer to a command Redis lost after taking it (L{ClusterState.lost_commands}):
# taken before the loss, the nodes that applied it then showed its lines;
# taken after Redis had lost all its data, before the node saw it, none did.
_LOST = ("lost: the chat's store lost it after taking it, so it has no effect "
         "(some may have seen it before the loss); send it again")
_LOST_UNSEEN = ("lost: the chat's store had lost its data when it took it, so it has "
                "no effect and nobody saw it; send it again")


class EventLog(Protocol):
    def append(self, event: str, bounded: bool = False) -> object:
        """Append C{event} (JSON) to the cluster's log; in order, never lost
        while this process lives (resent after a reconnection if need be).
        C{bounded}: a command's, which the log may refuse while it holds
        more than C{--stream-bytes} (answered as any refusal).
        @return: a ticket for L{withdraw}."""

    def withdraw(self, ticket: object) -> bool:
        """Take back an appended event that has not been written to the log
        yet (true); false when it may be in the log already (it stays, and
        is applied once)."""

    def renamed(self, node: str) -> None:
        """The node goes on under the new id C{node} (L{ClusterState.missed},
        or declared dead): called before it can append anything."""

    def own_events_read(self) -> bool:
        """Whether the log is open and holds no event of this node's that
        the replica has not applied, nor will (none is being written): then
        an event appended now goes after all of them."""

    def applied(self) -> None:
        """Called after each batch of events is applied (the log settles
        then what waited for the replica to read that far)."""

    def command_waits(self) -> None:
        """A command of this node's now waits for its decision, until
        L{ClusterState.first_deadline} at the latest (a log out of reach
        tries to reconnect before then)."""


class NodeConnections(Protocol):
    """What the node tells the layer that holds its connections (the
    factory: L{twisted_chat.server.cluster.service.FactoryHooks})."""

    def lost(self) -> None:
        """The cluster has declared this node dead."""

    def reloaded(self) -> None:
        """The replica and the history have been loaded (at start, and again
        after L{ClusterState.missed}): what the listener built from the
        history before is stale."""

    def rebuilt(self) -> None:
        """The replica changed without telling the listener (rebuilt after a
        loss, a hello's quiet part): what the listener built from it (the
        user list, the history) is stale."""

    def rebound(self, conn: Any, user: User) -> None:
        """C{conn}, a connection of this node's, is now the L{User} C{user}
        (the replica was rebuilt: the hub holds a new object)."""

    def displaced(self, conn: Any) -> None:
        """End C{conn}, a connection of this node's (after its BYE line,
        unless it was closing already), and let go of it: its user's nick
        went to someone else while Redis lost data."""


@dataclass(slots=True, eq=False)
class _Waiting:
    """A command of this node's waiting for its event to come back."""

    conn: Any
    answer: Deferred[Any] | None  # None once told "unconfirmed"
    ticket: object
    size: int
    registration: bool
    since: float  # when it was asked (the reactor's time)


class ClusterState:
    log = logs.logger()

    def __init__(
        self,
        node: str,
        listener: Listener,
        history: History,
        settings: HubSettings,
        reactor: IReactorTime,
        connections: NodeConnections,
        wait: float = _DEFAULTS.wait,
        max_waiting: int = _DEFAULTS.max_waiting,
    ) -> None:
        """@param settings: the L{Hub}'s (all replicas of a cluster must be
        given the same).
        @param connections: what is told of the loss, reload or rebuild of
        the replica (the connections' layer).
        @param wait: how long a command may wait for the log (see the
        module's docstring); C{max_waiting}: the bytes of commands waiting."""
        self.node = node
        self.reactor = reactor
        self.connections = connections
        self.wait = wait
        self.max_waiting = max_waiting
        #: The bytes of this node's commands waiting for the log.
        self.waiting_bytes = 0
        # The invitation's settings are carried in each PAIR event: the
        # inviter's node's values decide it on every replica, whatever the
        # others' options (a rolling change).
        self.settings = settings
        # The replica holds every user of the cluster; this node writes to
        # its own only, so its fan-out walks their index (own.py).
        self.own = OwnMembers(listener)
        #: What this node's connections were shown of their partner lately
        #: (where a line held behind a command goes: L{_meant}).
        self.pairs_shown = PairsShown()
        self.replica = Replica(node, self.own, history, self, settings)
        self.own.hider = self.replica.afterloss
        self.hub: Hub = self.replica.hub
        self.events: EventLog | None = None
        #: Whether new users may register (the log is reachable).
        self.available = False
        self.closing = False
        self._k = 0
        self._pending: dict[int, _Waiting] = {}
        # When each waiting command's wait ends (a heap: a line held behind
        # others arrived before the commands asked meanwhile), and one timer
        # for the first (its getTime()): no timer per command.  Decided
        # commands leave it from the top, or when their time comes.
        self._deadlines: list[tuple[float, int]] = []
        self._wait_call: IDelayedCall | None = None
        self._tick_call: IDelayedCall | None = None
        self._tick_due: float | None = None
        # A tick that fell due while the log was out of reach (its due time).
        self._tick_dropped: float | None = None
        # This node's own events the log refused (not a command's), to be
        # appended again: by what they are about, oldest first.
        self._kept: dict[str, dict[str, Any]] = {}
        self._kept_call: IDelayedCall | None = None
        # Detached users (Redis lost their registration) who left before
        # their node's hello brought them back: how (reason, text), by uid,
        # for their leave once it has (see orphaned).
        self._left_detached: dict[str, tuple[str, str]] = {}
        # This node's users whose leave was appended and not yet applied:
        # how they left (reason, text), by uid.  Redis may lose that leave
        # after taking it (nothing resends it): after this node's hello,
        # which lists them as its replica still has them, they leave again.
        self._leaving: dict[str, tuple[str, str]] = {}
        # For --metrics (cluster/metrics.py): events handed over by the log
        # (resends included) and the reads that brought them; how long this
        # node's commands took to be decided.
        self.events_read = 0
        self.batches_read = 0
        self.decision_seconds = Buckets(DECISION_SECONDS_BOUNDS)
        #: The cluster's live nodes, this one included, as of the log's last
        #: look at their leases (0 before it looked).
        self.live_nodes = 0
        # lobby_members' tuple with after-loss extras, and the two parts it
        # was made of.
        self._members: tuple[Member, ...] = ()
        self._members_own: tuple[Member, ...] = ()
        self._members_extra: tuple[Member, ...] = ()
        self._members_deaf: tuple[Member, ...] = ()

    # -- the commands (ChatState) ---------------------------------------------

    def forget_members(self) -> None:
        # The own index let go of its tuple at the departure (own.py); a
        # displaced connection is among the extras only.
        self._forget_extra()

    def _forget_extra(self) -> None:
        self._members = self._members_own = self._members_extra = self._members_deaf = ()

    def lobby_members(self) -> Sequence[Member]:
        """The own index's tuple (the same object while it does not change:
        sendqueue.DirectPass keeps its partition for it), and after a loss
        corrected by the rule (L{batches.in_lobby_batch}) for the users it
        may have an exception for: the after-loss extras after it, and
        without those shown a pair the replica lacks (L{AfterLoss.deaf}):
        then the same tuple too while no part changed (the extras and the
        deaf, rare and few, are listed anew each time to be compared)."""
        own = self.own.lobby_members()
        afterloss = self.replica.afterloss
        # After a loss: those the replica lacks, or pairs, who hear it still.
        extra = afterloss.lobby_conns()
        if not extra and not afterloss.deaf:
            if self._members_extra or self._members_deaf:  # gone: let go of them
                self._forget_extra()
            return own  # the steady case: nothing built
        deaf = afterloss.lobby_missed()
        if (own is not self._members_own or not _same(extra, self._members_extra)
                or not _same(deaf, self._members_deaf)):
            kept = own if not deaf else tuple(m for m in own if all(m is not d for d in deaf))
            self._members = kept + extra
            self._members_own, self._members_extra, self._members_deaf = own, extra, deaf
        return self._members

    def paired_users(self) -> list[User]:
        """The own index's, and after a loss corrected by the rule as
        L{lobby_members} is (AfterLoss.pairs_heard, pairs_extra)."""
        users = self.own.paired_users()
        afterloss = self.replica.afterloss
        if afterloss.hearing:  # rare: after Redis lost data
            # Shown their pair's end: JOINED and LEFT reach them with the
            # lobby's batch (lobby_members), not twice.
            heard = set(afterloss.pairs_heard())
            users = [user for user in users if user not in heard]
        if afterloss.detached or afterloss.deaf:
            # Shown a pair: JOINED and LEFT as paired users get them.
            users += afterloss.pairs_extra()
        return users

    def counts(self) -> tuple[int, int]:
        online, lobby = self.own.counts()
        afterloss = self.replica.afterloss
        detached = afterloss.detached_users()
        lobby += sum(user.state is State.LOBBY for user in detached)
        # After a loss, each as it was shown: the deaf paired, the hearing
        # in the lobby (the one dict is replaced, never changed in place).
        lobby += sum(user.partner is not None for user in afterloss.hearing.values())
        return online + len(detached), max(lobby - len(afterloss.deaf), 0)

    def holds(self, user: User) -> bool:
        return not isinstance(user.conn, RemoteConn)

    def hears_lobby(self, user: User) -> bool:
        return self.replica.afterloss.hears_lobby(user)

    def misses_lobby(self, user: User) -> bool:
        return self.replica.afterloss.misses_lobby(user)

    def _encode(self, event: dict[str, Any]) -> tuple[int, str]:
        self._k += 1
        event["n"] = self.node
        event["k"] = self._k
        return self._k, json.dumps(event, separators=(",", ":"), ensure_ascii=False)

    def _append(self, event: dict[str, Any]) -> int:
        assert self.events is not None, "no event log attached"
        k, text = self._encode(event)
        self.events.append(text)
        return k

    def _ask(self, event: dict[str, Any], conn: Any) -> Deferred[Any]:
        assert self.events is not None, "no event log attached"
        registration = event["t"] == "reg"
        k, text = self._encode(event)
        size = len(text.encode())
        if self.waiting_bytes + size > self.max_waiting:
            # Never appended: the gap in this node's sequence is harmless.
            return fail(_not_sent(
                registration,
                "too many commands are waiting for the chat's store on this server"))
        now = self.reactor.seconds()
        due = self.deadline(conn, now)
        if due <= now:
            return fail(self.too_late(registration))
        waiting = _Waiting(conn, Deferred(), self.events.append(text, bounded=True), size,
                           registration, now)
        self.waiting_bytes += size
        self._pending[k] = waiting
        heapq.heappush(self._deadlines, (due, k))
        call = self._wait_call
        if call is None or (call.active() and due < call.getTime()):
            if call is not None:
                call.cancel()
            self._wait_call = self.reactor.callLater(due - now, self._waits_end, due)
        if not self.available:
            self.events.command_waits()  # Redis out of reach: its retry in time
        assert waiting.answer is not None
        return waiting.answer

    def first_deadline(self) -> float | None:
        """When the first wait of this node's commands waiting for their
        decision ends (reactor time), if any waits."""
        self._trim()
        return self._deadlines[0][0] if self._deadlines else None

    def deadline(self, conn: Any, now: float | None = None) -> float:
        """Its wait runs from when its line arrived (docs/cluster.md: what
        is held behind a command is answered within --redis-wait too)."""
        if now is None:
            now = self.reactor.seconds()
        arrived: float = conn.arrived()
        return min(arrived, now) + self.wait

    def too_late(self, registration: bool = False) -> Exception:
        """Also the answer of a command taken back because its wait ended
        before the log had it (a registration's, if C{registration}): what
        happened, as the node knows it now (Redis out of reach, or there
        and too slow to take it)."""
        wait = f"{self.wait:g} seconds"
        if self.available:
            return _not_sent(registration, f"the chat's store did not take it within {wait}")
        return _not_sent(registration,
                         f"the chat's store is out of reach and did not take it within {wait}")

    def _waits_end(self, at: float) -> None:
        """The timer for the commands whose wait ends at C{at} (or before).
        (Answering one may bring another command: C{_wait_call} is still set
        meanwhile, so that one arms no timer; this one's next is armed below,
        for the first wait to end.)"""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= at:
            self._waited(heapq.heappop(deadlines)[1])
        self._trim()
        self._wait_call = None
        if deadlines:
            due = deadlines[0][0]
            delay = max(due - self.reactor.seconds(), 0.0)
            self._wait_call = self.reactor.callLater(delay, self._waits_end, due)

    def _trim(self) -> None:
        """Drop the decided commands from the top of the deadlines."""
        deadlines, pending = self._deadlines, self._pending
        while deadlines and deadlines[0][1] not in pending:
            heapq.heappop(deadlines)

    def _waited(self, k: int) -> None:
        """Command C{k} has waited C{wait} seconds for the log."""
        waiting = self._pending.get(k)
        if waiting is None or waiting.answer is None:
            return
        assert self.events is not None
        if self.events.withdraw(waiting.ticket):
            self._forget(k)
            waiting.answer.errback(self.too_late(waiting.registration))
        elif not waiting.registration:
            answer, waiting.answer = waiting.answer, None
            answer.errback(HubError(
                ErrorCode.UNCONFIRMED,
                "the chat lost touch with its store as this command was being sent; "
                "it takes effect once when the store is back (its result then)",
            ))
        # A registration whose event may be in the log waits for its decision.

    def _forget(self, k: int) -> _Waiting | None:
        waiting = self._pending.pop(k, None)
        if waiting is not None:
            self.waiting_bytes -= waiting.size
            if self._deadlines and self._deadlines[0][1] == k:
                self._trim()
        return waiting

    def register(self, nick: str, conn: Any, address: str, source: str = "") -> Deferred[User]:
        if not self.available or self.closing:
            return fail(StateUnavailable())
        return self._ask({"t": "reg", "nick": nick, "a": address, "s": source}, conn)

    def leave(self, user: User, reason: str, text: str = "") -> None:
        if self.replica.uids.get(user) in self._leaving:
            # Its leave is on its way (a connection's second word on it: its
            # close after a FIN or a BYE).  That one is never lost while the
            # process lives, and goes again if Redis loses it (leave_again):
            # a second would cost Redis a command and every node an event.
            self.pairs_shown.forget(user.conn)  # a pairing shown since the first
            return
        self._append_leave(user, reason, text)

    def _append_leave(self, user: User, reason: str, text: str) -> None:
        self.pairs_shown.forget(user.conn)  # its lines are all handled
        if self.closing:
            return  # this whole node is leaving (see stop)
        uid = self.replica.uids.get(user)
        if uid is None:
            detached = self.replica.afterloss.detached_uid(user)
            if detached is not None:
                # Its node's hello brings it back, its connection gone by
                # then: it leaves then (orphaned), as it left (the first
                # word on it: BYE's text, not the connection's loss after it).
                self._left_detached.setdefault(detached, (reason, text))
            return  # else gone already
        self._leaving.setdefault(uid, (reason, text))  # the first word on it
        self._append({"t": "leave", "u": uid, "r": reason, "x": text})

    def _command(self, user: User, event: dict[str, Any]) -> Outcome:
        if not self.holds(user):
            # Another node's user (its own node sends its commands), or one
            # of this node's that no connection holds (orphaned: it only
            # leaves): nothing is sent for it (and a RemoteConn has no
            # arrived() to bound a wait by).
            return None
        uid = self.replica.uids.get(user)
        if uid is None:
            # Redis lost data and the replica was rebuilt without this user:
            # its command goes after this node's hello, which brings it back.
            uid = self.replica.afterloss.detached_uid(user)
        if uid is None:
            return None  # the cluster has taken this user offline meanwhile
        event["u"] = uid
        if event["t"] == "say":
            event["p"] = self._meant(uid, user.conn)
        return self._ask(event, user.conn)

    def _meant(self, uid: str, conn: Any) -> str:
        """
        Where user C{uid}'s line (MSG) was meant to go: the partner its
        client was shown (its uid), or the lobby (""), as of when the line
        arrived (L{PairsShown}: a line held behind a command, through an
        outage, may be handled after the node wrote C{UNPAIRED} to its
        sender; after a loss, what was shown is L{AfterLoss.seen}).  A
        replica where that is no longer so delivers it nowhere
        (Replica._say).
        """
        current = self.replica.afterloss.seen(uid)[0]
        now = self.reactor.seconds()
        return self.pairs_shown.as_of(conn, conn.arrived(), current, now - self.wait)

    def pair_shown(self, user: User, before: User | None) -> None:
        """A C{PAIRED} or C{UNPAIRED} was written to C{user}, shown
        C{before} as its partner until then (None: the lobby)."""
        uid = ""
        if before is not None:
            # A partner gone in events Redis lost (a stand-in) by its nick
            # before the loss; else one no uid names (not the lobby).
            uid = (self.replica.uids.get(before)
                   or self.replica.afterloss.uid_before(before.nick) or "-")
        now = self.reactor.seconds()
        self.pairs_shown.changed(user.conn, now, uid, now - self.wait)

    def as_meant(self, user: User) -> None:
        """Nothing: the line carries where it was meant (L{_meant}), and
        the replicas decide."""

    def say(self, user: User, text: str) -> Outcome:
        return self._command(user, {"t": "say", "x": text})

    def direct(self, user: User, nick: str, text: str) -> Outcome:
        return self._command(user, {"t": "dm", "to": nick, "x": text})

    def pair(self, user: User, nick: str) -> Outcome:
        self._paired_as_shown(user)
        settings = self.settings
        return self._command(user, {"t": "pair", "to": nick, "it": settings.invite_timeout,
                                    **invite_limits_fields(settings.invite_limits)})

    def accept(self, user: User, nick: str) -> Outcome:
        self._invited_as_shown(user, nick)
        return self._command(user, {"t": "acc", "to": nick})

    def _paired_as_shown(self, user: User) -> None:
        """One of this node's users shown a pair the rebuilt replica lacks
        (L{AfterLoss.deaf}) is answered as the paired user it was shown to
        be (a pairing would leave it never told that pair ended)."""
        afterloss = self.replica.afterloss
        if afterloss.misses_lobby(user):
            partner = afterloss.shown_partner(self.replica.uids[user])
            if partner is not None:
                raise HubError(ErrorCode.BUSY, f"you are paired with {partner.nick}; UNPAIR first")

    def _invited_as_shown(self, user: User, nick: str) -> None:
        """One of L{AfterLoss.deaf}, shown paired, was shown no open
        invitation (its pairing ended them; one since is kept from it:
        L{AfterLoss.hide_invite}): its ACCEPT and REJECT are answered as
        a paired user's, ERROR no-invite."""
        if self.replica.afterloss.misses_lobby(user):
            online = self.hub.find(nick)
            raise HubError(ErrorCode.NO_INVITE, "you have no open invitation from "
                           f"{online.nick if online is not None else nick}")

    def reject(self, user: User, nick: str) -> Outcome:
        self._invited_as_shown(user, nick)
        return self._command(user, {"t": "rej", "to": nick})

    def unpair(self, user: User) -> Outcome:
        return self._command(user, {"t": "unp"})

    # -- what the log and the node's own machinery call ----------------------

    def deliver(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Apply events, in the log's order."""
        apply = self.replica.apply
        for eid, event in batch:
            apply(eid, event)
        self.events_read += len(batch)
        self.batches_read += 1
        if self._leaving:
            self._forget_left(batch)
        self._schedule_tick()
        if self.events is not None:
            self.events.applied()

    def _forget_left(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        """Forget the leaves of this node's that are applied: their users
        are out of the replica (and not detached, whose hello brings them
        back).  Only the batch's leaves are looked at, unless it has an
        event that takes out or detaches others (L{_TAKE_OUT}): looking at
        every leave under way after each event made n departures cost
        n * n / 2."""
        leaving, replica = self._leaving, self.replica
        if any(event.get("t") in _TAKE_OUT for _, event in batch):
            uids = list(leaving)
        else:
            uids = [str(event.get("u")) for _, event in batch if event.get("t") == "leave"]
        for uid in uids:
            if (uid in leaving and uid not in replica.members
                    and not replica.afterloss.is_detached(uid)):
                del leaving[uid]

    def refused(self, event: str) -> None:
        """
        The log refused C{event} itself (Redis answered an error to the
        write: it is not in the log and never will be): the command is
        forgotten and its user answered "not sent" (C{RETRY unavailable}
        for a registration, C{ERROR unavailable} for the rest), also when
        it had been told C{ERROR unconfirmed} already.  An event of the
        node's own (not a command's) is kept and appended again later
        (L{_keep}).  A resend refused whose first copy (its answer lost
        with a connection) may be in the log is handed over only once the
        replica has applied the log up to where it ended after the refusal:
        a command whose first copy was there has been decided by then, and
        its refusal finds nothing to answer.
        """
        try:
            data = json.loads(event)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        waiting = self._forget(int(data.get("k", 0))) if data.get("n") == self.node else None
        if waiting is None:
            self._keep(data)  # none of a command's: one of the node's own
            return
        self._answer(waiting, _not_sent(waiting.registration,
                                        "the chat's store refused to store it"))

    def _answer(self, waiting: _Waiting, error: Exception) -> None:
        """Answer a forgotten command with C{error}: its user waits for it,
        or, told C{ERROR unconfirmed} already, is sent it as a line (a
        registration is never told that)."""
        if waiting.answer is not None:
            answer, waiting.answer = waiting.answer, None
            answer.errback(error)
        elif isinstance(error, HubError) and not getattr(waiting.conn, "closing", True):
            waiting.conn.write(wire.error(error.code, error.text))

    def waiting_tickets(self) -> list[object]:
        """The log's tickets of this node's commands waiting for a decision."""
        return [waiting.ticket for waiting in self._pending.values()]

    def lost_commands(self, tickets: Iterable[object], unseen: Iterable[object] = ()) -> None:
        """
        Redis lost the events of these commands (by their tickets) after
        taking them, before this node's replica applied them: no replica
        will (those that did before the loss are rebuilt without them), and
        the log does not resend what Redis took.  Each is forgotten and
        answered: C{ERROR unavailable} (C{RETRY unavailable} for a
        registration), also after an C{ERROR unconfirmed}, whose "exactly
        once" Redis broke: it has no effect (though the nodes that applied
        it before the loss showed its lines).  Those in C{unseen} were
        taken after Redis had lost its data (C{FLUSHALL}, noticed later):
        no node showed them (each replica sees the loss before applying
        one, and its user is unknown until its node's hello), and their
        answer says so.
        """
        lost, quiet = set(tickets), set(unseen)
        for k, waiting in list(self._pending.items()):
            if waiting.ticket in lost:
                self._forget(k)
                if waiting.registration:
                    error: Exception = StateUnavailable("the chat's store lost it after taking it")
                else:
                    error = HubError(ErrorCode.UNAVAILABLE,
                                     _LOST_UNSEEN if waiting.ticket in quiet else _LOST)
                self._answer(waiting, error)

    def _keep(self, event: dict[str, Any]) -> None:
        """Keep an event of the node's own that the log refused, to append it
        again (see L{refused}).  At most one per user, per node, one tick and
        one hello; a command's (answered already) or a user's of a former id
        of this node (gone with it) is not kept."""
        kind = event.get("t")
        if kind == "leave":
            key = f"leave:{event.get('u')}"
        elif kind == "dead":
            key = f"dead:{event.get('node')}"
        elif kind in ("tick", "hello"):
            key = str(kind)
        else:
            return
        if kind in ("leave", "hello") and event.get("n") != self.node:
            return
        if kind != "hello":
            event.pop("n", None)  # a hello keeps the id it is about (see _append_kept)
        event.pop("k", None)
        self._kept.setdefault(key, event)  # the first made (a leave's reason)
        self._retry_kept()

    def _retry_kept(self) -> None:
        """Append what is kept again in L{KEPT_RETRY} seconds (one timer)."""
        if self._kept and self._kept_call is None:
            self._kept_call = self.reactor.callLater(KEPT_RETRY, self._append_kept)

    def _append_kept(self) -> None:
        """Append again what the log refused, in the order it was made, each
        under a new sequence number (a refusal is an answer: it is not in the
        log, and under its old number a replica would skip it if anything
        newer of this node's was applied meanwhile).  What has become moot
        meanwhile is dropped; a hello lists the node's users as they are
        now, and goes only once the node has read back all of its own
        events the log has (L{EventLog.own_events_read}: a leave taken but not yet
        applied, say, must not come after a hello still listing the user):
        until then it stays kept.  What the
        log refuses again comes back through L{refused}.
        (Each of these events is idempotent, a second leave or dead finding
        nobody: one that did reach the log on an earlier connection, its
        answer lost and its resend refused, is harmless appended again.)"""
        self._kept_call = None
        kept, self._kept = self._kept, {}
        replica = self.replica
        for key, event in kept.items():
            kind = event["t"]
            if kind == "hello":
                if event.get("n") != self.node or self.closing:
                    continue  # about a former id of this node's, or it is leaving
                assert self.events is not None
                if not self.events.own_events_read():
                    self._kept[key] = event
                    continue
            if kind == "leave" and event.get("u") not in replica.members:
                continue  # gone meanwhile (its node declared dead, say)
            if kind == "dead" and event.get("node") in replica.dead:
                continue  # declared dead meanwhile
            if kind == "tick" and replica.next_due() is None:
                continue  # nothing left to fall due
            if kind == "hello":
                event = {"t": "hello", "users": replica.local_users()}
            self._append(event)
        self._retry_kept()

    def keeping(self) -> bool:
        """Whether events the log refused are kept, to be appended again."""
        return bool(self._kept)

    def node_dead(self, node: str) -> None:
        """Tell the cluster that C{node} is gone (idempotent: a second
        C{dead} for the same node finds nobody left)."""
        self._append({"t": "dead", "node": node})

    def hello(self, users: list[list[Any]] | None = None) -> None:
        """Redis lost data: tell the log who this node's users are (C{users},
        as L{rebuild} returned them; by default as the replica has them),
        before anything this node still has to resend; a hello kept from
        before is moot."""
        self._kept.pop("hello", None)
        if users is None:
            users = self.replica.local_users()
        if self.closing:
            # Its dead takes its users out: listed in one, they leave where
            # they were shown online (AfterLoss.shown_back), where a hello
            # ahead of it would show the others a JOINED, then a LEFT.
            self._append({"t": "dead", "node": self.node, "users": users})
            return
        self._append({"t": "hello", "users": users})

    def leave_again(self) -> None:
        """
        After L{hello}, and after what this node still has to resend (its
        sequence numbers are older, and a replica skips an event numbered
        below one of its node's it applied): a user whose leave Redis lost
        (taken, not yet read back here: the replica still has it, and so
        did the hello) leaves again, as it left.  One whose leave was still
        on its way finds nobody the second time.  (One the rebuild detached
        leaves when the hello brings it back: L{orphaned}.)
        """
        if self.closing:
            return  # its dead takes its users out
        members = self.replica.members
        for uid, (reason, text) in list(self._leaving.items()):
            member = members.get(uid)
            if member is not None and member.node == self.node:
                self._append({"t": "leave", "u": uid, "r": reason, "x": text})

    def rebuild(self, snapshot: dict[str, Any] | None,
                entries: list[tuple[str, dict[str, Any]]],
                reload: Callable[[], None] | None = None) -> list[list[Any]]:
        """
        Redis lost events this node's replica applied: rebuild it from what
        Redis kept (L{Replica.rebuild}); this node's users keep their
        connections.  Returns this node's users as they were (for its
        hello).  Invitations' ticks are armed again from the rebuilt state.
        C{reload}: replaces the history with what Redis kept (see
        L{Replica.rebuild}).
        """
        self._cancel_tick()
        users = self.replica.rebuild(snapshot, entries, reload)
        self._schedule_tick()
        return users

    def log_open(self) -> None:
        """The log is reachable (again): registrations are taken, and a
        tick dropped while it was not (see L{_tick}) is appended now (in a
        quiet cluster no event would arm it again, and invitations would
        stop expiring); after this turn, behind what the log resends."""
        self.available = True
        due, self._tick_dropped = self._tick_dropped, None
        if due is None or self.closing:
            return
        self._cancel_tick()
        self._tick_due = due
        self._tick_call = self.reactor.callLater(0, self._tick)

    def stopping(self) -> None:
        """
        This node stops cleanly: its users leave the cluster at once, in one
        event (C{LEFT <nick> disconnected} for the others), and no more
        commands are taken.  The C{dead} lists its users, as L{hello} does
        for a node stopping during a rebuild: a replica rebuilt after Redis
        lost data may lack some whose arrival its users were shown (their
        registrations lost), and this node cannot tell whether its hello
        brought them back there (kept after a refusal, or not sent: the node
        had not seen the loss yet); listed, they leave there too
        (L{AfterLoss.shown_back}; elsewhere the list is not looked at).  A
        kept hello is moot: the C{dead} takes the users out.
        """
        if not self.closing:
            self.closing = True
            self._kept.pop("hello", None)
            self._append({"t": "dead", "node": self.node, "users": self.replica.local_users()})

    def _schedule_tick(self) -> None:
        due = self.replica.next_due()
        if due is None or self.closing:
            return
        if self._tick_call is not None and self._tick_call.active():
            if self._tick_due is not None and self._tick_due <= due:
                return
            self._tick_call.cancel()
        delay = max(due - self.replica.clock.seconds(), 0.0) + TICK_SLACK
        self._tick_due = due
        self._tick_call = self.reactor.callLater(delay, self._tick)

    def _cancel_tick(self) -> None:
        call, self._tick_call, self._tick_due = self._tick_call, None, None
        if call is not None and call.active():
            call.cancel()

    def _tick(self) -> None:
        due, self._tick_call, self._tick_due = self._tick_due, None, None
        if self.closing:
            return
        if self.available:
            self._append({"t": "tick"})
        else:
            self._tick_dropped = due  # log_open appends it

    def cancel_timers(self) -> None:
        if self._kept_call is not None and self._kept_call.active():
            self._kept_call.cancel()
        self._kept_call = None
        self._cancel_tick()
        if self._wait_call is not None and self._wait_call.active():
            self._wait_call.cancel()
        self._wait_call = None

    # -- Answers (the replica about this node's events) ------------------------

    def first_waiting(self) -> int | None:
        """The sequence number of this node's oldest command still waiting
        for its decision, if any."""
        return min(self._pending, default=None)

    def conn_for(self, k: int) -> Any:
        entry = self._pending.get(k)
        return None if entry is None else entry.conn

    def decided(self, k: int, result: object) -> None:
        entry = self._forget(k)
        if entry is None:
            return
        self.decision_seconds.observe(self.reactor.seconds() - entry.since)
        d = entry.answer
        if d is None:
            # Its user was told "unconfirmed": an error is still news.
            conn = entry.conn
            if isinstance(result, HubError) and not getattr(conn, "closing", True):
                conn.write(wire.error(result.code, result.text))
        elif isinstance(result, Exception):
            d.errback(result)
        else:
            d.callback(result)

    def orphaned(self, user: User) -> None:
        uid = self.replica.uids.get(user, "")
        how = self._left_detached.pop(uid, None) or self._leaving.get(uid)
        # Back with its connection gone: it leaves (again, if its leave was lost).
        self._append_leave(user, *(how or ("disconnected", "")))

    def rebound(self, conn: Any, user: User) -> None:
        self.connections.rebound(conn, user)

    def displaced(self, conn: Any, nick: str) -> None:
        # (A hello brings back or displaces its detached users one by one:
        # those still detached are the ones it has not come to yet.)
        self._left_detached = {uid: how for uid, how in self._left_detached.items()
                               if self.replica.afterloss.is_detached(uid)}
        if not getattr(conn, "closing", True):
            conn.write(wire.line(
                "BYE", "shutdown",
                text=f"the chat's store lost data and {nick} is someone else's now; "
                "connect again with another nick",
            ))
        self.connections.displaced(conn)

    def rebuilt(self) -> None:
        self.own.reindex(self.hub)
        self.connections.rebuilt()

    def lost(self) -> None:
        if not self.closing:
            old = self._rename()
            self.log.error(
                "the cluster declared this node ({old}) dead: its users were disconnected;"
                " going on as node {new}", old=old, new=self.node,
            )
            self.connections.lost()

    def missed(self) -> None:
        """
        The log no longer holds events this node has not applied (it was
        cut off from the log, or behind it, for longer than the log keeps
        them): its replica cannot be trusted, and neither can what its users
        were shown.  It goes on as a lost node does: its users are told
        C{BYE shutdown}, it takes a new id, and it tells the cluster that its
        old id is dead (the others may not have declared it so: its lease
        may have been renewed all along).  The replica is emptied, for the
        log to load the snapshot into it (L{Replica.restore}).
        """
        old = self._rename()
        self.log.error(
            "this node ({old}) missed events the cluster no longer keeps: its users were "
            "disconnected; going on as node {new}", old=old, new=self.node,
        )
        self.connections.lost()
        if not self.closing:
            self._append({"t": "dead", "node": old})
        self._cancel_tick()  # the restored replica arms its own
        self._tick_dropped = None
        self.replica.clear()

    def _rename(self) -> str:
        """Take a new id; return the old one."""
        old, self.node = self.node, new_node_id()
        self.replica.node = self.node
        self.replica.afterloss.forget_detached()  # told BYE with the others (lost)
        self._left_detached.clear()
        self._leaving.clear()
        assert self.events is not None
        self.events.renamed(self.node)
        # What was waiting was its old self's: taken back where it can
        # be.  Its users are about to be told BYE; a registration gets
        # RETRY (one that reaches the log after the death is skipped by
        # every replica: the old id is dead).
        for k, waiting in list(self._pending.items()):
            self._forget(k)
            self.events.withdraw(waiting.ticket)
            if waiting.registration and waiting.answer is not None:
                waiting.answer.errback(StateUnavailable())
        return old


def _same(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether C{a} and C{b} hold the same objects in the same order."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


def _not_sent(registration: bool, why: str) -> Exception:
    """The answer to a command that was taken back: it has no effect.
    C{why}: what happened, the same words in a command's C{ERROR
    unavailable not sent: ...} and a C{NICK}'s C{RETRY unavailable}
    (L{StateUnavailable}, login.unavailable_text)."""
    if registration:
        return StateUnavailable(why)
    return HubError(
        ErrorCode.UNAVAILABLE,
        f"not sent: {why}; send it again in a moment",
    )


def new_node_id() -> str:
    return secrets.token_hex(6)
