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
a node stopping: its users, see L{Replica._shown_back}), C{hello}
(users: the node's users, after Redis lost its data; a row each: id, nick,
address, partner's id, source, and the invitee's id of its outgoing
invitation: see L{Replica._hello}).

A node id declared dead stays dead: every event of that id the log has
after its C{dead} (a registration the node sent before it learnt of its
death, a resend, anything) is skipped, by every replica alike.  Node ids are random and new at
every start and after every death (L{node.new_node_id}), never reused, so the
set forgets an id L{DEAD_KEEP} seconds (log time) after its death.

When Redis loses events a replica applied (its last ones, or all of its
data: a new epoch), the replica is rebuilt from what Redis kept
(L{Replica.rebuild}), as a node starting then builds it, so that every
replica decides what follows alike; its node's C{hello} then brings back
its users the kept state lacks (L{Replica.detached}).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.task import Clock

from twisted_chat.server import logs
from twisted_chat.server.cluster.listeners import SILENT, Between, NotShownLeaving, Quiet
from twisted_chat.server.cluster.remote import RemoteConn, stand_in
from twisted_chat.server.cluster.streamids import event_seconds, id_key
from twisted_chat.server.history import History
from twisted_chat.server.hub import Hub, HubError, HubSettings, Listener, NickTaken, User
from twisted_chat.wire import ErrorCode, nick_key

__all__ = ["Answers", "Detached", "Member", "Replica"]

_log = logs.logger("twisted_chat.server.cluster.replica")

#: C{last_k}'s key for a node's last C{hello} (a node id has no C{:}).
HELLO = "hello:"

#: How long (log time) a C{hello}'s word on a user's partner counts
#: against another node's C{hello} listing that user as its partner (the
#: nodes that see one loss say hello within seconds of each other; a later
#: pairing of the same two users is decided by the events in between).
CLAIM_KEEP = 60.0

#: How long (log time) after a rebuild what its node's users were shown
#: (L{Replica.shown}) decides whether a hello's change is told them: the
#: hellos of one loss come within seconds; after that, every change is.
#: Never before the node's own hello is applied, though late (kept after a
#: refusal): that hello lists what its users were shown (L{local_users}).
SHOWN_KEEP = 60.0

#: How long (log time) a dead node id is remembered: an event of that id
#: reaching the log later than this after its death (its node cut off from
#: Redis for that long, resending then) is applied again.
DEAD_KEEP = 24 * 3600.0


# What is restored (a snapshot's invitations, a pair a hello brings back)
# was decided already, under its inviter's node's limits: none applies.
NO_LIMITS: tuple[int | None, int | None] = (None, None)


def _limit(value: object) -> int | None:
    """An invitation limit as a PAIR event carries it (null: none)."""
    return None if value is None else int(str(value))


@dataclass(slots=True)
class Member:
    user: User
    node: str
    uid: str


@dataclass(slots=True)
class Detached:
    """
    A user of this node whose connection is held but whom the replica,
    rebuilt after a loss (L{Replica.rebuild}), does not have (its
    registration was lost, or a lost event had it come back): it comes back
    when this node's C{hello} is applied.  C{user} is the L{User} the
    connection holds (no longer the hub's); C{row} its line in the hello.
    """

    conn: Any
    user: User
    row: list[Any]


