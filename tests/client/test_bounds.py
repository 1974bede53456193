"""
What a hostile or broken server, or a huge piped input, can make the client
hold or do stays bounded (review rev3cli C, M, E and R).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet.abstract import FileDescriptor
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol

from twisted_chat import tcpinfo
from twisted_chat.client import cells, terminal
from twisted_chat.client.flow import taken
from twisted_chat.client.pipe import PipeIO
from twisted_chat.client.render import Renderer, UserRow, plain
from twisted_chat.client.sanitize import clean, text_width
from twisted_chat.tcpinfo import buffered

from .helpers import NOW, TS, Keyboard, Session, session


def renderer(me: str | None = "eve") -> Renderer:
    return Renderer(lambda: me, now=lambda: NOW, localtime=time.gmtime)


# -- C: the user table ---------------------------------------------------------


def test_a_huge_nick_does_not_widen_every_row_of_the_user_table() -> None:
    wide = "W" * 100_000
    rows = [UserRow(wide, "lobby"), UserRow("eve", "lobby"), UserRow("bob", "paired")]
    lines = [plain(line) for line in renderer().users(rows)]
    assert lines[1].split() == ["NICK", "STATUS"]
    # The long nick is cut, visibly, to a real nick's 24 columns.
    assert lines[2].startswith("  " + "W" * 23 + "… ")
    assert lines[3].split() == ["eve", "(you)", "in", "the", "lobby"]
    assert all(text_width(line) < 70 for line in lines), [len(line) for line in lines]


def test_a_nick_cut_in_the_table_counts_columns_not_characters() -> None:
    lines = [plain(line) for line in renderer().users([UserRow("漢" * 30, "lobby")])]
    assert lines[2].startswith("  " + "漢" * 11 + "…  in the lobby")


def test_user_table_output_is_not_rows_times_the_longest_nick() -> None:
    s = session("eve", interactive=False)
    s.ready("eve")
    wide = "W" * 100_000
    lines = [f"USER {wide} lobby"] + [f"USER u{i} lobby" for i in range(300)] + ["USERS 301"]
    received = sum(len(line) + 2 for line in lines)
    s.receive(*lines)
    shown = sum(len(line) for line in s.screen.lines)
    assert shown < received, (shown, received)  # it was rows x 100,000: 30,000,000


def test_a_huge_prompt_is_fitted_from_its_end_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # PAIRED with a megabyte-long partner nick: the prompt is fitted on every
    # key; only the part that can be shown is cleaned.
    cleaned: list[int] = []

    def spy(text: str) -> str:
        cleaned.append(len(text))
        return clean(text)

    monkeypatch.setattr(cells, "clean", spy)
    prompt = "eve -> " + "é" * 500_000 + "> "
    shown = cells.fit_prompt(prompt, 60)
    assert shown == "…" + "é" * 48 + "> "
    assert max(cleaned) < 1000, cleaned
    # A prompt that fits is left whole.
    assert cells.fit_prompt("eve -> bob> ", 60) == "eve -> bob> "


# -- M: what the server sends is not held without bound ---------------------------


def test_the_server_is_not_read_while_stdout_cannot_take_more() -> None:
    s = session("eve", interactive=False)
    s.ready("eve")
    display = s.client.reading.hand("display")  # main registers it with stdout
    display.pauseProducing()  # stdout's buffer is full: | sleep, a pager
    assert s.transport.producerState == "paused"
    display.resumeProducing()
    assert s.transport.producerState == "producing"


def test_the_server_is_not_read_while_the_socket_cannot_take_more() -> None:
    # A server that sends PINGs and never reads the PONGs: once the socket's
    # buffer is full, the client stops reading (no more PONGs pile up).
    s = session("eve", interactive=False)
    s.ready("eve")
    socket = s.transport.producer
    assert socket is not None and s.transport.streaming
    s.receive("PING " + "x" * 1000)
    assert s.sent() == ["PONG " + "x" * 1000]
    socket.pauseProducing()  # what Twisted does when the buffer is over 64 KiB
    assert s.transport.producerState == "paused"
    # Both full: the server is read again only once both have room.
    display = s.client.reading.hand("display")
    display.pauseProducing()
    socket.resumeProducing()
    assert s.transport.producerState == "paused"
    display.resumeProducing()
    assert s.transport.producerState == "producing"


def test_joins_and_leaves_held_while_paired_are_kept_short() -> None:
    # A hostile server sends, while paired, leaves with a megabyte of words
    # each: 2,000 of them held whole would be 2 GB.
    s = session("eve", interactive=False)
    s.ready("eve", users=("bob",))
    s.receive("PAIRED bob")
    words = "w" * 1_000_000
    s.receive(f"LEFT {TS} carol quit {words}", f"JOINED {TS} {'n' * 1_000_000}")
    s.screen.take()
    s.receive("UNPAIRED bob left", "USER eve lobby", "USER bob lobby", "USERS 2")
    left, joined = (line for line in s.screen.take() if "carol" in line or "nnn" in line)
    assert left.startswith("[14:03] * carol left (quit: www") and left.endswith("w…")
    assert joined.startswith("[14:03] * nnn") and joined.endswith("n…")
    assert len(left) < 10_000 and len(joined) < 10_000


def test_lines_wait_while_the_socket_cannot_take_more() -> None:
    s = session("robot", interactive=False)
    s.ready("robot")
    socket = s.transport.producer
    socket.pauseProducing()
    s.type("backup finished")
    s.clock.advance(10)
    assert s.sent() == []
    socket.resumeProducing()  # drained
    assert s.sent() == ["MSG backup finished"]


def test_user_lines_without_users_are_not_kept_without_bound() -> None:
    s = session("eve", interactive=False)
    s.ready("eve")
    many = s.client.roster.USERS_MAX + 500
    s.client.dataReceived(b"".join(b"USER u%d lobby\r\n" % i for i in range(many)))
    assert len(s.client.roster._rows) == s.client.roster.USERS_MAX
    s.screen.take()
    s.receive(f"USERS {many}")
    shown = s.screen.lines
    assert shown[0] == f"* {many} people online:"
    assert shown[-1] == "  ... and 500 more, not shown"
    assert len(s.client.online_nicks()) == s.client.roster.USERS_MAX


def test_user_line_fields_are_kept_short() -> None:
    s = session("eve", interactive=False)
    s.ready("eve")
    s.receive(f"USER nnn {'s' * 300_000} {'a' * 200_000}")
    (row,) = s.client.roster._rows
    assert (row.nick, len(row.state), len(row.address or "")) == ("nnn", 100, 100)


def test_a_user_line_without_a_nick_is_counted_but_not_listed() -> None:
    # A hostile server's "nick" (a megabyte, a sentence) was a row of the
    # table, cut to 100 characters, though no command could address it; the
    # web page left it out. Both count it, among those not shown.
    s = session("eve", interactive=False)
    s.ready("eve")
    s.screen.take()
    s.receive("USER bob paired", "USER eve lobby", f"USER {'n' * 500_000} lobby",
              "USER Visit_evil.example! lobby", "USERS 4")
    assert s.screen.lines == [
        "* 4 people online:",
        "  NICK       STATUS",
        "  bob        in a private conversation",
        "  eve (you)  in the lobby",
        "  ... and 2 more, not shown",
    ]


def test_joined_nicks_known_for_tab_are_bounded_and_valid() -> None:
    s = session("eve", interactive=False)
    s.ready("eve")
    s.client.roster.USERS_MAX = 50  # type: ignore[misc]
    s.receive(*[f"JOINED {TS} u{i}" for i in range(80)], f"JOINED {TS} {'x' * 30}")
    assert len(s.client.online_nicks()) == 49  # 50 with eve
    assert f"u{49}" not in s.client.online_nicks()


def test_invitations_kept_are_bounded() -> None:
    s = session("eve", interactive=False)
    s.ready("eve")
    s.receive(*[f"INVITE u{i}" for i in range(300)])
    assert len(s.client.pairing.invites) == s.client.pairing.INVITES_MAX


def test_an_invitation_from_a_nick_no_server_allows_is_not_kept() -> None:
    # A hostile server's 100 invitations from megabyte "nicks" were kept
    # whole (100 MB), though /accept could never answer one of them.
    s = session("eve", interactive=False)
    s.ready("eve")
    s.receive(f"INVITE {'x' * 1_000_000}", "INVITE bad!nick", "INVITE carol")
    assert s.client.pairing.invites == ["carol"]


# -- E: a script's stdin is read only as fast as its lines go ---------------------


def piped(nick: str = "robot", watch: bool = True) -> tuple[Session, PipeIO, StringTransport]:
    """A script's session: its stdin and stdout are a PipeIO on a StringTransport."""
    s = session(nick, interactive=False, watch=watch)
    pipe = PipeIO(s.client.user_line, s.client.input_ended)
    stdio = StringTransport()
    pipe.makeConnection(stdio)
    s.client.input = pipe
    return s, pipe, stdio


