"""
L{GoneTransport}: the stand-in transport of a connection whose peer went
while its lines waited behind a command ends the connection once, on the
next turn, however many times it is closed (rev15-mut F10: a BYE's close
then a shutdown's abort would have ended it twice, the connection counted
out twice).  L{Linger}: a close the server decides waits, reading paused,
until the peer has taken what is queued, and is aborted at the grace;
all the closes under way on one clock look and abort on one timer (sweep_of).
"""

from __future__ import annotations

import gc
import socket
import weakref
from collections.abc import Callable, Sequence

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent

from twisted_chat.server.limits import closing
from twisted_chat.server.limits.closing import (
    FIRST_LOOK,
    LOOK_EVERY,
    LOOK_FAILED_EVERY,
    TOGETHER,
    GoneTransport,
    Linger,
    sweep_of,
    sweeps_by_clock,
)
from twisted_chat.server.logs import Throttle


def test_a_gone_transport_ends_once_on_the_next_turn() -> None:
    clock = Clock()
    ended: list[float] = []
    transport = GoneTransport(clock, lambda: ended.append(clock.seconds()))
    transport.loseConnection()
    transport.abortConnection()
    transport.loseConnection()
    assert ended == [], "not from within the caller's close"
    clock.advance(0)
    assert ended == [0.0]
    transport.abortConnection()
    clock.advance(1)
    assert ended == [0.0]
    assert clock.getDelayedCalls() == []


# -- Linger: a close waits for the peer to take what is queued -----------------


class Peer:
    """A transport whose peer has not taken C{held} bytes (Twisted's and
    the kernel's, as L{unsent} counts them)."""

    def __init__(self, held: int) -> None:
        self.held = held
        self.calls: list[str] = []

    def loseConnection(self) -> None:
        self.calls.append("close")

    def abortConnection(self) -> None:
        self.calls.append("abort")

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


def linger(peer: Peer, clock: Clock, grace: float = 3.0) -> Linger:
    return Linger(peer, clock, grace, peer.loseConnection, held=lambda t: peer.held)


class StateSocket(socket.socket):
    """A TCP socket whose C{TCP_INFO} says C{state} (C{tcpi_state}, its
    first byte): a fake of the kernel's answer."""

    def __init__(self, state: int) -> None:
        super().__init__(socket.AF_INET, socket.SOCK_STREAM)
        self.state = state

    def getsockopt(self, *args: int) -> bytes:  # type: ignore[override]
        assert args[:2] == (socket.IPPROTO_TCP, socket.TCP_INFO)
        return bytes((self.state,)) + bytes(args[2] - 1)


