"""
The C{--sendq-total} budget within a reactor turn: the send queues' tally
of what they hand to Twisted, and the look the fan-out asks for between
flushes and at a read's end (L{OutputBudget.check}).  The timed look's
ranking is in tests/test_sendqueue.py.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from tests.harness import Harness
from twisted_chat.server.output.fanout import LobbyFanout
from twisted_chat.server.output.outputwatch import EARLY_LOOK_SHARE, OutputBudget
from twisted_chat.server.output.sendqueue import Handed


class Queue:
    """A stand-in send queue: every write goes to Twisted's buffer, where
    its peer takes nothing (C{taken} stays, unless a test moves it)."""

    def __init__(self, handed: Handed) -> None:
        self._handed = handed
        self.held = 0
        self.taken = 0
        self.asked = 0  # looks that saw it holding

    def write(self, data: bytes) -> None:
        self._handed.count += len(data)
        self.held += len(data)

    def twisted_held(self) -> int:
        return self.held

    def progress(self) -> int | None:
        self.asked += 1
        return self.taken


class Member:
    """A stand-in connection for the fan-out and the budget."""

    def __init__(self, handed: Handed, cuts: list[Member]) -> None:
        self.queue = Queue(handed)
        self.send_queue: Queue | None = self.queue
        self._cuts = cuts

    @property
    def closing(self) -> bool:
        return self.send_queue is None

    def deliver(self, data: bytes) -> None:
        assert self.send_queue is not None, "the fan-out leaves a cut member out"
        self.send_queue.write(data)

    def output_over_budget(self) -> None:
        self._cuts.append(self)
        self.send_queue = None


def server(budget: int, members: int) -> tuple[Clock, OutputBudget, LobbyFanout,
                                                list[Member], list[Member]]:
    clock = Clock()
    cuts: list[Member] = []
    conns: list[Member] = []
    watch = OutputBudget(clock, budget, lambda: conns)  # type: ignore[arg-type,return-value]
    conns += [Member(watch.handed, cuts) for _ in range(members)]
    watch.start()
    fanout = LobbyFanout(clock, lambda: conns, 0.0, output_budget=watch)
    return clock, watch, fanout, conns, cuts


def flush(fanout: LobbyFanout, size: int) -> None:
    fanout.add(b"x" * size)
    fanout.flush()


def test_a_burst_of_flushes_in_one_turn_is_cut_before_the_next_flush() -> None:
    """No timer runs inside a turn: before, four flushes of a busy turn
    took the sum to twice the budget, and nobody was cut until the clock
    moved.  Now the flush after the one that passed it looks first."""
    clock, watch, fanout, members, cuts = server(budget=1000, members=4)
    for _ in range(3):
        flush(fanout, 100)  # 400, 800, 1200: the third passes the budget
    assert cuts == []
    flush(fanout, 100)  # the look (1200: one member of 300 goes), then the batch
    assert len(cuts) == 1 and cuts[0].queue.held == 300, "cut before this flush"
    assert sum(m.queue.held for m in members if not m.closing) == 1200
    flush(fanout, 100)  # 1200 again: another goes first
    assert len(cuts) == 2
    assert watch.held + watch.handed.count == 1000
    assert clock.getDelayedCalls()[0].getTime() == 1.0, "the timer is left alone"


def test_a_read_that_passes_the_budget_is_looked_at_its_end() -> None:
    """Replies (and private lines) handed in a read count as well: the
    look runs at the read's end, before the read's own batch goes."""
    clock, _, fanout, members, cuts = server(budget=1000, members=2)

    def handle(data: bytes) -> None:
        members[0].deliver(b"r" * 1100)  # a big reply: past the budget
        fanout.add(data)

    fanout.read(handle, b"line\r\n")
    assert cuts == [members[0]]
    clock.advance(0)  # the turn's end (no backlog probe): the batch
    assert members[1].queue.held == len(b"line\r\n"), "the batch went to the others"


def test_a_quiet_server_still_looks_once_a_second() -> None:
    """Without flushes the timed look goes on: a stalled holder over the
    budget goes within a second, and check() alone never looks."""
    clock, watch, _, members, cuts = server(budget=1000, members=2)
    members[0].queue.held = 1500  # held before the budget last looked
    for _ in range(5):
        watch.check()
    assert cuts == []
    clock.advance(1.0)
    assert cuts == [members[0]]
    assert clock.getDelayedCalls()[0].getTime() == 2.0


def test_the_tally_resets_at_each_look() -> None:
    """Timed or early, a look starts the tally afresh: what was handed
    before it is in the sum it made."""
    clock, watch, fanout, _, _ = server(budget=1000, members=2)
    flush(fanout, 300)
    assert watch.handed.count == 600
    clock.advance(1.0)
    assert (watch.handed.count, watch.held) == (0, 600)
    flush(fanout, 300)  # 1200: over the budget after a look at 600
    watch.check()
    assert (watch.handed.count, watch.held) == (0, 600), "one cut, the tally reset"
    watch.stop()  # the last connection went
    assert (watch.handed.count, watch.held) == (0, 0)


def test_near_the_budget_a_look_waits_for_a_sixteenth_of_it() -> None:
    """A sum that hovers just under the budget (readers draining what
    comes) makes no look per flush: one per budget / 16 handed at most."""
    budget = 1600
    clock, _, fanout, members, cuts = server(budget=budget, members=1)
    members[0].queue.held = budget - 10
    clock.advance(1.0)  # the timed look: 1590, within it
    assert members[0].queue.asked == 1
    per_look = budget // EARLY_LOOK_SHARE // 20 + 1  # flushes of 20 bytes
    for _ in range(per_look * 6 + 1):  # the look is at the flush after
        members[0].queue.held -= 20  # its peer took the last one
        flush(fanout, 20)
    assert members[0].queue.asked == 1 + 6, "not one look per flush"
    assert cuts == []


def test_an_early_look_ranks_as_stalled_what_took_nothing_since_the_timed_one() -> None:
    """The look within a turn keeps the timed look's order, and its idea of
    stalled: no progress since the last timed look (a second, not the few
    milliseconds since the last flush, in which a reader may take nothing)."""
    clock, watch, fanout, members, cuts = server(budget=1000, members=2)
    reader, stalled = members
    reader.queue.held, stalled.queue.held = 400, 100
    clock.advance(1.0)
    reader.queue.taken = 5_000  # it reads
    flush(fanout, 300)  # 1100: the stalled one is the smaller
    flush(fanout, 1)
    assert cuts == [stalled]
    assert watch._progress == {reader.queue: 0, stalled.queue: 0}, "the timed look's"


def test_a_budget_that_is_off_has_no_tally_and_never_looks() -> None:
    """--sendq-total 0: the factory gives its queues no tally and its
    fan-outs no budget to ask (before, the queues counted into a tally
    nobody read); nor does its timer run."""
    h = Harness(sendq_total=0)
    slow, talker = h.user("ann"), h.user("cat")
    slow.transport.producer.pauseProducing()
    for _ in range(5):
        talker.send("MSG " + "x" * 2000)
    factory = h.factory
    assert factory.context.handed is None
    assert factory.fanout._handed is None and factory.paired_fanout._handed is None
    queue = slow.protocol.send_queue
    assert queue is not None and queue._handed is None
    assert not slow.protocol.closing and factory.output_budget._call is None


def test_a_budget_that_is_off_cuts_nobody_when_asked() -> None:
    """Only the factory's wiring kept a budget of 0 from being asked: its
    room is 0, so a look cut everyone holding output.  Asked, it does
    nothing."""
    _, watch, fanout, _, cuts = server(0, 3)
    flush(fanout, 1000)
    watch.check()
    assert cuts == [] and watch.held == 0


def test_the_server_cuts_within_a_turn_before_its_timer() -> None:
    """The factory's wiring: its connections' queues tally for its budget,
    and its fan-out asks it at reads and flushes.  Two paused readers over
    the budget after a few lobby lines are cut at once, not at the next
    timed look (before, both held on until it)."""
    paused = 65536  # what a paused test transport counts as held (SendQueue)
    h = Harness(sendq_total=2 * paused + 5000)
    slow = [h.user("ann"), h.user("bob")]
    talker = h.user("cat")
    for conn in slow:
        conn.transport.producer.pauseProducing()
    h.clock.advance(1.0)  # the timed look: 2 x 65536, within the budget
    assert not any(conn.protocol.closing for conn in slow)
    started = h.clock.seconds()
    for _ in range(5):
        talker.send("MSG " + "x" * 2000)
    assert h.clock.seconds() == started, "all within one timer's period"
    assert [conn.protocol.closing for conn in slow].count(True) == 1
    assert h.factory.output_budget.held <= 2 * paused + 5000
