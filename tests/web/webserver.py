"""The chat server with --web in a subprocess, for the web client's e2e tests."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.serverproc import LOOPBACK, ServerProcess, free_port, wait_for_port


class WebServer:
    """The chat server with --web, restartable on the same ports and database."""

    def __init__(self, workdir: Path, *args: str, scheme: str = "tcp", options: str = "",
                 exempt: Sequence[str] = (LOOPBACK,)) -> None:
        """C{scheme} and C{options}: the --web endpoint's, around its port
        (C{ssl} and C{:privateKey=...} for TLS); always on loopback.
        C{exempt}: the C{--exempt} values (loopback unless a test of the
        per-address limits says otherwise)."""
        self.workdir = workdir
        self.web_port = free_port()
        self.args = ["--web", f"{scheme}:{self.web_port}{options}:interface={LOOPBACK}",
                     "--db", str(workdir / "chat.sqlite3"), *args]
        self.exempt = tuple(exempt)
        self.server = ServerProcess(workdir, self.args, exempt=self.exempt)
        self.port = self.server.port

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.web_port}/"

    def start(self) -> WebServer:
        self.server.start()
        wait_for_port(self.web_port, proc=self.server.proc)
        return self

    def stop(self) -> None:
        """Stop the server; L{start} brings it back on the same ports and database."""
        # twistd ends by re-raising the signal that stopped it.
        assert self.server.stop() in (0, -signal.SIGTERM)
        self.server = ServerProcess(self.workdir, self.args, port=self.port,
                                    exempt=self.exempt)

    def crash(self) -> None:
        """Kill the server (SIGKILL: what it had not read yet is lost, its
        connections reset); L{start} brings it back on the same ports and
        database."""
        self.server.kill()
        self.server = ServerProcess(self.workdir, self.args, port=self.port,
                                    exempt=self.exempt)

    def restart(self) -> None:
        self.stop()
        self.start()


def serving(server: WebServer) -> Iterator[WebServer]:
    """A fixture's body: start C{server}, hand it over, then stop it and
    check that its log shows no unhandled error.  It is stopped whatever
    happened meanwhile (a test's own use goes through L{served})."""
    server.start()
    try:
        yield server
    finally:
        problems = server.server.problems()
        server.server.kill()
    assert not problems, problems


# In a test's body: `with served(server) as web:` stops it when the body
# fails too (a `for` over serving() would leave it running).
served = contextlib.contextmanager(serving)
