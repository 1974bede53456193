"""
Split the lines a chat/1 server sends into verb, words and free text.

The grammar is the one in docs/protocol.md: single-word arguments separated by one
or more spaces, then, for verbs that have one, a free text that starts at the
first non-space character after the last word and runs to the end of the line.
Nothing here is trusted to be printable: see L{twisted_chat.client.sanitize}.
"""

from __future__ import annotations

from dataclasses import dataclass

# verb -> (minimum words, maximum words, takes free text)
SERVER_VERBS: dict[str, tuple[int, int, bool]] = {
    "HELLO": (1, 1, True),
    "NICK": (0, 0, False),
    "RETRY": (1, 1, True),
    "READY": (1, 1, False),
    "PASS": (1, 1, False),
    "REGISTERED": (1, 1, False),
    "HISTORY": (2, 2, True),
    "JOINED": (2, 2, False),
    "MSG": (3, 3, True),
    "USER": (2, 3, False),
    "USERS": (1, 1, False),
    "PENDING": (1, 1, False),
    "INVITE": (1, 1, False),
    "PAIRED": (1, 1, False),
    "UNPAIRED": (2, 2, False),
    "DECLINED": (2, 2, False),
    "CANCELLED": (2, 2, False),
    "LEFT": (3, 3, True),
    "BYE": (1, 1, True),
    "PING": (0, 0, True),
    "PONG": (0, 0, True),
    "HELP": (0, 0, True),
    "ERROR": (1, 1, True),
}


@dataclass(frozen=True, slots=True)
class ServerLine:
    """
    One line from the server.

    @ivar verb: upper-cased; a verb this client does not know is kept with
        C{known=False} and its whole rest in C{text}.
    @ivar words: the single-word arguments.
    @ivar text: the free text, C{""} when absent.
    @ivar raw: the whole line as received (without its terminator).
    """

    verb: str
    words: tuple[str, ...]
    text: str
    raw: str
    known: bool = True

    def word(self, index: int, default: str = "") -> str:
        return self.words[index] if index < len(self.words) else default


class Malformed(ValueError):
    """A line for a known verb without the words that verb needs."""


def _take_word(rest: str) -> tuple[str, str]:
    word, _, remaining = rest.partition(" ")
    return word, remaining.lstrip(" ")


def parse(raw: str) -> ServerLine | None:
    """
    Parse one line (terminator already removed).

    @return: C{None} for an empty line (only spaces and tabs).
    @raise Malformed: a known verb with too few words.
    """
    if not raw.strip(" \t"):
        return None
    verb, rest = _take_word(raw.lstrip(" "))
    verb = verb.upper() if verb.isascii() else verb
    grammar = SERVER_VERBS.get(verb)
    if grammar is None:
        return ServerLine(verb, (), rest, raw, known=False)
    least, most, has_text = grammar
    words: list[str] = []
    if has_text:
        while len(words) < most and rest:
            word, rest = _take_word(rest)
            words.append(word)
        text = rest
    else:
        # Extra words are tolerated (a later protocol version may add some).
        words = [w for w in rest.split(" ") if w][:most]
        text = ""
    if len(words) < least:
        raise Malformed(f"{verb} needs {least} words: {raw!r}")
    return ServerLine(verb, tuple(words), text, raw)
