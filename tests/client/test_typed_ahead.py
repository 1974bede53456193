"""
A line the user typed goes only where it was typed for (review rev3cli
J, K, A, B, H).  What cannot go where it was meant is dropped, and the user is
told how many lines:

- a line typed for a partner never goes to the lobby (nor a lobby line to a
  partner) when the pair ends or begins while the pacer holds it;
- a line half-typed when the login password prompt opens does not come back
  after it;
- a line typed while the server checks a nickname is never taken as the next
  nickname;
- a line typed before a password prompt that the pacer opens late, or while
  the password is checked, is never posted.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from twisted.internet.testing import StringTransport

from twisted_chat.client.login import Login
from twisted_chat.client.pipe import PipeIO
from twisted_chat.client.session import State
from twisted_chat.wire import ACCOUNTS_UNAVAILABLE, MEANT_FOR_LOBBY, list_cost

from .helpers import TS, Keyboard, Session, session

PASSWORD = "hunter2222"


def msgs(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("MSG ")]


def run_pacer(s: Session, seconds: float = 20) -> list[str]:
    """What the client sends while the pacer lets its queue go."""
    sent = s.sent()
    for _ in range(round(seconds / 0.5)):
        s.clock.advance(0.5)
        sent += s.sent()
    return sent


# -- K: lines that wait in the pacer when a pair ends or begins -----------------


@pytest.mark.parametrize("reason", ["left", "disconnected"])
def test_lines_typed_for_the_partner_do_not_go_to_the_lobby_when_the_pair_ends(
    reason: str,
) -> None:
    s = session("alice")
    s.ready("alice", users=("dave",))
    s.receive("PAIRED dave")
    s.sent()
    s.type(*[f"private line {i}" for i in range(30)])  # a paste for dave
    assert len(s.sent()) == 9  # the burst (NICK took one); the pacer holds 21
    s.screen.take()
    s.receive(f"UNPAIRED dave {reason}", "USER alice lobby", "USERS 1")
    assert "* 21 lines typed for dave were not sent: the private conversation ended." in (
        s.screen.lines
    )
    assert msgs(run_pacer(s)) == []
    s.type("now for the lobby")
    assert s.sent() == ["MSG now for the lobby"]


def test_commands_that_wait_still_go_when_the_pair_ends() -> None:
    s = session("alice", watch=False)  # no copies come back: not PINGed
    s.ready("alice", users=("dave",))
    s.receive("PAIRED dave")
    s.type(*[f"private line {i}" for i in range(12)], "/users", "@dave see you")
    s.sent()
    s.receive("UNPAIRED dave left")
    assert run_pacer(s) == ["USERS", "DM dave see you"]


def test_after_our_own_unpair_what_waits_goes_to_the_lobby() -> None:
    """What was typed after /unpair (it went first) is for the lobby, as it
    would have been without a wait."""
    s = session("alice", watch=False)  # no copies come back: not PINGed
    s.ready("alice", users=("dave",))
    s.receive("PAIRED dave")
    s.sent()
    s.type(*[f"private line {i}" for i in range(8)], "/unpair", "back in the lobby")
    assert s.sent()[-1] == "UNPAIR"
    s.receive("UNPAIRED dave left")
    assert run_pacer(s) == ["MSG back in the lobby"]


def test_what_follows_a_waiting_unpair_goes_where_the_unpair_leads() -> None:
    s = session("alice", watch=False)  # no copies come back: not PINGed
    s.ready("alice", users=("dave",))
    s.type("/pair dave")
    s.receive("PENDING dave")
    s.type(*[f"filler {i}" for i in range(8)], "lobby 1", "/unpair", "lobby 2")
    assert len(s.sent()) == 9  # PAIR and 8 fillers: "lobby 1" and the rest wait
    s.receive("PAIRED dave")  # dave accepts meanwhile
    assert s.screen.lines[-1] == (
        "* 1 line typed for the lobby was not sent: you are now talking with dave only."
    )
    s.clock.advance(0.2)
    assert s.sent() == ["UNPAIR"]
    s.receive("UNPAIRED dave left")
    assert run_pacer(s) == ["MSG lobby 2"]


def test_a_script_that_accepts_then_talks_talks_to_its_partner() -> None:
    s = session("robot", interactive=False, watch=False)  # no copies come back: not PINGed
    s.ready("robot", users=("dave",))
    s.receive("INVITE dave")
    s.type(*[f"report line {i}" for i in range(9)], "/accept", "hi dave")
    s.sent()
    s.clock.advance(0.2)
    assert s.sent() == ["ACCEPT dave"]
    s.receive("PAIRED dave")
    assert run_pacer(s) == ["DM dave hi dave"]


def test_lobby_lines_do_not_go_to_someone_who_accepts_our_invitation_meanwhile() -> None:
    s = session("alice")
    s.ready("alice", users=("dave",))
    s.type("/pair dave")
    assert s.sent() == ["PAIR dave"]
    s.receive("PENDING dave")
    s.type(*[f"lobby line {i}" for i in range(20)])
    assert len(s.sent()) == 8
    s.screen.take()
    s.receive("PAIRED dave")
    assert "* 12 lines typed for the lobby were not sent: you are now talking with dave only." in (
        s.screen.lines
    )
    assert run_pacer(s) == []


@pytest.mark.parametrize("verb", ["ACCEPT", "PAIR"])
def test_a_pairing_command_refused_for_the_list_s_cost_is_not_in_flight_any_more(
    verb: str,
) -> None:
    """ERROR flood "slow down: ACCEPT costs ..." (the user list the answer
    would send: the line is not done) names the command it answers: the
    client no longer waits for it, so dave accepting our invitation after
    it is not taken for our own doing, and lobby lines stay out of the
    conversation.  The "command in flight" flag stayed set (only the
    pairing codes cleared it): the lines went to dave."""
    s = session("alice")
    s.ready("alice", users=("dave", "carol"))
    s.type("/pair dave")
    assert s.sent() == ["PAIR dave"]
    s.receive("PENDING dave", "INVITE carol")
    s.type("/accept carol" if verb == "ACCEPT" else "/pair carol")
    assert s.sent() == [f"{verb} carol"]
    s.receive(f"ERROR flood {list_cost(verb)}4096 bytes of the user list (123456 bytes "
              "now), at most 20, at 10 lines per second; try again in a moment")
    s.type(*[f"lobby line {i}" for i in range(20)])
    sent = len(s.sent())
    s.screen.take()
    s.receive("PAIRED dave")
    assert (
        f"* {20 - sent} lines typed for the lobby were not sent: you are now talking "
        "with dave only."
    ) in s.screen.lines
    assert run_pacer(s) == []


STORE_OUT = "not sent: the chat's store refused to store it; send it again in a moment"


LINES_DROPPED = "slow down: at most 10 lines per second (bursts of 20); lines are being dropped"
LOBBY_DROPPED = ("slow down: at most 2 lobby messages per second from your address (bursts "
                 "of 10); lines are being dropped")
INTERNAL = "ERROR internal the server hit a fault handling that command (it is logged)"
UNCONFIRMED = ("ERROR unconfirmed the chat lost touch with its store as this command was "
               "being sent; it takes effect once when the store is back (its result then)")


@pytest.mark.parametrize(("answer", "said"), [
    (f"ERROR unavailable {STORE_OUT}", None),
    (INTERNAL, "* The server failed on /unpair: you are still talking with dave only unless "
     "it says otherwise."),
    (f"ERROR flood {LINES_DROPPED}",
     "* /unpair was dropped, not done: you are still talking with dave only."),
])
def test_an_unpair_not_carried_out_is_not_in_flight_any_more(answer: str, said: str | None
                                                              ) -> None:
    """/unpair answered ERROR unavailable (a cluster did not carry it out),
    ERROR internal, or dropped (ERROR flood): the pair goes on (the last
    two say so), and what is typed next is for dave.  When dave then ends
    the pair, his UNPAIRED is his doing, and the lines still waiting for
    him do not go to the lobby.  The flag stayed set: it said "You left the
    private conversation", and the lines went to the whole lobby."""
    s = session("alice", watch=False)  # no copies come back: not PINGed
    s.ready("alice", users=("dave",))
    s.receive("PAIRED dave")
    s.type("/unpair")
    assert s.sent() == ["UNPAIR"]
    s.screen.take()
    s.receive(answer)
    shown = [line for line in s.screen.take() if "/unpair" in line]
    assert shown == ([] if said is None else [said])
    s.type(*[f"private line {i}" for i in range(30)])
    waiting = 30 - len(s.sent())
    s.screen.take()
    s.receive("UNPAIRED dave left", "USER alice lobby", "USER dave lobby", "USERS 2")
    assert "* dave left the private conversation. You are back in the lobby." in s.screen.lines
    assert (f"* {waiting} lines typed for dave were not sent: the private conversation "
            "ended.") in s.screen.lines
    assert msgs(run_pacer(s)) == []


