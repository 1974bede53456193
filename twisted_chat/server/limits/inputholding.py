"""
A connection's side of the input it holds while a command is decided
elsewhere (L{twisted_chat.server.limits.heldinput}): its L{InputHold},
made only when needed and let go once idle, and what the server's
L{HeldInput} and the session ask of it (C{wait_for}, C{discard_input},
C{held_at}, C{arrived}, the node-wide pause).  A mixin of
L{ChatProtocol}, not an object: no memory per connection; C{if
TYPE_CHECKING} below lists what it needs of the connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted_chat.server.limits.heldinput import InputHold

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from twisted_chat.server.context import ConnectionContext
    from twisted_chat.server.hub import User
    from twisted_chat.server.limits.addresses import Address
    from twisted_chat.server.limits.closing import Closable


class InputHolding:
    """The hold of one connection, and its reading paused and resumed."""

    if not TYPE_CHECKING:  # its state is in ChatProtocol's slots (docs/fanout.md)
        __slots__ = ()

    if TYPE_CHECKING:
        # What it needs of the connection (ChatProtocol), and what its
        # InputHold needs (heldinput.Holding).
        ctx: ConnectionContext[Any]
        hold: InputHold | None
        user: User | None
        limits: Address | None
        closing: bool
        _buffer: bytes
        _last_line: float

        @property
        def _socket(self) -> Closable: ...

        def held_read(self, data: bytes) -> None: ...

        def message_received(self, line: bytes) -> None: ...

        def close(self, reason: str, text: str = "", farewell: str = "") -> None: ...

        def readConnectionLost(self) -> None: ...

    def _holding(self) -> InputHold:
        hold = self.hold
        if hold is None:
            hold = self.hold = InputHold(self)
        return hold

    def settled(self, hold: InputHold) -> None:
        """C{hold} is let go once it waits for, holds and pauses nothing."""
        if self.hold is hold and hold.idle():
            self.hold = None

    def wait_for(self, outcome: Deferred[Any]) -> None:
        """Handle no more lines until C{outcome} (a command decided
        elsewhere) fires; what arrives meanwhile waits (L{InputHold})."""
        self._holding().wait_for(outcome)

    def discard_input(self) -> None:
        """The connection is going: what it sent, and sends, is dropped
        unhandled (L{InputHold.discard}), its partial line with it."""
        buffered, self._buffer = len(self._buffer), b""
        self._holding().discard(buffered)

    @property
    def held_at(self) -> float | None:
        """While a line held behind a command is handled: when it arrived."""
        hold = self.hold
        return None if hold is None else hold.held_at

    def arrived(self) -> float:
        """When the line being handled, or the line a command being decided
        came from, arrived (the reactor's time): the line counted last, so
        now for a line handled as it comes; for one held behind a command
        (wait_for), when it was read."""
        return self._last_line

    def held_or_waiting(self) -> bool:
        """Whether what it read now would be held (L{HeldInput})."""
        hold = self.hold
        return hold is not None and hold.waiting

    def node_pause(self) -> None:
        """The server's connections hold too much input (L{HeldInput})."""
        self._holding().pause()

    def node_resume(self) -> None:
        hold = self.hold
        if hold is not None:
            hold.resume()
            self.settled(hold)

    def pause_reading(self) -> None:
        self._socket.pauseProducing()

    def resume_reading(self) -> None:
        self._socket.resumeProducing()
