"""
A WebSocket the real server closes (twistd -n chat --web), seen from a
peer that, as a busy browser tab, neither reads nor answers the close: it
is reset once the close grace has passed, as a TCP connection is, and not
sooner, so the BYE that says why is not dropped unread.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.serverproc import wait_until
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


def waiting_for(peer: ws.WsClient) -> tuple[list[str], list[int]]:
    """The text messages and close codes the server had sent C{peer}
    before resetting it (Linux still hands over what had arrived)."""
    data = peer.buffer
    peer.sock.settimeout(1)
    try:
        while chunk := peer.sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    frames, _ = ws.parse(data)
    texts = [payload.decode() for op, payload in frames if op == ws.TEXT]
    return texts, [ws.close_code(payload) for op, payload in frames if op == ws.CLOSE]
