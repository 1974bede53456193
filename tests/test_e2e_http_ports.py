"""
The real C{twistd -n chat --web ... --metrics ...}: a request twisted.web
cannot take, each in one send, gets one C{400} and the close on both HTTP
ports, and writes nothing to the server's log (rev19-attack 1: a request
line that is not one logged an Unhandled Error traceback, and its peer got
a reset instead of the 400; 13,000 header lines got 12,500 400s); one
whose rest comes after the server's read gets a close, not a reset; and
WebSocket frames sent right behind the upgrade request are read.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Callable

import pytest

from tests.serverproc import LOOPBACK, ServerProcess, free_port, tcp_rows, wait_until
from tests.test_e2e_closing import non_reader
from tests.web import wsframes as ws
from tests.web.test_admission import BAD_REQUEST, FIRST_PART, MALFORMED, REST

pytestmark = pytest.mark.e2e

# MALFORMED's, with 2,000 header lines (10 KB) for its 13,000 (65 KB): a
# request that comes in one read (one in two reads: the test of its rest,
# below).
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


def unread_by_server(port: int, peer: socket.socket) -> int:
    """What the server's socket on local C{port} to C{peer} has received
    and the server not read (C{/proc/net/tcp}'s rx_queue); -1 if none."""
    for fields in tcp_rows(port, "01", tables=("/proc/net/tcp",)):
        if int(fields[2].rpartition(":")[2], 16) == peer.getsockname()[1]:
            return int(fields[4].partition(":")[2], 16)
    return -1


def until_unread(port: int, sock: socket.socket) -> None:
    """Send header lines one at a time until one stays unread (0.3 s): the
    server has stopped reading, its close begun behind the 400."""
    for _ in range(50):
        sock.sendall(b"X:y\r\n")
        try:
            wait_until(lambda: unread_by_server(port, sock) == 0, timeout=0.3, interval=0.02)
        except TimeoutError:
            return
    raise AssertionError("the server read every line")


@pytest.mark.parametrize("port_name", ["web", "metrics"])
def test_what_follows_a_malformed_request_unread_is_dropped_and_the_close_is_no_reset(
        port_name: str, chat_server: Callable[..., ServerProcess]) -> None:
    """note19 (left): a malformed request whose rest came after the server's
    read: the close waited for the peer to take the 400, reading stopped,
    and the rest waited unread in the kernel; Linux closed the socket with
    a reset, and a peer reset before it has read its 400 may lose it (a
    browser drops what it had not read).  Here the peer holds the close
    back, not reading answers asked for before the malformed request, until
    its rest has come; then it reads all, and the close is a FIN."""
    web, metrics = free_port(), free_port()
    chat_server("--db", ":memory:", "--web", f"tcp:{web}:interface={LOOPBACK}",
                "--metrics", f"tcp:{metrics}:interface={LOOPBACK}")
    port, asked = {
        "web": (web, b"GET /static/app.js HTTP/1.1\r\nHost: x\r\n\r\n"),  # 106 KB
        "metrics": (metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 3),  # 30 KB
    }[port_name]
    sock = non_reader(port)  # the answers fill its window: the 400 waits behind them
    try:
        sock.sendall(asked + FIRST_PART)
        until_unread(port, sock)
        sock.sendall(REST)
        wait_until(lambda: unread_by_server(port, sock) >= len(REST), timeout=5,
                   what="the rest unread: the close waits, reading stopped")
        sock.settimeout(10)
        data, reset = b"", False
        try:
            while chunk := sock.recv(65536):  # up to the close
                data += chunk
        except ConnectionResetError:
            reset = True
        poller = select.poll()
        poller.register(sock, 0)  # a reset's POLLERR and POLLHUP only
        assert (reset, poller.poll(500)) == (False, [])
        assert data.count(b" 200 OK\r\n") == asked.count(b"GET ")
        assert data.endswith(BAD_REQUEST + b"\r\n\r\n")
    finally:
        sock.close()


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
