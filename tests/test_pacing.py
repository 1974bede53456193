"""
The lobby fan-out's pacing seen from the connections (the rule itself is
tested in tests/test_fanout.py): lines go out at the end of the reactor turn
that brought them unless the reactor has other work waiting, and then ride
along with what that work brings, for at most the window.  What each
connection receives, and in what order, does not change (except where a
reader cut at --sendq is seen to leave, the last test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.python.failure import Failure

from tests.harness import Conn, Harness, traced_lines
from twisted_chat.server import hub, lines, state
from twisted_chat.server.output.fanout import MAX_FANOUT_WAIT, MAX_GATHER_TURNS
from twisted_chat.server.output.sendqueue import DirectPass
from twisted_chat.wire import format_ts

WINDOW = 0.002


class Work:
    """Stands in for the reactor's backlog probe: is other work waiting?"""

    def __init__(self) -> None:
        self.waiting = False

    def __call__(self) -> bool:
        return self.waiting


def paced() -> tuple[Harness, Work]:
    work = Work()
    return Harness(fanout_delay=WINDOW, backlog=work), work


def count_writes(conn: Conn, on_write: Callable[[], None] | None = None) -> list[bytes]:
    """Record each write the protocol makes to C{conn}'s transport."""
    writes: list[bytes] = []
    write = conn.transport.write

    def recording(data: bytes) -> None:
        writes.append(data)
        if on_write is not None:
            on_write()
        write(data)

    conn.transport.write = recording  # type: ignore[method-assign]
    return writes


def two_waiting(nicks: tuple[str, ...]) -> tuple[Harness, list[Conn]]:
    """Users C{nicks}; with work waiting, the first says "one" and, half a
    millisecond later, "two": both wait when this returns, output taken."""
    h, work = paced()
    conns = [h.user(nick) for nick in nicks]
    work.waiting = True
    conns[0].send("MSG one")
    h.clock.advance(0.0005)
    conns[0].send("MSG two")
    assert all(conn.take() == [] for conn in conns)
    return h, conns


def msg(h: Harness, nick: str, text: str, at: float | None = None) -> str:
    return f"MSG {format_ts(h.clock.seconds() if at is None else at)} {nick} * {text}"


def test_a_line_goes_out_in_its_own_turn_when_nothing_else_waits() -> None:
    h, _ = paced()
    alice, bob = h.user("alice"), h.user("bob")
    alice.send("MSG hi")  # the harness ends the turn; the clock does not move
    assert bob.take() == [msg(h, "alice", "hi")]
    assert alice.take() == [msg(h, "alice", "hi")]


def test_a_line_goes_out_within_its_read_when_nothing_else_waits() -> None:
    """The connection's read ends as the fan-out's read does: nothing else
    waits, so the line leaves before the turn ends (no clock advance)."""
    h, _ = paced()
    alice, bob = h.user("alice"), h.user("bob")
    alice.transport.read(b"MSG hi\r\nMSG there\r\n")
    assert bob.take() == [msg(h, "alice", "hi"), msg(h, "alice", "there")]
    assert h.clock.getDelayedCalls() == []


def fanout_timers(h: Harness) -> list[float]:
    """Record when each timer the fan-out makes (its turn's end) is made."""
    made: list[float] = []
    call_later = h.clock.callLater

    def recording(delay: float, f: Callable[..., object], *args: object, **kw: object) -> Any:
        if getattr(f, "__self__", None) is h.factory.fanout:
            made.append(h.clock.seconds())
        return call_later(delay, f, *args, **kw)

    h.clock.callLater = recording  # type: ignore[method-assign]
    return made


def test_a_read_that_brings_lobby_lines_makes_no_timer_when_nothing_waits() -> None:
    h, _ = paced()
    alice, bob = h.user("alice"), h.user("bob")
    timers = fanout_timers(h)
    alice.transport.read(b"MSG hi\r\n")
    alice.transport.read(b"MSG there\r\n")
    assert bob.take() == [msg(h, "alice", "hi"), msg(h, "alice", "there")]
    assert timers == []


def test_a_busy_read_leaves_its_lines_on_one_timer_for_the_turn() -> None:
    h, work = paced()
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    timers = fanout_timers(h)
    work.waiting = True
    alice.transport.read(b"MSG hi\r\n")
    carol.transport.read(b"MSG ho\r\n")
    assert bob.take() == [] and len(timers) == 1
    work.waiting = False
    h.clock.advance(0)
    assert bob.take() == [msg(h, "alice", "hi"), msg(h, "carol", "ho")]


