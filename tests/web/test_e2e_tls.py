"""
The web client over TLS: the real server with C{--web ssl:...} (a
self-signed certificate made here, trusted by the test's client), the page
and its headers over HTTPS and the chat/1 handshake over wss://.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK, LineClient, wait_until
from tests.test_e2e_tls import self_signed
from tests.web import wsframes as ws
from tests.web.webserver import WebServer, served, serving
from twisted_chat.server.config import ServerConfig
from twisted_chat.web.admission import HTTP_PER_BROWSER
from twisted_chat.web.site import STATIC

pytestmark = pytest.mark.e2e

NAME = "localhost"  # the name in the test certificate


class TlsWebServer(WebServer):
    """The chat server with C{--web ssl:PORT:...} and the context that trusts it."""

    def __init__(self, workdir: Path, *args: str, exempt: Sequence[str] = (LOOPBACK,)) -> None:
        key, cert = self_signed(workdir)
        super().__init__(workdir, *args, scheme="ssl",
                         options=f":privateKey={key}:certKey={cert}", exempt=exempt)
        self.host = f"{NAME}:{self.web_port}"
        self.context = ssl.create_default_context(cafile=str(cert))

    def connect(self) -> ssl.SSLSocket:
        """A TLS connection that verifies the certificate and its name."""
        raw = socket.create_connection((LOOPBACK, self.web_port), timeout=5)
        return self.context.wrap_socket(raw, server_hostname=NAME)


@pytest.fixture
def tls_web(tmp_path: Path) -> Iterator[TlsWebServer]:
    server = TlsWebServer(tmp_path)
    yield from serving(server)


def read_message(sock: ssl.SSLSocket, buffer: bytes, deadline: float) -> tuple[str, bytes]:
    """The next text message from the server, and what is left after it."""
    while True:
        frames, rest = ws.parse(buffer, limit=1)
        if frames:
            buffer = rest
            opcode, payload = frames[0]
            assert opcode != ws.CLOSE, f"closed with {ws.close_code(payload)}"
            if opcode == ws.TEXT:
                return payload.decode(), buffer
            continue
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        buffer += chunk


def test_web_client_over_tls_page_headers_and_wss_chat(tls_web: TlsWebServer) -> None:
    # The page over HTTPS, verified against the test certificate.
    https = http.client.HTTPSConnection(LOOPBACK, tls_web.web_port, timeout=5,
                                        context=tls_web.context)
    https.sock = tls_web.connect()  # verified as NAME, though dialled by address
    try:
        https.putrequest("GET", "/", skip_host=True)
        https.putheader("Host", tls_web.host)
        https.endheaders()
        response = https.getresponse()
        body = response.read()
        assert https.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        https.close()
    assert response.status == 200
    assert body == (STATIC / "index.html").read_bytes()
    assert response.getheader("X-Content-Type-Options") == "nosniff"
    csp = response.getheader("Content-Security-Policy")
    assert csp is not None
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["frame-ancestors"] == "'none'"
    assert f"wss://{tls_web.host}" in directives["connect-src"].split()

    # The chat/1 handshake over wss:// at /chat.
    wss_user(tls_web, "alice").close()


def wss_user(web: TlsWebServer, nick: str) -> ssl.SSLSocket:
    """A wss:// connection to /chat that joined as C{nick} (what follows
    READY is left unread)."""
    sock = web.connect()
    try:
        request, accept = ws.handshake(host=web.host, origin=f"https://{web.host}")
        sock.sendall(request)
        deadline = time.monotonic() + 5
        data = b""
        while b"\r\n\r\n" not in data:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError("closed during the upgrade")
            data += chunk
        head, _, buffer = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and accept in head, head

        hello, buffer = read_message(sock, buffer, deadline)
        assert hello.startswith("HELLO chat/1 "), hello
        prompt, buffer = read_message(sock, buffer, deadline)
        assert prompt.startswith("NICK"), prompt
        sock.sendall(ws.text(f"NICK {nick}"))
        ready, buffer = read_message(sock, buffer, deadline)
        assert ready == f"READY {nick}", ready
    except BaseException:
        sock.close()
        raise
    return sock


def test_a_close_the_browser_started_and_never_completes_over_tls_is_aborted(
    tls_web: TlsWebServer
) -> None:
    """A wss:// peer sends a close frame (as a page closing its socket
    does) and never answers the server's close_notify: its user leaves at
    the close frame (rev20-web F2), and the socket is aborted close_grace
    after the server's answer.  Before, the gateway never aborted it:
    alice stayed online, her nick taken and her connection slots held,
    for good."""
    grace = ServerConfig().close_grace
    carol = LineClient(tls_web.port)
    try:
        carol.register("carol")
        sock = wss_user(tls_web, "alice")
        try:
            assert carol.expect("JOINED ").split()[2] == "alice"
            sock.sendall(ws.frame(b"\x03\xe8", opcode=ws.CLOSE))  # 1000, then nothing read
            closed = time.monotonic()
            left = carol.expect("LEFT ", timeout=grace + 5)
            left_after = time.monotonic() - closed
            wait_until(lambda: sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0,
                       timeout=grace + 5, interval=0.02, what="the server's reset")
            aborted_after = time.monotonic() - closed
        finally:
            sock.close()
        assert left.split()[2:4] == ["alice", "disconnected"], left
        assert left_after < 1, left_after  # at the close frame
        assert aborted_after > grace - 1, aborted_after  # the TLS close did wait for the peer
    finally:
        carol.close()


def read_head(sock: ssl.SSLSocket) -> bytes:
    """An HTTP response's head (what the server sent up to its blank line)."""
    data = b""
    deadline = time.monotonic() + 5
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\r\n\r\n")[0]


