"""
One connection's send queue: how its bytes reach the transport, how many are
held for it wherever they sit (Twisted's buffer and the kernel's), and the
rules that bound them: C{--sendq}, C{--sndbuf} and C{--sendq-timeout}.  The
design is in docs/fanout.md, "The send queue".

On a plain TCP transport the queue sends straight away when Twisted holds
nothing for it (order is kept), and hands what the kernel did not take to
C{transport.write}, which then works as usual.  That path reads attributes of
Twisted's C{FileDescriptor} that are not public API (C{dataBuffer},
C{offset}, C{_tempDataLen}: L{twisted_buffered}); where they are missing, on
other transports (TLS, test transports), or with C{--no-direct-send}, the
queue writes with C{transport.write} and estimates Twisted's share from its
pausing.  The fan-out sends a batch to every queue on the direct path at once
with L{DirectPass}, without a Python call per member.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any, ClassVar, Protocol, cast

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from zope.interface import implementer

from twisted_chat.tcpinfo import (
    acked_known,
    kernel_acked,
    kernel_queued,
    peer_acked,
    socket_of,
    twisted_buffered,
)

_SendMany = Callable[[Sequence[socket.socket], bytes], "list[int] | None"]
send_many: _SendMany | None
try:
    from twisted_chat.server._sendmany import send_many
except ImportError:  # not built (installed without a C compiler): send_all's map
    send_many = None

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


@implementer(IPushProducer)
class SendQueue:
    """
    The bytes held for one connection, bounded by C{limit} (C{--sendq}),
    counted wherever they sit: Twisted's buffer and the kernel's send queue.

    While Twisted holds nothing the kernel took everything, and the kernel's
    share is bounded by the socket's send buffer, fixed at C{sndbuf} (and at
    most half the limit; the kernel counts double).  Once Twisted holds
    bytes, every write checks Twisted's share plus the kernel's against the
    limit.  Where Twisted's buffer cannot be read, Twisted's share is
    estimated: its buffer size once it paused this producer, plus what was
    written since.  L{write} returns C{False} for a write that would pass the
    limit (and does not write it): the caller cuts the connection.

    C{sock_now} is the socket while a write may go straight to it (the
    direct path, Twisted holding nothing): what L{DirectPass} sends on.
    Every change of it after the queue is made adds one to the class's
    L{generation}, which tells a L{DirectPass} to look at its members again.
    """

    #: Changes of any queue's C{sock_now} so far (see L{DirectPass}).
    generation: ClassVar[int] = 0

    __slots__ = ("_counted", "_direct", "_limit", "_paused", "_sock", "_transport",
                 "last_delivered", "sock_now", "stalled_since", "written")

    def __init__(self, transport: Any, limit: int, direct: bool = True, sndbuf: int = 0) -> None:
        self._transport = transport
        self._limit = limit
        self._paused: int | None = None  # bytes written since Twisted paused us
        self._direct = direct and _plain_tcp(transport)
        self._sock = socket_of(transport)
        if sndbuf and self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                      max(min(sndbuf, limit // 2), 1024))
        # Bytes handed to write(); the direct pass does not count its own,
        # so on its queues (not _counted) progress() asks the kernel.
        self.written = 0
        self._counted = not (self._direct and self._sock is not None
                             and acked_known(self._sock))
        self.sock_now = None if self._counted else self._sock
        # For DrainWatch: what had been delivered when it last looked, and
        # since when nothing has been (None: nothing is held).
        self.last_delivered = 0
        self.stalled_since: float | None = None

    @property
    def direct(self) -> bool:
        """Whether writes go straight to the socket when nothing is queued."""
        return self._direct

    def start(self) -> None:
        self._transport.registerProducer(self, True)

    def stop(self) -> None:
        """Before a close: with a producer registered, a TLS transport never
        starts its close, and a TCP transport whose buffer was full resumes
        the producer instead of closing."""
        self._transport.unregisterProducer()

    def twisted_held(self) -> int:
        """Bytes Twisted holds (an estimate where it cannot be read)."""
        t = self._transport
        if self._direct:
            return twisted_buffered(t)
        paused = self._paused
        # Twisted's buffer size is read here, on this rare path, rather than
        # held as one more int per queue (docs/fanout.md, "Memory per
        # connection").
        return 0 if paused is None else buffer_size(t) + paused

    def held(self) -> int:
        """Bytes held for the connection: Twisted's and the kernel's."""
        return self.twisted_held() + kernel_queued(self._sock)

    def delivered(self, held: int) -> int:
        """
        Bytes the peer has taken so far, for L{DrainWatch}, C{held} being
        L{held}'s answer: L{progress} where it can be had (on a direct queue
        the kernel's count of acknowledged bytes, which the direct pass
        needs no bookkeeping for; on a UNIX socket what was written less
        what Twisted and the kernel hold), else written minus C{held}.
        Not written minus C{held} everywhere: where Twisted's share is its
        paused estimate, a line written into Twisted's buffer before the
        queue is paused counted as taken (a UNIX-socket peer that read
        nothing was never dropped while lines kept coming), and after it
        nothing counted as taken until Twisted's buffer emptied.
        """
        taken = self.progress()
        return self.written - held if taken is None else taken

    def progress(self) -> int | None:
        """
        A count that moves when, and only when, the peer takes bytes, or
        C{None} where none can be had.  For L{OutputBudget}: which
        connections drained since it last looked.  The kernel's count of the
        bytes the peer acknowledged where it tells it (TCP on Linux, under
        TLS too: the encrypted bytes); else, where Twisted's buffer can be
        read (a UNIX socket, TCP without C{TCP_INFO}), written minus
        Twisted's buffer minus the kernel's queue (C{SIOCOUTQ}: on a UNIX
        socket what the peer has not read yet); else (TLS without
        C{TCP_INFO}, other transports) C{None}: Twisted's paused estimate
        does not move while the peer drains Twisted's buffer, so it cannot
        tell a reader from a stalled peer.
        """
        if not self._counted:
            return kernel_acked(self._sock)
        acked = peer_acked(self._transport)
        if acked is not None:
            return acked
        try:
            buffered = twisted_buffered(self._transport)
        except (AttributeError, TypeError):
            return None
        return self.written - buffered - kernel_queued(self._sock)

    def write(self, data: bytes) -> bool:
        self.written += len(data)
        t = self._transport
        if self._direct:
            # twisted_buffered(t) != 0, read inline: this runs on every write.
            queued = t._tempDataLen or t.offset != len(t.dataBuffer)
            if not queued and t.connected and not t.disconnecting:
                try:
                    sent = t.socket.send(data)
                except OSError:
                    # Full (BlockingIOError): Twisted sends it later; any
                    # other error Twisted finds on its own path.
                    sent = 0
                if sent < len(data):
                    self.took(data, sent)
                elif self.sock_now is None and not self._counted:
                    self.sock_now = self._sock  # Twisted's buffer drained
                    SendQueue.generation += 1
                return True
            if queued and self.held() + len(data) > self._limit:
                return False
            t.write(data)
            return True
        paused = self._paused
        if paused is not None:
            paused += len(data)
            # Past Twisted's buffer, what the limit leaves (computed here, on
            # this rare path, rather than held as one more int per queue).
            if paused + kernel_queued(self._sock) > max(self._limit - buffer_size(t), 0):
                return False  # not written, so not held (held() at the cut)
            self._paused = paused
        t.write(data)
        return True

    def write_parts(self, parts: Sequence[bytes]) -> bool:
        """
        C{parts}, in order, as one L{write}, without joining them: on the
        direct path with nothing queued, one C{sendmsg} of them all, and what
        the kernel did not take goes to Twisted's buffer part by part, each
        untouched part by reference.  Parts shared by many connections (the
        user list, the history block) then stay one object in memory for
        every peer that does not read them, rather than a copy each.
        """
        t = self._transport
        if (self._direct and not (t._tempDataLen or t.offset != len(t.dataBuffer))
                and t.connected and not t.disconnecting):
            self.written += sum(map(len, parts))
            try:
                sent = t.socket.sendmsg(parts)
            except OSError:
                sent = 0  # as in write(): Twisted sends it, or finds the error
            for i, part in enumerate(parts):
                if sent >= len(part):
                    sent -= len(part)
                    continue
                self.took(part, sent)
                for rest in parts[i + 1:]:
                    t.write(rest)
                return True
            if self.sock_now is None and not self._counted:
                self.sock_now = self._sock  # Twisted's buffer drained
                SendQueue.generation += 1
            return True
        return all(self.write(part) for part in parts)  # stops at the first over the limit

    def took(self, data: bytes, sent: int) -> None:
        """A direct send of C{data} took only C{sent} bytes: Twisted holds
        the rest, and writes wait behind it until it drains."""
        self.sock_now = None
        SendQueue.generation += 1
        self._transport.write(data[sent:] if sent else data)

    def retire(self) -> None:
        """The connection is closing: nothing more goes straight to its
        socket (the direct pass drops it)."""
        if self.sock_now is not None:
            self.sock_now = None
            SendQueue.generation += 1

    # -- IPushProducer ------------------------------------------------------------

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = 0

    def resumeProducing(self) -> None:
        self._paused = None

    def stopProducing(self) -> None:
        pass


# -- the fan-out's direct pass ------------------------------------------------------


class Sending(Protocol):
    """What L{DirectPass} needs of a connection."""

    @property
    def send_queue(self) -> SendQueue | None:
        """Its queue (C{None}: write through C{deliver}, e.g. closing)."""


_sock_now: Callable[[Any], socket.socket | None] = attrgetter("send_queue.sock_now")
_send: Callable[[socket.socket, bytes], int] = socket.socket.send


def _sock_or_none(member: Any) -> socket.socket | None:
    queue = getattr(member, "send_queue", None)
    return None if queue is None else queue.sock_now


def partition(members: Iterable[Sending]) -> tuple[list[Any], list[socket.socket], list[Any]]:
    """
    C{members} apart: those whose queue may write straight to its socket,
    their sockets, and the others, each in the members' order.
    """
    members = list(members)
    try:
        found = list(map(_sock_now, members))
    except AttributeError:  # a member without a queue (closing, or not ours to write)
        found = [_sock_or_none(m) for m in members]
    if found.count(None) == len(found):  # none on the direct path (TLS, web)
        return [], [], members
    if None not in found:
        return members, cast(list[socket.socket], found), []
    rest = [m for m, s in zip(members, found, strict=True) if s is None]
    direct = [m for m, s in zip(members, found, strict=True) if s is not None]
    return direct, [s for s in found if s is not None], rest


def send_all(members: Sequence[Sending], socks: Sequence[socket.socket], data: bytes) -> None:
    """
    Send C{data} on each of C{socks} (those of C{members}' queues), in one
    pass with no Python frame per member: the C loop of L{_sendmany} where
    it was built (one release of the GIL for the whole batch), else a C{map}
    over C{socket.send}.  A send that takes part of C{data}, or fails, is
    finished by its queue's own path (L{SendQueue.took}).
    """
    n = len(data)
    if send_many is not None:
        taken = send_many(socks, data)
        if taken is None:
            return
        results = taken
    else:
        results = []
        while len(results) < len(socks):
            try:
                # list.extend keeps what it appended when a send raises, so
                # the failing member is the one at len(results).
                results.extend(map(_send, socks[len(results):] if results else socks,
                                   repeat(data)))
            except OSError:
                results.append(0)
        if sum(results) == n * len(results):  # each took at most n: no one took less
            return
    for member, sent in zip(members, results, strict=True):
        queue = member.send_queue
        if sent != n and queue is not None:
            queue.took(data, sent)


def send_loop(direct: bool) -> str:
    """
    Which loop the fan-out's direct pass sends with (L{send_all}), for the
    server's log at start: the C one, the Python one (the extension was not
    built, which an install does not show), or none (C{--no-direct-send},
    C{direct} false).
    """
    if not direct:
        return "none (--no-direct-send: every write goes through Twisted)"
    if send_many is None:
        return ("Python (the C extension twisted_chat.server._sendmany was not built: "
                "install with a C compiler and Python's headers for the C loop)")
    return "C (twisted_chat.server._sendmany)"


class DirectPass:
    """
    The fan-out's batch writer: it sends each batch to every member whose
    queue may write straight to its socket (L{send_all}) and returns the
    others, for the caller to C{deliver} to (docs/fanout.md, "The direct
    pass").  It keeps the members' L{partition} from one batch to the next
    while it cannot have changed: the same
    member list (the same object: the lobby state makes a new one when the
    lobby changes) and no queue's C{sock_now} changed since
    (L{SendQueue.generation}).  A steady lobby then costs no Python work per
    member at all.  It holds the last batch's members until the next batch
    or L{forget}.
    """

    __slots__ = ("_direct", "_generation", "_members", "_rest", "_socks")

    def __init__(self) -> None:
        self._members: object = None
        self._generation = -1
        self._direct: list[Any] = []
        self._socks: list[socket.socket] = []
        self._rest: list[Any] = []

    def forget(self) -> None:
        """Let go of the members (one left: its connection, and what its
        transport still buffers, are not kept alive until the next batch)."""
        self._members = None
        self._direct, self._socks, self._rest = [], [], []

    def __call__(self, members: Collection[Sending], data: bytes) -> list[Any]:
        if members is not self._members or self._generation != SendQueue.generation:
            self._direct, self._socks, self._rest = partition(members)
            self._members = members
            self._generation = SendQueue.generation
        if self._socks:
            send_all(self._direct, self._socks, data)  # may change the generation
        return self._rest


# -- output that does not drain ---------------------------------------------------


def stalled(
    held: int, delivered: int, last: int, since: float | None, now: float, timeout: float
) -> tuple[float | None, bool]:
    """
    One look at a queue: C{held} bytes held, C{delivered} in all so far
    (C{last} at the previous look, when it had been stalled C{since}).
    Returns when its stall began (C{None}: it is not stalled) and whether it
    has lasted C{timeout}: output that has not drained that long.
    """
    if held == 0:
        return None, False
    if since is None or delivered != last:
        return now, False
    return since, now - since >= timeout


class Watched(Protocol):
    """What the drain watch needs of a connection."""

    @property
    def send_queue(self) -> SendQueue | None:
        """Its queue (C{None}: none to watch, not yet or no longer)."""

    def output_stalled(self) -> None:
        """Its peer took none of its bytes for the timeout: drop it."""


class _Periodic:
    """A timer for every connection that runs while there are some: L{start}
    when one comes, L{stop} when the last goes; C{period} 0 turns it off."""

    __slots__ = ("_call", "_clock", "_period")

    def __init__(self, clock: IReactorTime, period: float) -> None:
        self._clock = clock
        self._period = period
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """A connection came: make sure the timer runs."""
        if self._period and self._call is None:
            self._call = self._clock.callLater(self._period, self._look)

    def stop(self) -> None:
        """The last connection went: no timer is left behind."""
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _look(self) -> None:
        raise NotImplementedError


class DrainWatch(_Periodic):
    """
    One timer for every connection: each C{timeout / 4} seconds it looks at
    the send queue of every connection C{connections()} returns (the
    factory's own set: the watch keeps nothing per connection), and calls
    C{output_stalled} of each whose peer has taken none of the bytes held
    for it for C{timeout} seconds (L{stalled}).  The timer runs while there
    are connections: L{start} when one comes, L{stop} when the last goes.
    C{timeout} 0 turns it off.
    """

    __slots__ = ("_connections", "_timeout")

    def __init__(self, clock: IReactorTime, timeout: float,
                 connections: Callable[[], Collection[Watched]]) -> None:
        super().__init__(clock, timeout / 4)
        self._timeout = timeout
        self._connections = connections

    def _look(self) -> None:
        self._call = None
        now = self._clock.seconds()
        timeout = self._timeout
        dropped = []
        for connection in self._connections():
            queue = connection.send_queue
            if queue is None:
                continue
            held = queue.held()
            delivered = queue.delivered(held) if held else queue.last_delivered
            since, over = stalled(held, delivered, queue.last_delivered, queue.stalled_since,
                                  now, timeout)
            queue.stalled_since = since
            queue.last_delivered = delivered
            if over:
                dropped.append(connection)
        for connection in dropped:
            connection.output_stalled()
        if self._connections():
            self.start()


# -- output held for all connections ------------------------------------------------


class Budgeted(Protocol):
    """What the output budget needs of a connection."""

    @property
    def send_queue(self) -> SendQueue | None:
        """Its queue (C{None}: none to count, not yet or no longer)."""

    def output_over_budget(self) -> None:
        """It is first to go of an output over C{--sendq-total}: drop it."""


class OutputBudget(_Periodic):
    """
    C{--sendq-total}: the bytes the server itself holds for all connections
    together (Twisted's buffers, L{SendQueue.twisted_held}; the kernel's
    share is bounded apart, by C{--sndbuf}).  One timer for every
    connection, each C{period} seconds while there are connections: when
    the sum is over C{budget}, connections are dropped
    (C{output_over_budget}) until the rest fit: first those whose peer took
    nothing since the last look (L{SendQueue.progress} unchanged: stalled),
    the biggest first, then those still draining, the biggest first.  A
    connection that held nothing at the last look has not been seen
    stalled, nor has one whose progress cannot be read (C{None}).  Each
    connection's own bound stays C{--sendq}; this bounds their sum, which
    is otherwise C{--max-clients} x C{--sendq}
    (docs/security.md, "Output held in all").  C{budget} 0 turns it off.
    A sum over the budget between two looks is not seen until the next: the
    bound is the budget plus what one period brings, each connection still
    at most C{--sendq}.  What it keeps between looks is the progress of the
    connections that held something at the last (nothing per connection
    otherwise).
    """

    __slots__ = ("_budget", "_connections", "_progress")

    def __init__(self, clock: IReactorTime, budget: int,
                 connections: Callable[[], Collection[Budgeted]], period: float = 1.0) -> None:
        super().__init__(clock, period if budget else 0.0)
        self._budget = budget
        self._connections = connections
        self._progress: dict[SendQueue, int] = {}

    def stop(self) -> None:
        super().stop()
        self._progress = {}

    def _look(self) -> None:
        self._call = None
        last, progress = self._progress, {}
        holding: list[tuple[bool, int, Budgeted]] = []
        total = 0
        for connection in self._connections():
            queue = connection.send_queue
            if queue is not None:
                held = queue.twisted_held()
                if held:
                    now = queue.progress()
                    # No count (None): ranked with the draining, never as
                    # stalled (a figure that cannot move decides nothing).
                    if now is not None:
                        progress[queue] = now
                    holding.append((now is not None and last.get(queue) == now, held,
                                    connection))
                    total += held
        self._progress = progress
        if total > self._budget:
            holding.sort(key=_rank, reverse=True)
            for _, held, connection in holding:
                if total <= self._budget:
                    break
                connection.output_over_budget()
                total -= held
        if self._connections():
            self.start()


def _rank(holder: tuple[bool, int, Any]) -> tuple[bool, int]:
    """Which goes first (the greatest): stalled, then the most held."""
    return holder[0], holder[1]
