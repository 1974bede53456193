"""
How the server ends a connection: the close, then an abort if the peer has
not completed it within the grace (L{ServerConfig.close_grace}, 3 s).  A
peer that stopped reading, or a TLS peer that never finishes the handshake
or never answers the close (close_notify), would otherwise hold the socket
for good, outside every limit.  The chat connection, a refused one, the
web port's refused requests and upgrades, and a WebSocket close the browser
started all close this way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime


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
