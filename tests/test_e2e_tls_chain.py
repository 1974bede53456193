"""
The real server with a certificate a CA issued through an intermediate (the
layout Let's Encrypt hands out): the documented forms send the whole chain,
so a client that trusts the root alone verifies the server.
"""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import pytest

from tests.certchain import make_chain
from tests.client.clientproc import run_client
from tests.serverproc import LOOPBACK, LineClient, free_port

pytestmark = pytest.mark.e2e


def verified(port: int, root: Path) -> LineClient:
    """A TLS connection that trusts C{root} only, and checks the name."""
    context = ssl.create_default_context(cafile=str(root))
    raw = socket.create_connection((LOOPBACK, port), timeout=5)
    return LineClient(port, sock=context.wrap_socket(raw, server_hostname="localhost"))


def test_fullchain_pem_as_certkey_sends_the_whole_chain(tmp_path, chat_server):
    """README's form with Let's Encrypt's files: certKey=fullchain.pem."""
    chain = make_chain(tmp_path)
    port = free_port()
    server = chat_server(
        port=port, endpoint=(f"ssl:{port}:privateKey={chain.privkey}:"
                             f"certKey={chain.fullchain}:interface={LOOPBACK}"))
    ann = verified(port, chain.root)
    assert ann.readline().startswith("HELLO chat/1 ")
    ann.close()
    result = run_client(["--nick", "alice", "--tls", "--ca", str(chain.root),
                         "localhost", str(port)], "over a chain\n")
    assert result.returncode == 0, result.stderr
    assert re.search(r"<alice> over a chain\n", result.stdout), result.stdout
    assert server.problems() == []


def test_cert_pem_with_extra_cert_chain(tmp_path, chat_server):
    """The other documented form: cert.pem, and chain.pem as extraCertChain."""
    chain = make_chain(tmp_path)
    port = free_port()
    chat_server(port=port, endpoint=(
        f"ssl:{port}:privateKey={chain.privkey}:certKey={chain.cert}:"
        f"extraCertChain={chain.chain}:interface={LOOPBACK}"))
    result = run_client(["--nick", "alice", "--tls", "--ca", str(chain.root),
                         "localhost", str(port)], "hi\n")
    assert result.returncode == 0, result.stderr


def test_the_leaf_alone_is_not_trusted(tmp_path, chat_server):
    """What the chain is for: cert.pem alone (no intermediate) fails a client
    that trusts the root, as it must."""
    chain = make_chain(tmp_path)
    port = free_port()
    chat_server(port=port, endpoint=(
        f"ssl:{port}:privateKey={chain.privkey}:certKey={chain.cert}:interface={LOOPBACK}"))
    with pytest.raises(ssl.SSLCertVerificationError):
        verified(port, chain.root)
