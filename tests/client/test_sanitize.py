"""Hostile text from the network must not reach the terminal as it is."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from twisted_chat.client.render import Span, Style, ansi, plain
from twisted_chat.client.sanitize import (
    INVISIBLE_FILLERS,
    MAX_MARKS,
    clean,
    decode,
    text_width,
)


def _terminal_safe(text: str) -> bool:
    return all(
        ch in "\u200c\u200d"
        or (
            unicodedata.category(ch) not in {"Cc", "Cf", "Zl", "Zp", "Cs"}
            and ch not in INVISIBLE_FILLERS
        )
        for ch in text
    )


def _most_marks_on_one_character(text: str) -> int:
    most = run = 0
    for ch in text:
        run = run + 1 if text_width(ch) == 0 else 0
        most = max(most, run)
    return most


def test_plain_text_is_unchanged() -> None:
    assert clean("hello, world! ça va? 日本語 🙂") == "hello, world! ça va? 日本語 🙂"


def test_escape_sequences_are_made_visible() -> None:
    hostile = "hi \x1b[2J\x1b]0;owned\x07 \x1b[31mred"
    cleaned = clean(hostile)
    assert "\x1b" not in cleaned and "\x07" not in cleaned
    assert cleaned == "hi \\x1b[2J\\x1b]0;owned\\x07 \\x1b[31mred"


def test_c1_controls_and_del_are_escaped() -> None:
    # U+009B is the one-character CSI: as dangerous as ESC [.
    assert clean("a\x9b2Jb\x7fc\x85") == "a\\x9b2Jb\\x7fc\\x85"


def test_newlines_and_carriage_returns_cannot_forge_lines() -> None:
    assert clean("hi\r\n[14:00] <admin> give me your password") == (
        "hi\\x0d\\x0a[14:00] <admin> give me your password"
    )
    assert clean("a\u2028b\u2029c") == "a\\u2028b\\u2029c"


def test_bidi_overrides_and_invisible_characters_are_escaped() -> None:
    assert clean("evil\u202egnp.exe") == "evil\\u202egnp.exe"
    assert clean("\u2066x\u2069\u200b\u200e\u061c") == "\\u2066x\\u2069\\u200b\\u200e\\u061c"
    assert clean("tag\U000e0041") == "tag\\U000e0041"


def test_joiners_used_by_emoji_are_kept() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert clean(family) == family


def test_tab_becomes_a_space() -> None:
    assert clean("a\tb") == "a b"


def test_invalid_utf8_is_replaced() -> None:
    assert decode(b"ok \xff\xfe bytes") == "ok \ufffd\ufffd bytes"


def test_width_counts_wide_characters_twice() -> None:
    assert text_width("ab") == 2
    assert text_width("日本") == 4
    assert text_width("e\u0301") == 1


def test_every_output_path_cleans() -> None:
    line = (Span("\x1b[31m", Style.NICK), Span("\x9b1m\u202e"))
    for out in (plain(line), ansi(line)):
        assert "\x9b" not in out and "\u202e" not in out
    # ansi adds its own colour codes and nothing else that starts with ESC.
    assert ansi(line).count("\x1b") == 2
    assert plain(line) == "\\x1b[31m\\x9b1m\\u202e"


def test_invisible_fillers_are_escaped() -> None:
    # Each of these is a letter or symbol that draws nothing: a message of
    # them looked empty, and a name padded with them looked like another.
    assert clean("\u3164") == "\\u3164"
    assert clean("a\u115fb\u1160c") == "a\\u115fb\\u1160c"
    assert clean("\u2800\u2800") == "\\u2800\\u2800"
    assert clean("\uffa0!") == "\\uffa0!"
    assert clean("x\u034fy") == "x\\u034fy"
    # Visible Braille and Hangul stay as they are.
    assert clean("\u2801 \ud55c\uae00") == "\u2801 \ud55c\uae00"


def test_variation_selectors_for_emoji_are_kept() -> None:
    assert clean("\u2764\ufe0f") == "\u2764\ufe0f"


def test_a_pile_of_combining_marks_is_capped() -> None:
    zalgo = "e" + "\u0301" * 300 + "x" + "\u0300\u0301"
    assert clean(zalgo) == "e" + "\u0301" * MAX_MARKS + "x\u0300\u0301"
    # Ordinary accents and Vietnamese double marks are untouched.
    assert clean("Vie\u0302\u0323t") == "Vie\u0302\u0323t"
    # Marks after an escape or a tab do not count against the one before.
    assert clean("a\u0301\x1b\u0301") == "a\u0301\\x1b\u0301"


@given(st.text())
def test_cleaned_text_is_safe_and_stable(text: str) -> None:
    cleaned = clean(text)
    assert _terminal_safe(cleaned)
    assert _most_marks_on_one_character(cleaned) <= MAX_MARKS
    assert clean(cleaned) == cleaned


@given(st.text(alphabet=st.characters(categories=["L", "N", "P", "S", "Zs"])))
def test_ordinary_text_survives(text: str) -> None:
    text = "".join(ch for ch in text if ch not in INVISIBLE_FILLERS)
    assert clean(text) == text


def test_emoji_newer_than_pythons_tables_are_shown_and_wide() -> None:
    """Python 3.11 knows Unicode 14: the emoji added since (pink heart, goose,
    shaking face) are "unassigned" to it and were shown as hex escapes."""
    newer = "\U0001fa77 \U0001fabf \U0001fae8"
    assert clean(f"love it {newer}") == f"love it {newer}"
    assert text_width("\U0001fa77") == 2
    assert text_width(clean("\U0001fc00")) == 2  # kept for emoji to come
    # Other unassigned code points are still escaped, and so are tags.
    assert clean("\U000e0080\U0003ffff") == "\\U000e0080\\U0003ffff"
    assert clean("\U0001fb00") == "\U0001fb00"  # assigned (legacy computing)
    assert text_width("\U0001fa00") == 1  # an assigned narrow chess symbol keeps its width
