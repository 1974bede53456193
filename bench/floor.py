"""
The platform's floor: what a lobby message costs on this server's platform
(CPython, Twisted's epoll reactor and the server's own fan-out and send
path) with no chat logic at all.

    .venv/bin/python -m bench.floor PORT

It answers C{NICK <nick>} with C{READY} and C{USERS} (all the benchmark's
generator waits for), then sends every later line that starts with C{MSG }
to every registered connection as a lobby line of the server's size, through
the server's own L{LobbyFanout}, L{DirectPass} and L{SendQueue}.  No
parsing past that, no hub, history, database, flood control or metrics.
C{python -m bench.ab --servers chat,floor,inspircd} then says how much of
the server's CPU per delivered line is the chat's own work and how much the
platform's (docs/benchmark.md, "The platform's floor").  Not a server
anyone should run: no limits at all.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.protocol import Factory, Protocol

from twisted_chat.server.output.fanout import LobbyFanout, reactor_backlog
from twisted_chat.server.output.sendqueue import DirectPass, SendQueue

# As long as the server's own timestamp, so that the lines are the same size.
_TS = b"2026-01-01T00:00:00.000Z"
_SENDQ = 1 << 20


class Floor(Factory):
    def __init__(self, reactor: Any) -> None:
        self.members: tuple[FloorProtocol, ...] = ()
        self.fanout = LobbyFanout(reactor, lambda: self.members, 0.01, reactor_backlog(reactor),
                                  write_all=DirectPass())

    def buildProtocol(self, addr: Any) -> FloorProtocol:
        return FloorProtocol(self)


class FloorProtocol(Protocol):
    closing = False  # the fan-out's Member: a lost one leaves the members instead

    def __init__(self, factory: Floor) -> None:
        self.floor = factory
        self.nick = b""
        self.buffer = b""
        self.send_queue: SendQueue | None = None

    def connectionMade(self) -> None:
        self.send_queue = SendQueue(self.transport, _SENDQ)
        self.send_queue.start()

    def connectionLost(self, reason: Any = None) -> None:
        if self.send_queue is not None:
            self.send_queue.retire()
            self.send_queue = None
        self.floor.members = tuple(m for m in self.floor.members if m is not self)

    def deliver(self, data: bytes) -> None:
        if self.send_queue is not None and not self.send_queue.write(data):
            transport: Any = self.transport
            transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if self.nick:
                if line.startswith(b"MSG "):
                    self.floor.fanout.add(b"MSG %s %s * :%s\r\n" % (_TS, self.nick, line[4:]))
            elif line.startswith(b"NICK "):
                self.nick = line[5:]
                self.deliver(b"READY %s\r\nUSERS %s\r\n" % (self.nick, self.nick))
                self.floor.members = (*self.floor.members, self)


def main(argv: list[str]) -> int:
    from twisted.internet import epollreactor

    epollreactor.install()  # type: ignore[no-untyped-call]
    from twisted.internet import reactor as installed

    reactor: Any = installed
    reactor.listenTCP(int(argv[0]), Floor(reactor), backlog=1024, interface="127.0.0.1")
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
