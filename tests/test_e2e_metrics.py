"""
C{--metrics} on the real C{twistd -n chat}: scraped over HTTP (urllib, a
real client) before and after some chat, the values move as they should.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serverproc import LOOPBACK, LineClient, ServerProcess, free_port, wait_until

pytestmark = pytest.mark.e2e

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# How long the metrics port's served connections are watched for a close
# that must not come (see its test).
NO_MORE_CLOSES_WINDOW = 0.2


def scrape(port: int) -> Values:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=5) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        assert "Server" not in answer.headers  # not Twisted's, naming its version
        text = answer.read().decode()
    values: Values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def get(values: Values, name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


def test_metrics_move_with_the_chat(tmp_path: Path,
                                    chat_server: Callable[..., ServerProcess],
                                    connect: Callable[..., LineClient]) -> None:
    metrics_port = free_port()
    server = chat_server("--db", str(tmp_path / "chat.sqlite3"),
                         "--metrics", f"tcp:{metrics_port}:interface={LOOPBACK}")
    before = scrape(metrics_port)
    assert get(before, "chat_users_online") == 0
    assert get(before, "chat_lobby_messages_total") == 0
    assert get(before, "process_resident_memory_bytes") > 0
    from twisted_chat import __version__
    assert get(before, "chat_build_info", version=__version__) == 1
    deadline = time.monotonic() + 5  # counted by the store's writer as it starts
    while ("chat_history_messages", ()) not in before:
        assert time.monotonic() < deadline, "no count of the history"
        time.sleep(0.05)
        before = scrape(metrics_port)
    assert get(before, "chat_history_messages") == 0

    alice, bob, carol = (connect(server.port) for _ in range(3))
    for client, nick in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        client.register(nick)
    for n in range(5):
        carol.send(f"MSG lobby {n}")
    carol.send("DM alice psst")
    alice.send("PAIR bob")
    bob.expect("INVITE alice")
    bob.send("ACCEPT alice")
    alice.expect("PAIRED bob")
    alice.send("MSG just us")
    for client in (alice, bob, carol):
        client.sync()
    during = scrape(metrics_port)
    assert get(during, "chat_users_online") == 3
    assert get(during, "chat_connections", state="paired") == 2
    assert get(during, "chat_connections", state="lobby") == 1
    assert get(during, "chat_pairs") == 1
    assert get(during, "chat_invitations_total") == 1
    assert get(during, "chat_pairings_total") == 1
    assert get(during, "chat_logins_total") == 3
    # (The server's start is checked with one connection: before is not 0.)
    assert get(during, "chat_accepted_connections_total", port="chat") == get(
        before, "chat_accepted_connections_total", port="chat") + 3
    assert get(during, "chat_websockets") == 0
    assert get(during, "chat_lobby_messages_total") == 5
    assert get(during, "chat_private_messages_total", kind="dm") == 1
    assert get(during, "chat_private_messages_total", kind="pair") == 1
    # Five lobby lines to three members at least, and more besides (user lists...).
    assert get(during, "chat_deliveries_total") >= 15
    assert get(during, "chat_sent_bytes_total") > get(before, "chat_sent_bytes_total")
    assert get(during, "chat_fanout_batch_lines_count") >= 1
    assert get(during, "chat_fanout_batch_lines_sum") >= 5
    assert get(during, "chat_fanout_duration_seconds_count") == get(
        during, "chat_fanout_batch_lines_count")

    carol.send("BYE")
    carol.rest()
    deadline = time.monotonic() + 5  # the commit comes within the store's interval
    while True:
        after = scrape(metrics_port)
        if get(after, "chat_history_messages") == 5:
            break
        assert time.monotonic() < deadline, "no commit reported"
        time.sleep(0.1)
    assert get(after, "chat_disconnects_total", reason="quit") == 1
    assert get(after, "chat_users_online") == 2
    assert get(after, "chat_history_backlog") == 0
    assert get(after, "chat_history_commit_duration_seconds_count") >= 1
    assert get(after, "process_cpu_seconds_total") >= get(before, "process_cpu_seconds_total")
    assert server.problems() == []
    # No access log: scrapes leave the server's log alone.
    assert "/metrics" not in server.log()


def test_accepted_connections_count_what_connects_and_nothing_at_start(
        chat_server: Callable[..., ServerProcess]) -> None:
    """chat_accepted_connections_total{port="chat"} is 0 after start-up,
    waited for by its log line (the server does not connect to its own
    port: what the other tests see there is their own wait, a connection);
    a port check that connects and closes without a word is counted, as
    docs/metrics.md says, and is no login."""
    metrics_port = free_port()
    server = chat_server("--metrics", f"tcp:{metrics_port}:interface={LOOPBACK}",
                         probe=False)
    server.wait_log(f"MetricsSite starting on {metrics_port}")
    before = scrape(metrics_port)
    assert get(before, "chat_accepted_connections_total", port="chat") == 0
    with socket.create_connection((LOOPBACK, server.port), timeout=5):
        pass
    wait_until(lambda: get(scrape(metrics_port), "chat_disconnects_total",
                           reason="disconnected") == 1, what="the port check's close")
    after = scrape(metrics_port)
    assert get(after, "chat_accepted_connections_total", port="chat") == 1
    assert get(after, "chat_logins_total") == 0


def test_the_metrics_port_answers_head_options_and_other_methods_as_documented(
        chat_server: Callable[..., ServerProcess]) -> None:
    """docs/security.md, "The metrics port (`--metrics`)": GET or HEAD
    /metrics (a health check's HEAD got 405 before), OPTIONS 200, other
    methods 405, other paths 404; Allow names what is taken."""
    import http.client

    metrics_port = free_port()
    chat_server("--db", ":memory:", "--metrics", f"tcp:{metrics_port}:interface={LOOPBACK}")
    connection = http.client.HTTPConnection(LOOPBACK, metrics_port, timeout=5)

    def ask(method: str, path: str = "/metrics") -> tuple[int, dict[str, str], bytes]:
        connection.request(method, path)
        answer = connection.getresponse()
        return answer.status, dict(answer.headers), answer.read()

    try:
        status, got, body = ask("GET")
        assert status == 200 and b"chat_users_online" in body
        status, headers, body = ask("HEAD")  # on the same connection: no body came
        assert (status, body) == (200, b"")
        assert headers["Content-Type"] == got["Content-Type"]
        status, headers, _ = ask("OPTIONS")
        assert (status, headers["Allow"]) == (200, "GET, HEAD, OPTIONS")
        for method in ("PUT", "DELETE", "PATCH"):
            status, headers, _ = ask(method)
            assert (status, headers["Allow"]) == (405, "GET, HEAD, OPTIONS"), method
        assert ask("GET", "/")[0] == 404
        assert ask("HEAD", "/other")[0] == 404
        assert ask("GET", "/metrics")[0] == 200  # the connection is still good
    finally:
        connection.close()


def test_no_metrics_port_unless_asked(chat_server: Callable[..., ServerProcess]) -> None:
    server = chat_server("--db", ":memory:")
    server.wait_log("chat server 'twisted-chat' starting")
    assert "MetricsSite starting" not in server.log()


def test_one_address_holding_the_metrics_port_leaves_others_a_scrape(
        chat_server: Callable[..., ServerProcess]) -> None:
    """rev13-attack 3: 8 connections held from 127.0.0.2 took the port, and
    every scrape from 127.0.0.1 failed.  Now 2 of them are served, and the
    scrape gets its 200; keep-alive scrapes on one connection get 4
    answers, the last saying Connection: close."""
    import http.client
    import socket

    from twisted_chat.server.metrics.metricsport import (
        MAX_METRICS_PER_ADDRESS,
        MAX_METRICS_REQUESTS,
    )

    metrics_port = free_port()
    chat_server("--db", ":memory:", "--metrics", f"tcp:{metrics_port}:interface={LOOPBACK}")
    held = [socket.create_connection((LOOPBACK, metrics_port), timeout=5,
                                     source_address=("127.0.0.2", 0)) for _ in range(8)]
    try:
        # The refused ones are closed at their accept: b"" (or a reset).
        refused = 0
        for conn in held[MAX_METRICS_PER_ADDRESS:]:
            with contextlib.suppress(ConnectionResetError):
                assert conn.recv(1) == b""
            refused += 1
        assert refused == 8 - MAX_METRICS_PER_ADDRESS
        assert get(scrape(metrics_port), "chat_users_online") == 0
        client = http.client.HTTPConnection(LOOPBACK, metrics_port, timeout=5)
        closes = []
        for _ in range(MAX_METRICS_REQUESTS):
            client.request("GET", "/metrics")
            answer = client.getresponse()
            assert answer.status == 200
            answer.read()
            closes.append(answer.headers.get("Connection"))
        assert closes == [None] * (MAX_METRICS_REQUESTS - 1) + ["close"]
        client.close()
    finally:
        for conn in held:
            conn.close()


def test_connections_held_from_several_loopback_addresses_give_way_to_a_scrape(
        chat_server: Callable[..., ServerProcess]) -> None:
    """rev15-sec 3: every 127.x address reaches a port on loopback, so four
    of them, two connections each with a partial request, held all 8 and
    no scrape from 127.0.0.1 got through (0 of 26).  Once they have been
    idle for METRICS_IDLE, the scrape takes the place of the oldest."""
    from twisted_chat.server.metrics.metricsport import (
        MAX_METRICS_CONNECTIONS,
        MAX_METRICS_PER_ADDRESS,
        METRICS_IDLE,
    )

    metrics_port = free_port()
    chat_server("--db", ":memory:", "--metrics", f"tcp:{metrics_port}:interface={LOOPBACK}")
    held = []
    try:
        for n in range(MAX_METRICS_CONNECTIONS):
            conn = socket.create_connection(
                (LOOPBACK, metrics_port), timeout=5,
                source_address=(f"127.0.0.{40 + n // MAX_METRICS_PER_ADDRESS}", 0))
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ended
            held.append(conn)
        time.sleep(METRICS_IDLE + 0.3)  # (an e2e test: the server's own clock)
        for _ in range(3):
            assert get(scrape(metrics_port), "chat_users_online") == 0
        # The oldest held one was aborted for the first (a reset, or b"");
        # each scrape's connection closed after its answer left room for
        # the next.
        held[0].settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert held[0].recv(1) == b""
    finally:
        for conn in held:
            conn.close()


def test_held_metrics_connections_leave_the_chat_its_descriptors(
        tmp_path: Path, chat_server: Callable[..., ServerProcess]) -> None:
    """A peer holding 150 connections to the metrics port of a server with
    200 descriptors and --max-clients 100 (from 75 addresses, two each:
    the per-address share is 2): it gets MAX_METRICS_CONNECTIONS,
    the rest are closed at once, and 60 chat users are all greeted (before,
    the metrics port took the descriptors and Twisted closed chat users
    without a word); a scrape still works once the holder lets go."""
    import select
    import socket
    import stat

    from tests.serverproc import TWISTD
    from twisted_chat.server.metrics.metricsport import MAX_METRICS_CONNECTIONS

    limited = tmp_path / "twistd-200"  # twistd with 200 descriptors, hard limit too
    limited.write_text(
        f"#!{sys.executable}\n"
        "import os, resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))\n"
        f"os.execv({TWISTD!r}, [{TWISTD!r}, *sys.argv[1:]])\n")
    limited.chmod(limited.stat().st_mode | stat.S_IXUSR)
    metrics_port = free_port()
    server = chat_server("--db", ":memory:", "--max-clients", "100",
                         "--metrics", f"tcp:{metrics_port}:interface={LOOPBACK}",
                         twistd=str(limited), this_tree=True)
    held: list[socket.socket] = []
    chats: list[socket.socket] = []
    try:
        for n in range(150):  # from 75 addresses: each gets MAX_METRICS_PER_ADDRESS
            held.append(socket.create_connection(
                (LOOPBACK, metrics_port), timeout=5,
                source_address=(f"127.0.1.{1 + n // 2}", 0)))
        closed: set[socket.socket] = set()

        def closes_seen(wait: float = 0.0) -> int:
            # A socket the server closed is readable: b"" (or a reset).
            # One served stays unreadable (the peer sends no request).
            readable, _, _ = select.select([c for c in held if c not in closed], [], [], wait)
            for conn in readable:
                with contextlib.suppress(ConnectionResetError):
                    assert conn.recv(1) == b"", "the metrics port answered no request"
                closed.add(conn)
            return len(closed)

        wait_until(lambda: closes_seen() >= len(held) - MAX_METRICS_CONNECTIONS,
                   what=lambda: f"the extra connections closed (closed {len(closed)})")
        # Something that must not happen: one of the served closed too.
        # The server closes the extra ones as it accepts them, so a wrong
        # close would be seen with them; this window is for good measure.
        closes_seen(wait=NO_MORE_CLOSES_WINDOW)
        assert len(held) - len(closed) == MAX_METRICS_CONNECTIONS
        greeted = 0
        for _ in range(60):
            conn = socket.create_connection((LOOPBACK, server.port), timeout=5)
            chats.append(conn)
            greeted += conn.recv(100).startswith(b"HELLO")
        assert greeted == 60
    finally:
        for conn in held + chats:
            conn.close()
    deadline = time.monotonic() + 5
    while True:  # the server sees the closes on its next turns
        try:
            assert get(scrape(metrics_port), "chat_users_online") == 0
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert "EMFILE" not in server.log()
    assert server.problems() == []
