"""
C{ChatFactory}: admission.  It builds connections and enforces the
connection limits (refusals, TLS politeness, the handshake pool); the hub's
decisions become lines in its L{LineListener} (docs/fanout.md, "Module
layout").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as Structural

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from twisted_chat import __version__, wire
from twisted_chat.server import logs
from twisted_chat.server.accounts.login import Accounts
from twisted_chat.server.config import ClusterConfig, ServerConfig
from twisted_chat.server.context import ConnectionContext
from twisted_chat.server.history import History
from twisted_chat.server.hub import Hub, HubSettings, User
from twisted_chat.server.limits.addresses import (
    AddressBook,
    AddressPolicy,
    HandshakePool,
    Refused,
    handshake_key,
)
from twisted_chat.server.limits.closing import Linger, close_within
from twisted_chat.server.limits.deadlines import Deadlines
from twisted_chat.server.limits.descriptors import REFUSALS_CLOSING
from twisted_chat.server.limits.flood import FloodMeter
from twisted_chat.server.limits.heldinput import (
    HELD_BEFORE_READY_LINES,
    HELD_LINE_COST,
    HeldInput,
)
from twisted_chat.server.limits.socketbuffers import fix_receive_buffer
from twisted_chat.server.lines import LineListener
from twisted_chat.server.metrics.counters import Stats
from twisted_chat.server.output.fanout import Backlog, LobbyFanout, reactor_backlog
from twisted_chat.server.output.outputwatch import DrainWatch, OutputBudget
from twisted_chat.server.output.sendqueue import DirectPass
from twisted_chat.server.protocol import ChatProtocol
from twisted_chat.server.session import Session
from twisted_chat.server.state import ChatState, LocalState
from twisted_chat.tcpinfo import socket_of
from twisted_chat.wire import ErrorCode

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress


class Handshaking(Structural):
    """What the handshake pool holds: a connection that has no nick yet."""

    pool_key: str

    def __hash__(self) -> int: ...

    def evict(self) -> None:
        """Close it, to make room in the pool."""


#: Refused TLS connections told why (C{ERROR server-full}, C{BYE full}, or
#: the web port's 503), per address bucket and window (s): the first
#: refusals of a client that reconnects now and then.  Telling costs the
#: server a full TLS handshake, so past them a refusal is aborted before it
#: (L{ChatFactory.refusal}).  A refused plain TCP connection costs an accept
#: and a write, so it is always told, as an --exempt address always is.
POLITE_TLS_BURST = 3
POLITE_TLS_WINDOW = 10.0


class _Refusal(Protocol):
    """
    What a connection over a limit talks to: two lines (or C{message}),
    then the close, and an abort if the peer has not completed the close
    within the grace (L{close_within}), its receive buffer fixed at
    C{rcvbuf} meanwhile (the close reads nothing).  Under TLS, only while
    C{polite} (L{POLITE_TLS_BURST}): else it is aborted before the handshake.
    """

    def __init__(self, why: str, clock: IReactorTime, grace: float, rcvbuf: int,
                 message: bytes | None, closing: Closing, polite: Callable[[], bool],
                 stats: Stats | None = None) -> None:
        self.why = why
        self.stats = stats
        self.clock = clock
        self.grace = grace
        self.rcvbuf = rcvbuf
        self.message = message
        self.closing = closing
        self.polite = polite
        self._linger: Linger | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        if ISSLTransport.providedBy(transport) and not self.polite():
            # (TLS as twisted.web tells it: ISSLTransport.)  The TLS layer
            # (TLSMemoryBIOProtocol) calls this before it starts its handshake, and
            # starts none once aborted: no byte read, none written.  Telling
            # why took a whole handshake (an RSA signature, an ECDHE) per
            # refused connection: one address got 500-660 a second, half a
            # core, past every per-address limit (rev11).
            transport.abortConnection()
            return
        fix_receive_buffer(socket_of(transport), self.rcvbuf)
        message = self.message
        # The chat's lines (ERROR server-full, BYE full) are counted as any
        # line a connection is handed; the web port's 503 is HTTP, which
        # the chat's metrics do not count.
        stats = self.stats if message is None else None
        if message is None:
            message = wire.error(ErrorCode.SERVER_FULL, self.why) + wire.line("BYE", "full")
        if stats is not None:
            stats.wrote(message)
        transport.write(message)
        closing = self.closing
        if closing.count >= closing.limit:
            # As many refusals as may wait out the grace already do (refused
            # TLS peers that never answer: one address held 1,087 sockets so):
            # this one is aborted now, its lines most likely unsent.
            transport.abortConnection()
            if stats is not None:
                stats.count_discarded(len(message))
            return
        closing.count += 1
        self._linger = close_within(transport, self.clock, self.grace)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._linger is not None:
            self.closing.count -= 1
            if self._linger.active():
                self._linger.cancel()
        self._linger = None


def _always() -> bool:
    return True


class Closing:
    """The refused connections waiting out their close grace: C{count} of at
    most C{limit} (L{descriptors.REFUSALS_CLOSING}, counted in the
    descriptors kept besides --max-clients)."""

    __slots__ = ("count", "limit")

    def __init__(self, limit: int = REFUSALS_CLOSING) -> None:
        self.count = 0
        self.limit = limit


FULL = "the server is full; try again later"

# The held input's bound (ChatFactory's held_input_limit) by default.
_CLUSTER_DEFAULTS = ClusterConfig()


def hub_settings(config: ServerConfig) -> HubSettings:
    """The hub's settings from the server's (the cluster's replicas use them too)."""
    return HubSettings(
        invite_timeout=config.invite_timeout,
        log_messages=config.log_messages,
        max_invites=config.max_invites,
        max_invites_per_source=config.max_invites_per_ip,
    )


class ChatFactory(ServerFactory):
    """Builds connections and enforces the connection limits."""

    log = logs.logger()

    def __init__(
        self,
        config: ServerConfig,
        reactor: Any,
        history: History | None = None,
        backlog: Backlog | None = None,
        state: Callable[[ChatFactory], ChatState] | None = None,
        accounts: Accounts | None = None,
        steady: Callable[[], float] = time.monotonic,
        held_input_limit: int = _CLUSTER_DEFAULTS.max_waiting,
    ) -> None:
        """
        @param steady: a clock the system clock's steps do not move, for the
            stall watch (L{twisted_chat.server.limits.stalls.StallWatch}); a test
            gives its fake clock's C{seconds}.
        @param backlog: tells the fan-out whether the reactor has work waiting
            (default: L{reactor_backlog}, where the reactor can say).
        @param state: makes where the chat's state lives, given this factory
            (its C{lines} are the hub's listener); by default, this
            process's own L{Hub} (L{LocalState}); cluster mode passes its
            own (docs/cluster.md).
        @param held_input_limit: what all connections together may hold
            behind commands decided elsewhere (L{HeldInput}): a cluster
            node's is its C{--redis-queue}; one server's, that option's default.
        """
        self.config = config
        self.reactor = reactor
        # None: accounts are off (PASS, REGISTER and PASSWD: accounts-off).
        self.accounts = accounts
        self.history = history if history is not None else History(config.history)
        # Lines an address can cause over and over, limited per address
        # (logs.Repeats); the hub's pairing lines too.
        self.repeats = logs.Repeats(reactor)
        self.connections: set[ChatProtocol] = set()
        # The input they hold behind commands decided elsewhere, all together.
        self.held_input = HeldInput(held_input_limit, lambda: self.connections, reactor,
                                    HELD_BEFORE_READY_LINES * (config.max_line + HELD_LINE_COST),
                                    watch_stalls=config.flood_rate > 0, steady=steady)
        # Connections that count against --max-clients but are not chat
        # connections (yet): the web port's HTTP connections
        # (twisted_chat.web.admission; see hold_other).
        self.other_connections = 0
        # Of the connections, the WebSockets (for --metrics).
        self.websockets: set[ChatProtocol] = set()
        # Per-address limits (docs/security.md), and the connections still
        # choosing a nick, overall.
        self.addresses = AddressBook(AddressPolicy.from_config(config), reactor)
        self.handshaking: HandshakePool[Handshaking] = HandshakePool(config.handshake_limit)
        # Refused connections waiting out their close grace (_Refusal).
        self.closing_refusals = Closing()
        # The refused TLS connections told why (the rest cost no handshake),
        # per address bucket (POLITE_TLS_BURST).  Not self.repeats: log lines
        # never push an address's refusals out of what it remembers.
        self.polite_refusals = logs.Repeats(reactor, window=POLITE_TLS_WINDOW,
                                            burst=POLITE_TLS_BURST)
        if backlog is None:
            backlog = reactor_backlog(reactor)
        # Flood control's rule; each connection holds only its own count.
        self.flood = FloodMeter(config.flood_rate, config.flood_burst)
        # The chat/1 commands of every connection (docs/fanout.md, "Module layout").
        self.session = Session(self)
        # Counters for --metrics; kept whether or not they are served.
        self.stats = Stats()
        self._direct_pass = DirectPass() if config.direct_send else None
        # The fan-out and the lines come before the state, whose hub tells
        # the lines: both read self.state when used, never before it is set.
        # The JOINED and LEFT lines for this process's users in a pair, who
        # are not in the lobby's batch: gathered as the lobby's are, and
        # sent at the end of the same reads (beside the lobby's).
        self.paired_fanout = LobbyFanout(
            reactor, lambda: [user.conn for user in self.state.paired_users()],
            config.fanout_delay, backlog, on_batch=self.stats.fanned_out_paired)
        self.fanout = LobbyFanout(reactor, lambda: self.state.lobby_members(),
                                  config.fanout_delay, backlog,
                                  on_batch=self.stats.fanned_out, write_all=self._direct_pass,
                                  beside=self.paired_fanout)
        self.lines = LineListener(lambda: self.state, self.fanout, self.history, self.stats,
                                  config, self._direct_pass, self.paired_fanout)
        if state is None:
            self.state: ChatState = LocalState(Hub(reactor, self.history, self.lines,
                                                   hub_settings(config), self.repeats))
        else:
            self.state = state(self)
        self.hub = self.state.hub
        self.drain = DrainWatch(reactor, config.sendq_timeout, lambda: self.connections)
        self.output_budget = OutputBudget(reactor, config.sendq_total, lambda: self.connections)
        # Every connection's idle deadline, on one reactor timer.
        self.deadlines = Deadlines(reactor)
        self.greeting = wire.line(
            "HELLO",
            wire.PROTOCOL_VERSION,
            text=f"{config.server_name} (twisted-chat {__version__})",
        ) + wire.line("NICK")
        # What each connection knows of this server (ChatProtocol.ctx).
        self.context: ConnectionContext[ChatProtocol] = ConnectionContext(
            config=config, clock=reactor, fanout=self.fanout,
            batch_of=self.lines.batch_of, flood=self.flood,
            deadlines=self.deadlines, held_input=self.held_input, session=self.session,
            repeats=self.repeats, greeting=self.greeting, stats=self.stats,
            watches=(self.drain, self.output_budget), on_registered=self.registered,
            on_lost=self.connection_lost, leave=self.leave)

    # -- connections -----------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None, port: str = "chat") -> Protocol:
        """A connection from C{addr} to a C{--port} (C{port} "chat"), or a
        WebSocket on C{--web} ("web", from the gateway at its upgrade)."""
        host: str | None = getattr(addr, "host", None)
        if self.is_full():
            return self.refusal(host, FULL)
        try:
            limits = self.addresses.admit(host)
        except Refused as e:
            return self.refusal(host, str(e), limit=e.limit)
        protocol = ChatProtocol(self.context, host, limits, handshake_key(limits, host))
        # A full handshake pool makes room rather than refuse: the oldest
        # connection of the address holding most of it goes.
        self.make_room()
        self.handshaking.add(protocol.pool_key, protocol)
        self.connections.add(protocol)
        self.stats.count_accepted(port)
        if port == "web":
            self.websockets.add(protocol)
        # It provides IProtocol without subclassing Protocol (for __slots__),
        # which is all Twisted asks of what buildProtocol returns.
        return cast(Protocol, protocol)

    def is_full(self) -> bool:
        """Whether --max-clients is reached: the chat connections and the
        others (L{hold_other}) together."""
        return len(self.connections) + self.other_connections >= self.config.max_clients

    def hold_other(self, connection: Handshaking) -> None:
        """
        Count C{connection}, which is not a chat connection (yet), against
        --max-clients and in the handshake pool under its C{pool_key}; a
        full pool makes room first, as for a chat connection.  The caller
        has checked L{is_full}.
        """
        self.make_room()
        self.handshaking.add(connection.pool_key, connection)
        self.other_connections += 1

    def release_other(self, connection: Handshaking) -> None:
        """C{connection}, held by L{hold_other}, counts no more."""
        self.handshaking.discard(connection.pool_key, connection)
        self.other_connections -= 1

    def make_room(self) -> None:
        """Before one more joins a full handshake pool: evict its victims."""
        for victim in self.handshaking.make_room():
            self.handshaking.discard(victim.pool_key, victim)
            victim.evict()

    def refusal(self, host: str | None, why: str, message: bytes | None = None,
                counted: str = "refused", limit: str = "max_clients") -> Protocol:
        """
        A connection from C{host} refused for C{why}, logged and counted
        (as C{counted}: the web port's HTTP connections are told apart; and
        by the C{limit} it is over): the protocol that tells it (C{message},
        by default C{ERROR server-full} and C{BYE full}) and closes; under
        TLS, past the address's few polite refusals (L{POLITE_TLS_BURST}), one
        that aborts the connection before its handshake.
        """
        stats = self.stats
        stats.disconnected(counted)
        stats.count_refusal(limit)
        key = self.addresses.log_key(host)
        self.repeats.log(self.log, LogLevel.warn, key, "refused", "refused {host}: {why}",
                         host=host, why=why)
        # Decided only under TLS (at connectionMade: whether it is TLS is
        # not known here), so a plain TCP refusal spends no polite one.
        if host is None or self.addresses.exempt(host):
            polite: Callable[[], bool] = _always
        else:
            polite = partial(self.polite_refusals.within, key, "refused-tls")
        return _Refusal(why, self.reactor, self.config.close_grace, self.config.rcvbuf, message,
                        self.closing_refusals, polite, stats)

    def registered(self, protocol: ChatProtocol) -> None:
        """C{protocol} has a nick: it leaves the handshake's limits."""
        self.addresses.registered(protocol.limits)
        self.handshaking.discard(protocol.pool_key, protocol)
        self.stats.count_login()

    def leave(self, user: User, reason: str, text: str) -> None:
        """C{user}'s connection ends it: it leaves the chat's state."""
        self.state.leave(user, reason, text)

    def connection_lost(self, protocol: ChatProtocol) -> None:
        if protocol not in self.connections:
            return
        self.connections.discard(protocol)
        self.websockets.discard(protocol)
        self.handshaking.discard(protocol.pool_key, protocol)
        self.addresses.closed(protocol.limits, handshaking=protocol.user is None)
        if not self.connections:
            self.drain.stop()
            self.output_budget.stop()
            self.held_input.stalls.stop()
        if not self.connections and self._all_closed is not None:
            closed, self._all_closed = self._all_closed, None
            closed.callback(None)

    _all_closed: defer.Deferred[None] | None = None

    def shutdown(self) -> defer.Deferred[None]:
        """
        Say C{BYE shutdown} to everyone and close; each connection that has
        not closed after the grace period is aborted (see
        L{ChatProtocol.hang_up}).
        """
        self.fanout.shutdown()
        self.paired_fanout.shutdown()
        if not self.connections:
            return defer.succeed(None)
        self._all_closed = defer.Deferred()
        protocols = list(self.connections)
        bye = wire.line("BYE", "shutdown", text="the server is shutting down")
        for protocol in protocols:
            protocol.write(bye)
        all_closed = self._all_closed
        for protocol in protocols:
            # Only the log sees this reason: nobody is left to tell.
            protocol.hang_up("shutdown")
        self.hub.close()
        return all_closed