@pytest.mark.parametrize(("before", "answers", "ours"), [
    ((), [f"ERROR unavailable {STORE_OUT}"], False),
    ((), ["ERROR unavailable lost: the chat's store lost it after taking it, so it has no "
          "effect (some may have seen it before the loss); send it again"], False),
    ((), ["ERROR unavailable"], False),
    # It takes effect once the store is back: still in flight.
    ((), [UNCONFIRMED], True),
    # It answers a message whose pair changed, not the ACCEPT.
    ((), [f"ERROR unavailable {MEANT_FOR_LOBBY}bob when it came to be delivered; send "
          "it again"], True),
    # It answers a REGISTER or PASSWD, not the ACCEPT.
    ((), [f"ERROR unavailable {ACCOUNTS_UNAVAILABLE} now; send it again in a moment"], True),
    # Nothing sent before it is unanswered: the error answers the ACCEPT.
    ((), [INTERNAL], False),
    ((), [f"ERROR flood {LINES_DROPPED}"], False),
    # A lobby message sent before it has its copy back: likewise.
    (("hello",), [f"MSG {TS} alice * hello", f"ERROR flood {LINES_DROPPED}"], False),
    (("hello",), [f"MSG {TS} alice * hello", INTERNAL], False),
    # The error may answer the lobby message sent before it, still unanswered.
    (("hello",), [f"ERROR flood {LINES_DROPPED}"], True),
    (("hello",), [INTERNAL], True),
    # Only a lobby message is dropped for its address's lobby rate.
    ((), [f"ERROR flood {LOBBY_DROPPED}"], True),
    # A cluster answered it unconfirmed: the lines after it are answered first.
    ((), [UNCONFIRMED, f"ERROR flood {LINES_DROPPED}"], True),
])
def test_an_accept_not_carried_out_is_not_in_flight_any_more(
    before: tuple[str, ...], answers: list[str], ours: bool
) -> None:
    """A cluster's ERROR unavailable may answer any command, the ACCEPT
    in flight among them, and says it had no effect: the client no longer
    waits for it, so dave accepting our invitation after it is not taken
    for our own doing, and the lobby lines typed meanwhile stay out of the
    conversation (the flag stayed set: they went to dave).  Taken wrongly,
    the lines would be dropped and said, never sent elsewhere.

    ERROR internal, and an ERROR flood for a dropped line, do not say
    which line they answer; the server answers lines in order, so while
    the ACCEPT waits for its answer and no message sent before it is
    unanswered, they answer it (or an earlier command) and it was not
    done: the wait ends, said in one line, and dave accepting our
    invitation after it is not taken for our own doing (the lobby lines
    typed meanwhile stay out of the conversation).  The flag stayed set
    (the lines went to dave).  An error that may be a lobby message's
    leaves the ACCEPT in flight."""
    s = session("alice")
    s.ready("alice", users=("dave", "carol"))
    s.type("/pair dave")
    assert s.sent() == ["PAIR dave"]
    s.receive("PENDING dave", "INVITE carol")
    s.type(*before, "/accept carol")
    assert s.sent() == [*(f"MSG {line}" for line in before), "ACCEPT carol"]
    s.screen.take()
    s.receive(*answers)
    shown = [line for line in s.screen.take() if "/accept carol" in line]
    if answers[-1] == INTERNAL and not ours:
        assert shown == ["* The server failed on /accept carol: you are still in the lobby "
                         "unless it says otherwise."]
    elif answers[-1] == f"ERROR flood {LINES_DROPPED}" and not ours:
        assert shown == ["* /accept carol was dropped, not done: you are still in the lobby."]
    else:
        assert shown == []
    s.type(*[f"line {i}" for i in range(20)])
    waiting = 20 - len(msgs(s.sent()))
    s.screen.take()
    s.receive("PAIRED dave")
    dropped = (f"* {waiting} lines typed for the lobby were not sent: you are now talking "
               "with dave only.")
    assert (dropped in s.screen.lines) is not ours
    # (After an ERROR flood the pacer may have slowed to 1 line a second.)
    to_dave = [line for line in run_pacer(s, 40) if line.startswith("DM dave ")]
    assert len(to_dave) == (waiting if ours else 0)


