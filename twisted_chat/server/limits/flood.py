"""
Flood control for one connection: a token bucket, and a penalty for the
lines it drops (docs/protocol.md, "Limits").  Pure: time is passed in.

The rule (L{FloodMeter}) is one object shared by every connection.  A
connection holds only its token count and the time it is as of (its last
line's, or a TLS record's that ended none), and once it has had a line
dropped its L{Flooding} record: an idle connection costs one float here
(docs/fanout.md, "Memory per connection").
"""

from __future__ import annotations

from enum import Enum

from twisted_chat.server.limits.buckets import Penalty

#: A reply bigger than a line (the user list) costs one flood token per
#: this many bytes of it (docs/security.md, "Amplification").
REPLY_BYTES = 4096


class Dropped(Enum):
    """What to do about a line dropped for flooding."""

    QUIET = "quiet"  # nothing: an ERROR went out less than a second ago
    WARN = "warn"  # send ERROR flood
    CUT = "cut"  # too many dropped: disconnect


class Flooding:
    """
    What one connection's dropped lines left: their penalty (one each,
    draining at C{burst / 10} per second) and when it was last warned.
    """

    __slots__ = ("error_at", "penalty")

    def __init__(self, burst: int, now: float) -> None:
        self.penalty = Penalty(burst, now)
        self.error_at: float | None = None


class FloodMeter:
    """
    C{rate} lines a second, in bursts of up to C{burst}.  Each dropped line
    adds one to a penalty that drains at C{burst / 10} per second; past
    C{burst} the client is cut off.  In words: more than C{burst} lines
    dropped within about ten seconds.  C{rate} 0 lets every line through.
    """

    __slots__ = ("burst", "full", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.full = float(burst)  # a new connection's tokens

    def spend(self, tokens: float, since: float, at: float) -> tuple[bool, float]:
        """
        A line came at C{at} (now, or when a held line arrived) to a
        connection that had C{tokens} at C{since}, when it last spent one
        (a new one has C{burst}): whether it may be handled, and the
        tokens the connection has after it.
        """
        rate = self.rate
        if not rate:
            return True, tokens
        # buckets.refilled, unrolled: this runs for every line, and a call
        # more would cost more than the arithmetic.  A clock that went back
        # refills nothing (and takes nothing away).
        elapsed = at - since
        if elapsed > 0.0:
            tokens += elapsed * rate
        burst = self.burst
        if tokens > burst:
            tokens = burst
        if tokens >= 1.0:
            return True, tokens - 1.0
        return False, tokens

    def charge(self, tokens: float, size: int) -> tuple[bool, float]:
        """
        A reply of C{size} bytes to a line that has just spent its token,
        the connection having C{tokens} left: one token per L{REPLY_BYTES}
        of it, the line's own included, and at most C{burst} (a reply that
        big needs a full bucket, so it can still be had).  Whether it may be
        sent, and the tokens left: a refused reply spends nothing more.
        """
        if not self.rate:
            return True, tokens
        extra = min(-(-size // REPLY_BYTES), self.burst) - 1
        if extra <= 0:
            return True, tokens
        if tokens >= extra:
            return True, tokens - extra
        return False, tokens

    def dropped(self, flooding: Flooding | None, now: float) -> tuple[Dropped, Flooding]:
        """A line was dropped at C{now}: what to do, and the connection's
        record of it (made at its first dropped line)."""
        burst = self.burst
        if flooding is None:
            flooding = Flooding(burst, now)
        if flooding.penalty.add(now) > burst:
            return Dropped.CUT, flooding
        error_at = flooding.error_at
        if error_at is None or now - error_at >= 1.0:
            flooding.error_at = now
            return Dropped.WARN, flooding
        return Dropped.QUIET, flooding
