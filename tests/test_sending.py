"""
The direct-send path on a real loopback TCP connection, and the fallback
for every other transport.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.testing import StringTransport

from twisted_chat.server.sending import backlog_meter, direct_sender


def test_other_transports_use_transport_write() -> None:
    transport = StringTransport()
    write = direct_sender(transport)
    write(b"hello")
    assert transport.value() == b"hello"
    assert backlog_meter(transport) is None  # the caller has to estimate


class Accepted(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.accepted.callback(self)  # type: ignore[attr-defined]


@pytest.fixture
def loopback() -> Iterator[Any]:
    from twisted.internet import reactor

    factory = protocol.Factory.forProtocol(Accepted)
    factory.accepted = defer.Deferred()  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port.getHost().port))
    client.settimeout(5)
    yield factory, client
    client.close()
    port.stopListening()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "closed early"
        data += chunk
    return data


@pytest_twisted.inlineCallbacks
def test_sends_at_once_when_nothing_is_queued(loopback: Any) -> Any:
    factory, client = loopback
    server = yield factory.accepted
    write = direct_sender(server.transport)
    assert write is not server.transport.write  # the fast path was chosen
    write(b"now\r\n")
    # Sent without the reactor running: nothing was left in Twisted's buffer.
    assert server.transport._tempDataLen == 0
    assert read_exactly(client, 5) == b"now\r\n"
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_what_the_kernel_does_not_take_is_queued_in_order(loopback: Any) -> Any:
    factory, client = loopback
    server = yield factory.accepted
    server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    write = direct_sender(server.transport)
    big = bytes(range(256)) * 8192  # 2 MiB: far more than the socket buffers hold
    write(big)
    assert server.transport._tempDataLen > 0, "the rest went to Twisted's buffer"
    meter = backlog_meter(server.transport)
    assert meter is not None
    held = meter()
    assert 0 < held < len(big)
    write(b"after")  # must not overtake the queued part
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    client.setblocking(False)
    received = bytearray()
    for _ in range(20000):  # bounded: let the reactor drain Twisted's buffer
        try:
            received += client.recv(1 << 20)
        except BlockingIOError:
            yield deferLater(reactor, 0, lambda: None)
        if len(received) >= len(big) + 5:
            break
    assert bytes(received) == big + b"after"
    assert meter() == 0  # all sent: nothing held any more
    server.transport.loseConnection()
