"""
Input a connection holds while a command is decided elsewhere (cluster
mode, the password threads), and its bounds (docs/cluster.md, "How it
works"; docs/fanout.md, "Module layout"): L{HoldsInput}, the part of a
connection that keeps what arrives meanwhile, in order, with when it
arrived, and hands it back once the command is decided; L{HeldInput}, what
all of a server's connections hold together.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet.defer import Deferred

from twisted_chat.server.logs import Throttle, logger
from twisted_chat.server.stalls import TICK, StallWatch

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from twisted_chat.server.context import ConnectionContext
    from twisted_chat.server.session import Connection

# Input held while a command is decided elsewhere (see wait_for) past which
# the connection is not read until it is.
_HELD_INPUT = 65536

#: What all connections together may hold behind commands decided elsewhere
#: (L{HeldInput}): a cluster node's is its --redis-queue.
HELD_INPUT_TOTAL = 4 * 1024 * 1024

#: What holding one WebSocket line (L{HoldsInput._hold_line}) costs over its
#: bytes, counted with them in every bound: its bytes object's header (33),
#: the (line, when) tuple (56), the float (24) and its deque slot (8), 121
#: bytes measured with tracemalloc, rounded up; the line's terminator (1)
#: included.  Counted as its payload plus one, an empty message was 1 byte
#: held for about 100 (rev16-sec #1: 24 connections held 65,000 each
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

# Why a connection's reading is paused (HoldsInput._paused, bits): it holds
# more than _HELD_INPUT itself; the server's connections hold more than
# HeldInput.limit together.
_PAUSED_OWN = 1
_PAUSED_NODE = 2


class _Producer(Protocol):
    """What L{HoldsInput} uses of its connection's transport."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


class Holder(Protocol):
    """A connection as L{HeldInput} sees it."""

    def held_or_waiting(self) -> bool: ...

    def node_pause(self) -> None: ...

    def node_resume(self) -> None: ...


class _Address(Protocol):
    """What L{HoldsInput} uses of its connection's per-address record
    (L{twisted_chat.server.addresses.Address}): what the address's
    connections hold together."""

    held: int


