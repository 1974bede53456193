"""
A node's lease in Redis (C{chat:node:<id>}), renewed at each heartbeat,
and its judging of the others': a known node whose lease has lapsed is
declared dead, but only once this node has held its own lease long enough
that a live node's lapsed lease means it is gone (L{judging_wait}).  Also
the list of nodes (C{chat:nodes}) that C{--metrics} counts.

Apart from the node's log (L{redislog}), which calls it on its command
connection at each connection and heartbeat.  docs/cluster.md, "What is
guaranteed".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred

from twisted_chat.server import logs
from twisted_chat.server.cluster.redisstream import LEASE, NODES

if TYPE_CHECKING:
    from twisted_chat.server.cluster.node import ClusterState

__all__ = ["Leases", "judging_wait"]

# The node's log's logger: these lines were RedisLog's before they moved
# here, and an operator's filter may match its namespace.
_log = logs.logger("twisted_chat.server.cluster.redislog.RedisLog")


def judging_wait(lease: float, heartbeat: float, after_outage: bool,
                 longest_backoff: float) -> float:
    """
    How long a node holds its lease, once connected, before it judges the
    others' leases: a whole lease (after an outage every lease may have
    lapsed with its owner alive), and after an outage also the longest
    reconnection backoff and a heartbeat, in which a live node may still be
    getting back (a short C{--node-timeout} makes the lease shorter than
    that).  A node that reached Redis at once has no outage to wait out.
    """
    if not after_outage:
        return lease
    return max(lease, longest_backoff + heartbeat)


class Leases:
    """
    This node's lease and its view of the others'.  C{state}: the node
    (its id, its replica's known nodes, where a dead one is declared);
    C{longest_backoff}: the longest wait of the log's reconnection.
    """

    def __init__(self, state: ClusterState, reactor: Any, node_timeout: float,
                 longest_backoff: float) -> None:
        self.state = state
        self.reactor = reactor
        self.longest_backoff = longest_backoff
        # The lease outlives a missed heartbeat or two, and a dead node's
        # lease expires, and is noticed, within node_timeout.
        self.lease_ms = int(node_timeout * 1000 * 2 / 3)
        self.heartbeat = node_timeout / 6
        # How long this node holds its lease before it judges the others'
        # (see judging_wait), as of its last connection.
        self.judge_wait = self.lease_ms / 1000
        # Since when this node holds its lease (None: it may have lapsed).
        self.up_since: float | None = None
        # The nodes this node declared dead (not declared again).
        self.declared: set[str] = set()

    def take(self, cmd: Any, node: str | None = None) -> Deferred[Any]:
        """Set the lease of this node (or of C{node}, its new id)."""
        d: Deferred[Any] = cmd.execute_command(
            "SET", LEASE + (node or self.state.node), "1", "PX", self.lease_ms)
        return d

    async def take_refused(self, cmd: Any) -> str | None:
        """Set this node's lease on a new connection: C{None}, or Redis's
        refusal (C{OOM}, C{MISCONF}, C{READONLY}).  Refused, the node
        connects all the same (its commands are refused as Redis refuses
        them, and its heartbeats' snapshots and trims free a full Redis);
        the lease is taken at the first heartbeat Redis takes it
        (L{renew}), and the others are judged a whole lease after that."""
        try:
            await self.take(cmd)
        except txredisapi.ResponseError as e:
            return str(e)
        return None

    async def release(self, cmd: Any) -> None:
        """Drop this node's lease (it stops)."""
        await cmd.execute_command("DEL", LEASE + self.state.node)

    def connected(self, after_outage: bool, held: bool = True) -> None:
        """A connection is up, the lease taken on it (not C{held}: Redis
        refused it, L{take_refused}): the others are judged after
        L{judging_wait} of holding it."""
        self.up_since = self.reactor.seconds() if held else None
        self.judge_wait = judging_wait(self.lease_ms / 1000, self.heartbeat, after_outage,
                                       self.longest_backoff)

    def down(self) -> None:
        """Redis is out of reach: this lease may lapse."""
        self.up_since = None

    def judge_again(self) -> None:
        """The nodes this one declared dead are judged again (their C{dead}
        may be lost, or skipped: this node went on under a new id)."""
        self.declared.clear()

    async def renew(self, cmd: Any) -> None:
        """The heartbeat's renewal.  Redis refusing writes (C{MISCONF},
        C{OOM}, C{READONLY}) renews nobody's lease, so every one may lapse
        with its owner alive: as after an outage, the others are judged
        only once this node has held its lease for a whole lease time
        again."""
        try:
            await self.take(cmd)
        except txredisapi.ResponseError:
            self.up_since = None
            raise
        if self.up_since is None:
            self.up_since = self.reactor.seconds()

    async def judge(self, cmd: Any, now: float) -> None:
        """
        The others' leases: the nodes listed in C{chat:nodes} (every node
        adds itself at each heartbeat) and those the replica knows
        (L{Replica.known_nodes}: with users, or with events applied; and
        the nodes of users this node's users were shown online before
        Redis lost their registrations: L{AfterLoss.unseen}).  Counts the
        live ones (C{--metrics}: L{ClusterState.live_nodes}), takes the
        lapsed ones out of the list (a node cut off adds itself again when
        it is back), and declares dead a known node whose lease has lapsed
        (one without users too: its entry in the replicas goes with its
        id, a day later).
        """
        state = self.state
        me = state.node
        await cmd.execute_command("SADD", NODES, me)
        listed = {str(node) for node in await cmd.execute_command("SMEMBERS", NODES)}
        # (And the nodes of users shown online here before Redis lost their
        # registrations: their node, if dead, never says hello.)
        known = (state.replica.known_nodes() | state.replica.afterloss.unseen_nodes()) - {me}
        others = sorted((listed | known) - {me})
        leases = await cmd.execute_command("MGET", *[LEASE + n for n in others]) if others else []
        alive = {node for node, lease in zip(others, leases, strict=True) if lease is not None}
        # A renamed node's former id keeps its lease a while: it was declared dead.
        state.live_nodes = 1 + len(alive - state.replica.dead.keys())
        lapsed = sorted(listed - alive - {me})
        if lapsed:
            await cmd.execute_command("SREM", NODES, *lapsed)
        # Judge the others only after holding the connection for judge_wait:
        # after an outage every lease may have lapsed, its owner alive.
        if self.up_since is None or now - self.up_since < self.judge_wait:
            return
        self.declared &= known
        for node in sorted(known - alive - self.declared):
            self.declared.add(node)
            _log.warn("cluster: node {node} missed its lease; it is dead", node=node)
            state.node_dead(node)
