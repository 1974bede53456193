"""Issue 14.4: what a newcomer's replay and a quit text may cost."""

from __future__ import annotations

from twisted_chat.server.history import Entry, clip_text, make_entry, newest_within


def test_newest_within_keeps_the_newest_whole_lines_that_fit() -> None:
    lines = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10]
    assert newest_within(lines, 40) == b"".join(lines)
    assert newest_within(lines, 39) == b"b" * 10 + b"c" * 10 + b"d" * 10
    assert newest_within(lines, 20) == b"c" * 10 + b"d" * 10
    assert newest_within(lines, 9) == b""
    assert newest_within([], 100) == b""


def test_newest_within_stops_at_the_first_line_that_does_not_fit() -> None:
    # An older short line after a long one is not replayed out of order.
    assert newest_within([b"x", b"y" * 50, b"z"], 10) == b"z"


def test_clip_text_cuts_at_a_character_boundary() -> None:
    assert clip_text("hello", 10) == "hello"
    assert clip_text("x" * 300, 256) == "x" * 256
    assert clip_text("é" * 200, 255) == "é" * 127  # 2 bytes each; no half character
    assert clip_text("日本", 4) == "日"


def test_make_entry_makes_the_named_tuple() -> None:
    made = make_entry((1.5, "ann", "hi"))
    assert type(made) is Entry
    assert made == Entry(1.5, "ann", "hi")
    assert (made.ts, made.nick, made.text) == (1.5, "ann", "hi")
