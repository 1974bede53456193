"""
The web port's limits on the real server (twistd -n chat --web): HTTP
connections are counted per address from accept, by their own cap (not as
users: the address's chat connection still gets in); an unfinished request
is closed at --web-timeout however it trickles in, and an idle kept-alive
connection KEEPALIVE_IDLE seconds after its response; a request body is
refused unread, a connection answers MAX_REQUESTS requests, none is logged;
refused WebSocket upgrades write one short line each, a few per address.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK
from tests.web.webserver import WebServer, served
from twisted_chat.web.admission import HTTP_PER_BROWSER
from twisted_chat.web.site import KEEPALIVE_IDLE, MAX_REQUESTS, STATIC

pytestmark = pytest.mark.e2e

CLIENT = "127.0.0.2"  # not exempt (the harness exempts 127.0.0.1)
# What the log must NOT get (lines for each refused or bad request) would be
# written in the turn that answered: it is given this long to land before
# the log's size is read.
LOG_WRITES_WINDOW = 0.2


def from_client(port: int) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((CLIENT, 0))
    sock.connect((LOOPBACK, port))
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing C{sock} within C{seconds}; None if still open."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


def test_web_connections_are_counted_from_accept_and_timed_out(tmp_path: Path) -> None:
    # --max-per-ip 1: the address may hold HTTP_PER_BROWSER HTTP connections.
    server = WebServer(tmp_path, "--max-per-ip", "1", "--web-timeout", "2",
                       "--nick-timeout", "30")
    with served(server) as web:
        held = [from_client(web.web_port) for _ in range(HTTP_PER_BROWSER)]
        held[0].sendall(b"GET / HTTP/1.1\r\n")
        refused = from_client(web.web_port)
        assert (closed_within(refused, 5) or b"").startswith(b"HTTP/1.1 503 ")
        # They are not users: the address's one chat connection still gets in.
        chat = from_client(web.port)
        chat.settimeout(5)
        assert chat.recv(4096).startswith(b"HELLO ")
        # One header byte every half second does not keep a request alive.
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            held[0].sendall(b"X")
            time.sleep(0.5)
        for sock in held:
            assert closed_within(sock, 4) == b""
        assert time.monotonic() - start < 6
        # Their places are free again.
        again = from_client(web.web_port)
        again.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        again.settimeout(5)
        assert again.recv(4096).startswith(b"HTTP/1.1 404 ")
        # Kept alive, then closed once idle for KEEPALIVE_IDLE (before the deadline).
        (tmp_path / "idle").mkdir()
        with served(WebServer(tmp_path / "idle", "--web-timeout", "60", exempt=())) as idle:
            kept = from_client(idle.web_port)
            # The response, and so its idle time, comes after the request
            # (after its arrival here, the idle time may have begun long
            # before, on a loaded machine).
            start = time.monotonic()
            kept.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            kept.settimeout(5)
            assert kept.recv(4096).startswith(b"HTTP/1.1 404 ")
            assert closed_within(kept, KEEPALIVE_IDLE + 3) == b""
            assert time.monotonic() - start >= KEEPALIVE_IDLE - 0.05
            kept.close()
        for sock in [*held, refused, chat, again]:
            sock.close()


def spooled(pid: int) -> int:
    """Bytes the server holds in deleted files (Twisted's request-body spool)."""
    total = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(" (deleted)"):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            pass  # closed meanwhile
    return total


def test_a_request_body_is_refused_unread(tmp_path: Path) -> None:
    with served(WebServer(tmp_path, exempt=())) as web:
        # A body streamed after a huge Content-Length: Twisted wrote any body
        # over 100 kB to a temporary file, for --web-timeout (1.7 GB in 8 s).
        post = from_client(web.web_port)
        post.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n")
        chunk = b"x" * (1 << 20)
        with contextlib.suppress(OSError):  # refused: the server stopped reading and closed
            for _ in range(64):  # at most 64 MB
                post.sendall(chunk)
        assert spooled(web.server.pid) < 1 << 20
        assert (closed_within(post, 5) or b"").startswith(b"HTTP/1.1 405 ")
        post.close()


def test_pipelined_requests_are_bounded_and_not_logged(tmp_path: Path) -> None:
    with served(WebServer(tmp_path, exempt=())) as web:
        # Pipelined requests with an 8 KB User-Agent: each wrote a log line
        # (the log grew 132 MB in 10 s); one connection answered them all.
        log = web.server.log_path
        before = sum(f.stat().st_size for f in log.parent.glob(log.name + "*"))
        pipe = from_client(web.web_port)
        request = (b"GET /nope HTTP/1.1\r\nHost: x\r\nUser-Agent: " + b"A" * 8000
                   + b"\r\n\r\n")
        with contextlib.suppress(OSError):  # closed after MAX_REQUESTS
            pipe.sendall(request * (MAX_REQUESTS + 20))
        answers = closed_within(pipe, 5) or b""
        pipe.close()
        assert answers.count(b"HTTP/1.1 404 ") == MAX_REQUESTS
        time.sleep(LOG_WRITES_WINDOW)
        after = sum(f.stat().st_size for f in log.parent.glob(log.name + "*"))
        assert after - before < 4096


def log_size(web: WebServer) -> int:
    """Bytes of the server's log, rotated files included."""
    log = web.server.log_path
    return sum(f.stat().st_size for f in log.parent.glob(log.name + "*"))


@pytest.mark.parametrize("level", ["info", "warn"])
def test_refused_upgrades_write_a_few_short_lines(tmp_path: Path, level: str) -> None:
    """
    A refused upgrade made autobahn write two lines quoting a header in full
    (~30 KB a connection: 1.5 MB in 30 s from one address, whatever
    --log-level said), and a refused origin was quoted whole: now one line
    per refused upgrade, the header clipped, a few per address and 10 s, at
    info level (a malformed Host was an error line).
    """
    # A burst of connections large enough that every one reaches the gateway.
    server = WebServer(tmp_path, "--log-level", level, "--ip-connect-burst", "100",
                       exempt=())
    huge = "x" * 15_000
    kinds = [("Connection", "keep-alive, " + huge, b"400"),
             ("Sec-WebSocket-Version", huge, b"400"),
             ("Origin", "http://" + huge, b"403"),
             # A Host that does not parse (its Origin given): a 500, an error line.
             ("Host", "[", b"400")]
    with served(server) as web:
        before = log_size(web)
        for i in range(30):
            name, value, code = kinds[i % len(kinds)]
            headers = {"Host": f"{LOOPBACK}:{web.web_port}", "Upgrade": "websocket",
                       "Connection": "Upgrade",
                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                       "Sec-WebSocket-Version": "13",
                       "Origin": f"http://{LOOPBACK}:{web.web_port}", name: value}
            sock = from_client(web.web_port)
            sock.sendall(("GET /chat HTTP/1.1\r\n"
                          + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                          + "\r\n").encode())
            answer = closed_within(sock, 5) or b""
            sock.close()
            assert answer.startswith(b"HTTP/1.1 " + code + b" "), answer[:80]
        refused = f"WebSocket upgrade from {CLIENT} refused ("
        if level == "info":
            web.server.wait_log(refused)
        time.sleep(LOG_WRITES_WINDOW)
        grown = log_size(web) - before
        lines = [line for line in web.server.log().splitlines() if refused in line]
    assert grown < 4096
    assert "failing WebSocket" not in web.server.log()
    if level == "info":
        # One line says what was refused, from where; at most a few per 10 s.
        assert 1 <= len(lines) <= 6
        assert all(len(line) < 400 for line in lines)
        assert "(400): 'HTTP Connection headers do not include" in lines[0]
    else:
        assert lines == []


def test_requests_do_not_make_twisted_log_their_url(tmp_path: Path) -> None:
    with served(WebServer(tmp_path, exempt=())) as web:
        before = log_size(web)
        long = b"A" * 8000
        # A HEAD of the page was answered with a body, which Twisted left out
        # with a warning quoting the request, URL and all (8 KB a line).
        pipe = from_client(web.web_port)
        pipe.sendall((b"HEAD /?" + long + b" HTTP/1.1\r\nHost: x\r\n\r\n") * MAX_REQUESTS)
        answers = closed_within(pipe, 5) or b""
        pipe.close()
        heads = answers.split(b"HTTP/1.1 200 OK\r\n")
        assert heads[0] == b"" and len(heads) == MAX_REQUESTS + 1
        page = (STATIC / "index.html").stat().st_size
        for head in heads[1:]:  # headers only, GET's length
            assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
            assert b"\r\nContent-Length: " in b"\r\n" + head
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            assert length == page > 0  # the defaults serve the file byte for byte
        # A name under /static/ that is not UTF-8: Twisted logged an error
        # and a traceback, quoting it.
        bad = from_client(web.web_port)
        bad.sendall(b"GET /static/%ff" + long
                    + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (closed_within(bad, 5) or b"").startswith(b"HTTP/1.1 404 ")
        bad.close()
        # One with a NUL: a 500, and a traceback logged at critical level.
        for method in (b"GET", b"HEAD"):
            nul = from_client(web.web_port)
            nul.sendall(method + b" /static/app.js%00" + long
                        + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert (closed_within(nul, 5) or b"").startswith(b"HTTP/1.1 404 ")
            nul.close()
        time.sleep(LOG_WRITES_WINDOW)
        assert log_size(web) - before < 1024
