"""
How the server ends a connection: the close, once the peer has taken what
was written, and an abort if it has not completed the close within the grace
(L{ServerConfig.close_grace}, 3 s).  A peer that stopped reading, or a TLS
peer that never finishes the handshake or never answers the close
(close_notify), would otherwise hold the socket for good, outside every
limit.  The chat connection, a refused one, the web port's and the metrics
port's HTTP connections, and a WebSocket close all close this way
(L{close_within}).  L{drop_unread} clears what a peer sent that the
server did not read, before a close that should not be a reset.
L{ReadsAfterClose} bounds what a close still reads.  L{GoneTransport}
stands in for the transport of a connection whose peer went while lines
it sent wait behind a command.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from math import inf
from typing import Any, ClassVar, Protocol
from weakref import WeakValueDictionary

from twisted.internet.interfaces import IReactorTime, ISSLTransport, ITransport
from zope.interface import implementer

from twisted_chat.server import logs
from twisted_chat.server.limits.deadlines import Deadline, Deadlines
from twisted_chat.tcpinfo import reset_by_peer, socket_of, unsent_at

#: How soon a close that waits for the peer to take what is queued looks
#: again (s): a reader's acknowledgement comes within a round trip, so soon
#: at first, then twice as long each time, up to L{LOOK_EVERY}.
FIRST_LOOK = 0.01
LOOK_EVERY = 0.1
#: The closes' looks (and aborts) due within this many seconds of each
#: other are made in one turn of their shared timer (L{sweep_of}).
TOGETHER = FIRST_LOOK / 2
#: Seconds between two log lines of a look that failed (L{Linger._unsent}).
LOOK_FAILED_EVERY = 3600.0
#: What a close reads and drops at most of what its peer sent unread
#: (L{drop_unread}), or twice C{--rcvbuf} when that is more.  Past it (with
#: C{--rcvbuf 0}, the kernel's autotuning) the close is a reset, as before.
UNREAD_DROPPED = 128 * 1024
#: Reads a close lets through once decided (L{ReadsAfterClose}): under TLS
#: it reads on for the peer's close_notify, which is no read of the
#: protocol's, so a peer still sending after this many is read no more (the
#: abort ends it).
READS_AFTER_CLOSE = 64
# Where L{drop_unread} reads what it drops (the reactor's thread only).
_DROPPED = bytearray(64 * 1024)
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)  # Twisted's sockets do not block either


class Closable(Protocol):
    """What a close uses of a transport: a TCP or TLS transport (and
    L{GoneTransport}) closes, aborts, and pauses and resumes its reading."""

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


class ReadsAfterClose:
    """
    The reads a close lets through once it is decided: under TLS it reads
    on for the peer's close_notify, which is no read of the protocol's, and
    each record is a read, decrypted whether or not it is wanted (a peer
    sending one-byte records for the whole grace took most of the server's
    core from four addresses).  Past L{READS_AFTER_CLOSE}, reading stops
    for good and the close's grace ends it: nothing may resume it
    (L{stopped}).  One count per close, L{Linger}'s and the WebSocket
    gateway's between its close frame and its TCP close alike.
    """

    __slots__ = ("_reads", "_transport")

    def __init__(self, transport: Closable) -> None:
        self._transport = transport
        self._reads = 0

    def read(self) -> bool:
        """One more read: whether it may still be handled.  The first one
        past the bound stops the transport's reading."""
        self._reads += 1
        if self._reads <= READS_AFTER_CLOSE:
            return True
        if self._reads == READS_AFTER_CLOSE + 1:
            self._transport.pauseProducing()
        return False

    @property
    def stopped(self) -> bool:
        """Whether reading has stopped for good: a resume would read on."""
        return self._reads > READS_AFTER_CLOSE


#: Each clock's sweep (L{sweep_of}), by the clock's id, for as long as a
#: close made on it is referenced (the sweep holds the clock: the id stays its).
sweeps_by_clock: WeakValueDictionary[int, Deadlines] = WeakValueDictionary()


def sweep_of(clock: IReactorTime) -> Deadlines:
    """
    The sweep of the closes lingering on C{clock}: their looks and aborts
    on one timer (L{Deadlines}, a turn per L{TOGETHER} s at most), where
    each had two timers of its own (a mass close of 10,000 stalled peers,
    at a shutdown or a C{--sendq-total} cut, made about 330,000 timer calls
    in the 3 s grace).  No timer is left once none lingers.
    """
    sweep = sweeps_by_clock.get(id(clock))
    if sweep is None:
        sweep = sweeps_by_clock[id(clock)] = Deadlines(clock, together=TOGETHER)
    return sweep


