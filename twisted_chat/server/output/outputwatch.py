"""
The timers that police what the send queues hold, one for every connection:
L{DrainWatch} (C{--sendq-timeout}: a peer that has taken none of its bytes
for that long is dropped, see docs/fanout.md, "Output that does not drain")
and L{OutputBudget} (C{--sendq-total}: the bytes held for all connections
together, see docs/security.md, "Output held in all"; after a burst it
also has memory given back: L{heaptrim}).  Both read each
connection's L{SendQueue} (the drain watch keeps its figures on it); the
queue itself and its own bounds (C{--sendq}, C{--sndbuf}) are in
L{sendqueue}, which keeps to the queue and the fan-out's direct pass.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from twisted_chat.server.output.sendqueue import Handed, SendQueue

__all__ = ["EARLY_LOOK_SHARE", "TRIM_FALL", "TRIM_PEAK", "Budgeted", "DrainWatch", "OutputBudget",
           "Watched", "stalled"]

# An early look (OutputBudget.check) waits for at least this share of the
# budget to be handed to Twisted since the last look: a server hovering near
# its budget looks once per budget / 16 bytes handed, not once per flush.
EARLY_LOOK_SHARE = 16

# The heap is trimmed once the sum seen at a look has risen by TRIM_PEAK
# bytes at least over its lowest since the last trim, and a timed look sees
# it under 1 / TRIM_FALL of its peak.
TRIM_PEAK = 32 << 20
TRIM_FALL = 4


def stalled(
    held: int, delivered: int, last: int, since: float | None, now: float, timeout: float
) -> tuple[float | None, bool]:
    """
    One look at a queue: C{held} bytes held, C{delivered} in all so far
    (C{last} at the previous look, when it had been stalled C{since}).
    Returns when its stall began (C{None}: it is not stalled) and whether it
    has lasted C{timeout}: output that has not drained that long.
    """
    if held == 0:
        return None, False
    if since is None or delivered != last:
        return now, False
    return since, now - since >= timeout


class Watched(Protocol):
    """What the drain watch needs of a connection."""

    @property
    def send_queue(self) -> SendQueue | None:
        """Its queue (C{None}: none to watch, not yet or no longer)."""

    def output_stalled(self) -> None:
        """Its peer took none of its bytes for the timeout: drop it."""


class _Periodic:
    """A timer for every connection that runs while there are some: L{start}
    when one comes, L{stop} when the last goes; C{period} 0 turns it off."""

    __slots__ = ("_call", "_clock", "_period")

    def __init__(self, clock: IReactorTime, period: float) -> None:
        self._clock = clock
        self._period = period
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """A connection came: make sure the timer runs."""
        if self._period and self._call is None:
            self._call = self._clock.callLater(self._period, self._look)

    def stop(self) -> None:
        """The last connection went: no timer is left behind."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _look(self) -> None:
        raise NotImplementedError


class DrainWatch(_Periodic):
    """
    One timer for every connection: each C{timeout / 4} seconds it looks at
    the send queue of every connection C{connections()} returns (the
    factory's own set: the watch keeps nothing per connection), and calls
    C{output_stalled} of each whose peer has taken none of the bytes held
    for it for C{timeout} seconds (L{stalled}).  The timer runs while there
    are connections: L{start} when one comes, L{stop} when the last goes.
    C{timeout} 0 turns it off.
    """

    __slots__ = ("_connections", "_timeout")

    def __init__(self, clock: IReactorTime, timeout: float,
                 connections: Callable[[], Collection[Watched]]) -> None:
        super().__init__(clock, timeout / 4)
        self._timeout = timeout
        self._connections = connections

    def _look(self) -> None:
        self._call = None
        now = self._clock.seconds()
        timeout = self._timeout
        dropped = []
        for connection in self._connections():
            queue = connection.send_queue
            if queue is None:
                continue
            held = queue.held()
            delivered = queue.delivered(held) if held else queue.last_delivered
            since, over = stalled(held, delivered, queue.last_delivered, queue.stalled_since,
                                  now, timeout)
            queue.stalled_since = since
            queue.last_delivered = delivered
            if over:
                dropped.append(connection)
        for connection in dropped:
            connection.output_stalled()
        if self._connections():
            self.start()


# -- output held for all connections ------------------------------------------------


class Budgeted(Protocol):
    """What the output budget needs of a connection."""

    @property
    def send_queue(self) -> SendQueue | None:
        """Its queue (C{None}: none to count, not yet or no longer)."""

    def output_over_budget(self) -> None:
        """It is first to go of an output over C{--sendq-total}: drop it."""


