"""
SIGHUP never stops the server (rev14-ops LOW 1): closing the terminal of a
C{twistd -n}, or a C{kill -HUP} meant as "reload", ended it as SIGKILL
would (exit status 129, no C{BYE shutdown}, the database's C{-wal} left
for recovery).  Now it reloads what can be reloaded (the TLS certificates:
tests/test_e2e_tls_reload.py) and the server goes on, in the foreground and
as a daemon.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.serverproc import (
    LOOPBACK,
    TWISTD,
    LineClient,
    ServerProcess,
    free_port,
    tcp_listening,
    wait_until,
)

pytestmark = pytest.mark.e2e

SAID = "received SIGHUP: nothing to reload (no ssl: port); the server goes on"


def test_sighup_leaves_the_server_and_its_users_connected(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, ["--db", "chat.sqlite3"]).start()
    try:
        client = LineClient(server.port)
        client.register("watcher")
        server.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        server.wait_log(SAID)
        assert server.proc.poll() is None  # type: ignore[union-attr]
        client.send("MSG still here")
        assert client.expect("MSG ").endswith(" watcher * still here")
        newcomer = LineClient(server.port)
        newcomer.register("newcomer")
        newcomer.close()
    finally:
        code = server.stop()
    assert code in (0, -signal.SIGTERM)
    assert client.rest()[-1].startswith("BYE shutdown")
    assert not (tmp_path / "chat.sqlite3-wal").exists()
    assert server.problems() == []


def test_a_daemon_goes_on_after_sighup(tmp_path: Path) -> None:
    port = free_port()
    pidfile, logfile = tmp_path / "chat.pid", tmp_path / "chat.log"
    subprocess.run(
        [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "chat",
         "--port", f"tcp:{port}:interface={LOOPBACK}", "--db", ":memory:"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, check=True, timeout=30)
    pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(),
                         what="the pid file"))
    try:
        wait_until(lambda: tcp_listening(port), what="the daemon to listen")
        os.kill(pid, signal.SIGHUP)
        wait_until(lambda: SAID in logfile.read_text(), what="the SIGHUP line in the log")
        client = LineClient(port)
        client.register("after")  # still serving
        client.close()
        os.kill(pid, 0)  # still there
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not pidfile.exists(), what="the daemon to stop")
    assert "Traceback" not in logfile.read_text()
