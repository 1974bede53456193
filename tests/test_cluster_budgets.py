"""
The per-address lobby-line and registration budgets of a cluster
(L{AddressBook.share}): each node judges at once by its own copy of an
address's bucket and reconciles it with the cluster's every
L{SHARE_INTERVAL} while the address spends there (a stale copy's line too),
and at once when a second line comes for a stale copy.  Deterministic: the
cluster's buckets are L{FakeBuckets} (Redis's script, in Python, on the
test's clock); the nodes are AddressBooks, or the
cluster tests' nodes (tests/test_cluster_unit.py).  The script itself runs
against a real redis-server at the end.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from tests.harness import Conn
from tests.redisproc import REDIS_SERVER, RedisServer
from tests.test_cluster_unit import START, Cluster
from twisted_chat.server.cluster.budgets import BUCKETS, SPEND, RedisBuckets
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.limits.addresses import (
    LOBBY,
    REGISTER,
    SHARE_INTERVAL,
    Address,
    AddressBook,
    AddressPolicy,
    networks,
)
from twisted_chat.server.limits.buckets import Rate

HOST = "192.0.2.7"


class FakeBuckets:
    """The cluster's buckets (cluster/budgets.py's script) on the test's clock.
    While C{held}, answers wait in C{pending} (a round trip in flight)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.levels: dict[tuple[str, str], tuple[float, float]] = {}
        self.calls: list[list[tuple[str, str, float, float]]] = []
        self.held = False
        self.pending: list[tuple[list[tuple[str, str, float, float]], Deferred[list[float]]]] = []
        self.down = False

    def spend(self, items: list[tuple[str, str, float, float]]) -> Deferred[list[float]]:
        self.calls.append(items)
        if self.down:
            return defer.fail(ConnectionError("Redis is out of reach"))
        d: Deferred[list[float]] = Deferred()
        if self.held:
            self.pending.append((items, d))
        else:
            d.callback(self._apply(items))
        return d

    def answer(self) -> None:
        pending, self.pending = self.pending, []
        for items, d in pending:
            d.callback(self._apply(items))

    def _apply(self, items: list[tuple[str, str, float, float]]) -> list[float]:
        now = self.clock.seconds()
        levels = []
        for bucket, key, spent, rate in items:
            level, at = self.levels.get((bucket, key), (0.0, now))
            level = max(level - (now - at) * rate, 0.0)
            if spent:
                level += spent
                self.levels[bucket, key] = (level, now)
            levels.append(level)
        return levels


def nodes(n: int = 2, shared: bool = True, **policy: Any
          ) -> tuple[list[AddressBook], FakeBuckets, Clock]:
    clock = Clock()
    clock.advance(START)
    buckets = FakeBuckets(clock)
    books = [AddressBook(AddressPolicy(**policy), clock) for _ in range(n)]
    if shared:
        for book in books:
            book.share(buckets)
    return books, buckets, clock


def record(book: AddressBook, host: str = HOST) -> Address:
    found = book.record(host)
    assert found is not None
    return found


def lines(book: AddressBook, n: int, host: str = HOST) -> int:
    """C{n} lobby lines from C{host} at once: how many were let through.
    (None waits here: the fake cluster answers at once unless held.)"""
    limits = record(book, host)
    results = [book.lobby_line(limits) for _ in range(n)]
    assert all(isinstance(result, bool) for result in results), results
    return sum(result is True for result in results)


@pytest.mark.parametrize("shared", [True, False])
def test_an_address_moving_to_another_node_does_not_get_a_new_burst(shared: bool) -> None:
    """The address spends its burst on node A; a moment later (one report
    later) on node B.  B's copy of its bucket is stale: B lets one line
    through on it and reconciles at once; the rest are judged by the
    cluster's count, which has nothing left.  Per node (as before), B gave a
    whole burst again."""
    (a, b), buckets, clock = nodes(2, shared, lobby=Rate(1.0, 5))
    assert lines(a, 10) == 5
    clock.advance(SHARE_INTERVAL)
    if not shared:
        assert lines(b, 10) == 5
        return
    assert buckets.levels[LOBBY, HOST][0] == pytest.approx(4.8)  # 1 at once, 4 with the report
    assert lines(b, 10) == 1
    assert lines(a, 10) == 0  # A's copy is fresh, and had nothing left
    # From then on the cluster's rate, whichever node the lines go to: a
    # stale copy lets one line through at most on what it holds itself.
    got = 0
    for i in range(100):
        clock.advance(0.05)
        got += lines((a, b)[i % 2], 1)
    assert 4 <= got <= 5 + 1, got  # 5 s at 1/s, less the one B owed
