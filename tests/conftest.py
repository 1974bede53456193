from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import LineClient, ServerProcess


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
