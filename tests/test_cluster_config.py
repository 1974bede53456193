"""
What a node checks of its Redis database at each connection
(twisted_chat/server/cluster/redisconfig.py), on a real Redis (the shared
C{redis} fixture) with the node's log (L{RedisLog}) in this process:

  - one retention for the cluster's one history (rev11-clu2 M4): the first
    node records its C{--retain-*} in C{chat:config}; a node started with
    other values does not start (and prunes nothing), naming both;
    C{--set-retention} changes the cluster's, and a running node follows;
  - keys of another kind under C{chat:} (rev11-clu2 L5): another
    application's database is refused at start, named as such, not
    "unreachable"; met while running, it is logged as what it is;
  - a password Redis refuses (WRONGPASS): the same, at start and while
    running.

(The processes, exit status and all: tests/test_cluster_config_e2e.py.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import txredisapi  # type: ignore[import-untyped]
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.test_cluster_e2e_history import said_now
from tests.test_cluster_outage import AnsweringRedis
from tests.test_cluster_read import unbounded_log
from tests.test_cluster_unit import Untold
from twisted_chat.server.cluster.listeners import SILENT
from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.cluster.redisconfig import CONFIG, Retention
from twisted_chat.server.cluster.redisconn import PasswordRefused, _setup_failed, parse_url
from twisted_chat.server.cluster.redislog import RedisLog
from twisted_chat.server.history import History
from twisted_chat.server.hub import HubSettings

needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

MIB = 1 << 20


class Node:
    """A node's log on the real reactor, connected to C{redis}; C{refused}
    fires with the reason if it does not run on the database."""

    def __init__(self, redis: RedisServer, name: str, url: str | None = None,
                 **options: Any) -> None:
        from twisted.internet import reactor

        self.state = ClusterState(name, SILENT, History(100), HubSettings(), reactor,
                                  Untold())
        self.log = unbounded_log(parse_url(url or redis.url), self.state, reactor,
                                 **options)
        self.refused: Deferred[str] = Deferred()
        self.log.refused = self.refused.callback

    async def outcome(self) -> str | None:
        """C{None} once started, or why it refused."""
        from twisted.internet import reactor

        done: Deferred[str | None] = Deferred()

        def first(value: str | None) -> None:
            if not done.called:
                done.callback(value)

        self.log.start().addCallback(lambda _: first(None))
        self.refused.addCallback(first)
        done.addTimeout(10.0, reactor)
        return await done

    async def stop(self) -> None:
        await self.log.stop(grace=0.0)


def config(redis: RedisServer) -> dict[str, str]:
    reply = redis.call("HGETALL", CONFIG)
    return dict(zip(reply[::2], reply[1::2], strict=True))


def history(redis: RedisServer, n: int) -> None:
    """C{n} lobby messages in the history, said an hour ago."""
    import time

    start = time.time() - 3600
    for i in range(n):
        said_now(redis, start + i, 0, "old", f"line {i}")


@needs_redis
@pytest_twisted.ensureDeferred
async def test_the_first_node_records_its_retention_and_the_next_agrees(
        redis: RedisServer) -> None:
    first = Node(redis, "a", retain_messages=1000, retain_bytes=256 * MIB)
    assert await first.outcome() is None
    assert config(redis) == {"retain-days": "0", "retain-messages": "1000",
                             "retain-bytes": str(256 * MIB), "stream-bytes": "0"}
    # The same values (no bound by days given as None here, 0 there): it starts.
    second = Node(redis, "b", retain_days=None, retain_messages=1000,
                  retain_bytes=256 * MIB)
    assert await second.outcome() is None
    await first.stop()
    await second.stop()


@needs_redis
@pytest.mark.parametrize("cluster, node, said", [
    ({"retain_messages": 1000}, {"retain_messages": 10},
     "--retain-messages 10 here, 1000 in the cluster"),
    ({"retain_days": 30.0}, {"retain_days": 0.5},
     "--retain-days 0.5 here, 30 in the cluster"),
    ({"retain_days": 30.0}, {},
     "--retain-days not given (no bound) here, 30 in the cluster"),
    ({"retain_bytes": 256 * MIB}, {"retain_bytes": MIB},
     f"--retain-bytes {MIB} here, {256 * MIB} in the cluster"),
])
@pytest_twisted.ensureDeferred
async def test_a_node_with_another_retention_does_not_start_and_prunes_nothing(
        redis: RedisServer, cluster: dict[str, Any], node: dict[str, Any],
        said: str) -> None:
    """rev11-clu2 M4: a node started with --retain-messages 10 cut the
    cluster's history from 54 lines to 10, silently, for good."""
    first = Node(redis, "a", **cluster)
    assert await first.outcome() is None
    await first.stop()
    history(redis, 54)
    recorded = config(redis)
    late = Node(redis, "b", **node)
    why = await late.outcome()
    assert why is not None and said in why, why
    assert "does not start" in why and "--set-retention" in why
    assert redis.call("ZCARD", "chat:history") == 54  # nothing pruned
    assert config(redis) == recorded
    assert not late.state.available and late.log._stopped
    await late.stop()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_set_retention_changes_the_cluster_s_and_a_running_node_follows(
        redis: RedisServer, logged: list[str]) -> None:
    running = Node(redis, "a", retain_messages=1000)
    assert await running.outcome() is None
    history(redis, 54)
    changer = Node(redis, "b", retain_messages=10, set_retention=True)
    assert await changer.outcome() is None
    assert config(redis)["retain-messages"] == "10"
    assert redis.call("ZCARD", "chat:history") == 10  # pruned at its start
    assert any("--set-retention: the cluster's history retention is now this node's: "
               "--retain-messages 10 now, 1000 before" in line for line in logged)
    # The running node's next heartbeat: it prunes by the cluster's now.
    await running.log.pruning.follow(running.log._cmd)
    assert running.log.pruning.retention.messages == 10
    assert any("the cluster's history retention changed" in line
               and "--retain-messages 10 now, 1000 before" in line for line in logged)
    # A node started with the old values now does not start.
    old = Node(redis, "c", retain_messages=1000)
    why = await old.outcome()
    assert why is not None and "--retain-messages 1000 here, 10 in the cluster" in why
    for node in (running, changer, old):
        await node.stop()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_retention_deleted_or_spoilt_by_hand(redis: RedisServer,
                                                     logged: list[str]) -> None:
    """Deleted: recorded again at the next heartbeat.  Malformed: a start
    stops with how to mend it; a running node says so once and prunes by
    its own meanwhile."""
    node = Node(redis, "a", retain_messages=500)
    assert await node.outcome() is None
    redis.call("DEL", CONFIG)
    await node.log.pruning.follow(node.log._cmd)
    assert config(redis)["retain-messages"] == "500"
    redis.call("HSET", CONFIG, "retain-messages", "lots")
    for _ in range(2):
        await node.log.pruning.follow(node.log._cmd)
    said = [line for line in logged if "retain-messages 'lots', not a number" in line]
    assert len(said) == 1 and "prunes by --retain-days not given (no bound), --retain-messages " \
        "500" in said[0] and node.state.available
    assert node.log.pruning.retention.messages == 500
    late = Node(redis, "b", retain_messages=500)
    why = await late.outcome()
    assert why is not None and f"HSET {CONFIG} retain-messages N" in why
    await node.stop()
    await late.stop()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_heartbeat_during_a_reload_keeps_the_node_running(
        redis: RedisServer, logged: list[str]) -> None:
    """A heartbeat is a running node's, even while it reloads its snapshot
    (reading.started is False then: events it never read were trimmed): a
    malformed retention or --stream-bytes is logged and the node keeps its
    own, as at any other heartbeat.  The retention's follow was given
    reading.started, --stream-bytes's not: a malformed retention met by a
    heartbeat in that window raised Misconfigured and the node dropped its
    connections (to reconnect as one starting, which refuses to run); met
    a moment later it was only logged."""
    node = Node(redis, "a", retain_messages=500, stream_bytes=MIB)
    assert await node.outcome() is None
    redis.call("HSET", CONFIG, "retain-messages", "lots", "stream-bytes", "lots")
    node.log.reading.started = False  # as while _missed reloads
    try:
        await node.log._beat_once()
    finally:
        node.log.reading.started = True
    for said in ("retain-messages 'lots', not a number", "stream-bytes 'lots', not a number"):
        assert len([line for line in logged if said in line]) == 1, logged
    assert node.log.pruning.retention.messages == 500 and node.log.stream_bound.bytes == MIB
    assert node.state.available and node.log._cmd is not None
    await node.stop()


