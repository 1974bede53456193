"""
The client on a real terminal (tmux; see L{tests.client.tmuxpane}): keys are
typed with send-keys, and the screen is read with capture-pane.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK, LineClient, ServerProcess, wait_until
from twisted_chat.client.reconnect import backoff_delay
from twisted_chat.client.replies import BELL_GAP

from .clientproc import CLIENT
from .tmuxpane import Pane

pytestmark = pytest.mark.e2e

# Fixed waits, each for something a poll cannot show.  What must NOT show in
# the pane (another bell) is watched for this long after what must show.
NOTHING_MORE_WINDOW = 0.3
# A person's pause after Esc, so that it reaches the client as a key of its
# own, not as the start of an escape sequence with what is typed next.
ESC_ALONE = 0.5
# After a server restart, a client whose tries were refused meanwhile tries
# again within one backoff step (client/reconnect.py): at most its longest
# step at its most jitter, however long the restart took (5 s or less while
# it takes under 5 s); then it logs in.
BACK_AFTER_RESTART = backoff_delay(1_000, 1.0) + 7.5

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
SGR = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize("no_color", [False, True], ids=["colour", "NO_COLOR"])
def test_incoming_message_does_not_break_the_line_being_typed(
    no_color: bool,
    bob_online: tuple[ServerProcess, LineClient],
    pane: Callable[..., Pane],
) -> None:
    server, bob = bob_online
    env = {"NO_COLOR": "1"} if no_color else {}
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)], **env)
    term.wait_row(r"^alice>$")
    bob.expect("JOINED")

    # Half a line, with the cursor moved back into it.
    term.keys("half typed")
    term.key("Left", "Left", "Left", "Left", "Left")
    term.wait_row(r"^alice> half typed$")
    term.wait_cursor((len("alice> half "), term.cursor()[1]))

    bob.send("MSG a message from bob")
    row = term.wait_row(r"^\[\d\d:\d\d\] <bob> a message from bob$")
    # Right below it, the input row is drawn again with the cursor where it was
    # (waited for, as tmux may show the message a moment before the redraw).
    term.wait_row(r"^alice> half typed$", after=row)
    term.wait_cursor((len("alice> half "), row + 1))

    coloured = "\n".join(term.screen(escapes=True))
    assert _has_colour(coloured) is not no_color
    # NO_COLOR drops colours, not styling: the prompt stays bold.
    assert SGR.search(coloured)

    # Typing carries on at the cursor; Enter sends the whole line.
    term.keys("well-")
    term.key("End")
    term.enter(" line")
    line = bob.expect(lambda line: line.startswith("MSG") and " alice " in line)
    assert re.fullmatch(rf"MSG {TS} alice \* half well-typed line", line), line
    term.wait_row(r"^\[\d\d:\d\d\] <alice> half well-typed line$")

    # History: Up brings the line back.
    term.key("Up")
    term.wait_row(r"^alice> half well-typed line$")
    term.key("C-u")

    # A line that mentions alice is in reverse video, NO_COLOR or not.
    bob.send("MSG alice, look here")
    row = term.wait_row(r"^\[\d\d:\d\d\] <bob> alice, look here$")
    assert 7 in _sgr_params(term.screen(escapes=True)[row])

    term.enter("/quit bye now")
    assert re.fullmatch(rf"LEFT {TS} alice quit bye now", bob.expect("LEFT"))
    term.wait_row(r"^EXIT=0$")


def _sgr_params(screen: str) -> set[int]:
    """The SGR parameters used on the screen (1 bold, 7 reverse, 3x colours...)."""
    return {int(p) for sgr in SGR.findall(screen) for p in sgr[2:-1].split(";") if p}


def _has_colour(screen: str) -> bool:
    """Whether an SGR on the screen sets a colour (39 and 49, the defaults, do not)."""
    return any(30 <= p <= 48 and p != 39 for p in _sgr_params(screen))


def test_nick_prompt_and_private_conversation(
    bob_online: tuple[ServerProcess, LineClient], pane: Callable[..., Pane]
) -> None:
    server, bob = bob_online
    term = pane([*CLIENT, LOOPBACK, str(server.port)])
    term.wait_row(r"^nickname:$")
    term.enter("bob")
    term.wait_row(r"^! The nickname bob is already taken")
    term.enter("alice")
    term.wait_row(r"^alice>$")
    bob.expect("JOINED")

    bob.send("PAIR alice")
    term.wait_row(r"bob invites you .* /accept bob .* /reject bob")
    term.enter("/accept")
    term.wait_row(r"^alice -> bob>$")
    bob.expect("PAIRED alice")
    bob.send("MSG only for you")
    term.wait_row(r"\(private\) bob -> you: only for you$")

    term.key("C-c")  # Ctrl-C quits cleanly
    bob.expect("LEFT")
    term.wait_row(r"^EXIT=0$")


def _alice_recorded(
    server: ServerProcess, bob: LineClient, pane: Callable[..., Pane], raw: Path, *options: str
) -> Pane:
    """alice in a pane, in the lobby with bob; every byte she draws goes to C{raw}."""
    term = pane([*CLIENT, *options, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    bob.expect("JOINED")
    term.tmux("pipe-pane", "-t", "chat", "-o", f"cat >> {shlex.quote(str(raw))}")
    return term


def test_tab_completion_mentions_and_the_bell(
    bob_online: tuple[ServerProcess, LineClient],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
    tmp_path: Path,
) -> None:
    server, bob = bob_online
    connect(server.port).register("bobcat")
    bob.expect("JOINED")
    raw = tmp_path / "pane.out"
    term = _alice_recorded(server, bob, pane, raw)

    # Tab: a nick at the start gets ": ", a second Tab cycles, a command is completed.
    term.keys("b")
    term.key("Tab")
    term.wait_row(r"^alice> bob:$")
    term.key("Tab")
    term.wait_row(r"^alice> bobcat:$")
    term.key("Tab")
    term.wait_row(r"^alice> bob:$")
    term.enter("hello")
    line = bob.expect(lambda line: line.startswith("MSG") and " alice " in line)
    assert re.fullmatch(rf"MSG {TS} alice \* bob: hello", line), line
    term.keys("/us")
    term.key("Tab")
    term.wait_row(r"^alice> /users$")
    term.key("C-u")

    bob.send("MSG nothing for you")
    term.wait_row(r"<bob> nothing for you$")
    bob.send("MSG ALICE, a word?")
    row = term.wait_row(r"<bob> ALICE, a word\?$")
    # The mention is highlighted (reverse video), the other line is not.
    coloured = term.screen(escapes=True)
    assert "\x1b[7m" in coloured[row] or ";7m" in coloured[row], coloured[row]
    assert "7m" not in coloured[row - 1].replace("\x1b[27m", "")
    # The bell rings at most once a second, by the client's wall clock: the
    # margin covers that clock running a little slow (NTP slewing it).
    time.sleep(BELL_GAP + 0.1)
    bob.send("DM alice psst")
    term.wait_row(r"\(private\) bob -> you: psst$")
    time.sleep(BELL_GAP + 0.1)
    bob.send("PAIR alice")
    term.wait_row(r"bob invites you")
    bob.sync()
    wait_until(lambda: raw.exists() and raw.read_bytes().count(b"\a") >= 3, what="3 bells")
    time.sleep(NOTHING_MORE_WINDOW)  # a fourth bell would have arrived by now
    assert raw.read_bytes().count(b"\a") == 3  # the mention, the DM, the invitation

    term.key("C-c")
    term.wait_row(r"^EXIT=0$")


def test_no_bell(
    bob_online: tuple[ServerProcess, LineClient], pane: Callable[..., Pane], tmp_path: Path
) -> None:
    server, bob = bob_online
    raw = tmp_path / "pane.out"
    term = _alice_recorded(server, bob, pane, raw, "--no-bell")
    bob.send("MSG alice?")
    bob.send("DM alice psst")
    term.wait_row(r"\(private\) bob -> you: psst$")
    time.sleep(NOTHING_MORE_WINDOW)  # a bell would have arrived by now
    assert b"psst" in raw.read_bytes() and b"\a" not in raw.read_bytes()
    term.key("C-c")
    term.wait_row(r"^EXIT=0$")


def test_a_password_typed_after_the_login_timed_out_never_reaches_the_shell(
    chat_server: Callable[..., ServerProcess],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
) -> None:
    """The server's --nick-timeout ran out at the password prompt: the client
    exited, and the password typed blind next went to the shell."""
    server = chat_server("--nick-timeout", "2")
    dave = connect(server.port)
    dave.register("dave")
    dave.send("REGISTER DavePassw0rd")
    dave.expect("REGISTERED")
    dave.send("BYE")
    dave.expect("BYE")
    term = pane([*CLIENT, "--nick", "dave", LOOPBACK, str(server.port)])
    term.wait_row(r"^password for dave:")
    term.wait_row(r"Enter to leave|EXIT=")  # the server has given up
    term.enter("DavePassw0rd")
    term.wait_row(r"^EXIT=1$")
    screen = "\n".join(term.screen())
    assert "DavePassw0rd" not in screen, screen
    assert "The server stopped waiting for the password (it allows 2 seconds" in screen


def _alice_watched(
    server: ServerProcess, connect: Callable[..., LineClient], pane: Callable[..., Pane]
) -> tuple[Pane, LineClient]:
    """alice in a pane, in the lobby, and carol on a raw connection who sees
    what alice posts there."""
    carol = connect(server.port)
    carol.register("carol")
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    carol.expect("JOINED")
    return term, carol


def test_esc_then_a_private_message_stays_private(
    bob_online: tuple[ServerProcess, LineClient],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
) -> None:
    """A lone Esc made the next key Alt-that-key, which was dropped: the "@"
    of "@bob ..." went, and the private message was posted to the lobby."""
    server, bob = bob_online
    term, carol = _alice_watched(server, connect, pane)
    for typed, text in (("@bob ", "the door code is 4321"), ("/msg bob ", "my number 555-0100")):
        term.key("Escape")
        time.sleep(ESC_ALONE)  # a person's pause: the Esc arrives alone
        term.enter(typed + text)
        line = bob.expect(lambda line: line.startswith("MSG") and " alice " in line)
        assert re.fullmatch(rf"MSG {TS} alice bob {text}", line), line
    term.key("Escape")
    time.sleep(ESC_ALONE)
    term.enter("/quit")
    term.wait_row(r"^EXIT=0$")
    assert not [line for line in carol.sync() if line.startswith("MSG")]


def test_a_private_reply_half_typed_when_the_partner_leaves_the_pair_is_not_posted(
    bob_online: tuple[ServerProcess, LineClient],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
) -> None:
    """rev15 H2: the reply typed for bob stayed on the input line when bob
    ended the pair, and the next Enter posted it to the lobby and its history."""
    server, bob = bob_online
    term, carol = _alice_watched(server, connect, pane)
    term.enter("/pair bob")
    bob.expect("INVITE alice")
    bob.send("ACCEPT alice")
    term.wait_row(r"^alice -> bob>$")
    term.keys("my PIN is 4711")
    term.wait_row(r"^alice -> bob> my PIN is 4711$")
    bob.send("UNPAIR")
    term.wait_row(r"The line you were typing for bob was not sent: the private")
    term.wait_row(r"^alice>$")
    term.key("Enter")  # the Enter that was to send the reply
    term.enter("/quit")
    term.wait_row(r"^EXIT=0$")
    assert not [line for line in carol.sync() if "4711" in line]
    late = connect(server.port)
    assert not [line for line in late.register("dave") if "4711" in line]


def test_help_at_40_columns_puts_each_description_under_its_command(
    bob_online: tuple[ServerProcess, LineClient], pane: Callable[..., Pane]
) -> None:
    """rev15 L5: at 40 columns /help's descriptions wrapped to the left margin."""
    server, _bob = bob_online
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    term.tmux("resize-window", "-t", "chat", "-x", "40", "-y", "60")
    term.key("C-l")
    term.enter("/help")
    row = term.wait_row(r"^  /register$")
    term.wait_row(r"^      protect your nickname with a$", after=row)
    term.wait_row(r"^      password \(asked for, not shown\)$", after=row + 1)
    term.wait_row(r"^  Ctrl-C, Ctrl-D$")
    screen = term.screen()
    shown = screen[screen.index("Commands:"):]
    # No description at the commands' margin (they all start lower-case).
    assert not [r for r in shown if r.startswith("  ") and r[2].islower()], screen
    term.enter("/quit")
    term.wait_row(r"^EXIT=0$")


