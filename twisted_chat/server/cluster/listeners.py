"""
The hub listeners a replica puts in front of its node's own (L{LineListener})
while it changes the hub in ways its node's users must not hear in full:
replaying events they have seen (a rebuild), a C{hello}'s change they have
seen already, a pair brought back, a user leaving whom they were not shown
online.  What the users see then is in docs/cluster.md, "What is guaranteed"
(its "After a loss, every replica agrees").

L{Silent} tells nobody; L{Forward} passes every event on, and L{SyncFirst},
L{NotShownLeaving} and L{Between} change what they must.  L{Quiet} puts
them in front of the hub's listener and back (L{Quiet.through}, the one
place that does), and knows whether the listener missed changes.  They
follow the
hub's L{Listener} method by method, as the lines and the index of the
node's own users (C{cluster/own.py}) do: a new Listener event is added to
these too.  They are apart from L{replica} so that a reader of that module
meets the replica first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from twisted_chat.server.history import Entry
from twisted_chat.server.hub import Hub, Invitation, Listener, NickTaken, User

__all__ = ["SILENT", "Between", "Forward", "NotShownLeaving", "Quiet", "Silent", "SyncFirst"]


class Quiet:
    """
    The hub's listener while a replica keeps changes from it (L{quietly},
    L{through}), and whether it missed any since it last built its picture
    from the hub.
    C{stale}: tells the node that picture is stale (the replica's, which
    tells L{replica.Answers.rebuilt}, but not while it replays).  L{SyncFirst} and
    L{NotShownLeaving} call it back.
    """

    def __init__(self, hub: Hub, stale: Callable[[], None]) -> None:
        self.hub = hub
        self._stale = stale
        self.hushed = False

    def hush(self) -> None:
        """The listener was not told of a change: what it built from the hub
        is stale until L{sync_listener}."""
        self.hushed = True

    def sync_listener(self) -> None:
        """Tell the listener of the changes it was not told (it builds its
        picture again), if there were any since it last was."""
        self.unwrapped()
        if self.hushed:
            self._stale()
        self.hushed = False

    @contextmanager
    def quietly(self, quiet: bool = True) -> Iterator[None]:
        """Apply what follows without telling the listener (if C{quiet}),
        after what it had gathered goes out.  A registration refused in it
        (L{NickTaken}: the hub changed nothing) leaves the listener missing
        only what it missed before: no needless resync (a dead's user whose
        nick is someone else's by now, L{afterloss.AfterLoss.shown_back})."""
        if not quiet:
            yield
            return
        hushed = self.hushed
        with self.through(lambda listener: SILENT, hush=True):
            try:
                yield
            except NickTaken:
                self.hushed = hushed  # nothing changed: a resync pending stays, none added
                raise

    @contextmanager
    def through(self, wrap: Callable[[Listener], Listener], *, hush: bool = False,
                deliver: bool = True) -> Iterator[None]:
        """
        Apply what follows with the hub's listener (a pending L{SyncFirst}
        taken off) behind C{wrap(listener)}; then put it back, behind a
        L{SyncFirst} if it missed changes (L{hushed}), whatever raises on
        the way.  The one place that swaps the hub's listener.  Nothing is
        swapped while it is L{SILENT} (a rebuild's replay: nobody is told
        anything).

        @param hush: it misses what follows (L{hush}).
        @param deliver: what it gathered goes out first (its
            C{deliver_gathered}).
        """
        hub = self.hub
        if hub.listener is SILENT:
            yield
            return
        listener = self.unwrapped()
        try:
            # In the try: a raising flush puts back the SyncFirst it took off.
            if deliver:
                listener.deliver_gathered()
            hub.listener = wrap(listener)
            if hush:
                self.hush()
            yield
        finally:
            hub.listener = self.after_quiet(listener) if self.hushed else listener

    def after_quiet(self, listener: Listener) -> Listener:
        """The hub's listener after a quiet change: L{SyncFirst}."""
        return SyncFirst(self, listener)

    def unwrapped(self) -> Listener:
        """The hub's listener, a pending L{SyncFirst} taken off (not run)."""
        listener = self.hub.listener
        if isinstance(listener, SyncFirst):
            listener = listener.listener
            self.hub.listener = listener
        return listener


class Silent:
    """A hub listener that tells nobody: while a replica replays events its
    node's users have seen (L{Replica.rebuild}), or applies a C{hello}'s
    change they have seen already."""

    def deliver_gathered(self) -> None:
        pass

    def leaving(self, user: User) -> None:
        pass

    def returning(self, user: User) -> None:
        pass

    def ready(self, user: User) -> None:
        pass

    def joined(self, ts: float, user: User) -> None:
        pass

    def left(self, ts: float, user: User, reason: str, text: str) -> None:
        pass

    def lobby_message(self, entry: Entry, sender: User) -> None:
        pass

    def private_message(self, ts: float, sender: User, recipient: User, text: str) -> None:
        pass

    def invited(self, invitation: Invitation) -> None:
        pass

    def paired(self, user: User, partner: User) -> None:
        pass

    def unpaired(self, user: User, partner: User, reason: str, missed: Sequence[Entry]) -> None:
        pass

    def declined(self, inviter: User, invitee: User, reason: str) -> None:
        pass

    def cancelled(self, invitee: User, inviter: User, reason: str) -> None:
        pass


SILENT = Silent()


class Forward:
    """
    A hub listener that passes every event on to C{listener}, each after
    L{_before}; the wrappers below change what they must.  Written out, not
    forwarded by C{__getattr__}, so that mypy checks it against L{Listener}.
    """

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def _before(self) -> None:
        """Called before an event is passed on."""

    def deliver_gathered(self) -> None:
        self._before()
        self.listener.deliver_gathered()

    def leaving(self, user: User) -> None:
        self._before()
        self.listener.leaving(user)

    def returning(self, user: User) -> None:
        self._before()
        self.listener.returning(user)

    def ready(self, user: User) -> None:
        self._before()
        self.listener.ready(user)

    def joined(self, ts: float, user: User) -> None:
        self._before()
        self.listener.joined(ts, user)

    def left(self, ts: float, user: User, reason: str, text: str) -> None:
        self._before()
        self.listener.left(ts, user, reason, text)

    def lobby_message(self, entry: Entry, sender: User) -> None:
        self._before()
        self.listener.lobby_message(entry, sender)

    def private_message(self, ts: float, sender: User, recipient: User, text: str) -> None:
        self._before()
        self.listener.private_message(ts, sender, recipient, text)

    def invited(self, invitation: Invitation) -> None:
        self._before()
        self.listener.invited(invitation)

    def paired(self, user: User, partner: User) -> None:
        self._before()
        self.listener.paired(user, partner)

    def unpaired(self, user: User, partner: User, reason: str, missed: Sequence[Entry]) -> None:
        self._before()
        self.listener.unpaired(user, partner, reason, missed)

    def declined(self, inviter: User, invitee: User, reason: str) -> None:
        self._before()
        self.listener.declined(inviter, invitee, reason)

    def cancelled(self, invitee: User, inviter: User, reason: str) -> None:
        self._before()
        self.listener.cancelled(invitee, inviter, reason)


class _Synced(Forward):
    """Passes every event on once the listener's picture, if stale, is
    built again (L{Quiet.sync_listener})."""

    def __init__(self, quiet: Quiet, listener: Listener) -> None:
        super().__init__(listener)
        self.quiet = quiet

    def _before(self) -> None:
        self.quiet.sync_listener()


class SyncFirst(_Synced):
    """
    The hub's listener after a C{hello}'s quiet change (L{Quiet.quietly}):
    the listener was not told of it, so what it built from the hub (the user
    list, the index of this node's users) is stale.  Before it is told
    anything out loud, that is built again, once (L{Quiet.sync_listener}):
    an C{UNPAIRED} block carries the user list.  Quiet changes in a row pay
    nothing; only a loud one after them does.  (L{Quiet.unwrapped} takes
    this one off, not a L{NotShownLeaving}, which is of the same kind.)
    """


class NotShownLeaving(_Synced):
    """
    The hub's listener while a user leaves whom this node's users were not
    shown online (after a rebuild, L{afterloss.AfterLoss.shown}: they were shown its
    departure before, in events Redis lost, or never its arrival): its
    C{LEFT} is not told (again); what its going does to others (their
    invitation to or from it, their pair with it, ending) is, once the
    listener's picture, stale without that C{LEFT}, is built again
    (L{Quiet.sync_listener}).
    """

    def __init__(self, quiet: Quiet, listener: Listener, user: User) -> None:
        super().__init__(quiet, listener)
        self._user = user

    def left(self, ts: float, user: User, reason: str, text: str) -> None:
        if user is self._user:
            self.quiet.hush()  # the index learns of it by a reindex
            return
        super().left(ts, user, reason, text)


class Between(Forward):
    """
    A hub listener that passes everything on but what two users, C{a} and
    C{b}, are told of each other while a pair of theirs is brought back
    (L{Replica.restore_pair}: an invitation between them, its end, and, if
    C{quiet}, the pairing): what the pairing does to others (an invitation
    of a third user's ended C{busy}, told on both sides) is told as usual.
    """

    def __init__(self, listener: Listener, a: User, b: User, quiet: bool) -> None:
        super().__init__(listener)
        self._two = {a, b}
        self._quiet = quiet

    def _theirs(self, one: User, other: User) -> bool:
        return {one, other} == self._two

    def invited(self, invitation: Invitation) -> None:
        if not self._theirs(invitation.inviter, invitation.invitee):
            super().invited(invitation)

    def paired(self, user: User, partner: User) -> None:
        if not (self._quiet and self._theirs(user, partner)):
            super().paired(user, partner)

    def unpaired(self, user: User, partner: User, reason: str, missed: Sequence[Entry]) -> None:
        if not self._theirs(user, partner):
            super().unpaired(user, partner, reason, missed)

    def declined(self, inviter: User, invitee: User, reason: str) -> None:
        if not self._theirs(inviter, invitee):
            super().declined(inviter, invitee, reason)

    def cancelled(self, invitee: User, inviter: User, reason: str) -> None:
        if not self._theirs(invitee, inviter):
            super().cancelled(invitee, inviter, reason)
