"""A connection's writes and its cuts for them (twisted_chat.server.output.memberoutput),
on a stand-in connection: the mixin's interface, without a server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted_chat.server.output.memberoutput import MemberOutput


class Queue:
    """A send queue that takes C{room} bytes, then refuses."""

    def __init__(self, room: int, held: int = 0) -> None:
        self.room = room
        self.written = 0
        self.taken: list[bytes] = []
        self._held = held
        self.retired = False

    def write(self, data: bytes) -> bool:
        if len(data) > self.room:
            return False
        self.room -= len(data)
        self.written += len(data)
        self.taken.append(data)
        return True

    def write_private(self, data: bytes) -> bool:
        return self.write(data)

    def write_parts(self, parts: list[bytes]) -> bool:
        return all(self.write(part) for part in parts)

    def held(self) -> int:
        return self._held


class Host(MemberOutput):
    """The connection's side of the interface (ChatProtocol's, in the server)."""

    __slots__ = ("_leave_reason", "aborted", "address", "closing", "ctx", "discarded",
                 "log", "order", "pool_key", "send_queue", "user", "wrote")

    def __init__(self, queue: Queue | None, sendq: int = 100) -> None:
        self.send_queue: Any = queue
        self.closing = False
        self.user: Any = SimpleNamespace(nick="alice")
        self.address = "192.0.2.1:5000"
        self.pool_key = "192.0.2.1"
        self._leave_reason = "disconnected"
        self.log: Any = None
        self.aborted = False
        self.wrote: list[bytes] = []
        self.discarded: list[int] = []
        self.order: list[object] = []
        batch = SimpleNamespace(before_write=self.order.append)
        stats = SimpleNamespace(wrote=self.wrote.append, count_discarded=self.discarded.append)
        repeats = SimpleNamespace(log=lambda *args, **kw: None)
        self.ctx: Any = SimpleNamespace(
            stats=stats, repeats=repeats, batch_of=lambda user: batch,
            config=SimpleNamespace(sendq=sendq, sendq_total=1000, sendq_timeout=30.0))

    @property
    def config(self) -> Any:
        return self.ctx.config

    @property
    def _socket(self) -> Any:
        return SimpleNamespace(abortConnection=self._abort)

    def _abort(self) -> None:
        self.aborted = True

    def _closing(self) -> Any:
        self.closing = True
        queue, self.send_queue = self.send_queue, None
        return queue


def test_a_write_follows_the_lobby_and_is_counted() -> None:
    queue = Queue(room=100)
    host = Host(queue)
    host.write(b"hello\n")
    host.write_parts([b"a", b"b\n"])
    assert queue.taken == [b"hello\n", b"a", b"b\n"]
    assert host.wrote == [b"hello\n", b"a", b"b\n"]
    assert host.order == [host, host]  # the batch's order rule, before each write
    assert not host.aborted


def test_a_closing_connection_writes_nothing() -> None:
    host = Host(None)
    host.write(b"hello\n")
    host.write_private(b"dm\n")
    assert host.wrote == [] and host.order == []
    host.deliver(b"lobby\n")
    assert host.discarded == [6]  # a fan-out's write to it is counted as discarded


def test_a_write_over_sendq_cuts_without_bye_counting_what_is_lost() -> None:
    queue = Queue(room=4, held=7)
    host = Host(queue)
    host.deliver(b"too long\n")
    assert host.aborted and host.closing
    assert host._leave_reason == "sendq"
    assert host.discarded == [7 + 9]  # what it held, and the write refused
    host.output_stalled()  # cut already: nothing more
    assert host.discarded == [16]


def test_the_other_output_limits_cut_with_their_own_reasons() -> None:
    stalled, over = Host(Queue(room=100)), Host(Queue(room=100))
    stalled.output_stalled()
    over.output_over_budget()
    assert (stalled._leave_reason, over._leave_reason) == ("sendq_timeout", "sendq_total")
    assert stalled.aborted and over.aborted


def test_backed_up_past_half_of_sendq() -> None:
    assert not Host(Queue(room=100, held=50), sendq=100).backed_up()
    assert Host(Queue(room=100, held=51), sendq=100).backed_up()
    assert not Host(None).backed_up()
