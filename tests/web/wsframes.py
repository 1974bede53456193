"""
The client's side of RFC 6455, written out here so the gateway's tests do
not check autobahn's frames with autobahn: masked frames to send, the
server's (unmasked) frames parsed back.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import time

TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handshake(host: str = "chat.example:8080", origin: str | None = "http://chat.example:8080",
              extra: dict[str, str] | None = None) -> tuple[bytes, bytes]:
    """The upgrade request, and the Sec-WebSocket-Accept it must get."""
    key = base64.b64encode(os.urandom(16))
    headers = {
        "Host": host,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key.decode(),
        "Sec-WebSocket-Version": "13",
    }
    if origin is not None:
        headers["Origin"] = origin
    headers.update(extra or {})
    request = "GET /chat HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return (request + "\r\n").encode(), accept


def frame(payload: bytes, opcode: int = TEXT, fin: bool = True,
          length: int | None = None) -> bytes:
    """A masked client frame (C{length} may claim more than is sent)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n <= 125:
        head += bytes([0x80 | n])
    elif n <= 0xFFFF:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text(line: str | bytes) -> bytes:
    return frame(line.encode() if isinstance(line, str) else line)


def parse(data: bytes, limit: int | None = None) -> tuple[list[tuple[int, bytes]], bytes]:
    """Whole server frames in C{data} (at most C{limit}) as (opcode, payload),
    and what is left."""
    frames: list[tuple[int, bytes]] = []
    i = 0
    while len(data) - i >= 2 and (limit is None or len(frames) < limit):
        b0, b1 = data[i], data[i + 1]
        assert b0 & 0x80, "the server does not fragment"
        assert not b1 & 0x80, "server frames are not masked"
        n = b1 & 0x7F
        j = i + 2
        if n == 126:
            if len(data) - j < 2:
                break
            (n,) = struct.unpack("!H", data[j : j + 2])
            j += 2
        elif n == 127:
            if len(data) - j < 8:
                break
            (n,) = struct.unpack("!Q", data[j : j + 8])
            j += 8
        if len(data) - j < n:
            break
        frames.append((b0 & 0x0F, data[j : j + n]))
        i = j + n
    return frames, data[i:]


def close_code(payload: bytes) -> int:
    return int(struct.unpack("!H", payload[:2])[0])


class WsClient:
    """A blocking WebSocket client for e2e tests; every wait is bounded."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0,
                 extra: dict[str, str] | None = None) -> None:
        """C{extra}: more upgrade request headers (C{X-Forwarded-For})."""
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        request, accept = handshake(host=f"{host}:{port}", origin=f"http://{host}:{port}",
                                    extra=extra)
        self.sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed during the upgrade")
            data += chunk
        head, _, self.buffer = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101") and accept in head, head
        assert b"autobahn" not in head.lower(), head  # no Server: naming the library
        self.head = head.decode("latin-1")  # the 101's status line and headers, as sent

    def send(self, line: str) -> None:
        self.sock.sendall(text(line))

    def readline(self) -> str:
        """The next text message (answering nothing else)."""
        deadline = time.monotonic() + self.timeout
        while True:
            frames, rest = parse(self.buffer, limit=1)
            if frames:
                self.buffer = rest
                op, payload = frames[0]
                if op == TEXT:
                    return payload.decode()
                continue
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buffer += chunk

    def expect(self, prefix: str) -> str:
        while True:
            line = self.readline()
            if line.startswith(prefix):
                return line

    def register(self, nick: str) -> None:
        self.expect("NICK")
        self.send(f"NICK {nick}")
        self.expect(f"READY {nick}")
        self.expect("USERS ")

    def close(self) -> None:
        self.sock.close()
