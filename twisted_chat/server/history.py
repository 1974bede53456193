"""
The lobby history a newcomer is shown.

Replay on READY always comes from memory: a ring of the last N entries.  A
durable store, when configured, receives every entry too, and is read once at
start-up to fill the ring, so the reactor never waits on the disk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred, succeed


@dataclass(frozen=True, slots=True)
class Entry:
    """One accepted lobby message: when (POSIX seconds), who, what."""

    ts: float
    nick: str
    text: str


class MessageStore(Protocol):
    """Where lobby messages are kept durably (see L{twisted_chat.server.store})."""

    def append(self, entry: Entry) -> None:
        """Queue C{entry} for writing; must not block."""

    def close(self) -> Deferred[None]:
        """Write everything queued, then release the store."""


class History:
    def __init__(
        self, size: int, store: MessageStore | None = None, initial: Iterable[Entry] = ()
    ) -> None:
        self._ring: deque[Entry] = deque(initial, maxlen=size)
        self._store = store

    def attach(self, store: MessageStore, entries: Iterable[Entry]) -> None:
        """
        Keep history in C{store} from now on; C{entries} (the store's last
        N, oldest first) replace what the ring held.
        """
        self._ring.clear()
        self._ring.extend(entries)
        self._store = store

    @property
    def size(self) -> int:
        return self._ring.maxlen or 0

    def record(self, entry: Entry) -> None:
        self._ring.append(entry)
        if self._store is not None:
            self._store.append(entry)

    def recent(self) -> list[Entry]:
        """The last N entries, oldest first."""
        return list(self._ring)

    def close(self) -> Deferred[None]:
        if self._store is None:
            return succeed(None)
        return self._store.close()
