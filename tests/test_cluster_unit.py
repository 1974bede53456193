"""
Cluster mode, deterministically: several nodes (each a real L{ChatFactory}
on a L{ClusterState}) on one L{Clock}, their events in an in-memory log that
stands for the Redis stream.  The decisive check is differential: the same
commands, in the log's order, give every user exactly the lines one server
gives (tests/harness.py), however the users are spread over the nodes.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from typing import Any

import pytest
from twisted.internet.task import Clock

from tests.harness import QUIET, Conn, Harness
from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.cluster.remote import RemoteConn
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.factory import ChatFactory, hub_settings
from twisted_chat.server.history import History
from twisted_chat.server.hub import State, User
from twisted_chat.server.protocol import ChatProtocol

START = 1_700_000_000


class MemoryLog:
    """The cluster's one order: ids are the clock's milliseconds, as Redis's."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.entries: list[tuple[str, dict[str, Any]]] = []
        self._last = (0, 0)

    def add(self, event: str) -> None:
        ms = round(self.clock.seconds() * 1000)
        last_ms, last_seq = self._last
        self._last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        self.entries.append((f"{self._last[0]}-{self._last[1]}", json.loads(event)))


class NodeLog:
    """One node's way to the shared log (an L{EventLog}): written at once."""

    def __init__(self, shared: MemoryLog, state: ClusterState) -> None:
        self.shared = shared
        self.state = state

    def append(self, event: str, bounded: bool = False) -> object:
        self.shared.add(event)
        return None

    def withdraw(self, ticket: object) -> bool:
        return False  # written at once

    def renamed(self, node: str) -> None:
        pass

    def own_events_read(self) -> bool:
        # Nothing is on its way: what was appended is read at the next pump.
        return self.state.available

    def applied(self) -> None:
        pass

    def command_waits(self) -> None:
        pass


class Untold:
    """A node's L{NodeConnections} that tells the connections no news of
    the replica (these tests read the connections' lines, written by the
    listener), but rebinds and ends them as the factory's does
    (L{FactoryHooks}): after a rebuild, a hello gives a detached
    connection the hub's new L{User}, and its next line is that user's.
    What it did is recorded (C{rebinds}, C{displaced_conns})."""

    def __init__(self) -> None:
        self.rebinds: list[tuple[Any, User]] = []
        self.displaced_conns: list[Any] = []

    def lost(self) -> None:
        pass

    def reloaded(self) -> None:
        pass

    def rebuilt(self) -> None:
        pass

    def rebound(self, conn: Any, user: User) -> None:
        self.rebinds.append((conn, user))
        if isinstance(conn, ChatProtocol):
            conn.user = user

    def displaced(self, conn: Any) -> None:
        self.displaced_conns.append(conn)
        if isinstance(conn, ChatProtocol):
            conn.hang_up("shutdown")


class Node(Harness):
    """A L{Harness} whose factory keeps its state in the cluster."""

    def __init__(self, cluster: Cluster, name: str, **config: Any) -> None:
        self.clock = cluster.clock
        self.config = ServerConfig(**{**QUIET, **config})
        self.cluster = cluster

        def build(factory: ChatFactory) -> ClusterState:
            state = ClusterState(name, factory.lines, factory.history, hub_settings(self.config),
                                 self.clock, Untold())
            state.events = NodeLog(cluster.log, state)
            state.available = True
            return state

        self.factory = ChatFactory(self.config, self.clock, History(self.config.history),
                                   state=build)
        self.state: ClusterState = self.factory.state  # type: ignore[assignment]
        self.hub = self.factory.state.hub
        self.cursor = 0
        self._ports = iter(range(40000 + 1000 * len(cluster.nodes), 41000 + 1000 * 20))
        self.conns: list[Conn] = []

    def user(self, nick: str, host: str = "127.0.0.1") -> Conn:
        conn = self.connect(host)
        conn.send(f"NICK {nick}")
        self.cluster.pump()
        lines = conn.take()
        assert f"READY {nick}" in lines, lines
        self.cluster.clear_all()
        return conn


