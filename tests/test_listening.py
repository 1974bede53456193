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
from twisted_chat.server.ports import listening
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


@pytest.mark.parametrize("argv", [
    ("--port", "tcp:7001:interface=127.0.0.1", "--port", "tcp:7001:interface=127.0.0.1"),
    ("--port", "7001", "--web", "tcp:7001:interface=127.0.0.1"),
    ("--port", "7002", "--metrics", "7001", "--web", "7001"),
    ("--port", "tcp6:7001:interface=127.0.0.1", "--web", "tcp:7001:interface=127.0.0.1"),
    # Compared as addresses, not as strings:
    ("--port", "tcp:7001", "--web", "tcp:7001:interface=0.0.0.0"),
    ("--port", "tcp:7001:interface=localhost", "--web", "tcp:7001:interface=127.0.0.1"),
    ("--port", "tcp:7001:interface=LocalHost.", "--metrics", "tcp:7001:interface=127.0.0.1"),
    # The C library's other IPv4 forms, as the bind reads them (0 is every one):
    ("--port", "tcp:7001:interface=0", "--web", "tcp:7001:interface=127.0.0.2"),
    ("--port", "tcp:7001:interface=0x0", "--metrics", "tcp:7001:interface=127.0.0.1"),
    ("--port", "tcp:7001:interface=0.0", "--web", "tcp:7001:interface=chat.invalid"),
    ("--port", "tcp:7001:interface=127.1", "--web", "tcp:7001:interface=localhost"),
    ("--port", "tcp:7001:interface=0177.0.0.1", "--web", "tcp:7001:interface=127.0.0.1"),
    ("--port", "tcp6:7001:interface=\\:\\:1",
     "--web", "tcp6:7001:interface=0\\:0\\:0\\:0\\:0\\:0\\:0\\:1"),
    ("--port", "tcp6:7001:interface=\\:\\:0", "--web", "tcp6:7001:interface=\\:\\:1"),
    # '::' takes IPv4 too on a dual-stack kernel (bindv6only 0, Linux's default):
    ("--port", "tcp6:7001:interface=\\:\\:", "--web", "tcp:7001"),
    ("--port", "tcp:7001:interface=0.0.0.0", "--web", "tcp6:7001:interface=\\:\\:"),
    ("--port", "tcp6:7001:interface=\\:\\:", "--metrics", "tcp:7001:interface=127.0.0.1"),
    ("--port", "tcp:7001:interface=localhost", "--web", "tcp6:7001:interface=\\:\\:"),
    # An IPv4-mapped address binds the IPv4 address itself on such a kernel:
    ("--port", "tcp6:7001:interface=\\:\\:ffff\\:127.0.0.1",
     "--web", "tcp:7001:interface=localhost"),
    ("--port", "tcp:7001", "--web", "tcp6:7001:interface=\\:\\:ffff\\:127.0.0.1"),
    # A host name is not looked up, but Twisted binds it as IPv4: it clashes
    # with itself and with every interface.
    ("--port", "tcp:7001:interface=Chat.Invalid", "--web", "tcp:7001:interface=chat.invalid."),
    ("--port", "tcp:7001", "--web", "tcp:7001:interface=chat.invalid"),
    ("--port", "tcp:7001:interface=chat.invalid", "--metrics", "tcp:7001:interface=0.0.0.0"),
    ("--port", "tcp6:7001:interface=\\:\\:", "--web", "tcp:7001:interface=chat.invalid"),
])
def test_two_options_on_one_port_stop_start_up_saying_so(
        argv: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """The second bind failed after the files were made, with "Address
    already in use", as if another process held the port."""
    monkeypatch.setattr(listening, "dual_stack", lambda: True)
    reactor = ThreadedMemoryReactor()
    with pytest.raises(SystemExit) as e:
        makeService(options(*argv, "--db", ":memory:"), reactor)
    assert str(e.value).endswith("both listen on port 7001: give each its own")
    assert str(e.value).startswith("twistd chat: ")
    assert reactor.tcpServers == []


@pytest.mark.parametrize(("argv", "dual"), [
    (("--port", "tcp:7001:interface=127.0.0.1", "--port", "tcp:7001:interface=127.0.0.2"),
     True),
    # bindv6only set: '::' is IPv6 only, and tcp:PORT beside it takes IPv4 (README).
    (("--port", "tcp:7001", "--port", "tcp6:7001:interface=\\:\\:"), False),
    (("--port", "tcp6:7001:interface=\\:\\:1", "--web", "tcp:7001:interface=127.0.0.1"),
     True),
    (("--port", "tcp:0", "--web", "tcp:0"), True),
    (("--port", "tcp6:7001:interface=\\:\\:ffff\\:127.0.0.1", "--web",
      "tcp:7001:interface=127.0.0.2"), True),
    # A name other than localhost is left to the bind, but for itself and every
    # interface: comparing it to an address or another name needs a lookup.
    (("--port", "tcp:7001:interface=chat.invalid", "--web", "tcp:7001:interface=127.0.0.1"),
     True),
    (("--port", "tcp:7001:interface=127.1", "--web", "tcp:7001:interface=127.0.0.2"), True),
    (("--port", "tcp:7001:interface=chat.invalid", "--web", "tcp:7001:interface=irc.invalid"),
     True),
    (("--port", "tcp:7001:interface=chat.invalid", "--web", "tcp6:7001:interface=\\:\\:"),
     False),
    (("--port", "tcp:7001:interface=chat.invalid", "--web", "tcp6:7001:interface=\\:\\:1"),
     True),
])
def test_ports_that_do_not_overlap_are_all_listened_on(
        argv: tuple[str, ...], dual: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listening, "dual_stack", lambda: dual)
    reactor = ThreadedMemoryReactor()
    top = makeService(options(*argv, "--db", ":memory:"), reactor)
    top.startService()
    assert len(reactor.tcpServers) == 2
    reactor.pump_until(top.stopService())


@pytest.mark.parametrize(("setting", "dual"), [("0\n", True), ("1\n", False), (None, False)])
def test_dual_stack_is_what_the_kernel_says(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, setting: str | None,
        dual: bool) -> None:
    """Linux's bindv6only; without it (another system, no IPv6) the bind decides."""
    path = tmp_path / "bindv6only"
    if setting is not None:
        path.write_text(setting)
    monkeypatch.setattr(listening, "BINDV6ONLY", str(path))
    assert listening.dual_stack() is dual


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
        return ("127.0.0.1", 9108 + len(seen))  # a port each: one_port_each reads them too

    monkeypatch.setattr(listening, "tcp_address", told)
    # A bare port is on every interface; tcp_address says loopback: no warning.
    assert warnings_at_start(["--db", ":memory:", "--port", "7001", "--metrics", "9108"]) == []
    # --port, --metrics, both again in one_port_each, the warning
    assert seen == ["TCP4ServerEndpoint"] * 5
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


#: RFC 7919's ffdhe2048 group (a public constant), for dhParameters=.
FFDHE2048 = """\
-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def listened(description: str) -> tuple[Any, ...]:
    """What the endpoint C{description} (as listen_on makes it) asks the
    reactor for when it listens: C{listenSSL}'s port, factory, context
    factory (the C{CertificateOptions} the port's reloading certificate
    holds now), backlog and interface (MemoryReactor records them)."""
    from twisted.internet.protocol import Factory

    from twisted_chat.server.ports.certificates import ReloadingCertificate

    reactor = MemoryReactor()
    listening.listen_on(description, reactor).listen(Factory())
    [(port, factory, creator, backlog, interface)] = reactor.sslServers
    assert isinstance(creator, ReloadingCertificate)
    return port, factory, creator.options, backlog, interface


def handshake(options: Any, root: Any) -> str:
    """
    A real TLS handshake (over memory BIOs) between a server with the
    context C{options} makes and a client that trusts C{root} alone and
    checks the name C{localhost}, as a browser or the chat client does.
    The TLS version agreed; raises C{ssl.SSLCertVerificationError} where
    the client cannot verify the server (no chain sent).
    """
    import contextlib
    import ssl

    from OpenSSL import SSL

    server = SSL.Connection(options.getContext(), None)
    server.set_accept_state()
    to_client, to_server = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context(cafile=str(root)).wrap_bio(
        to_client, to_server, server_hostname="localhost")
    for _ in range(10):
        try:
            client.do_handshake()
            version = client.version()
            assert version is not None
            return version
        except ssl.SSLWantReadError:
            pass
        server.bio_write(to_server.read())
        with contextlib.suppress(SSL.WantReadError):
            server.do_handshake()
        with contextlib.suppress(SSL.WantReadError):
            to_client.write(server.bio_read(1 << 16))
    raise AssertionError("the handshake did not finish")


def test_a_fullchain_certkey_sends_the_rest_as_the_chain(tmp_path: Any) -> None:
    """Let's Encrypt's fullchain.pem as certKey: a client that trusts the
    root alone verifies the server (it sends the intermediate)."""
    import ssl

    from tests.certchain import make_chain

    chain = make_chain(tmp_path)
    key = f"ssl:0:privateKey={chain.privkey}"
    _, _, options, _, _ = listened(f"{key}:certKey={chain.fullchain}")
    assert handshake(options, chain.root)
    # Named apart, the chain is Twisted's as given.
    _, _, options, _, _ = listened(
        f"{key}:certKey={chain.fullchain}:extraCertChain={chain.chain}")
    assert handshake(options, chain.root)
    # What the chain is for: the server's certificate alone is refused.
    _, _, options, _, _ = listened(f"{key}:certKey={chain.cert}")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(options, chain.root)


def as_twisted(description: str) -> Any:
    """The C{CertificateOptions} Twisted's own C{ssl:} parser makes of
    C{description}: what the server's must match."""
    import warnings

    from twisted.internet.endpoints import serverFromString

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pyOpenSSL's X509, PKey
        return serverFromString(MemoryReactor(), description)._sslContextFactory


def der(certificate: Any) -> bytes:
    """A certificate, pyOpenSSL's or cryptography's, as DER."""
    from cryptography.hazmat.primitives.serialization import Encoding

    if hasattr(certificate, "to_cryptography"):
        certificate = certificate.to_cryptography()
    return bytes(certificate.public_bytes(Encoding.DER))


def public(key: Any) -> bytes:
    """A private key's public half, pyOpenSSL's or cryptography's, as DER."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    if hasattr(key, "to_cryptography_key"):
        key = key.to_cryptography_key()
    return bytes(key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def test_the_certificate_and_chain_sent_are_pinned(tmp_path: Any) -> None:
    """rev15-mut F6: a fullchain.pem as certKey sends the rest of it as
    the chain (Twisted's parser sends none); with extraCertChain too, that
    file replaces the rest, as in Twisted's parser: the intermediate is not
    sent twice."""
    from cryptography import x509

    from tests.certchain import make_chain

    chain = make_chain(tmp_path)
    server, intermediate = (der(c) for c in x509.load_pem_x509_certificates(
        chain.fullchain.read_bytes()))
    key = f"ssl:0:privateKey={chain.privkey}"
    for description, sent, as_in_twisted in [
            (f"{key}:certKey={chain.fullchain}", [intermediate], False),
            (f"{key}:certKey={chain.fullchain}:extraCertChain={chain.chain}", [intermediate],
             True),
            (f"{key}:certKey={chain.cert}:extraCertChain={chain.fullchain}",
             [server, intermediate], True),
            (f"{key}:certKey={chain.cert}", [], True)]:
        _, _, options, _, _ = listened(description)
        assert der(options.certificate) == server, description
        assert [der(c) for c in options.extraCertChain] == sent, description
        if as_in_twisted:
            twisted = as_twisted(description)
            assert der(twisted.certificate) == server
            assert [der(c) for c in twisted.extraCertChain] == sent, description


def test_a_certkey_holding_a_key_too_uses_its_key_as_twisted_does(tmp_path: Any) -> None:
    """rev15-mut F7: a certKey file that holds the certificate and its key,
    with another key as privateKey: Twisted's parser takes the first key of
    the two files together, the certKey's."""
    from tests.certchain import make_chain

    (tmp_path / "ours").mkdir()
    (tmp_path / "other").mkdir()
    ours, other = make_chain(tmp_path / "ours"), make_chain(tmp_path / "other")
    combined = tmp_path / "combined.pem"
    combined.write_bytes(ours.fullchain.read_bytes() + ours.privkey.read_bytes())
    description = f"ssl:0:privateKey={other.privkey}:certKey={combined}"
    _, _, options, _, _ = listened(description)
    assert public(options.privateKey) == public(as_twisted(description).privateKey)
    assert public(options.privateKey) != public_of(other.privkey)
    assert handshake(options, ours.root)


def public_of(path: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return public(load_pem_private_key(path.read_bytes(), password=None))


def test_the_endpoint_made_for_a_chain_file_gives_pyopenssl_none_of_its_deprecated_types(
        tmp_path: Any) -> None:
    """pyOpenSSL 26 deprecates its own X509 and PKey: a DeprecationWarning
    for each as a context was made (three for a fullchain.pem: the
    certificate, the key, the chain).  Every ssl: port's certificate
    (L{twisted_chat.server.ports.certificates}, a chain file or a lone
    certificate) hands CertificateOptions cryptography's objects, which it
    passes on to pyOpenSSL: none."""
    import warnings

    from tests.certchain import make_chain

    chain = make_chain(tmp_path)

    def deprecated(description: str) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, _, options, _, _ = listened(description)
            options.getContext()
        return sorted(str(w.message).split(" objects")[0] for w in caught
                      if "Passing pyOpenSSL" in str(w.message))

    key = f"ssl:0:privateKey={chain.privkey}"
    assert deprecated(f"{key}:certKey={chain.fullchain}") == []
    assert deprecated(f"{key}:certKey={chain.cert}") == []
    assert deprecated(f"{key}:certKey={chain.cert}:extraCertChain={chain.chain}") == []


def test_a_chain_file_whose_key_or_certificates_are_wrong_stops_start_up(
        tmp_path: Any) -> None:
    """One line, no traceback: a certificate of the chain that cannot be
    read, or a key that is not the first certificate's (the server reads
    the files before Twisted's parser: L{twisted_chat.server.ports.certificates})."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.certchain import make_chain

    chain = make_chain(tmp_path)
    other = tmp_path / "other.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    broken = tmp_path / "broken.pem"
    broken.write_bytes(chain.cert.read_bytes()
                       + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    for key, cert, said in ((chain.privkey, broken, f"an unreadable certificate in {broken} ("),
                            (other, chain.fullchain, f"the key in {other} is not the "
                                                     f"certificate's in {chain.fullchain}")):
        description = f"ssl:0:privateKey={key}:certKey={cert}"
        with pytest.raises(SystemExit) as e:
            listening.listen_on(description, MemoryReactor())
        assert str(e.value).startswith(f"twistd chat: bad --port {description!r}: {said}")
        assert "\n" not in str(e.value)


def test_sslmethod_keeps_twisted_s_meaning_and_its_deprecation(tmp_path: Any) -> None:
    """C{sslmethod=} is Twisted's C{ssl:} argument and means what it means
    there, on Twisted's endpoint (C{certKey} a lone certificate) and on
    the one made for a chain file: that OpenSSL method, as is (Twisted's
    default minimum, TLS 1.2, is then not applied; C{TLSv1_2_METHOD}
    agrees TLS 1.2 where the default agrees 1.3).  Neither refused nor
    translated, it costs Twisted's DeprecationWarning, which Python hides
    in a real twistd; README's TLS section says so."""
    from OpenSSL import SSL

    from tests.certchain import make_chain

    chain = make_chain(tmp_path)
    for cert in (chain.cert, chain.fullchain):
        with pytest.warns(DeprecationWarning, match="Passing method to twisted.internet.ssl"):
            _, _, options, _, _ = listened(
                f"ssl:0:{chain.privkey}:{cert}:sslmethod=TLSv1_2_METHOD")
        assert options.method == SSL.TLSv1_2_METHOD
    assert handshake(options, chain.root) == "TLSv1.2"


def test_a_fullchain_certkey_keeps_every_argument_of_the_ssl_endpoint(
        tmp_path: Any) -> None:
    """The endpoint made for a fullchain.pem listens as Twisted's own does
    for the documented cert.pem + extraCertChain=chain.pem, every other
    argument meaning what it means there."""
    from twisted.internet.ssl import DiffieHellmanParameters

    from tests.certchain import make_chain

    chain = make_chain(tmp_path)
    dh = tmp_path / "dh.pem"
    dh.write_text(FFDHE2048)
    rest = (f"sslmethod=TLSv1_2_METHOD:interface=127.0.0.1:backlog=7:"
            f"dhParameters={dh}")
    ours = listened(f"ssl:7443:{chain.privkey}:{chain.fullchain}:{rest}")
    twisteds = listened(f"ssl:7443:{chain.privkey}:{chain.cert}:{rest}:"
                        f"extraCertChain={chain.chain}")
    (port, _, options, backlog, interface) = ours
    assert (port, backlog, interface) == (7443, 7, "127.0.0.1")
    assert (port, backlog, interface) == (twisteds[0], twisteds[3], twisteds[4])
    assert options.method == twisteds[2].method
    assert isinstance(options.dhParameters, DiffieHellmanParameters)
    assert handshake(options, chain.root) == handshake(twisteds[2], chain.root) == "TLSv1.2"
    # Positional privateKey alone (no certKey): the file holds the key and
    # the whole chain.
    both = tmp_path / "both.pem"
    both.write_bytes(chain.fullchain.read_bytes() + chain.privkey.read_bytes())
    (_, _, options, backlog, interface) = listened(f"ssl:0:{both}")
    assert (backlog, interface) == (50, "")
    assert handshake(options, chain.root) == "TLSv1.3"


def test_a_key_file_without_a_key_is_said_so(tmp_path: Any) -> None:
    """Twisted's parser said "[('DECODER routines', '', 'unsupported')]"
    (a nit of rev14-ops): the server reads the files first."""
    from tests.certchain import make_chain

    chain = make_chain(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        listening.listen_on(f"ssl:0:privateKey={chain.cert}", MemoryReactor())
    assert str(stopped.value) == (f"twistd chat: bad --port 'ssl:0:privateKey={chain.cert}': "
                                  f"privateKey file {chain.cert} holds no PEM private key")
