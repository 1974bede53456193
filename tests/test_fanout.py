"""
The fan-out module on its own: its decision rule as a plain function (no
clock), the reactor probe on a real epoll, and L{LobbyFanout} with stand-in
members.  What whole connections receive under the pacing is in
tests/test_pacing.py.
"""

from __future__ import annotations

import gc
import select
import socket
import weakref
from typing import Any

import pytest

from tests.harness import TurnClock
from twisted_chat.server.output.fanout import (
    MAX_FANOUT_WAIT,
    MAX_GATHER_TURNS,
    LobbyFanout,
    keep_gathering,
    reactor_backlog,
)

WINDOW = 0.002


# -- the rule ---------------------------------------------------------------------


def test_lines_go_out_at_once_when_nothing_else_waits() -> None:
    assert not keep_gathering(first=10.0, now=10.0, turns=0, window=WINDOW, waiting=False)


def test_lines_wait_a_turn_while_work_is_waiting() -> None:
    assert keep_gathering(first=10.0, now=10.0, turns=0, window=WINDOW, waiting=True)
    assert keep_gathering(first=10.0, now=10.0 + WINDOW * 0.9, turns=5, window=WINDOW,
                          waiting=True)


def test_never_past_the_window() -> None:
    assert not keep_gathering(first=10.0, now=10.0 + WINDOW, turns=1, window=WINDOW,
                              waiting=True)


def test_never_past_the_cap_whatever_the_window() -> None:
    assert keep_gathering(first=0.0, now=MAX_FANOUT_WAIT * 0.99, turns=1, window=3600.0,
                          waiting=True)
    assert not keep_gathering(first=0.0, now=MAX_FANOUT_WAIT, turns=1, window=3600.0,
                              waiting=True)


def test_a_stuck_or_set_back_clock_cannot_hold_the_lines() -> None:
    assert not keep_gathering(first=10.0, now=10.0, turns=MAX_GATHER_TURNS, window=WINDOW,
                              waiting=True)
    assert not keep_gathering(first=10.0, now=9.0, turns=1, window=WINDOW, waiting=True)


def test_zero_window_never_gathers() -> None:
    assert not keep_gathering(first=10.0, now=10.0, turns=0, window=0.0, waiting=True)


# -- the probe -------------------------------------------------------------------


class EpollReactor:
    """What the probe reads of Twisted's epoll reactor."""

    def __init__(self) -> None:
        self._poller = select.epoll()


def test_the_probe_sees_a_readable_socket_and_consumes_nothing() -> None:
    reactor = EpollReactor()
    ours, peer = socket.socketpair()
    try:
        reactor._poller.register(ours.fileno(), select.EPOLLIN)
        waiting = reactor_backlog(reactor)
        assert waiting is not None
        assert not waiting()
        peer.send(b"MSG hi\r\n")
        assert waiting() and waiting(), "still there: the probe reads nothing"
        assert ours.recv(100) == b"MSG hi\r\n"
        assert not waiting()
    finally:
        ours.close()
        peer.close()
        reactor._poller.close()


@pytest.mark.parametrize("reactor", [object(), TurnClock()])
def test_other_reactors_have_no_probe(reactor: Any) -> None:
    assert reactor_backlog(reactor) is None


# -- LobbyFanout with stand-in members -----------------------------------------------


class Stub:
    """A member that records what it is given."""

    closing = False

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        self.got.append(data)


class Backlog:
    """Work "waits" for the next C{turns} questions."""

    def __init__(self) -> None:
        self.turns = 0
        self.asked = 0

    def __call__(self) -> bool:
        self.asked += 1
        if self.turns:
            self.turns -= 1
            return True
        return False


class CountingClock(TurnClock):
    """A L{TurnClock} that counts the timers made on it."""

    made = 0

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        self.made += 1
        return super().callLater(delay, callable, *args, **kw)


