"""
Accounts end to end: the real C{twistd -n chat} on loopback, real password
threads and real scrypt, and the operator's tool run while the server runs.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serverproc import LineClient, ServerProcess

pytestmark = pytest.mark.e2e
Start = Callable[..., ServerProcess]
Connect = Callable[..., LineClient]

PW = "first-password"


def tool(cwd: Path, *args: str, stdin: str = "") -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twisted_chat.accounts", *args],
        input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60,
    )
    assert done.returncode == 0, done.stderr


def hello(connect: Connect, port: int) -> LineClient:
    client = connect(port)
    client.expect("HELLO ")
    client.expect("NICK")
    return client


def attempt(connect: Connect, port: int, nick: str, password: str,
            asked: str | None = None) -> tuple[LineClient, str]:
    """NICK and PASS on a new connection (C{asked}: the nick as the server's
    PASS names it, if not as typed): the connection and the answer."""
    client = hello(connect, port)
    client.send(f"NICK {nick}")
    assert client.readline() == f"PASS {asked or nick}"
    client.send(f"PASS {password}")
    return client, client.readline()


def log_in(connect: Connect, port: int, nick: str, password: str) -> LineClient:
    client, answer = attempt(connect, port, nick, password)
    assert answer == f"READY {nick}"
    client.expect("USERS ")
    return client


def refused(connect: Connect, port: int, nick: str, password: str,
            asked: str | None = None) -> str:
    client, answer = attempt(connect, port, nick, password, asked)
    client.send("BYE")
    client.expect("BYE quit")
    return answer


def test_register_then_the_nick_needs_its_password(
    tmp_path: Path, chat_server: Start, connect: Connect
) -> None:
    server = chat_server()  # --accounts open is the default
    alice = hello(connect, server.port)
    alice.send("NICK alice")
    assert alice.readline() == "READY alice"
    alice.expect("USERS ")
    alice.send(f"REGISTER {PW}")
    assert alice.readline() == "REGISTERED alice"
    alice.send("PASSWD second-password")
    assert alice.readline() == "REGISTERED alice"
    alice.send("BYE")
    alice.expect("BYE quit")
    # Under open, PASS names the nick as its account spells it.
    assert refused(connect, server.port, "ALICE", PW, "alice").startswith(
        "RETRY bad-password ")
    log_in(connect, server.port, "alice", "second-password")
    assert (tmp_path / "chat.accounts.sqlite3").exists()
    server.stop()
    assert server.problems() == []
    log = server.log()
    assert "failed login as alice" in log and "alice logged in with its password" in log
    assert PW not in log and "second-password" not in log


def test_operator_changes_count_at_next_login_while_running(
    tmp_path: Path, chat_server: Start, connect: Connect
) -> None:
    server = chat_server()
    tool(tmp_path, "add", "bob", stdin=f"{PW}\n")  # the server is running
    bob = log_in(connect, server.port, "bob", PW)
    tool(tmp_path, "passwd", "bob", stdin="changed-password\n")
    bob.send("BYE")
    bob.expect("BYE quit")
    assert refused(connect, server.port, "bob", PW).startswith("RETRY bad-password ")
    bob = log_in(connect, server.port, "bob", "changed-password")
    bob.send("BYE")
    bob.expect("BYE quit")
    tool(tmp_path, "remove", "bob")
    free = hello(connect, server.port)
    free.send("NICK bob")
    assert free.readline() == "READY bob"  # no account: no password


def test_an_operators_reset_ends_the_old_sessions_passwd(
    tmp_path: Path, chat_server: Start, connect: Connect
) -> None:
    """The operator resets a stolen password (passwd, or remove then add)
    while the thief is online: the thief's PASSWD no longer takes the
    account back, and the operator's password works."""
    server = chat_server()
    tool(tmp_path, "add", "alice", stdin=f"{PW}\n")
    thief = log_in(connect, server.port, "alice", PW)
    tool(tmp_path, "passwd", "alice", stdin="operators-password\n")
    thief.send("PASSWD thiefs-password")
    assert thief.readline().startswith("ERROR not-registered the password was changed since ")
    thief.send("BYE")
    thief.expect("BYE quit")
    thief = log_in(connect, server.port, "alice", "operators-password")
    tool(tmp_path, "remove", "alice")
    tool(tmp_path, "add", "alice", stdin="new-owners-password\n")
    thief.send("PASSWD thiefs-password")
    assert thief.readline().startswith("ERROR not-registered the password was changed since ")
    thief.send("BYE")
    thief.expect("BYE quit")
    log_in(connect, server.port, "alice", "new-owners-password")


