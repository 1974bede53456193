"""The domain on its own: a Hub with a task.Clock and a recording listener."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from twisted_chat.server.history import Entry, History
from twisted_chat.server.hub import (
    Hub,
    HubError,
    HubSettings,
    Invitation,
    NickTaken,
    State,
    User,
    source_share,
)


class Recorder:
    """A Listener that writes down what the hub decided, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any) -> None:
            self.events.append((name, *[_show(a) for a in args]))

        return record

    def take(self) -> list[tuple[Any, ...]]:
        events, self.events = self.events, []
        return [e for e in events if e[0] not in ("deliver_gathered", "leaving", "returning")]


def _show(value: Any) -> Any:
    if isinstance(value, User):
        return value.nick
    if isinstance(value, Invitation):
        return (value.inviter.nick, value.invitee.nick)
    return value


@pytest.fixture
def world() -> tuple[Hub, Recorder, Clock]:
    clock = Clock()
    recorder = Recorder()
    return Hub(clock, History(10), recorder, HubSettings(invite_timeout=30)), recorder, clock


def test_register_and_lobby_message(world: tuple[Hub, Recorder, Clock]) -> None:
    hub, rec, clock = world
    alice = hub.register("Alice", conn=object())
    clock.advance(2)
    hub.say(alice, "hi")
    assert rec.take() == [("ready", "Alice"), ("joined", 0.0, "Alice"),
                          ("lobby_message", Entry(2.0, "Alice", "hi"), "Alice")]
    assert hub.history.recent() == [Entry(2.0, "Alice", "hi")]
    with pytest.raises(NickTaken):
        hub.register("alice", conn=object())


def test_membership_changes_are_announced_before_they_happen(
        world: tuple[Hub, Recorder, Clock]) -> None:
    hub, rec, _ = world
    seen: list[int] = []
    rec.deliver_gathered = lambda: seen.append(len(hub.lobby))  # type: ignore[method-assign]
    rec.leaving = lambda user: seen.append(len(hub.lobby))  # type: ignore[method-assign]
    rec.returning = lambda user: seen.append(len(hub.lobby))  # type: ignore[method-assign]
    a = hub.register("a", None)
    b = hub.register("b", None)
    hub.pair(a, "b")
    hub.accept(b, "a")
    hub.leave(a, "quit")
    # Arrivals need no announcement (ready() marks where the newcomer's share
    # starts); leaving the lobby is announced while the lobby is still as it was.
    assert seen == [2, 0, 0]
    assert hub.lobby == {"b": b} and b.state is State.LOBBY


def test_pairing_and_timeout_use_the_injected_clock(world: tuple[Hub, Recorder, Clock]) -> None:
    hub, rec, clock = world
    a, b = hub.register("a", None), hub.register("b", None)
    rec.take()
    hub.pair(a, "B")
    clock.advance(29)
    assert rec.take() == [("invited", ("a", "b"))]
    clock.advance(1)
    assert rec.take() == [("declined", "a", "b", "timeout"), ("cancelled", "b", "a", "timeout")]
    assert a.outgoing is None and b.incoming is None


def test_a_user_holds_an_invitations_dict_only_while_invited(
    world: tuple[Hub, Recorder, Clock],
) -> None:
    """Memory per idle connection (docs/fanout.md): no empty dict per user."""
    hub, _, _ = world
    a, b, c = hub.register("a", None), hub.register("b", None), hub.register("c", None)
    assert a.incoming is None and b.incoming is None
    hub.pair(a, "b")
    hub.pair(c, "b")
    assert b.incoming is not None and sorted(b.incoming) == ["a", "c"]
    hub.reject(b, "a")
    assert b.incoming is not None and list(b.incoming) == ["c"]
    hub.unpair(c)  # withdrawn: the last one
    assert b.incoming is None


def test_an_invitation_may_carry_its_own_timeout(world: tuple[Hub, Recorder, Clock]) -> None:
    """A cluster replica passes the origin node's --invite-timeout (or what
    is left of it after a snapshot) instead of changing the hub's."""
    hub, rec, clock = world
    a = hub.register("a", None)
    hub.register("b", None)
    rec.take()
    hub.pair(a, "b", timeout=5)
    clock.advance(4.9)
    assert rec.take() == [("invited", ("a", "b"))]
    clock.advance(0.1)
    assert rec.take() == [("declined", "a", "b", "timeout"), ("cancelled", "b", "a", "timeout")]
    assert hub.invite_timeout == 30