def test_a_scripts_input_is_not_read_while_the_queue_is_full() -> None:
    s, pipe, stdio = piped(watch=False)  # the fake server echoes none of the lines
    s.ready("robot")
    count = 3000
    pipe.dataReceived(b"".join(b"log line %d\n" % i for i in range(count)))  # one big read
    queue_max = s.client.QUEUE_MAX
    assert stdio.producerState == "paused"
    assert len(s.client.outbox) == queue_max  # the rest waits, unread, in the pipe
    sent: list[str] = s.sent()
    most = 0
    for _ in range(1000):  # 3000 lines at 5 a second: 600 s
        s.clock.advance(1)
        sent += s.sent()
        most = max(most, len(s.client.outbox))
        if len(sent) == count:
            break
    assert most <= queue_max
    assert stdio.producerState == "producing"
    assert sent == [f"MSG log line {i}" for i in range(count)]  # in order, none lost
    pipe.readConnectionLost()
    assert s.sent() == ["BYE"]


def test_reading_resumes_once_half_the_queue_has_gone() -> None:
    s, pipe, stdio = piped()
    s.ready("robot")
    queue_max = s.client.QUEUE_MAX
    pipe.dataReceived(b"x\n" * (queue_max + 20))  # (the first few go at once)
    assert stdio.producerState == "paused"
    waits = []
    for _ in range(1000):
        s.clock.advance(1)
        waits.append(len(s.client.outbox))
        if stdio.producerState == "producing":
            break
    assert stdio.producerState == "producing"
    assert min(waits) >= queue_max // 2 - 5  # not drained dry before reading again


