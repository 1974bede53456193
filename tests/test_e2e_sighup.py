"""
SIGHUP never stops the server (rev14-ops LOW 1): closing the terminal of a
C{twistd -n}, or a C{kill -HUP} meant as "reload", ended it as SIGKILL
would (exit status 129, no C{BYE shutdown}, the database's C{-wal} left
for recovery).  Now it reloads what can be reloaded (the TLS certificates:
tests/test_e2e_tls_reload.py) and the server goes on, in the foreground and
as a daemon.  Also once the terminal it ran in is gone (its log lines then
fail to write, with EIO): it goes on serving, idle, and stops on SIGTERM.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.serverproc import (
    LOOPBACK,
    TWISTD,
    LineClient,
    ServerProcess,
    free_port,
    tcp_listening,
    tree_environment,
    wait_until,
)

pytestmark = pytest.mark.e2e

SAID = "received SIGHUP: nothing to reload (no ssl: port); the server goes on"


def test_sighup_leaves_the_server_and_its_users_connected(tmp_path: Path) -> None:
    goes_on_after(signal.SIGHUP, SAID, ServerProcess(tmp_path, ["--db", "chat.sqlite3"]))


def goes_on_after(sig: signal.Signals, said: str, server: ServerProcess) -> None:
    """C{server}, sent C{sig}, logs C{said}, and its users go on chatting
    (also with one who comes after) until SIGTERM's C{BYE shutdown}."""
    server.start()
    try:
        client = LineClient(server.port)
        client.register("watcher")
        server.proc.send_signal(sig)  # type: ignore[union-attr]
        server.wait_log(said)
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
    assert not (server.workdir / "chat.sqlite3-wal").exists()
    assert server.problems() == []


def test_a_daemon_goes_on_after_sighup(tmp_path: Path) -> None:
    port = free_port()
    pidfile, logfile = tmp_path / "chat.pid", tmp_path / "chat.log"
    subprocess.run(
        [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "chat",
         "--port", f"tcp:{port}:interface={LOOPBACK}", "--db", ":memory:"],
        cwd=tmp_path, env=tree_environment(), stdin=subprocess.DEVNULL, check=True, timeout=30)
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


def _stat(pid: int) -> list[str]:
    """The fields of C{/proc/PID/stat} after the command's name: [0] is the
    state, [3] the session, [4] the controlling terminal (0: none), [11] and
    [12] user and system time in clock ticks."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _cpu_ticks(pid: int) -> int:
    fields = _stat(pid)
    return int(fields[11]) + int(fields[12])


def test_the_server_goes_on_when_its_terminal_goes_away(tmp_path: Path) -> None:
    """
    C{twistd -n chat} in a terminal of its own, logging to it (no
    C{--logfile}), and the terminal goes away (an SSH session closed): the
    kernel hangs the terminal up and sends SIGHUP to its session's leader,
    twistd.  The server goes on: old and new users chat, the log lines it
    can no longer write (EIO) neither end it nor make it spin, and SIGTERM
    still stops it with C{BYE shutdown}.
    """
    port = free_port()
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "chat", "--port", f"tcp:{port}:interface={LOOPBACK}",
             "--exempt", LOOPBACK, "--db", ":memory:"],
            cwd=tmp_path, env=tree_environment(),
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            # After setsid: the terminal becomes the new session's controlling one.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    finally:
        os.close(slave)
    said = b""

    def read_terminal() -> bytes:
        nonlocal said
        while select.select([master], [], [], 0)[0]:
            said += os.read(master, 65536)
        return said

    closed = False
    try:
        wait_until(lambda: b" starting on " in read_terminal() and tcp_listening(port),
                   what=lambda: f"the server to listen; its terminal: {said[-1000:]!r}")
        session, tty = _stat(proc.pid)[3:5]
        assert (int(session), int(tty) != 0) == (proc.pid, True)  # leads, with a terminal
        alice = LineClient(port)
        alice.register("alice")
        read_terminal()
        os.close(master)
        closed = True
        # The hangup takes the terminal from the session, then signals it.
        wait_until(lambda: _stat(proc.pid)[4] == "0", what="the terminal's hangup")
        bob = LineClient(port)
        bob.register("bob")  # logged, to a terminal that is no more
        bob.send("MSG still here")
        assert alice.expect("MSG ").endswith(" bob * still here")
        assert proc.poll() is None
        pending = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                   if line.startswith(("SigPnd:", "ShdPnd:"))]
        assert [int(line.split()[1], 16) & 1 for line in pending] == [0, 0]  # SIGHUP taken
        ticks = _cpu_ticks(proc.pid)
        time.sleep(2)  # idle: how much CPU does it use meanwhile?
        used = (_cpu_ticks(proc.pid) - ticks) / os.sysconf("SC_CLK_TCK")
        assert used < 0.5, f"{used:.2f} s of CPU in 2 s idle"
        carol = LineClient(port)
        carol.register("carol")
        carol.send("MSG and me")
        assert bob.expect(lambda line: line.startswith("MSG ") and " carol " in line
                          ).endswith(" carol * and me")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
        assert code in (0, -signal.SIGTERM)
        assert alice.rest()[-1].startswith("BYE shutdown")
    finally:
        if not closed:
            os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
