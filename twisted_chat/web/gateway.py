"""
The WebSocket gateway: each browser is one more chat/1 connection.

A WebSocket text message is one chat/1 line, in both directions.  The
gateway does not speak chat/1 itself: for each WebSocket it builds the same
connection protocol a TCP client gets, from the same factory (so the same
per-address and total limits apply), and drives it through
L{WebSocketTransport}, an C{ITransport} whose C{write} turns the lines the
server writes into text frames.  Flood control, C{--sendq}, the idle and
nick timeouts, the maximum line, history, DMs and pairing are therefore the
TCP client's, line for line.

The lobby fan-out hands the same C{bytes} object to every member.  Here that
batch is framed once (L{FrameCache}, keyed on the object's identity) and the
same frame bytes are written to every WebSocket member: server-to-client
frames are not masked, so they are the same for everyone.  No compression
is negotiated, which is what makes that possible.

Frames the chat cannot take are refused with a close code and cost nothing
else: a binary message gets 1003, invalid UTF-8 1007 and a message larger
than L{WebConfig.max_message} 1009 (the last two from autobahn, with
C{failByDrop=False} so that it sends the code instead of dropping the TCP
connection).  A text message longer than C{--max-line} but within the
WebSocket limit is the TCP client's C{ERROR too-long}; as on TCP, no more
of it than C{--max-line} (and a terminator) is kept while it arrives.

Every frame costs what a line costs: a message's first frame is its line,
and each frame after it, each ping and each (unsolicited) pong spends a
flood token, so that frames carrying no line cannot be sent for free.  They
are no line for the idle timer, though, as on the chat port: only a
message keeps a connection from idle or answers the server's C{PING}.

autobahn's own log lines are not written (L{_autobahn_log}): a refused
upgrade made it write two lines, each quoting a request header in full
(up to 16 KB), past C{--log-level} and past the repeats limiter.  The
gateway writes its own line instead, one per refused upgrade, with what
the peer sent clipped (L{logs.quote}), through the repeats limiter under
the peer's address (L{ChatWebSocket.failHandshake}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from txaio.tx import make_logger
from zope.interface import implementer

from twisted_chat.server import logs
from twisted_chat.server.factory import ChatFactory
from twisted_chat.server.limits.closing import (
    Linger,
    ReadsAfterClose,
    close_within,
    drop_unread,
)
from twisted_chat.server.limits.records import reads_records
from twisted_chat.server.output.sendqueue import EncodingSendQueue
from twisted_chat.server.protocol import ChatProtocol
from twisted_chat.tcpinfo import drop_twisted_buffers
from twisted_chat.web.config import (
    WebConfig,
    client_host,
    forwarded_scheme,
    host_well_formed,
    origin_allowed,
    trusted,
)

# Bytes of a message kept beyond --max-line: a terminator (CRLF) the
# gateway drops, and one more, so that a message cut short is still longer
# than a line and gets ERROR too-long.
MESSAGE_SLACK = 3

# Close codes (RFC 6455, 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # a binary message

# A PONG is not queued behind more than this many bytes that Twisted already
# holds for the socket: the latest ping's is kept (one per connection, at most
# 125 bytes) and sent once Twisted holds no more than this, looked at every
# PONG_RETRY seconds.
PONG_HELD_LIMIT = 4096
PONG_RETRY = 0.25

Address = IPv4Address | IPv6Address

_log = logs.logger()  # not `log`: autobahn's protocols have their own

# autobahn's protocols and factories log through this (their class
# attribute C{log}): at the level "critical", which autobahn does not use,
# so none of its lines is written, and through the server's level filter.
# Its lines quoted what the peer sent, a whole header each (two lines of
# ~15 KB per refused upgrade: 1.5 MB in 30 s from one address), whatever
# --log-level said; the gateway logs what it refuses itself, clipped and
# limited.  The level is set on this logger (not txaio's global one), and
# kept if the global one changes.
_autobahn_log = make_logger(level="critical", observer=logs.observer)

# Characters of autobahn's reason for a refused upgrade (which may quote a
# whole header) sent back in the response's status line.
HTTP_REASON_LIMIT = 200

#: Frames parsed after the server's close (its closing handshake: autobahn
#: reads on for the peer's close); past them, what the peer sends is read
#: and dropped unparsed until the close completes or its grace
#: (close_grace, 3 s) aborts it.  A browser answers a close at once, behind
#: the few messages it had sent; the chat connection has ended and they are
#: dropped unread, but each cost autobahn's parsing: a peer that went on
#: sending after BYE flood had all it sent parsed (24
#: connections, 65,000 empty messages each, 520,000 frames parsed after the
#: close), where a TCP connection is not read at all after its close.  Not
#: an abort at once: a reset makes the browser drop what it had not read
#: yet, the BYE flood that says why included (a CI run lost it so).
FRAMES_AFTER_CLOSE = 64



def encode_frames(data: bytes) -> bytes:
    """
    The text frames for C{data}, one or more chat/1 lines (CRLF-terminated,
    as the server writes them): one frame per line, without its terminator.
    """
    lines = data.split(b"\r\n")
    if lines and not lines[-1]:
        lines.pop()
    return b"".join(
        [PreparedMessage(line, False, False, True).payloadHybi for line in lines]
    )


class FrameCache:
    """
    The frames of the last few batches written, keyed on the identity of the
    batch's C{bytes} object: the fan-out writes one object to every member,
    so the first WebSocket member frames it and the others reuse the frames.
    The cache holds the batches it keys on, so an identity is never reused
    while it is in the cache.
    """

    def __init__(self, size: int = 8, encode: Callable[[bytes], bytes] = encode_frames) -> None:
        self._size = size
        self._encode = encode
        self._entries: list[tuple[bytes, bytes]] = []
        self.encoded = 0  # batches framed; a test counts them

    def frames(self, data: bytes) -> bytes:
        for batch, frames in self._entries:
            if batch is data:
                return frames
        frames = self._encode(data)
        self.encoded += 1
        entries = self._entries
        if len(entries) >= self._size:
            del entries[0]
        entries.append((data, frames))
        return frames


@implementer(ITransport, IPushProducer)
class WebSocketTransport:
    """
    What the chat connection protocol sees as its transport: lines written
    go out as text frames; a close is a WebSocket close; the producer calls
    (reading paused during the fan-out's gap) go to the TCP (or TLS)
    transport underneath.  It offers the chat connection the WebSocket's
    send queue (L{send_queue}), which frames the lines and writes them to
    that transport.
    """

    def __init__(self, socket: ChatWebSocket, address: Address | None) -> None:
        self._socket = socket
        self._address = address
        self.closing = False
        self.disconnecting = False  # ITransport users look at it

    # -- writing ---------------------------------------------------------------

    @property
    def send_queue(self) -> EncodingSendQueue | None:
        """The one queue of this connection (L{ChatWebSocket.chat_queue})."""
        return self._socket.chat_queue

    def write(self, data: bytes) -> None:
        """For what writes without the send queue (a refusal's lines)."""
        queue = self._socket.chat_queue
        if not self.closing and queue is not None:
            queue.write(data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    # -- closing ---------------------------------------------------------------

    def loseConnection(self) -> None:
        """A WebSocket close (code 1000): the BYE line before it says why."""
        if not self.closing:
            self.closing = self.disconnecting = True
            self._socket.close_normally()

    def abortConnection(self) -> None:
        self.closing = self.disconnecting = True
        self._socket.abort()

    # -- addresses ---------------------------------------------------------------

    def getPeer(self) -> Any:
        if self._address is not None:
            return self._address
        return self._socket.tcp.getPeer()

    def getHost(self) -> Any:
        return self._socket.tcp.getHost()

    def setTcpNoDelay(self, enabled: bool) -> None:
        no_delay = getattr(self._socket.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(enabled)

    # -- flow control ------------------------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._socket.tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._socket.tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        self._socket.tcp.pauseProducing()
        self._socket.unread = True

    def resumeProducing(self) -> None:
        self._socket.resume_reading()

    def stopProducing(self) -> None:
        self.abortConnection()


class ChatWebSocket(WebSocketServerProtocol):
    """One browser: the WebSocket side of one chat connection."""
    factory: ChatWebSocketFactory
    log = _autobahn_log

    # What the chat factory built at the upgrade: the chat connection, or a
    # refusal (over a limit), which only writes why and closes.  Both are
    # told of the close.
    _built: Protocol | None = None
    # The chat connection (None before the upgrade, after the close, and
    # for a refusal).
    chat: ChatProtocol | None = None
    # The connection's one send queue, from the upgrade to the socket's end:
    # on the TCP (or TLS) transport, framing what the chat writes.  (Not
    # send_queue: autobahn has one.)
    chat_queue: EncodingSendQueue | None = None
    _client: Address | None = None
    _refused = False
    # Why onConnect refused the upgrade, for the log line (else autobahn's
    # reason is quoted).
    _denied: str | None = None
    # Called once the upgrade has succeeded (the chat connection counts the
    # socket from then on) and when the socket closes: what counted it
    # until then (the web port's HTTP connection it came from) stops.
    handover: Callable[[], None] | None = None
    # The TCP (or TLS) close under way (dropConnection's, through
    # close_within): a refused upgrade's, the answer to the peer's close
    # frame, or the close after the server's own close frame.
    _linger: Linger | None = None
    # The abort of a close frame the server sent, close_grace after it
    # (apart from _linger: the TCP close that follows it still goes
    # through close_within, or the kernel keeps its output as an orphan).
    _frame_grace: IDelayedCall | None = None
    # The latest ping's payload, while its PONG waits for the socket to drain.
    _pending_pong: bytes | None = None
    _pong_call: IDelayedCall | None = None
    # The message being received: at most --max-line + MESSAGE_SLACK bytes
    # of it, its frames so far, and whether a flood dropped it.
    _message: bytearray | None = None
    _frames = 0
    _dropped = False
    # The chat connection does not read (its held input is over a bound:
    # twisted_chat.server.limits.heldinput): frames already read wait in autobahn's
    # buffer, unparsed (consumeData), until it reads again (read_again).
    unread = False
    _read_call: IDelayedCall | None = None
    # The peer's close frame (its code and reason), while its answer waits
    # for the chat connection to close (L{onCloseFrame}); nothing the peer
    # sends after it is parsed.
    _peer_close: tuple[int | None, bytes | None] | None = None
    # autobahn is handling the peer's answer to the server's close: its
    # abort of the TCP connection is a close that lingers (L{dropConnection}).
    _answered = False
    _after_close = 0  # frames read since the close was sent (FRAMES_AFTER_CLOSE)
    # Reads since then, the TCP (or TLS) close's after it (READS_AFTER_CLOSE).
    _reads_after_close: ReadsAfterClose | None = None
    _frames_begun = 0  # frame headers parsed, for a TLS record's charge

    @property
    def tcp(self) -> Any:
        """The TCP (or TLS) transport under the WebSocket."""
        return self.transport

    @property
    def cache(self) -> FrameCache:
        return self.factory.cache

    def onConnect(self, request: ConnectionRequest) -> None:
        """Refuse an origin not allowed; note the client's address.  The
        101's headers are the factory's (the security headers), which
        autobahn writes itself: none are returned here, or each would be
        written twice."""
        config = self.factory.web
        # First: a refusal's line names the client.
        peer_host, on_unix, unix_trusted = self._note_client(request.headers)
        origin = request.headers.get("origin")
        host_header = request.headers.get("host")
        if host_header is not None and not host_well_formed(host_header):
            # The peer's bad input, not the gateway's fault: it was a 500,
            # logged as an error (the Host's parse raised).
            self._denied = f"Host {logs.quote(host_header)} is not a host and port"
            raise ConnectionDeny(ConnectionDeny.BAD_REQUEST, "malformed Host header")
        proxied = trusted(peer_host, config.trusted_proxies, unix_trusted)
        scheme, proto = self._page_scheme(proxied, on_unix, request.headers)
        if not origin_allowed(origin, host_header, config.origins, scheme):
            self._denied = ("no origin" if origin is None
                            else f"origin {logs.quote(origin)}") + " not allowed"
            if proto is not None:
                self._denied += f" (X-Forwarded-Proto {logs.quote(proto)})"
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")

    def _note_client(self, headers: dict[str, str]) -> tuple[str | None, bool, bool]:
        """The client's address (C{_client}), from the request's
        C{headers}: a trusted proxy's C{X-Forwarded-For} names it.
        Returns what it read of the peer, for L{onConnect} to use again:
        its host, whether it is on a UNIX socket, and whether that is
        trusted as a proxy (C{--trust-proxy})."""
        config = self.factory.web
        peer = self.tcp.getPeer()
        peer_host: str | None = getattr(peer, "host", None)
        on_unix = isinstance(peer, UNIXAddress)
        unix_trusted = on_unix and config.trust_unix
        host = client_host(peer_host, headers.get("x-forwarded-for"),
                           config.trusted_proxies, unix_trusted)
        if host is not None:
            port = getattr(peer, "port", 0) if host == peer_host else 0
            kind = IPv6Address if ":" in host else IPv4Address
            self._client = kind("TCP", host, port)
        return peer_host, on_unix, unix_trusted

    def _page_scheme(self, proxied: bool, on_unix: bool, headers: dict[str, str]
                     ) -> tuple[str | None, str | None]:
        """
        The scheme the page was served with, and the C{X-Forwarded-Proto}
        that said it (C{None}: none did).  This port's (https on TLS),
        unless the peer is a trusted proxy (C{proxied}): then its
        C{X-Forwarded-Proto}'s, or C{None} without one (not compared: the
        proxy may end TLS).  Nor is it known from a UNIX socket's peer
        (C{on_unix}) that is not trusted: no browser reaches a UNIX socket,
        so a proxy is in front, which may end TLS as well.
        """
        if proxied:
            proto = headers.get("x-forwarded-proto")
            scheme = forwarded_scheme(proto)
            return scheme, proto if scheme is not None else None
        if on_unix:
            return None, None
        return ("https" if reads_records(self.tcp) else "http"), None

    def failHandshake(self, reason: str, code: int = 400,
                      responseHeaders: Any = None) -> None:
        """
        An upgrade refused, by onConnect or by autobahn (no C{Upgrade}, a
        bad key or version, ...): one line saying what, from where, with
        what the peer sent clipped; at most a few per address and 10 s
        (L{Repeats}).  A 5xx is an error in the gateway (autobahn answers
        an exception in onConnect so): an error line.
        """
        denied, self._denied = self._denied, None
        if self._client is None:
            # Refused by autobahn before onConnect: the headers it read.
            self._note_client(getattr(self, "http_headers", None) or {})
        host, key = self._address_key()
        self.factory.chat.repeats.log(
            _log, LogLevel.error if code >= 500 else LogLevel.info, key, "ws-refused",
            "WebSocket upgrade from {host} refused ({code}): {why}",
            host=host, code=code, why=denied or logs.quote(reason))
        super().failHandshake(reason[:HTTP_REASON_LIMIT], code, responseHeaders)

    def _address_key(self) -> tuple[str, str]:
        """The peer's host (the client's, behind a trusted proxy, once
        known, and "via" the proxy) as a log line names it, and the key
        its log lines are limited under (the client's): a UNIX socket's
        peer has no host, so the key is made from the real one, not from
        the name."""
        peer: Any = self.tcp.getPeer()
        peer_host: str | None = getattr(peer, "host", None)
        host = peer_host if self._client is None else self._client.host
        name = host or "a UNIX socket"
        if host != peer_host:
            name += f" via {peer_host or 'a UNIX socket'}"
        return name, self.factory.chat.addresses.log_key(host)

    def _hand_over(self) -> None:
        handover, self.handover = self.handover, None
        if handover is not None:
            handover()

    def onOpen(self) -> None:
        self._hand_over()
        # twisted.web's HTTP channel is still the TCP transport's producer;
        # the chat connection registers its own (the send-queue watch).
        self.tcp.unregisterProducer()
        # One send queue, on the TCP (or TLS) transport, for the chat
        # connection to take (WebSocketTransport.send_queue): it counts the
        # frames, where Twisted's buffer and the kernel's hold them, against
        # --sendq, and sends them straight to the socket when nothing is
        # queued before them, as TCP lines are (autobahn's sendData would be
        # transport.write, a buffered write and two epoll_ctl calls).
        chat = self.factory.chat
        config = chat.config
        self.chat_queue = EncodingSendQueue(self.tcp, config.sendq, self.frames_for,
                                           direct=config.direct_send, sndbuf=config.sndbuf,
                                           handed=chat.context.handed)
        built = self._built = chat.buildProtocol(self._client, port="web")
        self.chat = built if isinstance(built, ChatProtocol) else None
        built.makeConnection(WebSocketTransport(self, self._client))

    # -- autobahn's per-message path, trimmed ---------------------------------
    #
    # autobahn internals this class relies on (autobahn pins nothing: >=24.4
    # in pyproject; tests/test_third_party.py checks each on the installed
    # version, and fails at an upgrade that drops one):
    #   - _dataReceived: its read without the debug line dataReceived
    #     formats; renamed, every read fails (AttributeError).
    #   - message_data_total_length: autobahn's onMessageFrameBegin adds
    #     each frame's length to it for the 1009 check; onMessageBegin here
    #     replaces autobahn's, so it resets it.  Renamed, every frame fails.
    #   - failedByMe: autobahn's "I failed this connection" (a 1007, a
    #     1009); a message it failed is not handed to the chat.  Renamed,
    #     every message fails.
    #   - frame_data: the frame's chunk list autobahn's onMessageFrameBegin
    #     makes, released at the frame's end as autobahn does (renamed:
    #     harmless, one empty list held until the next frame).
    #   - sendCloseFrame: where autobahn sends every close frame (its
    #     sendClose's, a failed connection's); overridden to time a close
    #     the server starts.  Renamed, autobahn's 1002/1007/1009 closes are
    #     never aborted (its own timer, closeHandshakeTimeout, is off).
    #   - message_is_binary, state and STATE_OPEN/STATE_CLOSED: the names
    #     autobahn's own handlers use, read the same way.
    #   - onFrameBegin: called for every frame's header (counted here
    #     after the close: FRAMES_AFTER_CLOSE; and for a TLS record's
    #     charge, _read_record); renamed, a peer that sends on after the
    #     close has all it sends parsed until the close grace, and every
    #     TLS record spends a flood token.
    #   - consumeData, processData and data: autobahn's loop over the frames
    #     read, one step of it, and the bytes it has not parsed yet
    #     (consumeData here stops the loop while the chat connection does
    #     not read, and after FRAMES_AFTER_CLOSE frames once closing).
    #     Renamed, a paused connection's read is parsed whole again
    #     (consumeData) or every read fails (processData, data).

    def dataReceived(self, data: bytes) -> None:
        """
        Nothing is read once the TCP (or TLS) close is under way
        (L{dropConnection}), as autobahn reads nothing once it has dropped
        a connection: here its close waits for the peer, autobahn's state
        unchanged meanwhile, and what came behind a refused upgrade in the
        same read (under TLS, handed over a record at a time) was parsed
        as the same request again: one more C{400}, one more log line.
        After the server's close frame, reads are bounded as a close's are
        (L{ReadsAfterClose}: one count with the TCP close's, L{Linger}).
        """
        linger = self._linger
        if linger is not None:
            linger.read()  # under TLS it reads on, for a few reads
            return
        if self.state == self.STATE_CLOSING:
            if not self._closing_reads().read():
                return  # reading has stopped: the close grace ends it
        elif (self.state == self.STATE_OPEN and not self.unread
              and reads_records(self.tcp)):
            self._read_record(data)
            return
        # autobahn's formats a debug log line's arguments on every read.
        self._dataReceived(data)

    def _closing_reads(self) -> ReadsAfterClose:
        """The reads since the server's close frame (made at the first)."""
        reads = self._reads_after_close
        if reads is None:
            reads = self._reads_after_close = ReadsAfterClose(self.tcp)
        return reads

    def _read_record(self, data: bytes) -> None:
        """
        A TLS record (each is a read, whatever it carries): one in which no
        frame begins spends a flood token, as a TLS chat connection's
        record that ends no line does (L{twisted_chat.server.limits.records}):
        four connections sending their frames a byte per record took a
        whole core, never cut (each message, of 15,000 records, spent one
        token).  A browser writes each frame in one record.
        """
        begun = self._frames_begun
        self._dataReceived(data)
        if self._frames_begun == begun and self.state == self.STATE_OPEN:
            self._charge()

    def consumeData(self) -> None:
        """
        autobahn's, but an open WebSocket's frames are parsed only while the
        chat connection reads: once it pauses (held input over a bound:
        twisted_chat.server.limits.heldinput), the rest of the read waits in
        autobahn's buffer as bytes, as a TCP connection's waits in its
        buffer, and is parsed when it reads again (L{read_again}).
        Pausing the TCP transport alone stops only the next read: the one
        under way (64 KiB: 10,922 empty messages) was parsed and held
        whole.  Once closing, L{_consume_after_close}.
        """
        if self._peer_close is not None or self._linger is not None:
            self.data = b""  # behind the peer's close frame, or its TCP close under way
        elif self.state == self.STATE_CLOSING:
            self._consume_after_close()
        elif self.state != self.STATE_OPEN:
            super().consumeData()
        else:
            while (not self.unread and self._peer_close is None and self.processData()
                   and self.state != self.STATE_CLOSED):
                pass

    def _consume_after_close(self) -> None:
        """
        The close was sent: frames are parsed (for the peer's close) until
        L{FRAMES_AFTER_CLOSE} of them have begun; past that, the rest of
        this read and every later one is dropped unparsed, until the close
        completes or its grace aborts it.
        """
        while (self._after_close <= FRAMES_AFTER_CLOSE and self.processData()
               and self.state != self.STATE_CLOSED and self._linger is None):
            pass
        if self._after_close > FRAMES_AFTER_CLOSE or self._linger is not None:
            self.data = b""

    def onFrameBegin(self) -> None:
        """A frame read after the close was sent counts towards
        L{FRAMES_AFTER_CLOSE} (L{_consume_after_close})."""
        super().onFrameBegin()
        self._frames_begun += 1
        if self.state == self.STATE_CLOSING:
            self._after_close += 1

    def resume_reading(self) -> None:
        """
        The chat connection reads again (L{WebSocketTransport}): the TCP (or
        TLS) transport resumes, unless a close has its reading now (its TCP
        close under way, L{Linger}, or reading stopped for good,
        L{ReadsAfterClose}): a command decided after the server's close
        frame resumed it, and a peer sending on was read, record by record,
        until the close grace.
        """
        reads = self._reads_after_close
        if self._linger is None and (reads is None or not reads.stopped):
            self.tcp.resumeProducing()
        self.read_again()

    def read_again(self) -> None:
        """The chat connection reads again: the frames that waited are
        parsed in the next reactor turn, after the lines it held (its
        L{InputHold} resumes it before it hands them back)."""
        self.unread = False
        if self.data and self._read_call is None:
            self._read_call = self.factory.reactor.callLater(0, self._read_waiting)

    def _read_waiting(self) -> None:
        self._read_call = None
        if not self.unread and self.state == self.STATE_OPEN:
            self.consumeData()

    # autobahn keeps each chunk of a message as its own bytes object, however
    # small (16,000 one-byte fragments held 680 kB): here the
    # message is one bytearray of at most --max-line + MESSAGE_SLACK bytes.
    # autobahn still enforces the WebSocket limit (1009) on the whole length.

    def onMessageBegin(self, isBinary: bool) -> None:
        self.message_is_binary = isBinary
        self.message_data_total_length = 0  # autobahn's 1009 check adds to it
        self._message = bytearray()
        self._frames = 0
        self._dropped = False

    def onMessageFrameBegin(self, length: int) -> None:
        """Each frame after a message's first spends a flood token (a
        browser sends a message in one frame): one that finds none drops
        the message, as a flooded line is dropped, and a peer that sends
        them too fast is cut with C{BYE flood}."""
        super().onMessageFrameBegin(length)
        self._frames += 1
        if self._frames > 1 and not self._charge():
            self._dropped = True

    def _charge(self) -> bool:
        """A frame that carries no line spends a flood token, as a line
        does, and is no line for the idle timer
        (L{ChatProtocol.control_received}): whether it may be acted on.
        Not before the chat connection exists (a refusal: it closes)."""
        chat = self.chat
        return chat is not None and chat.control_received()

    def onMessageFrameData(self, payload: bytes) -> None:
        message = self._message
        if message is not None:
            room = self.factory.web.max_line + MESSAGE_SLACK - len(message)
            if room >= len(payload):
                message += payload
            elif room > 0:
                message += payload[:room]

    def onMessageFrameEnd(self) -> None:
        self.frame_data = None  # type: ignore[assignment]

    def onMessageEnd(self) -> None:
        # autobahn's also fires a "message" event, a Deferred per message
        # for listeners this protocol does not have; about a third of what
        # reading a message costs.
        message, self._message = self._message, None
        if message is not None and not self.failedByMe and not self._dropped:
            self.onMessage(bytes(message), self.message_is_binary)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._built is None or self._refused:
            return
        if isBinary:
            self._refuse(CLOSE_UNSUPPORTED, "binary messages are not accepted: send text")
            return
        # One message is one line; a terminator a hand-written client may
        # add is tolerated, as on TCP.
        if payload.endswith(b"\n"):
            payload = payload[:-2] if payload.endswith(b"\r\n") else payload[:-1]
        chat = self.chat
        if chat is not None:  # else a refusal (server full): it said why and closes
            chat.message_received(payload)

    def onPing(self, payload: bytes) -> None:
        """
        A ping (autobahn's own answers every one, written past every limit):
        it costs a flood token, as a line does, so that a peer that pings
        too fast gets C{ERROR flood} and then C{BYE flood}; and it gets its
        PONG once Twisted holds at most L{PONG_HELD_LIMIT} bytes for the
        socket: until then only the latest ping's payload is kept, so that
        a peer that pings without reading cannot make the server hold PONGs
        for it (a stalled reader is then cut by C{--sendq} and
        C{--sendq-timeout} as usual), and one that reads a burst slowly
        still gets its PONG (a keepalive that misses it closes).
        """
        if self.state != self.STATE_OPEN:
            return
        if not self._charge():
            return  # a refusal (it closes), a closing connection, or a flood
        self._pending_pong = payload  # only the latest is answered (RFC 6455 5.5.3)
        self._send_pong()

    def onPong(self, payload: bytes) -> None:
        """The gateway sends no pings: a pong is unsolicited, and spends a
        flood token as a ping does (empty pongs sent as fast as one peer
        could took 6.3 s of the server's CPU in 11 s, for nothing)."""
        if self.state == self.STATE_OPEN:
            self._charge()

    def _send_pong(self) -> None:
        """The pending PONG, if Twisted holds little enough for the socket;
        else a look again in L{PONG_RETRY} seconds."""
        self._pong_call = None
        payload = self._pending_pong
        if payload is None or self.state != self.STATE_OPEN:
            self._pending_pong = None
            return
        queue = self.chat_queue
        if queue is not None and queue.twisted_held() > PONG_HELD_LIMIT:
            self._pong_call = self.factory.reactor.callLater(PONG_RETRY, self._send_pong)
            return
        self._pending_pong = None
        self.sendPong(payload)

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> bool | None:
        """
        The peer's close frame.  An answer to the server's close ends it
        (L{_answer_handled}).  Otherwise (a browser's on reload or when its
        tab goes: 1001) it is the end of the peer's input, as a TCP peer's
        FIN is: the chat user leaves now (L{_chat_user_leaves}), not when
        the TCP close completes, up to the close grace later, and gets
        first what it is owed, as a TCP user does before its FIN: its own
        copy of its last lobby line, and a command's answer still being
        decided (an account's C{PASS}).  Its close frame is answered by the
        chat connection's close (L{close_normally}), behind those frames:
        autobahn answered at once, and what was written after its answer
        (the user's share, its C{READY}) was counted as sent and dropped.
        Nothing the peer sends after it is parsed.
        """
        if self.state != self.STATE_OPEN or self.chat is None:
            return self._answer_handled(code, reasonRaw)
        self._peer_close = (code, reasonRaw)
        self._chat_user_leaves()
        return True

    def _answer_handled(self, code: int | None, reasonRaw: bytes | None) -> bool | None:
        """
        autobahn's handling of the peer's close frame: open, it answers it
        and closes the TCP connection (L{dropConnection}); closing, the
        frame answers the server's close, and autobahn's abort of the TCP
        connection lingers like its close (L{dropConnection}).
        """
        self._answered = True
        try:
            return super().onCloseFrame(code, reasonRaw)  # type: ignore[arg-type]
        finally:
            self._answered = False

    def _chat_user_leaves(self) -> None:
        """
        The WebSocket is closing (the peer's close frame, or one the
        gateway or autobahn sent: 1002, 1003, 1007, 1009): nothing more is
        framed for it, nor read as a line, so its chat user leaves now, as
        a TCP peer's does at its FIN (C{readConnectionLost}: what it held
        is handled first; a C{BYE} it sent before has made it leave with
        C{quit} and its text already).  The chat connection stays, and its
        counts with it, until the socket is lost (L{onClose}).  Before,
        the user stayed online until the TCP close completed: a reloaded
        page was refused its own nick ("online already") for up to the
        close grace (3 s), and DMs to it meanwhile were confirmed to their
        sender and dropped.
        """
        chat = self.chat
        if chat is not None:
            chat.readConnectionLost()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        built, self._built, self.chat = self._built, None, None
        if built is not None:
            built.connectionLost(Failure(ConnectionDone()))

    def sendCloseFrame(self, code: int | None = None, reasonUtf8: bytes | None = None,
                       isReply: bool = False) -> None:
        """
        A close the server starts (the chat connection's, after its C{BYE};
        a 1003 here; a 1002, 1007 or 1009 from autobahn) is aborted if the
        peer has not completed it within the close grace, as a TCP chat
        connection's is: not sooner, since a reset makes the browser drop
        what it had not read yet, the C{BYE} that says why included.
        (autobahn's own timer for it, closeHandshakeTimeout, is off: it
        aborted 0-1 s after the close, its 1 s rounded down to the wall
        clock's next whole second by txaio's batched timer.)  Its chat
        user leaves at once (L{_chat_user_leaves}).
        """
        started = not isReply and self.state == self.STATE_OPEN
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if started and self._frame_grace is None:
            self._frame_grace = self.factory.reactor.callLater(
                self.factory.close_grace, self.tcp.abortConnection)
        if started:
            self._chat_user_leaves()

    def dropConnection(self, abort: bool = False) -> None:
        """
        autobahn ends a connection with a close rather than an abort where
        it is in the right: an upgrade it refused (no C{Upgrade}, a bad
        key, a disallowed origin), its answer to the peer's close frame,
        a second protocol error during the closing handshake.  That close
        waits, under TLS for the peer's close_notify, on any transport for
        the peer to read what is queued: as a chat connection's close, it
        is aborted if the peer does not complete it in time
        (L{close_within}).  autobahn holds itself closed from then on and
        skips every later abort, the chat connection's own included: a
        peer that sent a close frame and never completed the TCP (or TLS)
        close kept its user online, and its connection slots, for good.

        autobahn's abort once the peer's close frame answers the server's
        close (C{_answered}) is such a close too: the server has not
        finished writing (the lines owed, the C{BYE}, its close frame), and
        an abort threw away what Twisted and the kernel still held.  Its
        other aborts stay aborts: the chat
        connection's (a C{--sendq} cut, the close grace), and autobahn's
        opening-handshake timeout (the peer never completed its upgrade
        request: nothing was written to it).  Its closing-handshake and
        ping timeouts are off, and with C{failByDrop} off a protocol error
        is a close frame (1002, 1007, 1009), not an abort.
        """
        transport: Any = self.transport
        if ((not abort or self._answered) and self.state != self.STATE_CLOSED
                and transport is not None and self._linger is None):
            self._linger = close_within(transport, self.factory.reactor,
                                        self.factory.close_grace, self._drop_unread_and_close,
                                        reads=self._reads_after_close)
        else:
            super().dropConnection(abort)

    def _drop_unread_and_close(self) -> None:
        """autobahn's close, once the peer has taken everything: what it
        sent and was not read (reading stops while the close waits) is
        dropped first (L{drop_unread}), so that the close is a FIN, not a
        reset that may lose the peer its answer (a refused upgrade's C{400},
        a close frame)."""
        drop_unread(self.transport, self.factory.chat.config.rcvbuf)
        super().dropConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._pending_pong = None
        for call in (self._linger, self._frame_grace, self._pong_call, self._read_call):
            if call is not None and call.active():
                call.cancel()
        self._linger = self._frame_grace = self._pong_call = self._read_call = None
        self.chat_queue = None  # its encode is a method of this socket's
        # What Twisted still buffers for it (up to --sendq for a browser cut
        # for it) goes now, not when the collector frees the connection.
        drop_twisted_buffers(self.transport)
        try:
            super().connectionLost(reason)
        finally:
            self._hand_over()

    # -- used by WebSocketTransport --------------------------------------------

    def frames_for(self, data: bytes) -> bytes:
        """The send queue's encode: C{data}'s frames, shared with the other
        members it is written to (L{FrameCache}); none once the WebSocket
        is no longer open (a close frame sent or received)."""
        return self.cache.frames(data) if self.state == self.STATE_OPEN else b""

    def close_normally(self) -> None:
        """The chat connection's close: the answer to the peer's close
        frame if it came (L{onCloseFrame}), else a close (1000)."""
        if self.state != self.STATE_OPEN:
            return
        peer_close, self._peer_close = self._peer_close, None
        if peer_close is not None:
            self._answer_handled(*peer_close)
        else:
            self.sendClose(CLOSE_NORMAL)

    def abort(self) -> None:
        self.dropConnection(abort=True)

    def _refuse(self, code: int, reason: str) -> None:
        """Close with C{code}; nothing more from this socket is read."""
        self._refused = True
        host, key = self._address_key()
        self.factory.chat.repeats.log(_log, LogLevel.info, key, "ws-closed",
                                      "WebSocket from {host} closed ({code}): {reason}",
                                      host=host, code=code, reason=reason)
        self.sendCloseFrame(code=code, reasonUtf8=reason.encode()[:123])


class ChatWebSocketFactory(WebSocketServerFactory):
    """
    Builds L{ChatWebSocket}s that connect to C{chat}, the chat server's
    factory: each WebSocket is one of its connections.
    """

    protocol = ChatWebSocket  # type: ignore[assignment]
    log = _autobahn_log

    def __init__(self, chat: ChatFactory, web: WebConfig,
                 headers: dict[str, str] | None = None, reactor: Any = None,
                 close_grace: float = 3.0) -> None:
        # server=None: no Server header naming autobahn and its version.
        super().__init__(reactor=reactor, server=None)
        self.chat = chat
        self.web = web
        # Seconds a close the gateway makes (its close frame, a refused
        # upgrade's, or its answer to the browser's close frame) is given
        # before the socket is aborted (the chat server's
        # ServerConfig.close_grace, 3 s).
        self.close_grace = close_grace
        self.headers = headers or {}
        self.cache = FrameCache()
        self.setProtocolOptions(
            # Send 1007/1009 instead of dropping the TCP connection.
            failByDrop=False,
            maxMessagePayloadSize=web.max_message,
            maxFramePayloadSize=web.max_message,
            # The chat's own PING/PONG and timeouts cover liveness.
            autoPingInterval=0,
            # A close the server starts is timed by the close grace
            # (ChatWebSocket.sendCloseFrame), not by autobahn's 1 s.
            closeHandshakeTimeout=0,
            # No compression: frames are built once for every member.
            perMessageCompressionAccept=lambda offers: None,
            # No status page (nor its ?redirect=) for a request without
            # Upgrade: the site answers those itself (site._Socket).
            webStatus=False,
        )
