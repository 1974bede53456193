"""
Pacing: a script's lines, or a paste, go no faster than the server's flood
control lets them (docs/protocol.md, "Flood rule"), and none is lost.
"""

from __future__ import annotations

import pytest

from twisted_chat.client.pace import BURST, MIN_RATE, RATE, Pacer, server_limits
from twisted_chat.client.protocol import Outcome, State
from twisted_chat.server.flood import FloodMeter

from .helpers import TS, Session, session

STEP = 0.05


def drain(s: Session, seconds: float) -> list[tuple[float, str]]:
    """What the client writes, with when, as the clock runs for C{seconds}."""
    out = [(s.clock.seconds(), line) for line in s.sent()]
    for _ in range(round(seconds / STEP)):
        s.clock.advance(STEP)
        out += [(s.clock.seconds(), line) for line in s.sent()]
    return out


def dropped_by(meter: FloodMeter, sent: list[tuple[float, str]]) -> list[str]:
    """The lines a server with this flood control would drop."""
    tokens, since, dropped = meter.full, 0.0, []
    for at, line in sent:
        allowed, tokens = meter.spend(tokens, since, at)
        since = at
        if not allowed:
            dropped.append(line)
    return dropped


def test_a_40_line_script_stays_under_the_default_flood_control() -> None:
    """It used to write all 40 at once: the server (10 lines/s, bursts of
    20) dropped 22 of them and then cut the script off with BYE flood."""
    s = session("reporter", interactive=False)
    s.receive("HELLO chat/1 x", "NICK")
    report = [f"report line {n}" for n in range(1, 41)]
    s.type(*report)
    s.client.input_ended()
    s.receive("READY reporter")
    sent = drain(s, 30)
    assert [line for _, line in sent] == ["NICK reporter"] + [f"MSG {r}" for r in report] + [
        "BYE"
    ]
    assert dropped_by(FloodMeter(10, 20), sent) == []
    # A burst at once, then RATE lines a second.
    assert sum(1 for at, _ in sent if at == 0) == BURST
    assert sent[-2][0] == pytest.approx((40 + 1 - BURST) / RATE, abs=STEP)


def test_a_paste_on_a_terminal_is_paced_in_order() -> None:
    s = session()
    s.ready()
    pasted = [f"line {n}" for n in range(30)]
    s.type(*pasted, "/users", "last")
    first = s.sent()
    assert len(first) == BURST - 1 and s.client._queue  # NICK was one; the rest waits
    sent = [line for _, line in drain(s, 10)]
    assert first + sent == [f"MSG {p}" for p in pasted] + ["USERS", "MSG last"]


def test_error_flood_slows_down_to_half_what_the_server_names() -> None:
    """A server with tighter flood control than the defaults says its
    limits when it drops a line: the rest goes at half of them."""
    s = session()
    s.ready()
    s.type(*(f"line {n}" for n in range(20)))
    assert len(s.sent()) == BURST - 1  # NICK was one
    s.screen.take()
    s.receive(
        "ERROR flood slow down: at most 2 lines per second (bursts of 4); lines are being dropped"
    )
    assert s.screen.take() == [
        "! You are sending too fast; that line was dropped.",
        "* Sending at most 1 line per second from now on.",
    ]
    sent = drain(s, 20)
    assert [line for _, line in sent] == [f"MSG line {n}" for n in range(BURST - 1, 20)]
    start = sent[0][0]
    assert start == pytest.approx(1.0, abs=STEP)  # its bucket refills first
    assert dropped_by(FloodMeter(2, 4), [(at - start, line) for at, line in sent]) == []
    assert sent[-1][0] - start == pytest.approx(len(sent) - 1, abs=2 * STEP)


def test_a_line_sent_after_a_dropped_one_is_not_lost_and_nothing_runs_after_the_end() -> None:
    s = session()
    s.ready()
    s.type(*(f"line {n}" for n in range(20)))
    s.sent()
    s.client.quit()
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    s.lose()
    assert s.client.state is State.CLOSED
    assert s.clock.getDelayedCalls() == []


