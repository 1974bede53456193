"""
A stall of the whole server process (SIGSTOP, a paused VM) and flood
control (twisted_chat/server/limits/stalls.py; docs/security.md, "After a stall";
rev16-clu #2: after a 7 s SIGSTOP, a user typing 4 lines a second under a
limit of 10 got ERROR flood and lost 9 of 52 lines; after 20 s, two users
of one address were cut with BYE flood).  The stall is the fake clock
moving on with nothing run: the lines sent meanwhile are read at once,
before the watch's late tick (as a reactor reads, then runs its timers),
or after it.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from tests.harness import Conn, Harness, run_for
from twisted_chat.server.limits.stalls import STALL, TICK, StallWatch

FLOODED = "ERROR flood slow down: at most 4 lines per second (bursts of 5); lines are being dropped"


def stalled(h: Harness, seconds: float, tick_first: bool) -> None:
    """The process does not run for C{seconds}; the watch's tick, late,
    runs now if C{tick_first}, else after the next reads."""
    if tick_first:
        h.clock.advance(seconds)
    else:
        h.clock.rightNow += seconds


def user(h: Harness, nick: str = "ann", host: str = "10.0.0.1") -> Conn:
    conn = h.connect(host)
    conn.send(f"NICK {nick}")
    assert f"READY {nick}" in conn.take()
    run_for(h.clock, 2)  # its bucket full again, the watch's tick on time
    return conn


def pings(conn: Conn, count: int) -> list[str]:
    """C{count} PINGs read at once: what comes back."""
    conn.send(*[f"PING {i}" for i in range(count)])
    return conn.take()


@pytest.mark.parametrize("tick_first", [False, True])
def test_lines_sent_through_a_stall_are_excused_at_the_flood_rate(tick_first: bool) -> None:
    """--flood-rate 4, --flood-burst 5; the process stops 3 s (the tick is
    2.5 s late: 10 lines at 4 a second).  15 PINGs read at once after it
    pass: the bucket's 5, and 10 for the stall (before: 5 passed, then
    ERROR flood and the rest dropped), whether the late tick ran first."""
    h = Harness(flood_rate=4.0, flood_burst=5)
    ann = user(h)
    stalled(h, 3.0, tick_first)
    assert pings(ann, 15) == [f"PONG {i}" for i in range(15)]
    assert h.factory.stats.dropped_lines["flood_rate"] == 0


@pytest.mark.parametrize("tick_first", [False, True])
def test_a_stalls_excuse_is_what_the_rate_allows_in_it_and_is_drawn_once(
        tick_first: bool) -> None:
    """As above, with 17 PINGs: the 16th is a flood, the 17th dropped; the
    excuse is spent: in the same second, lines past what the bucket took
    back are a flood too."""
    h = Harness(flood_rate=4.0, flood_burst=5)
    ann = user(h)
    stalled(h, 3.0, tick_first)
    assert pings(ann, 17) == [f"PONG {i}" for i in range(15)] + [FLOODED]
    h.clock.advance(0.5)  # 2 tokens back
    assert pings(ann, 3) == ["PONG 0", "PONG 1"]  # (ERROR flood at most once a second)
    assert h.factory.stats.dropped_lines["flood_rate"] == 2 + 1


@pytest.mark.parametrize("tick_first", [False, True])
def test_a_stalls_excuse_lasts_one_second(tick_first: bool) -> None:
    """1.5 s after a 3 s stall, nothing sent meanwhile, 7 PINGs read at once
    are counted by the bucket alone: 5 pass."""
    h = Harness(flood_rate=4.0, flood_burst=5)
    ann = user(h)
    stalled(h, 3.0, tick_first)
    run_for(h.clock, 1.5)
    assert pings(ann, 7) == [f"PONG {i}" for i in range(5)] + [FLOODED]


def test_no_stall_no_excuse() -> None:
    """The reactor ran all along (its tick on time) for 3 s: 15 PINGs at once
    are a flood past the bucket's 5."""
    h = Harness(flood_rate=4.0, flood_burst=5)
    ann = user(h)
    run_for(h.clock, 3.0)
    assert pings(ann, 7) == [f"PONG {i}" for i in range(5)] + [FLOODED]


def test_a_short_stall_is_left_to_the_bucket() -> None:
    """A tick late by no more than STALL is no stall: the bucket's burst
    takes what was sent in it."""
    h = Harness(flood_rate=4.0, flood_burst=5)
    ann = user(h)
    stalled(h, TICK + STALL, tick_first=False)
    assert pings(ann, 7) == [f"PONG {i}" for i in range(5)] + [FLOODED]


