"""
The WebSocket-to-chat/1 adapter without a network: frames in (masked, as a
browser sends them), lines to the hub, lines out as frames; the chat
server's factory on a task.Clock (tests/harness.py), the WebSocket's TCP
side a StringTransport.
"""

from __future__ import annotations

import itertools
import tracemalloc
from typing import Any

import pytest
import txaio
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from tests.harness import Conn, Harness
from tests.test_login import PW, HeldWork, add
from tests.test_login import harness as login_harness
from tests.web import wsframes as ws
from twisted_chat.server import logs
from twisted_chat.web.config import WebConfig, parse_proxies
from twisted_chat.web.gateway import (
    FRAMES_AFTER_CLOSE,
    HTTP_REASON_LIMIT,
    PONG_RETRY,
    ChatWebSocket,
    ChatWebSocketFactory,
    FrameCache,
    encode_frames,
)

_ports = itertools.count(50000)


def make_gateway(h: Harness, **web: Any) -> ChatWebSocketFactory:
    factory = ChatWebSocketFactory(h.factory, WebConfig(**web),
                                   headers={"X-Content-Type-Options": "nosniff"},
                                   reactor=h.clock)
    # No opening-handshake timer: autobahn's timers run on txaio's loop, not
    # on the Clock (unless a test puts them there: autobahn_on_clock).  The
    # closing-handshake timer is the factory's own setting (off).
    factory.setProtocolOptions(openHandshakeTimeout=0)
    return factory


class TCPTransport(StringTransport):
    """As Twisted's TCP and TLS transports: unregistering no producer is fine."""

    def unregisterProducer(self) -> None:
        self.producer = None
        self.streaming = None


class HoldingTransport(TCPTransport):
    """As Twisted's TCP transport, with a buffer the peer has not taken
    C{_tempDataLen} bytes of (what L{unsent} reads)."""

    dataBuffer = b""
    offset = 0
    _tempDataLen = 0


class WsConn:
    """A browser's WebSocket to the gateway, on a StringTransport."""

    def __init__(self, h: Harness, gateway: ChatWebSocketFactory,
                 peer: str | UNIXAddress = "127.0.0.1",
                 transport: type[TCPTransport] = TCPTransport, **handshake: Any) -> None:
        self.h = h
        address = (IPv4Address("TCP", peer, next(_ports)) if isinstance(peer, str)
                   else peer)  # a UNIX socket's peer: UNIXAddress(None)
        self.socket = gateway.buildProtocol(address)
        self.transport = transport(peerAddress=address)
        self.socket.makeConnection(self.transport)
        if ISSLTransport.implementedBy(transport):  # a page served over TLS: https
            handshake.setdefault("origin", "https://" + handshake.get("host", "chat.example:8080"))
        request, accept = ws.handshake(**handshake)
        self.socket.dataReceived(request)
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        self.response = head.decode()
        self.transport.clear()
        self.buffer = rest
        self.opened = self.response.startswith("HTTP/1.1 101")
        if self.opened:
            assert f"Sec-WebSocket-Accept: {accept.decode()}" in self.response
        self.closes: list[int] = []
        self.lost = False

    def send_frame(self, data: bytes) -> None:
        self.socket.dataReceived(data)
        self.h.clock.advance(0)

    def send(self, *lines: str | bytes) -> None:
        for line in lines:
            self.send_frame(ws.text(line))

    def frames(self) -> list[tuple[int, bytes]]:
        data = self.buffer + self.transport.value()
        self.transport.clear()
        frames, self.buffer = ws.parse(data)
        self.closes += [ws.close_code(p) for op, p in frames if op == ws.CLOSE]
        return frames

    def take(self) -> list[str]:
        """The text messages received since the last take."""
        out = []
        for op, payload in self.frames():
            if op == ws.TEXT:
                out.append(payload.decode())
        return out

    def lose(self) -> None:
        """The TCP connection under the WebSocket ends."""
        if not self.lost:
            self.lost = True
            self.socket.connectionLost(Failure(ConnectionDone()))
            self.h.clock.advance(0)

    def register(self, nick: str) -> list[str]:
        self.take()
        self.send(f"NICK {nick}")
        return self.take()


