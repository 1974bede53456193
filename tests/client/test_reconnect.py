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
from twisted_chat.client.lobbyview import REMEMBERED, ShownLobby
from twisted_chat.client.login import NickTries
from twisted_chat.client.pace import BURST, RATE
from twisted_chat.client.protocol import ChatClient
from twisted_chat.client.reconnect import Reconnecting, backoff_delay, should_reconnect
from twisted_chat.client.session import Outcome, State

from .helpers import NOW, TS, Screen, session

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


@pytest.mark.parametrize("rejoining", [True, False])
def test_a_nick_timeout_while_our_nick_is_waited_for_reconnects(rejoining: bool) -> None:
    """On a reconnection, and on the first connection too (a person held
    back at the start by the server's wait is not let go)."""
    kind = {"joined": False, "rejoining": rejoining, "user_left": False, "bye_reason": "timeout"}
    assert should_reconnect(**kind, waiting_for_nick=True) is True  # type: ignore[arg-type]
    assert should_reconnect(**kind, waiting_for_nick=False) is False  # type: ignore[arg-type]
    for reason in (None, "flood", "full"):  # the first connection's other ends: as before
        assert should_reconnect(
            joined=False, rejoining=False, user_left=False, bye_reason=reason,
            waiting_for_nick=True,
        ) is False


# -- the session -------------------------------------------------------------------


class Harness:
    """A L{Reconnecting} whose connections are L{StringTransport}s."""

    def __init__(self, nick: str | None = "alice", enabled: bool = True) -> None:
        self.clock = Clock()
        self.screen = Screen()
        self.clients: list[ChatClient] = []
        self.transports: list[StringTransport] = []
        self.refuse = False  # the next connections fail
        self.hold = False  # the next connections stay connecting (none made yet)
        self.cancelled = 0  # connections given up while connecting
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
        self,
        nick: str | None,
        *,
        joined_as: str | None,
        password: tuple[str, str] | None,
        lobby_shown: ShownLobby,
        nick_tries: NickTries,
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
            joined_as=joined_as,
            kept_password=password,
            lobby_shown=lobby_shown,
            nick_tries=nick_tries,
        )
        self.clients.append(client)
        return client

    def _connect(self, client: ChatClient) -> None:
        if self.hold:
            client.cancel_connect = self._cancel
            return
        if self.refuse:
            client.connect_failed(Failure(ConnectionRefusedError()))
            return
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 7000))
        self.transports.append(transport)
        client.makeConnection(transport)

    def _cancel(self) -> None:
        self.cancelled += 1

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
        "confirmed by the server: “one”, “two”."
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


def test_reconnect_while_connected_says_so_and_keeps_the_connection() -> None:
    h = Harness()
    h.join()
    h.screen.take()
    h.session.user_line("/reconnect")
    assert h.screen.take() == [
        "* You are connected: /reconnect only skips the wait once the connection is lost."
    ]
    assert h.sent() == [] and len(h.clients) == 1
    assert not h.transports[-1].disconnecting


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


def _reconnect_and_refuse(h: Harness, retry: str) -> None:
    """Joined, lost, and the reconnection's NICK alice answered with C{retry}."""
    h.join()
    h.lose()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.screen.take()
    h.receive(retry)


def _reconnect_to_a_taken_nick(h: Harness) -> None:
    _reconnect_and_refuse(h, "RETRY taken alice is online")  # the old connection is held


def _sent_again_after(h: Harness, wait: float) -> None:
    """No prompt: the same NICK goes by itself C{wait} seconds later."""
    assert h.screen.prompt != "nickname: "
    h.clock.advance(wait - 0.1)
    assert h.sent() == []
    h.clock.advance(0.1)
    assert h.sent() == ["NICK alice"]


def _next_connection_after_the_nick_timeout(h: Harness, nick: str = "alice") -> None:
    """The server's --nick-timeout ends the first reconnection while the
    nick is waited for: not a prompt left open, so the next one asks for it."""
    h.receive("BYE timeout")
    h.lose()
    assert h.outcomes == []
    h.clock.advance(2)
    assert len(h.clients) == 3
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == [f"NICK {nick}"]


def test_a_taken_nick_on_a_reconnection_is_sent_again_every_3_seconds() -> None:
    h = Harness()
    _reconnect_to_a_taken_nick(h)
    assert h.screen.take() == [
        "* The nickname alice is already taken by someone online. It may be your old "
        "connection, until the server notices it is gone: sending alice again every 3 "
        "seconds (at most 40 times)."
    ]
    _sent_again_after(h, 3)
    h.receive("RETRY taken alice is online")
    assert h.screen.take() == []  # said once
    h.clock.advance(3)
    assert h.sent() == ["NICK alice"]
    h.receive("READY alice", "USER alice lobby", "USERS 1")
    assert "* Reconnected: you are back in the lobby as alice." in h.screen.take()
    assert h.client.lobby_shown is h.session.lobby_shown  # passed in, not replaced


def test_a_taken_nick_is_waited_for_across_a_nick_timeout_then_asked_for() -> None:
    h = Harness()
    _reconnect_to_a_taken_nick(h)
    for _ in range(9):
        h.clock.advance(3)
        assert h.sent() == ["NICK alice"]
        h.receive("RETRY taken alice is online")
    _next_connection_after_the_nick_timeout(h)
    for _ in range(30):  # 10 on the first reconnection: 40 in all
        h.receive("RETRY taken alice is online")
        h.clock.advance(3)
        assert h.sent() == ["NICK alice"]
    h.screen.take()
    h.receive("RETRY taken alice is online")
    assert h.screen.take()[-2:] == [
        "! The nickname alice is already taken by someone online.",
        "* Still taken after 40 tries. Choose another nickname:",
    ]
    assert h.screen.prompt == "nickname: "
    h.clock.advance(30)
    assert h.sent() == []


def test_another_nick_typed_on_a_reconnection_and_taken_is_asked_for_again() -> None:
    h = Harness()
    _reconnect_and_refuse(h, "RETRY invalid alice is reserved")
    h.session.user_line("bob")
    assert h.sent() == ["NICK bob"]
    h.screen.take()
    h.receive("RETRY taken bob is online")  # someone else's: not waited for
    assert h.screen.take() == [
        "! The nickname bob is already taken by someone online.",
        "* Choose another nickname:",
    ]
    h.clock.advance(30)
    assert h.sent() == []


FLOODED = "ERROR flood too many nicks registered from 127.0.0.1 lately; try again in 2 s"


def test_a_nick_typed_on_a_reconnection_and_waited_for_goes_to_the_next_connection() -> None:
    """bob, typed at the reconnection's prompt, waits out the server's
    named wait; the nick timeout cuts it: the next connection asks for bob,
    not alice.  bob was forgotten: it asked for alice again (refused again).
    bob is not the old connection's nick: taken, it is not waited for."""
    h = Harness()
    _reconnect_and_refuse(h, "RETRY invalid alice is reserved")
    h.session.user_line("bob")
    assert h.sent() == ["NICK bob"]
    h.receive(FLOODED)
    _next_connection_after_the_nick_timeout(h, "bob")
    h.screen.take()
    h.receive("RETRY taken bob is online")
    assert h.screen.take() == [
        "! The nickname bob is already taken by someone online.",
        "* Choose another nickname:",
    ]
    h.session.user_line("carol")
    assert h.sent() == ["NICK carol"]
    h.receive("READY carol", "USER carol lobby", "USERS 1")
    assert "* Reconnected: you are back in the lobby as carol." in h.screen.take()


