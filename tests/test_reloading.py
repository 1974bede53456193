"""
L{Reloader}'s SIGHUP handler is installed once the reactor has started
(after startup), and not by a Reloader stopped before that (rev15-mut F12):
twistd stops the services of a start-up that failed, and a handler
installed after would outlive them.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from twisted_chat.server.ports.reloading import Reloader


class Starting(Clock):
    """A reactor that has not finished its start-up: its "after startup"
    triggers, which can be removed, run when L{started} is called."""

    def __init__(self) -> None:
        super().__init__()
        self.after: dict[int, Callable[[], object]] = {}
        self._ids = itertools.count()

    def addSystemEventTrigger(self, phase: str, event: str, call: Callable[[], object]) -> int:
        assert (phase, event) == ("after", "startup")
        key = next(self._ids)
        self.after[key] = call
        return key

    def removeSystemEventTrigger(self, key: int) -> None:
        del self.after[key]

    def started(self) -> None:
        for call in list(self.after.values()):
            call()
        self.after.clear()


@pytest.fixture
def sighup() -> Iterator[None]:
    """SIGHUP's handler is given back after the test."""
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


def handler() -> Any:
    return signal.getsignal(signal.SIGHUP)


def test_the_handler_is_installed_before_the_reactor_runs(sighup: None) -> None:
    """rr18-core: a SIGHUP during the start-up ended the process."""
    reactor = Starting()
    reloader = Reloader(reactor)
    reloader.privilegedStartService()
    assert handler() == reloader.taken.handler
    reloader.startService()
    reactor.started()
    assert handler() == reloader.taken.handler
    reloader.stopService()
    assert handler() == reloader.taken.handler, "a SIGHUP during the shutdown does not end it"


def test_a_reloader_stopped_before_startup_leaves_no_handler(sighup: None) -> None:
    reactor = Starting()
    reloader = Reloader(reactor)
    before = handler()
    reloader.privilegedStartService()
    reloader.startService()
    reloader.stopService()
    assert reactor.after == {}
    assert handler() == before
    reactor.started()
    assert handler() == before


class Pair:
    """A reloadable that never changes and always loads."""

    def changed(self) -> bool:
        return False

    def reload(self) -> bool:
        return True


@pytest.mark.parametrize(("ports", "said"), [(1, "1 port"), (2, "2 ports")])
def test_sighup_says_how_many_ports_in_words(sighup: None, ports: int, said: str) -> None:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").endswith("reloading.Reloader"):
            lines.append(str(formatEvent(event)))

    reloader = Reloader(Starting(), [Pair() for _ in range(ports)])
    reloader.privilegedStartService()
    reloader.startService()
    globalLogPublisher.addObserver(observe)
    try:
        reloader.hup()
    finally:
        globalLogPublisher.removeObserver(observe)
        reloader.stopService()
    assert lines == [f"received SIGHUP: loading the TLS certificates of {said} again"]
