"""
C{ChatFactory}: builds connections, enforces the connection limits, and is
the hub's L{twisted_chat.server.hub.Listener}: every hub decision becomes
lines here.  Lobby lines go through the L{LobbyFanout} (docs/fanout.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, cast
from typing import Protocol as Structural

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from twisted_chat import __version__, wire
from twisted_chat.server import logs
from twisted_chat.server.accounts.login import Accounts
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.context import ConnectionContext
from twisted_chat.server.history import Entry, History, newest_within
from twisted_chat.server.hub import Hub, HubSettings, Invitation, State, User
from twisted_chat.server.limits.addresses import (
    AddressBook,
    AddressPolicy,
    HandshakePool,
    Refused,
    handshake_key,
)
from twisted_chat.server.limits.closing import close_within
from twisted_chat.server.limits.deadlines import Deadlines
from twisted_chat.server.limits.descriptors import REFUSALS_CLOSING
from twisted_chat.server.limits.flood import FloodMeter
from twisted_chat.server.limits.heldinput import (
    HELD_BEFORE_READY_LINES,
    HELD_INPUT_TOTAL,
    HELD_LINE_COST,
    HeldInput,
)
from twisted_chat.server.metrics.counters import Stats
from twisted_chat.server.output.fanout import Backlog, LobbyFanout, reactor_backlog
from twisted_chat.server.output.outputwatch import DrainWatch, OutputBudget
from twisted_chat.server.output.sendqueue import DirectPass
from twisted_chat.server.protocol import ChatProtocol
from twisted_chat.server.session import Session
from twisted_chat.server.state import ChatState, LocalState
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
    within the grace (L{close_within}).  Under TLS, only while C{polite}
    (L{POLITE_TLS_BURST}): else it is aborted before the handshake.
    """

    def __init__(self, why: str, clock: IReactorTime, grace: float,
                 message: bytes | None, closing: Closing, polite: Callable[[], bool],
                 stats: Stats | None = None) -> None:
        self.why = why
        self.stats = stats
        self.clock = clock
        self.grace = grace
        self.message = message
        self.closing = closing
        self.polite = polite
        self._abort_call: IDelayedCall | None = None

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
        self._abort_call = close_within(transport, self.clock, self.grace)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._abort_call is not None:
            self.closing.count -= 1
            if self._abort_call.active():
                self._abort_call.cancel()
        self._abort_call = None


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


def hub_settings(config: ServerConfig) -> HubSettings:
    """The hub's settings from the server's (the cluster's replicas use them too)."""
    return HubSettings(
        invite_timeout=config.invite_timeout,
        log_messages=config.log_messages,
        max_invites=config.max_invites,
        max_invites_per_source=config.max_invites_per_ip,
    )