def test_rule_violations_raise_before_changing_anything(
        world: tuple[Hub, Recorder, Clock]) -> None:
    hub, rec, _ = world
    a, _b = hub.register("a", None), hub.register("b", None)
    hub.pair(a, "b")
    rec.take()
    for call, code in [(lambda: hub.pair(a, "b"), "pending"), (lambda: hub.pair(a, "a"), "self"),
                       (lambda: hub.accept(a, "b"), "no-invite"),
                       (lambda: hub.direct(a, "zed", "x"), "no-such-nick")]:
        with pytest.raises(HubError) as e:
            call()
        assert e.value.code.value == code
    assert rec.take() == []


def test_departure_leaves_no_trace(world: tuple[Hub, Recorder, Clock]) -> None:
    hub, rec, clock = world
    a, b, c = (hub.register(n, None) for n in "abc")
    hub.pair(c, "a")
    hub.pair(a, "b")
    rec.take()
    hub.leave(a, "flood")
    # a's own invitation to b, then c's invitation to a.
    assert rec.take() == [("left", 0.0, "a", "flood", ""), ("cancelled", "b", "a", "gone"),
                          ("declined", "c", "a", "gone")]
    assert list(hub.online) == ["b", "c"] and not b.incoming and c.outgoing is None
    assert clock.getDelayedCalls() == []
    hub.leave(a, "again")  # leaving twice is harmless
    assert rec.take() == []


def test_close_cancels_the_timers_of_open_invitations(world: tuple[Hub, Recorder, Clock]) -> None:
    """Server shutdown: an invitation still open does not expire later into
    a half-stopped server (nor leave a pending call to an embedder)."""
    hub, rec, clock = world
    a = hub.register("a", None)
    hub.register("b", None)
    hub.pair(a, "b")
    rec.take()
    assert clock.getDelayedCalls()
    hub.close()
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert rec.take() == []


def test_a_failed_arrival_leaves_no_ghost(world: tuple[Hub, Recorder, Clock]) -> None:
    hub, rec, _ = world

    def broken(user: User) -> None:
        raise ValueError("cannot format the history")

    rec.ready = broken  # type: ignore[method-assign]
    with pytest.raises(ValueError):
        hub.register("alice", None)
    assert hub.online == {} and hub.lobby == {} and hub.keys_in_order == []
    del rec.ready
    assert hub.register("alice", None).nick == "alice"  # the nick is free


def test_message_text_is_logged_only_with_log_messages() -> None:
    def logged(log_messages: bool) -> list[str]:
        hub = Hub(Clock(), History(10), Recorder(), HubSettings(log_messages=log_messages))
        with capturedLogs() as events:
            a, b = hub.register("a", None), hub.register("b", None)
            hub.say(a, "lobby words")
            hub.direct(a, "b", "dm words")
            hub.pair(a, "b")
            hub.accept(b, "a")
            hub.say(b, "paired words")
        return [formatEvent(e) for e in events]

    assert not any("words" in line for line in logged(False))
    assert [line for line in logged(True) if "words" in line] == [
        "lobby <a> lobby words", "private <a> to b: dm words", "private <b> to a: paired words"]


# -- invitation storms (issue 14.8) --------------------------------------------


def test_open_invitations_to_one_user_are_capped() -> None:
    clock, rec = Clock(), Recorder()
    hub = Hub(clock, History(10), rec, HubSettings(invite_timeout=30, max_invites=3))
    victim = hub.register("victim", conn=object())
    fans = [hub.register(f"fan{i}", conn=object()) for i in range(5)]
    for fan in fans[:3]:
        hub.pair(fan, "victim")
    with pytest.raises(HubError) as e:
        hub.pair(fans[3], "victim")
    assert e.value.code == "busy"
    assert "victim has 3 open invitations already" in e.value.text
    assert fans[3].outgoing is None and len(victim.incoming) == 3
    hub.reject(victim, "fan0")  # one ends: room for another
    hub.pair(fans[3], "victim")
    rec.take()
    hub.accept(victim, "fan1")
    # Accepting one ends the others as busy: at most max_invites - 1 of them.
    assert [e for e in rec.take() if e[0] == "cancelled"] == [
        ("cancelled", "victim", "fan2", "busy"), ("cancelled", "victim", "fan3", "busy")]


