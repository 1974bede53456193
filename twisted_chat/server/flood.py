"""
Flood control for one connection: a token bucket, and a penalty for the
lines it drops (docs/protocol.md, "Limits").  Pure: time is passed in.
"""

from __future__ import annotations

from enum import Enum


class Dropped(Enum):
    """What to do about a line dropped for flooding."""

    QUIET = "quiet"  # nothing: an ERROR went out less than a second ago
    WARN = "warn"  # send ERROR flood
    CUT = "cut"  # too many dropped: disconnect


class FloodMeter:
    """
    C{rate} lines a second, in bursts of up to C{burst}.  Each dropped line
    adds one to a penalty that drains at C{burst / 10} per second; past
    C{burst} the client is cut off.  In words: more than C{burst} lines
    dropped within about ten seconds.
    """

    __slots__ = ("_burst", "_error_at", "_penalised", "_penalty", "_rate", "_refilled", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._refilled = now
        self._penalty = 0.0
        self._penalised = now
        self._error_at: float | None = None

    def spend(self, now: float) -> bool:
        """A line came at C{now}: whether it may be handled."""
        rate = self._rate
        if not rate:
            return True
        tokens = self._tokens + (now - self._refilled) * rate
        burst = self._burst
        if tokens > burst:
            tokens = burst
        self._refilled = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False

    def dropped(self, now: float) -> Dropped:
        """A line was dropped at C{now}."""
        burst = self._burst
        drained = self._penalty - (now - self._penalised) * burst / 10.0
        self._penalty = max(drained, 0.0) + 1.0
        self._penalised = now
        if self._penalty > burst:
            return Dropped.CUT
        if self._error_at is None or now - self._error_at >= 1.0:
            self._error_at = now
            return Dropped.WARN
        return Dropped.QUIET
