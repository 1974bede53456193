"""
One connection's send queue: how its bytes reach the transport, how many are
held for it wherever they sit (Twisted's buffer and the kernel's), and the
rules that bound them: C{--sendq} and C{--sndbuf} (the timers that police
what the queues hold, C{--sendq-timeout} and C{--sendq-total}, are in
L{outputwatch}).  The design is in docs/fanout.md, "The send queue".

On a plain TCP transport the queue sends straight away when Twisted holds
nothing for it (order is kept), and hands what the kernel did not take to
C{transport.write}, which then works as usual.  That path reads attributes of
Twisted's C{FileDescriptor} that are not public API (C{dataBuffer},
C{offset}, C{_tempDataLen}: L{twisted_buffered}); where they are missing, on
other transports (TLS, test transports), or with C{--no-direct-send}, the
queue writes with C{transport.write} and estimates Twisted's share from its
pausing.  The fan-out sends a batch to every queue on the direct path at once
with L{DirectPass}, without a Python call per member.  L{EncodingSendQueue}
encodes what it is given before the write (a WebSocket's frames).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection, Iterable, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any, ClassVar, Protocol, cast

from twisted.internet import tcp
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from twisted_chat.server.limits.socketbuffers import fix_send_buffer
from twisted_chat.server.output.privateheld import PrivateHeld
from twisted_chat.tcpinfo import (
    TWISTED_BUFFER,
    acked_known,
    kernel_acked,
    kernel_queued,
    peer_acked,
    socket_of,
    twisted_buffered,
)

# The attributes of Twisted's TCP transport the direct path reads.
_PRIVATE = (*TWISTED_BUFFER, "socket")


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


class Handed:
    """
    The bytes send queues handed to Twisted's buffers since the output
    budget last looked (L{outputwatch.OutputBudget}, which owns it and
    resets it): counted where bytes go to Twisted, never on the direct
    pass, so that the budget can look within a reactor turn.  C{room}: how
    many may be handed before it looks (the budget sets it at each look);
    kept here so that the fan-out compares the two without a call.
    """

    __slots__ = ("count", "room")

    def __init__(self, room: int = 1 << 62) -> None:
        self.count = 0
        self.room = room


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
    limit (and does not write it): the caller cuts the connection.  The
    limit counts what is held less the private lines still held
    (L{write_private}), which their own rule bounds: so a queue holds at
    most 1.5 times C{limit}, and a line.

    C{sock_now} is the socket while a write may go straight to it (the
    direct path, Twisted holding nothing): what L{DirectPass} sends on.
    Every change of it after the queue is made adds one to the class's
    L{generation}, which tells a L{DirectPass} to look at its members again.

    C{handed}, where given, counts each byte the queue hands to Twisted's
    buffer (L{Handed}: the output budget's tally).
    """

    #: Changes of any queue's C{sock_now} so far (see L{DirectPass}).
    generation: ClassVar[int] = 0

    __slots__ = ("_counted", "_direct", "_handed", "_limit", "_paused", "_private", "_sock",
                 "_transport", "last_delivered", "sock_now", "stalled_since", "written")

    def __init__(self, transport: Any, limit: int, direct: bool = True, sndbuf: int = 0,
                 handed: Handed | None = None) -> None:
        self._transport = transport
        self._handed = handed
        self._limit = limit
        self._paused: int | None = None  # bytes written since Twisted paused us
        # Whether a write goes straight to the socket while Twisted holds nothing.
        self._direct = direct and _plain_tcp(transport)
        self._sock = socket_of(transport)
        fix_send_buffer(self._sock, sndbuf, limit)
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
        # The private lines still held (write_private): made at the first.
        self._private: PrivateHeld | None = None

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
        Bytes the peer has taken so far, for L{outputwatch.DrainWatch}, C{held} being
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
        C{None} where none can be had.  For L{outputwatch.OutputBudget}: which
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
        # Counted in written only once taken: a refused write is not written
        # (progress() and delivered() would count it as taken by the peer).
        t = self._transport
        if self._direct:
            queued = twisted_buffered(t)
            if not queued and t.connected and not t.disconnecting:
                self.written += len(data)
                try:
                    sent = t.socket.send(data)
                except OSError:
                    # Full (BlockingIOError): Twisted sends it later; any
                    # other error Twisted finds on its own path.
                    sent = 0
                if sent < len(data):
                    self.took(data, sent)
                else:
                    self._back_on_direct()
                return True
            if queued:
                over = self.held() + len(data) - self._limit
                if over > 0 and not self._private_covers(over):
                    return False
        else:
            paused = self._paused
            if paused is not None:
                paused += len(data)
                # Past Twisted's buffer, what the limit leaves (computed here, on
                # this rare path, rather than held as one more int per queue).
                over = paused + kernel_queued(self._sock) - max(self._limit - buffer_size(t), 0)
                if over > 0 and not self._private_covers(over):
                    return False  # not written, so not held (held() at the cut)
                self._paused = paused
        self.written += len(data)
        self._to_twisted(data)
        return True

    def _to_twisted(self, data: bytes) -> None:
        """C{data} into Twisted's buffer, counted for the output budget
        (L{Handed}): the only way bytes reach it, so its tally misses none."""
        handed = self._handed
        if handed is not None:
            handed.count += len(data)
        self._transport.write(data)

    def write_private(self, data: bytes) -> bool:
        """
        L{write} of a private line (a DM, a partner's C{MSG}, an
        invitation), whose bytes the limit leaves out for as long as they
        are held: otherwise private lines held for a reader would make it
        cheaper for lobby lines to get it cut (rev18-attack 3: DMs filled
        a reader to half the limit, then a lobby burst that cut nobody else
        cut it).  Left out only if at most half the limit was held before
        it, as where the session stops taking private lines for the reader
        (C{MemberOutput.backed_up}): so what is left out is at most half
        the limit and a line.  The extra work (the kernel asked where the
        stream stands) is made here and at a cut, never for lobby lines.
        """
        exempt = self.held() <= self._limit // 2
        before = self.written
        if not self.write(data):
            return False
        if exempt and self.written > before:
            private = self._private
            if private is None:
                private = self._private = PrivateHeld()
            end = self._offset()
            private.add(end - (self.written - before), end)
        return True

    def _taken(self, held: int) -> int:
        """Where in the stream the peer stands: the bytes it took so far,
        C{held} being L{held}'s answer (on a queue the direct pass writes
        to, which does not count what it sends, the kernel's count)."""
        return self.written - held if self._counted else kernel_acked(self._sock)

    def _offset(self) -> int:
        """Where the stream written to the connection stands: the bytes
        written so far (on a queue the direct pass writes to: what the peer
        took and what is held)."""
        return self.written if self._counted else kernel_acked(self._sock) + self.held()

    def _private_covers(self, over: int) -> bool:
        """Whether the private lines still held (L{write_private}) cover
        C{over}, the bytes by which a write would pass the limit: the
        limit counts what is held less them."""
        private = self._private
        if private is None:
            return False
        left = private.held(self._taken(self.held()))
        if not left:
            self._private = None  # all taken: nothing kept until the next
        return left >= over

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
        if self._direct and not twisted_buffered(t) and t.connected and not t.disconnecting:
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
                    self._to_twisted(rest)
                return True
            self._back_on_direct()
            return True
        # Stops at the first part over the limit; written counts the parts before it.
        # SendQueue.write, not self.write: an EncodingSendQueue's parts are encoded.
        return all(SendQueue.write(self, part) for part in parts)

    def _back_on_direct(self) -> None:
        """A direct send took everything: Twisted's buffer has drained, so
        the direct pass may send to this socket again (if it ever may)."""
        if self.sock_now is None and not self._counted:
            self.sock_now = self._sock
            SendQueue.generation += 1

    def took(self, data: bytes, sent: int) -> None:
        """A direct send of C{data} took only C{sent} bytes: Twisted holds
        the rest, and writes wait behind it until it drains."""
        self.sock_now = None
        SendQueue.generation += 1
        self._to_twisted(data[sent:] if sent else data)

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