class Cluster:
    def __init__(self, n: int, **config: Any) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.log = MemoryLog(self.clock)
        self.nodes: list[Node] = []
        for i in range(n):
            self.nodes.append(Node(self, f"node{i}", **config))

    def pump(self) -> None:
        """Every node applies every event appended so far (and what they
        append meanwhile), then the reactor turn ends."""
        moved = True
        while moved:
            moved = False
            for node in self.nodes:
                batch = self.log.entries[node.cursor:]
                if batch:
                    node.cursor += len(batch)
                    node.state.deliver(batch)
                    moved = True
            self.clock.advance(0)

    def clear_all(self) -> None:
        for node in self.nodes:
            node.clear_all()


def check_index(cluster: Cluster) -> None:
    """Each node's fan-out walks exactly its own users in the hub's lobby, in
    the lobby's order, and its own online users are those of the hub, its
    paired ones those of the hub in a pair (JOINED and LEFT go to them).
    A user hearing the lobby after a loss (afterloss.hearing: paired in
    the hub) is not among the paired ones but after the lobby's."""
    for node in cluster.nodes:
        mine = [u for u in node.hub.online.values() if not isinstance(u.conn, RemoteConn)]
        assert node.state.own.users() == mine
        hearing = [u for u in node.state.replica.afterloss.hearing.values() if u in mine]
        assert sorted(u.key for u in node.state.paired_users()) == sorted(
            u.key for u in mine if u.state is State.PAIRED and u not in hearing)
        assert list(node.state.lobby_members()) == [
            u.conn for u in node.hub.lobby.values() if not isinstance(u.conn, RemoteConn)
        ] + [u.conn for u in hearing]


def test_nick_race_exactly_one_ready() -> None:
    cluster = Cluster(2)
    a = cluster.nodes[0].connect()
    b = cluster.nodes[1].connect()
    a.take(), b.take()
    a.send("NICK bob")
    b.send("NICK Bob")
    assert a.take() == b.take() == []  # nothing is decided before the log says
    cluster.pump()
    first, second = a.take(), b.take()
    assert first[0] == "READY bob"
    # The user who got it, as it spelled the nick (chat/1), not b's NICK.
    assert second == ["RETRY taken bob is online already"]
    b.send("NICK carol")
    cluster.pump()
    assert b.take()[0] == "READY carol"


FAULT = "ERROR internal the server hit a fault handling that command (it is logged)"


def break_joined(node: Node) -> None:
    """C{node}'s listener raises at the next C{JOINED} (a bug), once: the
    hub undoes that registration there."""
    lines = node.factory.lines

    def broken(*args: Any) -> None:
        del lines.joined  # the real one again
        raise RuntimeError("a listener's bug")

    lines.joined = broken  # type: ignore[method-assign]


def nick_with_a_broken_listener(node: Node, nick: str) -> Conn:
    """A new connection of C{node} sends C{NICK nick}, and the node's
    listener raises at its C{JOINED} (a bug), once: the hub undoes it there."""
    conn = node.connect()
    conn.take()
    break_joined(node)
    conn.send(f"NICK {nick}")
    node.cluster.pump()
    return conn


def test_an_arrival_that_raises_on_its_node_is_answered_error_internal() -> None:
    """The node's listener raised at the newcomer's JOINED (a bug; its hub
    undid the user): the replica logged it and answered the NICK as done,
    so the client had READY, the user list and then nothing, never online.
    It gets ERROR internal alone, as on one server, and may NICK again."""
    cluster = Cluster(2)
    conn = nick_with_a_broken_listener(cluster.nodes[0], "alice")
    assert conn.take() == [FAULT]
    assert conn.user is None and not conn.transport.disconnecting
    conn.send("NICK carol")
    cluster.pump()
    assert conn.take()[0] == "READY carol"