def test_retention_values_round_trip() -> None:
    own = Retention.of(2.5, 0, 1000)
    assert own.values() == ("2.5", "0", "1000")
    assert Retention.read([None, None, None], own) == own
    assert Retention.read(["2.5", "0", "1000"], Retention.of(None, 7, None)) == own
    assert str(own) == "--retain-days 2.5, --retain-messages 0 (no bound), --retain-bytes 1000"
    assert own.differences(own, "here", "there") == ""


# -- one --stream-bytes -------------------------------------------------------------


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_node_with_another_stream_bytes_does_not_start(redis: RedisServer) -> None:
    """Each node's append script checked the one stream against its own
    bound, never compared: one with a larger bound (or none) let its users
    fill the stream past the others'."""
    first = Node(redis, "a", stream_bytes=64 * MIB)
    assert await first.outcome() is None
    assert config(redis)["stream-bytes"] == str(64 * MIB)
    recorded = config(redis)
    for other, said in [(MIB, f"--stream-bytes {MIB} here, {64 * MIB} in the cluster"),
                        (None, f"--stream-bytes 0 (no bound) here, {64 * MIB} in the cluster")]:
        late = Node(redis, "b", stream_bytes=other)
        why = await late.outcome()
        assert why is not None and said in why, why
        assert "does not start" in why and "HSET chat:config stream-bytes N" in why
        assert not late.state.available and late.log._stopped
        await late.stop()
    assert config(redis) == recorded
    same = Node(redis, "c", stream_bytes=64 * MIB)
    assert await same.outcome() is None
    for node in (first, same):
        await node.stop()


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_running_node_follows_the_cluster_s_stream_bytes(
        redis: RedisServer, logged: list[str]) -> None:
    """Changed in Redis (HSET): followed at the next heartbeat, said once;
    deleted: recorded again; malformed: a start stops with how to mend it,
    a running node says so once and keeps its bound."""
    node = Node(redis, "a", stream_bytes=64 * MIB)
    assert await node.outcome() is None
    redis.call("HSET", CONFIG, "stream-bytes", MIB)
    for _ in range(2):
        await node.log.stream_bound.follow(node.log._cmd)
    assert node.log.stream_bound.bytes == MIB
    said = [line for line in logged if "the cluster's --stream-bytes changed" in line]
    assert len(said) == 1 and f"{MIB} now, {64 * MIB} before" in said[0], said
    redis.call("HDEL", CONFIG, "stream-bytes")
    await node.log.stream_bound.follow(node.log._cmd)
    assert config(redis)["stream-bytes"] == str(MIB)  # the one it follows
    assert node.log.stream_bound.bytes == MIB
    redis.call("HSET", CONFIG, "stream-bytes", "lots")
    for _ in range(2):
        await node.log.stream_bound.follow(node.log._cmd)
    said = [line for line in logged if "stream-bytes 'lots', not a number" in line]
    assert len(said) == 1 and f"keeps --stream-bytes {MIB}" in said[0], said
    assert node.log.stream_bound.bytes == MIB and node.state.available
    late = Node(redis, "b", stream_bytes=MIB)
    why = await late.outcome()
    assert why is not None and "HSET chat:config stream-bytes N" in why, why
    await node.stop()
    await late.stop()


