"""
A connection refused at admission (over C{--max-clients} or a per-address
limit): the protocol it talks to, which tells it why and closes
(L{RefusalProtocol}); the bound on the refusals waiting out their close
grace (L{Closing}); and how many refused TLS connections are told why at
all (L{POLITE_TLS_BURST}).  L{twisted_chat.server.factory.ChatFactory.refusal}
decides; this tells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from twisted_chat import wire
from twisted_chat.server.limits.closing import Linger, close_within
from twisted_chat.server.limits.descriptors import REFUSALS_CLOSING
from twisted_chat.server.limits.socketbuffers import fix_receive_buffer
from twisted_chat.server.metrics.counters import Stats
from twisted_chat.tcpinfo import socket_of
from twisted_chat.wire import ErrorCode

__all__ = ["POLITE_TLS_BURST", "POLITE_TLS_WINDOW", "Closing", "RefusalProtocol"]

#: Refused TLS connections told why (C{ERROR server-full}, C{BYE full}, or
#: the web port's 503), per address bucket and window (s): the first
#: refusals of a client that reconnects now and then.  Telling costs the
#: server a full TLS handshake, so past them a refusal is aborted before it
#: (L{RefusalProtocol}).  A refused plain TCP connection costs an accept and
#: a write, so it is always told, as an --exempt address always is.
POLITE_TLS_BURST = 3
POLITE_TLS_WINDOW = 10.0


class RefusalProtocol(Protocol):
    """
    What a connection over a limit talks to: two lines (or C{message}),
    then the close, and an abort if the peer has not completed the close
    within the grace (L{close_within}), its receive buffer fixed at
    C{rcvbuf} meanwhile (the close reads nothing; under TLS, for the peer's
    close_notify, L{closing.READS_AFTER_CLOSE} reads).  Under TLS, only while
    C{polite} (L{POLITE_TLS_BURST}): else it is aborted before the handshake.
    """

    def __init__(self, why: str, clock: IReactorTime, grace: float, rcvbuf: int,
                 message: bytes | None, closing: Closing, polite: Callable[[], bool],
                 stats: Stats | None = None) -> None:
        self.why = why
        self.stats = stats
        self.clock = clock
        self.grace = grace
        self.rcvbuf = rcvbuf
        self.message = message
        self.closing = closing
        self.polite = polite
        self._linger: Linger | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if ISSLTransport.providedBy(transport) and not self.polite():
            # (TLS as twisted.web tells it: ISSLTransport.)  The TLS layer
            # (TLSMemoryBIOProtocol) calls this before it starts its handshake, and
            # starts none once aborted: no byte read, none written.  Telling
            # why took a whole handshake (an RSA signature, an ECDHE) per
            # refused connection: one address got 500-660 a second, half a
            # core, past every per-address limit.
            transport.abortConnection()
            return
        fix_receive_buffer(socket_of(transport), self.rcvbuf)
        message = self.message
        # The chat's lines (ERROR server-full, BYE full) are counted as any
        # line a connection is handed; the web port's 503 is HTTP, which
        # the chat's metrics do not count.
        stats = self.stats if message is None else None
        if message is None:
            message = wire.error(ErrorCode.SERVER_FULL, self.why) + wire.line("BYE", "full")
        if stats is not None:
            stats.wrote(message)
        transport.write(message)
        closing = self.closing
        if closing.count >= closing.limit:
            # As many refusals as may wait out the grace already do (refused
            # TLS peers that never answer: one address held 1,087 sockets so):
            # this one is aborted now, its lines most likely unsent.
            transport.abortConnection()
            if stats is not None:
                stats.count_discarded(len(message))
            return
        closing.count += 1
        self._linger = close_within(transport, self.clock, self.grace)

    def dataReceived(self, data: bytes) -> None:
        """Nothing is read for the refusal; under TLS its close reads on,
        for the peer's close_notify, a few reads (L{Linger.read})."""
        linger = self._linger
        if linger is not None:
            linger.read()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._linger is not None:
            self.closing.count -= 1
            if self._linger.active():
                self._linger.cancel()
        self._linger = None


class Closing:
    """The refused connections waiting out their close grace: C{count} of at
    most C{limit} (L{descriptors.REFUSALS_CLOSING}, counted in the
    descriptors kept besides --max-clients)."""

    __slots__ = ("count", "limit")

    def __init__(self, limit: int = REFUSALS_CLOSING) -> None:
        self.count = 0
        self.limit = limit
