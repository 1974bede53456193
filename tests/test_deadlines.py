"""Many connections' deadlines on one reactor timer (twisted_chat.server.limits.deadlines)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from twisted.internet.task import Clock

from twisted_chat.server.limits.deadlines import Deadline, Deadlines


class Owner:
    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        self.due: Deadline | None = None
        self.reached: list[float] = []

    def set(self, when: float) -> None:
        if self.due is not None:
            self.deadlines.drop(self.due)
        self.due = self.deadlines.add(when, self)

    def drop(self) -> None:
        assert self.due is not None
        self.deadlines.drop(self.due)
        self.due = None

    def deadline_reached(self, when: float) -> None:
        assert self.due is not None and self.due.when == when
        self.due = None
        self.reached.append(when)


def setup(n: int) -> tuple[Clock, Deadlines, list[Owner]]:
    clock = Clock()
    deadlines = Deadlines(clock)
    return clock, deadlines, [Owner(deadlines) for _ in range(n)]


def test_many_deadlines_one_timer_each_at_its_time() -> None:
    clock, _, owners = setup(3)
    for i, owner in enumerate(owners):
        owner.set(10.0 - i)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(8.0)
    assert [o.reached for o in owners] == [[], [], [8.0]]
    clock.advance(2.0)
    assert [o.reached for o in owners] == [[10.0], [9.0], [8.0]]
    assert clock.getDelayedCalls() == []


def test_a_moved_or_dropped_deadline_is_not_reached() -> None:
    clock, deadlines, (moved, dropped, kept) = setup(3)
    moved.set(1.0)
    dropped.set(2.0)
    kept.set(3.0)
    moved.set(5.0)  # the entry for 1.0 no longer answers
    dropped.drop()
    clock.advance(3.0)
    assert (moved.reached, dropped.reached, kept.reached) == ([], [], [3.0])
    clock.advance(2.0)
    assert moved.reached == [5.0]
    assert len(deadlines) == 0


def test_no_timer_is_left_once_nobody_has_a_deadline() -> None:
    clock, deadlines, owners = setup(2)
    owners[0].set(5.0)
    owners[1].set(7.0)
    owners[0].drop()
    assert [c.getTime() for c in clock.getDelayedCalls()] == [7.0], "moved to the live one"
    owners[1].drop()
    assert clock.getDelayedCalls() == []
    assert len(deadlines) == 0


def test_a_dropped_deadline_does_not_keep_its_owner_alive() -> None:
    clock, deadlines, owners = setup(2)
    owners[0].set(5.0)
    owners[1].set(1.0)
    gone = weakref.ref(owners[0])
    owners[0].drop()  # as a connection does when it closes
    del owners[0]
    gc.collect()
    assert gone() is None, "the entry waiting in the heap forgot its owner"
    assert len(deadlines) == 2
    clock.advance(5.0)
    assert owners[0].reached == [1.0]
    assert len(deadlines) == 0


def test_an_entry_is_small() -> None:
    """Memory per idle connection (docs/fanout.md): a slotted entry, no dict."""
    _, deadlines, (owner,) = setup(1)
    entry = deadlines.add(1.0, owner)
    assert not hasattr(entry, "__dict__")
    assert not hasattr(entry, "__weakref__")


def test_deadlines_within_together_of_a_turn_share_it() -> None:
    """The closes' sweep (closing.Linger): looks a few ms apart, one turn."""
    clock = Clock()
    deadlines = Deadlines(clock, together=0.5)
    owners = [Owner(deadlines) for _ in range(3)]
    for owner, when in zip(owners, (1.0, 1.4, 1.6), strict=True):
        owner.set(when)
    clock.advance(1.0)
    assert [o.reached for o in owners] == [[1.0], [1.4], []]
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.6]


class Resets(Clock):
    """A clock that counts how often its calls are set or moved."""

    def __init__(self) -> None:
        super().__init__()
        self.settings = 0

    def callLater(self, delay: float, call: Any, *args: Any, **kw: Any) -> Any:
        self.settings += 1
        delayed = super().callLater(delay, call, *args, **kw)
        reset = delayed.reset

        def counted(seconds: float) -> None:
            self.settings += 1
            reset(seconds)

        delayed.reset = counted  # type: ignore[method-assign]
        return delayed


def test_a_turn_sets_the_timer_once_however_many_deadlines_move() -> None:
    """Owners that set their next deadline as theirs is reached (an idle
    connection, a close's next look) move the timer once, at the turn's end."""
    clock = Resets()
    deadlines = Deadlines(clock)

    class Again(Owner):
        def deadline_reached(self, when: float) -> None:
            super().deadline_reached(when)
            self.set(when + 10.0)

    owners = [Again(deadlines) for _ in range(100)]
    for i, owner in enumerate(owners):
        owner.set(1.0 + i / 1000)
    clock.settings = 0
    clock.advance(2.0)  # a late turn: all 100 are overdue
    assert all(o.reached for o in owners)
    assert clock.settings == 1
    assert [c.getTime() for c in clock.getDelayedCalls()] == [11.0]


def test_an_owner_that_fails_leaves_the_timer_set_for_the_others() -> None:
    clock, _, (failing, later) = setup(2)

    def fails(when: float) -> None:
        raise RuntimeError("an owner's bug")

    failing.deadline_reached = fails  # type: ignore[method-assign]
    failing.set(1.0)
    later.set(2.0)
    with pytest.raises(RuntimeError):
        clock.advance(1.0)
    clock.advance(1.0)
    assert later.reached == [2.0]
