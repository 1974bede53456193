"""
The web port's HTTP connections before they are chat connections
(twisted_chat.web.admission, twisted_chat.web.site): counted from accept
with the chat's own limits, TCP and web together; an absolute deadline on
the HTTP side that bytes received do not reset; the upgrade hands the count
over to the chat connection; what one connection's requests may cost (no
body read, no log line, a bounded number).  The site on a task.Clock,
connections on StringTransports.
"""

from __future__ import annotations

import fcntl
import gc
import io
import itertools
import re
import socket
import sys
import termios
import weakref
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.python.failure import Failure
from zope.interface import directlyProvides

from tests.harness import Harness
from tests.web import wsframes as ws
from tests.web.test_gateway import HoldingTransport, TCPTransport
from twisted_chat.server.limits.closing import UNREAD_DROPPED
from twisted_chat.server.limits.descriptors import REFUSALS_CLOSING
from twisted_chat.web.admission import HTTP_PER_BROWSER
from twisted_chat.web.config import WebConfig, parse_proxies
from twisted_chat.web.site import KEEPALIVE_IDLE, MAX_REQUESTS, TAKEN_LOOK, WebSite, web_site

_ports = itertools.count(30000)


def make_site(h: Harness, **web: Any) -> WebSite:
    site = web_site(h.factory, WebConfig(**web), reactor=h.clock)
    # No autobahn timers: they run on txaio's global loop, not on the Clock.
    site.gateway.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0)
    return site


