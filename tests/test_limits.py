"""
The abuse limits at their edges: flood control, idle peers, the NICK-state
time limit, slow readers, connection limits and shutdown.  Time is a
task.Clock; the transport is a StringTransport.
"""

from __future__ import annotations

import pytest
from twisted.internet.error import ConnectionAborted
from twisted.python.failure import Failure

from tests.harness import Harness, run_for
from twisted_chat.server.limits.descriptors import REFUSALS_CLOSING
from twisted_chat.wire import format_ts


def ts(h: Harness) -> str:
    return format_ts(h.clock.seconds())


# -- flood control -------------------------------------------------------------


def flood_harness(**kw: object) -> Harness:
    return Harness(flood_rate=10.0, flood_burst=20, **kw)


def test_exactly_the_burst_passes() -> None:
    h = flood_harness()
    alice = h.user("alice")  # NICK spent one token
    alice.send(*["PING x"] * 19)
    assert alice.take() == ["PONG x"] * 19


def test_one_over_the_burst_is_dropped_with_error() -> None:
    h = flood_harness()
    alice = h.user("alice")
    alice.send(*[f"PING {i}" for i in range(20)])
    lines = alice.take()
    assert lines[:19] == [f"PONG {i}" for i in range(19)]
    assert len(lines) == 20
    assert lines[19].startswith("ERROR flood ")


def test_at_most_one_flood_error_per_second() -> None:
    h = flood_harness()
    alice = h.user("alice")
    alice.send(*["PING"] * 19)
    alice.take()
    alice.send(*["PING"] * 5)
    assert [line.split()[1] for line in alice.take()] == ["flood"]
    h.clock.advance(0.5)  # refills 5 tokens
    alice.send(*["PING"] * 6)
    assert alice.take() == ["PONG"] * 5  # the sixth is dropped silently: <1 s since the error
    h.clock.advance(0.55)
    alice.send(*["PING"] * 6)
    lines = alice.take()
    assert lines[:5] == ["PONG"] * 5 and lines[5].startswith("ERROR flood ")


def test_bucket_refills() -> None:
    h = flood_harness()
    alice = h.user("alice")
    alice.send(*["PING"] * 19)
    alice.take()
    run_for(h.clock, 2.0)  # 20 tokens again, capped at the burst
    alice.send(*["PING"] * 21)
    lines = alice.take()
    assert lines[:20] == ["PONG"] * 20 and lines[20].startswith("ERROR flood")


def test_every_line_counts_even_empty_and_invalid() -> None:
    h = flood_harness()
    alice = h.user("alice")
    alice.send_raw(b"\r\n" * 10 + b"BOGUS\r\n" * 9)
    alice.take()
    alice.send("PING")
    assert alice.take_one().startswith("ERROR flood ")


def test_keeps_flooding_gets_bye_and_others_see_left() -> None:
    h = flood_harness()
    alice, bob = h.user("alice"), h.user("bob")
    alice.send(*["PING"] * 19)
    alice.send(*["MSG spam"] * 20)  # twenty dropped: the penalty reaches the burst
    assert not alice.transport.disconnecting
    alice.send("MSG one more")
    lines = alice.take()
    assert lines[-1] == "BYE flood too many lines too fast"
    assert alice.transport.disconnecting
    assert bob.take() == [f"LEFT {ts(h)} alice flood"]


def test_penalty_drains_so_a_slightly_fast_client_is_not_cut() -> None:
    h = flood_harness()
    alice = h.user("alice")
    # 12 lines a second for a minute: 2 a second dropped, the penalty drains 2 a second.
    for _ in range(60):
        alice.send(*["PING"] * 12)
        h.clock.advance(1.0)
    assert not alice.transport.disconnecting


def test_over_long_lines_count_too() -> None:
    """An over-long line is a complete line too: it spends a token, whether
    it arrives whole or in pieces (discarded as it comes)."""
    h = flood_harness(max_line=10)
    alice = h.user("alice")  # NICK spent one token: 19 left
    long = b"MSG " + b"x" * 20
    alice.send_raw((long + b"\r\n") * 18)
    alice.send_raw(long)  # over the limit before its end: discarded from here
    alice.send_raw(b"yyy\r\n")
    assert alice.take() == ["ERROR too-long lines may be at most 10 bytes"] * 19
    alice.send("PING")
    assert alice.take_one().startswith("ERROR flood ")


