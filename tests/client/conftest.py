"""Fixtures for the client's end-to-end tests (the server ones are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.serverproc import LineClient, ServerProcess


@pytest.fixture
def bob_online(
    chat_server: Callable[..., ServerProcess], connect: Callable[..., LineClient]
) -> tuple[ServerProcess, LineClient]:
    """A real server with C{bob} on a raw chat/1 connection, past its user list."""
    server = chat_server()
    bob = connect(server.port)
    bob.register("bob")
    return server, bob
