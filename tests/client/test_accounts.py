"""
Accounts on the client's side (chat/1, "Accounts"): the password a nick with
an account needs, /register and /passwd, and what the server answers.
"""

from __future__ import annotations

import unicodedata

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from twisted_chat.client.commands import Local, Secret, is_secret_command, parse_input
from twisted_chat.client.login import Login
from twisted_chat.client.session import Outcome, State
from twisted_chat.server.accounts.login import ADDRESS_BUSY_TEXT

from .helpers import TS, Keyboard, Session, session

UP = b"\x1b[A"

SECRET = "correct horse"


def _asked_for_password(s: Session) -> None:
    s.receive("HELLO chat/1 x", "NICK")
    assert s.sent() == ["NICK alice"]
    s.receive("PASS alice")


def test_a_terminal_asks_for_the_password_without_showing_it() -> None:
    s = session()
    _asked_for_password(s)
    assert s.client.state is State.ASK_PASSWORD
    assert s.screen.secret_prompt == "password for alice: "
    # Not "alice has an account here": under --accounts required the server
    # asks every nick, one with no account too (review rev12 #2).
    asked = " ".join(s.screen.text().split())
    assert "has an account here" not in asked
    assert ("* The server asks for the password of alice: type it (it is not shown), or "
            "just Enter to choose another nickname. (It asks when the nickname has an "
            "account, or for every nickname if it admits only accounts its operator "
            "made.)") in asked
    s.client.secret_line(SECRET)
    assert s.sent() == [f"PASS {SECRET}"]
    assert s.screen.secret_prompt is None
    s.receive("READY alice")
    assert s.client.state is State.READY
    assert SECRET not in s.screen.text()


def test_lines_typed_before_the_password_prompt_are_not_sent() -> None:
    """One of them may be the password, typed ahead by someone who knows it
    is asked for: it must not reach the lobby, nor stay in the history."""
    s = session()
    s.type("hello everyone")  # typed while connecting
    _asked_for_password(s)
    assert s.sent() == []
    assert s.screen.forgotten == ["hello everyone"]
    assert s.screen.lines[-2] == (
        "* 1 line typed before the password prompt was not sent (it could be the "
        "password); type it again once you are in."
    )
    s.client.secret_line(SECRET)
    s.receive("READY alice")
    assert s.sent() == [f"PASS {SECRET}"]


def test_a_password_typed_ahead_of_its_prompt_is_not_posted_to_the_lobby() -> None:
    s = session("bob")
    s.receive("HELLO chat/1 test", "NICK")
    assert s.sent() == ["NICK bob"]
    s.type("hunter2222")  # typed while waiting (no prompt yet)
    s.receive("PASS bob")
    s.client.secret_line("hunter2222")  # typed again at the password prompt
    assert s.sent() == ["PASS hunter2222"]
    s.receive("READY bob", "USER bob lobby", "USERS 1")
    assert "MSG hunter2222" not in s.sent()
    assert "hunter2222" not in s.screen.text()
    assert s.screen.forgotten == ["hunter2222"]


def test_a_wrong_password_on_a_terminal_asks_again() -> None:
    s = session()
    _asked_for_password(s)
    s.client.secret_line("not the one")
    assert s.sent() == ["PASS not the one"]
    s.receive("RETRY bad-password wrong password, or no account for that nick; send NICK again")
    # The server's words, which do not say which of the two it was.
    assert ("! The password for alice was not accepted (wrong password, or no account for "
            "that nick).") in " ".join(s.screen.text().split())
    assert s.sent() == ["NICK alice"]  # the server wants NICK again
    s.receive("PASS alice")
    assert s.screen.secret_prompt == "password for alice: "


def test_not_ready_at_the_password_prompt_says_the_password_is_awaited() -> None:
    """An ERROR not-ready while the server waits for the password (its text
    says so since 3db90f1) was shown as "Choose a nickname first.": at the
    password prompt, the client now says the password is awaited, in its
    own words, and the prompt stays; after a PASS it is asked again."""
    s = session()
    _asked_for_password(s)
    s.screen.take()
    waiting = ("ERROR not-ready the server is waiting for the password of alice: send "
               "PASS <password>, or NICK <nick> to choose another nick")
    s.receive(waiting)
    assert " ".join(" ".join(s.screen.take()).split()) == (
        "! The server is waiting for the password of alice first: type it at the "
        "password prompt, or just Enter there to choose another nickname."
    )
    assert s.client.state is State.ASK_PASSWORD
    assert s.screen.secret_prompt == "password for alice: "
    s.client.secret_line(SECRET)
    assert s.sent() == [f"PASS {SECRET}"]
    s.receive(waiting)
    assert "! The server is waiting for the password of alice first: type it" in (
        " ".join(s.screen.text().split()))
    assert s.screen.secret_prompt == "password for alice: "