def test_users_of_one_address_typing_through_a_long_stall_keep_their_lines() -> None:
    """rev16-clu #2 at the defaults (10 lines a second, bursts of 20): two
    users of one address send 2 lines a second each through a 20 s stall;
    their 40 lines each, read at once after, all pass (before: 20 of each
    were dropped, and the address's penalty cut both with BYE flood)."""
    h = Harness(flood_rate=10.0, flood_burst=20)
    ann, bob = user(h, "ann"), user(h, "bob")
    h.clear_all()
    stalled(h, 20.0, tick_first=False)
    for conn in (ann, bob):
        assert pings(conn, 40) == [f"PONG {i}" for i in range(40)]
    assert h.factory.stats.dropped_lines["flood_rate"] == 0


def test_the_watch_runs_only_with_connections_and_flood_control() -> None:
    """Its timer starts with the first connection and ends with the last;
    with --flood-rate 0 there is none."""
    h = Harness(flood_rate=4.0, flood_burst=5)
    assert h.clock.getDelayedCalls() == []
    ann = h.connect()
    assert [c.getTime() - h.clock.seconds() for c in h.clock.getDelayedCalls()] == [TICK]
    ann.drop()
    assert h.clock.getDelayedCalls() == []
    off = Harness()  # flood control off (tests/harness.py's QUIET)
    off.connect()
    assert off.clock.getDelayedCalls() == []


def test_each_connection_draws_a_stall_once() -> None:
    """For a line that arrived after the late tick was due, within 1 s of
    the stall's notice; once per connection."""
    clock = Clock()
    watch = StallWatch(clock, 1.0, steady=clock.seconds)
    watch.start("a")
    clock.advance(10.0)  # the tick, 9.5 s late
    assert watch.draw("z", 0.25) is None  # it arrived before the stall (held since)
    assert watch.draw("z", 0.5) is None  # when the tick was due
    assert watch.draw("a", 10.0) == (9.5, 11.0)
    assert watch.draw("a", 10.0) is None
    clock.advance(0.5)  # the tick, on time
    assert watch.draw("a", 10.5) is None
    assert watch.draw("b", 10.5) == (9.5, 11.0)
    clock.advance(0.5)
    assert watch.draw("c", 11.0) == (9.5, 11.0)  # its end included
    clock.advance(0.5)
    assert watch.draw("d", 11.5) is None  # over
    watch.stop()
    assert clock.getDelayedCalls() == []


def test_a_connection_accepted_after_the_stall_draws_nothing() -> None:
    """rev16-fix #2: a connection opened after the stall (after the late
    tick ran) had nothing waiting through it: 15 PINGs at once are a flood
    past its bucket's 5 (before: all 15 passed), while one there through
    the stall still draws it."""
    h = Harness(flood_rate=4.0, flood_burst=5)
    ann = user(h)
    stalled(h, 3.0, tick_first=True)
    assert pings(ann, 15) == [f"PONG {i}" for i in range(15)]
    bob = h.connect("10.0.0.2")
    bob.send("NICK bob")
    assert "READY bob" in bob.take()
    assert pings(bob, 15)[:5] == [f"PONG {i}" for i in range(4)] + [FLOODED]


def test_who_may_draw_a_stall() -> None:
    """Those there before it, and those accepted in the reactor's first turn
    after it, before its tick ran; not those accepted after that tick, until
    the excuse is over."""
    clock = Clock()
    watch = StallWatch(clock, 1.0, steady=clock.seconds)
    watch.start("old")
    clock.rightNow += 10.0  # stopped; the tick, overdue, not run yet
    assert watch.draw("old", 10.0) == (9.5, 11.0)  # noticed by a read
    watch.start("first")  # accepted in the same turn: its peer may have sent
    clock.advance(0.0)  # the late tick runs
    watch.start("late")
    assert watch.draw("first", 10.0) == (9.5, 11.0)
    assert watch.draw("late", 10.0) is None
    run_for(clock, 1.5)  # over: nothing kept
    assert watch._drawn == set()
    watch.start("later")
    assert watch._drawn == set()


def test_a_step_of_the_system_clock_is_no_stall() -> None:
    """rev16-fix #3: the reactor's clock is wall time.  A 60 s step forward
    makes the tick 60 s late on it, but not on the steady clock; a step back
    delays the tick on the steady clock only (the reactor ran meanwhile).
    Neither is a stall; one late on both is, by the lesser lateness."""
    wall, steady = Clock(), Clock()
    watch = StallWatch(wall, 1.0, steady=steady.seconds)
    watch.start("a")
    wall.advance(60.0)  # the system clock stepped forward
    assert watch.draw("a", 60.0) is None
    wall.rightNow -= 30.0  # stepped back: the tick, due at 30.5, waits
    for _ in range(61):
        steady.advance(0.5)
        wall.advance(0.5)
    steady.advance(0.25)
    wall.advance(0.25)  # a line after the tick
    assert watch.draw("a", wall.seconds()) is None
    steady.advance(3.0)  # a 3 s stall, with a 2 s step forward in it
    wall.advance(5.0)
    assert watch.draw("a", wall.seconds()) == (2.75, wall.seconds() + 1.0)  # 0.25 + 3 - 0.5
