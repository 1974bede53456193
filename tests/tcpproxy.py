"""
A TCP proxy for the cluster tests, run as a subprocess (Twisted), loopback
only: C{python -m tests.tcpproxy TARGET_PORT} prints C{listening PORT}, then
obeys one order a line on stdin, answering C{ok ORDER} once done:

  - C{cut}: every connection is aborted (the peers see a reset) and new ones
    are aborted as soon as they are accepted, as a host that is down.
  - C{stall}: nothing is forwarded any more, either way, and nothing is
    lost: the proxy stops reading (the bytes wait in the kernel's buffers,
    as behind a network that drops packets and TCP that retransmits); new
    connections are accepted and stalled too.
  - C{mute}: what the client sends still reaches the target; what the
    target answers is thrown away (a reply lost on its way back).  The
    connections muted are aborted at C{heal} (their replies are missing).
  - C{heal}: forward again.
  - C{refuse N TEXT}: the N-th piece a client sends that holds C{TEXT}
    (counted from now on; C{TEXT} without spaces) is held until the target,
    a Redis, refuses writes (the proxy sets its C{min-replicas-to-write} to
    1, with no replica, on a connection of its own), then forwarded: as if
    Redis began refusing just then.  What the client sends after it waits
    behind it.

L{Proxy} drives it from a test: every wait is bounded.
"""

from __future__ import annotations

import select
import subprocess
import sys
from typing import Any

from tests.serverproc import LOOPBACK


class Proxy:
    """The test's side: starts the subprocess and sends it words."""

    def __init__(self, target_port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.tcpproxy", str(target_port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, bufsize=1,
        )
        try:
            word, port = self._answer().split()
            assert word == "listening", word
        except BaseException:
            self.stop()  # a proxy that never answered is not left running
            raise
        self.port = int(port)

    def _answer(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("the proxy did not answer")
        return self.proc.stdout.readline().strip()

    def do(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        assert self._answer() == f"ok {word}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def main(target_port: int) -> None:
    from twisted.internet import defer, protocol, reactor, stdio
    from twisted.protocols.basic import LineReceiver

    class Pair:
        """One client connection and its connection to the target."""

        def __init__(self, inbound: Any) -> None:
            self.inbound = inbound
            self.outbound: Any = None
            self.early: list[bytes] = []  # from the client before the target answered
            self.muted = False
            self.held: list[bytes] | None = None  # until the target refuses writes

        def transports(self) -> list[Any]:
            return [p.transport for p in (self.inbound, self.outbound)
                    if p is not None and p.transport is not None]

        def close(self) -> None:
            for transport in self.transports():
                transport.abortConnection()

    pairs: set[Pair] = set()
    mode = ["open"]
    # refuse N TEXT: [how many more pieces holding TEXT, TEXT]
    armed: list[Any] = []

    class RefuseWrites(protocol.Protocol):
        """Tells the target to refuse writes; fires C{done} once it has."""

        def __init__(self) -> None:
            self.done: Any = defer.Deferred()

        def connectionMade(self) -> None:
            args = [b"CONFIG", b"SET", b"min-replicas-to-write", b"1"]
            self.transport.write(b"*%d\r\n" % len(args) + b"".join(
                b"$%d\r\n%s\r\n" % (len(a), a) for a in args))

        def dataReceived(self, data: bytes) -> None:
            self.transport.loseConnection()
            if not self.done.called:
                self.done.callback(data)

        def connectionLost(self, reason: Any = None) -> None:
            if not self.done.called:
                self.done.callback(None)

    def refuse_writes() -> Any:
        d = protocol.ClientCreator(reactor, RefuseWrites).connectTCP(LOOPBACK, target_port)
        return d.addCallback(lambda proto: proto.done)

    class Outbound(protocol.Protocol):
        pair: Pair

        def connectionMade(self) -> None:
            pair = self.pair
            pair.outbound = self
            if mode[0] == "stall":
                self.transport.pauseProducing()
                return  # what came early waits for heal
            self.flush()

        def flush(self) -> None:
            for data in self.pair.early:
                self.transport.write(data)
            self.pair.early.clear()

        def dataReceived(self, data: bytes) -> None:
            if self.pair.muted or mode[0] == "mute":
                self.pair.muted = True
                return
            self.pair.inbound.transport.write(data)

        def connectionLost(self, reason: Any = None) -> None:
            if self.pair.inbound.transport is not None:
                self.pair.inbound.transport.loseConnection()

    class Inbound(protocol.Protocol):
        def connectionMade(self) -> None:
            if mode[0] == "cut":
                self.transport.abortConnection()
                return
            self.pair = Pair(self)
            pairs.add(self.pair)
            if mode[0] == "stall":
                self.transport.pauseProducing()
            self._connect()

        def _connect(self) -> None:
            def build() -> Outbound:
                out = Outbound()
                out.pair = self.pair
                return out

            protocol.ClientCreator(reactor, build).connectTCP(LOOPBACK, target_port) \
                .addErrback(lambda _: self.transport.abortConnection())

        def dataReceived(self, data: bytes) -> None:
            pair = self.pair
            if pair.held is not None:
                pair.held.append(data)
                return
            if armed and armed[1] in data:
                armed[0] -= 1
                if armed[0] == 0:
                    armed.clear()
                    pair.held = [data]
                    refuse_writes().addBoth(lambda _: self.release())
                    return
            self.forward(data)

        def forward(self, data: bytes) -> None:
            if self.pair.outbound is None:
                self.pair.early.append(data)
            elif self.pair.outbound.transport is not None:
                self.pair.outbound.transport.write(data)

        def release(self) -> None:
            held, self.pair.held = self.pair.held or [], None
            for data in held:
                self.forward(data)

        def connectionLost(self, reason: Any = None) -> None:
            pair = getattr(self, "pair", None)
            if pair is None:
                return
            pairs.discard(pair)
            if pair.outbound is not None and pair.outbound.transport is not None:
                pair.outbound.transport.loseConnection()

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            word = line.decode().strip()
            if word.startswith("refuse "):
                _, count, text = word.split(" ", 2)
                armed[:] = [int(count), text.encode()]
            elif word == "cut":
                mode[0] = "cut"
                for pair in list(pairs):
                    pair.close()
            elif word == "stall":
                mode[0] = "stall"
                for pair in pairs:
                    for transport in pair.transports():
                        transport.pauseProducing()
            elif word == "mute":
                mode[0] = "mute"
            elif word == "heal":
                mode[0] = "open"
                for pair in list(pairs):
                    if pair.muted:
                        pair.close()
                    else:
                        for transport in pair.transports():
                            transport.resumeProducing()
                        if pair.outbound is not None:
                            pair.outbound.flush()
            else:
                self.sendLine(f"unknown {word}".encode())
                return
            self.sendLine(f"ok {word}".encode())

        def connectionLost(self, reason: Any = None) -> None:
            if reactor.running:  # type: ignore[attr-defined]
                reactor.stop()  # type: ignore[attr-defined]

    factory = protocol.Factory.forProtocol(Inbound)
    port = reactor.listenTCP(0, factory, interface=LOOPBACK)  # type: ignore[attr-defined]
    control = Control()
    stdio.StandardIO(control)
    control.sendLine(f"listening {port.getHost().port}".encode())
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]))
