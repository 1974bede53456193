"""
--sendq on a WebSocket, on a real loopback TCP connection (the gateway in
this process, on the real reactor): the connection's one send queue counts
what is held for it in frame bytes, read from Twisted's buffer and the
kernel's, and cuts a peer that stops reading at the first write whose frames
would take it past --sendq.  The deterministic tests of the gateway are in
tests/web/test_gateway.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import deferLater

from tests.test_protocol import read_until
from tests.web import wsframes as ws
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.factory import ChatFactory
from twisted_chat.tcpinfo import kernel_queued, twisted_buffered
from twisted_chat.web.config import WebConfig
from twisted_chat.web.gateway import ChatWebSocket, ChatWebSocketFactory, encode_frames

SENDQ = 200_000
SENDQ_TOTAL = 10 * SENDQ


@pytest.fixture
def browser() -> Iterator[Any]:
    """A gateway on loopback; calling it opens alice's WebSocket (receive
    buffer of 4 KB) and gives her server side and her client socket."""
    yield from _gateway(sendq_total=0)


@pytest.fixture
def budgeted_browser() -> Iterator[Any]:
    """L{browser}, with a C{--sendq-total} budget on."""
    yield from _gateway(sendq_total=SENDQ_TOTAL)


def _gateway(sendq_total: int) -> Iterator[Any]:
    from twisted.internet import reactor

    chat = ChatFactory(ServerConfig(idle_timeout=0.0, nick_timeout=0.0, flood_rate=0.0,
                                    sendq=SENDQ, sndbuf=4096, sendq_timeout=0.0,
                                    sendq_total=sendq_total), reactor)
    gateway = ChatWebSocketFactory(chat, WebConfig(), reactor=reactor)
    gateway.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    built: list[ChatWebSocket] = []
    build = gateway.buildProtocol

    def recorded(addr: Any) -> Any:
        built.append(build(addr))
        return built[-1]

    gateway.buildProtocol = recorded  # type: ignore[method-assign]
    port = reactor.listenTCP(0, gateway, interface="127.0.0.1")  # type: ignore[attr-defined]
    clients: list[socket.socket] = []

    @defer.inlineCallbacks
    def open_one() -> Any:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port.getHost().port))
        client.setblocking(False)
        clients.append(client)
        request, _accept = ws.handshake()
        client.sendall(request)
        got = yield read_until(client, b"HELLO ")
        assert got.startswith(b"HTTP/1.1 101"), got[:200]
        client.sendall(ws.text("NICK alice"))
        got = yield read_until(client, b"USERS ")
        assert b"USERS " in got
        return built[-1], client

    yield open_one
    for client in clients:
        client.close()
    port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_browser_that_stops_reading_is_cut_at_sendq_counting_frame_bytes(
        browser: Any) -> Any:
    """
    alice reads nothing more; lines of 1,000 bytes are written to her (each
    a frame of two bytes more: a 4-byte header for the line's CRLF).  Every
    line taken leaves what is held for her socket, Twisted's buffer and the
    kernel's queue, at most --sendq; the first one refused is the first
    whose frame would take it past --sendq.

    Before, the queue that enforced --sendq sat on the WebSocketTransport,
    where Twisted's buffer cannot be read: it counted line bytes, not frame
    bytes, and estimated Twisted's share as its buffer size once paused
    (Twisted pauses a producer past its buffer size, not at it), so the
    frames held passed --sendq before she was cut.
    """
    from twisted.internet import reactor

    sock, _client = yield browser()
    chat, tcp = sock.chat, sock.transport
    assert chat is not None
    handle = tcp.getHandle()
    line = b"MSG 0 carol * " + b"x" * 984 + b"\r\n"
    frame = len(encode_frames(line))
    assert frame == len(line) + 2
    held_before = 0
    for _ in range(2 * SENDQ // len(line)):  # bounded: the cut comes before
        held_before = twisted_buffered(tcp) + kernel_queued(handle)
        chat.write(line)
        if chat.closing:
            break
        held = twisted_buffered(tcp) + kernel_queued(handle)
        assert held <= SENDQ, f"{held} bytes held for her, --sendq {SENDQ}"
    assert chat.closing, "cut at --sendq"
    assert held_before + frame > SENDQ, "cut at the first write that did not fit"
    assert held_before > SENDQ - 2 * frame, "and not sooner"
    for _ in range(100):  # bounded: the abort's connectionLost comes on a later turn
        if sock.chat is None:
            break
        yield deferLater(reactor, 0.01, lambda: None)
    assert sock.chat is None


@pytest_twisted.inlineCallbacks
def test_the_fan_outs_direct_pass_leaves_a_browser_to_its_queue(browser: Any) -> Any:
    """Her queue sits on a plain TCP transport, where the fan-out's direct
    pass sends a batch as it is: it must not take her (her lines are
    frames), so the lobby line reaches her as a text frame."""
    sock, client = yield browser()
    chat = sock.chat
    assert chat is not None and chat.send_queue is sock.chat_queue
    assert chat.send_queue._direct and chat.send_queue.sock_now is None
    line = b"MSG 0 carol * by the fan-out\r\n"
    chat.ctx.fanout.add(line)
    chat.ctx.fanout.flush()
    got = yield read_until(client, b"by the fan-out")
    frames, rest = ws.parse(got)
    assert frames == [(ws.TEXT, line[:-2])] and rest == b""


@pytest_twisted.inlineCallbacks
def test_a_browsers_frames_handed_to_twisted_count_for_sendq_total(
        budgeted_browser: Any) -> Any:
    """alice reads nothing more: once her socket takes no more, her frames
    go to Twisted's buffer, and the --sendq-total budget's tally counts
    them, as a TCP connection's queue does; uncounted, a turn's writes to
    browsers could pass the budget unseen until the timed look."""
    sock, _client = yield budgeted_browser()
    chat, tcp = sock.chat, sock.transport
    assert chat is not None
    handed = sock.factory.chat.output_budget.handed
    counted = handed.count
    line = b"MSG 0 carol * " + b"x" * 984 + b"\r\n"
    for _ in range(SENDQ // len(line) // 2):  # within --sendq: nobody is cut
        chat.write(line)
    assert not chat.closing
    buffered = twisted_buffered(tcp)
    assert buffered > 0, "her socket took no more: Twisted buffers the rest"
    assert handed.count - counted >= buffered


@pytest_twisted.inlineCallbacks
def test_a_browser_cut_for_its_output_lets_go_of_its_buffer_without_a_collection(
        browser: Any) -> Any:
    """What Twisted buffers for a browser cut at --sendq (up to --sendq of
    frames) goes at its TCP connection's connectionLost: before, it stayed
    with the connection (its WebSocket, its chat connection and its user
    refer to each other) until a full cyclic collection, which an idle
    server may never run."""
    import gc

    from twisted.internet import reactor

    sock, _client = yield browser()
    chat, tcp = sock.chat, sock.transport
    assert chat is not None
    enabled = gc.isenabled()
    gc.disable()
    try:
        line = b"MSG 0 carol * " + b"x" * 984 + b"\r\n"
        for _ in range(2 * SENDQ // len(line)):  # bounded: the cut comes before
            chat.write(line)
            if chat.closing:
                break
        assert chat.closing, "cut at --sendq"
        assert twisted_buffered(tcp) > 64 * 1024, "held in Twisted's buffer at the cut"
        for _ in range(100):  # bounded: the abort's connectionLost comes on a later turn
            if sock.chat is None:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        assert sock.chat is None and tcp.disconnected
        assert twisted_buffered(tcp) == 0 and tcp._tempDataBuffer == []
    finally:
        if enabled:
            gc.enable()
