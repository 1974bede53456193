"""
What one peer can make the server hold behind commands decided elsewhere,
and what that does to everyone else (twisted_chat/server/limits/heldinput.py;
rev15-sec #1: 14 addresses, each with 5 connections parked behind a login
over its failure limit or a queued password check, took the server past
its held-input ceiling, and no connection at all was read for 3 s at a
time; a bystander's lines, read all at once after, were dropped as flood).
StringTransport and a fake clock (tests/harness.py); the password threads
are tests/test_login.py's stand-ins.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from tests.harness import Conn, Harness, run_for
from tests.test_cluster_outage import Waiting
from tests.test_login import LIMITS, PW, HeldWork, add, fresh, harness, shared_harness, wrong
from tests.web import wsframes as ws
from tests.web.test_gateway import WsConn, grown_by, make_gateway
from twisted_chat.server.accounts.login import BAD_PASSWORD_TEXT
from twisted_chat.server.config import Mode
from twisted_chat.server.limits.heldinput import (
    _HELD_INPUT,
    CEILING_TELL_EVERY,
    HELD_LINE_COST,
    TOO_MUCH_BEFORE_READY,
    HeldInput,
)

JUNK = b"j" * 1000 + b"\r\n"


def over_the_nick_limit(h: Harness) -> None:
    """C{atk} has an account, and its failures from anywhere (LIMITS: 3)
    are spent: every further PASS for it waits for BYE flood, unchecked."""
    add(h, "atk")
    for i in range(3):
        assert wrong(h, f"10.9.0.{i}", "atk") == f"RETRY bad-password {BAD_PASSWORD_TEXT}"


def settle(h: Harness) -> None:
    """Run the password threads' jobs, and those they lead to, until none is left."""
    while h.work.held:  # type: ignore[attr-defined]
        h.work.release()  # type: ignore[attr-defined]


def victim(h: Harness, host: str = "10.200.0.1") -> Conn:
    conn = fresh(h, host)
    conn.send("NICK victim")
    assert conn.take()[0] == "READY victim"
    return conn


def test_a_login_over_its_failure_limit_holds_nothing_while_it_waits_for_bye() -> None:
    """Behind a PASS over a failure limit (3 s, then BYE flood) nothing is
    held: what it sends is read and dropped, counted as discarded input, and
    never reaches the server's held-input count (before, it held 64 KiB and
    a read each: 14 addresses x 5 connections went past the ceiling)."""
    h = harness(limits=LIMITS)
    over_the_nick_limit(h)
    held = h.factory.held_input
    conn = fresh(h, "10.1.0.1")
    conn.send("NICK atk")
    assert conn.take() == ["PASS atk"]
    conn.send_raw(b"PASS wrongpass\r\n" + JUNK * 8)  # under the before-READY bound
    assert held.total == 0 and held.paused == {}
    conn.arrive("PING one")  # read, and dropped
    conn.send_raw(JUNK * 8)
    assert held.total == 0 and conn.reading
    assert h.factory.stats.input_discarded == 16 * len(JUNK) + len(b"PING one\r\n")
    assert conn.take() == []
    h.clock.advance(LIMITS.flood_delay)
    assert conn.take() == ["BYE flood too many failed logins; try again later"]
    conn.drop()
    assert held.total == 0 and held.paused == {}


def test_a_login_the_cluster_refuses_at_once_handles_nothing_more() -> None:
    """The cluster's shared failure counts refuse a PASS as it is handled
    (their answer came at once): nothing the connection sends until its BYE
    is handled either, though no wait_for followed (the PASS's Deferred had
    fired, its BYE chained behind it)."""
    h = shared_harness()
    add(h, "alice")
    h.shared.full.add("alice")  # type: ignore[attr-defined]
    conn = fresh(h, "10.0.0.9")
    conn.send("NICK alice", f"PASS {PW}")
    assert conn.take() == ["PASS alice"]
    conn.send("PING one")
    assert conn.take() == []
    assert h.factory.stats.input_discarded == len(b"PING one\r\n")
    assert h.factory.held_input.total == 0
    h.clock.advance(LIMITS.flood_delay)
    assert conn.take() == ["BYE flood too many failed logins; try again later"]


