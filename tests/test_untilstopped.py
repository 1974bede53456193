"""
The accounts tool with C{--redis}, interrupted (SIGINT, SIGTERM) while it
waits for Redis, in every order the signal, the reactor's turn and the
command's own end can come in: always exit 130 and its one empty line.

Run whole (L{twisted_chat.accounts.main}) on a fake reactor that keeps
Twisted's order within one turn (C{ReactorBase.runUntilCurrent}): the calls
queued by signal handlers, then the timed calls due, then, once stopped,
the shutdown's C{before} triggers, then its C{during} ones (every
connection lost, the loop's end).  Signals go through a fake C{signal}
table; Redis is a fake connection whose commands wait for the test.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import pytest
import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.task import Clock

from twisted_chat import accounts
from twisted_chat.server.cluster import accounts as cluster_accounts
from twisted_chat.server.cluster.accounts import TIMEOUT, RedisBook

URL = "redis://127.0.0.1:6379/0"
ACCOUNT = '{"nick":"alice","hash":"x","created":0,"changed":0}'


class FakeSignals:
    """The process's handlers of SIGINT and SIGTERM, as the C{signal}
    module sets them (the test's process keeps its own)."""

    def __init__(self) -> None:
        self.handlers: dict[int, Any] = {signal.SIGINT: signal.default_int_handler,
                                         signal.SIGTERM: signal.SIG_DFL}

    def getsignal(self, number: int) -> Any:
        return self.handlers[number]

    def signal(self, number: int, handler: Any) -> Any:
        before, self.handlers[number] = self.handlers[number], handler
        return before

    def deliver(self, number: int) -> None:
        """The signal comes: its Python handler runs (an ignored one, not)."""
        handler = self.handlers[number]
        if callable(handler):
            handler(number, None)
        else:
            assert handler == signal.SIG_IGN


class FakeRedis:
    """A connection whose commands wait until the test answers them; lost,
    it fails them as txredisapi does."""

    def __init__(self) -> None:
        self.waiting: list[Deferred[Any]] = []
        self.sent: list[tuple[Any, ...]] = []
        self.closed = False

    def execute(self, *args: Any) -> Deferred[Any]:
        self.sent.append(args)
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d

    def answer(self, reply: Any) -> None:
        self.waiting.pop(0).callback(reply)

    def lose(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            if not d.called:  # not timed out already
                d.errback(txredisapi.ConnectionError("Lost connection"))

    def close(self) -> None:
        self.closed = True


class LoopReactor(Clock):
    """
    Twisted's reactor loop, in the order that matters here.  C{turns}: what
    happens in each wait for I/O (C{doIteration}), in order: replies,
    signals, time passing; one turn at a time, each followed by Twisted's
    C{runUntilCurrent}.
    """

    def __init__(self, signals: FakeSignals, redis: FakeRedis,
                 turns: list[Callable[[LoopReactor], None]]) -> None:
        super().__init__()
        self.signals = signals
        self.redis = redis
        self.turns = list(turns)
        self.when_running: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.before_shutdown: list[Callable[[], Any]] = []
        self.from_threads: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.logged: list[BaseException] = []  # Twisted logs them: tracebacks
        self.stops = 0
        self.stopped = self.just_stopped = self.running = False

    def callWhenRunning(self, f: Callable[..., Any], *args: Any) -> None:
        self.when_running.append((f, args))

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any]) -> None:
        assert (phase, event) == ("before", "shutdown")
        self.before_shutdown.append(f)

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.from_threads.append((f, args))

    def stop(self) -> None:
        self.stops += 1
        if self.stopped:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stopped = self.just_stopped = True

    def _twisted_handler(self, number: int, frame: object) -> None:
        self.callFromThread(self.stop)

    def run(self, installSignalHandlers: bool = True) -> None:
        assert installSignalHandlers
        # Twisted's handlers: SIGINT's only over Python's own (not an ignored one).
        if self.signals.getsignal(signal.SIGINT) is signal.default_int_handler:
            self.signals.signal(signal.SIGINT, self._twisted_handler)
        self.signals.signal(signal.SIGTERM, self._twisted_handler)
        self.running = True
        for f, args in self.when_running:
            f(*args)
        while True:
            self._run_until_current()
            if not self.running:
                return
            assert self.turns, "the tool would wait for ever"
            self.turns.pop(0)(self)

    def _run_until_current(self) -> None:
        calls, self.from_threads = self.from_threads, []
        for f, args in calls:
            try:
                f(*args)
            except Exception as e:
                self.logged.append(e)
        self.advance(0)  # the timed calls due
        if self.just_stopped:
            self.just_stopped = False
            for trigger in self.before_shutdown:
                trigger()
            self.redis.lose()  # during: disconnectAll
            self.running = False  # and crash


def signalled(number: int = signal.SIGINT) -> Callable[[LoopReactor], None]:
    return lambda reactor: reactor.signals.deliver(number)


def time_passes(seconds: float) -> Callable[[LoopReactor], None]:
    def turn(reactor: LoopReactor) -> None:
        reactor.rightNow += seconds  # the timed calls run after the turn's I/O

    return turn


