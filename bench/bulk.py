"""
The bulk receivers: a plain epoll loop in a worker process of its own.

Most clients only have to count what they receive.  Giving each of them an
asyncio protocol costs a Python callback per socket read, and with 1,000
clients a light load means 1,000 tiny reads per message: the generator, not
the server, would then be the limit.  Here the loop reads every ready socket
once per pass and then sleeps out the rest of ``interval`` (20 ms), so a
socket's data piles up in the kernel and one ``recv`` takes many lines at
once; the per-read cost is paid per interval, not per message.  The latency
is measured elsewhere (the sample receivers read at once), so delaying these
reads costs nothing but a little socket buffer.

Handshakes happen in the same loop (without the sleep while any is open).
Commands come over the same pipe protocol as the asyncio workers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import select
import socket
import struct
import termios
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.dialects import DIALECTS, Dialect, source_address

HANDSHAKE_TIMEOUT = 60.0
READ = 1 << 18
# At most this many connections opened that the server has not answered yet
# (its accept queue and what it has accepted but not read), whatever the
# concurrency: ngircd listens with a backlog of 10 (hard-coded), and a
# connection beyond it is dropped by the kernel and retried by TCP only
# seconds later (see RETRY_UNACKED), so ngircd registered too few in time.  A
# reply proves the server accepted the connection, and each dialect's
# registration draws one at once (see bench.dialects).
OPEN_WINDOW = 8
# A connection whose registration the server's kernel has still not
# acknowledged this long after connect() completed has no socket on the
# server's side: its SYN queue (as short as its backlog) overflowed, the
# kernel answered with a SYN cookie, and the ACK that should have made the
# socket found the accept queue full and was dropped.  Only the client's
# retransmissions can make it now, and they back off in lockstep (0.2 s to
# 26 s apart), so each round some 150 of them meet an accept queue of 11.
# Such an attempt is aborted and made again, as a client with a connect
# timeout would; a connection the server did accept is never retried (its
# kernel acknowledges the registration at once, read or not).
RETRY_UNACKED = 2.0
MAX_ATTEMPTS = 8
CHECK_EVERY = 0.5  # seconds between two looks at the handshakes still open


def unacked_bytes(sock: socket.socket) -> int:
    """Bytes written and not yet acknowledged by the peer's kernel."""
    raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    value: int = struct.unpack("i", raw)[0]
    return value


def stalled(phase: int, answered: bool, connected_for: float, unacked: int,
            attempts: int) -> bool:
    """Whether an attempt is one the server never accepted (L{RETRY_UNACKED})."""
    return (phase == 0 and not answered and unacked > 0 and connected_for >= RETRY_UNACKED
            and attempts < MAX_ATTEMPTS)


def timeout_reason(phase: int, answered: bool, unacked: int) -> str:
    """Where a handshake that ran out of time stood, for the results: a
    server's shortfall must say why."""
    if phase == -1:
        return "connect() unfinished"
    if phase == 0 and unacked > 0:
        return "never accepted (registration not acknowledged)"
    if not answered:
        return "accepted, no reply"
    return "registration unfinished"


