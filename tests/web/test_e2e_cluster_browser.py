"""A browser on a cluster node whose Redis is out of reach: the real C{twistd
-n chat --redis ... --web}, a private redis-server, headless Chromium."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.redisproc import REDIS_SERVER
from tests.serverproc import LOOPBACK, free_port
from tests.web.test_e2e_browser import browser as browser_fixture
from tests.web.test_e2e_browser import join_as, logged_in, notices, say, wait
from tests.web.test_e2e_cluster import WebCluster
from tests.web.test_e2e_cluster import web_cluster as web_cluster_fixture

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]

browser = browser_fixture  # the shared fixtures: Chromium; Redis and nodes, stopped at the end
web_cluster = web_cluster_fixture


def test_a_not_sent_from_the_clusters_store_is_said_and_settles_no_message(
    web_cluster: WebCluster, browser: Callable[..., Any]
) -> None:
    """A lobby line sent while Redis is out of reach waits --redis-wait, then
    is answered ERROR unavailable "not sent: ..." (docs/cluster.md): said as
    "Not sent: ..." in the server's words. Such an answer may be any
    command's (a PAIR's ahead of the line, an earlier command's after ERROR
    unconfirmed), so the page settles no message with it, as the terminal
    client (docs/client.md); it settled the oldest one not yet answered, so
    the disconnection that followed named one message instead of both."""
    c = web_cluster
    web_port = free_port()
    node = c.node(web_port, "--redis-wait", "2")
    page = browser()
    page.get(f"http://{LOOPBACK}:{web_port}/")
    join_as(page, "alice")
    logged_in(page, "alice")
    c.redis.stop()
    node.wait_log("Redis at", timeout=10)
    say(page, "into the void")
    wait(page, lambda d: any(n.startswith("Not sent: the chat's store ") for n in notices(d)),
         timeout=2 + 5)
    refused = [n for n in notices(page) if "not take it" in n]
    assert len(refused) == 1 and refused[0].endswith("; send it again in a moment."), refused
    say(page, "still waiting")  # its --redis-wait has not ended when the node goes
    node.kill()
    wait(page, lambda d: "Disconnected from the server." in notices(d))
    assert ("2 messages you sent were not confirmed by the server; once connected again, "
            "the page says which.") in notices(page)
