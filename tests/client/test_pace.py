"""
Pacing: a script's lines, or a paste, go no faster than the server's flood
control lets them (docs/protocol.md, "Limits": the flood rule), and none is
lost.
"""

from __future__ import annotations

import pytest

from twisted_chat.client.pace import BURST, MIN_RATE, RATE, Pacer, server_limits
from twisted_chat.client.protocol import ChatClient
from twisted_chat.client.session import Outcome, State
from twisted_chat.server.limits.flood import FloodMeter
from twisted_chat.wire import LIST_COST_VERBS, list_cost

from .helpers import TS, Keyboard, Session, session

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
    s = session("reporter", interactive=False, watch=False)  # no copies come back: not PINGed
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
    s = session(watch=False)  # no copies come back: not PINGed
    s.ready()
    pasted = [f"line {n}" for n in range(30)]
    s.type(*pasted, "/users", "last")
    first = s.sent()
    assert len(first) == BURST - 1 and s.client.outbox  # NICK was one; the rest waits
    sent = [line for _, line in drain(s, 10)]
    assert first + sent == [f"MSG {p}" for p in pasted] + ["USERS", "MSG last"]


def test_error_flood_slows_down_to_half_what_the_server_names() -> None:
    """A server with tighter flood control than the defaults says its
    limits when it drops a line: the rest goes at half of them."""
    s = session(watch=False)  # no copies come back: not PINGed
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


@pytest.mark.parametrize("verb", LIST_COST_VERBS)
def test_the_user_list_s_cost_does_not_slow_the_lines_down(verb: str) -> None:
    """ERROR flood "slow down: USERS costs one line per ..." refuses that
    one command for the user list its answer would send (a cost per
    command, docs/protocol.md "Limits"), not a line dropped for the send
    rate: the lines waiting go on at the client's own pace, and it is said
    as what it is.  The client halved its rate ("Sending at most 2.5 lines
    per second") and said "that line was dropped"."""
    s = session(watch=False)  # no copies come back: not PINGed
    s.ready()
    s.type(*(f"line {n}" for n in range(20)))
    assert len(s.sent()) == BURST - 1  # NICK was one
    s.screen.take()
    text = (f"{list_cost(verb)}4096 bytes of the user list (123456 bytes now), at most "
            "20, at 10 lines per second; try again in a moment")
    s.receive(f"ERROR flood {text}")
    assert s.screen.take() == [f"! The server did not do /{verb.lower()}: {text}."]
    assert s.client.outbox.rate == RATE
    sent = drain(s, 20)
    assert [line for _, line in sent] == [f"MSG line {n}" for n in range(BURST - 1, 20)]
    assert sent[-1][0] - sent[0][0] == pytest.approx((len(sent) - 1) / RATE, abs=2 * STEP)


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
    named = ", ".join(f"“{line[4:]}”" for line in dropped)  # those very lines
    assert s.lose() == Outcome(
        1,
        "5 of the 40 messages sent were not accepted by the server "
        f"(it dropped lines sent too fast): {named}.",
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
        "The server is shutting down. 1 of the 2 messages sent was not confirmed by the "
        "server: “two”.",
    )


def echo(s: Session, seconds: float) -> list[str]:
    """Run the clock as a server that takes every line; what was sent."""
    out: list[str] = []
    for _ in range(round(seconds / STEP)):
        for line in s.sent():
            out.append(line)
            if line.startswith("MSG "):
                s.receive(f"MSG {TS} {s.client.nick} * {line[4:]}")
            elif line == "BYE":
                s.receive("BYE quit")
        s.clock.advance(STEP)
    return out


def test_ctrl_d_after_a_paste_sends_what_waits_then_leaves() -> None:
    """review rev3cli L: Ctrl-D right after a 30-line paste sent 11 lines,
    dropped 19 without a word, and exited 0."""
    s = session("carol")
    s.ready("carol")
    pasted = [f"report line {n}" for n in range(30)]
    s.type(*pasted)
    s.screen.take()
    s.client.end_of_typing()  # Ctrl-D on the empty line
    assert s.screen.take() == [
        "* Sending the 21 lines still waiting (about 5 s), then leaving; "
        "Ctrl-C leaves now without them."
    ]
    sent = echo(s, 10)
    assert sent == [f"MSG {p}" for p in pasted] + ["BYE"]
    assert s.lose() == Outcome(0)


