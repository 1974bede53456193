"""
One connection (docs/fanout.md, "Module layout"): C{ChatProtocol} frames
chat/1 lines, applies the per-connection limits, hands each line to the
server's L{Session} (the commands), and writes through its L{SendQueue}.
It knows the server only through its L{ConnectionContext}.  The fan-out
sees it as a L{twisted_chat.server.output.fanout.Member}, the session as a
L{twisted_chat.server.session.Connection}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.internet import tcp
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat import wire
from twisted_chat.server import logs
from twisted_chat.server.hub import User
from twisted_chat.server.limits.addresses import Address
from twisted_chat.server.limits.closing import Closable, GoneTransport, Linger, close_within
from twisted_chat.server.limits.deadlines import Deadline
from twisted_chat.server.limits.flood import Flooding
from twisted_chat.server.limits.floodaccount import FloodAccount
from twisted_chat.server.limits.heldinput import InputHold
from twisted_chat.server.limits.idle import IdleDeadline
from twisted_chat.server.limits.inputholding import InputHolding
from twisted_chat.server.limits.records import RecordReads, reads_records
from twisted_chat.server.limits.socketbuffers import fix_receive_buffer
from twisted_chat.server.output.memberoutput import MemberOutput
from twisted_chat.server.output.sendqueue import SendQueue
from twisted_chat.tcpinfo import drop_twisted_buffers, socket_of
from twisted_chat.wire import ErrorCode

if TYPE_CHECKING:
    from twisted_chat.server.config import ServerConfig
    from twisted_chat.server.context import ConnectionContext
    from twisted_chat.server.session import Handshake

# The reason the others' LEFT gives for a metric's reason (chat/1 has one,
# sendq, for the three limits on a connection's output).
_SAID = {"sendq_timeout": "sendq", "sendq_total": "sendq"}


@implementer(IProtocol, IHalfCloseableProtocol)
class ChatProtocol(MemberOutput, FloodAccount, IdleDeadline, InputHolding):
    """
    One connection, until it closes.  Lines end in LF or CRLF.  An over-long
    line is discarded with one error and the connection kept (chat/1,
    "Limits"), and each delimiter is found once however the bytes arrive.
    It provides C{IProtocol} itself rather than subclass C{Protocol}, to have
    C{__slots__} (docs/fanout.md, "Memory per connection"); the server's
    shared parts are read through C{ctx}.  Its other jobs are its mixins'
    (docs/fanout.md, "Module layout"), their state in its slots: its writes
    (L{MemberOutput}), flood control (L{FloodAccount}), the idle deadline
    (L{IdleDeadline}), and what it holds while a command is decided
    elsewhere (L{InputHolding}: its L{InputHold}, C{hold}, None unless it
    has one).
    """

    __slots__ = ("_buffer", "_discarding", "_flood_at", "_flooding", "_idle", "_last_line",
                 "_leave_reason", "_linger", "_pinged_at", "_tokens", "address", "closing",
                 "ctx", "handshake", "hold", "host", "limits", "pool_key",
                 "send_queue", "transport", "user")

    log = logs.logger()

    def __init__(self, ctx: ConnectionContext[ChatProtocol], host: str | None,
                 limits: Address | None, pool_key: str) -> None:
        """
        @param host: the peer's IP address (None: not an IP connection).
        @param limits: the per-address limits it shares (None: exempt, or
            no IP address).
        @param pool_key: its key in the factory's handshake pool.
        """
        self.ctx = ctx
        self.transport: ITransport | None = None
        self.user: User | None = None  # set by online()
        self.handshake: Handshake | None = None  # the session's, while it has one
        self.address = "-"
        self.host = host
        self.limits: Address | None = limits
        self.pool_key = pool_key
        self.closing = False
        self.send_queue: SendQueue | None = None  # from connectionMade until closing
        self._leave_reason = "disconnected"
        self._buffer = b""  # a partial line
        self._discarding = False
        # Input held while a command is decided elsewhere, and why reading
        # is paused for it: made only when needed.
        self.hold: InputHold | None = None
        # Flood control (the server's FloodMeter): tokens left as of
        # _flood_at, and what dropped lines left (made at the first one).
        self._tokens = 0.0
        self._flood_at = 0.0
        self._flooding: Flooding | None = None
        # When the line counted last arrived (arrived(); a held one: when it
        # was read): the idle timer's.  Over TCP it is _flood_at's float.
        self._last_line = 0.0
        self._pinged_at: float | None = None
        self._idle: Deadline | None = None  # on the server's shared Deadlines
        self._linger: Linger | None = None  # set once a close has begun

    @property
    def config(self) -> ServerConfig:
        return self.ctx.config

    @property
    def clock(self) -> IReactorTime:
        return self.ctx.clock

    @property
    def connected(self) -> int:
        """C{IProtocol}'s flag, derived rather than held (a slot less): only
        C{makeConnection} sets a transport, and none is taken away."""
        return 0 if self.transport is None else 1

    @property
    def _socket(self) -> Closable:
        """Its transport as L{close_within} uses it (beyond C{ITransport}:
        it also aborts, pauses and resumes)."""
        return cast(Closable, self.transport)

    # -- connection life ---------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:  # IProtocol
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return self.__class__.__name__

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if reads_records(transport):
            # Decided once: a TCP read, the fan-out's hot path, pays nothing.
            self.__class__ = RecordChatProtocol
        peer = transport.getPeer()
        self.address = wire.format_address(getattr(peer, "host", None), getattr(peer, "port", None))
        if type(transport) is tcp.Server:
            # Twisted's TCP transport names the connection in two strings of its
            # own (log prefix, repr); the address, held anyway, names it as well.
            transport.logstr = transport.repstr = self.address
        # Nagle stays on unless --tcp-nodelay: a write behind unacknowledged
        # bytes is only queued by the kernel (docs/fanout.md, "Nagle").
        config = self.config
        no_delay = getattr(transport, "setTcpNoDelay", None)
        if no_delay is not None and config.tcp_nodelay:
            no_delay(True)
        # The kernel's share of its input, fixed before the first read (a
        # WebSocket's was fixed at its HTTP connection's accept).
        fix_receive_buffer(socket_of(transport), config.rcvbuf)
        # A transport that encodes what is written (the WebSocket gateway's)
        # offers its own queue, on the socket under it, counting encoded bytes.
        queue = getattr(transport, "send_queue", None)
        if queue is None:
            queue = SendQueue(transport, config.sendq, direct=config.direct_send,
                              sndbuf=config.sndbuf, handed=self.ctx.handed)
        self.send_queue = queue
        queue.start()
        ctx = self.ctx
        ctx.start_watches()
        now = ctx.clock.seconds()
        self._last_line = self._flood_at = now
        # With --flood-rate 0 the meter lets every line through, but still
        # rules on lines dropped by the per-address lobby limit.
        self._tokens = ctx.flood.full
        self.log.debug("connection from {address}", address=self.address)
        ctx.session.started(self)  # the NICK deadline
        if config.idle_timeout > 0:
            self._set_idle(now + config.idle_timeout)
        self.write(ctx.greeting)
        ctx.held_input.started(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # What Twisted still buffers (up to --sendq for a connection cut for
        # it) goes now, not when the collector frees this connection and its
        # user, which refer to each other.
        drop_twisted_buffers(self.transport)
        hold = self.hold
        if hold is not None and hold.holds_lines():
            # Handled after the peer went (InputHold.holds_lines).
            hold.input_ended = True
            queue, self.send_queue = self.send_queue, None
            if queue is not None:
                queue.retire()
            self.transport = GoneTransport(self.clock, self._lost)
            return
        self._lost()

    def _lost(self) -> None:
        """The connection is over: out of the server's counts, its user
        gone from the chat."""
        self._closing()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        # What it held behind a command is never handled now: let it go.
        hold = self.hold
        if hold is not None:
            hold.drop()
        self.ctx.held_input.forget(self)
        ctx = self.ctx
        ctx.on_lost(self)
        reason = self._leave_reason
        ctx.stats.disconnected(reason)
        ctx.session.lost(self)
        self._leave(_SAID.get(reason, reason))
        self.log.debug("connection from {address} closed", address=self.address)

    def readConnectionLost(self) -> None:
        """The peer sent its last byte but may still read (C{nc -N}, a script
        piping lines in): deliver what waits for it, its own copy of a lobby
        message included, then close as a disconnect."""
        if self.closing:
            return
        hold = self.hold
        if hold is not None and hold.waiting:
            # A command is still being decided elsewhere (cluster mode): the
            # lines behind it are handled first, as one server would.
            hold.input_ended = True
            return
        user = self.user
        if user is not None:
            # Its share only: a flush to everyone made n peers' FINs in one
            # turn n writes to each member (the others get it with the batch).
            self.ctx.batch_of(user).leaving(self)
        self.hang_up("disconnected")
        self._leave("disconnected")

    def writeConnectionLost(self) -> None:
        pass  # the server never half-closes

    def _leave(self, reason: str, text: str = "") -> None:
        if self.user is not None:
            self.ctx.leave(self.user, reason, text)

    def close(self, reason: str, text: str = "", farewell: str = "") -> None:
        """End the connection with C{BYE}; the hub hears C{reason}, C{farewell}."""
        bye = wire.line("BYE", reason, text=text)
        user = self.user
        if user is not None and self.send_queue is not None:
            # Its share, then its BYE, as for a FIN (readConnectionLost): a
            # flush to everyone made n timeouts in one turn n writes to each.
            self.ctx.batch_of(user).leaving(self)
            self.ctx.stats.wrote(bye)
            self.deliver(bye)
        else:
            self.write(bye)
        self.hang_up(reason)
        self._leave(reason, farewell)

    def hang_up(self, reason: str) -> None:
        """Close from the server's side, without telling the hub (the caller
        does, except at shutdown, when nobody is left to tell), and abort a
        peer that does not complete the close in time (L{close_within})."""
        if self._linger is not None or self.closing:
            # Closing already: hung up, or cut (_cut) for its send queue,
            # whose reason stays (a shutdown before its connectionLost is
            # not what ended it).
            return
        self._leave_reason = reason
        queue = self._closing()
        if queue is not None:
            queue.stop()
        self._linger = close_within(self._socket, self.clock, self.config.close_grace)

    def _closing(self) -> SendQueue | None:
        """Nothing more is written or timed for this connection: its send
        queue, returned, is out of the drain watch and the direct pass."""
        self.closing = True
        self._cancel_timers()
        queue, self.send_queue = self.send_queue, None
        if queue is not None:
            queue.retire()
        return queue

    def _cancel_timers(self) -> None:
        self.ctx.session.stopped(self)
        self.stop_idle()

    # -- input ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # The lobby lines this read brings need no timer: they leave at its
        # end, or wait for the turn's (docs/fanout.md, "Pacing by backlog").
        # A TLS connection's reads are RecordChatProtocol's (connectionMade).
        self.ctx.fanout.read(self._take, data)

    def _take(self, data: bytes) -> None:
        """Frame C{data} into lines and handle them, or hold it."""
        hold = self.hold
        if hold is not None and hold.waiting:
            hold.take(data)
            return
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        elif (data.endswith(b"\n") and data.count(b"\n") == 1
              and not (self._discarding or self.closing)):
            # One whole line, ending the read (the commonest read): the loop
            # below, written out for it.
            line = data[:-2] if data.endswith(b"\r\n") else data[:-1]
            ctx = self.ctx
            if len(line) > ctx.config.max_line:
                self._too_long()
                return
            if self._count():
                ctx.session.line_received(self, line)
            hold = self.hold
            if hold is not None and hold.waiting:
                hold.take_rest(b"")
            return
        ctx = self.ctx
        limit = ctx.config.max_line  # (not self.config: a call less a read)
        session = ctx.session
        start = 0
        find = data.find
        while not self.closing:
            newline = find(b"\n", start)
            if self._discarding:
                if newline < 0:
                    return
                self._discarding = False
                start = newline + 1
                continue
            if newline < 0:
                # A partial line may end in the CR of its terminator, hence +1.
                if len(data) - start > limit + 1:
                    self._discarding = True
                    self._too_long()
                elif start < len(data):
                    self._buffer = data[start:]
                return
            stop = newline - 1 if newline > start and data[newline - 1] == 13 else newline
            if stop - start > limit:
                start = newline + 1
                self._too_long()
                continue
            line = data[start:stop]
            start = newline + 1
            # line_received's work, written out (the loop checked closing):
            # a call less on every line.
            if self._count():
                session.line_received(self, line)
            hold = self.hold
            if hold is not None and hold.waiting:
                hold.take_rest(data[start:])
                return

    def held_read(self, data: bytes) -> None:  # InputHold's
        """Bytes held behind a command, handed back: framed as a read is,
        but a TLS record that ended no line spent its token as it was read
        (L{RecordChatProtocol}), not
        again.  Nothing: a record refused then, whose line is dropped now
        (L{InputHold.drop_line})."""
        if data:
            self.ctx.fanout.read(self._take, data)
        else:
            self._drop_line()

    def _drop_line(self) -> None:
        """A TLS record refused a flood token: the line it is part of goes,
        what came of it before and the rest up to its newline."""
        self._buffer = b""
        self._discarding = True

    def message_received(self, line: bytes) -> None:
        """One whole line from a transport that frames messages itself (the
        web client's WebSocket: twisted_chat.web.gateway): the length check
        C{dataReceived} makes, then the line."""
        if self.closing:
            return
        hold = self.hold
        if hold is not None and hold.waiting:
            hold.take_line(line)
            return
        if len(line) > self.config.max_line:
            self._too_long()
        else:
            self.line_received(line)

    def control_received(self) -> bool:
        """A frame with no line in it, from a transport that has them (a
        WebSocket ping, pong or continuation frame, or a TLS record in
        which no frame begins: twisted_chat.web.gateway): it spends a flood
        token as a line does, so a peer that sends them too fast is warned
        and cut like one that sends lines too fast, but it is no line for
        the idle timer (L{FloodAccount._count}): only a line keeps a
        connection from idle or answers the server's C{PING}.
        @return: whether it may be answered."""
        return not self.closing and self._count(line=False)

    def _too_long(self) -> None:
        """Check 1: the line is discarded whole, with one error."""
        if self._count():
            self.write(wire.error(ErrorCode.TOO_LONG,
                                  f"lines may be at most {self.config.max_line} bytes"))

    def line_received(self, line: bytes) -> None:
        if self.closing or not self._count():
            return
        self.ctx.session.line_received(self, line)

    # -- its nick -----------------------------------------------------------

    def online(self, user: User) -> None:
        """The session registered C{user}: out of the handshake's limits."""
        self.user = user
        self.ctx.on_registered(self)

    def evict(self) -> None:
        """Make room in a full handshake pool (the factory's C{make_room})."""
        if not self.closing:
            self.close("full", "too many connections are still choosing a nick; try again")


class RecordChatProtocol(RecordReads, ChatProtocol):
    """
    A L{ChatProtocol} whose reads are TLS records (L{RecordReads}: a record
    that ends no line spends a flood token).  A connection becomes one at
    C{connectionMade}, so that plain TCP reads pay no per-read test.
    """

    __slots__ = ()
