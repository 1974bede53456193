"""
SIGHUP reloads what can be reloaded, and never stops the server.

Closing the terminal of a C{twistd -n} sends SIGHUP, and so does the habit
of reloading daemons with C{kill -HUP} (a logrotate or certbot hook).
SIGHUP's default action ended the process as a SIGKILL would (no C{BYE
shutdown}, the database's last writes left to its recovery).  Now
L{Reloader} takes it: each L{Reloadable} (the certificates of each C{ssl:}
port) is loaded again, and the server goes on.  The same reloadables are
also checked every L{CHECK_INTERVAL} seconds, and reloaded when their
files changed, so that a renewed certificate is used with no signal at all.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.task import LoopingCall

from twisted_chat.server import logs
from twisted_chat.server.ports.signalled import SignalledService

#: Seconds between two looks at the files of the reloadables.
CHECK_INTERVAL = 60.0


class Reloadable(Protocol):
    """Something SIGHUP loads again (the certificate of an C{ssl:} port)."""

    def changed(self) -> bool:
        """Cheap (a C{stat}): whether its files changed since it was last loaded."""

    def reload(self) -> bool:
        """Load it again; whether that worked (if not, it logged why and
        keeps what it had)."""


class Reloader(SignalledService):
    """
    Takes SIGHUP (from its start on, before the reactor's: L{TakenSignal}) and
    reloads every one of C{reloadables}; every C{interval} seconds reloads
    those whose files changed.
    """

    log = logs.logger()

    def __init__(self, reactor: Any, reloadables: Sequence[Reloadable] = (),
                 interval: float = CHECK_INTERVAL) -> None:
        super().__init__(reactor, signal.SIGHUP, self.hup)
        self.reactor = reactor
        self.reloadables = list(reloadables)
        self.interval = interval
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if self.reloadables:
            self._loop = LoopingCall(self.check)
            self._loop.clock = self.reactor
            self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def hup(self) -> None:
        """SIGHUP: reload every reloadable."""
        if not self.running:
            self.log.info("received SIGHUP: the shutdown is under way already")
            return
        if not self.reloadables:
            self.log.info("received SIGHUP: nothing to reload (no ssl: port); "
                          "the server goes on (SIGTERM stops it)")
            return
        n = len(self.reloadables)
        self.log.info("received SIGHUP: loading the TLS certificates of {ports} again",
                      n=n, ports=logs.counted(n, "port"))
        for reloadable in self.reloadables:
            reloadable.reload()

    def check(self) -> None:
        """Reload each reloadable whose files changed."""
        for reloadable in self.reloadables:
            if reloadable.changed():
                reloadable.reload()
