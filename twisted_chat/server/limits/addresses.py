"""
Limits per source address, shared by every connection from it.

A connection's own limits (its flood bucket, its send queue) reset when it
reconnects; these do not.  An I{address} here is a bucket of peers that one
party is assumed to control: an IPv4 address, or an IPv6 prefix (a /64 by
default: that is what one subscriber gets).  Each address has

  - a count of its connections (C{--max-per-ip}) and of those still in the
    handshake (no nick yet; C{--max-handshaking-per-ip});
  - token buckets for new connections, registrations (reserved when a
    C{NICK} is judged, given back if it is not registered) and lobby
    lines, each refilling at a rate with a burst;
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

In cluster mode the lobby-line and registration buckets are the cluster's
(L{AddressBook.share}): each node judges a line at once by its own copy of
the address's bucket, and brings that copy in line with the cluster's
bucket, in Redis, every L{SHARE_INTERVAL} seconds while the address spends
there (one call for every address that spent).  When the address spends
there after a quiet while (twice L{SHARE_INTERVAL}), its copy may be stale
(the address may have spent on other nodes meanwhile): that line is judged
by the copy and joins the next report, unless another line comes for the
copy first: then it is reported at once, and that line, and what comes
until the answer, waits for it (one round trip).
See docs/cluster.md, "Options", for what that lets through.

Everything here is pure: no sockets, time from an injected clock.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from twisted_chat.ipaddrs import parse_ip
from twisted_chat.server.config import ServerConfig
from twisted_chat.server.limits.buckets import Penalty, Rate, TokenBucket, drained

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Seconds between a cluster node's reports of what its addresses spent; its
#: copy of an address's bucket counts as up to date for twice that after the
#: cluster's answer (so that one spending all along never finds it stale).
SHARE_INTERVAL = 0.2


def parse_network(text: str) -> Network:
    """
    A C{--exempt} or C{--trust-proxy} value: an address or a CIDR block
    (host bits allowed).  An IPv4-mapped one (C{::ffff:127.0.0.1}) is its
    IPv4 block, since L{parse_ip} (L{twisted_chat.ipaddrs}) makes every
    such peer IPv4.
    """
    network = ipaddress.ip_network(text.strip(), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def address_key(host: str, v6_prefix: int = 64) -> str:
    """
    The bucket C{host} belongs to: the IPv4 address itself (an IPv4-mapped
    IPv6 address counts as its IPv4 address), or the IPv6 network of
    C{v6_prefix} bits around it.  Anything that is not an IP address is its
    own bucket.
    """
    ip = parse_ip(host)
    if ip is None:
        return host
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    return str(ipaddress.IPv6Network((ip, v6_prefix), strict=False))


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


class Shared:
    """
    A node's account, for one bucket of one address, of what the cluster's
    copy (L{SharedBuckets}) has not been told, and of when it last heard it.
    """

    __slots__ = ("asking", "fresh_until", "last", "peak", "stale", "unsent", "waiting")

    def __init__(self) -> None:
        self.unsent = 0  # tokens spent here since the last report was sent
        # Once a line held behind a command (one that arrived before it was
        # judged: AddressBook.lobby_line's C{at}) is among them, they are
        # timed: C{peak} is the level they alone leave at C{last}, the
        # latest time one was spent as of (see L{owed}).  None: untimed.
        self.last: float | None = None
        self.peak = 0.0
        self.fresh_until = float("-inf")  # the copy counts as up to date until then
        self.asking = False  # a report is on its way
        # Spent on a stale copy, due in the next report: a line that comes
        # before it is sent has it sent at once, and waits for its answer.
        self.stale = False
        # What waits for that report's answer (see AddressBook.lobby_line).
        self.waiting: list[Deferred[None]] | None = None

    def answered(self) -> Deferred[None]:
        """Fires when the report on its way is answered (or fails)."""
        d: Deferred[None] = Deferred()
        if self.waiting is None:
            self.waiting = []
        self.waiting.append(d)
        return d

    def owed(self) -> float:
        """What the tokens spent since the last report add to the cluster's
        bucket: their number (spent as of now, as they came); or, once
        timed, the level they alone leave (the rest came back meanwhile:
        lines typed through a Redis outage at a gentle pace leave about
        one; a burst, all of it)."""
        return self.unsent if self.last is None else self.peak

    def spent_as_of(self, at: float, now: float, rate: float) -> None:
        """One more token (counted in C{unsent} already), spent as of
        C{at}: the level of what is unsent, a leaky bucket draining at
        C{rate}, is kept from now on; what was spent before it, untimed,
        counts as spent now.  Times never go back (a line as of an earlier
        time than the last counts as of the last)."""
        last = self.last
        if last is None:
            untimed = self.unsent - 1
            if untimed:
                self.peak, last = float(untimed), now
            else:
                self.peak, last = 0.0, at
        if at > last:
            self.peak = drained(self.peak, last, at, rate)
            last = at
        self.peak += 1.0
        self.last = last

    def settled(self) -> None:
        waiting, self.waiting = self.waiting, None
        for d in waiting or ():
            d.callback(None)


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
    # Input its connections hold behind commands decided elsewhere
    # (twisted_chat.server.limits.heldinput: bounded by HeldInput.share).
    held: int = 0
    # In cluster mode (AddressBook.share), the lobby and registration
    # buckets' account with the cluster's copies, by the bucket's name
    # (LOBBY, REGISTER; each made when first spent).
    shared: dict[str, Shared] | None = None


#: The two buckets the cluster shares, by the name L{SharedBuckets} gets.
LOBBY = "lobby"
REGISTER = "register"


@dataclass(frozen=True, slots=True)
class _Budget:
    """Where one of the buckets the cluster shares is: its L{Rate} in the
    policy, and its L{TokenBucket} in an address's record."""

    rate: Callable[[AddressPolicy], Rate]
    bucket: Callable[[Address], TokenBucket]


