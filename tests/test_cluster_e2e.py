"""
Cluster mode end to end: a private redis-server and three real
C{twistd -n chat --redis ...} nodes on loopback, clients spread over them.
"""

from __future__ import annotations

import random
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import LOOPBACK, LineClient, ServerProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

# Short for the tests that wait for a death; the others use a longer one, so
# that a node stalled by a loaded machine is not taken for dead.
NODE_TIMEOUT = 3.0
CALM_TIMEOUT = 10.0


class Cluster:
    def __init__(self, tmp: Path, redis: RedisServer, node_timeout: float,
                 url: str | None = None) -> None:
        self.tmp = tmp
        self.redis = redis
        self.url = url if url is not None else redis.url
        self.node_timeout = node_timeout
        self.nodes: list[ServerProcess] = []
        self.clients: list[LineClient] = []
        # Nodes meant to fail (a wrong password, an untrusted certificate):
        # killed at the end, their logs not checked.
        self.strays: list[ServerProcess] = []

    def node(self, *args: str, url: str | None = None,
             node_timeout: float | None = None) -> ServerProcess:
        """A node on the cluster's URL (or C{url}: a proxy's, say)."""
        timeout = self.node_timeout if node_timeout is None else node_timeout
        server = ServerProcess(
            self.tmp,
            ["--redis", url or self.url, "--node-timeout", str(timeout), *args],
        ).start()
        self.nodes.append(server)  # stopped at the end even if it never connects
        server.wait_log("cluster: connected to")
        return server

    def stray(self, url: str) -> ServerProcess:
        """A node on C{url} that is expected never to connect."""
        server = ServerProcess(self.tmp, ["--redis", url]).start()
        self.strays.append(server)
        return server

    def connect(self, server: ServerProcess, timeout: float = 5.0) -> LineClient:
        client = LineClient(server.port, timeout=timeout)
        self.clients.append(client)
        return client

    def user(self, server: ServerProcess, nick: str) -> LineClient:
        client = self.connect(server)
        client.register(nick)
        return client


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(n: int = 3, *args: str, node_timeout: float = CALM_TIMEOUT,
             redis: RedisServer | None = None, url: str | None = None) -> Cluster:
        if redis is None:
            redis = RedisServer(tmp_path).start()
        c = Cluster(tmp_path, redis, node_timeout, url)
        made.append(c)
        for _ in range(n):
            c.node(*args)
        return c

    yield make
    for c in made:
        for client in c.clients:
            client.close()
        for server in c.nodes + c.strays:
            server.kill()
        c.redis.stop(signal.SIGKILL)
        for server in c.nodes:
            assert server.problems() == [], server.log()[-3000:]


def test_one_lobby_one_order_users_and_history(cluster: Callable[..., Cluster]) -> None:
    c = cluster(3, "--history", "50")
    users = [c.user(c.nodes[i % 3], f"user{i}") for i in range(6)]
    for client in users:
        client.sync()
    # Everyone talks at once, from every node.
    for round_ in range(5):
        for i, client in enumerate(users):
            client.send(f"MSG round {round_} from user{i}")
    seen = []
    for client in users:
        # Read, not PING in a loop: PINGs sent faster than --flood-rate are
        # dropped (and never answered).
        got = [client.expect("MSG", timeout=10) for _ in range(30)]
        client.sync()
        seen.append(got)
    assert len(seen[0]) == 30
    assert all(s == seen[0] for s in seen), "every member sees one order, echo included"
    # USERS: the same list on every node.
    lists = []
    for client in users:
        client.send("USERS")
        lists.append([line for line in client.sync() if line.startswith("USER")])
    assert lists[0][-1] == "USERS 6"
    assert all(x == lists[0] for x in lists)
    # A newcomer gets the same history on any node.
    histories = []
    for server in c.nodes:
        block = c.user(server, f"new{server.port}").lines
        histories.append([line.split(" ", 2)[2] for line in block if line.startswith("HISTORY")])
    assert histories[0] == [m.split(" ", 2)[2].replace(" * ", " ", 1) for m in seen[0]]
    assert all(h == histories[0] for h in histories)
    # The history survives a node's restart, and the whole cluster's; the
    # node that starts then loads a snapshot (with users in it) and the
    # stream after it.
    deadline = time.monotonic() + 2 * CALM_TIMEOUT
    while ":1" not in c.redis.command("EXISTS", "chat:snapshot"):
        assert time.monotonic() < deadline, "no snapshot was written"
        time.sleep(0.1)
    for server in c.nodes:
        server.stop()
    again = c.node("--history", "50")
    assert ": 0 users online" not in again.log()
    block = c.user(again, "late").lines
    assert [line.split(" ", 2)[2] for line in block if line.startswith("HISTORY")] == histories[0]
    bigger = c.node("--history", "10")
    block = c.user(bigger, "later").lines
    assert [line.split(" ", 2)[2] for line in block
            if line.startswith("HISTORY")] == histories[0][-10:]


