"""The epoll reactor's poll without the per-read log context (ports/epollturn)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import error
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.logger import globalLogPublisher
from twisted.python import context, log

from tests.test_service import ThreadedMemoryReactor, options
from twisted_chat.server import service
from twisted_chat.server.ports.epollturn import lighten


class Reader(FileDescriptor):
    """Reads one socket; notes the legacy log context each read ran in."""

    def __init__(self, reactor: EPollReactor, sock: socket.socket, name: str) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.name = name
        self.systems: list[str | None] = []
        self.on_read: Any = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return self.name

    def doRead(self) -> None:
        self.sock.recv(100)
        self.systems.append((context.get(log.ILogContext) or {}).get("system"))
        if self.on_read is not None:
            self.on_read()


class Ending(Reader):
    """A reader whose read ends it as C{how} says; notes its connectionLost."""

    def __init__(self, reactor: EPollReactor, sock: socket.socket, how: str) -> None:
        super().__init__(reactor, sock, how)
        self.lost: list[Any] = []
        self.how = how
        self.fd = sock.fileno()
        self.registered = False

    def fileno(self) -> int:
        return -1 if self.registered and self.how == "no descriptor" else self.fd

    def doRead(self) -> Any:
        super().doRead()
        if self.how == "raises":
            raise RuntimeError("read failed")
        return error.ConnectionDone() if self.how == "done" else None

    def connectionLost(self, reason: Any) -> None:
        self.lost.append(reason)
        super().connectionLost(reason)


@pytest.fixture
def reactor() -> Iterator[EPollReactor]:
    """A real epoll reactor, not installed, never run: turned by hand."""
    made = EPollReactor()
    try:
        yield made
    finally:  # each test closes its own sockets
        made._poller.close()
        for end in ("i", "o"):  # the waker's pipe
            fd = getattr(made.waker, end, None)
            if isinstance(fd, int):
                os.close(fd)


def ready_pair(reactor: EPollReactor, name: str) -> tuple[Reader, socket.socket]:
    ours, theirs = socket.socketpair()
    reader = Reader(reactor, ours, name)
    reactor.addReader(reader)
    theirs.send(b"x")  # readable at once: a turn with timeout 0 sees it
    return reader, theirs


def one_turn(reactor: EPollReactor, lightened: bool = True) -> list[dict[str, Any]]:
    """One turn of C{reactor} (lightened first, or Twisted's own poll):
    the log events it emitted."""
    logged: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        if lightened:
            assert lighten(reactor)
        reactor.doIteration(0)
    finally:
        globalLogPublisher.removeObserver(logged.append)
    return logged


def test_a_read_runs_without_the_log_context(reactor: EPollReactor) -> None:
    """Twisted's own poll sets the reader's prefix as the legacy log's
    system around its read; the lightened one dispatches it bare."""
    reader, theirs = ready_pair(reactor, "Reader,1,peer")
    try:
        assert lighten(reactor)
        reactor.doIteration(0)
        assert reader.systems == ["-"]  # the default, not "Reader,1,peer"
    finally:
        reader.sock.close()
        theirs.close()


def test_a_reader_removed_in_the_same_turn_is_not_read(reactor: EPollReactor) -> None:
    """Two ready readers; whichever runs first removes the other: only one reads."""
    first, a = ready_pair(reactor, "first")
    second, b = ready_pair(reactor, "second")
    first.on_read = lambda: reactor.removeReader(second)
    second.on_read = lambda: reactor.removeReader(first)
    try:
        lighten(reactor)
        reactor.doIteration(0)
        assert len(first.systems) + len(second.systems) == 1
    finally:
        for s in (first.sock, second.sock, a, b):
            s.close()


def test_another_reactor_is_left_alone() -> None:
    other = ThreadedMemoryReactor()
    assert not lighten(other)
    assert "doIteration" not in vars(other)


def test_make_service_lightens_its_reactor(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(service, "lighten", seen.append)
    reactor = ThreadedMemoryReactor()
    service.makeService(options("--db", ":memory:"), reactor)
    assert seen == [reactor]


def test_a_reactor_without_the_private_parts_is_left_alone(
    reactor: EPollReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Twisted release that renamed what the poll uses: Twisted's own poll stays."""
    monkeypatch.delattr(reactor, "_selectables")
    assert not lighten(reactor)
    assert "doIteration" not in vars(reactor)


@pytest.mark.parametrize("lightened", [False, True], ids=["twisted", "lightened"])
@pytest.mark.parametrize("raised", [RuntimeError, SystemExit])
def test_an_error_escaping_one_dispatch_does_not_skip_the_next(
    reactor: EPollReactor, lightened: bool, raised: type[BaseException],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As under callWithLogger: the error (any but KeyboardInterrupt, a
    SystemExit in a connectionLost too) is logged, the turn goes on."""
    pairs = [socket.socketpair(), socket.socketpair()]
    first, second = (Ending(reactor, ours, "done") for ours, _ in pairs)
    first.name, second.name = "first", "second"
    for reader, (_, theirs) in zip((first, second), pairs, strict=True):
        reactor.addReader(reader)
        theirs.send(b"x")
    a, b = (theirs for _, theirs in pairs)
    read: list[Reader] = []

    def disconnect(selectable: Reader, why: object, is_read: bool) -> None:
        read.append(selectable)
        if len(read) == 1:
            raise raised("connectionLost raised")

    monkeypatch.setattr(reactor, "_disconnectSelectable", disconnect)
    try:
        logged = one_turn(reactor, lightened)
    finally:
        for s in (first.sock, second.sock, a, b):
            s.close()
    assert sorted(r.name for r in read) == ["first", "second"]
    # Logged through twisted.logger here, through the legacy log.err there.
    [failure] = [e.get("log_failure", e.get("failure")) for e in logged
                 if "log_failure" in e or "failure" in e]
    assert failure.check(raised)


def test_a_plain_read_skips_the_generic_dispatch(
    reactor: EPollReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read event alone runs doRead from the poll itself, a call less."""
    reader, theirs = ready_pair(reactor, "reader")
    dispatched: list[int] = []
    monkeypatch.setattr(reactor, "_doReadOrWrite", lambda s, fd, event: dispatched.append(event))
    try:
        assert lighten(reactor)
        reactor.doIteration(0)
    finally:
        reader.sock.close()
        theirs.close()
    assert reader.systems == ["-"]
    assert dispatched == []


@pytest.mark.parametrize("lightened", [False, True], ids=["twisted", "lightened"])
@pytest.mark.parametrize("how,ends", [("reads", None), ("done", error.ConnectionDone),
                                      ("raises", RuntimeError),
                                      ("no descriptor", error.ConnectionFdescWentAway)])
def test_a_plain_read_ends_a_descriptor_as_twisted_does(
    reactor: EPollReactor, lightened: bool, how: str, ends: type[Exception] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What doRead returns or raises, or a -1 descriptor, disconnects it
    as Twisted's own poll does (a read only if doRead returned); an error
    raised is logged."""
    in_read: list[bool] = []
    disconnect = reactor._disconnectSelectable

    def noting(selectable: Any, why: Any, is_read: bool) -> None:
        in_read.append(is_read)
        disconnect(selectable, why, is_read)

    monkeypatch.setattr(reactor, "_disconnectSelectable", noting)
    ours, theirs = socket.socketpair()
    reader = Ending(reactor, ours, how)
    reactor.addReader(reader)
    reader.registered = True
    theirs.send(b"x")
    try:
        logged = one_turn(reactor, lightened)
    finally:
        reactor.removeReader(reader)
        ours.close()
        theirs.close()
    assert reader.systems == ([] if how == "no descriptor" else ["-" if lightened else how])
    if ends is None:
        assert reader.lost == []
        return
    [lost] = reader.lost
    assert lost.check(ends)
    assert in_read == [how == "done"]
    assert reader not in reactor.getReaders()
    failures = [e["failure"] for e in logged if "failure" in e]  # the legacy log.err
    assert [f.check(RuntimeError) for f in failures] == ([RuntimeError] if how == "raises" else [])


def test_a_keyboard_interrupt_escaping_a_dispatch_ends_the_turn(
    reactor: EPollReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As callWithLogger re-raises it: Ctrl-C stops the reactor."""
    reader, theirs = ready_pair(reactor, "reader")

    def interrupted(selectable: Any, why: object, is_read: bool) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(reader, "doRead", lambda: error.ConnectionDone())
    monkeypatch.setattr(reactor, "_disconnectSelectable", interrupted)
    try:
        assert lighten(reactor)
        with pytest.raises(KeyboardInterrupt):
            reactor.doIteration(0)
    finally:
        reader.sock.close()
        theirs.close()
