"""
Cluster mode's C{ERROR busy} for a reader far behind, which only the
reader's own node gives (docs/cluster.md, "Options"): a paired partner's
C{MSG} is refused as a C{DM} is, when the partner is on the reader's node
(rev16-sec 4).
"""

from __future__ import annotations

from tests.test_cluster_unit import Cluster

BUSY = ("ERROR busy victim is not reading fast enough to take more private messages; "
        "try again later")


def test_a_partner_on_the_reader_s_node_is_refused_busy() -> None:
    sendq = 2 * 65536 + 8000  # half: 69,536; the paused socket counts 65,536
    cluster = Cluster(1, sendq=sendq)
    (node,) = cluster.nodes
    victim, partner = node.user("victim"), node.user("partner")
    partner.send("PAIR victim")
    cluster.pump()
    victim.send("ACCEPT partner")
    cluster.pump()
    cluster.clear_all()
    victim.transport.producer.pauseProducing()  # the kernel stopped taking its data
    for _ in range(100):  # 400 kB: three times --sendq
        partner.send("MSG " + "x" * 4000)
        cluster.pump()
    assert not victim.transport.disconnected
    refused = [line for line in partner.take() if line.startswith("ERROR")]
    assert len(refused) == 99 and set(refused) == {BUSY}, refused[:2]
