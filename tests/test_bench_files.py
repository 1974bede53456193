"""Where the benchmark writes its results: a second run never overwrites the first."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from bench.report import plot
from bench.run import free_stem


def test_the_first_run_of_a_day_takes_the_date(tmp_path: Path) -> None:
    assert free_stem(tmp_path, "2026-12-02") == tmp_path / "2026-12-02"


def test_a_later_run_of_the_same_day_gets_the_next_letter(tmp_path: Path) -> None:
    (tmp_path / "2026-12-02.json").write_text("{}")
    assert free_stem(tmp_path, "2026-12-02") == tmp_path / "2026-12-02-b"
    (tmp_path / "2026-12-02-b.png").write_bytes(b"")  # any one of the three files counts
    assert free_stem(tmp_path, "2026-12-02") == tmp_path / "2026-12-02-c"
    assert free_stem(tmp_path, "2026-12-03") == tmp_path / "2026-12-03"


def test_an_idle_only_run_draws_no_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m bench --clients 0` (the idle scale only) has no fan-out
    panel to draw: no plot, rather than matplotlib's error after the run."""
    drawn: list[object] = []
    pyplot = types.ModuleType("matplotlib.pyplot")
    pyplot.subplots = lambda *a, **k: drawn.append(a)  # type: ignore[attr-defined]
    matplotlib = types.ModuleType("matplotlib")
    matplotlib.use = lambda backend: None  # type: ignore[attr-defined]
    matplotlib.pyplot = pyplot  # type: ignore[attr-defined]
    matplotlib.ticker = types.ModuleType("matplotlib.ticker")  # type: ignore[attr-defined]
    for name, module in [("matplotlib", matplotlib), ("matplotlib.pyplot", pyplot),
                         ("matplotlib.ticker", matplotlib.ticker)]:
        monkeypatch.setitem(sys.modules, name, module)
    results = {"plan": {"fan_clients": []}, "servers": {"chat": {"idle": {}}}}
    assert plot(results, tmp_path / "run.png") is False
    assert drawn == []
    assert not (tmp_path / "run.png").exists()
