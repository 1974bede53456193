"""
SIGUSR1 never stops the server (rev18-docs 2): logging to stdout (the
shipped contrib/twisted-chat.service's C{--logfile=-}), it ended the
process as SIGKILL would (exit 138, no C{BYE shutdown}, the lobby messages
not yet written lost); now it is one log line and everyone goes on.  And
a C{--logfile} that is not a regular file (C{/dev/null}) is not rotated by
it (rev18-docs 1): the node stays where it is.  Log files are rotated by
it as before (tests/test_e2e_startup.py).
"""

from __future__ import annotations

import signal
import stat
from pathlib import Path

import pytest

from tests.serverproc import LineClient, ServerProcess
from tests.test_e2e_sighup import goes_on_after

pytestmark = pytest.mark.e2e

SAID = ("received SIGUSR1: no log file to rotate (the log goes to stdout); "
        "the server goes on (SIGTERM stops it)")


def test_sigusr1_leaves_a_server_logging_to_stdout_running(tmp_path: Path) -> None:
    """It raised "server exited early with -10" (SIGUSR1) before."""
    goes_on_after(signal.SIGUSR1, SAID,
                  ServerProcess(tmp_path, ["--db", "chat.sqlite3"], stdout_log=True))


def test_sigusr1_leaves_a_device_log_where_it_is(tmp_path: Path) -> None:
    """--logfile naming a character device of its own (the null device's
    numbers, mknod: the tests run as root), never the real /dev/null: was
    renamed to null.1 and replaced by a regular file, mode 0666."""
    import os

    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    node.chmod(0o666)
    server = ServerProcess(tmp_path, ["--db", ":memory:"],
                           twistd_args=[f"--logfile={node}"]).start()
    try:
        alice = LineClient(server.port)
        alice.register("alice")
        server.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
        # Round trips of the reactor's loop after the signal's.
        bob = LineClient(server.port)
        bob.register("bob")
        bob.send("MSG still here")
        assert alice.expect(lambda line: line.startswith("MSG ") and " bob " in line
                            ).endswith(" bob * still here")
        alice.sync()
        assert server.proc.poll() is None  # type: ignore[union-attr]
    finally:
        code = server.stop()
    assert code in (0, -signal.SIGTERM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]
    mode = node.lstat().st_mode
    assert stat.S_ISCHR(mode) and stat.S_IMODE(mode) == 0o666