def test_a_websocket_line_waits_for_the_turn_end() -> None:
    """A WebSocket message is handled outside a read of the connection
    (message_received): on the turn's timer, as before."""
    h, _ = paced()
    alice, bob = h.user("alice"), h.user("bob")
    timers = fanout_timers(h)
    alice.protocol.message_received(b"MSG hi")
    assert bob.take() == [] and len(timers) == 1
    h.clock.advance(0)
    assert bob.take() == [msg(h, "alice", "hi")]


def test_a_line_from_outside_any_read_waits_for_the_turn_end() -> None:
    """A cluster line from Redis, a timer: the hub says it with no read
    of a chat connection around it."""
    h, _ = paced()
    alice, bob = h.user("alice"), h.user("bob")
    timers = fanout_timers(h)
    h.hub.say(alice.user, "from elsewhere")
    assert bob.take() == [] and len(timers) == 1
    h.clock.advance(0)
    assert bob.take() == [msg(h, "alice", "from elsewhere")]


def test_a_read_that_fails_still_ends_and_sends_its_lines() -> None:
    """If handling a read raises, its lines still leave, and a line from
    outside a read afterwards still gets the turn's timer."""
    h, _ = paced()
    alice, bob = h.user("alice"), h.user("bob")
    timers = fanout_timers(h)
    session = h.factory.session
    handle = session.line_received

    def failing(conn: Any, line: bytes) -> None:
        handle(conn, line)
        if line == b"MSG boom":
            raise RuntimeError("a bug")

    session.line_received = failing  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        alice.transport.read(b"MSG boom\r\n")
    assert bob.take() == [msg(h, "alice", "boom")]
    h.hub.say(alice.user, "later")
    assert len(timers) == 1


def test_a_line_waits_for_the_turn_end_when_another_socket_is_ready() -> None:
    h, work = paced()
    alice, bob = h.user("alice"), h.user("bob")
    work.waiting = True
    alice.transport.read(b"MSG hi\r\n")
    assert bob.take() == []
    work.waiting = False
    h.clock.advance(0)
    assert bob.take() == [msg(h, "alice", "hi")]


def test_a_line_right_after_a_fanout_is_not_held() -> None:
    """No gap after a fan-out: the old rule held this line for the window."""
    h, _ = paced()
    alice, bob = h.user("alice"), h.user("bob")
    writes = count_writes(bob)
    alice.send("MSG one")
    h.clock.advance(0.0001)
    alice.send("MSG two")
    assert bob.take() == [msg(h, "alice", "one", h.clock.seconds() - 0.0001),
                          msg(h, "alice", "two")]
    assert len(writes) == 2


def test_while_work_waits_lines_gather_into_one_write_for_at_most_the_window() -> None:
    h, work = paced()
    alice, bob = h.user("alice"), h.user("bob")
    writes = count_writes(bob)
    work.waiting = True
    alice.send("MSG one")
    first = h.clock.seconds()
    h.clock.advance(0.0005)
    alice.send("MSG two")
    h.clock.advance(WINDOW - 0.0005 - 1e-6)
    assert bob.take() == [], "work is waiting: the lines ride along with it"
    h.clock.advance(2e-6)
    # Each line keeps the time the server handled it.
    assert bob.take() == [msg(h, "alice", "one", first), msg(h, "alice", "two", first + 0.0005)]
    assert len(writes) == 1


def test_gathering_ends_on_the_first_turn_nothing_waits() -> None:
    h, work = paced()
    alice, bob = h.user("alice"), h.user("bob")
    work.waiting = True
    alice.send("MSG one")
    h.clock.advance(0.0001)
    assert bob.take() == []
    work.waiting = False
    h.clock.advance(0)
    assert bob.take() == [msg(h, "alice", "one", h.clock.seconds() - 0.0001)]


def test_a_slow_fanout_does_not_hold_the_next_line() -> None:
    """A shared or throttled CPU makes a fan-out take long on the wall clock;
    that alone never makes the next line wait (the old rule waited 4x)."""
    h, _ = paced()
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    slow = 0.01  # delivering "one" to bob "takes" 10 ms
    writes = count_writes(bob, on_write=lambda: h.clock.advance(slow) if len(writes) == 1 else None)
    alice.send("MSG one")
    assert carol.take() == [msg(h, "alice", "one", h.clock.seconds() - slow)]
    alice.send("MSG two")
    assert carol.take() == [msg(h, "alice", "two")]


def test_a_clock_that_stands_still_holds_the_lobby_for_a_bounded_number_of_turns() -> None:
    h, work = paced()
    alice, bob = h.user("alice"), h.user("bob")
    work.waiting = True
    alice.send("MSG one")
    for _ in range(MAX_GATHER_TURNS - 1):
        h.clock.advance(0)
    assert bob.take() == []
    h.clock.advance(0)
    assert [line.split()[-1] for line in bob.take()] == ["one"]


