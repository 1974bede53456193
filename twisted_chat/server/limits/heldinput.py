"""
Input a connection holds while a command is decided elsewhere (cluster
mode, the password threads), and its bounds (docs/cluster.md, "How it
works"; docs/fanout.md, "Module layout"): L{InputHold}, one connection's,
which keeps what arrives meanwhile, in order, with when it arrived, and
hands it back once the command is decided; L{HeldInput}, what all of a
server's connections hold together.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred

from twisted_chat.server.limits.stalls import TICK, StallWatch
from twisted_chat.server.logs import Throttle, logger

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

# Input held while a command is decided elsewhere (see wait_for) past which
# the connection is not read until it is.
_HELD_INPUT = 65536

#: What holding one WebSocket line (L{InputHold.take_line}) costs over its
#: bytes, counted with them in every bound: its bytes object's header (33),
#: the (line, when) tuple (56), the float (24) and its deque slot (8), 121
#: bytes measured with tracemalloc, rounded up; the line's terminator (1)
#: included.  Counted as its payload plus one, an empty message was 1 byte
#: held for about 100 (24 connections held 65,000 each
#: behind a REGISTER before one was paused, 101 MB).
HELD_LINE_COST = 128

#: Before READY a connection holds at most this many lines of --max-line,
#: each with a held WebSocket line's L{HELD_LINE_COST} (a TCP line's CRLF
#: within it), behind a command decided elsewhere (its NICK or PASS);
#: past it the connection is closed (BYE flood): a client logging in sends
#: a line or two before its answer, and what it held would be handled
#: only after READY anyway.
HELD_BEFORE_READY_LINES = 4

#: The share of L{HeldInput.limit} one address's connections (its bucket:
#: an IPv4 address, an IPv6 prefix) may hold together: past it, those of
#: them with a command waiting are not read until it is decided.
ADDRESS_SHARE = 16

# How long after the server reads a connection again (or after a stall of
# the whole process: StallWatch) its lines are excused for the time it was
# not read (HeldInput.excused): what waited in the kernel meanwhile comes
# in the first reads.
_EXCUSED_FOR = 1.0

#: The operator is told when no connection is read (the ceiling), at most
#: once in this many seconds; the times left out are counted in the next.
CEILING_TELL_EVERY = 60.0

_log = logger()

#: BYE flood's text for a connection over HELD_BEFORE_READY_LINES.
TOO_MUCH_BEFORE_READY = "too much sent before the login was decided; wait for READY"

# Why a connection's reading is paused (InputHold.paused, bits): it holds
# more than _HELD_INPUT itself; the server's connections hold more than
# HeldInput.limit together.
_PAUSED_OWN = 1
_PAUSED_NODE = 2


class Holder(Protocol):
    """A connection as L{HeldInput} sees it."""

    def held_or_waiting(self) -> bool: ...

    def node_pause(self) -> None: ...

    def node_resume(self) -> None: ...


class _Address(Protocol):
    """What L{InputHold} uses of its connection's per-address record
    (L{twisted_chat.server.limits.addresses.Address}): what the address's
    connections hold together."""

    held: int


class _InputCounter(Protocol):
    """Where L{InputHold} counts what it never handles
    (L{twisted_chat.server.metrics.counters.Stats})."""

    def count_input_discarded(self, size: int) -> None: ...


class _Shared(Protocol):
    """What L{InputHold} uses of its connection's server
    (L{twisted_chat.server.context.ConnectionContext})."""

    @property
    def held_input(self) -> HeldInput: ...

    @property
    def clock(self) -> IReactorTime: ...

    @property
    def stats(self) -> _InputCounter: ...


class Holding(Holder, Protocol):
    """The connection an L{InputHold} holds input for
    (L{twisted_chat.server.protocol.ChatProtocol}): who it is, its
    server, when its last line arrived, and what the hold asks of it."""

    @property
    def ctx(self) -> _Shared: ...

    @property
    def closing(self) -> bool: ...

    @property
    def user(self) -> object | None: ...

    @property
    def limits(self) -> _Address | None: ...

    def arrived(self) -> float: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def held_read(self, data: bytes) -> None:
        """Handle held bytes (a read, or what followed a line in it) as a
        read, a TLS record's token spent when it was read; none: a record
        refused then (L{InputHold.drop_line})."""

    def message_received(self, line: bytes) -> None:
        """Handle a held whole line (a WebSocket message)."""

    def close(self, reason: str, text: str = "", farewell: str = "") -> None: ...

    def readConnectionLost(self) -> None: ...

    def settled(self, hold: InputHold) -> None:
        """The hold may be let go now if it is L{InputHold.idle}."""


class InputHold:
    """
    What one connection holds while a command is decided elsewhere
    (L{wait_for}), and why its reading is paused.  A connection has one
    (C{ChatProtocol.hold}, None otherwise) only while a command waits, its
    reading is paused for held input, or it drops what it sends before its
    C{BYE} (L{discard}: a login over a failure limit), so a line handled
    as it comes costs one attribute check (docs/fanout.md, "Memory per
    connection").
    A TCP connection's held reads wait in L{buffer} with when each was
    read (L{reads}); a WebSocket's whole lines in L{lines}.  The
    connection's own framing buffer is its own: what follows a line that
    waits is handed over (L{take_rest}).
    """

    __slots__ = ("buffer", "charged", "conn", "discarding", "held_at", "input_ended", "lines",
                 "paused", "reads", "size", "waiting")

    def __init__(self, conn: Holding) -> None:
        self.conn = conn
        # A command is being decided elsewhere: what arrives meanwhile is held.
        self.waiting = False
        self.paused = 0  # _PAUSED_OWN | _PAUSED_NODE: why reading is paused
        # What of it is counted in the server's HeldInput (_count).
        self.charged = 0
        self.input_ended = False  # the peer half-closed (or went) while a command waited
        # Nothing is held, what arrives is read and dropped (discard).
        self.discarding = False
        # TCP: the held bytes, and where each read held ends in them and
        # when it was read.
        self.buffer = b""
        self.reads: list[tuple[int, float]] = []
        # A WebSocket's whole lines (take_line), and when each came: made
        # only when needed; their bytes as counted (HELD_LINE_COST each more).
        self.lines: deque[tuple[bytes, float]] | None = None
        self.size = 0
        # While held input is handled: when what is being handled arrived
        # (None otherwise: a line handled as it comes arrived now).
        self.held_at: float | None = None

    def idle(self) -> bool:
        """Whether it waits for nothing, holds nothing and pauses nothing."""
        # Not redundant: while _decided hands back held reads, waiting and
        # the buffer are cleared but HeldInput still counts them (charged)
        # until its _count; a node_resume meanwhile must not let it go.
        return not (self.waiting or self.paused or self.buffer or self.lines or self.charged)

    def wait_for(self, outcome: Deferred[Any]) -> None:
        """Handle no more lines until C{outcome} (a command decided
        elsewhere) fires; what arrives meanwhile waits, in order, and is
        handled after what C{outcome} already leads to (its answer, the
        session's own step: C{Session._hold})."""
        self.waiting = True
        conn = self.conn
        held = conn.ctx.held_input
        if held.over and not self.discarding:
            # What it read now would be held: it is read again once this
            # command is decided, or the server holds less (HeldInput).
            held.pause(conn)
        outcome.addBoth(self._decided)

    def discard(self, buffered: int) -> None:
        """
        The connection is going (C{BYE} after a delay: a login over a
        failure limit): nothing it sent behind the line being handled, or
        sends until then, is ever handled.  It is read and dropped, not
        held: it never counts in L{HeldInput} (14 addresses
        parked 70 such connections with 64 KiB each behind them, past the
        server's ceiling, and no connection at all was read for 3 s), nor
        is it paused for it.  Counted as C{input_discarded}
        (chat_discarded_input_bytes_total), with C{buffered}, the bytes the
        connection's framing buffer dropped.
        """
        # Not always set by a wait_for: refused by the cluster's shared
        # failure counts (Login._shared_said), the PASS waits for their
        # answer, and one given at once leaves its Deferred fired, the BYE
        # chained behind it: Session._hold calls no wait_for then.
        self.waiting = True
        self._discard(self._drop_input(discarding=True) + buffered)

    def drop(self) -> None:
        """The connection is gone: what it holds is never handled now."""
        self._drop_input(discarding=False)

    def _drop_input(self, discarding: bool) -> int:
        """What it holds is never handled: let it go, and discard what
        arrives from now on if C{discarding}.  Returns how many bytes went."""
        size = len(self.buffer) + self.size
        self.buffer = b""
        self.reads = []
        self.lines = None
        self.size = 0
        self.discarding = discarding
        self._count()
        return size

    def _discard(self, size: int) -> None:
        self.conn.ctx.stats.count_input_discarded(size)

    def take(self, data: bytes) -> None:
        """A read while a command waits: held, as of now."""
        if self.discarding:
            self._discard(len(data))
            return
        if not data:
            return  # (a read of nothing held is drop_line's mark)
        buffer = self.buffer = self.buffer + data
        self.reads.append((len(buffer), self.conn.ctx.clock.seconds()))
        self._count()
        self._held_over(len(buffer))

    def drop_line(self) -> None:
        """A TLS record found no flood token while a command waits (it was
        charged, and refused, as it was read): the line it is part of is
        dropped in its turn, from what is held before it to the next
        newline.  Held as a read of nothing, which marks it (once for
        records refused in a row)."""
        if self.discarding:
            return
        reads = self.reads
        before = reads[-2][0] if len(reads) > 1 else 0
        if reads and reads[-1][0] == before:
            return  # the last read held is such a mark already
        reads.append((len(self.buffer), self.conn.ctx.clock.seconds()))

    def take_rest(self, rest: bytes) -> None:
        """The line just handled waits for a command: the rest of its read
        is held, read when that line arrived."""
        if self.discarding:
            self._discard(len(rest))
            return
        self.buffer = rest
        if rest:
            # (_replay_reads sets this anew for what it hands back.)
            self.reads.append((len(rest), self.conn.arrived()))
            self._count()
            self._held_over(len(rest))

    def take_line(self, line: bytes) -> None:
        """A whole line while a command waits (a WebSocket message): held
        in order behind the command, as reads are, and counted at what it
        costs held (L{HELD_LINE_COST} more than its bytes)."""
        if self.discarding:
            self._discard(len(line) + 1)
            return
        lines = self.lines
        if lines is None:
            lines = self.lines = deque()
        lines.append((line, self.conn.ctx.clock.seconds()))
        self.size += len(line) + HELD_LINE_COST
        self._count()
        self._held_over(self.size)

    def holds_lines(self) -> bool:
        """
        The connection is lost: whether it holds lines behind a command
        still waiting (and is not closing).  The peer sent lines and closed
        (an RST, a WebSocket close frame) while a command they wait behind
        is decided elsewhere (cluster mode, an account's password check):
        they are handled as one server handles them, in order, with nothing
        written, and the connection ends after them
        (L{twisted_chat.server.limits.closing.GoneTransport}): with its BYE's
        reason and text if they hold one.  What is held is bounded
        (_HELD_INPUT), and nothing more comes.
        """
        return self.waiting and not self.conn.closing and bool(self.buffer or self.lines)

    def unread_for_node(self) -> bool:
        """Whether it is not read because the server holds too much input
        (L{HeldInput})."""
        return bool(self.paused & _PAUSED_NODE)

    def _held_over(self, size: int) -> None:
        """
        It holds C{size} bytes behind a waiting command (counted: its
        address's share and L{HeldInput} are up to date).  Before READY,
        past L{HeldInput.before_ready}, the connection is closed with
        C{BYE flood} and what it held dropped.  Otherwise, past
        L{_HELD_INPUT} of its own, or with its address's connections
        holding more than L{HeldInput.share} together, it is not read until
        the command is decided (what it sends waits in the kernel).
        """
        conn = self.conn
        if conn.closing:
            return
        held = conn.ctx.held_input
        if conn.user is None and size > held.before_ready:
            self._discard(self._drop_input(discarding=False))
            conn.close("flood", TOO_MUCH_BEFORE_READY)
            return
        if self.paused & _PAUSED_OWN:
            return
        limits = conn.limits
        if size > _HELD_INPUT or (limits is not None and limits.held > held.share):
            self.pause(_PAUSED_OWN)

    def pause(self, why: int = _PAUSED_NODE) -> None:
        """Stop reading for C{why} (L{_PAUSED_NODE}, the server holds too
        much input, or L{_PAUSED_OWN})."""
        paused = self.paused
        self.paused = paused | why
        if not paused and not self.conn.closing:
            self.conn.pause_reading()

    def resume(self, why: int = _PAUSED_NODE) -> None:
        """C{why} no longer holds; read again if nothing else pauses it."""
        paused = self.paused
        self.paused = paused & ~why
        if paused and not self.paused and not self.conn.closing:
            self.conn.resume_reading()

    def _count(self) -> None:
        """Bring what the server's L{HeldInput} counts for it up to date:
        the input it holds while a command is decided elsewhere."""
        size = len(self.buffer) + self.size if self.waiting else 0
        delta = size - self.charged
        if delta:
            self.charged = size
            conn = self.conn
            limits = conn.limits
            if limits is not None:
                limits.held += delta  # the address's share (_held_over)
            conn.ctx.held_input.change(conn, delta)

    def _decided(self, result: object) -> None:
        conn = self.conn
        self.waiting = False
        if self.paused & _PAUSED_OWN:
            self.resume(_PAUSED_OWN)
        if self.reads and not conn.closing:  # (a drop_line mark holds no bytes)
            self._replay_reads()
        lines = self.lines
        if lines and not self.waiting and not conn.closing:
            self._replay(self._popped(lines), conn.message_received)
        if not lines and not self.reads:
            self.lines = None
            self.discarding = False
        self._count()
        if self.paused & _PAUSED_NODE and not self.waiting:
            # It holds nothing and waits for nothing: its next read is
            # handled as it comes, as any connection's.
            conn.ctx.held_input.release(conn)
        ended = self.input_ended and not self.waiting
        conn.settled(self)
        if ended:
            conn.readConnectionLost()

    def _replay_reads(self) -> None:
        """
        Handle the bytes held while a command was decided elsewhere, read by
        read, each as of when it was read (L{_replay}), a mark of
        L{drop_line} in its place.  What a line that waits again leaves is
        held again, with when it was read.
        """
        data, reads = self.buffer, self.reads
        self.buffer, self.reads = b"", []
        ends = [0] + [end for end, _ in reads]
        done, at = self._replay(
            ((data[ends[i]:end], when) for i, (end, when) in enumerate(reads)),
            self.conn.held_read)
        if self.waiting and not self.conn.closing:
            end = ends[done]
            left = self.buffer
            self.buffer = left + data[end:]
            self.reads = [(len(left), at)] if left else []
            self.reads += [(stop - end + len(left), when) for stop, when in reads[done:]]

    def _popped(self, lines: deque[tuple[bytes, float]]) -> Iterator[tuple[bytes, float]]:
        """The held WebSocket lines, each taken off as it is handled."""
        while lines:
            line, at = lines.popleft()
            self.size -= len(line) + HELD_LINE_COST
            yield line, at

    def _replay(self, held: Iterator[tuple[bytes, float]],
                handle: Callable[[bytes], object]) -> tuple[int, float]:
        """
        C{handle} what was held while a command was decided elsewhere (held
        reads or WebSocket lines, each with when it arrived), in order, until
        a line waits again or the connection closes, each as of when it
        arrived (L{held_at}, which the connection counts a line at): flood
        control counts a held line when it arrived, not when its turn came
        (lines typed through a Redis outage were all counted
        at once when it ended), and a command's wait is bounded from then
        (C{arrived}).  A held line is never counted as of before the line
        counted last (C{arrived}); a ping or a TLS record counted as it came
        is no line, and moves only flood control's own time (its C{_count}).
        Returns how many were handled and when the last of them arrived.
        """
        conn = self.conn
        at = conn.arrived()
        done = 0
        for data, came in held:
            last = conn.arrived()
            at = came if came > last else last
            self.held_at = at
            handle(data)
            done += 1
            if self.waiting or conn.closing:
                break
        self.held_at = None
        return done, at


class HeldInput:
    """
    The input all of a server's connections hold behind commands decided
    elsewhere (L{InputHold.wait_for}: in cluster mode nearly every
    command waits for Redis), and its bound, C{limit} bytes (a cluster
    node's C{--redis-queue}, counted apart from the commands).  Each
    connection holds at most L{_HELD_INPUT} plus one read on its own, one
    not yet READY at most C{before_ready} (more closes it), and one
    address's connections together at most L{share} before those of them
    waiting are paused (L{InputHold._held_over}; docs/security.md, "Held
    input"): the bound below is reached only by many addresses at once.

    Past C{limit} for all of them, no connection with a command waiting is
    read (TCP's backpressure: what it sends waits in the kernel, nothing is
    dropped) until it holds nothing and waits for nothing again, or until
    the total is back to half of C{limit}.  A connection with no command
    waiting is still read (C{PING} is answered), and its next command that
    waits pauses it; what its read brought behind that command is kept:
    up to one read (64 KiB) per connection, bounded only by
    C{--max-clients} (640 MB at 10,000).  So past L{ceiling} (C{limit} and
    a quarter) no connection at all is read, new ones included, and none
    is read again until the total is back to half of C{limit}.  What a read
    already returned is kept, so the total reaches at most the ceiling,
    plus the read that crossed it, plus one read for each other connection
    the reactor had already found readable in that same turn (epoll hands
    over a batch of ready sockets: one paused within the batch is still
    read once if it has output waiting to be written).  A connection not
    read for this bound is not taken for idle (C{IdleDeadline._check_idle}).
    Nothing is done per line unless a connection holds input.
    """

    __slots__ = ("_clock", "_connections", "_full_since", "_tell", "_told", "before_ready",
                 "full", "limit", "over", "owed", "paused", "stalls", "total")

    def __init__(self, limit: int, connections: Callable[[], Iterable[Holder]],
                 clock: IReactorTime, before_ready: int = _HELD_INPUT,
                 watch_stalls: bool = False,
                 steady: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._connections = connections
        self._clock = clock
        # What a connection may hold before READY (InputHold._held_over).
        self.before_ready = before_ready
        self.total = 0
        self.over = False  # past the limit, and not yet back to half of it
        self.full = False  # past the ceiling, and not yet back to half the limit
        # The connections it paused, in the order it paused them, with when.
        self.paused: dict[Holder, float] = {}
        # Connections read again after it paused them: for how long they
        # were not read, and until when that excuses their lines (excused).
        self.owed: dict[Holder, tuple[float, float]] = {}
        # The process's own stalls, which left every connection unread
        # (started with the first connection: started); watched only with
        # flood control on (C{watch_stalls}).
        # (C{steady}: a clock the system clock's steps do not move.)
        self.stalls = StallWatch(clock, _EXCUSED_FOR, TICK if watch_stalls else 0.0, steady)
        # The log's account of the ceiling (_tell_full): when it was passed,
        # whether that was told, and how often it may be.
        self._full_since = 0.0
        self._told = False
        self._tell = Throttle(CEILING_TELL_EVERY)

    @property
    def ceiling(self) -> int:
        """Past it, no connection is read (see the class)."""
        return self.limit + self.limit // 4

    @property
    def share(self) -> int:
        """What one address's connections may hold together before those
        with a command waiting are paused (L{InputHold._held_over})."""
        return self.limit // ADDRESS_SHARE

    def _resume(self, conn: Holder, since: float, now: float) -> None:
        """C{conn}, paused at C{since}, is read again at C{now}: what it
        sent meanwhile comes at once (L{excused})."""
        if now > since:
            self.owed[conn] = (now - since, now + _EXCUSED_FOR)
        conn.node_resume()

    def excused(self, conn: Holder, now: float, rate: float) -> bool:
        """
        A line of C{conn}'s that arrived at C{now} (read then, or held then
        behind a command: C{InputHolding.arrived}) is over its flood rate
        (C{rate} lines a second): whether it is let through as one the
        server kept waiting.
        A connection the server did not read for C{t} seconds (its pause
        for this bound) is read again with what it sent meanwhile all at
        once: its bucket, which holds at most a burst, would count them as
        a flood (a user sending 6.7 lines a second under a
        limit of 10 got C{ERROR flood ... lines are being dropped}).  So
        for L{_EXCUSED_FOR} seconds after it is read again, up to C{rate}
        x C{t} lines over its bucket pass: what it may send in C{t}
        seconds, no more.  A stall of the whole process (L{StallWatch})
        left every connection unread: each may draw it once, as if the
        server had paused it for that long (the longer of the two counts).
        """
        owed = self.owed.get(conn)
        stalled = self.stalls.draw(conn, now)
        if stalled is not None and (owed is None or stalled[0] > owed[0]):
            owed = self.owed[conn] = stalled
        if owed is None:
            return False
        seconds, until = owed
        if now > until or seconds * rate < 1.0:
            del self.owed[conn]
            return False
        self.owed[conn] = (seconds - 1.0 / rate, until)
        return True

    def change(self, conn: Holder, delta: int) -> None:
        """C{conn} holds C{delta} bytes more (or fewer)."""
        total = self.total = self.total + delta
        if total > self.limit:
            if not self.over:
                self.over = True
                # Every connection waiting for a command would hold what it
                # reads next: none is read.
                for other in list(self._connections()):
                    if other.held_or_waiting():
                        self.pause(other)
            if delta > 0:
                self.pause(conn)
                if total > self.ceiling and not self.full:
                    # Connections between commands held a read each: none
                    # is read now.
                    self.full = True
                    self._tell_full()
                    for other in list(self._connections()):
                        self.pause(other)
        elif self.over and total <= self.limit // 2:
            now = self._clock.seconds()
            if self.full and self._told:
                _log.info("Held input is back to {total} bytes: every connection is read"
                          " again, after {seconds:.1f} s.", total=total,
                          seconds=now - self._full_since)
            self.over = self.full = False
            paused, self.paused = self.paused, {}
            for other, since in paused.items():
                self._resume(other, since, now)

    def _tell_full(self) -> None:
        """Say that no connection is read now (the ceiling): at most once in
        L{CEILING_TELL_EVERY} seconds, with how many times it was passed
        meanwhile, so that a peer that crosses it over and over does not
        fill the log."""
        self._full_since = self._clock.seconds()
        untold = self._tell.allow(self._full_since)
        self._told = untold is not None
        if untold is None:
            return
        _log.warn(
            "Held input passed its ceiling ({ceiling} bytes held behind commands decided"
            " elsewhere): no connection is read until it is back to {half} bytes"
            " (docs/security.md, \"Held input\"){since}.",
            ceiling=self.ceiling, half=self.limit // 2,
            since=f"; passed {untold} more time(s) since the last such line" if untold else "")

    def started(self, conn: Holder) -> None:
        """C{conn} is new: past the ceiling it is not read either.  The
        stall watch runs while there are connections."""
        self.stalls.start(conn)
        if self.full:
            self.pause(conn)

    def pause(self, conn: Holder) -> None:
        if conn not in self.paused:
            self.paused[conn] = self._clock.seconds()
            conn.node_pause()

    def release(self, conn: Holder) -> None:
        """C{conn} holds nothing and waits for nothing: it may be read, unless
        the total is past the ceiling."""
        if conn in self.paused and not self.full:
            self._resume(conn, self.paused.pop(conn), self._clock.seconds())

    def forget(self, conn: Holder) -> None:
        """C{conn} is gone."""
        self.paused.pop(conn, None)
        self.owed.pop(conn, None)
        self.stalls.forget(conn)
