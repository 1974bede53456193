"""
The idle scale's registration (bench.scenarios, bench.run): its
handshakes/s is a measured figure, so it keeps its connections opened at
once, and a server that registers too few is a failure of the run.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import run as bench_run
from bench import scenarios
from bench.servers import ServerSpec


class _Gen:
    def __init__(self) -> None:
        self.asked: dict[str, Any] = {}

    def connect(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.asked = kwargs
        return {"ok": 10, "errors": {}, "seconds": 1.0, "durations": [0.1] * 10}


class _Server:
    port = 7000

    def rss(self) -> int:
        return 0

    def cpu(self) -> float:
        return 0.0

    def alive(self) -> bool:
        return True


def test_the_idle_scale_opens_its_connections_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not the fan-out's few unanswered at a time: our server handles many
    handshakes in one turn, ngircd's short accept queue drops a burst, and
    both are what the figure measures."""
    monkeypatch.setattr(scenarios, "settle", lambda *args: None)
    monkeypatch.setattr(scenarios.time, "sleep", lambda seconds: None)
    gen = _Gen()
    scenarios.idle_scale(_Server(), gen, 10, 200, 80.0)  # type: ignore[arg-type]
    assert gen.asked["concurrency"] == gen.asked["window"] == 200


def test_an_idle_scale_that_registers_too_few_fails_the_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    short = {"registered": 9876, "clients": 10000, "errors": {"TimeoutError:None": 124}}
    monkeypatch.setattr(bench_run, "run_idle", lambda spec, plan, log: short)
    logged: list[str] = []
    entry: dict[str, Any] = {"fanout": {}}
    bench_run.measure(ServerSpec("ngircd", "ngircd", "irc", "ngircd"), {"fan_clients": []},
                      entry, False, logged.append)
    assert entry["failures"] == 1
    assert entry["idle"] is short
    assert logged == ["  idle: ONLY 9876 of 10000 clients registered: "
                      "{'TimeoutError:None': 124}"]
