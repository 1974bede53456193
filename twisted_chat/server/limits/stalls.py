"""
L{StallWatch}: notices that the whole process did not run for a while (a
SIGSTOP, a paused VM, swap), so that what every connection sent meanwhile,
read all at once after, is not taken for a flood (docs/security.md,
"After a stall").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["STALL", "TICK", "StallWatch"]

#: How often the watch's timer runs while there are connections (seconds).
TICK = 0.5

#: A tick this much later than due (seconds) is a stall: the reactor did
#: not run for that long.  Shorter ones are within a flood bucket's burst.
STALL = 0.5


class StallWatch:
    """
    A timer every C{tick} seconds (L{TICK}; 0: off, as with no flood
    control) while there are connections (L{start}, L{stop}).  When it runs
    more than L{STALL} seconds late, the reactor did not run for that long
    and no connection was read: what their peers sent meanwhile waited in
    the kernel and comes in the first reads after.  Those reads may come
    before the late tick (the reactor reads, then runs its timers), so a
    line over its flood rate asks L{draw}, which notices an overdue tick
    as well.  Each connection may then draw the stall's excuse once: its
    length (the tick's lateness, the least the process was stopped), for
    lines that arrived after the tick was due (one that arrived before came
    before the stall) and within C{excused_for} seconds of its notice.
    Only a connection there by the first tick after the stall draws it:
    those accepted before it ran were accepted in the reactor's first turn
    after the stall, and may have had lines waiting through it; one
    accepted later had nothing waiting (one opened 0.1 s
    after a 5 s stall passed 60 PINGs at once instead of 19).
    L{twisted_chat.server.limits.heldinput.HeldInput.excused} spends it as for a
    connection the server itself kept unread.  Nothing is done for a line
    under its rate; what it keeps is who drew the last stall's excuse or
    came too late for it, let go once it is over.
    Lateness is measured on two clocks, and the lesser counts: the
    reactor's (wall time: when the timer is due) and C{steady}
    (C{time.monotonic}), which the system clock's steps do not move.  A
    step forward of the wall clock makes the tick look late on it alone,
    a step back on C{steady} alone (the tick waits for the wall clock to
    catch up, with the reactor running all along); only a real stall is
    late on both (a 60 s step forward would have excused 600
    lines over every connection's bucket at the default rate).
    """

    __slots__ = ("_call", "_clock", "_drawn", "_excused_for", "_last", "_steady", "_steady_last",
                 "_tick_every", "_ticked", "seconds", "since", "until")

    def __init__(self, clock: IReactorTime, excused_for: float, tick: float = TICK,
                 steady: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._steady = steady
        self._steady_last = 0.0  # C{_last} on the steady clock
        self._excused_for = excused_for
        self._tick_every = tick
        self._call: IDelayedCall | None = None
        self._last = 0.0  # when the tick last ran (or a stall was counted to)
        # The last stall: how long, and for lines that arrived after
        # C{since} (when its tick was due) until C{until}.
        self.seconds = 0.0
        self.since = self.until = -math.inf
        self._drawn: set[object] = set()  # who took its excuse, or came after it
        self._ticked = False  # whether the tick ran since it was counted

    def start(self, conn: object) -> None:
        """C{conn} came: make sure the timer runs.  If the tick ran since
        the last stall, C{conn} had nothing waiting through it."""
        if self._call is None:
            if self._tick_every:
                self._last, self._steady_last = self._clock.seconds(), self._steady()
                self._call = self._clock.callLater(self._tick_every, self._tick)
        elif self._ticked and self._clock.seconds() <= self.until:
            self._drawn.add(conn)

    def stop(self) -> None:
        """The last connection went: no timer, and nothing kept."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self.until = -math.inf
        self._drawn.clear()

    def _tick(self) -> None:
        now = self._clock.seconds()
        self._notice(now)
        if now > self.until:
            self._drawn.clear()
        self._ticked = True
        self._last, self._steady_last = now, self._steady()
        self._call = self._clock.callLater(self._tick_every, self._tick)

    def _notice(self, now: float) -> None:
        """Count a stall that ended by C{now}: the tick is that late."""
        due = self._last + self._tick_every
        steady = self._steady()
        late = min(now - due, steady - self._steady_last - self._tick_every)
        if late > STALL and self._call is not None:
            self.since, self.seconds, self.until = due, late, now + self._excused_for
            # Counted once.
            self._last, self._steady_last = now - self._tick_every, steady - self._tick_every
            self._drawn.clear()
            self._ticked = False

    def draw(self, conn: object, now: float) -> tuple[float, float] | None:
        """
        A line of C{conn}'s that arrived at C{now} is over its flood rate:
        the last stall's excuse (its length, and until when it holds) if
        C{now} is within it and C{conn} has not drawn it yet, else C{None}.
        """
        self._notice(now)
        if not self.since < now <= self.until or conn in self._drawn:
            return None
        self._drawn.add(conn)
        return self.seconds, self.until

    def forget(self, conn: object) -> None:
        """C{conn} is gone."""
        self._drawn.discard(conn)
