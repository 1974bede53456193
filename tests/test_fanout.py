"""
The fan-out module on its own: its decision rules as plain functions (no
clock), and L{LobbyFanout} with stand-in members on a task.Clock.  What
whole connections receive under the pacing is in tests/test_pacing.py.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from twisted_chat.server.fanout import (
    FANOUT_QUIET_FACTOR,
    MAX_FANOUT_WAIT,
    READERS_WAIT_MAX_LINES,
    READERS_WAIT_SHARE,
    LobbyFanout,
    capped_wait,
    quiet_after,
    readers_may_wait,
)

WINDOW = 0.002


# -- the rules ------------------------------------------------------------------


def test_the_gap_is_the_window_after_a_quick_fanout() -> None:
    assert quiet_after(WINDOW, 0.0001, waited=True) == WINDOW
    assert quiet_after(WINDOW, 0.0001, waited=False) == WINDOW


def test_a_slow_fanout_of_waiting_lines_buys_a_longer_gap() -> None:
    assert quiet_after(WINDOW, 0.01, waited=True) == 0.01 * FANOUT_QUIET_FACTOR


def test_a_slow_fanout_of_lines_that_did_not_wait_is_not_multiplied() -> None:
    assert quiet_after(WINDOW, 0.01, waited=False) == 0.01


def test_readers_wait_only_after_small_quick_fanouts() -> None:
    quick = WINDOW * READERS_WAIT_SHARE
    assert readers_may_wait(READERS_WAIT_MAX_LINES, quick, WINDOW)
    assert not readers_may_wait(READERS_WAIT_MAX_LINES + 1, quick, WINDOW)
    assert not readers_may_wait(1, quick * 1.01, WINDOW)


def test_a_wait_is_capped_whatever_the_clock_did() -> None:
    assert capped_wait(10.0, 9.999) == 10.0 - 9.999
    assert capped_wait(3600.0, 0.0) == MAX_FANOUT_WAIT
    assert capped_wait(0.0, 3600.0) < 0  # already over: no wait at all


# -- LobbyFanout with stand-in members -----------------------------------------------


class Stub:
    """A member that records what it is given."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.reading = True
        self.closing = False

    def deliver(self, data: bytes) -> None:
        self.got.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def lobby(n: int, window: float = WINDOW) -> tuple[Clock, LobbyFanout, list[Stub]]:
    clock = Clock()
    clock.advance(1000)
    members = [Stub() for _ in range(n)]
    return clock, LobbyFanout(clock, lambda: members, window), members


def test_a_line_goes_out_at_the_end_of_its_turn_as_one_write_per_member() -> None:
    clock, fanout, members = lobby(2)
    fanout.add(b"a")
    fanout.add(b"b")
    assert fanout.pending and all(m.got == [] for m in members)
    clock.advance(0)
    assert not fanout.pending
    assert all(m.got == [b"ab"] for m in members)


def test_lines_within_the_window_wait_for_it() -> None:
    clock, fanout, (member,) = lobby(1)
    fanout.add(b"a")
    clock.advance(0)
    fanout.add(b"b")
    clock.advance(WINDOW / 2)
    assert member.got == [b"a"]
    clock.advance(WINDOW / 2)
    assert member.got == [b"a", b"b"]


def test_flush_writes_at_once_and_leaves_no_timer() -> None:
    clock, fanout, (member,) = lobby(1)
    fanout.add(b"a")
    fanout.flush()
    assert member.got == [b"a"]
    assert clock.getDelayedCalls() == []


def test_a_newcomer_gets_only_the_lines_after_its_join() -> None:
    clock, fanout, (old, new) = lobby(2)
    fanout.add(b"before ")
    fanout.add_joined(b"JOINED ", new)
    fanout.add(b"after")
    clock.advance(0)
    assert old.got == [b"before JOINED after"]
    assert new.got == [b"after"]


def test_a_newcomer_with_nothing_after_its_join_gets_no_write() -> None:
    clock, fanout, (old, new) = lobby(2)
    fanout.add_joined(b"JOINED", new)
    clock.advance(0)
    assert old.got == [b"JOINED"] and new.got == []


def test_a_sender_whose_line_waits_is_paused_until_the_gap_ends() -> None:
    clock, fanout, (sender, other) = lobby(2)
    fanout.add(b"a")
    clock.advance(0)
    fanout.add(b"b")  # waits
    fanout.sent(sender)
    assert not sender.reading and other.reading
    clock.advance(WINDOW)  # the gap ends: read first, fan out on the next turn
    assert sender.reading
    assert other.got == [b"a", b"b"]


def test_a_sender_whose_line_does_not_wait_is_left_alone() -> None:
    _clock, fanout, (sender,) = lobby(1)
    fanout.add(b"a")
    fanout.sent(sender)
    assert sender.reading


def test_a_closing_member_is_never_paused_and_is_read_again_when_it_closes() -> None:
    clock, fanout, (sender, other) = lobby(2)
    fanout.add(b"a")
    clock.advance(0)
    fanout.add(b"b")
    other.closing = True
    fanout.sent(other)
    assert other.reading
    fanout.sent(sender)
    fanout.closing(sender)
    assert sender.reading


def test_zero_window_never_pauses_or_waits() -> None:
    clock, fanout, (sender,) = lobby(1, window=0.0)
    for text in (b"a", b"b", b"c"):
        fanout.add(text)
        fanout.sent(sender)
        assert sender.reading
        clock.advance(0)
    assert sender.got == [b"a", b"b", b"c"]


def test_shutdown_delivers_what_waits() -> None:
    clock, fanout, (member,) = lobby(1)
    fanout.add(b"a")
    clock.advance(0)
    fanout.add(b"b")
    fanout.shutdown()
    assert member.got == [b"a", b"b"]
