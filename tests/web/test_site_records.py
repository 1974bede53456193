"""
The HTTP ports under TLS: each record is a read of its own, whatever it
carries (twisted_chat.server.limits.records).  A request's line and headers
get READS_PER_REQUEST reads; after a close, reading stops past
READS_AFTER_CLOSE reads.
"""

from __future__ import annotations

from twisted.internet.interfaces import ISSLTransport
from zope.interface import implementer

from tests.harness import Harness
from tests.web.test_admission import HTTPConn, make_site
from tests.web.test_gateway import TCPTransport
from twisted_chat.server.limits.closing import READS_AFTER_CLOSE
from twisted_chat.server.ports.httpports import READS_PER_REQUEST

REQUEST = b"GET / HTTP/1.1\r\nHost: chat.example\r\nX-A: " + b"b" * 100 + b"\r\n\r\n"


@implementer(ISSLTransport)
class TLSTransport(TCPTransport):
    """As Twisted's TLS transport: it says it is TLS, and reads on while its
    close waits for the peer's close_notify (it may still stop reading)."""

    def getPeerCertificate(self) -> None:
        return None

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def pauseProducing(self) -> None:
        self.producerState = "paused"


def test_a_request_a_byte_per_record_gets_400_past_its_reads() -> None:
    """Headers a byte per record: before, every record was read (and parsed)
    until --web-timeout."""
    h = Harness()
    conn = HTTPConn(h, make_site(h), transport=TLSTransport)
    for i in range(READS_PER_REQUEST):
        conn.send(REQUEST[i:i + 1])
    assert conn.transport.value() == b""
    conn.send(REQUEST[READS_PER_REQUEST:READS_PER_REQUEST + 1])
    assert conn.transport.value().startswith(b"HTTP/1.1 400 ")


def test_requests_in_a_few_records_each_are_answered() -> None:
    h = Harness()
    conn = HTTPConn(h, make_site(h), transport=TLSTransport)
    for _ in range(3):
        for part in (REQUEST[:20], REQUEST[20:60], REQUEST[60:]):
            conn.send(part)
    assert conn.transport.value().count(b"HTTP/1.1 200 ") == 3


def test_tcp_reads_are_not_counted() -> None:
    h = Harness()
    conn = HTTPConn(h, make_site(h))
    for i in range(len(REQUEST)):
        conn.send(REQUEST[i:i + 1])
    assert conn.transport.value().startswith(b"HTTP/1.1 200 ")


def test_after_a_close_reading_stops_past_reads_after_close() -> None:
    """A close under TLS reads on for the peer's close_notify: a peer that
    sends on is read READS_AFTER_CLOSE times, then no more (the grace
    aborts it); before, every record until the grace."""
    h = Harness()
    conn = HTTPConn(h, make_site(h), transport=TLSTransport)
    conn.send(b"GET / HTTP/1.0\r\n\r\n")  # answered, then closed
    assert conn.transport.value().startswith(b"HTTP/1.0 200 ")
    for _ in range(READS_AFTER_CLOSE):
        conn.send(b"x")
    assert conn.transport.producerState == "producing"
    conn.send(b"x")
    assert conn.transport.producerState == "paused"