class RawClient:
    __slots__ = ("answered", "attempts", "buf", "connected", "dialect", "index", "nick",
                 "phase", "sock", "started", "tail")

    def __init__(self, sock: socket.socket, index: int, nick: str, dialect: Dialect,
                 started: float | None = None, attempts: int = 1) -> None:
        self.sock = sock
        self.index = index
        self.nick = nick
        self.dialect = dialect
        self.phase = -1  # -1 connecting, 0/1 handshake, 2 counting
        self.buf = b""
        self.tail = b""
        # the first attempt's start: a retry's time counts in the handshake's
        self.started = time.monotonic() if started is None else started
        self.connected = 0.0  # when this attempt's connect() completed
        self.attempts = attempts
        self.answered = False  # the server has replied, or the attempt ended

    def unacked(self) -> int:
        """What the server's kernel has not acknowledged of what we wrote."""
        if self.phase != 0:
            return 0  # connecting (nothing written yet), or answered
        try:
            return unacked_bytes(self.sock)
        except OSError:
            return 0

    def reason(self) -> str:
        """Why this handshake has not finished (see L{timeout_reason})."""
        return timeout_reason(self.phase, self.answered, self.unacked())

    def write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(data)  # small (registration, PONG): fits the buffer

    def pings(self, data: bytes) -> None:
        if b"PING" not in data:
            return
        for line in data.split(b"\n"):
            if b"PING" in line:
                answer = self.dialect.pong(line)
                if answer:
                    self.write(answer)

    def handshake(self, data: bytes) -> bool:
        """Feed handshake input; True once the handshake is complete."""
        self.buf += data
        self.pings(data)
        d = self.dialect
        if self.phase == 0:
            i = self.buf.find(d.first_marker)
            if i < 0:
                return False
            self.phase = 1
            extra = d.after_registered(self.nick)
            if extra:
                self.write(extra)
            self.buf = self.buf[i:]
        if self.phase == 1 and self.buf.find(d.done_marker) >= 0:
            self.phase = 2
            self.buf = b""
            return True
        return False


