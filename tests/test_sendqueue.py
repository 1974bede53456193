"""
The send queue: the direct-send path on a real loopback TCP connection, the
fallback for every other transport (or when Twisted lacks what the direct
path reads, or the operator turns it off), the --sendq rule counting the
kernel's bytes, the fixed socket send buffer, and the drain watch.  What
clients see of the rules is in tests/test_limits.py and
tests/test_e2e_limits.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import defer, protocol
from twisted.internet.abstract import FileDescriptor
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport

from twisted_chat import tcpinfo
from twisted_chat.server.output import sendqueue
from twisted_chat.server.output.outputwatch import DrainWatch, OutputBudget, stalled
from twisted_chat.server.output.sendqueue import DirectPass, Handed, SendQueue, buffer_size
from twisted_chat.tcpinfo import kernel_acked, kernel_queued

# -- transports that are not plain TCP --------------------------------------------


def test_other_transports_use_transport_write() -> None:
    transport = StringTransport()
    queue = SendQueue(transport, limit=1 << 20)
    assert not queue._direct
    assert queue.write(b"hello")
    assert transport.value() == b"hello"
    assert queue.held() == 0  # no socket under it, nothing paused


def test_the_buffer_size_is_read_from_the_transport() -> None:
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
    assert queue.write(b"x" * 1000), "not paused: Twisted buffers what it must"
    queue.pauseProducing()  # the transport holds more than its 100 bytes
    assert queue.held() == 100
    assert queue.write(b"y" * 50)  # 100 + 50: at the limit
    assert not queue.write(b"z"), "past it: the caller cuts the connection"
    assert transport.value() == b"x" * 1000 + b"y" * 50
    queue.resumeProducing()  # drained
    assert queue.held() == 0
    assert queue.write(b"z" * 500)


class Unread(StringTransport):
    """A transport whose peer takes nothing: Twisted's buffer, read where
    L{tcpinfo.twisted_buffered} reads it, holds every byte written."""

    dataBuffer = b""
    offset = 0

    @property
    def _tempDataLen(self) -> int:
        return len(self.value())


def test_a_refused_write_is_not_written_nor_taken_by_the_peer() -> None:
    """reread11 core F1: write() added a refused write to written all the
    same, so progress() (written less what Twisted and the kernel hold)
    and delivered() counted the refused bytes as taken by the peer."""
    transport = Unread()
    transport.bufferSize = 100  # type: ignore[attr-defined]
    queue = SendQueue(transport, limit=200)
    assert queue.write(b"x" * 1000)
    queue.pauseProducing()  # 100 left under the limit past Twisted's buffer
    assert queue.write(b"y" * 50)
    assert queue.progress() == 0, "the peer took nothing"
    assert not queue.write(b"z" * 51)
    assert queue.written == 1050
    assert not queue.write_parts([b"c" * 30, b"d" * 100]), "stops at d"
    assert queue.written == 1080, "c was written, d refused"
    assert transport.value() == b"x" * 1000 + b"y" * 50 + b"c" * 30
    assert queue.progress() == 0, "refused bytes are not taken by the peer"
    assert queue.delivered(queue.held()) == 0


# -- plain TCP on loopback ---------------------------------------------------------


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


@pytest_twisted.inlineCallbacks
def test_sends_at_once_when_nothing_is_queued(loopback: Any) -> Any:
    factory, client = loopback
    server = yield factory.accepted
    queue = SendQueue(server.transport, limit=1 << 20)
    assert queue._direct
    assert queue.write(b"now\r\n")
    # Sent without the reactor running: nothing was left in Twisted's buffer.
    assert server.transport._tempDataLen == 0
    assert client.recv(100) == b"now\r\n"
    server.transport.loseConnection()


@defer.inlineCallbacks
def drain(client: socket.socket, n: int) -> Any:
    """Read C{n} bytes, letting the reactor drain Twisted's buffer meanwhile."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    client.setblocking(False)
    received = bytearray()
    for _ in range(20000):  # bounded
        try:
            received += client.recv(1 << 20)
        except BlockingIOError:
            yield deferLater(reactor, 0, lambda: None)
        if len(received) >= n:
            break
    return bytes(received)


