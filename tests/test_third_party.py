"""
What the server uses of autobahn's and txredisapi's internals, checked on
the installed versions: a rename fails here, at the upgrade, not in
production.  The list of each, and why, is beside its use:
twisted_chat/web/gateway.py ("autobahn internals") and
twisted_chat/server/cluster/redisconn.py's C{connect} (txredisapi's
C{_ready}, and its C{callLater} set to the node's reactor).  And one
behaviour of Twisted's epoll reactor that a stated bound counts on
(twisted_chat/server/limits/heldinput.py's C{HeldInput}).
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Callable

import txredisapi
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import StringTransport

from tests.harness import Harness
from tests.web import wsframes as ws
from tests.web.test_gateway import WsConn, make_gateway
from twisted_chat.web.config import WebConfig

# -- autobahn --------------------------------------------------------------------


def test_autobahn_has_the_read_the_gateway_calls_directly() -> None:
    """ChatWebSocket.dataReceived calls _dataReceived (autobahn's own
    dataReceived formats a debug line's arguments on every read)."""
    assert callable(WebSocketProtocol._dataReceived)


def test_autobahn_counts_a_messages_frames_into_the_length_the_gateway_resets() -> None:
    """The gateway's onMessageBegin replaces autobahn's: it resets
    message_data_total_length, which autobahn's onMessageFrameBegin (still
    called) adds each frame's length to for the 1009 check.  Frames each
    under the limit, over it together, are refused; and failedByMe, which
    the gateway reads at a message's end, is autobahn's flag for that."""
    h = Harness()
    gateway = make_gateway(h, max_message=1000)
    alice = WsConn(h, gateway)
    alice.register("alice")
    assert alice.socket.failedByMe is False
    alice.send_frame(ws.frame(b"MSG " + b"x" * 596, fin=False))
    assert alice.socket.message_data_total_length == 600
    alice.send_frame(ws.frame(b"y" * 500, opcode=0, fin=False))
    alice.frames()
    assert alice.closes == [1009]
    assert alice.socket.failedByMe is True


def close_frames_sent(start: Callable[[WsConn], None]) -> list[int | None]:
    """The codes of the close frames sent through ChatWebSocket.sendCloseFrame
    once C{start} has made the server close alice's WebSocket."""
    h = Harness()
    alice = WsConn(h, make_gateway(h))
    alice.register("alice")
    sent: list[int | None] = []
    send_close_frame = alice.socket.sendCloseFrame

    def recorded(code: int | None = None, reasonUtf8: bytes | None = None,
                 isReply: bool = False) -> None:
        sent.append(code)
        send_close_frame(code, reasonUtf8, isReply)

    alice.socket.sendCloseFrame = recorded  # type: ignore[method-assign]
    start(alice)
    return sent


def test_autobahn_sends_its_close_frames_through_the_method_the_gateway_times() -> None:
    """ChatWebSocket.sendCloseFrame times a close the server starts (the
    close grace): autobahn's sendClose (the chat connection's close) and
    its failing of a connection (a 1009) both go through it."""
    assert close_frames_sent(lambda alice: alice.send("BYE")) == [1000]
    too_big = ws.frame(b"", length=WebConfig().max_message + 1)[:14]
    assert close_frames_sent(lambda alice: alice.send_frame(too_big)) == [1009]


# -- txredisapi --------------------------------------------------------------------


def redis_protocol(password: str | None, reply_timeout: float | None = None,
                   ) -> txredisapi.BaseRedisProtocol:
    """As the cluster's connect makes one (on txredisapi's line parser,
    whether hiredis is importable or not)."""
    return txredisapi.BaseRedisProtocol(charset="utf-8", password=password, dbid=None,
                                        convertNumbers=False, username=None,
                                        replyTimeout=reply_timeout)


def test_txredisapi_says_ready_only_once_auth_succeeded() -> None:
    """connect reads the private _ready: the public `connected` is set as
    soon as the TCP connection is, before AUTH and SELECT are answered."""
    proto = redis_protocol("secret")
    assert proto._ready is False
    transport = StringTransport()
    proto.makeConnection(transport)
    assert b"AUTH" in transport.value()
    assert proto.connected and proto._ready is False
    proto.dataReceived(b"+OK\r\n")
    assert proto._ready is True


def test_txredisapi_is_ready_at_once_without_auth_and_not_after_a_loss() -> None:
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    proto = redis_protocol(None)
    proto.makeConnection(StringTransport())
    assert proto._ready is True
    proto.connectionLost(Failure(ConnectionDone()))
    assert proto._ready is False


def test_txredisapi_times_replies_with_the_protocols_own_call_later() -> None:
    """connect sets proto.callLater to the node's reactor, so the reply
    timeout runs on it (a task.Clock in tests): txredisapi must still look
    it up on the protocol, not on the global reactor."""
    from twisted.internet.task import Clock

    clock = Clock()
    proto = txredisapi.RedisProtocol(charset="utf-8", password=None, dbid=None,
                                     convertNumbers=False, username=None, replyTimeout=5)
    proto.callLater = clock.callLater
    proto.makeConnection(StringTransport())
    proto.execute_command("PING")
    assert [call.getTime() for call in clock.getDelayedCalls()] == [5.0]


def test_txredisapi_hands_the_rest_of_a_read_to_set_line_mode() -> None:
    """redisconn's _WholeReads hands on a whole read in its turn by taking
    over setLineMode, which txredisapi calls after each bulk string with the
    rest of the read (and there defers it to a later turn), and feeding
    that rest to dataReceived itself (tests/test_cluster_intake.py)."""
    proto = redis_protocol(None)
    proto.makeConnection(StringTransport())
    rests: list[bytes] = []
    proto.setLineMode = lambda extra=b"": rests.append(extra)
    replies: list[object] = []
    for _ in range(3):  # the third stays unanswered: the rest is not kept as well
        proto.execute_command("GET", "k").addCallback(replies.append)
    proto.dataReceived(b"$1\r\na\r\n$1\r\nb\r\n")
    assert (replies, rests) == (["a"], [b"$1\r\nb\r\n"])
    proto.line_mode = 1
    proto.dataReceived(rests.pop())
    assert replies == ["a", "b"]
    proto.dataReceived(b"")
    assert replies == ["a", "b"] and b"".join(rests) == b""  # nothing left to hand on


def test_txredisapi_hands_each_reply_to_reply_received_before_the_rest() -> None:
    """redisconn's _WholeReads logs what a reply's handling raises in
    replyReceived, which txredisapi must call with each whole reply from
    inside its parse of a read, before setLineMode is given the rest: so
    the rest is still handed on (tests/test_cluster_intake.py)."""
    proto = redis_protocol(None)
    proto.makeConnection(StringTransport())
    seen: list[tuple[str, object]] = []
    proto.replyReceived = lambda reply: seen.append(("reply", reply))
    proto.setLineMode = lambda extra=b"": seen.append(("rest", extra))
    proto.dataReceived(b"$1\r\na\r\n$1\r\nb\r\n")
    assert seen == [("reply", "a"), ("rest", b"$1\r\nb\r\n")]


def test_txredisapi_subscriber_protocol_is_its_own_methods_on_redis_protocol() -> None:
    """redisconn puts SubscriberProtocol's methods on the line parser,
    BaseRedisProtocol (its base, RedisProtocol, is HiredisProtocol when
    hiredis is importable, which skips _WholeReads): they must be all it
    adds, none calling super(), and BaseRedisProtocol must parse with
    LineReceiver (setLineMode after each bulk string)."""
    assert txredisapi.SubscriberProtocol.__bases__ == (txredisapi.RedisProtocol,)
    own = vars(txredisapi.SubscriberProtocol)
    assert {"replyReceived", "subscribe", "messageReceived"} <= set(own)
    for value in own.values():
        code = getattr(value, "__code__", None)
        assert code is None or "__class__" not in code.co_freevars, value
    assert txredisapi.LineReceiver in txredisapi.BaseRedisProtocol.__mro__
    assert "dataReceived" not in vars(txredisapi.BaseRedisProtocol)
    assert "setLineMode" in vars(txredisapi.LineReceiver)


def test_txredisapi_fails_a_command_with_its_timeout_error_before_it_aborts() -> None:
    """redisconn notes the reply timeout from the command's
    txredisapi.TimeoutError, as the loss's reason does not say it over TLS
    (ConnectionLost, not ConnectionAborted: rr21-c #2): the command must
    have failed so when the connection is aborted."""
    from twisted.internet.task import Clock

    clock = Clock()
    proto = redis_protocol(None, reply_timeout=5)
    proto.callLater = clock.callLater
    failed: list[object] = []
    seen_at_abort: list[list[object]] = []

    class Transport(StringTransport):
        def abortConnection(self) -> None:
            seen_at_abort.append(list(failed))
            super().abortConnection()

    proto.makeConnection(Transport())
    proto.execute_command("PING").addErrback(lambda why: failed.append(why.type))
    clock.advance(5)
    assert seen_at_abort == [[txredisapi.TimeoutError]]


# -- Twisted's epoll reactor -------------------------------------------------------


def _read_in_one_turn(writing: bool, n: int = 4) -> int:
    """C{n} connections readable at once, on a reactor of their own (real
    sockets on loopback); the first read pauses all of them, as the server's
    HeldInput does past its ceiling.  How many are read in that turn."""
    reactor = EPollReactor()
    servers: list[protocol.Protocol] = []
    reads: list[int] = []

    class Server(protocol.Protocol):
        def connectionMade(self) -> None:
            servers.append(self)
            if writing:  # more than the kernel takes: Twisted waits to write the rest
                self.transport.write(b"x" * (8 << 20))

        def dataReceived(self, data: bytes) -> None:
            reads.append(len(data))
            for server in servers:
                server.transport.pauseProducing()

    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface="127.0.0.1")
    clients = []
    try:
        for _ in range(n):
            client = socket.create_connection(("127.0.0.1", port.getHost().port))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # it reads nothing
            clients.append(client)
        deadline = time.monotonic() + 10
        while len(servers) < n and time.monotonic() < deadline:
            reactor.doIteration(0.1)
        assert len(servers) == n
        writers = reactor.getWriters()
        assert all((server.transport in writers) is writing for server in servers)
        for client in clients:
            client.sendall(b"y" * 1000)
        for server in servers:  # every one readable before the turn
            poller = select.poll()
            poller.register(server.transport.socket, select.POLLIN)
            assert poller.poll(10_000)
        reactor.doIteration(0)  # one epoll_wait, and its batch
        return len(reads)
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.transport.abortConnection()
        port.stopListening()
        reactor.runUntilCurrent()  # the aborts and the port's close
        reactor.removeAll()
        if reactor.waker is not None:
            reactor.waker.connectionLost(None)
        reactor._poller.close()


def test_epoll_still_reads_a_socket_paused_within_its_batch_if_it_has_output_waiting() -> None:
    """The bound on held input past its ceiling counts one read for each
    connection the reactor had already found readable in the turn it was
    crossed: epoll hands over a batch of ready sockets, and pausing one
    within the batch keeps it in the reactor's set while it also waits to
    write (epollreactor._remove), so doPoll still calls its doRead.  One
    with nothing to write is not read."""
    assert _read_in_one_turn(writing=False) == 1
    assert _read_in_one_turn(writing=True) == 4
