"""
Many connections' deadlines on one reactor timer (docs/fanout.md, "Memory
per connection"): an idle connection costs one small heap entry (a
L{Deadline}: its time and its owner) instead of a C{DelayedCall} of its own.
The closes under way look at their sockets on one timer the same way
(L{closing.Linger}).
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Owner(Protocol):
    def deadline_reached(self, when: float) -> None:
        """Its deadline C{when} came (one it dropped never does)."""


class Deadline:
    """
    One owner's deadline, as the heap holds it.  Dropping it forgets the
    owner at once, so a closed connection is not kept alive by an entry that
    waits for its turn to leave the heap.
    """

    __slots__ = ("owner", "when")

    def __init__(self, when: float, owner: Owner) -> None:
        self.when = when
        self.owner: Owner | None = owner

    def __lt__(self, other: Deadline) -> bool:
        return self.when < other.when


class Deadlines:
    """
    A heap of L{Deadline}s.  A dropped deadline stays in the heap without an
    owner until it reaches the head (lazy removal); dead entries at the head
    go at once, so the one reactor timer is always for a live deadline, and
    none is left once nobody has one.  A turn of the timer serves every
    deadline due by then, and those due within C{together} seconds after
    (so that deadlines a few moments apart share a turn), and sets the
    timer once, at its end.
    """

    __slots__ = ("__weakref__", "_call", "_clock", "_firing", "_heap", "_together")

    def __init__(self, clock: IReactorTime, together: float = 0.0) -> None:
        self._clock = clock
        self._together = together
        self._heap: list[Deadline] = []
        self._call: IDelayedCall | None = None
        self._firing = False

    def add(self, when: float, owner: Owner) -> Deadline:
        """C{owner}'s deadline at C{when}; keep it to L{drop} it."""
        deadline = Deadline(when, owner)
        heappush(self._heap, deadline)
        self._arm()
        return deadline

    def drop(self, deadline: Deadline) -> None:
        """The owner no longer wants C{deadline}."""
        deadline.owner = None
        self._arm()

    def __len__(self) -> int:
        return len(self._heap)

    def _arm(self) -> None:
        if self._firing:
            return  # at the end of the turn
        heap = self._heap
        while heap and heap[0].owner is None:
            heappop(heap)
        call = self._call
        if not heap:
            if call is not None:
                self._call = None
                if call.active():
                    call.cancel()
            return
        when = heap[0].when
        delay = max(when - self._clock.seconds(), 0.0)
        if call is None:
            self._call = self._clock.callLater(delay, self._fire)
        elif call.getTime() != when:
            call.reset(delay)

    def _fire(self) -> None:
        self._call = None
        heap = self._heap
        until = self._clock.seconds() + self._together
        self._firing = True
        try:
            while heap and heap[0].when <= until:
                deadline = heappop(heap)
                owner, deadline.owner = deadline.owner, None
                if owner is not None:
                    owner.deadline_reached(deadline.when)
        finally:
            self._firing = False
            self._arm()
