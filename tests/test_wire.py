"""The pure wire functions: parsing stages and formatting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_chat import wire
from twisted_chat.wire import ErrorCode, LineError


def parse(line: str) -> wire.Command:
    split = wire.split_verb(line)
    assert split is not None
    return wire.parse_args(*split)


def test_words_and_free_text() -> None:
    assert parse("DM   bob   hello  world ") == wire.Command("DM", ("bob",), "hello  world ")
    assert parse("msg x") == wire.Command("MSG", (), "x")
    assert parse("PING") == wire.Command("PING", (), "")
    assert parse("HELP pair") == wire.Command("HELP", ("pair",), "")
    assert parse("USERS   ") == wire.Command("USERS", (), "")


def test_split_words_is_the_one_rule_for_both_directions() -> None:
    """The words-then-text split the server uses on requests and the client
    on server lines: the counts are left to the caller."""
    with_text = wire.Grammar(1, 2, wire.Text.OPTIONAL)
    assert wire.split_words(with_text, "a   b  c\td  ") == (["a", "b"], "c\td  ")
    assert wire.split_words(with_text, "a") == (["a"], "")
    assert wire.split_words(with_text, "") == ([], "")
    no_text = wire.Grammar(1, 1, wire.Text.NONE)
    assert wire.split_words(no_text, "a\tb  c ") == (["a\tb", "c"], "")


@pytest.mark.parametrize("line", ["PAIR", "PAIR a b", "UNPAIR x", "HELP a b", "DM bob",
                                  "MSG \t ", "PAIR 1a", "ACCEPT a\tb"])
def test_bad_args(line: str) -> None:
    with pytest.raises(LineError) as e:
        parse(line)
    assert e.value.code is ErrorCode.BAD_ARGS


def test_unknown_verbs() -> None:
    for line in ["READY x", "JOINED", "ÜBER", "PINGX"]:
        with pytest.raises(LineError) as e:
            wire.split_verb(line)
        assert e.value.code is ErrorCode.UNKNOWN_COMMAND


@pytest.mark.parametrize("line", ["m\u017fg hi", "p\u0131ng", "U\u017fERS"])
def test_verbs_match_in_ascii_case_only(line: str) -> None:
    """docs/protocol.md: verbs are case-insensitive in ASCII only.  A non-ASCII
    letter whose upper case is ASCII (U+017F long s, U+0131 dotless i) does
    not make a verb: MSG, PING and USERS are not what was sent."""
    with pytest.raises(LineError) as e:
        wire.split_verb(line)
    assert e.value.code is ErrorCode.UNKNOWN_COMMAND


def test_blank_lines_are_nothing() -> None:
    assert wire.split_verb("") is None
    assert wire.split_verb(" \t ") is None


def test_decode_rejects_controls_but_not_tab() -> None:
    assert wire.decode(b"a\tb") == "a\tb"
    for bad in ["\x00", "\x1b", "\r", "\x7f", "\x80", "\x9f", "\u2028", "\u2029"]:
        with pytest.raises(LineError) as e:
            wire.decode(f"MSG {bad}".encode())
        assert e.value.code is ErrorCode.BAD_CHARS
    with pytest.raises(LineError) as e:
        wire.decode(b"\xc0\xaf")  # overlong encoding
    assert e.value.code is ErrorCode.BAD_ENCODING


def test_decode_refuses_exactly_the_bad_chars_printable_ascii_or_not() -> None:
    # decode() skips the regex for printable ASCII: every character, ASCII
    # or not, is refused exactly when BAD_CHARS holds it.
    for code in range(0x3000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue  # surrogates: not UTF-8 (bad-encoding)
        data = f"MSG a{char}b".encode()
        if wire.BAD_CHARS.search(char) is None:
            assert wire.decode(data) == f"MSG a{char}b"
        else:
            with pytest.raises(LineError) as e:
                wire.decode(data)
            assert e.value.code is ErrorCode.BAD_CHARS, hex(code)


def test_line_leaves_out_empty_text() -> None:
    assert wire.line("BYE", "quit") == b"BYE quit\r\n"
    assert wire.line("BYE", "quit", text="bye now") == b"BYE quit bye now\r\n"
    assert wire.line("PONG", text="") == b"PONG\r\n"


@given(st.floats(0, 4e9), st.text(min_size=1), st.text(min_size=1), st.text())
def test_msg_line_is_the_generic_line(ts: float, sender: str, recipient: str, text: str) -> None:
    """The lobby's and pairs' MSG, made in one step, is byte for byte what
    the generic line makes (an empty text left out with its space)."""
    expected = wire.line("MSG", wire.format_ts(ts), sender, recipient, text=text)
    assert wire.msg_line(ts, sender, recipient, text) == expected


def test_msg_line() -> None:
    assert wire.msg_line(0.5, "ann", "*", "hi  there") == (
        b"MSG 1970-01-01T00:00:00.500Z ann * hi  there\r\n")
    assert wire.msg_line(0.5, "ann", "bob", "") == b"MSG 1970-01-01T00:00:00.500Z ann bob\r\n"


def test_timestamps() -> None:
    assert wire.format_ts(0) == "1970-01-01T00:00:00.000Z"
    assert wire.format_ts(1795342502.4816) == "2026-11-22T10:15:02.481Z"
    assert wire.parse_ts("2026-11-22T10:15:02.481Z") == pytest.approx(1795342502.481)


def test_timestamps_within_and_across_seconds() -> None:
    # The date and time of day are worked out once a second: the same
    # second twice, the next one, then back to the first.
    times = (1795342502.001, 1795342502.999, 1795342503.0, 1795342502.5, 86399.9995)
    assert [wire.format_ts(t) for t in times] == [
        "2026-11-22T10:15:02.001Z",
        "2026-11-22T10:15:02.999Z",
        "2026-11-22T10:15:03.000Z",
        "2026-11-22T10:15:02.500Z",
        "1970-01-01T23:59:59.999Z",
    ]


def test_the_date_is_worked_out_once_a_second() -> None:
    wire._format_second.cache_clear()
    for ms in range(1000):
        wire.format_ts(1795342600 + ms / 1000)
    assert wire._format_second.cache_info().misses == 1


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_timestamp_round_trip_to_the_millisecond(seconds: float) -> None:
    text = wire.format_ts(seconds)
    assert len(text) == 24 and text.endswith("Z")
    assert abs(wire.parse_ts(text) - seconds) < 0.0011


def test_addresses() -> None:
    assert wire.format_address("127.0.0.1", 5) == "127.0.0.1:5"
    assert wire.format_address("::1", 5) == "[::1]:5"
    assert wire.format_address(None, None) == "-"


@given(st.text())
def test_parse_never_raises_anything_but_line_error(text: str) -> None:
    try:
        split = wire.split_verb(text)
        if split is not None:
            wire.parse_args(*split)
    except LineError:
        pass


def _long_way(text: str) -> str | None:
    """What split_verb and parse_args take C{text} to, as msg_text says it."""
    try:
        split = wire.split_verb(text)
        command = wire.parse_args(*split) if split is not None else None
    except LineError:
        return None
    return command.text if command is not None and command.verb == "MSG" else None


@given(st.one_of(
    st.text(),
    st.builds(lambda spaces, text: "MSG" + spaces + text, st.text(" \t", max_size=3), st.text()),
))
def test_msg_text_is_the_long_way_or_nothing(text: str) -> None:
    """The session's short cut for MSG lines (wire.msg_text) takes every
    line it takes exactly as split_verb and parse_args would."""
    said = wire.msg_text(text)
    if said is not None:
        assert said == _long_way(text)


@pytest.mark.parametrize("line", ["MSG hi", "MSG  hi there ", "MSG \thi", "MSG   \u00e9t\u00e9"])
def test_msg_text_takes_the_lines_clients_write(line: str) -> None:
    assert wire.msg_text(line) == _long_way(line) is not None


@pytest.mark.parametrize("line", ["MSG", "MSG ", "MSG  \t ", "msg hi", " MSG hi", "MSG\thi",
                                  "MSGhi", "DM bob hi"])
def test_msg_text_leaves_the_rest_to_the_long_way(line: str) -> None:
    assert wire.msg_text(line) is None


def test_a_nick_in_key_form_is_its_own_key() -> None:
    """One string per user where the nick is already lower case."""
    nick = "".join(["ali", "ce"])
    assert wire.nick_key(nick) is nick
    assert wire.nick_key("Alice") == "alice"


def test_the_list_cost_is_told_from_the_other_floods_by_its_text() -> None:
    """wire.list_cost_verb names the command an ERROR flood refused for the
    user list's cost (the server writes wire.list_cost), and nothing for the
    line-rate flood or a refused password job."""
    for verb in wire.LIST_COST_VERBS:
        text = f"{wire.list_cost(verb)}4096 bytes of the user list (9000 bytes now)"
        assert wire.list_cost_verb(text) == verb
    for text in ("slow down: at most 10 lines per second (bursts of 20); lines are being "
                 "dropped", *(f"{w}; send PASSWD again" for w in wire.PASSWORD_WORK_REFUSED),
                 "slow down: MSG costs one line per 4096 bytes"):
        assert wire.list_cost_verb(text) is None, text
