"""
The chat/1 session (twisted_chat.server.session) without a transport: the
factory's L{Session} (a real L{ChatFactory}, its hub and state, on a
L{Clock}) with stand-ins for connections, through the L{Connection}
interface.  What the session asks of a connection is recorded; nothing here
frames bytes.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from tests.harness import QUIET
from twisted_chat import wire
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.factory import ChatFactory, hub_settings
from twisted_chat.server.hub import Hub, HubError, User
from twisted_chat.server.session import Handshake
from twisted_chat.server.state import LocalState, Outcome
from twisted_chat.wire import ErrorCode


class StandIn:
    """A L{twisted_chat.server.session.Connection} that records what it is asked."""

    def __init__(self, factory: ChatFactory, host: str = "192.0.2.7") -> None:
        self.session = factory.session
        self.clock: Clock = factory.reactor
        self.user: User | None = None
        self.handshake: Handshake | None = None
        self.closing = False
        self.host = host
        self.address = f"{host}:40000"
        self.limits = factory.addresses.admit(host)
        self.held_at: float | None = None
        self.written: list[bytes] = []
        self.delivered: list[bytes] = []  # the factory's READY block, the fan-out's lines
        self.closed: list[tuple[str, str, str]] = []
        self.dropped_lines: list[tuple[float, str, str]] = []
        self.waiting: list[Deferred[Any]] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def deliver(self, data: bytes) -> None:
        self.delivered.append(data)

    def deliver_parts(self, parts: list[bytes]) -> None:
        self.delivered.append(b"".join(parts))

    def write_parts(self, parts: list[bytes]) -> None:
        self.written.append(b"".join(parts))

    def close(self, reason: str, text: str = "", farewell: str = "") -> None:
        self.closed.append((reason, text, farewell))
        self.closing = True

    def dropped(self, now: float, why: str, limit: str) -> None:
        self.dropped_lines.append((now, why, limit))

    def charge(self, size: int) -> bool:
        return True

    def backed_up(self) -> bool:
        return False

    def wait_for(self, outcome: Deferred[Any]) -> None:
        self.waiting.append(outcome)

    def arrived(self) -> float:
        return self.clock.seconds() if self.held_at is None else self.held_at

    def online(self, user: User) -> None:
        self.user = user

    def send(self, *lines: str) -> None:
        """The connection framed C{lines} and let them through its limits."""
        for line in lines:
            self.session.line_received(self, line.encode())

    def lines(self) -> list[str]:
        """What was written since the last call, as lines without CRLF."""
        raw, self.written = b"".join(self.written), []
        return raw.decode().split("\r\n")[:-1]


def factory(state: Any = None, **config: Any) -> ChatFactory:
    clock = Clock()
    clock.advance(1_700_000_000)
    # direct_send off: the fan-out writes to each member through deliver().
    settings = {**QUIET, "direct_send": False, **config}
    return ChatFactory(ServerConfig(**settings), clock, state=state)


def online(chat: ChatFactory, nick: str) -> StandIn:
    conn = StandIn(chat)
    conn.send(f"NICK {nick}")
    assert conn.user is not None and conn.user.nick == nick
    return conn


def test_before_nick_only_the_handshake_verbs_are_answered() -> None:
    conn = StandIn(factory())
    conn.send("MSG hello", "PING t1", "REGISTER secret")
    assert conn.lines() == [
        "ERROR not-ready choose a nickname first: NICK <nick>",
        "PONG t1",
        "ERROR accounts-off this server has no accounts",
    ]
    assert conn.user is None and conn.closed == [] and conn.waiting == []


def test_nick_goes_online_through_the_connection() -> None:
    chat = factory()
    conn = StandIn(chat)
    conn.send("NICK alice")
    assert conn.user is not None and conn.user.nick == "alice"
    assert conn.user.conn is conn, "the hub's user is the connection"
    assert chat.state.hub.online["alice"] is conn.user
    assert conn.delivered[0].startswith(b"READY alice\r\n")
    conn.send("NICK other")
    assert conn.lines() == ["ERROR already-ready you are already alice"]


def test_a_taken_nick_is_answered_retry() -> None:
    chat = factory()
    online(chat, "alice")
    conn = StandIn(chat)
    conn.send("NICK ALICE")
    assert conn.user is None
    assert conn.lines() == ["RETRY taken alice is online already"]


def test_the_nick_deadline_closes_through_the_connection() -> None:
    chat = factory(nick_timeout=30.0)
    conn = StandIn(chat)
    conn.session.started(conn)
    chat.reactor.advance(29.9)
    assert conn.closed == []
    chat.reactor.advance(0.1)
    assert conn.closed == [("timeout", "no nickname after 30 seconds", "")]
    assert chat.reactor.getDelayedCalls() == []


def test_going_online_ends_the_nick_deadline() -> None:
    chat = factory(nick_timeout=30.0)
    conn = StandIn(chat)
    conn.session.started(conn)
    assert conn.handshake is not None and conn.handshake.nick_call is not None
    conn.send("NICK alice")
    assert conn.handshake is None, "nothing is held for a connection once online"
    chat.reactor.advance(0)  # the fan-out's turn (JOINED alice)
    assert chat.reactor.getDelayedCalls() == []
    chat.reactor.advance(31)
    assert conn.closed == []


def test_stopped_cancels_the_nick_deadline() -> None:
    chat = factory(nick_timeout=30.0)
    conn = StandIn(chat)
    conn.session.started(conn)
    conn.session.stopped(conn)
    assert chat.reactor.getDelayedCalls() == []


def test_no_nick_deadline_no_handshake() -> None:
    """Without --nick-timeout and accounts, no connection's session holds anything."""
    chat = factory()
    conn = StandIn(chat)
    conn.session.started(conn)
    assert conn.handshake is None
    conn.send("NICK alice")
    assert conn.handshake is None


