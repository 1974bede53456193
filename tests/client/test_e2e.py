"""
The real client against the real server (C{twistd -n chat} on a free loopback
port), with stdin piped.  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import LOOPBACK, LineClient, ServerProcess, free_port, tcp_rows, wait_until

from .clientproc import PipedClient, address, run_client

pytestmark = pytest.mark.e2e

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TIME = r"\[\d\d:\d\d\]"


@pytest.fixture
def piped() -> Iterator[Callable[[list[str]], PipedClient]]:
    started: list[PipedClient] = []

    def start(args: list[str]) -> PipedClient:
        client = PipedClient(args)
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()


@pytest.fixture
def alice_online(
    bob_online: tuple[ServerProcess, LineClient],
    piped: Callable[[list[str]], PipedClient],
) -> tuple[ServerProcess, LineClient, PipedClient]:
    """A server, C{bob} on a raw connection, and a piped client C{alice} that bob saw join."""
    server, bob = bob_online
    alice = piped(["--nick", "alice", *address(server.port)])
    assert re.fullmatch(rf"JOINED {TS} alice", bob.readline())
    return server, bob, alice


def assert_clean_failure(err: str, *fragments: str) -> None:
    """One clear line on stderr, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


def test_a_40_line_report_arrives_whole_under_the_default_flood_control(
    bob_online: tuple[ServerProcess, LineClient],
) -> None:
    """Written at once, 22 of the 40 lines were dropped and the script was
    cut off with BYE flood (the server's defaults: 10 lines/s, bursts of 20)."""
    server, watcher = bob_online
    report = "".join(f"report line {n}\n" for n in range(1, 41))
    args = ["--nick", "reporter", "--no-history", *address(server.port)]
    result = run_client(args, report, timeout=40)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert re.fullmatch(rf"JOINED {TS} reporter", watcher.readline())
    for n in range(1, 41):
        assert re.fullmatch(rf"MSG {TS} reporter \* report line {n}", watcher.readline())
    assert re.fullmatch(rf"LEFT {TS} reporter quit", watcher.readline())
    assert "too fast" not in result.stdout


def test_piped_client_sends_a_message_and_quits(
    bob_online: tuple[ServerProcess, LineClient],
) -> None:
    server, watcher = bob_online
    result = run_client(["--nick", "alice", *address(server.port)], "hello, world  \n")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert re.fullmatch(rf"JOINED {TS} alice", watcher.readline())
    assert re.fullmatch(rf"MSG {TS} alice \* hello, world  ", watcher.readline())
    assert re.fullmatch(rf"LEFT {TS} alice quit", watcher.readline())
    out = result.stdout.splitlines()
    assert any(re.fullmatch(rf"{TIME} <alice> hello, world  ", line) for line in out), out
    assert out[-1] == "* Goodbye."
    assert "\x1b" not in result.stdout


def test_commands_from_a_pipe(bob_online: tuple[ServerProcess, LineClient]) -> None:
    server, bob = bob_online
    result = run_client(
        [*address(server.port)],  # no --nick: the first line is the nickname
        "alice\n@bob psst\n/users\n/frob\n/quit see you\nnever sent\n",
    )
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"JOINED {TS} alice", bob.readline())
    assert re.fullmatch(rf"MSG {TS} alice bob psst", bob.readline())
    assert re.fullmatch(rf"LEFT {TS} alice quit see you", bob.readline())
    out = result.stdout
    assert "* Choose a nickname" in out
    assert re.search(rf"{TIME} \(private\) you -> bob: psst", out)
    assert "  alice (you)  in the lobby" in out and "  bob          in the lobby" in out
    assert "! Unknown command /frob." in out
    assert "never sent" not in out


def test_client_shows_messages_from_others(
    alice_online: tuple[ServerProcess, LineClient, PipedClient],
) -> None:
    _server, bob, alice = alice_online
    bob.send("MSG hi alice")
    bob.send("DM alice just for you \u202egnp.exe")
    bob.sync()  # the server has sent both to alice before answering this
    code, out, err = alice.finish()
    assert code == 0, err
    assert re.search(rf"{TIME} \* alice joined", out) is None  # no JOINED for oneself
    assert re.search(rf"{TIME} <bob> hi alice\n", out), out
    # Bidi overrides from another user are shown as escapes, not obeyed.
    assert re.search(rf"{TIME} \(private\) bob -> you: just for you \\u202egnp.exe\n", out)
    assert "\u202e" not in out


def test_nick_taken_in_a_script_fails_clearly(
    chat_server: Callable[..., ServerProcess], connect: Callable[..., LineClient]
) -> None:
    server = chat_server()
    connect(server.port).register("alice")
    result = run_client(["--nick", "alice", *address(server.port)], "hello\n")
    assert result.returncode == 1
    assert_clean_failure(result.stderr, "The nickname alice is already taken")


