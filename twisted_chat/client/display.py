"""
What the client shows things on: L{Display}, which the terminal's line
editor (L{twisted_chat.client.terminal}) and a pipe's plain output
(L{twisted_chat.client.pipe}) both are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from twisted_chat.client.render import Line


class Display(Protocol):
    """Where the client shows things: a terminal or a pipe."""

    def show(self, line: Line) -> None:
        """Show one line (it is cleaned on output)."""

    def set_prompt(self, prompt: str) -> None:
        """Change the input prompt (terminals only; pipes ignore it)."""

    def ask_secret(self, prompt: str) -> None:
        """
        Read the next line without showing it or keeping it in the history,
        for L{twisted_chat.client.protocol.ChatClient.secret_line} (terminals only).
        """

    def end_secret(self) -> None:
        """Stop reading a secret line; the half-typed line comes back."""

    def drop_typing(self) -> bool:
        """
        Clear the line being typed (not yet entered; at a password prompt,
        the one it interrupted): it may be a password typed ahead of its
        prompt.  Whether there was any (terminals only).
        """

    def forget(self, lines: Sequence[str]) -> None:
        """
        Drop these typed lines from the input history (one of them may be a
        password typed ahead of its prompt; terminals only).
        """

    def set_aside(self) -> list[str]:
        """
        The conversation changed under the line being typed (and a paste
        held for Enter): take it off the input line, unsent, into the history
        Up recalls, so that Enter does not send it where it was not meant to
        go.  The lines set aside, in order (terminals only).
        """

    def bell(self) -> None:
        """Ring the terminal bell (terminals only, unless C{--no-bell})."""