@pytest.mark.parametrize("shared", [True, False])
def test_a_steady_flood_on_two_nodes_gets_the_cluster_s_rate(shared: bool) -> None:
    """Both nodes try a line every 10 ms for 20 s: the cluster lets through
    the burst and the rate once, plus what the nodes let through before
    they heard of each other's lines (paid back); per node, twice it."""
    (a, b), _, clock = nodes(2, shared, lobby=Rate(2.0, 4))
    got = 0
    for _ in range(2000):
        got += lines(a, 1) + lines(b, 1)
        clock.advance(0.01)
    budget = 4 + 2.0 * 20
    if shared:
        assert budget <= got <= budget + 4 + 2, got
    else:
        assert got >= 2 * budget - 2, got


def test_bursts_on_two_nodes_within_one_interval_are_owed_after() -> None:
    """What the bound is: lines reaching two nodes within one report
    interval can get up to a burst through each (their copies had not heard
    of each other's lines yet); the cluster's bucket then counts them all,
    and the address owes the excess: nothing more anywhere until its bucket
    has refilled past it."""
    (a, b), buckets, clock = nodes(2, lobby=Rate(1.0, 5))
    # A: one reported at once (a stale copy), four more for the next report;
    # B, stale too: one at once, and the cluster's count has only A's first.
    assert lines(a, 10) == 5
    assert lines(b, 10) == 4
    clock.advance(SHARE_INTERVAL)
    assert buckets.levels[LOBBY, HOST][0] == pytest.approx(9 - SHARE_INTERVAL)
    got = 0
    for i in range(80):  # 4 s: what was owed
        clock.advance(0.05)
        got += lines((a, b)[i % 2], 1)
    # At most the one line a stale copy lets through on what it holds
    # itself (A's copy took its count before B's report), where each node
    # gave 4 on its own.
    assert got <= 1, got
    for i in range(40):
        clock.advance(0.05)
        got += lines((a, b)[i % 2], 1)
    # 6.2 s in all: 9 + got against 5 + 6.2 for one server.
    assert 9 + got <= 5 + 6.2 + 4 + 1, got


def test_a_line_waits_only_while_a_stale_copy_is_reconciled() -> None:
    """Redis's answer in flight.  A stale copy lets its first line through
    at once (reported with the next report); a line that comes before that
    report (another connection of the address: one connection's next line
    waits for its first anyway, in cluster mode) has it reported at once,
    waits for the answer, then is judged by the cluster's count.  A fresh
    copy judges at once, a report on its way or not."""
    (a, b), buckets, clock = nodes(2, lobby=Rate(1.0, 5))
    buckets.held = True
    ra, rb = record(a), record(b)
    assert a.lobby_line(ra) is True
    assert buckets.calls == []  # due with the next report
    waiting = a.lobby_line(ra)
    assert buckets.calls == [[(LOBBY, HOST, 1, 1.0)]]  # now: a line waits for it
    assert isinstance(waiting, Deferred) and not waiting.called
    buckets.answer()  # the cluster: 1 taken
    assert waiting.called
    assert lines(a, 2) == 2  # fresh now: at once, reported with the next report
    clock.advance(SHARE_INTERVAL)
    assert buckets.calls[-1] == [(LOBBY, HOST, 2, 1.0)] and buckets.pending
    assert lines(a, 1) == 1  # judged at once, the report on its way
    buckets.answer()
    # B: stale, and A's last line not reported yet: B lets one through on
    # its own copy, the next waits, and then has the cluster's count (3.8
    # taken of 5: the cluster does not know A's last line yet).
    assert b.lobby_line(rb) is True
    waiting = b.lobby_line(rb)
    assert isinstance(waiting, Deferred)
    buckets.answer()
    assert buckets.levels[LOBBY, HOST][0] == pytest.approx(3.8)
    assert lines(b, 5) == 1
    clock.advance(SHARE_INTERVAL)
    buckets.answer()
    assert lines(a, 5) + lines(b, 5) == 0


