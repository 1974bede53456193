"""
One server: a C{MSG} held behind a password check (C{REGISTER}, C{PASSWD})
goes where its sender was shown it would go when it arrived, or nowhere
(state.LocalState.say, state.PairsShown; docs/protocol.md, "Lobby, direct
messages, pairs").  fix16p: bob, paired with alice, sent C{REGISTER} then a
line for alice; alice's C{UNPAIR} came during the hash, and bob's line went
to the lobby and its history.  StringTransport and a fake clock
(tests/harness.py); the password threads are tests/test_login.py's
stand-ins, each job held until released.
"""

from __future__ import annotations

from tests.harness import Conn, Harness
from tests.test_login import HeldWork, harness
from twisted_chat.server.state import HELD_KEEP, LocalState

REGISTER = "REGISTER correct-horse-battery"


def _online(h: Harness, work: HeldWork, nick: str) -> Conn:
    """A connection READY as C{nick} (its account lookup released)."""
    conn = h.connect()
    conn.send(f"NICK {nick}")
    work.release()
    assert f"READY {nick}" in conn.take()
    return conn


def _registered(h: Harness, work: HeldWork) -> None:
    """The REGISTER waiting now is decided: its lookup, hash and write run."""
    for _ in range(3):
        work.release()
        h.clock.advance(0)


def _three() -> tuple[Harness, HeldWork, Conn, Conn, Conn]:
    work = HeldWork()
    h = harness(work=work, ip_lobby_rate=20.0)  # the lobby budget on: it is given back
    bob, alice, carol = (_online(h, work, nick) for nick in ("bob", "alice", "carol"))
    return h, work, bob, alice, carol


def _said(conn: Conn, text: str) -> list[str]:
    return [line for line in conn.take() if line.startswith("MSG") and line.endswith(text)]


def test_a_line_for_the_partner_held_while_the_pair_ended_reaches_nobody() -> None:
    """bob's line for alice arrived before alice's UNPAIR, held behind his
    REGISTER: handled after it, it is answered ERROR not-paired, and goes
    to nobody (not carol, not the history, not alice); it spends no lobby
    token.  His next line, sent after UNPAIRED, goes to the lobby."""
    h, work, bob, alice, carol = _three()
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    h.clear_all()
    bob.send(REGISTER, "MSG for alice")
    assert bob.protocol.held_or_waiting()
    h.clock.advance(1)
    alice.send("UNPAIR")
    tokens = bob.protocol.limits.lobby._tokens
    _registered(h, work)
    lines = bob.take()
    assert "REGISTERED bob" in lines
    assert ("ERROR not-paired not sent: you were no longer paired with alice when it came "
            "to be delivered (the pair ended while your password was checked); "
            "send it again") in lines
    assert not [line for line in lines if line.startswith("MSG")]
    assert not _said(carol, "for alice") and not _said(alice, "for alice")
    assert not any(e.text == "for alice" for e in h.factory.history.recent())
    assert tokens == 40 and bob.protocol.limits.lobby._tokens == tokens  # not spent
    bob.send("MSG hello all")
    assert [line.split()[2:] for line in _said(carol, "hello all")] == [
        ["bob", "*", "hello", "all"]]


def test_a_lobby_line_held_while_an_accept_paired_its_sender_reaches_nobody() -> None:
    """The mirror: bob invited carol and sent REGISTER then a lobby line;
    carol's ACCEPT came during the hash.  The line is answered ERROR busy,
    and carol (his partner now) gets nothing, nor does alice in the lobby."""
    h, work, bob, alice, carol = _three()
    bob.send("PAIR carol")
    h.clear_all()
    bob.send(REGISTER, "MSG to everyone")
    h.clock.advance(1)
    carol.send("ACCEPT bob")
    _registered(h, work)
    lines = bob.take()
    assert "PAIRED carol" in lines
    assert ("ERROR busy not sent: it was meant for the lobby and you were paired with "
            "carol when it came to be delivered; send it again") in lines
    assert not _said(carol, "to everyone") and not _said(alice, "to everyone")
    assert not any(e.text == "to everyone" for e in h.factory.history.recent())