class HTTPConn:
    """One TCP connection to the web port."""

    def __init__(self, h: Harness, site: WebSite, peer: str = "192.0.2.1",
                 transport: type[TCPTransport] = TCPTransport) -> None:
        self.h = h
        address: Any = (IPv6Address if ":" in peer else IPv4Address)("TCP", peer, next(_ports))
        self.protocol = site.buildProtocol(address)
        self.transport = transport(peerAddress=address)
        self.transport.protocol = self.protocol  # autobahn takes it over at the upgrade
        self.protocol.makeConnection(self.transport)
        self.lost = False

    @property
    def refused(self) -> bool:
        return self.transport.value().startswith(b"HTTP/1.1 503 ")

    @property
    def aborted(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def killed(self) -> bool:
        """Aborted, not only closed (a TLS close waits for the peer)."""
        return bool(self.transport.disconnected)

    def send(self, data: bytes) -> None:
        self.transport.protocol.dataReceived(data)
        self.h.clock.advance(0)

    def upgrade(self, **handshake: Any) -> list[str]:
        request, _ = ws.handshake(**handshake)
        self.send(request)
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        frames, _ = ws.parse(rest)
        self.transport.clear()
        return [p.decode() for op, p in frames if op == ws.TEXT]

    def lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.transport.protocol.connectionLost(Failure(ConnectionDone()))
            self.h.clock.advance(0)


def test_web_connections_count_per_address_by_their_own_cap_from_accept() -> None:
    # HTTP_PER_BROWSER per user --max-per-ip allows: 6 here.
    h = Harness(max_per_ip=1)
    site = make_site(h)
    held = [HTTPConn(h, site) for _ in range(HTTP_PER_BROWSER)]
    assert not any(c.refused for c in held)
    over = HTTPConn(h, site)
    assert over.refused and over.transport.disconnecting
    # Another address is not affected; a closed connection frees its place.
    assert not HTTPConn(h, site, peer="192.0.2.2").refused
    held[0].lose()
    assert not HTTPConn(h, site).refused


def test_web_connections_group_ipv6_by_the_configured_prefix() -> None:
    """The cap counts an IPv6 peer under its --ipv6-prefix network (here a
    /48: its /64s share it), as the chat port does, not a fixed /64."""
    h = Harness(max_per_ip=1, ipv6_prefix=48)
    site = make_site(h)
    held = [HTTPConn(h, site, peer=f"2001:db8:1:{n}::1") for n in range(HTTP_PER_BROWSER)]
    assert not any(c.refused for c in held)
    assert HTTPConn(h, site, peer="2001:db8:1:ffff::1").refused
    assert not HTTPConn(h, site, peer="2001:db8:2::1").refused


def test_web_refusals_are_counted_by_limit_and_their_503_is_not_chat_output() -> None:
    """chat_refusals_total{limit="web_per_ip"} for an address over its
    share of the web port, {limit="max_clients"} for a full server; the
    503 is HTTP, not in chat_sent_bytes_total (no HTTP response is)."""
    from tests.test_metrics import value

    h = Harness(max_per_ip=1, max_clients=HTTP_PER_BROWSER + 1)
    site = make_site(h)
    held = [HTTPConn(h, site) for _ in range(HTTP_PER_BROWSER)]
    sent = h.factory.stats.bytes_out
    assert HTTPConn(h, site).refused
    assert value(h, "chat_refusals_total", limit="web_per_ip") == 1
    held.append(HTTPConn(h, site, peer="192.0.2.2"))  # the last place
    assert HTTPConn(h, site, peer="192.0.2.3").refused
    assert value(h, "chat_refusals_total", limit="max_clients") == 1
    assert value(h, "chat_disconnects_total", reason="refused_http") == 2
    assert h.factory.stats.bytes_out == sent


def test_web_connections_are_not_users_nor_nick_choosers() -> None:
    # A browser's page holds HTTP connections besides its WebSocket: they
    # count neither in --max-per-ip nor in --max-handshaking-per-ip, so
    # they never refuse a user (the rule that refused a second browser
    # behind one address).
    h = Harness(max_per_ip=2, max_handshaking_per_ip=1)
    site = make_site(h)
    pages = [HTTPConn(h, site) for _ in range(4)]
    assert not any(c.refused for c in pages)
    assert h.connect(host="192.0.2.1").take()[0].startswith("HELLO ")  # a nick chooser
    h.conns[-1].send("NICK alice")
    assert HTTPConn(h, site).upgrade()[0].startswith("HELLO ")  # a second user
    assert site.gate.held_by("192.0.2.1") == 4


def test_web_connections_spend_the_address_connection_rate() -> None:
    h = Harness(ip_connect_rate=1.0, ip_connect_burst=3)
    site = make_site(h)
    assert not any(HTTPConn(h, site).refused for _ in range(3))
    assert HTTPConn(h, site).refused
    assert h.connect(host="192.0.2.1").take()[0].endswith("slow down")
    h.clock.advance(1)
    assert not HTTPConn(h, site).refused


def test_web_connections_count_against_max_clients() -> None:
    h = Harness(max_clients=2)
    site = make_site(h)
    first, _second = HTTPConn(h, site, "192.0.2.1"), HTTPConn(h, site, "192.0.2.2")
    assert HTTPConn(h, site, "192.0.2.3").refused
    assert h.connect(host="192.0.2.4").take() == [
        "ERROR server-full the server is full; try again later", "BYE full"]
    first.lose()
    assert not HTTPConn(h, site, "192.0.2.3").refused


@pytest.mark.parametrize("tcp", range(4))
def test_the_web_gate_and_the_chat_port_are_full_at_the_same_count(tcp: int) -> None:
    # One rule (ChatFactory.is_full): whatever the mix of chat and web
    # connections, the next of either kind is refused at --max-clients and
    # admitted below it.
    h = Harness(max_clients=3)
    site = make_site(h)
    hosts = (f"192.0.2.{i}" for i in itertools.count(1))
    leave: list[Callable[[], None]] = []
    for _ in range(tcp):
        conn = h.connect(host=next(hosts))
        assert conn.take()[0].startswith("HELLO ")
        leave.append(conn.drop)
    for _ in range(3 - tcp):
        page = HTTPConn(h, site, next(hosts))
        assert not page.refused
        leave.append(page.lose)
    assert HTTPConn(h, site, next(hosts)).refused
    assert h.connect(host=next(hosts)).take() == [
        "ERROR server-full the server is full; try again later", "BYE full"]
    leave[0]()
    assert h.connect(host=next(hosts)).take()[0].startswith("HELLO ")
    assert HTTPConn(h, site, next(hosts)).refused
    leave[1]()
    assert not HTTPConn(h, site, next(hosts)).refused
    assert h.connect(host=next(hosts)).take()[0].startswith("ERROR server-full ")


def test_a_full_handshake_pool_evicts_the_oldest_of_the_biggest_address() -> None:
    h = Harness(max_handshaking=3)
    site = make_site(h)
    oldest, _next = HTTPConn(h, site, "192.0.2.1"), HTTPConn(h, site, "192.0.2.1")
    other = HTTPConn(h, site, "192.0.2.2")
    newcomer = h.connect(host="192.0.2.3")  # a TCP user from elsewhere gets in
    assert newcomer.take()[0].startswith("HELLO ")
    assert oldest.aborted and not other.aborted
    oldest.lose()
    assert len(site.gate) == 2


def test_a_slow_request_is_aborted_at_the_deadline_whatever_it_sends() -> None:
    h = Harness()
    site = make_site(h, timeout=30.0)
    slow = HTTPConn(h, site)
    slow.send(b"GET /chat HTTP/1.1\r\n")
    for _ in range(2):  # one header byte every 14 s: Twisted's idle timer is reset
        h.clock.advance(14)
        slow.send(b"X")
    assert not slow.aborted
    h.clock.advance(2)
    assert slow.aborted
    slow.lose()
    assert len(site.gate) == 0 and h.factory.other_connections == 0


def test_an_idle_kept_alive_connection_is_closed_soon_after_its_response() -> None:
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site)
    conn.send(b"GET /nope HTTP/1.1\r\nHost: chat.example\r\n\r\n")
    assert conn.transport.value().startswith(b"HTTP/1.1 404 ")
    h.clock.advance(KEEPALIVE_IDLE - 0.1)
    assert not conn.aborted
    h.clock.advance(0.1)
    assert conn.aborted and not conn.killed  # a close (FIN, or close_notify)
    # A TLS peer that never completes the close: aborted after the close
    # grace, as every close the server decides (before: at the deadline).
    h.clock.advance(h.config.close_grace - 0.1)
    assert not conn.killed
    h.clock.advance(0.1)
    assert conn.killed


def test_a_kept_alive_connection_is_idle_only_once_its_peer_has_taken_the_response() -> None:
    """rr19-rcv 1: the idle time ran from when Twisted or the kernel had the
    response, not the peer: a reader at 8 KB/s was reset with a third of
    app.js unread.  --web-timeout still bounds a peer that takes it slowly."""
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site, transport=HoldingTransport)
    conn.send(b"GET /nope HTTP/1.1\r\nHost: chat.example\r\n\r\n")
    assert conn.transport.value().startswith(b"HTTP/1.1 404 ")
    conn.transport._tempDataLen = 50_000  # the peer is still reading it
    h.clock.advance(KEEPALIVE_IDLE + 10)
    assert not conn.aborted
    conn.transport._tempDataLen = 0  # taken: the idle time starts at the next look
    h.clock.advance(TAKEN_LOOK)
    h.clock.advance(KEEPALIVE_IDLE - 0.1)
    assert not conn.aborted
    h.clock.advance(0.1)
    assert conn.aborted and not conn.killed  # the idle close (FIN)
    conn.lose()

    slow = HTTPConn(h, site, transport=HoldingTransport)
    slow.send(b"GET /nope HTTP/1.1\r\nHost: chat.example\r\n\r\n")
    slow.transport._tempDataLen = 50_000  # never taken
    h.clock.advance(30 - 0.1)
    assert not slow.aborted
    h.clock.advance(0.1)
    assert slow.killed  # the deadline from accept
    slow.lose()
    assert h.clock.getDelayedCalls() == []


