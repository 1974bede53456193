"""
Many connections' deadlines on one reactor timer (docs/fanout.md, "Memory
per connection"): an idle connection costs a heap entry (a tuple, a float
and a weak reference) instead of a C{DelayedCall} of its own.
"""

from __future__ import annotations

import itertools
import weakref
from heapq import heappop, heappush
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Owner(Protocol):
    def deadline_reached(self, when: float) -> bool:
        """C{when} came: act if it is still this owner's deadline, and say
        whether it was (a deadline the owner dropped or moved is not)."""

    def has_deadline(self, when: float) -> bool:
        """Whether C{when} is still a deadline of this owner."""


Entry = tuple[float, int, "weakref.ReferenceType[Owner]"]


class Deadlines:
    """
    A heap of C{(when, seq, weak owner)}.  An owner that drops or moves a
    deadline just stops answering to it (lazy removal), and calls L{dropped}
    so that dead entries at the head go at once: the one reactor timer is
    always for a live deadline, and none is left once nobody has one.
    """

    __slots__ = ("_call", "_clock", "_heap", "_seq")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._heap: list[Entry] = []
        self._seq = itertools.count()
        self._call: IDelayedCall | None = None

    def add(self, when: float, owner: Owner) -> None:
        heappush(self._heap, (when, next(self._seq), weakref.ref(owner)))
        self._arm()

    def dropped(self) -> None:
        """An owner dropped a deadline."""
        self._arm()

    def __len__(self) -> int:
        return len(self._heap)

    def _arm(self) -> None:
        heap = self._heap
        while heap:
            when, _, ref = heap[0]
            owner = ref()
            if owner is not None and owner.has_deadline(when):
                break
            heappop(heap)
        call = self._call
        if not heap:
            if call is not None:
                self._call = None
                if call.active():
                    call.cancel()
            return
        when = heap[0][0]
        delay = max(when - self._clock.seconds(), 0.0)
        if call is None:
            self._call = self._clock.callLater(delay, self._fire)
        elif call.getTime() != when:
            call.reset(delay)

    def _fire(self) -> None:
        self._call = None
        heap = self._heap
        now = self._clock.seconds()
        while heap and heap[0][0] <= now:
            when, _, ref = heappop(heap)
            owner = ref()
            if owner is not None:
                owner.deadline_reached(when)
        self._arm()
