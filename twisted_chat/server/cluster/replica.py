"""
One node's replica of the cluster's state: a L{Hub} to which every event of
the cluster's log is applied, in the log's order.

Applying is deterministic: the hub's clock is a L{task.Clock} moved to each
event's time (the log's, not this machine's), invitation timers fire when an
event's time passes them (any node appends a C{tick} event when one is due),
and users are named in events by their registration's event id (C{uid}), so
every replica reaches the same decisions.  Only the lines differ: each
node's listener writes to its own connections; a user on another node has a
L{RemoteConn}, whose writes go nowhere.

Events are JSON objects.  Every event has C{t} (its type), C{n} (the node
that appended it) and C{k} (that node's sequence number: an event whose
C{k} is not above the last one applied from its node is a resend and is
skipped; a C{hello} is checked against its node's hellos only, see
L{Replica.apply}).  Types: C{reg} (nick, a: address), C{leave} (u, r: reason,
x: text), C{say} (u, x, p: where its sender meant it to go, see
L{Replica._say}), C{dm} (u, to, x), C{pair} (u, to, it: the
invitation timeout), C{acc} / C{rej} (u, to), C{unp} (u), C{tick}, and
C{dead} (node: every user of that node leaves, disconnected; users, from
a node stopping: its users, see L{AfterLoss.shown_back}), C{hello}
(users: the node's users, after Redis lost its data; a row each: id, nick,
address, partner's id, source, and the invitee's id of its outgoing
invitation: see L{AfterLoss.hello}).

A node id declared dead stays dead: every event of that id the log has
after its C{dead} (a registration the node sent before it learnt of its
death, a resend, anything) is skipped, by every replica alike.  Node ids are random and new at
every start and after every death (L{node.new_node_id}), never reused, so the
set forgets an id L{DEAD_KEEP} seconds (log time) after its death.

When Redis loses events a replica applied (its last ones, or all of its
data: a new epoch), the replica is rebuilt from what Redis kept
(L{Replica.rebuild}), as a node starting then builds it, so that every
replica decides what follows alike; its node's C{hello} then brings back
its users the kept state lacks (L{AfterLoss.detached}: the state kept
after a loss, and the hellos, are in L{afterloss}).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.task import Clock

from twisted_chat import wire
from twisted_chat.server import logs
from twisted_chat.server.cluster.afterloss import AfterLoss
from twisted_chat.server.cluster.listeners import SILENT, NotShownLeaving, Quiet
from twisted_chat.server.cluster.remote import RemoteConn
from twisted_chat.server.cluster.streamids import event_seconds, id_key
from twisted_chat.server.history import History
from twisted_chat.server.hub import (
    Hub,
    HubError,
    HubSettings,
    InviteLimits,
    Listener,
    NickTaken,
    User,
)
from twisted_chat.wire import ErrorCode

__all__ = ["Answers", "Member", "Replica"]

_log = logs.logger("twisted_chat.server.cluster.replica")

#: C{last_k}'s key for a node's last C{hello} (a node id has no C{:}).
HELLO = "hello:"

#: How long (log time) a dead node id is remembered: an event of that id
#: reaching the log later than this after its death (its node cut off from
#: Redis for that long, resending then) is applied again.
DEAD_KEEP = 24 * 3600.0

#: The answer to the C{UNPAIR} of a user shown its pair's end in events
#: Redis then lost (L{AfterLoss.hearing}), which ends the rebuilt pair:
#: its earlier answers (C{ERROR busy} to a C{PAIR}) named that partner.
HEARD_END_TEXT = ("you are not paired: your pair with {} had already ended for you; "
                  "it is now over everywhere")

#: The answer to such a user's lobby C{MSG}, which went nowhere: its pair
#: with the partner named is not over everywhere yet (until its node's
#: hello).  Its start is any lobby line's refused for a pair
#: (wire.MEANT_FOR_LOBBY): clients settle a MSG by it.
HEARD_END_LINE_TEXT = (wire.MEANT_FOR_LOBBY + "{} when it came to be delivered: your pair "
                       "had ended for you, but the chat's store lost its end and it is not "
                       "over everywhere yet; send it again in a moment")


# What is restored (a snapshot's invitations, a pair a hello brings back)
# was decided already, under its inviter's node's limits: none applies.
NO_LIMITS = InviteLimits(max_invites=None, max_invites_per_source=None)


def _limit(value: object) -> int | None:
    """An invitation limit as a PAIR event carries it (null: none)."""
    return None if value is None else int(str(value))


def invite_limits_of(event: dict[str, Any]) -> InviteLimits | None:
    """The inviter's node's limits a C{pair} event carries (C{mi}, C{ms});
    C{None} for an event without them (of an older node)."""
    if "mi" not in event:
        return None
    return InviteLimits(max_invites=_limit(event["mi"]),
                        max_invites_per_source=_limit(event.get("ms")))


def invite_limits_fields(limits: InviteLimits) -> dict[str, int | None]:
    """C{limits} as a C{pair} event carries them (L{invite_limits_of})."""
    return {"mi": limits.max_invites, "ms": limits.max_invites_per_source}


@dataclass(slots=True)
class Member:
    user: User
    node: str
    uid: str


class Answers(Protocol):
    """What the replica tells its own node about the node's own events."""

    def conn_for(self, k: int) -> Any:
        """The connection whose registration is event C{k}, or C{None}."""

    def decided(self, k: int, result: object) -> None:
        """Event C{k} was applied: C{result} is a L{User} (a registration),
        an exception (L{HubError}, L{NickTaken}; any other: a bug, the
        event not done) or C{None}."""

    def orphaned(self, user: User) -> None:
        """A user of this node came online with no connection to hold it."""

    def lost(self) -> None:
        """The cluster declared this node dead: its users are gone."""

    def rebound(self, conn: Any, user: User) -> None:
        """After a rebuild, the connection C{conn} of this node's is C{user}'s
        (a new L{User} object, of the same id, the hub holds now)."""

    def displaced(self, conn: Any, nick: str) -> None:
        """After a rebuild, this node's C{hello} could not bring back the
        user of C{conn}: C{nick} is someone else's now (decided in the log's
        order, alike on every replica).  Its connection is to end."""

    def rebuilt(self) -> None:
        """The hub changed without telling the listener (a rebuild, a
        C{hello}'s quiet part): what the node built from it is stale."""


