"""
The user list (C{USERS}, and the list after C{READY} and C{UNPAIRED}) is
built once per change of the hub's (L{Hub.lobby_changes}): right after any
change, whichever of the hub's calls its listener was told.
"""

from __future__ import annotations

import tracemalloc

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



def test_the_user_list_is_built_without_a_block_larger_than_itself() -> None:
    """Memory per connection at scale: each newcomer's user list is built
    again (200 KB at 10,000 users), and what a handshake's large blocks
    leave free stays resident after a burst of them; built, it takes the
    list and its parts at most, not a join's 80 bytes a line besides."""
    h = Harness(max_clients=3000, exempt=("10.0.0.0/8",))
    for i in range(2000):
        h.connect(f"10.0.{i // 250}.{i % 250 + 1}").send(f"NICK crowd{i:05d}")
    h.clear_all()
    h.hub.lobby_changes += 1  # built again at the next call
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        roster = h.factory.lines.roster()
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert roster.endswith(b"USER crowd01999 lobby\r\nUSERS 2000\r\n")
    assert peak < 2.5 * len(roster)
