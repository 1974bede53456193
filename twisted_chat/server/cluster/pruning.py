"""
How a node prunes the cluster's one history: by the cluster's retention
(L{redisconfig}), agreed with C{chat:config} at each connection and
followed at each heartbeat (another node started with C{--set-retention}
may change it), in runs of L{PRUNE_HISTORY} that take a bounded share of
a heartbeat; and which of the replica's recent lines a snapshot writes
back (none the pruning would drop).  Read first, written only where a
field is missing: where Redis refuses that write (out of memory: a
database from before the retention was the cluster's), the node connects
with its own and records it at the first heartbeat Redis takes it.

Apart from the node's log (L{redislog}), which calls it on its command
connection, so that retention reads without the reconnection, the
reading and the leases around it.  docs/cluster.md, "What is guaranteed"
(One history).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted_chat.server import logs
from twisted_chat.server.cluster.redisconfig import (
    CLAIM_RETENTION,
    CONFIG,
    FIELDS,
    RECORDED_LATER,
    Misconfigured,
    Retention,
    Setting,
    Unclaimed,
)
from twisted_chat.server.cluster.redishistory import (
    HISTORY,
    HISTORY_OVERHEAD,
    HISTORY_SIZE,
    PRUNE_BATCH,
    PRUNE_BATCH_BYTES,
    PRUNE_HISTORY,
    PRUNE_SHARE,
    history_row,
    prune_again,
)

__all__ = ["Pruning"]

# The node's log's logger: these lines were RedisLog's before they moved
# here, and an operator's filter may match its namespace.
_log = logs.logger("twisted_chat.server.cluster.redislog.RedisLog")


class Pruning(Setting[Retention]):
    """
    The retention this node prunes the history by (L{retention}), agreed
    with the cluster's at each connection and followed at each heartbeat
    (L{Setting}), and the pruning.  C{reactor} for the time a run takes,
    C{heartbeat} for the share of it the pruning may take, C{where} the
    Redis named in errors.
    """

    def __init__(self, reactor: Any, heartbeat: float, retention: Retention,
                 set_retention: bool, where: str) -> None:
        """
        @param retention: this node's C{--retain-days}, C{--retain-messages}
            and C{--retain-bytes}.
        @param set_retention: C{--set-retention}: these become the
            cluster's; without it, a node whose values are not the
            cluster's does not start.
        """
        super().__init__()
        self.reactor = reactor
        # How long a heartbeat's prune may run (the interval is the lease's).
        self.budget = heartbeat * PRUNE_SHARE
        self.retention = retention
        self.set_retention = set_retention
        self.where = where
        self._pruning = False  # a heartbeat's prune runs

    async def agree(self, cmd: Any, started: bool) -> Unclaimed | None:
        """
        The cluster's retention (L{redisconfig}), before anything is pruned
        (L{Setting.agree}): recorded as this node's where there is none
        (the first node, or after Redis lost its data), and by a node
        started with C{--set-retention}, whose write refused fails the
        connection (retried).  Where one field is missing and Redis refuses
        to record this node's, its own is in force for that field.
        """
        if self.set_retention and not started:
            await self._replace(cmd)
            return None
        return await super().agree(cmd, started)

    async def _replace(self, cmd: Any) -> None:
        """C{--set-retention}, as the node starts: this node's retention
        becomes the cluster's (Redis out of memory refuses the write: the
        node retries until Redis has room)."""
        own = self.retention
        before = await self._claim(cmd, replace=True)
        if all(value is None for value in before):
            return
        try:
            change = own.differences(Retention.read(before, own), "now", "before")
        except Misconfigured:
            change = f"{own} now, in place of a malformed one"
        if change:
            _log.warn(
                "cluster: --set-retention: the cluster's history retention is now "
                "this node's: {change}; the running nodes follow at their next "
                "heartbeat. Give every node these values (and drop --set-retention) "
                "before it restarts", change=change)

    async def _claim(self, cmd: Any, replace: bool) -> Any:
        """This node's retention recorded as the cluster's (C{replace}), or
        where a field is missing (L{CLAIM_RETENTION}): the fields before."""
        return await cmd.execute_command("EVAL", CLAIM_RETENTION, 1, CONFIG,
                                         "1" if replace else "0", *self.retention.fields())

    async def _fetch(self, cmd: Any) -> Any:
        return await cmd.execute_command("HMGET", CONFIG, *FIELDS)

    def _lacks(self, reply: Any) -> bool:
        return None in reply

    async def _record(self, cmd: Any) -> Any:
        return await self._claim(cmd, replace=False)

    def _parse(self, reply: Any) -> Retention:
        return Retention.read(reply, self.retention)

    def _in_force(self) -> Retention:
        return self.retention

    def _unclaimed(self, reply: Any) -> str:
        """The fields C{reply} (an C{HMGET}'s) lacks, and this node's
        values in force for them."""
        missing = [name for name, value in zip(FIELDS, reply, strict=True) if value is None]
        own = ", ".join(f"--{name} {self.retention.shown(name)}" for name in missing)
        verb = "is" if len(missing) == 1 else "are"
        return (f"{CONFIG} has no {', '.join(missing)}: this node's {own} {verb} in force, "
                f"{RECORDED_LATER}")

    def _refused(self, stored: Retention) -> str:
        return (
            f"this node's history retention is not the cluster's ({CONFIG} in Redis "
            f"at {self.where}): {self.retention.differences(stored, 'here', 'in the cluster')}. "
            "One history has one retention (a node pruning by its own would delete "
            "the others' messages for good): this node does not start. Start it with "
            "the cluster's values; or, to change the cluster's retention, start it "
            "once with --set-retention (docs/cluster.md, \"Options\", --set-retention)")

    def _kept(self) -> str:
        return f"prunes by {self.retention}"

    def _follow(self, stored: Retention) -> None:
        """Prune by C{stored}, the cluster's retention, from now on (said
        once per change)."""
        _log.warn(
            "cluster: the cluster's history retention changed (a node was started with "
            "--set-retention): {change}; this node prunes by the cluster's from now on. "
            "Give it these values before it restarts, or it will not start",
            change=stored.differences(self.retention, "now", "before"))
        self.retention = stored

    def recent_rows(self, recent: Iterable[tuple[str, str, str]], now: float) -> list[Any]:
        """The replica's last lobby lines (C{recent}: L{Replica.recent}) as a
        history write's rows (L{history_write}), but those L{prune} drops (so
        none comes back)."""
        days, most, room = self.retention.days, self.retention.messages, self.retention.bytes
        lines = list(recent)
        if most:
            lines = lines[-most:]
        cutoff = None if days is None else int((now - days * 86400) * 1000)
        rows: list[Any] = []
        for eid, nick, text in reversed(lines):
            ms, member = history_row(eid, nick, text)
            if room is not None:
                # The newest that fit in --retain-bytes alone (the byte
                # bound keeps no older one: one written again would be
                # counted and removed again, for nothing).
                room -= len(member.encode()) + HISTORY_OVERHEAD
                if room < 0:
                    break
            if cutoff is None or ms >= cutoff:
                rows += [member, ms]
        rows.reverse()
        return rows

    async def prune(self, cmd: Any, now: float, start: bool = False) -> None:
        """
        Drop the lobby messages older than C{--retain-days} at C{now} (this
        machine's POSIX time), all but the newest C{--retain-messages}, and
        the oldest while the history holds more than C{--retain-bytes}
        (L{PRUNE_HISTORY}; the bytes are counted as they are written,
        L{HISTORY_ADD}).  Every node does it at start and at each heartbeat,
        whether or not anything was said meanwhile: a quiet cluster forgets
        on time too (where nothing is due, a few O(log n) look-ups).  Safe
        for nodes to run at once.  A run handles at most L{PRUNE_BATCH}
        messages; a call makes runs one after another while more is due
        (L{prune_again}): for at most L{PRUNE_SHARE} of a heartbeat, and
        at start (C{start}) until nothing is due, as it shows nothing
        pruned.  A heartbeat's call is skipped while the last one still runs.
        """
        days = self.retention.days
        if not (days is not None or self.retention.messages or self.retention.bytes):
            return
        if not start:
            if self._pruning:
                return
            self._pruning = True
        try:
            cutoff = "" if days is None else str(int((now - days * 86400) * 1000))
            began = self.reactor.seconds()
            budget = None if start else self.budget
            while True:
                # EVAL, not loaded: the restore prunes before the scripts
                # are loaded (a few kB a run; Redis keeps it compiled).
                _, _, dropping, counting = await cmd.execute_command(
                    "EVAL", PRUNE_HISTORY, 2, HISTORY, HISTORY_SIZE, cutoff,
                    self.retention.messages or 0, self.retention.bytes or 0, PRUNE_BATCH,
                    PRUNE_BATCH_BYTES, HISTORY_OVERHEAD)
                if not prune_again(bool(dropping), bool(counting),
                                   self.reactor.seconds() - began, budget):
                    return
        finally:
            if not start:
                self._pruning = False
