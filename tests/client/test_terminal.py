"""The interactive line editor, through insults and a terminal emulator."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure

from twisted_chat.client.cells import MIN_ROOM, cluster_end, cluster_start
from twisted_chat.client.render import error, info, notice

from .helpers import Keyboard, session

LEFT = b"\x1b[D"
RIGHT = b"\x1b[C"
UP = b"\x1b[A"
DOWN = b"\x1b[B"
SGR = re.compile(rb"\x1b\[[0-9;]*m")


def input_row(kb: Keyboard) -> str:
    return kb.rows()[kb.cursor()[1]]


def test_typing_echoes_after_the_prompt() -> None:
    kb = Keyboard()
    kb.ui.set_prompt("alice> ")
    kb.keys("hello")
    assert input_row(kb) == "alice> hello"
    assert kb.cursor()[0] == len("alice> hello")


def test_incoming_message_keeps_the_half_typed_line_and_cursor() -> None:
    kb = Keyboard()
    kb.ui.set_prompt("alice> ")
    kb.keys(b"half typed" + LEFT * 3)
    kb.ui.show(info("[14:03] <bob> hello alice"))
    kb.ui.show(notice("carol joined"))
    rows = kb.rows()
    y = kb.cursor()[1]
    assert rows[y - 2] == "[14:03] <bob> hello alice"
    assert rows[y - 1] == "* carol joined"
    assert rows[y] == "alice> half typed"
    assert kb.cursor()[0] == len("alice> half ty")
    # Typing goes on where the cursor was.
    kb.keys("X")
    assert rows != kb.rows() and input_row(kb) == "alice> half tyXped"
    assert kb.ui.lineBufferIndex == len("half tyX")


def test_long_incoming_lines_wrap_at_words_above_the_input_row() -> None:
    kb = Keyboard(width=30)
    kb.keys("draft")
    kb.ui.show(notice("bob invites you to a private conversation: /accept bob"))
    rows = kb.rows()
    y = kb.cursor()[1]
    assert rows[y - 3 : y + 1] == [
        "* bob invites you to a",
        "  private conversation:",
        "  /accept bob",
        "> draft",
    ]


def test_enter_hands_over_the_line_and_clears_the_row() -> None:
    kb = Keyboard()
    kb.keys("hi there\r")
    assert kb.typed == ["hi there"]
    assert input_row(kb) == ">"
    kb.keys("\r")
    assert kb.typed == ["hi there", ""]


def test_history_with_up_and_down_keeps_the_draft() -> None:
    kb = Keyboard()
    kb.keys("one\rtwo\rdraft")
    kb.keys(UP)
    assert input_row(kb) == "> two"
    kb.keys(UP + UP)
    assert input_row(kb) == "> one"
    kb.keys(DOWN)
    assert input_row(kb) == "> two"
    kb.keys(DOWN)
    assert input_row(kb) == "> draft"
    kb.keys(UP + b"\r")
    assert kb.typed == ["one", "two", "two"]
    kb.keys(UP)
    assert input_row(kb) == "> two"  # the repeated line is stored once


def test_editing_keys() -> None:
    kb = Keyboard()
    kb.keys(b"hello world" + LEFT * 6 + b"\x7f")  # backspace
    assert "".join(kb.ui.lineBuffer) == "hell world"
    kb.keys(b"\x01X")  # Ctrl-A, then insert at the start
    assert "".join(kb.ui.lineBuffer) == "Xhell world"
    kb.keys(b"\x05!")  # Ctrl-E
    assert input_row(kb) == "> Xhell world!"
    kb.keys(b"\x17")  # Ctrl-W deletes the last word
    assert "".join(kb.ui.lineBuffer) == "Xhell "
    kb.keys(b"\x01\x1b[3~")  # Ctrl-A, Delete
    assert "".join(kb.ui.lineBuffer) == "hell "
    kb.keys(RIGHT + RIGHT + b"\x0b")  # Ctrl-K
    assert "".join(kb.ui.lineBuffer) == "he"
    kb.keys(b"\x15")  # Ctrl-U
    assert kb.ui.lineBuffer == [] and input_row(kb) == ">"


def test_application_mode_cursor_keys_and_word_moves() -> None:
    kb = Keyboard()
    kb.keys(b"one two three\x1bOD\x1bOD")
    assert kb.ui.lineBufferIndex == len("one two thr")
    kb.keys(b"\x1b[1;5D")  # Ctrl-Left
    assert kb.ui.lineBufferIndex == len("one two ")
    kb.keys(b"\x1bOH")
    assert kb.ui.lineBufferIndex == 0
    kb.keys(b"\x1b[1;5C\x1bOFX\r\x1bOA")
    assert kb.typed == ["one two threeX"] and input_row(kb) == "> one two threeX"


def test_utf8_input_is_assembled_into_characters() -> None:
    kb = Keyboard()
    kb.keys("café 日本 🙂".encode())
    assert "".join(kb.ui.lineBuffer) == "café 日本 🙂"
    kb.keys(b"\x7f\x7f")
    assert "".join(kb.ui.lineBuffer) == "café 日本"
    kb.keys(b"\r")
    assert kb.typed == ["café 日本"]


def test_control_keys_never_enter_the_line() -> None:
    kb = Keyboard()
    kb.keys(b"a\x00\x07\x1b[99~\x1bOQb\t")  # Tab, last in its read, is the key
    kb.keys(b"c")
    assert "".join(kb.ui.lineBuffer) == "abc"  # Tab completes (nothing here)


def test_ctrl_c_quits_and_ctrl_d_on_an_empty_line_ends_the_input() -> None:
    kb = Keyboard()
    kb.keys(b"x\x04")  # Ctrl-D on a non-empty line deletes forward
    assert kb.quits == kb.eofs == 0
    kb.keys(LEFT + b"\x04")
    assert kb.ui.lineBuffer == [] and kb.quits == kb.eofs == 0
    kb.keys(b"\x04")  # review rev3cli L: the end of input, not "leave now"
    assert (kb.quits, kb.eofs) == (0, 1)
    kb.keys(b"typing\x03")
    assert (kb.quits, kb.eofs) == (1, 1)


def test_long_lines_scroll_sideways_instead_of_wrapping() -> None:
    kb = Keyboard(width=30)
    text = "".join(chr(ord("a") + i % 26) for i in range(80))
    kb.keys(text)
    row = input_row(kb)
    assert len(row) < 30 and row.startswith("> ") and text.endswith(row[2:])
    assert kb.cursor()[1] == 0  # still the first row: nothing wrapped
    kb.keys(b"\x01")
    assert input_row(kb) == "> " + text[: len(row) - 2]
    kb.keys(b"\x05")
    kb.keys(b"\x01" + RIGHT + RIGHT)  # one read: drawn once, still from the start
    assert input_row(kb) == "> " + text[: len(row) - 2]
    assert kb.cursor()[0] == 4
    kb.keys(b"\r")
    assert kb.typed == [text]


def test_a_paste_is_drawn_once_not_per_key() -> None:
    kb = Keyboard(width=40)
    kb.output.clear()
    kb.keys("x" * 5000 + "\r" + "y" * 10)
    assert kb.typed == ["x" * 5000]
    assert kb.output.value() == b"\r\x1b[K> yyyyyyyyyy"  # one draw, at the end
    assert input_row(kb) == "> yyyyyyyyyy"


def test_hostile_text_is_cleaned_before_the_terminal() -> None:
    kb = Keyboard()
    kb.output.clear()
    kb.ui.show(info("x\x1b[2J\x1b]0;pwned\x07\x9b31m\u202e"))
    written = kb.output.value()
    assert b"\x1b[2J" not in written and b"\x07" not in written and b"\xc2\x9b" not in written
    assert b"\\x1b[2J" in written


def test_colours_only_when_enabled() -> None:
    kb = Keyboard()
    kb.output.clear()
    kb.ui.show(error("oops"))
    kb.ui.set_prompt("alice> ")
    assert not SGR.search(kb.output.value())
    kb.ui.colour = True
    kb.ui.show(error("oops"))
    assert b"\x1b[1;31m! oops\x1b[0m" in kb.output.value()


def test_no_color_keeps_bold_and_reverse_video_without_colours() -> None:
    kb = Keyboard()
    kb.ui.styles = True  # NO_COLOR on a terminal that is not TERM=dumb
    kb.output.clear()
    kb.ui.show(error("oops"))
    kb.ui.set_prompt("alice> ")
    written = kb.output.value()
    assert b"\x1b[1m! oops\x1b[0m" in written and b"\x1b[1malice> \x1b[0m" in written
    assert not re.search(rb"\x1b\[[0-9;]*3\dm", written)


def test_the_screen_is_not_reset_at_start() -> None:
    kb = Keyboard()
    assert b"\x1bc" not in kb.output.value()
    assert b"\x1b[2J" not in kb.output.value()


def test_close_erases_the_input_row_without_quitting() -> None:
    kb = Keyboard()
    kb.keys("unsent")
    closed = kb.ui.close()
    assert kb.output.disconnecting
    assert input_row(kb) == ""
    kb.server.connectionLost(Failure(ConnectionLost()))
    assert closed.called and kb.quits == 0


def test_terminal_hang_up_quits() -> None:
    kb = Keyboard()
    kb.server.connectionLost(Failure(ConnectionLost()))
    assert kb.quits == 1


def test_resize_redraws() -> None:
    kb = Keyboard(width=40)
    kb.keys("abc")
    kb.ui.terminalSize(50, 20)
    assert kb.ui.width == 50 and input_row(kb) == "> abc"


def test_narrowing_erases_the_rows_a_reflow_made_of_the_input_row() -> None:
    """A terminal that reflows on resize (tmux, VTE) wraps the old input row
    into rows above the cursor: the redraw erased only the cursor's row,
    and the rest stayed as if it were a line of chat.  Narrowing goes up to
    where the old row starts (the rows the cursor's column fills at the new
    width) and erases to the end of the screen; widening erases nothing."""
    kb = Keyboard(width=100)
    kb.keys("x" * 60)  # the cursor at column 62

    def resized(width: int) -> str:
        kb.output.clear()
        kb.ui.terminalSize(width, 10)
        return str(kb.output.value().decode())

    assert resized(30).startswith("\r\x1b[2A\x1b[J\r\x1b[K> ")  # rows 0-29, 30-59 above
    assert resized(100).startswith("\r\x1b[K> ")  # wider: nothing reflowed into rows
    assert resized(40).startswith("\r\x1b[1A\x1b[J\r\x1b[K> ")
    resized(100)
    kb.ui.handle_HOME()  # the cursor in the old row's first columns: no row above
    assert resized(20).startswith("\r\x1b[J\r\x1b[K> ")
    # The row ending at column 60, the cursor after it: tmux keeps the
    # cursor on the row of the text's end (the 2nd at 30 columns), not
    # at the start of a 3rd; going up 2 rows erased a line of chat.
    kb.ui.handle_END()
    resized(100)
    kb.keys("\x7f\x7f")  # 58 x: the row ends at column 60
    assert resized(30).startswith("\r\x1b[1A\x1b[J\r\x1b[K> ")
    resized(100)
    kb.ui.handle_LEFT()  # text after the cursor at column 59: it is on the 2nd row
    assert resized(30).startswith("\r\x1b[1A\x1b[J\r\x1b[K> ")
    resized(100)
    kb.keys("x")  # the cursor at column 60, text after it: the 3rd row
    assert resized(30).startswith("\r\x1b[2A\x1b[J\r\x1b[K> ")


def test_showing_before_the_terminal_is_connected_is_harmless() -> None:
    from twisted_chat.client.terminal import ChatTerminal

    ui = ChatTerminal(lambda line: None, lambda: None, colour=False)
    ui.show(info("early"))
    ui.set_prompt("x> ")


def test_a_password_is_never_drawn_and_the_draft_comes_back() -> None:
    kb = Keyboard()
    kb.ui.set_prompt("alice> ")
    kb.keys("half a message")
    kb.ui.ask_secret("password: ")
    assert input_row(kb) == "password:"
    kb.keys("hunter22")
    kb.ui.show(info("[14:03] <bob> a message meanwhile"))
    assert input_row(kb) == "password:"
    assert kb.cursor()[0] == len("password: ")
    assert "hunter22" not in "\n".join(kb.rows())
    assert b"hunter22" not in kb.output.value()
    kb.keys(UP)  # no history at a password prompt
    kb.keys("\r")
    assert kb.secrets == ["hunter22"] and kb.typed == []
    assert input_row(kb) == "alice> half a message"
    # The password is not in the history either.
    kb.keys(b"\x15")  # Ctrl-U
    kb.keys(UP)
    assert "hunter22" not in input_row(kb)


def test_register_lines_are_not_kept_in_the_history() -> None:
    kb = Keyboard()
    kb.ui.set_prompt("alice> ")
    kb.keys("hello\r/register oops-a-password\r")
    assert kb.typed == ["hello", "/register oops-a-password"]
    kb.keys(UP)
    assert input_row(kb) == "alice> hello"


def test_forgotten_lines_leave_the_history() -> None:
    kb = Keyboard()
    kb.ui.set_prompt("> ")
    kb.keys("first\rhunter2222\rthird\r")
    kb.ui.forget(["hunter2222", "never typed"])
    kb.keys(UP)
    assert input_row(kb) == "> third"
    kb.keys(UP)
    assert input_row(kb) == "> first"
    kb.keys(UP)
    assert input_row(kb) == "> first"


TAB = b"\t"


def test_tab_completes_a_nick_at_the_start_with_a_colon_and_cycles() -> None:
    kb = Keyboard(nicks=("bob", "Bobby", "carol"))
    kb.ui.set_prompt("alice> ")
    kb.keys(b"bo" + TAB)
    assert input_row(kb) == "alice> bob:"
    assert kb.ui.lineBuffer == list("bob: ")
    kb.keys(TAB)
    assert kb.ui.lineBuffer == list("Bobby: ")
    kb.keys(TAB)  # and round again
    assert kb.ui.lineBuffer == list("bob: ")
    kb.keys(b"hi\r")
    assert kb.typed == ["bob: hi"]


def test_tab_elsewhere_puts_the_nick_in_bare() -> None:
    kb = Keyboard(nicks=("bob", "carol"))
    kb.keys(b"ask ca" + TAB)  # typed: Tab is the last key of its read
    kb.keys(b" about it")
    assert "".join(kb.ui.lineBuffer) == "ask carol about it"


def test_tab_completes_commands_and_another_key_ends_the_cycle() -> None:
    kb = Keyboard(nicks=("bob",))
    kb.keys(b"/pa" + TAB)
    assert "".join(kb.ui.lineBuffer) == "/pair "
    kb.keys(b"b" + TAB)  # a new word: completes bob, does not cycle /passwd
    assert "".join(kb.ui.lineBuffer) == "/pair bob"


def test_tab_with_nothing_to_complete_changes_nothing() -> None:
    kb = Keyboard(nicks=("bob",))
    kb.keys(b"zz" + TAB)
    assert "".join(kb.ui.lineBuffer) == "zz"


def test_the_bell_rings_unless_turned_off() -> None:
    kb = Keyboard()
    kb.ui.bell()
    assert kb.output.value().count(b"\a") == 1
    quiet = Keyboard(bell=False)
    quiet.ui.bell()
    assert b"\a" not in quiet.output.value()


def _last_row_drawn(kb: Keyboard) -> str:
    out = kb.output.value().decode()
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out.rsplit("\r\x1b[K", 1)[1])


def test_the_input_row_fits_a_terminal_narrower_than_the_prompt() -> None:
    """A row wider than the terminal wraps, and ERASE_ROW erases only its last
    physical row: each keystroke left a copy of the prompt on the screen."""
    kb = Keyboard(width=45, height=12)
    kb.ui.width = 45
    prompt = "a" * 24 + " -> " + "b" * 24 + "> "
    kb.ui.set_prompt(prompt)
    kb.keys("x")
    kb.keys("y")
    shown = _last_row_drawn(kb)
    assert len(shown) < 45, len(shown)
    assert shown == "…" + prompt[-(45 - 1 - MIN_ROOM - 1) :] + "xy"  # "…aaaaa -> bbb...> xy"
    kb.ui.width = 30
    kb.ui.ask_secret("password for " + "c" * 24 + ": ")  # 39 columns
    assert len(_last_row_drawn(kb)) < 30


def test_a_resize_gives_the_whole_prompt_back_and_uses_the_real_width() -> None:
    kb = Keyboard(width=80, height=12)
    prompt = "a" * 24 + " -> " + "b" * 24 + "> "
    kb.ui.set_prompt(prompt)
    kb.ui.terminalSize(12, 12)  # was raised to 20 columns
    assert kb.ui.width == 12
    assert len(_last_row_drawn(kb)) < 12
    kb.ui.terminalSize(6, 12)  # no room for any prompt: the text alone
    kb.keys("abcdefghij")
    assert _last_row_drawn(kb) == "fghij"
    kb.ui.terminalSize(80, 12)
    assert _last_row_drawn(kb) == prompt + "abcdefghij"


ESC = b"\x1b"


def test_a_lone_esc_does_not_swallow_the_next_key() -> None:
    """insults waited for ever after a lone ESC and took the next key, however
    much later, as Alt and that key, which was then dropped: "/msg bob ..."
    and "@bob ..." lost their first character and went to the lobby."""
    kb = Keyboard()
    kb.ui.set_prompt("alice> ")
    kb.keys(ESC)
    kb.keys("/msg bob my number\r")
    kb.keys(ESC)
    kb.keys("@bob the code\r")
    kb.keys(ESC + ESC)  # twice, in one read
    kb.keys("/quit\r")
    assert kb.typed == ["/msg bob my number", "@bob the code", "/quit"]
    # An escape sequence in one read is still a key, not Esc and text.
    kb.keys(b"ab" + LEFT + b"X\r")
    assert kb.typed[-1] == "aXb"


def test_an_unbound_alt_key_is_the_key_itself() -> None:
    """ESC and a key in one read (Alt-/, or Esc typed just before): the key
    is kept, not dropped; Alt-B, Alt-F and Alt-Backspace keep their use."""
    kb = Keyboard()
    kb.ui.set_prompt("> ")
    kb.keys(ESC + b"/msg bob hi\r")
    kb.keys(ESC + b"@bob hi" + ESC + b"\r")  # Alt-Enter is Enter
    assert kb.typed == ["/msg bob hi", "@bob hi"]
    kb.keys(b"one two" + ESC + b"b" + b"X")
    assert input_row(kb) == "> one Xtwo"
    kb.keys(ESC + b"\x7f")
    assert input_row(kb) == "> one two"


def _paste(lines: list[str], tail: str = "") -> bytes:
    """A bracketed paste (terminals turn its line ends into CR)."""
    text = "".join(f"{line}\r" for line in lines) + tail
    return b"\x1b[200~" + text.encode() + b"\x1b[201~"


LINES = [f"line {i}" for i in range(20)]


def test_a_long_paste_is_held_until_enter_sends_it() -> None:
    """A paste went out line by line over many seconds, with no word and no
    way to stop it short of quitting."""
    kb = Keyboard(width=80)
    kb.ui.set_prompt("alice> ")
    kb.keys(b"\x1b[200~line 0\rline 1\r")  # a paste may come in several reads
    kb.keys(_paste(LINES[2:])[len(b"\x1b[200~") :])
    assert kb.typed == []
    rows = kb.rows()
    y = kb.cursor()[1]
    assert rows[y - 1] == "* You pasted 20 lines: Enter sends them, Esc drops them."
    assert rows[y] == "send the 20 pasted lines? Enter sends, Esc drops:"
    kb.keys("x")  # only Enter, Esc or Ctrl-C answer
    kb.keys(UP)
    assert kb.typed == [] and kb.ui.lineBuffer == []
    kb.keys("\r")
    assert kb.typed == LINES
    assert input_row(kb) == "alice>"
    kb.keys(UP)
    assert input_row(kb) == "alice> line 19"


def test_esc_drops_a_held_paste_and_the_half_typed_line_stays() -> None:
    kb = Keyboard(width=80)
    kb.ui.set_prompt("alice> ")
    kb.keys("draft ")
    kb.keys(_paste(LINES, tail="and a tail"))
    assert kb.typed == []
    kb.keys(ESC)
    assert kb.typed == []
    y = kb.cursor()[1]
    assert kb.rows()[y - 1] == "* The 20 pasted lines were dropped: none was sent."
    assert input_row(kb) == "alice> and a tail"  # (the first pasted line began with the draft)
    kb.keys(UP)  # the dropped lines are not recalled either
    assert input_row(kb) == "alice> and a tail"


def test_a_short_paste_goes_at_once_and_a_long_one_without_bracketed_paste_is_held() -> None:
    kb = Keyboard(width=80)
    kb.keys(_paste(LINES[:5]))
    assert kb.typed == LINES[:5]
    # A terminal without bracketed paste: one read with many lines.
    kb.keys("".join(f"{line}\r" for line in LINES[5:15]))
    assert kb.typed == LINES[:5]
    kb.keys("".join(f"{line}\r" for line in LINES[15:]))  # more of it, read later
    kb.keys("\r")
    assert kb.typed == LINES


def test_lines_pasted_after_a_register_command_are_still_read_unseen() -> None:
    """A pasted line is entered once the paste ends: a password prompt that
    a line before it opened still takes it."""
    kb = Keyboard()
    kb.ui.on_line = lambda line: (kb.typed.append(line), kb.ui.ask_secret("password: "))
    kb.keys(_paste(["/register", "hunter2222", "hello"]))
    assert kb.typed == ["/register", "hello"]
    assert kb.secrets == ["hunter2222"]


def test_a_password_prompt_drops_a_held_paste() -> None:
    """Lines typed (or pasted) ahead of a password prompt are not sent: one
    may be the password."""
    kb = Keyboard(width=80)
    kb.keys(_paste(LINES))
    assert kb.ui.drop_typing()
    assert input_row(kb) == ">"  # the question is gone
    kb.ui.ask_secret("password: ")
    kb.keys("hunter2222\r")
    kb.keys("\r")
    assert kb.secrets == ["hunter2222"] and kb.typed == [""]


FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
THUMB_TONE = "\U0001f44d\U0001f3fd"
FLAGS = "\U0001f1eb\U0001f1f7\U0001f1e9\U0001f1ea"  # FR DE


def test_editing_steps_over_what_the_eye_sees_as_one_character() -> None:
    """Keys moved by code point: Backspace left a thumb without its skin
    tone, and a letter typed inside a family emoji split it."""
    kb = Keyboard()
    kb.keys(f"ok {THUMB_TONE}".encode() + b"\x7f")
    assert "".join(kb.ui.lineBuffer) == "ok "
    kb.keys(b"\x15" + f"fam {FAMILY} end".encode() + LEFT * 5 + b"X\r")
    assert kb.typed[-1] == f"fam X{FAMILY} end"
    kb.keys(f"cafe\u0301 {FLAGS}".encode() + LEFT + b"\x7f" + b"\x01" + RIGHT * 4 + b"!\r")
    assert kb.typed[-1] == "cafe\u0301! \U0001f1e9\U0001f1ea"
    kb.keys(f"x{FAMILY}\u0301y".encode() + b"\x01" + RIGHT + b"\x1b[3~\r")  # Delete
    assert kb.typed[-1] == "xy"


@given(
    st.lists(
        st.sampled_from(
            [
                "a",
                " ",
                "\u0301",
                "\u200d",
                "\ufe0f",
                "\U0001f3fd",
                "\U0001f468",
                "\U0001f1eb",
                "\U0001f1f7",
                "\U000e0067",
            ]
        )
    )
)
def test_left_and_right_stop_at_the_same_places(chars: list[str]) -> None:
    forward = [0]
    while forward[-1] < len(chars):
        forward.append(cluster_end(chars, forward[-1]))
    backward = [len(chars)]
    while backward[-1] > 0:
        backward.append(cluster_start(chars, backward[-1]))
    assert forward == backward[::-1]


def test_help_at_40_columns_keeps_the_commands_apart_from_their_words() -> None:
    # rev15 L5: the descriptions wrapped to the left margin, among the commands.
    s = session("alice")
    s.ready("alice")
    k = Keyboard(width=40, height=80)
    k.attach(s.client)
    k.keys("/help\r")
    rows = k.rows()
    at = rows.index("  /register")
    assert rows[at + 1 : at + 3] == [
        "      protect your nickname with a",
        "      password (asked for, not shown)",
    ]
    assert "  Up, Down" in rows  # the keys too
    commands = [row for row in rows if row.startswith("  ") and not row.startswith("      ")]
    assert all(row.lstrip().startswith(("/", "@", "TEXT")) for row in commands[:13]), commands
