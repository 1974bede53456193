"""
Accounts in cluster mode end to end: a private redis-server, real
C{twistd -n chat --redis ...} nodes on loopback (the cluster e2e's helper),
real scrypt on each node's password threads, and the operator's tool on the
cluster's Redis.  One account namespace: whichever node a client is on.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import test_e2e_accounts as e2e_accounts
from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import LineClient, ServerProcess
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture
from twisted_chat.server.accounts.login import UNAVAILABLE_TEXT
from twisted_chat.server.accounts.store import AccountStore

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

# The cluster e2e's fixture, by assignment (as tests/test_cluster_stop_e2e.py
# does): an import under the fixture's own name is a binding that each
# test's parameter of that name "redefines" (ruff F811).
cluster = cluster_fixture

PW = "first-password"


def tool(cwd: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twisted_chat.accounts", *args],
        input=stdin, capture_output=True, text=True, cwd=cwd, timeout=60,
    )


def send_nick(client: LineClient, nick: str, within: float = 5.0) -> str:
    """
    C{NICK nick} until the node no longer says C{RETRY taken} (a nick that
    left on another node is free here once this node has read its leaving,
    a few milliseconds later): the answer.
    """
    deadline = time.monotonic() + within
    while True:
        client.send(f"NICK {nick}")
        answer = client.expect(lambda line: line.startswith(("READY", "RETRY", "PASS")))
        if not answer.startswith("RETRY taken") or time.monotonic() > deadline:
            return answer
        time.sleep(0.01)


def via(c: Cluster) -> Callable[..., LineClient]:
    """The single server's tests' C{connect}, onto the cluster (closed at the end)."""

    def connect(port: int, **kwargs: object) -> LineClient:
        client = LineClient(port, **kwargs)  # type: ignore[arg-type]
        c.clients.append(client)
        return client

    return connect


def free(c: Cluster, node: ServerProcess, nick: str, asked: str | None = None) -> None:
    """Wait until C{node} asks for C{nick}'s password (it is free there);
    C{asked}: the nick as its PASS names it, if not as typed."""
    probe = c.connect(node)
    probe.expect("NICK")
    assert send_nick(probe, nick) == f"PASS {asked or nick}"
    leave(probe)


def attempt(c: Cluster, node: ServerProcess, nick: str, password: str,
            asked: str | None = None) -> tuple[LineClient, str]:
    """tests/test_e2e_accounts.py's NICK and PASS, once C{nick} is free on C{node}."""
    free(c, node, nick, asked)
    return e2e_accounts.attempt(via(c), node.port, nick, password, asked)


def log_in(c: Cluster, node: ServerProcess, nick: str, password: str) -> LineClient:
    free(c, node, nick)
    return e2e_accounts.log_in(via(c), node.port, nick, password)


def leave(client: LineClient) -> None:
    client.send("BYE")
    client.expect("BYE quit")


def test_register_on_one_node_log_in_on_another(cluster: Callable[..., Cluster]) -> None:
    c = cluster(3)
    a, b, n3 = c.nodes
    alice = c.user(a, "alice")
    alice.send(f"REGISTER {PW}")
    assert alice.expect("REGISTERED") == "REGISTERED alice"
    leave(alice)
    # The nick is protected on every node, in any case (PASS names it as
    # its account spells it).
    for node in (b, n3):
        client, answer = attempt(c, node, "ALICE", "wrong-password", "alice")
        assert answer.startswith("RETRY bad-password ")
        leave(client)
    again = log_in(c, b, "alice", PW)
    # PASSWD on node B counts on node C; the old password no longer does.
    again.send("PASSWD second-password")
    assert again.expect("REGISTERED") == "REGISTERED alice"
    leave(again)
    client, answer = attempt(c, n3, "alice", PW)
    assert answer.startswith("RETRY bad-password ")
    leave(client)
    log_in(c, n3, "alice", "second-password")
    # Someone else on another node cannot REGISTER over it or take it.
    bob = c.user(a, "bob")
    bob.send(f"REGISTER {PW}")
    assert bob.expect("REGISTERED") == "REGISTERED bob"
    bob.send(f"REGISTER {PW}")
    assert bob.expect("ERROR").startswith("ERROR registered ")
    # The operator's tool sees both, in the cluster's Redis.
    listed = tool(c.tmp, "list", "--redis", c.url)
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == ["alice", "bob"]