# -- H: the line half-typed when a password prompt opens ------------------------


def _on_a_terminal(nick: str) -> tuple[Session, Keyboard]:
    s = session(nick, connect=False)
    k = Keyboard(width=60)
    k.ui.on_line = s.client.user_line
    k.ui.on_secret = s.client.secret_line
    s.client.display = k.ui
    s.client.makeConnection(s.transport)
    return s, k


def test_a_half_typed_line_before_the_login_prompt_does_not_come_back() -> None:
    s, k = _on_a_terminal("bob")
    s.receive("HELLO chat/1 test", "NICK")
    assert s.sent() == ["NICK bob"]
    k.keys("hunter22")  # typed ahead, no Enter yet, when the server's PASS comes
    s.receive("PASS bob")
    k.keys(PASSWORD + "\r")
    assert s.sent() == [f"PASS {PASSWORD}"]
    s.receive("READY bob")
    assert k.ui.lineBuffer == []
    assert not any("hunter22" in row for row in k.rows()), k.rows()
    screen = " ".join(row.strip() for row in k.rows())
    assert "The line you were typing before the password prompt was cleared" in screen
    k.keys("\r")
    assert msgs(s.sent()) == []


def test_lines_and_a_half_typed_line_are_counted_in_one_sentence() -> None:
    s = session("bob")
    s.receive("HELLO chat/1 test", "NICK")
    s.sent()
    s.type("hello", "again")
    s.screen.typing = "hunt"
    s.receive("PASS bob")
    assert (
        "* 2 lines typed before the password prompt were not sent and the line you were "
        "typing was cleared (it could be the password); type it again once you are in."
    ) in s.screen.lines