def test_a_big_window_is_capped() -> None:
    work = Work()
    h = Harness(fanout_delay=3600.0, backlog=work)
    alice, bob = h.user("alice"), h.user("bob")
    work.waiting = True
    alice.send("MSG one")
    h.clock.advance(MAX_FANOUT_WAIT)
    assert [line.split()[-1] for line in bob.take()] == ["one"]


def test_a_direct_line_never_overtakes_a_waiting_lobby_line() -> None:
    h, (alice, bob, carol) = two_waiting(("alice", "bob", "carol"))
    bob.send("DM carol psst")  # must reach carol after "two"
    now = format_ts(h.clock.seconds())
    assert carol.take() == [msg(h, "alice", "one", h.clock.seconds() - 0.0005),
                            msg(h, "alice", "two"), f"MSG {now} bob carol psst"]
    alice.send("PING x")  # and alice's PONG comes after her own copies
    assert alice.take()[-1] == "PONG x"


def test_a_write_in_parts_never_overtakes_a_waiting_lobby_line() -> None:
    """write_parts (UNPAIRED's reply block) keeps the order rule as write
    does.  Today the hub's deliver_gathered has already flushed when the
    factory writes UNPAIRED, so only a direct call shows it."""
    h, (_, bob) = two_waiting(("alice", "bob"))
    bob.protocol.write_parts([b"UNPAIRED x\r\n", b"USERS 0\r\n"])
    assert bob.take() == [msg(h, "alice", "one", h.clock.seconds() - 0.0005),
                          msg(h, "alice", "two"), "UNPAIRED x", "USERS 0"]


def test_a_newcomer_during_the_wait_gets_the_waiting_lines_as_history_only() -> None:
    h, (alice, bob) = two_waiting(("alice", "bob"))
    joined_at = h.clock.seconds()
    carol = h.connect()
    carol.take()
    carol.send("NICK carol")
    ready = carol.take()
    assert ready[:3] == ["READY carol", f"HISTORY {format_ts(joined_at - 0.0005)} alice one",
                         f"HISTORY {format_ts(joined_at)} alice two"]
    alice.send("MSG three")
    h.clock.advance(WINDOW)
    assert carol.take() == [msg(h, "alice", "three", joined_at)], "nothing both history and live"
    assert bob.take() == [msg(h, "alice", "one", joined_at - 0.0005),
                          msg(h, "alice", "two", joined_at),
                          f"JOINED {format_ts(joined_at)} carol",
                          msg(h, "alice", "three", joined_at)]


def test_someone_leaving_during_the_wait_comes_after_the_waiting_lines() -> None:
    h, (_, bob, carol) = two_waiting(("alice", "bob", "carol"))
    carol.drop()
    now = h.clock.seconds()
    h.clock.advance(WINDOW)  # LEFT rides with the batch
    assert bob.take()[-2:] == [msg(h, "alice", "two", now),
                               f"LEFT {format_ts(now)} carol disconnected"]


def drop_together(conns: list[Conn]) -> None:
    """The peers of C{conns} go away in one reactor turn."""
    for conn in conns:
        conn.closed = True
        conn.protocol.connectionLost(Failure(ConnectionDone()))


def test_departures_of_one_turn_reach_a_lobby_member_in_one_write() -> None:
    """Each LEFT written to every member at once made n departures n writes
    to each of the others: O(n^2) writes in one turn (rev20-attack 1)."""
    h, _ = paced()
    bob = h.user("bob")
    leavers = [h.user(f"u{i}", host=f"127.0.0.{i + 2}") for i in range(20)]
    writes = count_writes(bob)
    drop_together(leavers)
    h.clock.advance(0)
    now = format_ts(h.clock.seconds())
    assert bob.take() == [f"LEFT {now} u{i} disconnected" for i in range(20)]
    assert len(writes) == 1


def test_half_closes_of_one_turn_reach_a_lobby_member_in_one_write() -> None:
    """A peer's FIN gives the peer its share of the waiting lines, not the
    whole lobby its batch: a flush there made n FINs n writes to each."""
    h, work = paced()
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    leavers = [h.user(f"u{i}", host=f"127.0.0.{i + 2}") for i in range(20)]
    work.waiting = True
    alice.send("MSG one")
    one = msg(h, "alice", "one")
    writes = count_writes(bob)
    for conn in [carol, *leavers]:
        conn.protocol.readConnectionLost()
    assert carol.take() == [one], "the peer that half-closed gets its share"
    assert writes == []
    now = format_ts(h.clock.seconds())
    h.clock.advance(WINDOW)
    assert bob.take() == [one, f"LEFT {now} carol disconnected",
                          *[f"LEFT {now} u{i} disconnected" for i in range(20)]]
    assert len(writes) == 1


