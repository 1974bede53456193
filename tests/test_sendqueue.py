"""
The send queue: the direct-send path on a real loopback TCP connection, the
fallback for every other transport (or when Twisted lacks what the direct
path reads, or the operator turns it off), and the --sendq rule on each.
What clients see of the rule is in tests/test_limits.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.testing import StringTransport

from twisted_chat.server import sendqueue
from twisted_chat.server.sendqueue import SendQueue, backlog_meter, buffer_size, direct_sender


def test_other_transports_use_transport_write() -> None:
    transport = StringTransport()
    write = direct_sender(transport)
    write(b"hello")
    assert transport.value() == b"hello"
    assert backlog_meter(transport) is None  # the caller has to estimate


def test_the_buffer_size_is_read_from_the_transport() -> None:
    from twisted.internet.abstract import FileDescriptor

    transport = StringTransport()
    assert buffer_size(transport) == FileDescriptor.bufferSize  # Twisted's default
    transport.bufferSize = 1234  # type: ignore[attr-defined]
    assert buffer_size(transport) == 1234

    class Wrapper:  # a TLS transport pauses when the transport under it is full
        def __init__(self, under: Any) -> None:
            self.transport = under

    assert buffer_size(Wrapper(transport)) == 1234


def test_without_a_meter_the_queue_estimates_from_the_buffer_size() -> None:
    transport = StringTransport()
    transport.bufferSize = 100  # type: ignore[attr-defined]
    queue = SendQueue(transport, limit=150)
    assert not queue.direct
    assert queue.write(b"x" * 1000), "not paused: Twisted buffers what it must"
    queue.pauseProducing()  # the transport holds more than its 100 bytes
    assert queue.write(b"y" * 50)  # 100 + 50: at the limit
    assert not queue.write(b"z"), "past it: the caller cuts the connection"
    assert transport.value() == b"x" * 1000 + b"y" * 50
    queue.resumeProducing()  # drained
    assert queue.write(b"z" * 500)


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


@pytest_twisted.inlineCallbacks
def test_without_the_private_attributes_the_queue_falls_back(
    loopback: Any, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """A Twisted whose TCP transport lacks what the direct path reads: plain
    transport.write, and the --sendq estimate, on a real socket."""
    factory, _client = loopback
    server = yield factory.accepted
    monkeypatch.setattr(sendqueue, "_PRIVATE", (*sendqueue._PRIVATE, "_gone_in_this_twisted"))
    assert direct_sender(server.transport) == server.transport.write
    assert backlog_meter(server.transport) is None
    queue = SendQueue(server.transport, limit=buffer_size(server.transport) + 10)
    assert not queue.direct
    assert queue.write(b"hi\r\n")
    assert server.transport._tempDataLen == 4, "buffered by Twisted, not sent at once"
    queue.pauseProducing()
    assert not queue.write(b"x" * 11)
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_the_operator_can_turn_the_direct_path_off(loopback: Any) -> Any:
    factory, _client = loopback
    server = yield factory.accepted
    assert SendQueue(server.transport, limit=1 << 20).direct
    queue = SendQueue(server.transport, limit=1 << 20, direct=False)
    assert not queue.direct
    queue.write(b"later\r\n")
    assert server.transport._tempDataLen == 7, "left to the reactor's next turn"
    server.transport.loseConnection()
