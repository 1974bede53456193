"""Events in words a person understands."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from twisted_chat.client import render
from twisted_chat.client.render import Renderer, Span, Style, UserRow, ansi, plain
from twisted_chat.client.sanitize import text_width
from twisted_chat.server.history import History
from twisted_chat.server.hub import Hub, HubError, HubSettings

from .helpers import NOW, TS


def renderer(me: str | None = "alice") -> Renderer:
    return Renderer(lambda: me, now=lambda: NOW, localtime=time.gmtime)


def test_lobby_message_with_local_time() -> None:
    assert plain(renderer().message(TS, "bob", "*", "hi")) == "[14:03] <bob> hi"


def test_time_uses_the_local_time_zone() -> None:
    def plus_two_hours(seconds: float) -> time.struct_time:
        return time.gmtime(seconds + 7200)

    r = Renderer(lambda: "alice", now=lambda: NOW, localtime=plus_two_hours)
    assert plain(r.message(TS, "bob", "*", "hi")) == "[16:03] <bob> hi"


def test_message_from_another_day_shows_the_date() -> None:
    line = renderer().message("2026-11-20T09:30:00.000Z", "bob", "*", "old")
    assert plain(line) == "[2026-11-20 09:30] <bob> old"


def test_private_messages_show_their_direction() -> None:
    r = renderer()
    assert plain(r.message(TS, "bob", "alice", "psst")) == "[14:03] (private) bob -> you: psst"
    assert plain(r.message(TS, "alice", "bob", "ok")) == "[14:03] (private) you -> bob: ok"
    assert plain(r.message(TS, "Alice", "BOB", "ok")).endswith("you -> BOB: ok")


def test_own_nick_has_its_own_colour() -> None:
    r = renderer()
    mine = r.message(TS, "alice", "*", "hi")
    theirs = r.message(TS, "bob", "*", "hi")
    assert Style.SELF in [s.style for s in mine]
    assert Style.SELF not in [s.style for s in theirs]
    assert "\x1b[1;32malice\x1b[0m" in ansi(mine)


def test_joined_and_left() -> None:
    r = renderer()
    assert plain(r.joined(TS, "bob")) == "[14:03] * bob joined"
    assert plain(r.left(TS, "bob", "timeout", "")) == "[14:03] * bob left (timeout)"
    assert plain(r.left(TS, "bob", "quit", "see you")) == "[14:03] * bob left (quit: see you)"
    assert plain(r.left(TS, "bob", "disconnected", "")).endswith("bob left (connection lost)")


def test_bad_timestamp_does_not_crash() -> None:
    assert plain(renderer().joined("yesterday", "bob")) == "[14:03] * bob joined"


def test_user_table() -> None:
    rows = [UserRow("alice", "lobby"), UserRow("bob", "paired"), UserRow("carol", "lobby")]
    assert [plain(line) for line in renderer().users(rows)] == [
        "* 3 people online:",
        "  NICK         STATUS",
        "  alice (you)  in the lobby",
        "  bob          in a private conversation",
        "  carol        in the lobby",
    ]


def test_user_table_with_addresses() -> None:
    rows = [UserRow("bob", "lobby", "127.0.0.1:5000"), UserRow("eve", "lobby", "-")]
    lines = [plain(line) for line in renderer(None).users(rows)]
    assert lines[0] == "* 2 people online:"
    assert lines[1].split() == ["NICK", "STATUS", "ADDRESS"]
    assert lines[2].split() == ["bob", "in", "the", "lobby", "127.0.0.1:5000"]


def test_one_person() -> None:
    lines = renderer().users([UserRow("alice", "lobby")])
    assert plain(lines[0]) == "* 1 person online:"


def test_errors_are_one_sentence() -> None:
    assert render.error_sentence("no-such-nick", "zed is not online") == (
        "Not sent: zed is not online."
    )
    assert render.error_sentence("bad-args", "usage: PAIR <nick>") == (
        "The server could not use that command: usage: PAIR <nick>."
    )
    assert render.error_sentence("brand-new", "what") == "Server error (brand-new): what."
    for code in render.ERRORS:
        said = render.error_sentence(code, "details")
        assert said.endswith(".") and "\n" not in said


WAITING = ("the server is waiting for the password of Alice: send PASS <password>, "
           "or NICK <nick> to choose another nick")


def test_not_ready_says_what_the_server_waits_for_in_the_clients_words() -> None:
    """Every ERROR not-ready was "Choose a nickname first.", also the one
    that says the server waits for a password (3db90f1): now the client
    says what the server's text says is awaited, without its protocol verbs."""
    assert render.not_ready(WAITING) == (
        "The server is waiting for the password of Alice first."
    )
    assert render.not_ready(WAITING, prompt=True) == (
        "The server is waiting for the password of Alice first: type it at the password "
        "prompt, or just Enter there to choose another nickname."
    )
    assert render.not_ready("choose a nickname first: NICK <nick>") == (
        "Choose a nickname first."
    )
    assert render.not_ready("no password was asked for; send NICK first") == (
        "No password was asked for: choose a nickname first."
    )
    assert render.not_ready(
        "no password was asked for: you are already alice"
    ) == "No password was asked for: you are already alice."
    assert render.not_ready("") == "Choose a nickname first."
    for text in (WAITING, "no password was asked for; send NICK first"):
        for prompt in (False, True):
            said = render.not_ready(text, prompt=prompt)
            assert "PASS" not in said and "NICK" not in said, said