def test_a_reconnection_over_its_address_s_nick_limit_waits_and_sends_the_nick_again() -> None:
    """Users behind one address all coming back after a restart: the server
    names a wait, and the client waits it out and sends the same nick,
    with no prompt (it had asked "Choose a nickname:", and then exited at
    the server's nick timeout: review rev17 #1)."""
    h = Harness()
    _reconnect_and_refuse(h, FLOODED)
    assert h.screen.take() == [
        "* The server did not look at that nickname: too many nicks registered from "
        "127.0.0.1 lately; try again in 2 s. Sending the nickname alice again in 2 s "
        "(try 1 of 10)."
    ]
    _sent_again_after(h, 2)
    h.receive("READY alice", "USER alice lobby", "USERS 1")
    assert "* Reconnected: you are back in the lobby as alice." in h.screen.take()


def test_the_nick_timeout_during_that_wait_is_followed_by_the_next_connection() -> None:
    h = Harness()
    _reconnect_and_refuse(h, FLOODED)
    _next_connection_after_the_nick_timeout(h)


UNAVAILABLE = "RETRY unavailable the chat cannot check that nick now; send NICK again in a moment"


def test_the_nick_timeout_while_unavailable_is_waited_out_is_followed_by_the_next_connection(
) -> None:
    """RETRY unavailable on a reconnection: the same NICK goes again by
    itself, as for RETRY taken and the named wait; the server's nick
    timeout during that wait is no prompt left open.  It ended the session."""
    h = Harness()
    _reconnect_and_refuse(h, UNAVAILABLE)
    assert h.screen.take() == [
        "* The server is briefly unavailable (the chat cannot check that nick now; send "
        "NICK again in a moment). Sending the nickname alice again in 3 seconds (try 1 of 5)."
    ]
    _next_connection_after_the_nick_timeout(h)


def test_the_unavailable_tries_are_counted_across_that_next_connection() -> None:
    h = Harness()
    _reconnect_and_refuse(h, UNAVAILABLE)
    h.clock.advance(3)
    assert h.sent() == ["NICK alice"]
    h.receive(UNAVAILABLE)  # try 2
    _next_connection_after_the_nick_timeout(h)
    h.screen.take()
    h.receive(UNAVAILABLE)
    assert h.screen.take()[-1].endswith("(try 3 of 5).")


NICK_TIMEOUT = "BYE timeout no nickname after 30 seconds"
STOPPED_WAITING = Outcome(
    1, "The server stopped waiting for the nickname (it allows 30 seconds to log in)."
)


def _flooded_at_the_first_login(nick: str | None = "alice") -> Harness:
    """The first connection's NICK alice (--nick, or typed) answered with
    the server's named wait (2 s), which its nick timeout then cuts 1.5 s
    in: the next connection (1 s later) finds it over."""
    h = Harness(nick)
    h.receive("HELLO chat/1 test", "NICK")
    if nick is None:
        h.session.user_line("alice")
    assert h.sent() == ["NICK alice"]
    h.receive(FLOODED)
    h.screen.take()
    h.clock.advance(1.5)
    h.receive(NICK_TIMEOUT)
    h.lose()
    return h


@pytest.mark.parametrize("nick", ["alice", None])
def test_the_nick_timeout_in_the_named_wait_at_the_first_login_connects_again(
    nick: str | None,
) -> None:
    """Someone who started the client and is held back by its address's
    nick limit is not let go when the server's nick timeout ends the wait:
    the next connection sends the same nickname (--nick, or the one typed)
    by itself, and it is a first login (welcome), not a reconnection.  The
    client exited with "The server stopped waiting for the nickname"."""
    h = _flooded_at_the_first_login(nick)
    assert h.outcomes == []
    assert h.screen.take() == [
        "! The server stopped waiting for the nickname (it allows 30 seconds to log in).",
        "* Reconnecting in 1 s; /reconnect tries now, /quit leaves.",
    ]
    h.clock.advance(1)
    assert len(h.clients) == 2
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    assert h.screen.prompt != "nickname: "
    h.receive("READY alice", "USER alice lobby", "USERS 1")
    assert any(line.startswith("* Welcome, alice! You are in the lobby.")
               for line in h.screen.take())
    assert not h.client.rejoin


def test_the_next_connection_waits_out_the_rest_of_the_named_wait() -> None:
    """The server's nick timeout (here 5 s) cut a wait of 20 s it named:
    the next connection (1 s later) does not send the nick at once, which
    the server would refuse for sure (a try spent), but once the rest of
    the wait (14 s, on the clock) is over.  It sent NICK alice at once."""
    h = Harness()
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive(FLOODED.replace("in 2 s", "in 20 s"))
    h.clock.advance(5)
    h.receive(NICK_TIMEOUT)
    h.lose()
    h.clock.advance(1)
    h.screen.take()
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == []
    assert h.screen.take() == [
        "* Sending the nickname alice in 14 s, once the server's wait is over."
    ]
    assert h.screen.prompt != "nickname: "
    h.clock.advance(13.9)
    assert h.sent() == []
    h.clock.advance(0.1)
    assert h.sent() == ["NICK alice"]
    h.receive(FLOODED)  # the tries go on counting: 1 before the cut
    assert h.screen.take()[-1].endswith("(try 2 of 10).")


def test_a_cut_in_the_rest_of_the_named_wait_is_followed_by_the_next_connection() -> None:
    """That wait is a wait for our nick too: the nick timeout in it is no
    prompt left open, and the connection after waits what is left."""
    h = Harness()
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive(FLOODED.replace("in 2 s", "in 30 s"))
    h.receive(NICK_TIMEOUT)
    h.lose()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == []
    h.clock.advance(10)
    h.receive(NICK_TIMEOUT)
    h.lose()
    assert h.outcomes == []
    h.clock.advance(2)
    h.screen.take()
    h.receive("HELLO chat/1 test", "NICK")
    assert h.screen.take()[-1] == (
        "* Sending the nickname alice in 17 s, once the server's wait is over."
    )
    h.clock.advance(17)
    assert h.sent() == ["NICK alice"]


def test_the_named_waits_at_the_first_login_are_bounded_across_connections() -> None:
    """10 tries in a row, whichever connection they were on, then the
    prompt; left open, the server's nick timeout ends the session with its
    reason, as at any first login."""
    h = _flooded_at_the_first_login()  # try 1
    for connection, tries in enumerate((4, 4, 1)):  # tries 2-5, 6-9, 10
        h.clock.advance(2**connection)  # the backoff: 1, 2, 4 s
        h.receive("HELLO chat/1 test", "NICK")
        assert h.sent() == ["NICK alice"]
        for _ in range(tries - 1):
            h.receive(FLOODED)
            h.clock.advance(2)
            assert h.sent() == ["NICK alice"]
        h.screen.take()
        h.receive(FLOODED)
        if tries > 1:
            assert h.screen.take()[-1].endswith(f"(try {5 + 4 * connection} of 10).")
            h.receive(NICK_TIMEOUT)
            h.lose()
            assert h.outcomes == []
            continue
        assert h.screen.take()[-1].endswith("(try 10 of 10).")
    h.clock.advance(2)
    assert h.sent() == ["NICK alice"]
    h.receive(FLOODED)
    assert h.screen.take()[-1] == "* Still refused after 10 tries. Choose a nickname:"
    assert h.screen.prompt == "nickname: "
    h.receive(NICK_TIMEOUT)
    h.lose()
    assert h.outcomes == []  # the prompt stays, with no timer (_await_nick)
    assert h.screen.prompt == "nickname: " and not h.clock.getDelayedCalls()
    h.session.user_line("/quit")
    assert h.outcomes == [STOPPED_WAITING]
    assert len(h.clients) == 4


