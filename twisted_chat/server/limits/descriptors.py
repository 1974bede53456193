"""
Making C{--max-clients} fit the process's file descriptor limit.

Each connection is a descriptor.  Typical systems start a process with a
soft limit of 1,024 and a much higher hard limit; a server that stays under
the soft limit while accepting 10,000 connections runs out, and Twisted then
accepts and closes new users without a word.  So at start the soft limit is
raised to the hard one, and a C{--max-clients} that still does not fit
(with L{RESERVED} descriptors left for the server's own files: listening
sockets, the database and its log, the reactor, the log file) is refused
when the operator chose it, or lowered, loudly, when it is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

#: Refused connections that may wait out their close grace at once (a TLS
#: peer that never answers holds its socket that long); past it, a refusal
#: is aborted at once (L{twisted_chat.server.factory.ChatFactory.refusal}).
REFUSALS_CLOSING = 16

#: Descriptors kept besides one per connection: 64 for the server itself
#: (listening sockets, the database and its log, the reactor, the log
#: file), and the refused connections still closing.
RESERVED = 64 + REFUSALS_CLOSING

# Where the hard limit is "unlimited", the soft one cannot be set to that on
# Linux (it is capped by fs.nr_open); ask for this much instead.
_UNLIMITED_ASK = 1 << 20


class Limits(Protocol):
    """The part of the C{resource} module this uses (a fake in tests)."""

    RLIMIT_NOFILE: int
    RLIM_INFINITY: int

    def getrlimit(self, resource: int, /) -> tuple[int, int]: ...

    def setrlimit(self, resource: int, limits: tuple[int, int], /) -> None: ...


class DoesNotFit(Exception):
    """C{str()}: one sentence for the operator."""


@dataclass(frozen=True, slots=True)
class Fit:
    max_clients: int
    soft: int
    hard: int
    raised_from: int | None  # the soft limit before it was raised, if it was
    warning: str | None  # said loudly at start when max_clients was lowered


def fit(max_clients: int, chosen: bool, limits: Limits | None = None,
        metrics: int = 0) -> Fit:
    """
    Raise the soft descriptor limit as far as allowed, then check that
    C{max_clients} connections fit.

    @param chosen: the operator gave C{--max-clients} (refuse if it does
        not fit) rather than leaving the default (lower it, with a warning).
    @param metrics: descriptors the C{--metrics} port may hold besides
        (L{twisted_chat.server.metrics.metricsport.METRICS_DESCRIPTORS}; 0 without it),
        kept out of the chat's share as L{RESERVED} is.
    @raise DoesNotFit: it does not fit and was chosen, or nothing fits.
    """
    if limits is None:
        import resource

        limits = resource
    nofile = limits.RLIMIT_NOFILE
    reserved = RESERVED + metrics
    soft, hard = limits.getrlimit(nofile)
    before = soft
    target = hard
    if hard == limits.RLIM_INFINITY:
        target = max(soft, _UNLIMITED_ASK)
    if soft != limits.RLIM_INFINITY and soft < target:
        for ask in (target, max_clients + reserved):
            if ask <= soft:
                continue
            try:
                limits.setrlimit(nofile, (ask, hard))
            except (ValueError, OSError):
                continue
            soft = ask
            break
    raised = before if soft != before else None
    if soft == limits.RLIM_INFINITY or max_clients + reserved <= soft:
        return Fit(max_clients, soft, hard, raised, None)
    room = soft - reserved
    besides = ", its --metrics connections included" if metrics else ""
    advice = (
        f"--max-clients {max_clients} needs {max_clients + reserved} file descriptors"
        f" ({reserved} for the server itself and refused connections still closing{besides}),"
        f" but this process may open only {soft}"
        f" (hard limit {'unlimited' if hard == limits.RLIM_INFINITY else hard}; raise it"
        " with 'ulimit -n' or LimitNOFILE=)"
    )
    if room < 1:
        raise DoesNotFit(f"{advice}: too few for any connection.")
    if chosen:
        raise DoesNotFit(f"{advice}; lower --max-clients to at most {room}.")
    return Fit(room, soft, hard, raised, f"{advice}: serving at most {room} connections.")
