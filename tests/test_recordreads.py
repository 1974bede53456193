"""The reads of a connection whose reads are TLS records
(twisted_chat.server.limits.records.RecordReads), on a stand-in connection:
the mixin's interface, without a server or TLS."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted_chat.server.limits.records import RecordReads


class Host(RecordReads):
    """The connection's side of the interface (ChatProtocol's, in the server)."""

    __slots__ = ("_linger", "allowed", "closing", "counted", "ctx", "dropped", "hold", "taken")

    def __init__(self, allowed: bool = True) -> None:
        fanout = SimpleNamespace(read=lambda handle, data: handle(data))
        self.ctx: Any = SimpleNamespace(fanout=fanout)
        self.hold: Any = None
        self.closing = False
        self._linger: Any = None
        self.allowed = allowed
        self.counted: list[bool] = []
        self.taken: list[bytes] = []
        self.dropped = 0

    def _take(self, data: bytes) -> None:
        self.taken.append(data)

    def _count(self, line: bool = True) -> bool:
        self.counted.append(line)
        return self.allowed

    def _drop_line(self) -> None:
        self.dropped += 1


def test_a_record_that_ends_a_line_is_framed_as_a_read_is() -> None:
    host = Host()
    host.dataReceived(b"MSG hi\n")
    assert host.taken == [b"MSG hi\n"] and host.counted == []  # its line pays


def test_a_record_that_ends_none_spends_a_token_and_is_no_line() -> None:
    host = Host()
    host.dataReceived(b"MSG h")
    assert host.counted == [False] and host.taken == [b"MSG h"]


def test_a_refused_record_drops_its_line_or_marks_it_in_the_hold() -> None:
    host = Host(allowed=False)
    host.dataReceived(b"x")
    assert host.taken == [] and host.dropped == 1
    marks: list[str] = []
    host.hold = SimpleNamespace(waiting=True, drop_line=lambda: marks.append("drop"))
    host.dataReceived(b"y")
    assert marks == ["drop"] and host.dropped == 1  # dropped in its turn, by the hold


def test_reads_after_a_close_is_decided_are_counted_and_closing_reads_none() -> None:
    host = Host()
    reads: list[int] = []
    host._linger = SimpleNamespace(read=lambda: reads.append(1))
    host.closing = True
    host.dataReceived(b"z")
    assert reads == [1] and host.taken == [] and host.counted == []
