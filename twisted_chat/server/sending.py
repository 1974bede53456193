"""
How the server hands bytes to a connection's transport.

Twisted's C{transport.write} never sends at once: it buffers, asks the
reactor to watch the socket for writability (an C{epoll_ctl} call), and sends
on the next reactor iteration, after which it stops watching (another
C{epoll_ctl}).  For a chat server that writes each lobby batch to every
member, that is two system calls and a reactor dispatch per recipient per
turn, the largest share of the cost of a delivered line.

For plain TCP connections, L{direct_sender} sends straight away when the
transport has nothing buffered (so order is kept), and hands whatever the
kernel did not take to C{transport.write}, which then works exactly as
usual: its buffer, its producer pausing (which the send-queue rule relies
on), its error handling.  Any other transport (TLS, UNIX sockets, test
transports), or a Twisted whose TCP transport does not have the attributes
this relies on, gets plain C{transport.write}.

This reads three attributes of Twisted's C{FileDescriptor} that are not
public API (C{dataBuffer}, C{offset}, C{_tempDataLen}); L{direct_sender}
checks they are there and falls back if not, and the tests cover both paths.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

Write = Callable[[bytes], None]


def _plain_tcp(transport: Any) -> bool:
    return type(transport) is tcp.Server and all(
        hasattr(transport, name) for name in ("dataBuffer", "offset", "_tempDataLen", "socket")
    )


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
    sock: socket.socket = transport.socket
    send = sock.send
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
