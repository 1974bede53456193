"""
End-to-end support: the real C{twistd -n chat} in a subprocess on a free
loopback port, and a blocking line client with bounded waits.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from twisted.internet import endpoints

from twisted_chat.server.ports.listening import ssl_arguments, tcp_address
from twisted_chat.server.service import _endpoint

T = TypeVar("T")

TWISTD = str(Path(sys.executable).with_name("twistd"))
LOOPBACK = "127.0.0.1"
# The root of the tree these tests are in: the code a server they start runs.
TREE = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], T], timeout: float = 10.0,
               what: str | Callable[[], object] = "it", interval: float = 0.05) -> T:
    """
    Call C{check} every C{interval} seconds until it returns something
    true, and return that: the bounded poll an end-to-end test uses
    instead of sleeping a fixed time and then looking.  After C{timeout}
    seconds, raises C{TimeoutError} naming C{what} (a callable is called
    then, to say what the state was).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            said = what() if callable(what) else what
            raise TimeoutError(f"gave up waiting for {said} after {timeout}s")
        time.sleep(interval)


def wait_for_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited early with {proc.returncode}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {LOOPBACK}:{port} after {timeout}s")


# The options whose value is an endpoint the server listens on.
ENDPOINT_OPTIONS = ("--port", "-p", "--web", "--metrics")


def endpoints_in(args: Sequence[str]) -> list[str]:
    """
    The endpoint descriptions C{args} give to L{ENDPOINT_OPTIONS}, as
    twistd reads them: C{--port X}, C{--port=X}, C{-p X} and C{-pX}.
    """
    found = []
    for i, arg in enumerate(args):
        name, equals, value = arg.partition("=")
        if arg.startswith("-p") and len(arg) > 2:
            found.append(arg[2:])  # -p8080: a short option's value in the same word
        elif name in ENDPOINT_OPTIONS and equals:
            found.append(value)
        elif arg in ENDPOINT_OPTIONS and i + 1 < len(args):
            found.append(args[i + 1])
    return found


def listener_of(description: str) -> int | str:
    """
    What a server endpoint description listens on, as the server reads it
    (L{twisted_chat.server.service._endpoint}, then Twisted's parser): a
    TCP port (a bare number, C{tcp:}, C{tcp6:}, C{ssl:}) or a UNIX
    socket's path (C{unix:}), also behind C{haproxy:}.  An C{ssl:} one is read with
    L{ssl_arguments}, since Twisted's parser would load its key files.
    Raises C{ValueError} for any other kind, and for port 0 (the system
    picks the port, which the description does not tell): the start-up
    could not wait for it.
    """
    from twisted.internet import reactor  # on use: importing it installs the default one

    description = _endpoint(description)
    if description.partition(":")[0].lower() == "ssl":
        port = ssl_arguments(description).get("port")
        if port is None or not port.isdigit():
            raise ValueError(f"cannot tell what {description!r} listens on: "
                             f"no port number (ssl:PORT:privateKey=...)")
        return _known_port(description, int(port))
    try:
        # Twisted's parser is not annotated (pyproject.toml's overrides).
        endpoint = endpoints.serverFromString(  # type: ignore[no-untyped-call]
            reactor, description)
    except Exception as e:  # systemd: with nothing inherited, say
        raise ValueError(f"cannot tell what {description!r} listens on: {e!r}") from e
    # haproxy: wraps the endpoint it listens on (Twisted-private, as tcp_address's).
    endpoint = getattr(endpoint, "_wrappedEndpoint", endpoint)
    address = tcp_address(endpoint)
    if address is not None:
        return _known_port(description, address[1])
    path = getattr(endpoint, "_address", None)  # Twisted-private, as tcp_address's
    if isinstance(endpoint, endpoints.UNIXServerEndpoint) and isinstance(path, str):
        return path
    raise ValueError(f"cannot tell what {description!r} listens on: the start-up waits "
                     f"for TCP ports and UNIX sockets only")