@defer.inlineCallbacks
def until_nothing_held(queue: SendQueue) -> Any:
    """Wait, bounded, for the peer's last ACK: until the queue (Twisted and
    the kernel) holds nothing."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    for _ in range(1000):  # at most 5 s: the ACK may take a moment
        if queue.held() == 0:
            return
        yield deferLater(reactor, 0.005, lambda: None)
    assert queue.held() == 0, "all delivered: nothing held any more"


@pytest_twisted.inlineCallbacks
def test_what_the_kernel_does_not_take_is_queued_in_order_and_counted(loopback: Any) -> Any:
    factory, client = loopback
    server = yield factory.accepted
    queue = SendQueue(server.transport, limit=1 << 30, sndbuf=4096)
    big = bytes(range(256)) * 8192  # 2 MiB: far more than the socket buffers hold
    assert queue.write(big)
    twisted_share = queue.twisted_held()
    kernel_share = kernel_queued(server.transport.getHandle())
    assert 0 < twisted_share < len(big), "the rest went to Twisted's buffer"
    assert kernel_share > 0, "and the kernel holds what the peer has not taken"
    assert queue.held() == twisted_share + kernel_share
    assert queue.write(b"after")  # must not overtake the queued part
    received = yield drain(client, len(big) + 5)
    assert received == big + b"after"
    yield until_nothing_held(queue)
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_the_budget_s_tally_counts_what_goes_to_twisted_and_nothing_sent(loopback: Any) -> Any:
    """The output budget's tally (L{Handed}) between its looks: each byte
    handed to Twisted's buffer (what the kernel did not take, what waits
    behind it), none of what went straight to the socket."""
    factory, _ = loopback
    server = yield factory.accepted
    handed = Handed()
    queue = SendQueue(server.transport, limit=1 << 30, sndbuf=4096, handed=handed)
    assert queue.write(b"now\r\n")
    assert handed.count == 0, "taken by the kernel: never in Twisted's buffer"
    assert queue.write(bytes(range(256)) * 8192)
    assert 0 < handed.count == queue.twisted_held()
    assert queue.write(b"after")
    assert handed.count == queue.twisted_held()
    other = Handed()
    assert SendQueue(StringTransport(), limit=1 << 20, handed=other).write(b"hello")
    assert other.count == 5, "off the direct path every write is Twisted's"
    server.transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_parts_go_in_one_send_and_what_waits_keeps_the_shared_objects(
        loopback: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """write_parts: one sendmsg of every part; of what the kernel does not
    take, each untouched part waits in Twisted's buffer as the same object
    (a shared user list stays one object for every peer that does not
    read), and the bytes arrive in order, as one write of their join."""
    factory, client = loopback
    server = yield factory.accepted
    handed = Handed()
    queue = SendQueue(server.transport, limit=1 << 30, sndbuf=4096, handed=handed)
    sends: list[int] = []
    real = server.transport.socket

    class Counting:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def sendmsg(self, buffers: Any) -> int:
            sends.append(len(buffers))
            return real.sendmsg(buffers)

    monkeypatch.setattr(server.transport, "socket", Counting())
    head, big, tail = b"UNPAIRED bob left\r\n", bytes(range(256)) * 4096, b"x" * 500_000
    assert queue.write_parts([head, big, tail])
    assert sends == [3]
    waiting = server.transport._tempDataBuffer
    assert waiting[-1] is tail, "the untouched part waits by reference"
    assert 0 < queue.twisted_held() < len(head + big + tail)
    assert handed.count == queue.twisted_held(), "the output budget's tally: all of it"
    monkeypatch.setattr(server.transport, "socket", real)
    assert queue.write(b"after")
    assert handed.count == queue.twisted_held()
    received = yield drain(client, len(head + big + tail) + 5)
    assert received == head + big + tail + b"after"
    server.transport.loseConnection()


def test_parts_on_other_transports_are_written_one_by_one_within_the_limit() -> None:
    transport = StringTransport()
    written: list[bytes] = []
    transport.write = written.append  # type: ignore[method-assign]
    queue = SendQueue(transport, limit=100)
    parts = [b"a" * 10, b"b" * 20]
    assert queue.write_parts(parts)
    assert written[0] is parts[0] and written[1] is parts[1]
    queue.pauseProducing()  # Twisted's buffer is full: the limit is counted
    assert not queue.write_parts([b"c", b"d" * 100])


@pytest_twisted.inlineCallbacks
def test_the_limit_counts_the_kernels_bytes(loopback: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    factory, _client = loopback
    server = yield factory.accepted
    transport = server.transport
    SendQueue(transport, limit=1 << 30, sndbuf=16384).write(b"x" * 300_000)
    twisted_share = SendQueue(transport, limit=1 << 30).twisted_held()
    kernel_share = kernel_queued(transport.getHandle())
    assert twisted_share > 0 and kernel_share > 1000
    line = b"y" * 100
    # Room for Twisted's share and the line, not for the kernel's share too.
    tight = SendQueue(transport, limit=twisted_share + len(line) + kernel_share // 2)
    assert not tight.write(line)
    roomy = SendQueue(transport, limit=twisted_share + len(line) + kernel_share + 10)
    assert roomy.write(line)
    # Where the kernel cannot be asked, only Twisted's share counts.
    monkeypatch.setattr(tcpinfo, "SIOCOUTQ", None)
    blind = SendQueue(transport, limit=twisted_share + 2 * len(line) + kernel_share // 2)
    assert blind.write(line)
    transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_a_write_counts_its_own_size_against_the_limit(loopback: Any) -> Any:
    """Once bytes are held, a write is taken only if what is held and the
    write itself fit in --sendq: the bound is not passed by one whole write
    (a user list, a history block)."""
    factory, _client = loopback
    server = yield factory.accepted
    transport = server.transport
    SendQueue(transport, limit=1 << 30, sndbuf=16384).write(b"x" * 300_000)
    assert SendQueue(transport, limit=1 << 30).twisted_held() > 0
    held = SendQueue(transport, limit=1 << 30).held()
    line = b"y" * 100
    assert not SendQueue(transport, limit=held + len(line) - 1).write(line)
    assert SendQueue(transport, limit=held + len(line)).write(line)
    transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_the_send_buffer_is_fixed_and_at_most_half_the_limit(loopback: Any) -> Any:
    factory, _client = loopback
    server = yield factory.accepted
    sock = server.transport.getHandle()
    SendQueue(server.transport, limit=1 << 20, sndbuf=32768)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 32768  # Linux doubles
    SendQueue(server.transport, limit=40000, sndbuf=32768)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 40000
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
    queue = SendQueue(server.transport, limit=buffer_size(server.transport) + 10)
    assert not queue._direct
    assert queue.write(b"hi\r\n")
    assert server.transport._tempDataLen == 4, "buffered by Twisted, not sent at once"
    queue.pauseProducing()
    assert not queue.write(b"x" * 11)
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_the_operator_can_turn_the_direct_path_off(loopback: Any) -> Any:
    factory, _client = loopback
    server = yield factory.accepted
    assert SendQueue(server.transport, limit=1 << 20)._direct
    queue = SendQueue(server.transport, limit=1 << 20, direct=False)
    assert not queue._direct
    queue.write(b"later\r\n")
    assert server.transport._tempDataLen == 7, "left to the reactor's next turn"
    server.transport.loseConnection()


@pytest_twisted.inlineCallbacks
def test_a_direct_queue_counts_what_the_peer_took_from_the_kernel(loopback: Any) -> Any:
    """The direct pass keeps no count of what it writes: on a direct queue
    the drain watch's "delivered" is the kernel's count of acknowledged
    bytes, which moves only when the peer takes them."""

    factory, client = loopback
    server = yield factory.accepted
    queue = SendQueue(server.transport, limit=1 << 20)
    before = queue.delivered(queue.held())
    assert write_direct([Member(queue)], b"x" * 1000) == []
    assert queue.written == 0, "the direct pass counts nothing itself"
    got = b""
    while len(got) < 1000:
        got += client.recv(2000)
    yield until_nothing_held(queue)
    assert queue.delivered(0) - before == 1000
    queue.written = 12345  # what write() counted plays no part here
    assert queue.delivered(0) - before == 1000
    server.transport.loseConnection()


def test_where_the_kernel_cannot_be_asked_delivered_is_written_minus_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queue = SendQueue(StringTransport(), limit=1 << 20)  # no socket: TLS, tests
    assert queue.write(b"x" * 10)
    assert queue.delivered(4) == 6
    monkeypatch.setattr(tcpinfo, "ACKED_AT", None)
    with socket.socket() as sock:
        assert kernel_acked(sock) == 0


@pytest_twisted.inlineCallbacks
def test_a_kernel_without_the_acked_count_keeps_the_count_and_no_direct_pass(
    loopback: Any, monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """Before Linux 4.1 (or a stack that does not report it) the queue
    counts what it writes, and the direct pass leaves it to deliver()."""

    factory, client = loopback
    server = yield factory.accepted
    monkeypatch.setattr(tcpinfo, "_acked_known", False)
    queue = SendQueue(server.transport, limit=1 << 20)
    assert queue._direct and queue.sock_now is None
    member = Member(queue)
    assert write_direct([member], b"x") == [member]
    assert queue.write(b"abc")
    assert queue.sock_now is None, "never put in the pass"
    assert read_exactly(client, 3) == b"abc"
    yield until_nothing_held(queue)
    assert queue.delivered(0) == 3  # written less what Twisted and the kernel hold
    server.transport.loseConnection()


def test_the_kernel_is_asked_once_whether_it_counts_acked_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tcpinfo, "_acked_known", None)
    with socket.socket() as sock:
        assert tcpinfo.acked_known(sock) is True  # Linux 4.1 and later
    monkeypatch.setattr(tcpinfo, "_acked_known", None)
    monkeypatch.setattr(tcpinfo, "ACKED_AT", 10_000)  # past what any kernel reports
    with socket.socket() as sock:
        assert tcpinfo.acked_known(sock) is False
    with socket.socket() as sock:
        assert tcpinfo.acked_known(sock) is False, "remembered"


def test_twisted_s_buffer_is_read_where_it_exists() -> None:
    fd = FileDescriptor(reactor=MemoryReactorClock())
    fd.connected = True
    fd.write(b"x" * 1000)
    assert tcpinfo.twisted_buffered(fd) == 1000
    fd.dataBuffer, fd.offset = b"y" * 500, 100  # being sent; the kernel took 100
    assert tcpinfo.twisted_buffered(fd) == 1400
    with pytest.raises(AttributeError):  # not a FileDescriptor: the caller falls back
        tcpinfo.twisted_buffered(StringTransport())


class Wrapping:
    """A layer over a TCP transport, as a TLS layer is (its C{transport})."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport


