"""
L{Buckets}, the histograms of the server's metrics (L{twisted_chat.server.metrics.counters}),
apart from them: what observes one (the fan-out, the store, a cluster node)
does not load prometheus_client; only a scrape, which reads them, does.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client.core import HistogramMetricFamily

__all__ = ["Buckets"]


class Buckets:
    """
    A histogram cheap enough for a hot path: L{observe} is a bisect over a
    dozen bounds and two additions, with no lock.  Only one thread may
    observe (the reactor's, or the store's writer); any may read.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.total = 0.0

    @classmethod
    def of(cls, bounds: Sequence[float], counted: Mapping[int, int]) -> Buckets:
        """The histogram of values counted by value (C{counted}: how many
        times each was seen), for a hot path that only counts them."""
        buckets = cls(bounds)
        counts = buckets.counts
        for value, n in counted.items():
            counts[bisect.bisect_left(buckets.bounds, value)] += n
            buckets.total += value * n
        return buckets

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": the first bound >= value.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def family(self, name: str, documentation: str, unit: str = "") -> HistogramMetricFamily:
        """Its figures for a scrape (prometheus_client is loaded then)."""
        from prometheus_client.core import HistogramMetricFamily

        counts = list(self.counts)  # one copy, so the buckets add up
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(self.bounds, counts, strict=False):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        buckets.append(("+Inf", cumulative + counts[-1]))
        return HistogramMetricFamily(name, documentation, buckets=buckets,
                                     sum_value=self.total, unit=unit)


def _bound(value: float) -> str:
    return repr(float(value))
