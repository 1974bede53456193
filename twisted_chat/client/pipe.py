"""
Plain input and output when stdin is not a terminal.

Each input line is handed to the client as if typed; every line shown is plain
text (cleaned, no escape sequences) followed by a newline.  At the end of input
the client says BYE; stdout stays open until the session is over, so that the
server's last answers are still printed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_chat.client.lines import SkipLongLines
from twisted_chat.client.render import Line, error, plain
from twisted_chat.client.sanitize import decode


@implementer(IHalfCloseableProtocol, IPushProducer)
class PipeIO(SkipLongLines):
    """
    Lines from stdin to C{on_line}, C{on_eof} at the end; a
    L{twisted_chat.client.display.Display} on stdout.

    As a producer (LineReceiver's C{pauseProducing}/C{resumeProducing}), it
    stops reading stdin, and handing over the lines already read, while the
    client holds as many lines as it may (L{ChatClient.QUEUE_MAX}).
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, on_line: Callable[[str], None], on_eof: Callable[[], None]) -> None:
        self.on_line = on_line
        self.on_eof = on_eof
        self.closed: Deferred[None] = Deferred()
        self._input_open = True

    # Display
    def show(self, line: Line) -> None:
        if self.transport is not None:
            self.transport.write(plain(line).encode("utf-8") + b"\n")

    def set_prompt(self, prompt: str) -> None:
        pass

    def ask_secret(self, prompt: str) -> None:
        pass  # a script's passwords come from the environment

    def end_secret(self) -> None:
        pass

    def drop_typing(self) -> bool:
        return False  # nothing is typed on a pipe but whole lines

    def forget(self, lines: Sequence[str]) -> None:
        pass  # no input history

    def set_aside(self) -> list[str]:
        return []  # nothing is typed on a pipe but whole lines

    def bell(self) -> None:
        pass  # never in a script's output

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        self.on_line(decode(line))

    def lineLengthExceeded(self, line: bytes) -> None:
        # A line this long is not a chat message; skip it rather than stop.
        self.show(error(f"An input line of over {self.MAX_LENGTH} bytes was skipped."))

    def readConnectionLost(self) -> None:
        if self._input_open:
            self._input_open = False
            # A last line without a newline still counts.
            rest, self._buffer = self._buffer, b""
            if rest.strip():
                self.lineReceived(rest)
            self.on_eof()

    def writeConnectionLost(self) -> None:
        # stdout went away (say, `| head`): nobody can read us any more.
        if self._input_open:
            self._input_open = False
            self.on_eof()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._input_open:
            self._input_open = False
            self.on_eof()
        if not self.closed.called:
            self.closed.callback(None)

    def close(self) -> Deferred[None]:
        """Flush stdout and close; fires when done."""
        if self.transport is not None and not self.closed.called:
            self.transport.loseConnection()
        return self.closed
