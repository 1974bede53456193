"""Fixtures for the client's end-to-end tests (the server ones are in tests/conftest.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.serverproc import LineClient, ServerProcess

from .tmuxpane import Pane


@pytest.fixture
def bob_online(
    chat_server: Callable[..., ServerProcess], connect: Callable[..., LineClient]
) -> tuple[ServerProcess, LineClient]:
    """A real server with C{bob} on a raw chat/1 connection, past its user list."""
    server = chat_server()
    bob = connect(server.port)
    bob.register("bob")
    return server, bob


@pytest.fixture
def pane() -> Iterator[Callable[..., Pane]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    panes: list[Pane] = []

    def start(command: list[str], **env: str) -> Pane:
        p = Pane(command, env)
        panes.append(p)
        return p

    yield start
    for p in panes:
        p.kill()