def autobahn_on_clock(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """autobahn's timers (txaio's loop) run on C{h}'s Clock for this test."""
    monkeypatch.setattr(txaio.config, "loop", h.clock)


def grown_by(conn: WsConn, data: bytes) -> int:
    """What the server allocated, and still holds, for C{data} from C{conn}."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        conn.send_frame(data)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def tcp_and_browser(h: Harness, gateway: ChatWebSocketFactory) -> tuple[Conn, WsConn]:
    """bob on TCP and alice in a browser, both in the lobby, output cleared."""
    bob = h.user("bob")
    alice = WsConn(h, gateway)
    alice.register("alice")
    bob.take()
    return bob, alice


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def gateway(h: Harness) -> ChatWebSocketFactory:
    return make_gateway(h)


def ts(h: Harness) -> str:
    from twisted_chat.wire import format_ts

    return format_ts(h.clock.seconds())


# -- frames in, lines to the hub, lines out as frames --------------------------


def test_greeting_is_one_text_frame_per_line(h: Harness, gateway: ChatWebSocketFactory) -> None:
    conn = WsConn(h, gateway)
    assert conn.opened, conn.response
    frames = conn.frames()
    assert frames == [(ws.TEXT, b"HELLO chat/1 twisted-chat (twisted-chat 0.1.0)"),
                      (ws.TEXT, b"NICK")]


def test_security_headers_on_the_upgrade(h: Harness, gateway: ChatWebSocketFactory) -> None:
    conn = WsConn(h, gateway)
    assert "X-Content-Type-Options: nosniff" in conn.response


def test_a_browser_is_one_more_connection_to_the_same_hub(
    h: Harness, gateway: ChatWebSocketFactory
) -> None:
    bob = h.user("bob")
    alice = WsConn(h, gateway)
    assert alice.register("alice") == ["READY alice", "USER alice lobby", "USER bob lobby",
                                       "USERS 2"]
    assert bob.take() == [f"JOINED {ts(h)} alice"]
    assert "alice" in h.hub.lobby or any(u.nick == "alice" for u in h.hub.lobby.values())

    alice.send("MSG hello from the browser")
    line = f"MSG {ts(h)} alice * hello from the browser"
    assert bob.take() == [line]
    assert alice.take() == [line]

    bob.send("MSG hi alice", "DM alice psst")
    assert alice.take() == [f"MSG {ts(h)} bob * hi alice", f"MSG {ts(h)} bob alice psst"]


def test_errors_are_the_tcp_errors(h: Harness, gateway: ChatWebSocketFactory) -> None:
    alice = WsConn(h, gateway)
    alice.take()
    alice.send("MSG too early", "FROB", "NICK 1bad")
    lines = alice.take()
    assert lines[0].startswith("ERROR not-ready ")
    assert lines[1].startswith("ERROR unknown-command ")
    assert lines[2].startswith("RETRY invalid ")
    alice.send("NICK alice")
    alice.take()
    alice.send("DM nobody hi")
    assert alice.take()[0].startswith("ERROR no-such-nick ")


def test_one_message_is_one_line_even_with_a_newline_inside(
    h: Harness, gateway: ChatWebSocketFactory
) -> None:
    bob, alice = tcp_and_browser(h, gateway)
    alice.send("MSG one\nMSG two")
    assert alice.take()[0].startswith("ERROR bad-chars ")
    assert bob.take() == []
    # A terminator at the end, as a hand-written client may add, is tolerated.
    alice.send("MSG three\r\n", "MSG four\n")
    assert bob.take() == [f"MSG {ts(h)} alice * three", f"MSG {ts(h)} alice * four"]


def test_a_message_in_fragments_is_one_line(h: Harness, gateway: ChatWebSocketFactory) -> None:
    bob, alice = tcp_and_browser(h, gateway)
    alice.send_frame(ws.frame(b"MSG frag", fin=False) + ws.frame(b"mented", opcode=0))
    assert bob.take() == [f"MSG {ts(h)} alice * fragmented"]


def test_a_line_over_max_line_is_the_tcp_error_and_the_socket_stays(
    h: Harness, gateway: ChatWebSocketFactory
) -> None:
    alice = WsConn(h, gateway)
    alice.register("alice")
    alice.send("MSG " + "x" * h.config.max_line)
    assert alice.take()[0].startswith("ERROR too-long ")
    alice.send("PING still-here")
    assert alice.take() == ["PONG still-here"]
    assert alice.closes == []


def test_a_batch_is_framed_once_for_every_member(h: Harness, gateway: ChatWebSocketFactory) -> None:
    """Encode-once: the fan-out's batch object is framed by the first member only."""
    members = [WsConn(h, gateway) for _ in range(5)]
    for i, member in enumerate(members):
        member.register(f"user{i}")
    tcp = h.user("tcp")
    for member in members:
        member.take()
    before = gateway.cache.encoded
    # Three lines in one reactor turn are one batch.
    tcp.transport.read(b"MSG a\r\nMSG b\r\nMSG c\r\n")
    h.clock.advance(0)
    assert gateway.cache.encoded - before == 1
    raw = {member.transport.value() for member in members}
    assert len(raw) == 1  # the same bytes for everyone
    expected = [f"MSG {ts(h)} tcp * {x}" for x in "abc"]
    for member in members:
        assert member.take() == expected


def test_frame_cache_is_keyed_on_identity_not_value() -> None:
    calls: list[bytes] = []

    def encode(data: bytes) -> bytes:
        calls.append(data)
        return encode_frames(data)

    cache = FrameCache(size=2, encode=encode)
    batch = b"MSG x\r\n"
    same_value = bytes(bytearray(batch))
    assert cache.frames(batch) == cache.frames(batch)
    assert len(calls) == 1
    cache.frames(same_value)  # equal but another object: framed again, still right
    assert len(calls) == 2
    cache.frames(b"one\r\n")
    cache.frames(b"two\r\n")
    cache.frames(batch)  # evicted by then
    assert len(calls) == 5


def test_encode_frames_matches_rfc6455() -> None:
    long_line = b"x" * 300
    frames, rest = ws.parse(encode_frames(b"A\r\n" + long_line + b"\r\n"))
    assert rest == b""
    assert frames == [(ws.TEXT, b"A"), (ws.TEXT, long_line)]


# -- frames the chat cannot take ------------------------------------------------


def test_binary_message_closes_1003_and_costs_nothing_else(
    h: Harness, gateway: ChatWebSocketFactory
) -> None:
    bob, alice = tcp_and_browser(h, gateway)
    alice.send_frame(ws.frame(b"\x00\x01", opcode=ws.BINARY))
    frames = alice.frames()
    assert [op for op, _ in frames] == [ws.CLOSE]
    assert alice.closes == [1003]
    # Not a line: no ERROR; alice leaves at the close (nothing more
    # reaches her), and nothing more is read from her.
    assert bob.take() == [f"LEFT {ts(h)} alice disconnected"]
    alice.send("MSG after the close")
    assert bob.take() == []
    alice.send_frame(ws.frame(b"\x03\xe8", opcode=ws.CLOSE))
    alice.lose()
    assert bob.take() == []


def test_invalid_utf8_closes_1007(h: Harness, gateway: ChatWebSocketFactory) -> None:
    alice = WsConn(h, gateway)
    alice.register("alice")
    alice.send_frame(ws.frame(b"MSG \xff\xfe"))
    frames = alice.frames()
    assert [op for op, _ in frames] == [ws.CLOSE]
    assert alice.closes == [1007]


def test_oversized_message_closes_1009_before_it_is_read(
    h: Harness, gateway: ChatWebSocketFactory
) -> None:
    alice = WsConn(h, gateway)
    alice.register("alice")
    # Only the header: the gateway refuses on the claimed length.
    alice.send_frame(ws.frame(b"", length=gateway.web.max_message + 1)[:14])
    assert alice.closes == [] and [op for op, _ in alice.frames()] == [ws.CLOSE]
    assert alice.closes == [1009]


# -- the same limits --------------------------------------------------------------


def test_flood_control_applies(h: Harness) -> None:
    h = Harness(flood_rate=1.0, flood_burst=2)
    gateway = make_gateway(h)
    alice = WsConn(h, gateway)
    alice.take()
    alice.send("PING 1", "PING 2", "PING 3")
    lines = alice.take()
    assert lines[:2] == ["PONG 1", "PONG 2"]
    assert lines[2].startswith("ERROR flood ")


def ping(payload: bytes = b"are you there") -> bytes:
    return ws.frame(payload, opcode=ws.PING)


def split(conn: WsConn) -> tuple[list[bytes], list[str]]:
    """The PONG payloads and the text messages received since the last look."""
    frames = conn.frames()
    return ([p for op, p in frames if op == ws.PONG],
            [p.decode() for op, p in frames if op == ws.TEXT])


def test_an_occasional_ping_gets_its_pong() -> None:
    h = Harness(flood_rate=1.0, flood_burst=2)
    alice = WsConn(h, make_gateway(h))
    alice.register("alice")
    for _ in range(5):
        alice.send_frame(ping(b"x" * 125))
        assert split(alice) == ([b"x" * 125], [])
        h.clock.advance(1)
    assert alice.closes == []


def test_pings_spend_flood_tokens_and_a_ping_flood_is_cut(h: Harness) -> None:
    h = Harness(flood_rate=1.0, flood_burst=5)
    gateway = make_gateway(h)
    bob, alice = tcp_and_browser(h, gateway)
    # A peer that pings as fast as it can and reads nothing: one read.
    alice.send_frame(ping(b"x" * 125) * 10_000)
    assert len(alice.transport.value()) < 2_000  # four PONGs and three lines
    pongs, lines = split(alice)
    assert pongs == [b"x" * 125] * 4  # the burst of five, less NICK's token
    assert lines[0].startswith("ERROR flood ")
    assert lines[-1] == "BYE flood too many lines too fast"
    assert alice.closes == [1000]
    alice.lose()
    assert bob.take()[-1] == f"LEFT {ts(h)} alice flood"


@pytest.mark.parametrize("flood", [
    # The gateway sends no pings: every pong is unsolicited.
    ws.frame(b"", opcode=ws.PONG) * 10_000,
    # Fragments of one message, empty: it never ends.
    ws.frame(b"", fin=False) + ws.frame(b"", opcode=0, fin=False) * 10_000,
])
def test_a_flood_of_frames_without_a_line_is_cut(flood: bytes) -> None:
    # They cost nothing: 2.58 M empty pongs in 11 s took 6.3 s of the
    # server's CPU, and were never cut.
    h = Harness(flood_rate=1.0, flood_burst=5)
    bob, alice = tcp_and_browser(h, make_gateway(h))
    alice.send_frame(flood)
    _, lines = split(alice)
    assert lines[0].startswith("ERROR flood ")
    assert lines[-1] == "BYE flood too many lines too fast"
    assert alice.closes == [1000]
    alice.lose()
    assert bob.take()[-1] == f"LEFT {ts(h)} alice flood"


def test_frames_sent_after_the_server_s_close_are_read_a_few_at_most() -> None:
    """After the server's close, a browser's frames are parsed only for its
    close: past FRAMES_AFTER_CLOSE of them, what a peer goes on sending is
    dropped unparsed, and the close's grace aborts it (rev16-sec #1: 24
    peers that went on after BYE flood had 520,000 frames parsed, 5 s of
    the server's time), as a TCP connection is not read after its close."""
    h = Harness(flood_rate=1.0, flood_burst=5)
    _, alice = tcp_and_browser(h, make_gateway(h))
    alice.send("BYE")
    assert alice.take() == ["BYE quit"] and alice.closes == [1000]
    begun = []
    alice.socket.onMessageBegin = begun.append  # type: ignore[method-assign]
    alice.send_frame(ws.frame(b"") * 10_000)
    assert len(begun) == FRAMES_AFTER_CLOSE + 1
    assert alice.socket.data == b""  # the rest dropped, not held
    assert not alice.transport.disconnected  # no reset: the browser reads BYE first
    alice.send_frame(ws.frame(b"") * 10_000)  # read and dropped, not parsed
    assert len(begun) == FRAMES_AFTER_CLOSE + 1
    assert alice.socket.data == b""
    h.clock.advance(3.0)  # the close's grace (close_grace)
    assert alice.transport.disconnected and not alice.socket.wasClean  # aborted
    # A browser's answer behind a few messages closes as ever (a FIN).
    carol = WsConn(h, make_gateway(h))
    carol.register("carol")
    carol.send("BYE")
    carol.send_frame(ws.frame(b"MSG late") * 10 + ws.frame(b"\x03\xe8", opcode=ws.CLOSE))
    assert carol.transport.disconnecting and not carol.transport.disconnected
    assert carol.socket.wasClean


def test_each_frame_after_a_message_s_first_spends_a_flood_token() -> None:
    h = Harness(flood_rate=1.0, flood_burst=5)
    bob, alice = tcp_and_browser(h, make_gateway(h))  # NICK spent one token of five
    # Three frames: two tokens for the fragments after the first, one for the line.
    alice.send_frame(ws.frame(b"MSG a", fin=False) + ws.frame(b" b", opcode=0, fin=False)
                     + ws.frame(b" c", opcode=0))
    alice.send("MSG d", "MSG e")
    assert bob.take() == [f"MSG {ts(h)} alice * a b c", f"MSG {ts(h)} alice * d"]
    assert alice.take()[-1].startswith("ERROR flood ")


def test_a_message_in_many_fragments_holds_no_more_than_a_line() -> None:
    # 16,000 one-byte fragments were 16,000 bytes objects (680 kB for one
    # connection), where TCP holds at most --max-line bytes.
    h = Harness()  # flood control off: only the bytes held bound it here
    bob, alice = tcp_and_browser(h, make_gateway(h))
    fragments = ws.frame(b"M", fin=False) + ws.frame(b"x", opcode=0, fin=False) * 16_000
    assert grown_by(alice, fragments) < 2 * h.config.max_line
    alice.send_frame(ws.frame(b"", opcode=0))
    assert alice.take()[0].startswith("ERROR too-long ")  # as on TCP; the socket stays
    # A line of --max-line bytes with its terminator, in fragments, is whole.
    line = b"MSG " + b"y" * (h.config.max_line - 4)
    alice.send_frame(ws.frame(line[:100], fin=False) + ws.frame(line[100:], opcode=0, fin=False)
                     + ws.frame(b"\r\n", opcode=0))
    assert bob.take() == [f"MSG {ts(h)} alice * {line[4:].decode()}"]
    assert alice.closes == []


def test_no_pong_is_queued_for_a_peer_that_does_not_read() -> None:
    h = Harness(flood_rate=1.0, flood_burst=5, sendq_timeout=30.0)
    gateway = make_gateway(h)
    alice = WsConn(h, gateway)
    alice.register("alice")
    # The kernel stops taking alice's data: Twisted pauses her producer.
    alice.transport.producer.pauseProducing()
    # Pings within the flood rate: no flood, but no PONG either (only the
    # latest ping's payload is kept, for when she drains).
    for i in range(20):
        alice.send_frame(ping(b"%03d" % i + b"x" * 122))
        h.clock.advance(1)
    assert alice.transport.value() == b""
    assert alice.socket._pending_pong == b"019" + b"x" * 122
    # She still reads nothing: --sendq-timeout cuts her, as on TCP.
    h.clock.advance(30)
    assert alice.transport.disconnecting


def test_a_ping_during_a_burst_gets_its_pong_once_the_socket_drains() -> None:
    # RFC 6455 5.5.2: a ping gets a pong (a keepalive that misses it
    # closes, 1011).  One sent while Twisted holds a burst for the socket
    # is answered once it drains, with the latest ping's payload, once.
    h = Harness(flood_rate=1.0, flood_burst=5)
    alice = WsConn(h, make_gateway(h))
    alice.register("alice")
    alice.transport.producer.pauseProducing()  # Twisted holds a burst
    alice.send_frame(ping(b"first"))
    alice.send_frame(ping(b"latest"))
    h.clock.advance(PONG_RETRY * 4)
    assert split(alice) == ([], [])
    alice.transport.producer.resumeProducing()  # drained
    h.clock.advance(PONG_RETRY)
    assert split(alice) == ([b"latest"], [])
    h.clock.advance(PONG_RETRY * 4)
    assert split(alice) == ([], [])
    # A ping while nothing is held is answered at once, as before.
    h.clock.advance(1)
    alice.send_frame(ping(b"now"))
    assert split(alice) == ([b"now"], [])
    assert alice.closes == []


def test_per_address_limit_counts_browsers_and_tcp_together(h: Harness) -> None:
    h = Harness(max_per_ip=1)
    gateway = make_gateway(h)
    h.connect(host="127.0.0.1")
    alice = WsConn(h, gateway, peer="127.0.0.1")
    assert alice.take() == ["ERROR server-full too many connections from 127.0.0.1", "BYE full"]
    assert alice.closes == [1000]
    other = WsConn(h, gateway, peer="10.0.0.2")
    assert other.take()[0].startswith("HELLO ")


def test_sendq_applies(h: Harness) -> None:
    h = Harness(sendq=70_000)
    gateway = make_gateway(h)
    bob, alice = tcp_and_browser(h, gateway)
    # The kernel stops taking alice's data: Twisted pauses her producer.
    alice.transport.producer.pauseProducing()
    for i in range(20):
        bob.send("MSG " + f"{i} " + "y" * 1000)
    # Aborted at once, without a close frame (docs/web.md), unlike a close.
    assert alice.transport.disconnected and alice.closes == []
    alice.lose()
    assert bob.take()[-1] == f"LEFT {ts(h)} alice sendq"


def test_one_send_queue_counts_frame_bytes_against_sendq() -> None:
    """
    A WebSocket connection has one send queue, on the TCP transport under
    it, and --sendq counts the frames it writes.  Here (a StringTransport,
    whose buffer cannot be read) Twisted's share is estimated from its
    pausing: once paused, lines whose frames (two bytes more than each
    line) pass what --sendq leaves past Twisted's buffer size are refused,
    though the lines alone would fit.  Before, a second queue wrote the
    frames and the one enforcing --sendq counted the lines.
    """
    line = b"MSG 0 carol * " + b"x" * 984 + b"\r\n"
    frame = len(encode_frames(line))
    assert frame == len(line) + 2
    fit = 10
    h = Harness(sendq=65536 + (fit + 1) * frame - 1)  # 11 lines fit, not 11 frames
    alice = WsConn(h, make_gateway(h))
    alice.register("alice")
    chat = alice.socket.chat
    assert chat is not None and chat.send_queue is alice.socket.chat_queue
    assert alice.transport.producer is chat.send_queue, "the TCP transport's producer"
    alice.transport.producer.pauseProducing()
    for _ in range(fit):
        chat.write(line)
    assert not chat.closing
    chat.write(line)
    assert chat.closing, "cut: the frames held would pass --sendq"
    assert len(alice.frames()) == fit, "the refused line was not sent"


def test_nick_timeout_applies(h: Harness) -> None:
    h = Harness(nick_timeout=30.0)
    gateway = make_gateway(h)
    alice = WsConn(h, gateway)
    alice.take()
    h.clock.advance(30)
    assert alice.take() == ["BYE timeout no nickname after 30 seconds"]
    assert alice.closes == [1000]


def test_bye_closes_1000_and_others_see_left(h: Harness, gateway: ChatWebSocketFactory) -> None:
    bob, alice = tcp_and_browser(h, gateway)
    alice.send("BYE see you")
    assert alice.take() == ["BYE quit"]
    assert alice.closes == [1000]
    assert bob.take() == [f"LEFT {ts(h)} alice quit see you"]
    alice.send_frame(ws.frame(b"\x03\xe8", opcode=ws.CLOSE))
    assert alice.transport.disconnecting
    alice.lose()
    assert bob.take() == []


def test_the_user_leaves_at_the_browser_s_close_frame_not_at_the_tcp_close() -> None:
    """rev20-web F2: a reloaded page (its close frame: 1001, going away)
    was refused its own nick ("online already") until the TCP close
    completed, up to the close grace (3 s) later.  The user leaves at the
    close frame; the connection's slot is kept until the socket is lost."""
    h = Harness(close_grace=3.0)
    gateway = make_gateway(h)
    bob, alice = tcp_and_browser(h, gateway)
    alice.send_frame(ws.frame(b"\x03\xe9", opcode=ws.CLOSE))  # 1001
    assert [op for op, _ in alice.frames()] == [ws.CLOSE]  # answered
    assert not alice.transport.disconnected  # the TCP close not completed
    assert bob.take() == [f"LEFT {ts(h)} alice disconnected"]
    assert h.hub.find("alice") is None
    assert alice.socket.chat in h.factory.connections  # its slot, until the socket goes
    reloaded = WsConn(h, gateway)
    assert reloaded.register("alice")[0].startswith("READY alice")
    alice.lose()
    assert bob.take() == [f"JOINED {ts(h)} alice"]
    assert h.hub.find("alice") is not None


def test_bye_then_the_close_frame_is_a_quit_with_its_text(
    h: Harness, gateway: ChatWebSocketFactory
) -> None:
    """A page that says BYE as it goes, its close frame right behind it
    in the same read: the user leaves with quit and the text, as on TCP."""
    bob, alice = tcp_and_browser(h, gateway)
    alice.send_frame(ws.text("BYE reloading") + ws.frame(b"\x03\xe9", opcode=ws.CLOSE))
    assert bob.take() == [f"LEFT {ts(h)} alice quit reloading"]
    alice.lose()
    assert bob.take() == []


CLOSE_1001 = ws.frame(b"\x03\xe9", opcode=ws.CLOSE)  # a page going away
ANSWER = (ws.CLOSE, b"\x03\xe8")  # the gateway's answer (1000)


def test_a_browser_s_last_lobby_line_with_its_close_frame_gets_its_copy_first(
    h: Harness, gateway: ChatWebSocketFactory
) -> None:
    """rev21-attack F1: a lobby line and the close frame in one read.  The
    line was accepted (the others saw it, it is in the history), but
    autobahn answered the close frame first and its sender's copy was
    framed after the answer, as nothing: the sender never learnt that its
    line went out.  Its copy comes first, then the answer, as a TCP user
    gets its copy before the server's FIN."""
    bob, alice = tcp_and_browser(h, gateway)
    alice.send_frame(ws.text("MSG last words") + CLOSE_1001)
    line = f"MSG {ts(h)} alice * last words"
    assert alice.frames() == [(ws.TEXT, line.encode()), ANSWER]
    assert bob.take() == [line, f"LEFT {ts(h)} alice disconnected"]
    assert alice.transport.disconnecting and not alice.transport.disconnected  # a FIN
    alice.lose()
    assert h.hub.find("alice") is None


def test_frames_behind_the_upgrade_and_a_close_frame_are_all_answered_first(
    h: Harness, gateway: ChatWebSocketFactory
) -> None:
    """Upgrade, NICK, MSG and the close frame in one read (a script): the
    READY block and the own copy come before the answer to the close."""
    bob = h.user("bob")
    alice = WsConn(h, gateway)  # (its upgrade read: a dataReceived of its own)
    alice.send_frame(ws.text("NICK alice") + ws.text("MSG hi") + CLOSE_1001)
    frames = alice.frames()
    texts = [payload.decode() for op, payload in frames if op == ws.TEXT]
    assert texts[0].startswith("HELLO ") and "READY alice" in texts
    assert texts[-1] == f"MSG {ts(h)} alice * hi"
    assert frames[-1] == ANSWER
    assert bob.take()[-1] == f"LEFT {ts(h)} alice disconnected"


def test_a_close_frame_behind_a_password_waits_for_its_answer() -> None:
    """An account's login, PASS, a lobby line and the close frame in one
    read: the password check is still running at the close frame, and
    autobahn answered it at once; READY, the history, the user list and the
    own copy came after the answer and were dropped (rev21-attack ws9).  As
    on TCP (the lines before a FIN are all answered), the answer waits for
    the chat connection, and nothing sent after the close frame is read."""
    h = login_harness(work=HeldWork(), close_grace=3.0)
    add(h, "bot")
    bob = h.connect()
    bob.send("NICK bob")
    bot = WsConn(h, make_gateway(h))
    bot.take()
    bot.send("NICK bot")
    h.work.release()  # type: ignore[attr-defined]  # the lookups
    assert bot.take() == ["PASS bot"]
    bot.send_frame(ws.text(f"PASS {PW}") + ws.text("MSG from a script") + CLOSE_1001
                   + ws.text("MSG after the close"))
    assert bot.frames() == [] and not bot.transport.disconnecting  # the check runs
    h.work.release()  # type: ignore[attr-defined]  # the account read
    h.work.release()  # type: ignore[attr-defined]  # the password check
    frames = bot.frames()
    texts = [payload.decode() for op, payload in frames if op == ws.TEXT]
    assert texts[0] == "READY bot"
    assert texts[-1] == f"MSG {ts(h)} bot * from a script"
    assert frames[-1] == ANSWER
    assert bot.transport.disconnecting and h.hub.find("bot") is None
    h.clock.advance(0)  # the lobby's batch
    seen = bob.take()
    assert seen[-2:] == [f"MSG {ts(h)} bot * from a script", f"LEFT {ts(h)} bot disconnected"]
    assert not any("after the close" in line for line in seen)


def test_the_browser_s_answer_to_the_server_s_close_lets_it_take_what_it_is_owed() -> None:
    """rev21-attack F2: a page that says BYE as it goes, its close frame
    right behind.  autobahn ended the closing handshake the server had
    started with an abort at the peer's answer: what Twisted and the kernel
    still held for the peer (lines owed, BYE quit, the close frame) was
    thrown away by the reset.  The close now waits for the peer to take it,
    as the close after a TCP BYE does, and is aborted at the close grace if
    it never does."""
    h = Harness(close_grace=3.0)
    gateway = make_gateway(h)
    conns = []
    for nick in ("alice", "carol"):
        conn = WsConn(h, gateway, transport=HoldingTransport)
        conn.register(nick)
        conn.transport._tempDataLen = 50_000  # the peer has not taken it yet
        conn.send_frame(ws.text("BYE") + ws.frame(b"\x03\xe8", opcode=ws.CLOSE))
        assert conn.take() == ["BYE quit"] and conn.closes == [1000]
        assert conn.socket.wasClean
        conns.append(conn)
    alice, carol = conns
    h.clock.advance(1.0)
    assert not alice.transport.disconnecting, "kept while the peer takes what is queued"
    alice.transport._tempDataLen = 0
    h.clock.advance(0.1)
    assert alice.transport.disconnecting and not alice.transport.disconnected  # a FIN
    h.clock.advance(1.9 - 0.01)
    assert not carol.transport.disconnecting, "no reset before the close grace"
    h.clock.advance(0.01)
    assert carol.transport.disconnected  # aborted at the grace: it never took it


def test_browser_going_away_is_a_disconnect(h: Harness, gateway: ChatWebSocketFactory) -> None:
    bob, alice = tcp_and_browser(h, gateway)
    alice.lose()
    assert bob.take() == [f"LEFT {ts(h)} alice disconnected"]
    assert not h.factory.connections.keys() - {bob.protocol}


# -- who may connect, from where ------------------------------------------------


def test_other_origin_is_refused(h: Harness, gateway: ChatWebSocketFactory) -> None:
    conn = WsConn(h, gateway, host="chat.example:8080", origin="http://evil.example")
    assert conn.response.startswith("HTTP/1.1 403")
    assert not h.factory.connections


def test_the_gateway_s_lines_keep_the_log_level(h: Harness,
                                                 gateway: ChatWebSocketFactory) -> None:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "twisted_chat.web.gateway":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        logs.set_level("warn")
        WsConn(h, gateway, host="chat.example:8080", origin="http://evil.example")
        assert lines == []
        logs.set_level("info")
        WsConn(h, gateway, host="chat.example:8080", origin="http://evil.example")
    finally:
        globalLogPublisher.removeObserver(observe)
        logs.set_level(logs.DEFAULT_LEVEL)
    assert lines == ["WebSocket upgrade from 127.0.0.1 refused (403): "
                     "origin 'http://evil.example' not allowed"]


# -- what a refused upgrade writes to the log ---------------------------------------

HUGE = "x" * 15_000  # about what Twisted's 16 KB header limit lets through


@pytest.mark.parametrize("extra, code, why", [
    ({"Connection": "keep-alive, " + HUGE}, 400,
     """'HTTP Connection headers do not include "upgrade" value"""),
    ({"Sec-WebSocket-Version": HUGE}, 400, "'could not parse HTTP Sec-WebSocket-Version"),
    ({"Origin": "http://" + HUGE}, 403, "origin 'http://xxx"),
])
def test_a_refused_upgrade_is_one_short_line(h: Harness, gateway: ChatWebSocketFactory,
                                             logged: list[str], extra: dict[str, str],
                                             code: int, why: str) -> None:
    """autobahn wrote two lines of ~15 KB each (the header, quoted twice),
    past --log-level and the repeats limiter; the origin line quoted it too."""
    conn = WsConn(h, gateway, host="chat.example:8080", extra=extra)
    status = conn.response.split("\r\n")[0]
    assert status.startswith(f"HTTP/1.1 {code} ")
    assert len(status) <= len(f"HTTP/1.1 {code} ") + HTTP_REASON_LIMIT
    [line] = logged
    prefix = f"WebSocket upgrade from 127.0.0.1 refused ({code}): {why}"
    assert line.startswith(prefix)
    assert line.endswith(" characters)") or line.endswith(" characters) not allowed")
    assert len(line) < len(prefix) + logs.QUOTE_LIMIT + 40


def test_a_refused_upgrade_from_a_unix_socket_names_it(h: Harness,
                                                      gateway: ChatWebSocketFactory,
                                                      logged: list[str]) -> None:
    """A UNIX socket's peer has no address: the line says what it came on,
    not C{None}."""
    conn = WsConn(h, gateway, peer=UNIXAddress(None), extra={"Sec-WebSocket-Version": "x"})
    assert conn.response.startswith("HTTP/1.1 400 ")
    [line] = logged
    assert line.startswith("WebSocket upgrade from a UNIX socket refused (400): "), line


@pytest.mark.parametrize("handshake, code, why", [
    ({"origin": "http://evil.example"}, 403, "origin 'http://evil.example' not allowed"),
    ({"host": "["}, 400, "Host '[' is not a host and port"),
    ({"extra": {"Sec-WebSocket-Version": "x"}}, 400, "'could not parse"),
], ids=["origin", "host", "autobahn"])
def test_a_refused_upgrade_through_a_trusted_proxy_names_the_client(
        h: Harness, logged: list[str], handshake: dict[str, Any], code: int, why: str) -> None:
    """Its line named the proxy (every refusal before the origin check's
    end, or autobahn's before onConnect): a client's refusals could not
    be told from another's, and they shared the proxy's few lines per 10 s.
    It names the client that X-Forwarded-For gives, and the proxy."""
    gateway = make_gateway(h, trusted_proxies=parse_proxies(["10.0.0.1"])[0])
    extra = handshake.pop("extra", {})
    for i in range(4):
        forwarded = {**extra, "X-Forwarded-For": f"203.0.113.{i}"}
        conn = WsConn(h, gateway, peer="10.0.0.1", extra=forwarded, **handshake)
        assert conn.response.startswith(f"HTTP/1.1 {code} ")
    assert [line.split(" refused ")[0] for line in logged] == [
        f"WebSocket upgrade from 203.0.113.{i} via 10.0.0.1" for i in range(4)]
    assert all(line.startswith(f"WebSocket upgrade from 203.0.113.{i} via 10.0.0.1 "
                               f"refused ({code}): {why}") for i, line in enumerate(logged))


def test_a_refused_upgrade_from_a_trusted_unix_socket_names_the_client(
        h: Harness, logged: list[str]) -> None:
    gateway = make_gateway(h, trust_unix=True)
    WsConn(h, gateway, peer=UNIXAddress(None), origin="http://evil.example",
           extra={"X-Forwarded-For": "203.0.113.9"})
    assert logged == ["WebSocket upgrade from 203.0.113.9 via a UNIX socket refused (403): "
                      "origin 'http://evil.example' not allowed"]


def test_refused_upgrades_are_limited_per_address(h: Harness, gateway: ChatWebSocketFactory,
                                                  logged: list[str]) -> None:
    bad = {"Sec-WebSocket-Version": "x"}
    for _ in range(10):
        assert WsConn(h, gateway, extra=bad).response.startswith("HTTP/1.1 400 ")
    assert len(logged) == 3
    # Another address still gets its line.
    WsConn(h, gateway, peer="127.0.0.2", extra=bad)
    assert len(logged) == 4 and logged[3].startswith("WebSocket upgrade from 127.0.0.2 ")
    # After the window, the first address's next line says how many were left out.
    h.clock.advance(10)
    WsConn(h, gateway, extra=bad)
    assert logged[4].startswith("WebSocket upgrade from 127.0.0.1 refused (400): ")
    assert logged[4].endswith("(7 similar lines from this address left out)")


def test_autobahn_s_own_lines_are_not_written(logged: list[str]) -> None:
    """Whatever txaio's global level; and through the server's level filter."""
    level = txaio.get_global_log_level()
    txaio.set_global_log_level("debug")
    try:
        for cls in (ChatWebSocket, ChatWebSocketFactory):
            log: Any = cls.log
            for emit in (log.debug, log.info, log.warn, log.error):
                emit("from autobahn")
            assert log._logger.observer is logs.observer
    finally:
        txaio.set_global_log_level(level)
    assert logged == []


def test_an_internal_error_in_on_connect_is_an_error_line(
        h: Harness, gateway: ChatWebSocketFactory, logged: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> bool:
        raise ValueError("a bug " + HUGE)

    monkeypatch.setattr("twisted_chat.web.gateway.origin_allowed", broken)
    conn = WsConn(h, gateway)
    assert conn.response.startswith("HTTP/1.1 500 ")
    [line] = logged
    assert line.startswith("WebSocket upgrade from 127.0.0.1 refused (500): "
                           "'Internal server error: a bug xxx")
    assert len(line) < 250


@pytest.mark.parametrize("origin", [None, "http://x"])
@pytest.mark.parametrize("host", ["[", "[::1", "x]:8080", "[chat.example]:8080", "::1"])
def test_a_malformed_host_is_a_400_logged_at_info(
        h: Harness, gateway: ChatWebSocketFactory, host: str, origin: str | None) -> None:
    """The peer's bad input: it was a 500 logged as an error (the Host's
    parse raised in the origin check), and let in without an Origin."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        conn = WsConn(h, gateway, host=host, origin=origin)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert conn.response.startswith("HTTP/1.1 400 ")
    [event] = events
    assert event["log_level"].name == "info"
    assert formatEvent(event).startswith(
        "WebSocket upgrade from 127.0.0.1 refused (400): Host ")
    assert len(h.factory.connections) == 0


def test_binary_message_closes_are_limited_per_address(
        h: Harness, gateway: ChatWebSocketFactory, logged: list[str]) -> None:
    for _ in range(5):
        conn = WsConn(h, gateway)
        conn.send_frame(ws.frame(b"x", opcode=ws.BINARY))
    closes = [line for line in logged if "closed (1003)" in line]
    assert closes == ["WebSocket from 127.0.0.1 closed (1003): "
                      "binary messages are not accepted: send text"] * 3


def test_a_refused_message_from_a_unix_socket_names_it(h: Harness,
                                                      gateway: ChatWebSocketFactory,
                                                      logged: list[str]) -> None:
    """The close's line names a UNIX socket's peer as such, not C{None}."""
    conn = WsConn(h, gateway, peer=UNIXAddress(None))
    conn.send_frame(ws.frame(b"x", opcode=ws.BINARY))
    closes = [line for line in logged if "closed (1003)" in line]
    assert closes == ["WebSocket from a UNIX socket closed (1003): "
                      "binary messages are not accepted: send text"]


def test_a_refused_message_through_a_trusted_proxy_names_the_client_and_the_proxy(
        h: Harness, logged: list[str]) -> None:
    """As a refused upgrade's line does: the client, then its proxy."""
    gateway = make_gateway(h, trusted_proxies=parse_proxies(["10.0.0.1"])[0])
    conn = WsConn(h, gateway, peer="10.0.0.1", extra={"X-Forwarded-For": "203.0.113.9"})
    conn.send_frame(ws.frame(b"x", opcode=ws.BINARY))
    closes = [line for line in logged if "closed (1003)" in line]
    assert closes == ["WebSocket from 203.0.113.9 via 10.0.0.1 closed (1003): "
                      "binary messages are not accepted: send text"]


@pytest.mark.parametrize("origin", [None, "http://chat.example:8080", "http://CHAT.example:8080"])
def test_same_origin_or_no_origin_is_let_in(h: Harness, gateway: ChatWebSocketFactory,
                                            origin: str | None) -> None:
    assert WsConn(h, gateway, host="chat.example:8080", origin=origin).opened


def test_web_origin_allows_another(h: Harness) -> None:
    gateway = make_gateway(h, origins=("https://friends.example",))
    assert WsConn(h, gateway, origin="https://friends.example").opened
    assert not WsConn(h, gateway, origin="https://friends.example:444").opened


def test_forwarded_for_is_believed_only_from_trusted_proxies(h: Harness) -> None:
    h = Harness(max_per_ip=1, show_addresses=True)
    gateway = make_gateway(h, trusted_proxies=parse_proxies(["10.0.0.1"])[0])
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    first = WsConn(h, gateway, peer="10.0.0.1", extra=proxied)
    assert first.register("alice")[0] == "READY alice"
    assert h.hub.online["alice"].address.startswith("203.0.113.9:")
    # A second browser behind the same proxy, another client: let in.
    second = WsConn(h, gateway, peer="10.0.0.1", extra={"X-Forwarded-For": "203.0.113.10"})
    assert second.take()[0].startswith("HELLO ")
    # The same client again: over its limit.
    third = WsConn(h, gateway, peer="10.0.0.1", extra=proxied)
    assert third.take()[0] == "ERROR server-full too many connections from 203.0.113.9"
    # An untrusted peer's header is ignored: its own address counts.
    spoof = WsConn(h, gateway, peer="198.51.100.7", extra=proxied)
    assert spoof.take()[0].startswith("HELLO ")


def test_forwarded_for_from_a_unix_socket_is_believed_with_trust_proxy_unix() -> None:
    """A proxy on a UNIX-socket web port (--trust-proxy unix:, nginx's
    set_real_ip_from unix:) names each client as an IP proxy does.  Before,
    its header was never read: every client behind it had no address, and
    none of the per-address limits held them."""
    h = Harness(max_per_ip=1, show_addresses=True)
    gateway = make_gateway(h, trust_unix=True)
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    first = WsConn(h, gateway, peer=UNIXAddress(None), extra=proxied)
    assert first.register("alice")[0] == "READY alice"
    assert h.hub.online["alice"].address == "203.0.113.9:0"
    second = WsConn(h, gateway, peer=UNIXAddress(None), extra=proxied)
    assert second.take()[0] == "ERROR server-full too many connections from 203.0.113.9"
    # A TCP peer is not trusted by it.
    spoof = WsConn(h, gateway, peer="198.51.100.7", extra=proxied)
    assert spoof.take()[0].startswith("HELLO ")


def test_forwarded_for_from_a_unix_socket_is_ignored_without_trust_proxy_unix() -> None:
    """Records today's behaviour: the header is unread and no per-address limit holds."""
    h = Harness(max_per_ip=1, show_addresses=True)
    gateway = make_gateway(h, trusted_proxies=parse_proxies(["127.0.0.1"])[0])
    proxied = {"X-Forwarded-For": "203.0.113.9"}
    first = WsConn(h, gateway, peer=UNIXAddress(None), extra=proxied)
    assert first.register("alice")[0] == "READY alice"
    assert h.hub.online["alice"].address == "-"  # no address: not limited by one
    assert WsConn(h, gateway, peer=UNIXAddress(None), extra=proxied).take()[0].startswith(
        "HELLO ")


# -- the benchmark's WebSocket clients speak what the gateway takes -------------------


def test_bench_websocket_dialect(h: Harness, gateway: ChatWebSocketFactory) -> None:
    from bench.dialects import DIALECTS

    dialect = DIALECTS["chat/1-ws"]
    bob = h.user("bob")
    address = IPv4Address("TCP", "127.0.0.1", next(_ports))
    socket = gateway.buildProtocol(address)
    transport = TCPTransport(peerAddress=address)
    socket.makeConnection(transport)
    socket.dataReceived(dialect.register("load1"))
    assert dialect.first_marker in transport.value()
    socket.dataReceived(dialect.after_registered("load1"))
    h.clock.advance(0)
    assert dialect.done_marker in transport.value()
    transport.clear()
    bob.take()
    socket.dataReceived(dialect.encode(b"MSG ~123456789~ " + b"x" * 32 + b"\r\n"))
    h.clock.advance(0)
    assert bob.take() == [f"MSG {ts(h)} load1 * ~123456789~ " + "x" * 32]
    bob.send("MSG one", "MSG two")
    # One line_mark per line received.
    assert transport.value().count(dialect.line_mark) == 3


def test_a_close_the_browser_started_and_never_completes_is_aborted() -> None:
    """The browser sends a close frame: the gateway answers it and closes
    the TCP connection, a close that waits (under TLS, for the peer's
    close_notify; on TCP, for the peer to read what is queued).  A peer
    that never completes it is aborted after the close grace, as any
    chat connection's close is, and leaves.  Before, autobahn held itself
    closed and skipped every abort: after 400 s alice was still online."""
    h = Harness(idle_timeout=120, ping_timeout=60, close_grace=3.0)
    gateway = make_gateway(h)
    bob, alice = tcp_and_browser(h, gateway)
    alice.send_frame(ws.frame(b"\x03\xe8", opcode=ws.CLOSE))  # 1000
    assert alice.frames() == [(ws.CLOSE, b"\x03\xe8")]  # the answer
    assert alice.transport.disconnecting and not alice.transport.disconnected
    assert bob.take() == [f"LEFT {ts(h)} alice disconnected"]  # at the close frame
    h.clock.advance(2.9)
    assert not alice.transport.disconnected
    h.clock.advance(0.1)
    assert alice.transport.disconnected  # aborted
    alice.lose()
    assert bob.take() == []
    assert h.hub.find("alice") is None
    assert not h.factory.connections.keys() - {bob.protocol}


def test_a_timely_close_leaves_no_abort_behind() -> None:
    h = Harness(close_grace=3.0)
    gateway = make_gateway(h)
    bob, alice = tcp_and_browser(h, gateway)
    alice.send_frame(ws.frame(b"\x03\xe8", opcode=ws.CLOSE))
    alice.lose()  # the close completed at once
    assert bob.take() == [f"LEFT {ts(h)} alice disconnected"]
    h.clock.advance(3)
    assert not alice.transport.disconnected


CLOSES_THE_SERVER_STARTS = {
    "BYE": (ws.text("BYE"), 1000),
    "binary": (ws.frame(b"\x00", opcode=ws.BINARY), 1003),
    "bad UTF-8": (ws.frame(b"MSG \xff"), 1007),  # autobahn's closes
    "too big": (ws.frame(b"", length=WebConfig().max_message + 1)[:14], 1009),
}


@pytest.mark.parametrize("sent", CLOSES_THE_SERVER_STARTS)
def test_a_close_the_server_starts_is_aborted_after_the_close_grace_not_before(
    sent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close the server starts (after BYE quit, BYE flood, BYE timeout...;
    a 1003; autobahn's 1007) that the browser does not answer is aborted
    after the close grace, as a TCP connection's close is, and not sooner:
    a reset makes the browser drop what it had not read yet, the BYE that
    says why included.  autobahn's own closing-handshake timer aborted it
    0-1 s after the close (rev18-docs #3); here it runs on the Clock."""
    frame, code = CLOSES_THE_SERVER_STARTS[sent]
    h = Harness(close_grace=3.0)
    autobahn_on_clock(h, monkeypatch)
    alice = WsConn(h, make_gateway(h))
    alice.register("alice")
    alice.send_frame(frame)
    alice.frames()
    assert alice.closes == [code]
    assert h.hub.find("alice") is None, "the user leaves at the close, not at its end"
    h.clock.advance(2.9)
    # (After the 1007, autobahn closes the TCP connection too, at once: a
    # FIN behind the close frame, not a reset.)
    assert not alice.transport.disconnected, "no reset before the close grace"
    h.clock.advance(0.1)
    assert alice.transport.disconnected and not alice.socket.wasClean  # aborted
    alice.lose()
    assert h.hub.find("alice") is None


def test_a_close_the_server_starts_ends_when_the_browser_answers(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser that answers within the grace ends the close cleanly, and
    the close's abort goes with the connection."""
    h = Harness(close_grace=3.0)
    autobahn_on_clock(h, monkeypatch)
    alice = WsConn(h, make_gateway(h))
    alice.register("alice")
    alice.send("BYE")
    h.clock.advance(2)
    alice.send_frame(ws.frame(b"\x03\xe8", opcode=ws.CLOSE))
    # Done: closed at once (a FIN, the peer having taken everything), not reset.
    assert alice.transport.disconnecting and not alice.transport.disconnected
    assert alice.socket.wasClean
    alice.lose()
    aborts = [call for call in h.clock.getDelayedCalls()
              if call.func == alice.transport.abortConnection]
    assert not aborts, "the close's abort is cancelled once it completed"
