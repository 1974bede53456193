"""
The chat/1 session: the commands of a line a connection has framed and let
through its limits (docs/protocol.md), decided by the chat's state
(L{twisted_chat.server.state}).  It knows a connection only through
L{Connection}, and writes nothing but through it (docs/fanout.md, "Module
layout").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from twisted_chat import wire
from twisted_chat.server import logs
from twisted_chat.server.accounts.login import (
    Accounts,
    Answer,
    Login,
    retry_taken,
    unavailable_text,
)
from twisted_chat.server.config import Mode, ServerConfig
from twisted_chat.server.history import clip_text
from twisted_chat.server.hub import NickTaken, State, User
from twisted_chat.server.limits.addresses import Address, AddressBook
from twisted_chat.server.limits.flood import REPLY_BYTES
from twisted_chat.server.state import ChatState, Outcome, StateUnavailable
from twisted_chat.wire import ErrorCode, LineError, Refusal

_log = logs.logger()

__all__ = ["Connection", "Handshake", "Server", "Session", "UserList"]

# A lobby line's or a NICK's wait for its address's budget ended
# (Session._say and Session._judged, Session._nick_allowed).
_LATE = object()

# State.LOBBY as a module global, for Session._say: on Python 3.11 reading an
# Enum's member from its class is slow (see wire._NO_TEXT).
_LOBBY = State.LOBBY

# Verbs allowed before READY; any other known verb is "not-ready".
_BEFORE_READY = frozenset({"NICK", "PASS", "PING", "PONG", "HELP", "BYE"})
# The accounts verbs: "accounts-off" in every state when accounts are off.
_ACCOUNT_VERBS = frozenset({"PASS", "REGISTER", "PASSWD"})
# ERROR internal's text: a command the server itself failed on.
_INTERNAL_TEXT = "the server hit a fault handling that command (it is logged)"


class Connection(Protocol):
    """What the L{Session} needs of a connection (the server's is
    L{twisted_chat.server.protocol.ChatProtocol})."""

    # The hub's user once online (see online()); None before.
    user: User | None
    # The session's own state for this connection while it has some (its
    # L{Handshake}); the connection only holds it.
    handshake: Handshake | None

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
    def held_at(self) -> float | None:
        """While a line held behind a command is handled: when it arrived
        (the lobby budget judges it as of then); None for a line handled as
        it comes."""

    def arrived(self) -> float:
        """When the line being handled, or the line a command being decided
        came from, arrived (the reactor's time): C{held_at} for a line held
        behind a command; for a line handled as it comes, when it was counted
        (now)."""

    @property
    def clock(self) -> IReactorTime: ...

    def write(self, data: bytes) -> None:
        """Send C{data} after anything addressed to the lobby before it."""

    def close(self, reason: str, text: str = "", farewell: str = "") -> None:
        """Say C{BYE reason text}, close, and leave with C{farewell}."""

    def dropped(self, now: float, why: str, limit: str) -> None:
        """A line that arrived at C{now} (L{arrived}) was dropped for
        flooding, over C{limit} (counted here): warn with C{why}, or cut."""

    def charge(self, size: int) -> bool:
        """The line just let through asks for a reply of C{size} bytes:
        whether its flood tokens pay for it (they are spent if so)."""

    def backed_up(self) -> bool:
        """Whether its peer is so far behind reading that private lines to
        it are refused to their senders."""

    def wait_for(self, outcome: Deferred[Any]) -> None:
        """Frame no more lines until C{outcome} fires, then tell
        L{Session.decided} and go on with what arrived meanwhile."""

    def discard_input(self) -> None:
        """The connection is going: handle, and hold, nothing more of what
        it sends (L{twisted_chat.server.limits.heldinput.InputHold.discard})."""

    def online(self, user: User) -> None:
        """The session registered C{user}: the handshake is over."""


class UserList(Protocol):
    """What the session sends of the hub's listener
    (L{twisted_chat.server.lines.LineListener})."""

    def roster(self) -> bytes:
        """The C{USER} lines and the closing C{USERS}."""


class Server(Protocol):
    """What the L{Session} reads of its server (the
    L{twisted_chat.server.factory.ChatFactory})."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def accounts(self) -> Accounts | None:
        """None: accounts are off."""

    @property
    def addresses(self) -> AddressBook: ...

    @property
    def state(self) -> ChatState: ...

    @property
    def lines(self) -> UserList: ...


class Session:
    """
    The chat/1 session of every connection of one server: NICK, then online
    (READY or PAIRED, as the hub says), each framed line answered here.  One
    per server, like the flood rule: what one connection's session holds is
    its L{Handshake}, and only while it has one (docs/fanout.md, "Memory per
    connection").  The server's shared parts are read through the factory.
    """

    def __init__(self, factory: Server) -> None:
        self.factory = factory

    # -- a connection's life ---------------------------------------------------

    def started(self, conn: Connection) -> None:
        """C{conn} is made: a nick is due within --nick-timeout."""
        timeout = self.factory.config.nick_timeout
        if timeout > 0:
            handshake = conn.handshake = Handshake(self, conn)
            handshake.nick_call = conn.clock.callLater(timeout, handshake.nick_expired)

    def stopped(self, conn: Connection) -> None:
        """C{conn} is closing (or online): nothing more is timed, and a
        registration it reserved and has not sent to the state is given back."""
        handshake = conn.handshake
        if handshake is not None:
            handshake.stop()
            self._release(conn)

    def lost(self, conn: Connection) -> None:
        """C{conn} is gone."""
        handshake = conn.handshake
        if handshake is not None:
            self._release(conn)
            if handshake.login is not None:
                handshake.login.lost()

    def decided(self, conn: Connection) -> None:
        """
        A command of C{conn}'s is decided.  Once online, its handshake is let
        go when it holds nothing (no password proved, nothing pending): most
        connections never use it again, and one that does (REGISTER) gets a
        fresh one, which is what it would hold anyway.
        """
        handshake = conn.handshake
        if handshake is None:
            return
        login = handshake.login
        if handshake.reserved and (login is None or login.asked is None):
            # The NICK's attempt ended without a registration (taken, a
            # wrong password, a failed lookup): only a password asked for
            # keeps its reservation.
            self._release(conn)
        if conn.user is not None and (login is None or login.idle):
            conn.handshake = None

    # -- a line ----------------------------------------------------------------

    def line_received(self, conn: Connection, line: bytes) -> None:
        """One chat/1 line C{conn} let through its limits."""
        try:
            text = wire.decode(line)
            said = wire.msg_text(text)
            if said is not None and conn.user is not None:
                # A lobby or pair line, parsed already (the commonest line):
                # its text is all MSG needs, so no Command is made.
                outcome = self._say(conn, said)
            else:
                command = self._command(conn, text)
                if command is None:
                    return
                outcome = self._HANDLERS[command.verb](self, conn, command)
            if outcome is not None or conn.handshake is not None:
                # Answered at once without a handshake (most lines), a
                # command leaves nothing to decide: a call less.
                self._hold(conn, outcome)
        except Refusal as e:
            conn.write(wire.error(e.code, e.text))

    def _command(self, conn: Connection, text: str) -> wire.Command | None:
        """
        The command of a decoded line, checked against C{conn}'s state
        (docs/protocol.md's order: verb, state, arguments); None for a
        blank line, and for a C{NICK} before C{READY}, which it hands to
        the handshake (L{_nick}).
        @raise LineError: the line's C{ERROR}.
        """
        split = wire.split_verb(text)
        if split is None:
            return None
        verb, rest = split
        user = conn.user
        if verb in _ACCOUNT_VERBS and self.factory.accounts is None:
            raise LineError(ErrorCode.ACCOUNTS_OFF, "this server has no accounts")
        if user is None:
            if verb not in _BEFORE_READY:
                raise LineError(ErrorCode.NOT_READY, _not_ready_text(conn))
            if verb == "NICK":
                self._nick(conn, rest)
                return None
        elif verb == "NICK":
            raise LineError(ErrorCode.ALREADY_READY, f"you are already {user.nick}")
        elif verb == "PASS":
            # chat/1: PASS when no password was asked is not-ready, in every
            # state (online, no password is ever asked).
            raise LineError(ErrorCode.NOT_READY,
                            f"no password was asked for: you are already {user.nick}")
        return wire.parse_args(verb, rest)

    def _hold(self, conn: Connection, outcome: Deferred[Any] | None) -> None:
        """
        The command is L{decided} once C{outcome} fires (None: it was
        answered at once); its refusal (a hub error), if any, is answered
        first, as if raised at once.  Until then (a command decided
        elsewhere) no more lines are handled: those that arrive meanwhile
        are handled after both.
        """
        if outcome is None:
            self.decided(conn)
            return
        outcome.addErrback(self._command_failed, conn)
        outcome.addBoth(self._then_decided, conn)
        if not outcome.called:
            conn.wait_for(outcome)

    def _then_decided(self, result: object, conn: Connection) -> object:
        """C{outcome}'s step once it fired: the command is L{decided}."""
        self.decided(conn)
        return result

    def _command_failed(self, failure: Failure, conn: Connection) -> None:
        error = failure.value
        if not isinstance(error, Refusal):
            # A bug, or a store's error of another kind: logged here, as it
            # happens (left in the Deferred, it was logged only when that was
            # collected, or never: the connection's wait for it ends on it).
            # The client is told (a NICK left unanswered would keep it
            # waiting for READY or RETRY for ever), and the connection goes
            # on with its next line: before READY it may send NICK again.
            _log.failure("a command of {address} failed unexpectedly", failure,
                         address=conn.address)
            conn.write(wire.error(ErrorCode.INTERNAL, _INTERNAL_TEXT))
            return
        conn.write(wire.error(error.code, error.text))

    # -- the handshake ---------------------------------------------------------

    def _nick(self, conn: Connection, rest: str) -> None:
        try:
            nick = wire.parse_args("NICK", rest).words[0]
        except LineError as e:
            conn.write(wire.line("RETRY", "invalid", text=e.text))
            return
        self._hold(conn, self._nick_allowed(conn, nick))

    def _nick_allowed(self, conn: Connection, nick: str) -> Deferred[Any] | None:
        """C{nick} is valid: one of its address's registrations reserved
        (L{AddressBook.reserve_registration}), on to the login or the state.
        A connection asked for a password holds one already: a new nick
        abandons the asked one, and takes its reservation."""
        limits = conn.limits
        handshake = conn.handshake
        if handshake is not None and handshake.reserved:
            wait: float | Deferred[None] = 0.0
        else:
            wait = self.factory.addresses.reserve_registration(limits)
        if isinstance(wait, Deferred):
            # Cluster mode: the address's count is being asked for (a round
            # trip, up to budgets.TIMEOUT); the NICK is judged again then,
            # or answered RETRY unavailable if its --redis-wait ends first,
            # as its registration would be.
            due = self.factory.state.deadline(conn)
            if due is not None:
                wait.addTimeout(max(due - conn.clock.seconds(), 0.0), conn.clock,
                                onTimeoutCancel=lambda result, timeout: _LATE)
            return wait.addCallback(self._nick_judged, conn, nick)
        if wait:
            assert limits is not None
            conn.write(
                wire.error(
                    ErrorCode.FLOOD,
                    f"too many nicks registered from {limits.key} lately; "
                    f"try again in {math.ceil(wait)} s",
                )
            )
            return None
        if self.factory.accounts is None:
            return self._admit(conn, nick, reserved=limits is not None)
        if limits is not None:
            # Held until admit() sends it to the state, or given back
            # (decided(), stopped(), lost()).
            self._handshake(conn).reserved = True
        # The login calls admit() once the nick may be used.
        return self._login(conn).nick(nick)

    def _nick_judged(self, result: object, conn: Connection, nick: str
                     ) -> Deferred[Any] | None:
        """The address's count came (or the NICK's wait ended first: L{_LATE})."""
        if conn.closing:
            return None
        if result is _LATE:
            # Answered as a registration that came too late is.
            self._refused(self.factory.state.too_late(registration=True), conn)
            return None
        return self._nick_allowed(conn, nick)

    def admit(self, conn: Connection, nick: str) -> Deferred[bool]:
        """Bring C{conn} online as C{nick} (true), or answer C{RETRY taken}
        (false).  The registration its NICK reserved goes with it: spent if
        the state registers the nick, even for a connection gone meanwhile
        (its JOINED was sent), else given back."""
        handshake = conn.handshake
        reserved = handshake is not None and handshake.reserved
        if handshake is not None:
            handshake.reserved = False
        return self._admit(conn, nick, reserved)

    def _admit(self, conn: Connection, nick: str, reserved: bool) -> Deferred[bool]:
        """L{admit}, C{reserved}: whether a registration was reserved for it.
        A register() that raises at once (no refusal: a hub listener's bug,
        the user undone) fails as one that fails later does: the
        reservation given back, C{ERROR internal} (L{_command_failed}) in
        every mode, the connection kept to send C{NICK} again."""
        limits = conn.limits
        try:
            registered = self.factory.state.register(
                nick, conn, conn.address, source=limits.key if limits is not None else ""
            )
        except Exception:
            registered = fail()
        return registered.addCallbacks(self._registered, self._not_registered,
                                       callbackArgs=(conn,), errbackArgs=(conn, reserved))

    def _registered(self, user: User, conn: Connection) -> bool:
        if conn.closing:
            # Decided after the connection closed (cluster mode): its user is
            # the state's to take out (the replica's orphan path), and
            # connection_lost already took it out of the handshake's counts;
            # counting it as registered would free another connection's slot.
            # Its reserved registration stays spent: its JOINED went out.
            return False
        conn.online(user)
        self.stopped(conn)
        return True

    def _not_registered(self, failure: Failure, conn: Connection, reserved: bool) -> bool:
        if reserved:
            self.factory.addresses.release_registration(conn.limits)
        if not self._refused(failure.value, conn):
            failure.raiseException()
        return False

    def _refused(self, error: BaseException | None, conn: Connection) -> bool:
        """Answer a registration refused by C{error} (false: not a refusal)."""
        if isinstance(error, NickTaken):
            conn.write(retry_taken(error.nick))
        elif isinstance(error, StateUnavailable):
            conn.write(wire.line("RETRY", "unavailable", text=unavailable_text(error.why)))
        else:
            return False
        return True

    def holder(self, nick: str) -> str | None:
        """The nick of the user online as C{nick}, as its owner spelled it."""
        user = self.factory.state.hub.find(nick)
        return user.nick if user is not None else None

    def _handshake(self, conn: Connection) -> Handshake:
        """C{conn}'s handshake, made when first needed."""
        handshake = conn.handshake
        if handshake is None:
            handshake = conn.handshake = Handshake(self, conn)
        return handshake

    def _release(self, conn: Connection) -> None:
        """Give back the registration C{conn}'s NICK reserved, if it holds one."""
        handshake = conn.handshake
        if handshake is not None and handshake.reserved:
            handshake.reserved = False
            self.factory.addresses.release_registration(conn.limits)

    def _login(self, conn: Connection) -> Login:
        """C{conn}'s accounts state, made when first needed."""
        handshake = self._handshake(conn)
        login = handshake.login
        if login is None:
            accounts = self.factory.accounts
            assert accounts is not None  # line_received answers accounts-off first
            login = handshake.login = accounts.login(handshake)
        return login

    # -- commands once online --------------------------------------------------

    def do_MSG(self, conn: Connection, command: wire.Command) -> Outcome:
        return self._say(conn, command.text)

    def _say(self, conn: Connection, text: str, at: float | None = None) -> Outcome:
        """MSG C{text}: to the lobby, or to the partner (L{do_MSG})."""
        user = conn.user
        assert user is not None  # as _online(): a call less on every MSG
        factory = self.factory
        # One server: a held line meant for the pair that ended meanwhile
        # (or for the lobby, its sender paired meanwhile) is "not sent",
        # before any limit judges it.
        state = factory.state
        state.as_meant(user)
        if user.state is _LOBBY:
            due = state.deadline(conn)  # None on one server: nothing waits
            left = 0.0
            if due is not None:
                left = due - conn.clock.seconds()
                if left <= 0:
                    # Held past its wait (a cluster's --redis-wait): answered
                    # "not sent" without spending its address's lobby budget.
                    return fail(state.too_late())
            limits = conn.limits
            # An exempt address (None) has no lobby budget: nothing to ask.
            if limits is None:
                return state.say(user, text)
            if at is None:
                at = conn.held_at  # None unless the line was held: it came now
            allowed = factory.addresses.lobby_line(limits, at)
            if allowed is not True:
                if allowed is not False:
                    # Cluster mode: the address's count is being asked for
                    # (a round trip, up to budgets.TIMEOUT); the line is
                    # judged again then (a held one still as of when it
                    # came), or answered "not sent" if its wait ends first.
                    if due is not None:
                        allowed.addTimeout(left, conn.clock,
                                           onTimeoutCancel=lambda result, timeout: _LATE)
                    return allowed.addCallback(self._judged, conn, text, at)
                config = factory.config
                conn.dropped(
                    conn.arrived() if at is None else at,
                    f"slow down: at most {config.ip_lobby_rate:g} {wire.LOBBY_RATE} "
                    f"(bursts of {config.ip_lobby_burst}); {wire.LINES_DROPPED}",
                    "ip_lobby_rate",
                )
                return None
            outcome = state.say(user, text)
            if outcome is not None:
                # Cluster mode: a line taken back ("not sent": its wait
                # ended, the node's queue was full, Redis lost it) gives
                # its address's lobby token back.
                outcome.addErrback(self._not_said, limits)
            return outcome
        partner = user.partner
        if partner is not None:
            # A pair's MSG is a private line like a DM (chat/1: it "looks
            # like a DM from the partner"), so it is held back alike.
            self._not_backed_up(user, partner.nick, wire.PRIVATE_MESSAGES)
        return state.say(user, text)

    def _not_said(self, failure: Failure, limits: Address) -> Failure:
        error = failure.value
        if isinstance(error, Refusal) and error.code is ErrorCode.UNAVAILABLE:
            self.factory.addresses.lobby_refund(limits)
        return failure

    def _judged(self, result: object, conn: Connection, text: str,
                at: float | None) -> Outcome:
        """The address's count came (or the line's wait ended first: L{_LATE})."""
        if conn.closing:
            return None
        if result is _LATE:
            return fail(self.factory.state.too_late())
        return self._say(conn, text, at)

    def do_DM(self, conn: Connection, command: wire.Command) -> Outcome:
        user = _online(conn)
        nick = command.words[0]
        self._not_backed_up(user, nick, wire.PRIVATE_MESSAGES)
        return self.factory.state.direct(user, nick, command.text)

    def _not_backed_up(self, user: User, nick: str, what: str) -> None:
        """
        A private line (DM, a pair's MSG, INVITE) for a user of this
        process whose peer is more than half of --sendq behind is refused
        to its sender with C{ERROR busy}: otherwise many senders, or one
        partner, each within its own limits, could push the recipient over
        --sendq and get it cut.  In cluster
        mode only the recipient's node knows what it holds for it: senders
        on other nodes are not refused (docs/cluster.md says why).
        """
        target = self.factory.state.hub.find(nick)
        if (target is not None and target is not user and self.factory.state.holds(target)
                and target.conn.backed_up()):
            raise LineError(
                ErrorCode.BUSY,
                f"{target.nick} is not reading fast enough to take more {what}; "
                "try again later",
            )

    def do_USERS(self, conn: Connection, command: wire.Command) -> None:
        roster = self.factory.lines.roster()
        self._charge(conn, roster, "USERS")
        conn.write(roster)

    def _charge(self, conn: Connection, roster: bytes, verb: str) -> None:
        """
        The user list is the one reply bigger than a line that a line can
        ask for again and again: USERS, and PAIR or ACCEPT, since each pair
        that ends sends each side of it the list after UNPAIRED.  Each
        costs the flood tokens of the list's size (docs/security.md,
        "Amplification"), or is answered C{ERROR flood} and not done.
        """
        if not conn.charge(len(roster)):
            config = self.factory.config
            raise LineError(
                ErrorCode.FLOOD,
                f"{wire.list_cost(verb)}{REPLY_BYTES} bytes of the user list "
                f"({len(roster)} bytes now), at most {config.flood_burst}, at "
                f"{config.flood_rate:g} lines per second; try again in a moment",
            )

    def do_PAIR(self, conn: Connection, command: wire.Command) -> Outcome:
        user = _online(conn)
        self._charge(conn, self.factory.lines.roster(), "PAIR")
        self._not_backed_up(user, command.words[0], "invitations")
        return self.factory.state.pair(user, command.words[0])

    def do_ACCEPT(self, conn: Connection, command: wire.Command) -> Outcome:
        user = _online(conn)
        self._charge(conn, self.factory.lines.roster(), "ACCEPT")
        return self.factory.state.accept(user, command.words[0])

    def do_REJECT(self, conn: Connection, command: wire.Command) -> Outcome:
        return self.factory.state.reject(_online(conn), command.words[0])

    def do_UNPAIR(self, conn: Connection, command: wire.Command) -> Outcome:
        return self.factory.state.unpair(_online(conn))

    def do_PING(self, conn: Connection, command: wire.Command) -> None:
        conn.write(wire.line("PONG", text=command.text))

    def do_PONG(self, conn: Connection, command: wire.Command) -> None:
        pass  # it already counted as a line for the idle timer

    def do_HELP(self, conn: Connection, command: wire.Command) -> None:
        accounts = self.factory.accounts
        answers = _HELP[Mode.OFF if accounts is None else accounts.mode]
        if command.words:
            one = answers.verbs.get(command.words[0].upper())
            if one is None:
                raise LineError(ErrorCode.BAD_ARGS, f"no help for {command.words[0]!r}; try HELP")
            conn.write(one)
        else:
            conn.write(answers.full)

    def do_PASS(self, conn: Connection, command: wire.Command) -> Answer:
        return self._login(conn).password(command.text)

    def do_REGISTER(self, conn: Connection, command: wire.Command) -> Answer:
        return self._login(conn).register(command.text)

    def do_PASSWD(self, conn: Connection, command: wire.Command) -> Answer:
        return self._login(conn).passwd(command.text)

    def do_BYE(self, conn: Connection, command: wire.Command) -> None:
        conn.close("quit", farewell=clip_text(command.text, self.factory.config.max_quit_text))

    # Each command's handler: None once it is answered, else a Deferred that
    # fires once it is (Session._hold).
    _HANDLERS: ClassVar[
        dict[str, Callable[[Session, Connection, wire.Command], Deferred[Any] | None]]
    ] = {
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


def _not_ready_text(conn: Connection) -> str:
    """
    The text of C{ERROR not-ready} for a line before C{READY}: what the
    connection can do now.  While a password is asked (C{PASS <nick>}), that
    is C{PASS}, or another nick (a new C{NICK} abandons the asked one).
    """
    handshake = conn.handshake
    login = handshake.login if handshake is not None else None
    asked = login.asked if login is not None else None
    if asked is None:
        return "choose a nickname first: NICK <nick>"
    return (f"the server is waiting for the password of {asked}: send PASS <password>, "
            "or NICK <nick> to choose another nick")


def _online(conn: Connection) -> User:
    user = conn.user
    assert user is not None  # line_received lets only NICK, PING... through before
    return user


class Handshake:
    """
    One connection's session state while it has some: the NICK deadline, and
    the accounts state (L{Login}), made when first needed; let go once online
    with nothing to keep (L{Session.decided}).  It is the L{Login}'s
    L{twisted_chat.server.accounts.login.Connection}.
    """

    __slots__ = ("conn", "login", "nick_call", "reserved", "session")

    def __init__(self, session: Session, conn: Connection) -> None:
        self.session = session
        self.conn = conn
        self.login: Login | None = None
        self.nick_call: IDelayedCall | None = None
        # Whether its NICK holds one of its address's registrations (Session.admit).
        self.reserved = False

    def nick_expired(self) -> None:
        self.nick_call = None
        conn = self.conn
        if conn.user is None and not conn.closing:
            timeout = self.session.factory.config.nick_timeout
            conn.close("timeout", f"no nickname after {timeout:g} seconds")

    def stop(self) -> None:
        """Cancel the NICK deadline."""
        call = self.nick_call
        if call is not None and call.active():
            call.cancel()
        self.nick_call = None

    # -- login.Connection ----------------------------------------------------------

    @property
    def closing(self) -> bool:
        return self.conn.closing

    @property
    def host(self) -> str | None:
        return self.conn.host

    @property
    def address(self) -> str:
        return self.conn.address

    def online_nick(self) -> str | None:
        user = self.conn.user
        return user.nick if user is not None else None

    def holder(self, nick: str) -> str | None:
        return self.session.holder(nick)

    def admit(self, nick: str) -> Deferred[bool]:
        return self.session.admit(self.conn, nick)

    def write(self, data: bytes) -> None:
        self.conn.write(data)

    def close(self, reason: str, text: str) -> None:
        if not self.conn.closing:
            self.conn.close(reason, text)

    def discard_input(self) -> None:
        self.conn.discard_input()


# What HELP says of the accounts verbs where --accounts changes what they do
# (wire.HELP_TEXT is the default, open): under off each is always
# ERROR accounts-off; under required every nick is asked its password, and
# REGISTER is always ERROR registered (the operator makes the accounts).
_ACCOUNTS_HELP: dict[Mode, dict[str, str]] = {
    Mode.OPEN: {},
    Mode.REQUIRED: {
        "PASS": "give your nick's password when the server asks for it (PASS <nick>); "
                "here every nick needs an account and its password",
        "REGISTER": "not on this server: its accounts are made by its operator",
    },
    Mode.OFF: {verb: "not on this server: it has no accounts" for verb in _ACCOUNT_VERBS},
}


class _Help:
    """HELP's answers for one --accounts mode, made once: the whole list
    (one line per command, then a bare HELP) and each verb's own."""

    __slots__ = ("full", "verbs")

    def __init__(self, mode: Mode) -> None:
        texts = {**wire.HELP_TEXT, **_ACCOUNTS_HELP[mode]}
        lines = {verb: wire.line("HELP", text=f"{wire.USAGE[verb]} - {texts[verb]}")
                 for verb in wire.HELP_TEXT}
        end = wire.line("HELP")
        self.full = b"".join(lines.values()) + end
        self.verbs = {verb: line + end for verb, line in lines.items()}


_HELP = {mode: _Help(mode) for mode in Mode}
