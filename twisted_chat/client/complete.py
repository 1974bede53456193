"""
Tab completion of the line being typed: nicknames and slash commands.

Pure functions over the line's text and the cursor, so that the line editor
(L{twisted_chat.client.terminal}) only replaces text and cycles.  The rules:

  - a word starting with C{/} at the start of the line is a command:
    C{/pa} becomes C{/pair } (commands take their arguments after a space);
  - a nickname at the start of the line is addressed: C{bo} becomes C{bob: };
  - C{@bo} at the start of the line, a private message, becomes C{@bob };
    elsewhere, a mention, C{@bob} (no space: the line goes on);
  - anywhere else a nickname is put in bare: C{/pair bo} becomes C{/pair bob}.

Matching ignores case; the choices (commands and nicknames) are sorted
without regard to case, as docs/client.md promises.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The commands offered, in alphabetical order (aliases are not offered).
COMMANDS = (
    "accept",
    "dm",
    "help",
    "nick",
    "pair",
    "passwd",
    "quit",
    "reconnect",
    "register",
    "reject",
    "unpair",
    "users",
)


@dataclass(frozen=True, slots=True)
class Completion:
    """Replace C{line[start:end]} with one of C{choices} (cycled by Tab)."""

    start: int
    end: int
    choices: tuple[str, ...]


def _sorted(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=lambda n: (n.lower(), n))


def complete(line: str, cursor: int, nicks: Iterable[str]) -> Completion | None:
    """
    What the word before C{cursor} can be completed to, or C{None}.

    @param nicks: the nicknames to offer (the user's own left out by the caller).
    """
    start = cursor
    while start > 0 and line[start - 1] != " ":
        start -= 1
    word = line[start:cursor]
    at_start = not line[:start].strip()
    if at_start and word.startswith("/") and not word.startswith("//"):
        prefix = word[1:].lower()
        choices = [f"/{c} " for c in COMMANDS if c.startswith(prefix)]
    elif word.startswith("@"):
        prefix = word[1:].lower()
        suffix = " " if at_start else ""
        choices = [f"@{n}{suffix}" for n in _sorted(nicks) if n.lower().startswith(prefix)]
    else:
        prefix = word.lower()
        suffix = ": " if at_start else ""
        choices = [n + suffix for n in _sorted(nicks) if n.lower().startswith(prefix)]
    if not choices:
        return None
    return Completion(start, cursor, tuple(choices))
