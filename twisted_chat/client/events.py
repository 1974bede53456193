"""
Split the lines a chat/1 server sends into verb, words and free text.

The grammar is the one in docs/protocol.md, kept in L{twisted_chat.wire}
(C{verb_and_rest}, C{SERVER_VERBS}, C{split_words}): single-word arguments
separated by one or more spaces, then, for verbs that have one, a free text
that starts at the first non-space character after the last word and runs to
the end of the line.
Nothing here is trusted to be printable: see L{twisted_chat.client.sanitize}.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted_chat.wire import SERVER_VERBS, split_words, verb_and_rest


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


def parse(raw: str) -> ServerLine | None:
    """
    Parse one line (terminator already removed).

    @return: C{None} for an empty line (only spaces and tabs).
    @raise Malformed: a known verb with too few words.
    """
    split = verb_and_rest(raw)
    if split is None:
        return None
    verb, rest = split
    verb = verb.upper() if verb.isascii() else verb
    grammar = SERVER_VERBS.get(verb)
    if grammar is None:
        return ServerLine(verb, (), rest, raw, known=False)
    words, text = split_words(grammar, rest)
    # Extra words are tolerated (a later protocol version may add some).
    del words[grammar.max_words :]
    if len(words) < grammar.min_words:
        raise Malformed(f"{verb} needs {grammar.min_words} words: {raw!r}")
    return ServerLine(verb, tuple(words), text, raw)
