"""The endpoints' checks before start-up (listening.py): where Twisted's
private port and interface are read, and what happens without them."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import endpoints
from twisted.internet import reactor as global_reactor
from twisted.internet.testing import MemoryReactor

from tests.test_service import ThreadedMemoryReactor, options, start_log
from twisted_chat.server import listening
from twisted_chat.server.service import makeService


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process (here, a plain socket) listens on at 127.0.0.1."""
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        yield busy.getsockname()[1]


def without(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Endpoints parsed from now on lack Twisted's private attribute C{name}
    (as if a Twisted release renamed it)."""
    parse = endpoints.serverFromString

    def parsed(reactor: Any, description: str) -> Any:
        endpoint = parse(reactor, description)
        delattr(endpoint, name)
        return endpoint

    monkeypatch.setattr(endpoints, "serverFromString", parsed)


def test_tcp_address_reads_the_interface_and_port() -> None:
    def address(description: str) -> tuple[str, int] | None:
        return listening.tcp_address(endpoints.serverFromString(global_reactor, description))

    assert address("tcp:7001") == ("", 7001)
    assert address("tcp:7001:interface=127.0.0.1") == ("127.0.0.1", 7001)
    assert address("tcp6:7001:interface=\\:\\:1") == ("::1", 7001)
    assert address("unix:/tmp/chat.sock") is None


@pytest.mark.parametrize("name", ["_interface", "_port"])
def test_tcp_address_without_twisteds_private_attribute_cannot_tell(
        monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    without(monkeypatch, name)
    assert listening.tcp_address(
        endpoints.serverFromString(global_reactor, "tcp:7001:interface=127.0.0.1")) is None


def test_a_port_busy_on_the_interface_asked_for_stops_start_up(held_port: int) -> None:
    description = f"tcp:{held_port}:interface=127.0.0.1"
    with pytest.raises(SystemExit) as e:
        listening.listen_on(description, global_reactor)
    assert str(e.value) == (f"twistd chat: cannot listen on --port {description}: "
                            "Address already in use")


def test_a_port_busy_on_another_interface_does_not_stop_start_up(held_port: int) -> None:
    endpoint = listening.listen_on(f"tcp:{held_port}:interface=127.0.0.2", global_reactor)
    assert listening.tcp_address(endpoint) == ("127.0.0.2", held_port)


def test_without_the_private_interface_the_busy_check_is_skipped_not_widened(
        monkeypatch: pytest.MonkeyPatch, held_port: int) -> None:
    """rev11-shape2 S4: the fallback was C{""}, so the trial bind covered
    every interface, and a server bound to 127.0.0.2 refused to start because
    127.0.0.1 held the same port.  Now it cannot tell, checks nothing, and
    the real bind reports (if anything is wrong)."""
    without(monkeypatch, "_interface")
    endpoint = listening.listen_on(f"tcp:{held_port}:interface=127.0.0.2", global_reactor)
    assert isinstance(endpoint, endpoints.TCP4ServerEndpoint)


def warnings_at_start(argv: list[str]) -> list[str]:
    return [line for line in start_log(*argv) if "--metrics listens on every interface" in line]


def test_without_the_private_interface_the_metrics_port_warns() -> None:
    """The metrics port cannot tell either, and takes the safe side: it may
    listen on every interface, so it says so."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        without(monkeypatch, "_interface")
        assert len(warnings_at_start(
            ["--db", ":memory:", "--metrics", "tcp:9108:interface=127.0.0.1"])) == 1
    assert warnings_at_start(
        ["--db", ":memory:", "--metrics", "tcp:9108:interface=127.0.0.1"]) == []


def test_the_ports_and_the_metrics_warning_read_the_endpoints_through_tcp_address(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One reader of Twisted's private attributes: what tcp_address says is
    what the port check and the metrics warning go by."""
    seen: list[str] = []

    def told(endpoint: Any) -> tuple[str, int]:
        seen.append(type(endpoint).__name__)
        return ("127.0.0.1", 9108)

    monkeypatch.setattr(listening, "tcp_address", told)
    # A bare port is on every interface; tcp_address says loopback: no warning.
    assert warnings_at_start(["--db", ":memory:", "--port", "7001", "--metrics", "9108"]) == []
    assert seen == ["TCP4ServerEndpoint"] * 3  # --port, --metrics, the warning
    monkeypatch.setattr(listening, "tcp_address", lambda endpoint: ("", 70000))
    with pytest.raises(SystemExit) as e:
        makeService(options("--db", ":memory:", "--port", "7001"), ThreadedMemoryReactor())
    assert "port 70000 is out of range" in str(e.value)


# -- An ssl: endpoint sends its certificate file's whole chain ---------------


def test_ssl_arguments_read_as_twisteds_parser_reads_them() -> None:
    assert listening.ssl_arguments("ssl:7443:privateKey=k.pem:certKey=c\\:x.pem") == {
        "port": "7443", "privateKey": "k.pem", "certKey": "c:x.pem"}
    assert listening.ssl_arguments("ssl:7443:k.pem:c.pem:interface=a=b") == {
        "port": "7443", "privateKey": "k.pem", "certKey": "c.pem", "interface": "a=b"}


def test_a_fullchain_certkey_gives_the_rest_as_the_chain(tmp_path: Any) -> None:
    from tests.certchain import make_chain

    chain = make_chain(tmp_path)
    endpoint = listening.listen_on(
        f"ssl:0:privateKey={chain.privkey}:certKey={chain.fullchain}", MemoryReactor())
    sent = endpoint._sslContextFactory.extraCertChain
    assert [c.to_cryptography().subject.rfc4514_string() for c in sent] == [
        "CN=Test Intermediate CA"]
    # Named apart, the chain is Twisted's as given; a lone certificate has none.
    endpoint = listening.listen_on(
        f"ssl:0:privateKey={chain.privkey}:certKey={chain.fullchain}:"
        f"extraCertChain={chain.chain}", MemoryReactor())
    assert len(endpoint._sslContextFactory.extraCertChain) == 1
    endpoint = listening.listen_on(
        f"ssl:0:privateKey={chain.privkey}:certKey={chain.cert}", MemoryReactor())
    assert endpoint._sslContextFactory.extraCertChain == []


def test_a_fullchain_without_twisteds_private_attribute_is_one_line(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the chain cannot be given, start-up stops and says how: never a
    server that sends its certificate without the chain."""
    from tests.certchain import make_chain

    chain = make_chain(tmp_path)
    without(monkeypatch, "_sslContextFactory")
    with pytest.raises(SystemExit) as stopped:
        listening.listen_on(
            f"ssl:0:privateKey={chain.privkey}:certKey={chain.fullchain}", MemoryReactor())
    assert "holds 2 certificates" in str(stopped.value)
    assert "extraCertChain=FILE" in str(stopped.value)