def test_not_ready_online_is_said_in_the_clients_words_too() -> None:
    """Away from the password prompt the client says an ERROR not-ready in
    its own words as well (render.not_ready, not error_sentence's fallback
    "Choose a nickname first.")."""
    s = session("bob")
    s.receive("HELLO chat/1 test", "NICK", "READY bob", "USER bob lobby", "USERS 1")
    s.screen.take()
    s.receive("ERROR not-ready no password was asked for: you are already bob")
    assert s.screen.take() == ["! No password was asked for: you are already bob."]


def test_a_password_the_server_refuses_at_login_is_asked_for_again() -> None:
    """An ERROR (not a RETRY) answering PASS left the client waiting, with no
    prompt, until the server's --nick-timeout closed the connection."""
    s = session("bob")
    s.receive("HELLO chat/1 test", "NICK")
    s.sent()
    s.receive("PASS bob")
    s.client.secret_line("long enough")
    assert s.sent() == ["PASS long enough"]
    s.screen.take()
    s.receive("ERROR weak-password a password is 8 to 256 bytes long")
    assert s.client.state in (State.ASK_PASSWORD, State.ASK_NICK)
    assert s.client.state is State.ASK_PASSWORD
    assert s.screen.secret_prompt == "password for bob: "
    assert s.screen.take() == [
        "! The server refused that password: a password is 8 to 256 bytes long."
    ]
    s.receive("ERROR flood the server is busy; send PASS again in a moment")
    assert s.sent() == []  # not while the prompt is up
    s.client.secret_line("the right one")
    assert s.sent() == ["PASS the right one"]
    s.receive("ERROR flood the server is busy; send PASS again in a moment")
    assert s.screen.take()[-1] == (
        "! The server did not check that password: the server is busy; send PASS again "
        "in a moment."
    )
    s.client.secret_line("the right one")
    assert s.sent() == ["PASS the right one"]
    s.receive("READY bob")
    assert s.client.state is State.READY


def test_a_password_too_short_to_send_is_asked_for_again_at_once() -> None:
    s = session("bob")
    s.receive("HELLO chat/1 test", "NICK")
    s.sent()
    s.receive("PASS Bob")  # the nick as its account spells it
    assert s.screen.secret_prompt == "password for Bob: "
    s.screen.take()
    s.client.secret_line("short")
    assert s.sent() == []
    assert s.client.state is State.ASK_PASSWORD
    assert s.screen.secret_prompt == "password for Bob: "
    assert s.screen.take() == [
        "! A password needs at least 8 bytes (characters, for plain ASCII). Nothing was sent."
    ]


# 9 bytes as typed, 6 in NFC form: the server's PASS checks it (an account
# may have been set with it before passwords were normalised), its REGISTER
# and PASSWD refuse it (weak-password), as the client does (rr22-g 1).
NFD_SHORT = unicodedata.normalize("NFD", "ééé")


def test_a_password_fitting_only_as_typed_is_sent_at_login_not_registered() -> None:
    typed = session()
    _asked_for_password(typed)
    typed.client.secret_line(NFD_SHORT)
    assert typed.sent() == [f"PASS {NFD_SHORT}"]
    scripted = session(interactive=False, environ={"CHAT_PASSWORD": NFD_SHORT})
    _asked_for_password(scripted)
    assert scripted.sent() == [f"PASS {NFD_SHORT}"]
    typed.receive("READY alice")
    unregistered = session()
    unregistered.ready()
    for s, command in ((unregistered, "/register"), (typed, "/passwd")):
        s.type(command)
        s.client.secret_line(NFD_SHORT)
        s.client.secret_line(NFD_SHORT)
        assert s.sent() == []
        assert s.screen.lines[-1].startswith("! A password needs at least 8 bytes")
    scripted = session(interactive=False, environ={"CHAT_PASSWORD": NFD_SHORT})
    scripted.ready()
    scripted.type("/register")
    assert scripted.sent() == []
    assert scripted.screen.lines[-1].startswith("! A password needs at least 8 bytes")


