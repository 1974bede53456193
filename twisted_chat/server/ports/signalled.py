"""
A signal the server takes, and that never stops it: SIGHUP
(L{reloading}), SIGUSR1 (L{rotating}).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any


class TakenSignal:
    """
    Signal C{number}, taken from the reactor's start on (its C{after
    startup}; in the main thread only, the one that may set a handler):
    each one calls C{call} from the reactor's loop, not from inside the
    signal handler.  L{stop}ped before that start (twistd stops the services
    of a start-up that failed), it installs nothing; stopped after, the
    handler stays: the signal during the shutdown must not end it.
    """

    def __init__(self, reactor: Any, number: signal.Signals, call: Callable[[], object]) -> None:
        self.reactor = reactor
        self.number = number
        self.call = call
        self._trigger: Any = None

    def start(self) -> None:
        self._trigger = self.reactor.addSystemEventTrigger("after", "startup", self._install)

    def stop(self) -> None:
        if self._trigger is not None:
            self.reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None

    def _install(self) -> None:
        self._trigger = None
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(self.number, self.handler)

    def handler(self, number: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.call)
