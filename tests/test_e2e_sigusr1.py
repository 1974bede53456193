"""
SIGUSR1 never stops the server (rev18-docs 2): logging to stdout (the
shipped contrib/twisted-chat.service's C{--logfile=-}), it ended the
process as SIGKILL would (exit 138, no C{BYE shutdown}, the lobby messages
not yet written lost); now it is one log line and everyone goes on.  Log
files are rotated by it as before (tests/test_e2e_startup.py).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess
from tests.test_e2e_sighup import goes_on_after

pytestmark = pytest.mark.e2e

SAID = ("received SIGUSR1: no log file to rotate (the log goes to stdout); "
        "the server goes on (SIGTERM stops it)")


def test_sigusr1_leaves_a_server_logging_to_stdout_running(tmp_path: Path) -> None:
    """It raised "server exited early with -10" (SIGUSR1) before."""
    goes_on_after(signal.SIGUSR1, SAID,
                  ServerProcess(tmp_path, ["--db", "chat.sqlite3"], stdout_log=True))