@pytest.mark.parametrize("request_", [
    b"GET /nope HTTP/1.0\r\n\r\n",
    b"GET /nope HTTP/1.1\r\nHost: chat.example\r\nConnection: close\r\n\r\n",
])
def test_a_close_waits_unread_and_counted_until_the_peer_takes_the_response(
        request_: bytes) -> None:
    """Rev18-attack 1: Twisted closed the descriptor as soon as its own buffer
    was empty; the kernel kept the rest in an orphaned socket for minutes,
    no longer counted, past every timeout."""
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site, transport=HoldingTransport)
    conn.transport._tempDataLen = 50_000  # the peer reads nothing
    conn.send(request_)
    assert b" 404 " in conn.transport.value().partition(b"\r\n")[0]
    h.clock.advance(1.0)
    assert not conn.aborted, "the descriptor is kept"
    assert conn.transport.producerState == "paused"
    assert len(site.gate) == 1 and h.factory.other_connections == 1, "still counted"
    conn.transport._tempDataLen = 0
    h.clock.advance(0.1)
    assert conn.aborted and not conn.killed  # now the close (FIN)
    conn.lose()
    assert len(site.gate) == 0 and h.factory.other_connections == 0
    assert h.clock.getDelayedCalls() == []


def test_a_close_whose_response_is_never_taken_is_aborted_at_the_grace() -> None:
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site, transport=HoldingTransport)
    conn.transport._tempDataLen = 50_000
    conn.send(b"GET /nope HTTP/1.0\r\n\r\n")
    h.clock.advance(h.config.close_grace - 0.01)
    assert not conn.aborted
    h.clock.advance(0.01)
    assert conn.killed  # a reset: the kernel frees what it held at once
    conn.lose()
    assert len(site.gate) == 0 and h.factory.other_connections == 0


def test_an_http_connection_has_its_send_buffer_fixed_at_sndbuf() -> None:
    """Rev18-attack 2: only chat connections had --sndbuf; the kernel grew
    an HTTP non-reader's send buffer to megabytes."""

    class SocketTransport(TCPTransport):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.sock = socket.socket()

        def getHandle(self) -> socket.socket:
            return self.sock

    h = Harness(sndbuf=32768)
    conn = HTTPConn(h, make_site(h), transport=SocketTransport)
    sock = conn.transport.sock
    try:
        # Linux doubles what it is set to (its bookkeeping).
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 32768
    finally:
        sock.close()


def test_behind_an_answer_waiting_for_its_peer_a_pipelined_request_stops_the_reading() -> None:
    """twisted.web stops reading past 16 kB sent behind the request being
    answered only while the transport is not full: behind an answer its
    peer did not take, it held all the peer sent, without end (one
    connection grew the server by 662 MB in 4 s).  Here the transport is
    paused either way."""
    h = Harness()
    conn = HTTPConn(h, make_site(h))
    request = b"GET /static/app.js HTTP/1.1\r\nHost: chat.example\r\n\r\n"
    conn.send(request)  # being answered: the file is produced as the transport asks
    conn.protocol.pauseProducing()  # as the transport does once its buffer is full
    conn.send(request + b"x" * 16_000)
    assert conn.transport.producerState == "producing"  # within twisted.web's 16 kB
    conn.send(b"x" * 1_000)
    assert conn.transport.producerState == "paused"


def test_a_request_on_a_kept_alive_connection_restarts_its_idle_time() -> None:
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site)
    request = b"GET /nope HTTP/1.1\r\nHost: chat.example\r\n\r\n"
    conn.send(request)
    h.clock.advance(KEEPALIVE_IDLE - 1)
    conn.send(request)  # the page's next file
    h.clock.advance(KEEPALIVE_IDLE - 1)
    assert not conn.aborted
    # A request being received is not idle: only the deadline bounds it.
    conn.send(b"GET /nope HTTP/1.1\r\n")
    h.clock.advance(KEEPALIVE_IDLE + 1)
    assert not conn.aborted
    h.clock.advance(30)
    assert conn.killed


def test_the_upgrade_hands_the_count_to_the_chat_connection() -> None:
    # One connection allowed from the address: the WebSocket's HTTP side
    # and its chat connection are one connection, not two.
    h = Harness(max_per_ip=1, max_handshaking_per_ip=1)
    site = make_site(h, timeout=30.0)
    browser = HTTPConn(h, site)
    assert browser.upgrade()[0].startswith("HELLO ")
    assert len(site.gate) == 0 and h.factory.other_connections == 0
    assert len(h.factory.connections) == 1
    assert site.gate.held_by("192.0.2.1") == 0
    # The HTTP deadline no longer applies: the chat's own timeouts do.
    h.clock.advance(100)
    assert not browser.aborted
    # The chat connection holds the address's place: a second one is refused.
    assert HTTPConn(h, site).upgrade() == [
        "ERROR server-full too many connections from 192.0.2.1", "BYE full"]
    browser.lose()
    assert len(h.factory.connections) == 0
    assert HTTPConn(h, site).upgrade()[0].startswith("HELLO ")