def test_a_check_that_goes_over_the_limit_drops_what_it_held() -> None:
    """A PASS whose failure limit is found spent once its check was to start
    (the lookup came first) drops what its connection held meanwhile."""
    h = harness(limits=LIMITS, work=HeldWork())
    add(h, "atk")
    for i in range(3):
        conn = fresh(h, f"10.9.0.{i}")
        conn.send("NICK atk")
        h.work.release()  # type: ignore[attr-defined]
        conn.send("PASS wrong-password")
        settle(h)
        assert conn.take()[-1] == f"RETRY bad-password {BAD_PASSWORD_TEXT}"
        conn.drop()
    conn = fresh(h, "10.1.0.1")
    conn.send("NICK atk", "PASS wrongpass", "PING held")  # the lookup waits: both held
    held = h.factory.held_input
    assert held.total == len(b"PASS wrongpass\r\nPING held\r\n")
    h.work.release()  # type: ignore[attr-defined]  # the lookup: PASS asked, then PASS x
    assert conn.take() == ["PASS atk"]
    assert held.total == 0 and conn.reading
    h.clock.advance(LIMITS.flood_delay)
    assert conn.take() == ["BYE flood too many failed logins; try again later"]


def test_before_ready_a_connection_holds_a_few_lines_at_most() -> None:
    """Behind its PASS being checked, a connection not yet READY holds at
    most 4 lines of --max-line: past that it is closed with BYE flood, and
    what it held is dropped (before, 64 KiB and a read each)."""
    h = harness(work=HeldWork(), max_line=512)
    bound = h.factory.held_input.before_ready
    assert bound == 4 * (512 + HELD_LINE_COST)  # a WebSocket's line as held; TCP's CRLF within
    add(h, "alice")
    add(h, "bob")
    # Within the bound: held, and handled after the check.
    bob = fresh(h, "10.2.0.1")
    bob.send("NICK bob")
    h.work.release()  # type: ignore[attr-defined]
    assert bob.take() == ["PASS bob"]
    line = b"PING " + b"p" * 500 + b"\r\n"
    bob.send_raw(f"PASS {PW}\r\n".encode() + line * 3)
    assert h.factory.held_input.total == 3 * len(line)
    # Past it.
    alice = fresh(h, "10.2.0.2")
    alice.send("NICK alice")
    h.work.release()  # type: ignore[attr-defined]
    assert alice.take() == ["PASS alice"]
    alice.send_raw(f"PASS {PW}\r\n".encode() + line * 3)
    assert alice.take() == []  # 3 lines: held
    alice.send_raw(line * 3)
    assert alice.take() == [f"BYE flood {TOO_MUCH_BEFORE_READY}"]
    assert alice.transport.disconnecting
    assert h.factory.held_input.total == 3 * len(line)  # bob's only
    assert h.factory.stats.input_discarded == 6 * len(line)
    settle(h)  # both checks
    assert bob.take() == ["READY bob", "USER bob lobby", "USERS 1"] + 3 * [f"PONG {'p' * 500}"]
    assert alice.take() == []
    assert h.factory.held_input.total == 0


def test_an_address_holds_its_share_and_then_is_not_read() -> None:
    """One address's connections together hold at most a 16th of the
    server's bound: past it, those of them with a command waiting are not
    read until it is decided; another address's are read as ever."""
    h = harness(work=HeldWork())
    held = h.factory.held_input
    held.limit = 160_000
    assert held.share == 10_000
    users = {}
    for nick, host in (("a1", "10.3.0.1"), ("a2", "10.3.0.1"), ("b1", "10.3.0.2")):
        conn = fresh(h, host)
        conn.send(f"NICK {nick}")
        h.work.release()  # type: ignore[attr-defined]  # the lookup: no account
        assert conn.take()[0] == f"READY {nick}"
        conn.send(f"REGISTER {PW}")  # its lookup waits
        users[nick] = conn
    chunk = ("MSG " + "m" * 5994 + "\r\n").encode()  # 6000 bytes
    users["a1"].transport.arrive(chunk)
    assert users["a1"].reading  # 6000 of the address's 10,000
    users["a2"].transport.arrive(chunk)
    assert not users["a2"].reading  # 12,000: past its share
    users["a1"].transport.arrive(chunk)
    assert not users["a1"].reading
    users["b1"].transport.arrive(chunk)
    assert users["b1"].reading  # another address: 6000 of its own
    users["a1"].transport.arrive(chunk)  # waits in the "kernel"
    assert held.total == 4 * 6000 and not held.over
    settle(h)  # the lookups, then the hashes
    h.clock.advance(0)
    assert held.total == 0
    assert all(conn.reading for conn in users.values())


