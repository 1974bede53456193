"""
C{twistd chat}: command-line options and the service tree.

The tree is a C{MultiService}: a L{ChatService} (with C{--redis}, the
cluster's C{ClusterService}) whose C{stopService} says C{BYE shutdown} to
everyone and waits for their connections to close, then one L{PortService}
per C{--port}, C{--metrics} and C{--web} (L{twisted_chat.server.ports.listening}:
every endpoint is parsed before anything is made, and a bind failure stops
start-up with one line).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prometheus_client.registry import CollectorRegistry
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.python.failure import Failure

from twisted_chat import version_line
from twisted_chat.server import logs
from twisted_chat.server.accounts import accountsetup
from twisted_chat.server.accounts.passwordwork import OwnsPasswordWork, PasswordWork
from twisted_chat.server.config import MEMORY, ClusterConfig, Mode, ServerConfig
from twisted_chat.server.factory import ChatFactory
from twisted_chat.server.history import History
from twisted_chat.server.limits import descriptors
from twisted_chat.server.limits.addresses import parse_network
from twisted_chat.server.metrics import counters, metricsport
from twisted_chat.server.output.fanout import MAX_FANOUT_WAIT
from twisted_chat.server.output.sendqueue import send_loop
from twisted_chat.server.ports import pidfile, privileges
from twisted_chat.server.ports.epollturn import lighten
from twisted_chat.server.ports.listening import (
    PortService,
    ReloadingSSLEndpoint,
    listen_on,
    one_port_each,
)
from twisted_chat.server.ports.reloading import Reloader
from twisted_chat.server.ports.rotating import Rotator
from twisted_chat.server.ports.stopping import stop_once
from twisted_chat.server.store import SQLiteStore
from twisted_chat.server.storefile import StoreError
from twisted_chat.web.config import WebConfig
from twisted_chat.wire import BAD_CHARS, DEFAULT_PORT

_T = TypeVar("_T")


def _endpoint(description: str) -> str:
    """A bare port number means TCP; anything else is a Twisted endpoint."""
    return f"tcp:{description}" if description.isdigit() else description


def _number(kind: type[int] | type[float], zero_allowed: bool) -> Any:
    """
    A usage.Options coercer: a number of C{kind}, positive or at least 0,
    and finite (C{nan} and C{inf} would pass every comparison and then break
    a timer or a rate at the first connection).  Its C{kind} attribute says
    which (the tests find the float options by it).
    """
    rule = "must not be negative" if zero_allowed else "must be positive"
    what = "an integer" if kind is int else "a number"

    def coerce(value: str) -> int | float:
        try:
            number = kind(value)
        except ValueError:
            raise ValueError(f"not {what}: {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"must be a finite number: {value!r}")
        if number < 0 or (number == 0 and not zero_allowed):
            raise ValueError(f"{rule}: {value!r}")
        return number

    finite = "" if kind is int else "finite and "
    adjective = "not negative" if zero_allowed else "positive"
    coerce.coerceDoc = f"Must be {finite}{adjective}."  # type: ignore[attr-defined]
    coerce.kind = kind  # type: ignore[attr-defined]
    return coerce


def _non_negative(kind: type[int] | type[float]) -> Any:
    return _number(kind, zero_allowed=True)


def _positive(kind: type[int] | type[float]) -> Any:
    return _number(kind, zero_allowed=False)


def _named(parameters: list[list[Any]]) -> list[list[Any]]:
    """
    C{optParameters} whose coercers name their option when they refuse a
    value ("--sendq: not an integer: 'x'"), where Twisted alone says
    "Parameter type enforcement failed" and leaves the operator to guess
    which option of a long command line it means.
    """
    named = []
    for parameter in parameters:
        if len(parameter) > 4 and parameter[4] is not None:
            parameter = [*parameter[:4], _naming(parameter[0], parameter[4])]
        named.append(parameter)
    return named


def _parsed(name: str, parse: Callable[[str], _T], value: str) -> _T:
    """C{parse(value)}; its C{ValueError} is a usage error naming C{--name}."""
    try:
        return parse(value)
    except ValueError as e:
        raise usage.UsageError(f"--{name}: {e}") from None


def _naming(name: str, coerce: Callable[[str], Any]) -> Callable[[str], Any]:
    def named(value: str) -> Any:
        return _parsed(name, coerce, value)

    named.__dict__.update(coerce.__dict__)  # coerceDoc, kind
    return named


#: The longest --server-name, in bytes of UTF-8: a name, not a banner.
SERVER_NAME_MAX = 100


def _server_name(value: str) -> str:
    """
    C{value}, if it can be the HELLO greeting's text: UTF-8 (a name from
    a file in another encoding would stop every greeting), none of the
    characters no chat/1 line may hold (a newline would put a line of the
    operator's into every greeting), at most L{SERVER_NAME_MAX} bytes, and
    not empty or blank (the greeting's text then began with its
    C{(twisted-chat ...)}, which the page showed as the server's name).
    """
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("not UTF-8 text") from None
    if not value.strip():
        raise ValueError(f"a name is needed, not an empty or blank one: {value!r}")
    if BAD_CHARS.search(value) is not None:
        raise ValueError(f"control characters (a newline, a CR) are not allowed: {value!r}")
    if size > SERVER_NAME_MAX:
        raise ValueError(f"at most {SERVER_NAME_MAX} bytes (UTF-8), not {size}")
    return value


def _prefix(value: str) -> int:
    bits = int(value)
    if not 1 <= bits <= 128:
        raise ValueError(f"must be 1 to 128: {value}")
    return bits


_prefix.coerceDoc = "1 to 128."  # type: ignore[attr-defined]


def _log_level(value: str) -> str:
    if value not in logs.LEVELS:
        raise ValueError(f"must be one of {', '.join(logs.LEVELS)}: {value}")
    return value


_log_level.coerceDoc = "One of " + ", ".join(logs.LEVELS) + "."  # type: ignore[attr-defined]


def _accounts_mode(value: str) -> str:
    try:
        return Mode(value).value
    except ValueError:
        raise ValueError(f"must be open, required or off: {value}") from None


_accounts_mode.coerceDoc = "One of open, required, off."  # type: ignore[attr-defined]

_defaults = ServerConfig()
_cluster_defaults = ClusterConfig()
_web_defaults = WebConfig()


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "A chat/1 terminal chat server: a lobby with history, direct messages "
        "and private one-to-one conversations. Connect with "
        "'python -m twisted_chat.client HOST PORT' or plain 'nc HOST PORT'."
    )
    optFlags = [
        ["show-addresses", None, "Show each user's host:port in USER lines."],
        ["no-direct-send", None,
         "Always write through Twisted's transport buffer, never straight to the "
         "socket (the direct path reads private attributes of Twisted's TCP transport)."],
        ["tcp-nodelay", None,
         "Set TCP_NODELAY on every connection: each write leaves at once, even behind "
         "bytes the peer has not acknowledged (costs CPU per line; see docs/fanout.md)."],
        ["log-messages", None,
         "Write the text of every lobby message and DM to the server's log (a privacy "
         "choice: off by default, the log then holds who connected, not what they said)."],
        ["set-retention", None,
         "Cluster mode: make this server's --retain-days, --retain-messages and "
         "--retain-bytes the cluster's (the running servers follow). Without it, a "
         "server whose values are not the cluster's does not start. Use it once, to "
         "change them; see docs/cluster.md."],
    ]
    optParameters = _named([
        ["server-name", None, _defaults.server_name,
         "The name the HELLO greeting gives: UTF-8, at most 100 bytes, no control characters, "
         "not blank."],
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
         "Bytes the server holds for a connection that is not reading (its share in "
         "the kernel included, where the platform tells) before it drops it.",
         _positive(int)],
        ["sndbuf", None, _defaults.sndbuf,
         "Each socket's kernel send buffer, in bytes, fixed (at most half of --sendq; "
         "0: leave it to the kernel's autotuning).", _non_negative(int)],
        ["rcvbuf", None, _defaults.rcvbuf,
         "Each TCP socket's kernel receive buffer, in bytes, fixed (0: leave it to the "
         "kernel's autotuning). Linux ignores it on a UNIX socket.", _non_negative(int)],
        ["sendq-timeout", None, _defaults.sendq_timeout,
         "Seconds a connection's peer may take none of the bytes held for it before "
         "it is dropped (0: never).", _non_negative(float)],
        ["sendq-total", None, _defaults.sendq_total,
         "Bytes the server itself may hold for all connections together (its own "
         "buffers, not the kernel's), checked once a second, and before a lobby fan-out "
         "or at a read's end once what was buffered since may pass it; over it, connections are "
         "dropped, those whose peers took nothing since the last timed check first, then "
         "those holding the most (0: no bound but --max-clients x --sendq).",
         _non_negative(int)],
        ["idle-timeout", None, _defaults.idle_timeout,
         "Seconds of silence before the server sends PING (0: never).", _non_negative(float)],
        ["ping-timeout", None, _defaults.ping_timeout,
         "Seconds to answer the server's PING.", _positive(float)],
        ["nick-timeout", None, _defaults.nick_timeout,
         "Seconds a new connection has to choose a nick (0: forever).", _non_negative(float)],
        ["fanout-delay", None, _defaults.fanout_delay * 1000,
         "Milliseconds a lobby line may be held, while the server has other work "
         "waiting, to go out in one write with the lines that work brings (0: each "
         "reactor turn's lobby lines go out at once; never more than "
         f"{MAX_FANOUT_WAIT * 1000:g} ms). See docs/fanout.md.",
         _non_negative(float)],
        ["db", None, _defaults.db,
         "SQLite file that keeps the lobby history across restarts (:memory: keeps "
         "nothing on disk)."],
        ["retain-days", None, None,
         "Delete lobby messages older than this many days [default: keep everything]",
         _positive(float)],
        # Hardening (docs/security.md).
        ["retain-messages", None, _defaults.retain_messages,
         "Keep at most this many lobby messages in the database, deleting the oldest "
         "(0: no bound by count).", _non_negative(int)],
        ["retain-bytes", None, _cluster_defaults.retain_bytes,
         "Cluster mode: keep at most this many bytes of lobby messages in Redis's "
         "history, deleting the oldest (a message counts its text and nick plus 124 "
         "bytes; Redis takes up to about 1.25 times that; 0: no bound by bytes).",
         _non_negative(int)],
        ["db-backlog", None, _defaults.db_backlog,
         "Lobby messages held in memory while the database cannot be written; past "
         "that the oldest are dropped.", _positive(int)],
        ["history-bytes", None, _defaults.history_bytes,
         "Bytes of history a newcomer is sent at most (the newest messages that fit).",
         _positive(int)],
        ["ipv6-prefix", None, _defaults.ipv6_prefix,
         "IPv6 addresses count as one address per prefix of this many bits.",
         _prefix],
        ["ip-connect-rate", None, _defaults.ip_connect_rate,
         "New connections per second from one address (0: no limit).", _non_negative(float)],
        ["ip-connect-burst", None, _defaults.ip_connect_burst,
         "New connections one address may open at once.", _positive(int)],
        ["ip-register-rate", None, _defaults.ip_register_rate,
         "Nicks per second one address may register, all its connections together "
         "(in cluster mode, on all nodes; 0: no limit).", _non_negative(float)],
        ["ip-register-burst", None, _defaults.ip_register_burst,
         "Nicks one address may register at once.", _positive(int)],
        ["ip-lobby-rate", None, _defaults.ip_lobby_rate,
         "Lobby messages per second from one address, all its connections together "
         "(in cluster mode, on all nodes; 0: no limit).", _non_negative(float)],
        ["ip-lobby-burst", None, _defaults.ip_lobby_burst,
         "Lobby messages one address may send at once.", _positive(int)],
        ["max-handshaking-per-ip", None, _defaults.max_handshaking_per_ip,
         "Connections from one address that have not chosen a nick yet.", _positive(int)],
        ["max-handshaking", None, None,
         "Connections that have not chosen a nick yet, in all; when full, the oldest of "
         "the address holding the most makes room [default: a quarter of --max-clients, "
         "at least 16 (at most --max-clients)]",
         _positive(int)],
        ["max-invites", None, _defaults.max_invites,
         "Open invitations one user may have received (a fifth of them at most "
         "from the users of one address).", _positive(int)],
        ["max-invites-per-ip", None, _defaults.max_invites_per_ip,
         "Open invitations the users of one address may have sent, together.",
         _positive(int)],
        ["log-level", None, _defaults.log_level,
         f"Least important log lines written: {', '.join(logs.LEVELS)}.", _log_level],
        ["log-keep", None, logs.DEFAULT_KEEP,
         "With twistd's --logfile FILE (as a daemon or with -n): rotated log files "
         "kept, FILE.1 to "
         "FILE.N, the oldest deleted (rotated every 1,000,000 bytes and on "
         "SIGUSR1, unless FILE is not a regular file; 0: keep every one).",
         _non_negative(int)],
        ["metrics", None, None,
         "Serve Prometheus metrics at /metrics on this endpoint, e.g. "
         "tcp:9108:interface=127.0.0.1 (a bare port number is TCP on every interface: "
         f"a warning at start). At most {metricsport.MAX_METRICS_CONNECTIONS} connections at "
         f"once, {metricsport.METRICS_TIMEOUT:g} s each (an answer under way let finish). "
         "Off by default; see docs/metrics.md."],
        ["redis", None, None,
         "Cluster mode: share the chat with every server on this Redis "
         "(redis://[:password@]host[:port][/db], rediss://... for TLS, "
         "unix:///path/to/socket); --db is not used then. See docs/cluster.md."],
        ["redis-password-file", None, None,
         "Cluster mode: the file whose first line is Redis's password, kept out of the "
         "command line that every local user can read (then --redis gives none). With "
         "systemd, LoadCredential= makes one; see docs/cluster.md."],
        ["node-timeout", None, _cluster_defaults.node_timeout,
         "Cluster mode: seconds within which the others find a dead server dead and "
         "its users disconnected. A server stalled for more than half of it may be "
         "taken for dead (its lease lasts 2/3 of it, renewed every 1/6).", _positive(float)],
        ["redis-wait", None, _cluster_defaults.wait,
         "Cluster mode: seconds a command may wait for Redis, from when its line "
         "arrived; then it is answered "
         "ERROR unavailable (not sent) or ERROR unconfirmed (sent, not yet confirmed). "
         "Less than --idle-timeout.", _positive(float)],
        ["redis-queue", None, _cluster_defaults.max_waiting,
         "Cluster mode: bytes of commands one server holds while they wait for Redis; "
         "a command over it is answered ERROR unavailable at once. The input its "
         "connections hold behind those commands is bounded by as many bytes, counted "
         "apart: past it, connections with a command waiting are not read until it "
         "is decided; past a quarter more, no connection is read until half of it.",
         _positive(int)],
        ["stream-bytes", None, _cluster_defaults.stream_bytes,
         "Cluster mode: while the event stream in Redis takes more bytes than this "
         "(as MEMORY USAGE gives), a command's event is not appended: it is answered "
         "ERROR unavailable, so that a burst fills the stream up to here and not Redis "
         "up to its maxmemory (0: no bound). The cluster's: a node started with "
         "another than the one recorded in Redis does not start.", _non_negative(int)],
        ["accounts", None, _defaults.accounts.value,
         "Nicks protected by passwords: 'open' (anyone may REGISTER the nick they "
         "hold), 'required' (only nicks with an account may log in; the operator "
         "makes them with 'python -m twisted_chat.accounts add --db DB NICK') or "
         "'off'. Accounts live in a file beside --db (chat.sqlite3 -> "
         "chat.accounts.sqlite3), or with --redis in Redis, shared by the whole "
         "cluster (the tool's --redis URL). Passwords cross the network: use a TLS --port.",
         _accounts_mode],
        ["web-timeout", None, _web_defaults.timeout,
         "Seconds an HTTP connection to --web may last until its WebSocket upgrade, "
         "however it sends (a slow request, a kept-alive connection); then it is closed.",
         _positive(float)],
        ["max-accounts", None, _defaults.max_accounts,
         "The most accounts there may be for REGISTER to make one (each takes about "
         "200 bytes on disk); beyond it REGISTER is answered ERROR server-full. The "
         "operator's tool is not bound by it.", _positive(int)],
    ])

    def __init__(self) -> None:
        super().__init__()
        self["ports"] = []
        self["exempt"] = []
        self["web"] = []
        self["web-origins"] = []
        self["trust-proxy"] = []
        self["web-hosts"] = []

    def opt_exempt(self, cidr: str) -> None:
        """An address or CIDR block (e.g. 192.0.2.10, 2001:db8::/48) without any per-address limit: --max-per-ip, connection, registration and lobby rates, handshaking connections. For a bouncer, a NAT gateway, a benchmark. Repeatable. Nothing is exempt by default, loopback included."""  # noqa: E501
        self["exempt"].append(str(_parsed("exempt", parse_network, cidr)))

    def opt_port(self, description: str) -> None:
        """Where to listen: a bare port number (TCP) or any Twisted endpoint, e.g. tcp:7000:interface=127.0.0.1, ssl:7443:privateKey=server.pem, unix:/tmp/chat.sock. Repeatable. [default: 7000]"""  # noqa: E501
        self["ports"].append(_endpoint(description))

    opt_p = opt_port

    def opt_web(self, description: str) -> None:
        """Also serve the web client (page at /, WebSocket at /chat) here: a bare port number (TCP) or any Twisted endpoint, e.g. tcp:8080:interface=127.0.0.1 or ssl:8443:privateKey=server.pem. Repeatable. [default: off]"""  # noqa: E501
        self["web"].append(_endpoint(description))

    def opt_web_origin(self, origin: str) -> None:
        """An origin (scheme://host[:port]) whose pages may open the WebSocket besides the page's own, or * for any. Repeatable."""  # noqa: E501
        from twisted_chat.web.config import parse_origin

        self["web-origins"].append(_parsed("web-origin", parse_origin, origin))

    def opt_web_host(self, name: str) -> None:
        """A host name (or IP address) the web port answers to, e.g. chat.example.org; requests for any other Host get 421, the WebSocket included (against DNS rebinding). Repeatable. [default: any]"""  # noqa: E501
        from twisted_chat.web.config import parse_web_host

        self["web-hosts"].append(_parsed("web-host", parse_web_host, name))

    def opt_trust_proxy(self, proxies: str) -> None:
        """A reverse proxy (address or network, e.g. 127.0.0.1 or 10.0.0.0/8, or unix: for any peer of a UNIX-socket --web port; comma-separated) whose X-Forwarded-For names the web client's address for per-address limits and whose X-Forwarded-Proto the page's scheme. Repeatable."""  # noqa: E501
        from twisted_chat.web.config import parse_proxies

        _parsed("trust-proxy", lambda value: parse_proxies([value]), proxies)  # checked
        self["trust-proxy"].append(proxies)

    def opt_version(self) -> None:
        """Display the versions of twisted-chat, Twisted and Python, and exit."""
        print(version_line())
        sys.exit(0)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Under twistd, a usage error (a mistyped option, a bad value, options
        that do not go together) is one line on stderr and a hint, exit
        status 1.  twistd's own way printed its whole C{--help}, its options
        and ours (over 200 lines), on stdout, then the reason last, as
        C{twistd -n: ...}.  twistd catches the error only to print that, so
        it is said here and never reaches twistd; alone (the tests, no
        C{parent}), the C{UsageError} is raised as usual.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            reason = str(e).removeprefix("twistd chat: ")
            sys.stderr.write(f"twistd chat: {reason}\n"
                             "'twistd chat --help' lists every option.\n")
            raise SystemExit(1) from None

    def postOptions(self) -> None:
        _parsed("server-name", _server_name, self["server-name"])
        if not self["ports"]:
            self["ports"] = [f"tcp:{DEFAULT_PORT}"]
        if (self["accounts"] == Mode.REQUIRED.value and self["db"] == MEMORY
                and not self["redis"]):
            raise usage.UsageError(
                "--accounts required needs a --db file: the accounts file goes beside it, "
                "where 'python -m twisted_chat.accounts' can add accounts"
            )
        if self["redis-password-file"] and not self["redis"]:
            raise usage.UsageError("--redis-password-file is for cluster mode (--redis) only")
        if self["set-retention"] and not self["redis"]:
            raise usage.UsageError("--set-retention is for cluster mode (--redis) only")
        idle = self["idle-timeout"]
        if self["redis"] and idle > 0 and self["redis-wait"] >= idle:
            raise usage.UsageError(
                "--redis-wait must be less than --idle-timeout: a user waiting for "
                "Redis is not idle"
            )

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
            direct_send=not self["no-direct-send"],
            tcp_nodelay=bool(self["tcp-nodelay"]),
            flood_rate=self["flood-rate"],
            flood_burst=self["flood-burst"],
            sendq=self["sendq"],
            sndbuf=self["sndbuf"],
            rcvbuf=self["rcvbuf"],
            sendq_timeout=self["sendq-timeout"],
            sendq_total=self["sendq-total"],
            idle_timeout=self["idle-timeout"],
            ping_timeout=self["ping-timeout"],
            nick_timeout=self["nick-timeout"],
            fanout_delay=self["fanout-delay"] / 1000,
            db=self["db"],
            retain_days=self["retain-days"],
            exempt=tuple(self["exempt"]),
            ipv6_prefix=self["ipv6-prefix"],
            ip_connect_rate=self["ip-connect-rate"],
            ip_connect_burst=self["ip-connect-burst"],
            ip_register_rate=self["ip-register-rate"],
            ip_register_burst=self["ip-register-burst"],
            ip_lobby_rate=self["ip-lobby-rate"],
            ip_lobby_burst=self["ip-lobby-burst"],
            max_handshaking_per_ip=self["max-handshaking-per-ip"],
            max_handshaking=self["max-handshaking"],
            history_bytes=self["history-bytes"],
            max_invites=self["max-invites"],
            max_invites_per_ip=self["max-invites-per-ip"],
            retain_messages=self["retain-messages"] or None,
            db_backlog=self["db-backlog"],
            log_level=self["log-level"],
            log_messages=bool(self["log-messages"]),
            metrics=_endpoint(self["metrics"]) if self["metrics"] else None,
            accounts=Mode(self["accounts"]),
            max_accounts=self["max-accounts"],
        )

    def cluster_config(self) -> ClusterConfig:
        return ClusterConfig(
            redis=self["redis"],
            redis_password_file=self["redis-password-file"],
            node_timeout=self["node-timeout"],
            wait=self["redis-wait"],
            max_waiting=self["redis-queue"],
            retain_bytes=self["retain-bytes"] or None,
            set_retention=bool(self["set-retention"]),
            stream_bytes=self["stream-bytes"] or None,
        )


class ChatService(OwnsPasswordWork, Service):
    """
    Owns the factory.  At start it opens the history database; at stop it
    says goodbye, waits for the sockets, then flushes the database.

    The database is opened here, not in L{makeService}, because twistd
    daemonizes in between: the store's writer thread and SQLite's file lock
    would not survive the fork.
    """

    log = logs.logger()

    def __init__(self, factory: ChatFactory, work: PasswordWork | None = None) -> None:
        self.factory = factory
        self.work = work  # the password threads, when accounts are on
        self.store: SQLiteStore | None = None

    def snapshot(self) -> counters.Snapshot:
        """The state --metrics reports; safe to call from any thread (it
        reads sizes, and measures a copy of the in-memory history:
        L{counters.chat_snapshot})."""
        store = self.store
        if store is None:
            return counters.chat_snapshot(self.factory, 0)
        return counters.chat_snapshot(self.factory, store.backlog, store.shed, store.stored)

    def startService(self) -> None:
        config = self.factory.config
        self._start_work()
        history = self.factory.history
        try:
            store = SQLiteStore.open(config.db, self.factory.reactor,
                                     retain_days=config.retain_days,
                                     max_messages=config.retain_messages,
                                     max_backlog=config.db_backlog)
        except StoreError as e:
            # Only if the file changed since makeService checked it.  Not
            # SystemExit: after daemonizing, twistd's parent waits for the
            # child's start-up status, and only an exception reaches it.
            self.log.critical("{error}", error=str(e))
            raise
        history.attach(store, store.recent(history.size))
        store.on_commit = self.factory.stats.committed
        self.store = store
        if config.db == MEMORY:
            self.log.info("lobby history in memory only: nothing is kept across restarts")
        else:
            n = len(history.recent())
            self.log.info("lobby history: {messages} loaded from {db}", db=config.db,
                          n=n, messages=logs.counted(n, "message"))
        super().startService()
        self.log.info(
            "chat server {name!r} starting: history {history}, max-line {max_line}",
            name=self.factory.config.server_name,
            history=self.factory.config.history,
            max_line=self.factory.config.max_line,
        )

    def stopService(self) -> Deferred[None]:
        super().stopService()
        n = len(self.factory.connections)
        self.log.info("saying BYE to {connections}", n=n,
                      connections=logs.counted(n, "connection"))
        closed = self.factory.shutdown()
        closed.addCallback(lambda _: self.factory.history.close())
        closed.addErrback(self._not_saved)
        closed.addBoth(self._stop_work)
        return closed

    def _not_saved(self, failure: Failure) -> None:
        """
        The database could not take the last messages (a full disk): the
        store has said how many were lost; the shutdown goes on, with no
        unhandled error.
        """
        failure.trap(StoreError)
        self.log.critical("shutting down without saving all of the lobby history: {error}",
                          error=str(failure.value))


class _Top(MultiService):
    """
    The service tree's top.  With C{log}'s observer, twistd logs to it (the
    observer twistd would make, behind the level filter: its log file, or
    stdout, or syslog): it is set as the application's C{ILogObserver} as
    this joins it, which is before twistd starts its log (twistd then makes
    no observer, and opens no file, of its own).
    """

    log = logs.TwistdsLog(None, "twistd's observer")

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.log.observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log.observer)


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    return _make_service(options, reactor)


def _top(options: Options, who: privileges.Runner | None, reactor: Any) -> _Top:
    """
    The tree's top, with twistd's log observer (L{logs.twistds_log}):
    the first file start-up makes (after every option and endpoint is
    checked, before the database and accounts files), made as the user
    the server will run as (L{privileges}).  A log file that cannot be
    made is one line.  Its first service takes SIGUSR1 (L{Rotator}), so
    the signal is taken before the others start.
    """
    twistd = getattr(options, "parent", None)
    said = pidfile.problem(twistd)
    if said is not None:
        raise SystemExit(said)
    top = _Top()
    try:
        with privileges.as_runner(who):
            top.log = logs.twistds_log(twistd, options["log-keep"])
    except OSError as e:
        raise SystemExit(f"twistd chat: cannot open --logfile "
                         f"{e.filename}: {e.strerror}{privileges.note(who)}") from None
    # SIGUSR1: the log file rotated, if there is one; never a stop.
    Rotator(reactor, top.log.rotating, top.log.where).setServiceParent(top)
    return top


def _make_service(options: Options, reactor: Any) -> IService:
    config = options.config()
    logs.set_level(config.log_level)
    stop_once(reactor)
    lighten(reactor)
    try:
        fitted = descriptors.fit(config.max_clients,
                                 chosen=config.max_clients != _defaults.max_clients,
                                 metrics=metricsport.METRICS_DESCRIPTORS if config.metrics else 0)
    except descriptors.DoesNotFit as e:
        raise SystemExit(f"twistd chat: {e}") from None
    log = logs.logger("twisted_chat.server.service")
    if fitted.raised_from is not None:
        log.info("file descriptor limit raised from {before} to {now}",
                 before=fitted.raised_from, now=fitted.soft)
    if fitted.warning is not None:
        sys.stderr.write(f"twistd chat: WARNING: {fitted.warning}\n")
        log.warn("{warning}", warning=fitted.warning)
        config = dataclasses.replace(config, max_clients=fitted.max_clients)
    log.info("{version}", version=version_line())
    log.info("fan-out send loop: {loop}", loop=send_loop(config.direct_send))
    who = privileges.runner(getattr(options, "parent", None))
    if options["redis"]:
        return _cluster_service(options, config, reactor, who)
    listeners = _Listeners.check(options, config, reactor)
    top = _top(options, who, reactor)
    note = privileges.note(who)
    with privileges.as_runner(who):
        try:
            # Before twistd daemonizes, so a bad --db is one clear line on the
            # terminal; the store itself is opened after the fork (startService).
            SQLiteStore.check(config.db)
        except StoreError as e:
            raise SystemExit(f"twistd chat: {e}{note}") from None
        accounts, work = accountsetup.file_accounts(config, reactor, note)
    factory = ChatFactory(config, reactor, History(config.history), accounts=accounts)
    chat = ChatService(factory, work)
    chat.setServiceParent(top)
    listeners.add(top, options, factory, reactor,
                  lambda: counters.registry_for(factory.stats, chat.snapshot))
    return top


def _cluster_service(options: Options, config: ServerConfig, reactor: Any,
                     who: privileges.Runner | None) -> IService:
    """C{--redis}: the state lives in the cluster (see docs/cluster.md)."""
    from twisted_chat.server.cluster.service import cluster_node, redis_target

    cluster = options.cluster_config()
    target = redis_target(cluster.redis or "", cluster.redis_password_file)  # set: --redis
    listeners = _Listeners.check(options, config, reactor)
    top = _top(options, who, reactor)
    node, registry = cluster_node(cluster, config, reactor, target)
    node.setServiceParent(top)
    listeners.add(top, options, node.factory, reactor, registry)
    return top


@dataclasses.dataclass(frozen=True)
class _Listeners:
    """Each C{--port}, C{--metrics} and C{--web}, with its endpoint."""

    ports: list[tuple[str, Any]]
    scrape: tuple[str, Any] | None  # --metrics
    web: list[tuple[str, Any]]

    @classmethod
    def check(cls, options: Options, config: ServerConfig, reactor: Any) -> _Listeners:
        """Every endpoint, checked before anything starts or is made (the
        database, the accounts file, the cluster's connection): a mistyped
        one is one line, not a traceback."""
        listeners = cls(
            ports=[(description, listen_on(description, reactor))
                   for description in config.ports],
            scrape=((config.metrics, listen_on(config.metrics, reactor, "--metrics"))
                    if config.metrics else None),
            web=[(description, listen_on(description, reactor, "--web"))
                 for description in options["web"]],
        )
        one_port_each(listeners.every())
        return listeners

    def every(self) -> list[tuple[str, str, Any]]:
        """Each listener as C{(option, description, endpoint)}: the port
        check's and the certificate reloads' one list."""
        scrape = [self.scrape] if self.scrape is not None else []
        return ([("--port", description, endpoint) for description, endpoint in self.ports]
                + [("--metrics", description, endpoint) for description, endpoint in scrape]
                + [("--web", description, endpoint) for description, endpoint in self.web])

    def add(self, top: _Top, options: Options, factory: ChatFactory, reactor: Any,
            registry: Callable[[], CollectorRegistry]) -> None:
        """
        One L{PortService} each, into C{top} after the service that holds
        the chat (so that they stop first: the ports stop accepting, then
        BYE); C{--metrics} serves the registry C{registry} makes.
        """
        factory.noisy = False  # twistd says where it listens; "Starting factory" adds nothing
        for description, endpoint in self.ports:
            PortService(description, endpoint, factory).setServiceParent(top)
        if self.scrape is not None:
            # With the limits of metricsport.metrics_site, and a warning at
            # start when it listens on every interface.
            description, endpoint = self.scrape
            warning = metricsport.exposed(endpoint)
            if warning is not None:
                logs.logger("twisted_chat.server.service").warn("{warning}", warning=warning)
            site = metricsport.metrics_site(registry(), reactor, config=factory.config)
            PortService(description, endpoint, site, "--metrics").setServiceParent(top)
        if self.web:
            # Here, not at the top: without --web, autobahn is never loaded.
            from twisted_chat.web.site import add_web

            add_web(top, options, factory, reactor, self.web)
        # SIGHUP, and a renewed certificate of an ssl: port.
        Reloader(reactor, [endpoint.certificate for _, _, endpoint in self.every()
                           if isinstance(endpoint, ReloadingSSLEndpoint)]).setServiceParent(top)