def test_timeouts_of_one_turn_reach_a_lobby_member_in_one_write() -> None:
    """rr20-left 1: a BYE close (here no answer to PING) gives the leaver
    its share and its BYE, not the whole lobby its batch: a flush there
    made n timeouts in one turn n writes to each member."""
    work = Work()
    h = Harness(fanout_delay=WINDOW, backlog=work, idle_timeout=10.0, ping_timeout=5.0)
    bob = h.user("bob")
    leavers = [h.user(f"u{i}", host=f"127.0.0.{i + 2}") for i in range(20)]
    h.clock.advance(10.0)  # everyone is sent PING; only bob answers
    assert bob.take()[-1].startswith("PING")
    bob.send("PONG x")
    h.clear_all()
    writes = count_writes(bob)
    h.clock.advance(5.0)
    now = format_ts(h.clock.seconds())
    h.clock.advance(WINDOW)
    assert sorted(bob.take()) == sorted(f"LEFT {now} u{i} timeout" for i in range(20))
    assert len(writes) == 1
    assert leavers[1].take()[-1].startswith("BYE timeout")


def test_dropped_connections_are_given_no_share() -> None:
    """rr20-left 2: a connection already closing writes nothing; its share
    was still joined, counted as sent, then discarded."""
    h, work = paced()
    alice, bob = h.user("alice"), h.user("bob")
    leavers = [h.user(f"u{i}", host=f"127.0.0.{i + 2}") for i in range(20)]
    h.clear_all()
    stats = h.factory.stats
    work.waiting = True
    alice.send("MSG one")
    sent, discarded = stats.bytes_out, stats.discarded
    to_alice, to_bob = count_writes(alice), count_writes(bob)
    drop_together(leavers)
    work.waiting = False
    h.clock.advance(WINDOW)
    assert len(bob.take()) == 21 and to_bob
    assert stats.discarded == discarded
    assert stats.bytes_out - sent == sum(map(len, to_alice + to_bob))


def couples(h: Harness, n: int) -> list[tuple[Conn, Conn]]:
    """C{n} pairs, a<i> with b<i>, each user from an address of its own."""
    made = []
    for i in range(n):
        a = h.user(f"a{i}", host=f"127.0.1.{i + 2}")
        b = h.user(f"b{i}", host=f"127.0.2.{i + 2}")
        a.send(f"PAIR b{i}")
        b.send(f"ACCEPT a{i}")
        made.append((a, b))
    return made


def test_a_closing_partner_is_given_no_share() -> None:
    """rr21-f 1: at a pair's end a partner already closing (cut at --sendq,
    or a cluster node's FIN, the hub not told yet) gets no share of the
    paired users' lines, as a dropped one gets none; it was joined,
    counted as sent, then discarded."""
    h, work = paced()
    [(a, b)] = couples(h, 1)
    h.clear_all()
    stats = h.factory.stats
    work.waiting = True
    b.protocol.hang_up("sendq")
    discarded = stats.discarded
    drop_together([a])
    work.waiting = False
    h.clock.advance(WINDOW)
    assert stats.discarded == discarded


