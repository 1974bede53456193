"""
The lobby history a newcomer is shown.

Replay on READY always comes from memory: a ring of the last N entries.  A
durable store, when configured, receives every entry too, and is read once at
start-up to fill the ring, so the reactor never waits on the disk.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import NamedTuple, Protocol, cast

from twisted.internet.defer import Deferred, succeed


class Entry(NamedTuple):
    """One accepted lobby message: when (POSIX seconds), who, what.  A
    named tuple, not a frozen dataclass: one is made for every lobby
    message, and a frozen dataclass's __init__ sets each field through
    object.__setattr__."""

    ts: float
    nick: str
    text: str


# Entry((ts, nick, text)) made in C: the named tuple's own __new__ is a
# Python function, a frame more on every lobby message.
make_entry = cast(Callable[[tuple[float, str, str]], Entry], partial(tuple.__new__, Entry))


class MessageStore(Protocol):
    """Where lobby messages are kept durably (see L{twisted_chat.server.store})."""

    def append(self, entry: Entry) -> None:
        """Queue C{entry} for writing; must not block."""

    def close(self) -> Deferred[None]:
        """Write everything queued, then release the store."""


def newest_within(lines: list[bytes], limit: int) -> bytes:
    """
    The newest of C{lines} (oldest first) whose total size is at most
    C{limit} bytes, joined, oldest first: what a newcomer's replay may cost.
    Whole lines only; if even the newest does not fit, nothing.
    """
    total = 0
    start = len(lines)
    while start > 0 and total + len(lines[start - 1]) <= limit:
        start -= 1
        total += len(lines[start])
    return b"".join(lines[start:])


def clip_text(text: str, limit: int) -> str:
    """C{text} cut to at most C{limit} UTF-8 bytes, at a character boundary."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


# A HISTORY line less its nick and text: "HISTORY ", the timestamp (always
# 24 characters: twisted_chat.wire.format_ts), the space before the nick and
# the CRLF.
_LINE_FRAME = len("HISTORY ") + len("2026-11-22T10:15:02.481Z") + 1 + 2


def line_size(entry: Entry) -> int:
    """The bytes of the C{HISTORY} line that shows C{entry}
    (twisted_chat.server.lines.history_lines), without making it."""
    size = _LINE_FRAME + len(entry.nick.encode("utf-8"))
    text = entry.text
    if text:
        size += 1 + len(text.encode("utf-8"))
    return size


class History:
    def __init__(
        self, size: int, store: MessageStore | None = None, initial: Iterable[Entry] = ()
    ) -> None:
        self._ring: deque[Entry] = deque(initial, maxlen=size)
        self._store = store
        # How many entries the ring has ever taken: the position of the next.
        self._position = len(self._ring)

    def attach(self, store: MessageStore, entries: Iterable[Entry]) -> None:
        """
        Keep history in C{store} from now on; C{entries} (the store's last
        N, oldest first) replace what the ring held.
        """
        self._ring.clear()
        self._ring.extend(entries)
        self._position += len(self._ring)
        self._store = store

    @property
    def size(self) -> int:
        return self._ring.maxlen or 0

    @property
    def position(self) -> int:
        """Where the next entry will be: remember it to ask L{since} later."""
        return self._position

    @property
    def bytes(self) -> int:
        """
        The bytes of the C{HISTORY} lines the ring's entries make (what a
        newcomer would be sent with no --history-bytes): C{chat_history_bytes}.
        Worked out each time it is asked, by a scrape's thread (scrapes are
        rendered a few times a second at most: METRICS_RENDERS), not kept
        up on each lobby message.
        """
        # recent() copies the ring in one go (C code, under the GIL): the
        # reactor's thread cannot change it in the middle.
        return sum(map(line_size, self.recent()))

    def record(self, entry: Entry) -> None:
        self._ring.append(entry)
        self._position += 1
        if self._store is not None:
            self._store.append(entry)

    def recent(self) -> list[Entry]:
        """The last N entries, oldest first."""
        return list(self._ring)

    def since(self, position: int) -> list[Entry]:
        """
        The entries recorded from C{position} (an earlier L{position}) on,
        oldest first: at most the last N, those the ring still holds.
        """
        missed = self._position - position
        if missed <= 0:
            return []
        ring = self._ring
        if missed >= len(ring):
            return list(ring)
        return list(itertools.islice(ring, len(ring) - missed, None))

    def close(self) -> Deferred[None]:
        if self._store is None:
            return succeed(None)
        return self._store.close()