def test_an_arrival_that_raises_on_its_node_leaves_the_other_nodes_too() -> None:
    """Only node 0's listener raised at alice's JOINED: its hub undid her,
    node 1's did not, so node 1 kept her online and a retried NICK alice
    had READY on node 0 beside node 1's stale alice.  Node 0 now appends
    her leave, and the retry is alice everywhere."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    watcher = n1.user("bob")
    conn = nick_with_a_broken_listener(n0, "alice")
    assert conn.take() == [FAULT]
    assert n0.hub.find("alice") is None and n1.hub.find("alice") is None
    seen = watcher.take()  # she was shown arriving there, and now leaving
    assert [line.split()[0] for line in seen] == ["JOINED", "LEFT"], seen
    assert seen[1].endswith(" alice disconnected")
    conn.send("NICK alice")
    cluster.pump()
    assert conn.take()[0] == "READY alice"
    assert n0.hub.find("alice") is not None and n1.hub.find("alice") is not None
    joined = watcher.take()
    assert len(joined) == 1 and joined[0].startswith("JOINED ") and joined[0].endswith(" alice")
    check_index(cluster)


def test_a_nick_between_an_undone_arrival_and_its_leave_is_decided_alike() -> None:
    """Node 0's hub undid alice at once, node 1's only at her leave, after
    node 1's NICK alice from another client in that window: node 1 said
    RETRY, node 0 took it as a remote alice that never left.  Node 0 now
    keeps her, with no connection, until her leave: alike on every node."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    a, b = n0.connect(), n1.connect()
    a.take(), b.take()
    break_joined(n0)
    a.send("NICK alice")
    b.send("NICK alice")  # the same round, before her leave is in the log
    cluster.pump()
    assert a.take() == [FAULT]
    assert b.take()[0].startswith("RETRY taken ")
    assert n0.hub.find("alice") is None and n1.hub.find("alice") is None
    b.send("NICK alice")
    cluster.pump()
    assert b.take()[0] == "READY alice"
    held = [node.hub.find("alice") for node in cluster.nodes]
    assert held[0] is not None and held[1] is not None
    assert n0.state.replica.uids[held[0]] == n1.state.replica.uids[held[1]]
    check_index(cluster)


def test_an_arrival_that_raises_on_another_node_is_kept_there() -> None:
    """Only node 1's listener raised at node 0's alice's JOINED: node 1's
    hub undid her and nothing put her back, so node 0 kept her (READY)
    while node 1 had no alice, and took a second alice of its own.  Node 1
    now keeps her quietly, as a user of node 0, and says RETRY."""
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    conn = n0.connect()
    conn.take()
    break_joined(n1)
    conn.send("NICK alice")
    cluster.pump()
    assert conn.take()[0] == "READY alice"
    held = [node.hub.find("alice") for node in cluster.nodes]
    assert held[0] is not None and held[1] is not None
    assert held[0].conn is conn.protocol and isinstance(held[1].conn, RemoteConn)
    assert held[1].conn.node == n0.state.replica.node
    assert n0.state.replica.uids[held[0]] == n1.state.replica.uids[held[1]]
    other = n1.connect()
    other.take()
    other.send("NICK alice")
    cluster.pump()
    assert other.take()[0].startswith("RETRY taken ")
    assert [node.hub.find("alice") for node in cluster.nodes] == held
    check_index(cluster)


def test_an_arrival_the_hub_itself_refuses_leaves_its_node_going() -> None:
    """A registration that raises in the hub (a bug, alike on every node)
    is answered ERROR internal: putting it back raises the same, and the
    node applies the log on."""
    cluster = Cluster(2)
    n0 = cluster.nodes[0]
    register = n0.hub.register

    def broken(*args: Any, **kwargs: Any) -> User:
        raise RuntimeError("a hub's bug")

    conn = n0.connect()
    conn.take()
    n0.hub.register = broken  # type: ignore[method-assign]
    conn.send("NICK alice")
    cluster.pump()
    assert conn.take() == [FAULT]
    n0.hub.register = register  # type: ignore[method-assign]
    conn.send("NICK carol")
    cluster.pump()
    assert conn.take()[0] == "READY carol"


def test_lines_after_nick_wait_for_the_answer() -> None:
    """A client that sends NICK and MSG at once gets READY, then its message."""
    cluster = Cluster(2)
    a = cluster.nodes[0].connect()
    a.take()
    a.send_raw(b"NICK ann\r\nMSG hi\r\n")
    cluster.pump()
    cluster.pump()
    lines = a.take()
    assert lines[0] == "READY ann"
    assert lines[-1].endswith("ann * hi"), lines


