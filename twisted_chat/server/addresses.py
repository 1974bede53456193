"""
Limits per source address, shared by every connection from it.

A connection's own limits (its flood bucket, its send queue) reset when it
reconnects; these do not.  An I{address} here is a bucket of peers that one
party is assumed to control: an IPv4 address, or an IPv6 prefix (a /64 by
default: that is what one subscriber gets).  Each address has

  - a count of its connections (C{--max-per-ip}) and of those still in the
    handshake (no nick yet; C{--max-handshaking-per-ip});
  - token buckets for new connections, registrations (C{NICK} accepted) and
    lobby lines, each refilling at a rate with a burst;
  - the flood penalty (lines dropped for flooding, draining over time), so
    that reconnecting does not wipe it.

Addresses under C{--exempt} (a bouncer, a NAT gateway, a benchmark) have
none of these: L{AddressBook.admit} gives them no record.  Nothing is exempt
by default, loopback included.

Memory is bounded: a record without connections is forgotten once it holds
nothing worth keeping (its buckets full, its penalty drained), and at most
C{max_tracked} records without connections are kept at all (the least
recently active go first; forgetting one only forgets its history, which
favours the attacker by one fresh burst).

Everything here is pure: no sockets, time from an injected clock.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

from twisted_chat.server.config import ServerConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(text: str) -> Network:
    """A C{--exempt} value: an address or a CIDR block (host bits allowed)."""
    return ipaddress.ip_network(text.strip(), strict=False)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_key(host: str, v6_prefix: int = 64) -> str:
    """
    The bucket C{host} belongs to: the IPv4 address itself (an IPv4-mapped
    IPv6 address counts as its IPv4 address), or the IPv6 network of
    C{v6_prefix} bits around it.  Anything that is not an IP address is its
    own bucket.
    """
    ip = _ip(host)
    if ip is None:
        return host
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return str(ipaddress.IPv6Network((ip, v6_prefix), strict=False))


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket's shape: C{per_second} refill, C{burst} capacity; 0 is no limit."""

    per_second: float
    burst: float

    @property
    def limited(self) -> bool:
        return self.per_second > 0


