"""
The real server picks up a renewed certificate (rev14-ops MEDIUM 1): the
key and certificate written over the files it serves (as certbot's renewal
does), then SIGHUP, and an C{ssl:} C{--port}, C{--web} and C{--metrics}
each serve the new one to new connections, while a connection made before
stays up; a broken pair keeps the last good one.  (The look at the files
every 60 s, with no signal: tests/test_certificates.py, on a clock.)
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
from pathlib import Path

import pytest

from tests.certchain import Chain, make_chain
from tests.serverproc import LOOPBACK, ServerProcess, free_port
from tests.test_e2e_tls_chain import verified

pytestmark = pytest.mark.e2e


def install(chain: Chain, live: Path) -> None:
    shutil.copyfile(chain.privkey, live / "privkey.pem")
    shutil.copyfile(chain.fullchain, live / "fullchain.pem")


def trusted(port: int, root: Path) -> bool:
    """Whether a client that trusts C{root} alone completes a handshake."""
    context = ssl.create_default_context(cafile=str(root))
    with socket.create_connection((LOOPBACK, port), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost"):
                return True
        except ssl.SSLCertVerificationError:
            return False


def test_sighup_serves_the_renewed_certificate_on_every_ssl_port(tmp_path: Path) -> None:
    chains = []
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        chains.append(make_chain(tmp_path / name))
    old, new = chains
    live = tmp_path / "live"
    live.mkdir()
    install(old, live)
    files = f"privateKey={live}/privkey.pem:certKey={live}/fullchain.pem"
    port, web, metrics = free_port(), free_port(), free_port()
    server = ServerProcess(
        tmp_path, ["--db", ":memory:", "--web", f"ssl:{web}:{files}:interface={LOOPBACK}",
                   "--metrics", f"ssl:{metrics}:{files}:interface={LOOPBACK}"],
        port=port, endpoint=f"ssl:{port}:{files}:interface={LOOPBACK}").start()
    try:
        for listening in (port, web, metrics):
            assert trusted(listening, old.root) and not trusted(listening, new.root)
        alice = verified(port, old.root)
        alice.register("alice")
        install(new, live)
        server.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        server.wait_log(f"--web ssl:{web}:{files}:interface={LOOPBACK}: certificate loaded "
                        "again")
        server.wait_log(f"--port ssl:{port}:{files}:interface={LOOPBACK}: certificate loaded "
                        "again")
        # The --metrics port's too (rev15-mut F2): Prometheus's scrapes
        # would fail on the expired certificate.
        server.wait_log(f"--metrics ssl:{metrics}:{files}:interface={LOOPBACK}: certificate "
                        "loaded again")
        for listening in (port, web, metrics):
            assert trusted(listening, new.root) and not trusted(listening, old.root)
        bob = verified(port, new.root)
        bob.register("bob")
        alice.send("MSG made before the renewal")
        assert bob.expect("MSG ").endswith(" alice * made before the renewal")
        # Half written (the new key, then a certificate of another's):
        # the port keeps the last good pair.
        shutil.copyfile(old.fullchain, live / "fullchain.pem")
        server.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        server.wait_log("the certificate could not be loaded again, the port keeps the one "
                        "it had")
        assert trusted(port, new.root)
        alice.sync()
        bob.close()
    finally:
        server.stop()
    assert server.problems() == []
