"""
One task under the reactor, run to its end or until a stopping signal
(SIGINT, SIGTERM): the accounts tool's C{--redis} commands
(L{twisted_chat.accounts}), which exit 130 when interrupted.

Twisted's handler for each signal only queues C{reactor.stop}; before the
reactor's shutdown begins, that same turn runs the timed calls that are
due, and the turn's reads and writes came before it.  So the task can end
(its answer, its timeout, its connection lost) after the signal, and told
by the shutdown's triggers alone, the signal was taken for that end (exit
1, "Redis is out of reach", or 0), with a second C{reactor.stop} and its
C{ReactorNotRunning} traceback.  Here the signal is noted in its handler,
when it comes: from then on the run is interrupted, whatever the task does
after, and the reactor is stopped once.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning

__all__ = ["SIGNALS", "Signals", "run_until_done"]

#: The signals Twisted's reactor stops on, and this run notes.
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Signals(Protocol):
    """Where handlers are set: the C{signal} module (a test's fake)."""

    def getsignal(self, signalnum: int, /) -> Any: ...

    def signal(self, signalnum: int, handler: Any, /) -> Any: ...


class _Run:
    def __init__(self, reactor: Any, signals: Signals) -> None:
        self.reactor = reactor
        self.signals = signals
        self.outcome: list[object] = []
        self.interrupted = False
        self.stopping = False  # this run has asked the reactor to stop

    def take_signals(self) -> None:
        """At the reactor's start, in place of each handler Twisted set
        (not over a SIGINT ignored, as a background job's is: Twisted
        leaves that one, and so does this)."""
        for number in SIGNALS:
            if callable(self.signals.getsignal(number)):
                self.signals.signal(number, self._signalled)

    def _signalled(self, number: int, frame: FrameType | None) -> None:
        self.interrupted = True
        if not self.stopping:  # a second signal: the stop is under way
            self.stopping = True
            self.reactor.callFromThread(self.reactor.stop)

    def start(self, task: Callable[[], Coroutine[Any, Any, object]]) -> None:
        defer.ensureDeferred(task()).addBoth(self._done)

    def _done(self, result: object) -> None:
        self.outcome.append(result)  # a Failure too, handled here
        if self.stopping:
            return
        self.stopping = True
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            # Stopped by Twisted's own handler, in the start-up's moment
            # before take_signals.
            self.interrupted = True

    def shutting_down(self) -> None:
        """A shutdown this run did not ask for: a signal that came before
        take_signals (Twisted's handler)."""
        if not self.stopping:
            self.interrupted = True
            self.stopping = True


def run_until_done(reactor: Any, task: Callable[[], Coroutine[Any, Any, object]],
                   signals: Signals = signal) -> object:
    """
    Run C{reactor} until C{task()} is done: its result (a C{Failure} if it
    failed).  Each signal's handler is the one it had before, after.

    @raise KeyboardInterrupt: SIGINT or SIGTERM came while the reactor ran,
        whatever became of the task.
    """
    run = _Run(reactor, signals)
    before = {number: signals.getsignal(number) for number in SIGNALS}
    reactor.addSystemEventTrigger("before", "shutdown", run.shutting_down)
    reactor.callWhenRunning(run.take_signals)
    reactor.callWhenRunning(run.start, task)
    try:
        reactor.run()
    finally:
        for number, handler in before.items():
            if handler is not None:  # None: not set from Python, left as it is
                signals.signal(number, handler)
    if run.interrupted or not run.outcome:
        raise KeyboardInterrupt
    return run.outcome[0]
