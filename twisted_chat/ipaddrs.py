"""
A peer's IP address as the package compares it (L{parse_ip}): the server's
address limits, C{--exempt} and C{--trust-proxy}
(L{twisted_chat.server.limits.addresses}, L{twisted_chat.web.config}) and
the client's loopback check before it sends a password
(L{twisted_chat.client.passwords}).  Here, not in either, so that neither
loads the other: one parser for both.
"""

from __future__ import annotations

import ipaddress

__all__ = ["parse_ip"]


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """
    The address C{host} (a peer's, as the socket gives it) is, for every
    comparison with an address or network: an IPv4-mapped IPv6 address
    (C{::ffff:a.b.c.d}, an IPv4 client of a dual-stack port) is its IPv4
    address, and a C{%zone} is dropped.  C{None} if it is not an address.
    """
    try:
        ip = ipaddress.ip_address(host.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