def test_over_long_lines_dropped_for_flooding_are_not_answered_too_long() -> None:
    """Past the burst an over-long line is dropped like any other: one ERROR
    flood a second and nothing else, not an ERROR too-long for each (output
    for every line dropped, to a peer that may not be reading)."""
    h = flood_harness(max_line=20)
    alice = h.user("alice")  # NICK spent one token: 19 left
    long = b"MSG " + b"x" * 40 + b"\r\n"
    alice.send_raw(long * 19)
    assert alice.take() == ["ERROR too-long lines may be at most 20 bytes"] * 19
    alice.send_raw(long * 5)
    assert [line.split()[1] for line in alice.take()] == ["flood"]
    alice.send_raw(b"MSG " + b"x" * 40)  # over the limit before its end
    alice.send_raw(b"\r\n")
    assert alice.take() == []


def test_flood_rate_zero_disables() -> None:
    h = Harness(flood_rate=0)
    alice = h.user("alice")
    alice.send(*["PING"] * 1000)
    assert alice.take() == ["PONG"] * 1000


# -- idle peers ----------------------------------------------------------------


def idle_harness() -> Harness:
    return Harness(idle_timeout=120, ping_timeout=60)


def test_ping_after_idle_timeout() -> None:
    h = idle_harness()
    alice = h.user("alice")
    h.clock.advance(119.9)
    assert alice.take() == []
    h.clock.advance(0.1)
    line = alice.take_one()
    assert line.startswith("PING ")


def test_activity_postpones_the_ping() -> None:
    h = idle_harness()
    alice = h.user("alice")
    h.clock.advance(100)
    alice.send("PONG")  # any line counts
    h.clock.advance(100)
    assert alice.take() == []
    h.clock.advance(20)
    assert alice.take_one().startswith("PING ")


def test_an_over_long_line_postpones_the_ping() -> None:
    h = Harness(idle_timeout=120, ping_timeout=60, max_line=10)
    alice = h.user("alice")
    h.clock.advance(100)
    alice.send_raw(b"MSG " + b"x" * 20 + b"\r\n")
    assert alice.take_one().startswith("ERROR too-long ")
    h.clock.advance(100)
    assert alice.take() == []
    h.clock.advance(20)
    assert alice.take_one().startswith("PING ")


def test_the_idle_timer_pings_when_due_even_where_the_difference_rounds_short() -> None:
    """
    At real-looking clock values, (set + timeout) - set can come out a hair
    under the timeout.  The check compared that difference, rescheduled for
    the hair, which lands on the same instant: on a Clock, C{advance} spun
    for ever (the pacing property test found it); on a reactor, one wasted
    turn.  The timer is run by hand here so the old code fails, not hangs.
    """
    h = Harness(idle_timeout=0.02, ping_timeout=0.01)
    h.clock.advance(0.01)
    alice = h.user("alice")
    idle = alice.protocol._idle
    assert idle is not None
    due = idle.when
    assert due - h.clock.seconds() < 0.02  # the rounding this test is about
    alice.protocol._cancel_timers()  # the timer is run by hand below
    h.clock.advance(due - h.clock.seconds())
    assert h.clock.seconds() == due
    alice.protocol._check_idle()
    assert alice.take_one().startswith("PING ")


def test_ping_answered_just_in_time() -> None:
    h = idle_harness()
    alice = h.user("alice")
    h.clock.advance(120)
    token = alice.take_one().split(" ", 1)[1]
    h.clock.advance(59.9)
    alice.send(f"PONG {token}")
    h.clock.advance(0.1)
    assert not alice.transport.disconnecting
    assert alice.take() == []
    h.clock.advance(119.9)  # the next PING comes a full idle period after the answer
    assert alice.take_one().startswith("PING ")


def test_ping_answered_too_late() -> None:
    h = idle_harness()
    alice, bob = h.user("alice"), h.user("bob")
    h.clock.advance(120)
    alice.take()
    bob.take()
    h.clock.advance(60)
    assert alice.take() == ["BYE timeout no answer to PING within 60 seconds"]
    assert alice.transport.disconnecting
    assert [line for line in bob.take() if line.startswith("LEFT")] == [
        f"LEFT {ts(h)} alice timeout"]
    alice.send("PONG late")
    assert alice.take() == []


def test_idle_timeout_zero_never_pings() -> None:
    h = Harness(idle_timeout=0)
    alice = h.user("alice")
    h.clock.advance(10_000)
    assert alice.take() == []


# -- the NICK-state time limit -------------------------------------------------


def test_nick_timeout() -> None:
    h = Harness(nick_timeout=30)
    conn = h.connect()
    conn.take()
    conn.send("PING still choosing")  # activity does not extend the handshake limit
    conn.take()
    h.clock.advance(29.9)
    assert conn.take() == []
    h.clock.advance(0.1)
    assert conn.take() == ["BYE timeout no nickname after 30 seconds"]
    assert conn.transport.disconnecting


