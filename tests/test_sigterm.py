"""
SIGTERM stops this suite's pytest (tests/conftest.py): a tiny pytest run in
a subprocess, with the suite's conftest as a plugin, is sent SIGTERM while
its one test blocks, and exits at once, as after Ctrl-C, its fixtures torn
down.  Before, the reactor pytest-twisted runs had SIGTERM for its own, and
the run went on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import wait_until

REPO = Path(__file__).resolve().parents[1]

TINY = '''
import os
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater


def mark(what):
    with open(os.environ["MARKS"], "a") as f:
        f.write(what + "\\n")


@pytest.fixture
def torn_down():
    yield
    mark("torn down")


def test_blocking(torn_down):
    mark("started")
    time.sleep(60)  # as an e2e test waits on a socket


@pytest_twisted.inlineCallbacks
def test_waiting_on_the_reactor(torn_down):
    mark("started")
    yield deferLater(reactor, 60, lambda: None)


def test_after():
    mark("the next test ran")
'''


@pytest.mark.parametrize("which", ["test_blocking", "test_waiting_on_the_reactor"])
def test_sigterm_ends_the_run_and_tears_down(tmp_path: Path, which: str) -> None:
    (tmp_path / "test_tiny.py").write_text(TINY)
    marks = tmp_path / "marks"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MARKS": str(marks)}
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "-q", "test_tiny.py", "-k", f"{which} or test_after"],
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_until(lambda: marks.exists() and "started" in marks.read_text(), timeout=30,
                   what="the tiny run's test started")
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError("pytest did not stop within 10 s of SIGTERM") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    text = out.decode(errors="replace")
    assert proc.returncode == 2, text  # interrupted, as by Ctrl-C
    assert "KeyboardInterrupt: SIGTERM" in text
    assert marks.read_text().splitlines() == ["started", "torn down"], text