def test_twisted_s_buffer_is_let_go_once_the_connection_is_lost_not_before() -> None:
    """Under a TLS layer too; a transport still connected (a clean close
    flushing what it holds) and one without Twisted's buffer keep theirs."""
    from twisted.internet.error import ConnectionAborted
    from twisted.python.failure import Failure

    fd = FileDescriptor(reactor=MemoryReactorClock())
    fd.connected = True
    fd.write(b"x" * 1000)
    fd.dataBuffer, fd.offset = b"y" * 500, 100
    fd.loseConnection()  # closing: Twisted still sends what it holds
    tcpinfo.drop_twisted_buffers(Wrapping(fd))
    assert tcpinfo.twisted_buffered(fd) == 1400, "still to be sent"
    fd.connectionLost(Failure(ConnectionAborted()))
    tcpinfo.drop_twisted_buffers(Wrapping(fd))
    assert tcpinfo.twisted_buffered(fd) == 0
    assert (fd.dataBuffer, fd._tempDataBuffer) == (b"", [])
    other = StringTransport()
    other.write(b"kept")
    other.disconnected = True
    tcpinfo.drop_twisted_buffers(other)
    assert other.value() == b"kept"


def test_a_tls_layer_is_not_given_twisted_s_buffer_when_it_is_let_go() -> None:
    """A TLS layer forwards the attributes it lacks to its TCP connection:
    it seemed to hold Twisted's buffer, and had copies set on itself."""
    from twisted.internet.error import ConnectionAborted
    from twisted.protocols.tls import TLSMemoryBIOProtocol
    from twisted.python.failure import Failure

    fd = FileDescriptor(reactor=MemoryReactorClock())
    fd.connected = True
    fd.write(b"x" * 1000)
    tls = TLSMemoryBIOProtocol(None, protocol.Protocol())
    tls.transport = fd
    fd.connectionLost(Failure(ConnectionAborted()))
    tcpinfo.drop_twisted_buffers(tls)
    assert tcpinfo.twisted_buffered(fd) == 0
    assert not {"dataBuffer", "offset", "_tempDataBuffer", "_tempDataLen"} & set(vars(tls))


