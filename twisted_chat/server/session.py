"""
One connection's chat/1 session: the commands of a line the connection has
framed and let through its limits (docs/protocol.md), decided by the chat's
state (L{twisted_chat.server.state}).  It knows its connection only through
L{Connection}, and writes nothing but through it (docs/fanout.md, "Module
layout").
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from twisted_chat import wire
from twisted_chat.server.addresses import Address
from twisted_chat.server.history import clip_text
from twisted_chat.server.hub import HubError, NickTaken, State, User
from twisted_chat.server.login import Answer, Login, retry_taken
from twisted_chat.server.state import Outcome, StateUnavailable
from twisted_chat.wire import ErrorCode, LineError

if TYPE_CHECKING:
    from twisted_chat.server.factory import ChatFactory

__all__ = ["Connection", "Session"]

# Verbs allowed before READY; any other known verb is "not-ready".
_BEFORE_READY = frozenset({"NICK", "PASS", "PING", "PONG", "HELP", "BYE"})
# The accounts verbs: "accounts-off" in every state when accounts are off.
_ACCOUNT_VERBS = frozenset({"PASS", "REGISTER", "PASSWD"})


class Connection(Protocol):
    """What a L{Session} needs of its connection (the server's is
    L{twisted_chat.server.protocol.ChatProtocol})."""

    # The hub's user once online (see online()); None before.
    user: User | None

    @property
    def factory(self) -> ChatFactory:
        """The server's shared parts: its config, state, accounts, addresses."""

    @property
    def closing(self) -> bool:
        """Whether nothing more is written or read."""

    @property
    def address(self) -> str: ...

    @property
    def host(self) -> str | None: ...

    @property
    def limits(self) -> Address | None:
        """The per-address limits it shares (None: exempt, or no IP)."""

    @property
    def clock(self) -> IReactorTime: ...

    def write(self, data: bytes) -> None:
        """Send C{data} after anything addressed to the lobby before it."""

    def close(self, reason: str, text: str = "", farewell: str = "") -> None:
        """Say C{BYE reason text}, close, and leave with C{farewell}."""

    def dropped(self, now: float, why: str) -> None:
        """A line was dropped for flooding: warn with C{why}, or cut."""

    def wait_for(self, outcome: Deferred[Any]) -> None:
        """Frame no more lines until C{outcome} fires, then tell
        L{Session.decided} and go on with what arrived meanwhile."""

    def online(self, user: User) -> None:
        """The session registered C{user}: the handshake is over."""


