"""
The web gateway's settings and the rules that need no network: which
origins may open the WebSocket, and which address a client is counted
under when it comes through a reverse proxy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted_chat.ipaddrs import parse_ip
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.limits.addresses import Network, parse_network


def max_message_for(max_line: int) -> int:
    """
    The WebSocket message limit for a server whose longest line is
    C{max_line}: four times it, at least 16 KiB.  An over-long line still
    gets the chat's own C{ERROR too-long}; only something far beyond any
    line (a paste of a file, an attack) costs the connection.
    """
    return max(4 * max_line, 16384)


_SERVER_DEFAULTS = ServerConfig()


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What the gateway needs beyond the chat server's own settings."""

    # Origins (scheme://host[:port]) allowed besides the page's own; "*": any.
    origins: tuple[str, ...] = ()
    # Proxies whose X-Forwarded-For is believed (addresses or networks).
    trusted_proxies: tuple[Network, ...] = ()
    # Whether a peer on a UNIX-socket web port is such a proxy
    # (--trust-proxy unix:): it has no address to name it by.
    trust_unix: bool = False
    # The chat server's longest line (--max-line): of a message being
    # received, no more than this (and a terminator) is kept.
    max_line: int = _SERVER_DEFAULTS.max_line
    # The largest WebSocket message accepted; a larger one closes with 1009.
    # Lines longer than --max-line but within this get ERROR too-long.
    max_message: int = max_message_for(_SERVER_DEFAULTS.max_line)
    # The host names (and addresses) the web port answers to, as
    # parse_web_host keeps them; empty: any (--web-host).
    hosts: tuple[str, ...] = ()
    # Seconds an HTTP connection may last before its WebSocket upgrade,
    # however it sends (--web-timeout; twisted_chat.web.admission).
    timeout: float = 30.0


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*\Z")


def parse_origin(value: str) -> str:
    """
    A C{--web-origin} value: C{*}, or an origin as a browser sends it,
    C{scheme://host[:port]} (a trailing C{/} allowed).  Anything else could
    never match an C{Origin} header, so it is refused rather than silently
    allowing nobody.  Returned as a browser writes it, since
    L{origin_allowed} compares strings: lower case, no trailing C{/}, no
    default port (C{https://Example.org:443/} is C{https://example.org}),
    the port without leading zeros.

    @raise ValueError: naming what is wrong.
    """
    if value == "*":
        return value
    problem = f"{value!r} is not * or an origin scheme://host[:port] (e.g. https://example.org)"
    if "://" not in value or any(c.isspace() for c in value):
        raise ValueError(problem)
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port that is not 0-65535, or a bad IPv6 host
    except ValueError:
        raise ValueError(problem) from None
    if (not _SCHEME.match(parts.scheme) or not parts.hostname
            or "@" in parts.netloc or parts.netloc.endswith(":")
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or value.endswith(("?", "#"))):
        raise ValueError(problem)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address, as it stands in a URL
    if port is None or _DEFAULT_PORTS.get(scheme) == port:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


# The ports a browser leaves out of an Origin (RFC 6454, 6.1).
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


#: The C{--trust-proxy} value naming every peer on a UNIX-socket web port
#: (nginx's C{set_real_ip_from unix:}).
UNIX_PROXY = "unix:"


def parse_proxies(descriptions: Sequence[str]) -> tuple[tuple[Network, ...], bool]:
    """
    C{--trust-proxy} values: addresses, CIDR networks or L{UNIX_PROXY},
    comma-separated.  The networks, and whether a peer on a UNIX socket is
    trusted (it has no address for a network to hold).

    @raise ValueError: naming what is wrong.
    """
    networks: list[Network] = []
    unix = False
    parts = [part.strip() for description in descriptions for part in description.split(",")]
    for part in filter(None, parts):  # blanks left out
        if part.lower().startswith(UNIX_PROXY):
            if part.lower() != UNIX_PROXY:
                raise ValueError(f"{part!r}: unix: takes no path (it trusts the peers "
                                 "of every UNIX-socket --web port)")
            unix = True
        else:
            try:
                networks.append(parse_network(part))
            except ValueError:
                raise ValueError(f"{part!r} is not an address, a CIDR network "
                                 "(e.g. 127.0.0.1, 10.0.0.0/8) or unix:") from None
    return tuple(networks), unix


