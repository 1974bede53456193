"""
One cluster node's own work per lobby message, in-process (no Redis, no
sockets): ``python -m bench.cluster_apply [--local 1000] [--remote 0,7000]``.

A node (the real ``ChatFactory`` on a ``ClusterState``) with ``--local``
users of its own, whose connections count deliveries and write nowhere, and
``--remote`` users of other nodes (plus the sender, on a node of its own).
Each lobby message comes from another node as its own batch of one event
(the worst case: no batching), as the node's Redis reader hands it over
(parsed from JSON), and is fanned out at once.  Prints the process CPU per
message for each number of remote users: docs/cluster.md's model is
``c_apply + m_local * c_delivery`` with no term for the remote users, so
the figures should not grow with ``--remote``.
(The connections here cost almost nothing per delivery, so the figure is
``c_apply`` plus the walk over the fan-out's members; a socket's write adds
about 1 us per delivery in a real node.)  It uses only what main had before
the index, so the same command measures an older checkout for comparison.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet.task import Clock

from twisted_chat.server.cluster.node import ClusterState
from twisted_chat.server.cluster.service import FactoryHooks
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.factory import ChatFactory, hub_settings
from twisted_chat.server.history import History


class Sink:
    """A connection that writes nowhere but counts the lobby lines it was
    given (what the factory and the node call on a connection: a line's
    arrival for its --redis-wait, the parts of a user's own lines)."""

    __slots__ = ("delivered",)
    closing = False

    def __init__(self) -> None:
        self.delivered = 0

    def deliver(self, data: bytes) -> None:
        self.delivered += 1

    def write(self, data: bytes) -> None:
        pass

    def write_parts(self, parts: Sequence[bytes]) -> None:
        pass

    def deliver_parts(self, parts: Sequence[bytes]) -> None:
        pass  # a user's own lines (its READY block), not the lobby's

    def arrived(self) -> float:
        """When the line being handled arrived (a command's --redis-wait
        counts from it, ClusterState.deadline): now, as each is handled."""
        return math.inf


class Log:
    """The node's L{EventLog}: its appended events, to be handed back with
    stream ids.  Written at once, always open (the node is available)."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def append(self, event: str, bounded: bool = False) -> object:
        self.events.append(event)
        return None

    def withdraw(self, ticket: object) -> bool:
        return False  # written at once

    def renamed(self, node: str) -> None:
        pass

    def own_events_read(self) -> bool:
        return True

    def applied(self) -> None:
        pass

    def command_waits(self) -> None:
        pass  # never out of reach: nothing to reconnect


def build(local: int, remote: int) -> tuple[ClusterState, ChatFactory, list[Sink], int]:
    clock = Clock()
    config = ServerConfig(fanout_delay=0.0, history=100)
    states: list[ClusterState] = []

    def make(factory: ChatFactory) -> ClusterState:
        state = ClusterState("me", factory.lines, factory.history, hub_settings(config), clock,
                             FactoryHooks(factory))
        states.append(state)
        return state

    factory = ChatFactory(config, clock, History(config.history), state=make, backlog=None)
    state = states[0]
    log = Log()
    state.events = log
    state.available = True
    ms = 1_700_000_000_000
    sinks = [Sink() for _ in range(local)]
    for i, sink in enumerate(sinks):
        state.register(f"own{i}", sink, "-")
    batch: list[tuple[str, dict[str, Any]]] = [
        (f"{ms}-{i}", json.loads(text)) for i, text in enumerate(log.events)]
    # The sender, on a node of its own, then the other nodes' users.
    batch += [(f"{ms}-{local + i}", {"t": "reg", "nick": f"far{i}", "a": "-",
                                     "n": "far" if i else "sender", "k": i or 1})
              for i in range(remote + 1)]
    state.deliver(batch)
    factory.fanout.flush()
    return state, factory, sinks, ms + 1


def per_message(local: int, remote: int, messages: int) -> tuple[float, float]:
    """Process CPU seconds per message, and deliveries per message."""
    state, factory, sinks, ms = build(local, remote)
    uid = next(m.uid for m in state.replica.members.values() if m.node == "sender")
    events = [json.dumps({"t": "say", "u": uid, "x": f"message {i}", "n": "sender",
                          "k": 2 + i}) for i in range(messages)]
    before = sum(s.delivered for s in sinks)
    deliver, flush = state.deliver, factory.fanout.flush
    start = time.process_time()
    for i, text in enumerate(events):
        deliver([(f"{ms + i}-0", json.loads(text))])
        flush()
    elapsed = time.process_time() - start
    return elapsed / messages, (sum(s.delivered for s in sinks) - before) / messages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster_apply", description=__doc__)
    ap.add_argument("--local", type=int, default=1000)
    ap.add_argument("--remote", default="0,1000,7000",
                    help="comma-separated numbers of other nodes' users")
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = ap.parse_args(argv)
    print("| own users | other nodes' users | us per message (best of %d) "
          "| deliveries/message |" % args.repeat)
    print("|---|---|---|---|")
    for remote in (int(x) for x in args.remote.split(",")):
        runs = [per_message(args.local, remote, args.messages) for _ in range(args.repeat)]
        best = min(cpu for cpu, _ in runs)
        print(f"| {args.local} | {remote + 1} | {best * 1e6:.0f} | {runs[0][1]:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