class Hog:
    """Something holding input, as HeldInput sees a connection."""

    def held_or_waiting(self) -> bool:
        return True

    def node_pause(self) -> None:
        pass

    def node_resume(self) -> None:
        pass


def test_lines_the_server_did_not_read_are_not_counted_as_a_flood() -> None:
    """A user the server did not read for 4 s (its held input past the
    ceiling), sending 7 lines a second under a limit of 10 (bursts of 20),
    has its 28 lines read at once after: none is dropped as flood (before:
    8 were, with ERROR flood ... lines are being dropped).  What it may
    send beyond that is its rate, as ever."""
    h = harness(flood_rate=10.0, flood_burst=20)
    user = victim(h)
    held = h.factory.held_input
    hog: Any = Hog()
    held.change(hog, held.ceiling + 1)
    assert held.full and not user.reading
    for i in range(28):
        h.clock.advance(1 / 7)
        user.arrive(f"PING {i}")
    assert user.take() == []
    held.change(hog, -held.total)
    h.clock.advance(0)
    assert user.reading
    assert user.take() == [f"PONG {i}" for i in range(28)]
    assert h.factory.stats.dropped_lines["flood_rate"] == 0
    # Its bucket is as ever after: 21 lines at once, one too many.
    h.clock.advance(2)
    user.send(*[f"PING again{i}" for i in range(21)])
    got = user.take()
    assert got[:20] == [f"PONG again{i}" for i in range(20)]
    assert got[20].startswith("ERROR flood slow down")


def test_the_reviewers_attack_leaves_a_bystander_read() -> None:
    """rev15-sec #1 in small, under --accounts required: 14 addresses x 5
    connections, each behind a PASS over the failure limit (atk) or behind
    one being checked (the checks held), each sending 128 KiB behind it; a
    READY user from another address is read all along, and the server never
    holds more than its connections' few lines (before: past the ceiling,
    and the user not read)."""
    h = harness(Mode.REQUIRED, limits=LIMITS, work=HeldWork())
    add(h, "atk")
    add(h, "victim")
    for i in range(3):
        conn = fresh(h, f"10.9.0.{i}")
        conn.send("NICK atk", "PASS wrong-password")
        settle(h)
        assert conn.take()[-1] == f"RETRY bad-password {BAD_PASSWORD_TEXT}"
        conn.drop()
    user = fresh(h, "10.200.0.1")
    user.send("NICK victim", f"PASS {PW}")
    settle(h)
    assert user.take()[1] == "READY victim"
    held = h.factory.held_input
    big = b"PASS wrongpass\r\n" + b"z" * (128 * 1024)
    attackers = []
    for a in range(14):
        for c in range(5):
            conn = fresh(h, f"10.4.{a}.1")
            nick = "atk" if c % 2 else f"other{a}x{c}"
            conn.send(f"NICK {nick}")
            assert conn.take() == [f"PASS {nick}"]
            attackers.append((nick, conn))
    most = 0
    for _, conn in attackers:
        conn.send_raw(big)  # over the limit (atk), or checked (held)
        most = max(most, held.total)
        user.send("PING here")
        assert user.take() == ["PONG here"]
        assert user.reading and not held.over
    assert most == 0  # the checked ones were closed: too much before READY
    assert all(conn.take() == [f"BYE flood {TOO_MUCH_BEFORE_READY}"]
               for nick, conn in attackers if nick != "atk")
    h.clock.advance(LIMITS.flood_delay)
    assert all(conn.take() == ["BYE flood too many failed logins; try again later"]
               for nick, conn in attackers if nick == "atk")
    h.work.release()  # type: ignore[attr-defined]
    assert held.total == 0 and held.paused == {}



