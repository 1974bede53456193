"""
A second SIGTERM (or SIGINT) during the shutdown is harmless (stopping.py;
rev12 newuser #11): Twisted's handler runs once, a later signal is one info
line from the reactor's loop, never a second reactor.stop() (which raised
ReactorNotRunning, logged as a critical traceback).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.error import ReactorNotRunning

from twisted_chat.server.ports.stopping import SIGNALS, stop_once


class FakeReactor:
    """The reactor's side the guard uses: system event triggers, and
    callFromThread run later (as the real loop runs them)."""

    def __init__(self) -> None:
        self.triggers: dict[tuple[str, str], list[Callable[[], Any]]] = {}
        self.from_thread: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.stopped = False

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any]) -> None:
        self.triggers.setdefault((phase, event), []).append(f)

    def fire(self, phase: str, event: str) -> None:
        for f in self.triggers.get((phase, event), []):
            f()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.from_thread.append((f, args))

    def run_thread_calls(self) -> None:
        calls, self.from_thread = self.from_thread, []
        for f, args in calls:
            f(*args)

    def stop(self) -> None:
        """As ReactorBase.stop: a second call raises."""
        if self.stopped:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stopped = True


@pytest.fixture
def handlers() -> Iterator[None]:
    """The process's SIGTERM and SIGINT handlers, restored after the test."""
    saved = {number: signal.getsignal(number) for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def twisteds_handler(reactor: FakeReactor) -> Callable[[int, Any], None]:
    """What Twisted's sigTerm and sigInt do: ask the reactor to stop."""
    def handler(number: int, frame: Any) -> None:
        reactor.callFromThread(reactor.stop)
    return handler


def test_a_second_sigterm_does_not_stop_the_reactor_again(handlers: None, logged) -> None:
    reactor = FakeReactor()
    stop_once(reactor)
    for number in SIGNALS:
        signal.signal(number, twisteds_handler(reactor))
    reactor.fire("after", "startup")  # the reactor has installed its handlers
    term = signal.getsignal(signal.SIGTERM)
    assert callable(term)
    term(signal.SIGTERM, None)
    term(signal.SIGTERM, None)  # before the loop ran the first stop, as with `timeout`
    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # type: ignore[operator]
    reactor.run_thread_calls()  # raised ReactorNotRunning without the guard
    assert reactor.stopped
    said = [line for line in logged if "again" in line]
    assert said == ["received SIGTERM again: the shutdown is under way already",
                    "received SIGINT again: the shutdown is under way already"], logged


def test_a_signal_during_a_shutdown_begun_otherwise_is_ignored(handlers: None) -> None:
    reactor = FakeReactor()
    stop_once(reactor)
    signal.signal(signal.SIGTERM, twisteds_handler(reactor))
    reactor.fire("after", "startup")
    reactor.stop()  # the server stops for another reason
    reactor.fire("before", "shutdown")
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
    reactor.run_thread_calls()  # no second stop
