"""What the user types, turned into requests."""

from __future__ import annotations

import unicodedata
from functools import partial

import pytest

from twisted_chat import wire
from twisted_chat.client.commands import (
    Local,
    Quit,
    Send,
    nick_argument,
    parse_input,
    password_problem,
    sendable,
)
from twisted_chat.server.accounts import hashing


def test_plain_text_is_a_message() -> None:
    assert parse_input("hello  world ") == Send("MSG", text="hello  world ")
    assert parse_input("hello").encode() == b"MSG hello\r\n"  # type: ignore[union-attr]


def test_blank_lines_send_nothing() -> None:
    assert parse_input("") is None
    assert parse_input("  \t ") is None


def test_double_slash_sends_a_message_starting_with_slash() -> None:
    assert parse_input("//usr/bin is full") == Send("MSG", text="/usr/bin is full")


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("/users", Send("USERS")),
        ("/who", Send("USERS")),
        ("/pair bob", Send("PAIR", ("bob",))),
        ("/PAIR  bob ", Send("PAIR", ("bob",))),
        ("/accept bob", Send("ACCEPT", ("bob",))),
        ("/reject bob", Send("REJECT", ("bob",))),
        ("/unpair", Send("UNPAIR")),
        ("/leave", Send("UNPAIR")),
        ("/dm bob see  you", Send("DM", ("bob",), "see  you")),
        ("/msg bob hi", Send("DM", ("bob",), "hi")),
        ("@bob see you", Send("DM", ("bob",), "see you")),
        ("/quit", Quit("")),
        ("/q", Quit("")),
        ("/quit see you all", Quit("see you all")),
    ],
)
def test_commands(typed: str, expected: object) -> None:
    assert parse_input(typed) == expected


def test_wire_encoding() -> None:
    assert Send("DM", ("bob",), "hi there").encode() == b"DM bob hi there\r\n"
    assert Send("BYE").encode() == b"BYE\r\n"
    # An empty text leaves no space behind; spaces and tabs in it are kept.
    assert Send("PAIR", ("bob",)).encode() == b"PAIR bob\r\n"
    assert Send("MSG", text=" \tx  ").encode() == b"MSG  \tx  \r\n"
    assert Send("DM", ("b\u00e9",), "caf\u00e9 \U0001f642").encode() == (
        b"DM b\xc3\xa9 caf\xc3\xa9 \xf0\x9f\x99\x82\r\n")


def test_the_client_strips_exactly_what_the_server_refuses() -> None:
    """Every code point (but the surrogates, which no line can encode):
    L{sendable} drops it if and only if the server answers a line holding
    it with C{ERROR bad-chars}, and keeps it otherwise."""
    codes = [code for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF]
    refused = []
    for code in codes:
        try:
            wire.decode(f"MSG a{chr(code)}b".encode())
        except wire.LineError as e:
            assert e.code is wire.ErrorCode.BAD_CHARS
            refused.append(code)
    allowed = set(codes) - set(refused)
    assert sendable("".join(map(chr, codes))) == "".join(map(chr, sorted(allowed)))
    assert 0x09 not in refused and {0x00, 0x1B, 0x7F, 0x85, 0x2028} <= set(refused)


def test_accept_without_nick_uses_the_only_invitation() -> None:
    assert parse_input("/accept", inviters=["carol"]) == Send("ACCEPT", ("carol",))
    assert parse_input("/reject", inviters=["carol"]) == Send("REJECT", ("carol",))
    # None open (it expired, was withdrawn): said so, not a usage that
    # contradicts /help's "/accept [NICK]".
    for name in ("accept", "reject", "decline"):
        assert parse_input(f"/{name}") == Local(
            f"There is no open invitation to {name}.", is_error=True
        )
    # As typed in capitals, the verb is still said in lower case, as the page does.
    assert parse_input("/ACCEPT") == Local(
        "There is no open invitation to accept.", is_error=True
    )
    # More than one: the user is told whom, not just the usage.
    assert parse_input("/decline", inviters=["a", "b", "c", "d"]) == Local(
        "4 invitations are open (a, b, c, ...): /decline a or /decline b, for instance.",
        is_error=True,
    )


@pytest.mark.parametrize("typed", ["/pair", "/dm", "/dm bob", "/dm bob   ", "@bob", "@bob  "])
def test_missing_arguments_give_usage(typed: str) -> None:
    result = parse_input(typed)
    assert isinstance(result, Local) and result.is_error and result.text.startswith("Usage:")


@pytest.mark.parametrize("typed", ["/pair 9lives", "/pair bob smith", "@b!ob hi", "/dm x.y hi"])
def test_invalid_nicks_are_refused_locally(typed: str) -> None:
    result = parse_input(typed)
    assert isinstance(result, Local) and result.is_error and "not a valid nickname" in result.text