# -- J: the nickname prompt again --------------------------------------------


def _retry_taken(s: Session) -> None:
    s.receive("RETRY taken bob is online")


def _error_answering_nick(s: Session) -> None:
    s.receive("ERROR bad-args the server could not use that nickname")


def _flood_until_given_up(s: Session) -> None:
    for _ in range(Login.FLOOD_TRIES):
        s.receive("ERROR flood too many nicknames from your address; try again in 20 s")
        s.clock.advance(20)
        assert s.sent() == ["NICK bob"]
    s.receive("ERROR flood too many nicknames from your address; try again in 20 s")


def _unavailable_until_given_up(s: Session) -> None:
    for _ in range(Login.UNAVAILABLE_TRIES):
        s.receive("RETRY unavailable the server cannot check nicks now")
        s.clock.advance(Login.UNAVAILABLE_DELAY)
        assert s.sent() == ["NICK bob"]
    s.receive("RETRY unavailable the server cannot check nicks now")


@pytest.mark.parametrize(
    "answer",
    [_retry_taken, _error_answering_nick, _flood_until_given_up, _unavailable_until_given_up],
)
def test_a_password_typed_ahead_is_not_sent_as_the_next_nickname(
    answer: Callable[[Session], None],
) -> None:
    """A user whose ghost connection still holds the nick types the password
    ahead of the prompt they expect; the prompt that comes is for a nickname:
    the password was sent as NICK, and announced to everyone."""
    s = session("bob")
    s.receive("HELLO chat/1 test", "NICK")
    assert s.sent() == ["NICK bob"]
    s.type(PASSWORD)
    answer(s)
    assert s.client.state is State.ASK_NICK
    assert s.sent() == []
    assert s.screen.forgotten == [PASSWORD]
    assert (
        "* 1 line typed before the nickname prompt was not sent (it could be the password); "
        "type it again once you are in."
    ) in s.screen.lines
    assert s.screen.lines[-1].endswith(":")  # the prompt's words come last
    s.type("bob2")
    assert s.sent() == ["NICK bob2"]