def test_a_script_whose_password_cannot_be_sent_stops_at_once() -> None:
    s = session(interactive=False, environ={"CHAT_PASSWORD": "short"})
    s.type("hello")
    _asked_for_password(s)
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    assert s.lose() == Outcome(
        1,
        "The password in CHAT_PASSWORD cannot be used: A password needs at least 8 bytes "
        "(characters, for plain ASCII).",
    )


def test_a_script_whose_password_the_server_refuses_stops_at_once() -> None:
    s = session(interactive=False, environ={"CHAT_PASSWORD": "long enough"})
    _asked_for_password(s)
    assert s.sent() == ["PASS long enough"]
    s.receive("ERROR weak-password a password is 8 to 256 bytes long")
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    assert s.lose() == Outcome(
        1, "The server refused that password: a password is 8 to 256 bytes long."
    )


def test_an_empty_password_chooses_another_nick() -> None:
    s = session()
    _asked_for_password(s)
    s.client.secret_line("")
    assert s.sent() == []
    assert s.client.state is State.ASK_NICK
    s.type("alice2")
    assert s.sent() == ["NICK alice2"]


def test_a_script_takes_its_password_from_chat_password() -> None:
    s = session(interactive=False, environ={"CHAT_PASSWORD": SECRET})
    s.type("hello")
    _asked_for_password(s)
    assert s.sent() == [f"PASS {SECRET}"]
    assert s.screen.secret_prompt is None
    s.receive("READY alice")
    assert s.sent() == ["MSG hello"]


def test_a_script_without_chat_password_stops() -> None:
    s = session(interactive=False)
    s.type("hello")
    _asked_for_password(s)
    assert s.sent() == ["BYE"]  # nothing else: not the queued message
    s.receive("BYE quit")
    assert s.lose() == Outcome(
        1, "The server asks for the password of alice: give it in CHAT_PASSWORD."
    )


def test_a_script_with_a_wrong_password_stops() -> None:
    s = session(interactive=False, environ={"CHAT_PASSWORD": "wrong one"})
    _asked_for_password(s)
    assert s.sent() == ["PASS wrong one"]
    s.receive("RETRY bad-password wrong password, or no account for that nick")
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    assert s.lose() == Outcome(
        1, "The password for alice was not accepted (wrong password, or no account for "
        "that nick).")




def test_a_script_is_not_told_of_a_password_prompt_it_does_not_have() -> None:
    """A script (no terminal) that sent CHAT_PASSWORD and meets ERROR
    not-ready stops, and its exit message says what the server waits for
    without the terminal's advice to "type it at the password prompt"
    (mutation audit F10)."""
    s = session(interactive=False, environ={"CHAT_PASSWORD": SECRET})
    _asked_for_password(s)
    assert s.sent() == [f"PASS {SECRET}"]
    s.receive("ERROR not-ready the server is waiting for the password of alice: send "
              "PASS <password>, or NICK <nick> to choose another nick")
    assert s.sent() == ["BYE"] and s.screen.secret_prompt is None
    s.receive("BYE quit")
    assert s.lose() == Outcome(1, "The server is waiting for the password of alice first.")
def test_a_script_whose_nick_came_from_its_input_stops_at_a_wrong_password() -> None:
    """It used to send NICK and the same wrong CHAT_PASSWORD again after each
    refusal, until the server's BYE flood, which locks the nick's owner out."""
    s = session(None, interactive=False, environ={"CHAT_PASSWORD": "wrongpassw"})
    s.receive("HELLO chat/1 test", "NICK")
    s.type("alice", "hello")
    s.receive("PASS alice")
    assert s.sent() == ["NICK alice", "PASS wrongpassw"]
    s.receive("RETRY bad-password wrong password")
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    assert s.lose() == Outcome(1, "The password for alice was not accepted (wrong password).")


def test_cut_off_after_failed_logins_says_so() -> None:
    """BYE flood answering a password is about failed logins, not about
    lines sent too fast."""
    s = session()
    _asked_for_password(s)
    s.client.secret_line("guess number 6")
    s.receive("BYE flood too many failed logins; try again later")
    assert s.lose() == Outcome(
        1, "The server closed the connection after too many failed logins; try again later."
    )


