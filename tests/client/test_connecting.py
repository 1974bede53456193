"""
Getting connected and leaving: timeouts, a TLS port without --tls, Ctrl-C
before the chat was joined, a connection that drops, words said once.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure

from twisted_chat.client import render
from twisted_chat.client.diagnose import looks_like_tls
from twisted_chat.client.login import Login
from twisted_chat.client.protocol import ChatClient
from twisted_chat.client.session import Outcome, State

from .helpers import TS, session

LOST = Outcome(1, "The connection to chat.test:7000 was lost.")


def test_a_silent_server_times_out_with_a_hint_at_tls() -> None:
    s = session()
    s.clock.advance(ChatClient.GREETING_TIMEOUT - 0.1)
    assert not s.transport.disconnecting
    s.clock.advance(0.2)
    assert s.transport.disconnecting
    assert s.lose() == Outcome(
        1,
        "No greeting from chat.test:7000 within 15 seconds: is it a chat server? "
        "If it uses TLS, add --tls.",
    )


def test_the_greeting_timeout_stops_once_the_server_asks_for_a_nick() -> None:
    s = session(None)
    s.receive("HELLO chat/1 x")
    s.clock.advance(ChatClient.GREETING_TIMEOUT - 1)
    s.receive("NICK")
    s.clock.advance(3600)  # the person takes their time to choose
    assert not s.transport.disconnecting
    assert s.client.state is State.ASK_NICK


def test_the_greeting_timeout_over_tls_has_no_hint() -> None:
    s = session()
    s.client.tls = True
    s.clock.advance(ChatClient.GREETING_TIMEOUT)
    outcome = s.lose()
    assert outcome.message is not None and "--tls" not in outcome.message


def test_tls_bytes_from_the_server_get_the_hint_at_once() -> None:
    s = session()
    # A TLS alert record, as some servers answer a plain-text line.
    s.client.dataReceived(b"\x15\x03\x01\x00\x02\x02\x46")
    assert s.transport.disconnecting
    assert s.screen.lines == []  # not shown as a line of gibberish
    assert s.lose() == Outcome(
        1, "chat.test:7000 answered in TLS, not in plain text: add --tls to connect to it."
    )


def test_what_looks_like_tls() -> None:
    assert looks_like_tls(b"\x16\x03\x03\x00\x7a")
    assert looks_like_tls(b"\x15\x03\x01")
    assert not looks_like_tls(b"HELLO chat/1 x\r\n")
    assert not looks_like_tls(b"\x16")


def test_a_server_that_closes_without_a_word_gets_the_hint() -> None:
    s = session()
    assert s.lose() == Outcome(
        1,
        "chat.test:7000 closed the connection without a word: is it a chat server? "
        "If it uses TLS, add --tls.",
    )


def test_the_probe_is_a_ping_right_after_connecting() -> None:
    s = session(connect=False)
    s.client.probe = True
    s.client.makeConnection(s.transport)
    assert s.sent() == ["PING"]
    s.receive("HELLO chat/1 x", "NICK", "PONG")
    assert s.sent() == ["NICK alice"]
    assert not any("PONG" in line for line in s.screen.lines)


def test_a_script_does_not_wait_for_ever_for_the_answer_to_its_nick() -> None:
    # review rev3cli G: the server reads NICK and says nothing more.
    s = session("robot", interactive=False)
    s.receive("HELLO chat/1 test", "NICK")
    assert s.sent() == ["NICK robot"]
    s.type("backup finished")
    s.client.input_ended()
    s.clock.advance(ChatClient.GREETING_TIMEOUT - 0.1)
    assert not s.transport.disconnecting
    s.clock.advance(0.2)
    assert s.transport.disconnecting
    assert s.lose() == Outcome(
        1, "No answer from chat.test:7000 to the nickname within 15 seconds."
    )


def test_nor_for_the_answer_to_its_password() -> None:
    s = session("robot", interactive=False, environ={"CHAT_PASSWORD": "hunter2222"})
    s.receive("HELLO chat/1 test", "NICK")
    s.clock.advance(ChatClient.GREETING_TIMEOUT - 1)
    s.receive("PASS robot")  # an answer: the wait starts again for the password
    assert s.sent() == ["NICK robot", "PASS hunter2222"]
    s.clock.advance(ChatClient.GREETING_TIMEOUT - 0.1)
    assert not s.transport.disconnecting
    s.clock.advance(0.2)
    assert s.lose() == Outcome(
        1, "No answer from chat.test:7000 to the password within 15 seconds."
    )


def test_a_person_gets_the_same_bound_but_not_while_typing_a_password() -> None:
    s = session("bob")
    s.receive("HELLO chat/1 test", "NICK")
    s.receive("PASS bob")
    s.clock.advance(3600)  # at the password prompt: the person takes their time
    assert not s.transport.disconnecting
    s.client.secret_line("hunter2222")
    assert s.sent() == ["NICK bob", "PASS hunter2222"]
    s.clock.advance(ChatClient.GREETING_TIMEOUT + 0.1)
    assert s.transport.disconnecting


def test_answers_stop_the_wait() -> None:
    s = session("robot", interactive=False)
    s.receive("HELLO chat/1 test", "NICK", "RETRY unavailable later")
    s.clock.advance(Login.UNAVAILABLE_DELAY)  # NICK again: its own wait
    assert s.sent() == ["NICK robot", "NICK robot"]
    s.receive("READY robot", "USER robot lobby", "USERS 1")
    s.clock.advance(3600)
    assert not s.transport.disconnecting
    assert s.client.state is State.READY


def test_ctrl_c_while_connecting_exits_non_zero() -> None:
    s = session(connect=False)
    s.client.cancel_connect = lambda: None
    s.client.interrupt()
    assert s.outcomes == [Outcome(130, "Interrupted while connecting.")]


def test_ctrl_c_at_the_nickname_prompt_exits_non_zero() -> None:
    s = session(None)
    s.receive("HELLO chat/1 x", "NICK")
    s.client.interrupt()
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    assert s.lose() == Outcome(130, "Interrupted before joining the chat.")


def test_ctrl_c_before_the_greeting_exits_non_zero() -> None:
    s = session()
    s.client.interrupt()
    s.client.interrupt()  # the second one drops the connection
    assert s.transport.disconnecting
    assert s.lose().code == 130


def test_ctrl_c_in_the_chat_on_a_terminal_is_a_normal_quit() -> None:
    s = session()
    s.ready()
    s.client.interrupt()
    s.receive("BYE quit")
    assert s.lose() == Outcome(0)


def test_interrupting_a_script_exits_non_zero_after_saying_goodbye() -> None:
    s = session(interactive=False)
    s.ready()
    s.client.interrupt()
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    assert s.lose() == Outcome(130, "Interrupted.")


def test_ctrl_c_just_before_ready_arrives() -> None:
    # Found end to end: READY was on its way when BYE went out; the server's
    # "BYE quit" answer must still read as the goodbye it is.
    s = session(interactive=False)
    s.receive("HELLO chat/1 x", "NICK")
    assert s.sent() == ["NICK alice"]
    s.client.interrupt()
    assert s.sent() == ["BYE"]
    s.receive("READY alice", "USER alice lobby", "USERS 1", "BYE quit")
    assert s.client.state is State.QUITTING
    assert s.lose() == Outcome(130, "Interrupted.")


def _killed_while(order: str, reason: Failure) -> Outcome:
    s = session(interactive=False)
    s.ready()
    if order == "input ended first":
        s.client.input_ended()  # the script's stdin closes: BYE goes out
        assert s.sent() == ["BYE"]
    return s.lose(reason)


def test_a_killed_server_is_reported_the_same_for_a_clean_close_and_a_reset() -> None:
    # A server that is killed leaves a FIN (nothing unread) or a RST (our BYE,
    # or anything else, arrived after it died), before or after the client's
    # own input ended: every combination is the same lost connection.
    for order in ("connection lost first", "input ended first"):
        for reason in (ConnectionDone(), ConnectionLost()):
            assert _killed_while(order, Failure(reason)) == LOST, (order, reason)


def test_an_unanswered_bye_is_not_a_normal_quit() -> None:
    # review rev3cli O: docs/client.md's exit table gives 0 only when the
    # server said goodbye; without it, nothing says the last lines arrived.
    s = session()
    s.ready()
    s.type("/quit")
    s.clock.advance(ChatClient.QUIT_TIMEOUT)
    assert s.lose(Failure(ConnectionLost())) == Outcome(
        1, "No answer from chat.test:7000 to the goodbye within 5 seconds."
    )


def test_a_scripts_message_without_a_copy_back_is_reported_with_an_unanswered_bye() -> None:
    # review rev3cli O: the server read everything and answered nothing.
    s = session("robot", interactive=False)
    s.ready("robot")
    s.type("backup finished")
    s.client.input_ended()
    assert s.sent() == ["MSG backup finished", "BYE"]
    s.clock.advance(ChatClient.QUIT_TIMEOUT)
    assert s.lose() == Outcome(
        1,
        "No answer from chat.test:7000 to the goodbye within 5 seconds. "
        "The message sent was not confirmed by the server: “backup finished”.",
    )


def test_things_are_said_once() -> None:
    # The server's own words are kept only when they add something.
    assert render.bye("shutdown", "the server is shutting down") == "The server is shutting down."
    assert render.bye("shutdown", "back at 10:00") == (
        "The server is shutting down. (back at 10:00)"
    )
    assert render.bye("timeout", "no nickname after 30 seconds") == (
        "The server closed the connection: no activity for too long. "
        "(no nickname after 30 seconds)"
    )
    said = render.retry(
        "1bad",
        "invalid",
        "'1bad' is not a valid nick (1-24 letters, digits, _ or -, starting with a letter)",
    )
    assert said == (
        "'1bad' is not a valid nick (1-24 letters, digits, _ or -, starting with a letter)."
    )
    assert said.count("1bad") == 1
    assert render.retry("a b", "invalid", "usage: NICK <nick>") == (
        "The nickname 'a b' cannot be used (usage: NICK <nick>)."
    )
    assert render.retry("bob", "taken", "bob is online already") == (
        "The nickname bob is already taken by someone online."
    )


def test_shutdown_is_said_once() -> None:
    s = session()
    s.ready()
    s.receive("BYE shutdown the server is shutting down")
    assert s.lose() == Outcome(1, "The server is shutting down.")


def test_lobby_lines_missed_while_paired_come_under_their_own_heading() -> None:
    s = session()
    s.ready(users=("bob",))
    s.receive("PAIRED bob", f"MSG {TS} bob alice psst")
    s.screen.take()
    s.receive(
        "UNPAIRED bob left",
        "HISTORY 2026-11-22T14:01:00.000Z carol anyone there?",
        "HISTORY 2026-11-22T14:02:00.000Z dave lunch at noon",
        "USER alice lobby",
        "USER bob lobby",
        "USERS 2",
        f"MSG {TS} carol * welcome back",
    )
    assert s.screen.lines[:4] == [
        "* bob left the private conversation. You are back in the lobby.",
        "* While you were away, the lobby said:",
        "[14:01] <carol> anyone there?",
        "[14:02] <dave> lunch at noon",
    ]
    assert s.screen.lines[4] == "* 2 people online:"
    assert s.screen.lines[-1] == "[14:03] <carol> welcome back"
    assert "Recent messages" not in s.screen.text()


def test_joins_and_leaves_while_paired_come_in_time_order_among_the_missed_lines() -> None:
    # As the web page: the lobby's joins and leaves are held during the pair
    # and merged by time with its replayed lines, not shown before them.
    s = session()
    s.ready(users=("bob",))
    s.receive("PAIRED bob")
    s.screen.take()
    s.receive(
        "JOINED 2026-11-22T14:01:00.000Z eve",
        "LEFT 2026-11-22T14:03:00.000Z eve quit bye all",
        f"MSG {TS} bob alice psst",
    )
    assert s.screen.take() == ["[14:03] (private) bob -> you: psst"]
    assert "eve" not in s.client.online_nicks()  # the list is kept live
    s.receive(
        "UNPAIRED bob left",
        "HISTORY 2026-11-22T14:02:00.000Z eve eve says hi",
        "USER alice lobby",
        "USER bob lobby",
        "USERS 2",
    )
    assert s.screen.take()[:5] == [
        "* bob left the private conversation. You are back in the lobby.",
        "* While you were away, the lobby said:",
        "[14:01] * eve joined",
        "[14:02] <eve> eve says hi",
        "[14:03] * eve left (quit: bye all)",
    ]


def test_joins_while_paired_without_missed_lines_come_under_the_heading() -> None:
    s = session()
    s.ready(users=("bob",))
    s.receive("PAIRED bob", "JOINED 2026-11-22T14:01:00.000Z eve")
    s.screen.take()
    s.receive(
        "UNPAIRED bob left", "USER alice lobby", "USER bob lobby", "USER eve lobby", "USERS 3"
    )
    assert s.screen.take()[:3] == [
        "* bob left the private conversation. You are back in the lobby.",
        "* While you were away, the lobby said:",
        "[14:01] * eve joined",
    ]
    s.receive("JOINED 2026-11-22T14:04:00.000Z frank")
    assert s.screen.take() == ["[14:04] * frank joined"]  # live again


def test_joins_held_when_the_connection_ends_in_a_pair_are_shown() -> None:
    s = session()
    s.ready(users=("bob",))
    s.receive("PAIRED bob", "JOINED 2026-11-22T14:01:00.000Z eve")
    s.screen.take()
    s.receive("BYE shutdown")
    s.lose()
    assert s.screen.take()[:2] == ["* Meanwhile, in the lobby:", "[14:01] * eve joined"]


def test_nothing_missed_means_no_heading() -> None:
    s = session()
    s.ready(users=("bob",))
    s.receive("PAIRED bob", "UNPAIRED bob disconnected", "USER alice lobby", "USERS 1")
    assert "While you were away" not in s.screen.text()


def test_no_history_hides_the_login_history_but_not_what_was_missed() -> None:
    s = session(interactive=False)
    s.client.show_history = False
    s.receive("HELLO chat/1 x", "NICK", "READY alice")
    s.receive("HISTORY 2026-11-22T13:00:00.000Z bob old news", "USER alice lobby", "USERS 1")
    assert "old news" not in s.screen.text()
    assert "Recent messages" not in s.screen.text()
    s.receive(f"MSG {TS} bob * live news")
    assert s.screen.lines[-1] == "[14:03] <bob> live news"
    s.receive("PAIRED bob", "UNPAIRED bob left", f"HISTORY {TS} carol missed", "USERS 0")
    assert "[14:03] <carol> missed" in s.screen.lines