def test_open_invitations_from_one_source_are_capped() -> None:
    clock, rec = Clock(), Recorder()
    hub = Hub(clock, History(10), rec,
              HubSettings(invite_timeout=30, max_invites_per_source=2))
    mallory = [hub.register(f"m{i}", conn=object(), source="192.0.2.1") for i in range(3)]
    others = [hub.register(f"u{i}", conn=object()) for i in range(4)]
    elsewhere = hub.register("carol", conn=object(), source="198.51.100.1")
    hub.pair(mallory[0], "u0")
    hub.pair(mallory[1], "u1")
    with pytest.raises(HubError) as e:
        hub.pair(mallory[2], "u2")
    assert e.value.code == "pending"
    hub.pair(elsewhere, "u2")  # another address is not held back
    hub.pair(others[3], "u2")  # nor a user with no source
    clock.advance(30)  # the invitations time out: the count goes down
    hub.pair(mallory[2], "u2")
    hub.leave(mallory[2], "quit")
    hub.pair(mallory[0], "u0")
    hub.pair(mallory[1], "u1")
    assert hub._sent_by_source == {"192.0.2.1": 2}


def test_one_source_holds_at_most_its_share_of_a_user_s_invitations() -> None:
    """A fifth of max_invites, at least one (hub.source_share): one
    address's users cannot fill a user's slots alone (rev16-sec 3)."""
    assert [source_share(n) for n in (1, 4, 5, 10, 12, 100)] == [1, 1, 1, 2, 2, 20]
    clock, rec = Clock(), Recorder()
    hub = Hub(clock, History(10), rec, HubSettings(invite_timeout=30, max_invites=10))
    victim = hub.register("victim", conn=object(), source="203.0.113.9")
    mallory = [hub.register(f"m{i}", conn=object(), source="192.0.2.1") for i in range(3)]
    hub.pair(mallory[0], "victim")
    hub.pair(mallory[1], "victim")
    with pytest.raises(HubError) as e:
        hub.pair(mallory[2], "victim")
    assert (e.value.code, e.value.text) == (
        "pending", "users from your address have 2 open invitations to victim already; "
        "wait for one to end")
    hub.pair(mallory[2], "m0")  # the share is per invitee: another is not held back
    carol = hub.register("carol", conn=object(), source="198.51.100.1")
    hub.pair(carol, "victim")  # nor another address
    nosource = hub.register("unix", conn=object())
    hub.pair(nosource, "victim")  # nor a user with no source (an exempt address)
    hub.reject(victim, "m0")  # one ends: room for another of the address
    hub.unpair(mallory[2])  # withdraws its invitation to m0
    hub.pair(mallory[2], "victim")
    assert sorted(victim.incoming or ()) == ["carol", "m1", "m2", "unix"]
    # At both the share and max_invites_per_source: the share is checked first.
    hub = Hub(clock, History(10), rec,
              HubSettings(invite_timeout=30, max_invites=10, max_invites_per_source=2))
    hub.register("victim", conn=object())
    mallory = [hub.register(f"m{i}", conn=object(), source="192.0.2.1") for i in range(3)]
    hub.pair(mallory[0], "victim")
    hub.pair(mallory[1], "victim")
    with pytest.raises(HubError) as e:
        hub.pair(mallory[2], "victim")
    assert "2 open invitations to victim already" in e.value.text


def test_pair_checks_a_mutual_invitation_its_own_then_the_two_caps_in_that_order() -> None:
    """docs/protocol.md, "Lobby, direct messages, pairs", the item "PAIR
    checks in this order": a mutual invitation pairs, then pending (your own
    invitation out), then busy (--max-invites received), then pending
    (--max-invites-per-ip)."""
    clock, rec = Clock(), Recorder()
    hub = Hub(clock, History(10), rec,
              HubSettings(invite_timeout=30, max_invites=1, max_invites_per_source=1))
    m0, m1 = (hub.register(f"m{i}", conn=object(), source="192.0.2.1") for i in range(2))
    fan, victim = (hub.register(nick, conn=object()) for nick in ("fan", "victim"))
    hub.register("u1", conn=object())
    hub.pair(fan, "victim")  # victim: its one invitation received
    hub.pair(m0, "fan")  # 192.0.2.1: its one invitation sent

    def refusal(user: User, nick: str) -> tuple[str, str]:
        with pytest.raises(HubError) as e:
            hub.pair(user, nick)
        return e.value.code, e.value.text

    # Over both caps: busy, the invitee's cap comes first.
    assert refusal(m1, "victim") == (
        "busy", "victim has 1 open invitations already; try again later")
    # Over the address's cap only: pending.
    assert refusal(m1, "u1") == (
        "pending", "users from your address have 1 open invitations already; wait for one to end")
    # Its own invitation out comes before both caps.
    assert refusal(m0, "victim") == (
        "pending", "your invitation to fan is still open; UNPAIR withdraws it")
    # A mutual invitation pairs before any of them: victim still has fan's
    # invitation received, and 192.0.2.1 still has m0's out.
    hub.pair(victim, "m1")
    hub.pair(m1, "victim")
    assert m1.partner is victim and victim.partner is m1