def test_a_closing_partner_back_in_the_lobby_leaves_the_batch_on_its_writer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A partner already closing is given no cut at its pair's end: a batch
    leaves it out anyway, and its cut sent the lobby's whole batch down the
    path where each member gets its own part, past the batch writer (the
    send queues' direct pass, C code on plain TCP): at a mass close of
    paired users, for every member of the lobby."""
    passes: list[bytes] = []
    write_all = DirectPass.__call__

    def recording(self: DirectPass, members: Any, data: bytes) -> list[Any]:
        passes.append(data)
        return write_all(self, members, data)

    monkeypatch.setattr(DirectPass, "__call__", recording)
    h, work = paced()
    alice = h.user("alice")
    [(a, b)] = couples(h, 1)
    h.clear_all()
    del passes[:]
    work.waiting = True
    alice.send("MSG one")
    one = msg(h, "alice", "one")
    b.protocol.hang_up("sendq")
    drop_together([a])
    lobby = [one, f"LEFT {format_ts(h.clock.seconds())} a0 disconnected"]
    work.waiting = False
    h.clock.advance(WINDOW)
    assert alice.take() == lobby
    assert passes == ["".join(f"{line}\r\n" for line in lobby).encode()]


def test_closing_members_are_left_out_of_the_batches() -> None:
    """A member whose connection is closing but whom the hub still lists
    (cut at --sendq, or a cluster node's leaver until its leave event) is
    left out of the lobby's batch and the paired users': here partners
    cut while their pairs end, who come back to the lobby closing, and a
    lobby member and a paired user cut while lines wait.  Their lines were
    joined (each its own part, after its cut), counted as sent and thrown
    away: 970 KB at 200 closing pairs (rr21-f)."""
    h, work = paced()
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    *ending, (still, cut) = couples(h, 4)
    h.clear_all()
    stats = h.factory.stats
    work.waiting = True
    alice.send("MSG one")
    sent, discarded = stats.bytes_out, stats.discarded
    to_alice, to_bob, to_still = count_writes(alice), count_writes(bob), count_writes(still)
    for conn in [carol, cut, *(b for _, b in ending)]:
        conn.protocol.hang_up("sendq")
    drop_together([a for a, _ in ending])
    work.waiting = False
    h.clock.advance(WINDOW)
    assert len(alice.take()) == len(bob.take()) == 4 and len(still.take()) == 3
    assert stats.discarded == discarded
    assert stats.bytes_out - sent == sum(map(len, to_alice + to_bob + to_still))


def test_paired_departures_of_one_turn_reach_a_lobby_member_in_one_write() -> None:
    """rev21-clu F2: a departure that ended a pair flushed the whole batch
    (the partner's return was the hub's deliver_gathered), so n such
    departures in one turn were n writes to each lobby member, and each
    LEFT written at once to every paired user about n x n more.  Now each
    member gets all the LEFTs in one write, and each partner its block in
    a few: the LEFTs before its return (gathered while it was paired),
    UNPAIRED and the user list, then the later LEFTs with the batch."""
    h, _ = paced()
    members = [h.user(f"m{i}", host=f"127.0.3.{i + 2}") for i in range(5)]
    pairs = couples(h, 20)
    h.clear_all()
    writes = [count_writes(member) for member in members]
    to_partners = [count_writes(b) for _, b in pairs]
    drop_together([a for a, _ in pairs])
    h.clock.advance(0)
    now = format_ts(h.clock.seconds())
    lefts = [f"LEFT {now} a{i} disconnected" for i in range(20)]
    for member, wrote in zip(members, writes, strict=True):
        assert member.take() == lefts
        assert len(wrote) == 1, f"{len(wrote)} writes for 20 paired departures"
    for i, (_, b) in enumerate(pairs):
        got = b.take()
        listed = got.index(f"USERS {5 + 40 - (i + 1)}")  # the later leavers still online
        assert [line for line in got[:listed] if not line.startswith("USER ")] == [
            *lefts[:i + 1], f"UNPAIRED a{i} disconnected"]
        assert got[listed + 1:] == lefts[i + 1:]
    # Its share, UNPAIRED and the replay, the user list, the later LEFTs (the
    # last partner has none): four writes each, not one per departure.
    assert [len(wrote) for wrote in to_partners] == [4] * 19 + [3]


def test_a_partner_back_in_the_turn_gets_the_waiting_lines_once_in_its_replay() -> None:
    """The lines waiting when its pair ended are the partner's replay, not
    live lines too; the lobby gets them with the LEFT, in one batch."""
    h, work = paced()
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    bob.send("PAIR carol")
    carol.send("ACCEPT bob")
    h.clear_all()
    work.waiting = True
    alice.send("MSG one")
    one = msg(h, "alice", "one")
    now = format_ts(h.clock.seconds())
    drop_together([bob])
    assert carol.take() == [f"LEFT {now} bob disconnected", "UNPAIRED bob disconnected",
                            f"HISTORY {now} alice one", "USER alice lobby",
                            "USER carol lobby", "USERS 2"]
    assert alice.take() == [], "the batch still waits"
    h.clock.advance(WINDOW)
    assert alice.take() == [one, f"LEFT {now} bob disconnected"]
    assert carol.take() == []
    alice.send("MSG two")
    two = msg(h, "alice", "two")
    h.clock.advance(WINDOW)
    assert carol.take() == [two]


def test_a_paired_user_gets_the_lefts_of_a_turn_in_one_write() -> None:
    """Paired users are not in the lobby's batch: their JOINED and LEFT
    lines are gathered in a batch of their own (each written at once made
    n departures with n pairs open n x n writes: rev21-clu F2)."""
    h, _ = paced()
    alice, bob = h.user("alice"), h.user("bob")
    others = [h.user(f"u{i}", host=f"127.0.0.{i + 2}") for i in range(20)]
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    h.clear_all()
    writes = count_writes(alice)
    drop_together(others)
    assert alice.take() == [], "gathered for the turn's end"
    h.clock.advance(0)
    now = format_ts(h.clock.seconds())
    assert alice.take() == bob.take() == [f"LEFT {now} u{i} disconnected" for i in range(20)]
    assert len(writes) == 1


def test_a_paired_users_lines_go_out_at_the_end_of_the_read_that_brought_them() -> None:
    """The paired users' batch ends with a read as the lobby's does: the
    JOINED and LEFT a read brings go at its end when nothing else waits
    (rr21-f: they waited for the end of the turn, the lobby's did not)."""
    h, work = paced()
    [(alice, bob)] = couples(h, 1)
    carol = h.user("carol")
    dave = h.connect()
    h.clear_all()
    dave.transport.read(b"NICK dave\r\n")  # no clock advance: the turn goes on
    now = format_ts(h.clock.seconds())
    assert alice.take() == bob.take() == carol.take() == [f"JOINED {now} dave"]
    carol.transport.read(b"BYE\r\n")
    assert alice.take() == [f"LEFT {now} carol quit"]
    work.waiting = True  # busy: the end of the turn, as the lobby's
    dave.transport.read(b"BYE\r\n")
    assert alice.take() == []
    h.clock.advance(WINDOW)
    assert alice.take() == [f"LEFT {now} dave quit"]


def test_a_paired_user_leaving_gets_its_share_of_the_paired_batch() -> None:
    """A paired peer that half-closes, or is closed with BYE, gets the
    JOINED and LEFT lines waiting for it first, as a lobby member does."""
    h, _ = paced()
    (alice, _), (erin, _) = couples(h, 2)
    carol, dave = h.user("carol"), h.user("dave")
    h.clear_all()
    now = format_ts(h.clock.seconds())
    drop_together([carol])
    alice.protocol.readConnectionLost()
    assert alice.take() == [f"LEFT {now} carol disconnected"]
    drop_together([dave])
    erin.send("BYE night")
    assert erin.take() == [f"LEFT {now} carol disconnected", f"LEFT {now} a0 disconnected",
                           f"LEFT {now} dave disconnected", "BYE quit"]


#: The modules a JOINED or LEFT is decided and written in (the hub, the
#: state, the lines), whose lines run are counted.
DEPARTURE_MODULES = tuple(module.__file__ or "" for module in (hub, lines, state))


def test_departures_look_at_the_paired_users_not_everyone_online() -> None:
    """Each JOINED and LEFT walked every user online to find the paired
    ones once a pair existed: a burst of n departures with pairs open cost
    n x online.  The lines run for 40 departures with two pairs open are
    the same with 200 or 400 others online (the walk: 1.8 times as many)."""

    def depart(others: int) -> int:
        work = Work()
        h = Harness(fanout_delay=WINDOW, backlog=work, max_per_ip=1_000)
        pairs = [(h.user(f"a{i}"), h.user(f"b{i}")) for i in range(2)]
        for a, b in pairs:
            a.send(f"PAIR {b.user.nick}")
            b.send(f"ACCEPT {a.user.nick}")
        for i in range(others):
            h.user(f"s{i}")
        leavers = [h.user(f"u{i}") for i in range(40)]
        h.clear_all()
        work.waiting = True  # the batch waits: the lobby's one write is not counted
        count = traced_lines(lambda: drop_together(leavers), *DEPARTURE_MODULES)
        now = format_ts(h.clock.seconds())
        work.waiting = False
        h.clock.advance(WINDOW)
        for a, b in pairs:  # the paired users still get every one
            expected = [f"LEFT {now} u{i} disconnected" for i in range(40)]
            assert a.take() == b.take() == expected
        return count

    small, large = depart(200), depart(400)
    assert large <= 1.05 * small, (small, large)


def test_a_newcomer_gets_the_left_of_those_its_list_showed_and_no_other() -> None:
    h, (_, bob, carol, dave) = two_waiting(("alice", "bob", "carol", "dave"))
    two = msg(h, "alice", "two")
    now = format_ts(h.clock.seconds())
    drop_together([carol])  # before erin's list: not erin's to be told
    erin = h.connect()
    erin.take()
    erin.send("NICK erin")
    ready = erin.take()
    assert "USER carol lobby" not in ready and "USER dave lobby" in ready
    drop_together([dave])  # erin's list showed dave
    h.clock.advance(WINDOW)
    assert erin.take() == [f"LEFT {now} dave disconnected"]
    assert bob.take()[-4:] == [two, f"LEFT {now} carol disconnected",
                               f"JOINED {now} erin", f"LEFT {now} dave disconnected"]


def test_a_user_pairing_in_the_turn_gets_the_waiting_lefts_before_paired() -> None:
    h, (_, bob, carol, dave) = two_waiting(("alice", "bob", "carol", "dave"))
    now = format_ts(h.clock.seconds())
    bob.send("PAIR carol")
    assert carol.take()[-1] == "INVITE bob"  # the waiting lines went before it
    drop_together([dave])
    carol.send("ACCEPT bob")
    assert carol.take() == [f"LEFT {now} dave disconnected", "PAIRED bob"]
    assert bob.take()[-2:] == [f"LEFT {now} dave disconnected", "PAIRED carol"]


def test_a_leaver_gets_its_share_of_the_waiting_lines_before_its_bye() -> None:
    h, (_, bob, carol) = two_waiting(("alice", "bob", "carol"))
    carol.send("BYE night")
    assert carol.take() == [msg(h, "alice", "one", h.clock.seconds() - 0.0005),
                            msg(h, "alice", "two"), "BYE quit"]
    now = format_ts(h.clock.seconds())
    h.clock.advance(WINDOW)
    assert bob.take()[-1] == f"LEFT {now} carol quit night"


def test_shutdown_delivers_the_waiting_lines_before_bye() -> None:
    h, (_, bob) = two_waiting(("alice", "bob"))
    h.factory.shutdown()
    assert bob.take()[-2:] == [msg(h, "alice", "two"), "BYE shutdown the server is shutting down"]


def test_zero_delay_writes_each_turns_lines_at_once_even_while_work_waits() -> None:
    work = Work()
    h = Harness(fanout_delay=0.0, backlog=work)
    alice, bob = h.user("alice"), h.user("bob")
    work.waiting = True
    writes = count_writes(bob)
    alice.send("MSG one")
    alice.send("MSG two")  # same clock time, next turn
    assert len(writes) == 2
    assert bob.take() == [msg(h, "alice", "one"), msg(h, "alice", "two")]


def test_a_peer_that_half_closes_still_gets_the_waiting_lines() -> None:
    """C{printf 'NICK bot\nMSG done\n' | nc -N host port} must see its own copy."""
    h, (alice, bob) = two_waiting(("alice", "bob"))
    alice.protocol.readConnectionLost()  # alice's last byte came; she still reads
    assert alice.take()[-1] == msg(h, "alice", "two")
    assert alice.transport.disconnecting
    now = h.clock.seconds()
    h.clock.advance(WINDOW)  # LEFT rides with the batch
    assert bob.take()[-2:] == [msg(h, "alice", "two", now),
                               f"LEFT {format_ts(now)} alice disconnected"]
    h.clock.advance(WINDOW)
    assert alice.take() == [] and bob.take() == []


def test_half_close_in_a_quiet_lobby_is_a_disconnect() -> None:
    h = Harness()
    alice, bob = h.user("alice"), h.user("bob")
    alice.protocol.readConnectionLost()
    assert alice.transport.disconnecting
    h.clock.advance(0)  # LEFT goes at the end of the turn
    assert bob.take() == [f"LEFT {format_ts(h.clock.seconds())} alice disconnected"]
    alice.drop()  # the transport then reports the close: nothing more happens
    assert bob.take() == []
    assert "alice" not in h.hub.online


def test_shutdown_leaves_no_timer_behind() -> None:
    h, _conns = two_waiting(("alice", "bob"))
    closed = h.factory.shutdown()
    for conn in h.conns:
        conn.drop()
    h.clock.advance(0)
    assert closed.called
    assert h.clock.getDelayedCalls() == []


# -- what each connection receives never depends on the pacing ----------------

NICKS = ["ann", "ben", "cat"]
steps = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.0, 0.0003, 0.001, 0.0025, 0.01]),  # time before the step
        st.integers(0, len(NICKS) - 1),
        st.sampled_from(["nick", "msg", "msg", "msg", "burst", "dm", "pair", "accept",
                         "unpair", "users", "ping", "bye", "eof", "drop", "wait"]),
        st.integers(0, len(NICKS) - 1),
        st.booleans(),  # whether the reactor has other work waiting
    ),
    max_size=60,
)
Script = list[tuple[float, int, str, int, bool]]

