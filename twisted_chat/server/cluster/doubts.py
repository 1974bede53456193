"""
Appends of this node's that Redis refused when they were sent again: the
first copy, sent on a connection that went before Redis answered, may be
in the stream.  Each refusal waits until the replica has read up to where
the stream ended after it (L{Doubts.add}), so that a command is never
answered "not sent" and then take effect all the same.

Apart from the node's log (L{redislog}), which hands the refusals here
and tells it of each connection and each batch of events applied.
docs/cluster.md, "What is guaranteed".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted_chat.server import logs
from twisted_chat.server.cluster.redisstream import STREAM
from twisted_chat.server.cluster.streamids import id_key

if TYPE_CHECKING:
    from twisted_chat.server.cluster.node import ClusterState

__all__ = ["Doubts"]

# The node's log's logger: these lines were RedisLog's before they moved
# here, and an operator's filter may match its namespace.
_log = logs.logger("twisted_chat.server.cluster.redislog.RedisLog")


@dataclass(slots=True)
class _Doubt:
    """An append of this node's that Redis refused when it was sent again
    (C{text}, the event), whose first copy may be in the stream; C{end}: the
    stream's last id, read after the refusal (C{None} until known)."""

    text: str
    end: str | None = None


class Doubts:
    """
    The refused resends in doubt, oldest first.  C{state}: where a settled
    refusal goes (L{ClusterState.refused}) and the replica's position;
    C{generation}: the log's connection now (an answer on an older one is
    stale: the question is asked again on the new one).
    """

    def __init__(self, state: ClusterState, generation: Callable[[], int]) -> None:
        self.state = state
        self.generation = generation
        self.doubtful: list[_Doubt] = []
        # The connection on which the stream's end was asked (one question
        # at a time).
        self._end_asked: int | None = None

    @property
    def pending(self) -> bool:
        """Whether a refusal is in doubt (its first copy may be unread)."""
        return bool(self.doubtful)

    def add(self, event: str, cmd: Any) -> None:
        """
        Redis refused an append that had been sent before, on a connection
        that went before Redis answered: the first copy may be in the stream
        (Redis took it, its answer was lost), to be applied when the replica
        reads it.  So the refusal is not handed to the node at once (its
        command would be answered "not sent" and take effect all the same):
        the node asks where the stream ends now (one C{XREVRANGE}: a read,
        which Redis answers while it refuses writes; the first copy, if
        any, is at or before that end), and hands the refusal over
        (L{ClusterState.refused}) only once the replica has applied events up
        to there (L{settle}).  If the first copy was there, its command was
        decided by then, as any other, and the refusal finds nothing left to
        answer; if not, it is answered "not sent" then.  Meanwhile no kept
        C{hello} goes out (L{RedisLog.own_events_read}): behind that first
        copy, it would undo it.
        """
        self.doubtful.append(_Doubt(event))
        self.ask(cmd)

    def reconnected(self, cmd: Any) -> None:
        """On a new connection: ask again where the stream ends (what was
        read on the connection that went may be stale: Redis may have lost
        its last events since)."""
        for doubt in self.doubtful:
            doubt.end = None
        self._end_asked = None
        self.ask(cmd)

    def ask(self, cmd: Any) -> None:
        """Ask where the stream ends (on C{cmd}, the command connection, if
        any) for the doubts that do not know yet (one question per
        connection at a time: every refusal answered before its answer was
        for a command Redis ran before it)."""
        generation = self.generation()
        if (cmd is None or self._end_asked == generation
                or all(doubt.end is not None for doubt in self.doubtful)):
            return
        self._end_asked = generation
        d = cmd.execute_command("XREVRANGE", STREAM, "+", "-", "COUNT", 1)
        d.addCallbacks(self._end_read, self._end_failed, (generation,), None, (generation,))

    def _end_read(self, entries: Any, generation: int) -> None:
        if generation != self.generation():
            return  # asked again on the next connection
        self._end_asked = None
        end = str(entries[0][0]) if entries else "0-0"
        for doubt in self.doubtful:
            if doubt.end is None:
                doubt.end = end
        self.settle()

    def _end_failed(self, failure: Any, generation: int) -> None:
        if generation == self.generation():
            self._end_asked = None  # asked again at the next heartbeat
        _log.debug("the stream's end: {e}", e=failure.getErrorMessage())

    def settle(self) -> None:
        """Hand over the refusals in doubt whose stream end the replica has
        reached (after each batch of events applied)."""
        if not self.doubtful:
            return
        last = id_key(self.state.replica.last_id)
        settled = [doubt for doubt in self.doubtful
                   if doubt.end is not None and id_key(doubt.end) <= last]
        if not settled:
            return
        self.doubtful = [doubt for doubt in self.doubtful if doubt not in settled]
        for doubt in settled:
            self.state.refused(doubt.text)