# -- keys of another kind ---------------------------------------------------------


@needs_redis
@pytest.mark.parametrize("key, command, said", [
    ("chat:events", ("SET", "chat:events", "not-a-stream"),
     "chat:events is a string (the cluster keeps a stream there)"),
    ("chat:accounts", ("RPUSH", "chat:accounts", "x"),
     "chat:accounts is a list (the cluster keeps a hash there)"),
    ("chat:config", ("SET", "chat:config", "x"),
     "chat:config is a string (the cluster keeps a hash there)"),
])
@pytest_twisted.ensureDeferred
async def test_a_database_with_keys_of_another_kind_is_refused_at_start(
        redis: RedisServer, logged: list[str], key: str, command: tuple[str, ...],
        said: str) -> None:
    """rev11-clu2 L5: it was logged as "Redis ... unreachable (WRONGTYPE
    ...)" and retried for ever, users told the accounts could not be
    checked."""
    redis.call(*command)
    node = Node(redis, "a", retain_messages=10)
    why = await node.outcome()
    assert why is not None and said in why, why
    assert "another application, or another version of twisted-chat" in why
    assert not any("unreachable" in line for line in logged)
    assert any(said in line for line in logged)
    # Nothing of the node's was written there.
    assert redis.call("KEYS", "*") == [key]
    await node.stop()


