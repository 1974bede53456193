"""
End to end, Redis reaching its C{maxmemory} (under C{noeviction}, as
docs/cluster.md asks): a burst of direct messages on one node fills the
event stream until Redis refuses every write, and a lobby line on the other
node is answered C{ERROR unavailable}; once the burst stops, the cluster
recovers by itself (the heartbeats' snapshots and trims run while Redis is
out of memory, and free the stream): a lobby line is echoed again within
30 s, and the stream's oldest entry then is gone.  Two real C{twistd -n chat --redis} nodes
and a private redis-server; every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.redisproc import REDIS_SERVER
from tests.serverproc import LineClient
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

cluster = cluster_fixture

FLOODERS = 4
TEXT = "y" * 3900
HEADROOM = 2_500_000  # maxmemory: this above what Redis uses at the start
FILL_WITHIN = 60.0  # the burst reaches maxmemory well within this
RECOVER_WITHIN = 30.0


def used_memory(c: Cluster, field: str = "used_memory:") -> int:
    info = c.redis.call("INFO", "memory")
    (line,) = [x for x in info.splitlines() if x.startswith(field)]
    return int(line.split(":")[1])


def first_event(c: Cluster) -> tuple[int, int]:
    """The id of the stream's oldest entry."""
    ((eid, _),) = c.redis.call("XRANGE", "chat:events", "-", "+", "COUNT", 1)
    ms, seq = str(eid).split("-")
    return int(ms), int(seq)


def drain(client: LineClient) -> None:
    """Read and drop what the server sent a flooder (its DMs), not waiting."""
    client.sock.setblocking(False)
    try:
        while client.sock.recv(1 << 20):
            pass
    except (BlockingIOError, InterruptedError):
        pass
    finally:
        client.sock.settimeout(client.timeout)


def burst(flooders: list[LineClient]) -> None:
    """A tenth of a second of the burst: two DMs of 4 kB from each flooder
    to the next.  At most ~60 DMs/s in all (with the reads between): what
    fills Redis is the stream, not its output buffers to the nodes (those
    drain by themselves once the burst ends)."""
    for _ in range(2):
        for i, flooder in enumerate(flooders):
            flooder.send(f"DM flood{(i + 1) % len(flooders)} {TEXT}")
        time.sleep(0.05)


def said(client: LineClient, text: str, timeout: float) -> str:
    """Send a lobby line: its echo, or the ERROR that answered it."""
    client.send(f"MSG {text}")
    return client.expect(lambda line: line.startswith("ERROR")
                         or (line.startswith("MSG ") and line.endswith(f" {text}")),
                         timeout=timeout)


