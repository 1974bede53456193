"""
What every connection of one server shares (docs/fanout.md, "Module
layout"): L{ConnectionContext}, made once by the factory and handed to each
L{twisted_chat.server.protocol.ChatProtocol}, which knows the server only
through it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from twisted_chat.server.config import ServerConfig
    from twisted_chat.server.hub import User
    from twisted_chat.server.limits.deadlines import Deadlines
    from twisted_chat.server.limits.flood import FloodMeter
    from twisted_chat.server.limits.heldinput import HeldInput
    from twisted_chat.server.logs import Repeats
    from twisted_chat.server.output.fanout import LobbyFanout
    from twisted_chat.server.output.sendqueue import Handed
    from twisted_chat.server.session import Session

#: The connection the callbacks are given (a ChatProtocol).
C = TypeVar("C")


class ConnectionStats(Protocol):
    """The counters a connection adds to (L{twisted_chat.server.metrics.counters.Stats})."""

    def wrote(self, data: bytes) -> None: ...

    def count_discarded(self, size: int) -> None: ...

    def count_dropped(self, limit: str) -> None: ...

    def count_input_discarded(self, size: int) -> None: ...

    def disconnected(self, reason: str) -> None: ...


class Watch(Protocol):
    """A server-wide watch that runs while there are connections."""

    def start(self) -> None: ...


class ConnectionContext(Generic[C]):
    """
    The server's shared parts a connection uses, and the factory's
    callbacks for its life: one object per server, one slot per connection
    (docs/fanout.md, "Memory per connection").
    """

    __slots__ = ("_watches", "batch_of", "clock", "config", "deadlines", "fanout", "flood",
                 "greeting", "handed", "held_input", "leave", "on_lost", "on_registered", "repeats",
                 "session", "stats")

    def __init__(self, *, config: ServerConfig, clock: IReactorTime, fanout: LobbyFanout,
                 batch_of: Callable[[User], LobbyFanout], flood: FloodMeter,
                 deadlines: Deadlines, held_input: HeldInput, session: Session,
                 repeats: Repeats, greeting: bytes, stats: ConnectionStats,
                 watches: Sequence[Watch],
                 on_registered: Callable[[C], None], on_lost: Callable[[C], None],
                 leave: Callable[[User, str, str], None], handed: Handed | None = None) -> None:
        """
        @param batch_of: the fan-out whose lines a user gets, the lobby's
            or the paired users' (L{LineListener.batch_of}): a connection's
            own writes follow its order rule; its FIN or C{BYE} gets its share.
        @param watches: started with each new connection (the drain watch
            and the C{--sendq-total} budget: L{start_watches}).
        @param on_registered: the connection has a nick.
        @param on_lost: the connection is over.
        @param leave: a connection's user leaves the chat (user, reason, text).
        @param handed: the C{--sendq-total} budget's tally, which each send
            queue adds what it hands to Twisted to.
        """
        self.config = config
        self.clock = clock
        self.fanout = fanout
        self.batch_of = batch_of
        self.flood = flood
        self.deadlines = deadlines
        self.held_input = held_input
        self.session = session
        self.repeats = repeats
        self.greeting = greeting
        self.stats = stats
        self._watches = tuple(watches)
        self.on_registered = on_registered
        self.on_lost = on_lost
        self.leave = leave
        self.handed = handed

    def start_watches(self) -> None:
        """A connection is made: the watches run (a no-op if they do)."""
        for watch in self._watches:
            watch.start()
