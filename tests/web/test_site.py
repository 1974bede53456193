"""
The web client's HTTP side (the real server: headers, page, files), the
rules without a network (origin, X-Forwarded-For), and makeService's
--web, --web-origin and --trust-proxy on a MemoryReactor.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage

from tests.serverproc import LOOPBACK
from tests.test_service import ThreadedMemoryReactor, options
from tests.web.webserver import WebServer, served
from tests.web.wsframes import WsClient
from twisted_chat import wire
from twisted_chat.client import render
from twisted_chat.client.liveness import Liveness
from twisted_chat.client.lobbyview import HELD_TEXT
from twisted_chat.client.login import Login
from twisted_chat.client.main import DEFAULT_TIMEOUT
from twisted_chat.client.pairing import Pairing
from twisted_chat.client.roster import Roster
from twisted_chat.server.accounts.login import (
    ADDRESS_BUSY_TEXT,
    SERVER_BUSY_TEXT,
    _too_many_hashes,
)
from twisted_chat.server.accounts.loginlimits import LoginLimits
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.service import makeService
from twisted_chat.web.config import (
    client_host,
    host_allowed,
    max_message_for,
    origin_allowed,
    parse_origin,
    parse_proxies,
    parse_web_host,
    split_host_port,
    trusted,
)
from twisted_chat.web.site import STATIC, WebSite, render_page
from twisted_chat.wire import BAD_CHARS


def get(web: WebServer, path: str, host: str = "chat.example:8080") -> tuple[str, bytes]:
    """One GET to the real server; the head (status line and headers) and body."""
    connection = http.client.HTTPConnection(LOOPBACK, web.web_port, timeout=5)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        head = f"HTTP/1.1 {response.status}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in response.getheaders())
        return head, response.read()
    finally:
        connection.close()


def header(head: str, name: str) -> str:
    for line in head.split("\r\n")[1:]:
        key, _, value = line.partition(": ")
        if key.lower() == name.lower():
            return value
    raise AssertionError(f"no {name} in {head}")


@pytest.mark.e2e
def test_security_headers_on_every_response(web: WebServer) -> None:
    for path in ["/", "/static/app.js", "/static/style.css", "/nope", "/static/nope.js",
                 "/chat", "/chat?redirect=https%3A%2F%2Fevil.example%2F"]:
        head, _ = get(web, path)
        assert "autobahn" not in head.lower(), head
        csp = header(head, "Content-Security-Policy")
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        # Its own WebSocket only.
        assert directives["connect-src"] == (
            "'self' ws://chat.example:8080 wss://chat.example:8080")
        assert header(head, "X-Content-Type-Options") == "nosniff"
        assert header(head, "X-Frame-Options") == "DENY"


@pytest.mark.e2e
def test_the_websocket_upgrade_sends_each_header_once(web: WebServer) -> None:
    """The 101 carries the security headers, each once (the gateway's
    onConnect returned them again, and autobahn wrote both), and no
    Server header."""
    client = WsClient(web.web_port)
    try:
        names = [line.partition(":")[0].lower() for line in client.head.split("\r\n")[1:]]
    finally:
        client.close()
    assert len(names) == len(set(names)), client.head
    assert {"content-security-policy", "x-content-type-options", "x-frame-options",
            "referrer-policy", "sec-websocket-accept"} <= set(names), client.head
    assert "server" not in names
    # Made once for every upgrade, without its Host (docs/web.md, "Security"
    # says so: a CSP on a 101 has no effect).
    assert "connect-src 'self';" in header(client.head, "Content-Security-Policy")


@pytest.mark.e2e
def test_no_response_names_the_server_s_software(web: WebServer) -> None:
    """No Server header (Twisted's says TwistedWeb and its version): not
    on the page, a file, a 404, nor the 426 of /chat without an upgrade."""
    for path in ["/", "/static/app.js", "/nope", "/chat"]:
        head, _ = get(web, path)
        assert "\r\nserver:" not in head.lower(), head
        assert "twisted" not in head.lower(), head


@pytest.mark.e2e
def test_the_websocket_path_without_upgrade_is_426_from_the_site(web: WebServer) -> None:
    """Not autobahn's status page (no security headers, its version in
    Server:, a ?redirect= that redirects anywhere): the site's 426."""
    head, body = get(web, "/chat?redirect=https%3A%2F%2Fevil.example%2F")
    assert head.startswith("HTTP/1.1 426\r\n"), head
    assert header(head, "Upgrade") == "websocket"
    assert b"WebSocket" in body and b"Autobahn" not in body
    assert "Location" not in head


