"""
The real client against the real server's accounts (chat/1, "Accounts"):
a script registers its nick, logs in with CHAT_PASSWORD, and is refused
without it or with a wrong one; on a terminal the password prompt shows
nothing.  Every wait is bounded.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from tests.serverproc import LOOPBACK, LineClient, ServerProcess

from .clientproc import CLIENT, address, client_env, run_client
from .test_e2e import TIME, assert_clean_failure
from .tmuxpane import Pane

pytestmark = pytest.mark.e2e

PW = "correct horse battery"


def _run(args: list[str], stdin: str, password: str | None) -> tuple[int, str, str]:
    env = client_env()
    env.pop("CHAT_PASSWORD", None)
    if password is not None:
        env["CHAT_PASSWORD"] = password
    result = run_client(args, stdin, env=env)
    return result.returncode, result.stdout, result.stderr


def test_a_script_registers_then_needs_its_password(
    chat_server: Callable[..., ServerProcess], connect: Callable[..., LineClient]
) -> None:
    server = chat_server()
    watcher = connect(server.port)
    watcher.register("watcher")
    nick = ["--nick", "robot", *address(server.port)]

    code, out, err = _run(nick, "/register\n", PW)
    assert code == 0, err
    assert "* robot is now registered" in out

    code, out, err = _run(nick, "logged in\n", PW)
    assert code == 0, err
    assert re.search(rf"{TIME} <robot> logged in\n", out)

    code, out, err = _run(nick, "never sent\n", "not the right one")
    assert code == 1
    assert_clean_failure(err, "The password for robot was not accepted (wrong password, "
                         "or no account for that nick).")
    assert "not the right one" not in out + err

    code, out, err = _run(nick, "never sent\n", None)
    assert code == 1
    assert_clean_failure(err, "The server asks for the password of robot: give it in "
                         "CHAT_PASSWORD.")
    for text in (out, err):
        assert PW not in text and "wrong password" not in text
    seen = "\n".join(watcher.sync())
    assert re.search(r"^MSG \S+ robot \* logged in$", seen, re.M), seen
    assert "never sent" not in seen


def test_the_password_prompt_on_a_terminal_shows_nothing(
    chat_server: Callable[..., ServerProcess],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
) -> None:
    server = chat_server()
    owner = connect(server.port)
    owner.register("alice")
    owner.send(f"REGISTER {PW}")
    owner.expect("REGISTERED alice")
    owner.send("BYE")
    owner.expect("BYE quit")
    bob = connect(server.port)
    bob.register("bob")

    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^password for alice:$")
    term.keys("not it at all")
    term.key("Enter")
    term.wait_row(r"^! The password for alice was not accepted \(wrong password, or no "
                  r"account for that nick\)\.$")
    term.wait_row(r"^password for alice:$")
    term.keys(PW)
    term.wait_row(r"^password for alice:$")
    assert not any(PW in row for row in term.screen())
    term.key("Enter")
    term.wait_row(r"^alice>$")
    bob.expect("JOINED")
    screen = "\n".join(term.screen())
    assert PW not in screen and "not it at all" not in screen
    term.key("Up")  # the password is not in the history
    term.wait_row(r"^alice>$")
    term.key("C-c")
    term.wait_row(r"^EXIT=0$")