def test_frames_behind_the_upgrade_request_in_its_read_are_the_websocket_s() -> None:
    """note19 (left): what followed an upgrade request in the same read
    stayed with twisted.web, as a pipelined request that nothing read: the
    frames were lost, and past 16 KiB the reading stopped for good (the
    connection sat until a timeout).  RFC 6455 has a client wait for the
    101; one that does not gets its frames read however the reads fall."""
    h = Harness()
    conn = HTTPConn(h, make_site(h, timeout=30.0))
    request, _ = ws.handshake()
    pings = b"".join(ws.text(f"PING {i}") for i in range(2000))
    assert len(pings) > 16 * 1024  # past twisted.web's read-ahead
    conn.send(request + pings)
    head, _, rest = conn.transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    frames, _ = ws.parse(rest)
    texts = [p.decode() for op, p in frames if op == ws.TEXT]
    assert [t for t in texts if t.startswith("PONG ")] == [f"PONG {i}" for i in range(2000)]
    assert conn.transport.producerState == "producing"
    conn.transport.clear()
    conn.send(ws.text("PING later"))  # and it reads on
    assert [p for op, p in ws.parse(conn.transport.value())[0]] == [b"PONG later"]


def test_the_http_channel_keeps_no_websocket_after_the_upgrade_read() -> None:
    """rr20-core: the channel held the WebSocket its upgrade was handed to
    (for the frames in the same read), so the channel, cyclic garbage once
    its transport is taken over, kept each closed WebSocket alive until a
    full collection.  (The WebSocket is cyclic garbage itself, autobahn's
    is_closed Deferred holds it: a collection is needed either way.)"""
    h = Harness()
    conn = HTTPConn(h, make_site(h, timeout=30.0))
    channel = conn.protocol  # held here, as a cycle holds it until a full GC
    conn.upgrade()
    websocket = weakref.ref(conn.transport.protocol)
    conn.lose()
    # What a real transport drops at its connectionLost.
    conn.transport.protocol = None
    conn.transport.unregisterProducer()
    gc.collect()
    assert websocket() is None
    assert channel.transport is None  # (taken over: the channel itself is not read)