def _known_port(description: str, port: int) -> int:
    """C{port}, unless it is 0: then which port the system picks is not known."""
    if port == 0:
        raise ValueError(f"cannot tell what {description!r} listens on: port 0 lets the "
                         f"system pick one; give a free port (free_port())")
    return port


def unix_listening(path: str) -> bool:
    """
    A UNIX socket listens at C{path} (as the server bound it), from
    C{/proc/net/unix}: without connecting (a connection counts).  Twisted
    logs " starting on " for a UNIX socket before it binds it, so that
    line does not say it is there.
    """
    accepting = 0x10000  # __SO_ACCEPTCON: listen() was called
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split(None, 7)
            if len(fields) == 8 and fields[7].strip() == path and int(fields[3], 16) & accepting:
                return True
    return False


def tcp_rows(port: int, state: str,
             tables: Sequence[str] = ("/proc/net/tcp", "/proc/net/tcp6")) -> list[list[str]]:
    """
    The rows of C{tables} for sockets on local TCP C{port} in C{state}
    (hex, as the kernel writes it: C{0A} LISTEN, C{01} ESTABLISHED), each
    split into its fields (C{[1]} is the local ADDRESS:PORT in hex, C{[4]}
    the transmit:receive queues).  A missing table (no IPv6) has none.
    """
    rows = []
    for name in tables:
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == state and int(fields[1].rpartition(":")[2], 16) == port:
                rows.append(fields)
    return rows


def tcp_listening(port: int) -> bool:
    """
    Something listens on TCP C{port}, from C{/proc/net/tcp} and C{tcp6}:
    without connecting (a connection counts), nor reading the log (its
    " starting on " lines are info: C{--log-level warn} leaves them out).
    """
    return bool(tcp_rows(port, "0A"))


def process_state(pid: int) -> str:
    """
    What a process that does not stop is doing, from C{/proc}: its signal
    masks (is the signal pending, blocked, caught?) and, per thread, its
    state, where it sleeps in the kernel and its system call.  For the
    message of a test that timed out waiting for it.
    """
    base = Path(f"/proc/{pid}")
    lines: list[str] = []
    try:
        lines += [line for line in (base / "status").read_text().splitlines()
                  if line.startswith(("State:", "SigQ:", "SigPnd:", "ShdPnd:", "SigBlk:",
                                      "SigIgn:", "SigCgt:", "Threads:"))]
        for task in sorted((base / "task").iterdir(), key=lambda t: int(t.name)):
            fields = {}
            for name in ("comm", "wchan", "syscall", "stat"):
                try:
                    fields[name] = (task / name).read_text().strip()
                except OSError as e:  # the thread ended meanwhile, say
                    fields[name] = f"({e.strerror})"
            stat = fields.pop("stat")
            if ")" in stat:
                fields["state"] = stat[stat.rindex(")") + 2:].split()[0]
            lines.append(f"thread {task.name}: " + ", ".join(f"{k} {v}" for k, v in fields.items()))
    except OSError as e:
        lines.append(f"(reading /proc/{pid}: {e})")
    return "\n".join(lines)


