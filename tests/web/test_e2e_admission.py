"""
The web port's limits on the real server (twistd -n chat --web): HTTP
connections are counted with the chat's per-address limit from accept, and
an unfinished request is closed at --web-timeout however it trickles in.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK
from tests.web.webserver import WebServer, served

pytestmark = pytest.mark.e2e

CLIENT = "127.0.0.2"  # not exempt (the harness exempts 127.0.0.1)


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
    server = WebServer(tmp_path, "--max-per-ip", "2", "--web-timeout", "2",
                       "--nick-timeout", "30")
    with served(server) as web:
        held = [from_client(web.web_port) for _ in range(2)]
        held[0].sendall(b"GET / HTTP/1.1\r\n")
        refused = from_client(web.web_port)
        assert (closed_within(refused, 5) or b"").startswith(b"HTTP/1.1 503 ")
        chat = from_client(web.port)
        assert closed_within(chat, 5) == (b"ERROR server-full too many connections from "
                                          b"127.0.0.2\r\nBYE full\r\n")
        # One header byte every half second does not keep a request alive.
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            held[0].sendall(b"X")
            time.sleep(0.5)
        assert closed_within(held[0], 4) == b""
        assert closed_within(held[1], 4) == b""
        assert time.monotonic() - start < 6
        # Their places are free again.
        again = from_client(web.web_port)
        again.sendall(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        again.settimeout(5)
        assert again.recv(4096).startswith(b"HTTP/1.1 404 ")
        for sock in [*held, refused, chat, again]:
            sock.close()
