"""
Line splitting that survives an over-long line.

Twisted's L{LineReceiver} handles a line over C{MAX_LENGTH} by calling
C{lineLengthExceeded} with the line I{and everything after it} in the buffer:
the lines after a long one in the same read are lost, and when the long line
arrives in pieces, the part after the first C{MAX_LENGTH} bytes is taken for a
line of its own (from a server, another user's text parsed as a verb: a
forged C{BYE}).  L{SkipLongLines} drops a long line up to and including its
delimiter, however it arrives, and goes on with the next line.
"""

from __future__ import annotations

from twisted.protocols.basic import LineReceiver


class SkipLongLines(LineReceiver):
    """
    A L{LineReceiver} whose C{lineLengthExceeded} is told of each over-long
    line once (with the line, or its first part if it is still arriving),
    after which that line's bytes are skipped up to its delimiter.
    """

    _skipping = False  # inside an over-long line: drop up to the next delimiter

    def dataReceived(self, data: bytes) -> None:
        buffer = self._buffer + data
        self._buffer = b""
        delimiter = self.delimiter
        start = 0
        while True:
            if self.paused:
                # pauseProducing (LineReceiver's): the lines not handled yet
                # wait here until resumeProducing hands them over.
                self._buffer = buffer[start:]
                return
            end = buffer.find(delimiter, start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + len(delimiter)
            if self._skipping:
                self._skipping = False  # the tail of a long line
                continue
            if len(line) > self.MAX_LENGTH:
                self.lineLengthExceeded(line)
                continue
            self.lineReceived(line)
            if self.transport is not None and getattr(self.transport, "disconnecting", False):
                # As LineReceiver: no lines after the protocol closed.
                self._buffer = buffer[start:]
                return
        rest = buffer[start:]
        if not self._skipping and len(rest) > self.MAX_LENGTH:
            self.lineLengthExceeded(rest)
            self._skipping = True
        self._buffer = b"" if self._skipping else rest

    def lineReceived(self, line: bytes) -> None:
        """A complete line, without its delimiter (subclasses handle it)."""
        raise NotImplementedError

    def lineLengthExceeded(self, line: bytes) -> None:
        """An over-long line (or its start) is skipped; the connection stays."""
