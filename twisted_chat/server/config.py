"""
The server's settings, frozen values whose defaults are written here once.

L{ServerConfig} is shared by every connection; L{ClusterConfig} holds the
cluster options (C{--redis} and those its help marks "Cluster mode").
L{twisted_chat.server.service.Options} takes its defaults from both and fills
them from the command line (C{config()}, C{cluster_config()}); the web port's
options fill L{twisted_chat.web.config.WebConfig}, and C{--log-keep} is
L{twisted_chat.server.logs}'s.  Tests build them directly with only the
fields they care about.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from twisted_chat.wire import DEFAULT_PORT

#: C{--db}'s name for no file: the history (and the accounts beside it)
#: kept in memory, gone at exit; SQLite's own name for it.
MEMORY = ":memory:"


class Mode(str, Enum):
    """The server's C{--accounts} setting."""

    OPEN = "open"  # anyone may register the nick they hold
    REQUIRED = "required"  # only nicks with an account may log in
    OFF = "off"  # no accounts at all


@dataclass(frozen=True, slots=True)
class ServerConfig:
    ports: tuple[str, ...] = field(default=(f"tcp:{DEFAULT_PORT}",))
    server_name: str = "twisted-chat"
    history: int = 100
    max_line: int = 4096
    invite_timeout: float = 60.0
    max_clients: int = 10000
    max_per_ip: int = 20
    show_addresses: bool = False
    # Abuse limits (see docs/protocol.md, "Limits").
    flood_rate: float = 10.0
    flood_burst: int = 20
    sendq: int = 1024 * 1024
    # The socket's send buffer, fixed (0: the kernel's autotuning, which on
    # loopback and fast LANs grows it to megabytes per connection), and how
    # long a connection's output may stall before it is dropped (0: never).
    # See docs/fanout.md, "Why 128 KiB" (not 64).
    sndbuf: int = 128 * 1024
    # The socket's receive buffer, fixed (0: the kernel's autotuning, which
    # grows it to megabytes once the server reads fast, all of it held while
    # the server does not read: a close's grace, a pipelined HTTP request).
    # Lines are at most --max-line (4 KiB): see docs/security.md, --rcvbuf.
    rcvbuf: int = 64 * 1024
    sendq_timeout: float = 60.0
    # The bytes the server itself may hold for all connections together,
    # checked once a second and within a turn (OutputBudget.check; 0: no
    # bound but --max-clients x --sendq):
    # docs/security.md, "Output held in all".
    sendq_total: int = 256 * 1024 * 1024
    idle_timeout: float = 120.0
    ping_timeout: float = 60.0
    nick_timeout: float = 30.0
    # The longest a lobby line is held while other work waits, in seconds
    # (docs/fanout.md); 0 writes each reactor turn's lobby lines at once.
    fanout_delay: float = 0.010
    # Write straight to a plain TCP socket when nothing is queued for it
    # (twisted_chat.server.output.sendqueue); off: always through transport.write.
    direct_send: bool = True
    # Turn Nagle's algorithm off on every connection (docs/fanout.md,
    # "Nagle"): off by default, as measured in docs/benchmark.md.
    tcp_nodelay: bool = False
    # Durable history.
    db: str = "chat.sqlite3"
    retain_days: float | None = None
    # How long a peer may take to complete a close the server began (a peer
    # that stopped reading, a TLS peer that never answers) before an abort.
    close_grace: float = 3.0
    # Hardening (see docs/security.md).  Per source address (an
    # IPv4 address or an IPv6 /ipv6_prefix), shared by all its connections;
    # a rate of 0 turns that limit off.  --exempt lifts all of them.
    exempt: tuple[str, ...] = ()
    ipv6_prefix: int = 64
    ip_connect_rate: float = 1.0
    ip_connect_burst: int = 20
    ip_register_rate: float = 0.5
    ip_register_burst: int = 10
    ip_lobby_rate: float = 20.0
    ip_lobby_burst: int = 40
    # Connections still choosing a nick: per address, and overall (None:
    # a quarter of max_clients, but at least 16 where max_clients allows).
    max_handshaking_per_ip: int = 5
    max_handshaking: int | None = None
    # Bytes of HISTORY lines a newcomer is sent at most (the newest that fit).
    history_bytes: int = 64 * 1024
    # The longest BYE text that goes out as the LEFT text, in UTF-8 bytes
    # (cut at a character boundary): a quitting user's word reaches everyone.
    max_quit_text: int = 256
    # Open invitations to one user, and from the users of one address.
    max_invites: int = 10
    max_invites_per_ip: int = 10
    # The database: messages kept at most (None: no bound by count), and
    # messages held in memory while the disk fails.
    retain_messages: int | None = 1_000_000
    db_backlog: int = 10_000
    log_level: str = "info"
    # Write lobby and private message text to the log (a privacy choice).
    log_messages: bool = False
    # Where to serve Prometheus metrics (an endpoint string), or None.
    metrics: str | None = None
    # Accounts (see twisted_chat.server.accounts.login): open, required or off; the
    # accounts file goes beside --db (twisted_chat.server.accounts.store).
    accounts: Mode = Mode.OPEN
    # The most accounts REGISTER makes (the accounts file, or Redis, grows
    # by each): docs/security.md.  The operator's tool is not bound by it.
    max_accounts: int = 100_000

    @property
    def handshake_limit(self) -> int:
        if self.max_handshaking is not None:
            return self.max_handshaking
        return max(self.max_clients // 4, min(self.max_clients, 16))


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """
    The cluster options (docs/cluster.md), read only with C{--redis}.

    @ivar redis: C{--redis}'s URL (None: one server, no cluster).
    @ivar redis_password_file: C{--redis-password-file}.
    @ivar node_timeout: C{--node-timeout}, in seconds.
    @ivar wait: C{--redis-wait}: seconds a command may wait for Redis.
    @ivar max_waiting: C{--redis-queue}: bytes of commands held waiting for
        Redis, and of the input held behind them (counted apart).
    @ivar retain_bytes: C{--retain-bytes} (None: no bound by bytes).
    @ivar set_retention: C{--set-retention}.
    @ivar stream_bytes: C{--stream-bytes} (None: no bound).
    """

    redis: str | None = None
    redis_password_file: str | None = None
    node_timeout: float = 15.0
    wait: float = 10.0
    max_waiting: int = 4 * 1024 * 1024
    retain_bytes: int | None = 256 * 1024 * 1024
    set_retention: bool = False
    stream_bytes: int | None = 64 * 1024 * 1024
