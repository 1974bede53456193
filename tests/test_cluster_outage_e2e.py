"""
Cluster mode end to end when Redis is out of reach: real C{twistd -n chat
--redis} nodes and a private redis-server, stopped and restarted; and one
node cut off from Redis by a TCP proxy (tests/tcpproxy.py) while the others
still reach it.  Every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redisproc import REDIS_SERVER, RedisServer, redis_has_tls
from tests.serverproc import LOOPBACK, LineClient, ServerProcess
from tests.tcpproxy import Proxy
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

NODE_TIMEOUT = 3.0
# With --node-timeout 3: Redis silent for 2 s (a stream read: 4 s) is gone.
REPLY_TIMEOUT = 2.0


cluster = cluster_fixture  # its fixture, shared: nodes, clients, Redis, cleanup


@pytest.fixture
def proxy() -> Iterator[Callable[[RedisServer], Proxy]]:
    """A proxy to a Redis (tests/tcpproxy.py), stopped at the end."""
    made: list[Proxy] = []

    def make(redis: RedisServer) -> Proxy:
        made.append(Proxy(redis.port))
        return made[-1]

    yield make
    for p in made:
        p.stop()


def proxied(p: Proxy) -> str:
    return f"redis://{LOOPBACK}:{p.port}/0"


def register_once_back(o: Cluster, server: ServerProcess, nick: str,
                       timeout: float = 10.0) -> LineClient:
    """Register C{nick} on a node that is getting back to Redis: C{RETRY
    unavailable} until it is (within C{timeout} s)."""
    client = o.connect(server)
    client.expect("NICK")
    deadline = time.monotonic() + timeout
    while True:
        client.send(f"NICK {nick}")
        answer = client.expect(lambda line: line.startswith(("READY", "RETRY")))
        if answer == f"READY {nick}":
            return client
        assert answer.startswith("RETRY unavailable") and time.monotonic() < deadline, answer
        time.sleep(0.2)


def lobby(client: LineClient) -> list[str]:
    return [line.split(" ", 4)[4] for line in client.lines if line.startswith("MSG ")]


def only_delayed(clients: list[LineClient], text: str) -> None:
    """Each client's lobby is the one line C{text}, and none was told ERROR."""
    for client in clients:
        client.sync()
        assert lobby(client) == [text]
        assert not [line for line in client.lines if line.startswith("ERROR")]


def test_redis_down_a_command_waits_redis_wait_then_unavailable(
    cluster: Callable[..., Cluster],
) -> None:
    o = cluster(2, "--redis-wait", "2", node_timeout=NODE_TIMEOUT)
    n0, n1 = o.nodes
    alice, bob = o.user(n0, "alice"), o.user(n1, "bob")
    alice.sync()
    o.redis.stop()
    for server in (n0, n1):
        server.wait_log("Redis at", timeout=10)
    sent = time.monotonic()
    alice.send("MSG into the void")
    alice.send("PING behind")
    error = alice.expect("ERROR", timeout=2 + 3)
    waited = time.monotonic() - sent
    assert error.startswith("ERROR unavailable not sent"), error
    assert 1.8 <= waited <= 2 + 2, waited
    assert alice.readline() == "PONG behind"  # in turn, right after it
    # Answered at once again: nothing held any more.
    assert alice.sync(timeout=1.0) == []
    o.redis.start()
    for server in (n0, n1):
        server.wait_log("Redis is back", timeout=15)
    alice.send("MSG after")
    assert bob.expect("MSG").endswith("alice * after")
    alice.expect("MSG")
    bob.sync()
    assert lobby(bob) == lobby(alice) == ["after"]  # the withdrawn one never came


def test_a_brief_redis_restart_only_delays_a_message(cluster: Callable[..., Cluster]) -> None:
    o = cluster(2, "--redis-wait", "9", node_timeout=NODE_TIMEOUT)
    n0, n1 = o.nodes
    alice, bob = o.user(n0, "alice"), o.user(n1, "bob")
    alice.sync()
    o.redis.stop()
    n0.wait_log("Redis at", timeout=10)
    alice.send("MSG while Redis restarts")
    o.redis.start()
    assert bob.expect("MSG", timeout=9).endswith("alice * while Redis restarts")
    alice.expect("MSG", timeout=9)
    only_delayed([alice, bob], "while Redis restarts")