class ChatFactory(ServerFactory):
    """Builds connections and turns the hub's decisions into lines."""

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
    ) -> None:
        """
        @param steady: a clock the system clock's steps do not move, for the
            stall watch (L{twisted_chat.server.limits.stalls.StallWatch}); a test
            gives its fake clock's C{seconds}.
        @param backlog: tells the fan-out whether the reactor has work waiting
            (default: L{reactor_backlog}, where the reactor can say).
        @param state: makes where the chat's state lives, given this factory
            (the hub's listener); by default, this process's own L{Hub}
            (L{LocalState}); cluster mode passes its own (docs/cluster.md).
        """
        self.config = config
        self.reactor = reactor
        # None: accounts are off (PASS, REGISTER and PASSWD: accounts-off).
        self.accounts = accounts
        self.history = history if history is not None else History(config.history)
        # Lines an address can cause over and over, limited per address
        # (logs.Repeats); the hub's pairing lines too.
        self.repeats = logs.Repeats(reactor)
        if state is None:
            self.state: ChatState = LocalState(Hub(reactor, self.history, self,
                                                   hub_settings(config), self.repeats))
        else:
            self.state = state(self)
        self.hub = self.state.hub
        self.connections: set[ChatProtocol] = set()
        # The input they hold behind commands decided elsewhere, all together
        # (a cluster node's --redis-queue: cluster_factory sets it).
        self.held_input = HeldInput(HELD_INPUT_TOTAL, lambda: self.connections, reactor,
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
        self.fanout = LobbyFanout(reactor, self.state.lobby_members, config.fanout_delay,
                                  backlog, on_batch=self.stats.fanned_out,
                                  write_all=self._direct_pass)
        self.drain = DrainWatch(reactor, config.sendq_timeout, lambda: self.connections)
        self.output_budget = OutputBudget(reactor, config.sendq_total, lambda: self.connections)
        # Every connection's idle deadline, on one reactor timer.
        self.deadlines = Deadlines(reactor)
        self._roster: bytes | None = None
        self._user_lines: dict[str, bytes] = {}  # by nick key, each encoded once
        self._history_block: bytes | None = None
        # The last pair's end: the hub's list of missed entries, and its lines.
        self._missed: tuple[Sequence[Entry], bytes] | None = None
        self.greeting = wire.line(
            "HELLO",
            wire.PROTOCOL_VERSION,
            text=f"{config.server_name} (twisted-chat {__version__})",
        ) + wire.line("NICK")
        # What each connection knows of this server (ChatProtocol.ctx).
        self.context: ConnectionContext[ChatProtocol] = ConnectionContext(
            config=config, clock=reactor, fanout=self.fanout, flood=self.flood,
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
        return _Refusal(why, self.reactor, self.config.close_grace, message,
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

    # -- what the hub's decisions become ------------------------------------------

    def roster(self) -> bytes:
        """The C{USER} lines and the closing C{USERS}, encoded once per change."""
        if self._roster is None:
            lines = self._user_lines
            keys = self.hub.keys_in_order
            self._roster = b"".join([lines[key] for key in keys]) + wire.line(
                "USERS", str(len(keys))
            )
        return self._roster

    def _user_changed(self, user: User) -> None:
        """Encode C{user}'s USER line for its current state; drop the list."""
        words = [user.nick, user.state.value]
        if self.config.show_addresses:
            words.append(user.address)
        line = wire.line("USER", *words)
        if self._user_lines.get(user.key) != line:
            # Unchanged, the list stays the same object (both sides of a
            # pair that ends are sent one list: see unpaired).
            self._user_lines[user.key] = line
            self._roster = None

    def history_block(self) -> bytes:
        """The C{HISTORY} lines a newcomer gets, encoded once per message."""
        if self._history_block is None:
            # The newest that fit in --history-bytes: a newcomer's eight
            # bytes of NICK must not buy it the whole history of long lines.
            self._history_block = history_lines(self.history.recent(),
                                                self.config.history_bytes)
        return self._history_block

    def history_replaced(self) -> None:
        """The history's entries were replaced (a cluster node that loads
        them again, docs/cluster.md): the newcomers' block is built anew."""
        self._history_block = None

    def state_replaced(self) -> None:
        """The hub and the history changed without telling this listener
        (a cluster node's replica rebuilt after Redis lost data): the user
        list and the newcomers' block are built anew."""
        self.history_replaced()
        self._user_lines = {}
        for user in self.hub.online.values():
            self._user_changed(user)
        self._roster = None

    # -- the hub's Listener ------------------------------------------------------

    def roster_changing(self) -> None:  # the hub's Listener
        self.fanout.flush()
        self._roster = None

    def lobby_message(self, entry: Entry) -> None:
        self._history_block = None
        sender = self.hub.find(entry.nick)
        if sender is not None and self.state.holds(sender):
            self.stats.count_lobby_message()  # one of this process's users said it
        ts = wire.format_ts(entry.ts)
        self.fanout.add(wire.line("MSG", ts, entry.nick, "*", text=entry.text))

    def ready(self, user: User) -> None:
        self._user_changed(user)
        # Straight to the newcomer: a flush here would send it lines that
        # are in its history.  joined() marks where its share begins.
        # In parts, not one block per newcomer: the history and the list
        # are the objects every newcomer (and USERS) is sent, so a peer
        # that does not read holds references to them, not a copy.
        parts = [part for part in (wire.line("READY", user.nick), self.history_block(),
                                   self.roster()) if part]
        for part in parts:
            self.stats.wrote(part)
        user.conn.deliver_parts(parts)

    def joined(self, ts: float, user: User) -> None:
        """JOINED rides with the lobby's lines of this turn (the newcomer's
        share starts after it); paired users get it directly.  The user
        list gets the newcomer's line here if L{ready} did not (a cluster
        node is not told C{ready} for another node's newcomer)."""
        if user.key not in self._user_lines:
            self._user_changed(user)
        data = wire.line("JOINED", wire.format_ts(ts), user.nick)
        if self.state.holds(user):
            self.fanout.add_joined(data, user.conn)
        else:
            # Another node's newcomer gets nothing from this one: there is
            # no share to cut, and the batch keeps the fan-out's fast path.
            self.fanout.add(data)
        online, lobby = self.state.counts()
        if online != lobby:  # some of this process's users are paired
            for other in self.state.own_users():
                if other.state is State.PAIRED:
                    other.conn.write(data)

    def forget_members(self) -> None:
        """The lobby's lists kept between batches (the state's, the direct
        pass's) let go of their connections now, not at the next lobby
        line: one of them is gone (its transport may still buffer up to
        --sendq bytes).  At a departure; and at a cluster node's
        displacement (cluster.service.FactoryHooks.displaced)."""
        self.state.forget_members()
        if self._direct_pass is not None:
            self._direct_pass.forget()

    def left(self, ts: float, user: User, reason: str, text: str) -> None:
        self._user_lines.pop(user.key, None)
        self.forget_members()
        data = wire.line("LEFT", wire.format_ts(ts), user.nick, reason, text=text)
        for other in self.state.own_users():
            other.conn.write(data)

    def private_message(self, ts: float, sender: User, recipient: User, text: str) -> None:
        data = wire.line("MSG", wire.format_ts(ts), sender.nick, recipient.nick, text=text)
        if self.state.holds(sender):
            self.stats.count_private_message("pair" if sender.partner is recipient else "dm")
        recipient.conn.write(data)
        sender.conn.write(data)

    def invited(self, invitation: Invitation) -> None:
        inviter, invitee = invitation.inviter, invitation.invitee
        if self.state.holds(inviter):
            self.stats.count_invitation()
        inviter.conn.write(wire.line("PENDING", invitee.nick))
        invitee.conn.write(wire.line("INVITE", inviter.nick))

    def paired(self, user: User, partner: User) -> None:
        self._user_changed(user)
        if self.state.holds(user):
            self.stats.count_paired_side()  # one side of the pair (chat_pairings_total)
            self.state.pair_shown(user, None)
        user.conn.write(wire.line("PAIRED", partner.nick))

    def unpaired(self, user: User, partner: User, reason: str, missed: Sequence[Entry]) -> None:
        self._user_changed(user)
        if self.hub.is_online(partner):
            self._user_changed(partner)
        if not self.state.holds(user):
            # Its own node tells it; the missed lines and the user list are
            # not built here for a connection that writes nowhere.
            return
        # In parts, as in ready(): the two sides of a pair are sent the same
        # replay and list objects.
        user.conn.write_parts([part for part in (
            wire.line("UNPAIRED", partner.nick, reason), self._missed_block(missed), self.roster(),
        ) if part])
        self.state.pair_shown(user, partner)

    def _missed_block(self, missed: Sequence[Entry]) -> bytes:
        """The HISTORY lines of C{missed}, made once for both sides of a pair
        (the hub passes both the same list), and for the next pair that
        missed the same lines (pairs that began and ended between the same
        two lobby lines)."""
        last = self._missed
        if last is None or (last[0] is not missed and last[0] != missed):
            last = self._missed = (missed, history_lines(missed, self.config.history_bytes))
        return last[1]

    def declined(self, inviter: User, invitee: User, reason: str) -> None:
        if self.state.holds(inviter):
            self._invitation_ended(reason)
        inviter.conn.write(wire.line("DECLINED", invitee.nick, reason))

    def cancelled(self, invitee: User, inviter: User, reason: str) -> None:
        if self.state.holds(invitee) and not self.hub.is_online(inviter):
            # The inviter is gone (it is not told DECLINED): counted here.
            self._invitation_ended(reason)
        invitee.conn.write(wire.line("CANCELLED", inviter.nick, reason))

    def _invitation_ended(self, reason: str) -> None:
        """An invitation ended without a pair: counted once, on the
        inviter's node (or the invitee's, once the inviter is gone)."""
        self.stats.count_invitation_ended(reason)


def history_lines(entries: Sequence[Entry], limit: int) -> bytes:
    """
    C{HISTORY} lines, oldest first: for a newcomer, or one back from a pair;
    the newest whole lines that fit in C{limit} bytes (C{--history-bytes}).
    """
    return newest_within(
        [wire.line("HISTORY", wire.format_ts(e.ts), e.nick, text=e.text) for e in entries],
        limit,
    )
