"""
SIGUSR1 rotates the log file, if there is one, and never stops the server.

twistd rotates its log file on SIGUSR1 (a logrotate hook's C{kill -USR1}),
and so does the server's (L{logs.rotated_log_file}).  But nothing took
SIGUSR1 when the log went elsewhere (stdout, as the shipped systemd unit's
C{--logfile=-}; syslog; a path that is not a regular file,
such as C{/dev/null}: logs.rotates), and its default action ended the
process as SIGKILL would: no C{BYE shutdown}, and the lobby messages the
database had not written yet lost.  Now L{Rotator} takes it whenever the
server runs: it rotates the log file, or, with none, says so in one line,
and the server goes on.
"""

from __future__ import annotations

import signal
from typing import Any, Protocol

from twisted_chat.server import logs
from twisted_chat.server.ports.signalled import SignalledService


class Rotatable(Protocol):
    """A log file SIGUSR1 rotates (L{logs.RotatedLogFile})."""

    def rotate(self) -> None:
        """Rename it to C{NAME.1} (the older ones up by one) and start a new one."""

    def can_rotate(self) -> bool:
        """Whether a rotation can happen now; if not, a warning why."""


class Rotator(SignalledService):
    """
    Takes SIGUSR1 (from its start on, before the reactor's: L{TakenSignal})
    and rotates C{log_file}; without one (C{None}) logs that the log, which
    goes to C{where}, has no file to rotate.  At its start, once twistd has
    dropped privileges, it warns if the log file cannot be rotated
    (L{logs.RotatedLogFile.can_rotate}: Twisted would skip every rotation
    without a word).
    """

    log = logs.logger()

    def __init__(self, reactor: Any, log_file: Rotatable | None, where: str) -> None:
        super().__init__(reactor, signal.SIGUSR1, self.usr1)
        self.log_file = log_file
        self.where = where

    def startService(self) -> None:
        super().startService()
        if self.log_file is not None:
            self.log_file.can_rotate()

    def usr1(self) -> None:
        """SIGUSR1: rotate the log file, if there is one."""
        if self.log_file is None:
            self.log.info("received SIGUSR1: no log file to rotate (the log goes to "
                          "{where}); the server goes on (SIGTERM stops it)",
                          where=self.where)
            return
        self.log_file.rotate()
