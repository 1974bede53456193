"""
A log file Twisted cannot rotate says so (logs.RotatedLogFile): Twisted's
LogFile skips a rotation without a word when the server's user may not
write to the file's directory (the log in /var/log after --uid) or the
file, and the log then grew past what --log-keep implies with nothing said.
Now one warning, why, at the start (ports/rotating.py's Rotator, after
twistd has dropped privileges) and at a refused rotation, at most one an
hour.  The tests run as root, whom permissions do not stop: the directory
is moved away instead (as real as it gets), or os.access, which Twisted
asks too, is made to answer as it would for another user.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import globalLogPublisher, textFileLogObserver

from tests.test_rotating import Loop
from twisted_chat.server import logs
from twisted_chat.server.ports.rotating import Rotator

SIZE = 200  # the rotation size, in place of twistd's 1,000,000 bytes


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Any]:
    """The server's log file in tmp_path/logs, written by the global log as
    twistd's observer writes it, rotating every L{SIZE} bytes."""
    (tmp_path / "logs").mkdir()
    made = logs.rotated_log_file(str(tmp_path / "logs" / "chat.log"), keep=3)
    made.rotateLength = SIZE
    observer = textFileLogObserver(made)
    globalLogPublisher.addObserver(observer)
    yield made
    globalLogPublisher.removeObserver(observer)
    made.close()


def write(lines: int) -> None:
    log = logs.logger("tests.unrotated")
    for i in range(lines):
        log.info("line {i} " + "x" * 40, i=i)


def warnings(logged: list[str]) -> list[str]:
    return [line for line in logged if "cannot be rotated" in line]


def test_a_log_whose_directory_went_away_warns_once_and_grows(
        tmp_path: Path, log_file: Any, logged: list[str]) -> None:
    write(10)
    assert (tmp_path / "logs" / "chat.log.1").exists(), "rotated while it could"
    assert warnings(logged) == []
    (tmp_path / "logs").rename(tmp_path / "moved")
    write(20)  # each line past SIZE tries a rotation, which Twisted skips
    path = tmp_path / "logs" / "chat.log"
    assert warnings(logged) == [
        f"the log file {path} cannot be rotated: its directory {tmp_path / 'logs'} "
        f"no longer exists; it grows on past {SIZE:,} bytes, --log-keep bounding "
        f"nothing, until the server's user can write there (tried again at most "
        f"every 60 s, and at each SIGUSR1)"]
    text = (tmp_path / "moved" / "chat.log").read_text()
    assert len(text) > 10 * SIZE, "never rotated: nothing else changes"
    assert text.count("cannot be rotated") == 1, "written once, from within the log's own write"
    assert "line 19 " in text
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == [
        "chat.log", "chat.log.1", "chat.log.2", "chat.log.3"]


