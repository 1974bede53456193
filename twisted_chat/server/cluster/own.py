"""
A cluster node's own users: the index its fan-out walks.

A node's replica of the hub holds every user of the cluster; a user on
another node has a L{RemoteConn}, which writes nowhere.  The node writes
lines only to its own users, so its lobby fan-out walks this index, not the
hub's lobby, and a lobby message costs the node nothing per member of the
other nodes (docs/cluster.md, "The model").

L{OwnMembers} is the hub's listener on a node: it passes every call on to
the node's own listener (C{server/lines.py}) and keeps the index (and
its users in a pair, L{OwnMembers.paired_users}) from the calls
that tell of a change: a newcomer (L{joined}), a departure (L{left}), a
pairing (L{paired}) and a return to the lobby (L{unpaired}).  The hub makes
each of those calls right after changing its lobby, so whenever lines go
out the index is the hub's lobby restricted to this node's users, in the
hub's order.  A newcomer enters it only once its C{JOINED} is gathered (the
lines gathered before are in its history: the newcomer cut), and one back
from a pair once its cut is made (L{Listener.returning}: it was told those
lines while paired, or gets them in its replay).

For C{--metrics} it also counts the other nodes' users online by node
(L{OwnMembers.remote}), and says how many of its own are online and in the
lobby (L{OwnMembers.counts}), sizes a scrape's thread may read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted_chat.server.cluster.remote import Nowhere, RemoteConn, stand_in
from twisted_chat.server.history import Entry
from twisted_chat.server.hub import Hub, Invitation, Listener, User
from twisted_chat.server.output.fanout import Member

__all__ = ["Hider", "OwnMembers"]


class Hider(Protocol):
    """Keeps invitations from their invitee (L{AfterLoss}); each method
    records or forgets what it kept, and says whether it kept it."""

    def hide_invite(self, invitation: Invitation) -> bool: ...

    def hide_end(self, invitee: User, inviter: User) -> bool: ...


class OwnMembers:
    """The hub's L{Listener} in front of the node's own; see the module docstring."""

    __slots__ = ("_listener", "_lobby", "_members", "_online", "_paired", "hider", "remote")

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        # Insertion-ordered, as the hub's own dicts: the same order of members.
        self._online: dict[User, None] = {}
        self._lobby: dict[User, Member] = {}
        # Those of _online in a pair (the members of the paired users' batch).
        self._paired: dict[User, None] = {}
        # lobby_members' tuple of the _lobby's values, None once it changed:
        # set to None wherever _lobby changes (so a departure lets go of it).
        self._members: tuple[Member, ...] | None = ()
        #: The users of other nodes online, by node (read by --metrics).
        self.remote: dict[str, int] = {}
        #: After a loss: the invitations kept from their invitee, shown
        #: paired (set by the node).
        self.hider: Hider | None = None

    # -- the index -----------------------------------------------------------

    def lobby_members(self) -> tuple[Member, ...]:
        """The connections of this node's users in the lobby: the same
        tuple while the index does not change, so that the fan-out's direct
        pass can tell it did not (sendqueue.DirectPass); a new one after
        any change (a fan-out may outlast a change: it keeps its own)."""
        members = self._members
        if members is None:
            members = self._members = tuple(self._lobby.values())
        return members

    def users(self) -> list[User]:
        """This node's users online, in the lobby or paired.  A test helper:
        the tests compare what a node holds as a whole; the server never asks."""
        return list(self._online)

    def paired_users(self) -> list[User]:
        """This node's users in a pair (a copy: a write may end one)."""
        return list(self._paired)

    def counts(self) -> tuple[int, int]:
        """This node's users online, and of them those in the lobby (sizes
        only: read from any thread)."""
        return len(self._online), len(self._lobby)

    def reindex(self, hub: Hub) -> None:
        """Build the index again from C{hub}, which changed without telling
        this listener (a replica rebuilt after a loss, a C{hello}'s quiet
        part): its lobby's order, restricted to this node's users."""
        remote: dict[str, int] = {}
        online: dict[User, None] = {}
        for user in hub.online.values():
            conn = user.conn
            if isinstance(conn, RemoteConn):
                remote[conn.node] = remote.get(conn.node, 0) + 1
            else:
                online[user] = None
        self._online = online
        self._lobby = {user: user.conn for user in hub.lobby.values()
                       if not isinstance(user.conn, RemoteConn)}
        self._paired = {user: None for user in hub.paired.values()
                        if not isinstance(user.conn, RemoteConn)}
        self._members = None
        self.remote = remote

    # -- the Listener: what changes the index ----------------------------------

    def joined(self, ts: float, user: User) -> None:
        self._listener.joined(ts, user)
        conn = user.conn
        if isinstance(conn, RemoteConn):
            self.remote[conn.node] = self.remote.get(conn.node, 0) + 1
        else:
            self._online[user] = None
            self._lobby[user] = conn
            self._members = None

    def left(self, ts: float, user: User, reason: str, text: str) -> None:
        conn = user.conn
        if isinstance(conn, RemoteConn):
            n = self.remote.get(conn.node, 0) - 1
            if n > 0:
                self.remote[conn.node] = n
            else:
                self.remote.pop(conn.node, None)
        self._online.pop(user, None)
        self._paired.pop(user, None)
        if user in self._lobby:
            del self._lobby[user]
            self._members = None
        self._listener.left(ts, user, reason, text)

    def paired(self, user: User, partner: User) -> None:
        if user in self._lobby:
            del self._lobby[user]
            self._members = None
        if user in self._online:
            self._paired[user] = None
        self._listener.paired(user, partner)

    def unpaired(self, user: User, partner: User, reason: str, missed: Sequence[Entry]) -> None:
        self._paired.pop(user, None)
        self._listener.unpaired(user, partner, reason, missed)
        if user in self._online:
            self._lobby[user] = user.conn
            self._members = None

    # -- the Listener: passed on ------------------------------------------------

    def deliver_gathered(self) -> None:
        self._listener.deliver_gathered()

    def leaving(self, user: User) -> None:
        self._listener.leaving(user)

    def returning(self, user: User) -> None:
        self._listener.returning(user)

    def ready(self, user: User) -> None:
        # READY, the history and the user list are for the newcomer alone:
        # its own node sends them.  Building them for a connection that
        # writes nowhere cost every node the whole user list per
        # registration elsewhere (a node restoring a snapshot of n users: n
        # times).  The lines add the newcomer to their list at joined().
        if not isinstance(user.conn, RemoteConn):
            self._listener.ready(user)

    def lobby_message(self, entry: Entry, sender: User) -> None:
        self._listener.lobby_message(entry, sender)

    def private_message(self, ts: float, sender: User, recipient: User, text: str) -> None:
        self._listener.private_message(ts, sender, recipient, text)

    def invited(self, invitation: Invitation) -> None:
        hider = self.hider
        if hider is not None and hider.hide_invite(invitation):
            invitation = Invitation(invitation.inviter, stand_in(invitation.invitee.nick))
        self._listener.invited(invitation)

    def declined(self, inviter: User, invitee: User, reason: str) -> None:
        self._listener.declined(inviter, invitee, reason)

    def cancelled(self, invitee: User, inviter: User, reason: str) -> None:
        hider = self.hider
        if hider is not None and hider.hide_end(invitee, inviter):
            # Never shown the invitation, the invitee is not told its end,
            # but the end is counted as any other (LineListener.cancelled):
            # this node's user still (not a RemoteConn's), writing nowhere.
            invitee = User(nick=invitee.nick, key=invitee.key, conn=Nowhere(),
                           address=invitee.address)
        self._listener.cancelled(invitee, inviter, reason)

