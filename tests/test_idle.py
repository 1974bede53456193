"""A connection's idle deadline (twisted_chat.server.limits.idle), on a
stand-in connection and a Clock: the mixin's interface, without a server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock

from twisted_chat.server.limits.deadlines import Deadlines
from twisted_chat.server.limits.idle import IdleDeadline


class Host(IdleDeadline):
    """The connection's side of the interface (ChatProtocol's, in the server)."""

    __slots__ = ("_idle", "_last_line", "_pinged_at", "closed", "ctx", "hold", "written")

    def __init__(self, clock: Clock) -> None:
        self.ctx: Any = SimpleNamespace(
            clock=clock, deadlines=Deadlines(clock),
            config=SimpleNamespace(idle_timeout=10.0, ping_timeout=5.0))
        self.hold: Any = None
        self._idle = None
        self._pinged_at = None
        self._last_line = clock.seconds()
        self.written: list[bytes] = []
        self.closed: list[tuple[str, str]] = []

    @property
    def config(self) -> Any:
        return self.ctx.config

    @property
    def clock(self) -> Any:
        return self.ctx.clock

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self, reason: str, text: str = "", farewell: str = "") -> None:
        self.closed.append((reason, text))


def started() -> tuple[Clock, Host]:
    clock = Clock()
    host = Host(clock)
    host._set_idle(clock.seconds() + 10.0)
    return clock, host


def test_a_silent_connection_is_pinged_then_closed() -> None:
    clock, host = started()
    clock.advance(10.0)
    assert host.written == [b"PING idle-10\r\n"]
    assert host.closed == []
    clock.advance(5.0)
    assert host.closed == [("timeout", "no answer to PING within 5 seconds")]


def test_a_line_moves_the_deadline_without_timer_work() -> None:
    clock, host = started()
    clock.advance(6.0)
    host._last_line = clock.seconds()  # a line: its time only
    clock.advance(4.0)
    assert host.written == []  # the deadline ran, found the line, and moved
    assert host._idle is not None and host._idle.when == 16.0
    clock.advance(6.0)
    assert len(host.written) == 1 and host.written[0].startswith(b"PING")


def test_a_line_after_the_ping_answers_it() -> None:
    clock, host = started()
    clock.advance(10.0)
    clock.advance(1.0)
    host._last_line = clock.seconds()
    clock.advance(4.0)
    assert host.closed == [] and host._pinged_at is None


def test_a_connection_the_server_does_not_read_is_not_idle() -> None:
    clock, host = started()
    host.hold = SimpleNamespace(unread_for_node=lambda: True)
    clock.advance(30.0)
    assert host.written == [] and host.closed == []
    assert host._idle is not None and host._idle.when == 40.0


def test_a_stopped_deadline_pings_no_more() -> None:
    """stop_idle (the connection closing) takes its deadline off the
    server's shared Deadlines: nothing runs for it afterwards."""
    clock, host = started()
    host.stop_idle()
    assert host._idle is None
    clock.advance(60.0)
    assert host.written == [] and host.closed == []