class Answers(Protocol):
    """What the replica tells its own node about the node's own events."""

    def conn_for(self, k: int) -> Any:
        """The connection whose registration is event C{k}, or C{None}."""

    def decided(self, k: int, result: object) -> None:
        """Event C{k} was applied: C{result} is a L{User} (a registration),
        an exception (L{HubError}, L{NickTaken}) or C{None}."""

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
        #: After a rebuild: this node's users whose connections it holds but
        #: whom the rebuilt replica does not have (until its hello), by uid.
        self.detached: dict[str, Detached] = {}
        #: After a rebuild: what this node's users were shown before it (who
        #: was online, by uid, with the partner's uid or ""), updated by the
        #: hellos applied since; a hello's change they were shown already is
        #: applied quietly.  None when no rebuild made the two differ.
        self.shown: dict[str, str] | None = None
        #: With L{shown}: the outgoing invitations they were shown (inviter's
        #: uid: invitee's uid), and each user's state in the replica when
        #: that was recorded (partner's uid, invitee's uid): a user whose
        #: state changed since was shown the change (L{seen}).
        self.shown_out: dict[str, str] = {}
        self._base: dict[str, tuple[str, str]] = {}
        #: What the C{hello}s applied said of each listed user's partner (its
        #: uid or ""), with when (log time): see L{_hello}.
        self.claims: dict[str, tuple[str, float]] = {}
        #: After a rebuild: this node's users the rebuilt replica pairs but
        #: who were shown their pair end (in the lost events), by uid: until
        #: a hello ends it here too, they still hear the lobby.
        self.hearing: dict[str, User] = {}
        #: When (log time) L{shown} expires (L{SHOWN_KEEP} after the first
        #: event applied after the rebuild); the nicks the replica had
        #: before it, by uid (to tell a user its partner's pair ended when
        #: the partner is not back).
        self._shown_until: float | None = None
        self._nicks: dict[str, str] = {}
        #: After a rebuild: the users of other nodes this node's users were
        #: shown online that the rebuilt replica lacks (their registration
        #: lost, or all of Redis's data), by uid: (node, nick).  Each is
        #: shown leaving (C{LEFT <nick> disconnected}) when its node is
        #: declared dead (the log judges the leases of their nodes:
        #: L{unseen_nodes}) or says hello without it; one back online, or
        #: whose nick someone else took, is dropped.
        self.unseen: dict[str, tuple[str, str]] = {}
        # Whether this node's own hello was applied since the rebuild
        # (L{shown} is kept until it is).
        self._greeted = False
        #: Whether events this node applied before are being applied again
        #: (L{rebuild}): nothing is answered, nothing is written.
        self.replaying = False
        # During a rebuild: this node's held connections, by uid.
        self._attach: dict[str, Any] = {}
        # The event that declared each dead id, where this replica applied
        # it (not one a snapshot brought): for L{lost_tail}.
        self._dead_by: dict[str, str] = {}

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
        if self.shown is not None and not self.replaying:
            if self._shown_until is None:
                self._shown_until = self.clock.seconds() + SHOWN_KEEP
            elif self.clock.seconds() > self._shown_until and self._greeted:
                self._forget_shown()
        if self.claims and event.get("t") in self._PAIRING:
            self._drop_claims(event)
        handler = self._HANDLERS.get(str(event.get("t")))
        result: object = None
        self.current = (eid, origin)
        try:
            if handler is not None:
                result = handler(self, eid, origin, k, event)
        except (HubError, NickTaken) as e:
            result = e
        except Exception:
            _log.failure("applying event {eid} {event!r}", eid=eid, event=event)
        finally:
            self.current = None
        if origin == self.node and not self.replaying:
            self.answers.decided(k, result)

    _PAIRING = frozenset(("pair", "acc", "rej", "unp"))

    def _drop_claims(self, event: dict[str, Any]) -> None:
        """A pairing command changes what the hellos said of its user, its
        partner and the user it names: their words no longer count."""
        member = self.members.get(str(event.get("u")))
        if member is None:
            return
        user = member.user
        target = self.hub.find(str(event.get("to", "")))
        for one in (user, user.partner, target):
            if one is not None and one in self.uids:
                self.claims.pop(self.uids[one], None)

    def _forget_shown(self) -> None:
        """From now on every change is told (see L{SHOWN_KEEP})."""
        self.shown = None
        self.shown_out = {}
        self._base = {}
        self.hearing = {}
        self._shown_until = None
        self._nicks = {}
        self._greeted = False

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
                conn = self._attach.get(eid)  # a rebuild's replay
        orphan = conn is None or getattr(conn, "closing", False)
        user = self.hub.register(
            str(event["nick"]), RemoteConn(origin) if conn is None else conn,
            str(event.get("a", "-")), source=str(event.get("s", "")),
        )
        self._add(user, origin, eid)
        if self.shown is not None:
            self._saw(eid, "", "")  # its JOINED (or READY) was written
        if orphan and origin == self.node and not self.replaying:
            self.answers.orphaned(user)
        return user

    def _add(self, user: User, node: str, uid: str) -> None:
        self.members[uid] = Member(user, node, uid)
        self.uids[user] = uid
        if self.unseen:
            # Back, or its nick someone else's: no LEFT for it.
            self.unseen = {u: (n, nick) for u, (n, nick) in self.unseen.items()
                           if u != uid and nick_key(nick) != user.key}

    def _unseen_leave(self, node: str) -> None:
        """The users of C{node} in L{unseen}, but those back online meanwhile,
        are shown leaving, as when their node dies (not while replaying)."""
        gone = sorted((uid, nick) for uid, (n, nick) in self.unseen.items() if n == node)
        if not gone:
            return
        for uid, _ in gone:
            del self.unseen[uid]
        if self.replaying:
            return
        self.quiet.sync_listener()  # the listener's picture first (its user list)
        listener = self.hub.listener
        for _, nick in gone:
            if nick_key(nick) not in self.hub.online:
                listener.roster_changing()
                listener.left(self.clock.seconds(), stand_in(nick), "disconnected", "")

    def _leave(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        user = self._member(event)
        if user is not None:
            self._gone(user, str(event.get("r", "disconnected")), str(event.get("x", "")))

    def _gone(self, user: User, reason: str, text: str) -> None:
        """C{user} leaves; out loud, but for its C{LEFT} where this node's
        users were not shown it online (L{NotShownLeaving})."""
        hub = self.hub
        shown = self.shown
        if shown is None or self.uids.get(user) in shown or hub.listener is SILENT:
            hub.leave(user, reason, text)
        else:
            listener = self.quiet.unwrapped()
            hub.listener = NotShownLeaving(self.quiet, listener, user)
            try:
                hub.leave(user, reason, text)
            finally:
                hub.listener = self.quiet.after_quiet(listener) if self.quiet.hushed else listener
        uid = self.uids.pop(user, None)
        if uid is not None:
            self.members.pop(uid, None)
            self.claims.pop(uid, None)
            if self.shown is not None:
                self.shown.pop(uid, None)
                self.shown_out.pop(uid, None)
                self._base.pop(uid, None)

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
        if meant is not None and self._partner_uid(user) != meant:
            raise HubError(ErrorCode.UNAVAILABLE, self._not_sent(str(meant), user))
        text = str(event["x"])
        self.hub.say(user, text)
        if user.partner is None:
            self.recent.append((eid, user.nick, text))

    def _not_sent(self, meant: str, user: User) -> str:
        """Why a C{MSG} meant for C{meant}'s pair (or the lobby) went nowhere."""
        if meant:
            member = self.members.get(meant)
            nick = member.user.nick if member is not None else self._nicks.get(meant)
            return (f"not sent: you were not paired with {nick or 'your partner'} "
                    "when it came to be delivered (the pair ended, or the chat's store "
                    "lost it); send it again")
        assert user.partner is not None
        return (f"not sent: it was meant for the lobby and you were paired with "
                f"{user.partner.nick} when it came to be delivered; send it again")

    def _dm(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        user = self._member(event)
        if user is not None:
            self.hub.direct(user, str(event["to"]), str(event["x"]))

    def _pair(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        user = self._member(event)
        if user is not None:
            # The inviter's node's limits (an event without them: this hub's).
            limits = None
            if "mi" in event:
                limits = (_limit(event["mi"]), _limit(event.get("ms")))
            self.hub.pair(user, str(event["to"]), timeout=float(event.get("it", 60.0)),
                          limits=limits)

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
            self.hub.unpair(user)

    def _tick(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        pass  # moving the clock was all

    def _hello(self, eid: str, origin: str, k: int, event: dict[str, Any]) -> None:
        """
        After Redis lost data, each node says which of its users are online:
        the cluster's view of that node becomes exactly that (users missing
        from it leave; users the replica does not have come online, unless
        their nick is someone else's by now; their pairs come back).

        A row with a sixth field (its user's outgoing invitation, by the
        invitee's uid, "" for none) also says the user's pair and invitation
        as its node's users were shown them, and that is what the replica
        makes them (L{_correct}): a pair the row does not list ends, an
        outgoing invitation it does not list is withdrawn.  (A row without
        it, from an older node: its pair comes back, nothing ends.)  A pair
        a row lists comes back unless the partner's own node said otherwise
        (L{claims}); an invitation a row lists that the replica lacks (made
        in the lost second) stays gone.

        On a node that rebuilt its replica (L{shown}), what its users were
        shown already (a user online, a pair, an invitation's end) is
        applied without a line; on the hello's own node, a listed user it
        holds the connection of (L{detached}) gets it back, or, its nick
        taken meanwhile, is L{Answers.displaced}.
        """
        rows = event["users"]
        listed = {str(u[0]): (str(u[1]), str(u[2]), str(u[4]) if len(u) > 4 else "")
                  for u in rows}
        partners = {str(u[0]): str(u[3]) for u in rows if len(u) > 3 and u[3]}
        told = {str(u[0]): (str(u[3]), str(u[5])) for u in rows if len(u) > 5}
        own = origin == self.node
        shown = self.shown
        if own and shown is not None and not self.replaying:
            self._greeted = True  # shown may expire now (SHOWN_KEEP)
        self.quiet.hushed = False
        stale = sorted(
            (m for m in self.members.values() if m.node == origin and m.uid not in listed),
            key=lambda m: m.user.key,
        )
        for member in stale:
            self._gone(member.user, "disconnected", "")
            if shown is not None:
                shown.pop(member.uid, None)
        for uid, (nick, address, source) in sorted(listed.items()):
            if uid in self.members:
                continue
            # A detached user stays detached until it is registered: the
            # fan-out's flush as it is (quiet.quietly, the listener) sends the
            # lobby's lines gathered so far to the detached, it among them.
            held = self.detached.get(uid) if own else None
            conn: Any = RemoteConn(origin)
            if held is not None:
                conn = held.conn
            elif own and uid in self._attach:
                conn = self._attach[uid]  # a rebuild's replay
            try:
                with self.quiet.quietly(shown is not None and uid in shown):
                    user = self.hub.register(nick, conn, address, source=source)
            except NickTaken:
                _log.warn("node {node} holds {nick}, which is online elsewhere",
                          node=origin, nick=nick)
                if held is not None:
                    del self.detached[uid]
                    if not self.replaying:
                        self.answers.displaced(held.conn, nick)
                continue
            if held is not None:
                del self.detached[uid]
            self._add(user, origin, uid)
            if shown is not None:
                shown.setdefault(uid, "")
            if held is not None and not self.replaying:
                self.answers.rebound(held.conn, user)
                if getattr(held.conn, "closing", False):
                    self.answers.orphaned(user)  # it went meanwhile
        self._unseen_leave(origin)  # the rest of its users, not listed: gone
        view = {uid: list(self.seen(uid)) for uid in self.members}
        self._correct(told, view)
        self._rejoin(partners, told, view)
        if shown is not None:
            # (Only for the users it had: one it lacks was not shown online.)
            for uid, (partner, invitee) in view.items():
                if uid in self.members and uid in shown:
                    self._saw(uid, partner, invitee)
        self._hear_lobby()
        self.quiet.sync_listener()

    def _hear_lobby(self) -> None:
        """Set L{hearing} anew from L{shown}."""
        if self.shown is None:
            self.hearing = {}
            return
        self.hearing = {uid: m.user for uid, m in self.members.items()
                        if m.node == self.node and m.user.partner is not None
                        and self.seen(uid)[0] == ""}

    def _correct(self, told: dict[str, tuple[str, str]], view: dict[str, list[str]]) -> None:
        """The pairs and outgoing invitations a hello's rows (C{told}: uid:
        (partner's uid, invitee's uid)) do not list end: a pair as when one
        side sends C{UNPAIR} (both back to the lobby, C{UNPAIRED <partner>
        left}), an invitation as withdrawn.  Each is applied quietly on a
        node whose own users among the two were shown that end already
        (C{view}, updated here)."""
        members, uids = self.members, self.uids
        for uid, (partner, _) in sorted(told.items()):
            member = members.get(uid)
            if member is None or member.user.partner is None:
                continue
            other = uids[member.user.partner]
            if other != partner:
                with self.quiet.quietly(self._pair_seen(view, uid, other, False)):
                    self.hub.unpair(member.user)
                view[uid][0] = view[other][0] = ""
        for uid, (_, invitee) in sorted(told.items()):
            member = members.get(uid)
            outgoing = member.user.outgoing if member is not None else None
            if outgoing is None or member is None:
                continue
            other = uids[outgoing.invitee]
            if other != invitee:
                # Both sides read the invitation off the inviter's view.
                with self.quiet.quietly(bool(self._mine(uid, other)) and view[uid][1] != other):
                    self.hub.unpair(member.user)  # withdraws it
                view[uid][1] = ""
        now = self.clock.seconds()
        for uid, (partner, _) in told.items():
            self.claims[uid] = (partner, now)

    def _rejoin(self, partners: dict[str, str], told: dict[str, tuple[str, str]],
                view: dict[str, list[str]]) -> None:
        """
        A pair a hello lists that the replica lacks comes back once both
        users are online and free and each one's node has listed the other
        in a hello not older than L{CLAIM_KEEP} (its word is dropped by a
        pairing command of either since: L{_drop_claims}); quietly where
        this node's users among the two were shown it (L{_bring_back}).
        (A row of an older node's hello, without the invitation field: as
        before, on its word alone.)

        A listed user of this node shown a pair the replica does not have
        now (its partner not back yet, or never: a registration lost with
        the data; paired elsewhere; its node not listing it) is told it
        ended, C{UNPAIRED <partner> disconnected}, as when a partner
        disconnects: never left in the lobby believing itself paired.  Its
        hello's word stays: if the partner's node lists it later, the pair
        comes back (C{PAIRED} again).
        """
        members = self.members
        since = self.clock.seconds() - CLAIM_KEEP
        for uid in [u for u, (_, when) in self.claims.items() if when < since]:
            del self.claims[uid]
        for uid, partner_uid in sorted(partners.items()):
            one, other = members.get(uid), members.get(partner_uid)
            if one is None or other is None or one.user.partner is other.user:
                continue
            if one.user.partner is not None or other.user.partner is not None:
                continue
            if uid in told:
                claim = self.claims.get(partner_uid)
                if claim is None or claim[0] != uid:
                    continue  # its node has not said so (or said otherwise)
            self._bring_back(one.user, other.user,
                             self._pair_seen(view, uid, partner_uid, True))
            view[uid][:] = [partner_uid, ""]
            view[partner_uid][:] = [uid, ""]
        for uid, (partner_uid, _) in sorted(told.items()):
            one, other = members.get(uid), members.get(partner_uid)
            if (one is None or one.node != self.node or not partner_uid
                    or view[uid][0] != partner_uid
                    or (other is not None and one.user.partner is other.user)):
                continue
            view[uid][0] = ""
            partner = other.user if other is not None else self._stand_in(partner_uid)
            if partner is not None and not self.replaying:
                # What the hello did quietly so far first (the user list the
                # line ends with must have the users it brought back).
                self.quiet.sync_listener()
                listener = self.hub.listener
                listener.roster_changing()
                listener.unpaired(one.user, partner, "disconnected", [])

    def _stand_in(self, uid: str) -> User | None:
        """A user the replica had before its rebuild and does not have now,
        for its nick in a line (no hub holds it)."""
        nick = self._nicks.get(uid)
        return None if nick is None else stand_in(nick)

    def _bring_back(self, a: User, b: User, quiet: bool) -> None:
        """Pair C{a} and C{b} again (L{_restore_pair}) without the lines of
        the mechanics between them (an invitation, its end) and, if
        C{quiet}, of the pairing; what it does to others (their invitations
        to or from the two end C{busy}, or withdrawn) is told as usual."""
        hub = self.hub
        if hub.listener is SILENT:
            self._restore_pair(a, b)
            return
        if not quiet:
            self.quiet.sync_listener()  # what it says out loud needs the listener's picture
        listener = self.quiet.unwrapped()
        listener.roster_changing()
        hub.listener = Between(listener, a, b, quiet)
        if quiet:
            self.quiet.hush()  # the index learns of the pairing by a reindex
        try:
            self._restore_pair(a, b)
        finally:
            hub.listener = self.quiet.after_quiet(listener) if quiet else listener

    def _mine(self, *uids: str) -> list[str]:
        """Which of C{uids} are this node's users."""
        members = self.members
        return [uid for uid in uids
                if (m := members.get(uid)) is not None and m.node == self.node]

    def _pair_seen(self, view: dict[str, list[str]], a: str, b: str, paired: bool) -> bool:
        """Whether this node's users among C{a} and C{b} (some) were shown
        the two paired (C{paired}) or not: a change to that is quiet here."""
        mine = self._mine(a, b)
        return bool(mine) and all(
            (view[uid][0] == (b if uid == a else a)) == paired for uid in mine)

    def seen(self, uid: str) -> tuple[str, str]:
        """What this node's users were shown of user C{uid}'s partner and
        outgoing invitation (uids, "" for none): after a rebuild, L{shown}
        where the replica has not changed them since; else the replica's."""
        state = self._state(uid)
        shown = self.shown
        if shown is not None and uid in shown and self._base.get(uid, state) == state:
            return shown[uid], self.shown_out.get(uid, "")
        return state

    def _state(self, uid: str) -> tuple[str, str]:
        member = self.members.get(uid)
        if member is None:
            return "", ""
        user = member.user
        invitee = (self.uids.get(user.outgoing.invitee, "")
                   if user.outgoing is not None else "")
        return self._partner_uid(user), invitee

    def _partner_uid(self, user: User) -> str:
        """The uid of C{user}'s partner, "" in the lobby."""
        return self.uids.get(user.partner, "") if user.partner is not None else ""

    def _saw(self, uid: str, partner: str, invitee: str) -> None:
        """Record in L{shown} what this node's users were shown of C{uid}."""
        if self.shown is None:
            return
        self.shown[uid] = partner
        if invitee:
            self.shown_out[uid] = invitee
        else:
            self.shown_out.pop(uid, None)
        self._base[uid] = self._state(uid)

    def _stale(self) -> None:
        """The listener was not told of changes (L{listeners.Quiet}): what
        the node built from the hub is stale (not while replaying)."""
        if not self.replaying:
            self.answers.rebuilt()

    def _restore_pair(self, a: User, b: User) -> None:
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
            self._shown_back(node, event.get("users", []))
        gone = sorted(
            (m for m in self.members.values() if m.node == node), key=lambda m: m.user.key
        )
        for member in gone:
            self._gone(member.user, "disconnected", "")
        self._unseen_leave(node)
        if gone:
            _log.info("node {node} is gone: {n} users left", node=node, n=len(gone))
        if node == self.node and not self.replaying:
            self.answers.lost()

    def _shown_back(self, node: str, rows: list[list[Any]]) -> None:
        """
        A node that stops lists its users in its C{dead} (C{rows}, as a
        hello's; for one stopping before its C{hello} after a loss is
        applied, or before it saw the loss): those this replica lacks
        (their registration lost) but whose arrival its users were shown
        (L{shown}) come back quietly, to leave with the others
        (C{LEFT <nick> disconnected}); the rest stay unknown here (no
        C{JOINED} for a user who is leaving at once).
        """
        shown = self.shown
        if shown is None:
            return
        back = False
        for row in rows:
            uid = str(row[0])
            if uid in self.members or uid not in shown:
                continue
            try:
                with self.quiet.quietly():
                    user = self.hub.register(str(row[1]), RemoteConn(node), str(row[2]),
                                             source=str(row[4]) if len(row) > 4 else "")
            except NickTaken:
                continue  # someone else's now: that one stays
            self._add(user, node, uid)
            back = True
        if back:
            self.quiet.sync_listener()  # the listener knows them before they leave
        self.quiet.unwrapped()
        self.quiet.hushed = False

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
        partner and outgoing invitation as they were shown them (L{seen})."""
        rows = []
        for m in self.members.values():
            if m.node == self.node:
                partner, invitee = self.seen(m.uid)
                rows.append([m.uid, m.user.nick, m.user.address, partner, m.user.source,
                             invitee])
        return rows + [list(d.row) for d in self.detached.values()]

    def nodes(self) -> set[str]:
        """The nodes that have users online."""
        return {m.node for m in self.members.values()}

    def unseen_nodes(self) -> set[str]:
        """The nodes of the users in L{unseen}: their leases are judged too."""
        return {node for node, _ in self.unseen.values()}

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
        self.detached = {}
        self.claims = {}
        self.unseen = {}
        self._forget_shown()

    def rebuild(self, snapshot: dict[str, Any] | None,
                entries: Sequence[tuple[str, dict[str, Any]]]
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
        This node's connections are then bound to their users where the
        rebuilt replica has them (L{Answers.rebound}); the others are
        L{detached} until this node's C{hello} brings them back.  L{shown}
        keeps what this node's users were shown, for the hellos.

        @return: this node's users as they were before (its C{hello}).
        """
        rows = self.local_users()
        nicks = {uid: m.user.nick for uid, m in self.members.items()}
        nicks.update((uid, d.user.nick) for uid, d in self.detached.items())
        seen = {uid: self.seen(uid) for uid in self.members}
        seen.update((uid, (str(d.row[3]), str(d.row[5])))  # local_users' rows
                    for uid, d in self.detached.items())
        held: dict[str, tuple[Any, User]] = {
            uid: (d.conn, d.user) for uid, d in self.detached.items()}
        for uid, m in self.members.items():
            if m.node == self.node and not isinstance(m.user.conn, RemoteConn):
                held[uid] = (m.user.conn, m.user)
        by_uid = {str(row[0]): row for row in rows}
        unseen = dict(self.unseen)  # not back since an earlier rebuild
        unseen.update((uid, (m.node, m.user.nick)) for uid, m in self.members.items()
                      if m.node != self.node)
        hub = self.hub
        listener = self.quiet.unwrapped()  # a pending sync is moot: all is built anew
        listener.roster_changing()  # what the lobby was sent goes out first
        hub.listener = SILENT
        self.replaying = True
        try:
            self.clear()
            self.clock.advance(-self.clock.seconds())  # as a new replica's
            self._attach = {uid: conn for uid, (conn, _) in held.items()}
            if snapshot is not None:
                self.restore(snapshot)
            for eid, event in entries:
                self.apply(eid, event)
        finally:
            hub.listener = listener
            self.replaying = False
            self._attach = {}
        for uid, (conn, user) in held.items():
            member = self.members.get(uid)
            if member is not None and member.user.conn is conn:
                self.answers.rebound(conn, member.user)
            else:
                self.detached[uid] = Detached(conn, user, by_uid[uid])
        # What was shown, against the rebuilt state: a user the hellos bring
        # back starts with neither partner nor invitation.
        self.shown = {uid: partner for uid, (partner, _) in seen.items()}
        self.shown_out = {uid: invitee for uid, (_, invitee) in seen.items() if invitee}
        self._base = {uid: self._state(uid) for uid in seen}
        self._nicks = nicks
        self.unseen = {uid: row for uid, row in unseen.items() if uid not in self.members}
        self._hear_lobby()
        self.answers.rebuilt()
        return rows

    def detached_uid(self, user: User) -> str | None:
        """The id of a L{detached} user, by the L{User} its connection holds."""
        for uid, held in self.detached.items():
            if held.user is user:
                return uid
        return None

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
                "claims": sorted([uid, partner, when]
                                 for uid, (partner, when) in self.claims.items()),
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
            conn = self._attach.get(uid) if node == self.node else None  # a rebuild's
            user = hub.register(nick, RemoteConn(node) if conn is None else conn, address,
                                source=rest[0] if rest else "")
            self._add(user, node, uid)
            by_uid[uid] = user
        for a, b in data["pairs"]:
            self._restore_pair(by_uid[a], by_uid[b])
        position = hub.history.position  # the history is loaded first
        for a, n in data.get("missed", []):
            one = by_uid[a]
            if one.partner is not None:
                one.paired_at = one.partner.paired_at = max(position - int(n), 0)
        self.claims = {str(uid): (str(partner), float(when))
                       for uid, partner, when in data.get("claims", [])}
        for inviter, invitee, due in data["invites"]:
            hub.pair(by_uid[inviter], by_uid[invitee].nick,
                     timeout=float(due) - self.clock.seconds(), limits=NO_LIMITS)
