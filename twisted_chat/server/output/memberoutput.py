"""
A connection's output, as the fan-out's L{Member} and the session's
L{Connection} write to it (docs/fanout.md, "Module layout"): every write
goes through its L{SendQueue}, after the lobby's lines addressed before it;
a peer that does not read is cut (C{--sendq}, C{--sendq-total},
C{--sendq-timeout}) without C{BYE}.  A mixin of L{ChatProtocol}, not an
object of its own: a connection costs no more memory, and a write no call
more; C{if TYPE_CHECKING} below lists what it needs of the connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel

if TYPE_CHECKING:
    from twisted_chat.server.config import ServerConfig
    from twisted_chat.server.context import ConnectionContext
    from twisted_chat.server.hub import User
    from twisted_chat.server.limits.closing import Closable
    from twisted_chat.server.output.sendqueue import SendQueue


class MemberOutput:
    """The writes of one connection, and its cuts for them."""

    if not TYPE_CHECKING:  # its state is in ChatProtocol's slots (docs/fanout.md)
        __slots__ = ()

    if TYPE_CHECKING:
        # What it needs of the connection (ChatProtocol).
        ctx: ConnectionContext[Any]
        user: User | None
        send_queue: SendQueue | None
        closing: bool
        address: str
        pool_key: str
        _leave_reason: str
        log: Logger

        @property
        def config(self) -> ServerConfig: ...

        @property
        def _socket(self) -> Closable: ...

        def _closing(self) -> SendQueue | None: ...

    def write(self, data: bytes) -> None:
        """Send C{data} after anything addressed to the lobby before it."""
        if self.send_queue is None:
            return  # closing, or the peer gone while its last lines are handled
        self._lobby_first()
        self.ctx.stats.wrote(data)
        self.deliver(data)

    def write_private(self, data: bytes) -> None:
        """L{write} of a private line (a DM, a partner's C{MSG}, an
        invitation), which the C{--sendq} cut leaves out while it is held
        (L{SendQueue.write_private})."""
        if self.send_queue is None:
            return  # as in write()
        self._lobby_first()
        self.ctx.stats.wrote(data)
        queue = self.send_queue  # (the lobby's lines may have cut it)
        if queue is None:
            self.ctx.stats.count_discarded(len(data))  # as in deliver()
        elif not queue.write_private(data):
            self._overflow(len(data))

    def write_parts(self, parts: Sequence[bytes]) -> None:
        """L{write} of C{b"".join(parts)}, without the join (see
        L{SendQueue.write_parts}): shared parts stay shared."""
        if self.send_queue is None:
            return  # as in write()
        self._lobby_first()
        wrote = self.ctx.stats.wrote
        for part in parts:
            wrote(part)
        self.deliver_parts(parts)

    def _lobby_first(self) -> None:
        """The fan-out's order rule (L{LobbyFanout.before_write}), told
        to the batch this connection's user is in (C{ctx.batch_of}: the
        lobby's, or the paired users')."""
        user = self.user
        if user is not None:
            self.ctx.batch_of(user).before_write(self)

    def deliver_parts(self, parts: Sequence[bytes]) -> None:
        """L{deliver} of C{b"".join(parts)}, without the join."""
        queue = self.send_queue
        if queue is None:
            self.ctx.stats.count_discarded(sum(map(len, parts)))  # as in deliver()
            return
        written = queue.written
        if not queue.write_parts(parts):
            # Written counts the parts before the one that did not fit (on a
            # WebSocket, framed: a few bytes more than their lines).
            self._overflow(max(sum(map(len, parts)) - (queue.written - written), 0))

    def deliver(self, data: bytes) -> None:
        """The fan-out's write (for members its direct pass does not
        take): no ordering work, only the send-queue rule."""
        queue = self.send_queue  # None once closing
        if queue is None:
            # Closing: the fan-out leaves a closing member out of its
            # batches, so this is a guard; what comes is counted as discarded.
            self.ctx.stats.count_discarded(len(data))
        elif not queue.write(data):
            self._overflow(len(data))

    def _overflow(self, refused: int) -> None:
        """The peer is not reading: cut it off without BYE (it would not be
        read).  The hub hears of it from C{connectionLost}, which Twisted
        calls on a later turn, so a fan-out in progress is not disturbed.
        C{refused}: the bytes of the write the queue did not take."""
        self._cut(f"send queue over {self.config.sendq} bytes", "sendq", refused)

    def backed_up(self) -> bool:
        """Whether more than half of C{--sendq} is held for the peer: a
        reader that far behind is sent no more private lines (the session
        refuses them to their senders), so that many senders cannot push it
        over C{--sendq} and get it cut.  Those it was sent are left out of
        the C{--sendq} cut while held (L{write_private})."""
        queue = self.send_queue
        return queue is not None and queue.held() > self.config.sendq // 2

    def output_over_budget(self) -> None:
        """It is first to go (stalled, or holding the most) of what the server
        holds for all connections, which is over --sendq-total."""
        self._cut(f"output held for all connections over {self.config.sendq_total} bytes",
                  "sendq_total")

    def output_stalled(self) -> None:
        """The peer took none of what is held for it for --sendq-timeout."""
        self._cut(f"output not drained for {self.config.sendq_timeout:g} seconds",
                  "sendq_timeout")

    def _cut(self, why: str, counted: str, refused: int = 0) -> None:
        """Abort the connection for its output (C{--sendq}, C{--sendq-total},
        C{--sendq-timeout}: C{counted}, the metric's reason; the others' LEFT
        says C{sendq} for all three).  What it held, and C{refused} (the
        write that did not fit), were counted as handed and never leave:
        they are counted as discarded."""
        if self.closing:
            return
        self.ctx.repeats.log(self.log, LogLevel.info, self.pool_key, "sendq",
                                 "{nick} dropped: {why}",
                                 nick=self.user.nick if self.user else self.address, why=why)
        self._leave_reason = counted
        queue = self._closing()
        if queue is not None:
            self.ctx.stats.count_discarded(queue.held() + refused)
        self._socket.abortConnection()
