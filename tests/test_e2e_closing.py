"""
Closes the server decides, on real sockets, against peers that never read
(rev18-attack 1 and 2): no server-side socket keeps output in the kernel
past the close grace (Twisted closed the descriptor once its own buffer was
empty, and the kernel kept the rest in an orphaned FIN-WAIT-1 socket for
about six minutes, outside every count), on the chat port and the web port
(HTTP and WebSocket);
a peer that reads still gets everything and an orderly close; and the web
and metrics ports' HTTP connections have their send buffer fixed at
C{--sndbuf}, as chat connections do (the kernel's autotuning held about
2 MB for each non-reader).  The server's sockets are read from
C{/proc/net/tcp} and C{ss}, polled with a deadline.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK, free_port, wait_until
from tests.web import wsframes as ws
from twisted_chat.server.config import ServerConfig

pytestmark = pytest.mark.e2e

GRACE = ServerConfig().close_grace
# Past the grace: the abort's turn, and this test's polling.
MARGIN = 2.0
APP_JS = Path(__file__).parents[1] / "twisted_chat" / "web" / "static" / "app.js"
ESTABLISHED, FIN_WAIT_1 = "01", "04"


def non_reader(port: int) -> socket.socket:
    """A connection whose receive buffer is small and that never reads:
    the kernel's window to it closes after a few kB."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((LOOPBACK, port))
    return sock


def ws_non_reader(port: int) -> socket.socket:
    """A L{non_reader} upgraded to a WebSocket: the 101 read, and nothing
    after it."""
    sock = non_reader(port)
    host = f"{LOOPBACK}:{port}"
    request, _ = ws.handshake(host=host, origin=f"http://{host}")
    sock.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def server_side(port: int, peers: list[socket.socket]) -> dict[int, tuple[str, int]]:
    """The server's sockets on local C{port} to C{peers}, in any state
    (an orphan included), by peer port: state (hex, C{/proc/net/tcp}'s) and
    the bytes it holds that the peer has not acknowledged (C{tx_queue})."""
    wanted = {sock.getsockname()[1] for sock in peers}
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1].rpartition(":")[2], fields[2].rpartition(":")[2]
        if int(local, 16) == port and int(remote, 16) in wanted:
            found[int(remote, 16)] = (fields[3], int(fields[4].partition(":")[0], 16))
    return found


def holding(port: int, peers: list[socket.socket]) -> dict[int, tuple[str, int]]:
    """Those of L{server_side} that hold output for their peer."""
    return {p: row for p, row in server_side(port, peers).items() if row[1] > 0}


def socket_memory(port: int, peer: socket.socket) -> dict[str, int]:
    """C{ss -m}'s memory of the server's socket on local C{port} to
    C{peer}, by name: C{r} (what its receive queue holds), C{rb} (its
    receive buffer), C{t}, C{tb} (the same for sending), and the rest of
    C{skmem}."""
    out = subprocess.run(
        ["ss", "-tnmH", "state", "all",
         f"( sport = :{port} and dport = :{peer.getsockname()[1]} )"],
        capture_output=True, text=True, timeout=10, check=True).stdout
    found = re.search(r"skmem:\(([^)]*)\)", out)
    assert found is not None, out
    return {name: int(value) for name, value in re.findall(r"([a-z_]+)(\d+)", found.group(1))}


def send_buffer(port: int, peer: socket.socket) -> int:
    """The send buffer (C{ss -m}'s C{tb}) of the server's socket on local
    C{port} to C{peer}."""
    return socket_memory(port, peer)["tb"]


def no_output_held_past_the_grace(port: int, peers: list[socket.socket], start: float) -> None:
    """Each of C{peers} is first held output (the kernel holds what the
    peer did not take), and none is past the grace after C{start}: its
    close aborted (or completed), not left to the kernel as an orphan.
    The peers are closed after."""
    try:
        wait_until(lambda: len(holding(port, peers)) == len(peers), timeout=GRACE,
                   what=lambda: f"output held for every peer: {server_side(port, peers)}")
        left = GRACE + MARGIN - (time.monotonic() - start)
        wait_until(lambda: not holding(port, peers), timeout=max(left, 0.1),
                   what=lambda: f"no server socket holding output: {holding(port, peers)}")
    finally:
        for sock in peers:
            sock.close()


