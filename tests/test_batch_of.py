"""
Which batch a user's lines are in (L{LineListener.batch_of}, docs/fanout.md,
"Order"): a paired user who hears the lobby (a cluster node's user shown its
pair's end in events Redis then lost: C{ChatState.hears_lobby}) is in the
lobby's batch, so its own writes never overtake a lobby line waiting for it,
and at its going it gets its share of that batch, once.  Shown on one server
with a state that says so of one paired user: in the cluster harness the
departure came first, or the batch was out already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Self

import pytest

from tests.harness import Conn, Harness
from tests.test_pacing import WINDOW, Work, msg
from twisted_chat.server.factory import ChatFactory, hub_settings
from twisted_chat.server.hub import Hub, User
from twisted_chat.server.output.fanout import Member
from twisted_chat.server.state import LocalState
from twisted_chat.wire import format_ts


class _Made(LocalState):
    """One server's state, made as the factory's default is (L{of})."""

    @classmethod
    def of(cls, factory: ChatFactory) -> Self:
        """The factory's state, as its default is made."""
        return cls(Hub(factory.reactor, factory.history, factory.lines,
                       hub_settings(factory.config), factory.repeats))


class Hearing(_Made):
    """One server's state, but the paired users in C{hearing} hear the
    lobby, as a cluster node's do after a loss (its C{lobby_members},
    C{paired_users} and C{hears_lobby}: cluster/node.py)."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub)
        self.hearing: set[User] = set()

    def lobby_members(self) -> Sequence[Member]:
        heard = [user.conn for user in self.hearing if user.partner is not None]
        return (*super().lobby_members(), *heard)

    def paired_users(self) -> list[User]:
        return [user for user in super().paired_users() if user not in self.hearing]

    def hears_lobby(self, user: User) -> bool:
        return user in self.hearing


def _three(state: Callable[[ChatFactory], LocalState]) -> tuple[Harness, Work, Conn, Conn, Conn]:
    """A harness with C{state}, the lobby's batch paced by C{work}, and
    ann, bob and carol in the lobby."""
    work = Work()
    h = Harness(fanout_delay=WINDOW, backlog=work, state=state)
    return h, work, h.user("ann"), h.user("bob", host="127.0.0.2"), h.user("carol")


def _carol_s_live_waits(h: Harness, work: Work, carol: Conn) -> None:
    """Everyone's output taken, carol's "live" waits in the lobby's batch."""
    h.clear_all()
    work.waiting = True
    carol.send("MSG live")


def live_waits() -> tuple[Harness, Work, Conn, Conn, Conn]:
    """ann and bob paired, ann hearing the lobby; carol's "live" waits in
    the lobby's batch (work waiting), nobody's output taken yet."""
    h, work, ann, bob, carol = _three(Hearing.of)
    ann.send("PAIR bob")
    bob.send("ACCEPT ann")
    state = h.factory.state
    assert isinstance(state, Hearing)
    state.hearing.add(ann.user)
    _carol_s_live_waits(h, work, carol)
    bob.send("PING still")  # not in the lobby's batch: flushes nothing
    assert bob.take() == ["PONG still"]
    assert ann.take() == carol.take() == []
    return h, work, ann, bob, carol


def test_a_write_of_a_hearing_users_own_comes_after_the_waiting_lobby_line() -> None:
    h, work, ann, _, carol = live_waits()
    live = msg(h, "carol", "live")
    ann.send("PING me")
    assert ann.take() == [live, "PONG me"]
    work.waiting = False
    h.clock.advance(WINDOW)
    assert ann.take() == []
    assert carol.take() == [live]


#: How ann goes: its FIN, its BYE, or the hub taking it offline while its
#: connection is open (LineListener.leaving alone); what ann gets after
#: the lobby's line, and the end of the others' LEFT.
GOINGS: dict[str, tuple[Callable[[Conn, Harness], None], list[str], str]] = {
    "fin": (lambda ann, h: ann.protocol.readConnectionLost(), [], "disconnected"),
    "bye": (lambda ann, h: ann.send("BYE night"), ["BYE quit"], "quit night"),
    "hub": (lambda ann, h: h.hub.leave(ann.user, "disconnected"), [], "disconnected"),
}


@pytest.mark.parametrize("going", sorted(GOINGS))
def test_a_hearing_user_going_gets_the_waiting_lobby_line_once(going: str) -> None:
    h, work, ann, _, carol = live_waits()
    live = msg(h, "carol", "live")
    go, after, reason = GOINGS[going]
    go(ann, h)
    assert ann.take() == [live, *after]
    left = f"LEFT {format_ts(h.clock.seconds())} ann {reason}"
    work.waiting = False
    h.clock.advance(WINDOW)
    assert ann.take() == []
    assert carol.take() == [live, left]


class Deaf(_Made):
    """One server's state, but the lobby users in C{deaf} hear none of the
    lobby's lines and get JOINED and LEFT as paired users do, as a cluster
    node's users shown a pair the replica rebuilt after a loss lacks do
    (its C{lobby_members}, C{paired_users} and C{misses_lobby})."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(hub)
        self.deaf: set[User] = set()

    def lobby_members(self) -> Sequence[Member]:
        deaf = {user.conn for user in self.deaf}
        return tuple(m for m in super().lobby_members() if m not in deaf)

    def paired_users(self) -> list[User]:
        return [*super().paired_users(), *self.deaf]

    def misses_lobby(self, user: User) -> bool:
        return user in self.deaf


def test_a_write_of_a_deaf_users_own_comes_after_its_waiting_left_not_a_lobby_line() -> None:
    """ann, in the lobby but deaf to it: her own write comes after the LEFT
    waiting in the paired users' batch, hers, and no lobby line reaches
    her, then or at the flush."""
    h, work, ann, bob, carol = _three(Deaf.of)
    state = h.factory.state
    assert isinstance(state, Deaf)
    state.deaf.add(ann.user)
    _carol_s_live_waits(h, work, carol)
    live = msg(h, "carol", "live")
    bob.send("BYE")
    left = f"LEFT {format_ts(h.clock.seconds())} bob quit"
    ann.send("PING me")
    assert ann.take() == [left, "PONG me"]
    work.waiting = False
    h.clock.advance(WINDOW)
    assert ann.take() == []
    assert carol.take() == [live, left]
