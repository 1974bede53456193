"""
Token buckets and leaky levels: the refill and drain rules every limit of
the server shares.  Pure: time is passed in.

  - L{refilled}: tokens that come back at a rate, up to a cap (a
    L{TokenBucket}; the flood rule, L{twisted_chat.server.limits.flood.FloodMeter},
    unrolls the same rule on one float per connection);
  - L{drained}: a level that leaks away at a rate, never below 0 (a
    L{Penalty}; the login failure limits,
    L{twisted_chat.server.accounts.loginlimits.FailureLimiter});
  - in both, a clock that went back (the wall clock stepped) counts as no
    time: it neither takes tokens away nor adds failures.
"""

from __future__ import annotations

from dataclasses import dataclass


def refilled(tokens: float, since: float, now: float, per_second: float, cap: float) -> float:
    """C{tokens} at C{since}, plus C{per_second} for every second until
    C{now}, at most C{cap} (a count already over the cap is cut to it)."""
    elapsed = now - since
    if elapsed > 0.0:
        tokens += elapsed * per_second
    return tokens if tokens < cap else cap


def drained(level: float, since: float, now: float, amount: float, every: float = 1.0) -> float:
    """C{level} at C{since}, less C{amount} for every C{every} seconds until
    C{now}, never below 0."""
    elapsed = now - since
    if elapsed > 0.0:
        level -= elapsed * amount / every
    return level if level > 0.0 else 0.0


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
        rate = self._rate
        tokens = refilled(self._tokens, self._stamp, now, rate.per_second, rate.burst)
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

    def take_as_of(self, at: float) -> bool:
        """L{take} for a line that arrived at C{at}, before now (a line held
        behind a command, session.Connection.arrived): the bucket refills to
        C{at} only, and a time before its last (another line taken since,
        judged when it was handled) is no time: it is not set back, so no
        refill is counted twice.  Over any sequence of calls the bucket
        gives no more than one that was told the time as it went."""
        if not self._rate.limited:
            return True
        tokens = self._refill(at) if at > self._stamp else self._tokens
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        return False

    @property
    def stamp(self) -> float:
        """The time its count is as of (L{take_as_of} may leave it before now)."""
        return self._stamp

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0 if one is now)."""
        if not self._rate.limited:
            return 0.0
        missing = 1.0 - self._refill(now)
        return max(missing / self._rate.per_second, 0.0)

    def give_back(self) -> None:
        """One token taken is given back (what it paid for was not done),
        up to the burst."""
        if self._rate.limited:
            self._tokens = min(self._tokens + 1.0, float(self._rate.burst))

    def set(self, tokens: float, now: float) -> None:
        """Hold C{tokens} now (the cluster's count: below 0 when the address
        owes what several nodes let through at once)."""
        self._tokens = min(tokens, float(self._rate.burst))
        self._stamp = now

    def full_at(self, now: float) -> float:
        """When the bucket will be full again."""
        if not self._rate.limited:
            return now
        missing = self._rate.burst - self._refill(now)
        return now + max(missing / self._rate.per_second, 0.0)


class Penalty:
    """
    A leaky level: L{add} adds one, and the sum drains at C{burst / 10} per
    second.  L{add} returns the new value; the caller acts once it passes
    C{burst}.  The flood penalty: the lines one connection
    (L{twisted_chat.server.limits.flood.Flooding}) or one address had dropped.
    """

    __slots__ = ("_burst", "_stamp", "value")

    def __init__(self, burst: float, now: float) -> None:
        self._burst = burst
        self.value = 0.0
        self._stamp = now

    def _drain(self, now: float) -> float:
        # C{now} may be before the last call (a line held behind a command
        # is judged as of when it arrived, session.Connection.arrived): nothing
        # drains, and the time it was told last stays.
        if now > self._stamp:
            self.value = drained(self.value, self._stamp, now, self._burst, 10.0)
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