def test_without_reconnection_the_nick_timeout_in_the_named_wait_ends_the_session() -> None:
    """--no-reconnect (and a script, which never waits: test_protocol)
    keeps exiting with the server's reason."""
    h = Harness(enabled=False)
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive(FLOODED)
    h.receive(NICK_TIMEOUT)
    h.lose()
    assert h.outcomes == [STOPPED_WAITING]
    assert len(h.clients) == 1


def test_a_line_typed_while_that_next_connection_logs_in_is_not_sent() -> None:
    h = _flooded_at_the_first_login()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.screen.take()
    h.session.user_line("hello")
    assert h.screen.take()[0].startswith("! Not connected: that line was not sent")
    h.receive("READY alice", "USER alice lobby", "USERS 1")
    assert h.sent() == []


def _typed_ahead_and_cut(*lines: str, enabled: bool = True) -> Harness:
    """Lines typed while the first login waits out the server's named wait
    (2 s), which its nick timeout cuts 1.5 s in."""
    h = Harness(enabled=enabled)
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive(FLOODED)
    for line in lines:
        h.session.user_line(line)
    h.screen.take()
    h.clock.advance(1.5)
    h.receive(NICK_TIMEOUT)
    h.lose()
    return h


def test_lines_typed_in_the_wait_the_nick_timeout_cuts_go_once_the_next_one_is_in() -> None:
    """Lines typed ahead while the first login waits to send the nick again
    would go after READY: the cut hands them to the next connection, which
    sends them, in order, once in.  They were counted and said not sent."""
    h = _typed_ahead_and_cut("hello while waiting", "and another")
    assert h.screen.take() == [
        "! The server stopped waiting for the nickname (it allows 30 seconds to log in).",
        "* 2 lines typed ahead wait for the next connection: they are sent once you "
        "are in.",
        "* Reconnecting in 1 s; /reconnect tries now, /quit leaves.",
    ]
    h.clock.advance(1)
    h.join()
    assert h.sent() == ["MSG hello while waiting", "MSG and another"]


def test_lines_refused_on_a_joined_connection_are_not_said_again_on_the_next() -> None:
    """A joined connection's lost end drops and counts what waits; the
    lines refused over the bound stayed counted in its outbox, went to the
    next connection with the handed-over lines, and were said once it got
    in ("* 1 line typed or pasted while 1000 waited was not sent.")."""
    h = Harness()
    h.join()
    h.screen.take()
    for n in range(ChatClient.QUEUE_MAX + 10):
        h.session.user_line(f"line {n}")
    assert h.client.outbox.refused > 0
    h.screen.take()
    h.lose()
    assert "1000 lines still waiting to be sent were not sent." in h.screen.take()[0]
    h.clock.advance(1)
    h.join()
    h.session.user_line("back")
    assert h.sent() == ["MSG back"]
    assert [line for line in h.screen.take() if "typed or pasted" in line] == []


def test_lines_handed_over_go_at_the_client_s_pace_through_a_failed_try() -> None:
    """A reconnection refused before it got in hands them on again; once in,
    a burst (the NICK was one), then the pacer's rate."""
    typed = [f"line {n}" for n in range(20)]
    h = _typed_ahead_and_cut(*typed)
    h.refuse = True
    h.clock.advance(1)
    h.refuse = False
    h.clock.advance(2)
    assert len(h.clients) == 3
    h.join()
    first = h.sent()
    assert first == [f"MSG {line}" for line in typed[: BURST - 1]]
    h.clock.advance(1 / RATE)
    assert h.sent() == [f"MSG {typed[BURST - 1]}"]
    h.clock.advance((len(typed) - BURST) / RATE)
    assert h.sent() == [f"MSG {line}" for line in typed[BURST:]]
    assert len(h.client.outbox) == 0


@pytest.mark.parametrize(("leave", "said", "code"), [
    ("/quit", "", 1),
    # An interrupt while typed lines still wait, before any connection got in.
    ("Ctrl-C", "Interrupted before joining the chat. ", 130),
])
@pytest.mark.parametrize("next_connecting", [False, True])
def test_leaving_before_the_next_connection_says_the_lines_handed_over_not_sent(
    leave: str, said: str, code: int, next_connecting: bool
) -> None:
    """Leaving between connections while lines typed ahead wait for the
    next one, or while it connects: the end counts them, as one
    connection's end does.  Ctrl-C exited 1 between them; while it
    connected, /quit waited behind them until it got in (and sent them),
    and Ctrl-C dropped them uncounted ("Interrupted while connecting.")."""
    h = _typed_ahead_and_cut("hello while waiting", "and another")
    if next_connecting:
        _connecting(h)
    if leave == "/quit":
        h.session.user_line("/quit")
    else:
        h.session.interrupt()
    assert h.outcomes == [Outcome(
        code, f"{said}The server stopped waiting for the nickname (it allows 30 seconds to "
        "log in). 2 lines still waiting to be sent were not sent."
    )]


@pytest.mark.parametrize(("reply", "prompt"), [
    ("PASS alice", "password"),
    ("RETRY taken alice is online", "nickname"),  # not waited for: none got in yet
])
def test_lines_handed_over_are_not_sent_past_the_next_connection_s_prompt(
    reply: str, prompt: str
) -> None:
    """docs/client.md, "When the connection ends": a password prompt, or a
    prompt for another nickname, on the next connection drops the lines
    handed over to it, as at those prompts on one connection (one could be
    the password), and says how many."""
    h = _typed_ahead_and_cut("hello while waiting", "and another")
    h.screen.take()
    _nick_sent(h)
    h.receive(reply)
    assert (
        f"* 2 lines typed before the {prompt} prompt were not sent (it could be the "
        "password); type it again once you are in."
    ) in h.screen.take()
    assert len(h.client.outbox) == 0


@pytest.mark.parametrize("enabled", [True, False])
def test_the_count_of_lines_handed_over_not_sent_leaves_out_those_refused(
    enabled: bool,
) -> None:
    """docs/client.md, "When the connection ends": leaving between
    connections (or with --no-reconnect) counts the lines that waited, as
    one connection's end does; those refused over the bound are not in it."""
    h = _typed_ahead_and_cut(
        *[f"line {n}" for n in range(ChatClient.QUEUE_MAX + 5)], enabled=enabled
    )
    if enabled:
        h.session.user_line("/quit")
    assert h.outcomes == [Outcome(
        1, f"{STOPPED_WAITING.message} {ChatClient.QUEUE_MAX} lines still waiting to be "
        "sent were not sent."
    )]


def test_without_reconnection_lines_typed_in_the_cut_wait_are_said_not_sent() -> None:
    h = _typed_ahead_and_cut("hello while waiting", enabled=False)
    assert h.outcomes == [Outcome(
        1, "The server stopped waiting for the nickname (it allows 30 seconds to log in). "
        "1 line still waiting to be sent was not sent."
    )]