def test_one_report_per_interval_for_every_address_that_spent() -> None:
    """While addresses spend on fresh copies, a node sends one report per
    interval for all of them, not one per line."""
    (a,), buckets, clock = nodes(1, lobby=Rate(10.0, 20))
    hosts = [f"192.0.2.{i}" for i in range(1, 31)]
    for host in hosts:
        lines(a, 1, host)  # stale copies: one line each joins the next report
    assert buckets.calls == []
    clock.advance(SHARE_INTERVAL)
    assert len(buckets.calls) == 1 and len(buckets.calls[0]) == 30
    for _ in range(5):
        clock.advance(SHARE_INTERVAL / 4)
        for host in hosts:
            lines(a, 2, host)
    clock.advance(SHARE_INTERVAL)
    # Over those 1.25 intervals: one or two reports, each of the 30 addresses.
    reports = buckets.calls[1:]
    assert 1 <= len(reports) <= 2 and all(len(items) == 30 for items in reports)
    assert sum(spent for items in reports for _, _, spent, _ in items) == 300
    clock.advance(10 * SHARE_INTERVAL)
    assert buckets.calls[1:] == reports and clock.getDelayedCalls() == []


def test_lobby_lines_at_a_person_s_pace_cost_one_report_per_interval() -> None:
    """rev10-s10 F3: 200 addresses, one lobby line each every 2 s (so every
    copy is stale at each line), 60 s, at the default rate and burst: each
    line was reported at once, one script each (6,000); now each joins the
    node's next report: at most one per interval (300)."""
    config = ServerConfig()
    (a,), buckets, clock = nodes(1, lobby=Rate(config.ip_lobby_rate, config.ip_lobby_burst))
    hosts = [f"198.51.100.{i}" for i in range(200)]
    sent = 0
    for step in range(600):  # 60 s in 0.1 s steps
        clock.advance(0.1)
        for i, host in enumerate(hosts):
            if (step + i) % 20 == 0:  # each host every 2 s, spread out
                assert a.lobby_line(record(a, host)) is True
                sent += 1
    clock.advance(SHARE_INTERVAL)
    assert sent == 6000
    assert len(buckets.calls) <= 60 / SHARE_INTERVAL + 1
    assert sum(spent for items in buckets.calls for _, _, spent, _ in items) == sent


def _through_an_outage(a: AddressBook, buckets: FakeBuckets, clock: Clock, gap: float,
                       n: int, held: bool, step: float = 0.01) -> int:
    """One address on node A sends C{n} lobby lines C{gap} seconds apart
    while Redis is away: the first is judged as it comes (and waits for
    Redis), the others are held behind it, and once Redis is back are
    judged one after the other, C{step} apart (each waits a round trip for
    its own command), as of when each came if C{held} (ChatProtocol.held_at).
    How many go through (what waits for the cluster's count is judged once
    it is answered: the fake answers at once)."""
    limits = record(a)
    start = clock.seconds()
    buckets.down = True
    passed = int(a.lobby_line(limits) is True)
    clock.advance(gap * (n - 1))
    buckets.down = False
    for i in range(1, n):
        result = a.lobby_line(limits, start + i * gap if held else None)
        assert isinstance(result, bool), result
        passed += result
        clock.advance(step)
    clock.advance(SHARE_INTERVAL)
    return passed


@pytest.mark.parametrize("step", [0.0, 0.004, 0.01, SHARE_INTERVAL])
def test_lines_held_through_an_outage_are_reported_as_what_they_leave(step: float) -> None:
    """rev11-clu2 #1, the lobby budget: 100 lines at 5 a second (a quarter
    of the rate) through a 20 s outage all go through, judged by A's copy
    as of when each came, the copy staying as of then across the cluster's
    answers (reports come while they are judged, C{step} apart); the cluster
    is told, each report, the level they leave (one line: each came after
    the one before had drained), not all of them at once; so node B still
    has its burst for the address.  Judged as they are handled, 41."""
    (a, b), buckets, clock = nodes(2, lobby=Rate(20.0, 40))
    assert _through_an_outage(a, buckets, clock, 0.2, 100, held=True, step=step) == 100
    reports = [spent for items in buckets.calls[1:] for _, _, spent, _ in items]
    assert reports and all(spent == 1.0 for spent in reports), reports
    assert buckets.levels[LOBBY, HOST][0] <= 1.0
    assert lines(b, 50) >= 39
    if step < SHARE_INTERVAL:  # (one judged every 0.2 s goes through anyway)
        (a, _), buckets, clock = nodes(2, lobby=Rate(20.0, 40))
        passed = _through_an_outage(a, buckets, clock, 0.2, 100, held=False, step=step)
        assert passed == 41 if step == 0 else passed < 100


