"""
Bytecodes a lobby message costs the server, counted, not timed.

    .venv/bin/python -m bench.opcount [--clients 100] [--messages 200] [--top 30]

Runs the server's real factory and protocol in this process on the epoll
reactor, listening on loopback, with C{--clients} plain sockets registered
as the benchmark's clients are (its defaults, a generous flood limit, the
history in an in-memory SQLite store).  One of them sends C{--messages}
lobby C{MSG}s, one at a time: each is read, fanned out through the direct
pass and received by every client before the next is sent, as at light
load (200 msgs/s).  The reactor's turns that carry a message run under
C{sys.settrace} with opcode events on, so the count is exact and the same
on a busy machine: per message, the bytecodes and Python calls of our own
code (C{twisted_chat}), of Twisted and of the rest (the standard library),
and a table of the functions with the most (docs/benchmark.md).
"""

from __future__ import annotations

import argparse
import collections
import linecache
import math
import os
import socket
import sys
from types import FrameType
from typing import Any

from twisted_chat.server.config import MEMORY, ServerConfig
from twisted_chat.server.factory import ChatFactory
from twisted_chat.server.history import History
from twisted_chat.server.store import SQLiteStore

_OURS = os.sep + "twisted_chat" + os.sep
_TWISTED = os.sep + "twisted" + os.sep


def part(filename: str) -> str:
    """Whose code a file is: ours, Twisted's, or other (the standard library)."""
    if _OURS in filename:
        return "ours"
    if _TWISTED in filename:
        return "twisted"
    return "other"


