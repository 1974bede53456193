"""
Reading once the gateway's close is decided: one count of reads from the
server's close frame to the end of its TCP (or TLS) close
(ReadsAfterClose), and no resume from the chat connection once that close
has the reading (a command decided after the close frame).
"""

from __future__ import annotations

import pytest

from tests.harness import Harness
from tests.test_login import PW, HeldWork, add
from tests.test_login import harness as login_harness
from tests.web import wsframes as ws
from tests.web.test_gateway import HoldingTransport, WsConn, make_gateway
from tests.web.test_gateway_records import TLSTransport, no_channel_id
from twisted_chat.server.limits.closing import READS_AFTER_CLOSE

__all__ = ["no_channel_id"]  # autouse: autobahn asks a TLS transport for tls-unique

CLOSE_1000 = ws.frame(b"\x03\xe8", opcode=ws.CLOSE)


class TLSHoldingTransport(TLSTransport, HoldingTransport):
    """A TLS transport with bytes its peer has not taken (L{unsent})."""


def refused_during_a_password_check(transport: type[HoldingTransport]) -> tuple[Harness, WsConn]:
    """bot's PASS is being checked when it sends a binary message: the
    server's close frame (1003) goes out while its chat connection waits
    for the check (it is not closing yet), and the server then holds too
    much input (HeldInput pauses every connection's reading)."""
    h = login_harness(work=HeldWork(), close_grace=3.0)
    add(h, "bot")
    bot = WsConn(h, make_gateway(h), transport=transport)
    bot.take()
    bot.send("NICK bot")
    h.work.release()  # type: ignore[attr-defined]  # the lookups
    assert bot.take() == ["PASS bot"]
    bot.send(f"PASS {PW}")
    bot.send_frame(ws.frame(b"x", opcode=ws.BINARY))
    bot.frames()
    assert bot.closes == [1003]
    chat = bot.socket.chat
    assert chat is not None and not chat.closing  # it waits for the check
    chat.node_pause()
    assert bot.transport.producerState == "paused"
    return h, bot


def test_reading_stopped_past_reads_after_close_is_not_resumed_by_the_chat() -> None:
    """Under TLS the records of the read under way are handed over after
    the pause: past READS_AFTER_CLOSE reading stops for good.  Before, the
    chat connection's resume (the server's held input let go) read on, and
    the peer's records were each decrypted until the close grace."""
    h, bot = refused_during_a_password_check(TLSTransport)
    for _ in range(READS_AFTER_CLOSE + 1):
        bot.send_frame(ws.frame(b""))
    chat = bot.socket.chat
    assert chat is not None and not bot.transport.disconnecting
    chat.node_resume()
    assert bot.transport.producerState == "paused"
    h.work.release()  # type: ignore[attr-defined]  # the account read
    h.work.release()  # type: ignore[attr-defined]  # the password check
    assert bot.transport.producerState == "paused"
    h.clock.advance(3.0)  # the close's grace
    assert bot.transport.disconnected


def test_reading_resumes_after_the_close_frame_while_the_peer_s_close_is_awaited() -> None:
    """Below the bound the chat connection's resume reads again: the
    peer's answer to the close frame is still to come."""
    _, bot = refused_during_a_password_check(TLSTransport)
    chat = bot.socket.chat
    assert chat is not None
    chat.node_resume()
    assert bot.transport.producerState == "producing"


def test_a_tcp_close_waiting_for_its_peer_is_not_resumed_by_the_chat() -> None:
    """The peer answers the close frame while the kernel still holds what
    it was sent: the TCP close waits with reading paused (Linger).  Before,
    the chat connection's resume read on meanwhile."""
    h, bot = refused_during_a_password_check(HoldingTransport)
    chat = bot.socket.chat
    assert chat is not None
    chat.node_resume()
    assert bot.transport.producerState == "producing"
    bot.transport._tempDataLen = 50_000  # type: ignore[attr-defined]
    bot.send_frame(CLOSE_1000)
    assert bot.socket.wasClean and not bot.transport.disconnecting
    assert bot.transport.producerState == "paused"  # the close waits for the peer
    chat.node_pause()
    chat.node_resume()
    assert bot.transport.producerState == "paused"
    bot.transport._tempDataLen = 0  # type: ignore[attr-defined]
    h.clock.advance(0.1)
    assert bot.transport.disconnecting  # the close made (a FIN)


def answered_close(h: Harness, nick: str, before: int, after: int) -> WsConn:
    """C{nick} says BYE and, C{before} reads later, answers the server's
    close frame while the kernel still holds what it was sent; C{after}
    more reads (records of the read under way) come as its close waits,
    then the peer takes everything and the close is made."""
    conn = WsConn(h, make_gateway(h), transport=TLSHoldingTransport)
    conn.register(nick)
    conn.send("BYE")
    assert conn.take() == ["BYE quit"] and conn.closes == [1000]
    for _ in range(before):
        conn.send_frame(ws.frame(b""))
    conn.transport._tempDataLen = 50_000  # type: ignore[attr-defined]
    conn.send_frame(CLOSE_1000)
    assert conn.socket.wasClean and not conn.transport.disconnecting
    for _ in range(after):
        conn.send_frame(b"x")
    conn.transport._tempDataLen = 0  # type: ignore[attr-defined]
    h.clock.advance(0.1)
    assert conn.transport.disconnecting  # the close made
    return conn


@pytest.mark.parametrize("before", [0, 30])
def test_reads_before_and_after_the_peer_s_close_frame_are_one_count(before: int) -> None:
    """The reads from the server's close frame (its answer included) to
    the TCP close are counted once: READS_AFTER_CLOSE in all, not that
    many again once the peer has answered."""
    h = Harness(close_grace=3.0)
    left = READS_AFTER_CLOSE - before - 1  # the answer is a read too
    alice = answered_close(h, "alice", before, left)
    assert alice.transport.producerState == "producing"  # reads on, for close_notify
    carol = answered_close(h, "carol", before, left + 1)
    assert carol.transport.producerState == "paused"  # stopped for good
    h.clock.advance(3.0)  # the close grace
    assert carol.transport.disconnected