def test_a_second_nick_timeout_cut_is_said_in_full_not_as_a_failed_try() -> None:
    """The next connection got in far enough to send the nick: a second cut
    is said with its reason, not as "Still not connected after 1 tries"."""
    h = _flooded_at_the_first_login()
    h.screen.take()
    h.clock.advance(1)
    assert h.screen.take() == ["* Reconnecting..."]
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive(FLOODED)
    h.screen.take()
    h.receive(NICK_TIMEOUT)
    h.lose()
    assert h.screen.take() == [
        "! The server stopped waiting for the nickname (it allows 30 seconds to log in).",
        "* Reconnecting in 2 s; /reconnect tries now, /quit leaves.",
    ]
    h.clock.advance(2)
    assert h.screen.take() == ["* Reconnecting..."]


@pytest.mark.parametrize("end", ["refused", "lost", "full"])
def test_that_next_connection_not_getting_in_tries_again(end: str) -> None:
    """It said "Reconnecting": refused, lost before the greeting, or full,
    it is a reconnection that did not get in (the server is not back yet),
    not a first connection's failure that ends the client."""
    h = _flooded_at_the_first_login()
    h.screen.take()
    h.refuse = end == "refused"
    h.clock.advance(1)
    if end == "lost":
        h.lose()
    elif end == "full":
        h.receive("HELLO chat/1 test", "NICK")
        assert h.sent() == ["NICK alice"]
        h.receive("BYE full the server is full")
        h.lose()
    assert h.outcomes == []
    assert h.screen.take()[-1] == "* Reconnecting in 2 s; /reconnect tries now, /quit leaves."
    h.refuse = False
    h.clock.advance(2)
    h.join()
    assert not h.client.rejoin  # still greeted as a first login


def _flooded_then_sent_again() -> Harness:
    """A reconnection whose NICK waited out the server's named wait and went again."""
    h = Harness()
    _reconnect_and_refuse(h, FLOODED)
    h.clock.advance(2)
    assert h.sent() == ["NICK alice"]
    return h


def test_a_password_prompt_left_open_after_that_wait_ends_the_session() -> None:
    """Once the nick was looked at (here the server asks for its password,
    and none was typed this session), the wait is over: a prompt left open
    then ends the session as any other."""
    h = _flooded_then_sent_again()
    h.receive("PASS alice")
    assert h.screen.secret_prompt == "password for alice: "
    h.receive("BYE timeout")
    h.lose()
    assert h.screen.lines[-1] == (
        "! The session is over: nothing you type now is shown or sent. Press Enter to leave."
    )
    h.session.secret_line("")
    h.clock.advance(60)
    assert len(h.clients) == 2  # no next connection
    assert len(h.outcomes) == 1


def test_a_nick_prompt_after_that_wait_and_another_error_waits_for_the_nick() -> None:
    h = _flooded_then_sent_again()
    h.receive("ERROR bad-args no")
    assert h.screen.prompt == "nickname: "
    h.receive("BYE timeout")
    h.lose()
    assert h.outcomes == []
    h.session.interrupt()
    assert len(h.outcomes) == 1


def test_a_nick_prompt_left_open_on_a_reconnection_waits_for_the_nick() -> None:
    h = Harness()
    _reconnect_and_refuse(h, "RETRY invalid alice is reserved")
    assert h.screen.prompt == "nickname: "  # the usual RETRY flow
    h.receive("BYE timeout")
    h.lose()
    assert h.outcomes == []
    count = len(h.clients)
    h.session.user_line("alice2")
    assert len(h.clients) == count + 1
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice2"]


def _times_out_at_the_nick_prompt(h: Harness) -> None:
    """The server's nick timeout ends the connection at its nickname
    prompt: the prompt stays, with the reason and what to do there."""
    h.receive(NICK_TIMEOUT)
    h.lose()
    assert h.outcomes == []
    assert h.screen.take() == [
        "! The server stopped waiting for the nickname (it allows 30 seconds to log in).",
        "* Type a nickname to connect again, or /quit to leave.",
    ]
    assert h.screen.prompt == "nickname: "


def test_a_nick_prompt_left_open_past_the_nick_timeout_connects_again_with_the_nick() -> None:
    """The client exited (status 1) when the server's --nick-timeout ended
    the first nickname prompt; now the prompt stays, as the web page waits
    for its Join, and the nick typed there, however late, connects again."""
    h = Harness(nick=None)
    h.receive("HELLO chat/1 test", "NICK")
    assert h.screen.prompt == "nickname: "
    h.screen.take()
    _times_out_at_the_nick_prompt(h)
    h.clock.advance(3600)  # no timer: it waits for the user
    assert len(h.clients) == 1
    for typed in ("", "/users", "9lives"):
        h.session.user_line(typed)
    assert h.screen.take() == [
        "! Choose a nickname first.",
        "! '9lives' is not a valid nickname (1 to 24 letters, digits, _ or -, starting "
        "with a letter).",
    ]
    h.session.user_line("/nick alice")
    assert len(h.clients) == 2
    assert h.screen.take() == ["* Connecting again as alice..."]
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive("READY alice", "USERS 0")
    assert h.screen.prompt == "alice> "


@pytest.mark.parametrize("typed", ["/nick", "/help", "/users", "/reconnectx", "9lives",
                                   "n" * 40, "/nick a b"])
def test_the_prompt_the_nick_timeout_left_answers_as_the_login_s(typed: str) -> None:
    """One reading of a line at a nickname prompt: the one a reconnection
    waits at says what the login's says (it said "not a valid nickname"
    to /nick and /help, without the length)."""
    h = Harness(nick=None)
    h.receive("HELLO chat/1 test", "NICK", NICK_TIMEOUT)
    h.lose()
    h.screen.take()
    h.session.user_line(typed)
    s = session(None)
    s.receive("HELLO chat/1 test", "NICK")
    s.screen.take()
    s.type(typed)
    assert s.sent() == []
    said = [line for line in s.screen.take() if line != "* Choose a nickname:"]
    assert said and h.screen.take() == said
    assert len(h.clients) == 1 and h.screen.prompt == "nickname: "


def test_reconnect_at_the_prompt_the_nick_timeout_left_connects_again_now() -> None:
    """The one line read otherwise there: /reconnect connects at once, to
    the nickname prompt, which a second nick timeout leaves as the first."""
    h = Harness(nick=None)
    h.receive("HELLO chat/1 test", "NICK", NICK_TIMEOUT)
    h.lose()
    h.screen.take()
    h.session.user_line("/reconnect")
    assert len(h.clients) == 2
    assert h.screen.take() == ["* Reconnecting..."]
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == []
    assert h.screen.prompt == "nickname: "
    h.screen.take()
    _times_out_at_the_nick_prompt(h)
    assert len(h.clients) == 2


@pytest.mark.parametrize("leave", ["/quit", "ctrl-c"])
def test_leaving_at_the_prompt_the_nick_timeout_left_ends_as_it_did(leave: str) -> None:
    h = Harness(nick=None)
    h.receive("HELLO chat/1 test", "NICK", NICK_TIMEOUT)
    h.lose()
    if leave == "/quit":
        h.session.user_line("/quit")
        assert h.outcomes == [STOPPED_WAITING]
    else:
        h.session.interrupt()
        assert len(h.outcomes) == 1 and h.outcomes[0].code == 130
    assert len(h.clients) == 1


def test_without_reconnection_the_nick_prompt_s_timeout_ends_the_session() -> None:
    h = Harness(nick=None, enabled=False)
    h.receive("HELLO chat/1 test", "NICK", NICK_TIMEOUT)
    h.lose()
    assert h.outcomes == [STOPPED_WAITING]


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


