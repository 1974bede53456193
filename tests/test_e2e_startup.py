"""
The real C{twistd -n chat} when it cannot start, and what its log says.

A busy port or a mistyped C{--port} is one clear line and a non-zero exit,
never a traceback; the log says each thing once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import (
    LOOPBACK,
    TWISTD,
    LineClient,
    ServerProcess,
    tree_environment,
    unix_listening,
)

pytestmark = pytest.mark.e2e


def run_twistd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "chat", "--db", ":memory:", *args],
        cwd=tmp_path, env=tree_environment(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )


def test_busy_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_twistd(tmp_path, "--port", f"tcp:{port}:interface={LOOPBACK}")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    said = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(said) == 1, output
    assert (f"cannot listen on --port tcp:{port}:interface={LOOPBACK}: Address already in use"
            in said[0])


@pytest.mark.parametrize("option", ["--port", "--metrics", "--web"])
def test_a_busy_port_leaves_no_database_behind(tmp_path: Path, option: str) -> None:
    """The default --db and its accounts file were made in the working
    directory before the bind failed; now the busy port is found first."""
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = [option, f"tcp:{port}:interface={LOOPBACK}"]
        if option != "--port":
            args += ["--port", f"tcp:0:interface={LOOPBACK}"]
        done = subprocess.run([TWISTD, "-n", "--pidfile=", "chat", *args], cwd=tmp_path,
                              env=tree_environment(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr == (f"twistd chat: cannot listen on {option} "
                           f"tcp:{port}:interface={LOOPBACK}: Address already in use\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("port", ["70x0", "tcp:7000:interfaces=1.2.3.4"])
def test_bad_endpoint_is_one_line_on_stderr_and_exit_1(tmp_path: Path, port: str) -> None:
    done = run_twistd(tmp_path, "--port", port)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()]  # one line
    assert done.stderr.startswith(f"twistd chat: bad --port {port!r}: ")


@pytest.mark.parametrize("option", ["--port", "--web", "--metrics"])
def test_a_port_number_out_of_range_is_one_line_on_stderr_and_exit_1(
    tmp_path: Path, option: str
) -> None:
    """Not the bind's OverflowError traceback (README: a --port that is not
    a valid endpoint stops start-up with one line saying which)."""
    done = run_twistd(tmp_path, option, "99999")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (f"twistd chat: bad {option} 'tcp:99999': "
                           "port 99999 is out of range (0-65535)\n")


def test_the_log_says_each_thing_once(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, ["--db", ":memory:"]).start()
    try:
        client = LineClient(server.port)
        client.register("alice")
        client.send("BYE")
        assert client.closed()
        client.close()
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    log = server.log()
    assert ":memory::" not in log
    assert "in memory only" in log
    assert "Starting factory" not in log
    assert log.count("shutting down") == 1, log  # Twisted's own "Received SIGTERM, ..."
    assert server.problems() == []


def test_log_messages_puts_the_text_in_the_log_only_when_asked(tmp_path: Path) -> None:
    for flag, expected in (([], False), (["--log-messages"], True)):
        server = ServerProcess(tmp_path, ["--db", ":memory:", *flag]).start()
        try:
            alice, bob = LineClient(server.port), LineClient(server.port)
            alice.register("alice")
            bob.register("bob")
            alice.send("MSG in the lobby")
            alice.send("DM bob just to you")
            bob.expect("MSG ")
            bob.expect("MSG ")
            alice.close()
            bob.close()
        finally:
            server.stop()
        log = server.log()
        assert ("lobby <alice> in the lobby" in log) is expected, log
        assert ("private <alice> to bob: just to you" in log) is expected, log


@pytest.mark.parametrize(("args", "reason"), [
    (["--prot", "7000"], "option --prot not recognized"),
    (["--history", "x"], "--history: not an integer: 'x'"),
    (["--set-retention"], "--set-retention is for cluster mode (--redis) only"),
    # rev20-ops F1, F2: a line of the operator's in every greeting; a traceback.
    (["--server-name", "Team\r\nBYE x"],
     "--server-name: control characters (a newline, a CR) are not allowed: 'Team\\r\\nBYE x'"),
    (["--server-name", "Caf\udce9"], "--server-name: not UTF-8 text"),
])
def test_a_usage_error_is_its_reason_and_a_hint_not_the_whole_help(
    tmp_path: Path, args: list[str], reason: str
) -> None:
    """Review rev12 #13: a mistyped option printed twistd's whole --help
    (222 lines, twistd's options and the chat's) on stdout, and the reason
    last, as "twistd -n: ..."."""
    done = run_twistd(tmp_path, *args)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"twistd chat: {reason}", "'twistd chat --help' lists every option."]
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_version_names_twisted_chat_and_its_version(tmp_path: Path) -> None:
    """Review rev12 #9: 'twistd chat --version' printed Twisted's version
    only, so an upgrade could not be checked without connecting."""
    import twisted
    import twisted_chat

    done = run_twistd(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(
        f"twisted-chat {twisted_chat.__version__} (Twisted {twisted.__version__}, Python ")
    assert done.stdout.count("\n") == 1


def test_daemon_mode_keeps_log_keep_rotated_files(tmp_path: Path) -> None:
    """twistd daemonized with --logfile (README's form): rotated on SIGUSR1
    (and every 1,000,000 bytes), at most --log-keep old files are kept, where
    twistd kept every one (rev12 newuser #12)."""
    import os
    import time

    from tests.serverproc import free_port, wait_for_port, wait_until

    port = free_port()
    pidfile, logfile = tmp_path / "chat.pid", tmp_path / "chat.log"
    started = subprocess.run(
        [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "chat", "--port",
         f"tcp:{port}:interface={LOOPBACK}", "--db", ":memory:", "--log-keep", "2"],
        cwd=tmp_path, env=tree_environment(), capture_output=True, text=True, timeout=30)
    assert started.returncode == 0, started.stderr
    pid = int(pidfile.read_text())
    try:
        wait_for_port(port)
        for n in range(1, 5):
            os.kill(pid, signal.SIGUSR1)
            wait_until(lambda n=n: (tmp_path / f"chat.log.{min(n, 2)}").exists())
            client = LineClient(port)  # a line in the new file
            client.register(f"u{n}")
            client.close()
            wait_until(lambda n=n: f"u{n} is ready" in logfile.read_text())
    finally:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not pidfile.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("chat.log")) == [
        "chat.log", "chat.log.1", "chat.log.2"]
    assert "u4 is ready" in logfile.read_text()
    assert "u3 is ready" in (tmp_path / "chat.log.1").read_text()


@pytest.mark.parametrize("daemon", [False, True])
def test_a_pidfile_in_a_missing_folder_is_one_line_and_exit_1(
    tmp_path: Path, daemon: bool
) -> None:
    """rev20-ops F4 (README's /run/chat before it is made): twistd wrote the
    pid file after start-up, a FileNotFoundError's traceback (in daemon
    mode, a bytes repr on the terminal and two tracebacks in the log)."""
    pidfile = tmp_path / "run" / "chat.pid"
    twistd = ([f"--logfile={tmp_path / 'chat.log'}"] if daemon else ["-n"])
    done = subprocess.run(
        [TWISTD, *twistd, f"--pidfile={pidfile}", "chat", "--db", ":memory:",
         "--port", f"tcp:0:interface={LOOPBACK}"],
        cwd=tmp_path, env=tree_environment(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (f"twistd chat: cannot write --pidfile {pidfile}: No such file or "
                           f"directory (its folder {pidfile.parent} must exist first)\n")
    assert list(tmp_path.iterdir()) == []  # checked before the log file is made


def test_a_unix_socket_another_server_listens_on_is_one_line_saying_so(
    tmp_path: Path
) -> None:
    """rev20-ops note: it said Twisted's "Cannot acquire lock"."""
    path = tmp_path / "chat.sock"
    first = ServerProcess(tmp_path, ["--db", ":memory:"], endpoint=f"unix:{path}").start()
    try:
        done = run_twistd(tmp_path, "--port", f"unix:{path}")
        assert unix_listening(str(path))
    finally:
        assert first.stop() in (0, -signal.SIGTERM)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    said = [line for line in (done.stdout + done.stderr).splitlines() if "cannot listen" in line]
    assert len(said) == 1, done.stdout + done.stderr
    assert said[0].endswith(
        f"cannot listen on --port unix:{path}: another process is already listening there")


def test_a_db_name_that_is_not_utf8_works_for_the_server_and_the_tool(
    tmp_path: Path
) -> None:
    """rev20-ops F3: the accounts file's C{file:} URI quoted a Latin-1 byte
    as UTF-8: a traceback at start (the history file and an empty accounts
    file left behind) and from the operator's tool."""
    db = os.fsdecode(b"caf\xe9.sqlite3")
    tool = subprocess.run(
        [sys.executable, "-m", "twisted_chat.accounts", "add", "--create", "--db", db, "alice"],
        input="first-password\n", capture_output=True, text=True, errors="surrogateescape",
        cwd=tmp_path, env=tree_environment(), timeout=60)
    assert tool.returncode == 0, tool.stderr
    server = ServerProcess(tmp_path, ["--db", db]).start()
    try:
        client = LineClient(server.port)
        client.expect("NICK")
        client.send("NICK alice")
        assert client.readline() == "PASS alice"
        client.send("PASS first-password")
        assert client.readline().startswith("READY alice")
        client.close()
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    assert "Traceback" not in server.log()
    assert sorted(os.listdir(os.fsencode(tmp_path))) >= [
        b"caf\xe9.accounts.sqlite3", b"caf\xe9.sqlite3"]
