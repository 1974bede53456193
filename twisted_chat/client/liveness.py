"""
Whether the server still answers (docs/client.md, "When the server does not
answer").

A frozen server, or a network path that died without a word (Wi-Fi gone, a
laptop back from sleep, a NAT that forgot the connection), looks the same as
a quiet lobby: what the user types leaves the input row and appears nowhere,
since a lobby line is shown only once the server sends it back.  The kernel
may take a quarter of an hour to call such a connection lost.

So once a line the user sent has had no answer (nothing at all from the
server) for L{Liveness.ANSWER_WAIT} seconds, the client sends C{PING}; if
still nothing comes within L{Liveness.PING_WAIT} more seconds, the user is
told, and told again once the server answers.  The connection is kept: a
server that was only stopped for a while delivers the lines when it goes on.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Liveness:
    """
    One connection's watch on the server's answers.

    @param clock: times the waits.
    @param ping: sends C{PING} (not counted as a line sent).
    @param silent: the server has not answered for this many seconds the
        lines sent since it last said anything (this many): tell the user.
    @param back: the server said something again after L{silent}, this many
        seconds after the first line it left unanswered.
    @param deaf: whether the client is not reading the server just now
        (stdout is full): the waits start again rather than blame the server.
    @param answer_wait: seconds a line sent may go unanswered before the
        client sends C{PING} (C{None}: no watch).
    """

    # Seconds a line sent may go unanswered before the client sends PING.
    ANSWER_WAIT = 5.0
    # Seconds the PING then has before the user is told.
    PING_WAIT = 5.0

    def __init__(
        self,
        clock: IReactorTime,
        *,
        ping: Callable[[], None],
        silent: Callable[[float, int], None],
        back: Callable[[float], None],
        deaf: Callable[[], bool] = lambda: False,
        answer_wait: float | None = ANSWER_WAIT,
    ) -> None:
        self._clock = clock
        self.answer_wait = answer_wait
        self._ping = ping
        self._silent = silent
        self._back = back
        self._deaf = deaf
        self._since: float | None = None  # the first line sent since the server spoke
        self._count = 0  # lines sent since the server spoke
        self._pinged = False
        self._warned = False
        self._timer: IDelayedCall | None = None

    def sent(self) -> None:
        """A line that the server answers (or echoes) was written."""
        if self.answer_wait is None:
            return
        self._count += 1
        if self._since is None:
            self._since = self._clock.seconds()
            self._wait(self.answer_wait)

    def heard(self) -> None:
        """The server sent something: it is alive, and has read what came before."""
        if self._since is None:
            return
        since = self._since
        warned = self._warned
        self.stop()
        if warned:
            self._back(self._clock.seconds() - since)

    def stop(self) -> None:
        """Watch no more (until the next line sent)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._since = None
        self._count = 0
        self._pinged = self._warned = False

    def _wait(self, seconds: float) -> None:
        self._timer = self._clock.callLater(seconds, self._look)

    def _look(self) -> None:
        self._timer = None
        if self._deaf():
            # The answer may be waiting, unread: look again later.
            self._wait(self.answer_wait or self.ANSWER_WAIT)
            return
        if not self._pinged:
            self._pinged = True
            self._ping()
            self._wait(self.PING_WAIT)
            return
        if not self._warned and self._since is not None:
            self._warned = True
            self._silent(self._clock.seconds() - self._since, self._count)
