"""
The lobby fan-out's pacing (ChatFactory.flush): when lines come fast they
wait a little and go out together; what each connection receives, and in
what order, does not change (except where a reader cut at --sendq is seen
to leave, the last test).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionAborted
from twisted.python.failure import Failure

from tests.harness import Conn, Harness
from twisted_chat.server.fanout import MAX_FANOUT_WAIT, READERS_WAIT_MAX_LINES, READERS_WAIT_SHARE
from twisted_chat.wire import format_ts

WINDOW = 0.002


def paced() -> Harness:
    return Harness(fanout_delay=WINDOW)


def quiet(h: Harness) -> None:
    """Let the arrivals' lines go out, then leave the lobby quiet a while."""
    h.clock.advance(WINDOW)
    h.clock.advance(1)
    h.clear_all()


def count_writes(conn: Conn, on_write: Callable[[], None] | None = None) -> list[bytes]:
    """Record each write the protocol makes to C{conn}'s transport."""
    writes: list[bytes] = []
    queue = conn.protocol._queue
    send = queue._send

    def recording(data: bytes) -> None:
        writes.append(data)
        if on_write is not None:
            on_write()
        send(data)

    queue._send = recording
    return writes


def two_waiting(h: Harness, nicks: tuple[str, ...]) -> list[Conn]:
    """Users C{nicks}; the first says "one" (out at once) and "two" soon after,
    which is still waiting when this returns, with all output taken."""
    conns = [h.user(nick) for nick in nicks]
    quiet(h)
    conns[0].send("MSG one")
    h.clock.advance(0.0005)
    h.clear_all()
    conns[0].send("MSG two")
    assert all(conn.take() == [] for conn in conns)
    return conns


def msg(h: Harness, nick: str, text: str, at: float | None = None) -> str:
    return f"MSG {format_ts(h.clock.seconds() if at is None else at)} {nick} * {text}"


def test_a_line_in_a_quiet_lobby_goes_out_in_its_own_turn() -> None:
    h = paced()
    alice, bob = h.user("alice"), h.user("bob")
    quiet(h)
    alice.send("MSG hi")  # the harness ends the turn; the clock does not move
    assert bob.take() == [msg(h, "alice", "hi")]
    assert alice.take() == [msg(h, "alice", "hi")]


def test_lines_soon_after_a_fanout_wait_and_go_out_in_one_write() -> None:
    h = paced()
    alice, bob = h.user("alice"), h.user("bob")
    quiet(h)
    writes = count_writes(bob)
    alice.send("MSG one")
    assert bob.take() == [msg(h, "alice", "one")]
    h.clock.advance(0.0005)
    alice.send("MSG two")
    second = h.clock.seconds()
    h.clock.advance(0.001)
    alice.send("MSG three")
    assert bob.take() == [], "within the window after the last fan-out: wait"
    h.clock.advance(WINDOW - 0.0015 - 1e-6)
    assert bob.take() == []
    h.clock.advance(2e-6)
    # Each line keeps the time the server handled it.
    assert bob.take() == [msg(h, "alice", "two", second), msg(h, "alice", "three", second + 0.001)]
    assert len(writes) == 2, "one write for the first line, one for the two that waited"


def test_when_lines_pour_in_the_fanout_gets_at_most_a_fifth_of_the_time() -> None:
    h = paced()
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    quiet(h)
    slow = 0.01  # delivering "two" to bob "takes" 10 ms, five times the window
    writes = count_writes(bob, on_write=lambda: h.clock.advance(slow) if len(writes) == 2 else None)
    alice.send("MSG one")  # out at once
    h.clock.advance(0.0005)
    alice.send("MSG two")  # waits for the window: lines are pouring in
    h.clock.advance(WINDOW)
    ended = h.clock.seconds()
    assert carol.take()[-1] == msg(h, "alice", "two", ended - slow - WINDOW)
    alice.send("MSG three")
    h.clock.advance(4 * slow - 1e-4)
    assert carol.take() == [], "the fan-out took 10 ms: 40 ms of quiet, not the 2 ms window"
    h.clock.advance(2e-4)
    assert carol.take() == [msg(h, "alice", "three", ended)]