def split_host_port(text: str) -> tuple[str, int | None] | None:
    """
    C{host[:port]} (a C{Host} header, an C{X-Forwarded-For} entry), an
    IPv6 host in brackets: the host (lower case, without brackets) and the
    port, if any.  C{None} if it is not that: an unbalanced bracket, a port
    that is not a number up to 65535, or anything a URL would read past
    the host and port (C{user@}, C{/path}, C{?}, C{#}).
    """
    text = text.strip()
    try:
        parts = urlsplit(f"//{text}")
        port = parts.port
    except ValueError:
        return None
    if parts.netloc != text or "@" in text:
        return None
    return parts.hostname or "", port


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in C{text}, an address alone (an IPv6 one bare or in
    brackets) or with a port, as L{parse_ip} reads it."""
    ip = parse_ip(text)
    if ip is None and (split := split_host_port(text)) is not None:
        ip = parse_ip(split[0])
    return ip


def trusted(host: str | None, proxies: Sequence[Network], unix: bool = False) -> bool:
    """Whether a peer at C{host} is one of the trusted proxies C{proxies}.
    C{host} C{None} is a UNIX socket's peer (it has no address): trusted
    when C{unix} says so (C{--trust-proxy unix:})."""
    if host is None:
        return unix
    if not proxies:
        return False
    ip = _parse_ip(host)
    return ip is not None and any(ip in network for network in proxies)


def client_host(peer_host: str | None, forwarded_for: str | None,
                proxies: Sequence[Network], unix: bool = False) -> str | None:
    """
    The address a WebSocket's per-address limits count against.

    The TCP peer's (C{None}: a UNIX socket's, trusted with C{unix}, as in
    L{trusted}), unless the peer is a trusted proxy: then the
    C{X-Forwarded-For} list is read from the right (each proxy appends the
    address it received from), skipping trusted proxies, and the first
    address that is not one is the client.  A malformed entry stops the walk:
    the last trusted hop is used, since nothing left of it can be believed.
    """
    if not trusted(peer_host, proxies, unix) or not forwarded_for:
        return peer_host
    host = peer_host
    for entry in reversed(forwarded_for.split(",")):
        ip = _parse_ip(entry)
        if ip is None:
            return host
        host = str(ip)
        if not any(ip in network for network in proxies):
            return host
    return host


# The WebSocket schemes a proxy may name, as the page's.
_PAGE_SCHEMES = {"ws": "http", "wss": "https"}


def forwarded_scheme(proto: str | None) -> str | None:
    """
    The scheme a trusted proxy's C{X-Forwarded-Proto} C{proto} says the
    page was served with: its first entry (the one the browser reached,
    when each proxy appends its own; a page cannot set the header), in
    lower case, C{ws} and C{wss} read as C{http} and C{https}.  C{None}
    when absent or blank; any other word is kept, and matches no origin.
    """
    first = (proto or "").split(",", 1)[0].strip().lower()
    return _PAGE_SCHEMES.get(first, first) or None


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\Z")


def _host_name(text: str) -> str | None:
    """C{text} (a name or an IP address, an IPv6 one in brackets or not)
    as it is compared: lower case, without brackets or a trailing dot;
    C{None} if it is neither."""
    text = text.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > 253 or not _HOST_NAME.match(text):
        return None
    return text


def parse_web_host(value: str) -> str:
    """
    A C{--web-host} value: a host name (C{chat.example.org}, C{localhost})
    or an IP address (C{192.0.2.7}, C{::1}), without a port.

    @raise ValueError: naming what is wrong.
    """
    name = _host_name(value)
    if name is None:
        raise ValueError(f"{value!r} is not a host name or an IP address "
                         "(e.g. chat.example.org, 192.0.2.7; no port)")
    return name


def host_allowed(host: str | None, hosts: Sequence[str]) -> bool:
    """
    Whether a request with the C{Host} header C{host} is answered: always
    when C{hosts} (C{--web-host}) is empty; else when its name (the port
    left out) is one of them.  A page whose name is rebound in DNS to this
    server's address (DNS rebinding) sends its own name here.
    """
    if not hosts:
        return True
    split = split_host_port(host) if host else None
    return split is not None and _host_name(split[0]) in hosts


def host_well_formed(host: str) -> bool:
    """Whether the C{Host} header C{host} reads as a host and a port at all
    (L{split_host_port}: a C{[} without its C{]}, or a port that is not a
    number, does not)."""
    return split_host_port(host) is not None


def origin_allowed(origin: str | None, host: str | None, allowed: Sequence[str],
                   scheme: str | None = None) -> bool:
    """
    The WebSocket's Origin check.  A browser always sends C{Origin}; a
    request without one is not from a page (a command-line client), so
    there is no other site's page to protect the user from, and it is let
    in.  Otherwise the origin must be the page's own: its host and port the
    C{Host} the page was served from, and its scheme C{scheme}, the one the
    page was served with (an http page and an https one on one host are
    two origins); or the origin one of C{--web-origin}'s (or that be
    C{*}).  C{scheme} C{None}: not known here (a trusted proxy in front,
    without C{X-Forwarded-Proto}, may end TLS, the page https while this
    server sees http), not compared.
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    if "*" in allowed or origin in (o.rstrip("/").lower() for o in allowed):
        return True
    if origin == "null" or not host:
        return False
    # An unbalanced bracket, a port that is not a number: not allowed.  (The
    # gateway refuses such a Host first, host_well_formed, and autobahn such
    # an Origin, with a 400 before onConnect.)
    try:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if scheme is not None and parts.scheme != scheme:
            return False
        default = 443 if parts.scheme == "https" else 80
        origin_port = parts.port or default
    except ValueError:
        return False
    served = split_host_port(host)
    if served is None:
        return False
    served_host, served_port = served
    return served_host == parts.hostname and (served_port or default) == origin_port
