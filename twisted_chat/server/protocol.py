"""
One connection: C{ChatProtocol} reads chat/1 lines, applies the per-connection
limits, hands commands to the hub, and writes what it is given through its
L{SendQueue}.  The lobby fan-out (L{twisted_chat.server.fanout}) and the
factory (L{twisted_chat.server.factory}) are reached only through their
public methods; the fan-out sees this class as a L{Member}.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IProtocol,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat import wire
from twisted_chat.server import logs
from twisted_chat.server.addresses import Address
from twisted_chat.server.deadlines import Deadline
from twisted_chat.server.flood import Dropped, Flooding
from twisted_chat.server.history import clip_text
from twisted_chat.server.hub import HubError, NickTaken, State, User
from twisted_chat.server.login import Answer, Login, retry_taken
from twisted_chat.server.sendqueue import SendQueue
from twisted_chat.server.state import ChatState, Outcome, StateUnavailable
from twisted_chat.wire import ErrorCode, LineError

if TYPE_CHECKING:
    from twisted_chat.server.config import ServerConfig
    from twisted_chat.server.factory import ChatFactory
    from twisted_chat.server.fanout import LobbyFanout
    from twisted_chat.server.metrics import Stats

# Input held while a command is decided elsewhere (see _hold) past which
# the connection is not read until it is.
_HELD_INPUT = 65536

# Verbs allowed before READY; any other known verb is "not-ready".
_BEFORE_READY = frozenset({"NICK", "PASS", "PING", "PONG", "HELP", "BYE"})
# The accounts verbs: "accounts-off" in every state when accounts are off.
_ACCOUNT_VERBS = frozenset({"PASS", "REGISTER", "PASSWD"})


@implementer(IProtocol, IHalfCloseableProtocol)
class ChatProtocol:
    """
    One connection: NICK, then online (READY or PAIRED, as the hub says),
    then closing.

    Lines end in LF or CRLF.  An over-long line is discarded with one error
    and the connection kept (chat/1, "Limits"), and each delimiter is found
    once however the bytes arrive.

    It provides C{IProtocol} itself rather than subclass Twisted's
    C{Protocol}, so that it can have C{__slots__}: what every connection
    holds is the fields below and nothing else (docs/fanout.md, "Memory per
    connection").  The factory's shared parts are read through it.
    """

    __slots__ = ("_abort_call", "_account", "_buffer", "_discarding", "_flooding", "_held",
                 "_held_size", "_idle", "_input_ended", "_last_line", "_leave_reason", "_nick_call",
                 "_paused_for_answer", "_pinged_at", "_tokens", "_waiting", "address",
                 "closing",
                 "connected", "factory", "host", "limits", "pool_key", "send_queue", "transport",
                 "user")

    log = logs.logger()

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory
        self.transport: ITransport | None = None
        self.connected = 0
        self.user: User | None = None
        self.address = "-"
        self.host: str | None = None
        # The per-address limits this connection shares (None: exempt, or
        # no IP address), and its key in the factory's handshake pool.
        self.limits: Address | None = None
        self.pool_key = "-"
        self.closing = False
        # From connectionMade until closing (the drain watch and the
        # fan-out's direct pass skip a connection without one).
        self.send_queue: SendQueue | None = None
        self._leave_reason = "disconnected"
        self._buffer = b""
        self._discarding = False
        # Flood control (twisted_chat.server.flood, the factory's meter): the
        # tokens left at the last line, and what dropped lines left (made at
        # the first one).
        self._tokens = 0.0
        self._flooding: Flooding | None = None
        self._last_line = 0.0
        self._pinged_at: float | None = None
        self._idle: Deadline | None = None  # on the factory's shared Deadlines
        self._nick_call: IDelayedCall | None = None
        self._abort_call: IDelayedCall | None = None  # set once a close has begun
        # A command is being decided elsewhere (see state.py): no more lines
        # are handled until it is; what arrives meanwhile waits in _buffer.
        self._waiting = False
        self._paused_for_answer = False
        self._input_ended = False  # the peer half-closed while a command waited
        # Whole lines (message_received) that came while a command was being
        # decided, and their size; the deque is made only when needed.
        self._held: deque[bytes] | None = None
        self._held_size = 0
        # The accounts handshake and verbs (twisted_chat.server.login), made
        # when first needed and let go once online with nothing to keep (see
        # _release_login).  What it waits for is held like a command.
        self._account: Login | None = None

    # -- the factory's shared parts ------------------------------------------------

    @property
    def config(self) -> ServerConfig:
        return self.factory.config

    @property
    def clock(self) -> IReactorTime:
        return self.factory.reactor  # type: ignore[no-any-return]

    @property
    def fanout(self) -> LobbyFanout:
        return self.factory.fanout

    @property
    def stats(self) -> Stats:
        return self.factory.stats

    @property
    def state(self) -> ChatState:
        return self.factory.state

    # -- connection life ---------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:
        self.connected = 1
        self.transport = transport
        self.connectionMade()

    def logPrefix(self) -> str:
        return self.__class__.__name__

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeer()
        self.address = wire.format_address(getattr(peer, "host", None), getattr(peer, "port", None))
        if type(transport) is tcp.Server:
            # Twisted's TCP transport names the connection in two strings of
            # its own, its log prefix and its repr; the address names it as
            # well and is held anyway (docs/fanout.md, "Memory per connection").
            transport.logstr = transport.repstr = self.address
        # Nagle stays on unless --tcp-nodelay: a write behind unacknowledged
        # bytes is only queued by the kernel (docs/fanout.md, "Nagle").
        no_delay = getattr(transport, "setTcpNoDelay", None)
        if no_delay is not None and self.config.tcp_nodelay:
            no_delay(True)
        config = self.config
        self.send_queue = queue = SendQueue(transport, config.sendq, direct=config.direct_send,
                                        sndbuf=config.sndbuf)
        queue.start()
        self.factory.drain.start()
        now = self.clock.seconds()
        self._last_line = now
        # With --flood-rate 0 the meter lets every line through, but still
        # rules on lines dropped by the per-address lobby limit.
        self._tokens = self.factory.flood.full
        self.log.debug("connection from {address}", address=self.address)
        if config.nick_timeout > 0:
            self._nick_call = self.clock.callLater(config.nick_timeout, self._nick_expired)
        if config.idle_timeout > 0:
            self._set_idle(now + config.idle_timeout)
        self.write(self.factory.greeting)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing()
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self._abort_call = None
        self.factory.connection_lost(self)
        self.stats.disconnected(self._leave_reason)
        if self._account is not None:
            self._account.lost()
        self._leave(self._leave_reason)
        self.log.debug("connection from {address} closed", address=self.address)

    def readConnectionLost(self) -> None:
        """
        The peer sent its last byte but may still read (C{nc -N}, a script
        piping lines in): deliver what waits for it, its own copy of a lobby
        message included, then close as a disconnect.
        """
        if self.closing:
            return
        if self._waiting:
            # A command is still being decided elsewhere (cluster mode), and
            # lines may wait behind it: handle them all first, as one server
            # would have before this call (see _decided).
            self._input_ended = True
            return
        self.fanout.flush()
        self.hang_up("disconnected")
        self._leave("disconnected")

    def writeConnectionLost(self) -> None:
        pass  # the server never half-closes

    def _leave(self, reason: str, text: str = "") -> None:
        if self.user is not None:
            self.state.leave(self.user, reason, text)

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
        call = self._nick_call
        if call is not None and call.active():
            call.cancel()
        self._nick_call = None
        idle = self._idle
        if idle is not None:
            self._idle = None
            self.factory.deadlines.drop(idle)

    # -- the idle deadline (twisted_chat.server.deadlines) -------------------------

    def _set_idle(self, when: float) -> None:
        deadlines = self.factory.deadlines
        if self._idle is not None:
            deadlines.drop(self._idle)
        self._idle = deadlines.add(when, self)

    def deadline_reached(self, when: float) -> None:
        self._idle = None
        self._check_idle()

    def _close(self, reason: str, text: str) -> None:
        """End the connection from the server's side with C{BYE}."""
        self.write(wire.line("BYE", reason, text=text))
        self.hang_up(reason)
        self._leave(reason)

    def hang_up(self, reason: str) -> None:
        """
        Close from the server's side, without telling the hub (the caller
        does, except at shutdown, when nobody is left to tell).  A peer that
        does not complete the close in time (one that stopped reading, a TLS
        peer that never answers the close) is aborted.
        """
        if self._abort_call is not None:
            return  # closing already
        self._leave_reason = reason
        queue = self._closing()
        if queue is not None:
            queue.stop()
        transport: Any = self.transport
        transport.loseConnection()
        self._abort_call = self.clock.callLater(self.config.close_grace, transport.abortConnection)

    # -- output (the fan-out's Member) -----------------------------------------

    def write(self, data: bytes) -> None:
        """Send C{data} after anything addressed to the lobby before it."""
        if self.closing:
            return
        user = self.user
        if user is not None and user.state is State.LOBBY and self.fanout.pending:
            self.fanout.flush()
        self.stats.wrote(data)
        self.deliver(data)

    def deliver(self, data: bytes) -> None:
        """The fan-out's write (for members its direct pass does not
        take): no ordering work, only the send-queue rule."""
        queue = self.send_queue  # None once closing
        if queue is not None and not queue.write(data):
            self._overflow()

    def _overflow(self) -> None:
        """
        The peer is not reading: cut it off without BYE (it would not be
        read).  The hub hears of it from C{connectionLost}, which Twisted
        calls on a later turn, so a fan-out in progress is not disturbed.
        """
        self._cut(f"send queue over {self.config.sendq} bytes")

    def output_stalled(self) -> None:
        """The peer took none of what is held for it for --sendq-timeout."""
        self._cut(f"output not drained for {self.config.sendq_timeout:g} seconds")

    def _cut(self, why: str) -> None:
        if self.closing:
            return
        self.factory.repeats.log(
            self.log,
            LogLevel.info,
            self.pool_key,
            "sendq",
            "{nick} dropped: {why}",
            nick=self.user.nick if self.user else self.address,
            why=why,
        )
        self._leave_reason = "sendq"
        self._closing()
        self.transport.abortConnection()  # type: ignore[union-attr]

    # -- input ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._waiting:
            self._buffer += data
            if len(self._buffer) > _HELD_INPUT and not self._paused_for_answer:
                self._paused_for_answer = True
                self.transport.pauseProducing()  # type: ignore[union-attr]
            return
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        limit = self.config.max_line
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
            self.line_received(line)
            if self._waiting:
                self._buffer = data[start:]
                return

    def message_received(self, line: bytes) -> None:
        """
        One whole line from a transport that frames messages itself (the web
        client's WebSocket: twisted_chat.web.gateway): the length check
        C{dataReceived} makes, then the line.
        """
        if self.closing:
            return
        if self._waiting:
            # Held in order behind the command, as dataReceived holds bytes.
            if self._held is None:
                self._held = deque()
            self._held.append(line)
            self._held_size += len(line) + 1
            if self._held_size > _HELD_INPUT and not self._paused_for_answer:
                self._paused_for_answer = True
                self.transport.pauseProducing()  # type: ignore[union-attr]
            return
        if len(line) > self.config.max_line:
            self._too_long()
        else:
            self.line_received(line)

    def control_received(self) -> bool:
        """
        A control message with no line in it, from a transport that has
        them (a WebSocket ping: twisted_chat.web.gateway): it counts as a
        line for the idle timer and flood control, so a peer that sends
        them too fast is warned and cut like one that sends lines too fast.

        @return: whether it may be answered.
        """
        return not self.closing and self._count_line()

    def _too_long(self) -> None:
        """Check 1: the line is discarded whole, with one error."""
        if self._count_line():
            self.write(
                wire.error(
                    ErrorCode.TOO_LONG, f"lines may be at most {self.config.max_line} bytes"
                )
            )

    def line_received(self, line: bytes) -> None:
        if self.closing or not self._count_line():
            return
        try:
            text = wire.decode(line)
            split = wire.split_verb(text)
            if split is not None:
                self._dispatch(*split)
        except (LineError, HubError) as e:
            self.write(wire.error(e.code, e.text))

    def _hold(self, outcome: Deferred[Any] | None) -> None:
        """
        Handle no more lines until C{outcome} (a command decided elsewhere)
        fires; its hub error, if any, is answered as if raised at once.
        """
        if outcome is None:
            self._release_login()
            return
        outcome.addErrback(self._command_failed)
        if outcome.called:
            self._release_login()
            return
        self._waiting = True
        outcome.addBoth(self._decided)

    def _command_failed(self, failure: Failure) -> None:
        error = failure.value
        if not isinstance(error, HubError):
            failure.raiseException()
        assert isinstance(error, HubError)
        self.write(wire.error(error.code, error.text))

    def _decided(self, result: object) -> None:
        self._waiting = False
        self._release_login()
        if self._paused_for_answer:
            self._paused_for_answer = False
            if not self.closing:
                self.transport.resumeProducing()  # type: ignore[union-attr]
        if self._buffer and not self.closing:
            self.dataReceived(b"")
        held = self._held
        while held and not self._waiting and not self.closing:
            line = held.popleft()
            self._held_size -= len(line) + 1
            self.message_received(line)
        if self._input_ended and not self._waiting:
            self.readConnectionLost()

    def _dispatch(self, verb: str, rest: str) -> None:
        user = self.user
        if verb in _ACCOUNT_VERBS and self.factory.accounts is None:
            raise LineError(ErrorCode.ACCOUNTS_OFF, "this server has no accounts")
        if user is None:
            if verb not in _BEFORE_READY:
                raise LineError(ErrorCode.NOT_READY, "choose a nickname first: NICK <nick>")
            if verb == "NICK":
                self._nick(rest)
                return
        elif verb == "NICK":
            raise LineError(ErrorCode.ALREADY_READY, f"you are already {user.nick}")
        elif verb == "PASS":
            # chat/1: PASS when no password was asked is not-ready, in every
            # state (online, no password is ever asked).
            raise LineError(ErrorCode.NOT_READY,
                            f"no password was asked for: you are already {user.nick}")
        command = wire.parse_args(verb, rest)
        self._hold(self._HANDLERS[verb](self, command))

    # -- limits --------------------------------------------------------------

    def _count_line(self) -> bool:
        """
        Every complete line resets the idle timer and spends a flood token.
        @return: whether the line may be handled.
        """
        now = self.clock.seconds()
        since, self._last_line = self._last_line, now
        allowed, self._tokens = self.factory.flood.spend(self._tokens, since, now)
        if allowed:
            return True
        self._dropped(
            now,
            f"slow down: at most {self.config.flood_rate:g} lines per second "
            f"(bursts of {self.config.flood_burst}); lines are being dropped",
        )
        return False

    def _dropped(self, now: float, why: str) -> None:
        """
        A line was dropped for flooding: C{ERROR flood} at most once a
        second, and C{BYE flood} once the penalty passes C{--flood-burst},
        this connection's own or its address's (shared by all its
        connections and kept across reconnects: docs/security.md).
        """
        verdict, self._flooding = self.factory.flood.dropped(self._flooding, now)
        limits = self.limits
        if limits is not None and limits.penalty.add(now) > self.config.flood_burst:
            verdict = Dropped.CUT
        if verdict is Dropped.CUT:
            self._close("flood", "too many lines too fast")
        elif verdict is Dropped.WARN:
            self.write(wire.error(ErrorCode.FLOOD, why))

    def _check_idle(self) -> None:
        """
        Runs when the connection may have been silent for C{--idle-timeout};
        each line only records its time, so a busy connection costs no timer
        work per line.
        """
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
            self._set_idle(due)
            return
        self._pinged_at = now
        self.write(wire.line("PING", text=f"idle-{int(now)}"))
        self._set_idle(now + self.config.ping_timeout)

    def _nick_expired(self) -> None:
        self._nick_call = None
        if self.user is None and not self.closing:
            self._close("timeout", f"no nickname after {self.config.nick_timeout:g} seconds")

    # -- commands ------------------------------------------------------------

    def _nick(self, rest: str) -> None:
        try:
            nick = wire.parse_args("NICK", rest).words[0]
        except LineError as e:
            self.write(wire.line("RETRY", "invalid", text=e.text))
            return
        limits = self.limits
        wait = self.factory.addresses.registration_wait(limits)
        if wait:
            assert limits is not None
            self.write(
                wire.error(
                    ErrorCode.FLOOD,
                    f"too many nicks registered from {limits.key} lately; "
                    f"try again in {math.ceil(wait)} s",
                )
            )
            return
        if self.factory.accounts is not None:
            self._hold(self._login().nick(nick))  # it calls admit() once the nick may be used
        else:
            self._hold(self.admit(nick))

    def admit(self, nick: str) -> Deferred[bool]:
        """Go online as C{nick} (true), or answer C{RETRY taken} (false)."""
        limits = self.limits
        registered = self.state.register(
            nick, self, self.address, source=limits.key if limits is not None else ""
        )
        return registered.addCallbacks(self._registered, self._not_registered)

    def _registered(self, user: User) -> bool:
        if self.closing:
            # Decided after the connection closed (cluster mode): its user is
            # the state's to take out (the replica's orphan path), and
            # connection_lost already took it out of the handshake's counts;
            # counting it as registered would free another connection's slot.
            return False
        self.user = user
        self.factory.registered(self)
        if self._nick_call is not None and self._nick_call.active():
            self._nick_call.cancel()
        self._nick_call = None
        return True

    def _not_registered(self, failure: Failure) -> bool:
        if isinstance(failure.value, NickTaken):
            self.write(retry_taken(failure.value.nick))
        elif isinstance(failure.value, StateUnavailable):
            self.write(wire.line(
                "RETRY", "unavailable",
                text="the chat cannot check that nick now (its cluster store is out of "
                "reach); try again in a moment",
            ))
        else:
            failure.raiseException()
        return False

    # -- the rest of what the accounts handshake needs (login.Connection) ---------

    def holder(self, nick: str) -> str | None:
        user = self.factory.hub.online.get(wire.nick_key(nick))
        return user.nick if user is not None else None

    def online_nick(self) -> str | None:
        return self.user.nick if self.user is not None else None

    def close(self, reason: str, text: str) -> None:
        if not self.closing:
            self._close(reason, text)

    def _online(self) -> User:
        assert self.user is not None  # _dispatch lets only NICK, PING... through before
        return self.user

    def evict(self) -> None:
        """Make room in a full handshake pool (see L{ChatFactory.buildProtocol})."""
        if not self.closing:
            self._close("full", "too many connections are still choosing a nick; try again")

    def do_MSG(self, command: wire.Command) -> Outcome:
        user = self._online()
        if user.state is State.LOBBY and not self.factory.addresses.lobby_line(self.limits):
            config = self.config
            self._dropped(
                self.clock.seconds(),
                f"slow down: at most {config.ip_lobby_rate:g} lobby messages per second "
                f"from your address (bursts of {config.ip_lobby_burst}); "
                "lines are being dropped",
            )
            return None
        return self.state.say(user, command.text)

    def do_DM(self, command: wire.Command) -> Outcome:
        return self.state.direct(self._online(), command.words[0], command.text)

    def do_USERS(self, command: wire.Command) -> None:
        self.write(self.factory.roster())

    def do_PAIR(self, command: wire.Command) -> Outcome:
        return self.state.pair(self._online(), command.words[0])

    def do_ACCEPT(self, command: wire.Command) -> Outcome:
        return self.state.accept(self._online(), command.words[0])

    def do_REJECT(self, command: wire.Command) -> Outcome:
        return self.state.reject(self._online(), command.words[0])

    def do_UNPAIR(self, command: wire.Command) -> Outcome:
        return self.state.unpair(self._online())

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

    def _login(self) -> Login:
        """The connection's accounts state, made when first needed."""
        login = self._account
        if login is None:
            accounts = self.factory.accounts
            assert accounts is not None  # _dispatch answers accounts-off first
            login = self._account = accounts.login(self)
        return login

    def _release_login(self) -> None:
        """
        Once online, the accounts state is let go when it holds nothing (no
        password proved, nothing pending): most connections never use it
        again, and one that does (REGISTER) gets a fresh one, which is what
        it would hold anyway (docs/fanout.md, "Memory per connection").
        """
        login = self._account
        if login is not None and self.user is not None and login.idle:
            self._account = None

    def do_PASS(self, command: wire.Command) -> Answer:
        return self._login().password(command.text)

    def do_REGISTER(self, command: wire.Command) -> Answer:
        return self._login().register(command.text)

    def do_PASSWD(self, command: wire.Command) -> Answer:
        return self._login().passwd(command.text)

    def do_BYE(self, command: wire.Command) -> None:
        self.write(wire.line("BYE", "quit"))
        self.hang_up("quit")
        self._leave("quit", clip_text(command.text, self.config.max_quit_text))

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
        "PASS": do_PASS,
        "REGISTER": do_REGISTER,
        "PASSWD": do_PASSWD,
    }


def _help_line(verb: str) -> bytes:
    return wire.line("HELP", text=f"{wire.USAGE[verb]} - {wire.HELP_TEXT[verb]}")


_FULL_HELP = b"".join(_help_line(verb) for verb in wire.HELP_TEXT) + wire.line("HELP")