def test_lobby_one_order_with_echo_and_users_everywhere() -> None:
    cluster = Cluster(3)
    users = [cluster.nodes[i % 3].user(f"u{i}") for i in range(6)]
    for round_ in range(3):
        for i, conn in enumerate(users):
            conn.send(f"MSG round {round_} from {i}")
    cluster.pump()
    seen = [[line for line in conn.take() if line.startswith("MSG")] for conn in users]
    assert len(seen[0]) == 18
    assert all(s == seen[0] for s in seen)
    for conn in users:
        conn.send("USERS")
    lists = [conn.take() for conn in users]
    assert lists[0][-1] == "USERS 6"
    assert all(x == lists[0] for x in lists)


def test_node_dead_ends_users_pairs_and_invitations() -> None:
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    alice, bob = n0.user("alice"), n1.user("bob")
    n0.user("carol")
    dave = n1.user("dave")
    alice.send("PAIR bob")
    cluster.pump()
    bob.send("ACCEPT alice")
    cluster.pump()
    dave.send("PAIR carol")
    cluster.pump()
    cluster.clear_all()
    n1.state.node_dead("node0")
    cluster.pump()
    bob_lines = bob.take()
    assert any(line.split()[2:] == ["alice", "disconnected"] for line in bob_lines
               if line.startswith("LEFT")), bob_lines
    assert "UNPAIRED alice disconnected" in bob_lines
    assert "DECLINED carol gone" in dave.take()
    assert sorted(n1.hub.online) == ["bob", "dave"]
    again = n1.connect()
    again.send("NICK alice")
    cluster.pump()
    assert "READY alice" in again.take()


def test_no_command_is_sent_for_a_user_this_node_does_not_hold() -> None:
    """A user whose connection here is a RemoteConn (another node's, or one
    of this node's orphaned) has its commands sent by no one here: a stray
    call appends nothing and raises nothing (it raised AttributeError:
    RemoteConn has no arrived())."""
    cluster = Cluster(2)
    n0 = cluster.nodes[0]
    ann = n0.user("ann")
    cluster.nodes[1].user("bob")
    bob = n0.hub.find("bob")
    assert bob is not None and isinstance(bob.conn, RemoteConn)
    state = n0.state
    appended = len(cluster.log.entries)
    assert [state.say(bob, "hi"), state.direct(bob, "ann", "hi"), state.pair(bob, "ann"),
            state.accept(bob, "ann"), state.reject(bob, "ann"), state.unpair(bob)] == [None] * 6
    cluster.pump()
    assert len(cluster.log.entries) == appended and state.waiting_bytes == 0
    assert ann.take() == [] and n0.hub.find("bob") is bob


def test_invitation_expires_through_a_tick() -> None:
    cluster = Cluster(2, invite_timeout=5.0)
    a, b = cluster.nodes[0].user("a"), cluster.nodes[1].user("b")
    a.send("PAIR b")
    cluster.pump()
    cluster.clear_all()
    cluster.clock.advance(4.9)
    cluster.pump()
    assert a.take() == b.take() == []
    cluster.clock.advance(0.2)
    cluster.pump()
    assert a.take() == ["DECLINED b timeout"]
    assert b.take() == ["CANCELLED a timeout"]


def test_snapshot_restores_the_same_state() -> None:
    cluster = Cluster(2, invite_timeout=30.0)
    n0, n1 = cluster.nodes
    a, b, c = n0.user("a"), n1.user("b"), n1.user("c")
    a.send("PAIR b")
    cluster.pump()
    b.send("ACCEPT a")
    cluster.pump()
    c.send("PAIR a")  # a is busy: an error, nothing changes
    cluster.pump()
    n0.user("d")
    c.send("PAIR d")
    cluster.pump()
    snapshot = n1.state.replica.snapshot()
    late = Node(cluster, "node9")
    late.state.replica.restore(snapshot)
    late.cursor = len(cluster.log.entries)
    cluster.nodes.append(late)
    assert late.state.replica.snapshot() == snapshot
    cluster.clear_all()
    # The restored replica decides what the others decide.
    cluster.clock.advance(31)
    cluster.pump()
    assert c.take() == ["DECLINED d timeout"]
    assert late.state.replica.snapshot() == n0.state.replica.snapshot()


VERBS = ["MSG", "MSG", "MSG", "DM", "PAIR", "ACCEPT", "REJECT", "UNPAIR", "USERS", "BYE",
         "NICK", "WAIT"]


