"""
C{twistd chat}: command-line options and the service tree.

The tree is a C{MultiService}: one C{strports} service per C{--port} (a bind
failure stops start-up) and a L{ChatService} whose C{stopService} says
C{BYE shutdown} to everyone and waits for their connections to close.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from twisted_chat.server.config import MAX_FANOUT_WAIT, ServerConfig
from twisted_chat.server.history import History
from twisted_chat.server.protocol import ChatFactory
from twisted_chat.server.store import SQLiteStore, StoreError
from twisted_chat.wire import DEFAULT_PORT


def _endpoint(description: str) -> str:
    """A bare port number means TCP; anything else is a Twisted endpoint."""
    return f"tcp:{description}" if description.isdigit() else description


def _number(kind: type[int] | type[float], zero_allowed: bool) -> Any:
    """A usage.Options coercer: a number of C{kind}, positive or at least 0."""
    rule = "must not be negative" if zero_allowed else "must be positive"

    def coerce(value: str) -> int | float:
        number = kind(value)
        if number < 0 or (number == 0 and not zero_allowed):
            raise ValueError(f"{rule}: {value}")
        return number

    coerce.coerceDoc = rule.capitalize() + "."  # type: ignore[attr-defined]
    return coerce


def _non_negative(kind: type[int] | type[float]) -> Any:
    return _number(kind, zero_allowed=True)


def _positive(kind: type[int] | type[float]) -> Any:
    return _number(kind, zero_allowed=False)


_defaults = ServerConfig()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A chat/1 terminal chat server: a lobby with history, direct messages "
        "and private one-to-one conversations. Connect with "
        "'python -m twisted_chat.client HOST PORT' or plain 'nc HOST PORT'."
    )
    optFlags = [
        ["show-addresses", None, "Show each user's host:port in USER lines."],
    ]
    optParameters = [
        ["server-name", None, _defaults.server_name, "The name the HELLO greeting gives."],
        ["history", None, _defaults.history, "Lobby messages a newcomer is shown.",
         _non_negative(int)],
        ["max-line", None, _defaults.max_line, "Longest line accepted, in bytes.",
         _positive(int)],
        ["invite-timeout", None, _defaults.invite_timeout,
         "Seconds an invitation stays open.", _positive(float)],
        ["max-clients", None, _defaults.max_clients, "Connections in all.", _positive(int)],
        ["max-per-ip", None, _defaults.max_per_ip, "Connections from one address.",
         _positive(int)],
        ["flood-rate", None, _defaults.flood_rate,
         "Lines per second a connection may send (0 turns flood control off).",
         _non_negative(float)],
        ["flood-burst", None, _defaults.flood_burst,
         "Lines a connection may send at once before the rate applies.", _positive(int)],
        ["sendq", None, _defaults.sendq,
         "Bytes the server holds for a connection that is not reading before it "
         "drops it.", _positive(int)],
        ["idle-timeout", None, _defaults.idle_timeout,
         "Seconds of silence before the server sends PING (0: never).", _non_negative(float)],
        ["ping-timeout", None, _defaults.ping_timeout,
         "Seconds to answer the server's PING.", _positive(float)],
        ["nick-timeout", None, _defaults.nick_timeout,
         "Seconds a new connection has to choose a nick (0: forever).", _non_negative(float)],
        ["fanout-delay", None, _defaults.fanout_delay * 1000,
         "Milliseconds a lobby line may wait to go out together with the lines after "
         "it, when lines come fast (0: each reactor turn's lines go out at once; "
         f"no line waits more than {MAX_FANOUT_WAIT * 1000:g} ms whatever the value).",
         _non_negative(float)],
        ["db", None, _defaults.db,
         "SQLite file that keeps the lobby history across restarts (:memory: keeps "
         "nothing on disk)."],
        ["retain-days", None, None,
         "Delete lobby messages older than this many days (default: keep everything)",
         _positive(float)],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []

    def opt_port(self, description: str) -> None:
        """Where to listen: a bare port number (TCP) or any Twisted endpoint, e.g. tcp:7000:interface=127.0.0.1, ssl:7443:privateKey=server.pem, unix:/tmp/chat.sock. Repeatable. [default: 7000]"""  # noqa: E501
        self["ports"].append(_endpoint(description))

    opt_p = opt_port

    def postOptions(self) -> None:
        if not self["ports"]:
            self["ports"] = [f"tcp:{DEFAULT_PORT}"]

    def config(self) -> ServerConfig:
        return ServerConfig(
            ports=tuple(self["ports"]),
            server_name=self["server-name"],
            history=self["history"],
            max_line=self["max-line"],
            invite_timeout=self["invite-timeout"],
            max_clients=self["max-clients"],
            max_per_ip=self["max-per-ip"],
            show_addresses=bool(self["show-addresses"]),
            flood_rate=self["flood-rate"],
            flood_burst=self["flood-burst"],
            sendq=self["sendq"],
            idle_timeout=self["idle-timeout"],
            ping_timeout=self["ping-timeout"],
            nick_timeout=self["nick-timeout"],
            fanout_delay=self["fanout-delay"] / 1000,
            db=self["db"],
            retain_days=self["retain-days"],
        )


class ChatService(Service):
    """
    Owns the factory.  At start it opens the history database; at stop it
    says goodbye, waits for the sockets, then flushes the database.

    The database is opened here, not in L{makeService}, because twistd
    daemonizes in between: the store's writer thread and SQLite's file lock
    would not survive the fork.
    """

    log = Logger()

    def __init__(self, factory: ChatFactory) -> None:
        self.factory = factory

    def startService(self) -> None:
        config = self.factory.config
        history = self.factory.history
        try:
            store = SQLiteStore.open(config.db, self.factory.reactor,
                                     retain_days=config.retain_days)
        except StoreError as e:
            # Only if the file changed since makeService checked it.  Not
            # SystemExit: after daemonizing, twistd's parent waits for the
            # child's start-up status, and only an exception reaches it.
            self.log.critical("{error}", error=str(e))
            raise
        history.attach(store, store.recent(history.size))
        self.log.info("lobby history in {db}: {n} messages loaded", db=config.db,
                      n=len(history.recent()))
        super().startService()
        self.log.info(
            "chat server {name!r} starting: history {history}, max-line {max_line}",
            name=self.factory.config.server_name,
            history=self.factory.config.history,
            max_line=self.factory.config.max_line,
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.log.info("shutting down: saying BYE to {n} connections",
                      n=len(self.factory.connections))
        closed = self.factory.shutdown()
        closed.addCallback(lambda _: self.factory.history.close())
        return closed


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config = options.config()
    try:
        # Before twistd daemonizes, so a bad --db is one clear line on the
        # terminal; the store itself is opened after the fork (startService).
        SQLiteStore.check(config.db)
    except StoreError as e:
        raise SystemExit(f"twistd chat: {e}") from None
    factory = ChatFactory(config, reactor, History(config.history))
    top = MultiService()
    # Added first so that it stops last: the ports stop accepting, then BYE.
    ChatService(factory).setServiceParent(top)
    for description in config.ports:
        strports.service(description, factory, reactor=reactor).setServiceParent(top)
    return top