# A request to /chat that autobahn refuses: the socket is autobahn's (the
# channel's transport is None), but it is counted until it closes, and a
# peer that never completes the close (a TLS peer that never sends
# close_notify: the StringTransport never reports the close) is aborted.
REFUSED_UPGRADES = {
    "no key": (b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"),
    "foreign Origin": ws.handshake(origin="http://evil.example")[0],
    "bad version": ws.handshake(extra={"Sec-WebSocket-Version": "99"})[0],
}


@pytest.mark.parametrize("request_bytes", REFUSED_UPGRADES.values(), ids=REFUSED_UPGRADES)
def test_a_refused_upgrade_stays_counted_until_it_closes(request_bytes: bytes) -> None:
    h = Harness(max_per_ip=1, max_handshaking_per_ip=1, close_grace=3.0)
    site = make_site(h, timeout=30.0)
    refused = HTTPConn(h, site)
    refused.send(request_bytes)
    assert not refused.transport.value().startswith(b"HTTP/1.1 101 ")
    assert refused.aborted and not refused.killed  # a close: under TLS it waits for the peer
    assert len(site.gate) == 1 and h.factory.other_connections == 1
    assert site.gate.held_by("192.0.2.1") == 1  # it still holds its place
    h.clock.advance(3)
    assert refused.killed  # aborted close_grace later
    assert len(h.factory.connections) == 0
    refused.lose()
    assert len(site.gate) == 0 and h.factory.other_connections == 0
    assert site.gate.held_by("192.0.2.1") == 0


def test_a_refused_upgrade_is_aborted_at_the_deadline_at_the_latest() -> None:
    h = Harness(close_grace=100.0)
    site = make_site(h, timeout=5.0)
    refused = HTTPConn(h, site)
    refused.send(REFUSED_UPGRADES["no key"])
    h.clock.advance(4.9)
    assert not refused.killed
    h.clock.advance(0.1)
    assert refused.killed
    assert len(site.gate) == 0 and h.factory.other_connections == 0
    refused.lose()
    h.clock.advance(100)
    assert h.factory.other_connections == 0


@pytest.mark.parametrize("request_bytes", REFUSED_UPGRADES.values(), ids=REFUSED_UPGRADES)
def test_a_refused_upgrade_gets_one_answer_whatever_follows_it(
        request_bytes: bytes, logged: list[str]) -> None:
    """note19 (left): while a refused upgrade's close waited for its peer,
    what followed the request was parsed as the same request again: under
    TLS (which hands over what it decrypts a record at a time, the later
    ones straight to autobahn) it got one more 400 and one more log line,
    then the close.  Nothing is read once the close is under way, as on
    TCP, whether it came in the request's read or in a later one."""
    h = Harness()
    conn = HTTPConn(h, make_site(h, timeout=30.0), transport=HoldingTransport)
    conn.transport._tempDataLen = 1  # the answer waits for its peer: so does the close
    conn.send(request_bytes + b"x" * 100)
    conn.send(b"y" * 100)  # TLS's next piece
    [answer] = responses(conn)
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 403 ")), answer
    [line] = logged
    assert line.startswith("WebSocket upgrade from 192.0.2.1 refused (4"), line
    assert not conn.aborted  # its close waits for the peer
    conn.transport._tempDataLen = 0
    h.clock.advance(0.1)
    assert conn.aborted and not conn.killed and len(responses(conn)) == 1


def test_refused_web_connections_and_upgrades_share_the_refusal_budget() -> None:
    """An upgrade the chat server refuses (over --max-per-ip: ERROR
    server-full, BYE full, a close frame) and a connection the web port
    refuses at accept (a 503) wait out the close grace as a refused chat
    connection does, in the same budget (docs/protocol.md, limit 15):
    while REFUSALS_CLOSING of them wait, the next is aborted at once.
    Their peers never complete the close (a TLS peer without close_notify:
    the StringTransport never reports the close)."""
    h = Harness(max_per_ip=1, ip_connect_burst=1000, close_grace=3.0)
    site = make_site(h)
    h.connect(host="192.0.2.1").send("NICK alice")  # the address's one user
    upgrades = []
    for _ in range(REFUSALS_CLOSING - HTTP_PER_BROWSER):
        conn = HTTPConn(h, site)
        assert conn.upgrade() == ["ERROR server-full too many connections from 192.0.2.1",
                                  "BYE full"]
        upgrades.append(conn)
    assert not any(c.killed for c in upgrades)  # closing: a close frame, then the wait
    held = [HTTPConn(h, site) for _ in range(HTTP_PER_BROWSER)]  # the address's HTTP cap
    refused = [HTTPConn(h, site) for _ in range(HTTP_PER_BROWSER + 2)]
    assert all(c.refused for c in refused)
    assert h.factory.closing_refusals.count == REFUSALS_CLOSING
    assert [c.killed for c in refused] == [False] * HTTP_PER_BROWSER + [True, True]
    held[0].lose()
    late = HTTPConn(h, site)
    assert late.upgrade()[0].startswith("ERROR server-full ")
    assert late.killed  # the budget is spent: aborted at once
    h.clock.advance(3)
    waiting = upgrades + refused[:HTTP_PER_BROWSER]
    assert all(c.killed for c in waiting)  # aborted after the grace
    for conn in [*waiting, *refused[HTTP_PER_BROWSER:], late]:
        conn.lose()
    assert h.factory.closing_refusals.count == 0


def test_a_trusted_proxy_is_not_counted_as_one_address() -> None:
    h = Harness(max_per_ip=2, max_handshaking_per_ip=2)
    site = make_site(h, trusted_proxies=parse_proxies(["10.0.0.1"])[0])
    proxied = [HTTPConn(h, site, peer="10.0.0.1") for _ in range(5)]
    assert not any(c.refused for c in proxied)
    # Each user's address is counted at the upgrade, from X-Forwarded-For.
    forwarded = {"X-Forwarded-For": "198.51.100.7"}
    assert proxied[0].upgrade(extra=forwarded)[0].startswith("HELLO ")
    assert proxied[1].upgrade(extra=forwarded)[0].startswith("HELLO ")
    assert proxied[2].upgrade(extra=forwarded) == [
        "ERROR server-full too many connections from 198.51.100.7", "BYE full"]
    # An untrusted peer is counted as itself.
    for _ in range(2 * HTTP_PER_BROWSER):
        assert HTTPConn(h, site, peer="10.0.0.2").refused is False
    assert HTTPConn(h, site, peer="10.0.0.2").refused


# -- --web-host ------------------------------------------------------------------


def test_a_request_for_another_host_gets_421_and_opens_no_websocket() -> None:
    h = Harness()
    site = make_site(h, hosts=("chat.example",))
    evil = HTTPConn(h, site)
    request, _ = ws.handshake(host="evil.example:8080", origin="http://evil.example:8080")
    evil.send(request)
    assert evil.transport.value().startswith(b"HTTP/1.1 421 Misdirected Request\r\n")
    assert len(h.factory.connections) == 0
    good = HTTPConn(h, site)
    assert good.upgrade(host="chat.example:8080")[0].startswith("HELLO ")


# -- what one connection's requests may cost ---------------------------------------


def responses(conn: HTTPConn) -> list[bytes]:
    """The status lines the connection got, in order."""
    return [line for line in conn.transport.value().split(b"\r\n")
            if line.startswith(b"HTTP/1.1 ")]


NOT_ALLOWED = b"HTTP/1.1 405 Method Not Allowed"
TOO_LARGE = b"HTTP/1.1 413 Content Too Large"


@pytest.mark.parametrize(("head", "status"), [
    # Twisted wrote a body over 100 kB to a temporary file, for --web-timeout.
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n", NOT_ALLOWED),
    (b"PUT /static/app.js HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n", NOT_ALLOWED),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n", TOO_LARGE),
    (b"GET /chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
     b"Expect: 100-continue\r\n", TOO_LARGE),
])
def test_a_request_with_a_body_is_refused_before_its_body_is_read(
    head: bytes, status: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    spooled: list[int] = []
    monkeypatch.setattr("twisted.web.http.tempfile.TemporaryFile",
                        lambda: spooled.append(1) or io.BytesIO())
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site)
    conn.send(head + b"\r\n" + b"1000\r\n" + b"x" * 200_000)
    assert responses(conn) == [status]  # no 100 Continue after it
    assert b"\r\nConnection: close\r\n" in conn.transport.value()
    assert b"\r\nX-Frame-Options: DENY\r\n" in conn.transport.value()
    assert conn.aborted and not spooled
    assert len(h.factory.connections) == 0  # not upgraded either
    # A TLS peer that never completes the close is aborted after the close grace.
    h.clock.advance(h.config.close_grace)
    assert conn.killed


def test_a_head_with_a_body_is_refused_without_a_body() -> None:
    """The answer to a HEAD carries no body, a refusal's included."""
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site)
    conn.send(b"HEAD /static/app.js HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    assert responses(conn) == [TOO_LARGE]
    assert conn.transport.value().endswith(b"\r\n\r\n"), conn.transport.value()
    assert conn.aborted


def test_a_request_without_a_body_is_answered_as_before() -> None:
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site)
    conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
              b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [r.split(b" ")[1] for r in responses(conn)] == [b"404", b"200"]
    assert not conn.aborted


