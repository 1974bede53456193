"""
The failure limits of logins, and the bounds of the password work
(docs/accounts.md, "Failure limits"): the numbers (L{LoginLimits}), one
server's leaky buckets per key (L{FailureLimiter}), and the interface of the
buckets a cluster's nodes share (L{SharedFailures}).  Time comes from the
clock given; L{twisted_chat.server.accounts.login.Accounts} holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from twisted_chat.server.limits.buckets import drained


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """The documented defaults of the failure limits and the password threads."""

    # Failures in a row on one nick from one address (its failure key:
    # the exempt and the UNIX sockets' together), then one more per
    # nick_every seconds: the lock a guesser puts on its own address.
    nick_burst: int = 5
    nick_every: float = 60.0
    # Failures on one nick from every address together: it takes several
    # addresses to lock the owner out from an address with no failures,
    # while a guesser spread over many addresses is still held to about
    # one guess per nick_total_every seconds (docs/accounts.md).
    nick_total_burst: int = 50
    nick_total_every: float = 60.0
    address_burst: int = 10  # failures in a row from one address
    address_every: float = 30.0
    flood_delay: float = 3.0  # an attempt over a limit waits this long for BYE flood
    max_pending: int = 64  # password jobs queued or running, server-wide
    # ... of which one address may have at most this many: a few addresses
    # cannot fill the queue and turn everyone's PASS away as busy.
    max_pending_per_address: int = 8
    # The new hashes REGISTER and PASSWD make (about 50 ms of CPU each):
    # this many in a row from one address, then one per hash_every seconds.
    hash_burst: int = 3
    hash_every: float = 10.0
    threads: int = 2


def nick_address_key(nick: str, address: str | None) -> str:
    """The key of the failures on the nick key C{nick} from the failure
    key C{address} (C{None}: the exempt and the UNIX sockets, together)."""
    return f"{nick}/{address or '-'}"


class FailureLimiter:
    """
    Failures per key as leaky buckets: each failure adds one, and the level
    drains by one every C{every} seconds.  A key may try again while its
    level is at most C{burst - 1}.  At most C{max_keys} keys are kept
    (drained buckets are forgotten first, then the oldest).
    """

    def __init__(
        self, clock: IReactorTime, burst: int, every: float, max_keys: int = 100_000
    ) -> None:
        self._clock = clock
        self.burst = burst
        self.every = every
        self.max_keys = max_keys
        self._levels: dict[str, tuple[float, float]] = {}  # key -> (level, when)

    def level(self, key: str) -> float:
        entry = self._levels.get(key)
        if entry is None:
            return 0.0
        level, when = entry
        return drained(level, when, self._clock.seconds(), 1.0, self.every)

    def allows(self, key: str) -> bool:
        return self.level(key) <= self.burst - 1

    def failed(self, key: str) -> None:
        level = self.level(key) + 1.0
        self._levels.pop(key, None)  # re-inserted last: the dict is oldest first
        self._levels[key] = (level, self._clock.seconds())
        if len(self._levels) > self.max_keys:
            self._forget()

    def forgive(self, key: str) -> None:
        """Take back one failure (one counted before it was known to be one)."""
        if key not in self._levels:
            return
        level = self.level(key) - 1.0
        if level <= 0.0:
            del self._levels[key]
        else:
            self._levels[key] = (level, self._clock.seconds())

    def _forget(self) -> None:
        for key in [k for k in self._levels if self.level(k) == 0.0]:
            del self._levels[key]
        while len(self._levels) > self.max_keys:
            del self._levels[next(iter(self._levels))]

    def __len__(self) -> int:
        return len(self._levels)


class SharedFailures(Protocol):
    """
    Failed attempts counted by every server of a cluster together (the
    cluster's Redis: L{twisted_chat.server.cluster.accounts.RedisFailures}),
    with the same buckets as L{FailureLimiter}s: so a guesser gets the
    documented limits whichever nodes it spreads its attempts over.  Keys
    are a nick's (lower case) and an address's (C{None}: exempt); the
    buckets are the nick's, the nick's from the address
    (L{nick_address_key}) and the address's (none when exempt).
    """

    def take(self, nick: str, address: str | None) -> defer.Deferred[bool]:
        """
        If every bucket has room for one more failure, count one in each
        and fire true; else fire false, counting nothing.  Atomic: of any
        number of takes at once, on any nodes, at most the room succeed.
        """

    def give_back(self, nick: str, address: str | None) -> None:
        """Take back one failure from each, one L{take} counted (the
        password was right, or was not checked): sent, not waited for."""