def test_open_invitations_ended_by_the_loss_are_said_each() -> None:
    """An invitation open when the connection ends is gone (the server
    forgot it, and the next connection starts with none): the inviter's
    "waiting for an answer" and the invitee's "/accept bob" are not left
    standing unsaid (review rev17 #2)."""
    h = Harness()
    h.join()
    h.session.user_line("/pair bob")
    assert h.sent() == ["PAIR bob"]
    h.receive("PENDING bob", "INVITE carol", "INVITE dave")
    h.screen.take()
    h.receive("BYE shutdown")
    h.lose()
    shown = h.screen.take()
    assert shown[1:4] == [
        "* Your invitation to bob ended: the server shut down. "
        "Once you are back, /pair bob invites them again.",
        "* carol's invitation ended: the server shut down. "
        "/accept carol will not find it; ask them to invite you again.",
        "* dave's invitation ended: the server shut down. "
        "/accept dave will not find it; ask them to invite you again.",
    ]
    h.clock.advance(1)
    h.join()
    assert h.client.pairing.invited is None
    assert h.client.pairing.invites == []


def test_invitations_already_over_are_not_said_again_at_the_loss() -> None:
    h = Harness()
    h.join()
    h.receive("PENDING bob", "INVITE carol", "DECLINED bob rejected", "CANCELLED carol withdrawn")
    h.screen.take()
    h.lose()
    assert not [line for line in h.screen.take() if "invitation" in line]


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
    h.receive("HELLO chat/1 test", "NICK", "RETRY invalid alice is reserved")
    assert h.sent() == ["NICK alice"]
    h.session.user_line("alice2")
    assert h.sent() == ["NICK alice2"]
    h.receive("READY alice2")
    assert h.client.kept_password is None
    h.lose()
    assert h.session.password is None


# -- the history after a reconnection -------------------------------------------


def _at(minute: int) -> str:
    return f"2026-11-22T14:{minute:02d}:00.000Z"


def _come_back(h: Harness, *history: str) -> list[str]:
    h.receive("BYE shutdown")
    h.lose()
    h.clock.advance(1.01)
    h.screen.take()
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive("READY alice", *history, "USER alice lobby", "USERS 1")
    return h.screen.take()


def test_a_reconnections_history_shows_only_what_is_not_on_screen() -> None:
    h = Harness()
    h.receive("HELLO chat/1 test", "NICK")
    h.sent()
    h.receive("READY alice", f"HISTORY {_at(1)} bob from before", "USER alice lobby", "USERS 1")
    h.receive(f"MSG {_at(2)} bob * ping", f"MSG {_at(2)} carol * hello")
    h.session.user_line("mine")
    h.receive(f"MSG {_at(3)} alice * mine")
    shown = _come_back(
        h,
        f"HISTORY {_at(1)} bob from before",
        f"HISTORY {_at(2)} bob ping",
        f"HISTORY {_at(2)} carol hello",
        f"HISTORY {_at(3)} alice mine",
        f"HISTORY {_at(4)} carol said while you were gone",
        f"HISTORY {_at(5)} bob ping",  # the same text again, later: a new message
    )
    assert shown == [
        "* Connected to chat.test:7000, running test.",
        "* Reconnected: you are back in the lobby as alice.",
        "* Recent messages in the lobby:",
        "[14:04] <carol> said while you were gone",
        "[14:05] <bob> ping",
        "* 1 person online:",
        "  NICK         STATUS",
        "  alice (you)  in the lobby",
    ]
    # What this connection showed counts for the next one.
    shown = _come_back(
        h, f"HISTORY {_at(4)} carol said while you were gone", f"HISTORY {_at(5)} bob ping"
    )
    assert "Recent messages in the lobby:" not in "\n".join(shown)
    assert not any("ping" in line or "gone" in line for line in shown)


def test_the_same_message_twice_in_the_history_is_shown_twice_when_new() -> None:
    h = Harness()
    h.join()
    h.receive(f"MSG {_at(2)} bob * +1")
    shown = _come_back(h, f"HISTORY {_at(2)} bob +1", f"HISTORY {_at(2)} bob +1")
    assert shown.count("[14:02] <bob> +1") == 1  # two messages; one was on screen


def test_a_pairs_replay_is_never_skipped() -> None:
    # After UNPAIRED the server sends only what was missed, even a line that
    # looks like one on screen (the same text at the same second).
    h = Harness()
    h.join()
    h.receive(f"MSG {_at(2)} bob * +1", "PAIRED carol")
    h.screen.take()
    h.receive("UNPAIRED carol left", f"HISTORY {_at(2)} bob +1", "USER alice lobby", "USERS 1")
    assert "[14:02] <bob> +1" in h.screen.take()


def test_the_lobby_lines_remembered_are_bounded() -> None:
    h = Harness()
    h.join()
    for n in range(REMEMBERED + 50):
        h.receive(f"MSG {_at(1)} bob * line {n}")
    assert len(h.session.lobby_shown) == REMEMBERED
    # The oldest are forgotten, and no newer than the newest one forgotten:
    # not shown again either.
    shown = _come_back(h, f"HISTORY {_at(1)} bob line 0", f"HISTORY {_at(2)} bob new")
    assert "[14:01] <bob> line 0" not in shown
    assert "[14:02] <bob> new" in shown


# -- a long outage -------------------------------------------------------------------


REFUSED = (
    "! Cannot connect to chat.test:7000: connection refused (is the server running on "
    "that port?)."
)


def _first_try_refused(h: Harness, said: str) -> None:
    """The connection is gone; the first reconnection is refused: all in full."""
    h.refuse = True
    h.clock.advance(1)
    assert h.screen.take() == [
        said,
        "* Reconnecting in 1 s; /reconnect tries now, /quit leaves.",
        "* Reconnecting...",
        REFUSED,
        "* Reconnecting in 2 s; /reconnect tries now, /quit leaves.",
    ]


def test_a_long_outage_says_the_first_failure_in_full_then_one_short_line_a_try() -> None:
    h = Harness()
    h.join()
    h.screen.take()
    h.receive("BYE shutdown")
    h.lose()
    _first_try_refused(h, "! The server is shutting down.")
    for wait in (2, 4, 8, 16, 30, 30):
        h.clock.advance(wait)
    assert h.screen.take() == [
        "* Still not connected after 2 tries (the same error); next try in 4 s.",
        "* Still not connected after 3 tries (the same error); next try in 8 s.",
        "* Still not connected after 4 tries (the same error); next try in 16 s.",
        "* Still not connected after 5 tries (the same error); next try in 30 s.",
        "* Still not connected after 6 tries (the same error); next try in 30 s.",
        "* Still not connected after 7 tries (the same error); next try in 30 s.",
    ]
    assert h.screen.prompt == "(not connected) > "
    h.refuse = False
    h.clock.advance(30)
    h.join()
    shown = h.screen.take()
    assert shown[:2] == [
        "* Connected to chat.test:7000, running test.",
        "* Reconnected: you are back in the lobby as alice.",
    ]
    # The next outage starts again in full.
    h.lose()
    _first_try_refused(h, "! The connection to chat.test:7000 was lost.")


def _refused_twice() -> Harness:
    h = Harness()
    h.join()
    h.lose()
    h.refuse = True
    h.clock.advance(1)
    h.clock.advance(2)  # the second try: said in one short line
    h.screen.take()
    return h