def test_register_asks_twice_and_sends_once() -> None:
    s = session()
    s.ready()
    s.type("/register")
    assert s.screen.secret_prompt == "password: "
    s.client.secret_line(SECRET)
    assert s.screen.secret_prompt == "the same password again: "
    assert s.sent() == []
    s.client.secret_line(SECRET)
    assert s.sent() == [f"REGISTER {SECRET}"]
    s.receive("REGISTERED alice")
    assert s.screen.lines[-1] == (
        "* alice is now registered: from now on this nickname can only be used with "
        "your password."
    )
    assert SECRET not in s.screen.text()


def test_register_refuses_a_mismatch_and_a_short_password_locally() -> None:
    s = session()
    s.ready()
    s.type("/register")
    s.client.secret_line(SECRET)
    s.client.secret_line(SECRET + "!")
    assert s.screen.lines[-1] == "! The two passwords differ. Nothing was sent."
    s.type("/register")
    s.client.secret_line("short")
    # Asked for again before anything is said: the second entry, typed
    # blind, is read unseen too, never posted to the lobby.
    assert s.screen.secret_prompt == "the same password again: "
    s.client.secret_line("short")
    assert s.screen.lines[-1].startswith("! A password needs at least 8 bytes")
    assert s.screen.secret_prompt is None
    assert s.sent() == []


@pytest.mark.parametrize(
    ("command", "password", "said"),
    [
        ("/register", "kitty12", "! A password needs at least 8 bytes"),
        ("/passwd", "kitty12", "! A password needs at least 8 bytes"),
        ("/register", " leading space", "! A password cannot start with a space"),
    ],
)
def test_a_refused_first_password_typed_twice_never_reaches_the_lobby(
    command: str, password: str, said: str
) -> None:
    """A password refused locally closed the prompt at once, so the same
    password typed again for the confirmation was posted to the lobby (and
    kept in the history Up recalls)."""
    s = session()
    s.ready(password=SECRET if command == "/passwd" else None)
    kb = Keyboard()
    kb.attach(s.client)
    kb.keys(f"{command}\r{password}\r{password}\r")
    assert s.sent() == []
    rows = "\n".join(kb.rows())
    assert rows.count(said) == 1, rows
    assert password.strip() not in rows
    assert kb.input_row() == "alice>"
    kb.keys(UP)  # nothing to recall: the command is not kept, nor the password
    assert kb.input_row() == "alice>"


def test_a_password_on_the_command_line_is_refused() -> None:
    assert parse_input("/register hunter22") == Local(
        "Type /register alone: the password is asked for without showing it.", is_error=True
    )
    assert isinstance(parse_input("/passwd new secret"), Local)
    assert parse_input("/register") == Secret("REGISTER")
    assert parse_input("/PASSWD") == Secret("PASSWD")
    assert is_secret_command("/register hunter22") and is_secret_command("/Passwd")
    assert not is_secret_command("register me") and not is_secret_command("/registered")
    s = session()
    s.ready()
    s.type("/register hunter22")
    assert s.sent() == []


def test_passwd_then_registered() -> None:
    s = session()
    s.ready(password=SECRET)
    s.type("/passwd")
    assert s.screen.secret_prompt == "new password: "
    s.client.secret_line("new secret 1")
    s.client.secret_line("new secret 1")
    assert s.sent() == ["PASSWD new secret 1"]
    s.receive("REGISTERED alice")
    assert s.screen.lines[-1] == "* The password for alice was changed."


def test_register_with_an_account_proved_at_login_is_refused_at_once() -> None:
    """Asked twice for a password, then told by the server the nick has an
    account: said at once, with the command that does apply."""
    for interactive in (True, False):
        s = session(interactive=interactive, environ={"CHAT_PASSWORD": SECRET})
        s.ready(password=SECRET)
        s.type("/register")
        assert s.screen.secret_prompt is None
        assert s.sent() == []
        assert s.screen.lines[-1] == (
            "! alice has an account already: /passwd changes its password.")


def test_passwd_without_a_password_at_login_is_refused_at_once() -> None:
    """The server would refuse it (NOT_REGISTERED): not asked twice for nothing."""
    for interactive in (True, False):
        s = session(interactive=interactive, environ={"CHAT_NEW_PASSWORD": SECRET})
        s.ready()
        s.type("/passwd")
        assert s.screen.secret_prompt is None
        assert s.sent() == []
        assert s.screen.lines[-1] == (
            "! There is no password to change: alice logged in without one "
            "(it had no account). /register gives it one.")


def _registering() -> Session:
    """Logged in with no password asked for, and a REGISTER sent."""
    s = session()
    s.ready()
    s.type("/register")
    s.client.secret_line(SECRET)
    s.client.secret_line(SECRET)
    return s