def test_the_first_nickname_prompt_still_takes_a_line_typed_while_connecting() -> None:
    s = session(None)
    s.type("alice")
    s.receive("HELLO chat/1 test", "NICK")
    assert s.sent() == ["NICK alice"]
    assert s.screen.forgotten == []


# -- A: a /register prompt that the pacer opens late ----------------------------


def test_a_password_typed_ahead_of_a_paced_register_prompt_is_not_posted() -> None:
    s = session("alice")
    s.ready("alice")
    s.sent()
    s.type(*[f"pasted line {i}" for i in range(12)])  # 10 go, 2 wait
    s.type("/register")
    s.type(PASSWORD)  # typed expecting the prompt, which waits behind the paste
    assert s.screen.secret_prompt is None
    sent = run_pacer(s)
    assert f"MSG {PASSWORD}" not in sent
    assert msgs(sent) == [f"MSG pasted line {i}" for i in range(12)]
    assert s.screen.secret_prompt == "password: "
    assert s.screen.forgotten == [PASSWORD]  # Up does not bring it back
    assert (
        "* 1 line typed before the password prompt was not sent (it could be the password); "
        "type it again afterwards."
    ) in s.screen.lines
    s.client.secret_line(PASSWORD)
    s.client.secret_line(PASSWORD)
    assert s.sent() == [f"REGISTER {PASSWORD}"]


def test_a_half_typed_line_does_not_come_back_after_a_paced_register_prompt() -> None:
    s, k = _on_a_terminal("alice")
    s.ready("alice")
    paste = "".join(f"pasted line {i}\r" for i in range(12))
    k.keys(paste + "/register\r")
    k.keys("\r")  # send the 13 lines pasted (held until Enter)
    k.keys("hunter2")  # half-typed when the prompt opens
    run_pacer(s)
    assert k.ui._secret_prompt == "password: "
    k.keys("\r")  # just Enter: nothing is registered
    assert k.ui.lineBuffer == []
    assert not any("hunter2" in row for row in k.rows()), k.rows()


# -- B: the password prompt again after ERROR flood (busy) ----------------------


