"""
A connection's idle deadline (C{--idle-timeout}, then C{PING} and
C{--ping-timeout}), on the server's shared L{Deadlines}
(docs/fanout.md, "Memory per connection"): each line only records its
time (the connection's C{_last_line}), so a busy connection costs no
timer work per line.  A mixin of L{ChatProtocol}, not an object: no
memory per connection; C{if TYPE_CHECKING} below lists what it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted_chat import wire

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from twisted_chat.server.config import ServerConfig
    from twisted_chat.server.context import ConnectionContext
    from twisted_chat.server.limits.deadlines import Deadline
    from twisted_chat.server.limits.heldinput import InputHold


class IdleDeadline:
    """The idle deadline of one connection: its L{Deadline} and its C{PING}."""

    if not TYPE_CHECKING:  # its state is in ChatProtocol's slots (docs/fanout.md)
        __slots__ = ()

    if TYPE_CHECKING:
        # What it needs of the connection (ChatProtocol).
        ctx: ConnectionContext[Any]
        hold: InputHold | None
        _idle: Deadline | None
        _pinged_at: float | None
        _last_line: float

        @property
        def config(self) -> ServerConfig: ...

        @property
        def clock(self) -> IReactorTime: ...

        def write(self, data: bytes) -> None: ...

        def close(self, reason: str, text: str = "", farewell: str = "") -> None: ...

    def stop_idle(self) -> None:
        """No more idle checks: the connection is closing."""
        idle = self._idle
        if idle is not None:
            self._idle = None
            self.ctx.deadlines.drop(idle)

    def _set_idle(self, when: float) -> None:
        deadlines = self.ctx.deadlines
        if self._idle is not None:
            deadlines.drop(self._idle)
        self._idle = deadlines.add(when, self)

    def deadline_reached(self, when: float) -> None:
        self._idle = None
        self._check_idle()

    def _check_idle(self) -> None:
        """Runs when the connection may have been silent for --idle-timeout,
        which runs from its last complete line (C{_last_line}: a TLS record
        that ends none is no line); each line only records its time, so a
        busy connection costs no timer work per line."""
        now = self.clock.seconds()
        hold = self.hold
        if hold is not None and hold.unread_for_node():
            # Not read because the server holds too much input (HeldInput):
            # its silence is the server's doing, and its PONG would not be read.
            self._set_idle(now + self.config.idle_timeout)
            return
        pinged = self._pinged_at
        if pinged is not None and self._last_line < pinged:
            self.close("timeout", f"no answer to PING within {self.config.ping_timeout:g} seconds")
            return
        self._pinged_at = None
        # Compared as instants, not as "silent < idle": the timer fires at the
        # float sum of when it was set and the timeout, and the difference
        # now - last line can round to a hair under the timeout; rescheduling
        # for that hair lands at this same instant again, forever on a Clock.
        due = self._last_line + self.config.idle_timeout
        if now < due:
            self._set_idle(due)
            return
        self._pinged_at = now
        self.write(wire.line("PING", text=f"idle-{int(now)}"))
        self._set_idle(now + self.config.ping_timeout)
