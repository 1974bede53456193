"""
What the server's two HTTP ports (C{--metrics} and C{--web}) share: neither
takes a request body, so a request that announces one is refused before any
of it is read or spooled, and its connection closed (docs/security.md, "The
web port (`--web`)" and "The metrics port (`--metrics`)"); neither says
what software answers (no C{Server} header); and their connections are held
as a chat connection is: the socket's send and receive buffers fixed at
C{--sndbuf} and C{--rcvbuf}, and every close the server decides waiting for
the peer to take what is queued, aborted after the close grace
(L{close_within}), and made with what the peer sent unread dropped first
(L{drop_unread}), so that it is a FIN, not a reset.
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from twisted_chat.server.limits.closing import Linger, close_within, drop_unread
from twisted_chat.server.limits.records import reads_records
from twisted_chat.server.limits.socketbuffers import fix_receive_buffer, fix_send_buffer
from twisted_chat.tcpinfo import socket_of

if TYPE_CHECKING:
    from twisted_chat.server.config import ServerConfig

#: Reads (under TLS, records) a request's line and headers may come in: a
#: client writes them in one or two.  Each record costs the server a read
#: whatever it carries: headers sent a byte per record, from four
#: addresses, took most of a core until --web-timeout.
READS_PER_REQUEST = 64
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class PortSite(Protocol):
    """What a L{RefusingChannel} reads of its site: its clock, and the chat
    server's settings (C{close_grace}, C{sndbuf}, C{sendq}, C{rcvbuf})."""

    reactor: Any
    config: ServerConfig


class RefusingChannel(HTTPChannel):
    """
    An HTTP connection that can refuse the request being received
    (L{refuse}); it reads nothing more once it closes, after a refusal or
    any other close (L{loseConnection}).  Its socket's send buffer
    is fixed at C{--sndbuf}: the kernel's autotuning held about 2 MB for
    each peer that did not read; its receive buffer at
    C{--rcvbuf}: the kernel held 1.3 MB of what a peer sent while
    twisted.web did not read (a request pipelined behind an answer the peer
    did not take).  Every close it makes (after
    C{Connection: close}, an HTTP/1.0 request, its last request, a
    refusal, Twisted's timeout) waits for the peer to take what is queued,
    and is aborted after the close grace (L{close_within}): Twisted's own
    left the kernel's share in an orphaned socket for minutes.
    """

    site: PortSite
    _refused = False
    # Reads since the last request's headers were all in (READS_PER_REQUEST).
    _reads = 0
    # The close under way, until the connection is lost.
    _closing: Linger | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        config = self.site.config
        sock = socket_of(self.transport)
        fix_send_buffer(sock, config.sndbuf, config.sendq)
        fix_receive_buffer(sock, config.rcvbuf)

    def loseConnection(self) -> None:
        """As twisted.web closes (its producer off the transport first, so
        that nothing resumes reading), then L{close_within}.  Nothing more
        is parsed (L{dataReceived}), the rest of this read included:
        Twisted's own close marks the transport C{disconnecting}, which
        ends the parse, and a lingering close does not.  One request line
        that is not one (C{HELLO}, a TLS ClientHello) then logged an
        C{Unhandled Error} traceback, and 13,000 header lines in one read
        got 12,500 C{400}s and 30 ms of the reactor."""
        self.clearLineBuffer()
        transport: Any = self.transport
        if transport is None or self._closing is not None:
            return
        producer: Any = self._networkProducer  # the transport (Twisted's call)
        producer.unregisterProducer()
        self._closing = close_within(transport, self.site.reactor, self.site.config.close_grace,
                                     lambda: self._drop_unread_and_close(transport))

    def _drop_unread_and_close(self, transport: Any) -> None:
        """The close proper, once the peer has taken everything: what it
        sent and was not read (behind a malformed request, a refused one,
        the last one: reading stops while the close waits) is dropped
        first (L{drop_unread}), so that the close is a FIN, not a reset
        that may lose the peer its C{400}."""
        drop_unread(transport, self.site.config.rcvbuf)
        transport.loseConnection()

    @property
    def close_started(self) -> bool:
        """Whether it is closing: it answers nothing more."""
        return self._closing is not None

    def close_made(self) -> bool:
        """Whether its close is made, or is now, its peer having taken
        everything (L{Linger.made}): it leaves within the reactor's turn,
        and holds no place that a newcomer waits for.  Never under TLS:
        there the socket stays until the peer answers close_notify, which
        it may never do (then the close grace ends it), so the close keeps
        its place, or gives it up once idle as any connection does."""
        if ISSLTransport.providedBy(self.transport):
            return False
        return self._closing is not None and self._closing.made()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        closing, self._closing = self._closing, None
        if closing is not None and closing.active():
            closing.cancel()
        super().connectionLost(reason)

    def refuse(self, response: bytes) -> None:
        """Answer C{response} (a whole HTTP response) and close."""
        transport: Any = self.transport
        if self._refused or transport is None:
            return
        self._refused = True
        self.persistent = False
        transport.write(response)
        self.loseConnection()

    def rawDataReceived(self, data: bytes) -> None:
        """
        As twisted.web's, which holds what arrives behind the request being
        answered (a pipelined request) and stops reading past 16 KiB of it
        (C{_optimisticEagerReadSize}), but only while the transport is not
        full: behind an answer its peer did not take, it read on into
        memory without end (one connection sending junk for 4 s behind
        three C{GET /static/app.js}: 639 MB read, the server grown by 662 MB,
        a whole core spent).  Here past those 16 KiB it stops reading either
        way, until the answer is done and taken (twisted.web resumes it
        then, as after its own pause); what it holds is then at most 16 KiB
        and a read, and the kernel at most 2 x C{--rcvbuf}.
        """
        super().rawDataReceived(data)
        if self._handlingRequest and (
                sum(map(len, self._dataBuffer)) > self._optimisticEagerReadSize):
            self._networkProducer.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        closing = self._closing
        if closing is not None:
            # A refusal closes too.  Under TLS, reading goes on until the
            # peer's close_notify, for a few reads (Linger.read).
            closing.read()
            return
        if reads_records(self.transport):
            self._reads += 1
            if self._reads > READS_PER_REQUEST:
                self.refuse(BAD_REQUEST)
                return
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._reads = 0
        super().allHeadersReceived()


class BodilessRequest(Request):
    """
    A request that may have no body: one that announces one (a length other
    than 0, or chunked) is refused with L{body_refusal} once its headers are
    in, before any of it is read (Twisted would otherwise spool it to a file).
    """

    def setHeader(self, name: str | bytes, value: str | bytes) -> None:
        """Every header but C{Server}: Twisted's names itself and its
        version (C{TwistedWeb/26.10.0}), which tells a scanner which of its
        flaws to try; a self-hosted server has no reason to say it."""
        if (name if isinstance(name, bytes) else name.encode("ascii")).lower() == b"server":
            return
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        if length == 0:
            super().gotLength(length)
            return
        self.content = BytesIO()  # stays empty
        response = self.body_refusal()
        channel = self.channel
        if isinstance(channel, RefusingChannel):
            channel.refuse(response)

    def body_refusal(self) -> bytes:
        """The whole response that refuses this request."""
        raise NotImplementedError