def test_a_closed_socket_does_not_decide_whether_the_kernel_reports_acks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked first of a socket already closed (EBADF), the answer is "no"
    for it, but not remembered: the next live socket is asked."""
    monkeypatch.setattr(tcpinfo, "_acked_known", None)
    closed = socket.socket()
    closed.close()
    assert tcpinfo.acked_known(closed) is False

    class Transport:  # what Twisted's TCP transport offers of its socket
        def getHandle(self) -> socket.socket:
            return closed

    assert tcpinfo.peer_acked(Transport()) is None
    with socket.socket() as sock:
        assert tcpinfo.acked_known(sock) is True  # Linux 4.1 and later


# -- the fan-out's direct pass ---------------------------------------------------------


def need_the_c_loop() -> None:
    """The C extension is built by every install with a C compiler and
    Python's headers: CI's (.ci/run installs them), so there its absence
    fails; elsewhere (`make test` without a compiler) the C loop's tests
    are skipped."""
    if sendqueue.send_many is sendqueue.send_each:
        why = "the C extension twisted_chat.server.output._sendmany was not built"
        if os.environ.get("CI"):
            pytest.fail(f"{why} (CI builds it: a C compiler and Python's headers)")
        pytest.skip(f"{why} (no C compiler or Python's headers at install)")


def test_without_the_extension_the_c_loops_tests_fail_in_ci_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sendqueue, "send_many", sendqueue.send_each)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="was not built"):
        need_the_c_loop()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="was not built"):
        need_the_c_loop()


@pytest.fixture(params=["c", "python"])
def send_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The direct pass's tests run on both of its loops, which must answer
    alike: the C extension (need_the_c_loop) and send_each, the map over
    socket.send it falls back to where that was not built.  The fixture is
    the loop DirectPass calls, for the tests that call it themselves."""
    if request.param == "c":
        need_the_c_loop()
    else:
        monkeypatch.setattr(sendqueue, "send_many", sendqueue.send_each)
    return sendqueue.send_many


def write_direct(members: Any, data: bytes) -> Any:
    """One batch through a new DirectPass: the pass with nothing kept."""
    return DirectPass()(members, data)


class Member:
    """What the direct pass reads of a connection: its queue (C{None}:
    closing), and C{deliver} for what it returns."""

    def __init__(self, queue: SendQueue | None) -> None:
        self.send_queue = queue


@pytest.fixture
def three() -> Iterator[tuple[list[socket.socket], defer.Deferred[list[Any]]]]:
    """Three loopback clients, and a Deferred firing with the server-side
    protocols, in connect order; all closed afterwards."""
    from twisted.internet import reactor

    accepted: list[Any] = []
    ready: defer.Deferred[list[Any]] = defer.Deferred()

    class One(protocol.Protocol):
        def connectionMade(self) -> None:
            accepted.append(self)
            if len(accepted) == 3:
                ready.callback(list(accepted))

    port = reactor.listenTCP(  # type: ignore[attr-defined]
        0, protocol.Factory.forProtocol(One), interface="127.0.0.1")
    clients = []
    for _ in range(3):
        c = socket.socket()
        c.connect(("127.0.0.1", port.getHost().port))
        c.settimeout(5)
        clients.append(c)
    yield clients, ready
    for server in accepted:
        server.transport.abortConnection()
    for c in clients:
        c.close()
    port.stopListening()


def read_exactly(client: socket.socket, n: int) -> bytes:
    got = b""
    for _ in range(10000):  # bounded
        if len(got) >= n:
            break
        got += client.recv(n - len(got))
    return got


@pytest.mark.usefixtures("send_loop")
@pytest_twisted.inlineCallbacks
def test_the_direct_pass_writes_each_queue_once_and_returns_the_others(three: Any) -> Any:
    clients, ready = three
    servers = yield ready
    tcp = [Member(SendQueue(s.transport, limit=1 << 20)) for s in servers]
    other = Member(SendQueue(StringTransport(), limit=1 << 20))  # TLS, a test transport
    closing = Member(None)
    remote = object()  # no queue at all: a user another cluster node writes to
    rest = write_direct([tcp[0], other, tcp[1], closing, remote, tcp[2]], b"line\r\n")
    assert rest == [other, closing, remote], "in order, for the caller's deliver()"
    assert all(s.transport._tempDataLen == 0 for s in servers), "sent, not buffered"
    assert [read_exactly(c, 6) for c in clients] == [b"line\r\n"] * 3
    assert other.send_queue is not None and other.send_queue.held() == 0
    assert write_direct([other, closing], b"x") == [other, closing]


@pytest.mark.usefixtures("send_loop")
@pytest_twisted.inlineCallbacks
def test_a_send_that_fails_in_the_pass_harms_nobody_else(three: Any) -> Any:
    """A send raising in the middle of the pass (here: a closed socket)
    does not stop it or repeat anyone's copy; that member's bytes go to
    its transport's own path, which finds the error or sends them."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    clients, ready = three
    servers = yield ready
    members = [Member(SendQueue(s.transport, limit=1 << 20)) for s in servers]
    middle = members[1].send_queue
    assert middle is not None
    dead = socket.socket()
    dead.close()
    middle.sock_now = dead  # its send raises OSError (EBADF)
    assert write_direct(members, b"once\r\n") == []
    assert middle.sock_now is None, "the next write waits for Twisted's buffer"
    assert servers[1].transport._tempDataLen == 6, "handed to Twisted"
    for _ in range(200):  # bounded: the reactor's next turns write it
        if middle.twisted_held() == 0:
            break
        yield deferLater(reactor, 0.005, lambda: None)
    assert [read_exactly(c, 6) for c in clients] == [b"once\r\n"] * 3
    for c in clients:
        c.setblocking(False)
        with pytest.raises(BlockingIOError):
            c.recv(100)  # nothing twice


@pytest.mark.usefixtures("send_loop")
@pytest_twisted.inlineCallbacks
def test_what_the_pass_could_not_send_stays_in_order(loopback: Any) -> Any:
    """A send that takes part of a batch leaves the rest to Twisted; until
    Twisted's buffer drains the queue is not in the pass, so later lines
    go behind the rest; once drained, a write puts it back in the pass."""

    factory, client = loopback
    server = yield factory.accepted
    queue = SendQueue(server.transport, limit=1 << 30, sndbuf=4096)
    member = Member(queue)
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    assert write_direct([member], big) == []
    assert queue.sock_now is None and queue.twisted_held() > 0
    assert write_direct([member], b"after") == [member], "left to deliver()"
    assert queue.write(b"after")  # what deliver() does: behind the rest
    received = yield drain(client, len(big) + 5)
    assert received == big + b"after"
    assert queue.twisted_held() == 0
    assert queue.write(b"!")
    assert queue.sock_now is server.transport.getHandle(), "back in the pass"
    server.transport.loseConnection()


@pytest.mark.usefixtures("send_loop")
@pytest_twisted.inlineCallbacks
def test_a_steady_lobby_is_sorted_once(three: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The same member list, and no queue changed: the pass sends on the
    sockets it found last time, without looking at the members again; a new
    list is looked at."""
    clients, ready = three
    servers = yield ready
    members = tuple(Member(SendQueue(s.transport, limit=1 << 20)) for s in servers)
    looked: list[int] = []
    partition = sendqueue.partition

    def counted(ms: Any) -> Any:
        looked.append(len(ms))
        return partition(ms)

    monkeypatch.setattr(sendqueue, "partition", counted)
    direct = DirectPass()
    for n in range(3):
        assert direct(members, b"line %d\r\n" % n) == []
    assert looked == [3]
    assert direct(members[:2], b"two\r\n") == []
    assert looked == [3, 2]
    expected = [b"line 0\r\nline 1\r\nline 2\r\ntwo\r\n"] * 2 + [b"line 0\r\nline 1\r\nline 2\r\n"]
    assert [read_exactly(c, len(e)) for c, e in zip(clients, expected, strict=True)] == expected