def test_refused_upgrades_stay_counted_until_aborted_though_close_notify_never_comes(
    tmp_path: Path
) -> None:
    # /chat requests autobahn refuses (an upgrade without its key: 400; a
    # foreign Origin: 403), from a peer that never answers the server's
    # close_notify: each holds a place until the server aborts it,
    # close_grace after its response (long before --web-timeout).
    grace = ServerConfig().close_grace
    server = TlsWebServer(tmp_path, "--max-per-ip", "1", "--web-timeout", "60", exempt=())
    with served(server) as web:
        held = []
        # Every request is sent after this, so no place is given back
        # before first_sent + grace.
        first_sent = time.monotonic()
        for i in range(HTTP_PER_BROWSER):
            sock = web.connect()
            if i % 2:
                sock.sendall(ws.handshake(host=web.host, origin="https://evil.example")[0])
                assert read_head(sock).startswith(b"HTTP/1.1 403 ")
            else:
                sock.sendall(f"GET /chat HTTP/1.1\r\nHost: {web.host}\r\nUpgrade: websocket"
                             "\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13"
                             "\r\n\r\n".encode())
                assert read_head(sock).startswith(b"HTTP/1.1 400 ")
            held.append(sock)
        answered = time.monotonic()
        over = web.connect()
        assert read_head(over).startswith(b"HTTP/1.1 503 ")
        over.close()
        # Polled (a refused connection spends no token of the address's rate).
        while True:
            try:
                fresh = web.connect()
            except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
                # Refused past the address's few told why: reset before
                # the TLS handshake (docs/security.md).
                head = b"reset"
            else:
                fresh.sendall(f"GET /nope HTTP/1.1\r\nHost: {web.host}\r\n\r\n".encode())
                head = read_head(fresh)
                fresh.close()
            if not head.startswith((b"HTTP/1.1 503 ", b"reset")):
                break
            assert time.monotonic() - answered < grace + 10, "refused upgrades still held"
            time.sleep(0.25)
        assert head.startswith(b"HTTP/1.1 404 "), head
        # Not from answered: the first's grace began before the last was
        # answered, and on a loaded machine the six take a while.
        assert time.monotonic() - first_sent >= grace - 0.05
        for sock in held:
            sock.close()
