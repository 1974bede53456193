"""
The kernel's share of a connection's traffic: each accepted socket's send
and receive buffers fixed at C{--sndbuf} and C{--rcvbuf}, on every port
(chat, web and WebSocket, metrics; TLS too), before the server's first
read of it.  Left to itself, Linux grows both (its autotuning) to megabytes.

The send buffer: a peer that does not read made the kernel hold about 2 MB
for it (in issue 14.2, 600 non-readers took 1.5 GB of kernel TCP memory,
outside C{--sendq}; on the HTTP ports).

The receive buffer: grown up to C{net.ipv4.tcp_rmem}'s last value (32 MiB
on the test host) once the server has read fast, it fills whenever the
server stops reading: for the close grace of every close it decides
(L{Linger} pauses reading), and for a pipelined HTTP request behind a
response its peer does not take, until C{--web-timeout}.  A peer that sent
an over-long line first (read and discarded) and then went on sending held
about 1.5 MB of kernel memory per connection so, and one connection alone
32 MiB.

A fixed buffer is never grown: the kernel holds at most twice it (its
bookkeeping) per TCP connection.  Linux ignores the receive buffer of a
UNIX stream socket: there the peer's own send buffer bounds what waits (up
to 2 x C{net.core.wmem_max}), which the server cannot set.
See docs/security.md, "Traffic".
"""

from __future__ import annotations

import contextlib
import socket


def _fix(sock: socket.socket | None, option: int, size: int) -> None:
    """Fix C{sock}'s kernel buffer C{option} (C{SO_SNDBUF}, C{SO_RCVBUF})
    at C{size} bytes; 0, or no socket (a test's transport), leaves it."""
    if size and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, size)


def fix_send_buffer(sock: socket.socket | None, sndbuf: int, limit: int) -> None:
    """
    Fix C{sock}'s kernel send buffer at C{sndbuf} (C{--sndbuf}), at most
    half of C{limit} (C{--sendq}: the kernel counts double); 0 leaves it to
    the kernel's autotuning, which grows a non-reader's to megabytes.  For
    every connection the server writes to: a chat connection's (its
    L{SendQueue}'s), an HTTP one's on the web and metrics ports.
    """
    _fix(sock, socket.SO_SNDBUF, sndbuf and max(min(sndbuf, limit // 2), 1024))


def fix_receive_buffer(sock: socket.socket | None, rcvbuf: int) -> None:
    """
    Fix C{sock}'s kernel receive buffer at C{rcvbuf} (C{--rcvbuf}, bytes;
    Linux counts double, and raises a tiny value to its minimum); 0 leaves
    it to the kernel's autotuning.  Called as the connection is made, before
    its first read.
    """
    _fix(sock, socket.SO_RCVBUF, rcvbuf)
