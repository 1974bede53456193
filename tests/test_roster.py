"""
The user list (C{USERS}, and the list after C{READY} and C{UNPAIRED}) is
built once per change of the hub's (L{Hub.lobby_changes}): right after any
change, whichever of the hub's calls its listener was told.
"""

from __future__ import annotations

from tests.harness import Harness
from twisted_chat.server.cluster.listeners import Forward
from twisted_chat.server.hub import User


class NoLeaving(Forward):
    """Passes every event on but C{leaving} (a listener in front of the
    lines may tell a departure by its C{LEFT} alone)."""

    def leaving(self, user: User) -> None:
        pass


def test_a_departure_told_without_leaving_is_not_in_the_user_list() -> None:
    h = Harness()
    alice, bob, _ = h.user("alice"), h.user("bob"), h.user("carol")
    alice.send("USERS")
    assert alice.take() == ["USER alice lobby", "USER bob lobby", "USER carol lobby", "USERS 3"]
    h.hub.listener = NoLeaving(h.hub.listener)
    bob.send("BYE")
    assert [line.split()[0] for line in alice.take()] == ["LEFT"]
    alice.send("USERS")
    assert alice.take() == ["USER alice lobby", "USER carol lobby", "USERS 2"]

