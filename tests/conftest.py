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


def _sigterm_interrupts(signum: int, frame: FrameType | None) -> None:
    from twisted.internet import reactor

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    here = greenlet.getcurrent()
    waiting = getattr(type(reactor), "doIteration", None)
    if here.parent is not None and frame is not None and (
            frame.f_code is getattr(waiting, "__code__", None)):
        # The reactor waits for events (a Twisted test waits on it): raised
        # here, its loop would log the exception and carry on, so it is
        # raised where pytest waits for the test, in the main greenlet.
        here.parent.throw(KeyboardInterrupt("SIGTERM"))
        return  # back here only if a teardown turns the reactor again
    # A test running (in the reactor's greenlet or not): raised through it.
    raise KeyboardInterrupt("SIGTERM")


def _take_sigterm() -> None:
    signal.signal(signal.SIGTERM, _sigterm_interrupts)


@pytest.hookimpl(trylast=True)  # after pytest-twisted has installed its reactor
def pytest_configure(config: pytest.Config) -> None:
    from twisted.internet import reactor

    _take_sigterm()
    # The reactor installs its own handler as it starts: take it back then.
    reactor.addSystemEventTrigger("after", "startup", _take_sigterm)


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