def test_bye_closes_with_the_clipped_farewell() -> None:
    chat = factory(max_quit_text=5)
    conn = online(chat, "alice")
    conn.send("BYE ééé bye")
    # The connection writes BYE quit itself; the hub hears the clipped text.
    assert conn.closed == [("quit", "", "éé")]
    assert conn.lines() == []


def test_online_commands_are_written_through_the_connection() -> None:
    chat = factory()
    conn = online(chat, "alice")
    conn.send("USERS", "HELP PING", "HELP NOPE", "PASS secret")
    assert conn.lines() == [
        "USER alice lobby",
        "USERS 1",
        f"HELP {wire.USAGE['PING']} - {wire.HELP_TEXT['PING']}",
        "HELP",
        "ERROR bad-args no help for 'NOPE'; try HELP",
        "ERROR accounts-off this server has no accounts",
    ]


def test_a_lobby_line_over_the_address_limit_goes_to_flood_control() -> None:
    chat = factory(ip_lobby_rate=1.0, ip_lobby_burst=1)
    conn = online(chat, "alice")
    conn.send("MSG one")
    assert conn.dropped_lines == []
    conn.send("MSG two")
    assert conn.dropped_lines == [(
        chat.reactor.seconds(),
        "slow down: at most 1 lobby messages per second from your address (bursts of 1); "
        "lines are being dropped",
        "ip_lobby_rate",
    )]
    assert conn.lines() == []


class Deciding(LocalState):
    """A state whose lobby lines are decided later (as a cluster's are)."""

    def __init__(self, chat: ChatFactory) -> None:
        super().__init__(Hub(chat.reactor, chat.history, chat.lines, hub_settings(chat.config)))
        self.said: list[Deferred[None]] = []

    def say(self, user: User, text: str) -> Outcome:
        outcome: Deferred[None] = Deferred()
        self.said.append(outcome)
        return outcome


def test_a_command_decided_elsewhere_holds_the_connection() -> None:
    chat = factory(state=Deciding)
    state = chat.state
    assert isinstance(state, Deciding)
    conn = online(chat, "alice")
    conn.send("MSG later")
    (outcome,) = state.said
    assert conn.waiting == [outcome], "the connection holds its later lines"
    outcome.errback(HubError(ErrorCode.BAD_ARGS, "decided against"))
    assert conn.lines() == ["ERROR bad-args decided against"]


def test_a_command_decided_at_once_does_not_hold() -> None:
    chat = factory()
    conn = online(chat, "alice")
    conn.send("MSG now")
    assert conn.waiting == []

