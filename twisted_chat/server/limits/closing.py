"""
How the server ends a connection: the close, once the peer has taken what
was written, and an abort if it has not completed the close within the grace
(L{ServerConfig.close_grace}, 3 s).  A peer that stopped reading, or a TLS
peer that never finishes the handshake or never answers the close
(close_notify), would otherwise hold the socket for good, outside every
limit.  The chat connection, a refused one, the web port's and the metrics
port's HTTP connections, and a WebSocket close all close this way
(L{close_within}).  L{GoneTransport} stands in for the transport of a
connection whose peer went while lines it sent wait behind a command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from zope.interface import implementer

from twisted_chat.tcpinfo import unsent

#: How soon a close that waits for the peer to take what is queued looks
#: again (s): a reader's acknowledgement comes within a round trip, so soon
#: at first, then twice as long each time, up to L{LOOK_EVERY}.
FIRST_LOOK = 0.01
LOOK_EVERY = 0.1


class Closable(Protocol):
    """What a close uses of a transport: a TCP or TLS transport (and
    L{GoneTransport}) closes, aborts, and pauses and resumes its reading."""

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


@implementer(IDelayedCall)
class Linger:
    """
    A close under way (L{close_within}), to its owner the abort's delayed
    call (cancelled when the connection is lost).  While Twisted's buffer or
    the kernel's send queue holds bytes for the peer (L{unsent}), the
    transport is kept, its reading paused; once both are empty it is
    closed.  The abort, C{grace} seconds after the start, ends it if the
    peer has not taken everything and completed the close by then: Twisted
    resets the socket (C{SO_LINGER} {1,0}), and the kernel frees what it
    held at once.  Twisted closes the descriptor as soon as its own buffer
    is empty: the kernel then kept what it still held, in an orphaned
    socket (FIN-WAIT-1) that a peer which never read kept for about six
    minutes, outside every count and timeout of the server (rev18-attack 1).
    """

    __slots__ = ("_abort", "_clock", "_close", "_held", "_look", "_paused", "_transport")

    def __init__(self, transport: Closable, clock: IReactorTime, grace: float,
                 close: Callable[[], object], held: Callable[[Closable], int] = unsent) -> None:
        self._transport = transport
        self._clock = clock
        self._close: Callable[[], object] | None = close
        self._held = held
        self._paused = False
        self._look: IDelayedCall | None = None
        self._abort = clock.callLater(grace, self._aborted)
        self._check(FIRST_LOOK)

    def _aborted(self) -> None:
        self._stop()
        self._transport.abortConnection()

    def _stop(self) -> None:
        """No more looks, no close."""
        look, self._look = self._look, None
        if look is not None and look.active():
            look.cancel()
        self._close = None

    def made(self) -> bool:
        """Whether the close is made: already, or now, the peer having
        taken everything since the last look (the connection then leaves
        within the reactor's turn); not once aborted."""
        if self._close is None:
            return bool(self._abort.active())
        look = self._look
        if look is not None and self._held(self._transport) == 0:
            look.cancel()
            self._check(0.0)
        return self._close is None

    def _check(self, wait: float) -> None:
        """Close if the peer has everything, else look again C{wait} s later."""
        self._look = None
        transport = self._transport
        if self._held(transport) > 0:
            if not self._paused:
                self._paused = True
                transport.pauseProducing()
            self._look = self._clock.callLater(wait, self._check, min(wait * 2, LOOK_EVERY))
            return
        if self._paused:
            # As before the wait: a TLS close reads on for the peer's
            # close_notify (a TCP one stops reading itself).
            transport.resumeProducing()
        close, self._close = self._close, None
        if close is not None:
            close()

    # -- IDelayedCall: the abort's ---------------------------------------------------

    def getTime(self) -> float:
        return float(self._abort.getTime())

    def cancel(self) -> None:
        """The connection is lost: no abort, no more looks."""
        self._stop()
        if self._abort.active():
            self._abort.cancel()

    def delay(self, secondsLater: float) -> None:
        self._abort.delay(secondsLater)

    def reset(self, secondsFromNow: float) -> None:
        self._abort.reset(secondsFromNow)

    def active(self) -> bool:
        return bool(self._abort.active())


def close_within(transport: Closable, clock: IReactorTime, grace: float,
                 close: Callable[[], object] | None = None) -> IDelayedCall:
    """
    Close C{transport} (by C{close}, where the protocol has its own way; by
    default the transport's C{loseConnection}) once its peer has taken what
    was written to it, and abort it C{grace} seconds from now if the peer
    has not completed the close by then (L{Linger}).

    @return: the abort's call, for the caller to cancel when the
        connection is lost (the close completed in time).
    """
    return Linger(transport, clock, grace, transport.loseConnection if close is None else close)


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
