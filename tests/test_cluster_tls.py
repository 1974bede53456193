"""
A node's connections to Redis over C{rediss://}, deterministically: the
real TLS layer (Twisted's TLSMemoryBIOProtocol) on StringTransports and a
MemoryReactorClock.  Losing such a connection leaves a reconnection
scheduled (rev19-clu2 #1: the TLS layer raises at an abort after its
loss, and the node never tried again); a failed handshake is logged as
what it is (rev19-clu2 #2: it was "unreachable (Not connected)").
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import ssl
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from tests.redisproc import RedisServer, redis_has_tls
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture
from tests.test_cluster_outage import FakeRedis, _history
from tests.test_cluster_read import unbounded_log
from tests.test_cluster_unit import Untold
from tests.test_e2e_tls import self_signed
from twisted_chat.server.cluster.listeners import SILENT
from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.cluster.redisconn import _Commands, _Subscriber, parse_url, timed_out
from twisted_chat.server.cluster.redislog import RedisLog
from twisted_chat.server.hub import HubSettings

cluster = cluster_fixture  # the fixture, shared


def tls_log(reactor: MemoryReactorClock, url: str = "rediss://localhost:6399/0") -> RedisLog:
    state = ClusterState("n", SILENT, _history(), HubSettings(), reactor, Untold())
    return unbounded_log(parse_url(url), state, reactor)


def opened(reactor: MemoryReactorClock) -> tuple[Any, StringTransport]:
    """The last connection the node asked for, made: its outermost protocol
    (TLS around txredisapi's) on a StringTransport (the handshake starts)."""
    factory = reactor.tcpClients[-1][2]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    reactor.advance(0)
    return proto, transport


def test_a_lost_tls_connection_leaves_a_reconnection_scheduled() -> None:
    reactor = MemoryReactorClock()
    log = tls_log(reactor)
    log.start()
    cmd, _ = opened(reactor)
    reader, _ = opened(reactor)
    assert log._cmd is not None and log._retry is None  # asking Redis, unanswered
    # Redis goes (restarted, say): the subscriber's loss is seen first, and
    # its TLS layer forgets its TLS connection (an abort on it raises); the
    # command connection's loss drops both.
    for proto in (reader, cmd):
        proto.connectionLost(Failure(ConnectionLost()))
    with pytest.raises(AttributeError):
        reader.abortConnection()
    assert log._retry is not None  # the node tries again
    reactor.advance(log._retry.getTime() - reactor.seconds())
    assert len(reactor.tcpClients) == 3  # and does


class RaisingTransport(StringTransport):
    """A transport whose abort raises (as TLS's does after a loss)."""

    def abortConnection(self) -> None:
        raise AttributeError("'NoneType' object has no attribute 'shutdown'")


def test_a_reconnection_is_scheduled_whatever_the_abort_does() -> None:
    reactor = MemoryReactorClock()
    log = tls_log(reactor)
    cmd = FakeRedis()
    cmd.transport, cmd.connected = RaisingTransport(), 1  # type: ignore[assignment]
    log._cmd, log.state.available = cmd, True
    with pytest.raises(AttributeError):
        log.lost(log._generation)
    assert log._retry is not None


def handshake(client: Any, to_client: StringTransport, cert: Path, key: Path) -> None:
    """Run the TLS handshake between C{client} (the node's connection) and
    a server holding C{cert}, in memory, until one side gives up; then
    the node's side sees its connection closed."""
    options = ssl.CertificateOptions(
        privateKey=serialization.load_pem_private_key(key.read_bytes(), None),
        certificate=x509.load_pem_x509_certificate(cert.read_bytes()))
    server = TLSMemoryBIOFactory(options, False, Factory.forProtocol(Protocol)).buildProtocol(None)
    to_server = StringTransport()
    server.makeConnection(to_server)
    for _ in range(10):
        for wire, side in ((to_client, server), (to_server, client)):
            data = wire.value()
            wire.clear()
            if data:
                side.dataReceived(data)
    assert to_client.disconnecting  # the node gave up
    client.connectionLost(Failure(ConnectionDone()))


@pytest.mark.parametrize(("host", "ca", "said"), [
    # The system's CAs do not know a self-signed certificate.
    ("localhost", None, "TLS: Redis's certificate is not trusted (certificate verify "
     "failed; this node trusts the system's CAs)"),
    # ca= names a CA that did not sign Redis's certificate.
    ("localhost", "other", "TLS: Redis's certificate is not trusted (certificate verify "
     "failed; this node trusts the ca= file's CAs)"),
    ("redis.example", "redis's", "TLS: Redis's certificate is not for redis.example"),
])
def test_a_failed_tls_handshake_is_logged_as_what_failed(
        tmp_path: Path, logged: list[str], host: str, ca: str | None, said: str) -> None:
    key, cert = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    trusted = {None: None, "redis's": cert, "other": self_signed(tmp_path / "other")[1]}[ca]
    query = f"?ca={trusted}" if trusted is not None else ""
    reactor = MemoryReactorClock()
    log = tls_log(reactor, f"rediss://{host}:6399/0{query}")
    log.start()
    cmd, to_cmd = opened(reactor)
    opened(reactor)  # the subscriber: it waits for its own handshake
    handshake(cmd, to_cmd, cert, key)
    down = [line for line in logged if "unreachable" in line]
    assert down == [f"cluster: Redis at {log.target.display} unreachable ({said}); new "
                    "registrations are refused, reconnecting with backoff"]
    assert log._retry is not None


def test_redis_not_speaking_tls_is_logged_as_a_failed_handshake(logged: list[str]) -> None:
    reactor = MemoryReactorClock()
    log = tls_log(reactor)
    log.start()
    cmd, to_cmd = opened(reactor)
    opened(reactor)
    assert to_cmd.value()  # the ClientHello; a plain Redis answers:
    cmd.dataReceived(b"-ERR Protocol error: invalid multibulk length\r\n")
    assert to_cmd.disconnecting
    cmd.connectionLost(Failure(ConnectionDone()))
    down = [line for line in logged if "unreachable" in line]
    assert len(down) == 1 and "unreachable (TLS handshake failed: " in down[0], down


@pytest.mark.parametrize("subscriber", [False, True])
def test_a_connection_its_reply_timeout_ended_is_known_though_tls_says_lost(
        subscriber: bool) -> None:
    """rr21-c #2: over TLS, the abort of txredisapi's reply timeout is
    reported as ConnectionLost (the TLS layer's shutdown), not
    ConnectionAborted, and the node logged it as Redis cutting its
    subscriber, or as Redis unreachable.  The connection notes the
    command's TimeoutError instead; a loss with no timeout is not one."""
    for timeout in (True, False):
        clock = Clock()
        kind = _Subscriber if subscriber else _Commands
        proto = kind(charset="utf-8", convertNumbers=False, replyTimeout=5)
        proto.callLater = clock.callLater
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.execute_command("PING").addErrback(lambda _: None)
        clock.advance(5 if timeout else 4)
        assert transport.disconnected is timeout
        proto.connectionLost(Failure(ConnectionLost()))  # as TLS reports either
        assert timed_out(proto) is timeout


@pytest.mark.e2e
@pytest.mark.skipif(not redis_has_tls(), reason="redis-server is built without TLS")
def test_a_rediss_nodes_own_reply_timeout_is_logged_as_that(
        tmp_path: Path, cluster: Callable[..., Cluster]) -> None:
    """rr21-c #2, end to end: a real rediss:// Redis stopped (SIGSTOP) past
    the node's reply timeout (2 s, a third of --node-timeout 6): the node
    says it ended its connection itself (it said Redis unreachable, as its
    TLS layer reports the abort as ConnectionLost), and is back after."""
    from tests.test_e2e_tls import self_signed

    key, cert = self_signed(tmp_path)
    redis = RedisServer(tmp_path, tls=(key, cert)).start()
    c = cluster(1, node_timeout=6.0, redis=redis,
                url=f"rediss://localhost:{redis.port}/0?ca={cert}")
    (node,) = c.nodes
    alice = c.user(node, "alice")
    alice.sync()
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    try:
        alice.send("MSG unanswered")  # its append waits for Redis
        node.wait_log("new registrations are refused", timeout=15)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    down = [line for line in node.log().splitlines() if "new registrations are refused" in line]
    assert "connection to Redis at" in down[0] and "within its reply timeout" in down[0], down
    node.wait_log("Redis is back", timeout=20)
