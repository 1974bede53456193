"""
The ports C{twistd chat} listens on (C{--port}, C{--metrics}, C{--web}):
each endpoint parsed and checked before anything is made (L{listen_on}), and
a L{PortService} whose failure to listen stops start-up with one line.

Twisted's TCP endpoints keep their port and interface in private
attributes; L{tcp_address} is the one place that reads them.
"""

from __future__ import annotations

import errno
import re
import socket
import sys
from types import TracebackType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError

from twisted_chat.server import logs


class StartupError(Exception):
    """The server cannot start, for a reason one line explains (no traceback)."""


def _quiet_startup_errors() -> None:
    """
    Let a L{StartupError} that ends twistd print no traceback: its one line
    is in the log already.  (Raised from C{privilegedStartService}, it must
    stay an C{Exception}, not C{SystemExit}: after daemonizing, only an
    exception reaches the waiting parent, which prints it, and twistd then
    removes its pid file.)
    """
    previous = sys.excepthook
    if getattr(previous, "_twisted_chat", False):
        return

    def hook(kind: type[BaseException], value: BaseException,
             traceback: TracebackType | None) -> None:
        if not isinstance(value, StartupError):
            previous(kind, value, traceback)

    hook._twisted_chat = True  # type: ignore[attr-defined]
    sys.excepthook = hook


class PortService(StreamServerEndpointService):
    """
    One C{--port}: like C{strports.service}, a failure to listen stops
    start-up, but as one line naming the C{--port} (a busy port, a socket
    path that cannot be created, a port below 1024 without the right).
    """

    log = logs.logger()

    def __init__(self, description: str, endpoint: Any, factory: Any,
                 option: str = "--port") -> None:
        super().__init__(endpoint, factory)
        self.description = description
        self.option = option
        # Twisted-private, as strports.service sets it: a failure to listen
        # is raised from privilegedStartService, not only logged.
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except (CannotListenError, OSError, OverflowError) as e:
            # OverflowError: a port number out of range that listen_on
            # could not see (an endpoint type it does not know).
            cause = getattr(e, "socketError", e)
            why = getattr(cause, "strerror", None) or str(cause)
            message = f"cannot listen on {self.option} {self.description}: {why}"
            self.log.critical("twistd chat: {message}", message=message)
            _quiet_startup_errors()
            raise StartupError(message) from None


#: Twisted's endpoints that listen on a TCP port (L{tcp_address} reads them).
TCP_ENDPOINTS = (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint,
                 endpoints.SSL4ServerEndpoint)


def tcp_address(endpoint: Any) -> tuple[str, int] | None:
    """
    The interface (C{""}: every one) and port number a TCP or SSL
    C{endpoint} will bind, or C{None}: another kind of endpoint, or one that
    does not have them where we look.  They are Twisted-private (C{_interface}
    and C{_port}, the names Twisted gives them); if a Twisted release renamed
    either, every caller takes C{None} as "cannot tell" and does what is safe
    without it: L{listen_on} checks nothing and leaves the bind to report
    (guessing C{""} for a missing interface made its trial bind cover every
    interface, refusing a port that was free on the one asked for); the
    metrics port warns that it may listen on every interface.
    """
    if not isinstance(endpoint, TCP_ENDPOINTS):
        return None
    interface = getattr(endpoint, "_interface", None)
    port = getattr(endpoint, "_port", None)
    if not isinstance(interface, str) or not isinstance(port, int):
        return None
    return interface, port


def listen_on(description: str, reactor: Any, option: str = "--port") -> Any:
    """The endpoint C{description} names, or one clear line and exit 1."""
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except Exception as e:  # ValueError, a missing key file, an unknown option...
        raise SystemExit(f"twistd chat: bad {option} {description!r}: {e}") from None
    if isinstance(endpoint, endpoints.SSL4ServerEndpoint):
        endpoint = _with_whole_chain(description, endpoint, reactor, option)
    address = tcp_address(endpoint)
    if address is None:
        return endpoint
    interface, port = address
    # The parser takes any integer, and only the bind finds one out of range
    # (an OverflowError, not a CannotListenError).
    if not 0 <= port <= 65535:
        raise SystemExit(f"twistd chat: bad {option} {description!r}: "
                         f"port {port} is out of range (0-65535)")
    if port and reactor is _global_reactor():
        _not_busy(description, endpoint, interface, port, option)
    return endpoint


_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)

#: The arguments of Twisted's C{ssl:} endpoint, in their positional order.
_SSL_ARGUMENTS = ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog",
                  "extraCertChain", "dhParameters")


