"""
SIGUSR1 never stops the server (ports/rotating.py; rev18-docs 2): with a
log file it rotates it, as twistd's does; without one (stdout, syslog,
C{/dev/null}) it was SIGUSR1's default action, the end of the process
without C{BYE shutdown}.  Now one log line, and the server goes on.
L{Rotator}'s handler is installed at the service's start, before the
reactor's, as L{Reloader}'s is (tests/test_reloading.py), and stays
through the shutdown.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_logs import twistds_component
from tests.test_reloading import Starting
from twisted_chat.server.ports.rotating import Rotator


class Loop(Starting):
    """L{Starting}, whose callFromThread calls wait for L{run} (as the
    reactor's loop runs them, after the signal handler has returned)."""

    def __init__(self) -> None:
        super().__init__()
        self.from_thread: list[Callable[[], object]] = []

    def callFromThread(self, call: Callable[[], object]) -> None:
        self.from_thread.append(call)

    def run(self) -> None:
        calls, self.from_thread = self.from_thread, []
        for call in calls:
            call()


class LogFile:
    def __init__(self) -> None:
        self.rotations = 0

    def rotate(self) -> None:
        self.rotations += 1

    def can_rotate(self) -> bool:
        return True


@pytest.fixture
def sigusr1() -> Iterator[None]:
    """SIGUSR1's handler is given back after the test."""
    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


def started(log_file: LogFile | None) -> tuple[Loop, Rotator]:
    reactor = Loop()
    rotator = Rotator(reactor, log_file, "stdout")
    rotator.startService()
    reactor.started()
    # Else the os.kill below would end the test run, as it ended the server.
    assert signal.getsignal(signal.SIGUSR1) == rotator.taken.handler
    return reactor, rotator


def test_without_a_log_file_sigusr1_is_one_line(sigusr1: None, logged: list[str]) -> None:
    reactor, _ = started(None)
    os.kill(os.getpid(), signal.SIGUSR1)  # ended the test run before
    reactor.run()
    assert [line for line in logged if "SIGUSR1" in line] == [
        "received SIGUSR1: no log file to rotate (the log goes to stdout); "
        "the server goes on (SIGTERM stops it)"]


def test_with_a_log_file_sigusr1_rotates_it(sigusr1: None, logged: list[str]) -> None:
    log_file = LogFile()
    reactor, _ = started(log_file)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert log_file.rotations == 0, "not inside the signal handler"
    reactor.run()
    assert log_file.rotations == 1
    assert not [line for line in logged if "SIGUSR1" in line]


def test_the_handler_is_installed_before_the_reactor_runs_and_stays(
        sigusr1: None, logged: list[str]) -> None:
    """rr18-core: taken only at the reactor's start, a SIGUSR1 during the
    start-up (twistd's daemonizing, startService) still ended the process.
    Taken from privilegedStartService on, it waits for the loop."""
    reactor = Loop()
    log_file = LogFile()
    rotator = Rotator(reactor, log_file, "stdout")
    rotator.privilegedStartService()
    assert signal.getsignal(signal.SIGUSR1) == rotator.taken.handler
    os.kill(os.getpid(), signal.SIGUSR1)  # ended the test run before
    rotator.startService()
    reactor.started()
    assert log_file.rotations == 0, "not before the loop runs"
    reactor.run()
    assert log_file.rotations == 1
    assert signal.getsignal(signal.SIGUSR1) == rotator.taken.handler
    rotator.stopService()
    assert signal.getsignal(signal.SIGUSR1) == rotator.taken.handler, (
        "a SIGUSR1 during the shutdown does not end it")


def test_a_rotator_stopped_before_startup_leaves_no_handler(sigusr1: None) -> None:
    """A start-up that failed (twistd stops the services) gives back the
    handler there was before."""
    reactor = Loop()
    rotator = Rotator(reactor, None, "stdout")
    before = signal.getsignal(signal.SIGUSR1)
    rotator.privilegedStartService()
    rotator.startService()
    rotator.stopService()
    assert reactor.after == {}
    assert signal.getsignal(signal.SIGUSR1) == before
    reactor.started()
    assert signal.getsignal(signal.SIGUSR1) == before


#: twistd's options, and whether SIGUSR1 rotates a log file (its path) or
#: says where the log goes instead.
CHOICES = [
    ({"logfile": "chat.log"}, "chat.log", None),
    ({"logfile": "chat.log", "nodaemon": True}, "chat.log", None),
    ({}, "twistd.log", None),  # a daemon without --logfile
    ({"nodaemon": True}, None, "stdout"),
    ({"logfile": "-", "nodaemon": True}, None, "stdout"),  # contrib/twisted-chat.service
    ({"logfile": "chat.log", "syslog": True}, None, "syslog"),
    ({"logfile": "chat.log", "logger": "my.observer"}, None, "the --logger observer"),
]


@pytest.mark.parametrize(("given", "rotated", "where"), CHOICES)
def test_every_server_takes_sigusr1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: dict[str, Any],
        rotated: str | None, where: str | None) -> None:
    """The handler's choice, from twistd's options: the server's tree holds
    one Rotator whatever they are, with the log file, if it is one; first,
    so that its privilegedStartService comes before the ports' and the
    chat's."""
    from twisted.python import syslog

    monkeypatch.setattr(syslog.SyslogObserver, "openlog", staticmethod(lambda *args: None))
    top, _ = twistds_component(tmp_path, monkeypatch, given)
    [rotator] = [service for service in top if isinstance(service, Rotator)]
    assert next(iter(top)) is rotator, "the first service: SIGUSR1 taken before the others start"
    if rotated is None:
        assert rotator.log_file is None
        assert rotator.where == where
    else:
        assert rotator.log_file is not None
        assert rotator.log_file.path == str(tmp_path / rotated)  # type: ignore[attr-defined]
        rotator.log_file.close()  # type: ignore[attr-defined]