# What a peer may send that is not a request twisted.web takes, each in one
# read: a request line that is not "METHOD URI VERSION" (then the blank line
# that ends its headers), and more header lines than twisted.web takes.
MALFORMED = [
    b"HELLO\r\n\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2's preface
    b"\x16\x03\x01\x00\x05hello\r\n\r\n",  # a TLS ClientHello, on a plain port
    b"GET / HTTP/1.1\r\n" + b"X:y\r\n" * 13000 + b"\r\n",  # 65 KB
]
BAD_REQUEST = b"HTTP/1.1 400 Bad Request"


@pytest.mark.parametrize("request_", MALFORMED, ids=["hello", "http2", "tls", "headers"])
def test_a_malformed_request_gets_one_400_and_the_rest_of_its_read_is_not_parsed(
        request_: bytes, logged: list[str]) -> None:
    """rev19-attack 1: the close that twisted.web's 400 starts waits for the
    peer to take the 400, which it has not at that moment (Twisted holds
    it until the reactor writes), and twisted.web parsed the rest of the
    read meanwhile: the blank line after a request line that is not one
    raised AttributeError ('_version'), an Unhandled Error traceback in
    the log, and each of 12,500 header lines past the 500th got one more
    400 (30 ms of the reactor).  Nothing more is parsed once the close has
    begun, a later read (TLS reads on for close_notify) included."""
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site, transport=HoldingTransport)
    conn.transport._tempDataLen = 1  # what is written waits in Twisted's buffer
    conn.send(request_)
    assert responses(conn) == [BAD_REQUEST]
    conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert responses(conn) == [BAD_REQUEST]
    assert logged == []
    conn.transport._tempDataLen = 0  # the peer took it: the close (FIN)
    h.clock.advance(0.1)
    assert conn.aborted and not conn.killed


@pytest.mark.parametrize(("requests", "answers", "closed"), [
    (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" * 3, [b"404"] * 3, False),
    (b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
     b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", [b"404"], True),
    (b"GET /nope HTTP/1.0\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n", [b"404"], True),
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
     [b"413"], True),
], ids=["pipelined", "connection-close", "http1.0", "body"])
def test_requests_in_one_read_are_answered_up_to_the_one_that_closes(
        requests: bytes, answers: list[bytes], closed: bool, logged: list[str]) -> None:
    """The requests of one read are answered up to the one whose answer
    closes the connection, and nothing after it, as with Twisted's own
    close, while the peer has not taken the answers yet.  A request refused
    for its body, the body in the same read, was also answered (200 after
    its 413): the rest of the read was dropped only after its parse."""
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site, transport=HoldingTransport)
    conn.transport._tempDataLen = 1
    conn.send(requests)
    assert re.findall(rb"HTTP/1\.[01] (\d+) ", conn.transport.value()) == answers
    assert conn.protocol.close_started is closed
    assert logged == []


