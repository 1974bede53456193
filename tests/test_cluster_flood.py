"""
Flood control in a cluster (docs/cluster.md, "Options", the item "Flood
control is the node's that holds the connection"): a connection's lines are
judged only by the node that holds it, and the flood penalty of an address
is each node's own.  Deterministic, on tests/test_cluster_unit.py's nodes
(task.Clock, StringTransport).
"""

from __future__ import annotations

from tests.test_cluster_unit import Cluster, Node

BURST = 5


def _flood(cluster: Cluster, node: Node, nick: str, lines: int) -> list[str]:
    """C{nick} on C{node} sends C{lines} DMs to bob at once (no time
    passes; each waits for the one before it to be decided): its flood
    ERRORs and its BYE."""
    conn = node.user(nick)
    conn.send(*[f"DM bob x{i}" for i in range(lines)])
    cluster.pump()
    return [line for line in conn.take() if line.startswith(("ERROR flood", "BYE"))]


def test_a_flooder_moving_to_another_node_starts_from_that_nodes_penalty() -> None:
    """--flood-burst 5: a flood cuts a connection once its dropped lines
    pass 5.  Cut on node0 and back there at once, the address's penalty
    cuts it at its first dropped line (no ERROR first); on node1, which
    never judged its lines (node0's user's DMs reach bob, on node1, through
    the log, not through node1's flood control), it starts afresh: ERROR
    flood, and the cut only once 6 more lines are dropped.  Lines handled:
    each connection's burst, on one server too."""
    cluster = Cluster(2, flood_rate=1.0, flood_burst=BURST)
    n0, n1 = cluster.nodes
    bob = n1.user("bob")
    many = 3 * BURST
    first = _flood(cluster, n0, "ann", many)
    assert first[0].startswith("ERROR flood") and first[-1].startswith("BYE flood"), first
    assert n1.factory.stats.dropped_lines["flood_rate"] == 0  # node1 judged none of them
    handled = len([line for line in bob.take() if line.startswith("MSG")])
    assert 0 < handled < BURST
    again = _flood(cluster, n0, "ann2", many)
    assert len(again) == 1 and again[0].startswith("BYE flood"), again
    elsewhere = _flood(cluster, n1, "ann3", many)
    assert elsewhere[0].startswith("ERROR flood") and elsewhere[-1].startswith("BYE flood")
    back = _flood(cluster, n1, "ann4", many)
    assert len(back) == 1 and back[0].startswith("BYE flood"), back
    # Dropped lines before each cut: 6 at a node's first, 1 at a return.
    assert [node.factory.stats.dropped_lines["flood_rate"] for node in (n0, n1)] == [
        BURST + 1 + 1, BURST + 1 + 1]