def test_a_text_that_ends_a_sentence_gets_no_full_stop() -> None:
    """A server text ending in "?" or "!" (another chat/1 server's) is not
    shown as "...?."."""
    assert render.sentence("Who are you?") == "Who are you?"
    assert render.sentence("Slow down!") == "Slow down!"
    assert render.sentence("done") == "done."
    assert render.error_sentence("brand-new", "who?") == "Server error (brand-new): who?"
    # Where the template puts a full stop after the server's text.
    assert render.error_sentence("no-such-nick", "is zed online?") == "Not sent: is zed online?"
    assert render.error_sentence("busy", "bob is busy!") == (
        "The invitation was not sent: bob is busy!"
    )


class _Deaf:
    """A hub listener that hears nothing: only the hub's refusals matter."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: None


def _said(act: Callable[[], object]) -> str:
    """The client's sentence for the real hub's refusal of C{act}."""
    with pytest.raises(HubError) as refused:
        act()
    return render.error_sentence(refused.value.code.value, refused.value.text)


def test_a_nick_spelled_as_a_verb_is_not_rewritten_in_an_invitations_refusal() -> None:
    """The client rewrote every standalone PAIR, UNPAIR, ACCEPT or REJECT of
    a busy or pending text, nicks too: "your invitation to /pair is still
    open".  Only where the server's texts put a verb (the hub's own
    refusals here) is it said as the client's command."""
    hub = Hub(Clock(), History(1), _Deaf(), HubSettings(max_invites=2))  # type: ignore[arg-type]
    alice, carol, dave = (hub.register(nick, conn=object(), source=nick)
                          for nick in ("alice", "carol", "dave"))
    pair, accept = (hub.register(nick, conn=object()) for nick in ("PAIR", "ACCEPT"))
    hub.register("HELP", conn=object())
    hub.pair(alice, "HELP")
    assert _said(lambda: hub.pair(alice, "carol")) == (
        "The invitation was not sent: your invitation to HELP is still open; "
        "/unpair withdraws it."
    )
    hub.pair(dave, "PAIR")
    hub.accept(pair, "dave")
    assert _said(lambda: hub.pair(dave, "carol")) == (
        "The invitation was not sent: you are paired with PAIR; /unpair first."
    )
    assert _said(lambda: hub.pair(carol, "PAIR")) == (
        "The invitation was not sent: PAIR is in a private conversation."
    )
    one, two = (hub.register(nick, conn=object(), source="here") for nick in ("one", "two"))
    hub.pair(one, "ACCEPT")
    assert _said(lambda: hub.pair(two, "ACCEPT")) == (
        "The invitation was not sent: users from your address have 1 open invitations "
        "to ACCEPT already; wait for one to end."
    )
    hub.pair(carol, "ACCEPT")
    hub.unpair(alice)  # withdraws the invitation to HELP
    assert _said(lambda: hub.pair(alice, "ACCEPT")) == (
        "The invitation was not sent: ACCEPT has 2 open invitations already; try again later."
    )
    assert accept.incoming is not None and len(accept.incoming) == 2
    # The session's refusal of an invitation to a reader far behind.
    assert render.error_sentence(
        "busy", "HELP is not reading fast enough to take more invitations; try again later"
    ) == ("The invitation was not sent: HELP is not reading fast enough to take more "
          "invitations; try again later.")


