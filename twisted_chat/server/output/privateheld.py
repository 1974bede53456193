"""
The private lines one connection still holds: where they sit in the stream
of bytes written to it, so that the C{--sendq} cut can leave them out
(L{twisted_chat.server.output.sendqueue.SendQueue.write_private}; why in
docs/fanout.md, "What is held").
"""

from __future__ import annotations

from collections import deque

__all__ = ["MAX_SPANS", "PrivateHeld"]

# The most spans kept for one connection (see PrivateHeld).
MAX_SPANS = 64


class PrivateHeld:
    """
    The spans C{[start, end)} of the stream written to one connection
    (offsets from its first byte) that are private lines, oldest first,
    each kept until the peer has taken all of it.  L{held} answers how many
    of their bytes the peer has not taken yet.  A span that starts where
    the last one ends is joined to it.  At most L{MAX_SPANS} are kept: past
    that a new one is joined to the last, the lines between counted as
    private too (more room for the reader, never less; what a queue leaves
    out is bounded by its own rule, L{SendQueue.write_private}).
    """

    __slots__ = ("_spans", "_taken")

    def __init__(self) -> None:
        self._spans: deque[list[int]] = deque()
        self._taken = 0

    def add(self, start: int, end: int) -> None:
        """A private line was written at C{[start, end)} of the stream."""
        spans = self._spans
        if spans and (start <= spans[-1][1] or len(spans) >= MAX_SPANS):
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])

    def held(self, taken: int) -> int:
        """
        The private bytes past C{taken}, the offset up to which the peer
        has taken the stream.  That count only grows: a C{taken} below an
        earlier one (an estimate that went back) is not believed, so what
        this answers goes down, or up only by L{add}.
        """
        taken = self._taken = max(taken, self._taken)
        spans = self._spans
        while spans and spans[0][1] <= taken:
            spans.popleft()
        return sum(end - max(start, taken) for start, end in spans)
