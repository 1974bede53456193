"""
Coming back to the lobby: the lobby messages a paired user missed are
replayed, as HISTORY lines, right after UNPAIRED and before the user list
(docs/protocol.md, "Coming back to the lobby").
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from tests.harness import Conn, Harness
from twisted_chat.server.history import Entry, History
from twisted_chat.server.hub import Hub
from twisted_chat.wire import format_ts

# -- the history's positions ---------------------------------------------------


def entries(n: int, start: int = 0) -> list[Entry]:
    return [Entry(float(i), "a", f"m{i}") for i in range(start, start + n)]


def test_since_a_position_gives_what_came_after_it() -> None:
    history = History(5)
    before = history.position
    assert history.since(before) == []
    for entry in entries(3):
        history.record(entry)
    assert history.since(before) == entries(3)
    middle = history.position
    history.record(Entry(9.0, "b", "later"))
    assert history.since(middle) == [Entry(9.0, "b", "later")]
    assert history.since(history.position) == []


def test_since_gives_at_most_the_last_n() -> None:
    history = History(3, initial=entries(2))
    start = history.position
    for entry in entries(7, start=2):
        history.record(entry)
    assert history.since(start) == entries(3, start=6)


def test_positions_survive_attaching_the_store() -> None:
    history = History(4)
    start = history.position

    class Store:
        def append(self, entry: Entry) -> None:
            pass

        def close(self) -> None:
            pass

    history.attach(Store(), entries(4))  # type: ignore[arg-type]
    assert history.since(history.position) == []
    history.record(Entry(5.0, "a", "new"))
    assert history.since(start) == [*entries(3, start=1), Entry(5.0, "a", "new")]


def test_history_zero_replays_nothing() -> None:
    history = History(0)
    start = history.position
    history.record(Entry(1.0, "a", "x"))
    assert history.since(start) == []


# -- the hub: the UNPAIRED event carries what was missed -------------------------


class Recorder:
    def __init__(self) -> None:
        self.ends: list[tuple[str, str, str, list[str]]] = []

    def unpaired(self, user: object, partner: object, reason: str, missed: list[Entry]) -> None:
        self.ends.append((user.nick, partner.nick, reason,  # type: ignore[attr-defined]
                              [e.text for e in missed]))

    def __getattr__(self, name: str) -> object:
        return lambda *args: None


@pytest.mark.parametrize("how", ["unpair", "leave"])
def test_hub_hands_the_missed_messages_to_unpaired(how: str) -> None:
    rec = Recorder()
    hub = Hub(Clock(), History(2), rec)  # type: ignore[arg-type]
    a, b, c = (hub.register(n, None) for n in "abc")
    hub.say(c, "before")
    hub.pair(a, "b")
    hub.accept(b, "a")
    for text in ("one", "two", "three"):
        hub.say(c, text)
    hub.say(a, "to b only")  # paired: private, not a lobby message
    if how == "unpair":
        hub.unpair(b)
        assert rec.ends == [("b", "a", "left", ["two", "three"]),
                                ("a", "b", "left", ["two", "three"])]
    else:
        hub.leave(a, "quit")
        assert rec.ends == [("b", "a", "disconnected", ["two", "three"])]


# -- the wire, over StringTransport --------------------------------------------


def paired(h: Harness, *nicks: str) -> list[Conn]:
    conns = [h.user(n) for n in nicks]
    conns[0].send(f"PAIR {nicks[1]}")
    conns[1].send(f"ACCEPT {nicks[0]}")
    h.clear_all()
    return conns


def ts(h: Harness) -> str:
    return format_ts(h.clock.seconds())


def test_missed_lobby_lines_come_after_unpaired_before_the_user_list() -> None:
    h = Harness()
    alice, bob, carol = paired(h, "alice", "bob", "carol")
    carol.send("MSG while you were away")
    first = ts(h)
    h.clock.advance(2)
    carol.send("MSG and again")
    second = ts(h)
    assert alice.take() == bob.take() == []
    h.clock.advance(1)
    bob.send("UNPAIR")
    roster = ["USER alice lobby", "USER bob lobby", "USER carol lobby", "USERS 3"]
    replay = [f"HISTORY {first} carol while you were away", f"HISTORY {second} carol and again"]
    assert bob.take() == ["UNPAIRED alice left", *replay, *roster]
    assert alice.take() == ["UNPAIRED bob left", *replay, *roster]
    carol.send("MSG live now")
    assert alice.take() == [f"MSG {ts(h)} carol * live now"]


def test_nothing_said_means_nothing_replayed() -> None:
    h = Harness()
    alice, bob, carol = paired(h, "alice", "bob", "carol")
    carol.send("DM alice not a lobby message")
    alice.send("MSG private")
    h.clear_all()
    alice.send("UNPAIR")
    assert bob.take() == ["UNPAIRED alice left", "USER alice lobby", "USER bob lobby",
                          "USER carol lobby", "USERS 3"]


def test_the_partner_left_behind_gets_the_replay_after_left() -> None:
    h = Harness(history=2)
    alice, bob, carol = paired(h, "alice", "bob", "carol")
    carol.send("MSG one", "MSG two", "MSG three")
    said = ts(h)
    bob.send("BYE gone")
    assert alice.take() == [f"LEFT {said} bob quit gone", "UNPAIRED bob disconnected",
                            f"HISTORY {said} carol two", f"HISTORY {said} carol three",
                            "USER alice lobby", "USER carol lobby", "USERS 2"]


def test_the_replay_may_come_from_a_user_whose_left_came_before_it() -> None:
    """The one exception to "nothing from a user comes after that user's
    LEFT" (docs/protocol.md, "Timing and order"; rev20-docs F1): JOINED and
    LEFT are sent live during the pair, the replay after UNPAIRED, each line
    with its original time."""
    h = Harness()
    alice, _ = paired(h, "alice", "bob")
    h.clock.advance(1)
    joined = ts(h)
    dave = h.connect()
    dave.send("NICK dave")
    h.clock.advance(1)
    said = ts(h)
    dave.send("MSG hi from dave")
    h.clock.advance(1)
    left = ts(h)
    dave.send("BYE bye now")
    h.clock.advance(1)
    alice.send("UNPAIR")
    assert alice.take() == [f"JOINED {joined} dave", f"LEFT {left} dave quit bye now",
                            "UNPAIRED bob left", f"HISTORY {said} dave hi from dave",
                            "USER alice lobby", "USER bob lobby", "USERS 2"]


def test_lines_of_the_same_turn_are_never_both_replayed_and_live() -> None:
    """Lobby lines gathered in the turn the pair begins or ends: each goes
    either live or into the replay, by when the server handled it."""
    h = Harness()
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    alice.send("PAIR bob")
    h.clear_all()
    # One reactor turn: a lobby line, the pairing, another lobby line.
    carol.transport.read(b"MSG before\r\n")
    bob.transport.read(b"ACCEPT alice\r\n")
    carol.transport.read(b"MSG during\r\n")
    h.clock.advance(0)
    at = ts(h)
    assert alice.take() == [f"MSG {at} carol * before", "PAIRED bob"]
    # One turn: a lobby line, the end of the pair, another lobby line.
    carol.transport.read(b"MSG still during\r\n")
    alice.transport.read(b"UNPAIR\r\n")
    carol.transport.read(b"MSG after\r\n")
    h.clock.advance(0)
    assert alice.take() == ["UNPAIRED bob left", f"HISTORY {at} carol during",
                            f"HISTORY {at} carol still during", "USER alice lobby",
                            "USER bob lobby", "USER carol lobby", "USERS 3",
                            f"MSG {at} carol * after"]


def test_paced_fan_out_neither_loses_nor_repeats() -> None:
    """With the fan-out's pacing on, lines wait for the gap across the pairing."""
    h = Harness(fanout_delay=0.01)
    alice, bob, carol = (h.user(n) for n in ("alice", "bob", "carol"))
    carol.send("MSG warm up")  # a fan-out, so the next lines wait for the gap
    carol.send("MSG waits")
    alice.send("PAIR bob")
    bob.send("ACCEPT alice")
    carol.send("MSG missed")
    alice.send("UNPAIR")
    carol.send("MSG live")
    h.clock.advance(0.1)
    texts = [line.split(" ", 2)[2] for line in alice.take()
             if line.startswith(("MSG", "HISTORY"))]
    assert texts == ["carol * warm up", "carol * waits", "carol missed", "carol * live"]