@pytest.mark.e2e
def test_a_strange_host_header_is_not_put_in_the_policy(web: WebServer) -> None:
    head, _ = get(web, "/", host="evil.example; script-src *")
    csp = header(head, "Content-Security-Policy")
    assert "evil" not in csp and "connect-src 'self';" in csp


@pytest.mark.e2e
def test_web_host_answers_only_its_names(tmp_path: Path) -> None:
    server = WebServer(tmp_path, "--web-host", "chat.example", "--web-host", "127.0.0.1")
    with served(server) as web:
        for host in ["chat.example", f"chat.example:{web.web_port}", "CHAT.example.",
                     f"127.0.0.1:{web.web_port}"]:
            assert get(web, "/", host)[0].startswith("HTTP/1.1 200"), host
        for path in ["/", "/static/app.js", "/nope", "/chat"]:
            head, body = get(web, path, f"evil.example:{web.web_port}")
            assert head.startswith("HTTP/1.1 421"), (path, head)
            assert header(head, "X-Frame-Options") == "DENY"
            assert b"host name" in body


@pytest.mark.e2e
def test_page_and_static_files(web: WebServer) -> None:
    head, body = get(web, "/")
    assert head.startswith("HTTP/1.1 200")
    assert header(head, "Content-Type") == "text/html; charset=utf-8"
    assert body == (STATIC / "index.html").read_bytes()
    head, body = get(web, "/static/app.js")
    assert header(head, "Content-Type") == "text/javascript; charset=utf-8"
    assert body == (STATIC / "app.js").read_bytes()
    assert get(web, "/nope")[0].startswith("HTTP/1.1 404")
    assert get(web, "/static/../service.py")[0].split()[1] in ("400", "404")


@pytest.mark.e2e
def test_the_page_and_its_files_are_revalidated_on_every_use(web: WebServer) -> None:
    # Without Cache-Control a browser reuses them for a tenth of their age
    # without asking: an upgraded server kept serving the old script.
    for path in ["/", "/static/app.js", "/static/style.css", "/static/favicon.svg"]:
        head, _ = get(web, path)
        assert head.startswith("HTTP/1.1 200"), (path, head)
        assert header(head, "Cache-Control") == "no-cache", path
    # Revalidated: unchanged, a 304 without the body.
    head, _ = get(web, "/static/app.js")
    connection = http.client.HTTPConnection(LOOPBACK, web.web_port, timeout=5)
    try:
        connection.request("GET", "/static/app.js",
                           headers={"If-Modified-Since": header(head, "Last-Modified")})
        response = connection.getresponse()
        assert response.status == 304 and response.read() == b""
    finally:
        connection.close()


@pytest.mark.e2e
def test_the_page_carries_the_servers_flood_rule_and_line_limit(tmp_path: Path) -> None:
    # The page paces its own lines by it (docs/web.md, "Flood control and
    # the user list"), and sends no line over --max-line; the file itself
    # has the defaults.
    with served(WebServer(tmp_path, "--flood-rate", "2.5", "--flood-burst", "7",
                          "--max-line", "1024")) as web:
        head, body = get(web, "/")
    assert head.startswith("HTTP/1.1 200")
    assert header(head, "Content-Type") == "text/html; charset=utf-8"
    html = (STATIC / "index.html").read_bytes()
    assert body == html.replace(
        b'data-flood-rate="10" data-flood-burst="20" data-max-line="4096"',
        b'data-flood-rate="2.5" data-flood-burst="7" data-max-line="1024"', 1)
    assert body != html


