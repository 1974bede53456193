from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import greenlet
import pytest
from twisted.logger import formatEvent, globalLogPublisher

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import LineClient, ServerProcess

# -- SIGTERM ends the run, as Ctrl-C does -----------------------------------
#
# pytest-twisted runs Twisted's reactor in a greenlet, and every test inside
# it (a call the reactor makes).  The reactor, as it starts, takes SIGTERM
# for its own: its handler only asks the reactor to stop at its next turn,
# so a test blocking outside it (every e2e test does) went on, and the next
# ones too: a CI job's kill left pytest running.  Instead SIGTERM interrupts
# the run as Ctrl-C does (KeyboardInterrupt): the fixtures' teardowns still
# run (the servers a test started are killed), and pytest exits with 2.  A
# second SIGTERM ends the process outright.


def _raise_in_the_test(error: BaseException, frame: FrameType | None) -> None:
    """Raise C{error} from a signal handler so that it ends the test."""
    from twisted.internet import reactor

    here = greenlet.getcurrent()
    waiting = getattr(type(reactor), "doIteration", None)
    if here.parent is not None and frame is not None and (
            frame.f_code is getattr(waiting, "__code__", None)):
        # The reactor waits for events (a Twisted test waits on it): raised
        # here, its loop would log the exception and carry on, so it is
        # raised where pytest waits for the test, in the main greenlet.
        here.parent.throw(error)
        return  # back here only if a teardown turns the reactor again
    # A test running (in the reactor's greenlet or not): raised through it.
    raise error


def _sigterm_interrupts(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _raise_in_the_test(KeyboardInterrupt("SIGTERM"), frame)


def _take_sigterm() -> None:
    signal.signal(signal.SIGTERM, _sigterm_interrupts)


@pytest.hookimpl(trylast=True)  # after pytest-twisted has installed its reactor
def pytest_configure(config: pytest.Config) -> None:
    from twisted.internet import reactor

    _take_sigterm()
    # The reactor installs its own handler as it starts: take it back then.
    reactor.addSystemEventTrigger("after", "startup", _take_sigterm)


# -- a test that hangs fails, by name -----------------------------------------
#
# pytest-timeout ends a test that runs past pyproject's timeout (or its own
# @pytest.mark.timeout), so a hang names its test instead of holding the
# run until CI's time is up.  Its signal method raises where SIGALRM lands,
# which under pytest-twisted is often the reactor's wait: the loop logged
# the failure and the test hung on.  Here it is raised as SIGTERM is.
TIMEOUT_AGAIN = 1.0  # seconds: for a failure a reactor's call swallowed
_TIMED_OUT = pytest.StashKey[bool]()


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    if settings.method != "signal":
        return None  # pytest-timeout's own thread method

    def expired(signum: int, frame: FrameType | None) -> None:
        import pytest_timeout  # type: ignore[import-untyped]  # (it calls this hook)

        if not settings.disable_debugger_detection and pytest_timeout.is_debugging():
            return  # stopped in a debugger: not a hang
        item.stash[_TIMED_OUT] = True
        if greenlet.getcurrent().parent is not None:
            # In the reactor's greenlet, it ends the call running there: the
            # test's own, or another whose failure the loop logs and goes
            # on from; then the next alarm finds the test waiting on it.
            signal.setitimer(signal.ITIMER_REAL, TIMEOUT_AGAIN)
        _raise_in_the_test(
            pytest.fail.Exception(f"Timeout (>{settings.timeout}s) from pytest-timeout."), frame)

    def cancel() -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # pytest-timeout calls it
    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


def pytest_runtest_makereport(item: pytest.Item) -> None:
    if item.stash.get(_TIMED_OUT, False):
        signal.setitimer(signal.ITIMER_REAL, 0)  # ended: the teardown is not cut short


@pytest.fixture
def chat_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start real servers (C{chat_server("--history", "5")}); all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, **kwargs: object) -> ServerProcess:
        server = ServerProcess(tmp_path, args, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Every line logged meanwhile, formatted, from anyone (Twisted's,
    autobahn's, and those the server's level filter lets through)."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def connect() -> Iterator[Callable[..., LineClient]]:
    """Open line clients to a port; all are closed after the test."""
    clients: list[LineClient] = []

    def open_client(port: int, **kwargs: object) -> LineClient:
        client = LineClient(port, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private C{redis-server} (tests/redisproc.py) on a free loopback port,
    without persistence (a test that restarts it, or checks what a node says
    of persistence, starts its own), stopped by its pid after the test."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path, persist=False).start()
    yield server
    server.stop()