class Replica:
    def __init__(
        self,
        node: str,
        listener: Listener,
        history: History,
        answers: Answers,
        settings: HubSettings,
    ) -> None:
        self.node = node
        self.clock = Clock()
        self.hub = Hub(self.clock, history, listener, settings)
        #: The hub's listener as the replica keeps changes from it.
        self.quiet = Quiet(self.hub, self._stale)
        self.answers = answers
        self.members: dict[str, Member] = {}  # by uid
        self.uids: dict[User, str] = {}
        self.last_id = "0-0"
        self.last_k: dict[str, int] = {}  # by node
        # The node ids declared dead, with when (log time), oldest first.
        self.dead: dict[str, float] = {}
        # The event being applied (id, node), for the history's durable write.
        self.current: tuple[str, str] | None = None
        #: The last lobby lines applied, as many as the history shows: (event
        #: id, nick, text).  A node writes them to the history as it writes
        #: a snapshot: the sender's node, which writes each, may not have
        #: applied it yet (it lags), and a node loading that snapshot reads
        #: the history up to it.
        self.recent: deque[tuple[str, str, str]] = deque(maxlen=history.size)
        #: Whether events this node applied before are being applied again
        #: (L{rebuild}): nothing is answered, nothing is written.
        self.replaying = False
        # The event that declared each dead id, where this replica applied
        # it (not one a snapshot brought): for L{lost_tail}.
        self._dead_by: dict[str, str] = {}
        #: What the replica keeps after a loss, and the hellos.
        self.afterloss = AfterLoss(self, self.quiet, answers)

    # -- applying ------------------------------------------------------------

    def apply(self, eid: str, event: dict[str, Any]) -> None:
        origin = str(event.get("n", ""))
        k = int(event.get("k", 0))
        self.last_id = eid
        if origin in self.dead:
            return  # its node was declared dead before the log had it
        if event.get("t") == "hello":
            # Written ahead of the commands its node still had waiting, but
            # numbered after them: checked against the node's hellos only,
            # so that those commands (above the node's last_k) still apply.
            if k <= self.last_k.get(HELLO + origin, 0):
                return  # a resend of a hello applied already
            self.last_k[HELLO + origin] = k
        elif k <= self.last_k.get(origin, 0):
            return  # a resend of an event applied already
        else:
            self.last_k[origin] = k
        now = event_seconds(eid)
        if now > self.clock.seconds():
            self.clock.advance(now - self.clock.seconds())  # due invitations expire
        self.afterloss.applying(event)
        handler = self._HANDLERS.get(str(event.get("t")))
        result: object = None
        self.current = (eid, origin)
        try:
            if handler is not None:
                result = handler(self, eid, origin, k, event)
        except (HubError, NickTaken) as e:
            result = e
        except Exception as e:
            _log.failure("applying event {eid} {event!r}", eid=eid, event=event)
            # Not done: its node's command is answered ERROR internal, as on
            # one server (a registration told nothing would wait for ever).
            result = e
            if event.get("t") == "reg":
                self._orphan_undone(eid, origin, event)
        finally:
            self.current = None
        self.afterloss.applied()
        if origin == self.node and not self.replaying:
            self.answers.decided(k, result)

    def _member(self, event: dict[str, Any]) -> User | None:
        member = self.members.get(str(event.get("u")))
        if member is None or not self.hub.is_online(member.user):
            return None
        return member.user

    def _register(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> User:
        conn = None
        if origin == self.node:
            conn = self.answers.conn_for(k)
            if conn is None:
                conn = self.afterloss.attach.get(eid)  # a rebuild's replay
        orphan = conn is None or getattr(conn, "closing", False)
        user = self._hub_register(event, RemoteConn(origin) if conn is None else conn)
        self.add(user, origin, eid)
        self.afterloss.saw(eid, "", "")  # its JOINED (or READY) was written
        if orphan and origin == self.node and not self.replaying:
            self.answers.orphaned(user)
        return user

    def _orphan_undone(self, eid: str, origin: str, event: dict[str, Any]) -> None:
        """Registration C{eid} raised here (a bug), its hub undid it; the
        other nodes applied it.  It is put back here, quietly and with no
        connection, so every node holds the nick alike and a registration
        after it is decided alike everywhere.  On its own node (not
        replaying) it then leaves by the log (orphaned): its client was
        answered ERROR."""
        member = self.members.get(eid)
        if member is not None and self.hub.is_online(member.user):
            user = member.user  # what raised came after the hub took it
        else:
            try:
                with self.quiet.quietly():
                    user = self._hub_register(event, RemoteConn(origin))
            except Exception:
                return  # the hub itself refused it (logged), as on every node
            self.add(user, origin, eid)
        if origin == self.node and not self.replaying:
            self.answers.orphaned(user)

    def _hub_register(self, event: dict[str, Any], conn: Any) -> User:
        """The hub brings C{event}'s nick online, held by C{conn}."""
        return self.hub.register(str(event["nick"]), conn, str(event.get("a", "-")),
                                 source=str(event.get("s", "")))

    def add(self, user: User, node: str, uid: str) -> None:
        """C{user}, of C{node}, came online as C{uid}."""
        self.members[uid] = Member(user, node, uid)
        self.uids[user] = uid
        self.afterloss.online(uid, user)

    def _leave(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        user = self._member(event)
        if user is not None:
            self.gone(user, str(event.get("r", "disconnected")), str(event.get("x", "")))

    def gone(self, user: User, reason: str, text: str) -> None:
        """C{user} leaves; out loud, but for its C{LEFT} where this node's
        users were not shown it online (L{NotShownLeaving})."""
        hub = self.hub
        if self.afterloss.shown_online(self.uids.get(user)):
            hub.leave(user, reason, text)
        else:
            with self.quiet.through(
                    lambda listener: NotShownLeaving(self.quiet, listener, user), deliver=False):
                hub.leave(user, reason, text)
        uid = self.uids.pop(user, None)
        if uid is not None:
            self.members.pop(uid, None)
            self.afterloss.gone(uid, user)

    def _say(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        """A C{MSG}: to the lobby, or to the partner while paired; but only
        where its sender's client was shown it would go when it was sent
        (C{p}: the partner's uid, "" for the lobby; an event without it, of
        an older node: wherever the replica says).  Otherwise (Redis lost
        the pairing, or a pairing command came first in the log) it goes
        nowhere, on every replica alike, and its sender is told it was not
        sent: a line typed to a partner never reaches the lobby and its
        history, nor a lobby line a partner."""
        user = self._member(event)
        if user is None:
            return
        meant = event.get("p")
        if meant is not None and self.partner_uid(user) != meant:
            raise HubError(ErrorCode.UNAVAILABLE, self._not_sent(str(meant), user))
        text = str(event["x"])
        self.hub.say(user, text)
        if user.partner is None:
            self.recent.append((eid, user.nick, text))

    def _not_sent(self, meant: str, user: User) -> str:
        """Why a C{MSG} meant for C{meant}'s pair (or the lobby) went nowhere."""
        if meant:
            member = self.members.get(meant)
            nick = member.user.nick if member is not None else self.afterloss.nick_before(meant)
            return (f"{wire.NOT_PAIRED_WITH}{nick or 'your partner'} when it came to be "
                    "delivered (the pair ended, or the chat's store lost it); send it again")
        assert user.partner is not None
        if self.afterloss.hears_lobby(user):
            return HEARD_END_LINE_TEXT.format(user.partner.nick)
        return wire.meant_for_lobby(user.partner.nick)

    def _dm(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        user = self._member(event)
        if user is not None:
            self.hub.direct(user, str(event["to"]), str(event["x"]))

    def _pair(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        user = self._member(event)
        if user is not None:
            # The inviter's node's limits (an event without them: this hub's).
            self.hub.pair(user, str(event["to"]), timeout=float(event.get("it", 60.0)),
                          limits=invite_limits_of(event))

    def _accept(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        user = self._member(event)
        if user is not None:
            self.hub.accept(user, str(event["to"]))

    def _reject(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        user = self._member(event)
        if user is not None:
            self.hub.reject(user, str(event["to"]))

    def _unpair(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        user = self._member(event)
        if user is not None:
            # One of this node's users shown this pair's end (in events Redis
            # then lost) ends it here too, quietly for it, and is answered
            # as the lobby user it was shown to be (not-paired).
            partner = user.partner if self.afterloss.hears_lobby(user) else None
            if self.afterloss.misses_lobby(user):
                # Shown a pair the replica lacks: that pair ends for it.
                self.afterloss.unpaired_shown(str(event["u"]), user)
                if user.outgoing is None:
                    return  # (the other replicas: not-paired, no change)
            # An invitation the replica has open but whose end was shown
            # here (the pairing Redis lost ended it) is withdrawn quietly:
            # one end per invitation.
            with self.quiet.quietly(self.afterloss.shown_ended_out(user)):
                self.hub.unpair(user)
            if partner is not None:
                raise HubError(ErrorCode.NOT_PAIRED, HEARD_END_TEXT.format(partner.nick))

    def _tick(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        pass  # moving the clock was all

    def _hello(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        self.afterloss.hello(origin, event)

    def partner_uid(self, user: User) -> str:
        """The uid of C{user}'s partner, "" in the lobby."""
        return self.uids.get(user.partner, "") if user.partner is not None else ""

    def _stale(self) -> None:
        """The listener was not told of changes (L{listeners.Quiet}): what
        the node built from the hub is stale (not while replaying)."""
        if not self.replaying:
            self.answers.rebuilt()

    def restore_pair(self, a: User, b: User) -> None:
        """Pair C{a} and C{b} as they were (a snapshot's pair, or one a
        hello brings back): an invitation of either's is withdrawn first."""
        for one in (a, b):
            if one.outgoing is not None:
                self.hub.unpair(one)  # withdraws it
        self.hub.pair(a, b.nick, limits=NO_LIMITS)  # a pair that was: no limit applies
        self.hub.pair(b, a.nick)

    def _dead(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        node = str(event["node"])
        self._forget_dead(self.clock.seconds() - DEAD_KEEP)
        if node not in self.dead:
            self.dead[node] = self.clock.seconds()
            self._dead_by[node] = eid
        if node != self.node:
            self.afterloss.shown_back(node, event.get("users", []))
        gone = sorted(
            (m for m in self.members.values() if m.node == node), key=lambda m: m.user.key
        )
        for member in gone:
            self.gone(member.user, "disconnected", "")
        self.afterloss.unseen_leave(node)
        if gone:
            _log.info("node {node} is gone: {users} left", node=node, n=len(gone),
                      users=logs.counted(len(gone), "user"))
        if node == self.node and not self.replaying:
            self.answers.lost()

    def _forget_dead(self, before: float) -> None:
        """Forget the ids declared dead before C{before} (and their sequence
        numbers: nothing of theirs is applied again), oldest first."""
        dead = self.dead
        while dead:
            node, when = next(iter(dead.items()))
            if when >= before:
                break
            del dead[node]
            self._dead_by.pop(node, None)
            self.last_k.pop(node, None)
            self.last_k.pop(HELLO + node, None)

    def lost_tail(self, end: str) -> None:
        """
        Redis lost the stream's events after C{end} (its epoch kept) and
        what it kept cannot be read back to L{rebuild} from (a snapshot
        newer than the kept end, deleted by hand with a stream trimmed
        behind it): the fallback.  The stream goes on after C{end}, and the
        node ids this replica learnt were dead from the lost events (by
        the id of the C{dead} event it applied, or, for one a snapshot
        brought, declared after C{end}'s time) are forgotten; what else the
        lost events did here stays, for the C{hello}s to correct where they
        can.
        """
        if end == "0-0" or id_key(end) < id_key(self.last_id):
            self.last_id = end
        after = event_seconds(end) if end != "0-0" else 0.0
        for node, when in list(self.dead.items()):
            by = self._dead_by.get(node)
            if (id_key(by) > id_key(end)) if by is not None else when > after:
                del self.dead[node]
                self._dead_by.pop(node, None)

    _HANDLERS: dict[str, Callable[[Replica, str, str, int, dict[str, Any]], Any]] = {
        "reg": _register,
        "leave": _leave,
        "say": _say,
        "dm": _dm,
        "pair": _pair,
        "acc": _accept,
        "rej": _reject,
        "unp": _unpair,
        "tick": _tick,
        "hello": _hello,
        "dead": _dead,
    }

    # -- queries ---------------------------------------------------------------

    def local_users(self) -> list[list[Any]]:
        """This node's users, as a C{hello} event lists them: with their
        partner and outgoing invitation as they were shown them (L{AfterLoss.seen})."""
        rows = []
        for m in self.members.values():
            if m.node == self.node:
                partner, invitee = self.afterloss.seen(m.uid)
                rows.append([m.uid, m.user.nick, m.user.address, partner, m.user.source,
                             invitee])
        return rows + self.afterloss.detached_rows()

    def nodes(self) -> set[str]:
        """The nodes that have users online."""
        return {m.node for m in self.members.values()}

    def known_nodes(self) -> set[str]:
        """The nodes with users online, and those not declared dead whose
        events this replica applied (their sequence numbers, L{last_k}):
        whose lease to watch.  One that dies without users is declared
        dead too, so that its sequence number is forgotten with its id
        (L{DEAD_KEEP}) instead of staying in every replica and snapshot."""
        applied = {node.removeprefix(HELLO) for node in self.last_k}
        return (applied - self.dead.keys() - {""}) | self.nodes()

    def next_due(self) -> float | None:
        """When the next invitation expires (log time), if any is open.
        Asked after every batch of events, so not a walk over every open
        invitation: L{Clock} keeps its calls in time order (its C{advance}
        runs them from the first, which the expiries rely on already)."""
        calls = self.clock.getDelayedCalls()
        return calls[0].getTime() if calls else None

    # -- snapshots ---------------------------------------------------------------

    def clear(self) -> None:
        """
        Take every user out, as a replica that missed events does before it
        L{restore}s a snapshot: through the hub, so that the listener
        forgets them too.  This node's users go first (after L{missed} their
        connections are closing: the departures of the others are then
        written to nobody; in a L{rebuild} the listener is silent).
        """
        ordered = sorted(self.members.values(),
                         key=lambda m: (isinstance(m.user.conn, RemoteConn), id_key(m.uid)))
        for member in ordered:
            if self.hub.is_online(member.user):
                self.hub.leave(member.user, "disconnected")
        self.members.clear()
        self.uids.clear()
        self.recent.clear()
        for call in self.clock.getDelayedCalls():
            call.cancel()  # none should be left: every invitation ended
        self.last_id = "0-0"
        self.last_k = {}
        self.dead = {}
        self._dead_by = {}
        self.afterloss.clear()

    def rebuild(self, snapshot: dict[str, Any] | None,
                entries: Sequence[tuple[str, dict[str, Any]]],
                reload: Callable[[], None] | None = None,
                ) -> list[list[Any]]:
        """
        Redis lost events this replica applied (its last ones, or all of its
        data): make the replica what a node starting now builds from what
        Redis kept, C{snapshot} (parsed; as of an event at or before the kept end;
        C{None}: none) and the kept C{entries} after it up to that end (for
        a new epoch: neither), so that every replica is the same function of
        what Redis kept, whatever this one had applied of what was lost.

        All of it was applied here before: it is applied again without a
        line to anyone (L{listeners.Silent}) and without an answer to this node.
        C{reload}, if given, replaces the history with what Redis kept
        before C{snapshot}; it runs once what this node's users missed of
        the history before is noted (L{AfterLoss.rebuilding}).
        This node's connections are then bound to their users where the
        rebuilt replica has them (L{Answers.rebound}); the others are
        detached until this node's C{hello} brings them back, and what this
        node's users were shown is kept, for the hellos
        (L{AfterLoss.rebuilding}).

        @return: this node's users as they were before (its C{hello}).
        """
        rows = self.local_users()
        # What the lobby was sent goes out first; a pending sync is moot:
        # all is built anew.
        with (self.afterloss.rebuilding(rows),
              self.quiet.through(lambda listener: SILENT)):
            if reload is not None:
                reload()
            self.replaying = True
            try:
                self.clear()
                self.clock.advance(-self.clock.seconds())  # as a new replica's
                if snapshot is not None:
                    self.restore(snapshot)
                for eid, event in entries:
                    self.apply(eid, event)
            finally:
                self.replaying = False
        # The node's picture is built anew, once; a quiet change pending
        # from before is covered by it (no second rebuild at the next event).
        self.quiet.hush()
        self.quiet.sync_listener()
        return rows

    def snapshot(self) -> str:
        """The state after C{last_id}, as JSON (see L{restore})."""
        users = [
            [m.uid, m.node, m.user.nick, m.user.address, m.user.source]
            for m in sorted(self.members.values(), key=lambda m: id_key(m.uid))
        ]
        pairs = []
        # How many lobby lines each pair (by its first uid) has missed so
        # far: a replica restoring it counts its start back from there in
        # the history it loaded, for the replay when the pair ends (not
        # from the snapshot's point).  A key of its own: "pairs" keeps its
        # shape.
        missed = []
        position = self.hub.history.position
        invites = []
        for m in sorted(self.members.values(), key=lambda m: id_key(m.uid)):
            partner = m.user.partner
            if partner is not None and m.user.key < partner.key:
                pairs.append([m.uid, self.uids[partner]])
                missed.append([m.uid, position - m.user.paired_at])
        # Timers in the clock's own order, so that ties fire as they would.
        for call in self.clock.getDelayedCalls():
            args = getattr(call, "args", ())
            invitation = args[0] if args else None
            inviter = getattr(invitation, "inviter", None)
            invitee = getattr(invitation, "invitee", None)
            if inviter in self.uids and invitee in self.uids:
                invites.append([self.uids[inviter], self.uids[invitee], call.getTime()])
        return json.dumps(
            {
                "id": self.last_id,
                "now": self.clock.seconds(),
                "k": self.last_k,
                "dead": list(self.dead.items()),
                "users": users,
                "pairs": pairs,
                "missed": missed,
                "invites": invites,
                "claims": self.afterloss.claim_rows(),
            },
            separators=(",", ":"),
        )

    def restore(self, snapshot: str | dict[str, Any]) -> None:
        """
        Take the state of a L{snapshot} (its JSON, or that parsed already)
        into an empty replica.  Users come online, pair and invite through
        the hub's own commands, so the listener learns of them as usual
        (their connections are remote).
        """
        data = json.loads(snapshot) if isinstance(snapshot, str) else snapshot
        hub = self.hub
        self.clock.advance(float(data["now"]) - self.clock.seconds())
        self.last_id = str(data["id"])
        self.last_k = {str(n): int(k) for n, k in data["k"].items()}
        self.dead = {str(n): float(when) for n, when in data.get("dead", [])}
        by_uid: dict[str, User] = {}
        for uid, node, nick, address, *rest in data["users"]:
            conn = self.afterloss.attach.get(uid) if node == self.node else None  # a rebuild's
            user = hub.register(nick, RemoteConn(node) if conn is None else conn, address,
                                source=rest[0] if rest else "")
            self.add(user, node, uid)
            by_uid[uid] = user
        for a, b in data["pairs"]:
            self.restore_pair(by_uid[a], by_uid[b])
        position = hub.history.position  # the history is loaded first
        for a, n in data.get("missed", []):
            one = by_uid[a]
            if one.partner is not None:
                one.paired_at = one.partner.paired_at = max(position - int(n), 0)
        self.afterloss.restore_claims(data.get("claims", []))
        for inviter, invitee, due in data["invites"]:
            hub.pair(by_uid[inviter], by_uid[invitee].nick,
                     timeout=float(due) - self.clock.seconds(), limits=NO_LIMITS)