def test_nick_race_across_nodes(cluster: Callable[..., Cluster]) -> None:
    c = cluster(2)
    for attempt in range(15):
        a, b = c.connect(c.nodes[0]), c.connect(c.nodes[1])
        a.expect("NICK")
        b.expect("NICK")
        a.send(f"NICK race{attempt}")
        b.send(f"NICK RACE{attempt}")
        answers = [a.expect(lambda line: line.startswith(("READY", "RETRY"))),
                   b.expect(lambda line: line.startswith(("READY", "RETRY")))]
        assert sorted(x.split()[0] for x in answers) == ["READY", "RETRY"], answers
        assert any(x.startswith("RETRY taken") for x in answers)


def test_dm_and_pairing_across_nodes(cluster: Callable[..., Cluster]) -> None:
    c = cluster(3)
    alice, bob, carol = (c.user(c.nodes[i], nick) for i, nick in enumerate(["alice", "bob",
                                                                            "carol"]))
    for client in (alice, bob, carol):
        client.sync()
    alice.send("DM bob hi bob")
    assert alice.expect("MSG").endswith("alice bob hi bob")
    assert bob.expect("MSG").endswith("alice bob hi bob")
    bob.send("DM nobody x")
    assert bob.expect("ERROR") .startswith("ERROR no-such-nick")
    alice.send("PAIR bob")
    assert alice.expect("PENDING") == "PENDING bob"
    assert bob.expect("INVITE") == "INVITE alice"
    carol.send("PAIR bob")
    assert carol.expect("PENDING") == "PENDING bob"
    # Two answers race: bob accepts alice, carol withdraws; the pairing ends carol's as busy.
    bob.send("ACCEPT alice")
    assert bob.expect("PAIRED") == "PAIRED alice"
    assert alice.expect("PAIRED") == "PAIRED bob"
    assert carol.expect("DECLINED") == "DECLINED bob busy"
    carol.send("UNPAIR")
    assert carol.expect("ERROR").startswith("ERROR not-paired")
    alice.send("MSG just us")
    assert bob.expect("MSG").endswith("alice bob just us")
    carol.send("PAIR alice")
    assert carol.expect("ERROR").startswith("ERROR busy")
    bob.send("UNPAIR")
    assert bob.expect("UNPAIRED") == "UNPAIRED alice left"
    assert alice.expect("UNPAIRED") == "UNPAIRED alice left".replace("alice", "bob")


def _lines_then_close(port: int, watcher: LineClient, nick: str) -> list[str]:
    """A script's connection: C{NICK}, 20 lobby lines and C{BYE} in one
    write, then a close with the greeting unread (so an RST, a full close,
    not a half-close); what C{watcher} sees of it, up to its C{LEFT}."""
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    try:
        # The greeting is there, unread: the close below is an RST.
        assert select.select([sock], [], [], 5)[0]
        sock.sendall(f"NICK {nick}\r\n".encode()
                     + b"".join(b"MSG line%d\r\n" % i for i in range(20)) + b"BYE done\r\n")
    finally:
        sock.close()
    seen = []
    while True:
        line = watcher.expect(lambda line: line.startswith(("MSG", "LEFT")), timeout=15)
        seen.append(line.split(" ", 2)[2])
        if line.startswith("LEFT"):
            return seen