def test_narrowing_under_a_half_typed_line_leaves_no_copy_of_it(
    bob_online: tuple[ServerProcess, LineClient], pane: Callable[..., Pane]
) -> None:
    """tmux reflows the wide input row into rows at the new width; only the
    cursor's row was redrawn, and the rows above it stayed on the screen
    as if they were a line of chat (also after widening again)."""
    server, bob = bob_online
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    typed = "a half typed line, long enough to fill three rows of forty columns " + "x" * 30
    term.keys(typed)
    term.wait_row(rf"^alice> {re.escape(typed)}$")
    term.tmux("resize-window", "-t", "chat", "-x", "40", "-y", "30")
    term.wait_row(r"^alice> s x{30}$")  # redrawn at 40 columns: the end of the line
    bob.send("MSG bob speaks")
    term.wait_row(r"<bob> bob speaks$")
    assert not [row for row in term.screen() if "a half typed" in row], term.screen()
    term.tmux("resize-window", "-t", "chat", "-x", "120", "-y", "30")
    bob.send("MSG and after widening")
    term.wait_row(r"<bob> and after widening$")
    term.wait_row(rf"^alice> {re.escape(typed)}$")
    screen = term.screen()
    assert [row for row in screen if "a half typed" in row] == [f"alice> {typed}"], screen
    # Ending at column 80, the cursor after it: tmux keeps it on the 2nd
    # row at 40 columns. Going up to a 3rd row's start erased a chat line.
    term.key("C-u")
    term.keys("q" * 73)
    term.wait_row(r"^alice> q{73}$")
    term.tmux("resize-window", "-t", "chat", "-x", "40", "-y", "30")
    term.wait_row(r"^alice> q{32}$")
    bob.send("MSG once more")
    term.wait_row(r"<bob> once more$")
    screen = term.screen()
    assert screen[-3].endswith("<bob> and after widening"), screen
    term.key("C-u")
    term.enter("/quit")
    term.wait_row(r"^EXIT=0$")