class TokenBucket:
    """Starts full; L{take} spends one token if there is one."""

    __slots__ = ("_rate", "_stamp", "_tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self._rate = rate
        self._tokens = float(rate.burst)
        self._stamp = now

    def _refill(self, now: float) -> float:
        tokens = self._tokens + max(now - self._stamp, 0.0) * self._rate.per_second
        if tokens > self._rate.burst:
            tokens = self._rate.burst
        self._tokens = tokens
        self._stamp = now
        return tokens

    def take(self, now: float) -> bool:
        if not self._rate.limited:
            return True
        if self._refill(now) >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0 if one is now)."""
        if not self._rate.limited:
            return 0.0
        missing = 1.0 - self._refill(now)
        return max(missing / self._rate.per_second, 0.0)

    def full_at(self, now: float) -> float:
        """When the bucket will be full again."""
        if not self._rate.limited:
            return now
        missing = self._rate.burst - self._refill(now)
        return now + max(missing / self._rate.per_second, 0.0)


class Penalty:
    """
    Lines dropped for flooding: each adds one; the sum drains at
    C{burst / 10} per second.  L{add} returns the new value; the caller
    closes the connection once it passes C{burst}.
    """

    __slots__ = ("_burst", "_stamp", "value")

    def __init__(self, burst: float, now: float) -> None:
        self._burst = burst
        self.value = 0.0
        self._stamp = now

    def _drain(self, now: float) -> float:
        drained = self.value - max(now - self._stamp, 0.0) * self._burst / 10.0
        self.value = drained if drained > 0.0 else 0.0
        self._stamp = now
        return self.value

    def add(self, now: float) -> float:
        self.value = self._drain(now) + 1.0
        return self.value

    def drained_at(self, now: float) -> float:
        value = self._drain(now)
        if not value or self._burst <= 0:
            return now
        return now + value * 10.0 / self._burst


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """The per-address limits (C{ServerConfig} builds one; see docs/security.md)."""

    max_per_ip: int = 20
    max_handshaking_per_ip: int = 5
    connect: Rate = Rate(1.0, 20)
    register: Rate = Rate(0.5, 10)
    lobby: Rate = Rate(20.0, 40)
    flood_burst: float = 20
    exempt: tuple[Network, ...] = ()
    v6_prefix: int = 64
    max_tracked: int = 20_000

    @classmethod
    def from_config(cls, config: ServerConfig) -> AddressPolicy:
        return cls(
            max_per_ip=config.max_per_ip,
            max_handshaking_per_ip=config.max_handshaking_per_ip,
            connect=Rate(config.ip_connect_rate, config.ip_connect_burst),
            register=Rate(config.ip_register_rate, config.ip_register_burst),
            lobby=Rate(config.ip_lobby_rate, config.ip_lobby_burst),
            flood_burst=config.flood_burst,
            exempt=networks(config.exempt),
            v6_prefix=config.ipv6_prefix,
        )


@dataclass(eq=False, slots=True)
class Address:
    """What one address has and has spent; shared by all its connections."""

    key: str
    connect: TokenBucket
    register: TokenBucket
    lobby: TokenBucket
    penalty: Penalty
    connections: int = 0
    handshaking: int = 0


class Refused(Exception):
    """A new connection over a per-address limit; C{str()} says which."""


class AddressBook:
    """The records of every address with connections or a recent past."""

    def __init__(self, policy: AddressPolicy, clock: IReactorTime) -> None:
        self.policy = policy
        self.clock = clock
        # Least recently active first.
        self._records: OrderedDict[str, Address] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def key(self, host: str) -> str:
        return address_key(host, self.policy.v6_prefix)

    def exempt(self, host: str) -> bool:
        ip = _ip(host)
        return ip is not None and any(ip in network for network in self.policy.exempt)

    def record(self, host: str | None) -> Address | None:
        """The record C{host}'s limits use; C{None}: not limited (exempt, or no IP)."""
        if host is None or self.exempt(host):
            return None
        key = self.key(host)
        now = self.clock.seconds()
        self._forget(now)
        record = self._records.get(key)
        if record is None:
            p = self.policy
            record = Address(
                key,
                TokenBucket(p.connect, now),
                TokenBucket(p.register, now),
                TokenBucket(p.lobby, now),
                Penalty(p.flood_burst, now),
            )
            self._records[key] = record
        else:
            self._records.move_to_end(key)
        return record

    def admit(self, host: str | None) -> Address | None:
        """
        A new connection from C{host}: count it, or raise L{Refused}.

        Checked in this order: C{--max-per-ip}, connections in the handshake
        from the address, then the rate of new connections (a refused
        connection spends no token, so a refused flood does not push the
        address further back).
        """
        record = self.record(host)
        if record is None:
            return None
        p = self.policy
        if record.connections >= p.max_per_ip:
            raise Refused(f"too many connections from {record.key}")
        if record.handshaking >= p.max_handshaking_per_ip:
            raise Refused(f"too many connections from {record.key} are still choosing a nick")
        self.spend_connect(record)
        record.connections += 1
        record.handshaking += 1
        return record

    def spend_connect(self, record: Address) -> None:
        """One new connection of C{record}: spend a token of its connection
        rate, or raise L{Refused}."""
        if not record.connect.take(self.clock.seconds()):
            raise Refused(f"too many new connections from {record.key}; slow down")

    def registered(self, record: Address | None) -> None:
        """A connection of C{record} left the handshake with a nick: one
        registration spent."""
        if record is not None:
            record.register.take(self.clock.seconds())
            if record.handshaking > 0:
                record.handshaking -= 1

    def closed(self, record: Address | None, handshaking: bool) -> None:
        """A connection of C{record} ended; C{handshaking}: it never got a nick."""
        if record is None:
            return
        record.connections = max(record.connections - 1, 0)
        if handshaking and record.handshaking > 0:
            record.handshaking -= 1

    def registration_wait(self, record: Address | None) -> float:
        """
        Seconds until C{record} may register a nick (0.0: now).  Nothing is
        spent here: L{registered} spends, once the nick is accepted, so a
        taken or invalid nick costs nothing.
        """
        if record is None:
            return 0.0
        wait = record.register.wait(self.clock.seconds())
        return max(wait, 0.001) if wait > 0 else 0.0

    def lobby_line(self, record: Address | None) -> bool:
        """Spend a lobby-line token of C{record}; false: none left."""
        return record is None or record.lobby.take(self.clock.seconds())

    def _quiet_at(self, record: Address, now: float) -> float:
        """When C{record} holds nothing a fresh record would not."""
        return max(
            record.connect.full_at(now),
            record.register.full_at(now),
            record.lobby.full_at(now),
            record.penalty.drained_at(now),
        )

    def _forget(self, now: float, look: int = 2) -> None:
        """
        Drop records that no longer matter: look at the C{look} least
        recently active, and drop the least recently active without
        connections while there are too many.
        """
        records = self._records
        for _ in range(look):
            if not records:
                return
            key, record = next(iter(records.items()))
            if record.connections or self._quiet_at(record, now) > now:
                break
            del records[key]
        # Records with connections (at most --max-clients of them) go to the
        # back; the least recently active of the others are dropped.
        tries = len(records)
        while len(records) > self.policy.max_tracked and tries > 0:
            tries -= 1
            key, record = next(iter(records.items()))
            if record.connections:
                records.move_to_end(key)
            else:
                del records[key]


T = TypeVar("T", bound=Hashable)


@dataclass(eq=False, slots=True)
class HandshakePool(Generic[T]):
    """
    Connections still in the handshake, overall.  When the pool is full, a
    newcomer does not wait or get refused: the oldest connection of the
    address holding the most of the pool makes room (L{make_room}).  An
    address that fills the pool so evicts its own connections, while a user
    from anywhere else gets in.  Every operation is O(1): addresses are kept
    in classes by how many they hold.
    """

    limit: int
    _by_key: dict[str, dict[T, None]] = field(default_factory=dict)
    # size -> the addresses holding that many (insertion-ordered)
    _by_size: dict[int, dict[str, None]] = field(default_factory=dict)
    _largest: int = 0
    _count: int = 0

    def __len__(self) -> int:
        return self._count

    def _move(self, key: str, old: int, new: int) -> None:
        if old:
            keys = self._by_size[old]
            del keys[key]
            if not keys:
                del self._by_size[old]
        if new:
            self._by_size.setdefault(new, {})[key] = None
            if new > self._largest:
                self._largest = new

    def add(self, key: str, item: T) -> None:
        items = self._by_key.setdefault(key, {})
        if item in items:
            return
        items[item] = None
        self._count += 1
        self._move(key, len(items) - 1, len(items))

    def discard(self, key: str, item: T) -> None:
        items = self._by_key.get(key)
        if items is None or item not in items:
            return
        del items[item]
        self._count -= 1
        self._move(key, len(items) + 1, len(items))
        if not items:
            del self._by_key[key]

    def make_room(self) -> list[T]:
        """The items to evict so that one more fits (oldest of the biggest
        address); the caller discards them."""
        if self._count + 1 <= self.limit:
            return []
        while self._largest > 0 and self._largest not in self._by_size:
            self._largest -= 1
        if self._largest == 0:
            return []
        key = next(iter(self._by_size[self._largest]))
        return [next(iter(self._by_key[key]))]


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(parse_network(value) for value in values)
