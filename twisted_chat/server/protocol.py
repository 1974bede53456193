"""
The connection layer: one L{ChatProtocol} per connection, and the
L{ChatFactory} that owns the L{Hub} and turns its decisions into lines.

Lobby fan-out is the hottest path in the server.  A lobby message is encoded
once, and the lobby lines are gathered (those of one reactor turn, or of
up to 50 ms when they come fast: see L{ChatFactory.flush}) and written to
each member in a single write, so the per-recipient cost is paid per batch
rather than per line.  To keep every connection's view in the order the
server handled events, anything written to a lobby member, and any change to
who is in the lobby, first delivers the gathered lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat import __version__, wire
from twisted_chat.server.config import (
    FANOUT_QUIET_FACTOR,
    MAX_FANOUT_WAIT,
    READERS_WAIT_MAX_LINES,
    READERS_WAIT_SHARE,
    ServerConfig,
)
from twisted_chat.server.history import Entry, History
from twisted_chat.server.hub import Hub, HubError, Invitation, NickTaken, State, User
from twisted_chat.server.sending import Write, backlog_meter, direct_sender
from twisted_chat.wire import ErrorCode, LineError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

# Verbs allowed before READY; any other known verb is "not-ready".
_BEFORE_READY = frozenset({"NICK", "PING", "PONG", "HELP", "BYE"})


@implementer(IPushProducer)
class _SendQueueWatch:
    """
    The transport's push producer.  Twisted pauses it once the transport
    holds more than its buffer size (the kernel is not taking data), and
    resumes it when the buffer has drained; in between, the connection counts
    what it still writes, and is cut off when that passes C{--sendq}.
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: ChatProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        if self._protocol.held is None:
            self._protocol.held = 0

    def resumeProducing(self) -> None:
        self._protocol.held = None

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class ChatProtocol(LineReceiver):
    """
    One connection: NICK, then online (READY or PAIRED, as the hub says),
    then finished.

    C{dataReceived} is replaced: chat/1 discards an over-long line with one
    error and keeps the connection, where C{LineReceiver} would drop it, and
    the scan below finds each delimiter once instead of re-splitting the
    buffer for every line.
    """

    delimiter = b"\n"
    log = Logger()

    # Twisted's transports pause a streaming producer past this many bytes.
    _TRANSPORT_BUFFER = 65536

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory
        self.config = factory.config
        self.clock: IReactorTime = factory.reactor
        self.MAX_LENGTH = self.config.max_line
        self.user: User | None = None
        self.address = "-"
        self.host: str | None = None
        self.finished = False
        # Bytes written since the transport paused us; None while it is not.
        self.held: int | None = None
        self._sendq_excess = max(self.config.sendq - self._TRANSPORT_BUFFER, 0)
        self._leave_reason = "disconnected"
        self._buffer = b""
        self._discarding = False
        # Flood control: a token bucket, and a penalty for dropped lines.
        self._tokens = float(self.config.flood_burst)
        self._refilled = 0.0
        self._penalty = 0.0
        self._penalised = 0.0
        self._flood_error_at: float | None = None
        # Liveness.
        self._last_line = 0.0
        self._pinged_at: float | None = None
        self._idle_call: IDelayedCall | None = None
        self._nick_call: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None  # set once a close has begun
        self._send: Write = lambda data: None  # until connectionMade
        self._backlog: Callable[[], int] | None = None

    # -- connection life ---------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        self.address = wire.format_address(host, port)
        # Chat lines are small and latency matters: don't let Nagle hold them.
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            no_delay(True)
        self.transport.registerProducer(_SendQueueWatch(self), True)  # type: ignore[union-attr]
        self._send = direct_sender(self.transport)
        self._backlog = backlog_meter(self.transport)
        now = self.clock.seconds()
        self._refilled = self._penalised = self._last_line = now
        self.log.debug("connection from {address}", address=self.address)
        if self.config.nick_timeout > 0:
            self._nick_call = self.clock.callLater(self.config.nick_timeout, self._nick_expired)
        if self.config.idle_timeout > 0:
            self._idle_call = self.clock.callLater(self.config.idle_timeout, self._check_idle)
        self.write(self.factory.greeting)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.finished = True
        self._cancel_timers()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        self.factory.disconnected(self)
        self._leave(self._leave_reason)
        self.log.debug("connection from {address} closed", address=self.address)

    def readConnectionLost(self) -> None:
        """
        The peer sent its last byte but may still read (C{nc -N}, a script
        piping lines in): deliver what waits for it, its own copy of a lobby
        message included, then close as a disconnect.  Without this, lobby
        lines still waiting for the pacing would be lost to it.
        """
        if self.finished:
            return
        self.factory.flush()
        self.hang_up("disconnected")
        self._leave("disconnected")

    def writeConnectionLost(self) -> None:
        pass  # the server never half-closes

    def _leave(self, reason: str, text: str = "") -> None:
        if self.user is not None:
            self.factory.hub.leave(self.user, reason, text)

    def _cancel_timers(self) -> None:
        for call in (self._idle_call, self._nick_call):
            if call is not None and call.active():
                call.cancel()
        self._idle_call = self._nick_call = None

    def _close(self, reason: str, text: str) -> None:
        """End the connection from the server's side with C{BYE}."""
        self.write(wire.line("BYE", reason, text=text))
        self.hang_up(reason)
        self._leave(reason)

    def hang_up(self, reason: str) -> None:
        """
        Close from the server's side, without telling the hub (the caller
        does, except at shutdown, when nobody is left to tell).

        The producer is unregistered first: with one registered, a TLS
        transport never starts its close, and a TCP transport whose buffer
        was full resumes the producer instead of closing.  A peer that does
        not complete the close in time (one that stopped reading, or a TLS
        peer that never answers the close) is aborted.
        """
        if self._abort_call is not None:
            return  # closing already
        self.finished = True
        self._leave_reason = reason
        self._cancel_timers()
        self.factory.read_now(self)
        transport = self.transport
        transport.unregisterProducer()  # type: ignore[union-attr]
        transport.loseConnection()  # type: ignore[union-attr]
        self._abort_call = self.clock.callLater(
            self.config.close_grace,
            transport.abortConnection,  # type: ignore[union-attr]
        )

    # -- output --------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send C{data} after anything addressed to the lobby before it."""
        if self.finished:
            return
        user = self.user
        if user is not None and user.state is State.LOBBY and self.factory.has_pending:
            self.factory.flush()
        self.deliver(data)

    def deliver(self, data: bytes) -> None:
        """The fan-out's write: no ordering work, only the send-queue rule."""
        held = self.held
        if held is None:
            if not self.finished:
                self._send(data)
        elif not self.finished:
            backlog = self._backlog
            if backlog is not None:
                # Plain TCP: what Twisted really holds, so a peer that reads
                # steadily but fell behind in a burst is not cut early.
                over = backlog() + len(data) > self.config.sendq
            else:
                # Elsewhere, estimate: the transport's buffer size (it paused
                # us past that) plus what was written since.
                held += len(data)
                self.held = held
                over = held > self._sendq_excess
            if over:
                self._overflow()
            else:
                self._send(data)

    def _overflow(self) -> None:
        """
        The peer is not reading: cut it off without BYE (it would not be
        read).  The hub hears of it from C{connectionLost}, which Twisted
        calls on a later turn, so a fan-out in progress is not disturbed.
        """
        self.log.info(
            "{nick} dropped: send queue over {sendq} bytes",
            nick=self.user.nick if self.user else self.address,
            sendq=self.config.sendq,
        )
        self.finished = True
        self._leave_reason = "sendq"
        self._cancel_timers()
        self.transport.abortConnection()  # type: ignore[union-attr]

    # -- input ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        limit = self.config.max_line
        start = 0
        find = data.find
        while not self.finished:
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
                    self.lineLengthExceeded(b"")
                elif start < len(data):
                    self._buffer = data[start:]
                return
            stop = newline - 1 if newline > start and data[newline - 1] == 13 else newline
            if stop - start > limit:
                start = newline + 1
                self.lineLengthExceeded(b"")
                continue
            line = data[start:stop]
            start = newline + 1
            self.lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """Check 1: the line is discarded whole, with one error."""
        if self._count_line():
            self.write(
                wire.error(
                    ErrorCode.TOO_LONG, f"lines may be at most {self.config.max_line} bytes"
                )
            )

    def lineReceived(self, line: bytes) -> None:
        if self.finished or not self._count_line():
            return
        try:
            text = wire.decode(line)
            split = wire.split_verb(text)
            if split is not None:
                self._dispatch(*split)
        except (LineError, HubError) as e:
            self.write(wire.error(e.code, e.text))

    def _dispatch(self, verb: str, rest: str) -> None:
        user = self.user
        if user is None:
            if verb not in _BEFORE_READY:
                raise LineError(ErrorCode.NOT_READY, "choose a nickname first: NICK <nick>")
            if verb == "NICK":
                self._nick(rest)
                return
        elif verb == "NICK":
            raise LineError(ErrorCode.ALREADY_READY, f"you are already {user.nick}")
        command = wire.parse_args(verb, rest)
        self._HANDLERS[verb](self, command)

    # -- limits --------------------------------------------------------------

    def _count_line(self) -> bool:
        """
        Every complete line resets the idle timer and spends a flood token.
        @return: whether the line may be handled.
        """
        now = self.clock.seconds()
        self._last_line = now
        rate = self.config.flood_rate
        if not rate:
            return True
        tokens = self._tokens + (now - self._refilled) * rate
        burst = self.config.flood_burst
        if tokens > burst:
            tokens = burst
        self._refilled = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        self._flooded(now)
        return False

    def _flooded(self, now: float) -> None:
        """
        A line over the limit is dropped.  Each dropped line adds one to a
        penalty that drains at C{flood-burst / 10} per second; past
        C{flood-burst} the client is disconnected.  In words: more than
        C{flood-burst} lines dropped within about ten seconds.
        """
        burst = self.config.flood_burst
        drained = self._penalty - (now - self._penalised) * burst / 10.0
        self._penalty = max(drained, 0.0) + 1.0
        self._penalised = now
        if self._penalty > burst:
            self._close("flood", "too many lines too fast")
            return
        if self._flood_error_at is None or now - self._flood_error_at >= 1.0:
            self._flood_error_at = now
            self.write(
                wire.error(
                    ErrorCode.FLOOD,
                    f"slow down: at most {self.config.flood_rate:g} lines per second "
                    f"(bursts of {burst}); lines are being dropped",
                )
            )

    def _check_idle(self) -> None:
        """
        Runs when the connection may have been silent for C{--idle-timeout};
        each line only records its time, so a busy connection costs no timer
        work per line.
        """
        self._idle_call = None
        now = self.clock.seconds()
        pinged = self._pinged_at
        if pinged is not None and self._last_line < pinged:
            self._close("timeout", f"no answer to PING within {self.config.ping_timeout:g} seconds")
            return
        self._pinged_at = None
        # Compared as instants, not as "silent < idle": the timer fires at the
        # float sum of when it was set and the timeout, and the difference
        # now - last line can round to a hair under the timeout; rescheduling
        # for that hair lands at this same instant again, forever on a Clock.
        due = self._last_line + self.config.idle_timeout
        if now < due:
            self._idle_call = self.clock.callLater(due - now, self._check_idle)
            return
        self._pinged_at = now
        self.write(wire.line("PING", text=f"idle-{int(now)}"))
        self._idle_call = self.clock.callLater(self.config.ping_timeout, self._check_idle)

    def _nick_expired(self) -> None:
        self._nick_call = None
        if self.user is None and not self.finished:
            self._close("timeout", f"no nickname after {self.config.nick_timeout:g} seconds")

    # -- commands ------------------------------------------------------------

    def _nick(self, rest: str) -> None:
        try:
            nick = wire.parse_args("NICK", rest).words[0]
        except LineError as e:
            self.write(wire.line("RETRY", "invalid", text=e.text))
            return
        try:
            self.user = self.factory.hub.register(nick, self, self.address)
        except NickTaken:
            self.write(wire.line("RETRY", "taken", text=f"{nick} is online already"))
            return
        if self._nick_call is not None and self._nick_call.active():
            self._nick_call.cancel()
        self._nick_call = None

    def _online(self) -> User:
        assert self.user is not None  # _dispatch lets only NICK, PING... through before
        return self.user

    def do_MSG(self, command: wire.Command) -> None:
        user = self._online()
        self.factory.hub.say(user, command.text)
        if user.state is State.LOBBY:
            self.factory.read_after_fanout(self)

    def do_DM(self, command: wire.Command) -> None:
        self.factory.hub.direct(self._online(), command.words[0], command.text)

    def do_USERS(self, command: wire.Command) -> None:
        self.write(self.factory.roster())

    def do_PAIR(self, command: wire.Command) -> None:
        self.factory.hub.pair(self._online(), command.words[0])

    def do_ACCEPT(self, command: wire.Command) -> None:
        self.factory.hub.accept(self._online(), command.words[0])

    def do_REJECT(self, command: wire.Command) -> None:
        self.factory.hub.reject(self._online(), command.words[0])

    def do_UNPAIR(self, command: wire.Command) -> None:
        self.factory.hub.unpair(self._online())

    def do_PING(self, command: wire.Command) -> None:
        self.write(wire.line("PONG", text=command.text))

    def do_PONG(self, command: wire.Command) -> None:
        pass  # it already counted as a line for the idle timer

    def do_HELP(self, command: wire.Command) -> None:
        if command.words:
            verb = command.words[0].upper()
            if verb not in wire.HELP_TEXT:
                raise LineError(ErrorCode.BAD_ARGS, f"no help for {command.words[0]!r}; try HELP")
            self.write(_help_line(verb) + wire.line("HELP"))
        else:
            self.write(_FULL_HELP)

    def do_BYE(self, command: wire.Command) -> None:
        self.write(wire.line("BYE", "quit"))
        self.hang_up("quit")
        self._leave("quit", command.text)

    _HANDLERS: ClassVar[dict[str, Any]] = {
        "MSG": do_MSG,
        "DM": do_DM,
        "USERS": do_USERS,
        "PAIR": do_PAIR,
        "ACCEPT": do_ACCEPT,
        "REJECT": do_REJECT,
        "UNPAIR": do_UNPAIR,
        "PING": do_PING,
        "PONG": do_PONG,
        "HELP": do_HELP,
        "BYE": do_BYE,
    }


