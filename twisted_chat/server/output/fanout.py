"""
When lobby lines leave: gathering, pacing by backlog, the newcomer cut and
shutdown.  The design and its guarantees are in docs/fanout.md.

The fan-out knows connections only as L{Member}s and the lobby only as a
function returning its members; time comes from an injected C{IReactorTime},
and whether other work is waiting from an injected probe (L{reactor_backlog}).
The decision rule is the pure function L{keep_gathering}.
"""

from __future__ import annotations

import functools
import select
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from twisted_chat.server.output.sendqueue import Handed

# The longest a lobby line is held for the lines behind it, in seconds,
# whatever --fanout-delay says (docs/fanout.md, "Pacing by backlog").
MAX_FANOUT_WAIT = 0.05

# The most reactor turns a fan-out is put off by, whatever the clock says:
# a clock that stands still (or is set back) cannot hold the lobby.
MAX_GATHER_TURNS = 100

# Whether other work is waiting: true (truthy) while it is.
Backlog = Callable[[], object]

# Told of each fan-out: lines in the batch, lines and bytes handed to
# members in all, seconds the writes took (see twisted_chat.server.metrics.counters).
BatchObserver = Callable[[int, int, int, float], None]

# Writes a batch to the members it can in one pass, and returns the others
# (see twisted_chat.server.output.sendqueue.DirectPass).
WriteAll = Callable[[Collection[Any], bytes], Collection[Any]]


class OutputLook(Protocol):
    """The C{--sendq-total} budget's look within a turn, as the fan-out
    sees it (L{twisted_chat.server.output.outputwatch.OutputBudget})."""

    @property
    def handed(self) -> Handed:
        """What the queues handed to Twisted since the last look, and the
        room before the next: compared here, not in a call, each flush."""

    def check(self) -> None:
        """Look now.  A flush that a member's own write brought
        (L{LobbyFanout.before_write}) may run inside a loop over the hub's
        users: a cut is still safe there, since it only aborts the
        connection (its leaving comes on a later turn), as a C{--sendq}
        cut in the middle of a delivery does."""


class Member(Protocol):
    """What the fan-out needs of a connection (a batch writer given to it,
    such as the send queues' direct pass, may read more of the members it
    can write to and return the others)."""

    @property
    def closing(self) -> bool:
        """Its connection is closing: it writes nothing more, so a batch
        leaves it out (a batch writer never writes to it either)."""

    def deliver(self, data: bytes) -> None:
        """Send C{data} (subject only to the connection's send queue)."""


# -- the rule -------------------------------------------------------------------


def keep_gathering(first: float, now: float, turns: int, window: float, waiting: bool) -> bool:
    """
    Whether the lines gathered since C{first} wait one more reactor turn
    (C{turns} taken so far) instead of going out now: only while other work
    is C{waiting} (lines the reactor has not read yet ride along), and never
    past C{window} (capped at L{MAX_FANOUT_WAIT}) nor L{MAX_GATHER_TURNS}.
    The server's speed never enters: a slower server reaches the window in
    fewer turns, it does not wait longer.
    """
    return (
        waiting
        and turns < MAX_GATHER_TURNS
        and first <= now < first + min(window, MAX_FANOUT_WAIT)
    )


def reactor_backlog(reactor: Any) -> Backlog | None:
    """
    A probe telling whether the reactor has events waiting (a readable or
    writable socket, a call from a thread), or C{None} where that cannot be
    asked.  It polls the epoll reactor's own descriptor, which is readable
    while any of its sockets is ready: one system call, nothing consumed.
    C{_poller} is not public API; any other reactor gets C{None}.
    """
    epoll = getattr(select, "epoll", None)
    poller = getattr(reactor, "_poller", None)
    if epoll is None or not isinstance(poller, epoll):
        return None
    probe = select.poll()
    probe.register(poller.fileno(), select.POLLIN)
    # The ready events, empty while nothing waits: poll(0) itself, with no
    # Python frame around it (it is asked once a read that brought lines).
    return functools.partial(probe.poll, 0)


# -- the fan-out ----------------------------------------------------------------