def test_lines_pasted_over_the_bound_are_not_sent_and_said_so() -> None:
    # On a terminal, stdin is not paused (Ctrl-C must get through): lines past
    # the bound are dropped, with one error line, and counted at the end.
    s = session("carol", watch=False)  # the fake server echoes none of the lines
    s.ready("carol")
    queue_max = s.client.QUEUE_MAX
    total = queue_max + 20
    s.type(*[f"line {i}" for i in range(total)])
    sent = s.sent()  # the pacer's burst went at once
    assert len(s.client.outbox) == queue_max
    kept = len(sent) + queue_max
    said = s.screen.take()
    assert said == [
        f"! {queue_max} lines are waiting to be sent: what you type or paste now is not "
        "sent until they have gone."
    ]
    for _ in range(1000):
        s.clock.advance(1)
        sent += s.sent()
        if not s.client.outbox:
            break
    assert sent == [f"MSG line {i}" for i in range(kept)]
    assert s.screen.take() == [
        f"* {total - kept} lines typed or pasted while {queue_max} waited were not sent."
    ]


def test_ctrl_c_s_count_of_lines_not_sent_leaves_out_those_refused_over_the_bound() -> None:
    """docs/client.md, "Scripts and pipes": the end counts the lines that
    waited; those refused over the bound were said at once (the "!" line)
    and are not counted again."""
    s = session("carol", watch=False)
    s.ready("carol")
    queue_max = s.client.QUEUE_MAX
    s.type(*[f"line {i}" for i in range(queue_max + 20)])
    assert s.client.outbox.refused > 0
    s.sent()
    s.client.interrupt()
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    said = s.lose().message or ""
    assert said.endswith(f" {queue_max} lines still waiting to be sent were not sent.")
    assert "typed or pasted" not in said


# -- rev5cli G3: a server that reads slowly, but reads, is not given up ------------


class AckedSocket(socket.socket):
    """
    A TCP socket, never connected, whose C{TCP_INFO} says the peer has
    acknowledged C{acked} bytes: what Linux tells of a real connection.  The
    server reading N bytes is C{acked += N}; what the client writes does not
    change it (and Twisted's buffer, above the kernel's, need not shrink).
    """

    acked = 0

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> Any:
        if (level, option) != (socket.IPPROTO_TCP, socket.TCP_INFO):
            return super().getsockopt(level, option, buflen)
        assert tcpinfo.ACKED_AT is not None
        info = bytes(tcpinfo.ACKED_AT) + struct.pack("=Q", self.acked)
        return info.ljust(max(buflen, 256), b"\0")[:buflen]