def test_lines_typed_through_a_redis_restart_are_not_taken_for_a_flood(
    cluster: Callable[..., Cluster],
) -> None:
    """alice types a lobby line every 0.6 s (--flood-rate 2, bursts of 3)
    while Redis restarts: the lines held behind her first one are counted
    as of when they came, not all at once when Redis is back, so none is
    dropped (rev11-clu2 #1: ERROR flood, then BYE flood)."""
    o = cluster(2, "--redis-wait", "9", "--flood-rate", "2", "--flood-burst", "3",
                node_timeout=NODE_TIMEOUT)
    n0, n1 = o.nodes
    alice, bob = o.user(n0, "alice"), o.user(n1, "bob")
    alice.sync()
    time.sleep(1.5)  # her bucket full again
    o.redis.stop()
    n0.wait_log("Redis at", timeout=10)
    typed = [f"typed {i}" for i in range(6)]
    for text in typed:
        alice.send(f"MSG {text}")
        time.sleep(0.6)
    o.redis.start()
    for text in typed:
        bob.expect(lambda line, text=text: line.endswith(f"alice * {text}"), timeout=15)
    for client in (alice, bob):
        client.sync()
    assert not [line for line in alice.lines if line.startswith(("ERROR", "BYE"))], alice.lines
    assert lobby(alice) == lobby(bob) == typed


def test_a_reply_lost_is_unconfirmed_never_unsent_and_applied_once(
    cluster: Callable[..., Cluster], proxy: Callable[[RedisServer], Proxy],
) -> None:
    """Redis takes the message, its answer is lost (the proxy drops what
    Redis sends back): the user is told "unconfirmed", not "not sent"; when
    the node is through again its resend is skipped; everyone saw it once."""
    # Long enough a lease that the node is not taken for dead meanwhile:
    # it notices after 10/3 s, and is back a moment later.
    o = cluster(0, node_timeout=10)
    cut = proxy(o.redis)
    n0 = o.node("--redis-wait", "3", url=proxied(cut))
    n1 = o.node("--redis-wait", "3")
    alice, bob = o.user(n0, "alice"), o.user(n1, "bob")
    alice.sync()
    cut.do("mute")
    alice.send("MSG once")
    # The other node reads it from Redis at once.
    assert bob.expect("MSG").endswith("alice * once")
    error = alice.expect("ERROR", timeout=3 + 3)
    assert error.startswith("ERROR unconfirmed"), error
    # Said as what the node knows (rev21-clu F3): its reply timeout ended it.
    n0.wait_log("an answer was not read within its reply timeout", timeout=10)
    cut.do("heal")
    n0.wait_log("Redis is back", timeout=15)
    assert alice.expect("MSG", timeout=10).endswith("alice * once")
    alice.send("MSG twice")
    bob.expect(lambda line: line.endswith("alice * twice"))
    for client in (alice, bob):
        client.sync()
    assert lobby(alice) == lobby(bob) == ["once", "twice"]


