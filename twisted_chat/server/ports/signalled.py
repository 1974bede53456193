"""
A signal the server takes, and that never stops it: SIGHUP
(L{reloading}), SIGUSR1 (L{rotating}); L{SignalledService}, the service
that takes one for its lifetime.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.service import Service


class TakenSignal:
    """
    Signal C{number}, taken from L{start} on (its service's
    C{privilegedStartService}, before twistd's C{startService} and the
    reactor's start: a signal in that window ended the process), in the
    main thread only, the one that may set a handler: each one calls
    C{call} from the reactor's loop (queued until the loop runs), not from
    inside the signal handler.  L{stop}ped before the reactor's start
    (twistd stops the services of a start-up that failed), it gives the
    handler it replaced back; stopped after, its handler stays: the signal
    during the shutdown must not end it.
    """

    def __init__(self, reactor: Any, number: signal.Signals, call: Callable[[], object]) -> None:
        self.reactor = reactor
        self.number = number
        self.call = call
        # The handler it replaced, until the reactor's start (then kept).
        self._before: Any = None
        # The reactor's "after startup" trigger, while it is ahead.
        self._trigger: Any = None
        self._taken = False

    def start(self) -> None:
        """Take the signal now (a second start does nothing)."""
        if self._taken or threading.current_thread() is not threading.main_thread():
            return
        before = signal.getsignal(self.number)
        signal.signal(self.number, self.handler)
        self._taken = True
        self._before = signal.SIG_DFL if before is None else before
        self._trigger = self.reactor.addSystemEventTrigger("after", "startup", self._started)

    def _started(self) -> None:
        self._trigger = self._before = None

    def stop(self) -> None:
        if self._trigger is None:
            return  # not taken, or kept since the reactor's start
        self.reactor.removeSystemEventTrigger(self._trigger)
        signal.signal(self.number, self._before)
        self._trigger = self._before = None
        self._taken = False

    def handler(self, number: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.call)


class SignalledService(Service):
    """
    A service that takes signal C{number} for C{call} (L{TakenSignal}) at
    its C{privilegedStartService}, before twistd's C{startService} and the
    reactor's start, or at its C{startService} when started without that;
    its C{stopService} stops it (its handler stays once the reactor has
    started).
    """

    def __init__(self, reactor: Any, number: signal.Signals, call: Callable[[], object]) -> None:
        self.taken = TakenSignal(reactor, number, call)

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self.taken.start()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.taken.start()  # taken already, unless started without the above

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]
        self.taken.stop()