class LobbyFanout:
    """
    Gathers the lines addressed to the lobby and writes them to every member
    in one write per fan-out: at the end of the reactor turn that brought the
    first of them (or of the read that did, when nothing else waits, see
    L{read}), or, while the reactor has other work waiting, after the
    turns that do it (docs/fanout.md).  C{window} 0 turns the gathering off.
    C{write_all}, where given, writes each batch to the members it can
    before the others' C{deliver} is called.  C{beside}, where given, is a
    second batch gathered beside this one (the paired users' C{JOINED} and
    C{LEFT} lines), whose lines leave by the same rules: at the end of
    this one's reads (L{read}), and when L{due}.  C{output_budget}, where
    given, is asked before each flush's delivery and at the end of each
    read that flushed nothing: the C{--sendq-total} budget's look within a
    turn.

    A connection hands each read to L{read}: lines added while it is
    handled make no timer, since its end either writes them or makes the
    turn's timer.  A lobby member's own writes call L{before_write} first.
    """

    __slots__ = ("_backlog", "_beside", "_busy", "_call", "_check", "_clock", "_first", "_gone",
                 "_handed", "_late", "_members", "_on_batch", "_pending", "_reading", "_shares",
                 "_shut", "_timer", "_turns", "_window", "_write_all")

    def __init__(
        self,
        clock: IReactorTime,
        members: Callable[[], Collection[Member]],
        window: float,
        backlog: Backlog | None = None,
        on_batch: BatchObserver | None = None,
        timer: Callable[[], float] = time.perf_counter,
        write_all: WriteAll | None = None,
        beside: LobbyFanout | None = None,
        output_budget: OutputLook | None = None,
    ) -> None:
        self._clock = clock
        # The budget's tally, compared where asked, and its look (no budget:
        # no tally, None, and no look, never asked then).
        self._handed: Handed | None = None
        if output_budget is not None:
            self._handed = output_budget.handed
            self._check: Callable[[], None] = output_budget.check
        self._beside = beside
        self._members = members
        self._window = window
        self._backlog = backlog if window else None
        self._on_batch = on_batch
        self._timer = timer
        self._write_all = write_all
        self._pending: list[bytes] = []
        # Members who joined while lines were gathered: the index in
        # _pending from which the lines are theirs (the rest is history).
        self._late: dict[Member, int] = {}
        # Members who were given their lines at their going (leaving): how
        # many of _pending they had, so that a second call sends no line twice.
        self._gone: dict[Member, int] = {}
        # Lines and bytes given to leavers (leaving) since the last flush:
        # counted in that flush's one report, not as batches of their own.
        self._shares = (0, 0)
        self._call: IDelayedCall | None = None
        self._first = 0.0  # when the first pending line came
        self._turns = 0
        # The probe said "busy" at a read's end this turn (or there is no
        # probe), and the turn's timer is made: the next reads do not ask
        # again (the turn's end does), so a busy turn costs at most two
        # probes, not one a read.
        self._busy = False
        # A connection's read is being handled (read): its end follows.
        self._reading = False
        # After shutdown (BYE shutdown was the last line): nothing more.
        self._shut = False

    def read(self, handle: Callable[[bytes], object], data: bytes) -> None:
        """
        A connection's read: C{handle(data)}, and then, whatever happens,
        its end.  If lines wait and the reactor has nothing else waiting,
        they go now: the rest of the turn would bring no line to join them,
        and the lines of this read never needed a timer (docs/fanout.md,
        "Pacing by backlog").  Otherwise they wait for the end of the turn,
        on its timer, made here if this read brought the first of them; once
        the reactor was found busy, the turn's end asks again, not each read.
        (The end is written out here, not called: this runs on every read.
        Only a read that does not flush at once calls L{_ask_budget}; a
        flush asks the budget itself, before its delivery.)
        The batch beside this one ends with the read too (L{_read_over}).
        """
        self._reading = True
        try:
            handle(data)
        finally:
            self._reading = False
            if self._pending and not self._busy:
                backlog = self._backlog
                if backlog is not None and not backlog():
                    self.flush()
                else:
                    # Busy, or no probe (--fanout-delay 0): the turn's end decides.
                    self._busy = True
                    if self._call is None:
                        self._call = self._clock.callLater(0.0, self._turn_over)
                    self._ask_budget()
            else:
                self._ask_budget()
            # After the lobby's own end: lines waiting beside always have a
            # timer (made when they came), the lobby's of this read may not.
            beside = self._beside
            if beside is not None and beside._pending and not beside._busy:
                beside._read_over()

    def _ask_budget(self) -> None:
        """A read's end that flushed nothing (a flush asks itself): its own
        replies may have taken the output held past the budget."""
        handed = self._handed
        if handed is not None and handed.count > handed.room:
            self._check()

    def _read_over(self) -> None:
        """The end of a read of the batch this one is beside (L{read}), for
        lines waiting here: as that read's end does with its own, they go
        now if the reactor has nothing else waiting, else at the end of the
        turn.  They made the turn's timer when they came (this batch's
        L{add} knows of no read): a read that brings them, a C{JOINED} or
        C{LEFT} while pairs are open, is rare."""
        backlog = self._backlog
        if backlog is not None and not backlog():
            self.flush()
        else:
            self._busy = True

    def before_write(self, member: Member) -> None:
        """The order rule (docs/fanout.md, "Order"): C{member}, one of this
        fan-out's, writes something of its own, and the lines waiting for
        the batch go first, so its write never overtakes one it was sent
        before it.  Lines before its cut (L{add_joined}, L{returning}) or
        given already (L{leaving}) are not waiting for it: with none
        after, nothing is flushed."""
        pending = self._pending
        if pending and max(self._late.get(member, 0),
                           self._gone.get(member, 0)) < len(pending):
            self.flush()

    def add(self, data: bytes) -> None:
        """C{data} goes to everyone in the lobby: at the end of this turn,
        or of this read (L{read})."""
        if self._shut:
            return
        pending = self._pending
        if not pending:
            # The first line of a gathering (a timer is made only with one).
            self._first = self._clock.seconds()
            self._turns = 0
            self._busy = False
            if not self._reading:
                self._call = self._clock.callLater(0.0, self._turn_over)
        pending.append(data)

    def add_joined(self, data: bytes, newcomer: Member) -> None:
        """C{data} (its JOINED) goes to the lobby; of the lines gathered so
        far, C{newcomer} gets only those added from now on."""
        self.add(data)
        self._late[newcomer] = len(self._pending)

    def returning(self, member: Member) -> None:
        """C{member} comes back to the lobby from a pair: of the lines
        gathered so far it gets none (it had each JOINED and LEFT in the
        paired users' batch, its share given at its return, and its replay
        holds the lobby's messages), so the others keep their batch.  A
        flush to everyone here made n departures of paired users n writes
        to each member (docs/fanout.md, "Order")."""
        if self._pending:
            self._late[member] = len(self._pending)

    def leaving(self, member: Member) -> None:
        """C{member} is about to leave the lobby (offline): it gets now what
        was gathered for it (its share, if it joined while the lines were
        gathered); the others get it with the rest of the batch, its LEFT
        after it (docs/fanout.md, "Order").  Called again (a peer's FIN,
        then the hub's departure), it sends only lines added since.  Its
        share is counted in the batch's one report (L{flush})."""
        pending = self._pending
        start = max(self._late.pop(member, 0), self._gone.get(member, 0))
        if start < len(pending):
            data = b"".join(pending[start:])
            member.deliver(data)
            lines, sent = self._shares
            self._shares = (lines + len(pending) - start, sent + len(data))
        if pending:  # (0 is the default: nothing to keep the member for)
            self._gone[member] = len(pending)

    def due(self) -> bool:
        """Whether lines wait that the pacing would send now, not hold a
        turn more (past their window; with C{--fanout-delay 0} any), here
        or in the batch beside this one: work handed on piece by piece
        within a turn (a cluster node's events, as its Redis connection
        reads them, L{redisconn._WholeReads}) lets the turn end before the
        next piece, so they go (docs/fanout.md)."""
        beside = self._beside
        return (bool(self._pending) and not keep_gathering(
            self._first, self._clock.seconds(), 0, self._window, True)) or (
                beside is not None and beside.due())

    def _turn_over(self) -> None:
        self._call = None
        backlog = self._backlog
        if backlog is not None and keep_gathering(
            self._first, self._clock.seconds(), self._turns, self._window, bool(backlog())
        ):
            self._turns += 1
            self._busy = False
            self._call = self._clock.callLater(0.0, self._turn_over)
        else:
            self.flush()

    def flush(self) -> None:
        """Write the gathered lines to every member now, but those whose
        connection is closing: their lines would be joined, counted as sent
        and thrown away (a cut connection, or a cluster node's leaver,
        stays a member until the hub hears it left)."""
        call = self._call
        if call is not None:
            self._call = None
            if call.active():
                call.cancel()
        pending = self._pending
        if not pending:
            return
        # _ask_budget written out: a call here is one more per lobby line.
        handed = self._handed
        if handed is not None and handed.count > handed.room:
            self._check()  # (its cuts leave members closing: they are left out)
        self._pending = []
        observe = self._on_batch
        began = self._timer() if observe is not None else 0.0
        lines = len(pending)
        data = pending[0] if lines == 1 else b"".join(pending)
        members = self._members()
        late = self._late
        if not late:
            count = len(members)
            write_all = self._write_all
            # Those the batch writer left (none in a steady lobby of plain
            # TCP connections): a closing one among them is left out.
            for member in members if write_all is None else write_all(members, data):
                if member.closing:
                    count -= 1
                else:
                    member.deliver(data)
            deliveries, sent = lines * count, len(data) * count
        else:
            self._late = {}
            deliveries, sent = _deliver_late(pending, data, members, late)
        if self._gone:
            # Lines given to leavers (leaving) since the last flush: counted
            # in this batch's report.  (With the batch taken, a leaver now
            # has nothing to be given, so these could go before or after.)
            self._gone = {}
            (shared, shared_bytes), self._shares = self._shares, (0, 0)
            deliveries += shared
            sent += shared_bytes
        if observe is not None:
            observe(lines, deliveries, sent, self._timer() - began)

    def shutdown(self) -> None:
        """Deliver what waits: the server is about to say goodbye; what is
        added after (the departures it makes) goes to nobody."""
        self.flush()
        self._shut = True


def _deliver_late(pending: list[bytes], data: bytes, members: Collection[Member],
                  late: dict[Member, int]) -> tuple[int, int]:
    """L{LobbyFanout.flush}'s rare path: someone joined while the lines
    were gathered (C{late}: where each one's share starts), so what each
    member got is added up as it goes: the lines and bytes, returned."""
    lines = len(pending)
    deliveries = sent = 0
    for member in members:
        if member.closing:
            continue
        start = late.get(member)
        if start is None:
            member.deliver(data)
            deliveries += lines
            sent += len(data)
        elif start < lines:
            part = b"".join(pending[start:])
            member.deliver(part)
            deliveries += lines - start
            sent += len(part)
    return deliveries, sent
