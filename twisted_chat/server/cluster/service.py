"""
C{twistd chat --redis URL}: the factory on a L{ClusterState}, and the
service that connects to Redis at start and leaves the cluster at stop;
L{cluster_node} makes both, with the accounts in Redis, for the service
tree (L{twisted_chat.server.service}).
"""

from __future__ import annotations

import atexit
import os
import shlex
import sys
from collections.abc import Callable
from typing import Any

from prometheus_client.registry import CollectorRegistry
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred

from twisted_chat import wire
from twisted_chat.server import logs
from twisted_chat.server.accounts import accountsetup
from twisted_chat.server.accounts.passwordwork import OwnsPasswordWork, PasswordWork
from twisted_chat.server.cluster.accounts import RedisBook, RedisFailures
from twisted_chat.server.cluster.budgets import RedisBuckets
from twisted_chat.server.cluster.metrics import ClusterCollector
from twisted_chat.server.cluster.node import ClusterState, new_node_id
from twisted_chat.server.cluster.redisconn import (
    RedisTarget,
    parse_url,
    redacted,
    with_password_file,
)
from twisted_chat.server.cluster.redislog import RedisLog
from twisted_chat.server.config import ClusterConfig, Mode, ServerConfig
from twisted_chat.server.factory import ChatFactory, hub_settings
from twisted_chat.server.history import History
from twisted_chat.server.hub import User
from twisted_chat.server.metrics import counters
from twisted_chat.server.protocol import ChatProtocol

__all__ = ["ClusterService", "FactoryHooks", "account_tool_args", "cluster_factory", "cluster_node",
           "redis_target"]


def cluster_factory(
    config: ServerConfig, cluster: ClusterConfig, reactor: Any, target: RedisTarget,
) -> tuple[ChatFactory, RedisLog]:
    """The factory on a node of the cluster at C{target}, and its log in Redis."""
    holder: list[ClusterState] = []

    def build(factory: ChatFactory) -> ClusterState:
        state = ClusterState(new_node_id(), factory.lines, factory.history,
                             hub_settings(config), reactor, FactoryHooks(factory),
                             wait=cluster.wait, max_waiting=cluster.max_waiting)
        holder.append(state)
        return state

    # What its connections hold behind commands waiting for Redis is bounded
    # as the commands are, counted apart (docs/cluster.md).
    factory = ChatFactory(config, reactor, History(config.history), state=build,
                          held_input_limit=cluster.max_waiting)
    state = holder[0]
    redis = RedisLog(target, state, reactor, cluster.node_timeout,
                     retain_days=config.retain_days, retain_messages=config.retain_messages,
                     retain_bytes=cluster.retain_bytes, set_retention=cluster.set_retention,
                     stream_bytes=cluster.stream_bytes, lines_due=factory.fanout.due)
    # An address's lobby lines and registrations are counted cluster-wide.
    factory.addresses.share(RedisBuckets(redis.command, reactor))
    return factory, redis


def exit_status(status: int) -> None:
    """End the process with C{status} once twistd is done (its reactor
    stopped, its services too, its log closed): twistd itself always exits
    with 0 after its reactor ran, so the last step at exit is
    C{os._exit(status)}, after the standard streams are flushed.  (Under a
    daemonizing twistd the parent has exited already; the log says why.)"""

    def end() -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(status)

    atexit.register(end)


class FactoryHooks:
    """What the node tells the factory whose connections it holds
    (L{NodeConnections})."""

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory

    def lost(self) -> None:
        """The cluster declared this node dead: its users are told C{BYE shutdown}."""
        bye = "this server lost its place in the cluster"
        for protocol in list(self.factory.connections):
            if protocol.user is not None:
                protocol.write(wire.line("BYE", "shutdown", text=bye))
                protocol.hang_up("shutdown")

    def reloaded(self) -> None:
        self.factory.lines.history_replaced()

    def rebuilt(self) -> None:
        self.factory.lines.state_replaced()

    def rebound(self, conn: Any, user: User) -> None:
        """After a rebuild (docs/cluster.md), a connection holds its user as the
        replica has it now."""
        if isinstance(conn, ChatProtocol):
            conn.user = user

    def displaced(self, conn: Any) -> None:
        """End a connection whose nick went to someone else while Redis lost
        data (told C{BYE shutdown}, unless closing already); the lobby's
        kept lists let go of it now, as at a departure."""
        self.factory.lines.forget_members()
        if isinstance(conn, ChatProtocol):
            conn.hang_up("shutdown")


