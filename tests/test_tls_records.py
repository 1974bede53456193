"""
Under TLS each record is a read of its own, whatever it carries: a record
that ends no line spends a flood token (twisted_chat.server.limits.records).
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from zope.interface import implementer

from tests.harness import Conn, Harness, SocketTransport, run_for, traced_lines
from tests.test_protocol import _first_command_waits
from twisted_chat.server import protocol as chat_protocol
from twisted_chat.server.limits import records
from twisted_chat.server.limits.records import reads_records


@implementer(ISSLTransport)
class RecordTransport(SocketTransport):
    """A transport that says it is TLS, as Twisted's TLS layer does."""

    def getPeerCertificate(self) -> Any:
        return None

    def pauseProducing(self) -> None:
        # A TLS close reads on (for close_notify): reading may still stop.
        self.producerState = "paused"


def tls_user(h: Harness, nick: str, host: str) -> Conn:
    address = IPv4Address("TCP", host, 40999)
    protocol = h.factory.buildProtocol(address)
    transport = RecordTransport(h.clock, protocol, peerAddress=address)
    protocol.makeConnection(transport)
    conn = Conn(h, protocol, transport)
    h.conns.append(conn)
    conn.send(f"NICK {nick}")
    assert f"READY {nick}" in conn.take()
    return conn


def one_byte_records(conn: Conn, data: bytes) -> None:
    for i in range(len(data)):
        conn.send_raw(data[i:i + 1])


def test_tls_is_told_from_tcp() -> None:
    h = Harness()
    assert not reads_records(h.connect().transport)
    assert reads_records(RecordTransport(h.clock, None))


def test_twisted_s_tls_transport_reads_records() -> None:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    assert reads_records(TLSMemoryBIOProtocol(None, None))


def test_a_tcp_read_runs_nothing_for_tls() -> None:
    """Whether a connection reads records is decided once, as it starts: a
    TCP read (the lobby fan-out's hot path, one per line under load) runs
    the line framing and nothing more (before, every read asked
    reads_records and looked for a close under way)."""
    h = Harness()
    alice = h.user("alice", "192.0.2.6")
    proto = alice.protocol
    files = (chat_protocol.__file__, records.__file__)
    read = traced_lines(lambda: proto.dataReceived(b"PI"), *files)
    proto._buffer = b""
    framed = traced_lines(lambda: proto._take(b"PI"), *files)
    assert read == framed + 1  # dataReceived's own line
    mallory = tls_user(h, "mallory", "192.0.2.7")
    assert type(mallory.protocol) is chat_protocol.RecordChatProtocol
    assert type(proto) is chat_protocol.ChatProtocol
    assert sys.getsizeof(mallory.protocol) == sys.getsizeof(proto)


def test_records_ending_no_line_spend_flood_tokens_until_bye_flood() -> None:
    """One byte per record, no line ever complete: cut as a flood of lines
    is (before, nothing was spent, and each record cost a read)."""
    h = Harness(flood_rate=1.0, flood_burst=5)
    mallory = tls_user(h, "mallory", "192.0.2.1")
    one_byte_records(mallory, b"x" * 40)
    said = mallory.take()
    assert any(line.startswith("ERROR flood") for line in said), said
    assert said[-1].startswith("BYE flood"), said
    assert mallory.protocol.closing


def test_tcp_reads_ending_no_line_spend_nothing() -> None:
    """On TCP the kernel joins what arrives: a read is no record."""
    h = Harness(flood_rate=1.0, flood_burst=5)
    alice = h.user("alice", "192.0.2.2")
    one_byte_records(alice, b"x" * 40)
    assert alice.take() == []
    assert not alice.protocol.closing


def test_a_line_per_record_costs_its_line_only() -> None:
    h = Harness(flood_rate=1.0, flood_burst=5)
    alice = tls_user(h, "alice", "192.0.2.3")
    for i in range(4):  # with its NICK, the burst
        alice.send(f"PING {i}")
    assert alice.take() == [f"PONG {i}" for i in range(4)]


