"""
A test that hangs fails by name (pytest-timeout, pyproject's `timeout`, and
tests/conftest.py's timer): a tiny pytest run in a subprocess, with the
suite's conftest as a plugin, has a test that never ends; it fails with
pytest-timeout's message within the timeout, and the next test (which
needs the reactor) still runs.  Without the conftest's timer, a test waiting
on pytest-twisted's reactor hung on: the reactor's loop logged the failure
raised in it and carried on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TINY = '''
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater


def test_busy_on_a_clock():
    # As a timer that sets itself again for the same instant does.
    clock = Clock()

    def again():
        clock.callLater(0, again)

    again()
    clock.advance(1)


@pytest_twisted.inlineCallbacks
def test_waiting_on_the_reactor():
    yield defer.Deferred()


@pytest_twisted.inlineCallbacks
def test_a_reactor_call_that_never_returns():
    def spin():
        while True:
            pass

    reactor.callLater(0, spin)
    yield defer.Deferred()


@pytest_twisted.inlineCallbacks
def test_after():
    yield deferLater(reactor, 0, lambda: None)
'''


@pytest.mark.parametrize("which", ["test_busy_on_a_clock", "test_waiting_on_the_reactor",
                                   "test_a_reactor_call_that_never_returns"])
def test_a_hanging_test_fails_by_name_and_the_run_goes_on(tmp_path: Path, which: str) -> None:
    (tmp_path / "test_tiny.py").write_text(TINY)
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "200"}  # the summary line whole
    env.pop("PYTEST_ADDOPTS", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest",
             "-q", "--timeout", "1", "test_tiny.py", "-k", f"{which} or test_after"],
            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{which} was not stopped by its 1 s timeout") from None
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert f"FAILED test_tiny.py::{which} - Failed: Timeout (>1.0s) from pytest-timeout" in text
    assert "1 failed, 1 passed" in text