def lobby(n: int, window: float = WINDOW
          ) -> tuple[CountingClock, LobbyFanout, list[Stub], Backlog]:
    clock = CountingClock()
    clock.advance(1000)
    members = [Stub() for _ in range(n)]
    backlog = Backlog()
    return clock, LobbyFanout(clock, lambda: members, window, backlog), members, backlog


def read(fanout: LobbyFanout, *lines: bytes, during: Any = None) -> None:
    """A connection's read (L{LobbyFanout.read}) that brings lobby C{lines},
    then runs C{during} (checks made before the read ends)."""
    def handle(data: bytes) -> None:
        for line in lines:
            fanout.add(line)
        if during is not None:
            during()

    fanout.read(handle, b"")


def test_a_turns_lines_go_out_at_its_end_as_one_write_per_member() -> None:
    clock, fanout, members, _ = lobby(2)
    fanout.add(b"a")
    fanout.add(b"b")
    assert len(clock.getDelayedCalls()) == 1 and all(m.got == [] for m in members)
    clock.advance(0)
    assert all(m.got == [b"ab"] for m in members)
    fanout.flush()  # the batch is gone: nothing is sent twice
    assert clock.getDelayedCalls() == [] and all(m.got == [b"ab"] for m in members)


def test_while_work_waits_the_next_turns_lines_ride_along() -> None:
    clock, fanout, (member,), backlog = lobby(1)
    backlog.turns = 2
    fanout.add(b"a")
    clock.advance(0)  # work waits: one more turn
    fanout.add(b"b")  # read on that turn
    clock.advance(0)  # still waiting
    assert member.got == []
    clock.advance(0)  # nothing waits any more
    assert member.got == [b"ab"]


def test_a_fanout_right_after_another_is_not_held() -> None:
    clock, fanout, (member,), _ = lobby(1)
    fanout.add(b"a")
    clock.advance(0)
    fanout.add(b"b")
    clock.advance(0)
    assert member.got == [b"a", b"b"]


def test_work_that_keeps_waiting_holds_lines_only_for_the_window() -> None:
    clock, fanout, (member,), backlog = lobby(1)
    backlog.turns = 10**6
    fanout.add(b"a")
    for _ in range(9):
        clock.advance(WINDOW / 10)
    assert member.got == [], "held while work waits, for 90% of the window"
    clock.advance(WINDOW / 5)
    assert member.got == [b"a"]


def test_lines_go_out_when_their_read_is_done_if_nothing_else_waits() -> None:
    """A read's end: nothing else can join this turn's lines, so they leave
    at once and the turn's timer is cancelled."""
    clock, fanout, (member,), backlog = lobby(1)
    fanout.add(b"a")
    fanout.add(b"b")
    read(fanout)
    assert member.got == [b"ab"] and backlog.asked == 1
    assert clock.getDelayedCalls() == []


def test_lines_stay_for_the_turn_when_other_work_waits_at_the_end_of_a_read() -> None:
    clock, fanout, (member,), backlog = lobby(1)
    backlog.turns = 1
    fanout.add(b"a")
    read(fanout)  # another socket is ready: its line may join
    assert member.got == []
    fanout.add(b"b")
    clock.advance(0)
    assert member.got == [b"ab"]


def test_a_read_ending_during_the_gathering_ends_it_once_nothing_waits() -> None:
    clock, fanout, (member,), backlog = lobby(1)
    backlog.turns = 1
    fanout.add(b"a")
    clock.advance(0)  # work waits: one more turn
    fanout.add(b"b")
    read(fanout)  # that work is done, nothing else waits
    assert member.got == [b"ab"]
    assert clock.getDelayedCalls() == []


def test_a_busy_turn_asks_the_probe_once_at_a_read_and_once_at_its_end() -> None:
    """Under load every read brings a line: once the reactor was found busy,
    the other reads of the turn do not ask again (a system call each)."""
    clock, fanout, (member,), backlog = lobby(1)
    backlog.turns = 1
    for i in range(50):
        fanout.add(b"%d " % i)
        read(fanout)
    assert backlog.asked == 1 and member.got == []
    clock.advance(0)  # the turn's end: nothing waits now
    assert backlog.asked == 2 and len(member.got) == 1


