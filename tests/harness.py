"""
Deterministic protocol harness: a L{ChatFactory} on a L{task.Clock}, with
connections on L{StringTransport}s.  Lobby lines are gathered per reactor
turn, so L{Conn.send} advances the clock by zero to end the turn; the
fan-out's pacing is off here (tests/test_pacing.py turns it on).
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_chat.config import ServerConfig
from twisted_chat.protocol import ChatFactory

# Unit tests keep the limits and the pacing out of the way unless they test them.
QUIET = dict(flood_rate=0.0, idle_timeout=0.0, nick_timeout=0.0, fanout_delay=0.0)


class Conn:
    def __init__(self, harness: Harness, protocol: Any, transport: StringTransport) -> None:
        self.harness = harness
        self.protocol = protocol
        self.transport = transport
        self.closed = False

    def send_raw(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
        self.harness.clock.advance(0)

    def send(self, *lines: str | bytes) -> None:
        data = b"".join(
            (line.encode() if isinstance(line, str) else line) + b"\r\n" for line in lines
        )
        self.send_raw(data)

    def take(self) -> list[str]:
        """The lines received since the last take, without CRLF."""
        raw = self.transport.value()
        self.transport.clear()
        if not raw:
            return []
        assert raw.endswith(b"\r\n"), raw
        return [line.decode() for line in raw[:-2].split(b"\r\n")]

    def take_one(self) -> str:
        lines = self.take()
        assert len(lines) == 1, lines
        return lines[0]

    def drop(self) -> None:
        """The peer goes away (the transport reports the loss)."""
        if not self.closed:
            self.closed = True
            self.protocol.connectionLost(Failure(ConnectionDone()))
            self.harness.clock.advance(0)

    @property
    def user(self) -> Any:
        return self.protocol.user


class Harness:
    def __init__(self, **config: Any) -> None:
        settings = {**QUIET, **config}
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # a real-looking time for the timestamps
        self.config = ServerConfig(**settings)
        self.factory = ChatFactory(self.config, self.clock)
        self.hub = self.factory.hub
        self._ports = itertools.count(40000)
        self.conns: list[Conn] = []

    def connect(self, host: str | None = "127.0.0.1") -> Conn:
        address: Any = (
            IPv4Address("TCP", host, next(self._ports)) if host is not None else UNIXAddress(None)
        )
        protocol = self.factory.buildProtocol(address)
        transport = StringTransport(peerAddress=address)
        protocol.makeConnection(transport)
        conn = Conn(self, protocol, transport)
        self.conns.append(conn)
        return conn

    def user(self, nick: str) -> Conn:
        """A connection that completed the handshake as C{nick}, output cleared."""
        conn = self.connect()
        conn.send(f"NICK {nick}")
        lines = conn.take()
        assert f"READY {nick}" in lines, lines
        self.clear_all()
        return conn

    def clear_all(self) -> None:
        for conn in self.conns:
            conn.transport.clear()
