"""
The interactive client on a terminal.

L{ChatTerminal} is a L{twisted.conch.recvline.HistoricRecvLine} run by
L{twisted.conch.insults.insults.ServerProtocol} over
L{twisted.internet.stdio.StandardIO}, with the terminal in raw mode.  insults
turns the terminal's escape sequences into keys; this class keeps the line
being typed and its history, and owns the bottom row of the screen: an
incoming message erases the input row, is printed, and the prompt and the
half-typed text are drawn again with the cursor where it was.  So incoming
messages never break the line being typed.

The input row never wraps: a line wider than the terminal scrolls sideways
around the cursor.  Text is UTF-8; wide characters count two columns.

Importing this module imports L{twisted.conch.recvline}, which (through
C{insults.helper}) imports the global reactor: import it only once the
reactor has been chosen, as L{twisted_chat.client.main} does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from twisted.conch.insults import insults
from twisted.conch.recvline import HistoricRecvLine
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twisted_chat.client.cells import cell, cluster_end, cluster_start, fit_prompt
from twisted_chat.client.commands import is_secret_command
from twisted_chat.client.complete import Completion, complete
from twisted_chat.client.render import Line, Span, Style, ansi, notice, plain, wrap
from twisted_chat.client.sanitize import text_width

ERASE_ROW = "\r\x1b[K"
# Bracketed paste (xterm's mode 2004): the terminal marks pasted text with
# PASTE_START and PASTE_END, so that a TAB in it is text, not the Tab key.
PASTE_MODE_ON = "\x1b[?2004h"
PASTE_MODE_OFF = "\x1b[?2004l"
PASTE_START = b"\x1b[200~"
PASTE_END = b"\x1b[201~"
ALT: object = insults.ServerProtocol.ALT  # type: ignore[attr-defined]  # set in a loop
HISTORY_MAX = 500
# A paste of more lines than this is held until the user says to send it
# (Enter) or to drop it (Esc): it may be the wrong clipboard.
PASTE_ASK = 5
# While a paste is held, a read of more bytes than this, or with more than
# one Enter in it, is more of it (in a terminal without bracketed paste),
# not an answer: keys come one by one, and an escape sequence or a UTF-8
# character takes a few bytes.
KEYS_MAX = 8


def _utf8_length(lead: int) -> int:
    """How many bytes a UTF-8 sequence starting with C{lead} has (0: invalid)."""
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


class ChatTerminal(HistoricRecvLine):
    """
    The line editor and screen of the interactive client.

    @param on_line: called with each line the user enters.
    @param on_quit: called for Ctrl-C (and Ctrl-D on an empty line, unless
        C{on_eof} is given).
    @param colour: use SGR colours.
    @param styles: without colour (C{NO_COLOR}), still use SGR bold, dim and
        reverse video (the mention mark); C{False} for C{TERM=dumb}.
    @param on_secret: called with a line typed at a password prompt
        (L{ask_secret}); such a line is never drawn nor kept in the history.
    @param nicks: the nicknames Tab offers (see L{twisted_chat.client.complete}).
    @param bell: whether L{bell} rings the terminal bell (C{--no-bell}).
    @param on_eof: called for Ctrl-D on an empty line: the end of input.
    @param paste_time: about how many seconds this many lines take to send
        (said when a paste of more than L{PASTE_ASK} lines is held).
    """

    width = 80
    height = 24

    def __init__(
        self,
        on_line: Callable[[str], None],
        on_quit: Callable[[], None],
        *,
        colour: bool,
        styles: bool = False,
        on_secret: Callable[[str], None] | None = None,
        nicks: Callable[[], Iterable[str]] = tuple,
        bell: bool = True,
        on_eof: Callable[[], None] | None = None,
        paste_time: Callable[[int], float] | None = None,
    ) -> None:
        self.terminal: Any = None  # set by makeConnection
        self.paste_time = paste_time
        self.on_eof = on_eof if on_eof is not None else on_quit
        self.on_line = on_line
        self.on_secret = on_secret
        self.nicks = nicks
        self.ring = bell
        self.on_quit = on_quit
        self.colour = colour
        self.styles = styles
        self.prompt = "> "
        self.lineBuffer: list[str] = []
        self.lineBufferIndex = 0
        self.historyLines: list[str] = []
        self.historyPosition = 0
        self.closed: Deferred[None] = Deferred()
        self._draft: list[str] = []
        self._scroll = 0  # index of the first buffer character on screen
        # The input row's column a reflowing terminal keeps the cursor on:
        # its own if text follows it, else the last one drawn (at the end
        # of the row, the cursor waits past it, on the same row).
        self._reflow_column = 0
        self._utf8 = b""
        self._closing = False
        self._batching = False
        self._dirty = False
        # While a password is typed: its prompt, and the line it interrupted.
        self._secret_prompt: str | None = None
        self._saved: tuple[list[str], int] = ([], 0)
        # The completion Tab is cycling through: it, the choice shown, and
        # where the text put in ends.
        self._completion: tuple[Completion, int, int] | None = None
        # A TAB is text, not the Tab key, inside a bracketed paste, and when
        # more than TABs follow it in the same read (a paste in a terminal
        # without bracketed paste): this many TABs of the current read.
        self._pasting = False
        self.tabs_as_text = 0
        # The current read is a paste (in a terminal without bracketed paste).
        self.burst = False
        # Lines entered in the paste being read, and a paste of more than
        # PASTE_ASK lines held until Enter sends it or Esc drops it.
        self._pasted: list[str] = []
        self._held: list[str] = []

    # -- set-up ------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self.historyLines = []
        self.historyPosition = 0
        self.keyHandlers.update(
            {
                b"\x01": self.handle_HOME,  # Ctrl-A
                b"\x05": self.handle_END,  # Ctrl-E
                b"\x02": self.handle_LEFT,  # Ctrl-B
                b"\x06": self.handle_RIGHT,  # Ctrl-F
                b"\x08": self.handle_BACKSPACE,  # Ctrl-H
                b"\x10": self.handle_UP,  # Ctrl-P
                b"\x0e": self.handle_DOWN,  # Ctrl-N
                b"\x15": self.handle_KILL_LINE,  # Ctrl-U
                b"\x0b": self.handle_KILL_TO_END,  # Ctrl-K
                b"\x17": self.handle_DELETE_WORD,  # Ctrl-W
                b"\x0c": self.handle_REDRAW,  # Ctrl-L
                b"\x03": self.handle_INTERRUPT,  # Ctrl-C
                b"\x04": self.handle_EOF,  # Ctrl-D
            }
        )

    def initializeScreen(self) -> None:
        # Unlike RecvLine, do not reset the terminal: what was on the screen
        # before the client started stays there.
        self.mode = "insert"
        self._write(PASTE_MODE_ON)
        self.draw()

    def setInsertMode(self) -> None:
        self.mode = "insert"

    def setTypeoverMode(self) -> None:
        self.mode = "typeover"

    def terminalSize(self, width: int, height: int) -> None:
        width = max(width, 1)  # the real width: the input row must fit it
        if width < self.width:
            self._erase_reflowed(width)
        self.width = width
        self.height = height
        self.draw()

    def _erase_reflowed(self, width: int) -> None:
        """Erase what a narrowing made of the input row: a terminal that
        reflows (tmux, VTE, kitty, iTerm2) wrapped it into rows above the
        cursor, which erasing the cursor's row alone left on the screen as
        if they were a line of chat."""
        above = self._reflow_column // width
        self._write("\r" + (f"\x1b[{above}A" if above else "") + "\x1b[J")

    # -- the Display interface -------------------------------------------------

    def show(self, line: Line) -> None:
        """Print a line above the input row, then redraw the input row."""
        for row in wrap(line, self.width - 1):
            self._write(ERASE_ROW + self._text(row) + "\n")
        self.draw()

    def _text(self, line: Line) -> str:
        """The line as this terminal shows it: coloured, styled or plain."""
        if self.colour or self.styles:
            return ansi(line, colour=self.colour)
        return plain(line)

    def set_prompt(self, prompt: str) -> None:
        self.prompt = prompt
        self.draw()

    def bell(self) -> None:
        """Ring the terminal bell (a mention, a private message, an invitation)."""
        if self.ring:
            self._write("\a")

    def ask_secret(self, prompt: str) -> None:
        """Read the next line without drawing it (a password)."""
        if self._secret_prompt is None:
            self._saved = (self.lineBuffer, self.lineBufferIndex)
        self._secret_prompt = prompt
        self.lineBuffer, self.lineBufferIndex = [], 0
        self.draw()

    def end_secret(self) -> None:
        """Back to the ordinary prompt, with the line that was being typed."""
        if self._secret_prompt is None:
            return
        self._secret_prompt = None
        self.lineBuffer, self.lineBufferIndex = self._saved
        self._saved = ([], 0)
        self.draw()

    def _take_typing(self) -> list[str]:
        """
        Take off the input line, unsent, what it holds: a paste held for
        Enter, the draft Up put aside (while a history line is shown), and
        the line being typed, or the one a password prompt interrupted.
        Those lines in that order, blank ones left out.
        """
        lines, self._held = self._held, []
        if self.historyPosition < len(self.historyLines):  # browsing: Up hid the draft
            lines.append("".join(self._draft))
        if self._secret_prompt is not None:
            lines.append("".join(self._saved[0]))
            self._saved = ([], 0)
        else:
            lines.append("".join(self.lineBuffer))
            self._set_buffer([])
        self._draft = []
        self._completion = None
        self.historyPosition = len(self.historyLines)
        return [line for line in lines if line.strip()]

    def drop_typing(self) -> bool:
        """
        Clear the line being typed, or the one a password prompt interrupted
        (and the draft Up put aside): it may be a password typed ahead of its
        prompt, and a paste held for confirmation.  Whether it held anything
        but spaces.
        """
        return bool(self._take_typing())

    def set_aside(self) -> list[str]:
        """
        Take the line being typed (or the one a password prompt interrupted,
        and the draft Up put aside), and a paste held for Enter, off the input
        line, unsent, into the history Up recalls: the conversation they were
        typed for has changed.  The lines set aside (blank ones left out).
        """
        lines = self._take_typing()
        for line in lines:
            self._remember(line)
        return lines

    def forget(self, lines: Sequence[str]) -> None:
        """Drop these lines from the history Up recalls (the latest copy of each)."""
        for line in lines:
            for i in range(len(self.historyLines) - 1, -1, -1):
                if self.historyLines[i] == line:
                    del self.historyLines[i]
                    break
        self.historyPosition = min(self.historyPosition, len(self.historyLines))

    # -- drawing -----------------------------------------------------------------

    def _write(self, text: str) -> None:
        if self.terminal is not None and not self._closing:
            # ServerProtocol.write turns each "\n" into "\r\n" (raw mode).
            self.terminal.write(text.encode("utf-8"))

    def _visible(self) -> tuple[str, int]:
        """The part of the buffer on screen and how far the cursor is from its end."""
        buffer = self.lineBuffer
        room = max(self.width - text_width(fit_prompt(self.prompt, self.width)) - 1, 1)
        index = self.lineBufferIndex
        # Nothing more than 2 * room characters before the cursor can be on
        # screen (a character is at most 2 columns): look no further back, so
        # that a keystroke costs the same however long the line is.
        start = max(min(self._scroll, index), index - 2 * room)
        if index <= 2 * room and sum(cell(ch)[1] for ch in buffer[:index]) <= room:
            start = 0  # the cursor is within the first screenful: show it all
        used = sum(cell(ch)[1] for ch in buffer[start:index])
        while used > room:
            used -= cell(buffer[start])[1]
            start += 1
        self._scroll = start
        end = index
        while end < len(buffer) and used + cell(buffer[end])[1] <= room:
            used += cell(buffer[end])[1]
            end += 1
        back = sum(cell(ch)[1] for ch in buffer[index:end])
        return "".join(cell(ch)[0] for ch in buffer[start:end]), back

    def draw(self) -> None:
        """Draw the prompt and the input line on the current row."""
        if self._batching:
            self._dirty = True
            return
        question = self._secret_prompt
        if question is None and self._held:
            question = f"send the {len(self._held)} pasted lines? Enter sends, Esc drops: "
        if question is not None:
            shown = fit_prompt(question, self.width)
            self._reflow_column = max(text_width(shown) - 1, 0)
            self._write(ERASE_ROW + self._text((Span(shown, Style.PROMPT),)))
            return
        visible, back = self._visible()
        shown = fit_prompt(self.prompt, self.width)
        column = text_width(shown) + text_width(visible) - back
        self._reflow_column = column if back else max(column - 1, 0)
        out = ERASE_ROW + self._text((Span(shown, Style.PROMPT),)) + visible
        if back:
            out += f"\x1b[{back}D"
        self._write(out)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Draw the input row once after many keys (a paste) instead of per key."""
        self._batching, self._dirty = True, False
        try:
            yield
        finally:
            self._batching = False
            if self._dirty:
                self.draw()

    drawInputLine = draw

    # -- keys --------------------------------------------------------------------

    def _answering(self) -> bool:
        """Whether keys answer the question about a held paste (not more of a paste)."""
        return bool(self._held) and self._secret_prompt is None and not self._in_paste()

    def _in_paste(self) -> bool:
        return self._pasting or self.burst

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        if self._answering():
            if keyID == b"\r" and modifier is not ALT:
                self._send_held()
            elif keyID == b"\x1b":
                self._drop_held()  # Esc twice
            elif keyID == b"\x03":
                self.handle_INTERRUPT()
            else:
                self.bell()  # only Enter, Esc or Ctrl-C now
            return
        if keyID == b"\t" and (self._pasting or self.tabs_as_text > 0):
            self.tabs_as_text = max(self.tabs_as_text - 1, 0)
            self._completion = None
            self.characterReceived("\t", False)
            return
        if keyID != b"\t":
            self._completion = None  # any other key ends the cycling
        if modifier is ALT:
            self._alt_key(keyID)
            return
        handler = self.keyHandlers.get(keyID)
        if handler is not None:
            self._utf8 = b""
            handler()  # type: ignore[no-untyped-call]
            return
        if not isinstance(keyID, bytes) or len(keyID) != 1:
            return  # a function key we have no use for
        self._byte_received(keyID)

    def _byte_received(self, byte: bytes) -> None:
        value = byte[0]
        if 0x20 <= value < 0x7F:
            self._utf8 = b""
            self.characterReceived(byte.decode("ascii"), False)
            return
        if value < 0x80:
            return  # an unbound control key
        if value >= 0xC0 or not self._utf8:
            self._utf8 = byte  # a lead byte (or a stray continuation)
        else:
            self._utf8 += byte
        need = _utf8_length(self._utf8[0])
        if need == 0:
            self._utf8 = b""
        elif len(self._utf8) == need:
            char = self._utf8.decode("utf-8", errors="replace")
            self._utf8 = b""
            self.characterReceived(char, False)

    def _alt_key(self, keyID: Any) -> None:
        """
        ESC and a key in one read: Alt and that key, or Esc pressed just
        before it.  An Alt key with no use of its own is the key alone:
        dropped, it could be the "/" or "@" that makes a line a command or a
        private message, and the rest would go to the lobby.
        """
        if keyID == b"b":
            self._word_left()
        elif keyID == b"f":
            self._word_right()
        elif keyID in (b"\x7f", b"\x08"):
            self.handle_DELETE_WORD()
        elif keyID == b"\x1b":
            self.handle_ESCAPE()  # Esc pressed twice
        else:
            self.keystrokeReceived(keyID, None)

    def handle_ESCAPE(self) -> None:
        """The Esc key (L{TerminalServer} tells it from the start of a sequence)."""
        self._completion = None
        if self._answering():
            self._drop_held()

    # -- pastes ------------------------------------------------------------------

    def start_of_read(self, data: bytes) -> None:
        """
        What the keys of one read are: a TAB with more than TABs after it in
        the same read was pasted (typed, Tab comes alone or last); and, in a
        terminal without bracketed paste, a read with more than L{PASTE_ASK}
        lines is a paste to hold, and while one is held a read of more than
        a few keys is more of it.
        """
        self.tabs_as_text = data.rstrip(b"\t").count(b"\t")
        lines = data.count(b"\r")
        if self._held:
            self.burst = lines > 1 or len(data) > KEYS_MAX
        else:
            self.burst = lines > PASTE_ASK

    def end_of_read(self) -> None:
        """
        The keys of one read are handled: a paste that ended (a burst, or a
        bracketed paste closed) goes on if it has at most L{PASTE_ASK}
        lines; a longer one is held until Enter sends it or Esc drops it.
        """
        self.tabs_as_text = 0
        self.burst = False
        if self._pasting or not self._pasted:
            return
        lines, self._pasted = self._pasted, []
        if self._held:
            self._held.extend(lines)  # more of the same paste, read later
        elif len(lines) <= PASTE_ASK:
            for line in lines:
                self._enter(line)
            return
        else:
            self._held = lines
            count = len(lines)
            seconds = self.paste_time(count) if self.paste_time is not None else None
            about = f" (about {seconds:g} s to send)" if seconds else ""
            self.show(notice(f"You pasted {count} lines{about}: Enter sends them, Esc drops them."))
        self.draw()

    def _send_held(self) -> None:
        lines, self._held = self._held, []
        self.draw()
        for line in lines:
            self._enter(line)

    def _drop_held(self) -> None:
        count = len(self._held)
        self._held = []
        self.show(notice(f"The {count} pasted lines were dropped: none was sent."))

    def characterReceived(self, ch: Any, moreCharactersComing: bool) -> None:
        if isinstance(ch, bytes):
            ch = ch.decode("utf-8", errors="replace")
        if self.mode == "insert" or self.lineBufferIndex >= len(self.lineBuffer):
            self.lineBuffer.insert(self.lineBufferIndex, ch)
        else:
            self.lineBuffer[self.lineBufferIndex] = ch
        self.lineBufferIndex += 1
        if not moreCharactersComing:
            self.draw()

    def _move_to(self, index: int) -> None:
        self.lineBufferIndex = max(0, min(index, len(self.lineBuffer)))
        self.draw()

    def handle_TAB(self) -> None:
        """Complete a nickname or a command; Tab again offers the next choice."""
        if self._secret_prompt is not None:
            return
        if self._completion is None:
            line = "".join(self.lineBuffer)
            found = complete(line, self.lineBufferIndex, self.nicks())
            if found is None:
                return
            choice, end = 0, found.end
        else:
            found, choice, end = self._completion
            choice = (choice + 1) % len(found.choices)
        text = found.choices[choice]
        self.lineBuffer[found.start : end] = list(text)
        self.lineBufferIndex = found.start + len(text)
        self._completion = (found, choice, self.lineBufferIndex)
        self.draw()

    def handle_LEFT(self) -> None:
        if self.lineBufferIndex > 0:
            self._move_to(cluster_start(self.lineBuffer, self.lineBufferIndex))

    def handle_RIGHT(self) -> None:
        if self.lineBufferIndex < len(self.lineBuffer):
            self._move_to(cluster_end(self.lineBuffer, self.lineBufferIndex))

    def handle_HOME(self) -> None:
        self._move_to(0)

    def handle_END(self) -> None:
        self._move_to(len(self.lineBuffer))

    def handle_BACKSPACE(self) -> None:
        if self.lineBufferIndex > 0:
            start = cluster_start(self.lineBuffer, self.lineBufferIndex)
            del self.lineBuffer[start : self.lineBufferIndex]
            self.lineBufferIndex = start
            self.draw()

    def handle_DELETE(self) -> None:
        if self.lineBufferIndex < len(self.lineBuffer):
            del self.lineBuffer[
                self.lineBufferIndex : cluster_end(self.lineBuffer, self.lineBufferIndex)
            ]
            self.draw()

    def handle_KILL_LINE(self) -> None:
        del self.lineBuffer[: self.lineBufferIndex]
        self.lineBufferIndex = 0
        self.draw()

    def handle_KILL_TO_END(self) -> None:
        del self.lineBuffer[self.lineBufferIndex :]
        self.draw()

    def _word_start(self) -> int:
        index = self.lineBufferIndex
        while index > 0 and self.lineBuffer[index - 1] == " ":
            index -= 1
        while index > 0 and self.lineBuffer[index - 1] != " ":
            index -= 1
        return index

    def _word_left(self) -> None:
        self._move_to(self._word_start())

    def _word_right(self) -> None:
        index = self.lineBufferIndex
        size = len(self.lineBuffer)
        while index < size and self.lineBuffer[index] == " ":
            index += 1
        while index < size and self.lineBuffer[index] != " ":
            index += 1
        self._move_to(index)

    def handle_DELETE_WORD(self) -> None:
        start = self._word_start()
        del self.lineBuffer[start : self.lineBufferIndex]
        self.lineBufferIndex = start
        self.draw()

    def handle_REDRAW(self) -> None:
        self._write("\x1b[2J\x1b[H")
        self.draw()

    def handle_INTERRUPT(self) -> None:
        self.on_quit()

    def handle_EOF(self) -> None:
        if self.lineBuffer:
            self.handle_DELETE()
        else:
            self.on_eof()

    def _set_buffer(self, chars: list[str]) -> None:
        self.lineBuffer = list(chars)
        self.lineBufferIndex = len(self.lineBuffer)
        self._scroll = 0
        self.draw()

    def handle_UP(self) -> None:
        if self._secret_prompt is not None:
            return
        if self.historyPosition == len(self.historyLines):
            self._draft = list(self.lineBuffer)
        if self.historyPosition > 0:
            self.historyPosition -= 1
            self._set_buffer(list(self.historyLines[self.historyPosition]))

    def handle_DOWN(self) -> None:
        if self._secret_prompt is not None:
            return
        if self.historyPosition < len(self.historyLines) - 1:
            self.historyPosition += 1
            self._set_buffer(list(self.historyLines[self.historyPosition]))
        elif self.historyPosition == len(self.historyLines) - 1:
            self.historyPosition += 1
            self._set_buffer(self._draft)

    def handle_RETURN(self) -> None:
        line = "".join(self.lineBuffer)
        if self._secret_prompt is not None:
            self.lineBuffer = []
            self._enter(line)
            return
        self._draft = []
        self._set_buffer([])
        if self._in_paste():
            self._pasted.append(line)  # entered, and recalled, once the paste ends
            return
        self._enter(line)

    def _enter(self, line: str) -> None:
        """
        A line is entered: kept for Up and handed over, or, at a password
        prompt, handed over unseen.  (A pasted line is entered once the
        paste has ended, and a password prompt may have opened meanwhile.)
        """
        if self._secret_prompt is not None:
            self.end_secret()
            if self.on_secret is not None:
                self.on_secret(line)
            return
        self._remember(line)
        self.lineReceived(line)

    def _remember(self, line: str) -> None:
        """
        Keep C{line} for Up (not a blank one, nor one just kept), and show
        the empty line below the history again.  A /register or /passwd line
        is never recalled: were a password typed after it, Up must not bring
        it back on screen.
        """
        remember = line.strip() and not is_secret_command(line)
        if remember and (not self.historyLines or self.historyLines[-1] != line):
            self.historyLines.append(line)
            del self.historyLines[:-HISTORY_MAX]
        self.historyPosition = len(self.historyLines)

    def lineReceived(self, line: Any) -> None:
        self.on_line(line)

    def unhandledControlSequence(self, seq: bytes) -> None:
        # Keys insults does not name: cursor keys in application mode
        # (ESC O A, which insults reports as ESC [ O A) and Ctrl-Left/Right.
        if seq in (PASTE_START, PASTE_END):
            self._pasting = seq == PASTE_START
            return
        if self._answering():
            self.bell()
            return
        handler = {
            b"\x1b[OA": self.handle_UP,
            b"\x1b[OB": self.handle_DOWN,
            b"\x1b[OC": self.handle_RIGHT,
            b"\x1b[OD": self.handle_LEFT,
            b"\x1b[OH": self.handle_HOME,
            b"\x1b[OF": self.handle_END,
            b"\x1b[1;5C": self._word_right,
            b"\x1b[1;5D": self._word_left,
            b"\x1b[1;3C": self._word_right,
            b"\x1b[1;3D": self._word_left,
        }.get(seq)
        if handler is not None:
            handler()

    # -- the end -----------------------------------------------------------------

    def close(self) -> Deferred[None]:
        """Erase the input row, flush, and let go of the terminal."""
        self._write(PASTE_MODE_OFF + ERASE_ROW)
        self._closing = True
        transport = getattr(self.terminal, "transport", None)
        if transport is not None and not self.closed.called:
            transport.loseConnection()
        elif not self.closed.called:
            self.closed.callback(None)
        return self.closed

    def connectionLost(self, reason: Failure | None = None) -> None:
        hang_up = not self._closing
        self._closing = True
        if not self.closed.called:
            self.closed.callback(None)
        if hang_up:
            # The terminal went away, not by our doing: leave the chat.
            self.on_quit()


class TerminalServer(insults.ServerProtocol):
    """insults' terminal parser, drawing the input row once per read."""

    def __init__(self, ui: ChatTerminal) -> None:
        super().__init__(lambda: ui)  # type: ignore[no-untyped-call]
        self.ui = ui

    def dataReceived(self, data: bytes) -> None:
        with self.ui.batch():
            self.ui.start_of_read(data)
            try:
                super().dataReceived(data)  # type: ignore[no-untyped-call]
                if self.state == b"escaped":
                    # A read that ends in a lone ESC is the Esc key: a
                    # terminal writes a whole escape sequence at once.  Left
                    # waiting, insults would take the next key, however much
                    # later, as Alt and that key.
                    self.state = b"data"
                    self.ui.handle_ESCAPE()
            finally:
                self.ui.end_of_read()