class ClusterService(OwnsPasswordWork, Service):
    """Connects to Redis at start (in the background: until then, NICK is
    answered C{RETRY unavailable}); at stop, leaves the cluster at once."""

    log = logs.logger()

    def __init__(self, factory: ChatFactory, redis: RedisLog,
                 work: PasswordWork | None = None, tool_args: str = "") -> None:
        self.factory = factory
        self.redis = redis
        self.work = work  # the password threads, when accounts are on
        # The accounts tool's arguments that name this Redis (account_tool_args).
        self.tool_args = tool_args
        redis.refused = self._refused

    def _refused(self, why: str) -> None:
        """The node does not run on this database (the log said why, at
        C{critical}): the process ends, with exit status 1."""
        self.log.critical("twistd chat: not starting (see the line above); exit status 1")
        exit_status(1)
        self.factory.reactor.stop()

    def startService(self) -> None:
        super().startService()
        self._start_work()
        self.log.info(
            "chat server {name!r} starting in cluster mode: Redis {redis}",
            name=self.factory.config.server_name, redis=self.redis.target.display,
        )
        ready = self.redis.start()
        if self.factory.accounts is not None:
            ready.addCallback(lambda _: defer.ensureDeferred(self._check_redis()))

    async def _check_redis(self) -> None:
        """Say once, at start, if nobody can log in (L{_count_accounts}) and
        if Redis is set up to lose the accounts."""
        from twisted_chat.server.cluster.accounts import forgetful

        if self.factory.config.accounts is Mode.REQUIRED:
            await self._count_accounts()
        try:
            found = await forgetful(self.redis.command)
        except Exception as e:
            self.log.info("cluster: cannot read Redis's configuration ({e}); make sure it "
                          "keeps the accounts: persistence, noeviction (docs/cluster.md)", e=e)
            return
        for problem in found:
            self.log.warn("cluster: Redis may lose the accounts: {problem}", problem=problem)

    async def _count_accounts(self) -> None:
        """Under C{--accounts required}, with no account in Redis yet, warn
        as one server does (L{accountsetup.warn_nobody_can_log_in}).  Asked
        once the node has connected (Redis's answer is awaited: nothing
        waits on the reactor), as its first command after."""
        try:
            count = await RedisBook(self.redis.command, self.factory.reactor).count()
        except Exception as e:
            self.log.info("cluster: cannot count the accounts in Redis ({e})", e=e)
            return
        if count == 0:
            accountsetup.warn_nobody_can_log_in(self.tool_args)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        state = self.redis.state
        n = len(self.factory.connections)
        self.log.info("shutting down: saying BYE to {connections}; leaving the cluster",
                      n=n, connections=logs.counted(n, "connection"))
        state.stopping()
        self.factory.addresses.stop_sharing()
        closed = self.factory.shutdown()
        return defer.ensureDeferred(self._finish(closed))

    async def _finish(self, closed: Deferred[None]) -> None:
        try:
            await closed
        finally:
            self._stop_work(None)
        await self.redis.stop()


def redis_target(url: str, password_file: str | None) -> RedisTarget:
    """C{--redis}'s URL, with the password of C{--redis-password-file}; a
    bad one is one line."""
    try:
        target = parse_url(url)
    except ValueError as e:
        raise SystemExit(f"twistd chat: --redis: {e}") from None
    try:
        return with_password_file(target, password_file)
    except ValueError as e:
        raise SystemExit(f"twistd chat: --redis-password-file: {e}") from None


def cluster_node(cluster: ClusterConfig, config: ServerConfig, reactor: Any,
                 target: RedisTarget) -> tuple[ClusterService, Callable[[], CollectorRegistry]]:
    """
    The node on the cluster at C{target}, with the accounts in its Redis, as
    C{cluster} and C{config} (C{twistd chat}'s options) say; and what makes
    the registry its C{--metrics} serves.
    """
    factory, redis = cluster_factory(config, cluster, reactor, target)
    # The one account namespace of the cluster: in its Redis (docs/accounts.md).
    factory.accounts, work = accountsetup.make_accounts(
        config, reactor, lambda work: RedisBook(redis.command, reactor),
        lambda limits: RedisFailures(redis.command, reactor, limits),
        where=f"in the cluster's Redis at {target.display}, shared by every node")

    def registry() -> CollectorRegistry:
        """The node's own figures, and the cluster's under chat_cluster_*."""
        return counters.registry_for(factory.stats, lambda: counters.chat_snapshot(factory),
                                    ClusterCollector(redis.state))

    tool_args = account_tool_args(cluster.redis or "", cluster.redis_password_file)
    return ClusterService(factory, redis, work, tool_args), registry


def account_tool_args(url: str, password_file: str | None) -> str:
    """The accounts tool's arguments that name the Redis at C{url} (as
    C{--redis} gave it, its password shown as *** if it holds one; the
    file C{--redis-password-file} gave, in full), shell-quoted."""
    args = f"--redis {shlex.quote(redacted(url))}"
    if password_file is not None:
        args += f" --redis-password-file {shlex.quote(os.path.abspath(password_file))}"
    return args
