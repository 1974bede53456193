"""
The user's private conversation: with whom, the open invitations (to the
user, and the user's own), and whether the server's next C{PAIRED} or
C{UNPAIRED} is the user's doing (docs/client.md, "Commands").  No I/O: the
client shows what these changes mean.
"""

from __future__ import annotations

from twisted_chat.wire import (
    ACCOUNTS_UNAVAILABLE,
    LINES_DROPPED,
    LOBBY_RATE,
    is_valid_nick,
    list_cost_verb,
    nick_key,
)

# What the server answers a PAIR or ACCEPT that pairs nobody (chat/1, "Pairing").
PAIRING_ERRORS = frozenset({"no-such-nick", "self", "busy", "no-invite", "pending"})
# The text of a cluster's ERROR unavailable that answers a REGISTER or PASSWD
# only.  Any other may answer any command, a pairing one included
# (docs/protocol.md, "Beyond chat/1"); a MSG's "not sent" after a pair
# change never comes here (replies.on_ERROR shows it as a message refused).
_UNAVAILABLE_FOR_ONE = (ACCOUNTS_UNAVAILABLE,)
# The commands an ERROR flood names when it does not do them for what the
# user list in their answer would cost (wire.list_cost_verb).
_PAIRING_VERBS = ("PAIR", "ACCEPT")


def may_be_not_done(code: str, text: str) -> bool:
    """
    Whether an C{ERROR} C{code} C{text} may answer a pairing command that
    was not done, without naming it: C{ERROR internal} (the server failed
    on a line), or an C{ERROR flood} for a line the flood control dropped
    (not a lobby message dropped for its address's lobby rate: only a
    C{MSG} is; nor a request refused for the user list's cost, which
    names it, or for password work).
    """
    if code == "internal":
        return True
    return code == "flood" and text.endswith(LINES_DROPPED) and LOBBY_RATE not in text


class Pairing:
    """
    @ivar partner: whom the user is paired with (C{None}: the lobby).
    @ivar invites: the open invitations to the user, oldest first (at most
        L{INVITES_MAX}, whatever a server sends).
    @ivar invited: the user's own open invitation (C{None}: none).
    """

    INVITES_MAX = 100

    def __init__(self) -> None:
        self.partner: str | None = None
        self.invites: list[str] = []
        self.invited: str | None = None
        # ACCEPT or PAIR sent and not answered yet: a PAIRED now is our doing.
        self._joining = False
        self._unpair_requested = False  # an UNPAIRED now is our doing
        # The pairing command in flight ("/accept carol"); the
        # messages (MSG, DM) sent before it; whether a cluster answered a
        # line ERROR unconfirmed since (its lines after it are answered
        # before it takes effect: see not_done).
        self._command = ""
        self._messages_before = 0
        self._unconfirmed = False

    def sending(self, verb: str, paired: bool, command: str = "", messages: int = 0) -> None:
        """The user sends C{verb} (C{paired}: while in a pair), the
        command C{command} (C{/accept carol}), after C{messages} messages sent."""
        if verb == "UNPAIR" and (paired or self.invited):
            # Only then can the server's next UNPAIRED be our doing.
            self._unpair_requested = True
        elif verb in ("ACCEPT", "PAIR"):
            self._joining = True
        else:
            return
        self._command = command or "/" + verb.lower()
        self._messages_before = messages
        self._unconfirmed = False

    def pending(self, invitee: str) -> None:
        """C{PENDING}: the user's invitation to C{invitee} is open."""
        self._joining = False  # a PAIRED from now on is the invitee's doing
        self.invited = invitee

    def invite(self, inviter: str) -> None:
        """C{INVITE}: one per inviter is kept, if a nick at all (C{/accept}
        could not answer another, and a hostile server's may be megabytes)."""
        if not is_valid_nick(inviter):
            return
        known = nick_key(inviter) in (nick_key(n) for n in self.invites)
        if not known and len(self.invites) < self.INVITES_MAX:
            self.invites.append(inviter)

    def paired(self, partner: str) -> bool:
        """C{PAIRED}: whether it was the user's doing (C{/accept}, C{/pair})."""
        self.partner = partner
        self.invited = None
        self.cancelled(partner)
        ours, self._joining = self._joining, False
        return ours

    def unpaired(self) -> bool:
        """C{UNPAIRED}: whether it was the user's doing (C{/unpair})."""
        by_me, self._unpair_requested = self._unpair_requested, False
        self.partner = None
        return by_me

    def declined(self, nick: str, reason: str) -> None:
        """C{DECLINED}: C{nick} declined the user's invitation, or the user withdrew it."""
        if reason == "withdrawn":
            self._unpair_requested = False
        if self.invited is not None and nick_key(self.invited) == nick_key(nick):
            self.invited = None

    def cancelled(self, nick: str) -> None:
        """C{nick}'s invitation to the user is over."""
        self.invites = [n for n in self.invites if nick_key(n) != nick_key(nick)]

    def refused(self, code: str, text: str) -> None:
        """
        An C{ERROR} C{code} C{text}: a pairing command it answers did nothing.
        A cluster's C{ERROR unavailable} that may answer any command ends
        the wait for ours too: had it been carried out, a C{PAIRED} or
        C{UNPAIRED} taken for the other side's doing only leaves lines
        unsent (and said), where one taken for ours would send lines where
        they were not typed for (docs/client.md, "Scripts and pipes").
        """
        if code == "unconfirmed":
            self._unconfirmed = True
        anyone = code == "unavailable" and not text.startswith(_UNAVAILABLE_FOR_ONE)
        if code == "not-paired" or anyone:
            self._unpair_requested = False  # our /unpair left nothing, or was not done
        if (code in PAIRING_ERRORS or anyone
                or (code == "flood" and list_cost_verb(text) in _PAIRING_VERBS)):
            self._joining = False

    def inviting(self, nick: str) -> bool:
        """Whether a C{/pair NICK} waits for its answer."""
        command, _, target = self._command.partition(" ")
        return self._joining and command == "/pair" and nick_key(target) == nick_key(nick)

    def in_flight(self) -> int | None:
        """The messages sent before the pairing command in flight, or
        C{None}: none is, or a cluster answered a line C{ERROR unconfirmed}
        since it was sent."""
        if not (self._joining or self._unpair_requested) or self._unconfirmed:
            return None
        return self._messages_before

    def not_done(self) -> str:
        """
        An error that L{may_be_not_done} answered the pairing command in
        flight, the caller found (L{in_flight}: no message sent before it is
        still unanswered; the server answers a connection's lines in order,
        so the error is not a later line's): the command was not done (or,
        after a fault, not all of it: a C{PAIRED} or C{UNPAIRED} it still
        brings looks like the other side's doing), and its wait ends.  (An
        earlier command the error may answer instead is not told apart:
        taken wrongly, the C{PAIRED} or C{UNPAIRED} of a command that did
        go through looks like the other side's doing, and the lines typed
        after it are not sent, and said, never sent where they were not
        typed for: as for a cluster's C{ERROR unavailable}.)  The command
        (C{/accept carol}).
        """
        self._joining = self._unpair_requested = False
        return self._command
