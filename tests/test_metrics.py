"""
The metrics module on its own, and the counters the server keeps for it,
over StringTransport and task.Clock (tests/harness.py).  The HTTP side is
in tests/test_e2e_metrics.py.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import generate_latest
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from tests.harness import Harness
from tests.test_login import PW, HeldWork, add, fresh
from tests.test_login import harness as login_harness
from tests.test_service import ThreadedMemoryReactor, options
from tests.web.test_admission import BAD_REQUEST, MALFORMED
from twisted_chat.server.history import Entry, History
from twisted_chat.server.lines import history_lines
from twisted_chat.server.metrics.counters import (
    BATCH_LINES_BOUNDS,
    Buckets,
    ChatCollector,
    Snapshot,
    Stats,
    registry_for,
)
from twisted_chat.server.output.fanout import LobbyFanout
from twisted_chat.server.ports.listening import PortService
from twisted_chat.server.service import ChatService, makeService
from twisted_chat.server.store import SQLiteStore

reactor: Any = _reactor

# -- Buckets: a histogram as Prometheus means it ----------------------------------


def test_buckets_are_cumulative_and_less_than_or_equal() -> None:
    buckets = Buckets((1, 5, 10))
    for value in (0.5, 1, 3, 5, 7, 100):
        buckets.observe(value)
    family = buckets.family("x", "doc")
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("x_bucket", "1.0")] == 2  # 0.5 and 1 (le: equal counts)
    assert samples[("x_bucket", "5.0")] == 4
    assert samples[("x_bucket", "10.0")] == 5
    assert samples[("x_bucket", "+Inf")] == 6
    assert samples[("x_count", None)] == 6
    assert samples[("x_sum", None)] == pytest.approx(116.5)


def test_buckets_of_values_counted_by_value_are_those_observed_one_by_one() -> None:
    """A hot path may only count its values (the fan-out's batch sizes):
    the histogram made from those counts when read is the one that
    observing each value would have made."""
    values = [1, 1, 1, 2, 3, 7, 50, 5000]
    observed = Buckets(BATCH_LINES_BOUNDS)
    for value in values:
        observed.observe(value)
    made = Buckets.of(BATCH_LINES_BOUNDS, {v: values.count(v) for v in set(values)})
    stats = Stats()
    for value in values:
        stats.fanned_out(lines=value, deliveries=0, sent=0, seconds=0.0)
    assert stats.fanout_sizes == {1: 3, 2: 1, 3: 1, 7: 1, 50: 1, 5000: 1}
    lines = stats.fanout_lines
    # le 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, +Inf
    assert made.counts == lines.counts == observed.counts == [3, 1, 1, 1, 0, 1, 0, 0, 0, 0, 1]
    assert made.total == lines.total == observed.total == sum(values)


# -- the collector ------------------------------------------------------------------


Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(stats: Stats, snapshot: Snapshot) -> Values:
    registry = registry_for(stats, lambda: snapshot)
    values: Values = {}
    for family in registry.collect():
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_the_collector_reports_each_metric_from_stats_and_snapshot() -> None:
    stats = Stats()
    stats.fanned_out(lines=3, deliveries=30, sent=600, seconds=0.002)
    stats.wrote(b"PONG x\r\nPONG y\r\n")
    stats.disconnected("quit")
    stats.disconnected("sendq")
    stats.private_messages["dm"] += 2
    stats.lobby_messages = 42
    snapshot = Snapshot(handshaking=1, lobby=8, paired=2, history_backlog=5, history_dropped=1,
                        held_input=1234)
    got = scrape(stats, snapshot)
    assert got[("chat_held_input_bytes", ())] == 1234
    assert got[("chat_connections", (("state", "handshake"),))] == 1
    assert got[("chat_connections", (("state", "lobby"),))] == 8
    assert got[("chat_connections", (("state", "paired"),))] == 2
    assert got[("chat_users_online", ())] == 10
    assert got[("chat_pairs", ())] == 1
    assert got[("chat_lobby_messages_total", ())] == 42
    assert got[("chat_private_messages_total", (("kind", "dm"),))] == 2
    assert got[("chat_private_messages_total", (("kind", "pair"),))] == 0
    assert got[("chat_deliveries_total", ())] == 32
    assert got[("chat_sent_bytes_total", ())] == 616
    for reason, n in (("quit", 1), ("sendq", 1), ("refused", 0), ("timeout", 0),
                      ("flood", 0), ("disconnected", 0)):
        assert got[("chat_disconnects_total", (("reason", reason),))] == n
    assert got[("chat_fanout_batch_lines_count", ())] == 1
    assert got[("chat_fanout_batch_lines_sum", ())] == 3
    assert got[("chat_fanout_duration_seconds_sum", ())] == pytest.approx(0.002)
    assert got[("chat_history_backlog", ())] == 5
    assert got[("chat_history_dropped_total", ())] == 1
    assert got[("chat_history_commit_duration_seconds_count", ())] == 0
    # The process's own, from prometheus_client's ProcessCollector.
    assert got[("process_cpu_seconds_total", ())] > 0
    assert got[("process_resident_memory_bytes", ())] > 0


def test_the_exposition_is_valid_text() -> None:
    registry = registry_for(Stats(), lambda: Snapshot(0, 0, 0, 0, 0))
    text = generate_latest(registry).decode()
    assert "# TYPE chat_disconnects_total counter" in text
    assert "# TYPE chat_fanout_duration_seconds histogram" in text
    assert isinstance(ChatCollector(Stats(), lambda: Snapshot(0, 0, 0, 0, 0)).collect(),
                      list)


def test_no_history_metrics_where_there_is_no_database() -> None:
    """A cluster node keeps its history in Redis: no chat_history_* at all
    (rather than a backlog forever 0 that an alert would trust)."""
    names = {name for name, _ in scrape(Stats(), Snapshot(1, 2, 0, None))}
    assert "chat_users_online" in names
    assert not [name for name in names if name.startswith("chat_history")]
    names = {name for name, _ in scrape(Stats(), Snapshot(1, 2, 0, 0))}
    assert {"chat_history_backlog", "chat_history_dropped_total",
            "chat_history_commit_duration_seconds_count"} <= names
    # Its count of messages, once the store's writer has made it.
    assert "chat_history_messages" not in names
    assert scrape(Stats(), Snapshot(1, 2, 0, 0, history_messages=7))[
        ("chat_history_messages", ())] == 7


# -- the fan-out reports once per batch ------------------------------------------------


class Member:
    closing = False

    def __init__(self) -> None:
        self.got: list[bytes] = []

    def deliver(self, data: bytes) -> None:
        self.got.append(data)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def test_the_fanout_reports_each_batch_once_with_exact_totals() -> None:
    clock = Clock()
    members = [Member() for _ in range(3)]
    batches: list[tuple[int, int, int, float]] = []
    ticks = iter([10.0, 10.25, 20.0, 20.5])
    fanout = LobbyFanout(clock, lambda: members, 0.0,
                         on_batch=lambda *a: batches.append(a), timer=lambda: next(ticks))
    fanout.add(b"a\r\n")
    fanout.add(b"bb\r\n")
    clock.advance(0)
    assert batches == [(2, 6, 21, 0.25)]  # 2 lines, 3 members, 7 bytes each
    # A newcomer in the batch gets only what follows its JOINED: counted exactly.
    newcomer = Member()
    fanout.add(b"old\r\n")
    members.append(newcomer)
    fanout.add_joined(b"J\r\n", newcomer)
    fanout.add(b"new\r\n")
    clock.advance(0)
    assert newcomer.got == [b"new\r\n"]
    assert batches[1] == (3, 3 * 3 + 1, 3 * 13 + 5, 0.5)  # old+J+new: 13 bytes


# -- the server's counters, over StringTransport ---------------------------------------


def value(h: Harness, name: str, **labels: str) -> float:
    chat = ChatService(h.factory)
    got = scrape(h.factory.stats, chat.snapshot())
    return got[(name, tuple(sorted(labels.items())))]


def test_connections_users_pairs_and_messages_move_with_the_chat() -> None:
    h = Harness()
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    h.connect()  # still choosing a nick
    assert value(h, "chat_connections", state="handshake") == 1
    assert value(h, "chat_connections", state="lobby") == 3
    assert value(h, "chat_users_online") == 3
    alice.send("MSG one", "MSG two")
    assert value(h, "chat_lobby_messages_total") == 2
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    assert value(h, "chat_pairs") == 1
    assert value(h, "chat_connections", state="paired") == 2
    alice.send("MSG just us")
    carol.send("DM alice psst")
    assert value(h, "chat_private_messages_total", kind="pair") == 1
    assert value(h, "chat_private_messages_total", kind="dm") == 1
    assert value(h, "chat_lobby_messages_total") == 2


def test_the_history_s_bytes_are_those_of_its_history_lines() -> None:
    """chat_history_bytes: the bytes of the HISTORY lines the in-memory
    history holds (what a newcomer would be sent with no --history-bytes),
    kept as messages come and the oldest go (--history 3), with texts
    outside ASCII; a newcomer is sent --history-bytes of them."""
    h = Harness(history=3, history_bytes=100)

    def held() -> int:
        return len(history_lines(h.factory.history.recent(), 1 << 30))

    assert value(h, "chat_history_bytes") == 0
    alice, zoe = h.user("alice"), h.user("zoe")
    alice.send("MSG one")
    assert value(h, "chat_history_bytes") == held() == 35 + 5 + 4  # "HISTORY <ts> alice one"
    zoe.send("MSG héllo wörld", "MSG " + "x" * 60, "MSG ☃")
    assert len(h.factory.history.recent()) == 3  # "one" is gone
    assert value(h, "chat_history_bytes") == held() == (35 + 3) * 3 + 14 + 61 + 4
    assert len(h.factory.lines.history_block()) < 100 < held()


class Kept:
    """A store that keeps nothing (the MessageStore the history attaches)."""

    def append(self, entry: Entry) -> None:
        pass

    def close(self) -> Deferred[None]:
        return succeed(None)


def test_the_history_s_bytes_follow_a_load_and_a_history_of_none() -> None:
    """History.bytes after the store's messages replace the ring (at
    start), and with --history 0 (nothing kept: 0)."""
    entries = [Entry(1.5, "ann", "a" * n) for n in range(5)]
    assert History(3, initial=entries).bytes == len(history_lines(entries[-3:], 1 << 30))
    history = History(3, initial=entries[:1])
    history.attach(Kept(), entries[1:4])
    assert history.bytes == len(history_lines(entries[1:4], 1 << 30))
    history.record(Entry(2.0, "bob", ""))  # no text: no space before it
    assert history.bytes == len(history_lines(history.recent(), 1 << 30))
    none = History(0)
    none.record(Entry(2.0, "bob", "hi"))
    assert none.bytes == 0 and none.recent() == []


def test_the_history_s_bytes_cost_a_lobby_message_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """History.bytes is worked out when a scrape asks, not on each lobby
    message (the hot path): recording measures no line; an ask measures
    the ring's entries."""
    from twisted_chat.server import history as history_module

    measured: list[Entry] = []

    def line_size(entry: Entry) -> int:
        measured.append(entry)
        return real(entry)

    real = history_module.line_size
    monkeypatch.setattr(history_module, "line_size", line_size)
    history = History(3)
    for n in range(10):
        history.record(Entry(1.5, "ann", "a" * n))
    assert measured == []
    assert history.bytes == len(history_lines(history.recent(), 1 << 30))
    assert len(measured) == 3


