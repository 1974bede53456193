"""
A node id declared dead stays dead in every replica: an event of that id
that reaches the log after its C{dead} (a registration its node sent just
before it noticed a silent cut, a resend, a hello, anything) is skipped by
every replica alike, so nobody sees the nick come and go and nobody holds
it.  The set is in the snapshot, forgets an id L{DEAD_KEEP} after its death,
and starts empty in a new epoch.  Deterministic: the nodes of
tests/test_cluster_unit.py on one clock and an in-memory log.
"""

from __future__ import annotations

import json
from typing import Any

from tests.test_cluster_outage import AnsweringRedis, outage, redis_log
from tests.test_cluster_refused import _Conn, applied, connected, heartbeat
from tests.test_cluster_unit import Cluster, Node
from twisted_chat.server.cluster.redisstream import APPEND_SHA
from twisted_chat.server.cluster.replica import DEAD_KEEP, HELLO


def late(cluster: Cluster, event: dict[str, Any], node: str = "node0") -> None:
    """An event of C{node}'s that reaches the log only now."""
    cluster.log.add(json.dumps({"n": node, **event}))


def test_every_event_of_a_dead_id_is_skipped_by_every_replica() -> None:
    cluster = Cluster(3)
    n0, n1, n2 = cluster.nodes
    n0.user("ann")
    bob, carol = n1.user("bob"), n2.user("carol")
    n1.state.node_dead("node0")
    cluster.pump()
    assert [line.split()[2:] for line in bob.take()] == [["ann", "disconnected"]]
    carol.take()
    k = n1.state.replica.last_k["node0"]
    # node0's sends from before it learnt of its death: a registration, a
    # declaration that node2 is dead, its users' list after a new epoch.
    late(cluster, {"t": "reg", "k": k + 1, "nick": "dora", "a": "-"})
    late(cluster, {"t": "dead", "k": k + 2, "node": "node2"})
    late(cluster, {"t": "hello", "k": k + 3,
                   "users": [["1-0", "eve", "-", "", ""]]})
    cluster.pump()
    assert bob.take() == carol.take() == []  # no JOINED, no LEFT
    for node in (n1, n2):
        assert sorted(node.hub.online) == ["bob", "carol"]
    # Every replica, node0's own included (it goes on under a new id), agrees.
    snapshots = {node.state.replica.snapshot() for node in cluster.nodes}
    assert len(snapshots) == 1
    # The nick was never held: anyone may take it.
    dora = n2.connect()
    dora.take()
    dora.send("NICK dora")
    cluster.pump()
    assert dora.take()[0] == "READY dora"


def test_a_nick_sent_before_a_silent_cut_and_resent_after_the_death_is_never_held() -> None:
    """The case of docs/cluster.md: node0 writes a NICK to a connection that
    a silent cut has already killed; the others declare node0 dead; node0
    resends the NICK when it gets back, and only then reads its death."""
    cluster, n0, log = outage()
    n1 = cluster.nodes[1]
    bob = n1.user("bob")
    conn = n0.connect()
    conn.take()
    log.up = False  # cut; node0 has not noticed
    conn.send("NICK ann")
    (ticket,) = log.unacked
    ticket.sent = True  # written to the dead connection: it may be in Redis
    n1.state.node_dead("node0")  # its lease lapsed
    for node in cluster.nodes[1:]:  # node0 reads nothing while cut
        batch = cluster.log.entries[node.cursor:]
        node.cursor += len(batch)
        node.state.deliver(batch)
    log.back()  # resends the NICK (under node0), then reads the death and it
    cluster.pump()
    assert conn.take()[0].startswith("RETRY unavailable")
    assert bob.take() == []  # not JOINED then LEFT
    for node in cluster.nodes:
        assert "ann" not in node.hub.online
    assert [e["t"] for _, e in cluster.log.entries[-2:]] == ["dead", "reg"]
    conn.send("NICK ann")
    cluster.pump()
    assert conn.take()[0] == "READY ann"


def test_the_dead_ids_are_in_the_snapshot() -> None:
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    n0.user("ann")
    n1.user("bob")
    n1.state.node_dead("node0")
    cluster.pump()
    snapshot = n1.state.replica.snapshot()
    assert [node for node, _ in json.loads(snapshot)["dead"]] == ["node0"]
    restored = Node(cluster, "node9")
    restored.state.replica.restore(snapshot)
    restored.cursor = len(cluster.log.entries)
    cluster.nodes.append(restored)
    assert restored.state.replica.snapshot() == snapshot
    assert restored.state.replica.dead == n1.state.replica.dead
    # The restored replica skips a late event of the dead id as the others do.
    late(cluster, {"t": "reg", "k": 1000, "nick": "dora", "a": "-"})
    cluster.pump()
    assert "dora" not in restored.hub.online
    assert restored.state.replica.snapshot() == n1.state.replica.snapshot()


def test_a_snapshot_without_dead_ids_restores_with_none() -> None:
    """A snapshot written before the set existed."""
    cluster = Cluster(1)
    cluster.nodes[0].user("ann")
    data = json.loads(cluster.nodes[0].state.replica.snapshot())
    del data["dead"]
    restored = Node(cluster, "node9")
    restored.state.replica.restore(json.dumps(data))
    assert restored.state.replica.dead == {}
    assert "ann" in restored.hub.online