def test_a_frozen_server_is_noticed_and_so_is_its_return(
    bob_online: tuple[ServerProcess, LineClient], pane: Callable[..., Pane]
) -> None:
    """A server that stopped answering (SIGSTOP stands in for a dead network
    path) gave no sign: the typed line left the input row and appeared nowhere."""
    server, bob = bob_online
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    bob.expect("JOINED")
    os.kill(server.pid, signal.SIGSTOP)
    try:
        term.enter("is anyone there?")
        term.wait_row(
            rf"^! No answer from {re.escape(LOOPBACK)}:\d+ for \d+ seconds: the last line you",
            timeout=20,
        )
        assert not any("<alice> is anyone there?" in row for row in term.screen())
    finally:
        os.kill(server.pid, signal.SIGCONT)
    row = term.wait_row(r"answers again, after \d+ seconds\.$")
    term.wait_row(r"<alice> is anyone there\?$", after=row)
    line = bob.expect(lambda line: line.startswith("MSG") and " alice " in line)
    assert line.endswith(" is anyone there?")
    term.key("C-c")
    term.wait_row(r"^EXIT=0$")


def test_a_long_paste_waits_for_enter_and_esc_drops_it(
    bob_online: tuple[ServerProcess, LineClient], pane: Callable[..., Pane]
) -> None:
    """A paste of the wrong clipboard went out to the lobby line by line,
    with no notice and no way to stop it short of quitting."""
    server, bob = bob_online
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    bob.expect("JOINED")
    term.tmux("set-buffer", "-b", "clip", "\n".join(f"oops {i}" for i in range(20)) + "\n")
    term.tmux("paste-buffer", "-p", "-b", "clip", "-t", "chat")
    term.wait_row(r"^\* You pasted 20 lines \(about 4 s to send\): Enter sends them, Esc drops")
    term.wait_row(r"^send the 20 pasted lines\? Enter sends, Esc drops:$")
    term.key("Escape")
    term.wait_row(r"^\* The 20 pasted lines were dropped: none was sent\.$")
    term.wait_row(r"^alice>$")
    assert not [line for line in bob.sync() if line.startswith("MSG")]
    term.tmux("paste-buffer", "-p", "-b", "clip", "-t", "chat")
    term.wait_row(r"^send the 20 pasted lines\?")
    term.key("Enter")
    got = [bob.expect(lambda line: line.startswith("MSG")) for _ in range(20)]
    assert [line.split(" ", 4)[-1] for line in got] == [f"oops {i}" for i in range(20)]
    term.key("C-c")
    term.wait_row(r"^EXIT=0$")


