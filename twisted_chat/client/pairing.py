"""
The user's private conversation: with whom, the open invitations (to the
user, and the user's own), and whether the server's next C{PAIRED} or
C{UNPAIRED} is the user's doing (docs/client.md, "Commands").  No I/O: the
client shows what these changes mean.
"""

from __future__ import annotations

from twisted_chat.wire import ACCOUNTS_UNAVAILABLE, list_cost_verb, nick_key

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

    def sending(self, verb: str, paired: bool) -> None:
        """The user sends C{verb} (C{paired}: while in a pair)."""
        if verb == "UNPAIR" and (paired or self.invited):
            # Only then can the server's next UNPAIRED be our doing.
            self._unpair_requested = True
        if verb in ("ACCEPT", "PAIR"):
            self._joining = True

    def pending(self, invitee: str) -> None:
        """C{PENDING}: the user's invitation to C{invitee} is open."""
        self._joining = False  # a PAIRED from now on is the invitee's doing
        self.invited = invitee

    def invite(self, inviter: str) -> None:
        """C{INVITE}: one per inviter is kept."""
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
        anyone = code == "unavailable" and not text.startswith(_UNAVAILABLE_FOR_ONE)
        if code == "not-paired" or anyone:
            self._unpair_requested = False  # our /unpair left nothing, or was not done
        if (code in PAIRING_ERRORS or anyone
                or (code == "flood" and list_cost_verb(text) in _PAIRING_VERBS)):
            self._joining = False