def test_the_page_file_has_the_default_flood_rule() -> None:
    html = (STATIC / "index.html").read_bytes()
    config = ServerConfig()
    assert render_page(html, config.flood_rate, config.flood_burst, config.max_line) == html
    assert render_page(html, 0.0, 1, 512).count(
        b'data-flood-rate="0" data-flood-burst="1" data-max-line="512"') == 1
    with pytest.raises(ValueError, match="data-max-line"):
        render_page(b"<!DOCTYPE html>\n<html lang=\"en\">\n", 10.0, 20, 4096)


@pytest.mark.e2e
def test_a_page_load_fits_one_connection_and_ranges_are_ignored(web: WebServer) -> None:
    connection = http.client.HTTPConnection(LOOPBACK, web.web_port, timeout=5)
    try:
        for path in ["/", "/static/app.js", "/static/style.css", "/static/favicon.svg"]:
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            assert response.getheader("Connection") is None  # kept alive
        # 300 ranges of the whole file were 300 copies of it (12 MB for a
        # 1 kB request); 1500 a ValueError in Twisted, logged as critical.
        app = (STATIC / "app.js").read_bytes()
        for ranges in ["0-9", ",".join(["0-"] * 300), ",".join(["0-"] * 1500)]:
            connection.request("GET", "/static/app.js", headers={"Range": f"bytes={ranges}"})
            response = connection.getresponse()
            assert (response.status, response.getheader("Accept-Ranges")) == (200, "none")
            assert response.read() == app
    finally:
        connection.close()


