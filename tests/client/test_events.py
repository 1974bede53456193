"""Splitting server lines into verb, words and free text."""

from __future__ import annotations

import pytest

from twisted_chat.client.events import Malformed, parse


def test_message_with_free_text_keeps_inner_and_trailing_spaces() -> None:
    line = parse("MSG 2026-11-22T10:15:02.481Z alice *   hi  there  ")
    assert line is not None
    assert line.verb == "MSG"
    assert line.words == ("2026-11-22T10:15:02.481Z", "alice", "*")
    assert line.text == "hi  there  "


def test_free_text_may_be_absent() -> None:
    line = parse("BYE quit")
    assert line is not None and line.words == ("quit",) and line.text == ""
    ping = parse("PING")
    assert ping is not None and ping.words == () and ping.text == ""


def test_free_text_starts_after_several_spaces() -> None:
    line = parse("ERROR   no-such-nick    nobody   here")
    assert line is not None
    assert line.words == ("no-such-nick",) and line.text == "nobody   here"


def test_verbs_are_case_insensitive_and_leading_spaces_tolerated() -> None:
    line = parse("  joined 2026-11-22T10:15:02.481Z bob  ")
    assert line is not None and line.verb == "JOINED" and line.words[1] == "bob"


def test_user_with_and_without_address() -> None:
    line = parse("USER bob paired")
    assert line is not None and line.words == ("bob", "paired")
    line = parse("USER bob lobby [::1]:5000")
    assert line is not None and line.word(2) == "[::1]:5000"


def test_help_line_and_bare_help() -> None:
    line = parse("HELP MSG <text>: talk")
    assert line is not None and line.text == "MSG <text>: talk"
    bare = parse("HELP")
    assert bare is not None and bare.text == ""


def test_unknown_verbs_are_kept_for_display() -> None:
    line = parse("SHINY new thing")
    assert line is not None and not line.known and line.text == "new thing"


def test_empty_lines_are_ignored() -> None:
    assert parse("") is None
    assert parse(" \t ") is None


@pytest.mark.parametrize("raw", ["MSG 2026-11-22T10:15:02.481Z alice", "READY", "LEFT ts bob"])
def test_missing_words_are_malformed(raw: str) -> None:
    with pytest.raises(Malformed):
        parse(raw)


def test_extra_words_on_a_verb_without_text_are_tolerated() -> None:
    line = parse("PAIRED bob extra")
    assert line is not None and line.words == ("bob",)