def test_an_operators_reset_ends_the_old_sessions_passwd_on_every_node(
    cluster: Callable[..., Cluster],
) -> None:
    """A thief online on node B with a stolen password; the operator resets
    it with the tool on the cluster's Redis: the thief's PASSWD changes
    nothing, and the operator's password works on node A."""
    c = cluster(2)
    a, b = c.nodes
    added = tool(c.tmp, "add", "--redis", c.url, "alice", stdin=f"{PW}\n")
    assert added.returncode == 0, added.stderr
    thief = log_in(c, b, "alice", PW)
    reset = tool(c.tmp, "passwd", "--redis", c.url, "alice", stdin="operators-password\n")
    assert reset.returncode == 0, reset.stderr
    thief.send("PASSWD thiefs-password")
    assert thief.expect("ERROR").startswith(
        "ERROR not-registered the password was changed since you logged in")
    leave(thief)
    owner = log_in(c, a, "alice", "operators-password")
    owner.send("PASSWD owners-password")  # the owner's own session may
    assert owner.expect("REGISTERED") == "REGISTERED alice"


def test_required_accounts_made_by_the_tool_work_on_every_node(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(2, "--accounts", "required")
    a, b = c.nodes
    added = tool(c.tmp, "add", "--redis", c.url, "Dora", stdin=f"{PW}\n")
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"added an account for Dora in the Redis at {c.url}\n"
    assert PW not in added.stdout + added.stderr
    dora = log_in(c, b, "Dora", PW)
    dora.send(f"REGISTER {PW}")
    assert dora.expect("ERROR").startswith("ERROR registered ")
    # The tool's passwd and remove count at the next login, on any node.
    changed = tool(c.tmp, "passwd", "--redis", c.url, "dora", stdin="other-password\n")
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout == f"changed the password of Dora in the Redis at {c.url}\n"  # as spelled
    leave(dora)
    # No account, a wrong password, the old one: the same answer, on either node.
    for node, nick, password in ((a, "nobody", PW), (b, "Dora", "wrong-password"),
                                 (a, "dora", PW)):
        client, answer = attempt(c, node, nick, password)
        assert answer.startswith("RETRY bad-password ")
        leave(client)
    log_in(c, a, "Dora", "other-password").send("BYE")
    removed = tool(c.tmp, "remove", "--redis", c.url, "DORA")
    assert removed.returncode == 0
    assert removed.stdout == f"removed the account of Dora from the Redis at {c.url}\n"
    client, answer = attempt(c, b, "dora", "other-password")
    assert answer.startswith("RETRY bad-password ")
    assert tool(c.tmp, "list", "--redis", c.url).stdout == ""


def test_register_race_across_nodes_one_account(cluster: Callable[..., Cluster]) -> None:
    """
    A REGISTER still running on node A when its connection drops, and the
    nick taken and registered again on node B at once: two nodes creating
    one nick's account.  Exactly one account results, with the winner's
    password, and node B's user is told which (REGISTERED or ERROR registered).
    """
    c = cluster(2, "--flood-rate", "0")
    a, b = c.nodes
    outcomes = []
    for round_ in range(6):
        nick = f"race{round_}"
        first = c.user(a, nick)
        first.send("REGISTER password-of-a")
        # Reset at once (not a FIN, after which the node would finish the
        # REGISTER first): the REGISTER goes on without its connection.
        first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first.close()
        second = c.connect(b)
        second.expect("NICK")
        answer = send_nick(second, nick)
        if answer == f"PASS {nick}":
            won = "a, before b held the nick"
            winner, loser = "password-of-a", "password-of-b"
        else:
            assert answer == f"READY {nick}"
            second.send("REGISTER password-of-b")
            said = second.expect(lambda line: line.startswith(("REGISTERED", "ERROR")))
            if said == f"REGISTERED {nick}":
                won, winner, loser = "b", "password-of-b", "password-of-a"
            else:
                assert said.startswith("ERROR registered "), said
                won, winner, loser = "a", "password-of-a", "password-of-b"
        outcomes.append(won)
        leave(second)
        client, answer = attempt(c, a, nick, loser)
        assert answer.startswith("RETRY bad-password "), (won, answer)
        leave(client)
        log_in(c, b, nick, winner).send("BYE")
    print("who won each round:", outcomes)


def test_redis_out_of_reach_login_is_retry_unavailable(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(1, "--accounts", "required", node_timeout=3.0)
    [node] = c.nodes
    assert tool(c.tmp, "add", "--redis", c.url, "erin", stdin=f"{PW}\n").returncode == 0
    c.redis.stop()
    node.wait_log("Redis at", timeout=10)
    client, answer = attempt(c, node, "erin", PW)
    assert answer == f"RETRY unavailable {UNAVAILABLE_TEXT}"  # the store, not the accounts
    # It was not a failed attempt, and the tool says so in one line.
    down = tool(c.tmp, "list", "--redis", c.url)
    assert down.returncode == 1 and "cannot reach Redis" in down.stderr
    assert down.stderr.count("\n") == 1
    c.redis.start()
    node.wait_log("Redis is back", timeout=15)
    client.send("NICK erin")
    assert client.readline() == "PASS erin"
    client.send(f"PASS {PW}")
    assert client.readline() == "READY erin"


def test_tool_refuses_db_and_redis_together(tmp_path: Path) -> None:
    done = tool(tmp_path, "list", "--db", "chat.sqlite3", "--redis", "redis://127.0.0.1:1/0")
    assert done.returncode == 2 and "not allowed with" in done.stderr
    bad = tool(tmp_path, "list", "--redis", "http://x")
    assert bad.returncode == 1 and "scheme" in bad.stderr and "Traceback" not in bad.stderr


def test_import_moves_a_single_servers_accounts_into_the_cluster(
    cluster: Callable[..., Cluster],
) -> None:
    c = cluster(1)
    [node] = c.nodes
    for nick, password in (("Alice", "alice-password"), ("bob", "bob-password")):
        assert tool(c.tmp, "add", "--create", nick, stdin=f"{password}\n").returncode == 0
    assert tool(c.tmp, "add", "--redis", c.url, "BOB", stdin=f"{PW}\n").returncode == 0
    done = tool(c.tmp, "import", "--redis", c.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "imported 1 accounts\nleft 1 as the cluster has them: bob\n"
    # The password and the times as they were on the single server.
    [alice] = [a for a in AccountStore(str(c.tmp / "chat.accounts.sqlite3")).list()
               if a.nick == "Alice"]
    listed = tool(c.tmp, "list", "--redis", c.url).stdout.splitlines()
    assert listed[0] == tool(c.tmp, "list").stdout.splitlines()[0]
    assert listed[1].startswith("BOB\t")
    log_in(c, node, "Alice", "alice-password").send("BYE")
    log_in(c, node, "BOB", PW).send("BYE")  # the cluster's own was kept
    again = tool(c.tmp, "import", "--redis", c.url)
    assert again.stdout == "imported 0 accounts\nleft 2 as the cluster has them: Alice bob\n"
    assert alice.password_hash not in done.stdout + again.stdout
    missing = tool(c.tmp, "import", "--db", "nothing.sqlite3", "--redis", c.url)
    assert missing.returncode == 1 and "no accounts file" in missing.stderr


def test_a_node_warns_when_redis_would_lose_the_accounts(
    cluster: Callable[..., Cluster], tmp_path: Path,
) -> None:
    kept = cluster(1)
    (tmp_path / "forgetful").mkdir()
    forgetful = cluster(1, redis=RedisServer(tmp_path / "forgetful", persist=False).start())
    forgetful.nodes[0].wait_log("Redis may lose the accounts: no persistence")
    off = forgetful.node("--accounts", "off")
    c = kept.nodes[0]
    c.wait_log("cluster: state loaded")
    kept.user(c, "probe").send("BYE")  # the check ran before the node took users
    assert "Redis may lose the accounts" not in c.log() + off.log()


NOBODY = "nobody can log in: --accounts required, and there is no account yet; add one with: "


def test_a_required_node_with_no_account_in_redis_warns_that_nobody_can_log_in(
    cluster: Callable[..., Cluster],
) -> None:
    """As one server does at start (ed03176), a node under --accounts
    required says that nobody can log in while the cluster's Redis holds
    no account, with the tool's command (the URL without its password,
    the password file in full: test_cluster_url.py), once it has connected;
    not once there is an account, nor in open mode."""
    c = cluster(0)
    a = c.node("--accounts", "required")
    a.wait_log(NOBODY)
    [line] = [line for line in a.log().splitlines() if NOBODY in line]
    assert line.endswith(f"#warn] {NOBODY}python -m twisted_chat.accounts add --redis {c.url} NICK")
    opened = c.node()  # open mode: nobody is locked out
    c.user(opened, "probe").send("BYE")
    added = tool(c.tmp, "add", "--redis", c.url, "Dora", stdin=f"{PW}\n")
    assert added.returncode == 0, added.stderr
    b = c.node("--accounts", "required")
    log_in(c, b, "Dora", PW).send("BYE")  # its count was answered before the lookup
    assert NOBODY not in opened.log() + b.log()


def test_failed_logins_are_limited_across_nodes(cluster: Callable[..., Cluster]) -> None:
    """5 failures per nick, then one a minute: wherever the guesses land."""
    c = cluster(2)
    a, b = c.nodes
    owner = c.user(a, "frank")
    owner.send(f"REGISTER {PW}")
    assert owner.expect("REGISTERED") == "REGISTERED frank"
    leave(owner)
    for node in (a, b, a, b, a):  # 3 on one node, 2 on the other: each under 5
        client, answer = attempt(c, node, "frank", "wrong-password")
        assert answer.startswith("RETRY bad-password ")
        leave(client)
    client, answer = attempt(c, b, "frank", PW)  # even the right one, now
    assert answer.startswith("BYE flood "), answer