def owed(transport: Any) -> int:
    """
    What a close still waits for its peer to take (L{unsent_at}), or 0 once
    the peer has reset the connection (L{reset_by_peer}): nothing can reach
    it any more, though the kernel's send queue still counts what it never
    acknowledged, and the close looked until the grace.  Two runs of
    1,200 leavers closing at once, before this: one server, closes by FIN,
    37,360 looks (846 after; docs/security.md, close grace); a cluster
    node's profiled window, 26,085 (docs/cluster.md).  A peer that only
    sent its FIN may still read: it is waited for.
    """
    sock = socket_of(transport)  # looked up once: a lookup walks the layers
    held = unsent_at(transport, sock)
    if held and reset_by_peer(sock):
        return 0
    return held


class Linger:
    """
    A close under way (L{close_within}), which its owner cancels when the
    connection is lost (L{active}, L{cancel}).  While Twisted's buffer or
    the kernel's send queue holds bytes for the peer (L{owed}), the
    transport is kept, its reading paused; once both are empty, or the
    peer has reset the connection, it is closed.  The abort, C{grace}
    seconds after the start, ends it if the peer has not taken everything
    and completed the close by then: Twisted resets the socket
    (C{SO_LINGER} {1,0}), and the kernel frees what it held at once.
    Twisted closes the descriptor as soon as its own buffer
    is empty: the kernel then kept what it still held, in an orphaned
    socket (FIN-WAIT-1) that a peer which never read kept for about six
    minutes, outside every count and timeout of the server.
    Its looks and its abort wait on its clock's sweep (L{sweep_of}): one
    entry, at the next look or the abort, the sooner (the abort may so come
    up to L{TOGETHER} s early, with other closes' looks).
    """

    log = logs.logger()
    #: A look that raised, logged at most once an hour: a broken look
    #: fails every close's (L{_unsent}).
    failed_looks: ClassVar[logs.Throttle] = logs.Throttle(LOOK_FAILED_EVERY)

    __slots__ = ("_clock", "_close", "_deadline", "_entry", "_held", "_next_look", "_paused",
                 "_reads", "_sweep", "_transport", "_wait")

    def __init__(self, transport: Closable, clock: IReactorTime, grace: float,
                 close: Callable[[], object], held: Callable[[Closable], int] = owed,
                 reads: ReadsAfterClose | None = None) -> None:
        """
        @param reads: the count of reads since the close was decided, if
            its owner began one before (the WebSocket gateway's, from its
            close frame); else made at the first read (L{read}).
        """
        self._transport = transport
        self._close: Callable[[], object] | None = close
        self._held = held
        self._paused = False
        self._reads = reads
        self._clock = clock
        self._sweep = sweep_of(clock)
        self._entry: Deadline | None = None  # None once aborted or cancelled
        now = clock.seconds()
        self._deadline = now + grace  # the abort's time
        self._next_look = now
        self._wait = FIRST_LOOK
        self._look(now)

    def _look(self, now: float) -> None:
        """Close if the peer has everything, else look again later."""
        transport = self._transport
        if self._unsent() == 0:
            self._close_now()
            return
        self._next_look = now + self._wait
        self._wait = min(self._wait * 2, LOOK_EVERY)
        self._enter()
        if not self._paused:
            self._paused = True
            transport.pauseProducing()

    def _close_now(self) -> None:
        self._next_look = inf
        self._enter()  # the abort's, until the connection is lost
        reads = self._reads
        if self._paused and (reads is None or not reads.stopped):
            # As before the wait: a TLS close reads on for the peer's
            # close_notify (a TCP one stops reading itself).
            self._transport.resumeProducing()
        close, self._close = self._close, None
        if close is not None:
            close()

    def _enter(self) -> None:
        """Its one entry in the sweep: its next look or its abort, the sooner."""
        sweep = self._sweep
        if self._entry is not None:
            sweep.drop(self._entry)
        self._entry = sweep.add(min(self._next_look, self._deadline), self)

    def _leave(self) -> None:
        """No more looks, no close, no abort."""
        self._close = None
        entry, self._entry = self._entry, None
        if entry is not None:
            self._sweep.drop(entry)

    def deadline_reached(self, when: float) -> None:
        """Its turn in the sweep: the abort, once its time has come, else a look."""
        if when < self._deadline:
            self._look(self._clock.seconds())
            return
        self._leave()
        self._transport.abortConnection()

    def read(self) -> None:
        """The protocol read more after the close was decided: past
        L{READS_AFTER_CLOSE}, reading stops for good and the abort ends the
        close (L{ReadsAfterClose})."""
        reads = self._reads
        if reads is None:
            reads = self._reads = ReadsAfterClose(self._transport)
        if not reads.read():
            self._paused = True

    def made(self) -> bool:
        """Whether the close is made: already, or now, the peer having
        taken everything since the last look (the connection then leaves
        within the reactor's turn); not once aborted."""
        if self._close is None:
            return self.active()
        if self._unsent() == 0:
            self._close_now()
        return self._close is None

    def _unsent(self) -> int:
        """
        What the peer has not taken yet (C{held}); 0 if that cannot be told:
        the close is then made as Twisted makes it, and still aborted at
        the grace (a look that raised in the sweep left the close
        never looked at, made or aborted again).  Logged, at most once in
        L{LOOK_FAILED_EVERY} s.
        """
        try:
            return self._held(self._transport)
        except Exception:
            left_out = self.failed_looks.allow(self._clock.seconds())
            if left_out is not None:
                text = ("a close could not tell what its peer has not taken yet: closed now, "
                        "aborted at the grace if that close does not complete")
                if left_out:
                    text += " ({left_out} more since the last one)"
                self.log.failure(text, left_out=left_out)
            return 0

    def cancel(self) -> None:
        """The connection is lost: no abort, no more looks."""
        self._leave()

    def active(self) -> bool:
        """Whether it still waits: to close, or for the close to complete
        (not once aborted or cancelled)."""
        return self._entry is not None


