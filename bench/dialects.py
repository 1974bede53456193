"""
What differs between speaking chat/1 and IRC to a server under test.

A dialect says how a client registers and joins the shared room, how it
knows the handshake is over, how a room message is written, how to answer
the server's PING, and how many copies of one room message the server
delivers (chat/1 echoes the sender its own copy, IRC does not).

Every message the generator sends carries ``~<monotonic_ns>~`` in its text,
so a receiver can compute the latency from one regex over a whole chunk.
"""

from __future__ import annotations

import base64
import os
import re
import struct
from dataclasses import dataclass

MARK = re.compile(rb"~(\d{6,20})~")
PAD = b"x" * 32  # a chat-sized message: the text is about 55 bytes long
CHANNEL = b"#bench"
PER_IP = 16  # clients per loopback source address (under any per-IP limit of 20)


def source_address(index: int) -> str:
    """A loopback source address shared by at most L{PER_IP} clients."""
    k = index // PER_IP
    return f"127.{10 + k // 62500}.{(k // 250) % 250}.{k % 250 + 1}"


@dataclass(frozen=True)
class Dialect:
    name: str
    # whether the sender receives its own copy of a room message
    echo: bool

    def register(self, nick: str) -> bytes:
        raise NotImplementedError

    def after_registered(self, nick: str) -> bytes:
        """Bytes to send once the first handshake marker was seen."""
        return b""

    # handshake markers, searched in the accumulated input, in order
    first_marker: bytes = b""
    done_marker: bytes = b""
    # the byte that occurs once per line received (counted, never parsed)
    line_mark: bytes = b"\n"
    # whether a line sent must be framed with L{encode}
    framed: bool = False

    def encode(self, line: bytes) -> bytes:
        """A line (CRLF-terminated) as it goes on the wire."""
        return line

    def msg_prefix(self) -> bytes:
        raise NotImplementedError

    def pong(self, line: bytes) -> bytes | None:
        """The answer to one complete input line, if it is a PING."""
        raise NotImplementedError

    def copies(self, clients: int) -> int:
        return clients if self.echo else clients - 1


@dataclass(frozen=True)
class Chat1(Dialect):
    name: str = "chat/1"
    echo: bool = True
    # READY <nick>, then HISTORY..., USER..., and USERS <n> ends the block
    first_marker: bytes = b"READY "
    done_marker: bytes = b"\nUSERS "

    def register(self, nick: str) -> bytes:
        return b"NICK %s\r\n" % nick.encode()

    def msg_prefix(self) -> bytes:
        return b"MSG "

    def pong(self, line: bytes) -> bytes | None:
        if line[:5].upper() == b"PING " or line.rstrip(b"\r").upper() == b"PING":
            return b"PONG" + line.rstrip(b"\r")[4:] + b"\r\n"
        return None


def ws_frame(payload: bytes) -> bytes:
    """
    A client text frame (RFC 6455) with the mask key 0 (legal: the mask is
    then the identity, so framing costs the generator no XOR pass).
    """
    n = len(payload)
    if n <= 125:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n <= 0xFFFF:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


@dataclass(frozen=True)
class Chat1WebSocket(Chat1):
    """
    chat/1 over the web client's WebSocket (C{--web}): one line per text
    frame.  The upgrade is the registration's first step; NICK goes once the
    101 is in.  A received line is counted by its frame's first byte (0x81:
    a final text frame; the bench's lines are ASCII and under 126 bytes, so
    the byte occurs nowhere else).  The server's idle PING is not answered:
    a run is shorter than the idle timeout.
    """

    name: str = "chat/1-ws"
    first_marker: bytes = b"HTTP/1.1 101"
    done_marker: bytes = b"USERS "
    line_mark: bytes = b"\x81"
    framed: bool = True

    def register(self, nick: str) -> bytes:
        key = base64.b64encode(os.urandom(16))
        return (b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n" % key)

    def after_registered(self, nick: str) -> bytes:
        return ws_frame(b"NICK %s" % nick.encode())

    def encode(self, line: bytes) -> bytes:
        return ws_frame(line[:-2] if line.endswith(b"\r\n") else line)

    def pong(self, line: bytes) -> bytes | None:
        return None


@dataclass(frozen=True)
class Irc(Dialect):
    name: str = "irc"
    echo: bool = False
    # 001 is the welcome; 366 ends the NAMES list that answers our JOIN
    first_marker: bytes = b" 001 "
    done_marker: bytes = b" 366 "

    def register(self, nick: str) -> bytes:
        # The PING draws a reply at once (PONG, or 451 before registration
        # ends), which tells the generator the server accepted the
        # connection: InspIRCd sends nothing until its 001, a second later.
        return b"NICK %s\r\nUSER %s 0 * :bench\r\nPING :open\r\n" % (nick.encode(),
                                                                        nick.encode())

    def after_registered(self, nick: str) -> bytes:
        return b"JOIN " + CHANNEL + b"\r\n"


    def msg_prefix(self) -> bytes:
        return b"PRIVMSG " + CHANNEL + b" :"

    def pong(self, line: bytes) -> bytes | None:
        if line.startswith(b"PING "):
            return b"PONG " + line.rstrip(b"\r")[5:] + b"\r\n"
        return None


@dataclass(frozen=True)
class IrcNoRoom(Irc):
    """IRC registration only (to the 001 welcome), no channel joined."""

    name: str = "irc-noroom"
    done_marker: bytes = b" 001 "

    def after_registered(self, nick: str) -> bytes:
        return b""


DIALECTS: dict[str, Dialect] = {"chat/1": Chat1(), "chat/1-ws": Chat1WebSocket(), "irc": Irc(),
                                 "irc-noroom": IrcNoRoom()}