def test_a_different_failure_is_said_in_full() -> None:
    h = _refused_twice()
    h.refuse = False
    h.clock.advance(4)
    h.receive("HELLO chat/1 test", "NICK")
    h.sent()
    h.receive("BYE full the server is full")
    h.lose()
    shown = h.screen.take()
    assert shown[-2].startswith("! ") and "full" in shown[-2]
    assert shown[-1] == "* Reconnecting in 8 s; /reconnect tries now, /quit leaves."


def _greeted_then_full(h: Harness, wait: float, hello: str = "HELLO chat/1 test") -> list[str]:
    h.clock.advance(wait)
    h.receive(hello, "NICK")
    h.sent()
    h.receive("BYE full the server is full")
    h.lose()
    return h.screen.take()


def test_connected_is_said_once_in_an_outage_not_at_each_attempt() -> None:
    """Each reconnection that the server greets and then refuses (BYE full)
    said "Connected to ..." again: in a long outage, one more line every 30
    s. Now it is said at the first, and again only if the greeting changed
    or the user asked (/reconnect); a connection that gets in starts over."""
    h = Harness()
    h.join()
    h.lose()
    h.screen.take()
    connected = "* Connected to chat.test:7000, running test."
    first = _greeted_then_full(h, 1)
    assert first[:2] == ["* Reconnecting...", connected]
    assert _greeted_then_full(h, 2) == [
        "* Still not connected after 2 tries (the same error); next try in 4 s."
    ]
    assert _greeted_then_full(h, 4) == [
        "* Still not connected after 3 tries (the same error); next try in 8 s."
    ]
    # A new greeting (the server was upgraded meanwhile) is said.
    shown = _greeted_then_full(h, 8, "HELLO chat/1 test 2")
    assert shown[0] == "* Connected to chat.test:7000, running test 2."
    h.session.user_line("/reconnect")
    h.receive("HELLO chat/1 test 2", "NICK")
    assert "* Connected to chat.test:7000, running test 2." in h.screen.take()
    h.receive("READY alice", "USER alice lobby", "USERS 1")
    # In the chat again: the next outage says it again.
    h.lose()
    h.screen.take()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test 2", "NICK")
    assert h.screen.take()[-1] == "* Connected to chat.test:7000, running test 2."


def test_a_version_warning_is_said_once_in_an_outage_as_connected_is() -> None:
    """The HELLO of a server that speaks another version warned again at
    every attempt it greeted and then refused, where "Connected to ..." of
    the same HELLO was said once.  A HELLO of yet another version is a new
    greeting: its warning is said."""
    h = Harness()
    h.join()
    h.lose()
    h.screen.take()
    first = _greeted_then_full(h, 1, "HELLO chat/2 test")
    assert first[:3] == [
        "* Reconnecting...",
        "! The server speaks chat/2, this client chat/1; some things may not work.",
        "* Connected to chat.test:7000, running test.",
    ]
    assert _greeted_then_full(h, 2, "HELLO chat/2 test") == [
        "* Still not connected after 2 tries (the same error); next try in 4 s."
    ]
    # The server upgraded within the outage, its "running ..." the same: the
    # whole greeting changed, the new warning is said (mutation audit F9).
    shown = _greeted_then_full(h, 4, "HELLO chat/3 test")
    assert shown[:2] == [
        "! The server speaks chat/3, this client chat/1; some things may not work.",
        "* Connected to chat.test:7000, running test.",
    ], shown


def test_reconnect_now_is_said_and_so_is_its_failure() -> None:
    h = _refused_twice()
    h.session.user_line("/reconnect")
    assert h.screen.take() == [
        "* Reconnecting...",
        REFUSED,
        "* Reconnecting in 8 s; /reconnect tries now, /quit leaves.",
    ]


def test_a_private_reply_half_typed_when_the_loss_ends_the_pair_is_set_aside() -> None:
    # rev15 H2: after the reconnection the input line would send it to the lobby.
    h = Harness()
    h.join()
    h.receive("PAIRED bob")
    h.screen.typing = "private: the door code is 2580"
    h.screen.take()
    h.lose()
    assert h.screen.typing == ""
    assert h.screen.set_aside_lines == ["private: the door code is 2580"]
    assert (
        "* The line you were typing for bob was not sent: the private conversation ended. "
        "Up brings it back." in h.screen.take()
    )


@pytest.mark.parametrize(("bye", "why"), [
    ("BYE shutdown", "the server shut down"),
    ("BYE timeout", "the server closed the connection"),
])
def test_a_pair_ended_by_the_server_s_goodbye_says_so(bye: str, why: str) -> None:
    """Not "the connection to the server was lost" just after "The server
    is shutting down."; the half-typed reply is set aside all the same."""
    h = Harness()
    h.join()
    h.receive("PAIRED bob")
    h.screen.typing = "see you"
    h.screen.take()
    h.receive(bye)
    h.lose()
    shown = h.screen.take()
    assert f"* Your private conversation with bob ended: {why}." in shown
    assert not [line for line in shown if "was lost" in line]
    assert h.screen.set_aside_lines == ["see you"]
    assert ("* The line you were typing for bob was not sent: the private conversation "
            "ended. Up brings it back.") in shown


def test_a_lobby_line_half_typed_when_the_connection_is_lost_stays() -> None:
    h = Harness()
    h.join()
    h.screen.typing = "for the lobby"
    h.lose()
    assert h.screen.typing == "for the lobby"


def test_a_draft_survives_a_rejoin_with_the_kept_password() -> None:
    # rev15 M1: it was cleared "while the password was checked", but no
    # password prompt was shown and none was typed.
    h = Harness()
    _login_with_password(h)
    h.screen.typing = "long thought about dinner plans"
    h.lose()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test", "NICK", "PASS alice")
    assert h.sent() == ["NICK alice", "PASS correct horse"]
    h.screen.take()
    h.receive("READY alice", "USER alice lobby", "USERS 1")
    assert h.screen.typing == "long thought about dinner plans"
    assert not [line for line in h.screen.take() if "cleared" in line or "not sent" in line]


def test_a_draft_is_still_cleared_after_a_password_typed_at_the_prompt() -> None:
    h = Harness()
    _login_with_password(h)
    _back_and_asked(h)
    h.receive("RETRY bad-password wrong password")  # changed meanwhile: asked for
    h.receive("PASS alice")
    assert h.screen.secret_prompt == "password for alice: "
    h.session.secret_line("new one here")
    h.screen.typing = "new one here"  # typed again, blind, while it was checked
    h.receive("READY alice")
    assert h.screen.typing == ""


# -- Ctrl-C before any connection got in -------------------------------------------

BEFORE_JOINING = "Interrupted before joining the chat."


@pytest.mark.parametrize("key", ["Ctrl-C", "Ctrl-D"])
def test_ctrl_c_between_connections_before_any_got_in_exits_130(key: str) -> None:
    """The server's nick timeout cut the first login's wait for the nick,
    and the next connection is not made yet: Ctrl-C (SIGINT too, main.py)
    is an interrupt before the chat was joined, status 130 (docs/client.md,
    exit status), the cut said after it.  Ctrl-D, with nothing that could
    go, is Ctrl-C, as on a connection not in yet.  Both exited 1."""
    h = _flooded_at_the_first_login()
    if key == "Ctrl-C":
        h.session.interrupt()
    else:
        h.session.end_of_typing()
    assert h.outcomes == [Outcome(130, f"{BEFORE_JOINING} {STOPPED_WAITING.message}")]
    assert not h.clock.getDelayedCalls()
    assert len(h.clients) == 1