def test_a_line_split_over_records_pays_for_each_and_one_refused_drops_it() -> None:
    """Two records make one line: two tokens.  A record refused drops the
    line it was part of (what came before it, and after it up to the
    newline); the next line is read whole."""
    h = Harness(flood_rate=1.0, flood_burst=5)
    alice = tls_user(h, "alice", "192.0.2.4")
    alice.send_raw(b"PING ")
    alice.send_raw(b"a\r\n")
    assert alice.take() == ["PONG a"]
    alice.send_raw(b"PI")
    alice.send_raw(b"NG ")
    alice.send_raw(b"b")  # the fifth token: none left for it
    alice.send_raw(b"c\r\n")
    said = alice.take()
    assert len(said) == 1 and said[0].startswith("ERROR flood"), said
    h.clock.advance(10)
    alice.send("PING d")
    assert alice.take() == ["PONG d"]


def test_after_the_close_reading_stops_past_reads_after_close() -> None:
    """A TLS close reads on for the peer's close_notify: a peer that keeps
    sending records is read for READS_AFTER_CLOSE of them, then no more
    (the grace's abort ends it); before, for the whole grace."""
    from twisted_chat.server.limits.closing import READS_AFTER_CLOSE

    h = Harness()
    mallory = tls_user(h, "mallory", "192.0.2.5")
    mallory.send("BYE")
    assert mallory.protocol.closing and mallory.transport.disconnecting
    assert mallory.reading
    for _ in range(READS_AFTER_CLOSE):
        mallory.send_raw(b"x")
    assert mallory.reading, "a peer's few lines in flight are read"
    mallory.send_raw(b"x")
    assert not mallory.reading


def test_a_refused_connection_s_close_stops_reading_past_reads_after_close() -> None:
    """A refused TLS connection, told why, closes: its close reads on for
    the peer's close_notify, READS_AFTER_CLOSE reads, then no more (the
    grace aborts it); before, every record until the grace."""
    from twisted_chat.server.limits.closing import READS_AFTER_CLOSE

    h = Harness()
    address = IPv4Address("TCP", "192.0.2.8", 40999)
    refusal = h.factory.refusal(address.host, "full")
    transport = RecordTransport(h.clock, refusal, peerAddress=address)
    refusal.makeConnection(transport)
    assert transport.value().endswith(b"BYE full\r\n") and transport.disconnecting
    for _ in range(READS_AFTER_CLOSE):
        transport.read(b"x")
    assert transport.producerState == "producing"
    transport.read(b"x")
    assert transport.producerState == "paused"


def test_records_that_end_no_line_neither_keep_a_connection_from_idle_nor_answer_a_ping() -> None:
    """A record that ends no line spends a token but is no line: the idle
    timer runs from the last complete line, as over TCP (before, each such
    record reset it: a byte a minute kept a TLS peer from ever being
    pinged, and one answered a PING)."""
    h = Harness(flood_rate=1.0, flood_burst=5, idle_timeout=120.0, ping_timeout=60.0)
    mallory = tls_user(h, "mallory", "192.0.2.9")
    for _ in range(3):
        run_for(h.clock, 50)
        mallory.send_raw(b"x")
    assert any(line.startswith("PING idle-") for line in mallory.take())
    run_for(h.clock, 50)
    mallory.send_raw(b"x")
    run_for(h.clock, 11)
    assert any(line.startswith("BYE timeout") for line in mallory.take())


def test_a_record_s_token_refills_once() -> None:
    """Records and lines share one bucket, refilled once for the time
    between them: four records and a line after a full bucket leave none
    for a second line."""
    h = Harness(flood_rate=1.0, flood_burst=5)
    mallory = tls_user(h, "mallory", "192.0.2.10")
    run_for(h.clock, 10)
    mallory.send_raw(b"PING\n")  # 4 tokens left
    run_for(h.clock, 2)  # 5, the burst
    one_byte_records(mallory, b"PING")  # 1 left
    mallory.send_raw(b" a\n")  # 0 left
    mallory.send_raw(b"PING b\n")
    said = mallory.take()
    assert said[:2] == ["PONG", "PONG a"] and said[2].startswith("ERROR flood"), said