def test_nick_in_time_cancels_the_limit() -> None:
    h = Harness(nick_timeout=30)
    alice = h.user("alice")
    h.clock.advance(31)
    assert alice.take() == [] and not alice.transport.disconnecting


def test_nick_timeout_leaves_no_timer_behind() -> None:
    h = Harness(nick_timeout=30, idle_timeout=120)
    conn = h.connect()
    conn.drop()
    assert h.clock.getDelayedCalls() == []


# -- slow readers --------------------------------------------------------------


def test_slow_reader_cut_at_sendq() -> None:
    h = Harness(sendq=65536 + 1000)
    alice, bob = h.user("alice"), h.user("bob")
    bob.transport.producer.pauseProducing()  # the kernel stopped taking bob's data
    alice.send("MSG " + "x" * 400)  # ~440 bytes each
    alice.send("MSG " + "x" * 400)
    assert not bob.transport.disconnected
    alice.send("MSG " + "x" * 400)  # past 1000 bytes held
    assert bob.transport.disconnected
    assert bob.protocol.send_queue is None, "out of the drain watch and the direct pass"
    assert not alice.transport.disconnected
    held = len(bob.transport.value())
    alice.send("MSG more")  # nothing more is queued for bob
    assert len(bob.transport.value()) == held
    alice.take()
    bob.protocol.connectionLost(Failure(ConnectionAborted()))
    h.clock.advance(0)
    assert alice.take() == [f"LEFT {ts(h)} bob sendq"]


def test_resumed_reader_is_not_cut() -> None:
    h = Harness(sendq=65536 + 1000)
    alice, bob = h.user("alice"), h.user("bob")
    producer = bob.transport.producer
    for _ in range(10):
        producer.pauseProducing()
        alice.send("MSG " + "x" * 400)
        producer.resumeProducing()  # the kernel drained it
    assert not bob.transport.disconnected


def test_sendq_cut_does_not_disturb_the_fan_out_in_progress() -> None:
    """The dropped reader leaves on a later turn, after everyone got the batch."""
    h = Harness(sendq=65536 + 10)
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    bob.transport.producer.pauseProducing()
    alice.send("MSG " + "y" * 100)
    assert bob.transport.disconnected
    assert carol.take() == [f"MSG {ts(h)} alice * " + "y" * 100]


def test_a_peer_that_takes_nothing_for_sendq_timeout_is_dropped() -> None:
    """Below --sendq, but its output has not drained for --sendq-timeout."""
    h = Harness(sendq_timeout=8.0)
    alice, bob = h.user("alice"), h.user("bob")
    bob.transport.producer.pauseProducing()  # the kernel stopped taking bob's data
    alice.send("MSG hi")
    for _ in range(9):  # the watch looks every 2 s: it sees the stall at 2 s
        h.clock.advance(1.0)
    assert not bob.transport.disconnected
    h.clock.advance(1.0)  # 8 s after it was first seen
    assert bob.transport.disconnected
    assert not alice.transport.disconnected
    bob.protocol.connectionLost(Failure(ConnectionAborted()))
    h.clock.advance(0)
    assert alice.take()[-1] == f"LEFT {ts(h)} bob sendq"


def test_a_peer_that_drains_now_and_then_is_not_dropped() -> None:
    h = Harness(sendq_timeout=8.0)
    alice, bob = h.user("alice"), h.user("bob")
    producer = bob.transport.producer
    for _ in range(30):
        producer.pauseProducing()
        alice.send("MSG " + "x" * 400)
        h.clock.advance(1.0)
        producer.resumeProducing()  # the kernel took it, at last
        h.clock.advance(1.0)
    assert not bob.transport.disconnected
    alice.drop()
    bob.drop()
    assert h.clock.getDelayedCalls() == [], "the watch's timer ends with the last connection"


# -- connection limits ---------------------------------------------------------


def test_max_clients_refuses_with_error_and_bye_only() -> None:
    h = Harness(max_clients=2)
    first, _second = h.connect(), h.connect()
    third = h.connect()
    assert third.take() == ["ERROR server-full the server is full; try again later", "BYE full"]
    assert third.transport.disconnecting
    first.drop()
    fourth = h.connect()
    assert fourth.take()[0].startswith("HELLO ")


def test_connections_without_nick_count() -> None:
    h = Harness(max_clients=1)
    h.connect()  # never sends NICK
    assert h.connect().take()[0].startswith("ERROR server-full ")