class PairedTransport(HoldingTransport):
    """A L{HoldingTransport} over one end of a socket pair (its handle, as
    Twisted's TCP transport's is its socket): what the peer sends on the
    other end (L{peer}) waits there until it is read."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sock, self.peer = socket.socketpair()
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)

    def getHandle(self) -> socket.socket:
        return self.sock

    def unread(self) -> int:
        """Bytes the peer sent that wait to be read."""
        waiting = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, bytes(4))
        return int.from_bytes(waiting, sys.byteorder)

    def close_pair(self) -> None:
        self.sock.close()
        self.peer.close()


# The rest of a request over twisted.web's 500 header lines, sent after the
# server's read of its first part: 600 header lines, the 400 at the 501st.
FIRST_PART = b"GET / HTTP/1.1\r\n" + b"X:y\r\n" * 600
REST = b"X:y\r\n" * 100 + b"\r\n"


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_what_the_peer_sent_unread_is_dropped_before_the_close(tls: bool,
                                                               logged: list[str]) -> None:
    """note19 (left): a malformed request in two reads: the close waits for
    the peer to take its 400, reading stopped, and the second part waited
    unread in the kernel; Linux then closed with a reset (RST), and a peer
    reset before it has read its 400 may lose it.  The close drops what
    waits unread first, so that it is a FIN.  Not under TLS, whose raw
    bytes are TLS records (its close reads on for close_notify)."""
    h = Harness()
    conn = HTTPConn(h, make_site(h, timeout=30.0), transport=PairedTransport)
    transport = conn.transport
    try:
        if tls:
            directlyProvides(transport, ISSLTransport)
        transport._tempDataLen = 1  # the 400 waits for its peer
        conn.send(FIRST_PART)
        assert responses(conn) == [BAD_REQUEST]
        transport.peer.sendall(REST)
        h.clock.advance(1.0)
        assert not conn.aborted and transport.unread() == len(REST)
        transport._tempDataLen = 0  # taken: the close
        h.clock.advance(0.1)
        assert conn.aborted and not conn.killed
        assert transport.unread() == (len(REST) if tls else 0)
        assert logged == []
    finally:
        transport.close_pair()


def test_a_refused_upgrade_s_close_drops_what_waits_unread_too() -> None:
    """autobahn's close (a refused upgrade's, after its 400) is made so too."""
    h = Harness()
    conn = HTTPConn(h, make_site(h, timeout=30.0), transport=PairedTransport)
    transport = conn.transport
    try:
        transport._tempDataLen = 1
        conn.send(REFUSED_UPGRADES["no key"])
        assert responses(conn)[0].startswith(b"HTTP/1.1 400 ")
        transport.peer.sendall(REST)
        h.clock.advance(1.0)
        assert not conn.aborted and transport.unread() == len(REST)
        transport._tempDataLen = 0
        h.clock.advance(0.1)
        assert conn.aborted and not conn.killed and transport.unread() == 0
    finally:
        transport.close_pair()


@pytest.mark.parametrize(("rcvbuf", "left"), [
    (64 * 1024, 150_000 - UNREAD_DROPPED),  # the default: 128 KiB dropped
    (100_000, 0),  # twice --rcvbuf: 200,000
])
def test_a_close_drops_at_most_twice_rcvbuf_of_what_waits_unread(rcvbuf: int, left: int) -> None:
    """What the kernel may hold of it on TCP, 128 KiB at least; past it,
    the close is a reset as before."""
    h = Harness(rcvbuf=rcvbuf)
    conn = HTTPConn(h, make_site(h, timeout=30.0), transport=PairedTransport)
    transport = conn.transport
    try:
        transport._tempDataLen = 1
        conn.send(FIRST_PART)
        transport.peer.sendall(b"x" * 150_000)
        assert transport.unread() == 150_000
        transport._tempDataLen = 0
        h.clock.advance(0.1)
        assert conn.aborted and transport.unread() == left
    finally:
        transport.close_pair()


def test_requests_are_not_logged() -> None:
    # Each request wrote an access-log line, its User-Agent included: one
    # kept-alive connection pipelining 404s with an 8 KB User-Agent grew
    # the log by 132 MB in 10 s (twistd keeps every rotated file).
    h = Harness()
    site = make_site(h, timeout=30.0)
    site.logFile = log = io.StringIO()
    conn = HTTPConn(h, site)
    conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"A" * 8000 + b"\r\n\r\n")
    assert responses(conn) == [b"HTTP/1.1 404 Not Found"]
    assert log.getvalue() == ""


def test_a_connection_answers_a_bounded_number_of_requests() -> None:
    # A pipeliner got every request answered on one connection, held for
    # it when it did not read.
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site)
    conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" * (MAX_REQUESTS + 5))
    assert responses(conn) == [b"HTTP/1.1 404 Not Found"] * MAX_REQUESTS
    last = conn.transport.value().rpartition(b"HTTP/1.1 404 ")[2]
    assert b"\r\nConnection: close\r\n" in last.partition(b"\r\n\r\n")[0]
    assert conn.aborted


# Names under /static/ that no file has, however they are spelled: each is a
# plain 404, and nothing is logged.  A NUL (valid UTF-8) reached os.stat,
# whose ValueError twisted.web answered with a 500 and logged, traceback and
# all, at critical level, past --log-level and the repeats limiter.
ODD_STATIC_NAMES = [
    b"a%00b", b"%00", b"a%00b/c", b"app.js%00.txt", b"app.js%00",  # NUL
    b"%ff", b"%c0%ae%c0%ae", b"%ed%a0%80",  # not UTF-8 (overlong, a surrogate)
    b"a%2fb", b"%2e%2e", b"%2e%2e%2fconfig.py", b"..%2f..%2fsite.py",  # / and .. decoded
    b"..%5csite.py", b"a%5cb",  # backslashes
    b"x" * 300, b"x" * 5000, b"%41" * 300, (b"x" * 200 + b"/") * 10,  # over NAME_MAX, PATH_MAX
    b"%01%1b%7f", b"app.js%0a", b"%0d%0aX-Injected:%20yes", b"%e2%80%ae",  # control, bidi
    b"app.js/x", b"app.js/%00", b"style.css/..%2fapp.js",  # under a file
]


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
@pytest.mark.parametrize("name", ODD_STATIC_NAMES)
def test_an_odd_static_name_is_a_plain_404_and_logs_nothing(
        method: bytes, name: bytes, logged: list[str]) -> None:
    h = Harness()
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site)
    conn.send(method + b" /static/" + name + b" HTTP/1.1\r\nHost: x\r\n\r\n"
              + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    # (the static 404's body ends without a line end)
    assert re.findall(rb"HTTP/1\.1 [^\r]*", conn.transport.value()) == [
        b"HTTP/1.1 404 Not Found"] * 2
    assert logged == []
    assert not conn.aborted  # the connection goes on


@pytest.mark.parametrize("path", [b"/static", b"/static/", b"/static/?x=1", b"/static/index.html",
                                  b"/static/%69ndex.html"])
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_the_static_directory_and_the_page_template_are_not_found(
        method: bytes, path: bytes, logged: list[str]) -> None:
    """left16s: /static was a 302 to /static/, and /static/ (as
    /static/index.html) the page's raw template, without the server's flood
    rule (--flood-rate 2 here; / has it).  Each is a plain 404, as /static/nope
    is; the files and the page are as they were."""
    h = Harness(flood_rate=2.0)
    site = make_site(h, timeout=30.0)
    conn = HTTPConn(h, site)
    conn.send(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = conn.transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n"), head
    assert b"Location:" not in head and b"data-flood-rate" not in body
    assert logged == []
    # (a HEAD of the file: its GET's body comes from a producer, which this
    # transport does not run)
    for request, sign in ((b"HEAD /static/app.js", b"text/javascript"),
                          (b"GET /", b'data-flood-rate="2"')):
        conn.transport.clear()
        conn.send(request + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
        assert sign in conn.transport.value()


@pytest.mark.parametrize(("path", "status"), [
    (b"/static/nope.js", b"404"), (b"/static", b"404"), (b"/chat", b"426"),
    (b"/chat/x", b"426"), (b"/nope", b"404"), (b"/", b"200"),
])
def test_a_head_is_answered_with_its_get_s_headers_and_logs_nothing(
        path: bytes, status: bytes, logged: list[str]) -> None:
    """Twisted left the body a resource returned to a HEAD out with a line
    quoting the request, URL and all, for each such request."""
    h = Harness()
    site = make_site(h, timeout=30.0)
    got = {}
    for method in (b"GET", b"HEAD"):
        conn = HTTPConn(h, site)
        conn.send(method + b" " + path + b"?" + b"A" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = conn.transport.value().partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 " + status + b" ")
        got[method] = re.search(rb"\r\nContent-Length: (\d+)\r\n", head + b"\r\n")
        if method == b"HEAD":
            assert body == b""
    assert logged == []
    length = got[b"GET"]
    if path != b"/nope":  # (its GET is chunked)
        assert length is not None and got[b"HEAD"] is not None
        assert got[b"HEAD"][1] == length[1]


def test_http_connections_and_their_refusals_have_their_own_metrics() -> None:
    """HTTP connections count against --max-clients: they show as
    chat_connections{state="http"} (every other gauge read low while page
    loads filled the server), and their refusals as
    chat_disconnects_total{reason="refused_http"}, apart from refused chat
    connections; an upgrade moves the connection to the chat's gauges."""
    from tests.test_metrics import value

    h = Harness(max_clients=3)
    site = make_site(h)
    page, socket = HTTPConn(h, site), HTTPConn(h, site)
    assert value(h, "chat_connections", state="http") == 2
    assert value(h, "chat_connections", state="handshake") == 0
    chat = h.connect()  # the third connection: a chat one
    assert HTTPConn(h, site).refused  # the fourth, over --max-clients
    refused_chat = h.connect()
    assert value(h, "chat_disconnects_total", reason="refused_http") == 1
    assert value(h, "chat_disconnects_total", reason="refused") == 1
    assert refused_chat.take()[-1].startswith("BYE full")
    socket.upgrade()
    assert value(h, "chat_connections", state="http") == 1
    assert value(h, "chat_connections", state="handshake") == 2  # chat, the WebSocket
    page.lose()
    chat.drop()
    assert value(h, "chat_connections", state="http") == 0