def test_the_input_held_behind_a_password_check_is_a_gauge() -> None:
    """What a connection sends while its NICK's account lookup (here held)
    is decided waits, counted in the server's HeldInput: its total is
    chat_held_input_bytes, back to 0 once the lookup is answered."""
    h = login_harness(work=HeldWork())
    add(h, "alice")
    conn = fresh(h)
    conn.send("NICK alice")  # the lookup waits in HeldWork
    assert value(h, "chat_held_input_bytes") == 0  # nothing held yet
    conn.send("PING one", "PING two")
    assert conn.take() == []  # they wait behind the NICK
    assert value(h, "chat_held_input_bytes") == h.factory.held_input.total == 20
    h.work.release()  # type: ignore[attr-defined]
    assert conn.take() == ["PASS alice", "PONG one", "PONG two"]
    assert value(h, "chat_held_input_bytes") == 0


def test_deliveries_and_bytes_count_what_connections_were_handed() -> None:
    h = Harness()
    conns = [h.user(n) for n in ("alice", "bob", "carol")]
    stats = h.factory.stats
    before = (stats.deliveries, stats.bytes_out)
    conns[0].send("MSG hello")
    conns[1].send("PING x")
    dave = h.connect()
    dave.send("NICK dave")  # greeting, READY, history, user list; JOINED to the others
    got = [c.transport.value() for c in [*conns, dave]]
    assert stats.deliveries - before[0] == sum(g.count(b"\n") for g in got)
    assert stats.bytes_out - before[1] == sum(len(g) for g in got)


def test_disconnects_are_counted_by_reason() -> None:
    h = Harness(max_clients=3, sendq=65536 + 1000, nick_timeout=5.0)
    quitter, dropped, slow = h.user("quitter"), h.user("dropped"), h.user("slow")
    h.connect()  # over --max-clients: refused
    quitter.send("BYE")
    quitter.drop()
    dropped.protocol.connectionLost(Failure(ConnectionDone()))
    slow.transport.producer.pauseProducing()
    talker = h.user("talker")
    for _ in range(3):
        talker.send("MSG " + "x" * 400)
    slow.protocol.connectionLost(Failure(ConnectionAborted()))
    late = h.connect()
    h.clock.advance(5.0)  # no nick in time
    late.drop()
    stats = h.factory.stats
    assert {k: v for k, v in stats.disconnects.items() if v} == {
        "refused": 1, "quit": 1, "disconnected": 1, "sendq": 1, "timeout": 1}


def test_full_flood_and_shutdown_are_counted_by_reason() -> None:
    """The reasons test_disconnects_are_counted_by_reason does not reach:
    a handshake-pool eviction (full), a flooder (flood), and the BYE
    shutdown, each through its connectionLost to the metric."""
    h = Harness(max_clients=200, max_handshaking=2, flood_rate=10.0, flood_burst=20)
    flooder, stays = h.user("flooder"), h.user("stays")
    flooder.send(*["PING"] * 19)
    flooder.send(*["MSG spam"] * 21)
    assert flooder.take()[-1].startswith("BYE flood")
    flooder.drop()
    oldest = h.connect("10.0.0.1")
    nickless = [h.connect("10.0.0.1"),
                h.connect("192.0.2.50")]  # the pool is full: the biggest address's oldest goes
    assert oldest.take()[-1].startswith("BYE full")
    oldest.drop()
    h.factory.shutdown()
    for conn in [stays, *nickless]:
        conn.drop()
    assert value(h, "chat_disconnects_total", reason="full") == 1
    assert value(h, "chat_disconnects_total", reason="flood") == 1
    assert value(h, "chat_disconnects_total", reason="shutdown") == 3  # stays, 2 nickless
    assert {k: v for k, v in h.factory.stats.disconnects.items() if v} == {
        "full": 1, "flood": 1, "shutdown": 3}


# -- the store's commit time, and the service wiring ------------------------------------


@pytest_twisted.inlineCallbacks
def test_the_store_reports_each_commit(tmp_path: Path) -> Generator[Any, Any, None]:
    store = SQLiteStore.open(str(tmp_path / "chat.sqlite3"), reactor)
    buckets = Buckets((1.0,))
    store.on_commit = buckets.observe
    store.append(Entry(1.0, "a", "x"))
    yield store.flush().addTimeout(10, reactor)
    store.append(Entry(2.0, "a", "y"))
    yield store.close().addTimeout(10, reactor)
    assert sum(buckets.counts) == 2
    assert 0 < buckets.total < 2.0


@pytest.mark.parametrize("store", [("--db", ":memory:"), ("--redis", "redis://127.0.0.1:1/0")],
                         ids=["one server", "cluster node"])
def test_metrics_is_off_by_default_and_served_on_its_own_port(store: tuple[str, str]) -> None:
    """Also on a cluster node (--redis), where it was refused at first."""
    assert options().config().metrics is None
    assert options("--metrics", "9108").config().metrics == "tcp:9108"
    reactor = ThreadedMemoryReactor()
    top = makeService(options("--port", "7001", *store,
                              "--metrics", "tcp:9108:interface=127.0.0.1"), reactor)
    services = list(top)  # type: ignore[call-overload]
    assert [(s.description, s.option) for s in services if isinstance(s, PortService)] == [
        ("tcp:7001", "--port"), ("tcp:9108:interface=127.0.0.1", "--metrics")]
    top.privilegedStartService()
    assert sorted(port for port, *_ in reactor.tcpServers) == [7001, 9108]


def test_a_bad_metrics_endpoint_is_one_line() -> None:
    with pytest.raises(SystemExit) as e:
        makeService(options("--db", ":memory:", "--metrics", "tcp:nine"),
                    ThreadedMemoryReactor())
    assert str(e.value).startswith("twistd chat: bad --metrics 'tcp:nine': ")


@pytest_twisted.inlineCallbacks
def test_messages_dropped_by_the_store_reach_the_metric_and_stay_after_recovery(
    tmp_path: Path,
) -> Generator[Any, Any, None]:
    """ChatService.snapshot reads the store's drop count into
    chat_history_dropped_total, which does not go back when the disk does."""
    from tests.test_store import FullDisk, failed_write

    h = Harness()
    chat = ChatService(h.factory)
    store = FullDisk.open(str(tmp_path / "chat.sqlite3"), reactor, max_backlog=4)
    assert isinstance(store, FullDisk)
    chat.store = store
    try:
        for i in range(10):
            store.append(Entry(1.0 + i, "a", f"m{i}"))
        yield failed_write(store)
        during = scrape(h.factory.stats, chat.snapshot())
        assert during[("chat_history_dropped_total", ())] == 6
        assert during[("chat_history_backlog", ())] == 4
        assert during[("chat_history_messages", ())] == 0  # none written yet
        store.failing = False
        yield store.flush().addTimeout(10, reactor)
        after = scrape(h.factory.stats, chat.snapshot())
        assert after[("chat_history_dropped_total", ())] == 6
        assert after[("chat_history_backlog", ())] == 0
        assert after[("chat_history_messages", ())] == 4  # in the database
    finally:
        yield store.close().addTimeout(10, reactor)


def test_a_connection_cut_for_its_send_queue_is_not_recounted_at_shutdown() -> None:
    """Cut for sendq (aborted, its connectionLost on a later turn), then a
    shutdown (or a cluster's FactoryHooks.lost) in between: it stays a sendq, for
    the metric and for the others' LEFT."""
    h = Harness(sendq=65536 + 1000)
    slow, talker = h.user("slow"), h.user("talker")
    slow.transport.producer.pauseProducing()
    for _ in range(3):
        talker.send("MSG " + "x" * 400)
    assert slow.protocol.closing  # cut; Twisted has not called connectionLost yet
    heard: list[tuple[str, str]] = []
    leave = h.factory.state.leave
    h.factory.state.leave = lambda user, reason, *a: (  # type: ignore[method-assign]
        heard.append((user.nick, reason)), leave(user, reason, *a))[-1]
    h.factory.shutdown()
    slow.protocol.connectionLost(Failure(ConnectionAborted()))
    assert {k: v for k, v in h.factory.stats.disconnects.items() if v} == {"sendq": 1}
    assert ("slow", "sendq") in heard, heard  # what the hub tells the others


# -- what the counters tell apart (rev11-metrics) --------------------------------------

# What a paused test transport counts as held: Twisted's buffer size (SendQueue).
PAUSED_HELD = 65536


def _left_reasons(h: Harness) -> list[tuple[str, str]]:
    heard: list[tuple[str, str]] = []
    leave = h.factory.state.leave
    h.factory.state.leave = lambda user, reason, *a: (  # type: ignore[method-assign]
        heard.append((user.nick, reason)), leave(user, reason, *a))[-1]
    return heard


def _cut_at_sendq(h: Harness, slow: Any, talker: Any) -> None:
    for _ in range(3):
        talker.send("MSG " + "x" * 400)


def _cut_at_sendq_timeout(h: Harness, slow: Any, talker: Any) -> None:
    talker.send("MSG hi")
    for _ in range(10):  # seen stalled at 2 s, cut 8 s after
        h.clock.advance(1.0)