def _help_line(verb: str) -> bytes:
    return wire.line("HELP", text=f"{wire.USAGE[verb]} - {wire.HELP_TEXT[verb]}")


_FULL_HELP = b"".join(_help_line(verb) for verb in wire.HELP_TEXT) + wire.line("HELP")


class _Refusal(Protocol):
    """
    What a connection over a limit talks to: two lines, then the close, and
    an abort if the peer has not completed the close within the grace (a TLS
    peer that never finishes the handshake or never answers the close would
    otherwise hold the socket for good, outside every limit).
    """

    def __init__(self, why: str, clock: IReactorTime, grace: float) -> None:
        self.why = why
        self.clock = clock
        self.grace = grace
        self._abort_call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(wire.error(ErrorCode.SERVER_FULL, self.why) + wire.line("BYE", "full"))
        transport.loseConnection()
        self._abort_call = self.clock.callLater(self.grace, transport.abortConnection)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None


class ChatFactory(ServerFactory):
    """
    Builds connections, enforces the connection limits, and is the hub's
    L{twisted_chat.server.hub.Listener}: every hub decision becomes lines here.
    """

    log = Logger()

    def __init__(self, config: ServerConfig, reactor: Any, history: History | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.history = history if history is not None else History(config.history)
        self.hub = Hub(reactor, self.history, self, config.invite_timeout)
        self.connections: set[ChatProtocol] = set()
        self._per_host: dict[str, int] = {}
        self._pending: list[bytes] = []
        # Lobby members who came online while lines were gathered: the index
        # in _pending from which the lines are theirs (the rest is history).
        self._late: dict[User, int] = {}
        self._flush_call: IDelayedCall | None = None
        # Pacing (see flush): no lobby write before this time, unless the
        # order of a connection's lines needs one; and whether the pending
        # fan-out is one that waits for it (lines are pouring in).
        self._quiet_until = 0.0
        self._held = False
        # Connections not read until the gap ends (see read_after_fanout),
        # whether they may be left so, and the latest they are read again
        # however often an early fan-out moves the gap.
        self._unread: set[ChatProtocol] = set()
        self._readers_wait = True
        self._read_by = 0.0
        self._roster: bytes | None = None
        self._user_lines: dict[str, bytes] = {}  # by nick key, each encoded once
        self._history_block: bytes | None = None
        self.greeting = wire.line(
            "HELLO",
            wire.PROTOCOL_VERSION,
            text=f"{config.server_name} (twisted-chat {__version__})",
        ) + wire.line("NICK")

    # -- connections -----------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        host: str | None = getattr(addr, "host", None)
        if len(self.connections) >= self.config.max_clients:
            self.log.warn("refused {host}: server full", host=host)
            return self._refuse("the server is full; try again later")
        if host is not None and self._per_host.get(host, 0) >= self.config.max_per_ip:
            self.log.warn("refused {host}: too many connections from it", host=host)
            return self._refuse(f"too many connections from {host}")
        protocol = ChatProtocol(self)
        protocol.host = host
        self.connections.add(protocol)
        if host is not None:
            self._per_host[host] = self._per_host.get(host, 0) + 1
        return protocol

    def _refuse(self, why: str) -> Protocol:
        return _Refusal(why, self.reactor, self.config.close_grace)

    def disconnected(self, protocol: ChatProtocol) -> None:
        self.connections.discard(protocol)
        self._unread.discard(protocol)
        host = protocol.host
        if host is not None:
            left = self._per_host.get(host, 1) - 1
            if left > 0:
                self._per_host[host] = left
            else:
                self._per_host.pop(host, None)
        if not self.connections and self._all_closed is not None:
            closed, self._all_closed = self._all_closed, None
            closed.callback(None)

    _all_closed: defer.Deferred[None] | None = None

    def shutdown(self) -> defer.Deferred[None]:
        """
        Say C{BYE shutdown} to everyone and close; each connection that has
        not closed after the grace period is aborted (see L{hang_up}).
        """
        self.flush()
        if not self.connections:
            return defer.succeed(None)
        self._all_closed = defer.Deferred()
        protocols = list(self.connections)
        bye = wire.line("BYE", "shutdown", text="the server is shutting down")
        for protocol in protocols:
            protocol.write(bye)
        all_closed = self._all_closed
        for protocol in protocols:
            # Only the log sees this reason: nobody is left to tell.
            protocol.hang_up("shutdown")
        self.hub.close()
        return all_closed

    # -- the lobby fan-out -----------------------------------------------------

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def flush(self) -> None:
        """
        Write the lobby lines gathered so far to every lobby member.

        Each write costs the kernel a packet however few lines it carries,
        and that is most of what a delivered line costs, so the fan-out is
        paced like Nagle's algorithm, but with a bound we choose rather than
        the peer's delayed ACK: a line that comes while the lobby is quiet
        goes out at the end of its reactor turn; one that comes sooner than
        C{--fanout-delay} after the last fan-out, or sooner than that
        fan-out took, waits for the gap to pass and goes out with every line
        gathered by then (never more than L{MAX_FANOUT_WAIT}).  A fan-out of
        lines that had to wait is followed by a longer gap,
        L{FANOUT_QUIET_FACTOR} times what it took.  So when lines pour in, a
        member gets a lobby write about once per C{--fanout-delay} (sooner
        only where the order of its lines needs one), and the fan-out takes
        at most a fifth of the server's time, leaving the rest to reading:
        what the fan-out costs is bounded by the lobby's size, not by how
        fast lines come.  A line now and then in a big lobby is not held
        for a fan-out that only took long because the lobby is big.  While
        lines wait, their senders are not read (see L{read_after_fanout}).
        """
        call = self._flush_call
        if call is not None:
            self._flush_call = None
            if call.active():
                call.cancel()
        pending = self._pending
        if pending:
            self._fan_out(pending)
        else:
            self._held = False
        if self._unread:
            if self._readers_wait:
                # Read them again when the gap ends: they wait for it, as a
                # lobby line from them would, but never past _read_by (and
                # capped, so that a clock set back cannot hold them).
                until = min(self._quiet_until, self._read_by)
                self._wait_for_gap(min(until - self.reactor.seconds(), MAX_FANOUT_WAIT))
            else:
                self._read_again()

    def _fan_out(self, pending: list[bytes]) -> None:
        self._pending = []
        held, self._held = self._held, False
        window = self.config.fanout_delay
        started = self.reactor.seconds() if window else 0.0
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        late = self._late
        if not late:
            for user in list(self.hub.lobby.values()):
                user.conn.deliver(data)
        else:
            self._late = {}
            for user in list(self.hub.lobby.values()):
                start = late.get(user)
                if start is None:
                    user.conn.deliver(data)
                elif start < len(pending):
                    user.conn.deliver(b"".join(pending[start:]))
        if window:
            ended = self.reactor.seconds()
            took = ended - started
            self._quiet_until = ended + max(window, took * FANOUT_QUIET_FACTOR if held else took)
            self._readers_wait = (
                len(pending) <= READERS_WAIT_MAX_LINES and took <= window * READERS_WAIT_SHARE
            )

    def _to_lobby(self, data: bytes) -> None:
        self._pending.append(data)
        if self._flush_call is None:
            # Capped, so that a clock set back cannot hold the lobby.
            wait = min(self._quiet_until - self.reactor.seconds(), MAX_FANOUT_WAIT)
            if wait > 0.0:
                self._wait_for_gap(wait)
            else:
                self._held = False
                self._flush_call = self.reactor.callLater(0.0, self.flush)

    def _wait_for_gap(self, wait: float) -> None:
        """
        The next fan-out comes after C{wait} seconds (and one more turn, if
        anyone is left unread: see L{_gap_over}).
        """
        self._held = True
        self._flush_call = self.reactor.callLater(max(wait, 0.0), self._gap_over)

    def _gap_over(self) -> None:
        """
        Read the connections left unread, then fan out on the next reactor
        turn, once what they sent meanwhile is in; with none, at once.
        """
        if not self._unread:
            self.flush()
            return
        self._read_again()
        self._flush_call = self.reactor.callLater(0.0, self.flush)

    def read_after_fanout(self, protocol: ChatProtocol) -> None:
        """
        C{protocol} sent a lobby line that waits for the gap (lines are
        pouring in): do not read the connection again until the gap ends.

        Whatever it sends meanwhile could not go out before that anyway, and
        reading it as it comes costs the server a wake-up and a read each
        time, which is much of what a busy lobby costs it.  Left in the
        kernel, it is read in one go when the gap ends, on the turn before
        the fan-out it rides with (see L{_gap_over}).  So a connection that
        keeps the lobby busy is read about once per fan-out, and what it
        does besides (a C{DM}, a C{PING}) waits no longer than its next
        lobby line would: never more than L{MAX_FANOUT_WAIT}.  A line now and
        then does not wait, and leaves its connection alone.

        Only while the last fan-out was small and quick
        (L{READERS_WAIT_MAX_LINES}, L{READERS_WAIT_SHARE}).  The reading put
        off to the gap's end is done before the next fan-out, so it delays
        it by as much as handling the lines it finds takes; when lines flood
        in, that delay would grow with them, and reads find several lines
        each anyway.  And in a big lobby, where the fan-out takes a good
        part of the window, each sender has seldom sent more than one line
        by the next one: there is nothing to save.
        """
        if (
            self._held
            and self._readers_wait
            and protocol not in self._unread
            and not protocol.finished
        ):
            if not self._unread:
                self._read_by = self.reactor.seconds() + MAX_FANOUT_WAIT
            protocol.transport.pauseProducing()  # type: ignore[union-attr]
            self._unread.add(protocol)

    def read_now(self, protocol: ChatProtocol) -> None:
        """
        C{protocol} is closing: read it again at once if it was left unread.
        A TLS close completes only once the peer's answer is read, and
        anything the peer still sends must reach the close's end.
        """
        if protocol in self._unread:
            self._unread.discard(protocol)
            protocol.transport.resumeProducing()  # type: ignore[union-attr]

    def _read_again(self) -> None:
        unread, self._unread = self._unread, set()
        for protocol in unread:
            protocol.transport.resumeProducing()  # type: ignore[union-attr]

    def roster(self) -> bytes:
        """The C{USER} lines and the closing C{USERS}, encoded once per change."""
        if self._roster is None:
            lines = self._user_lines
            keys = self.hub.keys_in_order
            self._roster = b"".join([lines[key] for key in keys]) + wire.line(
                "USERS", str(len(keys))
            )
        return self._roster

    def _user_changed(self, user: User) -> None:
        """Encode C{user}'s USER line for its current state; drop the list."""
        words = [user.nick, user.state.value]
        if self.config.show_addresses:
            words.append(user.address)
        self._user_lines[user.key] = wire.line("USER", *words)
        self._roster = None

    def history_block(self) -> bytes:
        """The C{HISTORY} lines a newcomer gets, encoded once per message."""
        if self._history_block is None:
            self._history_block = b"".join(
                [
                    wire.line("HISTORY", wire.format_ts(e.ts), e.nick, text=e.text)
                    for e in self.history.recent()
                ]
            )
        return self._history_block

    # -- the hub's Listener ------------------------------------------------------

    def roster_changing(self) -> None:  # the hub's Listener
        self.flush()
        self._roster = None

    def lobby_message(self, entry: Entry) -> None:
        self._history_block = None
        self._to_lobby(wire.line("MSG", wire.format_ts(entry.ts), entry.nick, "*", text=entry.text))

    def ready(self, user: User) -> None:
        self._user_changed(user)
        # Straight to the newcomer: a flush here would send it lines that
        # are in its history.  joined() marks where its share begins.
        user.conn.deliver(wire.line("READY", user.nick) + self.history_block() + self.roster())

    def joined(self, ts: float, user: User) -> None:
        """JOINED rides with the lobby's lines of this turn (the newcomer's
        share starts after it); paired users get it directly."""
        data = wire.line("JOINED", wire.format_ts(ts), user.nick)
        self._to_lobby(data)
        self._late[user] = len(self._pending)
        hub = self.hub
        if len(hub.lobby) != len(hub.online):
            for other in list(hub.online.values()):
                if other.state is State.PAIRED:
                    other.conn.write(data)

    def left(self, ts: float, user: User, reason: str, text: str) -> None:
        self._user_lines.pop(user.key, None)
        data = wire.line("LEFT", wire.format_ts(ts), user.nick, reason, text=text)
        for other in list(self.hub.online.values()):
            other.conn.write(data)

    def private_message(self, ts: float, sender: User, recipient: User, text: str) -> None:
        data = wire.line("MSG", wire.format_ts(ts), sender.nick, recipient.nick, text=text)
        recipient.conn.write(data)
        sender.conn.write(data)

    def invited(self, invitation: Invitation) -> None:
        inviter, invitee = invitation.inviter, invitation.invitee
        inviter.conn.write(wire.line("PENDING", invitee.nick))
        invitee.conn.write(wire.line("INVITE", inviter.nick))

    def paired(self, user: User, partner: User) -> None:
        self._user_changed(user)
        user.conn.write(wire.line("PAIRED", partner.nick))

    def unpaired(self, user: User, partner: User, reason: str) -> None:
        self._user_changed(user)
        if self.hub.is_online(partner):
            self._user_changed(partner)
        user.conn.write(wire.line("UNPAIRED", partner.nick, reason) + self.roster())

    def declined(self, inviter: User, invitee: User, reason: str) -> None:
        inviter.conn.write(wire.line("DECLINED", invitee.nick, reason))

    def cancelled(self, invitee: User, inviter: User, reason: str) -> None:
        invitee.conn.write(wire.line("CANCELLED", inviter.nick, reason))
