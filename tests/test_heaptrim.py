"""
Giving the heap back after an output burst: the budget's timed look trims
once the sum fell well below a high peak (L{OutputBudget.trim}), and the
platform part (L{heaptrim}) that does it with glibc's C{malloc_trim}.
"""

from __future__ import annotations

import gc
import sys

import pytest
from twisted.internet.task import Clock

from tests.harness import Harness
from tests.test_outputbudget import Member
from twisted_chat.server.output import heaptrim
from twisted_chat.server.output.fanout import LobbyFanout
from twisted_chat.server.output.outputwatch import TRIM_PEAK, OutputBudget

MiB = 1 << 20


def budget(members: int = 4, size: int = 1 << 30, cuts: list[Member] | None = None,
           ) -> tuple[Clock, OutputBudget, list[Member], list[int]]:
    """A budget of C{size} (by default none is cut) over C{members}, its
    trims; the members it cuts go to C{cuts}."""
    clock = Clock()
    conns: list[Member] = []
    trims: list[int] = []
    watch = OutputBudget(clock, size, lambda: conns,  # type: ignore[arg-type,return-value]
                         trim=trims.append)
    conns += [Member(watch.handed, [] if cuts is None else cuts) for _ in range(members)]
    watch.start()
    return clock, watch, conns, trims


def hold(members: list[Member], total: int) -> None:
    """The members hold C{total} bytes together."""
    for member in members:
        member.queue.held = total // len(members)


def test_the_heap_is_trimmed_once_a_burst_has_drained() -> None:
    """Before, nothing gave back what a burst's buffers freed: the RSS
    stayed at the burst's peak with nothing held."""
    clock, _, members, trims = budget()
    hold(members, 0)
    clock.advance(1.0)
    hold(members, 200 * MiB)
    clock.advance(1.0)  # the burst's peak
    hold(members, 0)
    assert trims == []
    clock.advance(1.0)  # drained
    assert trims == [200 * MiB]


def test_a_quiet_server_is_never_trimmed() -> None:
    """Output that never peaks at TRIM_PEAK is no reason to walk the heap."""
    clock, _, members, trims = budget()
    for second in range(120):
        hold(members, (second % 7) * MiB)
        clock.advance(1.0)
    hold(members, TRIM_PEAK - 4)
    clock.advance(1.0)
    hold(members, 0)
    clock.advance(5.0)
    assert trims == []


def test_no_trim_while_the_output_held_is_still_high() -> None:
    """A quarter of the peak or more is still held: later writes would
    take that memory again, so it waits."""
    clock, _, members, trims = budget()
    hold(members, 400 * MiB)
    clock.advance(1.0)
    for held in (380, 200, 100):
        hold(members, held * MiB)
        clock.advance(1.0)
    assert trims == []
    hold(members, 96 * MiB)
    clock.advance(1.0)
    assert trims == [400 * MiB]


def test_no_trim_while_a_burst_still_comes_in() -> None:
    """Cuts can take the sum under a quarter of its peak while the burst
    goes on to the members left: before, the trim came then, and what the
    rest of the burst took stayed.  It waits for the flow to fall too."""
    clock, watch, members, trims = budget()
    hold(members, 400 * MiB)
    clock.advance(1.0)
    hold(members, 0)
    watch.handed.count = 150 * MiB  # handed since, and taken by the readers
    clock.advance(1.0)
    assert trims == []
    clock.advance(1.0)
    assert trims == [400 * MiB]


def test_one_trim_per_burst() -> None:
    """The peak starts afresh at a trim: a drained server is trimmed once,
    and again only after another burst."""
    clock, _, members, trims = budget()
    hold(members, 100 * MiB)
    clock.advance(1.0)
    hold(members, 0)
    for _ in range(30):
        clock.advance(1.0)
    assert trims == [100 * MiB]
    hold(members, 60 * MiB)
    clock.advance(1.0)
    hold(members, 1 * MiB)
    clock.advance(1.0)
    clock.advance(1.0)
    assert trims == [100 * MiB, 60 * MiB]


def test_no_trim_while_an_overload_goes_on_past_early_looks() -> None:
    """Each second a busy turn hands 60 slow readers 1 MiB each and the
    early look cuts down to the budget there: before, it also forgot what
    was handed, so each timed look saw the sum and the flow low, and
    trimmed every second of the overload.  What every look of the second
    saw handed counts, and the trim waits for the overload's end."""
    cuts: list[Member] = []
    clock, watch, conns, trims = budget(members=0, size=8 * MiB, cuts=cuts)
    fanout = LobbyFanout(clock, lambda: conns, 0.0, output_budget=watch)
    for _ in range(10):
        conns[:] = [c for c in conns if c.send_queue is not None]
        conns += [Member(watch.handed, cuts) for _ in range(60)]
        fanout.add(b"x" * MiB)
        fanout.flush()
        fanout.add(b"y")
        fanout.flush()  # its early look cuts down to the budget
        for member in conns:
            member.queue.held //= 2  # those left drain some
        clock.advance(1.0)
    assert len(cuts) > 500 and trims == []
    for member in conns:
        member.queue.held = 0
    clock.advance(1.0)
    clock.advance(1.0)
    assert len(trims) == 1 and trims[0] >= 60 * MiB