def _cut_at_sendq_total(h: Harness, slow: Any, talker: Any) -> None:
    talker.send("DM slow " + "x" * 2000, "DM slow " + "x" * 2000)
    h.clock.advance(1.0)


@pytest.mark.parametrize(("config", "cut", "counted"), [
    (dict(sendq=PAUSED_HELD + 1000), _cut_at_sendq, "sendq"),
    (dict(sendq_timeout=8.0), _cut_at_sendq_timeout, "sendq_timeout"),
    (dict(sendq_total=PAUSED_HELD + 1000), _cut_at_sendq_total, "sendq_total"),
])
def test_each_output_limit_is_its_own_disconnect_reason_and_the_wire_says_sendq(
        config: dict[str, Any], cut: Callable[[Harness, Any, Any], None], counted: str) -> None:
    """--sendq, --sendq-timeout and --sendq-total each cut a reader that
    does not read: chat_disconnects_total tells them apart (the last is
    the server short of memory, not one bad client), while the others'
    LEFT says sendq for all three, as chat/1 defines."""
    h = Harness(**config)
    slow, talker = h.user("slow"), h.user("talker")
    heard = _left_reasons(h)
    slow.transport.producer.pauseProducing()
    cut(h, slow, talker)
    assert slow.protocol.closing and slow.transport.disconnected
    slow.protocol.connectionLost(Failure(ConnectionAborted()))
    h.clock.advance(0)
    assert {k: v for k, v in h.factory.stats.disconnects.items() if v} == {counted: 1}
    assert value(h, "chat_disconnects_total", reason=counted) == 1
    assert heard == [("slow", "sendq")]
    assert talker.take()[-1].endswith(" slow sendq")


def test_what_a_cut_reader_never_got_is_counted_as_discarded() -> None:
    """chat_sent_bytes_total counts what connections were handed; what a
    connection cut for --sendq held (here: Twisted's buffer, and the
    lines written since it paused) and the write that did not fit never
    leave: chat_discarded_bytes_total, so that sent minus discarded is
    what the other connections got plus what the cut one had taken.  The
    lobby lines between the cut and its connectionLost are not handed to
    it (a batch leaves a closing member out): neither sent nor discarded
    (they were both, rr21-f)."""
    h = Harness(sendq=PAUSED_HELD + 1000)
    slow, talker, other = h.user("slow"), h.user("talker"), h.user("other")
    stats = h.factory.stats
    sent, discarded = stats.bytes_out, stats.discarded
    slow.transport.producer.pauseProducing()
    for _ in range(3):
        talker.send("MSG " + "x" * 400)  # the third does not fit: cut
    assert slow.protocol.closing
    held_at_cut = PAUSED_HELD + len(slow.transport.value())  # all written since it paused
    talker.send("MSG after the cut")  # not handed to slow, though still in the lobby
    assert not slow.transport.value().endswith(b"after the cut\r\n")
    slow.protocol.connectionLost(Failure(ConnectionAborted()))
    h.clock.advance(0)
    got = sum(len(c.transport.value()) for c in (talker, other))
    refused = (stats.bytes_out - sent) - got - len(slow.transport.value())
    lines = other.transport.value().splitlines(keepends=True)
    assert lines[3].endswith(b" talker * after the cut\r\n")
    assert refused == len(lines[2])  # the third MSG; the late one was not handed to it
    assert stats.discarded - discarded == held_at_cut + refused
    assert value(h, "chat_discarded_bytes_total") == stats.discarded
    # What left: the others' lines, and what slow had taken (none of it).
    assert (stats.bytes_out - sent) - (stats.discarded - discarded) == got - PAUSED_HELD


def test_a_newcomer_cut_at_its_history_counts_the_refused_parts_as_discarded() -> None:
    """READY, the history and the user list go in parts (deliver_parts):
    the newcomer that does not read takes READY, the history does not fit
    (cut), and the parts from it on are discarded with what it held; sent
    minus discarded is still what the others got (and none of the
    newcomer's, all held by its paused transport)."""
    h = Harness(sendq=PAUSED_HELD + 100)
    talker = h.user("talker")
    for n in range(5):
        talker.send(f"MSG history line {n} " + "y" * 50)
    stats = h.factory.stats
    newcomer = h.connect()
    newcomer.take()
    h.clear_all()
    sent, discarded = stats.bytes_out, stats.discarded
    newcomer.transport.producer.pauseProducing()
    newcomer.send("NICK newcomer")
    assert newcomer.protocol.closing
    assert newcomer.take() == ["READY newcomer"]  # the history did not fit
    newcomer.protocol.connectionLost(Failure(ConnectionAborted()))
    h.clock.advance(0)
    history, roster = h.factory.lines.history_block(), h.factory.lines.roster()
    held = PAUSED_HELD + len(b"READY newcomer\r\n")
    # (JOINED rides the fan-out after the newcomer's share begins: nothing more.)
    assert stats.discarded - discarded == held + len(history) + len(roster)
    assert (stats.bytes_out - sent) - (stats.discarded - discarded) == (
        len(talker.transport.value()) - PAUSED_HELD)


def test_lines_to_a_refused_connection_are_counted_as_sent() -> None:
    """ERROR server-full and BYE full are lines the server writes: in
    chat_sent_bytes_total and chat_deliveries_total like any other; a
    refusal aborted at once (too many refusals waiting out their close)
    never sends them, and they are discarded."""
    h = Harness(max_clients=1)
    h.user("alice")
    stats = h.factory.stats
    sent, lines, discarded = stats.bytes_out, stats.deliveries, stats.discarded
    refused = h.connect()
    got = refused.transport.value()
    assert got.startswith(b"ERROR server-full ") and got.endswith(b"BYE full\r\n")
    assert (stats.bytes_out - sent, stats.deliveries - lines) == (len(got), 2)
    assert stats.discarded == discarded
    h.factory.closing_refusals.limit = 0  # no room to wait out a close: aborted now
    again = h.connect()
    assert again.transport.value() == got  # what it was handed (then dropped by the abort)
    assert stats.bytes_out - sent == 2 * len(got)
    assert stats.discarded - discarded == len(got)


def test_refusals_are_counted_by_the_limit_they_are_over() -> None:
    """chat_refusals_total{limit}: a full server apart from one address over
    its own limits, so "users cannot get in" need not fire for one abuser."""
    h = Harness(max_clients=6, max_per_ip=2, max_handshaking_per_ip=1,
                ip_connect_rate=0.001, ip_connect_burst=3)
    h.connect("192.0.2.1").send("NICK a1")
    h.connect("192.0.2.1")  # choosing a nick
    h.connect("192.0.2.1")  # a third: over --max-per-ip
    h.connect("192.0.2.2")  # choosing a nick
    h.connect("192.0.2.2")  # a second choosing a nick: over --max-handshaking-per-ip
    for _ in range(3):
        h.connect("192.0.2.3").drop()  # its burst of new connections
    h.connect("192.0.2.3")  # no token left: over --ip-connect-rate
    for host in ("192.0.2.4", "192.0.2.5", "192.0.2.6"):
        h.connect(host)  # 6 connections open: the server is full
    h.connect("192.0.2.7")  # the 7th: over --max-clients
    assert value(h, "chat_refusals_total", limit="max_clients") == 1
    assert value(h, "chat_refusals_total", limit="max_per_ip") == 1
    assert value(h, "chat_refusals_total", limit="max_handshaking_per_ip") == 1
    assert value(h, "chat_refusals_total", limit="ip_connect_rate") == 1
    assert value(h, "chat_refusals_total", limit="web_per_ip") == 0
    assert value(h, "chat_disconnects_total", reason="refused") == 4


def test_wrong_passwords_are_counted() -> None:
    """chat_failed_logins_total: RETRY bad-password after a check (password
    guessing shows), not a right password."""
    h = login_harness()
    add(h, "alice")
    assert value(h, "chat_failed_logins_total") == 0
    conn = fresh(h)
    for _ in range(2):
        conn.send("NICK alice")
        assert conn.take() == ["PASS alice"]
        conn.send("PASS wrong-password")
        assert conn.take_one().startswith("RETRY bad-password ")
    conn.send("NICK alice", f"PASS {PW}")
    assert "READY alice" in conn.take()
    assert value(h, "chat_failed_logins_total") == 2
    assert value(Harness(), "chat_failed_logins_total") == 0  # accounts off: 0, not absent


def test_lines_dropped_by_flood_control_are_counted_by_limit() -> None:
    """chat_dropped_lines_total{limit}: lines dropped with ERROR flood, the
    connection kept: over its --flood-rate, or its address's --ip-lobby-rate."""
    h = Harness(flood_rate=1.0, flood_burst=5)
    alice = h.user("alice")
    alice.send(*["PING"] * 7)  # 4 left in the burst (NICK took one), 3 dropped
    got = alice.take()
    assert got[:4] == ["PONG"] * 4 and len(got) == 5 and got[4].startswith("ERROR flood "), got
    assert not alice.transport.disconnected
    assert value(h, "chat_dropped_lines_total", limit="flood_rate") == 3
    assert value(h, "chat_dropped_lines_total", limit="ip_lobby_rate") == 0
    h = Harness(ip_lobby_rate=0.001, ip_lobby_burst=2, flood_burst=20)
    bob = h.user("bob")
    bob.send("MSG one", "MSG two", "MSG three")
    assert bob.take()[-1].startswith("ERROR flood ")  # after its two lines
    assert not bob.transport.disconnected
    assert value(h, "chat_dropped_lines_total", limit="ip_lobby_rate") == 1
    assert value(h, "chat_dropped_lines_total", limit="flood_rate") == 0


# -- the metrics port's limits ----------------------------------------------------------


def metrics_connection(site: Any, port: int, host: str = "127.0.0.1",
                       transport_type: Any = None) -> tuple[Any, Any] | None:
    """One accepted connection to C{site} from C{host}: its channel and
    transport (a StringTransport, or C{transport_type}), or None if the site
    refused it (its protocol aborts the connection when made)."""
    from twisted.internet.address import IPv4Address, IPv6Address
    from twisted.internet.testing import StringTransport

    address: Any = (IPv6Address("TCP", host, port) if ":" in host
                    else IPv4Address("TCP", host, port))
    channel = site.buildProtocol(address)
    if type(channel).__name__ == "_Shut":  # refused: aborted when made
        shut = StringTransport(peerAddress=address)
        channel.makeConnection(shut)
        assert shut.disconnecting
        return None
    transport = (transport_type or StringTransport)(peerAddress=address)
    channel.makeConnection(transport)
    return channel, transport