def test_the_operator_is_told_when_no_connection_is_read_and_when_all_are_again(
        logged: list[str]) -> None:
    """Past the ceiling nobody is read: one warning says so (and where to
    read why), one line says when reading resumes; a peer crossing it over
    and over gets one warning a minute, which counts the times left out."""
    clock = Clock()
    conns = [Waiting(), Waiting()]
    held = HeldInput(1000, lambda: conns, clock)
    a, b = conns

    def cross_and_drain() -> None:
        held.change(a, held.ceiling + 1)
        assert held.full and not a.reading and not b.reading
        clock.advance(2.5)
        held.change(a, -(held.ceiling + 1))
        assert not held.full and a.reading and b.reading

    cross_and_drain()
    told = [line for line in logged if "Held input" in line]
    assert told == [
        "Held input passed its ceiling (1250 bytes held behind commands decided elsewhere):"
        ' no connection is read until it is back to 500 bytes (docs/security.md, "Held input").',
        "Held input is back to 0 bytes: every connection is read again, after 2.5 s.",
    ]
    for _ in range(3):  # within the minute: not told again
        clock.advance(10)
        cross_and_drain()
    assert [line for line in logged if "Held input" in line] == told
    clock.advance(CEILING_TELL_EVERY)
    cross_and_drain()
    again = [line for line in logged if "Held input" in line][len(told):]
    assert len(again) == 2
    assert again[0].endswith("; passed 3 more time(s) since the last such line.")


# -- a connection that goes while the server's bound keeps it unread ------------


UNREAD = b"PING unread\r\n"


def lobby_line(size: int) -> bytes:
    """A lobby line of C{size} bytes, CRLF included."""
    return b"MSG " + b"m" * (size - 6) + b"\r\n"


class Gone:
    """Three READY users, each with a command waiting (its lookup held) and
    input held behind it: C{gone} (600 bytes) and C{sibling} (300) from one
    address, C{bystander} (300) from another; a L{Hog} holds the rest.  The
    server holds past its bound (16,000; half: 8000; an address's share:
    1000, which none passes), so none of them is read: each has a line
    waiting in the "kernel"."""

    def __init__(self, hog_holds: int) -> None:
        h = self.h = harness(work=HeldWork())
        held = self.held = h.factory.held_input
        held.limit = 16_000
        users = [fresh(h, host) for host in ("10.5.0.1", "10.5.0.1", "10.5.0.2")]
        for nick, conn in zip(("gone", "sibling", "bystander"), users, strict=True):
            conn.send(f"NICK {nick}")
            h.work.release()  # type: ignore[attr-defined]  # the lookup: no account
            assert conn.take()[0] == f"READY {nick}"
        for conn in users:
            conn.send(f"REGISTER {PW}")  # its lookup waits
        self.gone, self.sibling, self.bystander = users
        for conn, size in zip(users, (600, 300, 300), strict=True):
            conn.transport.arrive(lobby_line(size))
        assert held.total == 1200 and not held.over
        self.hog: Any = Hog()
        held.change(self.hog, held.limit)  # over: every waiting connection paused
        h.clock.advance(3)
        held.change(self.hog, hog_holds - held.limit)
        assert held.over and not any(conn.reading for conn in users)
        for conn in users:
            conn.transport.arrive(UNREAD)  # waits in the "kernel"
        self.reads = {conn: conn.transport.reads for conn in users}

    def cut(self) -> None:
        """C{gone}'s peer reads nothing either: the server cuts it for its
        output (--sendq-timeout), and its transport reports the loss.  (Had
        its peer closed first, the lines it holds would be handled once its
        command is decided: InputHold.holds_lines.)"""
        self.gone.protocol.output_stalled()
        self.gone.drop()

    def read_once(self, conn: Conn) -> bool:
        """Whether C{conn} is read again, once: its line from the "kernel"."""
        return (conn.reading and not conn.transport.unread
                and conn.transport.reads == self.reads[conn] + 1)


def test_a_paused_connection_that_goes_gives_back_what_it_held_and_leaves_no_trace() -> None:
    """A connection the server's bound keeps unread goes (cut for its output):
    what it held is out of its address's share and the server's total; that
    takes the total to half the bound, so the others are read again, each
    once; the one gone is not read again, and the bound keeps nothing of it
    (not among those it paused, nor those owed a flood excuse)."""
    g = Gone(hog_holds=7000)  # 8200 in all: over half
    held, gone, sibling = g.held, g.gone, g.sibling
    address = sibling.protocol.limits
    assert address is gone.protocol.limits and address.held == 900
    g.cut()
    assert not held.over and held.paused == {}
    assert g.read_once(sibling) and g.read_once(g.bystander)  # and held: their commands wait
    assert held.total == 7000 + 2 * (300 + len(UNREAD))
    assert address.held == 300 + len(UNREAD)
    assert set(held.owed) == {g.hog, sibling.protocol, g.bystander.protocol}  # not the gone one
    assert gone.transport.producerState == "paused"
    assert gone.transport.reads == g.reads[gone] and gone.transport.unread


