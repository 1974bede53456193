"""
The history writes Redis refused (C{MISCONF}, C{OOM}, C{READONLY}), kept
by the sender's node and written again until Redis takes them: the
message was shown to everyone, so it belongs in the history.  Bounded
(C{--redis-queue} bytes, counted apart from the commands waiting): past
the bound the oldest are dropped, and the log says so.

Apart from the node's log (L{redislog}): it hands the refused writes
here and sends what this queues again; nothing here knows the
connection.  docs/cluster.md, "What is guaranteed" (One history).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall

from twisted_chat.server import logs
from twisted_chat.server.cluster.redishistory import (
    HISTORY_BATCH,
    history_rows,
    history_size,
    history_write,
)
from twisted_chat.server.cluster.streamids import id_key

__all__ = ["KeptHistory", "lost_after"]

# The node's log's logger: these lines were RedisLog's before they moved
# here, and an operator's filter may match its namespace.
_log = logs.logger("twisted_chat.server.cluster.redislog.RedisLog")


def lost_after(end: str | None) -> Callable[[Any, Any], bool]:
    """Whether a history row (its score and member) is a line of an event
    Redis lost, after C{end} (C{None}: all of them).  A member names its
    event: the score is its millisecond, the member starts with its
    sequence number."""
    top = None if end is None else id_key(end)

    def lost(score: Any, member: Any) -> bool:
        return top is None or (int(score), int(str(member).partition(" ")[0])) > top

    return lost


class KeptHistory:
    """
    The refused history writes, member -> score, oldest first, and their
    bytes, written again every C{retry} seconds by C{queue} (which sends
    a command, as any other, and hands it back here if Redis refuses it
    again).  C{bound}: C{--redis-queue}, as the node has it now.
    """

    def __init__(self, reactor: Any, retry: float, queue: Callable[[tuple[Any, ...]], object],
                 bound: Callable[[], int]) -> None:
        self.reactor = reactor
        self.retry = retry
        self.queue = queue
        self.bound = bound
        self.kept: dict[str, int] = {}
        self.bytes = 0
        self.dropped = 0  # messages dropped at the bound since the last write taken
        self.call: IDelayedCall | None = None

    @property
    def pending(self) -> bool:
        """Whether writes Redis refused are kept, to be written again."""
        return bool(self.kept)

    def keep(self, command: tuple[Any, ...]) -> None:
        """
        Redis refused a history write (L{HISTORY_ADD}, C{command}): keep its
        messages, written again every C{retry} seconds until Redis takes
        them (the same members and scores: writing one twice changes
        nothing).  Past the bound, the oldest are dropped.
        """
        bound = self.bound()
        for score, member in history_rows(command):
            if member in self.kept:
                continue
            self.kept[member] = int(score)
            self.bytes += history_size(member)
        while self.bytes > bound and self.kept:
            oldest = next(iter(self.kept))
            del self.kept[oldest]
            self.bytes -= history_size(oldest)
            if not self.dropped:
                _log.error(
                    "cluster: Redis refuses the history's writes, and this node keeps at "
                    "most {n} bytes of them: the oldest are dropped from the history",
                    n=bound,
                )
            self.dropped += 1
        if self.kept and self.call is None:
            self.call = self.reactor.callLater(self.retry, self._write)

    def _write(self) -> None:
        """Write again what is kept, in commands of at most L{HISTORY_BATCH}
        messages; what Redis refuses again comes back to L{keep}."""
        self.call = None
        kept, self.kept = self.kept, {}
        self.bytes = 0
        rows = list(kept.items())
        for i in range(0, len(rows), HISTORY_BATCH):
            args: list[Any] = []
            for member, score in rows[i:i + HISTORY_BATCH]:
                args += [score, member]
            self.queue(history_write(args))

    def taken(self) -> None:
        """Redis took a history write: if messages were dropped at the
        bound and nothing is kept any more, say how many (once)."""
        if self.dropped and not self.kept and self.call is None:
            _log.warn("cluster: Redis takes the history's writes again; {n} lobby "
                      "messages were dropped from it", n=self.dropped)
            self.dropped = 0

    def drop_lost(self, lost: Callable[[Any, Any], bool]) -> int:
        """Drop the kept messages of events Redis lost (L{lost_after}), and
        the retry if nothing is left; how many were dropped."""
        dropped = 0
        for member, score in list(self.kept.items()):
            if lost(score, member):
                del self.kept[member]
                self.bytes -= history_size(member)
                dropped += 1
        if not self.kept:
            self.stop()
        return dropped

    def stop(self) -> None:
        """No more retries (the node stops, or nothing is kept)."""
        if self.call is not None:
            if self.call.active():
                self.call.cancel()
            self.call = None
