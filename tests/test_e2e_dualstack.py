"""
The README's dual-stack form, C{--port 'tcp6:PORT:interface=\\:\\:'}, with
the real server (rev14-ops LOW 5: every documented form was IPv4 only):
IPv6 and IPv4 clients both reach it, and an IPv4 client, which the socket
shows as an IPv4-mapped IPv6 address (C{::ffff:127.0.0.2}), is held to the
per-address limits as its IPv4 address, not lumped with every other IPv4
client into the one IPv6 /64 C{::ffff:0:0/64}.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.serverproc import LineClient, ServerProcess, free_port
from tests.test_e2e_tls import ipv6_loopback
from tests.web.wsframes import WsClient

pytestmark = pytest.mark.e2e


def from_address(source: str, port: int) -> LineClient:
    """A client of 127.0.0.1:C{port} from the IPv4 address C{source}."""
    return LineClient(port, sock=socket.create_connection(("127.0.0.1", port), timeout=5,
                                                          source_address=(source, 0)))


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback (::1)")
def test_the_dual_stack_form_takes_ipv6_and_ipv4_each_address_its_own(
        tmp_path: Path) -> None:
    port = free_port()
    server = ServerProcess(tmp_path, ["--db", ":memory:", "--max-per-ip", "1"], port=port,
                           endpoint=f"tcp6:{port}:interface=\\:\\:", exempt=()).start()
    try:
        six = LineClient(port, host="::1")
        six.register("six")
        four = from_address("127.0.0.2", port)
        four.register("four")
        other_four = from_address("127.0.0.3", port)  # its own address, its own slot
        assert "USERS 3" in other_four.register("other")
        again = from_address("127.0.0.2", port)  # the same address: over --max-per-ip
        assert again.rest()[-1].startswith("BYE full")
        server.wait_log("refused ::ffff:127.0.0.2: too many connections from 127.0.0.2")
        assert "six is ready from [::1]:" in server.log()
    finally:
        server.stop()
    assert server.problems() == []


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 loopback (::1)")
def test_a_trusted_proxy_on_a_dual_stack_web_port_forwards_each_users_address(
        tmp_path: Path) -> None:
    # rev20-shape F1: on a dual-stack web port the proxy's connections come
    # from ::ffff:127.0.0.1, which --trust-proxy 127.0.0.1 did not match: the
    # X-Forwarded-For was ignored and every user counted as the proxy.
    web_port = free_port()
    server = ServerProcess(tmp_path, ["--db", ":memory:", "--max-per-ip", "1",
                                      "--web", f"tcp6:{web_port}:interface=\\:\\:",
                                      "--trust-proxy", "127.0.0.1"], exempt=()).start()
    try:
        alice = WsClient(web_port, extra={"X-Forwarded-For": "10.9.9.9"})
        alice.register("alice")
        # Another user behind the same proxy: its own address, its own slot.
        bob = WsClient(web_port, extra={"X-Forwarded-For": "10.9.9.10"})
        bob.register("bob")
        server.wait_log("alice is ready from 10.9.9.9:")
        server.wait_log("bob is ready from 10.9.9.10:")
    finally:
        server.stop()
    assert server.problems() == []