def test_a_record_only_trickle_past_the_idle_timeout_is_timed_out() -> None:
    """Records that end no line, one a second within the flood rate, for
    longer than the idle timeout: a PING at the timeout, BYE timeout when
    it goes unanswered, as a silent TCP peer gets."""
    h = Harness(flood_rate=2.0, flood_burst=5, idle_timeout=30.0, ping_timeout=10.0)
    mallory = tls_user(h, "mallory", "192.0.2.11")
    for _ in range(29):
        run_for(h.clock, 1)
        mallory.send_raw(b"x")
    assert mallory.take() == []
    run_for(h.clock, 1)
    assert [line.split(" ")[0] for line in mallory.take()] == ["PING"]
    for _ in range(10):
        mallory.send_raw(b"x")
        run_for(h.clock, 1)
    assert mallory.take()[-1].startswith("BYE timeout")
    assert mallory.protocol.closing


def test_records_after_a_long_quiet_get_one_bucket() -> None:
    """A long quiet refills the bucket to its burst, once: records that end
    no line spend it, and the line they end finds none left."""
    h = Harness(flood_rate=1.0, flood_burst=5, idle_timeout=0.0)
    mallory = tls_user(h, "mallory", "192.0.2.12")
    run_for(h.clock, 100)
    one_byte_records(mallory, b"PING")  # 5 - 4
    mallory.send_raw(b" a\n")  # the last one
    mallory.send_raw(b"PING b\n")
    said = mallory.take()
    assert said[0] == "PONG a" and said[1].startswith("ERROR flood"), said


def test_a_record_read_behind_a_command_neither_drops_nor_refills_the_held_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A line held behind a command is counted as of when it was read, which
    may be before a record read while the command waited: it spends a token
    of the bucket as it was then (before, the record's spend was counted
    back to the last line, less the refill the cap had cut: the held line
    found none and was dropped), and the refill up to the record is not had
    twice (the four lines after it would all pass)."""
    h = Harness(flood_rate=1.0, flood_burst=5)
    pending = _first_command_waits(h, monkeypatch)
    mallory = tls_user(h, "mallory", "192.0.2.13")  # 4 tokens
    mallory.send("MSG first")  # 3, and it waits
    mallory.send("PING a")  # held, read now
    run_for(h.clock, 10)
    mallory.send_raw(b"PING e")  # a record: the bucket's 5, less 1
    pending[0].callback(None)
    h.clock.advance(0)
    said = mallory.take()
    assert said[0].endswith(" mallory * first") and said[1:] == ["PONG a"], said
    for line in (b"\n", b"PING b\n", b"PING c\n", b"PING d\n"):
        mallory.send_raw(line)
    said = mallory.take()
    assert said[0] == "PONG e" and any(line.startswith("ERROR flood") for line in said), said


def test_records_read_while_a_command_waits_count_the_held_lines_after_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A line held behind a command is counted as of when it arrived, but
    not before what was counted since (InputHold._replay): records that
    end no line, read while it waited, come before it.  Before, such a
    record left its time uncounted (only the idle timer's was kept), the
    refill since the last line was taken off the tokens, and the held line,
    counted from its earlier arrival, was dropped for a flood it never
    made (here with seven tokens in hand)."""
    from tests.test_protocol import _first_command_waits

    h = Harness(flood_rate=1.0, flood_burst=10)
    bob = h.user("bob")
    alice = tls_user(h, "alice", "192.0.2.11")
    pending = _first_command_waits(h, monkeypatch)
    run_for(h.clock, 10)  # a full burst
    alice.send("MSG first")  # waits: 9 tokens
    run_for(h.clock, 1)
    alice.send("MSG held")  # held, as of now
    run_for(h.clock, 9)
    one_byte_records(alice, b"MSG")  # 3 tokens, the burst refilled: 7 left
    pending[0].callback(None)
    h.clock.advance(0)
    assert not any(line.startswith("ERROR") for line in alice.take())
    assert [line.split(" ", 4)[-1] for line in bob.take()[-2:]] == ["first", "held"]


def _replies(conn: Conn) -> list[str]:
    """Its PONGs and ERRORs (not the lobby's lines)."""
    return [line.split(" (")[0] for line in conn.take() if line.startswith(("PONG", "ERROR"))]