def test_a_server_restart_reconnects_and_rejoins(
    chat_server: Callable[..., ServerProcess],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
) -> None:
    server = chat_server()
    bob = connect(server.port)
    bob.register("bob")
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    bob.expect("JOINED")
    bob.send("MSG said before the restart")
    term.wait_row(r"<bob> said before the restart$")

    server.stop()  # SIGTERM: BYE shutdown to everyone
    term.wait_row(r"^! The server is shutting down\.$")
    term.wait_row(r"^\* Reconnecting in \d+ s; /reconnect tries now, /quit leaves\.$")
    term.wait_row(r"^\(not connected\) >$")
    term.enter("typed while away")
    term.wait_row(r"^! Not connected: that line was not sent")

    # The same port again, the same database (the history): the backoff
    # (1, 2, 4 ... s) finds it within a few seconds.
    chat_server(port=server.port)
    row = term.wait_row(r"^\* Reconnected: you are back in the lobby as alice\.$",
                        timeout=BACK_AFTER_RESTART)
    # The READY block ends with the user list; its history held only bob's
    # line, already on screen, so it is not shown again (client/lobbyview.py).
    term.wait_row(r"^\* 1 person online:$", after=row)
    term.wait_row(r"^alice>$")
    screen = term.screen()
    assert sum(r.endswith("<bob> said before the restart") for r in screen) == 1, screen
    assert not any(r == "* Recent messages in the lobby:" for r in screen[row:]), screen

    carol = connect(server.port)
    carol.register("carol")
    term.enter("back again")
    line = carol.expect(lambda text: text.startswith("MSG "))
    assert line.endswith(" alice * back again")  # not the line typed while away
    term.enter("/quit")
    term.wait_row(r"^EXIT=0$")


