"""The bytecode counter (bench/opcount.py): deterministic, per function."""

from __future__ import annotations

import os

from bench.opcount import Counter, part, report


def _twice(n: int) -> int:
    return n * 2


def test_the_same_work_counts_the_same_bytecodes() -> None:
    first, second = Counter(), Counter()
    first.run(_twice, 3)
    second.run(_twice, 3)
    key = (_twice.__code__.co_filename, "_twice")
    assert first.ops[key] == second.ops[key] > 0
    assert first.calls[key] == 1


def test_files_are_told_apart_by_whose_code_they_are() -> None:
    sep = os.sep
    assert part(f"{sep}w{sep}twisted_chat{sep}server{sep}hub.py") == "ours"
    assert part(f"{sep}v{sep}site-packages{sep}twisted{sep}internet{sep}tcp.py") == "twisted"
    assert part(f"{sep}usr{sep}lib{sep}python3.11{sep}bisect.py") == "other"


def test_the_report_gives_counts_per_message() -> None:
    counter = Counter()
    counter.ops[(f"{os.sep}twisted_chat{os.sep}hub.py", "Hub.say")] = 40
    counter.calls[(f"{os.sep}twisted_chat{os.sep}hub.py", "Hub.say")] = 2
    text = report(counter, 2, 2, 10)
    assert "per message: 20.0 bytecodes, 1.0 Python calls" in text
    assert "ours         20.0 bytecodes" in text
    assert "Hub.say" in text


def test_a_line_with_no_number_is_reported_without_its_source() -> None:
    """Some bytecodes belong to no line (C{f_lineno} is None): the report
    lists them as C{?}, where linecache would raise."""
    counter = Counter()
    hub = f"{os.sep}twisted_chat{os.sep}hub.py"
    counter.ops[(hub, "Hub.say")] = 6
    counter.lines[(hub, None)] = 4
    counter.lines[(hub, 1)] = 2
    text = report(counter, 2, 2, 10, lines=5)
    assert "twisted_chat/hub.py:?" in text
    assert "twisted_chat/hub.py:1" in text