class SocketPeer(Peer):
    """A L{Peer} with a socket under it (L{socket_of} finds it)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(0)
        self.sock = sock

    def getHandle(self) -> socket.socket:
        return self.sock


@pytest.mark.parametrize(("state", "waits"), [
    (7, False),  # TCP_CLOSE: the peer reset the connection
    (8, True),   # TCP_CLOSE_WAIT: its FIN only; it may still read
    (1, True),   # TCP_ESTABLISHED
])
def test_a_close_whose_peer_reset_is_made_at_the_first_look(
        monkeypatch: pytest.MonkeyPatch, state: int, waits: bool) -> None:
    """Fix21poll: after a peer's reset the kernel's send queue (SIOCOUTQ)
    still counts what the peer never acknowledged, so the close looked
    every 100 ms until the grace (22 looks a leaver when 1,200 closed at
    once) and was then aborted.  Nothing can reach a peer that reset: the
    close is made at the first look that sees it."""
    monkeypatch.setattr(closing, "unsent_at", lambda transport, sock: 4_096)
    clock = Clock()
    with StateSocket(state) as sock:
        peer = SocketPeer(sock)
        call = Linger(peer, clock, 3.0, peer.loseConnection)
        if waits:
            assert peer.calls == ["pause"], "a peer that may still read is waited for"
            clock.advance(3.0)
            assert peer.calls == ["pause", "abort"]  # the grace bound stays
        else:
            assert peer.calls == ["close"], "no pause, no wait, no abort"
            clock.advance(3.0)
            assert peer.calls == ["close", "abort"]  # a close that never completes
        call.cancel()


class BufferedPeer:
    """A Twisted TCP transport's stand-in holding one byte in its buffer,
    over C{sock}; it counts how often its socket is asked for."""

    dataBuffer, offset, _tempDataLen = b"x", 0, 0

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lookups = 0

    def getHandle(self) -> socket.socket:
        self.lookups += 1
        return self.sock


def test_a_look_finds_the_socket_once() -> None:
    """A close's look (closing.owed, at every look of every lingering close)
    finds the socket under the transport once, for the bytes held and the
    peer's reset both: each lookup walks the transport's layers."""
    with StateSocket(7) as sock:  # TCP_CLOSE: the peer reset it
        peer = BufferedPeer(sock)
        assert closing.owed(peer) == 0
        assert peer.lookups == 1


def test_a_close_with_nothing_held_is_made_at_once() -> None:
    clock, peer = Clock(), Peer(0)
    call = linger(peer, clock)
    assert peer.calls == ["close"], "no pause, no wait"
    assert len(clock.getDelayedCalls()) == 1  # the abort, until the close completes
    call.cancel()
    assert clock.getDelayedCalls() == []


def test_a_close_waits_unread_until_the_peer_has_taken_everything() -> None:
    """Rev18-attack 1: Twisted closed the descriptor once its own buffer was
    empty, and the kernel kept the rest for minutes in an orphaned socket."""
    clock, peer = Clock(), Peer(50_000)
    call = linger(peer, clock)
    assert peer.calls == ["pause"]  # kept, its reading paused
    clock.advance(1.0)
    assert peer.calls == ["pause"]
    peer.held = 0
    clock.advance(LOOK_EVERY)
    assert peer.calls == ["pause", "resume", "close"]
    assert call.active(), "the abort waits for the close to complete"
    call.cancel()  # connectionLost
    assert clock.getDelayedCalls() == []


def test_reads_past_the_bound_while_a_close_waits_keep_reading_stopped() -> None:
    """Under TLS the records of a read still come after reading pauses: a
    peer that sent more than READS_AFTER_CLOSE of them behind its close is
    read no more once the close is made (its resume would have read on,
    every record, until the grace)."""
    clock, peer = Clock(), Peer(50_000)
    call = linger(peer, clock)
    for _ in range(closing.READS_AFTER_CLOSE + 1):
        call.read()
    peer.held = 0
    clock.advance(LOOK_EVERY)
    assert peer.calls[-1] == "close" and "resume" not in peer.calls
    call.cancel()


def test_a_close_the_peer_does_not_take_is_aborted_at_the_grace() -> None:
    clock, peer = Clock(), Peer(50_000)
    call = linger(peer, clock, grace=3.0)
    clock.advance(3.0 - FIRST_LOOK)
    assert peer.calls == ["pause"]
    clock.advance(FIRST_LOOK)
    assert peer.calls == ["pause", "abort"]  # a reset: the kernel frees what it held
    assert not call.active()
    assert clock.getDelayedCalls() == [], "no more looks once aborted"
    peer.held = 0
    clock.advance(1.0)
    assert peer.calls == ["pause", "abort"]


def test_a_waiting_close_looks_soon_then_every_tenth_of_a_second() -> None:
    clock, peer = Clock(), Peer(1)
    looks: list[float] = []

    def held(transport: object) -> int:
        looks.append(clock.seconds())
        return peer.held

    Linger(peer, clock, 3.0, peer.loseConnection, held=held)
    clock.pump([0.01] * 400)
    assert looks[:3] == pytest.approx([0.0, FIRST_LOOK, 3 * FIRST_LOOK])
    assert len(looks) < 3.0 / LOOK_EVERY + 8, "cheap: about ten a second at most"
    assert looks[-1] < 3.0


def test_a_lost_connection_stops_the_looks_and_the_close() -> None:
    clock, peer = Clock(), Peer(50_000)
    call = linger(peer, clock)
    clock.advance(0.5)
    call.cancel()
    peer.held = 0
    clock.advance(5.0)
    assert peer.calls == ["pause"]
    assert clock.getDelayedCalls() == []


def test_made_closes_at_once_a_close_whose_peer_has_taken_everything() -> None:
    """For a port that counts its connections: one whose close waits only
    for the next look gives its place now (Linger.made)."""
    clock, peer = Clock(), Peer(50_000)
    call = linger(peer, clock)
    assert not call.made()
    peer.held = 0
    assert call.made()
    assert peer.calls == ["pause", "resume", "close"]
    clock.advance(LOOK_EVERY)
    assert peer.calls == ["pause", "resume", "close"], "closed once"
    clock.advance(3.0)
    assert not call.made(), "aborted: not a close"


@pytest.fixture
def failed_looks(monkeypatch: pytest.MonkeyPatch) -> Throttle:
    """Linger's throttle of failed looks, fresh for the test (it is the
    class's, for every close)."""
    throttle = Throttle(LOOK_FAILED_EVERY)
    monkeypatch.setattr(Linger, "failed_looks", throttle)
    return throttle


