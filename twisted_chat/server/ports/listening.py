"""
The ports C{twistd chat} listens on (C{--port}, C{--metrics}, C{--web}):
each endpoint parsed and checked before anything is made (L{listen_on}), and
a L{PortService} whose failure to listen stops start-up with one line.

Twisted's TCP endpoints keep their port and interface in private
attributes; L{tcp_address} is the one place that reads them.
"""

from __future__ import annotations

import errno
import socket
import sys
from ipaddress import IPv4Address, IPv6Address, ip_address
from types import TracebackType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.error import CannotListenError

from twisted_chat.server import logs
from twisted_chat.server.ports.certificates import ReloadingCertificate


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
            if why == UNIX_LOCK_HELD:
                why = UNIX_IN_USE
            message = f"cannot listen on {self.option} {self.description}: {why}"
            self.log.critical("twistd chat: {message}", message=message)
            _quiet_startup_errors()
            raise StartupError(message) from None


#: What Twisted says when a UNIX socket's lock file is another live
#: process's (twisted.internet.unix.Port), and what the operator is told.
UNIX_LOCK_HELD = "Cannot acquire lock"
UNIX_IN_USE = "another process is already listening there"


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
    certificate = None
    try:
        if description.startswith("ssl:"):
            # Its files read first, as the server reads them (L{_reloading}):
            # a file with no key is said so, where OpenSSL, through Twisted's
            # parser, said "[('DECODER routines', '', 'unsupported')]".
            certificate = ReloadingCertificate(option, description,
                                               ssl_arguments(description))
        endpoint = endpoints.serverFromString(reactor, description)
    except Exception as e:  # ValueError, a missing key file, an unknown option...
        raise SystemExit(f"twistd chat: bad {option} {description!r}: {e}") from None
    if certificate is not None:  # ssl: (Twisted's own parser, never a plugin's)
        endpoint = _reloading(certificate, reactor)
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


class ReloadingSSLEndpoint(endpoints.SSL4ServerEndpoint):
    """An C{ssl:} endpoint whose certificate is reloaded (L{certificate})."""

    def __init__(self, reactor: Any, port: int, certificate: ReloadingCertificate,
                 backlog: int, interface: str) -> None:
        super().__init__(reactor, port, certificate, backlog=backlog, interface=interface)
        self.certificate = certificate


def _reloading(certificate: ReloadingCertificate, reactor: Any) -> ReloadingSSLEndpoint:
    """
    An C{ssl:} endpoint whose certificate and key are loaded again when
    they are renewed (L{twisted_chat.server.ports.certificates}), and which sends
    the whole chain of its C{certKey} file; made from Twisted's public
    constructors, as Twisted's C{ssl:} parser makes it, once that parser
    has accepted the description (each other argument meaning what it
    means there).
    """
    arguments = certificate.arguments
    return ReloadingSSLEndpoint(reactor, int(arguments["port"]), certificate,
                                backlog=int(arguments.get("backlog", "50")),
                                interface=arguments.get("interface", ""))


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


#: Where a kernel says whether an IPv6 socket on C{::} takes IPv4 too.
BINDV6ONLY = "/proc/sys/net/ipv6/bindv6only"


def dual_stack() -> bool:
    """Whether a listener on C{::} takes IPv4 as well (Linux's default,
    C{bindv6only} 0; Twisted leaves C{IPV6_V6ONLY} as the kernel has it).
    Elsewhere, or unreadable: taken as not (the bind then says it)."""
    try:
        with open(BINDV6ONLY, encoding="ascii") as setting:
            return setting.read().strip() == "0"
    except OSError:
        return False


#: What a listener binds (L{bound_address}): an address, or a host name.
Bound = IPv4Address | IPv6Address | str


