"""
A node's connections to Redis over C{rediss://}, deterministically: the
real TLS layer (Twisted's TLSMemoryBIOProtocol) on StringTransports and a
MemoryReactorClock.  Losing such a connection leaves a reconnection
scheduled (rev19-clu2 #1: the TLS layer raises at an abort after its
loss, and the node never tried again).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from tests.test_cluster_outage import FakeRedis, _history
from tests.test_cluster_unit import Untold
from twisted_chat.server.cluster.listeners import SILENT
from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.cluster.redisconn import parse_url
from twisted_chat.server.cluster.redislog import RedisLog
from twisted_chat.server.hub import HubSettings


def tls_log(reactor: MemoryReactorClock) -> RedisLog:
    state = ClusterState("n", SILENT, _history(), HubSettings(), reactor, Untold())
    return RedisLog(parse_url("rediss://localhost:6399/0"), state, reactor, 15.0)


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
