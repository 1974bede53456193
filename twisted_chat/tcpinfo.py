"""
What Twisted and the kernel hold for a TCP connection, which Twisted does not
tell: the bytes in Twisted's buffer (L{twisted_buffered}), the socket under a
transport (under its TLS, too), the bytes in the kernel's send queue
(L{kernel_queued}, Linux's C{SIOCOUTQ}; the two: L{unsent}), how many of the
bytes written the peer has acknowledged (L{peer_acked}, Linux's C{TCP_INFO})
and whether the peer reset the connection (L{reset_by_peer}, C{TCP_INFO} too);
and, once a connection is lost, it lets go of what Twisted still buffers for
it (L{drop_twisted_buffers}).
The server's send queues bound and count what they hold with them
(docs/fanout.md), a close the server decides waits for them to drain
(L{twisted_chat.server.limits.closing}); the client tells a server that
reads slowly from one that reads nothing (docs/client.md).
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
import sys
from collections.abc import Iterator
from typing import Any

from twisted.internet.abstract import FileDescriptor

if sys.platform.startswith("linux"):
    # Where Linux's struct tcp_info holds tcpi_bytes_acked (a u64, since
    # Linux 4.1): the bytes of the stream the peer has acknowledged.
    ACKED_AT: int | None = 120
else:  # pragma: no cover - not this platform
    ACKED_AT = None
_ACKED = struct.Struct("=Q")
#: Linux's TCP_CLOSE, in struct tcp_info's first byte (tcpi_state): the state
#: of a connected socket once its peer reset it (or it timed out).
TCP_CLOSE = 7
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)

# SIOCOUTQ (Linux): the bytes in a socket's send queue not yet acknowledged
# by the peer.  Elsewhere the kernel's share is not counted (docs/fanout.md).
if sys.platform.startswith("linux"):
    import termios

    SIOCOUTQ: int | None = termios.TIOCOUTQ  # the same request number
else:  # pragma: no cover - not this platform
    SIOCOUTQ = None
_INT = bytes(4)


# The attributes of Twisted's FileDescriptor that twisted_buffered reads
# (not public API): a transport without them cannot be read that way.
TWISTED_BUFFER = ("dataBuffer", "offset", "_tempDataLen")


def twisted_buffered(fd: Any) -> int:
    """
    The bytes written to C{fd}, a Twisted
    L{FileDescriptor<twisted.internet.abstract.FileDescriptor>} (a TCP
    connection, stdout), that Twisted still holds, not yet taken by the
    kernel.  Twisted keeps no public count: this reads its attributes
    C{dataBuffer}, C{offset} and C{_tempDataLen}, which are not public API,
    and raises C{AttributeError} (or C{TypeError}) where they are missing.
    """
    return int(len(fd.dataBuffer) - fd.offset + fd._tempDataLen)


def _layers(transport: Any) -> Iterator[Any]:
    """C{transport} and the transports below it (its TLS layer's TCP
    connection): two layers, three at the most (more would be a surprise)."""
    layer = transport
    for _ in range(3):
        if layer is None:
            return
        yield layer
        layer = getattr(layer, "transport", None)


def buffered(consumer: object) -> int | None:
    """
    The bytes written to C{consumer} that Twisted still holds, not yet taken
    by the kernel (L{twisted_buffered}), or C{None} when it cannot tell: a
    Twisted C{FileDescriptor}'s buffer (a TCP connection, stdout), below a
    TLS layer if there is one (its C{transport} is the TCP connection, which
    holds the encrypted bytes).
    """
    for layer in _layers(consumer):
        try:
            return twisted_buffered(layer)
        except (AttributeError, TypeError):
            pass
    return None


def drop_twisted_buffers(transport: Any) -> None:
    """
    Let go of what Twisted still buffers for C{transport} (under its TLS,
    the TCP connection's), once it is lost: the connection refers to its
    user and back, so without this a connection cut for its output kept
    up to C{--sendq} of bytes until a full cyclic collection, which an idle
    server may never run.  Only a layer whose C{connectionLost} has run
    (C{disconnected}) is emptied: Twisted sends nothing more from it, and a
    clean close still flushes all before it gets there.  Only a Twisted
    C{FileDescriptor} with its private buffer attributes (L{TWISTED_BUFFER})
    is emptied: a TLS layer forwards what it lacks to its TCP connection,
    so it would seem to have them, and setting them would plant copies on it.
    """
    for layer in _layers(transport):
        if isinstance(layer, FileDescriptor) and layer.disconnected and all(
                hasattr(layer, name) for name in (*TWISTED_BUFFER, "_tempDataBuffer")):
            layer.dataBuffer = b""
            layer.offset = 0
            layer._tempDataBuffer = []
            layer._tempDataLen = 0


def socket_of(transport: Any) -> socket.socket | None:
    """The kernel socket under C{transport} (under its TLS, too), if any."""
    for layer in _layers(transport):
        get = getattr(layer, "getHandle", None)
        handle = get() if get is not None else None
        if isinstance(handle, socket.socket):
            return handle
    return None


def kernel_queued(sock: socket.socket | None) -> int:
    """Bytes the kernel holds for C{sock} that the peer has not acknowledged
    (0 where that cannot be asked)."""
    if sock is None or SIOCOUTQ is None:
        return 0
    try:
        return int.from_bytes(fcntl.ioctl(sock.fileno(), SIOCOUTQ, _INT), sys.byteorder)
    except (OSError, ValueError):
        return 0


def unsent(transport: Any) -> int:
    """The bytes written to C{transport} that its peer has not taken yet, as
    far as can be told: Twisted's buffer (under TLS, the TCP transport's)
    and, on Linux, what the kernel holds unacknowledged (0 for a transport
    with neither: a test's, a WebSocket's)."""
    return unsent_at(transport, socket_of(transport))


def unsent_at(transport: Any, sock: socket.socket | None) -> int:
    """L{unsent}, with the socket under C{transport} already looked up
    (L{socket_of}: C{sock})."""
    return (buffered(transport) or 0) + kernel_queued(sock)


def reset_by_peer(sock: socket.socket | None) -> bool:
    """
    Whether the TCP connection C{sock} (L{socket_of}) is over in the kernel
    (Linux's C{tcpi_state} is C{TCP_CLOSE}): its peer reset it, so nothing
    written can reach it any more, though C{SIOCOUTQ} still counts what it
    never acknowledged (L{kernel_queued} stays above 0 for good).  C{False}
    where that cannot be asked (not Linux, no TCP socket, a closed one).
    """
    if sock is None or ACKED_AT is None or sock.family not in _TCP_FAMILIES:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except (OSError, ValueError, AttributeError):
        return False
    return info[:1] == bytes((TCP_CLOSE,))


def kernel_acked(sock: socket.socket | None) -> int:
    """Bytes written to C{sock} that its peer has acknowledged so far (0
    where that cannot be asked)."""
    if sock is None or ACKED_AT is None:
        return 0
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, ACKED_AT + _ACKED.size)
        return int(_ACKED.unpack_from(info, ACKED_AT)[0])
    except (OSError, ValueError, AttributeError, struct.error):
        return 0


_acked_known: bool | None = None  # whether this kernel reports tcpi_bytes_acked


def acked_known(sock: socket.socket) -> bool:
    """
    Whether the kernel reports the bytes its peers acknowledged (Linux 4.1
    and later): asked once, of the first TCP socket.  Where it does not,
    queues count what they write and the direct pass is off.
    """
    global _acked_known
    if _acked_known is None:
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            _acked_known = ACKED_AT is not None and len(info) >= ACKED_AT + _ACKED.size
        except OSError as e:
            if e.errno == errno.EBADF:
                return False  # a closed socket says nothing of the kernel: ask again
            _acked_known = False
        except AttributeError:
            _acked_known = False
    return _acked_known


def peer_acked(transport: Any) -> int | None:
    """
    The bytes written to C{transport} that the peer has acknowledged so far
    (below TLS: the encrypted bytes), or C{None} where the kernel cannot
    tell: not Linux 4.1 or later, or no TCP socket under the transport.
    The count only grows: what is written meanwhile does not lower it.
    """
    sock = socket_of(transport)
    if (sock is None or sock.fileno() == -1
            or sock.family not in _TCP_FAMILIES or sock.type != socket.SOCK_STREAM):
        return None
    if not acked_known(sock):
        return None
    return kernel_acked(sock)
