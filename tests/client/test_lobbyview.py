"""
L{twisted_chat.client.lobbyview}: the lobby messages remembered across
connections and the joins and leaves held while paired, in bounded memory.
"""

from __future__ import annotations

from twisted_chat.client import render
from twisted_chat.client.lobbyview import HeldNotices, ShownLobby


def t(minute: int) -> str:
    return f"2026-11-22T14:{minute:02d}:00.000Z"


def test_a_repeat_is_time_sender_and_text() -> None:
    shown = ShownLobby()
    shown.shown(t(1), "bob", "hi")
    repeats = shown.repeats()
    assert not repeats.repeats(t(2), "bob", "hi")  # the same text later: a new message
    assert not repeats.repeats(t(1), "carol", "hi")
    assert not repeats.repeats(t(1), "bob", "hi!")
    assert repeats.repeats(t(1), "bob", "hi")
    assert not repeats.repeats(t(1), "bob", "hi")  # shown once, repeated once


def test_two_identical_messages_are_two() -> None:
    shown = ShownLobby()
    shown.shown(t(1), "bob", "hi")
    shown.shown(t(1), "bob", "hi")
    repeats = shown.repeats()
    assert [repeats.repeats(t(1), "bob", "hi") for _ in range(3)] == [True, True, False]


def test_each_connection_gets_its_own_count() -> None:
    shown = ShownLobby()
    shown.shown(t(1), "bob", "hi")
    assert shown.repeats().repeats(t(1), "bob", "hi")
    assert shown.repeats().repeats(t(1), "bob", "hi")


def test_the_memory_is_bounded_and_what_it_forgot_is_older() -> None:
    shown = ShownLobby(limit=3)
    for minute in range(1, 11):
        shown.shown(t(minute), "bob", f"line {minute}")
    assert len(shown) == 3
    repeats = shown.repeats()
    # Forgotten, but no newer than the newest one forgotten: it was shown.
    assert repeats.repeats(t(7), "bob", "line 7")
    assert repeats.repeats(t(5), "carol", "never seen, but older than what is kept")
    assert repeats.repeats(t(10), "bob", "line 10")  # remembered
    assert not repeats.repeats(t(11), "bob", "new")
    assert not repeats.repeats(t(8), "carol", "newer than the floor, not shown")


def test_an_unreadable_time_is_compared_as_text_only() -> None:
    shown = ShownLobby(limit=1)
    shown.shown("garbage", "bob", "a")
    shown.shown("garbage", "bob", "b")  # "a" forgotten; no time for a floor
    repeats = shown.repeats()
    assert not repeats.repeats(t(1), "carol", "old")
    assert not repeats.repeats("garbage", "bob", "a")
    assert repeats.repeats("garbage", "bob", "b")


def test_held_notices_come_out_up_to_a_time_then_the_rest() -> None:
    held = HeldNotices()
    for minute in (1, 3, 5):
        held.hold(t(minute), render.notice(f"at {minute}"))
    out: list[str] = []
    held.release(lambda line: out.append(render.plain(line)), until=t(3))
    assert out == ["* at 1", "* at 3"]
    held.release(lambda line: out.append(render.plain(line)), until="not a time")
    assert len(out) == 2
    held.release(lambda line: out.append(render.plain(line)))
    assert out == ["* at 1", "* at 3", "* at 5"]
    assert len(held) == 0


def test_held_notices_are_bounded() -> None:
    held = HeldNotices(limit=2)
    for minute in (1, 2, 3):
        held.hold(t(minute), render.notice(f"at {minute}"))
    out: list[str] = []
    held.release(lambda line: out.append(render.plain(line)))
    assert out[:2] == ["* at 2", "* at 3"]  # the oldest went first
    # ... and are counted, not dropped silently.
    assert out[2:] == [
        "* 1 join or leave in the lobby before these was not kept: at most 2 are held "
        "during a private conversation."
    ]


def test_the_count_of_held_notices_not_kept_comes_after_the_last_one_shown() -> None:
    held = HeldNotices(limit=2)
    for minute in range(1, 6):
        held.hold(t(minute), render.notice(f"at {minute}"))
    out: list[str] = []
    held.release(lambda line: out.append(render.plain(line)), until=t(4))
    assert out == ["* at 4"]  # one still held: not said yet
    held.release(lambda line: out.append(render.plain(line)), until=t(5))
    assert out == [
        "* at 4",
        "* at 5",
        "* 3 joins and leaves in the lobby before these were not kept: at most 2 are held "
        "during a private conversation.",
    ]
    held.hold(t(6), render.notice("at 6"))  # a new pair: nothing went
    held.release(lambda line: out.append(render.plain(line)))
    assert out[3:] == ["* at 6"]  # said once