def bulk_main(conn: Connection, out: Connection, dialect_name: str, cpu: int | None,
              interval: float = 0.02) -> None:
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    dialect = DIALECTS[dialect_name]
    mark = dialect.line_mark
    ep = select.epoll()
    cmd_fd = conn.fileno()
    ep.register(cmd_fd, select.EPOLLIN)
    clients: dict[int, RawClient] = {}
    rbuf = bytearray(READ)
    shaking: dict[int, RawClient] = {}  # clients still in their handshake
    next_check = 0.0
    lines = 0
    lost = 0
    # the open connect job, if any
    job: dict[str, Any] | None = None
    pending: list[tuple[int, str, bool, bool]] = []

    def reply(tag: int, value: Any) -> None:
        with contextlib.suppress(OSError):
            out.send((tag, value))

    def drop(fd: int, c: RawClient) -> None:
        with contextlib.suppress(OSError, ValueError):
            ep.unregister(fd)
        c.sock.close()
        del clients[fd]
        shaking.pop(fd, None)

    def start_one(index: int, nick: str, started: float | None = None,
                  attempts: int = 1) -> None:
        assert job is not None
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((source_address(index), 0))
            err = s.connect_ex((job["host"], job["port"]))
        except OSError as e:
            s.close()
            fail(f"OSError:{e.errno}")
            return
        if err not in (0, errno.EINPROGRESS):
            s.close()
            fail(f"OSError:{err}")
            return
        c = RawClient(s, index, nick, dialect, started, attempts)
        clients[s.fileno()] = c
        shaking[s.fileno()] = c
        ep.register(s.fileno(), select.EPOLLOUT | select.EPOLLIN)
        job["inflight"] += 1
        job["unanswered"] += 1

    def answered(c: RawClient) -> None:
        """The server replied (so it accepted the connection), or it ended."""
        if not c.answered and job is not None:
            c.answered = True
            job["unanswered"] -= 1

    def fail(key: str) -> None:
        assert job is not None
        job["errors"][key] = job["errors"].get(key, 0) + 1

    def retry(fd: int, c: RawClient) -> None:
        """Abort an attempt the server never accepted and start another."""
        assert job is not None
        with contextlib.suppress(OSError):
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        drop(fd, c)
        answered(c)
        job["inflight"] -= 1
        job["retried"] += 1
        start_one(c.index, c.nick, c.started, c.attempts + 1)

    def finish_one(c: RawClient, ok: bool, key: str = "") -> None:
        assert job is not None
        answered(c)
        job["inflight"] -= 1
        if ok:
            job["durations"].append(time.monotonic() - c.started)
        else:
            fail(key)

    running = True
    while running:
        t_pass = time.monotonic()
        # start connections up to the job's concurrency and open window
        if job is not None:
            while (pending and job["inflight"] < job["concurrency"]
                   and job["unanswered"] < job["window"]):
                index, nick, _sample, _sender = pending.pop()
                start_one(index, nick)
        events = ep.poll(0.001 if job is not None else interval)
        for fd, ev in events:
            if fd == cmd_fd:
                try:
                    os.set_blocking(cmd_fd, True)
                    tag, name, kwargs = conn.recv()
                except (EOFError, OSError):
                    running = False
                    break
                if name == "connect":
                    job = {"tag": tag, "host": kwargs["host"], "port": kwargs["port"],
                           "concurrency": kwargs["concurrency"], "inflight": 0,
                           "window": kwargs.get("window", OPEN_WINDOW), "unanswered": 0,
                           "errors": {}, "durations": [], "retried": 0,
                           "t0": time.monotonic(),
                           "deadline": time.monotonic() + kwargs.get("deadline", 1e9)}
                    pending = list(reversed(kwargs["specs"]))
                elif name == "snapshot":
                    ru = resource.getrusage(resource.RUSAGE_SELF)
                    value: dict[str, Any] = {"lines": lines, "lost": lost,
                                             "cpu": ru.ru_utime + ru.ru_stime,
                                             "t": time.monotonic()}
                    if kwargs.get("take_latency"):
                        value["lat"] = []
                    reply(tag, value)
                elif name in ("close", "exit"):
                    for cfd, gone in list(clients.items()):
                        drop(cfd, gone)
                    reply(tag, {})
                    if name == "exit":
                        running = False
                        break
                else:
                    reply(tag, {})
                continue
            c = clients.get(fd)
            if c is None:
                continue
            if c.phase == -1:
                if ev & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        drop(fd, c)
                        finish_one(c, False, f"OSError:{err}")
                        continue
                    c.phase = 0
                    c.connected = time.monotonic()
                    ep.modify(fd, select.EPOLLIN)
                    c.write(dialect.register(c.nick))
                continue
            if c.phase == 2:
                # counting: into one reused buffer (no 256 KiB allocation per read)
                try:
                    n = c.sock.recv_into(rbuf)
                except BlockingIOError:
                    continue
                except OSError:
                    n = 0
                if n:
                    lines += rbuf.count(mark, 0, n)
                    if rbuf.find(b"PING", 0, n) >= 0 or b"PING" in c.tail + rbuf[:8]:
                        c.pings(c.tail + bytes(rbuf[:n]))
                    c.tail = bytes(rbuf[max(0, n - 8):n])
                    continue
                data = b""
            else:
                try:
                    data = c.sock.recv(READ)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
            answered(c)
            if not data:
                lost += 1
                if c.phase < 2 and job is not None:
                    finish_one(c, False, "ConnectionError:None")
                drop(fd, c)
                continue
            lines += data.count(mark)
            if c.handshake(data):
                shaking.pop(fd, None)
                if job is not None:
                    finish_one(c, True)
        if job is not None:
            now = time.monotonic()
            # handshake timeouts (checked at most every pass; cheap enough)
            if now >= job["deadline"] and (pending or shaking):
                # out of time: report what completed, count the rest
                if pending:
                    job["errors"]["not started (out of time)"] = len(pending)
                    pending = []
                for cfd, c in list(shaking.items()):
                    why = c.reason()
                    drop(cfd, c)
                    finish_one(c, False, f"unfinished (out of time): {why}")
            if now >= next_check:
                next_check = now + CHECK_EVERY
                for cfd, c in list(shaking.items()):
                    if now - c.started > HANDSHAKE_TIMEOUT:
                        why = c.reason()
                        drop(cfd, c)
                        finish_one(c, False, f"TimeoutError: {why}")
                    elif stalled(c.phase, c.answered, now - c.connected, c.unacked(),
                                 c.attempts):
                        retry(cfd, c)
            if not pending and job["inflight"] == 0:
                d = job["durations"]
                reply(job["tag"], {"ok": len(d), "errors": job["errors"], "t0": job["t0"],
                                   "t1": now, "durations": sorted(d),
                                   "retried": job["retried"]})
                job = None
        else:
            spare = interval - (time.monotonic() - t_pass)
            if spare > 0:
                time.sleep(spare)
    for cfd, c in list(clients.items()):
        drop(cfd, c)
    ep.close()
    conn.close()
    out.close()