def test_http_connections_closed_at_their_deadline_or_for_room_are_counted() -> None:
    """chat_http_closed_total: an HTTP connection the server closed before
    its upgrade, at --web-timeout (timeout) or to make room in a full
    handshake pool (evicted); a chat connection evicted so is a
    disconnect (full), not one of these; one that closes itself is neither."""
    from tests.test_metrics import value

    h = Harness(max_handshaking=2)
    site = make_site(h, timeout=30.0)
    slow, oldest = HTTPConn(h, site, "192.0.2.1"), HTTPConn(h, site, "192.0.2.1")
    h.clock.advance(30)
    assert slow.killed and oldest.killed
    slow.lose()
    oldest.lose()
    assert value(h, "chat_http_closed_total", reason="timeout") == 2
    HTTPConn(h, site, "192.0.2.2").lose()  # closed by its peer: not counted
    evicted = HTTPConn(h, site, "192.0.2.3")
    h.connect(host="192.0.2.4")
    h.connect(host="192.0.2.5")  # the pool is full: the HTTP connection goes
    assert evicted.aborted
    evicted.lose()
    assert value(h, "chat_http_closed_total", reason="evicted") == 1
    h.connect(host="192.0.2.6")  # a chat connection goes
    assert value(h, "chat_http_closed_total", reason="evicted") == 1
    assert value(h, "chat_disconnects_total", reason="full") == 0  # not lost yet
    assert value(h, "chat_http_closed_total", reason="timeout") == 2


def test_websockets_are_told_apart_from_chat_port_connections() -> None:
    """chat_accepted_connections_total{port="web"} counts each WebSocket
    accepted at its upgrade (its HTTP side is not a chat connection), and
    chat_websockets those open, of chat_connections."""
    from tests.test_metrics import value

    h = Harness(max_per_ip=1, max_handshaking_per_ip=1)
    site = make_site(h)
    browser = HTTPConn(h, site)
    chat = h.user("tcp")
    assert value(h, "chat_accepted_connections_total", port="web") == 0
    assert browser.upgrade()[0].startswith("HELLO ")
    assert value(h, "chat_accepted_connections_total", port="web") == 1
    assert value(h, "chat_accepted_connections_total", port="chat") == 1
    assert value(h, "chat_websockets") == 1
    assert value(h, "chat_connections", state="handshake") == 1
    assert HTTPConn(h, site).upgrade() == [  # over --max-per-ip: refused, not accepted
        "ERROR server-full too many connections from 192.0.2.1", "BYE full"]
    assert value(h, "chat_accepted_connections_total", port="web") == 1
    assert value(h, "chat_websockets") == 1
    browser.lose()
    assert value(h, "chat_websockets") == 0
    chat.drop()
    assert value(h, "chat_accepted_connections_total", port="chat") == 1