def test_a_paused_connection_that_goes_is_not_resumed_with_the_others_later() -> None:
    """As above, but what the others hold keeps the total over half the
    bound: they stay unread, and the one gone is no longer among the
    connections the bound paused; once the total is at half, the others are
    read again, each once, and the one gone is not."""
    g = Gone(hog_holds=7500)  # 8700 in all
    held, gone = g.held, g.gone
    g.cut()
    assert held.total == 7500 + 300 + 300
    assert g.sibling.protocol.limits.held == 300
    assert held.over and set(held.paused) == {
        g.hog, g.sibling.protocol, g.bystander.protocol}
    assert not g.sibling.reading and not g.bystander.reading
    held.change(g.hog, -7500)
    g.h.clock.advance(0)
    assert held.total == 2 * (300 + len(UNREAD)) and held.paused == {}
    assert g.read_once(g.sibling) and g.read_once(g.bystander)
    assert gone.protocol not in held.owed
    assert gone.transport.producerState == "paused"
    assert gone.transport.reads == g.reads[gone]


# -- the flood excuse for a connection the server did not read ------------------


def unread_for(seconds: float) -> tuple[Clock, HeldInput, Any]:
    """A connection with a command waiting that the server's bound kept
    unread for C{seconds}, read again now."""
    clock = Clock()
    clock.advance(1000)
    conn: Any = Waiting()
    held = HeldInput(1000, lambda: [conn], clock)
    held.change(conn, 1001)
    assert not conn.reading
    clock.advance(seconds)
    held.change(conn, -1001)
    assert conn.reading
    return clock, held, conn


def excused_at_once(held: HeldInput, conn: Any, now: float, rate: float) -> int:
    """How many of C{conn}'s lines over its bucket pass at C{now}."""
    excused = 0
    while held.excused(conn, now, rate):
        excused += 1
        assert excused < 100, "no end to the excuse"
    return excused


@pytest.mark.parametrize(("seconds", "excused"), [(2.0, 8), (2.125, 8), (0.25, 1), (0.125, 0)])
def test_what_the_rate_allows_in_the_time_unread_passes_and_no_more(
        seconds: float, excused: int) -> None:
    """At 4 lines a second, a connection not read for 2 s may send 8 lines
    over its bucket (2.125 s: still 8, a part of a line is no line; a
    quarter of a second: one); what it sends past that is a flood, and the
    excuse is then let go (the server keeps nothing for it)."""
    clock, held, conn = unread_for(seconds)
    assert excused_at_once(held, conn, clock.seconds(), 4.0) == excused
    assert conn not in held.owed


def test_a_connection_read_again_at_once_is_owed_nothing() -> None:
    _clock, held, conn = unread_for(0.0)
    assert conn not in held.owed


def test_the_excuse_lasts_one_second_from_when_the_connection_is_read_again() -> None:
    """Within the second after it is read again (its end included), lines
    over its bucket pass as the time it was not read allows; after it, none
    does, though some of that time is left, and the excuse is let go."""
    clock, held, conn = unread_for(2.0)  # 8 lines at 4 a second
    resumed = clock.seconds()
    assert held.excused(conn, resumed + 0.5, 4.0)
    assert held.excused(conn, resumed + 1.0, 4.0)
    assert not held.excused(conn, resumed + 1.0 + 1 / 1024, 4.0)
    assert conn not in held.owed


def fourteen_lines_unread_for_2_s(h: Harness, user: Conn) -> None:
    """The server holds past its ceiling for 2 s: C{user} is not read, and
    sends 14 PINGs meanwhile, read once the server holds nothing again."""
    held = h.factory.held_input
    hog: Any = Hog()
    held.change(hog, held.ceiling + 1)
    assert not user.reading
    h.clock.advance(2)
    user.arrive(*[f"PING {i}" for i in range(14)])
    held.change(hog, -held.ceiling - 1)
    h.clock.advance(0)
    assert user.reading


