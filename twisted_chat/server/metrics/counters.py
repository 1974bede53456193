"""
Prometheus metrics: the counters and their collector (the port that serves
them, C{--metrics ENDPOINT}, is L{twisted_chat.server.metrics.metricsport}).

The server always keeps a few plain counters in a L{Stats} (the fan-out adds
to them once per batch, never per recipient or per line); a scrape reads
them, and the sizes of the server's collections (L{chat_snapshot}), through
L{ChatCollector}.  Nothing is computed between scrapes, and nothing here
takes a lock on the reactor thread.

A scrape runs in the reactor's thread pool (prometheus_client's Twisted
resource is a WSGI application), so the collector only reads: integer
attributes and C{len()} of the server's dicts and sets, which are atomic
under the GIL.  The figures of one scrape may straddle a reactor turn; each
is right on its own.

See docs/metrics.md for what each metric means.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from twisted_chat import __version__
from twisted_chat.server.metrics.histogram import Buckets

if TYPE_CHECKING:
    from twisted_chat.server.accounts.login import Accounts
    from twisted_chat.server.history import History
    from twisted_chat.server.limits.heldinput import HeldInput
    from twisted_chat.server.output.outputwatch import OutputBudget
    from twisted_chat.server.state import ChatState

# The reasons a connection ends, as the server names them (LEFT and BYE
# reasons, plus "refused": a chat connection over --max-clients or a
# per-address limit, and "refused_http": an HTTP connection to --web refused
# at its accept, 503, for the same limits).  A connection cut for its output
# is LEFT ... sendq for each of the three limits; here they are told apart:
# sendq (--sendq), sendq_timeout (--sendq-timeout), sendq_total (--sendq-total).
# Always exported, at 0 until they happen; any other reason appears when it does.
DISCONNECT_REASONS = ("quit", "disconnected", "timeout", "flood", "sendq", "sendq_timeout",
                      "sendq_total", "refused", "refused_http", "full", "shutdown")

# The limits a new connection is refused for (chat_refusals_total): the
# server is full (--max-clients); its address has --max-per-ip connections,
# or --max-handshaking-per-ip still choosing a nick, or is over
# --ip-connect-rate; an HTTP connection to --web, its address holds its
# share of the web port's (6 per --max-per-ip).
REFUSAL_LIMITS = ("max_clients", "max_per_ip", "max_handshaking_per_ip", "ip_connect_rate",
                  "web_per_ip")

# The limits a line is dropped for, the connection kept (chat_dropped_lines_total):
# the connection's --flood-rate, its address's --ip-lobby-rate (a lobby MSG).
DROP_LIMITS = ("flood_rate", "ip_lobby_rate")

# Where a chat connection came in (chat_accepted_connections_total): a
# --port (TCP or a UNIX socket, TLS or not), or a WebSocket on --web.
PORTS = ("chat", "web")

# Why an invitation ended without a pair (the hub's DECLINED and CANCELLED
# reasons; chat_invitations_ended_total).
INVITATION_ENDS = ("rejected", "withdrawn", "timeout", "busy", "gone")

# Why an HTTP connection to --web was closed by the server before it became
# a WebSocket (chat_http_closed_total): --web-timeout, or to make room in a
# full handshake pool (--max-handshaking).
HTTP_CLOSES = ("timeout", "evicted")

# Lines per fan-out batch; seconds per batch; seconds per database commit.
BATCH_LINES_BOUNDS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
FANOUT_SECONDS_BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                         0.05, 0.1, 0.25)
COMMIT_SECONDS_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                         0.5, 1.0, 2.5)


def _by_label(name: str, documentation: str, label: str,
              values: dict[str, int]) -> CounterMetricFamily:
    """A counter with one C{label}, a sample per key of C{values} (a copy
    of it is read: the reactor may add a key meanwhile)."""
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, value in dict(values).items():
        family.add_metric([key], value)
    return family


class Stats:
    """
    Counters kept on the reactor thread (the store's commit times on its
    writer thread).  Always there, whether or not metrics are served: adding
    to them costs less than asking whether to.
    """

    __slots__ = ("accepted", "bytes_out", "commit_seconds", "deliveries", "discarded",
                 "disconnects", "dropped_lines", "fanout_seconds", "fanout_sizes",
                 "http_closed", "input_discarded", "invitations", "invitations_ended",
                 "lobby_messages",
                 "logins", "paired_sides", "private_messages", "refusals")

    def __init__(self) -> None:
        # Lines and bytes handed to connections (the fan-out's and the rest).
        self.deliveries = 0
        self.bytes_out = 0
        # Of those bytes, the ones never written out: what a connection cut
        # for its output held, and what was handed to one already closing.
        self.discarded = 0
        # Input read from connections that were going and never handled
        # (InputHold.discard, and what one over its bound before
        # READY held when it was closed).
        self.input_discarded = 0
        # Messages this process's users sent (a cluster node's own users):
        # to the lobby (added to by the lines, once a message: no call), and
        # DMs and messages within a pair, by kind ("dm", "pair").
        self.lobby_messages = 0
        self.private_messages = {"dm": 0, "pair": 0}
        self.disconnects = dict.fromkeys(DISCONNECT_REASONS, 0)
        self.refusals = dict.fromkeys(REFUSAL_LIMITS, 0)
        self.dropped_lines = dict.fromkeys(DROP_LIMITS, 0)
        # Chat connections accepted (not refused), by port; of them, those
        # that chose a nick (their user came online).
        self.accepted = dict.fromkeys(PORTS, 0)
        self.logins = 0
        # Invitations this process's users made; how those (of its users,
        # or to them once the inviter is gone) ended without a pair; and
        # the sides of pairs that began held here (a pair: two sides, one
        # per node for a pair across two cluster nodes).
        self.invitations = 0
        self.invitations_ended = dict.fromkeys(INVITATION_ENDS, 0)
        self.paired_sides = 0
        self.http_closed = dict.fromkeys(HTTP_CLOSES, 0)
        # Lobby batches by their number of lines: the histogram of those
        # (fanout_lines) is made only when read.  One key per size seen,
        # so no more keys than the largest batch has lines.
        self.fanout_sizes: dict[int, int] = {}
        self.fanout_seconds = Buckets(FANOUT_SECONDS_BOUNDS)
        self.commit_seconds = Buckets(COMMIT_SECONDS_BOUNDS)

    def fanned_out(self, lines: int, deliveries: int, sent: int, seconds: float) -> None:
        """One lobby batch of C{lines} lines: C{deliveries} lines and C{sent}
        bytes handed to the members in all, in C{seconds}.  (The fan-out's
        L{twisted_chat.server.output.fanout.BatchObserver}.)"""
        self.deliveries += deliveries
        self.bytes_out += sent
        # This runs for every lobby batch: the size is only counted (no
        # bisect), the time is observed as Buckets.observe does, written out.
        sizes = self.fanout_sizes
        sizes[lines] = sizes.get(lines, 0) + 1
        buckets = self.fanout_seconds
        buckets.counts[bisect_left(buckets.bounds, seconds)] += 1
        buckets.total += seconds

    @property
    def fanout_lines(self) -> Buckets:
        """Lines per lobby batch as a histogram, made from L{fanout_sizes}
        when asked (a scrape: its thread copies the dict in one C call)."""
        return Buckets.of(BATCH_LINES_BOUNDS, dict(self.fanout_sizes))

    def fanned_out_paired(self, lines: int, deliveries: int, sent: int, seconds: float) -> None:
        """One batch of C{JOINED} and C{LEFT} lines for the users in a pair:
        counted as the direct writes it replaced (L{wrote}), not as a lobby
        batch."""
        self.deliveries += deliveries
        self.bytes_out += sent

    def wrote(self, data: bytes) -> None:
        """One write outside the fan-out (replies, DMs, user lists...)."""
        self.deliveries += data.count(b"\n")
        self.bytes_out += len(data)

    def count_discarded(self, size: int) -> None:
        """C{size} bytes handed to a connection never leave (it is closing,
        or was cut for its output)."""
        self.discarded += size

    def count_dropped(self, limit: str) -> None:
        """A line was dropped for flooding, over C{limit} (L{DROP_LIMITS})."""
        self.dropped_lines[limit] += 1

    def count_input_discarded(self, size: int) -> None:
        """C{size} bytes read from a going connection are never handled."""
        self.input_discarded += size

    def disconnected(self, reason: str) -> None:
        disconnects = self.disconnects
        disconnects[reason] = disconnects.get(reason, 0) + 1

    def count_refusal(self, limit: str) -> None:
        """A new connection was refused, over C{limit} (L{REFUSAL_LIMITS})."""
        self.refusals[limit] = self.refusals.get(limit, 0) + 1

    def count_accepted(self, port: str) -> None:
        """A chat connection was accepted on C{port} (L{PORTS})."""
        self.accepted[port] += 1

    def count_login(self) -> None:
        """A connection chose a nick (READY)."""
        self.logins += 1

    def count_private_message(self, kind: str) -> None:
        """One of this process's users sent a private message: C{"dm"}, or
        C{"pair"} within a pair."""
        self.private_messages[kind] += 1

    def count_invitation(self) -> None:
        """One of this process's users invited another (PAIR)."""
        self.invitations += 1

    def count_invitation_ended(self, reason: str) -> None:
        """An invitation ended without a pair, for C{reason} (L{INVITATION_ENDS})."""
        self.invitations_ended[reason] = self.invitations_ended.get(reason, 0) + 1

    def count_paired_side(self) -> None:
        """One side of a pair began here (a pair: two sides)."""
        self.paired_sides += 1

    def count_http_closed(self, reason: str) -> None:
        """The server closed an HTTP connection to --web before its upgrade,
        for C{reason} (L{HTTP_CLOSES})."""
        self.http_closed[reason] += 1

    def committed(self, seconds: float) -> None:
        """One database commit took C{seconds} (called on the store's
        writer thread)."""
        self.commit_seconds.observe(seconds)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The server's state at scrape time, read without stopping it: its own
    connections and users (a cluster node's, not the cluster's)."""

    handshaking: int  # connected, no nick yet
    lobby: int
    paired: int
    # Lobby messages not yet written to the database; None: no database
    # here (a cluster node: the history is in Redis), no chat_history_*.
    history_backlog: int | None
    history_dropped: int = 0  # dropped from a full backlog while the disk failed
    # HTTP connections to --web not (yet) upgraded to the WebSocket: they
    # count against --max-clients with the chat connections.
    http: int = 0
    # Bytes of input the connections hold behind commands decided elsewhere
    # (a password check; on a cluster node, Redis): HeldInput.total.
    held_input: int = 0
    # Wrong passwords (RETRY bad-password after a check), accounts' count.
    failed_logins: int = 0
    # Of the connections, the WebSockets (on the web port).
    websockets: int = 0
    # Connections not read for the held input's bound (HeldInput.paused).
    held_input_paused: int = 0
    # Bytes the server held for its connections at the --sendq-total
    # budget's last look (OutputBudget.held).
    output_held: int = 0
    # Lobby messages in the database (the store's count, kept by its
    # writer thread); None: not known (yet), or no database.
    history_messages: int | None = None
    # Bytes of the lobby history held in memory, as HISTORY lines
    # (History.bytes); not measured (0) where history_backlog is None.
    history_bytes: int = 0


class Server(Protocol):
    """What L{chat_snapshot} reads of the server (the
    L{twisted_chat.server.factory.ChatFactory})."""

    @property
    def state(self) -> ChatState: ...

    @property
    def connections(self) -> Sized: ...

    @property
    def other_connections(self) -> int: ...

    @property
    def websockets(self) -> Sized: ...

    @property
    def held_input(self) -> HeldInput: ...

    @property
    def accounts(self) -> Accounts | None: ...

    @property
    def output_budget(self) -> OutputBudget: ...

    @property
    def history(self) -> History: ...


def chat_snapshot(factory: Server, history_backlog: int | None = None,
                  history_dropped: int = 0,
                  history_messages: int | None = None) -> Snapshot:
    """
    What C{--metrics} reads of C{factory} at a scrape, from the scrape's
    thread: sizes, and, where C{chat_history_*} is shown (C{history_backlog}
    not C{None}), the in-memory history's bytes, measured over a copy of its
    ring (L{twisted_chat.server.history.History.bytes}).  This process's
    connections and users (on a cluster node, its own, not its replica's of
    the whole cluster).
    @param history_backlog: the database's; C{None} where there is none
        (a cluster node), and then no C{chat_history_*} is shown.
    """
    online, lobby = factory.state.counts()
    return Snapshot(
        handshaking=max(len(factory.connections) - online, 0),
        lobby=lobby,
        paired=max(online - lobby, 0),
        history_backlog=history_backlog,
        history_dropped=history_dropped,
        http=factory.other_connections,
        held_input=factory.held_input.total,
        failed_logins=factory.accounts.failed_logins if factory.accounts is not None else 0,
        websockets=len(factory.websockets),
        held_input_paused=len(factory.held_input.paused),
        output_held=factory.output_budget.held,
        history_messages=history_messages,
        history_bytes=factory.history.bytes if history_backlog is not None else 0,
    )


class ChatCollector(Collector):
    """Reads L{Stats} and a L{Snapshot} at each scrape; computes nothing between."""

    def __init__(self, stats: Stats, snapshot: Callable[[], Snapshot]) -> None:
        self.stats = stats
        self.snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics())

    def _metrics(self) -> Iterator[Metric]:
        now = self.snapshot()
        stats = self.stats
        connections = GaugeMetricFamily(
            "chat_connections", "Open client connections, by state (http: HTTP "
            "connections to the web port, not yet WebSockets; all count against "
            "--max-clients).", labels=["state"])
        for state, value in (("handshake", now.handshaking), ("lobby", now.lobby),
                             ("paired", now.paired), ("http", now.http)):
            connections.add_metric([state], value)
        yield connections
        yield InfoMetricFamily("chat_build", "The server's version.",
                               value={"version": __version__})
        yield GaugeMetricFamily(
            "chat_websockets", "Of chat_connections (handshake, lobby, paired), the "
            "WebSockets on the web port.", value=now.websockets)
        yield _by_label("chat_accepted_connections", "Chat connections accepted (not "
                        "refused), by port: a --port (chat), a WebSocket on --web (web).",
                        "port", stats.accepted)
        yield CounterMetricFamily("chat_logins", "Connections that chose a nick (READY).",
                                  value=stats.logins)
        yield GaugeMetricFamily("chat_users_online", "Users online (in the lobby or paired).",
                                value=now.lobby + now.paired)
        yield GaugeMetricFamily(
            "chat_held_input_bytes", "Input read from clients and not yet handled, held "
            "behind their commands decided elsewhere (a password check; on a cluster node, "
            "Redis). Past its bound (a cluster node's --redis-queue), connections with a "
            "command waiting are not read.", value=now.held_input)
        yield GaugeMetricFamily(
            "chat_held_input_paused_connections", "Connections not read because the held "
            "input is over its bound.", value=now.held_input_paused)
        yield GaugeMetricFamily(
            "chat_output_held_bytes", "Bytes the server held for its connections' output "
            "at the --sendq-total budget's last look (each second, and within a busy turn).",
            value=now.output_held)
        # Halves: a pair across two cluster nodes counts 0.5 on each, so
        # that the sum over the nodes is the cluster's (one server: whole pairs).
        yield GaugeMetricFamily("chat_pairs", "Private conversations going on "
                                "(a pair across two cluster nodes: one half on each).",
                                value=now.paired / 2)
        yield CounterMetricFamily("chat_invitations",
                                  "Invitations (PAIR) made by this server's users.",
                                  value=stats.invitations)
        yield _by_label("chat_invitations_ended",
                        "Invitations ended without a pair, by reason.",
                        "reason", stats.invitations_ended)
        yield CounterMetricFamily("chat_pairings", "Private conversations begun (a pair "
                                  "across two cluster nodes: one half on each).",
                                  value=stats.paired_sides / 2)
        yield CounterMetricFamily("chat_lobby_messages",
                                  "Lobby messages accepted from this server's users.",
                                  value=stats.lobby_messages)
        private = CounterMetricFamily(
            "chat_private_messages",
            "Private messages from this server's users: DMs (kind=dm) and messages "
            "within a pair (kind=pair).",
            labels=["kind"])
        for kind, value in sorted(dict(stats.private_messages).items()):
            private.add_metric([kind], value)
        yield private
        yield CounterMetricFamily("chat_deliveries",
                                  "Lines handed to client connections.",
                                  value=stats.deliveries)
        yield CounterMetricFamily("chat_sent_bytes", "Bytes handed to client connections.",
                                  value=stats.bytes_out)
        yield CounterMetricFamily(
            "chat_discarded_bytes", "Bytes counted in chat_sent_bytes that never left: held "
            "for a connection cut for its output, or handed to one already closing.",
            value=stats.discarded)
        yield CounterMetricFamily(
            "chat_discarded_input_bytes", "Bytes read from clients and never handled: sent "
            "behind a login that ends in BYE flood, or held before READY past its bound.",
            value=stats.input_discarded)
        yield _by_label("chat_disconnects", "Connections ended, by reason.",
                        "reason", stats.disconnects)
        yield _by_label("chat_refusals", "New connections refused, by the limit they were "
                        "over (chat_disconnects_total refused and refused_http together).",
                        "limit", stats.refusals)
        yield _by_label("chat_dropped_lines",
                        "Lines dropped by flood control (ERROR flood), by limit.",
                        "limit", stats.dropped_lines)
        yield _by_label("chat_http_closed", "HTTP connections to the web port closed by the "
                        "server before their WebSocket upgrade: --web-timeout (timeout), or "
                        "to make room in the handshake pool (evicted).",
                        "reason", stats.http_closed)
        yield CounterMetricFamily("chat_failed_logins",
                                  "Logins refused for a wrong password (RETRY bad-password).",
                                  value=now.failed_logins)
        yield stats.fanout_lines.family("chat_fanout_batch_lines",
                                        "Lines per lobby fan-out batch.")
        yield stats.fanout_seconds.family("chat_fanout_duration_seconds",
                                          "Time to write one lobby batch to the lobby.")
        if now.history_backlog is None:
            return
        yield GaugeMetricFamily("chat_history_backlog",
                                "Lobby messages waiting to be written to the database.",
                                value=now.history_backlog)
        if now.history_messages is not None:
            yield GaugeMetricFamily("chat_history_messages",
                                    "Lobby messages in the database.",
                                    value=now.history_messages)
        yield GaugeMetricFamily("chat_history_bytes",
                                "Bytes of the lobby history held in memory (the last --history "
                                "messages), as the HISTORY lines they make.",
                                value=now.history_bytes)
        yield CounterMetricFamily(
            "chat_history_dropped",
            "Lobby messages dropped from a full backlog while the database failed.",
            value=now.history_dropped)
        yield stats.commit_seconds.family("chat_history_commit_duration_seconds",
                                          "Time of one database commit (a batch).")


def registry_for(stats: Stats, snapshot: Callable[[], Snapshot],
                 *more: Collector) -> CollectorRegistry:
    """A registry of its own (not the global one): the chat's metrics, the
    process's CPU, memory and descriptors, and C{more} (a cluster node's
    gauges of the cluster)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ChatCollector(stats, snapshot))
    for collector in more:
        registry.register(collector)
    ProcessCollector(registry=registry)
    return registry
