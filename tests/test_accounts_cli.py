"""
The operator's tool, C{python -m twisted_chat.accounts}, run as a real
process: passwords from standard input or a terminal, never the command line.
"""

from __future__ import annotations

import os
import pty
import pwd
import select
import signal
import socket
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import pytest

from twisted_chat.server.accounts.hashing import verify_password
from twisted_chat.server.accounts.store import AccountStore

TOOL = [sys.executable, "-m", "twisted_chat.accounts"]


def tool(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOOL, *args], input=stdin, capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )


def store(tmp_path: Path) -> AccountStore:
    return AccountStore(str(tmp_path / "chat.accounts.sqlite3"))


@pytest.fixture(autouse=True)
def server_database(tmp_path: Path) -> Path:
    """The server's database in the folder the tool runs in, as after the
    server's first start: C{add} makes the accounts file beside it without
    C{--create} (the tests without it remove it)."""
    db = tmp_path / "chat.sqlite3"
    db.touch()
    return db


def test_add_list_passwd_remove(tmp_path: Path) -> None:
    done = tool(tmp_path, "add", "Alice", stdin="first-password\n")
    assert done.returncode == 0, done.stderr
    where = tmp_path / "chat.accounts.sqlite3"
    # Each change names the file in full (review rev12 #3: a relative --db
    # run from another folder changed a file no server reads, unsaid).
    assert done.stdout.splitlines()[0] == f"added an account for Alice in {where}"
    assert done.stdout.splitlines()[1].startswith(f"made the accounts file {where} ")
    assert "first-password" not in done.stdout + done.stderr
    account = store(tmp_path).get("alice")
    assert account is not None and verify_password(b"first-password", account.password_hash)
    # --db names the server's database; the default is the server's default.
    listed = tool(tmp_path, "list", "--db", "chat.sqlite3")
    assert listed.returncode == 0
    assert listed.stdout.startswith("Alice\tcreated ")
    changed = tool(tmp_path, "passwd", "alice", stdin="second-password\r\n")
    assert changed.returncode == 0, changed.stderr
    # As its owner spelled it.
    assert changed.stdout == f"changed the password of Alice in {where}\n"
    account = store(tmp_path).get("alice")
    assert account is not None and verify_password(b"second-password", account.password_hash)
    removed = tool(tmp_path, "remove", "ALICE")
    assert removed.returncode == 0
    assert removed.stdout == f"removed the account of Alice from {where}\n"
    emptied = tool(tmp_path, "list")  # the file is there, with no account in it
    assert (emptied.returncode, emptied.stdout, emptied.stderr) == (0, "", "")


def test_the_tool_sets_a_password_in_its_nfc_form(tmp_path: Path) -> None:
    """rev22-attack 3: as the server does, so that the password the
    operator typed or pasted (NFD) opens the account typed on a keyboard."""
    nfd = unicodedata.normalize("NFD", "café-secret")
    done = tool(tmp_path, "add", "alice", stdin=f"{nfd}\n")
    assert done.returncode == 0, done.stderr
    account = store(tmp_path).get("alice")
    assert account is not None
    assert verify_password("café-secret".encode(), account.password_hash)
    assert not verify_password(nfd.encode(), account.password_hash)


def test_other_db_path(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "team.sqlite3").touch()
    done = tool(tmp_path, "add", "--db", "data/team.sqlite3", "bob", stdin="bobs-password\n")
    assert done.returncode == 0, done.stderr
    assert AccountStore(str(tmp_path / "data" / "team.accounts.sqlite3")).exists("bob")


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"short\n", "a password is 8 to 256 bytes long"),
        (b"", "a password is 8 to 256 bytes long"),
        (b"x" * 257 + b"\n", "a password is 8 to 256 bytes long"),
        # What no client can send: the server takes a leading space for the
        # separator, and a control character makes the line bad-chars.
        (b" leading-space\n", "a password cannot start with a space or a tab"),
        (b"\tleading-tab\n", "a password cannot start with a space or a tab"),
        (b"esc\x1bsequence\n", "a password cannot contain control characters (TAB is allowed)"),
        (b"del\x7fcharacter\n", "a password cannot contain control characters (TAB is allowed)"),
        (b"c1\xc2\x85character\n", "a password cannot contain control characters (TAB is allowed)"),
        (b"\xff\xfepassword123\n", "the password is not valid UTF-8"),
    ],
)
@pytest.mark.parametrize("command", ["add", "passwd"])
def test_a_password_no_client_could_send_is_refused_with_exit_2(
    tmp_path: Path, stdin: bytes, message: str, command: str
) -> None:
    """The tool made accounts nobody could ever log in to (each try a failed
    login), and a traceback on a password not in UTF-8."""
    if command == "passwd":
        assert tool(tmp_path, "add", "alice", stdin="first-password\n").returncode == 0
    done = subprocess.run([*TOOL, command, "alice"], input=stdin, capture_output=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert done.stderr.decode() == f"twisted_chat.accounts: {message}; nothing changed\n"
    account = store(tmp_path).get("alice")
    if command == "add":
        assert account is None
    else:
        assert account is not None and verify_password(b"first-password", account.password_hash)


def test_inner_and_trailing_spaces_and_tabs_are_part_of_the_password(tmp_path: Path) -> None:
    done = tool(tmp_path, "add", "alice", stdin="two\twords and a space \n")
    assert done.returncode == 0, done.stderr
    account = store(tmp_path).get("alice")
    assert account is not None
    assert verify_password(b"two\twords and a space ", account.password_hash)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (("add", "1bad"), "good-password\n", "not a valid nick"),
        (("passwd", "nobody"), "good-password\n", "nobody has no account"),
        (("remove", "nobody"), "", "nobody has no account"),
        (("add", "--db", ":memory:", "alice"), "good-password\n", ":memory:"),
    ],
)
def test_failures_are_one_line_and_exit_1(
    tmp_path: Path, args: tuple[str, ...], stdin: str, message: str
) -> None:
    done = tool(tmp_path, *args, stdin=stdin)
    assert done.returncode == 1
    assert message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not store(tmp_path).exists("alice")


