"""
The idle scale's registration (bench.scenarios, bench.run): its
handshakes/s is a measured figure, so it keeps its connections opened at
once, and a server that registers too few is a failure of the run.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import bulk, report, scenarios
from bench import run as bench_run
from bench.servers import ServerSpec


class _Gen:
    def __init__(self) -> None:
        self.asked: dict[str, Any] = {}
        self.retried = 0

    def connect(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.asked = kwargs
        return {"ok": 10, "errors": {}, "seconds": 1.0, "durations": [0.1] * 10,
                "retried": self.retried}


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


def test_only_a_connection_the_server_never_accepted_is_made_again() -> None:
    """Connected on our side, its registration not acknowledged by the
    server's kernel after RETRY_UNACKED: no socket there (ngircd's SYN
    cookie whose ACK met a full accept queue).  A server that accepted and
    is only slow to answer is waited for."""
    late = bulk.RETRY_UNACKED
    assert bulk.stalled(0, False, late, 45, 1)
    assert not bulk.stalled(0, False, late, 0, 1), "acknowledged: accepted, only slow"
    assert not bulk.stalled(0, True, late, 45, 1), "answered"
    assert not bulk.stalled(0, False, late - 0.1, 45, 1), "not yet"
    assert not bulk.stalled(-1, False, late, 0, 1), "connecting: TCP retries the SYN"
    assert not bulk.stalled(0, False, late, 45, bulk.MAX_ATTEMPTS), "bounded"


def test_a_handshake_out_of_time_says_where_it_stood() -> None:
    assert bulk.timeout_reason(-1, False, 0) == "connect() unfinished"
    assert bulk.timeout_reason(0, False, 45) == "never accepted (registration not acknowledged)"
    assert bulk.timeout_reason(0, False, 0) == "accepted, no reply"
    assert bulk.timeout_reason(1, True, 0) == "registration unfinished"


def test_the_idle_scale_reports_the_attempts_made_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenarios, "settle", lambda *args: None)
    monkeypatch.setattr(scenarios.time, "sleep", lambda seconds: None)
    gen = _Gen()
    gen.retried = 516
    res = scenarios.idle_scale(_Server(), gen, 10, 200, 80.0)  # type: ignore[arg-type]
    assert res["retried"] == 516
    row = dict((name, get) for name, get, _ in report.idle_rows())
    assert row["connections never accepted, made again"](res) == "516"
