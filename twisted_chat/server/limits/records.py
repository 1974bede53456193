"""
Whether a transport hands its protocol one read per TLS record, and the
reads of a connection whose reads are (L{RecordReads}).

Under TLS, Twisted's TLS layer calls C{dataReceived} once per record, and a
record costs the server about the same (a decryption, an OpenSSL call, a
read through the protocol) whatever it carries.  A peer that sends its
bytes one per record (23 bytes on the wire each) made one connection take
60% of the server's core with no line ever complete, so no flood token
spent: a TCP peer cannot, its bytes arriving in the kernel's buffer are
read at once.  So under TLS a record that ends no line spends a flood token
(L{RecordReads}, the reads of
L{twisted_chat.server.protocol.RecordChatProtocol}, chosen once per
connection), as a WebSocket frame after a message's first does; a client
writes each line in one record, which its line pays for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import ISSLTransport

if TYPE_CHECKING:
    from twisted_chat.server.context import ConnectionContext
    from twisted_chat.server.limits.closing import Linger
    from twisted_chat.server.limits.heldinput import InputHold

# Per transport class: whether it is TLS (asked once per class, not per read).
_KNOWN: dict[type, bool] = {}


def reads_records(transport: object) -> bool:
    """Whether each read from C{transport} is one TLS record."""
    kind = type(transport)
    known = _KNOWN.get(kind)
    if known is None:
        known = _KNOWN[kind] = bool(ISSLTransport.implementedBy(kind))
    return known


class RecordReads:
    """
    The reads of a connection whose reads are TLS records, each a read of
    its own however little it carries: a record that ends no line spends a
    flood token, and the reads after a close are bounded (L{Linger.read}).
    A mixin of L{twisted_chat.server.protocol.RecordChatProtocol}, ahead of
    L{ChatProtocol} (whose C{dataReceived} it replaces): what it needs of
    the connection is listed under C{if TYPE_CHECKING} below.
    """

    if not TYPE_CHECKING:  # its state is in ChatProtocol's slots (docs/fanout.md)
        __slots__ = ()

    if TYPE_CHECKING:
        # What it needs of the connection (ChatProtocol).
        ctx: ConnectionContext[Any]
        hold: InputHold | None
        closing: bool
        _linger: Linger | None

        def _take(self, data: bytes) -> None: ...

        def _count(self, line: bool = True) -> bool: ...

        def _drop_line(self) -> None: ...

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