def test_a_burst_held_through_an_outage_is_cut_and_reported_whole() -> None:
    """100 lines that came at once, held, then judged: the burst goes
    through (40), no more, and the cluster is told all of it: node B's copy
    has nothing left for the address."""
    (a, b), buckets, clock = nodes(2, lobby=Rate(20.0, 40))
    assert _through_an_outage(a, buckets, clock, 0.0, 100, held=True, step=0.0) == 40
    assert sum(spent for items in buckets.calls[1:] for _, _, spent, _ in items) == 39
    assert lines(b, 50) <= 2


def test_no_work_when_the_limit_is_off_or_the_address_exempt() -> None:
    (a,), buckets, clock = nodes(1, lobby=Rate(0.0, 5), register=Rate(0.0, 5))
    assert lines(a, 50) == 50
    limits = record(a)
    assert a.reserve_registration(limits) == 0.0
    a.registered(limits)
    (e,), exempt_buckets, exempt_clock = nodes(1, lobby=Rate(1.0, 5),
                                               exempt=networks(["192.0.2.0/24"]))
    assert e.record(HOST) is None
    assert all(e.lobby_line(None) for _ in range(50))
    assert e.reserve_registration(None) == 0.0
    e.registered(None)
    assert buckets.calls == [] and exempt_buckets.calls == []
    assert clock.getDelayedCalls() == [] and exempt_clock.getDelayedCalls() == []


def test_registrations_are_counted_cluster_wide() -> None:
    """NICK is judged, and its registration reserved, by the node's copy; a
    stale copy is reconciled first (the NICK waits for it), so the
    registration is judged by the cluster's count."""
    (a, b), buckets, clock = nodes(2, register=Rate(0.5, 3))
    ra, rb = record(a), record(b)
    for _ in range(3):
        assert a.reserve_registration(ra) == 0.0
        a.registered(ra)
    assert a.reserve_registration(ra) > 0
    clock.advance(SHARE_INTERVAL)
    assert buckets.levels[REGISTER, HOST][0] == 3
    # On B, a while later: its first look reconciles, and B's copy is
    # the cluster's: nothing left.
    clock.advance(0.5)
    rb.register.take(clock.seconds())  # (whatever B's own copy had)
    b.reserve_registration(rb)
    assert b.reserve_registration(rb) == pytest.approx(1.5, abs=0.01)


def test_redis_out_of_reach_leaves_each_node_its_own_bucket() -> None:
    """No answer from the cluster (Redis down): each copy goes on as the
    node's own; nothing is told twice when it is back."""
    (a, b), buckets, clock = nodes(2, lobby=Rate(1.0, 5))
    buckets.down = True
    assert lines(a, 10) == 5 and lines(b, 10) == 5
    assert a.reserve_registration(record(a)) == 0.0  # judged at once, by A's own copy
    clock.advance(SHARE_INTERVAL)
    buckets.down = False
    clock.advance(5.0)
    assert lines(a, 10) == 5  # stale: reconciled with what the cluster heard (nothing)
    clock.advance(SHARE_INTERVAL)
    # A's first (at once), then its four others: nothing of the outage.
    assert buckets.levels[LOBBY, HOST][0] == pytest.approx(5 - SHARE_INTERVAL)


@pytest.mark.parametrize("held", [False, True])
def test_a_refunded_line_not_reported_yet_is_not_told_to_the_cluster(held: bool) -> None:
    """A lobby line let through and then given back (not sent:
    AddressBook.lobby_refund) before the next report: the node's copy has
    its token back and the report tells the cluster only the other line
    (held: both judged as of when they came, the level they leave)."""
    (a,), buckets, clock = nodes(1, lobby=Rate(0.001, 3))
    limits = record(a)
    limits.connections = 1  # kept (an idle, full record is forgotten)
    assert lines(a, 1) == 1
    clock.advance(SHARE_INTERVAL)  # reported: the copy is fresh
    at = clock.seconds() - 0.1 if held else None
    assert a.lobby_line(limits, at) is True
    assert a.lobby_line(limits, at) is True
    a.lobby_refund(limits)
    clock.advance(SHARE_INTERVAL)
    assert buckets.levels[LOBBY, HOST][0] == pytest.approx(2.0, abs=0.01)
    assert lines(a, 3) == 1  # 3 less the two counted