def _said(terms: list[Pane], pattern: str, timeout: float = 15.0) -> list[Pane]:
    """The panes whose screen says C{pattern}, once one does (its rows joined:
    a long line wraps)."""
    deadline = time.monotonic() + timeout
    while True:
        said = [t for t in terms if re.search(pattern, " ".join(" ".join(t.screen()).split()))]
        if said or time.monotonic() > deadline:
            return said
        time.sleep(0.05)


def test_users_behind_one_address_all_get_back_after_a_restart(
    chat_server: Callable[..., ServerProcess], pane: Callable[..., Pane]
) -> None:
    """rev17 #1: the restarted server lets one address register one nick
    now and one every 5 s; the second terminal to come back was answered
    ERROR flood "try again in N s", asked "Choose a nickname:", and exited
    at the server's nick timeout.  Now it waits that long and sends its nick
    again.  rev17 #2: the invitation open across the restart is said to
    have ended, on both sides."""
    limits = ("--ip-register-rate", "0.2")
    # 127.0.0.1 is not exempt here (the tests' default) from the limits.
    server = chat_server(*limits, "--ip-register-burst", "2", exempt=())
    alice = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    alice.wait_row(r"^alice>$")
    bob = pane([*CLIENT, "--nick", "bob", LOOPBACK, str(server.port)])
    bob.wait_row(r"^bob>$")
    alice.enter("/pair bob")
    alice.wait_row(r"^\* Invitation sent to bob; waiting for an answer")
    bob.wait_row(r"^\* alice invites you to a private conversation")

    server.stop()
    chat_server(*limits, "--ip-register-burst", "1", port=server.port, exempt=())
    waited = _said([alice, bob], r"Sending the nickname (alice|bob) again in \d+ s \(try 1 of",
                   timeout=BACK_AFTER_RESTART)
    assert len(waited) == 1, [t.screen() for t in (alice, bob)]
    for term, nick in ((alice, "alice"), (bob, "bob")):
        term.wait_row(rf"^\* Reconnected: you are back in the lobby as {nick}\.$", timeout=20)
        term.wait_row(rf"^{nick}>$")
    assert not _said([alice, bob], r"Choose a nickname", timeout=0)
    assert _said([alice], r"Your invitation to bob ended: the server shut down")
    assert _said([bob], r"alice's invitation ended: the server shut down")
    bob.enter("/accept alice")
    bob.wait_row(r"^! There is no open invitation from that person\.$")
    for term in (alice, bob):
        term.enter("/quit")
        term.wait_row(r"^EXIT=0$")