def test_lines_added_during_a_read_go_out_at_its_end_and_no_timer_is_made() -> None:
    """The common path: a connection's read brings lobby lines and nothing
    else waits.  The read's end writes them; no timer was made and cancelled."""
    clock, fanout, (member,), backlog = lobby(1)

    def during() -> None:
        assert member.got == [] and clock.made == 0

    read(fanout, b"a", b"b", during=during)
    assert member.got == [b"ab"] and backlog.asked == 1
    assert clock.made == 0
    fanout.add(b"c")  # the read is over: a line from outside one gets the turn's timer
    assert clock.made == 1 and len(clock.getDelayedCalls()) == 1


def test_lines_of_a_busy_read_get_the_turns_timer_at_its_end() -> None:
    clock, fanout, (member,), backlog = lobby(1)
    backlog.turns = 1

    def during() -> None:
        assert clock.made == 0

    read(fanout, b"a", during=during)  # another socket is ready: the turn's end decides
    assert member.got == [] and clock.made == 1 and len(clock.getDelayedCalls()) == 1
    read(fanout, b"b")  # the next read of the turn brings another line
    assert clock.made == 1 and backlog.asked == 1, "one timer, one probe for the turn"
    clock.advance(0)
    assert member.got == [b"ab"] and backlog.asked == 2


def test_lines_of_a_read_with_the_gathering_off_wait_for_the_turns_end() -> None:
    clock, fanout, (member,), backlog = lobby(1, window=0.0)
    read(fanout, b"a")
    assert member.got == [] and clock.made == 1 and backlog.asked == 0
    clock.advance(0)
    assert member.got == [b"a"]


def test_a_line_added_outside_a_read_goes_out_at_the_turns_end() -> None:
    """A WebSocket message, a cluster line, a timer: no read's end follows,
    so the line is on the turn's timer from the start."""
    clock, fanout, (member,), backlog = lobby(1)
    fanout.add(b"a")
    assert clock.made == 1
    clock.advance(0)
    assert member.got == [b"a"] and backlog.asked == 1


def test_a_read_without_lines_costs_no_probe() -> None:
    _, fanout, (member,), backlog = lobby(1)
    read(fanout)
    assert backlog.asked == 0 and member.got == []


def test_a_read_with_the_gathering_off_leaves_the_turn_end() -> None:
    """--fanout-delay 0 has no probe: the lines leave at the end of the
    turn, as before."""
    clock, fanout, (member,), backlog = lobby(1, window=0.0)
    fanout.add(b"a")
    read(fanout)
    assert member.got == [] and backlog.asked == 0
    clock.advance(0)
    assert member.got == [b"a"]


def test_zero_window_never_asks_the_probe() -> None:
    clock, fanout, (member,), backlog = lobby(1, window=0.0)
    backlog.turns = 10
    fanout.add(b"a")
    clock.advance(0)
    assert member.got == [b"a"] and backlog.asked == 0


def test_flush_writes_at_once_and_leaves_no_timer() -> None:
    clock, fanout, (member,), _ = lobby(1)
    fanout.add(b"a")
    fanout.flush()
    assert member.got == [b"a"]
    assert clock.getDelayedCalls() == []


def test_a_newcomer_gets_only_the_lines_after_its_join() -> None:
    clock, fanout, (old, new), _ = lobby(2)
    fanout.add(b"before ")
    fanout.add_joined(b"JOINED ", new)
    fanout.add(b"after")
    clock.advance(0)
    assert old.got == [b"before JOINED after"]
    assert new.got == [b"after"]


def test_a_newcomer_with_nothing_after_its_join_gets_no_write() -> None:
    clock, fanout, (old, new), _ = lobby(2)
    fanout.add_joined(b"JOINED", new)
    clock.advance(0)
    assert old.got == [b"JOINED"] and new.got == []


