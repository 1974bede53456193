"""
What the kernel holds of a peer's input while the server does not read it,
on real sockets (rev19-attack 2): each accepted socket's receive buffer is
fixed at C{--rcvbuf} before the server's first read, so the kernel's
autotuning cannot grow it to megabytes once the server has read fast, to be
filled while it does not read: here a close's grace (the chat port's
C{BYE}).  Before, one such chat connection held 32 MiB (the host's
C{tcp_rmem} maximum) for the grace.  Read from C{ss -m}.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.serverproc import LOOPBACK, free_port, wait_until
from tests.test_e2e_closing import holding, non_reader, socket_memory, web_server

pytestmark = pytest.mark.e2e

#: The default --rcvbuf (tests/test_receivebuffer.py checks it is).
RCVBUF = 64 * 1024
#: The most the kernel holds for one connection: twice --rcvbuf (its
#: bookkeeping counts double).
HELD_AT_MOST = 2 * RCVBUF


def push_until_full(sock: socket.socket, within: float = 3.0) -> None:
    """Send junk to C{sock}'s server until a send waits 0.3 s: nothing is
    read at the other end, and both kernels' buffers are full."""
    sock.settimeout(0.3)
    junk = b"x" * 65536
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            sock.send(junk)
        except TimeoutError:
            return
    raise AssertionError(f"the server went on reading for {within} s")


def test_a_lingering_close_holds_at_most_twice_rcvbuf_of_input(chat_server) -> None:
    """The reviewer's case (t_rcvq.py) on one connection: its server reads
    a long line fast (discarding it: the autotuning grew the buffer), then
    the peer says BYE and sends on while the close waits out the grace for
    PONGs the peer never reads (reading paused)."""
    server = chat_server("--flood-rate", "0", "--accounts", "off")
    sock = non_reader(server.port)
    try:
        # PONGs the peer does not take (more than its 4 kB): the close waits.
        sock.sendall(b"NICK filler\r\n" + (b"PING " + b"p" * 4000 + b"\r\n") * 13)
        sock.sendall(b"y" * (8 << 20))  # an over-long line, read and discarded
        sock.sendall(b"\r\nBYE\r\n")
        push_until_full(sock)
        memory = socket_memory(server.port, sock)
        assert memory["rb"] == HELD_AT_MOST, memory
        assert memory["r"] <= HELD_AT_MOST, memory
    finally:
        sock.close()


APP_JS = b"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def answers_queued(web: int, sock: socket.socket) -> None:
    """Wait until the kernel holds 100 kB of answers for C{sock}: four
    app.js (424 kB) are more than it takes (about 165 kB: --sndbuf), so
    Twisted holds the rest and twisted.web waits for the transport."""
    port = sock.getsockname()[1]
    wait_until(lambda: holding(web, [sock]).get(port, ("", 0))[1] >= 100_000, timeout=5,
               what="the answers queued")


def test_a_pipelined_request_behind_an_unread_answer_stops_the_reading(chat_server) -> None:
    """The reviewer's t_web_rcvq.py on one connection: twisted.web stopped
    reading behind the answer only while the transport was not full; behind
    one its peer did not take, it read on into memory (160 MB/s of junk
    on loopback, the server grown by 662 MB in 4 s), and the
    kernel's autotuned buffer held 1.3 MB more.  Now it stops: the kernel
    holds at most 2 x --rcvbuf, until --web-timeout."""
    _, web = web_server(chat_server)
    sock = non_reader(web)
    try:
        sock.sendall(APP_JS * 4)
        answers_queued(web, sock)
        push_until_full(sock)
        memory = socket_memory(web, sock)
        assert memory["rb"] == HELD_AT_MOST, memory
        assert memory["r"] <= HELD_AT_MOST, memory
    finally:
        sock.close()


def test_pipelined_requests_past_the_pause_are_answered_once_the_peer_reads(
        chat_server) -> None:
    """The pause lifts once the answers are taken: a pipeliner that reads
    gets every answer, those sent past the 16 kB read ahead included."""
    _, web = web_server(chat_server)
    sock = non_reader(web)
    padded = (b"GET /static/style.css HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
              + b"a" * 9000 + b"\r\n\r\n")
    try:
        sock.sendall(APP_JS * 4 + padded * 3)
        answers_queued(web, sock)
        data = b""
        while data.count(b"HTTP/1.1 200 ") < 7:
            chunk = sock.recv(65536)
            assert chunk, data.count(b"HTTP/1.1 200 ")
            data += chunk
    finally:
        sock.close()


def test_every_port_fixes_the_receive_buffer_at_rcvbuf(chat_server) -> None:
    """The chat, web (HTTP and WebSocket alike: fixed at its accept) and
    metrics ports, at a --rcvbuf given."""
    metrics = free_port()
    rcvbuf = 32768
    server, web = web_server(chat_server, "--rcvbuf", str(rcvbuf),
                             "--metrics", f"tcp:{metrics}:interface={LOOPBACK}")
    peers = {port: socket.create_connection((LOOPBACK, port), timeout=5)
             for port in (server.port, web, metrics)}
    try:
        assert peers[server.port].recv(5) == b"HELLO"  # accepted: connectionMade has run
        peers[metrics].sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert peers[metrics].recv(12) == b"HTTP/1.1 200"
        peers[web].sendall(b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert peers[web].recv(12) == b"HTTP/1.1 404"
        buffers = {port: socket_memory(port, peer)["rb"] for port, peer in peers.items()}
        assert set(buffers.values()) == {2 * rcvbuf}, buffers
    finally:
        for peer in peers.values():
            peer.close()