def test_what_the_connection_learnt_since_login_decides_too() -> None:
    s = _registering()
    s.type("/passwd")  # REGISTER in flight: the server answers this one
    assert s.screen.secret_prompt == "new password: "
    s.client.secret_line("")
    s.receive("REGISTERED alice")
    s.type("/register")
    assert s.screen.lines[-1].startswith("! alice has an account already")
    s.type("/passwd")
    assert s.screen.secret_prompt == "new password: "


@pytest.mark.parametrize("error", [
    "ERROR not-registered alice has no account",
    "ERROR not-registered the password was changed since you logged in; log in again "
    "with the new one to change it",
])
def test_not_registered_unlearns_the_account_proved_at_login(error: str) -> None:
    """The operator removed the account (or reset its password): /register
    goes to the server, which may make a new one, and is not refused at
    once for the rest of the connection."""
    s = session()
    s.ready(password=SECRET)
    s.type("/passwd")
    s.client.secret_line("new secret 1")
    s.client.secret_line("new secret 1")
    s.receive(error)
    s.sent()
    s.type("/register")
    assert s.screen.secret_prompt == "password: "
    s.client.secret_line(SECRET)
    s.client.secret_line(SECRET)
    assert s.sent() == [f"REGISTER {SECRET}"]
    s.receive("REGISTERED alice")
    s.type("/register")
    assert s.screen.lines[-1].startswith("! alice has an account already")


def test_registered_refused_unlearns_no_account_but_not_one_proved_here() -> None:
    """ERROR registered: the account is one this connection did not prove
    (the operator made it meanwhile), so /passwd is not told "/register
    gives it one"; the server answers it.  One REGISTERED here stays known."""
    s = _registering()
    s.type("/register")  # the first in flight: the server answers this one
    s.client.secret_line(SECRET)
    s.client.secret_line(SECRET)
    s.receive("REGISTERED alice", "ERROR registered alice has an account already")
    s.sent()
    s.type("/register")
    assert s.screen.lines[-1].startswith("! alice has an account already")
    s = session()
    s.ready()
    s.type("/register")
    s.client.secret_line(SECRET)
    s.client.secret_line(SECRET)
    s.receive("ERROR registered alice has an account already")
    s.sent()
    s.type("/passwd")
    assert s.screen.secret_prompt == "new password: "


def test_a_server_without_accounts_is_not_asked_twice() -> None:
    s = _registering()
    s.receive("ERROR accounts-off this server has no accounts")
    s.screen.take()
    for command in ("/register", "/passwd"):
        s.type(command)
        assert s.screen.secret_prompt is None
        assert s.screen.take() == ["! This server has no accounts."]
    assert s.sent() == [f"REGISTER {SECRET}"]


def test_the_account_is_known_from_the_login() -> None:
    """Per connection (a reconnection logs in, and learns it, afresh)."""
    s = session()
    s.ready()
    assert s.client.passwords.account is False
    s = session()
    s.ready(password=SECRET)
    assert s.client.passwords.account is True
    assert session().client.passwords.account is None


def test_a_script_registers_with_chat_password() -> None:
    s = session(interactive=False, environ={"CHAT_PASSWORD": SECRET})
    s.ready()
    s.type("/register")
    assert s.sent() == [f"REGISTER {SECRET}"]
    s.type("/passwd")
    assert s.sent() == []
    assert s.screen.lines[-1] == "! CHAT_NEW_PASSWORD is not set. Nothing was sent."


def test_account_errors_are_sentences() -> None:
    s = session()
    s.ready()
    s.receive(
        "ERROR accounts-off this server has no accounts",
        "ERROR weak-password a password has 8 to 256 bytes",
        "ERROR registered alice has an account already",
        "ERROR not-registered alice has no account",
    )
    assert s.screen.lines == [
        "! This server has no accounts.",
        "! The server refused that password: a password has 8 to 256 bytes.",
        "! The nickname was not registered: alice has an account already.",
        "! Nothing was changed: alice has no account.",
    ]