def test_ctrl_c_in_the_wait_after_a_failed_try_before_any_got_in_exits_130() -> None:
    """The connection after the cut was refused: Ctrl-C in the wait for
    the next try is still before the chat was joined (it exited 1), and
    ends with the cut's sentence, the refused try's said on the screen."""
    h = _flooded_at_the_first_login()
    h.refuse = True
    h.clock.advance(1)
    assert h.screen.take()[-2:] == [
        REFUSED, "* Reconnecting in 2 s; /reconnect tries now, /quit leaves."
    ]
    h.session.interrupt()
    assert h.outcomes == [Outcome(130, f"{BEFORE_JOINING} {STOPPED_WAITING.message}")]
    assert not h.clock.getDelayedCalls()


def test_ctrl_c_between_connections_once_one_got_in_stays_status_1() -> None:
    """After a connection got in, leaving while the client waits to
    reconnect exits with the lost connection's status (docs/client.md),
    Ctrl-C and Ctrl-D alike: only before the chat was joined is it 130."""
    for leave in (Reconnecting.interrupt, Reconnecting.end_of_typing):
        h = Harness()
        h.join()
        h.lose()
        leave(h.session)
        assert h.outcomes == [LOST]


UNCONFIRMED_LOSS = Outcome(
    1, "The connection to chat.test:7000 was lost. None of the 2 messages sent was "
    "confirmed by the server: \u201cone\u201d, \u201ctwo\u201d."
)


def _leave(h: Harness, leave: str) -> None:
    if leave == "/quit":
        h.session.user_line("/quit")
    elif leave == "Ctrl-C":
        h.session.interrupt()
    else:
        h.session.end_of_typing()


@pytest.mark.parametrize("leave", ["/quit", "Ctrl-C", "Ctrl-D"])
@pytest.mark.parametrize("failed", ["refused", "greeted, then full"])
def test_leaving_after_a_failed_try_ends_as_the_loss_with_what_it_left_unconfirmed(
    failed: str, leave: str
) -> None:
    """The joined connection was lost with two messages unconfirmed and
    the first reconnection failed: leaving in the wait for the next ends
    with the loss's sentence and count (what ended the chat), not the
    failed try's, which the screen said already.  It ended with the
    try's ("Cannot connect to ...: connection refused"), and the two
    messages in doubt went unsaid."""
    h = Harness()
    h.join()
    h.session.user_line("one")
    h.session.user_line("two")
    h.lose()
    if failed == "refused":
        h.refuse = True
        h.clock.advance(1)
        shown = h.screen.take()
    else:
        shown = _greeted_then_full(h, 1)
    assert shown[-1] == "* Reconnecting in 2 s; /reconnect tries now, /quit leaves."
    _leave(h, leave)
    assert h.outcomes == [UNCONFIRMED_LOSS]
    assert not h.clock.getDelayedCalls()


@pytest.mark.parametrize("leave", ["/quit", "Ctrl-C"])
def test_leaving_a_reconnection_after_a_failed_try_ends_as_the_loss(leave: str) -> None:
    """The same, the next try greeted and left before it got in (its
    goodbye answered): it ended with the refused try's sentence."""
    h = Harness()
    h.join()
    h.session.user_line("one")
    h.session.user_line("two")
    h.lose()
    h.refuse = True
    h.clock.advance(1)
    h.refuse = False
    h.clock.advance(1)
    _greeted(h)  # the next try, 2 s after the refused one
    _leave(h, leave)
    _answer_the_goodbye(h, connected=True)
    assert h.outcomes == [UNCONFIRMED_LOSS]


@pytest.mark.parametrize(("joined_first", "ended"), [
    (False, Outcome(130, f"{BEFORE_JOINING} {STOPPED_WAITING.message}")),
    (True, LOST),  # the chat was joined: as between connections (above)
])
def test_ctrl_c_at_a_lost_password_prompt_that_would_connect_again(
    joined_first: bool, ended: Outcome
) -> None:
    """A reconnection lost at its password prompt holds its end for the
    Enter after a password maybe typed blind; Enter then connects again.
    Ctrl-C there leaves between connections: 130 before any got in (here
    the connection after a cut first login; it exited 1), with the end
    the client was reconnecting after, not the reconnection's."""
    if joined_first:
        h = Harness()
        h.join()
        h.lose()
    else:
        h = _flooded_at_the_first_login()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive("PASS alice")
    h.lose()
    assert h.screen.secret_prompt == RECONNECTS_PROMPT
    assert h.outcomes == []
    h.session.interrupt()
    assert h.outcomes == [ended]
    assert len(h.clients) == 2
    assert not h.clock.getDelayedCalls()


def test_ctrl_c_in_a_named_wait_for_the_nick_exits_130_on_either_connection() -> None:
    """In the first login's wait the server named, and in the next
    connection's wait for the rest of it: BYE, and status 130 once the
    server answers, the next connection's with the cut's sentence (it
    ended as the connection before it: the paths are tested below)."""
    h = Harness()
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]
    h.receive(FLOODED)
    h.session.interrupt()
    assert h.sent() == ["BYE"]
    h.receive("BYE quit")
    h.lose()
    assert h.outcomes == [Outcome(130, BEFORE_JOINING)]

    h = Harness()
    h.receive("HELLO chat/1 test", "NICK")
    h.sent()
    h.receive(FLOODED.replace("in 2 s", "in 20 s"))
    h.receive(NICK_TIMEOUT)
    h.lose()
    h.clock.advance(1)
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == []  # waiting out the rest of the 20 s
    h.session.interrupt()
    assert h.sent() == ["BYE"]
    h.receive("BYE quit")
    h.lose()
    # Leaving before a reconnection got in ends as the cut did (below).
    assert h.outcomes == [Outcome(130, f"{BEFORE_JOINING} {STOPPED_WAITING.message}")]
    assert len(h.clients) == 2


# -- leaving a reconnection before it got in ------------------------------------------
#
# Once the session had joined, leaving while the client reconnects (/quit,
# Ctrl-C, SIGINT, Ctrl-D) ends with the lost connection's status and sentence
# (1) wherever the reconnection is: waiting, connecting, greeted, logging in,
# at its prompts; before any connection got in it is an interrupt before
# joining (130) with the last connection's sentence, Ctrl-C or Ctrl-D.

RECONNECTS_PROMPT = "(the connection is over; Enter reconnects) "


def _connecting(h: Harness) -> None:
    h.hold = True
    h.clock.advance(1)
    assert h.client.state is State.CONNECTING


def _greeted(h: Harness) -> None:
    h.clock.advance(1)
    assert h.client.state is State.GREETING


def _nick_sent(h: Harness) -> None:
    _greeted(h)
    h.receive("HELLO chat/1 test", "NICK")
    assert h.sent() == ["NICK alice"]


def _nick_taken(h: Harness) -> None:
    _nick_sent(h)
    h.receive("RETRY taken alice is online")  # sent again in 3 s


def _nick_prompt(h: Harness) -> None:
    _nick_sent(h)
    h.receive("RETRY invalid alice is reserved")
    assert h.screen.prompt == "nickname: "


def _password_prompt(h: Harness) -> None:
    _nick_sent(h)
    h.receive("PASS alice")
    assert h.screen.secret_prompt == "password for alice: "


