"""
rev18-attack 3 on the real server: DMs fill a slow reader to half of
--sendq, where the server starts refusing them (ERROR busy), and a lobby
burst too small to cut anyone else then cut the reader.  Private lines
still held are now left out of the --sendq cut: the lobby needs as many
bytes to cut that reader as to cut one nobody DMed, and lobby lines alone
are still cut at --sendq.  The reader here reads nothing at all (a 4 KiB
receive buffer), the limiting case of a slow one; flood control is off and
the clients' address exempt, so the sizes, not the rates, decide.
"""

from __future__ import annotations

import re

import pytest

from tests.test_e2e_limits import TS, registered, small_buffer_client

pytestmark = pytest.mark.e2e

SENDQ = 400_000
TEXT = "x" * 4000
# A lobby line as the reader is sent it: MSG, time, nick, "*" and the text.
LOBBY_LINE = len(f"MSG 2026-12-06T21:28:33.809Z talker * {TEXT}\r\n")


def start(chat_server, connect):
    server = chat_server("--flood-rate", "0", "--sendq", str(SENDQ), "--sndbuf", "32768",
                         "--sendq-timeout", "0", "--accounts", "off")
    reader = small_buffer_client(server, connect, "reader", rcvbuf=4096)
    talker = registered(connect, server.port, "talker")
    return server, reader, talker


def lobby_until_cut(talker, most: int = 150) -> int:
    """Lobby lines from C{talker}, one at a time (it reads its own copy of
    each), until everyone is told the reader left for sendq: the lobby's
    bytes sent to the reader by then."""
    for i in range(most):
        talker.send(f"MSG {TEXT}")
        while True:
            line = talker.readline()
            if line.startswith("LEFT "):
                assert re.fullmatch(rf"LEFT {TS} reader sendq", line), line
                return i * LOBBY_LINE
            if line.startswith("MSG ") and " talker * " in line:
                break
            raise AssertionError(f"unexpected line {line[:80]!r}")
    raise AssertionError(f"the reader was not cut after {most} lobby lines")


def test_lobby_lines_alone_cut_a_reader_at_sendq(chat_server, connect):
    """The control: the --sendq bound holds for lobby traffic."""
    server, reader, talker = start(chat_server, connect)
    cut_at = lobby_until_cut(talker)
    # Within a line or two of --sendq, and what the reader's socket took.
    assert SENDQ - 2 * LOBBY_LINE < cut_at < SENDQ + 40_000, cut_at
    assert reader.closed(timeout=10)
    assert server.problems() == []


def test_dms_held_for_a_reader_do_not_bring_its_cut_closer(chat_server, connect):
    server, reader, talker = start(chat_server, connect)
    sender = registered(connect, server.port, "sender")
    talker.expect("JOINED ")
    for _ in range(100):  # 400 kB of DMs: the server takes them up to half of --sendq
        sender.send(f"DM reader {TEXT}")
    answers = sender.sync()
    delivered = sum(line.startswith("MSG ") for line in answers)
    busy = answers.count("ERROR busy reader is not reading fast enough to take more "
                         "private messages; try again later")
    assert delivered + busy == 100 and busy > 0, (delivered, busy)
    assert delivered * len(f"MSG 2026-12-06T21:28:33.809Z sender reader {TEXT}\r\n") > SENDQ // 2
    # The sender goes (it would not read the lobby's lines either); the DMs
    # stay held for the reader.
    sender.send("BYE")
    assert talker.expect("LEFT ").endswith(" sender quit")
    # Before, about half of --sendq of lobby lines cut it here.
    cut_at = lobby_until_cut(talker)
    assert SENDQ - 2 * LOBBY_LINE < cut_at < SENDQ + 40_000, cut_at
    assert reader.closed(timeout=10)
    assert server.problems() == []
