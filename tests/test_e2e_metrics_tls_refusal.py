"""
A C{--metrics ssl:} port refuses a connection over its limits without an
error in the log (rr18-out, left item): its site answered C{None}, which
Twisted's TLS wrapper wrapped and then failed on, with three "Unhandled
Error" tracebacks per refused connection, a log a peer could grow at its
connection rate.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

import pytest

from tests.certchain import make_chain
from tests.serverproc import LOOPBACK, ServerProcess, free_port
from twisted_chat.server.metrics.metricsport import MAX_METRICS_PER_ADDRESS

pytestmark = pytest.mark.e2e


def test_a_refused_metrics_tls_connection_is_closed_without_a_traceback(tmp_path: Path) -> None:
    chain = make_chain(tmp_path)
    files = f"privateKey={chain.privkey}:certKey={chain.fullchain}"
    metrics = free_port()
    server = ServerProcess(tmp_path, ["--db", ":memory:", "--metrics",
                                      f"ssl:{metrics}:{files}:interface={LOOPBACK}"]).start()
    held = []
    try:
        server.wait_listening()
        # The address's share, held open without a handshake (not idle yet).
        held = [socket.create_connection((LOOPBACK, metrics), timeout=5)
                for _ in range(MAX_METRICS_PER_ADDRESS)]
        time.sleep(0.2)  # (e2e: the server accepts them in its own time)
        for _ in range(3):
            # Aborted: the reset may come before connect() has returned.
            with contextlib.suppress(ConnectionResetError), \
                    socket.create_connection((LOOPBACK, metrics), timeout=5) as refused:
                refused.settimeout(5)
                assert refused.recv(100) == b""  # closed, nothing said
        server.stop()
        assert server.problems() == []
    finally:
        for sock in held:
            sock.close()
        server.kill()
