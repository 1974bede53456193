"""
What a typed line takes on the input row: each character's width in
columns, the prompt cut to leave room, and the characters as the eye sees
them (grapheme clusters), which the cursor steps over whole.  Pure
functions, for L{twisted_chat.client.terminal}.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from twisted_chat.client.sanitize import cell_width, clean, text_width

# Columns the input row keeps for the text typed, however long the prompt:
# a longer prompt is cut at its start ("…bob> ") to leave them.
MIN_ROOM = 8


def fit_prompt(prompt: str, width: int) -> str:
    """
    C{prompt} (cleaned), cut at its start if need be so that it leaves
    L{MIN_ROOM} columns, and one for the cursor, on a row C{width} wide: the
    row must never wrap, or each redraw leaves a copy of it on the screen.
    """
    fits = width - 1 - MIN_ROOM
    # Only the end of a prompt can be shown: a hostile server's megabyte-long
    # partner nick must not be cleaned and measured on every key.
    look = 4 * max(width, 1) + 4
    cut = len(prompt) > look
    shown = clean(prompt[-look:])
    if not cut and text_width(shown) <= fits:
        return shown
    kept: list[str] = []
    used = 1  # the "…"
    for ch in reversed(shown):
        w = cell(ch)[1]
        if used + w > fits:
            break
        kept.append(ch)
        used += w
    return "…" + "".join(reversed(kept)) if fits >= 1 else ""


@lru_cache(maxsize=4096)
def cell(ch: str) -> tuple[str, int]:
    """How one typed character is shown, and its width in columns."""
    shown = clean(ch)
    return shown, text_width(shown)


# -- what the cursor steps over: a character as the eye sees it -------------------
#
# Left, Right, Backspace and Delete step over a whole grapheme cluster, so that
# an accent, an emoji's skin tone or variation selector, or one person of a
# family emoji (joined with ZWJ) is never split from the rest.  A few rules of
# Unicode's (UAX #29) are enough here: marks and joiners extend the character
# before them, a character after a ZWJ joins it, and regional indicators (the
# letters of a flag, never joined) go in pairs.

ZWJ = "\u200d"


def _extends(ch: str) -> bool:
    """Whether C{ch} belongs to the character before it."""
    code = ord(ch)
    return (
        cell_width(ch) == 0  # combining marks, variation selectors, ZWJ, ZWNJ
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or 0xE0020 <= code <= 0xE007F  # tags (subdivision flags)
    )


def _regional(ch: str) -> bool:
    return "\U0001f1e6" <= ch <= "\U0001f1ff"


def _attached(chars: Sequence[str], index: int) -> bool:
    """Whether C{chars[index]} belongs to the character before it."""
    ch = chars[index]
    return _extends(ch) or (chars[index - 1] == ZWJ and not _regional(ch))


def cluster_end(chars: Sequence[str], index: int) -> int:
    """Where the character as seen that starts at C{index} ends."""
    end = index + 1
    if _regional(chars[index]) and end < len(chars) and _regional(chars[end]):
        end += 1  # a flag
    while end < len(chars) and _attached(chars, end):
        end += 1
    return end


def cluster_start(chars: Sequence[str], index: int) -> int:
    """Where the character as seen that ends at C{index} starts."""
    start = index - 1
    while start > 0 and _attached(chars, start):
        start -= 1
    if start > 0 and _regional(chars[start]):
        run = start
        while run > 0 and _regional(chars[run - 1]):
            run -= 1
        if (start - run) % 2 == 1:
            start -= 1  # the second letter of a flag
    return max(start, 0)
