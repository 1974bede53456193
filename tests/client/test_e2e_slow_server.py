"""
The real client, real sockets: a server that reads what the client sends
slowly but steadily keeps the connection, however long the lines wait; one
that reads nothing is given up after C{--timeout} (review of eecdc09, G3).
Plain TCP and TLS.  Every wait is bounded.

The kernel's own send buffer (up to 4 MiB on Linux) sits below Twisted's:
as the server reads, the kernel's queue shrinks while Twisted's buffer stays
as full as it was, so only what the server's kernel acknowledged shows it
reading.  The peer keeps a tiny receive buffer: on loopback a segment can be
64 KiB, and a peer with a usual buffer would reopen its window only every
64 KiB read; with a tiny one it acknowledges about every kilobyte, as a peer
across a network (1.5 KB segments) does.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK
from twisted_chat import tcpinfo

from .clientproc import CLIENT, REPO, client_env

pytestmark = [
    pytest.mark.e2e,
    # Elsewhere the client can only watch its own buffer (docs/client.md),
    # which a slow reader does not drain.
    pytest.mark.skipif(tcpinfo.ACKED_AT is None, reason="the kernel reports no acked bytes"),
]

TIMEOUT = 3  # the client's --timeout, seconds
# What the script sends: far more than Twisted's buffer (64 KiB) and the
# kernel's (it grows to 4 MiB) hold, so that lines wait on a full socket.
LINES = 12  # the pacer's burst of 10 (the NICK took one): 9 go at once
LINE = "x" * (900 << 10)


@contextmanager
def script_of_a_peer(
    tls: bool, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    """
    A piped client (--nick eve, --timeout 3) that joined a peer's lobby and
    was given a script of LINES huge lines; the peer's socket (under its TLS:
    the test reads the encrypted bytes as they come, it needs only their pace).
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # inherited by accept
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        listener.settimeout(15)
        port = listener.getsockname()[1]
        tls_args: list[str] = []
        context = None
        if tls:
            from tests.test_e2e_tls import self_signed

            key, cert = self_signed(tmp_path)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            tls_args = ["--tls", "--ca", str(cert)]
        args = ["--nick", "eve", "--no-history", "--timeout", str(TIMEOUT), *tls_args]
        proc = subprocess.Popen(
            [*CLIENT, *args, LOOPBACK, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=client_env(),
        )
        try:
            conn, _ = listener.accept()
            conn.settimeout(15)
            if context is not None:
                conn = context.wrap_socket(conn, server_side=True)
            # The bytes as they come, encrypted or not (a second handle).
            raw = socket.fromfd(conn.fileno(), conn.family, conn.type)
            # It shares conn's non-blocking descriptor (settimeout above):
            # give it a timeout of its own, or an empty buffer raises.
            raw.settimeout(1)
            with conn, raw:
                conn.sendall(b"HELLO chat/1 peer\r\nNICK\r\n")
                heard = b""
                while b"NICK eve\r\n" not in heard:  # after the probe's PING, without TLS
                    chunk = conn.recv(100)
                    assert chunk, heard
                    heard += chunk
                conn.sendall(b"READY eve\r\nUSER eve lobby\r\nUSERS 1\r\n")
                assert proc.stdin is not None
                stdin = proc.stdin
                script = "".join(f"{i} {LINE}\n" for i in range(LINES)).encode()
                feeder = threading.Thread(target=lambda: (stdin.write(script), stdin.close()))
                feeder.start()
                feeder.join(15)
                assert not feeder.is_alive(), "the client did not read its script"
                yield proc, raw
        finally:
            proc.kill()
            if proc.stdin is not None and proc.stdin.closed:
                proc.stdin = None  # the script was given in full
            proc.communicate(timeout=10)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_server_that_reads_slowly_keeps_the_connection(tls: bool, tmp_path: Path) -> None:
    # About 1 KB a second, for over three times --timeout: the socket's
    # buffers never drain, but the server takes some all the time.
    with script_of_a_peer(tls, tmp_path) as (proc, raw):
        taken = 0
        start = time.monotonic()
        while time.monotonic() - start < 3.5 * TIMEOUT:
            time.sleep(0.25)
            assert proc.poll() is None, (proc.stderr.read() if proc.stderr else b"").decode()
            with contextlib.suppress(TimeoutError):  # nothing yet: the client's bytes are late
                taken += len(raw.recv(256))
        assert 0 < taken < len(LINE)  # it read, but far from everything


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_server_that_reads_nothing_is_given_up_after_the_timeout(
    tls: bool, tmp_path: Path
) -> None:
    with script_of_a_peer(tls, tmp_path) as (proc, _raw):
        start = time.monotonic()
        rc = proc.wait(timeout=5 * TIMEOUT)
        took = time.monotonic() - start
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
    assert rc == 1
    assert f"did not read what the client sent for {TIMEOUT} seconds." in err, err
    # Not before the timeout; the upper bound only catches "never" (a loaded
    # CI machine delays the client's look and its exit by seconds).
    assert TIMEOUT - 1 < took < TIMEOUT + 6, took