@pytest.mark.usefixtures("send_loop")
@pytest_twisted.inlineCallbacks
def test_the_pass_leaves_out_a_queue_behind_twisteds_buffer_until_it_drains(
        loopback: Any) -> Any:
    """Over the same member list: a send cut short takes the queue out of
    the next pass (its lines go behind the rest, through deliver()), and a
    write that finds Twisted's buffer drained puts it back."""
    factory, client = loopback
    server = yield factory.accepted
    queue = SendQueue(server.transport, limit=1 << 30, sndbuf=4096)
    members = (Member(queue),)
    direct = DirectPass()
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket buffers hold
    assert direct(members, big) == []
    assert queue.twisted_held() > 0
    assert direct(members, b"after") == [members[0]], "left to deliver()"
    assert queue.write(b"after")  # what deliver() does: behind the rest
    received = yield drain(client, len(big) + 5)
    assert received == big + b"after"
    assert queue.write(b"!")  # Twisted's buffer is empty: back on the direct path
    assert direct(members, b"?") == [], "back in the pass"
    assert read_exactly(client, 2) == b"!?"
    server.transport.loseConnection()


@pytest.mark.usefixtures("send_loop")
@pytest_twisted.inlineCallbacks
def test_the_pass_leaves_out_a_closing_connection(three: Any) -> Any:
    clients, ready = three
    servers = yield ready
    queues = [SendQueue(s.transport, limit=1 << 20) for s in servers]
    members = tuple(Member(q) for q in queues)
    direct = DirectPass()
    assert direct(members, b"a\r\n") == []
    queues[1].retire()
    assert direct(members, b"b\r\n") == [members[1]]
    assert [read_exactly(c, 6) for c in clients[::2]] == [b"a\r\nb\r\n"] * 2
    assert read_exactly(clients[1], 3) == b"a\r\n"
    clients[1].setblocking(False)
    with pytest.raises(BlockingIOError):
        clients[1].recv(100)  # nothing after it began to close


# -- the C send loop itself (twisted_chat/server/output/_sendmany.c) --------------------------


@pytest.fixture
def c_send_many() -> Any:
    need_the_c_loop()
    return sendqueue.send_many


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    made = [socket.socketpair() for _ in range(3)]
    for a, _b in made:
        a.setblocking(False)
    yield made
    for a, b in made:
        a.close()
        b.close()


def fill(sock: socket.socket) -> None:
    """Fill C{sock}'s (small) send buffer: the next send takes nothing."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    while True:  # bounded by the socket's buffer
        try:
            sock.send(b"x" * 1024)
        except BlockingIOError:
            break


def test_each_loop_answers_none_when_every_socket_took_everything(
        send_loop: Any, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    socks = [a for a, _ in pairs]
    assert send_loop(socks, b"hello\r\n") is None
    assert send_loop(socks, memoryview(b"!")) is None, "any buffer"
    assert send_loop([], b"x") is None
    assert [b.recv(100) for _, b in pairs] == [b"hello\r\n!"] * 3


def test_the_c_loop_takes_any_iterable(
        c_send_many: Any, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    """Not only a sequence, as send_each needs (the direct pass gives both
    loops a list)."""
    assert c_send_many((a for a, _ in pairs), memoryview(b"!")) is None, "any iterable, any buffer"
    assert [b.recv(100) for _, b in pairs] == [b"!"] * 3


class Took:
    """A queue that records what took_part asks it to finish."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, int]] = []

    def took(self, data: bytes, sent: int) -> None:
        self.got.append((data, sent))