def test_the_page_loads_nothing_from_elsewhere_and_uses_no_inline_script() -> None:
    html = (STATIC / "index.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # inline script
    assert not re.search(r"\son[a-z]+\s*=", html)  # inline event handlers
    assert not re.search(r"\sstyle\s*=", html)
    js = (STATIC / "app.js").read_text()
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js
    assert "document.write" not in js and "eval(" not in js


def test_the_pages_waits_for_the_server_are_the_terminal_clients() -> None:
    """app.js cannot import liveness.py: its copies of the terminal client's
    numbers (docs/web.md, "When the server does not answer") are read from
    it as it is. A PING once a line has had no answer for ANSWER_WAIT, the
    user told PING_WAIT later; --timeout for a connection to hear from the
    server."""
    js = (STATIC / "app.js").read_text()
    found = dict(re.findall(r'\n  const (\w+) = seconds\("\w+", ([0-9.]+)\);', js))
    # The roster poll's base is the page's own (docs/web.md, "Flood control
    # and the user list"): the terminal client polls no list.
    assert found.pop("ROSTER_BASE") == "30"
    # The wait after too many failed logins is the server's: a nick gets
    # one more try from an address (or from all) once a period has passed.
    limits = LoginLimits()
    assert float(found.pop("LOGIN_COOLDOWN")) == max(
        limits.nick_every, limits.nick_total_every, limits.address_every)
    assert found == {"ANSWER_WAIT": "5", "PING_WAIT": "5", "HANDSHAKE_TIMEOUT": "15"}
    assert float(found["ANSWER_WAIT"]) == Liveness.ANSWER_WAIT
    assert float(found["PING_WAIT"]) == Liveness.PING_WAIT
    assert float(found["HANDSHAKE_TIMEOUT"]) == DEFAULT_TIMEOUT


def test_the_pages_tries_of_a_nick_not_looked_at_are_the_terminal_clients() -> None:
    """app.js cannot import login.py: its copies of the terminal client's
    numbers for a NICK the server did not look at (ERROR flood, "try again
    in N s") are read from it as they are."""
    js = (STATIC / "app.js").read_text()
    found = dict(re.findall(r"^  const FLOOD_(\w+) = (\d+);$", js, re.MULTILINE))
    assert {name: float(value) for name, value in found.items()} == {
        "DELAY": Login.FLOOD_DELAY, "WAIT_MAX": Login.FLOOD_WAIT_MAX,
        "TRIES": Login.FLOOD_TRIES}


def test_the_pages_bounds_on_what_a_server_sends_are_the_terminal_clients(
) -> None:
    """app.js's copies of the terminal client's bounds on what a hostile
    server sends (the invitations kept, the people in the user list, the
    characters of a join, a leave or an invitation's notice) are read from
    it as they are."""
    js = (STATIC / "app.js").read_text()
    found = dict(re.findall(r"^  const (INVITES_MAX|HELD_TEXT|USERS_MAX) = (\d+);$", js,
                            re.MULTILINE))
    assert found == {"INVITES_MAX": str(Pairing.INVITES_MAX), "HELD_TEXT": str(HELD_TEXT),
                     "USERS_MAX": str(Roster.USERS_MAX)}
    # One copy on the page: index.html's note on the list's bound is app.js's.
    html = (STATIC / "index.html").read_text()
    assert f"{Roster.USERS_MAX:,}" not in html and str(Roster.USERS_MAX) not in html


def test_the_pages_forbidden_characters_are_wires() -> None:
    """app.js cannot import wire.py: its UNSENDABLE, the characters it drops
    from a message and refuses in a password, is read from it as it is.  A
    class of only \\xHH and \\uHHHH escapes means the same to Python's re as
    to JavaScript, so it is compiled here and must match exactly the code
    points L{BAD_CHARS} does (test_e2e_browser.py also runs it in Chromium,
    inside passwordProblem)."""
    js = (STATIC / "app.js").read_text()
    found = re.findall(r"\n  const UNSENDABLE = /(.*)/g;\n", js)
    assert len(found) == 1, "app.js has no UNSENDABLE, or more than one"
    assert re.fullmatch(r"\[(?:\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|-)+\]", found[0]), found[0]
    page = re.compile(found[0])
    codes = range(0x110000)
    assert [c for c in codes if page.match(chr(c))] == [
        c for c in codes if BAD_CHARS.match(chr(c))]


def test_the_pages_unavailable_for_a_message_is_the_terminal_clients() -> None:
    """app.js cannot import render.py: its PAIR_CHANGED_RE, the ERROR
    unavailable texts that answer a MSG (and settle it), is read from it as
    it is and must pick exactly the texts the terminal client's
    L{render.message_refused} does: a cluster's pair-change texts, not the
    store's "not sent" or "lost", which may answer any command."""
    js = (STATIC / "app.js").read_text()
    page = re.compile(_page_constant(js, "PAIR_CHANGED_RE"))
    texts = [
        "not sent: it was meant for the lobby and you were paired with bob when it came to "
        "be delivered; send it again",
        "not sent: you were not paired with bob when it came to be delivered (the pair "
        "ended, or the chat's store lost it); send it again",
        "not sent: you were no longer paired with bob when it came to be delivered (the "
        "pair ended while your password was checked); send it again",
        "not sent: the chat's store refused to store it; send it again in a moment",
        "not sent: the chat's store is out of reach and did not take it within 10 seconds; "
        "send it again in a moment",
        "not sent: too many commands are waiting for the chat's store on this server; send "
        "it again in a moment",
        "lost: the chat's store lost it after taking it, so it has no effect (some may have "
        "seen it before the loss); send it again",
        "the accounts cannot be reached now; send it again in a moment",
        "a text that says: not sent: it was meant for the lobby and you were paired with bob",
    ]
    picked = [bool(page.search(text)) for text in texts]
    assert picked == [render.message_refused("unavailable", text) is not None
                      for text in texts]
    assert picked == [True] * 3 + [False] * 6


def _page_constant(js: str, name: str) -> str:
    """What app.js's C{const name} holds, a regex's pattern or a string's
    text (one without escapes, so that it reads the same in Python)."""
    found = re.findall(rf'\n  const {name} = (/.*/|"[^"\\]*");\n', js)
    assert len(found) == 1, f"app.js has no {name}, or more than one"
    return str(found[0][1:-1])


def test_the_pages_words_for_answers_without_a_code_are_wires() -> None:
    """chat/1 has no code of its own for some answers the clients must tell
    apart, so both know them by the server's words, which wire.py holds
    (the server writes them from there, the terminal client matches them
    from there).  app.js cannot import wire.py: its copies are read from it
    as they are and must pick the texts that begin with wire.py's words."""
    js = (STATIC / "app.js").read_text()
    assert _page_constant(js, "NOT_SENT") == wire.NOT_SENT
    assert _page_constant(js, "ACCOUNTS_UNAVAILABLE") == wire.ACCOUNTS_UNAVAILABLE
    pair_changed = re.compile(_page_constant(js, "PAIR_CHANGED_RE"))
    for words in wire.PAIR_CHANGED:
        text = f"{words}bob when it came to be delivered; send it again"
        assert pair_changed.search(text), text
        assert render.message_refused("unavailable", text) is not None, text
    assert pair_changed.search(wire.meant_for_lobby("bob"))
    behind = re.compile(_page_constant(js, "BEHIND_RE"))
    for what, nick in ((wire.PRIVATE_MESSAGES, "bob"), ("invitations", None)):
        text = f"bob is not reading fast enough to take more {what}; try again later"
        found = behind.search(text)
        assert (found and found.group(1)) == render.behind("busy", text) == nick, text


def test_the_pages_password_work_refusals_are_the_servers() -> None:
    """app.js's PASSWORD_FLOOD_RE, the ERROR flood texts that answer (and
    end) a REGISTER or PASSWD, is read from it as it is: it must pick each
    text the server refuses password work with (they begin with
    wire.PASSWORD_WORK_REFUSED's words), and not the flood of lines nor the
    user list's price, the other ERROR flood texts an online connection
    gets."""
    js = (STATIC / "app.js").read_text()
    page = re.compile(_page_constant(js, "PASSWORD_FLOOD_RE"))
    for words in wire.PASSWORD_WORK_REFUSED:
        assert page.search(f"{words}; send PASSWD again in a moment"), words
    for verb in ("REGISTER", "PASSWD"):
        for text in (ADDRESS_BUSY_TEXT.format(verb=verb), SERVER_BUSY_TEXT.format(verb=verb),
                     _too_many_hashes(verb, 41.5, LoginLimits()).text):
            assert page.search(text), text
    for text in ("slow down: at most 10 lines per second (bursts of 20); lines are being "
                 "dropped",
                 "slow down: USERS costs one line per 4096 bytes of the user list (9000 "
                 "bytes now), at most 20, at 10 lines per second; try again in a moment",
                 "a text that says: the server is busy"):
        assert not page.search(text), text


# -- rules without a network ----------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "a.example", (), True),  # not a browser
        ("http://a.example", "a.example", (), True),
        ("https://a.example", "a.example:443", (), True),
        ("http://a.example:8080", "a.example:8080", (), True),
        ("http://a.example:8081", "a.example:8080", (), False),
        ("http://evil.example", "a.example", (), False),
        ("null", "a.example", (), False),
        ("http://a.example.evil.example", "a.example", (), False),
        ("https://b.example", "a.example", ("https://b.example",), True),
        ("https://b.example", "a.example", ("https://B.example/",), True),
        ("https://c.example", "a.example", ("*",), True),
        # Behind a proxy on a port that is not the scheme's (rev14-ops LOW 4):
        # with nginx's $http_host the Host keeps the port, and matches; its
        # $host drops it, and the page's own WebSocket was refused (403).
        ("https://chat.example.org:8443", "chat.example.org:8443", (), True),
        ("https://chat.example.org:8443", "chat.example.org", (), False),
        ("http://[::1]:8080", "[::1]:8080", (), True),
        ("http://[::1]:8080", "[::1]:8081", (), False),
        # A Host or an Origin that does not parse: not allowed.  (rev15-sec 4:
        # such a Host raised here, a 500; the gateway now refuses it first,
        # host_well_formed.  Such an Origin never gets here: autobahn
        # refuses it with a 400.)
        ("http://x", "[", (), False),
        ("http://x", "x]", (), False),
        ("http://[", "x", (), False),
        ("http://x:abc", "x", (), False),
    ],
)
def test_origin_rule(origin: str | None, host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok


def test_the_nginx_example_passes_the_host_with_its_port() -> None:
    """docs/web.md's nginx example passed $host, which has no port: behind
    nginx on a port that is not 443 every WebSocket was refused (rev14-ops
    LOW 4).  $http_host is the Host the browser sent, port included."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "web.md").read_text()
    example = text[text.index("```nginx"):]
    example = example[:example.index("\n```")]
    assert "proxy_set_header Host $http_host;" in example
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in example  # the Origin's scheme
    assert "$host" not in example


@pytest.mark.parametrize(
    "host, hosts, ok",
    [
        (None, (), True),
        ("evil.example:8080", (), True),  # no --web-host: any
        ("chat.example", ("chat.example",), True),
        ("chat.example:8080", ("chat.example",), True),
        ("Chat.Example.:8080", ("chat.example",), True),
        ("evil.example:8080", ("chat.example",), False),
        ("chat.example.evil.example", ("chat.example",), False),
        (None, ("chat.example",), False),
        ("", ("chat.example",), False),
        ("127.0.0.1:8080", ("127.0.0.1",), True),
        ("[::1]:8080", ("::1",), True),
        ("[::1]", ("::1",), True),
        ("[::1]:8080", ("chat.example",), False),
        ("chat.example:8080:9", ("chat.example",), False),
    ],
)
def test_host_rule(host: str | None, hosts: tuple[str, ...], ok: bool) -> None:
    assert host_allowed(host, hosts) is ok


@pytest.mark.parametrize("given, kept", [
    ("chat.example", "chat.example"), ("Chat.Example.", "chat.example"),
    ("localhost", "localhost"), ("192.0.2.7", "192.0.2.7"), ("[::1]", "::1"), ("::1", "::1"),
])
def test_web_host_values(given: str, kept: str) -> None:
    assert parse_web_host(given) == kept
    assert options("--web-host", given)["web-hosts"] == [kept]


@pytest.mark.parametrize("value", ["", "chat.example:8080", "http://chat.example", "a b",
                                   "*.example", "-bad.example"])
def test_a_bad_web_host_is_a_usage_error(value: str) -> None:
    with pytest.raises(usage.UsageError, match="--web-host"):
        options("--web-host", value)


def test_forwarded_for_rule() -> None:
    proxies = parse_proxies(["10.0.0.0/8, 127.0.0.1"])[0]
    assert client_host("192.0.2.1", "203.0.113.5", proxies) == "192.0.2.1"
    assert client_host("10.1.2.3", "203.0.113.5", proxies) == "203.0.113.5"
    # Chains: the rightmost address that is not a trusted proxy.
    assert client_host("127.0.0.1", "198.51.100.1, 203.0.113.5, 10.9.9.9",
                       proxies) == "203.0.113.5"
    # A malformed entry: the last hop that could be believed.
    assert client_host("127.0.0.1", "203.0.113.5, garbage", proxies) == "127.0.0.1"
    assert client_host("127.0.0.1", "", proxies) == "127.0.0.1"
    assert client_host("127.0.0.1", "[2001:db8::1]:443", proxies) == "2001:db8::1"
    assert client_host(None, "203.0.113.5", proxies) is None
    assert parse_proxies(["::1"])[0] == (ipaddress.ip_network("::1"),)


def test_a_proxy_on_a_dual_stack_port_is_trusted() -> None:
    # rev20-shape F1: on a tcp6 port bound to :: an IPv4 peer is
    # ::ffff:a.b.c.d; it is its IPv4 address, as for every per-address limit.
    proxies = parse_proxies(["127.0.0.1"])[0]
    assert trusted("::ffff:127.0.0.1", proxies)
    assert not trusted("::ffff:127.0.0.2", proxies)
    assert client_host("::ffff:127.0.0.1", "10.9.9.9", proxies) == "10.9.9.9"
    assert client_host("::ffff:192.0.2.1", "10.9.9.9", proxies) == "::ffff:192.0.2.1"
    # A mapped hop in the header is skipped as the proxy it is.
    assert client_host("127.0.0.1", "10.9.9.9, ::ffff:127.0.0.1", proxies) == "10.9.9.9"
    # --trust-proxy written in the mapped form names the same proxy.
    assert trusted("::ffff:127.0.0.1", parse_proxies(["::ffff:127.0.0.1"])[0])
    assert trusted("127.0.0.1", parse_proxies(["::ffff:127.0.0.0/104"])[0])


@pytest.mark.parametrize("text, split", [
    ("chat.example", ("chat.example", None)),
    ("Chat.Example:8080", ("chat.example", 8080)),
    ("192.0.2.1:443", ("192.0.2.1", 443)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ("[::1]", ("::1", None)),
    ("[::1", None),
    ("chat.example:http", None),
    ("chat.example:65536", None),
    ("user@chat.example", None),
    ("chat.example/path", None),
    ("chat.example?x", None),
])
def test_host_and_port_split(text: str, split: tuple[str, int | None] | None) -> None:
    assert split_host_port(text) == split


def test_message_limit_leaves_room_for_over_long_lines() -> None:
    assert max_message_for(4096) == 16384
    assert max_message_for(100) == 16384
    assert max_message_for(10000) == 40000


# -- options --------------------------------------------------------------------------


def test_web_is_off_by_default_and_repeatable() -> None:
    # A started service makes its dummy password hash on a thread, which
    # answers with callFromThread: MemoryReactorClock has none (an
    # "Unhandled Error" printed after the tests, from that thread).
    reactor = ThreadedMemoryReactor()
    top = makeService(options("--port", "7001", "--db", ":memory:"), reactor)
    top.startService()
    assert [port for port, *_ in reactor.tcpServers] == [7001]

    reactor = ThreadedMemoryReactor()
    top = makeService(options("--port", "7001", "--db", ":memory:", "--web", "8080",
                              "--web", "tcp:8081:interface=127.0.0.1",
                              "--web-origin", "https://friends.example",
                              "--trust-proxy", "127.0.0.1"), reactor)
    top.startService()
    servers = {port: factory for port, factory, *_ in reactor.tcpServers}
    assert sorted(servers) == [7001, 8080, 8081]
    site = servers[8080]
    assert isinstance(site, WebSite) and site is servers[8081]
    assert site.gateway.chat is servers[7001]  # the same hub
    assert site.gateway.web.origins == ("https://friends.example",)
    assert site.gateway.web.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"),)


def test_web_timeout_option() -> None:
    def site_of(*args: str) -> WebSite:
        reactor = ThreadedMemoryReactor()
        makeService(options("--db", ":memory:", "--web", "8080", *args), reactor).startService()
        site = {port: factory for port, factory, *_ in reactor.tcpServers}[8080]
        assert isinstance(site, WebSite)
        return site

    assert site_of().web.timeout == 30.0
    assert site_of().web.hosts == ()
    assert site_of("--web-host", "a.example", "--web-host", "B.example").web.hosts == (
        "a.example", "b.example")
    assert site_of("--web-timeout", "7.5").web.timeout == 7.5
    web = site_of("--max-line", "1000").web  # a message is held up to a line
    assert (web.max_line, web.max_message) == (1000, 16384)
    with pytest.raises(usage.UsageError):
        options("--web-timeout", "0")


@pytest.mark.parametrize("origin", [
    "*", "https://friends.example", "http://friends.example:8080",
    "http://[2001:db8::1]:8080", "http://192.0.2.7", "chrome-extension://abcdefgh",
])
def test_web_origin_takes_an_origin_or_a_star(origin: str) -> None:
    assert parse_origin(origin) == origin
    assert options("--web-origin", origin)["web-origins"] == [origin]


@pytest.mark.parametrize(("given", "kept"), [
    ("https://Friends.Example/", "https://friends.example"),
    ("HTTPS://friends.example", "https://friends.example"),
    ("https://friends.example:443", "https://friends.example"),
    ("http://friends.example:80/", "http://friends.example"),
    ("http://friends.example:443", "http://friends.example:443"),
    ("http://friends.example:080", "http://friends.example"),
    ("http://friends.example:08080", "http://friends.example:8080"),
    ("http://[2001:DB8::1]:80", "http://[2001:db8::1]"),
])
def test_a_web_origin_is_kept_as_a_browser_writes_it(given: str, kept: str) -> None:
    """The Origin check compares strings, and a browser leaves out a default
    port and writes the scheme and host in lower case: a value given
    otherwise would never match."""
    assert parse_origin(given) == kept
    assert options("--web-origin", given)["web-origins"] == [kept]
    assert origin_allowed(kept, "elsewhere.example", [parse_origin(given)])


@pytest.mark.parametrize("origin", [
    "foo", "friends.example", "friends.example:443", "https://", "https:///x", "null", "",
    "https://friends.example/page", "https://friends.example?x", "https://friends.example#x",
    "https://user@friends.example", "https://friends.example:99999",
    "https://friends.example:x", "https://friends.example:", " https://friends.example",
    "https://friends .example", "1https://friends.example", "**", "http://[::1",
])
def test_a_malformed_web_origin_is_a_usage_error(origin: str) -> None:
    """--help says scheme://host[:port] or *: another value could never match
    a browser's Origin, so it is refused, not silently kept."""
    with pytest.raises(usage.UsageError) as e:
        options("--web-origin", origin)
    assert str(e.value) == (f"--web-origin: {origin!r} is not * or an origin "
                            "scheme://host[:port] (e.g. https://example.org)")


def test_bad_trust_proxy_is_a_usage_error() -> None:
    with pytest.raises(usage.UsageError):
        options("--trust-proxy", "not-an-address")


@pytest.mark.parametrize(("value", "why"), [
    ("unix:/tmp/w.sock", "--trust-proxy: 'unix:/tmp/w.sock': unix: takes no path"),
    ("127.0.0.1, unix", "--trust-proxy: 'unix' is not an address, a CIDR network"),
])
def test_a_bad_trust_proxy_says_what_it_takes(value: str, why: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        options("--trust-proxy", value)
    assert str(e.value).startswith(why)
    assert "unix:" in str(e.value)


def test_trust_proxy_unix_trusts_a_unix_socket_s_peer() -> None:
    """As nginx's "set_real_ip_from unix:": a UNIX socket's peer has no address
    for a network to name, so it is named by unix:, beside networks."""
    assert parse_proxies(["unix:, 10.0.0.1", "UNIX:"]) == (
        (ipaddress.ip_network("10.0.0.1"),), True)
    assert parse_proxies(["127.0.0.1"]) == ((ipaddress.ip_network("127.0.0.1"),), False)
    assert trusted(None, (), unix=True) and not trusted(None, parse_proxies(["0.0.0.0/0"])[0])
    assert client_host(None, "198.51.100.1, 203.0.113.5", (), unix=True) == "203.0.113.5"
    assert client_host(None, "garbage", (), unix=True) is None  # the last trusted hop
    reactor = ThreadedMemoryReactor()
    top = makeService(options("--port", "7001", "--db", ":memory:", "--web", "8080",
                              "--trust-proxy", "unix:,127.0.0.1"), reactor)
    top.startService()
    site = {port: factory for port, factory, *_ in reactor.tcpServers}[8080]
    assert site.gateway.web.trust_unix
    assert site.gateway.web.trusted_proxies == (ipaddress.ip_network("127.0.0.1/32"),)


def test_a_bad_web_endpoint_is_one_line() -> None:
    with pytest.raises(SystemExit, match=r"^twistd chat: bad --web 'nonsense:1'"):
        makeService(options("--db", ":memory:", "--web", "nonsense:1"), MemoryReactorClock())