@pytest.mark.parametrize(
    ("command", "error", "said"),
    [
        # The operator made alice's account while she was online: not hers
        # to change until she logs in with it (PASSWD), nor to make (REGISTER).
        ("/passwd", "ERROR not-registered you did not log in to alice with a password: "
         "REGISTER it first (or, if it has an account, log in again with its password)",
         "The password was not changed: you did not log in to alice with a password: "
         "REGISTER it first (or, if it has an account, log in again with its password)."),
        ("/register", "ERROR registered alice has an account already",
         "The nickname was not registered: alice has an account already."),
        ("/register", "ERROR registered on this server, accounts are made by its operator",
         "The nickname was not registered: on this server, accounts are made by its "
         "operator."),
        # The server could not store the password: nothing says the nick has no account.
        ("/passwd", "ERROR not-registered the server could not store the password now; "
         "try again later",
         "The password was not changed: the server could not store the password now; "
         "try again later."),
        ("/register", "ERROR not-registered the server could not store the password now; "
         "try again later",
         "The nickname was not registered: the server could not store the password now; "
         "try again later."),
        ("/passwd", "ERROR not-registered alice has no account",
         "The password was not changed: alice has no account."),
        # A cluster's accounts out of reach: words only REGISTER and PASSWD get.
        ("/passwd", "ERROR unavailable the accounts cannot be reached now; send it again "
         "in a moment",
         "The password was not changed: the accounts cannot be reached now; send it again "
         "in a moment."),
        ("/register", "ERROR unavailable the accounts cannot be reached now; send it again "
         "in a moment",
         "The nickname was not registered: the accounts cannot be reached now; send it "
         "again in a moment."),
    ],
)
def test_registered_and_not_registered_say_what_was_not_done_and_the_servers_reason(
    command: str, error: str, said: str
) -> None:
    """The fixed sentences ("Your nickname has no account; /register makes
    one", "/passwd changes its password") were false for some of the
    server's reasons, and sent the user from /passwd to /register and back."""
    s = session(
        interactive=False, environ={"CHAT_PASSWORD": SECRET, "CHAT_NEW_PASSWORD": SECRET}
    )
    s.ready(password=SECRET if command == "/passwd" else None)
    s.type(command)
    assert len(s.sent()) == 1
    s.receive(error)
    assert s.screen.take() == [f"! {said}"]
    assert s.client.passwords.request is None


def test_a_server_that_keeps_no_more_accounts_refuses_register_and_the_session_goes_on() -> None:
    s = session(interactive=False, environ={"CHAT_PASSWORD": SECRET})
    s.ready()
    s.type("/register")
    s.receive("ERROR server-full this server keeps no more accounts; ask its operator")
    assert s.screen.lines[-1] == (
        "! The nickname was not registered: this server keeps no more accounts; "
        "ask its operator.")
    assert s.client.passwords.request is None  # answered
    s.type("hello")
    assert s.sent()[-1] == "MSG hello"
    s.receive(f"MSG {TS} alice * hello")  # the server's copy: accepted
    s.type("/quit")
    s.receive("BYE quit")
    assert s.lose() == Outcome(0), "not the refusal of a full server"


@pytest.mark.parametrize(("text", "said"), [
    ("no more accounts.", "no more accounts."),
    ("", "server-full."),
])
def test_a_full_server_s_register_refusal_reads_as_the_other_account_errors(
        text: str, said: str) -> None:
    """Its full stop is not doubled, and with no text the code says why
    (render.account_error)."""
    s = session(interactive=False, environ={"CHAT_PASSWORD": SECRET})
    s.ready()
    s.type("/register")
    s.receive(f"ERROR server-full {text}".rstrip())
    assert s.screen.lines[-1] == f"! The nickname was not registered: {said}"


def test_a_password_sent_in_clear_to_another_host_warns_once() -> None:
    s = session(peer="198.51.100.7")
    _asked_for_password(s)
    warnings = [line for line in s.screen.lines if "unencrypted" in line]
    assert warnings == [
        "! Your password goes to chat.test:7000 unencrypted: anyone on the way can read it. "
        "Use --tls if the server offers it."
    ]
    s.client.secret_line(SECRET)
    s.receive("READY alice", "USERS 0")
    s.type("/passwd")
    s.client.secret_line("new secret 1")
    s.client.secret_line("new secret 1")
    assert sum("unencrypted" in line for line in s.screen.lines) == 1


def test_no_warning_over_loopback_or_tls() -> None:
    for peer, tls in (("127.0.0.1", False), ("198.51.100.7", True)):
        s = session(peer=peer)
        s.client.tls = tls
        _asked_for_password(s)
        assert not any("unencrypted" in line for line in s.screen.lines)