class HoldsInput:
    """
    The part of a connection (L{twisted_chat.server.protocol.ChatProtocol})
    that holds its input while a command is decided elsewhere (L{wait_for}).
    Its state is slots of the connection itself, so that a line handled as
    it comes costs one attribute check (C{_waiting}) and C{held_at} stays a
    plain attribute (docs/fanout.md, "Memory per connection").  What it
    uses of the connection is declared below: the handlers it hands held
    input back to, the transport it pauses, and two slots: the framing
    buffer (C{_buffer}), where a TCP connection's held reads wait, and the
    flood meter's last line (C{_last_line}), set back while held lines are
    handled as of when they arrived (L{_replay}).
    """

    # Its own, and two of the connection's it holds input in (set by the
    # connection): the framing buffer, and the flood meter's last line.
    __slots__ = ("_buffer", "_charged", "_held", "_held_size", "_input_ended", "_last_line",
                 "_paused", "_waiting", "held_at")

    if TYPE_CHECKING:
        _buffer: bytes
        _last_line: float
        ctx: ConnectionContext[Any]
        closing: bool
        user: object | None
        limits: _Address | None

        @property
        def clock(self) -> IReactorTime: ...

        @property
        def _socket(self) -> _Producer: ...

        def close(self, reason: str, text: str = "", farewell: str = "") -> None: ...

        def dataReceived(self, data: bytes) -> None: ...

        def message_received(self, line: bytes) -> None: ...

        def readConnectionLost(self) -> None: ...

    def __init__(self) -> None:
        # A command is being decided elsewhere (wait_for): what arrives
        # meanwhile waits in _buffer, or whole in _held (message_received),
        # with when it arrived (_Held).
        self._waiting = False
        self._paused = 0  # _PAUSED_OWN | _PAUSED_NODE: why reading is paused
        # What of it is counted in the server's HeldInput (_count_held).
        self._charged = 0
        self._input_ended = False  # the peer half-closed (or went) while a command waited
        self._held: _Held | None = None  # made only when needed
        self._held_size = 0
        # While held input is handled: when what is being handled arrived
        # (None for a line handled as it comes: it arrived now).  A plain
        # attribute, read on the lobby line's path (Session.do_MSG).
        self.held_at: float | None = None

    def wait_for(self, outcome: Deferred[Any]) -> None:
        """Handle no more lines until C{outcome} (a command decided
        elsewhere) fires; what arrives meanwhile waits, in order."""
        self._waiting = True
        held = self.ctx.held_input
        if held.over and self._held is not _DISCARDING:
            # What it read now would be held: it is read again once this
            # command is decided, or the server holds less (HeldInput).
            held.pause(self)
        outcome.addBoth(self._decided)

    def discard_input(self) -> None:
        """
        The connection is going (C{BYE} after a delay: a login over a
        failure limit): nothing it sent behind the line being handled, or
        sends until then, is ever handled.  It is read and dropped, not
        held: it never counts in L{HeldInput} (rev15-sec #1: 14 addresses
        parked 70 such connections with 64 KiB each behind them, past the
        server's ceiling, and no connection at all was read for 3 s), nor
        is it paused for it.  Counted as C{input_discarded}
        (chat_discarded_input_bytes_total).
        """
        # Not always set by a wait_for: refused by the cluster's shared
        # failure counts (Login._shared_said), the PASS waits for their
        # answer, and one given at once leaves its Deferred fired, the BYE
        # chained behind it: Session._hold calls no wait_for then.
        self._waiting = True
        self._discard(self._drop_input(_DISCARDING))

    def _drop_input(self, then: _Held | None) -> int:
        """What it holds (its C{_buffer} and held lines) is never handled:
        let it go, C{then} its C{_held} after.  Returns how many bytes went."""
        size = len(self._buffer) + self._held_size
        self._buffer = b""
        self._held, self._held_size = then, 0
        self._count_held()
        return size

    def _discard(self, size: int) -> None:
        self.ctx.stats.count_input_discarded(size)

    def _hold_read(self, data: bytes) -> None:
        """A read while a command waits: held, as of now."""
        if self._held is _DISCARDING:
            self._discard(len(data))
            return
        self._buffer += data
        self._held_read(self.clock.seconds())
        self._count_held()
        self._held_over(len(self._buffer))

    def _hold_rest(self, rest: bytes) -> None:
        """The line just handled waits for a command: the rest of its read
        is held."""
        if self._held is _DISCARDING:
            self._discard(len(rest))
            return
        self._buffer = rest
        if rest:
            # Read with the line just counted (_replay_reads sets this anew
            # for what it hands back).
            self._held_read(self._last_line)
            self._count_held()
            self._held_over(len(rest))

    def _hold_line(self, line: bytes) -> None:
        """A whole line while a command waits (message_received): held in
        order behind the command, as dataReceived holds bytes, and counted
        at what it costs held (L{HELD_LINE_COST} more than its bytes)."""
        held = self._held
        if held is _DISCARDING:
            self._discard(len(line) + 1)
            return
        if held is None:
            held = self._held = _Held()
        held.lines.append((line, self.clock.seconds()))
        self._held_size += len(line) + HELD_LINE_COST
        self._count_held()
        self._held_over(self._held_size)

    def _holds_lines(self) -> bool:
        """
        The connection is lost: whether it holds lines behind a command
        still waiting (and is not closing).  The peer sent lines and closed
        (an RST, a WebSocket close frame) while a command they wait behind
        is decided elsewhere (cluster mode, an account's password check):
        they are handled as one server handles them, in order, with nothing
        written, and the connection ends after them
        (L{twisted_chat.server.closing.GoneTransport}): with its BYE's
        reason and text if they hold one.  What is held is bounded
        (_HELD_INPUT), and nothing more comes.
        """
        held = self._held
        return self._waiting and not self.closing and bool(
            self._buffer or (held is not None and held.lines))

    def _drop_held(self) -> None:
        """The connection is gone: what it held is never handled now."""
        self._drop_input(None)
        self.ctx.held_input.forget(self)

    def _unread_for_node(self) -> bool:
        """Whether it is not read because the server holds too much input
        (L{HeldInput})."""
        return bool(self._paused & _PAUSED_NODE)

    def _held_read(self, when: float) -> None:
        """What C{_buffer} holds now, to its end, was read at C{when}."""
        held = self._held
        if held is None:
            held = self._held = _Held()
        held.reads.append((len(self._buffer), when))

    def arrived(self) -> float:
        """When the line being handled, or the line a command being decided
        came from, arrived (the reactor's time): the line counted last, so
        now for a line handled as it comes; for one held behind a command
        (wait_for), when it was read."""
        at = self.held_at
        return self._last_line if at is None else at

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
        if self.closing:
            return
        held = self.ctx.held_input
        if self.user is None and size > held.before_ready:
            self._discard(self._drop_input(None))
            self.close("flood", TOO_MUCH_BEFORE_READY)
            return
        if self._paused & _PAUSED_OWN:
            return
        limits = self.limits
        if size > _HELD_INPUT or (limits is not None and limits.held > held.share):
            self._pause(_PAUSED_OWN)

    def _pause(self, why: int) -> None:
        """Stop reading for C{why} (a L{_PAUSED_OWN} or L{_PAUSED_NODE})."""
        paused = self._paused
        self._paused = paused | why
        if not paused and not self.closing:
            self._socket.pauseProducing()

    def _resume(self, why: int) -> None:
        """C{why} no longer holds; read again if nothing else pauses it."""
        paused = self._paused
        self._paused = paused & ~why
        if paused and not self._paused and not self.closing:
            self._socket.resumeProducing()

    def node_pause(self) -> None:
        """The server's connections hold too much input (L{HeldInput})."""
        self._pause(_PAUSED_NODE)

    def node_resume(self) -> None:
        self._resume(_PAUSED_NODE)

    def held_or_waiting(self) -> bool:
        """Whether what it read now would be held (L{HeldInput})."""
        return self._waiting

    def _count_held(self) -> None:
        """Bring what the server's L{HeldInput} counts for it up to date:
        the input it holds while a command is decided elsewhere."""
        size = len(self._buffer) + self._held_size if self._waiting else 0
        delta = size - self._charged
        if delta:
            self._charged = size
            limits = self.limits
            if limits is not None:
                limits.held += delta  # the address's share (_held_over)
            self.ctx.held_input.change(self, delta)

    def _decided(self, result: object) -> None:
        self._waiting = False
        self.ctx.session.decided(cast("Connection", self))  # (a ChatProtocol)
        if self._paused & _PAUSED_OWN:
            self._resume(_PAUSED_OWN)
        if self._buffer and not self.closing:
            self._replay_reads()
        held = self._held
        if held is not None:
            lines = held.lines
            if lines and not self._waiting and not self.closing:
                self._replay(self._popped(lines), self.message_received)
            if not lines and not held.reads:
                self._held = None
        self._count_held()
        if self._paused & _PAUSED_NODE and not self._waiting:
            # It holds nothing and waits for nothing: its next read is
            # handled as it comes, as any connection's.
            self.ctx.held_input.release(self)
        if self._input_ended and not self._waiting:
            self.readConnectionLost()

    def _replay_reads(self) -> None:
        """
        Handle the bytes held while a command was decided elsewhere, read by
        read, each as of when it was read (L{_replay}).  What a line that
        waits again leaves is held again, with when it was read.
        """
        held = self._held
        reads = held.reads if held is not None else None
        if held is None or not reads:
            self.dataReceived(b"")  # only a partial line: nothing to count
            return
        data, self._buffer, held.reads = self._buffer, b"", []
        ends = [0] + [end for end, _ in reads]
        done, at = self._replay(
            ((data[ends[i]:end], when) for i, (end, when) in enumerate(reads)),
            self.dataReceived)
        if self._waiting and not self.closing:
            end = ends[done]
            left = self._buffer
            self._buffer = left + data[end:]
            held.reads = [(len(left), at)] if left else []
            held.reads += [(stop - end + len(left), when) for stop, when in reads[done:]]

    def _popped(self, lines: deque[tuple[bytes, float]]) -> Iterator[tuple[bytes, float]]:
        """The held WebSocket lines, each taken off as it is handled."""
        while lines:
            line, at = lines.popleft()
            self._held_size -= len(line) + HELD_LINE_COST
            yield line, at

    def _replay(self, held: Iterator[tuple[bytes, float]],
                handle: Callable[[bytes], object]) -> tuple[int, float]:
        """
        C{handle} what was held while a command was decided elsewhere (held
        reads or WebSocket lines, each with when it arrived), in order, until
        a line waits again or the connection closes, each as of when it
        arrived: flood control counts a held line when it arrived, not when
        its turn came (rev11-clu2 #1: lines typed through a Redis outage were
        all counted at once when it ended), and a command's wait is bounded
        from then (L{arrived}).  No hot-path work for it: C{_last_line} is
        set back so that the flood meter refills for the time between the
        held line and the line counted before it, as it would have then
        (L{_count_line} is as for any line), and is put back after.
        Returns how many were handled and when the last of them arrived.
        """
        last = at = self._last_line
        done = 0
        for data, came in held:
            at = came if came > last else last  # a WebSocket ping counted as it came, after it
            self.held_at = at
            preset = self._last_line = self.clock.seconds() - (at - last)
            handle(data)
            done += 1
            if self._last_line != preset:
                last = at  # a line was counted as of when it arrived
            if self._waiting or self.closing:
                break
        self.held_at = None
        self._last_line = last
        return done, at