def test_invitation_endings() -> None:
    assert render.declined("bob", "rejected") == "bob declined your invitation."
    assert render.cancelled("bob", "withdrawn") == "bob withdrew the invitation."
    assert "expired" in render.declined("bob", "timeout")
    assert render.declined("bob", "odd") == "Your invitation to bob ended (odd)."
    assert render.unpaired("bob", "left", by_me=True).startswith("You left")
    assert render.unpaired("bob", "left", by_me=False).startswith("bob left")
    assert render.unpaired("bob", "disconnected", by_me=False) == (
        "The private conversation with bob ended. You are back in the lobby."
    )


def test_hostile_nicks_and_text_are_cleaned_in_every_event() -> None:
    r = renderer()
    evil = "\x1b[2J\u202e"
    lines = [
        r.message(TS, evil, "*", evil),
        r.message(TS, evil, "alice", evil),
        r.joined(TS, evil),
        r.left(TS, evil, evil, evil),
        *r.users([UserRow(evil, evil, evil)]),
    ]
    for line in lines:
        for out in (plain(line), ansi(line)):
            assert "\u202e" not in out
            assert "\x1b[2J" not in out


def test_wrap_breaks_at_spaces_and_indents() -> None:
    line = render.notice("bob invites you to a private conversation. Type /accept bob")
    rows = [plain(row) for row in render.wrap(line, 20)]
    assert rows == [
        "* bob invites you to",
        "  a private",
        "  conversation. Type",
        "  /accept bob",
    ]
    assert all(len(row) <= 20 for row in rows)


def test_wrap_keeps_styles_and_cuts_long_words() -> None:
    line = (Span("[14:03] ", Style.TIME), Span("bob", Style.NICK), Span(" " + "x" * 25))
    rows = render.wrap(line, 16)
    assert [plain(row) for row in rows] == [
        "[14:03] bob",
        "  xxxxxxxxxxxxxx",
        "  xxxxxxxxxxx",
    ]
    assert rows[0][0] == Span("[14:03] ", Style.TIME) and rows[0][1] == Span("bob", Style.NICK)


def test_wrap_counts_wide_characters() -> None:
    rows = render.wrap(render.info("日本語 日本語 日本語"), 14)
    assert [plain(row) for row in rows] == ["日本語 日本語", "  日本語"]


def test_short_lines_are_not_wrapped() -> None:
    line = render.notice("short")
    assert render.wrap(line, 80) == [line]


@given(st.text(alphabet=st.sampled_from("ab c日\u0301 ")), st.integers(10, 40))
@example("a a日日日日", 10)
@example("a aaaaa日日", 10)
@example("\u0301 aaa日日日a", 10)
def test_wrap_loses_nothing_and_fits(text: str, width: int) -> None:
    line = render.info(text)
    rows = [plain(row) for row in render.wrap(line, width)]
    assert all(text_width(row) <= width for row in rows)
    assert "".join(rows).replace(" ", "") == plain(line).replace(" ", "")


def test_wrap_cuts_a_word_that_would_not_fit_the_next_row_either() -> None:
    # Found by hypothesis: moving "aaaaa日" down left no room for the last 日,
    # and the row it moved to was wider than the screen.
    rows = [plain(row) for row in render.wrap(render.info("a aaaaa日日"), 10)]
    assert rows == ["a aaaaa日", "  日"]
    rows = [plain(row) for row in render.wrap(render.info("\u0301 aaa日日日a"), 10)]
    assert all(text_width(row) <= 10 for row in rows)


def test_wrap_never_parts_a_character_from_its_combining_marks() -> None:
    rows = [plain(row) for row in render.wrap(render.info("e\u0301" * 20), 10)]
    assert rows[0] == "e\u0301" * 10
    assert all(not row.lstrip().startswith("\u0301") for row in rows)


def test_mentions_are_whole_words_in_any_case() -> None:
    assert render.mentions("hi alice!", "alice")
    assert render.mentions("ALICE: lunch?", "alice")
    assert render.mentions("ask @Alice, she knows", "alice")
    assert not render.mentions("malice aforethought", "alice")
    assert not render.mentions("alice_bot and alice-2 are bots", "alice")
    assert not render.mentions("nobody here", "alice")


