"""
The certificate authorities a TLS client is told to trust instead of the
system's: the terminal client's C{--ca FILE} and a cluster node's C{--redis
rediss://...?ca=FILE} (L{twisted_chat.server.cluster.redisconn}).  Here, not
in either, so that neither loads the other to read a PEM file.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["load_trust_root"]

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def load_trust_root(path: str) -> Any:
    """
    Every certificate in the PEM file C{path} (a bundle: any of them may
    sign the peer's), as a trust root for L{optionsForClientTLS}.  Read
    once, when the program starts: not on the reactor at each connection.

    @raise OSError: the file cannot be read.
    @raise ValueError: it holds no certificate, or an unreadable one (the
        message says which).
    """
    from twisted.internet.ssl import Certificate, trustRootFromCertificates

    with open(path, "rb") as f:
        data = f.read()
    blocks = _PEM_CERT.findall(data)
    if not blocks:
        raise ValueError("no PEM certificate in it")
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:  # OpenSSL raises its own error types
        raise ValueError(f"unreadable certificate ({e})") from None
    return trustRootFromCertificates(certificates)  # type: ignore[no-untyped-call]
