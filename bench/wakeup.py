"""
What one reactor wake-up costs on this machine, with no chat server at all.

    .venv/bin/python -m bench.wakeup [--rate 2000] [--seconds 3]

A writer process on CPU 1 sends short lines over 10 loopback sockets at a
steady rate, one line per write; the reader on CPU 0 only counts them, first
with a bare ``select.epoll`` loop, then with Twisted's epoll reactor and a
``Protocol`` whose ``dataReceived`` counts newlines.  Each prints its CPU
time (``getrusage``) per wake-up and per line.  At light load every line is
a wake-up of an idle core, and that, not the chat server's own work, is
most of what a delivered line costs there; the benchmark's light-load rows
are read against this floor (docs/benchmark.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import sys
import time

SOCKETS = 10
LINE = b"MSG " + b"x" * 90 + b"\r\n"


def writer(port: int, rate: float, seconds: float) -> None:
    """Child process: send ``rate`` lines/s for ``seconds``, then close."""
    os.sched_setaffinity(0, {1})
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(SOCKETS)]
    for s in socks:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    time.sleep(0.3)
    total = int(rate * seconds)
    t0 = time.perf_counter()
    for n in range(total):
        wait = t0 + n / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        socks[n % SOCKETS].send(LINE)
    time.sleep(0.3)
    for s in socks:
        s.close()


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def read_bare(listener: socket.socket, deadline: float, total: int) -> tuple[int, int, float]:
    import select

    poller = select.epoll()
    conns = {}
    for _ in range(SOCKETS):
        c, _addr = listener.accept()
        c.setblocking(False)
        conns[c.fileno()] = c
        poller.register(c.fileno(), select.EPOLLIN)
    c0 = 0.0
    lines = wakes = 0
    while lines < total and time.monotonic() < deadline:
        events = poller.poll(max(0.0, deadline - time.monotonic()))
        if not lines:
            c0 = cpu()  # from the first line on
        else:
            wakes += 1
        for fd, _event in events:
            lines += conns[fd].recv(65536).count(b"\n")
    used = cpu() - c0
    for c in conns.values():
        c.close()
    return lines, wakes, used


def read_twisted(listener: socket.socket, deadline: float, total: int) -> tuple[int, int, float]:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import protocol, reactor

    counts = {"lines": 0}
    clock = {"c0": 0.0, "used": 0.0, "wakes0": 0}

    class Count(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            if not counts["lines"]:
                clock["c0"] = cpu()
                clock["wakes0"] = iterations["n"]
            counts["lines"] += data.count(b"\n")
            if counts["lines"] >= total:
                clock["used"] = cpu() - clock["c0"]
                reactor.stop()  # type: ignore[attr-defined]

    iterations = {"n": 0}
    factory = protocol.Factory.forProtocol(Count)
    for _ in range(SOCKETS):
        c, _addr = listener.accept()
        c.setblocking(False)
        reactor.adoptStreamConnection(  # type: ignore[attr-defined]
            c.fileno(), socket.AF_INET, factory)
        c.close()  # the reactor has its own copy of the descriptor
    real_iteration = reactor.doIteration  # type: ignore[attr-defined]

    def counted_iteration(timeout: float | None) -> None:
        iterations["n"] += 1
        real_iteration(timeout)

    reactor.doIteration = counted_iteration  # type: ignore[attr-defined]
    reactor.callLater(max(0.0, deadline - time.monotonic()), reactor.stop)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return counts["lines"], iterations["n"] - clock["wakes0"], clock["used"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wakeup")
    ap.add_argument("--rate", type=float, default=2000.0, help="lines/s in all")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    for mode, reader in (("bare epoll", read_bare), ("Twisted", read_twisted)):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(SOCKETS)
        port = listener.getsockname()[1]
        pid = os.fork()
        if pid == 0:
            listener.close()
            try:
                writer(port, args.rate, args.seconds)
            finally:
                os._exit(0)
        os.sched_setaffinity(0, {0})
        deadline = time.monotonic() + args.seconds + 5.0
        total = int(args.rate * args.seconds)
        if mode == "Twisted":
            # A reactor can run once per process: read in a child of our own.
            rpid = os.fork()
            if rpid == 0:
                try:
                    lines, wakes, used = reader(listener, deadline, total)
                    report(mode, lines, wakes, used)
                finally:
                    os._exit(0)
            listener.close()
            os.waitpid(rpid, 0)
        else:
            lines, wakes, used = reader(listener, deadline, total)
            listener.close()
            report(mode, lines, wakes, used)
        os.waitpid(pid, 0)
    return 0


def report(mode: str, lines: int, wakes: int, used: float) -> None:
    print(f"{mode:10s}: {lines} lines, {wakes} wake-ups, CPU {used * 1e3:.0f} ms: "
          f"{used / max(wakes, 1) * 1e6:.1f} us per wake-up, "
          f"{used / max(lines, 1) * 1e6:.1f} us per line", flush=True)


if __name__ == "__main__":
    sys.exit(main())