def test_a_line_typed_while_the_password_is_checked_is_not_posted_after_error_flood_busy() -> None:
    s = session("bob")
    s.receive("HELLO chat/1 test", "NICK")
    assert s.sent() == ["NICK bob"]
    s.receive("PASS bob")
    s.client.secret_line(PASSWORD)
    assert s.sent() == [f"PASS {PASSWORD}"]
    s.type(PASSWORD)  # the check takes a while; the prompt is "> "
    s.receive("ERROR flood the server is busy; send PASS again in a moment")
    assert s.screen.secret_prompt == "password for bob: "
    assert s.screen.forgotten == [PASSWORD]
    s.client.secret_line(PASSWORD)
    assert s.sent() == [f"PASS {PASSWORD}"]
    s.receive("READY bob", "USER bob lobby", "USERS 1")
    assert msgs(run_pacer(s, 2)) == []


def test_a_line_typed_while_the_password_is_checked_is_not_posted_after_ready() -> None:
    s = session("bob")
    s.receive("HELLO chat/1 test", "NICK", "PASS bob")
    s.client.secret_line(PASSWORD)
    assert s.sent() == ["NICK bob", f"PASS {PASSWORD}"]
    s.type(PASSWORD)  # the check takes a while; the prompt is "> "
    s.receive("READY bob", "USER bob lobby", "USERS 1")
    assert msgs(run_pacer(s, 2)) == []
    assert s.screen.forgotten == [PASSWORD]
    assert (
        "* 1 line typed while the password was checked was not sent (it could be the "
        "password); type it again now."
    ) in s.screen.lines


def test_a_line_typed_while_connecting_still_goes_after_ready_without_a_password() -> None:
    s = session("bob")
    s.type("hello everyone")
    s.receive("HELLO chat/1 test", "NICK")
    assert s.sent() == ["NICK bob"]
    s.type("and again")
    s.receive("READY bob")
    assert s.sent() == ["MSG hello everyone", "MSG and again"]


def test_a_scripts_input_is_read_again_once_its_lines_for_the_partner_are_dropped() -> None:
    s = session("robot", interactive=False)
    pipe = PipeIO(s.client.user_line, s.client.input_ended)
    stdio = StringTransport()
    pipe.makeConnection(stdio)
    s.client.input = pipe
    s.ready("robot", users=("dave",))
    s.receive("PAIRED dave")
    pipe.dataReceived(b"for dave\n" * (s.client.QUEUE_MAX + 20))
    assert stdio.producerState == "paused"
    s.sent()
    s.receive("UNPAIRED dave left")
    assert not s.client.outbox
    s.clock.advance(0)
    assert stdio.producerState == "producing"


# -- rev15 H2: the line half-typed when the conversation changes under it ---------


def _typing_on_a_terminal(s: Session, k: Keyboard, nick: str = "alice") -> None:
    s.receive("HELLO chat/1 test", "NICK")
    assert s.sent() == [f"NICK {nick}"]
    s.receive(f"READY {nick}", f"USER {nick} lobby", "USER bob lobby", "USERS 2")


def _screen(k: Keyboard) -> str:
    return " ".join(row.strip() for row in k.rows())


def _up_over_a_draft() -> Keyboard:
    """A terminal where "an old line" was sent, then "the draft" typed and
    Up pressed: the old line is shown, the draft put aside."""
    k = Keyboard(width=60)
    k.keys("an old line\r")
    k.keys("the draft")
    k.keys("\x1b[A")
    return k


@pytest.mark.parametrize("reason", ["left", "disconnected"])
def test_a_private_reply_half_typed_when_the_pair_ends_does_not_go_to_the_lobby(
    reason: str,
) -> None:
    s, k = _on_a_terminal("alice")
    _typing_on_a_terminal(s, k)
    s.receive("PAIRED bob")
    k.keys("my PIN is 4711")  # no Enter yet
    s.receive(f"UNPAIRED bob {reason}", "USER alice lobby", "USERS 1")
    assert k.ui.lineBuffer == []
    assert k.input_row().strip() == "alice>"
    assert "The line you were typing for bob was not sent: the private conversation " \
        "ended. Up brings it back." in _screen(k)
    k.keys("\r")  # the Enter that was to send it
    assert msgs(s.sent()) == []
    k.keys("\x1b[A")  # Up: it is there, to send to the lobby only if the user means to
    assert "".join(k.ui.lineBuffer) == "my PIN is 4711"