@pytest.fixture
def acked(monkeypatch: pytest.MonkeyPatch) -> Iterator[AckedSocket]:
    """The socket under the sessions' transports (their getHandle()): see L{stalled_script}."""
    if tcpinfo.ACKED_AT is None:
        pytest.skip("the kernel tells the bytes acknowledged on Linux only")
    monkeypatch.setattr(tcpinfo, "_acked_known", None)  # asked of this socket
    with AckedSocket() as sock:
        yield sock


def socket_holding(transport: Any, size: int) -> None:
    """
    Make C{transport} show what a TCP connection's buffer shows
    (Twisted's FileDescriptor, as tcpinfo.buffered reads it): C{size} bytes the
    kernel has not taken.  Where the kernel cannot tell what its peer
    acknowledged, the kernel taking N bytes is C{offset += N}.
    """
    transport.dataBuffer, transport.offset, transport._tempDataLen = b"x" * size, 0, 0


def stalled_script(s: Session, sock: AckedSocket | None) -> None:
    """
    A script whose lines wait on a full socket: C{sock} under the transport
    (C{None}: no socket, only Twisted's buffer, holding 70,000 bytes).
    """
    if sock is not None:
        s.transport.getHandle = lambda: sock  # type: ignore[attr-defined]
    s.ready("robot")
    for i in range(30):
        s.type(f"report line {i}")  # a burst of 10 with the NICK: 9 go, 21 wait
    assert len(s.sent()) == 9
    socket_holding(s.transport, 70_000)  # Twisted's: it stays full (the kernel's is below)
    s.transport.producer.pauseProducing()  # over 64 KiB: Twisted pauses us
    s.client.input_ended()


def test_what_the_socket_holds_is_measured_through_tls_too() -> None:
    tcp = FileDescriptor(reactor=MemoryReactorClock())
    tcp.connected = True
    tcp.write(b"x" * 1000)
    assert buffered(tcp) == 1000
    tls = TLSMemoryBIOProtocol(None, Protocol())
    tls.transport = tcp  # what makeConnection sets: the encrypted bytes wait below
    assert buffered(tls) == 1000
    assert buffered(StringTransport()) is None  # cannot tell
    assert buffered(None) is None


def test_what_the_server_took_is_asked_of_the_kernel_through_tls_too(
    acked: AckedSocket,
) -> None:
    acked.acked = 5000
    tcp: Any = StringTransport()
    tcp.getHandle = lambda: acked
    assert taken(tcp) == 5000
    tls = TLSMemoryBIOProtocol(None, Protocol())
    tls.transport = tcp  # what makeConnection sets, with the OpenSSL connection:
    tls._tlsConnection = SSL.Connection(SSL.Context(SSL.TLS_METHOD))  # its getHandle()
    assert taken(tls) == 5000
    with socket.socket(socket.AF_UNIX) as unix:
        tcp.getHandle = lambda: unix
        assert taken(tcp) is None  # not TCP: the kernel tells nothing
    socket_holding(tcp, 300)
    assert taken(tcp) == -300  # what Twisted holds, counted down
    assert taken(StringTransport()) is None


def test_a_server_that_reads_slowly_but_steadily_is_not_given_up(acked: AckedSocket) -> None:
    # Twisted says the socket has room again only once its buffer is empty;
    # a server that takes 1000 bytes every 5 s never lets it empty (the
    # kernel's buffer below takes them), but it reads: it used to be cut
    # after --timeout all the same (review rev5cli G3, and of eecdc09).
    s = session("robot", interactive=False)
    stalled_script(s, acked)
    for _ in range(20):  # 100 s: over 6 times --timeout
        s.clock.advance(5)
        acked.acked += 1000
        assert not s.transport.disconnecting
    assert s.sent() == []  # still held while the buffer is full
    s.transport.producer.resumeProducing()  # it drained at last
    sent = []
    for _ in range(10):
        s.clock.advance(1)
        sent += s.sent()
    assert sent == [f"MSG report line {i}" for i in range(9, 30)] + ["BYE"]


