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
import contextlib
import os
import resource
import socket
import sys
import time
import traceback
from collections.abc import Callable

SOCKETS = 10
LINE = b"MSG " + b"x" * 90 + b"\r\n"


def writer(port: int, rate: float, seconds: float) -> None:
    """Child process: send ``rate`` lines/s for ``seconds``, then close."""
    with contextlib.suppress(OSError):  # a 1-CPU machine: run unpinned
        os.sched_setaffinity(0, {1})
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(SOCKETS)]
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


Result = tuple[int, int, float]  # lines, wake-ups, CPU seconds (from the first line on)


def accept_all(listener: socket.socket) -> list[socket.socket]:
    listener.settimeout(10.0)  # a writer that died must not hang us
    conns = [listener.accept()[0] for _ in range(SOCKETS)]
    for c in conns:
        c.setblocking(False)
    return conns


def read_bare(listener: socket.socket, deadline: float, total: int) -> Result:
    import select

    poller = select.epoll()
    conns = {c.fileno(): c for c in accept_all(listener)}
    for fd in conns:
        poller.register(fd, select.EPOLLIN)
    c0 = 0.0
    lines = wakes = 0
    while lines < total and conns and time.monotonic() < deadline:
        events = poller.poll(max(0.0, deadline - time.monotonic()))
        if not lines:
            c0 = cpu()  # from the first line on
        else:
            wakes += 1
        for fd, _event in events:
            data = conns[fd].recv(65536)
            if not data:  # the writer went early
                poller.unregister(fd)
                conns.pop(fd).close()
            lines += data.count(b"\n")
    used = cpu() - c0 if lines else 0.0
    for c in conns.values():
        c.close()
    poller.close()
    return lines, wakes, used


def read_twisted(listener: socket.socket, deadline: float, total: int) -> Result:
    from twisted.internet import epollreactor

    epollreactor.install()  # type: ignore[no-untyped-call]
    from twisted.internet import protocol, reactor

    counts = {"lines": 0}
    clock = {"c0": 0.0, "used": 0.0}
    iterations = {"n": 0, "at_first_line": 0}

    def finish() -> None:
        if counts["lines"] and not clock["used"]:
            clock["used"] = cpu() - clock["c0"]
        if reactor.running:
            reactor.stop()

    class Count(protocol.Protocol):
        def dataReceived(self, data: bytes) -> None:
            if not counts["lines"]:
                clock["c0"] = cpu()
                iterations["at_first_line"] = iterations["n"]
            counts["lines"] += data.count(b"\n")
            if counts["lines"] >= total:
                finish()

    factory = protocol.Factory.forProtocol(Count)
    for c in accept_all(listener):
        reactor.adoptStreamConnection(  # type: ignore[attr-defined]
            c.fileno(), socket.AF_INET, factory)
        c.close()  # the reactor has its own copy of the descriptor
    real_iteration = reactor.doIteration  # type: ignore[attr-defined]

    def counted_iteration(timeout: float | None) -> None:
        iterations["n"] += 1
        real_iteration(timeout)

    reactor.doIteration = counted_iteration  # type: ignore[attr-defined]
    reactor.callLater(max(0.0, deadline - time.monotonic()), finish)
    reactor.run()
    return counts["lines"], iterations["n"] - iterations["at_first_line"], clock["used"]


def child(work: Callable[[], bool]) -> int:
    """Fork; the child runs C{work} and exits 0 if it returned true."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if work() else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            os._exit(code)
    return pid


def exited_ok(pid: int) -> bool:
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.wakeup")
    ap.add_argument("--rate", type=float, default=2000.0, help="lines/s in all")
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    total = int(args.rate * args.seconds)
    ok = True
    for mode, reader in (("bare epoll", read_bare), ("Twisted", read_twisted)):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(SOCKETS)
        port = listener.getsockname()[1]

        def write(port: int = port, listener: socket.socket = listener) -> bool:
            listener.close()
            writer(port, args.rate, args.seconds)
            return True

        def read(reader: Callable[[socket.socket, float, int], Result] = reader,
                 mode: str = mode, listener: socket.socket = listener) -> bool:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {0})
            deadline = time.monotonic() + args.seconds + 5.0
            lines, wakes, used = reader(listener, deadline, total)
            return report(mode, lines, total, wakes, used)

        wpid = child(write)
        # A reactor runs once per process, so each reader has a process of its own.
        rpid = child(read)
        listener.close()
        ok = exited_ok(rpid) and ok
        ok = exited_ok(wpid) and ok
    return 0 if ok else 1


def report(mode: str, lines: int, total: int, wakes: int, used: float) -> bool:
    complete = lines >= total
    print(f"{mode:10s}: {lines} of {total} lines{'' if complete else ' (INCOMPLETE)'}, "
          f"{wakes} wake-ups, CPU {used * 1e3:.0f} ms: "
          f"{used / max(wakes, 1) * 1e6:.1f} us per wake-up, "
          f"{used / max(lines, 1) * 1e6:.1f} us per line", flush=True)
    return complete


if __name__ == "__main__":
    sys.exit(main())