def broken_after(clock: Clock, peer: Peer, looks: int) -> Callable[[object], int]:
    """A look at what C{peer} holds that raises after C{looks} looks."""
    seen: list[float] = []

    def held(transport: object) -> int:
        seen.append(clock.seconds())
        if len(seen) > looks:
            raise OSError(9, "Bad file descriptor")
        return peer.held

    return held


def told(events: Sequence[LogEvent]) -> list[LogEvent]:
    return [event for event in events if "could not tell" in formatEvent(event)]


def test_a_look_that_raises_closes_now_and_the_abort_still_comes(
        failed_looks: Throttle) -> None:
    """rr19-core (left): a look that raised in the sweep left the entry
    the sweep had taken as the close's own: active() stayed True, and the
    close was never looked at, made, nor aborted again.  Now what the peer
    holds is taken as told (0): the close is made as Twisted makes it,
    its abort still at the grace, and the error logged once."""
    clock, peer = Clock(), Peer(50_000)
    call = Linger(peer, clock, 3.0, peer.loseConnection, held=broken_after(clock, peer, 1))
    with capturedLogs() as events:
        clock.advance(FIRST_LOOK)
    assert peer.calls == ["pause", "resume", "close"]
    assert call.active(), "the abort waits for the close to complete"
    assert call.made()
    clock.advance(3.0 - FIRST_LOOK)
    assert peer.calls == ["pause", "resume", "close", "abort"]
    assert not call.active()
    assert clock.getDelayedCalls() == []
    [event] = told(events)
    assert formatEvent(event) == (
        "a close could not tell what its peer has not taken yet: closed now, "
        "aborted at the grace if that close does not complete")
    assert event["log_failure"].getErrorMessage() == "[Errno 9] Bad file descriptor"


def test_failed_looks_are_logged_once_an_hour(failed_looks: Throttle) -> None:
    """A broken look fails every close's (a mass close: 10,000 tracebacks):
    one line an hour, saying how many were left out."""
    clock = Clock()
    with capturedLogs() as events:
        for _ in range(3):
            peer = Peer(50_000)
            Linger(peer, clock, 3.0, peer.loseConnection, held=broken_after(clock, peer, 0))
            assert peer.calls == ["close"]
        assert len(told(events)) == 1
        clock.advance(LOOK_FAILED_EVERY)
        peer = Peer(50_000)
        Linger(peer, clock, 3.0, peer.loseConnection, held=broken_after(clock, peer, 0))
    assert len(told(events)) == 2
    assert formatEvent(told(events)[1]).endswith(" (2 more since the last one)")


# -- the sweep: every close under way on one timer -----------------------------