def test_a_registration_given_back_before_the_report_is_not_told_to_the_cluster() -> None:
    """Two NICKs reserve the address's registrations on a fresh copy; one
    is given back (its nick was taken) before the next report: the cluster
    is told of the other only, and the copy has the token back."""
    (a,), buckets, clock = nodes(1, register=Rate(0.001, 3))
    limits = record(a)
    limits.connections = 1  # kept (an idle, full record is forgotten)
    assert a.reserve_registration(limits) == 0.0  # stale: reconciled first
    clock.advance(SHARE_INTERVAL)  # reported: the copy is fresh
    assert a.reserve_registration(limits) == 0.0
    assert a.reserve_registration(limits) == 0.0
    assert a.reserve_registration(limits) > 0  # three reserved of three
    a.release_registration(limits)
    clock.advance(SHARE_INTERVAL)
    assert buckets.levels[REGISTER, HOST][0] == pytest.approx(2.0, abs=0.01)
    assert a.reserve_registration(limits) == 0.0


# -- through the chat: two cluster nodes (tests/test_cluster_unit.py) -----------


def shared_cluster(**config: Any) -> tuple[Cluster, FakeBuckets]:
    """Two cluster nodes with C{config}, sharing the addresses' buckets."""
    cluster = Cluster(2, **config)
    buckets = FakeBuckets(cluster.clock)
    for node in cluster.nodes:
        node.factory.addresses.share(buckets)
    return cluster, buckets


def test_msg_on_two_nodes_from_one_address_is_held_to_one_budget() -> None:
    """Users of one address on two nodes: the lobby lines over the
    address's budget are answered ERROR flood on either node, by the
    cluster's count."""
    cluster, _ = shared_cluster(ip_lobby_rate=1.0, ip_lobby_burst=3)
    ann, bob = cluster.nodes[0].user("ann"), cluster.nodes[1].user("bob")
    watcher = cluster.nodes[1].user("watcher")
    for i in range(5):
        ann.send(f"MSG a{i}")
        cluster.pump()
    cluster.clock.advance(SHARE_INTERVAL)
    for i in range(5):
        bob.send(f"MSG b{i}")
        cluster.pump()
    said = [line.split(" ", 4)[-1] for line in watcher.take() if line.startswith("MSG")]
    assert said == ["a0", "a1", "a2", "b0"]
    assert any(line.startswith("ERROR flood") for line in bob.take())


def _waiting_for_the_count(cluster: Cluster, buckets: FakeBuckets) -> Conn:
    """ann, on node 0, spends one of her address's 2 lobby lines; one
    report later, b1 on node 1 (its copy stale) sends one, judged by the
    copy, which asks the cluster; b2's line then waits for the answer
    (held, with the cluster's answers): b2."""
    ann = cluster.nodes[0].user("ann")
    b1, b2 = (cluster.nodes[1].user(nick) for nick in ("b1", "b2"))
    ann.send("MSG a0")
    cluster.pump()
    cluster.clock.advance(SHARE_INTERVAL)  # the cluster: 1 taken of 2
    buckets.held = True
    b1.send("MSG b1 says")  # B's copy is stale: its own judges, and it asks
    b2.send("MSG b2 waits")
    cluster.pump()
    return b2


def test_a_lobby_line_waiting_for_the_count_is_judged_by_it() -> None:
    """Two connections of one address on a node whose copy is stale: the
    first line goes through and the copy is reconciled; the other's line,
    meanwhile, waits for the answer, is judged by the cluster's count
    (ERROR flood here), and if its sender has gone by then is dropped
    without a word."""
    cluster, buckets = shared_cluster(ip_lobby_rate=1.0, ip_lobby_burst=2)
    watcher = cluster.nodes[0].user("watcher")
    b3 = cluster.nodes[1].user("b3")
    b2 = _waiting_for_the_count(cluster, buckets)
    b3.send("MSG b3 goes")
    cluster.pump()
    waiting = ("ERROR", "PONG")
    assert not [line for line in b2.take() + b3.take() if line.startswith(waiting)]
    b3.drop()
    buckets.answer()  # 2 taken of 2
    cluster.pump()
    said = [line.split(" ", 4)[-1] for line in watcher.take() if line.startswith("MSG")]
    assert said == ["a0", "b1 says"]
    (refused,) = [line for line in b2.take() if line.startswith("ERROR")]
    assert refused.startswith("ERROR flood slow down: at most 1 lobby messages per second")