# Limits small enough for a script to reach: a burst of MSG lines is cut by
# flood control (and enough of them disconnect), a silent connection is
# PINGed and then closed, an invitation expires between two steps.
LIMITS = dict(flood_rate=200.0, flood_burst=4, idle_timeout=0.02, ping_timeout=0.01,
              invite_timeout=0.004)


def run(script: Script, delay: float,
        limits: dict[str, float] | None = None) -> list[tuple[bytes, bool]]:
    work = Work()
    h = Harness(fanout_delay=delay, backlog=work, **(limits or {}))
    conns: list[Conn | None] = [None] * len(NICKS)
    for wait, who, action, whom, waiting in script:
        work.waiting = waiting
        h.clock.advance(wait)
        conn = conns[who]
        if action == "wait":
            # long enough for an idle PING and its timeout (with LIMITS), in
            # steps, so the timers fire one by one and not all at one instant
            for _ in range(10):
                h.clock.advance(0.004)
            continue
        if conn is None or conn.closed or conn.transport.disconnecting:
            conns[who] = conn = h.connect()
            conn.send(f"NICK {NICKS[who]}")
        target = NICKS[whom]
        if action == "nick":
            conn.send(f"NICK {target}")
        elif action == "msg":
            conn.send(f"MSG from {NICKS[who]}")
        elif action == "burst":
            conn.send(*[f"MSG {NICKS[who]} {i}" for i in range(7)])
        elif action == "dm":
            conn.send(f"DM {target} psst")
        elif action in ("pair", "accept"):
            conn.send(f"{action.upper()} {target}")
        elif action in ("unpair", "users"):
            conn.send(action.upper())
        elif action == "ping":
            conn.send("PING t")
        elif action == "bye":
            conn.send("BYE")
        elif action == "eof":
            conn.protocol.readConnectionLost()  # half-closed: still reads
            h.clock.advance(0)
        else:
            conn.drop()
    for _ in range(20):  # the timers still due, one by one (see "wait")
        h.clock.advance(0.004)
    h.clock.advance(1)
    h.clock.advance(0)
    return [(c.transport.value(), c.closed) for c in h.conns]


