"""
A WebSocket under TLS: each record is a read of its own, whatever it
carries (twisted_chat.server.limits.records).  One in which no frame begins
spends a flood token; after the server's close, reading stops past
READS_AFTER_CLOSE reads.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.interfaces import ISSLTransport
from zope.interface import implementer

from tests.harness import Harness
from tests.web import wsframes as ws
from tests.web.test_gateway import TCPTransport, WsConn, make_gateway, tcp_and_browser
from twisted_chat.server.limits.closing import READS_AFTER_CLOSE


@implementer(ISSLTransport)
class TLSTransport(TCPTransport):
    """As Twisted's TLS transport: it says it is TLS, and may stop reading
    while its close waits for the peer's close_notify."""

    def getPeerCertificate(self) -> Any:
        return None

    def pauseProducing(self) -> None:
        self.producerState = "paused"


@pytest.fixture(autouse=True)
def no_channel_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """autobahn asks a TLS transport for its channel id (tls-unique), which
    only Twisted's own TLS layer has."""
    import autobahn.twisted.util
    import autobahn.twisted.websocket

    for module in (autobahn.twisted.util, autobahn.twisted.websocket):
        monkeypatch.setattr(module, "transport_channel_id", lambda *args, **kwargs: None)


def byte_records(conn: WsConn, data: bytes) -> None:
    for i in range(len(data)):
        conn.send_frame(data[i:i + 1])


def test_records_in_which_no_frame_begins_spend_flood_tokens_until_bye_flood() -> None:
    """A frame sent a byte per record: each record after the one its
    header ends in spends a token; the peer is cut with BYE flood (before,
    a message of 15,000 records spent one)."""
    h = Harness(flood_rate=1.0, flood_burst=5)
    alice = WsConn(h, make_gateway(h), transport=TLSTransport)
    alice.register("alice")
    byte_records(alice, ws.frame(b"MSG " + b"x" * 200))
    said = alice.take()
    assert any(line.startswith("ERROR flood") for line in said), said
    assert said[-1].startswith("BYE flood"), said


def test_a_frame_per_record_costs_its_line_only() -> None:
    h = Harness(flood_rate=1.0, flood_burst=5)
    bob = h.user("bob")
    alice = WsConn(h, make_gateway(h), transport=TLSTransport)
    alice.register("alice")  # one token of five
    bob.take()
    for i in range(4):
        alice.send(f"MSG {i}")
    assert len(bob.take()) == 4
    assert not any(line.startswith("ERROR") for line in alice.take())


def test_tcp_reads_in_which_no_frame_begins_spend_nothing() -> None:
    h = Harness(flood_rate=1.0, flood_burst=5)
    bob, alice = tcp_and_browser(h, make_gateway(h))
    byte_records(alice, ws.frame(b"MSG " + b"x" * 200))
    assert bob.take()[-1].endswith("x" * 200)
    assert not any(line.startswith("ERROR") for line in alice.take())


def test_after_the_server_s_close_reading_stops_past_reads_after_close() -> None:
    """The close frame sent, the peer's close is read for: a peer sending on
    a byte per record is read READS_AFTER_CLOSE times, then no more (the
    close's grace aborts it); before, every record for the whole grace."""
    h = Harness()
    alice = WsConn(h, make_gateway(h), transport=TLSTransport)
    alice.register("alice")
    alice.send("BYE")
    assert alice.closes == [] and alice.take() == ["BYE quit"] and alice.closes == [1000]
    for _ in range(READS_AFTER_CLOSE):
        alice.send_frame(b"\x81")
    assert alice.transport.producerState == "producing"
    alice.send_frame(b"\x81")
    assert alice.transport.producerState == "paused"


def test_a_refused_upgrade_s_close_stops_reading_past_reads_after_close() -> None:
    """A refused upgrade's close under TLS reads on for close_notify: a
    peer sending on is read READS_AFTER_CLOSE times, then no more (the
    grace aborts it); before, every record until the grace."""
    h = Harness()
    conn = WsConn(h, make_gateway(h), transport=TLSTransport, origin="http://evil.example")
    assert conn.response.startswith("HTTP/1.1 403")
    for _ in range(READS_AFTER_CLOSE):
        conn.send_frame(b"x")
    assert conn.transport.producerState == "producing"
    conn.send_frame(b"x")
    assert conn.transport.producerState == "paused"