class OutputBudget(_Periodic):
    """
    C{--sendq-total}: the bytes the server itself holds for all connections
    together (Twisted's buffers, L{SendQueue.twisted_held}; the kernel's
    share is bounded apart, by C{--sndbuf}).  One timer for every
    connection, each C{period} seconds while there are connections: when
    the sum is over C{budget}, connections are dropped
    (C{output_over_budget}) until the rest fit: first those whose peer took
    nothing since the last timed look (L{SendQueue.progress} unchanged:
    stalled), the biggest first, then those still draining, the biggest
    first.  A connection that held nothing at that look has not been seen
    stalled, nor has one whose progress cannot be read (C{None}).  Each
    connection's own bound stays C{--sendq} (1.5 times it with private lines
    held: L{SendQueue.write_private}); this bounds their sum, private lines
    too, which is otherwise C{--max-clients} times that
    (docs/security.md, "Output held in all").  C{budget} 0 turns it off.

    No timer runs inside a reactor turn, and one busy turn's fan-out can
    hand every member its whole batch, so the queues count what they hand
    to Twisted (L{handed}) and the fan-out calls L{check} before each
    flush's delivery and at each read's end: once the last look's sum
    (less its cuts) plus that tally passes the budget, and the tally is at
    least C{budget / EARLY_LOOK_SHARE}, the same look runs there and then.
    So at those points the sum is at most the budget, or the budget and
    1/16 of it when it hovers near it (a look per 1/16 of the budget handed
    at most, not one per flush); in between it passes that by what one
    flush's delivery hands out (its bytes times the members holding output)
    or one read's own replies.  Connections cut stop counting at once;
    what Twisted buffered for them is let go at their C{connectionLost}, on
    the next turn (L{drop_twisted_buffers
    <twisted_chat.tcpinfo.drop_twisted_buffers>}: not when the collector
    frees each connection and its user).  That early
    look keeps the timed look's notion of stalled (no progress since the
    last timed look) and leaves its timer alone.  What it keeps between
    looks is the progress of the connections that held something at the
    last timed look (nothing per connection otherwise).

    Memory a burst left behind is not given back by itself (L{heaptrim}): once
    the sum seen at a look has peaked at L{TRIM_PEAK} or more, the first
    timed look that sees it, and what was handed since the last timed look
    (early looks included: a burst that goes on past cuts), under a quarter
    of that peak (or the last connection going) calls C{trim} with the
    peak, once.  A burst is a rise of L{TRIM_PEAK} at least over the lowest
    sum since the last trim, so the rest of a burst draining slowly after
    its trim is no new one: a trim per burst at most, never on a write's
    path.
    """

    __slots__ = ("_budget", "_connections", "_handed_early", "_low", "_peak", "_progress",
                 "handed", "held", "trim")

    def __init__(self, clock: IReactorTime, budget: int,
                 connections: Callable[[], Collection[Budgeted]], period: float = 1.0,
                 trim: Callable[[int], object] | None = None) -> None:
        super().__init__(clock, period if budget else 0.0)
        self._budget = budget
        self._connections = connections
        self._progress: dict[SendQueue, int] = {}
        # Gives memory back after a burst (heaptrim.load(); None: never).
        self.trim = trim
        # The most the sum was at a look (before its cuts) since the last
        # trim, once it rose by TRIM_PEAK over _low, the least it was since.
        self._peak = 0
        self._low = 0
        # What the early looks since the last timed look saw handed.
        self._handed_early = 0
        # The sum at the last look, less what it cut (chat_output_held_bytes).
        self.held = 0
        # What the queues handed to Twisted since (each queue's handed).
        # How much more may be handed before check() looks: handed.room.
        # (Off, C{budget} 0: the factory gives the tally and check() to nobody.)
        self.handed = Handed(budget)

    def stop(self) -> None:
        super().stop()
        self._trim_after_burst(0)
        self._low = 0
        self._handed_early = 0
        self._progress = {}
        self.held = 0
        self.handed.count = 0
        self.handed.room = self._budget

    def check(self) -> None:
        """Within a turn, before a flush's delivery or at a read's end:
        look now if what was handed since the last look may have taken the
        sum past the budget (see the class).  A flush may come from a
        member's own write inside a loop over the hub's users; cutting
        there is safe, since a cut only aborts the connection (it leaves
        on a later turn), as a C{--sendq} cut in mid-delivery does.  Off
        (C{budget} 0), it does nothing: it would cut everyone holding output."""
        handed = self.handed
        if handed.count > handed.room and self._budget:
            self._handed_early += handed.count
            self._cut_to_budget(self._progress)

    def _look(self) -> None:
        self._call = None
        handed = self._handed_early + self.handed.count
        self._handed_early = 0
        self._progress, seen = self._cut_to_budget(self._progress)
        self._trim_after_burst(max(seen, handed))
        if self._connections():
            self.start()

    def _trim_after_burst(self, seen: int) -> None:
        """Trim if the sum, and what was handed to Twisted since the last
        timed look (a burst still coming in), C{seen}, fell well below a
        high peak."""
        peak = self._peak
        if peak >= TRIM_PEAK and seen * TRIM_FALL < peak and self.trim is not None:
            self._peak = 0
            self._low = seen
            self.trim(peak)

    def _cut_to_budget(self, last: dict[SendQueue, int]) -> tuple[dict[SendQueue, int], int]:
        """The look: the sum, and cuts while it is over the budget, ranking
        as stalled those whose progress is C{last}'s.  Returns the progress
        of those holding output, and the sum before the cuts."""
        progress: dict[SendQueue, int] = {}
        holding: list[tuple[bool, int, Budgeted]] = []
        total = 0
        for connection in self._connections():
            queue = connection.send_queue
            if queue is not None:
                held = queue.twisted_held()
                if held:
                    now = queue.progress()
                    # No count (None): ranked with the draining, never as
                    # stalled (a figure that cannot move decides nothing).
                    if now is not None:
                        progress[queue] = now
                    holding.append((now is not None and last.get(queue) == now, held,
                                    connection))
                    total += held
        seen = total
        if seen < self._low:
            self._low = seen
        elif seen > self._peak and seen - self._low >= TRIM_PEAK:
            self._peak = seen
        budget = self._budget
        if total > budget:
            holding.sort(key=_rank, reverse=True)
            for _, held, connection in holding:
                if total <= budget:
                    break
                connection.output_over_budget()
                total -= held
        self.held = total
        self.handed.count = 0
        self.handed.room = max(budget - total, budget // EARLY_LOOK_SHARE)
        return progress, seen


def _rank(holder: tuple[bool, int, Any]) -> tuple[bool, int]:
    """Which goes first (the greatest): stalled, then the most held."""
    return holder[0], holder[1]