@pytest.mark.parametrize("how", ["stall", "cut"])
def test_network_cut_node_is_declared_dead_and_comes_back_as_a_new_node(
    cluster: Callable[..., Cluster], proxy: Callable[[RedisServer], Proxy], how: str,
) -> None:
    """
    One node cut off from Redis while the others still reach it (the proxy
    stops forwarding, dropping nothing, as a network that loses packets; or
    resets every connection and refuses new ones, as a host that is down):
    they take it for dead within --node-timeout; its nicks are free; when
    the cut heals its users get BYE shutdown and it goes on as a new node.
    """
    o = cluster(2, node_timeout=NODE_TIMEOUT)
    n1, n2 = o.nodes
    between = proxy(o.redis)
    cut = o.node(url=proxied(between))
    alice, dora = o.user(cut, "alice"), o.user(cut, "dora")
    bob, carol = o.user(n1, "bob"), o.user(n2, "carol")
    bob.send("PAIR alice")
    alice.expect("INVITE bob")
    alice.send("ACCEPT bob")
    bob.expect("PAIRED alice")
    for client in (alice, bob, carol, dora):
        client.sync()
    cut_at = time.monotonic()
    between.do(how)
    # The others see both leave, within --node-timeout and a margin.
    for watcher in (bob, carol):
        gone: set[str] = set()
        while len(gone) < 2:
            line = watcher.expect("LEFT", timeout=NODE_TIMEOUT + 5)
            assert line.split()[3] == "disconnected", line
            gone.add(line.split()[2])
        assert gone == {"alice", "dora"}
    assert time.monotonic() - cut_at <= NODE_TIMEOUT + 3.5
    bob.sync()
    assert "UNPAIRED alice disconnected" in bob.lines
    # Their nicks are free on the other nodes.
    o.user(n2, "alice")
    # The cut node noticed (a read unanswered: its reply timeout, said as
    # that, rev21-clu F3; or its connections reset) and refuses registrations.
    cut.wait_log("within its reply timeout" if how == "stall" else "unreachable",
                 timeout=REPLY_TIMEOUT + 2 + 5)
    newcomer = o.connect(cut)
    newcomer.expect("NICK")
    newcomer.send("NICK erin")
    assert newcomer.expect("RETRY").startswith("RETRY unavailable")
    between.do("heal")
    # Back: it learns it was declared dead; its users are told.
    for client in (alice, dora):
        assert client.expect("BYE", timeout=20).startswith("BYE shutdown")
        assert client.closed(timeout=5)
    cut.wait_log("going on as node", timeout=5)
    # And it goes on as a new node: a new user registers and chats.
    erin = register_once_back(o, cut, "erin")
    erin.send("MSG hello from the cut node")
    assert bob.expect("MSG").endswith("erin * hello from the cut node")
    bob.send("DM erin welcome back")
    assert erin.expect(lambda line: line.endswith("bob erin welcome back"))
    erin.send("USERS")
    users = [line for line in erin.sync() if line.startswith("USER")]
    assert users[-1] == "USERS 4", users  # alice (the new one), bob, carol, erin


def test_a_redis_restart_shorter_than_the_wait_is_noticed_before_it_ends(
    cluster: Callable[..., Cluster],
) -> None:
    """Redis is away 7.5 s (--redis-wait 10, the default): the line typed
    as it went is delivered, not answered "not sent".  The backoff alone
    (tries near 0.2, 0.6, 1.4, 3, 6.2, 11.2 s) mostly tried next after the
    line's wait ended (chaos review F2: "Redis is back after 12.4 s")."""
    o = cluster(2, node_timeout=NODE_TIMEOUT)
    n0, n1 = o.nodes
    alice, bob = o.user(n0, "alice"), o.user(n1, "bob")
    alice.sync()
    o.redis.stop()
    n0.wait_log("Redis at", timeout=10)
    gone = time.monotonic()
    alice.send("MSG while Redis is away")
    time.sleep(7.5 - (time.monotonic() - gone))  # e2e: Redis stays away that long
    o.redis.start()
    assert bob.expect("MSG", timeout=10).endswith("alice * while Redis is away")
    alice.expect("MSG", timeout=5)
    only_delayed([alice, bob], "while Redis is away")


@pytest.mark.skipif(not redis_has_tls(), reason="redis-server is built without TLS")
def test_a_rediss_node_reconnects_after_a_redis_restart(
    tmp_path: Path, cluster: Callable[..., Cluster],
) -> None:
    """rev19-clu2 #1: over rediss://, a node whose connections Redis closed
    never tried again (the TLS layer raised at the abort of a connection
    already lost, before the retry was scheduled)."""
    from tests.test_e2e_tls import self_signed

    key, cert = self_signed(tmp_path)
    redis = RedisServer(tmp_path, tls=(key, cert)).start()
    o = cluster(2, node_timeout=NODE_TIMEOUT, redis=redis,
                url=f"rediss://localhost:{redis.port}/0?ca={cert}")
    n0, n1 = o.nodes
    alice, bob = o.user(n0, "alice"), o.user(n1, "bob")
    alice.sync()
    redis.stop()
    for server in (n0, n1):
        server.wait_log("unreachable", timeout=10)
    redis.start()
    for server in (n0, n1):
        server.wait_log("Redis is back", timeout=15)
    alice.send("MSG after")
    assert bob.expect("MSG").endswith("alice * after")
    alice.expect("MSG")