def _first_login_cut_by_the_nick_timeout(
    chat_server: Callable[..., ServerProcess],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
    register_rate: str,
) -> tuple[ServerProcess, LineClient, Pane]:
    """A server that lets an address register one nick per 1/register_rate
    s (carol takes it) and gives a login 2 s: alice's first wait for her
    nick is cut by the nick timeout, and her client says it reconnects."""
    server = chat_server("--ip-register-rate", register_rate, "--ip-register-burst", "1",
                         "--nick-timeout", "2", exempt=())
    carol = connect(server.port)
    carol.register("carol")
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    assert _said([term], r"Sending the nickname alice again in \d+ s \(try 1 of 10\)")
    assert _said([term], r"Reconnecting in 1 s;")
    return server, carol, term


def test_a_first_login_held_back_past_the_nick_timeout_connects_again_and_gets_in(
    chat_server: Callable[..., ServerProcess],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
) -> None:
    """The address may register one nick every 5 s (carol took it), and
    the server gives a login 2 s: alice's wait for her nick is cut by the
    server's nick timeout.  The client exited ("The server stopped waiting
    for the nickname"); now it connects again, sends alice again, and gets in."""
    _, carol, term = _first_login_cut_by_the_nick_timeout(
        chat_server, connect, pane, register_rate="0.2")
    term.wait_row(r"^\* Welcome, alice! You are in the lobby\.", timeout=20)
    term.wait_row(r"^alice>$")
    carol.expect(lambda line: line.startswith("JOINED") and line.endswith(" alice"))
    term.enter("/quit")
    term.wait_row(r"^EXIT=0$")


def test_a_nickname_typed_after_the_nick_timeout_connects_again(
    chat_server: Callable[..., ServerProcess], pane: Callable[..., Pane]
) -> None:
    """The prompt left open past the server's --nick-timeout: the client
    exited with status 1; now it keeps the prompt, and the nick typed
    there, once the server gave up, gets in on a new connection."""
    server = chat_server("--nick-timeout", "1")
    term = pane([*CLIENT, LOOPBACK, str(server.port)])
    term.wait_row(r"^\* Type a nickname to connect again, or /quit to leave\.$")
    term.wait_row(r"^nickname:$")
    term.enter("alice")
    term.wait_row(r"^\* Welcome, alice! You are in the lobby\.", timeout=20)
    term.enter("/quit")
    term.wait_row(r"^EXIT=0$")


def test_ctrl_c_while_a_held_back_first_login_waits_to_reconnect_exits_130(
    chat_server: Callable[..., ServerProcess],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
) -> None:
    """The server's nick timeout (2 s) cut alice's first wait for her nick
    (one nick every 20 s, carol took it), then the server stopped: the
    client waits to reconnect, never in.  Ctrl-C there is an interrupt
    before the chat was joined, status 130.  It exited 1."""
    server, _, term = _first_login_cut_by_the_nick_timeout(
        chat_server, connect, pane, register_rate="0.05")
    server.stop()
    assert _said([term], r"Cannot connect to .*connection refused")
    term.key("C-c")
    term.wait_row(r"^EXIT=130$")
    assert _said([term], r"twisted-chat: Interrupted before joining the chat\. ", timeout=0)


@pytest.mark.parametrize("joined", [True, False], ids=["once joined", "before joining"])
def test_sigint_while_the_client_waits_to_reconnect(
    chat_server: Callable[..., ServerProcess],
    connect: Callable[..., LineClient],
    pane: Callable[..., Pane],
    joined: bool,
) -> None:
    """A SIGINT (kill -INT: main.py hands it to the same leaving as Ctrl-C)
    between connections, after a failed try: once a connection got in,
    status 1 with the end the client was reconnecting after (the server's
    shutdown), not the refused try's; before any got in (a first login cut
    by the nick timeout), 130 with the cut's sentence."""
    if joined:
        server = chat_server()
        term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
        term.wait_row(r"^alice>$")
        server.stop()
        code, said = 1, r"twisted-chat: The server is shutting down\."
    else:
        server, _, term = _first_login_cut_by_the_nick_timeout(
            chat_server, connect, pane, register_rate="0.05")
        server.stop()
        code, said = 130, (r"twisted-chat: Interrupted before joining the chat\. The server "
                           r"stopped waiting for the nickname")
    assert _said([term], r"Cannot connect to .*connection refused"), term.screen()
    os.kill(term.command_pid(), signal.SIGINT)
    term.wait_row(rf"^EXIT={code}$")
    assert _said([term], said, timeout=0), term.screen()
    assert not _said([term], r"twisted-chat: .*Cannot connect", timeout=0), term.screen()