def _commands(rng: random.Random, count: int) -> list[tuple[int, str]]:
    """(user slot, line) pairs; a slot whose user left comes back with NICK."""
    nicks = [f"n{i}" for i in range(8)]
    out = []
    for step in range(count):
        slot = rng.randrange(len(nicks))
        verb = rng.choice(VERBS)
        other = rng.choice(nicks)
        line = {
            "MSG": f"MSG hello {step}",
            "DM": f"DM {other} psst {step}",
            "PAIR": f"PAIR {other}",
            "ACCEPT": f"ACCEPT {other}",
            "REJECT": f"REJECT {other}",
            "UNPAIR": "UNPAIR",
            "USERS": "USERS",
            "BYE": f"BYE bye {step}",
            "NICK": f"NICK {nicks[slot]}",
            "WAIT": "WAIT",
        }[verb]
        out.append((slot, line))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_cluster_gives_every_user_what_one_server_gives(seed: int) -> None:
    rng = random.Random(seed)
    commands = _commands(rng, 400)
    batch_sizes = [rng.choice([1, 1, 2, 3, 5]) for _ in commands]
    single = Harness(invite_timeout=3.0)
    single.clock.advance(START - single.clock.seconds())
    cluster = Cluster(3, invite_timeout=3.0)

    def run(make: Any, settle: Any, clock: Clock) -> dict[int, list[str]]:
        conns: dict[int, Any] = {}
        transcripts: dict[int, list[str]] = {}

        def collect() -> None:
            for slot, conn in conns.items():
                transcripts[slot].extend(conn.take())
                if conn.protocol.closing and not conn.closed:
                    conn.drop()

        i = 0
        for size in batch_sizes:
            chunk = commands[i:i + size]
            i += size
            used: set[int] = set()
            for slot, line in chunk:
                if slot in used or line.split()[0] in ("USERS", "NICK", "BYE"):
                    # One connection's next line waits for its last answer
                    # in the cluster: keep the orders the same.  USERS is
                    # (and NICK when online, BYE) are answered at once, so commands
                    # of others sent just before it may count as after it
                    # (they are concurrent): settle them first.
                    settle()
                    used.clear()
                used.add(slot)
                if line == "WAIT":
                    continue
                conn = conns.get(slot)
                if conn is None or conn.closed or conn.protocol.closing:
                    conn = conns[slot] = make(slot)
                    transcripts.setdefault(slot, []).append("--new--")
                    conn.send(f"NICK n{slot}")
                    continue
                conn.send(line)
            settle()
            collect()
            settle()
            clock.advance(1.0)
            settle()
            # The cluster applies an expiry with the first event after it (a
            # tick TICK_SLACK later): let that happen before the next lines.
            clock.advance(0.125)  # > TICK_SLACK; exact in binary, whole milliseconds
            settle()
            collect()
        return transcripts

    def make_single(slot: int) -> Any:
        return single.connect()

    def make_cluster(slot: int) -> Any:
        return cluster.nodes[slot % 3].connect()

    def settle_cluster() -> None:
        cluster.pump()
        check_index(cluster)

    expected = run(make_single, lambda: single.clock.advance(0), single.clock)
    got = run(make_cluster, settle_cluster, cluster.clock)
    assert sum(len(lines) for lines in expected.values()) > 500
    for slot in expected:
        a, b = got[slot], expected[slot]
        if a != b:
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                      min(len(a), len(b)))
            raise AssertionError(
                f"slot {slot} differs at {at} (seed {seed}):\n cluster {a[at - 5:at + 5]}"
                f"\n one server {b[at - 5:at + 5]}"
            )
    # Nothing dangles: every replica agrees, and no invitation or pair is half-open.
    states = {node.state.replica.snapshot().split(",", 1)[1] for node in cluster.nodes}
    assert len(states) == 1
    for node in cluster.nodes:
        for user in node.hub.online.values():
            if user.partner is not None:
                assert user.partner.partner is user
            if user.outgoing is not None:
                assert node.hub.is_online(user.outgoing.invitee)