def same_output(script: Script,
                limits: dict[str, float] | None = None) -> None:
    at_once = run(script, 0.0, limits)
    with_pacing = run(script, WINDOW, limits)
    assert len(at_once) == len(with_pacing)
    for (unpaced, dropped), (paced_bytes, _) in zip(at_once, with_pacing, strict=True):
        if dropped:
            # A peer that vanished (not one that half-closed) may miss lines
            # still waiting when it went.
            assert unpaced.startswith(paced_bytes)
        else:
            assert paced_bytes == unpaced


def property_test(test: Callable[..., None]) -> Callable[..., None]:
    """300 random scripts per run, always fresh ones."""
    return settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])(given(script=steps)(test))


@property_test
def test_pacing_changes_when_lines_go_out_never_what_or_in_which_order(
    script: Script,
) -> None:
    same_output(script)


@property_test
def test_with_the_limits_on_too_pacing_changes_only_when_lines_go_out(
    script: Script,
) -> None:
    """Flood control, idle PINGs and timeouts, and invitation expiry decide
    at handling time and write directly, so the pacing must not change what
    they send, or where it falls among the lobby lines."""
    same_output(script, LIMITS)


# Every script meets each case only by chance: these always run.  ann and
# ben pair while cat's lines wait, then a pair ends in that turn.
MEET = [(0.0, who, "users", 0, False) for who in range(3)]
PAIR = [(0.0, 0, "pair", 1, False), (0.0, 1, "accept", 0, False)]


