"""
C{ChatFactory}: admission.  It builds connections and enforces the
connection limits (whom to refuse, and whether a refused TLS connection is
told why: L{limits.refusals} tells it; the handshake pool,
L{limits.handshakes}); the hub's
decisions become lines in its L{LineListener} (docs/fanout.md, "Module
layout").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import LogLevel

from twisted_chat import __version__, wire
from twisted_chat.server import logs
from twisted_chat.server.accounts.login import Accounts
from twisted_chat.server.config import ClusterConfig, ServerConfig
from twisted_chat.server.context import ConnectionContext
from twisted_chat.server.history import History
from twisted_chat.server.hub import Hub, HubSettings, User
from twisted_chat.server.limits.addresses import AddressBook, AddressPolicy, Refused
from twisted_chat.server.limits.deadlines import Deadlines
from twisted_chat.server.limits.flood import FloodMeter
from twisted_chat.server.limits.handshakes import HandshakePool, Handshaking, handshake_key
from twisted_chat.server.limits.heldinput import (
    HELD_BEFORE_READY_LINES,
    HELD_LINE_COST,
    HeldInput,
)
from twisted_chat.server.limits.refusals import (
    POLITE_TLS_BURST,
    POLITE_TLS_WINDOW,
    Closing,
    RefusalProtocol,
)
from twisted_chat.server.lines import LineListener
from twisted_chat.server.metrics.counters import Stats
from twisted_chat.server.output import heaptrim
from twisted_chat.server.output.fanout import Backlog, LobbyFanout, reactor_backlog
from twisted_chat.server.output.outputwatch import DrainWatch, OutputBudget
from twisted_chat.server.output.sendqueue import DirectPass
from twisted_chat.server.protocol import ChatProtocol
from twisted_chat.server.session import Session
from twisted_chat.server.state import ChatState, LocalState

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress


def _always() -> bool:
    return True


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
        # A dict (values None), not a set: a set's table takes up to 4 times
        # its size (52 bytes a connection at 10,000), a dict's 30.
        self.connections: dict[ChatProtocol, None] = {}
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
        # Refused connections waiting out their close grace (RefusalProtocol).
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
        # Before the fan-outs, which call its check within a turn.
        self.output_budget = OutputBudget(reactor, config.sendq_total, lambda: self.connections,
                                          trim=heaptrim.load())
        # --sendq-total 0: no tally for the queues to count into, no look.
        budget = self.output_budget if config.sendq_total else None
        # The fan-out and the lines come before the state, whose hub tells
        # the lines: both read self.state when used, never before it is set.
        # The JOINED and LEFT lines for this process's users in a pair, who
        # are not in the lobby's batch: gathered as the lobby's are, and
        # sent at the end of the same reads (beside the lobby's).
        self.paired_fanout = LobbyFanout(
            reactor, lambda: [user.conn for user in self.state.paired_users()],
            config.fanout_delay, backlog, on_batch=self.stats.fanned_out_paired,
            output_budget=budget)
        self.fanout = LobbyFanout(reactor, lambda: self.state.lobby_members(),
                                  config.fanout_delay, backlog,
                                  on_batch=self.stats.fanned_out, write_all=self._direct_pass,
                                  beside=self.paired_fanout, output_budget=budget)
        # (self.state read by a C call, not a lambda's frame: once a lobby line.)
        self.lines = LineListener(partial(getattr, self, "state"), self.fanout, self.history,
                                  self.stats, config, self._direct_pass, self.paired_fanout)
        if state is None:
            self.state: ChatState = LocalState(Hub(reactor, self.history, self.lines,
                                                   hub_settings(config), self.repeats))
        else:
            self.state = state(self)
        self.drain = DrainWatch(reactor, config.sendq_timeout, lambda: self.connections)
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
            on_lost=self.connection_lost, leave=self.leave,
            handed=budget.handed if budget is not None else None)

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
        self.connections[protocol] = None
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
        return RefusalProtocol(why, self.reactor, self.config.close_grace, self.config.rcvbuf,
                               message, self.closing_refusals, polite, stats)

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
        del self.connections[protocol]
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
        self.state.hub.close()
        return all_closed