def bound_address(interface: str) -> Bound:
    """
    The address a listener on C{interface} binds, as Twisted and the
    kernel read it: C{""} is IPv4's every interface, C{localhost} IPv4's
    loopback (Twisted takes a name for IPv4, and C{localhost} is
    loopback, RFC 6761); an address literal in its one spelling
    (C{0.0.0.0}, C{::0}), and the C library's other IPv4 forms as it reads
    them (L{_c_ipv4}: C{0} is every interface).  Another name, in lower
    case without its final dot: an IPv4 address only a lookup could tell
    (L{_overlap}).
    """
    if interface == "":
        return IPv4Address(0)
    name = interface.lower().rstrip(".")
    if name == "localhost":
        return IPv4Address("127.0.0.1")
    try:
        return ip_address(interface)
    except ValueError:
        return _c_ipv4(interface) or name


def _c_ipv4(interface: str) -> IPv4Address | None:
    """
    The IPv4 address the bind reads C{interface} as when it is a number in
    one of inet_aton's forms (C{0}, C{0x0}, C{0.0}, C{127.1},
    C{0177.0.0.1}), not a host name: the bind parses it with
    C{getaddrinfo}, so that parse, numeric only (no lookup), says.
    """
    try:
        found = socket.getaddrinfo(interface, None, socket.AF_INET, socket.SOCK_STREAM,
                                   0, socket.AI_NUMERICHOST)
    except (OSError, UnicodeError, ValueError):  # a name, or not even that
        return None
    return IPv4Address(found[0][4][0])


def _family(bound: Bound) -> int:
    """4 or 6: a name is bound as IPv4 (L{bound_address})."""
    return 4 if isinstance(bound, str) else bound.version


def _every(bound: Bound) -> bool:
    """Whether C{bound} is every interface of its family."""
    return not isinstance(bound, str) and bound.is_unspecified


def _unmapped(bound: Bound) -> Bound:
    """An IPv4-mapped address (C{::ffff:a.b.c.d}) as the IPv4 address a
    dual-stack kernel binds; anything else as it is."""
    if isinstance(bound, IPv6Address) and bound.ipv4_mapped is not None:
        return bound.ipv4_mapped
    return bound


def every_interface(interface: str) -> bool:
    """Whether a listener on C{interface} takes every interface of a
    family, however the address is spelt (C{::0}, C{0:0::0}, and
    C{::ffff:0.0.0.0}, IPv4's every one on a dual-stack kernel)."""
    return _every(_unmapped(bound_address(interface)))


def _overlap(one: Bound, other: Bound, dual: bool) -> bool:
    """Whether listeners on C{one} and C{other}, on one port, clash: the
    same address or name, or every one of a family and any of it (a name
    too, without a lookup); with C{dual}, IPv6's every one (C{::}) and any
    IPv4 address as well."""
    if one == other:
        return True
    if _family(one) == _family(other):
        return _every(one) or _every(other)
    return dual and any(_family(a) == 6 and _every(a) for a in (one, other))


def one_port_each(listeners: list[tuple[str, str, Any]]) -> None:
    """
    Two of this server's own options (C{(option, description, endpoint)})
    on one TCP port stop start-up at once, saying so: the second bind
    failed only after the files were made, with C{Address already in use},
    which sent the operator looking for another process.  Interfaces are
    compared as addresses (L{bound_address}: C{tcp:7000} and
    C{interface=0.0.0.0}, C{localhost} and C{127.0.0.1}; another host
    name, not looked up, clashes with itself and every interface), and
    C{::} takes IPv4 too where the kernel makes it (L{dual_stack}; there
    an IPv4-mapped address is the IPv4 address); an IPv4
    and an IPv6 port may otherwise share a number (README:
    C{tcp6:PORT:interface=\\:\\:} beside C{tcp:PORT} when C{bindv6only} is
    set).
    """
    dual = dual_stack()
    seen: list[tuple[str, str, Bound, int]] = []
    for option, description, endpoint in listeners:
        address = tcp_address(endpoint)
        if address is None or not address[1]:
            continue
        bound = bound_address(address[0])
        if dual:
            bound = _unmapped(bound)  # ::ffff:127.0.0.1 binds 127.0.0.1 itself
        port = address[1]
        for other_option, other, other_bound, other_port in seen:
            if port == other_port and _overlap(bound, other_bound, dual):
                raise SystemExit(
                    f"twistd chat: {other_option} {other} and {option} {description} "
                    f"both listen on port {port}: give each its own")
        seen.append((option, description, bound, port))
