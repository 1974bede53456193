"""
What the lobby's replays may repeat, and the joins and leaves held while paired
(docs/client.md, "When the connection ends" and "Private conversations").

Both as the web page does them (twisted_chat/web/static/app.js,
C{lobbyMessage}, C{lobbyNotice}, C{showHeldNotices}), in bounded memory:

  - L{ShownLobby}: the lobby messages shown, so that the history a
    reconnection's C{READY} block sends does not show them twice.  A message
    is its time, sender and text; the same three twice are two messages, and
    each counts.  Kept for the last L{REMEMBERED} of them (as digests); a
    replayed line no newer than the newest one forgotten was shown.
  - L{HeldNotices}: the lobby's C{JOINED} and C{LEFT} lines received while
    paired.  The lobby's messages of that time come after C{UNPAIRED}
    (docs/protocol.md, "Coming back to the lobby"); the notices are shown among
    them in time order, not before them.  Each is cut to L{HELD_TEXT}
    characters: a server's line may be a megabyte long.

No I/O.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable

from twisted_chat.client.render import Line, Span, notice
from twisted_chat.wire import parse_ts

# The web page's MAX_ROWS.
REMEMBERED = 2000

# Characters kept of one held join or leave: more than a server's longest
# line by default (4096 bytes), so that only a hostile server's are cut, and
# REMEMBERED of them stay a few megabytes.
HELD_TEXT = 4096


def when(ts: str) -> float | None:
    """A server timestamp in seconds, C{None} when it cannot be read."""
    try:
        return parse_ts(ts)
    except (ValueError, OverflowError):
        return None


def _key(ts: str, sender: str, text: str) -> bytes:
    # A digest: the memory stays small however long the lines are.
    raw = "\n".join((ts, sender, text)).encode("utf-8", "backslashreplace")
    return hashlib.blake2b(raw, digest_size=16).digest()


class Repeats:
    """The lines a new connection's history may repeat (one use each)."""

    def __init__(self, counts: dict[bytes, int], floor: float) -> None:
        self._counts = counts
        self._floor = floor

    def repeats(self, ts: str, sender: str, text: str) -> bool:
        """Whether this replayed line was shown already (consumes one)."""
        seconds = when(ts)
        if seconds is not None and seconds <= self._floor:
            return True  # older than the oldest message remembered
        key = _key(ts, sender, text)
        left = self._counts.get(key, 0)
        if left <= 0:
            return False
        self._counts[key] = left - 1
        return True


class ShownLobby:
    """
    The last C{limit} lobby messages shown, kept across connections.

    @param limit: how many are remembered.
    """

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._limit = limit
        self._counts: dict[bytes, int] = {}
        self._order: deque[tuple[bytes, float | None]] = deque()
        self._floor = -math.inf  # the newest time forgotten

    def __len__(self) -> int:
        return len(self._order)

    def shown(self, ts: str, sender: str, text: str) -> None:
        """A lobby message was shown."""
        key = _key(ts, sender, text)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._order.append((key, when(ts)))
        while len(self._order) > self._limit:
            old, seconds = self._order.popleft()
            count = self._counts[old] - 1
            if count > 0:
                self._counts[old] = count
            else:
                del self._counts[old]
            if seconds is not None:
                self._floor = max(self._floor, seconds)

    def repeats(self) -> Repeats:
        """For a new connection's history: what was shown before it."""
        return Repeats(dict(self._counts), self._floor)


class HeldNotices:
    """
    Joins and leaves in the lobby held while paired, oldest first.

    @param limit: how many are held (the oldest go first, and how many went
        is said after the last one shown: L{not_kept}).
    """

    def __init__(self, limit: int = REMEMBERED) -> None:
        self._held: deque[tuple[float | None, Line]] = deque(maxlen=limit)
        self._dropped = 0  # the oldest, gone for newer ones

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, ts: str, line: Line) -> None:
        if len(self._held) == self._held.maxlen:
            self._dropped += 1
        self._held.append((when(ts), shortened(line, HELD_TEXT)))

    def release(self, show: Callable[[Line], object], until: str | None = None) -> None:
        """
        Show those up to C{until} (a replayed line's time), in order; all of
        them without it.  One whose time cannot be read waits for the end.
        """
        limit = when(until) if until is not None else None
        if until is not None and limit is None:
            return
        while self._held:
            seconds, line = self._held[0]
            if limit is not None and (seconds is None or seconds > limit):
                return
            self._held.popleft()
            show(line)
        if self._dropped:
            # After the last one rather than before the first: the web page
            # keeps its last 2,000 rows, and a line before 2,000 would go.
            show(notice(not_kept(self._dropped, self._held.maxlen or 0)))
            self._dropped = 0


def shortened(line: Line, most: int) -> Line:
    """C{line} with at most C{most} characters of text, ending with C{…} if cut."""
    spans: list[Span] = []
    for span in line:
        if len(span.text) > most:
            spans.append(Span(span.text[:most] + "…", span.style))
            break
        spans.append(span)
        most -= len(span.text)
    return tuple(spans)


def not_kept(count: int, limit: int) -> str:
    """The line for C{count} joins and leaves held past C{limit}, not shown
    (the web page says the same: app.js, C{showHeldNotices})."""
    what = "join or leave in the lobby before these was" if count == 1 else (
        "joins and leaves in the lobby before these were"
    )
    return f"{count:,} {what} not kept: at most {limit:,} are held during a private conversation."
