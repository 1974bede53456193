"""
One connection's send queue: how its bytes reach the transport, how many are
held for it, and the C{--sendq} rule (docs/fanout.md, "The send queue").

Twisted's C{transport.write} never sends at once: it buffers, has the reactor
watch the socket for writability and sends on the next iteration, two
C{epoll_ctl} calls and a dispatch per recipient per turn, the largest share
of what a delivered line costs.  On a plain TCP transport the queue sends
straight away when Twisted holds nothing for it (so order is kept), and hands
whatever the kernel did not take to C{transport.write}, which then works as
usual: its buffer, its producer pausing, its error handling.

That path reads three attributes of Twisted's C{FileDescriptor} that are not
public API (C{dataBuffer}, C{offset}, C{_tempDataLen}).  Where they are
missing, on any other transport (TLS, UNIX sockets, test transports), or when
the operator turns it off (C{--no-direct-send}), the queue uses plain
C{transport.write} and estimates what is held.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

Write = Callable[[bytes], None]

# The attributes of Twisted's TCP transport the direct path reads.
_PRIVATE = ("dataBuffer", "offset", "_tempDataLen", "socket")


def _plain_tcp(transport: Any) -> bool:
    return type(transport) is tcp.Server and all(hasattr(transport, n) for n in _PRIVATE)


def buffer_size(transport: Any) -> int:
    """
    How many bytes Twisted buffers for C{transport} before it pauses the
    producer: the transport's own C{bufferSize}, or for a wrapping transport
    (TLS) that of the transport under it, or Twisted's default.
    """
    for candidate in (transport, getattr(transport, "transport", None)):
        size = getattr(candidate, "bufferSize", None)
        if isinstance(size, int) and size > 0:
            return size
    return int(FileDescriptor.bufferSize)


def backlog_meter(transport: Any) -> Callable[[], int] | None:
    """
    A function telling how many bytes Twisted still holds for C{transport},
    or C{None} where that cannot be read (then the caller has to estimate).
    """
    if not _plain_tcp(transport):
        return None

    def queued() -> int:
        return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)

    return queued


def direct_sender(transport: Any) -> Write:
    """The fastest correct way to write to C{transport}."""
    if not _plain_tcp(transport):
        write: Write = transport.write
        return write
    send = transport.socket.send
    buffered_write: Write = transport.write

    def write_now(data: bytes) -> None:
        if (
            transport._tempDataLen
            or transport.offset != len(transport.dataBuffer)
            or not transport.connected
            or transport.disconnecting
        ):
            buffered_write(data)  # keep the order behind what is already queued
            return
        try:
            sent = send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let Twisted find the error on its own path and close as usual.
            buffered_write(data)
            return
        if sent < len(data):
            buffered_write(data[sent:])

    return write_now


@implementer(IPushProducer)
class SendQueue:
    """
    The bytes held for one connection, bounded by C{limit} (C{--sendq}).

    It is the transport's push producer: Twisted pauses it once the
    transport holds more than its buffer size (the kernel is not taking
    data), and resumes it once that drained.  While paused, every write
    checks the limit: where Twisted's buffer can be read, against what it
    really holds; elsewhere against its buffer size plus what was written
    since the pause.  L{write} returns C{False} for a write that would pass
    the limit (and does not write it): the caller cuts the connection.
    """

    __slots__ = ("_excess", "_held", "_limit", "_meter", "_send", "_transport")

    def __init__(self, transport: Any, limit: int, direct: bool = True) -> None:
        self._transport = transport
        self._limit = limit
        self._excess = max(limit - buffer_size(transport), 0)
        # Bytes written since the transport paused us; None while it is not.
        self._held: int | None = None
        if direct:
            self._send = direct_sender(transport)
            self._meter = backlog_meter(transport)
        else:
            self._send = transport.write
            self._meter = None

    @property
    def direct(self) -> bool:
        """Whether writes go straight to the socket when nothing is queued."""
        return self._meter is not None

    def start(self) -> None:
        self._transport.registerProducer(self, True)

    def stop(self) -> None:
        """Before a close: with a producer registered, a TLS transport never
        starts its close, and a TCP transport whose buffer was full resumes
        the producer instead of closing."""
        self._transport.unregisterProducer()

    def write(self, data: bytes) -> bool:
        held = self._held
        if held is None:
            self._send(data)
            return True
        meter = self._meter
        if meter is not None:
            # What Twisted really holds, so a peer that reads steadily but
            # fell behind in a burst is not cut early.
            over = meter() + len(data) > self._limit
        else:
            held += len(data)
            self._held = held
            over = held > self._excess
        if over:
            return False
        self._send(data)
        return True

    # -- IPushProducer ------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self._held is None:
            self._held = 0

    def resumeProducing(self) -> None:
        self._held = None

    def stopProducing(self) -> None:
        pass
