"""
rev16-clu #2 against the real C{twistd -n chat} on loopback: the server
process is stopped (SIGSTOP) for 3 s while a user sends at half its flood
rate; on SIGCONT everything the kernel held is read at once.  Before, past
the bucket's burst those lines were a flood: dropped, and the user cut with
C{BYE flood}.  Now the stall is excused (docs/security.md, "After a stall").
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.serverproc import LineClient

pytestmark = pytest.mark.e2e

STALL = 3.0
RATE = 5.0  # lines a second: half of --flood-rate


def test_lines_sent_to_a_stopped_server_at_under_the_rate_all_pass(chat_server):
    server = chat_server("--flood-rate", "10", "--flood-burst", "5")
    ann = LineClient(server.port)
    ann.register("ann")
    ann.sync()
    time.sleep(1.0)  # its bucket full again
    count = int(STALL * RATE)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        for i in range(count):
            ann.send(f"PING t{i}")
            time.sleep(1 / RATE)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    got = [ann.expect(lambda line: line.startswith(("PONG", "ERROR", "BYE")), timeout=10)
           for _ in range(count)]
    assert got == [f"PONG t{i}" for i in range(count)]
    assert not [line for line in ann.sync() if line.startswith(("ERROR", "BYE"))]
