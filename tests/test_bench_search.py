"""
The search for max sustained fan-out (bench.search), with made-up steps in
place of servers: which rates are tried and in which order, what is
reported, the retries and the bounds.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench import report
from bench import run as bench_run
from bench.search import NO_FAILURE, Limits, search

LIMITS = Limits(step_factor=1.5, max_steps=12, max_rate=100000.0, climb_budget=50.0,
                refine_steps=2, refine_budget=30.0)
# Climbing from 2,000 msgs/s by x1.5 to a limit of 58,000 (or 75,000): the
# last rate that held, the first that failed, the first midpoint between them
# and the second midpoint below that one (the 58,000 case).
HELD = 2000 * 1.5 ** 8  # 51,258
FAILED = 2000 * 1.5 ** 9  # 76,887
MID1 = math.sqrt(HELD * FAILED)  # 62,777
MID2 = math.sqrt(HELD * MID1)  # 56,725


class FakeBench:
    """Steps that hold up to C{limit} msgs/s, but for the attempts numbered
    in C{noisy} (0 is the fixed step's first); each takes C{seconds} of a
    fake clock."""

    def __init__(self, limit: float, noisy: set[int] | None = None,
                 seconds: float = 3.0) -> None:
        self.limit = limit
        self.noisy = noisy or set()
        self.seconds = seconds
        self.rates: list[float] = []
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def measure(self, rate: float) -> dict[str, Any]:
        held = rate <= self.limit and len(self.rates) not in self.noisy
        self.rates.append(rate)
        self.t += self.seconds
        return {"rate": rate, "held": held, "why": "" if held else f"failed at {rate:.0f}",
                "lines_per_s": rate * 100, "offered_deliveries_per_s": rate * 100,
                "limit": "server", "server_cpu_share": 1.0, "gen_cpu_share": 0.5}

    def search(self, limits: Limits = LIMITS, fixed: float = 2000.0) -> dict[str, Any]:
        return search(self.measure, fixed, limits, now=self.now)


def climb(n: int, fixed: float = 2000.0) -> list[float]:
    return [fixed * 1.5 ** i for i in range(n)]


def test_after_the_climb_fails_the_gap_is_halved_twice() -> None:
    bench = FakeBench(limit=58000.0)
    res = bench.search()
    # HELD and MID2 hold; FAILED and MID1 fail
    assert bench.rates == pytest.approx([*climb(10), FAILED, MID1, MID1, MID2])
    assert [(s.get("retry", False), s.get("refine", False)) for s in res["steps"][-5:]] == [
        (False, False), (True, False), (False, True), (True, True), (False, True)]
    assert not any(s.get("refine") for s in res["steps"][:-3])
    sustained = res["sustained"]
    assert sustained["rate"] == pytest.approx(MID2)
    assert sustained["deliveries_per_s"] == pytest.approx(MID2 * 100)
    assert sustained["failed_rate"] == pytest.approx(MID1)
    assert sustained["stopped_by"] == f"failed at {MID1:.0f}"
    assert sustained["resolution"] == pytest.approx(LIMITS.resolution()) == pytest.approx(1.1067,
                                                                                            abs=1e-4)


def test_a_midpoint_that_holds_raises_the_lower_bound() -> None:
    bench = FakeBench(limit=75000.0)
    res = bench.search()
    upper = math.sqrt(MID1 * FAILED)  # 69,470: holds
    assert bench.rates[-2:] == pytest.approx([MID1, upper])
    assert res["sustained"]["rate"] == pytest.approx(upper)
    assert res["sustained"]["failed_rate"] == pytest.approx(FAILED)
    assert res["sustained"]["stopped_by"] == f"failed at {FAILED:.0f}"


def test_a_midpoint_that_fails_once_is_tried_again_and_counts_if_it_held() -> None:
    bench = FakeBench(limit=75000.0, noisy={11})  # the fixed step, 10 climbing, then MID1
    res = bench.search()
    assert bench.rates[11:13] == pytest.approx([MID1, MID1])
    assert res["steps"][-2]["retry"] and res["steps"][-2]["held"]
    assert res["sustained"]["rate"] > MID1


def test_a_fixed_step_that_fails_once_is_tried_again() -> None:
    bench = FakeBench(limit=58000.0, noisy={0})
    res = bench.search()
    assert bench.rates[:3] == pytest.approx([2000.0, 2000.0, 3000.0])
    assert res["fixed_first"]["held"] is False and "retry" not in res["fixed_first"]
    assert res["fixed"]["held"] is True and res["fixed"]["retry"] is True
    assert res["sustained"]["rate"] == pytest.approx(MID2, rel=1e-4)


def test_a_fixed_step_that_holds_at_once_is_not_tried_again() -> None:
    res = FakeBench(limit=58000.0).search()
    assert "fixed_first" not in res and "retry" not in res["fixed"]


def test_a_fixed_step_that_fails_twice_ends_the_search_at_zero() -> None:
    bench = FakeBench(limit=1000.0)
    res = bench.search()
    assert bench.rates == [2000.0, 2000.0]
    assert res["steps"] == []
    assert res["fixed_first"]["held"] is res["fixed"]["held"] is False
    assert res["sustained"]["rate"] == res["sustained"]["deliveries_per_s"] == 0.0
    assert res["sustained"]["stopped_by"] == "failed at 2000"
    assert res["sustained"]["resolution"] is None


def test_a_search_that_never_fails_has_nothing_to_refine() -> None:
    bench = FakeBench(limit=1e9)
    limits = Limits(1.5, 4, 1e9, 1e9, 2, 1e9)
    res = bench.search(limits)
    assert bench.rates == pytest.approx(climb(5))
    assert res["sustained"]["rate"] == pytest.approx(2000 * 1.5 ** 4)
    assert res["sustained"]["stopped_by"] == NO_FAILURE
    assert res["sustained"]["resolution"] is None


def test_the_climb_stops_below_the_top_rate() -> None:
    bench = FakeBench(limit=1e9)
    bench.search(Limits(1.5, 12, 10000.0, 1e9, 2, 1e9))
    assert bench.rates == pytest.approx(climb(4))  # 2,000 to 6,750; 10,125 is over


def test_the_climb_stops_when_its_budget_is_spent() -> None:
    bench = FakeBench(limit=1e9, seconds=3.0)
    res = bench.search(Limits(1.5, 12, 1e9, 10.0, 2, 1e9))
    assert len(bench.rates) == 1 + 4  # starts at 0, 3, 6, 9 s; not at 12
    assert res["search_seconds"] == {"climb": 12.0, "refine": 0.0}


def test_the_refinement_has_its_own_budget() -> None:
    """A long climb leaves the refinement its own time; a short refinement
    budget stops it after the midpoint it started in time."""
    bench = FakeBench(limit=58000.0, seconds=3.0)
    res = bench.search(Limits(1.5, 12, 1e5, 40.0, 2, 5.0))
    assert bench.rates[-3:] == pytest.approx([FAILED, MID1, MID1])  # 6 s: no second midpoint
    assert res["sustained"]["rate"] == pytest.approx(HELD)
    assert res["sustained"]["resolution"] == pytest.approx(1.5 ** 0.5)
    assert res["search_seconds"] == {"climb": 30.0, "refine": 6.0}


def test_no_refinement_steps_is_the_plain_climb() -> None:
    bench = FakeBench(limit=58000.0)
    res = bench.search(Limits(1.5, 12, 1e5, 1e9, 0, 1e9))
    assert bench.rates == pytest.approx([*climb(10), FAILED])
    assert res["sustained"]["resolution"] == pytest.approx(1.5)


def test_a_dead_server_ends_the_search() -> None:
    bench = FakeBench(limit=1e9)
    search(bench.measure, 2000.0, LIMITS, ready=lambda: len(bench.rates) < 3, now=bench.now)
    assert len(bench.rates) == 3


def test_the_plan_bounds_the_search() -> None:
    full = bench_run.search_limits(bench_run.FULL, 1000, "chat")
    assert full == Limits(1.5, 12, 30000.0, 50.0, 2, 30.0)
    assert bench_run.search_limits(bench_run.FULL, 100, "chat-nopace").climb_budget == 10.0


def test_the_report_says_how_finely_max_sustained_is_known() -> None:
    assert "known to within x1.107." in report.search_method(bench_run.FULL)
    assert "known to within x2.0." in report.search_method({"step_factor": 2.0})


def test_the_report_shows_a_fixed_step_that_failed_at_first() -> None:
    res = FakeBench(limit=58000.0, noisy={0}).search()
    servers = {"ngircd": {"fanout": {"100": res}}, "chat": {"fanout": {"100": {"error": "x"}}}}
    assert report.retried_fixed(servers, report.MAIN, 100) == [
        "", "- `ngircd`: the fixed-rate step failed at first (failed at 2000); "
        "the table has its retry."]