class _Held:
    """What a connection holds while a command is decided elsewhere
    (L{HoldsInput.wait_for}), with when it arrived (L{HoldsInput.arrived})."""

    __slots__ = ("lines", "reads")

    def __init__(self) -> None:
        # TCP: where each read held ends in the connection's _buffer, and
        # when it was read.
        self.reads: list[tuple[int, float]] = []
        # A WebSocket's whole lines (message_received), and when each came.
        self.lines: deque[tuple[bytes, float]] = deque()


# A connection's _held while it discards its input (HoldsInput.discard_input):
# never added to.
_DISCARDING = _Held()


class HeldInput:
    """
    The input all of a server's connections hold behind commands decided
    elsewhere (L{HoldsInput.wait_for}: in cluster mode nearly every
    command waits for Redis), and its bound, C{limit} bytes (a cluster
    node's C{--redis-queue}, counted apart from the commands).  Each
    connection holds at most L{_HELD_INPUT} plus one read on its own, one
    not yet READY at most C{before_ready} (more closes it), and one
    address's connections together at most L{share} before those of them
    waiting are paused (L{HoldsInput._held_over}; docs/security.md, "Held
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
    read for this bound is not taken for idle (C{ChatProtocol._check_idle}).
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
        # What a connection may hold before READY (HoldsInput._held_over).
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
        with a command waiting are paused (L{HoldsInput._held_over})."""
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
        behind a command: L{HoldsInput.arrived}) is over its flood rate
        (C{rate} lines a second): whether it is let through as one the
        server kept waiting.
        A connection the server did not read for C{t} seconds (its pause
        for this bound) is read again with what it sent meanwhile all at
        once: its bucket, which holds at most a burst, would count them as
        a flood (rev15-sec #1: a user sending 6.7 lines a second under a
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
