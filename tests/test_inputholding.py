"""A connection's side of its held input (twisted_chat.server.limits.inputholding),
on a stand-in connection with the real InputHold: the mixin's interface,
without a server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from twisted_chat.server.limits.inputholding import InputHolding


class Host(InputHolding):
    """The connection's side of the interface (ChatProtocol's, in the server)."""

    __slots__ = ("_buffer", "_last_line", "closing", "ctx", "discarded", "ended", "hold",
                 "limits", "reading", "user")

    def __init__(self) -> None:
        self.discarded: list[int] = []
        held_input = SimpleNamespace(over=False, pause=lambda conn: None,
                                     release=lambda conn: None, change=lambda conn, d: None)
        self.ctx: Any = SimpleNamespace(
            held_input=held_input, clock=Clock(),
            stats=SimpleNamespace(count_input_discarded=self.discarded.append))
        self.hold = None
        self.user = None
        self.limits = None
        self.closing = False
        self._buffer = b""
        self._last_line = 0.0
        self.reading: list[str] = []
        self.ended = False

    @property
    def _socket(self) -> Any:
        return SimpleNamespace(pauseProducing=lambda: self.reading.append("pause"),
                               resumeProducing=lambda: self.reading.append("resume"))

    def held_read(self, data: bytes) -> None:
        pass

    def message_received(self, line: bytes) -> None:
        pass

    def close(self, reason: str, text: str = "", farewell: str = "") -> None:
        pass

    def readConnectionLost(self) -> None:
        self.ended = True


def test_a_hold_is_made_for_a_command_and_let_go_once_it_is_decided() -> None:
    host = Host()
    assert host.hold is None and not host.held_or_waiting() and host.held_at is None
    outcome: Deferred[None] = Deferred()
    host.wait_for(outcome)
    assert host.hold is not None and host.held_or_waiting()
    outcome.callback(None)
    assert host.hold is None and not host.held_or_waiting()


def test_the_servers_pause_pauses_reading_and_its_resume_lets_the_hold_go() -> None:
    host = Host()
    host.node_pause()
    assert host.reading == ["pause"] and host.hold is not None
    assert not host.held_or_waiting()  # paused, but nothing waits
    host.node_resume()
    assert host.reading == ["pause", "resume"] and host.hold is None
    host.node_resume()  # no hold: nothing to resume
    assert host.reading == ["pause", "resume"]


def test_discarded_input_takes_the_partial_line_with_it() -> None:
    host = Host()
    host._buffer = b"half a li"
    host.discard_input()
    assert host._buffer == b"" and host.discarded == [9]
    assert host.held_or_waiting()  # what comes now is read and dropped, never handled


def test_arrived_is_when_the_line_counted_last_came() -> None:
    host = Host()
    host._last_line = 12.5
    assert host.arrived() == 12.5
