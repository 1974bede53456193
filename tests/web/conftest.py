"""Fixtures of the web client's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.webserver import WebServer


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    server = WebServer(tmp_path).start()
    yield server
    problems = server.server.problems()
    server.server.kill()
    assert not problems, problems
