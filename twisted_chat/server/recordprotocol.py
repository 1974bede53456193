"""
The connection of a transport whose reads are TLS records
(L{twisted_chat.server.limits.records}): L{RecordChatProtocol}, which
L{ChatProtocol} becomes at C{connectionMade} when its transport is TLS.
"""

from __future__ import annotations

from twisted_chat.server.protocol import ChatProtocol


class RecordChatProtocol(ChatProtocol):
    """
    A L{ChatProtocol} whose reads are TLS records, each a read of its own
    however little it carries (L{twisted_chat.server.limits.records}): a
    record that ends no line spends a flood token, and the reads after a
    close are bounded (L{Linger.read}).  A connection becomes one at
    C{connectionMade}, so that plain TCP reads pay no per-read test.
    """

    __slots__ = ()

    def dataReceived(self, data: bytes) -> None:
        linger = self._linger  # set once a close is decided
        if linger is not None:
            linger.read()
        if b"\n" in data:
            self.ctx.fanout.read(self._take, data)
        else:
            self.ctx.fanout.read(self._take_record, data)

    def _take_record(self, data: bytes) -> None:
        """A TLS record that ends no line: it spends a flood token
        (L{twisted_chat.server.limits.records}), and is no line for the idle
        timer; one that finds none is dropped with the line it was part of."""
        if self.closing:
            return
        if self._count(line=False):
            self._take(data)
            return
        hold = self.hold
        if hold is not None and hold.waiting:
            hold.drop_line()  # in its turn, with the held part of its line
            return
        self._drop_line()
