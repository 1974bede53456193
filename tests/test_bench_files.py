"""Where the benchmark writes its results: a second run never overwrites the first."""

from __future__ import annotations

from pathlib import Path

from bench.run import free_stem


def test_the_first_run_of_a_day_takes_the_date(tmp_path: Path) -> None:
    assert free_stem(tmp_path, "2026-12-02") == tmp_path / "2026-12-02"


def test_a_later_run_of_the_same_day_gets_the_next_letter(tmp_path: Path) -> None:
    (tmp_path / "2026-12-02.json").write_text("{}")
    assert free_stem(tmp_path, "2026-12-02") == tmp_path / "2026-12-02-b"
    (tmp_path / "2026-12-02-b.png").write_bytes(b"")  # any one of the three files counts
    assert free_stem(tmp_path, "2026-12-02") == tmp_path / "2026-12-02-c"
    assert free_stem(tmp_path, "2026-12-03") == tmp_path / "2026-12-03"
