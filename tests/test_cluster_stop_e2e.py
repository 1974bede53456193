"""
A node stopped (SIGTERM) during a short Redis restart, end to end: it waits
for Redis within its stop's grace (3 s), so its C{dead} is written and its
users leave at once, instead of some 10 to 25 s later when the others find
its lease missing (review revclu F4).  Real redis-server and nodes; every
wait bounded; everything stopped by the cluster fixture.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.redisproc import REDIS_SERVER
from tests.test_cluster_e2e import Cluster
from tests.test_cluster_e2e import cluster as cluster_fixture

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

cluster = cluster_fixture

# How long a node told to stop while Redis is away is seen not to exit.
NOT_EXITED_WINDOW = 0.5


def test_a_node_stopped_while_redis_restarts_still_takes_its_users_out(
    cluster: Callable[..., Cluster],
) -> None:
    o = cluster(2, node_timeout=15.0)  # the default: a lapsed lease is seen late
    n0, n1 = o.nodes
    watcher, leaver = o.user(n0, "watcher"), o.user(n1, "leaver")
    watcher.sync()
    leaver.sync()
    o.redis.stop(signal.SIGKILL)
    n1.wait_log("unreachable", timeout=5)  # the node knows Redis is gone
    assert n1.proc is not None
    n1.proc.send_signal(signal.SIGTERM)
    # Something that must not happen: the node exiting without Redis.  It
    # waits up to its stop's grace (3 s); this window is well inside it.
    time.sleep(NOT_EXITED_WINDOW)
    assert n1.proc.poll() is None, "the node did not wait for Redis"
    o.redis.start()  # a second after it went, as a restart
    back = time.monotonic()
    n1.proc.wait(10.0)  # within the grace (a second SIGTERM would cut it short)
    assert "Server Shut Down." in n1.log()
    left = watcher.expect(lambda line: line.startswith("LEFT"), timeout=8.0)
    assert left.split()[2:] == ["leaver", "disconnected"]
    assert time.monotonic() - back < 8.0
    again = o.connect(n0)
    again.expect("NICK")
    again.send("NICK leaver")
    assert again.expect(lambda line: line.startswith(("READY", "RETRY"))) == "READY leaver"
