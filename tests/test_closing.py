"""
L{GoneTransport}: the stand-in transport of a connection whose peer went
while its lines waited behind a command ends the connection once, on the
next turn, however many times it is closed (rev15-mut F10: a BYE's close
then a shutdown's abort would have ended it twice, the connection counted
out twice).  L{Linger}: a close the server decides waits, reading paused,
until the peer has taken what is queued, and is aborted at the grace.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from twisted_chat.server.limits.closing import FIRST_LOOK, LOOK_EVERY, GoneTransport, Linger


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