def test_a_file_that_is_not_an_accounts_file_is_exit_1(tmp_path: Path) -> None:
    (tmp_path / "chat.accounts.sqlite3").write_text("not a database\n")
    done = tool(tmp_path, "list")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == ("twisted_chat.accounts: cannot use accounts file "
                           f"'{tmp_path}/chat.accounts.sqlite3': file is not a database\n")


def test_help_lists_every_exit_status(tmp_path: Path) -> None:
    """docs/accounts.md lists them; so does --help, where the operator looks."""
    done = tool(tmp_path, "--help")
    said = " ".join(done.stdout.split())
    assert done.returncode == 0
    for status in ("Exit status: 0 done;", "1 it could not be done", "2 the password or the "
                   "command line was refused", "130 interrupted"):
        assert status in said, status


def test_add_twice_refused(tmp_path: Path) -> None:
    assert tool(tmp_path, "add", "alice", stdin="first-password\n").returncode == 0
    again = tool(tmp_path, "add", "ALICE", stdin="other-password\n")
    assert again.returncode == 1
    assert again.stderr == ("twisted_chat.accounts: alice has an account already "
                            "(passwd changes its password)\n")
    account = store(tmp_path).get("alice")
    assert account is not None and verify_password(b"first-password", account.password_hash)


@pytest.mark.parametrize("db", ["nothere.sqlite3", "/nonexistent/x.sqlite3"])
@pytest.mark.parametrize("command", [("list",), ("passwd", "alice"), ("remove", "alice")])
def test_a_db_with_no_accounts_file_is_said_not_made(
    tmp_path: Path, db: str, command: tuple[str, ...]
) -> None:
    """A mistyped --db is not an empty list: one line on stderr, exit 1,
    and no file made (neither the accounts file nor its folder)."""
    done = tool(tmp_path, command[0], "--db", db, *command[1:], stdin="good-password\n")
    assert (done.returncode, done.stdout) == (1, "")
    path = os.path.join(tmp_path, db.replace(".sqlite3", ".accounts.sqlite3"))
    assert done.stderr.startswith("twisted_chat.accounts: ")
    assert f"there is no accounts file {path!r} for --db {db!r}" in done.stderr
    assert done.stderr.count("\n") == 1
    assert [p.name for p in tmp_path.iterdir()] == ["chat.sqlite3"]
    assert not os.path.exists("/nonexistent")


@pytest.mark.parametrize("db", ["chat.sqlite3", "elsewhere/chat.sqlite3", "{tmp}/chat.sqlite3"])
def test_add_with_no_server_database_beside_makes_no_file(
    tmp_path: Path, server_database: Path, db: str
) -> None:
    """Review rev12 #3: README's relative --db, run from a folder that is
    not the server's, made a new accounts file there that no server reads,
    said "added an account for carol" and exited 0."""
    server_database.unlink()
    (tmp_path / "elsewhere").mkdir()
    db = db.format(tmp=tmp_path)
    done = tool(tmp_path, "add", "--db", db, "carol", stdin="carols-password\n")
    assert (done.returncode, done.stdout) == (1, "")
    full = os.path.join(tmp_path, db)
    accounts = full.replace(".sqlite3", ".accounts.sqlite3")
    assert done.stderr == (
        f"twisted_chat.accounts: there is no accounts file {accounts!r}, nor a server "
        f"database {full!r} beside it: is --db {db!r} the server's? (the server makes "
        "both at its first start; --create makes the accounts file now)\n")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["elsewhere"]


