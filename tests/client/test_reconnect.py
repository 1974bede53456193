"""
Reconnection on a terminal (L{twisted_chat.client.reconnect}): the backoff,
which endings reconnect, and the new connection's login, each connection a
L{ChatClient} on a L{StringTransport}, the time a L{Clock}.
"""

from __future__ import annotations

import time

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_chat.client.liveness import Liveness
from twisted_chat.client.protocol import ChatClient
from twisted_chat.client.reconnect import Reconnecting, backoff_delay, should_reconnect
from twisted_chat.client.session import Outcome

from .helpers import NOW, TS, Screen

LOST = Outcome(1, "The connection to chat.test:7000 was lost.")
SHUTDOWN = Outcome(1, "The server is shutting down.")


# -- the backoff and the decision (pure) -----------------------------------------


def test_the_backoff_is_the_web_pages() -> None:
    # 1, 2, 4, 8, 16, then 30 s (app.js scheduleReconnect), without jitter.
    assert [backoff_delay(n, 0.5) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_the_jitter_is_a_quarter_either_way() -> None:
    assert backoff_delay(0, 0.0) == 0.75
    assert backoff_delay(2, 0.0) == 3.0
    assert backoff_delay(5, 0.999999) == pytest.approx(37.5, abs=1e-4)
    assert backoff_delay(1000, 0.5) == 30  # no overflow for a long outage


@pytest.mark.parametrize(
    ("joined", "rejoining", "user_left", "reason", "expected"),
    [
        (True, False, False, "shutdown", True),
        (True, False, False, None, True),  # the connection was lost
        (True, False, False, "timeout", True),  # the server's ping timeout
        (True, False, False, "flood", True),  # as the web page
        (True, False, False, "quit", False),  # our own BYE answered
        (True, False, True, None, False),  # Ctrl-C, /quit, Ctrl-D
        (False, False, False, None, False),  # the first connection never got in
        (False, False, False, "full", False),
        (False, True, False, None, True),  # a reconnection refused or lost: again
        (False, True, False, "full", True),
        (False, True, False, "shutdown", True),
        (False, True, False, "timeout", False),  # a nick prompt left open
        (False, True, False, "flood", False),  # too many failed logins
        (False, True, True, None, False),
    ],
)
def test_which_endings_reconnect(
    joined: bool, rejoining: bool, user_left: bool, reason: str | None, expected: bool
) -> None:
    assert should_reconnect(
        joined=joined, rejoining=rejoining, user_left=user_left, bye_reason=reason
    ) is expected


# -- the session -------------------------------------------------------------------


class Harness:
    """A L{Reconnecting} whose connections are L{StringTransport}s."""

    def __init__(self, nick: str | None = "alice", enabled: bool = True) -> None:
        self.clock = Clock()
        self.screen = Screen()
        self.clients: list[ChatClient] = []
        self.transports: list[StringTransport] = []
        self.refuse = False  # the next connections fail
        self.outcomes: list[Outcome] = []
        self.draws = [0.5]  # the jitter's draws (the last one repeats)
        self.session = Reconnecting(
            self.clock,
            self.screen,
            self._make,
            self._connect,
            nick=nick,
            enabled=enabled,
            draw=lambda: self.draws.pop(0) if len(self.draws) > 1 else self.draws[0],
        )
        self.session.finished.addCallback(self.outcomes.append)
        self.session.start()

    def _make(
        self, nick: str | None, rejoin: bool, password: tuple[str, str] | None
    ) -> ChatClient:
        client = ChatClient(
            self.screen,
            nick=nick,
            interactive=True,
            server="chat.test:7000",
            clock=self.clock,
            now=lambda: NOW,
            localtime=time.gmtime,
            answer_wait=Liveness.ANSWER_WAIT,
            rejoin=rejoin,
            kept_password=password,
        )
        self.clients.append(client)
        return client

    def _connect(self, client: ChatClient) -> None:
        if self.refuse:
            client.connect_failed(Failure(ConnectionRefusedError()))
            return
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 7000))
        self.transports.append(transport)
        client.makeConnection(transport)

    @property
    def client(self) -> ChatClient:
        return self.clients[-1]

    def receive(self, *lines: str) -> None:
        for line in lines:
            self.client.dataReceived(line.encode("utf-8") + b"\r\n")

    def sent(self) -> list[str]:
        transport = self.transports[-1]
        data = transport.value()
        transport.clear()
        return [line.decode("utf-8") for line in data.split(b"\r\n")[:-1]]

    def lose(self) -> None:
        self.client.connectionLost(Failure(ConnectionDone()))

    def join(self, nick: str = "alice") -> None:
        self.receive("HELLO chat/1 test", "NICK")
        assert self.sent() == [f"NICK {nick}"]
        self.receive(f"READY {nick}", f"USER {nick} lobby", "USERS 1")


