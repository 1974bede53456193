"""
Where the chat's state lives: the seam between the connection layer and the
L{Hub}.

The connection layer sends every state-changing command through a
L{ChatState}.  L{LocalState}, the default, is today's single server: the
commands go straight to this process's hub and are decided at once.  The
cluster (L{twisted_chat.server.cluster}) is another implementation: a command
is decided when the cluster's shared log hands it back, so its answer comes
later.

So a command either is decided before the call returns (it returns C{None}
or an already-fired C{Deferred}, or raises L{HubError} as the hub does;
L{LocalState.register} returns a failed one for L{NickTaken}), or returns a
C{Deferred} that fires once it is decided (with the same errors as failures).
A connection handles none of its later lines before then, so each
connection's commands are decided one after another, in the order it sent
them, exactly as on one server.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias

from twisted.internet.defer import Deferred, fail, succeed

from twisted_chat import wire
from twisted_chat.server.hub import Hub, HubError, NickTaken, User
from twisted_chat.server.output.fanout import Member
from twisted_chat.wire import ErrorCode

__all__ = ["ChatState", "LocalState", "Outcome", "PairsShown", "StateUnavailable"]

#: What a command returns: C{None} when it was decided at once.
Outcome: TypeAlias = "Deferred[None] | None"


class StateUnavailable(Exception):
    """The state cannot take a new user now; C{why}: what happened, in
    words for the user's C{RETRY unavailable} (login.unavailable_text):
    the cluster's store too slow, out of reach, refusing or losing it (""
    by default: its store unavailable, or the node stopping)."""

    def __init__(self, why: str = "") -> None:
        super().__init__(why)
        self.why = why


class ChatState(Protocol):
    """The commands the connection layer sends; see the module docstring."""

    hub: Hub

    def lobby_members(self) -> Sequence[Member]:
        """The connections this process writes the lobby's lines to (the
        fan-out's members): its own users in the lobby's batch
        (L{batches.in_lobby_batch}, the rule C{LineListener.batch_of}
        asks of one user), in the lobby's order: those in the lobby (in a
        cluster that lost data in Redis, but those that miss it, and after
        them its users the rebuilt replica lacks or still pairs that hear
        it: docs/cluster.md)."""

    def forget_members(self) -> None:
        """A user left (or a cluster node's connection was displaced): let
        go of any list of connections kept for L{lobby_members}, so that
        the departed one is not kept alive."""

    def paired_users(self) -> list[User]:
        """The users whose connections this process holds in the paired
        users' batch (L{batches.in_lobby_batch}: those in a pair; after a
        loss, but those that hear the lobby, and those that miss it), a
        copy: a write may end one.  Kept at each pairing and its end, so
        that a C{JOINED} or C{LEFT} costs the pairs, not everyone online."""

    def hears_lobby(self, user: User) -> bool:
        """Whether C{user}, paired, hears the lobby's lines: never on one
        server; in a cluster, a user shown its pair's end in events Redis
        then lost (L{AfterLoss.hearing}), until the pair ends here too."""

    def misses_lobby(self, user: User) -> bool:
        """Whether C{user}, in the lobby, hears none of its lines: never on
        one server; in a cluster, a user shown a pair the replica rebuilt
        after a loss lacks (L{AfterLoss.deaf}), until a hello brings the
        pair back or tells it the pair ended."""

    def holds(self, user: User) -> bool:
        """Whether this process holds C{user}'s connection (writes its
        lines): every user on one server; in a cluster, not a user of
        another node, whose own node tells it what it is told."""

    def counts(self) -> tuple[int, int]:
        """This process's users online, and of them those in the lobby.
        Read from any thread (C{--metrics}): sizes only (a cluster node that
        lost data in Redis also copies its few detached users, in one step
        under the GIL)."""

    def deadline(self, conn: Any) -> float | None:
        """When a command from the line C{conn} is handling is answered at
        the latest, decided or not (the reactor's time; a cluster node's
        C{--redis-wait} from when the line arrived, session.Connection.arrived).
        None: commands are decided at once (one server)."""

    def too_late(self, registration: bool = False) -> Exception:
        """What a command is answered (a failure) when its line's
        L{deadline} passed before it was asked (a lobby line held behind
        another command, or waiting for its address's budget; a C{NICK},
        if C{registration}: a L{StateUnavailable}): not sent, nothing of
        it done."""

    def register(self, nick: str, conn: Any, address: str, source: str = "") -> Deferred[User]:
        """Bring C{nick} online; fails with L{NickTaken} or L{StateUnavailable}."""

    def leave(self, user: User, reason: str, text: str = "") -> None:
        """Take C{user} offline (no answer: the connection is going)."""

    def pair_shown(self, user: User, before: User | None) -> None:
        """A C{PAIRED} or C{UNPAIRED} was just written to C{user}'s
        connection (one this process holds), which had shown C{before} as
        its partner until then (None: the lobby): a C{MSG} of its that
        arrived before goes where it was meant then, or nowhere (L{say})."""

    def as_meant(self, user: User) -> None:
        """Raise the refusal of a C{MSG} of C{user}'s, handled now, that was
        meant for elsewhere when it arrived (one server: L{LocalState}); a
        cluster's log decides that with the line itself (nothing here).
        Asked before anything else judges the line (the lobby's per-address
        rate, a partner's send queue), so the answer says "not sent"."""

    def say(self, user: User, text: str) -> Outcome: ...

    def direct(self, user: User, nick: str, text: str) -> Outcome: ...

    def pair(self, user: User, nick: str) -> Outcome: ...

    def accept(self, user: User, nick: str) -> Outcome: ...

    def reject(self, user: User, nick: str) -> Outcome: ...

    def unpair(self, user: User) -> Outcome: ...


#: How long one server keeps what a connection waiting for a password
#: check was shown of its pair (L{LocalState.pair_shown}): far longer than
#: a check takes (a 50 ms hash, at most 64 queued on two threads).
HELD_KEEP = 600.0


class LocalState:
    """One server: the commands are this process's hub's method calls."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._members: tuple[Member, ...] = ()
        self._members_at = -1  # the hub's lobby_changes when they were listed
        #: What connections waiting for a password check were shown of
        #: their partner meanwhile (where a line held behind it goes: L{say}).
        self.pairs_shown = PairsShown()
        if type(self).say is LocalState.say:
            # Every MSG comes here: the hub's own method, not a frame that
            # passes it along (a subclass's override is kept).
            self.say = hub.say  # type: ignore[method-assign]

    def lobby_members(self) -> Sequence[Member]:
        """The hub's lobby: here the rule (L{batches.in_lobby_batch}) has
        no exception (L{hears_lobby}, L{misses_lobby}), so a user's state
        says its batch.  The same tuple while the lobby does not change, so
        that the fan-out's direct pass can tell it did not
        (sendqueue.DirectPass)."""
        hub = self.hub
        if self._members_at != hub.lobby_changes:
            self._members = tuple([user.conn for user in hub.lobby.values()])
            self._members_at = hub.lobby_changes
        return self._members

    def forget_members(self) -> None:
        self._members, self._members_at = (), -1

    def paired_users(self) -> list[User]:
        """The hub's pairs: the rest of the users (L{lobby_members})."""
        return list(self.hub.paired.values())

    def hears_lobby(self, user: User) -> bool:
        return False

    def misses_lobby(self, user: User) -> bool:
        return False

    def holds(self, user: User) -> bool:
        return True

    def counts(self) -> tuple[int, int]:
        return len(self.hub.online), len(self.hub.lobby)

    def deadline(self, conn: Any) -> float | None:
        return None

    def too_late(self, registration: bool = False) -> Exception:
        raise AssertionError("one server's commands have no deadline")

    def register(self, nick: str, conn: Any, address: str, source: str = "") -> Deferred[User]:
        try:
            return succeed(self.hub.register(nick, conn, address, source=source))
        except NickTaken as e:
            return fail(e)

    def leave(self, user: User, reason: str, text: str = "") -> None:
        self.pairs_shown.forget(user.conn)
        self.hub.leave(user, reason, text)

    def pair_shown(self, user: User, before: User | None) -> None:
        """Kept only while C{user}'s connection waits for a command (a
        password check): only then can a line of its that arrived before
        be handled after (held behind it)."""
        conn = user.conn
        if conn.held_or_waiting():
            now = conn.clock.seconds()
            self.pairs_shown.changed(conn, now, "" if before is None else before.nick,
                                     now - HELD_KEEP)

    def as_meant(self, user: User) -> None:
        # Rare: a pair changed while a connection waited.  (The dict, not
        # len(): no Python call on every MSG.)
        if self.pairs_shown.by_conn:
            self._as_meant(user)

    def say(self, user: User, text: str) -> Outcome:
        """The hub's C{say} (bound in its place at C{__init__})."""
        self.hub.say(user, text)
        return None

    def _as_meant(self, user: User) -> None:
        """
        Refuse C{user}'s C{MSG} unless it goes where its client was shown it
        would when it arrived at the server (L{PairsShown}): a line held
        behind a password check while its partner's C{UNPAIR} came is
        answered C{ERROR not-paired}, never sent to the lobby (before,
        it reached the lobby and its history); a lobby line held while an
        C{ACCEPT} paired its sender, C{ERROR busy}, never sent to the partner.
        """
        conn = user.conn
        partner = user.partner
        current = "" if partner is None else partner.nick
        since = conn.clock.seconds() - HELD_KEEP
        meant = self.pairs_shown.as_of(conn, conn.arrived(), current, since)
        if meant == current:
            return
        if meant:
            raise HubError(ErrorCode.NOT_PAIRED,
                           f"{wire.NO_LONGER_PAIRED}{meant} when it came to be delivered "
                           "(the pair ended while your password was checked); send it again")
        assert partner is not None
        raise HubError(ErrorCode.BUSY, wire.meant_for_lobby(partner.nick))

    def direct(self, user: User, nick: str, text: str) -> Outcome:
        self.hub.direct(user, nick, text)
        return None

    def pair(self, user: User, nick: str) -> Outcome:
        self.hub.pair(user, nick)
        return None

    def accept(self, user: User, nick: str) -> Outcome:
        self.hub.accept(user, nick)
        return None

    def reject(self, user: User, nick: str) -> Outcome:
        self.hub.reject(user, nick)
        return None

    def unpair(self, user: User) -> Outcome:
        self.hub.unpair(user)
        return None


class PairsShown:
    """
    What connections were shown of their partner lately: each C{PAIRED}
    and C{UNPAIRED} written to one, with when (reactor time) and the
    partner it had been shown until then ("" for the lobby; a cluster
    node's users by uid, L{twisted_chat.server.cluster.node.ClusterState.pair_shown};
    one server's by nick, L{LocalState.pair_shown}; each called by the
    hub's listener, C{lines.py}, for each C{PAIRED} and C{UNPAIRED} it
    writes).  A line held behind a command (a Redis
    outage, a password check) goes where its client was shown it would go
    as of when it arrived at the server (L{as_of}), not when its turn came:
    a line typed to a partner, held while the server wrote C{UNPAIRED},
    never reaches the lobby.  What the client had
    read when it sent cannot be known: a line still in flight when
    C{UNPAIRED} is written goes where the state says when it is read
    (docs/protocol.md, "Lobby, direct messages, pairs").  Each method is given C{since}:
    changes up to then are forgotten (a node's C{--redis-wait} ago: an
    older line is answered "not sent" before where it goes matters; on one
    server, L{HELD_KEEP}).
    """

    __slots__ = ("_forgotten", "_order", "by_conn")

    def __init__(self) -> None:
        # By connection, oldest first (read-only outside: empty when no
        # change is kept but a forgotten connection's).
        self.by_conn: dict[Any, deque[_Shown]] = {}
        # Every change, oldest first, for their expiry; a forgotten
        # connection's stay until then, let go of it (forget).
        self._order: deque[_Shown] = deque()
        self._forgotten = 0  # how many of _order are a forgotten connection's

    def changed(self, conn: Any, now: float, before: str, since: float) -> None:
        """C{conn} was just shown a pairing or its end; until then, C{before}."""
        self._expire(since)
        shown = _Shown(now, before, conn)
        self.by_conn.setdefault(conn, deque()).append(shown)
        self._order.append(shown)

    def __len__(self) -> int:
        """How many changes are kept (0: no line can be meant elsewhere)."""
        return len(self._order) - self._forgotten

    def as_of(self, conn: Any, at: float, current: str, since: float) -> str:
        """What C{conn} had been shown of its partner at C{at} (a change at
        the same instant counts as before it): C{current} unless it was
        shown a change since."""
        self._expire(since)
        for shown in self.by_conn.get(conn, ()):
            if shown.when > at:
                return shown.before
        return current

    def forget(self, conn: Any) -> None:
        """C{conn} is gone: nothing of it is kept (until a
        later change or line expired them, closed connections were kept).
        Its changes let go of it and are skipped at their expiry: the work
        is its own changes', not every kept one's (a mass disconnect was
        quadratic in the changes kept)."""
        changes = self.by_conn.pop(conn, None)
        if changes is None:
            return
        for shown in changes:
            shown.conn = None
        self._forgotten += len(changes)
        if self._forgotten == len(self._order):  # nothing left but those
            self._order.clear()
            self._forgotten = 0

    def _expire(self, since: float) -> None:
        order = self._order
        while order and order[0].when <= since:
            conn = order.popleft().conn
            if conn is None:
                self._forgotten -= 1
                continue
            changes = self.by_conn[conn]
            changes.popleft()
            if not changes:
                del self.by_conn[conn]


class _Shown:
    """One change a connection was shown (L{PairsShown}): when, the
    partner shown until then, and the connection (C{None} once forgotten)."""

    __slots__ = ("before", "conn", "when")

    def __init__(self, when: float, before: str, conn: Any) -> None:
        self.when = when
        self.before = before
        self.conn: Any = conn