def test_the_metrics_port_serves_a_few_connections_at_once() -> None:
    """Beyond MAX_METRICS_CONNECTIONS a new connection is closed at its
    accept; a closed one makes room."""
    from twisted_chat.server.metrics.metricsport import MAX_METRICS_CONNECTIONS, metrics_site

    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), Clock())
    held = [metrics_connection(site, 40000 + n, f"127.0.0.{10 + n}")
            for n in range(MAX_METRICS_CONNECTIONS)]
    assert all(held)
    assert metrics_connection(site, 41000, "127.0.0.2") is None  # the N+1th
    assert metrics_connection(site, 41001, "127.0.0.3") is None
    channel, _ = held[0]  # type: ignore[misc]
    channel.connectionLost(Failure(ConnectionDone()))
    assert metrics_connection(site, 41002, "127.0.0.2") is not None
    assert metrics_connection(site, 41003, "127.0.0.3") is None


def test_one_address_gets_a_share_of_the_metrics_port() -> None:
    """rev13-attack 3: one peer held all the connections, and no scrape
    from elsewhere got through.  It gets MAX_METRICS_PER_ADDRESS; a closed
    one makes room for its address again."""
    from twisted_chat.server.metrics.metricsport import MAX_METRICS_PER_ADDRESS, metrics_site

    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), Clock())
    held = [metrics_connection(site, 40000 + n, "127.0.0.2")
            for n in range(MAX_METRICS_PER_ADDRESS)]
    assert all(held)
    assert metrics_connection(site, 41000, "127.0.0.2") is None
    assert metrics_connection(site, 41001, "127.0.0.1") is not None  # the scraper
    channel, _ = held[0]  # type: ignore[misc]
    channel.connectionLost(Failure(ConnectionDone()))
    channel.connectionLost(Failure(ConnectionDone()))  # twice is harmless
    assert metrics_connection(site, 41002, "127.0.0.2") is not None
    assert metrics_connection(site, 41003, "127.0.0.2") is None


def test_connections_held_idle_give_way_to_a_scrape() -> None:
    """rev15-sec 3: on loopback every 127.x address is an address, so four
    of them (two connections each, a partial request on each) held all 8
    and no scrape got through.  Once a connection has been idle for
    METRICS_IDLE (since its accept or its last answer; a partial request is
    idle), a newcomer the port has no room for takes its place: the oldest
    idle one is aborted (its address's own, when the newcomer's address is
    at its share), one at a time."""
    from twisted_chat.server.metrics.metricsport import (
        MAX_METRICS_CONNECTIONS,
        MAX_METRICS_PER_ADDRESS,
        METRICS_IDLE,
        metrics_site,
    )

    clock = Clock()
    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), clock)
    held = []
    for n in range(MAX_METRICS_CONNECTIONS):
        got = metrics_connection(site, 40000 + n, f"127.0.0.{40 + n // MAX_METRICS_PER_ADDRESS}")
        assert got is not None
        got[0].dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ended
        held.append(got)
        clock.advance(0.01)
    # All young: a newcomer is refused, as before.
    assert metrics_connection(site, 41000, "127.0.0.1") is None
    clock.advance(METRICS_IDLE)
    scraper = metrics_connection(site, 41001, "127.0.0.1")
    assert scraper is not None
    assert [t.disconnecting for _, t in held] == [True] + [False] * (len(held) - 1)
    # One at a time: until the aborted one is closed (its descriptor), the
    # next newcomer is refused.
    assert metrics_connection(site, 41002, "127.0.0.44") is None
    held[0][0].connectionLost(Failure(ConnectionAborted()))
    channel, transport = scraper
    channel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ")  # it is served
    # Answered just now, it is not idle: the next newcomer takes the oldest
    # held one instead.
    again = metrics_connection(site, 41003, "127.0.0.40")
    assert again is not None
    assert held[1][1].disconnecting and not transport.disconnecting
    held[1][0].connectionLost(Failure(ConnectionAborted()))
    # An address at its share makes room among its own: 127.0.0.43's
    # oldest, not the oldest of all (127.0.0.41's).
    clock.advance(METRICS_IDLE)
    assert metrics_connection(site, 41004, "127.0.0.43") is not None
    assert held[6][1].disconnecting and not held[2][1].disconnecting
    assert not transport.disconnecting  # (the scraper is idle now, but newer)
    assert len(site.open) == MAX_METRICS_CONNECTIONS


class _SlowPeerTransport(StringTransport):
    """A StringTransport that, like Twisted's TCP transport, holds what is
    written until its peer takes it (the attributes tcpinfo.twisted_buffered
    reads): L{take} is the peer reading."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self._tempDataLen += len(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def take(self, size: int) -> None:
        self._tempDataLen -= min(size, self._tempDataLen)


class _Held(Resource):
    """A path whose answers wait for the test: an answer being rendered."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        self.requests.append(request)
        return NOT_DONE_YET


def _slow_peer_asking(clock: Clock, ask: bytes = b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n",
                      after: float = 0.0) -> tuple[Any, tuple[Any, Any], Any]:
    """A metrics site on C{clock} with a path whose answers wait (L{_Held}),
    and a connection from 127.0.0.40 on a L{_SlowPeerTransport} that has
    asked for it (C{ask}, C{after} s after its accept): the site, the
    connection (channel, transport), and its request, not answered yet."""
    from twisted_chat.server.metrics.metricsport import metrics_site

    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), clock)
    held = _Held()
    site.resource.putChild(b"held", held)
    got = metrics_connection(site, 40000, "127.0.0.40", transport_type=_SlowPeerTransport)
    assert got is not None
    clock.advance(after)
    got[0].dataReceived(ask)
    [request] = held.requests
    return site, got, request


def _port_filled(site: Any) -> list[tuple[Any, Any]]:
    """The rest of C{site}'s connections, from 127.0.0.40-43 (two each,
    with the first connection's), each with a partial request."""
    from twisted_chat.server.metrics.metricsport import (
        MAX_METRICS_CONNECTIONS,
        MAX_METRICS_PER_ADDRESS,
    )

    others = []
    for n in range(1, MAX_METRICS_CONNECTIONS):
        other = metrics_connection(site, 40000 + n, f"127.0.0.{40 + n // MAX_METRICS_PER_ADDRESS}")
        assert other is not None
        other[0].dataReceived(b"GET /metrics HTTP/1.1\r\n")
        others.append(other)
    return others


@pytest.mark.parametrize("answer", ["being-rendered", "being-taken", "taken-no-more"])
def test_an_answer_on_its_way_is_not_cut_to_make_room(answer: str) -> None:
    """left16s: a connection's answer was aborted (a reset, the answer cut:
    9216 of 9688 bytes on the real server) when a newcomer needed room once
    1 s had passed since the answer was written, though its peer was still
    taking it.  A connection is not idle while its answer is rendered, nor
    while its peer takes the answer (at a pace that has it within
    METRICS_DRAIN: rev16-sec 2, below); one whose peer takes none of it
    for METRICS_IDLE is idle (it holds the port as a partial request does),
    and gives way as before."""
    from twisted_chat.server.metrics import metricsport as port
    clock = Clock()
    site, got, request = _slow_peer_asking(clock)
    transport = got[1]
    clock.advance(0.5)
    if answer != "being-rendered":
        request.write(b"x" * 20000)
        request.finish()
        assert transport.value().endswith(b"x" * 20000 + b"\r\n0\r\n\r\n")
        assert transport._tempDataLen == len(transport.value())  # none of it taken
    clock.advance(0.1)
    others = _port_filled(site)  # by younger connections
    clock.advance(port.METRICS_IDLE + 0.4)
    if answer == "being-taken":
        transport.take(12000)  # the peer reads slowly: 8 KB/s, all of it in 2.5 s
    assert metrics_connection(site, 41000, "127.0.0.1") is not None  # a scraper
    cut = [t for _, t in [got, *others] if t.disconnecting]
    assert len(cut) == 1
    assert (cut[0] is transport) is (answer == "taken-no-more"), answer
    if answer == "being-rendered":
        request.write(b"the answer")  # and it is still answered
        request.finish()
        assert transport.value().endswith(b"\r\n0\r\n\r\n")


@pytest.mark.parametrize("reader", ["slow-link", "too-slow", "trickle"])
def test_an_answer_is_taken_whole_on_a_slow_link_and_a_trickle_gives_way(reader: str) -> None:
    """rev16-sec 2: since 701d98f a peer taking any of its answer was not
    idle, so eight connections from four 127.x addresses each taking about
    1.3 KB/s held the port for good (4 scrapes of 40 got through).  An
    answer its peer is taking keeps its connection only at a pace that has
    it whole within METRICS_DRAIN of its writing: a slow link's scrape (the
    9.7 KB answer at 5 KB/s, about 2 s: left16s) is never cut, however often
    newcomers need room; one at 3 KB/s (3.2 s) and a trickle (1.28 KB/s,
    512 bytes every 0.4 s as in rev16-sec's script) give way to the first
    newcomer once METRICS_IDLE has passed, as a partial request does."""
    from twisted_chat.server.metrics import metricsport as port
    clock = Clock()
    site, (_, transport), request = _slow_peer_asking(clock)
    request.write(b"x" * 9688)
    request.finish()
    answered = clock.seconds()
    _port_filled(site)  # by younger connections
    per_tick = {"slow-link": 512, "too-slow": 300, "trickle": 128}[reader]  # every 0.1 s
    cut_at = None
    for tick in range(1, 100):
        clock.advance(0.1)
        transport.take(per_tick)
        if not transport._tempDataLen:
            break  # all of it taken
        # A newcomer every 0.1 s: it takes the place of the oldest idle one.
        metrics_connection(site, 41000 + tick, f"127.0.1.{tick}")
        if transport.disconnecting:
            cut_at = clock.seconds() - answered
            break
        if site.evicted is not None:  # its descriptor closed: room for the next
            site.evicted.connectionLost(Failure(ConnectionAborted()))
    if reader == "slow-link":
        assert cut_at is None and not transport._tempDataLen, cut_at
    else:
        assert cut_at is not None and transport._tempDataLen  # cut with most still to take
        assert port.METRICS_IDLE <= cut_at < port.METRICS_IDLE + 0.15, cut_at


