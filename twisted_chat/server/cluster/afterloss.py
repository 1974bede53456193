"""
What a node's replica keeps after Redis lost data, and the C{hello}s that
reconcile the cluster then.

A replica that applied lost events is rebuilt from what Redis kept
(L{Replica.rebuild}); its node then says C{hello}: which of its users are
online, with their pairs and invitations as they were shown them.  Until
every node's hello is applied, and a while after, a node's users were shown
things the rebuilt replica does not have: L{AfterLoss} keeps those (the
users whose connections the node holds but the replica lacks, L{detached};
what they were shown, L{shown}; the other nodes' users they were shown
online that are gone here, L{unseen}), and applies the hellos against them
(L{AfterLoss.hello}): a change a node's users were shown already is applied
without a line, through the quiet listener (L{listeners.Quiet}).  What the
hellos said of each user's partner (L{AfterLoss.claims}) is part of the
replicated state, in every snapshot.

Apart from L{replica}, which applies every other event, answers the
queries and writes and restores snapshots: it owns one L{AfterLoss}, which
knows it only as L{Replicated} (its hub, clock, node id, members and their
uids; joining and leaving users, a pair restored), and also has the quiet
listener and the node's L{Rebinding}.  docs/cluster.md, "What is
guaranteed" ("After a loss, every replica agrees").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.task import Clock

from twisted_chat.server import logs
from twisted_chat.server.batches import in_lobby_batch
from twisted_chat.server.cluster.listeners import SILENT, Between, Quiet
from twisted_chat.server.cluster.remote import RemoteConn, stand_in
from twisted_chat.server.history import Entry
from twisted_chat.server.hub import Hub, Invitation, NickTaken, State, User
from twisted_chat.wire import nick_key

__all__ = ["CLAIM_KEEP", "SHOWN_KEEP", "AfterLoss", "Detached", "Rebinding", "Replicated"]

# The replica's logger: what it logs is the replica's applying a hello.
_log = logs.logger("twisted_chat.server.cluster.replica")

#: How long (log time) a C{hello}'s word on a user's partner counts
#: against another node's C{hello} listing that user as its partner (the
#: nodes that see one loss say hello within seconds of each other; a later
#: pairing of the same two users is decided by the events in between).
CLAIM_KEEP = 60.0

#: How long (log time) after a rebuild what its node's users were shown
#: (L{AfterLoss.shown}) decides whether a hello's change is told them: the
#: hellos of one loss come within seconds; after that, every change is.
#: Never before the node's own hello is applied, though late (kept after a
#: refusal): that hello lists what its users were shown
#: (L{Replica.local_users}).
SHOWN_KEEP = 60.0

# The commands that pair or unpair (their words drop the hellos' claims).
_PAIRING = frozenset(("pair", "acc", "rej", "unp"))


class _Member(Protocol):
    """A user as the replica holds it (L{replica.Member})."""

    @property
    def user(self) -> User: ...

    @property
    def node(self) -> str: ...

    @property
    def uid(self) -> str: ...


class Replicated(Protocol):
    """What L{AfterLoss} needs of its replica (L{replica.Replica}): what it
    holds, and the changes a hello makes through it."""

    @property
    def node(self) -> str:
        """This node's id."""

    @property
    def hub(self) -> Hub: ...

    @property
    def clock(self) -> Clock:
        """The log's time (the time of the event being applied)."""

    @property
    def replaying(self) -> bool:
        """Whether a rebuild replays events applied before (nothing is told
        or answered)."""

    @property
    def members(self) -> Mapping[str, _Member]:
        """The users online, by uid."""

    @property
    def uids(self) -> Mapping[User, str]:
        """The uids of the users online."""

    def add(self, user: User, node: str, uid: str) -> None:
        """C{user}, of C{node}, came online as C{uid} (the hub has it)."""

    def gone(self, user: User, reason: str, text: str) -> None:
        """C{user} leaves."""

    def restore_pair(self, a: User, b: User) -> None:
        """Pair C{a} and C{b} as they were."""

    def partner_uid(self, user: User) -> str:
        """The uid of C{user}'s partner, "" in the lobby."""


class Rebinding(Protocol):
    """What L{AfterLoss} tells the node of its connections (the part of
    L{replica.Answers} it needs)."""

    def rebound(self, conn: Any, user: User) -> None: ...

    def displaced(self, conn: Any, nick: str) -> None: ...

    def orphaned(self, user: User) -> None: ...


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