def test_ctrl_c_after_a_paste_says_how_many_lines_were_not_sent() -> None:
    s = session("carol")
    s.ready("carol")
    s.type(*(f"report line {n}" for n in range(30)), "", " \t")  # blank lines send nothing
    assert len(echo(s, STEP)) == BURST - 1  # NICK was one
    s.client.interrupt()  # Ctrl-C: leave now
    assert echo(s, STEP) == ["BYE"]
    assert s.lose() == Outcome(
        130, "Interrupted. 21 lines still waiting to be sent were not sent."
    )


def test_a_second_ctrl_d_leaves_now() -> None:
    s = session("carol")
    s.ready("carol")
    s.type(*(f"report line {n}" for n in range(30)))
    s.client.end_of_typing()
    sent = echo(s, 1)  # the burst, then 5 a second
    s.client.end_of_typing()
    sent += echo(s, STEP)
    assert sent[-1] == "BYE" and len(sent) - 1 == BURST - 1 + 5
    assert s.lose() == Outcome(
        130, "Interrupted. 16 lines still waiting to be sent were not sent."
    )


def test_ctrl_d_sends_for_a_bounded_time_then_counts_the_rest() -> None:
    s = session("carol")
    s.ready("carol")
    s.receive("ERROR flood at most 1 line per second (bursts of 1)")  # down to 0.5/s
    s.type(*(f"report line {n}" for n in range(100)))
    s.client.end_of_typing()
    sent = echo(s, ChatClient.DRAIN_TIMEOUT + 1)
    assert sent[-1] == "BYE"
    messages = len(sent) - 1
    assert 0 < messages < 100
    outcome = s.lose()
    assert outcome == Outcome(
        1, f"{100 - messages} lines still waiting to be sent were not sent."
    )


def test_lines_waiting_when_the_server_ends_the_session_are_counted() -> None:
    s = session("carol", interactive=False)
    s.ready("carol")
    s.type(*(f"report line {n}" for n in range(30)))
    assert len(echo(s, STEP)) == BURST - 1
    s.receive("BYE shutdown")
    assert s.lose() == Outcome(
        1, "The server is shutting down. 21 lines still waiting to be sent were not sent."
    )


def test_ctrl_d_with_nothing_waiting_is_ctrl_c() -> None:
    s = session("carol")
    s.ready("carol")
    s.type(*([""] * 12))  # blank lines: nothing to wait for
    s.client.end_of_typing()
    assert s.sent() == ["BYE"]
    s.receive("BYE quit")
    assert s.lose() == Outcome(0)


def test_what_the_server_says_of_its_limits() -> None:
    assert server_limits(
        "slow down: at most 10 lines per second (bursts of 20); lines are being dropped"
    ) == (10.0, 20)
    assert server_limits(
        "slow down: at most 2.5 lobby messages per second from your address "
        "(bursts of 40); lines are being dropped"
    ) == (2.5, 40)
    assert server_limits("slow down") is None


def test_the_pacer_halves_its_rate_down_to_a_floor() -> None:
    now = [0.0]
    pacer = Pacer(lambda: now[0])
    assert pacer.wait() == 0
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


def test_a_long_paste_on_a_terminal_waits_for_enter_and_esc_drops_it() -> None:
    s = session(watch=False)  # no copies come back: not PINGed
    s.ready()
    kb = Keyboard(width=100)
    kb.attach(s.client)
    paste = "".join(f"oops {i}\r" for i in range(60)).encode()
    kb.keys(b"\x1b[200~" + paste + b"\x1b[201~")
    assert s.sent() == []
    assert "* You pasted 60 lines (about 12 s to send): Enter sends them, Esc drops them." in (
        kb.rows()
    )
    kb.keys(b"\x1b")
    s.clock.advance(60)
    assert s.sent() == []
    kb.keys(b"\x1b[200~" + paste + b"\x1b[201~")
    kb.keys(b"\r")
    assert s.sent() == [f"MSG oops {i}" for i in range(10)]  # then paced, as typed