def test_keys_of_another_kind_met_while_running_are_logged_as_such(
        logged: list[str]) -> None:
    """While the node runs (it has users): not refused; logged as what it is
    (once, not as Redis unreachable), the node retrying until the database
    is right again."""
    clock, state, log, refused = _clocked()
    foreign = False

    class Foreign(AnsweringRedis):
        def execute_command(self, *args: Any) -> Deferred[Any]:
            if args == ("TYPE", "chat:events"):
                self.commands.append(args)
                return succeed("string")
            return super().execute_command(*args)

    async def new_connection(reply_timeout: float, subscriber: bool = False) -> Any:
        return Foreign() if foreign else AnsweringRedis()

    log._new_connection = new_connection  # type: ignore[method-assign]
    log.start()
    assert state.available
    foreign = True
    # A command met the foreign key (WRONGTYPE): the connection is given up.
    log._beat_failed(_wrongtype(), log._generation)
    assert not state.available
    for _ in range(30):
        clock.advance(1.0)  # reconnections: each finds chat:events a string
    assert not state.available and not refused
    wrong = [line for line in logged if "holds keys of another kind" in line]
    assert len(wrong) == 2, wrong  # WRONGTYPE's text, then the check's
    assert "chat:events is a string" in wrong[1]
    assert not any("unreachable" in line for line in logged)
    foreign = False  # the key deleted
    clock.advance(10.0)
    assert state.available
    log._stopped = True


def test_noauth_met_while_running_is_logged_as_such_not_as_a_failure_repr(
        logged: list[str]) -> None:
    """rev14-ops LOW 3: a Redis restarted with a password, met while the node
    runs, through a gathered command (defer.FirstError): logged as what to
    give, once, not "unreachable (FirstError[#0, [Failure instance:
    Traceback..." and the node goes on retrying (it is not refused)."""
    from twisted.internet.defer import FirstError
    from twisted.python.failure import Failure

    _, state, log, refused = _clocked()

    async def new_connection(reply_timeout: float, subscriber: bool = False) -> Any:
        return AnsweringRedis()

    log._new_connection = new_connection  # type: ignore[method-assign]
    log.start()
    assert state.available
    noauth = Failure(txredisapi.ResponseError("NOAUTH Authentication required."))
    log._beat_failed(Failure(FirstError(noauth, 0)), log._generation)
    assert not state.available and not refused
    said = [line for line in logged if "NOAUTH" in line]
    assert len(said) == 1, said
    assert ("requires a password and this node was given none (NOAUTH Authentication "
            "required.): give it with --redis-password-file FILE") in said[0]
    assert not any("Failure instance" in line for line in logged)
    log._stopped = True


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_wrong_password_is_refused_at_start(tmp_path: Path,
                                                    logged: list[str]) -> None:
    """A typo in the password: the node retried for ever ("unreachable
    (Redis error: could not auth: WRONGPASS ...)"), listening while it
    turned every NICK away.  No retry makes the password right: it is
    refused at start, with one line saying what to check."""
    redis = RedisServer(tmp_path, password="right", persist=False).start()
    try:
        node = Node(redis, "a", url=redis.url.replace(":right@", ":wrong@"))
        why = await node.outcome()
        assert why == (
            f"Redis at {parse_url(redis.url).display} refused this node's password "
            "(WRONGPASS invalid username-password pair or user is disabled.): check the "
            "one given with --redis-password-file FILE (or in the --redis URL) against "
            "Redis's requirepass (or, with a user name in the URL, that ACL user's)")
        said = [line for line in logged if "WRONGPASS" in line]
        assert said == [f"cluster: {why}"], said
        assert not any("unreachable" in line for line in logged)
        await node.stop()
    finally:
        redis.stop()


