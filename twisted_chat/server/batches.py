"""
Which batch a user's lobby lines go out in, the lobby's or the paired
users' (docs/fanout.md, "Order"): one rule, L{in_lobby_batch}.  The
listener asks it of one user (C{LineListener.batch_of}); a state's lists
of each batch's members (C{ChatState.lobby_members}, C{paired_users}) are
the hub's lobby and pairs, which is the rule wherever it has no exception,
corrected by the rule for the few users it has one for (a cluster node's
after a loss, C{cluster/afterloss.py}).  Defined once, they cannot disagree.
"""

from __future__ import annotations

from typing import Protocol

from twisted_chat.server.hub import State, User

__all__ = ["Shown", "in_lobby_batch"]


class Shown(Protocol):
    """The rule's two exceptions, both about a user shown another state
    than the hub's (never on one server: C{state.LocalState})."""

    def hears_lobby(self, user: User) -> bool:
        """Whether C{user}, paired, hears the lobby's lines."""

    def misses_lobby(self, user: User) -> bool:
        """Whether C{user}, in the lobby, hears none of its lines."""


def in_lobby_batch(shown: Shown, user: User, state: State) -> bool:
    """
    Whether C{user}, in C{state} (its own, or the one it had until now),
    is in the lobby's batch rather than the paired users': the batch of
    the state it was shown.  In the lobby, the lobby's unless it misses the
    lobby; paired, the paired users' unless it hears the lobby.  So a user
    for whom C{shown} says neither is in its state's batch: what the
    hub's C{lobby} and C{paired} list, with no work per line.
    """
    if state is State.LOBBY:
        return not shown.misses_lobby(user)
    return shown.hears_lobby(user)
