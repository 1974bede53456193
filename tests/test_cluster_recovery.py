"""
Recovery after Redis loses data, what the review revclu found (deterministic,
on the L{MemoryRedis} and L{Node} fakes of test_cluster_read):

- F6: a node whose C{dead} Redis lost is declared dead again by the node
  that had declared it (its users' nicks are not held for good), and the
  users who were shown them leave are not shown it again;
- F9: a user whose C{leave} Redis took and lost before its own node read it
  back leaves again after that node's C{hello} (not online for good);
- F3: the users of a node that died while Redis lost all its data are shown
  leaving (C{LEFT}) where they were shown online, once that node's lease is
  found missing.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from tests.test_cluster_read import Conn, MemoryRedis, Node, cluster, now, say


def _beats(redis: MemoryRedis, clock: Clock, seconds: float) -> None:
    """Let C{seconds} pass, a second at a time (heartbeats, reconnections)."""
    for _ in range(int(seconds)):
        clock.advance(1)
        redis.pump()


def _dies(redis: MemoryRedis, node: Node) -> None:
    """SIGKILL: cut off for good, its lease gone (MemoryRedis ignores PX)."""
    node.cut()
    redis.keys.pop("chat:node:" + node.state.node, None)


def test_a_node_whose_dead_redis_lost_is_declared_dead_again() -> None:
    """revclu F6: n0 declares n1 dead (watcher is shown LEFT zed), then Redis
    loses that C{dead} (the stream's last entry).  n0 rebuilds from what
    Redis kept, where zed is online again: n1's lease is still missing, so
    n0 must declare it again (it used to skip the node it had declared
    once: zed's nick held for good), and watcher, shown zed leave already,
    is not shown it again.  (Lost before n0's next heartbeat: after it, n0
    had forgotten it declared n1, n1 having no users left.)"""
    redis, clock, (n0, n1) = cluster(2)
    watcher = n0.user("watcher")
    n1.user("zed")
    _dies(redis, n1)
    for _ in range(200):  # until n0 declares n1 dead
        clock.advance(0.1)
        redis.pump()
        if n0.nicks() == ["watcher"]:
            break
    assert n0.listener.departed() == ["zed"]
    dead = redis.events()[-1]
    assert dead["t"] == "dead" and dead["n"] == n0.state.node
    del redis.stream[-1:]  # Redis loses the dead (before n0's next heartbeat)
    say(n0, watcher, "anyone?")  # n0 sees the loss, rebuilds: zed is back
    _beats(redis, clock, 2)
    assert n0.lost == 0 and n0.nicks() == ["watcher", "zed"]
    # USERS lists zed again meanwhile: an invitation to zed ends when zed
    # goes, told as usual (only zed's LEFT is not told again).
    n0.state.pair(now(watcher), "zed")
    _beats(redis, clock, 30)
    assert n0.nicks() == ["watcher"]
    assert n0.listener.departed() == ["zed"]  # told once
    declined = [(a[0].nick, a[1].nick, a[2]) for name, a in n0.listener.calls
                if name == "declined"]
    assert declined == [("watcher", "zed", "gone")]
    zed: list[Any] = []
    n0.state.register("zed", Conn(), "-").addBoth(zed.append)
    redis.pump()
    assert [type(z).__name__ for z in zed] == ["User"]