def test_refused_connection_exits_non_zero_with_a_clear_message() -> None:
    port = free_port()  # nothing listens there
    result = run_client(["--nick", "alice", LOOPBACK, str(port)], "hello\n")
    assert result.returncode == 1
    assert_clean_failure(
        result.stderr, f"Cannot connect to {LOOPBACK}:{port}", "connection refused"
    )
    assert result.stdout == ""


def test_a_unix_socket(
    tmp_path: Path, chat_server: Callable[..., ServerProcess], connect: Callable[..., LineClient]
) -> None:
    """Review rev12 #8: the server listens on --port unix:PATH (README), and
    the client could not connect there ("invalid hostname")."""
    sock = tmp_path / "chat.sock"
    server = chat_server("--port", f"unix:{sock}")
    wait_until(sock.exists)
    bob = connect(server.port)
    bob.register("bob")
    result = run_client(["--nick", "alice", "--no-history", f"unix:{sock}"],
                        "hello over a unix socket\n")
    assert result.returncode == 0, result.stderr
    seen = "\n".join(bob.sync())
    assert re.search(rf"^MSG {TS} alice \* hello over a unix socket$", seen, re.M), seen
    # Nothing listens at a path: said as such.
    missing = run_client(["--nick", "alice", f"unix:{tmp_path}/none.sock"], "hello\n")
    assert missing.returncode == 1
    assert_clean_failure(missing.stderr, f"Cannot connect to unix:{tmp_path}/none.sock: no "
                         "such socket (is the server listening on that path?).")


def test_server_shutdown_is_reported(
    alice_online: tuple[ServerProcess, LineClient, PipedClient],
) -> None:
    server, _bob, alice = alice_online
    server.stop(signal.SIGTERM)
    code, _out, err = alice.finish()
    assert code == 1
    # Said once (the server's own text says the same thing).
    assert err == "twisted-chat: The server is shutting down.\n"


def unread_by_server(port: int) -> int:
    """The bytes the kernel holds unread for the server (its established
    IPv4 connections on C{port}): the receive queues in /proc/net/tcp."""
    return sum(int(fields[4].split(":")[1], 16)
               for fields in tcp_rows(port, "01", ("/proc/net/tcp",)))  # ESTABLISHED


@pytest.mark.parametrize("unread", [False, True], ids=["clean-close", "reset"])
def test_dropped_connection_is_reported(
    unread: bool,
    alice_online: tuple[ServerProcess, LineClient, PipedClient],
) -> None:
    # Killed with nothing unread, the server's kernel closes cleanly (FIN);
    # killed with bytes it has not read, it resets the connection (RST). The
    # client notices by itself: its input is still open. (When its input ends
    # first, its BYE meets a dead server: the unit tests cover that order.)
    server, _bob, alice = alice_online
    if unread:
        os.kill(server.pid, signal.SIGSTOP)
        try:
            alice.type("this line is never read")
            wait_until(lambda: unread_by_server(server.port) > 0, timeout=5,
                       what="the line in the stopped server's receive buffer")
        finally:
            server.kill()
    else:
        server.kill()
    alice.proc.wait(timeout=10)
    code, _out, err = alice.finish()
    assert code == 1
    assert_clean_failure(err, f"The connection to {LOOPBACK}:{server.port} was lost.")


def test_no_history_keeps_a_scripts_output_quiet(
    bob_online: tuple[ServerProcess, LineClient],
) -> None:
    server, bob = bob_online
    bob.send("MSG an old message")
    bob.sync()
    quiet = run_client(["--no-history", "--nick", "robot", *address(server.port)], "done\n")
    assert quiet.returncode == 0, quiet.stderr
    assert "an old message" not in quiet.stdout
    assert re.search(rf"{TIME} <robot> done\n", quiet.stdout)
    noisy = run_client(["--nick", "robot", *address(server.port)], "done again\n")
    assert re.search(rf"{TIME} <bob> an old message\n", noisy.stdout)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback port that accepts connections (in the kernel) and says nothing."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        sock.listen(8)
        yield sock