class EncodingSendQueue(SendQueue):
    """
    A send queue whose writes are encoded first, by C{encode}: the
    WebSocket gateway's, on the TCP (or TLS) transport under the WebSocket,
    C{encode} framing the lines (L{twisted_chat.web.gateway.FrameCache}).
    So what it counts, reads from Twisted's buffer and bounds by C{limit}
    is what is really held: the encoded bytes.  C{encode} answers C{b""}
    for data that is not to be sent (a WebSocket no longer open).  The
    fan-out's direct pass, which sends a batch as it is, never writes to
    it: its C{sock_now} stays C{None} (it counts every byte it writes,
    like a queue off the direct pass).
    """

    __slots__ = ("_encode",)

    def __init__(self, transport: Any, limit: int, encode: Callable[[bytes], bytes],
                 direct: bool = True, sndbuf: int = 0, handed: Handed | None = None) -> None:
        super().__init__(transport, limit, direct, sndbuf, handed)
        self._encode = encode
        self._counted = True
        self.sock_now = None

    def write(self, data: bytes) -> bool:
        encoded = self._encode(data)
        return not encoded or super().write(encoded)

    def write_parts(self, parts: Sequence[bytes]) -> bool:
        """Each part encoded on its own (a part shared by many connections
        is encoded once, by a caching C{encode}), then L{SendQueue.write_parts}."""
        encoded = [e for e in map(self._encode, parts) if e]
        return not encoded or super().write_parts(encoded)


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


