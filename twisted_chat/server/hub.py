"""
The chat domain: who is online, the lobby, invitations, pairs and history.

The hub knows nothing of sockets or bytes.  Commands come in as method calls
from the connection layer; their consequences go out as calls on a
L{Listener}, which decides how to tell the people concerned.  A rule broken by
a command raises L{HubError} before anything has changed.  Time comes from an
injected C{IReactorTime}, so tests drive it with C{task.Clock}.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import LogLevel

from twisted_chat.server import logs
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.history import Entry, History, make_entry
from twisted_chat.wire import ErrorCode, Refusal, nick_key

#: The fewest sources (L{User.source}: an address) whose users' invitations
#: can fill one user's C{max_invites} (when it is at least this): one
#: source may hold at most C{max_invites // SOURCES_TO_FILL} of them (at
#: least one; 2 of the default 10).  Why five: docs/security.md,
#: "Amplification" (--max-invites).
SOURCES_TO_FILL = 5


def source_share(max_invites: int) -> int:
    """Open invitations to one user the users of one source may hold."""
    return max(1, max_invites // SOURCES_TO_FILL)


class State(str, Enum):
    LOBBY = "lobby"
    PAIRED = "paired"


class HubError(Refusal):
    """A command that breaks a rule of the chat's (L{Refusal})."""


class NickTaken(Exception):
    """The nick is online already (compared without regard to case);
    C{nick} is the online user's, as its owner spelled it."""

    def __init__(self, nick: str) -> None:
        super().__init__(nick)
        self.nick = nick


@dataclass(eq=False, slots=True)
class User:
    """
    One online user.  C{conn} is whatever the connection layer registered
    the user with; the hub only hands it back through the L{Listener}.
    """

    nick: str
    key: str
    conn: Any
    address: str
    # Who the user counts as for the limits shared by an address (the
    # connection layer's address bucket); "" for none.
    source: str = ""
    state: State = State.LOBBY
    partner: User | None = None
    outgoing: Invitation | None = None
    # Open invitations received, by inviter key; None while there are none
    # (most users never get one: no empty dict per user).
    incoming: dict[str, Invitation] | None = None
    # While paired: the lobby history's position when the pair began, so
    # that what the lobby said meanwhile is replayed when it ends.
    paired_at: int = 0


def _received(user: User) -> list[Invitation]:
    """A copy of C{user}'s open invitations received (ending one changes them)."""
    return list(user.incoming.values()) if user.incoming else []


@dataclass(eq=False, slots=True)
class Invitation:
    inviter: User
    invitee: User
    timer: IDelayedCall | None = None


class Listener(Protocol):
    """
    How the hub's decisions reach people.  Each method names its recipients;
    those called "everyone" are read from L{Hub.online} or L{Hub.lobby}.
    """

    def deliver_gathered(self) -> None:
        """Deliver what was addressed so far, to those it was addressed to:
        a change follows that the listener is told of only once it is made
        (a pairing takes two users out of the lobby), or not at all (a
        cluster replica's quiet change).  Going offline is L{leaving},
        coming back from a pair L{returning}."""

    def returning(self, user: User) -> None:
        """C{user}'s pair ended and it is about to come back to the lobby:
        of what was addressed to the lobby before this call, C{user} gets
        nothing live (it was told each JOINED and LEFT while paired, and
        L{unpaired} replays the messages)."""

    def leaving(self, user: User) -> None:
        """C{user} is about to go offline: to C{user}, what was addressed to
        the lobby while it was in it.  (The others may get it later, with
        C{user}'s LEFT after it.)"""

    def ready(self, user: User) -> None:
        """C{user} has just come online, into the lobby: to C{user}, READY,
        the lobby history, the user list.  Of what was addressed to the lobby
        before this call, C{user} must get nothing live: it is in the history.
        Nothing reaches C{user} unless L{joined} for it returns: if that
        raises, the hub undoes the user, who must not think it is online."""

    def joined(self, ts: float, user: User) -> None:
        """To everyone online but C{user}."""

    def left(self, ts: float, user: User, reason: str, text: str) -> None:
        """To everyone online (C{user} is no longer online)."""

    def lobby_message(self, entry: Entry, sender: User) -> None:
        """To everyone in the lobby, C{sender} included (who said C{entry})."""

    def private_message(self, ts: float, sender: User, recipient: User, text: str) -> None:
        """To C{recipient}, and the sender's copy to C{sender}."""

    def invited(self, invitation: Invitation) -> None:
        """PENDING to the inviter, INVITE to the invitee."""

    def paired(self, user: User, partner: User) -> None:
        """PAIRED to both."""

    def unpaired(
        self, user: User, partner: User, reason: str, missed: Sequence[Entry]
    ) -> None:
        """To C{user}: UNPAIRED <partner> <reason>, then C{missed} (the lobby
        messages sent while it was paired, at most the last N, oldest first;
        it got none of them live), then the user list."""

    def declined(self, inviter: User, invitee: User, reason: str) -> None:
        """To C{inviter}: its invitation ended without a pairing."""

    def cancelled(self, invitee: User, inviter: User, reason: str) -> None:
        """To C{invitee}: an invitation it had ended without a pairing."""