def test_the_lobby_state_lists_its_members_anew_only_when_the_lobby_changed(
        world: tuple[Hub, Recorder, Clock]) -> None:
    """LocalState hands the fan-out the same tuple while the lobby stays as
    it was (the direct pass keeps its work for it), and a new, right one
    after every kind of change: arrival, failed arrival, pairing, return
    from a pair, departure."""
    from twisted_chat.server.state import LocalState

    hub, rec, _ = world
    state = LocalState(hub)
    listed: list[tuple[Any, ...]] = []

    def check() -> None:
        members = state.lobby_members()
        assert members == tuple(u.conn for u in hub.lobby.values())
        assert state.lobby_members() is members, "unchanged: the same tuple"
        listed.append(tuple(members))

    a = hub.register("a", conn="A")
    check()
    b, c = hub.register("b", conn="B"), hub.register("c", conn="C")
    check()
    hub.say(a, "no change")
    hub.pair(a, "b")  # an invitation changes nothing in the lobby
    assert state.lobby_members() == ("A", "B", "C")
    hub.accept(b, "a")
    check()

    def broken(user: User) -> None:
        state.lobby_members()  # listed with the newcomer in it
        raise ZeroDivisionError

    rec.ready = broken  # type: ignore[method-assign]
    with pytest.raises(ZeroDivisionError):
        hub.register("d", conn="D")
    check()
    del rec.ready
    hub.unpair(a)
    check()
    hub.leave(c, "quit")
    check()
    hub.leave(a, "quit")
    check()
    assert listed == [("A",), ("A", "B", "C"), ("C",), ("C",), ("C", "A", "B"), ("A", "B"), ("B",)]


def test_lobby_changes_moves_at_every_change_of_the_user_list(
        world: tuple[Hub, Recorder, Clock]) -> None:
    """A user list made at one count of Hub.lobby_changes (who is online,
    in which state: the lines' USERS) is right while the count stays: every
    change moves it, a departure from a pair (before its partner's return)
    and an arrival undone included; what changes no one's place leaves it."""
    hub, rec, _ = world

    def moves(change: Callable[[], object]) -> bool:
        count = hub.lobby_changes
        change()
        return hub.lobby_changes != count

    a = hub.register("a", None)
    b, c = hub.register("b", None), hub.register("c", None)
    assert hub.lobby_changes == 3
    assert [moves(lambda: hub.say(a, "hi")), moves(lambda: hub.pair(a, "b")),
            moves(lambda: hub.accept(b, "a")), moves(lambda: hub.unpair(a)),
            moves(lambda: hub.leave(c, "quit"))] == [False, False, True, True, True]
    hub.pair(a, "b")
    hub.accept(b, "a")
    at_left: list[int] = []
    rec.left = lambda *_: at_left.append(hub.lobby_changes)  # type: ignore[method-assign]
    count = hub.lobby_changes
    assert moves(lambda: hub.leave(a, "quit")) and b.state is State.LOBBY
    assert at_left and at_left[0] != count  # a list made at LEFT lacks a
    del rec.left
    during: list[int] = []

    def broken(user: User) -> None:
        during.append(hub.lobby_changes)  # a list made here has the newcomer
        raise ZeroDivisionError

    rec.ready = broken  # type: ignore[method-assign]
    with pytest.raises(ZeroDivisionError):
        hub.register("d", None)
    assert hub.lobby_changes not in during
    count = hub.lobby_changes
    with pytest.raises(NickTaken):
        hub.register("B", None)
    assert hub.lobby_changes == count


def test_one_servers_say_is_the_hubs_own_unless_overridden(
        world: tuple[Hub, Recorder, Clock]) -> None:
    """Every MSG goes through the state's C{say}: one server's is the hub's
    bound method (no frame that only passes it along), while a subclass's
    own C{say} is still the one called."""
    from twisted_chat.server.state import LocalState, Outcome

    hub, _, _ = world
    assert LocalState(hub).say == hub.say

    class Own(LocalState):
        def say(self, user: User, text: str) -> Outcome:
            return None

    own = Own(hub)
    assert own.say.__func__ is Own.say  # type: ignore[attr-defined]
