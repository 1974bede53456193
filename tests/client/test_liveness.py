"""
The client notices a server that stopped answering (frozen, or a dead
network path): it PINGs it, tells the user, and tells again once it answers.
"""

from __future__ import annotations

from twisted_chat.client.liveness import Liveness

from .helpers import TS, session

WAIT = Liveness.ANSWER_WAIT
PING_WAIT = Liveness.PING_WAIT
PING = "PING are you there?"


def test_a_silent_server_is_pinged_then_the_user_is_told() -> None:
    """A frozen server gave no sign at all: what the user typed just
    disappeared (a lobby line shows only once the server sends it back)."""
    s = session()
    s.ready()
    s.type("is anyone there?")
    s.clock.advance(1)
    s.type("/users")
    assert s.sent() == ["MSG is anyone there?", "USERS"]
    s.clock.advance(WAIT - 1.5)
    assert s.sent() == []
    s.clock.advance(0.5)
    assert s.sent() == [PING]
    assert s.screen.take() == []
    s.clock.advance(PING_WAIT)
    assert s.screen.take() == [
        f"! No answer from chat.test:7000 for {WAIT + PING_WAIT:g} seconds: the last 2 lines "
        "you sent may not have arrived. The client keeps waiting; Ctrl-C leaves."
    ]
    s.clock.advance(60)  # said once
    assert s.screen.take() == [] and s.sent() == []
    s.receive(f"MSG {TS} alice * is anyone there?")
    assert s.screen.take() == [
        f"* chat.test:7000 answers again, after {WAIT + PING_WAIT + 60:g} seconds.",
        "[14:03] <alice> is anyone there?",
    ]
    assert s.client.state.name == "READY"  # the connection was kept


def test_a_server_that_answers_is_not_pinged() -> None:
    s = session()
    s.ready()
    for _ in range(5):
        s.type("hello")
        s.clock.advance(WAIT - 1)
        s.receive(f"MSG {TS} alice * hello")  # its copy, before the wait is over
    s.clock.advance(60)
    assert s.sent() == ["MSG hello"] * 5
    # The PING's answer is an answer too: nothing is said.
    s.type("hello again")
    s.clock.advance(WAIT)
    assert s.sent() == ["MSG hello again", PING]
    s.receive("PONG are you there?")
    s.clock.advance(60)
    assert s.sent() == []
    assert not [line for line in s.screen.lines if "No answer" in line]


def test_the_wait_counts_from_the_first_line_left_unanswered() -> None:
    s = session()
    s.ready()
    s.type("one")
    s.clock.advance(1)
    s.receive(f"MSG {TS} alice * one")
    s.clock.advance(3)
    s.type("two")  # the server froze after its copy of "one"
    s.clock.advance(WAIT - 0.5)
    assert s.sent() == ["MSG one", "MSG two"]
    s.clock.advance(0.5)
    assert s.sent() == [PING]


def test_no_ping_for_what_needs_no_answer_nor_while_the_client_is_not_reading() -> None:
    s = session()
    s.ready()
    s.receive("PING 1")  # our PONG wants no answer
    s.clock.advance(WAIT * 3)
    assert s.sent() == ["PONG 1"]
    # While stdout is full the server is not read: its answer may be there.
    s.client.reading.hold("display")
    s.type("hello")
    s.clock.advance(WAIT * 3)
    assert s.sent() == ["MSG hello"]
    s.client.reading.release("display")
    s.clock.advance(WAIT)
    assert s.sent() == [PING]


def test_not_before_joining_nor_after_the_goodbye() -> None:
    s = session(None)
    s.receive("HELLO chat/1 x", "NICK")
    s.type("alice")
    assert s.sent() == ["NICK alice"]
    s.clock.advance(WAIT * 2)  # the login's own answer timeout covers this
    assert PING not in s.sent()
    s.receive("READY alice", "USER alice lobby", "USERS 1")
    s.type("bye all")
    s.type("/quit")
    s.clock.advance(s.client.QUIT_TIMEOUT - 0.1)
    assert s.sent() == ["MSG bye all", "BYE"]