@pytest.mark.parametrize(("peer", "warned"), [
    ("::1", False),
    ("::ffff:127.0.0.1", False),  # an IPv4 loopback seen through a dual-stack socket
    ("::ffff:127.1.2.3", False),
    ("fe80::1%eth0", True),
    ("::ffff:198.51.100.7", True),
])
def test_a_mapped_loopback_address_is_loopback(peer: str, warned: bool) -> None:
    """The server's peer as an IPv6 socket gives an IPv4 one (C{::ffff:a.b.c.d})
    is read with the package's one parser (ipaddrs.parse_ip): a mapped
    127.x.y.z is this machine, no warning (it warned)."""
    s = session(peer=peer)
    _asked_for_password(s)
    assert any("unencrypted" in line for line in s.screen.lines) is warned


def test_a_script_is_warned_on_its_warning_channel() -> None:
    warned: list[str] = []
    s = session(interactive=False, environ={"CHAT_PASSWORD": SECRET}, peer="198.51.100.7")
    s.client.warn = warned.append
    _asked_for_password(s)
    assert len(warned) == 1 and "unencrypted" in warned[0]
    assert not any("unencrypted" in line for line in s.screen.lines)


def test_the_password_prompt_goes_away_when_the_connection_does() -> None:
    s = session()
    _asked_for_password(s)
    s.client.connectionLost(Failure(ConnectionDone()))
    # Keys are still read unseen (see below), for nothing.
    assert s.screen.secret_prompt == "(the session is over; Enter leaves) "
    s.client.secret_line(SECRET)
    assert s.sent() == []


def test_a_password_that_cannot_be_checked_now_is_sent_again_later() -> None:
    """PASS answered RETRY unavailable (the accounts are out of reach): not
    a wrong password; NICK goes again a little later, then the password."""
    s = session(interactive=False, environ={"CHAT_PASSWORD": SECRET})
    _asked_for_password(s)
    assert s.sent() == [f"PASS {SECRET}"]
    s.receive("RETRY unavailable the server cannot check accounts now; send NICK again in a moment")
    assert s.sent() == []
    assert "not accepted" not in s.screen.text()
    s.clock.advance(Login.UNAVAILABLE_DELAY)
    assert s.sent() == ["NICK alice"]
    s.receive("PASS alice")
    assert s.sent() == [f"PASS {SECRET}"]
    s.receive("READY alice")
    assert s.client.state is State.READY


@pytest.mark.parametrize(
    ("command", "said"),
    [
        ("/register", "alice was not registered; try /register again in a moment."),
        ("/passwd", "your password was not changed; try /passwd again in a moment."),
    ],
)
def test_a_busy_server_answering_register_or_passwd_says_what_was_not_done(
    command: str, said: str
) -> None:
    """ERROR flood "the server is busy" (too many passwords being hashed)
    was said as "You are sending too fast; that line was dropped"."""
    s = session(
        interactive=False, environ={"CHAT_PASSWORD": SECRET, "CHAT_NEW_PASSWORD": SECRET}
    )
    s.ready(password=SECRET if command == "/passwd" else None)
    s.type(command)
    assert len(s.sent()) == 1
    s.receive(f"ERROR flood the server is busy; send {command[1:].upper()} again in a moment")
    assert s.screen.take() == [f"! The server is busy: {said}"]
    assert s.client.passwords.request is None
    s.receive("ERROR flood at most 10 lines per second (bursts of 20)")
    assert s.screen.take()[0] == "! You are sending too fast; that line was dropped."


HASHES = (
    "too many REGISTER and PASSWD from your address lately (each costs a password hash: "
    "3 in a row, then one per 60 s); send {verb} again in 42 s"
)