def test_a_server_restart_reconnects_with_the_same_nick() -> None:
    h = Harness()
    h.join()
    h.screen.take()
    h.receive("BYE shutdown")
    h.lose()
    assert h.outcomes == []  # the session goes on
    assert h.screen.take() == [
        "! The server is shutting down.",
        "* Reconnecting in 1 s; /reconnect tries now, /quit leaves.",
    ]
    assert h.screen.prompt == "(not connected) > "
    assert len(h.clients) == 1
    h.clock.advance(0.99)
    assert len(h.clients) == 1
    h.clock.advance(0.02)
    assert len(h.clients) == 2
    assert h.screen.take() == ["* Reconnecting..."]
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]  # not asked again
    h.receive("READY alice", f"HISTORY {TS} bob said this before", "USER alice lobby", "USERS 1")
    shown = h.screen.take()
    assert "* Reconnected: you are back in the lobby as alice." in shown
    assert "* Recent messages in the lobby:" in shown
    assert h.screen.prompt == "alice> "
    h.client.user_line("hello again")
    assert h.sent() == ["MSG hello again"]


def test_a_lost_connection_reconnects_and_says_what_was_lost() -> None:
    h = Harness()
    h.join()
    h.session.user_line("one")
    h.session.user_line("two")
    assert h.sent() == ["MSG one", "MSG two"]
    h.lose()  # before the server's copies: they may not have arrived
    shown = h.screen.take()
    assert shown[-2] == (
        "! The connection to chat.test:7000 was lost. None of the 2 messages sent was "
        "confirmed by the server."
    )
    assert shown[-1] == "* Reconnecting in 1 s; /reconnect tries now, /quit leaves."


def test_the_backoff_grows_while_the_server_is_away_and_resets_once_back() -> None:
    h = Harness()
    h.join()
    h.lose()
    h.refuse = True
    delays = []
    for _ in range(7):
        delays.append(h.session._timer.getTime() - h.clock.seconds())  # type: ignore[union-attr]
        h.clock.advance(delays[-1])
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert h.outcomes == []
    h.refuse = False
    h.clock.advance(30)
    h.join()
    h.lose()
    assert h.session._timer.getTime() - h.clock.seconds() == 1  # type: ignore[union-attr]


def test_the_wait_has_jitter() -> None:
    h = Harness()
    h.draws = [0.0]
    h.join()
    h.lose()
    assert h.session._timer.getTime() - h.clock.seconds() == 0.75  # type: ignore[union-attr]


def test_lines_typed_while_disconnected_are_not_sent_later() -> None:
    h = Harness()
    h.join()
    h.lose()
    h.screen.take()
    h.clock.advance(0.5)
    h.session.user_line("are you there?")
    assert h.screen.take() == [
        "! Not connected: that line was not sent (Up brings it back). Reconnecting in "
        "1 s; /reconnect tries now, /quit leaves."
    ]
    h.clock.advance(1)
    # Connecting again, not in yet: still not taken.
    h.session.user_line("still there?")
    assert h.screen.take()[-1].startswith("! Not connected: that line was not sent")
    h.join()
    assert h.sent() == []  # neither line went to the new session
    h.session.user_line("now")
    assert h.sent() == ["MSG now"]


def test_reconnect_now() -> None:
    h = Harness()
    h.join()
    h.lose()
    h.refuse = True
    h.clock.advance(1)  # refused: next in 2 s
    h.session.user_line("/reconnect")
    assert len(h.clients) == 3  # at once
    assert h.clock.getDelayedCalls()[0].getTime() - h.clock.seconds() == 4  # the next in 4


def test_quit_while_waiting_leaves_with_how_the_connection_ended() -> None:
    h = Harness()
    h.join()
    h.receive("BYE shutdown")
    h.lose()
    h.session.user_line("/quit")
    assert h.outcomes == [SHUTDOWN]
    assert not h.clock.getDelayedCalls()


def test_ctrl_c_while_waiting_leaves() -> None:
    h = Harness()
    h.join()
    h.lose()
    h.session.interrupt()
    assert h.outcomes == [LOST]
    assert not h.clock.getDelayedCalls()


def test_the_users_quit_does_not_reconnect() -> None:
    h = Harness()
    h.join()
    h.session.user_line("/quit bye")
    assert h.sent() == ["BYE bye"]
    h.receive("BYE quit")
    h.lose()
    assert h.outcomes == [Outcome(0)]
    assert len(h.clients) == 1


def test_a_lost_connection_after_ctrl_c_does_not_reconnect() -> None:
    h = Harness()
    h.join()
    h.session.interrupt()
    h.lose()  # before the server's answer
    assert len(h.outcomes) == 1
    assert len(h.clients) == 1