# The invitation timeout's default (--invite-timeout's).
_SERVER_DEFAULTS = ServerConfig()


@dataclass(frozen=True, slots=True)
class InviteLimits:
    """
    The two limits a C{PAIR}'s invitation is checked against, named: a
    cluster replica passes its inviter's node's, and two bare numbers could
    be swapped unseen.  C{None}: that limit does not apply.

    @ivar max_invites: open invitations one user may have received (of
        them, one source's users may hold L{source_share}).
    @ivar max_invites_per_source: open invitations the users of one source
        (L{User.source}) may have sent, together.
    """

    max_invites: int | None
    max_invites_per_source: int | None


@dataclass(frozen=True, slots=True)
class HubSettings:
    """
    The hub's options (a cluster gives every replica the same).

    @ivar invite_timeout: seconds an invitation stays open.
    @ivar log_messages: the text of lobby and private messages in the log
        (--log-messages).
    @ivar max_invites: open invitations one user may have received (of
        them, one source's users may hold L{source_share}).
    @ivar max_invites_per_source: open invitations the users of one source
        (L{User.source}) may have sent, together.
    """

    invite_timeout: float = _SERVER_DEFAULTS.invite_timeout
    log_messages: bool = False
    max_invites: int | None = None
    max_invites_per_source: int | None = None

    @property
    def invite_limits(self) -> InviteLimits:
        """C{max_invites} and C{max_invites_per_source}, as L{Hub.pair} takes them."""
        return InviteLimits(max_invites=self.max_invites,
                            max_invites_per_source=self.max_invites_per_source)


