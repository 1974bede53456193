"""
An C{ssl:} port's certificate is loaded again when it is renewed (rev14-ops
MEDIUM 1): on SIGHUP (L{Reloader.hup}) and when its files change (a stat
every 60 s, here on a MemoryReactorClock), for new connections; a pair that does
not load keeps the old one and logs one error.  The real server, end to
end: tests/test_e2e_tls_reload.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher

from tests.certchain import Chain, make_chain
from twisted_chat.server.ports.certificates import CertificateError, ReloadingCertificate
from twisted_chat.server.ports.listening import ssl_arguments
from twisted_chat.server.ports.reloading import CHECK_INTERVAL, Reloader


@pytest.fixture
def events() -> Any:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def said(events: list[dict[str, Any]], level: str) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events
            if e.get("log_level") is not None and e["log_level"].name == level
            and "certificate" in formatEvent(e)]


def chain_in(tmp_path: Path, name: str) -> Chain:
    folder = tmp_path / name
    folder.mkdir()
    return make_chain(folder)


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def served(certificate: ReloadingCertificate) -> int:
    """The serial number of the certificate a new connection gets."""
    connection = certificate.serverConnectionForTLS(None)
    assert isinstance(connection, SSL.Connection)
    mine = connection.get_certificate(as_cryptography=True)
    assert mine is not None
    return mine.serial_number


def install(chain: Chain, served_dir: Path) -> None:
    """As a renewal does: the new key and certificate over the old files."""
    shutil.copyfile(chain.privkey, served_dir / "privkey.pem")
    shutil.copyfile(chain.fullchain, served_dir / "fullchain.pem")


@pytest.fixture
def port(tmp_path: Path) -> tuple[ReloadingCertificate, Chain, Chain, Path]:
    old, new = chain_in(tmp_path, "old"), chain_in(tmp_path, "new")
    live = tmp_path / "live"
    live.mkdir()
    install(old, live)
    description = f"ssl:0:privateKey={live}/privkey.pem:certKey={live}/fullchain.pem"
    return (ReloadingCertificate("--port", description, ssl_arguments(description)),
            old, new, live)


def test_a_renewal_is_used_for_new_connections_at_the_next_look(
        port: tuple[ReloadingCertificate, Chain, Chain, Path], events: Any) -> None:
    certificate, old, new, live = port
    clock = MemoryReactorClock()
    reloader = Reloader(clock, [certificate])
    reloader.startService()
    assert served(certificate) == serial_of(old.cert)
    before = certificate.serverConnectionForTLS(None)
    clock.advance(CHECK_INTERVAL)  # nothing changed: nothing loaded
    assert said(events, "info") == []
    install(new, live)
    clock.advance(CHECK_INTERVAL - 1)
    assert served(certificate) == serial_of(old.cert)
    clock.advance(1)
    assert served(certificate) == serial_of(new.cert)
    [line] = said(events, "info")
    assert line.startswith(f"--port {certificate.description}: certificate loaded again, "
                           "for new connections (expires ")
    # A connection made before keeps what it was made with.
    mine = before.get_certificate(as_cryptography=True)
    assert mine is not None and mine.serial_number == serial_of(old.cert)
    reloader.stopService()
    assert clock.getDelayedCalls() == []


def test_a_half_written_pair_keeps_the_old_one_and_logs_one_error(
        port: tuple[ReloadingCertificate, Chain, Chain, Path], events: Any) -> None:
    """The certificate written, its key not yet (a copy caught between the
    two files): the port keeps the old pair, says so once, and takes the
    new one once the key is there too."""
    certificate, old, new, live = port
    clock = MemoryReactorClock()
    Reloader(clock, [certificate]).startService()
    shutil.copyfile(new.fullchain, live / "fullchain.pem")
    clock.advance(CHECK_INTERVAL)
    assert served(certificate) == serial_of(old.cert)
    [error] = said(events, "error")
    assert "the certificate could not be loaded again, the port keeps the one it had" in error
    assert "is not the certificate's" in error
    clock.advance(CHECK_INTERVAL)  # the same files: not tried, nor said, again
    assert len(said(events, "error")) == 1
    shutil.copyfile(new.privkey, live / "privkey.pem")
    clock.advance(CHECK_INTERVAL)
    assert served(certificate) == serial_of(new.cert)


@pytest.mark.parametrize(("write", "why"), [
    (b"", "holds no PEM certificate"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
     "an unreadable certificate in"),
])
def test_a_broken_certificate_file_keeps_the_old_one(
        port: tuple[ReloadingCertificate, Chain, Chain, Path], events: Any,
        write: bytes, why: str) -> None:
    certificate, old, _, live = port
    (live / "fullchain.pem").write_bytes(write)
    assert certificate.changed()
    assert certificate.reload() is False
    assert served(certificate) == serial_of(old.cert)
    [error] = said(events, "error")
    assert why in error


def test_a_removed_file_keeps_the_old_one(
        port: tuple[ReloadingCertificate, Chain, Chain, Path], events: Any) -> None:
    certificate, old, _, live = port
    (live / "privkey.pem").unlink()
    assert certificate.changed()
    assert certificate.reload() is False
    assert served(certificate) == serial_of(old.cert)
    [error] = said(events, "error")
    assert error.endswith(f"privateKey {live}/privkey.pem: No such file or directory")


def test_sighup_loads_every_port_again_even_unchanged(
        port: tuple[ReloadingCertificate, Chain, Chain, Path], events: Any) -> None:
    certificate, _, new, live = port
    reloader = Reloader(MemoryReactorClock(), [certificate, certificate])
    reloader.startService()
    reloader.hup()
    assert len(said(events, "info")) == 3  # the SIGHUP line, then each port's
    install(new, live)
    reloader.hup()
    assert served(certificate) == serial_of(new.cert)
    reloader.stopService()
    reloader.hup()  # during the shutdown: nothing is loaded
    assert len(said(events, "info")) == 6


def test_a_key_file_without_a_key_says_so(tmp_path: Path) -> None:
    """It was OpenSSL's "[('DECODER routines', '', 'unsupported')]" (a nit
    of rev14-ops)."""
    chain = make_chain(tmp_path)
    arguments = ssl_arguments(f"ssl:0:privateKey={chain.cert}:certKey={chain.fullchain}")
    with pytest.raises(CertificateError, match=f"privateKey file {chain.cert} holds no PEM "
                                               "private key"):
        ReloadingCertificate("--port", "ssl:...", arguments)
