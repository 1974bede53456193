"""
bench.ab's method: the order of servers in a round moves their figures (the
first comes out higher), so rounds rotate it; and the comparison is made
round by round, against the first-listed server in the same round.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench import ab as bench_ab
from bench.ab import Paired, paired_ratio, round_order
from bench.servers import ServerSpec

KEYS = ["chat", "floor", "inspircd"]


def test_rotate_puts_every_server_in_every_position_equally_often() -> None:
    orders = [round_order(KEYS, r, "rotate") for r in range(2 * len(KEYS))]
    assert orders[:3] == [["chat", "floor", "inspircd"], ["floor", "inspircd", "chat"],
                          ["inspircd", "chat", "floor"]]
    assert orders[3:] == orders[:3]
    for position in range(len(KEYS)):
        assert Counter(o[position] for o in orders) == dict.fromkeys(KEYS, 2)


def test_fixed_runs_the_servers_as_listed_every_round() -> None:
    assert all(round_order(KEYS, r, "fixed") == KEYS for r in range(4))


def test_the_paired_ratio_is_taken_round_by_round() -> None:
    # a ratio of means would say 6/6 = 1.00x; the rounds say 2.0, 0.5, 1.0
    pair = paired_ratio([2.0, 1.0, 3.0], [1.0, 2.0, 3.0])
    assert pair == Paired(median=1.0, low=0.5, high=2.0, below=1, rounds=3)
    assert str(pair) == "median 1.00x [0.50-2.00], below 1.0 in 1 of 3 rounds"


def test_a_round_without_both_figures_is_left_out_of_the_pairs() -> None:
    assert paired_ratio([0.9, None, 0.8, 1.2], [1.0, 1.0, None, 1.0]) == Paired(
        median=pytest.approx(1.05), low=0.9, high=1.2, below=1, rounds=2)
    assert paired_ratio([None, 1.0], [1.0, 0.0]) is None


def test_the_pairs_must_come_from_the_same_rounds() -> None:
    with pytest.raises(ValueError):
        paired_ratio([1.0, 2.0], [1.0])


def _step(us_per_line: float) -> dict[str, Any]:
    return {"server_us_per_line": us_per_line, "server_cpu_share": 0.5,
            "machine_us_per_line": 2 * us_per_line, "gen_cpu_share": 0.3,
            "fraction": 1.0, "latency_ms": {"p50": 1.0, "p99": 2.0}}


# Marked bench, as test_docs asks of a bench test that calls a main; no
# server starts (measure is replaced).
@pytest.mark.bench
@pytest.mark.parametrize(("order", "expected"), [
    ("rotate", ["chat", "floor", "floor", "chat", "chat", "floor"]),
    ("fixed", ["chat", "floor"] * 3)])
def test_main_runs_the_rounds_in_order_and_prints_the_paired_ratio(
        order: str, expected: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    # floor's figures: 0.5x, 1.5x, 0.8x of chat's in the same round
    figures = {"chat": iter([2.0, 2.0, 5.0]), "floor": iter([1.0, 3.0, 4.0])}

    def measure(spec: ServerSpec, *args: Any) -> dict[str, Any]:
        ran.append(spec.key)
        return _step(next(figures[spec.key]))

    monkeypatch.setattr(bench_ab, "raise_nofile", lambda: 0)
    monkeypatch.setattr(bench_ab, "measure", measure)
    out = tmp_path / "ab.txt"
    assert bench_ab.main(["--servers", "chat,floor", "--rounds", "3", "--order", order,
                          "--out", str(out)]) == 0
    assert ran == expected
    lines = out.read_text().splitlines()
    assert lines[0].endswith(f"order {order}" + (
        " (not a multiple of the servers: positions uneven)" if order == "rotate" else ""))
    assert lines[-2] == "paired ratio to chat (server us/line over its, round by round):"
    assert lines[-1] == ("  floor          median 0.80x [0.50-1.50], "
                         "below 1.0 in 2 of 3 rounds")
