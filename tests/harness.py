"""
Deterministic protocol harness: a L{ChatFactory} on a L{TurnClock}, with
connections on L{StringTransport}s.  Lobby lines are gathered per reactor
turn, so L{Conn.send} advances the clock by zero to end the turn; the
fan-out's pacing is off here (tests/test_pacing.py turns it on, with a
stand-in for the reactor's backlog).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_chat.server.config import ServerConfig
from twisted_chat.server.factory import ChatFactory
from twisted_chat.server.state import ChatState

# Unit tests keep the limits and the pacing out of the way unless they test them.
QUIET = dict(flood_rate=0.0, idle_timeout=0.0, nick_timeout=0.0, fanout_delay=0.0,
             # The per-address limits too (tests of them turn them on).
             ip_connect_rate=0.0, ip_register_rate=0.0, ip_lobby_rate=0.0,
             max_handshaking_per_ip=10_000, sendq_timeout=0.0, sendq_total=0)


class TurnClock(Clock):
    """
    A L{Clock} that runs calls as a reactor's turn does: each L{advance}
    runs the calls due when it starts; a call scheduled meanwhile for the
    same time waits for the next advance, as one scheduled from a timed call
    waits for the reactor's next iteration.
    """

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        self._sortCalls()
        due = [call for call in self.calls if call.getTime() <= self.rightNow]
        for call in due:
            if call in self.calls:  # not cancelled by an earlier one
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)


def run_for(clock: Clock, seconds: float, turn: float = 0.25) -> None:
    """The reactor runs for C{seconds}, turn by turn, its timers on time.
    One advance past a timer's time is a stall of the whole process, which
    excuses lines over their flood rate (twisted_chat/server/limits/stalls.py): a
    test of flood control lets time pass with this."""
    for _ in range(round(seconds / turn)):
        clock.advance(turn)


def traced_lines(work: Callable[[], None], *modules: str) -> int:
    """How many lines of the code of C{modules} (their files) C{work} runs
    (sys.settrace): the work done, counted, not timed."""
    files = set(modules)
    count = 0

    def trace(frame: FrameType, event: str, arg: object) -> Any:
        nonlocal count
        if frame.f_code.co_filename not in files:
            return None
        if event == "line":
            count += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        work()
    finally:
        sys.settrace(previous)
    return count


class SocketTransport(StringTransport):
    """
    A L{StringTransport} that holds what arrives while reading is paused,
    as a socket's kernel buffer does, and hands it to the protocol on the
    turn after reading resumes, as a reactor would.  (With L{Clock}, "the
    turn after" is a call scheduled then: it runs before calls scheduled
    later for the same time.)
    """

    def __init__(self, clock: Clock, protocol: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.clock = clock
        self.protocol = protocol
        self.unread = b""
        self.reads = 0

    def arrive(self, data: bytes) -> None:
        if self.producerState == "paused":
            self.unread += data
        else:
            self.read(data)

    def resumeProducing(self) -> None:
        if self.disconnecting:
            # As Twisted's TCP transport: nothing more is read once closing
            # (a TLS transport would go on reading, to finish its close).
            self.producerState = "producing"
            return
        super().resumeProducing()
        if self.unread:
            self.clock.callLater(0, self._read_unread)

    def _read_unread(self) -> None:
        if self.unread and self.producerState != "paused":
            data, self.unread = self.unread, b""
            self.read(data)

    def read(self, data: bytes) -> None:
        """The protocol reads C{data} now."""
        self.reads += 1
        self.protocol.dataReceived(data)


class Conn:
    def __init__(self, harness: Harness, protocol: Any, transport: SocketTransport) -> None:
        self.harness = harness
        self.protocol = protocol
        self.transport = transport
        self.closed = False

    def send_raw(self, data: bytes) -> None:
        self.transport.read(data)
        self.harness.clock.advance(0)

    def send(self, *lines: str | bytes) -> None:
        """The protocol reads C{lines} now, whether its transport is paused or not."""
        self.send_raw(_crlf(lines))

    def arrive(self, *lines: str | bytes) -> None:
        """C{lines} reach the socket: read now, or when reading resumes."""
        self.transport.arrive(_crlf(lines))
        self.harness.clock.advance(0)

    @property
    def reading(self) -> bool:
        return self.transport.producerState != "paused"

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


def _crlf(lines: tuple[str | bytes, ...]) -> bytes:
    return b"".join((line.encode() if isinstance(line, str) else line) + b"\r\n" for line in lines)


class Harness:
    def __init__(self, backlog: Callable[[], bool] | None = None,
                 state: Callable[[ChatFactory], ChatState] | None = None, **config: Any) -> None:
        """@param state: the factory's (default: its own L{LocalState})."""
        settings = {**QUIET, **config}
        self.clock = TurnClock()
        self.clock.advance(1_700_000_000)  # a real-looking time for the timestamps
        self.config = ServerConfig(**settings)
        self.factory = ChatFactory(self.config, self.clock, backlog=backlog, state=state,
                                   steady=self.clock.seconds)
        self.hub = self.factory.state.hub
        self._ports = itertools.count(40000)
        self.conns: list[Conn] = []

    def connect(self, host: str | None = "127.0.0.1") -> Conn:
        address: Any = (
            IPv4Address("TCP", host, next(self._ports)) if host is not None else UNIXAddress(None)
        )
        protocol = self.factory.buildProtocol(address)
        transport = SocketTransport(self.clock, protocol, peerAddress=address)
        protocol.makeConnection(transport)
        conn = Conn(self, protocol, transport)
        self.conns.append(conn)
        return conn

    def user(self, nick: str, host: str = "127.0.0.1") -> Conn:
        """A connection that completed the handshake as C{nick}, output cleared."""
        conn = self.connect(host)
        conn.send(f"NICK {nick}")
        lines = conn.take()
        assert f"READY {nick}" in lines, lines
        self.clear_all()
        return conn

    def clear_all(self) -> None:
        for conn in self.conns:
            conn.transport.clear()
