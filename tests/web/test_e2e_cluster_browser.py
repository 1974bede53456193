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


def test_a_message_the_clusters_store_did_not_take_is_not_sent_and_settled(
    web_cluster: WebCluster, browser: Callable[..., Any]
) -> None:
    """A lobby line sent while Redis is out of reach waits --redis-wait, then
    is answered ERROR unavailable "not sent: ..." (docs/cluster.md). The
    page showed the server's text as it came and left the message
    unconfirmed, so the disconnection that followed named it as maybe lost.
    Now it says "Not sent: ..." and the message is settled, as the terminal
    client says it; a line still waiting when the node goes is named."""
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
    assert ("One message you sent was not confirmed by the server; once connected again, "
            "the page says which.") in notices(page)