def test_a_line_now_and_then_waits_only_as_long_as_its_fanout_took() -> None:
    h = paced()
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    quiet(h)
    slow = 0.01  # delivering "one" to bob "takes" 10 ms: a big lobby
    writes = count_writes(bob, on_write=lambda: h.clock.advance(slow) if len(writes) == 1 else None)
    alice.send("MSG one")  # nothing waited: the lobby was quiet
    ended = h.clock.seconds()
    assert carol.take() == [msg(h, "alice", "one", ended - slow)]
    alice.send("MSG two")
    h.clock.advance(slow - 1e-4)
    assert carol.take() == [], "longer than the window: the measured fan-out counts"
    h.clock.advance(2e-4)
    assert carol.take() == [msg(h, "alice", "two", ended)], "but not four times it"


def test_a_slow_fanout_or_a_clock_jump_holds_the_lobby_for_at_most_the_cap() -> None:
    h = paced()
    alice, bob = h.user("alice"), h.user("bob")
    quiet(h)
    writes = count_writes(bob, on_write=lambda: h.clock.advance(3600) if len(writes) == 1 else None)
    alice.send("MSG one")  # the clock jumps an hour while it is delivered
    bob.take()
    alice.send("MSG two")
    h.clock.advance(MAX_FANOUT_WAIT)
    assert [line.split()[-1] for line in bob.take()] == ["two"]


def test_a_clock_set_back_does_not_hold_the_lobby() -> None:
    h = paced()
    alice, bob = h.user("alice"), h.user("bob")
    quiet(h)
    alice.send("MSG one")
    bob.take()
    h.clock.rightNow -= 3600  # the system clock is set back an hour
    alice.send("MSG two")
    h.clock.advance(MAX_FANOUT_WAIT)
    assert [line.split()[-1] for line in bob.take()] == ["two"]


def test_a_direct_line_never_overtakes_a_waiting_lobby_line() -> None:
    h = paced()
    alice, bob, carol = two_waiting(h, ("alice", "bob", "carol"))
    bob.send("DM carol psst")  # must reach carol after "two"
    now = format_ts(h.clock.seconds())
    assert carol.take() == [msg(h, "alice", "two"), f"MSG {now} bob carol psst"]
    alice.send("PING x")  # and alice's PONG comes after her own copy of "two"
    assert alice.take() == [msg(h, "alice", "two"), "PONG x"]


def test_a_newcomer_during_the_wait_gets_the_waiting_line_as_history_only() -> None:
    h = paced()
    alice, bob = two_waiting(h, ("alice", "bob"))
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
    assert bob.take() == [msg(h, "alice", "two", joined_at),
                          f"JOINED {format_ts(joined_at)} carol",
                          msg(h, "alice", "three", joined_at)]


def test_someone_leaving_during_the_wait_comes_after_the_waiting_lines() -> None:
    h = paced()
    _, bob, carol = two_waiting(h, ("alice", "bob", "carol"))
    carol.drop()
    now = format_ts(h.clock.seconds())
    assert bob.take() == [msg(h, "alice", "two"), f"LEFT {now} carol disconnected"]


def test_shutdown_delivers_the_waiting_lines_before_bye() -> None:
    h = paced()
    _, bob = two_waiting(h, ("alice", "bob"))
    h.factory.shutdown()
    assert bob.take() == [msg(h, "alice", "two"), "BYE shutdown the server is shutting down"]


def test_zero_delay_writes_each_turns_lines_at_once() -> None:
    h = Harness(fanout_delay=0.0)
    alice, bob = h.user("alice"), h.user("bob")
    writes = count_writes(bob)
    alice.send("MSG one")
    alice.send("MSG two")  # same clock time, next turn
    assert len(writes) == 2
    assert bob.take() == [msg(h, "alice", "one"), msg(h, "alice", "two")]


