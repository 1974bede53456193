"""
A WebSocket the real server closes (twistd -n chat --web), seen from a
peer that, as a busy browser tab, neither reads nor answers the close: it
is reset once the close grace has passed, as a TCP connection is, and not
sooner, so the BYE that says why is not dropped unread; and the TCP close
autobahn makes after its own close frame leaves no orphan holding output.
A browser's own close frame (a reload) makes its user leave at once.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import wait_until
from tests.test_e2e_closing import holding, server_side, ws_non_reader
from tests.web import wsframes as ws
from tests.web.webserver import WebServer, served
from twisted_chat.server.config import ServerConfig

pytestmark = pytest.mark.e2e

FLOOD_BURST = 5

# What each peer sends to make the server close: its frames, and the first
# text message and close code it then has waiting for it.
CLOSES = {
    "quit": (ws.text("BYE"), "BYE quit", 1000),
    "flood": (b"".join(ws.text(f"PING {i}") for i in range(6 * FLOOD_BURST)), "BYE flood", 1000),
    "binary": (ws.frame(b"\x00", opcode=ws.BINARY), None, 1003),
}


def test_a_close_the_server_starts_is_reset_after_the_close_grace_not_before(
    tmp_path: Path
) -> None:
    """rev18-docs #3: autobahn's closing-handshake timer reset these 0.05-1 s
    after the close (its 1 s, rounded down to the next whole second)."""
    grace = ServerConfig().close_grace
    server = WebServer(tmp_path, "--flood-burst", str(FLOOD_BURST))
    with served(server) as web:
        peers: dict[str, ws.WsClient] = {}
        try:
            for name in CLOSES:
                peers[name] = ws.WsClient(web.web_port)
                peers[name].register(name)
            sent: dict[str, float] = {}
            for name, (frames, _, _) in CLOSES.items():
                sent[name] = time.monotonic()  # before the server can close
                peers[name].sock.sendall(frames)
            reset: dict[str, float] = {}

            def all_reset() -> bool:
                for name, peer in peers.items():
                    if name not in reset and peer.sock.getsockopt(
                            socket.SOL_SOCKET, socket.SO_ERROR):  # not read
                        reset[name] = time.monotonic() - sent[name]
                return len(reset) == len(peers)

            wait_until(all_reset, timeout=grace + 5, interval=0.02,
                       what=lambda: f"a reset for each peer: {reset}")
            for name, after in reset.items():
                assert after >= grace, f"{name}: reset {after:.2f} s after the close"
            for name, (_, bye, code) in CLOSES.items():
                texts, closes = waiting_for(peers[name])
                assert closes == [code], name
                if bye is not None:
                    assert texts[-1].startswith(bye), (name, texts)
        finally:
            for peer in peers.values():
                peer.close()


def read_to_the_end(sock: socket.socket, within: float) -> tuple[bytes, str]:
    """What the server sends C{sock} until it closes, and how it closed:
    C{"eof"} (a FIN) or C{"reset"}; bounded by C{within} seconds."""
    deadline = time.monotonic() + within
    data = b""
    while True:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk


def waiting_for(peer: ws.WsClient) -> tuple[list[str], list[int]]:
    """The text messages and close codes the server had sent C{peer}
    before resetting it (Linux still hands over what had arrived)."""
    data, _ = read_to_the_end(peer.sock, 1.0)
    frames, _ = ws.parse(peer.buffer + data)
    texts = [payload.decode() for op, payload in frames if op == ws.TEXT]
    return texts, [ws.close_code(payload) for op, payload in frames if op == ws.CLOSE]


def hold_output_for(web: WebServer, peer: socket.socket, nick: str,
                    sender: ws.WsClient, sender_nick: str) -> None:
    """C{peer} (a L{ws_non_reader}) and C{sender} join as C{nick} and
    C{sender_nick}; C{sender} says about 90 kB in the lobby, which C{peer}
    does not read: more than it takes (a few kB, sometimes tens), less
    than the kernel's buffer (--sndbuf), so that the server's socket holds
    output for it and Twisted holds none."""
    peer.sendall(ws.text(f"NICK {nick}"))
    data = b""
    while b"USERS " not in data:  # in the lobby: sent its lines from now on
        data += peer.recv(65536)
    sender.register(sender_nick)
    for i in range(100):
        sender.send(f"MSG {i} " + "x" * 900)
    while " * 99 " not in sender.expect("MSG "):
        pass  # its own copy of the last: the peer's are written too
    wait_until(lambda: holding(web.web_port, [peer]), timeout=5,
               what=lambda: f"output held: {server_side(web.web_port, [peer])}")


def test_a_1007_to_a_non_reader_leaves_no_socket_holding_its_output(tmp_path: Path) -> None:
    """rr18-core #1: the abort timer of the server's close frame stood for
    "a TCP close under way", so the close autobahn makes right after its
    1007 skipped close_within: Twisted closed the descriptor once its own
    buffer was empty, and the kernel kept the lobby lines the peer had not
    taken in an orphaned FIN-WAIT-1 socket, past the close grace."""
    grace = ServerConfig().close_grace
    server = WebServer(tmp_path, "--flood-rate", "1000", "--flood-burst", "1000")
    with served(server) as web:
        peer = ws_non_reader(web.web_port)
        sender = ws.WsClient(web.web_port)
        try:
            hold_output_for(web, peer, "utf8", sender, "sender")
            start = time.monotonic()
            peer.sendall(ws.frame(b"MSG \xff"))  # not UTF-8: autobahn's 1007
            wait_until(lambda: not holding(web.web_port, [peer]),
                       timeout=grace + 1 - (time.monotonic() - start),
                       what=lambda: f"no server socket holding output: "
                                    f"{server_side(web.web_port, [peer])}")
        finally:
            peer.close()
            sender.close()


def test_a_reloaded_page_gets_its_nick_back_at_once(tmp_path: Path) -> None:
    """rev20-web F2: a page reloaded (F5) sends its close frame (1001) and
    joins again under the same nick.  Its user left only when the TCP close
    completed, which waits for the peer to take what is queued for it: a
    page that had stopped reading (here: lobby lines it has not taken)
    kept its nick, "alice is online already", until the close grace
    aborted it, 3 s on.  It leaves at the close frame now."""
    server = WebServer(tmp_path, "--flood-rate", "1000", "--flood-burst", "1000")
    with served(server) as web:
        old = ws_non_reader(web.web_port)
        others = ws.WsClient(web.web_port)
        reloaded: ws.WsClient | None = None
        try:
            hold_output_for(web, old, "alice", others, "bob")
            start = time.monotonic()
            old.sendall(ws.frame(b"\x03\xe9", opcode=ws.CLOSE))  # 1001: going away
            left = others.expect("LEFT ")
            after = time.monotonic() - start
            assert left.endswith(" alice disconnected"), left
            assert after < 0.5, f"alice left {after:.2f} s after her close frame"
            reloaded = ws.WsClient(web.web_port)
            reloaded.register("alice")  # READY alice, not RETRY taken
        finally:
            old.close()
            others.close()
            if reloaded is not None:
                reloaded.close()


@contextlib.contextmanager
def users(web: WebServer, *nicks: str) -> Iterator[list[ws.WsClient]]:
    """A WebSocket in the lobby for each of C{nicks}, closed at the end."""
    clients: list[ws.WsClient] = []
    try:
        for nick in nicks:
            clients.append(ws.WsClient(web.web_port))
            clients[-1].register(nick)
        yield clients
    finally:
        for client in clients:
            client.close()


def test_a_lobby_line_and_the_close_frame_in_one_write_get_the_copy_then_the_answer(
    tmp_path: Path
) -> None:
    """rev21-attack F1: a script that posts a line and closes its
    WebSocket in one write.  The line was accepted (the others saw it) but
    its sender got only the answer to its close: its copy, written after
    that answer, was dropped.  It gets its copy, then the answer, then a FIN."""
    with served(WebServer(tmp_path)) as web, users(web, "alice", "bob") as (alice, bob):
        alice.sock.sendall(ws.text("MSG last words") + ws.frame(b"\x03\xe9", opcode=ws.CLOSE))
        said = bob.expect("MSG ")
        assert said.endswith(" alice * last words"), said
        assert bob.expect("LEFT ").endswith(" alice disconnected")
        data, end = read_to_the_end(alice.sock, 5.0)
        frames, _ = ws.parse(alice.buffer + data)
        assert [op for op, _ in frames if op != ws.TEXT] == [ws.CLOSE]
        texts = [payload.decode() for op, payload in frames if op == ws.TEXT]
        assert said in texts, texts  # its own copy
        assert frames[-1] == (ws.CLOSE, b"\x03\xe8") and end == "eof"


def test_bye_and_the_close_frame_in_one_write_still_get_all_that_was_owed(
    tmp_path: Path
) -> None:
    """rev21-attack F2: a reader owed 300 lobby lines (1.5 kB each) sends
    BYE and its close frame in one write, then reads.  The close frame
    answers the server's close (after BYE quit), and autobahn then aborted
    the connection at once: the reader got tens of the lines, no BYE quit,
    no close frame, and a reset.  Now the close waits for the reader to take
    it all: 300 lines, BYE quit, the close frame (1000), then a FIN."""
    lines = 300
    server = WebServer(tmp_path, "--flood-rate", "1000", "--flood-burst", "1000")
    with served(server) as web, users(web, "reader", "sender") as (reader, sender):
        pad = "x" * 1500
        for i in range(lines):
            sender.send(f"MSG {i} {pad}")
        while f" * {lines - 1} " not in sender.expect("MSG "):
            pass  # its own copy of the last: the reader's are all written too
        reader.sock.sendall(ws.text("BYE done") + ws.frame(b"\x03\xe8", opcode=ws.CLOSE))
        data, end = read_to_the_end(reader.sock, ServerConfig().close_grace + 2)
        frames, _ = ws.parse(reader.buffer + data)
        texts = [payload.decode() for op, payload in frames if op == ws.TEXT]
        owed = [t for t in texts if t.startswith("MSG ") and " sender * " in t]
        assert len(owed) == lines, (len(owed), texts[-3:], end)
        assert texts[-1] == "BYE quit"
        assert frames[-1] == (ws.CLOSE, b"\x03\xe8")
        assert end == "eof"
