"""
The idle timer over a WebSocket: only a text message (a line) keeps a
connection from idle or answers the server's PING, as only a line does on
the chat port (docs/protocol.md, "Limits": idle peers); a ping, a pong, a
continuation frame and a TLS record in which no frame begins spend a flood
token and are no line.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.harness import Harness, run_for
from tests.web import wsframes as ws
from tests.web.test_gateway import TCPTransport, WsConn, make_gateway
from tests.web.test_gateway_records import TLSTransport, no_channel_id

__all__ = ["no_channel_id"]  # autouse: autobahn asks a TLS transport for tls-unique

# A message the TLS peer sends a byte per record: its first record holds
# its header (a frame begins there), each later one a byte of it.
LONG = ws.frame(b"MSG " + b"x" * 100)
HEAD = 2 + 4 + 1  # header, mask key, a first byte


def idle_harness() -> Harness:
    return Harness(flood_rate=1.0, flood_burst=5, idle_timeout=120.0, ping_timeout=60.0)


def no_lines(kind: str) -> tuple[type[TCPTransport], bytes, Callable[[int], bytes]]:
    """The transport, what the peer sends first, and its i-th later
    read, for each kind of read that carries no line."""
    if kind == "ping":
        return TCPTransport, b"", lambda i: ws.frame(b"are you there", opcode=ws.PING)
    if kind == "pong":
        return TCPTransport, b"", lambda i: ws.frame(b"", opcode=ws.PONG)
    if kind == "fragment":
        return (TCPTransport, ws.frame(b"M", fin=False),
                lambda i: ws.frame(b"x", opcode=0, fin=False))
    return TLSTransport, LONG[:HEAD], lambda i: LONG[HEAD + i:HEAD + i + 1]


@pytest.mark.parametrize("kind", ["ping", "pong", "fragment", "tls-record"])
def test_reads_without_a_line_neither_keep_a_websocket_from_idle_nor_answer_a_ping(
        kind: str) -> None:
    """One every 50 s: the idle timer runs from the last line, so the
    server pings at 120 s and closes 60 s later (before, each reset it: a
    peer pinging, or sending a byte of a message, once a minute held its
    connection for good).  A ping still gets its pong."""
    h = idle_harness()
    transport, first, later = no_lines(kind)
    alice = WsConn(h, make_gateway(h), transport=transport)
    alice.register("alice")
    alice.send_frame(first)
    for i in range(3):
        run_for(h.clock, 50)
        alice.send_frame(later(i))
    frames = alice.frames()
    texts = [payload.decode() for op, payload in frames if op == ws.TEXT]
    assert any(text.startswith("PING idle-") for text in texts), texts
    if kind == "ping":
        assert [op for op, _ in frames].count(ws.PONG) == 3
    run_for(h.clock, 50)
    alice.send_frame(later(3))
    run_for(h.clock, 11)
    assert alice.take()[-1].startswith("BYE timeout"), kind
    assert alice.closes == [1000]


def test_a_message_keeps_a_websocket_from_idle_and_answers_a_ping() -> None:
    """A text message is a line, an empty one too (ignored, as on TCP)."""
    h = idle_harness()
    alice = WsConn(h, make_gateway(h))
    alice.register("alice")
    for _ in range(3):
        run_for(h.clock, 50)
        alice.send("")
    assert alice.take() == []
    run_for(h.clock, 121)
    assert alice.take()[-1].startswith("PING idle-")
    alice.send("")
    run_for(h.clock, 61)
    assert alice.take() == [] and alice.closes == []