def test_shutdown_delivers_what_waits() -> None:
    clock, fanout, (member,), backlog = lobby(1)
    backlog.turns = 10
    fanout.add(b"a")
    clock.advance(0)
    fanout.shutdown()
    assert member.got == [b"a"]
    assert clock.getDelayedCalls() == []


def test_a_leaver_gets_its_share_now_and_never_a_line_twice() -> None:
    clock, fanout, members, _ = lobby(3)
    old, new, other = members
    fanout.add(b"before ")
    fanout.add_joined(b"JOINED ", new)
    fanout.add(b"after ")
    fanout.leaving(old)
    fanout.leaving(new)  # its share only: "before " is in its history
    assert old.got == [b"before JOINED after "] and new.got == [b"after "]
    fanout.leaving(old)  # a FIN, then the hub's departure: nothing twice
    fanout.add(b"LEFT")
    fanout.leaving(old)  # only what came since
    assert old.got == [b"before JOINED after ", b"LEFT"]
    members[:] = [other]  # the leavers are gone from the lobby
    clock.advance(0)
    assert other.got == [b"before JOINED after LEFT"]


def test_a_leaver_in_a_quiet_spell_is_not_kept() -> None:
    """With nothing gathered, a leaver (a FIN or BYE between lines) is not
    held by the fan-out until the next line: its connection can go."""
    _, fanout, members, _ = lobby(2)
    leaver = members.pop()
    gone = weakref.ref(leaver)
    fanout.leaving(leaver)
    del leaver
    gc.collect()
    assert gone() is None


def test_a_newcomer_with_nothing_after_its_joined_gets_nothing_when_leaving_twice() -> None:
    """rr20-left 4: the first call consumed its cut (_late) and gave it
    nothing; the second then sent it its history and its own JOINED."""
    _, fanout, (_, new), _ = lobby(2)
    fanout.add(b"before ")
    fanout.add_joined(b"JOINED ", new)
    fanout.leaving(new)
    fanout.leaving(new)  # a FIN, then the hub's departure
    assert new.got == []


def test_a_leavers_share_is_counted_in_the_batchs_one_report() -> None:
    """rr20-left 3: docs/metrics.md, once per batch: a leaver's share was
    reported as a batch of its own."""
    clock, _, members, backlog = lobby(3)
    batches: list[tuple[int, int, int]] = []
    fanout = LobbyFanout(clock, lambda: members, WINDOW, backlog,
                         on_batch=lambda lines, deliveries, sent, _s: batches.append(
                             (lines, deliveries, sent)))
    fanout.add(b"ab")
    fanout.leaving(members[0])  # its share: 1 line, 2 bytes
    members.pop(0)
    fanout.add(b"LEFT")
    assert batches == []
    clock.advance(0)
    assert batches == [(2, 2 * 2 + 1, 6 * 2 + 2)]
    fanout.add(b"c")
    clock.advance(0)
    assert batches[1:] == [(1, 2, 2)], "the next batch counts no share again"


def test_lines_added_after_shutdown_go_nowhere_and_make_no_timer() -> None:
    """The departures the server's closing makes come after BYE shutdown."""
    clock, fanout, (member,), _ = lobby(1)
    fanout.shutdown()
    fanout.add(b"LEFT")
    assert clock.getDelayedCalls() == []
    fanout.flush()
    assert member.got == []


def test_the_default_reactor_here_has_a_probe() -> None:
    """twistd's default on Linux is the epoll reactor: the server paces by
    backlog there, not only in these tests."""
    from twisted.internet import reactor

    assert reactor_backlog(reactor) is not None


# -- the batch writer ----------------------------------------------------------------