def test_a_lobby_line_dropped_after_waiting_for_the_count_is_dropped_as_of_its_arrival(
        ) -> None:
    """A lobby line that waited 0.8 s for the cluster's count and is dropped
    is dropped as of when it arrived, as a line over the connection's own
    flood limit is (ChatProtocol.arrived): the next one dropped 1.2 s after
    it gets ERROR flood again (at most one a second).  Timed when the answer
    came, as the session did, that one was dropped without a word.  Both
    are counted once, by the connection's dropped()."""
    cluster, buckets = shared_cluster(ip_lobby_rate=0.1, ip_lobby_burst=2)
    b2 = _waiting_for_the_count(cluster, buckets)
    assert not [line for line in b2.take() if line.startswith("ERROR")]
    cluster.clock.advance(0.8)
    buckets.answer()  # 2 taken of 2
    cluster.pump()
    flood = "ERROR flood slow down: at most 0.1 lobby messages per second from your address"
    assert [line[:len(flood)] for line in b2.take()] == [flood]
    cluster.clock.advance(0.4)
    b2.send("MSG b2 again")  # judged at once: the copy is fresh, and empty
    cluster.pump()
    assert [line[:len(flood)] for line in b2.take()] == [flood]
    assert cluster.nodes[1].factory.stats.dropped_lines == {"flood_rate": 0, "ip_lobby_rate": 2}


def test_a_lobby_line_waits_for_the_count_no_longer_than_its_redis_wait() -> None:
    """The address's count may take up to budgets.TIMEOUT (5 s) to come:
    a line waiting for it with less of its --redis-wait left is answered
    "not sent" when its wait ends, not when the count comes, and is not
    charged to the address when it does."""
    cluster, buckets = shared_cluster(ip_lobby_rate=0.001, ip_lobby_burst=2)
    cluster.nodes[1].state.wait = 2.0
    watcher = cluster.nodes[0].user("watcher")
    b1, b2 = (cluster.nodes[1].user(nick) for nick in ("b1", "b2"))

    def answers() -> list[str]:
        return [line for line in b2.take() if not line.startswith("MSG")]

    cluster.clock.advance(2 * SHARE_INTERVAL)
    buckets.held = True
    b1.send("MSG b1 says")  # judged by the stale copy
    b2.send("MSG b2 waits", "PING behind")  # the count is asked for; it waits
    cluster.pump()
    assert answers() == []
    cluster.clock.advance(2.0 - 0.001)
    assert answers() == []
    cluster.clock.advance(0.001)
    late, pong = answers()
    assert late.startswith("ERROR unavailable not sent:"), late
    assert pong == "PONG behind"
    buckets.answer()  # the count, at last: b1's line alone
    cluster.pump()
    cluster.clock.advance(2 * SHARE_INTERVAL)  # a report of what was spent since
    assert buckets.levels[LOBBY, "127.0.0.1"][0] == pytest.approx(1.0, abs=0.01)
    assert [line.split(" ", 4)[-1] for line in watcher.take()
            if line.startswith("MSG")] == ["b1 says"]
    assert answers() == []


def test_nick_on_another_node_is_held_to_the_address_s_registrations() -> None:
    """Two registrations from one address on node 0 spend its burst; a NICK
    from it on node 1, whose copy is stale, waits for the cluster's count
    (a round trip, as the registration itself does) and is answered ERROR
    flood by it.  One server's rule, one budget for the cluster."""
    cluster, buckets = shared_cluster(ip_register_rate=0.5, ip_register_burst=2)
    cluster.nodes[0].user("ann")
    cluster.nodes[0].user("amy")
    cluster.clock.advance(SHARE_INTERVAL)
    buckets.held = True
    late = cluster.nodes[1].connect()
    late.take()
    late.send("NICK bea", "PING behind")
    cluster.pump()
    assert late.take() == []  # waiting for the cluster's count
    buckets.answer()
    cluster.pump()
    refused, pong = late.take()
    assert refused.startswith("ERROR flood too many nicks registered from 127.0.0.1")
    assert pong == "PONG behind"