def test_the_cluster_recovers_by_itself_once_a_burst_that_filled_redis_ends(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(2, "--flood-rate", "0")
    n0, n1 = c.nodes
    bystander = c.user(n1, "bystander")
    assert said(bystander, "before", 5).startswith("MSG ")
    flooders = [c.user(n0, f"flood{i}") for i in range(FLOODERS)]
    limit = used_memory(c) + HEADROOM
    assert c.redis.call("CONFIG", "SET", "maxmemory", limit) == "OK"
    try:
        refused = None
        start = time.monotonic()
        tick = 0
        while refused is None and time.monotonic() - start < FILL_WITHIN:
            burst(flooders)
            for flooder in flooders:
                drain(flooder)
            answer = said(bystander, f"tick{tick}", 10)
            tick += 1
            if answer.startswith("ERROR"):
                refused = answer
        assert refused is not None, "the burst never reached maxmemory"
        assert refused.startswith("ERROR unavailable"), refused
        oldest = first_event(c)
        stream = c.redis.call("MEMORY", "USAGE", "chat:events")
        assert stream > HEADROOM // 2, (stream, used_memory(c), limit)
        # What Redis holds for its clients (the nodes' output buffers,
        # swollen by the burst) drains by itself: the limit is lowered to
        # just below what Redis holds without it, so that the refusals end
        # only once data is freed (the stream trimmed), as when a longer
        # burst fills maxmemory with the stream alone.
        data = used_memory(c) - used_memory(c, "mem_clients_normal:")
        assert c.redis.call("CONFIG", "SET", "maxmemory", min(limit, data - 65536)) == "OK"
        assert said(bystander, "still refused", 10).startswith("ERROR unavailable")
        # The burst is over: within RECOVER_WITHIN, a lobby line is echoed again.
        stopped = time.monotonic()
        echoed = None
        while echoed is None and time.monotonic() - stopped < RECOVER_WITHIN:
            for flooder in flooders:
                drain(flooder)
            answer = said(bystander, f"after{tick}", 10)
            tick += 1
            if answer.startswith("MSG "):
                echoed = time.monotonic() - stopped
            else:
                assert answer.startswith("ERROR unavailable"), answer
                time.sleep(1)
        assert echoed is not None, "the cluster did not recover within 30 s"
        # Freed by trimming (not by client buffers draining): the stream's
        # oldest entry then is gone.  (Its length is no witness: DMs the
        # node still held appended once Redis took writes again.)
        assert first_event(c) > oldest
        # And the other node's users are served too.
        assert said(flooders[0], "flood0 back", 10).startswith("MSG ")
    finally:
        c.redis.call("CONFIG", "SET", "maxmemory", 0)
    for server in (n0, n1):
        assert "Traceback" not in server.log()


STREAM_BYTES = 1_000_000


def test_stream_bytes_refuses_commands_before_redis_fills_then_takes_them_again(
    cluster: Callable[..., Cluster],
) -> None:
    """--stream-bytes: a burst of DMs fills the stream up to it (as Redis's
    MEMORY USAGE gives), not Redis up to its maxmemory (none here): past it,
    a DM, and a lobby line on the other node, are answered ERROR
    unavailable (not sent), the stream stays near the bound, and once the
    burst ends the trims bring it below and lines are echoed again."""
    c = cluster(2, "--flood-rate", "0", "--stream-bytes", str(STREAM_BYTES))
    n0, n1 = c.nodes
    bystander = c.user(n1, "bystander")
    flooders = [c.user(n0, f"flood{i}") for i in range(FLOODERS)]
    refused = None
    start = time.monotonic()
    while refused is None and time.monotonic() - start < FILL_WITHIN:
        burst(flooders)
        for flooder in flooders:
            for line in flooder.sync("mark", timeout=10):
                # (Not ERROR busy: a DM to a flooder the test reads too
                # slowly, as on a loaded machine, is refused for that.)
                if line.startswith("ERROR unavailable"):
                    refused = line
    assert refused is not None, "no DM was refused"
    assert refused.startswith("ERROR unavailable not sent: "), refused
    stream = c.redis.call("MEMORY", "USAGE", "chat:events")
    # Over the bound by at most the DMs sent meanwhile (and the sampling);
    # a trim may already have brought it under (it runs behind snapshots).
    assert stream < 2 * STREAM_BYTES, stream
    # The bystander's line on the other node is refused too, while the burst
    # goes on (between a trim and the stream's refilling it may be taken).
    answers = []
    for attempt in range(10):
        answers.append(said(bystander, f"refused too {attempt}", 10))
        if answers[-1].startswith("ERROR unavailable not sent: "):
            break
        burst(flooders)
        for flooder in flooders:
            flooder.sync("mark", timeout=10)
    assert answers[-1].startswith("ERROR unavailable not sent: "), answers
    n0.wait_log("FULL the event stream takes more than --stream-bytes")
    stopped = time.monotonic()
    echoed = None
    tick = 0
    while echoed is None and time.monotonic() - stopped < RECOVER_WITHIN:
        answer = said(bystander, f"after{tick}", 10)
        tick += 1
        if answer.startswith("MSG "):
            echoed = answer
        else:
            assert answer.startswith("ERROR unavailable"), answer
            time.sleep(1)
    assert echoed is not None, "not taken again within 30 s"
    assert c.redis.call("MEMORY", "USAGE", "chat:events") < STREAM_BYTES


def test_nodes_reconnect_and_start_while_redis_is_full_and_serve_once_it_has_room(
    cluster: Callable[..., Cluster],
) -> None:
    """A node that loses its connections while Redis is out of memory
    reconnects (its writes at connection, the epoch, the retention and its
    lease, were refused: it retried for ever, its users' lines held
    --redis-wait and then answered "out of reach"), and a node started then
    starts: each refuses commands at once as Redis refuses them, and serves
    once Redis has room."""
    c = cluster(2)
    n0, n1 = c.nodes
    alice = c.user(n0, "alice")
    assert c.redis.call("CONFIG", "SET", "maxmemory", 1) == "OK"
    try:
        assert c.redis.call("CLIENT", "KILL", "TYPE", "normal") == 2  # both nodes'
        for server in (n0, n1):
            server.wait_log("connected all the same")
        said_at = time.monotonic()
        answer = said(alice, "while full", 5)
        assert answer.startswith("ERROR unavailable not sent: the chat's store refused"), answer
        assert time.monotonic() - said_at < 5  # not after --redis-wait (10 s)
        n1.stop()
        n2 = c.node()  # waits for "cluster: connected to"
        n2.wait_log("connected all the same")
        bob = c.connect(n2)
        bob.expect("NICK")
        bob.send("NICK bob")
        assert bob.expect("RETRY").startswith("RETRY unavailable"), bob.lines
    finally:
        c.redis.call("CONFIG", "SET", "maxmemory", 0)
    assert said(alice, "with room", 10).startswith("MSG ")
    bob.send("NICK bob")
    bob.expect("READY bob", timeout=10)
    for server in (n0, n2):
        assert "unreachable (OOM" not in server.log()
