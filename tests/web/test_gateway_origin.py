"""The WebSocket's Origin check by scheme: an http page and an https one
on one host are two origins, told apart by the way this port serves."""

from __future__ import annotations

import pytest
from twisted.internet.address import UNIXAddress

from tests.harness import Harness
from tests.web.test_gateway import TCPTransport, WsConn, make_gateway
from tests.web.test_gateway_records import TLSTransport, no_channel_id
from twisted_chat.web.config import parse_proxies

__all__ = ["no_channel_id"]  # autouse: autobahn asks a TLS transport for tls-unique


@pytest.mark.parametrize(("transport", "origin", "opened"), [
    (TCPTransport, "http://chat.example:8080", True),
    (TCPTransport, "https://chat.example:8080", False),
    (TLSTransport, "https://chat.example:8080", True),
    (TLSTransport, "http://chat.example:8080", False),
])
def test_the_origin_s_scheme_is_the_page_s(transport: type[TCPTransport], origin: str,
                                           opened: bool) -> None:
    """A page on http://host opened https://host's WebSocket, and the
    reverse (the scheme was not compared); an ssl: port serves https."""
    h = Harness()
    conn = WsConn(h, make_gateway(h), host="chat.example:8080", origin=origin,
                  transport=transport)
    assert conn.opened is opened
    assert opened or conn.response.startswith("HTTP/1.1 403")


@pytest.mark.parametrize("origin", ["https://chat.example", "http://chat.example"])
def test_behind_a_trusted_proxy_the_scheme_is_not_compared(origin: str) -> None:
    """A trusted proxy may end TLS (docs/web.md's nginx): the page is https
    while this port sees http.  Any other peer is served as it connects."""
    h = Harness()
    gateway = make_gateway(h, trusted_proxies=parse_proxies(["127.0.0.1"])[0])
    assert WsConn(h, gateway, host="chat.example", origin=origin).opened
    direct = WsConn(h, gateway, peer="127.0.0.2", host="chat.example", origin=origin)
    assert direct.opened is origin.startswith("http:")


@pytest.mark.parametrize(("proto", "origin", "opened"), [
    ("https", "https://chat.example", True),
    ("https", "http://chat.example", False),
    ("http", "http://chat.example", True),
    ("http", "https://chat.example", False),
    ("HTTPS", "https://chat.example", True),
    ("wss", "http://chat.example", False),
    ("https, http", "http://chat.example", False),  # the browser reached the first
    ("gopher", "http://chat.example", False),
    ("", "https://chat.example", True),  # blank: as without one
])
def test_a_trusted_proxy_s_forwarded_proto_is_the_page_s_scheme(
        proto: str, origin: str, opened: bool) -> None:
    """A proxy that says how the page was served (X-Forwarded-Proto) has
    the Origin's scheme compared with it: without, an http page opened the
    WebSocket of the https one it proxies (the scheme was not compared)."""
    h = Harness()
    gateway = make_gateway(h, trusted_proxies=parse_proxies(["127.0.0.1"])[0])
    conn = WsConn(h, gateway, host="chat.example", origin=origin,
                  extra={"X-Forwarded-Proto": proto})
    assert conn.opened is opened
    assert opened or conn.response.startswith("HTTP/1.1 403")


def test_only_a_trusted_proxy_s_forwarded_proto_is_read(logged: list[str]) -> None:
    """Any other peer's X-Forwarded-Proto is not: it is served as it
    connects.  A refusal for the proxy's scheme says what it sent."""
    h = Harness()
    gateway = make_gateway(h, trusted_proxies=parse_proxies(["127.0.0.1"])[0])
    says_https = {"X-Forwarded-Proto": "https"}
    assert not WsConn(h, gateway, peer="127.0.0.2", host="chat.example",
                      origin="https://chat.example", extra=says_https).opened
    assert WsConn(h, gateway, peer="127.0.0.2", host="chat.example",
                  origin="http://chat.example", extra=says_https).opened
    assert not WsConn(h, gateway, host="chat.example", origin="http://chat.example",
                      extra=says_https).opened
    assert logged[-1] == ("WebSocket upgrade from 127.0.0.1 refused (403): origin "
                          "'http://chat.example' not allowed (X-Forwarded-Proto 'https')")


@pytest.mark.parametrize(("origin", "opened"), [
    ("https://chat.example", True),
    ("http://chat.example", True),
    ("https://chat.example:8443", False),
    ("https://elsewhere.example", False),
])
def test_a_unix_socket_s_peer_has_the_scheme_not_compared(origin: str, opened: bool) -> None:
    """No browser reaches a UNIX socket: a proxy in front may end TLS, so
    the page's scheme is not known there (an https page was refused as if
    it were http).  Its host and port still are compared, and the peer's
    X-Forwarded-Proto is not read (it is not trusted)."""
    h = Harness()
    gateway = make_gateway(h, trusted_proxies=parse_proxies(["127.0.0.1"])[0])
    says_http = {"X-Forwarded-Proto": "http"}
    conn = WsConn(h, gateway, peer=UNIXAddress(None), host="chat.example", origin=origin,
                  extra=says_http)
    assert conn.opened is opened
    assert opened or conn.response.startswith("HTTP/1.1 403")


@pytest.mark.parametrize(("proto", "origin", "opened"), [
    ("https", "https://chat.example", True),
    ("https", "http://chat.example", False),
    ("http", "https://chat.example", False),
    (None, "https://chat.example", True),  # without one: not compared
])
def test_with_trust_proxy_unix_its_forwarded_proto_is_the_page_s_scheme(
        proto: str | None, origin: str, opened: bool) -> None:
    """--trust-proxy unix: makes a UNIX socket's peer a trusted proxy: its
    X-Forwarded-Proto is read as an IP proxy's is."""
    h = Harness()
    gateway = make_gateway(h, trust_unix=True)
    extra = {} if proto is None else {"X-Forwarded-Proto": proto}
    conn = WsConn(h, gateway, peer=UNIXAddress(None), host="chat.example", origin=origin,
                  extra=extra)
    assert conn.opened is opened
    assert opened or conn.response.startswith("HTTP/1.1 403")
