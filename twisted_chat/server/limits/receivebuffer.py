"""
The kernel's share of a peer's input: each accepted socket's receive buffer
fixed at C{--rcvbuf}, on every port (chat, web and WebSocket, metrics; TLS
too), before the server's first read of it.

Left to itself, Linux grows an accepted socket's receive buffer (its
autotuning, up to C{net.ipv4.tcp_rmem}'s last value, 32 MiB on the test host)
once the server has read fast, and the buffer fills whenever the server
stops reading: for the close grace of every close it decides (L{Linger}
pauses reading), and for a pipelined HTTP request behind a response its
peer does not take, until C{--web-timeout}.  A peer that sent an over-long
line first (read and discarded) and then went on sending held about 1.5 MB
of kernel memory per connection so, and one connection alone 32 MiB
(rev19-attack 2).  A fixed buffer is never grown: the kernel holds at most
twice it (its bookkeeping) per TCP connection.  Linux ignores it on a UNIX
stream socket: there the peer's own send buffer bounds what waits (up to
2 x C{net.core.wmem_max}), which the server cannot set (rr19-rcv 2).  See
docs/security.md, "Traffic".
"""

from __future__ import annotations

import contextlib
import socket


def fix_receive_buffer(sock: socket.socket | None, rcvbuf: int) -> None:
    """
    Fix C{sock}'s kernel receive buffer at C{rcvbuf} (C{--rcvbuf}, bytes;
    Linux counts double, and raises a tiny value to its minimum); 0 leaves
    it to the kernel's autotuning.  Called as the connection is made, before
    its first read.
    """
    if rcvbuf and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