def test_a_peer_that_half_closes_still_gets_the_waiting_lines() -> None:
    """C{printf 'NICK bot\nMSG done\n' | nc -N host port} must see its own copy."""
    h = paced()
    alice, bob = two_waiting(h, ("alice", "bob"))
    alice.protocol.readConnectionLost()  # alice's last byte came; she still reads
    assert alice.take() == [msg(h, "alice", "two")]
    assert alice.transport.disconnecting
    now = format_ts(h.clock.seconds())
    assert bob.take() == [msg(h, "alice", "two"), f"LEFT {now} alice disconnected"]
    h.clock.advance(WINDOW)
    assert alice.take() == [] and bob.take() == []


def test_half_close_in_a_quiet_lobby_is_a_disconnect() -> None:
    h = Harness()
    alice, bob = h.user("alice"), h.user("bob")
    alice.protocol.readConnectionLost()
    assert alice.transport.disconnecting
    assert bob.take() == [f"LEFT {format_ts(h.clock.seconds())} alice disconnected"]
    alice.drop()  # the transport then reports the close: nothing more happens
    assert bob.take() == []
    assert "alice" not in h.hub.online


# -- a sender that keeps the lobby busy is read once per fan-out --------------


def test_a_line_now_and_then_leaves_its_sender_alone() -> None:
    h = paced()
    alice, bob = h.user("alice"), h.user("bob")
    quiet(h)
    alice.arrive("MSG hi")  # into a quiet lobby: out at once
    assert bob.take() == [msg(h, "alice", "hi")]
    assert alice.reading


def test_a_sender_whose_line_waits_is_not_read_until_the_gap_ends() -> None:
    h = paced()
    alice, bob = two_waiting(h, ("alice", "bob"))
    assert not alice.reading, "its next lines could not go out before the gap ends"
    assert bob.reading
    h.clock.advance(WINDOW)
    assert bob.take() == [msg(h, "alice", "two", h.clock.seconds() - WINDOW)]
    assert alice.reading, "it sent nothing meanwhile: it is read as any other"


def test_what_a_waiting_sender_sent_meanwhile_rides_with_the_fanout() -> None:
    h = paced()
    alice, bob, carol = two_waiting(h, ("alice", "bob", "carol"))
    sent_two = h.clock.seconds()
    writes = count_writes(bob)
    reads = alice.transport.reads
    h.clock.advance(0.0005)
    alice.arrive("MSG three", "DM carol psst")
    assert carol.take() == [], "not read yet: its lines wait in the kernel"
    assert [e.text for e in h.factory.history.recent()][-1] == "two"
    h.clock.advance(WINDOW - 0.0005)
    gap_end = h.clock.seconds()
    # Read when the gap ends, so handled then, and out with the waiting line.
    assert bob.take() == [msg(h, "alice", "two", sent_two), msg(h, "alice", "three", gap_end)]
    assert len(writes) == 1, "one fan-out for both"
    assert carol.take() == [
        msg(h, "alice", "two", sent_two),
        msg(h, "alice", "three", gap_end),
        f"MSG {format_ts(gap_end)} alice carol psst",
    ]
    assert alice.transport.reads - reads == 1, "what came meanwhile, read at once"


def test_a_sender_that_keeps_the_lobby_busy_is_read_once_per_fanout() -> None:
    h = paced()
    alice, bob = two_waiting(h, ("alice", "bob"))
    writes = count_writes(bob)
    reads = alice.transport.reads
    for i in range(40):  # 20 ms of a line every half millisecond: ten windows
        h.clock.advance(0.0005)
        alice.arrive(f"MSG {i}")
    h.clock.advance(WINDOW)
    assert 9 <= len(writes) <= 11, "a write per window"
    assert alice.transport.reads - reads == len(writes), "read once per fan-out, not per line"
    texts = [line.split(" ", 4)[-1] for line in bob.take()]
    assert texts == ["two", *map(str, range(40))], "every line, in order"
    h.clock.advance(WINDOW)
    assert alice.reading and bob.take() == []


