"""Run the real client (C{python -m twisted_chat.client}) as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.serverproc import LOOPBACK

REPO = Path(__file__).resolve().parents[2]
CLIENT = [sys.executable, "-m", "twisted_chat.client"]


def client_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_client(
    args: Sequence[str],
    stdin: str = "",
    timeout: float = 20.0,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a piped client to completion (bounded)."""
    return subprocess.run(
        [*CLIENT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=client_env() if env is None else env,
    )


class PipedClient:
    """A client whose stdin stays open until L{finish}."""

    def __init__(self, args: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [*CLIENT, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=client_env(),
        )

    def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        """Close stdin and wait; returns (exit code, stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)


def address(port: int) -> list[str]:
    return [LOOPBACK, str(port)]