def ssl_arguments(description: str) -> dict[str, str]:
    """
    The arguments of the C{ssl:} endpoint C{description}, by name (as
    Twisted's endpoint parser reads them: C{:} separates them, C{=} gives a
    name, a backslash escapes the next character).
    """
    fields: list[list[str]] = [[""]]
    characters = iter(description)
    for c in characters:
        if c == "\\":
            fields[-1][-1] += next(characters, "")
        elif c == ":":
            fields.append([""])
        elif c == "=" and len(fields[-1]) == 1:
            fields[-1].append("")
        else:
            fields[-1][-1] += c
    named: dict[str, str] = {}
    positional = iter(_SSL_ARGUMENTS)
    for field in fields[1:]:  # fields[0] is "ssl"
        if len(field) == 1:
            named[next(positional, "?")] = field[0]
        else:
            named[field[0]] = field[1]
    return named


def _with_whole_chain(description: str, endpoint: Any, reactor: Any, option: str) -> Any:
    """
    An C{ssl:} endpoint sends the whole chain of the certificate file it is
    given.  Twisted's C{ssl:} endpoint reads only the first certificate of
    C{certKey} and sends the rest only when they are named again with
    C{extraCertChain=}; a CA's usual file (Let's Encrypt's C{fullchain.pem}:
    the server's certificate, then the intermediates) would then send the
    server's certificate alone, and every client that verifies it would
    refuse it as untrusted.  So, without C{extraCertChain=}, where the file
    holds more than one certificate, the endpoint is made again, from
    Twisted's public constructors, as Twisted's C{ssl:} parser makes it
    (each argument meaning what it means there), with the file's other
    certificates as the chain.  Otherwise C{endpoint}, as Twisted made it.
    The certificates and the key are cryptography's objects, which
    C{CertificateOptions} hands to pyOpenSSL as they are: pyOpenSSL
    deprecates its own C{X509} and C{PKey} (a C{DeprecationWarning} each
    time a context is made).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL import SSL
    from twisted.internet.ssl import CertificateOptions, DiffieHellmanParameters
    from twisted.python.filepath import FilePath

    if not description.startswith("ssl:"):
        return endpoint  # a plugin's endpoint: its own arguments
    arguments = ssl_arguments(description)
    if "extraCertChain" in arguments:
        return endpoint  # the operator said where the chain is
    private_key = arguments.get("privateKey", "server.pem")
    path = arguments.get("certKey", private_key)
    try:
        with open(path, "rb") as f:
            cert_pem = f.read()
        with open(private_key, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise SystemExit(f"twistd chat: bad {option} {description!r}: "
                         f"{e.strerror}: {e.filename}") from None
    blocks = _PEM_CERT.findall(cert_pem)
    if len(blocks) < 2:
        return endpoint
    try:
        certificates = [x509.load_pem_x509_certificate(block) for block in blocks]
        # As Twisted's parser: the first key of the two files together (which
        # that parser, run first, found and matched with the first certificate).
        key = load_pem_private_key(cert_pem + b"\n" + key_pem, password=None)
    except Exception as e:  # ValueError, mostly
        raise SystemExit(f"twistd chat: bad {option} {description!r}: an unreadable "
                         f"certificate in {path} ({e})") from None
    # Twisted types them as pyOpenSSL's X509 and PKey, and passes them on.
    given: dict[str, Any] = {"privateKey": key, "certificate": certificates[0],
                             "extraCertChain": certificates[1:]}
    if "sslmethod" in arguments:
        given["method"] = getattr(SSL, arguments["sslmethod"])
    dh = arguments.get("dhParameters")
    options = CertificateOptions(
        dhParameters=DiffieHellmanParameters.fromFile(FilePath(dh)) if dh is not None else None,
        **given,
    )
    return endpoints.SSL4ServerEndpoint(
        reactor, int(arguments["port"]), options,
        backlog=int(arguments.get("backlog", "50")), interface=arguments.get("interface", ""))


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _not_busy(description: str, endpoint: Any, interface: str, port: int,
              option: str) -> None:
    """
    A TCP port another process listens on stops start-up now, before the
    database and accounts files are made (the listening itself comes after
    them, and would leave them behind in a directory the operator did not
    mean).  A trial bind of C{interface} and C{port} with the options
    Twisted's own uses (C{SO_REUSEADDR}), closed at once; any other failure
    is left to the real bind, which says it as it always has.
    """
    family = socket.AF_INET6 if (isinstance(endpoint, endpoints.TCP6ServerEndpoint)
                                 or ":" in interface) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as trial:
            trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            trial.bind((interface, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SystemExit(f"twistd chat: cannot listen on {option} {description}: "
                             f"{e.strerror}") from None
