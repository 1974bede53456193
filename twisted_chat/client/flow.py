"""
Back-pressure: the client stops reading what it cannot pass on.

Twisted's consumers (a socket's or stdout's write buffer) call
C{pauseProducing} on the producer registered with them when their buffer is
over its bound (64 KiB), and C{resumeProducing} once it has drained.  A
L{Valve} lets several such consumers hold one producer: it stays paused while
any of them is full.  The client uses one for the server's connection: it
stops reading the socket while stdout cannot take more (a pager, a stalled
terminal, C{| sleep}) and while the socket cannot take more of what the client
writes (a server that sends PINGs and never reads the PONGs).  The server's
own send queue then bounds what waits for the client.  Once the client has
said goodbye, stdout no longer holds the socket (L{Valve.ignore}): the server
closes right after its answer, which must be read.  L{buffered} says how much
such a buffer still holds, and L{taken} how much of what the client sent the
server has taken: to tell a consumer that takes some, however slowly, from
one that takes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from twisted_chat.tcpinfo import buffered, peer_acked


class Valve:
    """
    Pauses a producer while any consumer holding it is full.

    @ivar producer: what is paused (set later, once it exists, with
        L{attach}); C{None} until then.
    """

    def __init__(self) -> None:
        self.producer: IPushProducer | None = None
        self._held: set[str] = set()
        self._ignored: set[str] = set()  # full or not, they hold nothing
        self._paused = False

    def attach(self, producer: IPushProducer) -> None:
        """Start pausing C{producer}: at once if a consumer is full already."""
        self.producer = producer
        self._paused = False
        self._update()

    def hand(self, name: str, on_resume: Callable[[], object] | None = None) -> IPushProducer:
        """
        The producer to register with one consumer, named C{name}; C{on_resume}
        is called when that consumer has room again.
        """
        return _Hand(self, name, on_resume)

    def held(self, name: str) -> bool:
        """Whether consumer C{name} is full."""
        return name in self._held

    def hold(self, name: str) -> None:
        self._held.add(name)
        self._update()

    def release(self, name: str) -> None:
        self._held.discard(name)
        self._update()

    def ignore(self, name: str) -> None:
        """Consumer C{name} no longer holds the producer, even when full."""
        self._ignored.add(name)
        self._update()

    def heed(self, name: str) -> None:
        """Consumer C{name} holds the producer again while it is full."""
        self._ignored.discard(name)
        self._update()

    def _update(self) -> None:
        paused = bool(self._held - self._ignored)
        if self.producer is None or paused == self._paused:
            return
        self._paused = paused
        if paused:
            self.producer.pauseProducing()
        else:
            self.producer.resumeProducing()


@implementer(IPushProducer)
class _Hand:
    """What one consumer sees of a L{Valve}."""

    def __init__(self, valve: Valve, name: str, on_resume: Callable[[], object] | None) -> None:
        self._valve = valve
        self._name = name
        self._on_resume = on_resume

    def pauseProducing(self) -> None:
        self._valve.hold(self._name)

    def resumeProducing(self) -> None:
        self._valve.release(self._name)
        if self._on_resume is not None:
            self._on_resume()

    def stopProducing(self) -> None:
        # The consumer went away (stdout closed, the socket lost): it holds
        # nothing any more; ending the session is the client's business.
        self._valve.release(self._name)


def taken(transport: object) -> int | None:
    """
    A count that grows each time the peer takes some of what was written to
    C{transport}, or C{None} when that cannot be seen.  Where the kernel says
    (Linux, TCP, below TLS too): the bytes the peer acknowledged, which what
    the client writes meanwhile does not change.  Elsewhere: the bytes Twisted
    still holds (L{buffered}), counted down; a weaker sign, as the kernel's
    own buffer sits below Twisted's (Linux takes more from Twisted only once
    the peer has read a good part of it) and as what the client writes
    meanwhile adds to it.
    """
    acked = peer_acked(transport)
    if acked is not None:
        return acked
    held = buffered(transport)
    return None if held is None else -held
