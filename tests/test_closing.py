"""
L{GoneTransport}: the stand-in transport of a connection whose peer went
while its lines waited behind a command ends the connection once, on the
next turn, however many times it is closed (rev15-mut F10: a BYE's close
then a shutdown's abort would have ended it twice, the connection counted
out twice).
"""

from __future__ import annotations

from twisted.internet.task import Clock

from twisted_chat.server.limits.closing import GoneTransport


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
