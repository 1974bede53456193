"""
A node's snapshots of its replica (C{chat:snapshot}), written at a
heartbeat every L{SNAPSHOT_INTERVAL} seconds, each with the history up to
its event first; and the stream's trimming behind them (to the snapshot
before the last one, so that a node loading the newer one still finds
the stream after it; an interval after the last with no new event, to
the last).  All of it runs while Redis is out of memory (L{Snapshots.write}).

Apart from the node's log (L{redislog}), which decides when (a replica
caught up with the stream) and on which connection.  docs/cluster.md,
"How it works".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import txredisapi  # type: ignore[import-untyped]

from twisted_chat.server.cluster.redishistory import snapshot_history_write
from twisted_chat.server.cluster.redisstream import SAVE_SNAPSHOT_SHA, SNAPSHOT, STREAM

if TYPE_CHECKING:
    from twisted_chat.server.cluster.pruning import Pruning
    from twisted_chat.server.cluster.replica import Replica

__all__ = ["SNAPSHOT_INTERVAL", "Snapshots"]

SNAPSHOT_INTERVAL = 10.0


class Snapshots:
    """
    The snapshots of C{replica}, and where the stream is trimmed to next;
    C{pruning} says which of its recent lines the history keeps.
    """

    def __init__(self, replica: Replica, pruning: Pruning) -> None:
        self.replica = replica
        self.pruning = pruning
        self.at = 0.0  # when the last one was written (or the interval restarted)
        self.written = ""  # the event the last one is as of
        self.trim_to: str | None = None  # the one before it

    def due(self, now: float) -> bool:
        """Whether the interval since the last one has passed."""
        return now - self.at >= SNAPSHOT_INTERVAL

    def restart(self, now: float) -> None:
        """After Redis lost events: snapshots and trims start afresh, the
        first a whole interval after C{now} (until then the snapshot Redis
        kept stays, for the nodes that see the same loss later)."""
        self.written = ""
        self.trim_to = None
        self.at = now

    async def write(self, cmd: Any, now: float) -> bool:
        """Write a snapshot as of the replica's last event (none if it has
        none, or has not moved since the last), after the history up to
        it, then trim the stream behind the one before.  False if Redis
        forgot the script (C{NOSCRIPT}): a new connection loads it.

        All three run while Redis is out of memory (under noeviction): the
        history write and the snapshot by scripts flagged allow-oom, and
        XTRIM, which Redis allows then; the stream, the one thing that
        grows with the users' traffic, is freed behind them (within two
        intervals of a burst's end).  Any other refusal (MISCONF, READONLY)
        is raised: nothing is trimmed."""
        replica = self.replica
        if replica.last_id == "0-0":
            return True
        if replica.last_id == self.written:
            if self.written and self.trim_to != self.written:
                # Nothing new since the last one, written an interval ago
                # or more: the stream is trimmed up to it, as it would be
                # behind a new one as of the same event (a node that loaded
                # the one before had an interval to read past it).  Without
                # this, the stream would keep the end of a burst for as long
                # as nothing is appended: under OOM (nothing can be), for good.
                await cmd.execute_command("XTRIM", STREAM, "MINID", "~", self.written)
                self.trim_to = self.written
            return True
        self.at = now
        rows = self.pruning.recent_rows(replica.recent, now)
        try:
            if rows:
                # The history first, up to the snapshot's event: the sender's
                # node writes each line, but a node loading this snapshot
                # reads the history up to it, and the sender's node may lag
                # (the same rows: writing one twice changes nothing).
                await cmd.execute_command(*snapshot_history_write(rows))
            await cmd.execute_command("EVALSHA", SAVE_SNAPSHOT_SHA, 1, SNAPSHOT,
                                      replica.snapshot(), replica.last_id)
        except txredisapi.ResponseError as e:
            if "NOSCRIPT" not in str(e):
                raise
            return False
        if self.trim_to is not None:
            await cmd.execute_command("XTRIM", STREAM, "MINID", "~", self.trim_to)
        self.trim_to = self.written or None
        self.written = replica.last_id
        return True