@pytest.mark.parametrize("error, refused", [
    ("Redis error: could not auth: WRONGPASS invalid username-password pair or user "
     "is disabled.", True),
    ("Redis error: could not auth: ERR invalid password", True),  # before Redis 6
    # A password given to a Redis that has none: it may be given one yet.
    ("Redis error: could not auth: ERR AUTH <password> called without any password "
     "configured for the default user. Are you sure your configuration is correct?",
     False),
    ("Redis error: could not set dbid=3: ERR DB index is out of range", False),
    (None, False),
])
def test_which_failed_set_up_is_a_refused_password(error: str | None,
                                                   refused: bool) -> None:
    failed = _setup_failed(error)
    assert isinstance(failed, ConnectionError)
    assert isinstance(failed, PasswordRefused) is refused
    # The operator's tool quotes it (accounts.open_book): txredisapi's line.
    assert str(failed) == (error or "the connection closed during set-up")
    if isinstance(failed, PasswordRefused):
        assert error is not None and failed.reply == error.split(": ", 2)[2]


def test_a_password_refused_while_running_is_logged_as_such_and_retried(
        logged: list[str]) -> None:
    """A password changed under a running node (its connections are
    dropped, its reconnections refused): not refused, as at start; logged
    once as what to check, not as Redis unreachable, and retried until the
    password is right again."""
    clock, state, log, refused = _clocked("redis://:pw@127.0.0.1/0")
    rotated = False
    attempts = 0

    async def new_connection(reply_timeout: float, subscriber: bool = False) -> Any:
        nonlocal attempts
        attempts += 1
        if rotated:
            raise PasswordRefused(
                "Redis error: could not auth: WRONGPASS invalid username-password pair "
                "or user is disabled.",
                "WRONGPASS invalid username-password pair or user is disabled.")
        return AnsweringRedis()

    log._new_connection = new_connection  # type: ignore[method-assign]
    log.start()
    assert state.available
    rotated = True
    log.lost(log._generation)
    before = attempts
    for _ in range(30):
        clock.advance(1.0)
    assert attempts - before > 3  # retried
    assert not state.available and not refused
    said = [line for line in logged if "WRONGPASS" in line]
    assert len(said) == 1, said
    assert ("refused this node's password (WRONGPASS invalid username-password pair or "
            "user is disabled.): check the one given with --redis-password-file") in said[0]
    assert said[0].endswith("new registrations are refused, retrying with backoff")
    # The loss itself was said as such, before; the refusals are not.
    unreachable = [line for line in logged if "unreachable" in line]
    assert len(unreachable) == 1 and "(connection lost)" in unreachable[0], unreachable
    rotated = False  # the password set right again
    clock.advance(10.0)
    assert state.available
    log._stopped = True


def _clocked(url: str = "redis://127.0.0.1/0") -> tuple[Clock, ClusterState, RedisLog,
                                                         list[str]]:
    """A node's log on a L{Clock}, with the reasons it was refused."""
    clock = Clock()
    state = ClusterState("n", SILENT, History(10), HubSettings(), clock, Untold())
    log = unbounded_log(parse_url(url), state, clock)
    refused: list[str] = []
    log.refused = refused.append
    return clock, state, log, refused


def _wrongtype() -> Any:
    from twisted.python.failure import Failure

    return Failure(txredisapi.ResponseError(
        "WRONGTYPE Operation against a key holding the wrong kind of value"))


def test_set_retention_is_for_cluster_mode_only() -> None:
    from twisted.python import usage

    from twisted_chat.server.service import Options

    with pytest.raises(usage.UsageError, match="--set-retention is for cluster mode"):
        Options().parseOptions(["--set-retention"])
    options = Options()
    options.parseOptions(["--redis", "redis://127.0.0.1/0", "--set-retention"])
    assert options["set-retention"]