def answered(reactor: LoopReactor) -> None:
    reactor.redis.answer(["alice", ACCOUNT])


def redis_closes(reactor: LoopReactor) -> None:
    reactor.redis.lose()


def together(*parts: Callable[[LoopReactor], None]) -> Callable[[LoopReactor], None]:
    """All in one turn, in this order."""
    def turn(reactor: LoopReactor) -> None:
        for part in parts:
            part(reactor)

    return turn


Tool = Callable[[list[Callable[[LoopReactor], None]]], tuple[int, str, str, LoopReactor]]


@pytest.fixture
def signals() -> FakeSignals:
    return FakeSignals()


@pytest.fixture
def tool(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
         signals: FakeSignals) -> Tool:
    """C{main(["list", "--redis", URL])} on a L{LoopReactor} taking C{turns}:
    its exit status, stdout, stderr, and the reactor."""
    monkeypatch.setattr(accounts, "_signals", signals)

    def run(turns: list[Callable[[LoopReactor], None]]) -> tuple[int, str, str, LoopReactor]:
        redis = FakeRedis()
        reactor = LoopReactor(signals, redis, turns)

        async def open_book(url: str, on: Any, password_file: str | None = None) -> Any:
            return RedisBook(redis.execute, on), redis.close

        monkeypatch.setattr(accounts, "_reactor", lambda: reactor)
        monkeypatch.setattr(cluster_accounts, "open_book", open_book)
        status = accounts.main(["list", "--redis", URL])
        out, err = capsys.readouterr()
        assert redis.sent == [("HGETALL", "chat:accounts")]
        return status, out, err, reactor

    return run


LISTED = "alice\tcreated 1970-01-01T00:00:00Z\tchanged 1970-01-01T00:00:00Z\n"

# The turns, and whether the list's answer came (then it is printed).
INTERRUPTED = {
    "alone": ([signalled()], False),
    "SIGTERM": ([signalled(signal.SIGTERM)], False),
    "twice": ([together(signalled(), signalled())], False),
    "in its last moment before the timeout": ([time_passes(TIMEOUT - 0.001), signalled()],
                                              False),
    # The timeout runs in the turn the signal's stop does, before the shutdown.
    "in the turn its timeout is due": ([together(signalled(), time_passes(TIMEOUT))], False),
    "then its answer, in one turn": ([together(signalled(), answered)], True),
    "then Redis closing, in one turn": ([together(signalled(), redis_closes)], False),
    "after its answer, in one turn": ([together(answered, signalled())], True),
    "after Redis closed, in one turn": ([together(redis_closes, signalled())], False),
}


@pytest.mark.parametrize(("turns", "listed"), INTERRUPTED.values(), ids=INTERRUPTED.keys())
def test_interrupted_while_waiting_for_redis_is_130_whatever_ends_the_command(
    tool: Tool, turns: list[Callable[[LoopReactor], None]], listed: bool
) -> None:
    """The signal, not what its shutdown (or the same turn) did to the
    command waiting for Redis: exit 130 and one empty line on stderr, not
    "Redis is out of reach" (exit 1) nor exit 0 (the list is printed if
    its answer came in time); and the reactor is stopped once (a second
    stop is a ReactorNotRunning traceback)."""
    status, out, err, reactor = tool(turns)
    assert (status, out, err) == (130, LISTED if listed else "", "\n")
    assert reactor.stops == 1
    assert reactor.logged == []
    assert reactor.redis.closed or reactor.redis.waiting == []


def test_not_interrupted_the_list_is_printed(tool: Tool) -> None:
    status, out, err, reactor = tool([answered])
    assert (status, out, err) == (0, LISTED, "")
    assert (reactor.stops, reactor.redis.closed) == (1, True)


def test_a_timeout_not_interrupted_is_redis_out_of_reach(tool: Tool) -> None:
    status, out, err, _ = tool([time_passes(TIMEOUT)])
    assert (status, out, err) == (1, "", "twisted_chat.accounts: the cluster's Redis is out "
                                         "of reach (no answer within 5 seconds)\n")


def test_a_sigint_ignored_stays_ignored(tool: Tool, signals: FakeSignals) -> None:
    """Started as a shell's background job (C{tool &}, no job control),
    the tool's SIGINT is ignored, as the shell meant: a Ctrl-C on the
    terminal does not stop it, as Python and Twisted leave it."""
    signals.handlers[signal.SIGINT] = signal.SIG_IGN
    status, out, _, _ = tool([together(signalled(), answered)])
    assert (status, out) == (0, LISTED)
    assert signals.handlers[signal.SIGINT] == signal.SIG_IGN


def test_the_handlers_are_given_back_after(tool: Tool, signals: FakeSignals) -> None:
    """A Ctrl-C once the reactor is done raises KeyboardInterrupt again."""
    tool([answered])
    assert signals.handlers == {signal.SIGINT: signal.default_int_handler,
                                signal.SIGTERM: signal.SIG_DFL}
