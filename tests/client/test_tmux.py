"""
The client on a real terminal: tmux runs it in a 120x30 pane, keys are typed
with send-keys, and the screen is read with capture-pane.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK, LineClient, ServerProcess

from .clientproc import CLIENT, REPO, wait_until

pytestmark = pytest.mark.e2e

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
SGR = re.compile(r"\x1b\[[0-9;]*m")


class Pane:
    """One tmux session on a private tmux server (its own socket)."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"twisted-chat-test-{os.getpid()}-{time.monotonic_ns()}"
        self.env = dict(os.environ)
        self.env.setdefault("TERM", "xterm-256color")
        self.env.pop("NO_COLOR", None)
        self.env.pop("TMUX", None)
        self.env.update(env)
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        shell = f"cd {shlex.quote(str(REPO))} && {exports} {shlex.join(command)}; "
        shell += "echo EXIT=$?; sleep 600"
        self.tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "30", shell)

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=self.env,
            check=True,
        )
        return result.stdout

    def keys(self, text: str) -> None:
        self.tmux("send-keys", "-t", "chat", "-l", text)

    def key(self, *names: str) -> None:
        self.tmux("send-keys", "-t", "chat", *names)

    def screen(self, escapes: bool = False) -> list[str]:
        args = ["capture-pane", "-p", "-t", "chat"] + (["-e"] if escapes else [])
        return self.tmux(*args).rstrip("\n").split("\n")

    def cursor(self) -> tuple[int, int]:
        x, y = self.tmux("display-message", "-p", "-t", "chat", "#{cursor_x} #{cursor_y}").split()
        return int(x), int(y)

    def enter(self, text: str) -> None:
        """Type a line and press Enter."""
        self.keys(text)
        self.key("Enter")

    def wait_row(self, pattern: str, timeout: float = 10.0, after: int | None = None) -> int:
        """
        Wait until a row of the screen matches; returns its index.  With
        C{after}, only the row right after that one counts.
        """
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if after is None:
                row = _row(screen, pattern)
            elif after + 1 < len(screen) and re.search(pattern, screen[after + 1]):
                row = after + 1
            else:
                row = None
            if row is not None:
                return row
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no row matches {pattern!r}; the screen was:\n" + "\n".join(screen)
                )
            time.sleep(0.05)

    def wait_cursor(self, where: tuple[int, int], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while (now := self.cursor()) != where:
            if time.monotonic() > deadline:
                raise AssertionError(f"the cursor is at {now}, not {where}")
            time.sleep(0.05)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def _row(screen: list[str], pattern: str) -> int | None:
    for index, row in enumerate(screen):
        if re.search(pattern, row):
            return index
    return None


@pytest.fixture
def pane() -> Iterator[Callable[..., Pane]]:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    panes: list[Pane] = []

    def start(command: list[str], **env: str) -> Pane:
        p = Pane(command, env)
        panes.append(p)
        return p

    yield start
    for p in panes:
        p.kill()


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
    if no_color:
        assert not SGR.search(coloured.replace("\x1b[0m", "").replace("\x1b[39m", ""))
    else:
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
    term.enter("/quit bye now")
    assert re.fullmatch(rf"LEFT {TS} alice quit bye now", bob.expect("LEFT"))
    term.wait_row(r"^EXIT=0$")


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
    bob.send("DM alice psst")
    term.wait_row(r"\(private\) bob -> you: psst$")
    bob.send("PAIR alice")
    term.wait_row(r"bob invites you")
    bob.sync()
    wait_until(lambda: raw.exists() and raw.read_bytes().count(b"\a") >= 3, what="3 bells")
    time.sleep(0.3)  # a fourth bell would have arrived by now
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
    time.sleep(0.3)
    assert b"psst" in raw.read_bytes() and b"\a" not in raw.read_bytes()
    term.key("C-c")
    term.wait_row(r"^EXIT=0$")
