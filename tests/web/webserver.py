"""The chat server with --web in a subprocess, for the web client's e2e tests."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.serverproc import LOOPBACK, ServerProcess, free_port, wait_for_port


class WebServer:
    """The chat server with --web, restartable on the same ports and database."""

    def __init__(self, workdir: Path, *args: str) -> None:
        self.workdir = workdir
        self.web_port = free_port()
        self.args = ["--web", f"tcp:{self.web_port}:interface={LOOPBACK}",
                     "--db", str(workdir / "chat.sqlite3"), *args]
        self.server = ServerProcess(workdir, self.args)
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.web_port}/"

    def start(self) -> WebServer:
        self.server.start()
        wait_for_port(self.web_port, proc=self.server.proc)
        return self

    def restart(self) -> None:
        # twistd ends by re-raising the signal that stopped it.
        assert self.server.stop() in (0, -signal.SIGTERM)
        self.server = ServerProcess(self.workdir, self.args, port=self.port)
        self.start()