def test_a_directory_the_user_cannot_write_is_said_once_an_hour(
        tmp_path: Path, log_file: Any, logged: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    directory = str(tmp_path / "logs")
    access = os.access

    def as_another_user(path: Any, mode: int, **kwargs: Any) -> bool:
        return False if (path, mode) == (directory, os.W_OK) else access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", as_another_user)  # Twisted asks it too
    tries: list[float] = []  # when each rotation was tried
    refused = logs.rotation_refused

    def tried(path: str) -> str | None:
        tries.append(now[0])
        return refused(path)

    monkeypatch.setattr(logs, "rotation_refused", tried)
    now = [0.0]
    log_file.now = lambda: now[0]
    write(20)
    assert not (tmp_path / "logs" / "chat.log.1").exists(), "Twisted skipped every rotation"
    [warning] = warnings(logged)
    assert (f"cannot be rotated: its directory {directory} is not writable by the "
            f"server's user (uid {os.getuid()}); ") in warning
    now[0] = 3599.0
    write(5)
    log_file.rotate()  # a SIGUSR1's, tried and refused as well
    assert len(warnings(logged)) == 1
    now[0] = 3600.0 + logs.RETRY_EVERY  # the SIGUSR1's try, at 3599, holds the next back
    write(1)
    assert len(warnings(logged)) == 2
    # Not "rotations skipped": tries (rr19-core 2), here one by size at 3599
    # and the SIGUSR1's.
    since = sum(1 for when in tries if when < now[0]) - 1  # the first warned
    assert since == 2
    assert warnings(logged)[1].endswith(
        ", and at each SIGUSR1: 2 times since the last warning)"), "one aside, not two"
    assert warnings(logged)[1].count("tried again") == 1


def file_system_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the os calls a rotation's try makes, as they are made."""
    made: list[str] = []

    def counting(name: str) -> Callable[..., Any]:
        call = getattr(os, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            made.append(name)
            return call(*args, **kwargs)
        return counted

    for name in ("access", "stat", "lstat", "fstat", "open", "rename"):
        monkeypatch.setattr(os, name, counting(name))
    return made


def test_a_refused_rotation_is_not_tried_at_every_line(
        tmp_path: Path, log_file: Any, logged: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each try asked os.access (and more) at every line written past the
    size: every refused connection's line cost file system calls."""
    (tmp_path / "logs").rename(tmp_path / "moved")
    now = [0.0]
    log_file.now = lambda: now[0]
    write(10)  # past the size: one try, refused
    made = file_system_calls(monkeypatch)
    write(100)
    assert made == [], "no try within RETRY_EVERY s"
    now[0] = logs.RETRY_EVERY
    write(100)
    assert 0 < made.count("access") <= 3, "one try, then none again"
    assert len(warnings(logged)) == 1
    assert "line 99 " in (tmp_path / "moved" / "chat.log").read_text(), "written on"


def test_a_failed_reopen_is_not_tried_at_every_line(
        tmp_path: Path, log_file: Any, logged: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """logrotate moved the file and nothing can be opened in its place (a
    symlink there): each line past the size tried to open one again."""
    path = tmp_path / "logs" / "chat.log"
    moved = tmp_path / "logs" / "chat.log-20261207"
    log_file.rotateLength = 10 * SIZE
    now = [0.0]
    log_file.now = lambda: now[0]
    path.rename(moved)
    path.symlink_to(tmp_path / "victim")
    made = file_system_calls(monkeypatch)
    write(30)  # past the size: one try, which cannot open
    assert made.count("open") == 1
    write(100)
    assert made.count("open") == 1
    now[0] = logs.RETRY_EVERY
    write(100)
    assert made.count("open") == 2
    log_file.rotate()  # SIGUSR1's: tried at once
    assert made.count("open") == 3
    unreopened = [line for line in logged if "no new one can be written there" in line]
    assert len(unreopened) == 1
    assert unreopened[0].endswith(
        "the log goes on in the moved file (tried again at most every 60 s, and at "
        "each SIGUSR1)")
    assert "line 99 " in moved.read_text()
    assert not (tmp_path / "victim").exists()
    path.unlink()
    now[0] = 2 * logs.RETRY_EVERY
    write(1)
    assert "line 0 " in path.read_text(), "reopened once it can be"


def test_the_rotator_warns_at_its_start_after_privileges_drop(
        tmp_path: Path, log_file: Any, logged: list[str]) -> None:
    """twistd starts the services (startService) once it has dropped
    privileges: the check is then the one the server's user faces."""
    (tmp_path / "logs").rename(tmp_path / "moved")
    rotator = Rotator(Loop(), log_file, str(tmp_path / "logs" / "chat.log"))
    rotator.privilegedStartService()
    assert warnings(logged) == [], "not as root"
    try:
        rotator.startService()
        assert len(warnings(logged)) == 1
        rotator.usr1()  # a SIGUSR1's rotation, refused: not said again within the hour
        assert len(warnings(logged)) == 1
    finally:
        rotator.stopService()  # before the reactor's start: SIGUSR1's handler given back


@pytest.mark.parametrize("create", [False, True])
def test_a_log_moved_away_by_logrotate_is_reopened_at_its_path(
        tmp_path: Path, log_file: Any, logged: list[str], create: bool) -> None:
    """logrotate renames the file, (with its 'create', makes an empty one,)
    then sends SIGUSR1: the server wrote on into the moved file for ever,
    warning that the file "no longer exists" as if permissions were wrong."""
    log_file.rotateLength = 10 * SIZE  # no rotation by size here
    write(1)
    path = tmp_path / "logs" / "chat.log"
    path.rename(tmp_path / "logs" / "chat.log-20261207")
    if create:
        path.write_text("")
    log_file.rotate()  # SIGUSR1's
    write(1)
    assert warnings(logged) == []
    text = path.read_text()
    assert text.count("was moved or replaced by another program: a new one is "
                      "written there") == 1
    assert "line 0 " in text
    assert "line 0 " in (tmp_path / "logs" / "chat.log-20261207").read_text()
    assert os.stat(path).st_mode & 0o777 == logs.LOG_MODE
    assert not (tmp_path / "logs" / "chat.log.1").exists(), "reopened, not rotated"


@pytest.mark.parametrize("put", ["symlink", "fifo"])
def test_a_symlink_or_fifo_put_at_the_log_path_is_not_opened(
        tmp_path: Path, log_file: Any, logged: list[str], put: str) -> None:
    """After logrotate moved the file, anyone who may write the directory
    could put a symlink there: the reopen appended the log to its target
    and made it 0600; or a FIFO, whose writes block once it is full."""
    log_file.rotateLength = 10 * SIZE
    victim = tmp_path / "victim"
    victim.write_text("kept\n")
    victim.chmod(0o644)
    path = tmp_path / "logs" / "chat.log"
    path.rename(tmp_path / "logs" / "chat.log-20261207")
    if put == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(victim)
    log_file.rotate()  # SIGUSR1's
    write(1)
    assert victim.read_text() == "kept\n"
    assert victim.stat().st_mode & 0o777 == 0o644
    assert [line for line in logged if "no new one can be written there" in line]
    assert "line 0 " in (tmp_path / "logs" / "chat.log-20261207").read_text()


def test_a_file_logrotate_made_that_cannot_be_chmodded_is_written_as_it_is(
        tmp_path: Path, log_file: Any, logged: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """logrotate's 'create' file may be another user's (group-writable):
    its mode cannot be changed, and that must not stop the reopen."""
    log_file.rotateLength = 10 * SIZE
    path = tmp_path / "logs" / "chat.log"
    path.rename(tmp_path / "logs" / "chat.log-20261207")
    path.write_text("")

    def refused(fd: int, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refused)
    log_file.rotate()  # SIGUSR1's
    write(1)
    assert "line 0 " in path.read_text()