def test_add_create_makes_the_file_and_says_whose_it_is(
    tmp_path: Path, server_database: Path
) -> None:
    """--create: before the server's first start.  The new file is said,
    with its owner; made by root, a warning says a server of another user
    cannot open it (review rev12 #4)."""
    server_database.unlink()
    done = tool(tmp_path, "add", "--create", "carol", stdin="carols-password\n")
    assert done.returncode == 0, done.stderr
    where = tmp_path / "chat.accounts.sqlite3"
    uid = os.geteuid()
    owner = f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    assert done.stdout == (f"added an account for carol in {where}\n"
                           f"made the accounts file {where} (mode 0600, owned by {owner})\n")
    warning = (f"twisted_chat.accounts: warning: {where} belongs to root: a server running "
               "as another user cannot open it; chown it to that user (or make accounts as "
               "that user)\n")
    assert done.stderr == (warning if uid == 0 else "")
    assert store(tmp_path).exists("carol")
    # The file is there now: a second add needs no --create, and says nothing of it.
    again = tool(tmp_path, "add", "dave", stdin="daves-password\n")
    assert (again.returncode, again.stdout, again.stderr) == (
        0, f"added an account for dave in {where}\n", "")


def test_version(tmp_path: Path) -> None:
    """Review rev12 #9: --version was a usage error (exit 2)."""
    import twisted_chat

    done = tool(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"twisted-chat {twisted_chat.__version__} (Twisted ")


def test_no_password_option_exists(tmp_path: Path) -> None:
    done = tool(tmp_path, "add", "alice", "--password", "on-the-command-line")
    assert done.returncode == 2  # argparse: unknown argument
    assert tool(tmp_path, "add").returncode == 2  # argparse: no NICK
    assert not store(tmp_path).exists("alice")
    assert "--password" not in tool(tmp_path, "add", "--help").stdout


PROMPTS = [b"New password: ", b"Again: "]


def default_sigint() -> None:
    """
    In the child, before C{exec}: the tool's SIGINT as a command run from a
    terminal has it.  A pytest started as a background job of a shell
    without job control (C{pytest ... &} in a script) ignores SIGINT, its
    children inherit that, and the tool rightly ignored the tests' Ctrl-C:
    exit 1 after 5 s ("Redis is out of reach"), or at the prompt, killed at
    the runner's deadline (a hang-up, -1, when the runner closed the
    terminal first), not 130.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_on_terminal(tmp_path: Path, args: list[str], typed: list[str]) -> tuple[int, str]:
    """Run the tool on a pseudo-terminal, typing each of C{typed} at its prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(tmp_path)
        default_sigint()
        os.execv(sys.executable, [*TOOL, *args])
    output = b""
    deadline = time.monotonic() + 30
    answers = list(zip(PROMPTS, typed, strict=False))
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            # Typed only once the prompt is out: the tool flushes the terminal's
            # input before each prompt, as getpass does.
            if answers and output.endswith(answers[0][0]):
                os.write(fd, answers.pop(0)[1].encode() + b"\n")
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        raise
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        # Reaped before the terminal is closed: the child closes its side
        # (EIO here) a moment before it exits, and closing ours first hangs
        # it up (SIGHUP, exit -1) if it has not exited yet, as under load.
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_terminal_asks_twice_without_echo(tmp_path: Path) -> None:
    code, output = _run_on_terminal(tmp_path, ["add", "alice"], ["typed-password"] * 2)
    assert code == 0, output
    assert "New password:" in output and "Again:" in output
    assert "typed-password" not in output  # not echoed
    account = store(tmp_path).get("alice")
    assert account is not None and verify_password(b"typed-password", account.password_hash)


def test_terminal_mismatch_changes_nothing(tmp_path: Path) -> None:
    code, output = _run_on_terminal(tmp_path, ["add", "alice"], ["typed-password", "other-one"])
    assert code == 2 and "differ" in output
    assert not store(tmp_path).exists("alice")


def test_ctrl_c_at_the_prompt_exits_130_and_changes_nothing(tmp_path: Path) -> None:
    """Interrupted (the terminal's Ctrl-C, SIGINT) at the password prompt:
    one empty line, no traceback, exit status 130 (as a shell reports a
    command killed by SIGINT), no account."""
    code, output = _run_on_terminal(tmp_path, ["add", "alice"], ["\x03"])
    assert code == 130, output
    assert "Traceback" not in output and "KeyboardInterrupt" not in output
    assert not store(tmp_path).exists("alice")


def test_interrupted_while_waiting_for_redis_exits_130(tmp_path: Path) -> None:
    """With --redis the tool runs a reactor, which takes SIGINT itself: a
    Ctrl-C while it waits for a Redis that does not answer is one empty
    line and exit status 130, as at the prompt.  Before, the reactor's
    shutdown closed the connection, the waiting command failed: exit 1,
    "Redis is out of reach (Lost connection)", then a ReactorNotRunning
    traceback."""
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        proc = subprocess.Popen([*TOOL, "list", "--redis", url], cwd=tmp_path,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_sigint)
        try:
            silent.settimeout(30)
            conn, _ = silent.accept()  # it runs its reactor
            with conn:
                conn.settimeout(30)
                assert b"HGETALL" in conn.recv(1000)  # and waits for the answer
                proc.send_signal(signal.SIGINT)
                out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (130, "", "\n")