def test_each_loop_counts_a_short_send_and_a_failed_one(
        send_loop: Any, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    """A full socket takes part (or none: 0), a closed one (fileno -1)
    takes none; the others still get everything, and the answer says who
    took what, in order: the members whose socket did not take it all
    finish on their queue's path."""
    full, closed, fine = (a for a, _ in pairs)
    fill(full)
    closed.close()
    data = b"y" * 100
    taken = send_loop([full, closed, fine], data)
    assert taken == [0, 0, 100]
    assert pairs[2][1].recv(200) == data
    queues = [Took(), Took(), Took()]
    sendqueue.took_part([Member(cast(SendQueue, q)) for q in queues], data, taken)
    assert [q.got for q in queues] == [[(data, 0)], [(data, 0)], []]


# Run in a child: before the fix, the C loop read the list's items after a
# fileno() had freed them, and crashed the interpreter.
_CLEARING = """
import socket
from twisted_chat.server.output._sendmany import send_many

class Clearing:  # a socket whose fileno() empties the list it is in
    def __init__(self, into, sock):
        self.into, self.sock = into, sock
    def fileno(self):
        self.into.clear()
        return self.sock.fileno()

pairs = [socket.socketpair() for _ in range(3)]
answers, got = set(), [0, 0, 0]
for _ in range(100):
    socks = []
    socks.extend(Clearing(socks, pairs[i % 3][0]) for i in range(30))
    answers.add(send_many(socks, b"x"))
    got = [n + len(b.recv(100)) for n, (_, b) in zip(got, pairs)]
print(answers, got)
"""


def test_the_c_loop_survives_a_fileno_that_changes_the_list(c_send_many: Any) -> None:
    """A fileno() may run any Python code: here it empties the list being
    sent to, which frees the other members.  The loop sends to every member
    the list had when the call began (its own tuple of them)."""
    done = subprocess.run([sys.executable, "-c", _CLEARING], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.splitlines() == ["{None} [1000, 1000, 1000]"]


def test_the_c_loop_refuses_what_is_not_sockets_and_bytes(c_send_many: Any) -> None:
    with pytest.raises(TypeError):
        c_send_many(5, b"x")
    with pytest.raises(TypeError):
        c_send_many([], "text")
    with pytest.raises(TypeError):
        c_send_many([])
    with pytest.raises(AttributeError):
        c_send_many([object()], b"x")


# -- output that does not drain ------------------------------------------------------


def test_nothing_held_is_never_stalled() -> None:
    assert stalled(held=0, delivered=5, last=5, since=1.0, now=100.0, timeout=10) == (None, False)


def test_a_stall_starts_when_bytes_are_held_and_nothing_moved() -> None:
    assert stalled(held=10, delivered=5, last=5, since=None, now=3.0, timeout=10) == (3.0, False)


def test_any_byte_taken_restarts_the_stall() -> None:
    assert stalled(held=10, delivered=6, last=5, since=1.0, now=50.0, timeout=10) == (50.0, False)


def test_held_without_progress_for_the_timeout_is_over() -> None:
    assert stalled(held=10, delivered=5, last=5, since=1.0, now=10.9, timeout=10) == (1.0, False)
    assert stalled(held=10, delivered=5, last=5, since=1.0, now=11.0, timeout=10) == (1.0, True)


class Stuck:
    """A stand-in queue: C{held} bytes held of C{written} handed to it."""

    def __init__(self, held: int) -> None:
        self.written = 1000
        self._held = held
        self.last_delivered = 0
        self.stalled_since: float | None = None

    def held(self) -> int:
        return self._held

    def delivered(self, held: int) -> int:
        return self.written - held


class Conn:
    """A stand-in connection: its queue, and the drops it was told of (by
    the drain watch or the output budget)."""

    def __init__(self, queue: Stuck, dropped: list[Stuck]) -> None:
        self.send_queue: Stuck | None = queue
        self._dropped = dropped

    def output_stalled(self) -> None:
        assert self.send_queue is not None
        self._dropped.append(self.send_queue)
        self.send_queue = None  # closing, as a dropped connection is

    output_over_budget = output_stalled


def watched(*queues: Stuck, timeout: float = 8.0,
            ) -> tuple[Clock, DrainWatch, list[Stuck], list[Conn]]:
    clock = Clock()
    dropped: list[Stuck] = []
    conns = [Conn(queue, dropped) for queue in queues]
    watch = DrainWatch(clock, timeout, lambda: conns)  # type: ignore[arg-type,return-value]
    watch.start()
    return clock, watch, dropped, conns


def test_the_watch_drops_a_stalled_queue_within_a_quarter_past_the_timeout() -> None:
    stuck, fine, empty = Stuck(held=500), Stuck(held=500), Stuck(held=0)
    clock, _watch, dropped, _ = watched(stuck, fine, empty)
    for _ in range(4):
        clock.advance(2.0)
        fine.written += 10  # its peer takes some, and more comes
    assert dropped == []
    clock.advance(2.0)  # stalled since the first look, 8 s ago
    assert dropped == [stuck]
    for _ in range(20):
        clock.advance(2.0)
        fine.written += 10
    assert dropped == [stuck], "progress and emptiness are never dropped"


def test_the_watch_keeps_no_timer_without_connections_and_none_when_off() -> None:
    clock, watch, _, conns = watched(Stuck(held=0))
    watch.start()  # a second connection
    assert len(clock.getDelayedCalls()) == 1, "one timer for every queue"
    conns.clear()
    clock.advance(2.0)
    assert clock.getDelayedCalls() == [], "none left after a look finds no connection"
    watch.start()
    watch.stop()  # the factory's last connection went
    assert clock.getDelayedCalls() == []
    clock, _, _, _ = watched(Stuck(held=5), timeout=0.0)
    assert clock.getDelayedCalls() == []


def test_the_watch_reads_the_connections_and_keeps_nothing_per_connection() -> None:
    """Memory per idle connection (docs/fanout.md): no entry, no callback."""
    clock, watch, dropped, conns = watched(timeout=8.0)
    late = Stuck(held=500)
    conns.append(Conn(late, dropped))  # never registered with the watch
    assert not hasattr(watch, "__dict__")
    for _ in range(5):
        clock.advance(2.0)
    assert dropped == [late]


def test_a_queue_holds_its_slots_and_no_dict() -> None:
    """Memory per idle connection (docs/fanout.md): one per connection."""
    queue = SendQueue(StringTransport(), limit=1 << 20)
    assert not hasattr(queue, "__dict__")


# -- output held for all connections: who goes first ---------------------------------


class Holding:
    """A stand-in queue for the output budget: C{held} bytes in Twisted's
    buffers; C{taken}, what its peer took so far (L{SendQueue.progress})."""

    def __init__(self, held: int, taken: int | None = 0) -> None:
        self.held = held
        self.taken = taken

    def twisted_held(self) -> int:
        return self.held

    def progress(self) -> int | None:
        return self.taken


def budgeted(budget: int, *queues: Holding) -> tuple[Clock, list[Any], list[Conn]]:
    clock = Clock()
    dropped: list[Any] = []
    conns = [Conn(queue, dropped) for queue in queues]  # type: ignore[arg-type]
    OutputBudget(clock, budget, lambda: conns).start()  # type: ignore[arg-type,return-value]
    return clock, dropped, conns


def test_over_the_budget_the_stalled_go_before_the_draining() -> None:
    """rev10-fix2 F4: a peer that took nothing since the last look goes
    before bigger ones still draining (slow readers, not the non-readers a
    burst was aimed past); among each, the biggest first."""
    stalled_small, stalled_big = Holding(20, taken=7), Holding(30, taken=7)
    slow, slower = Holding(30), Holding(30)
    clock, dropped, _ = budgeted(130, stalled_small, stalled_big, slow, slower)
    clock.advance(1.0)  # 110: within it; each one's progress noted
    assert dropped == []
    slow.held, slow.taken = 60, 5_000  # a burst came; both read, slowly
    slower.held, slower.taken = 50, 1_000
    clock.advance(1.0)  # 160: 30 too many
    assert dropped == [stalled_big]
    slow.held, slow.taken = 90, 9_000
    slower.taken = 2_000
    clock.advance(1.0)  # 160 again: the other stalled one is not enough
    assert dropped == [stalled_big, stalled_small, slow]


def test_a_queue_not_seen_holding_before_is_not_taken_for_stalled() -> None:
    """Its progress is unknown: it ranks with the draining, by size."""
    old, new = Holding(10, taken=3), Holding(50)
    clock, dropped, conns = budgeted(55, old)
    clock.advance(1.0)
    conns.append(Conn(new, dropped))  # type: ignore[arg-type]
    clock.advance(1.0)  # 60: old is stalled, new unknown
    assert dropped == [old]
    new.held = 70
    clock.advance(1.0)  # 70: new took nothing since the last look
    assert dropped == [old, new]


def test_a_queue_whose_progress_cannot_be_read_is_never_taken_for_stalled() -> None:
    """rev10-s10 F2: a count that cannot move (None: no acknowledged count,
    no readable buffer) must not decide who is cut: it ranks with the
    draining, by size, however long it holds."""
    unknown, stalled_one = Holding(50, taken=None), Holding(10, taken=3)
    clock, dropped, _ = budgeted(55, unknown, stalled_one)
    clock.advance(1.0)  # 60: neither was seen before
    assert dropped == [unknown]
    unknown2, big = Holding(50, taken=None), Holding(60, taken=4)
    clock, dropped, _ = budgeted(105, unknown2, big)
    for _ in range(3):
        clock.advance(1.0)  # 110, each time: big is stalled, unknown2 never
    assert dropped == [big]
    assert SendQueue(StringTransport(), limit=1 << 20).progress() is None


@pytest.fixture
def unix_loopback() -> Iterator[Any]:
    """As L{loopback}, over a UNIX socket (the server's C{--port unix:}):
    no C{TCP_INFO} there, and the queue is not direct."""
    import shutil
    import tempfile

    from twisted.internet import reactor

    where = tempfile.mkdtemp()  # short: a socket's path is at most 107 bytes
    path = os.path.join(where, "s")
    factory = protocol.Factory.forProtocol(Accepted)
    factory.accepted = defer.Deferred()  # type: ignore[attr-defined]
    port = reactor.listenUNIX(path, factory)  # type: ignore[attr-defined]
    clients = []

    def connect() -> socket.socket:
        client = socket.socket(socket.AF_UNIX)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(path)
        clients.append(client)
        return client

    yield factory, connect
    for client in clients:
        client.close()
    # The port removes its socket file once stopped: the folder after it.
    port.stopListening().addBoth(lambda _: shutil.rmtree(where, ignore_errors=True))


def paused_queue(server: Any) -> SendQueue:
    """A UNIX connection's queue as the server makes it, 640 kB written."""
    queue = SendQueue(server.transport, limit=1 << 24, direct=True, sndbuf=65536)
    assert not queue._direct  # the direct path is plain TCP's only
    assert tcpinfo.peer_acked(server.transport) is None
    queue.start()
    for _ in range(40):
        assert queue.write(b"x" * 16384)
    return queue


@defer.inlineCallbacks
def settle(*transports: Any) -> Any:
    """Let Twisted fill the kernel's buffers from what it holds: turn the
    reactor (each turn polls the sockets) until what Twisted holds for the
    C{transports} has not changed for three turns, at most 1000 turns."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    def held() -> list[int]:
        return [tcpinfo.twisted_buffered(t) for t in transports]

    last, same = held(), 0
    for _ in range(1000):
        yield deferLater(reactor, 0, lambda: None)
        now = held()
        same = same + 1 if now == last else 0
        if same == 3:
            return
        last = now
    raise AssertionError(f"Twisted's buffer never settled (last {last} bytes)")


@pytest_twisted.inlineCallbacks
def test_progress_moves_while_a_unix_socket_peer_reads(unix_loopback: Any) -> Any:
    """rev10-s10 F2: on a UNIX socket (no acknowledged count) progress was
    Twisted's paused estimate, which did not move while the peer read 200
    kB: every UNIX-socket reader holding output was "stalled" for the
    output budget.  Written minus Twisted's buffer minus the kernel's queue
    moves as the peer reads, and only then."""
    factory, connect = unix_loopback
    client = connect()
    server = yield factory.accepted
    queue = paused_queue(server)
    yield settle(server.transport)
    before = queue.progress()
    yield settle(server.transport)
    assert queue.progress() == before  # nothing read: no move
    got = yield drain(client, 200_000)
    assert len(got) >= 200_000
    yield settle(server.transport)
    after = queue.progress()
    assert before is not None and after is not None
    assert after - before >= 200_000
    assert queue.twisted_held() > 0, "still paused: the estimate saw nothing leave"
    queue.stop()
    server.transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_over_the_budget_a_unix_socket_reader_stays_and_a_non_reader_goes(
        unix_loopback: Any) -> Any:
    """rev10-s10 F2, the output budget on two real UNIX-socket queues: the
    one whose peer reads holds more, but the one whose peer reads nothing
    goes first (before, both were "stalled", and the reader, bigger, went)."""
    factory, connect = unix_loopback
    reader_client = connect()
    reader_server = yield factory.accepted
    factory.accepted = defer.Deferred()
    connect()  # never read
    idle_server = yield factory.accepted
    reader = paused_queue(reader_server)
    for _ in range(20):  # more than the idle one holds
        assert reader.write(b"y" * 16384)
    idle = paused_queue(idle_server)
    yield settle(reader_server.transport, idle_server.transport)
    assert reader.twisted_held() > idle.twisted_held() > 0
    clock = Clock()
    dropped: list[Any] = []
    conns = [Conn(reader, dropped), Conn(idle, dropped)]  # type: ignore[arg-type]
    budget = reader.twisted_held() + idle.twisted_held()
    OutputBudget(clock, budget, lambda: conns).start()  # type: ignore[arg-type,return-value]
    clock.advance(1.0)  # within it: each one's progress noted
    assert dropped == []
    got = yield drain(reader_client, 200_000)
    assert len(got) >= 200_000
    yield settle(reader_server.transport, idle_server.transport)
    assert reader.write(b"z" * 1000) and idle.write(b"z" * 1000)  # now over it
    clock.advance(1.0)
    assert dropped == [idle]
    for queue, server in ((reader, reader_server), (idle, idle_server)):
        queue.stop()
        server.transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_the_drain_watch_drops_a_unix_socket_peer_that_reads_nothing_while_lines_come(
        unix_loopback: Any) -> Any:
    """
    A UNIX-socket peer (no acknowledged count) that reads nothing, its
    kernel queue full, Twisted holding less than its buffer size (so the
    queue is not paused), and a line now and then: each went into Twisted's
    buffer and counted as taken (written minus the kernel's queue), so the
    watch never saw it stalled.  What the peer took is written less what
    Twisted and the kernel hold: it does not move, and the peer is dropped.
    """
    factory, connect = unix_loopback
    connect()  # never read
    server = yield factory.accepted
    queue = SendQueue(server.transport, limit=1 << 24, direct=True, sndbuf=65536)
    queue.start()
    for _ in range(1000):  # bounded: until the kernel's share is full
        if tcpinfo.twisted_buffered(server.transport) > 0:
            break
        assert queue.write(b"x" * 2000)
        yield settle(server.transport)
    assert tcpinfo.twisted_buffered(server.transport) > 0, "the kernel's share never filled"
    assert queue.twisted_held() == 0, "not paused: Twisted's share is not counted"
    clock, _watch, dropped, _ = watched(queue, timeout=8.0)  # type: ignore[arg-type]
    for _ in range(8):
        assert queue.write(b"t" * 500)  # a line into Twisted's buffer
        yield settle(server.transport)
        clock.advance(2.0)
    assert queue.twisted_held() == 0, "still not paused"
    assert dropped == [queue]
    queue.stop()
    server.transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_the_drain_watch_keeps_a_unix_socket_peer_that_reads_while_twisted_is_paused(
        unix_loopback: Any) -> Any:
    """The same peer reading 16 kB between every two looks, with Twisted's
    buffer paused and far from empty the whole time: it took bytes at each
    look, and stays."""
    factory, connect = unix_loopback
    client = connect()
    server = yield factory.accepted
    queue = paused_queue(server)
    yield settle(server.transport)
    clock, _watch, dropped, _ = watched(queue, timeout=8.0)  # type: ignore[arg-type]
    client.settimeout(5)
    for _ in range(12):  # three times the timeout
        assert len(read_exactly(client, 16384)) == 16384
        yield settle(server.transport)
        clock.advance(2.0)
        assert queue.twisted_held() > 0, "paused the whole time"
    assert dropped == []
    queue.stop()
    server.transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_progress_is_what_the_peer_acknowledged_also_while_twisted_is_paused(
        loopback: Any) -> Any:
    """On the paused estimate (TLS, --no-direct-send) written minus held
    does not move while the peer drains Twisted's buffer; the kernel's count
    of acknowledged bytes does: the output budget tells a slow reader from
    a stalled one by it."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    factory, client = loopback
    server = yield factory.accepted
    queue = SendQueue(server.transport, limit=1 << 24, direct=False, sndbuf=65536)
    queue.start()
    for _ in range(40):
        assert queue.write(b"x" * 16384)
    assert queue.twisted_held() > 0, "paused: Twisted holds more than its buffer size"
    yield settle(server.transport)  # Twisted fills the kernel's buffer
    before = queue.progress()
    got = yield drain(client, 200_000)
    assert len(got) >= 200_000
    yield settle(server.transport)  # and fills it again, from what it holds
    for _ in range(1000):  # bounded: the ACKs may take a moment
        if queue.progress() - before >= 200_000:
            break
        yield deferLater(reactor, 0.005, lambda: None)
    assert queue.progress() - before >= 200_000
    assert queue.twisted_held() > 0, "still paused: the estimate saw nothing leave"
    queue.stop()
    server.transport.abortConnection()


def test_the_c_loop_reads_a_plain_sockets_descriptor_itself(
        c_send_many: Any, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    """On this CPython the module's start found a socket object's layout as
    it expects, so the loop reads each plain socket's descriptor from the
    object instead of calling fileno() per member per line (about a tenth of
    the server's instructions per lobby line with 100 members); a detached
    socket (descriptor -1, as closed) takes none."""
    from twisted_chat.server.output._sendmany import layout_checked

    assert layout_checked() is True
    live, gone, _ = (a for a, _ in pairs)
    os.close(gone.detach())
    assert c_send_many([live, gone], b"z") == [1, 0]
    assert pairs[0][1].recv(10) == b"z"


def test_the_c_loop_asks_a_socket_subclass_for_its_descriptor(
        c_send_many: Any, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    """Only the exact socket types are read directly: a subclass's own
    fileno() decides where its bytes go."""
    class Elsewhere(socket.socket):
        def fileno(self) -> int:
            return pairs[1][0].fileno()

    with Elsewhere() as other:
        assert c_send_many([other], b"w") is None
    assert pairs[1][1].recv(10) == b"w"