def close_within(transport: Closable, clock: IReactorTime, grace: float,
                 close: Callable[[], object] | None = None,
                 reads: ReadsAfterClose | None = None) -> Linger:
    """
    Close C{transport} (by C{close}, where the protocol has its own way; by
    default the transport's C{loseConnection}) once its peer has taken what
    was written to it, and abort it C{grace} seconds from now if the peer
    has not completed the close by then (L{Linger}).  C{reads}: the reads
    already counted since the close was decided, if any (L{Linger}).

    @return: the close under way, for the caller to L{Linger.cancel}
        when the connection is lost (the close completed in time).
    """
    return Linger(transport, clock, grace, transport.loseConnection if close is None else close,
                  reads=reads)


def drop_unread(transport: Any, rcvbuf: int) -> int:
    """
    Read and drop, without waiting, what the peer of C{transport} sent and
    the server has not read (its reading stopped: a close's wait, a
    pipelined request's pause), before a close: Linux closes a socket that
    holds unread input with a reset (RST), not a FIN, and a peer reset
    before it has read what it was sent may lose it (a C{400}).  At most
    L{UNREAD_DROPPED}, or twice C{rcvbuf} (C{--rcvbuf}: what the kernel
    holds at most on TCP) when that is more.  Not under TLS, whose records
    the socket holds: there the close reads on, through TLS, for the
    peer's close_notify (L{Linger}).

    @return: the bytes dropped (it stops at the peer's FIN or an error,
        which the close then meets as before).
    """
    sock = None if ISSLTransport.providedBy(transport) else socket_of(transport)
    most = max(UNREAD_DROPPED, 2 * rcvbuf)
    dropped = 0
    while sock is not None and dropped < most:
        try:
            got = sock.recv_into(_DROPPED, min(len(_DROPPED), most - dropped), _DONTWAIT)
        except OSError:  # nothing more to read (EAGAIN), or a reset
            break
        if not got:
            break
        dropped += got
    return dropped


@implementer(ITransport)
class GoneTransport:
    """
    The transport of a connection whose peer has gone while lines it sent
    wait behind a command (see L{ChatProtocol.connectionLost}): nothing is
    read or written any more; the close the server makes once the lines are
    handled (their C{BYE}, the end of the input, a limit, a shutdown) ends
    the connection on the next turn, as Twisted would, after its caller has
    told the hub why (C{close} leaves with the C{BYE}'s text after
    C{hang_up}).
    """

    __slots__ = ("_clock", "_end")

    disconnecting = True

    def __init__(self, clock: IReactorTime, end: Callable[[], None]) -> None:
        self._clock = clock
        self._end: Callable[[], None] | None = end

    def loseConnection(self) -> None:
        end, self._end = self._end, None
        if end is not None:
            self._clock.callLater(0, end)

    def abortConnection(self) -> None:
        self.loseConnection()

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def writeSequence(self, data: Iterable[bytes]) -> None:
        pass

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None