def test_the_metrics_port_counts_an_ipv6_64_as_one_address_and_ipv4_per_address() -> None:
    """An IPv6 peer usually has a /64 to itself: two of its addresses share
    one address's share of the metrics port (one peer could not take it
    all by changing its low bits); another /64 has its own.  IPv4
    addresses are counted one by one, however close (an IPv4-mapped IPv6
    address as its IPv4 address)."""
    from twisted_chat.server.metrics.metricsport import MAX_METRICS_PER_ADDRESS, metrics_site

    assert MAX_METRICS_PER_ADDRESS == 2
    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), Clock())
    assert metrics_connection(site, 40000, "2001:db8:1:2::1") is not None
    assert metrics_connection(site, 40001, "2001:db8:1:2:ffff:ffff:ffff:ffff") is not None
    assert metrics_connection(site, 40002, "2001:db8:1:2:abcd::7") is None  # the same /64
    assert metrics_connection(site, 40003, "2001:db8:1:3::1") is not None  # the next /64
    assert metrics_connection(site, 40004, "2001:db8:1:3::2") is not None
    assert metrics_connection(site, 40005, "2001:db8:1:3::3") is None
    # IPv4: 192.0.2.1 and 192.0.2.2 are two addresses.
    assert metrics_connection(site, 40006, "192.0.2.1") is not None
    assert metrics_connection(site, 40007, "::ffff:192.0.2.1") is not None  # the same one
    assert metrics_connection(site, 40008, "192.0.2.1") is None
    assert metrics_connection(site, 40009, "192.0.2.2") is not None


@pytest.mark.parametrize(("prefix", "same", "other"), [
    (48, "2001:db8:1:ffff::9", "2001:db8:2::1"),  # another /64 of the /48; the next /48
    (128, "2001:db8:1:2::1", "2001:db8:1:2::2"),  # each address its own
])
def test_the_metrics_port_groups_ipv6_by_the_configured_prefix(
        prefix: int, same: str, other: str) -> None:
    """The metrics port counts an IPv6 peer under its network of
    C{--ipv6-prefix} bits, as the chat ports do, not a fixed /64: under a
    /48 a peer could otherwise take the whole port from 4 of its /64s."""
    from twisted_chat.server.config import ServerConfig
    from twisted_chat.server.metrics.metricsport import metrics_site

    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), Clock(),
                        config=ServerConfig(ipv6_prefix=prefix))
    assert metrics_connection(site, 40000, "2001:db8:1:2::1") is not None
    assert metrics_connection(site, 40001, "2001:db8:1:2::1") is not None
    assert metrics_connection(site, 40002, same) is None  # the same network's third
    assert metrics_connection(site, 40003, other) is not None


def test_a_metrics_connection_serves_a_few_requests() -> None:
    """rev13-attack 3: a keep-alive connection sent scrapes back to back
    for as long as it lasted.  The MAX_METRICS_REQUESTSth answer says
    Connection: close, and what comes after it is not answered."""
    from twisted_chat.server.metrics.metricsport import MAX_METRICS_REQUESTS, metrics_site

    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), Clock())
    got = metrics_connection(site, 40000)
    assert got is not None
    channel, transport = got
    # Paths with nothing at them are answered at once (see below).
    channel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n"
                         * (MAX_METRICS_REQUESTS + 3))
    answers = transport.value().split(b"HTTP/1.1 404 ")[1:]
    assert len(answers) == MAX_METRICS_REQUESTS
    assert all(b"Connection: close" not in answer for answer in answers[:-1])
    assert b"Connection: close" in answers[-1]
    assert transport.disconnecting


@pytest.mark.parametrize("request_", MALFORMED, ids=["hello", "http2", "tls", "headers"])
def test_a_malformed_request_to_the_metrics_port_gets_one_400_and_nothing_more(
        request_: bytes, logged: list[str]) -> None:
    """rev19-attack 1, as on the web port (tests/web/test_admission.py):
    300 connections sending HELLO logged 300 Unhandled Error tracebacks
    (422 KB in 0.1 s), and 13,000 header lines got 12,500 400s.  The 400
    waits in Twisted's buffer (L{_SlowPeerTransport}) when its close starts."""
    from twisted_chat.server.metrics.metricsport import metrics_site

    clock = Clock()
    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), clock)
    got = metrics_connection(site, 40000, transport_type=_SlowPeerTransport)
    assert got is not None
    channel, transport = got
    channel.dataReceived(request_)
    channel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value() == BAD_REQUEST + b"\r\n\r\n"
    assert logged == []
    transport.take(len(transport.value()))
    clock.advance(0.1)
    assert transport.disconnecting and not transport.disconnected  # closed, not reset


def test_a_silent_metrics_connection_ends_at_its_life_without_a_log_line(
        logged: list[str]) -> None:
    """rev19-attack 3: Twisted's idle timeout, as long as the connection's
    life and started before it, ended a connection that sent nothing with
    an info line "Timing out client: IPv4Address(...)" each (8 lines per
    10 s from one looper holding the port).  The life's abort ends it, and
    nothing is logged; one that asks in time is answered as before."""
    from twisted_chat.server.metrics.metricsport import METRICS_TIMEOUT, metrics_site

    clock = Clock()
    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), clock)
    silent = metrics_connection(site, 40000)
    asking = metrics_connection(site, 40001)
    assert silent is not None and asking is not None
    clock.advance(METRICS_TIMEOUT - 0.1)
    asking[0].dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert asking[1].value().startswith(b"HTTP/1.1 404 ")
    assert not silent[1].disconnecting
    clock.advance(0.1)
    assert silent[1].disconnected and asking[1].disconnected  # the life's abort
    assert logged == []


@pytest.mark.parametrize("answer", ["taken-slowly", "rendered-late"])
def test_an_answer_under_way_at_the_end_of_its_life_is_let_finish(answer: str) -> None:
    """note19 (left): the abort at the end of a connection's 10 s life cut
    (reset) the answer of a scraper reading slower than about 1 KB/s, and
    of any scrape asked for just before it.  An answer under way then
    (being rendered, or its peer still taking it) is let finish: the
    connection is closed (a FIN, not a reset) at the first look that finds
    the answer taken, here a 10 KB one taken at 500 B/s from the start, or
    rendered 2 s past the life's end."""
    from twisted_chat.server.metrics import metricsport as port

    clock = Clock()
    _, (_, transport), request = _slow_peer_asking(clock)
    if answer == "rendered-late":
        clock.advance(port.METRICS_TIMEOUT + 2)
        assert not transport.disconnecting
        request.write(b"x" * 9688)
        request.finish()
        transport.take(transport._tempDataLen)  # at once
    else:
        request.write(b"x" * 9688)
        request.finish()
        while transport._tempDataLen:
            assert not transport.disconnecting, clock.seconds()
            clock.advance(0.1)
            transport.take(50)
        assert clock.seconds() > port.METRICS_TIMEOUT + 5
    assert not transport.disconnecting
    clock.advance(port.METRICS_TAKEN_LOOK)
    assert transport.disconnecting and not transport.disconnected


@pytest.mark.parametrize("ask", [
    b"GET /held HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /held HTTP/1.0\r\n\r\n",
])
@pytest.mark.parametrize("peer", ["takes-it", "takes-nothing"])
def test_an_answer_closing_at_the_end_of_its_life_is_let_finish(ask: bytes, peer: str) -> None:
    """rr20-core: an answer that ends with a close (Connection: close, as
    Python's urllib asks; HTTP/1.0; the last request), asked for just
    before the life's end, was aborted (reset) there while its peer was
    still taking it.  Its close waits for the peer, as any answer under
    way is let finish: closed (a FIN) once taken, and aborted by the
    close grace (3 s) if its peer takes nothing."""
    from twisted_chat.server.metrics import metricsport as port

    clock = Clock()
    _, (channel, transport), request = _slow_peer_asking(clock, ask, port.METRICS_TIMEOUT - 0.5)
    request.write(b"x" * 9688)
    request.finish()
    assert channel.close_started
    aborted_at = clock.seconds() + channel.site.config.close_grace
    clock.advance(0.1)
    transport.take(2000)
    clock.advance(0.5)  # past the life's end, the answer still being taken
    assert not transport.disconnecting
    if peer == "takes-it":
        transport.take(transport._tempDataLen)
        clock.advance(port.METRICS_TAKEN_LOOK)
        assert transport.disconnecting and not transport.disconnected  # closed, not reset
    else:
        clock.advance(aborted_at - clock.seconds() - 0.01)
        assert not transport.disconnecting
        clock.advance(0.01)  # the close grace, from its start
        assert transport.disconnected  # aborted


def test_an_answer_let_finish_is_bounded_and_gives_way_to_a_scraper() -> None:
    """What a peer may hold so: a connection whose answer it never takes
    (or takes too slowly for METRICS_DRAIN) is aborted METRICS_LIFE_LIMIT
    after its accept, and meanwhile gives way, as an idle one does, to a
    newcomer the port has no room for."""
    from twisted_chat.server.metrics import metricsport as port

    clock = Clock()
    site, (_, transport), request = _slow_peer_asking(clock)
    request.write(b"x" * 9688)
    request.finish()
    clock.advance(port.METRICS_LIFE_LIMIT - 0.5)
    assert not transport.disconnecting
    clock.advance(0.5)
    assert transport.disconnected  # aborted

    site, (_, transport), request = _slow_peer_asking(clock)
    request.write(b"x" * 9688)
    request.finish()
    clock.advance(port.METRICS_TIMEOUT + 1)
    others = _port_filled(site)  # younger, each with a partial request
    clock.advance(port.METRICS_IDLE)
    assert not transport.disconnecting
    assert metrics_connection(site, 41000, "127.0.0.1") is not None  # a scraper
    assert transport.disconnected  # the oldest idle one
    assert not any(t.disconnecting for _, t in others)


