"""
The server's settings, one frozen value shared by every connection.

L{twisted_chat.server.service.Options} fills it from the command line; tests build
it directly with only the fields they care about.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted_chat.wire import DEFAULT_PORT

# The longest a lobby line waits for the fan-out's pacing, in seconds,
# whatever --fanout-delay says, a fan-out took, or the clock did.
MAX_FANOUT_WAIT = 0.05

# After a lobby fan-out that took d seconds, of lines that had to wait for
# the pacing (they are pouring in), the next one waits at least this many
# times d, so the fan-out takes at most a fifth of the server's time and
# reading, handshakes and everything else keep the rest: a bigger lobby gets
# bigger batches (fewer packets per line) instead of a busier server.  (After
# a fan-out of lines that did not wait, the gap is --fanout-delay or d,
# whichever is longer: a line now and then in a big lobby is not held.)
# MAX_FANOUT_WAIT still bounds the wait, so past fan-outs of 12.5 ms the
# share grows again; --fanout-delay 0 turns all of the pacing off, this
# included.
FANOUT_QUIET_FACTOR = 4.0

# A connection whose lobby line waits for the pacing is not read again until
# the gap ends (ChatFactory.read_after_fanout), but only while the last
# fan-out carried at most READERS_WAIT_MAX_LINES lines and took at most
# READERS_WAIT_SHARE of --fanout-delay.  What is read at the gap's end is
# handled before the next fan-out, which it delays (about 5 us a line here),
# and when lines flood in, reads find several lines each anyway; in a big
# lobby, a sender has seldom sent a second line by the next fan-out.
READERS_WAIT_MAX_LINES = 100
READERS_WAIT_SHARE = 0.125

# The longest BYE text that goes out as the LEFT text, in UTF-8 bytes (cut at
# a character boundary): a quitting user's last word reaches every member.
MAX_QUIT_TEXT = 256


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
    idle_timeout: float = 120.0
    ping_timeout: float = 60.0
    nick_timeout: float = 30.0
    # Lobby fan-out pacing, in seconds (see ChatFactory.flush); 0 writes each
    # reactor turn's lobby lines at once.
    fanout_delay: float = 0.010
    # Durable history.
    db: str = "chat.sqlite3"
    retain_days: float | None = None
    # How long a peer may take to complete a close the server began (a peer
    # that stopped reading, a TLS peer that never answers) before an abort.
    close_grace: float = 3.0
    # Hardening (issue 14; see docs/security.md).  Per source address (an
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
    # a quarter of max_clients).
    max_handshaking_per_ip: int = 5
    max_handshaking: int | None = None
    # Bytes of HISTORY lines a newcomer is sent at most (the newest that fit).
    history_bytes: int = 64 * 1024
    # Open invitations to one user, and from the users of one address.
    max_invites: int = 10
    max_invites_per_ip: int = 10
    # The database: messages kept at most (None: no bound by count), and
    # messages held in memory while the disk fails.
    retain_messages: int | None = 1_000_000
    db_backlog: int = 10_000
    log_level: str = "info"

    @property
    def handshake_limit(self) -> int:
        if self.max_handshaking is not None:
            return self.max_handshaking
        return max(self.max_clients // 4, 1)
