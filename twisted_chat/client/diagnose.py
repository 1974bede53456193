"""
Why a connection failed, in one sentence for stderr: a TLS error, a
connection that could not be made, or a TLS server asked in plain text
(docs/client.md, "Exit status and errors").
"""

from __future__ import annotations

import errno

from twisted.python.failure import Failure


def describe_tls_error(reason: Failure, server: str) -> str | None:
    """One sentence for a TLS failure, or C{None} if C{reason} is not one."""
    try:
        from OpenSSL import SSL
    except ImportError:  # pragma: no cover - twisted[tls] is a dependency
        return None
    if not isinstance(reason.value, SSL.Error):
        return None
    details: list[str] = []
    args = reason.value.args
    if args and isinstance(args[0], list):
        for item in args[0]:
            if isinstance(item, tuple) and item and item[-1]:
                details.append(str(item[-1]))
    detail = "; ".join(details) or str(reason.value) or "handshake failed"
    hint = ""
    if "certificate verify failed" in detail:
        hint = " (its certificate is not trusted; --ca FILE names a certificate to trust)"
    elif "wrong version number" in detail or "record layer" in detail:
        hint = " (does the server use TLS on that port?)"
    return f"TLS connection to {server} refused: {detail}{hint}."


def looks_like_tls(data: bytes) -> bool:
    """
    Whether the first bytes from a server are a TLS record (handshake, alert,
    change-cipher-spec or data, version 3.x) rather than a line of text.
    """
    return len(data) >= 2 and data[0] in (0x14, 0x15, 0x16, 0x17) and data[1] == 0x03


def describe_connect_error(reason: Failure) -> str:
    """A few words on why a connection attempt failed."""
    from twisted.internet import error

    value = reason.value
    if isinstance(value, error.ConnectionRefusedError):
        return "connection refused (is the server running on that port?)"
    if isinstance(value, error.DNSLookupError):
        return "unknown host name"
    if isinstance(value, error.TimeoutError | error.UserError):
        return "no answer (timed out)"
    if isinstance(value, error.NoRouteError):
        return "no route to the host"
    if isinstance(value, error.ConnectError) and value.osError == errno.ENOENT:
        return "no such socket (is the server listening on that path?)"
    if isinstance(value, error.ConnectError) and value.osError == errno.EACCES:
        return "permission denied (the socket, or a folder on its path, is not yours to use)"
    return reason.getErrorMessage().rstrip(".") or "connection failed"