def test_scrapes_back_to_back_share_a_few_renderings() -> None:
    """rev13-attack 3: each scrape rendered the whole registry, so scrapes
    back to back kept a core busy.  Renderings are bounded by
    METRICS_RENDERS; past it a request gets the last answer in its form
    (what the exposition makes of its Accept, Accept-Encoding and name[]
    filter), or 503 if there is none: an ordinary form (no filter) is
    rendered once past the rate instead, and is never forgotten; the last
    METRICS_FORMS others are kept."""
    from twisted_chat.server.metrics.metricsport import (
        METRICS_FORMS,
        METRICS_FRESH,
        METRICS_OTHER_RENDERS,
        METRICS_RENDERS,
        renders_bounded,
    )

    clock = Clock()
    rendered: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        rendered.append(environ.get("HTTP_ACCEPT", ""))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"render {len(rendered)}".encode()]

    bounded = renders_bounded(app, clock.seconds)

    def scrape(accept: str = "", query: str = "") -> tuple[str, bytes]:
        got: list[str] = []
        body = bounded({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": query,
                        "HTTP_ACCEPT": accept},
                       lambda status, headers: got.append(status))
        return got[0], b"".join(body)

    burst = int(METRICS_RENDERS.burst)
    assert [scrape() for _ in range(burst)] == [
        ("200 OK", f"render {n}".encode()) for n in range(1, burst + 1)]
    assert {scrape() for _ in range(100)} == {("200 OK", f"render {burst}".encode())}
    # Junk in Accept or the query makes no other answer: the same form.
    assert scrape("text/html, */*;q=0.1", "x=1") == ("200 OK", f"render {burst}".encode())
    # Filters have renderings of their own (METRICS_OTHER_RENDERS): not
    # spent above; past them, a filter never rendered gets a 503.
    other_burst = int(METRICS_OTHER_RENDERS.burst)
    assert [scrape(query=f"name[]=first_{n}")[0] for n in range(other_burst)] == [
        "200 OK"] * other_burst
    status, body = scrape(query="name[]=chat_users")
    assert status.startswith("503 ") and b"try again" in body
    rendered_so_far = burst + other_burst
    # An ordinary form never rendered is rendered, once, past the rate.
    first = ("200 OK", f"render {rendered_so_far + 1}".encode())
    assert scrape("application/openmetrics-text") == first
    assert scrape("application/openmetrics-text") == first
    assert len(rendered) == rendered_so_far + 1
    clock.advance(1 / METRICS_RENDERS.per_second)
    assert scrape() == ("200 OK", f"render {rendered_so_far + 2}".encode())
    for n in range(METRICS_FORMS + 1):
        clock.advance(1 / METRICS_OTHER_RENDERS.per_second)
        scrape(query=f"name[]=chat_{n}")
    assert scrape(query="name[]=chat_0")[0].startswith("503 ")  # its answer was forgotten
    assert scrape(query="name[]=chat_1")[0] == "200 OK"
    assert len(rendered) == rendered_so_far + 2 + METRICS_FORMS + 1
    # An ordinary one was not; its answer, now older than METRICS_FRESH, is
    # rendered again when it is asked for (the rate allows it here anyway).
    assert clock.seconds() - 1 / METRICS_RENDERS.per_second >= METRICS_FRESH
    assert scrape()[0] == "200 OK"
    assert scrape("application/openmetrics-text")[0] == "200 OK"


def test_an_ordinary_form_is_rendered_once_past_the_rate_even_by_two_at_once() -> None:
    """rev15-mut F12: past the rate, an ordinary form never rendered is
    rendered once, by the first request for it; a second one that comes
    while that rendering runs (on another of the pool's threads: here, from
    within it) is a 503, not a second rendering."""
    from twisted_chat.server.metrics.metricsport import METRICS_RENDERS, renders_bounded

    clock = Clock()
    rendered: list[str] = []
    during: list[tuple[str, bytes]] = []
    openmetrics = "application/openmetrics-text"

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        rendered.append(environ.get("HTTP_ACCEPT", ""))
        if len(rendered) == burst + 1:
            during.extend([scrape(openmetrics), scrape()])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"render {len(rendered)}".encode()]

    bounded = renders_bounded(app, clock.seconds)

    def scrape(accept: str = "") -> tuple[str, bytes]:
        got: list[str] = []
        body = bounded({"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "",
                        "HTTP_ACCEPT": accept}, lambda status, headers: got.append(status))
        return got[0], b"".join(body)

    burst = int(METRICS_RENDERS.burst)
    for _ in range(burst):
        scrape()
    assert scrape(openmetrics) == ("200 OK", f"render {burst + 1}".encode())
    [(busy, _), kept] = during
    assert busy.startswith("503 "), busy
    assert kept == ("200 OK", f"render {burst}".encode())  # its own form's answer
    assert scrape(openmetrics) == ("200 OK", f"render {burst + 1}".encode())
    assert len(rendered) == burst + 1


# What Prometheus 3 sends, and 2 (with gzip both).
PROMETHEUS_ACCEPTS = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1",
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
)


class CountedRenders:
    """A collector that counts the registry's renderings (one collect each)."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> list[Any]:
        self.count += 1
        return []


def bounded_metrics_app(clock: Clock) -> tuple[Any, CountedRenders]:
    """The metrics port's app as metrics_site makes it, on C{clock}."""
    from prometheus_client.exposition import make_wsgi_app

    from twisted_chat.server.metrics.metricsport import head_as_get, renders_bounded

    registry = registry_for(Stats(), lambda: Snapshot(0, 0, 0, None))
    renders = CountedRenders()
    registry.register(renders)  # type: ignore[arg-type]
    return renders_bounded(head_as_get(make_wsgi_app(registry)), clock.seconds), renders