def test_lines_sent_just_before_a_close_are_handled_as_on_one_server(
        cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    """A client that writes its lines and closes at once (a script, a bot):
    every line held behind its NICK while the cluster decides it is still
    handled, and the others see it leave as its BYE says, as one server
    does (rev-clu F1).  (Its 22 lines at once are more than the default
    --flood-burst.)"""
    flood = ("--flood-burst", "40")
    expected = [*(f"{{nick}} * line{i}" for i in range(20)), "{nick} quit done"]
    single = ServerProcess(tmp_path, ["--db", ":memory:", *flood]).start()
    try:
        watcher = LineClient(single.port)
        watcher.register("watcher")
        nick = "script0"
        assert _lines_then_close(single.port, watcher, nick) == [
            line.replace("{nick}", nick) for line in expected]
        watcher.close()
    finally:
        single.kill()
    c = cluster(2, *flood)
    watcher = c.user(c.nodes[1], "watcher")
    for attempt in range(3):
        nick = f"script{attempt + 1}"
        assert _lines_then_close(c.nodes[0].port, watcher, nick) == [
            line.replace("{nick}", nick) for line in expected]
    for server in c.nodes:
        server.stop()


def test_sigkill_node_users_leave_within_node_timeout(cluster: Callable[..., Cluster]) -> None:
    c = cluster(3, node_timeout=NODE_TIMEOUT)
    victim = c.nodes[1]
    alice = c.user(c.nodes[0], "alice")
    bob = c.user(victim, "bob")
    c.user(victim, "dora")
    carol = c.user(c.nodes[2], "carol")
    alice.send("PAIR bob")
    bob.expect("INVITE")
    bob.send("ACCEPT alice")
    alice.expect("PAIRED")
    carol.send("PAIR dora")
    carol.expect("PENDING")
    for client in (alice, carol):
        client.sync()
    killed = time.monotonic()
    victim.kill()
    left = alice.expect("LEFT", timeout=NODE_TIMEOUT + 5)
    waited = time.monotonic() - killed
    # The lease lives 2/3 of the timeout and is checked every 1/6: the rest
    # is margin for a loaded machine.
    assert waited <= NODE_TIMEOUT + 2.5, waited
    assert left.split()[2:4] in (["bob", "disconnected"], ["dora", "disconnected"])
    assert alice.expect("UNPAIRED") == "UNPAIRED bob disconnected"
    # Each node applies the death when it reads it: wait for carol's too.
    carol.expect("DECLINED dora gone", timeout=NODE_TIMEOUT + 5)
    assert sum(1 for line in carol.lines if line.startswith("LEFT")) == 2
    # Their nicks are free again, on any node.
    again = c.connect(c.nodes[2])
    again.register("bob")


def test_clean_stop_users_get_bye_others_see_left_at_once(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(2)
    alice = c.user(c.nodes[0], "alice")
    bob = c.user(c.nodes[1], "bob")
    alice.sync()
    c.nodes[1].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert bob.expect("BYE").startswith("BYE shutdown")
    left = alice.expect("LEFT", timeout=2.0)
    assert left.split()[2:4] == ["bob", "disconnected"]
    c.nodes[1].proc.wait(10)  # type: ignore[union-attr]
    assert c.nodes[1].proc.returncode in (0, -signal.SIGTERM)  # type: ignore[union-attr]
    assert "Traceback" not in c.nodes[1].log()


def test_redis_restart_with_data_keeps_everyone(cluster: Callable[..., Cluster]) -> None:
    c = cluster(2, node_timeout=NODE_TIMEOUT)
    alice = c.user(c.nodes[0], "alice")
    bob = c.user(c.nodes[1], "bob")
    alice.sync()
    c.redis.stop()
    for server in c.nodes:
        server.wait_log("Redis at", timeout=10)
    # Connections stay; a newcomer is told clearly that it cannot register now.
    newcomer = c.connect(c.nodes[0])
    newcomer.expect("NICK")
    newcomer.send("NICK carol")
    assert newcomer.expect("RETRY").startswith("RETRY unavailable")
    alice.send("PING still-here")
    assert alice.expect("PONG") == "PONG still-here"
    c.redis.start()
    for server in c.nodes:
        server.wait_log("Redis is back", timeout=15)
    # The same users, no duplicates, and the lobby works.
    alice.send("MSG after the outage")
    assert bob.expect("MSG").endswith("alice * after the outage")
    bob.send("USERS")
    assert [line for line in bob.sync() if line.startswith("USER")] == [
        "USER alice lobby", "USER bob lobby", "USERS 2"]
    newcomer.send("NICK carol")
    assert newcomer.expect("READY") == "READY carol"
    # Leases were renewed: nobody was taken for dead after the outage.
    time.sleep(NODE_TIMEOUT + 0.5)
    assert not [line for line in alice.sync() if line.startswith("LEFT")]


def test_random_actions_on_three_nodes(cluster: Callable[..., Cluster]) -> None:
    """Many clients on three nodes do random lobby, DM and pairing actions;
    afterwards every lobby member saw the same lobby sequence, nothing
    dangles, and every departed nick is free."""
    c = cluster(3, "--flood-rate", "0", "--invite-timeout", "2", "--exempt", "127.0.0.1")
    rng = random.Random(1515)
    nicks = [f"r{i}" for i in range(12)]
    clients = {nick: c.user(c.nodes[i % 3], nick) for i, nick in enumerate(nicks)}
    for client in clients.values():
        client.sync()
    departed: list[str] = []
    for step in range(300):
        nick = rng.choice(list(clients))
        other = rng.choice(nicks)
        action = rng.choice(["MSG", "MSG", "MSG", "DM", "PAIR", "ACCEPT", "REJECT", "UNPAIR"])
        line = {
            "MSG": f"MSG m{step}",
            "DM": f"DM {other} d{step}",
            "PAIR": f"PAIR {other}",
            "ACCEPT": f"ACCEPT {other}",
            "REJECT": f"REJECT {other}",
            "UNPAIR": "UNPAIR",
        }[action]
        clients[nick].send(line)
        if step in (100, 200) and len(clients) > 4:
            gone = rng.choice(list(clients))
            clients.pop(gone).send("BYE")
            departed.append(gone)
    # Let every open invitation time out, then end every pair.
    time.sleep(2.5)
    for client in clients.values():
        client.send("UNPAIR")
    for client in clients.values():
        client.sync("end", timeout=10)
    # Collect what each saw since registering; compare the lobby MSG lines
    # (only those sent while both were in the lobby are common: compare the
    # order of the messages two members both received).
    orders = {nick: [line.split(" ", 4)[4] for line in client.lines
                     if line.startswith("MSG ") and line.split(" ", 4)[3] == "*"]
              for nick, client in clients.items()}
    ranks = {nick: {m: i for i, m in enumerate(seq)} for nick, seq in orders.items()}
    names = list(orders)
    for a in names:
        for b in names:
            common = [m for m in orders[a] if m in ranks[b]]
            assert [ranks[b][m] for m in common] == sorted(ranks[b][m] for m in common)
    assert sum(len(seq) for seq in orders.values()) > 100
    # Nothing dangles: everyone is in the lobby, every node lists the same users.
    lists = []
    for server in c.nodes:
        probe = c.user(server, f"probe{server.port}")
        lists.append([line for line in probe.lines if line.startswith("USER ")
                      and not line.startswith("USER probe")])
    for listing in lists:
        assert listing == lists[0]
        assert all(line.endswith(" lobby") for line in listing), listing
    # Every departed nick is free.
    for nick in departed:
        c.user(c.nodes[0], nick)


def test_redis_restart_without_data_restores_users_and_nicks(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(2)
    alice = c.user(c.nodes[0], "alice")
    bob = c.user(c.nodes[1], "bob")
    carol = c.user(c.nodes[1], "carol")
    alice.send("PAIR bob")
    bob.expect("INVITE")
    bob.send("ACCEPT alice")
    alice.expect("PAIRED")
    for client in (alice, bob, carol):
        client.sync()
    c.redis.stop(signal.SIGKILL)
    c.redis.wipe()
    c.redis.start()
    for server in c.nodes:
        server.wait_log("Redis lost its data", timeout=15)
        server.wait_log("Redis is back", timeout=15)
    # Nobody was told anyone left; the nicks are still held, cluster-wide.
    taker = c.connect(c.nodes[0])
    taker.expect("NICK")
    taker.send("NICK carol")
    assert taker.expect("RETRY", timeout=5).startswith("RETRY taken")
    # A node that starts after the loss learns the same users and the pair.
    late = c.node()
    dave = c.user(late, "dave")
    assert [line for line in dave.lines if line.startswith("USER")] == [
        "USER alice paired", "USER bob paired", "USER carol lobby", "USER dave lobby",
        "USERS 4"]
    alice.send("MSG still paired")
    assert bob.expect("MSG").endswith("alice bob still paired")
    carol.send("MSG lobby works")
    assert dave.expect("MSG").endswith("carol * lobby works")
    for client in (alice, bob, carol):
        assert not [line for line in client.sync() if line.startswith("LEFT")]


def test_unix_socket_url_with_password(
    tmp_path: Path, cluster: Callable[..., Cluster]
) -> None:
    redis = RedisServer(tmp_path, password="s3cret:/x", unixsocket=True).start()
    url = redis.unix_url.replace("s3cret:/x", "s3cret%3A%2Fx")
    c = cluster(2, redis=redis, url=url)
    c.user(c.nodes[0], "alice")
    assert "USER alice lobby" in c.connect(c.nodes[1]).register("bob")
    assert "redis.sock" in c.nodes[0].log() and "s3cret" not in c.nodes[0].log()
    # A wrong password does not start (tests/test_cluster_config_e2e.py).
    wrong = ServerProcess(c.tmp, ["--redis", redis.unix_url.replace("s3cret:/x", "no")])
    c.strays.append(wrong)
    wrong.start(wait=False)
    assert wrong.proc is not None and wrong.proc.wait(15) == 1, wrong.log()[-3000:]
    assert "refused this node's password (WRONGPASS" in wrong.log()


def test_node_started_before_redis_refuses_nicks_then_joins(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)  # not started yet
    node = ServerProcess(tmp_path, ["--redis", redis.url]).start()
    client = LineClient(node.port)
    try:
        node.wait_log("unreachable")
        client.expect("NICK")
        client.send("NICK early")
        assert client.expect("RETRY").startswith("RETRY unavailable")
        redis.start()
        node.wait_log("Redis is back", timeout=15)
        client.send("NICK early")
        assert client.expect("READY") == "READY early"
        # Each transition is logged once, however many retries it took.
        assert node.log().count("unreachable") == 1
        assert "Starting factory" not in node.log().split("starting in cluster mode")[1]
    finally:
        client.close()
        node.kill()
        redis.stop()


def test_rediss_url_with_a_private_ca(
    tmp_path: Path, cluster: Callable[..., Cluster]
) -> None:
    from tests.test_e2e_tls import self_signed

    key, cert = self_signed(tmp_path)
    redis = RedisServer(tmp_path, password="pw", tls=(key, cert)).start()
    url = f"rediss://:pw@localhost:{redis.port}/0?ca={cert}"
    c = cluster(2, redis=redis, url=url)
    c.user(c.nodes[0], "alice")
    assert "USER alice lobby" in c.connect(c.nodes[1]).register("bob")
    # Without the CA, the certificate is not trusted: no connection, and the
    # log says so (rev19-clu2 #2: it said "unreachable (Not connected)").
    stray = c.stray(url.split("?")[0])
    stray.wait_log("unreachable (TLS: Redis's certificate is not trusted (certificate "
                   "verify failed; this node trusts the system's CAs))")
    assert stray.problems() == []


def test_show_addresses_across_nodes(cluster: Callable[..., Cluster]) -> None:
    c = cluster(2, "--show-addresses")
    alice = c.user(c.nodes[0], "alice")
    bob = c.user(c.nodes[1], "bob")
    alice_address = "127.0.0.1:%d" % alice.sock.getsockname()[1]
    bob_address = "127.0.0.1:%d" % bob.sock.getsockname()[1]
    alice.expect("JOINED")  # node 0 has applied bob's registration (USERS is local)
    for client in (alice, bob):
        client.send("USERS")
        assert [line for line in client.sync() if line.startswith("USER")] == [
            f"USER alice lobby {alice_address}", f"USER bob lobby {bob_address}", "USERS 2"]


def test_metrics_on_each_node_are_its_own(cluster: Callable[..., Cluster]) -> None:
    """--metrics on two real nodes, scraped over HTTP: each node's chat_*
    figures are its own users' and messages; chat_cluster_* the cluster's."""
    from tests.serverproc import LOOPBACK, free_port
    from tests.test_cluster_metrics import per_node
    from tests.test_e2e_metrics import scrape

    c = cluster(0)
    ports = [free_port(), free_port()]
    n0, n1 = (c.node("--metrics", f"tcp:{port}:interface={LOOPBACK}") for port in ports)
    alice = c.user(n0, "alice")
    bob, carol = c.user(n1, "bob"), c.user(n1, "carol")
    alice.send("MSG hello")
    bob.send("DM alice psst")
    seen = {alice.expect("MSG").split(" ", 2)[2] for _ in range(2)}
    assert seen == {"alice * hello", "bob alice psst"}
    for client in (bob, carol):  # (bob's copy of its DM may come before)
        client.expect(lambda line: line.startswith("MSG") and line.endswith("alice * hello"))
    for client in (alice, bob, carol):
        client.sync()
    got = [scrape(port) for port in ports]
    assert per_node(got, "chat_users_online") == [1, 2]
    assert per_node(got, "chat_lobby_messages_total") == [1, 0]
    assert per_node(got, "chat_private_messages_total", kind="dm") == [0, 1]
    # The node's own commands: NICK and MSG; two NICKs and a DM.
    assert per_node(got, "chat_cluster_decision_duration_seconds_count") == [2, 3]
    assert per_node(got, "chat_cluster_users_online") == [3, 3]
    assert per_node(got, "chat_cluster_nodes_with_users") == [2, 2]
    assert per_node(got, "chat_cluster_redis_up") == [1, 1]
    assert min(per_node(got, "chat_cluster_events_read_total")) >= 5  # 3 NICKs, MSG, DM
    assert not [name for values in got for name, _ in values if name.startswith("chat_history")]
    carol.send("BYE")
    carol.rest()
    deadline = time.monotonic() + 5
    while per_node(got, "chat_cluster_users_online") != [2, 2]:
        assert time.monotonic() < deadline, "carol's departure was not applied everywhere"
        time.sleep(0.05)
        got = [scrape(port) for port in ports]
    assert per_node(got, "chat_users_online") == [1, 1]
    assert per_node(got, "chat_disconnects_total", reason="quit") == [0, 1]


def test_metrics_count_live_nodes_without_users(cluster: Callable[..., Cluster]) -> None:
    """chat_cluster_nodes on real nodes: two nodes with no users are both
    counted (chat_cluster_nodes_with_users sees none); a node killed is no
    longer counted once its lease has lapsed."""
    from tests.serverproc import LOOPBACK, free_port
    from tests.test_cluster_metrics import per_node
    from tests.test_e2e_metrics import scrape
    from tests.test_metrics import Values

    c = cluster(0, node_timeout=3.0)  # leases of 2 s, heartbeats every 0.5 s
    ports = [free_port(), free_port()]
    _, n1 = (c.node("--metrics", f"tcp:{port}:interface={LOOPBACK}") for port in ports)

    def until(want: list[float], which: list[int]) -> list[Values]:
        deadline = time.monotonic() + 10
        while True:
            got = [scrape(ports[i]) for i in which]
            if per_node(got, "chat_cluster_nodes") == want:
                return got
            assert time.monotonic() < deadline, per_node(got, "chat_cluster_nodes")
            time.sleep(0.1)

    got = until([2, 2], [0, 1])
    assert per_node(got, "chat_cluster_nodes_with_users") == [0, 0]
    n1.kill()
    until([1], [0])
