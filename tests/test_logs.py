"""Issue 14.10: the server's log level (info by default, --log-level)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import globalLogPublisher

from twisted_chat.server import logs


@pytest.fixture
def seen() -> Iterator[list[str]]:
    events: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "test.logs":
            events.append(event["log_level"].name)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)
    logs.set_level(logs.DEFAULT_LEVEL)


def emit_all() -> None:
    log = logs.logger("test.logs")
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")


def test_debug_lines_are_not_logged_by_default(seen: list[str]) -> None:
    assert logs.level() == "info"
    emit_all()
    assert seen == ["info", "warn", "error"]


def test_the_level_is_a_setting(seen: list[str]) -> None:
    logs.set_level("warn")
    emit_all()
    logs.set_level("debug")
    emit_all()
    assert seen == ["warn", "error", "debug", "info", "warn", "error"]


def test_a_class_logger_keeps_the_filter() -> None:
    class Thing:
        log = logs.logger()

    assert Thing().log.observer is logs.observer