def test_a_burst_that_drains_slowly_is_trimmed_once() -> None:
    """Before, the peak started afresh at the trim, from the rest of the
    burst still draining: a second trim came at 60 MiB on the way down.
    A new burst must rise by TRIM_PEAK over the lowest since the trim."""
    clock, _, members, trims = budget()
    for total in (0, 400, 90, 60, 30, 20, 0, 0):
        hold(members, total * MiB)
        clock.advance(1.0)
    assert trims == [400 * MiB]


def test_a_burst_that_comes_while_one_drains_is_trimmed_too() -> None:
    """Once per burst, not once per fall to nothing: a second burst that
    rises over what the first left has its own trim."""
    clock, _, members, trims = budget()
    for total in (400, 90, 300, 60, 50):
        hold(members, total * MiB)
        clock.advance(1.0)
    assert trims == [400 * MiB, 300 * MiB]


def test_the_look_that_cuts_does_not_trim() -> None:
    """A burst cut within a turn peaks at the early look (before its
    cuts); what the cut connections held is let go at their loss, on the
    next turn, so the trim waits for a timed look that sees the sum low."""
    cuts: list[Member] = []
    clock, watch, conns, trims = budget(members=10, size=64 * MiB, cuts=cuts)
    fanout = LobbyFanout(clock, lambda: conns, 0.0, output_budget=watch)
    for _ in range(2):
        fanout.add(b"x" * (5 * MiB))
        fanout.flush()  # 50 MiB, then 100 MiB: looked at before the next
    fanout.add(b"x")
    fanout.flush()
    assert len(cuts) == 4 and trims == [], "cut within the turn"
    clock.advance(1.0)  # the rest still hold 60 MiB
    assert trims == []
    for member in conns:
        member.queue.held = 0
    clock.advance(1.0)
    assert trims == [100 * MiB], "the peak the early look saw"


def test_a_timed_look_that_cuts_does_not_trim() -> None:
    """What it cuts is still held until those connections are lost:
    the look after it trims, not the one that cut down to the budget."""
    cuts: list[Member] = []
    clock, _, conns, trims = budget(members=10, size=64 * MiB, cuts=cuts)
    hold(conns, 300 * MiB)
    clock.advance(1.0)
    assert len(cuts) == 8 and trims == [], "cut to 60 MiB"
    clock.advance(1.0)  # 60 MiB, under a quarter of the peak
    assert trims == [300 * MiB]


def test_the_last_connection_going_after_a_burst_trims() -> None:
    """No timer runs without connections: a burst whose members all left
    is trimmed as the last goes, not at the next comer's first look."""
    clock, watch, members, trims = budget()
    hold(members, 80 * MiB)
    clock.advance(1.0)
    watch.stop()
    assert trims == [80 * MiB]
    watch.stop()
    assert trims == [80 * MiB]


def test_a_budget_that_is_off_never_trims() -> None:
    """With --sendq-total 0 no look runs, so nothing is summed or trimmed."""
    clock, watch, members, trims = budget(size=0)
    hold(members, 200 * MiB)
    clock.advance(5.0)
    watch.stop()
    assert trims == []


def test_heap_trim_logs_what_it_gave_back(logged: list[str]) -> None:
    calls: list[int] = []
    figures = iter([781_000_000, 87_000_000])
    trim = heaptrim.HeapTrim(lambda pad: calls.append(pad) or 1, rss=lambda: next(figures))
    trim(548 * MiB)
    assert calls == [0]
    assert any("peak of 548 MiB" in line and "RSS 781 to 87 MB" in line for line in logged)


def test_a_trim_runs_no_collection() -> None:
    """Before, a full collection came first, to free the cut connections'
    buffers (54 to 106 ms holding the reactor at 1,000 clients): they are
    let go at their loss now (tcpinfo.drop_twisted_buffers)."""
    collections: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.callbacks.append(seen)
    try:
        heaptrim.HeapTrim(lambda pad: 1, rss=lambda: None)(TRIM_PEAK)
    finally:
        gc.callbacks.remove(seen)
    assert 2 not in collections


def test_rss_that_cannot_be_read() -> None:
    assert heaptrim.rss("/nonexistent/statm") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc: Linux")
def test_glibc_malloc_trim_loads_and_runs(logged: list[str]) -> None:
    """On this Linux (glibc) the real binding is there, and a trim runs."""
    size = heaptrim.rss()
    assert size is not None and size > 0
    trim = heaptrim.load()
    assert trim is not None
    trim(TRIM_PEAK)
    assert any("heap trimmed (RSS " in line for line in logged)


def test_the_server_trims_with_glibc() -> None:
    """The factory's budget has the real trim where libc has malloc_trim."""
    h = Harness()
    expected = heaptrim.HeapTrim if heaptrim.load() is not None else type(None)
    assert isinstance(h.factory.output_budget.trim, expected)
