"""
C{--metrics} on a cluster node: the gauges of the cluster, named
C{chat_cluster_*}, beside the node's own C{chat_*} figures (its own
connections, users and messages: L{twisted_chat.server.metrics.counters}).

Like the single server's collector, this one runs on the scrape's thread and
only reads: integer and boolean attributes the reactor thread keeps, and the
C{len()} of its dicts, each atomic under the GIL.  Nothing is walked (a walk
over the replica's users could meet a dict changing size).

See docs/metrics.md, "On a cluster node".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from twisted_chat.server.cluster.node import ClusterState

__all__ = ["ClusterCollector"]


class ClusterCollector(Collector):
    """Reads a node's L{ClusterState} at each scrape; computes nothing between."""

    def __init__(self, state: ClusterState) -> None:
        self.state = state

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics())

    def _metrics(self) -> Iterator[Metric]:
        state = self.state
        online = len(state.hub.online)
        yield GaugeMetricFamily(
            "chat_cluster_users_online",
            "Users online in the whole cluster (every node's), as this node's replica has them.",
            value=online)
        yield GaugeMetricFamily(
            "chat_cluster_pairs", "Private conversations going on in the whole cluster.",
            value=max(online - len(state.hub.lobby), 0) // 2)
        yield GaugeMetricFamily(
            "chat_cluster_nodes_with_users",
            "Cluster nodes with users online, this one included if it has any "
            "(a node with none is not seen).",
            value=nodes_with_users(state))
        yield GaugeMetricFamily(
            "chat_cluster_nodes",
            "Cluster nodes alive (their lease in Redis renewed), with users or not, this "
            "one included, as of this node's last heartbeat.",
            value=state.live_nodes)
        yield GaugeMetricFamily(
            "chat_cluster_redis_up",
            "1 while this node is connected to Redis (registrations are taken), else 0.",
            value=1 if state.available else 0)
        yield CounterMetricFamily(
            "chat_cluster_events_read",
            "Events this node read from the cluster's channel or stream and applied (a "
            "resend is read and skipped).",
            value=state.events_read)
        yield CounterMetricFamily(
            "chat_cluster_event_reads",
            "Batches of events applied: what the channel brought at once, or a read of "
            "the stream (a catch-up).",
            value=state.batches_read)
        yield GaugeMetricFamily(
            "chat_cluster_waiting_bytes",
            "Bytes of this node's commands waiting for Redis (at most --redis-queue).",
            value=state.waiting_bytes)
        yield state.decision_seconds.family(
            "chat_cluster_decision_duration_seconds",
            "Time from a command of this node's user (NICK, MSG, DM, PAIR...) to its "
            "decision: its event appended to Redis and read back.")


def nodes_with_users(state: ClusterState) -> int:
    """The nodes with users online: the others' (from the index's count
    by node) and this one's.  (A registration of this node whose connection
    closed before its answer is held under this node's id as another's
    would be, for one event: counted once.)"""
    remote = state.own.remote
    mine = (state.own.counts()[0] > 0 or state.replica.afterloss.has_detached()) \
        and state.node not in remote
    return len(remote) + (1 if mine else 0)
