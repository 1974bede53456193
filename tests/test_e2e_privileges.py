"""
twistd's privilege drop, C{twistd --uid U --gid G chat ...} started as
root (rev14-ops MEDIUM 2): the database, accounts and log files are made as
U, so the server that runs as U can use them, now and at every later start;
where U could not, start-up stops with one line, before any file is left
behind.  Run as root only: nothing else can switch users.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK, TWISTD, LineClient, ServerProcess, tree_environment

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="twistd --uid/--gid switches users only when started as root"),
]

NOBODY = 65534
DROP = ["--uid", str(NOBODY), "--gid", str(NOBODY)]


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder under /tmp, whose parents the dropped user can pass
    through (pytest's tmp_path is under a root-only folder)."""
    with tempfile.TemporaryDirectory(prefix="chat-uid-", dir="/tmp") as name:
        yield Path(name)


def owners(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_uid, p.stat().st_gid) for p in folder.iterdir()}


def refused(folder: Path, *args: str, daemon: bool = False) -> subprocess.CompletedProcess[str]:
    twistd = ([f"--pidfile={folder}/chat.pid", f"--logfile={folder}/chat.log"] if daemon
              else ["-n", "--pidfile="])
    return subprocess.run(
        [TWISTD, *twistd, *DROP, "chat", "--port", f"tcp:0:interface={LOOPBACK}", *args],
        cwd=folder, env=tree_environment(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("drop", [DROP, ["--uid", str(NOBODY)]], ids=["uid-gid", "uid-alone"])
def test_the_server_runs_as_the_user_on_files_that_are_theirs(
        folder: Path, drop: list[str]) -> None:
    """With C{--uid} alone (the usual way, rev15-mut F1), twistd runs it
    with the user's own group, and the files are made with that group."""
    group = pwd.getpwuid(NOBODY).pw_gid
    os.chown(folder, NOBODY, group)
    folder.chmod(0o700)
    for start in range(2):  # the second start uses what the first made
        server = ServerProcess(folder, ["--db", "chat.sqlite3"], twistd_args=drop).start()
        try:
            client = LineClient(server.port)
            block = client.register(f"u{start}")
            if start:
                assert any("kept across" in line for line in block), block
            client.send("REGISTER password123" if not start else "MSG x")
            if not start:
                client.expect("REGISTERED")
                client.send("MSG kept across restarts")
            client.sync()
            client.close()
        finally:
            assert server.stop() in (0, -signal.SIGTERM), server.log()[-2000:]
        assert server.problems() == []
        assert f"set uid/gid {NOBODY}/{group}" in server.log()
    made = owners(folder)
    assert {"chat.sqlite3", "chat.accounts.sqlite3", server.log_path.name} <= set(made)
    assert set(made.values()) == {(NOBODY, group)}, made


def test_a_uid_alone_that_names_no_user_is_one_line(folder: Path) -> None:
    """twistd would look its group up after start-up, with a traceback."""
    os.chown(folder, NOBODY, NOBODY)
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "--uid", "4242424", "chat",
         "--port", f"tcp:0:interface={LOOPBACK}", "--db", "chat.sqlite3"],
        cwd=folder, env=tree_environment(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [
        "twistd chat: --uid 4242424 names no user: give --gid too"], done
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("daemon", [False, True])
def test_a_folder_the_user_cannot_write_is_one_line_and_no_file(
        folder: Path, daemon: bool) -> None:
    """The folder is root's (0755): as root the files were made there, and
    the server, once it ran as the user, could not open them (a 39-line
    traceback), then or at any later start."""
    db = folder / "db"
    db.mkdir(mode=0o755)
    os.chown(folder, NOBODY, NOBODY)  # the log file may go here
    done = refused(folder, "--db", str(db / "chat.sqlite3"), daemon=daemon)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"twistd chat: Cannot create the chat database {db}/chat.sqlite3: Permission denied. "
        f"(twistd --uid {NOBODY} --gid {NOBODY}: the server makes and uses its files as that "
        "user, who must be able to write them and their folder)"]
    assert list(db.iterdir()) == []


def test_a_file_root_left_behind_is_one_line(folder: Path) -> None:
    os.chown(folder, NOBODY, NOBODY)
    (folder / "chat.sqlite3").touch(mode=0o600)  # root's, as a failed start left it
    done = refused(folder, "--db", "chat.sqlite3")
    assert done.returncode == 1, done
    assert "Traceback" not in done.stdout + done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"twistd chat: Cannot read the chat database {folder}/chat.sqlite3: "
                           "Permission denied. (twistd --uid 65534"), line


def test_a_log_file_the_user_cannot_write_is_one_line(folder: Path) -> None:
    logs = folder / "logs"
    logs.mkdir(mode=0o755)  # root's
    os.chown(folder, NOBODY, NOBODY)
    done = subprocess.run(
        [TWISTD, "-n", "--pidfile=", f"--logfile={logs}/chat.log", *DROP, "chat",
         "--port", f"tcp:0:interface={LOOPBACK}", "--db", "chat.sqlite3"],
        cwd=folder, env=tree_environment(),
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [
        f"twistd chat: cannot open --logfile {logs}/chat.log: Permission denied "
        f"(twistd --uid {NOBODY} --gid {NOBODY}: the server makes and uses its files as that "
        "user, who must be able to write them and their folder)"]
    assert sorted(p.name for p in folder.iterdir()) == ["logs"]  # no database made


def test_a_log_the_user_cannot_rotate_is_one_warning_at_start(folder: Path) -> None:
    """The log file is the user's, its folder root's (a log in /var/log):
    Twisted skips every rotation of it without a word, and it grew past
    what --log-keep implies.  Said once the user runs the server."""
    logs = folder / "logs"
    logs.mkdir(mode=0o755)  # root's
    os.chown(folder, NOBODY, NOBODY)
    server = ServerProcess(logs, ["--db", f"{folder}/chat.sqlite3"], twistd_args=DROP)
    server.log_path.touch(mode=0o600)
    os.chown(server.log_path, NOBODY, NOBODY)
    server.start()
    try:
        server.wait_log("cannot be rotated")
    finally:
        assert server.stop() in (0, -signal.SIGTERM), server.log()[-2000:]
    [warning] = [line for line in server.log().splitlines() if "cannot be rotated" in line]
    assert (f"the log file {server.log_path} cannot be rotated: its directory {logs} is "
            f"not writable by the server's user (uid {NOBODY}); ") in warning
    assert server.log().index(f"set uid/gid {NOBODY}/{NOBODY}") < server.log().index(warning)
    assert server.problems() == []
