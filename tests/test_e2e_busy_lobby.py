"""
A busy lobby on real sockets, over TCP and over TLS: senders whose lines
come faster than one fan-out each, on the real reactor's backlog probe
(docs/fanout.md), lose nothing, see nothing reordered, and are all answered.
"""

from __future__ import annotations

import re
import socket
import ssl
import time

import pytest

from tests.serverproc import LOOPBACK, free_port
from tests.test_e2e_tls import self_signed

pytestmark = pytest.mark.e2e

NICKS = ["ann", "ben", "cat"]
ROUNDS = 40  # lines per sender, one round every millisecond or so
DM = " ann ben after the rush"


def tls_server(tmp_path, chat_server, connect, *options):
    """A TLS server with C{options}, and a function that opens a client to it."""
    port = free_port()
    key, cert = self_signed(tmp_path)
    endpoint = f"ssl:{port}:privateKey={key}:certKey={cert}:interface={LOOPBACK}"
    server = chat_server(*options, port=port, endpoint=endpoint)
    context = ssl.create_default_context(cafile=str(cert))

    def open_client():
        raw = socket.create_connection((LOOPBACK, port), timeout=5)
        return connect(port, sock=context.wrap_socket(raw, server_hostname="localhost"))

    return server, open_client


@pytest.fixture(params=["tcp", "tls"])
def busy_server(request, tmp_path, chat_server, connect):
    """A server without flood control, and a function that opens a client."""
    if request.param == "tls":
        return tls_server(tmp_path, chat_server, connect, "--flood-rate", "0")
    port = free_port()
    return chat_server("--flood-rate", "0", port=port), lambda: connect(port)


def test_busy_senders_lose_nothing_and_are_read_again(busy_server):
    server, open_client = busy_server
    clients = []
    for nick in NICKS:
        client = open_client()
        client.expect("HELLO")
        client.register(nick)
        clients.append(client)
    for client in clients:
        client.sync()
    ann, ben, _cat = clients

    for i in range(ROUNDS):  # bounded: 120 lines in about 40 ms
        for nick, client in zip(NICKS, clients, strict=True):
            client.send(f"MSG {nick} {i}")
        time.sleep(0.001)
    # A sender that was kept busy still gets its DM and PING handled.
    ann.send("DM ben after the rush")
    ann.send("PING still-there")

    lobby = re.compile(r"MSG \S+ (\S+) \* (.*)")
    seen = []
    for client in clients:
        lines = []
        while sum(1 for line in lines if lobby.fullmatch(line)) < ROUNDS * len(NICKS):
            lines.append(client.readline(timeout=10))
        seen.append([line for line in lines if lobby.fullmatch(line)])
        if client is ann:
            lines += ann.sync()
            assert "PONG still-there" in lines
        if client in (ann, ben) and not any(line.endswith(DM) for line in lines):
            client.expect(lambda line: line.endswith(DM), timeout=10)
    assert seen[0] == seen[1] == seen[2], "everyone sees the lobby in one order"
    for nick in NICKS:
        own = [lobby.fullmatch(line).group(2) for line in seen[0]
               if lobby.fullmatch(line).group(1) == nick]
        assert own == [f"{nick} {i}" for i in range(ROUNDS)]
    # Nobody is left unread: each answers at once.
    for client in clients:
        assert client.sync() == []
    assert server.problems() == []


def test_a_tls_sender_that_leaves_with_a_line_waiting_closes_cleanly(
    tmp_path, chat_server, connect
):
    """Its TLS close needs the server to read its answer: the close completes
    at once, instead of an abort after --close-grace (3 s)."""
    # A 40 ms window: ann's line may be held while her BYE is read.
    _server, open_client = tls_server(
        tmp_path, chat_server, connect, "--flood-rate", "0", "--fanout-delay", "40"
    )
    ann, ben = open_client(), open_client()
    for client, nick in ((ann, "ann"), (ben, "ben")):
        client.expect("HELLO")
        client.register(nick)
    ben.sync()
    ben.send("MSG wake")  # out at once; the lobby is then quiet for 40 ms
    ann.expect(lambda line: line.endswith(" ben * wake"))
    ann.send(b"MSG last\r\nBYE\r\n")
    ann.expect("BYE quit")
    started = time.monotonic()
    raw = ann.sock.unwrap()  # our close_notify, then the server's
    raw.settimeout(5)
    while raw.recv(4096):
        pass  # a reset here (an abort) raises ConnectionResetError
    assert time.monotonic() - started < 2.5  # not the abort after the 3 s grace