def test_a_draft_survives_a_restart_for_a_registered_nick(
    chat_server: Callable[..., ServerProcess], pane: Callable[..., Pane]
) -> None:
    """rev15 M1: the rejoin's PASS, answered with the password kept from
    earlier, cleared the half-typed line "while the password was checked"."""
    server = chat_server()
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    term.enter("/register")
    term.wait_row(r"password")
    term.enter("correct horse")
    term.wait_row(r"again")
    term.enter("correct horse")
    term.wait_row(r"alice is now registered")
    term.keys("long thought about dinner")
    term.wait_row(r"^alice> long thought about dinner$")

    server.stop()
    term.wait_row(r"^\(not connected\) > long thought about dinner$")
    chat_server(port=server.port)
    term.wait_row(r"^\* Reconnected: you are back in the lobby as alice\.$",
                  timeout=BACK_AFTER_RESTART)
    term.wait_row(r"^alice> long thought about dinner$")  # the input row (it was not connected)
    assert not [r for r in term.screen() if "cleared" in r], term.screen()
    term.key("C-u")
    term.enter("/quit")
    term.wait_row(r"^EXIT=0$")


def test_no_reconnect_exits_when_the_server_stops(
    chat_server: Callable[..., ServerProcess], pane: Callable[..., Pane]
) -> None:
    server = chat_server()
    term = pane([*CLIENT, "--no-reconnect", "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    server.stop()
    term.wait_row(r"^twisted-chat: The server is shutting down\.$")
    term.wait_row(r"^EXIT=1$")
    assert not any("Reconnecting" in row for row in term.screen())


@pytest.mark.parametrize("leave", ["/quit", "C-c"])
def test_leaving_a_reconnection_held_back_by_the_nick_limit_exits_1(
    chat_server: Callable[..., ServerProcess], pane: Callable[..., Pane], leave: str
) -> None:
    """After a restart the address may register one nick, then one every
    20 s: one of alice and bob gets back in, the other's reconnection waits
    to send its nick again.  Leaving it there ends as the lost connection
    did, status 1.  /quit waited for the reconnection to get in (exit 0
    after it); Ctrl-C exited 130 ("Interrupted before joining the chat.")."""
    limits = ("--ip-register-rate", "0.05")
    server = chat_server(*limits, "--ip-register-burst", "2", exempt=())
    terms = {}
    for nick in ("alice", "bob"):
        terms[nick] = pane([*CLIENT, "--nick", nick, LOOPBACK, str(server.port)])
        terms[nick].wait_row(rf"^{nick}>$")
    server.stop()
    chat_server(*limits, "--ip-register-burst", "1", port=server.port, exempt=())
    # Both screens if neither is held back (both got in: the address's limit
    # let two nicks in).
    held = _said(list(terms.values()), r"Sending the nickname \w+ again in \d+ s",
                 timeout=BACK_AFTER_RESTART)
    assert len(held) == 1, [term.screen() for term in terms.values()]
    [waiting] = held
    if leave == "/quit":
        waiting.enter("/quit")
    else:
        waiting.key("C-c")
    waiting.wait_row(r"^EXIT=1$", timeout=10)
    # The connection the client reconnects after: the server's shutdown
    # (not a try refused while it restarted).
    said = r"twisted-chat: The server is shutting down\."
    assert _said([waiting], said, timeout=0), waiting.screen()
    for term in terms.values():
        if term is not waiting:
            term.enter("/quit")
            term.wait_row(r"^EXIT=0$", timeout=20)


def test_a_connection_lost_at_the_register_prompt_waits_for_enter_then_reconnects(
    chat_server: Callable[..., ServerProcess], pane: Callable[..., Pane]
) -> None:
    """The held end after a password prompt, when the client reconnects:
    its words say that Enter reconnects, and it does (they said "Press
    Enter to leave")."""
    server = chat_server()
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    term.enter("/register")
    term.wait_row(r"password")
    server.stop()
    assert _said([term], r"! The connection is over: nothing you type now is shown or "
                 r"sent\. Press Enter to reconnect, or Ctrl-C to leave\.")
    term.wait_row(r"^\(the connection is over; Enter reconnects\)")
    term.enter("")
    term.wait_row(r"^\* Reconnecting in \d+ s; /reconnect tries now, /quit leaves\.$")
    term.key("C-c")
    term.wait_row(r"^EXIT=1$")
    assert _said([term], r"twisted-chat: The server is shutting down\.", timeout=0)