def test_a_connection_not_read_is_excused_at_its_flood_rate_over_its_bucket() -> None:
    """--flood-rate 4, --flood-burst 5: a user the server did not read for
    2 s (past the ceiling) has 14 lines read at once after: its bucket (5)
    and 2 s at its rate (8) pass, the 14th is a flood."""
    h = harness(flood_rate=4.0, flood_burst=5)
    user = victim(h)
    fourteen_lines_unread_for_2_s(h, user)
    got = user.take()
    assert got[:13] == [f"PONG {i}" for i in range(13)]
    assert got[13].startswith("ERROR flood slow down")
    assert h.factory.stats.dropped_lines["flood_rate"] == 1


def test_lines_read_in_the_excuse_but_held_behind_a_command_are_excused_when_handled() -> None:
    """As above, but the user's REGISTER waits (its lookup held) through the
    pause and after it: the 14 lines read within the second after it is read
    again are held, and handled 5 s later, each as of when it was read.  The
    excuse is for when they were read, as the bucket is: 13 pass, the 14th
    is a flood (before: the excuse was over by the time they were handled:
    6 were dropped and the user was cut with BYE flood)."""
    h = harness(work=HeldWork(), flood_rate=4.0, flood_burst=5)
    user = fresh(h, "10.200.0.1")
    user.send("NICK victim")
    h.work.release()  # type: ignore[attr-defined]  # the lookup: no account
    assert user.take()[0] == "READY victim"
    h.clock.advance(10)
    user.send(f"REGISTER {PW}")  # its lookup waits
    fourteen_lines_unread_for_2_s(h, user)
    assert user.take() == []  # read, and held
    h.clock.advance(5)
    settle(h)  # the lookup, then the hash
    got = user.take()
    assert got[:14] == ["REGISTERED victim"] + [f"PONG {i}" for i in range(13)]
    assert got[14:] == ["ERROR flood slow down: at most 4 lines per second (bursts of 5); "
                        "lines are being dropped"]
    assert h.factory.stats.dropped_lines["flood_rate"] == 1


@pytest.mark.parametrize(("limit", "held_lines"), [
    (160_000, 3),  # its address's share (10,000 bytes), 11,700 held
    (16_000_000, 17),  # its own 64 KiB (the share is 1 MB), 66,300 held
])
def test_a_connection_paused_for_its_own_holding_is_not_excused(
        limit: int, held_lines: int) -> None:
    """--flood-rate 4, --flood-burst 20: a user whose REGISTER waits holds
    lines past its address's share (or its own 64 KiB) and is not read for
    5 s; the 24 lines it sent meanwhile are read at once when its command is
    decided.  Unlike a connection the server's bound paused (above), it
    draws no excuse: its pause was its own address's doing, so its bucket
    (20, full again) passes and the rest are a flood (with the excuse, 5 s
    at 4 a second would let all 24 pass)."""
    h = harness(work=HeldWork(), flood_rate=4.0, flood_burst=20)
    h.factory.held_input.limit = limit
    user = fresh(h, "10.200.0.1")
    user.send("NICK victim")
    h.work.release()  # type: ignore[attr-defined]  # the lookup: no account
    assert user.take()[0] == "READY victim"
    user.send(f"REGISTER {PW}")  # its lookup waits
    big = "PING " + "p" * 3893  # 3900 bytes with its CRLF
    user.send(*[big] * held_lines)
    assert not user.reading and not h.factory.held_input.paused  # its own pause
    run_for(h.clock, 5)
    user.arrive(*[f"PING {i}" for i in range(24)])
    settle(h)  # the lookup, then the hash
    h.clock.advance(0)
    assert user.reading
    got = user.take()
    assert got[:1 + held_lines] == ["REGISTERED victim"] + [f"PONG {big[5:]}"] * held_lines
    assert got[1 + held_lines:] == [f"PONG {i}" for i in range(20)] + [
        "ERROR flood slow down: at most 4 lines per second (bursts of 20); "
        "lines are being dropped"]
    assert h.factory.stats.dropped_lines["flood_rate"] == 4


# -- a WebSocket's held lines ------------------------------------------------------------


