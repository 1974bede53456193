"""
Whether a transport hands its protocol one read per TLS record.

Under TLS, Twisted's TLS layer calls C{dataReceived} once per record, and a
record costs the server about the same (a decryption, an OpenSSL call, a
read through the protocol) whatever it carries.  A peer that sends its
bytes one per record (23 bytes on the wire each) made one connection take
60% of the server's core with no line ever complete, so no flood token
spent: a TCP peer cannot, its bytes arriving in the kernel's buffer are
read at once.  So under TLS a record that ends no line spends a flood token
(L{twisted_chat.server.recordprotocol.RecordChatProtocol}, chosen once per
connection), as a WebSocket frame after a message's first does; a client
writes each line in one record, which its line pays for.
"""

from __future__ import annotations

from twisted.internet.interfaces import ISSLTransport

# Per transport class: whether it is TLS (asked once per class, not per read).
_KNOWN: dict[type, bool] = {}


def reads_records(transport: object) -> bool:
    """Whether each read from C{transport} is one TLS record."""
    kind = type(transport)
    known = _KNOWN.get(kind)
    if known is None:
        known = _KNOWN[kind] = bool(ISSLTransport.implementedBy(kind))
    return known
