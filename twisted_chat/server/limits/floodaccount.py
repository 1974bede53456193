"""
A connection's flood control (docs/security.md, "Traffic"): each line,
and each TLS record or WebSocket frame that ends none, spends a token of
the server's L{FloodMeter} rule, as of when it arrived; a dropped line
is warned (C{ERROR flood}) and past the penalty cut (C{BYE flood}).  A
mixin of L{ChatProtocol}, not an object: L{FloodAccount._count} runs on
every line, which pays no call and no memory more for it; C{if
TYPE_CHECKING} below lists what it needs of the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted_chat import wire
from twisted_chat.server.limits.flood import Dropped
from twisted_chat.wire import ErrorCode

if TYPE_CHECKING:
    from twisted_chat.server.config import ServerConfig
    from twisted_chat.server.context import ConnectionContext
    from twisted_chat.server.limits.addresses import Address
    from twisted_chat.server.limits.flood import Flooding
    from twisted_chat.server.limits.heldinput import InputHold


class FloodAccount:
    """The flood tokens of one connection, and what its dropped lines left."""

    if not TYPE_CHECKING:  # its state is in ChatProtocol's slots (docs/fanout.md)
        __slots__ = ()

    if TYPE_CHECKING:
        # What it needs of the connection (ChatProtocol).
        ctx: ConnectionContext[Any]
        hold: InputHold | None
        limits: Address | None
        _tokens: float
        _flood_at: float
        _flooding: Flooding | None
        _last_line: float

        @property
        def config(self) -> ServerConfig: ...

        def write(self, data: bytes) -> None: ...

        def close(self, reason: str, text: str = "", farewell: str = "") -> None: ...

        # The HeldInput's Holder (its flood excuse is kept per connection).
        def held_or_waiting(self) -> bool: ...

        def node_pause(self) -> None: ...

        def node_resume(self) -> None: ...

    def _count(self, line: bool = True) -> bool:
        """
        A complete line arrived, or (not C{line}) a TLS record that ends
        none (L{twisted_chat.server.protocol.RecordChatProtocol}):
        now, or for a line held behind a command, when it was read
        (L{InputHold.held_at}).  Each spends a
        flood token as of then (C{_flood_at}: the time its tokens are as
        of); only a line restarts the idle timer (C{_last_line}, which
        L{IdleDeadline._check_idle} runs from).
        @return: whether it may be handled.
        """
        # ctx, not the properties: a call less on every line.
        ctx = self.ctx
        hold = self.hold
        since = self._flood_at
        if hold is None or hold.held_at is None:
            at = self._flood_at = ctx.clock.seconds()
        else:
            at = hold.held_at
            if at > since:
                self._flood_at = at
            # else it came before a record counted since (read while the
            # command waited): counted as of that, its refill is not had twice.
        if line:
            self._last_line = at
        allowed, self._tokens = ctx.flood.spend(self._tokens, since, at)
        if allowed:
            return True
        config = self.config
        if ctx.held_input.excused(self, at, config.flood_rate):
            # Sent while the server did not read it (HeldInput), or while
            # the whole process stalled (StallWatch): not a flood.
            return True
        self.dropped(at, f"slow down: at most {config.flood_rate:g} lines per second "
                     f"(bursts of {config.flood_burst}); {wire.LINES_DROPPED}", "flood_rate")
        return False

    def charge(self, size: int) -> bool:
        """A reply of C{size} bytes to the line just counted costs the flood
        tokens of its size (L{FloodMeter.charge}): whether it may be sent."""
        allowed, self._tokens = self.ctx.flood.charge(self._tokens, size)
        return allowed

    def dropped(self, now: float, why: str, limit: str) -> None:
        """A line that arrived at C{now} (L{arrived}) was dropped for
        flooding, over C{limit} (counted: chat_dropped_lines_total): C{ERROR
        flood} at most once a second, and C{BYE flood} once the penalty
        passes C{--flood-burst}, this connection's own or its address's
        (shared by all its connections and kept across reconnects:
        docs/security.md)."""
        self.ctx.stats.count_dropped(limit)
        verdict, self._flooding = self.ctx.flood.dropped(self._flooding, now)
        limits = self.limits
        if limits is not None and limits.penalty.add(now) > self.config.flood_burst:
            verdict = Dropped.CUT
        if verdict is Dropped.CUT:
            self.close("flood", "too many lines too fast")
        elif verdict is Dropped.WARN:
            self.write(wire.error(ErrorCode.FLOOD, why))
