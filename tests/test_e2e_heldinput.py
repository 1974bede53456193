"""
rev15-sec #1 against the real C{twistd -n chat} on loopback: 14 addresses
of 127.0.0.0/8, 5 connections each, each behind a C{PASS} over the
failed-login limit with 256 KiB sent behind it.  Before, they took the
server past its held-input ceiling (5 MiB) and no connection at all was
read for 3 s: a bystander's C{PING} was answered up to 3 s late.  Now what
they send is dropped, and the bystander is answered at once
(docs/security.md, "Held input").
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from tests.serverproc import LOOPBACK, LineClient
from tests.test_e2e_hardening import from_address

pytestmark = pytest.mark.e2e

ADDRESSES = 14
PER_ADDRESS = 5
BEHIND = 256 * 1024


def test_connections_parked_behind_a_flooded_login_do_not_stall_a_bystander(chat_server):
    server = chat_server("--ip-register-rate", "0")
    owner = LineClient(server.port)
    owner.register("atk")
    owner.send("REGISTER correct-horse-99")
    owner.expect("REGISTERED atk", timeout=15)
    owner.close()
    # 50 failures for atk from anywhere: every further PASS for it waits
    # 3 s for BYE flood, unchecked (10 addresses x their 5).
    for a in range(10):
        guesser = from_address(server.port, f"127.0.40.{a + 1}")
        guesser.expect("NICK")
        for i in range(5):
            guesser.send("NICK atk")
            guesser.expect("PASS atk")
            guesser.send(f"PASS wrongwrong{i}")
            guesser.expect(lambda line: line.startswith("RETRY bad-password"), timeout=15)
        guesser.close()

    bystander = LineClient(server.port)
    bystander.register("bystander")
    parked: list[socket.socket] = []
    stop = threading.Event()

    def attack() -> None:
        for a in range(ADDRESSES):
            for _ in range(PER_ADDRESS):
                if stop.is_set():
                    return
                sock = socket.socket()
                sock.settimeout(5)
                sock.bind((f"127.0.41.{a + 1}", 0))
                sock.connect((LOOPBACK, server.port))
                parked.append(sock)
                sock.sendall(b"NICK atk\r\n")
                got = b""
                while b"PASS atk\r\n" not in got:
                    chunk = sock.recv(4096)
                    assert chunk, got
                    got += chunk
                with contextlib.suppress(OSError):  # (not read: the bug)
                    sock.sendall(b"PASS wrongwrong\r\n" + b"z" * BEHIND)

    attacker = threading.Thread(target=attack)
    try:
        attacker.start()
        rtts = []
        started = time.monotonic()
        n = 0
        while attacker.is_alive() or time.monotonic() - started < 4.0:
            n += 1
            sent = time.monotonic()
            bystander.send(f"PING t{n}")
            line = bystander.expect(lambda line: line.startswith(("PONG", "ERROR")), timeout=10)
            assert line == f"PONG t{n}", line
            rtts.append(time.monotonic() - sent)
            time.sleep(0.15)
            assert time.monotonic() - started < 60
    finally:
        stop.set()
        attacker.join(30)
    assert len(parked) == ADDRESSES * PER_ADDRESS
    # The bystander was read all along (before: PONGs 3 s late).
    assert max(rtts) < 0.5, rtts
    # The attackers got their BYE flood, after the delay.
    for sock in parked[:3]:
        sock.settimeout(10)
        got = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                got += chunk
        assert b"BYE flood too many failed logins" in got, got[-200:]
    for sock in parked:
        sock.close()
    bystander.close()
    assert server.problems() == []