@pytest.mark.parametrize(
    ("command", "verb", "said"),
    [
        ("/register", "REGISTER", "alice was not registered; try /register again"),
        ("/passwd", "PASSWD", "your password was not changed; try /passwd again"),
    ],
)
@pytest.mark.parametrize(
    ("refusal", "why", "when"),
    [
        (ADDRESS_BUSY_TEXT, "Too much password work from your address at once", "in a moment"),
        (HASHES, HASHES.split(";")[0].replace("too", "Too", 1), "in 42 s"),
    ],
)
def test_the_address_s_password_work_refused_for_register_or_passwd_ends_it(
    command: str, verb: str, said: str, refusal: str, why: str, when: str
) -> None:
    """ERROR flood for the address's share of the password work ("too much
    password work from your address at once"), or its new hashes ("too
    many REGISTER and PASSWD from your address lately"), answers REGISTER or
    PASSWD as the busy server does: the request is over, said in the
    server's words; no line was dropped for flooding, so the pace stays.
    Only "busy" was looked for: the request stayed pending, and the answer
    was said as a line dropped, the pace halved."""
    s = session(
        interactive=False, environ={"CHAT_PASSWORD": SECRET, "CHAT_NEW_PASSWORD": SECRET}
    )
    s.ready(password=SECRET if command == "/passwd" else None)
    rate = s.client.outbox.rate
    s.type(command)
    assert len(s.sent()) == 1
    s.receive("ERROR flood " + refusal.format(verb=verb))
    assert s.screen.take() == [f"! {why}: {said} {when}."]
    assert s.client.passwords.request is None
    assert s.client.outbox.rate == rate
    s.type("hello")  # never echoed: in doubt, but not for flooding
    losses = s.client.outbox.losses(bye_answered=False)
    assert losses is not None and "too fast" not in losses


def test_the_login_timing_out_at_the_password_prompt_swallows_keys_until_enter() -> None:
    """The server's --nick-timeout ran out at the password prompt and the
    client exited at once: the password then typed blind went to the shell
    (its screen, and its history file)."""
    s = session("dave")
    s.receive("HELLO chat/1 x", "NICK")
    s.sent()
    s.receive("PASS dave")
    s.screen.take()
    s.receive("BYE timeout no nickname after 30 seconds")
    s.client.connectionLost(Failure(ConnectionDone()))
    assert s.outcomes == []  # not yet: the terminal stays the client's
    assert s.screen.secret_prompt == "(the session is over; Enter leaves) "
    assert s.screen.take() == [
        "! The session is over: nothing you type now is shown or sent. Press Enter to leave."
    ]
    s.client.secret_line("DavePassw0rd")
    assert s.sent() == []
    assert s.outcomes == [
        Outcome(1, "The server stopped waiting for the password (it allows 30 seconds to log in).")
    ]
    assert "DavePassw0rd" not in s.screen.text()


def test_a_connection_lost_at_the_register_prompt_waits_for_enter_or_ctrl_c() -> None:
    s = session()
    s.ready()
    s.type("/register")
    s.client.connectionLost(Failure(ConnectionDone()))
    assert s.outcomes == []
    assert s.screen.secret_prompt == "(the session is over; Enter leaves) "
    s.client.interrupt()  # Ctrl-C leaves at once too
    assert s.outcomes == [Outcome(1, "The connection to chat.test:7000 was lost.")]


@pytest.mark.parametrize(("prompt", "expected"), [
    ("login", Outcome(130, "Interrupted before joining the chat.")),
    ("/register", Outcome(0)),
])
def test_ctrl_c_at_a_password_prompt_ends_once_the_goodbye_is_answered(
    prompt: str, expected: Outcome
) -> None:
    """Ctrl-C at an open password prompt says goodbye; the user left, so
    its answer ends the session at once, with the prompt's exit status
    (130 before the chat was joined).  The prompt stayed open across the
    goodbye and its end then waited for Enter ("The session is over ...
    Press Enter to leave."), as if the session had ended under the user."""
    s = session()
    if prompt == "login":
        s.receive("HELLO chat/1 x", "NICK")
        s.sent()
        s.receive("PASS alice")
    else:
        s.ready()
        s.type("/register")
    assert s.screen.secret_prompt == ("password for alice: " if prompt == "login" else "password: ")
    s.screen.take()
    s.client.interrupt()
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    assert s.lose() == expected
    assert s.screen.secret_prompt is None
    assert not any("The session is over" in line for line in s.screen.take())


def test_a_script_or_a_closed_prompt_ends_at_once() -> None:
    s = session()
    s.ready()
    assert s.lose() == Outcome(1, "The connection to chat.test:7000 was lost.")
    s = session(interactive=False)
    s.receive("HELLO chat/1 x", "NICK", "PASS alice")
    assert s.lose().code == 1


def test_the_login_timeout_names_what_the_server_waited_for() -> None:
    s = session(None)
    s.receive("HELLO chat/1 x", "NICK", "BYE timeout no nickname after 30 seconds")
    assert s.lose() == Outcome(
        1, "The server stopped waiting for the nickname (it allows 30 seconds to log in)."
    )
    s = session()
    s.ready()
    s.receive("BYE timeout idle")
    assert s.lose() == Outcome(
        1, "The server closed the connection: no activity for too long. (idle)"
    )
