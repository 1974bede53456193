"""
A node that does not run on its database, end to end (real C{twistd -n
chat --redis ...} nodes and a private redis-server): another retention
than the cluster's (rev11-clu2 M4) and keys of another kind under
C{chat:} (rev11-clu2 L5), no password or a wrong one for a Redis that
needs one, and another --stream-bytes than the cluster's,
stop the start with one line and exit status 1,
touching nothing; C{--set-retention} changes the cluster's retention and
the running nodes follow.  (The checks themselves: tests/test_cluster_config.py.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests import test_cluster_e2e
from tests.redisproc import RedisServer
from tests.serverproc import LOOPBACK, ServerProcess
from tests.test_cluster_e2e import CALM_TIMEOUT, Cluster
from tests.test_cluster_e2e_history import say

pytestmark = test_cluster_e2e.pytestmark
cluster = test_cluster_e2e.cluster  # the fixture: a private redis-server and nodes


def refused(c: Cluster, *args: str, url: str | None = None) -> ServerProcess:
    """A node that must not start: it exits with status 1 (within 15 s)."""
    server = ServerProcess(
        c.tmp, ["--redis", url or c.url, "--node-timeout", str(c.node_timeout), *args])
    c.strays.append(server)
    server.start(wait=False)
    assert server.proc is not None
    assert server.proc.wait(15) == 1, server.log()[-3000:]
    assert server.problems() == [], server.log()[-3000:]
    return server


def zcard(c: Cluster) -> int:
    count = c.redis.call("ZCARD", "chat:history")
    assert isinstance(count, int)
    return count


def test_a_node_with_another_retention_does_not_start_until_it_is_set(
        cluster: Callable[..., Cluster]) -> None:
    c = cluster(1, "--retain-messages", "1000", "--history", "200")
    for nick in ("alice", "carol"):  # 15 each: within one user's flood burst
        say(c.user(c.nodes[0], nick), [f"m{i}" for i in range(15)])
    deadline = time.monotonic() + 10
    while zcard(c) < 30:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The reviewer's node: --retain-messages 10 cut the history to 10.
    late = refused(c, "--retain-messages", "10", "--history", "200")
    line = next(x for x in late.log().splitlines() if "is not the cluster's" in x)
    assert "--retain-messages 10 here, 1000 in the cluster" in line
    assert "--set-retention" in line
    assert "not starting" in late.log()
    assert zcard(c) == 30
    # A newcomer still gets it all.
    bob = c.user(c.nodes[0], "bob")
    assert len([x for x in bob.lines if x.startswith("HISTORY ")]) == 30
    # The deliberate change: one node started with --set-retention; the
    # running node follows at its next heartbeat (and says so).
    c.node("--retain-messages", "10", "--set-retention")
    assert zcard(c) == 10
    c.nodes[0].wait_log("the cluster's history retention changed",
                        timeout=CALM_TIMEOUT / 6 + 5)
    assert "--retain-messages 10 now, 1000 before" in c.nodes[0].log()
    # The old value no longer starts; the new one does.
    refused(c, "--retain-messages", "1000")
    c.node("--retain-messages", "10")


def test_a_node_with_another_stream_bytes_does_not_start_until_the_cluster_s_changes(
        cluster: Callable[..., Cluster]) -> None:
    """Each node checked the stream against its own --stream-bytes: one with
    a larger bound (the default, left in a configuration) let its users
    fill the stream past the others'."""
    c = cluster(1, "--stream-bytes", "1000000")
    late = refused(c)  # the default, 64 MiB
    [line] = [x for x in late.log().splitlines() if "is not the cluster's" in x]
    assert f"--stream-bytes {64 << 20} here, 1000000 in the cluster" in line
    assert "HSET chat:config stream-bytes N" in line
    assert "not starting" in late.log()
    # The change: in Redis; the running node follows at its next heartbeat.
    c.redis.call("HSET", "chat:config", "stream-bytes", 2_000_000)
    c.nodes[0].wait_log("the cluster's --stream-bytes changed",
                        timeout=CALM_TIMEOUT / 6 + 5)
    assert "2000000 now, 1000000 before" in c.nodes[0].log()
    refused(c, "--stream-bytes", "1000000")
    c.user(c.node("--stream-bytes", "2000000"), "alice")


def test_a_database_with_keys_of_another_kind_is_refused(
        cluster: Callable[..., Cluster]) -> None:
    """rev11-clu2 L5: such a node listened, said "Redis ... unreachable
    (WRONGTYPE ...)", retried for ever, and told users the accounts could
    not be checked."""
    c = cluster(0)
    c.redis.call("SET", "chat:events", "not-a-stream")
    node = refused(c, "--retain-messages", "10")
    log = node.log()
    assert "chat:events is a string (the cluster keeps a stream there)" in log
    assert "another application, or another version of twisted-chat" in log
    assert "unreachable" not in log
    assert c.redis.call("KEYS", "*") == ["chat:events"]


def test_a_node_given_no_password_for_a_redis_that_needs_one_is_refused(
        tmp_path: Path, cluster: Callable[..., Cluster]) -> None:
    """rev14-ops LOW 3: such a node logged "unreachable (FirstError[#0,
    [Failure instance: Traceback: ...NOAUTH ...]])", listened, and answered
    every NICK with RETRY unavailable for ever (a TCP health check passed).
    No retry makes a password: it stops at start, with one line saying
    what to give."""
    redis = RedisServer(tmp_path, password="pw-for-test").start()
    c = cluster(0, redis=redis)
    node = refused(c, url=f"redis://{LOOPBACK}:{redis.port}/0")
    log = node.log()
    [line] = [line for line in log.splitlines() if "NOAUTH" in line]
    assert line.endswith(
        f"cluster: Redis at redis://{LOOPBACK}:{redis.port}/0 requires a password and this "
        "node was given none (NOAUTH Authentication required.): give it with "
        "--redis-password-file FILE (or in the --redis URL, redis://:PASSWORD@HOST:PORT/DB)")
    assert "Failure instance" not in log and "unreachable" not in log


def test_a_node_given_a_wrong_password_is_refused(
        tmp_path: Path, cluster: Callable[..., Cluster]) -> None:
    """A typo in the password: the node listened, logged "unreachable (Redis
    error: could not auth: WRONGPASS ...)" and retried for ever, answering
    every NICK with RETRY unavailable.  It stops at start, with one line
    saying what to check; the nodes given the right one run."""
    redis = RedisServer(tmp_path, password="pw-for-test").start()
    c = cluster(1, redis=redis)
    password_file = tmp_path / "redis-password"
    password_file.write_text("pw-for-tset\n")
    url = f"redis://{LOOPBACK}:{redis.port}/0"
    node = refused(c, "--redis-password-file", str(password_file), url=url)
    log = node.log()
    [line] = [line for line in log.splitlines() if "WRONGPASS" in line]
    assert line.endswith(
        f"cluster: Redis at {url} refused this node's password (WRONGPASS invalid "
        "username-password pair or user is disabled.): check the one given with "
        "--redis-password-file FILE (or in the --redis URL) against Redis's requirepass "
        "(or, with a user name in the URL, that ACL user's)")
    assert "pw-for-t" not in log
    assert "Failure instance" not in log and "unreachable" not in log
    c.user(c.nodes[0], "alice")