def test_max_per_ip() -> None:
    h = Harness(max_per_ip=2)
    a1, _a2 = h.connect("10.0.0.1"), h.connect("10.0.0.1")
    refused = h.connect("10.0.0.1")
    assert refused.take() == ["ERROR server-full too many connections from 10.0.0.1", "BYE full"]
    assert h.connect("10.0.0.2").take()[0].startswith("HELLO ")
    a1.drop()
    assert h.connect("10.0.0.1").take()[0].startswith("HELLO ")


def test_a_refused_peer_that_never_closes_is_aborted_after_the_grace() -> None:
    """A TLS peer that never completes the handshake or the close would hold
    a refused socket for good: the refusal has the same deadline as any
    close the server starts."""
    h = Harness(max_clients=1, close_grace=3.0)
    h.connect()
    refused = h.connect()
    assert refused.transport.disconnecting
    h.clock.advance(2.9)
    assert not refused.transport.disconnected
    h.clock.advance(0.1)
    assert refused.transport.disconnected  # aborted
    refused.protocol.connectionLost(Failure(ConnectionAborted()))
    assert [c for c in h.clock.getDelayedCalls()] == []


def test_refusals_waiting_for_their_close_are_bounded() -> None:
    """Refused peers that never complete the close (TLS) each hold a socket
    for the grace, outside --max-clients: at most REFUSALS_CLOSING of them
    wait; the next refusal is aborted at once (rev-bounds F5)."""
    h = Harness(max_clients=1, close_grace=3.0)
    h.connect()
    waiting = [h.connect() for _ in range(REFUSALS_CLOSING)]
    assert all(c.transport.disconnecting and not c.transport.disconnected for c in waiting)
    over = h.connect()
    assert over.transport.disconnected, "aborted at once"
    over.protocol.connectionLost(Failure(ConnectionAborted()))
    assert h.factory.closing_refusals.count == REFUSALS_CLOSING
    waiting[0].drop()  # one completes its close: room for one more to wait
    again = h.connect()
    assert again.transport.disconnecting and not again.transport.disconnected
    assert h.connect().transport.disconnected
    h.clock.advance(3.0)
    for conn in [*waiting[1:], again]:
        assert conn.transport.disconnected  # the grace's abort
        conn.protocol.connectionLost(Failure(ConnectionAborted()))
    assert h.factory.closing_refusals.count == 0
    assert h.clock.getDelayedCalls() == []
    assert not h.connect().transport.disconnected, "waits its grace again"


def test_a_refused_peer_that_closes_leaves_no_timer() -> None:
    h = Harness(max_clients=1)
    h.connect()
    refused = h.connect()
    refused.drop()
    assert h.clock.getDelayedCalls() == []


def test_refused_connections_are_not_counted() -> None:
    h = Harness(max_clients=1)
    h.connect()
    for _ in range(5):
        h.connect()
    assert len(h.factory.connections) == 1


# -- shutdown ------------------------------------------------------------------


def test_shutdown_says_bye_to_everyone_without_left() -> None:
    h = Harness()
    alice, bob = h.user("alice"), h.user("bob")
    waiting = h.connect()
    waiting.take()
    alice.protocol.dataReceived(b"MSG last words\r\n")  # gathered, not yet written
    closed = h.factory.shutdown()
    assert alice.take() == [f"MSG {ts(h)} alice * last words",
                            "BYE shutdown the server is shutting down"]
    assert waiting.take() == ["BYE shutdown the server is shutting down"]
    for conn in (alice, bob, waiting):
        assert conn.transport.disconnecting
    assert not closed.called
    for conn in (alice, bob, waiting):
        conn.drop()
    assert bob.take() == [f"MSG {ts(h)} alice * last words",
                          "BYE shutdown the server is shutting down"]
    assert closed.called
    assert h.clock.getDelayedCalls() == []


def test_shutdown_aborts_peers_that_do_not_close() -> None:
    h = Harness(close_grace=3.0)
    alice = h.user("alice")
    closed = h.factory.shutdown()
    h.clock.advance(2.9)
    assert not alice.transport.disconnected
    h.clock.advance(0.1)
    assert alice.transport.disconnected
    alice.drop()
    assert closed.called


def test_shutdown_with_nobody() -> None:
    assert Harness().factory.shutdown().called


@pytest.mark.parametrize("option", ["flood_rate", "idle_timeout", "nick_timeout"])
def test_limits_leave_no_timers_after_disconnect(option: str) -> None:
    h = Harness(**{option: 5.0})
    alice = h.user("alice")
    alice.drop()
    assert h.clock.getDelayedCalls() == []