def test_a_batch_writer_serves_members_and_deliver_gets_only_the_rest() -> None:
    """write_all (the send queue's direct pass in the server) takes each
    batch first; members it returns get the batch through C{deliver}, and
    the batch is counted for everyone."""
    clock = TurnClock()
    members = [Stub() for _ in range(4)]
    passes: list[tuple[list[Stub], bytes]] = []
    batches: list[tuple[int, int, int]] = []

    def write_all(ms: Any, data: bytes) -> list[Stub]:
        ms = list(ms)
        passes.append((ms, data))
        return ms[1::2]  # it could not write to the 2nd and 4th

    fanout = LobbyFanout(clock, lambda: members, WINDOW, None, write_all=write_all,
                         on_batch=lambda lines, deliveries, sent, _s: batches.append(
                             (lines, deliveries, sent)))
    fanout.add(b"a")
    fanout.add(b"b")
    clock.advance(0)
    assert passes == [(members, b"ab")]
    assert [m.got for m in members] == [[], [b"ab"], [], [b"ab"]]
    assert batches == [(2, 8, 8)]


def test_a_newcomers_batch_does_not_go_through_the_batch_writer() -> None:
    clock = TurnClock()
    old, new = Stub(), Stub()
    passes: list[bytes] = []

    def write_all(ms: Any, data: bytes) -> list[Stub]:
        passes.append(data)
        return []

    fanout = LobbyFanout(clock, lambda: [old, new], WINDOW, None, write_all=write_all)
    fanout.add_joined(b"JOINED ", new)
    fanout.add(b"after")
    clock.advance(0)
    assert passes == [], "the cut is per member: each gets its own part"
    assert old.got == [b"JOINED after"] and new.got == [b"after"]


def test_a_member_that_starts_closing_before_the_flush_is_given_nothing() -> None:
    """A connection closing (cut at --sendq, or a cluster node's leaver
    waiting for its leave event) stays a member until the hub hears it
    left: the batch was joined, counted as sent, handed to its deliver and
    thrown away there (rr21-f: 970 KB at 200 closing pairs)."""
    clock = TurnClock()
    members = [Stub() for _ in range(4)]
    batches: list[tuple[int, int, int]] = []

    def write_all(ms: Any, data: bytes) -> list[Stub]:
        return list(ms)[2:]  # it could not write to the last two (one of them closing)

    fanout = LobbyFanout(clock, lambda: members, WINDOW, None, write_all=write_all,
                         on_batch=lambda lines, deliveries, sent, _s: batches.append(
                             (lines, deliveries, sent)))
    fanout.add(b"a")
    members[3].closing = True
    fanout.add(b"b")
    clock.advance(0)
    assert [m.got for m in members] == [[], [], [b"ab"], []]
    assert batches == [(2, 2 * 3, 2 * 3)], "counted for the three it was written to"


@pytest.mark.parametrize("batch_writer", [False, True])
def test_a_closing_member_is_given_nothing_beside_a_newcomer(batch_writer: bool) -> None:
    """The same on the rare path (a newcomer's cut: each member gets its
    own part, joined for it) and with no batch writer (--no-direct-send,
    the paired users' batch)."""
    clock = TurnClock()
    old, closing, new = Stub(), Stub(), Stub()
    members = [old, closing]
    fanout = LobbyFanout(clock, lambda: members, WINDOW, None,
                         write_all=(lambda ms, data: list(ms)) if batch_writer else None)
    fanout.add(b"a")
    closing.closing = True
    clock.advance(0)
    assert old.got == [b"a"] and closing.got == []
    members.append(new)
    fanout.add_joined(b"JOINED ", new)
    fanout.add(b"after")
    clock.advance(0)
    assert old.got == [b"a", b"JOINED after"] and new.got == [b"after"] and closing.got == []


def test_a_lobby_members_own_write_sends_the_waiting_lines_first() -> None:
    """before_write: the order rule of docs/fanout.md, "Order", kept once
    for ChatProtocol.write and write_parts (which ask the batch the user
    is in: the lobby's, or the paired users')."""
    clock, fanout, (member,), _ = lobby(1)
    fanout.add(b"a")
    fanout.before_write(member)
    assert member.got == [b"a"] and clock.getDelayedCalls() == []
    fanout.before_write(member)  # nothing waits: nothing to write
    assert member.got == [b"a"]


