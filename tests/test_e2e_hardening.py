"""
Issue 14 on the real C{twistd -n chat}: the descriptor limit at start
(14.6), the log level (14.10), and the per-address limits against clients
from addresses in 127.0.0.0/8 that are not exempt (14.3, 14.7).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK, TWISTD, LineClient, ServerProcess, tree_environment

pytestmark = pytest.mark.e2e

PRLIMIT = shutil.which("prlimit")


def run_limited(tmp_path: Path, nofile: int, *args: str) -> subprocess.Popen[str]:
    assert PRLIMIT is not None
    return subprocess.Popen(
        [PRLIMIT, f"--nofile={nofile}:{nofile}", TWISTD, "-n", "--pidfile=", "chat",
         "--db", ":memory:", "--port", f"tcp:0:interface={LOOPBACK}", *args],
        cwd=tmp_path, env=tree_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(PRLIMIT is None, reason="no prlimit here")
def test_a_chosen_max_clients_over_the_descriptor_limit_refuses_to_start(tmp_path: Path):
    proc = run_limited(tmp_path, 256, "--max-clients", "1000")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in out + err
    assert err.startswith("twistd chat: --max-clients 1000 needs 1080 file descriptors"), err
    assert "lower --max-clients to at most 176" in err


@pytest.mark.skipif(PRLIMIT is None, reason="no prlimit here")
def test_the_default_max_clients_is_lowered_loudly_to_fit(tmp_path: Path):
    proc = run_limited(tmp_path, 256)
    try:
        deadline = time.monotonic() + 20
        seen = ""
        assert proc.stdout is not None
        while "starting on" not in seen and time.monotonic() < deadline:
            seen += proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    said = seen + out + err
    assert "serving at most 176 connections" in said, said
    assert "WARNING" in err


def test_debug_lines_are_not_logged_unless_asked(tmp_path: Path):
    for level, expected in (("info", False), ("debug", True)):
        server = ServerProcess(tmp_path, ["--db", ":memory:", "--log-level", level]).start()
        try:
            client = LineClient(server.port)
            client.register(f"u{level}")
            client.send("BYE")
            assert client.closed()
            client.close()
        finally:
            server.stop()
        log = server.log()
        assert ("connection from" in log) is expected, (level, log[-2000:])
        assert f"u{level} is ready" in log


def test_the_log_level_applies_to_twisteds_own_lines_too(tmp_path: Path):
    """--log-level warn: no info line at all, twistd's and Twisted's own
    included (its start-up lines, the web site's "Starting factory <...>",
    "Received SIGTERM"), where the filter covered only the server's
    (rev12 newuser #7); at info, twistd's lines are there, and still no
    "Starting factory" for the web site."""
    from tests.serverproc import free_port

    for level in ("warn", "info"):
        web = free_port()
        server = ServerProcess(tmp_path, ["--db", ":memory:", "--log-level", level, "--web",
                                          f"tcp:{web}:interface=127.0.0.1"]).start()
        try:
            client = LineClient(server.port)
            client.register(f"u{level}")
        finally:
            server.stop()
        log = server.log()
        assert "Starting factory" not in log, log
        if level == "warn":
            assert "#info]" not in log and "starting up" not in log, log
        else:
            assert "starting up" in log and "Received SIGTERM" in log, log
            assert f"u{level} is ready" in log


def from_address(port: int, source: str) -> LineClient:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((LOOPBACK, port))
    return LineClient(port, sock=sock)


def test_reconnecting_does_not_reset_the_lobby_limit(chat_server):
    """From a non-exempt address, reconnect loops get no more into the lobby
    than the address's burst and rate, where each new connection used to
    bring a fresh flood bucket (14.3)."""
    server = chat_server("--ip-lobby-rate", "2", "--ip-lobby-burst", "5",
                         "--ip-register-rate", "0")
    watcher = LineClient(server.port)
    watcher.register("watcher")
    started = time.monotonic()
    for n in range(6):
        spammer = from_address(server.port, "127.0.20.1")
        spammer.send(f"NICK spam{n}\r\n" + "MSG spam\r\n" * 10 + "BYE")
        assert spammer.closed()
        spammer.close()
    took = time.monotonic() - started
    got = [line for line in watcher.sync() if line.endswith(" * spam")]
    assert len(got) <= 5 + 2 * took + 1, (len(got), took)
    assert server.problems() == []


def test_connections_without_a_nick_do_not_lock_out_users(chat_server):
    """Ten addresses hold connections that never choose a nick; users from
    elsewhere still get in (14.7)."""
    server = chat_server("--max-clients", "200", probe=False)
    held = []
    for a in range(10):
        for _ in range(20):
            s = socket.socket()
            s.settimeout(2)
            s.bind((f"127.0.21.{a + 1}", 0))
            with contextlib.suppress(OSError):
                s.connect((LOOPBACK, server.port))
            held.append(s)
    try:
        for i in range(10):
            user = from_address(server.port, f"127.0.22.{i + 1}")
            user.expect("NICK")
            user.send(f"NICK user{i}")
            user.expect(f"READY user{i}")
            user.close()
    finally:
        for s in held:
            s.close()
    assert server.problems() == []
