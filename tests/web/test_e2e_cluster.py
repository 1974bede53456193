"""--web in cluster mode: a browser on one node and one on another share the lobby."""

from __future__ import annotations

import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import LOOPBACK, LineClient, ServerProcess, free_port, wait_for_port
from tests.web.wsframes import CLOSE, WsClient, frame, text

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]


class WebCluster:
    """A private redis-server and nodes on it; all stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.redis = RedisServer(tmp_path).start()
        self.nodes: list[ServerProcess] = []
        self.clients: list[WsClient | LineClient] = []

    def node(self, web_port: int | None = None, *args: str) -> ServerProcess:
        """A node on the cluster's Redis, with C{--web} on C{web_port} if
        given, and the options C{args}."""
        web = [] if web_port is None else ["--web", f"tcp:{web_port}:interface={LOOPBACK}"]
        node = ServerProcess(self.tmp_path,
                             ["--redis", self.redis.url, "--node-timeout", "10", *web, *args])
        self.nodes.append(node.start())
        node.wait_log("cluster: connected to")
        if web_port is not None:
            wait_for_port(web_port, proc=node.proc)
        return node

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for node in self.nodes:
            node.kill()
        self.redis.stop(signal.SIGKILL)


@pytest.fixture
def web_cluster(tmp_path: Path) -> Iterator[WebCluster]:
    c = WebCluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()
    for node in c.nodes:
        assert node.problems() == [], node.log()[-3000:]


def test_browsers_on_two_cluster_nodes_share_the_lobby(web_cluster: WebCluster) -> None:
    c = web_cluster
    web_ports = [free_port(), free_port()]
    nodes = [c.node(port) for port in web_ports]
    alice, bob = WsClient(web_ports[0]), WsClient(web_ports[1])
    carol = LineClient(nodes[1].port)
    c.clients += [alice, bob, carol]
    alice.register("alice")
    bob.register("bob")
    carol.register("carol")
    bob.send("MSG hello from the other node")
    line = alice.expect("MSG ")
    assert line.split(" ", 4)[2:] == ["bob", "*", "hello from the other node"]
    assert carol.expect("MSG ").split(" ", 4)[2:] == ["bob", "*", "hello from the other node"]
    alice.send("DM carol across the cluster")
    assert carol.expect("MSG ").split(" ", 4)[2:] == ["alice", "carol", "across the cluster"]


def test_a_browser_s_last_messages_before_its_close_reach_the_others(
        web_cluster: WebCluster) -> None:
    """A browser that sends its last lines and a close frame at once (a tab
    closed right after sending): every line held behind the first one the
    cluster decides is still handled, and the others see it leave as its
    BYE says, as one server does (rev-clu F1: they were dropped, and the
    user shown 'disconnected')."""
    c = web_cluster
    web_port = free_port()
    c.node(web_port)
    other = c.node()
    watcher = LineClient(other.port)
    browser = WsClient(web_port)
    c.clients += [watcher, browser]
    watcher.register("watcher")
    browser.register("tab")
    watcher.expect("JOINED")
    browser.sock.sendall(b"".join(text(f"MSG ws{i}") for i in range(10)) + text("BYE done")
                         + frame(struct.pack("!H", 1000), opcode=CLOSE))
    browser.close()
    seen: list[str] = []
    while not seen or not seen[-1].startswith("LEFT"):
        seen.append(watcher.expect(lambda line: line.startswith(("MSG", "LEFT")), timeout=15))
    assert [line.split(" ", 2)[2] for line in seen] == [
        *(f"tab * ws{i}" for i in range(10)), "tab quit done"]
