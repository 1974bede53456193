"""
A second SIGTERM (or SIGINT) while the server stops is harmless.

Twisted's handler for each asks the reactor to stop (C{callFromThread(stop)});
a second signal before the process is gone asked again, and the reactor,
stopped already, raised C{ReactorNotRunning}, which it logged as a critical
traceback.  GNU C{timeout} sends two (to the child, then to its group), and
so does an impatient operator.  L{stop_once} wraps Twisted's handlers, once
the reactor has installed them: from the first signal on (or from the start
of a shutdown begun otherwise) a signal is one info line, and the shutdown
under way goes on.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted_chat.server import logs

#: The signals Twisted's reactor stops on.
SIGNALS = (signal.SIGTERM, signal.SIGINT)

_Handler = Callable[[int, FrameType | None], Any]


class StopOnce:
    log = logs.logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.stopping = False

    def install(self) -> None:
        """Wrap the reactor's handlers (at its C{after startup}, once it has
        installed them); only the main thread may set handlers."""
        if threading.current_thread() is not threading.main_thread():
            return
        for number in SIGNALS:
            previous = signal.getsignal(number)
            if callable(previous):
                signal.signal(number, self._once(previous))
        self.reactor.addSystemEventTrigger("before", "shutdown", self._shutting_down)

    def _shutting_down(self) -> None:
        self.stopping = True

    def _once(self, previous: _Handler) -> _Handler:
        def handler(number: int, frame: FrameType | None) -> None:
            if self.stopping:
                # Logged from the reactor's loop, not from inside a signal handler.
                self.reactor.callFromThread(self._again, number)
                return
            self.stopping = True
            previous(number, frame)

        return handler

    def _again(self, number: int) -> None:
        self.log.info("received {signal} again: the shutdown is under way already",
                      signal=signal.Signals(number).name)


def stop_once(reactor: Any) -> StopOnce:
    """Make a second stopping signal harmless from the reactor's start on."""
    guard = StopOnce(reactor)
    reactor.addSystemEventTrigger("after", "startup", guard.install)
    return guard