def test_a_fanout_forced_early_for_order_still_reads_the_waiting_sender_later() -> None:
    h = paced()
    alice, bob, carol = two_waiting(h, ("alice", "bob", "carol"))
    carol.send("DM bob hi")  # bob must see "two" first: it goes out now
    assert bob.take()[0] == msg(h, "alice", "two")
    assert not alice.reading, "still within the gap"
    alice.arrive("MSG three")
    h.clock.advance(WINDOW)
    assert bob.take() == [msg(h, "alice", "three")], "read when the gap ended"
    h.clock.advance(WINDOW)
    assert alice.reading


def check_left_unread(h: Harness, alice: Conn, reader: Conn, left_unread: bool) -> None:
    """After a fan-out: alice sends two lines; is she left unread after the
    first, so that the second is read (and handled) only when the gap ends?"""
    reader.take()
    alice.arrive("MSG three")  # waits for the next fan-out
    assert alice.reading is not left_unread
    arrived = h.clock.seconds()
    alice.arrive("MSG four")
    h.clock.advance(MAX_FANOUT_WAIT)
    handled = h.factory.history.recent()[-1].ts
    assert [line.split(" ", 4)[-1] for line in reader.take()] == ["three", "four"]
    assert (handled > arrived) is left_unread, "read when the gap ended, or as it came"


@pytest.mark.parametrize(("lines", "left_unread"), [(READERS_WAIT_MAX_LINES, True),
                                                   (READERS_WAIT_MAX_LINES + 1, False)])
def test_after_a_fanout_of_many_lines_senders_are_read_as_lines_come(
    lines: int, left_unread: bool
) -> None:
    """Reading put off to the gap's end would delay the next fan-out by
    about as much as handling the lines it finds takes."""
    h = paced()
    alice, bob, carol = two_waiting(h, ("alice", "bob", "carol"))
    carol.send(*[f"MSG {i}" for i in range(lines - 1)])  # with "two": `lines` wait
    h.clock.advance(WINDOW)
    assert len(bob.take()) == lines
    check_left_unread(h, alice, bob, left_unread)


@pytest.mark.parametrize(("took", "left_unread"), [(WINDOW * READERS_WAIT_SHARE * 0.9, True),
                                                  (WINDOW * READERS_WAIT_SHARE * 2, False)])
def test_after_a_slow_fanout_senders_are_read_as_lines_come(
    took: float, left_unread: bool
) -> None:
    """A big lobby: by the next fan-out, a sender has seldom sent a second line."""
    h = paced()
    alice, bob, carol = two_waiting(h, ("alice", "bob", "carol"))
    writes = count_writes(bob, on_write=lambda: h.clock.advance(took) if len(writes) == 1 else None)
    h.clock.advance(WINDOW)  # "two" goes out, and that takes `took`
    assert [line.split(" ", 4)[-1] for line in carol.take()] == ["two"]
    check_left_unread(h, alice, carol, left_unread)


def test_a_busy_sender_that_closes_is_read_again_at_once() -> None:
    """A TLS close completes only once the peer's answer is read."""
    h = paced()
    alice, _bob = two_waiting(h, ("alice", "bob"))
    assert not alice.reading
    alice.send("BYE")  # read anyway (send() ignores the pause): the server closes
    assert alice.transport.disconnecting
    assert alice.reading


def test_early_fanouts_do_not_keep_a_waiting_sender_unread() -> None:
    """Each fan-out made early (for order, or a change of who is online)
    moves the gap; the sender is still read within MAX_FANOUT_WAIT."""
    h = paced()
    alice, _bob = two_waiting(h, ("alice", "bob"))
    left_unread_at = h.clock.seconds()
    alice.arrive("PING still-there")
    answered_at = None
    for i in range(100):  # someone comes and goes every millisecond
        h.clock.advance(0.001)
        churn = h.connect()
        churn.send(f"NICK n{i}")
        churn.drop()
        if answered_at is None and "PONG still-there" in alice.take():
            answered_at = h.clock.seconds()
    assert answered_at is not None
    assert answered_at - left_unread_at <= MAX_FANOUT_WAIT + 0.001


