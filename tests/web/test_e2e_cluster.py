"""--web in cluster mode: a browser on one node and one on another share the lobby."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.redisproc import REDIS_SERVER, RedisServer
from tests.serverproc import LOOPBACK, LineClient, ServerProcess, free_port, wait_for_port
from tests.web.wsframes import WsClient

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed"),
]


def test_browsers_on_two_cluster_nodes_share_the_lobby(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path).start()
    nodes: list[ServerProcess] = []
    clients: list[WsClient | LineClient] = []
    try:
        web_ports = []
        for _ in range(2):
            web_port = free_port()
            node = ServerProcess(tmp_path, ["--redis", redis.url, "--node-timeout", "10",
                                            "--web", f"tcp:{web_port}:interface={LOOPBACK}"])
            nodes.append(node.start())
            node.wait_log("cluster: connected to")
            wait_for_port(web_port, proc=node.proc)
            web_ports.append(web_port)
        alice, bob = WsClient(web_ports[0]), WsClient(web_ports[1])
        carol = LineClient(nodes[1].port)
        clients += [alice, bob, carol]
        alice.register("alice")
        bob.register("bob")
        carol.register("carol")
        bob.send("MSG hello from the other node")
        line = alice.expect("MSG ")
        assert line.split(" ", 4)[2:] == ["bob", "*", "hello from the other node"]
        assert carol.expect("MSG ").split(" ", 4)[2:] == ["bob", "*", "hello from the other node"]
        alice.send("DM carol across the cluster")
        assert carol.expect("MSG ").split(" ", 4)[2:] == ["alice", "carol",
                                                          "across the cluster"]
    finally:
        for client in clients:
            client.close()
        for node in nodes:
            node.kill()
        redis.stop(signal.SIGKILL)
    for node in nodes:
        assert node.problems() == [], node.log()[-3000:]