def test_what_the_client_writes_while_lines_wait_does_not_hide_the_servers_reads(
    acked: AckedSocket,
) -> None:
    # Answers to the server's PINGs (or a password) add to what the socket
    # holds as fast as a slow server takes it: the bytes it acknowledged
    # still grow, and the connection is kept.
    s = session("robot", interactive=False)
    stalled_script(s, acked)
    for i in range(20):  # 100 s
        s.clock.advance(5)
        s.receive(f"PING {i:0100d}")  # read with the last bytes before the pause
        assert s.sent() == [f"PONG {i:0100d}"]
        acked.acked += 50  # the server took less than the client wrote
        assert not s.transport.disconnecting


def test_a_server_that_takes_nothing_is_given_up_after_the_timeout(acked: AckedSocket) -> None:
    s = session("robot", interactive=False)
    stalled_script(s, acked)
    for i in range(14):
        s.clock.advance(1)
        s.receive(f"PING {i}")  # the client writes: the server still takes nothing
    assert not s.transport.disconnecting
    s.clock.advance(1)  # --timeout, 15 s, and the server took nothing
    assert s.transport.disconnecting
    assert s.lose().message == (
        "chat.test:7000 did not read what the client sent for 15 seconds. "
        "None of the 9 messages sent was confirmed by the server: 4 earlier ones, then "
        "“report line 4”, “report line 5”, “report line 6”, "
        "“report line 7”, “report line 8”. "
        "21 lines still waiting to be sent were not sent."
    )


@pytest.mark.parametrize("kernel", [True, False], ids=["acked", "twisted-buffer"])
def test_the_timeout_counts_from_the_last_bytes_the_server_took(
    kernel: bool, request: pytest.FixtureRequest
) -> None:
    # Where the kernel cannot tell what its peer acknowledged (not Linux),
    # Twisted's buffer shrinking is the sign.
    sock: AckedSocket | None = request.getfixturevalue("acked") if kernel else None
    s = session("robot", interactive=False)
    stalled_script(s, sock)
    for _ in range(3):
        s.clock.advance(1)
    if sock is not None:
        sock.acked += 100  # then nothing more
    else:
        transport: Any = s.transport
        transport.offset += 100
    for _ in range(15):  # seen at 4 s: given up 15 s later, not at 15 s
        s.clock.advance(1)
        assert not s.transport.disconnecting
    s.clock.advance(1)
    assert s.transport.disconnecting
    assert s.lose().code == 1


# -- R: a TAB in pasted text is text ---------------------------------------------


def test_a_tab_inside_pasted_text_is_not_the_completion_key() -> None:
    # A terminal without bracketed paste: the paste comes in one read.
    k = Keyboard(width=60, nicks=("bobby",))
    k.keys("name\tscore\rbo\t12\r")
    assert k.typed == ["name\tscore", "bo\t12"]


def test_a_tab_in_a_bracketed_paste_is_text_even_at_its_end() -> None:
    k = Keyboard(width=60, nicks=("bobby",))
    assert terminal.PASTE_MODE_ON.encode() in k.output.value()  # asked for at start
    k.keys("\x1b[200~")
    k.keys("bo\t")  # a paste may come in several reads
    k.keys("\x1b[201~")
    assert k.ui.lineBuffer == list("bo\t")
    assert k.rows()[0] == "> bo"  # the TAB is shown as a space
    k.keys("\r")
    assert k.typed == ["bo\t"]
    k.keys("bo\t")  # typed again, after the paste: the Tab key
    assert "".join(k.ui.lineBuffer) == "bobby: "


def test_a_typed_tab_still_completes() -> None:
    k = Keyboard(width=60, nicks=("bobby",))
    k.keys("bo")
    k.keys("\t")
    assert "".join(k.ui.lineBuffer) == "bobby: "
    k.keys("\x15")  # Ctrl-U
    k.keys("bo\t")  # typed fast, or while the client was busy: Tab comes last
    assert "".join(k.ui.lineBuffer) == "bobby: "


def test_bracketed_paste_mode_is_turned_off_at_the_end() -> None:
    k = Keyboard(width=60)
    k.output.clear()
    k.ui.close()
    assert k.output.value().startswith(terminal.PASTE_MODE_OFF.encode())


# -- rev4cli F1: the goodbye's answer is read even while stdout is full ------------