def metrics_request(app: Any, method: str = "GET", query: str = "", accept: str = "",
                    encoding: str = "", path: str = "") -> tuple[str, dict[str, str], bytes]:
    """One request to the metrics port's app: its status, headers, body."""
    got: list[tuple[str, list[tuple[str, str]]]] = []
    body = app({"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                "HTTP_ACCEPT": accept, "HTTP_ACCEPT_ENCODING": encoding},
               lambda status, headers: got.append((status, headers)))
    status, headers = got[0]
    return status, dict(headers), b"".join(body)


def test_a_peer_varying_its_requests_cannot_fail_another_s_ordinary_scrape() -> None:
    """docs/security.md said a peer varying the query or Accept of its
    requests could push a scraper's form out of the answers kept and leave
    it a 503.  The forms are now what the exposition makes of a request
    (the content type prometheus_client chooses for its Accept, gzip or
    not, its name[] filter): junk in Accept, Accept-Encoding or the query
    changes nothing; the ordinary forms (no filter, a standard content
    type: 28 at most) are all kept, the others (filters, odd OpenMetrics
    versions) in 4 slots of their own; and an ordinary form never rendered
    is rendered once past the rate.  Renderings stay bounded."""
    from twisted_chat.server.metrics.metricsport import METRICS_RENDERS, ORDINARY_FORMS

    assert ORDINARY_FORMS == 28  # (docs/security.md says so)
    clock = Clock()
    app, renders = bounded_metrics_app(clock)
    for accept in PROMETHEUS_ACCEPTS:
        status, headers, _ = metrics_request(app, accept=accept, encoding="gzip")
        assert status == "200 OK" and headers["Content-Encoding"] == "gzip"
    assert metrics_request(app)[0] == "200 OK"
    start, first = clock.seconds(), renders.count
    statuses = []
    for n in range(1000):  # 100 s
        clock.advance(0.1)
        metrics_request(app, query=f"x={n}")
        metrics_request(app, query=f"name[]=chat_{n % 7}&name[]=process_{n}")
        metrics_request(app, accept=f"text/html;q=0.{n % 10}, */*;q=0.1", encoding=f"br{n}")
        metrics_request(app, accept=f"application/openmetrics-text;version=1.0.{n}")
        metrics_request(app, accept=f"text/plain;version=1.0.0;escaping=x{n}")
        metrics_request(app, method="OPTIONS", query=f"{n}")
        metrics_request(app, method=f"NO{n}")
        metrics_request(app, path="/favicon.ico", query=f"{n}")
        if n % 150 == 0:  # every 15 s
            for accept in PROMETHEUS_ACCEPTS:
                statuses.append(metrics_request(app, method="GET" if n % 300 else "HEAD",
                                                accept=accept, encoding="gzip")[0])
            statuses.append(metrics_request(app)[0])  # curl's
    assert statuses == ["200 OK"] * len(statuses)
    # The bound on renderings holds: the rate, and a few first renderings.
    rate_allows = METRICS_RENDERS.burst + METRICS_RENDERS.per_second * (clock.seconds() - start)
    assert renders.count - first <= rate_allows + ORDINARY_FORMS
    assert renders.count - first > 0.9 * rate_allows  # the other peer got its share


def test_an_ordinary_scrape_never_rendered_is_answered_while_another_peer_drains() -> None:
    """A scraper's first scrape, its renderings all taken by a peer varying
    its requests: its form, ordinary, is rendered once past the rate (it
    got a 503 before), and kept; a filter is not rendered past the rate."""
    clock = Clock()
    app, renders = bounded_metrics_app(clock)
    for n in range(20):
        metrics_request(app, query=f"name[]=chat_{n}")
        metrics_request(app, query=f"x={n}")  # an ordinary form (curl's)
    assert metrics_request(app, query="name[]=chat_users")[0].startswith("503 ")
    drained = renders.count
    for accept in PROMETHEUS_ACCEPTS:
        status, headers, body = metrics_request(app, accept=accept, encoding="gzip")
        assert status == "200 OK" and headers["Content-Encoding"] == "gzip"
        assert b"chat_connections" in gzip.decompress(body)
    assert renders.count == drained + len(PROMETHEUS_ACCEPTS)
    for accept in PROMETHEUS_ACCEPTS:  # its answer is kept: no other rendering
        assert metrics_request(app, accept=accept, encoding="gzip")[0] == "200 OK"
    assert renders.count == drained + len(PROMETHEUS_ACCEPTS)


@pytest.mark.parametrize("drain", ["filters", "other ordinary forms"])
def test_an_ordinary_scrape_stays_fresh_however_another_peer_drains(drain: str) -> None:
    """rev15-sec 5: one peer asking for a new name[] filter 20 times a
    second took every rendering, and a scraper's ordinary form was answered
    its last rendering for as long as that went on (a counter frozen for
    10 s).  Forms that are not ordinary have a budget of their own
    (METRICS_OTHER_RENDERS), and an ordinary form is rendered past the rate
    once its kept answer is METRICS_FRESH seconds old: however the
    renderings are spent (on filters, or on the other ordinary forms), a
    scraper's answer is never older than that."""
    from prometheus_client.exposition import make_wsgi_app

    from twisted_chat.server.metrics.metricsport import (
        METRICS_FRESH,
        METRICS_RENDERS,
        head_as_get,
        renders_bounded,
    )

    assert METRICS_FRESH <= 5.0  # "at least every few seconds" (docs/security.md)
    clock = Clock()
    state = [Snapshot(0, 0, 0, None)]
    registry = registry_for(Stats(), lambda: state[0])
    renders = CountedRenders()
    registry.register(renders)  # type: ignore[arg-type]
    app = renders_bounded(head_as_get(make_wsgi_app(registry)), clock.seconds)
    # Every Accept that makes another ordinary form than curl's (its own).
    others = [accept for accept in (
        "application/openmetrics-text", PROMETHEUS_ACCEPTS[0], PROMETHEUS_ACCEPTS[1],
        "text/plain;version=1.0.0;escaping=underscores")]

    def drain_for(seconds: float, start: int) -> None:
        for n in range(int(seconds * 20)):  # 20 a second
            clock.advance(0.05)
            if drain == "filters":
                metrics_request(app, query=f"name[]=x{start + n}")
            else:
                metrics_request(app, accept=others[n % len(others)], encoding="gzip" * (n % 2))

    def lobby() -> float:
        status, _, body = metrics_request(app)  # curl's form
        assert status == "200 OK"
        [line] = [line for line in body.decode().splitlines()
                  if line.startswith('chat_connections{state="lobby"}')]
        return float(line.split()[-1])

    assert lobby() == 0
    seen = []
    for second in range(1, 21):
        state[0] = Snapshot(0, second, 0, None)  # changes every second
        drain_for(1.0, second * 100)
        seen.append((second, lobby()))
    # Each scrape's answer is at most METRICS_FRESH seconds behind.
    assert all(second - got <= METRICS_FRESH for second, got in seen), seen
    if drain == "filters":  # they do not spend the ordinary forms' renderings at all
        assert [got for _, got in seen] == [second for second, _ in seen]
    else:  # the ordinary forms' renderings stay bounded: the rate, and one
        # per form in each METRICS_FRESH seconds past it (5 forms here)
        rate_allows = METRICS_RENDERS.burst + METRICS_RENDERS.per_second * clock.seconds()
        assert renders.count <= rate_allows + 5 * (1 + clock.seconds() / METRICS_FRESH)


def test_a_metrics_request_s_form_is_what_the_exposition_makes_of_it() -> None:
    """answer_form: junk in the query, Accept or Accept-Encoding, HEAD for
    GET, a path under /metrics, make no other form; Prometheus's and
    curl's forms are ordinary; a name[] filter or an odd OpenMetrics
    version is not (there is no end to them); what renders nothing has
    no form."""
    from twisted_chat.server.metrics.metricsport import answer_form

    def form(method: str = "GET", query: str = "", accept: str = "", encoding: str = "",
             path: str = "") -> Any:
        return answer_form({"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query,
                            "HTTP_ACCEPT": accept, "HTTP_ACCEPT_ENCODING": encoding})

    curl = form()
    assert curl == (True, ("text/plain; version=0.0.4; charset=utf-8", False, ()))
    assert form(method="HEAD", query="x=1&y", accept="text/html, */*;q=0.8",
                encoding="br, deflate", path="/anything") == curl
    prometheus = [form(accept=accept, encoding="gzip") for accept in PROMETHEUS_ACCEPTS]
    assert all(usual for usual, _ in prometheus)
    assert prometheus[0][1] != prometheus[1][1]  # two escapings
    assert form(accept=PROMETHEUS_ACCEPTS[0], encoding="deflate, gzip;q=0.5") == prometheus[0]
    assert form(query="name[]=b&name[]=a&name[]=a") == (False, (curl[1][0], False, ("a", "b")))
    assert form(query="name[]=a&name[]=b") == form(query="name[]=b&name[]=a")
    odd = form(accept="application/openmetrics-text;version=1.0.7")
    assert odd is not None and not odd[0]
    assert form(method="OPTIONS") is None
    assert form(method="POST") is None
    assert form(path="/favicon.ico") is None


def test_a_kept_gzip_answer_is_not_served_to_a_client_that_did_not_ask_for_it() -> None:
    """prometheus_client gzips its answer to a client that accepts gzip.  A
    scrape past the render rate gets the last answer to one asking the
    same, Accept-Encoding included: a client without gzip (curl without
    --compressed) never gets the gzip body it cannot read (mutation audit
    F6), but its own form's, rendered once past the rate if it has none
    yet (it is an ordinary form: answer_form)."""
    import gzip

    from prometheus_client.exposition import make_wsgi_app

    from twisted_chat.server.metrics.metricsport import (
        METRICS_RENDERS,
        head_as_get,
        renders_bounded,
    )

    clock = Clock()
    registry = registry_for(Stats(), lambda: Snapshot(0, 0, 0, None))
    bounded = renders_bounded(head_as_get(make_wsgi_app(registry)), clock.seconds)

    def scrape(encoding: str) -> tuple[str, dict[str, str], bytes]:
        got: list[Any] = []
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": "",
                   "HTTP_ACCEPT": "", "HTTP_ACCEPT_ENCODING": encoding}
        body = bounded(environ, lambda status, headers, *exc_info: got.append(
            (status, dict(headers))))
        return got[0][0], got[0][1], b"".join(body)

    for _ in range(int(METRICS_RENDERS.burst)):
        status, headers, zipped = scrape("gzip")
    assert (status, headers.get("Content-Encoding")) == ("200 OK", "gzip")
    assert b"chat_users_online 0.0" in gzip.decompress(zipped)
    status, headers, plain = scrape("")  # past the rate, and never rendered without gzip
    assert status == "200 OK" and "Content-Encoding" not in headers, (status, headers)
    assert b"chat_users_online 0.0" in plain
    # Past the rate again: each gets the answer kept for its own form.
    assert scrape("") == (status, headers, plain)
    assert scrape("gzip")[1].get("Content-Encoding") == "gzip"


@pytest.mark.parametrize(("endpoint", "warned"), [
    ("9108", True), ("tcp:9108", True), ("tcp:9108:interface=0.0.0.0", True),
    ("tcp6:9108:interface=\\:\\:", True), ("tcp6:9108:interface=\\:\\:0", True),
    ("tcp6:9108:interface=0\\:0\\:\\:0", True),
    ("tcp6:9108:interface=\\:\\:ffff\\:0.0.0.0", True), ("tcp:9108:interface=127.0.0.1", False),
    ("tcp6:9108:interface=\\:\\:1", False), ("unix:/tmp/metrics.sock", False),
    # The C library reads these as IPv4 numbers: 0.0.0.0, and 127.0.0.1.
    ("tcp:9108:interface=0", True), ("tcp:9108:interface=0x0", True),
    ("tcp:9108:interface=0.0", True), ("tcp:9108:interface=127.1", False)])
def test_a_metrics_port_on_every_interface_is_one_warning_at_start(
    endpoint: str, warned: bool,
) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is not None and event["log_level"].name == "warn":
            lines.append(str(formatEvent(event)))

    globalLogPublisher.addObserver(observe)
    try:
        makeService(options("--db", ":memory:", "--metrics", endpoint), ThreadedMemoryReactor())
    finally:
        globalLogPublisher.removeObserver(observe)
    said = [line for line in lines if "--metrics listens on every interface" in line]
    assert len(said) == (1 if warned else 0), lines


@pytest.mark.parametrize("announce", [b"Content-Length: 100000000000",
                                      b"Transfer-Encoding: chunked"])
def test_a_scrape_that_announces_a_body_is_refused_unread(announce: bytes) -> None:
    """Twisted spools a request body to a temporary file as it comes: on the
    metrics port (no scrape has a body) one is refused before any of it is
    read, with 413, and nothing after it is read."""
    from twisted_chat.server.metrics.metricsport import metrics_site

    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), Clock())
    got = metrics_connection(site, 40000)
    assert got is not None
    channel, transport = got
    channel.dataReceived(b"POST /metrics HTTP/1.1\r\nHost: x\r\n" + announce + b"\r\n\r\n"
                         + b"x" * 65536)
    channel.dataReceived(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # ignored
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.count(b"HTTP/1.1") == 1
    assert answer.endswith(b"\r\n\r\nThe metrics port takes no request body.\n")
    assert transport.disconnecting
    assert all(request.content.tell() == 0 for request in channel.requests)


def test_a_request_with_an_empty_body_is_answered() -> None:
    """Content-Length: 0 is no body: the request is served (here a path
    with nothing at it, answered at once: /metrics is answered from the
    global reactor's thread pool, which a unit test does not run)."""
    from twisted_chat.server.metrics.metricsport import metrics_site

    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), Clock())
    got = metrics_connection(site, 40000)
    assert got is not None
    channel, transport = got
    channel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ")
    assert not transport.disconnecting


def test_head_is_answered_as_get_and_allow_names_it() -> None:
    """prometheus_client's app answers HEAD with 405; a health check that
    uses HEAD (curl -I) took the port for down.  The port's app answers it
    as GET (twisted.web drops a HEAD's body); Allow names HEAD."""
    from prometheus_client.exposition import make_wsgi_app

    from twisted_chat.server.metrics.metricsport import ALLOWED_METHODS, head_as_get

    app = head_as_get(make_wsgi_app(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None))))

    def call(method: str) -> tuple[str, dict[str, str], bytes]:
        got: list[Any] = []
        body = app({"REQUEST_METHOD": method, "PATH_INFO": "/", "QUERY_STRING": ""},
                   lambda status, headers, *exc_info: got.append((status, dict(headers))))
        return got[0][0], got[0][1], b"".join(body)

    status, headers, body = call("HEAD")
    assert status == "200 OK"
    assert headers["Content-Type"].startswith("text/plain")
    assert b"chat_users_online 0.0" in body  # the GET's; twisted.web sends none of it
    assert call("GET")[:2] == (status, headers)
    for method in ("OPTIONS", "PUT", "DELETE", "POST"):
        status, headers, _ = call(method)
        assert status == ("200 OK" if method == "OPTIONS" else "405 Method Not Allowed")
        assert headers["Allow"] == ALLOWED_METHODS == "GET, HEAD, OPTIONS"