def test_without_reconnection_the_first_loss_ends_the_session() -> None:
    h = Harness(enabled=False)
    h.join()
    h.receive("BYE shutdown")
    h.lose()
    assert h.outcomes == [SHUTDOWN]
    assert not h.clock.getDelayedCalls()


def test_a_first_connection_that_never_got_in_does_not_reconnect() -> None:
    h = Harness()
    h.receive("HELLO chat/1 test", "NICK")
    h.lose()
    assert h.outcomes == [LOST]


def test_a_nick_prompt_left_open_on_a_reconnection_ends_the_session() -> None:
    h = Harness()
    h.join()
    h.lose()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test", "NICK")
    h.receive("RETRY taken alice is online")  # the old connection is still held
    assert h.screen.prompt == "nickname: "  # the usual RETRY flow
    h.receive("BYE timeout")
    h.lose()
    assert len(h.outcomes) == 1
    assert h.outcomes[0].code == 1


def test_a_pair_ended_by_the_loss_is_said() -> None:
    h = Harness()
    h.join()
    h.receive("PAIRED bob")
    h.screen.take()
    h.lose()
    assert (
        "* Your private conversation with bob ended: the connection to the server was lost."
        in h.screen.take()
    )
    assert h.screen.prompt == "(not connected) > "


def _login_with_password(h: Harness, password: str = "correct horse") -> None:
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive("PASS alice")
    assert h.screen.secret_prompt == "password for alice: "
    h.session.secret_line(password)
    assert h.sent() == [f"PASS {password}"]
    h.receive("READY alice", "USERS 0")


def _back_and_asked(h: Harness) -> None:
    """The connection is lost; the next one asks for alice's password."""
    h.lose()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test", "NICK", "PASS alice")


def test_the_password_typed_this_session_answers_pass_again() -> None:
    h = Harness()
    _login_with_password(h)
    h.lose()
    h.clock.advance(1)
    h.screen.take()
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive("PASS alice")
    assert h.sent() == ["PASS correct horse"]
    assert h.screen.secret_prompt is None
    assert "* Sending the password you typed for alice this session." in h.screen.take()
    h.receive("READY alice")
    assert "* Reconnected: you are back in the lobby as alice." in h.screen.take()


def test_a_kept_password_refused_is_asked_for_and_not_sent_again() -> None:
    h = Harness()
    _login_with_password(h)
    _back_and_asked(h)
    assert h.sent() == ["NICK alice", "PASS correct horse"]
    h.receive("RETRY bad-password wrong password")  # changed meanwhile
    assert h.sent() == ["NICK alice"]
    h.receive("PASS alice")
    assert h.sent() == []
    assert h.screen.secret_prompt == "password for alice: "
    h.session.secret_line("new one here")
    assert h.sent() == ["PASS new one here"]
    h.receive("READY alice")
    _back_and_asked(h)
    assert h.sent() == ["NICK alice", "PASS new one here"]  # the one that got in


def test_no_password_is_kept_without_one_typed() -> None:
    h = Harness()
    h.join()
    _back_and_asked(h)  # registered meanwhile
    assert h.sent() == ["NICK alice"]
    assert h.screen.secret_prompt == "password for alice: "


def test_a_password_registered_this_session_answers_pass() -> None:
    h = Harness()
    h.join()
    h.session.user_line("/register")
    h.session.secret_line("my new secret")
    h.session.secret_line("my new secret")
    assert h.sent() == ["REGISTER my new secret"]
    h.receive("REGISTERED alice")
    _back_and_asked(h)
    assert h.sent() == ["NICK alice", "PASS my new secret"]


def test_a_refused_kept_password_is_not_tried_on_the_next_connection() -> None:
    h = Harness()
    _login_with_password(h)
    _back_and_asked(h)
    assert h.sent() == ["NICK alice", "PASS correct horse"]
    h.receive("RETRY bad-password wrong password", "PASS alice")
    assert h.sent() == ["NICK alice"]
    h.lose()  # at the open prompt: what is typed now is swallowed until Enter
    h.session.secret_line("")
    h.clock.advance(2)
    h.receive("HELLO chat/1 test", "NICK", "PASS alice")
    assert h.sent() == ["NICK alice"]  # the refused one is not sent again
    assert h.screen.secret_prompt == "password for alice: "


def test_the_kept_password_is_dropped_when_another_nick_joins() -> None:
    h = Harness()
    _login_with_password(h)
    h.lose()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test", "NICK", "RETRY taken alice is online")
    assert h.sent() == ["NICK alice"]
    h.session.user_line("alice2")
    assert h.sent() == ["NICK alice2"]
    h.receive("READY alice2")
    assert h.client.kept_password is None
    h.lose()
    assert h.session.password is None