def serve_tightly(s: Session, meter: FloodMeter, seconds: float) -> list[str]:
    """
    Run the clock for C{seconds} as a server with this flood control would
    answer: a copy of each message it takes, C{ERROR flood} for the first line
    it drops in a second (the others silently), C{BYE quit} for C{BYE}.  The
    message lines it dropped.
    """
    tokens, since, told, dropped = meter.full - 1, 0.0, -1.0, []  # NICK was one line
    for _ in range(round(seconds / STEP)):
        for line in s.sent():
            at = s.clock.seconds()
            allowed, tokens = meter.spend(tokens, since, at)
            since = at
            if line == "BYE":
                s.receive("BYE quit")
            elif not allowed:
                dropped.append(line)
                if at - told >= 1:
                    told = at
                    s.receive(
                        "ERROR flood slow down: at most 2 lines per second (bursts of 5); "
                        "lines are being dropped"
                    )
            elif line.startswith("MSG "):
                s.receive(f"MSG {TS} {s.client.nick} * {line[4:]}")
        s.clock.advance(STEP)
    return dropped


def test_a_script_whose_lines_a_tighter_server_dropped_says_how_many_and_exits_1() -> None:
    """review rev3cli P: with --flood-rate 2 --flood-burst 5 a 40-line script
    lost 5 lines, was told of "that line" once, and exited 0."""
    s = session("reporter", interactive=False)
    s.ready("reporter")
    s.type(*(f"report line {n}" for n in range(1, 41)))
    s.client.input_ended()
    dropped = serve_tightly(s, FloodMeter(2, 5), 60)
    assert len(dropped) == 5
    assert s.screen.text().count("that line was dropped") == 1  # one ERROR for five
    assert s.lose() == Outcome(
        1,
        "5 of the 40 messages sent were not accepted by the server "
        "(it dropped lines sent too fast).",
    )


def test_the_same_script_under_the_default_flood_control_exits_0() -> None:
    s = session("reporter", interactive=False)
    s.ready("reporter")
    s.type(*(f"report line {n}" for n in range(1, 41)))
    s.client.input_ended()
    assert serve_tightly(s, FloodMeter(10, 20), 30) == []
    assert s.lose() == Outcome(0)


def test_messages_without_a_copy_back_are_counted_whatever_ends_the_session() -> None:
    s = session("robot", interactive=False)
    s.ready("robot")
    s.type("one", "two")
    s.receive(f"MSG {TS} robot * one")
    s.receive("BYE shutdown")
    assert s.lose() == Outcome(
        1,
        "The server is shutting down. 1 of the 2 messages sent were not confirmed by the "
        "server.",
    )


def test_what_the_server_says_of_its_limits() -> None:
    assert server_limits(
        "slow down: at most 10 lines per second (bursts of 20); lines are being dropped"
    ) == (10.0, 20)
    assert server_limits(
        "slow down: at most 2.5 lobby messages per second from your address "
        "(bursts of 40); lines are being dropped"
    ) == (2.5, 40)
    assert server_limits("slow down") is None


def test_the_pacer_halves_its_rate_down_to_a_floor_and_ignores_busy() -> None:
    now = [0.0]
    pacer = Pacer(lambda: now[0])
    assert pacer.wait() == 0
    assert not pacer.slow_down("the server is busy; send it again in a moment")
    assert (pacer.rate, pacer.burst, pacer.wait()) == (RATE, BURST, 0)
    assert pacer.slow_down("slow down")
    assert pacer.rate == RATE / 2 and pacer.wait() == pytest.approx(1 / pacer.rate)
    for _ in range(10):
        pacer.slow_down("slow down")
    assert pacer.rate == MIN_RATE
    assert not pacer.slow_down("slow down")
    now[0] += 1000
    assert pacer.wait() == 0


def test_a_token_a_hair_short_after_float_refills_counts_as_one() -> None:
    """Refilled in 0.05 s steps at 5 a second, the bucket holds
    0.9999999999999998 where it should hold 1: the wait of 4e-17 s that
    leaves is no later than now on a clock, so the pump spun for ever."""
    now = [0.0]
    pacer = Pacer(lambda: now[0])
    for _ in range(BURST):
        pacer.spend()
    for step in range(1, 9):
        now[0] += 0.05
        if step % 4 == 0:
            assert pacer.wait() == 0
            pacer.spend()
