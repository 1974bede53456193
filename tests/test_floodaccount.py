"""A connection's flood control (twisted_chat.server.limits.floodaccount), on
a stand-in connection, the server's real FloodMeter and a Clock: the mixin's
interface, without a server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock

from twisted_chat.server.limits.flood import FloodMeter
from twisted_chat.server.limits.floodaccount import FloodAccount


class Host(FloodAccount):
    """The connection's side of the interface (ChatProtocol's, in the server)."""

    __slots__ = ("_flood_at", "_flooding", "_last_line", "_tokens", "closed", "ctx",
                 "dropped_for", "hold", "limits", "written")

    def __init__(self, clock: Clock, rate: float = 1.0, burst: int = 3) -> None:
        self.dropped_for: list[str] = []
        self.ctx: Any = SimpleNamespace(
            clock=clock, flood=FloodMeter(rate, burst),
            held_input=SimpleNamespace(excused=lambda conn, at, rate: False),
            stats=SimpleNamespace(count_dropped=self.dropped_for.append),
            config=SimpleNamespace(flood_rate=rate, flood_burst=burst))
        self.hold: Any = None
        self.limits = None
        self._tokens = float(burst)
        self._flood_at = self._last_line = clock.seconds()
        self._flooding = None
        self.written: list[bytes] = []
        self.closed: list[str] = []

    @property
    def config(self) -> Any:
        return self.ctx.config

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self, reason: str, text: str = "", farewell: str = "") -> None:
        self.closed.append(reason)

    def held_or_waiting(self) -> bool:
        return False

    def node_pause(self) -> None:
        pass

    def node_resume(self) -> None:
        pass


def test_a_burst_passes_the_next_line_is_dropped_with_one_error() -> None:
    clock = Clock()
    host = Host(clock)
    assert [host._count() for _ in range(3)] == [True, True, True]
    assert host._count() is False and host._count() is False
    assert len(host.written) == 1 and host.written[0].startswith(b"ERROR flood")
    assert host.dropped_for == ["flood_rate", "flood_rate"]
    clock.advance(1.0)  # a token back
    assert host._count() is True


def test_past_the_penalty_the_connection_is_cut() -> None:
    host = Host(Clock(), burst=3)
    for _ in range(6):  # three lines, three dropped
        host._count()
    assert host.closed == []
    host._count()  # the fourth dropped: its penalty past --flood-burst
    assert host.closed == ["flood"]


def test_a_held_line_counts_as_of_when_it_arrived() -> None:
    clock = Clock()
    host = Host(clock)
    clock.advance(10.0)
    host.hold = SimpleNamespace(held_at=4.0)
    assert host._count() is True
    assert (host._flood_at, host._last_line) == (4.0, 4.0)
    host.hold = SimpleNamespace(held_at=2.0)  # before the one counted last
    assert host._count() is True
    assert host._flood_at == 4.0 and host._last_line == 2.0


def test_a_frame_with_no_line_spends_a_token_but_is_no_line() -> None:
    clock = Clock()
    host = Host(clock)
    clock.advance(5.0)
    assert host._count(line=False) is True
    assert host._flood_at == 5.0 and host._last_line == 0.0


def test_a_large_reply_is_charged_its_size() -> None:
    host = Host(Clock(), burst=3)
    assert host.charge(3 * 4096) is True  # two tokens more than its line's
    assert host._tokens == 1.0
    assert host.charge(3 * 4096) is False and host._tokens == 1.0