def test_a_lobby_line_that_mentions_you_is_highlighted() -> None:
    r = renderer("alice")
    line = r.message(TS, "bob", "*", "Alice, are you there?")
    assert line[-1] == Span("Alice, are you there?", Style.MENTION)
    assert plain(line) == "[14:03] <bob> Alice, are you there?"
    assert "\x1b[1;7mAlice, are you there?\x1b[0m" in ansi(line)
    # Not your own line, not a line without your name, not a private one.
    assert Style.MENTION not in [s.style for s in r.message(TS, "alice", "*", "alice here")]
    assert Style.MENTION not in [s.style for s in r.message(TS, "bob", "*", "hi all")]
    assert Style.MENTION not in [s.style for s in r.message(TS, "bob", "alice", "alice!")]


def test_no_color_keeps_the_mention_mark_and_drops_the_colours() -> None:
    # NO_COLOR means no colour, not no styling: the reverse video that marks
    # a mention stays (README, docs/client.md), bold stays, colours go.
    line = renderer("alice").message(TS, "bob", "*", "Alice, are you there?")
    assert ansi(line, colour=False) == (
        "\x1b[2m[14:03] \x1b[0m<\x1b[1mbob\x1b[0m> \x1b[1;7mAlice, are you there?\x1b[0m"
    )
    assert ansi(render.notice("bob joined"), colour=False) == "* bob joined"  # yellow only


def test_each_style_without_colour_is_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under NO_COLOR a span's style is looked up in a table made once, not
    split and filtered for every span shown (it was, in _no_colour)."""
    assert render.UNCOLOURED == {
        Style.TIME: "2",
        Style.NICK: "1",
        Style.SELF: "1",
        Style.PRIVATE: "1",
        Style.NOTICE: "",
        Style.ERROR: "1",
        Style.PROMPT: "1",
        Style.MENTION: "1;7",
    }

    def not_again(sgr: str) -> str:
        raise AssertionError(f"worked out again: {sgr}")

    monkeypatch.setattr(render, "_no_colour", not_again)
    line = renderer("alice").message(TS, "bob", "*", "Alice, are you there?")
    assert ansi(line, colour=False) == (
        "\x1b[2m[14:03] \x1b[0m<\x1b[1mbob\x1b[0m> \x1b[1;7mAlice, are you there?\x1b[0m"
    )


@pytest.mark.parametrize(("text", "said"), [
    ("wrong password, or no account for that nick; send NICK again",
     "The password for zed was not accepted (wrong password, or no account for that nick)."),
    ("the server could not check the password now; try again later",
     "The password for zed was not accepted (the server could not check the password now; "
     "try again later)."),
    ("", "The password for zed was not accepted."),
])
def test_a_refused_password_says_what_the_server_says_and_no_more(text: str, said: str) -> None:
    """Review rev12 #2: under --accounts required the server's answer is the
    same for a wrong password and a nick with no account, and says so; the
    client said only "not accepted", after claiming the nick had an account."""
    assert render.retry("zed", "bad-password", text) == said


# -- rev15 L5: /help's two columns on a narrow screen ----------------------------


def _rows(text: str, width: int) -> list[str]:
    return [plain(row) for row in render.wrap(render.columns(text), width - 1)]


REGISTER = "  /register         protect your nickname with a password (asked for, not shown)"


def test_a_help_row_that_fits_is_one_row() -> None:
    assert _rows("  /help             this help", 80) == ["  /help             this help"]


def test_a_help_row_wraps_under_its_second_column() -> None:
    assert _rows(REGISTER, 80) == [
        "  /register         protect your nickname with a password (asked for, not",
        "                    shown)",
    ]


def test_a_narrow_screen_has_one_column() -> None:
    # At 40 columns the description wrapped to the left margin, under the commands.
    assert _rows(REGISTER, 40) == [
        "  /register",
        "      protect your nickname with a",
        "      password (asked for, not shown)",
    ]
    assert _rows("  /help             this help", 40) == ["  /help", "      this help"]


def test_other_lines_are_plain_info() -> None:
    assert render.columns("Commands:") == render.info("Commands:")
    assert render.columns("  alice (you)") == render.info("  alice (you)")
    assert ansi(render.columns(REGISTER)) == REGISTER  # no colour for the column


@given(st.integers(min_value=10, max_value=120))
def test_help_rows_never_exceed_the_width(width: int) -> None:
    for row in _rows(REGISTER, width):
        assert text_width(row) <= max(width - 1, 10)
