"""
A private C{redis-server} for the cluster tests: on a free loopback port,
in a temporary folder, stopped by its pid.  Never a system instance.
"""

from __future__ import annotations

import functools
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.serverproc import LOOPBACK, free_port

REDIS_SERVER = shutil.which("redis-server")


@functools.cache
def redis_has_tls() -> bool:
    """Whether C{redis-server} is built with TLS (C{BUILD_TLS=yes}: it links
    OpenSSL; without, or as a module, it takes no C{--tls-port} as run here)."""
    return REDIS_SERVER is not None and b"SSL_CTX_new" in Path(REDIS_SERVER).read_bytes()


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None,
                 persist: bool = True, unixsocket: bool = False,
                 tls: tuple[Path, Path] | None = None) -> None:
        """@param tls: (key, certificate) PEM files: TLS only, on C{port}."""
        self.workdir = workdir / "redis"
        self.workdir.mkdir(exist_ok=True)
        self.port = port or free_port()
        self.password = password
        self.persist = persist
        self.socket = self.workdir / "redis.sock" if unixsocket else None
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def unix_url(self) -> str:
        assert self.socket is not None
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}?db=3"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None, "redis-server is not installed"
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            key, cert = self.tls
            ports = ["--port", "0", "--tls-port", str(self.port), "--tls-key-file", str(key),
                     "--tls-cert-file", str(cert), "--tls-ca-cert-file", str(cert),
                     "--tls-auth-clients", "no"]
        args = [REDIS_SERVER, *ports, "--bind", LOOPBACK,
                "--dir", str(self.workdir), "--daemonize", "no", "--save", "",
                "--appendonly", "yes" if self.persist else "no",
                "--appendfsync", "always", "--logfile", str(self.workdir / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        if self.socket is not None:
            args += ["--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop(signal.SIGKILL)  # never left running
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def wipe(self) -> None:
        """Forget the data on disk (the next start is an empty Redis)."""
        assert self.proc is None
        shutil.rmtree(self.workdir)
        self.workdir.mkdir()

    def command(self, *args: str) -> str:
        """One command through redis-cli's wire format, answered as text (tests only)."""
        parts = [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
        payload = f"*{len(args)}\r\n" + "".join(parts)
        with socket.create_connection((LOOPBACK, self.port), timeout=5) as s:
            if self.password:
                auth = f"*2\r\n$4\r\nAUTH\r\n${len(self.password)}\r\n{self.password}\r\n"
                s.sendall(auth.encode())
                s.recv(100)
            s.sendall(payload.encode())
            return s.recv(65536).decode(errors="replace")

    def call(self, *args: object) -> Any:
        """One command, its whole reply parsed (tests only): an int, a
        str, None, an error as L{RedisReplyError}, or a list of those."""
        parts = [str(a).encode() for a in args]
        payload = b"*%d\r\n" % len(parts) + b"".join(
            b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection((LOOPBACK, self.port), timeout=5) as s:
            reader = s.makefile("rb")
            if self.password:
                s.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n"
                          % (len(self.password), self.password.encode()))
                reader.readline()
            s.sendall(payload)
            return _reply(reader)

    def connect(self) -> Connection:
        """A connection kept open, for many commands (tests only)."""
        return Connection(self)


class Connection:
    """One connection to a L{RedisServer}: commands one at a time or many
    in one write (a pipeline), each reply parsed as L{RedisServer.call}'s."""

    def __init__(self, server: RedisServer) -> None:
        self.sock = socket.create_connection((LOOPBACK, server.port), timeout=30)
        self.reader = self.sock.makefile("rb")
        if server.password:
            self.call("AUTH", server.password)

    def call(self, *args: object) -> Any:
        return self.pipeline([args])[0]

    def pipeline(self, commands: list[tuple[object, ...]]) -> list[Any]:
        payload = []
        for args in commands:
            parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
            payload.append(b"*%d\r\n" % len(parts) + b"".join(
                b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        self.sock.sendall(b"".join(payload))
        return [_reply(self.reader) for _ in commands]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class RedisReplyError(Exception):
    """An error reply (C{-ERR ...})."""


def _reply(reader: Any) -> Any:
    line = reader.readline()
    kind, rest = line[:1], line[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        return RedisReplyError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        if int(rest) < 0:
            return None
        data = reader.read(int(rest) + 2)
        return data[:-2].decode()
    if kind == b"*":
        return None if int(rest) < 0 else [_reply(reader) for _ in range(int(rest))]
    raise ValueError(f"not a reply: {line!r}")