def test_a_thousand_lingering_closes_share_one_timer() -> None:
    """A mass close (a shutdown, a --sendq-total cut) of stalled peers: each
    close had a timer for its looks and one for its abort, about 330,000
    timer calls on the reactor in the grace for 10,000 peers."""
    clock = Clock()
    peers = [Peer(50_000) for _ in range(1000)]
    calls = [linger(peer, clock) for peer in peers]
    assert len(clock.getDelayedCalls()) == 1
    for peer in peers[::2]:
        peer.held = 0  # these close at the next look, and wait for the abort
    clock.advance(FIRST_LOOK)
    assert [p.calls for p in peers[:2]] == [["pause", "resume", "close"], ["pause"]]
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(3.0 - FIRST_LOOK)
    assert all(p.calls[-1] == "abort" for p in peers)
    assert not any(call.active() for call in calls)
    assert clock.getDelayedCalls() == []


def test_staggered_closes_each_close_and_abort_at_their_own_time() -> None:
    """Closes begun 7 ms apart on one sweep: each closes soon after its peer
    has taken everything, and is aborted at its grace (up to TOGETHER early,
    with other closes' looks), never later."""
    clock = Clock()
    peers: list[Peer] = []
    begun: list[float] = []
    for _ in range(40):
        peers.append(Peer(50_000))
        begun.append(clock.seconds())
        linger(peers[-1], clock, grace=3.0)
        clock.advance(0.007)
    drained: dict[int, float] = {}
    closed: dict[int, float] = {}
    aborted: dict[int, float] = {}
    while clock.getDelayedCalls():
        clock.advance(0.001)
        now = clock.seconds()
        for i, peer in enumerate(peers):
            if peer.calls[-1] == "close":
                closed.setdefault(i, now)
            if peer.calls[-1] == "abort":
                aborted.setdefault(i, now)
            if i % 2 == 0 and i not in drained and now >= begun[i] + 0.05 * (i % 7 + 1):
                peer.held, drained[i] = 0, now
    assert sorted(closed) == sorted(drained) == list(range(0, 40, 2))
    assert sorted(aborted) == list(range(40))
    for i in closed:
        assert 0 < closed[i] - drained[i] <= LOOK_EVERY + 0.0011
    for i in aborted:
        assert begun[i] + 3.0 - TOGETHER - 1e-9 <= aborted[i] <= begun[i] + 3.0 + 0.0011


def test_closes_begun_apart_are_looked_at_together() -> None:
    """Closes begun 1 ms apart each look about as often as alone, but the
    sweep takes one turn per TOGETHER seconds at most, not one per look."""
    clock = Clock()
    looks: list[float] = []

    def held(transport: object) -> int:
        looks.append(clock.seconds())
        return 1

    for _ in range(100):
        peer = Peer(1)
        Linger(peer, clock, 3.0, peer.loseConnection, held=held)
        clock.advance(0.001)
    clock.pump([0.001] * 3000)
    per_close = len(looks) / 100
    assert 3.0 / LOOK_EVERY <= per_close < 3.0 / LOOK_EVERY + 8
    turns = len(set(looks)) - 100  # past each one's first look, at its start
    assert turns <= 3.1 / TOGETHER + 1


def test_the_sweep_stops_when_no_close_remains() -> None:
    clock = Clock()
    peers = [Peer(50_000) for _ in range(10)]
    calls = [linger(peer, clock) for peer in peers]
    clock.advance(0.5)
    for call in calls[:-1]:
        call.cancel()  # their connections lost
    assert len(clock.getDelayedCalls()) == 1
    peers[-1].held = 0
    clock.advance(LOOK_EVERY)
    assert peers[-1].calls[-1] == "close"
    assert len(clock.getDelayedCalls()) == 1, "its abort, until the connection is lost"
    calls[-1].cancel()
    assert clock.getDelayedCalls() == []
    linger(Peer(1), clock).cancel()  # a later close on the same clock
    assert clock.getDelayedCalls() == []


def test_the_sweeps_keep_no_clock_alive() -> None:
    """A test's clock, dropped with closes still lingering on it, goes."""
    clock = Clock()
    calls = [linger(Peer(50_000), clock) for _ in range(3)]
    assert sweeps_by_clock[id(clock)] is sweep_of(clock)
    gone = weakref.ref(clock)
    del clock, calls
    gc.collect()
    assert gone() is None
