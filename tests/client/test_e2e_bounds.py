"""
The real client against a flooding loopback peer: what it holds stays bounded
(review rev3cli M and E), and a TAB pasted into a real terminal (tmux) is text
(review rev3cli R).  Every wait is bounded.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.serverproc import LOOPBACK, LineClient, ServerProcess

from .clientproc import CLIENT, REPO, client_env
from .tmuxpane import Pane

pytestmark = pytest.mark.e2e

MIB = 1 << 20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@contextmanager
def client_of_a_peer(
    hello: bytes, stdout: int | None = subprocess.PIPE
) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    """A piped client (--nick eve) connected to a peer that sends C{hello} after NICK."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen(1)
        listener.settimeout(15)
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            [*CLIENT, "--nick", "eve", "--no-history", LOOPBACK, str(port)],
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env=client_env(),
        )
        try:
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"HELLO chat/1 peer\r\nNICK\r\n")
                conn.settimeout(15)
                assert conn.recv(100).startswith(b"PING")  # the client's probe first
                conn.sendall(hello)
                yield proc, conn
        finally:
            proc.kill()
            if proc.stdin is not None and proc.stdin.closed:
                proc.stdin = None  # the test ended the input
            proc.communicate(timeout=10)


def offer(write: Callable[[bytes], int], fd: int, chunk: bytes, limit: int) -> int:
    """Write C{chunk}s to C{fd} until C{limit} bytes, or until it blocks for 2 s."""
    written = 0
    deadline = time.monotonic() + 60
    while written < limit and time.monotonic() < deadline:
        if not select.select([], [fd], [], 2.0)[1]:
            break  # blocked for 2 s: the other end stopped reading
        written += write(chunk)
    return written


def test_a_scripts_stdin_is_read_only_as_fast_as_its_lines_go() -> None:
    # `seq 1 3000000 | client`: the pacer sends 5 lines a second; the client
    # reads stdin only while fewer than 1000 lines wait.
    limit = 64 * MIB
    with client_of_a_peer(b"READY eve\r\nUSER eve lobby\r\nUSERS 1\r\n", subprocess.DEVNULL) as (
        proc,
        _conn,
    ):
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        os.set_blocking(fd, False)
        chunk = b"".join(b"log line %08d\n" % i for i in range(4096))
        written = offer(lambda data: os.write(fd, data), fd, chunk, limit)
        rss = rss_kib(proc.pid)
    # The pipe (64 KiB), one read and 1000 lines: far under what was offered.
    assert written < 4 * MIB, written
    assert rss < 120 * 1024, rss


def test_a_client_whose_stdout_is_not_read_stops_reading_the_server() -> None:
    # `client | sleep 60`: stdout is a pipe nobody reads.  The client stops
    # reading the server once stdout's buffer is full, so the server's sends
    # block (and its --sendq would drop the client) instead of the client
    # holding everything in memory.
    limit = 160 * MIB
    with client_of_a_peer(b"READY eve\r\nUSER eve lobby\r\nUSERS 1\r\n") as (proc, conn):
        line = b"MSG 2026-11-22T14:03:05.123Z bob * " + b"x" * 4000 + b"\r\n"
        conn.setblocking(False)
        sent = offer(conn.send, conn.fileno(), line * 64, limit)
        rss = rss_kib(proc.pid)
    # Kernel buffers on loopback (up to 4 MiB + 32 MiB here) and the 64 KiB
    # pipe and buffers: far under what was offered.
    assert sent < limit // 2, sent
    assert rss < 120 * 1024, rss


@pytest.mark.parametrize("bracketed", [True, False], ids=["bracketed", "plain"])
def test_a_tab_in_text_pasted_into_a_real_terminal_is_sent_as_pasted(
    bracketed: bool, bob_online: tuple[ServerProcess, LineClient], pane: Callable[..., Pane]
) -> None:
    # tmux's paste-buffer -p marks the paste (the client asks for bracketed
    # paste); without -p the paste is one read with the TAB inside it.  bob
    # is online, so "bo<TAB>" would complete to "bob: " as typed keys.
    server, bob = bob_online
    term = pane([*CLIENT, "--nick", "alice", LOOPBACK, str(server.port)])
    term.wait_row(r"^alice>$")
    bob.expect("JOINED")
    term.tmux("set-buffer", "-b", "tabs", "name\tscore\nbo\t12\n")
    term.tmux("paste-buffer", "-b", "tabs", "-t", "chat", *(["-p"] if bracketed else []))
    first = bob.expect(lambda line: line.startswith("MSG") and " alice " in line)
    second = bob.expect(lambda line: line.startswith("MSG") and " alice " in line)
    assert first.endswith(" alice * name\tscore"), first
    assert second.endswith(" alice * bo\t12"), second
    term.enter("/quit")
    term.wait_row(r"^EXIT=0$")



def test_a_script_whose_stdout_is_read_late_ends_well_with_all_its_output() -> None:
    # `client | (sleep 12; cat)`: stdout is full when the script's input ends.
    # The client still reads the server's answer to its BYE (exit 0, not "No
    # answer ... to the goodbye"), and waits for stdout to take every line
    # instead of cutting them 5 s later (review rev4cli F1).
    count = 400  # about 800 KB: far over stdout's pipe and buffer (128 KiB)
    lines = b"".join(
        b"MSG 2026-11-22T14:03:05.123Z bob * %04d " % i + b"x" * 2000 + b"\r\n"
        for i in range(count)
    )
    with client_of_a_peer(b"READY eve\r\nUSER eve lobby\r\nUSERS 1\r\n") as (proc, conn):
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        conn.settimeout(30)
        failed: list[OSError] = []

        def send_lines() -> None:
            try:
                conn.sendall(lines)  # blocks while the client does not read
            except OSError as e:
                failed.append(e)

        sender = threading.Thread(target=send_lines, daemon=True)
        sender.start()
        time.sleep(1)  # the client reads until stdout is full
        proc.stdin.close()  # end of input: BYE
        heard = b""
        while b"BYE" not in heard:
            chunk = conn.recv(4096)
            assert chunk, heard
            heard += chunk
        sender.join(30)
        if not failed:
            conn.sendall(b"BYE quit\r\n")  # the answer, after everything before it
        conn.close()
        time.sleep(12)  # past the goodbye's 5 s and the old 5 s cut of the output
        out = proc.stdout.read().decode()
        rc = proc.wait(timeout=15)
        err = proc.stderr.read().decode()
    assert not failed, failed
    assert (rc, err) == (0, "")
    assert len([row for row in out.splitlines() if "<bob>" in row]) == count
    assert out.splitlines()[-1] == "* Goodbye."