def send_each(socks: Sequence[socket.socket], data: bytes) -> list[int] | None:
    """
    The direct pass's loop where the C one (L{send_many}) was not built: a
    C{map} over C{socket.send}, still no Python frame per member.  It
    answers as the C loop does: what each socket took (0 for one that
    failed), or C{None} when each took all of C{data}.
    """
    results: list[int] = []
    while len(results) < len(socks):
        try:
            # list.extend keeps what it appended when a send raises, so
            # the failing member is the one at len(results).
            results.extend(map(_send, socks[len(results):] if results else socks,
                               repeat(data)))
        except OSError:
            results.append(0)
    if sum(results) == len(data) * len(results):  # none took more: none took less
        return None
    return results


_SendMany = Callable[[Sequence[socket.socket], bytes], "list[int] | None"]
send_many: _SendMany
try:
    from twisted_chat.server.output._sendmany import send_many
except ImportError:  # not built (installed without a C compiler): send_each's map
    send_many = send_each


def took_part(members: Sequence[Sending], data: bytes, taken: Sequence[int]) -> None:
    """A send of C{data} that some of C{members}' sockets did not take
    whole (C{taken}: what each took): each such member's queue finishes
    it on its own path (L{SendQueue.took})."""
    n = len(data)
    for member, sent in zip(members, taken, strict=True):
        queue = member.send_queue
        if sent != n and queue is not None:
            queue.took(data, sent)


def send_loop(direct: bool) -> str:
    """
    Which loop the fan-out's direct pass sends with (L{DirectPass}), for the
    server's log at start: the C one, the Python one (the extension was not
    built, which an install does not show), or none (C{--no-direct-send},
    C{direct} false).
    """
    if not direct:
        return "none (--no-direct-send: every write goes through Twisted)"
    if send_many is send_each:
        return ("Python (the C extension twisted_chat.server.output._sendmany was not built: "
                "install with a C compiler and Python's headers for the C loop)")
    return "C (twisted_chat.server.output._sendmany)"


class DirectPass:
    """
    The fan-out's batch writer: it sends each batch to every member whose
    queue may write straight to its socket (L{send_many}, L{send_each}) and returns the
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
        socks = self._socks
        if socks:
            # One pass, no Python frame per member: the C loop where it was
            # built (one release of the GIL for the whole batch), else
            # send_each, called here, not through a wrapper of ours.  What
            # a socket did not take whole may change the generation.
            taken = send_many(socks, data)
            if taken is not None:
                took_part(self._direct, data, taken)
        return self._rest