def web_user(h: Harness, nick: str, host: str) -> WsConn:
    """A browser READY as C{nick}, with C{REGISTER} (its lookup and hash on
    the held password threads) to send next."""
    web = WsConn(h, make_gateway(h), peer=host)
    web.take()  # the greeting
    web.send(f"NICK {nick}")
    h.work.release()  # type: ignore[attr-defined]  # the lookup: no account
    assert web.take()[0] == f"READY {nick}"
    return web


def test_an_empty_message_storm_behind_register_is_paused_after_a_few_hundred() -> None:
    """
    Behind a REGISTER being hashed, a browser sends 20,000 empty messages in
    one read.  Each held line counts what it costs held (HELD_LINE_COST
    more than its bytes), and the rest of the read waits unparsed once the
    connection is paused: it holds about 64 KiB of lines, 512, and is not
    read.  Once REGISTER is decided they are handled as any flood is.
    (rev16-sec #1: counted 1 byte each, a connection was paused only after
    65,536 of them, and autobahn parsed every frame of the read under way
    after it: 24 browsers grew the server by 101 MB.)
    """
    h = harness(work=HeldWork(), flood_rate=4.0, flood_burst=5)
    web = web_user(h, "storm", "10.3.0.1")
    held = h.factory.held_input
    storm = ws.text(f"REGISTER {PW}") + ws.frame(b"") * 20_000
    grew = grown_by(web, storm)
    assert web.transport.producerState == "paused"
    assert held.total == (_HELD_INPUT // HELD_LINE_COST + 1) * HELD_LINE_COST  # 513 lines
    # What it holds: the lines counted, and the rest of the read as bytes
    # (before: 20,000 lines of about 90 bytes each, 1.8 MB).
    assert grew < held.total + len(storm) + 16_384
    h.clock.advance(1)
    settle(h)  # the lookup, then the hash
    got = web.take()
    assert got[0] == "REGISTERED storm"
    assert got[-1] == "BYE flood too many lines too fast"
    assert web.closes == [1000]
    h.clock.advance(0)  # what waited unparsed: the connection is closing
    assert held.total == 0


def test_a_browser_s_messages_past_its_bound_are_all_handled_in_order() -> None:
    """What waited unparsed while the browser was not read is handled after
    the lines it held, in order, once its command is decided."""
    h = harness(work=HeldWork())
    web = web_user(h, "many", "10.3.0.2")
    web.send_frame(ws.text(f"REGISTER {PW}")
                   + b"".join(ws.text(f"PING {i}") for i in range(1000)))
    assert web.transport.producerState == "paused"
    assert web.take() == []
    settle(h)
    web.transport.resumeProducing()  # what Twisted's transport then reads (nothing more)
    h.clock.advance(0)
    assert web.take() == ["REGISTERED many"] + [f"PONG {i}" for i in range(1000)]
    assert h.factory.held_input.total == 0 and web.transport.producerState != "paused"


def test_a_hold_is_kept_while_the_reads_it_held_are_handled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the command they waited behind is decided, the reads held are
    handled with the hold's waiting flag and buffer already cleared, but
    still counted in HeldInput (its charge, given back after them).  A
    node_resume meanwhile (HeldInput back to half its bound as another
    connection gives back what it held) must not let the hold go: the
    charge is why InputHold.idle checks it (lost, the rest of the reads
    would be handled as if nothing were held)."""
    h = harness(work=HeldWork())
    user = fresh(h, "10.200.0.1")
    user.send("NICK victim")
    h.work.release()  # type: ignore[attr-defined]  # the lookup: no account
    assert user.take()[0] == "READY victim"
    user.send(f"REGISTER {PW}")  # its lookup waits
    user.send("PING a")
    user.send("PING b")
    proto = user.protocol
    hold = proto.hold
    assert hold is not None and hold.charged == len(b"PING a\r\nPING b\r\n")
    holds = []
    take = type(proto)._take

    def handled(self: Any, data: bytes) -> None:
        if self is proto:
            self.node_resume()
            holds.append(self.hold)
        take(self, data)

    monkeypatch.setattr(type(proto), "_take", handled)
    settle(h)  # the lookup, then the hash: the held reads are handled
    assert user.take() == ["REGISTERED victim", "PONG a", "PONG b"]
    assert holds == [hold, hold]
    assert proto.hold is None and h.factory.held_input.total == 0
