"""
Starting, measuring and stopping the servers under test.

Each server runs in its own process group, pinned to CPU 0 with
``taskset -c 0``, in the foreground, listening on 127.0.0.1 only.  Stopping
kills the whole group (SIGTERM, then SIGKILL), also on error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_times(pid: int) -> tuple[float, float]:
    """utime and stime of one process, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2:].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc/PID/stat."""
    return sum(cpu_times(pid))


def machine_busy_seconds() -> float:
    """
    CPU time every core spent busy (user, nice, system, irq, softirq; not
    idle, iowait or steal), from the first line of /proc/stat.
    """
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = fields
    return (user + nice + system + irq + softirq) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


@dataclass
class ServerSpec:
    """One server configuration in the comparison."""

    key: str  # column name in the results
    label: str
    dialect: str  # "chat/1" or "irc"
    kind: str  # "chat", "ngircd", "inspircd" or "floor" (bench/floor.py)
    extra: list[str] = field(default_factory=list)  # extra options for our server
    # Our server from another source tree (a baseline): put first on sys.path.
    tree: Path | None = None
    # Our server under another interpreter: that venv's python (its twistd is
    # beside it, with the package installed there); None for this one.
    python: Path | None = None

    def twistd(self) -> Path:
        return (self.python or Path(sys.executable)).with_name("twistd")

    def argv(self, port: int, workdir: Path) -> list[str]:
        if self.kind == "chat":
            twistd = str(self.twistd())
            # The generator's clients all come from loopback: a benchmark is
            # what --exempt is for (docs/security.md).
            return [twistd, "-n", "--pidfile=", "-l", str(workdir / "twistd.log"), "chat",
                    "--port", f"tcp:{port}:interface=127.0.0.1", "--exempt", "127.0.0.0/8",
                    *self.extra]
        if self.kind == "floor":
            return [sys.executable, "-m", "bench.floor", str(port)]
        if self.kind == "ngircd":
            conf = workdir / "ngircd.conf"
            text = (BENCH / "irc" / "ngircd.conf.in").read_text()
            conf.write_text(text.replace("@PORT@", str(port)).replace("@DIR@", str(workdir)))
            (workdir / "ngircd.motd").write_text("bench\n")
            return ["ngircd", "--nodaemon", "--config", str(conf)]
        if self.kind == "inspircd":
            conf = workdir / "inspircd.conf"
            text = (BENCH / "irc" / "inspircd.conf.in").read_text()
            conf.write_text(text.replace("@PORT@", str(port)).replace("@DIR@", str(workdir)))
            (workdir / "inspircd.motd").write_text("bench\n")
            # Debian's /usr/lib/inspircd/inspircd is a Perl control script
            exe = "/usr/sbin/inspircd" if os.path.exists("/usr/sbin/inspircd") else "inspircd"
            return [exe, "--nofork", "--nopid", "--runasroot", f"--config={conf}"]
        raise ValueError(self.kind)

    def available(self) -> str | None:
        """None when the server can run here, else why not."""
        if self.kind == "chat":
            twistd = self.twistd()
            if not twistd.exists():
                return "no twistd beside the interpreter"
            out = subprocess.run([str(twistd), "--help"], capture_output=True, text=True,
                                 timeout=60)
            if not any(line.split()[:1] == ["chat"] for line in out.stdout.splitlines()):
                return "the chat twistd plugin is not installed yet"
            return None
        if self.kind == "floor":
            return None
        exe = {"ngircd": "ngircd", "inspircd": "inspircd"}[self.kind]
        if shutil.which(exe) is None and not os.path.exists(f"/usr/sbin/{exe}"):
            return f"{exe} is not installed (apt-get install {exe})"
        return None


class RunningServer:
    def __init__(self, spec: ServerSpec, cpu: int | None = 0) -> None:
        self.spec = spec
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{spec.key}-"))
        argv = spec.argv(self.port, self.workdir)
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        env = None
        if spec.tree is not None:
            env = {**os.environ, "PYTHONPATH": str(spec.tree)}
        self.log = open(self.workdir / "server.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=self.workdir, env=env)
        self.pid = self.proc.pid  # taskset execs the server: same pid
        self.max_rss = 0
        try:
            self._wait_listening(30.0)
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.key} exited at start: {self.tail()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1.0):
                time.sleep(0.3)  # let it finish starting (plugins, database)
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.spec.key} did not listen in {timeout} s: {self.tail()}")

    def tail(self, n: int = 1500) -> str:
        try:
            return (self.workdir / "server.out").read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def cpu_split(self) -> tuple[float, float]:
        """User and system CPU seconds apart: what the interpreter costs
        against what the kernel does for it."""
        return cpu_times(self.pid)

    def rss(self) -> int:
        value = rss_bytes(self.pid)
        self.max_rss = max(self.max_rss, value)
        return value

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Contention:
    """
    A CPU-bound process pinned to C{cpu} (the servers' core), so that the
    server under test shares its core as on a busy host or a VM.  Bounded:
    it ends by itself after C{limit} seconds, and L{stop} ends it sooner.
    """

    def __init__(self, cpu: int = 0, limit: float = 900.0) -> None:
        argv = [sys.executable, "-c",
                f"import time\nend = time.monotonic() + {limit}\n"
                "while time.monotonic() < end:\n    sum(range(1000))\n"]
        if shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
