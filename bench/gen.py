"""
The load generator: worker processes, each an asyncio loop (uvloop when it
is installed) holding a share of the clients.

A worker is driven over a multiprocessing pipe by the coordinator
(L{Generator}).  Receiving is cheap on purpose: every client adds
``chunk.count(b"\\n")`` to one counter per worker; only the sample clients run
one regex over the chunk to read the send timestamps; a chunk is split into
lines only when it may hold a PING.  Senders write ``~<monotonic_ns>~`` into
each message's text when it is written, so the latency includes any time the
message waited in the generator's own buffers.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, cast

from bench.bulk import HANDSHAKE_TIMEOUT, OPEN_WINDOW, bulk_main
from bench.dialects import DIALECTS, MARK, PAD, Dialect, source_address

Spec = tuple[int, str, bool, bool]  # a client: index, nick, sample, sender
LAT_CAP = 400_000  # latency samples kept per worker between two snapshots


class Client(asyncio.Protocol):
    __slots__ = (
        "buf",
        "done",
        "nick",
        "opened",
        "phase",
        "sample",
        "tail",
        "transport",
        "w",
    )

    def __init__(self, w: Worker, nick: str, sample: bool,
                 opened: Callable[[], None] | None = None) -> None:
        self.w = w
        self.opened = opened  # called once, at the first reply or the end
        self.nick = nick
        self.sample = sample
        self.phase = 0  # 0: before the first marker, 1: before done, 2: counting
        self.buf = b""
        self.tail = b""
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a TCP connection's: a stream transport (uvloop's is not a subclass
        # of asyncio.Transport, so this is a cast, not an isinstance check)
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.w.dialect.register(self.nick))

    def _answered(self) -> None:
        opened = self.opened
        if opened is not None:
            self.opened = None
            opened()

    def data_received(self, data: bytes) -> None:
        if self.opened is not None:
            self._answered()
        w = self.w
        w.lines += data.count(w.dialect.line_mark)
        if self.phase == 2:
            if self.sample:
                now = time.monotonic_ns()
                lat = w.lat
                if len(lat) < LAT_CAP:
                    lat.extend([now - int(m) for m in MARK.findall(data)])
            if b"PING" in data or b"PING" in self.tail + data[:8]:
                self._pings(self.tail + data)
            self.tail = data[-8:]
            return
        self.buf += data
        self._pings(data)
        d = w.dialect
        if self.phase == 0:
            i = self.buf.find(d.first_marker)
            if i < 0:
                return
            self.phase = 1
            extra = d.after_registered(self.nick)
            if extra and self.transport is not None:
                self.transport.write(extra)
            self.buf = self.buf[i:]
        if self.phase == 1 and self.buf.find(d.done_marker) >= 0:
            self.phase = 2
            self.buf = b""
            if not self.done.done():
                self.done.set_result(time.monotonic())

    def _pings(self, data: bytes) -> None:
        if b"PING" not in data or self.transport is None:
            return
        for line in data.split(b"\n"):
            if b"PING" in line:
                answer = self.w.dialect.pong(line)
                if answer:
                    self.transport.write(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self._answered()
        self.w.lost += 1
        self.transport = None
        if not self.done.done():
            self.done.set_exception(ConnectionError("closed during handshake"))


@dataclass
class Worker:
    conn: Connection
    dialect: Dialect
    lines: int = 0
    lost: int = 0

    def __post_init__(self) -> None:
        self.lat: list[int] = []
        self.clients: list[Client] = []
        self.senders: list[Client] = []

    # -- commands -------------------------------------------------------
    async def cmd_connect(self, host: str, port: int, specs: list[Spec],
                          concurrency: int, deadline: float = 1e9,
                          window: int = OPEN_WINDOW) -> dict[str, Any]:
        """
        Connect and register clients; specs are (index, nick, sample, sender).
        At most C{concurrency} handshakes at once, of which at most C{window}
        not answered yet (L{OPEN_WINDOW}).
        """
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)
        unanswered = asyncio.Semaphore(window)
        durations: list[float] = []
        errors: dict[str, int] = {}
        t0 = time.monotonic()

        async def one(index: int, nick: str, sample: bool, sender: bool) -> None:
            async with sem:
                await unanswered.acquire()
                released = False

                def answered() -> None:
                    nonlocal released
                    if not released:
                        released = True
                        unanswered.release()

                start = time.monotonic()
                try:
                    src = source_address(index)
                    _, proto = await asyncio.wait_for(
                        loop.create_connection(
                            lambda: Client(self, nick, sample, answered), host, port,
                            local_addr=(src, 0)),
                        HANDSHAKE_TIMEOUT)
                    end = await asyncio.wait_for(proto.done, HANDSHAKE_TIMEOUT)
                except (TimeoutError, OSError, ConnectionError) as e:
                    answered()
                    key = type(e).__name__ + (f":{e.errno}" if isinstance(e, OSError) else "")
                    errors[key] = errors.get(key, 0) + 1
                    return
                durations.append(end - start)
                self.clients.append(proto)
                if sender:
                    self.senders.append(proto)

        await asyncio.gather(*(one(*s) for s in specs))
        t1 = time.monotonic()
        return {"ok": len(durations), "errors": errors, "t0": t0, "t1": t1,
                "durations": sorted(durations)}

    async def cmd_send(self, rate: float, duration: float) -> dict[str, Any]:
        """Send ``rate`` room messages a second for ``duration`` seconds."""
        senders = [s for s in self.senders if s.transport is not None]
        if not senders or rate <= 0:
            return {"sent": 0, "t0": time.monotonic(), "t1": time.monotonic(), "blocked": 0}
        prefix = self.dialect.msg_prefix()
        tail = b"~ " + PAD + b"\r\n"
        framed, encode = self.dialect.framed, self.dialect.encode
        n = len(senders)
        sent = 0
        blocked = 0
        burst_cap = max(1, int(rate * 0.02))
        t0 = time.monotonic()
        end = t0 + duration
        mono = time.monotonic_ns
        while True:
            now = time.monotonic()
            if now >= end:
                break
            due = min(int((now - t0) * rate) - sent, burst_cap)
            for _ in range(due):
                s = senders[sent % n]
                t = s.transport
                if t is None:
                    sent += 1
                    continue
                if t.get_write_buffer_size() > 4 << 20:
                    blocked += 1  # the server is not reading: the rate is not offered
                    sent += 1
                    continue
                line = b"%s~%d%s" % (prefix, mono(), tail)
                t.write(encode(line) if framed else line)
                sent += 1
            await asyncio.sleep(0.001)
        return {"sent": sent - blocked, "blocked": blocked, "t0": t0, "t1": time.monotonic()}

    def cmd_snapshot(self, take_latency: bool) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out: dict[str, Any] = {"lines": self.lines, "lost": self.lost,
                               "cpu": ru.ru_utime + ru.ru_stime, "t": time.monotonic()}
        if take_latency:
            out["lat"] = self.lat
            self.lat = []
        return out

    def cmd_clear_latency(self) -> dict[str, Any]:
        self.lat = []
        return {}

    def cmd_close(self) -> dict[str, Any]:
        for c in self.clients:
            if c.transport is not None:
                c.transport.abort()
        self.clients = []
        self.senders = []
        return {}


def _worker_main(conn: Connection, out: Connection, dialect_name: str, cpu: int | None) -> None:
    if cpu is not None:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    try:
        if os.environ.get("BENCH_NO_UVLOOP"):
            raise ImportError("asked not to use uvloop")
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    w = Worker(out, DIALECTS[dialect_name])
    stop = loop.create_future()

    def reply(tag: int, fut: asyncio.Future[Any] | None, value: Any = None) -> None:
        if fut is not None:
            try:
                value = fut.result()
            except Exception as e:  # reported to the coordinator, which raises
                value = {"error": repr(e)}
        with contextlib.suppress(OSError):
            out.send((tag, value))  # a blocking pipe of its own: never cut short

    def on_command() -> None:
        try:
            os.set_blocking(conn.fileno(), True)  # uvloop may have made it non-blocking
            tag, name, kwargs = conn.recv()
        except (EOFError, OSError):
            if not stop.done():
                stop.set_result(None)
            return
        if name == "exit":
            w.cmd_close()
            reply(tag, None, {})
            if not stop.done():
                stop.set_result(None)
            return
        fn = getattr(w, "cmd_" + name)
        if asyncio.iscoroutinefunction(fn):
            task = loop.create_task(fn(**kwargs))
            task.add_done_callback(lambda f: reply(tag, f))
        else:
            try:
                reply(tag, None, fn(**kwargs))
            except Exception as e:
                reply(tag, None, {"error": repr(e)})

    loop.add_reader(conn.fileno(), on_command)
    try:
        loop.run_until_complete(stop)
    finally:
        loop.remove_reader(conn.fileno())
        loop.close()
        conn.close()
        out.close()


def registration_phases(clients: int, senders: int, samples: int,
                        prefix: str) -> list[list[Spec]]:
    """
    The clients in the groups they register in, one group after the other:
    the senders, then the receivers, each sample receiver alone in the middle
    of its share of the others (see L{Generator.connect}).
    """
    n_samples = min(samples, max(0, clients - senders))
    bulk = [(i, f"{prefix}{i}", False, False) for i in range(senders + n_samples, clients)]
    phases = [[(i, f"{prefix}{i}", False, True) for i in range(min(senders, clients))]]
    taken = 0
    for k in range(n_samples):
        cut = (2 * k + 1) * len(bulk) // (2 * n_samples)
        phases.append(bulk[taken:cut])
        phases.append([(senders + k, f"{prefix}{senders + k}", True, False)])
        taken = cut
    phases.append(bulk[taken:])
    return [phase for phase in phases if phase]


def worker_plans(phase: list[Spec], workers: int) -> list[list[Spec]]:
    """
    Each worker's share of one phase: the senders on worker 0, the samples
    on worker 1, the bulk receivers spread over the others by index.
    """
    plans: list[list[Spec]] = [[] for _ in range(workers)]
    for spec in phase:
        index, _nick, sample, sender = spec
        plans[0 if sender else 1 if sample else 2 + index % (workers - 2)].append(spec)
    return plans


class Generator:
    """
    The coordinator's handle on the worker processes.

    Worker 0 holds the senders, worker 1 the few sample receivers that read
    the timestamps (a process of their own, reading at once), the others the
    bulk receivers (L{bench.bulk}: an epoll loop that reads each socket at
    most every 20 ms, so that one read takes many lines).  All of them run on
    ``cpu`` (the core the server does not have).
    """

    def __init__(self, dialect: str, receivers_workers: int = 1, cpu: int | None = 1) -> None:
        ctx = mp.get_context("fork")
        self.dialect = DIALECTS[dialect]
        self.conns: list[Connection] = []  # answers from each worker
        self.cmds: list[Connection] = []  # commands to each worker
        self.procs: list[Any] = []
        for k in range(2 + receivers_workers):
            cmd_r, cmd_w = ctx.Pipe(duplex=False)
            rep_r, rep_w = ctx.Pipe(duplex=False)
            target = _worker_main if k < 2 else bulk_main
            p = ctx.Process(target=target, args=(cmd_r, rep_w, dialect, cpu), daemon=True)
            p.start()
            cmd_r.close()
            rep_w.close()
            self.conns.append(rep_r)
            self.cmds.append(cmd_w)
            self.procs.append(p)
        self.pids = [p.pid for p in self.procs]
        self.tag = 0
        self.answers: dict[tuple[int, int], Any] = {}
        self.send_tag = 0

    def _ask(self, i: int, name: str, **kwargs: Any) -> int:
        self.tag += 1
        self.cmds[i].send((self.tag, name, kwargs))
        return self.tag

    def _result(self, i: int, tag: int, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while (i, tag) not in self.answers:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conns[i].poll(left):
                raise TimeoutError(f"generator worker {i} did not answer in {timeout} s")
            t, value = self.conns[i].recv()
            self.answers[(i, t)] = value
        value = self.answers.pop((i, tag))
        if isinstance(value, dict) and "error" in value:
            raise RuntimeError(f"generator worker {i}: {value['error']}")
        return value

    def broadcast(self, name: str, timeout: float = 120.0, **kwargs: Any) -> list[Any]:
        tags = [self._ask(i, name, **kwargs) for i in range(len(self.conns))]
        return [self._result(i, t, timeout) for i, t in enumerate(tags)]

    def connect(self, host: str, port: int, clients: int, senders: int, samples: int,
                prefix: str, concurrency: int = 200, timeout: float = 180.0,
                window: int = OPEN_WINDOW) -> dict[str, Any]:
        """
        Register ``clients`` clients: the ``senders`` first (on worker 0), then
        the receivers, with the ``samples`` (worker 1) spread through the
        order of registration, each in the middle of its share of the bulk
        receivers.  A server that writes to a room's members in the order
        they joined then has the samples at every depth of its fan-out, so
        the latency is an average member's, not that of whoever came last
        (all at once, the few samples tended to finish together, at one
        depth: 82nd to 89th of 100 in our server).  At most ``window`` of
        them opened and not answered yet, over all workers (L{OPEN_WINDOW}).
        """
        res = []
        deadline = time.monotonic() + timeout
        for phase in registration_phases(clients, senders, samples, prefix):
            res += self._connect_phase(host, port, worker_plans(phase, len(self.conns)),
                                       concurrency, max(1.0, deadline - time.monotonic()),
                                       window)
        ok = sum(r["ok"] for r in res)
        errors: dict[str, int] = {}
        for r in res:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        durations = sorted(d for r in res for d in r["durations"])
        t0 = min(r["t0"] for r in res)
        t1 = max(r["t1"] for r in res)
        # attempts the server never accepted, made again (the bulk receivers')
        retried = sum(r.get("retried", 0) for r in res)
        return {"ok": ok, "errors": errors, "seconds": t1 - t0, "durations": durations,
                "retried": retried}

    def _connect_phase(self, host: str, port: int, plans: list[list[Spec]],
                       concurrency: int, timeout: float,
                       window: int = OPEN_WINDOW) -> list[dict[str, Any]]:
        """Run each worker's share of one phase at once; wait for them all."""
        busy = max(1, sum(1 for p in plans if p))
        tags = {i: self._ask(i, "connect", host=host, port=port, specs=plan,
                             concurrency=max(1, concurrency // busy),
                             deadline=max(1.0, timeout - 10.0),
                             window=max(1, window // busy))
                for i, plan in enumerate(plans) if plan}
        return [self._result(i, t, timeout) for i, t in tags.items()]

    def send(self, rate: float, duration: float) -> None:
        """Start sending (answer collected by L{send_result})."""
        self.send_tag = self._ask(0, "send", rate=rate, duration=duration)

    def send_result(self, timeout: float) -> Any:
        return self._result(0, self.send_tag, timeout)

    def snapshot(self, take_latency: bool = False) -> dict[str, Any]:
        res = self.broadcast("snapshot", timeout=30.0, take_latency=take_latency)
        out: dict[str, Any] = {
            "lines": sum(r["lines"] for r in res),
            "lost": sum(r["lost"] for r in res),
            "cpu": sum(r["cpu"] for r in res),
            "t": time.monotonic(),
        }
        if take_latency:
            out["lat"] = [x for r in res for x in r["lat"]]
        return out

    def close(self) -> None:
        for i in range(len(self.conns)):
            with contextlib.suppress(Exception):
                self._result(i, self._ask(i, "exit"), 10.0)
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        for c in self.conns + self.cmds:
            c.close()