@pytest.mark.parametrize("records", [
    (b"MSG first\r\n", b"PI", b"NG", b" a\r\n"),
    (b"MSG first\r\nPI", b"NG", b" a\r\n"),  # the rest of the waiting line's record
], ids=["records-after-the-line", "the-waiting-line-s-record-too"])
def test_records_held_behind_a_command_are_charged_as_if_nothing_were_held(
        monkeypatch: pytest.MonkeyPatch, records: tuple[bytes, ...]) -> None:
    """A line sent as several records while a command waits costs what it
    costs when nothing waits: a token per record that ends no line, one per
    line (before, a held record was charged when read and again when handed
    back, and the rest of the waiting line's record as a record of its own:
    the lines after it found fewer tokens)."""
    h = Harness(flood_rate=1.0, flood_burst=10)
    pending = _first_command_waits(h, monkeypatch)
    mallory = tls_user(h, "mallory", "192.0.2.14")
    alice = tls_user(h, "alice", "192.0.2.15")
    said = {}
    for conn in (mallory, alice):  # mallory's MSG waits, alice's not
        for record in records:
            conn.send_raw(record)
        if pending and not pending[0].called:
            assert _replies(conn) == []
            pending[0].callback(None)
            h.clock.advance(0)
        conn.send(*(f"PING {i}" for i in range(8)))
        said[conn.protocol.user.nick] = _replies(conn)
    assert said["mallory"] == said["alice"], said
    assert said["alice"][0] == "PONG a" and said["alice"][-1].startswith("ERROR flood"), said


@pytest.mark.parametrize(("burst", "held", "after"), [
    (5, (b"PI", b"NG", b" a", b"x", b"y\r\n"), ()),  # 2, 1, 0, refused
    (2, (b"PI",), (b"NG a\r\n",)),  # refused, the first thing held
], ids=["after-records-held", "first-held"])
def test_a_record_refused_behind_a_command_drops_its_line_once(
        monkeypatch: pytest.MonkeyPatch, burst: int, held: tuple[bytes, ...],
        after: tuple[bytes, ...]) -> None:
    """A record that finds no token while a command waits is refused then
    (ERROR flood): the line it was part of is dropped when its turn comes,
    up to its newline, and counted as dropped once (before, each of its
    records was refused again when handed back, adding to the penalty that
    ends in BYE flood)."""
    h = Harness(flood_rate=1.0, flood_burst=burst)
    pending = _first_command_waits(h, monkeypatch)
    mallory = tls_user(h, "mallory", "192.0.2.16")
    mallory.send("MSG first")  # it waits
    for record in held:
        mallory.send_raw(record)
    said = mallory.take()
    assert len(said) == 1 and said[0].startswith("ERROR flood"), said
    pending[0].callback(None)
    h.clock.advance(0)
    for record in after:
        mallory.send_raw(record)
    said = mallory.take()
    assert len(said) == 1 and said[0].endswith(" mallory * first"), said
    assert h.factory.stats.dropped_lines["flood_rate"] == 1
    run_for(h.clock, 2)
    mallory.send("PING b")
    assert mallory.take() == ["PONG b"]


def test_records_refused_in_a_row_behind_a_command_hold_one_mark(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Records refused one after another while a command waits drop the
    same line: the hold keeps one mark for them, not a read each."""
    h = Harness(flood_rate=1.0, flood_burst=5)
    pending = _first_command_waits(h, monkeypatch)
    mallory = tls_user(h, "mallory", "192.0.2.17")
    mallory.send("MSG first")  # 3 tokens, and it waits
    one_byte_records(mallory, b"PINGxyz")  # PIN spend them, G x y z are refused
    hold = mallory.protocol.hold
    assert hold is not None and [end for end, _ in hold.reads] == [1, 2, 3, 3]
    pending[0].callback(None)
    h.clock.advance(0)
    mallory.send_raw(b" a\r\n")
    said = mallory.take()
    assert len(said) == 2 and said[0].startswith("ERROR flood"), said
    assert said[1].endswith(" mallory * first"), said


def test_an_empty_read_held_behind_a_command_drops_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read of nothing (no transport makes one) held behind a command is
    not taken for the mark of a refused record: the line around it stays."""
    h = Harness()
    pending = _first_command_waits(h, monkeypatch)
    alice = h.user("alice", "192.0.2.18")
    alice.send("MSG first")
    alice.send_raw(b"PING ")
    alice.protocol.dataReceived(b"")
    alice.send_raw(b"a\r\n")
    pending[0].callback(None)
    h.clock.advance(0)
    assert alice.take()[-1] == "PONG a"
