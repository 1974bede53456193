"""Fakes for the client's unit tests: a screen, a connected client, a terminal."""

from __future__ import annotations

import calendar
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted.conch.insults import helper, insults
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_chat.client.liveness import Liveness
from twisted_chat.client.protocol import ChatClient
from twisted_chat.client.render import Line, plain
from twisted_chat.client.session import Outcome
from twisted_chat.client.terminal import ChatTerminal, TerminalServer

# 2026-11-22 14:03:00 UTC; tests render times in UTC (localtime=time.gmtime).
NOW = float(calendar.timegm((2026, 11, 22, 14, 3, 0)))
TS = "2026-11-22T14:03:05.123Z"


class Screen:
    """A Display that remembers what it was asked to show."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.raw: list[Line] = []
        self.prompt: str | None = None
        self.secret_prompt: str | None = None
        self.bells = 0
        self.forgotten: list[str] = []
        self.typing = ""  # a line half-typed (not entered), for drop_typing
        self.set_aside_lines: list[str] = []  # what set_aside took off the line

    def show(self, line: Line) -> None:
        self.raw.append(line)
        self.lines.append(plain(line))

    def set_prompt(self, prompt: str) -> None:
        self.prompt = prompt

    def ask_secret(self, prompt: str) -> None:
        self.secret_prompt = prompt

    def end_secret(self) -> None:
        self.secret_prompt = None

    def bell(self) -> None:
        self.bells += 1

    def forget(self, lines: Sequence[str]) -> None:
        self.forgotten.extend(lines)

    def drop_typing(self) -> bool:
        had, self.typing = bool(self.typing.strip()), ""
        return had

    def set_aside(self) -> list[str]:
        lines, self.typing = [self.typing] if self.typing.strip() else [], ""
        self.set_aside_lines.extend(lines)
        return lines

    def text(self) -> str:
        return "\n".join(self.lines)

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


@dataclass
class Session:
    """A L{ChatClient} connected to a L{StringTransport}."""

    client: ChatClient
    transport: StringTransport
    screen: Screen
    clock: Clock
    outcomes: list[Outcome] = field(default_factory=list)

    def receive(self, *lines: str) -> None:
        """Lines from the server (CRLF added)."""
        for line in lines:
            self.client.dataReceived(line.encode("utf-8") + b"\r\n")

    def sent(self) -> list[str]:
        """The lines the client wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        assert data == b"" or data.endswith(b"\r\n"), data
        return [line.decode("utf-8") for line in data.split(b"\r\n")[:-1]]

    def type(self, *lines: str) -> None:
        for line in lines:
            self.client.user_line(line)

    def ready(
        self, nick: str = "alice", users: tuple[str, ...] = (), password: str | None = None
    ) -> None:
        """Run the handshake up to the user list; with C{password}, the
        server asks for it (the nick has an account), typed or a script's."""
        self.receive("HELLO chat/1 test-server", "NICK")
        if self.client.option_nick is None:
            self.type(nick)
        assert self.sent() == [f"NICK {nick}"]
        if password is not None:
            self.receive(f"PASS {nick}")
            if self.client.interactive:
                self.client.secret_line(password)
            assert self.sent() == [f"PASS {password}"]
        self.receive(f"READY {nick}")
        for user in (nick, *users):
            self.receive(f"USER {user} lobby")
        self.receive(f"USERS {1 + len(users)}")
        self.screen.take()

    def lose(self, reason: Failure | None = None) -> Outcome:
        self.client.connectionLost(reason or Failure(ConnectionDone()))
        assert self.outcomes, "finished did not fire"
        return self.outcomes[-1]


def session(
    nick: str | None = "alice",
    *,
    interactive: bool = True,
    connect: bool = True,
    environ: dict[str, str] | None = None,
    peer: str = "127.0.0.1",
    watch: bool = True,
) -> Session:
    """
    A client on a fake connection.  C{watch=False}: for a test whose fake
    server sends nothing back for many seconds (no copies of the lines sent)
    where that is not the subject: the client does not PING it
    (L{twisted_chat.client.liveness}, tested in test_liveness.py).
    """
    screen = Screen()
    clock = Clock()
    client = ChatClient(
        screen,
        nick=nick,
        interactive=interactive,
        server="chat.test:7000",
        clock=clock,
        now=lambda: NOW,
        localtime=time.gmtime,
        environ=environ or {},
        answer_wait=Liveness.ANSWER_WAIT if watch else None,
    )
    address = IPv6Address("TCP", peer, 7000) if ":" in peer else IPv4Address("TCP", peer, 7000)
    transport = StringTransport(peerAddress=address)
    result = Session(client, transport, screen, clock)
    client.finished.addCallback(result.outcomes.append)
    if connect:
        client.makeConnection(transport)
    return result


class Keyboard:
    """
    A L{ChatTerminal} behind a real insults L{insults.ServerProtocol}, whose
    output drives conch's in-memory terminal emulator, so tests can look at
    the screen a person would see (ASCII only: the emulator is byte-based).
    """

    def __init__(
        self, width: int = 60, height: int = 10, nicks: tuple[str, ...] = (), bell: bool = True
    ) -> None:
        self.typed: list[str] = []
        self.secrets: list[str] = []
        self.quits = 0
        self.eofs = 0
        self.ui = ChatTerminal(
            self.typed.append,
            self._quit,
            colour=False,
            on_secret=self.secrets.append,
            nicks=lambda: nicks,
            bell=bell,
            on_eof=self._eof,
        )
        self.ui.width = width
        self.screen = helper.TerminalBuffer()
        self.screen.width, self.screen.height = width, height
        self.emulator = insults.ClientProtocol(lambda: self.screen)
        self.emulator.makeConnection(StringTransport())
        self.output = _Tee(self.emulator)
        self.server = TerminalServer(self.ui)
        self.server.makeConnection(self.output)

    def _quit(self) -> None:
        self.quits += 1

    def _eof(self) -> None:
        self.eofs += 1

    def keys(self, data: bytes | str) -> None:
        self.server.dataReceived(data.encode("utf-8") if isinstance(data, str) else data)

    def rows(self) -> list[str]:
        return [row.rstrip() for row in bytes(self.screen).decode("latin-1").split("\n")]

    def cursor(self) -> tuple[int, int]:
        return self.screen.x, self.screen.y

    def input_row(self) -> str:
        return self.rows()[self.cursor()[1]]

    def attach(self, client: ChatClient) -> None:
        """Type into C{client} (as main.py wires it), which shows on this screen."""
        self.ui.on_line = client.user_line
        self.ui.on_secret = client.secret_line
        self.ui.paste_time = client.paste_time
        client.display = self.ui
        self.ui.set_prompt(client.prompt())


class _Tee(StringTransport):
    """Records the bytes written and passes them to the terminal emulator."""

    def __init__(self, emulator: insults.ClientProtocol) -> None:
        super().__init__()
        self.emulator = emulator

    def write(self, data: bytes) -> None:
        super().write(data)
        # conch's emulator cannot parse the bracketed paste mode's switches
        # (CSI ? 2004 h/l): a real terminal can.
        for mode in (b"\x1b[?2004h", b"\x1b[?2004l"):
            data = data.replace(mode, b"")
        self.emulator.dataReceived(data)