RECONNECTION_PATHS = {
    "connecting": _connecting,
    "greeted": _greeted,
    "nick sent": _nick_sent,
    "nick taken, sent again": _nick_taken,
    "nick prompt": _nick_prompt,
    "password prompt": _password_prompt,
}


def _lost_then(path: str) -> Harness:
    """Joined, lost, and the reconnection at C{path}."""
    h = Harness()
    h.join()
    h.lose()
    RECONNECTION_PATHS[path](h)
    h.sent()
    return h


def _answer_the_goodbye(h: Harness, connected: bool) -> None:
    """The server answers a BYE said on an open connection (none otherwise)."""
    if connected:
        assert h.sent() == ["BYE"]
        h.receive("BYE quit")
        h.lose()
    else:
        assert h.cancelled == 1


@pytest.mark.parametrize("path", RECONNECTION_PATHS)
def test_quit_before_a_reconnection_got_in_leaves_with_the_lost_connection_s_end(
    path: str,
) -> None:
    """/quit while the reconnection connects waited in the queue until it
    got in (then exited 0 after the server's goodbye, the loss not said),
    and at its prompts exited 0: status 1, "the connection was lost", as
    /quit between connections; at once (the goodbye said if connected)."""
    h = _lost_then(path)
    h.session.user_line("/quit")
    _answer_the_goodbye(h, path != "connecting")
    assert h.outcomes == [LOST]
    assert len(h.clients) == 2
    assert not h.clock.getDelayedCalls()


@pytest.mark.parametrize("key", ["Ctrl-C", "Ctrl-D"])
@pytest.mark.parametrize("path", RECONNECTION_PATHS)
def test_ctrl_c_before_a_reconnection_got_in_once_joined_exits_1(path: str, key: str) -> None:
    """Once the chat was joined, Ctrl-C (SIGINT) or Ctrl-D while a
    reconnection connects, is greeted, logs in, or at its prompts ends as
    in the wait between tries: status 1 with the lost connection's
    sentence.  They exited 130 ("Interrupted while connecting.", or
    "Interrupted before joining the chat.")."""
    h = _lost_then(path)
    if key == "Ctrl-C":
        h.session.interrupt()
    else:
        h.session.end_of_typing()
    _answer_the_goodbye(h, path != "connecting")
    assert h.outcomes == [LOST]
    assert not h.clock.getDelayedCalls()


def test_a_second_ctrl_c_before_the_reconnection_s_goodbye_is_answered_exits_1() -> None:
    h = _lost_then("greeted")
    h.session.interrupt()
    assert h.sent() == ["BYE"]
    h.session.interrupt()  # does not wait for the answer
    assert h.transports[-1].disconnecting
    h.lose()
    assert h.outcomes == [LOST]


@pytest.mark.parametrize("then", ["Ctrl-C", "Ctrl-D"])
@pytest.mark.parametrize("first", ["Ctrl-C", "/quit"])
def test_a_second_key_before_the_goodbye_is_answered_keeps_the_typed_ahead_count(
    first: str, then: str
) -> None:
    """Lines typed ahead of a cut login wait in the greeted reconnection;
    Ctrl-C (or /quit) says BYE and takes them, and a second Ctrl-C or
    Ctrl-D (which does not wait for the answer) found none left to take:
    the end said nothing of them."""
    h = _typed_ahead_and_cut("hello while waiting", "and another")
    _greeted(h)
    if first == "/quit":
        h.session.user_line("/quit")
    else:
        h.session.interrupt()
    assert h.sent() == ["BYE"]
    if then == "Ctrl-C":
        h.session.interrupt()
    else:
        h.session.end_of_typing()
    assert h.transports[-1].disconnecting
    h.lose()
    assert h.outcomes == [Outcome(
        130, f"{BEFORE_JOINING} {STOPPED_WAITING.message} "
        "2 lines still waiting to be sent were not sent."
    )]


@pytest.mark.parametrize("path", RECONNECTION_PATHS)
def test_ctrl_c_before_the_connection_after_a_cut_got_in_exits_130_with_the_cut(
    path: str,
) -> None:
    """Before any connection got in (the first login's wait cut by the nick
    timeout), Ctrl-C while the next connection connects, greets or logs in
    is an interrupt before joining, with the cut's sentence, as between
    the connections.  Connecting, it said "Interrupted while connecting."
    and, further, nothing of the cut."""
    h = _flooded_at_the_first_login()
    RECONNECTION_PATHS[path](h)
    h.sent()
    h.session.interrupt()
    _answer_the_goodbye(h, path != "connecting")
    assert h.outcomes == [Outcome(130, f"{BEFORE_JOINING} {STOPPED_WAITING.message}")]


def test_leaving_a_connected_reconnection_shows_the_goodbye_then_ends_as_the_loss() -> None:
    """docs/client.md: the reconnection says goodbye, and its answer shows
    as at any goodbye (as after /quit with messages not accepted: the
    answer is shown, the status is the end's), then the session ends as
    the lost connection did, status 1."""
    h = _lost_then("greeted")
    h.screen.take()
    h.session.user_line("/quit")
    _answer_the_goodbye(h, connected=True)
    assert h.screen.take() == ["* Goodbye."]
    assert h.outcomes == [LOST]


@pytest.mark.parametrize("key", ["Ctrl-C", "Ctrl-D"])
def test_a_ready_crossing_the_goodbye_after_a_cut_first_login_still_exits_130(
    key: str,
) -> None:
    """Ctrl-C on the connection after a cut first login, once its NICK
    went: the server had sent READY before it read the BYE.  The key was
    pressed before the chat was joined: 130, with the cut's sentence.  The
    READY made the session count as joined, and it exited 1 (rr19-client,
    left: read from the code)."""
    h = _flooded_at_the_first_login()
    _nick_sent(h)
    if key == "Ctrl-C":
        h.session.interrupt()
    else:
        h.session.end_of_typing()
    assert h.sent() == ["BYE"]
    h.receive("READY alice", "USER alice lobby", "USERS 1", "BYE quit")
    h.lose()
    assert h.outcomes == [Outcome(130, f"{BEFORE_JOINING} {STOPPED_WAITING.message}")]


# -- the held end of a reconnection lost at a password prompt -------------------------


@pytest.mark.parametrize("prompt", ["login", "/register"])
def test_a_held_end_that_reconnects_says_enter_reconnects(prompt: str) -> None:
    """A connection lost at an open password prompt, with another to
    follow, holds its end for the Enter after a password maybe typed blind:
    the words say that Enter reconnects (they said "Press Enter to leave"
    and the prompt "Enter leaves", and Enter reconnected), and it does."""
    h = Harness()
    h.join()
    if prompt == "login":
        h.lose()
        _password_prompt(h)
    else:
        h.session.user_line("/register")
        assert h.screen.secret_prompt == "password: "
    h.screen.take()
    h.lose()
    assert h.screen.secret_prompt == RECONNECTS_PROMPT
    assert h.screen.take()[-1] == (
        "! The connection is over: nothing you type now is shown or sent. "
        "Press Enter to reconnect, or Ctrl-C to leave."
    )
    clients = len(h.clients)
    h.session.secret_line("rest of a passw0rd")
    assert h.outcomes == []
    assert h.screen.take()[-1].startswith("* Reconnecting in ")
    h.clock.advance(3)
    assert len(h.clients) == clients + 1