class Hub:
    log = logs.logger()

    def __init__(
        self,
        clock: IReactorTime,
        history: History,
        listener: Listener,
        settings: HubSettings = HubSettings(),
        repeats: logs.Repeats | None = None,
    ) -> None:
        """
        @param repeats: limits the pairing lines one source writes (see
            L{_log_pairing}); by default one of the hub's own on C{clock}.
        """
        self.clock = clock
        self.repeats = repeats if repeats is not None else logs.Repeats(clock)
        self.history = history
        self.listener = listener
        self.invite_timeout = settings.invite_timeout
        self.log_messages = settings.log_messages
        self.invite_limits = settings.invite_limits
        self._sent_by_source: dict[str, int] = {}
        self.online: dict[str, User] = {}
        self.lobby: dict[str, User] = {}
        #: The online users in a pair, by key: the members of the paired
        #: users' batch (LineListener's paired_fanout), found without a
        #: walk of everyone online.
        self.paired: dict[str, User] = {}
        #: Changes of the lobby's membership or of who is online (so of
        #: the user list: who, in which state) so far: a list of the lobby's
        #: members, or the user list, made at one count is still right at
        #: the same count.
        self.lobby_changes = 0
        self._sorted_keys: list[str] = []

    # -- queries -----------------------------------------------------------

    @property
    def keys_in_order(self) -> list[str]:
        """The online users' keys, sorted; read-only for callers."""
        return self._sorted_keys

    def is_online(self, user: User) -> bool:
        return self.online.get(user.key) is user

    def find(self, nick: str) -> User | None:
        """The user online as C{nick} (compared without regard to case), if any."""
        return self.online.get(nick_key(nick))

    # -- arriving and leaving ----------------------------------------------

    def register(self, nick: str, conn: Any, address: str = "-", source: str = "") -> User:
        """
        Bring a user online in the lobby.

        @raise NickTaken: someone online has that nick already.
        """
        key = nick_key(nick)
        holder = self.online.get(key)
        if holder is not None:
            raise NickTaken(holder.nick)
        user = User(nick=nick, key=key, conn=conn, address=address, source=source)
        self.online[key] = user
        self.lobby[key] = user
        self.lobby_changes += 1
        bisect.insort(self._sorted_keys, key)
        self.log.info("{nick} is ready from {address}", nick=nick, address=address)
        try:
            self.listener.ready(user)
            self.listener.joined(self.clock.seconds(), user)
        except BaseException:
            # The caller never learns of this user, so it could never take it
            # offline: undo, rather than leave a ghost holding the nick.
            del self.online[key]
            del self.lobby[key]
            self.lobby_changes += 1
            self._sorted_keys.remove(key)
            raise
        return user

    def leave(self, user: User, reason: str, text: str = "") -> None:
        """
        Take a user offline for any reason.  Everyone learns it first
        (C{LEFT}); then the invitations and the pair it had end.  Calling it
        for a user who is not online does nothing.
        """
        if not self.is_online(user):
            return
        self.listener.leaving(user)
        del self.online[user.key]
        self.lobby.pop(user.key, None)
        self.paired.pop(user.key, None)
        # Every departure, a paired user's too: a user list made before its
        # partner's return (below) must lack it.
        self.lobby_changes += 1
        del self._sorted_keys[bisect.bisect_left(self._sorted_keys, user.key)]
        self.log.info("{nick} left ({reason})", nick=user.nick, reason=reason)
        self.listener.left(self.clock.seconds(), user, reason, text)
        if user.outgoing is not None:
            self._end(user.outgoing, "gone")
        for invitation in _received(user):
            self._end(invitation, "gone")
        partner = user.partner
        if partner is not None:
            missed = self._separate(user, partner)
            self.listener.unpaired(partner, user, "disconnected", missed)

    # -- talking -----------------------------------------------------------

    def say(self, user: User, text: str) -> None:
        """C{MSG}: to the lobby, or to the partner while paired."""
        ts = self.clock.seconds()
        partner = user.partner
        if partner is not None:
            if self.log_messages:
                self._log_private(user, partner, text)
            self.listener.private_message(ts, user, partner, text)
        else:
            if self.log_messages:
                self.log.info("lobby <{nick}> {text}", nick=user.nick, text=text)
            entry = make_entry((ts, user.nick, text))
            self.history.record(entry)
            self.listener.lobby_message(entry, user)

    def direct(self, user: User, nick: str, text: str) -> None:
        """C{DM}: a private message, in the lobby or paired."""
        target = self._other(user, nick, "you cannot send a private message to yourself")
        if self.log_messages:
            self._log_private(user, target, text)
        self.listener.private_message(self.clock.seconds(), user, target, text)

    def _log_private(self, sender: User, recipient: User, text: str) -> None:
        self.log.info("private <{sender}> to {recipient}: {text}",
                      sender=sender.nick, recipient=recipient.nick, text=text)

    def _other(self, user: User, nick: str, self_text: str) -> User:
        target = self.find(nick)
        if target is user:
            raise HubError(ErrorCode.SELF, self_text)
        if target is None:
            raise HubError(ErrorCode.NO_SUCH_NICK, f"{nick} is not online")
        return target

    # -- pairing -----------------------------------------------------------

    def pair(self, user: User, nick: str, timeout: float | None = None,
             limits: InviteLimits | None = None) -> None:
        """C{PAIR}: invite C{nick}, or pair at once if it invited C{user}.
        The invitation stays open C{timeout} seconds (default: the hub's
        C{invite_timeout}), checked against C{limits} (default: the hub's).
        A cluster replica passes the origin node's, so that every replica
        decides alike."""
        target = self._other(user, nick, "you cannot invite yourself")
        if user.partner is not None:
            raise HubError(
                ErrorCode.BUSY, f"you are paired with {user.partner.nick}; UNPAIR first"
            )
        if target.partner is not None:
            raise HubError(ErrorCode.BUSY, f"{target.nick} is in a private conversation")
        mutual = target.outgoing
        if mutual is not None and mutual.invitee is user:
            self._pair(mutual)
            return
        if user.outgoing is not None:
            raise HubError(
                ErrorCode.PENDING,
                f"your invitation to {user.outgoing.invitee.nick} is still open; "
                "UNPAIR withdraws it",
            )
        self._check_invite_limits(user, target,
                                  self.invite_limits if limits is None else limits)
        invitation = Invitation(user, target)
        if user.source:
            self._sent_by_source[user.source] = self._sent_by_source.get(user.source, 0) + 1
        if timeout is None:
            timeout = self.invite_timeout
        invitation.timer = self.clock.callLater(timeout, self._expire, invitation)
        user.outgoing = invitation
        if target.incoming is None:
            target.incoming = {}
        target.incoming[user.key] = invitation
        # At debug, as the invitation's end; a pairing is logged at info, a
        # few lines per source at most (_log_pairing): docs/security.md, "Logging".
        self.log.debug("{inviter} invited {invitee}", inviter=user.nick, invitee=target.nick)
        self.listener.invited(invitation)

    def _check_invite_limits(self, user: User, target: User, limits: InviteLimits) -> None:
        """
        An invitation storm: many users (or one address's many connections)
        inviting one victim, who cannot refuse them wholesale.  C{busy}: the
        invitee cannot take another now, as when it is paired; C{pending}:
        the inviter's side has too many invitations open (to this invitee:
        its L{source_share}; in all: C{max_invites_per_source}).
        """
        max_invites, max_per_source = limits.max_invites, limits.max_invites_per_source
        if max_invites is not None and len(target.incoming or ()) >= max_invites:
            raise HubError(
                ErrorCode.BUSY,
                f"{target.nick} has {max_invites} open invitations already; try again later",
            )
        if max_invites is not None and user.source and target.incoming:
            share = source_share(max_invites)
            held = sum(1 for invitation in target.incoming.values()
                       if invitation.inviter.source == user.source)
            if held >= share:
                raise HubError(
                    ErrorCode.PENDING,
                    f"users from your address have {share} open invitations to "
                    f"{target.nick} already; wait for one to end",
                )
        if (
            max_per_source is not None
            and user.source
            and self._sent_by_source.get(user.source, 0) >= max_per_source
        ):
            raise HubError(
                ErrorCode.PENDING,
                f"users from your address have {max_per_source} open invitations already; "
                "wait for one to end",
            )

    def accept(self, user: User, nick: str) -> None:
        self._pair(self._invitation_from(user, nick))

    def reject(self, user: User, nick: str) -> None:
        self._end(self._invitation_from(user, nick), "rejected")

    def unpair(self, user: User) -> None:
        """C{UNPAIR}: leave the conversation, or withdraw one's invitation."""
        partner = user.partner
        if partner is not None:
            missed = self._separate(user, partner)
            self._log_pairing(user, "unpair", "{a} and {b} unpaired", a=user.nick, b=partner.nick)
            self.listener.unpaired(user, partner, "left", missed)
            self.listener.unpaired(partner, user, "left", missed)
        elif user.outgoing is not None:
            self._end(user.outgoing, "withdrawn")
        elif user.incoming:
            # Invitations received are REJECT's to decline, not UNPAIR's.
            raise HubError(ErrorCode.NOT_PAIRED, "you are not paired and have sent no "
                           "invitation (REJECT declines one you received)")
        else:
            raise HubError(ErrorCode.NOT_PAIRED, "you are not paired and have no open invitation")

    def _invitation_from(self, user: User, nick: str) -> Invitation:
        invitation = user.incoming.get(nick_key(nick)) if user.incoming else None
        if invitation is None:
            online = self.find(nick)  # named as its owner spells it, if online
            raise HubError(ErrorCode.NO_INVITE, "you have no open invitation from "
                           f"{online.nick if online is not None else nick}")
        return invitation

    def _pair(self, invitation: Invitation) -> None:
        """Turn an open invitation into a pair; every other invitation of
        either side ends as busy."""
        inviter, invitee = invitation.inviter, invitation.invitee
        self._detach(invitation)
        self.listener.deliver_gathered()
        # Every lobby message before this point has reached both (what was
        # gathered is delivered); none after will.
        position = self.history.position
        for one, other in ((inviter, invitee), (invitee, inviter)):
            one.state = State.PAIRED
            one.partner = other
            one.paired_at = position
            del self.lobby[one.key]
            self.paired[one.key] = one
            self.lobby_changes += 1
        # The invitee's command (ACCEPT, or the second of a mutual PAIR) made it.
        self._log_pairing(invitee, "pair", "{a} and {b} paired", a=inviter.nick, b=invitee.nick)
        self.listener.paired(inviter, invitee)
        self.listener.paired(invitee, inviter)
        for one in (inviter, invitee):
            if one.outgoing is not None:
                self._end(one.outgoing, "busy")
            for other_invitation in _received(one):
                self._end(other_invitation, "busy")

    def _log_pairing(self, actor: User, kind: str, fmt: str, **kwargs: Any) -> None:
        """
        A pairing's start or end, at info, charged to C{actor}'s source (its
        address as the connection layer counts it; without one, an exempt
        address's or a UNIX socket's, its own address as shown), per source
        and kind at most L{logs.Repeats}' burst a window (3 in 10 s); the
        next line let through says how many were left out.  Why:
        docs/security.md, "Logging" (pairings).
        """
        self.repeats.log(self.log, LogLevel.info, actor.source or actor.address, kind, fmt,
                         **kwargs)

    def _separate(self, user: User, partner: User) -> list[Entry]:
        """
        Both back to the lobby (or, for one who left, just unlinked).

        @return: the lobby messages the pair missed (the two were paired at
            the same point), at most the last N: from here on they are in
            the lobby and get every message live.
        """
        missed = self.history.since(user.paired_at)
        for one in (user, partner):
            one.partner = None
            one.state = State.LOBBY
            if self.is_online(one):
                del self.paired[one.key]
                # Not a flush to everyone (deliver_gathered): n departures of
                # paired users in one turn were n writes to each member.
                self.listener.returning(one)
                self.lobby[one.key] = one
                self.lobby_changes += 1
        return missed

    def _expire(self, invitation: Invitation) -> None:
        invitation.timer = None
        self._end(invitation, "timeout")

    def _detach(self, invitation: Invitation) -> None:
        if invitation.timer is not None and invitation.timer.active():
            invitation.timer.cancel()
        invitation.timer = None
        inviter = invitation.inviter
        inviter.outgoing = None
        invitee = invitation.invitee
        assert invitee.incoming is not None
        del invitee.incoming[inviter.key]
        if not invitee.incoming:
            invitee.incoming = None
        if inviter.source:
            left = self._sent_by_source.get(inviter.source, 1) - 1
            if left > 0:
                self._sent_by_source[inviter.source] = left
            else:
                self._sent_by_source.pop(inviter.source, None)

    def _end(self, invitation: Invitation, reason: str) -> None:
        """End an invitation without a pairing; tell each side still online."""
        self._detach(invitation)
        inviter, invitee = invitation.inviter, invitation.invitee
        self.log.debug(  # at debug, as its start (PAIR)
            "invitation {inviter} -> {invitee} ended: {reason}",
            inviter=inviter.nick,
            invitee=invitee.nick,
            reason=reason,
        )
        if self.is_online(inviter):
            self.listener.declined(inviter, invitee, reason)
        if self.is_online(invitee):
            self.listener.cancelled(invitee, inviter, reason)

    # -- shutting down -----------------------------------------------------

    def close(self) -> None:
        """Cancel every timer the hub holds (server shutdown)."""
        for user in self.online.values():
            if user.outgoing is not None and user.outgoing.timer is not None:
                if user.outgoing.timer.active():
                    user.outgoing.timer.cancel()
                user.outgoing.timer = None