def test_server_side_close_unregisters_the_producer_and_has_a_deadline() -> None:
    """With a producer registered, Twisted's TLS transport never starts the
    close; and a peer that never completes it is aborted after the grace."""
    h = Harness(close_grace=3.0, nick_timeout=30)
    for trigger in ("BYE", "nick-timeout"):
        conn = h.connect()
        if trigger == "BYE":
            conn.send("BYE")
        else:
            h.clock.advance(30)
        assert conn.transport.disconnecting
        assert conn.transport.producer is None
        h.clock.advance(2.9)
        assert not conn.transport.disconnected
        h.clock.advance(0.1)
        assert conn.transport.disconnected  # aborted
        conn.drop()
    assert h.clock.getDelayedCalls() == []


def test_completed_close_leaves_no_abort_timer() -> None:
    h = Harness()
    alice = h.user("alice")
    alice.send("BYE")
    alice.drop()
    assert h.clock.getDelayedCalls() == []


def _recording(conn: object) -> list[bytes]:
    """The objects the connection's transport is handed, as well as written."""
    transport = conn.transport  # type: ignore[attr-defined]
    objects: list[bytes] = []
    write = transport.write

    def record(data: bytes) -> None:
        objects.append(data)
        write(data)

    transport.write = record
    return objects


def test_the_ready_and_unpaired_blocks_are_shared_parts_not_a_copy_each() -> None:
    """The history and the user list go out as the factory's own objects,
    so that many peers that do not read hold one copy of them between them
    (rev-bounds F3); the bytes are the same as one block's."""
    h = Harness(history=100)
    talker = h.user("talker")
    for i in range(5):
        talker.send(f"MSG line {i}")
    newcomers = []
    for nick in ("n1", "n2"):
        conn = h.connect()
        conn.take()  # the greeting
        objects = _recording(conn)
        conn.send(f"NICK {nick}")
        newcomers.append((conn, objects))
    (_, got1), (n2, got2) = newcomers
    assert got1[1] is got2[1] is h.factory.lines.history_block()
    assert n2.take() == (
        ["READY n2"] + [f"HISTORY {ts(h)} talker line {i}" for i in range(5)]
        + ["USER n1 lobby", "USER n2 lobby", "USER talker lobby", "USERS 3"])
    assert got2[2] is h.factory.lines.roster()

    alice, bob = h.user("alice"), h.user("bob")
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    talker.send("MSG while away")
    seen_a, seen_b = _recording(alice), _recording(bob)
    h.clear_all()
    alice.send("UNPAIR")
    assert seen_a[1] is seen_b[1], "the replay: one object for both sides"
    assert seen_a[2] is seen_b[2] is h.factory.lines.roster(), "the user list too"
    users = [f"USER {n} lobby" for n in ("alice", "bob", "n1", "n2", "talker")] + ["USERS 5"]
    assert alice.take() == ["UNPAIRED bob left", f"HISTORY {ts(h)} talker while away", *users]
    assert bob.take() == ["UNPAIRED alice left", f"HISTORY {ts(h)} talker while away", *users]


def test_output_held_for_all_connections_is_bounded() -> None:
    """--sendq-total: once a second, when the server holds more than it for
    all connections together, those holding the most are cut as sendq until
    the rest fit; each stays under its own --sendq (rev-bounds F3)."""
    paused = 65536  # what a paused test transport counts as held (Twisted's buffer size)
    h = Harness(sendq_total=3 * paused + 5000)
    a, b, c, talker = h.user("a"), h.user("b"), h.user("c"), h.user("talker")
    for conn in (a, b, c):
        conn.transport.producer.pauseProducing()  # none of them reads
    talker.send("DM b " + "x" * 2000, "DM b " + "x" * 2000)  # b: about 4,100 more
    h.clock.advance(1.0)
    assert not any(conn.transport.disconnected for conn in (a, b, c)), "within the budget"
    talker.send("DM b " + "x" * 2000)  # now over it
    h.clock.advance(1.0)
    assert b.transport.disconnected, "the biggest holder goes"
    assert not a.transport.disconnected and not c.transport.disconnected, "the rest fit"
    talker.take()
    b.protocol.connectionLost(Failure(ConnectionAborted()))
    h.clock.advance(0)
    assert talker.take() == [f"LEFT {ts(h)} b sendq"]
    for conn in (a, c, talker):
        conn.drop()
    assert h.clock.getDelayedCalls() == [], "no timer without connections"


def test_without_sendq_total_there_is_no_budget_timer() -> None:
    h = Harness(sendq_total=0)
    h.user("a")
    assert h.clock.getDelayedCalls() == []
