"""
The room a fan-out search measures in (bench.run.Rooms), with fakes for the
server, the generator and the step: a step that cut clients leaves a room
that would fail every later step, so the next one gets a fresh room.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench import report, scenarios
from bench import run as bench_run
from bench.servers import ServerSpec
from tests.test_bench_search import FAILED, HELD, MID1, MID2

SPEC = ServerSpec("chat", "twisted-chat", "chat/1", "chat")


class FakeServer:
    def __init__(self) -> None:
        self.up = True
        self.max_rss = 1000

    def alive(self) -> bool:
        return self.up


class FakeGen:
    def __init__(self) -> None:
        self.lost = 0

    def snapshot(self) -> dict[str, Any]:
        return {"lost": self.lost}


class Bench:
    """Rooms made, and steps that hold up to C{limit} msgs/s and cut every
    client of their room when they fail; C{broken} says a room is made
    with clients missing."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.rooms: list[tuple[FakeServer, FakeGen]] = []
        self.steps: list[tuple[float, int]] = []  # rate, room it ran in
        self.broken = False
        self.error = "only 97 of 100 clients registered"

    @contextlib.contextmanager
    def room(self, spec: ServerSpec, plan: dict[str, Any],
             clients: int) -> Iterator[tuple[FakeServer, FakeGen, dict[str, Any]]]:
        if self.broken:
            raise RuntimeError(self.error)
        srv, gen = FakeServer(), FakeGen()
        self.rooms.append((srv, gen))
        try:
            yield srv, gen, {"seconds": 0.5}
        finally:
            srv.up = False

    def one_rate(self, srv: FakeServer, gen: FakeGen, clients: int, rate: float,
                 duration: float, drain: float) -> dict[str, Any]:
        held = rate <= self.limit and gen.lost == 0
        self.steps.append((rate, [s for s, _ in self.rooms].index(srv)))
        if not held:
            gen.lost = clients
        return {"rate": rate, "held": held, "why": "" if held else "clients cut",
                "lines_per_s": rate, "offered_deliveries_per_s": rate, "limit": "neither",
                "server_cpu_share": 0.5, "gen_cpu_share": 0.5,
                "latency_ms": {"p50": 1.0, "p99": 2.0}, "server_us_per_line": 1.0}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Bench:
    bench = Bench(limit=58000.0)
    monkeypatch.setattr(bench_run, "room", bench.room)
    monkeypatch.setattr(scenarios, "one_rate", bench.one_rate)
    return bench


def test_a_step_after_a_cut_runs_in_a_fresh_room(fake: Bench) -> None:
    rooms = bench_run.Rooms(SPEC, bench_run.FULL, 100)
    assert rooms.measure(76887.0)["held"] is False
    assert rooms.ready() is True
    step = rooms.measure(50000.0)
    assert step["held"] is True and step["fresh_room"] is True
    assert not fake.rooms[0][0].up, "the old room's server was stopped"
    assert rooms.ready() is True
    assert "fresh_room" not in rooms.measure(50000.0)
    assert fake.steps == [(76887.0, 0), (50000.0, 1), (50000.0, 1)]
    rooms.close()
    assert rooms.made == 2
    assert not fake.rooms[1][0].up


def test_a_dead_server_is_not_made_again(fake: Bench) -> None:
    rooms = bench_run.Rooms(SPEC, bench_run.FULL, 100)
    fake.rooms[0][0].up = False
    assert rooms.ready() is False
    assert rooms.made == 1


def test_a_room_that_cannot_be_made_again_ends_the_search(fake: Bench) -> None:
    rooms = bench_run.Rooms(SPEC, bench_run.FULL, 100)
    rooms.measure(76887.0)
    fake.broken = True
    assert rooms.ready() is False
    assert rooms.error == "RuntimeError('only 97 of 100 clients registered')"
    rooms.close()


def test_the_retries_and_midpoints_after_a_cut_measure_whole_rooms(fake: Bench) -> None:
    logged: list[str] = []
    res = bench_run.run_fanout(SPEC, bench_run.FULL, 100, logged.append)
    # MID1 fails: the next room's; MID2 holds
    assert [(round(r), room) for r, room in fake.steps[-5:]] == [
        (round(FAILED), 0), (round(FAILED), 1), (round(MID1), 2), (round(MID1), 3),
        (round(MID2), 4)]
    assert [s.get("fresh_room", False) for s in res["steps"][-5:]] == [
        False, True, True, True, True]
    assert res["sustained"]["rate"] == pytest.approx(MID2)
    assert res["rooms"] == 5
    assert all(not srv.up for srv, _ in fake.rooms)
    assert "rooms 5)" in logged[0]


def _broken_after_the_first_cut(fake: Bench, monkeypatch: pytest.MonkeyPatch,
                                logged: list[str]) -> dict[str, Any]:
    """The search's results when no room can be made after the first cut."""
    def then_broken(*args: Any) -> dict[str, Any]:
        step = fake.one_rate(*args)
        fake.broken = fake.broken or not step["held"]
        return step

    monkeypatch.setattr(scenarios, "one_rate", then_broken)
    return bench_run.run_fanout(SPEC, bench_run.FULL, 100, logged.append)


def _because() -> Callable[[dict[str, Any]], Any]:
    return dict((name, get) for name, get, _ in report.fixed_rows())[
        "… lowest rate that failed, because"]


def test_a_fresh_room_that_cannot_be_made_is_logged_and_reported(
        fake: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    logged: list[str] = []
    res = _broken_after_the_first_cut(fake, monkeypatch, logged)
    assert [round(r) for r, _ in fake.steps[-2:]] == [round(HELD), round(FAILED)]
    assert not any(s.get("retry") or s.get("refine") for s in res["steps"])
    assert res["sustained"]["failed_rate"] == pytest.approx(FAILED)
    assert res["room_error"] == "RuntimeError('only 97 of 100 clients registered')"
    assert res["rooms"] == 1
    assert logged[0].endswith(
        "rooms 1; fresh room failed: RuntimeError('only 97 of 100 clients registered'))")
    because = _because()
    assert because(res) == ("clients cut; fresh room failed: "
                            "RuntimeError('only 97 of 100 clients registered')")
    assert because({**res, "room_error": "RuntimeError('a | b')"}).endswith(
        "RuntimeError('a \\| b')")


def test_a_long_room_error_shows_its_end_on_one_line_and_whole_in_the_json(
        fake: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that exited at start leaves up to 1,500 bytes of its log in
    the error: the table's cell shows the end of it (where the cause is), on
    one line."""
    log = "".join(f"2026-12-07 line {i} of the log\n" for i in range(40))
    fake.error = f"chat exited at start: {log}OSError: [Errno 98] Address in use\n"
    res = _broken_after_the_first_cut(fake, monkeypatch, [])
    assert res["room_error"] == repr(RuntimeError(fake.error))  # the JSON's
    cell = _because()(res)
    shown = cell.removeprefix("clients cut; fresh room failed: ")
    assert len(shown) == 1 + report.ERROR_TAIL
    assert shown.startswith("…")
    assert shown.endswith("OSError: [Errno 98] Address in use ')")
    assert "\n" not in cell and "\\n" not in cell
    # a short one is shown whole, as before
    assert _because()({**res, "room_error": "RuntimeError('x\\ny')"}).endswith(
        "failed: RuntimeError('x y')")
