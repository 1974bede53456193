"""
The end-to-end tests' server start-up (L{tests.serverproc.ServerProcess}):
it returns once the server listens on every endpoint the test asked for,
not at the first one (a test failed under load with FileNotFoundError on a
UNIX socket not bound yet), and without connecting where it need not.  A
stand-in C{twistd} plays a slow server: each listener as Twisted makes it,
the second one a second late.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.serverproc import (
    LOOPBACK,
    ServerProcess,
    endpoints_in,
    free_port,
    listener_of,
    tcp_listening,
    unix_listening,
)

# Its endpoints (C{--port} or C{-p}, in order): a TCP port is bound, listened on and
# then logged, as Twisted does; a UNIX socket is logged first, then bound a
# second later (Twisted logs it before its bind). Each listener after the
# first comes a second after the one before. Connections are accepted and
# left alone.
_SLOW_TWISTD = """#!{python}
import select, socket, sys, time
args = sys.argv[1:]
log = open(next(a.split("=", 1)[1] for a in args if a.startswith("--logfile=")), "a",
           buffering=1)
held = []
for n, description in enumerate(args[i + 1] for i, a in enumerate(args) if a in ("--port", "-p")):
    if n:
        time.sleep(1)
    if description.startswith("unix:"):
        path = description[len("unix:"):]
        log.write(f"x [-] ChatFactory starting on {{path!r}}\\n")
        time.sleep(1)
        s = socket.socket(socket.AF_UNIX)
        s.bind(path)
        s.listen()
    else:
        port = int(description.split(":")[1] if ":" in description else description)
        s = socket.socket()
        s.bind(("{loopback}", port))
        s.listen()
        log.write(f"x [-] ChatFactory starting on {{port}}\\n")
    held.append(s)
kept = []
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    ready, _, _ = select.select(held, [], [], 0.1)
    kept += [s.accept()[0] for s in ready]
"""


@pytest.fixture
def slow_twistd(tmp_path: Path) -> str:
    script = tmp_path / "twistd"
    script.write_text(_SLOW_TWISTD.format(python=sys.executable, loopback=LOOPBACK))
    script.chmod(0o755)
    return str(script)


def test_a_unix_socket_after_a_tcp_port_is_waited_for(
    tmp_path: Path, slow_twistd: str, chat_server: Callable[..., ServerProcess]
) -> None:
    """The wait for the log's first " starting on " returned at the TCP
    port's line: the UNIX socket was not there yet. Now it is, once
    start() returns. (That no connection is spent on the wait is
    tests/test_e2e_metrics.py's
    test_accepted_connections_count_what_connects_and_nothing_at_start.)"""
    path = tmp_path / "chat.sock"
    chat_server("--port", f"unix:{path}", probe=False, twistd=slow_twistd)
    assert unix_listening(str(path))


def test_a_second_tcp_port_is_waited_for_as_well_as_the_probed_one(
    tmp_path: Path, slow_twistd: str, chat_server: Callable[..., ServerProcess]
) -> None:
    """The probe connected to the main port only: a --port that came up
    later was not waited for. Now it is (without connecting to it)."""
    other = free_port()
    chat_server("--port", f"tcp:{other}:interface={LOOPBACK}", twistd=slow_twistd)
    with socket.create_connection((LOOPBACK, other), timeout=5):
        pass


def test_what_an_endpoint_listens_on() -> None:
    assert listener_of("tcp:8080:interface=127.0.0.1") == 8080
    assert listener_of("ssl:port=8443:privateKey=k.pem") == 8443
    assert listener_of("tcp6:8080:interface=\\:\\:1") == 8080
    assert listener_of("unix:/run/chat.sock:mode=660") == "/run/chat.sock"
    assert listener_of("unix:address=/tmp/a\\:b") == "/tmp/a:b"
    assert listener_of("haproxy:tcp:8080:interface=127.0.0.1") == 8080
    assert listener_of("8080") == 8080  # a bare port number is TCP, as for the server
    with pytest.raises(ValueError, match="cannot tell what 'systemd:domain=INET:index=0'"):
        listener_of("systemd:domain=INET:index=0")


@pytest.mark.parametrize(("description", "why"), [
    ("tcp:0", "port 0 lets the system pick one"),
    (f"tcp:0:interface={LOOPBACK}", "port 0 lets the system pick one"),
    ("0", "port 0 lets the system pick one"),
    ("ssl:0:privateKey=k.pem", "port 0 lets the system pick one"),
    ("ssl:privateKey=k.pem", "no port number"),
    ("ssl:port=x:privateKey=k.pem", "no port number"),
])
def test_an_endpoint_with_no_port_to_wait_for_is_a_clear_error(description: str,
                                                                why: str) -> None:
    """tcp:0 was waited for as port 0 (15 s, then a time-out that did not
    say why), and an ssl: endpoint with no port raised KeyError: 'port'."""
    with pytest.raises(ValueError, match=f"cannot tell what .* listens on: {why}"):
        listener_of(description)


def test_the_endpoint_options_are_read_as_twistd_reads_them() -> None:
    """-p8080 (the value in the same word) was not read at all."""
    assert endpoints_in(["--port", "7001", "--port=7002", "-p", "7003", "-p7004",
                         "--web", "tcp:7005", "--web=tcp:7006", "--metrics", "7007",
                         "--db", ":memory:", "--max-clients", "5"]) == [
        "7001", "7002", "7003", "7004", "tcp:7005", "tcp:7006", "7007"]
    assert endpoints_in(["--port"]) == []  # no value: twistd refuses it, nothing to wait for


def test_a_bare_port_given_with_p_is_waited_for(
    tmp_path: Path, slow_twistd: str, chat_server: Callable[..., ServerProcess]
) -> None:
    """A bare port number (tcp, as the server reads it) given with -p was
    not waited for: start() returned before it listened."""
    other = free_port()
    chat_server("-p", str(other), twistd=slow_twistd)
    assert tcp_listening(other)


@pytest.mark.e2e
def test_a_server_runs_the_code_of_the_tree_its_tests_are_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from a copy of the tree (as from a git worktree) with no
    PYTHONPATH, a started server imported the environment's editable
    install, the tree that was installed from, not the tests' own: an
    end-to-end test seen failing there said nothing about the copy's code.
    Now it runs the copy's: its twisted_chat, marked here, is imported."""
    root = Path(__file__).resolve().parents[1]
    copy = tmp_path / "copy"
    skip = shutil.ignore_patterns("__pycache__", "dropin.cache")
    for part in ("twisted_chat", "twisted"):
        shutil.copytree(root / part, copy / part, ignore=skip)
    (copy / "tests").mkdir()
    shutil.copy(root / "tests" / "serverproc.py", copy / "tests")
    marker = copy / "imported"
    with (copy / "twisted_chat" / "__init__.py").open("a") as init:
        init.write(f"\n__import__('pathlib').Path({str(marker)!r}).touch()\n")
    spec = importlib.util.spec_from_file_location("copied_serverproc",
                                                  copy / "tests" / "serverproc.py")
    assert spec is not None and spec.loader is not None
    copied = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copied)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    server = copied.ServerProcess(tmp_path, ["--db", ":memory:"]).start()
    try:
        assert marker.exists(), server.log()[-2000:]
    finally:
        server.kill()
