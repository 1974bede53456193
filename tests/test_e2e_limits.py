"""
Issue 5 on real sockets: the send queue limit with a peer that does not
read, the connection limits, flood control, idle peers and the NICK-state
time limit.
"""

from __future__ import annotations

import re
import socket
import threading
import time

import pytest

from tests.serverproc import LOOPBACK, LineClient, free_port, wait_for_port

pytestmark = pytest.mark.e2e

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
MIB = 1024
# How long a user with a nick is seen to stay past --nick-timeout (1 s).
STAYS_WINDOW = 1.0


def hello(client: LineClient) -> LineClient:
    assert client.readline().startswith("HELLO chat/1 ")
    assert client.readline() == "NICK"
    return client


def registered(connect, port: int, nick: str) -> LineClient:
    client = hello(connect(port))
    client.send(f"NICK {nick}")
    client.expect(f"READY {nick}")
    client.expect("USERS ")
    return client


# -- slow readers ----------------------------------------------------------

# The send queue limit under test, and the most a stuck reader may cost the
# server: its send queue, plus slack for the interpreter's own allocations.
SENDQ = 200_000
RSS_GROWTH_BOUND_KIB = 6 * MIB


def small_buffer_client(server, connect, nick: str, rcvbuf: int = 2048) -> LineClient:
    """A registered client whose socket's receive buffer is C{rcvbuf}."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect((LOOPBACK, server.port))
    client = hello(connect(server.port, sock=sock))
    client.send(f"NICK {nick}")
    client.expect("USERS ")
    return client


def stuck_reader_and_talker(server, connect) -> tuple[LineClient, LineClient]:
    """A reader with a tiny receive buffer that never reads once registered,
    and a talker."""
    reader = small_buffer_client(server, connect, "reader")
    return reader, registered(connect, server.port, "talker")


def test_a_reader_that_stops_reading_is_dropped_for_sendq(chat_server, connect):
    # Accounts off: their dummy hash, made at start, is one scrypt (16 MiB
    # for a moment), which the peak RSS below would count.
    server = chat_server("--flood-rate", "0", "--sendq", str(SENDQ), "--accounts", "off")
    reader, talker = stuck_reader_and_talker(server, connect)
    rss_before = server.rss_kib()

    # Lines near --max-line; the talker reads its own copies as it goes (it
    # is a reader too).  The stuck one's socket buffer is fixed (--sndbuf),
    # and what the kernel holds for it counts towards --sendq (issue 14.2):
    # it goes after about SENDQ bytes, where the kernel's autotuning used to
    # take 2.3 MB before the server held anything (dropped after ~2.6 MB).
    text = "z" * 4000
    dropped_at = None
    deadline = time.monotonic() + 60
    for i in range(2000):
        assert time.monotonic() < deadline, "the talk took too long"
        talker.send(f"MSG {i} {text}")
        while True:
            line = talker.readline()
            if line.startswith("LEFT "):
                assert re.fullmatch(rf"LEFT {TS} reader sendq", line), line
                dropped_at = i
            elif re.fullmatch(rf"MSG {TS} talker \* {i} z+", line):
                break
            else:
                raise AssertionError(f"unexpected line {line[:80]!r}")
        if dropped_at is not None:
            break
    assert dropped_at is not None, "the reader was never dropped"
    sent = (dropped_at + 1) * (len(text) + 40)
    assert sent < 2 * SENDQ, f"dropped only after {sent} bytes"

    # The talker is still served, and alone now.
    for i in range(5):
        talker.send(f"MSG after {i}")
        assert re.fullmatch(rf"MSG {TS} talker \* after {i}", talker.readline())
    talker.send("USERS")
    assert [talker.readline(), talker.readline()] == ["USER talker lobby", "USERS 1"]
    assert reader.closed(timeout=10)
    peak = server.peak_rss_kib()
    growth = peak - rss_before
    print(f"sendq: dropped after {dropped_at + 1} lines (~{sent} bytes); RSS before "
          f"{rss_before} KiB, peak {peak} KiB, now {server.rss_kib()} KiB")
    assert growth < RSS_GROWTH_BOUND_KIB, f"RSS grew by {growth} KiB"
    assert server.problems() == []


def test_a_reader_whose_bytes_sit_in_the_kernel_is_dropped_when_they_do_not_drain(
    chat_server, connect
):
    """
    Some 40 KB for a reader that never reads: far below --sendq, and all of
    it fits in the kernel's send buffer, so Twisted holds none of it; only
    the kernel's count (SIOCOUTQ) shows it is held.  Nothing drains for
    --sendq-timeout: the reader is dropped.
    """
    server = chat_server("--flood-rate", "0", "--sendq-timeout", "1", "--sndbuf", "65536")
    reader, talker = stuck_reader_and_talker(server, connect)
    for i in range(20):
        talker.send(f"MSG {i} " + "w" * 2000)
        talker.expect(lambda line, i=i: f" talker * {i} w" in line)
    stalled_at = time.monotonic()
    left = talker.expect(lambda line: line.startswith("LEFT "), timeout=10)
    waited = time.monotonic() - stalled_at
    assert re.fullmatch(rf"LEFT {TS} reader sendq", left), left
    assert waited < 5, f"dropped only after {waited:.1f} s"
    assert "reader dropped: output not drained for 1 seconds" in server.log()
    assert reader.closed(timeout=10)
    talker.send("PING still")
    talker.expect("PONG still")
    assert server.problems() == []


def test_a_reader_that_falls_behind_but_reads_is_never_dropped_for_a_stall(
    chat_server, connect
):
    """
    The kernel holds bytes for the reader the whole time (it reads one line
    for every two sent), for three times --sendq-timeout; but its peer takes
    some between every two looks of the drain watch (on the direct path the
    watch reads the kernel's count of acknowledged bytes), so it stays.
    """
    server = chat_server("--flood-rate", "0", "--sendq-timeout", "1", "--sndbuf", "65536")
    reader, talker = stuck_reader_and_talker(server, connect)
    reader.expect("JOINED ")
    text = "v" * 1000
    sent = 0
    for i in range(30):  # about 3 s
        for _ in range(2):
            talker.send(f"MSG {sent} {text}")
            talker.expect(lambda line, n=sent: f" talker * {n} v" in line)
            sent += 1
        time.sleep(0.1)
        assert re.fullmatch(rf"MSG {TS} talker \* {i} v+", reader.readline())
    for i in range(30, sent):  # it catches up: nothing lost
        assert re.fullmatch(rf"MSG {TS} talker \* {i} v+", reader.readline())
    talker.send("USERS")
    assert talker.expect(lambda line: line.startswith("USERS ")) == "USERS 2"
    assert "output not drained" not in server.log()
    assert server.problems() == []


def unix_reader_and_talker(tmp_path, chat_server, connect) -> tuple[object, LineClient, LineClient]:
    """A server on a UNIX socket and a TCP port, with --sendq-timeout 1: a
    reader registered on the socket, a talker on TCP."""
    path = tmp_path / "chat.sock"
    tcp_port = free_port()
    server = chat_server("--flood-rate", "0", "--sendq-timeout", "1", "--sndbuf", "65536",
                         "--port", f"tcp:{tcp_port}:interface={LOOPBACK}",
                         endpoint=f"unix:{path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    reader = hello(connect(0, sock=sock))
    reader.send("NICK reader")
    reader.expect("USERS ")
    wait_for_port(tcp_port)
    return server, reader, registered(connect, tcp_port, "talker")


def test_a_unix_socket_reader_that_stops_reading_is_dropped_after_sendq_timeout(
    tmp_path, chat_server, connect
):
    """
    On a UNIX socket there is no acknowledged count (TCP_INFO): what the
    peer took is what was written less what Twisted and the kernel hold.  A
    reader that stops reading while a line keeps coming now and then (less
    than Twisted's 64 KiB buffer in all: Twisted never pauses the queue) is
    dropped after --sendq-timeout, as on TCP.  Before, each line written
    into Twisted's buffer counted as taken, and it stayed as long as lines
    came.
    """
    server, reader, talker = unix_reader_and_talker(tmp_path, chat_server, connect)
    for i in range(20):  # 40 kB: more than the kernel holds for it
        talker.send(f"MSG {i} " + "w" * 2000)
        talker.expect(lambda line, i=i: f" talker * {i} w" in line)
    stalled_at = time.monotonic()
    left = None
    for i in range(40):  # a line each 0.25 s, 20 kB in all
        talker.send(f"MSG trickle {i} " + "t" * 500)
        line = talker.expect(lambda line, i=i: f" talker * trickle {i} " in line
                             or line.startswith("LEFT "))
        if line.startswith("LEFT "):
            left = line
            break
        time.sleep(0.25)
    waited = time.monotonic() - stalled_at
    assert left is not None, "still there after 10 s of lines it did not read"
    assert re.fullmatch(rf"LEFT {TS} reader sendq", left), left
    assert waited < 5, f"dropped only after {waited:.1f} s"
    assert "reader dropped: output not drained for 1 seconds" in server.log()
    assert reader.closed(timeout=10)
    assert server.problems() == []


def test_a_slow_unix_socket_reader_is_kept_while_it_reads(tmp_path, chat_server, connect):
    """
    400 kB for a reader on a UNIX socket, far more than the kernel holds:
    Twisted buffers most of it and pauses the queue.  The reader takes about
    80 kB a second, so it holds bytes for five times --sendq-timeout, but it
    takes some between every two looks of the drain watch (the kernel's
    queue shrinks as it reads, though Twisted's paused estimate does not):
    it stays, and gets every line.
    """
    server, reader, talker = unix_reader_and_talker(tmp_path, chat_server, connect)
    count = 200
    for i in range(count):
        talker.send(f"MSG {i} " + "v" * 2000)
        talker.expect(lambda line, i=i: f" talker * {i} v" in line)
    got = b""
    deadline = time.monotonic() + 30
    while got.count(b" talker * ") < count:
        assert time.monotonic() < deadline, f"only {got.count(b' talker * ')} lines"
        chunk = reader.sock.recv(8192)
        assert chunk, "closed by the server"
        got += chunk
        time.sleep(0.1)
    assert b"LEFT " not in got
    lines = [line for line in got.split(b"\r\n") if b" talker * " in line]
    assert [int(line.split()[4]) for line in lines] == list(range(count))
    talker.send("USERS")
    assert talker.expect(lambda line: line.startswith("USERS ")) == "USERS 2"
    assert "output not drained" not in server.log()
    assert server.problems() == []


# -- connection limits -----------------------------------------------------


def assert_refused(client: LineClient) -> None:
    """Over a limit: exactly two lines, no HELLO, then the close."""
    lines = client.rest(timeout=5)
    assert len(lines) == 2, lines
    assert lines[0].startswith("ERROR server-full ") and len(lines[0]) > len("ERROR server-full ")
    assert lines[1] == "BYE full"


def test_max_clients(chat_server, connect):
    # No start-up probe: it would be a connection of its own.
    server = chat_server("--max-clients", "2", probe=False)
    first = hello(connect(server.port))
    second = registered(connect, server.port, "second")  # with or without a nick
    assert_refused(connect(server.port))
    # The first leaves; its place is free for the next one.
    first.send("BYE")
    assert first.rest() == ["BYE quit"]
    third = hello(connect(server.port))
    assert_refused(connect(server.port))
    third.send("NICK third")
    third.expect("USERS 2")
    assert re.fullmatch(rf"JOINED {TS} third", second.readline())
    assert server.problems() == []


def from_address(port: int, source: str) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect((LOOPBACK, port))
    return sock


def test_max_per_ip(chat_server, connect):
    server = chat_server("--max-per-ip", "2", probe=False, exempt=())
    one = hello(connect(server.port))
    two = hello(connect(server.port))
    assert_refused(connect(server.port))
    # Another address is counted on its own (127.0.0.0/8 is all loopback).
    other = hello(connect(server.port, sock=from_address(server.port, "127.0.0.2")))
    other.send("NICK other")
    other.expect("USERS 1")
    # One from 127.0.0.1 goes; a new one is accepted, and the limit holds again.
    two.send("BYE")
    assert two.rest() == ["BYE quit"]
    three = hello(connect(server.port))
    assert_refused(connect(server.port))
    # An abrupt close frees the place too, once the server has seen it.
    one.close()
    deadline = time.monotonic() + 5
    while True:
        client = connect(server.port)
        first = client.readline()
        if first.startswith("HELLO"):
            break
        assert first.startswith("ERROR server-full"), first
        assert time.monotonic() < deadline, "the place was never freed"
        time.sleep(0.05)
    three.send("NICK three")
    three.expect("USERS 2")
    assert server.problems() == []


def test_a_proxy_protocol_header_does_not_name_the_address_the_limits_count(chat_server, connect):
    """docs/cluster.md, "Running three nodes", the paragraph "No PROXY
    protocol": --port takes Twisted's haproxy: endpoint and it strips
    HAProxy's header, but the server counts (and logs) the address of the
    connection at its accept: the proxy's.  So behind a TCP proxy every user
    is one address, whatever the header says; the doc tells operators to
    --exempt the proxy instead."""
    port = free_port()
    server = chat_server("--max-per-ip", "2", port=port, probe=False, exempt=(),
                         endpoint=f"haproxy:tcp:{port}:interface={LOOPBACK}")

    def behind_proxy(n: int) -> LineClient:
        client = connect(port)
        client.send(f"PROXY TCP4 203.0.113.{n} {LOOPBACK} 40000 {port}")
        return client

    first = hello(behind_proxy(1))
    hello(behind_proxy(2))
    refused = behind_proxy(3)  # a third client address, by the header
    assert refused.rest(timeout=5) == [
        f"ERROR server-full too many connections from {LOOPBACK}", "BYE full"]
    first.send("NICK alice")
    first.expect("USERS 1")  # the header was taken off: NICK was the first line
    server.wait_log(f"alice is ready from {LOOPBACK}:")
    assert "203.0.113." not in server.log()
    assert server.problems() == []


# -- flood control -----------------------------------------------------------


def test_flood_on_real_sockets(chat_server, connect):
    server = chat_server()  # defaults: 10 lines/s, bursts of 20
    other = registered(connect, server.port, "other")
    flooder = registered(connect, server.port, "flooder")
    other.expect("JOINED")
    flooder.send(b"".join(b"MSG flood %d\r\n" % i for i in range(200)))

    lines = flooder.rest(timeout=5)
    assert lines[-1].startswith("BYE flood"), lines[-3:]
    errors = [line for line in lines if line.startswith("ERROR ")]
    assert errors and all(line.startswith("ERROR flood ") for line in errors)
    # At most one flood error per second; all this took well under one.
    assert len(errors) == 1
    copies = [line for line in lines if line.startswith("MSG ")]
    # The burst of 20 got through (the NICK line was one of it), and then
    # most of the rest did not.
    assert 19 <= len(copies) < 100, len(copies)
    assert lines.index(errors[0]) == len(copies)  # the error follows the burst

    seen = []
    while True:
        line = other.readline()
        if line.startswith("LEFT"):
            break
        seen.append(line)
    assert re.fullmatch(rf"LEFT {TS} flooder flood", line)
    assert seen == copies  # the lobby saw exactly what was accepted
    # The nick is free again.
    registered(connect, server.port, "flooder")
    assert server.problems() == []


# -- idle peers ----------------------------------------------------------------


class Answerer(threading.Thread):
    """Answers every PING on C{client} until stopped (bounded by C{limit})."""

    def __init__(self, client: LineClient, limit: float = 15.0) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.limit = limit
        self.stop = threading.Event()
        self.pings = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.limit
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    line = self.client.readline(timeout=0.2)
                except TimeoutError:
                    continue
                if line.startswith("PING"):
                    self.pings += 1
                    self.client.send("PONG" + line[len("PING"):])
        except BaseException as e:  # reported by the test
            self.error = e


def test_idle_peer_is_pinged_then_dropped(chat_server, connect):
    server = chat_server("--idle-timeout", "1", "--ping-timeout", "1")
    answerer = registered(connect, server.port, "answerer")
    silent = registered(connect, server.port, "silent")
    answerer.expect("JOINED")
    thread = Answerer(answerer)
    thread.start()
    try:
        started = time.monotonic()
        ping = silent.expect("PING", timeout=6)
        assert re.fullmatch(r"PING \S+", ping)
        rest = silent.rest(timeout=6)
        elapsed = time.monotonic() - started
        assert rest[-1].startswith("BYE timeout"), rest
        # Silent since its NICK: PING after 1 s, BYE 1 s later (timers
        # may run a little late on a busy machine).
        assert elapsed < 6
        # The answerer outlives several rounds of PING.
        deadline = time.monotonic() + 10
        while thread.pings < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        thread.stop.set()
        thread.join(5)
    assert thread.error is None, thread.error
    assert thread.pings >= 3
    lefts = [line for line in answerer.lines if line.startswith("LEFT")]
    assert len(lefts) == 1 and re.fullmatch(rf"LEFT {TS} silent timeout", lefts[0])
    assert answerer.sync() == []
    answerer.send("USERS")
    assert [answerer.readline(), answerer.readline()] == ["USER answerer lobby", "USERS 1"]
    assert server.problems() == []


def test_nick_timeout(chat_server, connect):
    server = chat_server("--nick-timeout", "1")
    started = time.monotonic()
    nameless = hello(connect(server.port))
    named = registered(connect, server.port, "named")
    # Talking without choosing a nick does not buy time.
    nameless.send("PING still here")
    assert nameless.readline() == "PONG still here"
    rest = nameless.rest(timeout=5)
    assert len(rest) == 1 and rest[0].startswith("BYE timeout"), rest
    assert time.monotonic() - started < 5
    # The one that chose a nick in time stays, well past the limit: a
    # fixed window, for something that must not happen.
    time.sleep(STAYS_WINDOW)
    assert named.sync() == []
    assert server.problems() == []
