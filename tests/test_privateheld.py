"""
Private lines and the --sendq cut (rev18-attack 3): DMs held for a slow
reader, refused past half of --sendq, left it sitting there, where a lobby
burst that cut nobody else cut it.  The cut now counts what is held less the
private lines still held: the accounting (L{PrivateHeld}), the queue's rule
on test transports and on a real loopback socket, and the cut decision
through the real protocol and session (tests/harness.py).  The end-to-end
attack is in tests/test_e2e_evict.py.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from tests.harness import Harness
from tests.test_sendqueue import Unread
from tests.test_sendqueue import loopback as loopback_fixture
from twisted_chat.server.output.privateheld import MAX_SPANS, PrivateHeld
from twisted_chat.server.output.sendqueue import EncodingSendQueue, SendQueue

loopback = loopback_fixture

# -- the accounting ----------------------------------------------------------------


def test_spans_count_what_the_peer_has_not_taken() -> None:
    private = PrivateHeld()
    private.add(100, 200)
    private.add(300, 350)
    assert private.held(0) == 150
    assert private.held(150) == 50 + 50, "half the first taken"
    assert private.held(200) == 50
    assert private.held(320) == 30
    assert private.held(350) == 0


def test_what_was_taken_is_not_taken_back() -> None:
    """An estimate of what the peer took that goes back is not believed."""
    private = PrivateHeld()
    private.add(0, 100)
    assert private.held(60) == 40
    assert private.held(10) == 40
    private.add(100, 150)  # joined to the last: one span
    assert private.held(0) == 90


def test_past_the_most_spans_a_new_one_joins_the_last() -> None:
    """The lines between count as private too: room, never less; and the
    spans kept stay bounded however the lines interleave."""
    private = PrivateHeld()
    for i in range(MAX_SPANS + 10):
        private.add(100 * i, 100 * i + 10)  # ten private bytes in each hundred
    assert len(private._spans) == MAX_SPANS
    last = 100 * (MAX_SPANS - 1)
    assert private.held(0) == 10 * (MAX_SPANS - 1) + (100 * (MAX_SPANS + 9) + 10 - last)


# -- the queue's rule ----------------------------------------------------------------

LIMIT = 200_000
LINE = b"x" * 1000


def paused_queue(limit: int = LIMIT) -> SendQueue:
    """A queue on a transport whose peer takes nothing, paused: Twisted's
    share is its estimate (100 bytes of buffer, then what is written)."""
    transport = Unread()
    transport.bufferSize = 100  # type: ignore[attr-defined]
    queue = SendQueue(transport, limit=limit)
    queue.pauseProducing()
    return queue


def lobby_room(queue: SendQueue) -> int:
    """The lobby lines the queue takes before it refuses one (the cut)."""
    for n in range(10_000):  # bounded
        if not queue.write(LINE):
            return n
    raise AssertionError("never refused")


def private_until_half(queue: SendQueue) -> int:
    """Private lines, as the session lets them through: while at most half
    the limit is held."""
    sent = 0
    while queue.held() <= LIMIT // 2:
        assert queue.write_private(LINE)
        sent += 1
    return sent


def test_private_lines_held_leave_the_lobby_its_whole_room() -> None:
    control = lobby_room(paused_queue())
    queue = paused_queue()
    assert private_until_half(queue) == 100
    assert lobby_room(queue) == control, "the private lines took none of the lobby's room"
    assert queue.held() <= LIMIT + LIMIT // 2 + len(LINE)


def test_a_private_line_past_half_the_limit_counts_like_any_other() -> None:
    """Only private lines written while at most half the limit was held are
    left out: a queue holds at most 1.5 times the limit and a line, however
    many private lines come (a cluster's senders on other nodes are not
    refused by the session)."""
    queue = paused_queue()
    private_until_half(queue)
    more = 0
    while queue.write_private(LINE):
        more += 1
        assert more < 10_000
    assert queue.held() <= LIMIT + LIMIT // 2 + len(LINE)
    assert lobby_room(queue) == 0


def test_private_lines_the_peer_took_are_no_longer_left_out() -> None:
    control = lobby_room(paused_queue())
    queue = paused_queue()
    private_until_half(queue)
    queue.resumeProducing()  # Twisted's buffer drained: the peer has them
    assert queue.write(LINE)  # a lobby line, the last bytes Twisted is said to hold
    queue.pauseProducing()
    assert lobby_room(queue) == control, "no room left over from lines already taken"
    assert queue._private is None, "nothing kept once all were taken"


def test_a_websocket_s_queue_counts_the_private_frames() -> None:
    """What an encoding queue leaves out is what it wrote: the frames."""
    def framed() -> EncodingSendQueue:
        transport = Unread()
        transport.bufferSize = 100  # type: ignore[attr-defined]
        queue = EncodingSendQueue(transport, LIMIT, lambda data: b"\x81\x7e\x03\xe8" + data)
        queue.pauseProducing()
        return queue

    control = lobby_room(framed())
    queue = framed()
    assert private_until_half(queue) == 100
    assert lobby_room(queue) == control


def test_lobby_lines_alone_are_cut_at_the_limit_as_before() -> None:
    queue = paused_queue()
    assert lobby_room(queue) == (LIMIT - 100) // len(LINE)
    assert queue._private is None


@pytest_twisted.inlineCallbacks
def test_on_a_socket_the_lobby_bytes_held_alone_reach_the_limit(loopback: Any) -> Any:
    """The direct path: the peer (4 KiB receive buffer) reads nothing;
    where the stream stands is the kernel's count of what the peer took
    plus what Twisted and the kernel hold."""
    factory, _client = loopback
    server = yield factory.accepted
    queue = SendQueue(server.transport, limit=LIMIT, sndbuf=16384)
    private = 0
    while queue.held() <= LIMIT // 2:
        assert queue.write_private(LINE)
        private += len(LINE)
    lobby = len(LINE) * lobby_room(queue)
    # The peer took a few kB of the private lines: what is held less the
    # private lines still held is the lobby's bytes alone.
    assert LIMIT - len(LINE) < lobby <= LIMIT, (private, lobby)
    server.transport.abortConnection()


# -- the cut decision, through the protocol ---------------------------------------------


def evicted_after(dms: bool) -> int | None:
    """A reader whose kernel takes nothing; twenty senders DM it (if
    C{dms}) until the server says busy; then lobby lines of 4000 bytes
    come.  The number of them the reader outlived (None: it stayed)."""
    sendq = 300_000
    h = Harness(sendq=sendq, max_per_ip=30)
    victim = h.user("victim")
    talker = h.user("talker")
    senders = [h.user(f"sender{i}") for i in range(20)]
    victim.transport.producer.pauseProducing()  # the kernel stopped taking its data
    text = "x" * 4000
    if dms:
        for sender in senders:
            sender.send(*[f"DM victim {text}"] * 3)
        busy = [line for sender in senders for line in sender.take()
                if line.startswith("ERROR busy victim")]
        assert busy, "the DMs reached half of --sendq"
    for n in range(200):  # 800 kB: far more than --sendq
        talker.send(f"MSG {text}")
        if victim.transport.disconnected:
            return n
    return None


def test_dms_do_not_make_a_reader_cheaper_to_cut_with_lobby_lines() -> None:
    control = evicted_after(dms=False)
    assert control is not None, "lobby lines alone still cut a reader at --sendq"
    assert evicted_after(dms=True) == control
