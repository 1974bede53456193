"""
The ids of the cluster's Redis stream (C{<milliseconds>-<sequence>}, Redis's
clock), as the replica, the log and the history's rows read them: here,
apart from all three, so that the history's Redis side (L{redishistory})
does not load the replica and the hub to compare two ids.
"""

from __future__ import annotations

__all__ = ["event_seconds", "id_key"]


def id_key(eid: str) -> tuple[int, int]:
    """A stream id as a sortable key (a bare C{<ms>} counts as C{<ms>-0})."""
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def event_seconds(eid: str) -> float:
    """A stream id's time (Redis's clock, milliseconds) in POSIX seconds."""
    return int(eid.split("-", 1)[0]) / 1000.0
