"""Fixtures of the web client's tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.web.webserver import WebServer, serving


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebServer]:
    yield from serving(WebServer(tmp_path))