# -- a property: every lobby message reaches every user exactly once -------------

NICKS = ("u0", "u1", "u2")
who = st.sampled_from(range(len(NICKS)))
action = st.one_of(
    st.tuples(st.just("say"), who),
    st.tuples(st.just("pair"), who, who),
    st.tuples(st.just("accept"), who, who),
    st.tuples(st.just("couple"), who, who),  # PAIR and ACCEPT in one turn
    st.tuples(st.just("unpair"), who),
    st.tuples(st.just("bye"), who),
    st.tuples(st.just("turn"),),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(action, max_size=40), st.sampled_from([0.0, 0.01]))
def test_each_lobby_message_is_seen_once_live_or_replayed(
        actions: list[tuple[object, ...]], delay: float) -> None:
    h = Harness(history=1000, fanout_delay=delay)
    conns = [h.user(n) for n in NICKS]
    said: list[str] = []
    gone: list[Conn] = []  # said BYE: out of the check
    count = itertools.count()
    for act in actions:
        kind, *who = act
        if kind == "turn":
            h.clock.advance(0.004)
            continue
        conn = conns[who[0]]  # type: ignore[index]
        if conn in gone:
            continue
        if kind == "say":
            text = f"m{next(count)}"
            # Only a lobby line if not paired (else it goes to the partner).
            if conn.protocol.user.partner is None:
                said.append(text)
            line = f"MSG {text}"
        elif kind in ("pair", "accept"):
            line = f"{kind.upper()} {NICKS[who[1]]}"  # type: ignore[index,attr-defined]
        elif kind == "couple":
            conn.transport.read(f"PAIR {NICKS[who[1]]}\r\n".encode())  # type: ignore[index]
            conn = conns[who[1]]  # type: ignore[index]
            line = f"ACCEPT {NICKS[who[0]]}"  # type: ignore[index]
        elif kind == "bye":
            gone.append(conn)
            line = "BYE"
        else:
            line = "UNPAIR"
        conn.transport.read(line.encode() + b"\r\n")  # same reactor turn
    for conn in conns:  # everyone back to the lobby, so every replay is in
        user = conn.protocol.user
        if conn not in gone and user.partner is not None:
            conn.transport.read(b"UNPAIR\r\n")
    h.clock.advance(0.1)
    for conn in conns:
        if conn in gone:
            continue
        seen = []
        for line in conn.take():
            if line.startswith("MSG ") and line.split(" ")[3] == "*":
                seen.append(line.split(" ", 4)[4])
            elif line.startswith("HISTORY "):
                seen.append(line.split(" ", 3)[3])
        assert seen == said