class Counter:
    """Opcode and call counts per function, while it is installed."""

    def __init__(self) -> None:
        self.ops: collections.Counter[tuple[str, str]] = collections.Counter()
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self.lines: collections.Counter[tuple[str, int | None]] = collections.Counter()

    def trace(self, frame: FrameType, event: str, arg: object) -> Any:
        code = frame.f_code
        key = (code.co_filename, code.co_qualname)
        if event == "call":
            self.calls[key] += 1
            frame.f_trace_opcodes = True
            frame.f_trace_lines = False
            return self.local
        return None

    def local(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode":
            code = frame.f_code
            self.ops[(code.co_filename, code.co_qualname)] += 1
            self.lines[(code.co_filename, frame.f_lineno)] += 1
        return self.local

    def add(self, other: Counter) -> None:
        self.ops.update(other.ops)
        self.calls.update(other.calls)
        self.lines.update(other.lines)

    def run(self, work: Any, *args: Any) -> None:
        sys.settrace(self.trace)
        try:
            work(*args)
        finally:
            sys.settrace(None)


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _until(reactor: Any, condition: Any, counter: Counter | None = None,
           turns: int = 10_000) -> int:
    """Run reactor turns (counted when C{counter}) until C{condition()}."""
    n = 0
    while not condition():
        if counter is None:
            reactor.iterate(0.001)
        else:
            counter.run(reactor.iterate, 0.001)
        n += 1
        if n > turns:
            raise RuntimeError("the server did not get there")
    return n


def setup(reactor: Any, clients: int) -> tuple[ChatFactory, list[socket.socket], list[bytearray]]:
    # As the benchmark runs it (bench.servers, bench.run.GENEROUS_FLOOD).
    config = ServerConfig(flood_rate=1_000_000.0, flood_burst=1_000_000, db=MEMORY,
                          exempt=("127.0.0.0/8",))
    history = History(config.history)
    store = SQLiteStore.open(MEMORY, reactor)
    history.attach(store, [])
    factory = ChatFactory(config, reactor, history)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    address = ("127.0.0.1", port.getHost().port)
    socks: list[socket.socket] = []
    got: list[bytearray] = []
    for i in range(clients):
        s = socket.create_connection(address)
        s.setblocking(False)
        socks.append(s)
        got.append(bytearray())
        s.send(f"NICK p{i}\r\n".encode())
        _until(reactor, lambda s=s, g=got[-1]: _read_into(s, g) and b"USERS " in g)
    # Everyone has seen everyone's JOINED.
    reactor.iterate(0)
    for s, g in zip(socks, got, strict=True):
        _read_into(s, g)
        g.clear()
    return factory, socks, got


def _read_into(sock: socket.socket, into: bytearray) -> bool:
    into += _recv_all(sock)
    return True


def measure(reactor: Any, clients: int, messages: int) -> tuple[Counter, int, int]:
    """Count C{messages} lobby messages: the counts of those that took the
    usual number of reactor turns and ran no timer (the server's periodic
    watches are not a message's work), how many they are, and that number
    of turns."""
    _factory, socks, got = setup(reactor, clients)
    sender = socks[0]
    counted: list[tuple[int, Counter]] = []
    for n in range(messages):
        reactor.iterate(0)  # what is due anyway runs uncounted
        line = f"MSG message number {n} from the opcount script\r\n".encode()
        sender.send(line)
        want = b" p0 * " + line[4:]

        def everyone(want: bytes = want) -> bool:
            for s, g in zip(socks, got, strict=True):
                g += _recv_all(s)
            return all(want in g for g in got)

        counter = Counter()
        due = min((call.getTime() for call in reactor.getDelayedCalls()), default=math.inf)
        turns = _until(reactor, everyone, counter)
        # A timer that fell due meanwhile (the server's once-a-second
        # watches) is not the message's work: left out, with its message.
        counted.append((turns if reactor.seconds() < due else 0, counter))
        for g in got:
            g.clear()
    for s in socks:
        s.close()
    usual = collections.Counter(turns for turns, _ in counted if turns).most_common(1)[0][0]
    total = Counter()
    kept = 0
    for turns, counter in counted:
        if turns == usual:
            total.add(counter)
            kept += 1
    return total, kept, usual


def report(counter: Counter, messages: int, turns: int, top: int, lines: int = 0,
           sent: int | None = None) -> str:
    ops_by: collections.Counter[str] = collections.Counter()
    calls_by: collections.Counter[str] = collections.Counter()
    for (filename, _), n in counter.ops.items():
        ops_by[part(filename)] += n
    for (filename, _), n in counter.calls.items():
        calls_by[part(filename)] += n
    total_ops = sum(ops_by.values())
    total_calls = sum(calls_by.values())
    out = [f"{messages} lobby messages" + ("" if sent is None else f" of {sent}")
           + f", {turns} reactor turn{'s' if turns != 1 else ''} each",
           f"per message: {total_ops / messages:,.1f} bytecodes, "
           f"{total_calls / messages:.1f} Python calls"]
    for who in ("ours", "twisted", "other"):
        out.append(f"  {who:8} {ops_by[who] / messages:8,.1f} bytecodes "
                   f"{calls_by[who] / messages:6.1f} calls")
    out += ["", f"{'bytecodes':>10} {'calls':>7}  function (per message)"]
    for (filename, name), n in counter.ops.most_common(top):
        module = filename.rsplit(os.sep, 2)
        where = "/".join(module[-2:])
        calls = counter.calls[(filename, name)]
        out.append(f"{n / messages:10.1f} {calls / messages:7.2f}  {where}:{name}")
    if lines:
        out += ["", f"{'bytecodes':>10}  line of our code (per message)"]
        ours = [(key, n) for key, n in counter.lines.items() if part(key[0]) == "ours"]
        ours.sort(key=lambda item: -item[1])
        for (filename, lineno), n in ours[:lines]:
            where = "/".join(filename.rsplit(os.sep, 2)[-2:])
            # Some bytecodes belong to no line (f_lineno None): no source.
            source = linecache.getline(filename, lineno).strip() if lineno else ""
            out.append(f"{n / messages:10.1f}  {where}:{lineno or '?'}  {source}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.opcount")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--lines", type=int, default=0,
                    help="also the lines of our code with the most bytecodes")
    args = ap.parse_args(argv)
    from twisted.internet import epollreactor

    epollreactor.install()  # type: ignore[no-untyped-call]
    from twisted.internet import reactor

    from twisted_chat.server.ports.epollturn import lighten

    lighten(reactor)  # as makeService does
    counter, kept, turns = measure(reactor, args.clients, args.messages)
    print(report(counter, kept, turns, args.top, args.lines, sent=args.messages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
