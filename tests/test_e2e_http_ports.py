"""
The real C{twistd -n chat --web ... --metrics ...}: a request twisted.web
cannot take, each in one send, gets one C{400} and the close on both HTTP
ports, and writes nothing to the server's log (rev19-attack 1: a request
line that is not one logged an Unhandled Error traceback, and its peer got
a reset instead of the 400; 13,000 header lines got 12,500 400s); and
WebSocket frames sent right behind the upgrade request are read.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable

import pytest

from tests.serverproc import LOOPBACK, ServerProcess, free_port
from tests.web import wsframes as ws
from tests.web.test_admission import BAD_REQUEST, MALFORMED

pytestmark = pytest.mark.e2e

# MALFORMED's, with 2,000 header lines (10 KB) for its 13,000 (65 KB): a
# request that comes in one read.  One in two reads leaves input unread at
# the close, which makes the close a reset, and the peer may lose its 400.
REQUESTS = [*MALFORMED[:-1], b"GET / HTTP/1.1\r\n" + b"X:y\r\n" * 2000 + b"\r\n"]


def answer_to(port: int, request: bytes) -> bytes:
    """What the server sends back to C{request} on a new connection to
    C{port}, until it closes (a reset after what came is an end too: the
    close of a socket whose peer sent more than was read)."""
    got = b""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(request)
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(65536):
                got += data
    return got


@pytest.mark.parametrize("request_", REQUESTS, ids=["hello", "http2", "tls", "headers"])
def test_a_malformed_request_gets_one_400_on_both_http_ports_and_no_traceback(
        request_: bytes, chat_server: Callable[..., ServerProcess]) -> None:
    web, metrics = free_port(), free_port()
    server = chat_server("--db", ":memory:", "--web", f"tcp:{web}:interface={LOOPBACK}",
                         "--metrics", f"tcp:{metrics}:interface={LOOPBACK}")
    for port in (web, metrics):
        assert answer_to(port, request_) == BAD_REQUEST + b"\r\n\r\n", port
    # Both ports still answer.
    assert answer_to(web, b"GET /nope HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    assert answer_to(metrics, b"GET /nope HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 404 ")
    assert server.problems() == []


def test_frames_sent_right_behind_the_upgrade_request_are_read(
        chat_server: Callable[..., ServerProcess]) -> None:
    """note19 (left): more than 16 KiB of frames behind an upgrade request
    in its read were kept by twisted.web, unread, and the socket was read
    no more; a smaller lot was lost."""
    web = free_port()
    chat_server("--db", ":memory:", "--flood-rate", "0",
                "--web", f"tcp:{web}:interface={LOOPBACK}")
    host = f"{LOOPBACK}:{web}"
    request, _ = ws.handshake(host=host, origin=f"http://{host}")
    pings = b"".join(ws.text(f"PING {i}") for i in range(2000))  # 30 KB
    with socket.create_connection((LOOPBACK, web), timeout=5) as sock:
        sock.sendall(request + pings)
        data = b""
        while b"PONG 1999" not in data:
            chunk = sock.recv(65536)
            assert chunk, data[-200:]
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    texts = [p for op, p in ws.parse(rest)[0] if op == ws.TEXT]
    assert [t for t in texts if t.startswith(b"PONG ")] == [
        f"PONG {i}".encode() for i in range(2000)]