def test_a_silent_listener_times_out(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    started = time.monotonic()
    result = run_client(["--timeout", "1", "--nick", "alice", LOOPBACK, str(port)], "hi\n")
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert_clean_failure(
        result.stderr,
        f"No greeting from {LOOPBACK}:{port} within 1 seconds",
        "If it uses TLS, add --tls.",
    )


def test_a_tls_port_without_tls_gets_a_hint_at_once(
    tmp_path: Path, chat_server: Callable[..., ServerProcess]
) -> None:
    server, _cert = _tls_server(tmp_path, chat_server)
    started = time.monotonic()
    result = run_client(["--nick", "alice", "localhost", str(server.port)], "hi\n")
    assert time.monotonic() - started < 10  # not the 15 s greeting timeout
    assert result.returncode == 1
    assert_clean_failure(result.stderr, "If it uses TLS, add --tls.")


def test_a_server_answering_in_tls_is_recognised(listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    def answer_with_a_tls_alert() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"\x15\x03\x01\x00\x02\x02\x46")
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                conn.recv(100)

    thread = threading.Thread(target=answer_with_a_tls_alert, daemon=True)
    thread.start()
    result = run_client(["--nick", "alice", LOOPBACK, str(port)], "hi\n")
    thread.join(10)
    assert result.returncode == 1
    assert_clean_failure(result.stderr, "answered in TLS", "add --tls")


def test_sigint_before_ready_exits_non_zero(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    client = PipedClient(["--nick", "alice", LOOPBACK, str(port)])
    listener.settimeout(10)
    try:
        conn, _ = listener.accept()  # the client is connected, waiting for HELLO
        with conn:
            client.proc.send_signal(signal.SIGINT)
            code, _out, err = client.finish()
    finally:
        client.kill()
    assert code == 130, err
    assert_clean_failure(err, "Interrupted")


def test_sigint_in_a_script_says_goodbye_and_exits_non_zero(
    alice_online: tuple[ServerProcess, LineClient, PipedClient],
) -> None:
    _server, bob, alice = alice_online
    alice.proc.send_signal(signal.SIGINT)
    assert re.fullmatch(rf"LEFT {TS} alice quit", bob.expect("LEFT"))
    code, out, err = alice.finish()
    assert code == 130, (out, err)
    assert_clean_failure(err, "Interrupted")


def _tls_server(tmp_path: Path, chat_server: Callable[..., ServerProcess]) -> Any:
    from tests.test_e2e_tls import self_signed

    key, cert = self_signed(tmp_path)
    port = free_port()
    server = chat_server(
        port=port,
        endpoint=f"ssl:{port}:privateKey={key}:certKey={cert}:interface={LOOPBACK}",
    )
    return server, cert


def test_tls_with_the_servers_certificate(
    tmp_path: Path, chat_server: Callable[..., ServerProcess]
) -> None:
    server, cert = _tls_server(tmp_path, chat_server)
    result = run_client(
        ["--nick", "alice", "--tls", "--ca", str(cert), "localhost", str(server.port)],
        "over TLS\n",
    )
    assert result.returncode == 0, result.stderr
    assert re.search(rf"{TIME} <alice> over TLS\n", result.stdout)


def test_tls_refused_when_the_certificate_is_not_trusted(
    tmp_path: Path, chat_server: Callable[..., ServerProcess]
) -> None:
    server, _cert = _tls_server(tmp_path, chat_server)
    result = run_client(["--nick", "alice", "--tls", "localhost", str(server.port)], "hi\n")
    assert result.returncode == 1
    assert_clean_failure(
        result.stderr, f"TLS connection to localhost:{server.port} refused", "--ca FILE"
    )


def test_tls_to_a_plain_server_fails_clearly(
    chat_server: Callable[..., ServerProcess],
) -> None:
    server = chat_server()
    result = run_client(["--nick", "alice", "--tls", *address(server.port)], "hi\n")
    assert result.returncode == 1
    assert_clean_failure(result.stderr, "refused", "does the server use TLS on that port?")


def test_lobby_lines_missed_while_paired_are_shown_under_a_heading(
    alice_online: tuple[ServerProcess, LineClient, PipedClient],
    connect: Callable[..., LineClient],
) -> None:
    server, bob, alice = alice_online
    carol = connect(server.port)
    carol.register("carol")
    bob.send("PAIR alice")
    bob.expect("PENDING alice")
    alice.type("/accept bob")
    bob.expect("PAIRED alice")
    carol.send("MSG did anyone see alice?")
    carol.sync()
    bob.send("UNPAIR")
    bob.expect("UNPAIRED alice left")
    bob.sync()  # alice has been sent UNPAIRED and the replay before her BYE
    code, out, err = alice.finish()
    assert code == 0, err
    lines = out.splitlines()
    back = lines.index("* bob left the private conversation. You are back in the lobby.")
    assert lines[back + 1] == "* While you were away, the lobby said:"
    assert re.fullmatch(rf"{TIME} <carol> did anyone see alice\?", lines[back + 2])
    assert lines[back + 3].endswith("people online:")