class Session:
    """
    NICK, then online (READY or PAIRED, as the hub says): each framed line
    is answered here.  It holds its connection, the NICK deadline and the
    accounts state (L{Login}: made when first needed, let go once online with
    nothing to keep; docs/fanout.md, "Memory per connection"), and is the
    L{Login}'s L{twisted_chat.server.login.Connection}.
    """

    __slots__ = ("_nick_call", "conn", "login")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.login: Login | None = None
        self._nick_call: IDelayedCall | None = None

    def started(self) -> None:
        """The connection is made: a nick is due within --nick-timeout."""
        timeout = self.conn.factory.config.nick_timeout
        if timeout > 0:
            self._nick_call = self.conn.clock.callLater(timeout, self._nick_expired)

    def stopped(self) -> None:
        """The connection is closing: nothing more is timed."""
        call = self._nick_call
        if call is not None and call.active():
            call.cancel()
        self._nick_call = None

    def _nick_expired(self) -> None:
        self._nick_call = None
        conn = self.conn
        if conn.user is None and not conn.closing:
            timeout = conn.factory.config.nick_timeout
            conn.close("timeout", f"no nickname after {timeout:g} seconds")

    # -- a line ----------------------------------------------------------------

    def line_received(self, line: bytes) -> None:
        """One chat/1 line the connection let through its limits."""
        conn = self.conn
        try:
            text = wire.decode(line)
            split = wire.split_verb(text)
            if split is None:
                return
            verb, rest = split
            user = conn.user
            if verb in _ACCOUNT_VERBS and conn.factory.accounts is None:
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
        except (LineError, HubError) as e:
            conn.write(wire.error(e.code, e.text))

    def _hold(self, outcome: Deferred[Any] | None) -> None:
        """
        Handle no more lines until C{outcome} (a command decided elsewhere)
        fires; its hub error, if any, is answered as if raised at once.
        """
        if outcome is None:
            self.decided()
            return
        outcome.addErrback(self._command_failed)
        if outcome.called:
            self.decided()
            return
        self.conn.wait_for(outcome)

    def _command_failed(self, failure: Failure) -> None:
        error = failure.value
        if not isinstance(error, HubError):
            failure.raiseException()
        assert isinstance(error, HubError)
        self.conn.write(wire.error(error.code, error.text))

    def decided(self) -> None:
        """
        A command is decided.  Once online, the accounts state is let go when
        it holds nothing (no password proved, nothing pending): most
        connections never use it again, and one that does (REGISTER) gets a
        fresh one, which is what it would hold anyway.
        """
        login = self.login
        if login is not None and self.conn.user is not None and login.idle:
            self.login = None

    def lost(self) -> None:
        """The connection is gone."""
        if self.login is not None:
            self.login.lost()

    # -- the handshake ---------------------------------------------------------

    def _nick(self, rest: str) -> None:
        conn = self.conn
        try:
            nick = wire.parse_args("NICK", rest).words[0]
        except LineError as e:
            conn.write(wire.line("RETRY", "invalid", text=e.text))
            return
        limits = conn.limits
        wait = conn.factory.addresses.registration_wait(limits)
        if wait:
            assert limits is not None
            conn.write(
                wire.error(
                    ErrorCode.FLOOD,
                    f"too many nicks registered from {limits.key} lately; "
                    f"try again in {math.ceil(wait)} s",
                )
            )
            return
        if conn.factory.accounts is not None:
            self._hold(self._login().nick(nick))  # it calls admit() once the nick may be used
        else:
            self._hold(self.admit(nick))

    def admit(self, nick: str) -> Deferred[bool]:
        """Go online as C{nick} (true), or answer C{RETRY taken} (false)."""
        conn = self.conn
        limits = conn.limits
        registered = conn.factory.state.register(
            nick, conn, conn.address, source=limits.key if limits is not None else ""
        )
        return registered.addCallbacks(self._registered, self._not_registered)

    def _registered(self, user: User) -> bool:
        if self.conn.closing:
            # Decided after the connection closed (cluster mode): its user is
            # the state's to take out (the replica's orphan path), and
            # connection_lost already took it out of the handshake's counts;
            # counting it as registered would free another connection's slot.
            return False
        self.conn.online(user)
        self.stopped()
        return True

    def _not_registered(self, failure: Failure) -> bool:
        if isinstance(failure.value, NickTaken):
            self.conn.write(retry_taken(failure.value.nick))
        elif isinstance(failure.value, StateUnavailable):
            self.conn.write(wire.line(
                "RETRY", "unavailable",
                text="the chat cannot check that nick now (its cluster store is out of "
                "reach); try again in a moment",
            ))
        else:
            failure.raiseException()
        return False

    # -- the rest of what the accounts handshake needs (login.Connection) ---------

    @property
    def closing(self) -> bool:
        return self.conn.closing

    @property
    def host(self) -> str | None:
        return self.conn.host

    @property
    def address(self) -> str:
        return self.conn.address

    def holder(self, nick: str) -> str | None:
        user = self.conn.factory.hub.online.get(wire.nick_key(nick))
        return user.nick if user is not None else None

    def online_nick(self) -> str | None:
        user = self.conn.user
        return user.nick if user is not None else None

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    def close(self, reason: str, text: str) -> None:
        if not self.conn.closing:
            self.conn.close(reason, text)

    def _login(self) -> Login:
        """The connection's accounts state, made when first needed."""
        login = self.login
        if login is None:
            accounts = self.conn.factory.accounts
            assert accounts is not None  # line_received answers accounts-off first
            login = self.login = accounts.login(self)
        return login

    # -- commands once online --------------------------------------------------

    def _online(self) -> User:
        user = self.conn.user
        assert user is not None  # line_received lets only NICK, PING... through before
        return user

    def do_MSG(self, command: wire.Command) -> Outcome:
        user = self._online()
        conn = self.conn
        factory = conn.factory
        if user.state is State.LOBBY and not factory.addresses.lobby_line(conn.limits):
            config = factory.config
            conn.dropped(
                conn.clock.seconds(),
                f"slow down: at most {config.ip_lobby_rate:g} lobby messages per second "
                f"from your address (bursts of {config.ip_lobby_burst}); "
                "lines are being dropped",
            )
            return None
        return factory.state.say(user, command.text)

    def do_DM(self, command: wire.Command) -> Outcome:
        return self.conn.factory.state.direct(self._online(), command.words[0], command.text)

    def do_USERS(self, command: wire.Command) -> None:
        self.conn.write(self.conn.factory.roster())

    def do_PAIR(self, command: wire.Command) -> Outcome:
        return self.conn.factory.state.pair(self._online(), command.words[0])

    def do_ACCEPT(self, command: wire.Command) -> Outcome:
        return self.conn.factory.state.accept(self._online(), command.words[0])

    def do_REJECT(self, command: wire.Command) -> Outcome:
        return self.conn.factory.state.reject(self._online(), command.words[0])

    def do_UNPAIR(self, command: wire.Command) -> Outcome:
        return self.conn.factory.state.unpair(self._online())

    def do_PING(self, command: wire.Command) -> None:
        self.conn.write(wire.line("PONG", text=command.text))

    def do_PONG(self, command: wire.Command) -> None:
        pass  # it already counted as a line for the idle timer

    def do_HELP(self, command: wire.Command) -> None:
        if command.words:
            verb = command.words[0].upper()
            if verb not in wire.HELP_TEXT:
                raise LineError(ErrorCode.BAD_ARGS, f"no help for {command.words[0]!r}; try HELP")
            self.conn.write(_help_line(verb) + wire.line("HELP"))
        else:
            self.conn.write(_FULL_HELP)

    def do_PASS(self, command: wire.Command) -> Answer:
        return self._login().password(command.text)

    def do_REGISTER(self, command: wire.Command) -> Answer:
        return self._login().register(command.text)

    def do_PASSWD(self, command: wire.Command) -> Answer:
        return self._login().passwd(command.text)

    def do_BYE(self, command: wire.Command) -> None:
        conn = self.conn
        conn.close("quit", farewell=clip_text(command.text, conn.factory.config.max_quit_text))

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
