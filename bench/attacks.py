"""
The attacks of issue 14, measured: each starts its own C{twistd -n chat} on
loopback, runs one attack for a bounded time from addresses in 127.0.0.0/8,
prints one JSON line of figures, and stops the server.

    python -m bench.attacks ATTACK [--twistd PATH] [--pythonpath DIR] [-- server options]

C{--pythonpath} runs the server from another checkout (for "before"
figures: C{git archive <commit> | tar -x -C DIR}).  Everything is bounded in
count and time; nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, args: list[str], twistd: str, pythonpath: str | None,
                 tls: bool = False, prlimit: list[str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="attack-"))
        self.port = free_port()
        self.log_path = self.dir / "twistd.log"
        endpoint = f"tcp:{self.port}:interface={HOST}"
        if tls:
            key, cert = _self_signed(self.dir)
            endpoint = f"ssl:{self.port}:privateKey={key}:certKey={cert}:interface={HOST}"
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        command = [*(prlimit or []), twistd, "-n", "--pidfile=", f"--logfile={self.log_path}",
                   "chat", "--port", endpoint, "--db", str(self.dir / "chat.sqlite3"), *args]
        self.proc = subprocess.Popen(command, cwd=self.dir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while " starting on " not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {self.log()[-2000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_bytes(self) -> int:
        """Bytes logged so far, the rotated files (1 MB each) included."""
        return sum(p.stat().st_size for p in self.dir.glob("twistd.log*"))

    def status(self, name: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
        return -1

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def nofile_soft(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        return -1

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key_path),
                    "-out", str(cert_path), "-days", "1", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    return key_path, cert_path


async def open_from(source: str, port: int, timeout: float = 5.0
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (HOST, port)), timeout)
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


async def readline(reader: asyncio.StreamReader, timeout: float = 5.0) -> str:
    raw = await asyncio.wait_for(reader.readline(), timeout)
    if not raw:
        raise EOFError
    return raw.decode(errors="replace").rstrip("\r\n")


async def register(source: str, port: int, nick: str
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """Connect and register; returns the bytes received up to USERS."""
    reader, writer = await open_from(source, port)
    writer.write(f"NICK {nick}\r\n".encode())
    received = 0
    while True:
        raw = await asyncio.wait_for(reader.readline(), 10)
        if not raw:
            raise EOFError(nick)
        received += len(raw)
        line = raw.decode(errors="replace")
        if line.startswith(("ERROR", "RETRY", "BYE")):
            raise EOFError(f"{nick}: {line.strip()}")
        if line.startswith("USERS "):
            return reader, writer, received


# -- the attacks -------------------------------------------------------------------


def refused_tls(server_args: list[str], twistd: str, pythonpath: str | None) -> dict[str, Any]:
    """14.1: one address opens 600 TLS connections and never says a word."""
    server = Server(server_args, twistd, pythonpath, tls=True)
    try:
        base_fds, base_rss = server.fds(), server.status("VmRSS")
        socks = []
        for _ in range(600):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect((HOST, server.port))
            socks.append(s)
            time.sleep(0.005)
        time.sleep(6.0)  # twice the close grace after the last one
        figures = {"attack": "refused-tls", "opened": len(socks),
                   "server_fds_held": server.fds() - base_fds,
                   "rss_kib_growth": server.status("VmRSS") - base_rss}
        still = 0
        for s in socks:
            s.setblocking(False)
            try:
                if s.recv(1) != b"":
                    still += 1
            except BlockingIOError:
                still += 1
            except OSError:
                pass
            s.close()
        figures["client_sockets_still_open"] = still
        return figures
    finally:
        server.stop()


def reconnect(server_args: list[str], twistd: str, pythonpath: str | None,
              seconds: float = 5.0) -> dict[str, Any]:
    """14.3, 14.4, 14.10: 20 loops of connect, NICK, 18 MSG, BYE from one address."""
    server = Server(server_args, twistd, pythonpath)

    async def run() -> dict[str, Any]:
        reader, writer, _ = await register("127.0.0.1", server.port, "watcher")
        counts = {"MSG": 0, "JOINED": 0, "LEFT": 0}
        log_before = server.log_bytes()

        async def watch() -> None:
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line.split(b" ", 1)[0].decode()
                if verb in counts:
                    counts[verb] += 1

        async def loop(i: int) -> None:
            n = 0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                n += 1
                try:
                    r, w = await open_from("127.0.0.3", server.port)
                    w.write(f"NICK L{i}x{n}\r\n".encode()
                            + b"".join(b"MSG spam %d\r\n" % k for k in range(18)) + b"BYE\r\n")
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(r.read(), 2)
                    w.close()
                except (TimeoutError, OSError):
                    await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        started = time.monotonic()
        await asyncio.gather(*(loop(i) for i in range(20)))
        took = time.monotonic() - started
        await asyncio.sleep(0.5)
        watcher.cancel()
        writer.close()
        log_bytes = server.log_bytes() - log_before
        return {"attack": "reconnect", "seconds": round(took, 1),
                "lobby_msgs_per_s": round(counts["MSG"] / took, 1),
                "joined_per_s": round(counts["JOINED"] / took, 1),
                "left_per_s": round(counts["LEFT"] / took, 1),
                "log_bytes_per_s": round(log_bytes / took)}

    try:
        return asyncio.run(run())
    finally:
        server.stop()


_MEMBERS = """
import asyncio, socket, sys, time
port, count, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def member(i):
    sock = socket.socket(); sock.setblocking(False)
    sock.bind((f"127.0.31.{i // 10 + 1}", 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    r, w = await asyncio.open_connection(sock=sock, limit=1 << 20)
    w.write(f"NICK m{i}\\r\\n".encode())
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if not await asyncio.wait_for(r.read(1 << 16), 1):
                return
        except asyncio.TimeoutError:
            pass
    w.close()
async def main():
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(member(i)))
        if i % 10 == 9:
            await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
asyncio.run(main())
"""

_BYSTANDER = """
import socket, statistics, sys, time
port, seconds = int(sys.argv[1]), float(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=10,
                             source_address=("127.0.32.1", 0))
f = s.makefile("rb")
s.sendall(b"NICK bystander\\r\\n")
while not f.readline().startswith(b"USERS "):
    pass
rtts = []
deadline = time.monotonic() + seconds
n = 0
while time.monotonic() < deadline:
    n += 1
    started = time.monotonic()
    s.sendall(b"PING b%d\\r\\n" % n)
    while True:
        line = f.readline()
        if not line or line.startswith(b"PONG b%d" % n):
            break
    rtts.append(time.monotonic() - started)
    time.sleep(0.15)  # under --flood-rate (10 lines/s)
rtts.sort()
print(round(statistics.median(rtts) * 1000, 1), round(rtts[int(len(rtts) * 0.9)] * 1000, 1))
"""


def crowd(server_args: list[str], twistd: str, pythonpath: str | None,
          seconds: float = 6.0) -> dict[str, Any]:
    """14.3: 300 members (30 addresses) read the lobby; a bystander pings every
    150 ms while 20 reconnect loops (connect, NICK, 18 MSG, BYE) run from one
    address.  The members and the bystander are processes of their own."""
    server = Server(server_args, twistd, pythonpath)
    try:
        members = subprocess.Popen(
            [sys.executable, "-c", _MEMBERS, str(server.port), "300", str(seconds + 12)],
            stdout=subprocess.PIPE, text=True)
        assert members.stdout is not None
        members.stdout.readline()  # ready
        time.sleep(1.0)
        done = subprocess.run(
            [sys.executable, "-c", _BYSTANDER, str(server.port), "2"],
            capture_output=True, text=True, timeout=30)
        quiet = done.stdout.split()
        if len(quiet) != 2:
            raise RuntimeError(f"bystander: {done.stdout} {done.stderr[-2000:]}")
        bystander = subprocess.Popen(
            [sys.executable, "-c", _BYSTANDER.replace("bystander", "bystander2")
             .replace("127.0.32.1", "127.0.32.2"), str(server.port), str(seconds)],
            stdout=subprocess.PIPE, text=True)

        async def loops() -> None:
            deadline = time.monotonic() + seconds

            async def loop(i: int) -> None:
                n = 0
                while time.monotonic() < deadline:
                    n += 1
                    try:
                        r, w = await open_from("127.0.0.3", server.port)
                        w.write(f"NICK L{i}x{n}\r\n".encode()
                                + b"".join(b"MSG spam %d\r\n" % k for k in range(18))
                                + b"BYE\r\n")
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(r.read(), 2)
                        w.close()
                    except (TimeoutError, OSError):
                        await asyncio.sleep(0.01)

            await asyncio.gather(*(loop(i) for i in range(20)))

        asyncio.run(loops())
        busy = bystander.communicate(timeout=60)[0].split()
        members.kill()
        members.wait(5)
        return {"attack": "crowd", "members": 300,
                "bystander_ping_ms_quiet": {"median": float(quiet[0]), "p90": float(quiet[1])},
                "bystander_ping_ms_attack": {"median": float(busy[0]), "p90": float(busy[1])}}
    finally:
        server.stop()


def amplification(server_args: list[str], twistd: str, pythonpath: str | None
                  ) -> dict[str, Any]:
    """14.4: history of 100 lines of 4,000 bytes, then NICK x; a BYE of 4,000 characters."""
    server = Server(server_args, twistd, pythonpath)

    async def run() -> dict[str, Any]:
        _, writer, _ = await register("127.0.0.4", server.port, "filler")
        for i in range(100):
            writer.write(f"MSG {i:04d}{'h' * 3996}\r\n".encode())
            await writer.drain()
            await asyncio.sleep(0.12)  # under every rate limit
        await asyncio.sleep(0.5)
        reader2, writer2, replay = await register("127.0.0.5", server.port, "x")
        _r3, w3, _ = await register("127.0.0.6", server.port, "quitter")
        w3.write(("BYE " + "q" * 4000 + "\r\n").encode())
        left = 0
        while True:
            line = await readline(reader2)
            if line.startswith("LEFT ") and " quitter " in line:
                left = len(line)
                break
        writer.close()
        writer2.close()
        return {"attack": "amplification", "nick_x_bytes_sent": len("NICK x\r\n"),
                "bytes_back_to_nick_x": replay, "left_line_bytes_for_4000_char_bye": left}

    try:
        return asyncio.run(run())
    finally:
        server.stop()


def full_disk(server_args: list[str], twistd: str, pythonpath: str | None,
              seconds: float = 10.0) -> dict[str, Any]:
    """14.5: the database hits the file-size limit; 10 s of lobby traffic."""
    server = Server(server_args, twistd, pythonpath, prlimit=["prlimit", "--fsize=2000000"])

    async def run() -> dict[str, Any]:
        senders = [await register(f"127.0.1.{i}", server.port, f"s{i}") for i in range(10)]
        rss_start = server.status("VmRSS")
        deadline = time.monotonic() + seconds
        sent = 0

        async def drain(reader: asyncio.StreamReader) -> None:
            while await reader.read(1 << 16):
                pass

        readers = [asyncio.create_task(drain(r)) for r, _, _ in senders]
        while time.monotonic() < deadline:
            for _, w, _ in senders:
                w.write(b"".join(b"MSG %s\r\n" % (b"d" * 1000) for _ in range(5)))
                sent += 5
            await asyncio.sleep(0.005)
        rss_end = server.status("VmRSS")
        for task in readers:
            task.cancel()
        for _, w, _ in senders:
            w.close()
        return {"attack": "full-disk", "seconds": seconds, "lines_sent": sent,
                "rss_kib_start": rss_start, "rss_kib_end": rss_end,
                "log_says": sorted({m for m in re.findall(
                    r"(backlog is full|written again|disk I/O error|disk is full)",
                    server.log())})}

    try:
        return asyncio.run(run())
    finally:
        server.stop()


def descriptors(server_args: list[str], twistd: str, pythonpath: str | None
                ) -> dict[str, Any]:
    """14.6: soft limit 1,024 (hard 4,096), 1,100 connections that never send NICK."""
    server = Server(server_args, twistd, pythonpath,
                    prlimit=["prlimit", "--nofile=1024:4096"])
    try:
        socks = []
        hello = 0
        for i in range(1100):
            s = socket.socket()
            s.bind((f"127.0.2.{i // 18 + 1}", 0))
            s.settimeout(2)
            try:
                s.connect((HOST, server.port))
                if s.recv(100).startswith(b"HELLO"):
                    hello += 1
            except OSError:
                pass
            socks.append(s)
        time.sleep(0.5)
        legit = socket.create_connection((HOST, server.port), timeout=2)
        legit.settimeout(2)
        try:
            legit_hello = legit.recv(100).startswith(b"HELLO")
        except OSError:
            legit_hello = False
        log = server.log()
        result = {"attack": "descriptors", "nofile_soft": server.nofile_soft(),
                  "idle_connections_greeted": hello, "legit_user_greeted": legit_hello,
                  "emfile_log_lines": log.count("EMFILE") + log.count("Too many open files")}
        for s in [*socks, legit]:
            s.close()
        return result
    finally:
        server.stop()


def half_open(server_args: list[str], twistd: str, pythonpath: str | None) -> dict[str, Any]:
    """14.7: --max-clients 200; ten addresses hold connections that never NICK,
    and 40 users from other addresses try to join within 20 s."""
    server = Server(["--max-clients", "200", *server_args], twistd, pythonpath)
    try:
        held = []
        for a in range(10):
            for _ in range(20):
                s = socket.socket()
                s.bind((f"127.0.3.{a + 1}", 0))
                s.settimeout(2)
                with contextlib.suppress(OSError):
                    s.connect((HOST, server.port))
                held.append(s)
        time.sleep(0.5)
        ok = 0
        for i in range(40):
            with socket.create_connection((HOST, server.port), timeout=3,
                                          source_address=(f"127.0.6.{i + 1}", 0)) as s:
                s.sendall(f"NICK legit{i}\r\nBYE\r\n".encode())
                data = b""
                with contextlib.suppress(OSError):
                    while b"BYE" not in data:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                ok += b"READY" in data
            time.sleep(0.5)  # 40 users in 20 s, before --nick-timeout frees the held ones
        for s in held:
            s.close()
        return {"attack": "half-open", "legit_registered": ok, "legit_tries": 40}
    finally:
        server.stop()


def invitations(server_args: list[str], twistd: str, pythonpath: str | None
                ) -> dict[str, Any]:
    """14.8: 300 users from 30 addresses invite one victim, who accepts one."""
    server = Server(server_args, twistd, pythonpath)

    async def run() -> dict[str, Any]:
        vr, vw, _ = await register("127.0.0.1", server.port, "victim")
        fans = []
        for a in range(30):
            for k in range(10):
                fans.append(await register(f"127.0.4.{a + 1}", server.port, f"f{a}x{k}"))
            await asyncio.sleep(0.05)
        answers = {"PENDING": 0, "ERROR": 0}
        for _, w, _ in fans:
            w.write(b"PAIR victim\r\n")
        for r, _, _ in fans:
            while True:
                line = await readline(r)
                verb = line.split(" ", 1)[0]
                if verb in answers:
                    answers[verb] += 1
                    break
        await asyncio.sleep(0.5)
        # What the victim receives from here on, accepting one.
        while True:
            try:
                await asyncio.wait_for(vr.readline(), 0.3)
            except TimeoutError:
                break
        vw.write(b"ACCEPT f0x0\r\nPING done\r\n")
        received = 0
        while True:
            raw = await asyncio.wait_for(vr.readline(), 5)
            if raw.startswith(b"PONG done"):
                break
            received += len(raw)
        for _, w, _ in fans:
            w.close()
        vw.close()
        return {"attack": "invitations", "invitations_open": answers["PENDING"],
                "refused": answers["ERROR"], "bytes_to_victim_on_accept": received}

    try:
        return asyncio.run(run())
    finally:
        server.stop()


ATTACKS: dict[str, Callable[..., dict[str, Any]]] = {
    "refused-tls": refused_tls,
    "reconnect": reconnect,
    "crowd": crowd,
    "amplification": amplification,
    "full-disk": full_disk,
    "descriptors": descriptors,
    "half-open": half_open,
    "invitations": invitations,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attack", choices=sorted(ATTACKS))
    parser.add_argument("--twistd", default=str(Path(sys.executable).with_name("twistd")))
    parser.add_argument("--pythonpath", default=None)
    argv = sys.argv[1:] if argv is None else argv
    server_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    figures = ATTACKS[args.attack](server_args, args.twistd, args.pythonpath)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