def test_an_accounts_file_that_goes_while_running_fails_closed(
    tmp_path: Path, chat_server: Start, connect: Connect
) -> None:
    """Moved away (a backup script) or emptied while the server runs: the
    nick was anyone's, and a REGISTER made a new file.  Now its password
    is asked and cannot be checked, REGISTER stores nothing, and the log
    says why; the file back, all is as before."""
    server = chat_server()
    tool(tmp_path, "add", "alice", stdin=f"{PW}\n")
    path = tmp_path / "chat.accounts.sqlite3"
    kept = path.read_bytes()
    dave = hello(connect, server.port)  # online since before, with no account
    dave.send("NICK dave")
    assert dave.readline() == "READY dave"
    dave.expect("USERS ")
    for name, change in (("moved", lambda: path.rename(tmp_path / "moved-away")),
                         ("emptied", lambda: path.write_bytes(b""))):
        change()
        client, answer = attempt(connect, server.port, "alice", PW)
        assert answer.startswith("RETRY bad-password the server could not check "), name
        bob = hello(connect, server.port)
        bob.send("NICK bob")
        assert bob.readline() == "PASS bob"  # it might have an account
        dave.send(f"REGISTER {PW}")
        assert dave.expect("ERROR") == ("ERROR not-registered the server could not store the "
                                        "password now; try again later")
        client.send("NICK carol")
        assert client.readline() == "PASS carol"
        for c in (client, bob):
            c.send("BYE")
            c.expect("BYE quit")
        assert not path.exists() or path.read_bytes() == b"", name
        path.write_bytes(kept)  # restored
        log_in(connect, server.port, "alice", PW).send("BYE")
    server.stop()
    log = server.log()
    # At its start there was no file: a first start, said in the log (the
    # path in full, as the next line's: it was relative, a nit of rev14-ops).
    assert f"no accounts file at {path}: made an empty one" in log
    # And which mode, in which file (named in full): the default lets strangers REGISTER.
    assert (f"accounts: open (a nick with an account needs its password; anyone may "
            f"REGISTER the nick they hold), in the file {path}") in log
    assert log.count("no accounts file at") == 1  # never made again while it ran
    assert "[twisted_chat.server.accounts.login#error] could not look up the account of bob: " \
        "cannot use accounts file" in log
    assert "it is gone (moved or deleted since the server saw it)" in log
    assert "it has no accounts table" in log
    assert server.problems() == []


def test_register_beyond_max_accounts_is_server_full(
    tmp_path: Path, chat_server: Start, connect: Connect
) -> None:
    tool(tmp_path, "add", "--create", "alice", stdin=f"{PW}\n")
    server = chat_server("--max-accounts", "2")
    for nick, answer in (("bob", "REGISTERED bob"), ("carol", "ERROR server-full ")):
        client = hello(connect, server.port)
        client.send(f"NICK {nick}")
        assert client.readline() == f"READY {nick}"
        client.expect("USERS ")
        client.send(f"REGISTER {PW}")
        assert client.readline().startswith(answer)
    client.send("PING still-here")  # the connection stays
    assert client.readline() == "PONG still-here"
    tool(tmp_path, "add", "dave", stdin=f"{PW}\n")  # the operator's tool is not bound
    server.stop()
    assert server.problems() == []
    assert "account carol not made: there are --max-accounts 2 accounts " in server.log()


def test_required_mode(tmp_path: Path, chat_server: Start, connect: Connect) -> None:
    tool(tmp_path, "add", "--create", "alice", stdin=f"{PW}\n")  # before its first start
    server = chat_server("--accounts", "required")
    ghost = refused(connect, server.port, "ghost", "any-password")
    wrong = refused(connect, server.port, "alice", "any-password")
    assert ghost == wrong and ghost.startswith("RETRY bad-password ")
    alice = log_in(connect, server.port, "alice", PW)
    alice.send("REGISTER other-password")
    assert alice.readline().startswith("ERROR registered ")
    # HELP says so (rev13-proto LOW-3).
    alice.send("HELP REGISTER")
    assert alice.readline() == ("HELP REGISTER <password> - not on this server: "
                                "its accounts are made by its operator")
    assert alice.readline() == "HELP"
    # While a password is asked, not-ready says to send it (rev13-proto LOW-1).
    ghost = hello(connect, server.port)
    ghost.send("NICK ghost")
    assert ghost.readline() == "PASS ghost"
    ghost.send("USERS")
    assert ghost.readline() == ("ERROR not-ready the server is waiting for the password of "
                                "ghost: send PASS <password>, or NICK <nick> to choose "
                                "another nick")
    other = hello(connect, server.port)
    other.send("NICK alice")
    assert other.readline().startswith("RETRY taken ")  # before any password


def test_failed_logins_end_in_bye_flood(chat_server: Start, connect: Connect) -> None:
    server = chat_server("--accounts", "required")
    for _ in range(5):
        assert refused(connect, server.port, "alice", "wrong-password").startswith(
            "RETRY bad-password ")
    client = hello(connect, server.port)
    client.send("NICK alice")
    client.readline()
    started = time.monotonic()
    client.send("PASS wrong-password")
    assert client.readline(timeout=10).startswith("BYE flood ")
    assert time.monotonic() - started >= 2.5  # the answer was delayed
    assert client.closed()


def test_accounts_off(chat_server: Start, connect: Connect) -> None:
    server = chat_server("--accounts", "off", "--db", ":memory:")
    client = hello(connect, server.port)
    client.send(f"PASS {PW}")
    assert client.readline().startswith("ERROR accounts-off ")
    # HELP says so too (rev13-proto LOW-3).
    client.send("HELP register")
    assert client.readline() == "HELP REGISTER <password> - not on this server: it has no accounts"
    assert client.readline() == "HELP"
    client.send("NICK alice")
    assert client.readline() == "READY alice"


def test_required_without_a_database_file_is_refused(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, ["--accounts", "required", "--db", ":memory:"])
    server.start(wait=False)
    assert server.proc is not None
    server.proc.wait(30)
    assert server.proc.returncode != 0
    assert "--accounts required needs a --db file" in server.output()


def test_a_script_that_half_closes_gets_every_answer(
    tmp_path: Path, chat_server: Start
) -> None:
    """C{printf 'NICK ..\\nPASS ..\\nMSG ..\\n' | nc -N}: the lines after NICK wait for
    the password check and are all answered before the close."""
    import socket

    tool(tmp_path, "add", "--create", "bot", stdin="bot-password\n")
    server = chat_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"NICK bot\r\nPASS bot-password\r\nMSG hello from a script\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    lines = data.decode().splitlines()
    assert lines[2:4] == ["PASS bot", "READY bot"]
    assert lines[-1].endswith(" bot * hello from a script")