def test_nicks_of_one_address_registered_at_once_on_a_node_spend_its_registrations_once_each(
        ) -> None:
    """A registration goes through the cluster's log (a round trip): two
    NICKs of one address on one node were both judged within its last
    registration before either was registered, and both got in.  Each NICK
    reserves its registration: the second is answered ERROR flood, and once
    the first's nick turns out taken on another node, its registration is
    given back."""
    cluster, _ = shared_cluster(ip_register_rate=0.05, ip_register_burst=2)
    cluster.nodes[0].user("ann")
    cluster.clock.advance(SHARE_INTERVAL)  # reported: node 0's copy is fresh
    bob, cat = cluster.nodes[0].connect(), cluster.nodes[0].connect()
    bob.take()
    cat.take()
    bob.send("NICK bob")
    cat.send("NICK cat")
    cluster.pump()
    assert bob.take()[0] == "READY bob"
    assert cat.take() == [
        "ERROR flood too many nicks registered from 127.0.0.1 lately; try again in 20 s"]
    assert cat.user is None
    cluster.clock.advance(20.0)
    cluster.nodes[1].user("dan", host="192.0.2.1")
    cat.send("NICK dan")  # taken: its registration is given back
    cluster.pump()
    assert cat.take() == ["RETRY taken dan is online already"]
    cat.send("NICK cat")
    cluster.pump()
    assert cat.take()[0] == "READY cat"


def test_a_nick_waits_for_the_count_no_longer_than_its_redis_wait() -> None:
    """The address's count may take up to budgets.TIMEOUT (5 s) to come: a
    NICK waiting for it is answered RETRY unavailable when its --redis-wait
    (here 2 s) ends, as its registration would be, not when the count
    comes (nor at --nick-timeout); the lines after it are answered then."""
    cluster, buckets = shared_cluster(ip_register_rate=0.5, ip_register_burst=2)
    cluster.nodes[1].state.wait = 2.0
    watcher = cluster.nodes[1].user("watcher")
    cluster.clock.advance(SHARE_INTERVAL)  # its registration is reported
    cluster.clock.advance(1.0)  # and the copy is stale
    buckets.held = True
    late = cluster.nodes[1].connect()
    late.take()
    late.send("NICK bea", "PING behind")
    cluster.pump()
    cluster.clock.advance(2.0 - 0.001)
    assert late.take() == []  # waiting for the cluster's count
    cluster.clock.advance(0.001)
    retry, pong = late.take()
    assert retry == ("RETRY unavailable the chat cannot check that nick now (the chat's "
                     "store did not take it within 2 seconds); send NICK again in a moment")
    assert pong == "PONG behind"
    buckets.answer()  # the count, at last: nothing more is answered
    cluster.pump()
    assert late.take() == []
    late.send("NICK bea")
    cluster.pump()
    assert late.take()[0] == "READY bea"
    assert [line.split()[-1] for line in watcher.take() if line.startswith("JOINED")] == ["bea"]


def test_a_nick_whose_connection_went_while_it_waited_for_the_count_is_not_registered() -> None:
    """A NICK waits for the address's count (node 1's copy is stale) and its
    connection goes meanwhile: when the count comes the nick is not
    registered.  Registered, it was a user with no connection, JOINED and
    at once LEFT (disconnected) on every node (mutation audit F3).  The nick
    stays free: the address's next NICK for it is taken."""
    cluster, buckets = shared_cluster(ip_register_rate=0.5, ip_register_burst=3)
    watchers = [node.user(f"w{i}") for i, node in enumerate(cluster.nodes)]
    cluster.nodes[1].state.wait = 2.0
    cluster.clock.advance(SHARE_INTERVAL)  # the registrations are reported
    cluster.clock.advance(1.0)  # and the copy is stale
    buckets.held = True
    late = cluster.nodes[1].connect()
    late.take()
    late.send("NICK bea")
    cluster.pump()
    assert late.take() == []  # waiting for the cluster's count
    late.drop()
    cluster.pump()
    buckets.held = False
    buckets.answer()
    cluster.pump()
    cluster.clock.advance(1.0)
    cluster.pump()
    assert [line for w in watchers for line in w.take() if "bea" in line] == []
    assert all("bea" not in node.state.hub.online for node in cluster.nodes)
    again = cluster.nodes[1].connect()
    again.take()
    again.send("NICK bea")
    cluster.pump()
    assert again.take()[0] == "READY bea"


# -- the script, against a real redis-server -----------------------------------


needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@needs_redis
@pytest_twisted.ensureDeferred
async def test_the_script_adds_drains_and_expires(redis: RedisServer) -> None:
    from twisted.internet import reactor

    from twisted_chat.server.cluster.redisconn import connect, parse_url

    proto = await connect(parse_url(redis.url), reactor)
    try:
        buckets = RedisBuckets(proto.execute_command, reactor)
        first = await buckets.spend([(LOBBY, HOST, 3, 0.001), (REGISTER, HOST, 0, 0.5)])
        assert first[0] == pytest.approx(3, abs=0.01) and first[1] == 0
        again = await buckets.spend([(LOBBY, HOST, 2, 0.001), (LOBBY, "2001:db8::/64", 1, 1.0)])
        assert again[0] == pytest.approx(5, abs=0.01) and again[1] == pytest.approx(1)
        # Reading spends nothing and writes nothing.
        assert (await buckets.spend([(LOBBY, HOST, 0, 0.001)]))[0] == pytest.approx(5, abs=0.01)
        assert redis.call("EXISTS", f"{BUCKETS}{REGISTER}:{HOST}") == 0
        # Expires once drained: 5 tokens at 0.001/s, 1 at 1/s.
        assert 4_990_000 <= redis.call("PTTL", f"{BUCKETS}{LOBBY}:{HOST}") <= 5_000_001
        assert 0 < redis.call("PTTL", f"{BUCKETS}{LOBBY}:2001:db8::/64") <= 1001
        # Drained at the rate, on Redis's clock: polled (a read spends
        # nothing) until down to 1.5, which at 100 a second takes Redis
        # (level - 1.5) / 100 s at least, so no less on this process's clock.
        sent = time.monotonic()
        fast = await buckets.spend([(LOBBY, "198.51.100.1", 4, 100.0)])
        assert fast[0] == pytest.approx(4, abs=0.5)
        for _ in range(400):  # bounded: about 2 s
            drained = await buckets.spend([(LOBBY, "198.51.100.1", 0, 100.0)])
            if drained[0] <= 1.5:
                break
            await deferLater(reactor, 0.005)
        assert drained[0] <= 1.5, "not drained"
        assert time.monotonic() - sent >= (fast[0] - 1.5) / 100 - 0.001, "drained too fast"
        # What lines held through an outage leave: a fraction (Shared.owed).
        held = await buckets.spend([(LOBBY, "198.51.100.2", 0.25, 0.001)])
        assert held[0] == pytest.approx(0.25, abs=0.01)
        assert 240_000 <= redis.call("PTTL", f"{BUCKETS}{LOBBY}:198.51.100.2") <= 250_001
    finally:
        proto.transport.loseConnection()


def script_calls(redis: RedisServer) -> dict[str, int]:
    """Redis's count of EVAL and EVALSHA commands so far (commandstats)."""
    text = redis.call("INFO", "commandstats")
    found = dict(re.findall(r"cmdstat_(evalsha|eval):calls=(\d+)", text))
    return {name: int(found.get(name, 0)) for name in ("eval", "evalsha")}


@needs_redis
@pytest_twisted.ensureDeferred
async def test_a_report_is_one_evalsha_and_a_forgotten_script_is_run_again(
        redis: RedisServer) -> None:
    """rev10-s10 F3: each report sent the script's text (EVAL, 648 bytes
    for Redis to hash).  Now EVALSHA; a Redis that does not have it
    (restarted, SCRIPT FLUSH; this connection loaded none) answers NOSCRIPT,
    and that report runs the script itself, which loads it again.  A node
    loads it with its others at each connection (redislog.SCRIPTS)."""
    from twisted.internet import reactor

    from twisted_chat.server.cluster.redisconn import connect, parse_url
    from twisted_chat.server.cluster.redislog import SCRIPTS

    assert SPEND in SCRIPTS
    proto = await connect(parse_url(redis.url), reactor)
    try:
        buckets = RedisBuckets(proto.execute_command, reactor)
        first = await buckets.spend([(LOBBY, HOST, 1, 1.0)])  # not loaded: NOSCRIPT, EVAL
        assert first[0] == pytest.approx(1, abs=0.01)
        assert script_calls(redis) == {"eval": 1, "evalsha": 1}
        for i in range(5):
            await buckets.spend([(LOBBY, HOST, 1, 0.001), (LOBBY, f"198.51.100.{i}", 1, 1.0)])
        assert script_calls(redis) == {"eval": 1, "evalsha": 6}
        redis.call("SCRIPT", "FLUSH")
        again = await buckets.spend([(LOBBY, HOST, 0, 0.001)])
        assert again[0] == pytest.approx(6, abs=0.1)
        assert script_calls(redis) == {"eval": 2, "evalsha": 7}
    finally:
        proto.transport.loseConnection()
