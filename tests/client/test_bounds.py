"""
What a hostile or broken server, or a huge piped input, can make the client
hold or do stays bounded (review rev3cli C, M, E and R).
"""

from __future__ import annotations

import time

import pytest

from twisted_chat.client import terminal
from twisted_chat.client.render import Renderer, UserRow, plain
from twisted_chat.client.sanitize import clean, text_width

from .helpers import NOW, session


def renderer(me: str | None = "eve") -> Renderer:
    return Renderer(lambda: me, now=lambda: NOW, localtime=time.gmtime)


# -- C: the user table ---------------------------------------------------------


def test_a_huge_nick_does_not_widen_every_row_of_the_user_table() -> None:
    wide = "W" * 100_000
    rows = [UserRow(wide, "lobby"), UserRow("eve", "lobby"), UserRow("bob", "paired")]
    lines = [plain(line) for line in renderer().users(rows)]
    assert lines[1].split() == ["NICK", "STATUS"]
    # The long nick is cut, visibly, to a real nick's 24 columns.
    assert lines[2].startswith("  " + "W" * 23 + "… ")
    assert lines[3].split() == ["eve", "(you)", "in", "the", "lobby"]
    assert all(text_width(line) < 70 for line in lines), [len(line) for line in lines]


def test_a_nick_cut_in_the_table_counts_columns_not_characters() -> None:
    lines = [plain(line) for line in renderer().users([UserRow("漢" * 30, "lobby")])]
    assert lines[2].startswith("  " + "漢" * 11 + "…  in the lobby")


def test_user_table_output_is_not_rows_times_the_longest_nick() -> None:
    s = session("eve", interactive=False)
    s.ready("eve")
    wide = "W" * 100_000
    lines = [f"USER {wide} lobby"] + [f"USER u{i} lobby" for i in range(300)] + ["USERS 301"]
    received = sum(len(line) + 2 for line in lines)
    s.receive(*lines)
    shown = sum(len(line) for line in s.screen.lines)
    assert shown < received, (shown, received)  # it was rows x 100,000: 30,000,000


def test_a_huge_prompt_is_fitted_from_its_end_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # PAIRED with a megabyte-long partner nick: the prompt is fitted on every
    # key; only the part that can be shown is cleaned.
    cleaned: list[int] = []

    def spy(text: str) -> str:
        cleaned.append(len(text))
        return clean(text)

    monkeypatch.setattr(terminal, "clean", spy)
    prompt = "eve -> " + "é" * 500_000 + "> "
    shown = terminal.fit_prompt(prompt, 60)
    assert shown == "…" + "é" * 48 + "> "
    assert max(cleaned) < 1000, cleaned
    # A prompt that fits is left whole.
    assert terminal.fit_prompt("eve -> bob> ", 60) == "eve -> bob> "