@pytest.mark.parametrize("ending", ["drop", "eof", "bye", "unpair"])
def test_a_pair_ending_while_lines_wait_changes_only_when_they_go(ending: str) -> None:
    """rev21-clu F2: a pair's end no longer flushes the batch to everyone."""
    waiting = [(0.0, 2, "msg", 0, True), (0.0003, 2, "burst", 0, True)]
    after = [(0.0, 1, "msg", 0, True), (0.0, 0, "msg", 0, True), (0.0025, 2, "msg", 0, False)]
    for script in ([*MEET, *PAIR, *waiting, (0.0, 0, ending, 0, True), *after],
                   [*MEET, *PAIR, *waiting, (0.0, 0, ending, 0, True),
                    (0.0, 1, "drop", 0, True), *after]):
        same_output(script)
        same_output(script, LIMITS)


def test_a_reader_cut_at_sendq_is_cut_at_the_batch_that_crosses_it() -> None:
    """The one place the pacing changes an order others see (docs/protocol.md,
    "Timing and order"): the cut, and so its LEFT, comes with the batch."""
    work = Work()
    h = Harness(fanout_delay=WINDOW, sendq=65536 + 1000, backlog=work)
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    bob.transport.producer.pauseProducing()  # the kernel stopped taking bob's data
    alice.send("MSG " + "x" * 400)  # nothing waits: out at once
    work.waiting = True
    for text in ("y" * 400, "z" * 400):
        h.clock.advance(0.0005)
        alice.send("MSG " + text)  # these wait, and would take bob past --sendq
    h.clock.advance(0.0005)
    carol.send("MSG hi")  # handled after the line that crossed the limit
    assert not bob.transport.disconnected  # nothing written to bob yet
    h.clock.advance(WINDOW)
    assert bob.transport.disconnected  # cut by the batch of all three
    bob.protocol.connectionLost(Failure(ConnectionAborted()))
    left = f"LEFT {format_ts(h.clock.seconds())} bob sendq"
    h.clock.advance(WINDOW)  # LEFT rides with the next batch
    seen = [line.split(" ")[2] if line.startswith("MSG") else line for line in carol.take()]
    assert seen == ["alice", "alice", "alice", "carol", left]