_BUDGETS = {
    LOBBY: _Budget(lambda policy: policy.lobby, lambda record: record.lobby),
    REGISTER: _Budget(lambda policy: policy.register, lambda record: record.register),
}


class SharedBuckets(Protocol):
    """The cluster's copy of the addresses' buckets (a cluster node's:
    L{twisted_chat.server.cluster.budgets.RedisBuckets})."""

    def spend(self, items: list[tuple[str, str, float, float]]) -> Deferred[list[float]]:
        """For each C{(bucket, address key, tokens spent, rate per second)},
        add what was spent to the cluster's bucket (which drains at the
        rate) and return its level: the tokens taken and not yet refilled,
        cluster-wide, this report's included (above the burst when the
        address owes).  What was spent may be a fraction (L{Shared.owed})."""


class Refused(Exception):
    """A new connection over a limit; C{str()} says which, C{limit} names it
    for the metrics (one of L{twisted_chat.server.metrics.counters.REFUSAL_LIMITS})."""

    def __init__(self, why: str, limit: str) -> None:
        super().__init__(why)
        self.limit = limit


class AddressBook:
    """The records of every address with connections or a recent past."""

    def __init__(self, policy: AddressPolicy, clock: IReactorTime) -> None:
        self.policy = policy
        self.clock = clock
        # Least recently active first.
        self._records: OrderedDict[str, Address] = OrderedDict()
        # Cluster mode (share): the cluster's buckets, the records whose
        # spending is to be reported at the next report, and its timer.
        self._shared: SharedBuckets | None = None
        self.interval = SHARE_INTERVAL
        self._due: dict[tuple[Address, str], None] = {}
        self._report_call: IDelayedCall | None = None

    def share(self, buckets: SharedBuckets, interval: float = SHARE_INTERVAL) -> None:
        """Cluster mode: the lobby-line and registration buckets are the
        cluster's, kept by C{buckets} (see the module's docstring)."""
        self._shared = buckets
        self.interval = interval

    def __len__(self) -> int:
        return len(self._records)

    def key(self, host: str) -> str:
        return address_key(host, self.policy.v6_prefix)

    def log_key(self, host: str | None) -> str:
        """The key C{host}'s log lines are limited under (the server's and
        the web gateway's L{twisted_chat.server.logs.Repeats}): its address
        bucket's, exempt or not; C{"-"} for a connection with no address (a
        UNIX socket)."""
        return self.key(host) if host else "-"

    def exempt(self, host: str) -> bool:
        ip = parse_ip(host)
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
            raise Refused(f"too many connections from {record.key}", "max_per_ip")
        if record.handshaking >= p.max_handshaking_per_ip:
            raise Refused(f"too many connections from {record.key} are still choosing a nick",
                          "max_handshaking_per_ip")
        self.spend_connect(record)
        record.connections += 1
        record.handshaking += 1
        return record

    def spend_connect(self, record: Address) -> None:
        """One new connection of C{record}: spend a token of its connection
        rate, or raise L{Refused}."""
        if not record.connect.take(self.clock.seconds()):
            raise Refused(f"too many new connections from {record.key}; slow down",
                          "ip_connect_rate")

    def registered(self, record: Address | None) -> None:
        """A connection of C{record} left the handshake with a nick (its
        registration was spent when it was reserved: L{reserve_registration})."""
        if record is not None and record.handshaking > 0:
            record.handshaking -= 1

    def closed(self, record: Address | None, handshaking: bool) -> None:
        """A connection of C{record} ended; C{handshaking}: it never got a nick."""
        if record is None:
            return
        record.connections = max(record.connections - 1, 0)
        if handshaking and record.handshaking > 0:
            record.handshaking -= 1

    def reserve_registration(self, record: Address | None) -> float | Deferred[None]:
        """
        Reserve one registration of C{record} (0.0: done, its token spent
        now), or the seconds until one may be.  Judging and spending are one
        step, so that NICKs of one address whose registrations are under way
        at once (an account lookup, a password check, a cluster's round
        trip) cannot all pass the judgement before any spends: each reserved
        one is either registered or L{release_registration}d, so a taken or
        invalid nick costs nothing.  In cluster mode, a C{Deferred} when this
        node's copy of the bucket is stale: it fires once the cluster has
        been heard (ask again then); the registration waits for Redis anyway.
        """
        if record is None:
            return 0.0
        now = self.clock.seconds()
        limited = self.policy.register.limited
        if self._shared is not None and limited:
            shared = self._shared_for(record, REGISTER)
            if now >= shared.fresh_until and not shared.asking:
                self._report([(record, REGISTER)])
            if shared.asking:
                return shared.answered()
        wait = record.register.wait(now)
        if wait > 0:
            return max(wait, 0.001)
        record.register.take(now)
        if self._shared is not None and limited:
            self._spent(record, REGISTER, now)
        return 0.0

    def release_registration(self, record: Address | None) -> None:
        """A registration L{reserve_registration} reserved did not happen
        (the nick was taken, the password wrong, the connection went): its
        token is given back, as L{lobby_refund} gives a line's."""
        if record is not None:
            self._refund(record, REGISTER)

    def lobby_line(self, record: Address | None, at: float | None = None
                   ) -> bool | Deferred[None]:
        """
        Spend a lobby-line token of C{record}; false: none left.  C{at}: the
        line arrived then, before it is judged (held behind a command, a
        Redis outage: session.Connection.arrived): it is judged as of then
        (L{TokenBucket.take_as_of}), and so reported to the cluster (its
        L{Shared.owed}); so lines typed at a gentle pace through an outage
        are not taken for a burst when it ends, and a burst still is.  In cluster
        mode this node's copy of the bucket may not know yet what the address
        spent on other nodes (see the module's docstring): a stale copy lets
        one line through and is reconciled at once, and a line that comes
        while that is on its way gets a C{Deferred} that fires once it is
        answered (a round trip on the connection its own line's event takes
        anyway): ask again then.
        """
        if record is None:
            return True
        now = self.clock.seconds()
        shared = record.shared.get(LOBBY) if record.shared is not None else None
        if shared is not None and now >= shared.fresh_until:
            if shared.stale and not shared.asking and self._shared is not None:
                self._report([(record, LOBBY)])  # a line would wait for it: now
            if shared.asking:
                return shared.answered()
        if at is None:
            if not record.lobby.take(now):
                return False
        elif not record.lobby.take_as_of(at if at < now else now):
            return False
        if self._shared is not None and self.policy.lobby.limited:
            self._spent(record, LOBBY, now, at)
        return True

    def lobby_refund(self, record: Address) -> None:
        """A lobby line of C{record}'s that L{lobby_line} let through was
        not sent (cluster mode: taken back, answered "not sent"): its token
        is given back (L{_refund})."""
        self._refund(record, LOBBY)

    def _refund(self, record: Address, bucket: str) -> None:
        """A token of C{record}'s C{bucket} spent for nothing is given back,
        and taken out of what the next report tells the cluster.  One the
        cluster was told of already (a report went between the spending and
        the refund) stays in the cluster's bucket until that drains: the
        copy follows the cluster's count at its next report."""
        _BUDGETS[bucket].bucket(record).give_back()
        shared = record.shared.get(bucket) if record.shared is not None else None
        if shared is not None and shared.unsent > 0:
            shared.unsent -= 1
            if shared.last is not None:
                shared.peak = max(shared.peak - 1.0, 0.0)

    # -- cluster mode: the cluster's copy of the buckets ------------------------------

    def _shared_for(self, record: Address, bucket: str) -> Shared:
        accounts = record.shared
        if accounts is None:
            accounts = record.shared = {}
        shared = accounts.get(bucket)
        if shared is None:
            shared = accounts[bucket] = Shared()
        return shared

    def _spent(self, record: Address, bucket: str, now: float,
               at: float | None = None) -> None:
        """C{record} spent a token of C{bucket} here (as of C{at}, for a
        line that arrived then, see L{lobby_line}): reported with the
        next report (at most one interval from now).  If this node's copy is
        stale, the next line for it before then has it reported at once and
        waits for the answer (L{lobby_line}): the copy judges no second line
        alone, and a lone line after a quiet while (most of a person's)
        costs no script of its own."""
        shared = self._shared_for(record, bucket)
        shared.unsent += 1
        if at is not None or shared.last is not None:
            shared.spent_as_of(now if at is None or at > now else at, now,
                               _BUDGETS[bucket].rate(self.policy).per_second)
        if now >= shared.fresh_until and not shared.asking:
            # Not heard for two intervals (or never): the address may have
            # spent elsewhere meanwhile.  (One spending here all along is
            # never stale: it is reported with the others, every interval.)
            shared.stale = True
        self._due[record, bucket] = None
        if self._report_call is None:
            self._report_call = self.clock.callLater(self.interval, self._report_due)

    def _report_due(self) -> None:
        """Every SHARE_INTERVAL while addresses spend: one report for all."""
        self._report_call = None
        due, self._due = self._due, {}
        items = []
        for record, bucket in due:
            shared = self._shared_for(record, bucket)
            if shared.asking:
                self._due[record, bucket] = None  # the next report takes it
            elif shared.unsent:
                items.append((record, bucket))
        if items:
            self._report(items)
        if self._due:
            self._report_call = self.clock.callLater(self.interval, self._report_due)

    def _report(self, items: list[tuple[Address, str]]) -> None:
        """Tell the cluster what C{items} spent here; set each copy to the
        cluster's count when it answers.  If it cannot (Redis out of reach),
        what was spent is not told again: the copies go on as this node's
        own until the next report gets through."""
        assert self._shared is not None
        policy = self.policy
        sent: list[tuple[Address, str, Shared, bool]] = []
        request: list[tuple[str, str, float, float]] = []
        for record, bucket in items:
            shared = self._shared_for(record, bucket)
            rate = _BUDGETS[bucket].rate(policy)
            sent.append((record, bucket, shared, shared.last is not None))
            request.append((bucket, record.key, shared.owed(), rate.per_second))
            shared.unsent = 0
            shared.last = None
            shared.asking = True
            shared.stale = False  # asking holds what comes until the answer
        self._shared.spend(request).addCallbacks(self._reported, self._not_reported,
                                                 callbackArgs=(sent,), errbackArgs=(sent,))

    def _reported(self, levels: list[float],
                  sent: list[tuple[Address, str, Shared, bool]]) -> None:
        now = self.clock.seconds()
        for (record, bucket, shared, timed), level in zip(sent, levels, strict=True):
            shared.asking = False
            shared.fresh_until = now + 2 * self.interval
            budget = _BUDGETS[bucket]
            tokens = budget.rate(self.policy).burst - level - shared.owed()
            copy = budget.bucket(record)
            if timed or shared.last is not None:
                # Lines held behind a command are being judged as of when
                # they came (lobby_line): the copy stays as of the latest
                # of them, so that those still held refill for the time
                # between them (what they reported left that time out).
                stamp = copy.stamp
                copy.set(tokens, stamp if stamp < now else now)
            else:
                copy.set(tokens, now)
            shared.settled()

    def _not_reported(self, failure: Failure,
                      sent: list[tuple[Address, str, Shared, bool]]) -> None:
        # The copies go on as the node's own for an interval, then try again.
        until = self.clock.seconds() + self.interval
        for _, _, shared, _ in sent:
            shared.asking = False
            shared.fresh_until = until
            shared.settled()

    def stop_sharing(self) -> None:
        """No more reports (the node is stopping)."""
        self._shared = None
        if self._report_call is not None and self._report_call.active():
            self._report_call.cancel()
        self._report_call = None
        self._due.clear()

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


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(parse_network(value) for value in values)
