"""
rev11 finding 3: a refused TLS connection was told why (C{ERROR
server-full}, C{BYE full}) inside TLS, so each cost the server a full
handshake; one address got 500-660 a second, half a core.  Past a few per
address (refusals.POLITE_TLS_BURST) it is aborted before the handshake.  Here
through Twisted's own TLS wrapper, as C{ssl:} ports use it; the real
server in tests/test_e2e_tls.py.
"""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path
from typing import Any

from twisted.internet import ssl as tssl
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from tests.harness import Harness
from tests.test_e2e_tls import self_signed
from tests.web.test_admission import make_site
from twisted_chat.server.limits.refusals import POLITE_TLS_BURST, POLITE_TLS_WINDOW
from twisted_chat.web.admission import HTTP_PER_BROWSER


def test_a_few_refused_tls_connections_per_address_are_told_why() -> None:
    h = Harness()
    told = h.factory.polite_refusals

    def polite(key: str) -> bool:
        return told.within(key, "refused-tls")

    assert [polite("10.0.0.1") for _ in range(5)] == [True] * 3 + [False] * 2
    assert polite("10.0.0.2")  # another address: its own
    h.clock.advance(9.9)
    assert not polite("10.0.0.1")
    h.clock.advance(0.1)
    assert [polite("10.0.0.1") for _ in range(4)] == [True] * 3 + [False]


def test_the_defaults() -> None:
    assert (POLITE_TLS_BURST, POLITE_TLS_WINDOW) == (3, 10.0)


def client_hello() -> bytes:
    """A real TLS ClientHello (the standard library's, in memory)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server
        client.do_handshake()
    return outgoing.read()


class _Socket(StringTransport):
    """As a TCP socket: TCP_NODELAY can be set (the web port's channel does)."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class TLSPort:
    """What an C{ssl:} port does with each accepted connection: the chat
    factory wrapped in Twisted's TLS layer."""

    def __init__(self, tmp_path: Path, web: bool = False, **config: Any) -> None:
        key, cert = self_signed(tmp_path)
        options = tssl.DefaultOpenSSLContextFactory(str(key), str(cert))
        self.h = Harness(**config)
        wrapped: Any = make_site(self.h) if web else self.h.factory
        self.tls = TLSMemoryBIOFactory(options, False, wrapped, clock=self.h.clock)
        self.tls.doStart()
        self._port = 40000

    def connect(self, host: str) -> StringTransport:
        self._port += 1
        address = IPv4Address("TCP", host, self._port)
        protocol = self.tls.buildProtocol(address)
        transport = _Socket(peerAddress=address)
        protocol.makeConnection(transport)
        if not transport.disconnected:
            protocol.dataReceived(client_hello())
        return transport


def test_refused_tls_connections_past_a_few_cost_no_handshake(tmp_path: Path) -> None:
    port = TLSPort(tmp_path, max_per_ip=1, exempt=("10.9.0.0/16",))
    holder = port.connect("10.0.0.1")  # the one allowed: its handshake begins
    assert holder.value() and not holder.disconnecting
    refused = [port.connect("10.0.0.1") for _ in range(10)]
    # The first few answered the ClientHello (a ServerHello: the handshake,
    # to tell them why); the rest were aborted before the TLS layer started
    # its handshake, with nothing read and nothing written.
    assert [bool(t.value()) for t in refused] == [True] * 3 + [False] * 7
    assert [t.disconnected for t in refused] == [False] * 3 + [True] * 7
    assert port.h.factory.closing_refusals.count == 3
    # Another address has its own few.
    port.connect("10.0.0.2")
    assert [bool(port.connect("10.0.0.2").value()) for _ in range(4)] == [True] * 3 + [False]
    # An --exempt address is exempt from this limit too (server full).
    for _ in range(5):
        assert not port.connect("10.9.0.1").disconnected
    port.h.clock.advance(POLITE_TLS_WINDOW)
    assert bool(port.connect("10.0.0.1").value())


def test_the_web_port_refusals_under_tls_too(tmp_path: Path) -> None:
    """An C{ssl:} --web port's 503 is told the same few times."""
    port = TLSPort(tmp_path, web=True, max_per_ip=1)
    held = [port.connect("10.0.0.1") for _ in range(HTTP_PER_BROWSER)]  # its HTTP cap
    assert not any(t.disconnecting for t in held)
    refused = [port.connect("10.0.0.1") for _ in range(5)]
    assert [bool(t.value()) for t in refused] == [True] * 3 + [False] * 2
    assert [t.disconnected for t in refused] == [False] * 3 + [True] * 2


def test_plain_tcp_refusals_are_always_told_why() -> None:
    """A refused TCP connection costs an accept and a write: always told."""
    h = Harness(max_per_ip=1)
    h.connect()
    for _ in range(10):
        refused = h.connect()
        assert refused.take() == [
            "ERROR server-full too many connections from 127.0.0.1", "BYE full"]