def test_a_line_held_behind_the_senders_own_unpair_goes_to_the_lobby() -> None:
    """bob's own UNPAIR, held behind his REGISTER with a MSG after it: one
    server sends that MSG to the lobby, as it would unheld (the pair ended
    before it, by his own line); nothing is kept of a change written to a
    connection not waiting (alice's)."""
    h, work, bob, alice, carol = _three()
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    h.clear_all()
    bob.send(REGISTER, "UNPAIR", "MSG back in the lobby")
    h.clock.advance(1)
    _registered(h, work)
    for conn in (carol, alice):  # alice is in the lobby again too
        assert [line.split()[2:4] for line in _said(conn, "back in the lobby")] == [
            ["bob", "*"]]
    state = h.factory.state
    assert isinstance(state, LocalState) and len(state.pairs_shown) == 0


def _shown_unpaired_while_waiting() -> tuple[Harness, HeldWork, Conn, Conn, LocalState]:
    """bob, paired with alice, waits on his REGISTER; alice's UNPAIR is
    written to him meanwhile: one change kept.  Returns the harness, the
    password jobs, bob, carol and the state."""
    h, work, bob, alice, carol = _three()
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    bob.send(REGISTER)
    alice.send("UNPAIR")
    state = h.factory.state
    assert isinstance(state, LocalState) and len(state.pairs_shown) == 1
    return h, work, bob, carol, state


def test_what_a_waiting_connection_was_shown_is_kept_for_held_keep() -> None:
    """A change written to a waiting connection is kept HELD_KEEP seconds
    (every lobby line on the server asks it meanwhile), then forgotten."""
    h, work, _bob, carol, state = _shown_unpaired_while_waiting()
    _registered(h, work)
    h.clock.advance(HELD_KEEP)
    carol.send("MSG still here")
    assert len(state.pairs_shown) == 0


def test_a_closed_connection_leaves_nothing_kept() -> None:
    """rev16-fix #4: what a waiting connection was shown is let go when it
    closes, not HELD_KEEP later at the next line."""
    h, work, bob, _carol, state = _shown_unpaired_while_waiting()
    bob.drop()
    _registered(h, work)
    assert len(state.pairs_shown) == 0


def test_a_line_for_the_former_partner_is_not_sent_before_the_lobby_rate_judges_it() -> None:
    """rev16-fix #5: bob's line for alice, held behind his REGISTER while
    alice unpaired, meets his address's lobby budget spent (by carol, on
    the same address): it is answered "not sent" as it would be otherwise,
    not ERROR flood for lobby messages (before: the flood answer, and a
    flood penalty)."""
    work = HeldWork()
    h = harness(work=work, ip_lobby_rate=0.1, ip_lobby_burst=1)
    bob, alice, carol = (_online(h, work, nick) for nick in ("bob", "alice", "carol"))
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    h.clear_all()
    bob.send(REGISTER, "MSG for alice")
    h.clock.advance(1)
    alice.send("UNPAIR")
    carol.send("MSG the address's one lobby line")
    assert _said(carol, "one lobby line")
    _registered(h, work)
    lines = bob.take()
    assert not [line for line in lines if line.startswith("ERROR flood")], lines
    assert ("ERROR not-paired not sent: you were no longer paired with alice when it came "
            "to be delivered (the pair ended while your password was checked); "
            "send it again") in lines


def test_a_lobby_line_is_not_sent_before_the_new_partners_queue_judges_it() -> None:
    """The mirror: bob's lobby line, held while carol's ACCEPT paired him,
    meets carol more than half of --sendq behind reading: it is answered
    "not sent: meant for the lobby", not as a private line refused for her
    queue (before: ERROR busy carol is not reading fast enough)."""
    work = HeldWork()
    h = harness(work=work, sendq=2 * 65536 + 8000)  # half: 69,536
    bob, alice, carol = (_online(h, work, nick) for nick in ("bob", "alice", "carol"))
    bob.send("PAIR carol")
    h.clear_all()
    bob.send(REGISTER, "MSG to everyone")
    h.clock.advance(1)
    carol.send("ACCEPT bob")
    carol.transport.producer.pauseProducing()  # the kernel stopped taking its data
    for _ in range(2):
        alice.send(f"DM carol {'x' * 4000}")
    _registered(h, work)
    lines = bob.take()
    assert [line for line in lines if line.startswith("ERROR")] == [
        "ERROR busy not sent: it was meant for the lobby and you were paired with "
        "carol when it came to be delivered; send it again"], lines