def tree_environment() -> dict[str, str]:
    """
    This process's environment with L{TREE} first on C{PYTHONPATH}: a
    C{twistd} of the project's environment then imports this tree's
    C{twisted_chat}.  Without it, the server imported the environment's
    editable install (twistd does not put its working directory on the
    path): run from another tree (a git worktree) with no C{PYTHONPATH},
    a test tested the installed tree's server code, not its own.
    """
    path = [str(TREE), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


class ServerProcess:
    """C{twistd -n chat} on C{127.0.0.1:port}, run in C{workdir}."""

    def __init__(self, workdir: Path, args: Sequence[str] = (), port: int | None = None,
                 endpoint: str | None = None, probe: bool = True,
                 twistd: str = TWISTD, exempt: Sequence[str] = (LOOPBACK,),
                 twistd_args: Sequence[str] = (), stdout_log: bool = False,
                 this_tree: bool | None = None) -> None:
        """
        @param probe: wait for start-up by connecting to C{port} (the
            default).  Every other endpoint asked for (C{endpoint} when it
            is not on C{port}, and those of C{--port}, C{--web} and
            C{--metrics} in C{args}), and all of them if C{probe} is false,
            is waited for without a connection (tests of connection limits
            and of the connection metrics want that), from C{/proc/net}
            (L{tcp_listening}, L{unix_listening}).
        @param twistd: the C{twistd} script to run (another environment's).
        @param this_tree: run L{TREE}'s code (L{tree_environment}); by
            default, when C{twistd} is the project's (L{TWISTD}).  A
            wrapper that runs L{TWISTD} passes C{True}; another
            environment's C{twistd} runs what that environment installed.
        @param exempt: C{--exempt} values.  The tests' own clients connect
            from 127.0.0.1, many at a time: that address is exempt from the
            per-address limits unless a test says otherwise (tests of those
            limits connect from other addresses in 127.0.0.0/8).
        @param twistd_args: twistd's own options, before C{chat} (C{--uid}).
        @param stdout_log: log to stdout (C{--logfile=-}, as
            contrib/twisted-chat.service does), which goes to the log file
            L{log} reads, with stderr.
        """
        self.workdir = workdir
        self.port = port or free_port()
        self.endpoint = endpoint or f"tcp:{self.port}:interface={LOOPBACK}"
        self.args = [arg for address in exempt for arg in ("--exempt", address)] + list(args)
        self.probe = probe and not self.endpoint.startswith("unix:")
        self.twistd = twistd
        self.twistd_args = list(twistd_args)
        self.log_path = workdir / f"twistd-{self.port}.log"
        self.stdout_log = stdout_log
        self.this_tree = twistd == TWISTD if this_tree is None else this_tree
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> ServerProcess:
        logfile = "-" if self.stdout_log else self.log_path
        command = [self.twistd, "-n", "--pidfile=", f"--logfile={logfile}",
                   *self.twistd_args, "chat",
                   "--port", self.endpoint, *self.args]
        with (open(self.log_path, "wb") if self.stdout_log  # Popen dups it
              else contextlib.nullcontext(subprocess.PIPE)) as stdout:
            self.proc = subprocess.Popen(
                command, cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=stdout, stderr=subprocess.STDOUT, start_new_session=True,
                env=tree_environment() if self.this_tree else None,
            )
        if wait:
            try:
                if self.probe:
                    wait_for_port(self.port, proc=self.proc)
                self.wait_listening()
            except BaseException:
                self.kill()  # a server that never came up is not left running
                raise
        return self

    def wait_listening(self, timeout: float = 15.0) -> None:
        """
        Wait until the server listens on every endpoint asked for (but
        C{port}, if probed), without connecting to any (L{__init__}'s
        C{probe}).  Not every line " starting on " of the log: with a
        UNIX socket and a TCP port, the first such line could be the
        socket's, written before it exists.  An endpoint of another kind
        raises C{ValueError} (L{listener_of}): not waited for by the log.
        """
        assert self.proc is not None
        ports: set[int] = set()
        paths: set[str] = set()
        for description in [self.endpoint, *endpoints_in(self.args)]:
            listener = listener_of(description)
            if isinstance(listener, int):
                ports.add(listener)
            else:
                paths.add(listener)
        if self.probe:
            ports.discard(self.port)

        def missing() -> list[str]:
            return ([f"port {port}" for port in sorted(ports) if not tcp_listening(port)]
                    + [path for path in sorted(paths) if not unix_listening(path)])

        self._wait(lambda: not missing(), timeout,
                   lambda: f"the server to listen on {', '.join(missing())}")

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        """Wait until the server's log contains C{text}."""
        self._wait(lambda: text in self.log(), timeout, f"{text!r} in the server log")

    def _wait(self, done: Callable[[], bool], timeout: float,
              what: str | Callable[[], object]) -> None:
        """L{wait_until} C{done}, but raise C{RuntimeError} if the server exits."""
        proc = self.proc
        assert proc is not None

        def check() -> bool:
            if done():
                return True
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early with {proc.returncode}")
            return False

        wait_until(check, timeout, what)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the server and wait for it; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                state = process_state(self.proc.pid)
                os.killpg(self.proc.pid, signal.SIGKILL)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    state += "\n(and it did not die within 5 s of SIGKILL either)"
                raise TimeoutError(
                    f"twistd (pid {self.proc.pid}) did not exit within {timeout}s of"
                    f" signal {sig}; what it was doing then:\n{state}\nits output:\n"
                    f"{self.output()[-2000:]}\nthe end of its log:\n{self.log()[-2000:]}"
                ) from None
        return self.proc.returncode

    def output(self) -> str:
        """What twistd printed to stdout/stderr (after it has stopped)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            return ""
        if self.proc.stdout is None:  # stdout_log
            return self.log()
        return self.proc.stdout.read().decode(errors="replace")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rss_kib(self) -> int:
        return self._status_kib("VmRSS")

    def peak_rss_kib(self) -> int:
        """The most resident memory the server has had so far (VmHWM)."""
        return self._status_kib("VmHWM")

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field}")

    def problems(self) -> list[str]:
        """Log lines that show an error the server did not handle."""
        return [line for line in self.log().splitlines()
                if "Unhandled Error" in line or "Traceback" in line
                or "Unhandled error" in line]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class LineClient:
    """A blocking chat/1 connection for tests; every wait is bounded."""

    def __init__(self, port: int, host: str = LOOPBACK, timeout: float = 5.0,
                 sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.buffer = b""
        self.lines: list[str] = []  # every line received, in order

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        if not data.endswith(b"\n"):
            data += b"\r\n"
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            raise EOFError("connection closed by the server")
        self.buffer += data
        return True

    def readline(self, timeout: float | None = None) -> str:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while b"\n" not in self.buffer:
            if not self._fill(deadline):
                raise TimeoutError(f"no line within the timeout; have {self.buffer!r}")
        raw, self.buffer = self.buffer.split(b"\n", 1)
        assert raw.endswith(b"\r"), f"server line without CRLF: {raw!r}"
        line = raw[:-1].decode()
        self.lines.append(line)
        return line

    def expect(self, match: str | Callable[[str], bool], timeout: float | None = None) -> str:
        """Read lines until one starts with C{match} (or satisfies it)."""
        test = match if callable(match) else (lambda line: line.startswith(match))
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            line = self.readline(max(deadline - time.monotonic(), 0.001))
            if test(line):
                return line

    def register(self, nick: str) -> list[str]:
        """Handshake; returns the block after READY up to USERS."""
        self.expect("NICK")
        self.send(f"NICK {nick}")
        self.expect(f"READY {nick}")
        block = []
        while True:
            line = self.readline()
            block.append(line)
            if line.startswith("USERS "):
                return block

    def sync(self, token: str = "sync", timeout: float | None = None) -> list[str]:
        """
        C{PING token} and read up to its C{PONG}: returns the lines that came
        before it.  The server handles one connection's lines in order, so
        everything it had sent this client before handling the PING is in
        the result.
        """
        self.send(f"PING {token}")
        before: list[str] = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            line = self.readline(max(deadline - time.monotonic(), 0.001))
            if line == f"PONG {token}":
                return before
            before.append(line)

    def rest(self, timeout: float | None = None) -> list[str]:
        """Every line until the server closes; raises if it does not in time."""
        lines = []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while True:
                lines.append(self.readline(max(deadline - time.monotonic(), 0.001)))
        except EOFError:
            if self.buffer:
                raise AssertionError(f"unterminated data before EOF: {self.buffer!r}") from None
            return lines

    def closed(self, timeout: float | None = None) -> bool:
        """Wait for the server to close; True if it did."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while self._fill(deadline):
                pass
        except EOFError:
            return True
        except ConnectionResetError:
            return True
        return False

    def close(self) -> None:
        self.sock.close()