def test_a_lobby_line_half_typed_when_our_invitation_is_accepted_does_not_go_to_the_partner(
) -> None:
    s, k = _on_a_terminal("alice")
    _typing_on_a_terminal(s, k)
    k.keys("/pair bob\r")
    assert s.sent() == ["PAIR bob"]
    s.receive("PENDING bob")
    k.keys("everyone: lunch at noon?")
    s.receive("PAIRED bob")
    assert k.ui.lineBuffer == []
    assert "The line you were typing for the lobby was not sent: you are now talking " \
        "with bob only. Up brings it back." in _screen(k)
    k.keys("\r")
    assert s.sent() == []


def test_a_line_typed_after_our_own_accept_or_unpair_stays_on_the_line() -> None:
    s, k = _on_a_terminal("alice")
    _typing_on_a_terminal(s, k)
    s.receive("INVITE bob")
    k.keys("/accept bob\r")
    assert s.sent() == ["ACCEPT bob"]
    k.keys("hi bob")  # typed for bob, before his PAIRED came
    s.receive("PAIRED bob")
    assert "".join(k.ui.lineBuffer) == "hi bob"
    k.keys("\r")
    assert s.sent() == ["DM bob hi bob"]
    k.keys("/unpair\r")
    assert s.sent() == ["UNPAIR"]
    k.keys("back in the lobby")
    s.receive("UNPAIRED bob left", "USER alice lobby", "USERS 1")
    assert "".join(k.ui.lineBuffer) == "back in the lobby"
    assert "not sent" not in _screen(k)


def test_what_is_set_aside_includes_a_held_paste_and_the_draft_up_hid() -> None:
    k = _up_over_a_draft()
    assert k.ui.set_aside() == ["the draft", "an old line"]
    assert k.ui.lineBuffer == []
    k.keys("\x1b[200~one\rtwo\rthree\rfour\rfive\rsix\r\x1b[201~")  # held for Enter
    assert k.ui.set_aside() == ["one", "two", "three", "four", "five", "six"]
    k.keys("\r")  # the Enter that was to send the paste
    assert k.typed == ["an old line", ""]
    k.keys("\x1b[A")
    assert "".join(k.ui.lineBuffer) == "six"


# -- reread15 #2: set_aside and drop_typing take the same things off the line ---


def test_the_draft_up_hid_is_set_aside_under_a_password_prompt_too() -> None:
    # A password prompt opened while Up showed an old line: the draft Up hid
    # is set aside with the interrupted line, as without the prompt (and as
    # drop_typing counts it), not thrown away unsaved.
    k = _up_over_a_draft()
    k.ui.ask_secret("password: ")
    assert k.ui.set_aside() == ["the draft", "an old line"]
    k.ui.end_secret()
    assert k.ui.lineBuffer == []
    k.keys("\x1b[A")
    assert "".join(k.ui.lineBuffer) == "an old line"
    k.keys("\x1b[A")
    assert "".join(k.ui.lineBuffer) == "the draft"


def test_a_draft_shown_again_and_cleared_is_not_a_line_dropped() -> None:
    # Up, then Down, brings the draft back onto the line; cleared there
    # (Ctrl-U), nothing is left to drop: the copy Up kept is not counted.
    k = _up_over_a_draft()
    k.keys("\x1b[B")  # Down: the draft is back on the line
    assert "".join(k.ui.lineBuffer) == "the draft"
    k.keys("\x15")  # Ctrl-U
    assert k.ui.lineBuffer == []
    assert not k.ui.drop_typing()
    k.keys("typed\x1b[A")  # while Up shows an old line, the draft it hid counts
    assert k.ui.drop_typing()