# -- what an operator asked of them (rev11-metrics, "gaps") --------------------------


def test_the_build_is_an_info_metric_with_the_version() -> None:
    from twisted_chat import __version__

    got = scrape(Stats(), Snapshot(0, 0, 0, None))
    assert got[("chat_build_info", (("version", __version__),))] == 1


def test_accepted_connections_and_logins_count_what_got_in() -> None:
    """chat_accepted_connections_total{port="chat"}: every connection not
    refused, nick or not; chat_logins_total: those that chose one (a nick
    taken, or none chosen, is not a login)."""
    h = Harness(max_clients=4)
    alice, bob = h.user("alice"), h.user("bob")
    taken = h.connect()
    taken.send("NICK alice")
    assert taken.take()[-1].startswith("RETRY taken")
    h.connect()  # chooses nothing
    assert h.connect().take()[-1] == "BYE full"  # refused: not accepted
    assert value(h, "chat_accepted_connections_total", port="chat") == 4
    assert value(h, "chat_accepted_connections_total", port="web") == 0
    assert value(h, "chat_logins_total") == 2
    taken.send("NICK carol")
    alice.send("BYE")
    alice.drop()
    bob.drop()
    dave = h.user("dave")  # logs in again in a freed place
    assert dave.take() == []
    assert value(h, "chat_accepted_connections_total", port="chat") == 5
    assert value(h, "chat_logins_total") == 4  # alice, bob, carol, dave
    assert value(h, "chat_websockets") == 0


def _invitations(h: Harness) -> dict[str, float]:
    got = {"made": value(h, "chat_invitations_total"),
           "paired": value(h, "chat_pairings_total")}
    for reason in ("rejected", "withdrawn", "timeout", "busy", "gone"):
        got[reason] = value(h, "chat_invitations_ended_total", reason=reason)
    return got


def test_invitations_pairings_and_their_ends_are_counted_once_each() -> None:
    """chat_invitations_total: each PAIR that opened an invitation;
    chat_pairings_total: each pair begun (ACCEPT, or a mutual PAIR);
    chat_invitations_ended_total: each that ended without a pair, by
    reason, once (whichever side is left to tell).  So made = paired + ended
    + still open."""
    h = Harness(invite_timeout=30.0)
    a, b, c, d, e = (h.user(n) for n in ("ann", "ben", "cat", "dan", "eve"))
    a.send("PAIR ben")
    b.send("ACCEPT ann")
    assert _invitations(h) == dict(made=1, paired=1, rejected=0, withdrawn=0, timeout=0,
                                   busy=0, gone=0)
    c.send("PAIR ann")  # ann is paired: refused, no invitation
    assert c.take()[-1].startswith("ERROR busy")
    c.send("PAIR dan")
    d.send("REJECT cat")
    c.send("PAIR dan")
    c.send("UNPAIR")
    c.send("PAIR dan")
    h.clock.advance(30.0)
    assert _invitations(h) == dict(made=4, paired=1, rejected=1, withdrawn=1, timeout=1,
                                   busy=0, gone=0)
    # eve and cat both invite dan; dan invites cat back: a mutual pair,
    # and eve's invitation ends busy.
    e.send("PAIR dan")
    c.send("PAIR dan")
    d.send("PAIR cat")
    assert _invitations(h) == dict(made=6, paired=2, rejected=1, withdrawn=1, timeout=1,
                                   busy=1, gone=0)
    # An inviter that leaves (its invitee is told), an invitee that leaves
    # (its inviter is told): one "gone" each.
    a.send("UNPAIR")
    e.send("PAIR ann")
    e.drop()
    a.send("PAIR ben")
    b.drop()
    assert _invitations(h) == dict(made=8, paired=2, rejected=1, withdrawn=1, timeout=1,
                                   busy=1, gone=2)
    assert value(h, "chat_pairs") == 1  # cat and dan: pairings begun less ended


def test_a_paused_reader_s_output_is_held_bytes_at_the_budget_s_look() -> None:
    """chat_output_held_bytes: what the --sendq-total budget found held for
    every connection at its last look (each second), back to 0 when the
    reader drains."""
    h = Harness(sendq_total=10_000_000)
    slow, talker = h.user("slow"), h.user("talker")
    slow.transport.producer.pauseProducing()
    talker.send("DM slow " + "x" * 100)
    assert value(h, "chat_output_held_bytes") == 0  # not looked yet
    h.clock.advance(1.0)
    held = h.factory.output_budget.held
    assert value(h, "chat_output_held_bytes") == held
    assert held == slow.protocol.send_queue.twisted_held() >= PAUSED_HELD
    slow.transport.producer.resumeProducing()
    h.clock.advance(1.0)
    assert value(h, "chat_output_held_bytes") == 0
    slow.transport.producer.pauseProducing()
    talker.send("DM slow again")
    h.clock.advance(1.0)
    assert value(h, "chat_output_held_bytes") >= PAUSED_HELD
    slow.drop()
    talker.drop()
    assert value(h, "chat_output_held_bytes") == 0  # no connection: no look, 0


def test_connections_paused_by_the_held_input_bound_are_a_gauge() -> None:
    """chat_held_input_paused_connections: the connections not read because
    the input held behind decisions is over its bound; 0 once decided."""
    h = login_harness(work=HeldWork())
    h.factory.held_input.limit = 100
    add(h, "alice")
    add(h, "bob")
    first, second, idle = fresh(h), fresh(h), fresh(h)
    first.send("NICK alice")
    second.send("NICK bob")
    first.send("PING " + "x" * 60)
    assert value(h, "chat_held_input_paused_connections") == 0  # under the bound
    # Over (not past its ceiling, 125): both wait on a lookup, neither is read.
    second.send("PING " + "y" * 40)
    assert value(h, "chat_held_input_paused_connections") == 2
    assert h.factory.held_input.over
    idle.send("PING z")  # no command waiting: read as ever
    assert idle.take() == ["PONG z"]
    h.work.release()  # type: ignore[attr-defined]
    assert value(h, "chat_held_input_paused_connections") == 0


def test_a_path_with_nothing_at_it_is_a_plain_404_with_no_deprecation() -> None:
    """A bare Resource root answered other paths with Twisted's NoResource,
    which warns that it is deprecated (_UnsafeNoResource) on every such
    request: the metrics port's root answers them with pages.notFound."""
    import warnings

    from twisted_chat.server.metrics.metricsport import metrics_site

    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), Clock())
    got = metrics_connection(site, 40000)
    assert got is not None
    channel, transport = got
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        channel.dataReceived(b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ")
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []


def _closing_pair(clock: Clock, transport_type: Any = None) -> tuple[Any, list[tuple[Any, Any]]]:
    """A metrics site on C{clock} and an address's two connections (its
    share), on L{_SlowPeerTransport}s (or C{transport_type}); the first
    asked for a 404 with C{Connection: close}: its close is under way, its
    answer not taken."""
    from twisted_chat.server.metrics.metricsport import MAX_METRICS_PER_ADDRESS, metrics_site

    site = metrics_site(registry_for(Stats(), lambda: Snapshot(0, 0, 0, None)), clock)
    own = []
    for n in range(MAX_METRICS_PER_ADDRESS):
        got = metrics_connection(site, 40000 + n, "127.0.0.40",
                                 transport_type=transport_type or _SlowPeerTransport)
        assert got is not None
        own.append(got)
    channel, transport = own[0]
    channel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 404 ")
    assert channel.close_started and not transport.disconnecting, "waits for the peer"
    return site, own


def test_a_metrics_close_whose_answer_was_taken_leaves_its_place_to_a_newcomer_at_once() -> None:
    """A client that reconnects as soon as it has read a "Connection: close"
    answer (http.client) was refused: the close it left waits for its next
    look at the kernel (closing.Linger), counted meanwhile."""
    clock = Clock()
    site, own = _closing_pair(clock)
    assert metrics_connection(site, 41000, "127.0.0.40") is None  # not taken yet: counted
    own[0][1].take(1 << 20)  # the peer reads it all
    newcomer = metrics_connection(site, 41001, "127.0.0.40")
    assert newcomer is not None
    assert own[0][1].disconnecting and not own[1][1].disconnecting  # the close (FIN)


@implementer(ISSLTransport)
class _SlowTLSPeerTransport(_SlowPeerTransport):
    """L{_SlowPeerTransport} under TLS: its close waits for the peer's
    close_notify, which a peer may never send."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        """(twisted.web asks a TCP transport for it.)"""


def test_a_metrics_close_under_tls_keeps_its_place_until_idle() -> None:
    """Under TLS a close whose answer was taken still waits for the peer's
    close_notify (up to the close grace): it keeps its place, so that a
    peer that never answers one cannot open connection after connection
    outside the port's limits (rr18-out: 151 sockets held by one address in
    4 s); it gives way once idle, as any connection whose peer sends
    nothing."""
    from twisted_chat.server.metrics.metricsport import METRICS_IDLE

    clock = Clock()
    site, own = _closing_pair(clock, _SlowTLSPeerTransport)
    own[0][1].take(1 << 20)  # the peer reads it all, and answers no close_notify
    assert metrics_connection(site, 41000, "127.0.0.40") is None
    clock.advance(METRICS_IDLE)
    assert metrics_connection(site, 41001, "127.0.0.40") is not None


def test_a_metrics_close_whose_answer_is_not_taken_gives_way_once_idle() -> None:
    """A non-reader's close holds its place for at most the close grace, and
    gives way to a newcomer once idle, as any connection whose peer takes
    nothing (before, it was never idle: it had a request in hand)."""
    from twisted_chat.server.metrics.metricsport import METRICS_IDLE

    clock = Clock()
    site, own = _closing_pair(clock)
    clock.advance(METRICS_IDLE)
    assert metrics_connection(site, 41001, "127.0.0.40") is not None
    assert own[0][1].disconnecting and not own[1][1].disconnecting