def test_a_clock_set_back_does_not_keep_a_sender_unread() -> None:
    h = paced()
    alice, bob, carol = two_waiting(h, ("alice", "bob", "carol"))
    alice.arrive("MSG three")
    h.clock.advance(WINDOW)  # out with "two"; alice is left unread again
    assert not alice.reading
    h.clock.rightNow -= 3600  # the system clock is set back an hour
    alice.arrive("PING x")
    bob.send("PAIR carol")
    carol.send("ACCEPT bob")  # a change of who is where: an early flush
    h.clock.advance(MAX_FANOUT_WAIT)
    assert alice.reading and alice.take()[-1] == "PONG x"


def test_a_paired_sender_is_never_left_unread() -> None:
    """Its MSG goes to its partner at once: there is no fan-out to wait for."""
    h = paced()
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    quiet(h)
    carol.send("MSG one")
    h.clock.advance(0.0005)
    carol.send("MSG two")  # lobby lines are waiting
    alice.send("MSG hi bob")
    assert not carol.reading and alice.reading


def test_shutdown_leaves_no_gap_timer_behind() -> None:
    """Those left unread are read again as they close, and the last lobby
    member's leaving ends the gap's timer with a fan-out of nothing."""
    h = paced()
    two_waiting(h, ("alice", "bob"))
    closed = h.factory.shutdown()
    for conn in h.conns:
        conn.drop()
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
    ),
    max_size=60,
)

# Limits small enough for a script to reach: a burst of MSG lines is cut by
# flood control (and enough of them disconnect), a silent connection is
# PINGed and then closed, an invitation expires between two steps.
LIMITS = dict(flood_rate=200.0, flood_burst=4, idle_timeout=0.02, ping_timeout=0.01,
              invite_timeout=0.004)


def run(script: list[tuple[float, int, str, int]], delay: float,
        limits: dict[str, float] | None = None) -> list[tuple[bytes, bool]]:
    h = Harness(fanout_delay=delay, **(limits or {}))
    conns: list[Conn | None] = [None] * len(NICKS)
    for wait, who, action, whom in script:
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
    assert all(c.reading for c in h.conns if not c.closed), "a connection was left unread"
    return [(c.transport.value(), c.closed) for c in h.conns]


def same_output(script: list[tuple[float, int, str, int]],
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
    script: list[tuple[float, int, str, int]],
) -> None:
    same_output(script)


@property_test
def test_with_the_limits_on_too_pacing_changes_only_when_lines_go_out(
    script: list[tuple[float, int, str, int]],
) -> None:
    """Flood control, idle PINGs and timeouts, and invitation expiry decide
    at handling time and write directly, so the pacing must not change what
    they send, or where it falls among the lobby lines."""
    same_output(script, LIMITS)


def test_a_reader_cut_at_sendq_is_cut_at_the_batch_that_crosses_it() -> None:
    """The one place the pacing changes an order others see (docs/protocol.md,
    "Timing and order"): the cut, and so its LEFT, comes with the batch."""
    h = Harness(fanout_delay=WINDOW, sendq=65536 + 1000)
    alice, bob, carol = h.user("alice"), h.user("bob"), h.user("carol")
    quiet(h)
    bob.transport.producer.pauseProducing()  # the kernel stopped taking bob's data
    alice.send("MSG " + "x" * 400)  # into a quiet lobby: out at once
    for text in ("y" * 400, "z" * 400):
        h.clock.advance(0.0005)
        alice.send("MSG " + text)  # these wait, and would take bob past --sendq
    h.clock.advance(0.0005)
    carol.send("MSG hi")  # handled after the line that crossed the limit
    assert not bob.transport.disconnected  # nothing written to bob yet
    h.clock.advance(WINDOW)
    assert bob.transport.disconnected  # cut by the batch of all three
    bob.protocol.connectionLost(Failure(ConnectionAborted()))
    h.clock.advance(0)
    left = f"LEFT {format_ts(h.clock.seconds())} bob sendq"
    seen = [line.split(" ")[2] if line.startswith("MSG") else line for line in carol.take()]
    assert seen == ["alice", "alice", "alice", "carol", left]
