"""
Issue 13 on real sockets: the fan-out's direct pass keeps each connection's
order.  A reader with tiny kernel buffers that reads slower than the lobby
talks falls behind: its sends are partial, Twisted holds the rest and its
kernel buffer drains while Twisted still holds bytes, with lobby lines and
direct messages to it going on meanwhile.  It must get every line once, in
the order the sender sent them (a direct send past Twisted's buffer would
reorder them).
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from tests.serverproc import LineClient
from tests.test_e2e_limits import registered, small_buffer_client

pytestmark = pytest.mark.e2e

ALICE = re.compile(r"MSG \S+ alice (?:\*|bob) (lobby|dm) (\d+) p+")
LINES = 300


def read_alices(client: LineClient, n: int, pause: float = 0.0) -> list[tuple[str, int]]:
    """The next C{n} lines, each one of alice's: (kind, number)."""
    out = []
    for _ in range(n):
        line = client.readline(timeout=30)
        match = ALICE.fullmatch(line)
        assert match, f"unexpected line {line[:60]!r}"
        out.append((match.group(1), int(match.group(2))))
        if pause:
            time.sleep(pause)  # a slow reader (e2e: real time on purpose)
    return out


def test_a_slow_reader_gets_every_line_in_order(chat_server, connect):
    server = chat_server("--flood-rate", "0", "--sndbuf", "4096")
    bob = small_buffer_client(server, connect, "bob", rcvbuf=4096)
    alice = registered(connect, server.port, "alice")
    carol = registered(connect, server.port, "carol")
    bob.expect("JOINED ")  # alice
    bob.expect("JOINED ")  # carol

    sent = []
    for i in range(LINES):
        sent.append(("lobby", i))
        if i % 3 == 0:
            sent.append(("dm", i))
    received: list[tuple[str, int]] = []
    failed: list[BaseException] = []

    def bob_reads() -> None:
        try:
            received.extend(read_alices(bob, len(sent), pause=0.0005))
        except BaseException as e:  # reported by the test below
            failed.append(e)

    reader = threading.Thread(target=bob_reads, daemon=True)
    reader.start()
    pad = "p" * 900
    for kind, i in sent:  # about 400 KB for bob: under --sendq, far over his buffers
        if kind == "lobby":
            alice.send(f"MSG lobby {i} {pad}")
            alice.expect(lambda line, i=i: f" alice * lobby {i} " in line)
        else:
            alice.send(f"DM bob dm {i} {pad}")
            alice.expect(lambda line, i=i: f" alice bob dm {i} " in line)
    reader.join(timeout=60)
    assert not reader.is_alive() and not failed, failed
    assert received == sent, "every line once, in the order alice sent them"
    assert read_alices(carol, LINES) == [("lobby", i) for i in range(LINES)]
    assert "sendq" not in server.log()
    assert server.problems() == []
