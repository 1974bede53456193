"""
C{--rcvbuf} (rev19-attack 2): each accepted socket's kernel receive buffer
is fixed before the server's first read of it, on every port: a chat
connection (and a refused one), the web port's HTTP connections (a
WebSocket starts as one), the metrics port's; under TLS too.  No port set
it: the kernel's autotuning grew a buffer to megabytes once the server had
read fast, all of it held while the server did not read.  Protocols here
are made on a transport whose handle is a real (unconnected) socket; the
running server is in tests/test_e2e_receivebuffer.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import ssl as tssl
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage

from tests.harness import Harness
from tests.test_e2e_tls import self_signed
from tests.test_service import options
from tests.web.test_admission import make_site
from tests.web.test_gateway import TCPTransport
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.limits.socketbuffers import fix_receive_buffer
from twisted_chat.server.metrics.counters import Snapshot, Stats, registry_for
from twisted_chat.server.metrics.metricsport import metrics_site

RCVBUF = 16384
#: What Linux reports for it: it counts double (its bookkeeping).
REPORTED = 2 * RCVBUF


class SocketTransport(TCPTransport):
    """A transport whose handle is C{sock}, as Twisted's TCP transport's is."""

    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    with socket.socket() as made:
        yield made


def received(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def accept(factory: Any, sock: socket.socket, host: str = "192.0.2.1") -> Any:
    """What a port does at an accept: C{factory}'s protocol, made on a
    transport over C{sock}."""
    address = IPv4Address("TCP", host, 40000)
    protocol = factory.buildProtocol(address)
    transport = SocketTransport(sock, peerAddress=address)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol


def test_the_default_is_64_kib() -> None:
    """The e2e test's RCVBUF is the default."""
    assert ServerConfig().rcvbuf == options().config().rcvbuf == 64 * 1024


@pytest.mark.parametrize(("value", "rcvbuf"), [("32768", 32768), ("0", 0)])
def test_rcvbuf_takes_bytes_and_zero(value: str, rcvbuf: int) -> None:
    assert options("--rcvbuf", value).config().rcvbuf == rcvbuf


@pytest.mark.parametrize(("value", "message"), [
    ("-1", "--rcvbuf: must not be negative: '-1'"),
    ("64k", "--rcvbuf: not an integer: '64k'"),
    ("1.5", "--rcvbuf: not an integer: '1.5'"),
])
def test_a_bad_rcvbuf_is_a_usage_error_naming_it(value: str, message: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        options("--rcvbuf", value)
    assert str(e.value) == message


def test_the_buffer_is_fixed_and_zero_leaves_it_to_the_kernel(sock: socket.socket) -> None:
    untouched = received(sock)
    fix_receive_buffer(sock, 0)
    assert received(sock) == untouched
    fix_receive_buffer(None, RCVBUF)  # no socket (a test's transport): nothing to fix
    fix_receive_buffer(sock, RCVBUF)
    assert received(sock) == REPORTED != untouched


def test_a_chat_connection_has_its_receive_buffer_fixed(sock: socket.socket) -> None:
    h = Harness(rcvbuf=RCVBUF)
    accept(h.factory, sock)
    assert received(sock) == REPORTED


def test_a_refused_chat_connection_has_its_receive_buffer_fixed(
        sock: socket.socket) -> None:
    """Its close waits out the grace reading nothing, as a BYE's does."""
    h = Harness(rcvbuf=RCVBUF, max_clients=1)
    h.connect()
    refusal = accept(h.factory, sock)
    assert refusal.transport.value().startswith(b"ERROR server-full")
    assert received(sock) == REPORTED


def test_a_web_connection_has_its_receive_buffer_fixed(sock: socket.socket) -> None:
    h = Harness(rcvbuf=RCVBUF)
    accept(make_site(h), sock)
    assert received(sock) == REPORTED


def test_a_metrics_connection_has_its_receive_buffer_fixed(sock: socket.socket) -> None:
    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), Clock(),
                        config=ServerConfig(rcvbuf=RCVBUF))
    accept(site, sock)
    assert received(sock) == REPORTED


@pytest.mark.parametrize("web", [False, True])
def test_under_tls_the_socket_below_has_it_fixed(
        tmp_path: Path, sock: socket.socket, web: bool) -> None:
    """The protocol's transport is the TLS layer; the socket is below it."""
    key, cert = self_signed(tmp_path)
    h = Harness(rcvbuf=RCVBUF)
    wrapped: Any = make_site(h) if web else h.factory
    tls = TLSMemoryBIOFactory(tssl.DefaultOpenSSLContextFactory(str(key), str(cert)),
                              False, wrapped, clock=h.clock)
    tls.doStart()
    accept(tls, sock)
    assert received(sock) == REPORTED
