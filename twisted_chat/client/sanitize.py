"""
Make text from the network safe to put on a terminal.

Whatever the server lets through, nothing another person typed may drive the
user's terminal: control characters (C0, DEL, C1, and so ESC and every escape
sequence), line and paragraph separators, and invisible formatting characters
such as the bidirectional overrides that can make text read differently from
what it is, are shown as visible escapes like C{\\x1b} or C{\\u202e} instead.
Characters that look like nothing although they are letters or symbols (the
Hangul fillers U+3164, U+115F, U+1160 and U+FFA0, the blank Braille pattern
U+2800 and a few others, used to post "empty" messages) are escaped the same
way.  A character carries at most L{MAX_MARKS} combining marks: the rest of a
pile (the "zalgo" text that spills over the lines around it) is dropped.
A TAB becomes one space so that a line's width on screen is predictable.
"""

from __future__ import annotations

import unicodedata

# Format characters (category Cf) that are part of ordinary writing and have
# no power over the rest of the line: joiners used by emoji and some scripts.
_HARMLESS_FORMAT = frozenset("\u200c\u200d")

# Letters and symbols that draw nothing (Unicode's default-ignorable fillers
# and blank look-alikes). Variation selectors, also invisible, are kept: emoji
# and CJK ideographs need them, and they change only the glyph before them.
INVISIBLE_FILLERS = frozenset(
    "\u115f\u1160\u3164\uffa0"  # Hangul choseong, jungseong, compatibility, halfwidth fillers
    "\u2800"  # Braille pattern blank
    "\u034f"  # combining grapheme joiner
    "\u17b4\u17b5"  # Khmer inherent vowels
    "\u180b\u180c\u180d\u180f"  # Mongolian free variation selectors
    "\U0001d159"  # musical symbol null notehead
)

# Combining marks kept on one character: enough for Vietnamese, Hebrew points
# with cantillation and Indic or Thai vowel-and-tone stacks.
MAX_MARKS = 4

# Categories that never reach the terminal as they are: controls, format
# characters (bidi overrides, isolates, marks, zero-width space...), line and
# paragraph separators, surrogates, and unassigned code points.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})

# Code points Unicode keeps for emoji to come (Extended_Pictographic even
# while unassigned).  Python's tables lag behind (3.11 has Unicode 14): the
# emoji added since, which phones send every day, are "unassigned" here.  No
# control character will ever be given one of these, so they are shown as
# they are, and count as wide, as emoji do.
_EMOJI_RESERVE = ((0x1F000, 0x1FAFF), (0x1FC00, 0x1FFFD))


def _newer_emoji(ch: str) -> bool:
    code = ord(ch)
    return any(low <= code <= high for low, high in _EMOJI_RESERVE)


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _is_unsafe(ch: str) -> bool:
    if " " <= ch <= "~":  # fast path for printable ASCII
        return False
    if ch in _HARMLESS_FORMAT:
        return False
    category = unicodedata.category(ch)
    if category == "Cn" and _newer_emoji(ch):
        return False
    return ch in INVISIBLE_FILLERS or category in _ESCAPED_CATEGORIES


def clean(text: str) -> str:
    """
    Return C{text} with every character that could act on a terminal, or that
    draws nothing, replaced by a visible escape, and at most L{MAX_MARKS}
    zero-width characters after each character.  The result contains only
    printable characters and spaces; cleaning it again changes nothing.
    """
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    marks = 0  # zero-width characters since the last character with a width
    for ch in text:
        if ch == "\t":
            out.append(" ")
            marks = 0
        elif _is_unsafe(ch):
            out.append(_escape(ch))
            marks = 0
        elif cell_width(ch) == 0:
            marks += 1
            if marks <= MAX_MARKS:
                out.append(ch)
        else:
            out.append(ch)
            marks = 0
    return "".join(out)


def decode(data: bytes) -> str:
    """Decode bytes from the network; invalid UTF-8 becomes U+FFFD."""
    return data.decode("utf-8", errors="replace")


def cell_width(ch: str) -> int:
    """
    How many terminal columns one character of cleaned text takes: 2 for wide
    East Asian characters and most emoji, 0 for combining marks, else 1.
    """
    if " " <= ch <= "~":
        return 1
    if unicodedata.combining(ch) or ch in _HARMLESS_FORMAT:
        return 0
    if unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    if unicodedata.east_asian_width(ch) in ("W", "F"):
        return 2
    if unicodedata.category(ch) == "Cn" and _newer_emoji(ch):
        return 2  # (an emoji newer than Python's tables)
    return 1


def text_width(text: str) -> int:
    """The number of terminal columns C{text} (already cleaned) takes."""
    return sum(cell_width(ch) for ch in text)
