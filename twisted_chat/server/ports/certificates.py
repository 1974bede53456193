"""
The certificate and key of an C{ssl:} port (C{--port}, C{--web}), loaded at
start and again when they are renewed.

certbot renews a certificate 30 days before it expires, writing new files;
a server that read them once, at start, served the old certificate until
it expired, and then every client refused it.  L{ReloadingCertificate} is
the port's TLS connection creator: each new connection gets the
certificate last loaded, and L{ReloadingCertificate.reload} loads the files
again (on SIGHUP, and when they change: L{twisted_chat.server.ports.reloading}).
A reload that fails (a key that is not the certificate's, a file half
written) keeps the certificate the port had and logs one line; connections
already made are not touched either way.

The files are read as Twisted's C{ssl:} parser reads them (each argument
meaning what it means there), but for the chain: without
C{extraCertChain=}, the certificates that follow the first in C{certKey}'s
file are sent as its chain (Let's Encrypt's C{fullchain.pem}); Twisted's
parser sent the first alone, and clients that verify it refused it as
untrusted.
"""

from __future__ import annotations

import os
import re
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from twisted_chat.server import logs

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_PEM_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.+?"
                      rb"-----END \1-----", re.S)


class CertificateError(Exception):
    """The files do not make a certificate and key (the message says why)."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(f"{what} {path}: {e.strerror}") from None


def _files(arguments: dict[str, str]) -> dict[str, str]:
    """The files of C{arguments}, by argument (Twisted's defaults)."""
    key = arguments.get("privateKey", "server.pem")
    files = {"privateKey": key, "certKey": arguments.get("certKey", key)}
    for name in ("extraCertChain", "dhParameters"):
        if name in arguments:
            files[name] = arguments[name]
    return files


def tls_options(arguments: dict[str, str]) -> Any:
    """
    The C{CertificateOptions} of an C{ssl:} endpoint's C{arguments}
    (L{twisted_chat.server.ports.listening.ssl_arguments}), its context made, so
    that a key that is not the certificate's is found now.

    @raise CertificateError: a file cannot be read, holds no key or no
        certificate, or they do not go together.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from twisted.internet.ssl import CertificateOptions, DiffieHellmanParameters
    from twisted.python.filepath import FilePath

    files = _files(arguments)
    key_pem = _read(files["privateKey"], "privateKey")
    cert_pem = _read(files["certKey"], "certKey")
    # As Twisted's parser: the first key of the two files together.
    key_block = _PEM_KEY.search(cert_pem + b"\n" + key_pem)
    if key_block is None:
        raise CertificateError(f"privateKey file {files['privateKey']} holds no PEM private key")
    blocks = [(files["certKey"], block) for block in _PEM_CERT.findall(cert_pem)]
    if not blocks:
        raise CertificateError(f"certKey file {files['certKey']} holds no PEM certificate")
    if "extraCertChain" in files:
        chain = files["extraCertChain"]
        chain_blocks = _PEM_CERT.findall(_read(chain, "extraCertChain"))
        if not chain_blocks:
            raise CertificateError(f"extraCertChain file {chain} holds no PEM certificate")
        blocks = blocks[:1] + [(chain, block) for block in chain_blocks]
    try:
        # Loaded on the reactor's thread (a reload): cryptography's own check
        # of an RSA key took 37 ms at 2048 bits and 270 at 4096, a stall for
        # every connection.  OpenSSL's check that the key matches the
        # certificate (getContext) still refuses a wrong one.
        key = load_pem_private_key(key_block.group(0), password=None,
                                   unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError) as e:  # TypeError: a key that needs a password
        raise CertificateError(f"an unreadable private key in {files['privateKey']} "
                               f"({e})") from None
    certificates = []
    for path, block in blocks:
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise CertificateError(f"an unreadable certificate in {path} ({e})") from None
    # Twisted types them as pyOpenSSL's X509 and PKey (which pyOpenSSL
    # deprecates), and hands them to pyOpenSSL, which takes cryptography's.
    given: dict[str, Any] = {"privateKey": key, "certificate": certificates[0],
                             "extraCertChain": certificates[1:]}
    if "sslmethod" in arguments:
        given["method"] = getattr(SSL, arguments["sslmethod"])
    if "dhParameters" in files:
        given["dhParameters"] = DiffieHellmanParameters.fromFile(  # type: ignore[no-untyped-call]
            FilePath(files["dhParameters"]))
    options = CertificateOptions(**given)
    try:
        options.getContext()
    except SSL.Error as e:
        raise CertificateError(f"the key in {files['privateKey']} is not the certificate's "
                               f"in {files['certKey']}, or OpenSSL refused them ({e})") from None
    return options


def not_after(options: Any) -> str:
    """When the certificate of C{options} expires, for a log line."""
    return str(options.certificate.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC"))


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingCertificate:
    """
    The TLS connection creator of one C{ssl:} port: each connection gets
    the certificate last loaded (L{reload}).

    @raise CertificateError: at start, as L{tls_options}.
    """

    log = logs.logger()

    def __init__(self, option: str, description: str, arguments: dict[str, str]) -> None:
        self.option = option
        self.description = description
        self.arguments = arguments
        self.paths = sorted(set(_files(arguments).values()))
        self._seen = self._signature()
        self.options = tls_options(arguments)

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)

    def _signature(self) -> list[tuple[int, ...] | str]:
        """What a change of the files changes (a link followed: certbot's
        live/ names are links to the newest files)."""
        found: list[tuple[int, ...] | str] = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError as e:
                found.append(str(e.strerror))
            else:
                found.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return found

    def changed(self) -> bool:
        """Whether the files changed since they were last loaded (or tried)."""
        return self._signature() != self._seen

    def reload(self) -> bool:
        self._seen = self._signature()
        try:
            options = tls_options(self.arguments)
        except CertificateError as e:
            self.log.error(
                "{option} {description}: the certificate could not be loaded again, the "
                "port keeps the one it had (expires {expires}): {error}",
                option=self.option, description=self.description, error=str(e),
                expires=not_after(self.options))
            return False
        self.options = options
        self.log.info("{option} {description}: certificate loaded again, for new "
                      "connections (expires {expires})", option=self.option,
                      description=self.description, expires=not_after(options))
        return True
