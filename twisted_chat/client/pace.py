"""
How fast the client sends: a token bucket that stays under the server's flood
control.

A chat/1 server drops lines over its C{--flood-rate} (default 10 a second, in
bursts of C{--flood-burst} 20) and cuts off a client that keeps it up
(docs/protocol.md, "Limits": the flood rule).  A script (C{... < report.txt})
or a paste writes many lines at once: the client sends them at half the
documented defaults, and slower once the server says, with C{ERROR flood},
that lines were dropped (its text names its limits: "at most 10 lines per
second (bursts of 20)").  Lines that must wait are kept, in order, never
dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Half the server's documented defaults: room for the lines the client sends
# on its own (PONG, NICK) and for lines that arrive bunched up.
RATE = 5.0
BURST = 10
# Never slower than this, however often the server complains (its per-address
# lobby limit is shared with other connections from the same address).
MIN_RATE = 0.5

_LIMITS = re.compile(r"at most (\d+(?:\.\d+)?) [^()]*?per second[^()]*\(bursts of (\d+)\)")


def server_limits(text: str) -> tuple[float, int] | None:
    """The rate and burst an C{ERROR flood} text names, if it names them."""
    found = _LIMITS.search(text)
    if found is None:
        return None
    return float(found.group(1)), int(found.group(2))


class Pacer:
    """
    A token bucket: L{spend} for each line written, L{wait} before the next.

    @param now: the current time in seconds (the reactor's clock).
    """

    def __init__(self, now: Callable[[], float], rate: float = RATE, burst: int = BURST) -> None:
        self._now = now
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._since = now()

    def _refill(self) -> None:
        now = self._now()
        self._tokens = min(float(self.burst), self._tokens + (now - self._since) * self.rate)
        self._since = now

    def spend(self) -> None:
        """A line was written (any line: the server counts them all)."""
        self._refill()
        self._tokens -= 1.0

    def wait(self) -> float:
        """Seconds until the next line may be written (0: now)."""
        self._refill()
        # A hair under one token (float sums of refills) counts as one: a
        # wait of 1e-17 s would be no later than now on the clock.
        if self._tokens >= 1.0 - 1e-9:
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def slow_down(self, text: str) -> bool:
        """
        The server dropped a line (C{ERROR flood} with C{text}): halve the
        rate, or go to half what the server names if that is slower, and let
        its bucket fill again before the next line.  Whether the rate changed.
        """
        limits = server_limits(text)
        rate, burst = self.rate / 2, self.burst
        if limits is not None and limits[0] > 0:
            rate = min(rate, limits[0] / 2)
            burst = min(burst, max(1, limits[1] // 2))
        rate = max(rate, MIN_RATE)
        self._refill()
        self._tokens = min(self._tokens, 0.0)
        changed = rate != self.rate
        self.rate, self.burst = rate, burst
        return changed