def test_a_bye_to_a_non_reader_leaves_no_socket_holding_its_output(chat_server) -> None:
    server = chat_server("--flood-rate", "0", "--accounts", "off")
    ping = b"PING " + b"p" * 4000 + b"\r\n"
    peers = []
    start = time.monotonic()
    for i in range(3):
        sock = non_reader(server.port)
        # About 52 kB of PONGs: more than the peer takes, less than the
        # kernel's buffer (--sndbuf): Twisted holds none of it at the close.
        sock.sendall(f"NICK orphan{i}\r\n".encode() + ping * 13 + b"BYE\r\n")
        peers.append(sock)
    no_output_held_past_the_grace(server.port, peers, start)


def test_a_reader_is_sent_everything_before_the_close(chat_server, connect) -> None:
    server = chat_server("--accounts", "off")
    client = connect(server.port)
    client.register("reader")
    client.send("BYE")
    client.expect("BYE quit")
    client.sock.settimeout(5)
    assert client.sock.recv(1) == b"", "an orderly close (FIN), not a reset"


def web_server(chat_server, *args: str) -> tuple[object, int]:
    web = free_port()
    server = chat_server("--web", f"tcp:{web}:interface={LOOPBACK}", *args)
    return server, web


def test_an_http_close_to_a_non_reader_leaves_no_socket_holding_its_response(
        chat_server) -> None:
    _, web = web_server(chat_server)
    peers = []
    start = time.monotonic()
    # Responses the kernel's buffer (--sndbuf) takes whole, so that Twisted
    # holds none of them at the close: app.js (100 kB) to HTTP/1.0, and four
    # style.css (10 kB) pipelined, the last with "Connection: close".
    css = b"GET /static/style.css HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    for request in (b"GET /static/app.js HTTP/1.0\r\n\r\n",
                    css + b"\r\n" + css + b"\r\n" + css + b"\r\n"
                    + css + b"Connection: close\r\n\r\n"):
        sock = non_reader(web)
        sock.sendall(request)
        peers.append(sock)
    no_output_held_past_the_grace(web, peers, start)


def test_a_websocket_close_to_a_non_reader_leaves_no_socket_holding_its_output(
        chat_server) -> None:
    """A close frame from a peer that reads nothing: autobahn answers it and
    closes the TCP connection (gateway.py's dropConnection, through
    close_within), which left an orphan holding the PONGs as well."""
    _, web = web_server(chat_server, "--flood-rate", "0", "--accounts", "off")
    peers = []
    start = time.monotonic()
    for i in range(2):
        sock = ws_non_reader(web)
        sock.sendall(ws.text(f"NICK wsorphan{i}") + ws.text("PING " + "p" * 4000) * 13
                     + ws.frame(b"\x03\xe8", opcode=ws.CLOSE))
        peers.append(sock)
    no_output_held_past_the_grace(web, peers, start)


def test_an_http_reader_gets_the_whole_response_before_the_close(chat_server) -> None:
    _, web = web_server(chat_server)
    with socket.create_connection((LOOPBACK, web), timeout=5) as sock:
        sock.sendall(b"GET /static/app.js HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):  # up to the orderly close (EOF)
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 ")
    assert body == APP_JS.read_bytes()


def test_http_connections_have_their_send_buffer_fixed_at_sndbuf(chat_server) -> None:
    metrics = free_port()
    sndbuf = 65536
    _, web = web_server(chat_server, "--sndbuf", str(sndbuf),
                        "--metrics", f"tcp:{metrics}:interface={LOOPBACK}")
    page = non_reader(web)
    scrape = non_reader(metrics)
    try:
        page.sendall(b"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 4)
        scrape.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert scrape.recv(12) == b"HTTP/1.1 200"  # answered: connectionMade has run
        # The responses, 400 kB, are more than the kernel's share: it holds all it may.
        wait_until(lambda: holding(web, [page]), timeout=5, what="the responses queued")
        # The kernel doubles what it is set to (its bookkeeping); its
        # autotuning had grown a non-reader's to megabytes.
        assert (send_buffer(web, page), send_buffer(metrics, scrape)) == (2 * sndbuf, 2 * sndbuf)
        assert holding(web, [page])[page.getsockname()[1]][1] <= 2 * sndbuf
    finally:
        page.close()
        scrape.close()