def test_the_answer_to_the_goodbye_is_read_while_stdout_is_full() -> None:
    # A script piped into a pager or a slow reader: stdout is full when its
    # input ends.  The server answers at once; the client must read it, not
    # give up on the goodbye after 5 s and blame the server (review rev4cli F1).
    s = session("robot", interactive=False)
    s.ready("robot")
    s.type("hi")
    display = s.client.reading.hand("display")  # main registers it with stdout
    display.pauseProducing()
    assert s.transport.producerState == "paused"
    s.client.input_ended()
    assert s.sent() == ["MSG hi", "BYE"]
    assert s.transport.producerState == "producing"  # read on, stdout full or not
    s.clock.advance(1)
    s.receive(f"MSG {TS} robot * hi", "BYE quit")
    outcome = s.lose()
    assert outcome.code == 0, outcome
    assert outcome.message is None
    # stdout filling again later does not stop the reading either.
    display.resumeProducing()
    display.pauseProducing()
    assert s.transport.producerState == "producing"


def test_what_is_read_after_the_goodbye_while_stdout_is_full_is_bounded() -> None:
    # A server that keeps sending after the client's BYE cannot fill memory:
    # past QUIT_READ_MAX bytes, stdout holds the reading again, and the
    # goodbye's 5 s end it (exit 1, no answer).
    s = session("robot", interactive=False)
    s.ready("robot")
    s.client.reading.hand("display").pauseProducing()
    s.client.quit()
    assert s.sent() == ["BYE"]
    assert s.transport.producerState == "producing"
    chunk = b"HELP " + b"x" * (1 << 20) + b"\r\n"
    for _ in range(s.client.QUIT_READ_MAX // len(chunk)):
        s.client.dataReceived(chunk)
    assert s.transport.producerState == "producing"
    s.client.dataReceived(chunk)
    assert s.transport.producerState == "paused"
    s.clock.advance(s.client.QUIT_TIMEOUT)
    outcome = s.lose()
    assert outcome.code == 1
    assert outcome.message == "No answer from chat.test:7000 to the goodbye within 5 seconds."


# -- rev4cli F2: lines do not wait for ever on a server that stopped reading --------


def test_a_finite_script_ends_when_the_server_stops_reading() -> None:
    s = session("robot", interactive=False)
    s.ready("robot")
    for i in range(30):
        s.type(f"report line {i}")  # a burst of 10 with the NICK: 9 go, 21 wait
    assert len(s.sent()) == 9
    # Over 64 KiB wait in the socket's buffer: the server stopped reading.
    s.transport.producer.pauseProducing()
    s.client.input_ended()
    s.clock.advance(s.client.greeting_timeout - 0.5)  # --timeout, 15 s here
    assert s.sent() == [] and not s.transport.disconnecting
    s.clock.advance(1)
    assert s.transport.disconnecting  # given up, not waiting for ever
    outcome = s.lose()
    assert outcome.code == 1
    assert outcome.message == (
        "chat.test:7000 did not read what the client sent for 15 seconds. "
        "None of the 9 messages sent was confirmed by the server: 4 earlier ones, then "
        "“report line 4”, “report line 5”, “report line 6”, "
        "“report line 7”, “report line 8”. "
        "21 lines still waiting to be sent were not sent."
    )


def test_a_server_that_reads_slowly_is_not_given_up() -> None:
    # Each time the socket's buffer drains, the server gets --timeout again.
    s = session("robot", interactive=False)
    s.ready("robot")
    for i in range(60):
        s.type(f"report line {i}")
    assert len(s.sent()) == 9
    socket = s.transport.producer
    for _ in range(4):
        socket.pauseProducing()
        s.clock.advance(s.client.greeting_timeout - 1)
        socket.resumeProducing()  # drained: 10 more go at once
        assert len(s.sent()) == 10 and not s.transport.disconnecting
    s.client.input_ended()
    for _ in range(10):
        s.clock.advance(1)
    assert s.sent()[-2:] == ["MSG report line 59", "BYE"]


def test_one_line_pasted_over_the_bound_is_said_as_one() -> None:
    # The same count as above, in the singular when it is one line.
    probe = session("carol", watch=False)
    probe.ready("carol")
    probe.type(*[f"line {i}" for i in range(probe.client.QUEUE_MAX + 20)])
    burst = len(probe.sent())  # what the pacer sends at once
    s = session("carol", watch=False)
    s.ready("carol")
    queue_max = s.client.QUEUE_MAX
    s.type(*[f"line {i}" for i in range(burst + queue_max + 1)])
    s.screen.take()
    for _ in range(1000):
        s.clock.advance(1)
        s.sent()
        if not s.client.outbox:
            break
    assert s.screen.take() == [
        f"* 1 line typed or pasted while {queue_max} waited was not sent."
    ]