def test_one_back_from_a_pair_gets_only_the_lines_gathered_after_it_came_back() -> None:
    """returning: the lines gathered while it was paired are not its own
    (it had JOINED and LEFT in the paired users' batch, its share given at
    its return, and the messages come in its replay), so the others keep
    their batch, and its own write (UNPAIRED ...) flushes nothing unless a
    line came after its return (rev21-clu F2)."""
    clock, fanout, members, _ = lobby(2)
    old, back = members
    members.remove(back)  # paired: not in the lobby
    fanout.add(b"a")
    members.append(back)
    fanout.returning(back)
    fanout.before_write(back)
    assert old.got == [] and back.got == [], "nothing of the batch is its own"
    fanout.add(b"b")
    fanout.before_write(old)  # a member with lines waiting: flushed
    assert old.got == [b"ab"] and back.got == [b"b"]
    fanout.returning(back)  # nothing gathered: no cut is kept
    fanout.add(b"c")
    fanout.before_write(back)
    assert old.got == [b"ab", b"c"] and back.got == [b"b", b"c"]
    assert clock.getDelayedCalls() == []


def test_a_batch_beside_another_ends_with_its_reads_and_is_due_with_it() -> None:
    """The paired users' batch beside the lobby's: what a read brings to
    it leaves at the read's end if nothing else waits (else with the
    turn), and the lobby's due says when its lines are due too."""
    clock, _, (paired,), backlog = lobby(1)
    beside = LobbyFanout(clock, lambda: [paired], WINDOW, backlog)
    fanout = LobbyFanout(clock, lambda: [], WINDOW, backlog, beside=beside)
    fanout.read(lambda data: beside.add(b"a"), b"")
    assert paired.got == [b"a"] and clock.getDelayedCalls() == []
    backlog.turns = 2
    fanout.read(lambda data: beside.add(b"b"), b"")
    fanout.read(lambda data: beside.add(b"c"), b"")
    assert paired.got == [b"a"] and backlog.asked == 2, "asked once in a busy turn"
    assert not fanout.due()
    clock.advance(WINDOW)
    assert paired.got == [b"a", b"bc"]
    beside.add(b"d")
    clock.rightNow += WINDOW
    assert fanout.due(), "the lines beside are due"
    beside.flush()
    assert not fanout.due()


def test_a_raising_member_beside_does_not_strand_the_lobbys_lines() -> None:
    """The lobby's end of a read comes before the paired batch's: a paired
    member whose deliver raises there (a bug) cannot leave the lines the
    read brought to the lobby without a timer, never sent."""

    class Raising(Stub):
        def deliver(self, data: bytes) -> None:
            raise RuntimeError("a bug in a paired member's deliver")

    clock = CountingClock()
    clock.advance(1000)
    backlog = Backlog()
    member = Stub()
    beside = LobbyFanout(clock, lambda: [Raising()], WINDOW, backlog)
    fanout = LobbyFanout(clock, lambda: [member], WINDOW, backlog, beside=beside)

    def handle(data: bytes) -> None:
        beside.add(b"LEFT x\r\n")
        fanout.add(b"MSG hello\r\n")

    with pytest.raises(RuntimeError):
        fanout.read(handle, b"")
    clock.advance(WINDOW)
    assert member.got == [b"MSG hello\r\n"]


def test_a_read_that_raises_still_ends() -> None:
    """read's end runs whatever the handler does: the lines it brought
    leave, and the next line outside a read gets the turn's timer."""
    clock, fanout, (member,), _ = lobby(1)

    def failing(data: bytes) -> None:
        fanout.add(data)
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        fanout.read(failing, b"a")
    assert member.got == [b"a"]
    fanout.add(b"b")
    assert len(clock.getDelayedCalls()) == 1
