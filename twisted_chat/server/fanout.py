"""
When lobby lines leave: gathering, pacing, the newcomer cut, busy senders
left unread, shutdown.  The design and its guarantees are in docs/fanout.md.

The fan-out knows connections only as L{Member}s and the lobby only as a
function returning its members; time comes from an injected C{IReactorTime}.
The decision rules are the pure functions below; L{LobbyFanout} applies them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

# The longest a lobby line waits for the pacing, in seconds, whatever the
# window, a fan-out or the clock did (docs/fanout.md, "Bounds").
MAX_FANOUT_WAIT = 0.05

# The gap after a fan-out of lines that had to wait, in multiples of what
# that fan-out took (docs/fanout.md, "Pacing").
FANOUT_QUIET_FACTOR = 4.0

# Senders are left unread only while the last fan-out carried at most this
# many lines and took at most this share of the window (docs/fanout.md,
# "Busy senders").
READERS_WAIT_MAX_LINES = 100
READERS_WAIT_SHARE = 0.125


class Member(Protocol):
    """What the fan-out needs of a connection."""

    @property
    def closing(self) -> bool:
        """The connection is closing: nothing more is read from it."""

    def deliver(self, data: bytes) -> None:
        """Send C{data} (subject only to the connection's send queue)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


# -- the rules ------------------------------------------------------------------


def quiet_after(window: float, took: float, waited: bool) -> float:
    """
    How long after a fan-out that took C{took} seconds the next one waits:
    the window, or what the fan-out took (times L{FANOUT_QUIET_FACTOR} if its
    lines had C{waited} for the pacing), whichever is longer.
    """
    return max(window, took * FANOUT_QUIET_FACTOR if waited else took)


def readers_may_wait(lines: int, took: float, window: float) -> bool:
    """Whether, after a fan-out of C{lines} that took C{took}, a busy
    sender may be left unread until the gap ends."""
    return lines <= READERS_WAIT_MAX_LINES and took <= window * READERS_WAIT_SHARE


def capped_wait(until: float, now: float) -> float:
    """Seconds from C{now} to C{until}, never more than L{MAX_FANOUT_WAIT}
    (so that a clock set back cannot hold anything)."""
    return min(until - now, MAX_FANOUT_WAIT)


# -- the fan-out ----------------------------------------------------------------


class LobbyFanout:
    """
    Gathers the lines addressed to the lobby and writes them to every member
    in one write per fan-out, paced as docs/fanout.md says; C{window} 0
    turns the pacing off (each reactor turn's lines go out at once).
    """

    def __init__(
        self,
        clock: IReactorTime,
        members: Callable[[], Iterable[Member]],
        window: float,
    ) -> None:
        self._clock = clock
        self._members = members
        self._window = window
        self._pending: list[bytes] = []
        # Members who joined while lines were gathered: the index in
        # _pending from which the lines are theirs (the rest is history).
        self._late: dict[Member, int] = {}
        self._call: IDelayedCall | None = None
        # No lobby write before this time unless order needs one; and
        # whether the pending lines wait for it (lines are pouring in).
        self._quiet_until = 0.0
        self._held = False
        # Members left unread until the gap ends, whether they may be left
        # so, and the latest they are read again however the gap moves.
        self._unread: set[Member] = set()
        self._readers_wait = True
        self._read_by = 0.0

    @property
    def pending(self) -> bool:
        """Lines are waiting: write them first before anything else goes
        to a lobby member (see L{flush})."""
        return bool(self._pending)

    def add(self, data: bytes) -> None:
        """C{data} goes to everyone in the lobby."""
        self._pending.append(data)
        if self._call is None:
            wait = capped_wait(self._quiet_until, self._clock.seconds())
            if wait > 0.0:
                self._wait_for_gap(wait)
            else:
                self._held = False
                self._call = self._clock.callLater(0.0, self.flush)

    def add_joined(self, data: bytes, newcomer: Member) -> None:
        """C{data} (its JOINED) goes to the lobby; of the lines gathered so
        far, C{newcomer} gets only those added from now on."""
        self.add(data)
        self._late[newcomer] = len(self._pending)

    def flush(self) -> None:
        """Write the gathered lines to every member now."""
        call = self._call
        if call is not None:
            self._call = None
            if call.active():
                call.cancel()
        pending = self._pending
        if pending:
            self._fan_out(pending)
        else:
            self._held = False
        if self._unread:
            if self._readers_wait:
                until = min(self._quiet_until, self._read_by)
                self._wait_for_gap(capped_wait(until, self._clock.seconds()))
            else:
                self._read_again()

    def _fan_out(self, pending: list[bytes]) -> None:
        self._pending = []
        held, self._held = self._held, False
        window = self._window
        clock = self._clock
        started = clock.seconds() if window else 0.0
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        late = self._late
        if not late:
            for member in self._members():
                member.deliver(data)
        else:
            self._late = {}
            for member in self._members():
                start = late.get(member)
                if start is None:
                    member.deliver(data)
                elif start < len(pending):
                    member.deliver(b"".join(pending[start:]))
        if window:
            ended = clock.seconds()
            took = ended - started
            self._quiet_until = ended + quiet_after(window, took, held)
            self._readers_wait = readers_may_wait(len(pending), took, window)

    def _wait_for_gap(self, wait: float) -> None:
        self._held = True
        self._call = self._clock.callLater(max(wait, 0.0), self._gap_over)

    def _gap_over(self) -> None:
        """Read those left unread, then fan out on the next turn, once what
        they sent meanwhile is in; with none, at once."""
        if not self._unread:
            self.flush()
            return
        self._read_again()
        self._call = self._clock.callLater(0.0, self.flush)

    # -- busy senders ---------------------------------------------------------

    def sent(self, member: Member) -> None:
        """C{member} sent a lobby line: if it waits for the gap, leave the
        member unread until the gap ends (docs/fanout.md, "Busy senders")."""
        if (
            self._held
            and self._readers_wait
            and member not in self._unread
            and not member.closing
        ):
            if not self._unread:
                self._read_by = self._clock.seconds() + MAX_FANOUT_WAIT
            member.pause_reading()
            self._unread.add(member)

    def closing(self, member: Member) -> None:
        """C{member} is closing: read it again at once if it was unread (a
        TLS close completes only once the peer's answer is read)."""
        if member in self._unread:
            self._unread.discard(member)
            member.resume_reading()

    def forget(self, member: Member) -> None:
        """C{member}'s connection is gone."""
        self._unread.discard(member)

    def _read_again(self) -> None:
        unread, self._unread = self._unread, set()
        for member in unread:
            member.resume_reading()

    def shutdown(self) -> None:
        """Deliver what waits: the server is about to say goodbye."""
        self.flush()