def test_a_dead_id_is_forgotten_dead_keep_after_its_death() -> None:
    """Ids are never reused (random, new at every start and death), so the
    set keeps only the last DEAD_KEEP of log time, and the sequence numbers
    of the ids it forgets go with them: it does not grow with the nodes that
    ever were."""
    cluster = Cluster(1)
    replica = cluster.nodes[0].state.replica
    late(cluster, {"t": "reg", "k": 1, "nick": "ann", "a": "-"}, "gone0")
    late(cluster, {"t": "hello", "k": 2, "users": []}, "gone0")
    late(cluster, {"t": "dead", "k": 1, "node": "gone0"}, "other")
    cluster.pump()
    assert list(replica.dead) == ["gone0"]
    assert {"gone0", HELLO + "gone0"} <= set(replica.last_k)
    cluster.clock.advance(DEAD_KEEP - 1)
    late(cluster, {"t": "dead", "k": 2, "node": "gone1"}, "other")
    cluster.pump()
    assert list(replica.dead) == ["gone0", "gone1"]
    cluster.clock.advance(2)
    late(cluster, {"t": "dead", "k": 3, "node": "gone2"}, "other")
    cluster.pump()
    assert list(replica.dead) == ["gone1", "gone2"]
    assert not {"gone0", HELLO + "gone0"} & set(replica.last_k)
    # (Only the forgotten id's; an event of it now would be applied.)
    assert "other" in replica.last_k


def test_a_new_epoch_starts_with_no_dead_ids() -> None:
    """Redis lost its data, node0's death with it: node0 never learnt of it
    and says hello under its id.  Every replica (a running one, which
    forgets the set at the new epoch, and one started after it, which reads
    the new stream from its start) takes its users back alike."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    n0.user("ann")
    n1.user("bob")
    uid = n0.state.replica.uids[n0.hub.online["ann"]]
    n1.state.node_dead("node0")  # node0 never reads it: the data is lost
    batch = cluster.log.entries[n1.cursor:]
    n1.cursor += len(batch)
    n1.state.deliver(batch)
    assert "ann" not in n1.hub.online and "node0" in n1.state.replica.dead
    n1.state.rebuild(None, [])  # Redis lost all: the replica starts from nothing
    assert n1.state.replica.dead == {} and n1.state.replica.last_id == "0-0"
    assert "node0" not in n1.state.replica.last_k  # nor its sequence numbers
    started = Node(cluster, "node9")
    hello = {"t": "hello", "n": "node0", "k": 100,
             "users": [[uid, "ann", "127.0.0.1", "", ""]]}
    for node in (n1, started):
        node.state.deliver([("%d-0" % (cluster.clock.seconds() * 1000 + 1), hello)])
        assert "ann" in node.hub.online


# -- through the node's RedisLog ---------------------------------------------------

APPENDING = ("EVALSHA", APPEND_SHA)  # an event's append


def test_a_node_going_on_under_a_new_id_judges_again_the_nodes_it_declared() -> None:
    """Node A declares X dead, but X had declared A dead first: A's dead(X),
    of a dead id, is skipped by every replica.  A goes on under a new id and
    declares X again at its next heartbeat (in a two-node cluster nobody
    else would: X's users would stay online, their nicks held, for good)."""
    log, state, redis = connected()
    applied(state, {"t": "reg", "n": "x", "k": 1, "nick": "xena"})
    log.leases.up_since = -1e9  # connected for longer than a lease

    (dead_x,) = heartbeat(log, redis)
    assert (dead_x["t"], dead_x["node"]) == ("dead", "x")
    old = state.node
    applied(state, {"t": "dead", "n": "x", "k": 2, "node": old})  # first in the log
    applied(state, dead_x)  # skipped: its sender is dead
    assert state.node != old and "xena" in state.hub.online
    (again,) = heartbeat(log, redis)
    assert (again["t"], again["node"], again["n"]) == ("dead", "x", state.node)
    applied(state, again)
    assert "xena" not in state.hub.online


def test_a_new_epoch_seen_on_reconnecting_empties_the_dead_ids() -> None:
    """RedisLog._restore on a Redis with a new epoch: the replica forgets the
    dead ids and their sequence numbers (a replica started afterwards reads
    the new stream from nothing), and the node's hello goes first."""
    log, state = redis_log()
    conns: list[AnsweringRedis] = []
    epoch = "e"

    async def new_connection(reply_timeout: float, subscriber: bool = False) -> AnsweringRedis:
        conns.append(AnsweringRedis())
        conns[-1].epoch = epoch
        return conns[-1]

    log._new_connection = new_connection  # type: ignore[method-assign]
    log.start()
    assert state.available
    state.register("ann", _Conn(), "-")
    (reg,) = [c for c in conns[0].commands if c[:2] == APPENDING]
    state.deliver([
        ("1000-0", json.loads(reg[-1])),
        ("1000-1", {"t": "reg", "n": "x", "k": 1, "nick": "xena"}),
        ("1000-2", {"t": "hello", "n": "x", "k": 2, "users": []}),
        ("1000-3", {"t": "dead", "n": "p", "k": 1, "node": "x"}),
    ])
    replica = state.replica
    assert list(replica.dead) == ["x"] and {"x", HELLO + "x"} <= set(replica.last_k)
    epoch = "f"  # Redis restarted without its data
    log.lost(log._generation)
    log.reactor.advance(1.0)  # the reconnection's backoff
    assert state.available and len(conns) == 4
    assert replica.dead == {} and replica.last_id == "0-0"
    assert not {"x", HELLO + "x"} & set(replica.last_k)
    hello = next(json.loads(c[-1]) for c in conns[2].commands if c[:2] == APPENDING)
    assert hello["t"] == "hello" and [u[1] for u in hello["users"]] == ["ann"]