def test_unknown_command_gets_a_local_hint() -> None:
    result = parse_input("/nickname bob")
    assert isinstance(result, Local) and result.is_error
    assert "Unknown command /nickname" in result.text and "/help" in result.text


def test_nick_is_answered_with_how_to_change_it() -> None:
    for typed in ("/nick", "/nick bob", "/Nick  bob"):
        result = parse_input(typed)
        assert isinstance(result, Local) and result.is_error
        assert "cannot change while connected" in result.text and "--nick NEW" in result.text
    assert nick_argument("/nick  bob ") == "bob"
    assert nick_argument("/nick") == ""
    assert nick_argument("bob") is None and nick_argument("/nickname bob") is None


def test_help_lists_every_command() -> None:
    result = parse_input("/help")
    assert isinstance(result, Local) and not result.is_error
    for command in (
        "/users", "/pair", "/accept", "/reject", "/unpair", "/dm", "@NICK", "/reconnect", "/quit",
        "/nick", "/decline", "/password", "/exit",  # docs/client.md's aliases too
    ):
        assert command in result.text


def test_at_sign_alone_or_followed_by_space_is_just_text() -> None:
    assert parse_input("@ home") == Send("MSG", text="@ home")
    assert parse_input("@") == Send("MSG", text="@")


def test_control_characters_are_not_sent() -> None:
    assert parse_input("hi\x1b[31m\x00 there\tyou\r") == Send("MSG", text="hi[31m there\tyou")


SHORT = "A password needs at least 8 bytes (characters, for plain ASCII)."
LONG = "A password may have at most 256 bytes."
LEADING = "A password cannot start with a space or a tab."
# wire.py's words, as the operator's tool says them: TAB is allowed.
CONTROL = "A password cannot contain control characters (TAB is allowed)."
NFD = partial(unicodedata.normalize, "NFD")


@pytest.mark.parametrize(
    ("password", "said", "said_at_login"),
    [
        ("kitty12", SHORT, SHORT),
        ("éééé", None, None),  # 4 characters, 8 bytes
        ("é" * 128, None, None),
        ("é" * 128 + "x", LONG, LONG),
        # The NFC form (what the server hashes) fits, the bytes as typed not.
        (NFD("é" * 86), None, None),  # 258 bytes; NFC, 172
        ("\u0958" * 2, None, None),  # 6 bytes; NFC (U+0915 U+093C each), 12
        # The bytes as typed fit, the NFC form not: only PASS takes them.
        (NFD("ééé"), SHORT, None),  # 9 bytes; NFC, 6
        ("\u0958" * 50, LONG, None),  # 150 bytes; NFC, 300
        # Neither fits.
        (NFD("éé"), SHORT, SHORT),  # 6 bytes; NFC, 4
        ("\u0958" * 86, LONG, LONG),  # 258 bytes; NFC, 516
        ("pass\tword", None, None),
        (" password", LEADING, LEADING),
        ("\tpassword", LEADING, LEADING),
        ("pass\x1bword", CONTROL, CONTROL),
        ("pass\u2028word", CONTROL, CONTROL),
    ],
)
def test_a_password_is_held_to_the_servers_rule(
    password: str, said: str | None, said_at_login: str | None
) -> None:
    """The client's length check, then wire.py's password_chars_problem
    (not a copy of it), as a sentence.  The length check is the server's
    for the command: for REGISTER and PASSWD the NFC form's bytes
    (login.py's _secret), for PASS either form's (C{login=True})."""
    assert password_problem(password) == said
    assert password_problem(password, login=True) == said_at_login
    stored = hashing.password_problem(hashing.password_bytes(password))
    typed = hashing.password_problem(password.encode())
    assert (stored is not None) == (said in (SHORT, LONG))
    assert (stored is not None and typed is not None) == (said_at_login in (SHORT, LONG))


def test_a_pasted_flood_is_not_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    """rr22-m 1: the client normalised the whole typed line (128 KB of
    combining marks out of order: 5 s with nothing read or drawn).  It
    counts with the server's L{wire.password_bytes}, which leaves a line
    too long for any NFC form of it to be a password as typed."""
    normalised: list[str] = []
    real = unicodedata.normalize

    def normalize(form: str, text: str) -> str:
        normalised.append(text)
        return real(form, text)

    monkeypatch.setattr(unicodedata, "normalize", normalize)
    flood = "a" + "\u0300" * 32_000 + "\u0316" * 32_000  # 128,001 bytes
    assert password_problem(flood) == LONG
    assert password_problem(flood, login=True) == LONG
    assert normalised == []
    # Up to the bound (4 x 256 bytes), the NFC form is still what is counted.
    assert password_problem(NFD("é" * 86)) is None
    assert normalised == [NFD("é" * 86)]
