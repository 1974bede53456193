"""Plain input and output when stdin is not a terminal."""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_chat.client.pipe import PipeIO
from twisted_chat.client.render import error, info, notice


class Pipe:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.eofs = 0
        self.io = PipeIO(self.lines.append, self._eof)
        self.transport = StringTransport()
        self.io.makeConnection(self.transport)

    def _eof(self) -> None:
        self.eofs += 1


def test_is_half_closeable() -> None:
    # Without this, end of input on a pipe would close stdout as well.
    assert IHalfCloseableProtocol.providedBy(Pipe().io)


def test_lines_in_with_lf_or_crlf_and_utf8() -> None:
    p = Pipe()
    p.io.dataReceived(b"hello\nsecond\r\ncaf\xc3\xa9\n\xff\n")
    assert p.lines == ["hello", "second", "café", "\ufffd"]


def test_end_of_input_delivers_a_last_unterminated_line_then_eof() -> None:
    p = Pipe()
    p.io.dataReceived(b"one\nlast without newline")
    p.io.readConnectionLost()
    assert p.lines == ["one", "last without newline"]
    assert p.eofs == 1
    p.io.connectionLost(Failure(ConnectionDone()))
    assert p.eofs == 1


def test_output_is_plain_text_without_escapes() -> None:
    p = Pipe()
    p.io.show(notice("bob joined"))
    p.io.show(error("nope"))
    p.io.show(info("evil \x1b[31m\u202e"))
    p.io.set_prompt("alice> ")
    assert p.transport.value() == (b"* bob joined\n! nope\nevil \\x1b[31m\\u202e\n")


def test_close_flushes_and_fires_when_stdio_is_gone() -> None:
    p = Pipe()
    closed = p.io.close()
    assert p.transport.disconnecting and not closed.called
    p.io.connectionLost(Failure(ConnectionDone()))
    assert closed.called


def test_stdout_going_away_ends_the_session() -> None:
    p = Pipe()
    p.io.writeConnectionLost()
    assert p.eofs == 1


def test_an_over_long_input_line_is_skipped_and_the_next_ones_kept() -> None:
    """LineReceiver threw away the rest of the read after a long line, so
    the next line of a script was never sent."""
    p = Pipe()
    big = b"x" * (PipeIO.MAX_LENGTH + 1)
    p.io.dataReceived(b"before\n" + big + b"\nnext line\n")
    assert p.lines == ["before", "next line"]
    # Arriving in pieces, its tail is not a line of its own.
    p.io.dataReceived(big)
    p.io.dataReceived(b"tail of the long line\nafter\n")
    p.io.dataReceived(b"last")
    p.io.readConnectionLost()
    assert p.lines == ["before", "next line", "after", "last"]
    skipped = f"! An input line of over {PipeIO.MAX_LENGTH} bytes was skipped.\n".encode()
    assert p.transport.value() == skipped * 2


def test_an_over_long_last_line_without_a_newline_is_not_sent() -> None:
    p = Pipe()
    p.io.dataReceived(b"y" * (PipeIO.MAX_LENGTH + 1))
    p.io.dataReceived(b"still the same line")
    p.io.readConnectionLost()
    assert p.lines == [] and p.eofs == 1