def test_a_node_declared_dead_while_alive_drops_its_users_and_goes_on() -> None:
    cluster = Cluster(2)
    n0, n1 = cluster.nodes
    alice, bob = n0.user("alice"), n1.user("bob")
    lost: list[str] = []

    class Lost(Untold):
        def lost(self) -> None:
            lost.append(n0.state.node)

    n0.state.connections = Lost()
    n1.state.node_dead("node0")  # as after node0 missed its lease
    cluster.pump()
    assert lost and lost[0] != "node0"  # a new identity for what it does next
    assert "LEFT" in bob.take()[0]
    assert sorted(n0.hub.online) == sorted(n1.hub.online) == ["bob"]
    alice.take()
    # The node still works, under its new name, for new users.
    carol = n0.user("carol")
    carol.send("DM bob hello")
    cluster.pump()
    assert bob.take()[-1].endswith("carol bob hello")


def test_input_waits_while_a_command_is_decided() -> None:
    cluster = Cluster(1)
    node = cluster.nodes[0]
    ann = node.user("ann")
    ann.send("MSG one")
    assert ann.reading
    # Much more arrives before the answer: held, then the reading pauses.
    ann.transport.read(b"MSG more\r\n" * 8000)
    assert not ann.reading
    assert [line for line in ann.take() if line.startswith("MSG")] == []
    for _ in range(8002):
        cluster.pump()
        if ann.reading and not ann.protocol.held_or_waiting():
            break
    lines = [line for line in ann.take() if line.startswith("MSG")]
    assert len(lines) == 8001 and lines[0].endswith("ann * one")
    assert ann.reading


def test_half_close_waits_for_the_commands_before_it() -> None:
    """A script piping lines in (C{nc -N}) gets, as from one server, its READY
    and its own lobby message before the close."""
    cluster = Cluster(2)
    other = cluster.nodes[1].user("other")
    conn = cluster.nodes[0].connect()
    conn.take()
    conn.send_raw(b"NICK script\r\nMSG hello\r\n")
    conn.protocol.readConnectionLost()
    assert not conn.protocol.closing
    for _ in range(4):
        cluster.pump()
    lines = conn.take()
    assert lines[0] == "READY script"
    assert lines[-1].endswith("script * hello")
    assert conn.protocol.closing
    conn.drop()
    cluster.pump()
    assert [line.split()[2:] for line in other.take() if line.startswith(("LEFT", "MSG"))] == [
        ["script", "*", "hello"], ["script", "disconnected"]]


def test_a_full_close_after_lines_handles_them_as_one_server_does() -> None:
    """A client that writes NICK, lines and BYE and closes at once, its close
    a full one (an RST: the server's READY hit a closed socket): every line
    held behind its NICK is still decided, in order, and it leaves as its
    BYE says, as on one server (docs/cluster.md; rev-clu F1)."""
    cluster = Cluster(2)
    other = cluster.nodes[1].user("other")
    conn = cluster.nodes[0].connect()
    conn.take()
    conn.send("NICK script", *(f"MSG line{i}" for i in range(20)), "BYE done")
    conn.drop()
    assert not conn.protocol.closing
    for _ in range(25):
        cluster.pump()
    seen = [line.split(" ", 2)[2] for line in other.take()]
    assert seen == ["script", *(f"script * line{i}" for i in range(20)), "script quit done"]
    assert conn.protocol.closing
    assert conn.protocol not in cluster.nodes[0].factory.connections
    assert "script" not in cluster.nodes[0].hub.online
    assert "script" not in cluster.nodes[1].hub.online


@pytest.mark.parametrize("module, not_loaded", [
    # The history's Redis side compares stream ids: not with the replica's
    # code (rev-clu: it imported replica.id_key, and so the replica and hub).
    ("twisted_chat.server.cluster.redishistory",
     ["twisted_chat.server.cluster.replica", "twisted_chat.server.hub"]),
    # The node observes a histogram; only a scrape needs prometheus_client
    # (rev11-shape2: it came with metrics.Buckets).
    ("twisted_chat.server.cluster.node",
     ["prometheus_client", "twisted_chat.server.metrics.counters"]),
])
def test_a_module_loads_only_what_it_uses(module: str, not_loaded: list[str]) -> None:
    """Imported alone, in a fresh interpreter."""
    script = f"import json, sys, {module}\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert module in loaded
    assert sorted(loaded & set(not_loaded)) == []
