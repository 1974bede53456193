"""
A real terminal for the client's tests: tmux runs it in a 120x30 pane, keys
are typed with send-keys, and the screen is read with capture-pane.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from .clientproc import REPO


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

    def command_pid(self) -> int:
        """The pid of the command the pane runs (its shell's child), while it runs."""
        shell = int(self.tmux("display-message", "-p", "-t", "chat", "#{pane_pid}"))
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rpartition(")")[2].split()[1]) == shell:
                return int(entry.name)
        raise AssertionError(f"the pane's shell ({shell}) runs no command")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def _row(screen: list[str], pattern: str) -> int | None:
    for index, row in enumerate(screen):
        if re.search(pattern, row):
            return index
    return None
