"""
The platform's floor (bench/floor.py), run as the A/B runs it: it registers
what the generator sends and fans each MSG out to everyone, in order, as
lines of the server's own size.
"""

from __future__ import annotations

import socket
import time

import pytest

from bench.servers import BENCH, RunningServer, ServerSpec

pytestmark = pytest.mark.bench


def _read_until(sock: socket.socket, want: bytes, timeout: float = 10.0) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while want not in got:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, f"closed; got {got!r}"
        got += chunk
    return got


def test_the_floor_registers_and_fans_every_msg_out_to_everyone_in_order() -> None:
    spec = ServerSpec("floor", "floor", "chat/1", "floor", tree=BENCH.parent)
    srv = RunningServer(spec, cpu=None)
    clients = []
    try:
        for nick in (b"ann", b"bob"):
            c = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            c.sendall(b"NICK %s\r\n" % nick)
            assert _read_until(c, b"\r\nUSERS ") == b"READY %s\r\nUSERS %s\r\n" % (nick, nick)
            clients.append(c)
        ann, bob = clients
        ann.sendall(b"MSG one ~123456~\r\nMSG two\r\nPING x\r\n")
        ann_lines = (b"MSG 2026-01-01T00:00:00.000Z ann * :one ~123456~\r\n"
                     b"MSG 2026-01-01T00:00:00.000Z ann * :two\r\n")
        for c in clients:
            assert _read_until(c, b":two\r\n") == ann_lines
        # Only now: lines of two senders read in one turn may go in either order.
        bob.sendall(b"MSG three\n")
        for c in clients:
            assert _read_until(c, b":three\r\n") == b"MSG 2026-01-01T00:00:00.000Z bob * :three\r\n"
    finally:
        for c in clients:
            c.close()
        srv.stop()
