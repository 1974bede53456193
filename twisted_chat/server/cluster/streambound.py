"""
C{--stream-bytes}, the cluster's (L{redisconfig}'s C{chat:config}, field
C{stream-bytes}): every node's append script checks the one stream against
its node's bound, so a node with a larger one (or none) would let its
users fill the stream, and Redis, past the others', and one with a smaller
one would refuse its users what the others take.  As for the retention:
the first node records its own; a node started with another does not
start, naming both; a running node follows the recorded one (another may
be set with C{HSET chat:config stream-bytes N}) at its next heartbeat.
Read first, written only where missing: a node connects to a Redis out of
memory too.  Where it is missing and Redis refuses to write it (out of
memory: a database from before it was the cluster's), the node connects
with its own and records it at the first heartbeat Redis takes it.

Apart from the node's log (L{redislog}), which calls it on its command
connection.  docs/cluster.md, "Options" (C{--stream-bytes}).
"""

from __future__ import annotations

from typing import Any

from twisted_chat.server import logs
from twisted_chat.server.cluster.redisconfig import (
    CONFIG,
    RECORDED_LATER,
    Misconfigured,
    Setting,
)

__all__ = ["FIELD", "StreamBound"]

FIELD = "stream-bytes"

# The node's log's logger, as the retention's lines (cluster/pruning.py).
_log = logs.logger("twisted_chat.server.cluster.redislog.RedisLog")


def shown(value: int) -> str:
    """A bound as the command line gives it."""
    return f"{value} (no bound)" if value == 0 else str(value)


class StreamBound(Setting[int]):
    """The bound a node's commands' appends are checked against
    (L{bytes}): its own C{--stream-bytes} (L{own}), agreed with the
    cluster's at each connection and followed at each heartbeat
    (L{Setting}).  C{where}: the Redis named in errors."""

    def __init__(self, own: int, where: str) -> None:
        super().__init__()
        self.own = own
        self.bytes = own
        self.where = where

    async def _fetch(self, cmd: Any) -> Any:
        return await cmd.execute_command("HGET", CONFIG, FIELD)

    def _lacks(self, reply: Any) -> bool:
        return reply is None

    async def _record(self, cmd: Any) -> Any:
        """This node's bound (the one in force) recorded, or another's
        written just now: the value stored."""
        if await cmd.execute_command("HSETNX", CONFIG, FIELD, str(self.bytes)):
            return str(self.bytes)
        return await cmd.execute_command("HGET", CONFIG, FIELD)

    def _parse(self, reply: Any) -> int:
        if reply is None:  # Redis refused to record it (agree)
            return self.bytes
        text = str(reply)
        if text.isascii() and text.isdigit():
            return int(text)
        raise Misconfigured(
            f"the cluster's settings ({CONFIG}) hold {FIELD} {text!r}, not a number "
            f"from 0: set it right (HSET {CONFIG} {FIELD} N)")

    def _in_force(self) -> int:
        return self.bytes

    def _unclaimed(self, reply: Any) -> str:
        return (f"{CONFIG} has no {FIELD}: this node's --stream-bytes {shown(self.bytes)} "
                f"is in force, {RECORDED_LATER}")

    def _refused(self, stored: int) -> str:
        return (
            f"this node's --stream-bytes is not the cluster's ({CONFIG} in Redis at "
            f"{self.where}): --stream-bytes {shown(self.own)} here, {shown(stored)} in "
            "the cluster; every node's bound must be the same (one with a larger one "
            "lets its users fill the stream past the others'), so this node does not "
            f"start: start it with the cluster's value, or change the cluster's with "
            f"HSET {CONFIG} {FIELD} N (the running nodes follow at their next heartbeat)")

    def _kept(self) -> str:
        return f"keeps --stream-bytes {shown(self.bytes)}"

    def _follow(self, stored: int) -> None:
        _log.warn("cluster: the cluster's --stream-bytes changed ({FIELD} in {config}): "
                  "{now} now, {before} before; this node checks its commands against the "
                  "cluster's from now on. Give it this value before it restarts, or it will "
                  "not start", FIELD=FIELD, config=CONFIG, now=shown(stored),
                  before=shown(self.bytes))
        self.bytes = stored