@dataclass(slots=True)
class _Before:
    """What a replica had before a rebuild, for L{AfterLoss.rebuilding}:
    the nicks, what its node's users were shown of each user (partner's
    and invitee's uids), the connections its node holds (with the users
    they hold), this node's users as its hello lists them, the other
    nodes' users its node's users were shown online, and the first lobby
    line each of its users hearing none missed; all by uid."""

    nicks: dict[str, str]
    seen: dict[str, tuple[str, str]]
    held: dict[str, tuple[Any, User]]
    rows: dict[str, list[Any]]
    unseen: dict[str, tuple[str, str]]
    missing: dict[str, tuple[Entry, int]]


class _Exceptions:
    """The rule's exceptions (L{batches.Shown}) at one moment, as sets."""

    __slots__ = ("heard", "missed")

    def __init__(self, heard: set[User], missed: set[User]) -> None:
        self.heard, self.missed = heard, missed

    def hears_lobby(self, user: User) -> bool:
        return user in self.heard

    def misses_lobby(self, user: User) -> bool:
        return user in self.missed


class AfterLoss:
    """
    What C{replica} keeps after a loss, and the hellos applied against it;
    C{quiet}: the hub's listener as the replica keeps changes from it;
    C{answers}: what it tells the node of the node's connections.
    """

    def __init__(self, replica: Replicated, quiet: Quiet, answers: Rebinding) -> None:
        self.replica = replica
        self.quiet = quiet
        self.answers = answers
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
        #: uid or ""), with when (log time): see L{hello}.
        self.claims: dict[str, tuple[str, float]] = {}
        #: After a rebuild: this node's users the rebuilt replica pairs but
        #: who were shown their pair end (in the lost events), by uid: until
        #: a hello ends it here too, they still hear the lobby.
        self.hearing: dict[str, User] = {}
        #: After a rebuild: this node's users the rebuilt replica has in the
        #: lobby but who were shown a partner (a pair it lacks), by uid:
        #: until a hello brings the pair back or tells them it ended (with
        #: the lobby's lines since L{_rebuilt_at}), they hear no lobby line.
        self.deaf: dict[str, User] = {}
        # The lobby history's position at the end of the last rebuild: each
        # of L{deaf} missed the lobby's lines from there on (a rebuild
        # empties L{deaf} before it moves), but those in L{_since}, who
        # missed them since an earlier rebuild: where, in this history.
        self._rebuilt_at = 0
        self._since: dict[str, int] = {}
        #: The invitations to L{deaf} users kept from them (shown paired,
        #: they are invited by nobody), by (inviter's uid, invitee's uid):
        #: C{INVITE} once they are back in the lobby, if still open; their
        #: end told to the inviter alone (L{hide_invite}, L{hide_end}).
        self.hidden: set[tuple[str, str]] = set()
        #: When (log time) L{shown} expires (L{SHOWN_KEEP} after the first
        #: event applied after the rebuild); the nicks the replica had
        #: before it and the rebuilds since L{shown} was set, by uid (to
        #: tell a user its partner's pair ended when the partner is not back).
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
        #: During a rebuild: this node's held connections, by uid (a
        #: registration replayed, or restored, gets its connection back).
        self.attach: dict[str, Any] = {}

    # -- what the replica tells it ---------------------------------------------

    def applying(self, event: dict[str, Any]) -> None:
        """An event is about to be applied (the replica's clock at its
        time): L{shown} expires (L{SHOWN_KEEP}), and a pairing command
        drops the claims on its users (L{_drop_claims})."""
        replica = self.replica
        if self.shown is not None and not replica.replaying:
            if self._shown_until is None:
                self._shown_until = replica.clock.seconds() + SHOWN_KEEP
            elif replica.clock.seconds() > self._shown_until and self._greeted:
                self._forget_shown()
        if self.claims and event.get("t") in _PAIRING:
            self._drop_claims(event)

    def applied(self) -> None:
        """An event was applied: those of L{hearing} whose pair it ended
        (out loud, quietly for them: LineListener.unpaired) hear no more,
        and were shown the lobby they are in now (L{saw}): a new pair of
        theirs is one like any other, with the same partner too (L{seen}
        took it for the pair shown ended, and the hellos ended it)."""
        hearing = self.hearing
        if hearing and any(user.partner is None for user in hearing.values()):
            members = self.replica.members
            for uid, user in hearing.items():
                if user.partner is None and uid in members:  # (not one who left)
                    self.saw(uid, "", "")
            self.hearing = {uid: user for uid, user in hearing.items()
                            if user.partner is not None}
        if self.deaf:
            self._still_deaf()

    def online(self, uid: str, user: User) -> None:
        """User C{uid} came online: one of L{unseen} back, or its nick
        someone else's: no C{LEFT} for it."""
        if self.unseen:
            self.unseen = {u: (n, nick) for u, (n, nick) in self.unseen.items()
                           if u != uid and nick_key(nick) != user.key}

    def shown_online(self, uid: str | None) -> bool:
        """Whether this node's users were shown user C{uid} online (always,
        but after a rebuild: then as L{shown} says)."""
        return self.shown is None or uid in self.shown

    def gone(self, uid: str, user: User) -> None:
        """User C{uid} left: nothing is kept of it, and those of L{deaf}
        shown it as their partner are told that pair ended, after its
        C{LEFT}, as when a partner leaves (not at their node's hello)."""
        for one, deaf in sorted(self.deaf.items()):
            if self.seen(one)[0] == uid:
                self.saw(one, "", "")
                self._tell_ended(one, deaf, user, "disconnected")
        if self.hidden:
            self.hidden = {key for key in self.hidden if uid not in key}
        self.claims.pop(uid, None)
        if self.shown is not None:
            self.shown.pop(uid, None)
            self.shown_out.pop(uid, None)
            self._base.pop(uid, None)

    def nick_before(self, uid: str) -> str | None:
        """The nick of user C{uid} in the replica before its rebuild."""
        return self._nicks.get(uid)

    def uid_before(self, nick: str) -> str | None:
        """The uid of the user, gone since, that the replica had as C{nick}
        before its rebuild (someone online may have taken the nick since)."""
        key, members = nick_key(nick), self.replica.members
        return next((uid for uid, n in self._nicks.items()
                     if nick_key(n) == key and uid not in members), None)

    def clear(self) -> None:
        """The replica is emptied (L{Replica.clear}): so is this."""
        self.detached = {}
        self.claims = {}
        self.unseen = {}
        self._forget_shown()

    def lost_unapplied(self) -> None:
        """
        Redis lost events this replica had not applied (not rebuilt): what
        its node's users saw is what it applied, unless an earlier rebuild's
        hello is not applied yet (lost with these events, say): its users
        saw what L{shown} keeps (the L{detached} online, a pair the replica
        lacks, the end of one it has: L{hearing}), and the hello it says
        again lists that (the detached not shown again, the pairs ended or
        told ended).
        """
        if self._greeted:  # (then none is detached: its hello brought them back)
            self.shown = None

    def claim_rows(self) -> list[list[Any]]:
        """The claims, as a snapshot has them (see L{restore_claims})."""
        return sorted([uid, partner, when] for uid, (partner, when) in self.claims.items())

    def restore_claims(self, rows: list[list[Any]]) -> None:
        """The claims of a snapshot (L{claim_rows})."""
        self.claims = {str(uid): (str(partner), float(when)) for uid, partner, when in rows}

    # -- what the node asks ------------------------------------------------------

    # The node's lists of each batch's members are its own index of the
    # replica's lobby and pairs, the rule (in_lobby_batch) for a user it
    # has no exception for; these correct them, by the rule, for the users
    # it may have one for: the detached, L{hearing} and L{deaf}.

    def lobby_conns(self) -> tuple[Any, ...]:
        """The connections of this node's users in the lobby's batch
        (L{in_lobby_batch}) whom the replica does not have in its lobby:
        the L{detached} shown the lobby (until its hello brings them back,
        they hear it as before; one shown a pair does not: see
        L{_rebuilt}), and those shown their pair end in events Redis lost
        (L{hearing}: until a hello ends the pair here too, or anything else
        does; one the replica has in its lobby again is in the index)."""
        if not self.detached and not self.hearing:
            return ()  # the steady case, at every lobby batch: nothing built
        users = [d.user for d in self.detached.values()]
        if self.hearing:
            users += [user for user in self.hearing.values() if user.partner is not None]
        shown = self._exceptions()
        return tuple(user.conn for user in users if in_lobby_batch(shown, user, user.state))

    def lobby_missed(self) -> tuple[Any, ...]:
        """The connections of the users the replica has in its lobby whom
        the rule puts in the paired users' batch: L{deaf}."""
        shown = self._exceptions()
        return tuple(user.conn for user in self.deaf.values()
                     if not in_lobby_batch(shown, user, user.state))

    def pairs_heard(self) -> list[User]:
        """The users the rule puts in the lobby's batch of those the
        replica may pair: L{hearing}."""
        shown = self._exceptions()
        return [user for user in self.hearing.values()
                if in_lobby_batch(shown, user, user.state)]

    def pairs_extra(self) -> list[User]:
        """This node's users in the paired users' batch whom the replica
        does not pair: the L{detached} shown a pair, and L{deaf}."""
        users = [d.user for d in self.detached.values()]
        users += self.deaf.values()
        shown = self._exceptions()
        return [user for user in users if not in_lobby_batch(shown, user, user.state)]

    def _exceptions(self) -> _Exceptions:
        """L{hears_lobby} and L{misses_lobby} as sets, for a whole list:
        each scans its dict, which per member of a lobby batch is work per
        member times the after-loss users."""
        return _Exceptions(set(self.hearing.values()), set(self.deaf.values()))

    def hears_lobby(self, user: User) -> bool:
        """Whether C{user} is one of L{hearing}."""
        hearing = self.hearing
        return bool(hearing) and user in hearing.values()

    def misses_lobby(self, user: User) -> bool:
        """Whether C{user}, in the replica's lobby, is one of L{deaf}."""
        deaf = self.deaf
        return bool(deaf) and user in deaf.values()

    def hide_invite(self, invitation: Invitation) -> bool:
        """Keep C{invitation}'s C{INVITE} from its invitee if it is one of
        L{deaf} (shown paired, it would be invited by nobody; its inviter,
        told C{PENDING}, hears of it as usual): recorded in L{hidden};
        whether it was kept."""
        invitee = invitation.invitee
        uids = self.replica.uids
        if not self.misses_lobby(invitee) or invitation.inviter not in uids:
            return False
        self.hidden.add((uids[invitation.inviter], uids[invitee]))
        return True

    def hide_end(self, invitee: User, inviter: User) -> bool:
        """Keep the end of C{inviter}'s invitation from C{invitee} if it
        was never shown it (L{hide_invite}): the record leaves L{hidden},
        the invitation being over; whether it was kept."""
        if not self.hidden:
            return False
        uids = self.replica.uids
        key = (uids.get(inviter, ""), uids.get(invitee, ""))
        if key not in self.hidden:
            return False
        self.hidden.discard(key)
        return True

    def _unhide(self) -> None:
        """The invitations kept from users no longer L{deaf} are shown
        them now, C{INVITE <inviter>}, those still open: each is in the
        lobby, as it was shown, and may take them up."""
        replica = self.replica
        members = replica.members
        for key in sorted(self.hidden):
            if key[1] in self.deaf:
                continue
            self.hidden.discard(key)
            one, other = members.get(key[0]), members.get(key[1])
            if one is None or other is None or replica.replaying:
                continue
            invitee = other.user
            invitation = invitee.incoming.get(one.user.key) if invitee.incoming else None
            if (invitation is not None and invitation.inviter is one.user
                    and invitee.state is State.LOBBY):
                # The inviter was told PENDING already: INVITE alone.
                replica.hub.listener.invited(Invitation(stand_in(one.user.nick), invitee))

    def detached_users(self) -> list[User]:
        """The L{User}s the connections of the L{detached} hold."""
        return [d.user for d in self.detached.values()]

    def has_detached(self) -> bool:
        """Whether there are L{detached} users (read by a scrape's thread)."""
        return bool(self.detached)

    def is_detached(self, uid: str) -> bool:
        """Whether user C{uid} is L{detached}."""
        return uid in self.detached

    def detached_uid(self, user: User) -> str | None:
        """The id of a L{detached} user, by the L{User} its connection holds."""
        for uid, held in self.detached.items():
            if held.user is user:
                return uid
        return None

    def detached_rows(self) -> list[list[Any]]:
        """The L{detached}, as this node's hello lists them."""
        return [list(d.row) for d in self.detached.values()]

    def forget_detached(self) -> None:
        """This node was declared dead: the L{detached} were told C{BYE}
        with the others."""
        self.detached.clear()

    def unseen_nodes(self) -> set[str]:
        """The nodes of the users in L{unseen}: their leases are judged too."""
        return {node for node, _ in self.unseen.values()}

    def seen(self, uid: str) -> tuple[str, str]:
        """What this node's users were shown of user C{uid}'s partner and
        outgoing invitation (uids, "" for none): after a rebuild, L{shown}
        where the replica has not changed them since; else the replica's."""
        state = self._state(uid)
        shown = self.shown
        if shown is not None and uid in shown and self._base.get(uid, state) == state:
            return shown[uid], self.shown_out.get(uid, "")
        return state

    # -- a rebuild -----------------------------------------------------------------

    @contextmanager
    def rebuilding(self, rows: list[list[Any]]) -> Iterator[None]:
        """
        Around a rebuild (L{Replica.rebuild}, which empties the replica and
        applies again what Redis kept): C{rows}, this node's users as its
        hello lists them before.  During it, this node's connections are
        at hand (L{attach}); after it, each is bound to its user where the
        rebuilt replica has it (L{Rebinding.rebound}), else L{detached} until
        this node's C{hello} brings it back, and L{shown} keeps what this
        node's users were shown, for the hellos.
        """
        replica = self.replica
        members = replica.members
        nicks = {uid: m.user.nick for uid, m in members.items()}
        nicks.update((uid, d.user.nick) for uid, d in self.detached.items())
        # With those gone since an earlier rebuild (a user shown one as its
        # partner is told that pair ended by its nick), taken since or not.
        nicks.update((uid, nick) for uid, nick in self._nicks.items() if uid not in nicks)
        seen = {uid: self.seen(uid) for uid in members}
        seen.update((uid, (str(d.row[3]), str(d.row[5])))  # local_users' rows
                    for uid, d in self.detached.items())
        held: dict[str, tuple[Any, User]] = {
            uid: (d.conn, d.user) for uid, d in self.detached.items()}
        for uid, m in members.items():
            if m.node == replica.node and not isinstance(m.user.conn, RemoteConn):
                held[uid] = (m.user.conn, m.user)
        unseen = dict(self.unseen)  # not back since an earlier rebuild
        unseen.update((uid, (m.node, m.user.nick)) for uid, m in members.items()
                      if m.node != replica.node)
        before = _Before(nicks, seen, held, {str(row[0]): row for row in rows}, unseen,
                         self._first_missed())
        self.attach = {uid: conn for uid, (conn, _) in held.items()}
        try:
            yield
        finally:
            self.attach = {}
        self._rebuilt(before)

    def _rebuilt(self, before: _Before) -> None:
        replica = self.replica
        for uid, (conn, user) in before.held.items():
            member = replica.members.get(uid)
            if member is not None and member.user.conn is conn:
                self.answers.rebound(conn, member.user)
            else:
                row = before.rows[uid]
                # The rebuild's clear() took this user out through the hub,
                # which ended its pair on this very object (LOBBY): it is
                # what the user was shown (its row's partner) until its
                # hello, for the lobby it hears (lobby_conns), the counts,
                # and the path its lines take.
                user.state = State.PAIRED if row[3] else State.LOBBY
                self.detached[uid] = Detached(conn, user, row)
        # What was shown, against the rebuilt state: a user the hellos bring
        # back starts with neither partner nor invitation.
        seen = before.seen
        self.shown = {uid: partner for uid, (partner, _) in seen.items()}
        self.shown_out = {uid: invitee for uid, (_, invitee) in seen.items() if invitee}
        self._base = {uid: self._state(uid) for uid in seen}
        self._nicks = before.nicks
        self.unseen = {uid: row for uid, row in before.unseen.items()
                       if uid not in replica.members}
        self._rebuilt_at = replica.hub.history.position
        self._since = self._missing_since(before.missing)
        self._hear_lobby()

    def _first_missed(self) -> dict[str, tuple[Entry, int]]:
        """The first lobby line each of this node's users that hear none
        (L{deaf}; L{detached} shown a pair) missed, if any, with how many
        lines of its millisecond came before it (the stream's order within
        one: an entry has no sequence number, and two equal lines may
        share a millisecond)."""
        history = self.replica.hub.history
        ring = history.recent()
        uids = [*self.deaf, *(uid for uid, d in self.detached.items() if d.row[3])]
        first = {}
        for uid in uids:
            missed = history.since(self._since.get(uid, self._rebuilt_at))
            if missed:
                at = len(ring) - len(missed)
                entry = ring[at]
                same = 0
                while at - same > 0 and ring[at - same - 1].ts == entry.ts:
                    same += 1
                first[uid] = (entry, same)
        return first

    def _missing_since(self, first: dict[str, tuple[Entry, int]]) -> dict[str, int]:
        """Where, in the rebuilt history, the lines each user of C{first}
        missed begin: at that first line (by its time and place in its
        millisecond) if Redis kept it, else, if Redis kept lines after
        it (the line fell out of the history), at the first of those.  A
        loss takes the stream's tail: with the line lost, so are those
        after it, and the user's missing starts at the rebuild's end."""
        if not first:
            return {}
        history = self.replica.hub.history
        ring = history.recent()
        base = history.position - len(ring)
        since = {}
        for uid, (entry, same) in first.items():
            # The history is in the stream's order: from its end back to
            # the first line not older than this one.
            start = len(ring)
            while start > 0 and ring[start - 1].ts >= entry.ts:
                start -= 1
            at = start + same
            if at < len(ring) and ring[at] == entry:
                since[uid] = base + at
                continue
            later = next((i for i in range(start, len(ring)) if ring[i].ts > entry.ts), None)
            if later is not None:
                since[uid] = base + later
        return since

    # -- the hellos ----------------------------------------------------------------

    def hello(self, origin: str, event: dict[str, Any]) -> None:
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
        taken meanwhile, is L{Rebinding.displaced}.
        """
        replica = self.replica
        rows = event["users"]
        listed = {str(u[0]): (str(u[1]), str(u[2]), str(u[4]) if len(u) > 4 else "")
                  for u in rows}
        partners = {str(u[0]): str(u[3]) for u in rows if len(u) > 3 and u[3]}
        told = {str(u[0]): (str(u[3]), str(u[5])) for u in rows if len(u) > 5}
        own = origin == replica.node
        shown = self.shown
        if own and shown is not None and not replica.replaying:
            self._greeted = True  # shown may expire now (SHOWN_KEEP)
        stale = sorted(
            (m for m in replica.members.values() if m.node == origin and m.uid not in listed),
            key=lambda m: m.user.key,
        )
        for member in stale:
            replica.gone(member.user, "disconnected", "")
            if shown is not None:
                shown.pop(member.uid, None)
        for uid, (nick, address, source) in sorted(listed.items()):
            if uid in replica.members:
                continue
            # A detached user stays detached until it is registered: the
            # fan-out's flush as it is (quiet.quietly, the listener) sends the
            # lobby's lines gathered so far to the detached, it among them.
            held = self.detached.get(uid) if own else None
            conn: Any = RemoteConn(origin)
            if held is not None:
                conn = held.conn
            elif own and uid in self.attach:
                conn = self.attach[uid]  # a rebuild's replay
            try:
                with self.quiet.quietly(shown is not None and uid in shown):
                    user = replica.hub.register(nick, conn, address, source=source)
            except NickTaken:
                _log.warn("node {node} holds {nick}, which is online elsewhere",
                          node=origin, nick=nick)
                if held is not None:
                    del self.detached[uid]
                    if not replica.replaying:
                        self.answers.displaced(held.conn, nick)
                continue
            if held is not None:
                del self.detached[uid]
                if held.row[3]:  # shown a pair: it heard no lobby line since the rebuild
                    self.deaf[uid] = user
            replica.add(user, origin, uid)
            if shown is not None:
                shown.setdefault(uid, "")
            if held is not None and not replica.replaying:
                self.answers.rebound(held.conn, user)
                if getattr(held.conn, "closing", False):
                    self.answers.orphaned(user)  # it went meanwhile
        self.unseen_leave(origin)  # the rest of its users, not listed: gone
        view = {uid: list(self.seen(uid)) for uid in replica.members}
        self._correct(told, view)
        self._rejoin(partners, told, view)
        if shown is not None:
            # (Only for the users it had: one it lacks was not shown online.)
            for uid, (partner, invitee) in view.items():
                if uid in replica.members and uid in shown:
                    self.saw(uid, partner, invitee)
        self._hear_lobby()
        self.quiet.sync_listener()

    def _hear_lobby(self) -> None:
        """Set L{hearing} and L{deaf} anew from L{shown}."""
        if self.shown is None:
            self.hearing = {}
            self.deaf = {}
            return
        replica = self.replica
        own = [(uid, m.user) for uid, m in replica.members.items() if m.node == replica.node]
        self.hearing = {uid: user for uid, user in own
                        if user.partner is not None and self.seen(uid)[0] == ""}
        # Each heard no lobby line since the rebuild (L{_missed} starts
        # there): one deaf anew was paired in the replica until that pair's
        # quiet end.
        self.deaf = {uid: user for uid, user in own
                     if user.state is State.LOBBY and self.seen(uid)[0] != ""}
        self._keep_since()
        if self.hidden:
            self._unhide()

    def _still_deaf(self) -> None:
        """After an event: those of L{deaf} gone, or paired, or no longer
        shown a partner (their state changed since) are no more."""
        members = self.replica.members
        self.deaf = {uid: user for uid, user in self.deaf.items()
                     if (m := members.get(uid)) is not None and m.user is user
                     and user.state is State.LOBBY and self.seen(uid)[0] != ""}
        self._keep_since()
        if self.hidden:
            self._unhide()

    def _keep_since(self) -> None:
        """L{_since} keeps only those still hearing no lobby line."""
        if self._since:
            self._since = {uid: start for uid, start in self._since.items()
                           if uid in self.deaf or uid in self.detached}

    def _missed(self, uid: str, user: User) -> list[Entry]:
        """The lobby's lines C{user} (L{deaf}) missed, and it is deaf no more."""
        start = self._since.pop(uid, self._rebuilt_at)
        if self.deaf.pop(uid, None) is not user:
            return []
        return self.replica.hub.history.since(start)

    def _correct(self, told: dict[str, tuple[str, str]], view: dict[str, list[str]]) -> None:
        """The pairs and outgoing invitations a hello's rows (C{told}: uid:
        (partner's uid, invitee's uid)) do not list end: a pair as when one
        side sends C{UNPAIR} (both back to the lobby, C{UNPAIRED <partner>
        left}), an invitation as withdrawn.  Each is applied quietly on a
        node whose own users among the two were shown that end already
        (C{view}, updated here)."""
        replica = self.replica
        members, uids = replica.members, replica.uids
        for uid, (partner, _) in sorted(told.items()):
            member = members.get(uid)
            if member is None or member.user.partner is None:
                continue
            other = uids[member.user.partner]
            if other != partner:
                with self.quiet.quietly(self._pair_seen(view, uid, other, False)):
                    replica.hub.unpair(member.user)
                # A side shown this pair is now shown its end; one shown
                # another partner (paired anew in the lost events) keeps
                # that, for L{_rejoin} to bring back or tell ended.
                for one, two in ((uid, other), (other, uid)):
                    if view[one][0] == two:
                        view[one][0] = ""
        for uid, (_, invitee) in sorted(told.items()):
            member = members.get(uid)
            outgoing = member.user.outgoing if member is not None else None
            if outgoing is None or member is None:
                continue
            other = uids[outgoing.invitee]
            if other != invitee:
                # Both sides read the invitation off the inviter's view.
                with self.quiet.quietly(bool(self._mine(uid, other)) and view[uid][1] != other):
                    replica.hub.unpair(member.user)  # withdraws it
                view[uid][1] = ""
        now = replica.clock.seconds()
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
        replica = self.replica
        members = replica.members
        since = replica.clock.seconds() - CLAIM_KEEP
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
            if (one is None or one.node != replica.node or not partner_uid
                    or view[uid][0] != partner_uid
                    or (other is not None and one.user.partner is other.user)):
                continue
            view[uid][0] = ""
            self._tell_ended(uid, one.user, self._user(partner_uid), "disconnected")

    def shown_partner(self, uid: str) -> User | None:
        """The partner this node's user C{uid} was shown (None: the lobby),
        as the replica has it now or, gone, by its nick before the rebuild."""
        partner_uid = self.seen(uid)[0]
        return self._user(partner_uid) if partner_uid else None

    def unpaired_shown(self, uid: str, user: User) -> None:
        """C{user} (L{deaf}) sent C{UNPAIR}: the pair it was shown ends for
        it now, C{UNPAIRED <partner> left} with the lobby lines it missed,
        as a paired user's would (not C{ERROR not-paired}: it was shown
        paired); its node's hello lists it in the lobby."""
        partner_uid = self.seen(uid)[0]
        self.saw(uid, "", "")
        self._tell_ended(uid, user, self._user(partner_uid), "left")

    def shown_ended_out(self, user: User) -> bool:
        """Whether this node's users among C{user}, in the lobby, and the
        invitee of its outgoing invitation were shown that invitation end
        (after a rebuild: the replica has it open), read off the inviter's
        L{seen} as a C{hello}'s correction does (L{_correct})."""
        replica = self.replica
        outgoing, uid = user.outgoing, replica.uids.get(user)
        if self.shown is None or outgoing is None or uid is None or user.partner is not None:
            return False
        other = replica.uids.get(outgoing.invitee, "")
        return bool(self._mine(uid, other)) and self.seen(uid)[1] != other

    def _tell_ended(self, uid: str, user: User, partner: User | None, reason: str) -> None:
        """Tell C{user}, this node's, that its pair with C{partner} ended,
        with the lobby lines it missed (L{_missed})."""
        replica = self.replica
        if partner is not None and not replica.replaying:
            # What a hello did quietly so far first (the user list the
            # line ends with must have the users it brought back).
            self.quiet.sync_listener()
            listener = replica.hub.listener
            listener.deliver_gathered()
            missed = self._missed(uid, user)
            listener.unpaired(user, partner, reason, missed)
            if self.hidden:
                self._unhide()

    def _user(self, uid: str) -> User | None:
        """User C{uid} as the replica has it, or, gone since its rebuild, a
        stand-in for its nick in a line (no hub holds it)."""
        member = self.replica.members.get(uid)
        if member is not None:
            return member.user
        nick = self._nicks.get(uid)
        return None if nick is None else stand_in(nick)

    def _bring_back(self, a: User, b: User, quiet: bool) -> None:
        """Pair C{a} and C{b} again (L{Replica.restore_pair}) without the lines of
        the mechanics between them (an invitation, its end) and, if
        C{quiet}, of the pairing; what it does to others (their invitations
        to or from the two end C{busy}, or withdrawn) is told as usual."""
        replica = self.replica
        hub = replica.hub
        if hub.listener is SILENT:
            replica.restore_pair(a, b)
            return
        if not quiet:
            self.quiet.sync_listener()  # what it says out loud needs the listener's picture
        # If quiet, the index learns of the pairing by a reindex (hush).
        with self.quiet.through(lambda listener: Between(listener, a, b, quiet), hush=quiet):
            replica.restore_pair(a, b)

    def _mine(self, *uids: str) -> list[str]:
        """Which of C{uids} are this node's users."""
        members = self.replica.members
        return [uid for uid in uids
                if (m := members.get(uid)) is not None and m.node == self.replica.node]

    def _pair_seen(self, view: dict[str, list[str]], a: str, b: str, paired: bool) -> bool:
        """Whether this node's users among C{a} and C{b} (some) were shown
        the two paired (C{paired}) or not: a change to that is quiet here."""
        mine = self._mine(a, b)
        return bool(mine) and all(
            (view[uid][0] == (b if uid == a else a)) == paired for uid in mine)

    def _state(self, uid: str) -> tuple[str, str]:
        member = self.replica.members.get(uid)
        if member is None:
            return "", ""
        user = member.user
        invitee = (self.replica.uids.get(user.outgoing.invitee, "")
                   if user.outgoing is not None else "")
        return self.replica.partner_uid(user), invitee

    def saw(self, uid: str, partner: str, invitee: str) -> None:
        """Record in L{shown} what this node's users were shown of C{uid}."""
        if self.shown is None:
            return
        self.shown[uid] = partner
        if invitee:
            self.shown_out[uid] = invitee
        else:
            self.shown_out.pop(uid, None)
        self._base[uid] = self._state(uid)

    def unseen_leave(self, node: str) -> None:
        """The users of C{node} in L{unseen}, but those back online meanwhile,
        are shown leaving, as when their node dies (not while replaying)."""
        replica = self.replica
        gone = sorted((uid, nick) for uid, (n, nick) in self.unseen.items() if n == node)
        if not gone:
            return
        for uid, _ in gone:
            del self.unseen[uid]
        if replica.replaying:
            return
        self.quiet.sync_listener()  # the listener's picture first (its user list)
        listener = replica.hub.listener
        for _, nick in gone:
            if nick_key(nick) not in replica.hub.online:
                user = stand_in(nick)
                listener.leaving(user)  # as hub.leave: no flush per departure
                listener.left(replica.clock.seconds(), user, "disconnected", "")

    def shown_back(self, node: str, rows: list[list[Any]]) -> None:
        """
        A node that stops lists its users in its C{dead} (C{rows}, as a
        hello's; for one stopping before its C{hello} after a loss is
        applied, or before it saw the loss): those this replica lacks
        (their registration lost) but whose arrival its users were shown
        (L{shown}) come back quietly, to leave with the others
        (C{LEFT <nick> disconnected}); the rest stay unknown here (no
        C{JOINED} for a user who is leaving at once).
        """
        replica = self.replica
        shown = self.shown
        if shown is None:
            return
        back = False
        for row in rows:
            uid = str(row[0])
            if uid in replica.members or uid not in shown:
                continue
            try:
                with self.quiet.quietly():
                    user = replica.hub.register(
                        str(row[1]), RemoteConn(node), str(row[2]),
                        source=str(row[4]) if len(row) > 4 else "")
            except NickTaken:
                continue  # someone else's now: that one stays
            replica.add(user, node, uid)
            back = True
        if back:
            self.quiet.sync_listener()  # the listener knows them before they leave

    def _drop_claims(self, event: dict[str, Any]) -> None:
        """A pairing command changes what the hellos said of its user, its
        partner and the user it names: their words no longer count."""
        replica = self.replica
        member = replica.members.get(str(event.get("u")))
        if member is None:
            return
        user = member.user
        target = replica.hub.find(str(event.get("to", "")))
        for one in (user, user.partner, target):
            if one is not None and one in replica.uids:
                self.claims.pop(replica.uids[one], None)

    def _forget_shown(self) -> None:
        """From now on every change is told (see L{SHOWN_KEEP})."""
        self.shown = None
        self.shown_out = {}
        self._base = {}
        self.hearing = {}
        self.deaf = {}
        self._since = {}
        self._shown_until = None
        self._nicks = {}
        self._greeted = False
