"""
How the server ends a connection: the close, then an abort if the peer has
not completed it within the grace (L{ServerConfig.close_grace}, 3 s).  A
peer that stopped reading, or a TLS peer that never finishes the handshake
or never answers the close (close_notify), would otherwise hold the socket
for good, outside every limit.  The chat connection, a refused one, the
web port's refused requests and upgrades, and a WebSocket close the browser
started all close this way.  L{GoneTransport} stands in for the transport
of a connection whose peer went while lines it sent wait behind a command.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime, ITransport
from zope.interface import implementer


class Closable(Protocol):
    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...


def close_within(transport: Closable, clock: IReactorTime, grace: float,
                 close: Callable[[], object] | None = None) -> IDelayedCall:
    """
    Close C{transport} (by C{close}, where the protocol has its own way; by
    default the transport's C{loseConnection}), and abort it C{grace}
    seconds later.

    @return: the abort's call, for the caller to cancel when the
        connection is lost (the close completed in time).
    """
    if close is None:
        transport.loseConnection()
    else:
        close()
    return clock.callLater(grace, transport.abortConnection)


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
